//! Live configuration: `SIGHUP` or `POST /api/config/reload` reads the configuration file again
//! and applies, without dropping a connection or what the gateway counted, what can change
//! while it serves — client tokens, the admin token, per-client limits, CORS origins, model
//! limits and pacing, fallback chains, prices, budgets, the quota alert and the keys. A file that
//! does not read is refused with the error, and the running configuration kept. What needs a
//! restart (where it listens, the upstream, Redis, the bounds on connections and bodies, the
//! cache) is named in the answer and the log, and left as it runs.
//!
//! Keys: what the file changed since it was last read is applied to the running keys — a key
//! it no longer lists is removed, a new one added, one with other settings changed — and the
//! keys added or removed through the admin API are left as they are; the others keep what the
//! pool knows of them (as an admin API change does).
//!
//! Requests in flight finish with the configuration they started with; the next ones get the
//! new one. Clients keep what they spent: a raised limit gives a client the difference, today's
//! spending counts against the new budgets, and the pool's windows go on under the new model
//! limits.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use http::StatusCode;

use super::reply::{self, Family};
use super::shared::Clients;
use super::{GatewayConfig, Shared};
use crate::error::Error;

/// What a reload changed, and what it left for a restart.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct Outcome {
    /// The settings applied that differ from before (`tokens`, `fallback`, …).
    pub(crate) applied: Vec<String>,
    /// Settings that differ from the running ones but take a restart.
    pub(crate) restart_needed: Vec<String>,
    /// Reloadable settings an environment variable set at start: the file's are not read for
    /// them (the environment beats the file, and a process's environment does not change).
    pub(crate) set_by_environment: Vec<String>,
}

/// The settings a reload does not apply, by name, as text to compare (never a secret).
pub(crate) fn fixed(config: &GatewayConfig) -> Vec<(&'static str, String)> {
    vec![
        ("listen", config.listen.to_string()),
        ("upstream", config.upstream.clone()),
        ("model", config.model.clone()),
        ("max_wait_secs", config.max_wait.as_secs().to_string()),
        ("body_limit_bytes", config.body_limit.to_string()),
        ("body_memory_mb", (config.body_memory >> 20).to_string()),
        ("max_connections", config.max_connections.to_string()),
        (
            "max_connections_per_address",
            config.max_connections_per_address.to_string(),
        ),
        (
            "write_timeout_secs",
            config.write_timeout.as_secs().to_string(),
        ),
        (
            "revalidate_secs",
            config.revalidate_every.as_secs().to_string(),
        ),
        ("state_file", format!("{:?}", config.state_file)),
        (
            "redis_url",
            config
                .redis_url
                .as_deref()
                .map(crate::state::redact_url)
                .unwrap_or_default(),
        ),
        ("redis_prefix", format!("{:?}", config.redis_prefix)),
        ("redis_tls", config.redis_tls.digest()),
        (
            "redis_when_unreachable",
            format!("{:?}", config.redis_when_unreachable),
        ),
        (
            "cache",
            format!(
                "{:?} shared={}",
                config.saving.cache, config.saving.cache_shared
            ),
        ),
        ("prefix_affinity", config.prefix_affinity.to_string()),
    ]
}

/// Read the configuration file again and apply it (see the module docs).
pub(crate) async fn reload(shared: &Shared) -> Result<Outcome, Error> {
    let Some(source) = shared.source.as_ref().filter(|s| s.file().is_some()) else {
        return Err(Error::config(
            "there is no configuration file to reload: start the gateway with --config FILE",
        ));
    };
    let file = source
        .file()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let read = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || source.read())
            .await
            .map_err(|e| Error::config(format!("reading the configuration failed: {e}")))?
    };
    let outcome = match read {
        Ok(config) => apply(shared, &config).await,
        Err(error) => Err(error),
    };
    match &outcome {
        Ok(outcome) => tracing::info!(
            "configuration reloaded from {file}: {}{}{}",
            if outcome.applied.is_empty() {
                "nothing changed".to_owned()
            } else {
                format!("applied {}", outcome.applied.join(", "))
            },
            if outcome.restart_needed.is_empty() {
                String::new()
            } else {
                format!(
                    "; changed but kept until a restart: {}",
                    outcome.restart_needed.join(", ")
                )
            },
            if outcome.set_by_environment.is_empty() {
                String::new()
            } else {
                format!(
                    "; set by the environment, not the file: {}",
                    outcome.set_by_environment.join(", ")
                )
            }
        ),
        Err(error) => {
            tracing::error!("configuration {file} not reloaded, the running one is kept: {error}")
        }
    }
    shared.remember_reload(&outcome);
    outcome
}

