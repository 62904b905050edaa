//! [`PoolSnapshot`]: a serialisable view of every key, for status pages.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;

use super::PoolInner;
use super::key::Fingerprint;
use crate::classify::Class;
use crate::clock::to_timestamp;
use crate::state::DisabledReason;
use crate::state::MeterSnapshot;

/// Every key's state at one instant. Holds fingerprints, never keys.
#[derive(Debug, Clone, Serialize)]
pub struct PoolSnapshot {
    /// When the snapshot was taken.
    pub taken_at: Timestamp,
    /// One entry per key, in pool order.
    pub keys: Vec<KeySnapshot>,
    /// Quota used and limits, per project and model with a limit.
    pub quota: Vec<QuotaSnapshot>,
}

/// Quota use of one project for one model.
#[derive(Debug, Clone, Serialize)]
pub struct QuotaSnapshot {
    /// The project.
    pub project: String,
    /// The model.
    pub model: String,
    /// Used and limit per dimension.
    #[serde(flatten)]
    pub usage: MeterSnapshot,
}

/// Whether a key can serve requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Usable (some models may still be cooling; see `models`).
    Active,
    /// Cooling down after a bare 429, for every model.
    Cooling,
    /// Disabled (key invalid or forbidden, or its project out of credits) until reset.
    Disabled,
}

/// One key's view.
#[derive(Debug, Clone, Serialize)]
pub struct KeySnapshot {
    /// The key's fingerprint.
    pub fingerprint: Fingerprint,
    /// The configured name.
    pub name: Option<String>,
    /// The project.
    pub project: String,
    /// The priority.
    pub priority: u32,
    /// Active, cooling or disabled.
    pub state: KeyState,
    /// Why it is disabled.
    pub reason: Option<DisabledReason>,
    /// End of the key-level cool-down, if cooling.
    pub cooling_until: Option<Timestamp>,
    /// Models cooling or disabled for this key's project.
    pub models: Vec<ModelHealthSnapshot>,
    /// Counters.
    pub counters: KeyCounters,
    /// Successes / answers, if any answer was seen.
    pub success_rate: Option<f64>,
}

/// A model that is cooling or disabled for a project.
#[derive(Debug, Clone, Serialize)]
pub struct ModelHealthSnapshot {
    /// The model (`"*"`: requests whose model was unknown).
    pub model: String,
    /// End of the cool-down, if cooling.
    pub cooling_until: Option<Timestamp>,
    /// The class that caused the cool-down, or `model_not_on_tier`.
    pub reason: String,
    /// Disabled until reset (model not on the project's tier).
    pub disabled: bool,
}

/// A key's counters.
#[derive(Debug, Clone, Serialize)]
pub struct KeyCounters {
    /// Answers seen (successes and failures).
    pub total: u64,
    /// Successful answers.
    pub successes: u64,
    /// Answers by class name, non-zero only (`success` excluded).
    pub failures: BTreeMap<&'static str, u64>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Requests in flight.
    pub in_flight: u32,
    /// Last selection.
    pub last_used: Option<Timestamp>,
    /// Last success.
    pub last_success: Option<Timestamp>,
    /// Last failure.
    pub last_failure: Option<Timestamp>,
    /// EWMA of successful latencies, milliseconds.
    pub latency_ewma_ms: Option<f64>,
}

fn when(millis: u64) -> Option<Timestamp> {
    (millis != 0).then(|| to_timestamp(millis))
}

pub(super) fn take(inner: &PoolInner) -> PoolSnapshot {
    let now = inner.clock.now_millis();
    let models = inner.models.all();
    let keys = inner
        .keys
        .iter()
        .map(|entry| {
            let health = &entry.health;
            let project = &inner.projects[entry.project];
            let reason = health.disabled.get().or(project.health.disabled.get());
            let numbers = health.numbers();
            let key_cool = numbers.cool_until;
            let state = if reason.is_some() {
                KeyState::Disabled
            } else if key_cool > now {
                KeyState::Cooling
            } else {
                KeyState::Active
            };
            let model_views = models
                .iter()
                .filter_map(|slots| {
                    let slot = &slots.projects[entry.project];
                    let disabled = slot.is_not_on_tier();
                    let until = slot.cool_until();
                    if !disabled && until <= now {
                        return None;
                    }
                    let name = if slots.is_unknown() {
                        "*"
                    } else {
                        &*slots.name
                    };
                    Some(ModelHealthSnapshot {
                        model: name.to_owned(),
                        cooling_until: (until > now).then(|| to_timestamp(until)),
                        reason: if disabled {
                            DisabledReason::ModelNotOnTier.as_str().to_owned()
                        } else {
                            slot.cool_class().as_str().to_owned()
                        },
                        disabled,
                    })
                })
                .collect();
            let total = health.total();
            let successes = health.successes();
            let failures = Class::ALL
                .iter()
                .filter(|c| !c.is_success())
                .filter_map(|c| {
                    let n = numbers.by_class[c.index()];
                    (n > 0).then_some((c.as_str(), n))
                })
                .collect();
            KeySnapshot {
                fingerprint: entry.key.fingerprint(),
                name: entry.name.as_deref().map(str::to_owned),
                project: project.name.to_string(),
                priority: entry.priority,
                state,
                reason,
                cooling_until: (key_cool > now).then(|| to_timestamp(key_cool)),
                models: model_views,
                counters: KeyCounters {
                    total,
                    successes,
                    failures,
                    consecutive_failures: numbers.consecutive_failures,
                    in_flight: numbers.in_flight,
                    last_used: when(numbers.last_used),
                    last_success: when(numbers.last_success),
                    last_failure: when(numbers.last_failure),
                    latency_ewma_ms: health.latency_ewma().map(|d| d.as_secs_f64() * 1e3),
                },
                success_rate: (total > 0).then(|| successes as f64 / total as f64),
            }
        })
        .collect();
    PoolSnapshot {
        taken_at: to_timestamp(now),
        keys,
        quota: quota(inner),
    }
}

pub(super) fn quota(inner: &PoolInner) -> Vec<QuotaSnapshot> {
    let now = inner.clock.now_millis();
    let mut out = Vec::new();
    for slots in inner.models.all() {
        if slots.is_unknown() {
            continue;
        }
        for (p, slot) in slots.projects.iter().enumerate() {
            if slot.quota.is_limited() {
                out.push(QuotaSnapshot {
                    project: inner.projects[p].name.to_string(),
                    model: slots.name.to_string(),
                    usage: slot.quota.snapshot(now),
                });
            }
        }
    }
    out
}
