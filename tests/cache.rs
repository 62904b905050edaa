//! `CacheLayer` over real HTTP to the mock: a repeated prompt is served once upstream, identical
//! misses are coalesced, errors and sampled answers are not cached, entries expire and the size
//! bound holds.
#![cfg(feature = "cache")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::client;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};
use tower_gemini::cache::{CACHE_HEADER, CacheLayer, CacheStatus};
use tower_gemini::mock::{Fault, MockGemini, MockServer};
use tower_gemini::{KeyPool, KeyRotationLayer};

const MODEL: &str = "gemini-2.0-flash";
const KEY: &str = "test-key-cache-0001";

async fn mock(faults: &[Fault]) -> MockServer {
    let mut mock = MockGemini::builder().project("proj-a", |p| p.key(KEY));
    for fault in faults {
        mock = mock.fault(fault.clone());
    }
    mock.start().await.unwrap()
}

fn prompt(mock: &MockServer, text: &str, temperature: &str) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"contents":[{{"parts":[{{"text":"{text}"}}]}}],"generationConfig":{{"temperature":{temperature}}}}}"#
    );
    Request::post(mock.model_url(MODEL, "generateContent"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// Status, cache header and body of one call through `layer` to `mock`.
async fn ask(
    layer: &CacheLayer,
    pool: &KeyPool,
    request: Request<Full<Bytes>>,
) -> (StatusCode, String, String) {
    let service = layer.layer(KeyRotationLayer::new(pool).layer(client()));
    let response = service.oneshot(request).await.unwrap();
    let status = response.status();
    let cache = response.headers()[CACHE_HEADER]
        .to_str()
        .unwrap()
        .to_owned();
    let hit = response.extensions().get::<CacheStatus>().copied();
    assert_eq!(hit == Some(CacheStatus::Hit), cache == "hit");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, cache, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_repeated_prompt_is_served_once_upstream() {
    let mock = mock(&[]).await;
    let pool = KeyPool::from_keys([KEY]).unwrap();
    let cache = CacheLayer::new();
    let first = ask(&cache, &pool, prompt(&mock, "hello", "0")).await;
    assert_eq!((first.0, first.1.as_str()), (StatusCode::OK, "miss"));
    for _ in 0..5 {
        let again = ask(&cache, &pool, prompt(&mock, "hello", "0")).await;
        assert_eq!((again.0, again.1.as_str()), (StatusCode::OK, "hit"));
        assert_eq!(again.2, first.2, "the same answer");
    }
    assert_eq!(mock.stats().total_requests(), 1);
    // Another prompt is another entry.
    let other = ask(&cache, &pool, prompt(&mock, "good bye", "0")).await;
    assert_eq!(other.1, "miss");
    assert_eq!(mock.stats().total_requests(), 2);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (5, 2));
    assert!((stats.hit_rate() - 5.0 / 7.0).abs() < 1e-9);
    assert_eq!(cache.usage().await.0, 2);
}

#[tokio::test]
async fn identical_misses_at_once_make_one_upstream_call() {
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key(KEY))
        .fault(Fault::latency(Duration::from_millis(100)))
        .start()
        .await
        .unwrap();
    let pool = KeyPool::from_keys([KEY]).unwrap();
    let cache = CacheLayer::new();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (cache, pool, request) = (cache.clone(), pool.clone(), prompt(&mock, "same", "0"));
            tokio::spawn(async move { ask(&cache, &pool, request).await })
        })
        .collect();
    let mut bodies = std::collections::BTreeSet::new();
    for task in tasks {
        let (status, _, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        bodies.insert(body);
    }
    assert_eq!(bodies.len(), 1, "every waiter got the one answer");
    assert_eq!(mock.stats().total_requests(), 1);
}

