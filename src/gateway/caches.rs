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

/// How many caches one list answer holds at most (`pageSize` may ask for fewer).
const MAX_PAGE: usize = 100;

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

/// A create's body: a JSON object naming a plausible model, whose contents name no uploaded
/// file (see the module docs). Sent as it came.
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
    Ok((body, Some(Model::new(model))))
}

/// A patch's body: a JSON object (only the expiry can change, which Google checks).
fn check_patch(body: Bytes) -> Result<(Bytes, Option<Model>), String> {
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("the request body is not JSON: {e}"))?;
    if !json.is_object() {
        return Err("the request body must be a JSON object, such as {\"ttl\": \"3600s\"}".into());
    }
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
    let (size, from) = paging(request.uri().query());
    let live = shared.live();
    let names = live.pool.names_of(tenant, "cachedContents/");
    let version = if path.starts_with("/v1beta") {
        "/v1beta"
    } else {
        "/v1"
    };
    let mut caches = Vec::new();
    for name in names.iter().skip(from).take(size) {
        let uri = format!("{}{version}/{name}", shared.upstream);
        let Ok(mut get) = http::Request::get(uri).body(Full::new(Bytes::new())) else {
            continue;
        };
        get.extensions_mut()
            .insert(crate::context::Tenant::new(tenant));
        let Ok(answer) = live.gemini.clone().oneshot(get).await else {
            continue;
        };
        if !answer.status().is_success() {
            continue;
        }
        let Ok(body) = answer.into_body().collect().await else {
            continue;
        };
        if let Ok(cache) = serde_json::from_slice::<serde_json::Value>(&body.to_bytes()) {
            caches.push(cache);
        }
    }
    let mut answer = serde_json::json!({ "cachedContents": caches });
    if from + size < names.len() {
        answer["nextPageToken"] = (from + size).to_string().into();
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
    fn pages_are_bounded() {
        assert_eq!(paging(None), (MAX_PAGE, 0));
        assert_eq!(paging(Some("pageSize=5&pageToken=10")), (5, 10));
        assert_eq!(paging(Some("pageSize=100000")), (MAX_PAGE, 0));
    }
}
