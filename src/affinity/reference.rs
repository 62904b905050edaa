//! Recognising a request to a project-owned resource: which call of the Interactions API it
//! is, which stored interaction it refers to, and whether its answer creates one to learn.

use std::borrow::Cow;

use http::Method;
use serde::Deserialize;

/// The longest interaction id read (Google's are `v1_` and about 60 characters).
const MAX_ID: usize = 200;

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
    /// The stored interaction the call refers to, as a resource name (`interactions/{id}`).
    pub(crate) fn referred(&self) -> Option<String> {
        match self {
            Call::Create(create) => create
                .previous
                .as_deref()
                .filter(|p| is_id(p))
                .map(resource),
            Call::Get(id) | Call::Delete(id) | Call::Cancel(id) => Some(resource(id)),
        }
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

/// Where the `/interactions` segment that follows the version segment (`/v1beta`, `/v1`,
/// `/v1alpha`) ends in `path`. Runs on every call: a byte loop up to the first version
/// segment (the first one, in Google's paths), then one comparison.
fn interactions_at(path: &str) -> Option<usize> {
    const INTERACTIONS: &[u8] = b"/interactions";
    let bytes = path.as_bytes();
    let mut start = 0;
    for i in 0..=bytes.len() {
        if i < bytes.len() && bytes[i] != b'/' {
            continue;
        }
        if matches!(&bytes[start..i], b"v1beta" | b"v1" | b"v1alpha") {
            let rest = bytes[i..].strip_prefix(INTERACTIONS)?;
            return matches!(rest.first(), None | Some(b'/')).then_some(i + INTERACTIONS.len());
        }
        start = i + 1;
    }
    None
}

/// Could this request be an Interactions call? Only the path is read (cheap, for every call).
pub(crate) fn is_interactions_path(path: &str) -> bool {
    interactions_at(path).is_some()
}

/// The call a request makes, if it is one of the Interactions API's. `body` is read only for a
/// create (and only if it is in memory); a body that is not JSON reads as an empty create
/// (Google answers it).
pub(crate) fn call_of(method: &Method, path: &str, body: Option<&[u8]>) -> Option<Call> {
    let rest = &path[interactions_at(path)?..];
    if rest.is_empty() || rest == "/" {
        return (method == Method::POST).then(|| Call::Create(create_of(body.unwrap_or(b"{}"))));
    }
    let rest = rest.strip_prefix('/')?;
    let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if !is_id(id) {
        return None;
    }
    let id = id.to_owned();
    match (method, tail) {
        (&Method::GET, "") => Some(Call::Get(id)),
        (&Method::DELETE, "") => Some(Call::Delete(id)),
        (&Method::POST, "cancel") => Some(Call::Cancel(id)),
        _ => None,
    }
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
        let Some(Call::Create(create)) = call_of(&Method::POST, "/v1beta/interactions", Some(body))
        else {
            panic!("a create");
        };
        assert_eq!(create.previous.as_deref(), Some("v1_abc"));
        assert!(create.store);
        assert_eq!(create.model.as_deref(), Some("gemini-3.5-flash"));
        assert_eq!(
            call_of(&Method::GET, "/v1/interactions/v1_abc", None),
            Some(Call::Get("v1_abc".into()))
        );
        assert_eq!(
            call_of(&Method::DELETE, "/v1beta/interactions/v1_abc", None),
            Some(Call::Delete("v1_abc".into()))
        );
        assert_eq!(
            call_of(&Method::POST, "/v1beta/interactions/v1_abc/cancel", None),
            Some(Call::Cancel("v1_abc".into()))
        );
        let Some(Call::Create(unstored)) = call_of(
            &Method::POST,
            "/v1/interactions",
            Some(br#"{"store":false}"#),
        ) else {
            panic!("a create");
        };
        assert!(!unstored.store);
    }

    #[test]
    fn other_paths_and_odd_ids_are_not_calls() {
        assert!(call_of(&Method::POST, "/v1beta/models/m:generateContent", None).is_none());
        assert!(call_of(&Method::GET, "/v1beta/interactions/a%2Fb", None).is_none());
        assert!(call_of(&Method::GET, "/v1beta/interactions/..", None).is_none());
        assert!(call_of(&Method::PUT, "/v1beta/interactions/abc", None).is_none());
        assert!(call_of(&Method::GET, "/other/interactions/abc", None).is_none());
        assert!(!is_interactions_path(
            "/v1beta/models/interactions:generateContent"
        ));
        // A body that is not a create's is one Google answers; what it refers to is unclear.
        for body in [
            &b"nope"[..],
            br#"{"store":"false","previous_interaction_id":"v1_a"}"#,
            br#"{"previous_interaction_id":"v1_a","previousInteractionId":"v1_b"}"#,
            br#"{"previous_interaction_id":"../files/x"}"#,
        ] {
            let call = call_of(&Method::POST, "/v1beta/interactions", Some(body)).unwrap();
            assert!(call.is_unclear(), "{}", String::from_utf8_lossy(body));
            assert!(call.referred().is_none());
        }
        // The other spelling is read too.
        let camel = call_of(
            &Method::POST,
            "/v1/interactions",
            Some(br#"{"previousInteractionId":"v1_c"}"#),
        );
        assert_eq!(
            camel.unwrap().referred().as_deref(),
            Some("interactions/v1_c")
        );
    }
}
