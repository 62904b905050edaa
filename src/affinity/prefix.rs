//! Prefix affinity: requests that repeat a recent request's long prefix go to the project that
//! served it while it can take them, so that Google's implicit cache — kept per project —
//! discounts the repeated tokens. Rotation would scatter a conversation's turns over the
//! projects and lose the discount on most of them.
//!
//! A request's prefix is what the model reads first, in its order: the system instruction,
//! the tools, then the turns (`contents`, OpenAI `messages`, an interaction's `input`), as the
//! body sends them. Its first [`min_tokens`](PrefixAffinity::min_tokens) tokens' worth of
//! bytes (4 bytes a token) are hashed with the model and the request's
//! [`Tenant`](crate::context::Tenant), if any; a request shorter than that has no
//! prefix (Google caches nothing that small). After a success the prefix is remembered with
//! the project that served it for [`ttl`](PrefixAffinity::ttl); a later request with the same
//! prefix carries [`Preferred`] for that project: key selection takes it when it can serve now,
//! else rotates as usual — never a wait or a failure for the sake of a cache.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::context::Preferred;

/// How long a prefix is remembered by default: Google keeps implicit cache entries for minutes.
pub const DEFAULT_PREFIX_TTL: Duration = Duration::from_secs(5 * 60);
/// The most prefixes remembered.
pub const MAX_PREFIXES: usize = 50_000;
/// Bytes counted as one token when measuring a prefix.
const BYTES_PER_TOKEN: usize = 4;

/// Prefix affinity's settings and memory: requests that repeat a recent request's long prefix
/// (system instruction, tools, then the turns; its first [`min_tokens`](Self::min_tokens)
/// tokens, hashed with the model and the tenant) prefer the project that served it, where
/// Google's implicit cache holds it — only when that project can serve now. Turned on with
/// [`AffinityLayer::prefix_affinity`](super::AffinityLayer::prefix_affinity); see the
/// [affinity module](super).
#[derive(Debug)]
pub struct PrefixAffinity {
    ttl: Duration,
    min_tokens: Option<u64>,
    hasher: RandomState,
    seen: Mutex<HashMap<u64, Seen>>,
}

#[derive(Debug)]
struct Seen {
    project: Arc<str>,
    until: u64,
}

impl Default for PrefixAffinity {
    fn default() -> Self {
        PrefixAffinity::new()
    }
}

impl PrefixAffinity {
    /// Prefixes remembered [`DEFAULT_PREFIX_TTL`], measured against each model's minimum.
    pub fn new() -> Self {
        PrefixAffinity {
            ttl: DEFAULT_PREFIX_TTL,
            min_tokens: None,
            hasher: RandomState::new(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// How long a prefix is remembered after the last request that had it.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The prefix length that counts, for every model (default: Google's minimum for implicit
    /// caching by model — 2,048 tokens for the 2.5 models, 4,096 for 3 and later; models
    /// before 2.5 have no implicit cache and no prefix).
    pub fn min_tokens(mut self, tokens: u64) -> Self {
        self.min_tokens = Some(tokens);
        self
    }

    fn min_for(&self, model: &str) -> Option<u64> {
        self.min_tokens
            .or_else(|| crate::model::implicit_cache_min(model))
    }

    /// The key of a request's prefix for `model` (and `tenant`: one tenant's prefixes never
    /// steer another's requests, which would tell it, by the cached tokens its answers
    /// report, what others sent), if it is long enough to be cached.
    pub(crate) fn key_of(&self, model: &str, tenant: Option<&str>, body: &[u8]) -> Option<u64> {
        let min = usize::try_from(self.min_for(model)?).ok()?;
        let want = min.saturating_mul(BYTES_PER_TOKEN);
        let prompt: Prompt<'_> = serde_json::from_slice(body).ok()?;
        let mut hasher = self.hasher.build_hasher();
        hasher.write(model.as_bytes());
        hasher.write_u8(0);
        hasher.write(tenant.unwrap_or_default().as_bytes());
        hasher.write_u8(0);
        let mut taken = 0;
        for part in prompt.parts() {
            let bytes = part.get().as_bytes();
            let take = bytes.len().min(want - taken);
            hasher.write(&bytes[..take]);
            taken += take;
            if taken == want {
                return Some(hasher.finish());
            }
        }
        None
    }

    /// The project that served this prefix last, if recently.
    pub(crate) fn preferred(&self, key: u64, now: u64) -> Option<Preferred> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(&key)
            .filter(|s| s.until > now)
            .map(|s| Preferred::project(&*s.project))
    }

    /// `project` served this prefix now.
    pub(crate) fn learn(&self, key: u64, project: &str, now: u64) {
        let until = now.saturating_add(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX));
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_PREFIXES && !seen.contains_key(&key) {
            seen.retain(|_, s| s.until > now);
            if seen.len() >= MAX_PREFIXES {
                // Still full of live prefixes: an eighth goes (in the map's random order).
                let drop: Vec<u64> = seen.keys().take(MAX_PREFIXES / 8).copied().collect();
                for old in drop {
                    seen.remove(&old);
                }
            }
        }
        match seen.get_mut(&key) {
            Some(entry) if *entry.project == *project => entry.until = until,
            _ => {
                seen.insert(
                    key,
                    Seen {
                        project: Arc::from(project),
                        until,
                    },
                );
            }
        }
    }
}

/// The parts of a prompt the model reads first, as sent (native, OpenAI-compatible or an
/// interaction's create).
#[derive(Deserialize)]
struct Prompt<'a> {
    #[serde(
        borrow,
        default,
        rename = "systemInstruction",
        alias = "system_instruction"
    )]
    system: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(borrow, default)]
    contents: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    messages: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
}

