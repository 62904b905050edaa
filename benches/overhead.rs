//! What the middleware costs per call, beside its nearest peers, against a baseline measured in
//! the same run.
//!
//! ```text
//! cargo bench --bench overhead
//! ```
//!
//! The "client" is an in-memory service that answers at once, so the numbers are the layers'
//! own cost: no network, no mock. Groups:
//!
//! - `call`: the bare client; each of our layers alone; the peers (`tower::retry` with a trivial
//!   policy, tower-resilience's circuit breaker and rate limiter, a governor check, and those
//!   three stacked); the whole stack with 1, 10 and 1,000 keys, without and with limits.
//! - `threads`: the bare client and the stack driven by one and by two OS threads sharing one
//!   service; the time per call is wall time over all calls, so two threads that scale perfectly
//!   show half the time of one.
//! - `saving` (with `--features cache` for the cache rows): a realistic answer read to its end,
//!   through the stack alone, with a fallback chain that is not needed, behind `CostLayer`, and
//!   behind `CacheLayer` (a request that passes, and a hit).
//! - `select`, `classify`: the pool's selection and the classifier alone.

mod support;

use std::future::Future;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use support::{MODEL, client, keys, limits, request};
use tower::{Layer, Service, ServiceExt};
use tower_gemini::circuit_breaker::CircuitBreakerLayer;
use tower_gemini::classify::Classification;
use tower_gemini::retry::RetryLayer;
use tower_gemini::{KeyPool, KeyRotationLayer, QuotaLayer, stack};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn limited_pool(n: usize) -> KeyPool {
    KeyPool::builder()
        .keys(keys(n))
        .model_limits(MODEL, limits())
        .build()
        .unwrap()
}

/// One call through a clone of `service`, as `oneshot` does it.
macro_rules! bench_call {
    ($group:expr, $runtime:expr, $name:expr, $service:expr) => {{
        let service = $service;
        $group.bench_function($name, |b| {
            b.to_async(&$runtime)
                .iter(|| async { black_box(service.clone().oneshot(request()).await.unwrap()) })
        });
    }};
}

/// One call through a clone of `service` with its answer's body read to the end (what prices
/// a call, or records a stream, happens as the body is read).
macro_rules! bench_read {
    ($group:expr, $runtime:expr, $name:expr, $request:expr, $service:expr) => {{
        let service = $service;
        $group.bench_function($name, |b| {
            b.to_async(&$runtime).iter(|| async {
                let response = service.clone().oneshot($request).await.unwrap();
                black_box(
                    http_body_util::BodyExt::collect(response.into_body())
                        .await
                        .unwrap(),
                )
            })
        });
    }};
}

/// The request of `support::request` with `temperature` 0: a cacheable one.
#[cfg(feature = "cache")]
fn deterministic() -> Request<Full<Bytes>> {
    Request::post(support::URL)
        .body(Full::new(Bytes::from_static(
            br#"{"contents":[{"role":"user","parts":[{"text":"Explain tower middleware in one paragraph."}]}],"generationConfig":{"temperature":0}}"#,
        )))
        .unwrap()
}

/// The retry policy a hand-written stack uses: up to 3 retries of a 429 or 5xx, at once.
#[derive(Clone)]
struct TrivialPolicy(u32);

impl<B: Clone, E> tower::retry::Policy<Request<B>, Response<Full<Bytes>>, E> for TrivialPolicy {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _request: &mut Request<B>,
        result: &mut Result<Response<Full<Bytes>>, E>,
    ) -> Option<Self::Future> {
        let again = match result {
            Ok(response) => {
                response.status() == StatusCode::TOO_MANY_REQUESTS
                    || response.status().is_server_error()
            }
            Err(_) => true,
        };
        (again && self.0 > 0).then(|| {
            self.0 -= 1;
            std::future::ready(())
        })
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        Some(request.clone())
    }
}

type Governor = governor::DefaultDirectRateLimiter;

/// governor as a tower layer the way users write it: check, refuse when over the rate.
#[derive(Clone)]
struct GovernorLimit<S> {
    inner: S,
    limiter: Arc<Governor>,
}

