//! The quick-start demo: the whole stack over a hyper client, against the embedded mock.
//!
//! ```text
//! cargo run --example demo
//! ```
//!
//! No key and no network needed: the mock runs on 127.0.0.1. Four keys: one the mock does not
//! know (invalid), one reported as leaked, one whose project allows 3 requests per minute, one
//! unlimited. Watch the first call rotate past the two bad keys at once, the pool disable them
//! for good, and the small project learn its limit from its first 429 while the big one serves.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, ServiceExt};
use tower_gemini::mock::MockGemini;
use tower_gemini::pool::KeyState;
use tower_gemini::{Attempt, KeyPool, KeySpec, ModelLimits, ResponseExt, SelectedKey, stack};

const MODEL: &str = "gemini-2.0-flash";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), tower_gemini::BoxError> {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .init();

    let mock = MockGemini::builder()
        .project("proj-leaked", |p| p.leaked_key("test-key-0002"))
        .project("proj-small", |p| {
            p.key("test-key-0003").limits(
                MODEL,
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
    let gemini = stack(&pool).layer(client);

    println!();
    for i in 1..=10 {
        let body = format!(r#"{{"contents":[{{"parts":[{{"text":"question number {i}"}}]}}]}}"#);
        let request = Request::post(mock.model_url(MODEL, "generateContent"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        match gemini.clone().oneshot(request).await {
            Ok(response) => {
                let key = response
                    .extensions()
                    .get::<SelectedKey>()
                    .map_or_else(|| "-".to_owned(), |k| k.fingerprint().to_string());
                let attempts = response
                    .extensions()
                    .get::<Attempt>()
                    .map_or(1, |a| a.number);
                let status = response.status();
                let text = response.error_for_status()?.text().await?;
                println!(
                    "request {i:>2}: {status} with key {key} after {attempts} attempt(s), {} bytes",
                    text.len()
                );
            }
            Err(error) => println!("request {i:>2}: {error}"),
        }
    }

    let snapshot = pool.snapshot();
    println!(
        "\n{:<6} {:<18} {:<24} {:>8} {:>9}",
        "key", "project", "state", "answers", "successes"
    );
    for key in &snapshot.keys {
        let state = match (key.state, key.reason, key.models.first()) {
            (KeyState::Disabled, Some(reason), _) => format!("disabled: {}", reason.as_str()),
            (_, _, Some(model)) => format!("cooling: {}", model.reason),
            (state, _, None) => format!("{state:?}").to_lowercase(),
        };
        println!(
            "{:<6} {:<18} {:<24} {:>8} {:>9}",
            key.fingerprint.to_string(),
            key.project,
            state,
            key.counters.total,
            key.counters.successes
        );
    }
    for quota in &snapshot.quota {
        if let Some(rpm) = quota.usage.rpm {
            println!(
                "\n{} learned its limit for {}: {} of {} requests per minute used",
                quota.project, quota.model, rpm.used, rpm.limit
            );
        }
    }
    println!(
        "the mock answered (status, count): {:?}",
        mock.stats().statuses()
    );
    Ok(())
}
