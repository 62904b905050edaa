//! [`InboundQuotaLayer`]: per-client limits for an app's own callers, answering `429 Too Many
//! Requests` with `Retry-After` instead of an error, so an axum app never sees an unhandled one.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::clock::{Clock, SystemClock};
use crate::context::RequestHead;
use crate::state::ModelLimits;
use crate::state::{BytesPerToken, TokenEstimator};
use crate::state::{Demand, Meters, Refusal};

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

/// Most clients tracked at once. Idle clients are forgotten (see [`Ledger::sweep`]); only if
/// this many are active at once do newcomers share one bucket until some go idle.
const MAX_CLIENTS: usize = 100_000;
/// A sweep for idle clients runs at least every this many new clients.
const SWEEP_EVERY: u64 = 4096;
/// A client with no request for this long holds nothing in a per-minute window.
const IDLE_MS: u64 = 60_000;

/// One client's meters and when it was last seen (Unix ms).
struct Client {
    meters: Meters,
    last_seen: AtomicU64,
}

/// The clients, keyed by a keyed hash of what identifies them: the ledger never holds a
/// client's token itself.
struct Ledger {
    /// The limits new clients get; changed live by [`InboundQuotaLayer::set_limits`].
    limits: RwLock<ModelLimits>,
    clock: Arc<dyn Clock>,
    hasher: RandomState,
    clients: RwLock<HashMap<u64, Arc<Client>>>,
    overflow: Arc<Client>,
    new_clients: AtomicU64,
}

impl Ledger {
    fn limits(&self) -> ModelLimits {
        *self.limits.read().unwrap_or_else(|e| e.into_inner())
    }

    fn client(&self, client: &str, now: u64) -> Arc<Client> {
        let id = self.hasher.hash_one(client);
        if let Some(c) = self
            .clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            c.last_seen.store(now, Ordering::Relaxed);
            return c.clone();
        }
        let mut clients = self.clients.write().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&id) {
            return c.clone();
        }
        let count = self.new_clients.fetch_add(1, Ordering::Relaxed) + 1;
        if clients.len() >= MAX_CLIENTS || count.is_multiple_of(SWEEP_EVERY) {
            self.sweep(&mut clients, now);
        }
        if clients.len() >= MAX_CLIENTS {
            return self.overflow.clone();
        }
        clients
            .entry(id)
            .or_insert_with(|| {
                Arc::new(Client {
                    meters: Meters::exact(self.limits()),
                    last_seen: AtomicU64::new(now),
                })
            })
            .clone()
    }

    /// Forget clients whose meters hold nothing any more: no request in the last minute and,
    /// with a daily limit, none today (Pacific), so forgetting them lets nothing extra through.
    fn sweep(&self, clients: &mut HashMap<u64, Arc<Client>>, now: u64) {
        let day_start = crate::clock::pacific_day_start(now);
        let daily = self.limits().rpd.is_some();
        clients.retain(|_, c| {
            let seen = c.last_seen.load(Ordering::Relaxed);
            let idle = seen.saturating_add(IDLE_MS) <= now && (!daily || seen < day_start);
            !idle || Arc::strong_count(c) > 1
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.clients.read().unwrap_or_else(|e| e.into_inner()).len()
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
                limits: RwLock::new(limits),
                clock: Arc::new(clock),
                hasher: RandomState::new(),
                clients: RwLock::new(HashMap::new()),
                overflow: Arc::new(Client {
                    meters: Meters::exact(limits),
                    last_seen: AtomicU64::new(0),
                }),
                new_clients: AtomicU64::new(0),
            }),
            key: ClientKey::client_ip(),
        }
    }

    /// Apply `limits` from now on, to every client this layer (and its clones and services)
    /// meters: what each client spent in its current minute and day still counts, so raising
    /// a limit gives a client the difference, not a fresh window (a live configuration
    /// reload).
    pub fn set_limits(&self, limits: ModelLimits) {
        let ledger = &*self.ledger;
        // The clients' lock first, as `Ledger::client` takes them: no client is made with the
        // old limits after they were changed.
        let clients = ledger.clients.read().unwrap_or_else(|e| e.into_inner());
        *ledger.limits.write().unwrap_or_else(|e| e.into_inner()) = limits;
        for client in clients.values() {
            client.meters.set_limits(limits);
        }
        ledger.overflow.meters.set_limits(limits);
    }

    /// The limits each client has.
    pub fn limits(&self) -> ModelLimits {
        self.ledger.limits()
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
            .field("limits", &self.ledger.limits())
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
        let body = crate::peek::body_bytes(request.body());
        match meter(&self.ledger, &self.key, &head, body.as_deref()) {
            None => InboundFuture {
                kind: Kind::Inner {
                    future: self.inner.call(request),
                },
            },
            Some(response) => InboundFuture {
                kind: Kind::Refused {
                    response: Some(response),
                },
            },
        }
    }
}

