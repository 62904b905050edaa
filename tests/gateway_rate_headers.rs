//! The rate-limit headers OpenAI's SDKs read, on the gateway's answers: the model's per-minute
//! quota across the pool's projects, or the client's own limits where stricter; and on a 429
//! the gateway gives, with `Retry-After`.
#![cfg(feature = "gateway")]

mod common;

use bytes::Bytes;
use common::gateway::{config_from, start};
use common::text;
use http::{Request, StatusCode};
use http_body_util::Full;
use tower_gemini::mock::MockGemini;
use tower_gemini::pool::ModelLimits;
use tower_gemini::{KeyPool, KeySpec};

const TOKEN: &str = "client-token-rate-0001";
const MODEL: &str = "gemini-2.0-flash";

fn limits() -> ModelLimits {
    ModelLimits {
        rpm: Some(10),
        tpm: Some(100_000),
        ..Default::default()
    }
}

async fn gateway(
    client_rpm: Option<u32>,
) -> (tower_gemini::mock::MockServer, common::gateway::Gateway) {
    let mock = MockGemini::builder()
        .project("proj-a", |p| {
            p.key("test-key-rate-0001").default_limits(limits())
        })
        .project("proj-b", |p| {
            p.key("test-key-rate-0002").default_limits(limits())
        })
        .start()
        .await
        .unwrap();
    let mut config = config_from(&[
        ("GEMINI_API_KEY", "test-key-rate-0001"),
        ("GATEWAY_TOKENS", TOKEN),
        ("LLM_API_ENDPOINT", mock.url().as_str()),
    ]);
    config.pool = KeyPool::builder()
        .key_with(KeySpec::new("test-key-rate-0001").project("proj-a"))
        .key_with(KeySpec::new("test-key-rate-0002").project("proj-b"))
        .model_limits(MODEL, limits())
        .build()
        .unwrap();
    config.client_limits = client_rpm.map(|rpm| ModelLimits {
        rpm: Some(rpm),
        ..Default::default()
    });
    let gateway = start(config).await;
    (mock, gateway)
}

async fn ask(
    gateway: &common::gateway::Gateway,
    path: &str,
    body: &str,
) -> http::Response<hyper::body::Incoming> {
    let request = Request::post(format!("{}{path}", gateway.base))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    common::client().request(request).await.unwrap()
}

fn header(response: &http::Response<hyper::body::Incoming>, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no {name} in {:?}", response.headers()))
}

#[tokio::test]
async fn answers_say_the_pools_quota_for_the_model() {
    let (mock, gateway) = gateway(None).await;
    let native = format!("/v1beta/models/{MODEL}:generateContent");
    let body = common::generate_body("hello rate limits");
    let mut last = None;
    for _ in 0..3 {
        let answer = ask(&gateway, &native, &body).await;
        assert_eq!(answer.status(), StatusCode::OK);
        last = Some(answer);
    }
    let answer = last.unwrap();
    // Two projects of 10 RPM: 20, of which three are used.
    assert_eq!(header(&answer, "x-ratelimit-limit-requests"), "20");
    assert_eq!(header(&answer, "x-ratelimit-remaining-requests"), "17");
    let reset = header(&answer, "x-ratelimit-reset-requests");
    assert!(reset.ends_with('s') && reset != "0s", "{reset}");
    assert_eq!(header(&answer, "x-ratelimit-limit-tokens"), "200000");
    let tokens: u64 = header(&answer, "x-ratelimit-remaining-tokens")
        .parse()
        .unwrap();
    assert!(tokens < 200_000 && tokens > 199_000, "{tokens}");
    // The OpenAI-compatible route says the same (its model is in the body).
    let chat = ask(
        &gateway,
        "/v1/chat/completions",
        &format!(r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"hi"}}]}}"#),
    )
    .await;
    assert_eq!(chat.status(), StatusCode::OK);
    assert_eq!(header(&chat, "x-ratelimit-remaining-requests"), "16");
    assert_eq!(mock.stats().responses_with_status(429), 0);
}

#[tokio::test]
async fn the_clients_own_limit_is_shown_where_stricter_and_on_its_429() {
    let (mock, gateway) = gateway(Some(3)).await;
    let native = format!("/v1beta/models/{MODEL}:generateContent");
    let body = common::generate_body("hello client limits");
    let first = ask(&gateway, &native, &body).await;
    assert_eq!(first.status(), StatusCode::OK);
    // The client's 3 RPM is stricter than the pool's 20.
    assert_eq!(header(&first, "x-ratelimit-limit-requests"), "3");
    assert_eq!(header(&first, "x-ratelimit-remaining-requests"), "2");
    // (Its tokens are unlimited for the client: the pool's show.)
    assert_eq!(header(&first, "x-ratelimit-limit-tokens"), "200000");
    for _ in 0..2 {
        assert_eq!(ask(&gateway, &native, &body).await.status(), StatusCode::OK);
    }
    let refused = ask(&gateway, &native, &body).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "x-ratelimit-limit-requests"), "3");
    assert_eq!(header(&refused, "x-ratelimit-remaining-requests"), "0");
    let reset = header(&refused, "x-ratelimit-reset-requests");
    assert!(reset.ends_with('s'), "{reset}");
    assert!(refused.headers().contains_key("retry-after"));
    let _ = text(refused).await;
    assert_eq!(mock.stats().total_requests(), 3);
}
