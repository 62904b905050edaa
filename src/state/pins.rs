//! Which project holds a resource: the affinity map `resource name → (project, expiry,
//! tenant)`, learned from the answers that create resources (a stored interaction, a file, a
//! context cache, a batch) and read for every request that refers to one.
//!
//! Bounded in entries ([`MAX_PINS`]) and in the length of what an entry holds: when full,
//! what has expired goes first, then the entries that expire soonest (an eighth at a time, so
//! a flood of creations costs one selection per eighth of the map, not one scan per insert).
//! One tenant holds at most [`MAX_PINS_PER_TENANT`]: past it, its own oldest go (found in
//! its own order, not by a scan of the map), so that a client creating resources as fast as
//! its quota allows cannot push the others' out.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The most resources the map remembers.
pub const MAX_PINS: usize = 100_000;
/// The most resources one tenant's records may hold.
pub const MAX_PINS_PER_TENANT: usize = MAX_PINS / 8;
/// The longest resource name kept (`interactions/…`, `files/…`); a longer one is not pinned.
pub const MAX_RESOURCE_NAME: usize = 256;

/// Where one resource lives: its project, until when, and (in a gateway) which client made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRecord {
    /// The project whose key created the resource.
    pub project: Arc<str>,
    /// When the resource expires at Google (Unix ms); the pin is forgotten then.
    pub expires_at: u64,
    /// The tenant that created it ([`Tenant`](crate::context::Tenant)), if one was named:
    /// another tenant is told the resource does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Arc<str>>,
    /// The resource's size. For a stored conversation: its tokens after its last answer (that
    /// answer's input and output), which a continuation sends to Google as prompt; for a
    /// context cache, its tokens; for a running batch, its estimated tokens (0 once done); for
    /// a file or an upload under way, its bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One resource's record as saved in the state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SavedPin {
    pub(crate) name: String,
    #[serde(flatten)]
    pub(crate) record: PinRecord,
}

/// The affinity map of one process (its working copy; a shared [`Store`](super::Store) holds
/// it for every replica).
#[derive(Debug, Default)]
pub(crate) struct Pins {
    map: Mutex<PinMap>,
}

/// The records, and each tenant's, oldest first.
#[derive(Debug, Default)]
struct PinMap {
    by_name: HashMap<Arc<str>, PinRecord>,
    per_tenant: HashMap<Arc<str>, TenantPins>,
}

/// One tenant's records: how many, and their names in the order they were learned (names
/// since forgotten or replaced are skipped when met, and swept out when they pile up).
#[derive(Debug, Default)]
struct TenantPins {
    count: usize,
    order: VecDeque<Arc<str>>,
}

impl PinMap {
    fn insert(&mut self, name: &str, record: PinRecord) {
        let name: Arc<str> = Arc::from(name);
        // A record updated by its own tenant (its size, its expiry) keeps its place.
        let kept = self
            .by_name
            .get(&name)
            .is_some_and(|old| old.tenant == record.tenant);
        if let Some(tenant) = &record.tenant {
            let pins = self.per_tenant.entry(tenant.clone()).or_default();
            pins.count += 1;
            if !kept {
                pins.order.push_back(name.clone());
            }
        }
        if let Some(old) = self.by_name.insert(name, record) {
            self.uncount(&old);
        }
        self.sweep();
    }

    fn remove(&mut self, name: &str) {
        if let Some(old) = self.by_name.remove(name) {
            self.uncount(&old);
        }
    }

    fn uncount(&mut self, record: &PinRecord) {
        if let Some(tenant) = &record.tenant
            && let Some(pins) = self.per_tenant.get_mut(tenant)
        {
            pins.count -= 1;
            if pins.count == 0 {
                self.per_tenant.remove(tenant);
            }
        }
    }

    /// Drop the names of a tenant's order that no longer hold its records, once they are
    /// half of it (so the order stays within twice the records, at a cost spread thin).
    fn sweep(&mut self) {
        let by_name = &self.by_name;
        for (tenant, pins) in self.per_tenant.iter_mut() {
            if pins.order.len() > 2 * pins.count + 64 {
                let mut seen = std::collections::HashSet::new();
                pins.order.retain(|name| {
                    by_name
                        .get(name)
                        .is_some_and(|r| r.tenant.as_deref() == Some(&**tenant))
                        && seen.insert(name.clone())
                });
            }
        }
    }

    /// Keep only the records `keep` accepts (rare: the tenants' counts are made again).
    fn retain(&mut self, keep: impl Fn(&PinRecord) -> bool) {
        self.by_name.retain(|_, record| keep(record));
        self.per_tenant.clear();
        for (name, record) in &self.by_name {
            if let Some(tenant) = &record.tenant {
                let pins = self.per_tenant.entry(tenant.clone()).or_default();
                pins.count += 1;
                pins.order.push_back(name.clone());
            }
        }
    }

