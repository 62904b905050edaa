//! A hyper client for Google's endpoint (feature `rustls`).

use http_body::Body;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The client [`https`] builds.
pub type HttpsClient<B> = Client<HttpsConnector<HttpConnector>, B>;

/// A hyper legacy client over HTTP/1.1 with rustls (ring) and the webpki root certificates,
/// for `https://generativelanguage.googleapis.com`. Plain `http://` URLs (the mock) work too.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::Layer;
/// use tower_gemini::{KeyPool, client, stack};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let pool = KeyPool::from_keys(["test-key-0001"]).unwrap();
/// let gemini = stack(&pool).layer(client::https::<Full<Bytes>>());
/// # let _ = gemini;
/// # });
/// ```
pub fn https<B>() -> HttpsClient<B>
where
    B: Body + Send,
    B::Data: Send,
{
    // No Nagle: a request's head and body go out at once (small writes are the norm here).
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}
