//! The [`Store`] trait: where the pool's state is shared beyond one process.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::effects::Effect;
use super::health::DisabledReason;
use super::limits::ModelLimits;
use super::meter::{Demand, Dimension};
use super::pins::PinRecord;

/// A boxed future returned by a [`Store`].
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Which key, project and model a request or an answer concerns. Holds the key's fingerprint
/// (its last 4 characters), never the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The key's fingerprint tail (last 4 characters).
    pub key: Arc<str>,
    /// The key's project.
    pub project: Arc<str>,
    /// The request's model (`None`: unknown).
    pub model: Option<Arc<str>>,
}

/// One request asking a shared store for its place in the ledger of its project and model.
#[derive(Debug, Clone)]
pub struct Admission {
    /// Key, project and model.
    pub scope: Scope,
    /// What the request asks of the quota.
    pub demand: Demand,
    /// The limits this process knows (configured, preset, learned); a store may know lower
    /// ones (learned by another process) and applies the lowest.
    pub limits: ModelLimits,
    /// Now, by the pool's clock (Unix ms).
    pub now: u64,
}

/// A request's place in a shared ledger, to refund or correct later.
#[derive(Debug, Clone)]
// Read by the stores that hand tickets out (Redis); `MemoryStore` never does.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub struct SharedTicket {
    pub(crate) member: String,
    pub(crate) base: Arc<str>,
    pub(crate) day: Arc<str>,
    pub(crate) at: u64,
    pub(crate) tokens: u64,
    pub(crate) images: u64,
}

/// Why a shared store refused a request. Each is mirrored into the process's working copy, so
/// that its selection skips what another process found exhausted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SharedRefusal {
    /// The project+model's shared ledger has no room in `dimension` (limit `limit`); a slot
    /// frees at `until` (Unix ms; `None`: the request is larger than the limit).
    Quota {
        /// The dimension without room.
        dimension: Dimension,
        /// Its limit.
        limit: u64,
        /// When a slot frees (Unix ms).
        until: Option<u64>,
    },
    /// The project+model cools until this time (Unix ms): another process saw Google's 429.
    ModelCooling(u64),
    /// The key cools until this time (Unix ms).
    KeyCooling(u64),
    /// The key was disabled (by any process) until reset.
    KeyDisabled(DisabledReason),
    /// The key's project was disabled until reset.
    ProjectDisabled(DisabledReason),
    /// The model was disabled for the project until reset (quota 0 on its tier).
    ModelDisabled,
    /// The store cannot be reached and is set to refuse rather than fall back.
    Unreachable(String),
}

/// Where state is shared: the pool's working copy (its memory) is always consulted first; a
/// shared store is asked second and has the last word. See the [module docs](super).
///
/// The layers call a store only when [`is_shared`](Store::is_shared) is true, so the default
/// [`MemoryStore`] costs nothing.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Does this store hold state beyond this process? `false`: the working copy is the truth
    /// and nothing else is called.
    fn is_shared(&self) -> bool;

    /// Can the store be reached now (as of its last call)? For status pages; a store that is
    /// not shared is always reachable.
    fn is_reachable(&self) -> bool {
        true
    }

    /// Take a place for the request in its project+model's ledger, all or nothing across
    /// dimensions. `Ok(None)`: admitted without a place to give back (no shared ledger now,
    /// e.g. falling back to local state).
    fn admit(
        &self,
        admission: Admission,
    ) -> StoreFuture<Result<Option<SharedTicket>, SharedRefusal>>;

    /// Give a place back: Google refused the request before counting it, or it was never sent.
    fn refund(&self, ticket: SharedTicket);

    /// The answer's real prompt token count, replacing the estimate.
    fn correct(&self, ticket: &SharedTicket, tokens: u64);

    /// Record what an answer taught (see [`Effect`]) for every process to see.
    fn apply(&self, scope: &Scope, effect: &Effect);

    /// Forget what is recorded of these keys (cool-downs, disabled reasons) and projects
    /// (billing, cool-downs, tier blocks, learned limits of `models`), as
    /// [`KeyPool::reset`](crate::KeyPool::reset) does locally.
    fn reset(&self, keys: &[Scope], projects: &[Arc<str>], models: &[Arc<str>]);

    /// Record for every process where the resource `name` lives, until `record.expires_at`
    /// (`now`: Unix ms). The future ends when the store has it (or gave up, bounded by the
    /// store's timeout): the answer that taught it is held until then, so that the caller's
    /// next request, on any replica, finds it. `None`: nothing to wait for.
    fn pin(&self, name: &str, record: &PinRecord, now: u64) -> Option<StoreFuture<()>> {
        let _ = (name, record, now);
        None
    }

    /// Where another process recorded that `name` lives, if it did. `None`: this store keeps
    /// no pins (the working copy is the truth).
    fn pinned(&self, name: &str) -> Option<StoreFuture<Option<PinRecord>>> {
        let _ = name;
        None
    }

    /// Forget where `name` lives (it was deleted), for every process.
    fn unpin(&self, name: &str) {
        let _ = name;
    }
}

/// The default store: the pool's own memory, shared with nobody. Selection and the quota layer
/// read and write the working copy with atomics; nothing here is called on the request path.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn is_shared(&self) -> bool {
        false
    }

    fn admit(&self, _: Admission) -> StoreFuture<Result<Option<SharedTicket>, SharedRefusal>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn refund(&self, _: SharedTicket) {}

    fn correct(&self, _: &SharedTicket, _: u64) {}

    fn apply(&self, _: &Scope, _: &Effect) {}

    fn reset(&self, _: &[Scope], _: &[Arc<str>], _: &[Arc<str>]) {}
}

impl SharedRefusal {
    /// Mirror what a shared store refused into the working copy, so that selection skips it
    /// until then, as if this process had seen it itself.
    pub(crate) fn mirror(&self, target: &super::effects::Target<'_>) {
        match self {
            SharedRefusal::Quota {
                dimension,
                limit,
                until,
            } => target
                .slot
                .shared_full(*dimension, *limit, until.unwrap_or(u64::MAX)),
            SharedRefusal::ModelCooling(until) => target
                .slot
                .cool(*until, crate::classify::Class::QuotaMinute),
            SharedRefusal::KeyCooling(until) => target.key.cool(*until),
            SharedRefusal::KeyDisabled(reason) => {
                target.key.disabled.disable(*reason);
            }
            SharedRefusal::ProjectDisabled(reason) => {
                target.project.disabled.disable(*reason);
            }
            SharedRefusal::ModelDisabled => target.slot.disable_model(),
            SharedRefusal::Unreachable(_) => {}
        }
    }
}
