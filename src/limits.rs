//! One log line per limit hit, not one per event.
//!
//! A hostile or broken gateway can hit a limit thousands of times a second (every connection
//! over `max_connections`, every oversized frame); logging each would flood the gateway's error
//! log, which is where our stderr goes. Each limit gets a [`LimitLog`]: the first hit logs at
//! once, later hits within [`INTERVAL`] are only counted, and the next line reports how many
//! there were.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// At most one line per limit per this long.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);

/// Rate limit for one limit's log line.
pub(crate) struct LimitLog {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last line, plus one (0 = never logged).
    last: AtomicU64,
    /// Hits since the last line.
    hits: AtomicU64,
}

impl Default for LimitLog {
    fn default() -> LimitLog {
        LimitLog {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        }
    }
}

impl LimitLog {
    /// Counts a hit; `Some(hits since the last line, this one included)` when a line is due.
    pub(crate) fn hit(&self) -> Option<u64> {
        let now = Instant::now().saturating_duration_since(self.epoch);
        self.hit_at(now.as_millis() as u64 + 1)
    }

    fn hit_at(&self, now: u64) -> Option<u64> {
        self.hits.fetch_add(1, Ordering::Relaxed);
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= INTERVAL.as_millis() as u64;
        // Of racing hits, only the one that moves `last` logs.
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.hits.swap(0, Ordering::Relaxed));
        }
        None
    }
}

/// The limits whose hits are logged, shared by every connection.
#[derive(Default)]
pub(crate) struct Limits {
    pub(crate) connections: LimitLog,
    pub(crate) frame_size: LimitLog,
    pub(crate) stalled_read: LimitLog,
    pub(crate) stalled_write: LimitLog,
    pub(crate) call_deadline: LimitLog,
    /// Calls a plugin failed (an error or a panic): a broken plugin fails every request.
    pub(crate) plugin_failures: LimitLog,
    /// Chains refused at prepare_conf: the gateway re-prepares a bad route on every request.
    pub(crate) refused_prepares: LimitLog,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_hit_logs_then_one_line_per_interval_with_the_count() {
        let log = LimitLog::default();
        let step = INTERVAL.as_millis() as u64;
        assert_eq!(log.hit_at(1), Some(1));
        for t in 2..100 {
            assert_eq!(log.hit_at(t), None, "within the interval");
        }
        assert_eq!(log.hit_at(1 + step), Some(99), "98 quiet hits and this one");
        assert_eq!(log.hit_at(2 + step), None);
        assert_eq!(log.hit_at(1 + 3 * step), Some(2));
    }
}
