//! KeyRotationLayer against the mock Gemini upstream, over real HTTP.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{chat, client, drain, generate, one_key_mock, served_by, stream, text};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_gemini::classify::{Class, Classification};
use tower_gemini::clock::ManualClock;
use tower_gemini::mock::{Fault, MockGemini, MockServer};
use tower_gemini::pool::{KeyState, ModelLimits};
use tower_gemini::{ErrorKind, KeyPlacement, KeyPool, KeyRotationLayer, KeySpec, SelectedKey};

const FLASH: &str = "gemini-2.0-flash";

async fn two_projects(limits: ModelLimits) -> MockServer {
    MockGemini::builder()
        .project("proj-a", |p| p.key("test-key-0001").limits(FLASH, limits))
        .project("proj-b", |p| p.key("test-key-0002"))
        .start()
        .await
        .unwrap()
}

fn pool_ab() -> KeyPool {
    KeyPool::builder()
        .key_with(KeySpec::new("test-key-0001").project("proj-a"))
        .key_with(KeySpec::new("test-key-0002").project("proj-b"))
        .build()
        .unwrap()
}

#[tokio::test]
async fn success_classified_and_body_untouched() {
    let mock = two_projects(ModelLimits::default()).await;
    let mut svc = ServiceBuilder::new()
        .layer(KeyRotationLayer::new(&pool_ab()))
        .service(client());
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(generate(&mock, FLASH, "hello"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(served_by(&response), "…0001");
    let verdict = response.extensions().get::<Classification>().unwrap();
    assert_eq!(verdict.class(), Class::Success);
    let body: serde_json::Value = serde_json::from_str(&text(response).await).unwrap();
    assert_eq!(body["usageMetadata"]["promptTokenCount"], 2);
    // Round robin: the next request uses the other key.
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(generate(&mock, FLASH, "hello"))
        .await
        .unwrap();
    assert_eq!(served_by(&response), "…0002");
}

#[tokio::test]
async fn invalid_key_disabled_after_one_400_and_never_selected_again() {
    let mock = two_projects(ModelLimits::default()).await;
    let pool = KeyPool::from_keys(["test-key-9999", "test-key-0001"]).unwrap();
    let mut svc = KeyRotationLayer::new(&pool).layer_into(client());
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(generate(&mock, FLASH, "hi"))
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        let class = response
            .extensions()
            .get::<Classification>()
            .unwrap()
            .class();
        if response.status() == StatusCode::BAD_REQUEST {
            assert_eq!(class, Class::KeyInvalid);
            let body = text(response).await;
            assert!(
                body.contains("API_KEY_INVALID"),
                "body handed on unchanged: {body}"
            );
        }
    }
    assert_eq!(statuses, [400, 200, 200, 200, 200, 200, 200, 200, 200, 200]);
    assert_eq!(mock.stats().requests_for("test-key-9999"), 1);
    assert_eq!(pool.snapshot().keys[0].state, KeyState::Disabled);
}

#[tokio::test(start_paused = true)]
async fn per_minute_429_cools_only_that_project_and_model_for_the_given_delay() {
    let mock = two_projects(ModelLimits {
        rpm: Some(1),
        ..Default::default()
    })
    .await;
    let pool = pool_ab();
    let mut svc = KeyRotationLayer::new(&pool).layer_into(client());
    let mut call = async |model: &str| {
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(generate(&mock, model, "x"))
            .await
            .unwrap();
        let verdict = response
            .extensions()
            .get::<Classification>()
            .unwrap()
            .clone();
        (served_by(&response), verdict)
    };
    assert_eq!(call(FLASH).await.0, "…0001");
    assert_eq!(call(FLASH).await.0, "…0002");
    tokio::time::advance(Duration::from_secs(10)).await;
    // proj-a's one request per minute is spent: 429 with retryDelay 50 s.
    let (by, verdict) = call(FLASH).await;
    assert_eq!(by, "…0001");
    assert_eq!(verdict.class(), Class::QuotaMinute);
    assert_eq!(verdict.retry_after(), Some(Duration::from_secs(50)));
    assert_eq!(verdict.quota_value(), Some(1));
    // Only proj-b serves this model now…
    for _ in 0..4 {
        assert_eq!(call(FLASH).await.0, "…0002");
    }
    // …while proj-a still serves another model.
    let other: Vec<String> = [
        call("gemini-2.5-flash").await.0,
        call("gemini-2.5-flash").await.0,
    ]
    .into();
    assert!(other.contains(&"…0001".to_owned()), "{other:?}");
    tokio::time::advance(Duration::from_secs(49)).await;
    assert_eq!(call(FLASH).await.0, "…0002");
    // 50 s, and the half-second skew margin the ledger adds to every per-minute slot.
    tokio::time::advance(Duration::from_millis(1_500)).await;
    let served: Vec<String> = [call(FLASH).await.0, call(FLASH).await.0].into();
    assert!(served.contains(&"…0001".to_owned()), "{served:?}");
    assert_eq!(mock.stats().rate_limited_for("test-key-0001"), 1);
}

async fn daily_quota_on(now_utc: &str, next_midnight_utc: &str) {
    let clock = ManualClock::at(now_utc.parse().unwrap());
    let mock = MockGemini::builder()
        .project("proj-a", |p| {
            p.key("test-key-0001").limits(
                FLASH,
                ModelLimits {
                    rpd: Some(1),
                    ..Default::default()
                },
            )
        })
        .project("proj-b", |p| p.key("test-key-0002"))
        .clock(clock.clone())
        .start()
        .await
        .unwrap();
    let pool = KeyPool::builder()
        .key_with(KeySpec::new("test-key-0001").project("proj-a"))
        .key_with(KeySpec::new("test-key-0002").project("proj-b"))
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut svc = KeyRotationLayer::new(&pool).layer_into(client());
    let mut call = async || {
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(generate(&mock, FLASH, "x"))
            .await
            .unwrap();
        let class = response
            .extensions()
            .get::<Classification>()
            .unwrap()
            .class();
        (served_by(&response), class)
    };
    assert_eq!(call().await, ("…0001".to_owned(), Class::Success));
    assert_eq!(call().await, ("…0002".to_owned(), Class::Success));
    assert_eq!(call().await, ("…0001".to_owned(), Class::QuotaDaily));
    let next: jiff::Timestamp = next_midnight_utc.parse().unwrap();
    let cooling = &pool.snapshot().keys[0].models[0];
    assert_eq!(cooling.cooling_until, Some(next));
    clock.set(next - Duration::from_millis(1));
    for _ in 0..3 {
        assert_eq!(call().await.0, "…0002");
    }
    clock.set(next);
    let served: Vec<_> = [call().await, call().await].into();
    assert!(
        served.contains(&("…0001".to_owned(), Class::Success)),
        "{served:?}"
    );
}

#[tokio::test]
async fn per_day_429_cools_to_next_pacific_midnight() {
    daily_quota_on("2026-06-10T18:00:00Z", "2026-06-11T07:00:00Z").await;
}

#[tokio::test]
async fn per_day_429_on_spring_forward_day() {
    daily_quota_on("2026-03-08T12:00:00Z", "2026-03-09T07:00:00Z").await;
}

#[tokio::test]
async fn per_day_429_on_fall_back_day() {
    daily_quota_on("2026-11-01T20:00:00Z", "2026-11-02T08:00:00Z").await;
}

#[tokio::test]
async fn overloaded_503_leaves_every_key_healthy() {
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key("test-key-0001"))
        .project("proj-b", |p| p.key("test-key-0002"))
        .fault(Fault::overloaded(1.0))
        .start()
        .await
        .unwrap();
    let pool = pool_ab();
    let mut svc = KeyRotationLayer::new(&pool).layer_into(client());
    for _ in 0..6 {
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(generate(&mock, FLASH, "x"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response
                .extensions()
                .get::<Classification>()
                .unwrap()
                .class(),
            Class::Upstream
        );
        assert!(text(response).await.contains("The model is overloaded"));
    }
    let snap = pool.snapshot();
    assert!(
        snap.keys
            .iter()
            .all(|k| k.state == KeyState::Active && k.models.is_empty())
    );
    assert!(
        snap.keys
            .iter()
            .all(|k| k.counters.failures.get("upstream") == Some(&3))
    );
    mock.set_faults([]);
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(generate(&mock, FLASH, "x"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// Wraps the client to record what reaches it.
fn recording(
    seen: Arc<Mutex<Vec<Request<Full<Bytes>>>>>,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<hyper::body::Incoming>,
    Error = hyper_util::client::legacy::Error,
    Future = hyper_util::client::legacy::ResponseFuture,
> + Clone {
    let client = client();
    service_fn(move |request: Request<Full<Bytes>>| {
        let mut copy = Request::new(request.body().clone());
        *copy.uri_mut() = request.uri().clone();
        *copy.headers_mut() = request.headers().clone();
        if let Some(selected) = request.extensions().get::<SelectedKey>() {
            copy.extensions_mut().insert(selected.clone());
        }
        seen.lock().unwrap().push(copy);
        client.request(request)
    })
}

fn with_caller_keys(mut request: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let uri = format!("{}?key=caller-key-cccc", request.uri());
    *request.uri_mut() = uri.parse().unwrap();
    request
        .headers_mut()
        .insert("x-goog-api-key", "caller-key-aaaa".parse().unwrap());
    request
        .headers_mut()
        .insert("authorization", "Bearer caller-key-bbbb".parse().unwrap());
    request
}

#[tokio::test]
async fn header_placement_strips_caller_keys_and_is_sensitive() {
    let mock = two_projects(ModelLimits::default()).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let svc = KeyRotationLayer::new(&KeyPool::from_keys(["test-key-0001"]).unwrap())
        .layer_into(recording(seen.clone()));
    let response = svc
        .oneshot(with_caller_keys(generate(&mock, FLASH, "x")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let sent = seen.lock().unwrap().pop().unwrap();
    assert_eq!(sent.headers()["x-goog-api-key"], "test-key-0001");
    assert!(sent.headers()["x-goog-api-key"].is_sensitive());
    assert!(sent.headers().get("authorization").is_none());
    assert_eq!(sent.uri().query(), None);
    let selected = sent.extensions().get::<SelectedKey>().unwrap();
    assert_eq!(selected.fingerprint().to_string(), "…0001");
    assert_eq!(selected.model(), Some(FLASH));
    for caller in ["caller-key-aaaa", "caller-key-bbbb", "caller-key-cccc"] {
        assert_eq!(mock.stats().requests_for(caller), 0);
    }
}

#[tokio::test]
async fn query_placement_strips_caller_keys() {
    let mock = two_projects(ModelLimits::default()).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let svc = KeyRotationLayer::new(&KeyPool::from_keys(["test-key-0001"]).unwrap())
        .placement(KeyPlacement::Query)
        .layer_into(recording(seen.clone()));
    let response = svc
        .oneshot(with_caller_keys(generate(&mock, FLASH, "x")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let sent = seen.lock().unwrap().pop().unwrap();
    assert_eq!(sent.uri().query(), Some("key=test-key-0001"));
    assert!(sent.headers().get("x-goog-api-key").is_none());
    assert!(sent.headers().get("authorization").is_none());
    assert_eq!(mock.stats().requests_for("test-key-0001"), 1);
}

#[tokio::test]
async fn bearer_on_openai_path_with_model_from_body() {
    let mock = two_projects(ModelLimits::default()).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let pool = KeyPool::from_keys(["test-key-9999", "test-key-0001"]).unwrap();
    let mut svc = KeyRotationLayer::new(&pool).layer_into(recording(seen.clone()));
    // The first key is invalid: Google's error arrives wrapped in an array.
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(with_caller_keys(chat(&mock, FLASH, "x")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        response
            .extensions()
            .get::<Classification>()
            .unwrap()
            .class(),
        Class::KeyInvalid
    );
    assert!(text(response).await.trim_start().starts_with('['));
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(chat(&mock, FLASH, "x"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = serde_json::from_str(&text(response).await).unwrap();
    assert_eq!(body["object"], "chat.completion");
    let sent = seen.lock().unwrap().pop().unwrap();
    assert_eq!(sent.headers()["authorization"], "Bearer test-key-0001");
    assert!(sent.headers()["authorization"].is_sensitive());
    assert!(sent.headers().get("x-goog-api-key").is_none());
    assert_eq!(
        sent.extensions().get::<SelectedKey>().unwrap().model(),
        Some(FLASH)
    );
}

#[tokio::test]
async fn streams_pass_through_and_mid_stream_errors_reach_the_caller() {
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key("test-key-0001"))
        .stream_chunks(3)
        .start()
        .await
        .unwrap();
    let pool = KeyPool::from_keys(["test-key-0001"]).unwrap();
    let svc = KeyRotationLayer::new(&pool).layer_into(client());
    let response = svc
        .clone()
        .oneshot(stream(&mock, FLASH, "hello there"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = text(response).await;
    assert_eq!(body.matches("data: ").count(), 3, "{body}");
    assert!(body.contains("\"finishReason\":\"STOP\""));

    mock.set_faults([Fault::mid_stream_error(1.0)]);
    let response = svc
        .oneshot(stream(&mock, FLASH, "hello there"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (received, error) = drain(response.into_body()).await;
    assert!(received.starts_with("data: "), "{received}");
    assert!(
        error.is_some(),
        "the broken stream must end in an error; got {received}"
    );
    assert_eq!(mock.stats().total_requests(), 2);
}

#[tokio::test]
async fn connection_reset_is_a_transport_error_and_keeps_the_key() {
    let mock = one_key_mock(Fault::connection_reset(1.0)).await;
    let pool = KeyPool::from_keys(["test-key-0001"]).unwrap();
    let svc = KeyRotationLayer::new(&pool).layer_into(client());
    let error = svc.oneshot(generate(&mock, FLASH, "x")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Transport);
    assert_eq!(error.key().unwrap().to_string(), "…0001");
    assert_eq!(error.classification().unwrap().class(), Class::Transport);
    let snap = pool.snapshot();
    assert_eq!(snap.keys[0].state, KeyState::Active);
    assert_eq!(snap.keys[0].counters.failures.get("transport"), Some(&1));
}

#[tokio::test]
async fn no_key_available_fails_without_calling_the_client() {
    let mock = two_projects(ModelLimits::default()).await;
    let pool = KeyPool::from_keys(["test-key-9999"]).unwrap();
    let mut svc = KeyRotationLayer::new(&pool).layer_into(client());
    let first = svc
        .ready()
        .await
        .unwrap()
        .call(generate(&mock, FLASH, "x"))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::BAD_REQUEST);
    let error = svc
        .ready()
        .await
        .unwrap()
        .call(generate(&mock, FLASH, "x"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::AllKeysDisabled);
    assert_eq!(error.retry_after(), None);
    assert_eq!(mock.stats().total_requests(), 1);
}

#[tokio::test]
async fn error_body_echoing_the_key_is_scrubbed_and_large_bodies_are_bounded() {
    // Some Google messages quote the consumer: "Consumer 'api_key:…' has been suspended."
    let inner = service_fn(|request: Request<String>| async move {
        let key = request.headers()["x-goog-api-key"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = format!(
            r#"{{"error":{{"code":403,"message":"Permission denied: Consumer 'api_key:{key}' has been suspended.","status":"PERMISSION_DENIED","details":[{{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"CONSUMER_SUSPENDED"}}]}}}}"#
        );
        let response = Response::builder()
            .status(403)
            .header("content-length", body.len())
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        Ok::<_, std::convert::Infallible>(response)
    });
    let pool = KeyPool::from_keys(["test-key-0001"]).unwrap();
    let svc = KeyRotationLayer::new(&pool).layer_into(inner);
    let request = Request::post("http://127.0.0.1/v1beta/models/gemini-2.0-flash:generateContent")
        .body(String::new())
        .unwrap();
    let response = svc.oneshot(request).await.unwrap();
    let verdict = response
        .extensions()
        .get::<Classification>()
        .unwrap()
        .clone();
    assert_eq!(verdict.class(), Class::KeyForbidden);
    assert!(!verdict.message().unwrap().contains("test-key-0001"));
    let length: usize = response.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = text(response).await;
    assert_eq!(body.len(), length);
    assert!(
        body.contains("api_key:…0001") && !body.contains("test-key-0001"),
        "{body}"
    );

    // A 200 KiB error body: classified from its first 64 KiB, delivered whole.
    let big = format!(
        r#"{{"error":{{"code":400,"message":"{}","status":"INVALID_ARGUMENT"}}}}"#,
        "x".repeat(200 * 1024)
    );
    let expected = big.clone();
    let inner = service_fn(move |_: Request<String>| {
        let big = big.clone();
        async move {
            let response = Response::builder()
                .status(400)
                .body(Full::new(Bytes::from(big)))
                .unwrap();
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let svc = KeyRotationLayer::new(&KeyPool::from_keys(["test-key-0001"]).unwrap())
        .max_error_body(1024)
        .layer_into(inner);
    let request = Request::post("http://127.0.0.1/v1beta/models/gemini-2.0-flash:generateContent")
        .body(String::new())
        .unwrap();
    let response = svc.oneshot(request).await.unwrap();
    assert_eq!(
        response
            .extensions()
            .get::<Classification>()
            .unwrap()
            .class(),
        Class::Caller
    );
    assert_eq!(text(response).await, expected);
}

#[tokio::test]
async fn poll_ready_passes_the_inner_readiness_through() {
    use std::task::{Context, Poll};
    #[derive(Clone)]
    struct NotReady;
    impl Service<Request<String>> for NotReady {
        type Response = Response<String>;
        type Error = std::io::Error;
        type Future = std::future::Ready<Result<Response<String>, std::io::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Err(std::io::Error::other("inner not ready")))
        }
        fn call(&mut self, _: Request<String>) -> Self::Future {
            unreachable!("never ready")
        }
    }
    let mut svc =
        KeyRotationLayer::new(&KeyPool::from_keys(["test-key-0001"]).unwrap()).layer_into(NotReady);
    let error = std::future::poll_fn(|cx| svc.poll_ready(cx))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Transport);
    assert!(error.to_string().contains("inner not ready"));
}

/// `layer.layer(service)` spelled so the tests read left to right.
trait LayerInto {
    fn layer_into<S>(&self, service: S) -> <Self as tower::Layer<S>>::Service
    where
        Self: tower::Layer<S>,
    {
        self.layer(service)
    }
}
impl LayerInto for KeyRotationLayer {}
