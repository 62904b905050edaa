//! Hostile input through the gateway, over real HTTP: path tricks, made-up models in bulk,
//! invalid and oversize bodies and headers, very long URLs, a flood of one-off tokens, broken
//! configuration. Each gets a clear error before a key is used; memory and metric labels stay
//! bounded; the key only ever goes to the configured upstream.
#![cfg(feature = "gateway")]

mod common;

use std::collections::BTreeSet;

use bytes::Bytes;
use common::gateway::{Gateway, config_from, start};
use common::{client, text};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use tower_gemini::gateway::{Flags, GatewayConfig};
use tower_gemini::mock::{MockGemini, MockServer};

const TOKEN: &str = "client-token-hostile-01";
const ADMIN: &str = "admin-token-hostile-01";
const KEYS: [&str; 2] = ["test-key-hostile-0001", "test-key-hostile-0002"];
const MODEL: &str = "gemini-2.0-flash";

async fn mock() -> MockServer {
    MockGemini::builder()
        .project("proj-a", |p| p.key(KEYS[0]))
        .project("proj-b", |p| p.key(KEYS[1]))
        .start()
        .await
        .unwrap()
}

async fn gateway(mock: &MockServer) -> Gateway {
    let keys = KEYS.join(",");
    let url = mock.url();
    start(config_from(&[
        ("GEMINI_API_KEY", &keys),
        ("GATEWAY_TOKENS", TOKEN),
        ("ADMIN_TOKEN", ADMIN),
        ("LLM_API_ENDPOINT", &url),
        ("LLM_MODEL", MODEL),
        // Floods here come from one address, on purpose (tests/attacks.rs has the cap per
        // address).
        ("GATEWAY_MAX_CONNECTIONS_PER_ADDRESS", "1024"),
    ]))
    .await
}

fn body(text: &str) -> Full<Bytes> {
    Full::new(Bytes::from(text.to_owned()))
}

/// Send `method path` with the client token and `body`; the status and the body's text.
async fn send(
    gateway: &Gateway,
    method: Method,
    path: &str,
    payload: &str,
) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(format!("{}{path}", gateway.base))
        .header("content-type", "application/json")
        .header("x-goog-api-key", TOKEN)
        .body(body(payload))
        .unwrap();
    let response = client().request(request).await.unwrap();
    let status = response.status();
    (status, text(response).await)
}

/// Write `bytes` to the gateway on a fresh connection and read what comes back (at most
/// 64 KiB, for at most 10 s); empty if the gateway closed the connection without an answer.
async fn raw_exchange(gateway: &Gateway, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = gateway.base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before all of it is written.
    let _ = tcp.write_all(bytes).await;
    let mut answer = vec![0; 64 * 1024];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut answer))
        .await
        .expect("the gateway answers or closes");
    let n = read.unwrap_or(0);
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

fn prompt() -> String {
    common::generate_body("hello")
}

