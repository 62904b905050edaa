//! [`QuotaLayer`] and the [`Quota`] service: admit, refuse or wait, then meter the answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::meter::{Demand, Refusal, Ticket};
use super::usage::UsageBody;
use crate::error::{BoxError, Error, ErrorKind};
use crate::pool::{Fingerprint, KeyPool, MeterRef, SelectedKey};
use crate::telemetry;

/// Applies [`Quota`]: local RPM/TPM/RPD/IPM limits per project and model, so that a request
/// the quota will refuse is never sent. See the [module docs](super).
#[derive(Clone, Debug)]
pub struct QuotaLayer {
    pool: KeyPool,
    wait: Option<Duration>,
}

impl QuotaLayer {
    /// Meter against `pool`'s ledger (the one its selection consults). Sits inside
    /// [`KeyRotationLayer`](crate::KeyRotationLayer), which records the chosen key.
    pub fn new(pool: KeyPool) -> Self {
        QuotaLayer { pool, wait: None }
    }

    /// Instead of refusing at once, wait up to `bound` for a slot (first come, first served),
    /// then proceed; refuse if the slot frees later than that.
    pub fn wait_up_to(mut self, bound: Duration) -> Self {
        self.wait = Some(bound);
        self
    }
}

impl<S> Layer<S> for QuotaLayer {
    type Service = Quota<S>;

    fn layer(&self, inner: S) -> Quota<S> {
        Quota {
            inner,
            pool: self.pool.clone(),
            wait: self.wait,
        }
    }
}

/// Middleware enforcing local quota limits. See [`QuotaLayer`].
#[derive(Clone, Debug)]
pub struct Quota<S> {
    inner: S,
    pool: KeyPool,
    wait: Option<Duration>,
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

type Wait = Pin<Box<dyn Future<Output = Result<Option<Ticket>, Refusal>> + Send>>;

/// Wait (first come, first served) until `demand` fits, at most `bound`.
fn wait_for_slot(meter: MeterRef, demand: Demand, pool: KeyPool, bound: Duration) -> Wait {
    /// Counts a waiter for as long as it lives, even if its future is dropped.
    struct Waiting<'a>(&'a AtomicU32);
    impl Drop for Waiting<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
    Box::pin(async move {
        let meters = meter.meters();
        meters.waiters.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&meters.waiters);
        let give_up = tokio::time::Instant::now() + bound;
        async {
            let _turn = meters.lane.lock().await;
            loop {
                match meters.admit(demand, pool.clock().now_millis()) {
                    Ok(ticket) => return Ok(ticket),
                    Err(refusal) => {
                        let Some(after) = refusal.retry_after else {
                            return Err(refusal);
                        };
                        let wake =
                            tokio::time::Instant::now() + after.max(Duration::from_millis(1));
                        if wake > give_up {
                            return Err(refusal);
                        }
                        tokio::time::sleep_until(wake).await;
                    }
                }
            }
        }
        .await
    })
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

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // Decide while only borrowing the request: the admitted path clones nothing.
        let plan = self.plan(&request);
        match plan {
            Plan::Send(metered) => ResponseFuture::calling(self.inner.call(request), metered),
            Plan::Refuse(error) => ResponseFuture::refused(error),
            Plan::Wait {
                meter,
                demand,
                selected,
                bound,
            } => {
                let clone = self.inner.clone();
                let service = std::mem::replace(&mut self.inner, clone);
                let wait = wait_for_slot(meter.clone(), demand, self.pool.clone(), bound);
                ResponseFuture::waiting(wait, service, request, meter, selected)
            }
        }
    }
}

/// What [`Quota::call`] does with a request.
enum Plan {
    /// Send it, metered or not.
    Send(Option<(MeterRef, Ticket)>),
    /// Refuse it now.
    Refuse(Error),
    /// Wait (at most `bound`) for a slot, behind those already waiting.
    Wait {
        meter: MeterRef,
        demand: Demand,
        selected: SelectedKey,
        bound: Duration,
    },
}

