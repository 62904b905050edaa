//! Faults over real HTTP, client → gateway → upstream: 503 storms, connection refused, resets
//! mid-response, an upstream that never answers, trickling and endless error bodies, an error
//! inside an SSE stream, a truncated stream. Each ends in a clear error to the client (or a
//! served request), promptly, with nothing buffered without bound and no chunk sent twice.
#![cfg(feature = "gateway")]

mod common;

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::Bytes;
use common::gateway::{Gateway, config_from, start};
use common::{client, drain, serve, text};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tower_gemini::cache::CacheLayer;
use tower_gemini::mock::{Fault, MockGemini};

const TOKEN: &str = "client-token-faults-01";
const ADMIN: &str = "admin-token-faults-01";
const KEYS: [&str; 3] = [
    "test-key-faults-0001",
    "test-key-faults-0002",
    "test-key-faults-0003",
];
const MODEL: &str = "gemini-2.0-flash";
const ROUTE: &str = "/v1beta/models/{model_and_method}";

/// A gateway over `upstream` with the three keys, each its own project, and a response cache
/// (it caches the requests that ask for it with `x-gemini-cache: yes`: see [`cached`]).
async fn gateway_over(upstream: &str, extra: &[(&str, &str)]) -> (Gateway, CacheLayer) {
    let keys = KEYS.join(",");
    let mut vars = vec![
        ("GEMINI_API_KEY", keys.as_str()),
        ("GATEWAY_TOKENS", TOKEN),
        ("ADMIN_TOKEN", ADMIN),
        ("LLM_API_ENDPOINT", upstream),
        ("LLM_MODEL", MODEL),
    ];
    vars.extend_from_slice(extra);
    let mut config = config_from(&vars);
    let cache = CacheLayer::new();
    config.saving.cache = Some(cache.clone());
    (start(config).await, cache)
}

/// `request`, asking the gateway's cache to keep its answer if it ends whole.
fn cached(mut request: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    request
        .headers_mut()
        .insert("x-gemini-cache", "yes".parse().unwrap());
    request
}

/// The cache was asked (one miss) and kept nothing: a broken answer is never served again.
fn kept_nothing(cache: &CacheLayer) {
    let stats = cache.stats();
    assert_eq!((stats.misses, stats.entries), (1, 0), "{stats:?}");
}

fn mock_builder() -> MockGemini {
    MockGemini::builder()
        .project("proj-a", |p| p.key(KEYS[0]))
        .project("proj-b", |p| p.key(KEYS[1]))
        .project("proj-c", |p| p.key(KEYS[2]))
}

fn generate(gateway: &Gateway) -> Request<Full<Bytes>> {
    Request::post(format!(
        "{}/v1beta/models/{MODEL}:generateContent",
        gateway.base
    ))
    .header("x-goog-api-key", TOKEN)
    .header("content-type", "application/json")
    .body(Full::new(Bytes::from(common::generate_body(
        "hello faults",
    ))))
    .unwrap()
}

fn stream(gateway: &Gateway) -> Request<Full<Bytes>> {
    Request::post(format!(
        "{}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
        gateway.base
    ))
    .header("x-goog-api-key", TOKEN)
    .header("content-type", "application/json")
    .body(Full::new(Bytes::from(common::generate_body(
        "one two three four five six seven eight",
    ))))
    .unwrap()
}

/// The error message of a gateway error body (native shape).
fn message(body: &str) -> String {
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:.300}"));
    json["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {body:.300}"))
        .to_owned()
}

