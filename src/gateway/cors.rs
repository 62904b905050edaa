//! CORS: allowed origins are echoed, others get no allow-origin header; the origins are the
//! configuration's of the moment (a reload changes them).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{HeaderValue, Method, Request, Response};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_layer::Layer;
use tower_service::Service;

use super::Shared;

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

/// CORS with the origins configured at the moment (a reload changes them): a request is
/// served through tower-http's `Cors` while any origin is allowed, and untouched — no CORS
/// header, a preflight answered by the routes as any `OPTIONS` — while none is.
///
/// The layer's settings are built once and shared: axum clones a route's service for every
/// request, and a `Cors` clones its whole `CorsLayer` (a `Vec` of `Vary` names among them)
/// with it, which a request without CORS should not pay for.
#[derive(Clone)]
pub(crate) struct LiveCorsLayer {
    pub(crate) shared: Arc<Shared>,
}

impl<S> Layer<S> for LiveCorsLayer {
    type Service = LiveCors<S>;

    fn layer(&self, inner: S) -> LiveCors<S> {
        let shared = self.shared.clone();
        let cors = CorsLayer::new()
            .allow_origin(AllowOrigin::predicate(
                move |origin: &HeaderValue, _parts: &http::request::Parts| {
                    origin
                        .to_str()
                        .is_ok_and(|o| allowed(&shared.clients().origins, o))
                },
            ))
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers(AllowHeaders::mirror_request())
            .max_age(std::time::Duration::from_secs(600));
        LiveCors {
            inner,
            cors: Arc::new(cors),
            shared: self.shared.clone(),
        }
    }
}

/// See [`LiveCorsLayer`].
#[derive(Clone)]
pub(crate) struct LiveCors<S> {
    inner: S,
    cors: Arc<CorsLayer>,
    shared: Arc<Shared>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for LiveCors<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<tower_http::cors::ResponseFuture<S::Future>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if self.shared.clients().origins.is_empty() {
            return Either::Right(self.inner.call(request));
        }
        // The service polled ready is the one that serves (tower's contract); a clone of it
        // stays here for the next request.
        let fresh = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, fresh);
        Either::Left(self.cors.layer(ready).call(request))
    }
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
