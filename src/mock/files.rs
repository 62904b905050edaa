//! The Files API of the mock: the resumable upload (`POST /upload/v1beta/files` with
//! `X-Goog-Upload-Command: start`, then the session URL it answers with, `upload` and
//! `upload, finalize`), get, list and delete — each file kept in the project whose key started
//! its upload, for 48 hours (by the mock's clock). As at Google, the upload steps carry no
//! key: the session URL is the authority, and it is bound to the starting key's project.
//!
//! Upload bodies are counted as they stream in, never held: the mock keeps a file's size, not
//! its bytes. Another project's key, or a file that expired or was deleted, gets Google's 403
//! `PERMISSION_DENIED` "You do not have permission to access the File {id} or it may not
//! exist." — for the file's own routes and for a request that names it in `fileData.fileUri`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use http::request::Parts;
use http::{HeaderValue, Method, Response};
use serde_json::{Value, json};

use super::server::{MockBody, Outcome, authenticate, error, json_response};
use super::{MockState, bodies};

/// How long Google keeps an uploaded file.
const RETENTION_MS: u64 = 48 * 3600 * 1000;
/// Google's largest file.
pub(super) const MAX_FILE: u64 = 2 << 30;
/// The tokens the mock counts for a file named in a request (an image's, at Google).
pub(super) const FILE_TOKENS: u64 = 258;

/// One uploaded file.
#[derive(Clone, Debug)]
pub(super) struct File {
    project: usize,
    display_name: Option<String>,
    mime_type: String,
    size: u64,
    created: u64,
    expires: u64,
    /// A generated file's bytes (a batch's results); an upload's are not kept.
    content: Option<bytes::Bytes>,
}

/// Keep a file a project generated (a batch's results): its name.
pub(super) fn generated(state: &MockState, project: usize, content: bytes::Bytes) -> String {
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    let id = format!("batchresults{n:06}");
    let now = state.clock.now_millis();
    let file = File {
        project,
        display_name: None,
        mime_type: "application/jsonl".to_owned(),
        size: content.len() as u64,
        created: now,
        expires: now + RETENTION_MS,
        content: Some(content),
    };
    lock(state).files.insert(id.clone(), file);
    format!("files/{id}")
}

/// An uploaded file's size, if `project` holds it (a batch's input).
pub(super) fn size_in(state: &MockState, project: usize, name: &str) -> Option<u64> {
    let id = name.strip_prefix("files/")?;
    let now = state.clock.now_millis();
    lock(state)
        .files
        .get(id)
        .filter(|f| f.project == project && f.expires > now)
        .map(|f| f.size)
}

/// A resumable upload under way.
#[derive(Clone, Debug)]
pub(super) struct Upload {
    project: usize,
    /// The id asked for (`file.name`), else one is made at the end.
    id: Option<String>,
    display_name: Option<String>,
    mime_type: String,
    declared: Option<u64>,
    received: u64,
}

/// Files and uploads of every project, by id.
#[derive(Default)]
pub(super) struct Files {
    files: HashMap<String, File>,
    uploads: HashMap<String, Upload>,
}

/// The path after `/v1beta/files` or `/v1/files` (also `/upload/…` and `/download/…`).
pub(super) fn route_of(path: &str) -> Option<&str> {
    let path = path
        .strip_prefix("/upload")
        .or_else(|| path.strip_prefix("/download"))
        .unwrap_or(path);
    path.strip_prefix("/v1beta/files")
        .or_else(|| path.strip_prefix("/v1/files"))
        .filter(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with(':'))
}

/// Is this an upload step (the session URL: `upload_id` in the query)?
pub(super) fn upload_id(parts: &Parts) -> Option<String> {
    if !parts.uri.path().starts_with("/upload/") {
        return None;
    }
    parts
        .uri
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("upload_id="))
        .map(str::to_owned)
}

