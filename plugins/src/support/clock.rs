//! Time for limiters and breakers, in the unit their atomics store.
//!
//! Plugins read the SDK's [`Clock`] from [`PrepareEnv::clock`](ext_plugin_sdk::PrepareEnv::clock)
//! and keep a clone: the runner's monotonic clock in production, a manual one that tests advance
//! by hand (`Harness::with_clock`, `TestEnv::with_clock`, the runner's `Config::clock`), so
//! time-dependent behaviour is asserted exactly instead of by sleeping. [`Nanos::nanos`] reads it
//! as nanoseconds since the clock's epoch, never 0 (0 marks "never" in the atomics that store
//! times).

use ext_plugin_sdk::Clock;

pub const NANOS_PER_MS: u64 = 1_000_000;
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A [`Clock`] read in nanoseconds.
pub trait Nanos {
    /// Nanoseconds since the clock's epoch; never goes back, never 0.
    fn nanos(&self) -> u64;
}

impl Nanos for Clock {
    fn nanos(&self) -> u64 {
        // Readings start at 1000 s; u64 nanoseconds last 584 years past that.
        u64::try_from(self.now().as_nanos()).unwrap_or(u64::MAX / 2)
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
