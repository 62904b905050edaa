//! Per-key and per-(project, model) health, all in atomics.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::limits::ModelLimits;
use super::meter::{Dimension, Meters, Refusal};
use super::presets::Limits;
use crate::classify::Class;
use crate::read_mostly::{NameMap, ReadMostly};

/// Why a key, a project or a project+model is disabled until [`KeyPool::reset`](crate::KeyPool::reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DisabledReason {
    /// The key was refused as invalid (400 `API_KEY_INVALID`, 401).
    KeyInvalid,
    /// The key was refused as forbidden (403: leaked, blocked, suspended, service disabled).
    KeyForbidden,
    /// The key's project ran out of prepaid credits.
    BillingExhausted,
    /// The model has a quota of zero on the project's tier.
    ModelNotOnTier,
    /// Taken out of service by an operator (the pool was rebuilt without it; see
    /// [`KeyPool::with_keys`](crate::KeyPool::with_keys)).
    Removed,
}

impl DisabledReason {
    fn to_u8(self) -> u8 {
        match self {
            DisabledReason::KeyInvalid => 1,
            DisabledReason::KeyForbidden => 2,
            DisabledReason::BillingExhausted => 3,
            DisabledReason::ModelNotOnTier => 4,
            DisabledReason::Removed => 5,
        }
    }

    fn from_u8(value: u8) -> Option<DisabledReason> {
        match value {
            1 => Some(DisabledReason::KeyInvalid),
            2 => Some(DisabledReason::KeyForbidden),
            3 => Some(DisabledReason::BillingExhausted),
            4 => Some(DisabledReason::ModelNotOnTier),
            5 => Some(DisabledReason::Removed),
            _ => None,
        }
    }

    /// A short stable name, e.g. `"key_invalid"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DisabledReason::KeyInvalid => "key_invalid",
            DisabledReason::KeyForbidden => "key_forbidden",
            DisabledReason::BillingExhausted => "billing_exhausted",
            DisabledReason::ModelNotOnTier => "model_not_on_tier",
            DisabledReason::Removed => "removed",
        }
    }
}

/// A disabled-reason cell: 0 means enabled. The first reason recorded stays.
#[derive(Default)]
pub(crate) struct DisabledCell(AtomicU8);

impl DisabledCell {
    pub(crate) fn get(&self) -> Option<DisabledReason> {
        DisabledReason::from_u8(self.0.load(Ordering::Acquire))
    }

