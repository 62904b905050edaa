//! `FallbackLayer` over real HTTP to the mock: when the requested model's projects are
//! exhausted (locally, by Google's 429, or the model is not on their tier) the request is served
//! by the next model of its chain and says so; never on a caller error, never when the caller
//! forbids it, and nothing is sent upstream for a model that is sure to refuse.

mod common;

use bytes::Bytes;
use common::{chat, client, generate, text};
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use tower::{Layer, ServiceExt};
use tower_gemini::fallback::{
    FALLBACK_HEADER, FallbackLayer, FallbackReason, MODEL_HEADER, ModelFallback,
};
use tower_gemini::mock::{MockGemini, MockServer};
use tower_gemini::pool::ModelLimits;
use tower_gemini::{ErrorKind, KeyPool, stack};

const PRO: &str = "gemini-2.5-pro";
const FLASH: &str = "gemini-2.5-flash";
const FLASH_20: &str = "gemini-2.0-flash";
const KEYS: [&str; 2] = ["test-key-fall-0001", "test-key-fall-0002"];

fn per_day(n: u32) -> ModelLimits {
    ModelLimits {
        rpd: Some(n),
        ..Default::default()
    }
}

/// Two projects, one key each; `configure` sets each project's limits at the mock.
async fn mock(
    configure: impl Fn(tower_gemini::mock::MockProject) -> tower_gemini::mock::MockProject,
) -> MockServer {
    MockGemini::builder()
        .project("proj-a", |p| configure(p.key(KEYS[0])))
        .project("proj-b", |p| configure(p.key(KEYS[1])))
        .start()
        .await
        .unwrap()
}

fn chain() -> FallbackLayer {
    FallbackLayer::new().chain(PRO, [FLASH, FLASH_20]).unwrap()
}

/// The model the mock says answered (`modelVersion`, or `model` of an OpenAI answer).
fn answered_by(body: &str) -> String {
    let json: Value = serde_json::from_str(body).unwrap();
    json.get("modelVersion")
        .or_else(|| json.get("model"))
        .and_then(Value::as_str)
        .unwrap()
        .to_owned()
}

type Gemini = tower_gemini::GeminiService<common::HttpClient>;

fn service(pool: &KeyPool, fallback: FallbackLayer) -> Gemini {
    stack(pool).fallback(fallback).layer(client())
}

