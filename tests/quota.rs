//! QuotaLayer and quota-aware selection against the mock, over real HTTP.

mod common;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use bytes::Bytes;
use common::{client, generate, served_by, stream, text, with_key};
use http::{HeaderName, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_gemini::classify::{Class, Classification};
use tower_gemini::clock::ManualClock;
use tower_gemini::mock::{MockGemini, MockServer};
use tower_gemini::pool::{ModelLimits, MostHeadroom};
use tower_gemini::quota::{
    ClientKey, Demand, Dimension, InboundQuotaLayer, Pacing, QuotaLayer, Tier, TokenEstimator,
};
use tower_gemini::retry::RetryLayer;
use tower_gemini::{ErrorKind, KeyPool, KeyRotationLayer, KeySpec};

const FLASH: &str = "gemini-2.0-flash";

fn rpm(n: u32) -> ModelLimits {
    ModelLimits {
        rpm: Some(n),
        ..Default::default()
    }
}

async fn one_project_mock(limits: ModelLimits) -> MockServer {
    MockGemini::builder()
        .project("proj-a", |p| p.key("test-key-0001").limits(FLASH, limits))
        .start()
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn eleventh_request_in_a_minute_is_refused_locally_and_never_sent() {
    let mock = one_project_mock(rpm(10)).await;
    let pool = KeyPool::builder()
        .key_with(KeySpec::new("test-key-0001").project("proj-a"))
        .model_limits(FLASH, rpm(10))
        .build()
        .unwrap();
    let gemini = ServiceBuilder::new()
        .layer(KeyRotationLayer::new(&pool))
        .layer(QuotaLayer::new(&pool))
        .service(client());
    for _ in 0..10 {
        let response = gemini
            .clone()
            .oneshot(generate(&mock, FLASH, "x"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    // t = 15 s: the first of the ten leaves the window at t = 60 s.
    let error = gemini
        .clone()
        .oneshot(generate(&mock, FLASH, "x"))
        .await
        .unwrap_err();
    assert_eq!(
        error.kind(),
        ErrorKind::QuotaExhausted,
        "the pool's selection consults the ledger, and says so"
    );
    assert_eq!(error.dimension(), Some(Dimension::RequestsPerMinute));
    // The first request's slot frees a minute and the 0.5 s skew margin after it was taken.
    assert_eq!(error.retry_after(), Some(Duration::from_millis(45_500)));
    assert!(error.to_string().contains("rpm limit"), "{error}");
    assert!(!error.to_string().contains("cooling"), "{error}");
    assert_eq!(mock.stats().total_requests(), 10);
    assert_eq!(mock.stats().responses_with_status(429), 0);
    let quota = &pool.quota_snapshot()[0];
    assert_eq!(
        (
            quota.usage.rpm.unwrap().used,
            quota.usage.rpm.unwrap().limit
        ),
        (10, 10)
    );
    // And the QuotaLayer itself refuses a key the pool handed out anyway (a race): a request
    // carrying a selection of proj-a's key, as if chosen just before the window filled.
    let selected = {
        let twin = KeyPool::builder()
            .key_with(KeySpec::new("test-key-0001").project("proj-a"))
            .build()
            .unwrap();
        twin.select(Some(FLASH)).unwrap().selected()
    };
    let mut request = generate(&mock, FLASH, "x");
    request.extensions_mut().insert(selected);
    let error = QuotaLayer::new(&pool)
        .layer(client())
        .oneshot(request)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::QuotaExhausted);
    assert_eq!(error.dimension(), Some(Dimension::RequestsPerMinute));
    assert_eq!(error.retry_after(), Some(Duration::from_millis(45_500)));
    assert_eq!(error.key().unwrap().to_string(), "…0001");
    assert!(error.to_string().contains("rpm limit of 10"), "{error}");
    assert_eq!(mock.stats().total_requests(), 10);
}

/// Estimates every request at 60 tokens (the mock will count far fewer).
#[derive(Debug)]
struct Sixty;

impl TokenEstimator for Sixty {
    fn estimate(&self, _: &[u8]) -> Demand {
        Demand {
            tokens: 60,
            images: 0,
        }
    }
}

async fn tokens_freed_by_the_real_count(streaming: bool) {
    let mock = one_project_mock(ModelLimits::default()).await;
    let pool = KeyPool::builder()
        .key_with(KeySpec::new("test-key-0001").project("proj-a"))
        .model_limits(
            FLASH,
            ModelLimits {
                tpm: Some(100),
                ..Default::default()
            },
        )
        .token_estimator(Sixty)
        .build()
        .unwrap();
    let gemini = ServiceBuilder::new()
        .layer(KeyRotationLayer::new(&pool))
        .layer(QuotaLayer::new(&pool))
        .service(client());
    let request = if streaming {
        stream(&mock, FLASH, "hello")
    } else {
        generate(&mock, FLASH, "hello")
    };
    let response = gemini.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // 60 of 100 tokens are reserved until the answer says otherwise: another 60 do not fit.
    let error = gemini
        .clone()
        .oneshot(generate(&mock, FLASH, "x"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::QuotaExhausted);
    assert_eq!(error.dimension(), Some(Dimension::TokensPerMinute));
    let body = text(response).await;
    assert!(body.contains("promptTokenCount"), "{body}");
    // The mock counted 2 tokens ("hello"): the ledger now holds 2, and 60 more fit at once.
    assert_eq!(pool.quota_snapshot()[0].usage.tpm.unwrap().used, 2);
    let response = gemini
        .clone()
        .oneshot(generate(&mock, FLASH, "x"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn tpm_refuses_then_frees_tokens_from_a_json_answer() {
    tokens_freed_by_the_real_count(false).await;
}

#[tokio::test(start_paused = true)]
async fn tpm_refuses_then_frees_tokens_from_an_sse_answer() {
    tokens_freed_by_the_real_count(true).await;
}

async fn rpd_resets_at_pacific_midnight(now: &str, midnight: &str) {
    let clock = ManualClock::at(now.parse().unwrap());
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key("test-key-0001"))
        .clock(clock.clone())
        .start()
        .await
        .unwrap();
    let pool = KeyPool::builder()
        .key_with(KeySpec::new("test-key-0001").project("proj-a"))
        .model_limits(
            FLASH,
            ModelLimits {
                rpd: Some(2),
                ..Default::default()
            },
        )
        .clock(clock.clone())
        .build()
        .unwrap();
    let gemini = ServiceBuilder::new()
        .layer(KeyRotationLayer::new(&pool))
        .layer(QuotaLayer::new(&pool))
        .service(client());
    for _ in 0..2 {
        assert_eq!(
            gemini
                .clone()
                .oneshot(generate(&mock, FLASH, "x"))
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
    }
    let midnight: jiff::Timestamp = midnight.parse().unwrap();
    let error = gemini
        .clone()
        .oneshot(generate(&mock, FLASH, "x"))
        .await
        .unwrap_err();
    let now: jiff::Timestamp = now.parse().unwrap();
    let expected = (midnight.as_millisecond() - now.as_millisecond()) as u64;
    assert_eq!(error.retry_after(), Some(Duration::from_millis(expected)));
    clock.set(midnight - Duration::from_millis(1));
    assert!(
        gemini
            .clone()
            .oneshot(generate(&mock, FLASH, "x"))
            .await
            .is_err()
    );
    clock.set(midnight);
    assert_eq!(
        gemini
            .clone()
            .oneshot(generate(&mock, FLASH, "x"))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(mock.stats().total_requests(), 3);
}

#[tokio::test]
async fn rpd_resets_at_pacific_midnight_on_an_ordinary_day() {
    rpd_resets_at_pacific_midnight("2026-06-10T20:00:00Z", "2026-06-11T07:00:00Z").await;
}

#[tokio::test]
async fn rpd_resets_at_pacific_midnight_on_spring_forward_day() {
    rpd_resets_at_pacific_midnight("2026-03-08T12:00:00Z", "2026-03-09T07:00:00Z").await;
}

#[tokio::test]
async fn rpd_resets_at_pacific_midnight_on_fall_back_day() {
    rpd_resets_at_pacific_midnight("2026-11-01T20:00:00Z", "2026-11-02T08:00:00Z").await;
}

#[tokio::test(start_paused = true)]
async fn a_429_with_quota_value_lowers_the_local_limit() {
    let mock = one_project_mock(rpm(5)).await;
    let pool = KeyPool::builder()
        .key_with(KeySpec::new("test-key-0001").project("proj-a"))
        .model_limits(FLASH, rpm(10))
        .build()
        .unwrap();
    let gemini = ServiceBuilder::new()
        .layer(KeyRotationLayer::new(&pool))
        .layer(QuotaLayer::new(&pool))
        .service(client());
    let mut classes = Vec::new();
    for _ in 0..6 {
        let response = gemini
            .clone()
            .oneshot(generate(&mock, FLASH, "x"))
            .await
            .unwrap();
        classes.push(
            response
                .extensions()
                .get::<Classification>()
                .unwrap()
                .class(),
        );
    }
    assert_eq!(classes.last(), Some(&Class::QuotaMinute));
    let quota = &pool.quota_snapshot()[0];
    assert_eq!(
        quota.usage.rpm.unwrap().limit,
        5,
        "learned from quotaValue 5"
    );
    // The refused request was refunded: the ledger holds the 5 that Google counted.
    assert_eq!(quota.usage.rpm.unwrap().used, 5);
    // A minute later, 5 pass locally and the 6th is refused here, not by Google.
    tokio::time::advance(Duration::from_secs(61)).await;
    for _ in 0..5 {
        let response = gemini
            .clone()
            .oneshot(generate(&mock, FLASH, "x"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let error = gemini
        .clone()
        .oneshot(generate(&mock, FLASH, "x"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::QuotaExhausted);
    assert_eq!(mock.stats().responses_with_status(429), 1);
}

async fn two_projects_twenty_requests(pool: KeyPool) {
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key("test-key-0001").limits(FLASH, rpm(10)))
        .project("proj-b", |p| p.key("test-key-0002").limits(FLASH, rpm(10)))
        .start()
        .await
        .unwrap();
    let gemini = ServiceBuilder::new()
        .layer(RetryLayer::for_pool(&pool))
        .layer(KeyRotationLayer::new(&pool))
        .layer(QuotaLayer::new(&pool))
        .service(client());
    let mut served = Vec::new();
    for _ in 0..20 {
        let response = gemini
            .clone()
            .oneshot(generate(&mock, FLASH, "x"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        served.push(served_by(&response));
        tokio::time::advance(Duration::from_secs(2)).await;
    }
    assert_eq!(served.iter().filter(|s| *s == "…0001").count(), 10);
    assert_eq!(served.iter().filter(|s| *s == "…0002").count(), 10);
    assert_eq!(mock.stats().responses_with_status(429), 0);
}

fn pool_ab() -> tower_gemini::pool::KeyPoolBuilder {
    KeyPool::builder()
        .key_with(KeySpec::new("test-key-0001").project("proj-a"))
        .key_with(KeySpec::new("test-key-0002").project("proj-b"))
        .model_limits(FLASH, rpm(10))
}

#[tokio::test(start_paused = true)]
async fn two_projects_share_twenty_requests_without_a_429() {
    two_projects_twenty_requests(pool_ab().build().unwrap()).await;
}

#[tokio::test(start_paused = true)]
async fn most_headroom_spreads_the_same_load() {
    two_projects_twenty_requests(pool_ab().strategy(MostHeadroom::new()).build().unwrap()).await;
}

#[tokio::test(start_paused = true)]
async fn most_headroom_prefers_the_emptier_project() {
    let pool = KeyPool::builder()
        .key_with(KeySpec::new("test-key-0001").project("proj-a"))
        .key_with(KeySpec::new("test-key-0002").project("proj-b"))
        .model_limits(FLASH, rpm(10))
        .strategy(MostHeadroom::new())
        .build()
        .unwrap();
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key("test-key-0001"))
        .project("proj-b", |p| p.key("test-key-0002"))
        .start()
        .await
        .unwrap();
    let quota = ServiceBuilder::new()
        .layer(QuotaLayer::new(&pool))
        .service(client());
    // Spend 6 of proj-a's 10 directly through the quota layer.
    for _ in 0..6 {
        let mut request = generate(&mock, FLASH, "x");
        let lease = pool.select(Some(FLASH)).unwrap();
        let selected = lease.selected();
        drop(lease);
        if selected.project() != "proj-a" {
            continue;
        }
        request.extensions_mut().insert(selected);
        quota
            .clone()
            .oneshot(with_key(request, "test-key-0001"))
            .await
            .unwrap();
    }
    let used_a = pool
        .quota_snapshot()
        .iter()
        .find(|q| q.project == "proj-a")
        .unwrap()
        .usage
        .rpm
        .unwrap()
        .used;
    assert!(used_a > 0);
    let gemini = KeyRotationLayer::new(&pool).layer(QuotaLayer::new(&pool).layer(client()));
    let response = gemini.oneshot(generate(&mock, FLASH, "x")).await.unwrap();
    assert_eq!(served_by(&response), "…0002");
}

#[tokio::test(start_paused = true)]
async fn wait_mode_waits_for_the_slot_then_sends() {
    let mock = one_project_mock(rpm(2)).await;
    // The minute's window alone (paced admission is the next test).
    let pool = KeyPool::builder()
        .key_with(KeySpec::new("test-key-0001").project("proj-a"))
        .model_limits(FLASH, rpm(2))
        .pacing(Pacing::Off)
        .build()
        .unwrap();
    let gemini = KeyRotationLayer::new(&pool)
        .wait_up_to(Duration::from_secs(90))
        .layer(QuotaLayer::new(&pool).layer(client()));
    let start = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|_| tokio::spawn(gemini.clone().oneshot(generate(&mock, FLASH, "x"))))
        .collect();
    let mut finished = Vec::new();
    for task in tasks {
        let response = task.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        finished.push(start.elapsed().as_secs());
    }
    // Two at once, two a minute later, none refused by the mock.
    assert_eq!(finished, [0, 0, 60, 60]);
    assert_eq!(mock.stats().responses_with_status(429), 0);
    // Full again: a bound shorter than the wait refuses at once, naming the dimension.
    let impatient = KeyRotationLayer::new(&pool)
        .wait_up_to(Duration::from_secs(5))
        .layer(QuotaLayer::new(&pool).layer(client()));
    let error = impatient
        .oneshot(generate(&mock, FLASH, "x"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::QuotaExhausted);
    assert_eq!(error.dimension(), Some(Dimension::RequestsPerMinute));
    assert_eq!(start.elapsed().as_secs(), 60, "refused without waiting");
}

/// Paced (the default), waiting requests take turns spread over the minute instead of the
/// whole minute's quota going at once and the rest waiting for the window: at 2 RPM, one
/// every 30.25 s (a held minute over the limit), each allowed the burst early (5 % of the
/// minute, 3.025 s), none refused upstream.
#[tokio::test(start_paused = true)]
async fn paced_waits_are_spread_over_the_minute() {
    let mock = one_project_mock(rpm(2)).await;
    let pool = KeyPool::builder()
        .key_with(KeySpec::new("test-key-0001").project("proj-a"))
        .model_limits(FLASH, rpm(2))
        .build()
        .unwrap();
    let gemini = KeyRotationLayer::new(&pool)
        .wait_up_to(Duration::from_secs(120))
        .layer(QuotaLayer::new(&pool).layer(client()));
    let start = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|_| tokio::spawn(gemini.clone().oneshot(generate(&mock, FLASH, "x"))))
        .collect();
    let mut finished = Vec::new();
    for task in tasks {
        let response = task.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        finished.push(start.elapsed().as_millis());
    }
    // 0; 30.25 − 3.025; the window's first slot frees at 60.5; 60.5 + 30.25 − 3.025.
    assert_eq!(finished, [0, 27_225, 60_500, 87_725]);
    assert_eq!(mock.stats().responses_with_status(429), 0);
}

/// Pacing only delays a request that waits: one that may wait less than its paced turn is
/// admitted by the minute's window, as without pacing — never failed while the quota has room.
#[tokio::test(start_paused = true)]
async fn pacing_never_fails_a_request_the_window_has_room_for() {
    let mock = one_project_mock(rpm(10)).await;
    let pool = KeyPool::builder()
        .key_with(KeySpec::new("test-key-0001").project("proj-a"))
        .model_limits(FLASH, rpm(10))
        .pacing(Pacing::Spread { burst: 0.0 })
        .build()
        .unwrap();
    let gemini = KeyRotationLayer::new(&pool)
        .wait_up_to(Duration::from_secs(1))
        .layer(QuotaLayer::new(&pool).layer(client()));
    let start = Instant::now();
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(gemini.clone().oneshot(generate(&mock, FLASH, "x"))))
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "nothing waited past its bound"
    );
    // The window is full: the eleventh is refused at once, as without pacing.
    let error = gemini
        .oneshot(generate(&mock, FLASH, "x"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::QuotaExhausted);
    assert_eq!(mock.stats().responses_with_status(429), 0);
}

/// A request that may wait less than the earliest paced turn does not queue behind requests
/// waiting for theirs (it would wait its whole bound for nothing): the window serves it now.
#[tokio::test(start_paused = true)]
async fn a_short_bound_is_not_held_in_line_behind_paced_turns() {
    let mock = one_project_mock(rpm(2)).await;
    let pool = KeyPool::builder()
        .key_with(KeySpec::new("test-key-0001").project("proj-a"))
        .model_limits(FLASH, rpm(2))
        .build()
        .unwrap();
    let patient = KeyRotationLayer::new(&pool)
        .wait_up_to(Duration::from_secs(120))
        .layer(QuotaLayer::new(&pool).layer(client()));
    let hurried = KeyRotationLayer::new(&pool)
        .wait_up_to(Duration::from_secs(1))
        .layer(QuotaLayer::new(&pool).layer(client()));
    let start = Instant::now();
    let first = patient.clone().oneshot(generate(&mock, FLASH, "x")).await;
    assert_eq!(first.unwrap().status(), StatusCode::OK);
    // The second waits in line for its paced turn (27.2 s away).
    let waiting = tokio::spawn(patient.clone().oneshot(generate(&mock, FLASH, "x")));
    // (Its first polls, in which it joins the line: the runtime is this thread's.)
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    // The third may wait 1 s: the window has room, so it goes at once.
    let hurried = hurried.oneshot(generate(&mock, FLASH, "x")).await;
    assert_eq!(hurried.unwrap().status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::ZERO);
    // The one in line still gets its answer, when the window frees a slot.
    assert_eq!(waiting.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_millis(60_500));
    assert_eq!(mock.stats().responses_with_status(429), 0);
}

#[test]
fn tier_presets_fill_in_and_configuration_wins() {
    let pool = KeyPool::builder()
        .key_with(KeySpec::new("test-key-0001").project("proj-a"))
        .key_with(KeySpec::new("test-key-0002").project("proj-b"))
        .tier(Tier::Free)
        .project_tier("proj-b", Tier::Tier1)
        .project_model_limits("proj-a", FLASH, rpm(3))
        .build()
        .unwrap();
    let a = pool.limits_for("proj-a", FLASH).unwrap();
    assert_eq!((a.rpm, a.tpm, a.rpd), (Some(3), Some(1_000_000), Some(200)));
    let b = pool.limits_for("proj-b", FLASH).unwrap();
    assert_eq!(b.rpm, Some(2_000));
    assert!(pool.limits_for("proj-a", "my-own-model").is_none());
    assert!(pool.has_limits());
    assert!(!KeyPool::from_keys(["test-key-0001"]).unwrap().has_limits());
}

#[tokio::test]
async fn snapshot_reports_used_and_limit() {
    let mock = one_project_mock(ModelLimits::default()).await;
    let pool = KeyPool::builder()
        .key_with(KeySpec::new("test-key-0001").project("proj-a"))
        .model_limits(
            FLASH,
            ModelLimits {
                rpm: Some(10),
                tpm: Some(1000),
                rpd: Some(100),
                ipm: None,
            },
        )
        .build()
        .unwrap();
    let gemini = KeyRotationLayer::new(&pool).layer(QuotaLayer::new(&pool).layer(client()));
    let response = gemini
        .oneshot(generate(&mock, FLASH, "twelve chars"))
        .await
        .unwrap();
    let _ = response.into_body().collect().await.unwrap();
    let json = serde_json::to_value(pool.snapshot()).unwrap();
    let quota = &json["quota"][0];
    assert_eq!(quota["project"], "proj-a");
    assert_eq!(quota["model"], FLASH);
    assert_eq!(quota["rpm"], serde_json::json!({"used": 1, "limit": 10}));
    assert_eq!(quota["tpm"], serde_json::json!({"used": 3, "limit": 1000}));
    assert_eq!(quota["rpd"], serde_json::json!({"used": 1, "limit": 100}));
    assert!(quota["ipm"].is_null());
}

#[tokio::test(start_paused = true)]
async fn inbound_mode_answers_429_per_client_in_an_axum_router() {
    let app = Router::new()
        .route("/v1/chat", post(|| async { "ok" }))
        .layer(
            InboundQuotaLayer::new(rpm(10))
                .client_key(ClientKey::header(HeaderName::from_static("x-client-token"))),
        );
    let call = |token: &str| {
        Request::post("/v1/chat")
            .header("x-client-token", token)
            .body(Body::empty())
            .unwrap()
    };
    for _ in 0..10 {
        let response = app
            .clone()
            .oneshot(call("client-token-aaaa"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    tokio::time::advance(Duration::from_millis(12_300)).await;
    let response = app
        .clone()
        .oneshot(call("client-token-aaaa"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "48");
    let body: Bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"]["status"], "RESOURCE_EXHAUSTED");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("rpm limit of 10"), "{message}");
    assert!(
        !message.contains("client-token-aaaa"),
        "the token is shown by its tail only: {message}"
    );
    // Another client is unaffected.
    let response = app
        .clone()
        .oneshot(call("client-token-bbbb"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[test]
fn refusal_error_names_the_dimension() {
    assert_eq!(Dimension::TokensPerMinute.to_string(), "tpm");
}

#[tokio::test]
async fn quota_layer_without_a_selected_key_passes_through() {
    let mock = one_project_mock(ModelLimits::default()).await;
    let pool = KeyPool::builder()
        .key("test-key-0001")
        .model_limits(FLASH, rpm(1))
        .build()
        .unwrap();
    let mut svc = QuotaLayer::new(&pool).layer(client());
    for _ in 0..3 {
        let request = with_key(generate(&mock, FLASH, "x"), "test-key-0001");
        let response = svc.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

#[tokio::test(start_paused = true)]
async fn a_quota_alert_fires_once_per_crossing_of_ninety_percent() {
    use std::sync::{Arc, Mutex};
    use tower_gemini::quota::QuotaAlert;

    let mock = one_project_mock(rpm(100)).await;
    let pool = KeyPool::builder()
        .key_with(KeySpec::new("test-key-0001").project("proj-a"))
        .model_limits(FLASH, rpm(10))
        .build()
        .unwrap();
    let seen: Arc<Mutex<Vec<QuotaAlert>>> = Arc::default();
    let sink = seen.clone();
    let quota =
        QuotaLayer::new(&pool).on_alert(move |alert| sink.lock().unwrap().push(alert.clone()));
    let gemini = tower_gemini::stack(&pool).quota(quota).layer(client());
    let send = |n: usize| {
        let gemini = gemini.clone();
        let request = generate(&mock, FLASH, "x");
        async move {
            for _ in 0..n {
                let response = gemini.clone().oneshot(request.clone()).await.unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                let _ = text(response).await;
            }
        }
    };
    send(8).await;
    assert!(seen.lock().unwrap().is_empty(), "80 % is below the alert");
    send(1).await;
    {
        let alerts = seen.lock().unwrap();
        assert_eq!(alerts.len(), 1);
        let alert = &alerts[0];
        assert_eq!(
            (
                alert.project.as_str(),
                alert.model.as_str(),
                alert.dimension
            ),
            ("proj-a", FLASH, Dimension::RequestsPerMinute)
        );
        assert_eq!((alert.used, alert.limit, alert.threshold), (9, 10, 0.9));
    }
    send(1).await;
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "still above: no second alert"
    );
    // The minute moves on: use falls below, and rising through 90 % again alerts again.
    tokio::time::sleep(Duration::from_secs(61)).await;
    send(8).await;
    assert_eq!(seen.lock().unwrap().len(), 1);
    send(1).await;
    assert_eq!(seen.lock().unwrap().len(), 2);

    assert!(QuotaLayer::new(&pool).alert_at(1.5).is_err());
}
