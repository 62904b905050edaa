//! One test per row of the class table, with bodies shaped like Google's.

use super::*;

fn classify(code: u16, body: &str) -> Classification {
    Classification::from_response(StatusCode::from_u16(code).unwrap(), body.as_bytes())
}

const KEY_INVALID: &str = r#"{
  "error": {
    "code": 400,
    "message": "API key not valid. Please pass a valid API key.",
    "status": "INVALID_ARGUMENT",
    "details": [
      {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
        "metadata": { "service": "generativelanguage.googleapis.com" }
      },
      {
        "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
        "locale": "en-US",
        "message": "API key not valid. Please pass a valid API key."
      }
    ]
  }
}"#;

const PER_MINUTE: &str = r#"{
  "error": {
    "code": 429,
    "message": "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 15, model: gemini-2.0-flash\nPlease retry in 47.434392449s.",
    "status": "RESOURCE_EXHAUSTED",
    "details": [
      {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [
          {
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            "quotaDimensions": { "location": "global", "model": "gemini-2.0-flash" },
            "quotaValue": "15"
          }
        ]
      },
      {
        "@type": "type.googleapis.com/google.rpc.Help",
        "links": [ { "description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits" } ]
      },
      { "@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "47.434392449s" }
    ]
  }
}"#;

const DAILY_AND_MINUTE: &str = r#"{"error":{"code":429,"message":"You exceeded your current quota, please check your plan and billing details.","status":"RESOURCE_EXHAUSTED","details":[
 {"@type":"type.googleapis.com/google.rpc.Help","links":[{"description":"Learn more about Gemini API quotas","url":"https://ai.google.dev/gemini-api/docs/rate-limits"}]},
 {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[
   {"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier","quotaDimensions":{"location":"global","model":"gemini-2.0-flash"},"quotaValue":"15"},
   {"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier","quotaDimensions":{"location":"global","model":"gemini-2.0-flash"},"quotaValue":"200"}]},
 {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"47s"}]}}"#;

#[test]
fn success_reads_no_body() {
    let c = classify(200, "not json at all");
    assert_eq!(c.class(), Class::Success);
    assert_eq!(c.message(), None);
    assert_eq!(c.status(), Some(StatusCode::OK));
}

#[test]
fn key_invalid() {
    let c = classify(400, KEY_INVALID);
    assert_eq!(c.class(), Class::KeyInvalid);
    assert_eq!(c.reason(), Some("API_KEY_INVALID"));
    assert_eq!(
        c.message(),
        Some("API key not valid. Please pass a valid API key.")
    );
}

#[test]
fn key_not_found_and_expired_by_reason_only() {
    let not_found = r#"{"error":{"code":400,"message":"API Key not found. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
    assert_eq!(classify(400, not_found).class(), Class::KeyInvalid);
    // The same text without Google's ErrorInfo proves nothing about the key.
    let bare = r#"{"error":{"code":400,"message":"API Key not found. Please pass a valid API key.","status":"INVALID_ARGUMENT"}}"#;
    assert_eq!(classify(400, bare).class(), Class::Caller);
    let expired = r#"{"error":{"code":400,"message":"API key expired. Please renew the API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
    assert_eq!(classify(400, expired).class(), Class::KeyInvalid);
}

#[test]
fn key_invalid_wrapped_in_array_openai_endpoint() {
    let body = format!("[{KEY_INVALID}]");
    assert_eq!(classify(400, &body).class(), Class::KeyInvalid);
}

#[test]
fn key_leaked() {
    let body = r#"{"error":{"code":403,"message":"Your API key was reported as leaked. Please use another API key.","status":"PERMISSION_DENIED"}}"#;
    assert_eq!(classify(403, body).class(), Class::KeyForbidden);
}

#[test]
fn key_forbidden_by_reason() {
    for reason in [
        "API_KEY_SERVICE_BLOCKED",
        "CONSUMER_SUSPENDED",
        "SERVICE_DISABLED",
    ] {
        let body = format!(
            r#"{{"error":{{"code":403,"message":"Permission denied.","status":"PERMISSION_DENIED","details":[{{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"{reason}","domain":"googleapis.com"}}]}}}}"#
        );
        let c = classify(403, &body);
        assert_eq!(c.class(), Class::KeyForbidden, "{reason}");
        assert_eq!(c.reason(), Some(reason));
    }
}

#[test]
fn other_403_is_the_callers() {
    let body = r#"{"error":{"code":403,"message":"You do not have permission to access the File abc or it may not exist.","status":"PERMISSION_DENIED"}}"#;
    assert_eq!(classify(403, body).class(), Class::Caller);
}

