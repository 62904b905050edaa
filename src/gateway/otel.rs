//! OpenTelemetry (feature `otel`): the gateway's spans and the layers' exported over OTLP/HTTP
//! (protobuf), and the client's W3C `traceparent` continued.
//!
//! [`install`] sets up the process's `tracing` subscriber: the console log (INFO) as without
//! OpenTelemetry, and beside it an exporter of this crate's spans — `gateway.request` (see
//! `trace`), `gemini.request` and each `gemini.attempt` — whatever their level, and nothing else
//! (no log line becomes a span event). The endpoint is `--otlp-endpoint`, else the standard
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`; the other standard
//! variables are honoured by the SDK and the exporter: `OTEL_SERVICE_NAME` (default
//! `gemini-gateway`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_BSP_*`;
//! `OTEL_SDK_DISABLED=true` turns it off. Spans go from a thread of their own, in batches: a
//! collector that is slow or away costs requests nothing (spans past the queue's size are
//! dropped, and the SDK says so).

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::error::Error;

/// The exporter, flushed and stopped when dropped (at the end of `main`).
pub struct Otel {
    provider: SdkTracerProvider,
}

impl Drop for Otel {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("gemini-gateway: the last spans were not all exported: {error}");
        }
    }
}

impl std::fmt::Debug for Otel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Otel").finish_non_exhaustive()
    }
}

/// Is OTLP export asked for: an endpoint given, or in the standard variables (and the SDK not
/// disabled)?
pub fn wanted(endpoint: Option<&str>, env: impl Fn(&str) -> Option<String>) -> bool {
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
    !disabled
        && (endpoint.is_some_and(|e| !e.trim().is_empty())
            || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            || set("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// Install the process's subscriber: the console log at `level`, and, if [`wanted`], the OTLP
/// exporter of this crate's spans (`endpoint`: the base URL of an OTLP/HTTP receiver, such as
/// `http://127.0.0.1:4318`; `/v1/traces` is added). The exporter is returned: keep it until
/// the end, its drop sends the last spans.
pub fn install(endpoint: Option<&str>, level: tracing::Level) -> Result<Option<Otel>, Error> {
    let console = tracing_subscriber::fmt::layer()
        .with_filter(tracing_subscriber::filter::LevelFilter::from_level(level));
    if !wanted(endpoint, |name| std::env::var(name).ok()) {
        tracing_subscriber::registry().with(console).init();
        return Ok(None);
    }
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
    if let Some(endpoint) = endpoint.map(str::trim).filter(|e| !e.is_empty()) {
        exporter = exporter.with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')));
    }
    let exporter = exporter.build().map_err(|e| {
        Error::config(format!(
            "cannot export traces over OTLP ({e}); give the receiver's base URL, such as --otlp-endpoint http://127.0.0.1:4318"
        ))
    })?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("gemini-gateway");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("tower-gemini"))
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.is_span() && meta.target().starts_with("tower_gemini")
        }));
    tracing_subscriber::registry()
        .with(console)
        .with(spans)
        .init();
    Ok(Some(Otel { provider }))
}

/// Make `span` a child of the trace the client's `traceparent` (and `tracestate`) names, if
/// it sent a valid one.
pub(crate) fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Headers(headers))
    });
    use opentelemetry::trace::TraceContextExt;
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The request's headers as the propagator reads them.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::wanted;

    #[test]
    fn wanted_with_an_endpoint_unless_disabled() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(!wanted(None, env(&[])));
        assert!(wanted(Some("http://127.0.0.1:4318"), env(&[])));
        assert!(wanted(
            None,
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")])
        ));
        assert!(wanted(
            None,
            env(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces"
            )])
        ));
        assert!(!wanted(
            Some("http://127.0.0.1:4318"),
            env(&[("OTEL_SDK_DISABLED", "true")])
        ));
        assert!(!wanted(Some("  "), env(&[])));
    }
}
