//! What a request carries while a shared store decides on it: the local admission to give
//! back, the shared store, and how its refusal is told.

use std::sync::Arc;

use http::Request;

use crate::error::{Error, ErrorKind};
use crate::pool::{Fingerprint, KeyPool, SelectedKey};
use crate::state::{MeterRef, ModelSlots, Refusal, SharedRefusal, Store, Ticket};
use crate::telemetry;

/// "project p for model m", for refusal messages.
pub(super) fn describe(selected: &SelectedKey) -> String {
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

/// What a request waiting for a shared admission carries.
pub(super) struct Pending<S, B> {
    pub(super) request: Request<B>,
    pub(super) inner: S,
    pub(super) local: Unsent,
    pub(super) shared: Shared,
}

/// A local admission whose request has not been sent: given back when dropped (the caller gave
/// up during the shared admission, or the shared store refused), unless [`send`](Unsent::send)
/// took it.
pub(super) struct Unsent(pub(super) Option<(MeterRef, Ticket)>);

impl Unsent {
    pub(super) fn send(mut self) -> Option<(MeterRef, Ticket)> {
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

pub(super) struct Shared {
    pub(super) pool: KeyPool,
    pub(super) store: Arc<dyn Store>,
    pub(super) slots: Arc<ModelSlots>,
    pub(super) selected: SelectedKey,
}

impl Shared {
    /// The shared store refused: mirror it into the pool and say why, naming the key so that
    /// the retry layer chooses again at once (selection now skips it).
    pub(super) fn refused(&self, refusal: &SharedRefusal) -> Error {
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
