//! Recognising a request to a project-owned resource: which call of the Interactions API or
//! of context caching it is, which stored interaction or cache it refers to (in its path, or a
//! `generateContent` body's `cachedContent`), and whether its answer creates one to learn.

use std::borrow::Cow;

use http::Method;
use serde::Deserialize;

pub(crate) use crate::resources::is_id;

/// A call of the Interactions API, as read from its method, path and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    /// `POST …/interactions`: creates an interaction, continuing `previous` if set.
    Create(Create),
    /// `GET …/interactions/{id}` (also streamed, or resumed).
    Get(String),
    /// `DELETE …/interactions/{id}`.
    Delete(String),
    /// `POST …/interactions/{id}/cancel`.
    Cancel(String),
    /// `POST …/cachedContents`: creates a context cache.
    CreateCache,
    /// `GET`, `PATCH` or `DELETE …/cachedContents/{id}`.
    Cache(CacheOp, String),
    /// `POST …/upload/…/files` (or `POST …/files`): starts a resumable upload (its answer's
    /// `X-Goog-Upload-URL` names the session), or uploads a file whole (its answer is the file).
    UploadStart,
    /// `POST …/upload/…/files?upload_id={id}`: a step of a resumable upload (`upload`,
    /// `finalize`, `query`), bound to the project that started it.
    Upload(String),
    /// `GET` or `DELETE …/files/{id}`, `GET …/files/{id}:download`.
    File(FileOp, String),
    /// `POST …/models/{m}:batchGenerateContent` (or `:asyncBatchEmbedContent`): creates a batch.
    CreateBatch,
    /// `GET` or `DELETE …/batches/{id}`, `POST …/batches/{id}:cancel`.
    Batch(BatchOp, String),
    /// `POST …/fileSearchStores`: creates a File Search store.
    CreateStore,
    /// Any call under `…/fileSearchStores/{id}` (get, delete, `:importFile`,
    /// `:uploadToFileSearchStore`, documents, operations): `true` for the store's delete.
    Store(bool, String),
    /// A call whose body names resources (a cache, files) and whose path names none:
    /// `generateContent` and the other model methods.
    Uses,
}

/// What a call does to one cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheOp {
    Get,
    Patch,
    Delete,
}

/// What a call does to one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchOp {
    Get,
    Delete,
    Cancel,
}

/// What a call does to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileOp {
    Get,
    Delete,
    Download,
}

/// What a create asks for, from its body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Create {
    /// `previous_interaction_id`: the conversation it continues.
    pub(crate) previous: Option<String>,
    /// `store` (default `true`): whether Google keeps the answer, so that its id is learned.
    pub(crate) store: bool,
    /// `model` (`models/` dropped), for the layers below.
    pub(crate) model: Option<String>,
    /// The body could not be read as a create (not JSON, a field of another type, a field
    /// given twice under its two spellings): Google will answer it, but what it refers to is
    /// not known here.
    pub(crate) unreadable: bool,
}

impl Call {
    /// The resource the call refers to, by name (`interactions/{id}`, `cachedContents/{id}`).
    pub(crate) fn referred(&self) -> Option<String> {
        match self {
            Call::Create(create) => create
                .previous
                .as_deref()
                .filter(|p| is_id(p))
                .map(resource),
            Call::Get(id) | Call::Delete(id) | Call::Cancel(id) => Some(resource(id)),
            Call::Cache(_, id) => Some(format!("cachedContents/{id}")),
            Call::Upload(id) => Some(upload(id)),
            Call::File(_, id) => Some(format!("files/{id}")),
            Call::Batch(_, id) => Some(format!("batches/{id}")),
            Call::Store(_, id) => Some(format!("fileSearchStores/{id}")),
            Call::CreateCache
            | Call::UploadStart
            | Call::CreateBatch
            | Call::CreateStore
            | Call::Uses => None,
        }
    }

    /// Does a successful answer remove what the call refers to?
    pub(crate) fn deletes(&self) -> bool {
        matches!(
            self,
            Call::Delete(_)
                | Call::Cache(CacheOp::Delete, _)
                | Call::File(FileOp::Delete, _)
                | Call::Batch(BatchOp::Delete, _)
                | Call::Store(true, _)
        )
    }

