//! [`KeyPoolBuilder`]: keys from code, the environment or TOML; strategy, clock and limits.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use super::key::{ApiKey, DEFAULT_PRIORITY, KeySpec};
use super::strategy::{RoundRobin, Strategy};
use super::{KeyEntry, KeyPool, PoolInner, ProjectEntry};
use crate::clock::{Clock, SystemClock};
use crate::error::Error;
use crate::state::{BytesPerToken, MemoryStore, Store, Tier, TokenEstimator};
use crate::state::{KeyHealth, ModelTable, ProjectHealth, normalize_model};
use crate::state::{Limits, ModelLimits};

/// Builds a [`KeyPool`].
///
/// ```
/// use tower_gemini::pool::{KeyPool, KeySpec, ModelLimits, WeightedRandom};
///
/// let pool = KeyPool::builder()
///     .key("test-key-0001")
///     .key_with(KeySpec::new("test-key-0002").name("backup").project("proj-b"))
///     .strategy(WeightedRandom::with_seed(7))
///     .model_limits("gemini-2.0-flash", ModelLimits { rpm: Some(15), ..ModelLimits::default() })
///     .build()?;
/// assert_eq!(pool.len(), 2);
/// # Ok::<(), tower_gemini::Error>(())
/// ```
#[derive(Default)]
pub struct KeyPoolBuilder {
    specs: Vec<(KeySpec, Option<String>)>,
    strategy: Option<Arc<dyn Strategy>>,
    clock: Option<Arc<dyn Clock>>,
    limits: Limits,
    estimator: Option<Arc<dyn TokenEstimator>>,
    store: Option<Arc<dyn Store>>,
}

impl KeyPoolBuilder {
    /// A builder with `pool`'s configuration (strategy — shared, with its cursor —, clock,
    /// limits, token estimator) and no keys.
    pub(crate) fn configured_like(pool: &super::KeyPool) -> Self {
        let inner = &*pool.inner;
        KeyPoolBuilder {
            specs: Vec::new(),
            strategy: Some(inner.strategy.clone()),
            clock: Some(inner.clock.clone()),
            limits: (*inner.models.limits()).clone(),
            estimator: Some(inner.estimator.clone()),
            store: Some(inner.store.clone()),
        }
    }

    /// The model limits of `pool` instead (a reload's new keys and new limits at once).
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn limits_like(mut self, pool: &super::KeyPool) -> Self {
        self.limits = (*pool.inner.models.limits()).clone();
        self
    }

    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a key (its own project, default priority).
    pub fn key(self, secret: impl Into<String>) -> Self {
        self.key_with(KeySpec::new(secret))
    }

    /// Add a key with a name, project and priority.
    pub fn key_with(mut self, spec: KeySpec) -> Self {
        self.specs.push((spec, None));
        self
    }

    /// Add several keys.
    pub fn keys<I, K>(self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        keys.into_iter().fold(self, |b, k| b.key(k))
    }

    pub(crate) fn key_from(mut self, spec: KeySpec, origin: String) -> Self {
        self.specs.push((spec, Some(origin)));
        self
    }

    /// The selection strategy (default [`RoundRobin`]).
    pub fn strategy(mut self, strategy: impl Strategy) -> Self {
        self.strategy = Some(Arc::new(strategy));
        self
    }

    #[cfg(feature = "toml")]
    pub(crate) fn boxed_strategy(mut self, strategy: Box<dyn Strategy>) -> Self {
        self.strategy = Some(Arc::from(strategy));
        self
    }

    /// The clock (default [`SystemClock`]); inject a [`ManualClock`](crate::clock::ManualClock) in tests.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Limits for `model` in every project (per-project limits take precedence).
    pub fn model_limits(mut self, model: impl AsRef<str>, limits: ModelLimits) -> Self {
        self.limits
            .defaults
            .insert(normalize_model(model.as_ref()).to_owned(), limits);
        self
    }

    /// How requests willing to wait are admitted within a minute's quota: spread evenly over
    /// the minute with a bounded burst ([`Pacing::DEFAULT`](crate::state::Pacing::DEFAULT)), or
    /// as the window allows ([`Pacing::Off`](crate::state::Pacing::Off)). Spacing only delays
    /// requests that wait for a key (`wait_up_to`); it never fails one. See
    /// [`Pacing`](crate::state::Pacing).
    pub fn pacing(mut self, pacing: crate::state::Pacing) -> Self {
        self.limits.pacing = pacing;
        self
    }

    /// Limits for `model` in one project.
    pub fn project_model_limits(
        mut self,
        project: impl Into<String>,
        model: impl AsRef<str>,
        limits: ModelLimits,
    ) -> Self {
        self.limits
            .projects
            .entry(project.into())
            .or_default()
            .insert(normalize_model(model.as_ref()).to_owned(), limits);
        self
    }

    /// The tier of every project without its own: its presets fill in the limits that are not
    /// configured (see [`Tier`]). Default: none, so only configured or learned limits apply.
    pub fn tier(mut self, tier: Tier) -> Self {
        self.limits.tier = Some(tier);
        self
    }

    /// The tier of one project.
    pub fn project_tier(mut self, project: impl Into<String>, tier: Tier) -> Self {
        self.limits.project_tiers.insert(project.into(), tier);
        self
    }

    /// How requests' tokens are estimated before sending (default [`BytesPerToken`]).
    pub fn token_estimator(mut self, estimator: impl TokenEstimator) -> Self {
        self.estimator = Some(Arc::new(estimator));
        self
    }

