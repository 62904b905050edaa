//! The Interactions API through the stack (issue #24), over real HTTP to the mock with three
//! projects, each keeping its own interactions: conversations continued with
//! `previous_interaction_id` stay in the project that holds them (streamed or not, under quota
//! pressure: waiting rather than rotating); an id the pool never learned is found by probing
//! without blaming a key; tenants cannot reach each other's interactions; pins survive a
//! restart.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{served_by, text};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_gemini::clock::ScaledClock;
use tower_gemini::context::Tenant;
use tower_gemini::mock::{MockGemini, MockServer};
use tower_gemini::pool::{KeyPoolBuilder, ModelLimits};
use tower_gemini::state::StateFile;
use tower_gemini::{AffinityLayer, BoxGemini, ErrorKind, KeyPool, KeySpec, stack};

const MODEL: &str = "gemini-2.5-flash";
const KEYS: [(&str, &str); 3] = [
    ("proj-a", "test-key-convers-000a"),
    ("proj-b", "test-key-convers-000b"),
    ("proj-c", "test-key-convers-000c"),
];

async fn mock() -> MockServer {
    let mut builder = MockGemini::builder().background_delay(Duration::from_millis(100));
    for (project, key) in KEYS {
        builder = builder.project(project, |p| p.key(key));
    }
    builder.start().await.unwrap()
}

fn pool(build: impl FnOnce(KeyPoolBuilder) -> KeyPoolBuilder) -> KeyPool {
    let mut builder = KeyPool::builder();
    for (project, key) in KEYS {
        builder = builder.key_with(KeySpec::new(key).project(project));
    }
    build(builder).build().unwrap()
}

fn gemini(pool: &KeyPool, wait: Option<Duration>) -> BoxGemini {
    let layer = stack(pool);
    let layer = match wait {
        Some(bound) => layer.wait_up_to(bound),
        None => layer,
    };
    layer.boxed(common::client())
}

fn request(method: Method, url: String, body: Option<Value>) -> Request<Full<Bytes>> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn create(mock: &MockServer, body: Value) -> Request<Full<Bytes>> {
    request(
        Method::POST,
        format!("{}/v1beta/interactions", mock.url()),
        Some(body),
    )
}

fn turn(input: &str, previous: Option<&str>, stream: bool) -> Value {
    let mut body = json!({ "model": MODEL, "input": input, "stream": stream });
    if let Some(previous) = previous {
        body["previous_interaction_id"] = json!(previous);
    }
    body
}

/// The interaction's id from a JSON answer or an SSE stream (its first frame).
fn id_of(answer: &str) -> String {
    let json = match answer.strip_prefix("event: ") {
        Some(_) => {
            let line = answer
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap();
            serde_json::from_str::<Value>(line).unwrap()["interaction"].clone()
        }
        None => serde_json::from_str::<Value>(answer).unwrap(),
    };
    json["id"].as_str().unwrap().to_owned()
}

/// Ten conversations of four turns, half streamed, through `stack()` over three projects with
/// a tight limit on one: every turn after the first is served by its conversation's project
/// (the mock would answer 404 anywhere else), with no failure — turns for the busy project
/// wait for it rather than go elsewhere.
#[tokio::test]
async fn ten_conversations_of_four_turns_stay_in_their_projects() {
    let mock = mock().await;
    let limits = ModelLimits {
        rpm: Some(3),
        ..Default::default()
    };
    // Quota time ×60: a minute passes in a second.
    let pool = pool(|b| {
        b.project_model_limits("proj-b", MODEL, limits)
            .clock(ScaledClock::new(60))
    });
    let gemini = gemini(&pool, Some(Duration::from_secs(30)));
    let mut conversations = tokio::task::JoinSet::new();
    for c in 0..10 {
        let gemini = gemini.clone();
        let url = mock.url();
        conversations.spawn(async move {
            let stream = c % 2 == 1;
            let mut previous: Option<String> = None;
            let mut served = Vec::new();
            for t in 0..4 {
                let body = turn(
                    &format!("conversation {c} turn {t}"),
                    previous.as_deref(),
                    stream,
                );
                let request = request(
                    Method::POST,
                    format!("{url}/v1beta/interactions"),
                    Some(body),
                );
                let response = gemini.clone().oneshot(request).await.unwrap();
                assert_eq!(
                    response.status(),
                    StatusCode::OK,
                    "conversation {c} turn {t}"
                );
                served.push(served_by(&response));
                let answer = text(response).await;
                assert!(answer.contains(&format!("turn {}", t + 1)), "{answer}");
                previous = Some(id_of(&answer));
            }
            served
        });
    }
    let mut on_b = 0;
    while let Some(served) = conversations.join_next().await {
        let served = served.unwrap();
        assert!(served.iter().all(|s| *s == served[0]), "{served:?}");
        if served[0] == "…000b" {
            on_b += served.len();
        }
    }
    assert_eq!(mock.stats().responses_with_status(404), 0);
    assert_eq!(mock.stats().responses_with_status(429), 0);
    // proj-b served more turns than its limit allows at once: the later ones waited for it.
    assert!(on_b > 3, "proj-b served {on_b} turns");
}

