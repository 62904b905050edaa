//! [`QuotaLayer`] and the [`Quota`] service: admit, refuse or wait, then meter the answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::alerts::{Alerts, QuotaAlert};
use super::usage::UsageBody;
use crate::error::{BoxError, Error, ErrorKind};
use crate::pool::{Fingerprint, KeyPool, SelectedKey};
use crate::state::{
    Admission, Effect, MeterRef, Meters, ModelSlots, Refusal, Reservation, SharedRefusal,
    SharedTicket, Store, StoreFuture, Ticket,
};
use crate::telemetry;

/// Applies [`Quota`]: local RPM/TPM/RPD/IPM limits per project and model, so that a request
/// the quota will refuse is never sent. See the [module docs](super).
///
/// It meters what is sent with the key [`KeyRotationLayer`](crate::KeyRotationLayer) chose:
/// the slot the pool reserved in the ledger when it chose the key (or, without one, a slot
/// admitted here), corrected by the answer's real token count and refunded when Google refused
/// the request. Waiting for a slot is a property of selection:
/// [`KeyRotationLayer::wait_up_to`](crate::KeyRotationLayer::wait_up_to).
#[derive(Clone, Debug)]
pub struct QuotaLayer {
    pool: KeyPool,
    alerts: Alerts,
}

impl QuotaLayer {
    /// Meter against `pool`'s ledger (the one its selection consults). Sits inside
    /// [`KeyRotationLayer`](crate::KeyRotationLayer), which records the chosen key.
    pub fn new(pool: &KeyPool) -> Self {
        QuotaLayer {
            pool: pool.clone(),
            alerts: Alerts::default(),
        }
    }

    /// Call `hook` (and log a warning) when a project's use of one of its limits (RPM, TPM,
    /// RPD, IPM) for a model rises through the alert threshold (default 90 %,
    /// [`alert_at`](Self::alert_at)): operators hear of exhaustion before callers do. Once per
    /// crossing: again only after use fell below. Keep the hook quick; it runs on the
    /// request's task.
    ///
    /// ```
    /// use tower_gemini::{KeyPool, QuotaLayer, stack};
    ///
    /// let pool = KeyPool::from_keys(["test-key-0001"])?;
    /// let quota = QuotaLayer::new(&pool).alert_at(0.8)?.on_alert(|alert| {
    ///     eprintln!("{} at {}/{} {}", alert.project, alert.used, alert.limit, alert.dimension);
    /// });
    /// let layer = stack(&pool).quota(quota);
    /// # let _ = layer;
    /// # Ok::<(), tower_gemini::Error>(())
    /// ```
    pub fn on_alert(mut self, hook: impl Fn(&QuotaAlert) + Send + Sync + 'static) -> Self {
        self.alerts.set_hook(Arc::new(hook));
        self
    }

    /// The fraction of a limit at which [`on_alert`](Self::on_alert) fires, in `(0, 1]`.
    pub fn alert_at(mut self, threshold: f64) -> Result<Self, Error> {
        self.alerts.set_threshold(threshold)?;
        Ok(self)
    }
}

impl<S> Layer<S> for QuotaLayer {
    type Service = Quota<S>;

    fn layer(&self, inner: S) -> Quota<S> {
        Quota {
            inner,
            pool: self.pool.clone(),
            alerts: self.alerts.clone(),
        }
    }
}

/// Middleware enforcing local quota limits. See [`QuotaLayer`].
#[derive(Clone, Debug)]
pub struct Quota<S> {
    inner: S,
    pool: KeyPool,
    alerts: Alerts,
}

