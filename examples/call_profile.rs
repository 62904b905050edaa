//! Calls through the stack in a loop, for an instruction-counting profiler: counts of
//! instructions do not vary with the machine's load the way times do.
//!
//! ```text
//! cargo build --release --example call_profile
//! valgrind --tool=callgrind target/release/examples/call_profile stack 20000
//! ```
//!
//! With `--collect-bus=yes` callgrind also counts atomic read-modify-writes (`Ge`, locked
//! instructions). The example prints the heap allocations per call itself.
//!
//! The first argument is `bare` (the in-memory client alone), `retry` (`RetryLayer` alone
//! over it), `stack` (10 keys, no limits) or
//! `limits` (10 keys with RPM/TPM/RPD limits); the second the number of calls; the third the
//! number of OS threads sharing them (default 1; `perf record -g` on two shows contention). Divide the
//! total by the calls, and subtract `bare`'s, for what the stack adds per call.

#[path = "../benches/support/mod.rs"]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use support::{MODEL, client, keys, limits, request};
use tower::{Layer, ServiceExt};
use tower_gemini::retry::RetryLayer;
use tower_gemini::{KeyPool, stack};

/// The system allocator, counting allocations. A load and a store rather than an atomic add:
/// the calls run on one thread, and callgrind's count of atomic instructions stays the
/// stack's own.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn count() {
    ALLOCATIONS.store(ALLOCATIONS.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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
        "bare" | "stack" | "retry" => KeyPool::from_keys(keys(10)),
        other => {
            eprintln!("unknown case {other:?}: use bare, retry, stack or limits");
            std::process::exit(2);
        }
    }
    .expect("fake keys make a pool");
    let threads: u64 = std::env::args()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1);
    let service = stack(&pool).layer(client());
    let retry = RetryLayer::new().layer(client());
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let service = service.clone();
            let retry = retry.clone();
            let which = which.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(async {
                    for _ in 0..calls / threads {
                        if which == "bare" {
                            black_box(client().oneshot(request()).await.ok());
                        } else if which == "retry" {
                            black_box(retry.clone().oneshot(request()).await.ok());
                        } else {
                            black_box(service.clone().oneshot(request()).await.ok());
                        }
                    }
                });
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a worker thread");
    }
    if threads == 1 {
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        println!(
            "{which}: {:.2} allocations per call ({allocations} in {calls} calls)",
            allocations as f64 / calls as f64
        );
    }
}
