//! Explicit context caches in the mock (`/v1beta/cachedContents`, `/v1/cachedContents`):
//! create, get, list, patch (the expiry) and delete, each cache kept in the project whose key
//! made it until it expires (by the mock's clock). Another project's key — or a cache that
//! expired or was deleted — gets what Google answers: 403 `PERMISSION_DENIED` "CachedContent
//! not found (or permission denied)", for the cache's own routes and for a `generateContent`
//! that names it in `cachedContent`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use http::Method;
use http::request::Parts;
use serde_json::{Value, json};

use super::server::{Outcome, authenticate, error, json_response};
use super::{MockState, bodies};

/// Google's default time to live of a cache that names none.
const DEFAULT_TTL_MS: u64 = 3_600_000;

/// One cache.
#[derive(Clone, Debug)]
pub(super) struct Cache {
    project: usize,
    pub(super) model: String,
    display_name: Option<String>,
    created: u64,
    expires: u64,
    /// Tokens of its contents, system instruction and tools.
    pub(super) tokens: u64,
}

/// The caches of every project, by id.
pub(super) type Caches = HashMap<String, Cache>;

/// The path after `/v1beta/cachedContents` or `/v1/cachedContents`, if it is one.
pub(super) fn route_of(path: &str) -> Option<&str> {
    path.strip_prefix("/v1beta/cachedContents")
        .or_else(|| path.strip_prefix("/v1/cachedContents"))
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Google's answer for a cache another project holds, or none holds.
pub(super) fn not_found() -> Value {
    json!({ "error": {
        "code": 403,
        "message": "CachedContent not found (or permission denied)",
        "status": "PERMISSION_DENIED"
    } })
}

fn lock(state: &MockState) -> std::sync::MutexGuard<'_, Caches> {
    state.caches.lock().unwrap_or_else(|e| e.into_inner())
}

/// The cache `name` (`cachedContents/{id}`) if `project` holds it and it has not expired.
pub(super) fn find(state: &MockState, project: usize, name: &str) -> Option<Cache> {
    let id = name.strip_prefix("cachedContents/")?;
    let now = state.clock.now_millis();
    lock(state)
        .get(id)
        .filter(|c| c.project == project && c.expires > now)
        .cloned()
}

