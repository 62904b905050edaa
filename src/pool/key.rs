//! API keys that cannot be printed: [`ApiKey`], [`Fingerprint`], [`KeySpec`].

use std::fmt;

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use crate::error::Error;

/// Shortest key accepted. The fingerprint shows 4 characters, so a key must be at least twice
/// that long for the fingerprint not to give half of it away. (Gemini keys have 39.)
pub(crate) const MIN_KEY_LEN: usize = 8;

pub use crate::fingerprint::Fingerprint;

/// A Gemini API key. Its `Debug` and `Display` show only the [`Fingerprint`].
///
/// ```
/// use tower_gemini::ApiKey;
///
/// let key = ApiKey::new("test-key-0001").unwrap();
/// assert_eq!(key.to_string(), "…0001");
/// assert_eq!(format!("{key:?}"), "ApiKey(…0001)");
/// assert!(ApiKey::new("short").is_err());
/// ```
pub struct ApiKey {
    secret: SecretString,
    fingerprint: Fingerprint,
    header: HeaderValue,
    bearer: HeaderValue,
}

/// The raw key, for a caller that sends requests to Google itself with a key the pool chose
/// (see [`KeyPool::select`](crate::KeyPool::select)). Send it to Google and nowhere else; prefer
/// [`ApiKey::header_value`], which is marked sensitive.
impl secrecy::ExposeSecret<str> for ApiKey {
    fn expose_secret(&self) -> &str {
        self.expose()
    }
}

impl ApiKey {
    /// Validate and wrap a key. Surrounding whitespace is trimmed.
    ///
    /// Errors (which never contain the key) if it is shorter than 8 characters or holds a
    /// character other than visible ASCII.
    pub fn new(secret: impl Into<String>) -> Result<ApiKey, Error> {
        let mut secret: String = secret.into();
        let trimmed = secret.trim();
        if trimmed.len() != secret.len() {
            secret = trimmed.to_owned();
        }
        check_key_text(&secret)?;
        let fingerprint = Fingerprint::of(&secret);
        let mut header = HeaderValue::from_str(&secret).map_err(|_| {
            Error::config(format!("API key {fingerprint} is not a valid header value"))
        })?;
        header.set_sensitive(true);
        let mut bearer = HeaderValue::from_str(&format!("Bearer {secret}")).map_err(|_| {
            Error::config(format!("API key {fingerprint} is not a valid header value"))
        })?;
        bearer.set_sensitive(true);
        Ok(ApiKey {
            secret: SecretString::from(secret),
            fingerprint,
            header,
            bearer,
        })
    }

    /// The key's fingerprint (last 4 characters).
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The raw key: for injection into a request, and nothing else.
    pub(crate) fn expose(&self) -> &str {
        self.secret.expose_secret()
    }

    /// The key as a sensitive header value (`x-goog-api-key: <key>`), for a request to Google
    /// made without [`KeyRotation`](crate::KeyRotation) (a WebSocket to the Live API, say):
    /// marked sensitive, so HTTP/2 never indexes it and `Debug` of the headers hides it.
    pub fn header_value(&self) -> HeaderValue {
        self.header.clone()
    }

    /// `Bearer <key>` as a sensitive header value.
    pub(crate) fn bearer_value(&self) -> HeaderValue {
        self.bearer.clone()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.fingerprint)
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.fingerprint, f)
    }
}

/// `…` and the last 4 characters of `text`: how any secret-like value (a key, a client token,
/// a quoted value in a config error) is shown.
pub(crate) fn masked(text: &str) -> String {
    let start = text.char_indices().rev().nth(3).map_or(0, |(at, _)| at);
    format!("…{}", &text[start..])
}

/// Check a (trimmed) key's text; the error names the problem, never the key.
pub(crate) fn check_key_text(secret: &str) -> Result<(), Error> {
    if secret.is_empty() {
        return Err(Error::config("an API key is empty"));
    }
    if secret.len() < MIN_KEY_LEN {
        return Err(Error::config(format!(
            "an API key is {} characters long; keys must have at least {MIN_KEY_LEN} (Gemini keys have 39)",
            secret.len()
        )));
    }
    if let Some(pos) = secret.bytes().position(|b| !(0x21..=0x7e).contains(&b)) {
        return Err(Error::config(format!(
            "API key {} has a space, control or non-ASCII character at position {}; keys are visible ASCII",
            Fingerprint::of(secret),
            pos + 1
        )));
    }
    Ok(())
}

/// The default priority of a key (see [`WeightedRandom`](crate::pool::WeightedRandom)).
pub const DEFAULT_PRIORITY: u32 = 50;