/// Google's answer for a file another project holds, or none holds.
pub(super) fn not_found(id: &str) -> Value {
    json!({ "error": {
        "code": 403,
        "message": format!("You do not have permission to access the File {id} or it may not exist."),
        "status": "PERMISSION_DENIED"
    } })
}

fn lock(state: &MockState) -> std::sync::MutexGuard<'_, Files> {
    state.files.lock().unwrap_or_else(|e| e.into_inner())
}

/// The id of a file a URI names (`https://…/v1beta/files/{id}` or `files/{id}`), if any.
pub(super) fn id_in_uri(uri: &str) -> Option<&str> {
    let at = uri.find("files/")?;
    let before = &uri[..at];
    let served = before.is_empty()
        || (before.starts_with("https://generativelanguage.googleapis.com/")
            && (before.ends_with("/v1beta/") || before.ends_with("/v1/")));
    served.then(|| &uri[at + "files/".len()..])
}

/// Every file a request names (`fileData.fileUri`, `file_data.file_uri`, or an interaction's
/// `uri`) that is not in `project`: the first such id.
pub(super) fn foreign_file(state: &MockState, project: usize, body: &Value) -> Option<String> {
    let mut named = Vec::new();
    collect(body, &mut named);
    let now = state.clock.now_millis();
    let files = lock(state);
    named.into_iter().find(|id| {
        !files
            .files
            .get(id)
            .is_some_and(|f| f.project == project && f.expires > now)
    })
}

/// The number of files a request names.
pub(super) fn files_named(body: &Value) -> usize {
    let mut named = Vec::new();
    collect(body, &mut named);
    named.len()
}

fn collect(value: &Value, named: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("fileUri" | "file_uri" | "uri", Value::String(uri)) => {
                        if let Some(id) = id_in_uri(uri) {
                            named.push(id.to_owned());
                        }
                    }
                    _ => collect(v, named),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect(v, named)),
        _ => {}
    }
}

/// `/v1beta/files…` with the key's project (an upload's start included).
pub(super) fn route(
    state: &MockState,
    parts: &Parts,
    key: Option<&str>,
    body: &[u8],
    rest: &str,
) -> Outcome {
    let (project, name, _) = match authenticate(state, key, false) {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let key = key.unwrap_or_default();
    let at = Some(name.as_str());
    if parts.uri.path().starts_with("/upload/") {
        return start(state, parts, project, at, key, body);
    }
    let id = rest.trim_start_matches('/');
    match (&parts.method, id) {
        (&Method::GET, "") => list(state, parts, project, at, key),
        (method, id) => {
            let (id, download) = match id.split_once(':') {
                Some((id, "download")) => (id, true),
                _ => (id, false),
            };
            let now = state.clock.now_millis();
            let mut files = lock(state);
            let Some(file) = files
                .files
                .get(id)
                .filter(|f| f.project == project && f.expires > now)
                .cloned()
            else {
                drop(files);
                return error(403, not_found(id), false, at, Some(key));
            };
            match (method, download) {
                (&Method::GET, false) => {
                    Outcome::Answer(json_response(200, &resource(id, &file), at, Some(key)))
                }
                (&Method::DELETE, false) => {
                    files.files.remove(id);
                    Outcome::Answer(json_response(200, &json!({}), at, Some(key)))
                }
                (&Method::GET, true) => match file.content {
                    Some(content) => {
                        let mut response = json_response(200, &json!({}), at, Some(key));
                        *response.body_mut() = {
                            use http_body_util::BodyExt;
                            http_body_util::Full::new(content)
                                .map_err(|never| match never {})
                                .boxed()
                        };
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            HeaderValue::from_static("application/octet-stream"),
                        );
                        Outcome::Answer(response)
                    }
                    None => {
                        let message = "Only generated or registered files can be downloaded.";
                        error(400, bodies::bad_request(message), false, at, Some(key))
                    }
                },
                _ => error(
                    404,
                    bodies::not_found(parts.uri.path()),
                    false,
                    at,
                    Some(key),
                ),
            }
        }
    }
}