    /// Is this a create whose reference cannot be read: a body that is not a create's, or a
    /// `previous_interaction_id` that is no plausible id? (A tenant's is refused: it cannot be
    /// shown to refer to the tenant's own interaction.)
    pub(crate) fn is_unclear(&self) -> bool {
        match self {
            Call::Create(create) => {
                create.unreadable || create.previous.as_deref().is_some_and(|p| !is_id(p))
            }
            _ => false,
        }
    }
}

/// `interactions/{id}`.
pub(crate) fn resource(id: &str) -> String {
    format!("interactions/{id}")
}

/// The header naming the session a resumable upload's start opened (`X-Goog-Upload-URL`).
pub(crate) const UPLOAD_URL: &str = "x-goog-upload-url";

/// `uploads/{id}`: the pin of a resumable upload's session.
pub(crate) fn upload(id: &str) -> String {
    format!("uploads/{id}")
}

/// Is an upload session's id plausible (Google's are long, URL-safe base64)? ASCII letters,
/// digits, `_`, `-`, `.` and `~`, at most 240 long (so that its pin's name fits
/// [`MAX_RESOURCE_NAME`](crate::state::MAX_RESOURCE_NAME)).
pub(crate) fn is_upload_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 240
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'~'))
}

/// The upload session a query names (`upload_id=…`), if any.
pub(crate) fn upload_id_in(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("upload_id="))
}

/// The collections of project-owned resources recognised after the version segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collection {
    Interactions,
    CachedContents,
    Files,
    Batches,
    Stores,
}

/// Which collection follows the version segment (`/v1beta`, `/v1`, `/v1alpha`) of `path`, and
/// where its segment ends. Runs on every call: a byte loop up to the first version segment
/// (the first one, in Google's paths), then a comparison or two.
fn collection_at(path: &str) -> Option<(Collection, usize)> {
    const NAMES: [(&[u8], Collection); 5] = [
        (b"/interactions", Collection::Interactions),
        (b"/cachedContents", Collection::CachedContents),
        (b"/files", Collection::Files),
        (b"/batches", Collection::Batches),
        (b"/fileSearchStores", Collection::Stores),
    ];
    let bytes = path.as_bytes();
    let mut start = 0;
    for i in 0..=bytes.len() {
        if i < bytes.len() && bytes[i] != b'/' {
            continue;
        }
        if matches!(&bytes[start..i], b"v1beta" | b"v1" | b"v1alpha") {
            return NAMES.iter().find_map(|(name, collection)| {
                let rest = bytes[i..].strip_prefix(*name)?;
                matches!(rest.first(), None | Some(b'/')).then_some((*collection, i + name.len()))
            });
        }
        start = i + 1;
    }
    None
}

/// The path up to its version segment (`/v1beta`), where another resource of the same API
/// version is addressed.
pub(crate) fn version_prefix(path: &str) -> Option<&str> {
    let mut end = 0;
    for segment in path.split('/') {
        end += segment.len();
        if matches!(segment, "v1beta" | "v1" | "v1alpha") {
            return path.get(..end);
        }
        end += 1;
    }
    None
}

/// Could this request be a call on a project-owned resource (by its path alone; cheap, for
/// every call)? A `generateContent` naming a cache or a file is found by
/// [`references_in`](crate::resources::references_in).
pub(crate) fn is_resource_path(path: &str) -> bool {
    creates_batch(path) || collection_at(path).is_some()
}

/// Does a `POST` to `path` create a batch (`:batchGenerateContent`, `:asyncBatchEmbedContent`)?
pub(crate) fn creates_batch(path: &str) -> bool {
    crate::model::creates_batch(path)
}

