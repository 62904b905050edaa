//! The [`KeyPool`]: keys, their projects, health, selection and what the pool learns.
//!
//! A pool is cheap to clone (an `Arc` inside) and shared by every layer. Selection reads atomics
//! and one read-locked map lookup for the model; it never holds a lock across a selection.
//!
//! ```
//! use tower_gemini::KeyPool;
//!
//! let pool = KeyPool::from_keys(["test-key-0001", "test-key-0002"]).unwrap();
//! let lease = pool.select(Some("gemini-2.0-flash")).unwrap();
//! assert_eq!(lease.selected().fingerprint().to_string(), "…0001");
//! ```

mod builder;
mod calls;
pub(crate) mod env;
mod key;
mod queue;
mod saved;
mod snapshot;
mod strategy;
#[cfg(feature = "toml")]
pub(crate) mod toml_config;
mod unavailable;

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use builder::KeyPoolBuilder;
pub use calls::{CALL_LOG_SIZE, CallRecord};
pub(crate) use key::masked;
pub use key::{ApiKey, DEFAULT_PRIORITY, Fingerprint, KeySpec};
pub(crate) use queue::KeyWait;
pub use snapshot::{
    KeyCounters, KeySnapshot, KeyState, ModelHealthSnapshot, PoolSnapshot, QuotaSnapshot,
};
pub use strategy::{
    Candidates, KeyStats, LeastInFlight, LowestLatency, MostHeadroom, RoundRobin, Strategy,
    WeightedRandom,
};

use crate::classify::{Class, Classification};
use crate::clock::Clock;
use crate::error::{Error, ErrorKind};
pub use crate::state::{
    DEFAULT_MINUTE_COOLDOWN, DisabledReason, MAX_MINUTE_COOLDOWN, ModelLimits,
    RATE_LIMIT_BASE_COOLDOWN, RATE_LIMIT_MAX_COOLDOWN,
};
use crate::state::{
    Demand, Dimension, Effect, History, KeyHealth, ModelTable, ProjectHealth, Scope, SharedRefusal,
    Store, Target, TokenEstimator,
};
pub(crate) use crate::state::{MeterRef, ModelSlots, Reservation};

/// A request pinned to one project (its [`Owner`](crate::context::Owner)), resolved to the
/// pool's index of that project.
#[derive(Clone, Debug)]
pub(crate) struct Pin {
    pub(crate) project: usize,
    pub(crate) owner: crate::context::Owner,
}

/// A selection error for a pinned request says which resource and project it was for.
fn pinned(error: Error, pin: Option<&Pin>) -> Error {
    match pin {
        Some(pin) => error.context(format!("for {}", pin.owner)),
        None => error,
    }
}

/// A shared set of Gemini API keys with their health, projects and selection strategy.
#[derive(Clone)]
pub struct KeyPool {
    pub(crate) inner: Arc<PoolInner>,
}

pub(crate) struct PoolInner {
    pub(crate) keys: Box<[KeyEntry]>,
    pub(crate) projects: Box<[ProjectEntry]>,
    pub(crate) models: ModelTable,
    pub(crate) strategy: Arc<dyn Strategy>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) estimator: Arc<dyn TokenEstimator>,
    /// The last answers, for status pages.
    pub(crate) calls: calls::CallLog,
    /// Any limit configured or learned: requests need a token estimate.
    pub(crate) has_limits: AtomicBool,
    /// Where the state is shared ([`MemoryStore`](crate::state::MemoryStore): nowhere).
    pub(crate) store: Arc<dyn Store>,
    /// Which project holds each resource learned (the affinity map's working copy).
    pub(crate) pins: crate::state::Pins,
}

pub(crate) struct KeyEntry {
    pub(crate) key: ApiKey,
    pub(crate) name: Option<Arc<str>>,
    pub(crate) project: usize,
    pub(crate) priority: u32,
    pub(crate) health: KeyHealth,
}

pub(crate) struct ProjectEntry {
    pub(crate) name: Arc<str>,
    pub(crate) health: ProjectHealth,
}

impl KeyPool {
    /// A builder: keys, strategy, clock, limits.
    pub fn builder() -> KeyPoolBuilder {
        KeyPoolBuilder::new()
    }

