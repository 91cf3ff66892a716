//! The circuit breaker's state machine, one per breaker key: it decides whether a request may go
//! to the upstream and learns from the outcomes. Pure logic over a driven clock; the plugin
//! around it does the wire work.
//!
//! * `consecutive` is APISIX's api-breaker: every `unhealthy.failures`-th failure trips it for
//!   `2^ceil(failures seen / unhealthy.failures)` seconds (at most `max_breaker_sec`); once that
//!   time is over every request passes again, and `healthy.successes` healthy answers in a row
//!   forget the failures. There is no probe budget: after the open time everything is a probe.
//! * `error_ratio`, `slow_ratio` and `error_count` are Sentinel's CLOSED → OPEN → HALF_OPEN
//!   machine over a sliding window: closed, it trips when the window holds at least
//!   `min_request_amount` outcomes and the bad ones reach `threshold` (a ratio, or a count); open
//!   for `recovery_timeout_ms`; then half-open, it admits `probe_num` probes: one bad probe
//!   re-opens it, `probe_num` good ones close it with a fresh window.
//!
//! Only the probes of the current half-open period decide it (each carries a [`Ticket`]); an
//! answer to a request admitted before the trip is just another sample, unlike Sentinel, where
//! any answer arriving while half-open decides.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use ext_plugin_sdk::metrics::{Counter, Gauge, Metrics};

use crate::support::clock::NANOS_PER_SEC;
use crate::support::keyed::lock;
use crate::support::window::LeapArray;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    #[default]
    Consecutive,
    ErrorRatio,
    SlowRatio,
    ErrorCount,
}

/// The conf's numbers, validated, in nanoseconds where they are times.
#[derive(Clone, Debug)]
pub struct Settings {
    pub policy: Policy,
    /// `consecutive`: failures per trip, successes that recover, the longest open time.
    pub failures: u64,
    pub successes: u64,
    pub max_open: u64,
    /// The Sentinel policies.
    pub threshold: f64,
    pub min_request_amount: u64,
    pub window: u64,
    pub buckets: usize,
    pub recovery: u64,
    pub probe_num: u32,
    /// Where state changes are counted.
    pub metrics: BreakerMetrics,
}

/// A route's breaker metrics: `breakers_open{route}` and `breaker_transitions_total{route, to}`.
/// The default is detached (counts, exports nothing), for tests and until the plugin resolves
/// its route's.
#[derive(Clone, Debug, Default)]
pub struct BreakerMetrics {
    /// Breakers of the route that are not closed.
    open: Gauge,
    /// Transitions to open, half-open and closed.
    to: [Counter; 3],
}

const TO_OPEN: usize = 0;
const TO_HALF_OPEN: usize = 1;
const TO_CLOSED: usize = 2;

impl BreakerMetrics {
    pub fn new(metrics: &Metrics, route: &str) -> BreakerMetrics {
        BreakerMetrics {
            open: metrics.gauge(
                "breakers_open",
                "api-breaker breakers of the route that are not closed (open, or letting probes through).",
                &[("route", route)],
            ),
            to: ["open", "half_open", "closed"].map(|to| {
                metrics.counter(
                    "breaker_transitions_total",
                    "api-breaker state changes: to open (tripped, or a probe failed), half_open (the open time is over), closed (recovered).",
                    &[("route", route), ("to", to)],
                )
            }),
        }
    }

    fn transition(&self, to: usize) {
        self.to[to].inc();
    }
}

/// What one answer (or a missing one) says about the upstream, as the policy judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// Neither: a status in neither of `consecutive`'s lists (the other policies judge every
    /// answer, so that every probe decides).
    Neutral,
}

/// Which half-open period a probe belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket(u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Pass,
    /// A trial request: its outcome (or its loss) decides the breaker.
    Probe(Ticket),
    /// Refused; the breaker is open until `until` (half-open with the budget used: `until` is
    /// now, the probes' answers decide).
    Reject { until: u64 },
}

pub struct Breaker {
    /// Mirrors "the machine is closed" so that admitting in the common case takes no lock.
    closed: AtomicBool,
    machine: Mutex<Machine>,
    /// The route's count of breakers not closed, which this one leaves when dropped.
    open: Gauge,
}

impl Drop for Breaker {
    fn drop(&mut self) {
        if !self.closed.load(Ordering::Acquire) {
            self.open.dec();
        }
    }
}

