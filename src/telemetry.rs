//! Metrics through the `metrics` facade (feature `metrics`); without the feature every function
//! here is an empty inline no-op. Labels carry key fingerprints, never keys.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `gemini_requests_total` | counter | `key`, `model`, `class` |
//! | `gemini_request_duration_seconds` | histogram | `model`, `class` |
//! | `gemini_retries_total` | counter | `class` |
//! | `gemini_circuit_state` | gauge (0 closed, 1 open, 2 half-open) | `scope` |
//! | `gemini_circuit_rejections_total` | counter | `scope` |
//! | `gemini_quota_used` | gauge | `project`, `model`, `dimension` |
//! | `gemini_quota_limit` | gauge | `project`, `model`, `dimension` |
//! | `gemini_quota_refusals_total` | counter | `project`, `model`, `dimension` |
//! | `gemini_cache_hits_total` | counter | (feature `cache`) |
//! | `gemini_cache_misses_total` | counter | (feature `cache`) |
//! | `gemini_cache_hit_bytes_total` | counter | (feature `cache`): answer bytes served from memory |
//! | `gemini_fallbacks_total` | counter | `from`, `to`, `reason` |
//! | `gemini_cost_nano_usd_total` | counter | `model`, `project` |
//!
//! `model` and `scope` take at most [`MAX_NAME_LABELS`] distinct values (the first real ones:
//! a model Google served, a circuit that changed state); other names are
//! reported as `other`, so made-up model names can neither grow the exporter nor take the
//! labels of the models that come later.

#![cfg_attr(not(feature = "metrics"), allow(unused_variables))]

use std::time::Duration;

use crate::classify::Class;
use crate::pool::Fingerprint;
use crate::state::{Dimension, MeterSnapshot};

/// Distinct values a name label (`model`, `scope`) takes at most; later names are reported as
/// `other`. Model names come from callers (a gateway client can make them up), and an exporter
/// keeps every label set it has seen for the life of the process.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) const MAX_NAME_LABELS: usize = 64;

/// `name` as a label value: itself if it is one of the first [`MAX_NAME_LABELS`] names
/// admitted, else `other`. A name is admitted (while there is room) only where `admit` says it
/// is real: a model Google answered with a success (its cost too), a circuit that changed
/// state. Quota gauges only use names already admitted (presets match made-up names by prefix). A flood of made-up names that Google refuses never takes a label.
#[cfg(feature = "metrics")]
fn name_label(name: &str, admit: bool) -> String {
    if admitted(name, admit) {
        name.to_owned()
    } else {
        "other".to_owned()
    }
}

/// Whether `name` is its own label value (else it is reported as `other`); see [`name_label`].
#[cfg(feature = "metrics")]
fn admitted(name: &str, admit: bool) -> bool {
    use std::sync::OnceLock;

    use crate::read_mostly::ReadMostly;

    static SEEN: OnceLock<ReadMostly<()>> = OnceLock::new();
    let seen = SEEN.get_or_init(ReadMostly::default);
    if seen.get(name).is_some() {
        return true;
    }
    if !admit {
        return false;
    }
    seen.update(|names| {
        if names.contains_key(name) {
            return true;
        }
        if names.len() >= MAX_NAME_LABELS {
            return false;
        }
        names
            .to_mut()
            .insert(std::sync::Arc::from(name), std::sync::Arc::new(()));
        true
    })
}

/// The handles of one answer's metrics, by model label, then key and class.
#[cfg(feature = "metrics")]
type Handles = std::collections::HashMap<
    Box<str>,
    std::collections::HashMap<(Fingerprint, Class), (metrics::Counter, metrics::Histogram)>,
    foldhash::fast::RandomState,
>;

/// Entries of a thread's [`Handles`] past which it starts again (keys come and go through the
/// admin API; the model labels are bounded by [`MAX_NAME_LABELS`]).
#[cfg(feature = "metrics")]
const MAX_HANDLES: usize = 1 << 16;

/// A thread's metric handles: kept while the recorder that made them is the current one, and
/// for at most [`MAX_HANDLES`] label sets (then it starts again).
#[cfg(feature = "metrics")]
#[derive(Default)]
struct Kept<M> {
    handles: M,
    count: usize,
    recorder: usize,
}

#[cfg(feature = "metrics")]
impl<M: Default> Kept<M> {
    /// The handles, emptied first if the recorder changed (a test may set a local one) or
    /// they are too many.
    fn current(&mut self) -> (&mut M, &mut usize) {
        let recorder =
            metrics::with_recorder(|recorder| std::ptr::from_ref(recorder).cast::<()>() as usize);
        if self.count >= MAX_HANDLES || self.recorder != recorder {
            self.handles = M::default();
            self.count = 0;
            self.recorder = recorder;
        }
        (&mut self.handles, &mut self.count)
    }
}

#[cfg(feature = "metrics")]
std::thread_local! {
    /// Registering a metric builds its labels (three strings) and looks it up in the
    /// recorder's registry under a lock; a handle kept here is one lookup in a map of this
    /// thread's, then an atomic add. (Per answer, that was 6 allocations and ≈ 6,000
    /// instructions of the gateway's ≈ 125,000.)
    static HANDLES: std::cell::RefCell<Kept<Handles>> = std::cell::RefCell::default();
    /// `gemini_cost_nano_usd_total`'s handles, by model label and project.
    static COSTS: std::cell::RefCell<Kept<CostHandles>> = std::cell::RefCell::default();
}

/// The handles of the cost counter, by model label, then project.
#[cfg(feature = "metrics")]
type CostHandles = std::collections::HashMap<
    Box<str>,
    std::collections::HashMap<Box<str>, metrics::Counter, foldhash::fast::RandomState>,
    foldhash::fast::RandomState,
>;

