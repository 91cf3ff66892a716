//! A list that is almost always of one item (the limits of one request: one unless `rules` are
//! set), kept without a heap allocation until a second item comes.

/// Zero, one or more items.
#[derive(Debug)]
pub enum Few<T> {
    None,
    One(T),
    Many(Vec<T>),
}

impl<T> Few<T> {
    pub fn push(&mut self, item: T) {
        *self = match std::mem::replace(self, Few::None) {
            Few::None => Few::One(item),
            Few::One(first) => Few::Many(vec![first, item]),
            Few::Many(mut items) => {
                items.push(item);
                Few::Many(items)
            }
        };
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Few::None)
    }

    pub fn as_slice(&self) -> &[T] {
        match self {
            Few::None => &[],
            Few::One(item) => std::slice::from_ref(item),
            Few::Many(items) => items,
        }
    }
}

impl<T> IntoIterator for Few<T> {
    type Item = T;
    type IntoIter = std::iter::Chain<std::option::IntoIter<T>, std::vec::IntoIter<T>>;

    fn into_iter(self) -> Self::IntoIter {
        let (one, many) = match self {
            Few::None => (None, Vec::new()),
            Few::One(item) => (Some(item), Vec::new()),
            Few::Many(items) => (None, items),
        };
        one.into_iter().chain(many)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_from_none_to_many_in_order() {
        let mut f = Few::None;
        assert!(f.is_empty());
        f.push(1);
        assert!(matches!(f, Few::One(1)));
        f.push(2);
        f.push(3);
        assert_eq!(f.as_slice(), [1, 2, 3]);
        assert_eq!(f.into_iter().collect::<Vec<_>>(), [1, 2, 3]);
    }
}
