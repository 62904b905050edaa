//! Excess load becomes latency, not errors: waiting for a key across the whole stack, first come
//! first served, without spending the retry budget; and limits learned from Google's first 429
//! prevent the next ones. Real HTTP to the mock, paused time.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{HttpClient, client, generate};
use http::StatusCode;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_gemini::mock::{Fault, MockGemini, MockServer};
use tower_gemini::pool::ModelLimits;
use tower_gemini::retry::{RetryBudget, RetryLayer};
use tower_gemini::{ErrorKind, GeminiService, KeyPool, KeySpec, stack};

const FLASH: &str = "gemini-2.0-flash";

fn rpm(n: u32) -> ModelLimits {
    ModelLimits {
        rpm: Some(n),
        ..Default::default()
    }
}

fn key(project: usize) -> String {
    format!("test-key-{project:04}")
}

/// `projects` projects of one key each, `limit` RPM for every model on the mock.
async fn mock_of(projects: usize, limit: u32) -> MockServer {
    (0..projects)
        .fold(MockGemini::builder(), |builder, p| {
            builder.project(format!("proj-{p}"), |project| {
                project.key(key(p)).default_limits(rpm(limit))
            })
        })
        .start()
        .await
        .unwrap()
}

/// The matching pool; with `configured`, the pool knows the limit, else it must learn it.
fn pool_of(projects: usize, configured: Option<u32>) -> KeyPool {
    let builder = (0..projects).fold(KeyPool::builder(), |builder, p| {
        builder.key_with(KeySpec::new(key(p)).project(format!("proj-{p}")))
    });
    match configured {
        Some(limit) => builder.model_limits(FLASH, rpm(limit)),
        None => builder,
    }
    .build()
    .unwrap()
}

#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    failed: Vec<String>,
}

