//! [`ResponseFuture`]: waits for the answer, reads an error body, classifies and reports.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::header::CONTENT_LENGTH;
use http::response::Parts;
use http::{HeaderValue, Response};
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::body::ResponseBody;
use crate::classify::Classification;
use crate::error::{self, BoxError, Error, ErrorKind};
use crate::pool::{Fingerprint, KeyLease};

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
    start: Instant,
    max_error_body: usize,
}

/// A non-2xx answer whose body is being read for classification.
struct Reading<B: Body> {
    parts: Parts,
    body: Pin<Box<B>>,
    frames: VecDeque<Frame<Bytes>>,
    seen: Vec<u8>,
    ended: bool,
    error: Option<B::Error>,
    call: Call,
    latency: Duration,
}

impl<F, B: Body> ResponseFuture<F, B> {
    pub(super) fn failed(error: Error) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
        }
    }

    pub(super) fn called(future: F, lease: KeyLease, max_error_body: usize) -> Self {
        ResponseFuture {
            state: State::Waiting {
                future,
                call: Some(Call {
                    lease,
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
                            call.lease.report(&classification, latency);
                            let (mut parts, body) = response.into_parts();
                            parts.extensions.insert(classification);
                            let body = ResponseBody::passthrough(body);
                            return Poll::Ready(Ok(Response::from_parts(parts, body)));
                        }
                        Ok(response) => {
                            let (parts, body) = response.into_parts();
                            let read = Reading {
                                parts,
                                body: Box::pin(body),
                                frames: VecDeque::new(),
                                seen: Vec::new(),
                                ended: false,
                                error: None,
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
                    ready!(reading.poll_read(cx));
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
    /// Read frames until the body ends, errors, or the bound is reached.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while !self.ended && self.error.is_none() && self.seen.len() < self.call.max_error_body {
            match ready!(self.body.as_mut().poll_frame(cx)) {
                None => self.ended = true,
                Some(Err(error)) => self.error = Some(error),
                Some(Ok(frame)) => {
                    let frame = frame.map_data(|mut d| d.copy_to_bytes(d.remaining()));
                    if let Some(data) = frame.data_ref() {
                        let room = self.call.max_error_body - self.seen.len();
                        self.seen.extend_from_slice(&data[..data.len().min(room)]);
                    }
                    self.frames.push_back(frame);
                }
            }
        }
        if !self.ended && self.error.is_none() && self.body.is_end_stream() {
            self.ended = true;
        }
        Poll::Ready(())
    }

    fn finish(self) -> Response<ResponseBody<B>> {
        let Reading {
            mut parts,
            body,
            mut frames,
            seen,
            ended,
            error,
            call,
            latency,
        } = self;
        let key = call.lease.key();
        let fingerprint = key.fingerprint();
        let secret = key.expose();
        let mut classification = Classification::from_response(parts.status, &seen);
        classification.redact(secret, &fingerprint.to_string());
        if contains(&seen, secret.as_bytes()) {
            frames = scrub_frames(frames, secret, fingerprint);
            if ended && error.is_none() {
                let length: u64 = frames
                    .iter()
                    .filter_map(|f| f.data_ref())
                    .map(|d| d.len() as u64)
                    .sum();
                parts
                    .headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(length));
            } else {
                parts.headers.remove(CONTENT_LENGTH);
            }
        }
        tracing::debug!(gemini.key = %fingerprint, gemini.class = %classification.class(),
            "key {fingerprint} got {classification}");
        call.lease.report(&classification, latency);
        parts.extensions.insert(classification);
        let rest = (!ended && error.is_none()).then_some(body);
        Response::from_parts(parts, ResponseBody::replay(frames, error, rest))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Join the data frames, replace the secret by the fingerprint, keep trailers after.
fn scrub_frames(
    frames: VecDeque<Frame<Bytes>>,
    secret: &str,
    fingerprint: Fingerprint,
) -> VecDeque<Frame<Bytes>> {
    let mut data = Vec::new();
    let mut trailers = Vec::new();
    for frame in frames {
        match frame.into_data() {
            Ok(bytes) => data.extend_from_slice(&bytes),
            Err(other) => trailers.push(other),
        }
    }
    let replacement = fingerprint.to_string();
    let mut out = Vec::with_capacity(data.len());
    let mut rest = &data[..];
    while let Some(at) = rest
        .windows(secret.len())
        .position(|w| w == secret.as_bytes())
    {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(replacement.as_bytes());
        rest = &rest[at + secret.len()..];
    }
    out.extend_from_slice(rest);
    let mut scrubbed = VecDeque::with_capacity(1 + trailers.len());
    scrubbed.push_back(Frame::data(Bytes::from(out)));
    scrubbed.extend(trailers);
    scrubbed
}
