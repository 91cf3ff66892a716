//! Time for limiters and breakers: a monotonic clock that tests can drive.
//!
//! Plugin state is built with a [`SharedClock`]; production passes [`system`], tests a
//! [`ManualClock`] they advance by hand, so time-dependent behaviour is asserted exactly instead
//! of by sleeping. Times are nanoseconds since an arbitrary epoch, never 0 (0 marks "never" in
//! the atomics that store times).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub const NANOS_PER_MS: u64 = 1_000_000;
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since the clock's epoch; never goes back, never 0.
    fn now(&self) -> u64;
}

pub type SharedClock = Arc<dyn Clock>;

/// The process's monotonic clock.
pub fn system() -> SharedClock {
    static SYSTEM: OnceLock<SharedClock> = OnceLock::new();
    SYSTEM
        .get_or_init(|| Arc::new(MonotonicClock(Instant::now())))
        .clone()
}

struct MonotonicClock(Instant);

impl Clock for MonotonicClock {
    fn now(&self) -> u64 {
        // Start at one second so that "now minus a window" stays positive early in the process.
        let elapsed = u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX / 2);
        NANOS_PER_SEC + elapsed
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock at an arbitrary start of 1000 s (so early windows do not underflow).
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicU64::new(1000 * NANOS_PER_SEC)))
    }

    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).expect("a test advance fits in u64 nanoseconds");
        self.0.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Whole seconds from `now` until `at`, rounded up (headers and `Retry-After`).
pub fn secs_until(now: u64, at: u64) -> u64 {
    at.saturating_sub(now).div_ceil(NANOS_PER_SEC)
}

/// A duration from the conf in seconds (fractions allowed) as nanoseconds.
pub fn secs_to_nanos(secs: f64) -> u64 {
    (secs * NANOS_PER_SEC as f64).round() as u64
}