impl InboundQuotaLayer {
    /// Meter one request whose body is in memory (`body`): `None` if it is admitted, else
    /// the 429 to answer. For a server that reads bodies itself before it sends (the gateway),
    /// so token and image limits count what the body holds.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn admit<ResB: From<Bytes>>(
        &self,
        head: &RequestHead<'_>,
        body: &[u8],
    ) -> Option<Response<ResB>> {
        meter(&self.ledger, &self.key, head, Some(body))
    }

    /// The requests and tokens per minute the client of `head` has (its limits, what is left,
    /// when its window empties), admitting nothing: for its rate-limit headers.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn windows(
        &self,
        head: &RequestHead<'_>,
    ) -> (
        Option<crate::state::RateWindow>,
        Option<crate::state::RateWindow>,
    ) {
        let client = (self.key.0)(head).unwrap_or_else(|| "anonymous".to_owned());
        let now = self.ledger.clock.now_millis();
        self.ledger.client(&client, now).meters.windows(now)
    }

    /// Like [`admit`](Self::admit), with `stored` more tokens that Google reads as prompt
    /// though the body does not carry them (the stored conversation a continuation extends,
    /// the context cache a call names).
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn admit_with_stored<ResB: From<Bytes>>(
        &self,
        head: &RequestHead<'_>,
        body: &[u8],
        stored: u64,
    ) -> Option<Response<ResB>> {
        if stored == 0 {
            return self.admit(head, body);
        }
        let mut extended = head.extensions.clone();
        extended.insert(crate::context::StoredContext(stored));
        let head = RequestHead {
            extensions: &extended,
            ..*head
        };
        meter(&self.ledger, &self.key, &head, Some(body))
    }
}

