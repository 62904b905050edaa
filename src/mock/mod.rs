//! A mock Gemini upstream: a real HTTP/1.1 server on 127.0.0.1 that answers like Google.
//!
//! Every answer carries `x-mock-project` (the project that served it) and `x-mock-key` (the
//! key's last 4 characters as `...a1b2`; never the key).
//!
//! Keys are configured per project with per-model limits; exceeding one answers 429 with the
//! real body shape (QuotaFailure with `quotaId`/`quotaValue`, Help, RetryInfo). An unknown key
//! gets 400 `API_KEY_INVALID`, a leaked key 403, a project out of credits 429 "prepayment
//! credits are depleted". Faults can be injected: 503 "The model is overloaded", added latency,
//! connection reset, an error chunk in the middle of a stream. Random faults draw from a seeded
//! generator, so a run is repeatable for the same request order.
//!
//! Endpoints: `POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent` (SSE with
//! `?alt=sse`, a JSON array otherwise), `:countTokens`, `GET /v1beta/models`,
//! `POST /v1beta/openai/chat/completions`, and the Interactions API under `/v1beta` and `/v1`
//! (create, get, delete, cancel), each interaction kept in its project: another project's key
//! gets `404 not_found` in that API's shape, as Google answers.
//!
//! The mock counts one token per 4 characters of input text. It emulates Google's implicit
//! cache per project: a prompt that repeats a long prefix (above the model's minimum) of one
//! the same project saw in the last 5 minutes reports that prefix as `cachedContentTokenCount`
//! (an interaction's conversation so far, as `total_cached_tokens`). Explicit context caches
//! (`cachedContents`: create, get, list, patch, delete) are kept per project too; another
//! project's key gets Google's 403 "CachedContent not found (or permission denied)", on the
//! cache's routes and for a `generateContent` naming it in `cachedContent`.
//!
//! ```
//! use tower_gemini::mock::MockGemini;
//! use tower_gemini::pool::ModelLimits;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let mock = MockGemini::builder()
//!     .project("proj-a", |p| {
//!         p.key("test-key-0001")
//!             .limits("gemini-2.0-flash", ModelLimits { rpm: Some(10), ..Default::default() })
//!     })
//!     .start()
//!     .await?;
//! assert!(mock.url().starts_with("http://127.0.0.1:"));
//! assert_eq!(mock.stats().total_requests(), 0);
//! # Ok::<(), std::io::Error>(())
//! # }).unwrap();
//! ```

mod batches;
mod bodies;
mod caches;
mod files;
mod implicit;
mod interactions;
mod quota;
mod server;
mod stores;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::clock::{Clock, SystemClock};
use crate::pool::{Fingerprint, ModelLimits};

/// Models the mock serves unless told otherwise.
pub const DEFAULT_MODELS: &[&str] = &[
    "gemini-2.0-flash",
    "gemini-2.0-flash-lite",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-2.5-pro",
];

/// A project of the mock: its keys, limits and billing state.
#[derive(Clone, Default)]
pub struct MockProject {
    keys: Vec<String>,
    leaked: Vec<String>,
    limits: HashMap<String, ModelLimits>,
    default_limits: Option<ModelLimits>,
    billing_exhausted: bool,
}

impl MockProject {
    /// A valid key of this project.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    /// A key of this project reported as leaked: answers 403.
    pub fn leaked_key(mut self, key: impl Into<String>) -> Self {
        self.leaked.push(key.into());
        self
    }

    /// Limits for one model (a value of 0 means the model is not on this project's tier).
    pub fn limits(mut self, model: impl Into<String>, limits: ModelLimits) -> Self {
        self.limits.insert(model.into(), limits);
        self
    }

    /// Limits for every model without its own.
    pub fn default_limits(mut self, limits: ModelLimits) -> Self {
        self.default_limits = Some(limits);
        self
    }

    /// The project's prepaid credits are depleted: every request answers 429.
    pub fn billing_exhausted(mut self) -> Self {
        self.billing_exhausted = true;
        self
    }

    fn limits_for(&self, model: &str) -> ModelLimits {
        self.limits
            .get(model)
            .copied()
            .or(self.default_limits)
            .unwrap_or_default()
    }
}

impl fmt::Debug for MockProject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockProject")
            .field("keys", &self.keys.len())
            .field("leaked", &self.leaked.len())
            .field("limits", &self.limits)
            .field("billing_exhausted", &self.billing_exhausted)
            .finish()
    }
}

