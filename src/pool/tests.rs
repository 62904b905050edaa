//! Pool unit tests: loading, strategies, health, snapshot, concurrency.

use std::time::Duration;

use http::StatusCode;

use super::*;
use crate::ErrorKind;
use crate::clock::ManualClock;
use crate::state::health;
use secrecy::ExposeSecret;

fn ts(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

fn ms(s: &str) -> u64 {
    ts(s).as_millisecond() as u64
}

fn answer(code: u16, body: &str) -> Classification {
    Classification::from_response(StatusCode::from_u16(code).unwrap(), body.as_bytes())
}

fn order(pool: &KeyPool, model: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let lease = pool.select(Some(model)).unwrap();
            lease.key().fingerprint().tail().to_owned()
        })
        .collect()
}

const INVALID: &str = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}"#;
const MINUTE_30S: &str = r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier","quotaDimensions":{"model":"gemini-2.0-flash"},"quotaValue":"10"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"30s"}]}}"#;
const DAILY: &str = r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier","quotaDimensions":{"model":"gemini-2.0-flash"},"quotaValue":"200"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"12s"}]}}"#;

// ---------------------------------------------------------------- env

#[test]
fn env_comma_list_trims_skips_empty_and_dedups() {
    let pool = KeyPool::from_env_vars([(
        "GEMINI_API_KEY",
        " test-key-0001 ,,test-key-0002, test-key-0001,  ,test-key-0003",
    )])
    .unwrap();
    let tails: Vec<_> = pool.fingerprints().map(|f| f.tail().to_owned()).collect();
    assert_eq!(tails, ["0001", "0002", "0003"]);
}

#[test]
fn env_numbered_sorted_as_numbers_and_deduped() {
    let pool = KeyPool::from_env_vars([
        ("GOOGLE_API_KEY_10", "test-key-0010"),
        ("GOOGLE_API_KEY_2", "test-key-0002"),
        ("GOOGLE_API_KEY_1", "test-key-0001"),
        ("GOOGLE_API_KEY_3", "test-key-0001"),
        ("GOOGLE_API_KEY_X", "test-key-9999"),
        ("OTHER", "test-key-8888"),
    ])
    .unwrap();
    let tails: Vec<_> = pool.fingerprints().map(|f| f.tail().to_owned()).collect();
    assert_eq!(tails, ["0001", "0002", "0010"]);
    let snapshot = pool.snapshot();
    assert_eq!(snapshot.keys[2].name.as_deref(), Some("GOOGLE_API_KEY_10"));
}

fn numbered(n: u32) -> Vec<(String, String)> {
    (1..=n)
        .map(|i| (format!("GOOGLE_API_KEY_{i}"), format!("test-key-{i:04}")))
        .collect()
}

#[test]
fn env_range_is_inclusive() {
    let mut vars = numbered(30);
    vars.push(("API_KEY_RANGE".into(), "10-19".into()));
    let pool = KeyPool::from_env_vars(vars).unwrap();
    let tails: Vec<_> = pool.fingerprints().map(|f| f.tail().to_owned()).collect();
    assert_eq!(tails.len(), 10);
    assert_eq!(tails.first().map(String::as_str), Some("0010"));
    assert_eq!(tails.last().map(String::as_str), Some("0019"));
}

#[test]
fn env_term_means_tens() {
    let mut vars = numbered(30);
    vars.push(("API_KEY_TERM".into(), "2".into()));
    let pool = KeyPool::from_env_vars(vars).unwrap();
    let tails: Vec<_> = pool.fingerprints().map(|f| f.tail().to_owned()).collect();
    assert_eq!(
        tails,
        (20..=29).map(|i| format!("{i:04}")).collect::<Vec<_>>()
    );
}

#[test]
fn env_malformed_range_names_variable_and_value() {
    for bad in ["19-10", "abc", "1-", "-5", "1-x"] {
        let mut vars = numbered(3);
        vars.push(("API_KEY_RANGE".into(), bad.into()));
        let err = KeyPool::from_env_vars(vars).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        let text = err.to_string();
        assert!(text.contains("API_KEY_RANGE"), "{text}");
        assert!(text.contains(&format!("{bad:?}")), "{text}");
    }
    let mut vars = numbered(3);
    vars.push(("API_KEY_TERM".into(), "two".into()));
    let text = KeyPool::from_env_vars(vars).unwrap_err().to_string();
    assert!(
        text.contains("API_KEY_TERM") && text.contains("\"two\""),
        "{text}"
    );
}

#[test]
fn env_range_and_term_together_is_an_error() {
    let mut vars = numbered(3);
    vars.push(("API_KEY_RANGE".into(), "1-2".into()));
    vars.push(("API_KEY_TERM".into(), "0".into()));
    let text = KeyPool::from_env_vars(vars).unwrap_err().to_string();
    assert!(text.contains("both set"), "{text}");
}

