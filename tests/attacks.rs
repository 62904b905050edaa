//! The attacks of issue #22, each over real HTTP against `serve` with the mock (or a stand-in
//! upstream where the mock cannot misbehave that way): one client holding a valid token must
//! not change the state of keys, reach an API the gateway does not serve, hold what others
//! need, escape its limits or budget, read another client's answers, or see a key.
#![cfg(feature = "gateway")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::gateway::{Gateway, config_from, start};
use common::{client, text};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_gemini::cache::CacheLayer;
use tower_gemini::cost::Budget;
use tower_gemini::gateway::{GatewayConfig, Saving};
use tower_gemini::mock::{Fault, MockGemini, MockServer};
use tower_gemini::pool::ModelLimits;

const TOKEN: &str = "client-token-attack-01";
const OTHER: &str = "client-token-attack-02";
const ADMIN: &str = "admin-token-attack-01";
const KEYS: [&str; 3] = [
    "test-key-attack-0001",
    "test-key-attack-0002",
    "test-key-attack-0003",
];
const MODEL: &str = "gemini-2.0-flash";

async fn mock() -> MockServer {
    mock_with(MockGemini::builder()).await
}

async fn mock_with(builder: MockGemini) -> MockServer {
    builder
        .project("proj-a", |p| p.key(KEYS[0]))
        .project("proj-b", |p| p.key(KEYS[1]))
        .project("proj-c", |p| p.key(KEYS[2]))
        .start()
        .await
        .unwrap()
}

fn config(upstream: &str) -> GatewayConfig {
    let keys = KEYS.join(",");
    let tokens = format!("{TOKEN},{OTHER}");
    config_from(&[
        ("GEMINI_API_KEY", &keys),
        ("GATEWAY_TOKENS", &tokens),
        ("ADMIN_TOKEN", ADMIN),
        ("LLM_API_ENDPOINT", upstream),
        ("LLM_MODEL", MODEL),
    ])
}

/// `method path` with `token` and a JSON `body`: the status, headers and body text.
async fn send_as(
    gateway: &Gateway,
    token: &str,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, http::HeaderMap, String) {
    let request = Request::builder()
        .method(method)
        .uri(format!("{}{path}", gateway.base))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = client().request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, text(response).await)
}

async fn send(gateway: &Gateway, method: Method, path: &str, body: &str) -> (StatusCode, String) {
    let (status, _, body) = send_as(gateway, TOKEN, method, path, body).await;
    (status, body)
}

fn native(model: &str) -> String {
    format!("/v1beta/models/{model}:generateContent")
}

fn prompt() -> String {
    common::generate_body("hello")
}

/// The status API's JSON.
async fn status_api(gateway: &Gateway) -> serde_json::Value {
    let (status, body) = {
        let (s, _, b) = send_as(gateway, ADMIN, Method::GET, "/api/keys/status", "").await;
        (s, b)
    };
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// How many keys the status API shows as disabled.
async fn disabled_keys(gateway: &Gateway) -> usize {
    status_api(gateway).await["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|key| key["status"] == "disabled")
        .count()
}

/// A stand-in for Google on 127.0.0.1 that records every URI it is sent and answers with
/// `answer(uri, key)`.
async fn stand_in(
    answer: impl Fn(&http::Uri, &str) -> (StatusCode, String) + Clone + Send + Sync + 'static,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let router = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let answer = answer.clone();
        let recorded = recorded.clone();
        async move {
            recorded.lock().unwrap().push(request.uri().to_string());
            let key = request
                .headers()
                .get("x-goog-api-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let (status, body) = answer(request.uri(), &key);
            axum::response::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body))
                .unwrap()
        }
    });
    (common::serve(router).await, seen)
}

fn success() -> String {
    serde_json::json!({
        "candidates": [{ "content": { "role": "model", "parts": [{ "text": "hi" }] }, "finishReason": "STOP" }],
        "usageMetadata": { "promptTokenCount": 3, "candidatesTokenCount": 1, "totalTokenCount": 4 }
    })
    .to_string()
}

// ------------------------------------------------------------ 1. key state from structure only

