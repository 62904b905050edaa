//! The facts a request carries from layer to layer: the words the layers share, below all of
//! them (as tower-http's `classify/` and `body.rs` are). A layer inserts a fact into the
//! request's or the response's extensions (or a header); another reads it. Layers import this
//! module, never each other.
//!
//! | fact | type | inserted by | read by |
//! |---|---|---|---|
//! | the model | [`Model`] (request) | the gateway (once, from the path or the OpenAI body), the fallback layer (for the next model), or the caller | every layer (`model::model_of` falls back on the path or body when absent) |
//! | which attempt | [`Attempt`] (request and response) | retry | key rotation (how long it may wait), the caller |
//! | the key used | [`SelectedKey`](crate::pool::SelectedKey) (request and response) | key rotation | quota, breaker scope, cost, the caller |
//! | what the answer means | [`Classification`](crate::classify::Classification) (response, or in the error) | key rotation | retry, breaker, fallback, cache |
//! | how long it waited for a key | `QueueWait` (response) | key rotation | breaker (slow-call threshold on upstream time only) |
//! | a model follows this one | `NextModelWaits` (request) | fallback | retry and key rotation (do not wait for this model) |
//! | how much of an error body is read | `ErrorBodyLimits` | key rotation's and retry's settings | both readers |
//! | the head of a request, for extractors | [`RequestHead`] | — | breaker scopes, inbound quota client keys |
//! | served by another model | [`ModelFallback`] (response), [`FALLBACK_HEADER`], [`MODEL_HEADER`] | fallback | cache (never keeps it), cost (prices the model that served), the gateway |
//! | a caller's cache wishes | [`CACHE_HEADER`], [`NAMESPACE_HEADER`] | the caller, the gateway (the namespace: the client's scope) | cache (not sent upstream) |
//! | who pays | [`Account`](crate::cost::Account) (request) | the gateway (the client token's fingerprint), the caller | cost |
//! | what it cost | [`CostReport`](crate::cost::CostReport) (response) | cost | the caller |
//! | the project that holds what it refers to | [`Owner`] (request) | the caller, or [`AffinityLayer`](crate::affinity::AffinityLayer) from what the pool learned | key rotation (only that project's keys; waits for it rather than rotate) |
//! | the project whose implicit cache holds the request's prefix | [`Preferred`] (request) | [`AffinityLayer`](crate::affinity::AffinityLayer) with [`PrefixAffinity`](crate::affinity::PrefixAffinity), the caller | key rotation (that project first when it can serve now; else rotation as usual) |
//! | the stored conversation a request continues, in tokens | [`StoredContext`] (request) | [`AffinityLayer`](crate::affinity::AffinityLayer) (from the last answer's usage) | key rotation and quota (the request's size), cost (its estimate) |
//! | which tenant asks | [`Tenant`] (request) | the gateway (the client token's scope), the caller | affinity (a resource is recorded with its tenant; another tenant is told it does not exist) |

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{Extensions, HeaderMap, Method, Uri};
use tokio::time::Instant;

pub use crate::model::Model;

/// Which attempt a request is: set by [`Retry`](crate::retry::Retry) in the request extensions
/// of every attempt, and in the extensions of the response it returns (how many attempts it
/// took).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// The most attempts the policy allows.
    pub max: u32,
    /// When the whole call must be over. Inner layers never wait past it: a request waiting
    /// for a key ([`KeyRotationLayer::wait_up_to`](crate::KeyRotationLayer::wait_up_to)) gives
    /// up by then.
    pub deadline: Instant,
}

/// How long a request waited in line for its key: in the response extensions of a request that
/// waited, so that outer layers timing the call (a breaker's slow-call threshold) count only the
/// time the upstream took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueWait(pub(crate) Duration);

/// A request extension the fallback layer puts on every attempt that has a model after it:
/// the layers below then do not wait for that model — the retry layer for its open circuit,
/// key rotation for a key or a quota slot to free — and the next model serves at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NextModelWaits;

/// Default bound on how much of a non-2xx body is read to classify it.
pub const DEFAULT_MAX_ERROR_BODY: usize = 64 * 1024;

/// Default bound on how long a non-2xx body is read to classify it: an upstream that trickles
/// its error body cannot hold the caller and the key longer than this. When it passes, what
/// arrived is classified and the rest streams on to the caller.
pub const DEFAULT_ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// How much of an error body is read to classify it, and for how long at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ErrorBodyLimits {
    pub(crate) bytes: usize,
    pub(crate) time: Duration,
}

impl Default for ErrorBodyLimits {
    fn default() -> Self {
        ErrorBodyLimits {
            bytes: DEFAULT_MAX_ERROR_BODY,
            time: DEFAULT_ERROR_BODY_TIMEOUT,
        }
    }
}

/// The parts of a request a custom scope or client key can look at.
#[derive(Debug)]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI.
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The extensions ([`SelectedKey`](crate::pool::SelectedKey), [`Model`], …).
    pub extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// The head of `request`.
    pub fn of<B>(request: &'a http::Request<B>) -> Self {
        RequestHead {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        }
    }
}

/// On a request, `no` forbids falling back; on an answer served by a fallback model, the
/// requested model and why: `gemini-2.5-pro; reason=quota_exhausted`.
pub const FALLBACK_HEADER: &str = "x-gemini-fallback";
/// On an answer served by a fallback model: the model that served it.
pub const MODEL_HEADER: &str = "x-gemini-model";
/// The header a caller sets to ask for (`yes`) or refuse (`no`) caching, and that answers
/// carry (`hit`, `miss`).
pub const CACHE_HEADER: &str = "x-gemini-cache";
/// The header naming the caller's namespace (a tenant): entries are shared only within one.
pub const NAMESPACE_HEADER: &str = "x-gemini-cache-namespace";

