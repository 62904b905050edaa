//! Redis stopped mid-run: no panic, the fallback keeps serving and says so, and when Redis
//! returns shared admission resumes by itself. (Its own test binary: it checks log lines,
//! which other tests' threads must not share.)
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use common::Capture;
use common::redis::{Redis, eventually, send};
use http::StatusCode;
use redis::AsyncCommands;
use tower_gemini::clock::ManualClock;
use tower_gemini::mock::MockGemini;
use tower_gemini::pool::ModelLimits;
use tower_gemini::state::{RedisOptions, RedisStore};
use tower_gemini::{KeyPool, KeySpec};

const FLASH: &str = "gemini-2.0-flash";

#[tokio::test]
async fn redis_stopped_mid_run_falls_back_then_shared_admission_resumes() {
    let Some(mut redis) =
        Redis::own("redis_stopped_mid_run_falls_back_then_shared_admission_resumes")
    else {
        return;
    };
    let logs = Capture::default();
    let _guard = logs.install(tracing::Level::INFO);
    let clock = ManualClock::at(jiff::Timestamp::now());
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key("test-key-0001"))
        .clock(clock.clone())
        .start()
        .await
        .unwrap();
    let prefix = Redis::prefix("outage");
    let options = RedisOptions {
        timeout: Duration::from_millis(300),
        retry_every: Duration::from_millis(100),
        ..RedisOptions::default()
    };
    let options = RedisOptions {
        prefix: prefix.clone(),
        ..options
    };
    let store = RedisStore::connect_with(&redis.url, options).await.unwrap();
    let pool = KeyPool::builder()
        .key_with(KeySpec::new("test-key-0001").project("proj-a"))
        .model_limits(
            FLASH,
            ModelLimits {
                rpm: Some(1000),
                ..Default::default()
            },
        )
        .clock(clock.clone())
        .store(store.clone())
        .build()
        .unwrap();
    for _ in 0..3 {
        assert_eq!(send(&pool, &mock).await.unwrap(), StatusCode::OK);
    }
    assert!(store.is_connected());

    redis.stop();
    for _ in 0..5 {
        assert_eq!(send(&pool, &mock).await.unwrap(), StatusCode::OK);
    }
    assert!(!store.is_connected());
    assert!(logs.text().contains("unreachable"), "{}", logs.text());
    assert!(logs.text().contains("falling back"), "{}", logs.text());

    redis.start();
    eventually("reconnected", async || store.is_connected()).await;
    assert!(logs.text().contains("answers again"), "{}", logs.text());
    // Shared admission resumed: the next request is in Redis's ledger.
    assert_eq!(send(&pool, &mock).await.unwrap(), StatusCode::OK);
    let mut look = redis.connection().await;
    let windows: Vec<String> = look.keys(format!("{prefix}:*:pm:*:w")).await.unwrap();
    assert_eq!(windows.len(), 1, "{windows:?}");
    // This Redis came back empty (no persistence): it holds what was admitted while it was
    // away (given back by the fallback) and after.
    let count: u64 = look.zcard(&windows[0]).await.unwrap();
    assert_eq!(
        count,
        5 + 1,
        "the fallback's admissions were given to Redis"
    );
    let days: Vec<String> = look.keys(format!("{prefix}:*:pm:*:d:*")).await.unwrap();
    assert_eq!(days.len(), 1, "{days:?}");
    let day: u64 = look.get(&days[0]).await.unwrap();
    assert_eq!(day, 5 + 1);
    assert!(
        logs.text()
            .contains("counts the 5 requests admitted while it was unreachable"),
        "{}",
        logs.text()
    );
}