#[derive(Debug)]
struct Limited;

impl std::fmt::Display for Limited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("rate limited")
    }
}

impl std::error::Error for Limited {}

impl<S, R> Service<R> for GovernorLimit<S>
where
    S: Service<R>,
    S::Future: Unpin,
    S::Error: Into<tower::BoxError>,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = GovernorFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        match self.limiter.check() {
            Ok(()) => GovernorFuture(Some(self.inner.call(request))),
            Err(_) => GovernorFuture(None),
        }
    }
}

struct GovernorFuture<F>(Option<F>);

impl<F, T, E> Future for GovernorFuture<F>
where
    F: Future<Output = Result<T, E>> + Unpin,
    E: Into<tower::BoxError>,
{
    type Output = Result<T, tower::BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.0.as_mut() {
            Some(future) => Pin::new(future).poll(cx).map_err(Into::into),
            None => Poll::Ready(Err(Box::new(Limited))),
        }
    }
}

fn governor() -> Arc<Governor> {
    let quota = governor::Quota::per_second(NonZeroU32::new(u32::MAX).unwrap());
    Arc::new(governor::RateLimiter::direct(quota))
}

fn resilience_breaker() -> tower_resilience::circuitbreaker::CircuitBreakerLayer {
    tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .unwrap()
}

fn resilience_limiter() -> tower_resilience::ratelimiter::RateLimiterLayer {
    tower_resilience::ratelimiter::RateLimiterLayer::builder()
        .limit_for_period(u32::MAX as usize)
        .refresh_period(Duration::from_secs(60))
        .timeout_duration(Duration::ZERO)
        .build()
        .unwrap()
}

fn calls(c: &mut Criterion) {
    let runtime = runtime();
    let pool = KeyPool::from_keys(keys(10)).unwrap();
    let limited = limited_pool(10);

    let mut group = c.benchmark_group("call");
    bench_call!(group, runtime, "baseline: client alone", client());

    // Ours, one layer at a time.
    bench_call!(
        group,
        runtime,
        "RetryLayer alone",
        RetryLayer::for_pool(&pool).layer(client())
    );
    bench_call!(
        group,
        runtime,
        "CircuitBreakerLayer alone",
        CircuitBreakerLayer::new().layer(client())
    );
    bench_call!(
        group,
        runtime,
        "KeyRotationLayer alone",
        KeyRotationLayer::new(&pool).layer(client())
    );
    bench_call!(
        group,
        runtime,
        "KeyRotationLayer + QuotaLayer, limits",
        KeyRotationLayer::new(&limited).layer(QuotaLayer::new(&limited).layer(client()))
    );

    // The peers, in the same run.
    bench_call!(
        group,
        runtime,
        "peer: tower::retry (trivial policy)",
        tower::retry::RetryLayer::new(TrivialPolicy(3)).layer(client())
    );
    bench_call!(
        group,
        runtime,
        "peer: tower-resilience circuit breaker",
        resilience_breaker().layer(client())
    );
    bench_call!(
        group,
        runtime,
        "peer: tower-resilience rate limiter",
        resilience_limiter().layer(client())
    );
    bench_call!(
        group,
        runtime,
        "peer: governor check",
        GovernorLimit {
            inner: client(),
            limiter: governor(),
        }
    );
    bench_call!(
        group,
        runtime,
        "peer: retry + breaker + rate limiter",
        tower::retry::RetryLayer::new(TrivialPolicy(3))
            .layer(resilience_breaker().layer(resilience_limiter().layer(client())))
    );

    // The whole stack.
    for n in [1, 10, 1000] {
        let pool = KeyPool::from_keys(keys(n)).unwrap();
        bench_call!(
            group,
            runtime,
            format!("stack, {n} keys, no limits"),
            stack(&pool).layer(client())
        );
    }
    bench_call!(
        group,
        runtime,
        "stack, 10 keys, RPM/TPM/RPD limits",
        stack(&limited).layer(client())
    );
    group.finish();

    // What saves quota and money, with a realistic answer whose body is read.
    let mut group = c.benchmark_group("saving");
    bench_read!(
        group,
        runtime,
        "baseline: client alone, body read",
        request(),
        support::answering_client()
    );
    bench_read!(
        group,
        runtime,
        "stack, 10 keys, body read",
        request(),
        stack(&pool).layer(support::answering_client())
    );
    let fallback = tower_gemini::fallback::FallbackLayer::new()
        .chain(MODEL, ["gemini-2.5-flash"])
        .unwrap();
    bench_read!(
        group,
        runtime,
        "stack + fallback chain (not needed), body read",
        request(),
        stack(&pool)
            .fallback(fallback)
            .layer(support::answering_client())
    );
    bench_read!(
        group,
        runtime,
        "CostLayer + stack, body read",
        request(),
        tower_gemini::cost::CostLayer::new().layer(stack(&pool).layer(support::answering_client()))
    );
    #[cfg(feature = "cache")]
    {
        let cache = tower_gemini::cache::CacheLayer::new();
        bench_read!(
            group,
            runtime,
            "CacheLayer + stack, sampled request (passes), body read",
            request(),
            cache.layer(stack(&pool).layer(support::answering_client()))
        );
        bench_read!(
            group,
            runtime,
            "CacheLayer + stack, hit",
            deterministic(),
            cache.layer(stack(&pool).layer(support::answering_client()))
        );
    }
    group.finish();
}

