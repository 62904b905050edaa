//! The [`Quota`] service: admit, refuse or wait, then meter the answer.

use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::admission::{Pending, Shared, Unsent, describe, refusal_error};
use super::alerts::Alerts;
use super::future::{ResponseFuture, State};
use super::usage::UsageBody;
use crate::error::{BoxError, Error};
use crate::pool::{KeyPool, SelectedKey};
use crate::state::{Admission, MeterRef, Meters, Reservation, Ticket};
use crate::telemetry;

/// Middleware enforcing local quota limits. See [`QuotaLayer`](super::QuotaLayer).
#[derive(Clone, Debug)]
pub struct Quota<S> {
    inner: S,
    pool: KeyPool,
    alerts: Alerts,
}

impl<S> Quota<S> {
    pub(super) fn new(inner: S, pool: KeyPool, alerts: Alerts) -> Self {
        Quota {
            inner,
            pool,
            alerts,
        }
    }

    crate::macros::define_inner_service_accessors!();
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
        match meters.admit(demand, now, false) {
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
