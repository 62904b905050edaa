//! Project affinity: requests that refer to a stored resource go to the project that holds it.
//!
//! Google keeps a stored interaction (`store` is `true` by default) in the project whose key
//! created it; a key of another project answers `404 not_found` for it. With keys of N
//! projects, rotation would send N−1 of N turns of a conversation to a project that does not
//! know it. [`AffinityLayer`] (outermost in [`stack`](crate::stack)) keeps them together:
//!
//! - **Learn.** The answer to a create (`POST …/interactions`) names the interaction: the
//!   top-level `id` of a JSON answer, or the `interaction.id` of the first SSE frame
//!   (`interaction.created`). It is recorded with the project of the key that served it (from
//!   [`SelectedKey`](crate::pool::SelectedKey)) for [`retention`](AffinityLayer::retention)
//!   (Google keeps interactions 55 days on the paid tier) — in the pool's memory, its state
//!   file, and a shared store (Redis) for every replica, before the chunk that carries the id
//!   reaches the caller. `store: false` creates nothing to learn.
//! - **Pin.** A create with `previous_interaction_id`, and a get, delete or cancel of an id,
//!   carry an [`Owner`] for that project: key selection uses its keys only, waits for its
//!   quota (under [`wait_up_to`](crate::GeminiLayer::wait_up_to)) rather than rotate away,
//!   and says which resource and project when it has no usable key. A delete's success
//!   forgets the pin.
//! - **Probe.** An id the pool never learned (made before the pool knew it, or by another
//!   program) is looked for with one `GET …/interactions/{id}` per project, stopping at the
//!   first that has it, which is then learned. A probe's 404 or 403 is a caller answer: it
//!   blames no key, cools no project and is not retried. If no project has it, the request is
//!   sent as it came and the caller gets Google's own answer.
//! - **Tenants.** With a [`Tenant`] on the request (the gateway's client), what a tenant
//!   creates is recorded as its own: another tenant's reference to it, or a reference to an id
//!   the pool has no record of, is [`ErrorKind::NotFound`](crate::ErrorKind::NotFound), with
//!   nothing sent and no probe.
//!
//! - **Prefixes** (opt-in, [`prefix_affinity`](AffinityLayer::prefix_affinity)): a request
//!   that repeats the long prefix of a recent one (a system instruction and the first turns of a
//!   growing chat) prefers the project that served it, where Google's implicit cache discounts
//!   those tokens; it rotates as usual when that project cannot serve it now.
//!
//! Other requests pass straight through (one scan of the path; with prefix affinity, one scan
//! of the body).
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_gemini::affinity::AffinityLayer;
//! use tower_gemini::KeyPool;
//! # fn client() -> tower::util::BoxCloneService<http::Request<http_body_util::Full<bytes::Bytes>>, http::Response<String>, tower_gemini::BoxError> {
//! #     tower::util::BoxCloneService::new(tower::service_fn(|_| async { Ok(http::Response::new(String::new())) }))
//! # }
//!
//! let pool = KeyPool::from_keys(["test-key-0001", "test-key-0002"])?;
//! // `stack(&pool)` includes it; alone, in front of the key rotation layers:
//! let layer = AffinityLayer::new(&pool).retention(std::time::Duration::from_secs(86_400));
//! let service = ServiceBuilder::new().layer(layer).service(client());
//! # let _ = service;
//! # Ok::<(), tower_gemini::Error>(())
//! ```
//!
//! [`Owner`]: crate::context::Owner
//! [`Tenant`]: crate::context::Tenant

mod answer;
mod batch;
pub(crate) mod learn;
mod list;
mod prefix;
mod probe;
pub(crate) mod reference;
mod service;
pub(crate) mod upload;

use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

pub use batch::BatchLimits;
pub use learn::LearnBody;
pub use list::list_everywhere;
pub use prefix::{DEFAULT_PREFIX_TTL, MAX_PREFIXES, PrefixAffinity};
pub use service::{Affinity, ResponseFuture};

use crate::pool::KeyPool;

/// How long a learned interaction is kept by default: Google keeps stored interactions 55
/// days on the paid tier (1 day on the free tier, where a stale pin only sends a request to
/// the project that made the interaction, which answers `404` as it would anyway).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(55 * 24 * 3600);

/// Sends requests that refer to a stored interaction to the project that holds it. See the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct AffinityLayer {
    settings: Arc<Settings>,
}

#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) pool: KeyPool,
    pub(crate) retention: Duration,
    pub(crate) probe: bool,
    pub(crate) prefix: Option<Arc<PrefixAffinity>>,
    pub(crate) batches: BatchLimits,
}

impl AffinityLayer {
    /// Affinity over `pool`'s projects, learning into `pool`.
    pub fn new(pool: &KeyPool) -> Self {
        AffinityLayer {
            settings: Arc::new(Settings {
                pool: pool.clone(),
                retention: DEFAULT_RETENTION,
                probe: true,
                prefix: None,
                batches: BatchLimits::default(),
            }),
        }
    }

    /// How long a created interaction is remembered ([`DEFAULT_RETENTION`]).
    pub fn retention(self, retention: Duration) -> Self {
        self.with(|s| s.retention = retention)
    }

    /// Look for an unknown id in every project (default `true`); `false` sends such a request
    /// as it came.
    pub fn probe_unknown(self, probe: bool) -> Self {
        self.with(|s| s.probe = probe)
    }

    /// Send requests that repeat a recent request's long prefix to the project that served
    /// it, while it can take them: Google's implicit cache there discounts the repeated tokens
    /// (see [`PrefixAffinity`]). Off by default in the library; the gateway turns it on.
    /// One [`PrefixAffinity`] can serve several layers (an `Arc` of it): they share what was
    /// seen.
    pub fn prefix_affinity(self, prefix: impl Into<Arc<PrefixAffinity>>) -> Self {
        let prefix = prefix.into();
        self.with(|s| s.prefix = Some(prefix))
    }

    /// Batch Mode's limits per project ([`BatchLimits`]: 100 batches at once by default):
    /// a new batch goes to a project with room, or is refused before it is sent.
    pub fn batch_limits(self, limits: BatchLimits) -> Self {
        self.with(|s| s.batches = limits)
    }

    fn with(self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = Settings {
            pool: self.settings.pool.clone(),
            retention: self.settings.retention,
            probe: self.settings.probe,
            prefix: self.settings.prefix.clone(),
            batches: self.settings.batches,
        };
        change(&mut settings);
        AffinityLayer {
            settings: Arc::new(settings),
        }
    }
}

impl<S> Layer<S> for AffinityLayer {
    type Service = Affinity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Affinity::new(inner, self.settings.clone())
    }
}
