//! The OTLP exporter's HTTP client: hyper over rustls (ring), as the client for Google is, on a
//! runtime of its own (the SDK exports from a thread of its own and waits for each export).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry_http::{HttpClient, HttpError};

use super::standard;
use crate::error::Error;

/// The most of a receiver's answer read (it says what it refused, in a few bytes).
const MAX_ANSWER: usize = 64 * 1024;

/// What the exporter sends with: `http://` or `https://` (with [`tls_config`]), the standard
/// timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`, milliseconds; 10 s) on each export, answers read up
/// to 64 KiB, no redirect followed (the headers may carry a service's API key).
pub(super) struct Exporting {
    runtime: Option<tokio::runtime::Runtime>,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl Exporting {
    pub(super) fn new(env: &impl Fn(&str) -> Option<String>) -> Result<Exporting, Error> {
        let tls = tls_config(env)?;
        let timeout = standard(env, "TIMEOUT")
            .and_then(|(_, ms)| ms.parse::<u64>().ok())
            .map_or(Duration::from_secs(10), Duration::from_millis);
        // One worker drives the connections between exports; the exporter's thread waits.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .map_err(|e| Error::config(format!("the OTLP exporter's runtime: {e}")))?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        Ok(Exporting {
            runtime: Some(runtime),
            client,
            timeout,
        })
    }

    /// One export, waited for (on the SDK's exporting thread, never a runtime's).
    fn send(&self, request: http::Request<Bytes>) -> Result<http::Response<Bytes>, HttpError> {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or("the OTLP exporter is stopped")?;
        let exchange = async {
            let answer = self.client.request(request.map(Full::new)).await?;
            let (head, body) = answer.into_parts();
            let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
            Ok::<_, HttpError>(http::Response::from_parts(head, body))
        };
        runtime.block_on(async {
            tokio::time::timeout(self.timeout, exchange)
                .await
                .map_err(|_| HttpError::from("the OTLP receiver did not answer in time"))?
        })
    }
}

impl HttpClient for Exporting {
    fn send_bytes<'this, 'call>(
        &'this self,
        request: http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Bytes>, HttpError>> + Send + 'call>>
    where
        'this: 'call,
        Self: 'call,
    {
        Box::pin(async move { self.send(request) })
    }
}

impl Drop for Exporting {
    fn drop(&mut self) {
        // Dropped where it was made (in the gateway's runtime) when the exporter is not built:
        // a runtime may not be dropped, waiting, inside another.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl fmt::Debug for Exporting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporting")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The TLS settings of an `https://` exporter: the webpki roots, or only the CA in
/// `OTEL_EXPORTER_OTLP_CERTIFICATE`; the client certificate and key if both are given.
pub(super) fn tls_config(
    env: &impl Fn(&str) -> Option<String>,
) -> Result<rustls::ClientConfig, Error> {
    let file = |name: &str| -> Result<Option<(String, Vec<u8>)>, Error> {
        standard(env, name)
            .map(|(var, path)| {
                crate::pem::read(std::path::Path::new(&path), &format!("{var}'s file"))
                    .map(|pem| (var, pem))
            })
            .transpose()
    };
    let mut roots = rustls::RootCertStore::empty();
    match file("CERTIFICATE")? {
        Some((var, pem)) => {
            for certificate in crate::pem::certificates(&pem, &var)? {
                roots.add(certificate).map_err(|e| {
                    Error::config(format!("{var}: a certificate that is not a CA ({e})"))
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(format!("TLS for the OTLP exporter: {e}")))?
        .with_root_certificates(roots);
    if standard(env, "CLIENT_CERTIFICATE").is_some() != standard(env, "CLIENT_KEY").is_some() {
        return Err(Error::config(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY go together: give both, or neither",
        ));
    }
    let (Some((cert_var, chain)), Some((key_var, key))) =
        (file("CLIENT_CERTIFICATE")?, file("CLIENT_KEY")?)
    else {
        return Ok(builder.with_no_client_auth());
    };
    let chain = crate::pem::certificates(&chain, &cert_var)?;
    let key = crate::pem::private_key(&key, &key_var)?;
    builder.with_client_auth_cert(chain, key).map_err(|e| {
        Error::config(format!(
            "{cert_var} and {key_var} do not make a client identity ({e}): give the certificate and its own key"
        ))
    })
}
