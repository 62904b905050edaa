//! The response future of [`Quota`](super::Quota): admitted by a shared store if there is one,
//! then the call, its answer metered.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::admission::Pending;
use super::usage::UsageBody;
use crate::error::{BoxError, Error};
use crate::state::{Effect, MeterRef, SharedRefusal, SharedTicket, Store, StoreFuture, Ticket};

pin_project! {
    /// Response future of [`Quota`](super::Quota).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        pub(super) state: State<S, B>,
    }
}

pub(super) type SharedPlace = Option<(Arc<dyn Store>, SharedTicket)>;

pin_project! {
    #[project = StateProj]
    pub(super) enum State<S, B>
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
    pub(super) fn refused(error: Error) -> Self {
        ResponseFuture {
            state: State::Refused { error: Some(error) },
        }
    }

    pub(super) fn calling(
        future: S::Future,
        meter: Option<(MeterRef, Ticket)>,
        shared: SharedPlace,
    ) -> Self {
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
