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
//! | `GET /api/keys/status`, `POST /api/keys`, `DELETE /api/keys/{id}`, `POST /api/keys/{id}/reset`, `POST /api/keys/revalidate` | status and admin, behind the admin token |
//! | `POST /api/config/reload` | read the configuration file again (as `SIGHUP` does), behind the admin token |
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
mod batches;
mod caches;
mod check_keys;
mod config;
mod cors;
mod dashboard;
pub mod demo;
mod files;
mod interactions;
mod jobs;
mod metrics;
mod overhead;
mod owned;
mod proxy;
mod rate_headers;
mod reload;
mod reply;
mod routes;
mod saving;
mod server;
mod shared;
mod stores;
mod strict_json;
mod trace;
mod write_deadline;

#[cfg(feature = "otel")]
pub mod otel;

use std::future::Future;

pub use auth::Token;
pub use check_keys::{KeyCheck, check_keys, table};
pub use config::{
    ConfigSource, DEFAULT_BODY_LIMIT, DEFAULT_BODY_MEMORY, DEFAULT_LISTEN, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS, DEFAULT_MAX_WAIT, DEFAULT_MODEL, DEFAULT_REVALIDATE,
    DEFAULT_WRITE_TIMEOUT, Flags, GOOGLE, GatewayConfig,
};
pub use routes::router;
pub use saving::Saving;
pub(crate) use shared::{BodiesByClient, ClientScope, Shared};

use crate::error::Error;
use crate::state::StateFile;

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
                tls: config.redis_tls.clone(),
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
    let shared = Shared::new(config);
    let app = tower::Layer::layer(
        &cors::LiveCorsLayer {
            shared: shared.clone(),
        },
        routes::routes(&shared),
    );
    // SIGHUP reloads the configuration file (so does POST /api/config/reload).
    #[cfg(unix)]
    let _reloading = reload::on_hangup(&shared);
    let _revalidating = jobs::revalidating(
        &shared,
        config.revalidate_every,
        config.upstream.clone(),
        config.model.clone(),
    );
    // The state is written every 30 s, and once more after the last request.
    let saving = state_file.clone().map(|file| jobs::saving(&shared, file));
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
