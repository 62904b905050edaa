//! `gemini-gateway demo`: the gateway's main job on a fresh machine, with no key and no network.
//!
//! It starts the mock Gemini (four projects: one key Google does not know, one project with a
//! tiny daily quota, two healthy ones with per-minute limits, and a few overloaded answers),
//! starts the gateway in-process, drives closed-loop clients over real HTTP for a while, prints
//! progress every second and a summary, and writes an SVG chart of each key's traffic. The pool
//! and the mock share a [`ScaledClock`], so a few seconds show minutes of quota windows.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{GatewayConfig, Token, serve_on};
use crate::clock::ScaledClock;
use crate::error::Error;
use crate::mock::{Fault, MockGemini};
use crate::pool::{KeyPool, KeySpec, ModelLimits};

const MODEL: &str = "gemini-2.0-flash";
/// The scarce model some clients ask for: a few requests a day, then it falls back to MODEL.
const SCARCE: &str = "gemini-2.5-pro";
const TOKEN: &str = "demo-client-token-0001";
/// Deterministic prompts the clients repeat (about 30 % of what they send): the cache answers.
const REPEATED: [&str; 4] = [
    "What is the capital of France?",
    "Summarise the plot of Hamlet in one line.",
    "Translate 'good morning' into Italian.",
    "List three prime numbers.",
];

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How long the clients send, in real seconds.
    pub seconds: u64,
    /// Closed-loop clients.
    pub clients: usize,
    /// How much faster than real time the quota clock runs.
    pub speed: u32,
    /// Where to write the SVG chart (`None`: no chart).
    pub chart: Option<PathBuf>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            seconds: 20,
            clients: 16,
            speed: 12,
            chart: Some(PathBuf::from("gemini-gateway-demo.svg")),
        }
    }
}

/// What the demo measured.
#[derive(Debug, Clone, Default)]
pub struct DemoSummary {
    /// Requests the clients sent.
    pub requests: u64,
    /// Answered 200.
    pub successes: u64,
    /// Anything else the clients saw.
    pub failures: u64,
    /// Requests that reached the mock (first attempts and retries).
    pub upstream_requests: u64,
    /// The mock's answers by status.
    pub upstream_statuses: Vec<(u16, u64)>,
    /// Successful answers per key fingerprint.
    pub per_key: BTreeMap<String, u64>,
    /// Answers from the gateway's cache (`x-gemini-cache: hit`).
    pub cache_hits: u64,
    /// Requests for the scarce model served by its fallback (`x-gemini-model`).
    pub fallbacks: u64,
    /// Requests for the scarce model.
    pub scarce_requests: u64,
    /// Client-seen latency, milliseconds: median and 99th percentile.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
}

