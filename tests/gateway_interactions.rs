//! The Interactions API through `gemini-gateway` (issue #24), over real HTTP with the mock's
//! three projects: conversations under `/v1` and `/v1beta`, streamed or not, stay in their
//! project; one client cannot get, continue, cancel or delete another's interaction (404 in the
//! API's shape, nothing sent); the cache never stores an interaction; the status API shows
//! counts per client, never names.
#![cfg(feature = "gateway")]

mod common;

use bytes::Bytes;
use common::gateway::{Gateway, config_from, start};
use common::{client, text};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tower_gemini::cache::CacheLayer;
use tower_gemini::gateway::{GatewayConfig, Saving};
use tower_gemini::mock::{MockGemini, MockServer};

const ALICE: &str = "client-token-alice-0001";
const MALLORY: &str = "client-token-mallory-01";
const ADMIN: &str = "admin-token-interact-01";
const KEYS: [&str; 3] = [
    "test-key-interact-0001",
    "test-key-interact-0002",
    "test-key-interact-0003",
];
const MODEL: &str = "gemini-2.5-flash";

async fn mock() -> MockServer {
    MockGemini::builder()
        .project("proj-a", |p| p.key(KEYS[0]))
        .project("proj-b", |p| p.key(KEYS[1]))
        .project("proj-c", |p| p.key(KEYS[2]))
        .start()
        .await
        .unwrap()
}

fn config(mock: &MockServer) -> GatewayConfig {
    let keys = KEYS.join(",");
    let tokens = format!("{ALICE},{MALLORY}");
    let upstream = mock.url();
    config_from(&[
        ("GEMINI_API_KEY", keys.as_str()),
        ("GATEWAY_TOKENS", tokens.as_str()),
        ("ADMIN_TOKEN", ADMIN),
        ("LLM_API_ENDPOINT", upstream.as_str()),
        ("LLM_MODEL", MODEL),
    ])
}

async fn gateway(mock: &MockServer) -> Gateway {
    start(config(mock)).await
}

struct Answer {
    status: StatusCode,
    project: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The interaction's id, from a JSON answer or the first SSE frame.
    fn id(&self) -> String {
        let json = match self.body.lines().find_map(|l| l.strip_prefix("data: ")) {
            Some(line) if self.body.starts_with("event:") => {
                serde_json::from_str::<Value>(line).unwrap()["interaction"].clone()
            }
            _ => self.json(),
        };
        json["id"].as_str().unwrap_or_default().to_owned()
    }
}

async fn send(
    gateway: &Gateway,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let request = Request::builder()
        .method(method)
        .uri(format!("{}{path}", gateway.base))
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
    Answer {
        status,
        project,
        body: text(response).await,
    }
}

fn turn(input: &str, previous: Option<&str>, stream: bool) -> Value {
    let mut body = json!({ "model": MODEL, "input": input, "stream": stream });
    if let Some(previous) = previous {
        body["previous_interaction_id"] = json!(previous);
    }
    body
}

/// Six conversations of three turns, under both prefixes, half streamed: every turn of a
/// conversation is served by the project that holds it (the mock answers 404 elsewhere).
#[tokio::test]
async fn conversations_through_the_gateway_stay_in_their_projects() {
    let mock = mock().await;
    let gateway = gateway(&mock).await;
    for c in 0..6 {
        let prefix = if c % 2 == 0 { "/v1" } else { "/v1beta" };
        let stream = c % 3 == 0;
        let path = format!("{prefix}/interactions");
        let mut previous: Option<String> = None;
        let mut home = None;
        for t in 0..3 {
            let body = turn(&format!("c{c} t{t}"), previous.as_deref(), stream);
            let answer = send(&gateway, ALICE, Method::POST, &path, Some(body)).await;
            assert_eq!(answer.status, StatusCode::OK, "c{c} t{t}: {}", answer.body);
            let home = home.get_or_insert_with(|| answer.project.clone());
            assert_eq!(&answer.project, home, "c{c} t{t}");
            assert!(
                answer.body.contains(&format!("turn {}", t + 1)),
                "{}",
                answer.body
            );
            previous = Some(answer.id());
        }
        // Resuming the last turn's stream after its first event, on its project.
        let id = previous.unwrap();
        let resumed = send(
            &gateway,
            ALICE,
            Method::GET,
            &format!("{prefix}/interactions/{id}?stream=true&last_event_id=e0"),
            None,
        )
        .await;
        assert_eq!(resumed.status, StatusCode::OK);
        assert_eq!(&resumed.project, home.as_ref().unwrap());
        assert!(
            !resumed.body.contains("interaction.created"),
            "{}",
            resumed.body
        );
        assert!(
            resumed.body.contains("interaction.completed"),
            "{}",
            resumed.body
        );
    }
    assert_eq!(mock.stats().responses_with_status(404), 0);
}

