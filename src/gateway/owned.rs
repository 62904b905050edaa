//! What each client owns through the gateway (its caches, files): listed from the pool's
//! record of what the client created — each read from its project through the stack, never the
//! projects' own lists, which hold every client's — and bounded in number per client.

use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

use super::Shared;
use super::reply::{self, Family};

/// How many resources one list answer holds at most (`pageSize` may ask for fewer): each is
/// read from its project, all at once.
pub(super) const MAX_PAGE: usize = 20;

/// A kind of resource a client owns.
pub(super) struct Owned {
    /// The names' collection, with its slash (`cachedContents/`).
    pub(super) prefix: &'static str,
    /// The list answer's field (`cachedContents`).
    pub(super) field: &'static str,
    /// What one is called in messages (`context cache`).
    pub(super) noun: &'static str,
    /// The most one client may hold at once.
    pub(super) most: usize,
    /// Other names that count against `most` (upload sessions, for files).
    pub(super) also: Option<&'static str>,
}

/// The path after a collection's (`cachedContents`) under `/v1beta` or `/v1`, without its
/// leading slash: `""` for the collection itself, `{id}…` for one of it.
pub(super) fn rest_of<'a>(path: &'a str, collection: &str) -> &'a str {
    let rest = ["/v1beta/", "/v1/"]
        .iter()
        .find_map(|version| path.strip_prefix(version)?.strip_prefix(collection))
        .filter(|rest| rest.is_empty() || rest.starts_with('/'));
    // (Another collection whose name starts the same: no id of this one.)
    let rest = rest.unwrap_or("/..");
    rest.strip_prefix('/').unwrap_or(rest)
}

/// The 404 for a method and path the gateway does not serve under a collection, saying what it
/// serves (`serves`, written for `/v1beta`; the same under `/v1`).
pub(super) fn not_served(method: &http::Method, path: &str, serves: &str) -> Response {
    reply::client_error(
        Family::Native,
        StatusCode::NOT_FOUND,
        &format!(
            "the gateway does not serve {method} {}: it serves {serves} (and the same under /v1)",
            crate::model::shorten(path)
        ),
    )
}

/// The client's tenant id (its cache scope), if the gateway runs with client tokens.
pub(super) fn tenant_of(request: &Request) -> Option<String> {
    let scope = request.extensions().get::<super::ClientScope>()?;
    scope.0.to_str().ok().map(str::to_owned)
}

/// A 429 if the client holds `kind.most` of them already.
pub(super) fn at_limit(shared: &Shared, request: &Request, kind: &Owned) -> Option<Response> {
    let tenant = tenant_of(request)?;
    let pool = shared.live().pool.clone();
    let held = pool.names_of(&tenant, kind.prefix).len()
        + kind
            .also
            .map_or(0, |also| pool.names_of(&tenant, also).len());
    (held >= kind.most).then(|| {
        reply::client_error(
            Family::Native,
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "this client holds {held} {noun}s (or uploads under way), the most it may: delete one, or let one expire, before making another",
                noun = kind.noun
            ),
        )
    })
}

/// The client's own resources of `kind`: each read from its project through the stack;
/// `pageSize` (at most [`MAX_PAGE`]) and `pageToken` (an offset this gateway gave) page them.
pub(super) async fn list(shared: &Shared, request: Request, path: &str, kind: &Owned) -> Response {
    let Some(tenant) = tenant_of(&request) else {
        return reply::client_error(
            Family::Native,
            StatusCode::NOT_FOUND,
            &format!(
                "the {} list is each client's own: this gateway runs without client tokens",
                kind.noun
            ),
        );
    };
    // A list counts against the client's limits as one request.
    let (parts, _) = request.into_parts();
    if let Some(limits) = &shared.clients().limits {
        let head = crate::context::RequestHead {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            extensions: &parts.extensions,
        };
        if let Some(refused) = limits.admit::<axum::body::Body>(&head, b"") {
            return refused;
        }
    }
    page(shared, &tenant, parts.uri.query(), path, kind).await
}

/// One page of the client's resources, each read from its project, all at once.
async fn page(
    shared: &Shared,
    tenant: &str,
    query: Option<&str>,
    path: &str,
    kind: &Owned,
) -> Response {
    let (size, from) = paging(query);
    let live = shared.live();
    let names = live.pool.names_of(tenant, kind.prefix);
    let from = from.min(names.len());
    let version = if path.starts_with("/v1beta") {
        "/v1beta"
    } else {
        "/v1"
    };
    let reads = names.iter().skip(from).take(size).map(|name| {
        let uri = format!("{}{version}/{name}", shared.upstream);
        let gemini = live.gemini.clone();
        async move {
            let mut get = http::Request::get(uri).body(Full::new(Bytes::new())).ok()?;
            get.extensions_mut()
                .insert(crate::context::Tenant::new(tenant));
            let answer = gemini.oneshot(get).await.ok()?;
            if !answer.status().is_success() {
                return None;
            }
            let body = answer.into_body().collect().await.ok()?.to_bytes();
            serde_json::from_slice::<serde_json::Value>(&body).ok()
        }
    });
    let found: Vec<serde_json::Value> = futures_util::future::join_all(reads)
        .await
        .into_iter()
        .flatten()
        .collect();
    let mut answer = serde_json::json!({ kind.field: found });
    let next = from.saturating_add(size);
    if next < names.len() {
        answer["nextPageToken"] = next.to_string().into();
    }
    reply::json(StatusCode::OK, &answer)
}

/// `pageSize` (default and at most [`MAX_PAGE`]) and `pageToken` (an offset).
fn paging(query: Option<&str>) -> (usize, usize) {
    let mut size = MAX_PAGE;
    let mut from = 0;
    for pair in query.unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("pageSize", n)) => {
                size = n.parse().map_or(MAX_PAGE, |n: usize| n.clamp(1, MAX_PAGE))
            }
            Some(("pageToken", n)) => from = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    (size, from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rest_of_a_collections_path_is_read() {
        assert_eq!(rest_of("/v1beta/batches", "batches"), "");
        assert_eq!(rest_of("/v1/batches/b1:cancel", "batches"), "b1:cancel");
        assert_eq!(rest_of("/v1beta/batchesX", "batches"), "..");
    }

    #[test]
    fn pages_are_bounded() {
        assert_eq!(paging(None), (MAX_PAGE, 0));
        assert_eq!(paging(Some("pageSize=5&pageToken=10")), (5, 10));
        assert_eq!(paging(Some("pageSize=100000")), (MAX_PAGE, 0));
        assert_eq!(paging(Some("pageToken=18446744073709551615")).1, usize::MAX);
    }
}