/// `callers` callers, each sending its next request as soon as the last is answered, until
/// `duration` has passed.
async fn closed_loop(
    gemini: GeminiService<HttpClient>,
    mock: &MockServer,
    callers: usize,
    duration: Duration,
) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let end = Instant::now() + duration;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let gemini = gemini.clone();
            let tally = tally.clone();
            let request = generate(mock, FLASH, "hello");
            tokio::spawn(async move {
                while Instant::now() < end {
                    let outcome = gemini.clone().oneshot(request.clone()).await;
                    let mut tally = tally.lock().unwrap();
                    match outcome {
                        Ok(response) if response.status() == StatusCode::OK => tally.ok += 1,
                        Ok(response) => tally.failed.push(response.status().to_string()),
                        Err(error) => tally.failed.push(error.to_string()),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    Arc::into_inner(tally).unwrap().into_inner().unwrap()
}

/// The measurement: 20 callers over 5 projects × 60 RPM for two minutes. Every caller
/// is served (the excess waits), and Google never sees more than 60 per project in any 60 s.
#[tokio::test(start_paused = true)]
async fn overload_becomes_latency_not_errors() {
    let mock = mock_of(5, 60).await;
    let pool = pool_of(5, Some(60));
    let gemini = stack(&pool)
        .wait_up_to(Duration::from_secs(120))
        .layer(client());
    let tally = closed_loop(gemini, &mock, 20, Duration::from_secs(120)).await;
    assert!(
        tally.failed.is_empty(),
        "{} failures: {:?}",
        tally.failed.len(),
        &tally.failed[..tally.failed.len().min(5)]
    );
    assert_eq!(
        mock.stats().responses_with_status(429),
        0,
        "{:?}",
        mock.stats().statuses()
    );
    // Three windows' worth: at 0 s, 60 s and 120 s (the last callers start just before the end).
    assert!(tally.ok >= 600, "{tally:?}");
    for p in 0..5 {
        assert!(
            mock.stats().requests_for(&key(p)) >= 120,
            "project {p} was used fully"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order_one_slot_at_a_time() {
    let mock = mock_of(1, 1).await;
    let pool = pool_of(1, Some(1));
    let gemini = stack(&pool)
        .wait_up_to(Duration::from_secs(600))
        .layer(client());
    let start = Instant::now();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for id in 0..5 {
        let (gemini, order, request) = (gemini.clone(), order.clone(), generate(&mock, FLASH, "x"));
        tasks.push(tokio::spawn(async move {
            let response = gemini.oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            order.lock().unwrap().push((id, start.elapsed().as_secs()));
        }));
        // Arrive one after the other.
        tokio::task::yield_now().await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    // A slot frees a minute and the skew margin (0.5 s) after it was taken.
    assert_eq!(order, [(0, 0), (1, 60), (2, 121), (3, 181), (4, 242)]);
    assert_eq!(mock.stats().responses_with_status(429), 0);
}

#[tokio::test(start_paused = true)]
async fn without_a_wait_bound_the_stack_fails_fast_with_the_dimension() {
    let mock = mock_of(2, 1).await;
    let pool = pool_of(2, Some(1));
    let gemini = stack(&pool).layer(client());
    for _ in 0..2 {
        let response = gemini
            .clone()
            .oneshot(generate(&mock, FLASH, "x"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let start = Instant::now();
    let error = gemini
        .oneshot(generate(&mock, FLASH, "x"))
        .await
        .unwrap_err();
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "no silent hang in a web handler"
    );
    assert_eq!(error.kind(), ErrorKind::QuotaExhausted);
    assert_eq!(
        error.dimension(),
        Some(tower_gemini::quota::Dimension::RequestsPerMinute)
    );
    assert_eq!(error.retry_after(), Some(Duration::from_millis(60_500)));
    assert_eq!(error.status_code(), StatusCode::TOO_MANY_REQUESTS);
    assert!(error.to_string().contains("rpm limit"), "{error}");
    assert_eq!(mock.stats().total_requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn waiting_spends_no_retry_budget() {
    let mock = mock_of(2, 2).await;
    let pool = pool_of(2, Some(2));
    // Ten retries in all, and none earned by calls.
    let budget = RetryBudget::new(Duration::from_secs(10), 1, 0.0);
    let gemini = stack(&pool)
        .retry(RetryLayer::for_pool(&pool).budget(budget))
        .wait_up_to(Duration::from_secs(120))
        .layer(client());
    // Thirty requests for four slots a minute: most of them wait, some for minutes.
    let tasks: Vec<_> = (0..30)
        .map(|_| tokio::spawn(gemini.clone().oneshot(generate(&mock, FLASH, "x"))))
        .collect();
    let mut served = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(response) if response.status() == StatusCode::OK => served += 1,
            Ok(response) => panic!("{}", response.status()),
            // Waiting beyond the bound is refused with when to come back.
            Err(error) => assert_eq!(error.kind(), ErrorKind::QuotaExhausted, "{error}"),
        }
    }
    assert!(served >= 8, "{served}: four slots at 0 s, four at 60 s");
    assert_eq!(mock.stats().responses_with_status(429), 0);
    // The budget is whole: a real upstream failure is still retried.
    tokio::time::advance(Duration::from_secs(61)).await;
    mock.set_faults([Fault::overloaded(1.0)]);
    let before = mock.stats().total_requests();
    let response = gemini.oneshot(generate(&mock, FLASH, "x")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        mock.stats().total_requests() - before,
        4,
        "all four attempts were allowed"
    );
}

/// No local limit configured: the pool learns it from Google's first 429 on each project and
/// from then on admits only what Google will take.
#[tokio::test(start_paused = true)]
async fn after_the_first_429_a_learned_limit_prevents_the_next() {
    let mock = mock_of(2, 10).await;
    let pool = pool_of(2, None);
    let gemini = stack(&pool)
        .wait_up_to(Duration::from_secs(120))
        .layer(client());
    // The first minute: each project meets its limit once (and the requests already on their
    // way when Google's first 429 came back meet it too).
    let first = closed_loop(gemini.clone(), &mock, 6, Duration::from_secs(60)).await;
    assert!(
        first.failed.is_empty(),
        "{:?}",
        &first.failed[..first.failed.len().min(5)]
    );
    let learned: Vec<u64> = (0..2)
        .map(|p| mock.stats().rate_limited_for(&key(p)))
        .collect();
    assert!(learned.iter().all(|&n| (1..=6).contains(&n)), "{learned:?}");
    // Four more minutes of steady load: not one more 429.
    let steady = closed_loop(gemini, &mock, 6, Duration::from_secs(240)).await;
    assert!(
        steady.failed.is_empty(),
        "{:?}",
        &steady.failed[..steady.failed.len().min(5)]
    );
    let after: Vec<u64> = (0..2)
        .map(|p| mock.stats().rate_limited_for(&key(p)))
        .collect();
    assert_eq!(after, learned, "{:?}", mock.stats().statuses());
    assert!(steady.ok >= 80, "{steady:?}");
}

/// The same with spread-out traffic: requests sent at different times of the minute before the
/// 429 free at different times, and the ledger knows which.
#[tokio::test(start_paused = true)]
async fn a_learned_limit_accounts_for_what_google_already_counted() {
    let mock = mock_of(1, 4).await;
    // The window alone: this checks when the ledger frees what Google counted (paced, the
    // same slots are taken at their turns).
    let pool = (0..1)
        .fold(KeyPool::builder(), |builder, p| {
            builder.key_with(KeySpec::new(key(p)).project(format!("proj-{p}")))
        })
        .pacing(tower_gemini::state::Pacing::Off)
        .build()
        .unwrap();
    let gemini = stack(&pool)
        .wait_up_to(Duration::from_secs(120))
        .layer(client());
    let send = || gemini.clone().oneshot(generate(&mock, FLASH, "x"));
    // Two at 0 s, two at 30 s: Google's window is full until 60 s, then half full until 90 s.
    for at in [0, 30] {
        for _ in 0..2 {
            assert_eq!(send().await.unwrap().status(), StatusCode::OK);
        }
        if at == 0 {
            tokio::time::advance(Duration::from_secs(30)).await;
        }
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    // The fifth meets Google's 429 (retry in 25 s); the pool learns 4 RPM and waits.
    let start = Instant::now();
    let response = send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_millis(25_500));
    // At 60 s two slots freed and one is used; the next frees only at 90 s.
    assert_eq!(send().await.unwrap().status(), StatusCode::OK);
    let start = Instant::now();
    assert_eq!(send().await.unwrap().status(), StatusCode::OK);
    // (Within a second: the ledger places requests learned this way at the end of their second.)
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
        "{waited:?}"
    );
    assert_eq!(mock.stats().responses_with_status(429), 1);
}

/// Time in line for a key is not upstream latency: a breaker counting slow calls does not
/// count a request that waited a minute for its slot and was then answered at once.
#[tokio::test(start_paused = true)]
async fn waiting_in_line_is_not_a_slow_call() {
    use tower_gemini::circuit_breaker::{CircuitBreakerLayer, CircuitState};

    let mock = mock_of(1, 1).await;
    let pool = pool_of(1, Some(1));
    let breaker = CircuitBreakerLayer::new()
        .minimum_calls(1)
        .slow_call(Duration::from_secs(5));
    let handle = breaker.handle();
    let gemini = stack(&pool)
        .circuit_breaker(breaker)
        .wait_up_to(Duration::from_secs(120))
        .layer(client());
    for _ in 0..2 {
        let response = gemini
            .clone()
            .oneshot(generate(&mock, FLASH, "x"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let circuit = &handle.snapshot()[0];
    assert_eq!(circuit.state, CircuitState::Closed);
    assert_eq!((circuit.calls, circuit.failures), (2, 0));
}