    /// Drop `tenant`'s oldest record.
    fn drop_oldest_of(&mut self, tenant: &str) {
        while let Some(name) = self
            .per_tenant
            .get_mut(tenant)
            .and_then(|pins| pins.order.pop_front())
        {
            let held = self
                .by_name
                .get(&name)
                .is_some_and(|r| r.tenant.as_deref() == Some(tenant));
            if held {
                self.remove(&name);
                return;
            }
        }
    }
}

impl Pins {
    /// Remember that `name` lives in `record.project` until `record.expires_at`. `false`: the
    /// name is too long to keep, or it has already expired.
    pub(crate) fn learn(&self, name: &str, record: PinRecord, now: u64) -> bool {
        if name.len() > MAX_RESOURCE_NAME || record.expires_at <= now {
            return false;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // A live record is its tenant's: an answer naming the same resource for another
        // tenant (an upstream that reuses an id) does not take it over.
        if let Some(old) = map.by_name.get(name)
            && old.expires_at > now
            && old.tenant != record.tenant
        {
            return false;
        }
        if !map.by_name.contains_key(name) {
            if let Some(tenant) = &record.tenant
                && map.per_tenant.get(tenant).map_or(0, |p| p.count) >= MAX_PINS_PER_TENANT
            {
                map.drop_oldest_of(tenant);
            }
            if map.by_name.len() >= MAX_PINS {
                make_room(&mut map, now);
            }
        }
        map.insert(name, record);
        true
    }

    /// Where `name` lives, if known and not expired.
    pub(crate) fn get(&self, name: &str, now: u64) -> Option<PinRecord> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.by_name.get(name) {
            Some(record) if record.expires_at > now => Some(record.clone()),
            Some(_) => {
                map.remove(name);
                None
            }
            None => None,
        }
    }

    /// Forget `name` (the resource was deleted).
    pub(crate) fn forget(&self, name: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// The names of `tenant`'s live resources that start with `prefix`, oldest first.
    pub(crate) fn names_of(&self, tenant: &str, prefix: &str, now: u64) -> Vec<Arc<str>> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pins) = map.per_tenant.get(tenant) else {
            return Vec::new();
        };
        let mut seen = std::collections::HashSet::new();
        pins.order
            .iter()
            .filter(|name| name.starts_with(prefix) && seen.insert(Arc::clone(name)))
            .filter(|name| {
                map.by_name
                    .get(&***name)
                    .is_some_and(|r| r.expires_at > now && r.tenant.as_deref() == Some(tenant))
            })
            .cloned()
            .collect()
    }

    /// The records of every live resource whose name starts with `prefix` (`batches/`), for
    /// what a project holds of a kind (a scan of the map: for rare calls, such as a batch's
    /// create).
    pub(crate) fn records_of(&self, prefix: &str, now: u64) -> Vec<PinRecord> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.by_name
            .iter()
            .filter(|(name, r)| name.starts_with(prefix) && r.expires_at > now)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// The records of `tenant`'s live resources whose names start with `prefix`.
    pub(crate) fn records_of_tenant(&self, tenant: &str, prefix: &str, now: u64) -> Vec<PinRecord> {
        let names = self.names_of(tenant, prefix, now);
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        names
            .iter()
            .filter_map(|name| map.by_name.get(&**name).cloned())
            .collect()
    }

    /// How many resources of each kind (the collection of their name: `interactions`,
    /// `cachedContents`) each tenant holds (for status pages: counts, never names).
    pub(crate) fn count_by_tenant(
        &self,
        now: u64,
    ) -> HashMap<Option<Arc<str>>, BTreeMap<String, usize>> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut counts: HashMap<Option<Arc<str>>, BTreeMap<String, usize>> = HashMap::new();
        for (name, record) in map.by_name.iter().filter(|(_, r)| r.expires_at > now) {
            let kind = name.split_once('/').map_or("other", |(kind, _)| kind);
            *counts
                .entry(record.tenant.clone())
                .or_default()
                .entry(kind.to_owned())
                .or_insert(0) += 1;
        }
        counts
    }

    /// Every live record, for the state file.
    pub(crate) fn save(&self, now: u64) -> Vec<SavedPin> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.by_name
            .iter()
            .filter(|(_, r)| r.expires_at > now)
            .map(|(name, record)| SavedPin {
                name: name.to_string(),
                record: record.clone(),
            })
            .collect()
    }

    /// Take back saved records (those not yet expired); how many were taken.
    pub(crate) fn restore(&self, saved: &[SavedPin], now: u64) -> usize {
        saved
            .iter()
            .filter(|pin| self.learn(&pin.name, pin.record.clone(), now))
            .count()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_name
            .len()
    }
}

