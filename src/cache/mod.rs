//! [`CacheLayer`] (feature `cache`): answers to repeated prompts served from memory, before a
//! key or a slot of quota is spent on them.
//!
//! A request is cached when it is a `generateContent` or `streamGenerateContent` (or an OpenAI
//! chat completion), its answer is a success, the caller did not opt out
//! (`x-gemini-cache: no` or `cache-control: no-store`), and its generation is deterministic
//! (`temperature` 0) — or the caller opts in for sampled answers (`x-gemini-cache: yes`, or
//! [`CacheLayer::cache_sampled`]). The key is the model, the request body in a canonical form
//! (object keys sorted, whitespace dropped) and a namespace the caller may set per tenant
//! (`x-gemini-cache-namespace`). Entries live a TTL per model and the cache holds at most
//! [`max_bytes`](CacheLayer::max_bytes), evicting the least recently used.
//!
//! Identical misses arriving together are coalesced: one call upstream, every waiter gets its
//! answer. A streamed answer (SSE, a JSON array, or OpenAI chunks) goes to its caller as it
//! comes and is recorded on the way; it is kept only if it ended whole (a last chunk with a
//! `finishReason`, or `[DONE]`, and no error in it) and replayed as the same bytes; a broken,
//! cut-short or dropped stream is never kept, and identical stream misses are not coalesced.
//! Answers carry `x-gemini-cache: hit` or `miss` and a [`CacheStatus`] extension.
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_gemini::cache::CacheLayer;
//! use tower_gemini::{KeyPool, stack};
//!
//! # fn build() -> Result<(), tower_gemini::Error> {
//! let pool = KeyPool::from_keys(["test-key-0001"])?;
//! let layers = ServiceBuilder::new()
//!     .layer(CacheLayer::new().ttl("gemini-2.5-pro", Duration::from_secs(600)))
//!     .layer(stack(&pool));
//! # let _ = layers;
//! # Ok(())
//! # }
//! ```

mod key;
mod second;
mod service;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use moka::future::Cache as Moka;
use tower_layer::Layer;

pub use service::{Cache, ResponseBody};

pub use crate::context::{CACHE_HEADER, NAMESPACE_HEADER};

/// The longest an entry is kept, whatever TTL is asked for.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The largest answer body cached; larger ones pass through uncached.
pub const MAX_ENTRY_BYTES: usize = 4 * 1024 * 1024;

/// Whether an answer came from the cache (a response extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the cache: no key, no quota, no upstream call.
    Hit,
    /// Called upstream (and stored if cacheable).
    Miss,
}

/// What a cache has done: see [`CacheLayer::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CacheStats {
    /// Answers served from the cache.
    pub hits: u64,
    /// Cacheable requests sent upstream (identical ones coalesced count each).
    pub misses: u64,
    /// Entries held.
    pub entries: u64,
    /// Their weighed size, bytes.
    pub bytes: u64,
    /// The bound, bytes.
    pub max_bytes: u64,
}

impl CacheStats {
    /// Hits over cacheable requests, 0 to 1 (0 before any).
    pub fn hit_rate(&self) -> f64 {
        let all = self.hits + self.misses;
        if all == 0 {
            0.0
        } else {
            self.hits as f64 / all as f64
        }
    }
}

/// A stored answer.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) ttl: Duration,
}

/// Each entry's own time to live (its model's).
struct PerEntry;

impl moka::Expiry<Arc<str>, Entry> for PerEntry {
    fn expire_after_create(
        &self,
        _: &Arc<str>,
        entry: &Entry,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// Settings shared by the services of one layer.
pub(crate) struct Settings {
    pub(crate) default_ttl: Duration,
    pub(crate) ttls: HashMap<String, Duration>,
    pub(crate) cache_sampled: bool,
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) second: Option<second::Second>,
}

impl Settings {
    pub(crate) fn ttl(&self, model: &str) -> Duration {
        self.ttls
            .get(model)
            .copied()
            .unwrap_or(self.default_ttl)
            .min(MAX_TTL)
    }
}

/// Applies [`Cache`]. Services made by one layer (and their clones) share one cache. See the
/// [module docs](self).
#[derive(Clone)]
pub struct CacheLayer {
    store: Moka<Arc<str>, Entry>,
    settings: Arc<Settings>,
    max_bytes: u64,
}

impl Default for CacheLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl CacheLayer {
    /// 64 MiB, an hour per entry, deterministic requests only.
    pub fn new() -> Self {
        Self::build(
            64 * 1024 * 1024,
            Settings {
                default_ttl: Duration::from_secs(3600),
                ttls: HashMap::new(),
                cache_sampled: false,
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                second: None,
            },
        )
    }