/// A fault the mock injects.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    kind: FaultKind,
    rate: f64,
    model: Option<String>,
}

/// What a [`Fault`] does.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FaultKind {
    /// Answer 503 "The model is overloaded. Please try again later."
    Overloaded,
    /// Answer 500 INTERNAL.
    Internal,
    /// Close the connection without answering.
    ConnectionReset,
    /// In a streamed answer, send one chunk, then an error chunk, then break the stream.
    MidStreamError,
    /// Wait this long before answering.
    Latency(Duration),
}

impl Fault {
    /// A fault of `kind` hitting a fraction `rate` (0.0–1.0) of requests.
    pub fn new(kind: FaultKind, rate: f64) -> Self {
        Fault {
            kind,
            rate: rate.clamp(0.0, 1.0),
            model: None,
        }
    }

    /// 503 overloaded on a fraction of requests.
    pub fn overloaded(rate: f64) -> Self {
        Fault::new(FaultKind::Overloaded, rate)
    }

    /// Connection reset on a fraction of requests.
    pub fn connection_reset(rate: f64) -> Self {
        Fault::new(FaultKind::ConnectionReset, rate)
    }

    /// Error chunk mid-stream on a fraction of streamed requests.
    pub fn mid_stream_error(rate: f64) -> Self {
        Fault::new(FaultKind::MidStreamError, rate)
    }

    /// Added latency on every request.
    pub fn latency(delay: Duration) -> Self {
        Fault::new(FaultKind::Latency(delay), 1.0)
    }

    /// Only requests for this model.
    pub fn for_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    fn applies_to(&self, model: Option<&str>) -> bool {
        self.model.as_deref().is_none_or(|m| Some(m) == model)
    }
}

/// The demo model: `gemini-2.0-flash`.
pub const DEMO_MODEL: &str = "gemini-2.0-flash";

/// The demo upstream used by the examples: `test-key-0002` belongs to a project whose prepaid
/// credits are depleted, `test-key-0003` to a small project (3 requests per minute on
/// `gemini-2.0-flash`), `test-key-0004` to a big one. `test-key-0001` is unknown (invalid).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let mock = tower_gemini::mock::demo().start().await?;
/// let pool = tower_gemini::mock::demo_pool().unwrap();
/// assert_eq!(pool.len(), 4);
/// # Ok::<(), std::io::Error>(())
/// # }).unwrap();
/// ```
pub fn demo() -> MockGemini {
    MockGemini::builder()
        .project("proj-broke", |p| p.key("test-key-0002").billing_exhausted())
        .project("proj-small", |p| {
            p.key("test-key-0003").limits(
                DEMO_MODEL,
                ModelLimits {
                    rpm: Some(3),
                    ..ModelLimits::default()
                },
            )
        })
        .project("proj-big", |p| p.key("test-key-0004"))
}

/// The pool of the demo: the four keys of [`demo`], each in its project, in that order.
pub fn demo_pool() -> Result<crate::KeyPool, crate::Error> {
    crate::KeyPool::builder()
        .key_with(crate::KeySpec::new("test-key-0001").name("typo"))
        .key_with(crate::KeySpec::new("test-key-0002").project("proj-broke"))
        .key_with(crate::KeySpec::new("test-key-0003").project("proj-small"))
        .key_with(crate::KeySpec::new("test-key-0004").project("proj-big"))
        .build()
}

/// Builds and starts a [`MockServer`].
#[derive(Debug, Default)]
pub struct MockGemini {
    projects: Vec<(String, MockProject)>,
    models: Option<Vec<String>>,
    faults: Vec<Fault>,
    seed: u64,
    clock: Option<Arc<dyn Clock>>,
    stream_chunks: Option<usize>,
    chunk_delay: Duration,
    background_delay: Option<Duration>,
    implicit_cache_min: Option<u64>,
}

impl MockGemini {
    /// An empty mock.
    pub fn builder() -> Self {
        Self::default()
    }

    /// Add a project, configured by `configure`.
    pub fn project(
        mut self,
        name: impl Into<String>,
        configure: impl FnOnce(MockProject) -> MockProject,
    ) -> Self {
        self.projects
            .push((name.into(), configure(MockProject::default())));
        self
    }

