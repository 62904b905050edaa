//! The proxied routes: native Gemini (`/v1beta/...`) and OpenAI-compatible (`/v1/...`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use tower::ServiceExt;

use super::Shared;
use super::reply::{self, Family};

/// Request headers passed on to the upstream; everything else (the client's credentials,
/// cookies, hop-by-hop headers, `accept-encoding` — usage is read from the body as it streams)
/// stays here.
const FORWARDED: &[&str] = &[
    "content-type",
    "accept",
    "user-agent",
    "x-goog-api-client",
    "x-goog-request-params",
    // Read by the cache and fallback layers (and not sent on by them).
    "cache-control",
    "x-gemini-cache",
    "x-gemini-cache-namespace",
    "x-gemini-fallback",
];

/// Response headers never passed back (hop-by-hop).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

/// How long a client may take to send its request body.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Native methods the gateway forwards on `/v1beta/models/{model}:{method}`.
const NATIVE_METHODS: &[&str] = &[
    "generateContent",
    "streamGenerateContent",
    "countTokens",
    "embedContent",
    "batchEmbedContents",
];

/// Native Gemini, `/v1beta/...` or the stable `/v1/models/...`: the model list, a model's
/// methods, and (v1beta) Google's own OpenAI-compatible paths.
pub(crate) async fn native(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let path = request.uri().path();
    if let Err(problem) = check_path(path) {
        return reply::client_error(Family::Native, StatusCode::BAD_REQUEST, &problem);
    }
    let models = path
        .strip_prefix("/v1beta/models")
        .or_else(|| path.strip_prefix("/v1/models"));
    let allowed = match (request.method(), models) {
        (&Method::GET, Some(rest)) => {
            rest.is_empty() || (rest.starts_with('/') && !rest.contains(':'))
        }
        (&Method::POST, Some(rest)) => rest
            .strip_prefix('/')
            .and_then(|rest| rest.split_once(':'))
            .is_some_and(|(model, method)| !model.is_empty() && NATIVE_METHODS.contains(&method)),
        (&Method::GET | &Method::POST, None) => path.starts_with("/v1beta/openai/"),
        _ => false,
    };
    if !allowed {
        return reply::client_error(
            Family::Native,
            StatusCode::NOT_FOUND,
            &format!("the gateway does not serve {} {path}", request.method()),
        );
    }
    let path = path.to_owned();
    forward(&shared, Family::Native, request, path, None).await
}

/// `POST /v1/chat/completions` → Google's `/v1beta/openai/chat/completions`, the model
/// defaulting to the gateway's.
pub(crate) async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    request: Request,
) -> Response {
    let model = shared.model.clone();
    let fill_model = move |body: Bytes| -> Result<Bytes, String> {
        let mut json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("the request body is not JSON: {e}"))?;
        let object = json
            .as_object_mut()
            .ok_or("the request body must be a JSON object")?;
        match object.get("model") {
            Some(serde_json::Value::String(given)) => {
                crate::model::check_name(given.strip_prefix("models/").unwrap_or(given))?;
                Ok(body)
            }
            _ => {
                object.insert("model".to_owned(), serde_json::Value::String(model));
                Ok(Bytes::from(json.to_string()))
            }
        }
    };
    forward(
        &shared,
        Family::OpenAi,
        request,
        "/v1beta/openai/chat/completions".to_owned(),
        Some(Box::new(fill_model)),
    )
    .await
}

/// `POST /v1/embeddings` → `/v1beta/openai/embeddings`.
pub(crate) async fn embeddings(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let path = "/v1beta/openai/embeddings".to_owned();
    let check = |body: Bytes| -> Result<Bytes, String> {
        serde_json::from_slice::<serde::de::IgnoredAny>(&body)
            .map_err(|e| format!("the request body is not JSON: {e}"))?;
        if let Some(model) = crate::model::model_in_json(&body) {
            crate::model::check_name(&model)?;
        }
        Ok(body)
    };
    forward(
        &shared,
        Family::OpenAi,
        request,
        path,
        Some(Box::new(check)),
    )
    .await
}

/// `GET /v1/models`: both APIs have it. A client that authenticates the Google way
/// (`x-goog-api-key` or `?key=`, as the google-genai SDK does) gets Google's list; one that
/// sends `Authorization: Bearer` (the OpenAI SDK) gets OpenAI's, from `/v1beta/openai/models`.
pub(crate) async fn models(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let headers = request.headers();
    let google_style = !headers.contains_key(http::header::AUTHORIZATION)
        && (headers.contains_key("x-goog-api-key")
            || request
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p.starts_with("key="))));
    if google_style {
        return forward(
            &shared,
            Family::Native,
            request,
            "/v1/models".to_owned(),
            None,
        )
        .await;
    }
    let path = "/v1beta/openai/models".to_owned();
    forward(&shared, Family::OpenAi, request, path, None).await
}

type Rewrite = Box<dyn FnOnce(Bytes) -> Result<Bytes, String> + Send>;

/// A path the gateway may put after the upstream's base: no dot segments, empty segments,
/// percent-escapes or backslashes, so the route checked here is the route Google serves (a
/// `/v1beta/models/../files` would otherwise reach another API with the gateway's key), and
/// every model segment a plausible model name.
fn check_path(path: &str) -> Result<(), String> {
    let segments = path.strip_prefix('/').unwrap_or(path);
    for segment in segments.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(format!(
                "the path {:?} has an empty or dot segment; send the route as documented",
                crate::model::shorten(path)
            ));
        }
        if segment.contains(['%', '\\']) {
            return Err(format!(
                "the path {:?} has a percent-escape or backslash; model names and routes are plain ASCII",
                crate::model::shorten(path)
            ));
        }
    }
    if let Some(model) = crate::model::model_in_path(path) {
        crate::model::check_name(model)?;
    }
    Ok(())
}

