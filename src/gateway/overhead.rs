//! The time a request spends in the gateway itself, the upstream's excluded:
//! `gemini_gateway_overhead_seconds`, from a request's arrival at the handler to its answer's
//! head, less the time each attempt waited for the upstream's answer head. Waiting for a key
//! (every project busy) is the gateway's time and counts; streaming an answer's body does not.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower_service::Service;

/// The upstream's time for one request, added up over its attempts (nanoseconds): a request
/// extension the gateway sets and [`Timed`] adds to.
#[derive(Clone, Default)]
pub(crate) struct UpstreamTime(Arc<AtomicU64>);

impl UpstreamTime {
    fn add(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(nanos, Ordering::Relaxed);
    }

    fn total(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

/// A request's clock: its start, and the upstream's time so far.
pub(crate) struct Overhead {
    started: Instant,
    upstream: UpstreamTime,
}

impl Overhead {
    pub(crate) fn start() -> Overhead {
        Overhead {
            started: Instant::now(),
            upstream: UpstreamTime::default(),
        }
    }

    /// What the request carries upstream, for [`Timed`] to add to.
    pub(crate) fn upstream(&self) -> UpstreamTime {
        self.upstream.clone()
    }

    /// The answer's head is here: record the gateway's own time.
    pub(crate) fn record(self) {
        let own = self.started.elapsed().saturating_sub(self.upstream.total());
        // The handle is made once: the gateway's recorder is the process's (a registry lookup
        // per request was ≈ 800 instructions).
        static HISTOGRAM: std::sync::OnceLock<metrics::Histogram> = std::sync::OnceLock::new();
        HISTOGRAM
            .get_or_init(|| metrics::histogram!("gemini_gateway_overhead_seconds"))
            .record(own.as_secs_f64());
    }
}

/// The upstream client, timing each call to its answer's head into the request's
/// [`UpstreamTime`].
#[derive(Clone)]
pub(crate) struct Timed<S>(pub(crate) S);

impl<S, B, R> Service<http::Request<B>> for Timed<S>
where
    S: Service<http::Request<B>, Response = R>,
{
    type Response = R;
    type Error = S::Error;
    type Future = TimedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clock = request
            .extensions()
            .get::<UpstreamTime>()
            .cloned()
            .map(|time| (Instant::now(), time));
        TimedFuture {
            inner: self.0.call(request),
            clock,
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Timed`]'s future.
    pub(crate) struct TimedFuture<F> {
        #[pin]
        inner: F,
        clock: Option<(Instant, UpstreamTime)>,
    }
}

impl<F: Future> Future for TimedFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        if let Some((sent, time)) = this.clock.take() {
            time.add(sent.elapsed());
        }
        Poll::Ready(output)
    }
}
