//! One span per request to the APIs: `gemini-gateway`'s server span, with the attributes of
//! OpenTelemetry's GenAI semantic conventions (`gen_ai.system`, `gen_ai.operation.name`,
//! `gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.usage.input_tokens` and
//! `output_tokens`, and `error.type` on a failure: Google's answer's class, else the status)
//! and ours (`gemini.key` — a fingerprint —, `gemini.project`, `gemini.class`,
//! `gemini.cache_hit`, `gemini.fallback`, `gemini.client` — the token's fingerprint). It lasts
//! until the answer's last byte (a stream's usage comes with its end); the layers' `gemini.request`
//! and `gemini.attempt` spans are its children.
//!
//! A DEBUG span: disabled — costing one check — unless a subscriber wants it (with feature
//! `otel`, the OTLP exporter does; the console log at INFO does not). Never a key or a token in
//! a field.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tracing::Instrument;
use tracing::field::Empty;

use crate::cost::CostReport;

/// The GenAI operation a path is (`None`: not a model call, such as a file's listing, or an
/// interaction read or deleted).
fn operation(method: &http::Method, path: &str) -> Option<&'static str> {
    if path.ends_with("/chat/completions") {
        Some("chat")
    } else if path.ends_with(":generateContent") || path.ends_with(":streamGenerateContent") {
        Some("generate_content")
    } else if path.ends_with("/embeddings")
        || path.ends_with(":embedContent")
        || path.ends_with(":batchEmbedContents")
    {
        Some("embeddings")
    } else if method == http::Method::POST
        && (path == "/v1beta/interactions" || path == "/v1/interactions")
    {
        Some("invoke_agent")
    } else {
        None
    }
}

/// The model named in `path`, if it is a plausible model name (a client's junk is not a span
/// name).
fn model_of(path: &str) -> Option<&str> {
    crate::model::model_in_path(path).filter(|m| crate::model::check_name(m).is_ok())
}

/// The APIs a span may be named by; any other path is `other`.
const APIS: &[&str] = &[
    "models",
    "files",
    "cachedContents",
    "batches",
    "fileSearchStores",
    "interactions",
    "operations",
    "chat",
    "embeddings",
];

/// Longest `url.path` recorded (a path may be 64 KiB; the exporter keeps what it is given).
const MAX_PATH: usize = 256;

/// The API of `path` (`/v1beta/files/abc` → `/v1beta/files`), from a fixed list: never a
/// resource's name or a client's junk (a span name is a low-cardinality label).
fn api_of(path: &str) -> String {
    let mut segments = path.trim_start_matches('/').split('/');
    let first = segments.next().unwrap_or_default();
    let second = segments
        .next()
        .unwrap_or_default()
        .split(':')
        .next()
        .unwrap_or_default();
    let version = ["v1", "v1beta", "upload", "download"]
        .into_iter()
        .find(|v| *v == first);
    match (version, APIS.iter().find(|api| **api == second)) {
        (Some(version), Some(api)) => format!("/{version}/{api}"),
        _ => "other".to_owned(),
    }
}

/// `path`, at most [`MAX_PATH`] bytes (cut at a character boundary).
fn bounded(path: &str) -> &str {
    let mut end = path.len().min(MAX_PATH);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    &path[..end]
}

/// The route layer: the request's span, the client's trace continued (feature `otel`), the
/// answer's facts recorded, the span kept until the answer's body ends.
pub(crate) async fn traced(request: Request, next: Next) -> Response {
    // Every field is filled in after the check: a disabled span costs this one look.
    let span = tracing::debug_span!(
        "gateway.request",
        otel.name = Empty,
        otel.kind = "server",
        otel.status_code = Empty,
        gen_ai.system = "gcp.gemini",
        gen_ai.provider.name = "gcp.gemini",
        gen_ai.operation.name = Empty,
        gen_ai.request.model = Empty,
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        http.request.method = Empty,
        url.path = Empty,
        http.response.status_code = Empty,
        error.type = Empty,
        gemini.key = Empty,
        gemini.project = Empty,
        gemini.class = Empty,
        gemini.cache_hit = Empty,
        gemini.fallback = Empty,
        gemini.client = Empty,
    );
    if span.is_disabled() {
        return next.run(request).await;
    }
    let path = request.uri().path();
    let operation = operation(request.method(), path);
    let model = model_of(path);
    let name = match (operation, model) {
        (Some(operation), Some(model)) => format!("{operation} {model}"),
        (Some(operation), None) => operation.to_owned(),
        // Not a model call: the method and the API (`GET /v1beta/files`).
        (None, _) => format!("{} {}", request.method(), api_of(path)),
    };
    span.record("otel.name", name);
    span.record("gen_ai.operation.name", operation);
    span.record("gen_ai.request.model", model);
    span.record("http.request.method", request.method().as_str());
    span.record("url.path", bounded(path));
    if let Some(client) = request.extensions().get::<crate::cost::Account>() {
        span.record("gemini.client", client.as_str());
    }
    #[cfg(feature = "otel")]
    super::otel::continue_trace(&span, request.headers());
    let response = next.run(request).instrument(span.clone()).await;
    finish(span, response)
}

