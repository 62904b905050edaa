//! `GET /`: one HTML page, embedded in the binary, that reads the status API live. The admin
//! token is typed into the page and kept in its memory only.

use axum::response::{Html, IntoResponse, Response};

const PAGE: &str = include_str!("dashboard.html");

/// The dashboard page, never inside another site's frame: its buttons change keys, and a page
/// that framed it could trick an operator into clicking them.
pub(crate) async fn page() -> Response {
    (
        [
            (http::header::X_FRAME_OPTIONS, "DENY"),
            (
                http::header::CONTENT_SECURITY_POLICY,
                "frame-ancestors 'none'",
            ),
        ],
        Html(PAGE),
    )
        .into_response()
}
