//! A Redis for the tests: `REDIS_URL` when set, else a `redis-server` of the test's own on a free
//! port when the binary is on this machine, else none (the test says it was skipped and how to
//! run it).
#![allow(dead_code, unreachable_pub)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub url: String,
    port: u16,
    child: Option<Child>,
    binary: Option<PathBuf>,
}

const HOW: &str = "install redis-server (apt-get install -y redis-server) or set REDIS_URL=redis://127.0.0.1:6379";

fn binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
}

fn skipped(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}; to run it, {HOW}");
}

impl Redis {
    /// `REDIS_URL` if set, else a server of our own.
    pub fn any(test: &str) -> Option<Redis> {
        if let Ok(url) = std::env::var("REDIS_URL")
            && !url.trim().is_empty()
        {
            return Some(Redis {
                url,
                port: 0,
                child: None,
                binary: None,
            });
        }
        Redis::own(test)
    }

    /// A server of our own (a test that stops and restarts it).
    pub fn own(test: &str) -> Option<Redis> {
        let Some(binary) = binary() else {
            skipped(test, "no redis-server on this machine");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Redis {
            url: format!("redis://127.0.0.1:{port}"),
            port,
            child: None,
            binary: Some(binary),
        };
        redis.start();
        Some(redis)
    }

    /// Start (again) on the same port; returns once it accepts connections.
    pub fn start(&mut self) {
        let binary = self.binary.as_ref().expect("only our own server restarts");
        let child = Command::new(binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A prefix of its own for each test and process: tests share one Redis safely.
    pub fn prefix(test: &str) -> String {
        format!("test-{}-{test}", std::process::id())
    }

    /// A plain connection for looking at what is stored.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One `generateContent` call for `gemini-2.0-flash` through `stack(pool)` to `mock`: its status.
pub async fn send(
    pool: &tower_gemini::KeyPool,
    mock: &tower_gemini::mock::MockServer,
) -> Result<http::StatusCode, tower_gemini::Error> {
    use tower::{Layer, ServiceExt};
    tower_gemini::stack(pool)
        .layer(super::client())
        .oneshot(super::generate(mock, super::FLASH, "hello"))
        .await
        .map(|response| response.status())
}

/// Wait (bounded: 200 polls 25 ms apart) until `done`: the store's writes and reconnections run
/// in the background.
pub async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: not within 5 s");
}
