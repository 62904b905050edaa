//! Tower middleware that spreads Google Gemini API calls over several API keys.
//!
//! Gemini's quotas (requests per minute, tokens per minute, requests per day) belong to a
//! Google Cloud project and a model, not to a key. `tower-gemini` keeps a [`KeyPool`] of keys —
//! one per project, or several per project — picks a healthy key for every request, injects it,
//! reads Google's answer once ([`classify`]) and learns from it: invalid keys are disabled, a
//! project out of per-minute quota cools for the delay Google gave, a project out of daily quota
//! cools until midnight Pacific.
//!
//! The recommended stack is [`stack`]: Retry → CircuitBreaker → KeyRotation → Quota over
//! any HTTP client. Here against the embedded mock Gemini (feature `mock`, on by default);
//! in production, load the pool with [`KeyPool::from_env`] and send the request to
//! `https://generativelanguage.googleapis.com` with [`client::https`] (feature `rustls`) or
//! reqwest.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::{Layer, ServiceExt};
//! use tower_gemini::{KeyPool, ResponseExt, SelectedKey, stack};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), tower_gemini::BoxError> {
//!     let google = tower_gemini::mock::demo().start().await?; // a local stand-in for Google
//!     let pool = KeyPool::from_keys(["test-key-0003", "test-key-0004"])?;
//!     let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//!     let gemini = stack(&pool).layer(client);
//!
//!     let request = http::Request::post(google.model_url("gemini-2.0-flash", "generateContent"))
//!         .body(Full::new(Bytes::from(r#"{"contents":[{"parts":[{"text":"Hello"}]}]}"#)))?;
//!     let response = gemini.oneshot(request).await?.error_for_status()?;
//!     let key = response.extensions().get::<SelectedKey>().map(|k| k.fingerprint());
//!     println!("answered with key {}", key.unwrap()); // "…0003": a fingerprint, never the key
//!     println!("{}", response.text().await?);
//!     Ok(())
//! }
//! ```
//!
//! | upstream answer | [`Class`] | what the pool does |
//! |---|---|---|
//! | 2xx | `Success` | reset failures |
//! | 400 (or 401/403) with `ErrorInfo.reason` `API_KEY_INVALID` — never from message text, which a caller can have Google echo | `KeyInvalid` | key disabled until reset |
//! | 403 leaked, blocked, suspended | `KeyForbidden` | key disabled until reset |
//! | 402/429 prepayment credits depleted | `BillingExhausted` | project disabled until reset |
//! | 429 per-day quota | `QuotaDaily` | project+model cools to next Pacific midnight |
//! | 429 per-minute quota | `QuotaMinute` | project+model cools for `retryDelay` (60 s default) |
//! | 429 `limit: 0` | `ModelNotOnTier` | project+model disabled |
//! | 429 without details | `RateLimited` | key cools 5 s, doubling to 60 s |
//! | 408, 5xx | `Upstream` | counted, key stays healthy |
//! | connect error, timeout | `Transport` | counted, key stays healthy |
//! | other 4xx | `Caller` | nothing |
//!
//! Keys never appear in logs, `Debug`/`Display` output or errors: only their
//! [`Fingerprint`] (`…a1b2`).

#![deny(unsafe_code, unreachable_pub)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod affinity;
pub mod body;
#[cfg(feature = "cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "cache")))]
pub mod cache;
pub mod circuit_breaker;
pub mod classify;
pub mod client;
pub mod clock;
pub mod context;
pub mod cost;
mod dimension;
mod error;
pub mod fallback;
mod fingerprint;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "gateway")]
#[cfg_attr(docsrs, doc(cfg(feature = "gateway")))]
pub mod gateway;
pub mod key_rotation;
mod macros;
#[cfg(feature = "mock")]
#[cfg_attr(docsrs, doc(cfg(feature = "mock")))]
pub mod mock;
mod model;
mod peek;
pub mod pool;
pub mod quota;
mod random;
mod read_mostly;
mod resources;
mod response;
pub mod retry;
mod scan;
mod stack;
pub mod state;
mod telemetry;
#[cfg(any(feature = "redis", feature = "otel"))]
mod tls;

pub use affinity::AffinityLayer;
pub use circuit_breaker::CircuitBreakerLayer;
pub use classify::{Class, Classification};
pub use error::{BoxError, Error, ErrorKind};

/// Every Rust block of README.md, compiled and run as a doc test, so the README never shows
/// code that does not build.
#[cfg(all(doctest, feature = "mock", feature = "reqwest", feature = "axum"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
pub use key_rotation::{KeyPlacement, KeyRotation, KeyRotationLayer};
pub use model::Model;
#[doc(hidden)]
pub use model::body_parses_for_model;
pub use pool::{ApiKey, Fingerprint, KeyPool, KeySpec, ModelLimits, SelectedKey};
pub use quota::{InboundQuotaLayer, QuotaLayer};
pub use response::ResponseExt;
pub use retry::{Attempt, RetryLayer};
/// Re-exported from `secrecy`: [`ApiKey`] implements it, for callers who send requests to
/// Google themselves with a key the pool chose (see [`KeyPool::select`]).
pub use secrecy::ExposeSecret;
pub use stack::{
    BoxBody, BoxGemini, GeminiBody, GeminiLayer, GeminiService, ServiceBuilderExt, stack,
};
