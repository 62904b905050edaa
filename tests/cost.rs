//! `CostLayer` over real HTTP to the mock: the cost of streamed and whole answers, native and
//! OpenAI-compatible, comes from the usage the mock reported (its own counts); spending is
//! counted per pool, project and caller; budget alerts fire once per crossing and again after
//! midnight Pacific; a spent budget refuses without sending anything.

mod common;

use std::sync::{Arc, Mutex};

use common::{chat, client, generate, stream, text};
use http::StatusCode;
use tower::{Layer, ServiceExt};
use tower_gemini::clock::ManualClock;
use tower_gemini::cost::{Account, Budget, BudgetAlert, CostLayer, CostReport, Prices, Scope};
use tower_gemini::fallback::FallbackLayer;
use tower_gemini::mock::{MockGemini, MockServer};
use tower_gemini::pool::ModelLimits;
use tower_gemini::{ErrorKind, KeyPool, KeySpec, stack};

const FLASH: &str = "gemini-2.0-flash";
const FLASH_25: &str = "gemini-2.5-flash";
const PRO: &str = "gemini-2.5-pro";
const KEYS: [&str; 2] = ["test-key-cost-0001", "test-key-cost-0002"];

async fn two_projects() -> MockServer {
    MockGemini::builder()
        .project("proj-a", |p| p.key(KEYS[0]))
        .project("proj-b", |p| p.key(KEYS[1]))
        .start()
        .await
        .unwrap()
}

/// Read the whole answer; its cost report (which must be there once the body ended).
async fn cost_of<B>(response: http::Response<B>) -> tower_gemini::cost::CallCost
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    assert_eq!(response.status(), StatusCode::OK);
    let report = response.extensions().get::<CostReport>().cloned().unwrap();
    assert!(report.get().is_none(), "not before the body ended");
    let _ = text(response).await;
    report
        .get()
        .cloned()
        .expect("priced at the end of the body")
}

/// A streamed answer without `alt=sse`: a JSON array in pieces.
fn stream_array(
    mock: &MockServer,
    model: &str,
    prompt: &str,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut request = stream(mock, model, prompt);
    let uri = request.uri().to_string().replace("?alt=sse", "");
    *request.uri_mut() = uri.parse().unwrap();
    request
}

fn openai_stream(
    mock: &MockServer,
    model: &str,
    prompt: &str,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let body = serde_json::json!({
        "model": model,
        "stream": true,
        "messages": [{ "role": "user", "content": prompt }]
    });
    http::Request::post(format!("{}/v1beta/openai/chat/completions", mock.url()))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap()
}

#[tokio::test]
async fn every_answer_costs_what_the_mock_counted() {
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key(KEYS[0]))
        .project("proj-b", |p| p.key(KEYS[1]))
        .stream_chunks(4)
        .start()
        .await
        .unwrap();
    let pool = KeyPool::builder()
        .key_with(KeySpec::new(KEYS[0]).project("proj-a"))
        .key_with(KeySpec::new(KEYS[1]).project("proj-b"))
        .build()
        .unwrap();
    let cost = CostLayer::new();
    let spend = cost.spend().clone();
    let gemini = cost.layer(stack(&pool).layer(client()));

    let mut total = 0u64;
    let mut by_model: std::collections::HashMap<String, (u64, u64, u64)> = Default::default();
    for (i, model) in [FLASH, FLASH_25, PRO]
        .into_iter()
        .cycle()
        .take(15)
        .enumerate()
    {
        let prompt = "a prompt of some words ".repeat(i + 1);
        let mut request = match i % 5 {
            0 => generate(&mock, model, &prompt),
            1 => stream(&mock, model, &prompt),
            2 => stream_array(&mock, model, &prompt),
            3 => chat(&mock, model, &prompt),
            _ => openai_stream(&mock, model, &prompt),
        };
        request
            .extensions_mut()
            .insert(Account::new(if i % 2 == 0 { "alice" } else { "bob" }));
        let response = gemini.clone().oneshot(request).await.unwrap();
        let call = cost_of(response).await;
        assert_eq!(call.model.as_ref().unwrap().as_str(), model);
        assert!(call.priced);
        assert!(
            call.project
                .as_deref()
                .is_some_and(|p| p.starts_with("proj-"))
        );
        let entry = by_model.entry(model.to_owned()).or_default();
        entry.0 += call.prompt_tokens;
        entry.1 += call.output_tokens;
        entry.2 += call.nano_usd;
        total += call.nano_usd;
    }
    let prices = Prices::google();
    for model in [FLASH, FLASH_25, PRO] {
        let served = mock.stats().served(model);
        let (prompt, output, nanos) = by_model[model];
        assert_eq!(served.answers, 5, "{model}");
        assert_eq!(
            (prompt, output),
            (served.prompt_tokens, served.output_tokens),
            "{model}"
        );
        // Prices are whole nano-dollars per token, so per-call costs add up exactly.
        let price = prices.get(model).unwrap();
        assert_eq!(
            nanos,
            price.nano_usd(served.prompt_tokens, 0, served.output_tokens),
            "{model}"
        );
    }
    // The thinking models' thoughts were billed as output.
    assert!(mock.stats().served(PRO).output_tokens > 0);

    let today = spend.today_by_scope();
    let usd = |scope: &Scope| spend.today_usd(scope);
    assert!((usd(&Scope::Pool) - total as f64 / 1e9).abs() < 1e-12);
    let projects = usd(&Scope::Project("proj-a".into())) + usd(&Scope::Project("proj-b".into()));
    assert!((projects - usd(&Scope::Pool)).abs() < 1e-12);
    let accounts = usd(&Scope::Account("alice".into())) + usd(&Scope::Account("bob".into()));
    assert!((accounts - usd(&Scope::Pool)).abs() < 1e-12);
    assert_eq!(today[0].scope, Scope::Pool);
    assert_eq!(today[0].calls, 15);
}

