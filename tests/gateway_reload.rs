//! Live configuration: `POST /api/config/reload` (and `SIGHUP`, in `gateway_cli.rs`) reads the
//! file again and applies tokens, client limits, CORS origins, model limits, fallback chains, keys,
//! prices and budgets under load, without a failed request or a dropped connection; a broken
//! file is refused and the running configuration kept.
#![cfg(feature = "gateway")]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::gateway::{Gateway, start};
use common::{client, text};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tower_gemini::gateway::{Flags, GatewayConfig};
use tower_gemini::mock::{MockGemini, MockServer};

const LOAD: &str = "client-token-load-0001";
const OLD: &str = "client-token-old-0002";
const NEW: &str = "client-token-new-0003";
const ADMIN: &str = "admin-token-reload-0001";
const KEYS: [&str; 2] = ["test-key-reload-0001", "test-key-reload-0002"];
const MODEL: &str = "gemini-2.0-flash";

fn mock() -> MockGemini {
    MockGemini::builder()
        .project("proj-a", |p| p.key(KEYS[0]))
        .project("proj-b", |p| p.key(KEYS[1]))
}

/// A directory of its own for one test's file.
fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gateway-reload-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The configuration file: the keys in two projects, `models` and `gateway` as given.
fn write(file: &Path, mock: &MockServer, models: &str, gateway: &str) {
    let keys = format!(
        "[[keys]]\nvalue = \"{}\"\nproject = \"proj-a\"\n\n[[keys]]\nvalue = \"{}\"\nproject = \"proj-b\"\n",
        KEYS[0], KEYS[1]
    );
    write_with_keys(file, mock, &keys, models, gateway);
}

/// The configuration file with `keys` (its `[[keys]]` entries).
fn write_with_keys(file: &Path, mock: &MockServer, keys: &str, models: &str, gateway: &str) {
    let text = format!(
        "{keys}\n{models}\n\n[gateway]\nupstream = \"{}\"\nadmin_token = \"{ADMIN}\"\nmodel = \"{MODEL}\"\n{gateway}\n",
        mock.url()
    );
    // Written whole and renamed: a reload never reads half a file.
    let partial = file.with_extension("partial");
    std::fs::write(&partial, text).unwrap();
    std::fs::rename(&partial, file).unwrap();
}

fn from_file(file: &Path) -> GatewayConfig {
    let flags = Flags {
        config: Some(file.to_owned()),
        ..Flags::default()
    };
    GatewayConfig::resolve(flags, |_| None).unwrap()
}

fn ask(gateway: &Gateway, token: &str) -> Request<Full<Bytes>> {
    Request::post(format!(
        "{}/v1beta/models/{MODEL}:generateContent",
        gateway.base
    ))
    .header("content-type", "application/json")
    .header("x-goog-api-key", token)
    .body(Full::new(Bytes::from(common::generate_body("reload me"))))
    .unwrap()
}

async fn status_of(gateway: &Gateway, token: &str) -> StatusCode {
    let response = client().request(ask(gateway, token)).await.unwrap();
    let status = response.status();
    let _ = text(response).await;
    status
}

async fn reload(gateway: &Gateway) -> (StatusCode, serde_json::Value) {
    let request = Request::post(format!("{}/api/config/reload", gateway.base))
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client().request(request).await.unwrap();
    let status = response.status();
    let body = text(response).await;
    for secret in KEYS.iter().chain([&LOAD, &OLD, &NEW, &ADMIN]) {
        assert!(
            !body.contains(secret),
            "the reload's answer shows a secret: {body}"
        );
    }
    (status, serde_json::from_str(&body).unwrap())
}

async fn status_json(gateway: &Gateway) -> serde_json::Value {
    let request = Request::get(format!("{}/api/keys/status", gateway.base))
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    serde_json::from_str(&text(client().request(request).await.unwrap()).await).unwrap()
}

/// Clients that each keep one HTTP/1.1 connection and send on it until told to stop: a
/// connection the gateway closed is a failure, as is any answer but 200.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), String>>>,
}