    /// A pool of these keys, each its own project, round robin.
    pub fn from_keys<I, K>(keys: I) -> Result<KeyPool, Error>
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        keys.into_iter()
            .fold(KeyPool::builder(), |b, k| b.key(k))
            .build()
    }

    /// Keys from the process environment; see [`KeyPoolBuilder::keys_from_env`].
    pub fn from_env() -> Result<KeyPool, Error> {
        KeyPool::builder().keys_from_env()?.build()
    }

    /// Keys from the given variables instead of the process environment (same rules as
    /// [`from_env`](KeyPool::from_env)); handy in tests.
    pub fn from_env_vars<I, K, V>(vars: I) -> Result<KeyPool, Error>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        KeyPool::builder().keys_from_vars(vars)?.build()
    }

    /// A pool from a TOML document; see [`KeyPoolBuilder::toml_str`].
    #[cfg(feature = "toml")]
    #[cfg_attr(docsrs, doc(cfg(feature = "toml")))]
    pub fn from_toml_str(text: &str) -> Result<KeyPool, Error> {
        KeyPool::builder().toml_str(text)?.build()
    }

    /// A pool from a TOML file; see [`KeyPoolBuilder::toml_str`].
    #[cfg(feature = "toml")]
    #[cfg_attr(docsrs, doc(cfg(feature = "toml")))]
    pub fn from_toml_path(path: impl AsRef<std::path::Path>) -> Result<KeyPool, Error> {
        KeyPool::builder().toml_path(path)?.build()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.inner.keys.len()
    }

    /// Always false: a built pool has at least one key.
    pub fn is_empty(&self) -> bool {
        self.inner.keys.is_empty()
    }

    /// The keys with their names and projects, in pool order (for `gemini-gateway check-keys`).
    #[cfg(feature = "gateway")]
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&ApiKey, Option<&str>, &str)> + '_ {
        self.inner.keys.iter().map(|k| {
            let project = &*self.inner.projects[k.project].name;
            (&k.key, k.name.as_deref(), project)
        })
    }

    /// A new pool with this pool's configuration (limits, tiers, strategy, clock, estimator)
    /// and these keys, carrying over what this pool knows of the keys it keeps (health,
    /// counters, cool-downs, daily usage, learned limits; see [`restore`](Self::restore)). For
    /// adding or removing a key while serving: swap the new pool in; requests in flight finish
    /// on the old one.
    ///
    /// ```
    /// use tower_gemini::{KeyPool, KeySpec};
    ///
    /// let pool = KeyPool::from_keys(["test-key-0001", "test-key-0002"])?;
    /// let grown = pool.with_keys(pool.specs().into_iter().chain([KeySpec::new("test-key-0003")]))?;
    /// assert_eq!(grown.len(), 3);
    /// # Ok::<(), tower_gemini::Error>(())
    /// ```
    pub fn with_keys(&self, keys: impl IntoIterator<Item = KeySpec>) -> Result<KeyPool, Error> {
        self.with_keys_and_limits_of(keys, self)
    }

    /// [`with_keys`](Self::with_keys), with the model limits of `limits` (a configuration read
    /// again): one pool, built before anything changes, or the error that refuses both.
    pub(crate) fn with_keys_and_limits_of(
        &self,
        keys: impl IntoIterator<Item = KeySpec>,
        limits: &KeyPool,
    ) -> Result<KeyPool, Error> {
        let pool = keys
            .into_iter()
            .fold(
                KeyPoolBuilder::configured_like(self).limits_like(limits),
                |b, spec| b.key_with(spec),
            )
            .build()?;
        pool.restore(&self.save());
        Ok(pool)
    }

    /// This pool's keys and configuration with its state shared through `store` (see
    /// [`KeyPoolBuilder::store`]), carrying over what this pool knows.
    pub fn with_store(&self, store: impl Store) -> Result<KeyPool, Error> {
        let pool = self
            .specs()
            .into_iter()
            .fold(
                KeyPoolBuilder::configured_like(self).store(store),
                |b, spec| b.key_with(spec),
            )
            .build()?;
        pool.restore(&self.save());
        Ok(pool)
    }

    /// Take `other`'s configured limits and pacing from now on (a live reload), keeping what
    /// this pool counted and learned: each tracked model's windows go on under the new limits.
    /// True if they differ from this pool's.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn reconfigure_limits(&self, other: &KeyPool) -> bool {
        let limits = (*other.inner.models.limits()).clone();
        if *self.inner.models.limits() == limits {
            return false;
        }
        if !limits.is_empty() {
            self.inner.has_limits.store(true, Ordering::Release);
        }
        self.inner.models.set_limits(limits);
        true
    }

    /// Is the pool's state shared with other processes (a store such as Redis)?
    pub fn is_shared(&self) -> bool {
        self.inner.store.is_shared()
    }

    /// Can the pool's store be reached now? Always `true` for the in-memory store; for Redis,
    /// `false` while requests are admitted by this process's own ledger (or refused, with
    /// `WhenUnreachable::Refuse`).
    pub fn is_store_reachable(&self) -> bool {
        self.inner.store.is_reachable()
    }

    /// Stop handing out the keys that `successor` (a pool rebuilt with
    /// [`with_keys`](Self::with_keys)) does not have: requests still waiting in line on this
    /// pool must not get a key an operator removed.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn retire_keys_not_in(&self, successor: &KeyPool) {
        for entry in self.inner.keys.iter() {
            let kept = successor
                .inner
                .keys
                .iter()
                .any(|other| other.key.expose() == entry.key.expose());
            if !kept {
                entry.health.disabled.disable(DisabledReason::Removed);
            }
        }
    }

    /// The keys as they were configured (secret, name, project, priority), for
    /// [`with_keys`](Self::with_keys). `KeySpec`'s `Debug` shows fingerprints only.
    pub fn specs(&self) -> Vec<KeySpec> {
        let inner = &*self.inner;
        inner
            .keys
            .iter()
            .map(|entry| {
                let mut spec = KeySpec::new(entry.key.expose()).priority(entry.priority);
                spec.name = entry.name.as_deref().map(str::to_owned);
                spec.project = Some(inner.projects[entry.project].name.to_string());
                spec
            })
            .collect()
    }

    /// The fingerprints of the keys, in pool order.
    pub fn fingerprints(&self) -> impl Iterator<Item = Fingerprint> + '_ {
        self.inner.keys.iter().map(|k| k.key.fingerprint())
    }

    /// The pool's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The limits configured for `project` and `model` (per-project values over the defaults).
    pub fn limits_for(&self, project: &str, model: &str) -> Option<ModelLimits> {
        self.inner.models.limits().for_model(project, model)
    }

    /// Choose a key that can serve `model` now (`None`: the model is unknown), for a caller
    /// that sends the request itself — a client that is not a tower service, such as a
    /// WebSocket to the Live API. [`KeyRotationLayer`](crate::KeyRotationLayer) does all of
    /// this for HTTP requests.
    ///
    /// The lease counts as in flight until it is reported or dropped. When no key can, the
    /// error says why: [`ErrorKind::NoKeyAvailable`] (keys
    /// cooling down after Google's 429s), [`ErrorKind::QuotaExhausted`]
    /// (every project at its local quota, naming the dimension), both with `retry_after` set to
    /// when the first frees, or [`ErrorKind::AllKeysDisabled`]
    /// (every key disabled for good; no `retry_after`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_gemini::{Classification, ExposeSecret, KeyPool};
    ///
    /// let pool = KeyPool::from_keys(["test-key-0001", "test-key-0002"])?;
    /// let lease = pool.select(Some("gemini-2.0-flash"))?;
    /// let header = lease.key().header_value(); // x-goog-api-key, marked sensitive
    /// assert_eq!(lease.key().expose_secret(), "test-key-0001");
    /// // … send the request to Google with it, then tell the pool how it went:
    /// let answer = Classification::from_response(http::StatusCode::OK, b"");
    /// lease.report(&answer, Duration::from_millis(420));
    /// # let _ = header;
    /// # Ok::<(), tower_gemini::Error>(())
    /// ```
    pub fn select(&self, model: Option<&str>) -> Result<KeyLease, Error> {
        self.select_with(model, Demand::default())
    }

    /// Like [`select`](Self::select), also skipping projects whose quota ledger has no room
    /// for `demand` (one request, its tokens and images) on this model. Where the project has
    /// a limit, the request's place in its ledger is taken in the same step.
    pub fn select_with(&self, model: Option<&str>, demand: Demand) -> Result<KeyLease, Error> {
        self.select_in(&self.model_slots(model), demand, None, false)
    }

    /// The pool's entry for `model` (`None`: unknown), created on first use.
    pub(crate) fn model_slots(&self, model: Option<&str>) -> Arc<ModelSlots> {
        match model {
            Some(model) => self.inner.models.get(model),
            None => self.inner.models.unknown(),
        }
    }

    /// The project an [`Owner`](crate::context::Owner) names, as the pool knows it; an error
    /// naming the resource if the pool has no such project.
    pub(crate) fn pin(&self, owner: &crate::context::Owner) -> Result<Pin, Error> {
        self.inner
            .projects
            .iter()
            .position(|p| *p.name == *owner.project_name())
            .map(|project| Pin {
                project,
                owner: owner.clone(),
            })
            .ok_or_else(|| {
                // `Config`: no other model or attempt can help (a fallback would try the same).
                Error::new(
                    ErrorKind::Config,
                    format!(
                        "no key of the pool can serve {owner}: the pool has no project of that name (it was removed, or the resource was made with a key the pool does not hold)"
                    ),
                )
            })
    }

    /// The project that holds the resource `name` (`interactions/…`), if the pool learned it
    /// (from the answer that created it, or [`remember_owner`](Self::remember_owner)) and it
    /// has not expired. Only this process's copy is read; a shared store is asked by
    /// [`AffinityLayer`](crate::affinity::AffinityLayer) when it is not here.
    pub fn owner_of(&self, name: &str) -> Option<crate::context::Owner> {
        let record = self.inner.pins.get(name, self.inner.clock.now_millis())?;
        Some(crate::context::Owner::for_resource(&*record.project, name))
    }

    /// Record that the resource `name` lives in `project` for `ttl` (for a resource created
    /// outside the pool): requests that refer to it are sent there. Shared through the store.
    pub fn remember_owner(&self, name: &str, project: &str, ttl: Duration) {
        let now = self.inner.clock.now_millis();
        let record = crate::state::PinRecord {
            project: Arc::from(project),
            expires_at: now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            tenant: None,
            tokens: 0,
        };
        // Not waited for: nothing is being answered.
        drop(self.learn_pin(name, record));
    }

    /// Learn where `name` lives; the store's write to wait for before the answer goes on.
    pub(crate) fn learn_pin(
        &self,
        name: &str,
        record: crate::state::PinRecord,
    ) -> Option<crate::state::StoreFuture<()>> {
        let now = self.inner.clock.now_millis();
        if !self.inner.pins.learn(name, record.clone(), now) {
            return None;
        }
        self.inner.store.pin(name, &record, now)
    }

    /// Where `name` lives, from this process's copy, else the shared store's (then kept here).
    pub(crate) async fn pin_record(&self, name: &str) -> Option<crate::state::PinRecord> {
        let now = self.inner.clock.now_millis();
        if let Some(record) = self.inner.pins.get(name, now) {
            return Some(record);
        }
        let record = self.inner.store.pinned(name)?.await?;
        self.inner.pins.learn(name, record.clone(), now);
        Some(record)
    }

    /// Forget where `name` lives (it was deleted), here and in the store.
    pub(crate) fn forget_pin(&self, name: &str) {
        self.inner.pins.forget(name);
        self.inner.store.unpin(name);
    }

    /// The projects' names, in the pool's order.
    pub(crate) fn project_names(&self) -> Vec<Arc<str>> {
        self.inner.projects.iter().map(|p| p.name.clone()).collect()
    }

    /// The names of `tenant`'s live resources starting with `prefix` (`cachedContents/`),
    /// oldest first, as this process knows them.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn names_of(&self, tenant: &str, prefix: &str) -> Vec<Arc<str>> {
        self.inner
            .pins
            .names_of(tenant, prefix, self.inner.clock.now_millis())
    }

    /// The records of the live resources whose names start with `prefix`, as this process
    /// knows them.
    pub(crate) fn records_of(&self, prefix: &str) -> Vec<crate::state::PinRecord> {
        self.inner
            .pins
            .records_of(prefix, self.inner.clock.now_millis())
    }

    /// The records of `tenant`'s live resources whose names start with `prefix`, as this
    /// process knows them.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn records_of_tenant(
        &self,
        tenant: &str,
        prefix: &str,
    ) -> Vec<crate::state::PinRecord> {
        self.inner
            .pins
            .records_of_tenant(tenant, prefix, self.inner.clock.now_millis())
    }

    /// How many live resources each tenant holds (`None`: made without a tenant).
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn owned_by_tenant(
        &self,
    ) -> std::collections::HashMap<Option<Arc<str>>, std::collections::BTreeMap<String, usize>>
    {
        self.inner
            .pins
            .count_by_tenant(self.inner.clock.now_millis())
    }

    /// Select among the keys for a resolved model entry (only `pin`'s project's, if pinned).
    pub(crate) fn select_in(
        &self,
        slots: &Arc<ModelSlots>,
        demand: Demand,
        pin: Option<&Pin>,
        paced: bool,
    ) -> Result<KeyLease, Error> {
        let inner = &*self.inner;
        let now = inner.clock.now_millis();
        // Each round either leases a key or finds one more project without room (another
        // request took its last slot between the look and the admission); bounded by the keys.
        for _ in 0..=inner.keys.len() {
            let candidates = Candidates {
                keys: &inner.keys,
                projects: &inner.projects,
                slots,
                now,
                demand,
                pin: pin.map(|pin| pin.project),
                paced,
                last_checked: Cell::new(None),
            };
            // A pinned request takes its project's first available key without asking the
            // strategy: the strategy's state (a round robin's cursor) is the unpinned requests',
            // and moving it past the keys a pin skips would send the next unpinned request to
            // the project after the pinned one, every time.
            let chosen = if pin.is_some() {
                candidates.available().next()
            } else {
                inner
                    .strategy
                    .choose(&candidates)
                    .filter(|&i| candidates.is_available(i))
                    // A strategy that picks an unavailable key is overruled, not trusted.
                    .or_else(|| candidates.available().next())
            };
            let Some(index) = chosen else {
                return Err(pinned(unavailable::error(&candidates), pin));
            };
            let project = inner.keys[index].project;
            let slot = &slots.projects[project];
            let reservation = if slot.quota.is_limited() {
                match slot.quota.admit(demand, now, paced) {
                    Ok(ticket) => ticket.map(|ticket| {
                        let meter = MeterRef {
                            slots: slots.clone(),
                            project,
                        };
                        Reservation::new(meter, ticket, index)
                    }),
                    Err(_) => continue,
                }
            } else {
                None
            };
            slot.sent.record(now);
            inner.keys[index].health.leased(now);
            return Ok(KeyLease {
                pool: self.inner.clone(),
                index,
                slots: slots.clone(),
                reservation,
                selected_at: now,
            });
        }
        Err(self.unavailable(slots, demand, pin))
    }

    /// Why no key can take this request now, without taking one.
    pub(crate) fn unavailable(
        &self,
        slots: &ModelSlots,
        demand: Demand,
        pin: Option<&Pin>,
    ) -> Error {
        self.unavailable_as(slots, demand, pin, false)
    }

    /// Why no key can take this request at its paced turn now (its `retry_after`: when the
    /// earliest turn comes), without taking one.
    pub(crate) fn unavailable_paced(
        &self,
        slots: &ModelSlots,
        demand: Demand,
        pin: Option<&Pin>,
    ) -> Error {
        self.unavailable_as(slots, demand, pin, true)
    }

    fn unavailable_as(
        &self,
        slots: &ModelSlots,
        demand: Demand,
        pin: Option<&Pin>,
        paced: bool,
    ) -> Error {
        let inner = &*self.inner;
        let error = unavailable::error(&Candidates {
            keys: &inner.keys,
            projects: &inner.projects,
            slots,
            now: inner.clock.now_millis(),
            demand,
            pin: pin.map(|pin| pin.project),
            paced,
            last_checked: Cell::new(None),
        });
        pinned(error, pin)
    }

    /// `model`'s per-minute quota across the projects that can serve it, as a client's
    /// rate-limit headers show it: the limits added up, what is left of them, and when the
    /// last window empties. A dimension is `None` where a project that can serve the model has
    /// no limit for it (there is no total to show). O(projects): callers that answer many
    /// requests keep it a moment (the gateway does, for a quarter of a second).
    pub fn rate_limits(&self, model: &str) -> RateLimits {
        let inner = &*self.inner;
        // A model the pool does not track yet has nothing to add up (and a name a caller made
        // up is not added to the table for asking).
        let Some(slots) = inner.models.find(model) else {
            return RateLimits::default();
        };
        // (Most models of most pools: no limit known, nothing to add up.)
        if !slots.projects.iter().any(|slot| slot.quota.is_limited()) {
            return RateLimits::default();
        }
        let now = inner.clock.now_millis();
        let mut serving = vec![false; inner.projects.len()];
        for entry in inner.keys.iter() {
            if entry.health.disabled.get().is_none()
                && inner.projects[entry.project]
                    .health
                    .disabled
                    .get()
                    .is_none()
            {
                serving[entry.project] = true;
            }
        }
        let mut total = RateLimits::default();
        let mut unlimited = (false, false);
        let add = |sum: &mut Option<crate::state::RateWindow>, one: crate::state::RateWindow| {
            let sum = sum.get_or_insert(crate::state::RateWindow {
                limit: 0,
                remaining: 0,
                reset: Duration::ZERO,
            });
            sum.limit = sum.limit.saturating_add(one.limit);
            sum.remaining = sum.remaining.saturating_add(one.remaining);
            sum.reset = sum.reset.max(one.reset);
        };
        for (project, slot) in slots.projects.iter().enumerate() {
            if !serving[project] || slot.is_not_on_tier() {
                continue;
            }
            let (requests, tokens) = slot.quota.windows(now);
            match requests {
                Some(window) => add(&mut total.requests, window),
                None => unlimited.0 = true,
            }
            match tokens {
                Some(window) => add(&mut total.tokens, window),
                None => unlimited.1 = true,
            }
        }
        if unlimited.0 {
            total.requests = None;
        }
        if unlimited.1 {
            total.tokens = None;
        }
        total
    }

    /// How many projects the pool's keys belong to.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn project_count(&self) -> usize {
        self.inner.projects.len()
    }

    /// How requests that wait for a key are admitted within a minute's quota (see
    /// [`Pacing`](crate::state::Pacing)).
    pub fn pacing(&self) -> crate::state::Pacing {
        self.inner.models.limits().pacing
    }

    /// Does any project have a quota limit (configured, from a tier, or learned)?
    pub fn has_limits(&self) -> bool {
        self.inner.has_limits.load(Ordering::Acquire)
    }

    /// The estimated demand of a request body, by the pool's [`TokenEstimator`].
    pub fn estimate(&self, body: &[u8]) -> Demand {
        self.inner.estimator.estimate(body)
    }

    /// The demand of a request: its body if in memory, else its `content-length` at 4 bytes
    /// per token.
    pub(crate) fn demand_of<B: 'static>(&self, request: &http::Request<B>) -> Demand {
        let mut demand = self.body_demand(request);
        // A stored conversation the request continues is prompt too.
        if let Some(stored) = request.extensions().get::<crate::context::StoredContext>() {
            demand.tokens = demand.tokens.saturating_add(stored.0);
        }
        demand
    }

    fn body_demand<B: 'static>(&self, request: &http::Request<B>) -> Demand {
        match crate::peek::body_bytes(request.body()) {
            Some(bytes) => self.estimate(&bytes),
            None => {
                let length = request
                    .headers()
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                Demand {
                    tokens: length.div_ceil(4),
                    images: 0,
                }
            }
        }
    }

    /// The quota ledger of a key's project for `model`.
    pub(crate) fn meter(&self, key_index: usize, model: Option<&str>) -> Option<MeterRef> {
        let project = self.inner.keys.get(key_index)?.project;
        Some(MeterRef {
            slots: self.model_slots(model),
            project,
        })
    }

    /// The last answers (at most [`CALL_LOG_SIZE`]), newest first: time, key fingerprint,
    /// project, model, status, class, latency, and what Google said for failures.
    pub fn recent_calls(&self) -> Vec<CallRecord> {
        let projects = &self.inner.projects;
        self.inner.calls.recent(|p| &*projects[p].name)
    }

    /// Used and limit per dimension for every project and model with a limit.
    pub fn quota_snapshot(&self) -> Vec<QuotaSnapshot> {
        snapshot::quota(&self.inner)
    }

    /// Re-enable keys and clear their cool-downs. `id` is a key's name, its fingerprint
    /// (`…a1b2`, `...a1b2` or `a1b2`), or a project name. A matched key's project is reset too
    /// (billing, per-model cool-downs and tier blocks). Returns how many keys matched.
    pub fn reset(&self, id: &str) -> usize {
        let inner = &*self.inner;
        let mut matched = 0;
        let mut projects = vec![false; inner.projects.len()];
        for entry in inner.keys.iter() {
            let hit = entry.name.as_deref() == Some(id)
                || entry.key.fingerprint().matches(id)
                || &*inner.projects[entry.project].name == id;
            if hit {
                entry.health.reset();
                projects[entry.project] = true;
                matched += 1;
            }
        }
        let models = inner.models.all();
        for (p, _) in projects.iter().enumerate().filter(|(_, hit)| **hit) {
            inner.projects[p].health.disabled.clear();
            for slots in &models {
                slots.projects[p].reset();
            }
        }
        if inner.store.is_shared() && matched > 0 {
            let keys: Vec<Scope> = (0..inner.keys.len())
                .filter(|&i| {
                    let entry = &inner.keys[i];
                    entry.name.as_deref() == Some(id)
                        || entry.key.fingerprint().matches(id)
                        || &*inner.projects[entry.project].name == id
                })
                .map(|i| inner.scope(i, &inner.models.unknown()))
                .collect();
            self.reset_shared(&keys, &projects);
        }
        if matched > 0 {
            tracing::info!(matched, "key pool reset");
        }
        matched
    }

    /// Re-enable every key and clear every cool-down.
    pub fn reset_all(&self) {
        let inner = &*self.inner;
        for entry in inner.keys.iter() {
            entry.health.reset();
        }
        for project in inner.projects.iter() {
            project.health.disabled.clear();
        }
        for slots in inner.models.all() {
            for slot in slots.projects.iter() {
                slot.reset();
            }
        }
        if inner.store.is_shared() {
            let unknown = inner.models.unknown();
            let keys: Vec<Scope> = (0..inner.keys.len())
                .map(|i| inner.scope(i, &unknown))
                .collect();
            self.reset_shared(&keys, &vec![true; inner.projects.len()]);
        }
    }

    /// Clear what the shared store holds of these keys and projects (every model known).
    fn reset_shared(&self, keys: &[Scope], projects: &[bool]) {
        let inner = &*self.inner;
        let names: Vec<Arc<str>> = projects
            .iter()
            .enumerate()
            .filter(|(_, hit)| **hit)
            .map(|(p, _)| inner.projects[p].name.clone())
            .collect();
        let models: Vec<Arc<str>> = inner
            .models
            .all()
            .iter()
            .filter(|m| !m.is_unknown())
            .map(|m| m.name.clone())
            .collect();
        inner.store.reset(keys, &names, &models);
    }

    /// A serialisable view of every key: state, cool-downs per model, counters.
    pub fn snapshot(&self) -> PoolSnapshot {
        snapshot::take(&self.inner)
    }
}