/// The start of a resumable upload: a session, answered with its URL.
fn start(
    state: &MockState,
    parts: &Parts,
    project: usize,
    at: Option<&str>,
    key: &str,
    body: &[u8],
) -> Outcome {
    let bad = |message: &str| error(400, bodies::bad_request(message), false, at, Some(key));
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if header("x-goog-upload-protocol") != Some("resumable")
        || header("x-goog-upload-command") != Some("start")
    {
        return bad(
            "The mock takes resumable uploads only (X-Goog-Upload-Protocol: resumable, X-Goog-Upload-Command: start).",
        );
    }
    let declared = match header("x-goog-upload-header-content-length").map(str::parse::<u64>) {
        Some(Ok(size)) if size > MAX_FILE => return bad("The file is larger than 2 GB."),
        Some(Ok(size)) => Some(size),
        Some(Err(_)) => return bad("Invalid X-Goog-Upload-Header-Content-Length."),
        None => None,
    };
    let json: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(body) {
            Ok(json) => json,
            Err(_) => return bad("Invalid JSON payload received."),
        }
    };
    let file = json.get("file").cloned().unwrap_or(Value::Null);
    let text = |a: &str, b: &str| {
        file.get(a)
            .or_else(|| file.get(b))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let id = text("name", "name").map(|n| n.strip_prefix("files/").unwrap_or(&n).to_owned());
    if let Some(id) = &id
        && (id.is_empty()
            || id.len() > 40
            || !id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
    {
        return bad("File name must be lowercase alphanumeric characters or dashes, at most 40.");
    }
    let mime_type = text("mimeType", "mime_type")
        .or_else(|| header("x-goog-upload-header-content-type").map(str::to_owned))
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    let upload_id = format!("mockupload{n:06}");
    lock(state).uploads.insert(
        upload_id.clone(),
        Upload {
            project,
            id,
            display_name: text("displayName", "display_name"),
            mime_type,
            declared,
            received: 0,
        },
    );
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let url = format!(
        "http://{host}{}?upload_id={upload_id}&upload_protocol=resumable",
        parts.uri.path()
    );
    let mut response = json_response(200, &json!({}), at, Some(key));
    if let Ok(value) = HeaderValue::from_str(&url) {
        response.headers_mut().insert("x-goog-upload-url", value);
    }
    response
        .headers_mut()
        .insert("x-goog-upload-status", HeaderValue::from_static("active"));
    Outcome::Answer(response)
}

/// An upload step on the session `upload_id`: its body counted as it streams in (never kept);
/// `finalize` makes the file.
pub(super) async fn upload_step(
    state: &MockState,
    parts: &Parts,
    upload_id: &str,
    body: hyper::body::Incoming,
) -> std::io::Result<Response<MockBody>> {
    use http_body_util::BodyExt;
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    let command = header("x-goog-upload-command");
    let commands: Vec<&str> = command.split(',').map(str::trim).collect();
    let upload = lock(state).uploads.get(upload_id).cloned();
    let Some(upload) = upload else {
        // Drain what was sent; the session is unknown (or done).
        let _ = body.collect().await;
        let answer = bodies::not_found(&format!("upload session {upload_id}"));
        return Ok(status(404, &answer));
    };
    let offset = header("x-goog-upload-offset").parse::<u64>().ok();
    if commands.contains(&"upload") && offset != Some(upload.received) {
        let _ = body.collect().await;
        let message = format!(
            "X-Goog-Upload-Offset must be {} (the bytes received so far)",
            upload.received
        );
        return Ok(status(400, &bodies::bad_request(&message)));
    }
    let mut received = 0u64;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(std::io::Error::other)?;
        if let Some(data) = frame.data_ref() {
            received += data.len() as u64;
        }
    }
    let mut files = lock(state);
    let Some(session) = files.uploads.get_mut(upload_id) else {
        return Ok(status(404, &bodies::not_found(upload_id)));
    };
    if commands.contains(&"upload") {
        session.received += received;
    }
    if session.received > MAX_FILE {
        files.uploads.remove(upload_id);
        return Ok(status(
            400,
            &bodies::bad_request("The file is larger than 2 GB."),
        ));
    }
    if !commands.contains(&"finalize") {
        let mut response = status(200, &json!({}));
        let headers = response.headers_mut();
        headers.insert("x-goog-upload-status", HeaderValue::from_static("active"));
        if let Ok(value) = HeaderValue::from_str(&session.received.to_string()) {
            headers.insert("x-goog-upload-size-received", value);
        }
        return Ok(response);
    }
    let session = files.uploads.remove(upload_id).unwrap_or(upload);
    if session.declared.is_some_and(|d| d != session.received) {
        let message = "The upload's size does not match X-Goog-Upload-Header-Content-Length.";
        return Ok(status(400, &bodies::bad_request(message)));
    }
    let now = state.clock.now_millis();
    let id = session.id.clone().unwrap_or_else(|| {
        let n = state.next_id.fetch_add(1, Ordering::Relaxed);
        format!("mockfile{n:06}")
    });
    let file = File {
        project: session.project,
        display_name: session.display_name,
        mime_type: session.mime_type,
        size: session.received,
        created: now,
        expires: now + RETENTION_MS,
        content: None,
    };
    if files
        .files
        .get(&id)
        .is_some_and(|f| f.project == file.project && f.expires > now)
    {
        let message = format!("File files/{id} already exists.");
        return Ok(status(
            409,
            &json!({ "error": { "code": 409, "message": message, "status": "ALREADY_EXISTS" } }),
        ));
    }
    let answer = json!({ "file": resource(&id, &file) });
    files.files.insert(id, file);
    drop(files);
    let mut response = status(200, &answer);
    response
        .headers_mut()
        .insert("x-goog-upload-status", HeaderValue::from_static("final"));
    Ok(response)
}

