//! No raw key or client token in any log line the gateway prints, at TRACE, through a run with
//! successes, invalid and leaked keys, refusals and the status API. (Its own binary: tracing's
//! callsite cache is shared by the threads of one process.)
#![cfg(feature = "gateway")]

mod common;

use bytes::Bytes;
use common::{Capture, client, text};
use http::Request;
use http_body_util::Full;
use tower_gemini::gateway::{Flags, GatewayConfig, serve_on};
use tower_gemini::mock::MockGemini;

const SECRETS: [&str; 5] = [
    "test-key-logs-0001",
    "test-key-logs-0002",
    "test-key-logs-0003",
    "client-token-logs-0001",
    "admin-token-logs-0001",
];

#[test]
fn no_secret_in_any_log_line() {
    let capture = Capture::default();
    let _guard = capture.install(tracing::Level::TRACE);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut seen = Vec::new();
    runtime.block_on(async {
        let mock = MockGemini::builder()
            .project("proj-leaked", |p| p.leaked_key(SECRETS[1]))
            .project("proj-good", |p| p.key(SECRETS[2]))
            .start()
            .await
            .unwrap();
        let vars = [
            ("GEMINI_API_KEY", SECRETS[..3].join(",")),
            ("GATEWAY_TOKENS", SECRETS[3].to_owned()),
            ("ADMIN_TOKEN", SECRETS[4].to_owned()),
            ("LLM_API_ENDPOINT", mock.url()),
        ];
        let config = GatewayConfig::resolve(Flags::default(), |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        })
        .unwrap();
        tracing::info!("{}", config.describe());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            serve_on(listener, &config, std::future::pending())
                .await
                .unwrap();
        });
        let url = format!("{base}/v1beta/models/gemini-2.0-flash:generateContent");
        for token in [SECRETS[3], "wrong-token-logs-9999"] {
            for _ in 0..3 {
                let request = Request::post(&url)
                    .header("x-goog-api-key", token)
                    .body(Full::new(Bytes::from(common::generate_body("hi"))))
                    .unwrap();
                let response = client().request(request).await.unwrap();
                seen.push(format!("{:?}", response.headers()));
                seen.push(text(response).await);
            }
        }
        let status = Request::get(format!("{base}/api/keys/status"))
            .header("authorization", format!("Bearer {}", SECRETS[4]))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client().request(status).await.unwrap();
        seen.push(text(response).await);
    });
    let logs = capture.text();
    assert!(logs.contains("…0003"), "the run was logged");
    for secret in SECRETS {
        assert!(!logs.contains(secret), "a log line holds {secret}");
        for answer in &seen {
            assert!(
                !answer.contains(secret),
                "an answer holds {secret}: {answer}"
            );
        }
    }
}
