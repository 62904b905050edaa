//! Batch Mode through the gateway: `POST /v1beta/models/{model}:batchGenerateContent` (and
//! under `/v1`), and `GET`/`DELETE /v1beta/batches/{id}`, `POST /v1beta/batches/{id}:cancel`,
//! `GET /v1beta/batches` (the client's own).
//!
//! Each batch belongs to the client token that created it: the stack's
//! [`AffinityLayer`](crate::affinity::AffinityLayer) records it with the client and its project,
//! sends it to the project of the files or caches its requests name (the client's own, else a
//! 404), or to a project with room under Batch Mode's limits. A batch is billed at its create at
//! Google's batch rate, against the client's budget and limits (its requests' tokens count
//! against `tpm` at once).
//!
//! Refused with a 400: a batch's `webhookConfig` (Google would call an address the client chose
//! with the operator's project), and a batch whose requests are in a file
//! (`input_config.file_name`): the gateway does not read the file, so what its lines name
//! (another client's file or cache in the same project) and what they cost could not be
//! checked. Requests go inline (up to the body limit, 20 MB by default, as Google's inline
//! batches).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::Method;

use super::Shared;
use super::proxy::forward;
use super::reply::Family;
use crate::Model;

/// The most batches one client may hold (running or done, until deleted or their pins end): a
/// fifth of one project's 100 at once.
const MAX_BATCHES_PER_CLIENT: usize = 20;

/// A client's batches.
pub(super) const BATCHES: super::owned::Owned = super::owned::Owned {
    prefix: "batches/",
    field: "operations",
    noun: "batch",
    most: MAX_BATCHES_PER_CLIENT,
    also: None,
};

/// `/v1/batches` and `/v1/batches/{id}…`.
pub(crate) async fn route(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    serve(&shared, request).await
}

/// A batch call, checked, then forwarded through the stack under the same path (a list is
/// answered here, from the client's own batches).
pub(crate) async fn serve(shared: &Shared, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let rest = super::owned::rest_of(&path, "batches");
    let segment = rest.strip_prefix('/').unwrap_or(rest);
    let (id, verb) = match segment.split_once(':') {
        Some((id, verb)) => (id, Some(verb)),
        None => (segment, None),
    };
    let known = crate::affinity::reference::is_id(id);
    match (request.method(), id, verb) {
        (&Method::GET, "", None) => super::owned::list(shared, request, &path, &BATCHES).await,
        (&Method::GET | &Method::DELETE, _, None) | (&Method::POST, _, Some("cancel")) if known => {
            forward(shared, Family::Native, request, path, None).await
        }
        (method, _, _) => super::owned::not_served(
            method,
            &path,
            "GET /v1beta/batches, GET and DELETE /v1beta/batches/{id}, POST /v1beta/batches/{id}:cancel",
        ),
    }
}

/// `POST …/models/{model}:batchGenerateContent`: within the client's count of batches, its
/// body checked, then forwarded.
pub(crate) async fn create(shared: &Shared, request: Request, path: String) -> Response {
    if let Some(full) = super::owned::at_limit(shared, &request, &BATCHES) {
        return full;
    }
    let model = crate::model::model_in_path(&path).map(Model::new);
    let check = move |body: Bytes| check_create(body).map(|body| (body, model));
    forward(shared, Family::Native, request, path, Some(Box::new(check))).await
}

/// A create's body: a JSON object whose `batch` sets no webhook.
fn check_create(body: Bytes) -> Result<Bytes, String> {
    crate::model::count_body_parse();
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("the request body is not JSON: {e}"))?;
    let batch = json
        .get("batch")
        .and_then(serde_json::Value::as_object)
        .ok_or("the request body must be a JSON object with a \"batch\" object, as Batch Mode takes it")?;
    if batch.contains_key("webhookConfig") || batch.contains_key("webhook_config") {
        return Err("a batch's \"webhookConfig\" is not accepted through this gateway: poll the batch (GET /v1beta/batches/{id}) instead".to_owned());
    }
    let config = batch
        .get("inputConfig")
        .or_else(|| batch.get("input_config"));
    if config.is_some_and(|c| c.get("fileName").is_some() || c.get("file_name").is_some()) {
        return Err("a batch's requests are sent inline through this gateway (input_config.requests): the gateway does not read a file of requests, so what its lines name (files, caches) and what they cost could not be checked".to_owned());
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_sets_no_webhook() {
        let ok = br#"{"batch":{"input_config":{"requests":{"requests":[]}}}}"#;
        assert!(check_create(Bytes::from_static(ok)).is_ok());
        let file = br#"{"batch":{"inputConfig":{"fileName":"files/a"}}}"#;
        assert!(
            check_create(Bytes::from_static(file))
                .unwrap_err()
                .contains("inline")
        );
        let hooked = br#"{"batch":{"webhookConfig":{"uri":"https://example.com"}}}"#;
        assert!(
            check_create(Bytes::from_static(hooked))
                .unwrap_err()
                .contains("webhook")
        );
        assert!(check_create(Bytes::from_static(b"{}")).is_err());
    }
}
