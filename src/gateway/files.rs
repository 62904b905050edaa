//! Uploaded files through the gateway: the resumable upload under `/upload/v1beta/files` and
//! `/upload/v1/files`, and get, delete and list under `/v1beta/files` and `/v1/files`.
//!
//! - **Start.** `POST /upload/…/files` with `X-Goog-Upload-Protocol: resumable` and
//!   `X-Goog-Upload-Command: start` goes through the stack like any request (a key of a project
//!   chosen as usual). Google's answer names the session in `X-Goog-Upload-URL`, which carries
//!   no key and is bound to that project; the stack pins the session to the project and to the
//!   client, and the gateway rewrites the header to its own address (same path and query), so
//!   the SDKs send the bytes here rather than straight to Google.
//! - **Upload.** The steps (`upload`, `upload, finalize`) stream to Google's session URL as they
//!   arrive — never held whole, one read buffer of room in the body memory at a time, and an
//!   idle client is cut after 30 s without a byte. They carry no key, as at Google: the session
//!   is the authority. A client token on a step must be the one that started the session;
//!   another client's step is a 404 with nothing sent. The last step's answer names the file,
//!   learned with its project, its client and its `expirationTime`.
//! - **Use.** A file is the client's own: another client's get, delete, or use of it
//!   (`fileData.fileUri` in `generateContent`, a cache's contents, an interaction's `uri`) is a
//!   404 with nothing sent, and every use goes to the file's project. The list is the client's
//!   own files only.
//!
//! A client chooses no file name (Google's `file.name` on the start): a name is unique in a
//! project, so one client's choice could collide with — and reveal — another's.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;

use super::Shared;
use super::proxy::{BodyRoom, forward};
use super::reply::{self, Family};
use crate::Model;
use crate::affinity::reference;

/// Google's largest file (2 GB).
const MAX_FILE: u64 = 2 << 30;
/// The most files (and uploads under way) one client may hold at once.
const MAX_FILES_PER_CLIENT: usize = 100;
/// The most bytes of files (and uploads under way) one client may hold at once: a fifth of a
/// project's 20 GB.
const MAX_BYTES_PER_CLIENT: u64 = 4 << 30;
/// How long an upload step may go without a byte from the client.
const IDLE: Duration = Duration::from_secs(30);
/// Room an upload step holds in the body memory while it streams (KiB): about one read
/// buffer, for the bytes in flight.
const STEP_ROOM_KIB: usize = 256;
/// Headers of an upload step passed on to Google.
static STEP_HEADERS: [http::HeaderName; 4] = [
    http::HeaderName::from_static("content-type"),
    http::HeaderName::from_static("content-length"),
    http::HeaderName::from_static("x-goog-upload-command"),
    http::HeaderName::from_static("x-goog-upload-offset"),
];

/// A client's files (and the uploads it has under way).
const FILES: super::owned::Owned = super::owned::Owned {
    prefix: "files/",
    field: "files",
    noun: "file",
    most: MAX_FILES_PER_CLIENT,
    also: Some("uploads/"),
};

/// `POST /upload/v1beta/files` and `/upload/v1/files`: a start, or (with `upload_id`) a step.
pub(crate) async fn upload_route(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let id = reference::upload_id_in(request.uri().query()).map(str::to_owned);
    match id {
        Some(id) => step(&shared, request, &id).await,
        None => start(&shared, request).await,
    }
}

/// `/v1/files` and `/v1/files/{id}` (and the same under `/v1beta`): list, get and delete.
pub(crate) async fn route(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    serve(&shared, request).await
}

