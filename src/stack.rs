//! The recommended stack in one layer: [`stack`] and [`ServiceBuilderExt::gemini`].

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_service::Service;

use tower::ServiceBuilder;
use tower::layer::util::Stack;
use tower_layer::Layer;

use crate::affinity::{Affinity, AffinityLayer};
use crate::circuit_breaker::{BreakerHandle, CircuitBreaker, CircuitBreakerLayer};
use crate::error::{BoxError, Error};
use crate::fallback::{Fallback, FallbackLayer};
use crate::key_rotation::{KeyRotation, KeyRotationLayer};
use crate::pool::KeyPool;
use crate::quota::{Quota, QuotaLayer};
use crate::retry::{Retry, RetryLayer};

/// The service [`GeminiLayer`] builds around a client `S`.
pub type GeminiService<S> = Affinity<Fallback<Retry<CircuitBreaker<KeyRotation<Quota<S>>>>>>;

/// A response body of [`BoxGemini`]: any body, boxed.
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// The whole stack over any client as one nameable, cloneable, `Send + Sync` type — for an axum
/// app's state or a struct field — made by [`GeminiLayer::boxed`]. One allocation per call
/// more than [`GeminiService`].
pub type BoxGemini<ReqB = Full<Bytes>> =
    tower::util::BoxCloneSyncService<Request<ReqB>, Response<BoxBody>, Error>;

/// The body of its responses, around a client body `B`.
pub type GeminiBody<B> = crate::affinity::LearnBody<
    crate::body::ResponseBody<crate::body::ResponseBody<crate::quota::UsageBody<B>>>,
>;

/// Affinity → (Fallback) → Retry → CircuitBreaker → KeyRotation → Quota over one [`KeyPool`],
/// in that order:
///
/// 0. [`AffinityLayer`] outermost, so that a request referring to a stored interaction
///    carries its project's [`Owner`](crate::context::Owner) into every model a fallback tries
///    and every attempt; it learns the project of each interaction created (a pass-through for
///    other requests). Then an optional [`FallbackLayer`] (see [`GeminiLayer::fallback`]);
/// 1. [`RetryLayer`], so that every attempt goes through the breaker and picks a key
///    afresh, and a local refusal (no key, circuit open) can be waited out;
/// 2. [`CircuitBreakerLayer`] before any key is chosen, so an open circuit costs nothing and a
///    failing model is not hammered with every key in turn;
/// 3. [`KeyRotationLayer`] picks a key (skipping projects without quota room), injects it and
///    classifies the answer for the layers above;
/// 4. [`QuotaLayer`] innermost, next to the client, so it meters exactly what is sent with the
///    key that was chosen.
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_gemini::{KeyPool, stack};
/// # fn client() -> tower::util::BoxCloneService<http::Request<String>, http::Response<String>, tower_gemini::BoxError> {
/// #     tower::util::BoxCloneService::new(tower::service_fn(|_| async { Ok(http::Response::new(String::new())) }))
/// # }
///
/// let pool = KeyPool::from_keys(["test-key-0001", "test-key-0002"])?;
/// let layer = stack(&pool);
/// let breakers = layer.breaker_handle(); // for a status page
/// let gemini = ServiceBuilder::new().layer(layer).service(client());
/// # let _ = (gemini, breakers);
/// # Ok::<(), tower_gemini::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct GeminiLayer {
    retry: RetryLayer,
    breaker: CircuitBreakerLayer,
    rotation: KeyRotationLayer,
    quota: QuotaLayer,
    fallback: FallbackLayer,
    affinity: AffinityLayer,
    wait: Option<Duration>,
}

/// The recommended stack over `pool`, with every layer's defaults. See [`GeminiLayer`].
pub fn stack(pool: &KeyPool) -> GeminiLayer {
    GeminiLayer {
        retry: RetryLayer::for_pool(pool),
        breaker: CircuitBreakerLayer::new(),
        rotation: KeyRotationLayer::new(pool),
        quota: QuotaLayer::new(pool),
        fallback: FallbackLayer::new(),
        affinity: AffinityLayer::new(pool),
        wait: None,
    }
}

impl GeminiLayer {
    /// Turn excess load into latency instead of errors: a request that no project can take
    /// now (all cooling down, or at their local quota for its model) waits up to `bound` for
    /// the earliest one that can, first come first served, then goes with that project's key.
    /// Waiting sends nothing upstream and spends no retry budget; the retry deadline is
    /// lengthened by `bound`, so that the attempts keep their own time after a wait.
    ///
    /// Without it (the default), such a request fails at once with
    /// [`ErrorKind::QuotaExhausted`](crate::ErrorKind::QuotaExhausted) or
    /// [`ErrorKind::NoKeyAvailable`](crate::ErrorKind::NoKeyAvailable) and when a key frees in
    /// `retry_after`. See [`KeyRotation`](crate::KeyRotation#waiting-for-a-key).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_gemini::{KeyPool, stack};
    ///
    /// let pool = KeyPool::from_keys(["test-key-0001", "test-key-0002"])?;
    /// let layer = stack(&pool).wait_up_to(Duration::from_secs(90));
    /// # let _ = layer;
    /// # Ok::<(), tower_gemini::Error>(())
    /// ```
    pub fn wait_up_to(mut self, bound: Duration) -> Self {
        self.wait = Some(bound);
        self
    }

