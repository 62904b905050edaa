//! Gemini's error wire format: `google.rpc.Status` JSON, read with borrowed strings.
//!
//! `{"error":{"code","message","status","details":[...]}}`, sometimes wrapped in a one-element
//! array. Details carry `QuotaFailure.violations[]`, `RetryInfo.retryDelay` and
//! `ErrorInfo.reason`. Anything unexpected is skipped rather than refused.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

#[derive(Deserialize, Default)]
pub(super) struct Envelope<'a> {
    #[serde(borrow, default)]
    pub(super) error: Option<Status<'a>>,
}

#[derive(Deserialize, Default)]
pub(super) struct Status<'a> {
    #[serde(borrow, default)]
    pub(super) message: Option<Cow<'a, str>>,
    /// The canonical code's name, e.g. `RESOURCE_EXHAUSTED`.
    #[serde(borrow, default)]
    pub(super) status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) details: Vec<Detail<'a>>,
}

#[derive(Deserialize, Default)]
pub(super) struct Detail<'a> {
    #[serde(borrow, default)]
    pub(super) reason: Option<Cow<'a, str>>,
    /// `ErrorInfo.domain` (`googleapis.com`); anything, as sent.
    #[serde(default)]
    pub(super) domain: Option<serde_json::Value>,
    /// `ErrorInfo.metadata` (`service`, `consumer`, …); anything, as sent.
    #[serde(default)]
    pub(super) metadata: Option<serde_json::Value>,
    #[serde(rename = "retryDelay", borrow, default)]
    pub(super) retry_delay: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) violations: Vec<Violation<'a>>,
}

#[derive(Deserialize, Default)]
pub(super) struct Violation<'a> {
    #[serde(rename = "quotaMetric", borrow, default)]
    pub(super) quota_metric: Option<Cow<'a, str>>,
    #[serde(rename = "quotaId", borrow, default)]
    pub(super) quota_id: Option<Cow<'a, str>>,
    #[serde(rename = "quotaDimensions", default)]
    pub(super) dimensions: Dimensions,
    #[serde(rename = "quotaValue", default, deserialize_with = "lenient_u64")]
    pub(super) quota_value: Option<u64>,
}

impl Detail<'_> {
    /// Is this `ErrorInfo` about the Gemini API itself (its domain and service, where given)?
    /// A reason about another service (a feature backed by another Google API) says nothing
    /// of the key's standing here.
    pub(super) fn is_about_gemini(&self) -> bool {
        let domain_ok = self
            .domain
            .as_ref()
            .is_none_or(|d| d.as_str() == Some("googleapis.com"));
        let service_ok = self
            .metadata
            .as_ref()
            .and_then(|m| m.get("service"))
            .is_none_or(|s| s.as_str() == Some("generativelanguage.googleapis.com"));
        domain_ok && service_ok
    }
}

/// `quotaDimensions`: only `model` matters. Anything that is not an object is ignored.
#[derive(Default)]
pub(super) struct Dimensions {
    pub(super) model: Option<String>,
}

