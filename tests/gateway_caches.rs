//! Explicit context caches through `gemini-gateway` (issue #25, first part), over real HTTP
//! with the mock's three projects: a client's cache is used, listed, extended and deleted on its
//! project; another client can neither use it (natively or through the OpenAI-compatible
//! route), read, patch, delete nor list it, and nothing of that reaches Google.
#![cfg(feature = "gateway")]

mod common;

use bytes::Bytes;
use common::gateway::{Gateway, config_from, start};
use common::{client, text};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tower_gemini::mock::{MockGemini, MockServer};

const ALICE: &str = "client-token-alice-0001";
const MALLORY: &str = "client-token-mallory-01";
const KEYS: [&str; 3] = [
    "test-key-gwcache-0001",
    "test-key-gwcache-0002",
    "test-key-gwcache-0003",
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

async fn gateway(mock: &MockServer) -> Gateway {
    let keys = KEYS.join(",");
    let tokens = format!("{ALICE},{MALLORY}");
    let upstream = mock.url();
    start(config_from(&[
        ("GEMINI_API_KEY", keys.as_str()),
        ("GATEWAY_TOKENS", tokens.as_str()),
        ("LLM_API_ENDPOINT", upstream.as_str()),
        ("LLM_MODEL", MODEL),
    ]))
    .await
}

/// `method path` as `token`: status, serving project, body as JSON (or `Null`).
async fn send(
    gateway: &Gateway,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, String, Value) {
    let request = Request::builder()
        .method(method)
        .uri(format!("{}{path}", gateway.base))
        .header("authorization", format!("Bearer {token}"))
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
    let body = text(response).await;
    (
        status,
        project,
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

fn cache_body() -> Value {
    json!({
        "model": format!("models/{MODEL}"),
        "ttl": "600s",
        "contents": [{ "role": "user", "parts": [{ "text": "The manual. ".repeat(700) }] }]
    })
}

fn question(cache: &str, text: &str) -> Value {
    json!({ "cachedContent": cache, "contents": [{ "role": "user", "parts": [{ "text": text }] }] })
}

#[tokio::test]
async fn a_clients_cache_is_its_own() {
    let mock = mock().await;
    let gateway = gateway(&mock).await;
    let (status, home, made) = send(
        &gateway,
        ALICE,
        Method::POST,
        "/v1beta/cachedContents",
        Some(cache_body()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{made}");
    let cache = made["name"].as_str().unwrap().to_owned();
    let generate = format!("/v1beta/models/{MODEL}:generateContent");
    for q in 0..5 {
        let (status, project, answer) = send(
            &gateway,
            ALICE,
            Method::POST,
            &generate,
            Some(question(&cache, &format!("q{q}"))),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(project, home);
        assert!(
            answer["usageMetadata"]["cachedContentTokenCount"]
                .as_u64()
                .unwrap_or(0)
                > 2000
        );
    }
    let (status, _, listed) = send(&gateway, ALICE, Method::GET, "/v1/cachedContents", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        listed["cachedContents"].as_array().unwrap().len(),
        1,
        "{listed}"
    );
    assert_eq!(listed["cachedContents"][0]["name"], cache.as_str());

    // Mallory: nothing of Alice's, and nothing sent for trying.
    let sent = mock.stats().total_requests();
    let at = format!("/v1/{cache}");
    let attempts = [
        (Method::GET, at.clone(), None),
        (
            Method::PATCH,
            format!("{at}?updateMask=ttl"),
            Some(json!({ "ttl": "9999s" })),
        ),
        (Method::DELETE, at.clone(), None),
        (
            Method::POST,
            generate.clone(),
            Some(question(&cache, "hers?")),
        ),
    ];
    for (method, path, body) in attempts {
        let (status, _, answer) = send(&gateway, MALLORY, method.clone(), &path, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {answer}");
    }
    // Nor one level down in a countTokens request, nor with the key written with an escape.
    let count = format!("/v1beta/models/{MODEL}:countTokens");
    let nested = json!({ "generateContentRequest": question(&cache, "hers?") });
    let (status, _, answer) = send(&gateway, MALLORY, Method::POST, &count, Some(nested)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    let escaped = format!(
        r#"{{"cached\u0043ontent":"{cache}","contents":[{{"parts":[{{"text":"hers?"}}]}}]}}"#
    );
    let request = Request::post(format!("{}{generate}", gateway.base))
        .header("authorization", format!("Bearer {MALLORY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(escaped)))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let sideways = json!({
        "model": MODEL,
        "messages": [{ "role": "user", "content": "hers?" }],
        "google": { "cached_content": cache }
    });
    let (status, _, answer) = send(
        &gateway,
        MALLORY,
        Method::POST,
        "/v1/chat/completions",
        Some(sideways),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, _, listed) = send(
        &gateway,
        MALLORY,
        Method::GET,
        "/v1beta/cachedContents",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        listed["cachedContents"].as_array().unwrap().len(),
        0,
        "{listed}"
    );
    assert_eq!(
        mock.stats().total_requests(),
        sent,
        "nothing reached Google for Mallory"
    );

    // Alice extends it, then deletes it; then it is gone for her too, without a probe.
    let (status, project, _) = send(
        &gateway,
        ALICE,
        Method::PATCH,
        &format!("{at}?updateMask=ttl"),
        Some(json!({ "ttl": "7200s" })),
    )
    .await;
    assert_eq!((status, project.as_str()), (StatusCode::OK, home.as_str()));
    let (status, _, _) = send(&gateway, ALICE, Method::DELETE, &at, None).await;
    assert_eq!(status, StatusCode::OK);
    let sent = mock.stats().total_requests();
    let (status, _, _) = send(
        &gateway,
        ALICE,
        Method::POST,
        &generate,
        Some(question(&cache, "again")),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(mock.stats().total_requests(), sent);
    assert_eq!(mock.stats().responses_with_status(403), 0);
}

/// A cache naming an uploaded file that is not the client's (the operator's, made outside the
/// gateway) is a 404, as is a generateContent naming one or a File Search store not the
/// client's, with nothing sent; a cache lives at most a day.
#[tokio::test]
async fn what_a_cache_may_not_hold_is_refused() {
    let mock = mock().await;
    let gateway = gateway(&mock).await;
    let with_file = json!({
        "model": format!("models/{MODEL}"),
        "contents": [{ "role": "user", "parts": [{ "fileData": {
            "mimeType": "application/pdf",
            "fileUri": "https://generativelanguage.googleapis.com/v1beta/files/operators-file"
        } }] }]
    });
    let (status, _, answer) = send(
        &gateway,
        ALICE,
        Method::POST,
        "/v1/cachedContents",
        Some(with_file),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert!(
        answer.to_string().contains("files/operators-file"),
        "{answer}"
    );
    let generate = format!("/v1beta/models/{MODEL}:generateContent");
    let short = json!({ "contents": [{ "parts": [{ "file_data": { "file_uri": " files/operators-file" } }] }] });
    let (status, _, answer) = send(&gateway, ALICE, Method::POST, &generate, Some(short)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    // An odd case would slip past the search for "files/": refused.
    let odd = json!({ "contents": [{ "parts": [{ "file_data": { "file_uri": "FILES/operators-file" } }] }] });
    let (status, _, answer) = send(&gateway, ALICE, Method::POST, &generate, Some(odd)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let store = json!({ "contents": [{ "parts": [{ "text": "x" }] }], "tools": [{ "fileSearch": { "fileSearchStoreNames": ["fileSearchStores/s"] } }] });
    let (status, _, answer) = send(&gateway, ALICE, Method::POST, &generate, Some(store)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another's store: {answer}");
    let mut forever = cache_body();
    forever["ttl"] = json!("31536000s");
    let (status, _, answer) = send(
        &gateway,
        ALICE,
        Method::POST,
        "/v1/cachedContents",
        Some(forever),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(mock.stats().total_requests(), 0);
}
