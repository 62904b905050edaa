//! Shared state on a Redis Cluster of three masters, started on 127.0.0.1 by the test
//! (`redis-server --cluster-enabled yes` ×3 + `redis-cli --cluster create`), or the one
//! `REDIS_CLUSTER_URL` names: each project's names share a hash slot, so the admission script,
//! the refunds, effects, resets and the outage's push-back each run on one node, and the
//! projects spread over the masters.
//!
//! (The three-process test of `tests/redis_replicas.rs` runs on such a cluster too.) Skipped,
//! saying so, without redis-server and redis-cli.
#![cfg(all(feature = "redis", feature = "gateway"))]

mod common;

use common::redis::{Cluster, Redis, eventually, send};
use http::StatusCode;
use redis::AsyncCommands;
use tower_gemini::mock::MockGemini;
use tower_gemini::pool::ModelLimits;
use tower_gemini::state::{RedisOptions, RedisStore};
use tower_gemini::{KeyPool, KeySpec};

const FLASH: &str = "gemini-2.0-flash";

/// Two pools (as two processes) over the cluster: one ledger for a project spread over two
/// projects' slots, a cool-down one learns the other sees, and the names land on more than
/// one master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_share_ledgers_and_cool_downs_across_the_masters() {
    let Some(cluster) = Cluster::any("two_pools_share_ledgers_and_cool_downs_across_the_masters")
    else {
        return;
    };
    let rpm = |n| ModelLimits {
        rpm: Some(n),
        ..Default::default()
    };
    // Eight projects of 2 RPM: their slots spread over the three masters.
    let projects: Vec<String> = (0..8).map(|i| format!("proj-{i}")).collect();
    let keys: Vec<String> = (0..8).map(|i| format!("test-key-cl-{i:04}")).collect();
    let mock = projects
        .iter()
        .zip(&keys)
        .fold(MockGemini::builder(), |mock, (project, key)| {
            let key = key.clone();
            mock.project(project, move |p| p.key(key).limits(FLASH, rpm(2)))
        })
        .start()
        .await
        .unwrap();
    let prefix = Redis::prefix("cluster-ledger");
    let options = || RedisOptions {
        prefix: prefix.clone(),
        ..RedisOptions::default()
    };
    let pool = |store: &RedisStore| {
        projects
            .iter()
            .zip(&keys)
            .fold(KeyPool::builder(), |b, (project, key)| {
                b.key_with(KeySpec::new(key.clone()).project(project.clone()))
            })
            .model_limits(FLASH, rpm(2))
            .store(store.clone())
            .build()
            .unwrap()
    };
    let one = pool(
        &RedisStore::connect_with(&cluster.url, options())
            .await
            .unwrap(),
    );
    let two = pool(
        &RedisStore::connect_with(&cluster.url, options())
            .await
            .unwrap(),
    );
    // 16 slots in all (8 projects × 2): taken half by each pool, then both are refused.
    for _ in 0..8 {
        assert_eq!(send(&one, &mock).await.unwrap(), StatusCode::OK);
        assert_eq!(send(&two, &mock).await.unwrap(), StatusCode::OK);
    }
    assert!(send(&one, &mock).await.is_err());
    assert!(send(&two, &mock).await.is_err());
    assert_eq!(mock.stats().responses_with_status(429), 0);
    assert_eq!(mock.stats().total_requests(), 16);

    // The names are spread: more than one master holds some.
    let mut masters_used = 0;
    for node in cluster
        .url
        .trim_start_matches("redis+cluster://")
        .split(',')
    {
        let mut look = redis::Client::open(format!("redis://{node}"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let here: Vec<String> = look.keys(format!("{prefix}:*")).await.unwrap();
        if !here.is_empty() {
            masters_used += 1;
        }
    }
    assert!(masters_used >= 2, "every name on one master");

    // A cool-down one pool learns from Google's 429 (the effect script writes the key's, the
    // project's and the project+model's state: one slot), the other obeys without asking
    // Google; a reset through one clears it for both.
    let mock = MockGemini::builder()
        .project("proj-cool", |p| {
            p.key("test-key-cl-cool").limits(FLASH, rpm(1))
        })
        .start()
        .await
        .unwrap();
    let cool_prefix = Redis::prefix("cluster-cool");
    let cool_pool = |store: RedisStore| {
        KeyPool::builder()
            .key_with(KeySpec::new("test-key-cl-cool").project("proj-cool"))
            .store(store)
            .build()
            .unwrap()
    };
    let cool_options = || RedisOptions {
        prefix: cool_prefix.clone(),
        ..RedisOptions::default()
    };
    let one = cool_pool(
        RedisStore::connect_with(&cluster.url, cool_options())
            .await
            .unwrap(),
    );
    let two = cool_pool(
        RedisStore::connect_with(&cluster.url, cool_options())
            .await
            .unwrap(),
    );
    assert_eq!(send(&one, &mock).await.unwrap(), StatusCode::OK);
    assert!(
        send(&one, &mock).await.is_err(),
        "Google's 429 cools the project"
    );
    assert_eq!(mock.stats().responses_with_status(429), 1);
    let look = common::redis::Look::to(&cluster.url).await;
    let cooling = || {
        let mut look = look.clone();
        let pattern = format!("{cool_prefix}:*:pm:*:st");
        async move {
            let names: Vec<String> = look.keys(&pattern).await.unwrap();
            let mut cooling = false;
            for name in names {
                let until: Option<u64> = look.hget(&name, "cool_until").await.unwrap();
                cooling |= until.is_some_and(|u| u > 0);
            }
            cooling
        }
    };
    eventually("the cool-down reaches the cluster", async || {
        cooling().await
    })
    .await;
    let sent = mock.stats().total_requests();
    assert!(send(&two, &mock).await.is_err(), "the other pool obeys it");
    assert_eq!(mock.stats().total_requests(), sent, "without asking Google");
    one.reset_all();
    eventually("the reset clears it", async || !cooling().await).await;
}

/// An outage of the whole cluster: one pool serves alone from its own ledger, then gives the
/// cluster what it admitted — one transaction per project's slot, on the masters that own
/// them — and the other pool spends only the rest of each project's day: the mock answers no
/// 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_admitted_during_a_cluster_outage_counts_on_every_master() {
    let Some(mut cluster) =
        Cluster::any("what_was_admitted_during_a_cluster_outage_counts_on_every_master")
    else {
        return;
    };
    if !cluster.is_own() {
        eprintln!("SKIPPED: REDIS_CLUSTER_URL names a cluster this test cannot stop");
        return;
    }
    const PROJECTS: usize = 4;
    const DAY: u32 = 100;
    const ALONE: usize = 240;
    let daily = ModelLimits {
        rpd: Some(DAY),
        ..Default::default()
    };
    let mock = (0..PROJECTS)
        .fold(MockGemini::builder(), |mock, i| {
            mock.project(format!("proj-out-{i}"), move |p| {
                p.key(format!("test-key-out-{i:04}")).limits(FLASH, daily)
            })
        })
        .start()
        .await
        .unwrap();
    let options = |when_unreachable| RedisOptions {
        timeout: std::time::Duration::from_millis(300),
        retry_every: std::time::Duration::from_millis(100),
        prefix: Redis::prefix("cluster-outage"),
        when_unreachable,
        ..RedisOptions::default()
    };
    let process = async |when_unreachable| {
        let store = RedisStore::connect_with(&cluster.url, options(when_unreachable))
            .await
            .unwrap();
        let pool = (0..PROJECTS)
            .fold(KeyPool::builder(), |b, i| {
                b.key_with(
                    KeySpec::new(format!("test-key-out-{i:04}")).project(format!("proj-out-{i}")),
                )
            })
            .model_limits(FLASH, daily)
            .store(store.clone())
            .build()
            .unwrap();
        (store, pool)
    };
    let (one_store, one) = process(tower_gemini::state::WhenUnreachable::FallBack).await;
    let (other_store, other) = process(tower_gemini::state::WhenUnreachable::Refuse).await;
    // Both reach the cluster before the outage (nothing is sent before it: a cluster restarted
    // without persistence forgets what it held, as the README says).
    assert!(one_store.is_connected() && other_store.is_connected());

    cluster.stop();
    for _ in 0..ALONE {
        assert_eq!(send(&one, &mock).await.unwrap(), StatusCode::OK);
    }
    assert!(!one_store.is_connected());
    cluster.start();
    eventually("reconnected", async || {
        let _ = send(&one, &mock).await;
        one_store.is_connected()
    })
    .await;
    let spent_by_one = mock.stats().total_requests() as usize;
    let mut served = 0;
    for _ in 0..(PROJECTS * DAY as usize) {
        match send(&other, &mock).await {
            Ok(StatusCode::OK) => served += 1,
            Ok(status) => panic!("the mock answered {status}: a day was overspent"),
            Err(error) if error.kind() == tower_gemini::ErrorKind::QuotaExhausted => break,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(25)).await,
        }
    }
    assert!(other_store.is_connected());
    assert_eq!(mock.stats().responses_with_status(429), 0);
    assert_eq!(
        served,
        PROJECTS * DAY as usize - spent_by_one,
        "the rest of each day as the cluster counts it"
    );
}
