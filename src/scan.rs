//! Counts read from a streamed answer as it passes, without buffering it: the usage fields of
//! Gemini's answers (`usageMetadata`, OpenAI's `usage`, the Interactions API's `usage`), found
//! wherever the stream is cut. Shared by the layers that read usage (quota, cost, affinity).

/// The prompt count's names: native, OpenAI-compatible, Interactions.
const KEYS: [&[u8]; 3] = [
    b"\"promptTokenCount\"",
    b"\"prompt_tokens\"",
    b"\"total_input_tokens\"",
];
/// Bytes kept between chunks so a key or number split across chunks is still found (the
/// longest key read, `"cachedContentTokenCount"`, and a 20-digit number fit).
const CARRY: usize = 64;

/// Finds the last `"promptTokenCount": N` (or OpenAI's `"prompt_tokens": N`, or the
/// Interactions API's `"total_input_tokens": N`) in a byte stream.
#[derive(Debug, Default)]
pub(crate) struct PromptTokens {
    counts: LastCounts<1>,
}

impl PromptTokens {
    /// Scan the next chunk; the last complete count in it, if any.
    pub(crate) fn scan(&mut self, chunk: &[u8]) -> Option<u64> {
        self.counts.scan(chunk, &[&KEYS])[0]
    }
}

/// Finds, for each of `N` fields, the last count named by any of the field's keys, in a byte
/// stream cut anywhere.
#[derive(Debug, Default)]
pub(crate) struct LastCounts<const N: usize> {
    carry: Vec<u8>,
}

impl<const N: usize> LastCounts<N> {
    /// Scan the next chunk; for each field, the last complete count in it, if any.
    pub(crate) fn scan(&mut self, chunk: &[u8], fields: &[&[&[u8]]; N]) -> [Option<u64>; N] {
        self.scan_placed(chunk, fields)
            .map(|found| found.map(|(count, _)| count))
    }

    /// Like [`scan`](Self::scan), each count with where it was found (an offset in the text
    /// scanned, comparable between the fields of one call only).
    pub(crate) fn scan_placed(
        &mut self,
        chunk: &[u8],
        fields: &[&[&[u8]]; N],
    ) -> [Option<(u64, usize)>; N] {
        // The tail of the previous chunks is kept in one buffer, reused: no allocation per
        // chunk once it has grown.
        if self.carry.is_empty() {
            let found = last_counts(chunk, fields);
            let keep = chunk.len().min(CARRY);
            self.carry.extend_from_slice(&chunk[chunk.len() - keep..]);
            found
        } else {
            self.carry.extend_from_slice(chunk);
            let found = last_counts(&self.carry, fields);
            let gone = self.carry.len().saturating_sub(CARRY);
            self.carry.drain(..gone);
            found
        }
    }
}

/// How every key read here ends: a key is found from its end, by a vectorised search for
/// these, instead of by looking at every quote of the body.
const ENDINGS: [&[u8]; 2] = [b"Count\"", b"tokens\""];

/// For each field, the count that comes last in `text`, whichever of its keys names it (found
/// by the fuzz target `usage`: with two keys in one body, the answer depended on how it was
/// cut).
///
/// Every key ends with one of [`ENDINGS`] and holds no quote, so a key is where an ending is
/// found and the nearest quote before it opens the same text: a search per ending over the
/// text (SIMD, via `memchr`) and a comparison per match, not per quote. (One pass over every
/// quote, comparing its next byte with each key's, cost ~13,000 instructions for a 400-byte
/// answer and the cost layer's eleven keys; searching for each key in turn, before that,
/// ~26 µs for seven.) That pass is kept as the tests' oracle; every key read ends as
/// [`ENDINGS`] says (a unit test checks the crate's, an assertion in debug builds any other).
fn last_counts<const N: usize>(text: &[u8], fields: &[&[&[u8]]; N]) -> [Option<(u64, usize)>; N] {
    debug_assert!(
        fields.iter().all(|keys| keys
            .iter()
            .all(|key| ENDINGS.iter().any(|e| key.ends_with(e)))),
        "a key read by its ending must end as ENDINGS says"
    );
    let mut found: [Option<(u64, usize)>; N] = [None; N];
    for (ending, finder) in ENDINGS.iter().zip(finders()) {
        for at in finder.find_iter(text) {
            let end = at + ending.len();
            let Some(open) = memchr::memrchr(b'"', &text[..at]) else {
                continue;
            };
            let key = &text[open..end];
            for (slot, keys) in found.iter_mut().zip(fields) {
                if keys.contains(&key)
                    && let Some(n) = number_after(&text[end..])
                    && slot.is_none_or(|(_, placed)| placed < open)
                {
                    *slot = Some((n, open));
                }
            }
        }
    }
    found
}

