//! Model names from paths and bodies: never panics; what the gateway accepts as a model name
//! cannot change the route it is put in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_gemini::fuzzing::{model_in_json, model_in_path, model_name_ok};

fuzz_target!(|data: &[u8]| {
    let _ = model_in_json(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(model) = model_in_path(text) {
        assert!(text.contains(model));
    }
    if model_name_ok(text) {
        assert!(!text.is_empty() && text.len() <= 128);
        assert!(!text.contains(['/', '%', '?', '#', ':', '\\']), "{text:?}");
        assert!(
            text != "." && text != ".." && !text.starts_with('.'),
            "{text:?}"
        );
    }
});
