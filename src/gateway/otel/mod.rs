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
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turns it off. Spans go from a thread
//! of their own, in batches: a collector that is slow or away costs requests nothing (spans
//! past the queue's size, 2,048, are dropped, and the SDK logs it).
//!
//! An `https://` endpoint (a tracing service, a collector behind TLS) is reached over rustls
//! (ring) trusting the webpki roots, or only the CA of `OTEL_EXPORTER_OTLP_CERTIFICATE`, and
//! presents `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and `_CLIENT_KEY` to a receiver that asks
//! (each also as `OTEL_EXPORTER_OTLP_TRACES_…`); `OTEL_EXPORTER_OTLP_HEADERS` carries a
//! service's API key. A certificate given for a plain `http://` endpoint, and protocols other
//! than HTTP with protobuf, are refused at start with that said.

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::error::Error;

mod client;

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

/// Is OTLP export asked for: an endpoint given, or in the standard variables (and neither the
/// SDK nor the traces exporter turned off)?
pub fn wanted(endpoint: Option<&str>, env: impl Fn(&str) -> Option<String>) -> bool {
    let is =
        |name: &str, value: &str| env(name).is_some_and(|v| v.trim().eq_ignore_ascii_case(value));
    let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
    !is("OTEL_SDK_DISABLED", "true")
        && !is("OTEL_TRACES_EXPORTER", "none")
        && (endpoint.is_some_and(|e| !e.trim().is_empty())
            || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            || set("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// The standard variable for traces, `OTEL_EXPORTER_OTLP_TRACES_<name>`, else the general
/// `OTEL_EXPORTER_OTLP_<name>`, if set to something: its name and value.
fn standard(env: &impl Fn(&str) -> Option<String>, name: &str) -> Option<(String, String)> {
    [
        format!("OTEL_EXPORTER_OTLP_TRACES_{name}"),
        format!("OTEL_EXPORTER_OTLP_{name}"),
    ]
    .into_iter()
    .find_map(|var| {
        env(&var)
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty())
            .map(|value| (var, value))
    })
}

/// The endpoint the exporter will use: `--otlp-endpoint`, else the standard variables.
fn endpoint_of(endpoint: Option<&str>, env: &impl Fn(&str) -> Option<String>) -> Option<String> {
    endpoint
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .or_else(|| standard(env, "ENDPOINT").map(|(_, value)| value))
}

fn is_https(endpoint: &str) -> bool {
    endpoint.to_ascii_lowercase().starts_with("https://")
}

/// What this exporter cannot do, said before it is tried: a protocol other than HTTP with
/// protobuf; certificates for an endpoint without TLS (a sign that the endpoint is not the one
/// meant).
fn check(endpoint: Option<&str>, env: impl Fn(&str) -> Option<String>) -> Result<(), Error> {
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(value) = env(name)
            && value.trim() != "http/protobuf"
        {
            return Err(Error::config(format!(
                "{name}={value:?}: this exporter speaks OTLP over HTTP with protobuf only; set it to http/protobuf or leave it unset"
            )));
        }
    }
    let endpoint = endpoint_of(endpoint, &env).unwrap_or_default();
    for name in ["CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY"] {
        if let Some((var, _)) = standard(&env, name)
            && !is_https(&endpoint)
        {
            return Err(Error::config(format!(
                "{var} is set, but the OTLP endpoint {endpoint:?} is not https://: give the receiver's https:// URL, or unset {var}"
            )));
        }
    }
    Ok(())
}

/// Install the process's subscriber: the console log at `level`, and, if [`wanted`], the OTLP
/// exporter of this crate's spans (`endpoint`: the base URL of an OTLP/HTTP receiver, such as
/// `http://127.0.0.1:4318`; `/v1/traces` is added unless it is there). The exporter is
/// returned: keep it until the end, its drop sends the last spans.
///
/// Unless `OTEL_TRACES_SAMPLER` says otherwise every request is recorded, whatever the
/// client's `traceparent` says of sampling (a client does not choose whether the operator sees
/// its requests); its trace is continued.
pub fn install(endpoint: Option<&str>, level: tracing::Level) -> Result<Option<Otel>, Error> {
    let env = |name: &str| std::env::var(name).ok();
    let console = tracing_subscriber::fmt::layer()
        .with_filter(tracing_subscriber::filter::LevelFilter::from_level(level));
    if !wanted(endpoint, env) {
        tracing_subscriber::registry().with(console).init();
        return Ok(None);
    }
    check(endpoint, env)?;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
    // A client of ours (hyper over rustls with ring, as for Google), for TLS settings of the
    // standard variables; the exporter has none of its own here.
    exporter = exporter.with_http_client(client::Exporting::new(&env)?);
    if let Some(endpoint) = endpoint.map(str::trim).filter(|e| !e.is_empty()) {
        let base = endpoint.trim_end_matches('/');
        let base = base.strip_suffix("/v1/traces").unwrap_or(base);
        exporter = exporter.with_endpoint(format!("{base}/v1/traces"));
    }
    let exporter = exporter.build().map_err(|e| {
        Error::config(format!(
            "cannot export traces over OTLP ({e}); give the receiver's base URL, such as --otlp-endpoint http://127.0.0.1:4318"
        ))
    })?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("gemini-gateway");
    }
    let mut provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build());
    if env("OTEL_TRACES_SAMPLER").is_none() {
        provider = provider.with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn);
    }
    let provider = provider.build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("tower-gemini"))
        .with_filter(
            tracing_subscriber::filter::filter_fn(|meta| {
                meta.is_span() && meta.target().starts_with("tower_gemini")
            })
            .with_max_level_hint(tracing_subscriber::filter::LevelFilter::DEBUG),
        );
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
        assert!(!wanted(
            Some("http://127.0.0.1:4318"),
            env(&[("OTEL_TRACES_EXPORTER", "none")])
        ));
    }

    #[test]
    fn what_it_cannot_do_is_refused_with_how() {
        let none = |_: &str| None;
        assert!(super::check(Some("http://127.0.0.1:4318"), none).is_ok());
        assert!(super::check(Some("https://collector.example:4318"), none).is_ok());
        // A CA for a plain endpoint: not the endpoint meant.
        let ca = |name: &str| {
            (name == "OTEL_EXPORTER_OTLP_CERTIFICATE").then(|| "/etc/ca.pem".to_owned())
        };
        let plain = super::check(Some("http://127.0.0.1:4318"), ca).unwrap_err();
        assert!(
            plain
                .to_string()
                .contains("OTEL_EXPORTER_OTLP_CERTIFICATE is set"),
            "{plain}"
        );
        assert!(super::check(Some("https://collector.example:4318"), ca).is_ok());
        // Half a client identity; a CA file that is not there.
        let half = super::client::tls_config(&|name: &str| {
            (name == "OTEL_EXPORTER_OTLP_CLIENT_KEY").then(|| "/etc/key.pem".to_owned())
        });
        assert!(half.unwrap_err().to_string().contains("go together"));
        let missing = super::client::tls_config(&|name: &str| {
            (name == "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE").then(|| "/no/such/ca.pem".to_owned())
        })
        .unwrap_err();
        assert!(missing.to_string().contains("/no/such/ca.pem"), "{missing}");
        let grpc = super::check(None, |name: &str| {
            (name == "OTEL_EXPORTER_OTLP_PROTOCOL").then(|| "grpc".to_owned())
        })
        .unwrap_err();
        assert!(grpc.to_string().contains("http/protobuf"), "{grpc}");
    }
}
