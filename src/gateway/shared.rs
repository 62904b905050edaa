//! What every route shares: the live pool and stack (swapped whole when keys change), the
//! bounds on bodies, the clients' cache scopes and limits.

use std::sync::Arc;

use super::{GatewayConfig, Token, auth, metrics, saving};
use crate::affinity::{AffinityLayer, PrefixAffinity};
use crate::circuit_breaker::{BreakerHandle, CircuitBreakerLayer};
use crate::pool::KeyPool;
use crate::quota::{ClientKey, InboundQuotaLayer};
use crate::{BoxGemini, client, stack};

/// The pool and the stack over it: swapped whole when a key is added or removed; requests in
/// flight finish on the one they started with.
pub(crate) struct Live {
    pub(crate) gemini: BoxGemini,
    pub(crate) pool: KeyPool,
}

/// What every route shares.
pub(crate) struct Shared {
    live: std::sync::RwLock<Arc<Live>>,
    /// Kept to build the stack over a new pool: the same circuits, the same connections, the
    /// same retry budget.
    breaker: CircuitBreakerLayer,
    retry: crate::RetryLayer,
    http: client::HttpsClient<http_body_util::Full<bytes::Bytes>>,
    /// Upload steps, streamed to Google as they arrive (no key: the session is the authority).
    pub(crate) uploads: client::HttpsClient<axum::body::Body>,
    max_wait: std::time::Duration,
    /// Key changes happen one at a time (each reads the live pool and swaps a new one in).
    pub(crate) changing: tokio::sync::Mutex<()>,
    pub(crate) breakers: BreakerHandle,
    pub(crate) upstream: String,
    pub(crate) model: String,
    /// Who may call, and their limits: swapped whole by a configuration reload.
    clients: arc_swap::ArcSwap<Clients>,
    pub(crate) body_limit: usize,
    /// Request bodies held at once, in KiB permits (see `GatewayConfig::body_memory`).
    pub(crate) body_memory: Arc<tokio::sync::Semaphore>,
    /// Woken when a body's room is given back (bodies wait for room without a queue).
    pub(crate) body_freed: Arc<tokio::sync::Notify>,
    /// Room held per client: a quarter of the whole (at least one body of the largest size).
    pub(crate) bodies_by_client: Arc<BodiesByClient>,
    pub(crate) body_memory_mb: usize,
    /// Cache, fallback, cost and alerts: the same across key changes.
    pub(crate) savings: saving::Savings,
    /// Clients share cached answers (else each client token has its own cache scope).
    pub(crate) cache_shared: bool,
    /// Prefix affinity's memory (if on), kept across key changes.
    prefix: Option<Arc<PrefixAffinity>>,
    /// Each model's per-minute totals a moment, for the rate-limit headers.
    pub(crate) rate_cache: super::rate_headers::RateCache,
    /// Where the configuration was read, to reload it.
    pub(crate) source: Option<super::config::ConfigSource>,
    /// The settings a reload leaves as they started (to name those a reload would change).
    pub(crate) started: std::sync::Mutex<Vec<(&'static str, String)>>,
    /// The keys the configuration listed when last read (a reload applies what changed since).
    pub(crate) read_keys: std::sync::Mutex<Vec<crate::KeySpec>>,
    /// The last reload's outcome, for the status API.
    last_reload: std::sync::Mutex<Option<serde_json::Value>>,
}

/// The clients: their tokens, scopes, accounts and limits, the admin token and the origins
/// CORS allows. Read once a request; a reload swaps in a new one.
pub(crate) struct Clients {
    pub(crate) tokens: Vec<Token>,
    pub(crate) admin_token: Option<Token>,
    /// Per-client limits (`client_limits`), metered once a request's body is in memory. A
    /// reload changes the limits of this same layer: what clients spent still counts.
    pub(crate) limits: Option<InboundQuotaLayer>,
    /// The layer kept while limits are off (a reload that turns them off and on again finds
    /// what clients spent today).
    pub(crate) ledger: Option<InboundQuotaLayer>,
    /// Each client token's cache scope, by the token's index.
    pub(crate) scopes: Vec<ClientScope>,
    /// Each client token's account (its fingerprint), by the token's index: spending per
    /// client is counted under it.
    pub(crate) accounts: Vec<crate::cost::Account>,
    /// Origins CORS allows (see `cors::allowed`).
    pub(crate) origins: Vec<String>,
}

impl Clients {
    /// The clients of `config`; `limits` is the running layer to keep (with `config`'s limits)
    /// if there is one.
    pub(crate) fn new(config: &GatewayConfig, ledger: Option<&InboundQuotaLayer>) -> Clients {
        let limits = config.client_limits.map(|new| match ledger {
            Some(running) => {
                running.set_limits(new);
                running.clone()
            }
            None => {
                let by_token = ClientKey::custom(|head| {
                    auth::presented(head.headers, head.uri.query())
                        .map(|t| String::from_utf8_lossy(t).into_owned())
                });
                InboundQuotaLayer::new(new).client_key(by_token)
            }
        });
        Clients {
            tokens: config.tokens.clone(),
            admin_token: config.admin_token.clone(),
            ledger: limits.clone().or_else(|| ledger.cloned()),
            limits,
            scopes: config
                .tokens
                .iter()
                .map(|token| {
                    let name = token.scope_id();
                    ClientScope(
                        http::HeaderValue::from_str(&name)
                            .unwrap_or_else(|_| http::HeaderValue::from_static("client")),
                    )
                })
                .collect(),
            accounts: config
                .tokens
                .iter()
                .map(|token| crate::cost::Account::new(token.fingerprint()))
                .collect(),
            origins: config.allowed_origins.clone(),
        }
    }
}

/// The cache scope of the client that sent a request (an extension set by `authenticate`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ClientScope(pub(crate) http::HeaderValue);

/// Room for request bodies held per client (KiB), each at most `share`.
pub(crate) struct BodiesByClient {
    share: usize,
    /// (foldhash: this is looked up twice a request.)
    held: std::sync::Mutex<
        std::collections::HashMap<ClientScope, usize, foldhash::fast::RandomState>,
    >,
}

impl BodiesByClient {
    /// Count `kib` more for `client`: false (nothing counted) if that passes its share.
    pub(crate) fn take(&self, client: &ClientScope, kib: usize) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let now = held.get(client).copied().unwrap_or(0);
        if now.saturating_add(kib) > self.share {
            return false;
        }
        held.insert(client.clone(), now + kib);
        true
    }

