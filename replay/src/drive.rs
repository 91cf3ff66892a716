//! Driving a target: C connections, one blocking thread each, in one of three modes.
//!
//! * Closed loop, depth 1: send a call, wait for its reply (answering extra_info on the way),
//!   send the next. What a gateway's pooled connection does.
//! * Closed loop, depth k: keep k calls in flight per connection (a stress mode; it needs a
//!   corpus without extra_info, since the runner would read a pipelined call where it waits for
//!   an answer).
//! * Open loop at a fixed total rate, depth 1: each call has an intended start time on a fixed
//!   schedule and its latency is measured from that time, not from when it was sent, so a slow
//!   reply that delays the following calls is charged to them too (coordinated-omission
//!   correction, as wrk2 does).
//!
//! Threads rather than an async runtime: the replayer shares the machine with the target, and a
//! blocking read/write per call is the cheapest client there is, so the floor it measures is low.
//! Every reply is checked ([`super::check`]); calls started during the warm-up are checked but
//! not timed or counted.

use std::collections::VecDeque;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use ext_plugin_runner::codec::{DecodeError, GatewayCodec};
use ext_plugin_runner::frame::Frame;
use ext_plugin_runner::framed::{Answer, AnswerTable, BlockingFramed};
use ext_plugin_runner::model::ExtraInfoReq;

use super::check::{check, Failure, Mismatch};
use super::plan::{Call, Plan};
use super::report::{ConnStats, Report};

/// How calls are issued on each connection.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Up to `depth` calls in flight per connection.
    Closed { depth: usize },
    /// Calls per second over all connections, one in flight per connection.
    Open { rate: f64 },
}

/// When a run ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Limit {
    /// This many timed calls in all (split over the connections), after the warm-up.
    Count(u64),
    /// Timed calls for this long, after the warm-up.
    Duration(Duration),
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub connections: usize,
    pub mode: Mode,
    pub limit: Limit,
    pub warmup: Duration,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("{0}")]
    Settings(String),
    #[error("connecting to {path}: {err}")]
    Connect { path: String, err: io::Error },
}

/// Runs `plan` against the socket at `path` and reports. `target` names it in the report.
pub fn run(
    path: &Path,
    target: &str,
    plan: &Plan,
    settings: &Settings,
) -> Result<Report, DriveError> {
    let c = settings.connections;
    if c == 0 {
        return Err(DriveError::Settings(
            "at least one connection is needed".into(),
        ));
    }
    match settings.mode {
        Mode::Closed { depth: 0 } => {
            return Err(DriveError::Settings("depth must be at least 1".into()))
        }
        Mode::Closed { depth } if depth > 1 && plan.needs_extra_info() => {
            return Err(DriveError::Settings(format!(
                "depth {depth} needs a corpus without extra_info exchanges: the runner would \
                 read a pipelined call where it waits for an extra_info answer"
            )))
        }
        Mode::Open { rate } if !(rate > 0.0 && rate.is_finite()) => {
            return Err(DriveError::Settings(format!(
                "rate {rate} must be positive"
            )))
        }
        _ => {}
    }
    // Connect everything first, so connection setup is not timed.
    let mut streams = Vec::with_capacity(c);
    for _ in 0..c {
        streams.push(
            UnixStream::connect(path).map_err(|err| DriveError::Connect {
                path: path.display().to_string(),
                err,
            })?,
        );
    }
    let barrier = Barrier::new(c);
    let stats: Vec<ConnStats> = std::thread::scope(|s| {
        let handles: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, stream)| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let mut conn = Conn::new(stream, plan, settings, i);
                    conn.run();
                    conn.stats
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a connection thread panicked"))
            .collect()
    });
    Ok(Report::merge(target, plan.protocol, settings, stats))
}

/// One connection's loop and its tallies.
struct Conn<'a> {
    framed: BlockingFramed<UnixStream>,
    plan: &'a Plan,
    codec: Box<dyn GatewayCodec>,
    next: usize,
    start: Instant,
    measure_start: Instant,
    deadline: Option<Instant>,
    /// Timed calls this connection may still start (count mode).
    quota: u64,
    mode: Mode,
    index: usize,
    connections: usize,
    stats: ConnStats,
}

