//! Request bodies as Google and every layer will read them: JSON with no key twice in an object.
//!
//! serde_json keeps the last of two equal keys and a derived struct refuses them, so with
//! `{"model":"a","model":"b"}` one reader prices or caches `a` while another sends `b`. The
//! gateway refuses such a body (400) before anything reads it.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Objects with more keys than this are checked with a hash set rather than a scan.
const SCANNED: usize = 16;

/// `Ok` if `body` is one JSON value whose objects never repeat a key (compared after
/// unescaping, so `"mod\u0065l"` is `"model"`); otherwise what is wrong, for the client.
pub(crate) fn check(body: &[u8]) -> Result<(), String> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    Strict
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end())
        .map_err(|e| format!("the request body is not JSON as Google would read it: {e}"))
}

struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(Strict)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
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
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Strict)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys: Vec<Cow<'de, str>> = Vec::new();
        let mut many: Option<std::collections::HashSet<Cow<'de, str>>> = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let repeated = match many.as_mut() {
                Some(set) => !set.insert(key.clone()),
                None if keys.contains(&key) => true,
                None => {
                    keys.push(key.clone());
                    if keys.len() > SCANNED {
                        many = Some(keys.drain(..).collect());
                    }
                    false
                }
            };
            if repeated {
                return Err(de::Error::custom(format!(
                    "the key {:?} appears twice in one object; send it once",
                    crate::model::shorten(&key)
                )));
            }
            map.next_value_seed(Strict)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn a_key_twice_is_refused_at_any_depth_and_however_escaped() {
        assert!(check(br#"{"model":"a","contents":[{"parts":[{"text":"x"}]}]}"#).is_ok());
        assert!(check(br#"[1, "a", null, true, {"a":{"b":[]}}]"#).is_ok());
        for body in [
            &br#"{"model":"a","model":"b"}"#[..],
            br#"{"model":"a","mod\u0065l":"b"}"#,
            br#"{"contents":[{"parts":[{"text":"x","text":"y"}]}]}"#,
        ] {
            let error = check(body).unwrap_err();
            assert!(error.contains("appears twice"), "{error}");
        }
        let many: String = (0..40).map(|i| format!("\"k{i}\":{i},")).collect();
        assert!(check(format!("{{{many}\"z\":0}}").as_bytes()).is_ok());
        assert!(check(format!("{{{many}\"k7\":0}}").as_bytes()).is_err());
        assert!(check(b"{} trailing").is_err());
        assert!(check(b"not json").is_err());
    }
}
