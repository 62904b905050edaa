//! Batch Mode through `gemini-gateway` (issue #25), over real HTTP with the mock's three
//! projects and an injected clock: a client's inline batch is polled on its project and listed
//! as its own; a batch over the client's uploaded file goes to the file's project and its
//! results are downloaded there; another client can neither read, cancel, delete, list nor
//! download any of it, nor make a batch of the first client's file, and nothing of that reaches
//! Google; a webhook is refused.
#![cfg(feature = "gateway")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::gateway::{Gateway, config_from, start};
use common::{client, text};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tower_gemini::clock::ManualClock;
use tower_gemini::mock::{MockGemini, MockServer};

const ALICE: &str = "client-token-alice-0001";
const MALLORY: &str = "client-token-mallory-01";
const KEYS: [&str; 3] = [
    "test-key-gwbatch-0001",
    "test-key-gwbatch-0002",
    "test-key-gwbatch-0003",
];
const MODEL: &str = "gemini-2.5-flash";

async fn setup() -> (MockServer, ManualClock, Gateway) {
    let clock = ManualClock::at(jiff::Timestamp::now());
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key(KEYS[0]))
        .project("proj-b", |p| p.key(KEYS[1]))
        .project("proj-c", |p| p.key(KEYS[2]))
        .clock(clock.clone())
        .background_delay(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let keys = KEYS.join(",");
    let tokens = format!("{ALICE},{MALLORY}");
    let upstream = mock.url();
    let gateway = start(config_from(&[
        ("GEMINI_API_KEY", keys.as_str()),
        ("GATEWAY_TOKENS", tokens.as_str()),
        ("LLM_API_ENDPOINT", upstream.as_str()),
        ("LLM_MODEL", MODEL),
    ]))
    .await;
    (mock, clock, gateway)
}

/// `method path` as `token` with `headers`: status, serving project, headers and body text.
async fn send(
    gateway: &Gateway,
    token: &str,
    (method, path): (Method, &str),
    headers: &[(&str, &str)],
    body: Bytes,
) -> (StatusCode, String, http::HeaderMap, String) {
    let url = if path.starts_with("http") {
        path.to_owned()
    } else {
        format!("{}{path}", gateway.base)
    };
    let mut request = Request::builder()
        .method(method)
        .uri(url)
        .header("x-goog-api-key", token)
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client()
        .request(request.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let project = headers
        .get("x-mock-project")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, project, headers, text(response).await)
}

