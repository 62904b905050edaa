//! What a key costs in memory: at most 2 KiB each, with a model in use and quota limits set,
//! measured by counting the allocator's live bytes around building and using a pool.

mod common;

use common::alloc::{Counting, live_bytes};
use tower_gemini::pool::ModelLimits;
use tower_gemini::{KeyPool, KeySpec};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Live bytes held by a pool of `keys` keys, one project each, after one selection per key for
/// a limited model (so every project's slots and ledger for it exist).
fn bytes_for(keys: usize) -> isize {
    let before = live_bytes();
    let pool = (0..keys)
        .fold(KeyPool::builder(), |builder, i| {
            builder.key_with(KeySpec::new(format!("test-key-{i:06}")).project(format!("proj-{i}")))
        })
        .model_limits(
            "gemini-2.0-flash",
            ModelLimits {
                rpm: Some(60),
                tpm: Some(1_000_000),
                rpd: Some(1_000),
                ipm: None,
            },
        )
        .build()
        .unwrap();
    for _ in 0..keys {
        drop(pool.select(Some("gemini-2.0-flash")).unwrap());
    }
    let held = live_bytes() - before;
    drop(pool);
    held
}

#[test]
fn a_key_costs_at_most_two_kib() {
    // The difference between two sizes cancels what every pool holds whatever its size.
    let small = bytes_for(1_000);
    let large = bytes_for(3_000);
    let per_key = (large - small) / 2_000;
    eprintln!("{per_key} bytes per key (1,000 keys: {small} bytes, 3,000: {large})");
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(rss) = status.lines().find(|line| line.starts_with("VmRSS"))
    {
        eprintln!("this test process: {rss}");
    }
    assert!(per_key > 0, "nothing measured");
    assert!(per_key <= 2048, "{per_key} bytes per key");
}