/// Admit one request of the client `key` names, counting the tokens and images of `body` when
/// the limits have such dimensions; the 429 if there is no room.
fn meter<ResB: From<Bytes>>(
    ledger: &Ledger,
    key: &ClientKey,
    head: &RequestHead<'_>,
    body: Option<&[u8]>,
) -> Option<Response<ResB>> {
    let client = (key.0)(head).unwrap_or_else(|| "anonymous".to_owned());
    let now = ledger.clock.now_millis();
    let entry = ledger.client(&client, now);
    let meters = &entry.meters;
    let mut demand = match body {
        Some(body) if meters.limits().tpm.is_some() || meters.limits().ipm.is_some() => {
            BytesPerToken::default().estimate(body)
        }
        _ => Demand::default(),
    };
    // What Google reads as prompt beyond the body: a stored conversation, a context cache.
    if let Some(stored) = head.extensions.get::<crate::context::StoredContext>() {
        demand.tokens = demand.tokens.saturating_add(stored.0);
    }
    match meters.admit(demand, now, false) {
        Ok(_) => None,
        Err(refusal) => {
            let shown = label(&client);
            tracing::info!(client = %shown, "inbound quota: {} limit {} reached", refusal.dimension, refusal.limit);
            Some(too_many(&refusal, &shown))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::ManualClock;

    fn ledger(limits: ModelLimits, clock: &ManualClock) -> Arc<Ledger> {
        InboundQuotaLayer::with_clock(limits, clock.clone()).ledger
    }

    const RPM_1: ModelLimits = ModelLimits {
        rpm: Some(1),
        tpm: None,
        rpd: None,
        ipm: None,
    };

    #[test]
    fn idle_clients_are_forgotten() {
        let clock = ManualClock::at("2026-11-22T20:00:00Z".parse().unwrap());
        let ledger = ledger(RPM_1, &clock);
        let now = clock.now_millis();
        for i in 0..2 * SWEEP_EVERY {
            ledger.client(&format!("one-off-token-{i:06}"), now);
        }
        assert_eq!(ledger.len(), 2 * SWEEP_EVERY as usize);
        // A minute later those hold nothing: the next sweep forgets them.
        clock.advance(Duration::from_secs(61));
        let later = clock.now_millis();
        for i in 0..SWEEP_EVERY {
            ledger.client(&format!("later-token-{i:06}"), later);
        }
        assert!(
            ledger.len() <= SWEEP_EVERY as usize,
            "{} clients kept",
            ledger.len()
        );
    }

    #[test]
    fn a_full_table_frees_up_once_clients_go_idle() {
        let clock = ManualClock::at("2026-11-22T20:00:00Z".parse().unwrap());
        let ledger = ledger(RPM_1, &clock);
        let now = clock.now_millis();
        for i in 0..MAX_CLIENTS {
            ledger.client(&format!("flood-{i}"), now);
        }
        // Full, and every entry active: a newcomer shares the overflow bucket for now.
        let newcomer = ledger.client("a-real-client-token", now);
        assert!(Arc::ptr_eq(&newcomer, &ledger.overflow));
        drop(newcomer);
        // Not for good: once the flood is idle, the newcomer gets its own meters.
        clock.advance(Duration::from_secs(61));
        let later = clock.now_millis();
        let own = ledger.client("a-real-client-token", later);
        assert!(!Arc::ptr_eq(&own, &ledger.overflow));
        assert!(ledger.len() < 10, "{}", ledger.len());
        // Its limit is its own: one request passes.
        assert!(own.meters.admit(Demand::default(), later, false).is_ok());
    }

    #[test]
    fn clients_with_a_daily_count_are_kept_for_the_day() {
        // 20:00 UTC is 12:00 in Los Angeles: the Pacific day ends in 12 hours.
        let clock = ManualClock::at("2026-11-22T20:00:00Z".parse().unwrap());
        let limits = ModelLimits {
            rpd: Some(1),
            ..ModelLimits::default()
        };
        let ledger = ledger(limits, &clock);
        let now = clock.now_millis();
        let spent = ledger.client("daily-client-token", now);
        assert!(spent.meters.admit(Demand::default(), now, false).is_ok());
        drop(spent);
        clock.advance(Duration::from_secs(3600));
        let later = clock.now_millis();
        let mut clients = ledger.clients.write().unwrap();
        ledger.sweep(&mut clients, later);
        assert_eq!(
            clients.len(),
            1,
            "forgetting it would reset its daily count"
        );
        drop(clients);
        let again = ledger.client("daily-client-token", later);
        assert!(again.meters.admit(Demand::default(), later, false).is_err());
        // The next Pacific day it holds nothing and goes.
        clock.advance(Duration::from_secs(12 * 3600));
        let tomorrow = clock.now_millis();
        drop(again);
        let mut clients = ledger.clients.write().unwrap();
        ledger.sweep(&mut clients, tomorrow);
        assert!(clients.is_empty());
    }

    /// A live reload raises or lowers the limits; what each client spent in its minute still
    /// counts (a raised limit gives the difference, not a fresh window), and a client first
    /// seen after the change gets the new limits.
    #[test]
    fn changed_limits_keep_what_clients_spent() {
        let clock = ManualClock::at("2026-11-22T20:00:00Z".parse().unwrap());
        let rpm = |n| ModelLimits {
            rpm: Some(n),
            ..ModelLimits::default()
        };
        let layer = InboundQuotaLayer::with_clock(rpm(2), clock.clone());
        let now = clock.now_millis();
        let known = layer.ledger.client("known-client-token", now);
        for _ in 0..2 {
            assert!(known.meters.admit(Demand::default(), now, false).is_ok());
        }
        assert!(known.meters.admit(Demand::default(), now, false).is_err());
        layer.clone().set_limits(rpm(3));
        assert_eq!(layer.limits(), rpm(3));
        assert!(known.meters.admit(Demand::default(), now, false).is_ok());
        assert!(known.meters.admit(Demand::default(), now, false).is_err());
        let newcomer = layer.ledger.client("new-client-token", now);
        for _ in 0..3 {
            assert!(newcomer.meters.admit(Demand::default(), now, false).is_ok());
        }
        assert!(
            newcomer
                .meters
                .admit(Demand::default(), now, false)
                .is_err()
        );
        layer.set_limits(rpm(1));
        clock.advance(Duration::from_secs(61));
        let later = clock.now_millis();
        assert!(known.meters.admit(Demand::default(), later, false).is_ok());
        assert!(known.meters.admit(Demand::default(), later, false).is_err());
    }
}
