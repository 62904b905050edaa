//! Shared state over TLS (`rediss://`, `rediss+cluster://`), as managed Redis and Valkey
//! services ask: a `redis-server --tls-port` started here with a CA made here (rcgen), one Redis
//! and a three-master cluster (`--tls-cluster yes`), with and without client certificates; and
//! the errors a wrong setting gets before anything is sent. Skipped, saying so, without a
//! redis-server built with TLS (Debian's is).
#![cfg(all(feature = "redis-tls", feature = "gateway"))]

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::pki::Pki;
use common::redis::{Redis, cluster_port, eventually, named, send};
use http::{Request, StatusCode};
use http_body_util::Full;
use tower_gemini::mock::MockGemini;
use tower_gemini::pool::ModelLimits;
use tower_gemini::state::{RedisOptions, RedisStore, RedisTls};
use tower_gemini::{KeyPool, KeySpec};

const FLASH: &str = "gemini-2.0-flash";

/// Our CA's trust for a store; with `client`, the client certificate too.
fn tls(pki: &Pki, client: bool) -> RedisTls {
    let tls = RedisTls::default().ca_pem(pki.read("ca.pem"));
    match client {
        true => tls.client_pem(pki.read("client.pem"), pki.read("client.key")),
        false => tls,
    }
}

/// Redis servers speaking only TLS, on 127.0.0.1; killed when dropped.
struct TlsRedis {
    nodes: Vec<Child>,
    ports: Vec<u16>,
}

