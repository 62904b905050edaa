//! [`CircuitBreakerLayer`]: fail fast while the upstream, or one model, is down.
//!
//! Gemini's 503 "The model is overloaded" is per model, so by default there is one circuit per
//! model: an overloaded model stops being hammered while other models keep flowing. Scopes can
//! also be global, per key, or any function of the request ([`Scope`]).
//!
//! - **Closed**: calls flow. Outcomes are judged from the [`Classification`](crate::classify::Classification)
//!   inner layers attached (or the status): `Upstream` and `Transport` are failures, quota answers
//!   (429s) are ignored — they say nothing of upstream health — and everything else is a success.
//!   A call slower than an optional threshold counts as a failure. When at least
//!   `minimum_calls` (10) are in the window (last 20 calls, or last N seconds) and the failure
//!   rate reaches the threshold (50 %), the circuit opens.
//! - **Open**: calls fail at once with [`ErrorKind::CircuitOpen`](crate::ErrorKind::CircuitOpen)
//!   and a `retry_after`; the inner service is not called. After the open duration (30 s,
//!   doubling on each reopen up to 60 s, back to 30 s after a clean close) it half-opens.
//! - **Half-open**: at most `probes` (3) calls are in flight; the rest fail at once with a short
//!   `retry_after` (1 s), so callers waiting under a [`RetryLayer`](crate::retry::RetryLayer)
//!   come back (spread with jitter) rather than give up, and go through once the probes have
//!   closed it. A dropped probe gives its place back. When `probes` probes succeed it closes; a
//!   failed probe reopens it.
//!
//! The circuit is consulted in `call`, before the inner service sees the request, and
//! `poll_ready` only reports the inner service's readiness. Closed-state bookkeeping is a few
//! atomics; no lock is held across the inner call.
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_gemini::circuit_breaker::CircuitBreakerLayer;
//! use tower_gemini::retry::RetryLayer;
//! use tower_gemini::{KeyPool, KeyRotationLayer};
//! # fn client() -> tower::util::BoxCloneService<http::Request<String>, http::Response<String>, tower_gemini::BoxError> {
//! #     tower::util::BoxCloneService::new(tower::service_fn(|_| async { Ok(http::Response::new(String::new())) }))
//! # }
//!
//! let pool = KeyPool::from_keys(["test-key-0001", "test-key-0002"])?;
//! let breaker = CircuitBreakerLayer::new()
//!     .open_duration(Duration::from_secs(30))
//!     .on_state_change(|change| println!("{}: {} -> {}", change.scope, change.from, change.to));
//! let status = breaker.handle(); // serialisable states, for a status page
//! let gemini = ServiceBuilder::new()
//!     .layer(RetryLayer::for_pool(&pool))
//!     .layer(breaker)
//!     .layer(KeyRotationLayer::new(&pool))
//!     .service(client());
//! assert!(status.snapshot().is_empty());
//! # let _ = gemini;
//! # Ok::<(), tower_gemini::Error>(())
//! ```

mod circuit;
mod future;
mod scope;
mod service;
mod window;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tower_layer::Layer;

pub use circuit::{CircuitState, StateChange};
pub use future::ResponseFuture;
pub use scope::{RequestHead, Scope};
pub use service::CircuitBreaker;
pub use window::WindowKind;

use crate::classify::Class;
use circuit::{Breakers, Config, Registry};

/// Applies [`CircuitBreaker`] to a service. Every service made by one layer (and their clones)
/// shares the same circuits. See the [module docs](self).
///
/// The circuits are made once, by [`new`](Self::new): setters called later change the
/// settings, not the circuits, so a [`handle`](Self::handle) taken at any point watches the
/// circuits the services use.
#[derive(Clone)]
pub struct CircuitBreakerLayer {
    config: Config,
    scope: Scope,
    registry: Arc<Registry>,
}

impl Default for CircuitBreakerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl CircuitBreakerLayer {
    /// Per-model circuits with the defaults above.
    pub fn new() -> Self {
        CircuitBreakerLayer {
            config: Config::default(),
            scope: Scope::default(),
            registry: Arc::new(Registry::new()),
        }
    }

    fn configure(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self
    }

    /// Which circuit a request belongs to (default [`Scope::per_model`]).
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Failure rate (0.0–1.0) at which the circuit opens (default 0.5).
    pub fn failure_threshold(self, rate: f64) -> Self {
        let rate = if rate.is_finite() {
            rate.clamp(0.0, 1.0)
        } else {
            0.5
        };
        self.configure(|c| c.failure_threshold = rate)
    }

