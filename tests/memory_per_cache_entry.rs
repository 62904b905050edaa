//! What a cached answer costs in memory, measured by counting the allocator's live bytes: the
//! cache's bound (`max_bytes`) is about the memory it holds, not a fraction of it.
#![cfg(feature = "cache")]

mod common;

use bytes::Bytes;
use common::alloc::{Counting, live_bytes};
use http::Request;
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};
use tower_gemini::cache::CacheLayer;
use tower_gemini::mock::{MockGemini, MockServer};
use tower_gemini::{KeyPool, KeyRotationLayer};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A mock with one project and a pool of its one key, `key`.
async fn mock_and_pool(key: &str) -> (MockServer, KeyPool) {
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key(key))
        .start()
        .await
        .unwrap();
    (mock, KeyPool::from_keys([key]).unwrap())
}

/// Deterministic prompt number `n`: cacheable, and never asked before.
fn request(mock: &MockServer, n: usize) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"contents":[{{"parts":[{{"text":"prompt number {n}"}}]}}],"generationConfig":{{"temperature":0}}}}"#
    );
    Request::post(mock.model_url("gemini-2.0-flash", "generateContent"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

#[tokio::test]
async fn a_cached_answer_costs_about_what_it_weighs() {
    let (mock, pool) = mock_and_pool("test-key-cache-mem-0001").await;
    let cache = CacheLayer::new();
    let cached = cache.layer(KeyRotationLayer::new(&pool).layer(common::client()));
    let direct = KeyRotationLayer::new(&pool).layer(common::client());
    let request = |n: usize| request(&mock, n);
    // Warm: connections, the mock's and the pool's tables.
    for n in 0..300 {
        let response = direct.clone().oneshot(request(n)).await.unwrap();
        let _ = response.into_body().collect().await.unwrap();
        let response = cached.clone().oneshot(request(n)).await.unwrap();
        let _ = response.into_body().collect().await.unwrap();
    }
    const N: usize = 2000;
    // What the same calls leave behind without the cache (the mock's and the pool's records).
    let before = live_bytes();
    for n in 1_000_000..1_000_000 + N {
        let response = direct.clone().oneshot(request(n)).await.unwrap();
        let _ = response.into_body().collect().await.unwrap();
    }
    let baseline = live_bytes() - before;
    let (entries_before, weighed_before) = cache.usage().await;
    let before = live_bytes();
    for n in 2_000_000..2_000_000 + N {
        let response = cached.clone().oneshot(request(n)).await.unwrap();
        let _ = response.into_body().collect().await.unwrap();
    }
    let (entries, weighed) = cache.usage().await;
    let held = live_bytes() - before - baseline;
    let (entries, weighed) = (entries - entries_before, weighed - weighed_before);
    assert_eq!(entries as usize, N);
    let per_entry = held as f64 / N as f64;
    let weighed_per_entry = weighed as f64 / N as f64;
    println!(
        "{N} entries: {per_entry:.0} bytes live each, weighed {weighed_per_entry:.0} ({:.2}×); without the cache the calls leave {} bytes each",
        per_entry / weighed_per_entry,
        baseline / N as isize
    );
    assert!(
        per_entry < 2.0 * weighed_per_entry,
        "{per_entry:.0} bytes live per entry weighed {weighed_per_entry:.0}"
    );
}

#[tokio::test]
async fn a_full_cache_evicting_holds_steady() {
    let (mock, pool) = mock_and_pool("test-key-cache-mem-0002").await;
    // Room for a few hundred answers: every new one evicts an old one.
    let cache = CacheLayer::new().max_bytes(256 * 1024);
    let cached = cache.layer(KeyRotationLayer::new(&pool).layer(common::client()));
    let ask = async |n: usize| {
        let response = cached.clone().oneshot(request(&mock, n)).await.unwrap();
        let _ = response.into_body().collect().await.unwrap();
    };
    let mut live = Vec::new();
    for round in 0..4 {
        for n in 0..2500 {
            ask(round * 10_000 + n).await;
        }
        let (_, weighed) = cache.usage().await;
        assert!(weighed <= 256 * 1024, "{weighed}");
        live.push(live_bytes());
    }
    // The first round fills the cache; after that what is live does not grow with the calls
    // (the mock's own records aside: 36 bytes a call, see above).
    let growth = live[3] - live[1];
    println!("live after each 2,500 calls: {live:?}; last two rounds {growth:+} bytes");
    assert!(growth < 5000 * 100, "{live:?}");
}
