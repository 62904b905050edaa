//! The status API and the admin routes, behind the admin token.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};

use super::Shared;
use super::auth::{accepted, presented};
use super::reply::{self, Family};
use crate::pool::KeyState;
use secrecy::ExposeSecret;

/// Check the admin token, from `Authorization: Bearer` or `x-admin-token`; the refusal to
/// answer with if it is missing or wrong.
pub(crate) fn refusal(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let clients = shared.clients();
    let Some(admin) = &clients.admin_token else {
        return Some(reply::client_error(
            Family::Native,
            StatusCode::FORBIDDEN,
            "the status and admin routes are closed: start the gateway with ADMIN_TOKEN set",
        ));
    };
    let token = headers
        .get("x-admin-token")
        .map(|v| v.as_bytes())
        .or_else(|| presented(headers, None));
    match accepted(std::slice::from_ref(admin), token) {
        Some(_) => None,
        None => Some(reply::client_error(
            Family::Native,
            StatusCode::UNAUTHORIZED,
            "the admin token is missing or wrong: send it as Authorization: Bearer <token> or x-admin-token",
        )),
    }
}

/// The admin routes' one check, as a route layer: every route behind it needs the admin token.
pub(crate) async fn require_admin(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match refusal(&shared, request.headers()) {
        Some(refused) => refused,
        None => next.run(request).await,
    }
}

/// One key in the status API, in the shape worker dashboards read.
#[derive(serde::Serialize)]
struct KeyRow<'a> {
    id: crate::pool::Fingerprint,
    name: Option<&'a str>,
    project: &'a str,
    status: &'static str,
    disabled_reason: Option<crate::state::DisabledReason>,
    cooling_until: Option<jiff::Timestamp>,
    consecutive_failures: u32,
    total_calls: u64,
    success_calls: u64,
    failures: &'a std::collections::BTreeMap<&'static str, u64>,
    in_flight: u32,
    last_used_at: Option<jiff::Timestamp>,
    success_rate: Option<f64>,
    latency_ms: Option<f64>,
    models: &'a [crate::pool::ModelHealthSnapshot],
}

impl<'a> KeyRow<'a> {
    fn of(key: &'a crate::pool::KeySnapshot) -> Self {
        KeyRow {
            id: key.fingerprint,
            name: key.name.as_deref(),
            project: &key.project,
            status: match key.state {
                KeyState::Active if !key.models.is_empty() => "cooling_for_some_models",
                KeyState::Active => "active",
                KeyState::Cooling => "cooling",
                KeyState::Disabled => "disabled",
            },
            disabled_reason: key.reason,
            cooling_until: key.cooling_until,
            consecutive_failures: key.counters.consecutive_failures,
            total_calls: key.counters.total,
            success_calls: key.counters.successes,
            failures: &key.counters.failures,
            in_flight: key.counters.in_flight,
            last_used_at: key.counters.last_used,
            success_rate: key.success_rate,
            latency_ms: key.counters.latency_ewma_ms,
            models: &key.models,
        }
    }
}

/// `GET /api/keys/status`: every key in the shape worker dashboards read
/// (`{"success":true,"data":[{"id","name","status","consecutive_failures","total_calls",
/// "success_calls","last_used_at","success_rate",…}]}`), plus project, per-model cool-downs,
/// quota used and limits, and the breakers. Fingerprints only.
pub(crate) async fn status(State(shared): State<Arc<Shared>>) -> Response {
    let live = shared.live();
    let snapshot = live.pool.snapshot();
    let mut recent = live.pool.recent_calls();
    recent.truncate(50);
    let data: Vec<KeyRow<'_>> = snapshot.keys.iter().map(KeyRow::of).collect();
    reply::json(
        StatusCode::OK,
        &serde_json::json!({
            "success": true,
            "taken_at": snapshot.taken_at,
            "store": {
                "shared": live.pool.is_shared(),
                "reachable": live.pool.is_store_reachable(),
            },
            "data": data,
            "quota": snapshot.quota,
            "breakers": shared.breakers.snapshot(),
            "recent": recent,
            "saving": shared.savings.status(),
            "config": shared.config_status(),
            "resources": resources(&shared, &live.pool),
        }),
    )
}

/// How many live resources each client holds, by kind (`interactions`, `cachedContents`) and
/// its token's fingerprint: counts only, never the resources' names.
fn resources(shared: &Shared, pool: &crate::KeyPool) -> Vec<serde_json::Value> {
    let counts = pool.owned_by_tenant();
    let clients = shared.clients();
    let mut rows: Vec<serde_json::Value> = counts
        .iter()
        .map(|(tenant, count)| {
            let client = tenant.as_deref().map(|id| {
                clients
                    .tokens
                    .iter()
                    .find(|t| t.scope_id() == id)
                    .map_or_else(|| "a removed client".to_owned(), |t| t.fingerprint())
            });
            let mut row = serde_json::json!({ "client": client });
            for (kind, n) in count {
                row[kind.as_str()] = (*n).into();
            }
            row
        })
        .collect();
    rows.sort_by(|a, b| a["client"].as_str().cmp(&b["client"].as_str()));
    rows
}