/// One request naming a field "API key not valid" (Google's 400 echoes it) used to disable
/// every key in turn; now it is the caller's error and every key stays enabled.
#[tokio::test]
async fn a_field_named_like_a_key_error_disables_no_key() {
    let mock = mock().await;
    let gateway = start(config(&mock.url())).await;
    for name in ["API key not valid", "API_KEY_INVALID", "reported as leaked"] {
        let body = format!(r#"{{"{name}": 1, "contents": [{{"parts": [{{"text": "hi"}}]}}]}}"#);
        let (status, answer) = send(&gateway, Method::POST, &native(MODEL), &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(
            answer.contains("Unknown name"),
            "Google's own 400: {answer}"
        );
    }
    // Each was tried once (a caller's error is not retried on another key)…
    assert_eq!(mock.stats().total_requests(), 3);
    // …and no key was disabled: everyone is still served.
    assert_eq!(disabled_keys(&gateway).await, 0);
    let (status, _) = send(&gateway, Method::POST, &native(MODEL), &prompt()).await;
    assert_eq!(status, StatusCode::OK);
}

/// A caller's `?access_token=junk` (Google answers 401 to it) never reaches Google, nor does
/// any other parameter outside the allowlist; `alt=sse` does.
#[tokio::test]
async fn query_parameters_outside_the_allowlist_never_reach_google() {
    let (upstream, seen) = stand_in(|uri, _| {
        if uri.query().is_some_and(|q| q.contains("access_token")) {
            let body = r#"{"error":{"code":401,"message":"Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.","status":"UNAUTHENTICATED"}}"#;
            (StatusCode::UNAUTHORIZED, body.to_owned())
        } else {
            (StatusCode::OK, success())
        }
    })
    .await;
    let gateway = start(config(&upstream)).await;
    let path = format!(
        "{}?access_token=junk&quotaUser=x&fields=candidates&alt=json",
        native(MODEL)
    );
    let (status, body) = send(&gateway, Method::POST, &path, &prompt()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].ends_with(":generateContent?alt=json"), "{seen:?}");
    assert_eq!(disabled_keys(&gateway).await, 0);
}

// --------------------------------------------------------------- 2, 3. only the routes we serve

#[tokio::test]
async fn googles_other_openai_apis_are_not_served() {
    let mock = mock().await;
    let gateway = start(config(&mock.url())).await;
    let refused = [
        (Method::GET, "/v1beta/openai/files"),
        (Method::POST, "/v1beta/openai/files"),
        (Method::GET, "/v1beta/openai/files/file-1/content"),
        (Method::DELETE, "/v1beta/openai/files/file-1"),
        (Method::GET, "/v1beta/openai/batches"),
        (Method::POST, "/v1beta/openai/batches"),
        (Method::POST, "/v1beta/openai/batches/batch-1/cancel"),
        (Method::POST, "/v1beta/openai/images/generations"),
        (Method::POST, "/v1beta/openai/audio/speech"),
        (Method::POST, "/v1beta/openai/fine_tuning/jobs"),
        // Native APIs not served (files, batches and stores are, each client's own: below).
        (Method::POST, "/v1beta/files:register"),
        (Method::GET, "/v1beta/corpora"),
        (Method::GET, "/v1beta/tunedModels"),
        (Method::GET, "/v1beta/generatedFiles"),
    ];
    for (method, path) in refused {
        let (status, body) = send(&gateway, method.clone(), path, "{}").await;
        assert!(
            status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {status} {body}"
        );
        if status == StatusCode::NOT_FOUND {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(json["error"]["message"].is_string(), "{path}: {body}");
        }
    }
    // The OpenAI shape on /v1beta/openai/ with what is served named.
    let (_, body) = send(&gateway, Method::GET, "/v1beta/openai/files", "").await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["type"], "invalid_request_error", "{body}");
    assert!(body.contains("chat/completions"), "{body}");
    // The files and batches lists are the client's own, answered here: not the projects'.
    for list in [
        "/v1beta/files",
        "/v1beta/batches",
        "/v1/files",
        "/v1/batches",
    ] {
        let (status, body) = send(&gateway, Method::GET, list, "").await;
        assert_eq!(status, StatusCode::OK, "{list}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let items = json.as_object().and_then(|o| o.values().next()).cloned();
        assert_eq!(items, Some(serde_json::json!([])), "{list}: {body}");
    }
    assert_eq!(mock.stats().total_requests(), 0, "nothing reached Google");
    // What is served still is.
    let chat =
        serde_json::json!({ "model": MODEL, "messages": [{ "role": "user", "content": "hi" }] });
    let (status, body) = send(
        &gateway,
        Method::POST,
        "/v1beta/openai/chat/completions",
        &chat.to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send(&gateway, Method::GET, "/v1beta/openai/models", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn every_model_name_is_checked_alike_in_paths_and_bodies() {
    let mock = mock().await;
    let gateway = start(config(&mock.url())).await;
    for path in ["/v1/chat/completions", "/v1beta/openai/chat/completions"] {
        for model in [
            serde_json::json!("x y/../../files?"),
            serde_json::json!("files/abc"),
            serde_json::json!(42),
        ] {
            let body = serde_json::json!({ "model": model, "messages": [] }).to_string();
            let (status, answer) = send(&gateway, Method::POST, path, &body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {model}: {answer}");
        }
    }
    let body = serde_json::json!({ "model": "x/../../files", "input": "hi" }).to_string();
    let (status, _) = send(&gateway, Method::POST, "/v1/embeddings", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    for path in [
        "/v1beta/models/x/y:generateContent",
        "/v1beta/models/x%20y:generateContent",
        "/v1beta/models/files:generateContent/x",
    ] {
        let (status, answer) = send(&gateway, Method::POST, path, &prompt()).await;
        assert!(status.is_client_error(), "{path}: {status} {answer}");
    }
    assert_eq!(mock.stats().total_requests(), 0, "nothing reached Google");
}

// ---------------------------------------------------------------- 4, 5. connections and bodies

/// A connection with a small receive buffer that pipelines `count` requests for the
/// dashboard page (tens of KiB each) and never reads an answer.
async fn non_reader(gateway: &Gateway, count: usize) -> tokio::net::TcpStream {
    let addr: std::net::SocketAddr = gateway.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    let request = "GET / HTTP/1.1\r\nhost: gateway\r\n\r\n".repeat(count);
    // The gateway stops reading once its answers back up: write what it takes.
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.write_all(request.as_bytes())).await;
    tcp
}

/// `GET /healthz` on a new connection, answered within `wait`?
async fn healthy_within(gateway: &Gateway, wait: Duration) -> bool {
    let request = Request::get(format!("{}/healthz", gateway.base))
        .body(Full::new(Bytes::new()))
        .unwrap();
    matches!(
        tokio::time::timeout(wait, client().request(request)).await,
        Ok(Ok(response)) if response.status() == StatusCode::OK
    )
}

#[tokio::test]
async fn a_client_that_never_reads_its_answers_holds_its_connection_only_briefly() {
    let mock = mock().await;
    let mut config = config(&mock.url());
    config.max_connections = 1;
    config.write_timeout = Duration::from_secs(1);
    let mut gateway = start(config).await;
    let stuck = non_reader(&gateway, 2000).await;
    // The one place is held by the client that does not read; once its answer has waited the
    // write timeout, the connection is closed and /healthz is served.
    assert!(healthy_within(&gateway, Duration::from_secs(15)).await);
    drop(stuck);
    // Shutdown with another such client connected finishes within its bound.
    let _stuck = non_reader(&gateway, 2000).await;
    let started = tokio::time::Instant::now();
    gateway.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), &mut gateway.served)
        .await
        .expect("shutdown finishes")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn one_address_cannot_hold_every_connection() {
    let mock = mock().await;
    let mut config = config(&mock.url());
    config.max_connections = 8;
    config.max_connections_per_address = 2;
    let gateway = start(config).await;
    let addr = gateway.base.trim_start_matches("http://").to_owned();
    let held = [
        tokio::net::TcpStream::connect(&addr).await.unwrap(),
        tokio::net::TcpStream::connect(&addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A third from the same address is answered 503 at once and closed.
    let mut third = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: g\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut answer))
        .await
        .expect("answered and closed, not left waiting");
    assert!(read.is_ok(), "{read:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("GATEWAY_MAX_CONNECTIONS_PER_ADDRESS"),
        "{answer}"
    );
    // Once one of its connections closes, the address is served again.
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(healthy_within(&gateway, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn bodies_trickled_a_byte_at_a_time_do_not_starve_other_clients() {
    let mock = mock().await;
    let mut config = config(&mock.url());
    config.body_memory = 64 * 1024;
    config.body_limit = 64 * 1024;
    let gateway = start(config).await;
    let addr = gateway.base.trim_start_matches("http://").to_owned();
    // Eight chunked bodies (and eight with a large declared length) send one byte each.
    let mut tricklers = Vec::new();
    for chunked in [true, false] {
        for _ in 0..8 {
            let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let framing = if chunked {
                "transfer-encoding: chunked\r\n\r\n1\r\n{".to_owned()
            } else {
                format!("content-length: {}\r\n\r\n{{", 60 * 1024)
            };
            let head = format!(
                "POST {} HTTP/1.1\r\nhost: g\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\n{framing}",
                native(MODEL)
            );
            tcp.write_all(head.as_bytes()).await.unwrap();
            tricklers.push(tcp);
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Another client's small request is answered at once, not after the body timeout.
    let request = Request::post(format!("{}{}", gateway.base, native(MODEL)))
        .header("authorization", format!("Bearer {OTHER}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(prompt())))
        .unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(5), client().request(request))
        .await
        .expect("answered while the trickling bodies are open")
        .unwrap();
    assert_eq!(answered.status(), StatusCode::OK);
    drop(tricklers);
}

// ------------------------------------------------------------------ 6. per-client token limits

#[tokio::test]
async fn a_client_over_its_tokens_per_minute_is_refused_before_anything_is_sent() {
    let mock = mock().await;
    let mut config = config(&mock.url());
    config.client_limits = Some(ModelLimits {
        tpm: Some(200),
        ..Default::default()
    });
    let gateway = start(config).await;
    let long = common::generate_body(&"many words here ".repeat(200));
    let (status, body) = send(&gateway, Method::POST, &native(MODEL), &long).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("tpm") || body.contains("token"), "{body}");
    assert_eq!(mock.stats().total_requests(), 0);
    // A small prompt fits.
    let (status, body) = send(&gateway, Method::POST, &native(MODEL), &prompt()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

// ------------------------------------------------------------ 7. made-up models and circuits

#[tokio::test]
async fn made_up_model_names_neither_take_circuits_nor_labels_from_real_models() {
    let mock = mock().await;
    let gateway = start(config(&mock.url())).await;
    for i in 0..1100 {
        let (status, _) = send(
            &gateway,
            Method::POST,
            &native(&format!("made-up-{i}")),
            &prompt(),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (status, _) = send(&gateway, Method::POST, &native(MODEL), &prompt()).await;
    assert_eq!(status, StatusCode::OK);
    let breakers = status_api(&gateway).await["breakers"].clone();
    let scopes: Vec<&str> = breakers
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["scope"].as_str())
        .collect();
    assert!(
        scopes.iter().any(|s| s.contains(MODEL)),
        "the real model has its own circuit: {scopes:?}"
    );
    assert!(scopes.len() <= 1025, "{}", scopes.len());
    let (_, _, metrics) = send_as(&gateway, ADMIN, Method::GET, "/metrics", "").await;
    assert!(
        metrics.contains(&format!("model=\"{MODEL}\"")),
        "the real model keeps its label"
    );
    assert!(!metrics.contains("made-up-"), "no made-up name is a label");
}

// -------------------------------------------------------------------- 8, 9. money

fn budget_config(upstream: &str, budget: Budget) -> GatewayConfig {
    let mut config = config(upstream);
    config.saving = Saving {
        budget,
        ..Saving::default()
    };
    config
}

#[tokio::test]
async fn an_unpriced_model_is_not_free_and_duplicate_keys_are_refused() {
    const UNPRICED: &str = "gemini-flash-latest";
    let mock = mock_with(MockGemini::builder().models([MODEL, UNPRICED])).await;
    let budget = Budget::new().per_account_usd(100.0).unwrap();
    let gateway = start(budget_config(&mock.url(), budget)).await;
    let (status, body) = send(&gateway, Method::POST, &native(UNPRICED), &prompt()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let saving = status_api(&gateway).await["saving"].clone();
    let text = saving.to_string();
    let client = saving["cost"]["today"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["scope"] == "client")
        .cloned()
        .unwrap_or_else(|| panic!("a client's spending in {text}"));
    assert!(client["spent_usd"].as_f64().unwrap() > 0.0, "{text}");
    // Two "model" keys: one would be priced, the other sent.
    let body = format!(r#"{{"model":"{MODEL}","model":"gemini-2.5-pro","messages":[]}}"#);
    let (status, answer) = send(&gateway, Method::POST, "/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(answer.contains("twice"), "{answer}");
    let body = r#"{"contents":[{"parts":[{"text":"a"}]}],"contents":[]}"#;
    let (status, _) = send(&gateway, Method::POST, &native(MODEL), body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(mock.stats().total_requests(), 1);
}

#[tokio::test]
async fn calls_that_start_together_overshoot_a_budget_by_at_most_one_estimate() {
    const PRO: &str = "gemini-2.5-pro";
    let mock = mock_with(
        MockGemini::builder().fault(Fault::latency(Duration::from_millis(300)).for_model(PRO)),
    )
    .await;
    // One call may produce up to 100 output tokens at $10 per million: $0.001, plus its
    // prompt; the client's day holds $0.0025, so two or three calls, never ten.
    let budget = Budget::new()
        .per_account_usd(0.0025)
        .unwrap()
        .refuse_when_spent(true);
    let gateway = start(budget_config(&mock.url(), budget)).await;
    let body = serde_json::json!({
        "contents": [{ "parts": [{ "text": "hello" }] }],
        "generationConfig": { "maxOutputTokens": 100 }
    })
    .to_string();
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let gateway_base = gateway.base.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let request = Request::post(format!("{gateway_base}{}", native(PRO)))
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let response = client().request(request).await.unwrap();
                let status = response.status();
                let _ = text(response).await;
                status
            })
        })
        .collect();
    let mut served = 0;
    for call in calls {
        if call.await.unwrap() == StatusCode::OK {
            served += 1;
        }
    }
    assert!((1..=3).contains(&served), "{served} of 10 served");
    assert_eq!(mock.stats().total_requests(), served);
}

// --------------------------------------------------------------------- 10. the cache

async fn cached_gateway(mock: &MockServer, shared: bool) -> Gateway {
    let mut config = config(&mock.url());
    config.saving = Saving {
        cache: Some(CacheLayer::new()),
        cache_shared: shared,
        ..Saving::default()
    };
    start(config).await
}

fn deterministic() -> String {
    serde_json::json!({
        "contents": [{ "parts": [{ "text": "what did the other client ask?" }] }],
        "generationConfig": { "temperature": 0 }
    })
    .to_string()
}

#[tokio::test]
async fn one_clients_cached_answers_are_not_anothers() {
    let mock = mock().await;
    let gateway = cached_gateway(&mock, false).await;
    let path = native(MODEL);
    let (status, _, _) = send_as(&gateway, TOKEN, Method::POST, &path, &deterministic()).await;
    assert_eq!(status, StatusCode::OK);
    let (_, again, _) = send_as(&gateway, TOKEN, Method::POST, &path, &deterministic()).await;
    assert_eq!(
        again["x-gemini-cache"], "hit",
        "the same client is served from the cache"
    );
    // Another client, even naming a namespace, asks Google itself: no oracle, no answer.
    let request = Request::post(format!("{}{path}", gateway.base))
        .header("authorization", format!("Bearer {OTHER}"))
        .header("content-type", "application/json")
        .header("x-gemini-cache-namespace", "")
        .body(Full::new(Bytes::from(deterministic())))
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
    assert_eq!(mock.stats().total_requests(), 2);
    // Sharing is the operator's opt-in.
    let mock = self::mock().await;
    let shared = cached_gateway(&mock, true).await;
    let _ = send_as(&shared, TOKEN, Method::POST, &path, &deterministic()).await;
    let (_, headers, _) = send_as(&shared, OTHER, Method::POST, &path, &deterministic()).await;
    assert_eq!(headers["x-gemini-cache"], "hit");
}

// --------------------------------------------------------------- 11, 12. keys only to Google

#[test]
fn an_upstream_with_user_information_is_refused() {
    for upstream in [
        "http://[::1]@127.0.0.1:8080",
        "http://127.0.0.1:1@example.invalid",
    ] {
        let error = tower_gemini::gateway::GatewayConfig::resolve(
            tower_gemini::gateway::Flags::default(),
            |name| match name {
                "GEMINI_API_KEY" => Some(KEYS[0].to_owned()),
                "GATEWAY_TOKENS" => Some(TOKEN.to_owned()),
                "LLM_API_ENDPOINT" => Some(upstream.to_owned()),
                _ => None,
            },
        )
        .err()
        .unwrap_or_else(|| panic!("{upstream} accepted"));
        assert!(error.to_string().contains('@'), "{error}");
    }
}

/// An error body longer than the classified prefix, read whole, with the key after its first
/// 64 KiB: the client sees the fingerprint, never the key.
#[tokio::test]
async fn a_key_echoed_deep_in_an_error_body_is_scrubbed() {
    let (upstream, _) = stand_in(|_, key| {
        let padding = "x".repeat(100 * 1024);
        let body = serde_json::json!({
            "error": { "code": 400, "message": format!("{padding} consumer {key}"), "status": "INVALID_ARGUMENT" }
        });
        (StatusCode::BAD_REQUEST, body.to_string())
    })
    .await;
    let gateway = start(config(&upstream)).await;
    let (status, body) = send(&gateway, Method::POST, &native(MODEL), &prompt()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.len() > 100 * 1024);
    for key in KEYS {
        assert!(!body.contains(key), "the key reached the client");
    }
    assert!(
        body.contains("consumer …000"),
        "the fingerprint is shown instead"
    );
}

// ------------------------------------------------------- a request larger than a token quota

/// A prompt larger than a project's tokens-per-minute draws Google's 429 with a real
/// `QuotaFailure`: that is the request's fault, not the minute's. It is answered as it is, no
/// other project is tried, and no project is cooled (else one request a minute would keep the
/// model cooled on every project for everyone).
#[tokio::test]
async fn a_request_larger_than_a_token_quota_cools_no_project() {
    let limits = ModelLimits {
        tpm: Some(1_000),
        ..Default::default()
    };
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key(KEYS[0]).default_limits(limits))
        .project("proj-b", |p| p.key(KEYS[1]).default_limits(limits))
        .project("proj-c", |p| p.key(KEYS[2]).default_limits(limits))
        .start()
        .await
        .unwrap();
    let gateway = start(config(&mock.url())).await;
    let huge = common::generate_body(&"lots of words ".repeat(1_500));
    let (status, body) = send(&gateway, Method::POST, &native(MODEL), &huge).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(mock.stats().total_requests(), 1, "no other project tried");
    // Every project still serves at once.
    for _ in 0..3 {
        let answered = tokio::time::timeout(
            Duration::from_secs(5),
            send(&gateway, Method::POST, &native(MODEL), &prompt()),
        )
        .await
        .expect("no project was cooled");
        assert_eq!(answered.0, StatusCode::OK);
    }
}

// ---------------------------------------------------------------- usage a caller can steer

/// A function call's arguments are JSON the model writes (and a caller can steer): a
/// `cachedContentTokenCount` there must not bill the prompt at the cached rate.
#[tokio::test]
async fn a_cached_count_in_a_function_calls_arguments_is_not_googles() {
    use tower::{Layer, ServiceExt};
    use tower_gemini::cost::{CostLayer, CostReport};
    let answer = serde_json::json!({
        "candidates": [{ "content": { "role": "model", "parts": [{ "functionCall": {
            "name": "f", "args": { "cachedContentTokenCount": 99_999_999 } } }] } }],
        "usageMetadata": { "promptTokenCount": 1_000, "candidatesTokenCount": 10, "totalTokenCount": 1_010 }
    })
    .to_string();
    let inner = tower::service_fn(move |_: Request<Full<Bytes>>| {
        let answer = answer.clone();
        async move {
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(answer))))
        }
    });
    let response = CostLayer::new()
        .layer(inner)
        .oneshot(
            Request::post(format!(
                "http://127.0.0.1/v1beta/models/{MODEL}:generateContent"
            ))
            .body(Full::new(Bytes::from(prompt())))
            .unwrap(),
        )
        .await
        .unwrap();
    let report = response.extensions().get::<CostReport>().cloned().unwrap();
    let _ = text(response).await;
    let cost = report.get().cloned().unwrap();
    assert_eq!(cost.prompt_tokens, 1_000);
    assert_eq!(cost.cached_tokens, 0, "the argument is not a cached count");
}

/// An answer that shows no usage (a stream its client left early, say) is not free where
/// budgets refuse: it costs its estimate.
#[tokio::test]
async fn an_answer_without_usage_costs_its_estimate_under_a_budget() {
    use tower::{Layer, ServiceExt};
    use tower_gemini::cost::CostLayer;
    let inner = tower::service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(
            b"{\"candidates\":[]}",
        ))))
    });
    let layer = CostLayer::new().budget(
        Budget::new()
            .daily_usd(1.0)
            .unwrap()
            .refuse_when_spent(true),
    );
    let spend = layer.spend().clone();
    let response = layer
        .layer(inner)
        .oneshot(
            Request::post(format!(
                "http://127.0.0.1/v1beta/models/{MODEL}:generateContent"
            ))
            .body(Full::new(Bytes::from(prompt())))
            .unwrap(),
        )
        .await
        .unwrap();
    let _ = text(response).await;
    let spent = spend.today_usd(&tower_gemini::cost::Scope::Pool);
    assert!(spent > 0.0, "spent {spent}");
}

/// One client's bodies hold at most a quarter of the memory for bodies: its next body is
/// refused at once (503), and another client's body still finds room.
#[tokio::test]
async fn one_clients_bodies_hold_at_most_their_share_of_memory() {
    let mock = mock().await;
    let mut config = config(&mock.url());
    config.body_memory = 256 * 1024;
    config.body_limit = 32 * 1024;
    let gateway = start(config).await;
    let addr = gateway.base.trim_start_matches("http://").to_owned();
    let stalled = |token: &'static str| {
        let addr = addr.clone();
        async move {
            let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let head = format!(
                "POST {} HTTP/1.1\r\nhost: g\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                native(MODEL),
                32 * 1024
            );
            tcp.write_all(head.as_bytes()).await.unwrap();
            tcp.write_all(&vec![b' '; 30 * 1024]).await.unwrap();
            tcp
        }
    };
    // Two stalled bodies of 30 KiB: 60 of the client's 64 KiB.
    let _first = stalled(TOKEN).await;
    let _second = stalled(TOKEN).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A third is refused at once.
    let mut third = stalled(TOKEN).await;
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut answer))
        .await
        .expect("refused at once")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("quarter"), "{answer}");
    // Another client's body of the same size is served.
    let mut body = prompt().into_bytes();
    body.resize(30 * 1024, b' ');
    let request = Request::post(format!("{}{}", gateway.base, native(MODEL)))
        .header("authorization", format!("Bearer {OTHER}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), client().request(request))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// A call that asks for an absurd number of output tokens does not hold the whole budget while
/// it is in flight: its estimate reads at most what any model can answer.
#[tokio::test]
async fn an_absurd_output_maximum_does_not_hold_the_budget() {
    use tower::{Layer, ServiceExt};
    use tower_gemini::cost::CostLayer;
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let held = release.clone();
    let inner = tower::service_fn(move |_: Request<Full<Bytes>>| {
        let held = held.clone();
        async move {
            held.notified().await;
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                Bytes::from(success()),
            )))
        }
    });
    let service = CostLayer::new()
        .budget(
            Budget::new()
                .daily_usd(1.0)
                .unwrap()
                .refuse_when_spent(true),
        )
        .layer(inner);
    let call = |output: &str| {
        let body = format!(
            r#"{{"contents":[{{"parts":[{{"text":"hi"}}]}}],"generationConfig":{{"maxOutputTokens":"{output}"}}}}"#
        );
        Request::post("http://127.0.0.1/v1beta/models/gemini-2.5-pro:generateContent")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let greedy = tokio::spawn(service.clone().oneshot(call("999999999999")));
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Another call is admitted while the greedy one is in flight (it waits on the same inner
    // service, so it is released with it).
    let modest = tokio::spawn(service.clone().oneshot(call("100")));
    tokio::time::sleep(Duration::from_millis(50)).await;
    release.notify_waiters();
    let modest = modest.await.unwrap();
    assert!(modest.is_ok(), "{:?}", modest.err());
    let _ = greedy.await.unwrap();
}
