//! Shared state through Redis: several pools (as several processes would) share one ledger,
//! one set of cool-downs, disabled keys and learned limits; Redis going away mid-run is
//! survived and its return noticed. Over real HTTP to the mock.
//!
//! Needs a Redis: `REDIS_URL`, or a `redis-server` binary (each test then starts its own);
//! without either, each test prints that it was skipped and how to run it.
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
use tower_gemini::quota::Dimension;
use tower_gemini::state::{RedisOptions, RedisStore, WhenUnreachable};
use tower_gemini::{ErrorKind, KeyPool, KeySpec};

const FLASH: &str = "gemini-2.0-flash";

fn rpm(limit: u32) -> ModelLimits {
    ModelLimits {
        rpm: Some(limit),
        ..Default::default()
    }
}

/// A clock at the real time (the day counters expire at the real Pacific midnight).
fn clock() -> ManualClock {
    ManualClock::at(jiff::Timestamp::now())
}

async fn store(redis: &Redis, prefix: &str, options: RedisOptions) -> RedisStore {
    let options = RedisOptions {
        prefix: prefix.to_owned(),
        ..options
    };
    RedisStore::connect_with(&redis.url, options).await.unwrap()
}

/// One "process": its own pool over the shared store.
fn pool(
    clock: &ManualClock,
    store: &RedisStore,
    keys: &[&str],
    limits: Option<ModelLimits>,
) -> KeyPool {
    let builder = keys.iter().fold(KeyPool::builder(), |b, k| {
        b.key_with(KeySpec::new(*k).project("proj-a"))
    });
    let builder = match limits {
        Some(limits) => builder.model_limits(FLASH, limits),
        None => builder,
    };
    builder
        .clock(clock.clone())
        .store(store.clone())
        .build()
        .unwrap()
}