/// A key with its name, project and priority, for [`KeyPoolBuilder::key_with`](crate::pool::KeyPoolBuilder::key_with).
///
/// ```
/// use tower_gemini::{KeyPool, KeySpec};
///
/// let pool = KeyPool::builder()
///     .key_with(KeySpec { name: Some("main".into()), project: Some("proj-a".into()), ..KeySpec::new("test-key-0001") })
///     .key_with(KeySpec::new("test-key-0002").project("proj-a").priority(80))
///     .build()
///     .unwrap();
/// assert_eq!(pool.len(), 2);
/// ```
#[derive(Default)]
pub struct KeySpec {
    /// The key itself.
    pub secret: SecretString,
    /// A name for logs and the status page (default: none; the fingerprint identifies the key).
    pub name: Option<String>,
    /// The Google Cloud project the key belongs to. Keys of one project share quota and
    /// cool-downs per model. Default: a project of its own.
    pub project: Option<String>,
    /// Selection priority, higher is preferred by weighted strategies (default 50).
    pub priority: Option<u32>,
}

impl KeySpec {
    /// A key with no name, its own project and the default priority.
    pub fn new(secret: impl Into<String>) -> KeySpec {
        KeySpec {
            secret: SecretString::from(secret.into()),
            ..KeySpec::default()
        }
    }

    /// Set the name.
    pub fn name(mut self, name: impl Into<String>) -> KeySpec {
        self.name = Some(name.into());
        self
    }

    /// Set the project.
    pub fn project(mut self, project: impl Into<String>) -> KeySpec {
        self.project = Some(project.into());
        self
    }

    /// Set the priority.
    pub fn priority(mut self, priority: u32) -> KeySpec {
        self.priority = Some(priority);
        self
    }

    pub(crate) fn expose(&self) -> &str {
        self.secret.expose_secret()
    }
}

impl Clone for KeySpec {
    fn clone(&self) -> KeySpec {
        KeySpec {
            secret: SecretString::from(self.secret.expose_secret().to_owned()),
            name: self.name.clone(),
            project: self.project.clone(),
            priority: self.priority,
        }
    }
}

impl fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = self.secret.expose_secret().trim();
        let shown = if secret.len() >= MIN_KEY_LEN {
            Fingerprint::of(secret).to_string()
        } else {
            "[REDACTED]".to_owned()
        };
        f.debug_struct("KeySpec")
            .field("secret", &shown)
            .field("name", &self.name)
            .field("project", &self.project)
            .field("priority", &self.priority)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_shows_the_last_four_characters() {
        assert_eq!(masked("client-token-aaaa"), "…aaaa");
        assert_eq!(masked("ab"), "…ab");
        assert_eq!(masked("xxxxxéèêë"), "…éèêë");
    }

    #[test]
    fn fingerprint_is_the_last_four() {
        let key = ApiKey::new("  test-key-0001 ").unwrap();
        assert_eq!(key.fingerprint().to_string(), "…0001");
        assert_eq!(key.expose(), "test-key-0001");
        assert!(key.fingerprint().matches("…0001"));
        assert!(key.fingerprint().matches("...0001"));
        assert!(key.fingerprint().matches("0001"));
        assert!(!key.fingerprint().matches("0002"));
        assert_eq!(
            serde_json::to_string(&key.fingerprint()).unwrap(),
            "\"…0001\""
        );
    }

    #[test]
    fn nothing_prints_the_secret() {
        let key = ApiKey::new("test-key-0001").unwrap();
        let spec = KeySpec::new("test-key-0001").name("n");
        let text = format!("{key} {key:?} {:?} {spec:?}", key.header_value());
        assert!(!text.contains("test-key-0001"), "{text}");
        assert!(key.header_value().is_sensitive());
        assert!(key.bearer_value().is_sensitive());
    }

    #[test]
    fn bad_keys_are_refused_without_echo() {
        for bad in [
            "",
            "   ",
            "abc",
            "test key 0001",
            "test-kéy-0001",
            "test-key\n0001",
        ] {
            let err = ApiKey::new(bad).unwrap_err();
            let text = err.to_string();
            if bad.trim().len() > 3 {
                assert!(!text.contains(bad.trim()), "{text}");
            }
        }
        let err = ApiKey::new("abc").unwrap_err();
        assert!(err.to_string().contains("3 characters"), "{err}");
        let err = ApiKey::new("test key 0001").unwrap_err();
        assert!(err.to_string().contains("position 5"), "{err}");
    }
}
