//! Everything the pool and the layers remember, and where it is kept.
//!
//! This module is the one boundary for state. [`pool`](crate::pool) keeps the keys, their
//! configuration and the selection strategies, and reads and writes state only through the types
//! here; [`quota`](crate::quota) meters requests through them too. Neither imports the other's
//! state, and this module imports neither.
//!
//! | what | where | type |
//! |---|---|---|
//! | per key: health, counters, disabled reason, cool-down | this process | `KeyHealth` |
//! | per project: billing exhausted | this process | `ProjectHealth` |
//! | per project and model: limits (configured, [`Tier`] preset, learned), the ledger's meters (RPM/TPM/RPD/IPM), cool-down, tier block, requests sent in the last minute | this process | `ProjectModelHealth`, `Meters` |
//! | which project holds a resource (a stored interaction, a file): the affinity map, bounded, with each resource's expiry and tenant | this process | `Pins`, [`PinRecord`] |
//! | how each answer's [`Class`](crate::Class) changes all of the above | one table | [`effects`](self::Effect) |
//! | the same (the affinity map with TTLs), shared by several processes | Redis (feature `redis`) | [`RedisStore`] |
//! | the same, across a restart | a JSON file | [`StateFile`], [`SavedState`] |
//!
//! The process's own memory is always the working copy: selection reads it with atomics and
//! never waits on a network. A [`Store`] is where that copy is shared. The default,
//! [`MemoryStore`], shares nothing (the working copy is the truth, at no cost). A `RedisStore`
//! makes Redis the truth for what replicas must agree on: each request is admitted by one atomic
//! script over every dimension of its project and model; cool-downs, disabled keys and learned
//! limits are written there for every replica to see, and what a replica learns from Redis is
//! mirrored into its working copy so its selection skips what the others found exhausted.
//!
//! - [`Effect`]: the class → state-change table, in one place ([`effects`](Effect::of)).
//! - [`SavedState`]: a pool's state, saved with [`KeyPool::save`](crate::KeyPool::save) and taken
//!   back with [`KeyPool::restore`](crate::KeyPool::restore), matched by fingerprint.
//! - [`StateFile`]: that state in a file, written atomically, read at start; a corrupt file is
//!   reported and set aside, never fatal.

mod effects;
mod estimate;
mod file;
pub(crate) mod health;
mod limits;
pub(crate) mod meter;
mod pins;
mod presets;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod redis_tls;
mod reservation;
pub(crate) mod saved;
mod store;

pub(crate) use effects::Target;
pub use effects::{
    DEFAULT_MINUTE_COOLDOWN, Effect, MAX_MINUTE_COOLDOWN, RATE_LIMIT_BASE_COOLDOWN,
    RATE_LIMIT_MAX_COOLDOWN,
};
pub use estimate::{BytesPerToken, TokenEstimator};
pub use file::StateFile;
pub use health::DisabledReason;
pub(crate) use health::{
    KeyHealth, KeyNumbers, ModelSlots, ModelTable, ProjectHealth, normalize_model,
};
pub use limits::ModelLimits;
pub use meter::{Demand, Dimension, MeterSnapshot, Pacing, RateWindow, Usage};
pub(crate) use meter::{History, MeterState, Meters, Refusal, Ticket};
pub use pins::{MAX_PINS, MAX_PINS_PER_TENANT, MAX_RESOURCE_NAME, PinRecord};
pub(crate) use pins::{Pins, SavedPin};
pub(crate) use presets::Limits;
pub use presets::Tier;
#[cfg(feature = "gateway")]
pub(crate) use redis::redact as redact_url;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{RedisOptions, RedisStore, WhenUnreachable};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis_tls::RedisTls;
pub(crate) use reservation::{MeterRef, Reservation};
pub use saved::{Remember, RestoreReport, SavedState, VERSION};
pub use store::{Admission, MemoryStore, Scope, SharedRefusal, SharedTicket, Store, StoreFuture};
