//! Request bodies as Google and every layer will read them: JSON with no key twice in an
//! object, no key written with an escape, and no reference to a resource the gateway does not
//! serve.
//!
//! serde_json keeps the last of two equal keys and a derived struct refuses them, so with
//! `{"model":"a","model":"b"}` one reader prices or caches `a` while another sends `b`. A key
//! written with an escape (`"cached\u0043ontent"`) is the same field to Google but slips past
//! a byte search for its name (the affinity layer's for `cachedContent`). An uploaded file
//! (`fileUri`/`file_uri`/`uri` naming Google's files service) or a File Search store
//! (`fileSearch`, `file_search`, their store names) may be named on the native routes, where the
//! stack's affinity layer checks that each is the client's own — found by its name as Google
//! writes it, so a URI of the API with an escape in its path, or `files/` in an odd case, is
//! refused; the OpenAI-compatible routes check no ownership and name none. The gateway refuses
//! such a body (400) before anything reads it.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Objects with more keys than this are checked with a hash set rather than a scan.
const SCANNED: usize = 16;

/// `Ok` if `body` is one JSON value whose objects never repeat a key (compared after
/// unescaping, so `"mod\u0065l"` is `"model"`); otherwise what is wrong, for the client.
/// `files_served`: uploaded files and File Search stores may be named (on the native routes,
/// where the stack checks that each is the client's own); else they are refused too.
pub(crate) fn check(body: &[u8], files_served: bool) -> Result<(), String> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    Strict {
        policy: true,
        files: !files_served,
    }
    .deserialize(&mut deserializer)
    .and_then(|()| deserializer.end())
    .map_err(|e| format!("the request body is not JSON as Google would read it: {e}"))
}

/// Reads a value strictly; `policy`: also refuses names of unserved resources (off inside a
/// function's arguments or result and a schema, which are the caller's own data).
#[derive(Clone, Copy)]
struct Strict {
    policy: bool,
    /// Refuse URIs of uploaded files (under `policy`).
    files: bool,
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
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
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // The first keys on the stack (an allocation per object was 3 of a request's ≈ 90).
        let mut keys: [Cow<'de, str>; SCANNED] = Default::default();
        let mut seen = 0;
        let mut many: Option<std::collections::HashSet<Cow<'de, str>>> = None;
        while let Some(key) = map.next_key_seed(Capture(self.files))? {
            // (A key is a string: `None` cannot come from JSON.)
            let Some(key) = key else {
                continue;
            };
            // An encoder escapes only what it must (non-ASCII, quotes, control characters): a
            // plain ASCII name written with an escape is meant to slip past a byte search.
            if matches!(key, Cow::Owned(_))
                && key
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
            {
                return Err(de::Error::custom(format!(
                    "the key {:?} is written with an escape; send field names as plain text",
                    crate::model::shorten(&key)
                )));
            }
            if self.policy && self.files && UNSERVED_KEYS.contains(&&*key) {
                return Err(de::Error::custom(format!(
                    "{key:?} names a File Search store, which this route does not serve: use the native routes"
                )));
            }
            let repeated = match many.as_mut() {
                Some(set) => !set.insert(key.clone()),
                None if keys[..seen].contains(&key) => true,
                None if seen == SCANNED => {
                    let mut set: std::collections::HashSet<Cow<'de, str>> =
                        keys.iter_mut().map(std::mem::take).collect();
                    set.insert(key.clone());
                    many = Some(set);
                    false
                }
                None => {
                    keys[seen] = key.clone();
                    seen += 1;
                    false
                }
            };
            if repeated {
                return Err(de::Error::custom(format!(
                    "the key {:?} appears twice in one object; send it once",
                    crate::model::shorten(&key)
                )));
            }
            if self.policy && FILE_KEYS.contains(&&*key) {
                let uri = map.next_value_seed(Capture(self.files))?;
                // A URI of the API's host that hides its path (an escape) could name a file
                // that no search finds.
                if let Some(uri) = &uri
                    && api_path(uri).is_some_and(|path| path.contains('%'))
                {
                    return Err(de::Error::custom(format!(
                        "{key:?} is a URI of the API with an escape in its path ({}): write it as Google gives it",
                        crate::model::shorten(uri)
                    )));
                }
                if let Some(uri) = uri
                    && names_google_file(&uri)
                {
                    if self.files {
                        return Err(de::Error::custom(format!(
                            "{key:?} names an uploaded file ({}), which this route does not serve: send the content inline, or use the native routes",
                            crate::model::shorten(&uri)
                        )));
                    }
                    // Served: each file is checked to be the client's own, found by its name
                    // as Google writes it (`files/…`), which an odd case would slip past.
                    if !uri.contains("files/") {
                        return Err(de::Error::custom(format!(
                            "{key:?} names a file as {}: write its name as Google gives it, \"files/…\" in lower case",
                            crate::model::shorten(&uri)
                        )));
                    }
                }
            } else {
                let policy = self.policy && !FREE_KEYS.contains(&&*key);
                map.next_value_seed(Strict { policy, ..self })?;
            }
        }
        Ok(())
    }
}

