//! Project affinity (issue #24, the mechanism): a request carrying an `Owner` goes to that
//! project's keys only, over real HTTP to the mock with three projects — served there every
//! time, waiting for it under quota pressure instead of rotating away, and a clear error naming
//! the resource and the project when it has no usable key.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{generate, served_by, text};
use http::StatusCode;
use http_body_util::Full;
use tower::ServiceExt;
use tower_gemini::clock::ScaledClock;
use tower_gemini::context::Owner;
use tower_gemini::mock::{MockGemini, MockServer};
use tower_gemini::pool::ModelLimits;
use tower_gemini::{BoxGemini, ErrorKind, KeyPool, KeySpec, stack};

const MODEL: &str = "gemini-2.0-flash";
const KEYS: [(&str, &str); 3] = [
    ("proj-a", "test-key-affinity-000a"),
    ("proj-b", "test-key-affinity-000b"),
    ("proj-c", "test-key-affinity-000c"),
];

async fn mock() -> MockServer {
    let mut builder = MockGemini::builder();
    for (project, key) in KEYS {
        builder = builder.project(project, |p| p.key(key));
    }
    builder.start().await.unwrap()
}

fn pool(
    build: impl FnOnce(tower_gemini::pool::KeyPoolBuilder) -> tower_gemini::pool::KeyPoolBuilder,
) -> KeyPool {
    let mut builder = KeyPool::builder();
    for (project, key) in KEYS {
        builder = builder.key_with(KeySpec::new(key).project(project));
    }
    build(builder).build().unwrap()
}

fn owned(mock: &MockServer, project: &str, text: &str) -> http::Request<Full<Bytes>> {
    let mut request = generate(mock, MODEL, text);
    request
        .extensions_mut()
        .insert(Owner::for_resource(project, "interactions/conversation-1"));
    request
}

fn gemini(pool: &KeyPool, wait: Option<Duration>) -> BoxGemini {
    let layer = stack(pool);
    let layer = match wait {
        Some(bound) => layer.wait_up_to(bound),
        None => layer,
    };
    layer.boxed(common::client())
}

