//! OpenTelemetry (feature `otel`): `gemini-gateway serve --otlp-endpoint` exports one span per
//! request and per attempt to an OTLP/HTTP receiver — here, one in the test process that
//! decodes what arrives (protobuf, as a collector would) — with the GenAI semantic conventions
//! and ours, the client's `traceparent` continued, the standard `OTEL_*` variables honoured,
//! and never a key or a token in an attribute.
#![cfg(feature = "otel")]

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

const KEY: &str = "test-key-0004";
const TOKEN: &str = "client-token-otel-0001";
const MODEL: &str = tower_gemini::mock::DEMO_MODEL;
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
/// A client that asks not to be sampled: recorded all the same.
const HIDDEN_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

/// What the receiver got: every span, and the resource's attributes.
#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    resource: Vec<(String, String)>,
    /// The `x-api-key` header of the last export (`OTEL_EXPORTER_OTLP_HEADERS`).
    api_key: Option<String>,
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attribute(span: &Span, name: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == name)
        .map(|kv| text(kv.value.as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body, the `x-api-key` header it
/// came with kept.
fn receiving(sink: Arc<Mutex<Received>>) -> axum::Router {
    axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: http::HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                if let Some(key) = headers.get("x-api-key") {
                    sink.lock().unwrap().api_key = Some(key.to_str().unwrap().to_owned());
                }
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut received = sink.lock().unwrap();
                for resource_spans in request.resource_spans {
                    if let Some(resource) = resource_spans.resource {
                        for kv in resource.attributes {
                            let value = text(kv.value.as_ref());
                            received.resource.push((kv.key, value));
                        }
                    }
                    for scope in resource_spans.scope_spans {
                        received.spans.extend(scope.spans);
                    }
                }
                ([("content-type", "application/x-protobuf")], Bytes::new())
            }
        }),
    )
}

/// A free address on 127.0.0.1: bound, read and let go (the gateway binds it a moment later).
fn free_listen() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// Wait until the gateway listens (bounded: 10 s).
async fn wait_listening(listen: &str) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway did not listen on {listen}");
}

/// Stop the gateway as an operator would (`SIGTERM`; its stop flushes the spans it holds) and
/// return how it exited with what it printed — the log (stdout) and stderr, whichever were
/// piped, read whole once it stopped (a few lines).
async fn stop(mut child: std::process::Child) -> (std::process::ExitStatus, String) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let exit = child.wait().unwrap();
        let mut text = String::new();
        if let Some(mut pipe) = child.stdout.take() {
            let _ = pipe.read_to_string(&mut text);
        }
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut text);
        }
        (exit, text)
    })
    .await
    .unwrap()
}

