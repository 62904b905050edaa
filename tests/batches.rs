//! Batch Mode through the stack (issue #25), over real HTTP to the mock with three projects,
//! each keeping its own batches (another project's key gets Google's 404) and files: a batch is
//! learned from its create and polled, cancelled and deleted on its project; a batch over an
//! uploaded file goes to the file's project, and its results file is pinned with it and
//! downloaded there; Batch Mode's limits are counted per project (a batch goes where there is
//! room, and is refused when there is none, with nothing sent); a tenant cannot touch
//! another's; a batch is priced at Google's batch rate. The mock's clock is injected: a batch is
//! done when the clock passes its delay.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{served_by, text};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_gemini::affinity::{AffinityLayer, BatchLimits};
use tower_gemini::clock::ManualClock;
use tower_gemini::context::Tenant;
use tower_gemini::cost::{CostLayer, Prices, Scope};
use tower_gemini::mock::{MockGemini, MockServer};
use tower_gemini::quota::{BytesPerToken, TokenEstimator};
use tower_gemini::{BoxGemini, ErrorKind, KeyPool, KeySpec, stack};

const MODEL: &str = "gemini-2.5-flash";
const KEYS: [(&str, &str); 3] = [
    ("proj-a", "test-key-batch-0000a"),
    ("proj-b", "test-key-batch-0000b"),
    ("proj-c", "test-key-batch-0000c"),
];

async fn mock(clock: &ManualClock) -> MockServer {
    let mut builder = MockGemini::builder()
        .clock(clock.clone())
        .background_delay(Duration::from_secs(60));
    for (project, key) in KEYS {
        builder = builder.project(project, |p| p.key(key));
    }
    builder.start().await.unwrap()
}

fn pool() -> KeyPool {
    let mut builder = KeyPool::builder();
    for (project, key) in KEYS {
        builder = builder.key_with(KeySpec::new(key).project(project));
    }
    builder.build().unwrap()
}

fn gemini(pool: &KeyPool, limits: BatchLimits) -> BoxGemini {
    stack(pool)
        .affinity(AffinityLayer::new(pool).batch_limits(limits))
        .boxed(common::client())
}

fn request(method: Method, url: &str, body: Option<Value>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap()
}

fn inline_batch(questions: usize) -> Value {
    let requests: Vec<Value> = (0..questions)
        .map(|i| {
            json!({ "request": {
                "contents": [{ "parts": [{ "text": format!("question {i} {}", "x".repeat(400)) }] }],
                "generationConfig": { "maxOutputTokens": 100 } },
              "metadata": { "key": format!("q{i}") } })
        })
        .collect();
    json!({ "batch": { "display_name": "job",
        "input_config": { "requests": { "requests": requests } } } })
}

fn create(mock: &MockServer, body: Value) -> Request<Full<Bytes>> {
    request(
        Method::POST,
        &mock.model_url(MODEL, "batchGenerateContent"),
        Some(body),
    )
}

async fn json_of<B>(response: http::Response<B>) -> Value
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    serde_json::from_str(&text(response).await).unwrap()
}

/// `GET`, `POST` or `DELETE` of `batches/{id}…` through `gemini`: status, serving key, JSON.
async fn call(
    gemini: &BoxGemini,
    mock: &MockServer,
    method: Method,
    path: &str,
) -> (StatusCode, String, Value) {
    let answer = gemini
        .clone()
        .oneshot(request(
            method,
            &format!("{}/v1beta/{path}", mock.url()),
            None,
        ))
        .await
        .unwrap();
    let (status, by) = (answer.status(), served_by(&answer));
    (status, by, json_of(answer).await)
}