/// Why a request went to a fallback model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FallbackReason {
    /// Every project is at its quota for the model: a local limit refused it, or Google
    /// answered 429 to the last attempt.
    QuotaExhausted,
    /// Every key is cooling down for the model after Google refused it.
    NoKeyAvailable,
    /// No key may use the model: every one is disabled for it (not on the project's tier).
    ModelUnavailable,
    /// The circuit breaker is open for the model: Google has been failing it.
    CircuitOpen,
    /// Google failed the model's last attempt after the retries (503 "model is overloaded",
    /// 500): another model is served rather than the error.
    Overloaded,
}

impl FallbackReason {
    /// A short stable name, e.g. `"quota_exhausted"`, for headers, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::QuotaExhausted => "quota_exhausted",
            FallbackReason::NoKeyAvailable => "no_key_available",
            FallbackReason::ModelUnavailable => "model_unavailable",
            FallbackReason::CircuitOpen => "circuit_open",
            FallbackReason::Overloaded => "overloaded",
        }
    }
}

impl fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A response extension on answers served by a fallback model.
///
/// ```
/// use tower_gemini::fallback::ModelFallback;
/// # let response = http::Response::new(());
/// if let Some(fallback) = response.extensions().get::<ModelFallback>() {
///     println!("{} served instead of {} ({})", fallback.served.as_str(), fallback.requested.as_str(), fallback.reason);
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFallback {
    /// The model the caller asked for.
    pub requested: Model,
    /// The model that served the answer.
    pub served: Model,
    /// Why the requested model (and any fallback before the one that served) was passed over.
    pub reason: FallbackReason,
}

/// The project a request must go to: the one whose key created the resource it refers to (a
/// stored interaction, a file, a context cache, a batch). As a request extension it pins key
/// selection to that project's keys: its quota and cool-downs apply, a request waits for it
/// (with [`KeyRotationLayer::wait_up_to`](crate::KeyRotationLayer::wait_up_to)) rather than
/// rotate away, retries and fallbacks stay in it; if it has no usable key the error names the
/// resource and the project.
///
/// ```
/// use tower_gemini::context::Owner;
///
/// let request = http::Request::get("https://generativelanguage.googleapis.com/v1beta/interactions/abc")
///     .extension(Owner::for_resource("proj-a", "interactions/abc"))
///     .body(())
///     .unwrap();
/// assert_eq!(request.extensions().get::<Owner>().unwrap().project_name(), "proj-a");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    project: Arc<str>,
    resource: Option<Arc<str>>,
}

impl Owner {
    /// Send the request to `project`'s keys only.
    pub fn project(name: impl AsRef<str>) -> Self {
        Owner {
            project: Arc::from(name.as_ref()),
            resource: None,
        }
    }

    /// `resource` (such as `interactions/abc`) lives in `project`: send there only.
    pub fn for_resource(project: impl AsRef<str>, resource: impl AsRef<str>) -> Self {
        Owner {
            project: Arc::from(project.as_ref()),
            resource: Some(Arc::from(resource.as_ref())),
        }
    }

    /// The project's name (as the pool's keys name it).
    pub fn project_name(&self) -> &str {
        &self.project
    }

    /// The resource the request refers to, if it was named.
    pub fn resource(&self) -> Option<&str> {
        self.resource.as_deref()
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.resource {
            Some(resource) => write!(f, "{resource}, which lives in project {}", self.project),
            None => write!(f, "project {}", self.project),
        }
    }
}

/// Who a request is for, when one pool serves several tenants (the gateway's client tokens): a
/// resource a request creates (a stored interaction) is recorded with its tenant, and a request
/// of another tenant that refers to it gets [`ErrorKind::NotFound`](crate::ErrorKind::NotFound)
/// with nothing sent upstream — as does a tenant's reference to a resource the pool has no
/// record of (it cannot be shown to be the tenant's). Without a tenant, a resource is anyone's
/// who knows its name, as at Google.
///
/// The name is an opaque id; use a hash of the client's credential, not the credential.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tenant(Arc<str>);

impl Tenant {
    /// The tenant named `id`.
    pub fn new(id: impl AsRef<str>) -> Self {
        Tenant(Arc::from(id.as_ref()))
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.0
    }

    pub(crate) fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

/// The project that would serve a request best — Google's implicit cache there holds the
/// request's long prefix — as a request extension: key selection takes one of its keys when
/// one can serve now, and otherwise rotates as usual (a preference never makes a request wait
/// or fail; an [`Owner`] is a requirement, this is not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preferred(Arc<str>);

impl Preferred {
    /// Prefer `project` (as the pool's keys name it).
    pub fn project(name: impl AsRef<str>) -> Self {
        Preferred(Arc::from(name.as_ref()))
    }

    /// The project's name.
    pub fn project_name(&self) -> &str {
        &self.0
    }
}

/// How many tokens of stored conversation a request continues (an interaction created with
/// `previous_interaction_id`): Google reads them as prompt, though the body does not carry
/// them. Set by [`AffinityLayer`](crate::affinity::AffinityLayer) from the usage of the
/// conversation's last answer; quota admission and cost estimates add it to what the body
/// shows, so that a long conversation is not admitted as a short request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredContext(pub u64);
