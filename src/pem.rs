//! PEM files read for TLS (Redis over `rediss://`, OTLP over `https://`): each wrong file gets
//! an error that names it and says what it lacks.

#[cfg(any(feature = "redis-tls", feature = "otel"))]
use rustls::pki_types::pem::PemObject;
#[cfg(any(feature = "redis-tls", feature = "otel"))]
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;

/// Every certificate in `pem` (`what` names the file in errors); at least one.
#[cfg(any(feature = "redis-tls", feature = "otel"))]
pub(crate) fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let found = CertificateDer::pem_slice_iter(pem)
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
pub(crate) fn private_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| {
        Error::config(format!(
            "{what} holds no private key: expected PEM with a -----BEGIN PRIVATE KEY----- (or RSA/EC PRIVATE KEY) block"
        ))
    })
}

/// The file at `path`, or an error naming it (`what`).
pub(crate) fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| Error::config(format!("cannot read {what} from {}: {e}", path.display())))
}
