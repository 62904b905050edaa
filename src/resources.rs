//! Shared words for the resources of Google's projects (below the layers: the affinity layer
//! pins by them, the cache layer keeps no answer over them): a plausible resource id, and the
//! project-owned resources a request body names: a context cache (`cachedContent`), an
//! uploaded file (`fileData.fileUri`, an interaction's content `uri`, a batch's
//! `input_config.file_name`, an import's `fileName`), a File Search store (a tool's
//! `fileSearchStoreNames`, an interaction's `file_search_store_names`). Each such resource lives
//! in one project, so the request must be sent there.
//!
//! Found by a byte search first (most bodies name none), then one parse and a walk of the
//! body, under every spelling Google's JSON front end accepts (camelCase and snake_case, a key
//! written with an escape). A function's arguments or result and a schema are the caller's
//! own data: names in them are not references.

use serde_json::Value;

/// The longest resource id read (Google's are `v1_` and about 60 characters).
const MAX_ID: usize = 200;

/// Is an id plausible (so that it can be a path segment and a map key)? ASCII letters,
/// digits, `_`, `-` and `.`, at most [`MAX_ID`] long.
pub(crate) fn is_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && id != "."
        && id != ".."
}

/// The most resources one body may name: past it, the body is unreadable here (a body naming
/// thousands would cost a walk and a lookup each).
const MAX_NAMES: usize = 128;

/// Keys whose values are the caller's own data (a function's arguments or response, a schema):
/// names in them are not read as references. (An interaction's function `result` is walked: it
/// may hold content items with a `uri`.)
const FREE_KEYS: &[&str] = &[
    "args",
    "arguments",
    "response",
    "parameters",
    "parametersJsonSchema",
    "parameters_json_schema",
    "responseSchema",
    "response_schema",
    "responseJsonSchema",
    "response_json_schema",
    "properties",
];

/// Hosts of Google's files service (the API's own).
const API_HOSTS: &[&str] = &[
    "generativelanguage.googleapis.com",
    "generativelanguage.mtls.googleapis.com",
];

/// Why a body's references could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unreadable(pub(crate) String);

/// The resources `body` names (`cachedContents/{id}`, `files/{id}`), each once, in the order
/// found; `None` when it names none (most bodies: a byte search tells). An error when a name is
/// there but cannot be read as one: the body is not JSON, a field comes twice under its two
/// spellings, or a name is not plausible.
pub(crate) fn references_in(body: &[u8]) -> Option<Result<Vec<String>, Unreadable>> {
    // `cached` starts both spellings of a cache's field; `file` every file name and URI
    // (`files\/abc` too, with its slash escaped) and every File Search store field
    // (`fileSearch…`, `file_search…`); a key written with an escape (`"cached\u0043ontent"`)
    // is the same field to Google, so a body with an escape in it is read too. Three searchers,
    // built once (building one costs more than a search of a small body).
    static FINDERS: std::sync::OnceLock<[memchr::memmem::Finder<'static>; 3]> =
        std::sync::OnceLock::new();
    let finders = FINDERS.get_or_init(|| {
        [
            memchr::memmem::Finder::new(b"cached"),
            memchr::memmem::Finder::new(b"file"),
            memchr::memmem::Finder::new(b"\\u"),
        ]
    });
    if finders.iter().all(|f| f.find(body).is_none()) {
        return None;
    }
    crate::model::count_body_parse();
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return Some(Err(Unreadable(
            "the body is not JSON, so what it refers to cannot be read".to_owned(),
        )));
    };
    let mut found = Found::default();
    if let Err(why) = walk(&json, &mut found) {
        return Some(Err(why));
    }
    (!found.names.is_empty()).then_some(Ok(found.names))
}

/// The names found so far, each once.
#[derive(Default)]
struct Found {
    names: Vec<String>,
    seen: std::collections::HashSet<String>,
}

impl Found {
    fn add(&mut self, name: String) -> Result<(), Unreadable> {
        if self.seen.contains(&name) {
            return Ok(());
        }
        if self.names.len() >= MAX_NAMES {
            return Err(Unreadable(format!(
                "the body names more than {MAX_NAMES} files and caches; send fewer in one request"
            )));
        }
        self.seen.insert(name.clone());
        self.names.push(name);
        Ok(())
    }
}

/// The two spellings of each naming field, and what its value names.
const FIELDS: &[(&str, &str, Names)] = &[
    ("cachedContent", "cached_content", Names::Cache),
    ("fileUri", "file_uri", Names::FileUri),
    ("fileName", "file_name", Names::FileName),
    ("uri", "uri", Names::ContentUri),
];

