//! [`QuotaLayer`] and the [`Quota`] service: admit, refuse or wait, then meter the answer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::meter::{Refusal, Ticket};
use super::usage::UsageBody;
use crate::error::{BoxError, Error, ErrorKind};
use crate::pool::{Fingerprint, KeyPool, MeterRef, Reservation, SelectedKey};
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
}

impl QuotaLayer {
    /// Meter against `pool`'s ledger (the one its selection consults). Sits inside
    /// [`KeyRotationLayer`](crate::KeyRotationLayer), which records the chosen key.
    pub fn new(pool: &KeyPool) -> Self {
        QuotaLayer { pool: pool.clone() }
    }
}

impl<S> Layer<S> for QuotaLayer {
    type Service = Quota<S>;

    fn layer(&self, inner: S) -> Quota<S> {
        Quota {
            inner,
            pool: self.pool.clone(),
        }
    }
}

/// Middleware enforcing local quota limits. See [`QuotaLayer`].
#[derive(Clone, Debug)]
pub struct Quota<S> {
    inner: S,
    pool: KeyPool,
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
        if let Some(reservation) = request.extensions_mut().remove::<Reservation>()
            && let Some(selected) = request.extensions().get::<SelectedKey>()
            && let Some(metered) = reservation.take(selected.index())
        {
            let meters = metered.0.meters();
            telemetry::quota(
                selected.project(),
                selected.model().unwrap_or("unknown"),
                || meters.snapshot(self.pool.clock().now_millis()),
            );
            return ResponseFuture::calling(self.inner.call(request), Some(metered));
        }
        match self.admit(&request) {
            Ok(metered) => ResponseFuture::calling(self.inner.call(request), metered),
            Err(error) => ResponseFuture::refused(error),
        }
    }
}

impl<S> Quota<S> {
    /// Admit a request whose key came without a reservation; the refusal if it does not fit.
    fn admit<B: 'static>(&self, request: &Request<B>) -> Result<Option<(MeterRef, Ticket)>, Error> {
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
            .get::<super::Demand>()
            .copied()
            .unwrap_or_else(|| self.pool.demand_of(request));
        let model = selected.model().unwrap_or("unknown");
        let now = self.pool.clock().now_millis();
        match meters.admit(demand, now) {
            Ok(ticket) => {
                telemetry::quota(selected.project(), model, || meters.snapshot(now));
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

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Refused { error: Option<Error> },
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
        match self.project().state.project() {
            StateProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(Error::polled_after_completion))),
            StateProj::Calling { future, meter } => {
                let result = ready!(future.poll(cx));
                let meter = meter.take();
                Poll::Ready(match result {
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
                })
            }
        }
    }
}
