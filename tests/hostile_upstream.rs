//! Nothing the network sends can panic or stall the caller, and a key goes nowhere but the host
//! it was meant for: upstreams that answer with absurd delays, trickle their error bodies, never
//! answer, echo the key deep in a body, or redirect elsewhere. Real HTTP on 127.0.0.1.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use common::{client, generate_at, serve, text};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_gemini::classify::{Class, Classification};
use tower_gemini::retry::{Backoff, NoJitter, RetryLayer};
use tower_gemini::{ErrorKind, KeyPool, KeyRotationLayer};

const MODEL: &str = "gemini-2.0-flash";
const ROUTE: &str = "/v1beta/models/{model_and_method}";

fn json(status: StatusCode, body: &'static str) -> Response {
    (status, [("content-type", "application/json")], body).into_response()
}

/// A 503 and a bare 429 whose `RetryInfo` asks for u64::MAX seconds: both used to panic the task
/// ("overflow when adding durations") in the retry deadline check.
#[tokio::test(start_paused = true)]
async fn an_absurd_retry_delay_never_panics_and_never_stalls() {
    const OVERLOADED: &str = r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"18446744073709551615s"}]}}"#;
    const BARE_429: &str = r#"{"error":{"code":429,"message":"Resource has been exhausted.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"18446744073709551615s"}]}}"#;
    for (status, body) in [
        (StatusCode::SERVICE_UNAVAILABLE, OVERLOADED),
        (StatusCode::TOO_MANY_REQUESTS, BARE_429),
    ] {
        let base =
            serve(Router::new().route(ROUTE, post(move || async move { json(status, body) })))
                .await;
        let pool = KeyPool::from_keys(["test-key-0001", "test-key-0002"]).unwrap();
        let gemini = RetryLayer::for_pool(&pool)
            .backoff(Backoff::default().jitter(NoJitter))
            .layer(KeyRotationLayer::new(&pool).layer(client()));
        let start = Instant::now();
        let response = gemini.oneshot(generate_at(&base, MODEL)).await.unwrap();
        // The delay is capped at an hour where it is parsed; an hour does not fit the 120 s
        // deadline, so the last answer comes back at once instead of a sleep (or a panic).
        assert_eq!(response.status(), status);
        let class = response.extensions().get::<Classification>().unwrap();
        assert_eq!(
            class.retry_after(),
            Some(tower_gemini::classify::MAX_WIRE_DELAY)
        );
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    }
}

/// An error body that arrives one byte every three seconds.
fn trickle(total: usize) -> Body {
    let stream = futures_util::stream::unfold(0usize, move |sent| async move {
        if sent == total {
            return None;
        }
        if sent > 0 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let byte = Bytes::from_static(if sent == 0 { b"{" } else { b" " });
        Some((Ok::<_, Infallible>(byte), sent + 1))
    });
    Body::from_stream(stream)
}

#[tokio::test(start_paused = true)]
async fn a_trickling_error_body_holds_neither_the_caller_nor_the_key() {
    let base = serve(Router::new().route(
        ROUTE,
        post(|| async { (StatusCode::SERVICE_UNAVAILABLE, trickle(1_000)).into_response() }),
    ))
    .await;
    let pool = KeyPool::from_keys(["test-key-0001"]).unwrap();
    let gemini = KeyRotationLayer::new(&pool).layer(client());
    let start = Instant::now();
    let response = gemini.oneshot(generate_at(&base, MODEL)).await.unwrap();
    // Classified after the 5 s read bound from what had arrived, not after 50 minutes.
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    let class = response.extensions().get::<Classification>().unwrap();
    assert_eq!(class.class(), Class::Upstream);
    let key = &pool.snapshot().keys[0];
    assert_eq!(key.counters.in_flight, 0, "the key's lease is released");
    assert_eq!(key.counters.total, 1, "and the outcome reported");
    // The caller still gets every byte if it wants them.
    drop(response);

    // The same through the retry layer: its deadline ends the whole call, attempts and reads.
    let gemini = RetryLayer::for_pool(&pool)
        .deadline(Duration::from_secs(12))
        .backoff(Backoff::default().jitter(NoJitter))
        .layer(KeyRotationLayer::new(&pool).layer(client()));
    let start = Instant::now();
    let outcome = gemini.oneshot(generate_at(&base, MODEL)).await;
    assert!(
        start.elapsed() <= Duration::from_secs(12),
        "{:?}",
        start.elapsed()
    );
    match outcome {
        Ok(response) => assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE),
        Err(error) => assert_eq!(error.kind(), ErrorKind::Timeout),
    }
}

