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
use crate::tls::Pem;

/// The most of a receiver's answer read (it says what it refused, in a few bytes).
const MAX_ANSWER: usize = 64 * 1024;

/// What the exporter sends with: `http://` or `https://` (with [`tls_config`]), the standard
/// timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`, milliseconds; 10 s) on each export, answers read up
/// to 64 KiB, no redirect followed (the headers may carry a service's API key), no proxy
/// (`HTTPS_PROXY` is not read: the receiver is reached directly).
pub(super) struct Exporting {
    runtime: Option<tokio::runtime::Runtime>,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    /// A failed export was logged since the last that went (once an outage: the receiver may
    /// be away for hours).
    warned: std::sync::atomic::AtomicBool,
}

impl Exporting {
    pub(super) fn new(env: &impl Fn(&str) -> Option<String>) -> Result<Exporting, Error> {
        let tls = tls_config(env)?;
        let timeout = match standard(env, "TIMEOUT") {
            None => Duration::from_secs(10),
            Some((var, ms)) => match ms.parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    return Err(Error::config(format!(
                        "{var}={ms:?}: expected the milliseconds an export may take, such as 10000"
                    )));
                }
            },
        };
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
            warned: std::sync::atomic::AtomicBool::new(false),
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
        let sent = runtime.block_on(async {
            tokio::time::timeout(self.timeout, exchange)
                .await
                .map_err(|_| HttpError::from("the OTLP receiver did not answer in time"))?
        });
        if sent.is_ok() {
            // Back: the next outage is said again.
            self.warned
                .store(false, std::sync::atomic::Ordering::Relaxed);
        } else if let Err(error) = &sent
            && !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            // Once an outage: the SDK says the rest at DEBUG. The cause, whole (a certificate
            // refused, a connection refused), never a header.
            let mut cause = error.to_string();
            let mut source = error.source();
            while let Some(inner) = source {
                cause.push_str(": ");
                cause.push_str(&inner.to_string());
                source = inner.source();
            }
            tracing::warn!(
                "spans could not be sent to the OTLP receiver (said once until an export goes again): {cause}"
            );
        }
        sent
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
/// `OTEL_EXPORTER_OTLP_CERTIFICATE`; the client certificate and key if both are given (one
/// without the other is an error).
pub(super) fn tls_config(
    env: &impl Fn(&str) -> Option<String>,
) -> Result<rustls::ClientConfig, Error> {
    let file = |name: &str| -> Result<Option<(String, Vec<u8>)>, Error> {
        standard(env, name)
            .map(|(var, path)| {
                crate::tls::read(std::path::Path::new(&path), &format!("{var}'s file"))
                    .map(|pem| (var, pem))
            })
            .transpose()
    };
    if standard(env, "CLIENT_CERTIFICATE").is_some() != standard(env, "CLIENT_KEY").is_some() {
        return Err(Error::config(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY go together: give both, or neither",
        ));
    }
    let ca = file("CERTIFICATE")?;
    let identity = match (file("CLIENT_CERTIFICATE")?, file("CLIENT_KEY")?) {
        (Some(chain), Some(key)) => Some((chain, key)),
        _ => None,
    };
    fn pem((var, bytes): &(String, Vec<u8>)) -> Pem<'_> {
        Pem {
            bytes: bytes.as_slice(),
            what: var.as_str(),
        }
    }
    crate::tls::client_config(
        ca.as_ref().map(pem),
        identity.as_ref().map(|(chain, key)| (pem(chain), pem(key))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export_to(port: u16) -> http::Request<Bytes> {
        http::Request::post(format!("http://127.0.0.1:{port}/v1/traces"))
            .body(Bytes::from_static(b"spans"))
            .unwrap()
    }

    /// One warning an outage: said at the first failure, not again while it lasts, and again
    /// at the next outage once an export went.
    #[test]
    fn a_failed_export_is_said_once_an_outage() {
        let exporting = Exporting::new(&|_: &str| None).unwrap();
        let away = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let away_port = away.local_addr().unwrap().port();
        drop(away);
        assert!(exporting.send(export_to(away_port)).is_err());
        assert!(exporting.warned.load(std::sync::atomic::Ordering::Relaxed));
        // A receiver that answers one export.
        let receiver = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = receiver.local_addr().unwrap().port();
        let answering = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut stream, _) = receiver.accept().unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).unwrap();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
        });
        assert_eq!(exporting.send(export_to(port)).unwrap().status(), 200);
        answering.join().unwrap();
        assert!(!exporting.warned.load(std::sync::atomic::Ordering::Relaxed));
    }
}
