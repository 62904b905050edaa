//! How each answer changes state: the one table every layer and store follows.

use std::time::Duration;

use crate::classify::{Class, Classification};
use crate::clock::{add, next_pacific_midnight};

use super::health::DisabledReason;
use super::meter::Dimension;

/// Default cool-down of a project+model after a per-minute 429 without `retryDelay`.
pub const DEFAULT_MINUTE_COOLDOWN: Duration = Duration::from_secs(60);
/// Longest cool-down taken from a per-minute 429's `retryDelay`.
pub const MAX_MINUTE_COOLDOWN: Duration = Duration::from_secs(3600);
/// First cool-down of a key after a bare 429; doubles while it repeats.
pub const RATE_LIMIT_BASE_COOLDOWN: Duration = Duration::from_secs(5);
/// Longest cool-down of a key after repeated bare 429s.
pub const RATE_LIMIT_MAX_COOLDOWN: Duration = Duration::from_secs(60);

/// How one answer changes what the pool remembers. [`Effect::of`] is the whole table:
///
/// | class | key | project | project + model | ledger |
/// |---|---|---|---|---|
/// | `Success` | failure streaks cleared, latency recorded | | | kept, tokens corrected from `usageMetadata` |
/// | `Caller` | nothing | | | kept; refunded if 400 (refused before counting) |
/// | `KeyInvalid`, `KeyForbidden` | disabled until reset | | | refunded (Google refused it) |
/// | `BillingExhausted` | | disabled until reset | | refunded |
/// | `QuotaDaily` | | | cools until Pacific midnight; `quotaValue` learned as RPD | refunded |
/// | `QuotaMinute` | | | cools for `retryDelay` (default 60 s, at most 1 h); `quotaValue` learned as RPM or TPM | refunded |
/// | `ModelNotOnTier` | | | disabled until reset | refunded |
/// | `RateLimited` | cools 5 s, doubling while it repeats, at most 60 s | | | refunded |
/// | `Upstream`, `Transport` | failure counted, stays in use | | | kept (Google counts a 5xx) |
///
/// Every class but `Success` and `Caller` also adds one to the key's failure streak. The pool
/// applies the effect to its working copy; a shared [`Store`](super::Store) writes it where the
/// other processes see it. The layers keep only their own decisions: the
/// [retry policy](crate::retry) whether to try again, the breaker whether to trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Effect {
    /// The answer's class.
    pub class: Class,
    /// A success: clears the key's failure streaks.
    pub success: bool,
    /// A failure of the key or upstream (not the caller's): adds to the key's failure streak.
    pub failure: bool,
    /// Disable the key until reset.
    pub disable_key: Option<DisabledReason>,
    /// Disable the key's project (every model) until reset.
    pub disable_project: Option<DisabledReason>,
    /// Disable the model for the key's project until reset (quota 0 on its tier).
    pub disable_model: bool,
    /// Cool the project+model until this time (Unix ms).
    pub cool_model_until: Option<u64>,
    /// Cool the key until this time (Unix ms).
    pub cool_key_until: Option<u64>,
    /// A limit Google reported (`quotaValue`), to lower the project+model's limit to.
    pub learn: Option<(Dimension, u64)>,
    /// Google refused the request before counting it: take it out of the ledger.
    pub refund: bool,
}

impl Effect {
    /// The effect of `outcome` at `now` (Unix ms) on a key that has seen `rate_limit_streak`
    /// bare 429s in a row before this one.
    ///
    /// ```
    /// use http::StatusCode;
    /// use tower_gemini::Classification;
    /// use tower_gemini::state::Effect;
    ///
    /// let invalid = br#"{"error":{"code":400,"status":"INVALID_ARGUMENT","message":"API key not valid.",
    ///   "details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}"#;
    /// let effect = Effect::of(&Classification::from_response(StatusCode::BAD_REQUEST, invalid), 0, 0);
    /// assert!(effect.disable_key.is_some() && effect.refund);
    /// ```
    pub fn of(outcome: &Classification, now: u64, rate_limit_streak: u32) -> Effect {
        let class = outcome.class();
        let mut effect = Effect {
            class,
            success: class == Class::Success,
            failure: !matches!(class, Class::Success | Class::Caller),
            disable_key: None,
            disable_project: None,
            disable_model: false,
            cool_model_until: None,
            cool_key_until: None,
            learn: None,
            refund: outcome
                .status()
                .is_some_and(|status| !Effect::counted_by_google(status)),
        };
        let learned = |dimension| {
            outcome
                .quota_value()
                .filter(|&v| v > 0)
                .map(|v| (dimension, v))
        };
        match class {
            Class::KeyInvalid => effect.disable_key = Some(DisabledReason::KeyInvalid),
            Class::KeyForbidden => effect.disable_key = Some(DisabledReason::KeyForbidden),
            Class::BillingExhausted => {
                effect.disable_project = Some(DisabledReason::BillingExhausted)
            }
            Class::QuotaDaily => {
                effect.cool_model_until = Some(next_pacific_midnight(now));
                effect.learn = learned(Dimension::RequestsPerDay);
            }
            Class::QuotaMinute => {
                // A per-minute quota frees within minutes; a larger delay is a malformed answer.
                let delay = outcome
                    .retry_after()
                    .unwrap_or(DEFAULT_MINUTE_COOLDOWN)
                    .min(MAX_MINUTE_COOLDOWN);
                effect.cool_model_until = Some(add(now, delay));
                effect.learn = learned(if outcome.is_token_quota() {
                    Dimension::TokensPerMinute
                } else {
                    Dimension::RequestsPerMinute
                });
            }
            Class::ModelNotOnTier => effect.disable_model = true,
            Class::RateLimited => {
                let delay = RATE_LIMIT_BASE_COOLDOWN
                    .saturating_mul(1 << rate_limit_streak.min(16))
                    .min(RATE_LIMIT_MAX_COOLDOWN);
                effect.cool_key_until = Some(add(now, delay));
            }
            Class::Success | Class::Caller | Class::Upstream | Class::Transport => {}
        }
        effect
    }

