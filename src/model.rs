//! Which model a request is for: [`Model`] extension, URL path, or OpenAI-style JSON body.

use std::borrow::Cow;
use std::sync::Arc;

use http::Request;
use serde::Deserialize;

use crate::peek;

/// Names the model of a request explicitly. As a request extension it takes precedence over the
/// URL path and the body; use it when the body is a stream that cannot be peeked.
///
/// ```
/// use tower_gemini::Model;
///
/// let request = http::Request::builder()
///     .uri("http://127.0.0.1/v1beta/openai/chat/completions")
///     .extension(Model::new("gemini-2.0-flash"))
///     .body(())
///     .unwrap();
/// assert_eq!(request.extensions().get::<Model>().unwrap().as_str(), "gemini-2.0-flash");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model(Arc<str>);

impl Model {
    /// A model name such as `gemini-2.0-flash` (a leading `models/` is dropped).
    pub fn new(name: impl AsRef<str>) -> Self {
        let name = name.as_ref().trim();
        Model(Arc::from(name.strip_prefix("models/").unwrap_or(name)))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Longest model name a gateway forwards (Google's are under 64 characters).
#[cfg_attr(not(any(feature = "gateway", fuzzing)), allow(dead_code))]
pub(crate) const MAX_NAME: usize = 128;

/// Is `model` spelled as Google spells model names: an ASCII letter or digit, then letters,
/// digits, `-`, `.` and `_`, at most [`MAX_NAME`] long? The error says what to send instead.
#[cfg_attr(not(any(feature = "gateway", fuzzing)), allow(dead_code))]
pub(crate) fn check_name(model: &str) -> Result<(), String> {
    let bytes = model.as_bytes();
    let plausible = bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.len() <= MAX_NAME
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if plausible {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a model name: use ASCII letters, digits, '-', '.' and '_' (at most {MAX_NAME}, starting with a letter or digit), as in gemini-2.0-flash",
            shorten(model)
        ))
    }
}

/// The first 64 characters of what a caller sent, for an error message.
#[cfg_attr(not(any(feature = "gateway", fuzzing)), allow(dead_code))]
pub(crate) fn shorten(text: &str) -> String {
    const SHOWN: usize = 64;
    match text.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Is this a request to the OpenAI-compatible endpoint (`/v1beta/openai/...`)?
pub(crate) fn is_openai_path(path: &str) -> bool {
    path.contains("/openai/")
}

/// Does a `POST` to `path` create a Batch Mode job (`:batchGenerateContent`,
/// `:asyncBatchEmbedContent`)? Its answer shows no usage: the batch runs later, billed at
/// Google's batch rate.
pub(crate) fn creates_batch(path: &str) -> bool {
    path.ends_with(":batchGenerateContent") || path.ends_with(":asyncBatchEmbedContent")
}

/// The model in a native path: `/v1beta/models/{model}:method` (or `/v1/models/{model}`).
/// On every call, so a byte scan rather than `str::find` (whose searcher costs more to set up
/// than the whole path takes to read).
pub(crate) fn model_in_path(path: &str) -> Option<&str> {
    const MODELS: &[u8] = b"/models/";
    let bytes = path.as_bytes();
    let at = bytes.windows(MODELS.len()).position(|w| w == MODELS)? + MODELS.len();
    let rest = &bytes[at..];
    let end = rest
        .iter()
        .position(|b| matches!(b, b':' | b'/' | b'?'))
        .unwrap_or(rest.len());
    // Both ends sit at ASCII bytes (or the end), so these are char boundaries.
    let model = path.get(at..at + end)?;
    (!model.is_empty()).then_some(model)
}

/// The fewest prompt tokens Google's implicit cache keeps for `model` (its caching page: 2,048
/// for the 2.5 models, 4,096 for 3 and later); `None` before 2.5, which have no implicit cache.
pub(crate) fn implicit_cache_min(model: &str) -> Option<u64> {
    if model.starts_with("gemini-2.5") {
        Some(2048)
    } else if model.starts_with("gemini-1") || model.starts_with("gemini-2.0") {
        None
    } else {
        Some(4096)
    }
}

/// How many times a request body was parsed for its model, in this process: each layer reads
/// the [`Model`] extension instead once it is set (`tests/model_resolved_once.rs` counts).
static BODY_PARSES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many times a request body has been parsed for its model in this process (for tests of
/// the rule that it happens at most once per request).
#[doc(hidden)]
pub fn body_parses_for_model() -> usize {
    BODY_PARSES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Count one parse of a body for its model (the gateway parses OpenAI bodies itself).
pub(crate) fn count_body_parse() {
    BODY_PARSES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// The `model` field of a JSON object already parsed (`models/` dropped).
#[cfg_attr(not(feature = "cache"), allow(dead_code))]
pub(crate) fn model_in_value(json: &serde_json::Value) -> Option<String> {
    let model = json.get("model")?.as_str()?.trim();
    let model = model.strip_prefix("models/").unwrap_or(model);
    (!model.is_empty()).then(|| model.to_owned())
}

/// The `model` field of a JSON body (the OpenAI-compatible endpoint).
pub(crate) fn model_in_json(body: &[u8]) -> Option<String> {
    count_body_parse();
    #[derive(Deserialize)]
    struct OnlyModel<'a> {
        #[serde(borrow)]
        model: Option<Cow<'a, str>>,
    }
    let parsed: OnlyModel<'_> = serde_json::from_slice(body).ok()?;
    let model = parsed.model?;
    let model = model.trim();
    let model = model.strip_prefix("models/").unwrap_or(model);
    (!model.is_empty()).then(|| model.to_owned())
}

/// The model of a request, resolved once: the [`Model`] extension if set; else the path; else
/// (OpenAI-compatible path) the body's `model`, which is then set as the extension so that no
/// layer after this one parses the body again. (A model read from the path is not stored: the
/// path is read again without a copy.)
pub(crate) fn resolve<B: 'static>(request: &mut Request<B>) -> Option<Model> {
    if let Some(model) = request.extensions().get::<Model>() {
        return Some(model.clone());
    }
    if let Some(model) = model_in_path(request.uri().path()) {
        return Some(Model::new(model));
    }
    let model = Model::new(&*model_of(request)?);
    request.extensions_mut().insert(model.clone());
    Some(model)
}

/// Set the [`Model`] extension from an OpenAI body if it is not set and the path names no
/// model (the outermost layer that reads the model does this, once).
///
/// Only Google's own path (`/v1beta/openai/…`) is checked, with a prefix compare: this runs on
/// every call, and a substring search costs ≈ 270 instructions. (A path under another prefix
/// is still read right, by each layer.)
pub(crate) fn resolve_from_body<B: 'static>(request: &mut Request<B>) {
    if request.extensions().get::<Model>().is_none()
        && request.uri().path().starts_with("/v1beta/openai/")
        && let Some(model) = model_of(request).map(|m| Model::new(&*m))
    {
        request.extensions_mut().insert(model);
    }
}

/// The model of a request: the [`Model`] extension, else the path, else (OpenAI-compatible
/// path) the JSON body's `model` if the body is in memory.
pub(crate) fn model_of<B: 'static>(request: &Request<B>) -> Option<Cow<'_, str>> {
    if let Some(model) = request.extensions().get::<Model>() {
        return Some(Cow::Borrowed(model.as_str()));
    }
    let path = request.uri().path();
    if let Some(model) = model_in_path(path) {
        return Some(Cow::Borrowed(model));
    }
    // The OpenAI-compatible endpoint, and an interaction's create, name it in the body.
    if is_openai_path(path) || path.ends_with("/interactions") {
        let body = peek::body_bytes(request.body())?;
        return model_in_json(&body).map(Cow::Owned);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;

    #[test]
    fn model_from_native_paths() {
        assert_eq!(
            model_in_path("/v1beta/models/gemini-2.0-flash:generateContent"),
            Some("gemini-2.0-flash")
        );
        assert_eq!(
            model_in_path("/v1beta/models/gemini-2.5-pro:streamGenerateContent"),
            Some("gemini-2.5-pro")
        );
        assert_eq!(
            model_in_path("/v1/models/gemini-1.5-flash"),
            Some("gemini-1.5-flash")
        );
        assert_eq!(model_in_path("/v1beta/models"), None);
        assert_eq!(model_in_path("/v1beta/models/"), None);
    }

    #[test]
    fn model_from_openai_body() {
        let req = Request::post("http://x/v1beta/openai/chat/completions")
            .body(Full::new(Bytes::from(
                r#"{"messages":[],"model":"models/gemini-2.0-flash"}"#,
            )))
            .unwrap();
        assert_eq!(model_of(&req).as_deref(), Some("gemini-2.0-flash"));
        let req = Request::post("http://x/v1beta/openai/chat/completions")
            .body(String::from("not json"))
            .unwrap();
        assert_eq!(model_of(&req), None);
    }

    #[test]
    fn extension_wins() {
        let req = Request::post("http://x/v1beta/models/a:generateContent")
            .extension(Model::new("b"))
            .body(())
            .unwrap();
        assert_eq!(model_of(&req).as_deref(), Some("b"));
    }
}
