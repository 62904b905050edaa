//! CORS: allowed origins are echoed, others get no allow-origin header.

use http::{HeaderValue, Method};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

/// Does `origin` match one of `allowed`: exactly, or as a subdomain of a
/// `scheme://*.domain` wildcard (not the bare domain, not a lookalike such as `evilexample.com`)?
pub(crate) fn allowed(allowed: &[String], origin: &str) -> bool {
    allowed.iter().any(|pattern| {
        if pattern == "*" {
            return true;
        }
        match pattern.split_once("://*.") {
            Some((scheme, domain)) => origin
                .strip_prefix(scheme)
                .and_then(|rest| rest.strip_prefix("://"))
                .and_then(|host| host.strip_suffix(domain))
                .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
            None => pattern == origin,
        }
    })
}

/// The CORS layer for `origins`, or `None` when no origin is allowed (no CORS headers at all).
pub(crate) fn layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let origins = origins.to_vec();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::predicate(
                move |origin: &HeaderValue, _parts: &http::request::Parts| {
                    origin.to_str().is_ok_and(|o| allowed(&origins, o))
                },
            ))
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers(AllowHeaders::mirror_request())
            .max_age(std::time::Duration::from_secs(600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard_origins() {
        let list = vec![
            "https://app.example.org".to_owned(),
            "https://*.example.com".to_owned(),
        ];
        assert!(allowed(&list, "https://app.example.org"));
        assert!(!allowed(&list, "https://app.example.org.evil.net"));
        assert!(allowed(&list, "https://a.example.com"));
        assert!(allowed(&list, "https://a.b.example.com"));
        assert!(!allowed(&list, "https://example.com"));
        assert!(!allowed(&list, "https://evilexample.com"));
        assert!(!allowed(&list, "http://a.example.com"));
    }
}