impl DemoSummary {
    /// The summary as text.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "requests sent by clients   {}", self.requests);
        let _ = writeln!(out, "  answered 200             {}", self.successes);
        let _ = writeln!(out, "  client-visible failures  {}", self.failures);
        let _ = writeln!(
            out,
            "requests that reached Gemini (mock) {}: {}",
            self.upstream_requests,
            self.upstream_statuses
                .iter()
                .map(|(s, n)| format!("{n}× {s}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let absorbed: u64 = self
            .upstream_statuses
            .iter()
            .filter(|(s, _)| *s != 200)
            .map(|(_, n)| n)
            .sum();
        let _ = writeln!(
            out,
            "  upstream errors absorbed by rotation and retries: {absorbed}"
        );
        let _ = writeln!(
            out,
            "latency seen by clients: p50 {:.0} ms, p99 {:.0} ms (waits for quota included)",
            self.p50_ms, self.p99_ms
        );
        let _ = writeln!(
            out,
            "answers from the gateway's cache (repeated prompts, no key or quota spent): {}",
            self.cache_hits
        );
        let _ = writeln!(
            out,
            "requests for {SCARCE}: {}, of which {} served by {MODEL} once its daily quota was spent (fallback)",
            self.scarce_requests, self.fallbacks
        );
        let _ = writeln!(out, "answers per key:");
        for (key, n) in &self.per_key {
            let _ = writeln!(out, "  {key}  {n}");
        }
        out
    }
}

/// Run the demo: mock, gateway, clients, summary (and the chart, if asked for).
pub async fn run(options: &DemoOptions) -> Result<DemoSummary, Error> {
    // Quota time starts at noon Pacific of today, whenever the demo runs: its daily quotas
    // (Google's days end at midnight Pacific) do not reset in the middle of it.
    let today = crate::clock::pacific_day_start(crate::clock::Clock::now_millis(
        &crate::clock::SystemClock::new(),
    ));
    let noon = jiff::Timestamp::from_millisecond((today + 12 * 3600 * 1000) as i64)
        .unwrap_or_else(|_| jiff::Timestamp::now());
    let clock = ScaledClock::starting_at(noon, options.speed);
    let per_minute = ModelLimits {
        rpm: Some(60),
        ..ModelLimits::default()
    };
    // Three requests of the scarce model per project per day, known to the pool.
    let scarce = ModelLimits {
        rpd: Some(3),
        ..ModelLimits::default()
    };
    let mock = MockGemini::builder()
        .project("proj-daily", |p| {
            p.key("demo-key-0002").limits(
                MODEL,
                ModelLimits {
                    rpd: Some(10),
                    ..ModelLimits::default()
                },
            )
        })
        .project("proj-a", |p| {
            p.key("demo-key-0003").limits(MODEL, per_minute)
        })
        .project("proj-b", |p| {
            p.key("demo-key-0004").limits(MODEL, per_minute)
        })
        .fault(Fault::overloaded(0.03))
        .fault(Fault::latency(Duration::from_millis(30)))
        .seed(7)
        .clock(clock)
        .start()
        .await
        .map_err(|e| Error::config(format!("cannot start the mock: {e}")))?;
    // The pool knows the per-minute limits; the daily one it learns from Google's first 429.
    let pool = KeyPool::builder()
        .key_with(KeySpec::new("demo-key-0001").name("typo"))
        .key_with(KeySpec::new("demo-key-0002").project("proj-daily"))
        .key_with(KeySpec::new("demo-key-0003").project("proj-a"))
        .key_with(KeySpec::new("demo-key-0004").project("proj-b"))
        .project_model_limits("proj-a", MODEL, per_minute)
        .project_model_limits("proj-b", MODEL, per_minute)
        .model_limits(SCARCE, scarce)
        .clock(clock)
        .build()?;
    let mut config = GatewayConfig::new(
        pool.clone(),
        mock.url(),
        vec![Token::new(TOKEN.to_owned())?],
    );
    config.model = MODEL.to_owned();
    config.saving.cache = Some(crate::cache::CacheLayer::new());
    config.saving.fallback = crate::fallback::FallbackLayer::new().chain(SCARCE, [MODEL])?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::config(format!("cannot listen on 127.0.0.1: {e}")))?;
    let gateway = format!(
        "http://{}",
        listener
            .local_addr()
            .map_err(|e| Error::config(format!("no local address: {e}")))?
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = serve_on(listener, &config, async {
            let _ = stopped.await;
        })
        .await;
    });
    println!(
        "mock Gemini on {}, gateway on {gateway}; {} clients for {} s (quota clock ×{} from noon Pacific)",
        mock.url(),
        options.clients,
        options.seconds,
        options.speed
    );

