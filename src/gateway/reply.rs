//! Errors to clients: Google's shape on the native routes, OpenAI's on `/v1`.

use axum::body::Body;
use axum::response::Response;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, StatusCode};

use crate::error::Error;

/// Which API a route speaks, for the shape of its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// `/v1beta/...`: `{"error":{"code","message","status"}}`.
    Native,
    /// `/v1/...`: `{"error":{"message","type","code"}}`.
    OpenAi,
}

/// A local error (no key, quota, circuit open, deadline, …) as the family's error response,
/// with `Retry-After` when known. It holds only the error's `Display`: never a key.
pub(crate) fn error(family: Family, error: &Error) -> Response {
    match family {
        Family::Native => error.to_response::<String>().map(Body::from),
        Family::OpenAi => {
            let status = error.status_code();
            let kind = match status.as_u16() {
                401 => "invalid_request_error",
                429 => "rate_limit_exceeded",
                400 | 404 | 413 => "invalid_request_error",
                _ => "api_error",
            };
            let body = serde_json::json!({
                "error": {
                    "message": error.to_string(),
                    "type": kind,
                    "code": error.kind().as_str(),
                }
            });
            let mut response = json(status, &body);
            if let Some(after) = error.retry_after() {
                let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(secs));
            }
            response
        }
    }
}

/// A client error found by the gateway itself (no token, unknown route, body too large).
pub(crate) fn client_error(family: Family, status: StatusCode, message: &str) -> Response {
    let body = match family {
        Family::Native => serde_json::json!({
            "error": {
                "code": status.as_u16(),
                "message": message,
                "status": match status.as_u16() {
                    401 => "UNAUTHENTICATED",
                    403 => "PERMISSION_DENIED",
                    404 => "NOT_FOUND",
                    _ => "INVALID_ARGUMENT",
                },
            }
        }),
        Family::OpenAi => serde_json::json!({
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "code": match status.as_u16() {
                    401 => "invalid_api_key",
                    404 => "not_found",
                    413 => "request_too_large",
                    _ => "invalid_request",
                },
            }
        }),
    };
    json(status, &body)
}

/// The gateway itself is at a limit of its own (request bodies held at once): 503 with
/// `Retry-After: 1`, in the family's shape.
pub(crate) fn busy(family: Family, message: &str) -> Response {
    let body = match family {
        Family::Native => serde_json::json!({
            "error": { "code": 503, "message": message, "status": "UNAVAILABLE" }
        }),
        Family::OpenAi => serde_json::json!({
            "error": { "message": message, "type": "api_error", "code": "gateway_busy" }
        }),
    };
    let mut response = json(StatusCode::SERVICE_UNAVAILABLE, &body);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