async fn json_call(
    gateway: &Gateway,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, String, Value) {
    let body = Bytes::from(body.map(|b| b.to_string()).unwrap_or_default());
    let (status, project, _, text) = send(gateway, token, (method, path), &[], body).await;
    (
        status,
        project,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

fn inline(questions: usize) -> Value {
    let requests: Vec<Value> = (0..questions)
        .map(|i| {
            json!({ "request": { "contents": [{ "parts": [{ "text": format!("q{i}") }] }] },
                         "metadata": { "key": format!("q{i}") } })
        })
        .collect();
    json!({ "batch": { "display_name": "job", "input_config": { "requests": { "requests": requests } } } })
}

const CREATE: &str = "/v1/models/gemini-2.5-flash:batchGenerateContent";

#[tokio::test]
async fn a_clients_inline_batch_is_its_own() {
    let (mock, clock, gateway) = setup().await;
    let (status, home, made) =
        json_call(&gateway, ALICE, Method::POST, CREATE, Some(inline(3))).await;
    assert_eq!(status, StatusCode::OK, "{made}");
    let batch = made["name"].as_str().unwrap().to_owned();
    let at = format!("/v1/{batch}");
    let (_, project, pending) = json_call(&gateway, ALICE, Method::GET, &at, None).await;
    assert_eq!(
        (project.as_str(), &pending["done"]),
        (home.as_str(), &json!(false))
    );
    clock.advance(Duration::from_secs(61));
    let (_, project, done) = json_call(&gateway, ALICE, Method::GET, &at, None).await;
    assert_eq!(project, home);
    let results = &done["metadata"]["output"]["inlinedResponses"]["inlinedResponses"];
    assert_eq!(results.as_array().map(Vec::len), Some(3), "{done}");
    let (_, _, listed) = json_call(&gateway, ALICE, Method::GET, "/v1beta/batches", None).await;
    assert_eq!(listed["operations"][0]["name"], batch.as_str(), "{listed}");

    let sent = mock.stats().total_requests();
    for (method, path) in [
        (Method::GET, at.clone()),
        (Method::POST, format!("{at}:cancel")),
        (Method::DELETE, at.clone()),
    ] {
        let (status, _, body) = json_call(&gateway, MALLORY, method.clone(), &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
    }
    let (_, _, theirs) = json_call(&gateway, MALLORY, Method::GET, "/v1/batches", None).await;
    assert_eq!(theirs["operations"].as_array().map(Vec::len), Some(0));
    assert_eq!(
        mock.stats().total_requests(),
        sent,
        "nothing reached Google"
    );

    let hooked = json!({ "batch": { "webhookConfig": { "uris": ["https://example.com/hook"] },
        "input_config": { "requests": { "requests": [] } } } });
    let (status, _, _) = json_call(&gateway, ALICE, Method::POST, CREATE, Some(hooked)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = json_call(&gateway, ALICE, Method::DELETE, &at, None).await;
    assert_eq!(status, StatusCode::OK);
}

/// Upload a JSONL of requests as `token` (the resumable protocol): its name and project.
async fn upload_requests(gateway: &Gateway, token: &str) -> (String, String) {
    let lines: String = (0..4)
        .map(|i| format!("{}\n", json!({ "key": format!("r{i}"), "request": { "contents": [{ "parts": [{ "text": "hi" }] }] } })))
        .collect();
    let size = lines.len().to_string();
    let (status, home, headers, _) = send(
        gateway,
        token,
        (Method::POST, "/upload/v1/files"),
        &[
            ("x-goog-upload-protocol", "resumable"),
            ("x-goog-upload-command", "start"),
            ("x-goog-upload-header-content-length", &size),
        ],
        Bytes::from_static(br#"{"file":{"display_name":"requests"}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let session = headers["x-goog-upload-url"].to_str().unwrap().to_owned();
    let (status, _, _, file) = send(
        gateway,
        token,
        (Method::POST, &session),
        &[
            ("x-goog-upload-command", "upload, finalize"),
            ("x-goog-upload-offset", "0"),
        ],
        Bytes::from(lines),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{file}");
    let file: Value = serde_json::from_str(&file).unwrap();
    (file["file"]["name"].as_str().unwrap().to_owned(), home)
}

/// A batch whose inline requests name the client's uploaded file runs on the file's project;
/// another client's batch naming that file is a 404 with nothing sent; a batch whose requests
/// are in a file is refused (the gateway does not read it).
#[tokio::test]
async fn a_batch_naming_a_file_runs_on_its_project_and_file_batches_are_refused() {
    let (mock, clock, gateway) = setup().await;
    let (file, home) = upload_requests(&gateway, ALICE).await;
    let naming = json!({ "batch": { "input_config": { "requests": { "requests": [
        { "request": { "contents": [{ "parts": [
            { "file_data": { "file_uri": file, "mime_type": "text/plain" } },
            { "text": "summarise" }] }] } }
    ] } } } });
    let sent = mock.stats().total_requests();
    let (status, _, stolen) = json_call(
        &gateway,
        MALLORY,
        Method::POST,
        CREATE,
        Some(naming.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another's file: {stolen}");
    let from_file = json!({ "batch": { "inputConfig": { "fileName": file } } });
    let (status, _, refused) =
        json_call(&gateway, ALICE, Method::POST, CREATE, Some(from_file)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert_eq!(
        mock.stats().total_requests(),
        sent,
        "nothing reached Google"
    );
    for _ in 0..3 {
        let (status, project, made) =
            json_call(&gateway, ALICE, Method::POST, CREATE, Some(naming.clone())).await;
        assert_eq!(
            (status, project.as_str()),
            (StatusCode::OK, home.as_str()),
            "{made}"
        );
        let at = format!("/v1beta/{}", made["name"].as_str().unwrap());
        clock.advance(Duration::from_secs(61));
        let (_, project, done) = json_call(&gateway, ALICE, Method::GET, &at, None).await;
        assert_eq!(
            (project.as_str(), &done["done"]),
            (home.as_str(), &json!(true))
        );
    }
}
