//! A restart forgets neither daily usage, disabled keys, cool-downs nor learned limits: the
//! pool's state saved to a file and restored into a new pool, over real HTTP to the mock.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{client, generate};
use http::StatusCode;
use tower::{Layer, ServiceExt};
use tower_gemini::clock::ManualClock;
use tower_gemini::mock::{MockGemini, MockServer};
use tower_gemini::pool::ModelLimits;
use tower_gemini::quota::Dimension;
use tower_gemini::state::StateFile;
use tower_gemini::{ErrorKind, KeyPool, KeySpec, stack};

const FLASH: &str = "gemini-2.0-flash";

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("tower-gemini-state-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn daily(limit: u32) -> ModelLimits {
    ModelLimits {
        rpd: Some(limit),
        ..Default::default()
    }
}

async fn mock(clock: &ManualClock) -> MockServer {
    MockGemini::builder()
        .project("proj-a", |p| {
            p.key("test-key-0001").limits(FLASH, daily(250))
        })
        .clock(clock.clone())
        .start()
        .await
        .unwrap()
}

/// The same configuration each "process" starts with.
fn pool(clock: &ManualClock, keys: &[&str]) -> KeyPool {
    keys.iter()
        .fold(KeyPool::builder(), |b, k| {
            b.key_with(KeySpec::new(*k).project("proj-a"))
        })
        .model_limits(FLASH, daily(250))
        .clock(clock.clone())
        .build()
        .unwrap()
}

/// Send until refused; how many were answered 200.
async fn spend(
    pool: &KeyPool,
    mock: &MockServer,
    at_most: usize,
) -> (usize, Option<tower_gemini::Error>) {
    let gemini = stack(pool).layer(client());
    for sent in 0..at_most {
        match gemini.clone().oneshot(generate(mock, FLASH, "x")).await {
            Ok(response) => assert_eq!(response.status(), StatusCode::OK),
            Err(error) => return (sent, Some(error)),
        }
    }
    (at_most, None)
}

#[tokio::test]
async fn daily_usage_survives_a_restart() {
    let clock = ManualClock::at("2026-11-22T18:00:00Z".parse().unwrap()); // 10:00 Pacific
    let mock = mock(&clock).await;
    let file = StateFile::new(scratch("daily").join("pool.json"));
    let first = pool(&clock, &["test-key-0001"]);
    assert_eq!(spend(&first, &mock, 200).await.0, 200);
    file.save(&first).unwrap();
    drop(first);

    // The restart, an hour later the same day: 50 more, then a local refusal — not a 429.
    clock.advance(Duration::from_secs(3600));
    let second = pool(&clock, &["test-key-0001"]);
    let report = file.restore(&second).unwrap().unwrap();
    assert_eq!(report.keys_restored, 1);
    let (sent, error) = spend(&second, &mock, 100).await;
    assert_eq!(sent, 50);
    let error = error.unwrap();
    assert_eq!(error.kind(), ErrorKind::QuotaExhausted, "{error}");
    assert_eq!(error.dimension(), Some(Dimension::RequestsPerDay));
    assert_eq!(mock.stats().responses_with_status(429), 0);

    // The next Pacific day, the count starts over.
    file.save(&second).unwrap();
    clock.advance(Duration::from_secs(24 * 3600));
    let third = pool(&clock, &["test-key-0001"]);
    file.restore(&third).unwrap();
    mock.reset_usage();
    assert_eq!(spend(&third, &mock, 10).await.0, 10);
}

