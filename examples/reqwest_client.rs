//! A reqwest client under the stack, against the embedded mock.
//!
//! ```text
//! cargo run --example reqwest_client --features reqwest
//! ```

use tower::{Layer, ServiceExt};
use tower_gemini::client::ReqwestService;
use tower_gemini::mock::{self, DEMO_MODEL};
use tower_gemini::retry::Attempt;
use tower_gemini::{SelectedKey, stack};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), tower_gemini::BoxError> {
    let upstream = mock::demo().start().await?;
    let pool = mock::demo_pool()?;
    let gemini = stack(&pool).layer(ReqwestService::new()?);

    for i in 1..=4 {
        let body = format!(r#"{{"contents":[{{"parts":[{{"text":"question {i}"}}]}}]}}"#);
        let request = http::Request::post(upstream.model_url(DEMO_MODEL, "generateContent"))
            .header("content-type", "application/json")
            .body(body)?;
        let response = gemini.clone().oneshot(request).await?;
        let served = response
            .extensions()
            .get::<SelectedKey>()
            .map(|k| k.fingerprint().to_string());
        let attempts = response
            .extensions()
            .get::<Attempt>()
            .map_or(1, |a| a.number);
        println!(
            "request {i}: {} by key {} after {attempts} attempt(s)",
            response.status(),
            served.unwrap_or_default()
        );
    }
    Ok(())
}