impl TlsRedis {
    /// `count` servers (a cluster when more than one), checking client certificates with
    /// `auth_clients`; `None`, saying so, without a redis-server built with TLS.
    fn start(test: &str, pki: &Pki, count: usize, auth_clients: bool) -> Option<TlsRedis> {
        let Some(server) = named("redis-server") else {
            eprintln!(
                "SKIPPED {test}: no redis-server on this machine (apt-get install -y redis-server)"
            );
            return None;
        };
        let mut redis = TlsRedis {
            nodes: Vec::new(),
            ports: Vec::new(),
        };
        while redis.ports.len() < count {
            let port = cluster_port();
            if !redis.ports.contains(&port) {
                redis.ports.push(port);
            }
        }
        for port in redis.ports.clone() {
            let mut command = Command::new(&server);
            command
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--tls-cert-file")
                .arg(pki.path("server.pem"))
                .arg("--tls-key-file")
                .arg(pki.path("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(pki.path("ca.pem"))
                .args([
                    "--tls-auth-clients",
                    if auth_clients { "yes" } else { "no" },
                ])
                .arg("--dir")
                .arg(&pki.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if count > 1 {
                command
                    .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "3000"])
                    .args(["--tls-cluster", "yes"])
                    .arg("--cluster-config-file")
                    .arg(pki.path(&format!("nodes-{port}.conf")));
            }
            redis
                .nodes
                .push(command.spawn().expect("redis-server starts"));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (node, port) in redis.nodes.iter_mut().zip(&redis.ports) {
            while TcpStream::connect(("127.0.0.1", *port)).is_err() {
                if let Ok(Some(status)) = node.try_wait() {
                    eprintln!(
                        "SKIPPED {test}: redis-server exited ({status}) with the TLS options: built without TLS?"
                    );
                    return None;
                }
                assert!(Instant::now() < deadline, "redis-server did not come up");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if count > 1 {
            redis.create_cluster(pki);
        }
        Some(redis)
    }

    /// `redis-cli --tls --cluster create` over the nodes, then wait until each serves every
    /// slot (bounded: 20 s).
    fn create_cluster(&self, pki: &Pki) {
        let cli = named("redis-cli").expect("redis-cli beside redis-server");
        let tls = |command: &mut Command| {
            command
                .arg("--tls")
                .arg("--cacert")
                .arg(pki.path("ca.pem"))
                .arg("--cert")
                .arg(pki.path("client.pem"))
                .arg("--key")
                .arg(pki.path("client.key"));
        };
        let mut create = Command::new(&cli);
        tls(&mut create);
        let created = create
            .args(["--cluster", "create"])
            .args(self.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(created.success(), "redis-cli --tls --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in &self.ports {
            loop {
                let mut info = Command::new(&cli);
                tls(&mut info);
                let info = info
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

    /// `rediss://` to the one server, or `rediss+cluster://` to all.
    fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        match hosts.len() {
            1 => format!("rediss://{}", hosts[0]),
            _ => format!("rediss+cluster://{}", hosts.join(",")),
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

fn rpm(n: u32) -> ModelLimits {
    ModelLimits {
        rpm: Some(n),
        ..Default::default()
    }
}

/// `projects` projects of 2 RPM with a key each, on the mock, and a pool of those keys over
/// `store`.
fn pool(keys: &[(String, String)], store: &RedisStore) -> KeyPool {
    keys.iter()
        .fold(KeyPool::builder(), |b, (key, project)| {
            b.key_with(KeySpec::new(key.clone()).project(project.clone()))
        })
        .model_limits(FLASH, rpm(2))
        .store(store.clone())
        .build()
        .unwrap()
}

fn keys(tag: &str, projects: usize) -> Vec<(String, String)> {
    (0..projects)
        .map(|i| (format!("test-key-{tag}-{i:04}"), format!("proj-{tag}-{i}")))
        .collect()
}

async fn mock_of(keys: &[(String, String)]) -> tower_gemini::mock::MockServer {
    keys.iter()
        .fold(MockGemini::builder(), |mock, (key, project)| {
            let key = key.clone();
            mock.project(project, move |p| p.key(key).limits(FLASH, rpm(2)))
        })
        .start()
        .await
        .unwrap()
}

/// Two pools (as two processes) over `url` with `tls`: together they are admitted no more
/// than the projects' limits, and Google is never asked beyond them.
async fn two_pools_share_one_ledger(url: &str, tls: RedisTls, tag: &str, projects: usize) {
    let keys = keys(tag, projects);
    let mock = mock_of(&keys).await;
    let options = || RedisOptions {
        prefix: Redis::prefix(tag),
        tls: tls.clone(),
        ..RedisOptions::default()
    };
    let one = RedisStore::connect_with(url, options()).await.unwrap();
    let two = RedisStore::connect_with(url, options()).await.unwrap();
    assert!(
        one.is_connected() && two.is_connected(),
        "TLS handshake failed"
    );
    let (one, two) = (pool(&keys, &one), pool(&keys, &two));
    for _ in 0..projects {
        assert_eq!(send(&one, &mock).await.unwrap(), StatusCode::OK);
        assert_eq!(send(&two, &mock).await.unwrap(), StatusCode::OK);
    }
    assert!(
        send(&one, &mock).await.is_err(),
        "admitted past the shared limit"
    );
    assert!(
        send(&two, &mock).await.is_err(),
        "admitted past the shared limit"
    );
    assert_eq!(mock.stats().responses_with_status(429), 0);
    assert_eq!(mock.stats().total_requests(), 2 * projects as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_share_a_ledger_over_tls_trusting_our_own_ca() {
    let test = "two_pools_share_a_ledger_over_tls_trusting_our_own_ca";
    let pki = Pki::new("own-ca");
    let Some(redis) = TlsRedis::start(test, &pki, 1, false) else {
        return;
    };
    two_pools_share_one_ledger(&redis.url(), tls(&pki, false), "tls-one", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_checking_clients_serves_the_store_with_our_certificate_only() {
    let test = "a_redis_checking_clients_serves_the_store_with_our_certificate_only";
    let pki = Pki::new("mtls");
    let Some(redis) = TlsRedis::start(test, &pki, 1, true) else {
        return;
    };
    two_pools_share_one_ledger(&redis.url(), tls(&pki, true), "tls-mtls", 1).await;

    // Without the client certificate, the handshake fails: the store is unreachable (and
    // says so), it does not serve from a Redis it could not authenticate to.
    let without = RedisStore::connect_with(
        &redis.url(),
        RedisOptions {
            prefix: Redis::prefix("tls-mtls-without"),
            tls: tls(&pki, false),
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(!without.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_not_trusted() {
    let test = "a_certificate_from_another_ca_is_not_trusted";
    let pki = Pki::new("other-ca");
    let Some(redis) = TlsRedis::start(test, &pki, 1, false) else {
        return;
    };
    let options = |tls: RedisTls| RedisOptions {
        prefix: Redis::prefix("tls-other"),
        tls,
        ..RedisOptions::default()
    };
    // A CA that did not sign the server's certificate.
    let other = RedisTls::default().ca_pem(pki.read("other-ca.pem"));
    let store = RedisStore::connect_with(&redis.url(), options(other))
        .await
        .unwrap();
    assert!(!store.is_connected());
    // The webpki roots (no CA given) do not know ours either.
    let store = RedisStore::connect_with(&redis.url(), options(RedisTls::default()))
        .await
        .unwrap();
    assert!(!store.is_connected());
    // Plain TCP to a TLS port gets no answer it could read.
    let plain = redis.url().replacen("rediss://", "redis://", 1);
    let store = RedisStore::connect_with(&plain, options(RedisTls::default()))
        .await
        .unwrap();
    assert!(!store.is_connected());
    // And with our CA, the same server serves.
    let store = RedisStore::connect_with(&redis.url(), options(tls(&pki, false)))
        .await
        .unwrap();
    eventually("the store connects over TLS", async || store.is_connected()).await;
}

/// The three-master cluster over TLS (`rediss+cluster://`, `--tls-cluster yes`): the slots'
/// owners are found over TLS, a project's names share a slot, and two pools share its ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_share_a_ledger_on_a_cluster_over_tls() {
    let test = "two_pools_share_a_ledger_on_a_cluster_over_tls";
    let pki = Pki::new("cluster");
    let Some(cluster) = TlsRedis::start(test, &pki, 3, true) else {
        return;
    };
    // Eight projects: their slots spread over the three masters.
    two_pools_share_one_ledger(&cluster.url(), tls(&pki, true), "tls-cluster", 8).await;
}

/// The gateway, given `REDIS_URL=rediss://…` and `REDIS_CA_FILE`, shares its ledger over TLS:
/// what it admitted over HTTP, a second process (a pool on the same Redis) counts as spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_shares_its_state_over_tls_with_the_ca_file_it_is_given() {
    let test = "the_gateway_shares_its_state_over_tls_with_the_ca_file_it_is_given";
    let pki = Pki::new("gateway");
    let Some(redis) = TlsRedis::start(test, &pki, 1, true) else {
        return;
    };
    let keys = keys("tls-gw", 1);
    let mock = mock_of(&keys).await;
    let prefix = Redis::prefix("tls-gateway");
    let url = redis.url();
    let ca = pki.path("ca.pem");
    let cert = pki.path("client.pem");
    let key = pki.path("client.key");
    let mut config = common::gateway::config_from(&[
        ("GEMINI_API_KEY", keys[0].0.as_str()),
        ("GATEWAY_TOKENS", "test-token-tls-0001"),
        ("LLM_API_ENDPOINT", mock.url().as_str()),
        ("REDIS_URL", url.as_str()),
        ("REDIS_PREFIX", prefix.as_str()),
        ("REDIS_CA_FILE", ca.to_str().unwrap()),
        ("REDIS_CLIENT_CERT_FILE", cert.to_str().unwrap()),
        ("REDIS_CLIENT_KEY_FILE", key.to_str().unwrap()),
    ]);
    config.pool = KeyPool::builder()
        .key_with(KeySpec::new(keys[0].0.clone()).project(keys[0].1.clone()))
        .model_limits(FLASH, rpm(2))
        .build()
        .unwrap();
    let gateway = common::gateway::start(config).await;
    // One request of the project's two this minute (a second would be paced half a minute
    // later by the gateway).
    {
        let request = Request::post(format!(
            "{}/v1beta/models/{FLASH}:generateContent",
            gateway.base
        ))
        .header("authorization", "Bearer test-token-tls-0001")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(common::generate_body("over tls"))))
        .unwrap();
        let answer = common::client().request(request).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
    }
    // Another process on the same Redis: it gets the second of this minute, and no third.
    let other = RedisStore::connect_with(
        &url,
        RedisOptions {
            prefix,
            tls: tls(&pki, true),
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(other.is_connected());
    let other = pool(&keys, &other);
    assert_eq!(send(&other, &mock).await.unwrap(), StatusCode::OK);
    assert!(send(&other, &mock).await.is_err());
    assert_eq!(mock.stats().total_requests(), 2);
    assert_eq!(mock.stats().responses_with_status(429), 0);
}

/// Settings that cannot work are refused when the store is made, saying what to change —
/// before anything is sent anywhere.
#[tokio::test]
async fn wrong_tls_settings_are_refused_with_what_to_change() {
    let pki = Pki::new("refusals");
    let refused = async |url: &str, tls: RedisTls| {
        let options = RedisOptions {
            tls,
            ..RedisOptions::default()
        };
        RedisStore::connect_with(url, options)
            .await
            .err()
            .unwrap_or_else(|| panic!("{url} was accepted"))
            .to_string()
    };
    let message = refused("redis://127.0.0.1:1", tls(&pki, false)).await;
    assert!(
        message.contains("plain TCP") && message.contains("rediss://"),
        "{message}"
    );
    let message = refused(
        "rediss://127.0.0.1:1,redis://127.0.0.1:2",
        RedisTls::default(),
    )
    .await;
    assert!(message.contains("mix TLS"), "{message}");
    let message = refused(
        "rediss://127.0.0.1:1",
        RedisTls::default().ca_pem(pki.read("server.key")),
    )
    .await;
    assert!(
        message.contains("CA certificate holds no certificate"),
        "{message}"
    );
    let message = refused(
        "rediss://127.0.0.1:1",
        RedisTls::default().client_pem(pki.read("client.pem"), pki.read("client.pem")),
    )
    .await;
    assert!(
        message.contains("client key holds no private key"),
        "{message}"
    );
    // A key that is not the certificate's: refused now, not at every connection.
    let message = refused(
        "rediss://127.0.0.1:1",
        RedisTls::default()
            .ca_pem(pki.read("ca.pem"))
            .client_pem(pki.read("client.pem"), pki.read("server.key")),
    )
    .await;
    assert!(
        message.contains("do not make a client identity"),
        "{message}"
    );
    // A fragment (`#insecure` would turn certificate checks off in some builds).
    let message = refused("rediss://127.0.0.1:1/#insecure", RedisTls::default()).await;
    assert!(message.contains("fragment"), "{message}");
    // A cluster with no node, with a CA: said as such.
    let message = refused("rediss+cluster://", tls(&pki, false)).await;
    assert!(message.contains("names no node"), "{message}");
    // The scheme in capitals is TLS all the same.
    assert!(
        RedisStore::connect_with(
            "REDISS://127.0.0.1:1",
            RedisOptions {
                tls: tls(&pki, false),
                ..RedisOptions::default()
            }
        )
        .await
        .is_ok()
    );
    // A file that is not there names itself; half a client identity is refused.
    let missing = pki.path("no-such.pem");
    let message = RedisTls::from_files(Some(&missing), None, None)
        .unwrap_err()
        .to_string();
    assert!(message.contains("no-such.pem"), "{message}");
    let message = RedisTls::from_files(None, Some(&pki.path("client.pem")), None)
        .unwrap_err()
        .to_string();
    assert!(message.contains("without its key"), "{message}");
    // TLS files for a gateway without Redis: not what was meant.
    let ca = pki.path("ca.pem");
    let message = tower_gemini::gateway::GatewayConfig::resolve(
        tower_gemini::gateway::Flags::default(),
        |name| match name {
            "GEMINI_API_KEY" => Some("test-key-tls-0001".to_owned()),
            "GATEWAY_TOKENS" => Some("test-token-tls-0001".to_owned()),
            "REDIS_CA_FILE" => Some(ca.display().to_string()),
            _ => None,
        },
    )
    .err()
    .expect("a CA without Redis was accepted")
    .to_string();
    assert!(message.contains("but no Redis"), "{message}");
}

/// The client key never shows: not in the settings' `Debug`, nor in the store options'.
#[test]
fn the_client_key_never_shows() {
    let pki = Pki::new("debug");
    let key = String::from_utf8(pki.read("client.key")).unwrap();
    let body = key
        .lines()
        .find(|line| !line.starts_with("-----"))
        .unwrap()
        .to_owned();
    let shown = format!("{:?}", tls(&pki, true));
    assert!(!shown.contains(&body), "{shown}");
    let options = RedisOptions {
        tls: tls(&pki, true),
        ..RedisOptions::default()
    };
    let shown = format!("{options:?}");
    assert!(
        !shown.contains(&body) && shown.contains("redacted"),
        "{shown}"
    );
}
