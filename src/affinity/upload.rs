//! Resumable uploads: the session a start opens is bound to the project of the key that
//! started it (Google's `X-Goog-Upload-URL` carries no key), so its steps are pinned there, and
//! the file its last step makes is learned from that answer.

use std::sync::Arc;
use std::time::Duration;

use http::Response;

use super::Settings;
use super::reference::{self, UPLOAD_URL};
use crate::context::Tenant;
use crate::pool::SelectedKey;
use crate::state::PinRecord;

/// How long Google keeps an uploaded file (until the answer's `expirationTime` says).
pub(crate) const FILE_TTL: Duration = Duration::from_secs(48 * 3600);
/// How long an upload session is kept pinned: a day (the SDKs send the bytes at once; an
/// abandoned session counts against a gateway client's files until then).
const SESSION_TTL: Duration = Duration::from_secs(24 * 3600);

/// The size a start declares (`X-Goog-Upload-Header-Content-Length`), 0 if none.
pub(crate) fn declared_size<B>(request: &http::Request<B>) -> u64 {
    request
        .headers()
        .get("x-goog-upload-header-content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// An upload answer's state: `active` (more to come) or `final` (the file is made).
const UPLOAD_STATUS: &str = "x-goog-upload-status";

/// Does a successful upload answer carry the file made (a resumable upload's last step, or a
/// whole upload in one request)?
pub(crate) fn is_final<B>(response: &Response<B>) -> bool {
    if !response.status().is_success() {
        return false;
    }
    let headers = response.headers();
    match headers.get(UPLOAD_STATUS).and_then(|v| v.to_str().ok()) {
        Some(status) => status.trim().eq_ignore_ascii_case("final"),
        None => !headers.contains_key(UPLOAD_URL),
    }
}

/// The upload session an `X-Goog-Upload-URL` names (its `upload_id`), if plausible.
pub(crate) fn session_of(url: &str) -> Option<&str> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    reference::upload_id_in(Some(query)).filter(|id| reference::is_upload_id(id))
}

/// The session a start's answer opened (its id) and the project whose key started it.
pub(crate) fn session_opened<B>(response: &Response<B>) -> Option<(String, Arc<str>)> {
    if !response.status().is_success() {
        return None;
    }
    let id = response
        .headers()
        .get(UPLOAD_URL)
        .and_then(|v| v.to_str().ok())
        .and_then(session_of)?;
    let key = response.extensions().get::<SelectedKey>()?;
    Some((id.to_owned(), Arc::from(key.project())))
}

/// Pin a session to the project whose key started it (and to the tenant), before the caller
/// can send its first step — on this process or another replica.
pub(crate) async fn pin_session(
    settings: &Settings,
    (id, project): (String, Arc<str>),
    tenant: Option<&Tenant>,
    size: u64,
) {
    let now = settings.pool.clock().now_millis();
    let record = PinRecord {
        project,
        expires_at: now.saturating_add(SESSION_TTL.as_millis() as u64),
        tenant: tenant.map(Tenant::shared),
        tokens: size,
    };
    if let Some(write) = settings.pool.learn_pin(&reference::upload(&id), record) {
        write.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_is_read_from_the_upload_url() {
        assert_eq!(
            session_of(
                "https://generativelanguage.googleapis.com/upload/v1beta/files?upload_id=AB_c-9&upload_protocol=resumable"
            ),
            Some("AB_c-9")
        );
        assert_eq!(
            session_of("http://127.0.0.1:9/upload/v1/files?upload_protocol=resumable"),
            None
        );
        assert_eq!(session_of("http://h/upload/v1/files?upload_id=a%2Fb"), None);
    }

    #[test]
    fn a_final_answer_carries_the_file() {
        let mut answer = Response::new(());
        assert!(is_final(&answer));
        answer
            .headers_mut()
            .insert(UPLOAD_STATUS, http::HeaderValue::from_static("active"));
        assert!(!is_final(&answer));
        answer
            .headers_mut()
            .insert(UPLOAD_STATUS, http::HeaderValue::from_static("final"));
        assert!(is_final(&answer));
        *answer.status_mut() = http::StatusCode::BAD_REQUEST;
        assert!(!is_final(&answer));
    }
}