    /// `kib` given back by `client`.
    pub(crate) fn give_back(&self, client: &ClientScope, kib: usize) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(now) = held.get_mut(client) {
            *now = now.saturating_sub(kib);
            if *now == 0 {
                held.remove(client);
            }
        }
    }
}

impl Shared {
    /// The current pool and stack.
    pub(crate) fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The current clients.
    pub(crate) fn clients(&self) -> arc_swap::Guard<Arc<Clients>> {
        self.clients.load()
    }

    /// Serve `clients` from now on.
    pub(crate) fn set_clients(&self, clients: Clients) {
        self.clients.store(Arc::new(clients));
    }

    /// Rebuild the stack over the current pool (after the savings were reloaded).
    pub(crate) fn rebuild(&self) {
        self.swap(self.live().pool.clone());
    }

    /// Keep a reload's outcome for the status API.
    pub(crate) fn remember_reload(
        &self,
        outcome: &Result<super::reload::Outcome, crate::error::Error>,
    ) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let record = match outcome {
            Ok(outcome) => serde_json::json!({
                "at": at,
                "success": true,
                "applied": outcome.applied,
                "restart_needed": outcome.restart_needed,
                "set_by_environment": outcome.set_by_environment,
            }),
            Err(error) => serde_json::json!({
                "at": at,
                "success": false,
                "error": error.to_string(),
            }),
        };
        *self.last_reload.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
    }

    /// The configuration file and the last reload, for the status API.
    pub(crate) fn config_status(&self) -> serde_json::Value {
        serde_json::json!({
            "file": self.source.as_ref().and_then(|s| s.file()).map(|p| p.display().to_string()),
            "last_reload": *self.last_reload.lock().unwrap_or_else(|e| e.into_inner()),
        })
    }

    fn build(&self, pool: KeyPool) -> Live {
        let gemini = compose(
            &pool,
            (&self.breaker, &self.retry),
            self.prefix.as_ref(),
            self.max_wait,
            &self.savings,
            self.http.clone(),
        );
        Live { gemini, pool }
    }

    /// Serve with `pool` from now on.
    pub(crate) fn swap(&self, pool: KeyPool) {
        let live = Arc::new(self.build(pool));
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = live;
    }
}

