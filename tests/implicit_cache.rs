//! Prefix affinity (issue #24) over real HTTP to the mock, whose implicit cache is kept per
//! project as Google's is: the turns of a growing conversation go to the project that served
//! its first turn, and their repeated prefix is reported cached there; rotation alone scatters
//! them and loses it. A preferred project without room is passed over at once, never waited
//! for.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use common::served_by;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_gemini::affinity::PrefixAffinity;
use tower_gemini::clock::ScaledClock;
use tower_gemini::mock::{MockGemini, MockServer};
use tower_gemini::pool::{KeyPoolBuilder, ModelLimits};
use tower_gemini::{AffinityLayer, BoxGemini, KeyPool, KeySpec, stack};

const MODEL: &str = "gemini-2.5-flash";
const PROJECTS: usize = 5;
/// A small minimum, so that the documents stay short.
const MIN_TOKENS: u64 = 200;

fn key(p: usize) -> String {
    format!("test-key-prefix-000{p}")
}

async fn mock() -> MockServer {
    let mut builder = MockGemini::builder().implicit_cache_min_tokens(MIN_TOKENS);
    for p in 0..PROJECTS {
        builder = builder.project(format!("proj-{p}"), |project| project.key(key(p)));
    }
    builder.start().await.unwrap()
}

fn pool(build: impl FnOnce(KeyPoolBuilder) -> KeyPoolBuilder) -> KeyPool {
    let mut builder = KeyPool::builder();
    for p in 0..PROJECTS {
        builder = builder.key_with(KeySpec::new(key(p)).project(format!("proj-{p}")));
    }
    build(builder).build().unwrap()
}

fn gemini(pool: &KeyPool, prefix: bool, wait: Option<Duration>) -> BoxGemini {
    let affinity = AffinityLayer::new(pool);
    let affinity = if prefix {
        affinity.prefix_affinity(PrefixAffinity::new().min_tokens(MIN_TOKENS))
    } else {
        affinity
    };
    let layer = stack(pool).affinity(affinity);
    let layer = match wait {
        Some(bound) => layer.wait_up_to(bound),
        None => layer,
    };
    layer.boxed(common::client())
}

/// The `generateContent` body of turn `turns.len()` of a conversation about `document`.
fn conversation(document: &str, turns: &[(String, String)], question: &str) -> Value {
    let mut contents = Vec::new();
    for (asked, answered) in turns {
        contents.push(json!({ "role": "user", "parts": [{ "text": asked }] }));
        contents.push(json!({ "role": "model", "parts": [{ "text": answered }] }));
    }
    contents.push(json!({ "role": "user", "parts": [{ "text": question }] }));
    json!({
        "systemInstruction": { "parts": [{ "text": document }] },
        "contents": contents
    })
}

/// One answer: the project that served it, its text, prompt and cached tokens.
async fn ask(gemini: &BoxGemini, mock: &MockServer, body: &Value) -> (String, String, u64, u64) {
    let request = Request::post(mock.model_url(MODEL, "generateContent"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = gemini.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let project = served_by(&response);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json: Value = serde_json::from_slice(&bytes).unwrap();
    let text = json["candidates"][0]["content"]["parts"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    let usage = &json["usageMetadata"];
    let prompt = usage["promptTokenCount"].as_u64().unwrap();
    let cached = usage["cachedContentTokenCount"].as_u64().unwrap_or(0);
    (project, text, prompt, cached)
}

/// Conversations of `turns` turns, one after the other: the share of prompt tokens cached,
/// and for each conversation the projects that served it.
async fn run(
    gemini: &BoxGemini,
    mock: &MockServer,
    count: usize,
    turns: usize,
) -> (f64, Vec<BTreeSet<String>>) {
    let (mut prompt, mut cached) = (0, 0);
    let mut homes = Vec::new();
    for c in 0..count {
        let document = format!("Document {c}: ") + &"a paragraph of the document. ".repeat(40);
        let mut history = Vec::new();
        let mut served = BTreeSet::new();
        for t in 0..turns {
            let question = format!("question {t} about document {c}");
            let body = conversation(&document, &history, &question);
            let (project, answer, p, k) = ask(gemini, mock, &body).await;
            served.insert(project);
            prompt += p;
            cached += k;
            history.push((question, answer));
        }
        homes.push(served);
    }
    (cached as f64 / prompt as f64, homes)
}

#[tokio::test]
async fn a_growing_conversation_stays_where_its_prefix_is_cached() {
    let first = mock().await;
    let affine = pool(|b| b);
    let (share, homes) = run(&gemini(&affine, true, None), &first, 6, 5).await;
    assert!(homes.iter().all(|h| h.len() == 1), "{homes:?}");
    // Every turn after the first finds its prefix cached.
    assert!(share > 0.6, "cached share {share:.2}");

    let second = mock().await;
    let rotating = pool(|b| b);
    let (rotated, homes) = run(&gemini(&rotating, false, None), &second, 6, 5).await;
    assert!(homes.iter().all(|h| h.len() > 1), "{homes:?}");
    assert!(
        rotated < share / 2.0,
        "rotation {rotated:.2} vs affinity {share:.2}"
    );
}

/// The preferred project at its limit: the next turn goes elsewhere at once (a preference
/// never waits, even where the stack may wait for quota), and comes back when it has room.
#[tokio::test]
async fn a_preferred_project_without_room_is_passed_over_not_waited_for() {
    let mock = mock().await;
    let limits = ModelLimits {
        rpm: Some(2),
        ..Default::default()
    };
    // Quota time ×60: a minute passes in a second.
    let pool = pool(|mut b| {
        for p in 0..PROJECTS {
            b = b.project_model_limits(format!("proj-{p}"), MODEL, limits);
        }
        b.clock(ScaledClock::new(60))
    });
    let gemini = gemini(&pool, true, Some(Duration::from_secs(30)));
    let document = "The one document. ".repeat(60);
    let mut history = Vec::new();
    let mut served = Vec::new();
    for t in 0..3 {
        let question = format!("question {t}");
        let (project, answer, _, _) = ask(
            &gemini,
            &mock,
            &conversation(&document, &history, &question),
        )
        .await;
        served.push(project);
        history.push((question, answer));
    }
    // Two turns on the first project (its limit), the third elsewhere at once.
    assert_eq!(served[0], served[1], "{served:?}");
    assert_ne!(served[2], served[0], "{served:?}");
    assert_eq!(mock.stats().responses_with_status(429), 0);
}
