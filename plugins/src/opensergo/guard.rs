//! What guards one resource: its strategies on the catalogue's engines, applied in Sentinel's
//! order with rollback.
//!
//! * RateLimitStrategy → limit-count's [`Counters`] (a sliding window of `threshold` per stat
//!   duration, one constant key).
//! * ConcurrencyLimitStrategy → limit-conn's [`ConnState`] (`conn = maxConcurrency`, no burst),
//!   the slot held until the response phase (or the lease timeout).
//! * CircuitBreakerStrategy → api-breaker's [`Breaker`] (Sentinel's slow / error ratio machine,
//!   one probe when half-open), judged in the response phase.
//! * ThrottlingStrategy → limit-req's [`Buckets`] (`rate = 1/minInterval`,
//!   `burst = queueTimeout/minInterval`: the longest wait is the queue timeout).
//!
//! A request meets every rate limit, then every concurrency limit, then every breaker, then every
//! throttle. A reject at any step undoes what the earlier steps took: the rate-limit counts are
//! refunded, the concurrency slots released, a half-open probe handed back. Throttling comes last
//! because its reservation cannot be undone.

use std::sync::Arc;

use ext_plugin_sdk::Stop;

use super::model::{Strategy, StrategyKind};
use crate::api_breaker::breaker::{
    Admit, Breaker, BreakerMetrics, Outcome, Policy, Settings, Ticket,
};
use crate::limit_conn::{ConnState, Slot};
use crate::limit_count::{Counters, Quota, WindowType};
use crate::limit_req::Buckets;
use crate::support::clock::{NANOS_PER_MS, NANOS_PER_SEC};

/// The key of the keyed engines: a strategy's state is per resource, never per client.
const KEY: &str = "";
/// Buckets of a rate-limit or breaker window (Sentinel's default for one-second windows).
const BUCKETS: usize = 10;

/// One strategy's state. Kept across rule reloads while its resource and spec stay the same.
pub enum Engine {
    Rate { counters: Counters, quota: Quota },
    Concurrency { state: ConnState, max: u64 },
    Breaker {
        breaker: Breaker,
        settings: Settings,
        /// Slower answers are bad (slow ratio); `None`: 5xx answers are bad (error ratio).
        slow_ns: Option<u64>,
    },
    Throttle(Buckets),
}

impl Engine {
    pub fn new(s: &Strategy) -> Engine {
        let ms = |v: u64| v.saturating_mul(NANOS_PER_MS);
        match *s {
            Strategy::RateLimit {
                threshold,
                window_ms,
            } => {
                let window = ms(window_ms);
                Engine::Rate {
                    counters: Counters::new(WindowType::Sliding, BUCKETS, Some(window), 1),
                    quota: Quota {
                        count: threshold,
                        window,
                    },
                }
            }
            Strategy::ConcurrencyLimit { max } => Engine::Concurrency {
                state: ConnState::single(1, 3600 * NANOS_PER_SEC),
                max,
            },
            Strategy::CircuitBreaker {
                slow_rt_ms,
                ratio,
                window_ms,
                recovery_ms,
                min_requests,
            } => {
                let settings = Settings {
                    policy: if slow_rt_ms.is_some() {
                        Policy::SlowRatio
                    } else {
                        Policy::ErrorRatio
                    },
                    failures: 1,
                    successes: 1,
                    max_open: ms(recovery_ms),
                    threshold: ratio,
                    min_request_amount: min_requests,
                    window: ms(window_ms),
                    buckets: BUCKETS,
                    recovery: ms(recovery_ms),
                    probe_num: 1,
                    // Exported by the OpenSergo side when it registers its families.
                    metrics: BreakerMetrics::default(),
                };
                Engine::Breaker {
                    breaker: Breaker::new(&settings),
                    settings,
                    slow_ns: slow_rt_ms.map(ms),
                }
            }
            Strategy::Throttling {
                interval_ms,
                queue_timeout_ms,
            } => Engine::Throttle(Buckets::new(
                1000.0 / interval_ms as f64,
                queue_timeout_ms as f64 / interval_ms as f64,
                1,
            )),
        }
    }

