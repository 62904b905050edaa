//! Errors to clients: Google's shape on the native routes, OpenAI's on `/v1`, the
//! Interactions API's own (a string code) on its routes.

use axum::body::Body;
use axum::response::Response;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, StatusCode};
use serde::Serialize;

use crate::error::Error;

/// Google's error shape: `{"error":{"code","message","status"}}`.
#[derive(Serialize)]
struct GoogleError<'a> {
    error: GoogleStatus<'a>,
}

#[derive(Serialize)]
struct GoogleStatus<'a> {
    code: u16,
    message: &'a str,
    status: &'a str,
}

/// OpenAI's error shape: `{"error":{"message","type","code"}}`.
#[derive(Serialize)]
struct OpenAiError<'a> {
    error: OpenAiDetail<'a>,
}

#[derive(Serialize)]
struct OpenAiDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    code: &'a str,
}

/// The Interactions API's error shape: `{"error":{"code":"not_found","message"}}` (a string
/// code, the canonical status name in lower case).
#[derive(Serialize)]
struct InteractionsError<'a> {
    error: InteractionsDetail<'a>,
}

#[derive(Serialize)]
struct InteractionsDetail<'a> {
    code: String,
    message: &'a str,
}

/// An error of `family` with this status, message, and (OpenAI) type and code or (Google)
/// status name.
fn error_body(
    family: Family,
    status: StatusCode,
    message: &str,
    google_status: &str,
    openai: (&str, &str),
) -> Response {
    match family {
        Family::Native => json(
            status,
            &GoogleError {
                error: GoogleStatus {
                    code: status.as_u16(),
                    message,
                    status: google_status,
                },
            },
        ),
        Family::OpenAi => json(
            status,
            &OpenAiError {
                error: OpenAiDetail {
                    message,
                    kind: openai.0,
                    code: openai.1,
                },
            },
        ),
        Family::Interactions => json(
            status,
            &InteractionsError {
                error: InteractionsDetail {
                    code: google_status.to_ascii_lowercase(),
                    message,
                },
            },
        ),
    }
}

/// Which API a route speaks, for the shape of its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// `/v1beta/...`: `{"error":{"code","message","status"}}`.
    Native,
    /// `/v1/...`: `{"error":{"message","type","code"}}`.
    OpenAi,
    /// `/v1beta/interactions…`, `/v1/interactions…`: `{"error":{"code":"not_found","message"}}`.
    Interactions,
}

/// A local error (no key, quota, circuit open, deadline, …) as the family's error response,
/// with `Retry-After` when known. It holds only the error's `Display`: never a key.
pub(crate) fn error(family: Family, error: &Error) -> Response {
    match family {
        Family::Native => error.to_response::<String>().map(Body::from),
        Family::Interactions => {
            let status = error.status_code();
            let message = error.to_string();
            let mut response = error_body(
                family,
                status,
                &message,
                google_status(status),
                ("api_error", ""),
            );
            retry_after(&mut response, error);
            response
        }
        Family::OpenAi => {
            let status = error.status_code();
            let kind = match status.as_u16() {
                401 => "invalid_request_error",
                429 => "rate_limit_exceeded",
                400 | 404 | 413 => "invalid_request_error",
                _ => "api_error",
            };
            let message = error.to_string();
            let body = OpenAiError {
                error: OpenAiDetail {
                    message: &message,
                    kind,
                    code: error.kind().as_str(),
                },
            };
            let mut response = json(status, &body);
            retry_after(&mut response, error);
            response
        }
    }
}

/// `Retry-After` in whole seconds (rounded up), when the error knows one.
fn retry_after(response: &mut Response, error: &Error) {
    if let Some(after) = error.retry_after() {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
}

/// The canonical status name Google gives an HTTP status.
fn google_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 413 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNAVAILABLE",
    }
}

/// A client error found by the gateway itself (no token, unknown route, body too large).
pub(crate) fn client_error(family: Family, status: StatusCode, message: &str) -> Response {
    let google_status = google_status(status);
    let code = match status.as_u16() {
        401 => "invalid_api_key",
        404 => "not_found",
        413 => "request_too_large",
        _ => "invalid_request",
    };
    error_body(
        family,
        status,
        message,
        google_status,
        ("invalid_request_error", code),
    )
}

/// The gateway itself is at a limit of its own (request bodies held at once): 503 with
/// `Retry-After: 1`, in the family's shape.
pub(crate) fn busy(family: Family, message: &str) -> Response {
    let mut response = error_body(
        family,
        StatusCode::SERVICE_UNAVAILABLE,
        message,
        "UNAVAILABLE",
        ("api_error", "gateway_busy"),
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".to_owned());
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
