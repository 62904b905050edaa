//! Helpers shared by the integration tests: a plain-HTTP hyper client and request builders.
#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::StatusCode;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower_gemini::mock::{Fault, MockGemini, MockServer};
use tower_gemini::pool::ModelLimits;
use tower_gemini::{KeyPool, KeySpec};

pub mod alloc;
#[cfg(feature = "gateway")]
pub mod gateway;
#[cfg(any(feature = "redis-tls", feature = "otel"))]
pub mod pki;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "gateway")]
pub mod replica;

const FLASH: &str = "gemini-2.0-flash";

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A hyper client for the mock (plain HTTP/1.1 on 127.0.0.1).
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn generate_body(text: &str) -> String {
    serde_json::json!({ "contents": [{ "role": "user", "parts": [{ "text": text }] }] }).to_string()
}

/// The request with `x-goog-api-key: key`, for sending to the mock without key rotation.
pub fn with_key<B>(mut request: Request<B>, key: &str) -> Request<B> {
    request
        .headers_mut()
        .insert("x-goog-api-key", key.parse().unwrap());
    request
}

/// `POST …/models/{model}:generateContent` with a one-part prompt.
pub fn generate(mock: &MockServer, model: &str, text: &str) -> Request<Full<Bytes>> {
    Request::post(mock.model_url(model, "generateContent"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(generate_body(text))))
        .unwrap()
}

/// `POST …/models/{model}:streamGenerateContent?alt=sse`.
pub fn stream(mock: &MockServer, model: &str, text: &str) -> Request<Full<Bytes>> {
    Request::post(format!(
        "{}?alt=sse",
        mock.model_url(model, "streamGenerateContent")
    ))
    .header("content-type", "application/json")
    .body(Full::new(Bytes::from(generate_body(text))))
    .unwrap()
}

/// `POST /v1beta/openai/chat/completions`.
pub fn chat(mock: &MockServer, model: &str, text: &str) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "model": model,
        "messages": [{ "role": "user", "content": text }]
    });
    Request::post(format!("{}/v1beta/openai/chat/completions", mock.url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// The whole body as text.
pub async fn text<B>(response: Response<B>) -> String
where
    B: Body,
    B::Error: std::fmt::Debug,
{
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Which key the mock says served the answer (`x-mock-key: ...0001`), as a fingerprint `…0001`.
pub fn served_by<B>(response: &Response<B>) -> String {
    response
        .headers()
        .get("x-mock-key")
        .map(|v| v.to_str().unwrap().replacen("...", "…", 1))
        .unwrap_or_default()
}

/// Captures everything `tracing` prints while installed (on this thread).
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Print every event and span at `level` and above into this capture.
    pub fn install(&self, level: tracing::Level) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// What was printed.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Key A unknown to the mock, key B's project out of daily quota, key C fine.
pub async fn a_bad_b_daily_c_fine() -> (MockServer, KeyPool) {
    let mock = MockGemini::builder()
        .project("proj-b", |p| {
            p.key("test-key-000b").limits(
                FLASH,
                ModelLimits {
                    rpd: Some(1),
                    ..Default::default()
                },
            )
        })
        .project("proj-c", |p| p.key("test-key-000c"))
        .start()
        .await
        .unwrap();
    // Spend proj-b's one request of the day directly.
    let spend = with_key(generate(&mock, FLASH, "x"), "test-key-000b");
    assert_eq!(
        client().request(spend).await.unwrap().status(),
        StatusCode::OK
    );
    let pool = KeyPool::builder()
        .key_with(KeySpec::new("test-key-000a").project("proj-a"))
        .key_with(KeySpec::new("test-key-000b").project("proj-b"))
        .key_with(KeySpec::new("test-key-000c").project("proj-c"))
        .build()
        .unwrap();
    (mock, pool)
}

/// A mock with one project "p" holding `test-key-0001`, and this fault on every request.
pub async fn one_key_mock(fault: Fault) -> MockServer {
    MockGemini::builder()
        .project("p", |p| p.key("test-key-0001"))
        .fault(fault)
        .start()
        .await
        .unwrap()
}

/// Read a body to its end or its first error: the text received, and the error if any.
pub async fn drain<B>(body: B) -> (String, Option<B::Error>)
where
    B: Body + Unpin,
{
    let mut body = body;
    let mut received = Vec::new();
    let error = loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    received.extend_from_slice(bytes::Buf::chunk(&data));
                }
            }
            Some(Err(error)) => break Some(error),
            None => break None,
        }
    };
    (String::from_utf8_lossy(&received).into_owned(), error)
}

/// Serve `router` on 127.0.0.1 (an ephemeral port) for as long as the runtime lives; its base
/// URL. For upstreams that answer in ways the mock does not (hostile bodies, redirects).
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    format!("http://{addr}")
}

/// `POST {base}/v1beta/models/{model}:generateContent` with a one-part prompt.
pub fn generate_at(base: &str, model: &str) -> Request<Full<Bytes>> {
    Request::post(format!("{base}/v1beta/models/{model}:generateContent"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(generate_body("hello"))))
        .unwrap()
}
