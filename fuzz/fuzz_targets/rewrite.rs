//! The fallback layer's rewrite of a request for another model, on any URI and body: never a
//! panic; a rewritten request names the new model, keeps its scheme, host and query, and its
//! path changes only where the model was.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_gemini::fuzzing::{model_of_request, rewrite_for_model};

const TO: &str = "gemini-2.0-flash";

fuzz_target!(|data: &[u8]| {
    // `<uri>\n<body>`
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let Ok(uri) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let body = data.get(split + 1..).unwrap_or_default();
    let Some((rewritten, new_body)) = rewrite_for_model(uri, body, TO) else {
        return;
    };
    assert_eq!(
        model_of_request(&rewritten, &new_body).as_deref(),
        Some(TO),
        "{uri:?} → {rewritten:?}"
    );
    let before: http::Uri = uri.parse().expect("it was sent");
    let after: http::Uri = rewritten.parse().expect("a URI");
    assert_eq!(before.scheme(), after.scheme());
    assert_eq!(before.authority(), after.authority());
    assert_eq!(before.query(), after.query());
    if let Some(old) = model_of_request(uri, body)
        && before.path() != after.path()
    {
        // Some place where the old name was holds the new one, and nothing else moved.
        let (was, is) = (before.path(), after.path());
        let swapped = was.match_indices(old.as_str()).any(|(at, _)| {
            is.get(..at) == Some(&was[..at])
                && is.get(at..at + TO.len()) == Some(TO)
                && is.get(at + TO.len()..) == Some(&was[at + old.len()..])
        });
        assert!(swapped, "{uri:?} → {rewritten:?}");
    }
});
