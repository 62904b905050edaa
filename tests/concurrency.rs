//! Many tasks on two worker threads through the whole stack at once: selection, health
//! updates, admission and refunds race, some callers give up mid-call. Nothing deadlocks, no
//! lease or slot is lost, no project admits more than its limit, and every answer is counted
//! once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt, service_fn};
use tower_gemini::clock::ManualClock;
use tower_gemini::pool::{KeySpec, ModelLimits};
use tower_gemini::{KeyPool, stack};

const MODEL: &str = "gemini-2.0-flash";
const PROJECTS: usize = 4;
const RPM: u32 = 50;
const CALLERS: usize = 2_000;

const OVERLOADED: &str =
    r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#;

/// Per key: answers completed by the fake upstream, and how many were successes.
type Answers = Arc<Mutex<HashMap<String, (u64, u64)>>>;

fn pool(clock: &ManualClock) -> KeyPool {
    let limits = ModelLimits {
        rpm: Some(RPM),
        ..ModelLimits::default()
    };
    let mut builder = KeyPool::builder().clock(clock.clone());
    for p in 0..PROJECTS {
        let project = format!("proj-{p}");
        builder = builder
            .key_with(KeySpec::new(format!("test-key-conc-{p:04}")).project(&project))
            .project_model_limits(&project, MODEL, limits);
    }
    builder.build().unwrap()
}

/// `CALLERS` calls at once; every `abort_every`th caller is dropped after its first poll.
async fn race(pool: &KeyPool, answers: &Answers, abort_every: usize) -> (u64, u64) {
    let calls = Arc::new(AtomicU64::new(0));
    let upstream = {
        let (answers, calls) = (answers.clone(), calls.clone());
        service_fn(move |request: Request<Full<Bytes>>| {
            let key = request.headers()["x-goog-api-key"]
                .to_str()
                .unwrap()
                .to_owned();
            let n = calls.fetch_add(1, Ordering::Relaxed);
            let answers = answers.clone();
            async move {
                // Let other tasks in between the admission and the answer.
                tokio::task::yield_now().await;
                let ok = n % 7 != 3;
                let (status, body) = if ok {
                    (
                        StatusCode::OK,
                        r#"{"usageMetadata":{"promptTokenCount":3}}"#,
                    )
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, OVERLOADED)
                };
                {
                    let mut answers = answers.lock().unwrap();
                    let entry = answers.entry(key).or_default();
                    entry.0 += 1;
                    entry.1 += u64::from(ok);
                }
                let response = Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from_static(body.as_bytes())))
                    .unwrap();
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    let gemini = stack(pool).boxed(upstream);
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let mut gemini = gemini.clone();
            let task = tokio::spawn(async move {
                let request = Request::post(format!(
                    "http://127.0.0.1/v1beta/models/{MODEL}:generateContent"
                ))
                .body(Full::new(Bytes::from_static(
                    br#"{"contents":[{"parts":[{"text":"hi"}]}]}"#,
                )))
                .unwrap();
                let ready = gemini.ready().await.unwrap();
                match ready.call(request).await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        let _ = response.into_body().collect().await;
                        ok
                    }
                    Err(_) => false,
                }
            });
            if abort_every > 0 && i % abort_every == 0 {
                let abort = task.abort_handle();
                tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    abort.abort();
                });
            }
            task
        })
        .collect();
    let mut served = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await {
            Ok(true) => served += 1,
            Ok(false) => refused += 1,
            Err(cancelled) => assert!(cancelled.is_cancelled()),
        }
    }
    (served, refused)
}

/// Answers the pool has counted, over all keys.
fn counted(pool: &KeyPool) -> u64 {
    pool.snapshot().keys.iter().map(|k| k.counters.total).sum()
}

/// Check the pool after a race; `before` is [`counted`] before it.
fn check(pool: &KeyPool, answers: &Answers, before: u64, exact: bool) {
    let snapshot = pool.snapshot();
    let answers = answers.lock().unwrap();
    for key in &snapshot.keys {
        assert_eq!(key.counters.in_flight, 0, "a lease was lost: {key:?}");
    }
    let counted_total = counted(pool) - before;
    let answered: u64 = answers.values().map(|(n, _)| n).sum();
    if exact {
        assert_eq!(counted_total, answered, "every answer counted once");
    } else {
        // A caller dropped after the answer but before it was read leaves it uncounted.
        assert!(counted_total <= answered, "{counted_total} > {answered}");
    }
    for (key, (_, successes)) in answers.iter() {
        assert!(
            *successes <= u64::from(RPM),
            "{key}: {successes} successes in one minute, limit {RPM}"
        );
    }
    for quota in &snapshot.quota {
        if let Some(rpm) = quota.usage.rpm {
            assert!(rpm.used <= rpm.limit, "{quota:?}");
        }
    }
}

#[test]
fn many_tasks_race_through_selection_admission_and_refunds() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The quota clock stands still: one minute's window for the whole race.
        let clock = ManualClock::at(jiff::Timestamp::now());
        let pool = pool(&clock);
        let answers = Answers::default();
        let (served, refused) =
            tokio::time::timeout(Duration::from_secs(120), race(&pool, &answers, 0))
                .await
                .expect("no deadlock");
        assert_eq!(served + refused, CALLERS as u64);
        assert!(
            served > 0 && refused > 0,
            "{served} served, {refused} refused"
        );
        check(&pool, &answers, 0, true);

        // The next minute, with a caller in five dropped mid-call.
        clock.advance(Duration::from_secs(61));
        let answers = Answers::default();
        let before = counted(&pool);
        tokio::time::timeout(Duration::from_secs(120), race(&pool, &answers, 5))
            .await
            .expect("no deadlock");
        check(&pool, &answers, before, false);
    });
}
