//! What the gateway adds, measured: the same closed-loop load against the mock directly and
//! through the gateway, in one run, on 127.0.0.1; then the process's memory with 1,000 keys.
//!
//! ```text
//! cargo run --release --features gateway --example gateway_load -- [seconds] [connections]
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;
use tower_gemini::KeyPool;
use tower_gemini::gateway::{GatewayConfig, Token, serve_on};
use tower_gemini::mock::MockGemini;

const MODEL: &str = "gemini-2.0-flash";

struct Run {
    requests: u64,
    p50_us: f64,
    p99_us: f64,
    per_second: f64,
}

/// `connections` closed-loop clients for `seconds` against `url` with `key` as x-goog-api-key.
async fn load(url: &str, key: &str, seconds: u64, connections: usize) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (url, key, stop) = (url.to_owned(), key.to_owned(), stop.clone());
            tokio::spawn(async move {
                let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
                let body = Bytes::from_static(br#"{"contents":[{"parts":[{"text":"hello"}]}]}"#);
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let request = http::Request::post(&url)
                        .header("content-type", "application/json")
                        .header("x-goog-api-key", &key)
                        .body(Full::new(body.clone()))
                        .expect("a valid request");
                    let sent = Instant::now();
                    let response = http.request(request).await.expect("an answer");
                    assert!(response.status().is_success(), "{}", response.status());
                    response.into_body().collect().await.expect("a body");
                    latencies.push(sent.elapsed().as_secs_f64() * 1e6);
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("a client"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let pick = |q: f64| all[((all.len() - 1) as f64 * q) as usize];
    Run {
        requests: all.len() as u64,
        p50_us: pick(0.5),
        p99_us: pick(0.99),
        per_second: all.len() as f64 / elapsed,
    }
}

fn rss_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[tokio::main]
async fn main() -> Result<(), tower_gemini::BoxError> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let connections: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);

    let keys: Vec<String> = (0..4).map(|i| format!("load-test-key-{i:04}")).collect();
    let mock = keys
        .iter()
        .enumerate()
        .fold(MockGemini::builder(), |b, (i, k)| {
            b.project(format!("p{i}"), |p| p.key(k.clone()))
        })
        .start()
        .await?;
    let token = || Token::new("load-client-token-0001".to_owned());
    let config = GatewayConfig::new(
        KeyPool::from_keys(keys.clone())?,
        mock.url(),
        vec![token()?],
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gateway = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { serve_on(listener, &config, std::future::pending()).await });

    let path = format!("/v1beta/models/{MODEL}:generateContent");
    println!("{connections} connections, {seconds} s each, on 127.0.0.1");
    // Warm both paths, then measure the mock directly and through the gateway, back to back.
    load(&format!("{}{path}", mock.url()), &keys[0], 1, connections).await;
    load(
        &format!("{gateway}{path}"),
        "load-client-token-0001",
        1,
        connections,
    )
    .await;
    let direct = load(
        &format!("{}{path}", mock.url()),
        &keys[0],
        seconds,
        connections,
    )
    .await;
    let proxied = load(
        &format!("{gateway}{path}"),
        "load-client-token-0001",
        seconds,
        connections,
    )
    .await;
    println!("| path | requests | per second | p50 | p99 |");
    println!("|---|---|---|---|---|");
    for (name, run) in [
        ("mock directly", &direct),
        ("through the gateway", &proxied),
    ] {
        println!(
            "| {name} | {} | {:.0} | {:.0} µs | {:.0} µs |",
            run.requests, run.per_second, run.p50_us, run.p99_us
        );
    }
    println!(
        "\ngateway adds {:.0} µs at the median, {:.0} µs at p99; throughput {:.0} % of direct",
        proxied.p50_us - direct.p50_us,
        proxied.p99_us - direct.p99_us,
        100.0 * proxied.per_second / direct.per_second
    );

    // Memory with 1,000 keys.
    let before = rss_kib().unwrap_or(0);
    let many: Vec<String> = (0..1000).map(|i| format!("load-test-key-{i:06}")).collect();
    let big = KeyPool::from_keys(many)?;
    let router = tower_gemini::gateway::router(&GatewayConfig::new(
        big,
        "http://127.0.0.1:9",
        vec![token()?],
    ));
    let after = rss_kib().unwrap_or(0);
    println!(
        "process RSS: {:.1} MiB in all after the load; a second gateway with 1,000 keys added {:.1} MiB",
        after as f64 / 1024.0,
        after.saturating_sub(before) as f64 / 1024.0
    );
    drop(router);
    Ok(())
}
