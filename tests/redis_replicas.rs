//! Three `gemini-gateway` processes share one Redis and one mock whose projects allow 30 RPM
//! each. Driven together well over the limit for 75 s: the mock answers no 429 (its exact
//! sliding 60-second window would refuse any request beyond the limit in any 60 s), every
//! project's quota is used in both windows, and no caller sees an error.
//!
//! The window alone (`pacing = "off"`): this checks the shared window's capacity at its
//! boundary, where a window's whole quota may go at once. (Paced, each replica spaces its own
//! requests: the quota goes at the steady rate, a minute's worth a minute.)
//!
//! Takes 75 s of real time. Needs Redis (see `tests/redis_store.rs`).
#![cfg(all(feature = "redis", feature = "gateway"))]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::redis::Redis;
use common::replica::{Replica, replica};
use common::{client, generate_body};
use http::{Request, StatusCode};
use http_body_util::Full;
use tower_gemini::mock::MockGemini;
use tower_gemini::pool::ModelLimits;

const MODEL: &str = "gemini-2.0-flash";
const TOKEN: &str = "client-token-0001";
const RPM: u32 = 30;
/// Past the first window's end, so the minute boundary (when slots free and the waiting
/// callers rush in) is crossed: the moment a skewed or late ledger would let a 429 through.
const RUN: Duration = Duration::from_secs(75);
const CALLERS_PER_GATEWAY: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_share_one_quota_and_google_sees_no_429() {
    let Some(redis) = Redis::any("three_gateways_share_one_quota_and_google_sees_no_429") else {
        return;
    };
    let limits = ModelLimits {
        rpm: Some(RPM),
        ..Default::default()
    };
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key("test-key-0001").limits(MODEL, limits))
        .project("proj-b", |p| p.key("test-key-0002").limits(MODEL, limits))
        .start()
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("redis-replicas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "pacing = \"off\"\n\n\
             [[keys]]\nvalue = \"test-key-0001\"\nproject = \"proj-a\"\n\n\
             [[keys]]\nvalue = \"test-key-0002\"\nproject = \"proj-b\"\n\n\
             [models.\"{MODEL}\"]\nrpm = {RPM}\n\n\
             [gateway]\ntokens = [\"{TOKEN}\"]\nupstream = \"{}\"\nmax_wait_secs = 120\n\
             redis_prefix = \"{}\"\n",
            mock.url(),
            Redis::prefix("replicas"),
        ),
    )
    .unwrap();
    let replicas: Vec<Replica> = (0..3).map(|_| replica(&config, &redis.url)).collect();

    // Closed-loop callers on every gateway, for a minute; then whatever still waits is dropped.
    let answered = Arc::new(AtomicU64::new(0));
    let per_gateway: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut callers = Vec::new();
    for (g, replica) in replicas.iter().enumerate() {
        for _ in 0..CALLERS_PER_GATEWAY {
            let url = format!("{}/v1beta/models/{MODEL}:generateContent", replica.base);
            let (answered, mine, failures) =
                (answered.clone(), per_gateway[g].clone(), failures.clone());
            callers.push(tokio::spawn(async move {
                let http = client();
                while started.elapsed() < RUN {
                    let request = Request::post(&url)
                        .header("x-goog-api-key", TOKEN)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(generate_body("hello replicas"))))
                        .unwrap();
                    match http.request(request).await {
                        Ok(response) if response.status() == StatusCode::OK => {
                            answered.fetch_add(1, Ordering::Relaxed);
                            mine.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(response) => failures.lock().unwrap().push(response.status()),
                        Err(error) => failures.lock().unwrap().push({
                            let _ = error;
                            StatusCode::BAD_GATEWAY
                        }),
                    }
                }
            }));
        }
    }
    tokio::time::sleep(RUN).await;
    for caller in &callers {
        caller.abort();
    }
    drop(replicas);
    std::fs::remove_dir_all(&dir).ok();

    let stats = mock.stats();
    let sent = stats.total_requests();
    let answered = answered.load(Ordering::Relaxed);
    assert_eq!(
        stats.responses_with_status(429),
        0,
        "Google would have refused some: {:?}",
        stats.statuses()
    );
    assert!(
        failures.lock().unwrap().is_empty(),
        "callers saw errors: {:?}",
        failures.lock().unwrap()
    );
    // In 75 s each project can take its limit twice (the window that opens with the run, and
    // the next, which opens when the first requests leave it); and it did: the quota was used,
    // not left idle, on both sides of the boundary.
    let capacity = 2 * u64::from(RPM);
    assert!(sent <= 2 * capacity, "{sent} sent");
    assert!(
        answered >= 2 * capacity - 4,
        "only {answered} answered in 75 s"
    );
    for (g, count) in per_gateway.iter().enumerate() {
        assert!(
            count.load(Ordering::Relaxed) > 0,
            "gateway {g} served nothing"
        );
    }
    eprintln!(
        "3 gateways, {} callers, {:?}: {answered} answered, {sent} sent upstream, 0 upstream 429",
        3 * CALLERS_PER_GATEWAY,
        started.elapsed()
    );
}
