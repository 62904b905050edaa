//! [`UsageBody`]: watches a response stream for the real prompt token count and corrects the
//! ledger as it passes, without buffering the body or delaying any chunk.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::scan::PromptTokens;
use crate::state::{MeterRef, SharedTicket, Store, Ticket};

pin_project! {
    /// A response body that corrects the quota ledger with the real prompt token count as it
    /// streams through (JSON, SSE or a JSON array; native or OpenAI-compatible). Chunks pass
    /// unchanged and undelayed.
    pub struct UsageBody<B> {
        #[pin]
        inner: B,
        tap: Option<Tap>,
    }
}

struct Tap {
    local: Option<(MeterRef, Ticket)>,
    /// The request's place in a shared store's ledger, corrected once when the body ends (or
    /// is dropped) with the last count seen: one write, not one per chunk.
    shared: Option<(Arc<dyn Store>, SharedTicket)>,
    last: Option<u64>,
    scanner: PromptTokens,
}

impl Tap {
    fn found(&mut self, tokens: u64) {
        if let Some((meter, ticket)) = &self.local {
            meter.meters().correct_tokens(ticket, tokens);
        }
        self.last = Some(tokens);
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if let (Some((store, ticket)), Some(tokens)) = (&self.shared, self.last) {
            store.correct(ticket, tokens);
        }
    }
}

impl<B> UsageBody<B> {
    pub(crate) fn new(
        inner: B,
        local: Option<(MeterRef, Ticket)>,
        shared: Option<(Arc<dyn Store>, SharedTicket)>,
    ) -> Self {
        let tap = (local.is_some() || shared.is_some()).then(|| Tap {
            local,
            shared,
            last: None,
            scanner: PromptTokens::default(),
        });
        UsageBody { inner, tap }
    }
}

impl<B> std::fmt::Debug for UsageBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageBody")
            .field("metered", &self.tap.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: Body> Body for UsageBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = crate::body::to_bytes(frame);
                if let (Some(tap), Some(data)) = (this.tap.as_mut(), frame.data_ref())
                    && let Some(tokens) = tap.scanner.scan(data)
                {
                    tap.found(tokens);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                *this.tap = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