/// Keys whose string value may name a file of Google's files service.
const FILE_KEYS: &[&str] = &["fileUri", "file_uri", "uri"];
/// Keys that name a File Search store (a tool, or its store list).
const UNSERVED_KEYS: &[&str] = &[
    "fileSearch",
    "file_search",
    "fileSearchStoreNames",
    "file_search_store_names",
];

/// Keys whose values are the caller's own data (a function's arguments or result, a schema):
/// names in them are not read as references.
const FREE_KEYS: &[&str] = &[
    "args",
    "arguments",
    "response",
    "result",
    "parameters",
    "parametersJsonSchema",
    "parameters_json_schema",
    "responseSchema",
    "response_schema",
    "responseJsonSchema",
    "response_json_schema",
    "properties",
];

/// Does `uri` name a file of Google's files service, however cased or padded: a URL whose
/// host is the API's and whose path is under `/files/`, or (for `fileUri`) `files/…`?
fn names_google_file(uri: &str) -> bool {
    let lower = uri.trim().to_ascii_lowercase();
    if lower.starts_with("files/") {
        return true;
    }
    api_path(&lower).is_some_and(|path| path.contains("/files/"))
}

/// The path of a URI whose host is the API's (however cased, with or without a final dot).
fn api_path(uri: &str) -> Option<String> {
    let parsed = uri.trim().parse::<http::Uri>().ok()?;
    let host = parsed.host()?.trim_end_matches('.').to_ascii_lowercase();
    matches!(
        host.as_str(),
        "generativelanguage.googleapis.com" | "generativelanguage.mtls.googleapis.com"
    )
    .then(|| parsed.path().to_ascii_lowercase())
}

/// A value read strictly, and kept when it is a string: borrowed from the body when it was
/// written plainly, owned when it had to be unescaped (so an escaped key shows).
struct Capture(bool);

impl<'de> DeserializeSeed<'de> for Capture {
    type Value = Option<Cow<'de, str>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Capture {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(text)))
    }
    fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(text.to_owned())))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let strict = Strict {
            policy: true,
            files: self.0,
        };
        strict.visit_seq(seq).map(|()| None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let strict = Strict {
            policy: true,
            files: self.0,
        };
        strict.visit_map(map).map(|()| None)
    }
}

#[cfg(test)]
mod tests {
    /// As on the OpenAI-compatible routes: no uploaded file either.
    fn check(body: &[u8]) -> Result<(), String> {
        super::check(body, false)
    }

