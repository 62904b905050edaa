//! Three `gemini-gateway` processes share one Redis and one mock whose projects allow 30 RPM
//! each. Driven together well over the limit for 75 s: the mock answers no 429 (its exact
//! sliding 60-second window would refuse any request beyond the limit in any 60 s), every
//! project's quota is used in both windows, and no caller sees an error.
//!
//! The window alone (`pacing = "off"`): this checks the shared window's capacity at its
//! boundary, where a window's whole quota may go at once. (Paced, each replica spaces its own
//! requests: the quota goes at the steady rate, a minute's worth a minute.)
//!
//! Takes 75 s of real time. Needs Redis (see `tests/redis_store.rs`).
#![cfg(all(feature = "redis", feature = "gateway"))]

mod common;

use common::redis::Redis;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_share_one_quota_and_google_sees_no_429() {
    let Some(redis) = Redis::any("three_gateways_share_one_quota_and_google_sees_no_429") else {
        return;
    };
    common::replica::three_gateways_share_one_quota(&redis.url, &Redis::prefix("replicas")).await;
}
