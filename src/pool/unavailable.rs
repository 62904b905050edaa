//! The error when no key can serve a request, saying which of the three reasons holds: keys
//! cooling down after Google's 429s, projects at their local quota, or keys disabled for good.

use std::time::Duration;

use super::DisabledReason;
use super::strategy::{Blocker, Candidates};
use crate::error::{Error, ErrorKind};
use crate::state::Refusal;

/// The error for a selection that found no available key.
///
/// - every key disabled (invalid, forbidden, out of credits, model not on tier):
///   [`ErrorKind::AllKeysDisabled`], no `retry_after` — waiting will not help;
/// - every other key blocked only by the local ledger: [`ErrorKind::QuotaExhausted`] naming the
///   dimension, with when the first slot frees;
/// - otherwise some keys are cooling down: [`ErrorKind::NoKeyAvailable`] with when the first
///   one frees.
pub(super) fn error(candidates: &Candidates<'_>) -> Error {
    let now = candidates.now;
    let Tally {
        disabled,
        cooling,
        at_quota,
        available,
        earliest,
        tightest,
    } = tally(candidates);
    let model = if candidates.slots.is_unknown() {
        "this request".to_owned()
    } else {
        format!("model {}", candidates.slots.name)
    };
    let retry_after = earliest.map(|at| Duration::from_millis(at.saturating_sub(now)));
    let frees = |after: Option<Duration>| match after {
        Some(after) => format!("; the first frees in {:.1}s", after.as_secs_f64()),
        None => String::new(),
    };
    if available > 0 {
        // Keys are free, but not for this request: waiting in line, the requests ahead took
        // every slot that freed within its wait.
        return Error::new(
            ErrorKind::QuotaExhausted,
            format!(
                "every slot for {model} that freed went to requests ahead in line; more requests than the projects' quota allow"
            ),
        );
    }
    if cooling == 0 && at_quota == 0 {
        return Error::new(
            ErrorKind::AllKeysDisabled,
            format!(
                "no API key can serve {model}: all {} keys are disabled ({}); fix or replace them, then call KeyPool::reset",
                disabled.total(),
                disabled.describe()
            ),
        );
    }
    if cooling == 0
        && let Some((refusal, _)) = tightest
    {
        let message = match refusal.retry_after {
            Some(_) => format!(
                "local quota: every project that can serve {model} has used its {} limit (the tightest is {}){}",
                refusal.dimension,
                refusal.limit,
                frees(retry_after)
            ),
            None => format!(
                "local quota: the request is larger than the {} limit of every project for {model} ({}); send a smaller request",
                refusal.dimension, refusal.limit
            ),
        };
        return Error::new(ErrorKind::QuotaExhausted, message)
            .with_retry_after(retry_after)
            .with_dimension(refusal.dimension);
    }
    let mut parts = vec![format!("{cooling} cooling down after Google refused them")];
    if at_quota > 0 {
        parts.push(format!("{at_quota} at their local quota"));
    }
    if disabled.total() > 0 {
        parts.push(format!(
            "{} disabled ({})",
            disabled.total(),
            disabled.describe()
        ));
    }
    Error::new(
        ErrorKind::NoKeyAvailable,
        format!(
            "no API key can serve {model} now: {}{}",
            parts.join(", "),
            frees(retry_after)
        ),
    )
    .with_retry_after(retry_after)
}

/// What blocks each key of a selection that found none.
#[derive(Default)]
struct Tally {
    disabled: Disabled,
    cooling: usize,
    at_quota: usize,
    /// Keys free, but not for this request (the requests ahead in line took the slots).
    available: usize,
    /// When the first key or slot frees (Unix ms).
    earliest: Option<u64>,
    /// The local refusal that frees first.
    tightest: Option<(Refusal, Option<u64>)>,
}

fn tally(candidates: &Candidates<'_>) -> Tally {
    let mut tally = Tally::default();
    for i in 0..candidates.len() {
        let at = match candidates.blocker(i) {
            // Another project's key: not this request's to count.
            Some(Blocker::Elsewhere) => continue,
            None => {
                tally.available += 1;
                Some(candidates.now)
            }
            Some(Blocker::Disabled(reason)) => {
                tally.disabled.count(reason);
                None
            }
            Some(Blocker::Cooling(until)) => {
                tally.cooling += 1;
                Some(until)
            }
            Some(Blocker::Quota(refusal, at)) => {
                tally.at_quota += 1;
                let sooner = match (&tally.tightest, at) {
                    (None, _) => true,
                    (Some((_, Some(best))), Some(at)) => at < *best,
                    (Some((_, None)), Some(_)) => true,
                    _ => false,
                };
                if sooner {
                    tally.tightest = Some((refusal, at));
                }
                at
            }
        };
        if let Some(at) = at {
            tally.earliest = Some(tally.earliest.map_or(at, |e| e.min(at)));
        }
    }
    tally
}

/// Disabled keys by reason.
#[derive(Default)]
struct Disabled {
    invalid: usize,
    forbidden: usize,
    billing: usize,
    not_on_tier: usize,
    removed: usize,
}

impl Disabled {
    fn count(&mut self, reason: DisabledReason) {
        match reason {
            DisabledReason::KeyInvalid => self.invalid += 1,
            DisabledReason::KeyForbidden => self.forbidden += 1,
            DisabledReason::BillingExhausted => self.billing += 1,
            DisabledReason::ModelNotOnTier => self.not_on_tier += 1,
            DisabledReason::Removed => self.removed += 1,
        }
    }

    fn total(&self) -> usize {
        self.invalid + self.forbidden + self.billing + self.not_on_tier + self.removed
    }

    fn describe(&self) -> String {
        [
            (self.invalid, "invalid"),
            (self.forbidden, "forbidden or leaked"),
            (self.billing, "out of prepaid credits"),
            (self.not_on_tier, "model not on the project's tier"),
            (self.removed, "removed"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect::<Vec<_>>()
        .join(", ")
    }
}