/// Drop what has expired; if that is not enough, the eighth of the map that expires soonest.
fn make_room(map: &mut PinMap, now: u64) {
    map.retain(|record| record.expires_at > now);
    if map.by_name.len() < MAX_PINS {
        return;
    }
    let mut expiries: Vec<u64> = map.by_name.values().map(|r| r.expires_at).collect();
    let cut = expiries.len() / 8;
    let (_, &mut threshold, _) = expiries.select_nth_unstable(cut);
    map.retain(|record| record.expires_at > threshold);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(project: &str, expires_at: u64) -> PinRecord {
        PinRecord {
            project: Arc::from(project),
            expires_at,
            tenant: None,
            tokens: 0,
        }
    }

    #[test]
    fn learned_pins_expire_and_are_forgotten() {
        let pins = Pins::default();
        assert!(pins.learn("interactions/a", record("p", 1_000), 10));
        assert_eq!(
            pins.get("interactions/a", 999).unwrap().project.as_ref(),
            "p"
        );
        assert!(pins.get("interactions/a", 1_000).is_none());
        assert!(pins.learn("interactions/b", record("q", 1_000), 10));
        pins.forget("interactions/b");
        assert!(pins.get("interactions/b", 20).is_none());
        // Already expired, or a name too long: not kept.
        assert!(!pins.learn("interactions/c", record("p", 5), 10));
        assert!(!pins.learn(&"x".repeat(MAX_RESOURCE_NAME + 1), record("p", 1_000), 10));
    }

    #[test]
    fn the_map_is_bounded_and_drops_what_expires_soonest() {
        let pins = Pins::default();
        for i in 0..MAX_PINS as u64 {
            assert!(pins.learn(&format!("interactions/{i}"), record("p", 1_000 + i), 0));
        }
        assert_eq!(pins.len(), MAX_PINS);
        assert!(pins.learn("interactions/new", record("p", 1_000_000), 0));
        assert!(pins.len() <= MAX_PINS);
        assert!(pins.len() > MAX_PINS * 3 / 4);
        assert!(pins.get("interactions/new", 1).is_some());
        // The soonest to expire went; the latest stayed.
        assert!(pins.get("interactions/0", 1).is_none());
        let last = format!("interactions/{}", MAX_PINS - 1);
        assert!(pins.get(&last, 1).is_some());
    }

    #[test]
    fn one_tenant_cannot_push_out_the_others() {
        let pins = Pins::default();
        let owned = |tenant: &str, expires_at: u64| PinRecord {
            tenant: Some(Arc::from(tenant)),
            ..record("p", expires_at)
        };
        assert!(pins.learn("interactions/alice", owned("alice", 10), 0));
        for i in 0..(MAX_PINS_PER_TENANT as u64 + 100) {
            pins.learn(&format!("interactions/m{i}"), owned("mallory", 100 + i), 0);
        }
        let counts = pins.count_by_tenant(1);
        assert_eq!(
            counts[&Some(Arc::from("mallory"))]["interactions"],
            MAX_PINS_PER_TENANT
        );
        assert_eq!(counts[&Some(Arc::from("alice"))]["interactions"], 1);
        // Mallory's oldest went; her newest stayed.
        assert!(pins.get("interactions/m0", 1).is_none());
        let newest = format!("interactions/m{}", MAX_PINS_PER_TENANT + 99);
        assert!(pins.get(&newest, 1).is_some());
        // Replacing a record does not count it twice.
        pins.learn("interactions/alice", owned("alice", 20), 0);
        assert_eq!(
            pins.count_by_tenant(1)[&Some(Arc::from("alice"))]["interactions"],
            1
        );
        // Updates by the tenant keep one place in its order.
        for n in 0..500 {
            pins.learn(
                "interactions/alice",
                PinRecord {
                    tokens: n,
                    ..owned("alice", 20)
                },
                0,
            );
        }
        let map = pins.map.lock().unwrap();
        assert_eq!(map.per_tenant[&Arc::from("alice")].order.len(), 1);
        drop(map);
        // Another tenant cannot take a live record over.
        assert!(!pins.learn("interactions/alice", owned("mallory", 30), 0));
        assert_eq!(
            pins.get("interactions/alice", 1).unwrap().tenant.as_deref(),
            Some("alice")
        );
    }

    #[test]
    fn saved_pins_come_back_unless_expired() {
        let pins = Pins::default();
        pins.learn("interactions/a", record("p", 1_000), 0);
        pins.learn("interactions/b", record("q", 50), 0);
        let saved = pins.save(10);
        assert_eq!(saved.len(), 2);
        let restored = Pins::default();
        assert_eq!(restored.restore(&saved, 100), 1);
        assert_eq!(
            restored
                .get("interactions/a", 100)
                .unwrap()
                .project
                .as_ref(),
            "p"
        );
    }
}
