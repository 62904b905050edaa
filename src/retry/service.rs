//! The [`Retry`] service.

use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::future::ResponseFuture;
use super::policy::RetryPolicy;
use crate::body::ResponseBody;
use crate::error::{BoxError, Error};
use crate::key_rotation::ErrorBodyLimits;

/// Middleware that retries Gemini requests by error class. See the [module docs](super).
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    policy: RetryPolicy,
    error_body: ErrorBodyLimits,
}

impl<S> Retry<S> {
    /// Wrap `inner` with `policy`.
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        Retry {
            inner,
            policy,
            error_body: ErrorBodyLimits::default(),
        }
    }

    /// How much of an unclassified error body to read.
    pub fn max_error_body(mut self, bytes: usize) -> Self {
        self.error_body.bytes = bytes;
        self
    }

    /// How long to read an unclassified error body at most.
    pub fn error_body_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.error_body.time = timeout;
        self
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResB> Service<Request<B>> for Retry<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: Clone,
    ResB: Body,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = Error;
    type Future = ResponseFuture<S, B, ResB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_inner)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The ready service makes the first attempt; a clone takes its place here.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(service, request, self.policy.clone(), self.error_body)
    }
}
