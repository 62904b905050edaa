//! Bodies shaped like Google's: errors (`google.rpc.Status`) and successes.

use std::time::Duration;

use serde_json::{Value, json};

pub(super) const HELP_URL: &str = "https://ai.google.dev/gemini-api/docs/rate-limits";

fn status(code: u16, message: &str, status: &str, details: Value) -> Value {
    let mut error = json!({ "code": code, "message": message, "status": status });
    if details.as_array().is_some_and(|d| !d.is_empty()) {
        error["details"] = details;
    }
    json!({ "error": error })
}

pub(super) fn invalid_key() -> Value {
    let message = "API key not valid. Please pass a valid API key.";
    status(
        400,
        message,
        "INVALID_ARGUMENT",
        json!([
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": { "service": "generativelanguage.googleapis.com" }
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": message
            }
        ]),
    )
}

pub(super) fn leaked_key() -> Value {
    status(
        403,
        "Your API key was reported as leaked. Please use another API key.",
        "PERMISSION_DENIED",
        json!([]),
    )
}

pub(super) fn unregistered_caller() -> Value {
    status(
        403,
        "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
        "PERMISSION_DENIED",
        json!([]),
    )
}

pub(super) fn billing_exhausted() -> Value {
    status(
        429,
        "Your prepayment credits are depleted. Please go to AI Studio at https://ai.studio/projects to manage your project and billing.",
        "RESOURCE_EXHAUSTED",
        json!([]),
    )
}

pub(super) fn overloaded() -> Value {
    status(
        503,
        "The model is overloaded. Please try again later.",
        "UNAVAILABLE",
        json!([]),
    )
}

pub(super) fn internal() -> Value {
    status(
        500,
        "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
        "INTERNAL",
        json!([]),
    )
}

pub(super) fn model_not_found(model: &str, method: &str) -> Value {
    status(
        404,
        &format!(
            "models/{model} is not found for API version v1beta, or is not supported for {method}. Call ListModels to see the list of available models and their supported methods."
        ),
        "NOT_FOUND",
        json!([]),
    )
}

pub(super) fn not_found(path: &str) -> Value {
    status(
        404,
        &format!("Requested entity was not found: {path}"),
        "NOT_FOUND",
        json!([]),
    )
}

pub(super) fn bad_request(message: &str) -> Value {
    status(400, message, "INVALID_ARGUMENT", json!([]))
}

/// Google's 400 for fields a request has that the method does not know: one message per name,
/// each echoing the name as sent, joined by newlines, with a `BadRequest` detail per name.
pub(super) fn unknown_fields(names: &[&str]) -> Value {
    let each: Vec<String> = names
        .iter()
        .map(|name| {
            format!(
                "Invalid JSON payload received. Unknown name {}: Cannot find field.",
                Value::from(*name)
            )
        })
        .collect();
    let violations: Vec<Value> = each
        .iter()
        .map(|description| json!({ "description": description }))
        .collect();
    status(
        400,
        &each.join("\n"),
        "INVALID_ARGUMENT",
        json!([{
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": violations
        }]),
    )
}

/// The top-level fields of `generateContent` / `streamGenerateContent` / `countTokens`
/// requests, in the two spellings proto3 JSON accepts.
const GENERATE_FIELDS: &[&str] = &[
    "model",
    "contents",
    "systemInstruction",
    "system_instruction",
    "tools",
    "toolConfig",
    "tool_config",
    "safetySettings",
    "safety_settings",
    "generationConfig",
    "generation_config",
    "cachedContent",
    "cached_content",
    "labels",
    "generateContentRequest",
    "generate_content_request",
];

/// The top-level names of a native generate request that Google does not know.
pub(super) fn unknown_generate_fields(json: &Value) -> Vec<&str> {
    json.as_object()
        .map(|object| {
            object
                .keys()
                .map(String::as_str)
                .filter(|name| !GENERATE_FIELDS.contains(name))
                .collect()
        })
        .unwrap_or_default()
}