    /// Disable; returns true if this call did it (it was enabled).
    pub(crate) fn disable(&self, reason: DisabledReason) -> bool {
        self.0
            .compare_exchange(0, reason.to_u8(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(crate) fn clear(&self) {
        self.0.store(0, Ordering::Release);
    }
}

/// Everything the pool knows about one key's health and use. Times are Unix milliseconds, 0 = never.
///
/// Its atomics are private to `state/`: the pool reads and changes them through these methods
/// (and answers change them through the effects table, `state::effects`).
#[derive(Default)]
pub(crate) struct KeyHealth {
    pub(crate) disabled: DisabledCell,
    /// Key-level cool-down (a bare 429 `RateLimited`).
    cool_until: AtomicU64,
    rate_limit_streak: AtomicU32,
    consecutive_failures: AtomicU32,
    in_flight: AtomicU32,
    /// Answers by class: one counter written per answer; totals and successes are sums.
    by_class: [AtomicU64; Class::ALL.len()],
    last_used: AtomicU64,
    last_success: AtomicU64,
    last_failure: AtomicU64,
    /// f64 bits of the latency EWMA in microseconds; 0 = no sample yet.
    latency_ewma_us: AtomicU64,
}

/// A key's numbers, read at once: for the status API and the state file.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct KeyNumbers {
    pub(crate) cool_until: u64,
    pub(crate) rate_limit_streak: u32,
    pub(crate) consecutive_failures: u32,
    pub(crate) in_flight: u32,
    pub(crate) by_class: [u64; Class::ALL.len()],
    pub(crate) last_used: u64,
    pub(crate) last_success: u64,
    pub(crate) last_failure: u64,
    pub(crate) latency_ewma_bits: u64,
}

/// Weight of a new latency sample in the EWMA.
const EWMA_ALPHA: f64 = 0.3;

impl KeyHealth {
    /// A lease of the key was taken at `now`.
    pub(crate) fn leased(&self, now: u64) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.last_used.store(now, Ordering::Relaxed);
    }

    /// A lease of the key was given back.
    pub(crate) fn returned(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Leases held now.
    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// When the key's own cool-down ends (Unix ms; 0 = none).
    pub(crate) fn cool_until(&self) -> u64 {
        self.cool_until.load(Ordering::Acquire)
    }

    /// Cool the key until `until` at least.
    pub(crate) fn cool(&self, until: u64) {
        self.cool_until.fetch_max(until, Ordering::AcqRel);
    }

    /// Count an answer of `class` at `now`. A success resets the failure streaks and feeds the
    /// latency average; a bare 429 returns how many came in a row before it (0 otherwise).
    pub(crate) fn answered(&self, class: Class, now: u64, latency: Duration) -> u32 {
        self.by_class[class.index()].fetch_add(1, Ordering::Relaxed);
        match class {
            Class::Success => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                self.rate_limit_streak.store(0, Ordering::Relaxed);
                self.last_success.store(now, Ordering::Relaxed);
                self.record_latency(latency);
                0
            }
            Class::RateLimited => self.rate_limit_streak.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Count a failure (of the key or the upstream) at `now`.
    pub(crate) fn failed(&self, now: u64) {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        self.last_failure.store(now, Ordering::Relaxed);
    }

    /// Every number, read at once.
    pub(crate) fn numbers(&self) -> KeyNumbers {
        KeyNumbers {
            cool_until: self.cool_until.load(Ordering::Acquire),
            rate_limit_streak: self.rate_limit_streak.load(Ordering::Relaxed),
            consecutive_failures: self.consecutive_failures.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            by_class: std::array::from_fn(|i| self.by_class[i].load(Ordering::Relaxed)),
            last_used: self.last_used.load(Ordering::Relaxed),
            last_success: self.last_success.load(Ordering::Relaxed),
            last_failure: self.last_failure.load(Ordering::Relaxed),
            latency_ewma_bits: self.latency_ewma_us.load(Ordering::Relaxed),
        }
    }

    /// Take back what a state file kept (leases in flight are not kept): later times and
    /// cool-downs win, counts add up.
    pub(crate) fn restore(&self, saved: &KeyNumbers) {
        self.cool_until
            .fetch_max(saved.cool_until, Ordering::AcqRel);
        self.rate_limit_streak
            .store(saved.rate_limit_streak, Ordering::Relaxed);
        self.consecutive_failures
            .store(saved.consecutive_failures, Ordering::Relaxed);
        for (count, saved) in self.by_class.iter().zip(saved.by_class) {
            count.fetch_add(saved, Ordering::Relaxed);
        }
        self.last_used.fetch_max(saved.last_used, Ordering::Relaxed);
        self.last_success
            .fetch_max(saved.last_success, Ordering::Relaxed);
        self.last_failure
            .fetch_max(saved.last_failure, Ordering::Relaxed);
        if self.latency_ewma_us.load(Ordering::Relaxed) == 0 {
            self.latency_ewma_us
                .store(saved.latency_ewma_bits, Ordering::Relaxed);
        }
    }

    /// Answers seen, of every class.
    pub(crate) fn total(&self) -> u64 {
        self.by_class
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    /// Answers judged a success.
    pub(crate) fn successes(&self) -> u64 {
        self.by_class[Class::Success.index()].load(Ordering::Relaxed)
    }

    pub(crate) fn latency_ewma(&self) -> Option<Duration> {
        let bits = self.latency_ewma_us.load(Ordering::Relaxed);
        (bits != 0).then(|| Duration::from_secs_f64(f64::from_bits(bits) / 1e6))
    }

    /// Fold a sample into the average. A load and a store, not a compare-and-swap loop: two
    /// answers for one key landing at the same instant may lose one sample, which an average
    /// of many does not miss, and the common case writes no contended line twice.
    fn record_latency(&self, latency: Duration) {
        let sample = (latency.as_secs_f64() * 1e6).max(1.0);
        let bits = self.latency_ewma_us.load(Ordering::Relaxed);
        let next = if bits == 0 {
            sample
        } else {
            let old = f64::from_bits(bits);
            old + EWMA_ALPHA * (sample - old)
        };
        self.latency_ewma_us
            .store(next.to_bits(), Ordering::Relaxed);
    }

    /// Clear disabled state and cool-downs (not counters).
    pub(crate) fn reset(&self) {
        self.disabled.clear();
        self.cool_until.store(0, Ordering::Release);
        self.rate_limit_streak.store(0, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }
}

/// A project's health: billing exhaustion disables it for every model.
#[derive(Default)]
pub(crate) struct ProjectHealth {
    pub(crate) disabled: DisabledCell,
}

/// One project's health and quota for one model.
#[derive(Default)]
pub(crate) struct ProjectModelHealth {
    cool_until: AtomicU64,
    /// `Class::index()` of the answer that set the cool-down.
    cool_class: AtomicU8,
    not_on_tier: AtomicBool,
    /// The quota ledger of this project and model.
    pub(crate) quota: Meters,
    /// Requests sent in the last minute, counted even without a limit: when Google's first
    /// 429 teaches the limit, the ledger starts from what Google has already counted.
    pub(crate) sent: SentLog,
    /// A shared store's ledger had no room until this time (Unix ms; 0 = none): the mirror of
    /// what another process used, so that selection skips the project until then.
    shared_until: AtomicU64,
    /// The dimension (`Dimension::index`) and limit of that refusal.
    shared_dimension: AtomicU8,
    shared_limit: AtomicU64,
}

/// Seconds kept by a [`SentLog`].
const SENT_SECONDS: usize = 60;
/// Bits of a [`SentLog`] slot holding the count; the rest hold the second.
const SENT_COUNT_BITS: u32 = 20;
const SENT_COUNT_MAX: u64 = (1 << SENT_COUNT_BITS) - 1;

/// Requests per second over the last minute, lock-free: one slot per second of the minute, each
/// an `AtomicU64` holding the second it counts and its count.
pub(crate) struct SentLog {
    slots: [AtomicU64; SENT_SECONDS],
}

impl Default for SentLog {
    fn default() -> Self {
        SentLog {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl SentLog {
    /// Count one request at `now` (Unix ms).
    pub(crate) fn record(&self, now: u64) {
        let second = now / 1000;
        let slot = &self.slots[(second % SENT_SECONDS as u64) as usize];
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
            let (at, count) = (packed >> SENT_COUNT_BITS, packed & SENT_COUNT_MAX);
            if at == second {
                (count < SENT_COUNT_MAX).then_some(packed + 1)
            } else if at < second {
                Some((second << SENT_COUNT_BITS) | 1)
            } else {
                None
            }
        });
    }

    /// Take back one request counted at `at` (Google refused it, so it counts nothing there).
    pub(crate) fn forget(&self, at: u64) {
        let second = at / 1000;
        let slot = &self.slots[(second % SENT_SECONDS as u64) as usize];
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
            let (at, count) = (packed >> SENT_COUNT_BITS, packed & SENT_COUNT_MAX);
            (at == second && count > 0).then(|| packed - 1)
        });
    }

    /// `(end of the second, requests)` for each second of the last minute with any, oldest
    /// first. Each request is placed at the end of its second, so the ledger built from them
    /// frees a slot no earlier than Google does.
    pub(crate) fn last_minute(&self, now: u64) -> Vec<(u64, u64)> {
        let current = now / 1000;
        let mut seconds: Vec<(u64, u64)> = self
            .slots
            .iter()
            .map(|slot| {
                let packed = slot.load(Ordering::Relaxed);
                (packed >> SENT_COUNT_BITS, packed & SENT_COUNT_MAX)
            })
            .filter(|&(at, count)| count > 0 && at <= current && at + SENT_SECONDS as u64 > current)
            .map(|(at, count)| (((at + 1) * 1000 - 1).min(now), count))
            .collect();
        seconds.sort_unstable();
        seconds
    }
}

impl ProjectModelHealth {
    /// When the model's cool-down on this project ends (Unix ms; 0 = none).
    pub(crate) fn cool_until(&self) -> u64 {
        self.cool_until.load(Ordering::Acquire)
    }

    /// Is the model off this project's tier (a quota of 0)?
    pub(crate) fn is_not_on_tier(&self) -> bool {
        self.not_on_tier.load(Ordering::Acquire)
    }

    /// The model has a quota of 0 on this project: disabled for it until reset.
    pub(crate) fn disable_model(&self) {
        self.not_on_tier.store(true, Ordering::Release);
    }

    pub(crate) fn cool(&self, until: u64, class: Class) {
        let before = self.cool_until.fetch_max(until, Ordering::AcqRel);
        if until >= before {
            self.cool_class
                .store(class.index() as u8, Ordering::Release);
        }
    }

    pub(crate) fn cool_class(&self) -> Class {
        Class::ALL
            .get(usize::from(self.cool_class.load(Ordering::Acquire)))
            .copied()
            .unwrap_or(Class::QuotaMinute)
    }

    pub(crate) fn reset(&self) {
        self.cool_until.store(0, Ordering::Release);
        self.not_on_tier.store(false, Ordering::Release);
        self.shared_until.store(0, Ordering::Release);
    }

    /// Mirror a shared ledger's refusal: no room in `dimension` (limit `limit`) until `until`.
    pub(crate) fn shared_full(&self, dimension: Dimension, limit: u64, until: u64) {
        self.shared_dimension
            .store(dimension.index() as u8, Ordering::Relaxed);
        self.shared_limit.store(limit, Ordering::Relaxed);
        self.shared_until.store(until, Ordering::Release);
    }

    /// The shared ledger's last refusal, if it still holds at `now`: the refusal and when
    /// it ends.
    pub(crate) fn shared_refusal(&self, now: u64) -> Option<(Refusal, u64)> {
        let until = self.shared_until.load(Ordering::Acquire);
        if until <= now {
            return None;
        }
        let dimension = Dimension::ALL
            .get(usize::from(self.shared_dimension.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or(Dimension::RequestsPerMinute);
        let refusal = Refusal {
            dimension,
            limit: self.shared_limit.load(Ordering::Relaxed),
            retry_after: (until != u64::MAX).then(|| Duration::from_millis(until - now)),
        };
        Some((refusal, until))
    }
}

/// The per-project health of one model: a slot per project, indexed like the pool's projects.
pub(crate) struct ModelSlots {
    /// The model name; empty for "model unknown".
    pub(crate) name: Arc<str>,
    pub(crate) projects: Box<[ProjectModelHealth]>,
    /// Kept for good: configured (or preset) limits, or something learned from Google (a
    /// cool-down, a limit, a tier block). An entry that is not pinned may be evicted when made-up
    /// model names fill the table.
    pinned: AtomicBool,
    /// Requests waiting for a key that can take this model (see `pool::queue`).
    pub(crate) waiting: AtomicU32,
    /// The waiting line: tokio's mutex is fair, so waiters are served in arrival order.
    pub(crate) queue: tokio::sync::Mutex<()>,
}

impl ModelSlots {
    fn new(
        name: Arc<str>,
        projects: usize,
        limits: impl Fn(usize) -> ModelLimits,
        pinned: bool,
        pacing: super::meter::Pacing,
    ) -> ModelSlots {
        ModelSlots {
            name,
            projects: (0..projects)
                .map(|p| {
                    let quota = Meters::new(limits(p));
                    quota.set_pacing(pacing);
                    ProjectModelHealth {
                        quota,
                        ..ProjectModelHealth::default()
                    }
                })
                .collect(),
            pinned: AtomicBool::new(pinned),
            waiting: AtomicU32::new(0),
            queue: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn is_unknown(&self) -> bool {
        self.name.is_empty()
    }

    /// Keep this model's entry for good; true if it was not kept before.
    fn pin(&self) -> bool {
        !self.pinned.load(Ordering::Relaxed) && !self.pinned.swap(true, Ordering::AcqRel)
    }

    fn is_pinned(&self) -> bool {
        self.pinned.load(Ordering::Acquire)
    }
}

/// Most model names without configuration the pool tracks at once. Past this, a new name takes
/// the place of one that is idle and holds nothing learned; if none is, it shares the "unknown"
/// entry. Configured and preset models, and models Google has told us about, always keep their
/// own entry, so a flood of made-up names never changes how they are treated.
pub(crate) const MAX_MODELS: usize = 256;

/// Longest model name given its own entry.
const MAX_MODEL_NAME: usize = 128;

/// Model name → per-project health: looked up on every call without a lock, written (a copy
/// published) only the first time a model is seen. Bounded by [`MAX_MODELS`].
type ModelMap = NameMap<ModelSlots>;

pub(crate) struct ModelTable {
    /// Project names, by index, for looking up configured limits.
    projects: Box<[Arc<str>]>,
    /// Swapped by a live reload ([`set_limits`](Self::set_limits)).
    limits: arc_swap::ArcSwap<Limits>,
    /// Made on first use: most pools never see a request without a model (a row of
    /// [`ProjectModelHealth`] per project, ~800 bytes each, saved).
    unknown: std::sync::OnceLock<Arc<ModelSlots>>,
    models: ReadMostly<ModelSlots>,
    /// Entries kept for good because of what an answer said (not configuration): at most
    /// [`MAX_MODELS`], so names Google's answers bring cannot grow the table either.
    learned: std::sync::atomic::AtomicUsize,
}

impl ModelTable {
    pub(crate) fn new(projects: Box<[Arc<str>]>, limits: Limits) -> ModelTable {
        ModelTable {
            unknown: std::sync::OnceLock::new(),
            projects,
            limits: arc_swap::ArcSwap::from_pointee(limits),
            models: ReadMostly::default(),
            learned: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Keep `slots` for good because Google said something about its model (a cool-down, a
    /// limit, a tier block) — while fewer than [`MAX_MODELS`] were kept so; past that, what was
    /// learned still applies, but the entry may be evicted like any unconfigured one.
    pub(crate) fn pin_learned(&self, slots: &ModelSlots) {
        if slots.is_pinned() || slots.is_unknown() {
            return;
        }
        let taken = self
            .learned
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_MODELS).then_some(n + 1)
            });
        if taken.is_ok() && !slots.pin() {
            // Pinned meanwhile by another answer: give the place back.
            self.learned.fetch_sub(1, Ordering::AcqRel);
        }
    }

    pub(crate) fn limits(&self) -> Arc<Limits> {
        self.limits.load_full()
    }

    /// Configured limits and pacing changed (a live reload): every tracked model's meters take
    /// theirs from `limits` (what Google reported still narrowing them; windows kept), and
    /// models first seen from now on too. A model newly configured keeps its entry for good.
    pub(crate) fn set_limits(&self, limits: Limits) {
        let limits = Arc::new(limits);
        // Under the table's writer lock: a model first seen meanwhile is made (in `get`) either
        // before, and is walked here, or after, with the new limits.
        self.models.update(|models| {
            self.limits.store(limits.clone());
            self.reconfigure(models.values(), &limits);
        });
        if let Some(unknown) = self.unknown.get() {
            for slot in unknown.projects.iter() {
                slot.quota.set_pacing(limits.pacing);
            }
        }
    }

    fn reconfigure<'a>(&self, models: impl Iterator<Item = &'a Arc<ModelSlots>>, limits: &Limits) {
        for slots in models {
            let configured = self
                .projects
                .iter()
                .any(|p| limits.for_model(p, &slots.name).is_some());
            if configured {
                slots.pin();
            }
            for (p, slot) in slots.projects.iter().enumerate() {
                let project_limits = limits
                    .for_model(&self.projects[p], &slots.name)
                    .unwrap_or_default();
                slot.quota.reconfigure(project_limits);
                slot.quota.set_pacing(limits.pacing);
            }
        }
    }

    pub(crate) fn unknown(&self) -> Arc<ModelSlots> {
        self.unknown
            .get_or_init(|| {
                Arc::new(ModelSlots::new(
                    Arc::from(""),
                    self.projects.len(),
                    |_| ModelLimits::default(),
                    true,
                    self.limits.load().pacing,
                ))
            })
            .clone()
    }

    /// The slots for `model` if it is tracked already (nothing is created).
    pub(crate) fn find(&self, model: &str) -> Option<Arc<ModelSlots>> {
        self.models.get(normalize_model(model))
    }

    /// The slots for `model` (normalised: a leading `models/` is dropped), created on first use.
    pub(crate) fn get(&self, model: &str) -> Arc<ModelSlots> {
        let model = normalize_model(model);
        // No model name is this long; a caller's junk is not worth an entry.
        if model.is_empty() || model.len() > MAX_MODEL_NAME {
            return self.unknown();
        }
        if let Some(slots) = self.models.get(model) {
            return slots;
        }
        self.models.update(|models| {
            if let Some(slots) = models.get(model) {
                return slots.clone();
            }
            // Read under the writer lock, as a reload sets them (see `set_limits`).
            let limits = self.limits.load();
            let configured = self
                .projects
                .iter()
                .any(|p| limits.for_model(p, model).is_some());
            if !configured && !make_room(models) {
                tracing::warn!(
                    gemini.model = model,
                    "more than {MAX_MODELS} model names without configuration in use at once; tracking this one as unknown"
                );
                return self.unknown();
            }
            let name: Arc<str> = Arc::from(model);
            let slots = Arc::new(ModelSlots::new(
                name.clone(),
                self.projects.len(),
                |p| {
                    limits
                        .for_model(&self.projects[p], model)
                        .unwrap_or_default()
                },
                configured,
                limits.pacing,
            ));
            models.to_mut().insert(name, slots.clone());
            slots
        })
    }

    /// Every tracked model, the unknown slot first (if it was ever used).
    pub(crate) fn all(&self) -> Vec<Arc<ModelSlots>> {
        let mut all: Vec<_> = self
            .unknown
            .get()
            .cloned()
            .into_iter()
            .chain(self.models.values())
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

/// Make room for one more entry that is not pinned: true if there is (or now is) room.
fn make_room(models: &mut Cow<'_, ModelMap>) -> bool {
    let unpinned = models.values().filter(|s| !s.is_pinned()).count();
    if unpinned < MAX_MODELS {
        return true;
    }
    // Idle (no lease holds it) and nothing learned: forgetting it loses nothing.
    crate::read_mostly::evict_idle(models, |s| !s.is_pinned())
}

/// `models/gemini-2.0-flash` → `gemini-2.0-flash`.
pub(crate) fn normalize_model(model: &str) -> &str {
    let model = model.trim();
    model.strip_prefix("models/").unwrap_or(model)
}
