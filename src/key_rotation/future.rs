//! [`ResponseFuture`]: waits for the answer, reads an error body, classifies and reports.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use http::Request;
use tower_service::Service;

use super::inject::KeyPlacement;
use super::inject::{prepare, request_size};
use crate::body::{ErrorAnswer, ResponseBody, Scrubber};
use crate::classify::Classification;
use crate::context::{ErrorBodyLimits, QueueWait};
use crate::error::{self, BoxError, Error, ErrorKind};
use crate::pool::{KeyLease, KeyWait, SelectedKey};
use crate::telemetry;

pin_project! {
    /// Response future of [`KeyRotation`](super::KeyRotation).
    pub struct ResponseFuture<S, ReqB, B>
    where
        S: Service<Request<ReqB>>,
        B: Body,
    {
        #[pin]
        state: State<S, ReqB, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqB, B>
    where
        S: Service<Request<ReqB>>,
        B: Body,
    {
        Failed { error: Option<Error> },
        Queued { queued: Option<Box<Queued<S, ReqB>>> },
        Waiting { #[pin] future: S::Future, call: Option<Call> },
        Reading { read: Option<Box<Reading<B>>> },
    }
}

/// A request waiting in line for a key, with the service that will send it.
struct Queued<S, ReqB> {
    since: Instant,
    wait: KeyWait,
    lease: Option<KeyLease>,
    service: S,
    request: Option<Request<ReqB>>,
    placement: KeyPlacement,
    error_body: ErrorBodyLimits,
}

struct Call {
    lease: KeyLease,
    /// Made once in `call`; one copy went into the request, this one goes into the response.
    selected: SelectedKey,
    start: Instant,
    error_body: ErrorBodyLimits,
    /// How long the request waited in line for its key, if it did.
    waited: Option<Duration>,
    /// The request body's length, if it was in memory.
    request_bytes: Option<usize>,
}

/// Bytes of a request body that hold at least one token (text runs about 4 per token; JSON
/// and whitespace more): a body of `n` bytes holds at least `n / 8` tokens for this purpose.
const BYTES_PER_TOKEN_AT_MOST: u64 = 8;

/// A non-2xx answer whose body is being read for classification.
struct Reading<B: Body> {
    answer: ErrorAnswer<B>,
    call: Call,
    latency: Duration,
}

impl<S, ReqB> Queued<S, ReqB>
where
    S: Service<Request<ReqB>>,
    S::Error: Into<BoxError>,
    ReqB: 'static,
{
    /// Ready when a key is leased and the service can take the request.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.lease.is_none() {
            self.lease = Some(ready!(self.wait.as_mut().poll(cx))?);
        }
        self.service.poll_ready(cx).map_err(Error::from_inner)
    }

    /// Send the request with the leased key: the call's state, timed from now, with how long
    /// it waited in line.
    #[inline]
    fn dispatch<B: Body>(mut self) -> State<S, ReqB, B> {
        let (Some(request), Some(lease)) = (self.request.take(), self.lease.take()) else {
            return State::Failed {
                error: Some(Error::polled_after_completion()),
            };
        };
        let (request, lease, selected) = prepare(request, lease, &self.placement);
        let size = request_size(&request);
        let future = self.service.call(request);
        let mut call = Call::new(lease, selected, self.error_body, size);
        call.waited = Some(self.since.elapsed());
        State::Waiting {
            future,
            call: Some(call),
        }
    }
}

impl Call {
    #[inline]
    fn new(
        lease: KeyLease,
        selected: SelectedKey,
        error_body: ErrorBodyLimits,
        request_bytes: Option<usize>,
    ) -> Call {
        Call {
            lease,
            selected,
            start: Instant::now(),
            error_body,
            waited: None,
            request_bytes,
        }
    }

    /// A 2xx: classified from its status alone, reported, its body passed through untouched.
    #[inline]
    fn success<B: Body>(
        self,
        response: Response<B>,
        latency: Duration,
    ) -> Response<ResponseBody<B>> {
        let classification = Classification::success(response.status());
        let (mut parts, body) = response.into_parts();
        if let Some(waited) = self.waited {
            parts.extensions.insert(QueueWait(waited));
        }
        let selected = self.selected;
        telemetry::request(
            selected.fingerprint(),
            selected.model(),
            classification.class(),
            latency,
        );
        parts.extensions.insert(selected);
        self.lease.report(&classification, latency);
        parts.extensions.insert(classification);
        Response::from_parts(parts, ResponseBody::passthrough(body))
    }
}

