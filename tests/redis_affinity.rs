//! Two `gemini-gateway` processes share one Redis (issue #24): a conversation created through
//! one continues through the other on the project that holds it — the second replica never
//! saw the create, and finds the pin in Redis — and a client's interaction stays its own on
//! every replica.
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