#[tokio::test]
async fn an_inline_batch_is_polled_cancelled_and_deleted_on_its_project() {
    let clock = ManualClock::at(jiff::Timestamp::now());
    let mock = mock(&clock).await;
    let pool = pool();
    let gemini = gemini(&pool, BatchLimits::default());
    let made = gemini
        .clone()
        .oneshot(create(&mock, inline_batch(3)))
        .await
        .unwrap();
    assert_eq!(made.status(), StatusCode::OK);
    let home = served_by(&made);
    let batch = json_of(made).await["name"].as_str().unwrap().to_owned();
    assert!(pool.owner_of(&batch).is_some(), "learned from the create");
    for _ in 0..4 {
        let (status, by, state) = call(&gemini, &mock, Method::GET, &batch).await;
        assert_eq!((status, by.as_str()), (StatusCode::OK, home.as_str()));
        assert_eq!(state["done"], false);
    }
    clock.advance(Duration::from_secs(61));
    let (_, by, done) = call(&gemini, &mock, Method::GET, &batch).await;
    assert_eq!(by, home);
    let results = done["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
        .as_array()
        .unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[2]["metadata"]["key"], "q2");
    let (status, _, _) = call(&gemini, &mock, Method::DELETE, &batch).await;
    assert_eq!(status, StatusCode::OK);
    assert!(pool.owner_of(&batch).is_none(), "a delete forgets the pin");

    // Cancelled before it is done: its project's.
    let made = gemini
        .clone()
        .oneshot(create(&mock, inline_batch(1)))
        .await
        .unwrap();
    let home = served_by(&made);
    let batch = json_of(made).await["name"].as_str().unwrap().to_owned();
    let (status, by, _) = call(&gemini, &mock, Method::POST, &format!("{batch}:cancel")).await;
    assert_eq!((status, by), (StatusCode::OK, home));
    let (_, _, cancelled) = call(&gemini, &mock, Method::GET, &batch).await;
    assert_eq!(cancelled["metadata"]["state"], "BATCH_STATE_CANCELLED");
    assert_eq!(mock.stats().responses_with_status(404), 0);
}

