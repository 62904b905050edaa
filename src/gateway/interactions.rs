//! The Interactions API through the gateway, under `/v1beta/interactions` and `/v1/interactions`
//! (google-genai calls `/v1` by default): create (`POST`, streamed or not, `background`),
//! get (`GET …/{id}`, also `?stream=true&last_event_id=` to resume), delete and cancel.
//!
//! Each interaction belongs to the client token that created it: the stack's
//! [`AffinityLayer`](crate::affinity::AffinityLayer) records it with the client's
//! [`Tenant`](crate::context::Tenant) and the project that holds it, so another client's get,
//! continuation, cancel or delete is a 404 in this API's shape with nothing sent upstream, and
//! every turn of a conversation goes to its project.
//!
//! Only model interactions are served. A body naming an `agent` (Deep Research and other
//! managed agents run long in the background and are priced apart), an `environment`, a
//! `webhook_config` or a `cached_content` (project resources the gateway does not track) is
//! refused with a 400 saying so.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{Method, StatusCode};

use super::Shared;
use super::proxy::forward;
use super::reply::{self, Family};
use crate::Model;

/// Body fields the gateway refuses in a create, and why.
const REFUSED_FIELDS: &[(&str, &str)] = &[
    (
        "agent",
        "the gateway serves model interactions only: send \"model\" instead of \"agent\"",
    ),
    (
        "agent_config",
        "the gateway serves model interactions only: \"agent_config\" is not accepted",
    ),
    (
        "environment",
        "\"environment\" names a resource of the operator's projects that the gateway does not serve",
    ),
    (
        "webhook_config",
        "\"webhook_config\" registers a callback with the operator's project and is not accepted; poll with GET or stream instead",
    ),
    (
        "cached_content",
        "\"cached_content\" names a context cache, which the gateway does not serve (interactions use implicit caching)",
    ),
];

/// `/v1/interactions` and `/v1/interactions/{…}`.
pub(crate) async fn route(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    serve(&shared, request).await
}

/// An Interactions call, checked, then forwarded through the stack under the same path.
pub(crate) async fn serve(shared: &Shared, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let rest = path
        .strip_prefix("/v1beta/interactions")
        .or_else(|| path.strip_prefix("/v1/interactions"))
        .unwrap_or("/");
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
    let known_id = crate::affinity::reference::is_id(id);
    match (request.method(), id, action) {
        (&Method::POST, "", "") => {
            forward(
                shared,
                Family::Interactions,
                request,
                path,
                Some(Box::new(check_create)),
            )
            .await
        }
        (&Method::GET | &Method::DELETE, _, "") | (&Method::POST, _, "cancel") if known_id => {
            forward(shared, Family::Interactions, request, path, None).await
        }
        (method, _, _) => reply::client_error(
            Family::Interactions,
            StatusCode::NOT_FOUND,
            &format!(
                "the gateway does not serve {method} {}: it serves POST /v1beta/interactions, GET and DELETE /v1beta/interactions/{{id}} and POST /v1beta/interactions/{{id}}/cancel (and the same under /v1)",
                crate::model::shorten(&path)
            ),
        ),
    }
}

/// A create's body: a JSON object with a `model` (checked like a model in a path) and none of
/// [`REFUSED_FIELDS`]. The body is sent as it came.
fn check_create(body: Bytes) -> Result<(Bytes, Option<Model>), String> {
    crate::model::count_body_parse();
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("the request body is not JSON: {e}"))?;
    let object = json
        .as_object()
        .ok_or("the request body must be a JSON object")?;
    // One spelling per field: a camelCase twin (`previousInteractionId`) that a JSON front end
    // might read as well would slip past what is checked here.
    if let Some(name) = object
        .keys()
        .find(|k| k.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(format!(
            "the Interactions API's fields are snake_case: send {:?} as {:?}",
            crate::model::shorten(name),
            snake_case(name)
        ));
    }
    if let Some((_, why)) = REFUSED_FIELDS
        .iter()
        .find(|(name, _)| object.contains_key(*name))
    {
        return Err((*why).to_owned());
    }
    let model = match object.get("model") {
        Some(serde_json::Value::String(model)) => model,
        Some(_) => {
            return Err(
                "\"model\" must be a string naming a model, such as \"gemini-2.5-flash\""
                    .to_owned(),
            );
        }
        None => {
            return Err(
                "\"model\" is required: a string naming a model, such as \"gemini-2.5-flash\""
                    .to_owned(),
            );
        }
    };
    let model = model.strip_prefix("models/").unwrap_or(model);
    crate::model::check_name(model)?;
    let model = Model::new(model);
    Ok((body, Some(model)))
}

/// `previousInteractionId` → `previous_interaction_id` (for the error message).
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars().take(64) {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Query parameters passed on for Interactions calls: `stream` and `include_input` as
/// `true`/`false`, `last_event_id` as a plain token.
pub(crate) fn allowed_query(name: &str, value: &str) -> bool {
    match name {
        "stream" | "include_input" => matches!(value, "true" | "false"),
        "last_event_id" => crate::affinity::reference::is_id(value),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_are_checked() {
        let ok = check_create(Bytes::from_static(
            br#"{"model":"models/gemini-2.5-flash","input":"hi"}"#,
        ))
        .unwrap();
        assert_eq!(ok.1.unwrap().as_str(), "gemini-2.5-flash");
        for (body, says) in [
            (r#"{"input":"hi"}"#, "is required"),
            (r#"{"model":7,"input":"hi"}"#, "must be a string"),
            (
                r#"{"agent":"deep-research-preview-04-2026","input":"x"}"#,
                "model interactions only",
            ),
            (
                r#"{"model":"gemini-2.5-flash","webhook_config":{"uris":["https://x"]}}"#,
                "webhook_config",
            ),
            (r#"{"model":"../files/x","input":"hi"}"#, "model"),
            ("[1]", "JSON object"),
            (
                r#"{"model":"gemini-2.5-flash","previousInteractionId":"v1_a"}"#,
                "previous_interaction_id",
            ),
            (
                r#"{"model":"gemini-2.5-flash","webhookConfig":{}}"#,
                "snake_case",
            ),
        ] {
            let error = check_create(Bytes::from(body)).unwrap_err();
            assert!(error.contains(says), "{body}: {error}");
        }
    }

    #[test]
    fn only_the_apis_query_parameters_pass() {
        assert!(allowed_query("stream", "true"));
        assert!(!allowed_query("stream", "yes"));
        assert!(allowed_query("last_event_id", "e12"));
        assert!(!allowed_query("last_event_id", "a&key=x"));
        assert!(!allowed_query("key", "anything"));
    }
}
