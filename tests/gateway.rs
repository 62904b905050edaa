//! gemini-gateway end to end, over real HTTP: client → gateway → mock.
#![cfg(feature = "gateway")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::gateway::{Gateway, config_from, start};
use common::{client, drain, text};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower_gemini::gateway::{Flags, GatewayConfig, serve_on};
use tower_gemini::mock::{MockGemini, MockServer};
use tower_gemini::pool::ModelLimits;

const TOKEN: &str = "client-token-0001";
const ADMIN: &str = "admin-token-0001";
const KEYS: [&str; 2] = ["test-key-gw-0003", "test-key-gw-0004"];
const MODEL: &str = "gemini-2.0-flash";

fn mock_builder() -> MockGemini {
    MockGemini::builder()
        .project("proj-a", |p| p.key(KEYS[0]))
        .project("proj-b", |p| p.key(KEYS[1]))
}

fn config(mock: &MockServer, extra: &[(&str, &str)]) -> GatewayConfig {
    let mut vars = vec![
        ("GEMINI_API_KEY".to_owned(), KEYS.join(",")),
        ("GATEWAY_TOKENS".to_owned(), TOKEN.to_owned()),
        ("ADMIN_TOKEN".to_owned(), ADMIN.to_owned()),
        ("LLM_API_ENDPOINT".to_owned(), mock.url()),
        ("LLM_MODEL".to_owned(), MODEL.to_owned()),
    ];
    vars.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    config_from(&vars)
}

fn generate(gateway: &Gateway, path_and_query: &str) -> http::request::Builder {
    Request::post(format!("{}{path_and_query}", gateway.base))
        .header("content-type", "application/json")
}

fn prompt() -> Full<Bytes> {
    Full::new(Bytes::from(common::generate_body("hello there gateway")))
}

fn native_path() -> String {
    format!("/v1beta/models/{MODEL}:generateContent")
}

/// One native generateContent through the gateway with `token`.
async fn ask(gateway: &Gateway, token: &str) -> http::Response<hyper::body::Incoming> {
    let request = generate(gateway, &native_path())
        .header("x-goog-api-key", token)
        .body(prompt())
        .unwrap();
    client().request(request).await.unwrap()
}

/// Every raw key and token stays out of what the client sees.
fn assert_no_secret(what: &str, text: &str) {
    for secret in KEYS.iter().chain([&ADMIN]) {
        assert!(!text.contains(secret), "{what} leaks a secret: {text}");
    }
}