/// The searchers for [`ENDINGS`], built once.
fn finders() -> &'static [memchr::memmem::Finder<'static>; 2] {
    static FINDERS: std::sync::OnceLock<[memchr::memmem::Finder<'static>; 2]> =
        std::sync::OnceLock::new();
    FINDERS.get_or_init(|| ENDINGS.map(memchr::memmem::Finder::new))
}

/// [`last_counts`] by looking at every quote: the tests' oracle.
#[cfg(test)]
fn last_counts_by_quote<const N: usize>(
    text: &[u8],
    fields: &[&[&[u8]]; N],
) -> [Option<(u64, usize)>; N] {
    let mut found = [None; N];
    for offset in memchr::memchr_iter(b'"', text) {
        let rest = &text[offset..];
        for (slot, keys) in found.iter_mut().zip(fields) {
            for key in *keys {
                // Not a number, or cut by the end of the text (the carry brings it back):
                // either way, look further.
                if rest.starts_with(key)
                    && let Some(n) = number_after(&rest[key.len()..])
                {
                    *slot = Some((n, offset));
                }
            }
        }
    }
    found
}

/// `  : 123,` → 123. `None` if the number is not complete in this text.
fn number_after(text: &[u8]) -> Option<u64> {
    let mut i = 0;
    while i < text.len() && text[i].is_ascii_whitespace() {
        i += 1;
    }
    if text.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    while i < text.len() && text[i].is_ascii_whitespace() {
        i += 1;
    }
    let start = i;
    while i < text.len() && text[i].is_ascii_digit() {
        i += 1;
    }
    if i == start || i == text.len() {
        // No digits, or they may continue in the next chunk.
        return None;
    }
    std::str::from_utf8(&text[start..i]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys the layers read are found by their endings (else by the slower pass).
    #[test]
    fn every_key_read_ends_as_the_search_expects() {
        let keys = KEYS.iter().chain(
            crate::cost::USAGE_FIELDS
                .iter()
                .flat_map(|keys| keys.iter()),
        );
        for key in keys {
            assert!(
                ENDINGS.iter().any(|e| key.ends_with(e)),
                "{}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn finds_the_count_in_json_and_sse() {
        let mut s = PromptTokens::default();
        assert_eq!(
            s.scan(br#"{"usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 3}}"#),
            Some(12)
        );
        let mut s = PromptTokens::default();
        let sse = b"data: {\"usageMetadata\":{\"promptTokenCount\":7}}\r\n\r\ndata: {\"usageMetadata\":{\"promptTokenCount\":9}}\r\n\r\n";
        assert_eq!(s.scan(sse), Some(9));
        let mut s = PromptTokens::default();
        assert_eq!(
            s.scan(br#"{"usage":{"prompt_tokens":41,"completion_tokens":2}}"#),
            Some(41)
        );
    }

    /// Found by the `usage` fuzz target: with both keys in one body the last count wins, and a
    /// key followed by no number does not hide a later count, as when the body comes in pieces.
    #[test]
    fn the_last_count_wins_whichever_key_names_it() {
        let text = br#"{"promptTokenCount": x} {"usageMetadata":{"promptTokenCount":12}}"#;
        assert_eq!(PromptTokens::default().scan(text), Some(12));
        let text = br#"{"prompt_tokens"prompt_tokens":4}"#;
        assert_eq!(PromptTokens::default().scan(text), Some(4));
        let text = br#"{"usage":{"prompt_tokens":3}} {"usageMetadata":{"promptTokenCount":12}}"#;
        assert_eq!(PromptTokens::default().scan(text), Some(12));
        let mut s = PromptTokens::default();
        let (first, second) = text.split_at(30);
        assert_eq!(s.scan(first), Some(3));
        assert_eq!(s.scan(second), Some(12));
    }

    #[test]
    fn a_count_split_across_chunks_is_found() {
        let text = br#"{"usageMetadata":{"promptTokenCount":12345,"x":1}}"#;
        for cut in 1..text.len() {
            let mut s = PromptTokens::default();
            let first = s.scan(&text[..cut]);
            let second = s.scan(&text[cut..]);
            assert_eq!(first.or(second), Some(12345), "cut at {cut}");
            assert!(
                first.is_none() || first == Some(12345),
                "cut at {cut}: {first:?}"
            );
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Wherever the stream is cut, the last count is found and nothing panics.
        #[test]
        fn any_chunking_finds_the_last_count(n in 0u64..10_000_000, cuts in proptest::collection::vec(0usize..200, 0..6), noise in "[ -~]{0,30}") {
            let text = format!("data: {{\"x\":\"{noise}\",\"usageMetadata\":{{\"promptTokenCount\": {n}, \"candidatesTokenCount\":1}}}}\r\n\r\n");
            let bytes = text.as_bytes();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            points.sort_unstable();
            let mut scanner = PromptTokens::default();
            let mut last = None;
            let mut from = 0;
            for p in points.into_iter().chain([bytes.len()]) {
                if let Some(found) = scanner.scan(&bytes[from..p]) {
                    last = Some(found);
                }
                from = p;
            }
            prop_assert_eq!(last, Some(n));
        }

        /// Found from the keys' endings, the counts and their places are those every quote
        /// would give, in any text made of keys, quotes, numbers and noise.
        #[test]
        fn searching_by_ending_finds_what_every_quote_finds(parts in proptest::collection::vec(prop_oneof![
            Just("\"promptTokenCount\"".to_owned()),
            Just("\"prompt_tokens\"".to_owned()),
            Just("\"total_input_tokens\"".to_owned()),
            Just("\"cachedContentTokenCount\"".to_owned()),
            Just("\"total_cached_tokens\"".to_owned()),
            Just("\"cached_tokens\"".to_owned()),
            Just("\"".to_owned()),
            Just("Count\"".to_owned()),
            Just("tokens\"".to_owned()),
            Just(": ".to_owned()),
            "[0-9]{1,4}",
            "[ -~]{0,6}",
        ], 0..40)) {
            let text = parts.concat();
            const KEYS: [&[&[u8]]; 2] = [
                &[b"\"promptTokenCount\"", b"\"prompt_tokens\"", b"\"total_input_tokens\""],
                &[b"\"cachedContentTokenCount\"", b"\"cached_tokens\"", b"\"total_cached_tokens\""],
            ];
            prop_assert_eq!(
                last_counts(text.as_bytes(), &KEYS),
                last_counts_by_quote(text.as_bytes(), &KEYS)
            );
        }
    }
}
