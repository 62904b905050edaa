//! Which requests are cacheable, and their cache key.

use std::fmt::Write as _;
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderMap, Method};
use serde_json::Value;

use super::{CACHE_HEADER, NAMESPACE_HEADER};

/// A cacheable request's key: namespace, model and canonical body.
pub(crate) struct Keyed {
    pub(crate) key: Arc<str>,
    pub(crate) model: String,
    /// A streamed answer (`streamGenerateContent`, or an OpenAI chat with `"stream": true`):
    /// recorded as it passes and stored only once it has ended whole.
    pub(crate) stream: bool,
}

/// What the caller asked of the cache in its headers.
fn asked(headers: &HeaderMap) -> Option<bool> {
    if headers
        .get(http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("no-store"))
    {
        return Some(false);
    }
    match headers
        .get(CACHE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        Some("no" | "off" | "false" | "0") => Some(false),
        Some("yes" | "on" | "true" | "1") => Some(true),
        _ => None,
    }
}

/// Could a request with this head be cached at all? Checked before its body is read, so that
/// other routes and opted-out calls pass without being buffered.
pub(crate) fn candidate(method: &Method, path: &str, headers: &HeaderMap) -> bool {
    method == Method::POST
        && (path.ends_with(":generateContent")
            || path.ends_with(":streamGenerateContent")
            || path.ends_with("/chat/completions"))
        && asked(headers) != Some(false)
}

