//! Long-lived plugin state, shared across the chains that use it.
//!
//! Every [`Chain`](crate::Chain) holds the state its plugins asked for (whatever the plugins
//! keep of it), and the registry finds live state through weak references: the pre-req and
//! post-resp chains of a route, and re-prepares of the same conf, share one value.
//!
//! State must also outlive its chains for a while. A runner's conf cache evicts chains (by
//! capacity, or by expiry) and the gateway then prepares the same route again: had the state
//! gone with the chain, a used-up limit-count quota would be fresh again, so enough unrelated
//! prepares would reset any limiter. So a chain that goes hands its state back, and the
//! registry keeps it ([`Retention`]): at most `capacity` values no chain holds, each for at most
//! `idle` after its last chain went, the least recently released going first. A runner sets
//! the bounds with [`StateRegistry::retaining`]; the default registry retains nothing.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use lru::LruCache;

use crate::metrics::Metrics;
use crate::Clock;

/// What a state value is scoped to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ScopeKey {
    Route {
        route: String,
        plugin: &'static str,
        conf_hash: u64,
    },
    Group {
        group: String,
        plugin: &'static str,
    },
}

type Key = (ScopeKey, TypeId);
type Value = Arc<dyn Any + Send + Sync>;

/// How long, and how much, state no chain holds any more is kept (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// State values kept at most once no chain holds them; 0 keeps none.
    pub capacity: usize,
    /// How long such a value is kept after its last chain went.
    pub idle: Duration,
}

impl Retention {
    /// Nothing is kept: state lives exactly as long as some chain that asked for it.
    pub const NONE: Retention = Retention {
        capacity: 0,
        idle: Duration::ZERO,
    };
}

/// Plugin state shared across chains, and the metrics registry plugins register in: what a
/// runner hands every chain it prepares.
#[derive(Default)]
pub struct StateRegistry {
    inner: Arc<Mutex<Inner>>,
    metrics: Metrics,
}

struct Inner {
    live: HashMap<Key, Weak<dyn Any + Send + Sync>>,
    /// Sweep dead entries when `live` reaches this size, so it stays within twice the live set.
    sweep_at: usize,
    /// State no chain held when its last holder went, with when that was.
    released: LruCache<Key, (Value, Duration)>,
    retention: Retention,
    clock: Clock,
}

impl Default for Inner {
    fn default() -> Inner {
        Inner {
            live: HashMap::new(),
            sweep_at: 0,
            released: LruCache::unbounded(),
            retention: Retention::NONE,
            clock: Clock::system(),
        }
    }
}

/// A state value as a chain keeps it. When the chain goes, the value goes back to the registry
/// it came from, which keeps it as its [`Retention`] allows.
pub(crate) struct Held {
    value: Option<Value>,
    key: Key,
    registry: Weak<Mutex<Inner>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let (Some(value), Some(registry)) = (self.value.take(), self.registry.upgrade()) else {
            return;
        };
        // Kept even when other chains still hold it: released by the last of them, it is
        // pushed again then, and its idle time counts from there.
        let mut inner = lock(&registry);
        if inner.retention.capacity == 0 {
            return;
        }
        let now = inner.clock.now();
        inner.expire(now);
        let key = self.key.clone();
        inner.released.push(key, (value, now));
        while inner.released.len() > inner.retention.capacity {
            inner.released.pop_lru();
        }
    }
}