    /// Whether an answer with `status` after `rt` nanoseconds is bad for this breaker.
    fn outcome(slow_ns: Option<u64>, status: u16, rt: u64) -> Outcome {
        let bad = match slow_ns {
            Some(limit) => rt > limit,
            None => status >= 500,
        };
        if bad {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}

/// One strategy as a resource applies it.
pub struct Step {
    pub kind: StrategyKind,
    pub engine: Arc<Engine>,
    /// The owning rule's HttpRequestFallbackAction; `None`: the route conf's, else the default.
    pub reject: Option<Stop>,
    /// `rule <name>: <Kind> <name>`, for logs.
    pub label: String,
}

/// Every strategy that applies to one resource, in application order.
pub struct Guard {
    steps: Vec<Step>,
    /// Some step holds something until the response (a slot, a breaker's judgement).
    holds: bool,
}

/// What an admitted request holds until its answer.
pub struct Held {
    start: u64,
    slots: Vec<Arc<Slot>>,
    breakers: Vec<(Arc<Engine>, Option<Ticket>)>,
}

/// The decision for one request.
pub enum Verdict<'g> {
    /// Go on after `delay` nanoseconds; `held` must come back through [`Held::answered`] or
    /// [`Held::lost`].
    Pass { held: Option<Held>, delay: u64 },
    Reject(&'g Step),
}

impl Guard {
    pub fn new(mut steps: Vec<Step>) -> Guard {
        steps.sort_by_key(|s| s.kind);
        let holds = steps.iter().any(|s| {
            matches!(
                s.kind,
                StrategyKind::ConcurrencyLimit | StrategyKind::CircuitBreaker
            )
        });
        Guard { steps, holds }
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Runs the request through every step at `now`.
    pub fn enter(&self, now: u64) -> Verdict<'_> {
        let mut held = self.holds.then(|| Held {
            start: now,
            slots: Vec::new(),
            breakers: Vec::new(),
        });
        let mut delay = 0;
        for (i, step) in self.steps.iter().enumerate() {
            let admitted = match &*step.engine {
                Engine::Rate { counters, quota } => counters.acquire(KEY, *quota, now).admitted,
                Engine::Concurrency { state, max } => match state.acquire(0, KEY, *max, 0, now) {
                    Ok((slot, _)) => {
                        if let Some(h) = &mut held {
                            h.slots.push(slot);
                        }
                        true
                    }
                    Err(()) => false,
                },
                Engine::Breaker {
                    breaker, settings, ..
                } => {
                    let ticket = match breaker.admit(settings, now) {
                        Admit::Pass => Some(None),
                        Admit::Probe(t) => Some(Some(t)),
                        Admit::Reject { .. } => None,
                    };
                    if let (Some(ticket), Some(h)) = (ticket, &mut held) {
                        h.breakers.push((step.engine.clone(), ticket));
                    }
                    ticket.is_some()
                }
                Engine::Throttle(b) => match b.acquire(KEY, now) {
                    Ok(d) => {
                        delay = delay.max(d);
                        true
                    }
                    Err(_) => false,
                },
            };
            if !admitted {
                self.roll_back(&self.steps[..i], now, held);
                return Verdict::Reject(step);
            }
        }
        Verdict::Pass { held, delay }
    }

    fn roll_back(&self, passed: &[Step], now: u64, held: Option<Held>) {
        for step in passed {
            if let Engine::Rate { counters, quota } = &*step.engine {
                counters.refund(KEY, *quota, now);
            }
        }
        if let Some(h) = held {
            for slot in h.slots {
                slot.release(None);
            }
            for (engine, ticket) in h.breakers {
                if let (Engine::Breaker { breaker, .. }, Some(t)) = (&*engine, ticket) {
                    breaker.cancel(t);
                }
            }
        }
    }
}

impl Held {
    /// The upstream answered with `status` at `now`: free the slots, teach the breakers.
    pub fn answered(self, status: u16, now: u64) {
        let rt = now.saturating_sub(self.start);
        for slot in self.slots {
            slot.release(None);
        }
        for (engine, ticket) in self.breakers {
            if let Engine::Breaker {
                breaker,
                settings,
                slow_ns,
            } = &*engine
            {
                breaker.record(settings, now, Engine::outcome(*slow_ns, status, rt), ticket);
            }
        }
    }

    /// No answer came within the lease: free the slots; a lost probe counts as a failure (so a
    /// breaker never stays half-open waiting for it), other requests teach nothing.
    pub fn lost(self, now: u64) {
        for slot in self.slots {
            slot.release(None);
        }
        for (engine, ticket) in self.breakers {
            if let (Engine::Breaker { breaker, settings, .. }, Some(t)) = (&*engine, ticket) {
                breaker.record(settings, now, Outcome::Failure, Some(t));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NANOS_PER_SEC;
    const T0: u64 = 1000 * S;

    fn step(s: Strategy) -> Step {
        Step {
            kind: s.kind(),
            engine: Arc::new(Engine::new(&s)),
            reject: None,
            label: s.spec_key(),
        }
    }

    fn passes(g: &Guard, now: u64) -> Option<Held> {
        match g.enter(now) {
            Verdict::Pass { held, .. } => Some(held.unwrap_or(Held {
                start: now,
                slots: Vec::new(),
                breakers: Vec::new(),
            })),
            Verdict::Reject(_) => None,
        }
    }

    #[test]
    fn a_later_reject_refunds_the_rate_limit_and_frees_the_slot() {
        let rate = step(Strategy::RateLimit {
            threshold: 2,
            window_ms: 10_000,
        });
        let conc = step(Strategy::ConcurrencyLimit { max: 1 });
        let g = Guard::new(vec![conc, rate]);
        assert_eq!(g.steps()[0].kind, StrategyKind::RateLimit, "sorted in Sentinel's order");
        let first = passes(&g, T0).expect("first request");
        // The second passes the rate limit (2) but not the concurrency limit (1): its count is
        // refunded, so after the first finishes there is still room for one more.
        match g.enter(T0) {
            Verdict::Reject(s) => assert_eq!(s.kind, StrategyKind::ConcurrencyLimit),
            Verdict::Pass { .. } => panic!("concurrency 1 must reject"),
        }
        first.answered(200, T0);
        assert!(passes(&g, T0).is_some(), "the refunded count left room");
        assert!(
            matches!(g.enter(T0), Verdict::Reject(s) if s.kind == StrategyKind::RateLimit),
            "now the rate limit is used up"
        );
    }

    #[test]
    fn a_breaker_trips_on_errors_and_a_cancelled_probe_is_handed_back() {
        let breaker = Strategy::CircuitBreaker {
            slow_rt_ms: None,
            ratio: 0.5,
            window_ms: 10_000,
            recovery_ms: 5_000,
            min_requests: 2,
        };
        let throttle = Strategy::Throttling {
            interval_ms: 1_000,
            queue_timeout_ms: 0,
        };
        let g = Guard::new(vec![step(breaker), step(throttle)]);
        passes(&g, T0).unwrap().answered(500, T0);
        passes(&g, T0 + S).unwrap().answered(502, T0 + S);
        assert!(
            matches!(g.enter(T0 + 2 * S), Verdict::Reject(s) if s.kind == StrategyKind::CircuitBreaker),
            "2 errors of 2: open"
        );
        let half_open = T0 + S + 5 * S;
        let probe = passes(&g, half_open).expect("the probe");
        assert!(
            matches!(g.enter(half_open), Verdict::Reject(s) if s.kind == StrategyKind::CircuitBreaker),
            "one probe at a time"
        );
        probe.answered(200, half_open);
        assert!(passes(&g, half_open + S).is_some(), "a good probe closed it");

        // A probe that the throttle rejects after the breaker admitted it is handed back: the
        // next request is a probe again (without the hand-back the breaker would reject it).
        let g2 = Guard::new(vec![
            step(Strategy::CircuitBreaker {
                slow_rt_ms: Some(100),
                ratio: 0.5,
                window_ms: 10_000,
                recovery_ms: 5_000,
                min_requests: 1,
            }),
            step(Strategy::Throttling {
                interval_ms: 10_000,
                queue_timeout_ms: 0,
            }),
        ]);
        passes(&g2, T0).unwrap().answered(200, T0 + S); // 1 s > 100 ms: slow, 1 of 1: open
        let half_open = T0 + 6 * S; // open until T0 + 1 s + 5 s; the throttle frees at T0 + 10 s
        for _ in 0..2 {
            assert!(
                matches!(g2.enter(half_open), Verdict::Reject(s) if s.kind == StrategyKind::Throttling),
                "the breaker admits a probe each time; the throttle rejects it"
            );
        }
        let probe = passes(&g2, T0 + 10 * S).expect("the throttle frees up: a probe");
        probe.lost(T0 + 10 * S);
        assert!(
            matches!(g2.enter(T0 + 11 * S), Verdict::Reject(s) if s.kind == StrategyKind::CircuitBreaker),
            "a lost probe re-opened the breaker"
        );
    }

    #[test]
    fn throttling_queues_up_to_the_timeout() {
        let g = Guard::new(vec![step(Strategy::Throttling {
            interval_ms: 100,
            queue_timeout_ms: 250,
        })]);
        let delays: Vec<_> = (0..4)
            .map(|_| match g.enter(T0) {
                Verdict::Pass { delay, .. } => Some(delay / NANOS_PER_MS),
                Verdict::Reject(_) => None,
            })
            .collect();
        assert_eq!(delays, [Some(0), Some(100), Some(200), None]);
    }
}
