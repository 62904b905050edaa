//! What a key costs the gateway in memory under load: every key of 1,000 served several times
//! (so each has its pool state, its circuit and quota rows, its metric series and their
//! handles), measured by counting the allocator's live bytes. A gateway of 100 keys under the
//! same load is the baseline: the difference is what the other 1,000 keys hold.
//!
//! (A latency histogram per key was once a Prometheus summary per key, a sketch of several KiB:
//! with 1,000 keys the gateway's RSS reached 38–96 MiB.)
#![cfg(feature = "gateway")]

mod common;

use bytes::Bytes;
use common::alloc::{Counting, live_bytes};
use common::gateway::{config_from, start};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const TOKEN: &str = "client-token-memory-01";
/// What a key may hold in the gateway: the library's state (1.4 KiB, see `memory_per_key.rs`),
/// its metric series and their handles (2.3 KiB in all, measured; 3.1 KiB with a latency
/// histogram per key, which this bound refuses).
const PER_KEY_BOUND: isize = 3 * 1024;
/// The live heap of the whole process (gateway, upstream, clients) with 1,000 keys under load.
const WHOLE_BOUND: isize = 30 << 20;

/// An upstream that answers every request at once, whatever its key.
async fn upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let answer = |request: http::Request<Incoming>| async move {
                    let _ = request.into_body().collect().await?;
                    Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from_static(
                        br#"{"candidates":[{"content":{"parts":[{"text":"hi"}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":2,"candidatesTokenCount":1,"totalTokenCount":3}}"#,
                    ))))
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(answer))
                    .await;
            });
        }
    });
    url
}

/// Four base-36 digits of `n`: keys whose fingerprints (their last four characters) differ
/// from run to run, so no run reuses another's metric series.
fn suffix(n: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..4)
        .rev()
        .map(|place| DIGITS[n / 36usize.pow(place) % 36] as char)
        .collect()
}

/// Live bytes held once a gateway of `keys` keys (numbered from `first`) has served
/// `requests` requests from 16 connections, while it still runs.
async fn held_by_gateway(upstream: &str, first: usize, keys: usize, requests: usize) -> isize {
    let before = live_bytes();
    let names: Vec<String> = (first..first + keys)
        .map(|i| format!("test-key-mem-{}", suffix(i)))
        .collect();
    let names = names.join(",");
    let mut gateway = start(config_from(&[
        ("GEMINI_API_KEY", names.as_str()),
        ("GATEWAY_TOKENS", TOKEN),
        ("LLM_API_ENDPOINT", upstream),
    ]))
    .await;
    let url = format!(
        "{}/v1beta/models/gemini-2.0-flash:generateContent",
        gateway.base
    );
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = common::client();
                for _ in 0..requests / 16 {
                    let request = http::Request::post(&url)
                        .header("x-goog-api-key", TOKEN)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from_static(
                            br#"{"contents":[{"parts":[{"text":"hello"}]}]}"#,
                        )))
                        .unwrap();
                    let answer = client.request(request).await.unwrap();
                    assert!(answer.status().is_success(), "{}", answer.status());
                    let _ = answer.into_body().collect().await.unwrap();
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    let held = live_bytes() - before;
    let _ = gateway.stop.take().map(|stop| stop.send(()));
    let _ = (&mut gateway.served).await;
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_costs_the_gateway_a_few_kib_under_load() {
    let upstream = upstream().await;
    // Warm what every gateway shares once (the metrics recorder, TLS roots, the runtime).
    held_by_gateway(&upstream, 0, 10, 160).await;
    // Every key served at least three times in both runs (round robin over the keys).
    let requests = 3_520;
    let small = held_by_gateway(&upstream, 100, 100, requests).await;
    let whole_before = live_bytes();
    let large = held_by_gateway(&upstream, 1_000, 1_100, requests).await;
    let per_key = (large - small) / 1_000;
    eprintln!(
        "{per_key} bytes per key in the gateway (100 keys: {small} bytes held, 1,100 keys: {large}); live heap {} MiB",
        (whole_before + large) >> 20
    );
    assert!(per_key > 0, "nothing measured");
    assert!(per_key <= PER_KEY_BOUND, "{per_key} bytes per key");
    assert!(
        whole_before + large <= WHOLE_BOUND,
        "{} bytes live with 1,100 keys",
        whole_before + large
    );
}
