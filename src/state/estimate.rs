//! Estimating a request's input tokens and images before it is sent.

use std::fmt;

use serde::de::{
    Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor,
};

use super::meter::Demand;

/// Estimates what a request body will cost in tokens and images.
///
/// The estimate only gates admission; the ledger is corrected from the response's
/// `usageMetadata.promptTokenCount` (or `usage.prompt_tokens`) as soon as it streams past.
pub trait TokenEstimator: Send + Sync + fmt::Debug + 'static {
    /// The demand of a request with this body.
    fn estimate(&self, body: &[u8]) -> Demand;
}

/// The default estimate: about 4 bytes of text per token, counting the text of `parts[].text`
/// (native), `messages[].content` (OpenAI-compatible) and an interaction's `input` and
/// `system_instruction`, and one image per `inlineData` or
/// `image_url` part. A body that is not JSON counts 4 bytes per token of its whole length.
///
/// ```
/// use tower_gemini::quota::{BytesPerToken, TokenEstimator};
///
/// let body = br#"{"contents":[{"parts":[{"text":"12345678"},{"inlineData":{"mimeType":"image/png","data":"AAAA"}}]}]}"#;
/// let demand = BytesPerToken::default().estimate(body);
/// assert_eq!((demand.tokens, demand.images), (2, 1));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct BytesPerToken(pub f64);

impl Default for BytesPerToken {
    fn default() -> Self {
        BytesPerToken(4.0)
    }
}

#[derive(Default)]
struct Counts {
    text: u64,
    images: u64,
}

impl TokenEstimator for BytesPerToken {
    fn estimate(&self, body: &[u8]) -> Demand {
        let per_token = if self.0.is_finite() && self.0 > 0.0 {
            self.0
        } else {
            4.0
        };
        let mut counts = Counts::default();
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let parsed = Walk {
            counts: &mut counts,
            text: false,
        }
        .deserialize(&mut deserializer)
        .is_ok();
        let text = if parsed {
            counts.text
        } else {
            body.len() as u64
        };
        Demand {
            tokens: ((text as f64 / per_token).ceil() as u64).max(u64::from(!body.is_empty())),
            images: if parsed { counts.images } else { 0 },
        }
    }
}

/// Walks JSON without building it, counting text bytes and image parts.
struct Walk<'c> {
    counts: &'c mut Counts,
    /// Strings here are prompt text.
    text: bool,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_str<E>(self, value: &str) -> Result<(), E> {
        if self.text {
            self.counts.text += value.len() as u64;
        }
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(Walk {
                counts: &mut *self.counts,
                text: self.text,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Image => {
                    self.counts.images += 1;
                    map.next_value::<IgnoredAny>()?;
                }
                Key::Text | Key::Other => map.next_value_seed(Walk {
                    counts: &mut *self.counts,
                    text: key == Key::Text,
                })?,
            }
        }
        Ok(())
    }
}

/// What a JSON object's key says of its value, read without allocating the key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    /// Prompt text: `text`, `content`, an interaction's `input` and `system_instruction`.
    Text,
    /// An image or file part.
    Image,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
        struct KeyVisitor;

        impl Visitor<'_> for KeyVisitor {
            type Value = Key;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }

            fn visit_str<E>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "inlineData" | "inline_data" | "image_url" | "fileData" | "file_data" => {
                        Key::Image
                    }
                    // (`input` and `system_instruction`: an interaction's, as strings.)
                    "text" | "content" | "input" | "system_instruction" => Key::Text,
                    _ => Key::Other,
                })
            }
        }

        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_and_openai_bodies() {
        let est = BytesPerToken::default();
        let native = br#"{"systemInstruction":{"parts":[{"text":"abcd"}]},"contents":[{"role":"user","parts":[{"text":"efghijkl"}]}],"generationConfig":{"temperature":0.5}}"#;
        assert_eq!(est.estimate(native).tokens, 3);
        let openai = br#"{"model":"gemini-2.0-flash","messages":[{"role":"user","content":"0123456789abcdef"},{"role":"user","content":[{"type":"text","text":"1234"},{"type":"image_url","image_url":{"url":"data:x"}}]}]}"#;
        let demand = est.estimate(openai);
        assert_eq!((demand.tokens, demand.images), (5, 1));
        // An interaction's input and system instruction, as strings or as content.
        let interaction =
            br#"{"model":"gemini-2.5-flash","system_instruction":"abcd","input":"efghijkl"}"#;
        assert_eq!(est.estimate(interaction).tokens, 3);
        let steps = br#"{"model":"m","input":[{"type":"text","text":"abcdefgh"}]}"#;
        assert_eq!(est.estimate(steps).tokens, 2);
    }

    #[test]
    fn escaped_text_and_non_json() {
        let est = BytesPerToken::default();
        assert_eq!(
            est.estimate(br#"{"contents":[{"parts":[{"text":"a\"b\nc"}]}]}"#)
                .tokens,
            2
        );
        assert_eq!(est.estimate(b"not json at all!").tokens, 4);
        assert_eq!(est.estimate(b"").tokens, 0);
        assert_eq!(est.estimate(br#"{"contents":[]}"#).tokens, 1);
    }
}
