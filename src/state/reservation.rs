//! A request's place in a project's quota ledger, taken when its key is chosen.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::health::ModelSlots;
use super::meter::{Meters, Ticket};

/// A handle on one project's quota ledger for one model.
#[derive(Clone)]
pub(crate) struct MeterRef {
    pub(crate) slots: Arc<ModelSlots>,
    pub(crate) project: usize,
}

impl MeterRef {
    pub(crate) fn meters(&self) -> &Meters {
        &self.slots.projects[self.project].quota
    }
}

/// The ledger entry admitted for a request when the pool chose its key, so that no other
/// request can take that slot between selection and sending. It travels in the request's
/// extensions from [`KeyRotation`](crate::KeyRotation) to [`Quota`](crate::quota::Quota), which
/// [`take`](Reservation::take)s it and meters the answer. A reservation nobody took (the
/// request was dropped on the way) is refunded.
#[derive(Clone)]
pub(crate) struct Reservation(Arc<Held>);

struct Held {
    meter: MeterRef,
    ticket: Ticket,
    key_index: usize,
    taken: AtomicBool,
}

impl Reservation {
    pub(crate) fn new(meter: MeterRef, ticket: Ticket, key_index: usize) -> Self {
        Reservation(Arc::new(Held {
            meter,
            ticket,
            key_index,
            taken: AtomicBool::new(false),
        }))
    }

    /// The ledger and ticket, once; `None` if already taken or for another key.
    pub(crate) fn take(&self, key_index: usize) -> Option<(MeterRef, Ticket)> {
        let held = &*self.0;
        (held.key_index == key_index && !held.taken.swap(true, Ordering::AcqRel))
            .then(|| (held.meter.clone(), held.ticket))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !*self.taken.get_mut() {
            self.meter.meters().refund(&self.ticket);
        }
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("model", &self.0.meter.slots.name)
            .field("project", &self.0.meter.project)
            .finish_non_exhaustive()
    }
}