impl<'de> Deserialize<'de> for Dimensions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Dimensions;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("quota dimensions")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Dimensions, A::Error> {
                let mut out = Dimensions::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "model" {
                        out.model = map.next_value::<Option<String>>().ok().flatten();
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(out)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dimensions, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Dimensions::default())
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Dimensions, E> {
                Ok(Dimensions::default())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Dimensions, E> {
                Ok(Dimensions::default())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Dimensions, E> {
                Ok(Dimensions::default())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Dimensions, E> {
                Ok(Dimensions::default())
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Dimensions, E> {
                Ok(Dimensions::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<Dimensions, E> {
                Ok(Dimensions::default())
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// proto3 JSON writes int64 as a string (`"15"`); accept a number too, ignore anything else.
fn lenient_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer or a string holding one")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<u64>, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<u64>, E> {
            Ok(u64::try_from(v).ok())
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Option<u64>, E> {
            Ok((v >= 0.0 && v.is_finite()).then_some(v as u64))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<u64>, E> {
            Ok(v.trim().parse().ok())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<u64>, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Option<u64>, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Option<u64>, D2::Error> {
            d.deserialize_any(V)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<u64>, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<u64>, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }
    deserializer.deserialize_any(V)
}

/// Parse a body as a `google.rpc.Status` envelope, bare or in a one-element array.
pub(super) fn parse(body: &[u8]) -> Option<Status<'_>> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[start] == b'[' {
        let mut all: Vec<Envelope<'_>> = serde_json::from_slice(body).ok()?;
        if all.is_empty() {
            return None;
        }
        all.swap_remove(0).error
    } else {
        serde_json::from_slice::<Envelope<'_>>(body).ok()?.error
    }
}

/// The longest delay taken from the wire: a larger `retryDelay` (or "retry in …") is read as this.
/// Nothing Google sends means more than an hour; a bigger number is a malformed or hostile body,
/// and capping it here keeps every later addition of it to a time from overflowing.
pub const MAX_WIRE_DELAY: Duration = Duration::from_secs(3600);

/// Parse a protobuf JSON duration such as `"26s"` or `"47.434392449s"`, capped at
/// [`MAX_WIRE_DELAY`].
pub(super) fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let number = text.strip_suffix('s').unwrap_or(text);
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // More digits than a u64 holds is still a (huge) number: it saturates, then is capped.
    let secs: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().unwrap_or(u64::MAX)
    };
    let mut nanos: u32 = 0;
    for (i, digit) in fraction.bytes().take(9).enumerate() {
        nanos += u32::from(digit - b'0') * 10u32.pow(8 - i as u32);
    }
    Some(Duration::new(secs.min(MAX_WIRE_DELAY.as_secs()), nanos).min(MAX_WIRE_DELAY))
}

/// The delay in a message's "Please retry in 36.429760048s." sentence.
pub(super) fn retry_in_message(message: &str) -> Option<Duration> {
    let at = find_ignore_case(message.as_bytes(), b"retry in ")?;
    let rest = &message[at + "retry in ".len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let number = rest[..end].trim_end_matches('.');
    let unit = rest[end..].trim_start();
    if unit.starts_with("ms") {
        let ms: f64 = number.parse().ok()?;
        let delay = Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(MAX_WIRE_DELAY);
        return Some(delay.min(MAX_WIRE_DELAY));
    }
    if unit.starts_with('s') {
        return parse_duration(number);
    }
    None
}

/// Byte-substring search ignoring ASCII case; `None` if absent.
pub(super) fn find_ignore_case(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

/// Does `text` contain `needle`, ignoring ASCII case?
pub(super) fn contains(text: &[u8], needle: &str) -> bool {
    find_ignore_case(text, needle.as_bytes()).is_some()
}

/// Does the text say "limit: 0" (a quota of zero: the model is not on this project's tier)?
pub(super) fn says_limit_zero(text: &[u8]) -> bool {
    let needle = b"limit: 0";
    let mut from = 0;
    while let Some(at) = find_ignore_case(&text[from..], needle) {
        let end = from + at + needle.len();
        if text.get(end).is_none_or(|b| !b.is_ascii_digit()) {
            return true;
        }
        from = end;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("26s"), Some(Duration::from_secs(26)));
        assert_eq!(
            parse_duration("47.434392449s"),
            Some(Duration::new(47, 434_392_449))
        );
        assert_eq!(parse_duration("45.8s"), Some(Duration::from_millis(45_800)));
        assert_eq!(parse_duration("0.5s"), Some(Duration::from_millis(500)));
        assert_eq!(
            parse_duration("1.1234567891234s"),
            Some(Duration::new(1, 123_456_789))
        );
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("-3s"), None);
        assert_eq!(parse_duration("abc"), None);
        assert_eq!(
            parse_duration("99999999999999999999999s"),
            Some(MAX_WIRE_DELAY)
        );
        assert_eq!(
            parse_duration("18446744073709551615s"),
            Some(MAX_WIRE_DELAY)
        );
        assert_eq!(parse_duration("3601.5s"), Some(MAX_WIRE_DELAY));
    }

    #[test]
    fn retry_sentence() {
        assert_eq!(
            retry_in_message("limit: 20\nPlease retry in 36.429760048s."),
            Some(Duration::new(36, 429_760_048))
        );
        assert_eq!(
            retry_in_message("Please retry in 750ms."),
            Some(Duration::from_millis(750))
        );
        assert_eq!(retry_in_message("Please retry later."), None);
    }

    #[test]
    fn limit_zero_is_not_limit_ten() {
        assert!(says_limit_zero(b"requests, limit: 0, model: x"));
        assert!(says_limit_zero(b"requests, limit: 0"));
        assert!(!says_limit_zero(b"requests, limit: 05"));
        assert!(!says_limit_zero(b"requests, limit: 10"));
        assert!(says_limit_zero(b"limit: 01 and limit: 0\n"));
    }

    #[test]
    fn quota_value_string_or_number() {
        let s = parse(br#"{"error":{"details":[{"violations":[{"quotaValue":"15"},{"quotaValue":7},{"quotaValue":{"x":1}}]}]}}"#).unwrap();
        let v: Vec<_> = s.details[0]
            .violations
            .iter()
            .map(|v| v.quota_value)
            .collect();
        assert_eq!(v, vec![Some(15), Some(7), None]);
    }
}
