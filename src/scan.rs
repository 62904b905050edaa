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

/// For each field, the count that comes last in `text`, whichever of its keys names it (found
/// by the fuzz target `usage`: with two keys in one body, the answer depended on how it was
/// cut). One pass over the text's quotes — every key starts with one — so a body costs about
/// a comparison per byte however many keys are read (searching for each key in turn cost
/// ~26 µs for a 700-byte answer and seven keys).
fn last_counts<const N: usize>(text: &[u8], fields: &[&[&[u8]]; N]) -> [Option<(u64, usize)>; N] {
    let mut found = [None; N];
    let mut at = 0;
    while let Some(offset) = text[at..].iter().position(|&b| b == b'"') {
        let rest = &text[at + offset..];
        // The byte after the quote rules out most keys at once (most quotes open other names
        // or values) before any comparison of a whole key.
        let Some(&first) = rest.get(1) else {
            break;
        };
        for (slot, keys) in found.iter_mut().zip(fields) {
            for key in *keys {
                // Not a number, or cut by the end of the text (the carry brings it back):
                // either way, look further.
                if key.get(1) == Some(&first)
                    && rest.starts_with(key)
                    && let Some(n) = number_after(&rest[key.len()..])
                {
                    *slot = Some((n, at + offset));
                }
            }
        }
        // One byte on: a closing quote may open the next key.
        at += offset + 1;
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
    }
}
