//! Per-model quota limits configured for projects (enforced by the quota layer).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::presets::Tier;

/// A project's limits for one model; `None` means no local limit in that dimension.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLimits {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Input tokens per minute.
    pub tpm: Option<u64>,
    /// Requests per day (reset at midnight America/Los_Angeles).
    pub rpd: Option<u32>,
    /// Images per minute.
    pub ipm: Option<u32>,
}

impl ModelLimits {
    /// Fill the dimensions this one leaves unset from `fallback`.
    pub fn or(self, fallback: ModelLimits) -> ModelLimits {
        ModelLimits {
            rpm: self.rpm.or(fallback.rpm),
            tpm: self.tpm.or(fallback.tpm),
            rpd: self.rpd.or(fallback.rpd),
            ipm: self.ipm.or(fallback.ipm),
        }
    }
}

/// Limits per model for every project, overrides per project, and tiers whose presets fill in
/// what is not configured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Limits {
    pub(crate) defaults: HashMap<String, ModelLimits>,
    pub(crate) projects: HashMap<String, HashMap<String, ModelLimits>>,
    pub(crate) tier: Option<Tier>,
    pub(crate) project_tiers: HashMap<String, Tier>,
}

impl Limits {
    /// Per-project model limits, then model limits for every project, then the project's tier
    /// preset, then the default tier preset; merged dimension by dimension.
    pub(crate) fn for_model(&self, project: &str, model: &str) -> Option<ModelLimits> {
        let tier = self.project_tiers.get(project).copied().or(self.tier);
        [
            self.projects
                .get(project)
                .and_then(|m| m.get(model))
                .copied(),
            self.defaults.get(model).copied(),
            tier.and_then(|t| t.limits(model)),
        ]
        .into_iter()
        .flatten()
        .reduce(ModelLimits::or)
    }

    /// Is anything configured (so that requests need a token estimate)?
    pub(crate) fn is_empty(&self) -> bool {
        self.defaults.is_empty()
            && self.projects.is_empty()
            && self.tier.is_none()
            && self.project_tiers.is_empty()
    }
}