#[test]
fn billing_exhausted_402_and_429() {
    let message = "Your prepayment credits are depleted. Please go to AI Studio at https://ai.studio/projects to manage your project and billing.";
    for code in [402, 429] {
        let body = format!(
            r#"{{"error":{{"code":{code},"message":"{message}","status":"RESOURCE_EXHAUSTED"}}}}"#
        );
        assert_eq!(classify(code, &body).class(), Class::BillingExhausted);
    }
}

#[test]
fn quota_minute_with_fractional_retry_delay() {
    let c = classify(429, PER_MINUTE);
    assert_eq!(c.class(), Class::QuotaMinute);
    assert_eq!(c.retry_after(), Some(Duration::new(47, 434_392_449)));
    assert_eq!(c.model(), Some("gemini-2.0-flash"));
    assert_eq!(
        c.quota_id(),
        Some("GenerateRequestsPerMinutePerProjectPerModel-FreeTier")
    );
    assert_eq!(c.quota_value(), Some(15));
    assert!(!c.is_token_quota());
}

#[test]
fn quota_minute_tokens() {
    let body = PER_MINUTE
        .replace(
            "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            "GenerateContentInputTokensPerModelPerMinute-FreeTier",
        )
        .replace(
            "generate_content_free_tier_requests",
            "generate_content_free_tier_input_token_count",
        )
        .replace("\"15\"", "\"250000\"")
        .replace("limit: 15", "limit: 250000");
    let c = classify(429, &body);
    assert_eq!(c.class(), Class::QuotaMinute);
    assert!(c.is_token_quota());
    assert_eq!(c.quota_value(), Some(250_000));
}

#[test]
fn daily_violation_wins_over_per_minute() {
    let c = classify(429, DAILY_AND_MINUTE);
    assert_eq!(c.class(), Class::QuotaDaily);
    assert_eq!(
        c.quota_id(),
        Some("GenerateRequestsPerDayPerProjectPerModel-FreeTier")
    );
    assert_eq!(c.quota_value(), Some(200));
    assert_eq!(c.retry_after(), Some(Duration::from_secs(47)));
}

#[test]
fn limit_zero_is_model_not_on_tier() {
    let by_message = r#"{"error":{"code":429,"message":"You exceeded your current quota.\n* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 0, model: gemini-2.5-pro\nPlease retry in 25.465784708s.","status":"RESOURCE_EXHAUSTED"}}"#;
    let c = classify(429, by_message);
    assert_eq!(c.class(), Class::ModelNotOnTier);
    assert_eq!(c.retry_after(), Some(Duration::new(25, 465_784_708)));
    let by_value = PER_MINUTE
        .replace("\"15\"", "\"0\"")
        .replace("limit: 15", "limit: 0");
    assert_eq!(classify(429, &by_value).class(), Class::ModelNotOnTier);
}

#[test]
fn bare_429_is_rate_limited() {
    let body = r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#;
    let c = classify(429, body);
    assert_eq!(c.class(), Class::RateLimited);
    assert_eq!(c.retry_after(), None);
    assert_eq!(classify(429, "").class(), Class::RateLimited);
}

#[test]
fn upstream_statuses() {
    let overloaded = r#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#;
    let high_demand = r#"{"error":{"code":503,"message":"This model is currently experiencing high demand. Spikes in demand are usually temporary. Please try again later.","status":"UNAVAILABLE"}}"#;
    assert_eq!(classify(503, overloaded).class(), Class::Upstream);
    assert_eq!(classify(503, high_demand).class(), Class::Upstream);
    for code in [408, 500, 502, 504] {
        assert_eq!(classify(code, "").class(), Class::Upstream, "{code}");
    }
}

#[test]
fn caller_errors() {
    let not_found = r#"{"error":{"code":404,"message":"models/gemini-nope is not found for API version v1beta, or is not supported for generateContent. Call ListModels to see the list of available models and their supported methods.","status":"NOT_FOUND"}}"#;
    assert_eq!(classify(404, not_found).class(), Class::Caller);
    let bad = r#"{"error":{"code":400,"message":"Invalid JSON payload received. Unknown name \"contnts\": Cannot find field.","status":"INVALID_ARGUMENT"}}"#;
    let c = classify(400, bad);
    assert_eq!(c.class(), Class::Caller);
    assert_eq!(
        c.message(),
        Some("Invalid JSON payload received. Unknown name \"contnts\": Cannot find field.")
    );
}

