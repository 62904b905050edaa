//! [`InboundQuotaLayer`]: per-client limits for an app's own callers, answering `429 Too Many
//! Requests` with `Retry-After` instead of an error, so an axum app never sees an unhandled one.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::estimate::{BytesPerToken, TokenEstimator};
use super::meter::{Demand, Meters, Refusal};
use crate::circuit_breaker::RequestHead;
use crate::clock::{Clock, SystemClock};
use crate::pool::ModelLimits;

type Extract = Arc<dyn Fn(&RequestHead<'_>) -> Option<String> + Send + Sync>;

/// Who a request is from, for per-client limits.
#[derive(Clone)]
pub struct ClientKey(Extract);

impl ClientKey {
    /// The value of a header (a client token, say). Requests without it share one bucket.
    pub fn header(name: HeaderName) -> Self {
        ClientKey(Arc::new(move |req| {
            req.headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        }))
    }

    /// The bearer token of `Authorization: Bearer <token>`.
    pub fn bearer() -> Self {
        ClientKey(Arc::new(|req| {
            req.headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|v| v.trim().to_owned())
        }))
    }

    /// The peer IP from a `SocketAddr` request extension, or axum's `ConnectInfo<SocketAddr>`
    /// (feature `axum`; serve with `into_make_service_with_connect_info`).
    pub fn client_ip() -> Self {
        ClientKey(Arc::new(|req| {
            if let Some(addr) = req.extensions.get::<std::net::SocketAddr>() {
                return Some(addr.ip().to_string());
            }
            #[cfg(feature = "axum")]
            if let Some(info) = req
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            {
                return Some(info.0.ip().to_string());
            }
            None
        }))
    }

    /// Any function of the request head.
    pub fn custom<F>(extract: F) -> Self
    where
        F: Fn(&RequestHead<'_>) -> Option<String> + Send + Sync + 'static,
    {
        ClientKey(Arc::new(extract))
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKey")
    }
}

/// Most clients tracked; further ones share one bucket so memory stays bounded.
const MAX_CLIENTS: usize = 100_000;

struct Ledger {
    limits: ModelLimits,
    clock: Arc<dyn Clock>,
    clients: RwLock<HashMap<String, Arc<Meters>>>,
    overflow: Arc<Meters>,
}

impl Ledger {
    fn meters(&self, client: &str) -> Arc<Meters> {
        if let Some(m) = self
            .clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(client)
        {
            return m.clone();
        }
        let mut clients = self.clients.write().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(client) {
            return self.overflow.clone();
        }
        clients
            .entry(client.to_owned())
            .or_insert_with(|| Arc::new(Meters::new(self.limits)))
            .clone()
    }
}

/// Per-client limits on an inbound service (an axum router, say): a client over its limit gets
/// `429 Too Many Requests` with `Retry-After` and a JSON body in Google's error shape; other
/// clients are unaffected.
///
/// ```
/// use http::HeaderName;
/// use tower_gemini::pool::ModelLimits;
/// use tower_gemini::quota::{ClientKey, InboundQuotaLayer};
///
/// // Ten requests per minute per client token.
/// let layer = InboundQuotaLayer::new(ModelLimits { rpm: Some(10), ..Default::default() })
///     .client_key(ClientKey::header(HeaderName::from_static("x-client-token")));
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct InboundQuotaLayer {
    ledger: Arc<Ledger>,
    key: ClientKey,
}

impl InboundQuotaLayer {
    /// These limits for each client (keyed by [`ClientKey::client_ip`] unless told otherwise).
    /// Token limits use the estimate of an in-memory request body.
    pub fn new(limits: ModelLimits) -> Self {
        Self::with_clock(limits, SystemClock::new())
    }

    /// With an injected clock.
    pub fn with_clock(limits: ModelLimits, clock: impl Clock) -> Self {
        InboundQuotaLayer {
            ledger: Arc::new(Ledger {
                limits,
                clock: Arc::new(clock),
                clients: RwLock::new(HashMap::new()),
                overflow: Arc::new(Meters::new(limits)),
            }),
            key: ClientKey::client_ip(),
        }
    }

    /// How clients are told apart.
    pub fn client_key(mut self, key: ClientKey) -> Self {
        self.key = key;
        self
    }
}

impl fmt::Debug for InboundQuotaLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundQuotaLayer")
            .field("limits", &self.ledger.limits)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for InboundQuotaLayer {
    type Service = InboundQuota<S>;

    fn layer(&self, inner: S) -> InboundQuota<S> {
        InboundQuota {
            inner,
            ledger: self.ledger.clone(),
            key: self.key.clone(),
        }
    }
}

/// See [`InboundQuotaLayer`].
#[derive(Clone)]
pub struct InboundQuota<S> {
    inner: S,
    ledger: Arc<Ledger>,
    key: ClientKey,
}

impl<S: fmt::Debug> fmt::Debug for InboundQuota<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundQuota")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The 429 answer: Google's error shape, `Retry-After` in whole seconds (rounded up).
fn too_many<ResB: From<Bytes>>(refusal: &Refusal, client: &str) -> Response<ResB> {
    let wait = refusal
        .retry_after
        .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
    let message = match wait {
        Some(secs) => format!(
            "Too many requests from client {client}: {} limit of {} reached. Retry in {secs}s.",
            refusal.dimension, refusal.limit
        ),
        None => format!(
            "Request too large for client {client}: {} limit is {}.",
            refusal.dimension, refusal.limit
        ),
    };
    let body = serde_json::json!({
        "error": { "code": 429, "message": message, "status": "RESOURCE_EXHAUSTED" }
    });
    let mut response = Response::new(ResB::from(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(secs) = wait {
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// How a client is shown: tokens by their last 4 characters, addresses as they are.
fn label(client: &str) -> Cow<'_, str> {
    if client.len() >= 8 && client.parse::<std::net::IpAddr>().is_err() {
        Cow::Owned(crate::pool::masked(client))
    } else {
        Cow::Borrowed(client)
    }
}

impl<S, B, ResB> Service<Request<B>> for InboundQuota<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    B: 'static,
    ResB: From<Bytes>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = InboundFuture<S::Future, ResB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let head = RequestHead {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        };
        let client = (self.key.0)(&head).unwrap_or_else(|| "anonymous".to_owned());
        let meters = self.ledger.meters(&client);
        let demand = if meters.limits().tpm.is_some() || meters.limits().ipm.is_some() {
            crate::peek::body_bytes(request.body())
                .map(|b| BytesPerToken::default().estimate(&b))
                .unwrap_or_default()
        } else {
            Demand::default()
        };
        match meters.admit(demand, self.ledger.clock.now_millis()) {
            Ok(_) => InboundFuture {
                kind: Kind::Inner {
                    future: self.inner.call(request),
                },
            },
            Err(refusal) => {
                let shown = label(&client);
                tracing::info!(client = %shown, "inbound quota: {} limit {} reached", refusal.dimension, refusal.limit);
                InboundFuture {
                    kind: Kind::Refused {
                        response: Some(too_many(&refusal, &shown)),
                    },
                }
            }
        }
    }
}

pin_project! {
    /// Response future of [`InboundQuota`]: the inner call, or the 429.
    pub struct InboundFuture<F, ResB> {
        #[pin]
        kind: Kind<F, ResB>,
    }
}

pin_project! {
    #[project = InboundProj]
    enum Kind<F, ResB> {
        Inner { #[pin] future: F },
        Refused { response: Option<Response<ResB>> },
    }
}

impl<F, ResB, E> Future for InboundFuture<F, ResB>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: From<Bytes>,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            InboundProj::Inner { future } => future.poll(cx),
            InboundProj::Refused { response } => {
                Poll::Ready(Ok(response.take().unwrap_or_else(|| {
                    // Polled again after completion: answer the same status, empty.
                    let mut r = Response::new(ResB::from(Bytes::new()));
                    *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                    r
                })))
            }
        }
    }
}
