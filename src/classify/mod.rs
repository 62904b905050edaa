//! Judging an upstream answer once: [`Class`] and [`Classification`].
//!
//! This module is the one place that reads Gemini's error wire format (`google.rpc.Status` with
//! `QuotaFailure`, `RetryInfo` and `ErrorInfo` details). [`KeyRotationLayer`](crate::KeyRotationLayer)
//! classifies every answer and puts the [`Classification`] in the response extensions (or in the
//! crate [`Error`](crate::Error)), so outer layers never parse a body twice.
//!
//! ```
//! use http::StatusCode;
//! use tower_gemini::classify::{Class, Classification};
//!
//! let body = br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.",
//!   "status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo",
//!   "reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
//! let verdict = Classification::from_response(StatusCode::BAD_REQUEST, body);
//! assert_eq!(verdict.class(), Class::KeyInvalid);
//! ```

mod wire;

pub use wire::MAX_WIRE_DELAY;

use std::fmt;
use std::time::Duration;

use http::StatusCode;
use serde::Serialize;

/// What an upstream answer means for keys, quota and retries (see the table in the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// 2xx.
    Success,
    /// 400 (or 401, 403) with `ErrorInfo.reason` `API_KEY_INVALID` ("API key not valid", "API Key
    /// not found", expired): the key is disabled for good. Never from message text alone.
    KeyInvalid,
    /// 403 for the key: `API_KEY_SERVICE_BLOCKED`, `CONSUMER_SUSPENDED`, `SERVICE_DISABLED` (by
    /// `ErrorInfo.reason`), or Google's whole message for a leaked key: disabled for good.
    KeyForbidden,
    /// 402 or 429 "prepayment credits are depleted": the project is disabled until reset.
    BillingExhausted,
    /// 429 with a per-day quota violation: the project+model cools until Pacific midnight.
    QuotaDaily,
    /// 429 with a per-minute quota violation (requests or tokens): the project+model cools for
    /// the server's `retryDelay`.
    QuotaMinute,
    /// 429 with `limit: 0`: the model is not available on this project's tier.
    ModelNotOnTier,
    /// 429 without quota details: the key cools briefly.
    RateLimited,
    /// 408, 5xx ("overloaded", "high demand"): the upstream's fault, not the key's.
    Upstream,
    /// Connect error, timeout, reset: the inner service failed.
    Transport,
    /// Any other 4xx (bad request, unknown model): the caller's fault, never retried.
    Caller,
}

impl Class {
    /// Every class, in declaration order.
    pub const ALL: [Class; 11] = [
        Class::Success,
        Class::KeyInvalid,
        Class::KeyForbidden,
        Class::BillingExhausted,
        Class::QuotaDaily,
        Class::QuotaMinute,
        Class::ModelNotOnTier,
        Class::RateLimited,
        Class::Upstream,
        Class::Transport,
        Class::Caller,
    ];

    /// A short stable name such as `"quota_minute"`, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Success => "success",
            Class::KeyInvalid => "key_invalid",
            Class::KeyForbidden => "key_forbidden",
            Class::BillingExhausted => "billing_exhausted",
            Class::QuotaDaily => "quota_daily",
            Class::QuotaMinute => "quota_minute",
            Class::ModelNotOnTier => "model_not_on_tier",
            Class::RateLimited => "rate_limited",
            Class::Upstream => "upstream",
            Class::Transport => "transport",
            Class::Caller => "caller",
        }
    }

    /// The position of this class in [`Class::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// `Success`.
    pub fn is_success(self) -> bool {
        self == Class::Success
    }

    /// The key itself is unusable (`KeyInvalid`, `KeyForbidden`).
    pub fn is_key_failure(self) -> bool {
        matches!(self, Class::KeyInvalid | Class::KeyForbidden)
    }

    /// A quota answer: says nothing about upstream health, so another key or project may serve.
    pub fn is_quota(self) -> bool {
        matches!(
            self,
            Class::BillingExhausted
                | Class::QuotaDaily
                | Class::QuotaMinute
                | Class::ModelNotOnTier
                | Class::RateLimited
        )
    }

    /// The upstream or the network failed (`Upstream`, `Transport`): counts toward a breaker.
    pub fn is_upstream_failure(self) -> bool {
        matches!(self, Class::Upstream | Class::Transport)
    }

    /// Another attempt may succeed (everything but `Success` and `Caller`).
    pub fn is_retryable(self) -> bool {
        !matches!(self, Class::Success | Class::Caller)
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict on one upstream answer: its [`Class`] and what the body said.
///
/// Cheap for successes (no allocation); error answers keep the model, quota id and value, reason
/// and message they carried.
#[derive(Clone, PartialEq, Eq)]
pub struct Classification {
    class: Class,
    status: Option<StatusCode>,
    retry_after: Option<Duration>,
    details: Option<Box<Details>>,
}

#[derive(Clone, PartialEq, Eq, Default, Debug)]
struct Details {
    model: Option<Box<str>>,
    quota_id: Option<Box<str>>,
    quota_metric: Option<Box<str>>,
    quota_value: Option<u64>,
    reason: Option<Box<str>>,
    message: Option<Box<str>>,
}

/// What an answer shows, read either from parsed JSON or, failing that, from the raw bytes.
#[derive(Default)]
struct Evidence<'a> {
    key_invalid: bool,
    key_forbidden: bool,
    billing: bool,
    limit_zero: bool,
    /// The violation that decided the class (daily wins over per-minute).
    violation: Option<&'a wire::Violation<'a>>,
    daily: bool,
    minute: bool,
    any_violation: bool,
    retry_after: Option<Duration>,
    reason: Option<&'a str>,
    message: Option<&'a str>,
}

