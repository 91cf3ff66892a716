//! One log line per limit hit, not one per event.
//!
//! A hostile or broken gateway can hit a limit thousands of times a second (every connection
//! over `max_connections`, every oversized frame); logging each would flood the gateway's error
//! log, which is where our stderr goes. Each limit gets a [`LimitLog`]: the first hit logs at
//! once, later hits within [`INTERVAL`] are only counted, and the next line reports how many
//! there were.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
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

/// Keys a [`KeyedLimitLog`] remembers at most.
pub(crate) const KEYED_CAPACITY: usize = 4096;

/// Bytes of a key a [`KeyedLimitLog`] tells apart: keys come from the peer (route keys of any
/// length), and the map must stay small whatever they are. Keys alike in their first this many
/// bytes share one log line per interval.
pub(crate) const KEYED_KEY_BYTES: usize = 256;

/// `key` cut to [`KEYED_KEY_BYTES`], at a character boundary.
fn key_prefix(key: &str) -> &str {
    if key.len() <= KEYED_KEY_BYTES {
        return key;
    }
    let mut end = KEYED_KEY_BYTES;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    &key[..end]
}

/// A [`LimitLog`] per key: every key's first hit logs, then at most one line per key per
/// [`INTERVAL`]. For events that name something the operator must fix one by one (a bad route):
/// one key's flood must not hide another key's first line.
///
/// Bounded: at most [`KEYED_CAPACITY`] keys of at most [`KEYED_KEY_BYTES`] are remembered; when full, keys quiet for an
/// interval are forgotten, then the longest-quiet one. A forgotten key that hits again logs
/// again: the bound can only add lines, never lose a key's first one.
pub(crate) struct KeyedLimitLog {
    epoch: Instant,
    keys: Mutex<HashMap<Box<str>, Slot>>,
}

struct Slot {
    /// Milliseconds after `epoch` of the key's last line.
    last: u64,
    /// Hits since the key's last line.
    hits: u64,
}

impl Default for KeyedLimitLog {
    fn default() -> KeyedLimitLog {
        KeyedLimitLog {
            epoch: Instant::now(),
            keys: Mutex::new(HashMap::new()),
        }
    }
}

impl KeyedLimitLog {
    /// Counts a hit of `key`; `Some(hits since its last line, this one included)` when a line
    /// is due.
    pub(crate) fn hit(&self, key: &str) -> Option<u64> {
        let now = Instant::now().saturating_duration_since(self.epoch);
        self.hit_at(key, now.as_millis() as u64)
    }

    fn hit_at(&self, key: &str, now: u64) -> Option<u64> {
        let key = key_prefix(key);
        let interval = INTERVAL.as_millis() as u64;
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = keys.get_mut(key) {
            slot.hits += 1;
            if now.saturating_sub(slot.last) < interval {
                return None;
            }
            slot.last = now;
            return Some(std::mem::take(&mut slot.hits));
        }
        if keys.len() >= KEYED_CAPACITY {
            keys.retain(|_, s| now.saturating_sub(s.last) < interval);
        }
        if keys.len() >= KEYED_CAPACITY {
            let quietest = keys
                .iter()
                .min_by_key(|(_, s)| s.last)
                .map(|(k, _)| k.clone());
            if let Some(k) = quietest {
                keys.remove(&k);
            }
        }
        keys.insert(key.into(), Slot { last: now, hits: 0 });
        Some(1)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.lock().unwrap().len()
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
    /// Calls that read extra_info answers past their budget.
    pub(crate) extra_info_budget: LimitLog,
    /// Connections closed because frames in flight had spent the process's buffer budget.
    pub(crate) buffered_bytes: LimitLog,
    /// Connections closed because a frame was not whole within the frame deadline.
    pub(crate) frame_deadline: LimitLog,
    /// Calls a plugin failed (an error or a panic): a broken plugin fails every request.
    pub(crate) plugin_failures: LimitLog,
    /// Chains refused at prepare_conf, per conf key: the gateway re-prepares a bad route on
    /// every request, and every bad route must be named.
    pub(crate) refused_prepares: KeyedLimitLog,
    /// accept(2) failures (out of file descriptors): retried with a backoff, logged per interval.
    pub(crate) accept_failures: LimitLog,
    /// Connections refused by `--allow-peers`, per peer uid.
    pub(crate) refused_peers: KeyedLimitLog,
    /// Connections closed by `--max-connections-per-uid`, per peer uid.
    pub(crate) peer_connections: KeyedLimitLog,
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

    #[test]
    fn every_key_logs_its_first_hit_and_then_once_per_interval() {
        let log = KeyedLimitLog::default();
        let step = INTERVAL.as_millis() as u64;
        assert_eq!(log.hit_at("route#1", 0), Some(1));
        assert_eq!(log.hit_at("route#1", 1), None);
        assert_eq!(
            log.hit_at("route#2", 2),
            Some(1),
            "another key is not hidden"
        );
        assert_eq!(log.hit_at("route#1", 3), None);
        assert_eq!(
            log.hit_at("route#1", step),
            Some(3),
            "two quiet hits and this one"
        );
        assert_eq!(
            log.hit_at("route#2", step + 1),
            None,
            "within route#2's interval"
        );
    }

    #[test]
    fn keys_stay_bounded_and_a_forgotten_key_logs_again() {
        let log = KeyedLimitLog::default();
        for i in 0..KEYED_CAPACITY + 100 {
            assert_eq!(log.hit_at(&format!("k{i}"), i as u64), Some(1), "k{i}");
        }
        assert_eq!(log.len(), KEYED_CAPACITY);
        // k0 was the quietest, so it went first: it logs again rather than being lost.
        assert_eq!(log.hit_at("k0", 5000), Some(1));
        assert_eq!(log.hit_at(&format!("k{}", KEYED_CAPACITY + 99), 5001), None);
    }

    #[test]
    fn long_keys_are_remembered_by_their_prefix() {
        let log = KeyedLimitLog::default();
        let long = |tail: &str| format!("{}{tail}", "é".repeat(KEYED_KEY_BYTES));
        assert_eq!(log.hit_at(&long("a"), 0), Some(1));
        assert_eq!(
            log.hit_at(&long("b"), 1),
            None,
            "same first bytes, same line"
        );
        let stored: usize = log.keys.lock().unwrap().keys().map(|k| k.len()).sum();
        assert!(stored <= KEYED_KEY_BYTES, "{stored}");
    }
}