    fn build(max_bytes: u64, settings: Settings) -> Self {
        let store = Moka::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &Arc<str>, entry: &Entry| {
                let size = key.len() + entry.body.len() + 64 * entry.headers.len() + 128;
                u32::try_from(size).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntry)
            .build();
        CacheLayer {
            store,
            settings: Arc::new(settings),
            max_bytes,
        }
    }

    fn rebuild(self, change: impl FnOnce(&mut Settings, &mut u64)) -> Self {
        let mut settings = Settings {
            default_ttl: self.settings.default_ttl,
            ttls: self.settings.ttls.clone(),
            cache_sampled: self.settings.cache_sampled,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            second: self.settings.second.clone(),
        };
        let mut max_bytes = self.max_bytes;
        change(&mut settings, &mut max_bytes);
        Self::build(max_bytes, settings)
    }

    /// At most this many bytes of keys and answers (default 64 MiB); the least recently used
    /// go first. Starts a new, empty cache.
    pub fn max_bytes(self, bytes: u64) -> Self {
        self.rebuild(|_, max| *max = bytes)
    }

    /// How long an answer for `model` is kept (at most [`MAX_TTL`]). Starts a new, empty
    /// cache.
    pub fn ttl(self, model: impl Into<String>, ttl: Duration) -> Self {
        let model = model.into();
        self.rebuild(|settings, _| {
            settings.ttls.insert(model, ttl);
        })
    }

    /// How long answers for models without a TTL of their own are kept (default an hour).
    /// Starts a new, empty cache.
    pub fn default_ttl(self, ttl: Duration) -> Self {
        self.rebuild(|settings, _| settings.default_ttl = ttl)
    }

    /// Cache answers to requests that sample (`temperature` above 0 or unset) too: every
    /// caller of the same prompt then gets the same answer. Off by default; a caller can ask
    /// for it per request with `x-gemini-cache: yes`. Starts a new, empty cache.
    pub fn cache_sampled(self, cache: bool) -> Self {
        self.rebuild(|settings, _| settings.cache_sampled = cache)
    }

    /// Entries now (after pending evictions), and their weighed bytes.
    pub async fn usage(&self) -> (u64, u64) {
        self.store.run_pending_tasks().await;
        (self.store.entry_count(), self.store.weighted_size())
    }

    /// Share entries with every process using `store`'s Redis (feature `redis`): a local miss
    /// asks Redis (within the store's timeout) before calling upstream, and what is stored here
    /// is written there too, with its TTL. Use the store the pool shares its state through (the
    /// same connection). While Redis is unreachable the cache works locally. Starts a new,
    /// empty local cache.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tower_gemini::Error> {
    /// use tower_gemini::cache::CacheLayer;
    /// use tower_gemini::state::RedisStore;
    ///
    /// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
    /// let cache = CacheLayer::new().second_level(store.clone());
    /// # let _ = cache; Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    pub fn second_level(self, store: crate::state::RedisStore) -> Self {
        self.rebuild(|settings, _| settings.second = Some(store))
    }

    /// Hits and misses since the cache was made, and its size (approximate: evictions are
    /// applied lazily; [`usage`](Self::usage) applies them first).
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.settings.hits.load(Ordering::Relaxed),
            misses: self.settings.misses.load(Ordering::Relaxed),
            entries: self.store.entry_count(),
            bytes: self.store.weighted_size(),
            max_bytes: self.max_bytes,
        }
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Cache<S> {
        Cache::new(inner, self.store.clone(), self.settings.clone())
    }
}

impl std::fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayer")
            .field("max_bytes", &self.max_bytes)
            .field("default_ttl", &self.settings.default_ttl)
            .field("cache_sampled", &self.settings.cache_sampled)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ttl_is_capped() {
        let settings = Settings {
            default_ttl: Duration::MAX,
            ttls: HashMap::from([("m".to_owned(), Duration::from_secs(60))]),
            cache_sampled: false,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            second: None,
        };
        assert_eq!(settings.ttl("m"), Duration::from_secs(60));
        assert_eq!(settings.ttl("other"), MAX_TTL);
    }
}