/// The call a request makes on a project-owned resource, if it is one (by its path and
/// query). `body` is read only for an interaction's create (and only if it is in memory); a
/// body that is not JSON reads as an unclear create (Google answers it).
pub(crate) fn call_of(
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: Option<&[u8]>,
) -> Option<Call> {
    if method == Method::POST && creates_batch(path) {
        return Some(Call::CreateBatch);
    }
    let (collection, end) = collection_at(path)?;
    let rest = &path[end..];
    if rest.is_empty() || rest == "/" {
        return match (collection, method) {
            (Collection::Interactions, &Method::POST) => {
                Some(Call::Create(create_of(body.unwrap_or(b"{}"))))
            }
            (Collection::CachedContents, &Method::POST) => Some(Call::CreateCache),
            (Collection::Stores, &Method::POST) => Some(Call::CreateStore),
            (Collection::Files, &Method::POST) => match upload_id_in(query) {
                Some(id) if is_upload_id(id) => Some(Call::Upload(id.to_owned())),
                // A session that cannot be read: sent as it came.
                Some(_) => None,
                None => Some(Call::UploadStart),
            },
            _ => None,
        };
    }
    let rest = rest.strip_prefix('/')?;
    let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if collection == Collection::Files {
        return file_call(method, id, tail);
    }
    if collection == Collection::Batches {
        return batch_call(method, id, tail);
    }
    if collection == Collection::Stores {
        return store_call(method, id, tail);
    }
    if !is_id(id) {
        return None;
    }
    let id = id.to_owned();
    match (collection, method, tail) {
        (Collection::Interactions, &Method::GET, "") => Some(Call::Get(id)),
        (Collection::Interactions, &Method::DELETE, "") => Some(Call::Delete(id)),
        (Collection::Interactions, &Method::POST, "cancel") => Some(Call::Cancel(id)),
        (Collection::CachedContents, &Method::GET, "") => Some(Call::Cache(CacheOp::Get, id)),
        (Collection::CachedContents, &Method::PATCH, "") => Some(Call::Cache(CacheOp::Patch, id)),
        (Collection::CachedContents, &Method::DELETE, "") => Some(Call::Cache(CacheOp::Delete, id)),
        _ => None,
    }
}

/// `files/{id}` (get, delete) and `files/{id}:download`.
fn file_call(method: &Method, segment: &str, tail: &str) -> Option<Call> {
    if !tail.is_empty() {
        return None;
    }
    let (id, download) = match segment.split_once(':') {
        Some((id, "download")) => (id, true),
        Some(_) => return None,
        None => (segment, false),
    };
    if !is_id(id) {
        return None;
    }
    let op = match (method, download) {
        (&Method::GET, false) => FileOp::Get,
        (&Method::DELETE, false) => FileOp::Delete,
        (&Method::GET, true) => FileOp::Download,
        _ => return None,
    };
    Some(Call::File(op, id.to_owned()))
}

/// Anything under `fileSearchStores/{id}` (`{id}:importFile`, `{id}/documents/…`,
/// `{id}/operations/…`, `{id}/upload/operations/…`): the store's project serves it all.
fn store_call(method: &Method, segment: &str, tail: &str) -> Option<Call> {
    let (id, verb) = match segment.split_once(':') {
        Some((id, verb)) => (id, Some(verb)),
        None => (segment, None),
    };
    let odd_tail = !tail.is_empty()
        && tail
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..");
    if !is_id(id) || odd_tail {
        return None;
    }
    let deletes = method == Method::DELETE && verb.is_none() && tail.is_empty();
    Some(Call::Store(deletes, id.to_owned()))
}

/// `batches/{id}` (get, delete) and `batches/{id}:cancel`.
fn batch_call(method: &Method, segment: &str, tail: &str) -> Option<Call> {
    if !tail.is_empty() {
        return None;
    }
    let (id, verb) = match segment.split_once(':') {
        Some((id, verb)) => (id, Some(verb)),
        None => (segment, None),
    };
    if !is_id(id) {
        return None;
    }
    let op = match (method, verb) {
        (&Method::GET, None) => BatchOp::Get,
        (&Method::DELETE, None) => BatchOp::Delete,
        (&Method::POST, Some("cancel")) => BatchOp::Cancel,
        _ => return None,
    };
    Some(Call::Batch(op, id.to_owned()))
}

/// Can the body of a request to `path` name a cache or files: the model methods that take
/// contents (and batches of them), a cache's create, an interaction's create?
pub(crate) fn may_refer(method: &Method, path: &str) -> bool {
    if method != Method::POST {
        return false;
    }
    const METHODS: [&str; 8] = [
        ":importFile",
        ":generateContent",
        ":streamGenerateContent",
        ":countTokens",
        ":embedContent",
        ":batchEmbedContents",
        ":batchGenerateContent",
        ":asyncBatchEmbedContent",
    ];
    METHODS.iter().any(|m| path.ends_with(m))
        || path.ends_with("/cachedContents")
        || path.ends_with("/interactions")
}

