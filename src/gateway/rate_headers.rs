//! The rate-limit headers OpenAI's clients and SDKs read (`x-ratelimit-limit-requests`,
//! `-remaining-requests`, `-reset-requests` and the `-tokens` variants), on every proxied answer
//! that names a model: what the pool knows of the model's per-minute quota across its projects,
//! or, where stricter, the client's own limits.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

use crate::pool::{KeyPool, RateLimits};
use crate::state::RateWindow;

/// How long a model's totals are kept in a pool of more than [`EXACT`] projects: computing them
/// visits every project.
const FRESH: Duration = Duration::from_millis(250);

/// Pools of at most this many projects are counted for every answer (exact headers).
const EXACT: usize = 16;

/// Models whose totals are kept at once (past it, the table starts again).
const MODELS: usize = 64;

/// A model's totals, kept a moment.
#[derive(Default)]
pub(crate) struct RateCache(
    Mutex<HashMap<String, (Instant, RateLimits), foldhash::fast::RandomState>>,
);

impl RateCache {
    /// `model`'s totals in `pool`, at most [`FRESH`] old.
    fn get(&self, pool: &KeyPool, model: &str) -> RateLimits {
        if pool.project_count() <= EXACT {
            return pool.rate_limits(model);
        }
        let now = Instant::now();
        {
            let kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, limits)) = kept.get(model)
                && now.duration_since(*at) < FRESH
            {
                return *limits;
            }
        }
        // Added up outside the lock (it visits every project), and kept only for a model with
        // limits: the others cost nothing to ask again, and made-up names take no place.
        let limits = pool.rate_limits(model);
        if limits != RateLimits::default() {
            let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if kept.len() >= MODELS && !kept.contains_key(model) {
                kept.clear();
            }
            kept.insert(model.to_owned(), (now, limits));
        }
        limits
    }
}

/// The headers for an answer about `model` (if one is named): the pool's totals, each
/// dimension replaced by the client's own window where that is stricter. Nothing for a
/// dimension neither limits.
pub(crate) fn headers(
    cache: &RateCache,
    pool: &KeyPool,
    model: Option<&str>,
    client: (Option<RateWindow>, Option<RateWindow>),
) -> HeaderMap {
    let pool = model.map_or_else(RateLimits::default, |model| cache.get(pool, model));
    // The pool's resets to the second: to the millisecond they would tell every client when
    // anyone last called the model.
    let coarse = |window: Option<RateWindow>| {
        window.map(|w| RateWindow {
            reset: Duration::from_secs(w.reset.as_millis().div_ceil(1000) as u64),
            ..w
        })
    };
    let pool = RateLimits {
        requests: coarse(pool.requests),
        tokens: coarse(pool.tokens),
        ..pool
    };
    let pick = |ours: Option<RateWindow>, theirs: Option<RateWindow>| match (ours, theirs) {
        (Some(a), Some(b)) => Some(a.stricter(b)),
        (a, b) => a.or(b),
    };
    let mut headers = HeaderMap::new();
    for (names, window) in [
        (&REQUESTS, pick(pool.requests, client.0)),
        (&TOKENS, pick(pool.tokens, client.1)),
    ] {
        let Some(window) = window else {
            continue;
        };
        let [limit, remaining, reset] = names;
        headers.insert(limit.clone(), HeaderValue::from(window.limit));
        headers.insert(remaining.clone(), HeaderValue::from(window.remaining));
        if let Ok(value) = HeaderValue::try_from(duration(window.reset)) {
            headers.insert(reset.clone(), value);
        }
    }
    headers
}

/// The request headers' names: limit, remaining, reset.
static REQUESTS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
];

/// The token headers' names: limit, remaining, reset.
static TOKENS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

/// A duration as OpenAI writes it in `x-ratelimit-reset-*`: `6m0s`, `1.5s`, `20ms`, `0s`.
pub(crate) fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (minutes, ms) = (ms / 60_000, ms % 60_000);
    let seconds = if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        let fraction = format!("{:03}", ms % 1000);
        format!("{}.{}s", ms / 1000, fraction.trim_end_matches('0'))
    };
    if minutes > 0 {
        format!("{minutes}m{seconds}")
    } else {
        seconds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_as_openai_writes_them() {
        assert_eq!(duration(Duration::ZERO), "0s");
        assert_eq!(duration(Duration::from_millis(20)), "20ms");
        assert_eq!(duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(duration(Duration::from_millis(60_500)), "1m0.5s");
        assert_eq!(duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(duration(Duration::from_millis(2_025)), "2.025s");
    }
}
