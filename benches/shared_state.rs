//! What sharing the pool's state through Redis adds per call: the same stack over a
//! `MemoryStore` (the default) and a `RedisStore`, in one run.
//!
//! ```text
//! redis-server --port 6379 &      # or any Redis; REDIS_URL=redis://host:port to choose
//! cargo bench --features redis --bench shared_state
//! ```
//!
//! The client answers at once from memory, so the difference is the store: one Lua script round
//! trip per call to a Redis on loopback. Without a reachable Redis the bench says so and stops.

mod support;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use support::{client, keys, limits, request};
use tower::{Layer, ServiceExt};
use tower_gemini::state::{RedisOptions, RedisStore};
use tower_gemini::{KeyPool, stack};

fn pool() -> tower_gemini::pool::KeyPoolBuilder {
    KeyPool::builder()
        .keys(keys(10))
        .model_limits(support::MODEL, limits())
}

fn shared_state(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let options = RedisOptions {
        prefix: format!("bench-{}", std::process::id()),
        ..RedisOptions::default()
    };
    let store = runtime
        .block_on(RedisStore::connect_with(&url, options))
        .unwrap();
    if !store.is_connected() {
        eprintln!("no Redis at {url}: start one or set REDIS_URL; nothing measured");
        return;
    }
    let memory = stack(&pool().build().unwrap()).layer(client());
    let redis = stack(&pool().store(store.clone()).build().unwrap()).layer(client());

    let mut group = c.benchmark_group("shared state");
    group.bench_function("stack, MemoryStore (baseline)", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(memory.clone().oneshot(request()).await.unwrap()) })
    });
    group.bench_function("stack, RedisStore on loopback", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(redis.clone().oneshot(request()).await.unwrap()) })
    });
    group.finish();
    assert!(store.is_connected(), "Redis went away during the bench");
}

criterion_group!(benches, shared_state);
criterion_main!(benches);