/// Which quota a 429 reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dimension {
    RequestsPerMinute,
    TokensPerMinute,
    RequestsPerDay,
}

impl Dimension {
    fn quota_id(self) -> &'static str {
        match self {
            Dimension::RequestsPerMinute => "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            Dimension::TokensPerMinute => "GenerateContentInputTokensPerModelPerMinute-FreeTier",
            Dimension::RequestsPerDay => "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
        }
    }

    fn metric(self) -> &'static str {
        match self {
            Dimension::RequestsPerMinute | Dimension::RequestsPerDay => {
                "generativelanguage.googleapis.com/generate_content_free_tier_requests"
            }
            Dimension::TokensPerMinute => {
                "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count"
            }
        }
    }
}

/// `"47.434s"`: a protobuf JSON duration with millisecond precision.
pub(super) fn proto_duration(delay: Duration) -> String {
    let millis = delay.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{}.{:03}s", millis / 1000, millis % 1000)
    }
}

/// A 429 for `dimension` with QuotaFailure, Help and RetryInfo, as Google sends it.
pub(super) fn quota_exceeded(
    dimension: Dimension,
    model: &str,
    limit: u64,
    retry: Duration,
) -> Value {
    let delay = proto_duration(retry);
    let message = format!(
        "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: {HELP_URL}. To monitor your current usage, head to: https://ai.dev/rate-limit. \n* Quota exceeded for metric: {}, limit: {limit}, model: {model}\nPlease retry in {delay}.",
        dimension.metric()
    );
    status(
        429,
        &message,
        "RESOURCE_EXHAUSTED",
        json!([
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{
                    "quotaMetric": dimension.metric(),
                    "quotaId": dimension.quota_id(),
                    "quotaDimensions": { "location": "global", "model": model },
                    "quotaValue": limit.to_string()
                }]
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{ "description": "Learn more about Gemini API quotas", "url": HELP_URL }]
            },
            { "@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay }
        ]),
    )
}

/// Input text of a native request (`contents[].parts[].text`, `systemInstruction`) or an
/// OpenAI-style one (`messages[].content`), and how many `inlineData` images it has.
pub(super) fn request_text(body: &Value) -> (usize, usize) {
    fn walk(value: &Value, chars: &mut usize, images: &mut usize) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("text" | "content", Value::String(s)) => *chars += s.chars().count(),
                        ("inlineData" | "inline_data", _) => *images += 1,
                        _ => walk(v, chars, images),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, chars, images)),
            _ => {}
        }
    }
    let (mut chars, mut images) = (0, 0);
    walk(body, &mut chars, &mut images);
    (chars, images)
}

/// The mock's token count: one token per 4 characters of input text, at least 1.
pub(super) fn tokens_for(chars: usize) -> u64 {
    (chars as u64).div_ceil(4).max(1)
}

pub(super) fn candidate(text: &str, finish: bool) -> Value {
    let mut c = json!({
        "content": { "parts": [{ "text": text }], "role": "model" },
        "index": 0
    });
    if finish {
        c["finishReason"] = json!("STOP");
    }
    c
}

/// Thinking tokens a model reports (and Google bills as output): the 2.5 and 3 families think.
pub(super) fn thoughts_for(model: &str) -> u64 {
    if model.starts_with("gemini-2.5") || model.starts_with("gemini-3") {
        8
    } else {
        0
    }
}

/// `usageMetadata`: `cached` of the `prompt` tokens came from the project's implicit cache.
pub(super) fn usage(model: &str, prompt: u64, cached: u64, candidates: u64) -> Value {
    let thoughts = thoughts_for(model);
    let mut usage = json!({
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + thoughts,
        "promptTokensDetails": [{ "modality": "TEXT", "tokenCount": prompt }]
    });
    if cached > 0 {
        usage["cachedContentTokenCount"] = cached.into();
        usage["cacheTokensDetails"] = json!([{ "modality": "TEXT", "tokenCount": cached }]);
    }
    if thoughts > 0 {
        usage["thoughtsTokenCount"] = thoughts.into();
    }
    usage
}