#[tokio::test(start_paused = true)]
async fn the_retry_deadline_bounds_an_upstream_that_never_answers() {
    let base = serve(Router::new().route(
        ROUTE,
        post(|| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK
        }),
    ))
    .await;
    let pool = KeyPool::from_keys(["test-key-0001"]).unwrap();
    let gemini = RetryLayer::for_pool(&pool)
        .deadline(Duration::from_secs(10))
        .layer(KeyRotationLayer::new(&pool).layer(client()));
    let start = Instant::now();
    let error = gemini.oneshot(generate_at(&base, MODEL)).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout);
    assert_eq!(error.status_code(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert!(error.to_string().contains("deadline"), "{error}");
    assert_eq!(pool.snapshot().keys[0].counters.in_flight, 0);
}

/// An error body that quotes the key after 100 KiB, split across two frames.
#[tokio::test]
async fn a_key_echoed_deep_in_an_error_body_is_scrubbed_as_it_streams() {
    let base = serve(Router::new().route(
        ROUTE,
        post(|headers: HeaderMap| async move {
            let key = headers["x-goog-api-key"].to_str().unwrap().to_owned();
            let (head, tail) = key.split_at(key.len() / 2);
            let chunks = vec![
                Bytes::from(format!(
                    "{{\"error\":{{\"code\":403,\"message\":\"{}",
                    "x".repeat(100 * 1024)
                )),
                Bytes::from(format!(" consumer api_key:{head}")),
                Bytes::from(format!("{tail} suspended; again {key}.\"}}}}")),
            ];
            let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, Infallible>));
            (StatusCode::FORBIDDEN, Body::from_stream(stream)).into_response()
        }),
    ))
    .await;
    let pool = KeyPool::from_keys(["test-key-secret-0001"]).unwrap();
    let gemini = KeyRotationLayer::new(&pool).layer(client());
    let response = gemini.oneshot(generate_at(&base, MODEL)).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.headers().get("content-length").is_none());
    let body = text(response).await;
    assert!(body.len() > 100 * 1024);
    assert!(
        !body.contains("test-key-secret-0001"),
        "the key reached the caller"
    );
    assert!(
        !body.contains("secret-0001"),
        "part of the key reached the caller"
    );
    assert_eq!(
        body.matches("…0001").count(),
        2,
        "{}",
        &body[body.len() - 80..]
    );
    assert!(
        body.ends_with("suspended; again …0001.\"}}"),
        "{}",
        &body[body.len() - 80..]
    );
}

#[cfg(feature = "reqwest")]
#[tokio::test]
async fn reqwest_never_follows_a_redirect_to_another_host_with_the_key() {
    use tower_gemini::client::ReqwestService;

    // The other host counts what reaches it and which keys came along.
    let reached = Arc::new(AtomicU32::new(0));
    let with_key = Arc::new(AtomicU32::new(0));
    let (r, k) = (reached.clone(), with_key.clone());
    let elsewhere = serve(Router::new().fallback(move |headers: HeaderMap| {
        let (r, k) = (r.clone(), k.clone());
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            if headers.contains_key("x-goog-api-key") || headers.contains_key("authorization") {
                k.fetch_add(1, Ordering::SeqCst);
            }
            json(StatusCode::OK, "{}")
        }
    }))
    .await;
    let target = format!("{elsewhere}/v1beta/models/{MODEL}:generateContent");
    let redirecting = serve(Router::new().route(
        ROUTE,
        post(move || {
            let target = target.clone();
            // A 302 (a POST becomes a GET) is what reqwest follows even with a streamed body.
            async move { (StatusCode::FOUND, [("location", target)]).into_response() }
        }),
    ))
    .await;
    let pool = KeyPool::from_keys(["test-key-0001"]).unwrap();
    let gemini = KeyRotationLayer::new(&pool).layer(ReqwestService::new().unwrap());
    let response = gemini
        .oneshot(generate_at(&redirecting, MODEL))
        .await
        .unwrap();
    // Returned unfollowed, with where it pointed.
    assert_eq!(response.status(), StatusCode::FOUND);
    assert!(
        response.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with(&elsewhere)
    );
    assert_eq!(reached.load(Ordering::SeqCst), 0);
    assert_eq!(with_key.load(Ordering::SeqCst), 0);

    // A redirect within the same origin is still followed.
    let same = Arc::new(AtomicU32::new(0));
    let s = same.clone();
    let base = serve(
        Router::new()
            .route(
                "/v1beta/models/moved:generateContent",
                post(|| async {
                    let to = "/v1beta/models/gemini-2.0-flash:generateContent";
                    (StatusCode::FOUND, [("location", to)]).into_response()
                }),
            )
            .route(
                "/v1beta/models/gemini-2.0-flash:generateContent",
                axum::routing::any(move |headers: HeaderMap| {
                    let s = s.clone();
                    async move {
                        assert!(headers.contains_key("x-goog-api-key"));
                        s.fetch_add(1, Ordering::SeqCst);
                        json(StatusCode::OK, "{}")
                    }
                }),
            ),
    )
    .await;
    let pool = KeyPool::from_keys(["test-key-0001"]).unwrap();
    let gemini = KeyRotationLayer::new(&pool).layer(ReqwestService::new().unwrap());
    let response = gemini.oneshot(generate_at(&base, "moved")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(same.load(Ordering::SeqCst), 1);
}
