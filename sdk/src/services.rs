//! Process-wide values a runner hands to plugins at prepare time.
//!
//! Some plugins need something that outlives every chain and is made once per process from the
//! runner's own settings: a rule store fed by a file watcher or a control-plane client, a shared
//! connection pool. The runner (or a test) puts it into the [`Registry`](crate::Registry) with
//! [`Registry::provide`](crate::Registry::provide); a plugin finds it by type with
//! [`PrepareEnv::service`](crate::PrepareEnv::service). A plugin that needs a service the runner
//! did not provide fails its prepare with a message saying how to provide it.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

/// Values by type; cloning shares them.
#[derive(Clone, Default)]
pub(crate) struct Services {
    map: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl Services {
    pub(crate) fn insert<T: Any + Send + Sync>(&mut self, value: Arc<T>) -> bool {
        self.map.insert(TypeId::of::<T>(), value).is_some()
    }

    pub(crate) fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let value = self.map.get(&TypeId::of::<T>())?.clone();
        Some(
            value
                .downcast::<T>()
                .expect("services are keyed by their type"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_found_by_type() {
        let mut s = Services::default();
        assert!(s.get::<u32>().is_none());
        assert!(!s.insert(Arc::new(7u32)));
        assert!(
            s.insert(Arc::new(8u32)),
            "a second value replaces the first"
        );
        assert_eq!(*s.get::<u32>().unwrap(), 8);
        assert!(s.get::<u64>().is_none());
    }
}
