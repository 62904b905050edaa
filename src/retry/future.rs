//! [`ResponseFuture`]: the retry state machine.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;
use tracing::Span;
use tracing::field::Empty;

use super::Attempt;
use super::policy::{CallState, Decision, Outcome, RetryPolicy, Stop};
use crate::body::{ErrorAnswer, ResponseBody};
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
        error_body: ErrorBodyLimits,
        run: Run,
    }
}

/// The call's bookkeeping across attempts: the policy and its state, the spans, when the
/// current attempt started.
struct Run {
    policy: RetryPolicy,
    call: CallState,
    span: Span,
    attempt_span: Span,
    attempt_started: Instant,
}

pin_project! {
    #[project = StateProj]
    enum State<F, ResB: Body> {
        Calling { #[pin] future: F },
        // Boxed: only an error answer without a classification is read here.
        Reading { read: Option<Box<ErrorAnswer<ResB>>> },
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
            error_body,
            run: Run {
                policy,
                call,
                span,
                attempt_span,
                attempt_started: started,
            },
        }
    }
}

fn attempt_span(parent: &Span, number: u32, max: u32) -> Span {
    tracing::debug_span!(parent: parent, "gemini.attempt", otel.kind = "client", attempt = number,
        max_attempts = max, gemini.key = Empty, gemini.project = Empty, gemini.model = Empty,
        gemini.class = Empty, latency_ms = Empty)
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
                    let started = ready.map_err(Error::from_inner);
                    match started.and_then(|()| this.run.start_attempt(this.request, this.service))
                    {
                        Ok(future) => this.state.set(State::Calling { future }),
                        Err(error) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(error));
                        }
                    }
                }
                StateProj::Calling { future } => {
                    let polled = {
                        let _entered = this.run.attempt_span.enter();
                        future.poll(cx)
                    };
                    let Poll::Ready(result) = polled else {
                        break;
                    };
                    let response = match result.map_err(Error::from_inner) {
                        Ok(response) => response,
                        Err(error) => {
                            let next = this.run.after_error(error);
                            this.state
                                .set(next.as_ref().map_or(State::Done, |d| next_state(*d)));
                            match next {
                                Ok(_) => continue,
                                Err(error) => return Poll::Ready(Err(error)),
                            }
                        }
                    };
                    let limits = *this.error_body;
                    if let Some(response) =
                        on_answer(this.state.as_mut(), this.run, limits, response)
                    {
                        return Poll::Ready(Ok(response));
                    }
                }
                StateProj::Reading { read } => {
                    let Some(reading) = read.as_mut() else {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(Error::polled_after_completion()));
                    };
                    if reading.poll_read(cx).is_pending() {
                        break;
                    }
                    let Some(reading) = read.take() else {
                        return Poll::Ready(Err(Error::polled_after_completion()));
                    };
                    let (response, classification) = read_classified(*reading);
                    let settled = this.run.settle(response, &classification);
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
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(this.run.call.deadline)));
        if deadline.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        past_deadline(this.state.as_mut(), this.run, cx)
    }
}

/// An answer to an attempt: settled (returned, or dropped for another attempt), or, for an
/// unclassified error answer, its body read first.
#[inline]
fn on_answer<F, ResB: Body>(
    mut state: Pin<&mut State<F, ResB>>,
    run: &mut Run,
    limits: ErrorBodyLimits,
    response: Response<ResB>,
) -> Option<Response<ResponseBody<ResB>>> {
    match classified(response) {
        Ok((parts, body, classification)) => {
            let response = Response::from_parts(parts, ResponseBody::passthrough(body));
            let settled = run.settle(response, &classification);
            apply(state, settled)
        }
        Err((parts, body)) => {
            let read = Some(Box::new(ErrorAnswer::new(parts, body, limits)));
            state.set(State::Reading { read });
            None
        }
    }
}

/// The call's deadline passed while it waited: an error answer being read is classified from
/// what arrived and returned; otherwise the call ends in a timeout.
fn past_deadline<F, ResB: Body, R>(
    mut state: Pin<&mut State<F, ResB>>,
    run: &Run,
    cx: &mut Context<'_>,
) -> Poll<Result<R, Error>> {
    if let StateProj::Reading {
        read: Some(reading),
    } = state.as_mut().project()
    {
        reading.prefix.give_up();
        cx.waker().wake_by_ref();
        return Poll::Pending;
    }
    state.set(State::Done);
    Poll::Ready(Err(run.deadline_passed()))
}

