//! Values a plugin leaves for later plugins of the same call, one per type.

use std::any::Any;

/// A tiny type map. A call carries a handful of values at most, so a vector beats a map, and it
/// is reused from call to call.
#[derive(Default)]
pub(crate) struct Extensions(Vec<Box<dyn Any + Send>>);

impl Extensions {
    pub(crate) fn insert<T: Any + Send>(&mut self, value: T) {
        self.0.retain(|e| !e.is::<T>());
        self.0.push(Box::new(value));
    }

    pub(crate) fn get<T: Any + Send>(&self) -> Option<&T> {
        self.0.iter().find_map(|e| e.downcast_ref::<T>())
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_type() {
        let mut ext = Extensions::default();
        ext.insert(1u32);
        ext.insert("a");
        ext.insert(2u32);
        assert_eq!(ext.get::<u32>(), Some(&2));
        assert_eq!(ext.get::<&str>(), Some(&"a"));
        ext.clear();
        assert_eq!(ext.get::<u32>(), None);
    }
}