impl PoolInner {
    fn report(
        &self,
        index: usize,
        slots: &ModelSlots,
        selected_at: u64,
        outcome: &Classification,
        latency: Duration,
    ) {
        let entry = &self.keys[index];
        let health = &entry.health;
        let now = self.clock.now_millis();
        let class = outcome.class();
        self.calls.record(
            now,
            entry.key.fingerprint(),
            entry.project,
            (!slots.is_unknown()).then_some(&slots.name),
            outcome,
            latency,
        );
        // One counter per class; totals and successes are read from them.
        let streak = health.answered(class, now, latency);
        if matches!(class, Class::Success | Class::Caller) {
            // The hot path: no effect to compute beyond this.
            return;
        }
        let effect = Effect::of(outcome, now, streak);
        // Quota answers name the model; prefer the request's, fall back on the answer's.
        let learned;
        let slots = match outcome.model() {
            Some(model) if slots.is_unknown() => {
                learned = self.models.get(model);
                &*learned
            }
            _ => slots,
        };
        if class.is_quota() {
            // Google refused it: it is not among the requests Google counts.
            slots.projects[entry.project].sent.forget(selected_at);
        }
        self.apply(index, slots, &effect, outcome);
        if self.store.is_shared() {
            let scope = self.scope(index, slots);
            self.store.apply(&scope, &effect);
        }
    }

