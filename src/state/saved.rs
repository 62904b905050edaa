//! What a pool remembers, saved and restored: across a restart (a state file), or into a pool
//! rebuilt with other keys (the gateway adding or removing a key at runtime).
//!
//! Keys are matched by fingerprint and project, never by the secret: a key no longer in the
//! pool is dropped, a new key starts clean, and two keys sharing both (their last 4 characters
//! and their project) are left clean rather than guessed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::health::DisabledReason;
use super::meter::MeterState;
use crate::classify::Class;

/// The format's version; a snapshot of another version is not read.
pub const VERSION: u32 = 1;

/// A pool's state, serialisable (JSON in the state file). Holds fingerprints, never keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedState {
    /// [`VERSION`].
    pub version: u32,
    /// When it was taken (Unix ms, the pool's clock).
    pub saved_at: u64,
    pub(crate) keys: Vec<SavedKey>,
    pub(crate) projects: Vec<SavedProject>,
    pub(crate) slots: Vec<SavedSlot>,
    /// Where the strategy stood (round robin's cursor), if it rotates.
    #[serde(default)]
    pub(crate) cursor: Option<usize>,
    /// Which project holds each resource the pool learned (stored interactions, files), with
    /// its expiry and tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) pins: Vec<super::SavedPin>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SavedKey {
    pub(crate) fingerprint: String,
    pub(crate) project: String,
    pub(crate) disabled: Option<DisabledReason>,
    pub(crate) cool_until: u64,
    pub(crate) rate_limit_streak: u32,
    pub(crate) consecutive_failures: u32,
    pub(crate) total: u64,
    pub(crate) successes: u64,
    pub(crate) by_class: BTreeMap<String, u64>,
    pub(crate) last_used: u64,
    pub(crate) last_success: u64,
    pub(crate) last_failure: u64,
    pub(crate) latency_ewma_bits: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SavedProject {
    pub(crate) name: String,
    pub(crate) disabled: Option<DisabledReason>,
}

/// One project's state for one model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SavedSlot {
    pub(crate) project: String,
    pub(crate) model: String,
    pub(crate) cool_until: u64,
    pub(crate) cool_class: String,
    pub(crate) not_on_tier: bool,
    pub(crate) meter: MeterState,
}

/// What [`KeyPool::restore`](crate::KeyPool::restore) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Keys found in the snapshot and restored.
    pub keys_restored: usize,
    /// Keys of the pool the snapshot did not know (they start clean).
    pub keys_new: usize,
    /// Keys of the snapshot no longer in the pool (dropped).
    pub keys_dropped: usize,
    /// Project+model entries restored (cool-downs, daily usage, learned limits).
    pub slots_restored: usize,
    /// Resources whose project was restored (those not expired).
    pub pins_restored: usize,
}

pub(crate) fn class_named(name: &str) -> Option<Class> {
    Class::ALL.into_iter().find(|c| c.as_str() == name)
}

/// Something whose state can be saved and restored: a [`KeyPool`](crate::KeyPool).
pub trait Remember {
    /// What it remembers now.
    fn save(&self) -> SavedState;
    /// Take back a saved state; what was matched.
    fn restore(&self, saved: &SavedState) -> RestoreReport;
}
