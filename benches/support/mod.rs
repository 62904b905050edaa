//! What the benches share: the request, the in-memory client, fake keys and limits.
#![allow(dead_code)] // each bench uses part of it

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::service_fn;
use tower_gemini::pool::ModelLimits;

pub const MODEL: &str = "gemini-2.0-flash";
pub const URL: &str = "http://127.0.0.1/v1beta/models/gemini-2.0-flash:generateContent";
pub const BODY: &str = r#"{"contents":[{"role":"user","parts":[{"text":"Explain tower middleware in one paragraph."}]}]}"#;

/// A `generateContent` request as a caller builds it.
pub fn request() -> Request<Full<Bytes>> {
    Request::post(URL)
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap()
}

pub type Answer = Result<Response<Full<Bytes>>, Infallible>;

/// The "client": an in-memory service that answers 200 at once, so what is measured around it
/// is the middleware's own cost.
pub fn client() -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = std::future::Ready<Answer>,
> + Clone
+ Send
+ Sync
+ 'static {
    answering(b"{}")
}

/// An in-memory client that answers 200 with `body` at once.
fn answering(
    body: &'static [u8],
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = std::future::Ready<Answer>,
> + Clone
+ Send
+ Sync
+ 'static {
    service_fn(move |_: Request<Full<Bytes>>| {
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(body)))))
    })
}

/// A Gemini answer as Google shapes it, with its `usageMetadata` (about 700 bytes).
pub const ANSWER: &str = r#"{"candidates":[{"content":{"parts":[{"text":"Tower middleware wraps a service in layers: each layer is a service that takes a request, may change it, calls the inner service and may change its answer. Retries, timeouts, rate limits and key rotation are written once and composed around any client."}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":52,"totalTokenCount":93,"promptTokensDetails":[{"modality":"TEXT","tokenCount":9}],"thoughtsTokenCount":32},"modelVersion":"gemini-2.0-flash","responseId":"bench-0001"}"#;

/// The client answering [`ANSWER`].
pub fn answering_client() -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = std::future::Ready<Answer>,
> + Clone
+ Send
+ Sync
+ 'static {
    answering(ANSWER.as_bytes())
}

/// `n` obviously fake keys.
pub fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("test-key-{i:04}")).collect()
}

/// RPM, TPM and RPD limits far above what a bench sends: every call is admitted, and counted.
pub fn limits() -> ModelLimits {
    ModelLimits {
        rpm: Some(u32::MAX),
        tpm: Some(u64::MAX / 2),
        rpd: Some(u32::MAX),
        ipm: None,
    }
}
