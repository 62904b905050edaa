//! [`ResponseExt`]: what a handler does with the stack's answer, in one line each.

use std::future::Future;

use bytes::Bytes;
use http::Response;
use http_body::Body;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use crate::classify::Classification;
use crate::error::{BoxError, Error, ErrorKind};
use crate::pool::SelectedKey;

mod sealed {
    pub trait Sealed {}
    impl<B> Sealed for http::Response<B> {}
}

/// Turn the stack's final answer into a value or an [`Error`], without boilerplate.
///
/// When retries run out, the stack hands back Google's last answer as it was — a 503, say — as
/// `Ok(response)`: a handler that only uses `?` on the call would answer 200 with Google's error
/// JSON as its text. [`error_for_status`](Self::error_for_status) makes a non-success answer an
/// `Error` (kind [`Upstream`](ErrorKind::Upstream), with Google's status, message and
/// `retry_after`); [`text`](Self::text), [`bytes`](Self::bytes) and [`json`](Self::json) read
/// the body, turning a failure mid-body into an `Error` too. Sealed: implemented for
/// `http::Response<B>`.
///
/// ```
/// use tower::{Layer, ServiceExt};
/// use tower_gemini::{KeyPool, ResponseExt, stack};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let upstream = tower_gemini::mock::demo().start().await?;
/// let pool = tower_gemini::mock::demo_pool()?;
/// # let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
/// let gemini = stack(&pool).layer(client);
/// let request = http::Request::post(upstream.model_url("gemini-2.0-flash", "generateContent"))
///     .body(http_body_util::Full::new(bytes::Bytes::from(r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#)))?;
/// let answer: serde_json::Value = gemini.oneshot(request).await?.error_for_status()?.json().await?;
/// assert!(answer["candidates"].is_array());
/// # Ok::<(), tower_gemini::BoxError>(())
/// # }).unwrap();
/// ```
pub trait ResponseExt: sealed::Sealed + Sized {
    /// `Ok(self)` for a 2xx answer, else an [`Error`] of kind [`Upstream`](ErrorKind::Upstream)
    /// carrying the status, the classification (Google's message, scrubbed of the key), the
    /// key's fingerprint and `retry_after`. The body is not read.
    fn error_for_status(self) -> Result<Self, Error>;

    /// The whole body.
    fn bytes(self) -> impl Future<Output = Result<Bytes, Error>> + Send;

    /// The whole body as UTF-8 text (invalid sequences replaced).
    fn text(self) -> impl Future<Output = Result<String, Error>> + Send;

    /// The whole body, parsed as JSON.
    fn json<T: DeserializeOwned>(self) -> impl Future<Output = Result<T, Error>> + Send;
}

impl<B> ResponseExt for Response<B>
where
    B: Body + Send,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn error_for_status(self) -> Result<Self, Error> {
        let status = self.status();
        if status.is_success() {
            return Ok(self);
        }
        let classification = Classification::of_response(&self);
        let mut error = Error::new(
            ErrorKind::Upstream,
            format!("Gemini answered {classification}"),
        )
        .with_retry_after(classification.retry_after())
        .with_upstream_status(status)
        .with_classification(classification);
        if let Some(selected) = self.extensions().get::<SelectedKey>() {
            error = error.with_key(selected.fingerprint());
        }
        Err(error)
    }

    async fn bytes(self) -> Result<Bytes, Error> {
        match self.into_body().collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(error) => Err(Error::new(
                ErrorKind::Transport,
                "the answer's body failed while it was being read",
            )
            .with_source(error)),
        }
    }

    async fn text(self) -> Result<String, Error> {
        let bytes = self.bytes().await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn json<T: DeserializeOwned>(self) -> Result<T, Error> {
        let bytes = self.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|error| {
            Error::new(
                ErrorKind::Upstream,
                format!("the answer is not the JSON expected: {error}"),
            )
        })
    }
}
