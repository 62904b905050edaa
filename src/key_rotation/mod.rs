//! [`KeyRotationLayer`]: pick a healthy key, inject it, classify the answer, teach the pool.
//!
//! Per request the service reads the model (the [`Model`](crate::Model) extension, the path
//! `/v1beta/models/{model}:method`, or the JSON body's `model` on the OpenAI-compatible path when
//! the body is in memory), asks the [`KeyPool`] for a key, removes any key the caller sent
//! (`x-goog-api-key`, `?key=`, `Authorization`), injects the chosen key as a sensitive header (or
//! query parameter) and records [`SelectedKey`](crate::SelectedKey) in the request extensions.
//!
//! On the answer, a success streams through untouched. A non-2xx body is read up to a bound
//! (64 KiB and 5 s by default: an upstream that trickles its error body holds neither the caller
//! nor the key longer) to classify it, then handed on unchanged — except that every copy of the
//! injected key in it, however far into the body and however the frames cut it, is replaced by
//! the key's fingerprint as the body streams.
//!
//! When no key can take a request now, it fails at once with when one frees — or, with
//! [`KeyRotationLayer::wait_up_to`], waits in line for it (see
//! [`KeyRotation`](KeyRotation#waiting-for-a-key)). The [`Classification`](crate::classify::Classification)
//! goes into the response extensions, with the [`SelectedKey`](crate::SelectedKey); an inner error becomes the crate [`Error`](crate::Error)
//! of kind `Transport`.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_gemini::{KeyPool, KeyRotationLayer, SelectedKey, classify::{Class, Classification}};
//!
//! # tokio_test_block_on(async {
//! let pool = KeyPool::from_keys(["test-key-0001", "test-key-0002"])?;
//! let client = service_fn(|req: Request<String>| async move {
//!     // A real client (hyper, reqwest) goes here; this one checks the injected key.
//!     assert!(req.headers()["x-goog-api-key"].is_sensitive());
//!     Ok::<_, Infallible>(Response::new(String::from("{}")))
//! });
//! let service = ServiceBuilder::new()
//!     .layer(KeyRotationLayer::new(&pool))
//!     .service(client);
//!
//! let request = Request::post("http://127.0.0.1/v1beta/models/gemini-2.0-flash:generateContent")
//!     .body(String::from(r#"{"contents":[]}"#))?;
//! let response = service.oneshot(request).await?;
//! let verdict = response.extensions().get::<Classification>().unwrap();
//! assert_eq!(verdict.class(), Class::Success);
//! # Ok::<(), tower_gemini::BoxError>(())
//! # }).unwrap();
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
//! # }
//! ```

mod future;
mod inject;
mod service;

pub use future::ResponseFuture;
pub use inject::KeyPlacement;
pub use service::KeyRotation;

use std::time::Duration;

use tower_layer::Layer;

use crate::pool::KeyPool;

pub(crate) use crate::context::ErrorBodyLimits;
pub use crate::context::{DEFAULT_ERROR_BODY_TIMEOUT, DEFAULT_MAX_ERROR_BODY};

/// Applies [`KeyRotation`] to a service. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct KeyRotationLayer {
    pool: KeyPool,
    placement: KeyPlacement,
    error_body: ErrorBodyLimits,
    wait: Option<Duration>,
}

impl KeyRotationLayer {
    /// Rotate over the keys of `pool` (shared: the layer keeps a handle on the same pool).
    pub fn new(pool: &KeyPool) -> Self {
        KeyRotationLayer {
            pool: pool.clone(),
            placement: KeyPlacement::default(),
            error_body: ErrorBodyLimits::default(),
            wait: None,
        }
    }

    /// Where the key goes (default [`KeyPlacement::Auto`]).
    pub fn placement(mut self, placement: KeyPlacement) -> Self {
        self.placement = placement;
        self
    }

    /// How many bytes of a non-2xx body to read for classification (default 64 KiB).
    pub fn max_error_body(mut self, bytes: usize) -> Self {
        self.error_body.bytes = bytes;
        self
    }

    /// How long to read a non-2xx body for classification at most (default 5 s); then what
    /// arrived is classified.
    pub fn error_body_timeout(mut self, timeout: Duration) -> Self {
        self.error_body.time = timeout;
        self
    }

    /// When no key can take a request now (every project is cooling down or has used its
    /// local quota for the model), wait up to `bound` for the earliest one that can, first
    /// come first served, instead of failing at once. See [`KeyRotation`] for the details.
    ///
    /// Without it (the default) such a request fails at once with
    /// [`ErrorKind::QuotaExhausted`](crate::ErrorKind::QuotaExhausted) or
    /// [`ErrorKind::NoKeyAvailable`](crate::ErrorKind::NoKeyAvailable) and the time a key
    /// frees in `retry_after`. Under a [`RetryLayer`](crate::retry::RetryLayer), the wait also
    /// ends at its deadline.
    pub fn wait_up_to(mut self, bound: Duration) -> Self {
        self.wait = Some(bound);
        self
    }

    /// The pool.
    pub fn pool(&self) -> &KeyPool {
        &self.pool
    }
}

impl<S> Layer<S> for KeyRotationLayer {
    type Service = KeyRotation<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyRotation {
            inner,
            pool: self.pool.clone(),
            placement: self.placement.clone(),
            error_body: self.error_body,
            wait: self.wait,
        }
    }
}