/// A files call, checked, then forwarded through the stack under the same path (a list is
/// answered here, from the client's own files).
pub(crate) async fn serve(shared: &Shared, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let served = path.strip_prefix("/download").unwrap_or(&path);
    let rest = served
        .strip_prefix("/v1beta/files")
        .or_else(|| served.strip_prefix("/v1/files"))
        .unwrap_or("/");
    let id = rest.strip_prefix('/').unwrap_or(rest);
    let download = id
        .strip_suffix(":download")
        .filter(|id| reference::is_id(id));
    match (request.method(), id) {
        (&Method::GET, "") => super::owned::list(shared, request, &path, &FILES).await,
        (&Method::GET | &Method::DELETE, id) if reference::is_id(id) && served == path => {
            forward(shared, Family::Native, request, path, None).await
        }
        // A generated file (a batch's results): the client's own only.
        (&Method::GET, _) if download.is_some() => {
            forward(shared, Family::Native, request, path, None).await
        }
        (method, _) => reply::client_error(
            Family::Native,
            StatusCode::NOT_FOUND,
            &format!(
                "the gateway does not serve {method} {}: it serves the resumable upload (POST /upload/v1beta/files), GET /v1beta/files, GET and DELETE /v1beta/files/{{id}}, GET /v1beta/files/{{id}}:download (and the same under /v1)",
                crate::model::shorten(&path)
            ),
        ),
    }
}

/// A start: checked, sent through the stack, its session URL rewritten to this gateway.
async fn start(shared: &Shared, request: Request) -> Response {
    if let Err(problem) = check_start(request.headers()) {
        return reply::client_error(Family::Native, StatusCode::BAD_REQUEST, &problem);
    }
    if let Some(full) = super::owned::at_limit(shared, &request, &FILES) {
        return full;
    }
    if let Some(full) = over_bytes(shared, &request) {
        return full;
    }
    let Some(base) = own_base(&request) else {
        return reply::client_error(
            Family::Native,
            StatusCode::BAD_REQUEST,
            "the request's Host header is not a plain host[:port]: the upload's session URL is made from it",
        );
    };
    let path = request.uri().path().to_owned();
    let mut response = forward(
        shared,
        Family::Native,
        request,
        path,
        Some(Box::new(check_metadata)),
    )
    .await;
    rewrite_session_url(&mut response, &base);
    response
}

/// A 429 if the file the start declares would take the client past [`MAX_BYTES_PER_CLIENT`]
/// (its files and uploads under way counted by their sizes).
fn over_bytes(shared: &Shared, request: &Request) -> Option<Response> {
    let tenant = super::owned::tenant_of(request)?;
    let declared = crate::affinity::upload::declared_size(request);
    let pool = shared.live().pool.clone();
    let held: u64 = ["files/", "uploads/"]
        .iter()
        .flat_map(|prefix| pool.records_of_tenant(&tenant, prefix))
        .map(|record| record.tokens)
        .fold(0, u64::saturating_add);
    (held.saturating_add(declared) > MAX_BYTES_PER_CLIENT).then(|| {
        reply::client_error(
            Family::Native,
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "this client's files hold {held} bytes; with this one they would pass {MAX_BYTES_PER_CLIENT} (a fifth of a project's storage): delete one before uploading another"
            ),
        )
    })
}

/// The start's headers: the resumable protocol (as the google-genai SDKs send), and a declared
/// size within Google's limit (required: it counts against the client's bytes).
fn check_start(headers: &http::HeaderMap) -> Result<(), String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let resumable =
        header("x-goog-upload-protocol").is_some_and(|p| p.eq_ignore_ascii_case("resumable"));
    let starts = header("x-goog-upload-command").is_some_and(|c| c.eq_ignore_ascii_case("start"));
    if !resumable || !starts {
        return Err("the gateway takes resumable uploads: send X-Goog-Upload-Protocol: resumable and X-Goog-Upload-Command: start (as the google-genai SDKs do), then the bytes to the X-Goog-Upload-URL of the answer".to_owned());
    }
    match header("x-goog-upload-header-content-length").map(str::parse::<u64>) {
        Some(Ok(size)) if size <= MAX_FILE => Ok(()),
        Some(Ok(_)) => Err(format!("a file is at most {MAX_FILE} bytes (2 GB)")),
        _ => Err(
            "X-Goog-Upload-Header-Content-Length must be the file's size in bytes (the SDKs send it)"
                .to_owned(),
        ),
    }
}

/// A start's body (`{"file":{"display_name":…}}`, or none): a JSON object whose file names no
/// `name` (see the module docs).
fn check_metadata(body: Bytes) -> Result<(Bytes, Option<Model>), String> {
    if body.is_empty() {
        return Ok((body, None));
    }
    crate::model::count_body_parse();
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("the request body is not JSON: {e}"))?;
    if !json.is_object() {
        return Err("the request body must be a JSON object, such as {\"file\": {\"display_name\": \"report\"}}".to_owned());
    }
    if json
        .get("file")
        .is_some_and(|file| file.get("name").is_some())
    {
        return Err("a file's name is chosen by Google through this gateway: send \"display_name\" instead of \"name\"".to_owned());
    }
    Ok((body, None))
}