const FORBIDDEN_REASONS: &[&str] = &[
    "API_KEY_SERVICE_BLOCKED",
    "CONSUMER_SUSPENDED",
    "SERVICE_DISABLED",
    "API_KEY_HTTP_REFERRER_BLOCKED",
    "API_KEY_IP_ADDRESS_BLOCKED",
    "API_KEY_ANDROID_APP_BLOCKED",
    "API_KEY_IOS_APP_BLOCKED",
    "CONSUMER_INVALID",
];

/// Whole messages Google sends without an `ErrorInfo` for a key or project that cannot be used.
/// Compared whole, never searched in: a caller can make Google echo any text *inside* a
/// message (`Unknown name "…"`, a file's name), never make it the whole message.
const FORBIDDEN_WHOLE_MESSAGES: &[&str] = &[
    "Your API key was reported as leaked. Please use another API key.",
    "Your project has been denied access. Please contact support.",
];

/// The start of Google's message for depleted prepaid credits (no `ErrorInfo`; the rest of the
/// sentence varies). Only on a 402 or a 429 `RESOURCE_EXHAUSTED`, which echo nothing a caller sent.
const BILLING_MESSAGE_START: &str = "Your prepayment credits are depleted";

impl Classification {
    /// Judge an upstream answer from its status and (possibly truncated) body.
    ///
    /// Never panics: a non-JSON or truncated body falls back on a scan of the raw bytes and the
    /// status code. Successes are judged from the status alone; the body is not read.
    pub fn from_response(status: StatusCode, body: &[u8]) -> Classification {
        if status.is_success() {
            return Classification::success(status);
        }
        match wire::parse(body) {
            Some(parsed) => Self::from_evidence(status, evidence_from_json(&parsed)),
            None => Self::from_evidence(status, evidence_from_bytes(body)),
        }
    }

    /// What an answer means for a layer above key rotation: the [`Classification`] key
    /// rotation put in its extensions, or, without one (a stack without key rotation), a
    /// judgement of its status alone. The one place that guesses from a bare status.
    pub fn of_response<B>(response: &http::Response<B>) -> Classification {
        match response.extensions().get::<Classification>() {
            Some(classification) => classification.clone(),
            None => Classification::from_response(response.status(), b""),
        }
    }

    /// The class of [`of_response`](Self::of_response), without a copy of the details.
    pub fn class_of<B>(response: &http::Response<B>) -> Class {
        match response.extensions().get::<Classification>() {
            Some(classification) => classification.class(),
            None => Classification::from_response(response.status(), b"").class(),
        }
    }

    /// A success with this status.
    pub fn success(status: StatusCode) -> Classification {
        Classification {
            class: Class::Success,
            status: Some(status),
            retry_after: None,
            details: None,
        }
    }

    /// The inner service failed before an answer (connect error, timeout, reset).
    pub fn transport() -> Classification {
        Classification {
            class: Class::Transport,
            status: None,
            retry_after: None,
            details: None,
        }
    }