#[tokio::test]
async fn a_client_token_in_any_of_three_places_is_accepted_and_never_forwarded() {
    let mock = mock_builder().start().await.unwrap();
    let gateway = start(config(&mock, &[])).await;
    let requests = [
        generate(&gateway, &native_path()).header("authorization", format!("Bearer {TOKEN}")),
        generate(&gateway, &native_path()).header("x-goog-api-key", TOKEN),
        generate(&gateway, &format!("{}?key={TOKEN}", native_path())),
    ];
    for request in requests {
        let response = client()
            .request(request.body(prompt()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        // The mock saw a key of the pool, not the client's token.
        let served = response.headers()["x-mock-key"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(served == "...0003" || served == "...0004", "{served}");
        let body = text(response).await;
        assert_no_secret("a response", &body);
    }
    assert_eq!(mock.stats().total_requests(), 3);
    assert_eq!(
        mock.stats().responses_with_status(400),
        0,
        "no client token reached Google"
    );
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_refused_in_each_apis_shape() {
    let mock = mock_builder().start().await.unwrap();
    let gateway = start(config(&mock, &[])).await;
    let native = client()
        .request(generate(&gateway, &native_path()).body(prompt()).unwrap())
        .await
        .unwrap();
    assert_eq!(native.status(), StatusCode::UNAUTHORIZED);
    let json: serde_json::Value = serde_json::from_str(&text(native).await).unwrap();
    assert_eq!(json["error"]["status"], "UNAUTHENTICATED");
    let openai = client()
        .request(
            generate(&gateway, "/v1/chat/completions")
                .header("authorization", "Bearer wrong-token-9999")
                .body(Full::new(Bytes::from(r#"{"messages":[]}"#)))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(openai.status(), StatusCode::UNAUTHORIZED);
    let json: serde_json::Value = serde_json::from_str(&text(openai).await).unwrap();
    assert_eq!(json["error"]["code"], "invalid_api_key");
    assert_eq!(mock.stats().total_requests(), 0);
}

#[tokio::test]
async fn cors_echoes_allowed_origins_and_wildcards_and_nothing_else() {
    let mock = mock_builder().start().await.unwrap();
    let gateway = start(config(
        &mock,
        &[(
            "ALLOWED_ORIGINS",
            "https://app.example.org, https://*.example.com",
        )],
    ))
    .await;
    let preflight = |origin: &str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri(format!("{}/v1/chat/completions", gateway.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    for (origin, allowed) in [
        ("https://app.example.org", true),
        ("https://chat.example.com", true),
        ("https://evil.example.net", false),
        ("https://example.com.evil.net", false),
    ] {
        let response = client().request(preflight(origin)).await.unwrap();
        let echoed = response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned());
        if allowed {
            assert_eq!(echoed.as_deref(), Some(origin), "{origin}");
            assert!(response.status().is_success());
        } else {
            assert_eq!(echoed, None, "{origin}");
        }
    }
}

/// `router(&config)`, for those who serve it with their own axum: CORS comes with it (the
/// gateway's own server wraps the router whole instead, which is why this is tested apart).
#[tokio::test]
async fn the_public_router_served_by_axum_keeps_cors_and_the_token_check() {
    let mock = mock_builder().start().await.unwrap();
    let app = tower_gemini::gateway::router(&config(
        &mock,
        &[("ALLOWED_ORIGINS", "https://app.example.org")],
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let served = tokio::spawn(async move { axum::serve(listener, app).await });
    let ask = |token: &str, origin: &str| {
        Request::builder()
            .method(Method::POST)
            .uri(format!("{base}/v1beta/models/{MODEL}:generateContent"))
            .header("x-goog-api-key", token)
            .header("origin", origin)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"contents":[{"parts":[{"text":"hi"}]}]}"#,
            )))
            .unwrap()
    };
    let answer = client()
        .request(ask(TOKEN, "https://app.example.org"))
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        answer.headers()["access-control-allow-origin"],
        "https://app.example.org"
    );
    let other = client()
        .request(ask(TOKEN, "https://evil.example.net"))
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let stranger = client()
        .request(ask("not-a-token", "https://app.example.org"))
        .await
        .unwrap();
    assert_eq!(stranger.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(mock.stats().total_requests(), 2);
    served.abort();
}

#[tokio::test]
async fn openai_chat_gets_the_default_model_and_streams_as_sse() {
    let mock = mock_builder().start().await.unwrap();
    let gateway = start(config(&mock, &[])).await;
    let chat = |stream: bool| {
        let body = serde_json::json!({
            "messages": [{ "role": "user", "content": "hi" }],
            "stream": stream,
        });
        generate(&gateway, "/v1/chat/completions")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let response = client().request(chat(false)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = text(response).await;
    assert!(body.contains("chat.completion"), "{body}");
    assert!(body.contains(MODEL), "the default model was used: {body}");
    let response = client().request(chat(true)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let body = text(response).await;
    assert!(body.contains("data: "), "{body}");
    let models = client()
        .request(
            Request::get(format!("{}/v1/models", gateway.base))
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(models.status(), StatusCode::OK, "{}", text(models).await);
}

#[tokio::test(start_paused = true)]
async fn a_native_stream_reaches_the_client_chunk_by_chunk() {
    let mock = mock_builder()
        .stream_chunks(4)
        .stream_chunk_delay(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let gateway = start(config(&mock, &[])).await;
    let request = generate(
        &gateway,
        &format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"),
    )
    .header("x-goog-api-key", TOKEN)
    .body(Full::new(Bytes::from(common::generate_body(
        "one two three four five six seven eight",
    ))))
    .unwrap();
    let start = Instant::now();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b"data: "));
    // The first chunk is here while the mock still has three to send, a second apart.
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    let (rest, error) = drain(body).await;
    assert!(error.is_none());
    assert_eq!(rest.matches("data: ").count(), 3);
    assert!(start.elapsed() >= Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn overload_is_queued_all_served_and_google_sees_no_429() {
    let limits = ModelLimits {
        rpm: Some(5),
        ..Default::default()
    };
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key(KEYS[0]).limits(MODEL, limits))
        .project("proj-b", |p| p.key(KEYS[1]).limits(MODEL, limits))
        .start()
        .await
        .unwrap();
    // The file gives the pool the limits; the env the keys and tokens.
    let dir = std::env::temp_dir().join(format!("gateway-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "[[keys]]\nvalue = \"{}\"\nproject = \"proj-a\"\n\n[[keys]]\nvalue = \"{}\"\nproject = \"proj-b\"\n\n[models.\"{MODEL}\"]\nrpm = 5\n\n[gateway]\ntokens = [\"{TOKEN}\"]\nupstream = \"{}\"\nmax_wait_secs = 300\n",
            KEYS[0],
            KEYS[1],
            mock.url()
        ),
    )
    .unwrap();
    let flags = Flags {
        config: Some(file.clone()),
        ..Flags::default()
    };
    let config = GatewayConfig::resolve(flags, |_| None).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let gateway = start(config).await;
    // 30 requests for 10 slots a minute: all are answered, the last about two minutes later.
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let request = generate(&gateway, &native_path())
                .header("x-goog-api-key", TOKEN)
                .body(prompt())
                .unwrap();
            tokio::spawn(async move { client().request(request).await.unwrap().status() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(mock.stats().responses_with_status(429), 0);
    assert_eq!(mock.stats().total_requests(), 30);
}

#[tokio::test]
async fn the_status_api_needs_the_admin_token_and_shows_fingerprints_only() {
    let mock = mock_builder().start().await.unwrap();
    let gateway = start(config(&mock, &[])).await;
    assert_eq!(ask(&gateway, TOKEN).await.status(), StatusCode::OK);
    let status = |token: Option<&str>| {
        let mut request = Request::get(format!("{}/api/keys/status", gateway.base));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request.body(Full::new(Bytes::new())).unwrap()
    };
    for refused in [None, Some(TOKEN)] {
        let response = client().request(status(refused)).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{refused:?}");
    }
    let response = client().request(status(Some(ADMIN))).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = text(response).await;
    assert_no_secret("the status API", &body);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["success"], true);
    let data = json["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for field in [
        "id",
        "name",
        "status",
        "consecutive_failures",
        "total_calls",
        "success_calls",
        "last_used_at",
        "success_rate",
        "project",
    ] {
        assert!(data[0].get(field).is_some(), "{field} missing: {}", data[0]);
    }
    assert_eq!(data[0]["id"], "…0003");
    let recent = json["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 1, "the call log: {json}");
    assert_eq!(recent[0]["class"], "success");
    let total: u64 = data
        .iter()
        .map(|k| k["total_calls"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 1);
    // Reset needs the admin token too.
    let reset = |token: &str| {
        Request::post(format!("{}/api/keys/0003/reset", gateway.base))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let refused = client().request(reset(TOKEN)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let done = client().request(reset(ADMIN)).await.unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    // The dashboard page holds no token.
    let page = client()
        .request(
            Request::get(format!("{}/", gateway.base))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = text(page).await;
    assert!(html.contains("/api/keys/status"));
    assert_no_secret("the dashboard", &html);
    assert!(!html.contains(TOKEN));
}

#[tokio::test]
async fn an_oversize_body_is_refused_before_anything_is_sent() {
    let mock = mock_builder().start().await.unwrap();
    let mut config = config(&mock, &[]);
    config.body_limit = 1024;
    let gateway = start(config).await;
    let big = Full::new(Bytes::from(common::generate_body(&"x".repeat(4096))));
    let response = client()
        .request(
            generate(&gateway, &native_path())
                .header("x-goog-api-key", TOKEN)
                .body(big)
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(mock.stats().total_requests(), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_a_stream_in_flight_finish() {
    let mock = mock_builder()
        .stream_chunks(4)
        .stream_chunk_delay(Duration::from_secs(1))
        .start()
        .await
        .unwrap();
    let mut gateway = start(config(&mock, &[])).await;
    let request = generate(
        &gateway,
        &format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"),
    )
    .header("x-goog-api-key", TOKEN)
    .body(Full::new(Bytes::from(common::generate_body(
        "one two three four five six seven eight",
    ))))
    .unwrap();
    let response = client().request(request).await.unwrap();
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    // Shut down with three chunks still to come.
    gateway.stop.take().unwrap().send(()).unwrap();
    let (rest, error) = drain(body).await;
    assert!(error.is_none(), "the stream was cut");
    assert_eq!(rest.matches("data: ").count(), 3);
    tokio::time::timeout(Duration::from_secs(5), gateway.served)
        .await
        .expect("the server stops once the stream is done")
        .unwrap();
}

#[test]
fn without_a_client_token_the_gateway_refuses_to_start_or_binds_loopback_only() {
    let vars = |name: &str| (name == "GEMINI_API_KEY").then(|| KEYS.join(","));
    let error = GatewayConfig::resolve(Flags::default(), vars)
        .err()
        .unwrap();
    assert!(error.to_string().contains("GATEWAY_TOKENS"), "{error}");
    let open = Flags {
        listen: Some("0.0.0.0:8080".parse().unwrap()),
        allow_unauthenticated: true,
        ..Flags::default()
    };
    let config = GatewayConfig::resolve(open, vars).unwrap();
    assert!(config.listen.ip().is_loopback());
    let described = config.describe();
    assert_no_secret("the printed configuration", &described);
    assert!(described.contains("…0003"), "{described}");
}

/// The quick start's demo, in paused time: every client is served, the upstream's errors are
/// absorbed, the invalid key and the daily-quota project are learned, repeated prompts are
/// answered by the cache and the scarce model falls back.
#[tokio::test(start_paused = true)]
async fn the_demo_serves_every_client() {
    let options = tower_gemini::gateway::demo::DemoOptions {
        seconds: 20,
        clients: 8,
        speed: 12,
        chart: None,
    };
    let summary = tower_gemini::gateway::demo::run(&options).await.unwrap();
    assert_eq!(summary.failures, 0, "{}", summary.report());
    assert!(summary.successes > 100, "{}", summary.report());
    assert_eq!(
        summary.per_key["…0001"], 0,
        "the invalid key serves nothing"
    );
    // 10 flash requests a day, and 3 of the scarce model.
    assert!(summary.per_key["…0002"] <= 10 + 3, "the daily quota holds");
    assert!(summary.cache_hits > 0, "{}", summary.report());
    assert!(summary.fallbacks > 0, "{}", summary.report());
    let absorbed: u64 = summary
        .upstream_statuses
        .iter()
        .filter(|(s, _)| *s != 200)
        .map(|(_, n)| n)
        .sum();
    assert!(absorbed > 0, "{}", summary.report());
}

#[tokio::test]
async fn per_client_limits_hold_per_token() {
    let mock = mock_builder().start().await.unwrap();
    let mut config = config(
        &mock,
        &[("GATEWAY_TOKENS", "client-token-0001,client-token-0002")],
    );
    config.client_limits = Some(ModelLimits {
        rpm: Some(1),
        ..Default::default()
    });
    let gateway = start(config).await;
    // Refused requests (no valid token) are not metered: 401 each time, never a 429.
    for _ in 0..3 {
        assert_eq!(
            ask(&gateway, "wrong-token-0001").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        ask(&gateway, "client-token-0001").await.status(),
        StatusCode::OK
    );
    let limited = ask(&gateway, "client-token-0001").await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
    let body = text(limited).await;
    assert!(!body.contains("client-token-0001"), "{body}");
    // Another client's budget is its own.
    assert_eq!(
        ask(&gateway, "client-token-0002").await.status(),
        StatusCode::OK
    );
    assert_eq!(mock.stats().total_requests(), 2);
}

/// A key disabled by Google's answer is called again — at once through the admin route, and
/// periodically — and re-enabled once it works.
#[tokio::test(start_paused = true)]
async fn disabled_keys_are_revalidated_and_re_enabled_when_they_work() {
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key(KEYS[0]).billing_exhausted())
        .start()
        .await
        .unwrap();
    let mut config = config(&mock, &[("GEMINI_API_KEY", KEYS[0])]);
    config.revalidate_every = Duration::from_secs(600);
    let pool = config.pool.clone();
    let gateway = start(config).await;
    let refused = ask(&gateway, TOKEN).await;
    assert_eq!(
        refused.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "all keys disabled"
    );
    let revalidate = || {
        Request::post(format!("{}/api/keys/revalidate", gateway.base))
            .header("authorization", format!("Bearer {ADMIN}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    // Still out of credits: checked, not re-enabled.
    let json: serde_json::Value =
        serde_json::from_str(&text(client().request(revalidate()).await.unwrap()).await).unwrap();
    assert_eq!(json["data"][0]["verdict"], "no credits");
    assert_eq!(json["data"][0]["re_enabled"], false);
    // Credits bought: the admin route re-enables it at once.
    mock.set_billing_exhausted("proj-a", false);
    let json: serde_json::Value =
        serde_json::from_str(&text(client().request(revalidate()).await.unwrap()).await).unwrap();
    assert_eq!(json["data"][0]["re_enabled"], true, "{json}");
    assert_eq!(ask(&gateway, TOKEN).await.status(), StatusCode::OK);
    // Out again, and back: the periodic check finds it without anyone asking.
    mock.set_billing_exhausted("proj-a", true);
    assert_eq!(
        ask(&gateway, TOKEN).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(pool.select(Some(MODEL)).is_err());
    mock.set_billing_exhausted("proj-a", false);
    tokio::time::sleep(Duration::from_secs(601)).await;
    assert!(
        pool.select(Some(MODEL)).is_ok(),
        "re-enabled by the periodic check"
    );
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_fingerprints_only() {
    let mock = mock_builder().start().await.unwrap();
    let gateway = start(config(&mock, &[])).await;
    assert_eq!(ask(&gateway, TOKEN).await.status(), StatusCode::OK);
    let scrape = |token: &str| {
        Request::get(format!("{}/metrics", gateway.base))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(
        client().request(scrape(TOKEN)).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let response = client().request(scrape(ADMIN)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = text(response).await;
    assert!(body.contains("gemini_requests_total{"), "{body}");
    assert!(body.contains("key=\"…000"), "{body}");
    assert_no_secret("/metrics", &body);
}

/// Google's stable `/v1/models/...` (what the google-genai SDK calls with a custom base URL),
/// and `GET /v1/models` in both APIs' shapes, told apart by how the client authenticates.
#[tokio::test]
async fn native_v1_paths_and_both_model_lists() {
    let mock = mock_builder().start().await.unwrap();
    let gateway = start(config(&mock, &[])).await;
    let response = client()
        .request(
            generate(&gateway, &format!("/v1/models/{MODEL}:generateContent"))
                .header("x-goog-api-key", TOKEN)
                .body(prompt())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(text(response).await.contains("candidates"));
    let list = |header: (&str, String)| {
        Request::get(format!("{}/v1/models", gateway.base))
            .header(header.0, header.1)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let google = text(
        client()
            .request(list(("x-goog-api-key", TOKEN.to_owned())))
            .await
            .unwrap(),
    )
    .await;
    let google: serde_json::Value = serde_json::from_str(&google).unwrap();
    assert!(google["models"].is_array(), "{google}");
    let openai = text(
        client()
            .request(list(("authorization", format!("Bearer {TOKEN}"))))
            .await
            .unwrap(),
    )
    .await;
    let openai: serde_json::Value = serde_json::from_str(&openai).unwrap();
    assert_eq!(openai["object"], "list", "{openai}");
}

/// A client that trickles its body gets 408 after the read bound; nothing is sent upstream.
#[tokio::test(start_paused = true)]
async fn a_trickling_request_body_times_out() {
    use std::convert::Infallible;

    let mock = mock_builder().start().await.unwrap();
    let gateway = start(config(&mock, &[])).await;
    let body = futures_util::stream::unfold(0u32, |sent| async move {
        if sent > 0 {
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        (sent < 100).then(|| {
            (
                Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(b" "))),
                sent + 1,
            )
        })
    });
    let request = generate(&gateway, &native_path())
        .header("x-goog-api-key", TOKEN)
        .body(http_body_util::StreamBody::new(Box::pin(body)))
        .unwrap();
    let slow = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let start = Instant::now();
    let response = slow.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert!(
        start.elapsed() < Duration::from_secs(40),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(mock.stats().total_requests(), 0);
}

/// Keys added and removed at runtime through the admin API; what the pool knew of the other
/// keys is kept; the key itself never comes back in an answer.
#[tokio::test]
async fn keys_are_added_and_removed_at_runtime() {
    let mock = mock_builder().start().await.unwrap();
    let gateway = start(config(&mock, &[("GEMINI_API_KEY", KEYS[0])])).await;
    for _ in 0..2 {
        assert_eq!(
            ask(&gateway, TOKEN).await.headers()["x-mock-key"],
            "...0003"
        );
    }
    let admin = |method: Method, path: &str, body: &str, token: &str| {
        Request::builder()
            .method(method)
            .uri(format!("{}{path}", gateway.base))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap()
    };
    let add = format!(r#"{{"key":"{}","project":"proj-b"}}"#, KEYS[1]);
    let refused = client()
        .request(admin(Method::POST, "/api/keys", &add, TOKEN))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let added = client()
        .request(admin(Method::POST, "/api/keys", &add, ADMIN))
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::OK);
    let body = text(added).await;
    assert_no_secret("the add answer", &body);
    assert!(body.contains("…0004"), "{body}");
    let bad = client()
        .request(admin(
            Method::POST,
            "/api/keys",
            r#"{"key":"short"}"#,
            ADMIN,
        ))
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    // Both keys serve now; the first kept its counters.
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let response = ask(&gateway, TOKEN).await;
        served.insert(
            response.headers()["x-mock-key"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(served.len(), 2, "{served:?}");
    let status: serde_json::Value = serde_json::from_str(
        &text(
            client()
                .request(admin(Method::GET, "/api/keys/status", "", ADMIN))
                .await
                .unwrap(),
        )
        .await,
    )
    .unwrap();
    let total: u64 = status["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["total_calls"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 6, "no count lost in the swap: {status}");
    // Remove the first; the last cannot go.
    let removed = client()
        .request(admin(Method::DELETE, "/api/keys/0003", "", ADMIN))
        .await
        .unwrap();
    assert_eq!(removed.status(), StatusCode::OK);
    for _ in 0..3 {
        assert_eq!(
            ask(&gateway, TOKEN).await.headers()["x-mock-key"],
            "...0004"
        );
    }
    let last = client()
        .request(admin(Method::DELETE, "/api/keys/0004", "", ADMIN))
        .await
        .unwrap();
    assert_eq!(last.status(), StatusCode::BAD_REQUEST);
}

/// `--state-file`: a restarted gateway remembers its keys' counts and states.
#[tokio::test]
async fn the_state_file_carries_a_restart() {
    let mock = mock_builder().start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("gateway-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let file = dir.join("state.json");
    let mut first = config(&mock, &[]);
    first.state_file = Some(file.clone());
    let mut gateway = start(first).await;
    for _ in 0..3 {
        assert_eq!(ask(&gateway, TOKEN).await.status(), StatusCode::OK);
    }
    gateway.stop.take().unwrap().send(()).unwrap();
    gateway.served.await.unwrap();
    assert!(file.exists(), "saved at shutdown");

    let mut second = config(&mock, &[]);
    second.state_file = Some(file.clone());
    let pool = second.pool.clone();
    let _gateway = start(second).await;
    // The restore runs before the first request is served.
    assert_eq!(ask(&_gateway, TOKEN).await.status(), StatusCode::OK);
    let total: u64 = pool.snapshot().keys.iter().map(|k| k.counters.total).sum();
    assert_eq!(total, 4, "three from before the restart, one after");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that sends its request head a byte at a time (slowloris) is cut off after the
/// header read bound; it holds no connection for ever.
#[tokio::test(start_paused = true)]
async fn a_trickling_request_head_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mock = mock_builder().start().await.unwrap();
    let gateway = start(config(&mock, &[])).await;
    let addr = gateway.base.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"POST /v1beta/models/gemini-2.0-flash:generateContent HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let mut buffer = Vec::new();
    // The server closes the connection (after a 408, or without a word).
    tokio::time::timeout(Duration::from_secs(120), tcp.read_to_end(&mut buffer))
        .await
        .expect("the connection was closed")
        .unwrap();
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(29) && waited <= Duration::from_secs(31),
        "{waited:?}"
    );
    assert_eq!(mock.stats().total_requests(), 0);
}

#[tokio::test]
async fn a_plain_http_upstream_elsewhere_is_refused_however_configured() {
    let pool = tower_gemini::KeyPool::from_keys(KEYS).unwrap();
    let token = tower_gemini::gateway::Token::new(TOKEN.to_owned()).unwrap();
    let config = GatewayConfig::new(pool, "http://gemini.example.net", vec![token]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = serve_on(listener, &config, async {}).await.unwrap_err();
    assert!(error.to_string().contains("plain HTTP"), "{error}");
}

/// Key changes made at the same moment are all kept (one at a time, each on the last). On
/// several threads, as the binary runs: there handlers really do run at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_key_additions_are_all_kept() {
    let mock = mock_builder().start().await.unwrap();
    let gateway = start(config(&mock, &[("GEMINI_API_KEY", KEYS[0])])).await;
    let adds: Vec<_> = (0..32)
        .map(|i| {
            let request = Request::post(format!("{}/api/keys", gateway.base))
                .header("authorization", format!("Bearer {ADMIN}"))
                .body(Full::new(Bytes::from(format!(
                    r#"{{"key":"test-key-extra-{i:04}"}}"#
                ))))
                .unwrap();
            tokio::spawn(async move { client().request(request).await.unwrap().status() })
        })
        .collect();
    for add in adds {
        assert_eq!(add.await.unwrap(), StatusCode::OK);
    }
    let status = Request::get(format!("{}/api/keys/status", gateway.base))
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&text(client().request(status).await.unwrap()).await).unwrap();
    assert_eq!(json["data"].as_array().unwrap().len(), 33, "{json}");
}

/// A gateway configured from a TOML file beside the usual environment.
fn config_with_file(mock: &MockServer, toml: &str) -> Result<GatewayConfig, tower_gemini::Error> {
    let dir = std::env::temp_dir().join(format!(
        "gateway-saving-{}-{}",
        std::process::id(),
        toml.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(&file, toml).unwrap();
    let flags = Flags {
        config: Some(file),
        ..Flags::default()
    };
    let vars = [
        ("GEMINI_API_KEY", KEYS.join(",")),
        ("GATEWAY_TOKENS", format!("{TOKEN},client-token-0002")),
        ("ADMIN_TOKEN", ADMIN.to_owned()),
        ("LLM_API_ENDPOINT", mock.url()),
    ];
    let resolved = GatewayConfig::resolve(flags, |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    });
    std::fs::remove_dir_all(&dir).unwrap();
    resolved
}

#[tokio::test]
async fn the_gateway_caches_falls_back_and_counts_spending_per_client() {
    // Pro is not on these projects' tier: Google answers 429 with limit 0.
    let off_tier = ModelLimits {
        rpd: Some(0),
        ..Default::default()
    };
    let mock = MockGemini::builder()
        .project("proj-a", |p| {
            p.key(KEYS[0]).limits("gemini-2.5-pro", off_tier)
        })
        .project("proj-b", |p| {
            p.key(KEYS[1]).limits("gemini-2.5-pro", off_tier)
        })
        .start()
        .await
        .unwrap();
    let toml = r#"
[gateway]
quota_alert = 0.5

[gateway.cache]
max_mb = 8

[gateway.fallback]
"gemini-2.5-pro" = ["gemini-2.5-flash"]

[gateway.budget]
daily_usd = 1.0
per_client_usd = 0.25

[gateway.prices."gemini-2.0-flash"]
input = 0.10
output = 0.40
"#;
    let gateway = start(config_with_file(&mock, toml).unwrap()).await;
    let deterministic = Full::new(Bytes::from(
        r#"{"contents":[{"parts":[{"text":"the same question"}]}],"generationConfig":{"temperature":0}}"#,
    ));
    // The same deterministic prompt twice: the second is answered by the gateway's cache.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let request = generate(&gateway, &native_path())
            .header("x-goog-api-key", TOKEN)
            .header("x-gemini-cache-namespace", "tenant-1")
            .body(deterministic.clone())
            .unwrap();
        let response = client().request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        seen.push(
            response.headers()["x-gemini-cache"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
        let _ = text(response).await;
    }
    assert_eq!(seen, ["miss", "hit"]);
    assert_eq!(mock.stats().total_requests(), 1);

    // Pro falls back to flash, natively and on the OpenAI route, and says so.
    let request = generate(&gateway, "/v1beta/models/gemini-2.5-pro:generateContent")
        .header("x-goog-api-key", "client-token-0002")
        .body(prompt())
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-gemini-model"], "gemini-2.5-flash");
    assert_eq!(
        response.headers()["x-gemini-fallback"],
        "gemini-2.5-pro; reason=model_unavailable"
    );
    let _ = text(response).await;
    let chat = serde_json::json!({
        "model": "gemini-2.5-pro",
        "messages": [{ "role": "user", "content": "hi" }]
    });
    let request = Request::post(format!("{}/v1/chat/completions", gateway.base))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat.to_string())))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-gemini-model"], "gemini-2.5-flash");
    let body = text(response).await;
    assert!(body.contains("\"model\""), "{body}");
    // A caller who forbids it gets the refusal.
    let request = generate(&gateway, "/v1beta/models/gemini-2.5-pro:generateContent")
        .header("x-goog-api-key", TOKEN)
        .header("x-gemini-fallback", "no")
        .body(prompt())
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_ne!(response.status(), StatusCode::OK);
    let _ = text(response).await;

    // The status API: hit rate, chains and what fell back, spending per project and client.
    let request = Request::get(format!("{}/api/keys/status", gateway.base))
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let status: serde_json::Value =
        serde_json::from_str(&text(client().request(request).await.unwrap()).await).unwrap();
    let saving = &status["saving"];
    assert_eq!(saving["cache"]["hits"], 1);
    assert_eq!(saving["cache"]["misses"], 1);
    assert_eq!(
        saving["fallback"]["chains"]["gemini-2.5-pro"][0],
        "gemini-2.5-flash"
    );
    let served = &saving["fallback"]["served"][0];
    assert_eq!(
        (&served["requested"], &served["served"], &served["count"]),
        (
            &serde_json::json!("gemini-2.5-pro"),
            &serde_json::json!("gemini-2.5-flash"),
            &serde_json::json!(2)
        )
    );
    let today = saving["cost"]["today"].as_array().unwrap();
    let find = |scope: &str, name: Option<&str>| {
        today
            .iter()
            .find(|s| s["scope"] == scope && s["name"].as_str() == name)
            .unwrap_or_else(|| panic!("no {scope} {name:?} in {today:?}"))
            .clone()
    };
    let pool = find("pool", None);
    assert_eq!(
        pool["calls"], 3,
        "the miss and two fallbacks; the hit cost nothing"
    );
    assert!(pool["spent_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(pool["budget_usd"], 1.0);
    // Clients are named by their token's fingerprint, never the token.
    let first = find("client", Some("…0001"));
    assert_eq!(first["calls"], 2);
    assert_eq!(first["budget_usd"], 0.25);
    assert_eq!(find("client", Some("…0002"))["calls"], 1);
    let text = status.to_string();
    assert!(!text.contains(TOKEN) && !text.contains("client-token-0002"));
    assert_no_secret("status", &text);
}

#[tokio::test]
async fn broken_saving_tables_say_what_to_fix() {
    let mock = mock_builder().start().await.unwrap();
    for (toml, says) in [
        (
            "[gateway.fallback]\n\"gemini-2.5-pro\" = []\n",
            "[gateway.fallback]",
        ),
        ("[gateway.budget]\ndaily_usd = -3\n", "US dollars"),
        ("[gateway.budget]\nthresholds = [80]\n", "fractions"),
        (
            "[gateway.prices.\"gemini-x\"]\ninput = -1\noutput = 1\n",
            "[gateway.prices.\"gemini-x\"]",
        ),
        ("[gateway.cache]\nsize = 3\n", "unknown field"),
        ("[gateway]\nquota_alert = 90\n", "quota_alert"),
    ] {
        let err = config_with_file(&mock, toml)
            .err()
            .unwrap_or_else(|| panic!("{toml} accepted"));
        assert!(err.to_string().contains(says), "{toml}: {err}");
    }
}