/// Cache → Cost → Affinity → Fallback → Retry → CircuitBreaker → KeyRotation → Quota over
/// `pool`.
fn compose(
    pool: &KeyPool,
    (breaker, retry): (&CircuitBreakerLayer, &crate::RetryLayer),
    prefix: Option<&Arc<PrefixAffinity>>,
    max_wait: std::time::Duration,
    savings: &saving::Savings,
    http: client::HttpsClient<http_body_util::Full<bytes::Bytes>>,
) -> BoxGemini {
    use tower_layer::Layer;
    let affinity = match prefix {
        Some(prefix) => AffinityLayer::new(pool).prefix_affinity(prefix.clone()),
        None => AffinityLayer::new(pool),
    };
    let gemini = stack(pool)
        .affinity(affinity)
        .circuit_breaker(breaker.clone())
        .retry(retry.for_pool_keeping_budget(pool))
        .wait_up_to(max_wait)
        .fallback(savings.fallback())
        .quota(savings.quota(pool))
        .layer(super::overhead::Timed(http));
    savings.compose(gemini)
}

impl Shared {
    /// Everything the routes share, for `config`: the stack over its pool, the bounds, the
    /// clients' scopes and limits.
    pub(crate) fn new(config: &GatewayConfig) -> Arc<Shared> {
        metrics::handle();
        let breaker = CircuitBreakerLayer::new();
        let retry = crate::RetryLayer::for_pool(&config.pool);
        let breakers = breaker.handle();
        let http = client::https();
        let savings = saving::Savings::new(&config.saving);
        let prefix = config
            .prefix_affinity
            .then(|| Arc::new(PrefixAffinity::new()));
        let first = Live {
            gemini: compose(
                &config.pool,
                (&breaker, &retry),
                prefix.as_ref(),
                config.max_wait,
                &savings,
                http.clone(),
            ),
            pool: config.pool.clone(),
        };
        Arc::new(Shared {
            live: std::sync::RwLock::new(Arc::new(first)),
            breaker,
            retry,
            http,
            uploads: client::https(),
            max_wait: config.max_wait,
            changing: tokio::sync::Mutex::new(()),
            breakers,
            upstream: config.upstream.clone(),
            model: config.model.clone(),
            clients: arc_swap::ArcSwap::from_pointee(Clients::new(config, None)),
            body_limit: config.body_limit,
            body_memory: Arc::new(tokio::sync::Semaphore::new(
                // Always room for one body of the largest size.
                config
                    .body_memory
                    .max(config.body_limit)
                    .div_ceil(1024)
                    .min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
            body_memory_mb: config.body_memory.max(config.body_limit) >> 20,
            body_freed: Arc::new(tokio::sync::Notify::new()),
            bodies_by_client: Arc::new(BodiesByClient {
                share: (config.body_memory / 4)
                    .max(config.body_limit)
                    .div_ceil(1024),
                held: std::sync::Mutex::new(std::collections::HashMap::default()),
            }),
            savings,
            cache_shared: config.saving.cache_shared,
            prefix,
            rate_cache: super::rate_headers::RateCache::default(),
            source: config.source.clone(),
            started: std::sync::Mutex::new(super::reload::fixed(config)),
            read_keys: std::sync::Mutex::new(config.pool.specs()),
            last_reload: std::sync::Mutex::new(None),
        })
    }
}
