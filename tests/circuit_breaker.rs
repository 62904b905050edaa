//! CircuitBreakerLayer: thresholds, open and half-open states, probes, scopes, composition.

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{client, generate, one_key_mock};
use http::{Request, Response, StatusCode};
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_gemini::circuit_breaker::{CircuitBreakerLayer, CircuitState, StateChange, WindowKind};
use tower_gemini::mock::{Fault, MockGemini, MockServer};
use tower_gemini::pool::ModelLimits;
use tower_gemini::retry::{Backoff, NoJitter, RetryLayer};
use tower_gemini::{ErrorKind, KeyPool, KeyRotationLayer};

const FLASH: &str = "gemini-2.0-flash";
const PRO: &str = "gemini-2.5-pro";

fn request(model: &str) -> Request<String> {
    Request::post(format!(
        "http://127.0.0.1/v1beta/models/{model}:generateContent"
    ))
    .body(String::new())
    .unwrap()
}

/// An upstream answering from a script of statuses (then 200), counting calls.
#[derive(Clone, Default)]
struct Scripted {
    script: Arc<Mutex<VecDeque<u16>>>,
    calls: Arc<AtomicU32>,
}

impl Scripted {
    fn new(statuses: &[u16]) -> Self {
        Scripted {
            script: Arc::new(Mutex::new(statuses.iter().copied().collect())),
            calls: Arc::default(),
        }
    }

