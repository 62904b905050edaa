//! Per-key and per-(project, model) health, all in atomics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;

use super::limits::{Limits, ModelLimits};
use crate::classify::Class;
use crate::quota::Meters;

/// Why a key, a project or a project+model is disabled until [`KeyPool::reset`](crate::KeyPool::reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DisabledReason {
    /// The key was refused as invalid (400 `API_KEY_INVALID`, 401).
    KeyInvalid,
    /// The key was refused as forbidden (403: leaked, blocked, suspended, service disabled).
    KeyForbidden,
    /// The key's project ran out of prepaid credits.
    BillingExhausted,
    /// The model has a quota of zero on the project's tier.
    ModelNotOnTier,
}

impl DisabledReason {
    fn to_u8(self) -> u8 {
        match self {
            DisabledReason::KeyInvalid => 1,
            DisabledReason::KeyForbidden => 2,
            DisabledReason::BillingExhausted => 3,
            DisabledReason::ModelNotOnTier => 4,
        }
    }

    fn from_u8(value: u8) -> Option<DisabledReason> {
        match value {
            1 => Some(DisabledReason::KeyInvalid),
            2 => Some(DisabledReason::KeyForbidden),
            3 => Some(DisabledReason::BillingExhausted),
            4 => Some(DisabledReason::ModelNotOnTier),
            _ => None,
        }
    }

    /// A short stable name, e.g. `"key_invalid"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DisabledReason::KeyInvalid => "key_invalid",
            DisabledReason::KeyForbidden => "key_forbidden",
            DisabledReason::BillingExhausted => "billing_exhausted",
            DisabledReason::ModelNotOnTier => "model_not_on_tier",
        }
    }
}

/// A disabled-reason cell: 0 means enabled. The first reason recorded stays.
#[derive(Default)]
pub(crate) struct DisabledCell(AtomicU8);

impl DisabledCell {
    pub(crate) fn get(&self) -> Option<DisabledReason> {
        DisabledReason::from_u8(self.0.load(Ordering::Acquire))
    }