#[tokio::test]
async fn an_owned_request_goes_to_its_project_every_time() {
    let mock = mock().await;
    let pool = pool(|b| b);
    let gemini = gemini(&pool, None);
    for turn in 0..12 {
        let response = gemini
            .clone()
            .oneshot(owned(&mock, "proj-b", &format!("turn {turn}")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(served_by(&response), "…000b", "turn {turn}");
    }
    // Requests without an owner still rotate over every project.
    let mut seen = std::collections::BTreeSet::new();
    for turn in 0..6 {
        let response = gemini
            .clone()
            .oneshot(generate(&mock, MODEL, &format!("free {turn}")))
            .await
            .unwrap();
        seen.insert(served_by(&response));
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

/// Under quota pressure on the owner's project, a pinned request waits for it (bounded by
/// `wait_up_to`) rather than go to a project that does not hold its conversation; without a
/// bound it fails fast with when to retry, naming the resource.
#[tokio::test]
async fn an_owned_request_waits_for_its_project_instead_of_rotating() {
    let mock = mock().await;
    let limits = ModelLimits {
        rpm: Some(2),
        ..Default::default()
    };
    // Quota time ×60: a minute passes in a second.
    let pool = pool(|b| {
        b.project_model_limits("proj-b", MODEL, limits)
            .clock(ScaledClock::new(60))
    });
    let waiting = gemini(&pool, Some(Duration::from_secs(5)));
    for turn in 0..5 {
        let response = waiting
            .clone()
            .oneshot(owned(&mock, "proj-b", &format!("turn {turn}")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "turn {turn}");
        assert_eq!(served_by(&response), "…000b", "turn {turn}");
    }
    assert_eq!(mock.stats().requests_for(KEYS[0].1), 0);
    assert_eq!(mock.stats().requests_for(KEYS[2].1), 0);
    // Without a wait bound: a clear refusal, not a turn sent to another project.
    let hurried = gemini(&pool, None);
    let mut refused = None;
    for turn in 0..3 {
        match hurried
            .clone()
            .oneshot(owned(&mock, "proj-b", &format!("fast {turn}")))
            .await
        {
            Ok(response) => assert_eq!(served_by(&response), "…000b"),
            Err(error) => {
                refused = Some(error);
                break;
            }
        }
    }
    let error = refused.expect("proj-b's quota runs out");
    assert_eq!(error.kind(), ErrorKind::QuotaExhausted, "{error}");
    assert!(error.retry_after().is_some(), "{error}");
    assert!(
        error.to_string().contains("interactions/conversation-1")
            && error.to_string().contains("proj-b"),
        "{error}"
    );
    assert_eq!(mock.stats().requests_for(KEYS[0].1), 0);
    assert_eq!(mock.stats().requests_for(KEYS[2].1), 0);
}

/// The owner's keys all unusable, or a project the pool does not hold: an error that names the
/// resource and the project, and nothing sent (never Google's 404 from another project).
#[tokio::test]
async fn an_owner_without_a_usable_key_is_a_clear_error() {
    let mock = mock().await;
    let pool = pool(|b| b);
    let gemini = gemini(&pool, Some(Duration::from_secs(1)));
    let error = gemini
        .clone()
        .oneshot(owned(&mock, "proj-z", "hello"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("proj-z"), "{error}");
    // Not a kind a fallback or a retry acts on: no other model or attempt can help.
    assert_eq!(error.kind(), ErrorKind::Config, "{error}");
    assert!(
        error.to_string().contains("interactions/conversation-1"),
        "{error}"
    );
    // proj-b's only key is invalid for the mock: disabled by its first answer, then the pin
    // has nowhere to go.
    let broken = MockGemini::builder()
        .project("proj-a", |p| p.key(KEYS[0].1))
        .project("proj-c", |p| p.key(KEYS[2].1))
        .start()
        .await
        .unwrap();
    let response = gemini
        .clone()
        .oneshot(owned(&broken, "proj-b", "once"))
        .await;
    let first = match response {
        Ok(response) => text(response).await,
        Err(error) => error.to_string(),
    };
    let second = gemini
        .clone()
        .oneshot(owned(&broken, "proj-b", "again"))
        .await
        .unwrap_err();
    assert_eq!(
        second.kind(),
        ErrorKind::AllKeysDisabled,
        "{first} / {second}"
    );
    assert!(
        second.to_string().contains("proj-b")
            && second.to_string().contains("interactions/conversation-1"),
        "{second}"
    );
    assert_eq!(broken.stats().requests_for(KEYS[0].1), 0);
    assert_eq!(broken.stats().requests_for(KEYS[2].1), 0);
    assert_eq!(mock.stats().total_requests(), 0);
}

/// The pin holds through the stack's other layers: a fallback to another model stays in the
/// owner's project (it is that project's conversation), and retries after Google's 503s try
/// the owner's keys again, never another project's.
#[tokio::test]
async fn fallbacks_and_retries_stay_in_the_owners_project() {
    use tower_gemini::context::ModelFallback;
    use tower_gemini::fallback::FallbackLayer;
    use tower_gemini::mock::Fault;

    let mock = mock().await;
    let one = ModelLimits {
        rpm: Some(1),
        ..Default::default()
    };
    let pool = pool(|b| b.project_model_limits("proj-b", "gemini-2.5-pro", one));
    let fallback = FallbackLayer::new()
        .chain("gemini-2.5-pro", [MODEL])
        .unwrap();
    let falling = stack(&pool).fallback(fallback).boxed(common::client());
    let mut fell_back = 0;
    for turn in 0..3 {
        let mut request = generate(&mock, "gemini-2.5-pro", &format!("turn {turn}"));
        request
            .extensions_mut()
            .insert(Owner::for_resource("proj-b", "interactions/conversation-1"));
        let response = falling.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "turn {turn}");
        assert_eq!(served_by(&response), "…000b", "turn {turn}");
        if let Some(fallback) = response.extensions().get::<ModelFallback>() {
            assert_eq!(fallback.served.as_str(), MODEL);
            fell_back += 1;
        }
    }
    // proj-b's one gemini-2.5-pro request a minute served the first turn; the others fell
    // back to gemini-2.0-flash in proj-b, while proj-a and proj-c had gemini-2.5-pro free.
    assert_eq!(fell_back, 2);
    assert_eq!(mock.stats().requests_for(KEYS[0].1), 0);
    assert_eq!(mock.stats().requests_for(KEYS[2].1), 0);

    // A third of Google's answers are 503s: the retries of a pinned request stay in proj-b.
    // (Short backoffs, and a breaker that does not open, keep the test quick.)
    mock.set_faults([Fault::overloaded(0.3)]);
    let flaky = stack(&pool)
        .retry(
            tower_gemini::RetryLayer::for_pool(&pool)
                .max_attempts(6)
                .backoff(tower_gemini::retry::Backoff::new(
                    Duration::from_millis(5),
                    2.0,
                    Duration::from_millis(20),
                )),
        )
        .circuit_breaker(tower_gemini::CircuitBreakerLayer::new().failure_threshold(1.0))
        .boxed(common::client());
    let mut served = 0;
    for turn in 0..10 {
        match flaky
            .clone()
            .oneshot(owned(&mock, "proj-b", &format!("flaky {turn}")))
            .await
        {
            Ok(response) if response.status() == StatusCode::OK => {
                assert_eq!(served_by(&response), "…000b");
                served += 1;
            }
            _ => {}
        }
    }
    assert!(served >= 8, "retries mended the 503s: {served} of 10");
    assert!(
        mock.stats().responses_with_status(503) > 0,
        "the fault was hit"
    );
    assert_eq!(mock.stats().requests_for(KEYS[0].1), 0);
    assert_eq!(mock.stats().requests_for(KEYS[2].1), 0);
}
