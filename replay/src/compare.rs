//! The runner beside the echo floor, on the same frames in the same run.
//!
//! For each setting the echo floor runs first and the runner right after, so both see the same
//! machine load as nearly as a shared box allows; the ratio of their call rates is the figure
//! that means something there, not either rate alone.

use std::fmt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::Serialize;

use super::corpus::Corpus;
use super::drive::{self, Mode, Settings};
use super::echo::EchoServer;
use super::plan::{self, Plan};
use super::report::Report;
use super::spawn::temp_socket;
use super::ReplayError;

/// One setting's pair of runs.
#[derive(Clone, Debug, Serialize)]
pub struct Pairing {
    pub echo: Report,
    pub runner: Report,
    /// runner calls/s ÷ echo calls/s.
    pub ratio: f64,
}

/// Every setting's pairing.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub label: String,
    pub pairings: Vec<Pairing>,
}

impl Comparison {
    /// Mismatched replies and connection errors over all runs.
    pub fn failures(&self) -> u64 {
        self.pairings
            .iter()
            .flat_map(|p| [&p.echo, &p.runner])
            .map(|r| r.mismatch_total() + r.error_total())
            .sum()
    }
}

/// Runs `corpus` against the runner at `runner_socket` and an in-process echo floor, for each
/// of `settings`. The corpus' confs are prepared on the runner once.
pub fn compare(
    label: &str,
    corpus: &Corpus,
    runner_socket: &Path,
    settings: &[Settings],
) -> Result<Comparison, ReplayError> {
    let mut prep = UnixStream::connect(runner_socket)?;
    let runner_plan: Plan = plan::prepare(corpus, &mut prep)?;
    drop(prep);
    let echo_plan = plan::echo_plan(corpus)?;
    let echo = EchoServer::start(&temp_socket("echo"))?;
    let mut pairings = Vec::new();
    for s in settings {
        // Pipelining a corpus with extra_info is refused for the runner; skip the pair.
        if matches!(s.mode, Mode::Closed { depth } if depth > 1) && runner_plan.needs_extra_info() {
            continue;
        }
        let e = drive::run(echo.path(), "echo", &echo_plan, s)?;
        let r = drive::run(runner_socket, "runner", &runner_plan, s)?;
        let ratio = if e.rps > 0.0 { r.rps / e.rps } else { 0.0 };
        pairings.push(Pairing {
            echo: e,
            runner: r,
            ratio,
        });
    }
    Ok(Comparison {
        label: label.to_owned(),
        pairings,
    })
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.label)?;
        writeln!(
            f,
            "| C | depth | echo calls/s | runner calls/s | runner/echo | echo p99 µs | runner p50 µs | runner p99 µs | runner p99.9 µs | mismatches |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|---|---|---|")?;
        for p in &self.pairings {
            let (e, r) = (&p.echo, &p.runner);
            writeln!(
                f,
                "| {} | {} | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
                r.connections,
                r.depth,
                e.rps,
                r.rps,
                p.ratio,
                e.latency_us.p99,
                r.latency_us.p50,
                r.latency_us.p99,
                r.latency_us.p999,
                r.mismatch_total() + e.mismatch_total() + r.error_total() + e.error_total(),
            )?;
        }
        for p in &self.pairings {
            for rep in [&p.echo, &p.runner] {
                if !rep.samples.is_empty() || rep.mismatch_total() > 0 {
                    writeln!(f, "{rep}")?;
                }
            }
        }
        Ok(())
    }
}