/// The text of a prompt in the order the model reads it — system instruction, then each turn
/// (or OpenAI message) — for the implicit cache's prefix match.
pub(super) fn prompt_text(body: &Value) -> String {
    fn walk(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(text)) = map.get("text") {
                    out.push_str(text);
                }
                if let Some(Value::String(text)) = map.get("content") {
                    out.push_str(text);
                }
                for (name, inner) in map {
                    if name != "text" && name != "content" || !inner.is_string() {
                        walk(inner, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            _ => {}
        }
    }
    let mut out = String::new();
    for field in [
        "systemInstruction",
        "system_instruction",
        "contents",
        "messages",
    ] {
        if let Some(value) = body.get(field) {
            walk(value, &mut out);
        }
    }
    out
}

pub(super) fn generate_response(
    model: &str,
    text: &str,
    prompt: u64,
    cached: u64,
    response_id: &str,
) -> Value {
    let out = tokens_for(text.chars().count());
    json!({
        "candidates": [candidate(text, true)],
        "usageMetadata": usage(model, prompt, cached, out),
        "modelVersion": model,
        "responseId": response_id
    })
}

pub(super) fn stream_chunk(
    model: &str,
    piece: &str,
    (prompt, cached): (u64, u64),
    so_far: u64,
    last: bool,
    response_id: &str,
) -> Value {
    json!({
        "candidates": [candidate(piece, last)],
        "usageMetadata": usage(model, prompt, cached, so_far),
        "modelVersion": model,
        "responseId": response_id
    })
}

pub(super) fn openai_response(model: &str, text: &str, prompt: u64, id: &str) -> Value {
    let out = tokens_for(text.chars().count());
    json!({
        "id": id,
        "object": "chat.completion",
        "created": 1_767_225_600u64,
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": text },
            "finish_reason": "stop"
        }],
        "usage": { "prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out }
    })
}

/// The chunks of a streamed OpenAI-compatible answer (`chat.completion.chunk`), the last with
/// the finish reason and usage.
pub(super) fn openai_chunks(
    model: &str,
    text: &str,
    prompt: u64,
    id: &str,
    chunks: usize,
) -> Vec<Value> {
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    let per = words.len().div_ceil(chunks.max(1)).max(1);
    let out = tokens_for(text.chars().count());
    let pieces: Vec<String> = words.chunks(per).map(|w| w.concat()).collect();
    let last = pieces.len().saturating_sub(1);
    pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let mut chunk = json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": 1_767_225_600u64,
                "model": model,
                "choices": [{
                    "index": 0,
                    "delta": { "role": "assistant", "content": piece },
                    "finish_reason": if i == last { Value::from("stop") } else { Value::Null }
                }]
            });
            if i == last {
                chunk["usage"] = json!({ "prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out });
            }
            chunk
        })
        .collect()
}

/// `GET /v1beta/openai/models`.
pub(super) fn openai_model_list(models: &[String]) -> Value {
    let data: Vec<Value> = models
        .iter()
        .map(|m| json!({ "id": m, "object": "model", "created": 0, "owned_by": "google" }))
        .collect();
    json!({ "object": "list", "data": data })
}

pub(super) fn model_list(models: &[String]) -> Value {
    let models: Vec<Value> = models
        .iter()
        .map(|m| {
            json!({
                "name": format!("models/{m}"),
                "version": "001",
                "displayName": m,
                "inputTokenLimit": 1_048_576,
                "outputTokenLimit": 8192,
                "supportedGenerationMethods": ["generateContent", "countTokens"]
            })
        })
        .collect();
    json!({ "models": models })
}
