//! Tallies of a run: per-connection while it runs, merged into one [`Report`] at the end, shown
//! as text or serialized as JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use ext_plugin_runner::codec::Protocol;

use super::check::Mismatch;
use super::drive::{Mode, Settings};

/// Mismatch details kept per run (the counts are complete; the examples are not).
const SAMPLES: usize = 10;

/// One connection's tallies.
pub struct ConnStats {
    pub(crate) hist: Histogram<u64>,
    pub(crate) ok: u64,
    pub(crate) mismatches: BTreeMap<Mismatch, u64>,
    pub(crate) samples: Vec<String>,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) measure_start: Option<Instant>,
    pub(crate) finished: Option<Instant>,
}

impl ConnStats {
    pub(crate) fn new() -> ConnStats {
        ConnStats {
            // 1 ns to 60 s at 3 significant digits: a fixed size, no resizing mid-run.
            hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
            ok: 0,
            mismatches: BTreeMap::new(),
            samples: Vec::new(),
            errors: BTreeMap::new(),
            measure_start: None,
            finished: None,
        }
    }

    pub(crate) fn record(&mut self, ns: u64) {
        self.hist.saturating_record(ns);
    }

    pub(crate) fn mismatch(&mut self, kind: Mismatch, detail: String) {
        *self.mismatches.entry(kind).or_default() += 1;
        if self.samples.len() < SAMPLES {
            self.samples.push(format!("{}: {detail}", kind.name()));
        }
    }

    pub(crate) fn error(&mut self, kind: String, detail: String) {
        *self.errors.entry(kind).or_default() += 1;
        if self.samples.len() < SAMPLES {
            self.samples.push(detail);
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// The result of one run against one target.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub protocol: String,
    pub connections: usize,
    /// `closed` or `open`.
    pub mode: String,
    pub depth: usize,
    /// The open loop's target rate (calls/s), else `null`.
    pub rate: Option<f64>,
    /// Timed calls (those started after the warm-up).
    pub calls: u64,
    /// Replies that matched the corpus, warm-up included.
    pub ok: u64,
    pub seconds: f64,
    pub rps: f64,
    /// Measured from the send (closed loop) or from the intended start (open loop).
    pub latency_us: Latency,
    /// Replies that did not match, by kind, warm-up included.
    pub mismatches: BTreeMap<String, u64>,
    /// Connections that ended early, by cause.
    pub errors: BTreeMap<String, u64>,
    /// Examples of mismatches and errors.
    pub samples: Vec<String>,
}

impl Report {
    pub(crate) fn merge(
        target: &str,
        protocol: Protocol,
        settings: &Settings,
        stats: Vec<ConnStats>,
    ) -> Report {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
        let mut report = Report {
            target: target.to_owned(),
            protocol: protocol.to_string(),
            connections: settings.connections,
            mode: match settings.mode {
                Mode::Closed { .. } => "closed".into(),
                Mode::Open { .. } => "open".into(),
            },
            depth: match settings.mode {
                Mode::Closed { depth } => depth,
                Mode::Open { .. } => 1,
            },
            rate: match settings.mode {
                Mode::Open { rate } => Some(rate),
                Mode::Closed { .. } => None,
            },
            calls: 0,
            ok: 0,
            seconds: 0.0,
            rps: 0.0,
            latency_us: Latency::default(),
            mismatches: BTreeMap::new(),
            errors: BTreeMap::new(),
            samples: Vec::new(),
        };
        let start = stats.iter().filter_map(|s| s.measure_start).min();
        let end = stats.iter().filter_map(|s| s.finished).max();
        for s in stats {
            hist.add(&s.hist).expect("same bounds");
            report.ok += s.ok;
            for (k, n) in s.mismatches {
                *report.mismatches.entry(k.name().to_owned()).or_default() += n;
            }
            for (k, n) in s.errors {
                *report.errors.entry(k).or_default() += n;
            }
            for d in s.samples {
                if report.samples.len() < SAMPLES {
                    report.samples.push(d);
                }
            }
        }
        report.calls = hist.len();
        if let (Some(start), Some(end)) = (start, end) {
            report.seconds = end.saturating_duration_since(start).as_secs_f64();
        }
        if report.seconds > 0.0 {
            report.rps = report.calls as f64 / report.seconds;
        }
        if !hist.is_empty() {
            let us = |ns: u64| ns as f64 / 1000.0;
            report.latency_us = Latency {
                p50: us(hist.value_at_quantile(0.5)),
                p90: us(hist.value_at_quantile(0.9)),
                p99: us(hist.value_at_quantile(0.99)),
                p999: us(hist.value_at_quantile(0.999)),
                max: us(hist.max()),
                mean: hist.mean() / 1000.0,
            };
        }
        report
    }

    pub fn mismatch_total(&self) -> u64 {
        self.mismatches.values().sum()
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match self.rate {
            Some(rate) => format!("open loop at {rate} calls/s"),
            None => format!("closed loop, depth {}", self.depth),
        };
        writeln!(
            f,
            "{} ({}, {} connection{}, {how})",
            self.target,
            self.protocol,
            self.connections,
            if self.connections == 1 { "" } else { "s" }
        )?;
        writeln!(
            f,
            "  {} calls in {:.2} s: {:.0} calls/s",
            self.calls, self.seconds, self.rps
        )?;
        let l = &self.latency_us;
        writeln!(
            f,
            "  latency µs: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        )?;
        write!(
            f,
            "  replies: {} ok, {} mismatched",
            self.ok,
            self.mismatch_total()
        )?;
        for (k, n) in &self.mismatches {
            write!(f, " [{k}: {n}]")?;
        }
        if !self.errors.is_empty() {
            write!(f, "\n  connection errors:")?;
            for (k, n) in &self.errors {
                write!(f, " [{k}: {n}]")?;
            }
        }
        for s in &self.samples {
            write!(f, "\n    {s}")?;
        }
        Ok(())
    }
}