    let requests = Arc::new(AtomicU64::new(0));
    let successes = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let cache_hits = Arc::new(AtomicU64::new(0));
    let fallbacks = Arc::new(AtomicU64::new(0));
    let scarce_requests = Arc::new(AtomicU64::new(0));
    let end = crate::clock::instant_after(Instant::now(), Duration::from_secs(options.seconds));
    let url = format!("{gateway}/v1beta/models/{MODEL}:generateContent");
    let scarce_url = format!("{gateway}/v1beta/models/{SCARCE}:generateContent");
    let clients: Vec<_> = (0..options.clients)
        .map(|i| {
            let (requests, successes, failures, latencies, url, scarce_url) = (
                requests.clone(),
                successes.clone(),
                failures.clone(),
                latencies.clone(),
                url.clone(),
                scarce_url.clone(),
            );
            let (cache_hits, fallbacks, scarce_requests) =
                (cache_hits.clone(), fallbacks.clone(), scarce_requests.clone());
            tokio::spawn(async move {
                let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
                let mut n = 0u64;
                while Instant::now() < end {
                    n += 1;
                    // About 3 in 10 requests repeat a deterministic prompt; 1 in 10 asks for
                    // the scarce model; the rest are new questions.
                    let (body, url) = match (n + i as u64) % 10 {
                        0..=2 => (
                            format!(
                                r#"{{"contents":[{{"parts":[{{"text":"{}"}}]}}],"generationConfig":{{"temperature":0}}}}"#,
                                REPEATED[(n as usize + i) % REPEATED.len()]
                            ),
                            &url,
                        ),
                        3 => {
                            scarce_requests.fetch_add(1, Ordering::Relaxed);
                            (
                                format!(
                                    r#"{{"contents":[{{"parts":[{{"text":"client {i} hard question {n}"}}]}}]}}"#
                                ),
                                &scarce_url,
                            )
                        }
                        _ => (
                            format!(
                                r#"{{"contents":[{{"parts":[{{"text":"client {i} question {n}"}}]}}]}}"#
                            ),
                            &url,
                        ),
                    };
                    let Ok(request) = http::Request::post(url)
                        .header("content-type", "application/json")
                        .header("x-goog-api-key", TOKEN)
                        .body(Full::new(Bytes::from(body)))
                    else {
                        break;
                    };
                    let sent = Instant::now();
                    requests.fetch_add(1, Ordering::Relaxed);
                    let ok = match http.request(request).await {
                        Ok(response) => {
                            let ok = response.status().is_success();
                            let headers = response.headers();
                            if headers.get("x-gemini-cache").is_some_and(|v| v == "hit") {
                                cache_hits.fetch_add(1, Ordering::Relaxed);
                            }
                            if headers.contains_key("x-gemini-fallback") {
                                fallbacks.fetch_add(1, Ordering::Relaxed);
                            }
                            ok && response.into_body().collect().await.is_ok()
                        }
                        Err(_) => false,
                    };
                    let counter = if ok { &successes } else { &failures };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut l) = latencies.lock() {
                        l.push(sent.elapsed().as_secs_f64() * 1000.0);
                    }
                }
            })
        })
        .collect();

    // Progress, and the per-key series for the chart.
    let keys: Vec<String> = pool.fingerprints().map(|f| f.to_string()).collect();
    let mut series: Vec<Vec<u64>> = vec![Vec::new(); keys.len()];
    let mut last: Vec<u64> = vec![0; keys.len()];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    for second in 1..=options.seconds {
        tick.tick().await;
        let snapshot = pool.snapshot();
        let mut line = format!(
            "{second:>3}s  sent {:>5}  ok {:>5}  failed {:>3}  cached {:>4}  fell back {:>3} |",
            requests.load(Ordering::Relaxed),
            successes.load(Ordering::Relaxed),
            failures.load(Ordering::Relaxed),
            cache_hits.load(Ordering::Relaxed),
            fallbacks.load(Ordering::Relaxed)
        );
        for (i, key) in snapshot.keys.iter().enumerate() {
            let now = key.counters.successes;
            series[i].push(now - last[i]);
            last[i] = now;
            let state = format!("{:?}", key.state).to_lowercase();
            let _ = write!(line, "  {} {:>4} {state:<8}", key.fingerprint, now);
        }
        println!("{line}");
    }
    for client in clients {
        let _ = client.await;
    }
    let _ = stop.send(());
    let _ = server.await;

    let mut latencies = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round().max(0.0) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let snapshot = pool.snapshot();
    let summary = DemoSummary {
        requests: requests.load(Ordering::Relaxed),
        successes: successes.load(Ordering::Relaxed),
        failures: failures.load(Ordering::Relaxed),
        upstream_requests: mock.stats().total_requests(),
        upstream_statuses: mock.stats().statuses(),
        per_key: snapshot
            .keys
            .iter()
            .map(|k| (k.fingerprint.to_string(), k.counters.successes))
            .collect(),
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        cache_hits: cache_hits.load(Ordering::Relaxed),
        fallbacks: fallbacks.load(Ordering::Relaxed),
        scarce_requests: scarce_requests.load(Ordering::Relaxed),
    };
    if let Some(path) = &options.chart {
        let per_second = 2.0 * 60.0 * f64::from(options.speed) / 60.0;
        let svg = chart(&keys, &series, per_second);
        std::fs::write(path, svg).map_err(|e| {
            Error::config(format!("cannot write the chart to {}: {e}", path.display()))
        })?;
        println!("chart of answers per key per second: {}", path.display());
    }
    Ok(summary)
}

/// An SVG line chart: answers per second per key, and the two per-minute projects' combined
/// limit for comparison.
fn chart(keys: &[String], series: &[Vec<u64>], limit_per_second: f64) -> String {
    const W: f64 = 640.0;
    const H: f64 = 320.0;
    const PAD: f64 = 40.0;
    const COLORS: [&str; 6] = [
        "#1a73e8", "#d93025", "#188038", "#f9ab00", "#9334e6", "#12b5cb",
    ];
    let seconds = series.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let top = series
        .iter()
        .flatten()
        .copied()
        .map(|v| v as f64)
        .fold(limit_per_second, f64::max)
        .max(1.0);
    let x = |i: usize| PAD + (W - 2.0 * PAD) * i as f64 / (seconds.max(2) - 1) as f64;
    let y = |v: f64| H - PAD - (H - 2.0 * PAD) * v / top;
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="{PAD}" y="20">answers per second, per key (gemini-gateway demo)</text>
<line x1="{PAD}" y1="{b}" x2="{r}" y2="{b}" stroke="#999"/>
<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{b}" stroke="#999"/>
<line x1="{PAD}" y1="{ly:.1}" x2="{r}" y2="{ly:.1}" stroke="#999" stroke-dasharray="4 3"/>
<text x="{r}" y="{lt:.1}" text-anchor="end" fill="#666">per-minute limits of proj-a + proj-b</text>
"##,
        b = H - PAD,
        r = W - PAD,
        ly = y(limit_per_second),
        lt = y(limit_per_second) - 4.0,
    );
    for (k, (key, points)) in keys.iter().zip(series).enumerate() {
        let color = COLORS[k % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v as f64)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" fill="{color}">{key}</text>"#,
            W - PAD - 60.0,
            PAD + 14.0 * (k as f64 + 1.0)
        );
    }
    svg.push_str("</svg>\n");
    svg
}
