//! At INFO, the layers' lines are there and their spans are not: the spans are DEBUG level (as
//! tower-http's `TraceLayer` makes its own), so a service logging at INFO does not pay to
//! record two spans per call. Alone in its test binary, as `tests/logging.rs` explains.

mod common;

use common::{Capture, a_bad_b_daily_c_fine, client, generate};
use http::StatusCode;
use tower::{Layer, ServiceExt};
use tower_gemini::KeyRotationLayer;
use tower_gemini::retry::RetryLayer;

#[test]
fn an_info_subscriber_gets_the_lines_without_the_spans() {
    let capture = Capture::default();
    let _guard = capture.install(tracing::Level::INFO);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let (mock, pool) = a_bad_b_daily_c_fine().await;
        let gemini =
            RetryLayer::for_pool(&pool).layer(KeyRotationLayer::new(&pool).layer(client()));
        let response = gemini
            .oneshot(generate(&mock, "gemini-2.0-flash", "hi"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    });
    let logs = capture.text();
    assert!(
        logs.contains("key …000a failed (400 key_invalid"),
        "the retry line is logged at INFO:\n{logs}"
    );
    for span in ["gemini.request", "gemini.attempt"] {
        assert!(
            !logs.contains(span),
            "{span} was recorded by an INFO subscriber:\n{logs}"
        );
    }
}
