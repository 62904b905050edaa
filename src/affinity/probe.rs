//! Finding the project of a resource the pool never learned (a stored interaction, a context
//! cache): one cheap `GET` of it per
//! project, through the layers below (pinned to that project), stopping at the first success.
//!
//! A probe's "not found" (404) or "no permission" (403) is a caller answer: it blames no key,
//! cools no project and is not retried, so it spends no retry budget.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, Uri};
use tower::ServiceExt;
use tower_service::Service;

use super::Settings;
use crate::context::Owner;
use crate::error::BoxError;
use crate::pool::SelectedKey;
use crate::state::PinRecord;

/// The project that has `name` (`interactions/{id}`), learned once found; `None` when no
/// project has it, or a probe cannot be made for this request's body type.
pub(super) async fn find<S, ReqB, ResB>(
    inner: S,
    settings: &Settings,
    request: &Request<ReqB>,
    name: &str,
) -> Option<Arc<str>>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: Send + Sync + 'static,
{
    let uri = probe_uri(request.uri(), name)?;
    for project in settings.pool.project_names() {
        let body = crate::peek::body_from::<ReqB>(Bytes::new())?;
        let mut probe = Request::new(body);
        *probe.method_mut() = Method::GET;
        *probe.uri_mut() = uri.clone();
        probe
            .extensions_mut()
            .insert(Owner::for_resource(&*project, name));
        let Ok(answer) = inner.clone().oneshot(probe).await else {
            // No key of this project could ask (disabled, cooling): the next one may.
            continue;
        };
        if !answer.status().is_success() {
            continue;
        }
        let served_by = answer
            .extensions()
            .get::<SelectedKey>()
            .map(|key| Arc::<str>::from(key.project()))
            .unwrap_or(project);
        tracing::debug!(resource = name, project = %served_by, "found by probing");
        let now = settings.pool.clock().now_millis();
        let record = PinRecord {
            project: served_by.clone(),
            expires_at: now
                .saturating_add(u64::try_from(settings.retention.as_millis()).unwrap_or(u64::MAX)),
            tenant: None,
            tokens: 0,
        };
        if let Some(write) = settings.pool.learn_pin(name, record) {
            write.await;
        }
        return Some(served_by);
    }
    None
}

/// Can `name` be looked for with a `GET` of it (an interaction, a cache, a file; not an
/// upload session)?
pub(super) fn can_probe(name: &str) -> bool {
    [
        "interactions/",
        "cachedContents/",
        "files/",
        "batches/",
        "fileSearchStores/",
    ]
    .iter()
    .any(|collection| name.starts_with(collection))
}

/// `GET {scheme}://{authority}{version prefix}/{name}` for a request under `…/{version}/`
/// (an upload's or download's path asks under the plain version).
fn probe_uri(uri: &Uri, name: &str) -> Option<Uri> {
    let prefix = super::reference::version_prefix(uri.path())?;
    let prefix = prefix
        .strip_prefix("/upload")
        .or_else(|| prefix.strip_prefix("/download"))
        .unwrap_or(prefix);
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(format!("{prefix}/{name}").parse().ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_asks_for_the_resource_under_the_same_version() {
        let uri: Uri = "http://127.0.0.1:9/v1/interactions?alt=sse"
            .parse()
            .unwrap();
        assert_eq!(
            probe_uri(&uri, "interactions/v1_a").unwrap().to_string(),
            "http://127.0.0.1:9/v1/interactions/v1_a"
        );
    }
}
