//! The whole recommended stack in one `ServiceBuilder` step, over a hyper client, against the
//! embedded mock.
//!
//! ```text
//! cargo run --example service_builder
//! ```
//!
//! The demo pool has four keys: one unknown to Google, one whose project is out of prepaid
//! credits, one small project (3 requests per minute) and one big. The first request rotates
//! past the two bad keys at once; later ones never touch them again.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_gemini::classify::Classification;
use tower_gemini::mock::{self, DEMO_MODEL};
use tower_gemini::retry::Attempt;
use tower_gemini::{SelectedKey, ServiceBuilderExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), tower_gemini::BoxError> {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .init();
    let upstream = mock::demo().start().await?;
    let pool = mock::demo_pool()?;

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    // Retry -> CircuitBreaker -> KeyRotation -> Quota -> client.
    let mut gemini = ServiceBuilder::new().gemini(&pool).service(client);

    for i in 1..=6 {
        let body = format!(r#"{{"contents":[{{"parts":[{{"text":"question {i}"}}]}}]}}"#);
        let request = Request::post(upstream.model_url(DEMO_MODEL, "generateContent"))
            .body(Full::new(Bytes::from(body)))?;
        let response = gemini.ready().await?.call(request).await?;
        let key = response
            .extensions()
            .get::<SelectedKey>()
            .map(|k| k.fingerprint().to_string());
        let attempts = response
            .extensions()
            .get::<Attempt>()
            .map_or(1, |a| a.number);
        let verdict = response
            .extensions()
            .get::<Classification>()
            .map(ToString::to_string);
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes().len();
        println!(
            "request {i}: {status} by key {} after {attempts} attempt(s), {} ({bytes} bytes)",
            key.unwrap_or_default(),
            verdict.unwrap_or_default()
        );
    }
    println!(
        "upstream saw {} requests: {:?}",
        upstream.stats().total_requests(),
        upstream.stats().statuses()
    );
    Ok(())
}