/// An interaction made outside the pool (another program, or before the pool knew it) is found
/// with at most one probe per project; the probes' 404s blame no key; the conversation then
/// continues on the project that has it without probing again.
#[tokio::test]
async fn an_unknown_interaction_is_found_by_probing_without_blaming_keys() {
    let mock = mock().await;
    let pool = pool(|b| b);
    let gemini = gemini(&pool, None);
    // Made with proj-c's key directly.
    let made = common::client()
        .request(common::with_key(
            create(&mock, turn("hello", None, false)),
            KEYS[2].1,
        ))
        .await
        .unwrap();
    let id = id_of(&text(made).await);
    let before: Vec<u64> = KEYS
        .iter()
        .map(|(_, k)| mock.stats().requests_for(k))
        .collect();
    let get = request(
        Method::GET,
        format!("{}/v1beta/interactions/{id}", mock.url()),
        None,
    );
    let response = gemini.clone().oneshot(get).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(served_by(&response), "…000c");
    let after: Vec<u64> = KEYS
        .iter()
        .map(|(_, k)| mock.stats().requests_for(k))
        .collect();
    // At most one probe of each other project, then the probe that found it and the request.
    assert!(
        after[0] - before[0] <= 1 && after[1] - before[1] <= 1,
        "{before:?} {after:?}"
    );
    assert_eq!(
        pool.owner_of(&format!("interactions/{id}"))
            .unwrap()
            .project_name(),
        "proj-c"
    );
    // No key was blamed for the probes' 404s.
    assert_no_key_blamed(&pool);
    // The next turn goes to proj-c at once.
    let probes = mock.stats().responses_with_status(404);
    let next = gemini
        .clone()
        .oneshot(create(&mock, turn("again", Some(&id), false)))
        .await
        .unwrap();
    assert_eq!(next.status(), StatusCode::OK);
    assert_eq!(served_by(&next), "…000c");
    assert_eq!(mock.stats().responses_with_status(404), probes);
}

/// An id no project has: every project is asked once, and the caller gets Google's own 404 in
/// the Interactions error shape; no key is blamed.
#[tokio::test]
async fn an_id_no_project_has_gets_googles_own_answer() {
    let mock = mock().await;
    let pool = pool(|b| b);
    let gemini = gemini(&pool, None);
    let get = request(
        Method::GET,
        format!("{}/v1/interactions/v1_nowhere", mock.url()),
        None,
    );
    let response = gemini.clone().oneshot(get).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = serde_json::from_str(&text(response).await).unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    // Three probes and the request itself.
    assert_eq!(mock.stats().total_requests(), 4);
    assert_no_key_blamed(&pool);
    assert!(pool.owner_of("interactions/v1_nowhere").is_none());
}

/// Every key active, none cooling for any model, no failure counted.
fn assert_no_key_blamed(pool: &KeyPool) {
    for key in pool.snapshot().keys {
        assert_eq!(key.state, tower_gemini::pool::KeyState::Active, "{key:?}");
        assert!(
            key.models
                .iter()
                .all(|m| m.cooling_until.is_none() && !m.disabled),
            "{key:?}"
        );
        assert_eq!(key.counters.consecutive_failures, 0, "{key:?}");
    }
}

