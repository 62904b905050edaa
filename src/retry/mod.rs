//! [`RetryLayer`]: retry, rotate or back off according to the class of each answer.
//!
//! It sits outside [`KeyRotationLayer`](crate::KeyRotationLayer) (and a circuit breaker), so each
//! attempt selects a key afresh. It decides from the [`Classification`](crate::classify::Classification)
//! the inner layers attached to the response (or the crate [`Error`](crate::Error)); used alone
//! over a plain client it reads up to 64 KiB of an error body and classifies it itself.
//!
//! - a key or quota failure (`KeyInvalid`, `QuotaMinute`, …) is retried **at once**: the pool has
//!   already moved that key or project aside, so the next attempt goes elsewhere; a retry delay
//!   the server gave cools that project, it does not put the request to sleep;
//! - `RateLimited` rotates once at once, then backs off;
//! - `Upstream` and `Transport` back off exponentially with jitter (1 s, ×2, 60 s cap, full jitter);
//! - `Caller` is never retried;
//! - an open circuit is waited out (its time left, spread with jitter so the callers waiting on
//!   it come back one by one) if that fits in the deadline;
//! - no key (`NoKeyAvailable`, `QuotaExhausted` from selection, `AllKeysDisabled`) is final:
//!   waiting for a key is opt-in, in [`KeyRotationLayer::wait_up_to`](crate::KeyRotationLayer::wait_up_to).
//!
//! Attempts (default `min(4, 2 × keys)` with [`RetryLayer::for_pool`]), an overall deadline
//! (120 s) and a [`RetryBudget`] shared by all clones (20 % of calls plus 10 per second) bound it.
//! The deadline bounds the whole call — attempts in flight, backoffs and waits together: when it
//! passes, the call ends with [`ErrorKind::Timeout`](crate::ErrorKind::Timeout). The budget is
//! spent only by retries after an answer from upstream; going again after a local refusal
//! (an open circuit, a lost race for a quota slot) sent nothing and costs nothing. Lost races
//! retried at once are bounded by the attempts in a row; a run starts over once the slot a
//! refusal named has freed (the caller waited for it and another, perhaps a replica sharing the
//! store, took it first), so under contention a call waits on rather than failing.
//! When it stops, the caller gets the last upstream response as it was; only a local last
//! outcome (no key, circuit open, budget) becomes an [`Error`](crate::Error) with `retry_after`.
//! A successful response is returned as soon as its head arrives and is never retried after that.
//!
//! # Replayable bodies
//!
//! Each attempt sends a clone of the request, so the body must be `Clone`: `Full<Bytes>`,
//! `String`, `Bytes`-backed bodies. Buffer a streaming body first, with a size limit:
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full, Limited};
//!
//! # async fn buffer(request: http::Request<hyper::body::Incoming>) -> Result<http::Request<Full<Bytes>>, tower_gemini::BoxError> {
//! let (parts, body) = request.into_parts();
//! let bytes = Limited::new(body, 20 * 1024 * 1024).collect().await?.to_bytes();
//! let replayable = http::Request::from_parts(parts, Full::new(bytes));
//! # Ok(replayable) }
//! ```
//!
//! # Example
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_gemini::{KeyPool, KeyRotationLayer, retry::RetryLayer};
//! # fn client() -> tower::util::BoxCloneService<http::Request<String>, http::Response<String>, tower_gemini::BoxError> {
//! #     tower::util::BoxCloneService::new(tower::service_fn(|_| async { Ok(http::Response::new(String::new())) }))
//! # }
//!
//! let pool = KeyPool::from_keys(["test-key-0001", "test-key-0002", "test-key-0003"])?;
//! let gemini = ServiceBuilder::new()
//!     .layer(RetryLayer::for_pool(&pool))        // 4 attempts, 120 s, shared budget
//!     .layer(KeyRotationLayer::new(&pool))
//!     .service(client());
//! # let _ = gemini;
//! # Ok::<(), tower_gemini::Error>(())
//! ```

mod backoff;
mod budget;
mod future;
mod policy;
mod service;

use std::time::Duration;

use tower_layer::Layer;

pub use backoff::{Backoff, EqualJitter, FullJitter, Jitter, NoJitter};
pub use budget::RetryBudget;
pub use future::ResponseFuture;
use policy::RetryPolicy;
pub use policy::{DEFAULT_DEADLINE, DEFAULT_RETRIES, GeminiPolicy};
pub use service::Retry;

pub use crate::context::Attempt;
use crate::context::ErrorBodyLimits;
use crate::pool::KeyPool;

/// Applies [`Retry`] to a service. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct RetryLayer {
    pub(crate) policy: RetryPolicy,
    error_body: ErrorBodyLimits,
}

impl Default for RetryLayer {
    /// The same as [`RetryLayer::new`].
    fn default() -> Self {
        Self::new()
    }
}

impl RetryLayer {
    /// 4 attempts, 120 s deadline, default backoff and budget.
    pub fn new() -> Self {
        RetryLayer {
            policy: RetryPolicy::new(),
            error_body: ErrorBodyLimits::default(),
        }
    }

    /// `min(retries + 1, 2 × keys)` attempts with 3 retries.
    pub fn for_pool(pool: &KeyPool) -> Self {
        RetryLayer {
            policy: RetryPolicy::for_pool(pool),
            error_body: ErrorBodyLimits::default(),
        }
    }

    /// This layer's settings and budget — the same budget, not a new one — with the attempts
    /// [`for_pool`](Self::for_pool) gives `pool`: the gateway's stack rebuilt over other keys
    /// keeps what its budget counted.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn for_pool_keeping_budget(&self, pool: &KeyPool) -> Self {
        RetryLayer {
            policy: self
                .policy
                .clone()
                .max_attempts(RetryPolicy::for_pool(pool).attempts()),
            error_body: self.error_body,
        }
    }

    /// The configured number of attempts.
    pub fn attempts(&self) -> u32 {
        self.policy.attempts()
    }

    /// Total attempts (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.policy = self.policy.max_attempts(attempts);
        self
    }

    /// The overall deadline for attempts and waits together.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.policy = self.policy.deadline(deadline);
        self
    }

    /// The backoff for upstream and transport failures.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.policy = self.policy.backoff(backoff);
        self
    }

    /// The retry budget, shared by every service this layer makes.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.policy = self.policy.budget(budget);
        self
    }

    /// No retry budget.
    pub fn without_budget(mut self) -> Self {
        self.policy = self.policy.without_budget();
        self
    }

    /// How much of an unclassified error body to read (used alone over a plain client; default
    /// 64 KiB).
    pub fn max_error_body(mut self, bytes: usize) -> Self {
        self.error_body.bytes = bytes;
        self
    }

    /// How long to read an unclassified error body at most (default 5 s).
    pub fn error_body_timeout(mut self, timeout: Duration) -> Self {
        self.error_body.time = timeout;
        self
    }

    /// Lengthen the deadline by a wait for a key the caller agreed to (see
    /// [`GeminiLayer::wait_up_to`](crate::GeminiLayer::wait_up_to)).
    pub(crate) fn extend_deadline(mut self, by: Duration) -> Self {
        self.policy.deadline = self.policy.deadline.saturating_add(by);
        self
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry::new(inner, self.policy.clone(), self.error_body)
    }
}
