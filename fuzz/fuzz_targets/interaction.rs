//! What the affinity layer reads from the network: the id a created interaction's answer names
//! (JSON or SSE, cut anywhere), the interaction a request refers to (path and body as sent),
//! the cache a body names, a body's prefix key: never panic; an id found is always a plausible id, and the same however
//! the answer is cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_gemini::fuzzing::{
    created_interaction_id, interaction_referred, prefix_key, resources_named,
};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let sse = cut & 1 == 1;
    let size = usize::from(cut >> 1).max(1);
    let chunks: Vec<&[u8]> = body.chunks(size).collect();
    let whole = created_interaction_id(sse, &[body]);
    let cut_up = created_interaction_id(sse, &chunks);
    assert_eq!(whole, cut_up, "cut every {size} bytes");
    if let Some(id) = &whole {
        assert!(id.len() <= 200 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)));
    }
    let text = String::from_utf8_lossy(body);
    let path = format!("/v1beta/interactions/{text}");
    if let Some(name) = interaction_referred(false, &path, b"") {
        assert!(!name.contains('/') || name.starts_with("interactions/") && name.matches('/').count() == 1);
    }
    let _ = interaction_referred(true, "/v1/interactions", body);
    let _ = prefix_key("gemini-2.5-flash", body);
    for name in resources_named(body).unwrap_or_default() {
        let plain = name.starts_with("cachedContents/") || name.starts_with("files/");
        assert!(plain && name.matches('/').count() == 1, "{name}");
    }
});