impl<'a> Prompt<'a> {
    fn parts(&self) -> impl Iterator<Item = &'a RawValue> + '_ {
        self.system
            .into_iter()
            .chain(self.tools)
            .chain(self.contents.iter().flatten().copied())
            .chain(self.messages.iter().flatten().copied())
            .chain(self.input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(system: &str, turns: &[&str]) -> Vec<u8> {
        let contents: Vec<_> = turns
            .iter()
            .map(|t| serde_json::json!({ "role": "user", "parts": [{ "text": t }] }))
            .collect();
        serde_json::json!({ "systemInstruction": { "parts": [{ "text": system }] }, "contents": contents })
            .to_string()
            .into_bytes()
    }

    #[test]
    fn a_growing_conversation_keeps_its_prefix() {
        let affinity = PrefixAffinity::new().min_tokens(100);
        let long = "a long document ".repeat(40);
        let first = affinity
            .key_of("gemini-2.5-flash", None, &body(&long, &["q1"]))
            .unwrap();
        let later = affinity
            .key_of("gemini-2.5-flash", None, &body(&long, &["q1", "a1", "q2"]))
            .unwrap();
        assert_eq!(first, later);
        // Another tenant's same prefix is another key.
        let theirs = affinity.key_of("gemini-2.5-flash", Some("client-b"), &body(&long, &["q1"]));
        assert_ne!(Some(first), theirs);
        // Another model, another document: another prefix.
        assert_ne!(
            first,
            affinity
                .key_of("gemini-3-flash", None, &body(&long, &["q1"]))
                .unwrap()
        );
        let other = "another document ".repeat(40);
        assert_ne!(
            first,
            affinity
                .key_of("gemini-2.5-flash", None, &body(&other, &["q1"]))
                .unwrap()
        );
    }

    #[test]
    fn short_prompts_and_old_models_have_no_prefix() {
        let affinity = PrefixAffinity::new();
        assert!(
            affinity
                .key_of("gemini-2.5-flash", None, &body("short", &["q"]))
                .is_none()
        );
        let long = "x".repeat(50_000);
        assert!(
            affinity
                .key_of("gemini-2.0-flash", None, &body(&long, &["q"]))
                .is_none()
        );
        assert!(
            affinity
                .key_of("gemini-2.5-flash", None, &body(&long, &["q"]))
                .is_some()
        );
        assert!(
            affinity
                .key_of("gemini-2.5-flash", None, b"not json")
                .is_none()
        );
    }

    #[test]
    fn a_prefix_is_remembered_for_its_ttl_and_the_map_is_bounded() {
        let affinity = PrefixAffinity::new().ttl(Duration::from_millis(100));
        affinity.learn(7, "proj-a", 1_000);
        assert_eq!(
            affinity.preferred(7, 1_050).unwrap().project_name(),
            "proj-a"
        );
        assert!(affinity.preferred(7, 1_100).is_none());
        for key in 0..(MAX_PREFIXES as u64 + 10) {
            affinity.learn(key, "proj-b", 2_000);
        }
        assert!(affinity.seen.lock().unwrap().len() <= MAX_PREFIXES);
    }
}