    #[test]
    fn a_key_twice_is_refused_at_any_depth_and_however_escaped() {
        assert!(check(br#"{"model":"a","contents":[{"parts":[{"text":"x"}]}]}"#).is_ok());
        assert!(check(br#"[1, "a", null, true, {"a":{"b":[]}}]"#).is_ok());
        for body in [
            &br#"{"model":"a","model":"b"}"#[..],
            br#"{"contents":[{"parts":[{"text":"x","text":"y"}]}]}"#,
        ] {
            let error = check(body).unwrap_err();
            assert!(error.contains("appears twice"), "{error}");
        }
        // A key written with an escape is refused whatever it spells (a second `model`, or a
        // `cachedContent` a byte search would miss); escapes in values are fine.
        for body in [
            &br#"{"model":"a","mod\u0065l":"b"}"#[..],
            br#"{"cached\u0043ontent":"cachedContents/x"}"#,
        ] {
            let error = check(body).unwrap_err();
            assert!(error.contains("escape"), "{error}");
        }
        assert!(check(br#"{"contents":[{"parts":[{"text":"a\nb \u00e9"}]}]}"#).is_ok());
        // A non-ASCII key escaped by an encoder (Python's json.dumps does) is fine.
        assert!(check(br#"{"args":{"caf\u00e9":1,"\u4e2d\u6587":2}}"#).is_ok());
        let many: String = (0..40).map(|i| format!("\"k{i}\":{i},")).collect();
        assert!(check(format!("{{{many}\"z\":0}}").as_bytes()).is_ok());
        assert!(check(format!("{{{many}\"k7\":0}}").as_bytes()).is_err());
        // At the edge of the keys kept on the stack: the 16th and 17th key.
        for n in [15, 16, 17] {
            let first: String = (0..n).map(|i| format!("\"k{i}\":{i},")).collect();
            assert!(check(format!("{{{first}\"k0\":0}}").as_bytes()).is_err());
            assert!(check(format!("{{{first}\"k{}\":0}}", n - 1).as_bytes()).is_err());
            assert!(check(format!("{{{first}\"z\":0}}").as_bytes()).is_ok());
        }
        assert!(check(b"{} trailing").is_err());
        assert!(check(b"not json").is_err());
    }
}

#[cfg(test)]
mod unserved {
    fn check(body: &[u8]) -> Result<(), String> {
        super::check(body, false)
    }

    #[test]
    fn on_the_native_routes_files_and_stores_are_named() {
        let file = r#"{"contents":[{"parts":[{"fileData":{"fileUri":"https://generativelanguage.googleapis.com/v1beta/files/abc"}}]}]}"#;
        assert!(super::check(file.as_bytes(), true).is_ok());
        let store = r#"{"tools":[{"fileSearch":{"fileSearchStoreNames":["fileSearchStores/s"]}}]}"#;
        assert!(super::check(store.as_bytes(), true).is_ok());
        let escaped = r#"{"contents":[{"parts":[{"fileData":{"fileUri":"https://generativelanguage.googleapis.com/v1beta/%66iles/abc"}}]}]}"#;
        assert!(super::check(escaped.as_bytes(), true).is_err());
    }

    #[test]
    fn files_and_file_search_stores_are_not_named() {
        for body in [
            r#"{"contents":[{"parts":[{"fileData":{"fileUri":"https://generativelanguage.googleapis.com/v1beta/files/abc"}}]}]}"#,
            r#"{"contents":[{"parts":[{"file_data":{"file_uri":"  FILES/abc"}}]}]}"#,
            r#"{"input":[{"type":"document","uri":"HTTPS://GENERATIVELANGUAGE.GOOGLEAPIS.COM/v1beta/files/x"}]}"#,
            r#"{"tools":[{"fileSearch":{"fileSearchStoreNames":["fileSearchStores/s"]}}]}"#,
            r#"{"tools":[{"type":"file_search","file_search_store_names":["fileSearchStores/s"]}]}"#,
        ] {
            let error = check(body.as_bytes()).unwrap_err();
            assert!(error.contains("does not serve"), "{body}: {error}");
        }
        // Other URIs (a public document, a video) are the client's to send.
        let public =
            r#"{"contents":[{"parts":[{"fileData":{"fileUri":"https://example.com/a.pdf"}}]}]}"#;
        assert!(check(public.as_bytes()).is_ok());
    }
}