#[tokio::test]
async fn errors_sampled_answers_and_opt_outs_are_not_cached() {
    let mock = mock(&[Fault::overloaded(1.0)]).await;
    let pool = KeyPool::from_keys([KEY]).unwrap();
    let cache = CacheLayer::new();
    for _ in 0..2 {
        let (status, cache_header, _) = ask(&cache, &pool, prompt(&mock, "hi", "0")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(cache_header, "miss");
    }
    assert_eq!(
        mock.stats().total_requests(),
        2,
        "an error is not served again"
    );

    let mock = mock_ok().await;
    for _ in 0..2 {
        let response = cache
            .layer(KeyRotationLayer::new(&pool).layer(client()))
            .oneshot(prompt(&mock, "sampled", "0.7"))
            .await
            .unwrap();
        assert!(!response.headers().contains_key(CACHE_HEADER));
    }
    for _ in 0..2 {
        let mut request = prompt(&mock, "fixed", "0");
        request
            .headers_mut()
            .insert(CACHE_HEADER, "no".parse().unwrap());
        let response = cache
            .layer(KeyRotationLayer::new(&pool).layer(client()))
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(mock.stats().total_requests(), 4);
    // A caller can opt in for a sampled prompt.
    for expected in ["miss", "hit"] {
        let mut request = prompt(&mock, "sampled", "0.7");
        request
            .headers_mut()
            .insert(CACHE_HEADER, "yes".parse().unwrap());
        assert_eq!(ask(&cache, &pool, request).await.1, expected);
    }
}

async fn mock_ok() -> MockServer {
    mock(&[]).await
}

#[tokio::test]
async fn entries_expire_after_their_models_ttl() {
    let mock = mock_ok().await;
    let pool = KeyPool::from_keys([KEY]).unwrap();
    let cache = CacheLayer::new().ttl(MODEL, Duration::from_millis(100));
    assert_eq!(ask(&cache, &pool, prompt(&mock, "x", "0")).await.1, "miss");
    assert_eq!(ask(&cache, &pool, prompt(&mock, "x", "0")).await.1, "hit");
    // moka's clock is its own: a short real wait.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(ask(&cache, &pool, prompt(&mock, "x", "0")).await.1, "miss");
    assert_eq!(mock.stats().total_requests(), 2);
}

#[tokio::test]
async fn the_size_bound_holds() {
    let mock = mock_ok().await;
    let pool = KeyPool::from_keys([KEY]).unwrap();
    let cache = CacheLayer::new().max_bytes(8 * 1024);
    for n in 0..60 {
        let text = format!("prompt number {n} {}", "padding ".repeat(20));
        ask(&cache, &pool, prompt(&mock, &text, "0")).await;
    }
    let (entries, bytes) = cache.usage().await;
    assert!(bytes <= 8 * 1024, "{bytes} bytes in {entries} entries");
    assert!(entries > 0 && entries < 60, "{entries}");
}

fn stream_prompt(mock: &MockServer, text: &str, sse: bool) -> Request<Full<Bytes>> {
    let body = format!(
        r#"{{"contents":[{{"parts":[{{"text":"{text}"}}]}}],"generationConfig":{{"temperature":0}}}}"#
    );
    let url = mock.model_url(MODEL, "streamGenerateContent");
    let url = if sse { format!("{url}?alt=sse") } else { url };
    Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// Read a streamed answer chunk by chunk: the cache header, the bytes and whether it broke.
async fn read_stream(
    layer: &CacheLayer,
    pool: &KeyPool,
    request: Request<Full<Bytes>>,
) -> (String, String, Option<String>, bool) {
    let service = layer.layer(KeyRotationLayer::new(pool).layer(client()));
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cache = response.headers()[CACHE_HEADER]
        .to_str()
        .unwrap()
        .to_owned();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut body = response.into_body();
    let mut seen = Vec::new();
    let mut broken = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => seen.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..])),
            Err(_) => {
                broken = true;
                break;
            }
        }
    }
    (
        cache,
        String::from_utf8_lossy(&seen).into_owned(),
        content_type,
        broken,
    )
}

#[tokio::test]
async fn a_completed_stream_is_replayed_as_the_same_stream() {
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key(KEY))
        .stream_chunks(4)
        .start()
        .await
        .unwrap();
    let pool = KeyPool::from_keys([KEY]).unwrap();
    let cache = CacheLayer::new();
    let (first, streamed, kind, broken) =
        read_stream(&cache, &pool, stream_prompt(&mock, "tell me a story", true)).await;
    assert_eq!((first.as_str(), broken), ("miss", false));
    assert!(streamed.matches("data: ").count() >= 2, "{streamed}");
    // Stored by a task when the stream ended: give it its turn.
    for _ in 0..100 {
        if cache.usage().await.0 == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let (again, replayed, replayed_kind, _) =
        read_stream(&cache, &pool, stream_prompt(&mock, "tell me a story", true)).await;
    assert_eq!(again, "hit");
    assert_eq!(replayed, streamed, "the same SSE bytes");
    assert_eq!(replayed_kind, kind);
    assert_eq!(kind.as_deref(), Some("text/event-stream"));
    assert_eq!(mock.stats().total_requests(), 1);
    // The JSON-array form of the same prompt is another entry.
    let (array, _, _, _) = read_stream(
        &cache,
        &pool,
        stream_prompt(&mock, "tell me a story", false),
    )
    .await;
    assert_eq!(array, "miss");
    assert_eq!(mock.stats().total_requests(), 2);
}

