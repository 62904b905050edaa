//! Goodput: how much of the quota each way of sending turns into answers, in simulated time.
//!
//! ```text
//! cargo bench --bench goodput --features cache
//! ```
//!
//! The mock with 5 projects × 60 RPM and 2 % of requests answered 503; 30 closed-loop callers
//! (well above capacity) for 5 simulated minutes; through the stack failing fast, the stack
//! waiting for a slot, and the common hand-written approach (see `support/goodput.rs`).
//! Then the same with 30 % of calls repeating one of 5 deterministic prompts, through the
//! waiting stack with and without `CacheLayer` (feature `cache`). Prints two tables; the figures
//! are counts, not timings, so they hold on any machine.

#[path = "support/goodput.rs"]
mod goodput;

use std::time::Duration;

use goodput::{Scenario, Sender, run};

/// One table: `scenario` through each of `senders`.
fn table(scenario: &Scenario, senders: &[Sender]) {
    println!(
        "goodput: {} projects × {} RPM, {:.0} % 503s, {} closed-loop callers, {} simulated s\n",
        scenario.projects,
        scenario.rpm,
        scenario.faults * 100.0,
        scenario.callers,
        scenario.duration.as_secs()
    );
    println!(
        "| sender | delivered / capacity | of capacity faults leave | upstream 429 | client failures | retries per call | p50 wait | p99 wait | longest |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &sender in senders {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let report = runtime.block_on(run(*scenario, sender));
        println!(
            "| {} | {} / {} = {:.1} % | {:.1} % | {} ({:.2} %) | {} | {:.2} | {:.1} s | {:.1} s | {:.1} s |",
            sender.name(),
            report.delivered,
            report.capacity,
            report.delivered_share() * 100.0,
            report.of_capacity_left() * 100.0,
            report.upstream_429,
            report.share_429() * 100.0,
            report.failed,
            report.retries_per_call(),
            report.p50.as_secs_f64(),
            report.p99.as_secs_f64(),
            report.longest.as_secs_f64(),
        );
    }
    println!();
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench` absent: nothing to show then.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    // The peers' scenario (issue #26): 20 callers, 5 projects × 60 RPM, 2 % 503s, 2 minutes,
    // through the waiting stack paced (the default) and by the window alone.
    let peers = Scenario {
        projects: 5,
        rpm: 60,
        faults: 0.02,
        callers: 20,
        duration: Duration::from_secs(120),
        seed: 7,
        repeats: 0.0,
    };
    table(&peers, &[Sender::Wait, Sender::WaitWindow]);
    let scenario = Scenario {
        callers: 30,
        duration: Duration::from_secs(300),
        ..peers
    };
    table(
        &scenario,
        &[
            Sender::Wait,
            Sender::WaitWindow,
            Sender::FailFast,
            Sender::Naive,
        ],
    );
    #[cfg(feature = "cache")]
    {
        let repeating = Scenario {
            repeats: 0.3,
            faults: 0.0,
            ..scenario
        };
        println!(
            "\nwith {:.0} % of calls repeating one of 5 deterministic prompts (no 503s):\n",
            repeating.repeats * 100.0
        );
        println!(
            "| sender | delivered / capacity | upstream requests | upstream 429 | client failures | p50 wait | p99 wait |"
        );
        println!("|---|---|---|---|---|---|---|");
        for sender in [Sender::Wait, Sender::WaitCached] {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .unwrap();
            let report = runtime.block_on(run(repeating, sender));
            println!(
                "| {} | {} / {} = {:.1} % | {} | {} | {} | {:.1} s | {:.1} s |",
                sender.name(),
                report.delivered,
                report.capacity,
                report.delivered_share() * 100.0,
                report.upstream,
                report.upstream_429,
                report.failed,
                report.p50.as_secs_f64(),
                report.p99.as_secs_f64(),
            );
        }
    }
}
