//! Uploaded files through the stack (issue #25), over real HTTP to the mock with three
//! projects, each keeping its own files (a foreign, expired or deleted one is Google's 403 "You
//! do not have permission to access the File … or it may not exist"): a file uploaded through
//! the pool (the resumable protocol, whose steps carry no key of their own) is used in 20
//! calls on its project only while other calls rotate; a cache made from it goes to its
//! project; a file and a cache of different projects are refused with both named; one
//! uploaded elsewhere is found by probing without blaming a key; a tenant cannot use, read,
//! delete or upload into another's; the pin survives a restart through the state file.

mod common;

use std::collections::HashSet;

use bytes::Bytes;
use common::{served_by, text};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_gemini::context::Tenant;
use tower_gemini::mock::{MockGemini, MockServer};
use tower_gemini::state::StateFile;
use tower_gemini::{BoxGemini, ErrorKind, KeyPool, KeySpec, stack};

const MODEL: &str = "gemini-2.5-flash";
const KEYS: [(&str, &str); 3] = [
    ("proj-a", "test-key-files-0000a"),
    ("proj-b", "test-key-files-0000b"),
    ("proj-c", "test-key-files-0000c"),
];

async fn mock() -> MockServer {
    let mut builder = MockGemini::builder().implicit_cache_min_tokens(100);
    for (project, key) in KEYS {
        builder = builder.project(project, |p| p.key(key));
    }
    builder.start().await.unwrap()
}

fn pool() -> KeyPool {
    let mut builder = KeyPool::builder();
    for (project, key) in KEYS {
        builder = builder.key_with(KeySpec::new(key).project(project));
    }
    builder.build().unwrap()
}

fn gemini(pool: &KeyPool) -> BoxGemini {
    stack(pool).boxed(common::client())
}

fn request(method: Method, url: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap()
}

fn json_request(method: Method, url: &str, body: Value) -> Request<Full<Bytes>> {
    request(method, url, Bytes::from(body.to_string()))
}

fn as_tenant(mut request: Request<Full<Bytes>>, tenant: Option<&str>) -> Request<Full<Bytes>> {
    if let Some(tenant) = tenant {
        request.extensions_mut().insert(Tenant::new(tenant));
    }
    request
}

/// The resumable upload, as the SDKs make it: a start with the file's metadata, then the
/// bytes to the session URL the answer names (`upload, finalize`). Returns the file and the
/// key that served the start.
async fn upload(
    gemini: &BoxGemini,
    mock: &MockServer,
    bytes: &[u8],
    tenant: Option<&str>,
) -> (Value, String) {
    let mut start = json_request(
        Method::POST,
        &format!("{}/upload/v1beta/files", mock.url()),
        json!({ "file": { "display_name": "manual" } }),
    );
    let headers = start.headers_mut();
    headers.insert("x-goog-upload-protocol", "resumable".parse().unwrap());
    headers.insert("x-goog-upload-command", "start".parse().unwrap());
    headers.insert(
        "x-goog-upload-header-content-length",
        bytes.len().to_string().parse().unwrap(),
    );
    headers.insert(
        "x-goog-upload-header-content-type",
        "text/plain".parse().unwrap(),
    );
    let started = gemini
        .clone()
        .oneshot(as_tenant(start, tenant))
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::OK);
    let home = served_by(&started);
    let session = started.headers()["x-goog-upload-url"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = text(started).await;
    let mut step = request(Method::POST, &session, Bytes::copy_from_slice(bytes));
    let headers = step.headers_mut();
    headers.insert("x-goog-upload-command", "upload, finalize".parse().unwrap());
    headers.insert("x-goog-upload-offset", "0".parse().unwrap());
    let done = gemini
        .clone()
        .oneshot(as_tenant(step, tenant))
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    assert_eq!(done.headers()["x-goog-upload-status"], "final");
    let file: Value = serde_json::from_str(&text(done).await).unwrap();
    (file["file"].clone(), home)
}

fn asking(mock: &MockServer, file_uri: &str, question: &str) -> Request<Full<Bytes>> {
    json_request(
        Method::POST,
        &mock.model_url(MODEL, "generateContent"),
        json!({ "contents": [{ "role": "user", "parts": [
            { "fileData": { "mimeType": "text/plain", "fileUri": file_uri } },
            { "text": question }
        ] }] }),
    )
}

/// Every key active, none cooling, no failure counted.
fn assert_no_key_blamed(pool: &KeyPool) {
    for key in pool.snapshot().keys {
        assert_eq!(key.state, tower_gemini::pool::KeyState::Active, "{key:?}");
        assert!(
            key.models.iter().all(|m| m.cooling_until.is_none()),
            "{key:?}"
        );
        assert_eq!(key.counters.consecutive_failures, 0, "{key:?}");
    }
}