#[tokio::test]
async fn a_broken_or_abandoned_stream_is_never_kept() {
    let mock = mock(&[Fault::mid_stream_error(1.0)]).await;
    let pool = KeyPool::from_keys([KEY]).unwrap();
    let cache = CacheLayer::new();
    for round in 1..=2u64 {
        let (status, _, _, broken) =
            read_stream(&cache, &pool, stream_prompt(&mock, "break", true)).await;
        assert_eq!(status, "miss", "round {round}");
        assert!(broken, "the mock breaks every stream");
        assert_eq!(mock.stats().total_requests(), round);
    }
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(cache.usage().await.0, 0);

    // A caller that stops reading half-way: nothing is kept either.
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key(KEY))
        .stream_chunks(4)
        .start()
        .await
        .unwrap();
    let service = cache.layer(KeyRotationLayer::new(&pool).layer(client()));
    let response = service
        .clone()
        .oneshot(stream_prompt(&mock, "abandoned", true))
        .await
        .unwrap();
    let mut body = response.into_body();
    let _first = body.frame().await;
    drop(body);
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(cache.usage().await.0, 0);
    let (status, _, _, _) =
        read_stream(&cache, &pool, stream_prompt(&mock, "abandoned", true)).await;
    assert_eq!(status, "miss");
    assert_eq!(mock.stats().total_requests(), 2);
}

/// At the seam with the stack: the caller whose miss went upstream keeps what the layers
/// below said (the key that served, Google's error with its `Retry-After`); a hit has no key.
#[tokio::test]
async fn a_miss_keeps_what_the_stack_below_said() {
    let mock = mock(&[]).await;
    let pool = KeyPool::from_keys([KEY]).unwrap();
    let cache = CacheLayer::new();
    let service = cache.layer(tower_gemini::stack(&pool).layer(client()));
    let miss = service
        .clone()
        .oneshot(prompt(&mock, "which key", "0"))
        .await
        .unwrap();
    assert_eq!(miss.headers()[CACHE_HEADER], "miss");
    assert!(
        miss.extensions()
            .get::<tower_gemini::SelectedKey>()
            .is_some()
    );
    let hit = service
        .clone()
        .oneshot(prompt(&mock, "which key", "0"))
        .await
        .unwrap();
    assert_eq!(hit.headers()[CACHE_HEADER], "hit");
    assert!(
        hit.extensions()
            .get::<tower_gemini::SelectedKey>()
            .is_none()
    );

    // A local refusal keeps its retry time through the cache.
    let spent = KeyPool::builder()
        .key(KEY)
        .model_limits(
            MODEL,
            tower_gemini::ModelLimits {
                rpd: Some(1),
                ..Default::default()
            },
        )
        .build()
        .unwrap();
    let service = cache.layer(tower_gemini::stack(&spent).layer(client()));
    let first = service
        .clone()
        .oneshot(prompt(&mock, "the day's one", "0"))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let err = service
        .oneshot(prompt(&mock, "refused", "0"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), tower_gemini::ErrorKind::QuotaExhausted);
    assert!(err.retry_after().is_some(), "{err}");
}

