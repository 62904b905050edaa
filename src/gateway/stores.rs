//! File Search stores through the gateway, under `/v1beta/fileSearchStores` and
//! `/v1/fileSearchStores`: create, get, delete (`?force=true`), the client's own list, a file
//! imported (`:importFile`, the client's own uploaded file), its operations and documents.
//!
//! Each store belongs to the client token that created it: the stack's
//! [`AffinityLayer`](crate::affinity::AffinityLayer) records it with the client and its
//! project, so every call under it — and every `generateContent` or interaction whose File
//! Search tool names it — goes to that project, and another client's is a 404 with nothing
//! sent. An import names a file: it must be the client's own and in the store's project, else
//! a 404 or a 400 naming both. A direct upload into a store (`:uploadToFileSearchStore`) is not
//! served: upload the file (`/upload/v1beta/files`), then import it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::Method;

use super::Shared;
use super::proxy::forward;
use super::reply::Family;
use crate::Model;
use crate::affinity::reference::is_id;

/// The most stores one client may hold.
const MAX_STORES_PER_CLIENT: usize = 10;

/// A client's stores.
const STORES: super::owned::Owned = super::owned::Owned {
    prefix: "fileSearchStores/",
    field: "fileSearchStores",
    noun: "File Search store",
    most: MAX_STORES_PER_CLIENT,
    also: None,
};

/// `/v1/fileSearchStores` and `/v1/fileSearchStores/{id}…`.
pub(crate) async fn route(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    serve(&shared, request).await
}

/// A store call, checked, then forwarded through the stack under the same path (a list is
/// answered here, from the client's own stores).
pub(crate) async fn serve(shared: &Shared, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let rest = super::owned::rest_of(&path, "fileSearchStores");
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    match (request.method(), served(rest)) {
        (&Method::POST, Some(Served::Collection)) => {
            if let Some(full) = super::owned::at_limit(shared, &request, &STORES) {
                return full;
            }
            forward(
                shared,
                Family::Native,
                request,
                path,
                Some(Box::new(check_object)),
            )
            .await
        }
        (&Method::GET, Some(Served::Collection)) => {
            super::owned::list(shared, request, &path, &STORES).await
        }
        (&Method::GET | &Method::DELETE, Some(Served::Store | Served::Document))
        | (&Method::GET, Some(Served::Read)) => {
            forward(shared, Family::Native, request, path, None).await
        }
        (&Method::POST, Some(Served::Import)) => {
            forward(
                shared,
                Family::Native,
                request,
                path,
                Some(Box::new(check_object)),
            )
            .await
        }
        (method, _) => super::owned::not_served(
            method,
            &path,
            "POST and GET /v1beta/fileSearchStores, GET and DELETE /v1beta/fileSearchStores/{id}, POST …/{id}:importFile, GET …/{id}/documents, GET and DELETE …/{id}/documents/{doc}, GET …/{id}/operations/{op}; upload a file, then import it",
        ),
    }
}

/// What a path under the collection addresses.
#[derive(Debug, PartialEq, Eq)]
enum Served {
    /// The collection: create, list.
    Collection,
    /// One store: get, delete.
    Store,
    /// `{id}:importFile`.
    Import,
    /// `{id}/documents/{doc}`: get, delete.
    Document,
    /// `{id}/documents`, `{id}/operations/{op}`, `{id}/upload/operations/{op}`: read.
    Read,
}

fn served(rest: &str) -> Option<Served> {
    if rest.is_empty() {
        return Some(Served::Collection);
    }
    let mut segments = rest.split('/');
    let first = segments.next()?;
    let tail: Vec<&str> = segments.collect();
    if let Some(id) = first.strip_suffix(":importFile") {
        return (is_id(id) && tail.is_empty()).then_some(Served::Import);
    }
    if !is_id(first) {
        return None;
    }
    match tail.as_slice() {
        [] => Some(Served::Store),
        ["documents"] => Some(Served::Read),
        ["documents", doc] if is_id(doc) => Some(Served::Document),
        ["operations", op] | ["upload", "operations", op] if is_id(op) => Some(Served::Read),
        _ => None,
    }
}

/// A body that must be a JSON object (a create's, an import's).
fn check_object(body: Bytes) -> Result<(Bytes, Option<Model>), String> {
    if body.is_empty() {
        return Ok((Bytes::from_static(b"{}"), None));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("the request body is not JSON: {e}"))?;
    if !json.is_object() {
        return Err("the request body must be a JSON object".to_owned());
    }
    Ok((body, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_stores_routes_are_served() {
        assert_eq!(served(""), Some(Served::Collection));
        assert_eq!(served("s-1"), Some(Served::Store));
        assert_eq!(served("s-1:importFile"), Some(Served::Import));
        assert_eq!(served("s-1/documents"), Some(Served::Read));
        assert_eq!(served("s-1/documents/d-1"), Some(Served::Document));
        assert_eq!(served("s-1/operations/op-1"), Some(Served::Read));
        assert_eq!(served("s-1/upload/operations/op-1"), Some(Served::Read));
        assert_eq!(served("s-1:uploadToFileSearchStore"), None);
        assert_eq!(served("s-1/media/blob"), None);
        assert_eq!(served("s-1/documents/d-1/chunks"), None);
    }
}
