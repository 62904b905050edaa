//! `gemini-gateway check-keys`: one cheap call per key (`countTokens`, which spends no
//! generation quota), and a table of what Google said.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};

use super::GatewayConfig;
use crate::classify::{Class, Classification};
use crate::client;

/// One key's verdict.
#[derive(Debug, Clone)]
pub struct KeyCheck {
    /// The key's fingerprint.
    pub fingerprint: String,
    /// Its name, if configured.
    pub name: Option<String>,
    /// Its project.
    pub project: String,
    /// `valid`, `invalid`, `leaked or forbidden`, `no credits`, `no quota now`,
    /// `model not on tier`, `unreachable` or `other`.
    pub verdict: &'static str,
    /// What Google said (scrubbed of the key).
    pub detail: String,
}

fn verdict(class: Class) -> &'static str {
    match class {
        Class::Success => "valid",
        Class::KeyInvalid => "invalid",
        Class::KeyForbidden => "leaked or forbidden",
        Class::BillingExhausted => "no credits",
        Class::QuotaDaily | Class::QuotaMinute | Class::RateLimited => "no quota now",
        Class::ModelNotOnTier => "model not on tier",
        Class::Upstream | Class::Transport => "unreachable",
        Class::Caller => "other",
    }
}

/// Check every key of `config` against its upstream, one at a time.
pub async fn check_keys(config: &GatewayConfig) -> Vec<KeyCheck> {
    let http = client::https::<Full<Bytes>>();
    let url = format!(
        "{}/v1beta/models/{}:countTokens",
        config.upstream, config.model
    );
    let mut checks = Vec::new();
    for (key, name, project) in config.pool.entries() {
        let fingerprint = key.fingerprint();
        let body = Bytes::from_static(br#"{"contents":[{"parts":[{"text":"ping"}]}]}"#);
        let mut request = http::Request::post(&url)
            .header("content-type", "application/json")
            .body(Full::new(body))
            .unwrap_or_default();
        request
            .headers_mut()
            .insert("x-goog-api-key", key.header_value());
        let answer = tokio::time::timeout(Duration::from_secs(20), http.request(request)).await;
        let classification = match answer {
            Ok(Ok(response)) => {
                let status = response.status();
                let body = Limited::new(response.into_body(), 64 * 1024)
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                Classification::from_response(status, &body)
            }
            Ok(Err(_)) | Err(_) => Classification::transport(),
        };
        let mut detail = classification.to_string();
        detail = detail.replace(
            crate::ExposeSecret::expose_secret(key),
            &fingerprint.to_string(),
        );
        checks.push(KeyCheck {
            fingerprint: fingerprint.to_string(),
            name: name.map(str::to_owned),
            project: project.to_owned(),
            verdict: verdict(classification.class()),
            detail,
        });
    }
    checks
}

/// The checks as a table for a terminal.
pub fn table(checks: &[KeyCheck]) -> String {
    let mut out = format!(
        "{:<7} {:<16} {:<16} {:<20} {}\n",
        "key", "name", "project", "verdict", "detail"
    );
    for c in checks {
        out.push_str(&format!(
            "{:<7} {:<16} {:<16} {:<20} {}\n",
            c.fingerprint,
            c.name.as_deref().unwrap_or("-"),
            c.project,
            c.verdict,
            c.detail
        ));
    }
    out
}