    fn from_evidence(status: StatusCode, ev: Evidence<'_>) -> Classification {
        let code = status.as_u16();
        let class = if matches!(code, 400 | 401 | 403) && ev.key_invalid {
            Class::KeyInvalid
        } else if code == 403 && ev.key_forbidden {
            Class::KeyForbidden
        } else if code == 402 || (matches!(code, 403 | 429) && ev.billing) {
            Class::BillingExhausted
        } else if code == 429 {
            if ev.limit_zero {
                Class::ModelNotOnTier
            } else if ev.daily {
                Class::QuotaDaily
            } else if ev.minute || ev.any_violation {
                Class::QuotaMinute
            } else {
                Class::RateLimited
            }
        } else if code == 408 || (status.is_server_error() && code != 501) {
            // (501 Not Implemented is about what the request asks — the Interactions API
            // answers it for a continuation after built-in tools: no key, retry or wait mends
            // it, and a caller repeating it must not open a circuit for everyone.)
            Class::Upstream
        } else {
            Class::Caller
        };
        let violation = ev.violation;
        let details = Details {
            model: violation
                .and_then(|v| v.dimensions.model.as_deref())
                .map(Into::into),
            quota_id: violation
                .and_then(|v| v.quota_id.as_deref())
                .map(Into::into),
            quota_metric: violation
                .and_then(|v| v.quota_metric.as_deref())
                .map(Into::into),
            quota_value: violation.and_then(|v| v.quota_value),
            reason: ev.reason.map(Into::into),
            message: ev.message.map(Into::into),
        };
        Classification {
            class,
            status: Some(status),
            retry_after: ev.retry_after,
            details: Some(Box::new(details)),
        }
    }

    /// The class.
    pub fn class(&self) -> Class {
        self.class
    }

    /// The HTTP status of the answer (`None` for a transport failure).
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// The delay the server asked for (`RetryInfo.retryDelay`, or "Please retry in …" in the
    /// message). For [`Class::QuotaDaily`] the pool cools until Pacific midnight instead.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The model named in the quota violation (`quotaDimensions.model`).
    pub fn model(&self) -> Option<&str> {
        self.details.as_ref()?.model.as_deref()
    }

    /// The `quotaId` of the deciding violation, e.g.
    /// `GenerateRequestsPerMinutePerProjectPerModel-FreeTier`.
    pub fn quota_id(&self) -> Option<&str> {
        self.details.as_ref()?.quota_id.as_deref()
    }

    /// The `quotaMetric` of the deciding violation.
    pub fn quota_metric(&self) -> Option<&str> {
        self.details.as_ref()?.quota_metric.as_deref()
    }

    /// The `quotaValue` (the limit Google enforces) of the deciding violation.
    pub fn quota_value(&self) -> Option<u64> {
        self.details.as_ref()?.quota_value
    }

    /// The `ErrorInfo.reason`, e.g. `API_KEY_INVALID`.
    pub fn reason(&self) -> Option<&str> {
        self.details.as_ref()?.reason.as_deref()
    }

    /// The error message Google sent.
    pub fn message(&self) -> Option<&str> {
        self.details.as_ref()?.message.as_deref()
    }

    /// Does the deciding violation count tokens (TPM) rather than requests?
    pub fn is_token_quota(&self) -> bool {
        let id = self.quota_id().unwrap_or_default().as_bytes();
        let metric = self.quota_metric().unwrap_or_default().as_bytes();
        wire::contains(id, "token") || wire::contains(metric, "token")
    }

    /// A per-minute token quota (`QuotaMinute` on tokens) whose limit the request alone reaches
    /// (`request_tokens` at least, by its size) is the request's fault, not the project's
    /// minute: it becomes [`Class::Caller`] (no cool-down, no retry elsewhere).
    pub(crate) fn blame_oversized_request(&mut self, request_tokens: u64) {
        if self.class == Class::QuotaMinute
            && self.is_token_quota()
            && self
                .quota_value()
                .is_some_and(|limit| limit > 0 && request_tokens >= limit)
        {
            self.class = Class::Caller;
        }
    }

    /// Replace every occurrence of `secret` in the message with `replacement`.
    ///
    /// Some Google messages quote the consumer (`api_key:…`); the key rotation layer calls this
    /// with the key it injected before the classification is logged or stored.
    pub(crate) fn redact(&mut self, secret: &str, replacement: &str) {
        if let Some(details) = self.details.as_mut()
            && let Some(message) = details.message.as_mut()
            && message.contains(secret)
        {
            *message = message.replace(secret, replacement).into();
        }
    }
}