impl<S> Quota<S> {
    fn plan<B: 'static>(&self, request: &Request<B>) -> Plan {
        let Some(selected) = request.extensions().get::<SelectedKey>() else {
            // No key chosen (no KeyRotationLayer outside): nothing to meter against.
            return Plan::Send(None);
        };
        let Some(meter) = self.pool.meter(selected.index(), selected.model()) else {
            return Plan::Send(None);
        };
        let meters = meter.meters();
        if !meters.is_limited() {
            return Plan::Send(None);
        }
        let demand = request
            .extensions()
            .get::<Demand>()
            .copied()
            .unwrap_or_else(|| self.pool.demand_of(request));
        let model = selected.model().unwrap_or("unknown");
        let wait = |bound| Plan::Wait {
            meter: meter.clone(),
            demand,
            selected: selected.clone(),
            bound,
        };
        if let Some(bound) = self.wait
            && meters.waiters.load(Ordering::Acquire) > 0
        {
            // Others are waiting: first come, first served.
            return wait(bound);
        }
        match meters.admit(demand, self.pool.clock().now_millis()) {
            Ok(ticket) => {
                telemetry::quota(selected.project(), model, || {
                    meters.snapshot(self.pool.clock().now_millis())
                });
                Plan::Send(ticket.map(|t| (meter.clone(), t)))
            }
            Err(refusal) => {
                telemetry::quota_refused(selected.project(), model, refusal.dimension);
                match self.wait {
                    // The slot frees within the wait allowed.
                    Some(bound) if refusal.retry_after.is_some_and(|after| after <= bound) => {
                        wait(bound)
                    }
                    _ => Plan::Refuse(refusal_error(
                        &refusal,
                        Some(selected.fingerprint()),
                        &describe(selected),
                    )),
                }
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

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Refused { error: Option<Error> },
        Waiting {
            wait: Wait,
            service: Option<S>,
            request: Option<Request<B>>,
            meter: Option<MeterRef>,
            selected: SelectedKey,
            ticket: Option<Option<Ticket>>,
        },
        Calling { #[pin] future: S::Future, meter: Option<(MeterRef, Ticket)> },
    }
}

impl<S: Service<Request<B>>, B> ResponseFuture<S, B> {
    fn refused(error: Error) -> Self {
        ResponseFuture {
            state: State::Refused { error: Some(error) },
        }
    }

    fn calling(future: S::Future, meter: Option<(MeterRef, Ticket)>) -> Self {
        ResponseFuture {
            state: State::Calling { future, meter },
        }
    }

    fn waiting(
        wait: Wait,
        service: S,
        request: Request<B>,
        meter: MeterRef,
        selected: SelectedKey,
    ) -> Self {
        ResponseFuture {
            state: State::Waiting {
                wait,
                service: Some(service),
                request: Some(request),
                meter: Some(meter),
                selected,
                ticket: None,
            },
        }
    }
}

/// Did the upstream refuse the request before using any quota?
fn refused_upstream(status: StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 401 | 403 | 429)
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body,
{
    type Output = Result<Response<UsageBody<ResB>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Refused { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or_else(|| {
                        Error::new(
                            ErrorKind::QuotaExhausted,
                            "quota future polled after it completed",
                        )
                    })));
                }
                StateProj::Waiting {
                    wait,
                    service,
                    request,
                    meter,
                    selected,
                    ticket,
                } => {
                    if ticket.is_none() {
                        match ready!(wait.as_mut().poll(cx)) {
                            Ok(t) => *ticket = Some(t),
                            Err(refusal) => {
                                let what = describe(selected);
                                let error =
                                    refusal_error(&refusal, Some(selected.fingerprint()), &what);
                                this.state.set(State::Refused { error: Some(error) });
                                continue;
                            }
                        }
                    }
                    let (Some(svc), Some(t)) = (service.as_mut(), ticket.as_ref()) else {
                        this.state.set(State::Refused { error: None });
                        continue;
                    };
                    if let Err(error) = ready!(svc.poll_ready(cx)) {
                        if let (Some(m), Some(t)) = (meter.as_ref(), t) {
                            m.meters().refund(t);
                        }
                        let error = Error::from_inner(error);
                        this.state.set(State::Refused { error: Some(error) });
                        continue;
                    }
                    let (Some(mut svc), Some(req), Some(m), Some(t)) =
                        (service.take(), request.take(), meter.take(), ticket.take())
                    else {
                        this.state.set(State::Refused { error: None });
                        continue;
                    };
                    let future = svc.call(req);
                    this.state.set(State::Calling {
                        future,
                        meter: t.map(|t| (m, t)),
                    });
                }
                StateProj::Calling { future, meter } => {
                    let result = ready!(future.poll(cx));
                    let meter = meter.take();
                    return Poll::Ready(match result {
                        Ok(response) => {
                            let meter = match meter {
                                Some((m, t)) if refused_upstream(response.status()) => {
                                    m.meters().refund(&t);
                                    None
                                }
                                Some((m, t)) if response.status().is_success() => Some((m, t)),
                                _ => None,
                            };
                            Ok(response.map(|body| UsageBody::new(body, meter)))
                        }
                        Err(error) => Err(Error::from_inner(error)),
                    });
                }
            }
        }
    }
}