    /// Disable; returns true if this call did it (it was enabled).
    pub(crate) fn disable(&self, reason: DisabledReason) -> bool {
        self.0
            .compare_exchange(0, reason.to_u8(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(crate) fn clear(&self) {
        self.0.store(0, Ordering::Release);
    }
}

/// Everything the pool knows about one key's health and use. Times are Unix milliseconds, 0 = never.
#[derive(Default)]
pub(crate) struct KeyHealth {
    pub(crate) disabled: DisabledCell,
    /// Key-level cool-down (a bare 429 `RateLimited`).
    pub(crate) cool_until: AtomicU64,
    pub(crate) rate_limit_streak: AtomicU32,
    pub(crate) consecutive_failures: AtomicU32,
    pub(crate) in_flight: AtomicU32,
    pub(crate) total: AtomicU64,
    pub(crate) successes: AtomicU64,
    pub(crate) by_class: [AtomicU64; Class::ALL.len()],
    pub(crate) last_used: AtomicU64,
    pub(crate) last_success: AtomicU64,
    pub(crate) last_failure: AtomicU64,
    /// f64 bits of the latency EWMA in microseconds; 0 = no sample yet.
    latency_ewma_us: AtomicU64,
}

/// Weight of a new latency sample in the EWMA.
const EWMA_ALPHA: f64 = 0.3;

impl KeyHealth {
    pub(crate) fn latency_ewma(&self) -> Option<Duration> {
        let bits = self.latency_ewma_us.load(Ordering::Relaxed);
        (bits != 0).then(|| Duration::from_secs_f64(f64::from_bits(bits) / 1e6))
    }

    pub(crate) fn record_latency(&self, latency: Duration) {
        let sample = (latency.as_secs_f64() * 1e6).max(1.0);
        let _ = self
            .latency_ewma_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let next = if bits == 0 {
                    sample
                } else {
                    let old = f64::from_bits(bits);
                    old + EWMA_ALPHA * (sample - old)
                };
                Some(next.to_bits())
            });
    }

    /// Clear disabled state and cool-downs (not counters).
    pub(crate) fn reset(&self) {
        self.disabled.clear();
        self.cool_until.store(0, Ordering::Release);
        self.rate_limit_streak.store(0, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }
}

/// A project's health: billing exhaustion disables it for every model.
#[derive(Default)]
pub(crate) struct ProjectHealth {
    pub(crate) disabled: DisabledCell,
}

/// One project's health and quota for one model.
#[derive(Default)]
pub(crate) struct ProjectModelHealth {
    pub(crate) cool_until: AtomicU64,
    /// `Class::index()` of the answer that set the cool-down.
    pub(crate) cool_class: AtomicU8,
    pub(crate) not_on_tier: AtomicBool,
    /// The quota ledger of this project and model.
    pub(crate) quota: Meters,
}

impl ProjectModelHealth {
    pub(crate) fn cool(&self, until: u64, class: Class) {
        let before = self.cool_until.fetch_max(until, Ordering::AcqRel);
        if until >= before {
            self.cool_class
                .store(class.index() as u8, Ordering::Release);
        }
    }

    pub(crate) fn cool_class(&self) -> Class {
        Class::ALL
            .get(usize::from(self.cool_class.load(Ordering::Acquire)))
            .copied()
            .unwrap_or(Class::QuotaMinute)
    }

    pub(crate) fn reset(&self) {
        self.cool_until.store(0, Ordering::Release);
        self.not_on_tier.store(false, Ordering::Release);
    }
}

/// The per-project health of one model: a slot per project, indexed like the pool's projects.
pub(crate) struct ModelSlots {
    /// The model name; empty for "model unknown".
    pub(crate) name: Arc<str>,
    pub(crate) projects: Box<[ProjectModelHealth]>,
}

impl ModelSlots {
    fn new(name: Arc<str>, projects: usize, limits: impl Fn(usize) -> ModelLimits) -> ModelSlots {
        ModelSlots {
            name,
            projects: (0..projects)
                .map(|p| ProjectModelHealth {
                    quota: Meters::new(limits(p)),
                    ..ProjectModelHealth::default()
                })
                .collect(),
        }
    }

    pub(crate) fn is_unknown(&self) -> bool {
        self.name.is_empty()
    }
}

/// Most distinct model names the pool tracks; past this, new names share the "unknown" slot so a
/// stream of made-up model names cannot grow memory without bound.
pub(crate) const MAX_MODELS: usize = 256;

/// Model name → per-project health. Read-locked once per selection (never across it); written
/// only the first time a model is seen.
pub(crate) struct ModelTable {
    /// Project names, by index, for looking up configured limits.
    projects: Box<[Arc<str>]>,
    limits: Limits,
    unknown: Arc<ModelSlots>,
    models: RwLock<HashMap<Arc<str>, Arc<ModelSlots>>>,
}

impl ModelTable {
    pub(crate) fn new(projects: Box<[Arc<str>]>, limits: Limits) -> ModelTable {
        ModelTable {
            unknown: Arc::new(ModelSlots::new(Arc::from(""), projects.len(), |_| {
                ModelLimits::default()
            })),
            projects,
            limits,
            models: RwLock::new(HashMap::new()),
        }
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn unknown(&self) -> Arc<ModelSlots> {
        self.unknown.clone()
    }

    /// The slots for `model` (normalised: a leading `models/` is dropped), created on first use.
    pub(crate) fn get(&self, model: &str) -> Arc<ModelSlots> {
        let model = normalize_model(model);
        if model.is_empty() {
            return self.unknown();
        }
        {
            let models = self.models.read().unwrap_or_else(|e| e.into_inner());
            if let Some(slots) = models.get(model) {
                return slots.clone();
            }
        }
        let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
        if let Some(slots) = models.get(model) {
            return slots.clone();
        }
        if models.len() >= MAX_MODELS {
            tracing::warn!(
                gemini.model = model,
                "more than {MAX_MODELS} distinct model names seen; tracking this one as unknown"
            );
            return self.unknown();
        }
        let name: Arc<str> = Arc::from(model);
        let slots = Arc::new(ModelSlots::new(name.clone(), self.projects.len(), |p| {
            self.limits
                .for_model(&self.projects[p], model)
                .unwrap_or_default()
        }));
        models.insert(name, slots.clone());
        slots
    }

    /// Every tracked model, the unknown slot first.
    pub(crate) fn all(&self) -> Vec<Arc<ModelSlots>> {
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = std::iter::once(self.unknown())
            .chain(models.values().cloned())
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

/// `models/gemini-2.0-flash` → `gemini-2.0-flash`.
pub(crate) fn normalize_model(model: &str) -> &str {
    let model = model.trim();
    model.strip_prefix("models/").unwrap_or(model)
}
