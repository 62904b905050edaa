//! No raw key or client token anywhere the gateway shows or keeps anything: every log line at
//! TRACE, every answer's body and headers (successes, refusals, upstream errors, streams,
//! OpenAI and native shapes), the status API, the dashboard, `/metrics`, the admin API's
//! answers (a key added through it included), a reload that changes the keys, the state file
//! and the Redis keyspace. The run is
//! full of failures on purpose: an invalid key, a leaked one, a rate-limited one, overloaded
//! and reset answers. (Its own binary: tracing's callsite cache is shared by the threads of one
//! process.)
#![cfg(feature = "gateway")]

mod common;

use bytes::Bytes;
use common::gateway::start;
use common::{Capture, client};
use http::Request;
use http_body_util::Full;
use tower_gemini::cache::CacheLayer;
use tower_gemini::cost::Budget;
use tower_gemini::fallback::FallbackLayer;
use tower_gemini::gateway::Saving;
use tower_gemini::mock::{Fault, MockGemini};
use tower_gemini::pool::ModelLimits;

const KEYS: [&str; 4] = [
    "test-key-logs-0001", // unknown to the mock: invalid
    "test-key-logs-0002", // leaked
    "test-key-logs-0003", // fine
    "test-key-logs-0004", // one request a minute
];
const ADDED: &str = "test-key-logs-added-0005";
/// Keys of the configuration file: the first replaced by the second in a reload.
const FILED: [&str; 2] = ["test-key-logs-file-0006", "test-key-logs-file-0007"];
const TOKEN: &str = "client-token-logs-0001";
/// A client with a tiny daily budget: it is alerted, then refused.
const SPENDER: &str = "client-token-logs-spender-0002";
const ADMIN: &str = "admin-token-logs-0001";
const WRONG: &str = "wrong-token-logs-9999";

fn secrets() -> Vec<&'static str> {
    KEYS.iter()
        .copied()
        .chain([ADDED, TOKEN, SPENDER, ADMIN, WRONG])
        .chain(FILED)
        .collect()
}

/// Everything printable about one answer: status, headers, body.
async fn shown(response: http::Response<hyper::body::Incoming>) -> String {
    let head = format!("{} {:?}", response.status(), response.headers());
    // A broken stream is read up to the break.
    let (body, _) = common::drain(response.into_body()).await;
    format!("{head}\n{body}")
}

