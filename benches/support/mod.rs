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
    service_fn(|_: Request<Full<Bytes>>| {
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"{}")))))
    })
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
