//! The [`CircuitBreaker`] service.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::BreakerHandle;
use super::circuit::{Admission, Breakers};
use super::future::ResponseFuture;
use super::scope::Scope;
use crate::error::{BoxError, Error};

/// Middleware that fails fast while a scope's upstream is failing. See the [module docs](super).
#[derive(Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    breakers: Arc<Breakers>,
    scope: Scope,
}

impl<S> CircuitBreaker<S> {
    pub(super) fn new(inner: S, breakers: Arc<Breakers>, scope: Scope) -> Self {
        CircuitBreaker {
            inner,
            breakers,
            scope,
        }
    }

    /// A handle on the circuits' states.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            registry: self.breakers.registry.clone(),
        }
    }

    crate::macros::define_inner_service_accessors!();
}

impl<S: std::fmt::Debug> std::fmt::Debug for CircuitBreaker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("scope", &self.scope)
            .field("config", &self.breakers.config)
            .finish()
    }
}

impl<S, B, ResB> Service<Request<B>> for CircuitBreaker<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    B: 'static,
{
    type Response = Response<ResB>;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    /// The inner service's readiness; an open circuit never makes this wait.
    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_inner)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The circuit is consulted before the inner service sees anything.
        let circuit = self.breakers.circuit(&self.scope.of(&request));
        match circuit.admit(&self.breakers) {
            Admission::Rejected(error) => ResponseFuture::rejected(error),
            Admission::Closed { generation } => ResponseFuture::closed(
                self.inner.call(request),
                self.breakers.clone(),
                circuit,
                generation,
            ),
            Admission::Probe(permit) => ResponseFuture::probe(
                self.inner.call(request),
                self.breakers.clone(),
                circuit,
                permit,
            ),
        }
    }
}
