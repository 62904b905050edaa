//! [`ResponseFuture`]: waits for the answer, reads an error body, classifies and reports.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::header::CONTENT_LENGTH;
use http::response::Parts;
use http::{HeaderValue, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::body::{Prefix, ResponseBody};
use crate::classify::Classification;
use crate::error::{self, BoxError, Error, ErrorKind};
use crate::pool::{KeyLease, SelectedKey};
use crate::telemetry;

pin_project! {
    /// Response future of [`KeyRotation`](super::KeyRotation).
    pub struct ResponseFuture<F, B: Body> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B: Body> {
        Failed { error: Option<Error> },
        Waiting { #[pin] future: F, call: Option<Call> },
        Reading { read: Option<Box<Reading<B>>> },
    }
}

struct Call {
    lease: KeyLease,
    /// Made once in `call`; one copy went into the request, this one goes into the response.
    selected: SelectedKey,
    start: Instant,
    max_error_body: usize,
}

/// A non-2xx answer whose body is being read for classification.
struct Reading<B: Body> {
    parts: Parts,
    prefix: Prefix<B>,
    call: Call,
    latency: Duration,
}

impl<F, B: Body> ResponseFuture<F, B> {
    pub(super) fn failed(error: Error) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
        }
    }

    pub(super) fn called(
        future: F,
        lease: KeyLease,
        selected: SelectedKey,
        max_error_body: usize,
    ) -> Self {
        ResponseFuture {
            state: State::Waiting {
                future,
                call: Some(Call {
                    lease,
                    selected,
                    start: Instant::now(),
                    max_error_body,
                }),
            },
        }
    }
}

fn polled_after_completion() -> Error {
    Error::new(
        ErrorKind::Transport,
        "key rotation future polled after it completed",
    )
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
{
    type Output = Result<Response<ResponseBody<B>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or_else(polled_after_completion)));
                }
                StateProj::Waiting { future, call } => {
                    let result = ready!(future.poll(cx));
                    let Some(call) = call.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let latency = call.start.elapsed();
                    match result {
                        Err(inner) => {
                            this.state.set(State::Failed { error: None });
                            return Poll::Ready(Err(inner_error(inner.into(), call, latency)));
                        }
                        Ok(response) if response.status().is_success() => {
                            this.state.set(State::Failed { error: None });
                            let classification = Classification::success(response.status());
                            let (mut parts, body) = response.into_parts();
                            let selected = call.selected;
                            telemetry::request(
                                selected.fingerprint(),
                                selected.model(),
                                classification.class(),
                                latency,
                            );
                            parts.extensions.insert(selected);
                            call.lease.report(&classification, latency);
                            parts.extensions.insert(classification);
                            let body = ResponseBody::passthrough(body);
                            return Poll::Ready(Ok(Response::from_parts(parts, body)));
                        }
                        Ok(response) => {
                            let (parts, body) = response.into_parts();
                            let read = Reading {
                                parts,
                                prefix: Prefix::new(body, call.max_error_body),
                                call,
                                latency,
                            };
                            this.state.set(State::Reading {
                                read: Some(Box::new(read)),
                            });
                        }
                    }
                }
                StateProj::Reading { read } => {
                    let Some(reading) = read.as_mut() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    ready!(reading.prefix.poll_read(cx));
                    let Some(reading) = read.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    this.state.set(State::Failed { error: None });
                    return Poll::Ready(Ok(reading.finish()));
                }
            }
        }
    }
}

/// The inner service failed. A crate [`Error`] from an inner layer (a local refusal) passes
/// through; anything else is a transport failure, reported to the pool and scrubbed of the key.
fn inner_error(inner: BoxError, call: Call, latency: Duration) -> Error {
    let key = call.lease.key();
    let fingerprint = key.fingerprint();
    match inner.downcast::<Error>() {
        Ok(local) => {
            let local = *local;
            if local.key().is_some() {
                local
            } else {
                local.with_key(fingerprint)
            }
        }
        Err(other) => {
            let source = error::scrub(other, key.expose(), fingerprint);
            let classification = Classification::transport();
            let selected = call.selected;
            telemetry::request(
                fingerprint,
                selected.model(),
                classification.class(),
                latency,
            );
            tracing::debug!(gemini.key = %fingerprint, gemini.class = "transport", error = %source,
                "request with key {fingerprint} failed before an answer");
            call.lease.report(&classification, latency);
            Error::new(ErrorKind::Transport, "the request to Gemini failed")
                .with_key(fingerprint)
                .with_classification(classification)
                .with_source(source)
        }
    }
}

impl<B: Body> Reading<B> {
    fn finish(self) -> Response<ResponseBody<B>> {
        let Reading {
            mut parts,
            mut prefix,
            call,
            latency,
        } = self;
        let key = call.lease.key();
        let fingerprint = key.fingerprint();
        let secret = key.expose();
        let mut classification = Classification::from_response(parts.status, prefix.seen());
        classification.redact(secret, &fingerprint.to_string());
        // Some Google messages quote the consumer (`api_key:…`): the key never leaves this layer.
        if prefix.replace(secret.as_bytes(), fingerprint.to_string().as_bytes()) {
            if prefix.is_complete() {
                parts
                    .headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(prefix.buffered_len()));
            } else {
                parts.headers.remove(CONTENT_LENGTH);
            }
        }
        tracing::debug!(gemini.key = %fingerprint, gemini.class = %classification.class(),
            "key {fingerprint} got {classification}");
        let selected = call.selected;
        telemetry::request(
            fingerprint,
            selected.model(),
            classification.class(),
            latency,
        );
        parts.extensions.insert(selected);
        call.lease.report(&classification, latency);
        parts.extensions.insert(classification);
        Response::from_parts(parts, prefix.into_body())
    }
}
