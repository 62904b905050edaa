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
///     .service(ReqwestService::new(reqwest::Client::new()));
/// # let _ = gemini;
/// # Ok::<(), tower_gemini::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct ReqwestService {
    client: reqwest::Client,
}

impl ReqwestService {
    /// Adapt `client`.
    pub fn new(client: reqwest::Client) -> Self {
        ReqwestService { client }
    }

    /// The client.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }
}

impl From<reqwest::Client> for ReqwestService {
    fn from(client: reqwest::Client) -> Self {
        ReqwestService::new(client)
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