#[tokio::test]
async fn path_tricks_and_implausible_model_names_are_refused_before_a_key_is_used() {
    let mock = mock().await;
    let gateway = gateway(&mock).await;
    let long = "g".repeat(5_000);
    let cases: Vec<(Method, String, &str)> = vec![
        // Dot segments would reach other APIs of the project (files, cached contents) once
        // Google's front end normalises the path.
        (Method::GET, "/v1beta/models/../files".into(), "dot segment"),
        (
            Method::POST,
            "/v1beta/models/../cachedContents:generateContent".into(),
            "dot segment",
        ),
        (Method::GET, "/v1beta/openai/../files".into(), "dot segment"),
        (
            Method::POST,
            "/v1beta//models/gemini-2.0-flash:generateContent".into(),
            "empty",
        ),
        // Percent-escapes of '/', '.', ':' and non-ASCII names.
        (
            Method::POST,
            "/v1beta/models/..%2F..%2Ffiles:generateContent".into(),
            "percent-escape",
        ),
        (
            Method::POST,
            "/v1beta/models/%2e%2e:generateContent".into(),
            "percent-escape",
        ),
        (
            Method::POST,
            "/v1beta/models/gemini-2.0-flash%3AgenerateContent".into(),
            "percent-escape",
        ),
        (
            Method::POST,
            "/v1beta/models/g%C3%A9mini:generateContent".into(),
            "percent-escape",
        ),
        (
            Method::POST,
            "/v1beta/models/.:generateContent".into(),
            "not a model name",
        ),
        (
            Method::POST,
            "/v1beta/models/-rf:generateContent".into(),
            "not a model name",
        ),
        (
            Method::POST,
            "/v1beta/models/a+b:generateContent".into(),
            "not a model name",
        ),
        (
            Method::POST,
            format!("/v1beta/models/{long}:generateContent"),
            "not a model name",
        ),
    ];
    for (method, path, why) in cases {
        let (status, answer) = send(&gateway, method.clone(), &path, &prompt()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {answer}");
        assert!(answer.contains(why), "{method} {path}: {answer}");
        assert!(answer.len() < 1_000, "the error echoes at most a prefix");
    }
    // The same in an OpenAI body.
    for model in ["../../files", "gemini 2.0", "models/../x", ""] {
        let chat =
            format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
        let (status, answer) = send(&gateway, Method::POST, "/v1/chat/completions", &chat).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{model:?}: {answer}");
        assert!(answer.contains("not a model name"), "{answer}");
    }
    assert_eq!(
        mock.stats().total_requests(),
        0,
        "nothing reached the upstream"
    );
    // A plausible name still goes through.
    let path = format!("/v1beta/models/{MODEL}:generateContent");
    let (status, answer) = send(&gateway, Method::POST, &path, &prompt()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

#[tokio::test]
async fn invalid_json_bodies_are_refused_locally_with_the_parse_error() {
    let mock = mock().await;
    let gateway = gateway(&mock).await;
    let native = format!("/v1beta/models/{MODEL}:generateContent");
    let cases = [
        (native.as_str(), "not json at all", "not JSON"),
        (native.as_str(), "{\"contents\": [", "not JSON"),
        (native.as_str(), "", "not JSON"),
        ("/v1/chat/completions", "[1, 2]", "must be a JSON object"),
        ("/v1/chat/completions", "{\"messages\": ", "not JSON"),
        ("/v1/embeddings", "{", "not JSON"),
    ];
    for (path, payload, why) in cases {
        let (status, answer) = send(&gateway, Method::POST, path, payload).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{path} {payload:?}: {answer}"
        );
        assert!(answer.contains(why), "{path} {payload:?}: {answer}");
        let json: serde_json::Value = serde_json::from_str(&answer).expect("errors are JSON");
        assert!(json["error"]["message"].is_string(), "{answer}");
    }
    assert_eq!(mock.stats().total_requests(), 0);
    // A multipart upload to Google's OpenAI-compatible audio API is not served at all (a 404
    // naming what is; tests/attacks.rs has the rest of that list), and nothing is forwarded.
    let request = Request::post(format!(
        "{}/v1beta/openai/audio/transcriptions",
        gateway.base
    ))
    .header("content-type", "multipart/form-data; boundary=x")
    .header("x-goog-api-key", TOKEN)
    .body(body("--x\r\n\r\n--x--"))
    .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(mock.stats().total_requests(), 0, "not forwarded");
}

/// Distinct `model` label values in the Prometheus text.
fn model_labels(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let at = line.find("model=\"")? + "model=\"".len();
            let end = line[at..].find('"')?;
            Some(line[at..at + end].to_owned())
        })
        .collect()
}

#[tokio::test]
async fn made_up_models_in_bulk_keep_metric_labels_bounded() {
    let mock = mock().await;
    let gateway = gateway(&mock).await;
    for n in 0..300 {
        let path = format!("/v1beta/models/made-up-model-{n}:generateContent");
        let (status, _) = send(&gateway, Method::POST, &path, &prompt()).await;
        // Whatever the upstream says of a model it does not have, the gateway answers.
        assert!(status.is_client_error() || status.is_success(), "{status}");
    }
    let request = Request::get(format!("{}/metrics", gateway.base))
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let metrics = text(client().request(request).await.unwrap()).await;
    let labels = model_labels(&metrics);
    // A name Google refused never takes a label (the real models that come later keep theirs).
    assert!(
        !labels.iter().any(|l| l.starts_with("made-up-model-")),
        "{labels:?}"
    );
    assert!(
        labels.contains("other"),
        "made-up names are folded: {labels:?}"
    );
    assert!(labels.len() <= 66, "{} labels: {labels:?}", labels.len());
}