impl Load {
    async fn start(gateway: &Gateway, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let addr = gateway.base.trim_start_matches("http://").to_owned();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let (stop, ok, base) = (stop.clone(), ok.clone(), gateway.base.clone());
            tasks.push(tokio::spawn(async move {
                // At most a bounded number of requests each, so the test ends by itself.
                for _ in 0..5_000 {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    sender
                        .ready()
                        .await
                        .map_err(|e| format!("connection lost: {e}"))?;
                    let request = Request::post(format!("/v1beta/models/{MODEL}:generateContent"))
                        .header("host", base.trim_start_matches("http://"))
                        .header("content-type", "application/json")
                        .header("x-goog-api-key", LOAD)
                        .body(Full::new(Bytes::from(common::generate_body("load"))))
                        .unwrap();
                    let response = sender
                        .send_request(request)
                        .await
                        .map_err(|e| format!("connection lost: {e}"))?;
                    let status = response.status();
                    let body = response
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| e.to_string())?;
                    if status != StatusCode::OK {
                        return Err(format!("{status}: {:?}", body.to_bytes()));
                    }
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }));
        }
        Load { stop, ok, tasks }
    }

    /// Wait until `n` more requests were answered (bounded).
    async fn progress(&self, n: u64) {
        let from = self.ok.load(Ordering::Relaxed);
        for _ in 0..500 {
            if self.ok.load(Ordering::Relaxed) >= from + n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the load made no progress");
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap().unwrap();
        }
        self.ok.load(Ordering::Relaxed)
    }
}