#[test]
fn transport_has_no_status() {
    let c = Classification::transport();
    assert_eq!(c.class(), Class::Transport);
    assert_eq!(c.status(), None);
}

#[test]
fn non_json_falls_back_on_status() {
    assert_eq!(
        classify(400, "<html>Bad Request</html>").class(),
        Class::Caller
    );
    assert_eq!(
        classify(502, "<html>Bad Gateway</html>").class(),
        Class::Upstream
    );
    // A 401 is the caller's (an `access_token` it added, say) unless Google names the key.
    assert_eq!(classify(401, "nope").class(), Class::Caller);
}

#[test]
fn truncated_bodies_still_read_the_markers() {
    let cut = &DAILY_AND_MINUTE[..DAILY_AND_MINUTE.len() - 4];
    let c = classify(429, cut);
    assert_eq!(c.class(), Class::QuotaDaily);
    assert_eq!(c.retry_after(), Some(Duration::from_secs(47)));
    let cut = &PER_MINUTE[..PER_MINUTE.len() - 40];
    assert_eq!(classify(429, cut).class(), Class::QuotaMinute);
    // A cut body may be a caller's echo: it never disables a key.
    let cut = &KEY_INVALID[..200];
    assert_eq!(classify(400, cut).class(), Class::Caller);
}

#[test]
fn hostile_bodies_never_panic() {
    let long = "[".repeat(10_000);
    let inputs: [&[u8]; 9] = [
        b"",
        b"[]",
        b"[1]",
        b"{\"error\":null}",
        b"{\"error\":{\"details\":\"x\"}}",
        b"{\"error\":{\"details\":[{\"violations\":[{\"quotaDimensions\":\"[MaxDepth]\"}]}]}}",
        b"\xff\xfe\x00garbage",
        b"{\"error\":{\"message\":\"\\ud800\"}}",
        long.as_bytes(),
    ];
    for body in inputs {
        for code in [400u16, 403, 429, 500] {
            let _ = Classification::from_response(StatusCode::from_u16(code).unwrap(), body);
        }
    }
    // A string `quotaDimensions` (seen in logs) is skipped, the rest still read.
    let odd = r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier","quotaDimensions":"[MaxDepth]","quotaValue":"20"}]}]}}"#;
    let c = classify(429, odd);
    assert_eq!(c.class(), Class::QuotaDaily);
    assert_eq!(c.quota_value(), Some(20));
    assert_eq!(c.model(), None);
}

#[test]
fn absurd_delays_do_not_overflow() {
    let huge = r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","message":"Please retry in 99999999999999999999999999999ms.","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel"}]}]}}"#;
    let c = classify(429, huge);
    assert_eq!(c.class(), Class::QuotaMinute);
    assert_eq!(
        c.retry_after(),
        Some(MAX_WIRE_DELAY),
        "capped where it is parsed"
    );
    let max = r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"18446744073709551615.999999999s"}]}}"#;
    let c = classify(429, max);
    assert_eq!(c.retry_after(), Some(MAX_WIRE_DELAY));
    for status in [503, 429] {
        let bare = r#"{"error":{"code":503,"status":"UNAVAILABLE","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"18446744073709551615s"}]}}"#;
        assert_eq!(classify(status, bare).retry_after(), Some(MAX_WIRE_DELAY));
    }
    // The pool takes it without overflowing and caps the cool-down.
    let pool = crate::KeyPool::from_keys(["test-key-0001"]).unwrap();
    pool.select(Some("m")).unwrap().report(&c, Duration::ZERO);
    let wait = pool.select(Some("m")).unwrap_err().retry_after().unwrap();
    assert!(wait <= crate::pool::MAX_MINUTE_COOLDOWN, "{wait:?}");
}

#[test]
fn redaction_replaces_the_secret_in_the_message() {
    let body = r#"{"error":{"code":403,"message":"Permission denied: Consumer 'api_key:test-key-0001' has been suspended.","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"CONSUMER_SUSPENDED"}]}}"#;
    let mut c = classify(403, body);
    assert_eq!(c.class(), Class::KeyForbidden);
    c.redact("test-key-0001", "…0001");
    assert!(!format!("{c:?} {c}").contains("test-key-0001"));
    assert!(c.message().unwrap().contains("…0001"));
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn on_arbitrary_bytes(status in 100u16..600, body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Classification::from_response(StatusCode::from_u16(status).unwrap(), &body);
        }

        #[test]
        fn on_cut_and_spliced_real_bodies(cut in 0usize..2000, splice in ".{0,40}") {
            for body in [PER_MINUTE, DAILY_AND_MINUTE, KEY_INVALID] {
                let at = cut.min(body.len());
                let at = (0..=at).rev().find(|&i| body.is_char_boundary(i)).unwrap_or(0);
                let mangled = format!("{}{}{}", &body[..at], splice, &body[at..]);
                let c = Classification::from_response(StatusCode::TOO_MANY_REQUESTS, mangled.as_bytes());
                let _ = (c.to_string(), format!("{c:?}"));
            }
        }
    }
}