#[test]
fn env_no_keys_names_every_variable() {
    let text = KeyPool::from_env_vars(Vec::<(String, String)>::new())
        .unwrap_err()
        .to_string();
    for var in [
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY_",
        "API_KEY_RANGE",
        "API_KEY_TERM",
    ] {
        assert!(text.contains(var), "{var} missing from: {text}");
    }
    let text = KeyPool::from_env_vars([("GEMINI_API_KEY", " , ,")])
        .unwrap_err()
        .to_string();
    assert!(text.contains("holds no keys"), "{text}");
    let mut vars = numbered(5);
    vars.push(("API_KEY_RANGE".into(), "10-19".into()));
    let text = KeyPool::from_env_vars(vars).unwrap_err().to_string();
    assert!(
        text.contains("API_KEY_RANGE=10-19") && text.contains("selects none"),
        "{text}"
    );
}

#[test]
fn env_list_wins_over_numbered() {
    let mut vars = numbered(3);
    vars.push((
        "GEMINI_API_KEY".into(),
        "test-key-0100,test-key-0200".into(),
    ));
    let pool = KeyPool::from_env_vars(vars).unwrap();
    let tails: Vec<_> = pool.fingerprints().map(|f| f.tail().to_owned()).collect();
    assert_eq!(tails, ["0100", "0200"]);
    // An empty list falls through to the numbered keys.
    let mut vars = numbered(2);
    vars.push(("GEMINI_API_KEY".into(), "".into()));
    assert_eq!(KeyPool::from_env_vars(vars).unwrap().len(), 2);
}

#[test]
fn env_bad_key_is_named_by_its_variable_not_its_value() {
    let err = KeyPool::from_env_vars([("GOOGLE_API_KEY_7", "short")]).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("GOOGLE_API_KEY_7"), "{text}");
    assert!(!text.contains("short"), "{text}");
}

// ---------------------------------------------------------------- TOML

#[cfg(feature = "toml")]
mod toml_loading {
    use super::*;

    const FILE: &str = r#"
strategy = "least-in-flight"

[[keys]]
value = "test-key-0001"
name = "alpha"
project = "proj-a"
priority = 70

[[keys]]
env = "MY_GEMINI_KEY"
name = "beta"
project = "proj-a"

[[keys]]
value = "test-key-0003"

[models."gemini-2.0-flash"]
rpm = 15
tpm = 1000000
rpd = 200

[projects.proj-a.models."gemini-2.0-flash"]
rpm = 30
"#;

