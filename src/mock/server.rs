//! The mock's HTTP server and request handling.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rand::RngExt;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::bodies::{self, Dimension};
use super::{FaultKind, MockState};

pub(super) type MockBody = BoxBody<Bytes, io::Error>;

pub(super) async fn serve(listener: TcpListener, state: Arc<MockState>) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok((stream, _)) = accepted else {
            // Out of file descriptors or similar: back off briefly rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let state = state.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| handle(state.clone(), request));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

pub(super) enum Outcome {
    Answer(Response<MockBody>),
    Reset,
}

async fn handle(
    state: Arc<MockState>,
    request: Request<Incoming>,
) -> io::Result<Response<MockBody>> {
    let key = request_key(&request);
    state.stats.record_request(key.as_deref());
    let (parts, body) = request.into_parts();
    if let Some(upload_id) = super::files::upload_id(&parts) {
        // An upload's bytes are counted as they come, never held.
        let response = super::files::upload_step(&state, &parts, &upload_id, body).await?;
        state.stats.record_status(None, response.status().as_u16());
        return Ok(response);
    }
    let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
    match route(&state, &parts, key.as_deref(), &body).await {
        Outcome::Answer(response) => {
            state
                .stats
                .record_status(key.as_deref(), response.status().as_u16());
            Ok(response)
        }
        Outcome::Reset => Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "mock fault: connection reset",
        )),
    }
}

/// The project of `key`: its index, name and settings; Google's answer for a missing,
/// unknown or leaked key.
pub(super) fn authenticate(
    state: &MockState,
    key: Option<&str>,
    openai: bool,
) -> Result<(usize, String, super::MockProject), Box<Outcome>> {
    let Some(key) = key else {
        return Err(Box::new(error(
            403,
            bodies::unregistered_caller(),
            openai,
            None,
            None,
        )));
    };
    let Some(&(project_index, leaked)) = state.keys.get(key) else {
        return Err(Box::new(error(
            400,
            bodies::invalid_key(),
            openai,
            None,
            Some(key),
        )));
    };
    if leaked {
        return Err(Box::new(error(
            403,
            bodies::leaked_key(),
            openai,
            None,
            Some(key),
        )));
    }
    let projects = state.projects.lock().unwrap_or_else(|e| e.into_inner());
    let (name, project) = projects[project_index].clone();
    Ok((project_index, name, project))
}

/// The key from `x-goog-api-key`, `Authorization: Bearer`, or `?key=`.
fn request_key<B>(request: &Request<B>) -> Option<String> {
    if let Some(value) = request.headers().get("x-goog-api-key") {
        return value.to_str().ok().map(str::to_owned);
    }
    if let Some(value) = request.headers().get(AUTHORIZATION) {
        return value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|v| v.trim().to_owned());
    }
    let query = request.uri().query()?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("key="))
        .map(percent_decode)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        if bytes[i] == b'%'
            && let Some(Ok(byte)) = hex.map(|h| u8::from_str_radix(h, 16))
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn json_response(
    status: u16,
    body: &Value,
    project: Option<&str>,
    key: Option<&str>,
) -> Response<MockBody> {
    let bytes = Bytes::from(serde_json::to_vec_pretty(body).unwrap_or_default());
    let mut response = Response::new(full(bytes));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    tag(&mut response, project, key);
    response
}

fn tag(response: &mut Response<MockBody>, project: Option<&str>, key: Option<&str>) {
    if let Some(project) = project.and_then(|p| HeaderValue::from_str(p).ok()) {
        response.headers_mut().insert("x-mock-project", project);
    }
    if let Some(fp) = key.and_then(super::fingerprint)
        && let Ok(value) = HeaderValue::from_str(&format!("...{}", fp.tail()))
    {
        response.headers_mut().insert("x-mock-key", value);
    }
}

fn full(bytes: Bytes) -> MockBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// An error answer; on the OpenAI-compatible endpoint Google wraps it in a one-element array.
pub(super) fn error(
    status: u16,
    body: Value,
    openai: bool,
    project: Option<&str>,
    key: Option<&str>,
) -> Outcome {
    let body = if openai {
        Value::Array(vec![body])
    } else {
        body
    };
    Outcome::Answer(json_response(status, &body, project, key))
}

