//! The goodput scenario, in simulated time: how much of the quota a stack turns into answers.
//!
//! Real HTTP on loopback to the mock, under `tokio::time::pause()`: the mock's per-project
//! sliding windows, the pool's ledger and every sleep follow tokio's clock, so minutes of quota
//! pass in seconds. Closed-loop callers keep the load above capacity; a caller whose request
//! fails waits one (simulated) second before its next, as a real client would.
//!
//! Shared by `benches/goodput.rs` (the full scenario, printed as a table) and
//! `tests/goodput.rs` (a small one whose floor CI enforces).
#![allow(dead_code)] // each user reads part of the report

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_gemini::mock::{Fault, MockGemini, MockServer};
use tower_gemini::pool::ModelLimits;
use tower_gemini::state::Pacing;
use tower_gemini::{KeyPool, KeySpec, stack};

pub const MODEL: &str = "gemini-2.0-flash";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// What is measured.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub projects: usize,
    /// Requests per minute per project, on the mock and (known in advance) in the pool.
    pub rpm: u32,
    /// Share of requests the mock answers 503 (before counting them against quota).
    pub faults: f64,
    pub callers: usize,
    pub duration: Duration,
    pub seed: u64,
    /// Share of calls that repeat one of a few deterministic prompts (temperature 0); the rest
    /// are new questions. 0: every call sends the same sampled prompt (nothing cacheable).
    pub repeats: f64,
}

/// Who sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// `stack(&pool)`: a request no key can take now fails at once.
    FailFast,
    /// `stack(&pool).wait_up_to(2 min)`: it waits for its turn, the minute's quota spread
    /// (the default [`Pacing`]).
    Wait,
    /// `Wait` with [`Pacing::Off`]: the minute's window alone, its whole quota at once.
    WaitWindow,
    /// The common hand-written approach: round robin, on 429 or 503 the next key after a fixed
    /// 1 s, at most `min(retries + 1, 2 × keys)` attempts; no local quota, no classification.
    Naive,
    /// `CacheLayer` before `Wait`: repeated deterministic prompts are answered from memory.
    #[cfg(feature = "cache")]
    WaitCached,
}

impl Sender {
    pub fn name(self) -> &'static str {
        match self {
            Sender::FailFast => "stack, fail fast",
            Sender::Wait => "stack, wait up to 2 min, paced (default)",
            Sender::WaitWindow => "stack, wait up to 2 min, window only (`Pacing::Off`)",
            Sender::Naive => "naive round robin + 1 s failover",
            #[cfg(feature = "cache")]
            Sender::WaitCached => "cache + stack, wait up to 2 min",
        }
    }
}

/// What came of it.
#[derive(Debug, Clone)]
pub struct Report {
    /// Answers the callers got (200).
    pub delivered: u64,
    /// Calls that ended in an error for the caller.
    pub failed: u64,
    /// What the projects' windows could take in the run: `projects × rpm` per window started.
    pub capacity: u64,
    /// Requests that reached the mock, its 429s and its injected 503s.
    pub upstream: u64,
    pub upstream_429: u64,
    pub upstream_503: u64,
    /// Latency of the delivered calls (simulated time, waiting included).
    pub p50: Duration,
    pub p99: Duration,
    /// The longest wait of a delivered call.
    pub longest: Duration,
}

impl Report {
    /// Delivered over the whole capacity.
    pub fn delivered_share(&self) -> f64 {
        self.delivered as f64 / self.capacity as f64
    }

    /// Delivered over the capacity the faults leave (Google is reported to count a 503 against
    /// quota: a slot spent on a fault is lost to everyone).
    pub fn of_capacity_left(&self) -> f64 {
        self.delivered as f64 / self.capacity.saturating_sub(self.upstream_503).max(1) as f64
    }

    pub fn share_429(&self) -> f64 {
        self.upstream_429 as f64 / self.upstream.max(1) as f64
    }

    /// Upstream requests beyond one per finished call.
    pub fn retries_per_call(&self) -> f64 {
        let calls = (self.delivered + self.failed).max(1);
        self.upstream.saturating_sub(calls) as f64 / calls as f64
    }
}

fn key(project: usize) -> String {
    format!("test-key-{project:04}")
}

fn limits(rpm: u32) -> ModelLimits {
    ModelLimits {
        rpm: Some(rpm),
        ..Default::default()
    }
}

async fn mock(scenario: &Scenario) -> MockServer {
    let builder = (0..scenario.projects).fold(MockGemini::builder(), |builder, p| {
        builder.project(format!("proj-{p}"), |project| {
            project.key(key(p)).default_limits(limits(scenario.rpm))
        })
    });
    let builder = if scenario.faults > 0.0 {
        builder.fault(Fault::overloaded(scenario.faults))
    } else {
        builder
    };
    builder.seed(scenario.seed).start().await.unwrap()
}

fn pool(scenario: &Scenario, pacing: Pacing) -> KeyPool {
    (0..scenario.projects)
        .fold(KeyPool::builder(), |builder, p| {
            builder.key_with(KeySpec::new(key(p)).project(format!("proj-{p}")))
        })
        .model_limits(MODEL, limits(scenario.rpm))
        .pacing(pacing)
        .build()
        .unwrap()
}

fn request(mock: &MockServer) -> Request<Full<Bytes>> {
    Request::post(mock.model_url(MODEL, "generateContent"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"contents":[{"role":"user","parts":[{"text":"hello goodput"}]}]}"#,
        )))
        .unwrap()
}

/// Repeated prompts: a small set, as an app's common questions are (the first asking of each is
/// a miss).
const REPEATED: usize = 5;

