//! The mock answers like Google: shapes, quotas, faults, determinism.

mod common;

use bytes::Bytes;
use common::{chat, client, generate, stream, text, with_key};
use http::{Request, StatusCode};
use http_body_util::Full;
use tower_gemini::classify::{Class, Classification};
use tower_gemini::mock::{Fault, MockGemini};
use tower_gemini::pool::ModelLimits;

const FLASH: &str = "gemini-2.0-flash";

async fn send(request: Request<Full<Bytes>>) -> (StatusCode, String) {
    let response = client().request(request).await.unwrap();
    let status = response.status();
    (status, text(response).await)
}

#[tokio::test]
async fn endpoints_answer_in_googles_shapes() {
    let mock = MockGemini::builder()
        .project("p", |p| p.key("test-key-0001"))
        .start()
        .await
        .unwrap();
    let key = "test-key-0001";

    let (status, body) = send(with_key(
        generate(&mock, FLASH, "four score and seven"),
        key,
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["usageMetadata"]["promptTokenCount"], 5);
    assert_eq!(json["candidates"][0]["finishReason"], "STOP");
    assert_eq!(json["modelVersion"], FLASH);

    let count = Request::post(mock.model_url(FLASH, "countTokens"))
        .body(Full::new(Bytes::from(common::generate_body("12345678"))))
        .unwrap();
    let (status, body) = send(with_key(count, key)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["totalTokens"],
        2
    );

    let list = Request::get(format!("{}/v1beta/models", mock.url()))
        .body(Full::default())
        .unwrap();
    let (status, body) = send(with_key(list, key)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("models/gemini-2.5-pro"));

    // SSE: running usage, last chunk authoritative.
    let (_, body) = send(with_key(stream(&mock, FLASH, "abcdefgh"), key)).await;
    let chunks: Vec<serde_json::Value> = body
        .split("\r\n\r\n")
        .filter_map(|c| c.strip_prefix("data: "))
        .map(|c| serde_json::from_str(c).unwrap())
        .collect();
    assert_eq!(chunks.len(), 3);
    let outs: Vec<u64> = chunks
        .iter()
        .map(|c| c["usageMetadata"]["candidatesTokenCount"].as_u64().unwrap())
        .collect();
    assert!(outs.windows(2).all(|w| w[0] < w[1]), "{outs:?}");
    assert!(chunks[2]["candidates"][0]["finishReason"] == "STOP");

    // Without alt=sse the stream is one JSON array.
    let mut plain = stream(&mock, FLASH, "abcdefgh");
    *plain.uri_mut() = mock
        .model_url(FLASH, "streamGenerateContent")
        .parse()
        .unwrap();
    let (_, body) = send(with_key(plain, key)).await;
    let array: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(array.len(), 3);

    // OpenAI-compatible, Bearer auth.
    let mut request = chat(&mock, FLASH, "hi");
    request
        .headers_mut()
        .insert("authorization", "Bearer test-key-0001".parse().unwrap());
    let (status, body) = send(request).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("chat.completion"));
}

#[tokio::test]
async fn errors_answer_in_googles_shapes() {
    let mock = MockGemini::builder()
        .project("p", |p| {
            p.key("test-key-0001")
                .leaked_key("test-key-0002")
                .limits(
                    FLASH,
                    ModelLimits {
                        rpm: Some(1),
                        tpm: Some(10),
                        ..Default::default()
                    },
                )
                .limits(
                    "gemini-2.5-pro",
                    ModelLimits {
                        rpm: Some(0),
                        ..Default::default()
                    },
                )
        })
        .project("broke", |p| p.key("test-key-0003").billing_exhausted())
        .start()
        .await
        .unwrap();
    let classify =
        |status: StatusCode, body: &str| Classification::from_response(status, body.as_bytes());

    let (status, body) = send(with_key(generate(&mock, FLASH, "x"), "test-key-9999")).await;
    assert_eq!(classify(status, &body).class(), Class::KeyInvalid);
    let (status, body) = send(with_key(generate(&mock, FLASH, "x"), "test-key-0002")).await;
    assert_eq!(classify(status, &body).class(), Class::KeyForbidden);
    let (status, body) = send(with_key(generate(&mock, FLASH, "x"), "test-key-0003")).await;
    assert_eq!(classify(status, &body).class(), Class::BillingExhausted);
    let (status, body) = send(with_key(generate(&mock, "gemini-9", "x"), "test-key-0001")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(classify(status, &body).class(), Class::Caller);
    let (status, body) = send(with_key(
        generate(&mock, "gemini-2.5-pro", "x"),
        "test-key-0001",
    ))
    .await;
    assert_eq!(classify(status, &body).class(), Class::ModelNotOnTier);
    // TPM: 60 characters = 15 tokens > 10.
    let (status, body) = send(with_key(
        generate(&mock, FLASH, &"y".repeat(60)),
        "test-key-0001",
    ))
    .await;
    let verdict = classify(status, &body);
    assert_eq!(verdict.class(), Class::QuotaMinute);
    assert!(verdict.is_token_quota());
    assert_eq!(verdict.quota_value(), Some(10));
    // RPM: the first passes, the second is refused with RetryInfo.
    let (status, _) = send(with_key(generate(&mock, FLASH, "x"), "test-key-0001")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = send(with_key(generate(&mock, FLASH, "x"), "test-key-0001")).await;
    let verdict = classify(status, &body);
    assert_eq!(verdict.class(), Class::QuotaMinute);
    assert_eq!(
        verdict.quota_id(),
        Some("GenerateRequestsPerMinutePerProjectPerModel-FreeTier")
    );
    assert_eq!(verdict.model(), Some(FLASH));
    assert!(verdict.retry_after().unwrap().as_secs() >= 59);
    assert!(body.contains("type.googleapis.com/google.rpc.Help"));
    let (status, body) = send(generate(&mock, FLASH, "x")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    assert_eq!(mock.stats().requests_for("test-key-0001"), 5);
    assert_eq!(mock.stats().rate_limited_for("test-key-0001"), 3);
    assert_eq!(mock.stats().responses_with_status(429), 4);
    assert_eq!(mock.stats().total_requests(), 9);
}

async fn fault_pattern(seed: u64) -> Vec<u16> {
    let mock = MockGemini::builder()
        .project("p", |p| p.key("test-key-0001"))
        .fault(Fault::overloaded(0.5))
        .seed(seed)
        .start()
        .await
        .unwrap();
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let (status, _) = send(with_key(generate(&mock, FLASH, "x"), "test-key-0001")).await;
        statuses.push(status.as_u16());
    }
    statuses
}

#[tokio::test]
async fn faults_are_seeded_and_deterministic() {
    let a = fault_pattern(7).await;
    assert_eq!(a, fault_pattern(7).await);
    assert_ne!(a, fault_pattern(8).await);
    let overloaded = a.iter().filter(|&&s| s == 503).count();
    assert!((8..=32).contains(&overloaded), "{overloaded} of 40");
}

#[tokio::test(start_paused = true)]
async fn latency_fault_delays_the_answer() {
    let mock = MockGemini::builder()
        .project("p", |p| p.key("test-key-0001"))
        .fault(Fault::latency(std::time::Duration::from_secs(3)))
        .start()
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    let (status, _) = send(with_key(generate(&mock, FLASH, "x"), "test-key-0001")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(start.elapsed() >= std::time::Duration::from_secs(3));
}
