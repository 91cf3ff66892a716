//! Long-lived plugin state, shared across the chains that use it.
//!
//! The registry holds only weak references; every [`Chain`](crate::Chain) holds the state its
//! plugins asked for (whatever the plugins keep of it). So a state value lives exactly as long
//! as some prepared chain that asked for it, the registry is bounded by the conf cache, and it
//! never keeps state for a conf the runner has forgotten.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use crate::metrics::Metrics;

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

type Entry = Weak<dyn Any + Send + Sync>;

/// Plugin state shared across chains, and the metrics registry plugins register in: what a
/// runner hands every chain it prepares.
#[derive(Default)]
pub struct StateRegistry {
    inner: Mutex<Inner>,
    metrics: Metrics,
}

#[derive(Default)]
struct Inner {
    map: HashMap<(ScopeKey, TypeId), Entry>,
    /// Sweep dead entries when the map reaches this size, so it stays within twice the live set.
    sweep_at: usize,
}

impl StateRegistry {
    /// A registry whose plugins register their metrics in `metrics` (the default registry's
    /// metrics are disabled: they count, and nothing exports them).
    pub fn with_metrics(metrics: Metrics) -> StateRegistry {
        StateRegistry {
            inner: Mutex::default(),
            metrics,
        }
    }

    /// The metrics registry plugins see through [`crate::PrepareEnv::metrics`].
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The live state for `key`, or a new one from `init`.
    pub(crate) fn get_or_init<T: Any + Send + Sync>(
        &self,
        key: ScopeKey,
        init: impl FnOnce() -> T,
    ) -> Arc<T> {
        // Only prepare_conf takes this lock, never a request, and nothing awaits under it.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let key = (key, TypeId::of::<T>());
        if let Some(live) = inner.map.get(&key).and_then(Weak::upgrade) {
            return live
                .downcast::<T>()
                .expect("entries are keyed by their type");
        }
        let value = Arc::new(init());
        let erased: Arc<dyn Any + Send + Sync> = value.clone();
        inner.map.insert(key, Arc::downgrade(&erased));
        if inner.map.len() >= inner.sweep_at {
            inner.map.retain(|_, w| w.strong_count() > 0);
            inner.sweep_at = (inner.map.len() * 2).max(64);
        }
        value
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().unwrap().map.len()
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

    #[test]
    fn same_scope_shares_and_dropped_state_is_renewed() {
        let reg = StateRegistry::default();
        let a = reg.get_or_init(key("r1"), || AtomicU32::new(0));
        a.fetch_add(5, Ordering::Relaxed);
        let b = reg.get_or_init(key("r1"), || AtomicU32::new(0));
        assert_eq!(b.load(Ordering::Relaxed), 5);
        let other = reg.get_or_init(key("r2"), || AtomicU32::new(0));
        assert_eq!(other.load(Ordering::Relaxed), 0);
        drop((a, b));
        let renewed = reg.get_or_init(key("r1"), || AtomicU32::new(0));
        assert_eq!(renewed.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn dead_entries_are_swept() {
        let reg = StateRegistry::default();
        for i in 0..10_000 {
            drop(reg.get_or_init(key(&i.to_string()), || 0u8));
        }
        assert!(reg.len() <= 128, "registry kept {} dead entries", reg.len());
    }
}