impl<S> Quota<S> {
    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// "project p for model m", for refusal messages.
fn describe(selected: &SelectedKey) -> String {
    format!(
        "project {} for {}",
        selected.project(),
        selected.model().unwrap_or("this model")
    )
}

pub(crate) fn refusal_error(refusal: &Refusal, key: Option<Fingerprint>, what: &str) -> Error {
    let message = match refusal.retry_after {
        Some(after) => format!(
            "local quota: {what} has used its {} limit of {}; a slot frees in {:.1}s",
            refusal.dimension,
            refusal.limit,
            after.as_secs_f64()
        ),
        None => format!(
            "local quota: the request is larger than {what}'s {} limit of {}",
            refusal.dimension, refusal.limit
        ),
    };
    let error = Error::new(ErrorKind::QuotaExhausted, message)
        .with_retry_after(refusal.retry_after)
        .with_dimension(refusal.dimension);
    match key {
        Some(key) => error.with_key(key),
        None => error,
    }
}

impl<S, B, ResB> Service<Request<B>> for Quota<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: 'static,
    ResB: Body,
{
    type Response = Response<UsageBody<ResB>>;
    type Error = Error;
    type Future = ResponseFuture<S, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_inner)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The slot the pool reserved when it chose the key: nothing to admit again.
        let local = if let Some(reservation) = request.extensions_mut().remove::<Reservation>()
            && let Some(selected) = request.extensions().get::<SelectedKey>()
            && let Some(metered) = reservation.take(selected.index())
        {
            let model = selected.model().unwrap_or("unknown");
            let now = self.pool.clock().now_millis();
            self.observe(selected.project(), model, metered.0.meters(), now);
            Some(metered)
        } else {
            match self.admit(&request) {
                Ok(metered) => metered,
                Err(error) => return ResponseFuture::refused(error),
            }
        };
        let store = &self.pool.inner.store;
        if store.is_shared()
            && let Some(selected) = request.extensions().get::<SelectedKey>()
        {
            let slots = self.pool.model_slots(selected.model());
            let demand = request
                .extensions()
                .get::<crate::state::Demand>()
                .copied()
                .unwrap_or_else(|| self.pool.demand_of(&request));
            let limits = self
                .pool
                .meter(selected.index(), selected.model())
                .map(|m| m.meters().limits())
                .unwrap_or_default();
            let admission = Admission {
                scope: self.pool.inner.scope(selected.index(), &slots),
                demand,
                limits,
                now: self.pool.clock().now_millis(),
            };
            let shared = Shared {
                pool: self.pool.clone(),
                store: store.clone(),
                slots,
                selected: selected.clone(),
            };
            // The service polled ready is the one to call; a clone takes its place.
            let ready = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, ready);
            return ResponseFuture {
                state: State::Admitting {
                    admit: store.admit(admission),
                    pending: Some(Box::new(Pending {
                        request,
                        inner,
                        local: Unsent(local),
                        shared,
                    })),
                },
            };
        }
        ResponseFuture::calling(self.inner.call(request), local, None)
    }
}

/// What a request waiting for a shared admission carries.
struct Pending<S, B> {
    request: Request<B>,
    inner: S,
    local: Unsent,
    shared: Shared,
}

/// A local admission whose request has not been sent: given back when dropped (the caller gave
/// up during the shared admission, or the shared store refused), unless [`send`](Unsent::send)
/// took it.
struct Unsent(Option<(MeterRef, Ticket)>);

impl Unsent {
    fn send(mut self) -> Option<(MeterRef, Ticket)> {
        self.0.take()
    }
}

impl Drop for Unsent {
    fn drop(&mut self) {
        if let Some((meter, ticket)) = self.0.take() {
            meter.meters().refund(&ticket);
        }
    }
}

struct Shared {
    pool: KeyPool,
    store: Arc<dyn Store>,
    slots: Arc<ModelSlots>,
    selected: SelectedKey,
}

impl Shared {
    /// The shared store refused: mirror it into the pool and say why, naming the key so that
    /// the retry layer chooses again at once (selection now skips it).
    fn refused(&self, refusal: &SharedRefusal) -> Error {
        let selected = &self.selected;
        self.pool
            .inner
            .mirror(selected.index(), &self.slots, refusal);
        let now = self.pool.clock().now_millis();
        let what = describe(selected);
        let (message, retry_after) = match refusal {
            SharedRefusal::Quota {
                dimension,
                limit,
                until,
            } => {
                telemetry::quota_refused(
                    selected.project(),
                    selected.model().unwrap_or("unknown"),
                    *dimension,
                );
                let refusal = Refusal {
                    dimension: *dimension,
                    limit: *limit,
                    retry_after: until
                        .map(|at| std::time::Duration::from_millis(at.saturating_sub(now))),
                };
                let error = refusal_error(&refusal, Some(selected.fingerprint()), &what);
                return Error::new(
                    ErrorKind::QuotaExhausted,
                    format!("{error} (shared by every process using the store)"),
                )
                .with_retry_after(refusal.retry_after)
                .with_dimension(refusal.dimension)
                .with_key(selected.fingerprint());
            }
            SharedRefusal::ModelCooling(until) => (
                format!("shared state: {what} cools after Google's 429 seen by another process"),
                Some(*until),
            ),
            SharedRefusal::KeyCooling(until) => (
                format!(
                    "shared state: key {} cools after Google's 429 seen by another process",
                    selected.fingerprint()
                ),
                Some(*until),
            ),
            SharedRefusal::KeyDisabled(reason) => (
                format!(
                    "shared state: key {} was disabled by another process ({})",
                    selected.fingerprint(),
                    reason.as_str()
                ),
                None,
            ),
            SharedRefusal::ProjectDisabled(reason) => (
                format!(
                    "shared state: project {} was disabled by another process ({})",
                    selected.project(),
                    reason.as_str()
                ),
                None,
            ),
            SharedRefusal::ModelDisabled => (
                format!("shared state: {what} is not on the project's tier"),
                None,
            ),
            SharedRefusal::Unreachable(why) => {
                return Error::new(
                    ErrorKind::StateUnavailable,
                    format!(
                        "the shared state store cannot be reached ({why}); refusing rather than overrunning the shared quota"
                    ),
                );
            }
        };
        Error::new(ErrorKind::QuotaExhausted, message)
            .with_retry_after(
                retry_after.map(|at| std::time::Duration::from_millis(at.saturating_sub(now))),
            )
            .with_key(selected.fingerprint())
    }
}