    /// What a store calls key `index` with `slots`' model.
    pub(crate) fn scope(&self, index: usize, slots: &ModelSlots) -> Scope {
        let entry = &self.keys[index];
        Scope {
            key: entry.key.fingerprint().tail().into(),
            project: self.projects[entry.project].name.clone(),
            model: (!slots.is_unknown()).then(|| slots.name.clone()),
        }
    }

    /// Where an answer about key `index` and `slots`' model lands in the working copy.
    fn target<'a>(&'a self, index: usize, slots: &'a ModelSlots) -> Target<'a> {
        let entry = &self.keys[index];
        let project = &self.projects[entry.project];
        Target {
            key: &entry.health,
            project: &project.health,
            slot: &slots.projects[entry.project],
            fingerprint: entry.key.fingerprint(),
            project_name: &project.name,
            model: &slots.name,
        }
    }

    /// Apply an answer's [`Effect`] to the working copy (through the effects table's applier),
    /// and what it teaches: the model's entry kept, the limit learned.
    fn apply(&self, index: usize, slots: &ModelSlots, effect: &Effect, outcome: &Classification) {
        let now = self.clock.now_millis();
        effect.apply(&self.target(index, slots), outcome, now);
        if matches!(
            effect.class,
            Class::QuotaDaily | Class::QuotaMinute | Class::ModelNotOnTier
        ) {
            // Google said something about this model: keep its entry whatever callers send
            // (up to a bound: the names come from callers).
            self.models.pin_learned(slots);
        }
        if let Some((dimension, value)) = effect.learn {
            let project = self.keys[index].project;
            self.learn(slots, project, dimension, value, outcome.retry_after());
        }
    }