/// Mallory cannot get, continue, cancel or delete Alice's interaction, nor find one by
/// guessing: 404 in the Interactions shape, and not one request reaches Google.
#[tokio::test]
async fn one_client_cannot_reach_anothers_interactions() {
    let mock = mock().await;
    let gateway = gateway(&mock).await;
    let mut background = turn("long job", None, false);
    background["background"] = json!(true);
    let made = send(
        &gateway,
        ALICE,
        Method::POST,
        "/v1/interactions",
        Some(background),
    )
    .await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.body);
    let id = made.id();
    let sent = mock.stats().total_requests();
    let base = format!("/v1/interactions/{id}");
    let attempts = [
        (Method::GET, base.clone(), None),
        (Method::GET, format!("{base}?stream=true"), None),
        (Method::POST, format!("{base}/cancel"), None),
        (Method::DELETE, base.clone(), None),
        (
            Method::POST,
            "/v1beta/interactions".to_owned(),
            Some(turn("mine now", Some(&id), false)),
        ),
        (
            Method::GET,
            "/v1/interactions/v1_guessed000001".to_owned(),
            None,
        ),
    ];
    for (method, path, body) in attempts {
        let answer = send(&gateway, MALLORY, method.clone(), &path, body).await;
        assert_eq!(
            answer.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {}",
            answer.body
        );
        assert_eq!(
            answer.json()["error"]["code"],
            "not_found",
            "{}",
            answer.body
        );
        assert!(!answer.body.contains(KEYS[0]) && !answer.body.contains(ALICE));
    }
    assert_eq!(
        mock.stats().total_requests(),
        sent,
        "nothing reached Google for Mallory"
    );
    // Alice still has it, untouched: she cancels it.
    let cancelled = send(
        &gateway,
        ALICE,
        Method::POST,
        &format!("{base}/cancel"),
        None,
    )
    .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    assert_eq!(cancelled.json()["status"], "cancelled");
    assert_eq!(cancelled.project, made.project);
    let deleted = send(&gateway, ALICE, Method::DELETE, &base, None).await;
    assert_eq!(deleted.status, StatusCode::OK);
    let gone = send(&gateway, ALICE, Method::GET, &base, None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

/// Agents, environments, webhooks and explicit caches are refused with a clear 400; other
/// paths under the API get a 404 naming what is served; nothing of it reaches Google.
#[tokio::test]
async fn what_the_gateway_does_not_serve_is_refused_clearly() {
    let mock = mock().await;
    let gateway = gateway(&mock).await;
    let refused = [
        (
            json!({ "agent": "deep-research-preview-04-2026", "input": "x", "background": true }),
            "agent",
        ),
        (
            json!({ "model": MODEL, "input": "x", "webhook_config": { "uris": ["https://example.com/hook"] } }),
            "webhook_config",
        ),
        (
            json!({ "model": MODEL, "input": "x", "environment": "remote" }),
            "environment",
        ),
        (
            json!({ "model": MODEL, "input": "x", "cached_content": "cachedContents/abc" }),
            "cached_content",
        ),
        (json!({ "input": "x" }), "\"model\" is required"),
        // One spelling per field: a camelCase twin would slip past the checks above.
        (
            json!({ "model": MODEL, "input": "x", "previousInteractionId": "v1_abc" }),
            "previous_interaction_id",
        ),
        (
            json!({ "model": MODEL, "input": "x", "webhookConfig": {} }),
            "snake_case",
        ),
    ];
    for (body, says) in refused {
        let answer = send(
            &gateway,
            ALICE,
            Method::POST,
            "/v1/interactions",
            Some(body),
        )
        .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.body);
        let message = answer.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.contains(says), "{message}");
        assert_eq!(answer.json()["error"]["code"], "invalid_argument");
    }
    for (method, path) in [
        (Method::GET, "/v1/interactions"),
        (Method::PUT, "/v1/interactions/v1_abc"),
        (Method::POST, "/v1beta/interactions/v1_abc/steps"),
    ] {
        let answer = send(&gateway, ALICE, method.clone(), path, Some(json!({}))).await;
        assert!(
            answer.status == StatusCode::NOT_FOUND
                || answer.status == StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {} {}",
            answer.status,
            answer.body
        );
    }
    assert_eq!(mock.stats().total_requests(), 0);
}

