//! Implicit caching: what rotation costs a multi-turn workload, and what prefix affinity saves.
//!
//! ```text
//! cargo bench --bench implicit_cache
//! ```
//!
//! The mock with 5 projects, each keeping its own implicit cache as Google does (a prompt that
//! repeats a prefix of at least 2,048 tokens — Google's minimum for the 2.5 models — of one the
//! same project saw in the last 5 minutes reports that prefix as `cachedContentTokenCount`).
//! 23 conversations of 8 turns, interleaved as concurrent users' are, each about its own
//! 2,600-token document (the system instruction) with a growing history, on
//! `gemini-2.5-flash`; priced by `CostLayer` at Google's list prices (cached input at a tenth).
//! Through the stack with rotation alone (round robin), then with prefix affinity. The figures
//! are token counts and dollars, not timings: they hold on any machine.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_gemini::affinity::PrefixAffinity;
use tower_gemini::cost::{CostLayer, Scope};
use tower_gemini::mock::{MockGemini, MockServer};
use tower_gemini::{AffinityLayer, KeyPool, KeySpec, stack};

const MODEL: &str = "gemini-2.5-flash";
const PROJECTS: usize = 5;
/// Not a multiple of the projects: with 20, round robin would happen to send each conversation
/// to the same project every turn (real arrivals are not that regular).
const CONVERSATIONS: usize = 23;
const TURNS: usize = 8;

fn main() {
    // `cargo test --benches` runs bench targets with `--bench` absent: nothing to show then.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "implicit cache: {PROJECTS} projects, {CONVERSATIONS} conversations × {TURNS} turns on {MODEL}, \
         a 2,600-token document each, Google's list prices\n"
    );
    println!("| routing | prompt tokens | cached | cached share | spent | vs rotation |");
    println!("|---|---:|---:|---:|---:|---:|");
    let rotation = runtime.block_on(run(false));
    let affinity = runtime.block_on(run(true));
    for (name, figures) in [
        ("rotation (round robin)", &rotation),
        ("prefix affinity", &affinity),
    ] {
        println!(
            "| {name} | {} | {} | {:.1} % | ${:.4} | {:.0} % |",
            figures.prompt,
            figures.cached,
            100.0 * figures.cached as f64 / figures.prompt as f64,
            figures.usd,
            100.0 * figures.usd / rotation.usd,
        );
    }
}

struct Figures {
    prompt: u64,
    cached: u64,
    usd: f64,
}

async fn mock() -> MockServer {
    let mut builder = MockGemini::builder();
    for p in 0..PROJECTS {
        builder = builder.project(format!("proj-{p}"), |project| {
            project.key(format!("test-key-bench-000{p}"))
        });
    }
    builder.start().await.unwrap()
}

fn pool() -> KeyPool {
    let mut builder = KeyPool::builder();
    for p in 0..PROJECTS {
        builder = builder
            .key_with(KeySpec::new(format!("test-key-bench-000{p}")).project(format!("proj-{p}")));
    }
    builder.build().unwrap()
}

/// Turn `history.len()` of a conversation about `document`.
fn body(document: &str, history: &[(String, String)], question: &str) -> String {
    let mut contents = Vec::new();
    for (asked, answered) in history {
        contents.push(json!({ "role": "user", "parts": [{ "text": asked }] }));
        contents.push(json!({ "role": "model", "parts": [{ "text": answered }] }));
    }
    contents.push(json!({ "role": "user", "parts": [{ "text": question }] }));
    json!({ "systemInstruction": { "parts": [{ "text": document }] }, "contents": contents })
        .to_string()
}

async fn run(prefix: bool) -> Figures {
    let mock = mock().await;
    let pool = pool();
    let affinity = if prefix {
        AffinityLayer::new(&pool).prefix_affinity(PrefixAffinity::new())
    } else {
        AffinityLayer::new(&pool)
    };
    let cost = CostLayer::new();
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let gemini = cost.layer(stack(&pool).affinity(affinity).layer(http));
    let documents: Vec<String> = (0..CONVERSATIONS)
        .map(|c| {
            format!("Document {c}. ") + &"A paragraph of this document, read in full. ".repeat(240)
        })
        .collect();
    let mut histories: Vec<Vec<(String, String)>> = vec![Vec::new(); CONVERSATIONS];
    let (mut prompt, mut cached) = (0, 0);
    for t in 0..TURNS {
        for (c, history) in histories.iter_mut().enumerate() {
            let question = format!("Question {t} about document {c}?");
            let request = Request::post(mock.model_url(MODEL, "generateContent"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body(
                    &documents[c],
                    history,
                    &question,
                ))))
                .unwrap();
            let response = gemini.clone().oneshot(request).await.unwrap();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let json: Value = serde_json::from_slice(&bytes).unwrap();
            let usage = &json["usageMetadata"];
            prompt += usage["promptTokenCount"].as_u64().unwrap_or(0);
            cached += usage["cachedContentTokenCount"].as_u64().unwrap_or(0);
            let answer = json["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            history.push((question, answer));
        }
    }
    Figures {
        prompt,
        cached,
        usd: cost.spend().today_usd(&Scope::Pool),
    }
}
