//! The key scrubber: however a body is cut into frames, what comes out never holds the key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_gemini::fuzzing::scrub;

fuzz_target!(|data: &[u8]| {
    // [key length][cut size][key][body]; keys are visible ASCII, at least 8 long.
    let Some((&[len, cut], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let len = usize::from(len % 32) + 8;
    if rest.len() < len {
        return;
    }
    let (key, body) = rest.split_at(len);
    if !key.iter().all(u8::is_ascii_graphic) {
        return;
    }
    let shown = format!("…{}", String::from_utf8_lossy(&key[len - 4..]));
    let chunks: Vec<&[u8]> = body.chunks(usize::from(cut).max(1)).collect();
    let out = scrub(key, shown.as_bytes(), &chunks);
    assert!(
        !out.windows(key.len()).any(|w| w == key),
        "the key got through: {:?}",
        String::from_utf8_lossy(&out)
    );
});