/// A create asked to be cached is sent every time (an interaction is stored state, never an
/// answer to replay); the status API counts each client's interactions without naming them.
#[tokio::test]
async fn interactions_are_never_cached_and_counted_per_client() {
    let mock = mock().await;
    let mut config = config(&mock);
    config.saving = Saving {
        cache: Some(CacheLayer::new()),
        ..Saving::default()
    };
    let gateway = start(config).await;
    for _ in 0..3 {
        let request = Request::post(format!("{}/v1/interactions", gateway.base))
            .header("x-goog-api-key", ALICE)
            .header("x-gemini-cache", "yes")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                turn("same words", None, false).to_string(),
            )))
            .unwrap();
        let response = client().request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_ne!(
            response
                .headers()
                .get("x-gemini-cache")
                .map(|v| v.as_bytes()),
            Some(&b"hit"[..])
        );
        let _ = text(response).await;
    }
    assert_eq!(mock.stats().total_requests(), 3);
    let status = client()
        .request(
            Request::get(format!("{}/api/keys/status", gateway.base))
                .header("authorization", format!("Bearer {ADMIN}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status: Value = serde_json::from_str(&text(status).await).unwrap();
    let rows = status["resources"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["interactions"], 3);
    assert_eq!(rows[0]["client"], "…0001");
    assert!(
        !status.to_string().contains("v1_mock"),
        "no names in the status"
    );
}

/// A client's tokens per minute count the stored conversation its continuation makes Google
/// read (the body shows only the new turn): a long conversation cannot slip under the client's
/// limit by sending short turns. Another client's conversation counts nothing for it (its 429
/// would tell that the conversation exists).
#[tokio::test]
async fn a_clients_token_limit_counts_its_stored_conversation() {
    let mock = mock().await;
    let mut config = config(&mock);
    config.client_limits = Some(tower_gemini::pool::ModelLimits {
        tpm: Some(500),
        ..Default::default()
    });
    let gateway = start(config).await;
    let input = "x".repeat(400); // 100 tokens a turn
    let mut previous: Option<String> = None;
    let mut refused_at = None;
    for t in 0..4 {
        let body = turn(&input, previous.as_deref(), false);
        let answer = send(
            &gateway,
            ALICE,
            Method::POST,
            "/v1/interactions",
            Some(body),
        )
        .await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            refused_at = Some(t);
            break;
        }
        assert_eq!(answer.status, StatusCode::OK, "turn {t}: {}", answer.body);
        previous = Some(answer.id());
    }
    // Turns of about 110 and 235 tokens fit in 500; the third, about 360 with what is
    // stored, does not (by its body alone, 110, it would).
    assert_eq!(refused_at, Some(2));
    assert_eq!(mock.stats().total_requests(), 2);
    // Mallory naming Alice's conversation is not counted Alice's size: her answer is the 404.
    let hers = turn(&input, previous.as_deref(), false);
    let answer = send(
        &gateway,
        MALLORY,
        Method::POST,
        "/v1/interactions",
        Some(hers),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.body);
}
