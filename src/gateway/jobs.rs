//! What the gateway does in the background: calling disabled keys again, and writing the state
//! file.

use std::sync::Arc;

use super::{Shared, check_keys};
use crate::state::StateFile;

/// Aborts a background task when dropped.
pub(super) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    pub(super) fn new(task: tokio::task::JoinHandle<()>) -> AbortOnDrop {
        AbortOnDrop(task)
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Disabled keys are called again every `every` (at least a minute apart, whatever a
/// configuration made in code says); those that work are re-enabled. Stops when dropped.
pub(super) fn revalidating(
    shared: &Arc<Shared>,
    every: std::time::Duration,
    upstream: String,
    model: String,
) -> AbortOnDrop {
    let every = every.max(std::time::Duration::from_secs(60));
    let revalidated = shared.clone();
    AbortOnDrop(tokio::spawn(async move {
        let first = crate::clock::instant_after(tokio::time::Instant::now(), every);
        let mut tick = tokio::time::interval_at(first, every);
        loop {
            tick.tick().await;
            let pool = revalidated.live().pool.clone();
            check_keys::revalidate(&pool, &upstream, &model).await;
        }
    }))
}

/// The state written to `file` every 30 s (and, by the caller, once more after the last
/// request). Stops when dropped.
pub(super) fn saving(shared: &Arc<Shared>, file: StateFile) -> AbortOnDrop {
    let saved = shared.clone();
    AbortOnDrop(tokio::spawn(async move {
        let every = std::time::Duration::from_secs(30);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tick.tick().await;
            if let Err(error) = file.save(&saved.live().pool) {
                tracing::warn!("{error}");
            }
        }
    }))
}