/// An unclassified error answer whose body (its first bytes) was read: classified from them,
/// the whole body passed on.
fn read_classified<B: Body>(answer: ErrorAnswer<B>) -> (Response<ResponseBody<B>>, Classification) {
    let classification = answer.classification();
    let ErrorAnswer { mut parts, prefix } = answer;
    parts.extensions.insert(classification.clone());
    (
        Response::from_parts(parts, prefix.into_body()),
        classification,
    )
}

impl Run {
    /// The next attempt: a copy of `template` marked with its number, sent in its own span.
    #[inline]
    fn start_attempt<S, B, ResB>(
        &mut self,
        template: &Option<Request<B>>,
        service: &mut S,
    ) -> Result<S::Future, Error>
    where
        S: Service<Request<B>, Response = Response<ResB>>,
        B: Clone,
    {
        let template = template
            .as_ref()
            .ok_or_else(Error::polled_after_completion)?;
        let number = self.call.attempts + 1;
        let max = self.policy.attempts();
        let request = with_attempt(template.clone(), number, max, self.call.deadline);
        self.attempt_span = attempt_span(&self.span, number, max);
        self.attempt_started = Instant::now();
        Ok(self.attempt_span.in_scope(|| service.call(request)))
    }

    /// After an attempt failed without an answer: the delay before the next attempt, or the
    /// error the call ends with.
    fn after_error(&mut self, error: Error) -> Result<Duration, Error> {
        let _entered = self.attempt_span.enter();
        let outcome = Outcome::error(&error);
        if !self.attempt_span.is_disabled() {
            self.attempt_span
                .record("gemini.class", tracing::field::display(error.kind()));
            self.attempt_span.record(
                "latency_ms",
                self.attempt_started.elapsed().as_millis() as u64,
            );
        }
        let line = describe(error.key(), error.classification());
        match self.policy.decide(&mut self.call, &outcome) {
            Decision::Retry(delay) => {
                log_retry(&line, delay, &outcome, &self.call, &self.policy);
                Ok(delay)
            }
            Decision::Stop(stop) => {
                self.span.record("attempts", self.call.attempts);
                Err(final_error(error, stop, &self.call))
            }
        }
    }

    /// Decide after an answer: return it, or drop it and go again after a delay.
    #[inline]
    fn settle<R>(
        &mut self,
        response: Response<R>,
        classification: &Classification,
    ) -> Settled<Response<R>> {
        settle(
            response,
            classification,
            &self.policy,
            &mut self.call,
            &self.attempt_span,
            &self.span,
            self.attempt_started,
        )
    }

    /// The whole call's deadline passed with no answer.
    fn deadline_passed(&self) -> Error {
        self.span.record("attempts", self.call.attempts);
        let message = format!(
            "no answer within the {:.0}s retry deadline (attempt {} of {})",
            self.policy.deadline.as_secs_f64(),
            self.call.attempts + 1,
            self.policy.attempts()
        );
        tracing::warn!("{message}");
        Error::new(ErrorKind::Timeout, message)
    }
}

enum Settled<R> {
    Return(R),
    Again(Duration),
}

/// Move to the state after a settled attempt; the response if it is to be returned.
/// An answer and what it means: the classification an inner layer put on it, or (a 2xx) its
/// status; `Err` with its parts for an unclassified error answer, whose body must be read.
#[allow(clippy::type_complexity)]
#[inline]
fn classified<R>(
    response: Response<R>,
) -> Result<(http::response::Parts, R, Classification), (http::response::Parts, R)> {
    let classification = response.extensions().get::<Classification>().cloned();
    let (mut parts, body) = response.into_parts();
    match classification {
        Some(classification) => Ok((parts, body, classification)),
        None if parts.status.is_success() => {
            let classification = Classification::success(parts.status);
            parts.extensions.insert(classification.clone());
            Ok((parts, body, classification))
        }
        None => Err((parts, body)),
    }
}

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