/// `iters` calls split over `threads` OS threads, each with its own single-threaded runtime,
/// all through clones of one service: the wall time for them all.
fn spread<S>(service: &S, threads: u64, iters: u64) -> Duration
where
    S: Service<Request<Full<Bytes>>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    let barrier = Arc::new(std::sync::Barrier::new(threads as usize + 1));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let service = service.clone();
            let barrier = barrier.clone();
            let share = iters / threads + u64::from(t < iters % threads);
            std::thread::spawn(move || {
                let runtime = runtime();
                barrier.wait();
                runtime.block_on(async {
                    for _ in 0..share {
                        black_box(service.clone().oneshot(request()).await.unwrap());
                    }
                });
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    for worker in workers {
        worker.join().unwrap();
    }
    started.elapsed()
}

fn threads(c: &mut Criterion) {
    let pool = KeyPool::from_keys(keys(10)).unwrap();
    let limited = limited_pool(10);
    let bare = client();
    let full = stack(&pool).layer(client());
    let metered = stack(&limited).layer(client());
    let mut group = c.benchmark_group("threads");
    for n in [1, 2] {
        group.bench_with_input(
            BenchmarkId::new("baseline: client alone", n),
            &n,
            |b, &n| b.iter_custom(|iters| spread(&bare, n, iters)),
        );
        group.bench_with_input(BenchmarkId::new("stack, no limits", n), &n, |b, &n| {
            b.iter_custom(|iters| spread(&full, n, iters))
        });
        group.bench_with_input(BenchmarkId::new("stack, limits", n), &n, |b, &n| {
            b.iter_custom(|iters| spread(&metered, n, iters))
        });
    }
    group.finish();
}

fn selection(c: &mut Criterion) {
    let mut group = c.benchmark_group("select");
    for n in [1, 10, 1000] {
        let pool = KeyPool::from_keys(keys(n)).unwrap();
        group.bench_with_input(BenchmarkId::new("round robin", n), &pool, |b, pool| {
            b.iter(|| black_box(pool.select(Some(MODEL)).unwrap()))
        });
    }
    group.finish();
}

fn classification(c: &mut Criterion) {
    let quota = br#"{"error":{"code":429,"message":"You exceeded your current quota.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier","quotaDimensions":{"location":"global","model":"gemini-2.0-flash"},"quotaValue":"15"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"47s"}]}}"#;
    let mut group = c.benchmark_group("classify");
    group.bench_function("200", |b| {
        b.iter(|| black_box(Classification::from_response(StatusCode::OK, b"")))
    });
    group.bench_function("429 QuotaFailure", |b| {
        b.iter(|| {
            black_box(Classification::from_response(
                StatusCode::TOO_MANY_REQUESTS,
                black_box(quota),
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, calls, threads, selection, classification);
criterion_main!(benches);
