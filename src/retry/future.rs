//! [`ResponseFuture`]: the retry state machine.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::response::Parts;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;
use tracing::Span;
use tracing::field::Empty;

use super::Attempt;
use super::policy::{CallState, Decision, Outcome, RetryPolicy, Stop};
use crate::body::{Prefix, ResponseBody};
use crate::classify::Classification;
use crate::context::ErrorBodyLimits;
use crate::error::{BoxError, Error, ErrorKind};
use crate::pool::{Fingerprint, SelectedKey};

pin_project! {
    /// Response future of [`Retry`](super::Retry).
    pub struct ResponseFuture<S, B, ResB>
    where
        S: Service<Request<B>, Response = Response<ResB>>,
        ResB: Body,
    {
        #[pin]
        state: State<S::Future, ResB>,
        // Armed the first time the call has to wait for anything: the retry deadline. Boxed:
        // a call answered at once never needs it.
        deadline: Option<Pin<Box<Sleep>>>,
        service: S,
        request: Option<Request<B>>,
        policy: RetryPolicy,
        call: CallState,
        error_body: ErrorBodyLimits,
        span: Span,
        attempt_span: Span,
        attempt_started: Instant,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, ResB: Body> {
        Calling { #[pin] future: F },
        // Boxed: only an error answer without a classification is read here.
        Reading { read: Option<Box<(Parts, Prefix<ResB>)>> },
        Sleeping { #[pin] sleep: Sleep },
        Readying,
        Done,
    }
}

impl<S, B, ResB> ResponseFuture<S, B, ResB>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    B: Clone,
    ResB: Body,
{
    pub(super) fn new(
        mut service: S,
        request: Request<B>,
        policy: RetryPolicy,
        error_body: ErrorBodyLimits,
    ) -> Self {
        let (mut call, started) = policy.start();
        call.model_after = request
            .extensions()
            .get::<crate::fallback::NextModelWaits>()
            .is_some();
        let span = tracing::debug_span!("gemini.request", gemini.model = Empty, attempts = Empty);
        let attempt_span = attempt_span(&span, 1, policy.attempts());
        let first = with_attempt(request.clone(), 1, policy.attempts(), call.deadline);
        let future = attempt_span.in_scope(|| service.call(first));
        ResponseFuture {
            state: State::Calling { future },
            deadline: None,
            service,
            request: (policy.attempts() > 1).then_some(request),
            policy,
            call,
            error_body,
            span,
            attempt_span,
            attempt_started: started,
        }
    }
}

fn attempt_span(parent: &Span, number: u32, max: u32) -> Span {
    tracing::debug_span!(parent: parent, "gemini.attempt", attempt = number, max_attempts = max,
        gemini.key = Empty, gemini.model = Empty, gemini.class = Empty, latency_ms = Empty)
}

fn with_attempt<B>(
    mut request: Request<B>,
    number: u32,
    max: u32,
    deadline: Instant,
) -> Request<B> {
    request.extensions_mut().insert(Attempt {
        number,
        max,
        deadline,
    });
    request
}

fn next_state<F, ResB: Body>(delay: Duration) -> State<F, ResB> {
    if delay.is_zero() {
        State::Readying
    } else {
        State::Sleeping {
            sleep: tokio::time::sleep(delay),
        }
    }
}

/// Fingerprint and status text for the log line of one attempt.
fn describe(key: Option<Fingerprint>, classification: Option<&Classification>) -> String {
    let key = key.map_or_else(|| "no key".to_owned(), |k| format!("key {k}"));
    match classification {
        Some(c) => format!("{key} failed ({c})"),
        None => format!("{key} failed"),
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B, ResB>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    B: Clone,
    ResB: Body,
{
    type Output = Result<Response<ResponseBody<ResB>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Readying => {
                    let Poll::Ready(ready) = this.service.poll_ready(cx) else {
                        break;
                    };
                    if let Err(error) = ready {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(Error::from_inner(error)));
                    }
                    let Some(template) = this.request.as_ref() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(Error::polled_after_completion()));
                    };
                    let number = this.call.attempts + 1;
                    let max = this.policy.attempts();
                    let request = with_attempt(template.clone(), number, max, this.call.deadline);
                    *this.attempt_span = attempt_span(this.span, number, max);
                    *this.attempt_started = Instant::now();
                    let future = this.attempt_span.in_scope(|| this.service.call(request));
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    let polled = {
                        let _entered = this.attempt_span.enter();
                        future.poll(cx)
                    };
                    let Poll::Ready(result) = polled else {
                        break;
                    };
                    let response = match result {
                        Ok(response) => response,
                        Err(error) => {
                            let error = Error::from_inner(error);
                            let outcome = Outcome::error(&error);
                            if !this.attempt_span.is_disabled() {
                                this.attempt_span
                                    .record("gemini.class", tracing::field::display(error.kind()));
                                this.attempt_span.record(
                                    "latency_ms",
                                    this.attempt_started.elapsed().as_millis() as u64,
                                );
                            }
                            let _entered = this.attempt_span.enter();
                            let decision = this.policy.decide(this.call, &outcome);
                            let line = describe(error.key(), error.classification());
                            match decision {
                                Decision::Retry(delay) => {
                                    log_retry(&line, delay, &outcome, this.call, this.policy);
                                    this.state.set(next_state(delay));
                                    continue;
                                }
                                Decision::Stop(stop) => {
                                    this.state.set(State::Done);
                                    this.span.record("attempts", this.call.attempts);
                                    return Poll::Ready(Err(final_error(error, stop, this.call)));
                                }
                            }
                        }
                    };
                    let classification = response.extensions().get::<Classification>().cloned();
                    let (mut parts, body) = response.into_parts();
                    let classification = match classification {
                        Some(c) => c,
                        None if parts.status.is_success() => {
                            let c = Classification::success(parts.status);
                            parts.extensions.insert(c.clone());
                            c
                        }
                        None => {
                            let limits = *this.error_body;
                            let prefix = Prefix::new(body, limits.bytes, limits.time);
                            this.state.set(State::Reading {
                                read: Some(Box::new((parts, prefix))),
                            });
                            continue;
                        }
                    };
                    let response = Response::from_parts(parts, ResponseBody::passthrough(body));
                    let settled = settle(
                        response,
                        &classification,
                        this.policy,
                        this.call,
                        this.attempt_span,
                        this.span,
                        *this.attempt_started,
                    );
                    if let Some(response) = apply(this.state.as_mut(), settled) {
                        return Poll::Ready(Ok(response));
                    }
                }
                StateProj::Reading { read } => {
                    let Some(reading) = read.as_mut() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(Error::polled_after_completion()));
                    };
                    if reading.1.poll_read(cx).is_pending() {
                        break;
                    }
                    let Some(reading) = read.take() else {
                        return Poll::Ready(Err(Error::polled_after_completion()));
                    };
                    let (mut head, reading) = *reading;
                    let classification = Classification::from_response(head.status, reading.seen());
                    head.extensions.insert(classification.clone());
                    let response = Response::from_parts(head, reading.into_body());
                    let settled = settle(
                        response,
                        &classification,
                        this.policy,
                        this.call,
                        this.attempt_span,
                        this.span,
                        *this.attempt_started,
                    );
                    if let Some(response) = apply(this.state.as_mut(), settled) {
                        return Poll::Ready(Ok(response));
                    }
                }
                StateProj::Sleeping { sleep } => {
                    if sleep.poll(cx).is_pending() {
                        break;
                    }
                    this.state.set(State::Readying);
                }
                StateProj::Done => return Poll::Ready(Err(Error::polled_after_completion())),
            }
        }
        // Waiting for something: the deadline bounds the whole call, whatever it waits for.
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(this.call.deadline)));
        if deadline.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if let StateProj::Reading {
            read: Some(reading),
        } = this.state.as_mut().project()
        {
            // An error answer is here: classify what arrived of its body and return it.
            reading.1.give_up();
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.state.set(State::Done);
        this.span.record("attempts", this.call.attempts);
        let message = format!(
            "no answer within the {:.0}s retry deadline (attempt {} of {})",
            this.policy.deadline.as_secs_f64(),
            this.call.attempts + 1,
            this.policy.attempts()
        );
        tracing::warn!("{message}");
        Poll::Ready(Err(Error::new(ErrorKind::Timeout, message)))
    }
}

