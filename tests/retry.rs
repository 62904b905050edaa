//! RetryLayer over KeyRotationLayer against the mock, over real HTTP, in paused time.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{
    a_bad_b_daily_c_fine, client, drain, generate, one_key_mock, served_by, stream, text, with_key,
};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};
use tower_gemini::classify::{Class, Classification};
use tower_gemini::mock::{Fault, MockGemini, MockServer};
use tower_gemini::pool::ModelLimits;
use tower_gemini::retry::{Backoff, GeminiPolicy, NoJitter, RetryBudget, RetryLayer};
use tower_gemini::{ErrorKind, KeyPool, KeyRotationLayer, KeySpec};

const FLASH: &str = "gemini-2.0-flash";

fn no_jitter() -> Backoff {
    Backoff::default().jitter(NoJitter)
}

#[tokio::test(start_paused = true)]
async fn bad_key_and_daily_quota_rotate_at_once_to_the_good_key() {
    let (mock, pool) = a_bad_b_daily_c_fine().await;
    let gemini = ServiceBuilder::new()
        .layer(RetryLayer::for_pool(&pool))
        .layer(KeyRotationLayer::new(&pool))
        .service(client());
    let before = mock.stats().total_requests();
    let start = Instant::now();
    let response = gemini
        .clone()
        .oneshot(generate(&mock, FLASH, "hi"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(served_by(&response), "…000c");
    assert_eq!(
        response
            .extensions()
            .get::<Classification>()
            .unwrap()
            .class(),
        Class::Success
    );
    assert_eq!(mock.stats().total_requests() - before, 3);
    assert_eq!(start.elapsed(), Duration::ZERO, "no sleep");
    let attempt = response
        .extensions()
        .get::<tower_gemini::retry::Attempt>()
        .unwrap();
    assert_eq!((attempt.number, attempt.max), (3, 4));
    // The pool learnt: the next call goes straight to C.
    let response = gemini.oneshot(generate(&mock, FLASH, "hi")).await.unwrap();
    assert_eq!(served_by(&response), "…000c");
    assert_eq!(mock.stats().total_requests() - before, 4);
}

#[tokio::test(start_paused = true)]
async fn overloaded_storm_backs_off_per_policy_and_returns_the_last_503() {
    let mock = MockGemini::builder()
        .project("p1", |p| p.key("test-key-0001"))
        .project("p2", |p| p.key("test-key-0002"))
        .project("p3", |p| p.key("test-key-0003"))
        .fault(Fault::overloaded(1.0))
        .start()
        .await
        .unwrap();
    let pool = KeyPool::from_keys(["test-key-0001", "test-key-0002", "test-key-0003"]).unwrap();
    let retry = RetryLayer::for_pool(&pool)
        .backoff(no_jitter())
        .without_budget();
    let gemini = retry.layer(KeyRotationLayer::new(&pool).layer(client()));
    let start = Instant::now();
    let response = gemini.oneshot(generate(&mock, FLASH, "hi")).await.unwrap();
    // 4 attempts (min(3 + 1, 2 × 3)), waits of 1 s, 2 s and 4 s between them.
    assert_eq!(mock.stats().total_requests(), 4);
    assert_eq!(start.elapsed(), Duration::from_secs(7));
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(text(response).await.contains("The model is overloaded"));
    assert!(pool.snapshot().keys.iter().all(|k| k.models.is_empty()));
}

#[tokio::test(start_paused = true)]
async fn full_jitter_keeps_every_wait_within_the_exponential_bound() {
    let mock = one_key_mock(Fault::overloaded(1.0)).await;
    let pool = KeyPool::from_keys(["test-key-0001"]).unwrap();
    let gemini = RetryLayer::new()
        .max_attempts(6)
        .without_budget()
        .layer(KeyRotationLayer::new(&pool).layer(client()));
    let start = Instant::now();
    let response = gemini.oneshot(generate(&mock, FLASH, "hi")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(mock.stats().total_requests(), 6);
    assert!(start.elapsed() <= Duration::from_secs(1 + 2 + 4 + 8 + 16));
}

async fn one_rpm_project_a_and_healthy_b(keys: &[&str]) -> (MockServer, KeyPool) {
    let mock = MockGemini::builder()
        .project("proj-a", |p| {
            p.key("test-key-000a").limits(
                FLASH,
                ModelLimits {
                    rpm: Some(1),
                    ..Default::default()
                },
            )
        })
        .project("proj-b", |p| p.key("test-key-000b"))
        .start()
        .await
        .unwrap();
    let spend = with_key(generate(&mock, FLASH, "x"), "test-key-000a");
    client().request(spend).await.unwrap();
    // 30 s later, proj-a's next slot is 30 s away: Google says retryDelay 30s.
    tokio::time::advance(Duration::from_secs(30)).await;
    let mut builder = KeyPool::builder();
    for key in keys {
        let project = if key.ends_with('a') {
            "proj-a"
        } else {
            "proj-b"
        };
        builder = builder.key_with(KeySpec::new(*key).project(project));
    }
    (mock, builder.build().unwrap())
}

#[tokio::test(start_paused = true)]
async fn retry_delay_on_one_key_does_not_sleep_while_another_serves() {
    let (mock, pool) = one_rpm_project_a_and_healthy_b(&["test-key-000a", "test-key-000b"]).await;
    let gemini = RetryLayer::for_pool(&pool).layer(KeyRotationLayer::new(&pool).layer(client()));
    let start = Instant::now();
    let response = gemini.oneshot(generate(&mock, FLASH, "hi")).await.unwrap();
    assert_eq!(served_by(&response), "…000b");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(mock.stats().rate_limited_for("test-key-000a"), 1);
    let cooling = &pool.snapshot().keys[0].models[0];
    assert_eq!(cooling.reason, "quota_minute");
}

#[tokio::test(start_paused = true)]
async fn retry_delay_on_a_single_key_pool_fails_fast_without_a_wait_bound() {
    // No wait bound: the retry layer does not silently hang the caller for a key.
    let (mock, pool) = one_rpm_project_a_and_healthy_b(&["test-key-000a"]).await;
    let gemini = RetryLayer::for_pool(&pool).layer(KeyRotationLayer::new(&pool).layer(client()));
    let start = Instant::now();
    let error = gemini
        .oneshot(generate(&mock, FLASH, "hi"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NoKeyAvailable);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(mock.stats().requests_for("test-key-000a"), 2);
}

#[tokio::test(start_paused = true)]
async fn retry_delay_on_a_single_key_pool_waits_when_allowed_then_succeeds() {
    let (mock, pool) = one_rpm_project_a_and_healthy_b(&["test-key-000a"]).await;
    let gemini = RetryLayer::for_pool(&pool).layer(
        KeyRotationLayer::new(&pool)
            .wait_up_to(Duration::from_secs(60))
            .layer(client()),
    );
    let start = Instant::now();
    let response = gemini.oneshot(generate(&mock, FLASH, "hi")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_secs(30));
    assert_eq!(mock.stats().requests_for("test-key-000a"), 3);
    assert_eq!(mock.stats().rate_limited_for("test-key-000a"), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_delay_beyond_the_deadline_gives_up_at_once() {
    // Willing to wait a minute, but the retry deadline is 10 s: no wait past it.
    let (mock, pool) = one_rpm_project_a_and_healthy_b(&["test-key-000a"]).await;
    let gemini = RetryLayer::for_pool(&pool)
        .deadline(Duration::from_secs(10))
        .layer(
            KeyRotationLayer::new(&pool)
                .wait_up_to(Duration::from_secs(60))
                .layer(client()),
        );
    let start = Instant::now();
    let error = gemini
        .oneshot(generate(&mock, FLASH, "hi"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NoKeyAvailable);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(mock.stats().requests_for("test-key-000a"), 2);
}

#[tokio::test(start_paused = true)]
async fn budget_bounds_attempts_under_total_failure() {
    let mock = MockGemini::builder()
        .project("p1", |p| p.key("test-key-0001"))
        .project("p2", |p| p.key("test-key-0002"))
        .fault(Fault::overloaded(1.0))
        .start()
        .await
        .unwrap();
    let pool = KeyPool::from_keys(["test-key-0001", "test-key-0002"]).unwrap();
    // Reserve of 1 retry per second over 10 s, plus 20 % of calls.
    let retry = RetryLayer::new()
        .max_attempts(10)
        .backoff(
            Backoff::new(Duration::from_millis(1), 1.0, Duration::from_millis(1)).jitter(NoJitter),
        )
        .budget(RetryBudget::new(Duration::from_secs(10), 1, 0.2));
    let gemini = retry.layer(KeyRotationLayer::new(&pool).layer(client()));
    let calls = 100;
    for _ in 0..calls {
        let response = gemini
            .clone()
            .oneshot(generate(&mock, FLASH, "x"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let upstream = mock.stats().total_requests();
    // Without a budget: 1000. With it: at most 100 calls + 10 (reserve) + 20 (20 % of 100).
    assert!(upstream <= calls + 10 + 20, "{upstream}");
    assert!(upstream >= calls + 10, "the reserve was used: {upstream}");
}

#[tokio::test]
async fn caller_errors_are_sent_once() {
    let mock = MockGemini::builder()
        .project("p", |p| p.key("test-key-0001"))
        .start()
        .await
        .unwrap();
    let pool = KeyPool::from_keys(["test-key-0001"]).unwrap();
    let gemini = RetryLayer::new().layer(KeyRotationLayer::new(&pool).layer(client()));
    let request = Request::post(mock.model_url(FLASH, "generateContent"))
        .body(Full::new(Bytes::from_static(b"{not json")))
        .unwrap();
    let response = gemini.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response
            .extensions()
            .get::<Classification>()
            .unwrap()
            .class(),
        Class::Caller
    );
    assert!(text(response).await.contains("Invalid JSON payload"));
    assert_eq!(mock.stats().total_requests(), 1);
    let response = gemini
        .oneshot(generate(&mock, "gemini-0.1-nope", "x"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(mock.stats().total_requests(), 2);
}

#[tokio::test]
async fn a_stream_broken_midway_is_not_retried() {
    let mock = one_key_mock(Fault::mid_stream_error(1.0)).await;
    let pool = KeyPool::from_keys(["test-key-0001"]).unwrap();
    let gemini = RetryLayer::new().layer(KeyRotationLayer::new(&pool).layer(client()));
    let response = gemini
        .oneshot(stream(&mock, FLASH, "hello there"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (seen, error) = drain(response.into_body()).await;
    assert!(error.is_some(), "the caller sees the error");
    assert!(seen.starts_with("data: "), "{seen}");
    assert_eq!(mock.stats().total_requests(), 1);
}

#[tokio::test(start_paused = true)]
async fn transport_failures_end_in_retries_exhausted() {
    let mock = one_key_mock(Fault::connection_reset(1.0)).await;
    let pool = KeyPool::from_keys(["test-key-0001"]).unwrap();
    let gemini = RetryLayer::new()
        .backoff(no_jitter())
        .without_budget()
        .layer(KeyRotationLayer::new(&pool).layer(client()));
    let start = Instant::now();
    let error = gemini
        .oneshot(generate(&mock, FLASH, "x"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::RetriesExhausted);
    assert_eq!(error.classification().unwrap().class(), Class::Transport);
    assert_eq!(error.key().unwrap().to_string(), "…0001");
    assert_eq!(mock.stats().total_requests(), 4);
    assert_eq!(start.elapsed(), Duration::from_secs(1 + 2 + 4));
}

#[tokio::test(start_paused = true)]
async fn alone_over_a_plain_client_it_classifies_bodies_itself() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let quota = r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier","quotaValue":"5"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"30s"}]}}"#;
    let inner = service_fn(move |_: Request<String>| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let (status, body) = match n {
                0 => (429, quota.to_owned()),
                1 => (503, r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#.to_owned()),
                _ => (200, "{}".to_owned()),
            };
            let response = Response::builder()
                .status(status)
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let gemini = RetryLayer::new().backoff(no_jitter()).layer(inner);
    let start = Instant::now();
    let response = gemini.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // QuotaMinute: at once (no key pool to cool, yet the delay is not slept); 503: 1 s backoff.
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(
        response
            .extensions()
            .get::<Classification>()
            .unwrap()
            .class(),
        Class::Success
    );
}

#[tokio::test(start_paused = true)]
async fn towers_own_retry_works_with_the_gemini_policy() {
    let (mock, pool) = a_bad_b_daily_c_fine().await;
    let before = mock.stats().total_requests();
    let gemini = tower::retry::RetryLayer::new(GeminiPolicy::new(&RetryLayer::for_pool(&pool)))
        .layer(KeyRotationLayer::new(&pool).layer(client()));
    let response = gemini.oneshot(generate(&mock, FLASH, "hi")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(served_by(&response), "…000c");
    assert_eq!(mock.stats().total_requests() - before, 3);
}

#[tokio::test]
async fn the_default_layer_reads_error_bodies_like_new() {
    // Used alone over a plain client, the layer classifies an error body itself: an invalid
    // key (400 with API_KEY_INVALID) is worth another attempt, a plain 400 is not. With no
    // bytes read (the derived Default of old), both looked like a caller error.
    const INVALID: &str = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let upstream = tower::service_fn(move |_: http::Request<String>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async {
            let mut response = http::Response::new(String::from(INVALID));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let retry = RetryLayer::default().without_budget().layer(upstream);
    let response = retry
        .oneshot(http::Request::new(String::new()))
        .await
        .unwrap();
    let class = response
        .extensions()
        .get::<Classification>()
        .unwrap()
        .class();
    assert_eq!(class, Class::KeyInvalid);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "retried with the default attempts"
    );
}
