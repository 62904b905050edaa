//! File Search stores through the stack and the gateway (issue #25), over real HTTP to the
//! mock with three projects, each keeping its own stores and files: a store is learned from its
//! create, and every call under it, and every `generateContent` whose File Search tool names it,
//! goes to its project; a file is imported into it on their common project, and a file of
//! another project is refused naming both; through the gateway, a client's store is its own.

mod common;

use bytes::Bytes;
use common::{served_by, text};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_gemini::context::Tenant;
use tower_gemini::mock::{MockGemini, MockServer};
use tower_gemini::{BoxGemini, ErrorKind, KeyPool, KeySpec, stack};

const MODEL: &str = "gemini-2.5-flash";
const KEYS: [(&str, &str); 3] = [
    ("proj-a", "test-key-store-0000a"),
    ("proj-b", "test-key-store-0000b"),
    ("proj-c", "test-key-store-0000c"),
];

async fn mock() -> MockServer {
    let mut builder = MockGemini::builder();
    for (project, key) in KEYS {
        builder = builder.project(project, |p| p.key(key));
    }
    builder.start().await.unwrap()
}

fn gemini(pool: &KeyPool) -> BoxGemini {
    stack(pool).boxed(common::client())
}

fn pool() -> KeyPool {
    let mut builder = KeyPool::builder();
    for (project, key) in KEYS {
        builder = builder.key_with(KeySpec::new(key).project(project));
    }
    builder.build().unwrap()
}

fn request(method: Method, url: &str, body: Option<Value>, tenant: &str) -> Request<Full<Bytes>> {
    let mut request = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    request.extensions_mut().insert(Tenant::new(tenant));
    request
}

async fn call(
    gemini: &BoxGemini,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, String, Value), tower_gemini::Error> {
    let answer = gemini.clone().oneshot(request).await?;
    let (status, by) = (answer.status(), served_by(&answer));
    let json = serde_json::from_str(&text(answer).await).unwrap_or(Value::Null);
    Ok((status, by, json))
}