enum Machine {
    Consecutive(Consecutive),
    Sentinel(Sentinel),
}

impl Breaker {
    pub fn new(s: &Settings) -> Breaker {
        let machine = match s.policy {
            Policy::Consecutive => Machine::Consecutive(Consecutive::default()),
            _ => Machine::Sentinel(Sentinel {
                phase: Phase::Closed,
                window: LeapArray::new(s.window, s.buckets),
                period: 0,
            }),
        };
        Breaker {
            closed: AtomicBool::new(true),
            machine: Mutex::new(machine),
            open: s.metrics.open.clone(),
        }
    }

    /// Whether a request may go to the upstream now.
    pub fn admit(&self, s: &Settings, now: u64) -> Admit {
        // A request racing a trip passes, as if it had come just before it.
        if self.closed.load(Ordering::Acquire) {
            return Admit::Pass;
        }
        match &mut *lock(&self.machine) {
            Machine::Consecutive(m) => m.admit(s, now),
            Machine::Sentinel(m) => m.admit(s, now),
        }
    }

    /// Learns from an answer; `ticket` when the request was admitted as a probe.
    pub fn record(&self, s: &Settings, now: u64, outcome: Outcome, ticket: Option<Ticket>) {
        let mut machine = lock(&self.machine);
        let closed = match &mut *machine {
            Machine::Consecutive(m) => {
                m.record(s, now, outcome);
                m.tripped_at.is_none()
            }
            Machine::Sentinel(m) => {
                m.record(s, now, outcome, ticket);
                matches!(m.phase, Phase::Closed)
            }
        };
        // Written under the lock, so the mirror follows the machine's order of changes.
        match (self.closed.swap(closed, Ordering::AcqRel), closed) {
            (true, false) => self.open.inc(),
            (false, true) => self.open.dec(),
            _ => {}
        }
    }
}

impl Breaker {
    /// Gives back a probe admitted with `ticket` that never reached the upstream (a later check
    /// of the same request rejected it), so the half-open budget is not used up by it.
    pub fn cancel(&self, ticket: Ticket) {
        if let Machine::Sentinel(m) = &mut *lock(&self.machine) {
            if let Phase::HalfOpen { admitted, .. } = &mut m.phase {
                if ticket == Ticket(m.period) {
                    *admitted = admitted.saturating_sub(1);
                }
            }
        }
    }
}

/// APISIX's counters (its shared-dict keys `unhealthy-*`, `healthy-*`, `lasttime-*`).
#[derive(Default)]
struct Consecutive {
    unhealthy: u64,
    healthy: u64,
    tripped_at: Option<u64>,
    /// Admitting probes since the open time ended, as last seen by `admit` (for the metrics
    /// only: the machine itself decides from the counts and the clock).
    probing: bool,
}

impl Consecutive {
    fn admit(&mut self, s: &Settings, now: u64) -> Admit {
        let Some(at) = self.tripped_at else {
            return Admit::Pass;
        };
        // As APISIX, from the whole trips seen so far: floor(failures / `failures`), at least 1.
        // Failures arriving while open or after it, short of the next multiple, change nothing.
        let trips = (self.unhealthy / s.failures).max(1);
        let secs = 1u64.checked_shl(trips as u32).filter(|_| trips < 64);
        let open = secs.map_or(u64::MAX, |x| x.saturating_mul(NANOS_PER_SEC));
        let until = at.saturating_add(open.min(s.max_open));
        if now < until {
            Admit::Reject { until }
        } else {
            if !self.probing {
                self.probing = true;
                s.metrics.transition(TO_HALF_OPEN);
            }
            Admit::Probe(Ticket(0))
        }
    }

    fn record(&mut self, s: &Settings, now: u64, outcome: Outcome) {
        match outcome {
            Outcome::Failure => {
                self.unhealthy += 1;
                self.healthy = 0;
                if self.unhealthy.is_multiple_of(s.failures) {
                    // Tripping again while open only lengthens the open time.
                    if self.tripped_at.is_none() || self.probing {
                        s.metrics.transition(TO_OPEN);
                    }
                    self.tripped_at = Some(now);
                    self.probing = false;
                }
            }
            // Healthy answers only matter once something failed.
            Outcome::Success if self.unhealthy > 0 => {
                self.healthy += 1;
                if self.healthy >= s.successes {
                    if self.tripped_at.is_some() {
                        s.metrics.transition(TO_CLOSED);
                    }
                    *self = Consecutive::default();
                }
            }
            Outcome::Success | Outcome::Neutral => {}
        }
    }
}