    /// The models served (default [`DEFAULT_MODELS`]); others answer 404.
    pub fn models<I, M>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = M>,
        M: Into<String>,
    {
        self.models = Some(models.into_iter().map(Into::into).collect());
        self
    }

    /// Inject a fault.
    pub fn fault(mut self, fault: Fault) -> Self {
        self.faults.push(fault);
        self
    }

    /// Seed for random faults (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The clock for quota windows and days (default [`SystemClock`], which follows paused
    /// tokio time).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Chunks in a streamed answer (default 3).
    pub fn stream_chunks(mut self, chunks: usize) -> Self {
        self.stream_chunks = Some(chunks.max(1));
        self
    }

    /// Wait this long between the chunks of a streamed answer (default none): for tests that
    /// a proxy passes chunks on as they come.
    pub fn stream_chunk_delay(mut self, delay: Duration) -> Self {
        self.chunk_delay = delay;
        self
    }

    /// How long a background interaction (`"background": true`) runs before it completes
    /// (default 200 ms, by the mock's clock).
    pub fn background_delay(mut self, delay: Duration) -> Self {
        self.background_delay = Some(delay);
        self
    }

    /// The fewest tokens of a repeated prompt prefix (or of an interaction's conversation so
    /// far) that the mock's implicit cache counts as cached in the project that saw it, for
    /// every model (default Google's by model: 2,048 for the 2.5 models, 4,096 for 3 and
    /// later, no implicit cache before 2.5).
    pub fn implicit_cache_min_tokens(mut self, tokens: u64) -> Self {
        self.implicit_cache_min = Some(tokens);
        self
    }

    /// Bind 127.0.0.1 on an ephemeral port and serve until the returned server is dropped.
    pub async fn start(self) -> std::io::Result<MockServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let mut keys = HashMap::new();
        for (index, (_, project)) in self.projects.iter().enumerate() {
            for key in &project.keys {
                keys.insert(key.clone(), (index, false));
            }
            for key in &project.leaked {
                keys.insert(key.clone(), (index, true));
            }
        }
        let state = Arc::new(MockState {
            keys,
            projects: Mutex::new(self.projects),
            models: self
                .models
                .unwrap_or_else(|| DEFAULT_MODELS.iter().map(|m| m.to_string()).collect()),
            faults: Mutex::new(self.faults),
            rng: Mutex::new(SmallRng::seed_from_u64(self.seed)),
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock::new())),
            usage: Mutex::new(HashMap::new()),
            stats: Stats::default(),
            stream_chunks: self.stream_chunks.unwrap_or(3),
            chunk_delay: self.chunk_delay,
            next_id: AtomicU64::new(1),
            interactions: Mutex::new(HashMap::new()),
            background_delay_ms: self
                .background_delay
                .map_or(200, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            implicit_cache_min: self.implicit_cache_min,
            recent: implicit::Recent::default(),
            caches: Mutex::new(HashMap::new()),
            files: Mutex::new(files::Files::default()),
            batches: Mutex::new(HashMap::new()),
            stores: Mutex::new(HashMap::new()),
        });
        let task = tokio::spawn(server::serve(listener, state.clone()));
        Ok(MockServer { addr, state, task })
    }
}

pub(crate) struct MockState {
    /// key → (project index, leaked)
    keys: HashMap<String, (usize, bool)>,
    projects: Mutex<Vec<(String, MockProject)>>,
    models: Vec<String>,
    faults: Mutex<Vec<Fault>>,
    rng: Mutex<SmallRng>,
    clock: Arc<dyn Clock>,
    usage: Mutex<HashMap<(usize, String), quota::Usage>>,
    stats: Stats,
    stream_chunks: usize,
    chunk_delay: Duration,
    next_id: AtomicU64,
    /// Stored interactions by id, each in its project.
    interactions: Mutex<HashMap<String, interactions::Stored>>,
    background_delay_ms: u64,
    /// The implicit cache's minimum for every model (else Google's, by model).
    implicit_cache_min: Option<u64>,
    recent: implicit::Recent,
    /// Explicit context caches by id, each in its project.
    caches: Mutex<caches::Caches>,
    /// Uploaded files and uploads under way, each in its project.
    files: Mutex<files::Files>,
    /// Batch Mode jobs by id, each in its project.
    batches: Mutex<batches::Batches>,
    /// File Search stores by id, each in its project.
    stores: Mutex<stores::Stores>,
}