/// This gateway's address as the client reached it (`X-Forwarded-Proto`/`-Host` from a proxy in
/// front, else `Host`): where the session URL sends the bytes. `None` for a host that is not
/// plain.
fn own_base(request: &Request) -> Option<String> {
    let headers = request.headers();
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let host = text("x-forwarded-host")
        .or_else(|| text("host"))
        .or_else(|| request.uri().authority().map(|a| a.as_str()))?;
    let plain = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    let scheme = match text("x-forwarded-proto") {
        Some(proto) if proto.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    plain.then(|| format!("{scheme}://{host}"))
}

/// Google's `X-Goog-Upload-URL` with this gateway's address before its path and query.
fn rewrite_session_url(response: &mut Response, base: &str) {
    let headers = response.headers_mut();
    let Some(url) = headers
        .get(crate::affinity::reference::UPLOAD_URL)
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    let Ok(uri) = url.parse::<http::Uri>() else {
        headers.remove(crate::affinity::reference::UPLOAD_URL);
        return;
    };
    // The session and the protocol only: whatever else Google's query carries (a `key=`, had
    // the key been sent in the query) stays here.
    let query: Vec<&str> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| pair.starts_with("upload_id=") || pair.starts_with("upload_protocol="))
        .collect();
    let path = format!("{}?{}", uri.path(), query.join("&"));
    match HeaderValue::from_str(&format!("{base}{path}")) {
        Ok(value) => {
            headers.insert(crate::affinity::reference::UPLOAD_URL, value);
        }
        Err(_) => {
            headers.remove(crate::affinity::reference::UPLOAD_URL);
        }
    }
}

/// An upload step: the session must be one this gateway opened (and the client's own, when a
/// token is sent); the bytes stream to Google's session URL; the file is learned at the end.
async fn step(shared: &Shared, request: Request, id: &str) -> Response {
    if !reference::is_upload_id(id) {
        return step_error(StatusCode::NOT_FOUND, "no such upload session");
    }
    let live = shared.live();
    let session = reference::upload(id);
    let record = live.pool.pin_record(&session).await;
    let scope = super::owned::tenant_of(&request);
    let Some(record) =
        record.filter(|r| scope.is_none() || r.tenant.as_deref() == scope.as_deref())
    else {
        return step_error(
            StatusCode::NOT_FOUND,
            "no such upload session: it was not started with this client's credentials, or it has ended",
        );
    };
    // The room counts against the starter's share, token or not: a client cannot escape its
    // share by sending its steps without one.
    let starter = record
        .tenant
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
        .map(super::ClientScope);
    let mut room = BodyRoom::new(shared, starter);
    let deadline = tokio::time::Instant::now() + IDLE;
    if let Err(why) = room.grow_to(shared, STEP_ROOM_KIB, deadline).await {
        let mut busy = why.reply(shared, Family::Native);
        mark_final(&mut busy);
        return busy;
    }
    let (parts, body) = request.into_parts();
    // Only the session checked above, whatever else the query repeats.
    let query = format!("upload_id={id}&upload_protocol=resumable");
    let uri = format!("{}{}?{query}", shared.upstream, parts.uri.path());
    let body = http_body_util::Limited::new(
        tower_http::timeout::TimeoutBody::new(IDLE, body),
        usize::try_from(MAX_FILE).unwrap_or(usize::MAX),
    );
    let mut upstream = http::Request::new(Body::new(body));
    *upstream.method_mut() = Method::POST;
    let Ok(uri) = uri.parse() else {
        return step_error(StatusCode::BAD_REQUEST, "malformed upload URL");
    };
    *upstream.uri_mut() = uri;
    super::proxy::copy_headers(&parts.headers, upstream.headers_mut(), &STEP_HEADERS);
    let answer = match shared.uploads.request(upstream).await {
        Ok(answer) => answer,
        Err(error) => {
            tracing::info!(error = %error, "upload step not delivered");
            return step_error(
                StatusCode::BAD_GATEWAY,
                "the upload step did not reach Google (or the client's bytes stopped): query the session's offset and resume",
            );
        }
    };
    drop(room);
    learn_file(&live.pool, &session, record, answer)
}

