//! An axum app whose handler calls Gemini through a shared stack, with per-client limits on the
//! router. It serves on 127.0.0.1, calls itself a few times, prints what happened and exits.
//!
//! ```text
//! cargo run --example axum_app --features axum
//! ```

use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use http::{HeaderName, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tower::ServiceExt;
use tower_gemini::mock::{self, DEMO_MODEL};
use tower_gemini::quota::ClientKey;
use tower_gemini::{
    Attempt, BoxGemini, InboundQuotaLayer, ModelLimits, ResponseExt, SelectedKey, stack,
};

#[derive(Clone)]
struct App {
    /// The whole stack, boxed: one type to name, whatever the client.
    gemini: BoxGemini,
    upstream: String,
}

#[derive(Deserialize)]
struct Question {
    prompt: String,
}

#[derive(Serialize)]
struct Answer {
    text: String,
    key: String,
    attempts: u32,
}

/// Errors become responses (429/503/504 with `Retry-After` and a JSON body, or Google's own
/// status when its last answer was an error), never a panic and never a 200 with an error inside.
async fn ask(
    State(app): State<App>,
    Json(question): Json<Question>,
) -> Result<Json<Answer>, tower_gemini::Error> {
    let body = serde_json::json!({ "contents": [{ "parts": [{ "text": question.prompt }] }] });
    let request = Request::post(format!(
        "{}/v1beta/models/{DEMO_MODEL}:generateContent",
        app.upstream
    ))
    .body(Full::new(Bytes::from(body.to_string())))
    .map_err(|e| {
        tower_gemini::Error::new(tower_gemini::ErrorKind::Config, format!("bad request: {e}"))
    })?;
    let response = app.gemini.oneshot(request).await?.error_for_status()?;
    let key = response
        .extensions()
        .get::<SelectedKey>()
        .map(|k| k.fingerprint().to_string())
        .unwrap_or_default();
    let attempts = response
        .extensions()
        .get::<Attempt>()
        .map_or(1, |a| a.number);
    let json: serde_json::Value = response.json().await?;
    let text = json["candidates"][0]["content"]["parts"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok(Json(Answer {
        text,
        key,
        attempts,
    }))
}

fn app(upstream: String, pool: &tower_gemini::KeyPool) -> Router {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let state = App {
        gemini: stack(pool).boxed(client),
        upstream,
    };
    Router::new()
        .route("/ask", post(ask))
        .with_state(state)
        // Two questions per minute per client token.
        .layer(
            InboundQuotaLayer::new(ModelLimits {
                rpm: Some(2),
                ..Default::default()
            })
            .client_key(ClientKey::header(HeaderName::from_static("x-client-token"))),
        )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), tower_gemini::BoxError> {
    let upstream = mock::demo().start().await?;
    let pool = mock::demo_pool()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(axum::serve(listener, app(upstream.url(), &pool)).into_future());
    println!("app listening on http://{addr}");

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for (i, token) in [
        "client-token-aaaa",
        "client-token-aaaa",
        "client-token-aaaa",
        "client-token-bbbb",
    ]
    .iter()
    .enumerate()
    {
        let request = Request::post(format!("http://{addr}/ask"))
            .header("content-type", "application/json")
            .header("x-client-token", *token)
            .body(Full::new(Bytes::from(format!(
                r#"{{"prompt":"question {i}"}}"#
            ))))?;
        let response =
            tokio::time::timeout(Duration::from_secs(10), client.request(request)).await??;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| "-".to_owned(), |v| format!("{v}s"));
        let body = response.into_body().collect().await?.to_bytes();
        println!(
            "call {} ({token}): {status}, retry after {retry_after}: {}",
            i + 1,
            String::from_utf8_lossy(&body)
        );
    }
    server.abort();
    Ok(())
}