/// A batch whose requests are in an uploaded file goes to the file's project; its results
/// file is pinned with it when its state is read, and downloaded there.
#[tokio::test]
async fn a_file_batch_follows_its_file_and_its_results_follow_it() {
    let clock = ManualClock::at(jiff::Timestamp::now());
    let mock = mock(&clock).await;
    let pool = pool();
    let gemini = gemini(&pool, BatchLimits::default());
    // Upload the JSONL requests (resumable, through the stack).
    let lines: String = (0..3)
        .map(|i| format!("{}\n", json!({ "key": format!("r{i}"), "request": { "contents": [{ "parts": [{ "text": "hi" }] }] } })))
        .collect();
    let mut start = request(
        Method::POST,
        &format!("{}/upload/v1beta/files", mock.url()),
        Some(json!({ "file": { "display_name": "requests" } })),
    );
    start
        .headers_mut()
        .insert("x-goog-upload-protocol", "resumable".parse().unwrap());
    start
        .headers_mut()
        .insert("x-goog-upload-command", "start".parse().unwrap());
    let started = gemini.clone().oneshot(start).await.unwrap();
    let file_home = served_by(&started);
    let session = started.headers()["x-goog-upload-url"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut step = Request::post(session)
        .body(Full::new(Bytes::from(lines)))
        .unwrap();
    step.headers_mut()
        .insert("x-goog-upload-command", "upload, finalize".parse().unwrap());
    step.headers_mut()
        .insert("x-goog-upload-offset", "0".parse().unwrap());
    let file = json_of(gemini.clone().oneshot(step).await.unwrap()).await;
    let input = file["file"]["name"].as_str().unwrap().to_owned();

    for _ in 0..3 {
        let body = json!({ "batch": { "input_config": { "file_name": input } } });
        let made = gemini.clone().oneshot(create(&mock, body)).await.unwrap();
        assert_eq!(
            (made.status(), served_by(&made)),
            (StatusCode::OK, file_home.clone())
        );
        let batch = json_of(made).await["name"].as_str().unwrap().to_owned();
        clock.advance(Duration::from_secs(61));
        let (_, by, done) = call(&gemini, &mock, Method::GET, &batch).await;
        assert_eq!(by, file_home);
        let results = done["metadata"]["output"]["responsesFile"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(done["response"]["responsesFile"], results.as_str());
        assert_eq!(
            pool.owner_of(&results).map(|o| o.project_name().to_owned()),
            pool.owner_of(&batch).map(|o| o.project_name().to_owned()),
            "the results file is pinned with its batch"
        );
        let download = format!(
            "{}/download/v1beta/{results}:download?alt=media",
            mock.url()
        );
        let answer = gemini
            .clone()
            .oneshot(request(Method::GET, &download, None))
            .await
            .unwrap();
        assert_eq!(
            (answer.status(), served_by(&answer)),
            (StatusCode::OK, file_home.clone())
        );
        let jsonl = text(answer).await;
        assert!(
            jsonl.lines().count() >= 1 && jsonl.contains("Mock batch reply"),
            "{jsonl}"
        );
    }
    assert_eq!(mock.stats().responses_with_status(403), 0);
    assert_eq!(mock.stats().responses_with_status(404), 0);
}

/// With one batch at a time per project, three batches go to three projects, and a fourth is
/// refused with nothing sent; once one is read done, there is room again.
#[tokio::test]
async fn batches_go_where_there_is_room_and_are_refused_when_there_is_none() {
    let clock = ManualClock::at(jiff::Timestamp::now());
    let mock = mock(&clock).await;
    let pool = pool();
    let gemini = gemini(&pool, BatchLimits::new(1, None));
    let mut homes = std::collections::HashSet::new();
    let mut first = None;
    for _ in 0..3 {
        let made = gemini
            .clone()
            .oneshot(create(&mock, inline_batch(1)))
            .await
            .unwrap();
        assert_eq!(made.status(), StatusCode::OK);
        homes.insert(served_by(&made));
        let name = json_of(made).await["name"].as_str().unwrap().to_owned();
        first.get_or_insert(name);
    }
    assert_eq!(homes.len(), 3, "one batch per project");
    let sent = mock.stats().total_requests();
    let full = gemini
        .clone()
        .oneshot(create(&mock, inline_batch(1)))
        .await
        .unwrap_err();
    assert_eq!(full.kind(), ErrorKind::QuotaExhausted, "{full}");
    assert_eq!(mock.stats().total_requests(), sent, "nothing sent");
    clock.advance(Duration::from_secs(61));
    let (_, _, done) = call(&gemini, &mock, Method::GET, first.as_ref().unwrap()).await;
    assert_eq!(done["done"], true);
    let made = gemini
        .clone()
        .oneshot(create(&mock, inline_batch(1)))
        .await
        .unwrap();
    assert_eq!(made.status(), StatusCode::OK);
}

/// A tenant's batch is its own: another tenant's get, cancel or delete is `NotFound`.
#[tokio::test]
async fn a_tenant_cannot_touch_another_tenants_batch() {
    let clock = ManualClock::at(jiff::Timestamp::now());
    let mock = mock(&clock).await;
    let pool = pool();
    let gemini = gemini(&pool, BatchLimits::default());
    let mut mine = create(&mock, inline_batch(1));
    mine.extensions_mut().insert(Tenant::new("alice"));
    let made = gemini.clone().oneshot(mine).await.unwrap();
    let batch = json_of(made).await["name"].as_str().unwrap().to_owned();
    let sent = mock.stats().total_requests();
    let at = format!("{}/v1beta/{batch}", mock.url());
    for attempt in [
        request(Method::GET, &at, None),
        request(Method::POST, &format!("{at}:cancel"), None),
        request(Method::DELETE, &at, None),
    ] {
        let mut attempt = attempt;
        attempt.extensions_mut().insert(Tenant::new("mallory"));
        let error = gemini.clone().oneshot(attempt).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");
    }
    assert_eq!(mock.stats().total_requests(), sent);
}

/// A batch is billed at its create at Google's batch rate: half its estimate (its prompts and
/// each request's maximum output), its answer showing no usage.
#[tokio::test]
async fn a_batch_is_priced_at_the_batch_rate() {
    let clock = ManualClock::at(jiff::Timestamp::now());
    let mock = mock(&clock).await;
    let pool = pool();
    let cost = CostLayer::new();
    let spend = cost.spend().clone();
    let gemini = cost.layer(gemini(&pool, BatchLimits::default()));
    let body = inline_batch(4);
    let made = gemini
        .clone()
        .oneshot(create(&mock, body.clone()))
        .await
        .unwrap();
    assert_eq!(made.status(), StatusCode::OK);
    let _ = text(made).await;
    let price = *Prices::default().get(MODEL).unwrap();
    let prompt = BytesPerToken::default()
        .estimate(body.to_string().as_bytes())
        .tokens;
    let expected = price.nano_usd(prompt, 0, 4 * 100) / 2;
    let spent = spend.today_usd(&Scope::Pool);
    assert!(
        (spent - expected as f64 / 1e9).abs() < 1e-9,
        "spent {spent}, expected {}",
        expected as f64 / 1e9
    );
    assert!(spent > 0.0);
}
