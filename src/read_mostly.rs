//! [`ReadMostly`]: a map by name looked up on every call and written rarely.
//!
//! The per-model slots of a pool and the circuits of a breaker are found by name on every
//! call, and a name is added only the first time it is seen. A `RwLock` makes every lookup
//! write the lock's shared counter twice, and two threads doing that bounce its cache line
//! between cores on every call. Here a lookup reads an [`ArcSwap`]'d map (arc-swap keeps its
//! bookkeeping per thread); a writer copies the map, changes the copy and publishes it, under a
//! mutex that only writers take. The maps are bounded (by `MAX_MODELS` and `MAX_SCOPES`), so a
//! copy is bounded too.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

/// Name → shared value, hashed with foldhash (seeded per process): the names are few and
/// short, and looked up on every call.
pub(crate) type NameMap<V> = HashMap<Arc<str>, Arc<V>, foldhash::fast::RandomState>;

/// Forget one entry of `map` that `forgettable` allows and nobody holds (only the map has it;
/// a reader may still hold the published map for an instant, and then its entries count 2 and
/// wait): true if one was. For tables keyed by names callers choose, bounded by evicting.
pub(crate) fn evict_idle<V>(
    map: &mut std::borrow::Cow<'_, NameMap<V>>,
    forgettable: impl Fn(&V) -> bool,
) -> bool {
    let evict = map
        .iter()
        .find(|(_, v)| Arc::strong_count(v) == 1 && forgettable(v))
        .map(|(name, _)| name.clone());
    match evict {
        Some(name) => {
            map.to_mut().remove(&name);
            true
        }
        None => false,
    }
}

/// A [`NameMap`] read without locks and written copy-on-write. See the [module docs](self).
pub(crate) struct ReadMostly<V> {
    map: ArcSwap<NameMap<V>>,
    writer: Mutex<()>,
}

impl<V> Default for ReadMostly<V> {
    fn default() -> Self {
        ReadMostly {
            map: ArcSwap::from_pointee(NameMap::default()),
            writer: Mutex::new(()),
        }
    }
}

impl<V> ReadMostly<V> {
    /// The value for `name`, if there is one.
    #[inline]
    pub(crate) fn get(&self, name: &str) -> Option<Arc<V>> {
        self.map.load().get(name).cloned()
    }

    /// Every value, in no particular order.
    pub(crate) fn values(&self) -> Vec<Arc<V>> {
        self.map.load().values().cloned().collect()
    }

    /// Change the map: `change` sees the current map, one writer at a time, and calls
    /// [`Cow::to_mut`] only if it changes it; a changed copy is then published for readers.
    pub(crate) fn update<R>(&self, change: impl FnOnce(&mut Cow<'_, NameMap<V>>) -> R) -> R {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.map.load_full();
        let mut map = Cow::Borrowed(&*current);
        let result = change(&mut map);
        if let Cow::Owned(changed) = map {
            self.map.store(Arc::new(changed));
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_see_what_writers_published_and_unchanged_maps_are_not_copied() {
        let map: ReadMostly<u32> = ReadMostly::default();
        assert!(map.get("a").is_none());
        let added = map.update(|m| {
            let value = Arc::new(1);
            m.to_mut().insert(Arc::from("a"), value.clone());
            value
        });
        assert_eq!(map.get("a"), Some(added));
        let before = map.map.load_full();
        let seen = map.update(|m| m.get("a").cloned());
        assert_eq!(seen.as_deref(), Some(&1));
        assert!(
            Arc::ptr_eq(&before, &map.map.load_full()),
            "a read-only update published a copy"
        );
        assert_eq!(map.values().len(), 1);
    }

    #[test]
    fn a_lookup_from_another_thread_sees_a_published_name() {
        let map: Arc<ReadMostly<u32>> = Arc::default();
        map.update(|m| m.to_mut().insert(Arc::from("b"), Arc::new(2)));
        let reader = map.clone();
        let seen = std::thread::spawn(move || reader.get("b").map(|v| *v))
            .join()
            .unwrap();
        assert_eq!(seen, Some(2));
    }
}
