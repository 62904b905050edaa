//! [`RedisTls`]: how a [`RedisStore`](super::RedisStore) trusts a Redis reached over TLS, and
//! proves who it is to one that asks.

use std::fmt;
use std::path::Path;

use secrecy::SecretSlice;

use crate::error::Error;

/// How a [`RedisStore`](super::RedisStore) trusts a Redis reached over TLS (`rediss://`,
/// `rediss+cluster://`; feature `redis-tls`).
///
/// The default trusts the webpki roots (Mozilla's, built in, as for Google), which is all a
/// managed Redis with a public certificate needs. A Redis whose certificate is signed by a CA of its own (Memorystore's
/// server CA, a Redis you run) needs that CA ([`ca_pem`](Self::ca_pem)); one that checks its
/// clients (`tls-auth-clients yes`) needs a client certificate and key
/// ([`client_pem`](Self::client_pem)). The key never shows in `Debug`.
///
/// ```
/// # fn main() -> Result<(), tower_gemini::Error> {
/// use tower_gemini::state::{RedisOptions, RedisTls};
/// let ca = "-----BEGIN CERTIFICATE-----\n…\n-----END CERTIFICATE-----\n";
/// let options = RedisOptions {
///     tls: RedisTls::default().ca_pem(ca),
///     ..RedisOptions::default()
/// };
/// // RedisStore::connect_with("rediss://redis.internal:6380", options).await?
/// # let _ = options; Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct RedisTls {
    ca: Option<Vec<u8>>,
    client: Option<(Vec<u8>, SecretSlice<u8>)>,
}

impl RedisTls {
    /// Trust these CA certificates (PEM, one or more) instead of the webpki roots. Checked
    /// when the store connects: a file without a certificate is an error that says so.
    #[must_use]
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(pem.into());
        self
    }

    /// Present this client certificate chain and its private key (both PEM) to a Redis that
    /// asks for one.
    #[must_use]
    pub fn client_pem(mut self, chain: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.client = Some((chain.into(), SecretSlice::from(key.into())));
        self
    }

    /// The settings from PEM files (each optional; a client certificate needs its key and the
    /// other way round). A file that cannot be read is an error naming it.
    pub fn from_files(
        ca: Option<&Path>,
        client_cert: Option<&Path>,
        client_key: Option<&Path>,
    ) -> Result<RedisTls, Error> {
        let mut tls = RedisTls::default();
        if let Some(ca) = ca {
            tls = tls.ca_pem(crate::tls::read(ca, "the Redis CA certificate")?);
        }
        match (client_cert, client_key) {
            (Some(cert), Some(key)) => Ok(tls.client_pem(
                crate::tls::read(cert, "the Redis client certificate")?,
                crate::tls::read(key, "the Redis client key")?,
            )),
            (None, None) => Ok(tls),
            (Some(_), None) => Err(Error::config(
                "a Redis client certificate is set without its key: give both (--redis-client-cert and --redis-client-key), or neither",
            )),
            (None, Some(_)) => Err(Error::config(
                "a Redis client key is set without its certificate: give both (--redis-client-cert and --redis-client-key), or neither",
            )),
        }
    }

    /// Is anything set (a CA or a client certificate)?
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }

    /// A digest of the settings (never the PEM itself): what a configuration reload compares
    /// to tell that they changed. Empty when nothing is set.
    #[cfg(feature = "gateway")]
    pub(crate) fn digest(&self) -> String {
        use secrecy::ExposeSecret;
        use sha2::{Digest, Sha256};
        if !self.is_set() {
            return String::new();
        }
        let mut hash = Sha256::new();
        for part in [
            self.ca.as_deref(),
            self.client.as_ref().map(|(chain, _)| chain.as_slice()),
            self.client.as_ref().map(|(_, key)| key.expose_secret()),
        ] {
            let part = part.unwrap_or_default();
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part);
        }
        format!("{:x}", hash.finalize())[..16].to_owned()
    }

    /// The redis crate's form of these settings, checked first as rustls will use them (each
    /// PEM, the key against its certificate) so that a wrong file is an error now, naming it,
    /// not a Redis unreachable at every attempt.
    #[cfg(feature = "redis-tls")]
    pub(super) fn certificates(&self) -> Result<redis::TlsCertificates, Error> {
        use crate::tls::Pem;
        use secrecy::ExposeSecret;
        crate::tls::client_config(
            self.ca.as_deref().map(|bytes| Pem {
                bytes,
                what: "the Redis CA certificate",
            }),
            self.client.as_ref().map(|(chain, key)| {
                (
                    Pem {
                        bytes: chain,
                        what: "the Redis client certificate",
                    },
                    Pem {
                        bytes: key.expose_secret(),
                        what: "the Redis client key",
                    },
                )
            }),
        )?;
        Ok(redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(chain, key)| redis::ClientTlsConfig {
                    client_cert: chain.clone(),
                    client_key: key.expose_secret().to_vec(),
                }),
            root_cert: self.ca.clone(),
        })
    }
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca.as_ref().map(|_| "<PEM>"))
            .field(
                "client",
                &self.client.as_ref().map(|_| "<PEM, key redacted>"),
            )
            .finish()
    }
}

/// Does this Redis URL (or list of URLs) ask for TLS? `Err` when some of a list's URLs do and
/// others do not.
pub(super) fn wants_tls(urls: &[String], shown: &str) -> Result<bool, Error> {
    let tls = |url: &String| {
        let scheme = url.trim().split("://").next().unwrap_or_default();
        ["rediss", "valkeys", "rediss+cluster"]
            .iter()
            .any(|tls| scheme.eq_ignore_ascii_case(tls))
    };
    match (urls.iter().all(tls), urls.iter().any(tls)) {
        (true, _) => Ok(!urls.is_empty()),
        (false, false) => Ok(false),
        (false, true) => Err(Error::config(format!(
            "the Redis URLs {shown} mix TLS (rediss://) and plain (redis://) nodes: give every node the same scheme"
        ))),
    }
}
