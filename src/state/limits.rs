//! Per-model quota limits configured for projects (enforced by the quota layer).

use serde::{Deserialize, Serialize};

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
