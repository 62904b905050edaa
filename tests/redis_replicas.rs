//! Three `gemini-gateway` processes share one Redis and one mock whose projects allow 30 RPM
//! each. Driven together well over the limit for 75 s: the mock answers no 429 (its exact
//! sliding 60-second window would refuse any request beyond the limit in any 60 s), every
//! project's quota is used in both windows, and no caller sees an error.
//!
//! The same, at the same time, on a three-master Redis Cluster started on 127.0.0.1
//! (`redis-server --cluster-enabled yes` ×3 + `redis-cli --cluster create`, or the one
//! `REDIS_CLUSTER_URL` names) and on a `valkey-server`, each with gateways and a mock of its
//! own: each store skipped, saying so, where the machine lacks it.
//!
//! The window alone (`pacing = "off"`): this checks the shared window's capacity at its
//! boundary, where a window's whole quota may go at once. (Paced, each replica spaces its own
//! requests: the quota goes at the steady rate, a minute's worth a minute.)
//!
//! Takes 75 s of real time. Needs Redis (see `tests/redis_store.rs`).
#![cfg(all(feature = "redis", feature = "gateway"))]

mod common;

use common::redis::{Cluster, Redis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_share_one_quota_and_google_sees_no_429() {
    let test = "three_gateways_share_one_quota_and_google_sees_no_429";
    let Some(redis) = Redis::any(test) else {
        return;
    };
    let cluster = Cluster::any(test);
    let valkey = Redis::valkey(test);
    let runs = [
        Some((redis.url.clone(), "replicas")),
        cluster
            .as_ref()
            .map(|c| (c.url.clone(), "replicas-cluster")),
        valkey.as_ref().map(|v| (v.url.clone(), "replicas-valkey")),
    ];
    // Together: 75 s for all three.
    let runs = runs.into_iter().flatten().map(|(url, name)| async move {
        common::replica::three_gateways_share_one_quota(&url, &Redis::prefix(name)).await;
    });
    futures_util::future::join_all(runs).await;
}