fn status(code: u16, body: &Value) -> Response<MockBody> {
    json_response(code, body, None, None)
}

fn list(state: &MockState, parts: &Parts, project: usize, at: Option<&str>, key: &str) -> Outcome {
    let query = |name: &str| {
        parts.uri.query().and_then(|q| {
            q.split('&')
                .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
        })
    };
    let size = query("pageSize")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(10)
        .clamp(1, 100);
    let from = query("pageToken")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0);
    let now = state.clock.now_millis();
    let files = lock(state);
    let mut mine: Vec<(&String, &File)> = files
        .files
        .iter()
        .filter(|(_, f)| f.project == project && f.expires > now)
        .collect();
    mine.sort_by(|a, b| a.0.cmp(b.0));
    let page: Vec<Value> = mine
        .iter()
        .skip(from)
        .take(size)
        .map(|(id, f)| resource(id, f))
        .collect();
    let mut answer = json!({ "files": page });
    if from + size < mine.len() {
        answer["nextPageToken"] = json!((from + size).to_string());
    }
    drop(files);
    Outcome::Answer(json_response(200, &answer, at, Some(key)))
}

fn iso(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX))
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The File resource.
fn resource(id: &str, file: &File) -> Value {
    let mut answer = json!({
        "name": format!("files/{id}"),
        "mimeType": file.mime_type,
        "sizeBytes": file.size.to_string(),
        "createTime": iso(file.created),
        "updateTime": iso(file.created),
        "expirationTime": iso(file.expires),
        "uri": format!("https://generativelanguage.googleapis.com/v1beta/files/{id}"),
        "state": "ACTIVE",
        "source": if file.content.is_some() { "GENERATED" } else { "UPLOADED" },
    });
    if file.content.is_some() {
        answer["downloadUri"] = json!(format!(
            "https://generativelanguage.googleapis.com/v1beta/files/{id}:download?alt=media"
        ));
    }
    if let Some(name) = &file.display_name {
        answer["displayName"] = json!(name);
    }
    answer
}