#[tokio::test]
async fn errors_cost_nothing_and_a_fallback_is_priced_as_the_model_that_served() {
    let mock = two_projects().await;
    let pool = KeyPool::builder()
        .keys(KEYS)
        .model_limits(
            PRO,
            ModelLimits {
                rpd: Some(0),
                ..Default::default()
            },
        )
        .build()
        .unwrap();
    let cost = CostLayer::new();
    let fallback = FallbackLayer::new().chain(PRO, [FLASH_25]).unwrap();
    let gemini = cost.layer(stack(&pool).fallback(fallback).layer(client()));
    let call = cost_of(
        gemini
            .clone()
            .oneshot(generate(&mock, PRO, "hi"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(call.model.unwrap().as_str(), FLASH_25);
    assert_eq!(
        mock.stats().served(FLASH_25).output_tokens,
        call.output_tokens
    );

    // A caller error: Google's 400 has no usage; nothing is counted.
    let bad = http::Request::post(mock.model_url(FLASH, "generateContent"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"{not json",
        )))
        .unwrap();
    let before = cost.spend().today_usd(&Scope::Pool);
    let response = gemini.clone().oneshot(bad).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.extensions().get::<CostReport>().is_none());
    let _ = text(response).await;
    assert_eq!(cost.spend().today_usd(&Scope::Pool), before);
}

#[tokio::test]
async fn budget_alerts_fire_once_per_crossing_refuse_when_spent_and_reset_at_pacific_midnight() {
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key(KEYS[0]))
        .start()
        .await
        .unwrap();
    let pool = KeyPool::from_keys([KEYS[0]]).unwrap();
    // What one call costs (the same prompt, model and project cost the same every time).
    let probe = CostLayer::new().layer(stack(&pool).layer(client()));
    let one = cost_of(
        probe
            .oneshot(generate(&mock, FLASH, "hello"))
            .await
            .unwrap(),
    )
    .await;
    assert!(one.nano_usd > 0);

    // 23:00 on 2026-11-22 in Los Angeles (PST, UTC-8).
    let clock = ManualClock::at("2026-11-23T07:00:00Z".parse().unwrap());
    let alerts: Arc<Mutex<Vec<BudgetAlert>>> = Arc::default();
    let sink = alerts.clone();
    let budget = Budget::new()
        .daily_usd(5.0 * one.usd())
        .unwrap()
        .refuse_when_spent(true)
        .clock(clock.clone())
        .on_alert(move |alert| sink.lock().unwrap().push(alert.clone()));
    let cost = CostLayer::new().budget(budget);
    let gemini = cost.layer(stack(&pool).layer(client()));
    let thresholds =
        || -> Vec<f64> { alerts.lock().unwrap().iter().map(|a| a.threshold).collect() };

    for calls in 1..=5 {
        cost_of(
            gemini
                .clone()
                .oneshot(generate(&mock, FLASH, "hello"))
                .await
                .unwrap(),
        )
        .await;
        match calls {
            1..=3 => assert!(thresholds().is_empty(), "after {calls} calls"),
            4 => assert_eq!(thresholds(), [0.8]),
            _ => assert_eq!(thresholds(), [0.8, 1.0]),
        }
    }
    // Spent: refused here, with the time to midnight Pacific, and nothing sent.
    let sent = mock.stats().total_requests();
    let err = gemini
        .clone()
        .oneshot(generate(&mock, FLASH, "hello"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BudgetSpent);
    assert_eq!(
        err.retry_after(),
        Some(std::time::Duration::from_secs(3600))
    );
    assert_eq!(
        err.to_response::<String>().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(mock.stats().total_requests(), sent);
    assert_eq!(thresholds().len(), 2, "no alert again the same day");

    // Midnight Pacific: a new day, a new budget, the alerts fire again at their crossings.
    clock.set("2026-11-23T08:00:00Z".parse().unwrap());
    for _ in 0..4 {
        cost_of(
            gemini
                .clone()
                .oneshot(generate(&mock, FLASH, "hello"))
                .await
                .unwrap(),
        )
        .await;
    }
    assert_eq!(thresholds(), [0.8, 1.0, 0.8]);
    let days: Vec<u64> = alerts
        .lock()
        .unwrap()
        .iter()
        .map(|a| a.day_start_ms)
        .collect();
    assert!(days[2] > days[1]);
}