/// One answer (or transport failure) of the upstream: `gemini_requests_total` by key, model and
/// class, and its latency in `gemini_request_duration_seconds` by model and class (a histogram
/// per key was a summary of several KiB per key in the Prometheus exporter).
#[inline]
pub(crate) fn request(key: Fingerprint, model: Option<&str>, class: Class, latency: Duration) {
    #[cfg(feature = "metrics")]
    {
        let model = match model {
            None => "unknown",
            Some(model) if admitted(model, class.is_success()) => model,
            Some(_) => "other",
        };
        // (`try_with`: an answer's body may be dropped while the thread's locals are torn
        // down; a metric is then lost, never a panic.)
        let _ = HANDLES.try_with(|cell| {
            let Ok(mut kept) = cell.try_borrow_mut() else {
                return;
            };
            let (handles, count) = kept.current();
            let by_key = match handles.get_mut(model) {
                Some(by_key) => by_key,
                None => handles.entry(model.into()).or_default(),
            };
            let (counter, histogram) = by_key.entry((key, class)).or_insert_with(|| {
                *count += 1;
                let labels = [
                    ("key", key.to_string()),
                    ("model", model.to_owned()),
                    ("class", class.as_str().to_owned()),
                ];
                let counter = metrics::counter!("gemini_requests_total", &labels);
                let histogram =
                    metrics::histogram!("gemini_request_duration_seconds", &labels[1..]);
                (counter, histogram)
            });
            counter.increment(1);
            histogram.record(latency.as_secs_f64());
        });
    }
}

/// A retry decided after an outcome of `class`.
#[inline]
pub(crate) fn retry(class: Option<Class>) {
    #[cfg(feature = "metrics")]
    metrics::counter!("gemini_retries_total", "class" => class.map_or("local", Class::as_str))
        .increment(1);
}

/// A circuit changed state.
#[inline]
/// `state` is the gauge's value: 0 closed, 1 open, 2 half-open (telemetry takes labels and
/// numbers, never a layer's types).
pub(crate) fn circuit_state(scope: &str, state: f64) {
    #[cfg(feature = "metrics")]
    {
        let value = state;
        metrics::gauge!("gemini_circuit_state", "scope" => name_label(scope, true)).set(value);
    }
}

/// A call failed fast on an open (or full half-open) circuit.
#[inline]
pub(crate) fn circuit_rejected(scope: &str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("gemini_circuit_rejections_total", "scope" => name_label(scope, true))
        .increment(1);
}

/// Quota use after an admission.
#[inline]
pub(crate) fn quota(project: &str, model: &str, snapshot: impl FnOnce() -> MeterSnapshot) {
    #[cfg(feature = "metrics")]
    {
        let snapshot = snapshot();
        let dims = [
            (Dimension::RequestsPerMinute, snapshot.rpm),
            (Dimension::TokensPerMinute, snapshot.tpm),
            (Dimension::RequestsPerDay, snapshot.rpd),
            (Dimension::ImagesPerMinute, snapshot.ipm),
        ];
        for (dimension, usage) in dims {
            if let Some(usage) = usage {
                let labels = [
                    ("project", project.to_owned()),
                    ("model", name_label(model, false)),
                    ("dimension", dimension.as_str().to_owned()),
                ];
                metrics::gauge!("gemini_quota_used", &labels).set(usage.used as f64);
                metrics::gauge!("gemini_quota_limit", &labels).set(usage.limit as f64);
            }
        }
    }
}

/// An answer served from the cache.
#[cfg(feature = "cache")]
#[inline]
pub(crate) fn cache_hit(bytes: usize) {
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("gemini_cache_hits_total").increment(1);
        metrics::counter!("gemini_cache_hit_bytes_total").increment(bytes as u64);
    }
}

/// A cacheable request sent upstream.
#[cfg(feature = "cache")]
#[inline]
pub(crate) fn cache_miss() {
    #[cfg(feature = "metrics")]
    metrics::counter!("gemini_cache_misses_total").increment(1);
}

/// A request sent to a fallback model (the names are the operator's chain, a bounded set).
#[inline]
pub(crate) fn fallback(from: &str, to: &str, reason: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "gemini_fallbacks_total",
        "from" => from.to_owned(),
        "to" => to.to_owned(),
        "reason" => reason
    )
    .increment(1);
}

/// A priced call: its cost in billionths of a dollar.
#[inline]
pub(crate) fn cost(model: &str, project: Option<&str>, nano_usd: u64) {
    #[cfg(feature = "metrics")]
    {
        let model = if admitted(model, true) {
            model
        } else {
            "other"
        };
        let project = project.unwrap_or("unknown");
        // (`try_with`: an answer's body may be dropped while the thread's locals are torn
        // down; a metric is then lost, never a panic.)
        let _ = COSTS.try_with(|cell| {
            let Ok(mut kept) = cell.try_borrow_mut() else {
                return;
            };
            let (handles, count) = kept.current();
            let by_project = match handles.get_mut(model) {
                Some(by_project) => by_project,
                None => handles.entry(model.into()).or_default(),
            };
            let counter = match by_project.get(project) {
                Some(counter) => counter,
                None => {
                    *count += 1;
                    let counter = metrics::counter!(
                        "gemini_cost_nano_usd_total",
                        "model" => model.to_owned(),
                        "project" => project.to_owned()
                    );
                    by_project.entry(project.into()).or_insert(counter)
                }
            };
            counter.increment(nano_usd);
        });
    }
}

/// A request refused by the local quota.
#[inline]
pub(crate) fn quota_refused(project: &str, model: &str, dimension: Dimension) {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "gemini_quota_refusals_total",
        "project" => project.to_owned(),
        "model" => name_label(model, false),
        "dimension" => dimension.as_str()
    )
    .increment(1);
}