    #[test]
    fn a_key_listed_twice_with_different_settings_is_an_error_naming_both() {
        let text = r#"
[[keys]]
value = "test-key-dup-0001"
name = "primary"
project = "proj-a"

[[keys]]
value = "test-key-0002"

[[keys]]
value = "test-key-dup-0001"
name = "backup"
project = "proj-b"
"#;
        let err = KeyPool::from_toml_str(text).unwrap_err();
        let message = err.to_string();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(message.contains("…0001 is listed twice"), "{message}");
        assert!(message.contains(r#"keys[0] (name "primary")"#), "{message}");
        assert!(message.contains(r#"keys[2] (name "backup")"#), "{message}");
        assert!(!message.contains("test-key-dup"), "{message}");
    }

    #[test]
    fn a_key_listed_twice_the_same_way_is_used_once() {
        let text = r#"
[[keys]]
value = "test-key-0001"
project = "proj-a"

[[keys]]
value = "test-key-0001"
project = "proj-a"
"#;
        let pool = KeyPool::from_toml_str(text).unwrap();
        assert_eq!(pool.len(), 1);
    }

    fn lookup(name: &str) -> Option<String> {
        (name == "MY_GEMINI_KEY").then(|| "test-key-0002".to_owned())
    }

    #[test]
    fn keys_projects_and_limits() {
        let pool = KeyPool::builder()
            .toml_str_with_env(FILE, lookup)
            .unwrap()
            .build()
            .unwrap();
        let snap = pool.snapshot();
        assert_eq!(snap.keys.len(), 3);
        assert_eq!(snap.keys[0].name.as_deref(), Some("alpha"));
        assert_eq!(snap.keys[0].priority, 70);
        assert_eq!(snap.keys[1].project, "proj-a");
        assert_eq!(snap.keys[1].priority, DEFAULT_PRIORITY);
        assert_eq!(snap.keys[2].project, "…0003");
        let a = pool.limits_for("proj-a", "gemini-2.0-flash").unwrap();
        assert_eq!(
            (a.rpm, a.tpm, a.rpd),
            (Some(30), Some(1_000_000), Some(200))
        );
        let other = pool.limits_for("…0003", "gemini-2.0-flash").unwrap();
        assert_eq!(other.rpm, Some(15));
        assert!(pool.limits_for("proj-a", "gemini-2.5-pro").is_none());
        assert!(format!("{pool:?}").contains("LeastInFlight"));
    }

    fn error(text: &str) -> String {
        KeyPool::builder()
            .toml_str_with_env(text, lookup)
            .and_then(|b| b.build())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_point_at_the_entry() {
        let text = error("[[keys]]\nvalue = \"test-key-0001\"\n[[keys]]\nname = \"backup\"\n");
        assert!(
            text.contains("keys[1] (name \"backup\")") && text.contains("neither"),
            "{text}"
        );
        let text = error("[[keys]]\nenv = \"NOPE\"\n");
        assert!(
            text.contains("keys[0]") && text.contains("NOPE is not set"),
            "{text}"
        );
        let text = error("[[keys]]\nvalue = \"test-key-0001\"\nenv = \"X\"\n");
        assert!(text.contains("both"), "{text}");
        let text = error("[[keys]]\nvalue = \"short\"\n");
        assert!(
            text.contains("keys[0]") && text.contains("5 characters"),
            "{text}"
        );
        let text = error("strategy = \"fastest\"\n[[keys]]\nvalue = \"test-key-0001\"\n");
        assert!(
            text.contains("fastest") && text.contains("round-robin"),
            "{text}"
        );
        let text = error(
            "[[keys]]\nvalue = \"test-key-0001\"\nproject = \"a\"\n[projects.b.models.m]\nrpm = 1\n",
        );
        assert!(
            text.contains("\"b\"") && text.contains("no key belongs"),
            "{text}"
        );
        let text = error("[models.m]\nrpx = 1\n[[keys]]\nvalue = \"test-key-0001\"\n");
        assert!(text.contains("line 2") && text.contains("rpx"), "{text}");
    }

    #[test]
    fn syntax_errors_never_echo_the_key() {
        let text = error("[[keys]]\nvalue = \"test-key-0001\" oops\n");
        assert!(text.contains("line 2"), "{text}");
        assert!(!text.contains("test-key-0001"), "{text}");
        let text = error("[[keys]]\npriority = \"test-key-0001\"\nvalue = \"test-key-0002\"\n");
        assert!(!text.contains("test-key-000"), "{text}");
    }

    #[test]
    fn file_errors_name_the_path() {
        let dir = std::env::temp_dir().join(format!("tower-gemini-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.toml");
        std::fs::write(&path, "[[keys]]\nvalue = \"test-key-0001\"\n").unwrap();
        assert_eq!(KeyPool::from_toml_path(&path).unwrap().len(), 1);
        std::fs::write(&path, "[[keys]\n").unwrap();
        let text = KeyPool::from_toml_path(&path).unwrap_err().to_string();
        assert!(
            text.contains("keys.toml") && text.contains("line 1"),
            "{text}"
        );
        let missing = KeyPool::from_toml_path(dir.join("missing.toml")).unwrap_err();
        assert!(missing.to_string().contains("missing.toml"), "{missing}");
        std::fs::remove_dir_all(&dir).ok();
    }
}

// ---------------------------------------------------------------- builder

#[test]
fn builder_errors() {
    let err = KeyPool::builder().build().unwrap_err();
    assert!(err.to_string().contains("no API keys"), "{err}");
    let err = KeyPool::builder()
        .key("test-key-0001")
        .key_with(KeySpec::new("bad key 0002").name("second"))
        .build()
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("key #2") && text.contains("second"), "{text}");
}

#[test]
fn keys_without_project_get_distinct_projects() {
    // Same last 4 characters, no project: still two projects.
    let pool = KeyPool::from_keys(["test-key-a-0001", "test-key-b-0001"]).unwrap();
    let snap = pool.snapshot();
    assert_ne!(snap.keys[0].project, snap.keys[1].project);
}

// ---------------------------------------------------------------- strategies

#[test]
fn round_robin_order_and_skip() {
    let pool = KeyPool::from_keys(["test-key-0001", "test-key-0002", "test-key-0003"]).unwrap();
    assert_eq!(
        order(&pool, "m", 6),
        ["0001", "0002", "0003", "0001", "0002", "0003"]
    );
    let lease = pool.select(Some("m")).unwrap();
    assert_eq!(lease.key().fingerprint().tail(), "0001");
    lease.report(&answer(400, INVALID), Duration::ZERO);
    for tail in order(&pool, "m", 6) {
        assert_ne!(tail, "0001");
    }
}

#[test]
fn weighted_random_weights_follow_the_formula() {
    let now = ms("2026-06-01T12:00:00Z");
    let stats = |priority, failures, last: Option<u64>| KeyStats {
        priority,
        consecutive_failures: failures,
        in_flight: 0,
        latency: None,
        last_used_millis: last,
    };
    assert_eq!(WeightedRandom::weight(&stats(50, 0, None), now), 100.0);
    assert_eq!(WeightedRandom::weight(&stats(50, 2, Some(now)), now), 30.0);
    let three_hours = now - 3 * 3_600_000;
    assert_eq!(
        WeightedRandom::weight(&stats(10, 0, Some(three_hours)), now),
        13.0
    );
    let two_days = now - 48 * 3_600_000;
    assert_eq!(
        WeightedRandom::weight(&stats(10, 0, Some(two_days)), now),
        34.0
    );
    assert_eq!(WeightedRandom::weight(&stats(10, 5, Some(now)), now), 0.0);
}

#[test]
fn weighted_random_is_seeded_and_proportional() {
    let build = || {
        KeyPool::builder()
            .key_with(KeySpec::new("test-key-0001").priority(150))
            .key_with(KeySpec::new("test-key-0002").priority(50))
            .key_with(KeySpec::new("test-key-0003").priority(0))
            .strategy(WeightedRandom::with_seed(42))
            .clock(ManualClock::at(ts("2026-06-01T12:00:00Z")))
            .build()
            .unwrap()
    };
    // Same seed, same sequence.
    assert_eq!(order(&build(), "m", 50), order(&build(), "m", 50));
    // Weights once every key was used (last use = now): 150, 50, 0.
    let pool = build();
    for _ in 0..3 {
        for i in 0..3 {
            // Leased now (and given back): last used now.
            pool.inner.keys[i].health.leased(pool.clock().now_millis());
            pool.inner.keys[i].health.returned();
        }
    }
    let picks = order(&pool, "m", 4000);
    let count = |t: &str| picks.iter().filter(|p| *p == t).count();
    assert_eq!(count("0003"), 0);
    let ratio = count("0001") as f64 / count("0002") as f64;
    assert!((2.6..3.4).contains(&ratio), "ratio {ratio}");
}

#[test]
fn weighted_random_uniform_when_all_weigh_zero() {
    let pool = KeyPool::builder()
        .key_with(KeySpec::new("test-key-0001").priority(0))
        .key_with(KeySpec::new("test-key-0002").priority(0))
        .strategy(WeightedRandom::with_seed(1))
        .build()
        .unwrap();
    for entry in pool.inner.keys.iter() {
        for _ in 0..9 {
            entry.health.failed(0);
        }
    }
    let picks = order(&pool, "m", 200);
    assert!(picks.iter().any(|p| p == "0001") && picks.iter().any(|p| p == "0002"));
}

#[test]
fn least_in_flight_prefers_idle_keys() {
    let pool = KeyPool::builder()
        .keys(["test-key-0001", "test-key-0002", "test-key-0003"])
        .strategy(LeastInFlight::new())
        .build()
        .unwrap();
    let a = pool.select(Some("m")).unwrap();
    let b = pool.select(Some("m")).unwrap();
    let c = pool.select(Some("m")).unwrap();
    let mut held: Vec<_> = [&a, &b, &c]
        .iter()
        .map(|l| l.key().fingerprint().tail().to_owned())
        .collect();
    held.sort();
    assert_eq!(held, ["0001", "0002", "0003"]);
    drop(b);
    let freed = pool.select(Some("m")).unwrap();
    assert_eq!(freed.key().fingerprint().tail(), "0002");
    let snap = pool.snapshot();
    assert_eq!(
        snap.keys.iter().map(|k| k.counters.in_flight).sum::<u32>(),
        3
    );
}

#[test]
fn lowest_latency_measures_then_prefers_the_fastest() {
    let pool = KeyPool::builder()
        .keys(["test-key-0001", "test-key-0002", "test-key-0003"])
        .strategy(LowestLatency::new())
        .build()
        .unwrap();
    let ok = Classification::success(StatusCode::OK);
    let latencies = [("0001", 300), ("0002", 100), ("0003", 200)];
    for _ in 0..3 {
        let lease = pool.select(Some("m")).unwrap();
        let tail = lease.key().fingerprint().tail().to_owned();
        let ms = latencies.iter().find(|(t, _)| *t == tail).unwrap().1;
        lease.report(&ok, Duration::from_millis(ms));
    }
    assert_eq!(order(&pool, "m", 5), ["0002"; 5]);
}

// ---------------------------------------------------------------- health

fn three_projects(clock: ManualClock) -> KeyPool {
    KeyPool::builder()
        .key_with(KeySpec::new("test-key-0001").project("a"))
        .key_with(KeySpec::new("test-key-0002").project("a"))
        .key_with(KeySpec::new("test-key-0003").project("b"))
        .clock(clock)
        .build()
        .unwrap()
}

#[test]
fn invalid_key_is_disabled_for_good_until_reset() {
    let pool = KeyPool::from_keys(["test-key-0001"]).unwrap();
    pool.select(Some("m"))
        .unwrap()
        .report(&answer(400, INVALID), Duration::ZERO);
    let err = pool.select(Some("m")).unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::AllKeysDisabled,
        "a configuration fault, not a wait"
    );
    assert_eq!(err.retry_after(), None);
    assert_eq!(err.status_code(), 503);
    assert!(err.to_string().contains("1 invalid"), "{err}");
    let snap = pool.snapshot();
    assert_eq!(snap.keys[0].state, KeyState::Disabled);
    assert_eq!(snap.keys[0].reason, Some(DisabledReason::KeyInvalid));
    assert_eq!(pool.reset("…0001"), 1);
    assert!(pool.select(Some("m")).is_ok());
}

#[test]
fn per_minute_quota_cools_the_project_and_model_only() {
    let clock = ManualClock::at(ts("2026-06-01T12:00:00Z"));
    let pool = three_projects(clock.clone());
    let lease = pool.select(Some("gemini-2.0-flash")).unwrap();
    assert_eq!(lease.selected().project(), "a");
    lease.report(&answer(429, MINUTE_30S), Duration::ZERO);
    // Both keys of project a skip this model; project b serves it.
    assert_eq!(order(&pool, "gemini-2.0-flash", 3), ["0003"; 3]);
    // Another model still uses project a.
    assert!(order(&pool, "gemini-2.5-pro", 3).contains(&"0001".to_owned()));
    let snap = pool.snapshot();
    assert_eq!(snap.keys[0].state, KeyState::Active);
    assert_eq!(snap.keys[0].models[0].model, "gemini-2.0-flash");
    assert_eq!(snap.keys[0].models[0].reason, "quota_minute");
    clock.advance(Duration::from_secs(30));
    assert!(order(&pool, "gemini-2.0-flash", 3).contains(&"0001".to_owned()));
}

#[test]
fn per_minute_without_delay_cools_sixty_seconds_and_reports_retry_after() {
    let clock = ManualClock::at(ts("2026-06-01T12:00:00Z"));
    let pool = KeyPool::builder()
        .key("test-key-0001")
        .clock(clock.clone())
        .build()
        .unwrap();
    let body = MINUTE_30S.replace(
        r#",{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"30s"}"#,
        "",
    );
    let verdict = answer(429, &body);
    assert_eq!(verdict.retry_after(), None);
    pool.select(Some("gemini-2.0-flash"))
        .unwrap()
        .report(&verdict, Duration::ZERO);
    clock.advance(Duration::from_secs(15));
    let err = pool.select(Some("gemini-2.0-flash")).unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(45)));
    clock.advance(Duration::from_secs(45));
    assert!(pool.select(Some("gemini-2.0-flash")).is_ok());
}

fn daily_cools_until(now: &str, next_midnight: &str) {
    let clock = ManualClock::at(ts(now));
    let pool = KeyPool::builder()
        .key("test-key-0001")
        .clock(clock.clone())
        .build()
        .unwrap();
    pool.select(Some("gemini-2.0-flash"))
        .unwrap()
        .report(&answer(429, DAILY), Duration::ZERO);
    let err = pool.select(Some("gemini-2.0-flash")).unwrap_err();
    let expected = ms(next_midnight) - ms(now);
    assert_eq!(err.retry_after(), Some(Duration::from_millis(expected)));
    clock.set(ts(next_midnight) - Duration::from_millis(1));
    assert!(pool.select(Some("gemini-2.0-flash")).is_err());
    clock.set(ts(next_midnight));
    assert!(pool.select(Some("gemini-2.0-flash")).is_ok());
}

#[test]
fn daily_quota_cools_to_pacific_midnight_ordinary_day() {
    daily_cools_until("2026-06-10T18:30:00Z", "2026-06-11T07:00:00Z");
}

#[test]
fn daily_quota_cools_to_pacific_midnight_spring_forward() {
    // 2026-03-08 is 23 hours long in Los Angeles.
    daily_cools_until("2026-03-08T09:00:00Z", "2026-03-09T07:00:00Z");
}

#[test]
fn daily_quota_cools_to_pacific_midnight_fall_back() {
    // 2026-11-01 is 25 hours long in Los Angeles.
    daily_cools_until("2026-11-01T08:30:00Z", "2026-11-02T08:00:00Z");
}

#[test]
fn upstream_and_transport_never_cool_or_disable() {
    let pool = KeyPool::from_keys(["test-key-0001", "test-key-0002"]).unwrap();
    let overloaded = answer(
        503,
        r#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#,
    );
    // Round robin over two keys: each key gets every outcome in turn.
    for _ in 0..10 {
        for outcome in [&overloaded, &overloaded] {
            pool.select(Some("m"))
                .unwrap()
                .report(outcome, Duration::ZERO);
        }
        for _ in 0..2 {
            pool.select(Some("m"))
                .unwrap()
                .report(&Classification::transport(), Duration::ZERO);
        }
    }
    let snap = pool.snapshot();
    for key in &snap.keys {
        assert_eq!(key.state, KeyState::Active);
        assert!(key.models.is_empty());
        assert_eq!(key.counters.failures.get("upstream"), Some(&10));
        assert_eq!(key.counters.failures.get("transport"), Some(&10));
        assert_eq!(key.counters.consecutive_failures, 20);
    }
}

#[test]
fn bare_429_cools_the_key_with_doubling_capped_at_sixty() {
    let clock = ManualClock::at(ts("2026-06-01T12:00:00Z"));
    let pool = KeyPool::builder()
        .key("test-key-0001")
        .clock(clock.clone())
        .build()
        .unwrap();
    let bare = answer(
        429,
        r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#,
    );
    let mut seen = Vec::new();
    for _ in 0..6 {
        pool.select(Some("m"))
            .unwrap()
            .report(&bare, Duration::ZERO);
        let wait = pool.select(Some("m")).unwrap_err().retry_after().unwrap();
        seen.push(wait.as_secs());
        clock.advance(wait);
    }
    assert_eq!(seen, [5, 10, 20, 40, 60, 60]);
    // A success ends the streak.
    pool.select(Some("m"))
        .unwrap()
        .report(&Classification::success(StatusCode::OK), Duration::ZERO);
    pool.select(Some("m"))
        .unwrap()
        .report(&bare, Duration::ZERO);
    assert_eq!(
        pool.select(Some("m")).unwrap_err().retry_after(),
        Some(Duration::from_secs(5))
    );
}

#[test]
fn billing_disables_the_whole_project() {
    let pool = three_projects(ManualClock::at(ts("2026-06-01T12:00:00Z")));
    let billing = answer(
        429,
        r#"{"error":{"code":429,"message":"Your prepayment credits are depleted. Please go to AI Studio at https://ai.studio/projects to manage your project and billing.","status":"RESOURCE_EXHAUSTED"}}"#,
    );
    pool.select(Some("m"))
        .unwrap()
        .report(&billing, Duration::ZERO);
    assert_eq!(order(&pool, "other-model", 3), ["0003"; 3]);
    let snap = pool.snapshot();
    assert_eq!(snap.keys[1].reason, Some(DisabledReason::BillingExhausted));
    assert_eq!(pool.reset("a"), 2);
    assert!(order(&pool, "m", 3).contains(&"0001".to_owned()));
}

#[test]
fn model_not_on_tier_disables_that_model_for_the_project() {
    let pool = three_projects(ManualClock::at(ts("2026-06-01T12:00:00Z")));
    let zero = answer(429, &MINUTE_30S.replace("\"10\"", "\"0\""));
    assert_eq!(zero.class(), Class::ModelNotOnTier);
    pool.select(Some("gemini-2.5-pro"))
        .unwrap()
        .report(&zero, Duration::ZERO);
    assert_eq!(order(&pool, "gemini-2.5-pro", 3), ["0003"; 3]);
    assert!(order(&pool, "gemini-2.0-flash", 3).contains(&"0001".to_owned()));
    let snap = pool.snapshot();
    assert!(
        snap.keys[0]
            .models
            .iter()
            .any(|m| m.disabled && m.model == "gemini-2.5-pro")
    );
}

#[test]
fn unknown_request_model_learns_the_model_from_the_answer() {
    let pool = three_projects(ManualClock::at(ts("2026-06-01T12:00:00Z")));
    pool.select(None)
        .unwrap()
        .report(&answer(429, MINUTE_30S), Duration::ZERO);
    assert_eq!(order(&pool, "gemini-2.0-flash", 2), ["0003"; 2]);
}

#[test]
fn caller_errors_touch_no_health() {
    let pool = KeyPool::from_keys(["test-key-0001"]).unwrap();
    let bad = answer(
        400,
        r#"{"error":{"code":400,"message":"Invalid JSON payload received.","status":"INVALID_ARGUMENT"}}"#,
    );
    for _ in 0..5 {
        pool.select(Some("m")).unwrap().report(&bad, Duration::ZERO);
    }
    let snap = pool.snapshot();
    assert_eq!(snap.keys[0].counters.consecutive_failures, 0);
    assert_eq!(snap.keys[0].counters.failures.get("caller"), Some(&5));
    assert_eq!(snap.keys[0].success_rate, Some(0.0));
}

#[test]
fn snapshot_serialises_without_secrets() {
    let pool = three_projects(ManualClock::at(ts("2026-06-01T12:00:00Z")));
    let lease = pool.select(Some("gemini-2.0-flash")).unwrap();
    lease.report(
        &Classification::success(StatusCode::OK),
        Duration::from_millis(250),
    );
    pool.select(Some("gemini-2.0-flash"))
        .unwrap()
        .report(&answer(429, MINUTE_30S), Duration::ZERO);
    let json = serde_json::to_value(pool.snapshot()).unwrap();
    let text = json.to_string();
    assert!(!text.contains("test-key-"), "{text}");
    assert_eq!(json["keys"][0]["fingerprint"], "…0001");
    assert_eq!(json["keys"][0]["counters"]["successes"], 1);
    assert_eq!(json["keys"][0]["counters"]["latency_ewma_ms"], 250.0);
    assert_eq!(json["keys"][0]["success_rate"], 1.0);
    assert_eq!(
        json["keys"][1]["models"][0]["cooling_until"],
        "2026-06-01T12:00:30Z"
    );
    assert_eq!(json["keys"][1]["counters"]["failures"]["quota_minute"], 1);
    assert_eq!(json["taken_at"], "2026-06-01T12:00:00Z");
}

#[test]
fn model_table_is_bounded() {
    let pool = KeyPool::from_keys(["test-key-0001"]).unwrap();
    for i in 0..(health::MAX_MODELS + 50) {
        drop(pool.select(Some(&format!("made-up-{i}"))).unwrap());
    }
    // MAX_MODELS named entries; the shared "unknown" one is made only when first needed.
    let all = pool.inner.models.all();
    assert_eq!(
        all.iter().filter(|m| !m.is_unknown()).count(),
        health::MAX_MODELS
    );
    assert!(all.len() <= health::MAX_MODELS + 1);
    let long = "m".repeat(10_000);
    drop(pool.select(Some(&long)).unwrap());
    assert!(pool.inner.models.all().iter().all(|m| m.name.len() <= 128));
}

#[test]
fn a_flood_of_made_up_models_never_changes_how_real_ones_are_treated() {
    let clock = ManualClock::at(ts("2026-06-01T12:00:00Z"));
    let limits = ModelLimits {
        rpm: Some(2),
        ..ModelLimits::default()
    };
    let pool = KeyPool::builder()
        .key("test-key-0001")
        .model_limits("gemini-2.0-flash", limits)
        .clock(clock.clone())
        .build()
        .unwrap();
    // A real model without configuration learns a cool-down from Google.
    pool.select(Some("gemini-3-pro"))
        .unwrap()
        .report(&answer(429, MINUTE_30S), Duration::ZERO);
    assert!(pool.select(Some("gemini-3-pro")).is_err());
    // Then a caller floods the pool with junk names, far past the table's size.
    for i in 0..(4 * health::MAX_MODELS) {
        drop(pool.select(Some(&format!("junk-{i}"))).unwrap());
    }
    // The configured model, used for the first time after the flood, keeps its limit.
    let demand = Demand::default();
    let held: Vec<_> = (0..2)
        .map(|_| pool.select_with(Some("gemini-2.0-flash"), demand).unwrap())
        .collect();
    let error = pool
        .select_with(Some("gemini-2.0-flash"), demand)
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::QuotaExhausted, "{error}");
    drop(held);
    // The learned cool-down is still there.
    assert_eq!(
        pool.select(Some("gemini-3-pro")).unwrap_err().kind(),
        ErrorKind::NoKeyAvailable
    );
    // And a new real model gets its own entry (an idle junk one made room), not a shared one.
    pool.select(Some("gemini-3-flash"))
        .unwrap()
        .report(&answer(429, MINUTE_30S), Duration::ZERO);
    assert!(pool.select(Some("gemini-3-flash")).is_err());
    assert!(
        pool.select(Some("junk-x")).is_ok(),
        "junk is not cooled with it"
    );
    assert!(pool.inner.models.all().len() <= health::MAX_MODELS + 4);
}

// ---------------------------------------------------------------- concurrency

#[test]
fn concurrent_selection_spreads_evenly_and_balances_in_flight() {
    let pool = KeyPool::from_keys((1..=8).map(|i| format!("test-key-{i:04}"))).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    let lease = pool.select(Some("gemini-2.0-flash")).unwrap();
                    lease.report(
                        &Classification::success(StatusCode::OK),
                        Duration::from_millis(1),
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let snap = pool.snapshot();
    let totals: Vec<u64> = snap.keys.iter().map(|k| k.counters.total).collect();
    assert_eq!(totals.iter().sum::<u64>(), 80_000);
    // Round robin with a shared cursor: every key gets exactly its share.
    assert!(totals.iter().all(|&t| t == 10_000), "{totals:?}");
    assert!(snap.keys.iter().all(|k| k.counters.in_flight == 0));
}

#[test]
fn concurrent_failures_and_selection_never_pick_a_disabled_key() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    let pool = KeyPool::from_keys((1..=4).map(|i| format!("test-key-{i:04}"))).unwrap();
    let invalid = answer(400, INVALID);
    let disabled = Arc::new(AtomicBool::new(false));
    let selectors: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.clone();
            let disabled = disabled.clone();
            std::thread::spawn(move || {
                let mut violations = 0;
                for _ in 0..20_000 {
                    // Once the disabling is visible, key 1 must never come back.
                    let after = disabled.load(Ordering::Acquire);
                    let Ok(lease) = pool.select(Some("m")) else {
                        continue;
                    };
                    if after && lease.key().fingerprint().tail() == "0001" {
                        violations += 1;
                    }
                }
                violations
            })
        })
        .collect();
    let disabler = {
        let pool = pool.clone();
        let disabled = disabled.clone();
        std::thread::spawn(move || {
            loop {
                let lease = pool.select(Some("m")).unwrap();
                if lease.key().fingerprint().tail() == "0001" {
                    lease.report(&invalid, Duration::ZERO);
                    disabled.store(true, Ordering::Release);
                    return;
                }
            }
        })
    };
    disabler.join().unwrap();
    let violations: usize = selectors.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(violations, 0);
    assert!(order(&pool, "m", 9).iter().all(|t| t != "0001"));
}

