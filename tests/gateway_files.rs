//! Uploaded files through `gemini-gateway` (issue #25), over real HTTP with the mock's three
//! projects: the resumable upload as the SDKs make it (the session URL rewritten to the
//! gateway, the steps sent there without a token), a file used in 20 calls on its project while
//! other calls rotate, a cache made from it; another client can neither use, read, delete,
//! list it nor upload into the session, and nothing of that reaches Google.
#![cfg(feature = "gateway")]

mod common;

use bytes::Bytes;
use common::gateway::{Gateway, config_from, start};
use common::{client, text};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tower_gemini::mock::{MockGemini, MockServer};

const ALICE: &str = "client-token-alice-0001";
const MALLORY: &str = "client-token-mallory-01";
const KEYS: [&str; 3] = [
    "test-key-gwfiles-0001",
    "test-key-gwfiles-0002",
    "test-key-gwfiles-0003",
];
const MODEL: &str = "gemini-2.5-flash";
const ADMIN: &str = "admin-token-gwfiles-01";

async fn mock() -> MockServer {
    MockGemini::builder()
        .project("proj-a", |p| p.key(KEYS[0]))
        .project("proj-b", |p| p.key(KEYS[1]))
        .project("proj-c", |p| p.key(KEYS[2]))
        .implicit_cache_min_tokens(100)
        .start()
        .await
        .unwrap()
}

async fn gateway(mock: &MockServer) -> Gateway {
    let keys = KEYS.join(",");
    let tokens = format!("{ALICE},{MALLORY}");
    let upstream = mock.url();
    start(config_from(&[
        ("GEMINI_API_KEY", keys.as_str()),
        ("GATEWAY_TOKENS", tokens.as_str()),
        ("LLM_API_ENDPOINT", upstream.as_str()),
        ("LLM_MODEL", MODEL),
        ("ADMIN_TOKEN", ADMIN),
        // Every call on its own merit here (prefix affinity would keep the plain calls on one
        // project).
        ("GATEWAY_PREFIX_AFFINITY", "false"),
    ]))
    .await
}

/// What an answer said: status, serving project, headers, body as JSON (or `Null`).
struct Answer {
    status: StatusCode,
    project: String,
    headers: HeaderMap,
    json: Value,
}