#[derive(Clone, Copy)]
enum Names {
    /// `cachedContents/{id}`, always a reference.
    Cache,
    /// A file's URI of the API host, or `files/{id}`; other URLs are not resources.
    FileUri,
    /// `files/{id}` (a batch's input file).
    FileName,
    /// An interaction's content `uri`: a file's, or anything else.
    ContentUri,
}

fn walk(value: &Value, found: &mut Found) -> Result<(), Unreadable> {
    match value {
        Value::Object(map) => {
            for (camel, snake, names) in FIELDS {
                let value = match (map.get(*camel), map.get(*snake)) {
                    (Some(_), Some(_)) if camel != snake => {
                        return Err(Unreadable(format!(
                            "\"{camel}\" and \"{snake}\" are the same field: send it once"
                        )));
                    }
                    (one, other) => one.or(other),
                };
                if let Some(value) = value
                    && let Some(name) = name_in(*names, value)?
                {
                    found.add(name)?;
                }
            }
            for key in STORE_LISTS {
                if let Some(stores) = map.get(*key) {
                    for store in stores_in(stores)? {
                        found.add(store)?;
                    }
                }
            }
            for (key, value) in map {
                if !FREE_KEYS.contains(&key.as_str()) {
                    walk(value, found)?;
                }
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(|item| walk(item, found)),
        _ => Ok(()),
    }
}

/// The fields that list File Search stores (a `fileSearch` tool's, an interaction's
/// `file_search` tool's).
const STORE_LISTS: &[&str] = &["fileSearchStoreNames", "file_search_store_names"];

/// The stores a list names: each a `fileSearchStores/{id}`.
fn stores_in(value: &Value) -> Result<Vec<String>, Unreadable> {
    let bad = || {
        Unreadable(
            "a File Search tool's store names must be a list of names such as \"fileSearchStores/abc-123\"".to_owned(),
        )
    };
    let Value::Array(names) = value else {
        return Err(bad());
    };
    names
        .iter()
        .map(|name| {
            let name = name.as_str().ok_or_else(bad)?.trim();
            match name.strip_prefix("fileSearchStores/") {
                Some(id) if is_id(id) => Ok(name.to_owned()),
                _ => Err(bad()),
            }
        })
        .collect()
}

/// The resource a naming field's value names, if it names one of Google's.
fn name_in(names: Names, value: &Value) -> Result<Option<String>, Unreadable> {
    let Value::String(text) = value else {
        // (A `uri` or `fileName` may be anything's elsewhere; a cache is named by a string.)
        return match names {
            Names::Cache => Err(Unreadable(
                "\"cachedContent\" must be a string naming a cache, such as \"cachedContents/abc123\"".to_owned(),
            )),
            _ => Ok(None),
        };
    };
    let text = text.trim();
    match names {
        Names::Cache => match text.strip_prefix("cachedContents/") {
            Some(id) if is_id(id) => Ok(Some(text.to_owned())),
            _ => Err(Unreadable(format!(
                "\"cachedContent\" must name a cache, such as \"cachedContents/abc123\", not {:?}",
                crate::model::shorten(text)
            ))),
        },
        Names::FileName | Names::FileUri | Names::ContentUri => file_name(text),
    }
}

/// `files/{id}` for a file of Google's files service (a URL of the API host whose path is
/// `…/files/{id}`, or `files/{id}`); `None` for anything else.
fn file_name(text: &str) -> Result<Option<String>, Unreadable> {
    let lower = text.to_ascii_lowercase();
    let id: String = if lower.starts_with("files/") {
        text["files/".len()..].to_owned()
    } else {
        let Ok(uri) = text.parse::<http::Uri>() else {
            return Ok(None);
        };
        let host = uri
            .host()
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase());
        if !host.is_some_and(|h| API_HOSTS.contains(&h.as_str())) {
            return Ok(None);
        }
        let path = uri.path();
        let Some(at) = path.find("/files/") else {
            return Ok(None);
        };
        path[at + "/files/".len()..].to_owned()
    };
    let id = id.split([':', '?', '#']).next().unwrap_or_default();
    if is_id(id) {
        Ok(Some(format!("files/{id}")))
    } else {
        Err(Unreadable(format!(
            "{:?} does not name a file as Google does (\"files/abc-123\" or its URI)",
            crate::model::shorten(text)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(body: &str) -> Option<Result<Vec<String>, Unreadable>> {
        references_in(body.as_bytes())
    }

    #[test]
    fn caches_and_files_are_found_under_every_spelling() {
        let body = r#"{"cachedContent":"cachedContents/c1","contents":[{"parts":[
            {"fileData":{"mimeType":"application/pdf","fileUri":"https://generativelanguage.googleapis.com/v1beta/files/abc-1"}},
            {"file_data":{"file_uri":"files/def-2"}},
            {"fileData":{"fileUri":"https://example.com/a.pdf"}},
            {"fileData":{"fileUri":"HTTPS://GENERATIVELANGUAGE.GOOGLEAPIS.COM/v1/files/abc-1"}}]}]}"#;
        assert_eq!(
            names(body),
            Some(Ok(vec![
                "cachedContents/c1".to_owned(),
                "files/abc-1".to_owned(),
                "files/def-2".to_owned()
            ]))
        );
        let escaped = r#"{"contents":[{"parts":[{"fileData":{"file\u0055ri":"https:\/\/generativelanguage.googleapis.com\/v1beta\/files\/x9"}}]}]}"#;
        assert_eq!(names(escaped), Some(Ok(vec!["files/x9".to_owned()])));
        let interaction = r#"{"input":[{"type":"document","uri":"https://generativelanguage.googleapis.com/v1beta/files/doc1"},{"type":"image","uri":"https://example.com/files/a.png"}]}"#;
        assert_eq!(names(interaction), Some(Ok(vec!["files/doc1".to_owned()])));
        let batch = r#"{"batch":{"input_config":{"file_name":"files/jsonl-1"}}}"#;
        assert_eq!(names(batch), Some(Ok(vec!["files/jsonl-1".to_owned()])));
    }

    #[test]
    fn prompts_arguments_and_schemas_name_nothing() {
        assert_eq!(
            names(r#"{"contents":[{"parts":[{"text":"upload files/abc and cachedContent"}]}]}"#),
            None
        );
        assert_eq!(names(r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#), None);
        let args = r#"{"contents":[{"parts":[{"functionCall":{"name":"f","args":{"fileUri":"files/x","cachedContent":7}}}]}]}"#;
        assert_eq!(names(args), None);
    }

    #[test]
    fn file_search_stores_are_found_in_tools() {
        let generate = r#"{"contents":[],"tools":[{"fileSearch":{"fileSearchStoreNames":["fileSearchStores/a-1","fileSearchStores/b-2"]}}]}"#;
        assert_eq!(
            names(generate),
            Some(Ok(vec![
                "fileSearchStores/a-1".to_owned(),
                "fileSearchStores/b-2".to_owned()
            ]))
        );
        let interaction = r#"{"tools":[{"type":"file_search","file_search_store_names":["fileSearchStores/c-3"]}]}"#;
        assert_eq!(
            names(interaction),
            Some(Ok(vec!["fileSearchStores/c-3".to_owned()]))
        );
        let odd = r#"{"tools":[{"fileSearch":{"fileSearchStoreNames":["corpora/x"]}}]}"#;
        assert!(matches!(names(odd), Some(Err(_))));
    }

    #[test]
    fn a_function_result_is_walked_and_names_are_bounded() {
        let result = r#"{"input":[{"type":"function_result","result":[{"type":"image","uri":"https://generativelanguage.googleapis.com./v1beta/files/img1"}]}]}"#;
        assert_eq!(names(result), Some(Ok(vec!["files/img1".to_owned()])));
        let same: Vec<String> = (0..1000)
            .map(|_| r#"{"fileData":{"fileUri":"files/one"}}"#.to_owned())
            .collect();
        let body = format!(r#"{{"contents":[{{"parts":[{}]}}]}}"#, same.join(","));
        assert_eq!(names(&body), Some(Ok(vec!["files/one".to_owned()])));
        let many: Vec<String> = (0..200)
            .map(|i| format!(r#"{{"fileData":{{"fileUri":"files/f{i}"}}}}"#))
            .collect();
        let body = format!(r#"{{"contents":[{{"parts":[{}]}}]}}"#, many.join(","));
        assert!(matches!(names(&body), Some(Err(_))));
    }

    #[test]
    fn unreadable_names_are_errors() {
        for body in [
            r#"{"cachedContent":"cachedContents/a","cached_content":"cachedContents/b"}"#,
            r#"{"cachedContent":"files/../x"}"#,
            r#"{"cachedContent":42}"#,
            r#"{"contents":[{"parts":[{"fileData":{"fileUri":"files/a/../b"}}]}]}"#,
            r#"{"contents":[{"parts":[{"fileData":{"fileUri":"https://generativelanguage.googleapis.com/v1beta/files/"}}]}]}"#,
            "files but not JSON",
        ] {
            assert!(matches!(names(body), Some(Err(_))), "{body}");
        }
    }
}
