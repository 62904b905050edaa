//! The quick-start demo: retry and key rotation over a hyper client against the embedded mock.
//!
//! ```text
//! cargo run --example demo
//! ```
//!
//! No key and no network needed: the mock runs on 127.0.0.1. Four keys: one the mock does not
//! know (invalid), one reported as leaked, one whose project allows 3 requests per minute, one
//! unlimited. Watch the first call rotate past the two bad keys at once, the pool disable them
//! for good, and the small project cool down after its 429 while the big one serves.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_gemini::classify::Classification;
use tower_gemini::mock::MockGemini;
use tower_gemini::pool::ModelLimits;
use tower_gemini::retry::{Attempt, RetryLayer};
use tower_gemini::{KeyPool, KeyRotationLayer, KeySpec};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .init();

    let mock = MockGemini::builder()
        .project("proj-leaked", |p| p.leaked_key("test-key-0002"))
        .project("proj-small", |p| {
            p.key("test-key-0003").limits(
                "gemini-2.0-flash",
                ModelLimits {
                    rpm: Some(3),
                    ..Default::default()
                },
            )
        })
        .project("proj-big", |p| p.key("test-key-0004"))
        .start()
        .await?;
    println!("mock Gemini listening on {}", mock.url());

    let pool = KeyPool::builder()
        .key_with(KeySpec::new("test-key-0001").name("unknown-to-google"))
        .key_with(KeySpec::new("test-key-0002").project("proj-leaked"))
        .key_with(KeySpec::new("test-key-0003").project("proj-small"))
        .key_with(KeySpec::new("test-key-0004").project("proj-big"))
        .build()?;

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut gemini = ServiceBuilder::new()
        .layer(RetryLayer::for_pool(&pool))
        .layer(KeyRotationLayer::new(&pool))
        .service(client);

    for i in 1..=10 {
        let body = format!(r#"{{"contents":[{{"parts":[{{"text":"question number {i}"}}]}}]}}"#);
        let request = Request::post(mock.model_url("gemini-2.0-flash", "generateContent"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        match gemini.ready().await?.call(request).await {
            Ok(response) => {
                let served = response
                    .headers()
                    .get("x-mock-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?")
                    .to_owned();
                let verdict = response
                    .extensions()
                    .get::<Classification>()
                    .map(|v| v.to_string());
                let attempts = response
                    .extensions()
                    .get::<Attempt>()
                    .map_or(1, |a| a.number);
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                println!(
                    "request {i:>2}: {status} from key {served} after {attempts} attempt(s) ({}), {} bytes",
                    verdict.unwrap_or_default(),
                    body.len()
                );
            }
            Err(error) => println!("request {i:>2}: {error}"),
        }
    }

    println!(
        "\npool status:\n{}",
        serde_json::to_string_pretty(&pool.snapshot())?
    );
    println!(
        "mock answered (status, count): {:?}",
        mock.stats().statuses()
    );
    Ok(())
}