/// An upstream whose answer depends on the prompt: `refused` is a 429 with headers of its own
/// and a body that never ends, `slow-refused` a small 429 after 100 ms, `large` a 200 larger
/// than an entry may be. Counts its calls.
#[cfg(feature = "axum")]
async fn odd_upstream(calls: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> String {
    use axum::body::Body;
    use axum::response::IntoResponse;
    use std::sync::atomic::Ordering;

    let route = axum::routing::post(move |body: String| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let refused = [("retry-after", "7"), ("x-upstream", "own header")];
            if body.contains("slow-refused") {
                tokio::time::sleep(Duration::from_millis(100)).await;
                (StatusCode::TOO_MANY_REQUESTS, refused, "{}").into_response()
            } else if body.contains("refused") {
                let junk = futures_util::stream::repeat_with(|| {
                    Ok::<_, std::convert::Infallible>(Bytes::from(vec![b'x'; 64 * 1024]))
                });
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    refused,
                    Body::from_stream(junk),
                )
                    .into_response()
            } else {
                let large = vec![b' '; tower_gemini::cache::MAX_ENTRY_BYTES + (1 << 20)];
                (StatusCode::OK, large).into_response()
            }
        }
    });
    common::serve(axum::Router::new().route("/v1beta/models/{model}", route)).await
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn answers_that_are_not_kept_pass_as_they_come_with_their_headers() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let calls = Arc::new(AtomicUsize::new(0));
    let base = odd_upstream(calls.clone()).await;
    let cache = CacheLayer::new();
    let ask = |text: &str| {
        let body = format!(
            r#"{{"contents":[{{"parts":[{{"text":"{text}"}}]}}],"generationConfig":{{"temperature":0}}}}"#
        );
        let request = Request::post(format!("{base}/v1beta/models/{MODEL}:generateContent"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        cache.layer(client()).oneshot(request)
    };

    // A refusal whose body never ends: its head and headers come at once, the body as it
    // comes (it could not have been read whole first).
    let response = tokio::time::timeout(Duration::from_secs(30), ask("refused"))
        .await
        .expect("the head arrives")
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(response.headers()["x-upstream"], "own header");
    assert_eq!(response.headers()[CACHE_HEADER], "miss");
    let mut body = response.into_body();
    let mut read = 0;
    while read < 4 << 20 {
        let frame = body.frame().await.unwrap().unwrap();
        read += frame.data_ref().map_or(0, Bytes::len);
    }
    drop(body);

    // An answer larger than an entry: passed whole, byte for byte, and not kept.
    for _ in 0..2 {
        let response = ask("large").await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), tower_gemini::cache::MAX_ENTRY_BYTES + (1 << 20));
        assert!(body.iter().all(|b| *b == b' '));
    }
    assert_eq!(cache.stats().entries, 0);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Identical callers waiting on a refusal that is not kept each get an answer of their
    // own, with its headers (the refusal was for the first caller's attempt, not theirs).
    let waiting: Vec<_> = (0..5).map(|_| ask("slow-refused")).collect();
    for response in futures_util::future::join_all(waiting).await {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["x-upstream"], "own header");
        assert_eq!(response.headers()[CACHE_HEADER], "miss");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3 + 5);
    assert_eq!(cache.stats().entries, 0);
}

/// An inner service that insists on `poll_ready` before each `call` (as tower's `Buffer` and
/// `ConcurrencyLimit` do): a clone starts not ready.
#[derive(Clone)]
struct ReadyFirst<S> {
    inner: S,
    ready: bool,
}

impl<S, R> tower::Service<R> for ReadyFirst<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        let poll = self.inner.poll_ready(cx);
        if poll.is_ready() {
            self.ready = true;
        }
        poll
    }

    fn call(&mut self, request: R) -> Self::Future {
        assert!(self.ready, "called without poll_ready");
        self.ready = false;
        self.inner.call(request)
    }
}

/// A cacheable miss is sent by the service the caller polled ready, never by an unpolled clone.
#[tokio::test]
async fn a_miss_is_sent_by_the_service_polled_ready() {
    let mock = mock(&[]).await;
    let pool = KeyPool::from_keys([KEY]).unwrap();
    let inner = ReadyFirst {
        inner: KeyRotationLayer::new(&pool).layer(client()),
        ready: false,
    };
    let service = CacheLayer::new().layer(inner);
    let response = service
        .oneshot(prompt(&mock, "polled ready first", "0"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// A request pinned to a project (an `Owner`) is not cached: its answer belongs to that
/// project's resources.
#[tokio::test]
async fn a_request_with_an_owner_is_not_cached() {
    let mock = mock(&[]).await;
    let pool = KeyPool::builder()
        .key_with(tower_gemini::KeySpec::new(KEY).project("proj-a"))
        .build()
        .unwrap();
    let layer = CacheLayer::new();
    for _ in 0..2 {
        let mut request = prompt(&mock, "owned", "0");
        request
            .extensions_mut()
            .insert(tower_gemini::context::Owner::project("proj-a"));
        let service = layer.layer(KeyRotationLayer::new(&pool).layer(client()));
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response
                .headers()
                .get(CACHE_HEADER)
                .is_none_or(|v| v != "hit")
        );
        let _ = response.into_body().collect().await.unwrap();
    }
    assert_eq!(mock.stats().total_requests(), 2);
}
