//! A 100 MiB file uploaded through `gemini-gateway` in one step streams through: the memory
//! live in the process (gateway, mock and client together, counted by the allocator) grows by
//! far less than the file at any moment. The mock keeps a file's size, not its bytes, and the
//! client sends one static buffer over and over.
#![cfg(feature = "gateway")]

mod common;

use bytes::Bytes;
use common::alloc::{Counting, live_bytes, peak_bytes, reset_peak};
use common::gateway::{config_from, start};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tower_gemini::mock::MockGemini;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const TOKEN: &str = "client-token-upload-01";
const MIB: usize = 1 << 20;
const FILE_MIB: usize = 100;
/// What the upload may add to the live memory at its peak.
const BOUND: isize = 16 * MIB as isize;

static CHUNK: [u8; MIB] = [b'x'; MIB];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_upload_streams_through_within_its_bound() {
    let mock = MockGemini::builder()
        .project("proj-a", |p| p.key("test-key-upload-0001"))
        .project("proj-b", |p| p.key("test-key-upload-0002"))
        .start()
        .await
        .unwrap();
    let upstream = mock.url();
    let gateway = start(config_from(&[
        (
            "GEMINI_API_KEY",
            "test-key-upload-0001,test-key-upload-0002",
        ),
        ("GATEWAY_TOKENS", TOKEN),
        ("LLM_API_ENDPOINT", upstream.as_str()),
    ]))
    .await;
    let size = (FILE_MIB * MIB).to_string();
    let start = Request::builder()
        .method(Method::POST)
        .uri(format!("{}/upload/v1beta/files", gateway.base))
        .header("x-goog-api-key", TOKEN)
        .header("content-type", "application/json")
        .header("x-goog-upload-protocol", "resumable")
        .header("x-goog-upload-command", "start")
        .header("x-goog-upload-header-content-length", size.as_str())
        .body(Full::new(Bytes::from_static(
            br#"{"file":{"display_name":"big"}}"#,
        )))
        .unwrap();
    let started = common::client().request(start).await.unwrap();
    assert_eq!(started.status(), StatusCode::OK);
    let session = started.headers()["x-goog-upload-url"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = common::text(started).await;

    // One step of 100 MiB, streamed from a static buffer.
    let chunks = futures_util::stream::iter(
        (0..FILE_MIB)
            .map(|_| Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from_static(&CHUNK)))),
    );
    let body = StreamBody::new(chunks);
    let step = Request::builder()
        .method(Method::POST)
        .uri(session)
        .header("content-length", size.as_str())
        .header("x-goog-upload-command", "upload, finalize")
        .header("x-goog-upload-offset", "0")
        .body(body)
        .unwrap();
    let streaming: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let before = live_bytes();
    reset_peak();
    let done = streaming.request(step).await.unwrap();
    let grew = peak_bytes() - before;
    assert_eq!(done.status(), StatusCode::OK);
    let body = done.into_body().collect().await.unwrap().to_bytes();
    let file: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(file["file"]["sizeBytes"], size.as_str());
    println!(
        "a {FILE_MIB} MiB upload raised the live memory by at most {:.1} MiB",
        grew as f64 / MIB as f64
    );
    assert!(
        grew < BOUND,
        "the upload held {grew} bytes at its peak (bound {BOUND})"
    );
}
