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
    named("redis-server")
}

/// A binary of this name on the `PATH` (or in /usr/bin, /usr/sbin).
pub fn named(server: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(server))
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
        Some(Redis::started(binary))
    }

    /// A `valkey-server` of our own, if the machine has one (Debian 12: its backports;
    /// `.ci/redis-suites` installs it).
    pub fn valkey(test: &str) -> Option<Redis> {
        let Some(binary) = named("valkey-server") else {
            eprintln!("SKIPPED {test} on Valkey: no valkey-server on this machine");
            return None;
        };
        Some(Redis::started(binary))
    }

    fn started(binary: PathBuf) -> Redis {
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
        redis
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

    /// A plain connection for looking at what is stored (to a cluster if `REDIS_URL` names
    /// one).
    pub async fn connection(&self) -> Look {
        Look::to(&self.url).await
    }
}

/// A connection for looking at what is stored: to one Redis, or to a cluster
/// (`redis+cluster://host:port,…`; `KEYS` then asks every master).
#[derive(Clone)]
pub enum Look {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Look {
    pub async fn to(url: &str) -> Look {
        match url.strip_prefix("redis+cluster://") {
            Some(hosts) => {
                let nodes: Vec<String> = hosts
                    .split(',')
                    .map(|host| format!("redis://{}", host.trim_end_matches('/')))
                    .collect();
                Look::Cluster(
                    redis::cluster::ClusterClient::new(nodes)
                        .unwrap()
                        .get_async_connection()
                        .await
                        .unwrap(),
                )
            }
            None => Look::Single(
                redis::Client::open(url)
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap(),
            ),
        }
    }
}

impl redis::aio::ConnectionLike for Look {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Look::Single(c) => c.req_packed_command(cmd),
            Look::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Look::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Look::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Look::Single(c) => c.get_db(),
            Look::Cluster(c) => c.get_db(),
        }
    }
}

/// A Redis Cluster of three masters on 127.0.0.1 for the tests: `REDIS_CLUSTER_URL` when set,
/// else one started here (`redis-server --cluster-enabled yes` ×3, joined by
/// `redis-cli --cluster create`) when both binaries are on this machine, else none (the test
/// says it was skipped). Stopped, and its files removed, when dropped.
pub struct Cluster {
    pub url: String,
    nodes: Vec<Child>,
    dir: Option<PathBuf>,
    ports: Vec<u16>,
    server: Option<PathBuf>,
}

fn cli() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("redis-cli"))
        .find(|candidate| candidate.is_file())
}

/// A free port whose cluster bus port (10,000 above it) is free too.
pub fn cluster_port() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl Cluster {
    pub fn any(test: &str) -> Option<Cluster> {
        if let Ok(url) = std::env::var("REDIS_CLUSTER_URL")
            && !url.trim().is_empty()
        {
            return Some(Cluster {
                url,
                nodes: Vec::new(),
                dir: None,
                ports: Vec::new(),
                server: None,
            });
        }
        let (Some(server), Some(cli)) = (binary(), cli()) else {
            skipped(test, "no redis-server and redis-cli on this machine");
            return None;
        };
        let dir = std::env::temp_dir().join(format!("redis-cluster-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cluster = Cluster {
            url: String::new(),
            nodes: Vec::new(),
            dir: Some(dir.clone()),
            ports: Vec::new(),
            server: Some(server.clone()),
        };
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let port = cluster_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        cluster.ports = ports.clone();
        cluster.spawn_nodes();
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(created.success(), "redis-cli --cluster create failed");
        cluster.wait_ready();
        cluster.url = format!("redis+cluster://{}", addresses.join(","));
        Some(cluster)
    }

    /// Start every node (again: each keeps its slots in its `nodes-<port>.conf`); returns once
    /// they accept connections.
    fn spawn_nodes(&mut self) {
        let (Some(server), Some(dir)) = (self.server.clone(), self.dir.clone()) else {
            panic!("only a cluster of our own is started here");
        };
        for port in &self.ports {
            let child = Command::new(&server)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "3000"])
                .arg("--cluster-config-file")
                .arg(dir.join(format!("nodes-{port}.conf")))
                .arg("--dir")
                .arg(&dir)
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server starts");
            self.nodes.push(child);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in &self.ports {
            while TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not come up");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Every node knows every slot's owner (bounded: 20 s).
    fn wait_ready(&self) {
        let cli = cli().expect("redis-cli");
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in &self.ports {
            loop {
                let info = Command::new(&cli)
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli runs");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not become ready"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Is it a cluster of our own (which `stop` and `start` can stop and start)?
    pub fn is_own(&self) -> bool {
        self.server.is_some()
    }

    /// Kill every node, as a crash of the whole cluster would (what they held is lost; their
    /// slots are not).
    pub fn stop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        self.nodes.clear();
    }

    /// Start the nodes again and wait until the cluster serves.
    pub fn start(&mut self) {
        self.spawn_nodes();
        self.wait_ready();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
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
