//! The crate's error type: what went wrong locally, with the key fingerprint and when to retry.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use crate::classify::Classification;
use crate::dimension::Dimension;
use crate::fingerprint::Fingerprint;

/// A type-erased error, as used throughout the tower ecosystem.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What kind of failure an [`Error`] reports.
///
/// Local outcomes (`NoKeyAvailable`, `QuotaExhausted`, `CircuitOpen`, `RetriesExhausted`,
/// `BudgetExhausted`) carry a [`retry_after`](Error::retry_after) when the crate knows one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No key can serve the request now: every key that is not disabled is cooling down for its
    /// model after Google refused it (`retry_after` says when the first frees).
    NoKeyAvailable,
    /// Every key is disabled for the request's model (invalid, leaked, out of credits, model not
    /// on the project's tier): a configuration fault that waiting will not mend. Answered as
    /// 503 without `Retry-After`; fix the keys and call [`KeyPool::reset`](crate::KeyPool::reset).
    AllKeysDisabled,
    /// A local quota limit (RPM, TPM, RPD, IPM) refused the request before it was sent.
    QuotaExhausted,
    /// A circuit breaker is open for the request's scope.
    CircuitOpen,
    /// Every attempt allowed by the retry policy failed.
    RetriesExhausted,
    /// The retry budget is spent: retrying now would multiply load during an outage.
    BudgetExhausted,
    /// The call did not finish within the retry deadline (attempts, backoffs and waits
    /// together).
    Timeout,
    /// The inner service (the HTTP client) failed: connect error, timeout, reset.
    Transport,
    /// Configuration is malformed: a key list, an environment variable, a TOML file.
    Config,
    /// A request body is larger than the limit it was buffered with.
    BodyTooLarge,
    /// The shared state store (Redis) cannot be reached and is set to refuse requests rather
    /// than fall back to this process's own state
    /// ([`WhenUnreachable::Refuse`](crate::state::WhenUnreachable)).
    StateUnavailable,
    /// A daily spending budget ([`Budget`](crate::cost::Budget)) set to refuse past 100 % is
    /// spent: 429 with `Retry-After` to midnight Pacific, when it resets.
    BudgetSpent,
    /// Google answered with an error the stack could not mend (its last answer after retries),
    /// made an error by [`ResponseExt::error_for_status`](crate::ResponseExt::error_for_status);
    /// or an answer's body was not what was expected. [`Error::status_code`] is Google's status.
    Upstream,
    /// The request refers to a resource (a stored interaction, a file) that this caller cannot
    /// use: another [`Tenant`](crate::context::Tenant) created it, or the pool has no record
    /// that this tenant did. Answered as 404, as Google answers an unknown resource; nothing
    /// was sent upstream.
    NotFound,
    /// The request cannot be read as the API's, so what it refers to is not known: refused
    /// for a [`Tenant`](crate::context::Tenant) (answered as 400), with nothing sent.
    BadRequest,
}

impl ErrorKind {
    /// A short stable name, e.g. `"no_key_available"`, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NoKeyAvailable => "no_key_available",
            ErrorKind::AllKeysDisabled => "all_keys_disabled",
            ErrorKind::Timeout => "timeout",
            ErrorKind::QuotaExhausted => "quota_exhausted",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::RetriesExhausted => "retries_exhausted",
            ErrorKind::BudgetExhausted => "budget_exhausted",
            ErrorKind::Transport => "transport",
            ErrorKind::Config => "config",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::StateUnavailable => "state_unavailable",
            ErrorKind::BudgetSpent => "budget_spent",
            ErrorKind::Upstream => "upstream",
            ErrorKind::NotFound => "not_found",
            ErrorKind::BadRequest => "bad_request",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error returned by every layer of this crate and by pool construction.
///
/// It never contains a raw API key: only the key's [`Fingerprint`]. Errors raised by the inner
/// service are kept as the [`source`](std::error::Error::source) after being checked for the
/// key (and replaced by a scrubbed copy if they contained it).
///
/// ```
/// use tower_gemini::{ErrorKind, KeyPool};
///
/// let err = KeyPool::from_keys(Vec::<String>::new()).unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Config);
/// assert!(err.to_string().contains("no API keys"));
/// ```
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: Cow<'static, str>,
    key: Option<Fingerprint>,
    retry_after: Option<Duration>,
    classification: Option<Classification>,
    dimension: Option<Dimension>,
    upstream_status: Option<http::StatusCode>,
    source: Option<BoxError>,
}

