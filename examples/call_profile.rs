//! Calls through the stack in a loop, for an instruction-counting profiler: counts of
//! instructions do not vary with the machine's load the way times do.
//!
//! ```text
//! cargo build --release --example call_profile
//! valgrind --tool=callgrind target/release/examples/call_profile stack 20000
//! ```
//!
//! The first argument is `bare` (the in-memory client alone), `stack` (10 keys, no limits) or
//! `limits` (10 keys with RPM/TPM/RPD limits); the second the number of calls. Divide the
//! total by the calls, and subtract `bare`'s, for what the stack adds per call.

#[path = "../benches/support/mod.rs"]
mod support;

use std::hint::black_box;

use support::{MODEL, client, keys, limits, request};
use tower::{Layer, ServiceExt};
use tower_gemini::{KeyPool, stack};

fn main() {
    let which = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "stack".to_owned());
    let calls: u64 = std::env::args()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let pool = match which.as_str() {
        "limits" => KeyPool::builder()
            .keys(keys(10))
            .model_limits(MODEL, limits())
            .build(),
        "bare" | "stack" => KeyPool::from_keys(keys(10)),
        other => {
            eprintln!("unknown case {other:?}: use bare, stack or limits");
            std::process::exit(2);
        }
    }
    .expect("fake keys make a pool");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let service = stack(&pool).layer(client());
    runtime.block_on(async {
        for _ in 0..calls {
            if which == "bare" {
                black_box(client().oneshot(request()).await.ok());
            } else {
                black_box(service.clone().oneshot(request()).await.ok());
            }
        }
    });
}
