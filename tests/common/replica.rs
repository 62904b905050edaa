//! `gemini-gateway` processes for the replica tests, killed when dropped.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tower_gemini::mock::MockGemini;
use tower_gemini::pool::ModelLimits;

use super::{client, generate_body};

/// A gateway process, killed when dropped.
pub struct Replica {
    child: Child,
    pub base: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn replica(config: &std::path::Path, redis: &str) -> Replica {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_gemini-gateway"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--redis-url", redis])
        .env_remove("GEMINI_API_KEY")
        .env_remove("GOOGLE_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gemini-gateway starts");
    let replica = Replica {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "gemini-gateway did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    replica
}

const MODEL: &str = "gemini-2.0-flash";
const TOKEN: &str = "client-token-0001";
const RPM: u32 = 30;
/// Past the first window's end, so the minute boundary (when slots free and the waiting
/// callers rush in) is crossed: the moment a skewed or late ledger would let a 429 through.
const RUN: Duration = Duration::from_secs(75);
const CALLERS_PER_GATEWAY: usize = 8;

/// Three `gemini-gateway` processes over the Redis (or cluster) at `redis_url`, keys named
/// under `prefix`, and one mock whose projects allow 30 RPM each, driven together well over
/// the limit for 75 s: the mock answers no 429, every project's quota is used in both
/// windows, and no caller sees an error. (See `tests/redis_replicas.rs`.)
pub async fn three_gateways_share_one_quota(redis_url: &str, prefix: &str) {
    let limits = ModelLimits {
        rpm: Some(RPM),
        ..Default::default()
    };
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key("test-key-0001").limits(MODEL, limits))
        .project("proj-b", |p| p.key("test-key-0002").limits(MODEL, limits))
        .start()
        .await
        .unwrap();
    let dir =
        std::env::temp_dir().join(format!("redis-replicas-{}-{}", std::process::id(), prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "pacing = \"off\"\n\n\
             [[keys]]\nvalue = \"test-key-0001\"\nproject = \"proj-a\"\n\n\
             [[keys]]\nvalue = \"test-key-0002\"\nproject = \"proj-b\"\n\n\
             [models.\"{MODEL}\"]\nrpm = {RPM}\n\n\
             [gateway]\ntokens = [\"{TOKEN}\"]\nupstream = \"{}\"\nmax_wait_secs = 120\n\
             redis_prefix = \"{}\"\n",
            mock.url(),
            prefix,
        ),
    )
    .unwrap();
    let replicas: Vec<Replica> = (0..3).map(|_| replica(&config, redis_url)).collect();

    // Closed-loop callers on every gateway, for a minute; then whatever still waits is dropped.
    let answered = Arc::new(AtomicU64::new(0));
    let per_gateway: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut callers = Vec::new();
    for (g, replica) in replicas.iter().enumerate() {
        for _ in 0..CALLERS_PER_GATEWAY {
            let url = format!("{}/v1beta/models/{MODEL}:generateContent", replica.base);
            let (answered, mine, failures) =
                (answered.clone(), per_gateway[g].clone(), failures.clone());
            callers.push(tokio::spawn(async move {
                let http = client();
                while started.elapsed() < RUN {
                    let request = Request::post(&url)
                        .header("x-goog-api-key", TOKEN)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(generate_body("hello replicas"))))
                        .unwrap();
                    match http.request(request).await {
                        Ok(response) if response.status() == StatusCode::OK => {
                            answered.fetch_add(1, Ordering::Relaxed);
                            mine.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(response) => failures.lock().unwrap().push(response.status()),
                        Err(error) => failures.lock().unwrap().push({
                            let _ = error;
                            StatusCode::BAD_GATEWAY
                        }),
                    }
                }
            }));
        }
    }
    tokio::time::sleep(RUN).await;
    for caller in &callers {
        caller.abort();
    }
    drop(replicas);
    std::fs::remove_dir_all(&dir).ok();

    let stats = mock.stats();
    let sent = stats.total_requests();
    let answered = answered.load(Ordering::Relaxed);
    assert_eq!(
        stats.responses_with_status(429),
        0,
        "Google would have refused some: {:?}",
        stats.statuses()
    );
    assert!(
        failures.lock().unwrap().is_empty(),
        "callers saw errors: {:?}",
        failures.lock().unwrap()
    );
    // In 75 s each project can take its limit twice (the window that opens with the run, and
    // the next, which opens when the first requests leave it); and it did: the quota was used,
    // not left idle, on both sides of the boundary.
    let capacity = 2 * u64::from(RPM);
    assert!(sent <= 2 * capacity, "{sent} sent");
    assert!(
        answered >= 2 * capacity - 4,
        "only {answered} answered in 75 s"
    );
    for (g, count) in per_gateway.iter().enumerate() {
        assert!(
            count.load(Ordering::Relaxed) > 0,
            "gateway {g} served nothing"
        );
    }
    eprintln!(
        "3 gateways over {}, {} callers, {:?}: {answered} answered, {sent} sent upstream, 0 upstream 429",
        redis_url,
        3 * CALLERS_PER_GATEWAY,
        started.elapsed()
    );
}
