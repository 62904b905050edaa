//! The call log: the last answers the pool was told about, in a bounded ring.

use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// The project's index in the pool: no shared reference count touched per call.
    project: usize,
    model: Option<Arc<str>>,
    status: Option<u16>,
    class: Class,
    latency: Duration,
    detail: Option<Box<str>>,
}

/// The ring: one slot per entry, each behind its own lock, and a shared counter choosing the
/// next slot. Recording costs one `fetch_add` and a lock nobody else is likely to hold (no
/// process-wide lock on the request path, no allocation for a success).
pub(crate) struct CallLog {
    slots: Box<[Slot]>,
    next: AtomicUsize,
}

/// One entry on a cache line of its own (two, for the adjacent-line prefetcher): threads
/// recording at once write consecutive slots, which must not share a line.
#[repr(align(128))]
#[derive(Default)]
struct Slot(Mutex<Option<Entry>>);

impl Default for CallLog {
    fn default() -> Self {
        CallLog {
            slots: (0..CALL_LOG_SIZE).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
        }
    }
}

impl CallLog {
    pub(crate) fn record(
        &self,
        at: u64,
        key: Fingerprint,
        project: usize,
        model: Option<&Arc<str>>,
        outcome: &Classification,
        latency: Duration,
    ) {
        let class = outcome.class();
        let entry = Entry {
            at,
            key,
            project,
            model: model.cloned(),
            status: outcome.status().map(|s| s.as_u16()),
            class,
            latency,
            detail: (!class.is_success()).then(|| outcome.to_string().into_boxed_str()),
        };
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % CALL_LOG_SIZE;
        let previous = self.slots[slot]
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(entry);
        drop(previous);
    }

    /// Newest first; `project` names a project by its index.
    pub(crate) fn recent<'a>(&self, project: impl Fn(usize) -> &'a str) -> Vec<CallRecord> {
        let next = self.next.load(Ordering::Relaxed);
        let mut records: Vec<CallRecord> = (1..=CALL_LOG_SIZE)
            .filter_map(|back| {
                let slot = (next % CALL_LOG_SIZE + CALL_LOG_SIZE - back) % CALL_LOG_SIZE;
                let guard = self.slots[slot].0.lock().unwrap_or_else(|e| e.into_inner());
                guard.as_ref().map(|e| record(e, project(e.project)))
            })
            .collect();
        // Writers racing the read may leave a slot out of order: order by time, newest first.
        records.sort_by_key(|r| std::cmp::Reverse(r.at));
        records
    }
}

fn record(e: &Entry, project: &str) -> CallRecord {
    CallRecord {
        at: to_timestamp(e.at),
        key: e.key,
        project: project.to_owned(),
        model: e.model.as_deref().map(str::to_owned),
        status: e.status,
        class: e.class,
        latency_ms: e.latency.as_secs_f64() * 1000.0,
        detail: e.detail.as_deref().map(str::to_owned),
    }
}
