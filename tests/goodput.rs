//! Keeps the goodput scenario honest at small scale (the full one is `cargo bench --bench
//! goodput`): 3 projects × 10 RPM for 2 simulated minutes, callers above capacity. Waiting for
//! a slot, the stack delivers at least 99 % of the capacity with no upstream 429 and no caller
//! error; failing fast, it still sends nothing that is sure to be refused. Counts, not timings.

#[path = "../benches/support/goodput.rs"]
mod goodput;

use std::time::Duration;

use goodput::{Scenario, Sender, run};

fn scenario(faults: f64) -> Scenario {
    Scenario {
        projects: 3,
        rpm: 10,
        faults,
        callers: 12,
        duration: Duration::from_secs(120),
        seed: 11,
        repeats: 0.0,
    }
}

#[tokio::test(start_paused = true)]
async fn waiting_delivers_the_capacity_without_a_429_or_a_failure() {
    let report = run(scenario(0.0), Sender::Wait).await;
    eprintln!("{report:?}");
    assert_eq!(report.upstream_429, 0, "{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.delivered_share() >= 0.99, "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn failing_fast_sends_nothing_sure_to_be_refused() {
    let report = run(scenario(0.0), Sender::FailFast).await;
    eprintln!("{report:?}");
    assert_eq!(report.upstream_429, 0, "{report:?}");
    // Callers retry a second after each refusal, so every slot is found soon after it frees.
    assert!(report.delivered_share() >= 0.99, "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn with_faults_the_capacity_they_leave_is_delivered() {
    let report = run(scenario(0.05), Sender::Wait).await;
    eprintln!("{report:?}");
    assert!(
        report.upstream_503 > 0,
        "the scenario injected no fault: {report:?}"
    );
    assert_eq!(report.upstream_429, 0, "{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.of_capacity_left() >= 0.99, "{report:?}");
}

/// The baseline the bench compares against does overrun the quota: the scenario can tell the
/// difference.
#[tokio::test(start_paused = true)]
async fn the_naive_baseline_meets_429s() {
    let report = run(scenario(0.0), Sender::Naive).await;
    eprintln!("{report:?}");
    assert!(report.upstream_429 > 0, "{report:?}");
}

/// With 30 % of calls repeating deterministic prompts, the cache answers them from memory: the
/// callers get about 1 / 0.7 of what the quota alone delivers, still with no 429 and no failure.
#[cfg(feature = "cache")]
#[tokio::test(start_paused = true)]
async fn a_cache_turns_repeated_prompts_into_more_delivered_answers() {
    let repeating = Scenario {
        repeats: 0.3,
        ..scenario(0.0)
    };
    let plain = run(repeating, Sender::Wait).await;
    let cached = run(repeating, Sender::WaitCached).await;
    eprintln!("{plain:?}\n{cached:?}");
    assert_eq!((cached.upstream_429, cached.failed), (0, 0), "{cached:?}");
    assert!(
        plain.delivered_share() >= 0.99 && plain.delivered_share() <= 1.0,
        "{plain:?}"
    );
    assert!(
        cached.delivered as f64 >= 1.3 * plain.delivered as f64,
        "{cached:?} vs {plain:?}"
    );
    // Upstream, the cache sends no more than the quota takes.
    assert!(cached.upstream <= plain.upstream, "{cached:?} vs {plain:?}");
}

/// The peers' scenario (20 callers, 5 projects × 60 RPM, 2 % 503s, 2 minutes), in full. Paced
/// (the default), waiting delivers all the capacity the faults leave with no 429 and no failure,
/// and the waits stay under 10 s at p99, within a client's usual 60 s timeout; by the minute's
/// window alone, the quota goes in the first second and the rest wait a minute for it to move.
#[tokio::test(start_paused = true)]
async fn paced_waits_stay_within_a_client_timeout_where_the_window_alone_waits_a_minute() {
    let peers = Scenario {
        projects: 5,
        rpm: 60,
        faults: 0.02,
        callers: 20,
        duration: Duration::from_secs(120),
        seed: 7,
        repeats: 0.0,
    };
    let paced = run(peers, Sender::Wait).await;
    let window = run(peers, Sender::WaitWindow).await;
    eprintln!("{paced:?}\n{window:?}");
    assert_eq!((paced.upstream_429, paced.failed), (0, 0), "{paced:?}");
    assert!(paced.of_capacity_left() >= 0.995, "{paced:?}");
    assert!(paced.p99 <= Duration::from_secs(10), "{paced:?}");
    assert!(window.p99 >= Duration::from_secs(60), "{window:?}");
    // The same capacity delivered (within a couple of answers: the two admit at other moments).
    assert!(
        paced.delivered + 2 >= window.delivered,
        "{} paced, {} by the window",
        paced.delivered,
        window.delivered
    );
}