#[tokio::test]
async fn oversize_and_odd_headers_and_long_urls_get_clear_answers() {
    let mock = mock().await;
    let gateway = gateway(&mock).await;
    let path = format!("/v1beta/models/{MODEL}:generateContent");

    // A 1 MiB header: refused by the server before any handler runs.
    let request = Request::post(format!("{}{path}", gateway.base))
        .header("x-goog-api-key", TOKEN)
        .header("x-padding", "p".repeat(1 << 20))
        .body(body(&prompt()))
        .unwrap();
    let status = match client().request(request).await {
        Ok(response) => response.status(),
        // hyper may close the connection after its 431.
        Err(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    };
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    // A 1 MiB request line (more than a client library would send): written raw.
    let line = format!(
        "POST {path}?q={} HTTP/1.1\r\nhost: gw\r\nx-goog-api-key: {TOKEN}\r\ncontent-length: 0\r\n\r\n",
        "q".repeat(1 << 20)
    );
    let answer = raw_exchange(&gateway, line.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431")
            || answer.starts_with("HTTP/1.1 414")
            || answer.is_empty(),
        "{answer:.200}"
    );
    // A 60 KiB query (what http's URI type still takes): forwarded without it? No: answered.
    let request = Request::post(format!("{}{path}?q={}", gateway.base, "q".repeat(60_000)))
        .header("x-goog-api-key", TOKEN)
        .body(body(&prompt()))
        .unwrap();
    let status = client().request(request).await.unwrap().status();
    assert_eq!(status, StatusCode::OK);

    // Non-ASCII bytes in a forwarded header and in the token header: no panic, clear answers.
    let request = Request::post(format!("{}{path}", gateway.base))
        .header("x-goog-api-key", TOKEN)
        .header(
            "user-agent",
            http::HeaderValue::from_bytes("ünïcödé agent".as_bytes()).unwrap(),
        )
        .body(body(&prompt()))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let request = Request::post(format!("{}{path}", gateway.base))
        .header(
            "x-goog-api-key",
            http::HeaderValue::from_bytes("tökén-ü-token".as_bytes()).unwrap(),
        )
        .body(body(&prompt()))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(text(response).await.contains("not valid"));
    assert_eq!(
        mock.stats().total_requests(),
        2,
        "only the valid calls went up"
    );
}

#[tokio::test]
async fn a_flood_of_one_off_tokens_is_refused_and_never_reaches_the_upstream() {
    let mock = mock().await;
    let gateway = gateway(&mock).await;
    let path = format!("/v1beta/models/{MODEL}:generateContent");
    let tasks: Vec<_> = (0..2_000)
        .map(|n| {
            let request = Request::post(format!("{}{path}", gateway.base))
                .header("authorization", format!("Bearer one-off-token-{n:06}"))
                .body(body(&prompt()))
                .unwrap();
            tokio::spawn(async move { client().request(request).await.unwrap().status() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(mock.stats().total_requests(), 0);
    // The admin routes refuse every one of them too, and the client token.
    for token in ["one-off-token-000001", TOKEN] {
        let request = Request::get(format!("{}/api/keys/status", gateway.base))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client().request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{token}");
    }
}

/// The configuration error for these variables (and no file), as text.
fn config_error(vars: &[(&str, &str)]) -> String {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    match GatewayConfig::resolve(Flags::default(), |name| {
        vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }) {
        Ok(_) => panic!("{vars:?} was accepted"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn broken_environment_and_toml_get_errors_that_say_what_to_fix() {
    let base = [
        ("GEMINI_API_KEY", "test-key-hostile-0001"),
        ("GATEWAY_TOKENS", TOKEN),
    ];
    let with = |extra: (&'static str, &'static str)| {
        let mut vars = base.to_vec();
        vars.retain(|(k, _)| *k != extra.0);
        vars.push(extra);
        vars
    };
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            with(("GEMINI_API_KEY", "test-key-hostile-0001,test\u{7}key-0002")),
            "control",
        ),
        (
            with(("GEMINI_API_KEY", "test-key-hostile-0001,test key 0002")),
            "space",
        ),
        (with(("GEMINI_API_KEY", " , ,")), "no keys"),
        (with(("GATEWAY_TOKENS", "short")), "at least 8"),
        (with(("GATEWAY_TOKENS", "token with spaces")), "at least 8"),
        (
            with(("GATEWAY_MAX_WAIT_SECS", "sixty")),
            "whole number of seconds",
        ),
        (
            with(("GATEWAY_LISTEN", "localhost:eighty")),
            "not an address",
        ),
        (with(("LLM_MODEL", "../../files")), "not a model name"),
        (with(("LLM_API_ENDPOINT", "ftp://example.com")), "https://"),
        (
            with(("LLM_API_ENDPOINT", "http://example.com")),
            "plain HTTP",
        ),
        (with(("API_KEY_RANGE", "9-2x")), "API_KEY_RANGE"),
        (
            with(("GATEWAY_MAX_CONNECTIONS", "lots")),
            "GATEWAY_MAX_CONNECTIONS=\"lots\" is not a whole number",
        ),
        (with(("GATEWAY_MAX_CONNECTIONS", "0")), "serve nobody"),
        (
            with(("GATEWAY_BODY_MEMORY_MB", "1")),
            "less than one body may be",
        ),
    ];
    for (vars, expected) in cases {
        let error = config_error(&vars);
        assert!(error.contains(expected), "{vars:?}: {error}");
        for (_, value) in &vars {
            if value.starts_with("test") && value.len() > 12 && !value.contains(',') {
                assert!(!error.contains(value), "the error shows a key: {error}");
            }
        }
    }

    let dir = std::env::temp_dir().join(format!("hostile-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = [
        ("[gateway\nlisten = 1", "configuration file"),
        ("[gateway]\nlisten = 8080", "configuration file"),
        ("[gateway]\nunknown_setting = true", "unknown"),
        ("[gateway]\nredis_when_unreachable = \"maybe\"", "fall_back"),
        ("[gateway]\nmax_wait_secs = -1", "configuration file"),
        (
            "[gateway]\nbody_limit_bytes = 0",
            "refuse every request body",
        ),
        ("[gateway]\nmax_connections = 0", "serve nobody"),
        ("[[keys]]\nvalue = \"test\\u0000key-0001\"", "control"),
        ("\u{0}\u{1}\u{2}binary junk", "configuration file"),
    ];
    for (n, (text, expected)) in files.iter().enumerate() {
        let path = dir.join(format!("broken-{n}.toml"));
        std::fs::write(&path, text).unwrap();
        let flags = Flags {
            config: Some(path),
            ..Flags::default()
        };
        let error = match GatewayConfig::resolve(flags, |name| {
            base.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }) {
            Ok(_) => panic!("{text:?} was accepted"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains(expected), "{text:?}: {error}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A gateway over `mock` with `max_connections` and room for `body_memory` bytes of request
/// bodies at once (each at most that large).
async fn gateway_with_limits(
    mock: &MockServer,
    max_connections: usize,
    body_memory: usize,
) -> Gateway {
    let keys = KEYS.join(",");
    let url = mock.url();
    let mut config = config_from(&[
        ("GEMINI_API_KEY", &keys),
        ("GATEWAY_TOKENS", TOKEN),
        ("LLM_API_ENDPOINT", &url),
        ("LLM_MODEL", MODEL),
    ]);
    config.max_connections = max_connections;
    // These tests are about the limit in all, from one address (tests/attacks.rs has the
    // limit per address).
    config.max_connections_per_address = max_connections;
    config.body_memory = body_memory;
    config.body_limit = body_memory;
    start(config).await
}

/// A connection to the gateway, with a request written (the head and `body`).
async fn open(gateway: &Gateway, content_length: usize, body: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = gateway.base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1beta/models/{MODEL}:generateContent HTTP/1.1\r\nhost: gateway\r\nx-goog-api-key: {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    tcp
}

/// The status line of the answer on `tcp`, if one comes within `wait`.
async fn status_within(
    tcp: &mut tokio::net::TcpStream,
    wait: std::time::Duration,
) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut answer = vec![0; 16 * 1024];
    match tokio::time::timeout(wait, tcp.read(&mut answer)).await {
        Ok(Ok(n)) if n > 0 => Some(
            String::from_utf8_lossy(&answer[..n])
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
        _ => None,
    }
}

/// A JSON prompt padded with spaces to exactly `length` bytes.
fn padded_prompt(length: usize) -> Vec<u8> {
    let mut body = prompt().into_bytes();
    assert!(body.len() <= length);
    body.resize(length, b' ');
    body
}

#[tokio::test]
async fn a_flood_of_connections_waits_in_the_backlog_beyond_the_limit() {
    let mock = mock().await;
    let gateway = gateway_with_limits(&mock, 4, 1 << 20).await;
    // Four connections that send nothing hold the four places.
    let addr = gateway.base.trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // A fifth is connected by the kernel but not served while they are open…
    let length = prompt().len();
    let mut fifth = open(&gateway, length, prompt().as_bytes()).await;
    let waited = std::time::Duration::from_millis(300);
    assert_eq!(status_within(&mut fifth, waited).await, None);
    // …and is served as soon as one closes.
    drop(idle.pop());
    let status = status_within(&mut fifth, std::time::Duration::from_secs(10)).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 200 OK"));
    assert_eq!(mock.stats().total_requests(), 1);
}

#[tokio::test]
async fn request_bodies_beyond_the_memory_for_them_wait_and_oversize_ones_are_refused_unread() {
    let mock = mock().await;
    let gateway = gateway_with_limits(&mock, 64, 64 * 1024).await;
    // A body that says it is larger than the limit is refused before it is read.
    let mut large = open(&gateway, 10 << 20, b"").await;
    let status = status_within(&mut large, std::time::Duration::from_secs(10)).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 413 Payload Too Large"));

    // One client has sent 60 KiB of a body (room is reserved as bytes arrive) and stops.
    let body = padded_prompt(61 * 1024);
    let mut slow = open(&gateway, body.len(), &body[..60 * 1024]).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // A second body of 10 KiB does not fit beside it: it waits rather than fill memory.
    let second = padded_prompt(10 * 1024);
    let mut waiting = open(&gateway, second.len(), &second).await;
    let waited = std::time::Duration::from_millis(300);
    assert_eq!(status_within(&mut waiting, waited).await, None);
    assert_eq!(mock.stats().total_requests(), 0);
    // The first body arrives; both are answered.
    {
        use tokio::io::AsyncWriteExt;
        slow.write_all(&body[60 * 1024..]).await.unwrap();
    }
    let ten = std::time::Duration::from_secs(10);
    assert_eq!(
        status_within(&mut slow, ten).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    assert_eq!(
        status_within(&mut waiting, ten).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    assert_eq!(mock.stats().total_requests(), 2);
}

#[tokio::test]
async fn a_body_of_unknown_length_gives_back_what_it_did_not_use_once_read() {
    use tokio::io::AsyncWriteExt;
    const SLOW: &str = "gemini-2.5-pro";
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key(KEYS[0]))
        .project("proj-b", |p| p.key(KEYS[1]))
        .fault(
            tower_gemini::mock::Fault::latency(std::time::Duration::from_secs(60)).for_model(SLOW),
        )
        .start()
        .await
        .unwrap();
    let gateway = gateway_with_limits(&mock, 64, 64 * 1024).await;
    // A chunked body reserves the largest a body may be (all 64 KiB), then keeps what it
    // took; its upstream call does not end during the test.
    let addr = gateway.base.trim_start_matches("http://");
    let mut chunked = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = prompt();
    let head = format!(
        "POST /v1beta/models/{SLOW}:generateContent HTTP/1.1\r\nhost: gateway\r\nx-goog-api-key: {TOKEN}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    chunked.write_all(head.as_bytes()).await.unwrap();
    // Once it is upstream, a 10 KiB body fits in what it gave back (else it would wait for
    // that answer, or be refused after the body read timeout).
    let ten = std::time::Duration::from_secs(10);
    for _ in 0..100 {
        if mock.stats().total_requests() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let second = padded_prompt(10 * 1024);
    let mut beside = open(&gateway, second.len(), &second).await;
    assert_eq!(
        status_within(&mut beside, ten).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    assert_eq!(
        status_within(&mut chunked, std::time::Duration::ZERO).await,
        None
    );
}

/// Settings of the gateway's configuration file, each with the table it belongs in.
const SETTINGS: &[(&str, &str)] = &[
    ("[gateway]", "listen"),
    ("[gateway]", "upstream"),
    ("[gateway]", "model"),
    ("[gateway]", "tokens"),
    ("[gateway]", "admin_token"),
    ("[gateway]", "allowed_origins"),
    ("[gateway]", "max_wait_secs"),
    ("[gateway]", "body_limit_bytes"),
    ("[gateway]", "max_connections"),
    ("[gateway]", "body_memory_mb"),
    ("[gateway]", "client_limits"),
    ("[gateway]", "revalidate_secs"),
    ("[gateway]", "redis_prefix"),
    ("[gateway]", "redis_when_unreachable"),
    ("[gateway]", "quota_alert"),
    ("[gateway.cache]", "max_mb"),
    ("[gateway.cache]", "ttl_secs"),
    ("[gateway.cache]", "sampled"),
    ("[gateway.cache]", "ttl"),
    ("[gateway.fallback]", "\"gemini-2.5-pro\""),
    ("[gateway.fallback]", "\"../x\""),
    ("[gateway.budget]", "daily_usd"),
    ("[gateway.budget]", "per_project_usd"),
    ("[gateway.budget]", "per_client_usd"),
    ("[gateway.budget]", "projects"),
    ("[gateway.budget]", "thresholds"),
    ("[gateway.budget]", "refuse"),
    ("[gateway.prices.\"gemini-2.5-flash\"]", "input"),
    ("[gateway.prices.\"gemini-2.5-flash\"]", "output"),
    ("[gateway.prices.\"gemini-2.5-flash\"]", "cached_input"),
    ("[models.\"gemini-2.5-flash\"]", "rpm"),
    ("[models.\"gemini-2.5-flash\"]", "tpd"),
    ("[[keys]]", "value"),
    ("[[keys]]", "project"),
];

/// Values a careless or hostile file could give any setting.
const VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "9223372036854775807",
    "-9223372036854775808",
    "1e308",
    "-0.0",
    "nan",
    "inf",
    "-inf",
    "0.5",
    "\"\"",
    "\"x\"",
    "\"../../etc/passwd\"",
    "\"\\u0000\"",
    "\"test-key-config-fuzz-9999 \"",
    "[]",
    "[1.5, -2, 80]",
    "[\"gemini-2.5-flash\", \"gemini-2.5-flash\"]",
    "[\"\"]",
    "{ rpm = -1 }",
    "{ rpm = 0, tpm = 18446744073709551615 }",
    "{ \"gemini-2.5-pro\" = 18446744073709551615 }",
    "{ proj-a = nan }",
    "true",
    "\"http://10.0.0.1\"",
    "\"https://example.com/v1/\"",
    "\"gemini-2.5-pro\"",
    "\"fall_back\"",
];

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 3000, ..Default::default() })]

    /// Any mix of settings and values in the gateway's file: an error that names what is
    /// wrong, or a configuration that holds together — never a panic, never a key shown.
    #[test]
    fn any_gateway_file_is_refused_clearly_or_holds_together(
        picks in proptest::collection::vec((0..SETTINGS.len(), 0..VALUES.len()), 0..8)
    ) {
        let mut tables: Vec<(&str, Vec<String>)> = Vec::new();
        for (setting, value) in picks {
            let (table, name) = SETTINGS[setting];
            let line = format!("{name} = {}", VALUES[value]);
            match tables.iter_mut().find(|(t, _)| *t == table && table != "[[keys]]") {
                Some((_, lines)) => lines.push(line),
                None => tables.push((table, vec![line])),
            }
        }
        let text: String = tables
            .iter()
            .map(|(table, lines)| format!("{table}\n{}\n", lines.join("\n")))
            .collect();
        let path = std::env::temp_dir().join(format!("hostile-gateway-{}.toml", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        let flags = Flags { config: Some(path), ..Flags::default() };
        const KEY: &str = "test-key-config-env-0001";
        // The file's own key-like value may be quoted back where it is not a key (a listen
        // address); given as a key, never.
        const FILE_KEY: &str = "test-key-config-fuzz-9999";
        let only_as_key = text.matches(FILE_KEY).count()
            == text.matches(&format!("value = \"{FILE_KEY}")).count();
        let resolved = GatewayConfig::resolve(flags, |name| match name {
            "GEMINI_API_KEY" => Some(KEY.to_owned()),
            "GATEWAY_TOKENS" => Some(TOKEN.to_owned()),
            _ => None,
        });
        match resolved {
            Ok(config) => {
                let shown = format!("{}\n{:?}", config.describe(), config.pool);
                proptest::prop_assert!(!shown.contains(KEY), "{shown}");
                proptest::prop_assert!(!(only_as_key && shown.contains(FILE_KEY)), "{shown}");
                proptest::prop_assert!(config.max_connections >= 1);
                proptest::prop_assert!(config.body_limit >= 1);
                proptest::prop_assert!(config.body_memory >= config.body_limit);
                proptest::prop_assert!((0.0..=1.0).contains(&config.saving.quota_alert));
            }
            Err(error) => {
                let shown = format!("{error} {error:?}");
                proptest::prop_assert!(!shown.contains(KEY), "{shown}");
                proptest::prop_assert!(!(only_as_key && shown.contains(FILE_KEY)), "{text}\n{shown}");
                proptest::prop_assert!(shown.len() > 20, "{shown}");
            }
        }
    }
}