impl Inner {
    /// Drops the released values idle for longer than the retention allows (oldest first).
    fn expire(&mut self, now: Duration) {
        let idle = self.retention.idle;
        while self
            .released
            .peek_lru()
            .is_some_and(|(_, (_, since))| now.saturating_sub(*since) > idle)
        {
            self.released.pop_lru();
        }
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Nothing under this lock is left half-updated by a panic worse than a lost entry.
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

impl StateRegistry {
    /// A registry whose plugins register their metrics in `metrics` (the default registry's
    /// metrics are disabled: they count, and nothing exports them).
    pub fn with_metrics(metrics: Metrics) -> StateRegistry {
        StateRegistry {
            inner: Arc::default(),
            metrics,
        }
    }

    /// Keeps state its chains released as `retention` allows, timed by `clock`.
    pub fn retaining(self, retention: Retention, clock: Clock) -> StateRegistry {
        {
            let mut inner = lock(&self.inner);
            inner.retention = retention;
            inner.clock = clock;
        }
        self
    }

    /// The metrics registry plugins see through [`crate::PrepareEnv::metrics`].
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The state for `key`, for a chain to hold: the live one, else the one a gone chain
    /// released (when still retained), else a new one from `init`.
    pub(crate) fn get_or_init<T: Any + Send + Sync>(
        &self,
        key: ScopeKey,
        init: impl FnOnce() -> T,
    ) -> (Arc<T>, Held) {
        // Only prepare_conf (and chains going) take this lock, never a request, and nothing
        // awaits under it.
        let mut inner = lock(&self.inner);
        let key = (key, TypeId::of::<T>());
        let now = inner.clock.now();
        inner.expire(now);
        let found = match inner.live.get(&key).and_then(Weak::upgrade) {
            Some(live) => Some(live),
            None => inner.released.pop(&key).map(|(value, _)| value),
        };
        let erased = match found {
            Some(value) => value,
            None => {
                let value: Value = Arc::new(init());
                value
            }
        };
        inner.live.insert(key.clone(), Arc::downgrade(&erased));
        if inner.live.len() >= inner.sweep_at {
            inner.live.retain(|_, w| w.strong_count() > 0);
            inner.sweep_at = (inner.live.len() * 2).max(64);
        }
        let typed = erased
            .clone()
            .downcast::<T>()
            .expect("entries are keyed by their type");
        let held = Held {
            value: Some(erased),
            key,
            registry: Arc::downgrade(&self.inner),
        };
        (typed, held)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.inner).live.len()
    }

    #[cfg(test)]
    pub(crate) fn released(&self) -> usize {
        lock(&self.inner).released.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn key(route: &str) -> ScopeKey {
        ScopeKey::Route {
            route: route.into(),
            plugin: "p",
            conf_hash: 1,
        }
    }

    fn counter(reg: &StateRegistry, route: &str) -> (Arc<AtomicU32>, Held) {
        reg.get_or_init(key(route), || AtomicU32::new(0))
    }

    #[test]
    fn same_scope_shares_and_dropped_state_is_renewed() {
        let reg = StateRegistry::default();
        let (a, held_a) = counter(&reg, "r1");
        a.fetch_add(5, Ordering::Relaxed);
        let (b, held_b) = counter(&reg, "r1");
        assert_eq!(b.load(Ordering::Relaxed), 5);
        let (other, _held) = counter(&reg, "r2");
        assert_eq!(other.load(Ordering::Relaxed), 0);
        drop((a, b, held_a, held_b));
        let (renewed, _held) = counter(&reg, "r1");
        assert_eq!(
            renewed.load(Ordering::Relaxed),
            0,
            "the default retains nothing"
        );
    }

    #[test]
    fn dead_entries_are_swept() {
        let reg = StateRegistry::default();
        for i in 0..10_000 {
            drop(reg.get_or_init(key(&i.to_string()), || 0u8));
        }
        assert!(reg.len() <= 128, "registry kept {} dead entries", reg.len());
    }

    fn retaining(capacity: usize, idle_secs: u64) -> (StateRegistry, Clock) {
        let clock = Clock::manual();
        let retention = Retention {
            capacity,
            idle: Duration::from_secs(idle_secs),
        };
        let reg = StateRegistry::default().retaining(retention, clock.clone());
        (reg, clock)
    }

    /// Finding 7 of issue 11: state outlives the chains that held it, within its own bounds.
    #[test]
    fn released_state_is_found_again_within_its_bounds() {
        let (reg, clock) = retaining(2, 60);
        let (a, held) = counter(&reg, "r1");
        a.store(7, Ordering::Relaxed);
        drop((a, held));
        clock.advance(Duration::from_secs(59));
        let (again, held) = counter(&reg, "r1");
        assert_eq!(
            again.load(Ordering::Relaxed),
            7,
            "re-prepared within `idle`"
        );
        drop((again, held));
        clock.advance(Duration::from_secs(61));
        assert_eq!(
            counter(&reg, "r1").0.load(Ordering::Relaxed),
            0,
            "idle too long"
        );

        for route in ["a", "b", "c"] {
            let (v, held) = counter(&reg, route);
            v.store(1, Ordering::Relaxed);
            drop(held);
        }
        assert_eq!(reg.released(), 2, "at most `capacity` kept");
        assert_eq!(
            counter(&reg, "a").0.load(Ordering::Relaxed),
            0,
            "the oldest went"
        );
        assert_eq!(counter(&reg, "c").0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn released_state_still_held_elsewhere_stays_shared() {
        let (reg, _clock) = retaining(4, 60);
        let (a, held_a) = counter(&reg, "r1");
        let (_b, held_b) = counter(&reg, "r1");
        drop(held_a);
        a.store(3, Ordering::Relaxed);
        let (c, _held_c) = counter(&reg, "r1");
        assert!(Arc::ptr_eq(&a, &c), "one value per scope");
        drop(held_b);
        assert_eq!(c.load(Ordering::Relaxed), 3);
    }
}
