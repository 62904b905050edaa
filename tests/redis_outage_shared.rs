//! Two processes share a daily limit through Redis; one serves alone through an outage. When
//! Redis answers again, what it admitted meanwhile is given to Redis, and the other process
//! sends nothing Google would refuse. (Its own test binary, as `redis_outage`: Redis servers
//! of its own are stopped and started.)
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use common::redis::{Redis, eventually, send};
use http::StatusCode;
use tower_gemini::clock::ManualClock;
use tower_gemini::mock::MockGemini;
use tower_gemini::pool::ModelLimits;
use tower_gemini::state::{RedisOptions, RedisStore, WhenUnreachable};
use tower_gemini::{ErrorKind, KeyPool, KeySpec};

const FLASH: &str = "gemini-2.0-flash";
/// The day's requests, and how many the first process spends alone: more than one of the
/// store's transactions gives back.
const DAY: u32 = 2_000;
const ALONE: usize = 1_500;

#[tokio::test]
async fn what_one_process_admitted_during_an_outage_counts_for_the_others() {
    let Some(mut redis) =
        Redis::own("what_one_process_admitted_during_an_outage_counts_for_the_others")
    else {
        return;
    };
    let clock = ManualClock::at(jiff::Timestamp::now());
    let daily = ModelLimits {
        rpd: Some(DAY),
        ..Default::default()
    };
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key("test-key-0001").limits(FLASH, daily))
        .clock(clock.clone())
        .start()
        .await
        .unwrap();
    let options = RedisOptions {
        timeout: Duration::from_millis(300),
        retry_every: Duration::from_millis(100),
        prefix: Redis::prefix("outage-shared"),
        ..RedisOptions::default()
    };
    let process = async |when_unreachable| {
        let options = RedisOptions {
            when_unreachable,
            ..options.clone()
        };
        let store = RedisStore::connect_with(&redis.url, options).await.unwrap();
        let pool = KeyPool::builder()
            .key_with(KeySpec::new("test-key-0001").project("proj-a"))
            .model_limits(FLASH, daily)
            .clock(clock.clone())
            .store(store.clone())
            .build()
            .unwrap();
        (store, pool)
    };
    let (one_store, one) = process(WhenUnreachable::FallBack).await;
    // The other refuses while it cannot reach Redis: what it sends is decided by Redis alone.
    let (other_store, other) = process(WhenUnreachable::Refuse).await;
    assert!(one_store.is_connected() && other_store.is_connected());

    redis.stop();
    // Only the first process serves during the outage.
    for _ in 0..ALONE {
        assert_eq!(send(&one, &mock).await.unwrap(), StatusCode::OK);
    }
    assert!(!one_store.is_connected());
    redis.start();
    eventually("reconnected", async || one_store.is_connected()).await;
    // The other process has not noticed the outage; once it has reconnected too, it asks
    // Redis, which now counts what the first spent.
    let mut served = 0;
    for _ in 0..DAY as usize {
        match send(&other, &mock).await {
            Ok(StatusCode::OK) => served += 1,
            Ok(status) => panic!("the mock answered {status}: the day was overspent"),
            Err(error) if error.kind() == ErrorKind::QuotaExhausted => break,
            // Not reconnected yet.
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    assert!(other_store.is_connected());
    assert_eq!(
        served,
        DAY as usize - ALONE,
        "the rest of the day as Redis counts it"
    );
    assert_eq!(mock.stats().responses_with_status(429), 0);
}
