//! `GET /metrics`: the crate's metrics (`gemini_requests_total`, quota, circuits, …) in
//! Prometheus' text format, behind the admin token. Labels hold fingerprints, never keys.

use std::sync::OnceLock;

use axum::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// How often the recorder's histograms are drained into their summaries.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The name of the thread that does the recorder's upkeep.
pub(crate) const UPKEEP_THREAD: &str = "gemini-metrics";

/// The process's Prometheus recorder, installed once (the first gateway to start installs
/// it; if the application set another global recorder first, `/metrics` renders nothing).
///
/// A recorder installed this way keeps every histogram sample until upkeep drains it; without
/// upkeep a gateway nobody scrapes would grow by every request's latency for ever. So a thread
/// of its own runs the upkeep every [`UPKEEP_EVERY`] (a thread, not a task: the recorder
/// outlives any one runtime).
pub(crate) fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match recorder().install_recorder() {
            Ok(handle) => {
                let upkeep = handle.clone();
                let spawned = std::thread::Builder::new()
                    .name(UPKEEP_THREAD.to_owned())
                    .spawn(move || {
                        loop {
                            std::thread::sleep(UPKEEP_EVERY);
                            upkeep.run_upkeep();
                        }
                    });
                if let Err(error) = spawned {
                    tracing::warn!("metrics: no upkeep thread ({error}); histograms grow until /metrics is read");
                }
                Some(handle)
            }
            Err(error) => {
                tracing::warn!(
                    "metrics: another recorder is installed ({error}); /metrics stays empty"
                );
                None
            }
        })
        .as_ref()
}

/// Latency buckets, in seconds: a Gemini call takes from tens of milliseconds (a count of
/// tokens) to minutes (a long answer, or one that waited for quota).
const LATENCY_BUCKETS: &[f64] = &[
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The recorder: histograms as Prometheus histograms (fixed buckets), not summaries. A
/// summary is a sketch per label set that grows with what it sees and costs ≈ 1,600
/// instructions a sample to fill; its quantiles cannot be added across replicas. A bucket is a
/// counter.
fn recorder() -> PrometheusBuilder {
    let builder = PrometheusBuilder::new();
    let buckets = builder.set_buckets(LATENCY_BUCKETS).and_then(|builder| {
        builder.set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("gemini_gateway_overhead_seconds".into()),
            OVERHEAD_BUCKETS,
        )
    });
    // (Only an empty list is refused.)
    buckets.unwrap_or_else(|_| PrometheusBuilder::new())
}

/// The gateway's own time, in seconds: tens of microseconds for its work, up to a minute or
/// two for a request that waited for a key.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.1, 1.0, 10.0, 60.0, 120.0,
];

/// `GET /metrics` (behind the admin token's route layer).
pub(crate) async fn metrics() -> Response {
    let text = handle().map(PrometheusHandle::render).unwrap_or_default();
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without upkeep the recorder keeps every histogram sample until a scrape.
    #[test]
    fn the_recorder_comes_with_an_upkeep_thread() {
        if handle().is_none() {
            return; // another recorder was installed first in this process
        }
        let names = || -> Vec<String> {
            let threads = std::fs::read_dir("/proc/self/task").unwrap();
            threads
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|name| name.trim().to_owned())
                .collect()
        };
        // A new thread names itself when it starts running: until then it shows its parent's
        // name. Wait for that (bounded), not for any length of time.
        for _ in 0..200 {
            if names().iter().any(|n| n == UPKEEP_THREAD) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("no {UPKEEP_THREAD} thread: {:?}", names());
    }
}
