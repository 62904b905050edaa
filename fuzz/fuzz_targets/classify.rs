//! The classifier on any status and body: never panics, a retry delay within the wire cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_gemini::classify::{Classification, MAX_WIRE_DELAY};

fuzz_target!(|data: &[u8]| {
    let Some((&[high, low], body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let code = 100 + u16::from_be_bytes([high, low]) % 500;
    let Ok(status) = http::StatusCode::from_u16(code) else {
        return;
    };
    let class = Classification::from_response(status, body);
    if let Some(delay) = class.retry_after() {
        assert!(delay <= MAX_WIRE_DELAY, "{delay:?}");
    }
    let _ = (
        class.class().as_str(),
        class.model(),
        class.quota_id(),
        class.quota_metric(),
        class.quota_value(),
        class.reason(),
        class.message(),
        class.is_token_quota(),
        format!("{class:?}"),
    );
});
