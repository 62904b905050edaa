//! What the middleware costs per call, against a baseline measured in the same run.
//!
//! ```text
//! cargo bench --bench overhead
//! ```
//!
//! The "client" is an in-memory service that answers at once, so the numbers are the layers'
//! own cost: no network, no mock.

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, ServiceExt, service_fn};
use tower_gemini::classify::Classification;
use tower_gemini::pool::ModelLimits;
use tower_gemini::{KeyPool, KeyRotationLayer, stack};

const URL: &str = "http://127.0.0.1/v1beta/models/gemini-2.0-flash:generateContent";
const BODY: &str = r#"{"contents":[{"role":"user","parts":[{"text":"Explain tower middleware in one paragraph."}]}]}"#;

fn request() -> Request<Full<Bytes>> {
    Request::post(URL)
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap()
}

type Answer = Result<Response<Full<Bytes>>, Infallible>;

fn client() -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = std::future::Ready<Answer>,
> + Clone {
    service_fn(|_: Request<Full<Bytes>>| {
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"{}")))))
    })
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("test-key-{i:04}")).collect()
}

fn calls(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = KeyPool::from_keys(keys(10)).unwrap();
    let limited = KeyPool::builder()
        .keys(keys(10))
        .model_limits(
            "gemini-2.0-flash",
            ModelLimits {
                rpm: Some(u32::MAX),
                tpm: Some(u64::MAX / 2),
                rpd: Some(u32::MAX),
                ipm: None,
            },
        )
        .build()
        .unwrap();

    let mut group = c.benchmark_group("call");
    let bare = client();
    group.bench_function("baseline: client alone", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(bare.clone().oneshot(request()).await.unwrap()) })
    });
    let rotation = KeyRotationLayer::new(&pool).layer(client());
    group.bench_function("KeyRotation", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(rotation.clone().oneshot(request()).await.unwrap()) })
    });
    let full = stack(&pool).layer(client());
    group.bench_function("stack (no limits)", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(full.clone().oneshot(request()).await.unwrap()) })
    });
    let metered = stack(&limited).layer(client());
    group.bench_function("stack (with quota limits)", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(metered.clone().oneshot(request()).await.unwrap()) })
    });
    group.finish();
}

fn selection(c: &mut Criterion) {
    let mut group = c.benchmark_group("select");
    for n in [1, 10, 100] {
        let pool = KeyPool::from_keys(keys(n)).unwrap();
        group.bench_with_input(BenchmarkId::new("round robin", n), &pool, |b, pool| {
            b.iter(|| black_box(pool.select(Some("gemini-2.0-flash")).unwrap()))
        });
    }
    group.finish();
}

fn classification(c: &mut Criterion) {
    let quota = br#"{"error":{"code":429,"message":"You exceeded your current quota.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier","quotaDimensions":{"location":"global","model":"gemini-2.0-flash"},"quotaValue":"15"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"47s"}]}}"#;
    let mut group = c.benchmark_group("classify");
    group.bench_function("200", |b| {
        b.iter(|| black_box(Classification::from_response(StatusCode::OK, b"")))
    });
    group.bench_function("429 QuotaFailure", |b| {
        b.iter(|| {
            black_box(Classification::from_response(
                StatusCode::TOO_MANY_REQUESTS,
                black_box(quota),
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, calls, selection, classification);
criterion_main!(benches);
