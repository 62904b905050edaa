//! The `gemini-gateway` binary's app (feature `gateway`): an OpenAI-compatible and native
//! Gemini proxy built from this crate's layers.
//!
//! Clients send requests with one of the gateway's tokens (`Authorization: Bearer`,
//! `x-goog-api-key` or `?key=`, as the OpenAI and Google SDKs do); the gateway checks it in
//! constant time, drops it, and sends the request upstream through [`stack`](fn@crate::stack) with
//! a key of the pool — waiting for the earliest free slot when every project is busy, instead of
//! failing. Routes:
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/chat/completions`, `POST /v1/embeddings`, `GET /v1/models` | OpenAI-compatible, to Google's `/v1beta/openai/...` (`model` defaults to the configured one) |
//! | `POST /v1beta/models/{model}:{generateContent, streamGenerateContent, countTokens, embedContent, batchEmbedContents}`, `GET /v1beta/models` | native Gemini; SSE streams pass through chunk by chunk |
//! | `GET /api/keys/status`, `POST /api/keys/{id}/reset` | status and admin, behind the admin token |
//! | `GET /` | the dashboard page |
//! | `GET /metrics` | Prometheus text, behind the admin token |
//! | `GET /healthz` | liveness |
//!
//! ```no_run
//! use tower_gemini::gateway::{Flags, GatewayConfig, serve};
//!
//! # async fn run() -> Result<(), tower_gemini::Error> {
//! let config = GatewayConfig::resolve(Flags::default(), |name| std::env::var(name).ok())?;
//! serve(config, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

mod admin;
mod auth;
mod check_keys;
mod config;
mod cors;
mod dashboard;
pub mod demo;
mod metrics;
mod proxy;
mod reply;
mod saving;
mod server;
mod strict_json;
mod write_deadline;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use http::StatusCode;

pub use auth::Token;
pub use check_keys::{KeyCheck, check_keys, table};
pub use config::{
    DEFAULT_BODY_LIMIT, DEFAULT_BODY_MEMORY, DEFAULT_LISTEN, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS, DEFAULT_MAX_WAIT, DEFAULT_MODEL, DEFAULT_REVALIDATE,
    DEFAULT_WRITE_TIMEOUT, Flags, GOOGLE, GatewayConfig,
};
pub use saving::Saving;

use crate::circuit_breaker::{BreakerHandle, CircuitBreakerLayer};
use crate::error::Error;
use crate::pool::KeyPool;
use crate::quota::{ClientKey, InboundQuotaLayer};
use crate::state::StateFile;
use crate::{BoxGemini, client, stack};
use reply::Family;

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The pool and the stack over it: swapped whole when a key is added or removed; requests in
/// flight finish on the one they started with.
pub(crate) struct Live {
    pub(crate) gemini: BoxGemini,
    pub(crate) pool: KeyPool,
}

/// What every route shares.
pub(crate) struct Shared {
    live: std::sync::RwLock<Arc<Live>>,
    /// Kept to build the stack over a new pool: the same circuits, the same connections.
    breaker: CircuitBreakerLayer,
    http: client::HttpsClient<http_body_util::Full<bytes::Bytes>>,
    max_wait: std::time::Duration,
    /// Key changes happen one at a time (each reads the live pool and swaps a new one in).
    pub(crate) changing: tokio::sync::Mutex<()>,
    pub(crate) breakers: BreakerHandle,
    pub(crate) upstream: String,
    pub(crate) model: String,
    pub(crate) tokens: Vec<Token>,
    pub(crate) admin_token: Option<Token>,
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
    /// Per-client limits (`client_limits`), metered once a request's body is in memory.
    pub(crate) client_limits: Option<InboundQuotaLayer>,
    /// Each client token's cache scope, by the token's index.
    client_scopes: Vec<ClientScope>,
}

/// The cache scope of the client that sent a request (an extension set by `authenticate`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ClientScope(pub(crate) http::HeaderValue);