    /// Fall back to other models when no project can serve the requested one: the stack is
    /// tried again, whole, for the next model of the request's chain. See
    /// [`fallback`](crate::fallback). Without chains (the default) requests pass as they are.
    ///
    /// ```
    /// use tower_gemini::fallback::FallbackLayer;
    /// use tower_gemini::{KeyPool, stack};
    ///
    /// let pool = KeyPool::from_keys(["test-key-0001", "test-key-0002"])?;
    /// let fallback = FallbackLayer::new().chain("gemini-2.5-pro", ["gemini-2.5-flash"])?;
    /// let layer = stack(&pool).fallback(fallback);
    /// # let _ = layer;
    /// # Ok::<(), tower_gemini::Error>(())
    /// ```
    pub fn fallback(mut self, fallback: FallbackLayer) -> Self {
        self.fallback = fallback;
        self
    }

    /// Replace the retry layer.
    pub fn retry(mut self, retry: RetryLayer) -> Self {
        self.retry = retry;
        self
    }

    /// Replace the circuit breaker.
    pub fn circuit_breaker(mut self, breaker: CircuitBreakerLayer) -> Self {
        self.breaker = breaker;
        self
    }

    /// Replace the key rotation layer (keep the same pool as the quota layer).
    pub fn key_rotation(mut self, rotation: KeyRotationLayer) -> Self {
        self.rotation = rotation;
        self
    }

    /// Replace the quota layer (keep the same pool as the key rotation layer).
    pub fn quota(mut self, quota: QuotaLayer) -> Self {
        self.quota = quota;
        self
    }

    /// The stack over `client`, boxed: see [`BoxGemini`].
    ///
    /// ```
    /// use tower_gemini::{BoxGemini, KeyPool, stack};
    /// # fn client() -> tower::util::BoxCloneSyncService<http::Request<http_body_util::Full<bytes::Bytes>>, http::Response<String>, tower_gemini::BoxError> {
    /// #     tower::util::BoxCloneSyncService::new(tower::service_fn(|_| async { Ok(http::Response::new(String::new())) }))
    /// # }
    ///
    /// #[derive(Clone)]
    /// struct AppState {
    ///     gemini: BoxGemini,
    /// }
    ///
    /// let pool = KeyPool::from_keys(["test-key-0001", "test-key-0002"])?;
    /// let state = AppState { gemini: stack(&pool).boxed(client()) };
    /// # let _ = state;
    /// # Ok::<(), tower_gemini::Error>(())
    /// ```
    pub fn boxed<S, ReqB, ResB>(&self, client: S) -> BoxGemini<ReqB>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        ReqB: Clone + Send + Sync + 'static,
        ResB: Body<Data = Bytes> + Send + Sync + 'static,
        ResB::Error: Into<BoxError> + Send + Sync,
    {
        let service = self
            .layer(client)
            .map_response(|response: Response<GeminiBody<ResB>>| {
                response.map(|body| body.map_err(Into::into).boxed())
            });
        tower::util::BoxCloneSyncService::new(service)
    }

    /// Replace the affinity layer (its retention, probing).
    pub fn affinity(mut self, affinity: AffinityLayer) -> Self {
        self.affinity = affinity;
        self
    }

    /// The circuit breaker's handle.
    pub fn breaker_handle(&self) -> BreakerHandle {
        self.breaker.handle()
    }

    /// The pool.
    pub fn pool(&self) -> &KeyPool {
        self.rotation.pool()
    }
}

impl<S> Layer<S> for GeminiLayer {
    type Service = GeminiService<S>;

    fn layer(&self, client: S) -> Self::Service {
        let (retry, rotation) = match self.wait {
            Some(bound) => (
                self.retry.clone().extend_deadline(bound),
                self.rotation.clone().wait_up_to(bound),
            ),
            None => (self.retry.clone(), self.rotation.clone()),
        };
        let stack = retry.layer(self.breaker.layer(rotation.layer(self.quota.layer(client))));
        self.affinity.layer(self.fallback.layer(stack))
    }
}

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

/// `ServiceBuilder::new().gemini(&pool)`: the recommended stack as a builder step. Sealed:
/// implemented for `ServiceBuilder` only.
pub trait ServiceBuilderExt<L>: sealed::Sealed {
    /// Add [`stack`]`(pool)`.
    fn gemini(self, pool: &KeyPool) -> ServiceBuilder<Stack<GeminiLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn gemini(self, pool: &KeyPool) -> ServiceBuilder<Stack<GeminiLayer, L>> {
        self.layer(stack(pool))
    }
}
