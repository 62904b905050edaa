//! [`ResponseFuture`]: runs the call and records its outcome in the circuit.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::Response;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::circuit::{Breakers, Circuit, Permit, Verdict};
use crate::classify::{Class, Classification};
use crate::context::QueueWait;
use crate::error::{BoxError, Error, ErrorKind};

pin_project! {
    /// Response future of [`CircuitBreaker`](super::CircuitBreaker).
    ///
    /// Dropping it before it completes gives a half-open probe's permit back.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        error: Option<Error>,
        call: Option<Call>,
    }
}

struct Call {
    breakers: Arc<Breakers>,
    circuit: Arc<Circuit>,
    kind: CallKind,
    /// Read only when a slow-call threshold makes latency matter.
    start: Option<Instant>,
}

enum CallKind {
    Closed(u64),
    Probe(Permit),
}

impl<F> ResponseFuture<F> {
    pub(super) fn rejected(error: Error) -> Self {
        ResponseFuture {
            inner: None,
            error: Some(error),
            call: None,
        }
    }

    pub(super) fn closed(
        future: F,
        breakers: Arc<Breakers>,
        circuit: Arc<Circuit>,
        generation: u64,
    ) -> Self {
        Self::running(future, breakers, circuit, CallKind::Closed(generation))
    }

    pub(super) fn probe(
        future: F,
        breakers: Arc<Breakers>,
        circuit: Arc<Circuit>,
        permit: Permit,
    ) -> Self {
        Self::running(future, breakers, circuit, CallKind::Probe(permit))
    }

    fn running(future: F, breakers: Arc<Breakers>, circuit: Arc<Circuit>, kind: CallKind) -> Self {
        ResponseFuture {
            inner: Some(future),
            error: None,
            call: Some(Call {
                circuit,
                start: breakers.config.slow_call.map(|_| Instant::now()),
                kind,
                breakers,
            }),
        }
    }
}

impl Call {
    /// Record the outcome; `waited` is time spent in line for a key, not upstream latency.
    fn finish(self, class: Option<Class>, waited: Duration) {
        let config = &self.breakers.config;
        let verdict = match class {
            Some(class) => {
                let latency = self.start.map_or(Duration::ZERO, |start| {
                    start.elapsed().saturating_sub(waited)
                });
                config.verdict(class, latency)
            }
            None => Verdict::Ignored,
        };
        if class == Some(Class::Success) {
            self.circuit.mark_known();
        }
        match self.kind {
            CallKind::Closed(generation) => {
                self.circuit
                    .record_closed(&self.breakers, generation, verdict)
            }
            CallKind::Probe(permit) => self.circuit.record_probe(&self.breakers, permit, verdict),
        }
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(future) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(Err(this
                .error
                .take()
                .unwrap_or_else(Error::polled_after_completion)));
        };
        let result = ready!(future.poll(cx));
        this.inner.set(None);
        let call = this.call.take();
        match result {
            Ok(response) => {
                let class = Classification::class_of(&response);
                let waited = response
                    .extensions()
                    .get::<QueueWait>()
                    .map_or(Duration::ZERO, |w| w.0);
                if let Some(call) = call {
                    call.finish(Some(class), waited);
                }
                Poll::Ready(Ok(response))
            }
            Err(error) => {
                let error = Error::from_inner(error);
                // Local refusals from inner layers say nothing of upstream health.
                let class = (error.kind() == ErrorKind::Transport).then_some(Class::Transport);
                if let Some(call) = call {
                    call.finish(class, Duration::ZERO);
                }
                Poll::Ready(Err(error))
            }
        }
    }
}