#[test]
fn round_robin_does_not_double_up_after_a_gap() {
    let pool = KeyPool::from_keys([
        "test-key-0001",
        "test-key-0002",
        "test-key-0003",
        "test-key-0004",
    ])
    .unwrap();
    for _ in 0..2 {
        pool.select(Some("m"))
            .unwrap()
            .report(&answer(400, INVALID), Duration::ZERO);
    }
    assert_eq!(
        order(&pool, "m", 6),
        ["0003", "0004", "0003", "0004", "0003", "0004"]
    );
}

#[test]
fn the_call_log_is_bounded_and_newest_first() {
    let pool = KeyPool::from_keys(["test-key-0001"]).unwrap();
    for i in 0..(CALL_LOG_SIZE + 10) {
        let outcome = if i % 2 == 0 {
            answer(200, "{}")
        } else {
            answer(400, INVALID)
        };
        // Reset so the invalid answers do not stop selection.
        pool.reset_all();
        pool.select(Some("m"))
            .unwrap()
            .report(&outcome, Duration::from_millis(i as u64));
    }
    let calls = pool.recent_calls();
    assert_eq!(calls.len(), CALL_LOG_SIZE);
    assert_eq!(
        calls[0].latency_ms,
        (CALL_LOG_SIZE + 9) as f64,
        "newest first"
    );
    assert_eq!(calls[0].class, Class::KeyInvalid);
    assert!(
        calls[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("API key not valid")
    );
    assert_eq!(calls[1].class, Class::Success);
    assert!(calls[1].detail.is_none());
    assert_eq!(calls[0].model.as_deref(), Some("m"));
    assert_eq!(calls[0].key.to_string(), "…0001");
}

/// A strategy that names a key that does not exist, or one that cannot serve, is overruled,
/// never trusted (and never a panic).
#[test]
fn a_strategy_naming_a_bad_key_is_overruled() {
    #[derive(Debug)]
    struct Wrong(usize);
    impl Strategy for Wrong {
        fn choose(&self, _: &Candidates<'_>) -> Option<usize> {
            Some(self.0)
        }
    }
    let past_the_end = KeyPool::builder()
        .keys(["test-key-0001", "test-key-0002"])
        .strategy(Wrong(usize::MAX))
        .build()
        .unwrap();
    assert_eq!(
        past_the_end
            .select(Some("m"))
            .unwrap()
            .selected()
            .fingerprint()
            .to_string(),
        "…0001"
    );
    let disabled = KeyPool::builder()
        .keys(["test-key-0001", "test-key-0002"])
        .strategy(Wrong(0))
        .build()
        .unwrap();
    disabled
        .select(Some("m"))
        .unwrap()
        .report(&answer(400, INVALID), Duration::ZERO);
    assert_eq!(
        disabled
            .select(Some("m"))
            .unwrap()
            .selected()
            .fingerprint()
            .to_string(),
        "…0002"
    );
}

/// After a rebuild without a key, the old pool (where requests may still wait in line) no
/// longer hands it out.
#[test]
fn a_key_removed_by_a_rebuild_is_retired_in_the_old_pool() {
    let old = KeyPool::from_keys(["test-key-0001", "test-key-0002"]).unwrap();
    let kept: Vec<KeySpec> = old
        .specs()
        .into_iter()
        .filter(|s| s.secret.expose_secret() == "test-key-0002")
        .collect();
    let new = old.with_keys(kept).unwrap();
    old.retire_keys_not_in(&new);
    for _ in 0..4 {
        let lease = old.select(Some("m")).unwrap();
        assert_eq!(lease.selected().fingerprint().to_string(), "…0002");
    }
    assert_eq!(old.snapshot().keys[0].reason, Some(DisabledReason::Removed));
    assert_eq!(new.len(), 1);
}

/// Google's 429s name models (and a caller chooses which): what they teach is kept, but the
/// entries kept for good because of them are bounded like the rest of the table.
#[test]
fn models_pinned_by_answers_are_bounded() {
    let pool = KeyPool::builder()
        .key("test-key-0001")
        .key("test-key-0002")
        .build()
        .unwrap();
    for i in 0..(3 * health::MAX_MODELS) {
        if let Ok(lease) = pool.select(Some(&format!("learned-{i}"))) {
            lease.report(&answer(429, MINUTE_30S), Duration::ZERO);
        }
    }
    let tracked = pool.inner.models.all().len();
    assert!(
        tracked <= 2 * health::MAX_MODELS + 1,
        "{tracked} model entries for {} names",
        3 * health::MAX_MODELS
    );
}

// ---------------------------------------------------------------- live reload

/// A reload's new model limits apply to the windows the pool already counts: a raised limit
/// gives the difference, not a fresh minute, and a limit Google reported still narrows a
/// higher configured one.
#[test]
fn reconfigured_limits_keep_the_minutes_count_and_what_google_said() {
    const MODEL: &str = "gemini-2.0-flash";
    let clock = ManualClock::at(ts("2026-11-23T12:00:00Z"));
    let limited = |rpm: u32| {
        KeyPool::builder()
            .key_with(KeySpec::new("test-key-0001").project("proj-a"))
            .clock(clock.clone())
            .model_limits(
                MODEL,
                ModelLimits {
                    rpm: Some(rpm),
                    ..ModelLimits::default()
                },
            )
            .build()
            .unwrap()
    };
    let pool = limited(2);
    // Leases held: each holds its slot of the minute.
    let mut held: Vec<_> = (0..2).map(|_| pool.select(Some(MODEL)).unwrap()).collect();
    assert!(pool.select(Some(MODEL)).is_err());
    assert!(pool.reconfigure_limits(&limited(3)));
    assert!(!pool.reconfigure_limits(&limited(3)), "nothing changed");
    assert_eq!(pool.limits_for("proj-a", MODEL).unwrap().rpm, Some(3));
    held.push(pool.select(Some(MODEL)).unwrap());
    let error = pool.select(Some(MODEL)).unwrap_err();
    assert_eq!(
        error.kind(),
        ErrorKind::QuotaExhausted,
        "one more, not three"
    );
    drop(held);

    // Configured 20, Google says 10 a minute; a reload configuring 50 leaves 10.
    clock.advance(Duration::from_secs(120));
    assert!(pool.reconfigure_limits(&limited(20)));
    pool.select(Some(MODEL))
        .unwrap()
        .report(&answer(429, MINUTE_30S), Duration::from_millis(5));
    assert!(pool.reconfigure_limits(&limited(50)));
    let requests = pool.rate_limits(MODEL).requests.unwrap();
    assert_eq!(requests.limit, 10);
}
