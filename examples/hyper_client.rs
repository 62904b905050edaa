//! A hyper client under the stack: one generateContent call and one streamed (SSE) call
//! against the embedded mock, printing which key served and how many attempts it took.
//!
//! ```text
//! cargo run --example hyper_client
//! ```
//!
//! For Google itself, give the legacy client a TLS connector (for instance `hyper-rustls`) and
//! use `https://generativelanguage.googleapis.com` instead of the mock's URL.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, ServiceExt};
use tower_gemini::mock::{self, DEMO_MODEL};
use tower_gemini::{Attempt, ResponseExt, SelectedKey, stack};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), tower_gemini::BoxError> {
    let upstream = mock::demo().start().await?;
    let pool = mock::demo_pool()?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let gemini = stack(&pool).layer(client);

    let prompt = r#"{"contents":[{"parts":[{"text":"Tell me about tower."}]}]}"#;
    let request = Request::post(upstream.model_url(DEMO_MODEL, "generateContent"))
        .body(Full::new(Bytes::from_static(prompt.as_bytes())))?;
    let response = gemini.clone().oneshot(request).await?;
    let served = response
        .extensions()
        .get::<SelectedKey>()
        .map_or_else(|| "-".to_owned(), |k| k.fingerprint().to_string());
    let attempts = response
        .extensions()
        .get::<Attempt>()
        .map_or(1, |a| a.number);
    let text = response.error_for_status()?.text().await?;
    println!("generateContent: key {served}, {attempts} attempt(s)\n{text}");

    let url = format!(
        "{}?alt=sse",
        upstream.model_url(DEMO_MODEL, "streamGenerateContent")
    );
    let request = Request::post(url).body(Full::new(Bytes::from_static(prompt.as_bytes())))?;
    let response = gemini.oneshot(request).await?;
    let mut body = response.into_body();
    let mut chunks = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            chunks += 1;
            print!("chunk {chunks}: {}", String::from_utf8_lossy(&data));
        }
    }
    println!("streamed {chunks} chunks");
    println!(
        "pool: {}",
        serde_json::to_string(
            &pool
                .snapshot()
                .keys
                .iter()
                .map(|k| (k.fingerprint, k.state))
                .collect::<Vec<_>>()
        )?
    );
    Ok(())
}