/// Upload a small file as `tenant` (resumable, through the stack): its name and serving key.
async fn upload(gemini: &BoxGemini, mock: &MockServer, tenant: &str) -> (String, String) {
    let mut start = request(
        Method::POST,
        &format!("{}/upload/v1beta/files", mock.url()),
        Some(json!({ "file": {} })),
        tenant,
    );
    start
        .headers_mut()
        .insert("x-goog-upload-protocol", "resumable".parse().unwrap());
    start
        .headers_mut()
        .insert("x-goog-upload-command", "start".parse().unwrap());
    let started = gemini.clone().oneshot(start).await.unwrap();
    let by = served_by(&started);
    let session = started.headers()["x-goog-upload-url"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut step = Request::post(session)
        .body(Full::new(Bytes::from_static(b"notes")))
        .unwrap();
    step.headers_mut()
        .insert("x-goog-upload-command", "upload, finalize".parse().unwrap());
    step.headers_mut()
        .insert("x-goog-upload-offset", "0".parse().unwrap());
    step.extensions_mut().insert(Tenant::new(tenant));
    let (_, _, file) = call(gemini, step).await.unwrap();
    (file["file"]["name"].as_str().unwrap().to_owned(), by)
}

#[tokio::test]
async fn a_store_its_imports_and_its_searches_stay_on_its_project() {
    let mock = mock().await;
    let pool = pool();
    let gemini = gemini(&pool);
    let stores = format!("{}/v1beta/fileSearchStores", mock.url());
    let (status, home, store) = call(
        &gemini,
        request(
            Method::POST,
            &stores,
            Some(json!({ "displayName": "docs" })),
            "alice",
        ),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    let store = store["name"].as_str().unwrap().to_owned();
    assert!(pool.owner_of(&store).is_some(), "learned from the create");
    // A file on the store's project (uploaded until one lands there), imported.
    let file = loop {
        let (file, by) = upload(&gemini, &mock, "alice").await;
        if by == home {
            break file;
        }
        // A file of another project: its import is refused, naming both.
        let import = format!("{}/v1beta/{store}:importFile", mock.url());
        let sent = mock.stats().total_requests();
        let error = call(
            &gemini,
            request(
                Method::POST,
                &import,
                Some(json!({ "fileName": file })),
                "alice",
            ),
        )
        .await
        .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::BadRequest, "{error}");
        assert!(error.to_string().contains(&store) && error.to_string().contains(&file));
        assert_eq!(mock.stats().total_requests(), sent);
    };
    let import = format!("{}/v1beta/{store}:importFile", mock.url());
    let (status, by, operation) = call(
        &gemini,
        request(
            Method::POST,
            &import,
            Some(json!({ "fileName": file })),
            "alice",
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        (status, by.as_str()),
        (StatusCode::OK, home.as_str()),
        "{operation}"
    );
    let op = operation["name"].as_str().unwrap();
    assert!(op.starts_with(&format!("{store}/operations/")), "{op}");
    for path in [op.to_owned(), format!("{store}/documents"), store.clone()] {
        let url = format!("{}/v1beta/{path}", mock.url());
        let (status, by, _) = call(&gemini, request(Method::GET, &url, None, "alice"))
            .await
            .unwrap();
        assert_eq!(
            (status, by.as_str()),
            (StatusCode::OK, home.as_str()),
            "{path}"
        );
    }
    let search = json!({ "contents": [{ "parts": [{ "text": "what do the notes say?" }] }],
        "tools": [{ "fileSearch": { "fileSearchStoreNames": [store] } }] });
    let generate = mock.model_url(MODEL, "generateContent");
    for _ in 0..10 {
        let (status, by, _) = call(
            &gemini,
            request(Method::POST, &generate, Some(search.clone()), "alice"),
        )
        .await
        .unwrap();
        assert_eq!((status, by.as_str()), (StatusCode::OK, home.as_str()));
    }
    // Another tenant: nothing of it, nothing sent.
    let sent = mock.stats().total_requests();
    let error = call(
        &gemini,
        request(Method::POST, &generate, Some(search), "mallory"),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound);
    let at = format!("{}/v1beta/{store}", mock.url());
    let error = call(&gemini, request(Method::DELETE, &at, None, "mallory"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound);
    assert_eq!(mock.stats().total_requests(), sent);
    let (status, _, _) = call(
        &gemini,
        request(Method::DELETE, &format!("{at}?force=true"), None, "alice"),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(pool.owner_of(&store).is_none(), "a delete forgets the pin");
    assert_eq!(mock.stats().responses_with_status(403), 0);
}

#[cfg(feature = "gateway")]
#[tokio::test]
async fn through_the_gateway_a_clients_store_is_its_own() {
    use common::gateway::{config_from, start};
    const ALICE: &str = "client-token-alice-0001";
    const MALLORY: &str = "client-token-mallory-01";
    let mock = mock().await;
    let keys: Vec<&str> = KEYS.iter().map(|(_, k)| *k).collect();
    let keys = keys.join(",");
    let tokens = format!("{ALICE},{MALLORY}");
    let upstream = mock.url();
    let gateway = start(config_from(&[
        ("GEMINI_API_KEY", keys.as_str()),
        ("GATEWAY_TOKENS", tokens.as_str()),
        ("LLM_API_ENDPOINT", upstream.as_str()),
    ]))
    .await;
    let send = |token: &'static str, method: Method, path: String, body: Option<Value>| {
        let url = format!("{}{path}", gateway.base);
        async move {
            let request = Request::builder()
                .method(method)
                .uri(url)
                .header("x-goog-api-key", token)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(
                    body.map(|b| b.to_string()).unwrap_or_default(),
                )))
                .unwrap();
            let answer = common::client().request(request).await.unwrap();
            let status = answer.status();
            let project = answer
                .headers()
                .get("x-mock-project")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let json: Value = serde_json::from_str(&text(answer).await).unwrap_or(Value::Null);
            (status, project, json)
        }
    };
    let (status, home, store) = send(
        ALICE,
        Method::POST,
        "/v1/fileSearchStores".into(),
        Some(json!({ "displayName": "docs" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{store}");
    let store = store["name"].as_str().unwrap().to_owned();
    let search = json!({ "contents": [{ "parts": [{ "text": "?" }] }],
        "tools": [{ "fileSearch": { "fileSearchStoreNames": [store] } }] });
    let generate = format!("/v1beta/models/{MODEL}:generateContent");
    for _ in 0..5 {
        let (status, project, answer) =
            send(ALICE, Method::POST, generate.clone(), Some(search.clone())).await;
        assert_eq!(
            (status, project.as_str()),
            (StatusCode::OK, home.as_str()),
            "{answer}"
        );
    }
    let (_, _, listed) = send(ALICE, Method::GET, "/v1beta/fileSearchStores".into(), None).await;
    assert_eq!(
        listed["fileSearchStores"][0]["name"],
        store.as_str(),
        "{listed}"
    );
    let sent = mock.stats().total_requests();
    for (method, path, body) in [
        (Method::POST, generate.clone(), Some(search.clone())),
        (Method::GET, format!("/v1/{store}"), None),
        (Method::DELETE, format!("/v1/{store}"), None),
        (Method::GET, format!("/v1/{store}/documents"), None),
        (
            Method::POST,
            format!("/v1/{store}:importFile"),
            Some(json!({ "fileName": "files/x" })),
        ),
    ] {
        let (status, _, answer) = send(MALLORY, method.clone(), path.clone(), body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {answer}");
    }
    let (_, _, theirs) = send(MALLORY, Method::GET, "/v1/fileSearchStores".into(), None).await;
    assert_eq!(theirs["fileSearchStores"].as_array().map(Vec::len), Some(0));
    assert_eq!(
        mock.stats().total_requests(),
        sent,
        "nothing reached Google"
    );
    let (status, _, _) = send(
        ALICE,
        Method::POST,
        format!("/v1/{store}:uploadToFileSearchStore"),
        Some(json!({})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a direct upload is not served"
    );
    let (status, _, _) = send(
        ALICE,
        Method::DELETE,
        format!("/v1beta/{store}?force=true"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}
