//! File Search stores in the mock (`/v1beta/fileSearchStores`, `/v1/fileSearchStores`):
//! create, get, list, delete (`force`), `:importFile` of a file of the same project (an
//! operation under the store, done at once), its operations, and its documents — each store
//! kept in the project whose key made it. Another project's key, or a `generateContent` whose
//! `fileSearch` tool names a store of another project, gets 403 `PERMISSION_DENIED`
//! "Permission denied on resource fileSearchStores/{id} (or it may not exist)." (the wording of
//! Google's other per-project resources; the store's own is not documented).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use http::Method;
use http::request::Parts;
use serde_json::{Value, json};

use super::server::{Outcome, authenticate, error, json_response};
use super::{MockState, bodies};

/// One store: its project, name and documents (by id, each from a file).
#[derive(Clone, Debug)]
pub(super) struct Store {
    project: usize,
    display_name: Option<String>,
    documents: Vec<(String, String)>,
}

/// The stores of every project, by id.
pub(super) type Stores = HashMap<String, Store>;

/// The path after `/v1beta/fileSearchStores` or `/v1/fileSearchStores`, if it is one.
pub(super) fn route_of(path: &str) -> Option<&str> {
    path.strip_prefix("/v1beta/fileSearchStores")
        .or_else(|| path.strip_prefix("/v1/fileSearchStores"))
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn lock(state: &MockState) -> std::sync::MutexGuard<'_, Stores> {
    state.stores.lock().unwrap_or_else(|e| e.into_inner())
}

/// The answer for a store another project holds, or none holds.
pub(super) fn not_found(name: &str) -> Value {
    json!({ "error": {
        "code": 403,
        "message": format!("Permission denied on resource {name} (or it may not exist)."),
        "status": "PERMISSION_DENIED"
    } })
}

/// The first store a request's File Search tools name that `project` does not hold.
pub(super) fn foreign_store(state: &MockState, project: usize, body: &Value) -> Option<String> {
    let mut named = Vec::new();
    collect(body, &mut named);
    let stores = lock(state);
    named.into_iter().find(|name| {
        let id = name.strip_prefix("fileSearchStores/").unwrap_or(name);
        stores.get(id).is_none_or(|s| s.project != project)
    })
}

fn collect(value: &Value, named: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("fileSearchStoreNames" | "file_search_store_names", Value::Array(names)) => {
                        named.extend(names.iter().filter_map(Value::as_str).map(str::to_owned));
                    }
                    _ => collect(v, named),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect(v, named)),
        _ => {}
    }
}

/// Who asks: the key's project, its name (for the answer's tag) and the key.
struct Asker<'a> {
    project: usize,
    at: Option<&'a str>,
    key: &'a str,
}

impl Asker<'_> {
    fn answer(&self, body: &Value) -> Outcome {
        Outcome::Answer(json_response(200, body, self.at, Some(self.key)))
    }

    fn error(&self, status: u16, body: Value) -> Outcome {
        error(status, body, false, self.at, Some(self.key))
    }
}

pub(super) fn route(
    state: &MockState,
    parts: &Parts,
    key: Option<&str>,
    body: &[u8],
    rest: &str,
) -> Outcome {
    let (project, name, _) = match authenticate(state, key, false) {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let asker = Asker {
        project,
        at: Some(name.as_str()),
        key: key.unwrap_or_default(),
    };
    let rest = rest.trim_start_matches('/');
    match (&parts.method, rest) {
        (&Method::POST, "") => create(state, &asker, body),
        (&Method::GET, "") => {
            let mine: Vec<Value> = lock(state)
                .iter()
                .filter(|(_, s)| s.project == project)
                .map(|(id, s)| resource(id, s))
                .collect();
            asker.answer(&json!({ "fileSearchStores": mine }))
        }
        (_, "") => asker.error(404, bodies::not_found(parts.uri.path())),
        _ => under_store(state, parts, &asker, body, rest),
    }
}

fn create(state: &MockState, asker: &Asker<'_>, body: &[u8]) -> Outcome {
    let json: Value = serde_json::from_slice(body).unwrap_or(json!({}));
    let display = json
        .get("displayName")
        .or_else(|| json.get("display_name"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    let id = format!("mockstore-{n:012}");
    let store = Store {
        project: asker.project,
        display_name: display,
        documents: Vec::new(),
    };
    let made = resource(&id, &store);
    lock(state).insert(id, store);
    asker.answer(&made)
}

/// A call under one store (`{id}`, `{id}:importFile`, `{id}/operations/…`, `{id}/documents`).
fn under_store(
    state: &MockState,
    parts: &Parts,
    asker: &Asker<'_>,
    body: &[u8],
    rest: &str,
) -> Outcome {
    let (segment, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let (id, verb) = match segment.split_once(':') {
        Some((id, verb)) => (id, Some(verb)),
        None => (segment, None),
    };
    let store_name = format!("fileSearchStores/{id}");
    let mut stores = lock(state);
    let Some(store) = stores.get_mut(id).filter(|s| s.project == asker.project) else {
        return asker.error(403, not_found(&store_name));
    };
    match (&parts.method, verb, tail) {
        (&Method::GET, None, "") => asker.answer(&resource(id, store)),
        (&Method::DELETE, None, "") => {
            stores.remove(id);
            asker.answer(&json!({}))
        }
        (&Method::POST, Some("importFile"), "") => {
            let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let file = json
                .get("fileName")
                .or_else(|| json.get("file_name"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if super::files::size_in(state, asker.project, &file).is_none() {
                let id = file.strip_prefix("files/").unwrap_or(&file);
                return asker.error(403, super::files::not_found(id));
            }
            let n = state.next_id.fetch_add(1, Ordering::Relaxed);
            let document = format!("mockdoc-{n:06}");
            store.documents.push((document.clone(), file));
            asker.answer(&json!({
                "name": format!("{store_name}/operations/op-{n:06}"),
                "done": true,
                "response": {
                    "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.ImportFileResponse",
                    "parent": store_name,
                    "documentName": format!("{store_name}/documents/{document}"),
                },
            }))
        }
        (&Method::GET, None, tail) if tail.starts_with("operations/") => {
            asker.answer(&json!({ "name": format!("{store_name}/{tail}"), "done": true }))
        }
        (&Method::GET, None, "documents") => {
            let documents: Vec<Value> = store
                .documents
                .iter()
                .map(|(doc, _)| json!({ "name": format!("{store_name}/documents/{doc}"), "state": "STATE_ACTIVE" }))
                .collect();
            asker.answer(&json!({ "documents": documents }))
        }
        _ => asker.error(404, bodies::not_found(parts.uri.path())),
    }
}

/// The FileSearchStore resource.
fn resource(id: &str, store: &Store) -> Value {
    let mut answer = json!({
        "name": format!("fileSearchStores/{id}"),
        "activeDocumentsCount": store.documents.len().to_string(),
    });
    if let Some(name) = &store.display_name {
        answer["displayName"] = json!(name);
    }
    answer
}
