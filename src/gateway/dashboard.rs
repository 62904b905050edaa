//! `GET /`: one HTML page, embedded in the binary, that reads the status API live. The admin
//! token is typed into the page and kept in its memory only.

use axum::response::Html;

const PAGE: &str = include_str!("dashboard.html");

/// The dashboard page.
pub(crate) async fn page() -> Html<&'static str> {
    Html(PAGE)
}