/// Counters for assertions.
#[derive(Default)]
pub struct Stats {
    total: AtomicU64,
    per_key: Mutex<HashMap<String, KeyCount>>,
    by_status: Mutex<HashMap<u16, u64>>,
    per_model: Mutex<HashMap<String, Served>>,
}

/// What the mock answered successfully for one model: answers and the tokens its
/// `usageMetadata` (or OpenAI `usage`) reported — what Google would bill.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Served {
    /// Successful answers (a stream counts when it was sent whole).
    pub answers: u64,
    /// Prompt (input) tokens reported.
    pub prompt_tokens: u64,
    /// Output tokens reported: candidates and, for thinking models (2.5, 3), thoughts.
    pub output_tokens: u64,
}

#[derive(Default, Clone, Copy)]
struct KeyCount {
    requests: u64,
    rate_limited: u64,
}

impl Stats {
    /// Requests received (including refused ones and resets).
    pub fn total_requests(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }

    /// Requests received with this key.
    pub fn requests_for(&self, key: &str) -> u64 {
        let map = self.per_key.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).map_or(0, |c| c.requests)
    }

    /// 429 answers given to this key.
    pub fn rate_limited_for(&self, key: &str) -> u64 {
        let map = self.per_key.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).map_or(0, |c| c.rate_limited)
    }

    /// Answers with this status.
    pub fn responses_with_status(&self, status: u16) -> u64 {
        let map = self.by_status.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&status).copied().unwrap_or(0)
    }

    /// What was answered successfully for `model`, and the tokens reported.
    pub fn served(&self, model: &str) -> Served {
        let map = self.per_model.lock().unwrap_or_else(|e| e.into_inner());
        map.get(model).copied().unwrap_or_default()
    }

    pub(crate) fn record_served(&self, model: &str, prompt_tokens: u64, output_tokens: u64) {
        let mut map = self.per_model.lock().unwrap_or_else(|e| e.into_inner());
        let served = map.entry(model.to_owned()).or_default();
        served.answers += 1;
        served.prompt_tokens += prompt_tokens;
        served.output_tokens += output_tokens;
    }

    /// Every status answered, with counts, sorted.
    pub fn statuses(&self) -> Vec<(u16, u64)> {
        let map = self.by_status.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = map.iter().map(|(s, n)| (*s, *n)).collect();
        all.sort_unstable();
        all
    }

    fn record_request(&self, key: Option<&str>) {
        self.total.fetch_add(1, Ordering::SeqCst);
        if let Some(key) = key {
            let mut map = self.per_key.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key.to_owned()).or_default().requests += 1;
        }
    }

    fn record_status(&self, key: Option<&str>, status: u16) {
        {
            let mut map = self.by_status.lock().unwrap_or_else(|e| e.into_inner());
            *map.entry(status).or_default() += 1;
        }
        if status == 429
            && let Some(key) = key
        {
            let mut map = self.per_key.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key.to_owned()).or_default().rate_limited += 1;
        }
    }
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stats")
            .field("total", &self.total_requests())
            .field("statuses", &self.statuses())
            .finish()
    }
}

/// A running mock. Stops serving when dropped.
pub struct MockServer {
    addr: SocketAddr,
    state: Arc<MockState>,
    task: JoinHandle<()>,
}

impl MockServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of `model`'s `method`, e.g. `generateContent`.
    pub fn model_url(&self, model: &str, method: &str) -> String {
        format!("http://{}/v1beta/models/{model}:{method}", self.addr)
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.state.stats
    }

    /// Replace the injected faults.
    pub fn set_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        let mut current = self.state.faults.lock().unwrap_or_else(|e| e.into_inner());
        *current = faults.into_iter().collect();
    }

    /// Mark a project's credits depleted (or restored).
    pub fn set_billing_exhausted(&self, project: &str, exhausted: bool) {
        let mut projects = self
            .state
            .projects
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (name, p) in projects.iter_mut() {
            if name == project {
                p.billing_exhausted = exhausted;
            }
        }
    }

    /// Forget all quota usage.
    pub fn reset_usage(&self) {
        self.state
            .usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl fmt::Debug for MockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .field("stats", &self.state.stats)
            .finish()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The fingerprint the mock shows for a key in its `x-mock-key` header.
fn fingerprint(key: &str) -> Option<Fingerprint> {
    crate::ApiKey::new(key).ok().map(|k| k.fingerprint())
}