#[tokio::test]
async fn two_processes_share_one_ledger() {
    let Some(redis) = Redis::any("two_processes_share_one_ledger") else {
        return;
    };
    let clock = clock();
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key("test-key-0001").limits(FLASH, rpm(5)))
        .clock(clock.clone())
        .start()
        .await
        .unwrap();
    let prefix = Redis::prefix("ledger");
    let one = pool(
        &clock,
        &store(&redis, &prefix, RedisOptions::default()).await,
        &["test-key-0001"],
        Some(rpm(5)),
    );
    let two = pool(
        &clock,
        &store(&redis, &prefix, RedisOptions::default()).await,
        &["test-key-0001"],
        Some(rpm(5)),
    );

    // Each alone would admit 5; together they admit 5, then both refuse before sending.
    let mut sent = 0;
    let mut refusals = Vec::new();
    for i in 0..10 {
        let pool = if i % 2 == 0 { &one } else { &two };
        match send(pool, &mock).await {
            Ok(status) => {
                assert_eq!(status, StatusCode::OK);
                sent += 1;
            }
            Err(error) => refusals.push(error),
        }
    }
    assert_eq!(sent, 5);
    assert_eq!(refusals.len(), 5);
    for error in &refusals {
        assert_eq!(error.kind(), ErrorKind::QuotaExhausted, "{error}");
        assert_eq!(
            error.dimension(),
            Some(Dimension::RequestsPerMinute),
            "{error}"
        );
    }
    assert_eq!(mock.stats().responses_with_status(429), 0);
    assert_eq!(mock.stats().total_requests(), 5);

    // A minute later the window has room again, for either.
    clock.advance(Duration::from_secs(61));
    assert_eq!(send(&two, &mock).await.unwrap(), StatusCode::OK);
    assert_eq!(send(&one, &mock).await.unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn what_one_process_learns_the_others_know() {
    let Some(redis) = Redis::any("what_one_process_learns_the_others_know") else {
        return;
    };
    let logs = Capture::default();
    let _guard = logs.install(tracing::Level::INFO);
    let clock = clock();
    // test-key-9999 is unknown to the mock (invalid); proj-a allows 3 RPM, unknown to the pools.
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key("test-key-0001").limits(FLASH, rpm(3)))
        .clock(clock.clone())
        .start()
        .await
        .unwrap();
    let prefix = Redis::prefix("learn");
    let keys = ["test-key-9999", "test-key-0001"];
    let one = pool(
        &clock,
        &store(&redis, &prefix, RedisOptions::default()).await,
        &keys,
        None,
    );
    let two = pool(
        &clock,
        &store(&redis, &prefix, RedisOptions::default()).await,
        &keys,
        None,
    );

    // One finds the invalid key (and moves on to the good one).
    assert_eq!(send(&one, &mock).await.unwrap(), StatusCode::OK);
    assert_eq!(mock.stats().requests_for("test-key-9999"), 1);
    let mut look = redis.connection().await;
    eventually("the disabled key is written", async || {
        let names: Vec<String> = look.keys(format!("{prefix}:*:k:*")).await.unwrap();
        !names.is_empty()
    })
    .await;
    // Two never sends it: Redis says it is disabled, and two's own pool now knows.
    assert_eq!(send(&two, &mock).await.unwrap(), StatusCode::OK);
    assert_eq!(mock.stats().requests_for("test-key-9999"), 1);
    assert_eq!(
        two.snapshot().keys[0].reason,
        Some(tower_gemini::pool::DisabledReason::KeyInvalid)
    );

    // One spends the rest of the minute and meets Google's 429 (it had no limit configured):
    // it learns the limit of 3 and the cool-down; two learns both from Redis, sending nothing.
    assert_eq!(send(&one, &mock).await.unwrap(), StatusCode::OK);
    let error = send(&one, &mock).await.unwrap_err();
    assert_eq!(mock.stats().responses_with_status(429), 1, "{error}");
    eventually("the cool-down is written", async || {
        let names: Vec<String> = look.keys(format!("{prefix}:*:pm:*:st")).await.unwrap();
        !names.is_empty()
    })
    .await;
    let before = mock.stats().total_requests();
    let error = send(&two, &mock).await.unwrap_err();
    // Its own pool now has the project cooling, as if two had seen the 429 itself.
    assert_eq!(error.kind(), ErrorKind::NoKeyAvailable, "{error}");
    assert!(
        error.retry_after().unwrap() > Duration::from_secs(50),
        "{error}"
    );
    assert_eq!(
        mock.stats().total_requests(),
        before,
        "two sent nothing: {error}"
    );
    // And after the cool-down, the limit one learned holds for two as well: Redis has it.
    clock.advance(Duration::from_secs(61));
    mock.reset_usage();
    for _ in 0..3 {
        assert_eq!(send(&two, &mock).await.unwrap(), StatusCode::OK);
    }
    let error = send(&two, &mock).await.unwrap_err();
    assert_eq!(
        error.kind(),
        ErrorKind::QuotaExhausted,
        "{error}\n{}",
        logs.text()
    );
    assert_eq!(
        error.dimension(),
        Some(Dimension::RequestsPerMinute),
        "{error}"
    );
    assert_eq!(
        mock.stats().responses_with_status(429),
        1,
        "only one's first: {error}"
    );
    let text = logs.text();
    assert!(
        !text.contains("unreachable") && !text.contains("refused a command"),
        "{text}"
    );

    // Nothing in Redis names a key.
    let names: Vec<String> = look.keys(format!("{prefix}:*")).await.unwrap();
    assert!(!names.is_empty());
    for name in names {
        assert!(!name.contains("test-key"), "{name}");
        let kind: String = redis::cmd("TYPE")
            .arg(&name)
            .query_async(&mut look)
            .await
            .unwrap();
        let values: Vec<String> = match kind.as_str() {
            "hash" => look.hgetall::<_, Vec<String>>(&name).await.unwrap(),
            "zset" => look.zrange(&name, 0, -1).await.unwrap(),
            "string" => vec![look.get(&name).await.unwrap()],
            other => panic!("unexpected {other}"),
        };
        for value in values {
            assert!(
                !value.contains("test-key") && !value.contains("9999"),
                "{name}: {value}"
            );
        }
    }
}