/// The request of `caller`'s `n`th call: the fixed template, or (with repeats) a repeated
/// deterministic prompt or a new question, drawn from the seed.
fn request_for(
    scenario: &Scenario,
    template: &Request<Full<Bytes>>,
    caller: usize,
    n: u64,
) -> Request<Full<Bytes>> {
    if scenario.repeats <= 0.0 {
        return template.clone();
    }
    // SplitMix64 of (seed, caller, n): the same draw in every run and for every sender.
    let mut z = scenario
        .seed
        .wrapping_add((caller as u64) << 32)
        .wrapping_add(n)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let draw = (z >> 11) as f64 / (1u64 << 53) as f64;
    let body = if draw < scenario.repeats {
        format!(
            r#"{{"contents":[{{"role":"user","parts":[{{"text":"common question {}"}}]}}],"generationConfig":{{"temperature":0}}}}"#,
            z % REPEATED as u64
        )
    } else {
        format!(
            r#"{{"contents":[{{"role":"user","parts":[{{"text":"caller {caller} question {n}"}}]}}]}}"#
        )
    };
    let mut request = template.clone();
    *request.body_mut() = Full::new(Bytes::from(body));
    request
}

/// The naive sender's one call.
async fn naive_call(
    client: &HttpClient,
    keys: &[HeaderValue],
    cursor: &AtomicUsize,
    request: &Request<Full<Bytes>>,
) -> bool {
    let attempts = (3 + 1).min(2 * keys.len());
    for attempt in 1..=attempts {
        let key = &keys[cursor.fetch_add(1, Ordering::Relaxed) % keys.len()];
        let mut request = request.clone();
        request.headers_mut().insert("x-goog-api-key", key.clone());
        let Ok(response) = client.request(request).await else {
            return false;
        };
        let status = response.status();
        let _ = response.into_body().collect().await;
        match status {
            StatusCode::OK => return true,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                if attempt < attempts =>
            {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            _ => return false,
        }
    }
    false
}

#[cfg(feature = "cache")]
type Cached = tower::util::BoxCloneSyncService<
    Request<Full<Bytes>>,
    Response<tower_gemini::cache::ResponseBody<tower_gemini::BoxBody>>,
    tower_gemini::Error,
>;

async fn read<B: http_body::Body>(response: Response<B>) -> bool {
    let ok = response.status() == StatusCode::OK;
    let read = response.into_body().collect().await.is_ok();
    ok && read
}

/// Run `scenario` through `sender`. Call inside a runtime whose time is paused.
pub async fn run(scenario: Scenario, sender: Sender) -> Report {
    let mock = mock(&scenario).await;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let pacing = match sender {
        Sender::WaitWindow => Pacing::Off,
        _ => Pacing::default(),
    };
    let pool = pool(&scenario, pacing);
    let failfast = stack(&pool).boxed(client.clone());
    let waiting = stack(&pool)
        .wait_up_to(Duration::from_secs(120))
        .boxed(client.clone());
    let keys: Arc<[HeaderValue]> = (0..scenario.projects)
        .map(|p| HeaderValue::from_str(&key(p)).unwrap())
        .collect();
    let cursor = Arc::new(AtomicUsize::new(0));
    let template = request(&mock);
    #[cfg(feature = "cache")]
    let cached = {
        use tower::Layer;
        Cached::new(tower_gemini::cache::CacheLayer::new().layer(waiting.clone()))
    };

    let started = Instant::now();
    let end = started + scenario.duration;
    let tasks: Vec<_> = (0..scenario.callers)
        .map(|caller| {
            let (failfast, waiting, client) = (failfast.clone(), waiting.clone(), client.clone());
            let (keys, cursor, template) = (keys.clone(), cursor.clone(), template.clone());
            #[cfg(feature = "cache")]
            let cached = cached.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failed = 0u64;
                let mut n = 0u64;
                while Instant::now() < end {
                    n += 1;
                    let template = request_for(&scenario, &template, caller, n);
                    let sent = Instant::now();
                    let ok = match sender {
                        Sender::Naive => naive_call(&client, &keys, &cursor, &template).await,
                        Sender::FailFast => {
                            match failfast.clone().oneshot(template.clone()).await {
                                Ok(response) => read(response).await,
                                Err(_) => false,
                            }
                        }
                        Sender::Wait | Sender::WaitWindow => {
                            match waiting.clone().oneshot(template.clone()).await {
                                Ok(response) => read(response).await,
                                Err(_) => false,
                            }
                        }
                        #[cfg(feature = "cache")]
                        Sender::WaitCached => match cached.clone().oneshot(template).await {
                            Ok(response) => read(response).await,
                            Err(_) => false,
                        },
                    };
                    // Only what finished inside the run counts.
                    if Instant::now() >= end {
                        break;
                    }
                    if ok {
                        latencies.push(sent.elapsed());
                    } else {
                        failed += 1;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                (latencies, failed)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let (mine, lost) = task.await.unwrap();
        latencies.extend(mine);
        failed += lost;
    }
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let windows = scenario.duration.as_secs().div_ceil(60);
    let stats = mock.stats();
    Report {
        delivered: latencies.len() as u64,
        failed,
        capacity: scenario.projects as u64 * u64::from(scenario.rpm) * windows,
        upstream: stats.total_requests(),
        upstream_429: stats.responses_with_status(429),
        upstream_503: stats.responses_with_status(503),
        p50: at(0.5),
        p99: at(0.99),
        longest: latencies.last().copied().unwrap_or_default(),
    }
}
