//! No raw key in any log line, Debug/Display string, error or status view during a run full of
//! failures. Everything printable is captured and searched for every key.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Capture, chat, client, generate, stream};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_gemini::mock::{Fault, MockGemini};
use tower_gemini::pool::{KeySpec, ModelLimits};
use tower_gemini::retry::{Backoff, RetryLayer};
use tower_gemini::{KeyPlacement, KeyPool, KeyRotationLayer};

const KEYS: [&str; 5] = [
    "test-key-invalid-0001",
    "test-key-leaked-0002",
    "test-key-limited-0003",
    "test-key-good-0004",
    "test-key-good-0005",
];

fn assert_clean(what: &str, text: &str) {
    for key in KEYS {
        assert!(
            !text.contains(key),
            "{what} contains the raw key {key}:\n{text}"
        );
    }
}

#[test]
fn raw_keys_never_appear_in_logs_errors_or_debug_output() {
    let capture = Capture::default();
    let _guard = capture.install(tracing::Level::TRACE);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut printed = String::new();
    runtime.block_on(async {
        let mock = MockGemini::builder()
            .project("proj-leaky", |p| p.leaked_key(KEYS[1]))
            .project("proj-limited", |p| {
                p.key(KEYS[2]).default_limits(ModelLimits {
                    rpm: Some(1),
                    ..Default::default()
                })
            })
            .project("proj-good", |p| p.key(KEYS[3]).key(KEYS[4]))
            .fault(Fault::overloaded(1.0).for_model("gemini-2.5-pro"))
            .fault(Fault::connection_reset(1.0).for_model("gemini-2.5-flash-lite"))
            .fault(Fault::mid_stream_error(1.0).for_model("gemini-2.5-flash"))
            .start()
            .await
            .unwrap();
        let pool = KeyPool::builder()
            .key_with(KeySpec::new(KEYS[0]).name("invalid"))
            .key_with(KeySpec::new(KEYS[1]).project("proj-leaky"))
            .key_with(KeySpec::new(KEYS[2]).project("proj-limited"))
            .key_with(KeySpec::new(KEYS[3]).project("proj-good"))
            .key_with(KeySpec::new(KEYS[4]).project("proj-good"))
            .build()
            .unwrap();
        printed += &format!("{pool:?}\n");

        for placement in [
            KeyPlacement::Auto,
            KeyPlacement::Query,
            KeyPlacement::Bearer,
        ] {
            let rotation = KeyRotationLayer::new(&pool)
                .placement(placement)
                .layer(client());
            let fast = Backoff::new(Duration::from_millis(1), 2.0, Duration::from_millis(4));
            let svc = RetryLayer::for_pool(&pool).backoff(fast).layer(rotation);
            for model in [
                "gemini-2.0-flash",
                "gemini-2.5-pro",
                "gemini-2.5-flash-lite",
                "nope-model",
            ] {
                for _ in 0..3 {
                    let outcome = svc.clone().oneshot(generate(&mock, model, "hello")).await;
                    match outcome {
                        Ok(response) => {
                            printed += &format!("{response:?}\n");
                            printed += &format!("{:?}\n", response.extensions());
                            let body = response.into_body().collect().await;
                            printed += &format!("{body:?}\n");
                        }
                        Err(error) => printed += &format!("{error}\n{error:?}\n"),
                    }
                }
            }
            for request in [
                stream(&mock, "gemini-2.5-flash", "x"),
                chat(&mock, "gemini-2.0-flash", "x"),
            ] {
                match svc.clone().oneshot(request).await {
                    Ok(response) => {
                        let body = response.into_body().collect().await;
                        printed += &format!("{:?}\n", body.err());
                    }
                    Err(error) => printed += &format!("{error}\n{error:?}\n"),
                }
            }
        }

        // A client whose errors quote the URL (as reqwest's do), with the key in the query.
        let echoing = service_fn(|request: Request<Full<Bytes>>| async move {
            let message = format!(
                "error sending request for url ({}): connection refused",
                request.uri()
            );
            Err::<Response<Full<Bytes>>, _>(std::io::Error::other(message))
        });
        let mut svc = KeyRotationLayer::new(&pool)
            .placement(KeyPlacement::Query)
            .layer(echoing);
        for _ in 0..5 {
            let error = svc
                .ready()
                .await
                .unwrap()
                .call(generate(&mock, "gemini-2.0-flash", "x"))
                .await
                .unwrap_err();
            let mut chain = format!("{error}\n{error:?}\n");
            let mut source = std::error::Error::source(&error);
            while let Some(s) = source {
                chain += &format!("{s}\n{s:?}\n");
                source = s.source();
            }
            assert!(chain.contains("connection refused"), "{chain}");
            printed += &chain;
        }

        printed += &serde_json::to_string_pretty(&pool.snapshot()).unwrap();
        printed += &format!("{:?}\n", pool.snapshot());
        let calls = pool.recent_calls();
        assert!(
            calls.iter().any(|c| c.detail.is_some()),
            "failures were logged"
        );
        printed += &serde_json::to_string_pretty(&calls).unwrap();
        printed += &serde_json::to_string(&pool.save()).unwrap();
        match pool.select(Some("gemini-2.0-flash")) {
            Ok(lease) => printed += &format!("{lease:?} {:?}\n", lease.selected()),
            Err(error) => printed += &format!("{error:?}\n"),
        }
        printed += &format!("{:?}\n", mock.stats());
        printed += &format!("{mock:?}\n");
    });

    // Configuration errors that involve keys.
    let builder = KeyPool::builder()
        .key(KEYS[0])
        .key_with(KeySpec::new(KEYS[1]).name("n"));
    printed += &format!("{builder:?}\n");
    let bad = format!("{} with space", KEYS[3]);
    if let Err(error) = KeyPool::from_keys([bad.as_str()]) {
        printed += &format!("{error}\n{error:?}\n");
    }
    if let Err(error) =
        KeyPool::from_toml_str(&format!("[[keys]]\nvalue = \"{}\" trailing\n", KEYS[3]))
    {
        printed += &format!("{error}\n{error:?}\n");
    }
    if let Err(error) = KeyPool::from_toml_str(&format!("[[keys]]\npriority = \"{}\"\n", KEYS[4])) {
        printed += &format!("{error}\n{error:?}\n");
    }

    let logs = capture.text();
    // The run did log and print the interesting events, by fingerprint.
    assert!(
        logs.contains("…0001") && logs.contains("key_invalid"),
        "{logs}"
    );
    assert!(
        logs.contains("…0002") && logs.contains("key_forbidden"),
        "{logs}"
    );
    assert!(logs.contains("quota_minute"), "{logs}");
    assert!(printed.contains("…0004"), "{printed}");
    assert_clean("the logs", &logs);
    assert_clean("the printed values", &printed);
}