/// The key of a request, if it may be served from (and stored in) the cache.
pub(crate) fn of(parts: &Parts, body: &[u8], cache_sampled: bool) -> Option<Keyed> {
    let path = parts.uri.path();
    // A request pinned to one project refers to that project's resources: its answer is not
    // another caller's to reuse, nor another project's to give.
    if !candidate(&parts.method, path, &parts.headers)
        || parts.extensions.get::<crate::context::Owner>().is_some()
    {
        return None;
    }
    // An answer made over a project's resource (a context cache, an uploaded file, a File
    // Search store) is its owner's: never another caller's to reuse. (Found as the affinity
    // layer finds them, which may sit below this one and pin the request only later; a body
    // whose names cannot be read is not cached either.)
    if crate::resources::references_in(body).is_some() {
        return None;
    }
    let asked = asked(&parts.headers);
    let json: Value = serde_json::from_slice(body).ok()?;
    let (model, stream) = if path.ends_with(":generateContent") {
        (crate::model::model_in_path(path)?.to_owned(), false)
    } else if path.ends_with(":streamGenerateContent") {
        (crate::model::model_in_path(path)?.to_owned(), true)
    } else {
        // `/chat/completions`, as `candidate` checked.
        let stream = json.get("stream").and_then(Value::as_bool) == Some(true);
        // The body is parsed here anyway (for its canonical form): its model is read from that.
        let model = match parts.extensions.get::<crate::Model>() {
            Some(model) => model.as_str().to_owned(),
            None => crate::model::model_in_value(&json)?,
        };
        (model, stream)
    };
    let temperature = json
        .get("generationConfig")
        .and_then(|c| c.get("temperature"))
        .or_else(|| json.get("temperature"))
        .and_then(Value::as_f64);
    let deterministic = temperature == Some(0.0);
    if !deterministic && !cache_sampled && asked != Some(true) {
        return None;
    }
    // The namespace's bytes, hex-encoded: any byte counts (two tenants whose names differ only
    // in non-ASCII bytes are two namespaces, not one empty one).
    let namespace = parts
        .headers
        .get(NAMESPACE_HEADER)
        .map(|v| hex(v.as_bytes()))
        .unwrap_or_default();
    let mut key = String::with_capacity(body.len() + 64);
    // Lengths first, so no namespace or model can run into the next field. The query is
    // part of it: `alt=sse` and a JSON array are two forms of one stream.
    let query = parts.uri.query().unwrap_or("");
    let _ = writeln!(
        key,
        "{}:{namespace}{}:{model}{path}?{query}",
        namespace.len(),
        model.len()
    );
    canonical(&json, &mut key);
    Some(Keyed {
        key: Arc::from(key),
        model,
        stream,
    })
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// `value` as JSON with object keys sorted and no whitespace: the same request however its
/// client spelled it.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (name, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(name.clone()).to_string());
                out.push(':');
                canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        // `0`, `0.0` and `0e0` are one number.
        Value::Number(number) => match number.as_f64() {
            Some(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => {
                let _ = write!(out, "{}", x as i64);
            }
            _ => out.push_str(&number.to_string()),
        },
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(path: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::post(format!("http://h{path}"));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    const PATH: &str = "/v1beta/models/gemini-2.0-flash:generateContent";

    #[test]
    fn the_same_request_spelled_differently_has_one_key() {
        let a = br#"{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"temperature":0}}"#;
        let b = br#"{ "generationConfig": {"temperature": 0.0},
                      "contents": [ {"parts": [{"text": "hi"}]} ] }"#;
        let ka = of(&parts(PATH, &[]), a, false).unwrap();
        let kb = of(&parts(PATH, &[]), b, false).unwrap();
        assert_eq!(ka.key, kb.key);
        assert_eq!(ka.model, "gemini-2.0-flash");
        // Another namespace, another key.
        let kc = of(&parts(PATH, &[(NAMESPACE_HEADER, "tenant-b")]), a, false).unwrap();
        assert_ne!(ka.key, kc.key);
    }

    /// An answer made over a context cache belongs to the cache's owner: not kept.
    #[test]
    fn answers_over_a_context_cache_are_not_kept() {
        let plain =
            br#"{"contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"temperature":0}}"#;
        assert!(of(&parts(PATH, &[]), plain, false).is_some());
        let cached = br#"{"cachedContent":"cachedContents/c1","contents":[{"parts":[{"text":"hi"}]}],"generationConfig":{"temperature":0}}"#;
        assert!(of(&parts(PATH, &[]), cached, false).is_none());
    }

    /// Header values that are not visible ASCII are namespaces too: each its own, never the
    /// empty one (two tenants named in UTF-8 got each other's answers).
    #[test]
    fn non_ascii_namespaces_are_apart_from_each_other_and_from_none() {
        let a = br#"{"contents":[],"generationConfig":{"temperature":0}}"#;
        let key = |namespace: &[u8]| {
            let mut parts = parts(PATH, &[]);
            parts.headers.insert(
                NAMESPACE_HEADER,
                http::HeaderValue::from_bytes(namespace).unwrap(),
            );
            of(&parts, a, false).unwrap().key
        };
        let none = of(&parts(PATH, &[]), a, false).unwrap().key;
        let first = key("mandant-ä".as_bytes());
        let second = key("mandant-ö".as_bytes());
        assert_ne!(first, none);
        assert_ne!(second, none);
        assert_ne!(first, second);
        assert_eq!(first, key("mandant-ä".as_bytes()));
    }

    #[test]
    fn sampled_opted_out_and_malformed_requests_are_not_cached() {
        let sampled = br#"{"contents":[{"parts":[{"text":"hi"}]}]}"#;
        assert!(of(&parts(PATH, &[]), sampled, false).is_none());
        assert!(of(&parts(PATH, &[(CACHE_HEADER, "yes")]), sampled, false).is_some());
        assert!(of(&parts(PATH, &[]), sampled, true).is_some());
        let fixed = br#"{"contents":[],"generationConfig":{"temperature":0}}"#;
        assert!(of(&parts(PATH, &[(CACHE_HEADER, "no")]), fixed, true).is_none());
        assert!(of(&parts(PATH, &[("cache-control", "no-store")]), fixed, true).is_none());
        let chat = br#"{"model":"gemini-2.0-flash","temperature":0,"messages":[]}"#;
        let keyed = of(&parts("/v1beta/openai/chat/completions", &[]), chat, false).unwrap();
        assert_eq!(keyed.model, "gemini-2.0-flash");
        assert!(!keyed.stream);
        assert!(of(&parts(PATH, &[]), b"not json", true).is_none());
    }

    #[test]
    fn streams_are_keyed_apart_by_form() {
        let fixed = br#"{"contents":[],"generationConfig":{"temperature":0}}"#;
        let stream = "/v1beta/models/gemini-2.0-flash:streamGenerateContent";
        let sse = of(&parts(&format!("{stream}?alt=sse"), &[]), fixed, false).unwrap();
        let array = of(&parts(stream, &[]), fixed, false).unwrap();
        let whole = of(&parts(PATH, &[]), fixed, false).unwrap();
        assert!(sse.stream && array.stream && !whole.stream);
        assert_ne!(sse.key, array.key);
        assert_ne!(sse.key, whole.key);
        let chat = br#"{"model":"gemini-2.0-flash","temperature":0,"stream":true,"messages":[]}"#;
        let keyed = of(&parts("/v1beta/openai/chat/completions", &[]), chat, false).unwrap();
        assert!(keyed.stream);
    }
}
