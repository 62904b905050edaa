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
//! A create's contents may not name an uploaded file (`fileData.fileUri` of Google's files
//! service): the gateway serves no files, so such a file is the operator's, not the client's.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

use super::Shared;
use super::proxy::forward;
use super::reply::{self, Family};
use crate::Model;

/// How many caches one list answer holds at most (`pageSize` may ask for fewer): each is read
/// from its project, all at once.
const MAX_PAGE: usize = 20;
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
    let rest = path
        .strip_prefix("/v1beta/cachedContents")
        .or_else(|| path.strip_prefix("/v1/cachedContents"))
        .unwrap_or("/");
    let id = rest.strip_prefix('/').unwrap_or(rest);
    let known_id = crate::affinity::reference::is_id(id);
    match (request.method(), id) {
        (&Method::POST, "") => {
            if let Some(full) = at_cache_limit(shared, &request) {
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
        (&Method::GET, "") => list(shared, request, &path).await,
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
        (method, _) => reply::client_error(
            Family::Native,
            StatusCode::NOT_FOUND,
            &format!(
                "the gateway does not serve {method} {}: it serves POST and GET /v1beta/cachedContents, GET, PATCH and DELETE /v1beta/cachedContents/{{id}} (and the same under /v1)",
                crate::model::shorten(&path)
            ),
        ),
    }
}

/// A 429 if the client holds [`MAX_CACHES_PER_CLIENT`] caches already.
fn at_cache_limit(shared: &Shared, request: &Request) -> Option<Response> {
    let scope = request.extensions().get::<super::ClientScope>()?;
    let tenant = scope.0.to_str().ok()?;
    let held = shared.live().pool.names_of(tenant, "cachedContents/").len();
    (held >= MAX_CACHES_PER_CLIENT).then(|| {
        reply::client_error(
            Family::Native,
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "this client holds {held} context caches, the most it may: delete one (DELETE /v1beta/cachedContents/{{id}}) or let one expire before creating another"
            ),
        )
    })
}

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

/// A create's body: a JSON object naming a plausible model, whose contents name no uploaded
/// file (see the module docs), and an expiry within [`MAX_TTL`]. Sent as it came.
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
    if names_uploaded_file(&json) {
        return Err("a cache's contents may not name an uploaded file (fileData.fileUri of the files service): the gateway serves no files; send the content inline".to_owned());
    }
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

/// Does a body name a file of Google's files service anywhere (`fileData.fileUri`,
/// `file_data.file_uri`, as a full URI or `files/…`)?
fn names_uploaded_file(json: &serde_json::Value) -> bool {
    match json {
        serde_json::Value::Object(map) => map.iter().any(|(key, value)| {
            let file_uri = matches!(key.as_str(), "fileUri" | "file_uri")
                && value.as_str().is_some_and(|uri| {
                    uri.starts_with("files/") || uri.contains("generativelanguage.googleapis.com")
                });
            file_uri || names_uploaded_file(value)
        }),
        serde_json::Value::Array(items) => items.iter().any(names_uploaded_file),
        _ => false,
    }
}

/// The client's caches: each read from its project through the stack, newest last;
/// `pageSize` (at most [`MAX_PAGE`]) and `pageToken` (an offset this gateway gave) page them.
async fn list(shared: &Shared, request: Request, path: &str) -> Response {
    let scope = request.extensions().get::<super::ClientScope>().cloned();
    let Some(tenant) = scope.as_ref().and_then(|s| s.0.to_str().ok()) else {
        return reply::client_error(
            Family::Native,
            StatusCode::NOT_FOUND,
            "the cache list is each client's own: this gateway runs without client tokens",
        );
    };
    // A list counts against the client's limits as one request.
    if let Some(limits) = &shared.client_limits {
        let (parts, _) = request.into_parts();
        let head = crate::context::RequestHead {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            extensions: &parts.extensions,
        };
        if let Some(refused) = limits.admit::<axum::body::Body>(&head, b"") {
            return refused;
        }
        return page(shared, tenant, parts.uri.query(), path).await;
    }
    page(shared, tenant, request.uri().query(), path).await
}

/// One page of the client's caches, each read from its project, all at once.
async fn page(shared: &Shared, tenant: &str, query: Option<&str>, path: &str) -> Response {
    let (size, from) = paging(query);
    let live = shared.live();
    let names = live.pool.names_of(tenant, "cachedContents/");
    let from = from.min(names.len());
    let version = if path.starts_with("/v1beta") {
        "/v1beta"
    } else {
        "/v1"
    };
    let reads = names.iter().skip(from).take(size).map(|name| {
        let uri = format!("{}{version}/{name}", shared.upstream);
        let gemini = live.gemini.clone();
        async move {
            let mut get = http::Request::get(uri).body(Full::new(Bytes::new())).ok()?;
            get.extensions_mut()
                .insert(crate::context::Tenant::new(tenant));
            let answer = gemini.oneshot(get).await.ok()?;
            if !answer.status().is_success() {
                return None;
            }
            let body = answer.into_body().collect().await.ok()?.to_bytes();
            serde_json::from_slice::<serde_json::Value>(&body).ok()
        }
    });
    let caches: Vec<serde_json::Value> = futures_util::future::join_all(reads)
        .await
        .into_iter()
        .flatten()
        .collect();
    let mut answer = serde_json::json!({ "cachedContents": caches });
    let next = from.saturating_add(size);
    if next < names.len() {
        answer["nextPageToken"] = next.to_string().into();
    }
    reply::json(StatusCode::OK, &answer)
}

/// `pageSize` (default and at most [`MAX_PAGE`]) and `pageToken` (an offset).
fn paging(query: Option<&str>) -> (usize, usize) {
    let mut size = MAX_PAGE;
    let mut from = 0;
    for pair in query.unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("pageSize", n)) => {
                size = n.parse().map_or(MAX_PAGE, |n: usize| n.clamp(1, MAX_PAGE))
            }
            Some(("pageToken", n)) => from = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    (size, from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_naming_uploaded_files_are_refused() {
        let inline =
            br#"{"model":"models/gemini-2.5-flash","contents":[{"parts":[{"text":"x"}]}]}"#;
        assert!(check_create(Bytes::from_static(inline)).is_ok());
        for body in [
            r#"{"model":"models/gemini-2.5-flash","contents":[{"parts":[{"fileData":{"fileUri":"https://generativelanguage.googleapis.com/v1beta/files/abc"}}]}]}"#,
            r#"{"model":"gemini-2.5-flash","contents":[{"parts":[{"file_data":{"file_uri":"files/abc"}}]}]}"#,
        ] {
            let error = check_create(Bytes::from(body)).unwrap_err();
            assert!(error.contains("uploaded file"), "{error}");
        }
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

    #[test]
    fn pages_are_bounded() {
        assert_eq!(paging(None), (MAX_PAGE, 0));
        assert_eq!(paging(Some("pageSize=5&pageToken=10")), (5, 10));
        assert_eq!(paging(Some("pageSize=100000")), (MAX_PAGE, 0));
        assert_eq!(paging(Some("pageToken=18446744073709551615")).1, usize::MAX);
    }
}