    /// Calls the window must hold before the rate is judged (default 10).
    pub fn minimum_calls(self, calls: u32) -> Self {
        self.configure(|c| c.minimum_calls = calls.max(1))
    }

    /// The sliding window (default the last 20 calls).
    pub fn window(self, window: WindowKind) -> Self {
        self.configure(|c| c.window = window)
    }

    /// How long the circuit stays open before half-opening (default 30 s).
    pub fn open_duration(self, duration: Duration) -> Self {
        self.configure(|c| c.open_duration = duration)
    }

    /// Double the open duration on each reopen, up to `max` (default 60 s, so a recovered
    /// upstream is never kept dark for minutes); reset after a clean close.
    pub fn max_open_duration(self, max: Duration) -> Self {
        self.configure(|c| c.max_open_duration = Some(max))
    }

    /// Keep the open duration fixed.
    pub fn fixed_open_duration(self) -> Self {
        self.configure(|c| c.max_open_duration = None)
    }

    /// Probes in flight while half-open, and successes needed to close (default 3).
    pub fn half_open_probes(self, probes: u32) -> Self {
        self.configure(|c| c.probes = probes.max(1))
    }

    /// Count calls slower than this (to the response head) as failures.
    pub fn slow_call(self, threshold: Duration) -> Self {
        self.configure(|c| c.slow_call = Some(threshold))
    }

    /// The classes that count as failures (default `Upstream`, `Transport`).
    pub fn failure_classes(self, classes: impl IntoIterator<Item = Class>) -> Self {
        let mut failures = [false; Class::ALL.len()];
        for class in classes {
            failures[class.index()] = true;
        }
        self.configure(|c| c.failures = failures)
    }

    /// The classes that count neither way (default the quota classes).
    pub fn ignored_classes(self, classes: impl IntoIterator<Item = Class>) -> Self {
        let mut ignored = [false; Class::ALL.len()];
        for class in classes {
            ignored[class.index()] = true;
        }
        self.configure(|c| c.ignored = ignored)
    }

    /// Call `hook` on every state change (it runs on the request path: keep it short).
    pub fn on_state_change<F>(self, hook: F) -> Self
    where
        F: Fn(&StateChange) + Send + Sync + 'static,
    {
        let hook: circuit::Hook = Arc::new(hook);
        self.configure(|c| c.hook = Some(hook))
    }

    /// A handle on the circuits of the services this layer makes.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            registry: self.registry.clone(),
        }
    }
}

impl fmt::Debug for CircuitBreakerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("scope", &self.scope)
            .field("config", &self.config)
            .finish()
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        let breakers = Arc::new(Breakers::new(self.config.clone(), self.registry.clone()));
        CircuitBreaker::new(inner, breakers, self.scope.clone())
    }
}

/// Read access to a breaker's circuits, for status pages and tests.
#[derive(Clone)]
pub struct BreakerHandle {
    pub(crate) registry: Arc<Registry>,
}

/// One circuit's state.
#[derive(Debug, Clone, Serialize)]
pub struct CircuitSnapshot {
    /// The scope.
    pub scope: String,
    /// Closed, open or half-open.
    pub state: CircuitState,
    /// Failures / calls in the window.
    pub failure_rate: f64,
    /// Calls in the window.
    pub calls: u32,
    /// Failures in the window.
    pub failures: u32,
    /// Seconds until an open circuit half-opens.
    pub half_open_in_secs: Option<f64>,
    /// Probes in flight (half-open).
    pub probes_in_flight: u32,
}

impl BreakerHandle {
    /// Every scope seen so far, sorted by scope.
    pub fn snapshot(&self) -> Vec<CircuitSnapshot> {
        let registry = &*self.registry;
        registry
            .all()
            .into_iter()
            .map(|circuit| {
                let counts = circuit.counts(registry);
                CircuitSnapshot {
                    scope: circuit.scope().to_owned(),
                    state: circuit.state(),
                    failure_rate: counts.failure_rate(),
                    calls: counts.calls,
                    failures: counts.failures,
                    half_open_in_secs: circuit.half_open_in(registry).map(|d| d.as_secs_f64()),
                    probes_in_flight: circuit.probes_in_flight(),
                }
            })
            .collect()
    }

    /// The state of one scope (`None` if never seen).
    pub fn state(&self, scope: &str) -> Option<CircuitState> {
        self.registry.get(scope).map(|c| c.state())
    }
}

impl fmt::Debug for BreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.snapshot()).finish()
    }
}