/// Room for request bodies held per client (KiB), each at most `share`.
pub(crate) struct BodiesByClient {
    share: usize,
    held: std::sync::Mutex<std::collections::HashMap<ClientScope, usize>>,
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

/// The gateway's router for `config`: every route, auth, CORS and per-client limits. Serve it
/// with `axum::serve` (see [`serve`], which also handles shutdown).
pub fn router(config: &GatewayConfig) -> Router {
    router_with_state(config).0
}

impl Shared {
    /// The current pool and stack.
    pub(crate) fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn build(&self, pool: KeyPool) -> Live {
        let gemini = compose(
            &pool,
            &self.breaker,
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

/// Cache → Cost → Fallback → Retry → CircuitBreaker → KeyRotation → Quota over `pool`.
fn compose(
    pool: &KeyPool,
    breaker: &CircuitBreakerLayer,
    max_wait: std::time::Duration,
    savings: &saving::Savings,
    http: client::HttpsClient<http_body_util::Full<bytes::Bytes>>,
) -> BoxGemini {
    use tower_layer::Layer;
    let gemini = stack(pool)
        .circuit_breaker(breaker.clone())
        .wait_up_to(max_wait)
        .fallback(savings.fallback())
        .quota(savings.quota(pool))
        .layer(http);
    savings.compose(gemini)
}

fn router_with_state(config: &GatewayConfig) -> (Router, Arc<Shared>) {
    metrics::handle();
    let breaker = CircuitBreakerLayer::new();
    let breakers = breaker.handle();
    let http = client::https();
    let savings = saving::Savings::new(&config.saving);
    let first = Live {
        gemini: compose(
            &config.pool,
            &breaker,
            config.max_wait,
            &savings,
            http.clone(),
        ),
        pool: config.pool.clone(),
    };
    let shared = Arc::new(Shared {
        live: std::sync::RwLock::new(Arc::new(first)),
        breaker,
        http,
        max_wait: config.max_wait,
        changing: tokio::sync::Mutex::new(()),
        breakers,
        upstream: config.upstream.clone(),
        model: config.model.clone(),
        tokens: config.tokens.clone(),
        admin_token: config.admin_token.clone(),
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
            held: std::sync::Mutex::new(std::collections::HashMap::new()),
        }),
        savings,
        cache_shared: config.saving.cache_shared,
        client_limits: config.client_limits.map(|limits| {
            let by_token = ClientKey::custom(|head| {
                auth::presented(head.headers, head.uri.query())
                    .map(|t| String::from_utf8_lossy(t).into_owned())
            });
            InboundQuotaLayer::new(limits).client_key(by_token)
        }),
        client_scopes: config
            .tokens
            .iter()
            .map(|token| {
                let name = format!("client-{}", token.scope_id());
                ClientScope(
                    http::HeaderValue::from_str(&name)
                        .unwrap_or_else(|_| http::HeaderValue::from_static("client")),
                )
            })
            .collect(),
    });
    let api = Router::new()
        .route("/v1/chat/completions", post(proxy::chat_completions))
        .route("/v1/embeddings", post(proxy::embeddings))
        .route("/v1/models", get(proxy::models))
        .route("/v1/models/{*rest}", get(proxy::native).post(proxy::native))
        .route("/v1beta/{*rest}", get(proxy::native).post(proxy::native));
    // Per-client limits are metered in `proxy::forward`, once the body is in memory (its
    // tokens count against `tpm`), after authentication: a request without a valid token is
    // refused before it is metered against any client's limit.
    let api = api.route_layer(middleware::from_fn_with_state(shared.clone(), authenticate));
    // The status and admin routes: one check of the admin token for all of them.
    let admin = Router::new()
        .route("/metrics", get(metrics::metrics))
        .route("/api/keys/status", get(admin::status))
        .route("/api/keys", post(admin::add))
        .route("/api/keys/{id}", axum::routing::delete(admin::remove))
        .route("/api/keys/revalidate", post(admin::revalidate))
        .route("/api/keys/{id}/reset", post(admin::reset))
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            admin::require_admin,
        ));
    let router = Router::new()
        .route("/", get(dashboard::page))
        .route("/healthz", get(|| async { "ok" }))
        .merge(admin)
        .merge(api)
        .with_state(shared.clone());
    let router = match cors::layer(&config.allowed_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    (router, shared)
}

/// Refuse requests without a client token (unless the gateway runs unauthenticated).
async fn authenticate(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    if shared.tokens.is_empty() {
        return next.run(request).await;
    }
    let path = request.uri().path();
    let family = if path.starts_with("/v1/") && !path.starts_with("/v1/models/") {
        Family::OpenAi
    } else {
        Family::Native
    };
    let token = auth::presented(request.headers(), request.uri().query());
    let Some(client) = auth::accepted(&shared.tokens, token) else {
        let message = if token.is_some() {
            "the gateway token is not valid"
        } else {
            "a gateway token is required: send Authorization: Bearer <token>, x-goog-api-key: <token> or ?key=<token>"
        };
        return reply::client_error(family, StatusCode::UNAUTHORIZED, message);
    };
    // Spending per client is counted under its token's fingerprint.
    let mut request = request;
    request.extensions_mut().insert(crate::cost::Account::new(
        shared.tokens[client].fingerprint(),
    ));
    if let Some(scope) = shared.client_scopes.get(client) {
        request.extensions_mut().insert(scope.clone());
    }
    next.run(request).await
}

/// Listen on `config.listen`, print the effective configuration, and serve until `shutdown`
/// completes; then stop accepting and let requests in flight (streams included) finish.
pub async fn serve(
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::config(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener.local_addr().unwrap_or(config.listen);
    tracing::info!("gemini-gateway\n{}", config.describe());
    serve_on(listener, &config, shutdown).await?;
    tracing::info!("gemini-gateway on {addr} stopped");
    Ok(())
}

/// Serve `config`'s router on a bound listener (tests and the demo bind port 0).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: &GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    // However the configuration was made, the keys go over https or stay on this machine.
    config::check_upstream(&config.upstream)?;
    config::check_tokens(&config.tokens)?;
    // Shared state: the same pool, over the Redis every replica uses.
    let shared_config;
    let config = match &config.redis_url {
        Some(url) if !config.pool.is_shared() => {
            let defaults = crate::state::RedisOptions::default();
            let options = crate::state::RedisOptions {
                when_unreachable: config.redis_when_unreachable,
                prefix: config
                    .redis_prefix
                    .clone()
                    .unwrap_or(defaults.prefix.clone()),
                ..defaults
            };
            let store = crate::state::RedisStore::connect_with(url, options).await?;
            // The cache shares its entries through the same Redis (its second level).
            let mut saving = config.saving.clone();
            saving.cache = saving.cache.map(|cache| cache.second_level(store.clone()));
            shared_config = GatewayConfig {
                pool: config.pool.with_store(store)?,
                saving,
                ..config.clone()
            };
            &shared_config
        }
        _ => config,
    };
    // What the last run knew, before the first request.
    let state_file = config.state_file.clone().map(StateFile::new);
    if let Some(file) = &state_file
        && let Err(error) = file.restore(&config.pool)
    {
        tracing::error!("{error}");
    }
    let (app, shared) = router_with_state(config);
    // Disabled keys are called again periodically; those that work are re-enabled. (At least a
    // minute apart, whatever a configuration made in code says.)
    let every = config
        .revalidate_every
        .max(std::time::Duration::from_secs(60));
    let (upstream, model) = (config.upstream.clone(), config.model.clone());
    let revalidated = shared.clone();
    let revalidating = tokio::spawn(async move {
        let first = crate::clock::instant_after(tokio::time::Instant::now(), every);
        let mut tick = tokio::time::interval_at(first, every);
        loop {
            tick.tick().await;
            let pool = revalidated.live().pool.clone();
            check_keys::revalidate(&pool, &upstream, &model).await;
        }
    });
    let _stop_revalidating = AbortOnDrop(revalidating);
    // The state is written every 30 s, and once more after the last request.
    let saving = state_file.clone().map(|file| {
        let saved = shared.clone();
        AbortOnDrop(tokio::spawn(async move {
            let every = std::time::Duration::from_secs(30);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                if let Err(error) = file.save(&saved.live().pool) {
                    tracing::warn!("{error}");
                }
            }
        }))
    });
    let bounds = server::Bounds {
        max: config.max_connections,
        per_address: config
            .max_connections_per_address
            .min(config.max_connections),
        write_timeout: config.write_timeout,
    };
    server::accept(listener, app, bounds, shutdown).await;
    drop(saving);
    if let Some(file) = &state_file {
        file.save(&shared.live().pool)?;
        tracing::info!("state saved to {}", file.path().display());
    }
    Ok(())
}
