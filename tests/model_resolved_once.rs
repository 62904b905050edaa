//! The model of a request is resolved once (issue #23): through the gateway, with every layer
//! that reads the model on (cache, cost with a refusing budget, fallback, breaker, key rotation,
//! quota), an OpenAI-compatible request's body is parsed for its model exactly once; through
//! the library's stack, once as well. (Its own binary: the count is per process.)
#![cfg(feature = "gateway")]

mod common;

use bytes::Bytes;
use common::gateway::{config_from, start};
use common::{client, text};
use http::{Request, StatusCode};
use http_body_util::Full;
use tower::ServiceExt;
use tower_gemini::cache::CacheLayer;
use tower_gemini::cost::Budget;
use tower_gemini::fallback::FallbackLayer;
use tower_gemini::gateway::Saving;
use tower_gemini::mock::MockGemini;
use tower_gemini::{KeyPool, body_parses_for_model, stack};

const KEYS: [&str; 2] = ["test-key-once-0001", "test-key-once-0002"];
const TOKEN: &str = "client-token-once-01";
const MODEL: &str = "gemini-2.0-flash";

#[tokio::test]
async fn an_openai_body_is_parsed_for_its_model_once() {
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key(KEYS[0]))
        .project("proj-b", |p| p.key(KEYS[1]))
        .start()
        .await
        .unwrap();
    let keys = KEYS.join(",");
    let url = mock.url();
    let mut config = config_from(&[
        ("GEMINI_API_KEY", &keys),
        ("GATEWAY_TOKENS", TOKEN),
        ("LLM_API_ENDPOINT", &url),
        ("LLM_MODEL", MODEL),
    ]);
    config.saving = Saving {
        cache: Some(CacheLayer::new()),
        fallback: FallbackLayer::new()
            .chain(MODEL, ["gemini-2.5-flash"])
            .unwrap(),
        budget: Budget::new()
            .daily_usd(100.0)
            .unwrap()
            .refuse_when_spent(true),
        ..Saving::default()
    };
    let gateway = start(config).await;
    for (i, path) in ["/v1/chat/completions", "/v1beta/openai/chat/completions"]
        .into_iter()
        .enumerate()
    {
        let body = serde_json::json!({
            "model": MODEL,
            "temperature": 0,
            "messages": [{ "role": "user", "content": format!("count the parses {i}") }]
        });
        let before = body_parses_for_model();
        let request = Request::post(format!("{}{path}", gateway.base))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = client().request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let _ = text(response).await;
        assert_eq!(body_parses_for_model() - before, 1, "{path}");
    }

    // The library's stack alone (no gateway to resolve it first): once as well, however many
    // layers read the model.
    let pool = KeyPool::from_keys(KEYS).unwrap();
    let gemini = stack(&pool)
        .fallback(
            FallbackLayer::new()
                .chain(MODEL, ["gemini-2.5-flash"])
                .unwrap(),
        )
        .boxed(common::client());
    let body =
        serde_json::json!({ "model": MODEL, "messages": [{ "role": "user", "content": "hi" }] });
    let before = body_parses_for_model();
    let response = gemini
        .oneshot(
            Request::post(format!("{}/v1beta/openai/chat/completions", mock.url()))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let _ = text(response).await;
    assert_eq!(body_parses_for_model() - before, 1, "the library's stack");
}