/// Google's 400 for an unknown field echoes the field's name: a caller who names a field
/// "API key not valid" (or any other marker) must not disable the key that carried it.
#[test]
fn text_a_caller_can_put_in_a_message_changes_no_key() {
    for name in [
        "API key not valid",
        "API_KEY_INVALID",
        "API Key not found",
        "API key expired",
        "reported as leaked",
        "has been suspended",
        "are blocked",
        "it is disabled",
        "API_KEY_SERVICE_BLOCKED",
        "Your prepayment credits are depleted",
        "credits are depleted",
        "limit: 0",
    ] {
        let message =
            format!("Invalid JSON payload received. Unknown name \"{name}\": Cannot find field.");
        let body = serde_json::json!({"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"description": message}]}]}})
        .to_string();
        for code in [400, 401, 403, 404] {
            let c = classify(code, &body);
            assert_eq!(c.class(), Class::Caller, "{code} {name}");
            // Wrapped as the OpenAI-compatible endpoint does, and cut short.
            let wrapped = format!("[{body}]");
            assert_eq!(
                classify(code, &wrapped).class(),
                Class::Caller,
                "{code} {name} wrapped"
            );
            let cut = &body[..body.len() - 3];
            assert_eq!(
                classify(code, cut).class(),
                Class::Caller,
                "{code} {name} cut"
            );
        }
        // A 403 for a file whose name is the marker.
        let file = serde_json::json!({"error": {"code": 403, "message":
            format!("You do not have permission to access the File {name} or it may not exist."),
            "status": "PERMISSION_DENIED"}})
        .to_string();
        assert_eq!(classify(403, &file).class(), Class::Caller, "{name}");
    }
}

#[test]
fn a_reason_about_another_service_blames_no_key() {
    let body = r#"{"error":{"code":403,"message":"Cloud Storage API has not been used in project 1 before or it is disabled.","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"SERVICE_DISABLED","domain":"googleapis.com","metadata":{"service":"storage.googleapis.com"}}]}}"#;
    assert_eq!(classify(403, body).class(), Class::Caller);
    let ours = body.replace(
        "storage.googleapis.com",
        "generativelanguage.googleapis.com",
    );
    assert_eq!(classify(403, &ours).class(), Class::KeyForbidden);
}

#[test]
fn a_401_for_an_access_token_blames_no_key() {
    let body = r#"{"error":{"code":401,"message":"Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.","status":"UNAUTHENTICATED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"ACCESS_TOKEN_TYPE_UNSUPPORTED"}]}}"#;
    assert_eq!(classify(401, body).class(), Class::Caller);
}

/// The Interactions API's own error shape (`code` a string, no `status`, no details): judged
/// by the HTTP status, so a stored interaction another project does not know (404
/// `not_found`) is the caller's, never a key's; its 429 is a bare rate limit; its 5xx the
/// upstream's. A message naming a key problem changes nothing.
#[test]
fn the_interactions_error_shape_is_judged_by_its_status() {
    let not_found = r#"{"error":{"code":"not_found","message":"Interaction v1_abc not found."}}"#;
    assert_eq!(classify(404, not_found).class(), Class::Caller);
    let denied = r#"{"error":{"code":"permission_denied","message":"API key not valid. Please pass a valid API key."}}"#;
    assert_eq!(classify(403, denied).class(), Class::Caller);
    let busy = r#"{"error":{"code":"resource_exhausted","message":"Too many requests."}}"#;
    assert_eq!(classify(429, busy).class(), Class::RateLimited);
    let broken = r#"{"error":{"code":"not_implemented","message":"previous_interaction_id after built-in tools"}}"#;
    assert_eq!(classify(501, broken).class(), Class::Caller);
    let late = r#"{"error":{"code":"gateway_timeout","message":"Deadline expired."}}"#;
    assert_eq!(classify(504, late).class(), Class::Upstream);
    let overloaded = r#"{"error":{"code":"unavailable","message":"The model is overloaded."}}"#;
    assert_eq!(classify(503, overloaded).class(), Class::Upstream);
}
