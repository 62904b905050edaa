//! Explicit context caches through the stack (issue #25, first part), over real HTTP to the
//! mock with three projects, each keeping its own caches (a foreign or expired one is Google's
//! 403 "CachedContent not found (or permission denied)"): a cache made through the pool is
//! used, read, extended and deleted on its project only; one made elsewhere is found by
//! probing without blaming a key; a tenant cannot use another's; the pin ends when the cache
//! expires.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{served_by, text};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_gemini::clock::ManualClock;
use tower_gemini::context::Tenant;
use tower_gemini::mock::{MockGemini, MockServer};
use tower_gemini::pool::KeyPoolBuilder;
use tower_gemini::{BoxGemini, ErrorKind, KeyPool, KeySpec, stack};

const MODEL: &str = "gemini-2.5-flash";
const KEYS: [(&str, &str); 3] = [
    ("proj-a", "test-key-caches-000a"),
    ("proj-b", "test-key-caches-000b"),
    ("proj-c", "test-key-caches-000c"),
];

async fn mock() -> MockServer {
    let mut builder = MockGemini::builder().implicit_cache_min_tokens(100);
    for (project, key) in KEYS {
        builder = builder.project(project, |p| p.key(key));
    }
    builder.start().await.unwrap()
}

fn pool(build: impl FnOnce(KeyPoolBuilder) -> KeyPoolBuilder) -> KeyPool {
    let mut builder = KeyPool::builder();
    for (project, key) in KEYS {
        builder = builder.key_with(KeySpec::new(key).project(project));
    }
    build(builder).build().unwrap()
}

fn gemini(pool: &KeyPool) -> BoxGemini {
    stack(pool).boxed(common::client())
}

fn request(method: Method, url: String, body: Option<Value>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap()
}

fn cache_body(ttl: &str) -> Value {
    json!({
        "model": format!("models/{MODEL}"),
        "ttl": ttl,
        "systemInstruction": { "parts": [{ "text": "You answer from the manual." }] },
        "contents": [{ "role": "user", "parts": [{ "text": "The manual. ".repeat(60) }] }]
    })
}

fn generate(mock: &MockServer, cache: &str, question: &str) -> Request<Full<Bytes>> {
    let body = json!({
        "cachedContent": cache,
        "contents": [{ "role": "user", "parts": [{ "text": question }] }]
    });
    request(
        Method::POST,
        mock.model_url(MODEL, "generateContent"),
        Some(body),
    )
}

async fn json_of(response: http::Response<tower_gemini::BoxBody>) -> Value {
    serde_json::from_str(&text(response).await).unwrap()
}

/// Every key active, none cooling, no failure counted.
fn assert_no_key_blamed(pool: &KeyPool) {
    for key in pool.snapshot().keys {
        assert_eq!(key.state, tower_gemini::pool::KeyState::Active, "{key:?}");
        assert!(
            key.models.iter().all(|m| m.cooling_until.is_none()),
            "{key:?}"
        );
        assert_eq!(key.counters.consecutive_failures, 0, "{key:?}");
    }
}

#[tokio::test]
async fn a_cache_is_used_read_extended_and_deleted_on_its_project_only() {
    let mock = mock().await;
    let pool = pool(|b| b);
    let gemini = gemini(&pool);
    let url = format!("{}/v1beta/cachedContents", mock.url());
    let made = gemini
        .clone()
        .oneshot(request(Method::POST, url, Some(cache_body("600s"))))
        .await
        .unwrap();
    assert_eq!(made.status(), StatusCode::OK);
    let home = served_by(&made);
    let cache = json_of(made).await["name"].as_str().unwrap().to_owned();
    let owner = pool.owner_of(&cache).expect("learned from the create");
    assert_eq!(
        format!(
            "…{}",
            &KEYS
                .iter()
                .find(|(p, _)| *p == owner.project_name())
                .unwrap()
                .1[16..]
        ),
        home
    );
    // Ten questions over the cache: each on its project (another would answer 403), each
    // with the cache's tokens reported cached.
    for q in 0..10 {
        let answer = gemini
            .clone()
            .oneshot(generate(&mock, &cache, &format!("question {q}")))
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "question {q}");
        assert_eq!(served_by(&answer), home);
        let json = json_of(answer).await;
        let cached = json["usageMetadata"]["cachedContentTokenCount"].as_u64();
        assert!(cached.unwrap_or(0) > 100, "{json}");
    }
    let at = format!("{}/v1beta/{cache}", mock.url());
    let got = gemini
        .clone()
        .oneshot(request(Method::GET, at.clone(), None))
        .await
        .unwrap();
    assert_eq!(served_by(&got), home);
    // Extended: the pin lasts as long as the cache.
    let patch = format!("{at}?updateMask=ttl");
    let extended = gemini
        .clone()
        .oneshot(request(
            Method::PATCH,
            patch,
            Some(json!({ "ttl": "7200s" })),
        ))
        .await
        .unwrap();
    assert_eq!(served_by(&extended), home);
    let _ = text(extended).await;
    let deleted = gemini
        .clone()
        .oneshot(request(Method::DELETE, at, None))
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    assert!(pool.owner_of(&cache).is_none(), "a delete forgets the pin");
    assert_eq!(mock.stats().responses_with_status(403), 0);
    assert_no_key_blamed(&pool);
}

