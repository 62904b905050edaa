//! Waiting for a key: when no project can take a request now, it queues for the earliest one.
//!
//! One line per model, first come first served (tokio's mutex is fair). Only the request at the
//! head of the line looks for a key; it sleeps until the earliest time any project that can
//! serve the model frees (a cool-down ending, a ledger slot leaving the minute), takes the key
//! with its ledger slot reserved, and hands the line to the next. So waiters never all wake to
//! race for one freed slot, and a newcomer (that is willing to wait) queues behind them rather
//! than taking the slot they wait for. Waiting sends nothing upstream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::{KeyLease, KeyPool};
use crate::error::Error;
use crate::state::Demand;
use crate::state::ModelSlots;

/// The longest single sleep of the head of the line: it looks again at least this often, so a
/// refund or a [`KeyPool::reset`] that frees a slot early is noticed.
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// A request waiting for a key.
pub(crate) type KeyWait = Pin<Box<dyn Future<Output = Result<KeyLease, Error>> + Send>>;

/// Counts a waiter for as long as it lives, even if its future is dropped.
struct InLine(Arc<ModelSlots>);

impl InLine {
    fn join(slots: Arc<ModelSlots>) -> InLine {
        slots.waiting.fetch_add(1, Ordering::AcqRel);
        InLine(slots)
    }
}

impl Drop for InLine {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ModelSlots {
    /// Are requests already waiting for a key for this model? (Then a newcomer willing to wait
    /// queues behind them.)
    pub(crate) fn has_waiters(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }
}

impl KeyPool {
    /// Wait in line until a key can take the request, at most until `give_up`.
    ///
    /// Fails at once with the selection error if no key can ever serve it (all disabled, or the
    /// request is larger than every limit), and as soon as it is known that the earliest slot
    /// frees after `give_up`.
    ///
    /// A request pinned to one project waits for that project alone, outside the model's line:
    /// at its head it would hold back requests other projects could serve.
    pub(crate) fn wait_for_key(
        &self,
        slots: Arc<ModelSlots>,
        demand: Demand,
        give_up: Instant,
        pin: Option<super::Pin>,
    ) -> KeyWait {
        let pool = self.clone();
        if let Some(pin) = pin {
            return Box::pin(async move { pool.wait_pinned(&slots, demand, give_up, &pin).await });
        }
        // Joined now, not when first polled, so a request arriving next sees the line.
        let in_line = InLine::join(slots);
        Box::pin(async move {
            let slots = in_line.0.clone();
            let started = Instant::now();
            let model = slots.name.clone();
            let model = if model.is_empty() {
                "this request"
            } else {
                &model
            };
            tracing::debug!(
                gemini.model = model,
                ahead = slots.waiting.load(Ordering::Acquire).saturating_sub(1),
                "no key can take {model} now; waiting up to {:.1}s in line",
                give_up.saturating_duration_since(started).as_secs_f64()
            );
            let Ok(_turn) = tokio::time::timeout_at(give_up, slots.queue.lock()).await else {
                // Out of time in line: what the minute's window has, pacing aside (pacing only
                // delays, it never fails a request the quota has room for).
                if let Ok(lease) = pool.select_in(&slots, demand, None, false) {
                    return Ok(lease);
                }
                let error = pool.unavailable(&slots, demand, None);
                return Err(error.context(format!(
                    "gave up after waiting {:.1}s in line for a key",
                    started.elapsed().as_secs_f64()
                )));
            };
            loop {
                let error = match pool.turn(&slots, demand, None, give_up) {
                    Ok(lease) => {
                        tracing::debug!(
                            gemini.model = model,
                            gemini.key = %lease.key().fingerprint(),
                            "waited {:.1}s for key {}",
                            started.elapsed().as_secs_f64(),
                            lease.key().fingerprint()
                        );
                        return Ok(lease);
                    }
                    Err((_, Some(wake))) => {
                        tokio::time::sleep_until(wake.min(Instant::now() + LOOK_AGAIN)).await;
                        continue;
                    }
                    Err((error, None)) => error,
                };
                if error.retry_after().is_none() {
                    return Err(error);
                }
                let allowed = give_up.saturating_duration_since(started);
                return Err(error.context(format!(
                    "not waiting: the first key frees later than the {:.1}s this request may wait",
                    allowed.as_secs_f64()
                )));
            }
        })
    }

    /// A key for a request that may wait until `give_up`: at its paced turn (see
    /// [`Pacing`](crate::state::Pacing)) if that comes in time, else by the minute's window, as
    /// without pacing — pacing only delays, it never fails a request the quota has room for.
    /// Otherwise the error and when to look again (`None`: nothing frees by `give_up`).
    pub(crate) fn turn(
        &self,
        slots: &Arc<ModelSlots>,
        demand: Demand,
        pin: Option<&super::Pin>,
        give_up: Instant,
    ) -> Result<KeyLease, (Error, Option<Instant>)> {
        let now = Instant::now();
        // When an error's `retry_after` (in the pool's clock) comes in tokio's time, if by
        // `give_up`.
        let wake = |error: &Error| {
            let after = self.clock().real_duration(error.retry_after()?);
            Some(crate::clock::instant_after(
                now,
                after.max(Duration::from_millis(1)),
            ))
            .filter(|&at| at <= give_up)
        };
        let paced = match self.select_in(slots, demand, pin, true) {
            Ok(lease) => return Ok(lease),
            Err(error) => error,
        };
        if let Some(at) = wake(&paced) {
            return Err((paced, Some(at)));
        }
        match self.select_in(slots, demand, pin, false) {
            Ok(lease) => Ok(lease),
            Err(error) => {
                let at = wake(&error);
                Err((error, at))
            }
        }
    }

    /// Wait for a key of `pin`'s project: look again when the earliest of its keys or slots
    /// frees, until `give_up`.
    async fn wait_pinned(
        &self,
        slots: &Arc<ModelSlots>,
        demand: Demand,
        give_up: Instant,
        pin: &super::Pin,
    ) -> Result<KeyLease, Error> {
        let started = Instant::now();
        loop {
            let error = match self.turn(slots, demand, Some(pin), give_up) {
                Ok(lease) => return Ok(lease),
                Err((_, Some(wake))) => {
                    tokio::time::sleep_until(wake.min(Instant::now() + LOOK_AGAIN)).await;
                    continue;
                }
                Err((error, None)) => error,
            };
            if error.retry_after().is_none() {
                return Err(error);
            }
            let allowed = give_up.saturating_duration_since(started);
            return Err(error.context(format!(
                "not waiting: the first key of project {} frees later than the {:.1}s this request may wait",
                pin.owner.project_name(),
                allowed.as_secs_f64()
            )));
        }
    }
}