enum Settled<R> {
    Return(R),
    Again(Duration),
}

/// Move to the state after a settled attempt; the response if it is to be returned.
fn apply<F, ResB: Body, R>(mut state: Pin<&mut State<F, ResB>>, settled: Settled<R>) -> Option<R> {
    match settled {
        Settled::Return(response) => {
            state.set(State::Done);
            Some(response)
        }
        Settled::Again(delay) => {
            state.set(next_state(delay));
            None
        }
    }
}

/// Decide after a response: return it, or drop it and go again after a delay.
fn settle<R>(
    response: Response<R>,
    classification: &Classification,
    policy: &RetryPolicy,
    call: &mut CallState,
    attempt_span: &Span,
    span: &Span,
    attempt_started: Instant,
) -> Settled<Response<R>> {
    // KeyRotation records the key and model into the attempt span when it picks the key.
    let selected = response.extensions().get::<SelectedKey>();
    let key = selected.map(SelectedKey::fingerprint);
    if !attempt_span.is_disabled() {
        attempt_span.record(
            "gemini.class",
            tracing::field::display(classification.class()),
        );
        attempt_span.record("latency_ms", attempt_started.elapsed().as_millis() as u64);
    }
    let _entered = attempt_span.enter();
    let outcome = Outcome::response(classification);
    match policy.decide(call, &outcome) {
        Decision::Retry(delay) => {
            let line = describe(key, Some(classification));
            log_retry(&line, delay, &outcome, call, policy);
            Settled::Again(delay)
        }
        Decision::Stop(stop) => {
            span.record("attempts", call.attempts);
            if let Some(model) = selected.and_then(SelectedKey::model) {
                span.record("gemini.model", model);
            }
            let mut response = response;
            response.extensions_mut().insert(Attempt {
                number: call.attempts,
                max: policy.attempts(),
                deadline: call.deadline,
            });
            match stop {
                Stop::Final => {
                    if !classification.class().is_success() && classification.class().is_retryable()
                    {
                        tracing::debug!("returning the answer: {classification}");
                    }
                }
                Stop::Attempts => tracing::warn!(
                    "giving up after {} attempts; returning the last answer ({classification})",
                    call.attempts
                ),
                Stop::Deadline => tracing::warn!(
                    "giving up: the next attempt would pass the {:.0}s deadline; returning the last answer ({classification})",
                    policy.deadline.as_secs_f64()
                ),
                Stop::Budget => tracing::warn!(
                    "retry budget spent; returning the last answer ({classification})"
                ),
            }
            Settled::Return(response)
        }
    }
}