/// A cache made with a key outside the pool is found by probing (one GET per project at
/// most) when a request names it; the probes' 403s blame no key.
#[tokio::test]
async fn a_cache_made_elsewhere_is_found_by_probing() {
    let mock = mock().await;
    let pool = pool(|b| b);
    let gemini = gemini(&pool);
    let url = format!("{}/v1beta/cachedContents", mock.url());
    let made = common::client()
        .request(common::with_key(
            request(Method::POST, url, Some(cache_body("600s"))),
            KEYS[1].1,
        ))
        .await
        .unwrap();
    let made: Value = serde_json::from_str(&text(made).await).unwrap();
    let cache = made["name"].as_str().unwrap().to_owned();
    for q in 0..3 {
        let answer = gemini
            .clone()
            .oneshot(generate(&mock, &cache, &format!("q{q}")))
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(served_by(&answer), "…000b");
    }
    assert!(
        mock.stats().responses_with_status(403) <= 2,
        "one probe per other project at most"
    );
    assert_eq!(pool.owner_of(&cache).unwrap().project_name(), "proj-b");
    assert_no_key_blamed(&pool);
}

/// A tenant's cache is its own: another tenant's use, read, patch or delete of it is
/// `NotFound` with nothing sent.
#[tokio::test]
async fn a_tenant_cannot_use_another_tenants_cache() {
    let mock = mock().await;
    let pool = pool(|b| b);
    let gemini = gemini(&pool);
    let as_tenant = |mut request: Request<Full<Bytes>>, tenant: &str| {
        request.extensions_mut().insert(Tenant::new(tenant));
        request
    };
    let url = format!("{}/v1beta/cachedContents", mock.url());
    let made = gemini
        .clone()
        .oneshot(as_tenant(
            request(Method::POST, url, Some(cache_body("600s"))),
            "alice",
        ))
        .await
        .unwrap();
    let cache = json_of(made).await["name"].as_str().unwrap().to_owned();
    let sent = mock.stats().total_requests();
    let at = format!("{}/v1beta/{cache}", mock.url());
    for attempt in [
        generate(&mock, &cache, "mine now?"),
        request(Method::GET, at.clone(), None),
        request(
            Method::PATCH,
            format!("{at}?updateMask=ttl"),
            Some(json!({ "ttl": "9999s" })),
        ),
        request(Method::DELETE, at.clone(), None),
    ] {
        let error = gemini
            .clone()
            .oneshot(as_tenant(attempt, "mallory"))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");
    }
    assert_eq!(mock.stats().total_requests(), sent);
    let mine = gemini
        .clone()
        .oneshot(as_tenant(generate(&mock, &cache, "mine"), "alice"))
        .await
        .unwrap();
    assert_eq!(mine.status(), StatusCode::OK);
}

/// The pin ends with the cache: at its `expireTime` (read from the answer), not before.
#[tokio::test]
async fn the_pin_ends_when_the_cache_expires() {
    let mock = mock().await;
    let clock = ManualClock::at(jiff::Timestamp::now());
    let pool = pool(|b| b.clock(clock.clone()));
    let gemini = gemini(&pool);
    let url = format!("{}/v1beta/cachedContents", mock.url());
    let made = gemini
        .clone()
        .oneshot(request(Method::POST, url, Some(cache_body("7200s"))))
        .await
        .unwrap();
    let cache = json_of(made).await["name"].as_str().unwrap().to_owned();
    clock.advance(Duration::from_secs(3700));
    assert!(
        pool.owner_of(&cache).is_some(),
        "past the default hour: its own two hours hold"
    );
    clock.advance(Duration::from_secs(3600));
    assert!(pool.owner_of(&cache).is_none());
}
