//! The [`KeyRotation`] service.

use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::DEFAULT_MAX_ERROR_BODY;
use super::future::ResponseFuture;
use super::inject::{KeyPlacement, replace_key};
use crate::error::{BoxError, Error};
use crate::model::model_of;
use crate::pool::KeyPool;
use crate::quota::Demand;

/// Middleware that picks a key from a [`KeyPool`] for every request. See the
/// [module docs](super).
#[derive(Clone, Debug)]
pub struct KeyRotation<S> {
    inner: S,
    pool: KeyPool,
    placement: KeyPlacement,
    max_error_body: usize,
}

impl<S> KeyRotation<S> {
    /// Wrap `inner`, rotating over the keys of `pool`.
    pub fn new(inner: S, pool: KeyPool) -> Self {
        KeyRotation {
            inner,
            pool,
            placement: KeyPlacement::default(),
            max_error_body: DEFAULT_MAX_ERROR_BODY,
        }
    }

    /// Where the key goes (default [`KeyPlacement::Auto`]).
    pub fn placement(mut self, placement: KeyPlacement) -> Self {
        self.placement = placement;
        self
    }

    /// How many bytes of a non-2xx body to read for classification.
    pub fn max_error_body(mut self, bytes: usize) -> Self {
        self.max_error_body = bytes;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &KeyPool {
        &self.pool
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

impl<S, B, ResB> Service<Request<B>> for KeyRotation<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    B: 'static,
    ResB: Body,
{
    type Response = Response<crate::body::ResponseBody<ResB>>;
    type Error = Error;
    type Future = ResponseFuture<S::Future, ResB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_inner)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // With quota limits in play, selection needs the request's size (estimated once, and
        // handed to the quota layer in the extensions).
        let demand = self.pool.has_limits().then(|| {
            request
                .extensions()
                .get::<Demand>()
                .copied()
                .unwrap_or_else(|| self.pool.demand_of(&request))
        });
        let lease = {
            let model = model_of(&request);
            self.pool
                .select_with(model.as_deref(), demand.unwrap_or_default())
        };
        if let Some(demand) = demand {
            request.extensions_mut().insert(demand);
        }
        let lease = match lease {
            Ok(lease) => lease,
            Err(error) => {
                tracing::debug!(error = %error, "no key for request");
                return ResponseFuture::failed(error);
            }
        };
        let selected = lease.selected();
        // Fill in the attempt span (see `RetryLayer`), if any; a no-op elsewhere.
        let span = tracing::Span::current();
        if !span.is_disabled() {
            span.record(
                "gemini.key",
                tracing::field::display(selected.fingerprint()),
            );
            if let Some(model) = selected.model() {
                span.record("gemini.model", model);
            }
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let attempt = request
                .extensions()
                .get::<crate::retry::Attempt>()
                .map(|a| format!(" (attempt {}/{})", a.number, a.max))
                .unwrap_or_default();
            tracing::debug!(
                gemini.key = %selected.fingerprint(),
                gemini.project = selected.project(),
                gemini.model = selected.model().unwrap_or("unknown"),
                "using key {}{attempt}",
                selected.fingerprint()
            );
        }
        replace_key(&mut request, lease.key(), &self.placement);
        request.extensions_mut().insert(selected.clone());
        let future = self.inner.call(request);
        ResponseFuture::called(future, lease, selected, self.max_error_body)
    }
}
