//! The [`Fallback`] service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, Response};
use tower::ServiceExt;
use tower_service::Service;

use super::{
    Chains, FALLBACK_HEADER, FallbackReason, MODEL_HEADER, ModelFallback, NextModelWaits, rewrite,
};
use crate::error::{BoxError, Error};
use crate::model::{self, Model};

/// Tries the next model of a chain when the requested one cannot be served, made by
/// [`FallbackLayer`](super::FallbackLayer). See the [module docs](super).
#[derive(Clone)]
pub struct Fallback<S> {
    inner: S,
    chains: Arc<Chains>,
}

impl<S> Fallback<S> {
    pub(crate) fn new(inner: S, chains: Arc<Chains>) -> Self {
        Fallback { inner, chains }
    }

    crate::macros::define_inner_service_accessors!();
}

impl<S> std::fmt::Debug for Fallback<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fallback")
            .field("chains", &self.chains.next.len())
            .finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Fallback`]: the inner call as it is when the request's model has no
    /// chain, else the chain's attempts (boxed).
    pub struct ResponseFuture<F, ResB> {
        #[pin]
        kind: Kind<F, ResB>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F, ResB> {
        Direct { #[pin] future: F },
        Chained { future: BoxFuture<'static, Result<Response<ResB>, Error>> },
    }
}

impl<F, ResB> ResponseFuture<F, ResB> {
    fn direct(future: F) -> Self {
        ResponseFuture {
            kind: Kind::Direct { future },
        }
    }
}

impl<F, ResB, E> Future for ResponseFuture<F, ResB>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Direct { future } => future.poll(cx).map_err(Error::from_inner),
            KindProj::Chained { future } => future.as_mut().poll(cx),
        }
    }
}

/// Does the caller forbid falling back (`x-gemini-fallback: no`)?
fn forbidden(value: &HeaderValue) -> bool {
    let value = value.as_bytes();
    ["no", "off", "false", "0"]
        .iter()
        .any(|no| value.trim_ascii().eq_ignore_ascii_case(no.as_bytes()))
}

impl<S, B, ResB> Service<Request<B>> for Fallback<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Clone + Send + 'static,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = ResponseFuture<S::Future, ResB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_inner)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if self.chains.next.is_empty() {
            return ResponseFuture::direct(self.inner.call(request));
        }
        let opted_out = match request.headers_mut().remove(FALLBACK_HEADER) {
            Some(value) => forbidden(&value),
            None => false,
        };
        let chain = match model::resolve(&mut request) {
            Some(requested) if !opted_out => self
                .chains
                .shared_after(requested.as_str())
                .map(|then| (requested, then)),
            _ => None,
        };
        let Some((requested, then)) = chain else {
            return ResponseFuture::direct(self.inner.call(request));
        };
        let template = request.clone();
        // Another model waits: the retry layer does not wait for this one's open circuit.
        request.extensions_mut().insert(NextModelWaits);
        // The ready service makes the first attempt; clones make the chain's.
        let first = self.inner.call(request);
        let inner = self.inner.clone();
        ResponseFuture {
            kind: Kind::Chained {
                future: Box::pin(follow(first, inner, template, requested, then)),
            },
        }
    }
}

/// The requested model's attempt, then each model of its chain while the answer is a refusal
/// for the model.
async fn follow<S, B, ResB>(
    first: S::Future,
    inner: S,
    template: Request<B>,
    requested: Model,
    then: Arc<[Model]>,
) -> Result<Response<ResB>, Error>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: Clone + 'static,
{
    let mut result = first.await.map_err(Error::from_inner);
    let mut first_reason = None;
    let mut last = &requested;
    for (index, next) in then.iter().enumerate() {
        let reason = match &result {
            Ok(response) => FallbackReason::of_response(response),
            Err(error) => FallbackReason::of_error(error),
        };
        let Some(reason) = reason else {
            break;
        };
        let Some(mut rewritten) = rewrite::for_model(&template, next) else {
            break;
        };
        if index + 1 < then.len() {
            rewritten.extensions_mut().insert(NextModelWaits);
        }
        // DEBUG: under load a fallback comes with every request for a scarce model, dozens a
        // second; `gemini_fallbacks_total` and the gateway's status count them.
        tracing::debug!(
            from = last.as_str(),
            to = next.as_str(),
            reason = reason.as_str(),
            "no project can serve the model now; falling back"
        );
        crate::telemetry::fallback(last.as_str(), next.as_str(), reason.as_str());
        first_reason.get_or_insert(reason);
        last = next;
        // The refused answer (a local error, or Google's 429 with its small body) is dropped.
        result = inner
            .clone()
            .oneshot(rewritten)
            .await
            .map_err(Error::from_inner);
    }
    let Some(reason) = first_reason else {
        return result;
    };
    let served = last.clone();
    if let Ok(response) = result.as_mut() {
        // Model names were checked when the chain was configured (the served one) or are
        // the caller's (the requested one): both make header values or are left out.
        if let Ok(value) = HeaderValue::from_str(served.as_str()) {
            response.headers_mut().insert(MODEL_HEADER, value);
        }
        let said = format!("{}; reason={}", requested.as_str(), reason.as_str());
        if let Ok(value) = HeaderValue::from_str(&said) {
            response.headers_mut().insert(FALLBACK_HEADER, value);
        }
        response.extensions_mut().insert(ModelFallback {
            requested,
            served,
            reason,
        });
    }
    result
}