/// That receiver on 127.0.0.1, over plain HTTP.
async fn receiver() -> (String, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received::default()));
    let app = receiving(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

/// That receiver on 127.0.0.1 over TLS, with `pki`'s server certificate, accepting only
/// clients that present a certificate of `pki`'s CA.
async fn tls_receiver(
    pki: &common::pki::Pki,
) -> (
    String,
    Arc<Mutex<Received>>,
    Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&pki.read("ca.pem")) {
        roots.add(ca.unwrap()).unwrap();
    }
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&pki.read("server.pem"))
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_slice(&pki.read("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(clients)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let received = Arc::new(Mutex::new(Received::default()));
    let app = receiving(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                // A client that fails the handshake (no certificate) gets nothing.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(tls),
                        hyper_util::service::TowerToHyperService::new(app),
                    )
                    .await;
            });
        }
    });
    (url, received, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_with_the_genai_attributes_and_the_clients_trace() {
    let mock = tower_gemini::mock::demo().start().await.unwrap();
    let (otlp, received) = receiver().await;
    let dir = std::env::temp_dir().join(format!("gateway-otel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[keys]]\nvalue = \"{KEY}\"\nproject = \"proj-big\"\n\n[gateway]\ntokens = [\"{TOKEN}\"]\n\n[gateway.cache]\n"
        ),
    )
    .unwrap();
    let listen = free_listen();
    let child = Command::new(env!("CARGO_BIN_EXE_gemini-gateway"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--upstream", &mock.url(), "--listen", &listen])
        .args(["--otlp-endpoint", &otlp])
        .env_clear()
        .env("OTEL_SERVICE_NAME", "gateway-under-test")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    // (deterministic: the cache keeps it; else it passes straight through, its length known)
    let ask = |query: &str, traceparent: Option<String>, deterministic: bool| {
        let mut request = http::Request::post(format!(
            "http://{listen}/v1beta/models/{MODEL}:generateContent{query}"
        ))
        .header("content-type", "application/json");
        if query.is_empty() {
            request = request.header("x-goog-api-key", TOKEN);
        }
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let body = if deterministic {
            r#"{"contents":[{"parts":[{"text":"trace me"}]}],"generationConfig":{"temperature":0}}"#
        } else {
            r#"{"contents":[{"parts":[{"text":"trace me too"}]}]}"#
        };
        request.body(Full::new(Bytes::from(body))).unwrap()
    };
    wait_listening(&listen).await;
    // One traced call, the same again (the cache answers it), one that passes the cache by
    // with the token in `?key=` and asks not to be sampled, one refused (a bad token).
    let calls = [
        ask("", Some(format!("00-{TRACE_ID}-{PARENT_ID}-01")), true),
        ask("", None, true),
        ask(
            &format!("?key={TOKEN}"),
            Some(format!("00-{HIDDEN_TRACE_ID}-{PARENT_ID}-00")),
            false,
        ),
    ];
    for call in calls {
        let response = http.request(call).await.unwrap();
        assert_eq!(response.status(), 200);
        let _ = response.into_body().collect().await.unwrap();
    }
    // One Google refuses: a model it does not know (the caller's mistake).
    let unknown = http::Request::post(format!(
        "http://{listen}/v1beta/models/gemini-0.0-none:generateContent"
    ))
    .header("content-type", "application/json")
    .header("x-goog-api-key", TOKEN)
    .body(Full::new(Bytes::from(
        r#"{"contents":[{"parts":[{"text":"no such model"}]}]}"#,
    )))
    .unwrap();
    let response = http.request(unknown).await.unwrap();
    assert_eq!(response.status(), 404);
    let _ = response.into_body().collect().await.unwrap();
    let refused = http
        .request(
            http::Request::get(format!("http://{listen}/v1beta/models"))
                .header("x-goog-api-key", "not-a-token-0000")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    // Bounded: the batch goes every 100 ms; 10 s at most.
    let mut spans = Vec::new();
    for _ in 0..200 {
        spans = received.lock().unwrap().spans.clone();
        let requests = spans.iter().filter(|s| s.kind == 2).count();
        if requests >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, stderr) = stop(child).await;
    std::fs::remove_dir_all(&dir).ok();

    // The server spans (kind 2): the traced call continues the client's trace.
    let servers: Vec<&Span> = spans.iter().filter(|s| s.kind == 2).collect();
    assert_eq!(servers.len(), 4, "{spans:#?}\n{stderr}");
    let traced = servers
        .iter()
        .find(|s| hex(&s.trace_id) == TRACE_ID)
        .unwrap_or_else(|| panic!("the client's trace was not continued: {servers:#?}"));
    assert_eq!(hex(&traced.parent_span_id), PARENT_ID);
    assert_eq!(traced.name, format!("generate_content {MODEL}"));
    for (name, value) in [
        ("gen_ai.provider.name", "gcp.gemini"),
        ("gen_ai.system", "gcp.gemini"),
        ("gen_ai.operation.name", "generate_content"),
        ("gen_ai.request.model", MODEL),
        ("gen_ai.response.model", MODEL),
        ("gemini.key", "…0004"),
        ("gemini.project", "proj-big"),
        ("gemini.class", "success"),
        ("gemini.cache_hit", "false"),
        ("gemini.client", "…0001"),
        ("http.response.status_code", "200"),
    ] {
        assert_eq!(
            attribute(traced, name).as_deref(),
            Some(value),
            "{name}: {traced:#?}"
        );
    }
    let used = |span: &Span, tokens: &str| -> u64 {
        attribute(span, tokens)
            .unwrap_or_else(|| panic!("no {tokens}: {span:#?}"))
            .parse()
            .unwrap()
    };
    for tokens in ["gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"] {
        assert!(used(traced, tokens) > 0, "{tokens}");
    }
    // The client that asked not to be sampled is recorded all the same, its trace continued,
    // and its answer (not kept by the cache: its length known, its body dropped by hyper at
    // its end rather than read to it) counted too.
    let hidden = servers
        .iter()
        .find(|s| hex(&s.trace_id) == HIDDEN_TRACE_ID)
        .unwrap_or_else(|| panic!("a client hid its request: {servers:#?}"));
    for tokens in ["gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"] {
        assert!(used(hidden, tokens) > 0, "{tokens}: {hidden:#?}");
    }
    assert_eq!(attribute(hidden, "gemini.client").as_deref(), Some("…0001"));
    // The repeat: a new trace of its own, answered by the cache.
    let cached = servers
        .iter()
        .find(|s| attribute(s, "gemini.cache_hit").as_deref() == Some("true"))
        .unwrap_or_else(|| panic!("no cache hit: {servers:#?}"));
    assert_ne!(hex(&cached.trace_id), TRACE_ID);
    // The refused one is not traced: a stranger does not reach the operator's traces.
    assert!(
        servers
            .iter()
            .all(|s| attribute(s, "http.response.status_code").as_deref() != Some("401")),
        "{servers:#?}"
    );
    // The failed one says how it failed; the others have no error.type.
    let failed = servers
        .iter()
        .find(|s| attribute(s, "http.response.status_code").as_deref() == Some("404"))
        .unwrap_or_else(|| panic!("no span for the unknown model: {servers:#?}"));
    assert_eq!(attribute(failed, "error.type").as_deref(), Some("caller"));
    assert_eq!(
        attribute(failed, "gen_ai.request.model").as_deref(),
        Some("gemini-0.0-none")
    );
    assert_eq!(
        servers
            .iter()
            .filter(|s| attribute(s, "error.type").is_some())
            .count(),
        1
    );

    // Below the traced call: the layers' call span and its attempt (a client span).
    let call = spans
        .iter()
        .find(|s| s.name == "gemini.request" && s.parent_span_id == traced.span_id)
        .unwrap_or_else(|| panic!("no gemini.request under the request: {spans:#?}"));
    let attempt = spans
        .iter()
        .find(|s| s.name == "gemini.attempt" && s.parent_span_id == call.span_id)
        .unwrap_or_else(|| panic!("no gemini.attempt under the call: {spans:#?}"));
    assert_eq!(attempt.kind, 3, "a client span");
    assert_eq!(hex(&attempt.trace_id), TRACE_ID);
    assert_eq!(attribute(attempt, "gemini.key").as_deref(), Some("…0004"));
    assert_eq!(
        attribute(attempt, "gemini.project").as_deref(),
        Some("proj-big")
    );

    // The standard variables: the service's name.
    let resource = received.lock().unwrap().resource.clone();
    assert!(
        resource
            .iter()
            .any(|(k, v)| k == "service.name" && v == "gateway-under-test"),
        "{resource:?}"
    );
    // Never a key or a token, in any attribute or name.
    let everything = format!("{spans:?}{resource:?}");
    assert!(!everything.contains(KEY), "a key was exported");
    assert!(!everything.contains(TOKEN), "a token was exported");
    assert!(
        !everything.contains("not-a-token"),
        "a presented token was exported"
    );
}

/// An `https://` receiver (a tracing service, a collector behind TLS) that checks its clients:
/// the gateway trusts only the CA of `OTEL_EXPORTER_OTLP_CERTIFICATE`, presents
/// `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and `_KEY`, and sends the service's API key of
/// `OTEL_EXPORTER_OTLP_HEADERS` — over TLS only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_https_receiver_that_checks_its_clients() {
    let pki = common::pki::Pki::new("otlp-https");
    let mock = tower_gemini::mock::demo().start().await.unwrap();
    let (otlp, received, _) = tls_receiver(&pki).await;
    let config = pki.path("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[keys]]\nvalue = \"{KEY}\"\nproject = \"proj-big\"\n\n[gateway]\ntokens = [\"{TOKEN}\"]\n"
        ),
    )
    .unwrap();
    let listen = free_listen();
    let child = Command::new(env!("CARGO_BIN_EXE_gemini-gateway"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--upstream", &mock.url(), "--listen", &listen])
        .env_clear()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.path("ca.pem"))
        .env(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            pki.path("client.pem"),
        )
        .env("OTEL_EXPORTER_OTLP_CLIENT_KEY", pki.path("client.key"))
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-api-key=test-otlp-service-key",
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_listening(&listen).await;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let request = http::Request::post(format!(
        "http://{listen}/v1beta/models/{MODEL}:generateContent"
    ))
    .header("content-type", "application/json")
    .header("x-goog-api-key", TOKEN)
    .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
    .body(Full::new(Bytes::from(
        r#"{"contents":[{"parts":[{"text":"trace me over tls"}]}]}"#,
    )))
    .unwrap();
    let response = http.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.into_body().collect().await.unwrap();
    // Bounded: the batch goes every 100 ms; 10 s at most.
    let mut spans = Vec::new();
    for _ in 0..200 {
        spans = received.lock().unwrap().spans.clone();
        if spans.iter().any(|s| s.kind == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (exit, stderr) = stop(child).await;
    // Stopped cleanly: the exporter's runtime was not dropped where it may not be.
    assert!(exit.success(), "{exit}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let server = spans
        .iter()
        .find(|s| s.kind == 2)
        .unwrap_or_else(|| panic!("no span reached the https receiver: {spans:#?}\n{stderr}"));
    assert_eq!(hex(&server.trace_id), TRACE_ID);
    assert_eq!(
        attribute(server, "gen_ai.request.model").as_deref(),
        Some(MODEL)
    );
    assert_eq!(
        received.lock().unwrap().api_key.as_deref(),
        Some("test-otlp-service-key")
    );
    let everything = format!("{spans:?}{stderr}");
    assert!(!everything.contains(KEY), "a key was exported or logged");
}

/// Without the CA the receiver's certificate is not trusted (it is not among the webpki
/// roots), and without a client certificate the receiver refuses the exporter: no span leaves
/// either way, and the gateway serves all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_or_unidentified_exporter_sends_nothing_and_the_gateway_serves() {
    let pki = common::pki::Pki::new("otlp-untrusted");
    let mock = tower_gemini::mock::demo().start().await.unwrap();
    let (otlp, received, connections) = tls_receiver(&pki).await;
    let config = pki.path("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[keys]]\nvalue = \"{KEY}\"\nproject = \"proj-big\"\n\n[gateway]\ntokens = [\"{TOKEN}\"]\n"
        ),
    )
    .unwrap();
    let ca = pki.path("ca.pem");
    let other_ca = pki.path("other-ca.pem");
    let cert = pki.path("client.pem");
    let key = pki.path("client.key");
    let attempts: [&[(&str, &std::path::Path)]; 3] = [
        // Another CA: the receiver's certificate does not check.
        &[
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", other_ca.as_path()),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert.as_path()),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key.as_path()),
        ],
        // No CA: the webpki roots do not know ours.
        &[
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert.as_path()),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key.as_path()),
        ],
        // No client certificate: the receiver refuses the handshake.
        &[("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.as_path())],
    ];
    for vars in attempts {
        let listen = free_listen();
        let mut command = Command::new(env!("CARGO_BIN_EXE_gemini-gateway"));
        command
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--upstream", &mock.url(), "--listen", &listen])
            .args(["--otlp-endpoint", &otlp])
            .env_clear()
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in vars {
            command.env(name, value);
        }
        let tried = connections.load(std::sync::atomic::Ordering::Relaxed);
        let child = command.spawn().unwrap();
        wait_listening(&listen).await;
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let request = http::Request::post(format!(
            "http://{listen}/v1beta/models/{MODEL}:generateContent"
        ))
        .header("content-type", "application/json")
        .header("x-goog-api-key", TOKEN)
        .body(Full::new(Bytes::from(
            r#"{"contents":[{"parts":[{"text":"untraced"}]}]}"#,
        )))
        .unwrap();
        let response = http.request(request).await.unwrap();
        assert_eq!(response.status(), 200, "{vars:?}");
        let _ = response.into_body().collect().await.unwrap();
        // The gateway's stop flushes what it holds: an export that could go would go now.
        let (exit, stderr) = stop(child).await;
        assert!(exit.success(), "{exit}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            received.lock().unwrap().spans.is_empty(),
            "spans went out with {vars:?}"
        );
        // An export was tried (and refused), and the operator was told why, once.
        assert!(
            connections.load(std::sync::atomic::Ordering::Relaxed) > tried,
            "no export was tried with {vars:?}: {stderr}"
        );
        assert_eq!(
            stderr.matches("spans could not be sent").count(),
            1,
            "{vars:?}: {stderr}"
        );
    }
}