impl<S> Quota<S> {
    /// After an admission: the usage gauges and the quota alerts, from one snapshot (taken only
    /// if one of them wants it).
    fn observe(&self, project: &str, model: &str, meters: &Meters, now: u64) {
        if self.alerts.enabled() {
            let snapshot = meters.snapshot(now);
            telemetry::quota(project, model, || snapshot.clone());
            self.alerts.observe(project, model, &snapshot);
        } else {
            telemetry::quota(project, model, || meters.snapshot(now));
        }
    }

    /// Admit a request whose key came without a reservation; the refusal if it does not fit.
    fn admit<B: 'static>(&self, request: &Request<B>) -> Result<Option<(MeterRef, Ticket)>, Error> {
        if !self.pool.has_limits() {
            return Ok(None);
        }
        let Some(selected) = request.extensions().get::<SelectedKey>() else {
            // No key chosen (no KeyRotationLayer outside): nothing to meter against.
            return Ok(None);
        };
        let Some(meter) = self.pool.meter(selected.index(), selected.model()) else {
            return Ok(None);
        };
        let meters = meter.meters();
        if !meters.is_limited() {
            return Ok(None);
        }
        let demand = request
            .extensions()
            .get::<crate::state::Demand>()
            .copied()
            .unwrap_or_else(|| self.pool.demand_of(request));
        let model = selected.model().unwrap_or("unknown");
        let now = self.pool.clock().now_millis();
        match meters.admit(demand, now) {
            Ok(ticket) => {
                self.observe(selected.project(), model, meters, now);
                Ok(ticket.map(|t| (meter.clone(), t)))
            }
            Err(refusal) => {
                telemetry::quota_refused(selected.project(), model, refusal.dimension);
                Err(refusal_error(
                    &refusal,
                    Some(selected.fingerprint()),
                    &describe(selected),
                ))
            }
        }
    }
}

pin_project! {
    /// Response future of [`Quota`].
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

type SharedPlace = Option<(Arc<dyn Store>, SharedTicket)>;

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Refused { error: Option<Error> },
        Admitting {
            admit: StoreFuture<Result<Option<SharedTicket>, SharedRefusal>>,
            // Boxed: only a shared store takes this path; the common one stays small.
            pending: Option<Box<Pending<S, B>>>,
        },
        Calling {
            #[pin] future: S::Future,
            meter: Option<(MeterRef, Ticket)>,
            shared: SharedPlace,
        },
    }
}

impl<S: Service<Request<B>>, B> ResponseFuture<S, B> {
    fn refused(error: Error) -> Self {
        ResponseFuture {
            state: State::Refused { error: Some(error) },
        }
    }

    fn calling(future: S::Future, meter: Option<(MeterRef, Ticket)>, shared: SharedPlace) -> Self {
        ResponseFuture {
            state: State::Calling {
                future,
                meter,
                shared,
            },
        }
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body,
{
    type Output = Result<Response<UsageBody<ResB>>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project().state.project() {
                StateProj::Refused { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or_else(Error::polled_after_completion)));
                }
                StateProj::Admitting { admit, pending } => {
                    let verdict = ready!(admit.as_mut().poll(cx));
                    let Some(pending) = pending.take() else {
                        return Poll::Ready(Err(Error::polled_after_completion()));
                    };
                    let mut pending = *pending;
                    match verdict {
                        Ok(ticket) => {
                            let future = pending.inner.call(pending.request);
                            let shared = ticket.map(|t| (pending.shared.store.clone(), t));
                            let local = pending.local.send();
                            self.set(ResponseFuture::calling(future, local, shared));
                        }
                        Err(refusal) => {
                            // Dropping `pending` gives the local admission back.
                            drop(pending.local);
                            let error = pending.shared.refused(&refusal);
                            self.set(ResponseFuture::refused(error));
                        }
                    }
                }
                StateProj::Calling {
                    future,
                    meter,
                    shared,
                } => {
                    let result = ready!(future.poll(cx));
                    let meter = meter.take();
                    let shared = shared.take();
                    return Poll::Ready(match result {
                        Ok(response) => {
                            let status = response.status();
                            let (meter, shared) = if !Effect::counted_by_google(status) {
                                // Google refused it before counting: give the places back.
                                if let Some((m, t)) = meter {
                                    m.meters().refund(&t);
                                }
                                if let Some((store, ticket)) = shared {
                                    store.refund(ticket);
                                }
                                (None, None)
                            } else if status.is_success() {
                                (meter, shared)
                            } else {
                                (None, None)
                            };
                            Ok(response.map(|body| UsageBody::new(body, meter, shared)))
                        }
                        Err(error) => Err(Error::from_inner(error)),
                    });
                }
            }
        }
    }
}