async fn route(state: &MockState, parts: &Parts, key: Option<&str>, body: &[u8]) -> Outcome {
    // Google serves the stable `/v1/models/...` beside `/v1beta/`; so does the mock.
    let stable = parts
        .uri
        .path()
        .strip_prefix("/v1/models")
        .map(|rest| format!("/v1beta/models{rest}"));
    let path = stable.as_deref().unwrap_or(parts.uri.path());
    if let Some(rest) = super::interactions::route_of(parts.uri.path()) {
        return super::interactions::route(state, parts, key, body, rest);
    }
    if let Some(rest) = super::caches::route_of(parts.uri.path()) {
        return super::caches::route(state, parts, key, body, rest);
    }
    if let Some(rest) = super::files::route_of(parts.uri.path()) {
        return super::files::route(state, parts, key, body, rest);
    }
    if let Some(rest) = super::batches::route_of(parts.uri.path()) {
        return super::batches::route(state, parts, key, rest);
    }
    if let Some(rest) = super::stores::route_of(parts.uri.path()) {
        return super::stores::route(state, parts, key, body, rest);
    }
    let openai = path == "/v1beta/openai/chat/completions";
    let openai_models = path == "/v1beta/openai/models" && parts.method == Method::GET;
    let listing = (path == "/v1beta/models" && parts.method == Method::GET) || openai_models;
    let native = path
        .strip_prefix("/v1beta/models/")
        .and_then(|rest| rest.split_once(':'));
    if !openai && !listing && native.is_none() {
        return error(404, bodies::not_found(path), false, None, key);
    }
    if let Some((model, "batchGenerateContent")) = native
        && parts.method == Method::POST
    {
        if !state.models.iter().any(|m| m == model) {
            let body = bodies::model_not_found(model, "batchGenerateContent");
            return error(404, body, false, None, key);
        }
        return super::batches::create(state, key, model, body);
    }

    let (project_index, name, project) = match authenticate(state, key, openai) {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let key = key.unwrap_or_default();
    let project_name = Some(name.as_str());
    if listing {
        let list = if openai_models {
            bodies::openai_model_list(&state.models)
        } else {
            bodies::model_list(&state.models)
        };
        return Outcome::Answer(json_response(200, &list, project_name, Some(key)));
    }
    if project.billing_exhausted {
        return error(
            429,
            bodies::billing_exhausted(),
            openai,
            project_name,
            Some(key),
        );
    }

    // The request.
    let json: Value = match serde_json::from_slice(body) {
        Ok(json) => json,
        Err(e) => {
            let message = format!("Invalid JSON payload received. {e}");
            return error(
                400,
                bodies::bad_request(&message),
                openai,
                project_name,
                Some(key),
            );
        }
    };
    let (model, method) = match native {
        Some((model, method)) => (model.to_owned(), method),
        None => match json.get("model").and_then(Value::as_str) {
            Some(model) => (
                model.strip_prefix("models/").unwrap_or(model).to_owned(),
                "chat/completions",
            ),
            None => {
                return error(
                    400,
                    bodies::bad_request("model is required"),
                    true,
                    project_name,
                    Some(key),
                );
            }
        },
    };
    if !openai
        && !matches!(
            method,
            "generateContent" | "streamGenerateContent" | "countTokens"
        )
    {
        return error(404, bodies::not_found(path), false, project_name, Some(key));
    }
    if !state.models.contains(&model) {
        return error(
            404,
            bodies::model_not_found(&model, method),
            openai,
            project_name,
            Some(key),
        );
    }
    if native.is_some() {
        let unknown = bodies::unknown_generate_fields(&json);
        if !unknown.is_empty() {
            return error(
                400,
                bodies::unknown_fields(&unknown),
                false,
                project_name,
                Some(key),
            );
        }
    }
    // Uploaded files and File Search stores: its project's only.
    if let Some(id) = super::files::foreign_file(state, project_index, &json) {
        let body = super::files::not_found(&id);
        return error(403, body, openai, project_name, Some(key));
    }
    if let Some(store) = super::stores::foreign_store(state, project_index, &json) {
        let body = super::stores::not_found(&store);
        return error(403, body, openai, project_name, Some(key));
    }
    let (chars, _images) = bodies::request_text(&json);
    let files = super::files::files_named(&json) as u64;
    let mut prompt_tokens = bodies::tokens_for(chars) + files * super::files::FILE_TOKENS;
    // An explicit context cache: its project's only; its tokens are prompt, and cached.
    let explicit = match json
        .get("cachedContent")
        .or_else(|| json.get("cached_content"))
        .and_then(Value::as_str)
    {
        Some(name) => match super::caches::find(state, project_index, name) {
            Some(cache) if cache.model == model => Some(cache.tokens),
            Some(_) => {
                let message =
                    "Model used by GenerateContent request and CachedContent has to be the same.";
                return error(
                    400,
                    bodies::bad_request(message),
                    openai,
                    project_name,
                    Some(key),
                );
            }
            None => {
                let body = super::caches::not_found();
                return error(403, body, openai, project_name, Some(key));
            }
        },
        None => None,
    };
    prompt_tokens += explicit.unwrap_or(0);

    // Faults.
    let mut mid_stream = false;
    let faults: Vec<_> = {
        let faults = state.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults
            .iter()
            .filter(|f| f.applies_to(Some(&model)))
            .cloned()
            .collect()
    };
    for fault in faults {
        let hit = {
            let mut rng = state.rng.lock().unwrap_or_else(|e| e.into_inner());
            rng.random::<f64>() < fault.rate
        };
        if !hit {
            continue;
        }
        match fault.kind {
            FaultKind::Latency(delay) => tokio::time::sleep(delay).await,
            FaultKind::Overloaded => {
                return error(503, bodies::overloaded(), openai, project_name, Some(key));
            }
            FaultKind::Internal => {
                return error(500, bodies::internal(), openai, project_name, Some(key));
            }
            FaultKind::ConnectionReset => return Outcome::Reset,
            FaultKind::MidStreamError => mid_stream = true,
        }
    }

    if method == "countTokens" {
        let answer = serde_json::json!({
            "totalTokens": prompt_tokens,
            "promptTokensDetails": [{ "modality": "TEXT", "tokenCount": prompt_tokens }]
        });
        return Outcome::Answer(json_response(200, &answer, project_name, Some(key)));
    }

    // Quota.
    let limits = project.limits_for(&model);
    let zero = [
        (limits.rpm.map(u64::from), Dimension::RequestsPerMinute),
        (limits.tpm, Dimension::TokensPerMinute),
        (limits.rpd.map(u64::from), Dimension::RequestsPerDay),
    ]
    .into_iter()
    .find(|(limit, _)| *limit == Some(0));
    if let Some((_, dimension)) = zero {
        let body = bodies::quota_exceeded(dimension, &model, 0, Duration::from_secs(30));
        return error(429, body, openai, project_name, Some(key));
    }
    let now = state.clock.now_millis();
    let admitted = {
        let mut usage = state.usage.lock().unwrap_or_else(|e| e.into_inner());
        usage
            .entry((project_index, model.clone()))
            .or_default()
            .admit(&limits, prompt_tokens, now)
    };
    if let Err(refusal) = admitted {
        let body = bodies::quota_exceeded(refusal.dimension, &model, refusal.limit, refusal.retry);
        return error(429, body, openai, project_name, Some(key));
    }

    // Success.
    let id = format!("mock-{}", state.next_id.fetch_add(1, Ordering::Relaxed));
    let text = format!(
        "Mock reply from {model} for project {}: your prompt had {prompt_tokens} tokens.",
        name
    );
    if openai {
        if json.get("stream").and_then(Value::as_bool) == Some(true) {
            let frames =
                bodies::openai_chunks(&model, &text, prompt_tokens, &id, state.stream_chunks)
                    .into_iter()
                    .map(|data| Ok(Bytes::from(format!("data: {data}\n\n"))))
                    .chain([Ok(Bytes::from_static(b"data: [DONE]\n\n"))])
                    .collect();
            let out = bodies::tokens_for(text.chars().count());
            state.stats.record_served(&model, prompt_tokens, out);
            return Outcome::Answer(streamed(state, frames, true, project_name, key));
        }
        let answer = bodies::openai_response(&model, &text, prompt_tokens, &id);
        let out = bodies::tokens_for(text.chars().count());
        state.stats.record_served(&model, prompt_tokens, out);
        return Outcome::Answer(json_response(200, &answer, project_name, Some(key)));
    }
    if method == "generateContent" {
        let cached = explicit.unwrap_or_else(|| {
            super::implicit::cached_tokens(state, project_index, &model, &json, prompt_tokens)
        });
        let answer = bodies::generate_response(&model, &text, prompt_tokens, cached, &id);
        let out = bodies::tokens_for(text.chars().count()) + bodies::thoughts_for(&model);
        state.stats.record_served(&model, prompt_tokens, out);
        return Outcome::Answer(json_response(200, &answer, project_name, Some(key)));
    }
    let sse = parts
        .uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "alt=sse"));
    let cached = explicit.unwrap_or_else(|| {
        super::implicit::cached_tokens(state, project_index, &model, &json, prompt_tokens)
    });
    Outcome::Answer(stream_response(
        state,
        &model,
        &text,
        (prompt_tokens, cached),
        &id,
        sse,
        mid_stream,
        project_name,
        key,
    ))
}

