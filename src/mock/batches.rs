//! Batch Mode in the mock: `models/{m}:batchGenerateContent` (inline requests, or a JSONL file
//! of the project's), get, list, cancel and delete of `batches/{id}` — each batch kept in the
//! project whose key made it. A batch is done after the mock's background delay: inline
//! results under `metadata.output.inlinedResponses` (and `response`, as the REST docs read
//! them), a file's under `responsesFile`, a generated file of the same project to download.
//! Another project's key gets Google's 404; a batch naming another project's file, Google's 403
//! for that file.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Method;
use http::request::Parts;
use serde_json::{Value, json};

use super::server::{Outcome, authenticate, error, json_response};
use super::{MockState, bodies};

/// One batch.
#[derive(Clone, Debug)]
pub(super) struct Batch {
    project: usize,
    model: String,
    display_name: Option<String>,
    created: u64,
    ready_at: u64,
    cancelled: bool,
    /// Inline requests (their prompts' tokens), or the input file's lines.
    input: Input,
    /// The results file, once made (for a file's batch).
    results: Option<String>,
}

#[derive(Clone, Debug)]
enum Input {
    Inline(Vec<(Value, u64)>),
    File(Vec<(String, u64)>),
}

/// The batches of every project, by id.
pub(super) type Batches = HashMap<String, Batch>;

/// The path after `/v1beta/batches` or `/v1/batches`, if it is one.
pub(super) fn route_of(path: &str) -> Option<&str> {
    path.strip_prefix("/v1beta/batches")
        .or_else(|| path.strip_prefix("/v1/batches"))
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn lock(state: &MockState) -> std::sync::MutexGuard<'_, Batches> {
    state.batches.lock().unwrap_or_else(|e| e.into_inner())
}

/// Google's answer for a batch another project holds, or none holds.
fn not_found(id: &str) -> Value {
    bodies::not_found(&format!("batches/{id}"))
}

