//! A CA made in the test (rcgen), and certificates it signed, as PEM files in a directory of
//! the test's own: for the servers over TLS that the tests start (Redis, an OTLP receiver).
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A CA, a server certificate for 127.0.0.1 signed by it, a client certificate signed by it,
/// and a second CA that signed nothing here; all as PEM files in a directory of the test's own.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(test: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("tls-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Self::ca(&dir, "ca");
        Self::ca(&dir, "other-ca");
        Self::leaf(
            &dir,
            "server",
            &ca,
            vec!["127.0.0.1".into(), "localhost".into()],
        );
        Self::leaf(&dir, "client", &ca, vec!["gateway.test".into()]);
        Pki { dir }
    }

    fn ca(dir: &Path, name: &str) -> Issuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("tower-gemini test {name}"),
        );
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        Issuer::new(params, key)
    }

    fn leaf(dir: &Path, name: &str, ca: &Issuer<'static, KeyPair>, names: Vec<String>) {
        let params = CertificateParams::new(names).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