struct Sentinel {
    phase: Phase,
    /// `[outcomes, bad outcomes]` per bucket.
    window: LeapArray<2>,
    /// Counts half-open periods, so a probe of an earlier one does not decide this one.
    period: u64,
}

enum Phase {
    Closed,
    Open { until: u64 },
    HalfOpen { admitted: u32, succeeded: u32 },
}

const TOTAL: usize = 0;
const BAD: usize = 1;

impl Sentinel {
    fn admit(&mut self, s: &Settings, now: u64) -> Admit {
        match &mut self.phase {
            Phase::Closed => Admit::Pass,
            Phase::Open { until } if now < *until => Admit::Reject { until: *until },
            Phase::Open { .. } => {
                s.metrics.transition(TO_HALF_OPEN);
                self.period += 1;
                self.phase = Phase::HalfOpen {
                    admitted: 1,
                    succeeded: 0,
                };
                Admit::Probe(Ticket(self.period))
            }
            Phase::HalfOpen { admitted, .. } if *admitted < s.probe_num => {
                *admitted += 1;
                Admit::Probe(Ticket(self.period))
            }
            Phase::HalfOpen { .. } => Admit::Reject { until: now },
        }
    }

    fn record(&mut self, s: &Settings, now: u64, outcome: Outcome, ticket: Option<Ticket>) {
        if outcome == Outcome::Neutral {
            return;
        }
        let bad = outcome == Outcome::Failure;
        self.window.add(now, TOTAL, 1);
        self.window.add(now, BAD, u64::from(bad));
        match &mut self.phase {
            Phase::HalfOpen { succeeded, .. } if ticket == Some(Ticket(self.period)) => {
                if bad {
                    self.open(s, now);
                } else {
                    *succeeded += 1;
                    if *succeeded >= s.probe_num {
                        s.metrics.transition(TO_CLOSED);
                        self.phase = Phase::Closed;
                        self.window.clear();
                    }
                }
            }
            Phase::Closed => {
                let [total, bad] = self.window.sum(now);
                if total >= s.min_request_amount && tripped(s, total, bad) {
                    self.open(s, now);
                }
            }
            _ => {}
        }
    }

    fn open(&mut self, s: &Settings, now: u64) {
        s.metrics.transition(TO_OPEN);
        self.phase = Phase::Open {
            until: now.saturating_add(s.recovery),
        };
    }
}