#[test]
fn no_secret_in_any_log_line_answer_page_metric_file_or_redis_key() {
    let capture = Capture::default();
    let _guard = capture.install(tracing::Level::TRACE);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("secrets-gateway-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state_file = dir.join("state.json");
    #[cfg(feature = "redis")]
    let redis = common::redis::Redis::any("no_secret_in_..._redis_key");
    let mut seen: Vec<(String, String)> = Vec::new();
    runtime.block_on(async {
        let mock = MockGemini::builder()
            .project("proj-leaked", |p| p.leaked_key(KEYS[1]))
            .project("proj-good", |p| {
                p.key(KEYS[2]).key(ADDED).key(FILED[0]).key(FILED[1])
            })
            .project("proj-limited", |p| {
                p.key(KEYS[3]).default_limits(ModelLimits {
                    rpm: Some(1),
                    ..Default::default()
                })
            })
            .fault(Fault::overloaded(1.0).for_model("gemini-2.5-pro"))
            .fault(Fault::connection_reset(1.0).for_model("gemini-2.5-flash-lite"))
            .fault(Fault::mid_stream_error(1.0).for_model("gemini-2.5-flash"))
            .start()
            .await
            .unwrap();
        let keys = KEYS.join(",");
        let tokens = format!("{TOKEN},{SPENDER}");
        let url = mock.url();
        let state = state_file.display().to_string();
        let mut vars = vec![
            ("GEMINI_API_KEY", keys.as_str()),
            ("GATEWAY_TOKENS", tokens.as_str()),
            ("ADMIN_TOKEN", ADMIN),
            ("LLM_API_ENDPOINT", url.as_str()),
            ("GATEWAY_STATE_FILE", state.as_str()),
            // Fail rather than wait for a slot: the run is about what is shown, not served.
            ("GATEWAY_MAX_WAIT_SECS", "0"),
        ];
        #[cfg(feature = "redis")]
        let prefix = common::redis::Redis::prefix("secrets-gateway");
        #[cfg(feature = "redis")]
        if let Some(redis) = &redis {
            vars.push(("REDIS_URL", redis.url.as_str()));
            vars.push(("REDIS_PREFIX", prefix.as_str()));
        }
        // A configuration file too, with a key of its own, for a reload that changes the keys.
        let file = dir.join("gateway.toml");
        let filed = |key: &str| format!("[[keys]]\nvalue = \"{key}\"\nproject = \"proj-good\"\n");
        std::fs::write(&file, filed(FILED[0])).unwrap();
        let flags = tower_gemini::gateway::Flags {
            config: Some(file.clone()),
            ..Default::default()
        };
        let mut config = tower_gemini::gateway::GatewayConfig::resolve(flags, |name| {
            vars.iter()
                .rev()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
        .unwrap();
        // The layers that save quota and money, on: a cache (shared through Redis when there
        // is one), a fallback chain, and budgets small enough to alert and refuse per client.
        config.saving = Saving {
            cache: Some(CacheLayer::new()),
            fallback: FallbackLayer::new()
                .chain("gemini-2.5-pro", ["gemini-2.0-flash"])
                .unwrap(),
            budget: Budget::new()
                .account_usd("…0002", 0.000_01)
                .unwrap()
                .refuse_when_spent(true),
            ..Saving::default()
        };
        tracing::info!("{}", config.describe());
        seen.push((
            "the configuration's Debug".into(),
            format!("{:?}", config.pool),
        ));
        let mut gateway = start(config).await;
        let base = gateway.base.clone();
        let mut ask = async |what: &str, request: Request<Full<Bytes>>| {
            let response = client().request(request).await.unwrap();
            seen.push((what.to_owned(), shown(response).await));
        };
        let generate = |model: &str, token: &str, how: &str| {
            let builder = Request::post(format!(
                "{base}/v1beta/models/{model}:generateContent{}",
                if how == "query" {
                    format!("?key={token}")
                } else {
                    String::new()
                }
            ));
            let builder = match how {
                "bearer" => builder.header("authorization", format!("Bearer {token}")),
                "header" => builder.header("x-goog-api-key", token),
                _ => builder,
            };
            builder
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(common::generate_body("hi"))))
                .unwrap()
        };
        for _ in 0..3 {
            for how in ["bearer", "header", "query"] {
                ask("a native call", generate("gemini-2.0-flash", TOKEN, how)).await;
            }
        }
        // A client with a tiny budget: alerted, then refused.
        for _ in 0..4 {
            ask("a spender's call", generate("gemini-2.0-flash", SPENDER, "header")).await;
        }
        // A deterministic prompt twice: stored, then answered from the cache.
        for _ in 0..2 {
            ask(
                "a cached call",
                Request::post(format!(
                    "{base}/v1beta/models/gemini-2.0-flash:generateContent?key={TOKEN}"
                ))
                .body(Full::new(Bytes::from(
                    r#"{"contents":[{"parts":[{"text":"the same"}]}],"generationConfig":{"temperature":0}}"#,
                )))
                .unwrap(),
            )
            .await;
        }
        // One call each (more would open the model's circuit, and a caller then waits for
        // its half-open probe).
        ask(
            "an overloaded call",
            generate("gemini-2.5-pro", TOKEN, "query"),
        )
        .await;
        ask(
            "a call that fell back",
            generate("gemini-2.5-pro", TOKEN, "bearer"),
        )
        .await;
        ask(
            "a reset call",
            generate("gemini-2.5-flash-lite", TOKEN, "bearer"),
        )
        .await;
        for how in ["bearer", "header", "query"] {
            ask("a refused token", generate("gemini-2.0-flash", WRONG, how)).await;
        }
        ask(
            "a stream broken by an error",
            Request::post(format!(
                "{base}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key={TOKEN}"
            ))
            .body(Full::new(Bytes::from(common::generate_body(
                "one two three",
            ))))
            .unwrap(),
        )
        .await;
        ask(
            "an OpenAI chat",
            Request::post(format!("{base}/v1/chat/completions"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Full::new(Bytes::from(
                    r#"{"messages":[{"role":"user","content":"hi"}]}"#,
                )))
                .unwrap(),
        )
        .await;
        let admin = |method: http::Method, path: &str, body: &str| {
            Request::builder()
                .method(method)
                .uri(format!("{base}{path}"))
                .header("authorization", format!("Bearer {ADMIN}"))
                .body(Full::new(Bytes::from(body.to_owned())))
                .unwrap()
        };
        ask(
            "a key added through the admin API",
            admin(
                http::Method::POST,
                "/api/keys",
                &format!(r#"{{"key":"{ADDED}","project":"proj-good"}}"#),
            ),
        )
        .await;
        ask(
            "a malformed key added through the admin API",
            admin(
                http::Method::POST,
                "/api/keys",
                &format!(r#"{{"key":"{ADDED} with spaces"}}"#),
            ),
        )
        .await;
        ask(
            "a call on the new key",
            generate("gemini-2.0-flash", TOKEN, "header"),
        )
        .await;
        ask(
            "the status API",
            admin(http::Method::GET, "/api/keys/status", ""),
        )
        .await;
        ask("the metrics", admin(http::Method::GET, "/metrics", "")).await;
        ask("the dashboard", admin(http::Method::GET, "/", "")).await;
        ask(
            "a reset",
            admin(http::Method::POST, "/api/keys/0003/reset", ""),
        )
        .await;
        ask(
            "the status API with the client token",
            Request::get(format!("{base}/api/keys/status"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        // The file's key replaced by another, through a reload.
        std::fs::write(&file, filed(FILED[1])).unwrap();
        ask(
            "a reload that changes the keys",
            admin(http::Method::POST, "/api/config/reload", ""),
        )
        .await;
        ask(
            "a call after the reload",
            generate("gemini-2.0-flash", TOKEN, "header"),
        )
        .await;
        // Stop: the state file is written.
        gateway.stop.take().unwrap().send(()).unwrap();
        gateway.served.await.unwrap();
        let file = std::fs::read_to_string(&state_file).unwrap();
        assert!(
            file.contains("0003"),
            "the state file holds the keys' state"
        );
        seen.push(("the state file".into(), file));

        #[cfg(feature = "redis")]
        if let Some(redis) = &redis {
            let mut connection = redis.connection().await;
            let names: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}*"))
                .query_async(&mut connection)
                .await
                .unwrap();
            assert!(!names.is_empty(), "the gateway used Redis");
            assert!(
                names.iter().any(|n| n.contains(":cache:")),
                "the cache's second level used Redis: {names:?}"
            );
            let mut keyspace = names.join("\n");
            for name in &names {
                let dump: Vec<u8> = redis::cmd("DUMP")
                    .arg(name)
                    .query_async(&mut connection)
                    .await
                    .unwrap_or_default();
                keyspace.push_str(&String::from_utf8_lossy(&dump));
            }
            seen.push(("the Redis keyspace".into(), keyspace));
        }
    });
    std::fs::remove_dir_all(&dir).unwrap();
    let logs = capture.text();
    assert!(logs.contains("…0003"), "the run was logged");
    assert!(
        logs.contains("…0005"),
        "the added key was logged by fingerprint"
    );
    assert!(
        logs.contains("keys from the configuration file: added …0007; removed …0006"),
        "the reload's keys were logged by fingerprint"
    );
    // The saving layers acted: a hit, a fallback, a budget alert and a refusal.
    let answers = |what: &str| -> Vec<&String> {
        seen.iter()
            .filter(|(w, _)| w == what)
            .map(|(_, t)| t)
            .collect()
    };
    assert!(
        answers("a cached call")[1].contains("\"x-gemini-cache\": \"hit\""),
        "{:?}",
        answers("a cached call")
    );
    assert!(
        answers("a call that fell back")[0]
            .contains("\"x-gemini-fallback\": \"gemini-2.5-pro; reason="),
        "{:?}",
        answers("a call that fell back")
    );
    assert!(
        logs.contains("of its daily budget"),
        "a budget alert was logged"
    );
    assert!(
        seen.iter()
            .any(|(_, t)| t.starts_with("429") && t.contains("budget")),
        "a spent budget refused a call"
    );
    seen.push(("the log".into(), logs));
    for (what, text) in &seen {
        for secret in secrets() {
            assert!(!text.contains(secret), "{what} holds {secret}:\n{text}");
        }
    }
}
