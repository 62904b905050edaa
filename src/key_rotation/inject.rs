//! Removing the caller's key and injecting the chosen one.

use http::header::{AUTHORIZATION, HeaderName};
use http::uri::PathAndQuery;
use http::{Request, Uri};

use crate::context::Attempt;
use crate::model::is_openai_path;
use crate::pool::{ApiKey, KeyLease};

/// The header Gemini reads the key from.
pub(crate) const X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

/// Where the chosen key is put in the request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyPlacement {
    /// `Authorization: Bearer <key>` on the OpenAI-compatible path (`/v1beta/openai/...`),
    /// `x-goog-api-key: <key>` everywhere else. The default.
    #[default]
    Auto,
    /// A header, usually `x-goog-api-key`.
    Header(HeaderName),
    /// The `key=` query parameter. The key is then part of the URL, which HTTP clients may
    /// print in their errors; this crate scrubs the errors it returns, but prefer a header.
    Query,
    /// `Authorization: Bearer <key>`.
    Bearer,
}

impl KeyPlacement {
    /// The `x-goog-api-key` header.
    pub fn header() -> Self {
        KeyPlacement::Header(X_GOOG_API_KEY)
    }
}

/// Remove every key the caller sent, then put `key` where `placement` says.
pub(crate) fn replace_key<B>(request: &mut Request<B>, key: &ApiKey, placement: &KeyPlacement) {
    let headers = request.headers_mut();
    headers.remove(X_GOOG_API_KEY);
    headers.remove(AUTHORIZATION);
    if let KeyPlacement::Header(name) = placement {
        headers.remove(name);
    }
    let wants_query = *placement == KeyPlacement::Query;
    if wants_query || query_has_key(request.uri()) {
        let uri = rewrite_query(request.uri(), wants_query.then(|| key.expose()));
        if let Some(uri) = uri {
            *request.uri_mut() = uri;
        }
    }
    let placement = match placement {
        KeyPlacement::Auto if is_openai_path(request.uri().path()) => &KeyPlacement::Bearer,
        KeyPlacement::Auto => &KeyPlacement::Header(X_GOOG_API_KEY),
        other => other,
    };
    match placement {
        KeyPlacement::Header(name) => {
            request
                .headers_mut()
                .insert(name.clone(), key.header_value());
        }
        KeyPlacement::Bearer => {
            request
                .headers_mut()
                .insert(AUTHORIZATION, key.bearer_value());
        }
        KeyPlacement::Query | KeyPlacement::Auto => {}
    }
}

fn query_has_key(uri: &Uri) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&')
            .any(|pair| pair == "key" || pair.starts_with("key="))
    })
}

/// The URI without `key` query parameters, plus `key=<secret>` if given.
fn rewrite_query(uri: &Uri, secret: Option<&str>) -> Option<Uri> {
    let mut query = String::new();
    for pair in uri.query().unwrap_or_default().split('&') {
        if pair.is_empty() || pair == "key" || pair.starts_with("key=") {
            continue;
        }
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str(pair);
    }
    if let Some(secret) = secret {
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str("key=");
        for byte in secret.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                query.push(byte as char);
            } else {
                query.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    let mut path_and_query = uri.path().to_owned();
    if !query.is_empty() {
        path_and_query.push('?');
        path_and_query.push_str(&query);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(path_and_query).ok()?);
    Uri::from_parts(parts).ok()
}

/// The request body's length, when it is in memory: a token quota smaller than a quarter of
/// it was exceeded by the request itself (see `Reading::finish`).
pub(super) fn request_size<B: 'static>(request: &Request<B>) -> Option<usize> {
    crate::peek::body_len(request.body())
}

/// Put the leased key (and its ledger reservation) into the request; what was chosen goes
/// into the request's extensions and the attempt's span.
pub(super) fn prepare<B>(
    mut request: Request<B>,
    mut lease: KeyLease,
    placement: &KeyPlacement,
) -> (Request<B>, KeyLease, crate::pool::SelectedKey) {
    let selected = lease.selected();
    // Fill in the attempt span (see `RetryLayer`), if any; a no-op elsewhere.
    let span = tracing::Span::current();
    if !span.is_disabled() {
        span.record(
            "gemini.key",
            tracing::field::display(selected.fingerprint()),
        );
        span.record("gemini.project", selected.project());
        if let Some(model) = selected.model() {
            span.record("gemini.model", model);
        }
    }
    if tracing::enabled!(tracing::Level::DEBUG) {
        let attempt = request
            .extensions()
            .get::<Attempt>()
            .map(|a| format!(" (attempt {}/{})", a.number, a.max))
            .unwrap_or_default();
        tracing::debug!(
            gemini.key = %selected.fingerprint(),
            gemini.project = selected.project(),
            gemini.model = selected.model().unwrap_or("unknown"),
            "using key {}{attempt}",
            selected.fingerprint()
        );
    }
    replace_key(&mut request, lease.key(), placement);
    if let Some(reservation) = lease.take_reservation() {
        request.extensions_mut().insert(reservation);
    }
    request.extensions_mut().insert(selected.clone());
    (request, lease, selected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str) -> Request<()> {
        Request::post(uri)
            .header("x-goog-api-key", "caller-key-aaaa")
            .header("authorization", "Bearer caller-key-bbbb")
            .body(())
            .unwrap()
    }

    #[test]
    fn header_placement_strips_every_caller_key() {
        let key = ApiKey::new("test-key-0001").unwrap();
        let mut req =
            request("http://h/v1beta/models/m:generateContent?key=caller-key-cccc&alt=sse");
        replace_key(&mut req, &key, &KeyPlacement::Auto);
        assert_eq!(req.headers()["x-goog-api-key"], "test-key-0001");
        assert!(req.headers()["x-goog-api-key"].is_sensitive());
        assert!(req.headers().get("authorization").is_none());
        assert_eq!(req.uri().query(), Some("alt=sse"));
    }

    #[test]
    fn bearer_on_the_openai_path() {
        let key = ApiKey::new("test-key-0001").unwrap();
        let mut req = request("http://h/v1beta/openai/chat/completions");
        replace_key(&mut req, &key, &KeyPlacement::Auto);
        assert_eq!(req.headers()["authorization"], "Bearer test-key-0001");
        assert!(req.headers()["authorization"].is_sensitive());
        assert!(req.headers().get("x-goog-api-key").is_none());
    }

    #[test]
    fn query_placement_replaces_the_callers_key() {
        let key = ApiKey::new("test-key+0001").unwrap();
        let mut req =
            request("http://h/v1beta/models/m:generateContent?alt=sse&key=caller-key-cccc");
        replace_key(&mut req, &key, &KeyPlacement::Query);
        assert_eq!(req.uri().query(), Some("alt=sse&key=test-key%2B0001"));
        assert!(req.headers().get("x-goog-api-key").is_none());
        assert!(req.headers().get("authorization").is_none());
    }

    #[test]
    fn custom_header() {
        let key = ApiKey::new("test-key-0001").unwrap();
        let name = HeaderName::from_static("x-api-key");
        let mut req = request("http://h/v1beta/models/m:generateContent");
        req.headers_mut().insert(&name, "caller".parse().unwrap());
        replace_key(&mut req, &key, &KeyPlacement::Header(name));
        assert_eq!(req.headers()["x-api-key"], "test-key-0001");
        assert!(req.headers().get("x-goog-api-key").is_none());
    }
}