/// `method url` (a path of the gateway, or a whole URL) as `token` (none: no token) with
/// `headers` and `body`.
async fn send(
    gateway: &Gateway,
    token: Option<&str>,
    (method, url): (Method, &str),
    headers: &[(&str, &str)],
    body: Bytes,
) -> Answer {
    let url = if url.starts_with("http") {
        url.to_owned()
    } else {
        format!("{}{url}", gateway.base)
    };
    let mut request = Request::builder().method(method).uri(url);
    if let Some(token) = token {
        request = request.header("x-goog-api-key", token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client()
        .request(request.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let project = headers
        .get("x-mock-project")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = text(response).await;
    Answer {
        status,
        project,
        headers,
        json: serde_json::from_str(&body).unwrap_or(Value::Null),
    }
}

/// A start as the google-genai SDK sends it: its answer (with the session URL).
async fn start_upload(gateway: &Gateway, token: &str, size: usize) -> Answer {
    let size = size.to_string();
    send(
        gateway,
        Some(token),
        (Method::POST, "/upload/v1/files"),
        &[
            ("content-type", "application/json"),
            ("x-goog-upload-protocol", "resumable"),
            ("x-goog-upload-command", "start"),
            ("x-goog-upload-header-content-length", &size),
            ("x-goog-upload-header-content-type", "text/plain"),
        ],
        Bytes::from(json!({ "file": { "display_name": "manual" } }).to_string()),
    )
    .await
}

/// The whole resumable upload in 8-byte steps (the SDK's are 8 MiB), the steps without a
/// token as the SDK sends them to the session URL: the file and the start's project.
async fn upload(gateway: &Gateway, token: &str, bytes: &[u8]) -> (Value, String) {
    let started = start_upload(gateway, token, bytes.len()).await;
    assert_eq!(started.status, StatusCode::OK, "{}", started.json);
    let session = started.headers["x-goog-upload-url"].to_str().unwrap();
    assert!(
        session.starts_with(&format!("{}/upload/v1/files?upload_id=", gateway.base)),
        "the session URL points at the gateway: {session}"
    );
    let mut offset = 0;
    let mut last = None;
    for chunk in bytes.chunks(8) {
        let end = offset + chunk.len() == bytes.len();
        let command = if end { "upload, finalize" } else { "upload" };
        let at = offset.to_string();
        let step = send(
            gateway,
            None,
            (Method::POST, session),
            &[
                ("x-goog-upload-command", command),
                ("x-goog-upload-offset", &at),
            ],
            Bytes::copy_from_slice(chunk),
        )
        .await;
        assert_eq!(step.status, StatusCode::OK, "{}", step.json);
        let status = step.headers["x-goog-upload-status"].to_str().unwrap();
        assert_eq!(status, if end { "final" } else { "active" });
        offset += chunk.len();
        last = Some(step);
    }
    (last.unwrap().json["file"].clone(), started.project)
}

fn question(file_uri: &str, text: &str) -> Bytes {
    Bytes::from(
        json!({ "contents": [{ "role": "user", "parts": [
            { "file_data": { "mime_type": "text/plain", "file_uri": file_uri } },
            { "text": text }
        ] }] })
        .to_string(),
    )
}

const JSON: [(&str, &str); 1] = [("content-type", "application/json")];

#[tokio::test]
async fn a_clients_file_is_used_on_its_project_and_is_its_own() {
    let mock = mock().await;
    let gateway = gateway(&mock).await;
    let (file, home) = upload(&gateway, ALICE, b"the manual, in forty bytes of plain text").await;
    let name = file["name"].as_str().unwrap().to_owned();
    let uri = file["uri"].as_str().unwrap().to_owned();
    assert_eq!(file["sizeBytes"], "40");
    let generate = format!("/v1beta/models/{MODEL}:generateContent");
    let mut elsewhere = std::collections::HashSet::new();
    for q in 0..20 {
        let answer = send(
            &gateway,
            Some(ALICE),
            (Method::POST, &generate),
            &JSON,
            question(&uri, &format!("q{q}")),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
        assert_eq!(answer.project, home, "q{q}");
        let plain = send(
            &gateway,
            Some(ALICE),
            (Method::POST, &generate),
            &JSON,
            Bytes::from(common::generate_body(&format!("plain {q}"))),
        )
        .await;
        elsewhere.insert(plain.project);
    }
    assert!(elsewhere.iter().any(|p| *p != home), "{elsewhere:?}");
    // A cache made from the file goes to its project.
    let cache = json!({ "model": format!("models/{MODEL}"), "ttl": "600s",
        "contents": [{ "role": "user", "parts": [
            { "text": "The manual. ".repeat(60) },
            { "fileData": { "fileUri": uri, "mimeType": "text/plain" } }] }] });
    let made = send(
        &gateway,
        Some(ALICE),
        (Method::POST, "/v1beta/cachedContents"),
        &JSON,
        Bytes::from(cache.to_string()),
    )
    .await;
    assert_eq!(
        (made.status, made.project.clone()),
        (StatusCode::OK, home.clone()),
        "{}",
        made.json
    );
    let listed = send(
        &gateway,
        Some(ALICE),
        (Method::GET, "/v1/files"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(listed.json["files"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed.json["files"][0]["name"], name.as_str());

    // Mallory: nothing of Alice's, and nothing sent for trying.
    let sent = mock.stats().total_requests();
    let at = format!("/v1beta/{name}");
    for (method, path, body) in [
        (Method::GET, at.as_str(), Bytes::new()),
        (Method::DELETE, at.as_str(), Bytes::new()),
        (Method::POST, generate.as_str(), question(&uri, "mine now?")),
        (
            Method::POST,
            generate.as_str(),
            question(&name, "short form"),
        ),
    ] {
        let refused = send(&gateway, Some(MALLORY), (method.clone(), path), &JSON, body).await;
        assert_eq!(
            refused.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {}",
            refused.json
        );
    }
    let theirs = send(
        &gateway,
        Some(MALLORY),
        (Method::GET, "/v1/files"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(theirs.json["files"].as_array().map(Vec::len), Some(0));
    assert_eq!(
        mock.stats().total_requests(),
        sent,
        "nothing reached Google"
    );
    assert_eq!(mock.stats().responses_with_status(403), 0);

    // The status API counts Alice's file and cache, never their names.
    let status = send(
        &gateway,
        None,
        (Method::GET, "/api/keys/status"),
        &[("x-admin-token", ADMIN)],
        Bytes::new(),
    )
    .await;
    let rows = status.json["resources"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["files"], 1, "{rows:?}");
    assert_eq!(rows[0]["cachedContents"], 1, "{rows:?}");
    let id = name.strip_prefix("files/").unwrap();
    assert!(
        !status.json.to_string().contains(id),
        "no names in the status"
    );

    // Alice deletes it; it is gone for her too.
    let deleted = send(
        &gateway,
        Some(ALICE),
        (Method::DELETE, &at),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK);
    let gone = send(&gateway, Some(ALICE), (Method::GET, &at), &[], Bytes::new()).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

/// An upload session is its starter's: another client's step (with its token) is a 404 with
/// nothing sent; an unknown session is a 404 too; both marked final, so that an SDK stops.
/// A start that names the file, or is not resumable, is refused.
#[tokio::test]
async fn an_upload_session_is_its_starters() {
    let mock = mock().await;
    let gateway = gateway(&mock).await;
    let started = start_upload(&gateway, ALICE, 5).await;
    let session = started.headers["x-goog-upload-url"]
        .to_str()
        .unwrap()
        .to_owned();
    let sent = mock.stats().total_requests();
    let step = [
        ("x-goog-upload-command", "upload, finalize"),
        ("x-goog-upload-offset", "0"),
    ];
    let theirs = send(
        &gateway,
        Some(MALLORY),
        (Method::POST, &session),
        &step,
        Bytes::from_static(b"evil!"),
    )
    .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    assert_eq!(theirs.headers["x-goog-upload-status"], "final");
    let unknown = format!("{}/upload/v1/files?upload_id=nosuchsession", gateway.base);
    let none = send(
        &gateway,
        None,
        (Method::POST, &unknown),
        &step,
        Bytes::from_static(b"hello"),
    )
    .await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    assert_eq!(mock.stats().total_requests(), sent);
    // With her token, Alice finishes it.
    let mine = send(
        &gateway,
        Some(ALICE),
        (Method::POST, &session),
        &step,
        Bytes::from_static(b"hello"),
    )
    .await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.json);
    assert_eq!(mine.json["file"]["sizeBytes"], "5");

    for (headers, body) in [
        (
            vec![
                ("x-goog-upload-protocol", "resumable"),
                ("x-goog-upload-command", "start"),
            ],
            json!({ "file": { "name": "files/chosen" } }),
        ),
        (vec![("x-goog-upload-protocol", "multipart")], json!({})),
        (
            vec![
                ("x-goog-upload-protocol", "resumable"),
                ("x-goog-upload-command", "start"),
                ("x-goog-upload-header-content-length", "3000000000"),
            ],
            json!({}),
        ),
    ] {
        let refused = send(
            &gateway,
            Some(ALICE),
            (Method::POST, "/upload/v1beta/files"),
            &headers,
            Bytes::from(body.to_string()),
        )
        .await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{headers:?}");
    }
    // A client holds at most 4 GiB of files and uploads under way (declared sizes count).
    let two_gib = 2usize << 30;
    assert_eq!(
        start_upload(&gateway, MALLORY, two_gib).await.status,
        StatusCode::OK
    );
    assert_eq!(
        start_upload(&gateway, MALLORY, two_gib).await.status,
        StatusCode::OK
    );
    let third = start_upload(&gateway, MALLORY, two_gib).await;
    assert_eq!(
        third.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        third.json
    );
    assert_eq!(
        start_upload(&gateway, ALICE, 1000).await.status,
        StatusCode::OK,
        "others go on"
    );
    // Without a token, a start is refused like any request.
    let anonymous = send(
        &gateway,
        None,
        (Method::POST, "/upload/v1/files"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

/// A file name on the OpenAI-compatible routes is still refused: they check no ownership.
#[tokio::test]
async fn the_openai_routes_name_no_file() {
    let mock = mock().await;
    let gateway = gateway(&mock).await;
    let body = json!({ "model": MODEL, "messages": [{ "role": "user", "content": [
        { "type": "text", "text": "hi" },
        { "type": "file", "file": { "fileUri": "https://generativelanguage.googleapis.com/v1beta/files/x" } }
    ] }] });
    let refused = send(
        &gateway,
        Some(ALICE),
        (Method::POST, "/v1/chat/completions"),
        &JSON,
        Bytes::from(body.to_string()),
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
}

/// An upload step holds room in the body memory while it streams, counted against the client
/// that started the session even when the step carries no token: a client whose steps hold its
/// share is refused its next at once (503), and the others' requests go on.
#[tokio::test]
async fn upload_steps_count_against_their_starters_share_token_or_not() {
    let mock = mock().await;
    let keys = KEYS.join(",");
    let tokens = format!("{ALICE},{MALLORY}");
    let upstream = mock.url();
    let mut config = config_from(&[
        ("GEMINI_API_KEY", keys.as_str()),
        ("GATEWAY_TOKENS", tokens.as_str()),
        ("LLM_API_ENDPOINT", upstream.as_str()),
        ("LLM_MODEL", MODEL),
    ]);
    // 1 MiB for bodies, a quarter of it a client's: one upload step's room.
    config.body_limit = 64 * 1024;
    config.body_memory = 1 << 20;
    let gateway = start(config).await;
    let first = start_upload(&gateway, ALICE, 1000).await;
    let second = start_upload(&gateway, ALICE, 1000).await;
    let url = |answer: &Answer| {
        answer.headers["x-goog-upload-url"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    // The first step sends a byte and stalls, holding its room.
    let (bytes, stalled) = stalling_body();
    bytes
        .send(Ok(http_body::Frame::data(Bytes::from_static(b"x"))))
        .await
        .unwrap();
    let held = Request::builder()
        .method(Method::POST)
        .uri(url(&first))
        .header("x-goog-upload-command", "upload, finalize")
        .header("x-goog-upload-offset", "0")
        .body(http_body_util::StreamBody::new(stalled))
        .unwrap();
    let streaming: hyper_util::client::legacy::Client<_, http_body_util::StreamBody<_>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let holding = tokio::spawn(async move { streaming.request(held).await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let step = [
        ("x-goog-upload-command", "upload, finalize"),
        ("x-goog-upload-offset", "0"),
    ];
    let refused = send(
        &gateway,
        None,
        (Method::POST, &url(&second)),
        &step,
        Bytes::from_static(b"y"),
    )
    .await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.json
    );
    assert_eq!(refused.headers["x-goog-upload-status"], "final");
    let others = send(
        &gateway,
        Some(MALLORY),
        (
            Method::POST,
            &format!("/v1beta/models/{MODEL}:generateContent"),
        ),
        &JSON,
        Bytes::from(common::generate_body("still served")),
    )
    .await;
    assert_eq!(others.status, StatusCode::OK);
    drop(bytes);
    holding.abort();
}

/// A frame of a streamed body.
type Framed = Result<http_body::Frame<Bytes>, std::io::Error>;

/// A channel whose receiver is a body stream (tokio's mpsc, as a `Stream`).
fn stalling_body() -> (
    tokio::sync::mpsc::Sender<Framed>,
    impl futures_util::Stream<Item = Framed> + Send + 'static,
) {
    let (sender, mut receiver) = tokio::sync::mpsc::channel(4);
    let stream = futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx));
    (sender, stream)
}

/// With a response cache shared between clients, an answer over a client's file is never
/// stored: another client sending the same body (the file's URI copied) gets a 404, not the
/// first client's answer from the cache.
#[tokio::test]
async fn a_shared_cache_never_serves_an_answer_over_a_file() {
    let mock = mock().await;
    let keys = KEYS.join(",");
    let tokens = format!("{ALICE},{MALLORY}");
    let upstream = mock.url();
    let mut config = config_from(&[
        ("GEMINI_API_KEY", keys.as_str()),
        ("GATEWAY_TOKENS", tokens.as_str()),
        ("LLM_API_ENDPOINT", upstream.as_str()),
        ("LLM_MODEL", MODEL),
    ]);
    config.saving = tower_gemini::gateway::Saving {
        cache: Some(tower_gemini::cache::CacheLayer::new()),
        cache_shared: true,
        ..tower_gemini::gateway::Saving::default()
    };
    let gateway = start(config).await;
    let (file, _) = upload(&gateway, ALICE, b"alice's private notes").await;
    let uri = file["uri"].as_str().unwrap().to_owned();
    let body = Bytes::from(
        json!({ "contents": [{ "role": "user", "parts": [
            { "file_data": { "mime_type": "text/plain", "file_uri": uri } },
            { "text": "what do they say?" }] }],
            "generationConfig": { "temperature": 0 } })
        .to_string(),
    );
    let generate = format!("/v1beta/models/{MODEL}:generateContent");
    for _ in 0..2 {
        let mine = send(
            &gateway,
            Some(ALICE),
            (Method::POST, &generate),
            &JSON,
            body.clone(),
        )
        .await;
        assert_eq!(mine.status, StatusCode::OK, "{}", mine.json);
        assert_ne!(
            mine.headers.get("x-gemini-cache").map(|v| v.as_bytes()),
            Some(&b"hit"[..])
        );
    }
    let theirs = send(
        &gateway,
        Some(MALLORY),
        (Method::POST, &generate),
        &JSON,
        body,
    )
    .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND, "{}", theirs.json);
}
