//! The Interactions API of the mock (`/v1beta/interactions`, `/v1/interactions`): create
//! (JSON or SSE, `background`, `store`, `previous_interaction_id`), get (JSON, or SSE with
//! `stream=true` and `last_event_id`), delete and cancel — each interaction kept in the project
//! whose key made it. Another project's key gets `404` in this API's own error shape
//! (`{"error":{"code":"not_found","message":…}}`, a string code), as an unknown id does.
//!
//! Usage is reported as Google does here (`total_input_tokens`, `total_cached_tokens`,
//! `total_output_tokens`, `total_thought_tokens`, `total_tokens`). The prompt of a turn is
//! the conversation so far (its previous turns, kept by the project) plus the new input; the
//! conversation so far counts as cached (implicit caching) when it reaches the mock's
//! minimum cacheable size.
//!
//! Authentication and quota errors come in the classic `google.rpc.Status` shape: the API
//! front end answers them before the Interactions service is reached.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Method;
use http::request::Parts;
use serde_json::{Value, json};

use super::MockState;
use super::bodies;
use super::server::{Outcome, authenticate, error, json_response, streamed};

/// One stored interaction.
#[derive(Clone, Debug)]
pub(super) struct Stored {
    project: usize,
    model: String,
    /// When it finishes (Unix ms); later than `created` for a background interaction.
    ready_at: u64,
    created: u64,
    cancelled: bool,
    previous: Option<String>,
    input: String,
    answer: String,
    /// Characters of the whole conversation up to and including this turn's answer.
    conversation_chars: usize,
    input_tokens: u64,
    cached_tokens: u64,
    output_tokens: u64,
}