    fn push(&self, statuses: &[u16]) {
        self.script.lock().unwrap().extend(statuses);
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<String>,
        Response = Response<String>,
        Error = std::convert::Infallible,
        Future: Send,
    > + Clone
    + Send {
        let this = self.clone();
        service_fn(move |_: Request<String>| {
            this.calls.fetch_add(1, Ordering::SeqCst);
            let status = this.script.lock().unwrap().pop_front().unwrap_or(200);
            async move {
                let mut response = Response::new(String::new());
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                Ok(response)
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn opens_exactly_at_the_threshold_after_the_minimum_calls() {
    let upstream = Scripted::new(&[200, 200, 200, 200, 200, 503, 503, 503, 503]);
    let layer = CircuitBreakerLayer::new();
    let handle = layer.handle();
    let mut svc = layer.layer(upstream.service());
    for _ in 0..9 {
        svc.ready()
            .await
            .unwrap()
            .call(request(FLASH))
            .await
            .unwrap();
    }
    // 4 of 9 failed: below the minimum of 10 calls.
    assert_eq!(handle.state(FLASH), Some(CircuitState::Closed));
    upstream.push(&[503]);
    svc.ready()
        .await
        .unwrap()
        .call(request(FLASH))
        .await
        .unwrap();
    // 5 of 10 = 50 %: open.
    assert_eq!(handle.state(FLASH), Some(CircuitState::Open));
    let error = svc
        .ready()
        .await
        .unwrap()
        .call(request(FLASH))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::CircuitOpen);
    assert_eq!(upstream.calls(), 10);
}

#[tokio::test(start_paused = true)]
async fn stays_closed_below_the_threshold() {
    // 9 failures in 20 calls: 45 %.
    let mut script = vec![200; 11];
    script.extend([503; 9]);
    let upstream = Scripted::new(&script);
    let layer = CircuitBreakerLayer::new();
    let handle = layer.handle();
    let mut svc = layer.layer(upstream.service());
    for _ in 0..20 {
        svc.ready()
            .await
            .unwrap()
            .call(request(FLASH))
            .await
            .unwrap();
    }
    assert_eq!(handle.state(FLASH), Some(CircuitState::Closed));
    let snap = &handle.snapshot()[0];
    assert_eq!((snap.calls, snap.failures), (20, 9));
    // A 10th failure pushes out a success: 10 of 20 = 50 %.
    upstream.push(&[503]);
    svc.ready()
        .await
        .unwrap()
        .call(request(FLASH))
        .await
        .unwrap();
    assert_eq!(handle.state(FLASH), Some(CircuitState::Open));
}

async fn open_circuit(layer: &CircuitBreakerLayer, upstream: &Scripted) {
    upstream.push(&[503; 10]);
    let mut svc = layer.layer(upstream.service());
    for _ in 0..10 {
        svc.ready()
            .await
            .unwrap()
            .call(request(FLASH))
            .await
            .unwrap();
    }
    assert_eq!(layer.handle().state(FLASH), Some(CircuitState::Open));
}

#[tokio::test(start_paused = true)]
async fn open_fails_fast_with_the_time_left() {
    let upstream = Scripted::default();
    let layer = CircuitBreakerLayer::new();
    open_circuit(&layer, &upstream).await;
    let mut svc = layer.layer(upstream.service());
    let error = svc
        .ready()
        .await
        .unwrap()
        .call(request(FLASH))
        .await
        .unwrap_err();
    assert_eq!(error.retry_after(), Some(Duration::from_secs(30)));
    tokio::time::advance(Duration::from_secs(12)).await;
    let error = svc
        .ready()
        .await
        .unwrap()
        .call(request(FLASH))
        .await
        .unwrap_err();
    assert_eq!(error.retry_after(), Some(Duration::from_secs(18)));
    assert!(
        error
            .to_string()
            .contains("100% of the last 10 calls failed"),
        "{error}"
    );
    assert_eq!(upstream.calls(), 10);
    // Other models are not affected.
    svc.ready().await.unwrap().call(request(PRO)).await.unwrap();
    assert_eq!(upstream.calls(), 11);
}

/// An upstream that holds every call until released, then answers `status`.
fn gated(
    gate: Arc<Semaphore>,
    calls: Arc<AtomicU32>,
    status: u16,
) -> impl Service<
    Request<String>,
    Response = Response<String>,
    Error = std::convert::Infallible,
    Future: Send,
> + Clone
+ Send {
    service_fn(move |_: Request<String>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let gate = gate.clone();
        async move {
            let _permit = gate.acquire().await.unwrap();
            let mut response = Response::new(String::new());
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok(response)
        }
    })
}

async fn probe_storm(status: u16) -> (CircuitBreakerLayer, u32, usize) {
    let upstream = Scripted::default();
    let layer = CircuitBreakerLayer::new();
    open_circuit(&layer, &upstream).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicU32::new(0));
    let svc = layer.layer(gated(gate.clone(), calls.clone(), status));
    let tasks: Vec<_> = (0..50)
        .map(|_| tokio::spawn(svc.clone().oneshot(request(FLASH))))
        .collect();
    // Let every caller reach the breaker.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let probes = calls.load(Ordering::SeqCst);
    gate.add_permits(50);
    let mut rejected = 0;
    for task in tasks {
        if let Err(error) = task.await.unwrap() {
            assert_eq!(error.kind(), ErrorKind::CircuitOpen);
            rejected += 1;
        }
    }
    (layer, probes, rejected)
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_exactly_the_probes_through_and_successes_close_it() {
    let (layer, probes, rejected) = probe_storm(200).await;
    assert_eq!(probes, 3);
    assert_eq!(rejected, 47);
    assert_eq!(layer.handle().state(FLASH), Some(CircuitState::Closed));
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_with_a_doubled_duration() {
    let (layer, probes, _) = probe_storm(503).await;
    assert_eq!(probes, 3);
    let snap = layer.handle().snapshot();
    assert_eq!(snap[0].state, CircuitState::Open);
    assert_eq!(snap[0].half_open_in_secs, Some(60.0));
    // After a clean close the duration is back to 30 s.
    tokio::time::advance(Duration::from_secs(60)).await;
    let upstream = Scripted::default();
    let mut svc = layer.layer(upstream.service());
    for _ in 0..3 {
        svc.ready()
            .await
            .unwrap()
            .call(request(FLASH))
            .await
            .unwrap();
    }
    assert_eq!(layer.handle().state(FLASH), Some(CircuitState::Closed));
    open_circuit(&layer, &upstream).await;
    assert_eq!(layer.handle().snapshot()[0].half_open_in_secs, Some(30.0));
}

#[tokio::test(start_paused = true)]
async fn dropped_probes_give_their_permits_back() {
    let upstream = Scripted::default();
    let layer = CircuitBreakerLayer::new();
    open_circuit(&layer, &upstream).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicU32::new(0));
    let mut svc = layer.layer(gated(gate.clone(), calls.clone(), 200));
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(svc.ready().await.unwrap().call(request(FLASH)));
    }
    let error = svc
        .ready()
        .await
        .unwrap()
        .call(request(FLASH))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::CircuitOpen);
    assert_eq!(layer.handle().snapshot()[0].probes_in_flight, 3);
    drop(held);
    assert_eq!(layer.handle().snapshot()[0].probes_in_flight, 0);
    gate.add_permits(10);
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(request(FLASH))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_count_as_failures_in_a_time_window() {
    let slow = service_fn(|_: Request<String>| async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        Ok::<_, std::convert::Infallible>(Response::new(String::new()))
    });
    let layer = CircuitBreakerLayer::new()
        .slow_call(Duration::from_secs(2))
        .window(WindowKind::Seconds(60))
        .minimum_calls(3);
    let handle = layer.handle();
    let svc = layer.layer(slow);
    for _ in 0..2 {
        svc.clone().oneshot(request(FLASH)).await.unwrap();
    }
    assert_eq!(handle.state(FLASH), Some(CircuitState::Closed));
    svc.clone().oneshot(request(FLASH)).await.unwrap();
    assert_eq!(handle.state(FLASH), Some(CircuitState::Open));
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_old_failures() {
    let upstream = Scripted::new(&[503; 5]);
    let layer = CircuitBreakerLayer::new()
        .window(WindowKind::Seconds(10))
        .minimum_calls(6);
    let handle = layer.handle();
    let mut svc = layer.layer(upstream.service());
    for _ in 0..5 {
        svc.ready()
            .await
            .unwrap()
            .call(request(FLASH))
            .await
            .unwrap();
    }
    tokio::time::advance(Duration::from_secs(11)).await;
    upstream.push(&[503]);
    svc.ready()
        .await
        .unwrap()
        .call(request(FLASH))
        .await
        .unwrap();
    // Only the last failure is in the window: 1 call, below the minimum.
    assert_eq!(handle.state(FLASH), Some(CircuitState::Closed));
    assert_eq!(handle.snapshot()[0].calls, 1);
}

#[tokio::test(start_paused = true)]
async fn state_changes_call_the_hook() {
    let changes: Arc<Mutex<Vec<StateChange>>> = Arc::default();
    let seen = changes.clone();
    let layer = CircuitBreakerLayer::new()
        .half_open_probes(1)
        .on_state_change(move |change| seen.lock().unwrap().push(change.clone()));
    let upstream = Scripted::default();
    open_circuit(&layer, &upstream).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    layer
        .layer(upstream.service())
        .oneshot(request(FLASH))
        .await
        .unwrap();
    let changes = changes.lock().unwrap();
    let path: Vec<_> = changes.iter().map(|c| (c.from, c.to)).collect();
    assert_eq!(
        path,
        [
            (CircuitState::Closed, CircuitState::Open),
            (CircuitState::Open, CircuitState::HalfOpen),
            (CircuitState::HalfOpen, CircuitState::Closed),
        ]
    );
    assert_eq!(changes[0].scope, FLASH);
    assert_eq!(changes[0].failure_rate, 1.0);
    assert_eq!(changes[0].open_for, Some(Duration::from_secs(30)));
}

#[tokio::test(start_paused = true)]
async fn poll_ready_never_waits_on_an_open_circuit() {
    let upstream = Scripted::default();
    let layer = CircuitBreakerLayer::new();
    open_circuit(&layer, &upstream).await;
    let mut svc = layer.layer(upstream.service());
    let ready = tokio::time::timeout(Duration::from_millis(1), svc.ready()).await;
    assert!(ready.is_ok(), "poll_ready is the inner service's readiness");
}

#[tokio::test]
async fn per_model_scope_opens_only_the_overloaded_model() {
    let mock = one_key_mock(Fault::overloaded(1.0).for_model(PRO)).await;
    let pool = KeyPool::from_keys(["test-key-0001"]).unwrap();
    let layer = CircuitBreakerLayer::new();
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .layer(KeyRotationLayer::new(&pool))
        .service(client());
    for _ in 0..10 {
        let response = svc
            .clone()
            .oneshot(generate(&mock, PRO, "x"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(handle.state(PRO), Some(CircuitState::Open));
    let before = mock.stats().total_requests();
    for _ in 0..5 {
        let error = svc
            .clone()
            .oneshot(generate(&mock, PRO, "x"))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::CircuitOpen);
        let response = svc
            .clone()
            .oneshot(generate(&mock, FLASH, "x"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(
        mock.stats().total_requests() - before,
        5,
        "only the flash calls went out"
    );
    assert_eq!(handle.state(FLASH), Some(CircuitState::Closed));
}

#[tokio::test]
async fn quota_429s_never_open_the_breaker() {
    let mock = MockGemini::builder()
        .project("p", |p| {
            p.key("test-key-0001").limits(
                FLASH,
                ModelLimits {
                    rpm: Some(1),
                    ..Default::default()
                },
            )
        })
        .start()
        .await
        .unwrap();
    let layer = CircuitBreakerLayer::new().minimum_calls(1);
    let handle = layer.handle();
    let mut statuses = Vec::new();
    for _ in 0..30 {
        // A fresh pool each time (a pool learns the limit from the first 429 and would then
        // refuse locally), so every call reaches the mock and gets its 429.
        let pool = KeyPool::from_keys(["test-key-0001"]).unwrap();
        let svc = layer.layer(KeyRotationLayer::new(&pool).layer(client()));
        let response = svc.oneshot(generate(&mock, FLASH, "x")).await.unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 29);
    assert_eq!(handle.state(FLASH), Some(CircuitState::Closed));
    assert_eq!(handle.snapshot()[0].calls, 1);
}

/// Two projects of one key each, every answer "The model is overloaded".
async fn overloaded_two_projects() -> (MockServer, KeyPool) {
    let mock = MockGemini::builder()
        .project("p1", |p| p.key("test-key-0001"))
        .project("p2", |p| p.key("test-key-0002"))
        .fault(Fault::overloaded(1.0))
        .start()
        .await
        .unwrap();
    let pool = KeyPool::from_keys(["test-key-0001", "test-key-0002"]).unwrap();
    (mock, pool)
}

#[tokio::test(start_paused = true)]
async fn composed_stack_stops_calling_upstream_once_open() {
    let (mock, pool) = overloaded_two_projects().await;
    let breaker = CircuitBreakerLayer::new();
    let handle = breaker.handle();
    let gemini = ServiceBuilder::new()
        .layer(
            RetryLayer::for_pool(&pool)
                .backoff(Backoff::default().jitter(NoJitter))
                .deadline(Duration::from_secs(20))
                .without_budget(),
        )
        .layer(breaker)
        .layer(KeyRotationLayer::new(&pool))
        .service(client());
    let mut outcomes = Vec::new();
    for _ in 0..10 {
        match gemini.clone().oneshot(generate(&mock, FLASH, "x")).await {
            Ok(response) => outcomes.push(response.status().to_string()),
            Err(error) => outcomes.push(error.kind().to_string()),
        }
    }
    assert_eq!(handle.state(FLASH), Some(CircuitState::Open));
    let at_open = mock.stats().total_requests();
    assert_eq!(
        at_open, 10,
        "the breaker opened after its minimum of 10 calls"
    );
    for _ in 0..20 {
        let error = gemini
            .clone()
            .oneshot(generate(&mock, FLASH, "x"))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::CircuitOpen);
    }
    assert_eq!(mock.stats().total_requests(), at_open, "{outcomes:?}");
}

#[tokio::test(start_paused = true)]
async fn a_handle_taken_before_later_setters_watches_the_circuits_in_use() {
    let layer = CircuitBreakerLayer::new();
    let early = layer.handle();
    let layer = layer.minimum_calls(2).open_duration(Duration::from_secs(5));
    let upstream = Scripted::new(&[503, 503]);
    let mut svc = layer.layer(upstream.service());
    for _ in 0..2 {
        svc.ready()
            .await
            .unwrap()
            .call(request(FLASH))
            .await
            .unwrap();
    }
    assert_eq!(early.state(FLASH), Some(CircuitState::Open));
    assert_eq!(early.snapshot()[0].half_open_in_secs, Some(5.0));
}

#[tokio::test(start_paused = true)]
async fn the_default_open_time_never_keeps_a_recovered_upstream_dark_for_minutes() {
    let opened: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let seen = opened.clone();
    let layer = CircuitBreakerLayer::new()
        .half_open_probes(1)
        .on_state_change(move |change| seen.lock().unwrap().extend(change.open_for));
    let upstream = Scripted::default();
    open_circuit(&layer, &upstream).await;
    for _ in 0..4 {
        // Half-open after the time left; the one probe fails and reopens it.
        let left = layer.handle().snapshot()[0].half_open_in_secs.unwrap();
        tokio::time::advance(Duration::from_secs_f64(left)).await;
        upstream.push(&[503]);
        layer
            .layer(upstream.service())
            .oneshot(request(FLASH))
            .await
            .unwrap();
    }
    let opened = opened.lock().unwrap().clone();
    assert_eq!(
        opened,
        [30, 60, 60, 60, 60].map(Duration::from_secs),
        "doubling, capped at 60 s"
    );
}

/// During an outage callers wait on the open circuit. When the upstream recovers, the probes
/// close it and every waiting caller goes through: none fails at the moment of recovery.
#[tokio::test(start_paused = true)]
async fn callers_waiting_on_an_open_circuit_all_go_through_once_it_recovers() {
    let (mock, pool) = overloaded_two_projects().await;
    let breaker = CircuitBreakerLayer::new().open_duration(Duration::from_secs(10));
    let handle = breaker.handle();
    let gemini = ServiceBuilder::new()
        .layer(RetryLayer::for_pool(&pool).without_budget())
        .layer(breaker)
        .layer(KeyRotationLayer::new(&pool))
        .service(client());
    // The outage opens the circuit.
    for _ in 0..3 {
        let _ = gemini.clone().oneshot(generate(&mock, FLASH, "x")).await;
    }
    assert_eq!(handle.state(FLASH), Some(CircuitState::Open));
    // Thirty callers arrive and wait on it; meanwhile the upstream recovers.
    let callers: Vec<_> = (0..30)
        .map(|_| tokio::spawn(gemini.clone().oneshot(generate(&mock, FLASH, "x"))))
        .collect();
    tokio::task::yield_now().await;
    // Recovered, but answers take 2 s: callers keep arriving while the probes are out.
    mock.set_faults([Fault::latency(Duration::from_secs(2))]);
    let mut statuses = Vec::new();
    for caller in callers {
        match caller.await.unwrap() {
            Ok(response) => statuses.push(response.status().as_u16()),
            Err(error) => panic!("a waiting caller failed at recovery: {error}"),
        }
    }
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(handle.state(FLASH), Some(CircuitState::Closed));
}