    /// Where the pool's state is shared (default [`MemoryStore`]: nowhere, the process's
    /// memory is the truth). With a [`RedisStore`](crate::state::RedisStore) (feature `redis`),
    /// several processes using the same keys share their quota ledgers, cool-downs, disabled
    /// keys and learned limits. See [`state`](crate::state).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Build the pool.
    ///
    /// Errors (never showing a key) if there are no keys, a key is malformed, limits name a
    /// project no key belongs to, or one key is listed twice with different settings (name,
    /// project or priority): the error names both entries. A key listed twice with the same
    /// settings is kept once, at its first position, with a warning.
    pub fn build(self) -> Result<KeyPool, Error> {
        if self.specs.is_empty() {
            return Err(Error::config(
                "no API keys: add at least one with KeyPool::builder().key(..), GEMINI_API_KEY=k1,k2 or a TOML [[keys]] entry",
            ));
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut validated = Vec::with_capacity(self.specs.len());
        for (position, (spec, origin)) in self.specs.iter().enumerate() {
            // A TOML entry by its place in the file, else by its place among the keys.
            let entry = |position: usize, spec: &KeySpec, origin: &Option<String>| match origin {
                Some(origin) => origin.clone(),
                None => match &spec.name {
                    Some(name) => format!("key #{} (name {name:?})", position + 1),
                    None => format!("key #{}", position + 1),
                },
            };
            let key = ApiKey::new(spec.expose()).map_err(|e| {
                Error::config(format!(
                    "{}: {}",
                    entry(position, spec, origin),
                    e.message()
                ))
            })?;
            if let Some(&first) = seen.get(key.expose()) {
                let (first_spec, first_origin) = &self.specs[first];
                let settings = |s: &KeySpec| (s.name.clone(), s.project.clone(), s.priority);
                let (a, b) = (
                    entry(first, first_spec, first_origin),
                    entry(position, spec, origin),
                );
                if settings(first_spec) != settings(spec) {
                    return Err(Error::config(format!(
                        "key {} is listed twice with different settings: {a} and {b} (name, project or priority differ); keep one entry",
                        key.fingerprint()
                    )));
                }
                tracing::warn!(gemini.key = %key.fingerprint(), "key {} is listed twice ({a} and {b}); using it once", key.fingerprint());
                continue;
            }
            seen.insert(key.expose().to_owned(), position);
            validated.push((key, spec));
        }

        // Projects: explicit names first, then a project of its own for each key without one.
        let explicit: HashSet<&str> = validated
            .iter()
            .filter_map(|(_, s)| s.project.as_deref())
            .collect();
        let mut project_index: HashMap<String, usize> = HashMap::new();
        let mut projects: Vec<ProjectEntry> = Vec::new();
        let mut keys = Vec::with_capacity(validated.len());
        for (key, spec) in validated {
            let project_name = match spec.project.as_deref() {
                Some(p) if !p.trim().is_empty() => p.trim().to_owned(),
                _ => {
                    let base = spec
                        .name
                        .clone()
                        .unwrap_or_else(|| key.fingerprint().to_string());
                    let mut candidate = base.clone();
                    let mut n = 2;
                    while explicit.contains(candidate.as_str())
                        || project_index.contains_key(&candidate)
                    {
                        candidate = format!("{base}#{n}");
                        n += 1;
                    }
                    candidate
                }
            };
            let index = *project_index
                .entry(project_name.clone())
                .or_insert_with(|| {
                    projects.push(ProjectEntry {
                        name: Arc::from(project_name.as_str()),
                        health: ProjectHealth::default(),
                    });
                    projects.len() - 1
                });
            keys.push(KeyEntry {
                key,
                name: spec.name.as_deref().map(Arc::from),
                project: index,
                priority: spec.priority.unwrap_or(DEFAULT_PRIORITY),
                health: KeyHealth::default(),
            });
        }

        for project in self
            .limits
            .projects
            .keys()
            .chain(self.limits.project_tiers.keys())
        {
            if !project_index.contains_key(project) {
                let mut known: Vec<&str> = project_index.keys().map(String::as_str).collect();
                known.sort_unstable();
                return Err(Error::config(format!(
                    "limits are set for project {project:?}, but no key belongs to it (projects: {})",
                    known.join(", ")
                )));
            }
        }

        let names: Box<[Arc<str>]> = projects.iter().map(|p| p.name.clone()).collect();
        let inner = PoolInner {
            has_limits: std::sync::atomic::AtomicBool::new(!self.limits.is_empty()),
            calls: super::calls::CallLog::default(),
            models: ModelTable::new(names, self.limits),
            estimator: self
                .estimator
                .unwrap_or_else(|| Arc::new(BytesPerToken::default())),
            keys: keys.into_boxed_slice(),
            projects: projects.into_boxed_slice(),
            strategy: self.strategy.unwrap_or_else(|| Arc::new(RoundRobin::new())),
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock::new())),
            store: self.store.unwrap_or_else(|| Arc::new(MemoryStore)),
            pins: crate::state::Pins::default(),
        };
        Ok(KeyPool {
            inner: Arc::new(inner),
        })
    }
}

impl fmt::Debug for KeyPoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPoolBuilder")
            .field(
                "keys",
                &self.specs.iter().map(|(s, _)| s).collect::<Vec<_>>(),
            )
            .field("strategy", &self.strategy)
            .field("clock", &self.clock)
            .field("store", &self.store)
            .finish()
    }
}