#[tokio::test]
async fn an_uploaded_file_is_used_in_20_calls_on_its_project_while_others_rotate() {
    let mock = mock().await;
    let pool = pool();
    let gemini = gemini(&pool);
    let (file, home) = upload(&gemini, &mock, &[b'x'; 4096], None).await;
    let name = file["name"].as_str().unwrap();
    let uri = file["uri"].as_str().unwrap();
    assert!(pool.owner_of(name).is_some(), "learned from the finalize");
    let mut elsewhere = HashSet::new();
    for q in 0..20 {
        let answer = gemini
            .clone()
            .oneshot(asking(&mock, uri, &format!("question {q}")))
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "question {q}");
        assert_eq!(served_by(&answer), home, "question {q}");
        let _ = text(answer).await;
        let plain = gemini
            .clone()
            .oneshot(common::generate(&mock, MODEL, "no file"))
            .await
            .unwrap();
        elsewhere.insert(served_by(&plain));
        let _ = text(plain).await;
    }
    // Pinned calls leave the round robin alone: the others rotate over every project.
    assert_eq!(elsewhere.len(), 3, "other calls rotate: {elsewhere:?}");
    // The short form names it too; its metadata is read on its project.
    let short = gemini
        .clone()
        .oneshot(asking(&mock, name, "short"))
        .await
        .unwrap();
    assert_eq!(served_by(&short), home);
    let at = format!("{}/v1beta/{name}", mock.url());
    let got = gemini
        .clone()
        .oneshot(request(Method::GET, &at, Bytes::new()))
        .await
        .unwrap();
    assert_eq!((got.status(), served_by(&got)), (StatusCode::OK, home));
    let _ = text(got).await;
    assert_eq!(mock.stats().responses_with_status(403), 0);
    // Deleted: the pin is forgotten, and a later use gets Google's own 403 (probed, blaming
    // no key).
    let deleted = gemini
        .clone()
        .oneshot(request(Method::DELETE, &at, Bytes::new()))
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    assert!(pool.owner_of(name).is_none(), "a delete forgets the pin");
    let gone = gemini
        .clone()
        .oneshot(asking(&mock, uri, "still there?"))
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::FORBIDDEN);
    assert!(text(gone).await.contains("permission to access the File"));
    assert_no_key_blamed(&pool);
}

/// A cache made from a file goes to the file's project; a request naming a file of one
/// project and a cache of another is refused, naming both, with nothing sent.
#[tokio::test]
async fn a_cache_follows_its_file_and_mixed_projects_are_refused() {
    let mock = mock().await;
    let pool = pool();
    let gemini = gemini(&pool);
    let (file, home) = upload(&gemini, &mock, b"the manual", None).await;
    let uri = file["uri"].as_str().unwrap();
    let cache_body = |with_file: bool| {
        let mut parts = vec![json!({ "text": "The manual. ".repeat(60) })];
        if with_file {
            parts.push(json!({ "file_data": { "file_uri": uri, "mime_type": "text/plain" } }));
        }
        json!({ "model": format!("models/{MODEL}"), "ttl": "600s",
                "contents": [{ "role": "user", "parts": parts }] })
    };
    let caches = format!("{}/v1beta/cachedContents", mock.url());
    let made = gemini
        .clone()
        .oneshot(json_request(Method::POST, &caches, cache_body(true)))
        .await
        .unwrap();
    assert_eq!(
        (made.status(), served_by(&made)),
        (StatusCode::OK, home.clone())
    );
    let _ = text(made).await;
    // A cache on another project (made until one lands elsewhere), then both named at once.
    let other = loop {
        let made = gemini
            .clone()
            .oneshot(json_request(Method::POST, &caches, cache_body(false)))
            .await
            .unwrap();
        let by = served_by(&made);
        let json: Value = serde_json::from_str(&text(made).await).unwrap();
        if by != home {
            break json["name"].as_str().unwrap().to_owned();
        }
    };
    let sent = mock.stats().total_requests();
    let both = json_request(
        Method::POST,
        &mock.model_url(MODEL, "generateContent"),
        json!({ "cachedContent": other, "contents": [{ "role": "user", "parts": [
            { "fileData": { "mimeType": "text/plain", "fileUri": uri } }, { "text": "both" }
        ] }] }),
    );
    let error = gemini.clone().oneshot(both).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::BadRequest, "{error}");
    let message = error.to_string();
    assert!(message.contains(&other) && message.contains(file["name"].as_str().unwrap()));
    assert_eq!(mock.stats().total_requests(), sent, "nothing sent");
    assert_eq!(mock.stats().responses_with_status(403), 0);
}

