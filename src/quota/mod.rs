//! Local quota: never send a request the quota will refuse.
//!
//! Gemini counts quota per project and model in four dimensions — requests per minute (RPM),
//! input tokens per minute (TPM), requests per day (RPD, reset at midnight America/Los_Angeles)
//! and images per minute (IPM) — and refuses a request over any one of them with a 429. The
//! [`KeyPool`](crate::KeyPool) keeps a ledger per project and model:
//!
//! - **limits** come from the pool's configuration (per model, per project), from built-in
//!   [`Tier`] presets for well-known models, and are **learned**: a 429 whose `QuotaFailure`
//!   carries a `quotaValue` lowers that project+model's limit to it (`limit: 0` disables the
//!   model for the project). A model without configuration has no local limit.
//! - **admission** is all-or-nothing: a request is admitted only if every dimension has room,
//!   and a refused request spends nothing. Per-minute dimensions are exact sliding 60-second
//!   logs, so at most the limit is admitted in *any* 60-second window, whatever its alignment
//!   (a GCRA with burst = limit could admit nearly twice the limit in one minute, and every
//!   extra request would come back 429); under steady load the full limit still passes.
//! - **tokens** are estimated before sending by a [`TokenEstimator`] (default: 4 bytes of
//!   prompt text per token, images counted for IPM), then corrected with the real
//!   `promptTokenCount` by [`UsageBody`] as the answer streams through.
//! - **selection** consults the same ledger: the pool skips projects without room for the
//!   request's model and tokens, and [`MostHeadroom`](crate::pool::MostHeadroom) prefers the
//!   project with the most left.
//!
//! [`QuotaLayer`] enforces the ledger on the request path, inside
//! [`KeyRotationLayer`](crate::KeyRotationLayer): on refusal it fails at once with
//! [`ErrorKind::QuotaExhausted`](crate::ErrorKind::QuotaExhausted) (dimension, key fingerprint,
//! `retry_after`), or waits up to a bound, first come first served. If a race makes it refuse the
//! key the pool chose, [`RetryLayer`](crate::retry::RetryLayer) picks another key at once.
//! [`InboundQuotaLayer`] applies per-client limits to an app's own callers and answers 429.
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_gemini::pool::{KeyPool, ModelLimits};
//! use tower_gemini::quota::QuotaLayer;
//! use tower_gemini::retry::RetryLayer;
//! use tower_gemini::KeyRotationLayer;
//! # fn client() -> tower::util::BoxCloneService<http::Request<String>, http::Response<String>, tower_gemini::BoxError> {
//! #     tower::util::BoxCloneService::new(tower::service_fn(|_| async { Ok(http::Response::new(String::new())) }))
//! # }
//!
//! let pool = KeyPool::builder()
//!     .keys(["test-key-0001", "test-key-0002"])
//!     .model_limits("gemini-2.0-flash", ModelLimits { rpm: Some(15), tpm: Some(1_000_000), rpd: Some(200), ipm: None })
//!     .build()?;
//! let gemini = ServiceBuilder::new()
//!     .layer(RetryLayer::for_pool(&pool))
//!     .layer(KeyRotationLayer::new(&pool))
//!     .layer(QuotaLayer::new(&pool))
//!     .service(client());
//! # let _ = gemini;
//! # Ok::<(), tower_gemini::Error>(())
//! ```

mod admission;
mod alerts;
mod future;
mod inbound;
mod layer;
mod service;
mod usage;

pub use crate::state::{
    BytesPerToken, Demand, Dimension, MeterSnapshot, Pacing, Tier, TokenEstimator, Usage,
};
#[cfg(feature = "gateway")]
pub(crate) use alerts::check_threshold as check_alert_threshold;
pub use alerts::{DEFAULT_QUOTA_ALERT, QuotaAlert};
pub use future::ResponseFuture;
pub use inbound::{ClientKey, InboundFuture, InboundQuota, InboundQuotaLayer};
pub use layer::QuotaLayer;
pub use service::Quota;
pub use usage::UsageBody;