impl<'a> Conn<'a> {
    fn new(stream: UnixStream, plan: &'a Plan, settings: &Settings, index: usize) -> Conn<'a> {
        let c = settings.connections as u64;
        let start = Instant::now();
        let measure_start = start + settings.warmup;
        let (deadline, quota) = match settings.limit {
            Limit::Count(n) => (None, n / c + u64::from((index as u64) < n % c)),
            Limit::Duration(d) => (Some(measure_start + d), u64::MAX),
        };
        Conn {
            framed: BlockingFramed::new(stream),
            plan,
            codec: plan.protocol.gateway_codec(),
            // Connections start at different places in the corpus.
            next: index * plan.calls.len() / settings.connections,
            start,
            measure_start,
            deadline,
            quota,
            mode: settings.mode,
            index,
            connections: settings.connections,
            stats: ConnStats::new(),
        }
    }

    fn run(&mut self) {
        let result = match self.mode {
            Mode::Closed { depth } => self.closed(depth),
            Mode::Open { rate } => self.open(rate),
        };
        if let Err(e) = result {
            self.stats
                .error(format!("i/o: {}", e.kind()), e.to_string());
        }
        self.stats.finished = Some(Instant::now());
        self.stats.measure_start = Some(self.measure_start);
    }

    /// Whether a call starting at `at` may be sent, counting it against the quota if it is timed.
    fn may_send(&mut self, at: Instant) -> bool {
        if let Some(deadline) = self.deadline {
            return at < deadline;
        }
        if at < self.measure_start {
            return true;
        }
        if self.quota == 0 {
            return false;
        }
        self.quota -= 1;
        true
    }

    fn take_call(&mut self) -> usize {
        let i = self.next;
        self.next = (self.next + 1) % self.plan.calls.len();
        i
    }

    fn closed(&mut self, depth: usize) -> io::Result<()> {
        let mut in_flight: VecDeque<(usize, Instant)> = VecDeque::with_capacity(depth);
        loop {
            let now = Instant::now();
            while in_flight.len() < depth && self.may_send(now) {
                let i = self.take_call();
                self.framed.queue().push_raw(&self.plan.calls[i].wire);
                in_flight.push_back((i, now));
            }
            self.framed.flush()?;
            let Some(&(i, sent)) = in_flight.front() else {
                return Ok(());
            };
            let reply = self.final_reply(i)?;
            let done = Instant::now();
            in_flight.pop_front();
            self.settle(i, &reply, sent, done);
        }
    }

    fn open(&mut self, rate: f64) -> io::Result<()> {
        let interval = Duration::from_secs_f64(self.connections as f64 / rate);
        // Stagger the connections over one interval so they do not all fire at once.
        let mut intended =
            self.start + interval.mul_f64(self.index as f64 / self.connections as f64);
        while self.may_send(intended) {
            if let Some(wait) = intended.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let i = self.take_call();
            self.framed.send_raw(&self.plan.calls[i].wire)?;
            let reply = self.final_reply(i)?;
            self.settle(i, &reply, intended, Instant::now());
            intended += interval;
        }
        Ok(())
    }

    /// Checks a reply and, if the call was timed, records its latency from `start`.
    fn settle(&mut self, i: usize, reply: &Frame, start: Instant, done: Instant) {
        let call = &self.plan.calls[i];
        match check(&*self.codec, &call.expect, reply.ty, &reply.payload) {
            Ok(()) => self.stats.ok += 1,
            Err(Failure { kind, detail }) => self.stats.mismatch(kind, detail),
        }
        if start >= self.measure_start {
            let ns = done.saturating_duration_since(start).as_nanos() as u64;
            self.stats.record(ns.max(1));
        }
    }

    /// Reads until the final reply to call `i`, answering its extra_info requests from the
    /// corpus. Pipelined calls have no extra_info: any frame is the next reply.
    fn final_reply(&mut self, i: usize) -> io::Result<Frame> {
        if matches!(self.mode, Mode::Closed { depth } if depth > 1) {
            return Ok(self.framed.expect_frame()?);
        }
        let mut answers = CorpusAnswers {
            call: &self.plan.calls[i],
            index: i,
            stats: &mut self.stats,
        };
        self.framed.await_reply(self.codec.as_mut(), &mut answers)
    }
}

/// A call's recorded answers; a request the corpus does not answer is a mismatch, answered nil.
struct CorpusAnswers<'a> {
    call: &'a Call,
    index: usize,
    stats: &'a mut ConnStats,
}

impl AnswerTable for CorpusAnswers<'_> {
    type Error = io::Error;

    fn answer(
        &mut self,
        asked: Result<ExtraInfoReq, DecodeError>,
    ) -> Result<Answer<'_>, io::Error> {
        let recorded = asked
            .as_ref()
            .ok()
            .and_then(|a| self.call.extra.iter().find(|(ask, _)| ask == a));
        Ok(match recorded {
            Some((_, wire)) => Answer::Wire(wire),
            None => {
                self.stats.mismatch(
                    Mismatch::UnexpectedExtraInfo,
                    format!(
                        "call #{} asked {asked:?}, which the corpus does not answer",
                        self.index
                    ),
                );
                Answer::Value(None)
            }
        })
    }
}
