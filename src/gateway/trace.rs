//! One span per request to the APIs: `gemini-gateway`'s server span, with the attributes of
//! OpenTelemetry's GenAI semantic conventions (`gen_ai.system`, `gen_ai.operation.name`,
//! `gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.usage.input_tokens` and
//! `output_tokens`) and ours (`gemini.key` — a fingerprint —, `gemini.project`, `gemini.class`,
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

/// The GenAI operation a path is (`None`: not a model call, such as a file's listing).
fn operation(path: &str) -> Option<&'static str> {
    if path.ends_with("/chat/completions")
        || path.ends_with(":generateContent")
        || path.ends_with(":streamGenerateContent")
    {
        Some(if path.ends_with("/chat/completions") {
            "chat"
        } else {
            "generate_content"
        })
    } else if path.ends_with("/embeddings")
        || path.ends_with(":embedContent")
        || path.ends_with(":batchEmbedContents")
    {
        Some("embeddings")
    } else if path.contains("/interactions") {
        Some("invoke_agent")
    } else {
        None
    }
}

/// The first two segments of `path` (`/v1beta/files/abc` → `/v1beta/files`).
fn api_of(path: &str) -> &str {
    let end = path
        .match_indices('/')
        .nth(2)
        .map_or(path.len(), |(at, _)| at);
    let api = &path[..end];
    // (`/v1beta/models/m:generateContent` without an operation: the method is not a name.)
    api.split(':').next().unwrap_or(api)
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
    let operation = operation(path);
    let model = crate::model::model_in_path(path);
    let name = match (operation, model) {
        (Some(operation), Some(model)) => format!("{operation} {model}"),
        // Without a model: the method and the API (`GET /v1beta/files`), never a resource's
        // name (a span name is a low-cardinality label).
        _ => format!("{} {}", request.method(), api_of(path)),
    };
    span.record("otel.name", name);
    span.record("gen_ai.operation.name", operation);
    span.record("gen_ai.request.model", model);
    span.record("http.request.method", request.method().as_str());
    span.record("url.path", path);
    #[cfg(feature = "otel")]
    super::otel::continue_trace(&span, request.headers());
    let response = next.run(request).instrument(span.clone()).await;
    finish(span, response)
}

/// What the request turned out to be, once its body is read: the model (an OpenAI body names
/// it) and the client. Recorded on the current span (the request's, when tracing is on).
pub(crate) fn record_request(model: Option<&str>, client: Option<&crate::cost::Account>) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    if let Some(model) = model {
        span.record("gen_ai.request.model", model);
    }
    if let Some(client) = client {
        span.record("gemini.client", client.as_str());
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
    if let Some(classification) = extensions.get::<crate::classify::Classification>() {
        span.record("gemini.class", classification.class().as_str());
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
            body,
            span,
            cost,
            recorded: false,
        })
    })
}

pin_project_lite::pin_project! {
    /// An answer's body that holds its request's span, and records the tokens it used when it
    /// ends (or is dropped: a client that went away).
    struct Traced {
        #[pin]
        body: Body,
        span: tracing::Span,
        cost: Option<CostReport>,
        recorded: bool,
    }

    impl PinnedDrop for Traced {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            record_usage(this.span, this.cost.as_ref(), this.recorded);
        }
    }
}

fn record_usage(span: &tracing::Span, cost: Option<&CostReport>, recorded: &mut bool) {
    if *recorded {
        return;
    }
    *recorded = true;
    if let Some(cost) = cost.and_then(CostReport::get) {
        span.record("gen_ai.usage.input_tokens", cost.prompt_tokens);
        span.record("gen_ai.usage.output_tokens", cost.output_tokens);
    }
}

impl http_body::Body for Traced {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if let Poll::Ready(None) = polled {
            record_usage(this.span, this.cost.as_ref(), this.recorded);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::operation;

    #[test]
    fn operations_by_path() {
        assert_eq!(operation("/v1/chat/completions"), Some("chat"));
        assert_eq!(
            operation("/v1beta/models/gemini-2.0-flash:streamGenerateContent"),
            Some("generate_content")
        );
        assert_eq!(operation("/v1/embeddings"), Some("embeddings"));
        assert_eq!(
            operation("/v1beta/models/m:batchEmbedContents"),
            Some("embeddings")
        );
        assert_eq!(operation("/v1beta/interactions"), Some("invoke_agent"));
        assert_eq!(operation("/v1beta/files"), None);
    }

    #[test]
    fn span_names_without_a_model_name_the_api_only() {
        assert_eq!(super::api_of("/v1beta/files/abc-123"), "/v1beta/files");
        assert_eq!(super::api_of("/v1beta/files"), "/v1beta/files");
        assert_eq!(super::api_of("/v1/models"), "/v1/models");
        assert_eq!(
            super::api_of("/v1beta/cachedContents:x"),
            "/v1beta/cachedContents"
        );
    }
}