impl fmt::Debug for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Classification");
        d.field("class", &self.class)
            .field("status", &self.status.map(|s| s.as_u16()))
            .field("retry_after", &self.retry_after);
        if let Some(details) = &self.details {
            d.field("model", &details.model)
                .field("quota_id", &details.quota_id)
                .field("quota_value", &details.quota_value)
                .field("reason", &details.reason)
                .field("message", &details.message);
        }
        d.finish()
    }
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "{} {}", status.as_u16(), self.class)?,
            None => write!(f, "{}", self.class)?,
        }
        if let Some(quota) = self.quota_id() {
            write!(f, ": {quota}")?;
            if let Some(limit) = self.quota_value() {
                write!(f, ", limit {limit}")?;
            }
            if let Some(model) = self.model() {
                write!(f, ", model {model}")?;
            }
            if let Some(after) = self.retry_after {
                write!(f, ", retry in {:.1}s", after.as_secs_f64())?;
            }
        } else if let Some(message) = self.message() {
            let first_line = message.lines().next().unwrap_or_default().trim();
            match first_line.char_indices().nth(160) {
                Some((cut, _)) => write!(f, ": {}…", &first_line[..cut])?,
                None => write!(f, ": {first_line}")?,
            }
        }
        Ok(())
    }
}

fn evidence_from_json<'a>(status: &'a wire::Status<'a>) -> Evidence<'a> {
    let message = status.message.as_deref().unwrap_or_default();
    let message_bytes = message.as_bytes();
    let mut ev = Evidence {
        message: status.message.as_deref(),
        ..Evidence::default()
    };
    let mut minute: Option<&wire::Violation<'_>> = None;
    let mut daily: Option<&wire::Violation<'_>> = None;
    let mut first: Option<&wire::Violation<'_>> = None;
    for detail in &status.details {
        if let Some(reason) = detail.reason.as_deref() {
            ev.reason.get_or_insert(reason);
            if detail.is_about_gemini() {
                ev.key_invalid |= reason == "API_KEY_INVALID";
                ev.key_forbidden |= FORBIDDEN_REASONS.contains(&reason);
            }
        }
        if let Some(delay) = detail.retry_delay.as_deref() {
            ev.retry_after = ev.retry_after.or_else(|| wire::parse_duration(delay));
        }
        for violation in &detail.violations {
            first.get_or_insert(violation);
            if violation.quota_value == Some(0) {
                ev.limit_zero = true;
            }
            let id = violation.quota_id.as_deref().unwrap_or_default().as_bytes();
            if wire::contains(id, "PerDay") {
                daily.get_or_insert(violation);
            } else if wire::contains(id, "PerMinute") {
                minute.get_or_insert(violation);
            }
        }
    }
    ev.any_violation = first.is_some();
    ev.daily = daily.is_some();
    ev.minute = minute.is_some();
    ev.violation = daily.or(minute).or(first);
    // Key and project state change only on Google's structured fields (`ErrorInfo.reason`,
    // `QuotaFailure`, `status`) or a whole message no caller can produce: Google's 400 for an
    // unknown field echoes the field's name, so text *in* a message proves nothing.
    let whole = message.trim();
    ev.key_forbidden |= FORBIDDEN_WHOLE_MESSAGES.contains(&whole);
    ev.billing = whole.starts_with(BILLING_MESSAGE_START)
        && status
            .status
            .as_deref()
            .is_none_or(|s| s == "RESOURCE_EXHAUSTED" || s == "FAILED_PRECONDITION");
    // "limit: 0" in the text only where no violation says otherwise (old 429s had none).
    if first.is_none() {
        ev.limit_zero |= wire::says_limit_zero(message_bytes);
    }
    if ev.retry_after.is_none() {
        ev.retry_after = wire::retry_in_message(message);
    }
    ev
}

fn evidence_from_bytes(body: &[u8]) -> Evidence<'_> {
    // A body that is not whole JSON (cut at the read limit, say) may be a caller's echoed text:
    // it can say which quota ran out, never that a key or a project is unusable.
    let has = |needle: &str| wire::contains(body, needle);
    let daily = has("PerDay");
    let minute = has("PerMinute");
    Evidence {
        key_invalid: false,
        key_forbidden: false,
        billing: false,
        limit_zero: wire::says_limit_zero(body),
        violation: None,
        daily,
        minute,
        any_violation: has("QuotaFailure"),
        retry_after: raw_retry_delay(body),
        reason: None,
        message: None,
    }
}

/// `"retryDelay": "26s"` found in raw (for instance truncated) bytes.
fn raw_retry_delay(body: &[u8]) -> Option<Duration> {
    let at = wire::find_ignore_case(body, b"\"retryDelay\"")?;
    let rest = &body[at + "\"retryDelay\"".len()..];
    let open = rest.iter().position(|&b| b == b'"')?;
    let rest = &rest[open + 1..];
    let close = rest.iter().position(|&b| b == b'"')?;
    let text = std::str::from_utf8(&rest[..close]).ok()?;
    wire::parse_duration(text)
}

#[cfg(test)]
mod tests;