pub(super) fn route(
    state: &MockState,
    parts: &Parts,
    key: Option<&str>,
    body: &[u8],
    rest: &str,
) -> Outcome {
    let (project, name, _) = match authenticate(state, key, false) {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let key = key.unwrap_or_default();
    let at = Some(name.as_str());
    let id = rest.trim_start_matches('/');
    match (&parts.method, id) {
        (&Method::POST, "") => create(state, project, at, key, body),
        (&Method::GET, "") => list(state, project, at, key),
        (method, id) => {
            let Some(cache) = find(state, project, &format!("cachedContents/{id}")) else {
                return error(403, not_found(), false, at, Some(key));
            };
            match *method {
                Method::GET => {
                    let answer = resource(id, &cache);
                    Outcome::Answer(json_response(200, &answer, at, Some(key)))
                }
                Method::PATCH => patch(state, id, body, at, key),
                Method::DELETE => {
                    lock(state).remove(id);
                    Outcome::Answer(json_response(200, &json!({}), at, Some(key)))
                }
                _ => error(
                    404,
                    bodies::not_found(parts.uri.path()),
                    false,
                    at,
                    Some(key),
                ),
            }
        }
    }
}

/// `"600s"` or `"1.5s"` → milliseconds.
fn ttl_ms(text: &str) -> Option<u64> {
    let seconds: f64 = text.strip_suffix('s')?.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then_some((seconds * 1000.0) as u64)
}

/// When a body asks its cache to expire: `expireTime`, or now plus `ttl`, else the default.
fn expiry(body: &Value, now: u64) -> Result<u64, String> {
    if let Some(at) = body.get("expireTime").and_then(Value::as_str) {
        let at: jiff::Timestamp = at
            .parse()
            .map_err(|e| format!("Invalid value at 'expire_time': {e}"))?;
        return u64::try_from(at.as_millisecond()).map_err(|e| e.to_string());
    }
    match body.get("ttl").and_then(Value::as_str) {
        Some(ttl) => ttl_ms(ttl).map(|ms| now.saturating_add(ms)).ok_or_else(|| {
            format!("Invalid value at 'ttl' ({ttl:?}): expected seconds, such as \"600s\"")
        }),
        None => Ok(now + DEFAULT_TTL_MS),
    }
}

fn create(state: &MockState, project: usize, at: Option<&str>, key: &str, body: &[u8]) -> Outcome {
    let bad = |message: &str| error(400, bodies::bad_request(message), false, at, Some(key));
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return bad("Invalid JSON payload received.");
    };
    let Some(model) = json.get("model").and_then(Value::as_str) else {
        return bad("model is required.");
    };
    let model = model.strip_prefix("models/").unwrap_or(model).to_owned();
    if !state.models.contains(&model) {
        return error(
            404,
            bodies::model_not_found(&model, "createCachedContent"),
            false,
            at,
            Some(key),
        );
    }
    // A file in its contents must be the project's own.
    if let Some(id) = super::files::foreign_file(state, project, &json) {
        return error(403, super::files::not_found(&id), false, at, Some(key));
    }
    let now = state.clock.now_millis();
    let expires = match expiry(&json, now) {
        Ok(expires) => expires,
        Err(message) => return bad(&message),
    };
    let (chars, _) = bodies::request_text(&json);
    let files = super::files::files_named(&json) as u64;
    let tokens = bodies::tokens_for(chars) + files * super::files::FILE_TOKENS;
    let min = state
        .implicit_cache_min
        .or(crate::model::implicit_cache_min(&model))
        .unwrap_or(1024);
    if tokens < min {
        let message = format!(
            "Cached content is too small. total_token_count={tokens}, min_total_token_count={min}"
        );
        return bad(&message);
    }
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    let id = format!("mockcache{n:06}");
    let cache = Cache {
        project,
        model,
        display_name: json
            .get("displayName")
            .and_then(Value::as_str)
            .map(str::to_owned),
        created: now,
        expires,
        tokens,
    };
    let answer = resource(&id, &cache);
    lock(state).insert(id, cache);
    Outcome::Answer(json_response(200, &answer, at, Some(key)))
}

fn patch(state: &MockState, id: &str, body: &[u8], at: Option<&str>, key: &str) -> Outcome {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let now = state.clock.now_millis();
    let expires = match expiry(&json, now) {
        Ok(expires) => expires,
        Err(message) => return error(400, bodies::bad_request(&message), false, at, Some(key)),
    };
    let mut caches = lock(state);
    let Some(cache) = caches.get_mut(id) else {
        return error(403, not_found(), false, at, Some(key));
    };
    cache.expires = expires;
    let answer = resource(id, cache);
    drop(caches);
    Outcome::Answer(json_response(200, &answer, at, Some(key)))
}

fn list(state: &MockState, project: usize, at: Option<&str>, key: &str) -> Outcome {
    let now = state.clock.now_millis();
    let caches: Vec<Value> = lock(state)
        .iter()
        .filter(|(_, c)| c.project == project && c.expires > now)
        .map(|(id, c)| resource(id, c))
        .collect();
    let answer = json!({ "cachedContents": caches });
    Outcome::Answer(json_response(200, &answer, at, Some(key)))
}

fn iso(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX))
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The CachedContent resource.
fn resource(id: &str, cache: &Cache) -> Value {
    let mut answer = json!({
        "name": format!("cachedContents/{id}"),
        "model": format!("models/{}", cache.model),
        "createTime": iso(cache.created),
        "updateTime": iso(cache.created),
        "expireTime": iso(cache.expires),
        "usageMetadata": { "totalTokenCount": cache.tokens },
    });
    if let Some(name) = &cache.display_name {
        answer["displayName"] = json!(name);
    }
    answer
}