/// The fields of a create's body that matter here, parsed once (under either spelling a
/// JSON front end of Google's may accept: `previous_interaction_id` or `previousInteractionId`).
fn create_of(body: &[u8]) -> Create {
    #[derive(Deserialize)]
    struct Fields<'a> {
        #[serde(borrow, default, alias = "previousInteractionId")]
        previous_interaction_id: Option<Cow<'a, str>>,
        #[serde(default)]
        store: Option<bool>,
        #[serde(borrow, default)]
        model: Option<Cow<'a, str>>,
    }
    crate::model::count_body_parse();
    let Ok(fields) = serde_json::from_slice::<Fields<'_>>(body) else {
        return Create {
            store: true,
            unreadable: true,
            ..Create::default()
        };
    };
    let model = fields
        .model
        .as_deref()
        .map(str::trim)
        .map(|m| m.strip_prefix("models/").unwrap_or(m).to_owned());
    Create {
        previous: fields
            .previous_interaction_id
            .map(|id| id.trim().to_owned())
            .filter(|id| !id.is_empty()),
        store: fields.store.unwrap_or(true),
        model: model.filter(|m| !m.is_empty()),
        unreadable: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_read_from_method_path_and_body() {
        let body = br#"{"model":"models/gemini-3.5-flash","input":"hi","previous_interaction_id":"v1_abc"}"#;
        let Some(Call::Create(create)) =
            call_of(&Method::POST, "/v1beta/interactions", None, Some(body))
        else {
            panic!("a create");
        };
        assert_eq!(create.previous.as_deref(), Some("v1_abc"));
        assert!(create.store);
        assert_eq!(create.model.as_deref(), Some("gemini-3.5-flash"));
        assert_eq!(
            call_of(&Method::GET, "/v1/interactions/v1_abc", None, None),
            Some(Call::Get("v1_abc".into()))
        );
        assert_eq!(
            call_of(&Method::DELETE, "/v1beta/interactions/v1_abc", None, None),
            Some(Call::Delete("v1_abc".into()))
        );
        assert_eq!(
            call_of(
                &Method::POST,
                "/v1beta/interactions/v1_abc/cancel",
                None,
                None
            ),
            Some(Call::Cancel("v1_abc".into()))
        );
        let Some(Call::Create(unstored)) = call_of(
            &Method::POST,
            "/v1/interactions",
            None,
            Some(br#"{"store":false}"#),
        ) else {
            panic!("a create");
        };
        assert!(!unstored.store);
    }

    #[test]
    fn the_version_prefix_is_found() {
        assert_eq!(
            version_prefix("/v1beta/models/m:generateContent"),
            Some("/v1beta")
        );
        assert_eq!(version_prefix("/base/v1/interactions/x"), Some("/base/v1"));
        assert_eq!(version_prefix("/models/m"), None);
    }

    #[test]
    fn cache_calls_are_read_from_paths_and_bodies() {
        assert_eq!(
            call_of(&Method::POST, "/v1beta/cachedContents", None, None),
            Some(Call::CreateCache)
        );
        assert_eq!(
            call_of(&Method::PATCH, "/v1/cachedContents/abc-1", None, None),
            Some(Call::Cache(CacheOp::Patch, "abc-1".into()))
        );
        assert!(call_of(&Method::GET, "/v1beta/cachedContents", None, None).is_none());
        assert!(may_refer(
            &Method::POST,
            "/v1beta/models/gemini-2.5-flash:generateContent"
        ));
        assert!(may_refer(&Method::POST, "/v1beta/models/m:embedContent"));
        assert!(!may_refer(&Method::POST, "/v1beta/models/m:predict"));
        assert!(!may_refer(&Method::GET, "/v1beta/models/m:generateContent"));
    }

    #[test]
    fn file_calls_are_read_from_paths_and_queries() {
        assert_eq!(
            call_of(&Method::POST, "/upload/v1beta/files", None, None),
            Some(Call::UploadStart)
        );
        assert_eq!(
            call_of(
                &Method::POST,
                "/upload/v1/files",
                Some("upload_id=AB-c_9&upload_protocol=resumable"),
                None
            ),
            Some(Call::Upload("AB-c_9".into()))
        );
        assert_eq!(
            call_of(&Method::GET, "/v1beta/files/abc-1", None, None),
            Some(Call::File(FileOp::Get, "abc-1".into()))
        );
        assert_eq!(
            call_of(&Method::DELETE, "/v1/files/abc-1", None, None),
            Some(Call::File(FileOp::Delete, "abc-1".into()))
        );
        assert_eq!(
            call_of(
                &Method::GET,
                "/download/v1beta/files/r1:download",
                Some("alt=media"),
                None
            ),
            Some(Call::File(FileOp::Download, "r1".into()))
        );
        assert_eq!(
            Call::Upload("u".into()).referred().as_deref(),
            Some("uploads/u")
        );
        // A list, a registration, an odd session: not calls on one file.
        assert!(call_of(&Method::GET, "/v1beta/files", None, None).is_none());
        assert!(call_of(&Method::POST, "/v1beta/files:register", None, None).is_none());
        assert!(
            call_of(
                &Method::POST,
                "/upload/v1beta/files",
                Some("upload_id=a/b"),
                None
            )
            .is_none()
        );
        assert!(call_of(&Method::GET, "/v1beta/files/a:copy", None, None).is_none());
    }

    #[test]
    fn batch_calls_are_read_from_paths() {
        let create = "/v1beta/models/gemini-2.5-flash:batchGenerateContent";
        assert!(is_resource_path(create));
        assert_eq!(
            call_of(&Method::POST, create, None, None),
            Some(Call::CreateBatch)
        );
        assert_eq!(
            call_of(&Method::GET, "/v1/batches/123", None, None),
            Some(Call::Batch(BatchOp::Get, "123".into()))
        );
        assert_eq!(
            call_of(&Method::POST, "/v1beta/batches/123:cancel", None, None),
            Some(Call::Batch(BatchOp::Cancel, "123".into()))
        );
        let delete = call_of(&Method::DELETE, "/v1beta/batches/123", None, None).unwrap();
        assert!(delete.deletes());
        assert_eq!(delete.referred().as_deref(), Some("batches/123"));
        assert!(call_of(&Method::GET, "/v1beta/batches", None, None).is_none());
        assert!(call_of(&Method::POST, "/v1beta/batches/1:pause", None, None).is_none());
    }

    #[test]
    fn other_paths_and_odd_ids_are_not_calls() {
        assert!(
            call_of(
                &Method::POST,
                "/v1beta/models/m:generateContent",
                None,
                None
            )
            .is_none()
        );
        assert!(call_of(&Method::GET, "/v1beta/interactions/a%2Fb", None, None).is_none());
        assert!(call_of(&Method::GET, "/v1beta/interactions/..", None, None).is_none());
        assert!(call_of(&Method::PUT, "/v1beta/interactions/abc", None, None).is_none());
        assert!(call_of(&Method::GET, "/other/interactions/abc", None, None).is_none());
        assert!(!is_resource_path(
            "/v1beta/models/interactions:generateContent"
        ));
        // A body that is not a create's is one Google answers; what it refers to is unclear.
        for body in [
            &b"nope"[..],
            br#"{"store":"false","previous_interaction_id":"v1_a"}"#,
            br#"{"previous_interaction_id":"v1_a","previousInteractionId":"v1_b"}"#,
            br#"{"previous_interaction_id":"../files/x"}"#,
        ] {
            let call = call_of(&Method::POST, "/v1beta/interactions", None, Some(body)).unwrap();
            assert!(call.is_unclear(), "{}", String::from_utf8_lossy(body));
            assert!(call.referred().is_none());
        }
        // The other spelling is read too.
        let camel = call_of(
            &Method::POST,
            "/v1/interactions",
            None,
            Some(br#"{"previousInteractionId":"v1_c"}"#),
        );
        assert_eq!(
            camel.unwrap().referred().as_deref(),
            Some("interactions/v1_c")
        );
    }
}