/// `POST /api/keys/revalidate`: call every disabled key again now and re-enable those that
/// work (also done periodically, hourly by default).
pub(crate) async fn revalidate(State(shared): State<Arc<Shared>>) -> Response {
    let pool = shared.live().pool.clone();
    let checks = super::check_keys::revalidate(&pool, &shared.upstream, &shared.model).await;
    let data: Vec<serde_json::Value> = checks
        .iter()
        .map(|c| {
            serde_json::json!({
                "id": c.fingerprint,
                "name": c.name,
                "project": c.project,
                "verdict": c.verdict,
                "re_enabled": c.verdict == "valid",
                "detail": c.detail,
            })
        })
        .collect();
    reply::json(
        StatusCode::OK,
        &serde_json::json!({ "success": true, "data": data }),
    )
}

/// `POST /api/keys/{id}/reset`: re-enable a key (by fingerprint, name or project) and clear
/// its cool-downs.
pub(crate) async fn reset(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let matched = shared.live().pool.reset(&id);
    if matched == 0 {
        return reply::client_error(
            Family::Native,
            StatusCode::NOT_FOUND,
            "no key has that fingerprint, name or project",
        );
    }
    reply::json(
        StatusCode::OK,
        &serde_json::json!({ "success": true, "reset": matched }),
    )
}

/// The body of `POST /api/keys`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    key: String,
    name: Option<String>,
    project: Option<String>,
    priority: Option<u32>,
}

/// `POST /api/keys` with `{"key": "...", "name": "...", "project": "...", "priority": 50}`:
/// serve with one more key from now on. What the pool knows of the other keys is kept; the
/// answer names the new key by its fingerprint only.
pub(crate) async fn add(State(shared): State<Arc<Shared>>, body: bytes::Bytes) -> Response {
    let new: NewKey = match serde_json::from_slice(&body) {
        Ok(new) => new,
        Err(_) => {
            return reply::client_error(
                Family::Native,
                StatusCode::BAD_REQUEST,
                r#"send {"key": "<the key>", "name": "..." (optional), "project": "..." (optional), "priority": 50 (optional)}"#,
            );
        }
    };
    let fingerprint = match crate::ApiKey::new(new.key.clone()) {
        Ok(key) => key.fingerprint(),
        Err(error) => {
            return reply::client_error(Family::Native, StatusCode::BAD_REQUEST, error.message());
        }
    };
    let mut spec = crate::KeySpec::new(new.key);
    spec.name = new.name;
    spec.project = new.project;
    spec.priority = new.priority;
    let changed = change_keys(&shared, |keys| Ok(keys.into_iter().chain([spec]).collect())).await;
    match changed {
        Ok(keys) => {
            tracing::info!(gemini.key = %fingerprint, "key {fingerprint} added; {keys} keys");
            reply::json(
                StatusCode::OK,
                &serde_json::json!({ "success": true, "id": fingerprint, "keys": keys }),
            )
        }
        Err(refused) => *refused,
    }
}

/// Serve with the keys `change` makes of the current ones, from now on: one change at a time;
/// the kept keys keep their state, the removed ones are retired in the old pool too. The number
/// of keys, or the refusal to answer with.
async fn change_keys(
    shared: &Shared,
    change: impl FnOnce(Vec<crate::KeySpec>) -> Result<Vec<crate::KeySpec>, Box<Response>>,
) -> Result<usize, Box<Response>> {
    let _one_at_a_time = shared.changing.lock().await;
    let old = shared.live().pool.clone();
    let keys = change(old.specs())?;
    let new = old.with_keys(keys).map_err(|error| {
        Box::new(reply::client_error(
            Family::Native,
            StatusCode::BAD_REQUEST,
            &error.to_string(),
        ))
    })?;
    old.retire_keys_not_in(&new);
    let count = new.len();
    shared.swap(new);
    Ok(count)
}

/// `DELETE /api/keys/{id}`: stop using the keys with that fingerprint (`…a1b2` or `a1b2`) or
/// name. The last key cannot be removed.
pub(crate) async fn remove(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let mut removed = 0;
    let changed = change_keys(&shared, |keys| {
        let (gone, kept): (Vec<_>, Vec<_>) = keys.into_iter().partition(|spec| {
            spec.name.as_deref() == Some(id.as_str())
                || crate::Fingerprint::of(spec.secret.expose_secret()).matches(&id)
        });
        removed = gone.len();
        if gone.is_empty() {
            return Err(Box::new(reply::client_error(
                Family::Native,
                StatusCode::NOT_FOUND,
                "no key has that fingerprint or name",
            )));
        }
        if kept.is_empty() {
            return Err(Box::new(reply::client_error(
                Family::Native,
                StatusCode::BAD_REQUEST,
                "that would remove the last key; add another first",
            )));
        }
        Ok(kept)
    })
    .await;
    match changed {
        Ok(keys) => {
            tracing::info!("{removed} key(s) removed ({id}); {keys} keys");
            reply::json(
                StatusCode::OK,
                &serde_json::json!({ "success": true, "removed": removed, "keys": keys }),
            )
        }
        Err(refused) => *refused,
    }
}
