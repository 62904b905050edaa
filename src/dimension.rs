//! The dimensions of a quota: [`Dimension`] (requests and tokens per minute, requests per
//! day, images per minute). Below every other module: errors, state and the layers all name them.

use std::fmt;

use serde::Serialize;

/// A quota dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// Requests per minute.
    RequestsPerMinute,
    /// Input tokens per minute.
    TokensPerMinute,
    /// Requests per day (midnight to midnight America/Los_Angeles).
    RequestsPerDay,
    /// Images per minute.
    ImagesPerMinute,
}

impl Dimension {
    /// Every dimension, in declaration order.
    pub const ALL: [Dimension; 4] = [
        Dimension::RequestsPerMinute,
        Dimension::TokensPerMinute,
        Dimension::RequestsPerDay,
        Dimension::ImagesPerMinute,
    ];

    /// Its position in [`ALL`](Self::ALL).
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The dimension named `"rpm"`, `"tpm"`, `"rpd"` or `"ipm"`.
    pub fn from_name(name: &str) -> Option<Dimension> {
        Dimension::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// `"rpm"`, `"tpm"`, `"rpd"` or `"ipm"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::RequestsPerMinute => "rpm",
            Dimension::TokensPerMinute => "tpm",
            Dimension::RequestsPerDay => "rpd",
            Dimension::ImagesPerMinute => "ipm",
        }
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