/// Apply what `new` says that can change while serving (see the module docs).
pub(crate) async fn apply(shared: &Shared, new: &GatewayConfig) -> Result<Outcome, Error> {
    // One change at a time, with key changes too.
    let _one_at_a_time = shared.changing.lock().await;
    let running = shared.clients();
    if !running.tokens.is_empty() && new.tokens.is_empty() {
        return Err(Error::config(
            "the new configuration has no client token: a reload does not open the gateway to anyone who reaches it; give tokens, or restart with --allow-unauthenticated",
        ));
    }
    super::config::check_tokens(&new.tokens)?;
    let live = shared.live();
    // The keys the file changed, in a pool built before anything changes: a pool that cannot
    // be built (limits for a project left without a key) refuses the whole reload.
    let successor = {
        let before = shared.read_keys.lock().unwrap_or_else(|e| e.into_inner());
        merged_keys(&before, new.pool.specs(), live.pool.specs())
    };
    let successor = match successor {
        Some(keys) => Some(live.pool.with_keys_and_limits_of(keys, &new.pool)?),
        None => None,
    };
    let mut applied = Vec::new();
    let fingerprints = |tokens: &[super::Token]| -> Vec<String> {
        tokens.iter().map(super::Token::fingerprint).collect()
    };
    if fingerprints(&running.tokens) != fingerprints(&new.tokens)
        || !same_secrets(&running.tokens, &new.tokens)
    {
        applied.push("tokens".to_owned());
    }
    if running.admin_token.as_ref().map(|t| t.fingerprint())
        != new.admin_token.as_ref().map(|t| t.fingerprint())
        || !same_secrets(running.admin_token.as_slice(), new.admin_token.as_slice())
    {
        applied.push("admin_token".to_owned());
    }
    if running.limits.as_ref().map(|l| l.limits()) != new.client_limits {
        applied.push("client_limits".to_owned());
    }
    if running.origins != new.allowed_origins {
        applied.push("allowed_origins".to_owned());
    }
    if live.pool.reconfigure_limits(&new.pool) {
        applied.push("model limits".to_owned());
    }
    applied.extend(shared.savings.reload(&new.saving));
    shared.set_clients(Clients::new(new, running.ledger.as_ref()));
    drop(running);
    // The stack again, with the fallback chains, prices, budgets and alerts just set (over the
    // new keys, if they changed: requests waiting on the old pool no longer get a key removed).
    match successor {
        Some(pool) => {
            live.pool.retire_keys_not_in(&pool);
            shared.swap(pool);
            applied.push("keys".to_owned());
        }
        None => shared.rebuild(),
    }
    *shared.read_keys.lock().unwrap_or_else(|e| e.into_inner()) = new.pool.specs();
    let restart_needed = {
        let started = shared.started.lock().unwrap_or_else(|e| e.into_inner());
        fixed(new)
            .into_iter()
            .zip(started.iter())
            .filter(|((_, now), (_, then))| now != then)
            .map(|((name, _), _)| name.to_owned())
            .collect()
    };
    let set_by_environment = shared
        .source
        .as_ref()
        .map(super::config::ConfigSource::reloadable_from_env)
        .unwrap_or_default();
    Ok(Outcome {
        applied,
        restart_needed,
        set_by_environment,
    })
}

/// The running keys with what the file changed since it was last read (`before` → `now`): the
/// keys it no longer lists removed, those it lists anew or with other settings (name, project,
/// priority) put in — a changed one in its place —, the keys added or removed through the admin
/// API left as they are. `None` when the file's keys did not change.
fn merged_keys(
    before: &[crate::KeySpec],
    now: Vec<crate::KeySpec>,
    running: Vec<crate::KeySpec>,
) -> Option<Vec<crate::KeySpec>> {
    use secrecy::ExposeSecret;
    use std::collections::HashMap;
    let secret = |spec: &crate::KeySpec| spec.secret.expose_secret().to_owned();
    let settings = |spec: &crate::KeySpec| (spec.name.clone(), spec.project.clone(), spec.priority);
    let before: HashMap<String, _> = before.iter().map(|b| (secret(b), settings(b))).collect();
    let listed: std::collections::HashSet<String> = now.iter().map(secret).collect();
    let removed: Vec<&String> = before.keys().filter(|b| !listed.contains(*b)).collect();
    let changed: Vec<crate::KeySpec> = now
        .into_iter()
        .filter(|spec| before.get(&secret(spec)) != Some(&settings(spec)))
        .collect();
    if removed.is_empty() && changed.is_empty() {
        return None;
    }
    let mut keys: Vec<crate::KeySpec> = running
        .into_iter()
        .filter(|spec| !removed.contains(&&secret(spec)))
        .collect();
    for spec in changed {
        match keys
            .iter_mut()
            .find(|running| secret(running) == secret(&spec))
        {
            Some(running) => *running = spec,
            None => keys.push(spec),
        }
    }
    Some(keys)
}

/// Do `a` and `b` hold the same secrets, in order (compared whole, not by fingerprint)?
fn same_secrets(a: &[super::Token], b: &[super::Token]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.same_as(b))
}

/// `POST /api/config/reload` (admin token): reload, and answer what was applied, or the error
/// (the running configuration kept).
pub(crate) async fn route(State(shared): State<Arc<Shared>>) -> Response {
    match reload(&shared).await {
        Ok(outcome) => reply::json(
            StatusCode::OK,
            &serde_json::json!({
                "success": true,
                "applied": outcome.applied,
                "restart_needed": outcome.restart_needed,
                "set_by_environment": outcome.set_by_environment,
            }),
        ),
        Err(error) => reply::client_error(
            Family::Native,
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("not reloaded, the running configuration is kept: {error}"),
        ),
    }
}

/// Reload on every `SIGHUP` (Unix), for as long as the returned task is kept; only with a
/// configuration file (else a hang-up stops the process, as it would without this).
#[cfg(unix)]
pub(crate) fn on_hangup(shared: &Arc<Shared>) -> Option<super::jobs::AbortOnDrop> {
    use tokio::signal::unix::{SignalKind, signal};
    shared.source.as_ref().and_then(|source| source.file())?;
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::warn!(
                "cannot listen for SIGHUP ({error}): reload with POST /api/config/reload"
            );
            return None;
        }
    };
    let shared = shared.clone();
    Some(super::jobs::AbortOnDrop::new(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            // The outcome is logged and kept for the status API.
            let _ = reload(&shared).await;
        }
    })))
}