    /// Did Google count a request that got this status? Those refused as a key, billing or
    /// quota problem (400, 401, 403, 429) are not counted and are refunded from the ledger; a
    /// 5xx is (users report that Google counts it against the quota).
    pub fn counted_by_google(status: http::StatusCode) -> bool {
        !matches!(status.as_u16(), 400 | 401 | 403 | 429)
    }
}

/// Where an answer's [`Effect`] lands in this process's working copy: the key's health, its
/// project's, and the model's on that project; and the names its log lines give.
pub(crate) struct Target<'a> {
    pub(crate) key: &'a super::health::KeyHealth,
    pub(crate) project: &'a super::health::ProjectHealth,
    pub(crate) slot: &'a super::health::ProjectModelHealth,
    pub(crate) fingerprint: crate::fingerprint::Fingerprint,
    pub(crate) project_name: &'a str,
    pub(crate) model: &'a str,
}

impl Effect {
    /// Apply this effect (of `outcome`, at `now`) to `target`, with a log line for each change.
    /// The one applier of the table above to the working copy (a shared store applies it to
    /// its own keys); what the limit learned does to the ledger is the pool's.
    pub(crate) fn apply(&self, target: &Target<'_>, outcome: &Classification, now: u64) {
        let (class, fingerprint) = (self.class, target.fingerprint);
        if self.failure {
            target.key.failed(now);
        }
        if let Some(reason) = self.disable_key
            && target.key.disabled.disable(reason)
        {
            tracing::warn!(gemini.key = %fingerprint, gemini.class = %class, "key disabled until reset: {outcome}");
        }
        if let Some(reason) = self.disable_project
            && target.project.disabled.disable(reason)
        {
            tracing::warn!(gemini.key = %fingerprint, gemini.project = target.project_name, "project disabled until reset: {}", reason.as_str());
        }
        if self.disable_model {
            target.slot.disable_model();
            tracing::warn!(gemini.key = %fingerprint, gemini.project = target.project_name, gemini.model = target.model,
                "model has a quota of 0 on this project's tier; disabled for this project until reset");
        }
        if let Some(until) = self.cool_model_until {
            target.slot.cool(until, class);
            let secs = until.saturating_sub(now) as f64 / 1000.0;
            if class == Class::QuotaDaily {
                tracing::info!(gemini.key = %fingerprint, gemini.project = target.project_name, gemini.model = target.model,
                    "daily quota exhausted; project cools until midnight Pacific ({secs:.0}s)");
            } else {
                tracing::info!(gemini.key = %fingerprint, gemini.project = target.project_name, gemini.model = target.model,
                    "per-minute quota exhausted; project cools for {secs:.1}s");
            }
        }
        if let Some(until) = self.cool_key_until {
            target.key.cool(until);
            tracing::info!(gemini.key = %fingerprint, "rate limited; key cools for {}s", until.saturating_sub(now) / 1000);
        }
        if matches!(class, Class::Upstream | Class::Transport) {
            tracing::debug!(gemini.key = %fingerprint, gemini.class = %class, gemini.model = target.model, "upstream failure counted; key stays healthy");
        }
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    const MINUTE_17S: &str = r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier","quotaDimensions":{"model":"gemini-2.0-flash"},"quotaValue":"15"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"17s"}]}}"#;

    #[test]
    fn every_class_has_the_effect_the_table_gives() {
        let now = 1_700_000_000_000;
        let minute =
            Classification::from_response(StatusCode::TOO_MANY_REQUESTS, MINUTE_17S.as_bytes());
        let effect = Effect::of(&minute, now, 0);
        assert_eq!(effect.cool_model_until, Some(now + 17_000));
        assert_eq!(effect.learn, Some((Dimension::RequestsPerMinute, 15)));
        assert!(effect.refund && effect.failure && !effect.success);

        let bare = Classification::from_response(StatusCode::TOO_MANY_REQUESTS, b"");
        assert_eq!(Effect::of(&bare, now, 0).cool_key_until, Some(now + 5_000));
        assert_eq!(Effect::of(&bare, now, 2).cool_key_until, Some(now + 20_000));
        assert_eq!(
            Effect::of(&bare, now, 30).cool_key_until,
            Some(now + 60_000)
        );

        let ok = Effect::of(&Classification::success(StatusCode::OK), now, 0);
        assert!(ok.success && !ok.failure && !ok.refund);
        let caller = Effect::of(
            &Classification::from_response(StatusCode::NOT_FOUND, b""),
            now,
            0,
        );
        assert!(!caller.success && !caller.failure && !caller.refund);
        let down = Effect::of(
            &Classification::from_response(StatusCode::SERVICE_UNAVAILABLE, b""),
            now,
            0,
        );
        assert!(down.failure && !down.refund && down.cool_key_until.is_none());
    }

    #[test]
    fn google_counts_server_errors_but_not_refusals() {
        assert!(Effect::counted_by_google(StatusCode::OK));
        assert!(Effect::counted_by_google(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!Effect::counted_by_google(StatusCode::TOO_MANY_REQUESTS));
        assert!(!Effect::counted_by_google(StatusCode::FORBIDDEN));
    }
}