impl Error {
    /// A new error of `kind` with a human-readable message.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                message: message.into(),
                key: None,
                retry_after: None,
                classification: None,
                dimension: None,
                upstream_status: None,
                source: None,
            }),
        }
    }

    pub(crate) fn config(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Config, message)
    }

    /// Attach the fingerprint of the key involved.
    pub fn with_key(mut self, key: Fingerprint) -> Self {
        self.inner.key = Some(key);
        self
    }

    /// Attach the time after which a retry may succeed.
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.inner.retry_after = retry_after;
        self
    }

    /// Attach the classification of the upstream answer that led to this error.
    pub fn with_classification(mut self, classification: Classification) -> Self {
        self.inner.classification = Some(classification);
        self
    }

    /// Attach the quota dimension that refused the request.
    pub fn with_dimension(mut self, dimension: Dimension) -> Self {
        self.inner.dimension = Some(dimension);
        self
    }

    /// Attach the status Google answered with.
    pub(crate) fn with_upstream_status(mut self, status: http::StatusCode) -> Self {
        self.inner.upstream_status = Some(status);
        self
    }

    /// Attach the underlying cause.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    /// The error of a response future polled again after it returned: a bug in the caller's
    /// executor, never retried (kind `Transport`, no classification), the same from every layer.
    pub(crate) fn polled_after_completion() -> Self {
        Error::new(
            ErrorKind::Transport,
            "a response future was polled after it completed",
        )
    }

    /// Put `prefix` before the message.
    pub(crate) fn context(mut self, prefix: impl fmt::Display) -> Self {
        self.inner.message = format!("{prefix}: {}", self.inner.message).into();
        self
    }

    /// Turn an inner service's error into this crate's error: an `Error` passes through
    /// unchanged (even boxed), anything else becomes [`ErrorKind::Transport`].
    pub fn from_inner(error: impl Into<BoxError>) -> Self {
        match error.into().downcast::<Error>() {
            Ok(err) => *err,
            Err(other) => Error::new(ErrorKind::Transport, "the inner service failed")
                .with_classification(Classification::transport())
                .with_source(other),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The fingerprint of the key involved, if any.
    pub fn key(&self) -> Option<Fingerprint> {
        self.inner.key
    }

    /// How long to wait before a retry may succeed, if known.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// The classification of the outcome (for transport errors: [`Class::Transport`](crate::classify::Class::Transport)).
    pub fn classification(&self) -> Option<&Classification> {
        self.inner.classification.as_ref()
    }

    /// For [`ErrorKind::QuotaExhausted`]: the dimension (RPM, TPM, RPD, IPM) without room.
    pub fn dimension(&self) -> Option<Dimension> {
        self.inner.dimension
    }

    /// The message without the key or the source.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// The HTTP status a server should answer with: 429 for no key, local quota or a spent
    /// budget, 413 for a body too large, 404 for a resource the caller cannot use, 500 for configuration, 504 for the deadline, Google's own status for an
    /// [`Upstream`](ErrorKind::Upstream) answer (502 if it had none), 503 otherwise (every key
    /// disabled, circuit open, retries or budget spent, upstream unreachable).
    pub fn status_code(&self) -> http::StatusCode {
        match self.inner.kind {
            ErrorKind::Upstream => self
                .inner
                .upstream_status
                .filter(|s| s.is_client_error() || s.is_server_error())
                .unwrap_or(http::StatusCode::BAD_GATEWAY),
            ErrorKind::NoKeyAvailable | ErrorKind::QuotaExhausted | ErrorKind::BudgetSpent => {
                http::StatusCode::TOO_MANY_REQUESTS
            }
            ErrorKind::BodyTooLarge => http::StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::NotFound => http::StatusCode::NOT_FOUND,
            ErrorKind::BadRequest => http::StatusCode::BAD_REQUEST,
            ErrorKind::Config => http::StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Timeout => http::StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::AllKeysDisabled
            | ErrorKind::CircuitOpen
            | ErrorKind::RetriesExhausted
            | ErrorKind::BudgetExhausted
            | ErrorKind::StateUnavailable
            | ErrorKind::Transport => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// This error as an HTTP response in Google's error shape, with `Retry-After` (whole
    /// seconds, rounded up) when known. It holds only what `Display` shows: no key.
    ///
    /// ```
    /// use tower_gemini::{Error, ErrorKind};
    /// use std::time::Duration;
    ///
    /// let error = Error::new(ErrorKind::NoKeyAvailable, "no key").with_retry_after(Some(Duration::from_millis(1500)));
    /// let response: http::Response<String> = error.to_response();
    /// assert_eq!(response.status(), 429);
    /// assert_eq!(response.headers()["retry-after"], "2");
    /// ```
    pub fn to_response<B: From<String>>(&self) -> http::Response<B> {
        let status = self.status_code();
        let google_status = match status.as_u16() {
            429 => "RESOURCE_EXHAUSTED",
            400 | 413 => "INVALID_ARGUMENT",
            401 => "UNAUTHENTICATED",
            403 => "PERMISSION_DENIED",
            404 => "NOT_FOUND",
            500 => "INTERNAL",
            504 => "DEADLINE_EXCEEDED",
            _ => "UNAVAILABLE",
        };
        let body = serde_json::json!({
            "error": {
                "code": status.as_u16(),
                "message": self.to_string(),
                "status": google_status,
                "reason": self.inner.kind.as_str(),
            }
        });
        let mut response = http::Response::new(B::from(body.to_string()));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if let Some(after) = self.inner.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        response
    }
}

/// With feature `axum`, handlers can return `Result<_, tower_gemini::Error>`.
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum::response::IntoResponse for Error {
    fn into_response(self) -> axum::response::Response {
        self.to_response::<String>().map(axum::body::Body::from)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.message)?;
        if let Some(key) = &self.inner.key {
            write!(f, " (key {key})")?;
        }
        if let Some(after) = self.inner.retry_after {
            write!(f, "; retry in {:.1}s", after.as_secs_f64())?;
        }
        if let Some(source) = &self.inner.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.inner.kind)
            .field("message", &self.inner.message)
            .field("key", &self.inner.key)
            .field("retry_after", &self.inner.retry_after)
            .field("classification", &self.inner.classification)
            .field("dimension", &self.inner.dimension)
            .field("upstream_status", &self.inner.upstream_status)
            .field("source", &self.inner.source)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source.as_deref().map(|e| e as _)
    }
}

/// A source error whose text was rewritten because it contained an API key.
#[derive(Debug)]
pub(crate) struct ScrubbedError(pub(crate) String);

impl fmt::Display for ScrubbedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScrubbedError {}

/// Return `error` unchanged unless its text (Display or Debug, through the whole source chain)
/// contains `secret`; then return a [`ScrubbedError`] with every occurrence replaced by `fingerprint`.
pub(crate) fn scrub(error: BoxError, secret: &str, fingerprint: Fingerprint) -> BoxError {
    let mut leaks = false;
    let mut chain = String::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
    while let Some(e) = current {
        let display = e.to_string();
        leaks |= display.contains(secret) || format!("{e:?}").contains(secret);
        if !chain.is_empty() {
            chain.push_str(": ");
        }
        chain.push_str(&display);
        current = e.source();
    }
    if leaks {
        Box::new(ScrubbedError(
            chain.replace(secret, &fingerprint.to_string()),
        ))
    } else {
        error
    }
}
