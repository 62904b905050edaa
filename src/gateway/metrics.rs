//! `GET /metrics`: the crate's metrics (`gemini_requests_total`, quota, circuits, …) in
//! Prometheus' text format, behind the admin token. Labels hold fingerprints, never keys.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use http::header::CONTENT_TYPE;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::Shared;
use super::admin::refusal;

/// The process's Prometheus recorder, installed once (the first gateway to start installs
/// it; if the application set another global recorder first, `/metrics` renders nothing).
pub(crate) fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => Some(handle),
            Err(error) => {
                tracing::warn!(
                    "metrics: another recorder is installed ({error}); /metrics stays empty"
                );
                None
            }
        })
        .as_ref()
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(refused) = refusal(&shared, &headers) {
        return refused;
    }
    let text = handle().map(PrometheusHandle::render).unwrap_or_default();
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