/// Whether the window's bad outcomes reach the threshold (`>=`, as sentinel-golang and
/// OpenSergo).
fn tripped(s: &Settings, total: u64, bad: u64) -> bool {
    match s.policy {
        Policy::ErrorCount => bad as f64 >= s.threshold,
        _ => total > 0 && bad as f64 / total as f64 >= s.threshold,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::clock::NANOS_PER_MS;
    use Outcome::*;

    const SEC: u64 = NANOS_PER_SEC;
    const T0: u64 = 1000 * SEC;

    fn settings(policy: Policy) -> Settings {
        Settings {
            policy,
            failures: 3,
            successes: 2,
            max_open: 300 * SEC,
            threshold: 0.5,
            min_request_amount: 4,
            window: 10 * SEC,
            buckets: 10,
            recovery: 5 * SEC,
            probe_num: 2,
            metrics: BreakerMetrics::default(),
        }
    }

    fn fail_n(b: &Breaker, s: &Settings, now: u64, n: usize) {
        for _ in 0..n {
            b.record(s, now, Failure, None);
        }
    }

    #[test]
    fn consecutive_doubles_the_open_time_and_recovers_after_successes() {
        let s = settings(Policy::Consecutive);
        let b = Breaker::new(&s);
        fail_n(&b, &s, T0, 2);
        b.record(&s, T0, Neutral, None); // a 404 neither trips nor heals
        assert_eq!(b.admit(&s, T0), Admit::Pass, "two failures of three");
        fail_n(&b, &s, T0, 1);
        assert_eq!(b.admit(&s, T0), Admit::Reject { until: T0 + 2 * SEC }, "2^1 s");
        assert!(matches!(b.admit(&s, T0 + 2 * SEC), Admit::Probe(_)), "open time over");
        // Recovering: three more failures trip it for 2^2 s.
        fail_n(&b, &s, T0 + 3 * SEC, 3);
        let t = T0 + 3 * SEC;
        assert_eq!(b.admit(&s, t + 3 * SEC), Admit::Reject { until: t + 4 * SEC });
        assert!(matches!(b.admit(&s, t + 4 * SEC), Admit::Probe(_)));
        // One success, then a failure: the successes must come in a row.
        b.record(&s, t + 4 * SEC, Success, None);
        b.record(&s, t + 4 * SEC, Failure, None);
        b.record(&s, t + 4 * SEC, Success, None);
        b.record(&s, t + 4 * SEC, Success, None);
        assert_eq!(b.admit(&s, t + 4 * SEC), Admit::Pass, "closed and forgotten");
        fail_n(&b, &s, t + 5 * SEC, 2);
        assert_eq!(b.admit(&s, t + 5 * SEC), Admit::Pass, "the count restarted");
    }

    /// `(breakers_open, [to open, to half_open, to closed])` of route `r`.
    fn exported(m: &Metrics) -> (i64, [u64; 3]) {
        let snap = m.snapshot();
        let to = |to| snap.counter("breaker_transitions_total", &[("route", "r"), ("to", to)]);
        (
            snap.gauge("breakers_open", &[("route", "r")]).unwrap(),
            ["open", "half_open", "closed"].map(|t| to(t).unwrap()),
        )
    }

    fn watched(policy: Policy) -> (Settings, Metrics) {
        let m = Metrics::new(10);
        let s = Settings {
            metrics: BreakerMetrics::new(&m, "r"),
            ..settings(policy)
        };
        (s, m)
    }

    #[test]
    fn consecutive_state_changes_are_counted_once_each() {
        let (s, m) = watched(Policy::Consecutive);
        let b = Breaker::new(&s);
        fail_n(&b, &s, T0, 3);
        assert_eq!(exported(&m), (1, [1, 0, 0]), "tripped");
        fail_n(&b, &s, T0, 3);
        assert_eq!(exported(&m), (1, [1, 0, 0]), "tripping again while open only lengthens it");
        let over = T0 + 4 * SEC;
        assert!(matches!(b.admit(&s, over), Admit::Probe(_)));
        assert!(matches!(b.admit(&s, over), Admit::Probe(_)));
        assert_eq!(exported(&m), (1, [1, 1, 0]), "half-open once per open period");
        fail_n(&b, &s, over, 3);
        assert_eq!(exported(&m), (1, [2, 1, 0]), "a failing probe period re-opens");
        let over = over + 16 * SEC;
        assert!(matches!(b.admit(&s, over), Admit::Probe(_)));
        b.record(&s, over, Success, None);
        b.record(&s, over, Success, None);
        assert_eq!(exported(&m), (0, [2, 2, 1]), "recovered");
        b.record(&s, over, Failure, None);
        b.record(&s, over, Success, None);
        b.record(&s, over, Success, None);
        assert_eq!(exported(&m), (0, [2, 2, 1]), "a failure that never tripped is no change");
    }

    #[test]
    fn sentinel_state_changes_are_counted_and_a_dropped_open_breaker_leaves_the_gauge() {
        let (s, m) = watched(Policy::ErrorRatio);
        let b = Breaker::new(&s);
        let at = trip(&b, &s);
        assert_eq!(exported(&m), (1, [1, 0, 0]));
        let after = at + s.recovery;
        let first = probe(&b, &s, after);
        assert_eq!(exported(&m), (1, [1, 1, 0]));
        b.record(&s, after, Failure, Some(first));
        assert_eq!(exported(&m), (1, [2, 1, 0]), "a bad probe re-opens");
        let after = after + s.recovery;
        let (p1, p2) = (probe(&b, &s, after), probe(&b, &s, after));
        b.record(&s, after, Success, Some(p1));
        b.record(&s, after, Success, Some(p2));
        assert_eq!(exported(&m), (0, [2, 2, 1]), "closed");
        let other = Breaker::new(&s);
        trip(&other, &s);
        assert_eq!(exported(&m).0, 1);
        drop(other);
        assert_eq!(exported(&m).0, 0, "a dropped breaker is no longer open");
    }

    #[test]
    fn consecutive_open_time_is_capped() {
        let mut s = settings(Policy::Consecutive);
        s.failures = 1;
        s.max_open = 5 * SEC;
        let b = Breaker::new(&s);
        fail_n(&b, &s, T0, 200); // 2^200 s would overflow
        assert_eq!(b.admit(&s, T0), Admit::Reject { until: T0 + 5 * SEC });
    }

    /// Trips `b` (closed) with the policy's bad outcome and returns when it opened.
    fn trip(b: &Breaker, s: &Settings) -> u64 {
        b.record(s, T0, Success, None);
        b.record(s, T0, Success, None);
        b.record(s, T0, Failure, None);
        assert_eq!(b.admit(s, T0), Admit::Pass, "below min_request_amount");
        b.record(s, T0, Failure, None); // 2 of 4 = 0.5 (or a count of 2)
        T0
    }

    fn probe(b: &Breaker, s: &Settings, now: u64) -> Ticket {
        match b.admit(s, now) {
            Admit::Probe(t) => t,
            other => panic!("expected a probe, got {other:?}"),
        }
    }

    #[test]
    fn sentinel_policies_trip_half_open_and_close_on_good_probes() {
        for policy in [Policy::ErrorRatio, Policy::SlowRatio, Policy::ErrorCount] {
            let mut s = settings(policy);
            if policy == Policy::ErrorCount {
                s.threshold = 2.0;
            }
            let b = Breaker::new(&s);
            let at = trip(&b, &s);
            assert_eq!(b.admit(&s, at), Admit::Reject { until: at + 5 * SEC }, "{policy:?}");
            assert_eq!(b.admit(&s, at + 5 * SEC - 1), Admit::Reject { until: at + 5 * SEC });
            let now = at + 5 * SEC;
            let (p1, p2) = (probe(&b, &s, now), probe(&b, &s, now));
            assert_eq!(b.admit(&s, now), Admit::Reject { until: now }, "budget of two used");
            b.record(&s, now, Success, Some(p1));
            assert_eq!(b.admit(&s, now), Admit::Reject { until: now }, "one probe still out");
            b.record(&s, now, Success, Some(p2));
            assert_eq!(b.admit(&s, now), Admit::Pass, "{policy:?} closed");
            // The window restarted: old failures do not count.
            b.record(&s, now, Failure, None);
            b.record(&s, now, Failure, None);
            assert_eq!(b.admit(&s, now), Admit::Pass, "{policy:?}: 2 < min_request_amount");
        }
    }

    #[test]
    fn a_bad_probe_reopens_and_stale_probes_do_not_decide() {
        let s = settings(Policy::ErrorRatio);
        let b = Breaker::new(&s);
        let at = trip(&b, &s);
        let now = at + 5 * SEC;
        let (p1, p2) = (probe(&b, &s, now), probe(&b, &s, now));
        b.record(&s, now, Failure, Some(p1));
        let reopened = Admit::Reject { until: now + 5 * SEC };
        assert_eq!(b.admit(&s, now), reopened, "re-opened for recovery_timeout");
        b.record(&s, now, Success, Some(p2));
        assert_eq!(b.admit(&s, now), reopened, "a probe answering while open changes nothing");
        let later = now + 5 * SEC;
        let (fresh, fresh2) = (probe(&b, &s, later), probe(&b, &s, later));
        b.record(&s, later, Success, Some(p2));
        b.record(&s, later, Success, None);
        b.record(&s, later, Success, Some(fresh));
        assert_eq!(b.admit(&s, later), Admit::Reject { until: later }, "p2 and non-probes do not count");
        b.record(&s, later, Success, Some(fresh2));
        assert_eq!(b.admit(&s, later), Admit::Pass);
    }

    #[test]
    fn ratios_need_min_request_amount_in_the_window() {
        let s = settings(Policy::ErrorRatio);
        let b = Breaker::new(&s);
        fail_n(&b, &s, T0, 3);
        // The three failures slide out before the fourth outcome arrives.
        b.record(&s, T0 + 10 * SEC, Failure, None);
        assert_eq!(b.admit(&s, T0 + 10 * SEC), Admit::Pass);
        // With the one left in the window: 1 bad of 4 stays closed, 4 bad of 8 trips it.
        let t = T0 + 10 * SEC + 100 * NANOS_PER_MS;
        for o in [Success, Success, Success, Failure, Success, Failure] {
            assert_eq!(b.admit(&s, t), Admit::Pass);
            b.record(&s, t, o, None);
        }
        assert!(matches!(b.admit(&s, t), Admit::Pass), "3 bad of 7");
        b.record(&s, t, Failure, None);
        assert!(matches!(b.admit(&s, t), Admit::Reject { .. }), "4 bad of 8 = 0.5");
    }
}