#[allow(clippy::too_many_arguments)]
fn stream_response(
    state: &MockState,
    model: &str,
    text: &str,
    (prompt, cached): (u64, u64),
    id: &str,
    sse: bool,
    mid_stream: bool,
    project: Option<&str>,
    key: &str,
) -> Response<MockBody> {
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    let n = state.stream_chunks.min(words.len()).max(1);
    let per = words.len().div_ceil(n);
    let mut chunks = Vec::new();
    let mut so_far = 0;
    for (i, piece) in words.chunks(per).enumerate() {
        let piece: String = piece.concat();
        so_far += bodies::tokens_for(piece.chars().count());
        let last = (i + 1) * per >= words.len();
        chunks.push(bodies::stream_chunk(
            model,
            &piece,
            (prompt, cached),
            so_far,
            last,
            id,
        ));
    }
    let mut frames: Vec<io::Result<Bytes>> = Vec::new();
    let total = chunks.len();
    for (i, chunk) in chunks.iter().enumerate() {
        if mid_stream && i == 1 {
            let error = serde_json::to_string(&bodies::internal()).unwrap_or_default();
            frames.push(Ok(Bytes::from(if sse {
                format!("data: {error}\r\n\r\n")
            } else {
                format!(",\r\n{error}")
            })));
            frames.push(Err(io::Error::other("mock fault: stream broken")));
            break;
        }
        let json = serde_json::to_string(chunk).unwrap_or_default();
        frames.push(Ok(Bytes::from(if sse {
            format!("data: {json}\r\n\r\n")
        } else if i == 0 {
            format!("[{json}{}", if total == 1 { "]" } else { "" })
        } else if i + 1 == total {
            format!(",\r\n{json}]")
        } else {
            format!(",\r\n{json}")
        })));
    }
    if !mid_stream {
        let thoughts = bodies::thoughts_for(model);
        state.stats.record_served(model, prompt, so_far + thoughts);
    }
    streamed(state, frames, sse, project, key)
}

/// A streamed answer from its frames (SSE or a JSON array), a chunk delay apart.
pub(super) fn streamed(
    state: &MockState,
    frames: Vec<Result<Bytes, io::Error>>,
    sse: bool,
    project: Option<&str>,
    key: &str,
) -> Response<MockBody> {
    let delay = state.chunk_delay;
    let body = stream::unfold(
        (frames.into_iter(), true),
        move |(mut frames, first)| async move {
            let next = frames.next()?;
            if !first && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if next.is_err() {
                // Let the chunks before the break reach the client first.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Some((next.map(Frame::data), (frames, false)))
        },
    );
    let mut response = Response::new(StreamBody::new(body).boxed());
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/json; charset=UTF-8"
    };
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    tag(&mut response, project, Some(key));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keys_are_decoded() {
        assert_eq!(percent_decode("test-key%2B0001"), "test-key+0001");
        assert_eq!(percent_decode("abc%2"), "abc%2");
    }
}