fn as_tenant(mut request: Request<Full<Bytes>>, tenant: &str) -> Request<Full<Bytes>> {
    request.extensions_mut().insert(Tenant::new(tenant));
    request
}

/// What one tenant creates, another cannot get, continue, cancel or delete: a `NotFound` error
/// with nothing sent; an id with no record is not probed for a tenant.
#[tokio::test]
async fn a_tenant_cannot_reach_another_tenants_interaction() {
    let mock = mock().await;
    let pool = pool(|b| b);
    let gemini = gemini(&pool, None);
    let made = gemini
        .clone()
        .oneshot(as_tenant(create(&mock, turn("mine", None, false)), "alice"))
        .await
        .unwrap();
    let id = id_of(&text(made).await);
    let sent = mock.stats().total_requests();
    let base = format!("{}/v1beta/interactions/{id}", mock.url());
    let attempts = [
        request(Method::GET, base.clone(), None),
        request(Method::DELETE, base.clone(), None),
        request(Method::POST, format!("{base}/cancel"), None),
        create(&mock, turn("yours?", Some(&id), false)),
        request(
            Method::GET,
            format!("{}/v1beta/interactions/v1_unrecorded", mock.url()),
            None,
        ),
    ];
    for attempt in attempts {
        let error = gemini
            .clone()
            .oneshot(as_tenant(attempt, "mallory"))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");
        assert_eq!(error.status_code(), StatusCode::NOT_FOUND);
    }
    assert_eq!(
        mock.stats().total_requests(),
        sent,
        "nothing was sent for mallory"
    );
    let mine = gemini
        .clone()
        .oneshot(as_tenant(request(Method::GET, base, None), "alice"))
        .await
        .unwrap();
    assert_eq!(mine.status(), StatusCode::OK);
}

/// A delete's success forgets the pin; `store: false` creates nothing to learn; a background
/// interaction is polled and cancelled on its own project.
#[tokio::test]
async fn deletes_forget_unstored_are_not_learned_background_is_polled_in_place() {
    let mock = mock().await;
    let pool = pool(|b| b);
    let gemini = gemini(&pool, None);
    let made = gemini
        .clone()
        .oneshot(create(&mock, turn("to delete", None, true)))
        .await
        .unwrap();
    let id = id_of(&text(made).await);
    let name = format!("interactions/{id}");
    let project = pool
        .owner_of(&name)
        .expect("learned from the stream")
        .project_name()
        .to_owned();
    let url = format!("{}/v1beta/interactions/{id}", mock.url());
    let deleted = gemini
        .clone()
        .oneshot(request(Method::DELETE, url, None))
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    assert!(pool.owner_of(&name).is_none());
    let _ = project;

    let mut unstored = turn("forget me", None, false);
    unstored["store"] = json!(false);
    let answer = gemini
        .clone()
        .oneshot(create(&mock, unstored))
        .await
        .unwrap();
    let id = id_of(&text(answer).await);
    assert!(pool.owner_of(&format!("interactions/{id}")).is_none());

    let mut background = turn("take your time", None, false);
    background["background"] = json!(true);
    let started = gemini
        .clone()
        .oneshot(create(&mock, background.clone()))
        .await
        .unwrap();
    let home = served_by(&started);
    let id = id_of(&text(started).await);
    let url = format!("{}/v1beta/interactions/{id}", mock.url());
    let mut status = String::new();
    for _ in 0..50 {
        let polled = gemini
            .clone()
            .oneshot(request(Method::GET, url.clone(), None))
            .await
            .unwrap();
        assert_eq!(served_by(&polled), home);
        let json: Value = serde_json::from_str(&text(polled).await).unwrap();
        status = json["status"].as_str().unwrap().to_owned();
        if status == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, "completed");
    let second = gemini
        .clone()
        .oneshot(create(&mock, background))
        .await
        .unwrap();
    let home = served_by(&second);
    let id = id_of(&text(second).await);
    let cancel = format!("{}/v1beta/interactions/{id}/cancel", mock.url());
    let cancelled = gemini
        .clone()
        .oneshot(request(Method::POST, cancel, None))
        .await
        .unwrap();
    assert_eq!(served_by(&cancelled), home);
    let json: Value = serde_json::from_str(&text(cancelled).await).unwrap();
    assert_eq!(json["status"], "cancelled");
    assert_eq!(mock.stats().responses_with_status(404), 0);
}