/// A file uploaded with a key outside the pool is found by probing (one GET per project at
/// most); the probes' 403s blame no key.
#[tokio::test]
async fn a_file_uploaded_elsewhere_is_found_by_probing() {
    let mock = mock().await;
    let pool = pool();
    let gemini = gemini(&pool);
    let only_b = {
        let mut builder = KeyPool::builder();
        builder = builder.key_with(KeySpec::new(KEYS[1].1).project(KEYS[1].0));
        builder.build().unwrap()
    };
    let (file, _) = upload(&self::gemini(&only_b), &mock, b"elsewhere", None).await;
    let uri = file["uri"].as_str().unwrap();
    for q in 0..3 {
        let answer = gemini
            .clone()
            .oneshot(asking(&mock, uri, &format!("q{q}")))
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(served_by(&answer), "…000b");
        let _ = text(answer).await;
    }
    assert!(mock.stats().responses_with_status(403) <= 2);
    assert_eq!(
        pool.owner_of(file["name"].as_str().unwrap())
            .unwrap()
            .project_name(),
        "proj-b"
    );
    assert_no_key_blamed(&pool);
}

/// A tenant's file and upload session are its own: another tenant's use, read, delete of the
/// file, or upload into the session, is `NotFound` with nothing sent.
#[tokio::test]
async fn a_tenant_cannot_touch_another_tenants_file_or_upload() {
    let mock = mock().await;
    let pool = pool();
    let gemini = gemini(&pool);
    let (file, _) = upload(&gemini, &mock, b"alice's", Some("alice")).await;
    let name = file["name"].as_str().unwrap();
    let uri = file["uri"].as_str().unwrap();
    // An open session of alice's.
    let mut start = json_request(
        Method::POST,
        &format!("{}/upload/v1beta/files", mock.url()),
        json!({ "file": {} }),
    );
    start
        .headers_mut()
        .insert("x-goog-upload-protocol", "resumable".parse().unwrap());
    start
        .headers_mut()
        .insert("x-goog-upload-command", "start".parse().unwrap());
    let started = gemini
        .clone()
        .oneshot(as_tenant(start, Some("alice")))
        .await
        .unwrap();
    let session = started.headers()["x-goog-upload-url"]
        .to_str()
        .unwrap()
        .to_owned();
    let sent = mock.stats().total_requests();
    let at = format!("{}/v1beta/{name}", mock.url());
    let mut into_session = request(Method::POST, &session, Bytes::from_static(b"mallory's"));
    into_session
        .headers_mut()
        .insert("x-goog-upload-command", "upload, finalize".parse().unwrap());
    for attempt in [
        asking(&mock, uri, "mine now?"),
        request(Method::GET, &at, Bytes::new()),
        request(Method::DELETE, &at, Bytes::new()),
        into_session,
    ] {
        let error = gemini
            .clone()
            .oneshot(as_tenant(attempt, Some("mallory")))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");
    }
    assert_eq!(mock.stats().total_requests(), sent);
    let mine = gemini
        .clone()
        .oneshot(as_tenant(asking(&mock, uri, "mine"), Some("alice")))
        .await
        .unwrap();
    assert_eq!(mine.status(), StatusCode::OK);
}

/// The pins are saved with the state: after a restart (probing off), the file's uses still go
/// to its project.
#[tokio::test]
async fn a_files_pin_survives_a_restart() {
    let mock = mock().await;
    let dir = std::env::temp_dir().join(format!("files-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = StateFile::new(dir.join("state.json"));
    let before = pool();
    let (file, home) = upload(&gemini(&before), &mock, b"kept", None).await;
    state.save(&before).unwrap();
    let after = pool();
    state.restore(&after).unwrap();
    let gemini = stack(&after)
        .affinity(tower_gemini::affinity::AffinityLayer::new(&after).probe_unknown(false))
        .boxed(common::client());
    for q in 0..6 {
        let answer = gemini
            .clone()
            .oneshot(asking(
                &mock,
                file["uri"].as_str().unwrap(),
                &format!("{q}"),
            ))
            .await
            .unwrap();
        assert_eq!(served_by(&answer), home);
        let _ = text(answer).await;
    }
    assert_eq!(mock.stats().responses_with_status(403), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `list_everywhere` lists the files of every project (Google lists only the asking key's
/// project), each with its project.
#[tokio::test]
async fn files_are_listed_in_every_project() {
    let mock = mock().await;
    let pool = pool();
    let gemini = gemini(&pool);
    let mut made = std::collections::HashMap::new();
    for i in 0..4 {
        let (file, _) = upload(&gemini, &mock, format!("file {i}").as_bytes(), None).await;
        let name = file["name"].as_str().unwrap().to_owned();
        let owner = pool.owner_of(&name).unwrap().project_name().to_owned();
        made.insert(name, owner);
    }
    let projects: HashSet<&String> = made.values().collect();
    assert!(projects.len() >= 2, "uploads rotate: {made:?}");
    let uri = format!("{}/v1beta/files?pageSize=1", mock.url())
        .parse()
        .unwrap();
    let all = tower_gemini::affinity::list_everywhere(gemini, &pool, uri)
        .await
        .unwrap();
    let listed: std::collections::HashMap<String, String> = all["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_owned(),
                f["project"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        listed, made,
        "every file, once, with its project (one a page)"
    );
}