/// What the request turned out to be, once its body is read: the model an OpenAI body names
/// (then the span is named by it, `chat gemini-2.5-flash`). Recorded on the current span (the
/// request's, when tracing is on).
pub(crate) fn record_request(method: &http::Method, path: &str, model: Option<&str>) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    if let Some(model) = model.filter(|m| crate::model::check_name(m).is_ok()) {
        span.record("gen_ai.request.model", model);
        if let Some(operation) = operation(method, path) {
            span.record("otel.name", format!("{operation} {model}"));
        }
    }
}

/// Record the answer's head on `span`, and keep the span open until its body ends.
fn finish(span: tracing::Span, response: Response) -> Response {
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    let extensions = response.extensions();
    if let Some(selected) = extensions.get::<crate::pool::SelectedKey>() {
        span.record(
            "gemini.key",
            tracing::field::display(selected.fingerprint()),
        );
        span.record("gemini.project", selected.project());
        if let Some(model) = selected.model() {
            span.record("gen_ai.response.model", model);
        }
    }
    let class = extensions
        .get::<crate::classify::Classification>()
        .map(crate::classify::Classification::class);
    if let Some(class) = class {
        span.record("gemini.class", class.as_str());
    }
    // An operation that failed says how (GenAI and HTTP conventions): Google's answer's class
    // (`rate_limited`, `caller`, …), else the status code the gateway answered.
    if status.is_client_error() || status.is_server_error() {
        match class.filter(|class| *class != crate::classify::Class::Success) {
            Some(class) => span.record("error.type", class.as_str()),
            None => span.record("error.type", status.as_str()),
        };
    }
    if let Some(status) = extensions.get::<crate::cache::CacheStatus>() {
        span.record(
            "gemini.cache_hit",
            matches!(status, crate::cache::CacheStatus::Hit),
        );
    }
    if let Some(fallback) = extensions.get::<crate::context::ModelFallback>() {
        span.record("gemini.fallback", fallback.served.as_str());
        span.record("gen_ai.response.model", fallback.served.as_str());
    }
    let cost = extensions.get::<CostReport>().cloned();
    response.map(|body| {
        Body::new(Traced {
            body: Some(body),
            span,
            cost,
        })
    })
}

/// An answer's body that holds its request's span, and records the tokens it used when it
/// ends (or is dropped: a client that went away, or hyper done with a body of known length).
/// The inner body goes first: the cost layer's count is made when its body is dropped.
struct Traced {
    body: Option<Body>,
    span: tracing::Span,
    cost: Option<CostReport>,
}

impl Traced {
    fn finish(&mut self) {
        if self.body.take().is_none() {
            return;
        }
        if let Some(cost) = self.cost.as_ref().and_then(CostReport::get) {
            self.span
                .record("gen_ai.usage.input_tokens", cost.prompt_tokens);
            self.span
                .record("gen_ai.usage.output_tokens", cost.output_tokens);
        }
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        self.finish();
    }
}

impl http_body::Body for Traced {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::{api_of, bounded, model_of, operation};
    use http::Method;

    #[test]
    fn operations_by_path() {
        assert_eq!(
            operation(&Method::POST, "/v1/chat/completions"),
            Some("chat")
        );
        assert_eq!(
            operation(
                &Method::POST,
                "/v1beta/models/gemini-2.0-flash:streamGenerateContent"
            ),
            Some("generate_content")
        );
        assert_eq!(
            operation(&Method::POST, "/v1/embeddings"),
            Some("embeddings")
        );
        assert_eq!(
            operation(&Method::POST, "/v1beta/models/m:batchEmbedContents"),
            Some("embeddings")
        );
        assert_eq!(
            operation(&Method::POST, "/v1beta/interactions"),
            Some("invoke_agent")
        );
        assert_eq!(operation(&Method::GET, "/v1beta/interactions/abc"), None);
        assert_eq!(operation(&Method::POST, "/v1beta/files/interactions"), None);
        assert_eq!(operation(&Method::GET, "/v1beta/files"), None);
    }

    /// A client's junk never names a span: only known APIs and plausible model names.
    #[test]
    fn span_names_come_from_fixed_words() {
        assert_eq!(api_of("/v1beta/files/abc-123"), "/v1beta/files");
        assert_eq!(api_of("/v1beta/files"), "/v1beta/files");
        assert_eq!(api_of("/v1/models"), "/v1/models");
        assert_eq!(api_of("/v1beta/cachedContents:x"), "/v1beta/cachedContents");
        assert_eq!(api_of("/v1beta/anything-a-client-says"), "other");
        assert_eq!(api_of(&format!("/{}/files", "x".repeat(1000))), "other");
        assert_eq!(
            model_of("/v1beta/models/gemini-2.0-flash:generateContent"),
            Some("gemini-2.0-flash")
        );
        let junk = format!("/v1beta/models/{}:generateContent", "m".repeat(10_000));
        assert_eq!(model_of(&junk), None);
        assert_eq!(bounded(&junk).len(), super::MAX_PATH);
        assert_eq!(bounded("/v1beta/é"), "/v1beta/é");
    }
}