/// The query without the client's `key=` (its gateway token).
fn query_without_key(query: Option<&str>) -> String {
    let kept: Vec<&str> = query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty() && *pair != "key" && !pair.starts_with("key="))
        .collect();
    if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    }
}

/// Buffer the body (bounded), send it upstream through the stack, stream the answer back.
async fn forward(
    shared: &Shared,
    family: Family,
    request: Request,
    path: String,
    rewrite: Option<Rewrite>,
) -> Response {
    let (parts, body) = request.into_parts();
    let limit = shared.body_limit;
    // Its length when known: a content-length, or none at all (a GET).
    let declared = http_body::Body::size_hint(&body).upper();
    if declared.is_some_and(|length| length > limit as u64) {
        return reply::client_error(
            family,
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the request body is larger than the gateway's limit of {limit} bytes"),
        );
    }
    // Room for the body among those held at once (a body of unknown length reserves the
    // largest, and gives back what it did not use once read): a flood of large bodies waits
    // here rather than filling the memory.
    let reserved = declared
        .map_or(limit, |length| length as usize)
        .div_ceil(1024);
    let mut held = if reserved == 0 {
        None
    } else {
        let units = u32::try_from(reserved).unwrap_or(u32::MAX);
        let room = shared.body_memory.clone().acquire_many_owned(units);
        match tokio::time::timeout(BODY_READ_TIMEOUT, room).await {
            Ok(Ok(permit)) => Some(permit),
            _ => {
                return reply::busy(
                    family,
                    &format!(
                        "the gateway holds as many request bodies as it may ({} MiB, GATEWAY_BODY_MEMORY_MB) and none was answered within {} s; retry shortly",
                        shared.body_memory_mb,
                        BODY_READ_TIMEOUT.as_secs()
                    ),
                );
            }
        }
    };
    // Bounded in size and in time: a client trickling its body holds nothing for long.
    let read = tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, limit).collect()).await;
    let Ok(read) = read else {
        return reply::client_error(
            family,
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "the request body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        );
    };
    let body = match read {
        Ok(collected) => {
            let body = collected.to_bytes();
            // Keep what the body takes; give back the rest of the reservation.
            if let Some(permit) = held.as_mut() {
                let used = body.len().div_ceil(1024);
                if let Some(unused) = permit.num_permits().checked_sub(used) {
                    drop(permit.split(unused));
                }
            }
            body
        }
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return reply::client_error(
                family,
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body is larger than the gateway's limit of {limit} bytes"),
            );
        }
        Err(_) => {
            return reply::client_error(
                family,
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            );
        }
    };
    let body = match rewrite {
        Some(rewrite) => match rewrite(body) {
            Ok(body) => body,
            Err(message) => {
                return reply::client_error(family, StatusCode::BAD_REQUEST, &message);
            }
        },
        // What Google would refuse with a 400 is refused here, before a key and a slot of
        // quota are spent on it: a body that says (or leaves to be assumed) it is JSON and is
        // not. Other content types (a multipart upload) pass as they are.
        None if parts.method == Method::POST && says_json(&parts.headers) => {
            if let Err(error) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
                return reply::client_error(
                    family,
                    StatusCode::BAD_REQUEST,
                    &format!("the request body is not JSON: {error}"),
                );
            }
            body
        }
        None => body,
    };
    let uri = format!(
        "{}{path}{}",
        shared.upstream,
        query_without_key(parts.uri.query())
    );
    let mut upstream = http::Request::new(Full::new(body));
    *upstream.method_mut() = parts.method;
    *upstream.uri_mut() = match uri.parse() {
        Ok(uri) => uri,
        Err(_) => {
            return reply::client_error(family, StatusCode::BAD_REQUEST, "malformed request path");
        }
    };
    copy_headers(&parts.headers, upstream.headers_mut(), FORWARDED);
    if let Some(account) = parts.extensions.get::<crate::cost::Account>() {
        upstream.extensions_mut().insert(account.clone());
    }
    let gemini = shared.live().gemini.clone();
    match gemini.oneshot(upstream).await {
        Ok(response) => {
            if let Some(fallback) = response
                .extensions()
                .get::<crate::fallback::ModelFallback>()
            {
                shared.savings.fell_back(fallback);
            }
            let (mut head, body) = response.into_parts();
            for name in HOP_BY_HOP {
                head.headers.remove(*name);
            }
            Response::from_parts(head, Body::new(body.map_err(axum::Error::new)))
        }
        Err(error) => {
            tracing::info!(error = %error, "request not served");
            reply::error(family, &error)
        }
    }
}

/// Is the body JSON by its `content-type` (or, with none, by Gemini's convention)?
fn says_json(headers: &HeaderMap) -> bool {
    headers.get(http::header::CONTENT_TYPE).is_none_or(|value| {
        value
            .as_bytes()
            .windows(4)
            .any(|w| w.eq_ignore_ascii_case(b"json"))
    })
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, names: &[&'static str]) {
    for name in names {
        let name = HeaderName::from_static(name);
        for value in from.get_all(&name) {
            to.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_key_never_goes_upstream_in_the_query() {
        assert_eq!(
            query_without_key(Some("alt=sse&key=client-token")),
            "?alt=sse"
        );
        assert_eq!(query_without_key(Some("key=client-token")), "");
        assert_eq!(query_without_key(Some("key")), "");
        assert_eq!(query_without_key(None), "");
        assert_eq!(query_without_key(Some("keys=1&alt=sse")), "?keys=1&alt=sse");
    }
}