/// The pins are saved in the state file: a restarted process continues each conversation on its
/// project without probing.
#[tokio::test]
async fn pins_survive_a_restart() {
    let mock = mock().await;
    let dir = std::env::temp_dir().join(format!("tg-pins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = StateFile::new(dir.join("state.json"));
    let first = pool(|b| b);
    let gemini_1 = gemini(&first, None);
    let mut conversations = Vec::new();
    for c in 0..6 {
        let made = gemini_1
            .clone()
            .oneshot(create(&mock, turn(&format!("c{c}"), None, false)))
            .await
            .unwrap();
        let project = served_by(&made);
        conversations.push((id_of(&text(made).await), project));
    }
    file.save(&first).unwrap();
    drop(gemini_1);

    let second = pool(|b| b);
    let report = file.restore(&second).unwrap().unwrap();
    assert_eq!(report.pins_restored, 6);
    // Probing off: only the restored pins can send the turns home.
    let gemini_2 = stack(&second)
        .affinity(AffinityLayer::new(&second).probe_unknown(false))
        .boxed(common::client());
    for (id, project) in conversations {
        let next = gemini_2
            .clone()
            .oneshot(create(&mock, turn("and then?", Some(&id), false)))
            .await
            .unwrap();
        assert_eq!(next.status(), StatusCode::OK);
        assert_eq!(served_by(&next), project);
    }
    assert_eq!(mock.stats().responses_with_status(404), 0);
    let _ = std::fs::remove_dir_all(dir);
}

/// The Interactions API's usage (`total_input_tokens`, `total_cached_tokens`,
/// `total_output_tokens`), streamed or whole, is what quota and cost read: the ledger holds
/// the real prompt tokens (the conversation so far, which the body never shows), and the
/// cost is priced from the counts; a GET of a stored interaction shows usage but is not billed
/// again.
#[tokio::test]
async fn interactions_usage_feeds_quota_and_cost() {
    use tower::Layer;
    use tower_gemini::cost::{CostLayer, CostReport};
    let mock = mock().await;
    let limits = ModelLimits {
        tpm: Some(1_000_000),
        ..Default::default()
    };
    let pool = pool(|b| b.model_limits(MODEL, limits));
    let cost = CostLayer::new();
    let gemini = cost.layer(stack(&pool).layer(common::client()));
    let mut previous: Option<String> = None;
    let mut reported = Vec::new();
    for t in 0..3 {
        let long = "a growing conversation ".repeat(40);
        let body = turn(&format!("{long} {t}"), previous.as_deref(), t == 1);
        let response = gemini.clone().oneshot(create(&mock, body)).await.unwrap();
        let report = response.extensions().get::<CostReport>().cloned().unwrap();
        let answer = text(response).await;
        previous = Some(id_of(&answer));
        reported.push(report.get().cloned().expect("priced once the body ended"));
    }
    let served = mock.stats().served(MODEL);
    let billed_prompt: u64 = reported.iter().map(|c| c.prompt_tokens).sum();
    let billed_output: u64 = reported.iter().map(|c| c.output_tokens).sum();
    assert_eq!(billed_prompt, served.prompt_tokens, "{reported:?}");
    assert_eq!(billed_output, served.output_tokens, "{reported:?}");
    // Later turns carry the conversation: more prompt than their body shows.
    assert!(
        reported[2].prompt_tokens > reported[0].prompt_tokens * 2,
        "{reported:?}"
    );
    assert!(reported.iter().all(|c| c.nano_usd > 0), "{reported:?}");
    // The ledger of the project that served them holds the real prompt tokens.
    let project = pool
        .owner_of(&format!("interactions/{}", previous.clone().unwrap()))
        .unwrap()
        .project_name()
        .to_owned();
    let metered: u64 = pool
        .quota_snapshot()
        .iter()
        .filter(|q| q.project == project && q.model == MODEL)
        .filter_map(|q| q.usage.tpm.map(|u| u.used))
        .sum();
    assert_eq!(metered, served.prompt_tokens);
    // A GET shows the usage of the call that made it, and is not billed.
    let before = cost.spend().today_usd(&tower_gemini::cost::Scope::Pool);
    let url = format!("{}/v1beta/interactions/{}", mock.url(), previous.unwrap());
    let got = gemini
        .clone()
        .oneshot(request(Method::GET, url, None))
        .await
        .unwrap();
    assert!(text(got).await.contains("total_input_tokens"));
    assert_eq!(
        cost.spend().today_usd(&tower_gemini::cost::Scope::Pool),
        before
    );
}

/// A tenant's create whose reference cannot be read (a `store` sent as a string, the id under
/// both spellings, an implausible id) is refused with nothing sent: it cannot be shown to
/// continue the tenant's own conversation. The other spelling alone is read and pinned.
#[tokio::test]
async fn a_tenants_unclear_reference_is_refused_and_the_other_spelling_is_read() {
    let mock = mock().await;
    let pool = pool(|b| b);
    let gemini = gemini(&pool, None);
    let made = gemini
        .clone()
        .oneshot(as_tenant(create(&mock, turn("mine", None, false)), "alice"))
        .await
        .unwrap();
    let home = served_by(&made);
    let id = id_of(&text(made).await);
    let sent = mock.stats().total_requests();
    let unclear = [
        json!({ "model": MODEL, "input": "x", "previous_interaction_id": id, "store": "false" }),
        json!({ "model": MODEL, "input": "x", "previous_interaction_id": "v1_other", "previousInteractionId": id }),
        json!({ "model": MODEL, "input": "x", "previous_interaction_id": "../files/abc" }),
    ];
    for body in unclear {
        let error = gemini
            .clone()
            .oneshot(as_tenant(create(&mock, body.clone()), "mallory"))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::BadRequest, "{body}: {error}");
    }
    assert_eq!(mock.stats().total_requests(), sent);
    // Mallory's camelCase reference to Alice's interaction is read, and refused as hers.
    let camel = json!({ "model": MODEL, "input": "x", "previousInteractionId": id });
    let error = gemini
        .clone()
        .oneshot(as_tenant(create(&mock, camel.clone()), "mallory"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound);
    // Alice's goes home.
    let next = gemini
        .clone()
        .oneshot(as_tenant(create(&mock, camel), "alice"))
        .await
        .unwrap();
    assert_eq!(served_by(&next), home);
}

/// A continuation sends the conversation so far as prompt, which its body does not show: the
/// pool counts it (learned from the last answer's usage) against the project's tokens per
/// minute, and refuses locally the turn Google would refuse with a 429.
#[tokio::test]
async fn a_continuation_counts_its_stored_conversation_against_the_quota() {
    let limits = ModelLimits {
        tpm: Some(500),
        ..Default::default()
    };
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key(KEYS[0].1).limits(MODEL, limits))
        .start()
        .await
        .unwrap();
    let pool = KeyPool::builder()
        .key_with(KeySpec::new(KEYS[0].1).project("proj-a"))
        .model_limits(MODEL, limits)
        .build()
        .unwrap();
    let gemini = gemini(&pool, None);
    let input = "x".repeat(400); // 100 tokens
    let mut previous: Option<String> = None;
    let mut refused = None;
    for t in 0..4 {
        let body = turn(&input, previous.as_deref(), false);
        match gemini.clone().oneshot(create(&mock, body)).await {
            Ok(response) => {
                assert_eq!(response.status(), StatusCode::OK, "turn {t}");
                previous = Some(id_of(&text(response).await));
            }
            Err(error) => {
                refused = Some((t, error));
                break;
            }
        }
    }
    let (turn_refused, error) = refused.expect("the conversation outgrows the minute's tokens");
    assert_eq!(error.kind(), ErrorKind::QuotaExhausted, "{error}");
    // Turns 1 and 2 fit (100 + 225 tokens); the third would bring 350 more.
    assert_eq!(turn_refused, 2, "{error}");
    assert_eq!(mock.stats().responses_with_status(429), 0);
}
