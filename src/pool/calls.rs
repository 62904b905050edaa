//! The call log: the last answers the pool was told about, in a bounded ring.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use super::Fingerprint;
use crate::classify::{Class, Classification};
use crate::clock::to_timestamp;

/// How many answers the call log keeps.
pub const CALL_LOG_SIZE: usize = 256;

/// One answer, as the call log keeps it: fingerprints only.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    /// When the answer came.
    pub at: Timestamp,
    /// The key that was used.
    pub key: Fingerprint,
    /// Its project.
    pub project: String,
    /// The model, if known.
    pub model: Option<String>,
    /// The HTTP status (none for a transport failure).
    pub status: Option<u16>,
    /// How the answer was judged.
    pub class: Class,
    /// From sending to the answer's head.
    pub latency_ms: f64,
    /// What Google said, for failures (scrubbed of the key).
    pub detail: Option<String>,
}

struct Entry {
    at: u64,
    key: Fingerprint,
    project: Arc<str>,
    model: Option<Arc<str>>,
    status: Option<u16>,
    class: Class,
    latency: Duration,
    detail: Option<Box<str>>,
}

/// The ring. A success costs a lock and a push (no allocation once full); a failure also
/// keeps its one-line description.
#[derive(Default)]
pub(crate) struct CallLog {
    ring: Mutex<VecDeque<Entry>>,
}

impl CallLog {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &self,
        at: u64,
        key: Fingerprint,
        project: &Arc<str>,
        model: Option<&Arc<str>>,
        outcome: &Classification,
        latency: Duration,
    ) {
        let class = outcome.class();
        let entry = Entry {
            at,
            key,
            project: project.clone(),
            model: model.cloned(),
            status: outcome.status().map(|s| s.as_u16()),
            class,
            latency,
            detail: (!class.is_success()).then(|| outcome.to_string().into_boxed_str()),
        };
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == CALL_LOG_SIZE {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    /// Newest first.
    pub(crate) fn recent(&self) -> Vec<CallRecord> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter()
            .rev()
            .map(|e| CallRecord {
                at: to_timestamp(e.at),
                key: e.key,
                project: e.project.to_string(),
                model: e.model.as_deref().map(str::to_owned),
                status: e.status,
                class: e.class,
                latency_ms: e.latency.as_secs_f64() * 1000.0,
                detail: e.detail.as_deref().map(str::to_owned),
            })
            .collect()
    }
}
