//! `gemini_gateway_overhead_seconds`: the time a request spends in the gateway itself, the
//! upstream's time excluded. In tokio's paused time the gateway's own work takes no time at all
//! and the upstream's 200 ms are all virtual: the histogram counts every request and sums to
//! zero, while the upstream's latency histogram holds the 200 ms of each. (Its own test binary:
//! the recorder is the process's.)
#![cfg(feature = "gateway")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::gateway::{config_from, start};
use common::text;
use http::{Request, StatusCode};
use http_body_util::Full;
use tower_gemini::mock::{Fault, MockGemini};

const TOKEN: &str = "client-token-overhead-01";
const ADMIN: &str = "admin-token-overhead-01";

/// The value of the metric line that starts with `name ` (a counter, a sum, a count).
fn value(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_gateways_own_time_leaves_the_upstreams_out() {
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key("test-key-overhead-01"))
        .fault(Fault::latency(Duration::from_millis(200)))
        .start()
        .await
        .unwrap();
    let gateway = start(config_from(&[
        ("GEMINI_API_KEY", "test-key-overhead-01"),
        ("GATEWAY_TOKENS", TOKEN),
        ("ADMIN_TOKEN", ADMIN),
        ("LLM_API_ENDPOINT", mock.url().as_str()),
    ]))
    .await;
    for _ in 0..3 {
        let request = Request::post(format!(
            "{}/v1beta/models/gemini-2.0-flash:generateContent",
            gateway.base
        ))
        .header("x-goog-api-key", TOKEN)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(common::generate_body("hello"))))
        .unwrap();
        let answer = common::client().request(request).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        let _ = text(answer).await;
    }
    let scrape = Request::get(format!("{}/metrics", gateway.base))
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let metrics = text(common::client().request(scrape).await.unwrap()).await;
    assert_eq!(
        value(&metrics, "gemini_gateway_overhead_seconds_count"),
        3.0
    );
    assert_eq!(value(&metrics, "gemini_gateway_overhead_seconds_sum"), 0.0);
    // The upstream's time is there, and was left out.
    let upstream = metrics
        .lines()
        .filter(|l| l.starts_with("gemini_request_duration_seconds_sum"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert!(upstream >= 0.6, "{upstream}\n{metrics}");
    // A bucket under a millisecond holds all three.
    assert!(
        metrics.contains("gemini_gateway_overhead_seconds_bucket{le=\"0.0005\"} 3"),
        "{metrics}"
    );
}