/// The path after `/v1beta` or `/v1` if it is an Interactions path: `""`, `/{id}`,
/// `/{id}/cancel`.
pub(super) fn route_of(path: &str) -> Option<&str> {
    path.strip_prefix("/v1beta/interactions")
        .or_else(|| path.strip_prefix("/v1/interactions"))
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// This API's error shape: a string code.
fn api_error(status: u16, code: &str, message: &str, project: Option<&str>, key: &str) -> Outcome {
    let body = json!({ "error": { "code": code, "message": message } });
    Outcome::Answer(json_response(status, &body, project, Some(key)))
}

pub(super) fn route(
    state: &MockState,
    parts: &Parts,
    key: Option<&str>,
    body: &[u8],
    rest: &str,
) -> Outcome {
    let (project, name, settings) = match authenticate(state, key, false) {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let key = key.unwrap_or_default();
    let at = Some(name.as_str());
    if settings.billing_exhausted {
        return error(429, bodies::billing_exhausted(), false, at, Some(key));
    }
    let rest = rest.trim_start_matches('/');
    let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
    match (&parts.method, id, action) {
        (&Method::POST, "", "") => create(state, project, &name, &settings, key, body),
        (_, "", _) => api_error(404, "not_found", "Method not found.", at, key),
        (method, id, action) => {
            let Some(stored) = find(state, project, id) else {
                let message = format!("Interaction {id} not found.");
                return api_error(404, "not_found", &message, at, key);
            };
            match (method, action) {
                (&Method::GET, "") => get(state, parts, id, &stored, at, key),
                (&Method::DELETE, "") => {
                    lock(state).remove(id);
                    Outcome::Answer(json_response(200, &json!({}), at, Some(key)))
                }
                (&Method::POST, "cancel") => cancel(state, id, &stored, at, key),
                _ => api_error(404, "not_found", "Method not found.", at, key),
            }
        }
    }
}

fn lock(state: &MockState) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Stored>> {
    state.interactions.lock().unwrap_or_else(|e| e.into_inner())
}

/// The interaction `id` if `project` holds it.
fn find(state: &MockState, project: usize, id: &str) -> Option<Stored> {
    lock(state)
        .get(id)
        .filter(|s| s.project == project)
        .cloned()
}

/// What a create's body asks for.
struct Ask {
    model: String,
    input_chars: usize,
    input: String,
    previous: Option<String>,
    store: bool,
    background: bool,
    stream: bool,
}

fn read_ask(body: &[u8]) -> Result<Ask, String> {
    let json: Value =
        serde_json::from_slice(body).map_err(|e| format!("Invalid JSON payload received. {e}"))?;
    if json.get("agent").is_some() {
        return Err("The mock serves model interactions only.".into());
    }
    let model = json
        .get("model")
        .and_then(Value::as_str)
        .ok_or("model is required.")?;
    let input = json.get("input").ok_or("input is required.")?;
    // The input (a string, content or steps) and the system instruction are read as prompt.
    let text_of = |value: &Value| match value {
        Value::String(text) => text.chars().count(),
        other => bodies::request_text(other).0,
    };
    let chars = text_of(input) + json.get("system_instruction").map_or(0, text_of);
    let flag =
        |name: &str, default: bool| json.get(name).and_then(Value::as_bool).unwrap_or(default);
    let ask = Ask {
        model: model.strip_prefix("models/").unwrap_or(model).to_owned(),
        input_chars: chars,
        input: input.as_str().map(str::to_owned).unwrap_or_default(),
        previous: json
            .get("previous_interaction_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        store: flag("store", true),
        background: flag("background", false),
        stream: flag("stream", false),
    };
    if !ask.store && (ask.previous.is_some() || ask.background) {
        return Err(
            "store=false cannot be used with previous_interaction_id or background.".into(),
        );
    }
    Ok(ask)
}

fn create(
    state: &MockState,
    project: usize,
    name: &str,
    settings: &super::MockProject,
    key: &str,
    body: &[u8],
) -> Outcome {
    let at = Some(name);
    let ask = match read_ask(body) {
        Ok(ask) => ask,
        Err(message) => return api_error(400, "invalid_request", &message, at, key),
    };
    if !state.models.contains(&ask.model) {
        let message = format!("Model {} not found.", ask.model);
        return api_error(404, "not_found", &message, at, key);
    }
    let history = match &ask.previous {
        None => None,
        Some(previous) => match find(state, project, previous) {
            Some(stored) => Some(stored),
            None => {
                let message = format!("Interaction {previous} not found.");
                return api_error(404, "not_found", &message, at, key);
            }
        },
    };
    let history_chars = history.as_ref().map_or(0, |h| h.conversation_chars);
    let input_tokens = bodies::tokens_for(history_chars + ask.input_chars);
    if let Some(refused) = admit(state, project, settings, &ask.model, input_tokens, at, key) {
        return refused;
    }
    let now = state.clock.now_millis();
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    let id = format!("v1_mock{n:06}");
    let turn = history.as_ref().map_or(1, |h| turns(state, h) + 1);
    let answer = format!(
        "Mock interaction reply from {} for project {name}, turn {turn}: your input had {input_tokens} tokens.",
        ask.model
    );
    let cached = bodies::tokens_for(history_chars);
    let stored = Stored {
        project,
        model: ask.model.clone(),
        ready_at: if ask.background {
            now + state.background_delay_ms
        } else {
            now
        },
        created: now,
        cancelled: false,
        previous: ask.previous.clone(),
        input: ask.input.clone(),
        conversation_chars: history_chars + ask.input_chars + answer.chars().count(),
        input_tokens,
        cached_tokens: if history_chars > 0
            && state
                .implicit_cache_min
                .or(crate::model::implicit_cache_min(&ask.model))
                .is_some_and(|min| cached >= min)
        {
            cached
        } else {
            0
        },
        output_tokens: bodies::tokens_for(answer.chars().count()),
        answer,
    };
    state
        .stats
        .record_served(&ask.model, input_tokens, stored.output_tokens);
    if ask.store {
        lock(state).insert(id.clone(), stored.clone());
    }
    if ask.stream {
        return Outcome::Answer(streamed(state, frames(&id, &stored, None), true, at, key));
    }
    let answer = interaction(&id, &stored, now, false);
    Outcome::Answer(json_response(200, &answer, at, Some(key)))
}

/// How many turns the conversation ending in `stored` has.
fn turns(state: &MockState, stored: &Stored) -> usize {
    let map = lock(state);
    let mut n = 1;
    let mut previous = stored.previous.clone();
    while let Some(id) = previous {
        let Some(before) = map.get(&id) else { break };
        n += 1;
        previous = before.previous.clone();
        if n > 10_000 {
            break;
        }
    }
    n
}

/// Admit the turn against the project's quota for its model; Google's 429 if it is over.
fn admit(
    state: &MockState,
    project: usize,
    settings: &super::MockProject,
    model: &str,
    tokens: u64,
    at: Option<&str>,
    key: &str,
) -> Option<Outcome> {
    let limits = settings.limits_for(model);
    let now = state.clock.now_millis();
    let admitted = state
        .usage
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry((project, model.to_owned()))
        .or_default()
        .admit(&limits, tokens, now);
    let refusal = admitted.err()?;
    let body = bodies::quota_exceeded(refusal.dimension, model, refusal.limit, refusal.retry);
    Some(error(429, body, false, at, Some(key)))
}

fn status_of(stored: &Stored, now: u64) -> &'static str {
    if stored.cancelled {
        "cancelled"
    } else if now >= stored.ready_at {
        "completed"
    } else {
        "in_progress"
    }
}

fn iso(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn usage(stored: &Stored) -> Value {
    json!({
        "total_input_tokens": stored.input_tokens,
        "total_cached_tokens": stored.cached_tokens,
        "total_output_tokens": stored.output_tokens,
        "total_thought_tokens": 0,
        "total_tokens": stored.input_tokens + stored.output_tokens
    })
}

/// The Interaction resource; `timeline`: with the `user_input` step (as GET answers).
fn interaction(id: &str, stored: &Stored, now: u64, timeline: bool) -> Value {
    let status = status_of(stored, now);
    let mut steps = Vec::new();
    if timeline {
        steps.push(
            json!({ "type": "user_input", "content": [{ "type": "text", "text": stored.input }] }),
        );
    }
    if status == "completed" {
        steps.push(json!({
            "type": "model_output",
            "content": [{ "type": "text", "text": stored.answer }]
        }));
    }
    let mut answer = json!({
        "id": id,
        "object": "interaction",
        "status": status,
        "model": stored.model,
        "created": iso(stored.created),
        "updated": iso(now.max(stored.created)),
        "steps": steps,
    });
    if status == "completed" {
        answer["usage"] = usage(stored);
    }
    if let Some(previous) = &stored.previous {
        answer["previous_interaction_id"] = json!(previous);
    }
    answer
}

/// The SSE frames of an interaction, after `last_event_id` if given.
fn frames(id: &str, stored: &Stored, after: Option<usize>) -> Vec<std::io::Result<Bytes>> {
    let mut events = vec![(
        "interaction.created",
        json!({ "interaction": { "id": id, "status": "in_progress", "object": "interaction", "model": stored.model } }),
    )];
    events.push((
        "step.start",
        json!({ "index": 0, "step": { "type": "model_output" } }),
    ));
    let words: Vec<&str> = stored.answer.split_inclusive(' ').collect();
    for piece in words.chunks(words.len().div_ceil(3).max(1)) {
        events.push((
            "step.delta",
            json!({ "index": 0, "delta": { "type": "text", "text": piece.concat() } }),
        ));
    }
    events.push(("step.stop", json!({ "index": 0 })));
    events.push((
        "interaction.completed",
        json!({ "interaction": { "id": id, "status": "completed", "object": "interaction", "model": stored.model, "usage": usage(stored) } }),
    ));
    let mut out: Vec<std::io::Result<Bytes>> = events
        .into_iter()
        .enumerate()
        .filter(|(n, _)| after.is_none_or(|after| *n > after))
        .map(|(n, (name, mut data))| {
            data["event_type"] = json!(name);
            data["event_id"] = json!(format!("e{n}"));
            Ok(Bytes::from(format!("event: {name}\ndata: {data}\n\n")))
        })
        .collect();
    out.push(Ok(Bytes::from_static(b"event: done\ndata: [DONE]\n\n")));
    out
}

fn query_value<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .uri
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn get(
    state: &MockState,
    parts: &Parts,
    id: &str,
    stored: &Stored,
    at: Option<&str>,
    key: &str,
) -> Outcome {
    let now = state.clock.now_millis();
    if query_value(parts, "stream") == Some("true") {
        let after = query_value(parts, "last_event_id")
            .and_then(|e| e.strip_prefix('e'))
            .and_then(|n| n.parse().ok());
        return Outcome::Answer(streamed(state, frames(id, stored, after), true, at, key));
    }
    let answer = interaction(id, stored, now, true);
    Outcome::Answer(json_response(200, &answer, at, Some(key)))
}

fn cancel(state: &MockState, id: &str, stored: &Stored, at: Option<&str>, key: &str) -> Outcome {
    let now = state.clock.now_millis();
    if status_of(stored, now) != "in_progress" {
        let message = "Only a background interaction that is still running can be cancelled.";
        return api_error(400, "failed_precondition", message, at, key);
    }
    let mut map = lock(state);
    let Some(entry) = map.get_mut(id) else {
        return api_error(404, "not_found", "Interaction not found.", at, key);
    };
    entry.cancelled = true;
    let answer = interaction(id, entry, now, false);
    drop(map);
    Outcome::Answer(json_response(200, &answer, at, Some(key)))
}
