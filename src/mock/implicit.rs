//! The mock's implicit cache: per project and model, the prompts of the last minutes; a prompt
//! that repeats a long enough prefix of one of them has that prefix counted as cached, as
//! Google's implicit caching does per project (its `cachedContentTokenCount`).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::Value;

use super::MockState;
use super::bodies;

/// How long a prompt stays in a project's implicit cache.
const TTL_MS: u64 = 5 * 60 * 1000;
/// Prompts remembered per project and model.
const KEPT: usize = 64;

/// The prompts one project saw for one model lately: when, and their text.
type Seen = VecDeque<(u64, String)>;

/// The recent prompts of every project and model.
#[derive(Default)]
pub(super) struct Recent {
    prompts: Mutex<HashMap<(usize, String), Seen>>,
}

/// How many of this request's `prompt` tokens the project's implicit cache holds; the request
/// is remembered for the next ones.
pub(super) fn cached_tokens(
    state: &MockState,
    project: usize,
    model: &str,
    body: &Value,
    prompt: u64,
) -> u64 {
    let Some(min) = state
        .implicit_cache_min
        .or(crate::model::implicit_cache_min(model))
    else {
        return 0;
    };
    let text = bodies::prompt_text(body);
    let now = state.clock.now_millis();
    let mut prompts = state
        .recent
        .prompts
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let seen = prompts.entry((project, model.to_owned())).or_default();
    seen.retain(|(at, _)| now.saturating_sub(*at) < TTL_MS);
    let shared = seen
        .iter()
        .map(|(_, earlier)| common_prefix(earlier, &text))
        .max()
        .unwrap_or(0);
    seen.push_back((now, text));
    if seen.len() > KEPT {
        seen.pop_front();
    }
    let cached = if shared == 0 {
        0
    } else {
        bodies::tokens_for(shared)
    };
    if cached >= min { cached.min(prompt) } else { 0 }
}

/// The characters two texts share at their start.
fn common_prefix(a: &str, b: &str) -> usize {
    a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count()
}
