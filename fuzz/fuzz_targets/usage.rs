//! The usage scanners (the quota's prompt count, the cost layer's four counts) over any SSE/JSON
//! bytes, cut anywhere: never panic, and a count found in the whole body is found however the
//! body is cut.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_gemini::fuzzing::{prompt_tokens, usage_counts};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let whole = prompt_tokens(&[body]);
    let size = usize::from(cut).max(1);
    let chunks: Vec<&[u8]> = body.chunks(size).collect();
    let cut_up = prompt_tokens(&chunks);
    // A count split across chunks is carried over: the last count is the same, as long as the
    // key, the colon and the number fit the 64-byte carry (real counts are short: no runs of
    // spaces or of 20 digits).
    let short = !body.windows(2).any(|w| w.iter().all(u8::is_ascii_whitespace))
        && !body.windows(20).any(|w| w.iter().all(u8::is_ascii_digit));
    if short {
        assert_eq!(whole, cut_up, "cut every {size} bytes");
        assert_eq!(usage_counts(&[body]), usage_counts(&chunks), "cut every {size} bytes");
    }
});
