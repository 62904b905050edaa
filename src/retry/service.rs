//! The [`Retry`] service.

use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::future::ResponseFuture;
use super::policy::RetryPolicy;
use crate::body::ResponseBody;
use crate::context::ErrorBodyLimits;
use crate::error::{BoxError, Error};

/// Middleware that retries Gemini requests by error class, made by
/// [`RetryLayer`](super::RetryLayer). See the [module docs](super).
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    policy: RetryPolicy,
    error_body: ErrorBodyLimits,
}

impl<S> Retry<S> {
    pub(super) fn new(inner: S, policy: RetryPolicy, error_body: ErrorBodyLimits) -> Self {
        Retry {
            inner,
            policy,
            error_body,
        }
    }

    crate::macros::define_inner_service_accessors!();
}

impl<S, B, ResB> Service<Request<B>> for Retry<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: Clone + 'static,
    ResB: Body,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = Error;
    type Future = ResponseFuture<S, B, ResB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_inner)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // Every attempt reads the model: an OpenAI body is parsed for it once, here.
        crate::model::resolve_from_body(&mut request);
        // The ready service makes the first attempt; a clone takes its place here.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(service, request, self.policy.clone(), self.error_body)
    }
}