fn preflight(gateway: &Gateway, origin: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::OPTIONS)
        .uri(format!("{}/v1/chat/completions", gateway.base))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_applies_the_new_file_and_fails_no_request() {
    let mock = mock().start().await.unwrap();
    let dir = dir("load");
    let file = dir.join("gateway.toml");
    write(
        &file,
        &mock,
        &format!("[models.\"{MODEL}\"]\nrpm = 5000"),
        &format!("tokens = [\"{LOAD}\", \"{OLD}\"]"),
    );
    let gateway = start(from_file(&file)).await;
    assert_eq!(status_of(&gateway, OLD).await, StatusCode::OK);
    assert_eq!(status_of(&gateway, NEW).await, StatusCode::UNAUTHORIZED);
    let origin = "https://app.example.org";
    let before = client().request(preflight(&gateway, origin)).await.unwrap();
    assert!(
        before
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    let load = Load::start(&gateway, 4).await;
    load.progress(50).await;
    write(
        &file,
        &mock,
        &format!("[models.\"{MODEL}\"]\nrpm = 4000"),
        &format!(
            "tokens = [\"{LOAD}\", \"{NEW}\"]\nallowed_origins = [\"{origin}\"]\nclient_limits = {{ rpm = 100000 }}\n\n[gateway.fallback]\n\"gemini-2.5-pro\" = [\"{MODEL}\"]\n\n[gateway.prices.\"{MODEL}\"]\ninput = 1.0\noutput = 2.0\n\n[gateway.budget]\ndaily_usd = 50.0\n"
        ),
    );
    let (status, answer) = reload(&gateway).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let applied: Vec<&str> = answer["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for setting in [
        "tokens",
        "client_limits",
        "allowed_origins",
        "model limits",
        "fallback",
        "prices",
        "budget",
    ] {
        assert!(applied.contains(&setting), "{setting} not in {answer}");
    }
    assert_eq!(answer["restart_needed"], serde_json::json!([]), "{answer}");
    load.progress(50).await;

    // The new token is in, the removed one out, the origin allowed.
    assert_eq!(status_of(&gateway, NEW).await, StatusCode::OK);
    assert_eq!(status_of(&gateway, OLD).await, StatusCode::UNAUTHORIZED);
    let after = client().request(preflight(&gateway, origin)).await.unwrap();
    assert_eq!(
        after.headers()["access-control-allow-origin"]
            .to_str()
            .unwrap(),
        origin
    );
    // The pool's new model limits, in the rate-limit headers: 4,000 a minute in each project.
    let answered = client().request(ask(&gateway, LOAD)).await.unwrap();
    assert_eq!(
        answered.headers()["x-ratelimit-limit-requests"]
            .to_str()
            .unwrap(),
        "8000"
    );
    let status = status_json(&gateway).await;
    assert_eq!(
        status["saving"]["fallback"]["chains"]["gemini-2.5-pro"],
        serde_json::json!([MODEL]),
        "{status}"
    );
    assert_eq!(status["config"]["last_reload"]["success"], true, "{status}");

    let served = load.finish().await;
    assert!(served >= 100, "{served}");
    assert_eq!(mock.stats().responses_with_status(429), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_broken_file_is_refused_and_the_running_configuration_kept() {
    let mock = mock().start().await.unwrap();
    let dir = dir("broken");
    let file = dir.join("gateway.toml");
    write(&file, &mock, "", &format!("tokens = [\"{OLD}\"]"));
    let gateway = start(from_file(&file)).await;

    // Not TOML; a value of the wrong type; a limit for a project without a key; no token.
    let broken = [
        (format!("tokens = [\"{NEW}\""), "gateway.toml"),
        (
            format!("tokens = [\"{NEW}\"]\nclient_limits = {{ rpm = \"ten\" }}"),
            "gateway.toml",
        ),
        (
            format!("tokens = [\"{NEW}\"]\n\n[projects.proj-z.models.\"{MODEL}\"]\nrpm = 1"),
            "proj-z",
        ),
        (String::new(), "no client token"),
    ];
    for (gateway_table, said) in broken {
        write(&file, &mock, "", &gateway_table);
        let (status, answer) = reload(&gateway).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains("not reloaded"), "{message}");
        assert!(message.contains(said), "{said:?} not in {message}");
        // Running as before: the old token in, the new one out.
        assert_eq!(status_of(&gateway, OLD).await, StatusCode::OK);
        assert_eq!(status_of(&gateway, NEW).await, StatusCode::UNAUTHORIZED);
        let status = status_json(&gateway).await;
        assert_eq!(status["config"]["last_reload"]["success"], false);
    }
    // What needs a restart is named and left as it runs (a Redis and its CA file too: the
    // store is made at start).
    let ca = dir.join("redis-ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    write(
        &file,
        &mock,
        "",
        &format!(
            "tokens = [\"{OLD}\"]\nmax_connections = 7\nbody_limit_bytes = 1000\nredis_url = \"rediss://127.0.0.1:1\"\nredis_ca_file = {:?}",
            ca.display().to_string()
        ),
    );
    let (status, answer) = reload(&gateway).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["restart_needed"],
        serde_json::json!([
            "body_limit_bytes",
            "max_connections",
            "max_connections_per_address",
            "redis_url",
            "redis_tls"
        ])
    );
    assert_eq!(status_of(&gateway, OLD).await, StatusCode::OK);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Only the admin token reloads: a client's token does not, nor does no token.
#[tokio::test]
async fn only_the_admin_reloads() {
    let mock = mock().start().await.unwrap();
    let dir = dir("admin");
    let file = dir.join("gateway.toml");
    write(&file, &mock, "", &format!("tokens = [\"{OLD}\"]"));
    let gateway = start(from_file(&file)).await;
    write(&file, &mock, "", &format!("tokens = [\"{NEW}\"]"));
    for token in [Some(OLD), None] {
        let mut request = Request::post(format!("{}/api/config/reload", gateway.base));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = client()
            .request(request.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(status_of(&gateway, OLD).await, StatusCode::OK);
    assert_eq!(status_of(&gateway, NEW).await, StatusCode::UNAUTHORIZED);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A client keeps what it spent across a reload: a raised limit gives it the difference, not a
/// fresh minute; today's spending counts against the new budget.
#[tokio::test]
async fn clients_keep_what_they_spent() {
    let mock = mock().start().await.unwrap();
    let dir = dir("spent");
    let file = dir.join("gateway.toml");
    let prices = format!("\n\n[gateway.prices.\"{MODEL}\"]\ninput = 1000.0\noutput = 1000.0\n");
    write(
        &file,
        &mock,
        "",
        &format!("tokens = [\"{OLD}\"]\nclient_limits = {{ rpm = 2 }}{prices}"),
    );
    let gateway = start(from_file(&file)).await;
    assert_eq!(status_of(&gateway, OLD).await, StatusCode::OK);
    assert_eq!(status_of(&gateway, OLD).await, StatusCode::OK);
    assert_eq!(
        status_of(&gateway, OLD).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let spent = |status: &serde_json::Value| {
        status["saving"]["cost"]["today"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["scope"] == "pool")
            .map_or(0.0, |row| row["spent_usd"].as_f64().unwrap())
    };
    let before = spent(&status_json(&gateway).await);
    assert!(before > 0.0);

    write(
        &file,
        &mock,
        "",
        &format!(
            "tokens = [\"{OLD}\"]\nclient_limits = {{ rpm = 3 }}{prices}\n[gateway.budget]\ndaily_usd = 1000.0\n"
        ),
    );
    let (status, answer) = reload(&gateway).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(status_of(&gateway, OLD).await, StatusCode::OK);
    assert_eq!(
        status_of(&gateway, OLD).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let after = status_json(&gateway).await;
    assert!(spent(&after) > before, "{after}");
    let pool_row = after["saving"]["cost"]["today"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["scope"] == "pool")
        .cloned()
        .unwrap();
    assert_eq!(pool_row["budget_usd"], 1000.0, "{pool_row}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A gateway made in code has no file to read again: the reload says so.
#[tokio::test]
async fn without_a_file_a_reload_says_how_to_get_one() {
    let mock = mock().start().await.unwrap();
    let config = common::gateway::config_from(&[
        ("GEMINI_API_KEY", KEYS[0]),
        ("GATEWAY_TOKENS", OLD),
        ("ADMIN_TOKEN", ADMIN),
        ("LLM_API_ENDPOINT", &mock.url()),
    ]);
    let gateway = start(config).await;
    let (status, answer) = reload(&gateway).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--config FILE"),
        "{answer}"
    );
}

/// A reload never opens the gateway: started with tokens (and `--allow-unauthenticated`,
/// which would accept a file without any), a file without tokens is refused by the reload's
/// own check.
#[tokio::test]
async fn a_reload_never_turns_the_tokens_off() {
    let mock = mock().start().await.unwrap();
    let dir = dir("open");
    let file = dir.join("gateway.toml");
    write(&file, &mock, "", &format!("tokens = [\"{OLD}\"]"));
    let flags = Flags {
        config: Some(file.clone()),
        allow_unauthenticated: true,
        ..Flags::default()
    };
    let gateway = start(GatewayConfig::resolve(flags, |_| None).unwrap()).await;
    write(&file, &mock, "", "");
    let (status, answer) = reload(&gateway).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("does not open the gateway"), "{message}");
    let anonymous = Request::post(format!(
        "{}/v1beta/models/{MODEL}:generateContent",
        gateway.base
    ))
    .header("content-type", "application/json")
    .body(Full::new(Bytes::from(common::generate_body("hello"))))
    .unwrap();
    let response = client().request(anonymous).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Origins removed by a reload: no CORS header any more, and a preflight is answered by the
/// routes as without CORS (an `OPTIONS` without a token: 401), as a gateway started without
/// origins answers it.
#[tokio::test]
async fn origins_removed_by_a_reload_take_cors_away() {
    let mock = mock().start().await.unwrap();
    let dir = dir("cors");
    let file = dir.join("gateway.toml");
    let origin = "https://app.example.org";
    write(
        &file,
        &mock,
        "",
        &format!("tokens = [\"{OLD}\"]\nallowed_origins = [\"{origin}\"]"),
    );
    let gateway = start(from_file(&file)).await;
    let before = client().request(preflight(&gateway, origin)).await.unwrap();
    assert_eq!(before.status(), StatusCode::OK);
    assert_eq!(before.headers()["access-control-allow-origin"], origin);
    write(&file, &mock, "", &format!("tokens = [\"{OLD}\"]"));
    let (status, answer) = reload(&gateway).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let after = client().request(preflight(&gateway, origin)).await.unwrap();
    assert!(after.headers().get("access-control-allow-origin").is_none());
    assert!(
        after.headers().get("vary").is_none(),
        "{:?}",
        after.headers()
    );
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A token written where the file wants a list (`tokens = "a,b"`, the environment's form) is
/// quoted by the TOML parser's error: the answer, the log and the status page show its last
/// four characters only.
#[tokio::test]
async fn a_token_in_a_mistaken_file_is_not_shown() {
    let mock = mock().start().await.unwrap();
    let dir = dir("mistaken");
    let file = dir.join("gateway.toml");
    write(&file, &mock, "", &format!("tokens = [\"{OLD}\"]"));
    let gateway = start(from_file(&file)).await;
    let logs = common::Capture::default();
    let _guard = logs.install(tracing::Level::INFO);
    write(&file, &mock, "", &format!("tokens = \"{OLD},{NEW}\""));
    // (`reload` itself fails the test if the answer holds a token.)
    let (status, answer) = reload(&gateway).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    let status = status_json(&gateway).await.to_string();
    assert!(
        status.contains("not reloaded") || status.contains("expected"),
        "{status}"
    );
    for secret in [OLD, NEW, ADMIN] {
        assert!(
            !status.contains(secret),
            "the status page shows a token: {status}"
        );
        assert!(!logs.text().contains(secret), "the log shows a token");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The environment beats the file, at a reload too: settings it set at start are named in the
/// answer, not silently ignored.
#[tokio::test]
async fn what_the_environment_set_is_named() {
    let mock = mock().start().await.unwrap();
    let dir = dir("env");
    let file = dir.join("gateway.toml");
    write(&file, &mock, "", "");
    let flags = Flags {
        config: Some(file.clone()),
        ..Flags::default()
    };
    let config = GatewayConfig::resolve(flags, |name| {
        (name == "GATEWAY_TOKENS").then(|| OLD.to_owned())
    })
    .unwrap();
    let gateway = start(config).await;
    write(&file, &mock, "", &format!("tokens = [\"{NEW}\"]"));
    let (status, answer) = reload(&gateway).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["set_by_environment"], serde_json::json!(["tokens"]));
    assert_eq!(status_of(&gateway, OLD).await, StatusCode::OK);
    assert_eq!(status_of(&gateway, NEW).await, StatusCode::UNAUTHORIZED);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The keys' projects and names, as the status API shows them.
async fn projects_and_names(gateway: &Gateway) -> Vec<(String, Option<String>)> {
    let status = status_json(gateway).await;
    let mut keys: Vec<(String, Option<String>)> = status["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| {
            (
                key["project"].as_str().unwrap().to_owned(),
                key["name"].as_str().map(str::to_owned),
            )
        })
        .collect();
    keys.sort();
    keys
}

/// A reload applies what the file changed in its keys, under load, failing no request: a key
/// it no longer lists is no longer used, a new one serves, one renamed is renamed; a key the
/// admin API added stays (the file never listed it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_the_files_keys_and_keeps_the_admins() {
    const NEW_KEY: &str = "test-key-reload-0003";
    const ADMINS_KEY: &str = "test-key-reload-0004";
    let mock = mock()
        .project("proj-c", |p| p.key(NEW_KEY))
        .project("proj-d", |p| p.key(ADMINS_KEY))
        .start()
        .await
        .unwrap();
    let dir = dir("keys");
    let file = dir.join("gateway.toml");
    let tokens = format!("tokens = [\"{LOAD}\", \"{OLD}\"]");
    write(&file, &mock, "", &tokens);
    let gateway = start(from_file(&file)).await;
    let add = Request::post(format!("{}/api/keys", gateway.base))
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Full::new(Bytes::from(format!(
            r#"{{"key":"{ADMINS_KEY}","project":"proj-d"}}"#
        ))))
        .unwrap();
    assert_eq!(
        client().request(add).await.unwrap().status(),
        StatusCode::OK
    );
    let project = |p: &str| (p.to_owned(), None);
    assert_eq!(
        projects_and_names(&gateway).await,
        vec![project("proj-a"), project("proj-b"), project("proj-d")]
    );

    let load = Load::start(&gateway, 4).await;
    load.progress(50).await;
    // proj-b's key gone from the file, proj-c's new, proj-a's named.
    write_with_keys(
        &file,
        &mock,
        &format!(
            "[[keys]]\nvalue = \"{}\"\nproject = \"proj-a\"\nname = \"primary\"\n\n[[keys]]\nvalue = \"{NEW_KEY}\"\nproject = \"proj-c\"\n",
            KEYS[0]
        ),
        "",
        &tokens,
    );
    let (status, answer) = reload(&gateway).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["applied"], serde_json::json!(["keys"]), "{answer}");
    assert_eq!(answer["restart_needed"], serde_json::json!([]), "{answer}");
    assert_eq!(
        projects_and_names(&gateway).await,
        vec![
            ("proj-a".to_owned(), Some("primary".to_owned())),
            project("proj-c"),
            project("proj-d")
        ]
    );
    // Once the requests in flight at the swap are answered, the removed key is not used; the
    // others all are.
    load.progress(50).await;
    let removed_before = mock.stats().requests_for(KEYS[1]);
    let (new_before, admins_before) = (
        mock.stats().requests_for(NEW_KEY),
        mock.stats().requests_for(ADMINS_KEY),
    );
    load.progress(200).await;
    let served = load.finish().await;
    assert!(served >= 250);
    assert_eq!(mock.stats().requests_for(KEYS[1]), removed_before);
    assert!(mock.stats().requests_for(NEW_KEY) > new_before);
    assert!(mock.stats().requests_for(ADMINS_KEY) > admins_before);
    assert_eq!(mock.stats().responses_with_status(429), 0);

    // The same file again: nothing changes, the admin's key still there.
    let (status, answer) = reload(&gateway).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["applied"], serde_json::json!([]), "{answer}");
    assert_eq!(projects_and_names(&gateway).await.len(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A reload rebuilds the stack, not what it remembers: a project still above the quota alert's
/// threshold is not announced again (the retry budget kept is checked in `retry::policy`).
#[tokio::test]
async fn a_reload_does_not_announce_a_quota_alert_again() {
    let mock = mock().start().await.unwrap();
    let dir = dir("alerts");
    let file = dir.join("gateway.toml");
    let gateway_table = format!("tokens = [\"{OLD}\"]\nquota_alert = 0.5");
    // Pacing off: four requests a minute would be spaced 15 s apart.
    let keys = format!(
        "pacing = \"off\"\n\n[[keys]]\nvalue = \"{}\"\nproject = \"proj-a\"\n\n[[keys]]\nvalue = \"{}\"\nproject = \"proj-b\"\n",
        KEYS[0], KEYS[1]
    );
    write_with_keys(
        &file,
        &mock,
        &keys,
        &format!("[models.\"{MODEL}\"]\nrpm = 4"),
        &gateway_table,
    );
    let gateway = start(from_file(&file)).await;
    let quota_alerts = async || {
        status_json(&gateway).await["saving"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|alert| alert["kind"] == "quota")
            .count()
    };
    // Two projects of 4 RPM: four requests take both to half.
    for _ in 0..4 {
        assert_eq!(status_of(&gateway, OLD).await, StatusCode::OK);
    }
    assert_eq!(quota_alerts().await, 2);
    let (status, answer) = reload(&gateway).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // Still above half (three of four each): no new alert.
    for _ in 0..2 {
        assert_eq!(status_of(&gateway, OLD).await, StatusCode::OK);
    }
    assert_eq!(quota_alerts().await, 2);
    std::fs::remove_dir_all(&dir).unwrap();
}
