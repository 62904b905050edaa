//! [`ReqwestService`]: a `reqwest::Client` as a `Service<http::Request<B>>`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Body;
use tower_service::Service;

/// A `reqwest::Client` as a tower service from `http::Request<B>` to `http::Response<reqwest::Body>`.
///
/// **Redirects never carry a key to another host.** reqwest follows redirects by default and,
/// going to another host, strips only `Authorization` and cookies — not `x-goog-api-key`. So
/// this adapter builds its client itself with [`same_origin_redirects`]: a redirect to the
/// same scheme, host and port is followed (up to 10), any other is returned to the caller as
/// it came, unfollowed (the `Location` header tells where it pointed). Google's API does not
/// redirect; a redirect elsewhere is a misconfigured base URL or a hostile network, and the
/// key must not go there. There is no constructor from a ready-made `reqwest::Client`, whose
/// redirect policy cannot be checked: pass its `ClientBuilder` to [`from_builder`](Self::from_builder).
///
/// reqwest's errors print the request URL. With the key in a header (the default placement)
/// the URL holds none; this adapter also drops the URL's query from every error, and
/// [`KeyRotation`](crate::KeyRotation) scrubs any error that still quotes the key.
///
/// ```no_run
/// use tower::ServiceBuilder;
/// use tower_gemini::{KeyPool, client::ReqwestService, stack};
///
/// let pool = KeyPool::from_env()?;
/// let gemini = ServiceBuilder::new()
///     .layer(stack(&pool))
///     .service(ReqwestService::new()?);
/// # let _ = gemini;
/// # Ok::<(), tower_gemini::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ReqwestService {
    client: reqwest::Client,
}

/// reqwest's redirect policy for requests that carry a key: follow a redirect only to the same
/// scheme, host and port as the request (at most 10), and return any other unfollowed.
pub fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let Some(first) = attempt.previous().first() else {
            return attempt.stop();
        };
        let same_origin = attempt.url().scheme() == first.scheme()
            && attempt.url().host_str() == first.host_str()
            && attempt.url().port_or_known_default() == first.port_or_known_default();
        if !same_origin {
            tracing::warn!(
                "not following a redirect to another host: the request carries an API key; returning the redirect"
            );
            attempt.stop()
        } else if attempt.previous().len() > 10 {
            attempt.error("too many redirects")
        } else {
            attempt.follow()
        }
    })
}

impl ReqwestService {
    /// A client with reqwest's defaults and [`same_origin_redirects`].
    ///
    /// Errors with [`ErrorKind::Config`](crate::ErrorKind::Config) if reqwest cannot build a
    /// client (its TLS backend failed to initialise).
    pub fn new() -> Result<Self, crate::Error> {
        Self::from_builder(reqwest::Client::builder())
    }

    /// A client from `builder` (timeouts, proxies, TLS as you set them), with its redirect
    /// policy replaced by [`same_origin_redirects`].
    pub fn from_builder(builder: reqwest::ClientBuilder) -> Result<Self, crate::Error> {
        let client = builder
            .redirect(same_origin_redirects())
            .build()
            .map_err(|e| {
                crate::Error::config("could not build the reqwest client").with_source(e)
            })?;
        Ok(ReqwestService { client })
    }

    /// The client.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

/// A reqwest error with the URL's query (where a `?key=` would be) removed.
#[derive(Debug)]
pub struct ReqwestError(reqwest::Error);

impl ReqwestError {
    fn new(mut error: reqwest::Error) -> Self {
        if let Some(url) = error.url_mut() {
            url.set_query(None);
        }
        ReqwestError(error)
    }

    /// The reqwest error.
    pub fn into_inner(self) -> reqwest::Error {
        self.0
    }

    /// Did connecting fail?
    pub fn is_connect(&self) -> bool {
        self.0.is_connect()
    }

    /// Did it time out?
    pub fn is_timeout(&self) -> bool {
        self.0.is_timeout()
    }
}

impl fmt::Display for ReqwestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for ReqwestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0)
    }
}

type ReqwestFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<reqwest::Body>, ReqwestError>> + Send>>;

impl<B> Service<http::Request<B>> for ReqwestService
where
    B: Body + Send + Sync + 'static,
    B::Data: Into<Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<reqwest::Body>;
    type Error = ReqwestError;
    type Future = ReqwestFuture;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let request = reqwest::Request::try_from(request.map(reqwest::Body::wrap));
        let client = self.client.clone();
        Box::pin(async move {
            let request = request.map_err(ReqwestError::new)?;
            let response = client.execute(request).await.map_err(ReqwestError::new)?;
            Ok(http::Response::from(response))
        })
    }
}