    /// Mirror what a shared store refused into the working copy, so that selection skips it
    /// until then, as if this process had seen it itself.
    pub(crate) fn mirror(&self, index: usize, slots: &ModelSlots, refusal: &SharedRefusal) {
        refusal.mirror(&self.target(index, slots));
    }
}

impl PoolInner {
    /// Lower the ledger's limit to the `quotaValue` Google reported (never to 0: that is
    /// `ModelNotOnTier`, which disables the model for the project instead).
    fn learn(
        &self,
        slots: &ModelSlots,
        project: usize,
        dimension: Dimension,
        value: u64,
        retry_after: Option<Duration>,
    ) {
        let slot = &slots.projects[project];
        let now = self.clock.now_millis();
        let sent = slot.sent.last_minute(now);
        let history = History {
            now,
            sent: &sent,
            retry_after,
        };
        if slot.quota.learn(dimension, value, history) {
            self.has_limits.store(true, Ordering::Release);
            tracing::info!(
                gemini.project = %self.projects[project].name,
                gemini.model = &*slots.name,
                "learned from Google: the {dimension} limit is {value}"
            );
        }
    }
}

impl fmt::Debug for KeyPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPool")
            .field(
                "keys",
                &self
                    .inner
                    .keys
                    .iter()
                    .map(|k| k.key.fingerprint())
                    .collect::<Vec<_>>(),
            )
            .field("strategy", &self.inner.strategy)
            .finish()
    }
}

