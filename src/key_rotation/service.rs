//! The [`KeyRotation`] service.

use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use tokio::time::Instant;
use tower_service::Service;

use super::future::ResponseFuture;
use super::inject::KeyPlacement;
use super::inject::{prepare, request_size};
use crate::context::{Attempt, ErrorBodyLimits, NextModelWaits, Owner, Preferred};
use crate::error::{BoxError, Error};
use crate::model::model_of;
use crate::pool::{KeyLease, KeyPool};
use crate::state::Demand;

/// Middleware that picks a key from a [`KeyPool`] for every request, made by
/// [`KeyRotationLayer`](super::KeyRotationLayer). See the [module docs](super).
///
/// # Waiting for a key
///
/// With [`KeyRotationLayer::wait_up_to`](super::KeyRotationLayer::wait_up_to), a request that no key can take now (every project
/// cooling down after Google's 429s, or at its local quota for the model) waits for the
/// earliest one that can, instead of failing: requests for the same model wait in one line,
/// first come first served; only the head of the line looks for a key, when the earliest
/// cool-down or ledger slot of any project frees, takes it with its ledger slot reserved, and
/// hands the line on. A request that arrives while others wait joins the line behind them.
/// Waiting sends nothing upstream. It ends with an error (the one selection gave, saying how
/// long the request waited) when the first key would free after the bound, or after the
/// [`RetryLayer`](crate::retry::RetryLayer)'s deadline; keys that are disabled for good are not
/// waited for. The inner service must be `Clone`: the waiting request keeps a clone to call.
#[derive(Clone, Debug)]
pub struct KeyRotation<S> {
    pub(super) inner: S,
    pub(super) pool: KeyPool,
    pub(super) placement: KeyPlacement,
    pub(super) error_body: ErrorBodyLimits,
    pub(super) wait: Option<Duration>,
}

impl<S> KeyRotation<S> {
    /// The pool.
    pub fn pool(&self) -> &KeyPool {
        &self.pool
    }

    crate::macros::define_inner_service_accessors!();
}

impl<S, B, ResB> Service<Request<B>> for KeyRotation<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: 'static,
    ResB: Body,
{
    type Response = Response<crate::body::ResponseBody<ResB>>;
    type Error = Error;
    type Future = ResponseFuture<S, B, ResB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_inner)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // With quota limits in play, selection needs the request's size (estimated once, and
        // handed to the quota layer in the extensions).
        let demand = self.pool.has_limits().then(|| {
            request
                .extensions()
                .get::<Demand>()
                .copied()
                .unwrap_or_else(|| self.pool.demand_of(&request))
        });
        if let Some(demand) = demand {
            request.extensions_mut().insert(demand);
        }
        let demand = demand.unwrap_or_default();
        let slots = self.pool.model_slots(model_of(&request).as_deref());
        // A request for a resource another project holds goes to that project's keys only.
        let pin = match request.extensions().get::<Owner>() {
            Some(owner) => match self.pool.pin(owner) {
                Ok(pin) => Some(pin),
                Err(error) => return ResponseFuture::failed(error),
            },
            None => None,
        };
        // Until when this request may wait: the bound, and the retry deadline if any. A
        // request with another model after it (a fallback chain) does not wait: the next model
        // serves it now.
        let waits = request.extensions().get::<NextModelWaits>().is_none();
        let give_up = self.wait.filter(|_| waits).map(|bound| {
            let at = crate::clock::instant_after(Instant::now(), bound);
            match request.extensions().get::<Attempt>() {
                Some(attempt) => at.min(attempt.deadline),
                None => at,
            }
        });
        if let Some(give_up) = give_up
            && slots.has_waiters()
        {
            // Willing to wait, and others already are: behind them, first come first served —
            // unless no paced turn can come within its bound (the earliest any project's comes
            // is later): in line it would wait its whole bound for nothing, so the window
            // decides now, as without pacing.
            let turn = self.pool.unavailable_paced(&slots, demand, pin.as_ref());
            let too_late = turn.retry_after().is_some_and(|after| {
                let after = self.pool.clock().real_duration(after);
                Instant::now()
                    .checked_add(after)
                    .is_none_or(|at| at > give_up)
            });
            if too_late && let Ok(lease) = self.pool.select_in(&slots, demand, pin.as_ref(), false)
            {
                return self.dispatch(request, lease);
            }
            return self.queue(request, slots, demand, give_up, pin);
        }
        // The project a preference names first, if it can serve now (never a wait for it). Its
        // window decides, not its paced turn: nobody is waiting (else this request would be in
        // line), and a conversation's next turn a few seconds after the last would otherwise
        // leave the project that has its prefix cached whenever the model's RPM is low.
        if pin.is_none()
            && let Some(preferred) = request.extensions().get::<Preferred>()
            && let Ok(prefer) = self.pool.pin(&Owner::project(preferred.project_name()))
            && let Ok(lease) = self.pool.select_in(&slots, demand, Some(&prefer), false)
        {
            return self.dispatch(request, lease);
        }
        // A request willing to wait takes its paced turn (`Pacing`), or waits in line for it;
        // one whose turn comes too late, and one that would rather fail, go by the window.
        let error = match give_up {
            Some(give_up) => match self.pool.turn(&slots, demand, pin.as_ref(), give_up) {
                Ok(lease) => return self.dispatch(request, lease),
                Err((_, Some(_))) => return self.queue(request, slots, demand, give_up, pin),
                Err((error, None)) => error,
            },
            None => match self.pool.select_in(&slots, demand, pin.as_ref(), false) {
                Ok(lease) => return self.dispatch(request, lease),
                Err(error) => error,
            },
        };
        tracing::debug!(error = %error, "no key for request");
        ResponseFuture::failed(error)
    }
}

impl<S> KeyRotation<S> {
    /// Inject the leased key and call the inner service.
    fn dispatch<B, ResB>(
        &mut self,
        request: Request<B>,
        lease: KeyLease,
    ) -> ResponseFuture<S, B, ResB>
    where
        S: Service<Request<B>, Response = Response<ResB>>,
        B: 'static,
        ResB: Body,
    {
        let (request, lease, selected) = prepare(request, lease, &self.placement);
        let size = request_size(&request);
        let future = self.inner.call(request);
        ResponseFuture::called(future, lease, selected, self.error_body, size)
    }

    /// Wait in line for a key; the ready inner service goes with the request.
    fn queue<B, ResB>(
        &mut self,
        request: Request<B>,
        slots: std::sync::Arc<crate::pool::ModelSlots>,
        demand: Demand,
        give_up: Instant,
        pin: Option<crate::pool::Pin>,
    ) -> ResponseFuture<S, B, ResB>
    where
        S: Service<Request<B>, Response = Response<ResB>> + Clone,
        ResB: Body,
    {
        let wait = self.pool.wait_for_key(slots, demand, give_up, pin);
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::queued(
            wait,
            service,
            request,
            self.placement.clone(),
            self.error_body,
        )
    }
}