#[tokio::test(start_paused = true)]
async fn the_next_model_serves_when_the_first_models_projects_are_exhausted() {
    let mock = mock(|p| p).await;
    // One request of gemini-2.5-pro per project per day, known locally.
    let pool = KeyPool::builder()
        .keys(KEYS)
        .model_limits(PRO, per_day(1))
        .build()
        .unwrap();
    let gemini = service(&pool, chain());

    for _ in 0..2 {
        let response = gemini
            .clone()
            .oneshot(generate(&mock, PRO, "hello"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get(FALLBACK_HEADER).is_none());
        assert!(response.extensions().get::<ModelFallback>().is_none());
        assert_eq!(answered_by(&text(response).await), PRO);
    }
    for _ in 0..3 {
        let response = gemini
            .clone()
            .oneshot(generate(&mock, PRO, "hello"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[MODEL_HEADER], FLASH);
        assert_eq!(
            response.headers()[FALLBACK_HEADER],
            "gemini-2.5-pro; reason=quota_exhausted"
        );
        let fallback = response
            .extensions()
            .get::<ModelFallback>()
            .unwrap()
            .clone();
        assert_eq!(fallback.requested.as_str(), PRO);
        assert_eq!(fallback.served.as_str(), FLASH);
        assert_eq!(fallback.reason, FallbackReason::QuotaExhausted);
        assert_eq!(answered_by(&text(response).await), FLASH);
    }
    // Nothing was sent for pro once its day was spent: the local refusal cost nothing.
    let stats = mock.stats();
    assert_eq!(stats.served(PRO).answers, 2);
    assert_eq!(stats.served(FLASH).answers, 3);
    assert_eq!(stats.total_requests(), 5);
    assert_eq!(stats.responses_with_status(429), 0);
}

#[tokio::test(start_paused = true)]
async fn the_chain_goes_on_while_models_are_refused() {
    let mock = mock(|p| p).await;
    let pool = KeyPool::builder()
        .keys(KEYS)
        .model_limits(PRO, per_day(0))
        .model_limits(FLASH, per_day(0))
        .build()
        .unwrap();
    let response = service(&pool, chain())
        .oneshot(generate(&mock, PRO, "hello"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[MODEL_HEADER], FLASH_20);
    // The reason is why the requested model was passed over.
    assert_eq!(
        response.headers()[FALLBACK_HEADER],
        "gemini-2.5-pro; reason=quota_exhausted"
    );
    assert_eq!(answered_by(&text(response).await), FLASH_20);
    assert_eq!(mock.stats().total_requests(), 1);

    // With every model of the chain refused, the caller gets the last refusal.
    let pool = KeyPool::builder()
        .keys(KEYS)
        .model_limits(PRO, per_day(0))
        .model_limits(FLASH, per_day(0))
        .model_limits(FLASH_20, per_day(0))
        .build()
        .unwrap();
    let err = service(&pool, chain())
        .oneshot(generate(&mock, PRO, "hello"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::QuotaExhausted);
    assert!(err.to_string().contains(FLASH_20), "{err}");
    assert_eq!(mock.stats().total_requests(), 1);
}

#[tokio::test(start_paused = true)]
async fn googles_quota_refusal_and_a_model_off_tier_fall_back() {
    // Google's own daily limit for pro, unknown to the pool: one request per project.
    let mock = mock(|p| p.limits(PRO, per_day(1))).await;
    let pool = KeyPool::from_keys(KEYS).unwrap();
    let gemini = service(&pool, chain());
    let mut served = Vec::new();
    for _ in 0..4 {
        let response = gemini
            .clone()
            .oneshot(generate(&mock, PRO, "hi"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        served.push(
            response
                .headers()
                .get(MODEL_HEADER)
                .map(|v| v.to_str().unwrap().to_owned()),
        );
    }
    assert_eq!(served, [None, None, Some(FLASH.into()), Some(FLASH.into())]);
    assert_eq!(mock.stats().served(PRO).answers, 2);
    assert_eq!(mock.stats().served(FLASH).answers, 2);

    // Pro not on the projects' tier: Google answers 429 with limit 0.
    let mock = mock_off_tier().await;
    let pool = KeyPool::from_keys(KEYS).unwrap();
    let response = service(&pool, chain())
        .oneshot(generate(&mock, PRO, "hi"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[MODEL_HEADER], FLASH);
    let reason = response.extensions().get::<ModelFallback>().unwrap().reason;
    assert!(
        matches!(
            reason,
            FallbackReason::ModelUnavailable | FallbackReason::QuotaExhausted
        ),
        "{reason}"
    );
    // Pro's keys are now disabled for it: the next request does not try it upstream.
    let before = mock.stats().total_requests();
    let response = service(&pool, chain())
        .oneshot(generate(&mock, PRO, "hi"))
        .await
        .unwrap();
    assert_eq!(
        response.headers()[FALLBACK_HEADER],
        "gemini-2.5-pro; reason=model_unavailable"
    );
    assert_eq!(mock.stats().total_requests(), before + 1);
}

async fn mock_off_tier() -> MockServer {
    mock(|p| p.limits(PRO, per_day(0))).await
}

#[tokio::test(start_paused = true)]
async fn a_caller_error_or_a_forbidden_fallback_is_answered_as_it_is() {
    let mock = mock(|p| p).await;
    let pool = KeyPool::builder()
        .keys(KEYS)
        .model_limits(PRO, per_day(0))
        .build()
        .unwrap();
    let gemini = service(&pool, chain());

    // The caller forbids it: the refusal comes back, nothing is sent.
    let mut request = generate(&mock, PRO, "hello");
    request
        .headers_mut()
        .insert(FALLBACK_HEADER, "no".parse().unwrap());
    let err = gemini.clone().oneshot(request).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::QuotaExhausted);
    assert_eq!(mock.stats().total_requests(), 0);

    // A caller error for a model with room: Google's 400, not another model's answer.
    let pool = KeyPool::from_keys(KEYS).unwrap();
    let gemini = service(&pool, chain());
    let bad = Request::post(mock.model_url(PRO, "generateContent"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{not json")))
        .unwrap();
    let response = gemini.clone().oneshot(bad).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.headers().get(MODEL_HEADER).is_none());
    assert_eq!(mock.stats().total_requests(), 1);
    assert_eq!(mock.stats().served(FLASH).answers, 0);

    // A model without a chain is not rewritten.
    let pool = KeyPool::builder()
        .keys(KEYS)
        .model_limits(FLASH_20, per_day(0))
        .build()
        .unwrap();
    let err = service(&pool, chain())
        .oneshot(generate(&mock, FLASH_20, "hello"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::QuotaExhausted);
    assert_eq!(mock.stats().total_requests(), 1);
}

#[tokio::test(start_paused = true)]
async fn openai_requests_fall_back_with_the_body_rewritten() {
    let mock = mock(|p| p).await;
    let pool = KeyPool::builder()
        .keys(KEYS)
        .model_limits(PRO, per_day(0))
        .build()
        .unwrap();
    let response = service(&pool, chain())
        .oneshot(chat(&mock, PRO, "hello"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[MODEL_HEADER], FLASH);
    assert_eq!(answered_by(&text(response).await), FLASH);
    assert_eq!(mock.stats().served(FLASH).answers, 1);
    assert_eq!(mock.stats().served(PRO).answers, 0);
}

#[tokio::test(start_paused = true)]
async fn the_fallback_header_is_not_sent_upstream_and_chains_pass_through_when_empty() {
    // With no chains the layer changes nothing (the stack's default).
    let mock = mock(|p| p).await;
    let pool = KeyPool::builder()
        .keys(KEYS)
        .model_limits(PRO, per_day(0))
        .build()
        .unwrap();
    let err = service(&pool, FallbackLayer::new())
        .oneshot(generate(&mock, PRO, "hello"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::QuotaExhausted);

    // A stand-in upstream that echoes the headers it got.
    let seen = tower::service_fn(|request: Request<Full<Bytes>>| async move {
        let forwarded = request.headers().contains_key(FALLBACK_HEADER);
        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
            forwarded.to_string(),
        ))))
    });
    let mut request = generate(&mock, PRO, "hello");
    request
        .headers_mut()
        .insert(FALLBACK_HEADER, "yes".parse().unwrap());
    let response = chain().layer(seen).oneshot(request).await.unwrap();
    assert_eq!(text(response).await, "false");
}

/// Behind a cache, an answer from a fallback model still says so, and is not kept for the
/// requested model.
#[cfg(feature = "cache")]
#[tokio::test(start_paused = true)]
async fn a_cache_in_front_keeps_the_fallback_headers_and_stores_nothing() {
    use tower_gemini::cache::{CACHE_HEADER, CacheLayer};

    let mock = mock(|p| p).await;
    let pool = KeyPool::builder()
        .keys(KEYS)
        .model_limits(PRO, per_day(0))
        .build()
        .unwrap();
    let cache = CacheLayer::new();
    let gemini = cache.layer(service(&pool, chain()));
    for _ in 0..2 {
        let request = Request::post(mock.model_url(PRO, "generateContent"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"temperature":0}}"#,
            )))
            .unwrap();
        let response = gemini.clone().oneshot(request).await.unwrap();
        assert_eq!(response.headers()[CACHE_HEADER], "miss");
        assert_eq!(response.headers()[MODEL_HEADER], FLASH);
        assert!(response.extensions().get::<ModelFallback>().is_some());
        assert_eq!(answered_by(&text(response).await), FLASH);
    }
    assert_eq!(mock.stats().served(FLASH).answers, 2);
}

#[tokio::test(start_paused = true)]
async fn an_overloaded_model_falls_back_and_its_open_circuit_is_not_waited_for() {
    use std::time::Duration;
    use tower_gemini::CircuitBreakerLayer;
    use tower_gemini::circuit_breaker::CircuitState;
    use tower_gemini::mock::Fault;

    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key(KEYS[0]))
        .project("proj-b", |p| p.key(KEYS[1]))
        .fault(Fault::overloaded(1.0).for_model(PRO))
        .start()
        .await
        .unwrap();
    let pool = KeyPool::from_keys(KEYS).unwrap();
    let breaker = CircuitBreakerLayer::new()
        .minimum_calls(4)
        .open_duration(Duration::from_secs(30));
    let handle = breaker.handle();
    let gemini = stack(&pool)
        .circuit_breaker(breaker)
        .fallback(FallbackLayer::new().chain(PRO, [FLASH]).unwrap())
        .layer(client());

    // Google fails pro on every attempt: after the retries, flash serves it.
    let response = gemini
        .clone()
        .oneshot(generate(&mock, PRO, "hello"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[FALLBACK_HEADER],
        "gemini-2.5-pro; reason=overloaded"
    );
    assert_eq!(answered_by(&text(response).await), FLASH);

    // Until pro's circuit opens.
    for _ in 0..10 {
        if handle.state(PRO) == Some(CircuitState::Open) {
            break;
        }
        let response = gemini
            .clone()
            .oneshot(generate(&mock, PRO, "hello"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let _ = text(response).await;
    }
    assert_eq!(handle.state(PRO), Some(CircuitState::Open));

    // While it is open, a pro request is served by flash at once: nothing is sent for pro,
    // and nobody waits the 30 s for its half-open probe.
    let sent_for_pro = mock.stats().total_requests() - mock.stats().served(FLASH).answers;
    let started = tokio::time::Instant::now();
    let response = gemini
        .clone()
        .oneshot(generate(&mock, PRO, "hello"))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        response.headers()[FALLBACK_HEADER],
        "gemini-2.5-pro; reason=circuit_open"
    );
    assert_eq!(answered_by(&text(response).await), FLASH);
    assert_eq!(
        mock.stats().total_requests() - mock.stats().served(FLASH).answers,
        sent_for_pro
    );

    // A caller who forbids the fallback gets the circuit's refusal.
    let mut forbid = generate(&mock, PRO, "hello");
    forbid
        .headers_mut()
        .insert(FALLBACK_HEADER, "no".parse().unwrap());
    let err = gemini.clone().oneshot(forbid).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen);
}

#[tokio::test(start_paused = true)]
async fn a_model_with_another_after_it_is_not_waited_for_even_when_the_stack_waits() {
    use std::time::Duration;
    let mock = mock(|p| p).await;
    // One request of pro a minute per project, known locally; the stack waits up to two
    // minutes for a slot.
    let per_minute = ModelLimits {
        rpm: Some(1),
        ..Default::default()
    };
    let pool = KeyPool::builder()
        .keys(KEYS)
        .model_limits(PRO, per_minute)
        .model_limits(FLASH, per_minute)
        .build()
        .unwrap();
    let gemini = stack(&pool)
        .wait_up_to(Duration::from_secs(120))
        .fallback(FallbackLayer::new().chain(PRO, [FLASH]).unwrap())
        .layer(client());
    for _ in 0..2 {
        let response = gemini
            .clone()
            .oneshot(generate(&mock, PRO, "hello"))
            .await
            .unwrap();
        assert_eq!(answered_by(&text(response).await), PRO);
    }
    // Pro's next slot is a minute away: flash serves now rather than the caller waiting.
    let started = tokio::time::Instant::now();
    let response = gemini
        .clone()
        .oneshot(generate(&mock, PRO, "hello"))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        response.headers()[FALLBACK_HEADER],
        "gemini-2.5-pro; reason=quota_exhausted"
    );
    assert_eq!(answered_by(&text(response).await), FLASH);
    // The last model of the chain waits as the stack is told to: flash's second project,
    // then a minute for a slot.
    let response = gemini
        .clone()
        .oneshot(generate(&mock, FLASH, "hello"))
        .await
        .unwrap();
    assert_eq!(answered_by(&text(response).await), FLASH);
    let started = tokio::time::Instant::now();
    let response = gemini
        .clone()
        .oneshot(generate(&mock, FLASH, "hello"))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(answered_by(&text(response).await), FLASH);
    assert_eq!(mock.stats().responses_with_status(429), 0);
}