fn log_retry(
    line: &str,
    delay: Duration,
    outcome: &Outcome,
    call: &CallState,
    policy: &RetryPolicy,
) {
    crate::telemetry::retry(outcome.class);
    let max = policy.attempts();
    let next = call.attempts + 1;
    if outcome.kind == Some(ErrorKind::CircuitOpen) {
        tracing::info!(
            "circuit open; waiting {:.1}s for it to let calls through",
            delay.as_secs_f64()
        );
    } else if delay.is_zero() {
        tracing::info!("{line}, retrying at once with another key (attempt {next}/{max})");
    } else {
        tracing::info!(
            "{line}, retrying in {:.1}s (attempt {next}/{max})",
            delay.as_secs_f64()
        );
    }
}

fn final_error(error: Error, stop: Stop, call: &CallState) -> Error {
    let (kind, message) = match stop {
        Stop::Final => return error,
        Stop::Attempts => (
            ErrorKind::RetriesExhausted,
            format!("gave up after {} attempts", call.attempts),
        ),
        Stop::Deadline => (
            ErrorKind::RetriesExhausted,
            format!(
                "gave up after {} attempts: the retry deadline would pass before the next one",
                call.attempts
            ),
        ),
        Stop::Budget => (
            ErrorKind::BudgetExhausted,
            "the retry budget is spent; not retrying".to_owned(),
        ),
    };
    tracing::warn!("{message}: {error}");
    let mut out = Error::new(kind, message).with_retry_after(error.retry_after());
    if let Some(key) = error.key() {
        out = out.with_key(key);
    }
    if let Some(classification) = error.classification() {
        out = out.with_classification(classification.clone());
    }
    out.with_source(error)
}
