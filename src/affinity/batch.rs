//! Batch Mode's own limits, counted per project: at most [`BatchLimits::concurrent`] batches
//! running at once, and (if set) at most [`BatchLimits::enqueued_tokens`] tokens enqueued across
//! them. A new batch goes to the project with the most room (or, when it names a file or a
//! cache, to theirs, if it has room); with none, it is refused before it is sent.
//!
//! A batch counts from its create until its state is read as done (or it is deleted), and at
//! most 48 hours (Google expires a batch pending or running longer). Its tokens are estimated
//! from its inline requests; a batch whose requests are in a file counts as one batch, its
//! tokens unknown. Counted from what this process learned.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::context::Owner;
use crate::error::{Error, ErrorKind};
use crate::pool::KeyPool;

/// How long a batch's pin is kept: long enough to read its results (Google's retention of a
/// batch's results is not documented; files last 48 hours).
pub(crate) const PIN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The longest a batch may run (pending or running) before Google expires it.
const RUNS_AT_MOST: Duration = Duration::from_secs(48 * 3600);

/// Batch Mode's limits per project (Google's: 100 batches at once; enqueued tokens per model
/// by tier, such as 3,000,000 for Gemini 2.5 Flash on Tier 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchLimits {
    /// Batches running at once per project (default 100).
    pub concurrent: usize,
    /// Tokens enqueued at once per project across its batches (default: not counted).
    pub enqueued_tokens: Option<u64>,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            concurrent: 100,
            enqueued_tokens: None,
        }
    }
}

impl BatchLimits {
    /// At most `concurrent` batches per project, and (if `Some`) `enqueued_tokens` enqueued.
    pub fn new(concurrent: usize, enqueued_tokens: Option<u64>) -> Self {
        BatchLimits {
            concurrent,
            enqueued_tokens,
        }
    }
}

/// A batch body's tokens: its bytes at four to a token (its prompts, roughly), at least 1 so
/// that a running batch's record is told from a done one's (0).
pub(crate) fn tokens_of(body: Option<&[u8]>) -> u64 {
    body.map_or(1, |b| (b.len() as u64 / 4).max(1))
}

/// Batches running per project, and their tokens, as this process knows them.
fn load(pool: &KeyPool) -> HashMap<Arc<str>, (usize, u64)> {
    let now = pool.clock().now_millis();
    let ttl = u64::try_from(PIN_TTL.as_millis()).unwrap_or(u64::MAX);
    let runs = u64::try_from(RUNS_AT_MOST.as_millis()).unwrap_or(u64::MAX);
    let mut load: HashMap<Arc<str>, (usize, u64)> = HashMap::new();
    for record in pool.records_of("batches/") {
        let created = record.expires_at.saturating_sub(ttl);
        if record.tokens == 0 || created.saturating_add(runs) <= now {
            continue;
        }
        let entry = load.entry(record.project.clone()).or_default();
        entry.0 += 1;
        entry.1 = entry.1.saturating_add(record.tokens);
    }
    load
}

/// The project a new batch of `tokens` goes to: `owner`'s (from the file or cache it names) if
/// it has room, else the project with the most; an error when none has room.
pub(crate) fn choose(
    pool: &KeyPool,
    limits: &BatchLimits,
    owner: Option<&Owner>,
    tokens: u64,
) -> Result<Owner, Error> {
    let load = load(pool);
    let room = |project: &str| {
        let (count, enqueued) = load.get(project).copied().unwrap_or_default();
        let fits = count < limits.concurrent
            && limits
                .enqueued_tokens
                .is_none_or(|most| enqueued.saturating_add(tokens) <= most);
        fits.then_some((enqueued, count))
    };
    if let Some(owner) = owner {
        return match room(owner.project_name()) {
            Some(_) => Ok(owner.clone()),
            None => Err(full(limits, "the project that holds what it names")),
        };
    }
    pool.project_names()
        .into_iter()
        .filter_map(|project| room(&project).map(|load| (load, project)))
        .min_by_key(|(load, _)| *load)
        .map(|(_, project)| Owner::project(&*project))
        .ok_or_else(|| full(limits, "every project"))
}

fn full(limits: &BatchLimits, whose: &str) -> Error {
    let tokens = limits
        .enqueued_tokens
        .map(|t| format!(" or {t} enqueued tokens"))
        .unwrap_or_default();
    Error::new(
        ErrorKind::QuotaExhausted,
        format!(
            "no room for this batch: {whose} runs {} batches{tokens} already (Batch Mode's limits); retry when one is done",
            limits.concurrent
        ),
    )
}
