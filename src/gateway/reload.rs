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
        Some(changes) => Some((
            live.pool.with_keys_and_limits_of(changes.keys, &new.pool)?,
            [
                ("added", changes.added),
                ("removed", changes.removed),
                ("changed", changes.changed),
            ],
        )),
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
        Some((pool, changes)) => {
            live.pool.retire_keys_not_in(&pool);
            shared.swap(pool);
            applied.push("keys".to_owned());
            let said: Vec<String> = changes
                .iter()
                .filter(|(_, keys)| !keys.is_empty())
                .map(|(what, keys)| format!("{what} {}", keys.join(" ")))
                .collect();
            tracing::info!("keys from the configuration file: {}", said.join("; "));
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

/// What a reload does to the keys: the pool's new keys, and the fingerprints of those it
/// added, removed and changed (for the log: never a key).
#[derive(Default)]
struct KeyChanges {
    keys: Vec<crate::KeySpec>,
    added: Vec<String>,
    removed: Vec<String>,
    changed: Vec<String>,
}

/// The running keys with what the file changed since it was last read (`before` → `now`): the
/// keys it no longer lists removed, those it lists anew or with other settings (name, project,
/// priority) put in — a changed one in its place —, the keys the admin API added left as they
/// are. `None` when nothing changes. Lookups by hash, no secret copied.
fn merged_keys(
    before: &[crate::KeySpec],
    now: Vec<crate::KeySpec>,
    running: Vec<crate::KeySpec>,
) -> Option<KeyChanges> {
    use secrecy::ExposeSecret;
    use std::collections::{HashMap, HashSet};
    use std::hash::BuildHasher;
    fn secret(spec: &crate::KeySpec) -> &str {
        spec.secret.expose_secret()
    }
    let settings = |spec: &crate::KeySpec| (spec.name.clone(), spec.project.clone(), spec.priority);
    let fingerprint = |spec: &crate::KeySpec| crate::Fingerprint::of(secret(spec)).to_string();
    let was: HashMap<&str, _> = before.iter().map(|b| (secret(b), settings(b))).collect();
    let gone: HashSet<&str> = {
        let listed: HashSet<&str> = now.iter().map(secret).collect();
        before
            .iter()
            .map(secret)
            .filter(|b| !listed.contains(b))
            .collect()
    };
    let fresh: Vec<crate::KeySpec> = now
        .into_iter()
        .filter(|n| was.get(secret(n)) != Some(&settings(n)))
        .collect();
    if gone.is_empty() && fresh.is_empty() {
        return None;
    }
    let mut changes = KeyChanges::default();
    for spec in running {
        match gone.contains(secret(&spec)) {
            true => changes.removed.push(fingerprint(&spec)),
            false => changes.keys.push(spec),
        }
    }
    let hasher = std::collections::hash_map::RandomState::new();
    let mut at: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, spec) in changes.keys.iter().enumerate() {
        at.entry(hasher.hash_one(secret(spec))).or_default().push(i);
    }
    for spec in fresh {
        let found = at
            .get(&hasher.hash_one(secret(&spec)))
            .and_then(|candidates| {
                candidates
                    .iter()
                    .copied()
                    .find(|&i| secret(&changes.keys[i]) == secret(&spec))
            });
        match found {
            Some(i) if settings(&changes.keys[i]) == settings(&spec) => {}
            Some(i) => {
                changes.changed.push(fingerprint(&spec));
                changes.keys[i] = spec;
            }
            None => {
                changes.added.push(fingerprint(&spec));
                changes.keys.push(spec);
            }
        }
    }
    let nothing =
        changes.added.is_empty() && changes.removed.is_empty() && changes.changed.is_empty();
    (!nothing).then_some(changes)
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

#[cfg(test)]
mod tests {
    use super::merged_keys;
    use crate::KeySpec;

    fn spec(key: &str, project: &str) -> KeySpec {
        KeySpec::new(key).project(project)
    }

    fn secrets(keys: &[KeySpec]) -> Vec<String> {
        use secrecy::ExposeSecret;
        keys.iter()
            .map(|k| k.secret.expose_secret().to_owned())
            .collect()
    }

    #[test]
    fn only_what_the_file_changed_is_applied() {
        let before = [spec("test-key-0001", "a"), spec("test-key-0002", "b")];
        // The admin API added 0009 and removed 0002.
        let running = || vec![spec("test-key-0001", "a"), spec("test-key-0009", "z")];
        // The same file: nothing.
        let same = vec![spec("test-key-0001", "a"), spec("test-key-0002", "b")];
        assert!(merged_keys(&before, same, running()).is_none());
        // The file drops 0002, which the admin already removed: nothing changes either.
        assert!(merged_keys(&before, vec![spec("test-key-0001", "a")], running()).is_none());
        // 0001 renamed, 0003 new: the admin's 0009 kept, in place.
        let now = vec![
            spec("test-key-0001", "a").name("primary"),
            spec("test-key-0002", "b"),
            spec("test-key-0003", "c"),
        ];
        let changes = merged_keys(&before, now, running()).unwrap();
        assert_eq!(
            secrets(&changes.keys),
            ["test-key-0001", "test-key-0009", "test-key-0003"]
        );
        assert_eq!(changes.keys[0].name.as_deref(), Some("primary"));
        assert_eq!(changes.changed, ["…0001"]);
        assert_eq!(changes.added, ["…0003"]);
        assert!(changes.removed.is_empty());
        // 0001 gone from the file: removed from the running keys, said by fingerprint.
        let changes = merged_keys(&before, vec![spec("test-key-0002", "b")], running()).unwrap();
        assert_eq!(secrets(&changes.keys), ["test-key-0009"]);
        assert_eq!(changes.removed, ["…0001"]);
    }
}