impl<S, ReqB, B> ResponseFuture<S, ReqB, B>
where
    S: Service<Request<ReqB>>,
    B: Body,
{
    pub(super) fn failed(error: Error) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
        }
    }

    pub(super) fn queued(
        wait: KeyWait,
        service: S,
        request: Request<ReqB>,
        placement: KeyPlacement,
        error_body: ErrorBodyLimits,
    ) -> Self {
        ResponseFuture {
            state: State::Queued {
                queued: Some(Box::new(Queued {
                    since: Instant::now(),
                    wait,
                    lease: None,
                    service,
                    request: Some(request),
                    placement,
                    error_body,
                })),
            },
        }
    }

    pub(super) fn called(
        future: S::Future,
        lease: KeyLease,
        selected: SelectedKey,
        error_body: ErrorBodyLimits,
        request_bytes: Option<usize>,
    ) -> Self {
        ResponseFuture {
            state: State::Waiting {
                future,
                call: Some(Call::new(lease, selected, error_body, request_bytes)),
            },
        }
    }
}

impl<S, ReqB, B> Future for ResponseFuture<S, ReqB, B>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    ReqB: 'static,
    B: Body,
{
    type Output = Result<Response<ResponseBody<B>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or_else(Error::polled_after_completion)));
                }
                StateProj::Queued { queued } => {
                    let Some(line) = queued.as_mut() else {
                        return Poll::Ready(Err(Error::polled_after_completion()));
                    };
                    if let Err(error) = ready!(line.poll_ready(cx)) {
                        this.state.set(State::Failed { error: None });
                        return Poll::Ready(Err(error));
                    }
                    let Some(line) = queued.take() else {
                        return Poll::Ready(Err(Error::polled_after_completion()));
                    };
                    this.state.set((*line).dispatch());
                }
                StateProj::Waiting { future, call } => {
                    let result = ready!(future.poll(cx));
                    let Some(call) = call.take() else {
                        return Poll::Ready(Err(Error::polled_after_completion()));
                    };
                    let latency = call.start.elapsed();
                    match result {
                        Err(inner) => {
                            this.state.set(State::Failed { error: None });
                            return Poll::Ready(Err(inner_error(inner.into(), call, latency)));
                        }
                        Ok(response) if response.status().is_success() => {
                            this.state.set(State::Failed { error: None });
                            return Poll::Ready(Ok(call.success(response, latency)));
                        }
                        Ok(response) => {
                            let (parts, body) = response.into_parts();
                            let read = Reading {
                                answer: ErrorAnswer::new(parts, body, call.error_body),
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
                        return Poll::Ready(Err(Error::polled_after_completion()));
                    };
                    ready!(reading.answer.poll_read(cx));
                    let Some(reading) = read.take() else {
                        return Poll::Ready(Err(Error::polled_after_completion()));
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
        let mut classification = self.answer.classification();
        let Reading {
            answer:
                ErrorAnswer {
                    mut parts,
                    mut prefix,
                },
            call,
            latency,
        } = self;
        let key = call.lease.key();
        let fingerprint = key.fingerprint();
        let secret = key.expose();
        classification.redact(secret, &fingerprint.to_string());
        // A per-minute token quota smaller than the request itself says nothing of the
        // project's minute (Google refused this request, not the minute's traffic): no project
        // is cooled and no other is tried, or one oversized request would cool every project.
        if let Some(bytes) = call.request_bytes {
            classification.blame_oversized_request(bytes as u64 / BYTES_PER_TOKEN_AT_MOST);
        }
        // Some Google messages quote the consumer (`api_key:…`): the key never leaves this layer.
        // A body read whole is scrubbed here and keeps an exact length; the rest of a longer
        // one is scrubbed as it streams (its length is then unknown until the end).
        let shown = fingerprint.to_string();
        let scrub = if prefix.is_complete() {
            if prefix.replace(secret.as_bytes(), shown.as_bytes()) {
                parts
                    .headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(prefix.buffered_len()));
            }
            None
        } else {
            parts.headers.remove(CONTENT_LENGTH);
            Scrubber::new(secret.as_bytes(), shown.as_bytes())
        };
        tracing::debug!(gemini.key = %fingerprint, gemini.class = %classification.class(),
            "key {fingerprint} got {classification}");
        if let Some(waited) = call.waited {
            parts.extensions.insert(QueueWait(waited));
        }
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
        Response::from_parts(parts, prefix.into_scrubbed_body(scrub))
    }
}