/// `POST models/{model}:batchGenerateContent` with the key's project.
pub(super) fn create(state: &MockState, key: Option<&str>, model: &str, body: &[u8]) -> Outcome {
    let (project, name, _) = match authenticate(state, key, false) {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let key = key.unwrap_or_default();
    let at = Some(name.as_str());
    let bad = |message: &str| error(400, bodies::bad_request(message), false, at, Some(key));
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return bad("Invalid JSON payload received.");
    };
    let batch = json.get("batch").cloned().unwrap_or(Value::Null);
    let field = |value: &Value, camel: &str, snake: &str| {
        value.get(camel).or_else(|| value.get(snake)).cloned()
    };
    let Some(config) = field(&batch, "inputConfig", "input_config") else {
        return bad("batch.input_config is required.");
    };
    let input = if let Some(file) = field(&config, "fileName", "file_name") {
        let file = file.as_str().unwrap_or_default().to_owned();
        let Some(size) = super::files::size_in(state, project, &file) else {
            let id = file.strip_prefix("files/").unwrap_or(&file);
            return error(403, super::files::not_found(id), false, at, Some(key));
        };
        // The mock reads a file's size, not its lines: one request per 200 bytes.
        let lines = (size / 200).max(1);
        Input::File((0..lines).map(|i| (format!("request-{i}"), 50)).collect())
    } else {
        let requests = config
            .get("requests")
            .and_then(|r| r.get("requests"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if requests.is_empty() {
            return bad("batch.input_config.requests.requests must hold at least one request.");
        }
        let mut inline = Vec::new();
        for item in requests {
            let request = item.get("request").cloned().unwrap_or(Value::Null);
            if let Some(id) = super::files::foreign_file(state, project, &request) {
                return error(403, super::files::not_found(&id), false, at, Some(key));
            }
            let (chars, _) = bodies::request_text(&request);
            inline.push((
                item.get("metadata").cloned().unwrap_or(Value::Null),
                bodies::tokens_for(chars),
            ));
        }
        Input::Inline(inline)
    };
    let now = state.clock.now_millis();
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    let id = format!("mockbatch{n:06}");
    let made = Batch {
        project,
        model: model.to_owned(),
        display_name: field(&batch, "displayName", "display_name")
            .and_then(|v| v.as_str().map(str::to_owned)),
        created: now,
        ready_at: now + state.background_delay_ms,
        cancelled: false,
        input,
        results: None,
    };
    let answer = operation(state, &id, &made);
    lock(state).insert(id, made);
    Outcome::Answer(json_response(200, &answer, at, Some(key)))
}

/// `/v1beta/batches…` with the key's project.
pub(super) fn route(state: &MockState, parts: &Parts, key: Option<&str>, rest: &str) -> Outcome {
    let (project, name, _) = match authenticate(state, key, false) {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let key = key.unwrap_or_default();
    let at = Some(name.as_str());
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() && parts.method == Method::GET {
        return list(state, project, at, key);
    }
    let (id, verb) = match rest.split_once(':') {
        Some((id, verb)) => (id, Some(verb)),
        None => (rest, None),
    };
    let mut batches = lock(state);
    let Some(batch) = batches.get_mut(id).filter(|b| b.project == project) else {
        drop(batches);
        return error(404, not_found(id), false, at, Some(key));
    };
    match (&parts.method, verb) {
        (&Method::GET, None) => {
            let mut batch = batch.clone();
            drop(batches);
            finish(state, id, &mut batch);
            let answer = operation(state, id, &batch);
            Outcome::Answer(json_response(200, &answer, at, Some(key)))
        }
        (&Method::POST, Some("cancel")) => {
            if state.clock.now_millis() < batch.ready_at {
                batch.cancelled = true;
            }
            Outcome::Answer(json_response(200, &json!({}), at, Some(key)))
        }
        (&Method::DELETE, None) => {
            batches.remove(id);
            Outcome::Answer(json_response(200, &json!({}), at, Some(key)))
        }
        _ => error(
            404,
            bodies::not_found(parts.uri.path()),
            false,
            at,
            Some(key),
        ),
    }
}

/// A done file batch's results: made once, as a generated file of its project.
fn finish(state: &MockState, id: &str, batch: &mut Batch) {
    let now = state.clock.now_millis();
    let (Input::File(lines), None, false) = (&batch.input, &batch.results, batch.cancelled) else {
        return;
    };
    if now < batch.ready_at {
        return;
    }
    let text: String = lines
        .iter()
        .map(|(key, tokens)| {
            let reply = format!("Mock batch reply from {} for {key}", batch.model);
            let response = bodies::generate_response(&batch.model, &reply, *tokens, 0, key);
            format!("{}\n", json!({ "key": key, "response": response }))
        })
        .collect();
    let file = super::files::generated(state, batch.project, Bytes::from(text));
    batch.results = Some(file.clone());
    if let Some(kept) = lock(state).get_mut(id) {
        kept.results = Some(file);
    }
}

fn list(state: &MockState, project: usize, at: Option<&str>, key: &str) -> Outcome {
    let mine: Vec<(String, Batch)> = lock(state)
        .iter()
        .filter(|(_, b)| b.project == project)
        .map(|(id, b)| (id.clone(), b.clone()))
        .collect();
    let operations: Vec<Value> = mine.iter().map(|(id, b)| operation(state, id, b)).collect();
    let answer = json!({ "operations": operations });
    Outcome::Answer(json_response(200, &answer, at, Some(key)))
}

fn iso(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX))
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The batch as Google's long-running operation.
fn operation(state: &MockState, id: &str, batch: &Batch) -> Value {
    let now = state.clock.now_millis();
    let done = batch.cancelled || now >= batch.ready_at;
    let count = match &batch.input {
        Input::Inline(items) => items.len(),
        Input::File(lines) => lines.len(),
    };
    let state_name = match (batch.cancelled, done) {
        (true, _) => "BATCH_STATE_CANCELLED",
        (false, true) => "BATCH_STATE_SUCCEEDED",
        (false, false) => "BATCH_STATE_PENDING",
    };
    let mut metadata = json!({
        "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
        "model": format!("models/{}", batch.model),
        "state": state_name,
        "createTime": iso(batch.created),
        "updateTime": iso(now.min(batch.ready_at)),
        "batchStats": { "requestCount": count.to_string() },
    });
    if let Some(name) = &batch.display_name {
        metadata["displayName"] = json!(name);
    }
    let mut answer = json!({ "name": format!("batches/{id}"), "metadata": metadata, "done": done });
    if !done || batch.cancelled {
        return answer;
    }
    metadata = answer["metadata"].take();
    metadata["endTime"] = json!(iso(batch.ready_at));
    metadata["batchStats"]["successfulRequestCount"] = json!(count.to_string());
    let output = match (&batch.input, &batch.results) {
        (Input::Inline(items), _) => {
            let responses: Vec<Value> = items
                .iter()
                .enumerate()
                .map(|(i, (meta, tokens))| {
                    let reply = format!("Mock batch reply from {} for request {i}", batch.model);
                    let id = format!("{id}-{i}");
                    let response = bodies::generate_response(&batch.model, &reply, *tokens, 0, &id);
                    let mut item = json!({ "response": response });
                    if !meta.is_null() {
                        item["metadata"] = meta.clone();
                    }
                    item
                })
                .collect();
            json!({ "inlinedResponses": { "inlinedResponses": responses } })
        }
        (Input::File(_), Some(file)) => json!({ "responsesFile": file }),
        (Input::File(_), None) => json!({}),
    };
    metadata["output"] = output.clone();
    answer["metadata"] = metadata;
    let mut response = output;
    response["@type"] =
        json!("type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput");
    answer["response"] = response;
    answer
}