/// The step's answer, passed back; the file its last step made is learned as it streams.
fn learn_file(
    pool: &crate::KeyPool,
    session: &str,
    record: crate::state::PinRecord,
    answer: http::Response<hyper::body::Incoming>,
) -> Response {
    use crate::affinity::learn::{Kind, Learn, LearnBody};
    let (mut head, body) = answer.into_parts();
    for name in &super::proxy::HOP_BY_HOP {
        head.headers.remove(name);
    }
    let body = if head.status.is_success()
        && head
            .headers
            .get("x-goog-upload-status")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"final"))
    {
        pool.forget_pin(session);
        let now = pool.clock().now_millis();
        let record = crate::state::PinRecord {
            expires_at: now.saturating_add(48 * 3600 * 1000),
            ..record
        };
        LearnBody::learning(body, Learn::new(pool.clone(), record, Kind::File, false))
    } else {
        LearnBody::plain(body)
    };
    Response::from_parts(head, Body::new(body.map_err(axum::Error::new)))
}

/// An error for an upload step, marked final so that an SDK stops rather than retry it.
fn step_error(status: StatusCode, message: &str) -> Response {
    let mut response = reply::client_error(Family::Native, status, message);
    mark_final(&mut response);
    response
}

fn mark_final(response: &mut Response) {
    response
        .headers_mut()
        .insert("x-goog-upload-status", HeaderValue::from_static("final"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_resumable_starts_within_the_limit_are_taken() {
        let mut headers = http::HeaderMap::new();
        assert!(check_start(&headers).is_err());
        headers.insert(
            "x-goog-upload-protocol",
            HeaderValue::from_static("resumable"),
        );
        headers.insert("x-goog-upload-command", HeaderValue::from_static("start"));
        assert!(check_start(&headers).is_err(), "no size declared");
        headers.insert(
            "x-goog-upload-header-content-length",
            HeaderValue::from_static("1024"),
        );
        assert!(check_start(&headers).is_ok());
        headers.insert(
            "x-goog-upload-header-content-length",
            HeaderValue::from_static("2147483649"),
        );
        assert!(check_start(&headers).unwrap_err().contains("2 GB"));
        headers.insert(
            "x-goog-upload-header-content-length",
            HeaderValue::from_static("-1"),
        );
        assert!(check_start(&headers).is_err());
    }

    #[test]
    fn a_client_chooses_no_file_name() {
        assert!(check_metadata(Bytes::from_static(br#"{"file":{"display_name":"a"}}"#)).is_ok());
        assert!(check_metadata(Bytes::new()).is_ok());
        let named = check_metadata(Bytes::from_static(br#"{"file":{"name":"files/x"}}"#));
        assert!(named.unwrap_err().contains("display_name"));
    }

    #[test]
    fn the_session_url_points_here_and_keeps_its_query() {
        let mut response = Response::new(Body::empty());
        response.headers_mut().insert(
            "x-goog-upload-url",
            HeaderValue::from_static("https://generativelanguage.googleapis.com/upload/v1beta/files?upload_id=A-b_1&upload_protocol=resumable"),
        );
        rewrite_session_url(&mut response, "http://127.0.0.1:8080");
        assert_eq!(
            response.headers()["x-goog-upload-url"],
            "http://127.0.0.1:8080/upload/v1beta/files?upload_id=A-b_1&upload_protocol=resumable"
        );
        response.headers_mut().insert(
            "x-goog-upload-url",
            HeaderValue::from_static("https://generativelanguage.googleapis.com/upload/v1beta/files?upload_id=B&key=test-key-0001&upload_protocol=resumable"),
        );
        rewrite_session_url(&mut response, "http://gw");
        assert_eq!(
            response.headers()["x-goog-upload-url"],
            "http://gw/upload/v1beta/files?upload_id=B&upload_protocol=resumable",
            "a key in Google's query never reaches the client"
        );
    }
}
