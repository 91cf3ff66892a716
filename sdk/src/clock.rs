//! Time as plugins read it: the runner's monotonic clock, or one a test moves by hand.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Where every clock's readings start: far enough from zero that a reading minus a short window
/// or timeout does not underflow early in the process, and that 0 is free to mean "never".
const START: Duration = Duration::from_secs(1000);

/// A monotonic clock for plugins, from [`PrepareEnv::clock`](crate::PrepareEnv::clock).
///
/// Plugins that measure time (rate limits, windows, breakers, leases) read it here rather than
/// from [`Instant::now`], keeping a clone from `prepare`: the runner hands out the system's
/// monotonic clock, and tests hand out a [manual](Clock::manual) one that moves only when they
/// [advance](Clock::advance) it, so time-dependent behaviour is tested exactly, without sleeping.
///
/// A reading is the time since the clock's epoch, as a [`Duration`]: it never goes back and is
/// never below 1000 s, so `now - window` of early readings stays positive and 0 can stand for
/// "never" in an atomic that stores readings. Readings of different clocks are not comparable
/// (a manual clock starts at 1000 s whenever it is made); every clone of a clock reads the same
/// time. Cloning is cheap (at most an `Arc`).
///
/// ```
/// use std::time::Duration;
/// use ext_plugin_sdk::Clock;
///
/// let clock = Clock::manual();
/// let seen_by_plugin = clock.clone();
/// let before = seen_by_plugin.now();
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(seen_by_plugin.now() - before, Duration::from_secs(5));
/// ```
///
/// Only readings move: a plugin that waits (`tokio::time::sleep`) still waits in the runtime's
/// time, which tokio's paused test clock drives.
#[derive(Clone, Default)]
pub struct Clock(Source);

#[derive(Clone, Default)]
enum Source {
    #[default]
    System,
    /// Nanoseconds since the epoch, moved by [`Clock::advance`].
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The system's monotonic clock (what the runner uses, and the default).
    pub fn system() -> Clock {
        Clock(Source::System)
    }

    /// A clock that reads 1000 s until [advanced](Clock::advance): for tests.
    pub fn manual() -> Clock {
        Clock(Source::Manual(Arc::new(AtomicU64::new(nanos(START)))))
    }

    /// The time since the clock's epoch (see [the type's docs](Clock)).
    pub fn now(&self) -> Duration {
        match &self.0 {
            Source::System => {
                static EPOCH: OnceLock<Instant> = OnceLock::new();
                START + EPOCH.get_or_init(Instant::now).elapsed()
            }
            Source::Manual(at) => Duration::from_nanos(at.load(Ordering::SeqCst)),
        }
    }

    /// Whether this is a [manual](Clock::manual) clock.
    pub fn is_manual(&self) -> bool {
        matches!(self.0, Source::Manual(_))
    }

    /// Moves a manual clock, and every clone of it, forward by `by`.
    ///
    /// # Panics
    /// On the system clock: only tests move time, and only on a clock they made manual.
    pub fn advance(&self, by: Duration) {
        match &self.0 {
            Source::Manual(at) => {
                at.fetch_add(nanos(by), Ordering::SeqCst);
            }
            Source::System => panic!("Clock::advance on the system clock; use Clock::manual()"),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).expect("a clock reading or step fits in u64 nanoseconds")
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::System => f.write_str("Clock::system()"),
            Source::Manual(_) => write!(f, "Clock::manual() at {:?}", self.now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_moves_on_and_starts_far_from_zero() {
        let clock = Clock::system();
        let a = clock.now();
        assert!(a >= START);
        let b = Clock::system().now();
        assert!(b >= a, "clocks of the system share one epoch");
        assert!(!clock.is_manual());
    }

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_its_clones_with_it() {
        let clock = Clock::manual();
        let clone = clock.clone();
        assert_eq!(clone.now(), START);
        assert_eq!(clone.now(), START, "standing still");
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clone.now(), START + Duration::from_millis(1500));
        assert_eq!(
            Clock::manual().now(),
            START,
            "another manual clock is its own"
        );
        assert!(clock.is_manual());
    }

    #[test]
    #[should_panic(expected = "Clock::manual()")]
    fn the_system_clock_cannot_be_advanced() {
        Clock::system().advance(Duration::from_secs(1));
    }
}
