//! Built-in, approximate limits for well-known models on each tier, and [`Limits`]: the
//! configured limits over them.
//!
//! These follow Google's published rate limits for the Gemini API at the time of writing; Google
//! changes them, and projects can have their own. They are a starting point: configured limits
//! override them, and limits learned from 429 answers lower them.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::limits::ModelLimits;

/// A Gemini API usage tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// No billing account.
    Free,
    /// Billing enabled.
    Tier1,
    /// Higher spend.
    Tier2,
    /// Highest published tier.
    Tier3,
}

const fn limits(rpm: u32, tpm: u64, rpd: Option<u32>) -> ModelLimits {
    ModelLimits {
        rpm: Some(rpm),
        tpm: Some(tpm),
        rpd,
        ipm: None,
    }
}

/// (model prefix, free, tier 1, tier 2, tier 3). Longer prefixes are listed first.
const TABLE: &[(&str, [ModelLimits; 4])] = &[
    (
        "gemini-2.5-flash-lite",
        [
            limits(15, 250_000, Some(1_000)),
            limits(4_000, 4_000_000, None),
            limits(10_000, 10_000_000, None),
            limits(30_000, 30_000_000, None),
        ],
    ),
    (
        "gemini-2.5-flash",
        [
            limits(10, 250_000, Some(250)),
            limits(1_000, 1_000_000, Some(10_000)),
            limits(2_000, 3_000_000, Some(100_000)),
            limits(10_000, 8_000_000, None),
        ],
    ),
    (
        "gemini-2.5-pro",
        [
            limits(5, 250_000, Some(100)),
            limits(150, 2_000_000, Some(10_000)),
            limits(1_000, 5_000_000, Some(50_000)),
            limits(2_000, 8_000_000, None),
        ],
    ),
    (
        "gemini-2.0-flash-lite",
        [
            limits(30, 1_000_000, Some(200)),
            limits(4_000, 4_000_000, None),
            limits(20_000, 10_000_000, None),
            limits(30_000, 30_000_000, None),
        ],
    ),
    (
        "gemini-2.0-flash",
        [
            limits(15, 1_000_000, Some(200)),
            limits(2_000, 4_000_000, None),
            limits(10_000, 10_000_000, None),
            limits(30_000, 30_000_000, None),
        ],
    ),
];

impl Tier {
    /// The preset for `model` (matched by its longest known prefix, so `gemini-2.0-flash-001`
    /// uses `gemini-2.0-flash`), or `None` for a model the table does not know.
    ///
    /// ```
    /// use tower_gemini::quota::Tier;
    ///
    /// assert_eq!(Tier::Free.limits("gemini-2.0-flash-001").unwrap().rpm, Some(15));
    /// assert_eq!(Tier::Free.limits("gemini-2.0-flash-lite").unwrap().rpm, Some(30));
    /// assert!(Tier::Tier1.limits("my-tuned-model").is_none());
    /// ```
    pub fn limits(self, model: &str) -> Option<ModelLimits> {
        let column = match self {
            Tier::Free => 0,
            Tier::Tier1 => 1,
            Tier::Tier2 => 2,
            Tier::Tier3 => 3,
        };
        TABLE
            .iter()
            .find(|(prefix, _)| model.starts_with(prefix))
            .map(|(_, row)| row[column])
    }
}

/// Limits per model for every project, overrides per project, and tiers whose presets fill in
/// what is not configured.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Limits {
    pub(crate) defaults: HashMap<String, ModelLimits>,
    pub(crate) projects: HashMap<String, HashMap<String, ModelLimits>>,
    pub(crate) tier: Option<Tier>,
    pub(crate) project_tiers: HashMap<String, Tier>,
    /// How requests willing to wait are admitted within a minute's quota.
    pub(crate) pacing: super::meter::Pacing,
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