#[tokio::test]
async fn set_to_refuse_it_refuses_while_redis_is_away() {
    let Some(mut redis) = Redis::own("set_to_refuse_it_refuses_while_redis_is_away") else {
        return;
    };
    let clock = clock();
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key("test-key-0001"))
        .clock(clock.clone())
        .start()
        .await
        .unwrap();
    let options = RedisOptions {
        when_unreachable: WhenUnreachable::Refuse,
        timeout: Duration::from_millis(300),
        retry_every: Duration::from_millis(100),
        ..RedisOptions::default()
    };
    let store = store(&redis, &Redis::prefix("refuse"), options).await;
    let pool = pool(&clock, &store, &["test-key-0001"], None);
    assert_eq!(send(&pool, &mock).await.unwrap(), StatusCode::OK);
    redis.stop();
    let error = send(&pool, &mock).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::StateUnavailable, "{error}");
    assert_eq!(error.status_code(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(mock.stats().total_requests(), 1);
    redis.start();
    eventually("the store reconnects", async || store.is_connected()).await;
    assert_eq!(send(&pool, &mock).await.unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn a_malformed_url_is_a_clear_error_without_the_password() {
    let error = RedisStore::connect("redis://:hunter2@127.0.0.1:notaport")
        .await
        .unwrap_err();
    let text = error.to_string();
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(
        text.contains("malformed") && !text.contains("hunter2"),
        "{text}"
    );
}

/// A caller that gives up while Redis decides (a client disconnecting, a timeout around the
/// call) takes no slot: neither the shared one the script may have taken nor the local one.
#[tokio::test]
async fn a_caller_giving_up_during_the_shared_admission_takes_no_slot() {
    use futures_util::FutureExt;
    use tower::{Layer, ServiceExt};

    let Some(redis) = Redis::any("a_caller_giving_up_during_the_shared_admission_takes_no_slot")
    else {
        return;
    };
    let clock = clock();
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key("test-key-0001"))
        .clock(clock.clone())
        .start()
        .await
        .unwrap();
    let store = store(&redis, &Redis::prefix("give-up"), RedisOptions::default()).await;
    let pool = pool(&clock, &store, &["test-key-0001"], Some(rpm(1)));
    for _ in 0..3 {
        let call = tower_gemini::stack(&pool)
            .layer(common::client())
            .oneshot(common::generate(&mock, FLASH, "hello"));
        let mut call = Box::pin(call);
        // One poll: the key is chosen, the local slot reserved, the admission sent to Redis.
        assert!((&mut call).now_or_never().is_none());
        drop(call);
    }
    // Three callers gave up; the one slot of the minute is still there for a real request.
    eventually("the given-up admissions are given back", async || {
        send(&pool, &mock).await.is_ok()
    })
    .await;
    assert_eq!(mock.stats().total_requests(), 1);
}

/// The cache's Redis second level: an answer one process stored is served to another without
/// an upstream call; a Redis that is gone leaves each process its own cache.
#[cfg(feature = "cache")]
#[tokio::test]
async fn cached_answers_are_shared_through_redis() {
    use tower::{Layer, ServiceExt};
    use tower_gemini::KeyRotationLayer;
    use tower_gemini::cache::{CACHE_HEADER, CacheLayer};

    let Some(redis) = Redis::any("cached_answers_are_shared_through_redis") else {
        return;
    };
    let prefix = Redis::prefix("cache-l2");
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key("test-key-l2-0001"))
        .start()
        .await
        .unwrap();
    let pool = KeyPool::from_keys(["test-key-l2-0001"]).unwrap();
    let ask = |cache: CacheLayer, text: &'static str| {
        let pool = pool.clone();
        let url = mock.model_url(FLASH, "generateContent");
        async move {
            let body = format!(
                r#"{{"contents":[{{"parts":[{{"text":"{text}"}}]}}],"generationConfig":{{"temperature":0}}}}"#
            );
            let request = http::Request::post(url)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap();
            let service = cache.layer(KeyRotationLayer::new(&pool).layer(common::client()));
            let response = service.oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let said = response.headers()[CACHE_HEADER]
                .to_str()
                .unwrap()
                .to_owned();
            (said, common::text(response).await)
        }
    };
    // Two processes: each its own local cache, one Redis.
    let first =
        CacheLayer::new().second_level(store(&redis, &prefix, RedisOptions::default()).await);
    let second =
        CacheLayer::new().second_level(store(&redis, &prefix, RedisOptions::default()).await);
    let (said, answer) = ask(first.clone(), "shared question").await;
    assert_eq!(said, "miss");
    // Written to Redis in the background.
    let mut connection = redis.connection().await;
    eventually("the entry in Redis", async || {
        let names: Vec<String> = connection.keys(format!("{prefix}:cache:*")).await.unwrap();
        names.len() == 1
    })
    .await;
    let (said, again) = ask(second.clone(), "shared question").await;
    assert_eq!((said.as_str(), again.as_str()), ("hit", answer.as_str()));
    assert_eq!(mock.stats().total_requests(), 1);
    // Now in the second process's memory too.
    assert_eq!(second.usage().await.0, 1);
    // The entry lives its TTL in Redis, and holds no key.
    let names: Vec<String> = connection.keys(format!("{prefix}:cache:*")).await.unwrap();
    let ttl: i64 = connection.pttl(&names[0]).await.unwrap();
    assert!(ttl > 3_500_000 && ttl <= 3_600_000, "{ttl}");
    let stored: Vec<u8> = connection.get(&names[0]).await.unwrap();
    assert!(!String::from_utf8_lossy(&stored).contains("test-key-l2-0001"));

    // Redis gone: a store that cannot reach it; the cache still works locally.
    let nowhere = RedisOptions {
        timeout: Duration::from_millis(100),
        ..RedisOptions::default()
    };
    let unreachable = RedisStore::connect_with("redis://127.0.0.1:1", nowhere)
        .await
        .unwrap();
    let alone = CacheLayer::new().second_level(unreachable);
    assert_eq!(ask(alone.clone(), "alone").await.0, "miss");
    assert_eq!(ask(alone, "alone").await.0, "hit");
    assert_eq!(mock.stats().total_requests(), 2);
}

