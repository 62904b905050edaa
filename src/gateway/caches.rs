//! Explicit context caches through the gateway, under `/v1beta/cachedContents` and
//! `/v1/cachedContents`: create, get, patch (the expiry), delete and list.
//!
//! Each cache belongs to the client token that created it: the stack's
//! [`AffinityLayer`](crate::affinity::AffinityLayer) records it with the client's
//! [`Tenant`](crate::context::Tenant) and its project (until its `expireTime`), so another
//! client's get, patch, delete — or a `generateContent` naming it in `cachedContent` — is a 404
//! with nothing sent, and every use goes to the project that holds it. The list is the
//! client's own caches only (the gateway reads each from its project), never the project's.
//!
//! A create's contents may name the client's own uploaded files (`fileData.fileUri`): the
//! cache is then made in the files' project. Another client's file is a 404.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::Method;

use super::Shared;
use super::proxy::forward;
use super::reply::Family;
use crate::Model;

/// The longest a cache may live (`ttl`, `expireTime`), at its create or a patch: its storage
/// is billed by the hour to the operator, and no budget counts it.
const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// The most caches one client may hold at once.
const MAX_CACHES_PER_CLIENT: usize = 100;

/// `/v1/cachedContents` and `/v1/cachedContents/{id}`.
pub(crate) async fn route(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    serve(&shared, request).await
}

/// A cache call, checked, then forwarded through the stack under the same path (a list is
/// answered here, from the client's own caches).
pub(crate) async fn serve(shared: &Shared, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let rest = super::owned::rest_of(&path, "cachedContents");
    let id = rest.strip_prefix('/').unwrap_or(rest);
    let known_id = crate::affinity::reference::is_id(id);
    match (request.method(), id) {
        (&Method::POST, "") => {
            if let Some(full) = super::owned::at_limit(shared, &request, &CACHES) {
                return full;
            }
            forward(
                shared,
                Family::Native,
                request,
                path,
                Some(Box::new(check_create)),
            )
            .await
        }
        (&Method::GET, "") => super::owned::list(shared, request, &path, &CACHES).await,
        (&Method::GET | &Method::DELETE, _) if known_id => {
            forward(shared, Family::Native, request, path, None).await
        }
        (&Method::PATCH, _) if known_id => {
            forward(
                shared,
                Family::Native,
                request,
                path,
                Some(Box::new(check_patch)),
            )
            .await
        }
        (method, _) => super::owned::not_served(
            method,
            &path,
            "POST and GET /v1beta/cachedContents, GET, PATCH and DELETE /v1beta/cachedContents/{id}",
        ),
    }
}

/// A client's caches.
const CACHES: super::owned::Owned = super::owned::Owned {
    prefix: "cachedContents/",
    field: "cachedContents",
    noun: "context cache",
    most: MAX_CACHES_PER_CLIENT,
    also: None,
};

/// The expiry a body asks for (`ttl` as `"600s"`, or `expireTime`), checked against
/// [`MAX_TTL`]; none asked is Google's default hour.
fn check_expiry(json: &serde_json::Value) -> Result<(), String> {
    let too_long = || {
        format!(
            "a cache lives at most {} s through this gateway: ask for a shorter \"ttl\" (or an earlier \"expireTime\")",
            MAX_TTL.as_secs()
        )
    };
    if let Some(ttl) = json.get("ttl") {
        let seconds = ttl
            .as_str()
            .and_then(|t| t.trim().strip_suffix('s'))
            .and_then(|t| t.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| {
                format!(
                    "\"ttl\" must be seconds such as \"600s\", not {}",
                    crate::model::shorten(&ttl.to_string())
                )
            })?;
        if seconds > MAX_TTL.as_secs_f64() {
            return Err(too_long());
        }
    }
    let expire = match (json.get("expireTime"), json.get("expire_time")) {
        (Some(_), Some(_)) => {
            return Err("send the expiry once: \"expireTime\" or \"expire_time\", not both".into());
        }
        (one, other) => one.or(other),
    };
    if let Some(at) = expire {
        let at: jiff::Timestamp = at.as_str().and_then(|t| t.parse().ok()).ok_or_else(|| {
            format!(
                "\"expireTime\" must be a time such as \"2026-12-02T12:00:00Z\", not {}",
                crate::model::shorten(&at.to_string())
            )
        })?;
        let limit = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::try_from(MAX_TTL).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        if at > limit {
            return Err(too_long());
        }
    }
    Ok(())
}

/// A create's body: a JSON object naming a plausible model, and an expiry within
/// [`MAX_TTL`]. Sent as it came (a file its contents name must be the client's own: the
/// stack's affinity layer checks, and sends the create to the file's project).
fn check_create(body: Bytes) -> Result<(Bytes, Option<Model>), String> {
    crate::model::count_body_parse();
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("the request body is not JSON: {e}"))?;
    let model = match json.get("model") {
        Some(serde_json::Value::String(model)) => model,
        _ => {
            return Err("\"model\" is required: a string naming a model, such as \"models/gemini-2.5-flash\"".to_owned());
        }
    };
    let model = model.strip_prefix("models/").unwrap_or(model);
    crate::model::check_name(model)?;
    check_expiry(&json)?;
    Ok((body, Some(Model::new(model))))
}

/// A patch's body: a JSON object (only the expiry can change, which Google checks).
fn check_patch(body: Bytes) -> Result<(Bytes, Option<Model>), String> {
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("the request body is not JSON: {e}"))?;
    if !json.is_object() {
        return Err("the request body must be a JSON object, such as {\"ttl\": \"3600s\"}".into());
    }
    check_expiry(&json)?;
    Ok((body, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_name_a_model() {
        let inline =
            br#"{"model":"models/gemini-2.5-flash","contents":[{"parts":[{"text":"x"}]}]}"#;
        assert!(check_create(Bytes::from_static(inline)).is_ok());
        assert!(check_create(Bytes::from_static(br#"{"contents":[]}"#)).is_err());
    }

    #[test]
    fn a_cache_lives_at_most_a_day() {
        let ok = br#"{"model":"models/gemini-2.5-flash","ttl":"3600s"}"#;
        assert!(check_create(Bytes::from_static(ok)).is_ok());
        for body in [
            r#"{"model":"gemini-2.5-flash","ttl":"86401s"}"#,
            r#"{"model":"gemini-2.5-flash","expireTime":"2999-01-01T00:00:00Z"}"#,
            r#"{"model":"gemini-2.5-flash","expire_time":"2999-01-01T00:00:00Z"}"#,
        ] {
            let error = check_create(Bytes::from(body)).unwrap_err();
            assert!(error.contains("at most"), "{error}");
        }
        assert!(check_patch(Bytes::from_static(br#"{"ttl":"1e9s"}"#)).is_err());
        assert!(check_patch(Bytes::from_static(br#"{"ttl":"soon"}"#)).is_err());
        assert!(check_patch(Bytes::from_static(br#"{"ttl":"7200s"}"#)).is_ok());
    }
}
