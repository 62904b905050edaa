//! `gemini-gateway check-keys`: one cheap call per key (`countTokens`, which spends no
//! generation quota), and a table of what Google said.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};

use super::GatewayConfig;
use crate::classify::{Class, Classification};
use crate::client;
use crate::pool::{ApiKey, KeyPool, KeyState};

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
    check_pool(&config.pool, &config.upstream, &config.model, |_| true).await
}

/// Check the keys of `pool` that `which` selects (by fingerprint).
pub(crate) async fn check_pool(
    pool: &KeyPool,
    upstream: &str,
    model: &str,
    which: impl Fn(&str) -> bool,
) -> Vec<KeyCheck> {
    let http = client::https::<Full<Bytes>>();
    let url = format!("{upstream}/v1beta/models/{model}:countTokens");
    let mut checks = Vec::new();
    for (key, name, project) in pool.entries() {
        let fingerprint = key.fingerprint().to_string();
        if !which(&fingerprint) {
            continue;
        }
        let classification = check_one(&http, &url, key).await;
        let detail = classification
            .to_string()
            .replace(crate::ExposeSecret::expose_secret(key), &fingerprint);
        checks.push(KeyCheck {
            fingerprint,
            name: name.map(str::to_owned),
            project: project.to_owned(),
            verdict: verdict(classification.class()),
            detail,
        });
    }
    checks
}

/// One `countTokens` call with `key`, classified.
async fn check_one(
    http: &client::HttpsClient<Full<Bytes>>,
    url: &str,
    key: &ApiKey,
) -> Classification {
    let body = Bytes::from_static(br#"{"contents":[{"parts":[{"text":"ping"}]}]}"#);
    let Ok(mut request) = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(body))
    else {
        return Classification::transport();
    };
    request
        .headers_mut()
        .insert("x-goog-api-key", key.header_value());
    match tokio::time::timeout(Duration::from_secs(20), http.request(request)).await {
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
    }
}

/// Call every disabled key of `pool` again; re-enable those that work now. The checks made.
pub(crate) async fn revalidate(pool: &KeyPool, upstream: &str, model: &str) -> Vec<KeyCheck> {
    let disabled: Vec<String> = pool
        .snapshot()
        .keys
        .into_iter()
        .filter(|k| k.state == KeyState::Disabled)
        .map(|k| k.fingerprint.to_string())
        .collect();
    if disabled.is_empty() {
        return Vec::new();
    }
    let checks = check_pool(pool, upstream, model, |f| disabled.iter().any(|d| d == f)).await;
    for check in &checks {
        if check.verdict == "valid" {
            pool.reset(&check.fingerprint);
            tracing::info!(gemini.key = %check.fingerprint, "key {} works again: re-enabled", check.fingerprint);
        }
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