#[tokio::test]
async fn a_disabled_key_stays_disabled_a_removed_key_is_dropped_a_new_one_starts_clean() {
    let clock = ManualClock::at("2026-11-22T18:00:00Z".parse().unwrap());
    let mock = mock(&clock).await;
    let file = StateFile::new(scratch("disabled").join("pool.json"));
    // test-key-9999 is unknown to the mock: disabled as invalid by its first answer.
    let first = pool(&clock, &["test-key-9999", "test-key-0001", "test-key-0002"]);
    let (sent, _) = spend(&first, &mock, 3).await;
    assert_eq!(sent, 3);
    assert_eq!(
        first.snapshot().keys[0].reason,
        Some(tower_gemini::pool::DisabledReason::KeyInvalid)
    );
    file.save(&first).unwrap();

    // Restarted with …0002 removed from the configuration and …0003 added.
    let second = pool(&clock, &["test-key-9999", "test-key-0001", "test-key-0003"]);
    let report = file.restore(&second).unwrap().unwrap();
    assert_eq!(
        (report.keys_restored, report.keys_new, report.keys_dropped),
        (2, 1, 1)
    );
    let keys = second.snapshot().keys;
    assert_eq!(
        keys[0].reason,
        Some(tower_gemini::pool::DisabledReason::KeyInvalid)
    );
    assert!(keys[1].counters.total > 0, "counters kept");
    assert_eq!(keys[2].counters.total, 0, "a new key starts clean");
    // The invalid key is never sent again.
    let before = mock.stats().requests_for("test-key-9999");
    spend(&second, &mock, 5).await;
    assert_eq!(mock.stats().requests_for("test-key-9999"), before);
    // No secret in the file.
    let text = std::fs::read_to_string(file.path()).unwrap();
    assert!(!text.contains("test-key-"), "{text}");
}

#[tokio::test]
async fn cool_downs_and_learned_limits_survive_a_restart() {
    let clock = ManualClock::at("2026-11-22T18:00:00Z".parse().unwrap());
    // Google allows 2 RPM; the pool is not told and learns it from the first 429.
    let mock = MockGemini::builder()
        .project("proj-a", |p| {
            p.key("test-key-0001").limits(
                FLASH,
                ModelLimits {
                    rpm: Some(2),
                    ..Default::default()
                },
            )
        })
        .clock(clock.clone())
        .start()
        .await
        .unwrap();
    let unconfigured = || {
        KeyPool::builder()
            .key_with(KeySpec::new("test-key-0001").project("proj-a"))
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    let file = StateFile::new(scratch("learned").join("pool.json"));
    let first = unconfigured();
    let (sent, error) = spend(&first, &mock, 5).await;
    assert_eq!(sent, 2);
    assert_eq!(
        error.unwrap().kind(),
        ErrorKind::NoKeyAvailable,
        "cooling after Google's 429"
    );
    file.save(&first).unwrap();

    let second = unconfigured();
    file.restore(&second).unwrap();
    // Still cooling: refused locally, nothing sent.
    let before = mock.stats().total_requests();
    assert!(second.select(Some(FLASH)).is_err());
    // After the minute: the learned limit of 2 holds, with no second 429.
    clock.advance(Duration::from_secs(61));
    let (sent, error) = spend(&second, &mock, 5).await;
    assert_eq!(sent, 2);
    assert_eq!(
        error.unwrap().dimension(),
        Some(Dimension::RequestsPerMinute)
    );
    assert_eq!(mock.stats().total_requests() - before, 2);
    assert_eq!(mock.stats().responses_with_status(429), 1);
}

#[test]
fn a_corrupt_state_file_is_reported_and_set_aside() {
    let dir = scratch("corrupt");
    let path = dir.join("pool.json");
    std::fs::write(&path, b"{\"version\":1, this is not json").unwrap();
    let pool = KeyPool::from_keys(["test-key-0001"]).unwrap();
    let file = StateFile::new(&path);
    let error = file.restore(&pool).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Config);
    assert!(error.to_string().contains("kept aside"), "{error}");
    assert!(!path.exists(), "moved aside");
    let aside: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        aside.iter().any(|n| n.starts_with("pool.corrupt-")),
        "{aside:?}"
    );
    // The pool starts fresh, and the next save writes a good file.
    assert!(pool.select(Some(FLASH)).is_ok());
    file.save(&pool).unwrap();
    assert!(file.restore(&pool).unwrap().is_some());
    // No file at all is not an error.
    assert!(
        StateFile::new(dir.join("none.json"))
            .restore(&pool)
            .unwrap()
            .is_none()
    );
}

#[test]
fn the_rotation_goes_on_where_it_stood() {
    let keys = ["test-key-0001", "test-key-0002", "test-key-0003"];
    let first = KeyPool::from_keys(keys).unwrap();
    let order = |pool: &KeyPool, n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                pool.select(Some(FLASH))
                    .unwrap()
                    .selected()
                    .fingerprint()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(order(&first, 2), ["…0001", "…0002"]);
    let restarted = KeyPool::from_keys(keys).unwrap();
    restarted.restore(&first.save());
    assert_eq!(order(&restarted, 2), ["…0003", "…0001"], "not …0001 again");
}