#[tokio::test(start_paused = true)]
async fn a_503_storm_opens_the_circuit_then_the_gateway_recovers() {
    let mock = mock_builder()
        .fault(Fault::overloaded(1.0))
        .start()
        .await
        .unwrap();
    let (gateway, _) = gateway_over(&mock.url(), &[]).await;
    // The first calls retry on other keys and fail; after 10 failed calls the model's circuit
    // opens.
    let mut opened = false;
    for _ in 0..10 {
        let response = client().request(generate(&gateway)).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let message = message(&text(response).await);
        opened |= message.contains("circuit open");
    }
    assert!(opened, "the circuit opened during the storm");
    // While it is open, a caller waits (up to the gateway's bound) for the next half-open
    // probe: the upstream sees one probe per 60 s cool-down, not a call per attempt.
    let sent = mock.stats().total_requests();
    let started = Instant::now();
    for _ in 0..10 {
        let response = client().request(generate(&gateway)).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let retry_after = response.headers().get("retry-after").cloned();
        let message = message(&text(response).await);
        // The local refusal says when to come back; a probe's own 503 is passed on as is.
        if message.contains("circuit open") {
            assert!(retry_after.is_some(), "{message}");
        } else {
            assert!(message.contains("overloaded"), "{message}");
        }
    }
    let probes = mock.stats().total_requests() - sent;
    let cooldowns = started.elapsed().as_secs() / 60 + 1;
    assert!(
        probes <= cooldowns,
        "{probes} calls in {:?} of open circuit",
        started.elapsed()
    );
    // Google recovers; after the cool-down the half-open probe closes the circuit.
    mock.set_faults([]);
    tokio::time::sleep(Duration::from_secs(120)).await;
    for _ in 0..5 {
        let response = client().request(generate(&gateway)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn connection_refused_is_a_clear_502_and_nothing_hangs() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (gateway, _) = gateway_over(&format!("http://127.0.0.1:{port}"), &[]).await;
    let started = std::time::Instant::now();
    let response = client().request(generate(&gateway)).await.unwrap();
    let status = response.status();
    let message = message(&text(response).await);
    assert!(
        status == StatusCode::BAD_GATEWAY || status == StatusCode::SERVICE_UNAVAILABLE,
        "{status} {message}"
    );
    assert!(
        message.to_ascii_lowercase().contains("connect"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// An upstream on raw TCP: reads one request head (and its body, by content-length), then runs
/// `answer` on the connection.
async fn raw_upstream<F, Fut>(answer: F) -> String
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = tcp.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                answer(tcp).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_reset_mid_response_reaches_the_client_as_an_error_not_a_short_answer() {
    let upstream = raw_upstream(|mut tcp| async move {
        let head =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 4000\r\n\r\n";
        let _ = tcp.write_all(head.as_bytes()).await;
        let _ = tcp.write_all(b"{\"candidates\": [").await;
        // Reset, not a clean close. Linger 0 makes the close a reset; it does not block (the deprecation's concern).
        #[allow(deprecated)]
        let _ = tcp.set_linger(Some(Duration::ZERO));
        drop(tcp);
    })
    .await;
    let (gateway, cache) = gateway_over(&upstream, &[]).await;
    let response = client().request(generate(&gateway)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the head had arrived");
    let (received, error) = drain(response.into_body()).await;
    assert!(
        error.is_some(),
        "a cut answer must not look complete: {received:?}"
    );
    assert!(received.len() < 4000);
    // A request the cache would keep is read whole before anything goes to the client: a cut
    // answer is then a clear error, and nothing is kept.
    let response = client().request(cached(generate(&gateway))).await.unwrap();
    assert!(response.status().is_server_error(), "{}", response.status());
    let said = message(&text(response).await);
    assert!(said.contains("cut short"), "{said}");
    kept_nothing(&cache);
    // The gateway is still fine for the next caller.
    let health = client()
        .request(
            Request::get(format!("{}/healthz", gateway.base))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn resets_before_the_answer_are_retried_on_other_keys() {
    let mock = mock_builder()
        .fault(Fault::connection_reset(0.15))
        .seed(7)
        .start()
        .await
        .unwrap();
    let (gateway, _) = gateway_over(&mock.url(), &[]).await;
    for _ in 0..30 {
        let response = client().request(generate(&gateway)).await.unwrap();
        let status = response.status();
        let body = text(response).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert!(
        mock.stats().total_requests() > 30,
        "some were resets, retried"
    );
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_never_answers_is_a_504_at_the_deadline() {
    let upstream = serve(Router::new().route(
        ROUTE,
        post(|| async {
            tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
            StatusCode::OK
        }),
    ))
    .await;
    let (gateway, _) = gateway_over(&upstream, &[]).await;
    let started = Instant::now();
    let response = client().request(generate(&gateway)).await.unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let message = message(&text(response).await);
    assert!(message.contains("deadline"), "{message}");
    assert!(
        started.elapsed() <= Duration::from_secs(600),
        "{:?}",
        started.elapsed()
    );
}

/// A body of `chunk` repeated for ever (or `total` bytes), a chunk every `every`.
fn junk(total: Option<usize>, every: Duration) -> Body {
    let stream = futures_util::stream::unfold(0usize, move |sent| async move {
        if total.is_some_and(|total| sent >= total) {
            return None;
        }
        if !every.is_zero() {
            tokio::time::sleep(every).await;
        }
        let chunk = Bytes::from(vec![b'#'; 64 * 1024]);
        let len = chunk.len();
        Some((Ok::<_, Infallible>(chunk), sent + len))
    });
    Body::from_stream(stream)
}

#[tokio::test]
async fn ten_mib_and_endless_junk_429_bodies_are_streamed_never_buffered() {
    for total in [Some(10 << 20), None] {
        let upstream = serve(Router::new().route(
            ROUTE,
            post(move || async move {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("content-type", "application/json")],
                    junk(total, Duration::ZERO),
                )
                    .into_response()
            }),
        ))
        .await;
        let (gateway, cache) = gateway_over(&upstream, &[]).await;
        // The answer's head comes back though the body never ends (an endless body cannot
        // have been buffered), and the client can stop reading whenever it likes.
        let response = tokio::time::timeout(
            Duration::from_secs(60),
            client().request(cached(generate(&gateway))),
        )
        .await
        .expect("the head arrives")
        .unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let mut body = response.into_body();
        let mut read = 0;
        while read < (1 << 20) {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
                _ => break,
            }
        }
        assert!(read >= 1 << 20, "the junk is passed on as it comes");
        drop(body);
        kept_nothing(&cache);
    }
}

#[tokio::test(start_paused = true)]
async fn a_trickling_error_body_is_classified_from_what_arrived_and_answered() {
    let upstream = serve(Router::new().route(
        ROUTE,
        post(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                junk(Some(1 << 20), Duration::from_secs(3)),
            )
                .into_response()
        }),
    ))
    .await;
    let (gateway, _) = gateway_over(&upstream, &[]).await;
    let started = Instant::now();
    let response = client().request(generate(&gateway)).await.unwrap();
    // Each attempt's error is read for at most 5 s; the client has its answer long before the
    // 50 s the body would take.
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(150),
        "{:?}",
        started.elapsed()
    );
}

/// The `data:` payloads of an SSE text.
fn events(sse: &str) -> Vec<String> {
    sse.replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(|event| event.trim().strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_json_error_inside_an_sse_stream_reaches_the_client_once_and_ends_it() {
    let mock = mock_builder()
        .stream_chunks(4)
        .fault(Fault::mid_stream_error(1.0))
        .start()
        .await
        .unwrap();
    let (gateway, cache) = gateway_over(&mock.url(), &[]).await;
    let response = client().request(cached(stream(&gateway))).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (received, _) = drain(response.into_body()).await;
    kept_nothing(&cache);
    let events = events(&received);
    let errors = events.iter().filter(|e| e.contains("\"error\"")).count();
    assert_eq!(errors, 1, "{received}");
    let unique: std::collections::BTreeSet<_> = events.iter().collect();
    assert_eq!(unique.len(), events.len(), "no chunk twice: {received}");
    // Once bytes went to the client, nothing is retried under it.
    assert_eq!(mock.stats().total_requests(), 1);
}

#[tokio::test]
async fn a_truncated_sse_stream_ends_in_an_error_with_no_chunk_repeated() {
    let upstream = raw_upstream(|mut tcp| async move {
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        let _ = tcp.write_all(head.as_bytes()).await;
        for n in 0..2 {
            let event = format!(
                "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"part {n}\"}}]}}}}]}}\r\n\r\n"
            );
            let chunk = format!("{:x}\r\n{event}\r\n", event.len());
            let _ = tcp.write_all(chunk.as_bytes()).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Gone, without the last chunk: a reset. Linger 0 makes the close a reset; it does not block (the deprecation's concern).
        #[allow(deprecated)]
        let _ = tcp.set_linger(Some(Duration::ZERO));
        drop(tcp);
    })
    .await;
    let (gateway, cache) = gateway_over(&upstream, &[]).await;
    let response = client().request(cached(stream(&gateway))).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (received, error) = drain(response.into_body()).await;
    kept_nothing(&cache);
    assert!(
        error.is_some(),
        "a cut stream must not end cleanly: {received:?}"
    );
    let events = events(&received);
    assert_eq!(events.len(), 2, "{received:?}");
    assert!(events[0].contains("part 0") && events[1].contains("part 1"));
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_killed_and_restarted_mid_run_costs_no_request_and_loses_no_count() {
    use common::redis::{Redis, eventually};
    let Some(mut redis) =
        Redis::own("redis_killed_and_restarted_mid_run_costs_no_request_and_loses_no_count")
    else {
        return;
    };
    let mock = mock_builder().start().await.unwrap();
    let prefix = Redis::prefix("faults-gateway");
    let (gateway, _) = gateway_over(
        &mock.url(),
        &[
            ("REDIS_URL", redis.url.as_str()),
            ("REDIS_PREFIX", prefix.as_str()),
        ],
    )
    .await;
    let sent = std::cell::Cell::new(0);
    let burst = async |n: usize| {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let request = generate(&gateway);
                tokio::spawn(async move { client().request(request).await.unwrap().status() })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), StatusCode::OK);
        }
        sent.set(sent.get() + n);
    };
    let status_api = || async {
        let request = Request::get(format!("{}/api/keys/status", gateway.base))
            .header("authorization", format!("Bearer {ADMIN}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let body = text(client().request(request).await.unwrap()).await;
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    burst(20).await;
    let store = status_api().await["store"].clone();
    assert_eq!(
        store,
        serde_json::json!({"shared": true, "reachable": true})
    );
    redis.stop();
    burst(20).await;
    // The status API says the gateway is on its own.
    assert_eq!(status_api().await["store"]["reachable"], false);
    redis.start();
    burst(20).await;
    eventually("the status API sees Redis back", async || {
        status_api().await["store"]["reachable"] == true
    })
    .await;
    let status = || async {
        let json = status_api().await;
        json["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["total_calls"].as_u64().unwrap())
            .sum::<u64>()
    };
    // Every answer is counted once, before, during and after the outage.
    assert_eq!(status().await, sent.get() as u64);
    assert_eq!(mock.stats().total_requests(), sent.get() as u64);
    // And shared admission is back: the store sees this gateway's calls again.
    let mut connection = redis.connection().await;
    eventually("the shared store counts calls again", async || {
        burst(1).await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut connection)
            .await
            .unwrap_or_default();
        !keys.is_empty()
    })
    .await;
}
