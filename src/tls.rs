//! TLS settings of the clients besides Google's (Redis over `rediss://`, OTLP over `https://`):
//! PEM files read and checked — each wrong file gets an error that names it and says what it
//! lacks — and the rustls client settings they make, with ring and the webpki roots, as for
//! Google.

#[cfg(any(feature = "redis-tls", feature = "otel"))]
use rustls::pki_types::pem::PemObject;
#[cfg(any(feature = "redis-tls", feature = "otel"))]
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;

/// The file at `path`, or an error naming it (`what`).
pub(crate) fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| Error::config(format!("cannot read {what} from {}: {e}", path.display())))
}

/// PEM bytes and what they are, for errors ("the Redis CA certificate").
#[cfg(any(feature = "redis-tls", feature = "otel"))]
#[derive(Clone, Copy)]
pub(crate) struct Pem<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) what: &'a str,
}

/// Every certificate in `pem`; at least one.
#[cfg(any(feature = "redis-tls", feature = "otel"))]
fn certificates(pem: Pem<'_>) -> Result<Vec<CertificateDer<'static>>, Error> {
    let what = pem.what;
    let found = CertificateDer::pem_slice_iter(pem.bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::config(format!("{what} is not valid PEM ({e})")))?;
    if found.is_empty() {
        return Err(Error::config(format!(
            "{what} holds no certificate: expected PEM with a -----BEGIN CERTIFICATE----- block"
        )));
    }
    Ok(found)
}

/// The private key in `pem` (PKCS#8, PKCS#1 or SEC1). The error never quotes the file.
#[cfg(any(feature = "redis-tls", feature = "otel"))]
fn private_key(pem: Pem<'_>) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem.bytes).map_err(|_| {
        Error::config(format!(
            "{} holds no private key: expected PEM with a -----BEGIN PRIVATE KEY----- (or RSA/EC PRIVATE KEY) block",
            pem.what
        ))
    })
}

/// A rustls client with ring trusting only `ca`'s certificates, or the webpki roots without
/// one; presenting `identity` (a certificate chain and its key) if given. Every file checked
/// here, before a connection is tried: a wrong one is an error naming it.
#[cfg(any(feature = "redis-tls", feature = "otel"))]
pub(crate) fn client_config(
    ca: Option<Pem<'_>>,
    identity: Option<(Pem<'_>, Pem<'_>)>,
) -> Result<rustls::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(ca) => {
            for certificate in certificates(ca)? {
                roots.add(certificate).map_err(|e| {
                    Error::config(format!(
                        "{}: a certificate that cannot be a root of trust ({e})",
                        ca.what
                    ))
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    let Some((chain, key)) = identity else {
        return Ok(builder.with_no_client_auth());
    };
    let (what_chain, what_key) = (chain.what, key.what);
    builder
        .with_client_auth_cert(certificates(chain)?, private_key(key)?)
        .map_err(|e| {
            Error::config(format!(
                "{what_chain} and {what_key} do not make a client identity ({e}): give the certificate and its own key"
            ))
        })
}
