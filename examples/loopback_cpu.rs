//! What the stack costs the calling process over real HTTP: the same hyper client called
//! directly and through `stack(&pool)`, 50 concurrent callers, against the mock in a child
//! process on 127.0.0.1 (so the mock's own work is not counted), in one run.
//!
//! ```text
//! cargo run --release --example loopback_cpu -- [requests per round] [rounds] [tracing]
//! ```
//!
//! With `tracing` as the third argument, a `tracing-subscriber` fmt subscriber at INFO is
//! installed (writing to a sink), as a service that logs would have: the stack's spans are
//! then recorded, and cost what they cost.
//!
//! Each round sends the requests once directly and once through the stack; the CPU time of
//! this process (user + system, from `/proc/self/stat`, Linux) is divided by the requests. The
//! lowest figure over the rounds is reported for each, with the difference and the ratio.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, Service, ServiceExt};
use tower_gemini::mock::MockGemini;
use tower_gemini::{BoxError, KeyPool, stack};

const MODEL: &str = "gemini-2.0-flash";
const CALLERS: usize = 50;
const KEYS: usize = 10;
const PROMPT: &str = r#"{"contents":[{"role":"user","parts":[{"text":"Explain tower middleware in one paragraph."}]}]}"#;

fn key(i: usize) -> String {
    format!("test-key-{i:04}")
}

/// The child: serve the mock until the parent closes our stdin.
fn serve_mock() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mock = (0..KEYS)
            .fold(MockGemini::builder(), |builder, i| {
                builder.project(format!("proj-{i}"), |p| p.key(key(i)))
            })
            .start()
            .await
            .expect("the mock binds 127.0.0.1");
        println!("{}", mock.model_url(MODEL, "generateContent"));
        std::io::stdout().flush().expect("stdout");
        // EOF on stdin: the parent is done (or gone).
        let _ = tokio::task::spawn_blocking(|| std::io::stdin().lines().count()).await;
        drop(mock);
    });
}

/// This process's CPU time so far (user + system), from `/proc/self/stat` (ticks of 1/100 s).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat (Linux)");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("a stat line") + 2..]
        .split(' ')
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// `requests` calls through `service`, `CALLERS` at a time; the CPU time spent per call.
async fn round<S, RB>(service: &S, url: &str, requests: usize, with_key: bool) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    RB: http_body::Body,
    RB::Error: std::fmt::Debug,
{
    let started = cpu_time();
    let callers = (0..CALLERS).map(|c| {
        let service = service.clone();
        let url = url.to_owned();
        let share = requests / CALLERS + usize::from(c < requests % CALLERS);
        async move {
            for i in 0..share {
                let mut request = Request::post(&url)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(PROMPT.as_bytes())))
                    .expect("a request");
                if with_key {
                    // Called directly, the caller picks a key itself.
                    let value = key((c + i) % KEYS).parse().expect("a header value");
                    request.headers_mut().insert("x-goog-api-key", value);
                }
                let response = service
                    .clone()
                    .oneshot(request)
                    .await
                    .map_err(Into::into)
                    .expect("an answer");
                assert!(response.status().is_success(), "{}", response.status());
                response.into_body().collect().await.expect("a body");
            }
        }
    });
    join_all(callers).await;
    (cpu_time() - started) / requests as u32
}

fn main() {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("mock") {
        return serve_mock();
    }
    let requests: usize = first.and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let rounds: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(3);
    let tracing = args.next().as_deref() == Some("tracing");
    if tracing {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(std::io::sink)
            .init();
    }

    let mut child = Command::new(std::env::current_exe().expect("this example's path"))
        .arg("mock")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the mock process");
    let mut url = String::new();
    BufReader::new(child.stdout.take().expect("its stdout"))
        .read_line(&mut url)
        .expect("the mock's URL");
    let url = url.trim().to_owned();

    let pool = KeyPool::from_keys((0..KEYS).map(key)).expect("fake keys make a pool");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let (direct, layered) = runtime.block_on(async {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let gemini = stack(&pool).layer(client.clone());
        // Warm both up: connections open, tables filled.
        round(&client, &url, CALLERS * 4, true).await;
        round(&gemini, &url, CALLERS * 4, false).await;
        let (mut direct, mut layered) = (Duration::MAX, Duration::MAX);
        for _ in 0..rounds {
            direct = direct.min(round(&client, &url, requests, true).await);
            layered = layered.min(round(&gemini, &url, requests, false).await);
        }
        (direct, layered)
    });
    drop(child.stdin.take());
    let _ = child.wait();

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let subscriber = if tracing {
        "an INFO subscriber"
    } else {
        "no subscriber"
    };
    println!(
        "{requests} requests × {rounds} rounds, {CALLERS} callers, {KEYS} keys, {subscriber}; CPU of the calling process per request (lowest round):"
    );
    println!("  hyper client alone      {:>7.1} µs", us(direct));
    println!("  through stack(&pool)    {:>7.1} µs", us(layered));
    println!(
        "  the stack adds          {:>7.1} µs ({:.2}× the client alone)",
        us(layered) - us(direct),
        us(layered) / us(direct)
    );
}
