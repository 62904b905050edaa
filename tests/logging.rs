//! What the layers log, captured. Alone in its test binary: `tracing`'s per-callsite interest
//! cache is shared by the threads of one process, and a test without a subscriber racing one
//! with a subscriber can make an event vanish.

mod common;

use common::{Capture, a_bad_b_daily_c_fine, client, generate};
use http::StatusCode;
use tower::{Layer, ServiceExt};
use tower_gemini::KeyRotationLayer;
use tower_gemini::mock::Fault;
use tower_gemini::retry::{Backoff, NoJitter, RetryLayer};

const FLASH: &str = "gemini-2.0-flash";

fn no_jitter() -> Backoff {
    Backoff::default().jitter(NoJitter)
}

#[test]
fn attempts_run_in_spans_and_log_readable_lines() {
    let capture = Capture::default();
    let _guard = capture.install(tracing::Level::DEBUG);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let (mock, pool) = a_bad_b_daily_c_fine().await;
        let gemini =
            RetryLayer::for_pool(&pool).layer(KeyRotationLayer::new(&pool).layer(client()));
        let response = gemini.oneshot(generate(&mock, FLASH, "hi")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        mock.set_faults([Fault::overloaded(1.0)]);
        let gemini = RetryLayer::for_pool(&pool)
            .backoff(no_jitter())
            .max_attempts(2)
            .layer(KeyRotationLayer::new(&pool).layer(client()));
        let _ = gemini.oneshot(generate(&mock, FLASH, "hi")).await.unwrap();
    });
    let logs = capture.text();
    for expected in [
        "using key …000a (attempt 1/4)",
        "key …000a failed (400 key_invalid: API key not valid. Please pass a valid API key.), retrying at once with another key (attempt 2/4)",
        "key …000b failed (429 quota_daily: GenerateRequestsPerDayPerProjectPerModel-FreeTier",
        "using key …000c (attempt 3/4)",
        "gemini.attempt{otel.kind=\"client\" attempt=1 max_attempts=4 gemini.key=…000a gemini.project=\"proj-a\" gemini.model=\"gemini-2.0-flash\" gemini.class=key_invalid latency_ms=0}: tower_gemini::retry::future: key …000a failed",
        "key …000c failed (503 upstream: The model is overloaded. Please try again later.), retrying in 1.0s (attempt 2/2)",
        "giving up after 2 attempts; returning the last answer (503 upstream",
    ] {
        assert!(logs.contains(expected), "missing {expected:?} in:\n{logs}");
    }
}