/// What the key rotation layer records about the chosen key, in the request extensions.
#[derive(Clone, Debug)]
pub struct SelectedKey {
    fingerprint: Fingerprint,
    name: Option<Arc<str>>,
    project: Arc<str>,
    model: Option<Arc<str>>,
    index: usize,
}

impl SelectedKey {
    /// The key's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The key's name, if configured.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The key's project.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// The model of the request, if known.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// The key's position in the pool.
    pub(crate) fn index(&self) -> usize {
        self.index
    }
}

/// A key chosen for one request. Counts as in flight until reported or dropped.
pub struct KeyLease {
    pool: Arc<PoolInner>,
    index: usize,
    slots: Arc<ModelSlots>,
    reservation: Option<Reservation>,
    /// When it was chosen (Unix ms).
    selected_at: u64,
}

impl KeyLease {
    /// The chosen key.
    pub fn key(&self) -> &ApiKey {
        &self.pool.keys[self.index].key
    }

    /// What was chosen: fingerprint, name, project, model.
    pub fn selected(&self) -> SelectedKey {
        let entry = &self.pool.keys[self.index];
        SelectedKey {
            fingerprint: entry.key.fingerprint(),
            name: entry.name.clone(),
            project: self.pool.projects[entry.project].name.clone(),
            model: (!self.slots.is_unknown()).then(|| self.slots.name.clone()),
            index: self.index,
        }
    }

    /// The ledger slot reserved for the request, to hand to the quota layer.
    pub(crate) fn take_reservation(&mut self) -> Option<Reservation> {
        self.reservation.take()
    }

    /// Tell the pool how the request went: health, cool-downs and counters follow the class.
    pub fn report(self, outcome: &Classification, latency: Duration) {
        self.pool
            .report(self.index, &self.slots, self.selected_at, outcome, latency);
    }
}

impl Drop for KeyLease {
    fn drop(&mut self) {
        self.pool.keys[self.index].health.returned();
    }
}

impl fmt::Debug for KeyLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyLease")
            .field("key", &self.key().fingerprint())
            .field("model", &self.slots.name)
            .finish()
    }
}

#[cfg(test)]
mod tests;

/// A model's per-minute quota across the pool's projects (see [`KeyPool::rate_limits`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimits {
    /// Requests per minute.
    pub requests: Option<crate::state::RateWindow>,
    /// Input tokens per minute.
    pub tokens: Option<crate::state::RateWindow>,
}
