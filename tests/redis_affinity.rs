//! Two `gemini-gateway` processes share one Redis (issues #24 and #25): a conversation created
//! through one continues through the other on the project that holds it — the second replica
//! never saw the create, and finds the pin in Redis — and a client's interaction stays its own
//! on every replica. The same for an uploaded file: started on one replica, its bytes sent to
//! the other, used on the first.
//!
//! Needs Redis (see `tests/redis_store.rs`).
#![cfg(all(feature = "redis", feature = "gateway"))]

mod common;

use bytes::Bytes;
use common::redis::Redis;
use common::replica::replica;
use common::{client, text};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tower_gemini::mock::MockGemini;

const MODEL: &str = "gemini-2.5-flash";
const ALICE: &str = "client-token-alice-0001";
const MALLORY: &str = "client-token-mallory-01";
const KEYS: [(&str, &str); 3] = [
    ("proj-a", "test-key-replica-000a"),
    ("proj-b", "test-key-replica-000b"),
    ("proj-c", "test-key-replica-000c"),
];

/// `method path` on `base` as `token`: status, serving project, body.
async fn send(
    base: &str,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, String, String) {
    let request = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("x-goog-api-key", token)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    let response = client().request(request).await.unwrap();
    let status = response.status();
    let project = response
        .headers()
        .get("x-mock-project")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, project, text(response).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_continues_on_its_project_through_another_replica() {
    let Some(redis) = Redis::any("a_conversation_continues_on_its_project_through_another_replica")
    else {
        return;
    };
    let mut builder = MockGemini::builder();
    for (project, key) in KEYS {
        builder = builder.project(project, |p| p.key(key));
    }
    let mock = builder.start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("redis-affinity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    let keys: String = KEYS
        .iter()
        .map(|(project, key)| format!("[[keys]]\nvalue = \"{key}\"\nproject = \"{project}\"\n\n"))
        .collect();
    std::fs::write(
        &config,
        format!(
            "{keys}[gateway]\ntokens = [\"{ALICE}\", \"{MALLORY}\"]\nupstream = \"{}\"\nredis_prefix = \"{}\"\n",
            mock.url(),
            Redis::prefix("affinity"),
        ),
    )
    .unwrap();
    let replicas = [replica(&config, &redis.url), replica(&config, &redis.url)];

    for c in 0..6 {
        let mut previous: Option<String> = None;
        let mut home: Option<String> = None;
        for t in 0..4 {
            // Each turn through the other replica than the last.
            let base = &replicas[(c + t) % 2].base;
            let mut body = json!({ "model": MODEL, "input": format!("c{c} t{t}") });
            if let Some(previous) = &previous {
                body["previous_interaction_id"] = json!(previous);
            }
            let (status, project, answer) =
                send(base, ALICE, Method::POST, "/v1/interactions", Some(body)).await;
            assert_eq!(status, StatusCode::OK, "c{c} t{t}: {answer}");
            assert_eq!(
                home.get_or_insert_with(|| project.clone()),
                &project,
                "c{c} t{t}"
            );
            let json: Value = serde_json::from_str(&answer).unwrap();
            previous = json["id"].as_str().map(str::to_owned);
        }
        // Mallory, on either replica, is told it does not exist; nothing is sent for her.
        let id = previous.unwrap();
        let sent = mock.stats().total_requests();
        for replica in &replicas {
            let path = format!("/v1/interactions/{id}");
            let (status, _, answer) = send(&replica.base, MALLORY, Method::GET, &path, None).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
        }
        assert_eq!(mock.stats().total_requests(), sent);
    }
    assert_eq!(mock.stats().responses_with_status(404), 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_and_its_file_cross_replicas() {
    let Some(redis) = Redis::any("an_upload_and_its_file_cross_replicas") else {
        return;
    };
    let mut builder = MockGemini::builder();
    for (project, key) in KEYS {
        builder = builder.project(project, |p| p.key(key));
    }
    let mock = builder.start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("redis-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    let keys: String = KEYS
        .iter()
        .map(|(project, key)| format!("[[keys]]\nvalue = \"{key}\"\nproject = \"{project}\"\n\n"))
        .collect();
    std::fs::write(
        &config,
        format!(
            "{keys}[gateway]\ntokens = [\"{ALICE}\", \"{MALLORY}\"]\nupstream = \"{}\"\nredis_prefix = \"{}\"\n",
            mock.url(),
            Redis::prefix("files"),
        ),
    )
    .unwrap();
    let replicas = [replica(&config, &redis.url), replica(&config, &redis.url)];
    for round in 0..3 {
        let (first, second) = (&replicas[round % 2].base, &replicas[(round + 1) % 2].base);
        let start = Request::builder()
            .method(Method::POST)
            .uri(format!("{first}/upload/v1/files"))
            .header("x-goog-api-key", ALICE)
            .header("x-goog-upload-protocol", "resumable")
            .header("x-goog-upload-command", "start")
            .header("x-goog-upload-header-content-length", "5")
            .body(Full::new(Bytes::from_static(
                br#"{"file":{"display_name":"x"}}"#,
            )))
            .unwrap();
        let started = client().request(start).await.unwrap();
        assert_eq!(started.status(), StatusCode::OK);
        let home = started.headers()["x-mock-project"]
            .to_str()
            .unwrap()
            .to_owned();
        let session: http::Uri = started.headers()["x-goog-upload-url"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        // The bytes to the other replica, which never saw the start (no token, as an SDK).
        let step = Request::builder()
            .method(Method::POST)
            .uri(format!("{second}{}", session.path_and_query().unwrap()))
            .header("x-goog-upload-command", "upload, finalize")
            .header("x-goog-upload-offset", "0")
            .body(Full::new(Bytes::from_static(b"hello")))
            .unwrap();
        let done = client().request(step).await.unwrap();
        assert_eq!(done.status(), StatusCode::OK);
        let file: Value = serde_json::from_str(&text(done).await).unwrap();
        let uri = file["file"]["uri"].as_str().unwrap().to_owned();
        let question = json!({ "contents": [{ "parts": [
            { "fileData": { "fileUri": uri, "mimeType": "text/plain" } }, { "text": "?" }] }] });
        let generate = format!("/v1beta/models/{MODEL}:generateContent");
        for base in [first, second] {
            let (status, project, answer) =
                send(base, ALICE, Method::POST, &generate, Some(question.clone())).await;
            assert_eq!(
                (status, project.as_str()),
                (StatusCode::OK, home.as_str()),
                "{answer}"
            );
            let (status, _, _) = send(
                base,
                MALLORY,
                Method::POST,
                &generate,
                Some(question.clone()),
            )
            .await;
            assert_eq!(status, StatusCode::NOT_FOUND);
        }
    }
    assert_eq!(mock.stats().responses_with_status(403), 0);
    let _ = std::fs::remove_dir_all(dir);
}