/// A Redis that hangs (here: every client paused) costs the cache's second level one timeout,
/// not one per miss: the store is marked unreachable at the first and tried again in the
/// background; the cache keeps serving from memory and upstream.
#[cfg(feature = "cache")]
#[tokio::test]
async fn a_hanging_redis_costs_the_cache_one_timeout_not_one_per_miss() {
    use tower::{Layer, ServiceExt};
    use tower_gemini::KeyRotationLayer;
    use tower_gemini::cache::CacheLayer;

    let Some(redis) = Redis::own("a_hanging_redis_costs_the_cache_one_timeout_not_one_per_miss")
    else {
        return;
    };
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key("test-key-l2-0002"))
        .start()
        .await
        .unwrap();
    let pool = KeyPool::from_keys(["test-key-l2-0002"]).unwrap();
    let options = RedisOptions {
        timeout: Duration::from_millis(200),
        retry_every: Duration::from_millis(100),
        ..RedisOptions::default()
    };
    let shared = store(&redis, &Redis::prefix("cache-hang"), options).await;
    assert!(shared.is_connected());
    let cache = CacheLayer::new().second_level(shared.clone());
    let ask = |text: String| {
        let body = format!(
            r#"{{"contents":[{{"parts":[{{"text":"{text}"}}]}}],"generationConfig":{{"temperature":0}}}}"#
        );
        let request = http::Request::post(mock.model_url(FLASH, "generateContent"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        cache
            .layer(KeyRotationLayer::new(&pool).layer(common::client()))
            .oneshot(request)
    };
    // Every client of this Redis waits for 2 s from now.
    let mut pauser = redis.connection().await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2000)
        .arg("ALL")
        .query_async(&mut pauser)
        .await
        .unwrap();
    let response = ask("first miss".into()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        !shared.is_connected(),
        "a lookup that timed out marks Redis unreachable"
    );
    // The next misses do not ask it.
    for n in 0..5 {
        let response = ask(format!("miss {n}")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert!(!shared.is_connected());
    assert_eq!(mock.stats().total_requests(), 6);
    // And when it answers again, it is used again.
    eventually("Redis back", async || shared.is_connected()).await;
}

/// Pins through Redis: what one process records, another reads; a live record of one tenant
/// is not taken over by a record naming another (an upstream that reused an id); a delete
/// forgets it for all.
#[tokio::test]
async fn pins_are_shared_and_stay_their_tenants() {
    use std::sync::Arc;
    use tower_gemini::state::{PinRecord, Store};

    let Some(redis) = Redis::any("pins_are_shared_and_stay_their_tenants") else {
        return;
    };
    let prefix = Redis::prefix("pins");
    let one = store(&redis, &prefix, RedisOptions::default()).await;
    let other = store(&redis, &prefix, RedisOptions::default()).await;
    let now = 1_000;
    let alice = PinRecord {
        project: Arc::from("proj-a"),
        expires_at: now + 60_000,
        tenant: Some(Arc::from("client-alice")),
        tokens: 40,
    };
    one.pin("interactions/v1_x", &alice, now).unwrap().await;
    assert_eq!(
        other.pinned("interactions/v1_x").unwrap().await,
        Some(alice.clone())
    );
    let mallory = PinRecord {
        project: Arc::from("proj-b"),
        tenant: Some(Arc::from("client-mallory")),
        ..alice.clone()
    };
    other.pin("interactions/v1_x", &mallory, now).unwrap().await;
    assert_eq!(
        one.pinned("interactions/v1_x").unwrap().await,
        Some(alice.clone())
    );
    // Alice's own update (the conversation grew) is taken.
    let grown = PinRecord {
        tokens: 90,
        ..alice
    };
    one.pin("interactions/v1_x", &grown, now).unwrap().await;
    assert_eq!(
        other.pinned("interactions/v1_x").unwrap().await,
        Some(grown)
    );
    other.unpin("interactions/v1_x");
    for _ in 0..100 {
        if one.pinned("interactions/v1_x").unwrap().await.is_none() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the delete did not reach the other process");
}
