//! What the Redis backends export (docs/operations.md, "Redis and OpenSergo"): commands by
//! backend and outcome, their latency, and whether each backend is up.
//!
//! * `backend` is the backend's [name](super::backend::Backend::name): `host:port/db`,
//!   `unix:/path/db`, `cluster:<redis_cluster_name>` or `sentinel:<redis_master_name>`, never a
//!   credential. Confs make at most [`MAX_BACKENDS`] live
//!   backends, so the label is bounded.
//! * Backends are process-wide while the registry comes with each prepare: a backend takes the
//!   handles of the registry of the last conf that named it ([`Instruments::attach`]); the
//!   runner has one registry, so they are always the same series.
//! * Two backends may share a name (the same server with another `redis_timeout` or
//!   credentials): `redis_up` is 0 while any of them is down, so the documented alert cannot
//!   miss one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use ext_plugin_sdk::metrics::{Counter, Histogram, Metrics};

use super::backend::{Unavailable, MAX_BACKENDS};

/// Upper bounds of the command latency histogram, in seconds: a local Redis answers in tens of
/// microseconds, a remote one in a millisecond or so; `redis_timeout` defaults to 1 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0,
];

const COMMANDS: &str = "redis_commands_total";
const COMMANDS_HELP: &str = "Redis commands of the limiters by backend and outcome: ok, error \
    (Redis or the connection failed), timeout (no answer within redis_timeout), breaker_open \
    (not sent: the backend is down and not due for a probe).";
const LATENCY: &str = "redis_command_duration_seconds";
const LATENCY_HELP: &str =
    "Time from sending a Redis command (connecting included) to its answer, error or timeout.";
const UP: &str = "redis_up";
const UP_HELP: &str =
    "1 while the Redis backend answers, 0 while it is down (its breaker open, probing).";

/// How one command went, as the `outcome` label says it.
#[derive(Clone, Copy)]
pub enum Outcome {
    Ok,
    Error,
    Timeout,
    BreakerOpen,
}

impl Outcome {
    pub fn of<T>(r: &Result<T, Unavailable>) -> Outcome {
        match r {
            Ok(_) => Outcome::Ok,
            Err(Unavailable::Error(_)) => Outcome::Error,
            Err(Unavailable::Timeout) => Outcome::Timeout,
            Err(Unavailable::Open) => Outcome::BreakerOpen,
        }
    }
}

/// The handles one command touches.
struct Handles {
    /// By [`Outcome`], in its order.
    commands: [Counter; 4],
    latency: Histogram,
}

impl Handles {
    fn new(metrics: &Metrics, backend: &str) -> Handles {
        let counter = |outcome| {
            metrics.counter(
                COMMANDS,
                COMMANDS_HELP,
                &[("backend", backend), ("outcome", outcome)],
            )
        };
        Handles {
            commands: ["ok", "error", "timeout", "breaker_open"].map(counter),
            latency: metrics.histogram(
                LATENCY,
                LATENCY_HELP,
                LATENCY_BUCKETS,
                &[("backend", backend)],
            ),
        }
    }
}

/// A backend's metric handles and its share of `redis_up`.
pub struct Instruments {
    handles: ArcSwap<Handles>,
    health: Arc<Health>,
    /// Whether this backend counts in `health.down`.
    down: std::sync::atomic::AtomicBool,
}

impl Instruments {
    /// Handles that count and export nothing until [`Instruments::attach`].
    pub fn new(backend: &str) -> Instruments {
        Instruments {
            handles: ArcSwap::from_pointee(Handles::new(&Metrics::disabled(), backend)),
            health: health(backend),
            down: Default::default(),
        }
    }

    /// Registers the backend named `backend` in `metrics` (at every prepare that names it:
    /// the same registry gives the same series back).
    pub fn attach(&self, metrics: &Metrics, backend: &str) {
        if !metrics.is_enabled() {
            return;
        }
        self.handles.store(Arc::new(Handles::new(metrics, backend)));
        metrics.sampled_gauge(UP, UP_HELP, &[("backend", backend)], &self.health, |h| {
            i64::from(h.down.load(Ordering::Acquire) == 0)
        });
    }

    /// Counts one command; `took` is `None` when it was not sent.
    pub fn record(&self, outcome: Outcome, took: Option<Duration>) {
        let handles = self.handles.load();
        handles.commands[outcome as usize].inc();
        if let Some(took) = took {
            handles.latency.observe(took);
        }
    }

    /// The backend went down (`true`) or came back.
    pub fn set_down(&self, down: bool) {
        if self.down.swap(down, Ordering::AcqRel) != down {
            if down {
                self.health.down.fetch_add(1, Ordering::AcqRel);
            } else {
                self.health.down.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl Drop for Instruments {
    fn drop(&mut self) {
        // A backend dropped while down no longer holds its name's gauge at 0.
        self.set_down(false);
    }
}

/// The backends of one name that are down now.
struct Health {
    down: AtomicUsize,
}

/// The shared health of every live backend named `backend`.
fn health(backend: &str) -> Arc<Health> {
    static NAMES: OnceLock<Mutex<HashMap<String, Weak<Health>>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(h) = names.get(backend).and_then(Weak::upgrade) {
        return h;
    }
    if names.len() >= MAX_BACKENDS {
        names.retain(|_, h| h.strong_count() > 0);
    }
    let h = Arc::new(Health {
        down: AtomicUsize::new(0),
    });
    names.insert(backend.to_owned(), Arc::downgrade(&h));
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_up_only_while_every_backend_of_it_is() {
        let m = Metrics::new(10);
        let a = Instruments::new("h:1/0");
        let b = Instruments::new("h:1/0");
        a.attach(&m, "h:1/0");
        b.attach(&m, "h:1/0");
        let up = |m: &Metrics| m.snapshot().gauge(UP, &[("backend", "h:1/0")]);
        assert_eq!(up(&m), Some(1));
        a.set_down(true);
        a.set_down(true);
        assert_eq!(up(&m), Some(0));
        b.set_down(true);
        a.set_down(false);
        assert_eq!(up(&m), Some(0), "b is still down");
        drop(b);
        assert_eq!(up(&m), Some(1), "a dropped backend no longer counts");
        a.record(Outcome::Timeout, Some(Duration::from_millis(3)));
        a.record(Outcome::BreakerOpen, None);
        let s = m.snapshot();
        let labels = |o| [("backend", "h:1/0"), ("outcome", o)];
        assert_eq!(s.counter(COMMANDS, &labels("timeout")), Some(1));
        assert_eq!(s.counter(COMMANDS, &labels("breaker_open")), Some(1));
        assert_eq!(s.counter(COMMANDS, &labels("ok")), Some(0));
        let h = s.histogram(LATENCY, &[("backend", "h:1/0")]).unwrap();
        assert_eq!(h.count, 1, "only commands sent are timed");
        drop(a);
        assert_eq!(
            up(&m),
            None,
            "the gauge goes with the last backend of its name"
        );
    }
}
