//! Key selection strategies: [`RoundRobin`] (default), [`WeightedRandom`], [`LeastInFlight`],
//! [`LowestLatency`], or your own [`Strategy`].
//!
//! The pool hands a strategy the [`Candidates`] for one request; every strategy must pick an
//! available key (`is_available`): not disabled, not cooling down for the request's model.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{KeyEntry, ProjectEntry};
use crate::random::UnitRng;
use crate::state::Demand;
use crate::state::Refusal;
use crate::state::{DisabledReason, ModelSlots};

/// Picks one key among the candidates for a request.
///
/// ```
/// use tower_gemini::pool::{Candidates, KeyPool, Strategy};
///
/// /// Always the available key with the highest priority.
/// #[derive(Debug)]
/// struct Highest;
///
/// impl Strategy for Highest {
///     fn choose(&self, keys: &Candidates<'_>) -> Option<usize> {
///         keys.available().max_by_key(|&i| keys.stats(i).priority)
///     }
/// }
///
/// let pool = KeyPool::builder().key("test-key-0001").strategy(Highest).build().unwrap();
/// assert!(pool.select(Some("gemini-2.0-flash")).is_ok());
/// ```
pub trait Strategy: Send + Sync + fmt::Debug + 'static {
    /// The index of the chosen key, or `None` if no candidate is available.
    fn choose(&self, keys: &Candidates<'_>) -> Option<usize>;

    /// Where a rotating strategy stands, to be kept across a restart
    /// ([`KeyPool::save`](crate::KeyPool::save)); `None` for one without a position.
    fn cursor(&self) -> Option<usize> {
        None
    }

    /// Stand at `cursor` (from a saved state).
    fn set_cursor(&self, cursor: usize) {
        let _ = cursor;
    }
}

/// The `cursor`/`set_cursor` of a strategy rotating with an `AtomicUsize`.
macro_rules! rotating {
    () => {
        fn cursor(&self) -> Option<usize> {
            Some(self.cursor.load(Ordering::Relaxed))
        }

        fn set_cursor(&self, cursor: usize) {
            self.cursor.store(cursor, Ordering::Relaxed);
        }
    };
}

/// The keys a strategy chooses among, for one request's model, at one instant.
pub struct Candidates<'a> {
    pub(super) keys: &'a [KeyEntry],
    pub(super) projects: &'a [ProjectEntry],
    pub(super) slots: &'a ModelSlots,
    pub(super) now: u64,
    pub(super) demand: Demand,
    /// The only project this request may use (its [`Owner`](crate::context::Owner)), if pinned.
    pub(super) pin: Option<usize>,
    /// The request waits for its turn at the paced rate (see [`Pacing`](crate::state::Pacing)).
    pub(super) paced: bool,
    /// The last key [`is_available`](Self::is_available) answered for, and its answer: the
    /// pool checks the strategy's choice again, and a strategy has usually just checked it
    /// (with quota limits, a check takes the project's ledger lock).
    pub(super) last_checked: Cell<Option<(usize, bool)>>,
}

/// A key's numbers, as a strategy sees them.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct KeyStats {
    /// Configured priority (higher is preferred).
    pub priority: u32,
    /// Failures since the last success (caller errors excluded).
    pub consecutive_failures: u32,
    /// Requests sent with this key whose answer has not arrived.
    pub in_flight: u32,
    /// EWMA of successful latencies, if any success was seen.
    pub latency: Option<Duration>,
    /// When the key was last selected (Unix ms), if ever.
    pub last_used_millis: Option<u64>,
}

impl Candidates<'_> {
    /// Number of keys in the pool (available or not).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True if the pool has no keys (never, for a built pool).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Can key `index` serve this request now?
    pub fn is_available(&self, index: usize) -> bool {
        if let Some((checked, available)) = self.last_checked.get()
            && checked == index
        {
            return available;
        }
        // An index past the keys (a custom strategy's mistake) is not available.
        let available = index < self.keys.len() && self.blocker(index).is_none();
        self.last_checked.set(Some((index, available)));
        available
    }

    /// Indices of the available keys, in pool order.
    pub fn available(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.keys.len()).filter(|&i| self.is_available(i))
    }

    /// The numbers of key `index`.
    ///
    /// # Panics
    /// If `index >= len()`.
    pub fn stats(&self, index: usize) -> KeyStats {
        let entry = &self.keys[index];
        let health = &entry.health;
        let numbers = health.numbers();
        let last_used = numbers.last_used;
        KeyStats {
            priority: entry.priority,
            consecutive_failures: numbers.consecutive_failures,
            in_flight: numbers.in_flight,
            latency: health.latency_ewma(),
            last_used_millis: (last_used != 0).then_some(last_used),
        }
    }

    /// The time of this selection, Unix milliseconds.
    pub fn now_millis(&self) -> u64 {
        self.now
    }

    /// The fraction of quota left, for this request, in the tightest dimension of key
    /// `index`'s project and this model (1.0 when it has no limit).
    ///
    /// # Panics
    /// If `index >= len()`.
    pub fn headroom(&self, index: usize) -> f64 {
        let project = self.keys[index].project;
        self.slots.projects[project]
            .quota
            .headroom(self.demand, self.now)
    }

    /// What this request asks of the quota.
    pub fn demand(&self) -> Demand {
        self.demand
    }

    /// Why key `index` cannot serve this request now; `None` if it can (or if there is no such
    /// key: see [`is_available`](Self::is_available)).
    pub(crate) fn blocker(&self, index: usize) -> Option<Blocker> {
        let entry = self.keys.get(index)?;
        if self.pin.is_some_and(|project| project != entry.project) {
            return Some(Blocker::Elsewhere);
        }
        if let Some(reason) = entry.health.disabled.get() {
            return Some(Blocker::Disabled(reason));
        }
        if let Some(reason) = self.projects[entry.project].health.disabled.get() {
            return Some(Blocker::Disabled(reason));
        }
        let slot = &self.slots.projects[entry.project];
        if slot.is_not_on_tier() {
            return Some(Blocker::Disabled(DisabledReason::ModelNotOnTier));
        }
        let cooled = entry.health.cool_until().max(slot.cool_until());
        if cooled > self.now {
            return Some(Blocker::Cooling(cooled));
        }
        if let Some((refusal, until)) = slot.shared_refusal(self.now) {
            return Some(Blocker::Quota(
                refusal,
                (until != u64::MAX).then_some(until),
            ));
        }
        slot.quota
            .check(self.demand, self.now, self.paced)
            .err()
            .map(|refusal| {
                let at = refusal
                    .retry_after
                    .map(|wait| crate::clock::add(self.now, wait.max(Duration::from_millis(1))));
                Blocker::Quota(refusal, at)
            })
    }

    /// Scan every key once starting at `start`, returning the available key minimising `cost`
    /// (first found wins ties, so a rotating start spreads ties).
    fn min_from<C: PartialOrd>(&self, start: usize, cost: impl Fn(usize) -> C) -> Option<usize> {
        let n = self.keys.len();
        let mut best: Option<(usize, C)> = None;
        for offset in 0..n {
            let i = (start + offset) % n;
            if !self.is_available(i) {
                continue;
            }
            let c = cost(i);
            if best.as_ref().is_none_or(|(_, b)| c < *b) {
                best = Some((i, c));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// Why a key cannot serve a request now.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Blocker {
    /// Disabled (key, project, or the model for the project) until reset.
    Disabled(DisabledReason),
    /// Cooling down after Google refused it, until this time (Unix ms).
    Cooling(u64),
    /// The project's local ledger has no room; a slot frees then (never, if the request is
    /// larger than the limit).
    Quota(Refusal, Option<u64>),
    /// Of another project than the one the request is pinned to.
    Elsewhere,
}

/// Each key in turn, skipping keys that cannot serve the model. The default.
#[derive(Debug, Default)]
pub struct RoundRobin {
    cursor: AtomicUsize,
}

impl RoundRobin {
    /// Start at the first key.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Strategy for RoundRobin {
    rotating!();

    fn choose(&self, keys: &Candidates<'_>) -> Option<usize> {
        let n = keys.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let skipped = (0..n).find(|&off| keys.is_available((start + off) % n))?;
        if skipped > 0 {
            // Move the cursor past the skipped keys, so the key after a gap is not picked twice.
            self.cursor.fetch_add(skipped, Ordering::Relaxed);
        }
        Some((start + skipped) % n)
    }
}

/// Random choice weighted by health and freshness:
/// `priority − 10 × consecutive failures + min(hours since last use, 24) + 50 if never used`,
/// floored at 0. When every available key weighs 0, the choice is uniform among them.
#[derive(Debug)]
pub struct WeightedRandom {
    rng: UnitRng,
}

impl WeightedRandom {
    /// Draws from the thread-local generator.
    pub fn new() -> Self {
        WeightedRandom {
            rng: UnitRng::thread(),
        }
    }

    /// Deterministic draws: the n-th selection uses a generator seeded with `seed + n`.
    pub fn with_seed(seed: u64) -> Self {
        WeightedRandom {
            rng: UnitRng::seeded(seed),
        }
    }

    /// The weight of a key with these stats at `now_millis`.
    pub fn weight(stats: &KeyStats, now_millis: u64) -> f64 {
        let mut weight = f64::from(stats.priority) - 10.0 * f64::from(stats.consecutive_failures);
        match stats.last_used_millis {
            Some(last) => {
                let hours = now_millis.saturating_sub(last) as f64 / 3_600_000.0;
                weight += hours.min(24.0);
            }
            None => weight += 50.0,
        }
        weight.max(0.0)
    }
}

impl Default for WeightedRandom {
    fn default() -> Self {
        Self::new()
    }
}

impl Strategy for WeightedRandom {
    fn choose(&self, keys: &Candidates<'_>) -> Option<usize> {
        let now = keys.now_millis();
        let mut total = 0.0;
        let mut count = 0usize;
        for i in keys.available() {
            total += Self::weight(&keys.stats(i), now);
            count += 1;
        }
        if count == 0 {
            return None;
        }
        let draw = self.rng.next_f64();
        if total <= 0.0 {
            let pick = ((draw * count as f64) as usize).min(count - 1);
            return keys.available().nth(pick);
        }
        let mut target = draw * total;
        let mut last = None;
        for i in keys.available() {
            let w = Self::weight(&keys.stats(i), now);
            if w <= 0.0 {
                continue;
            }
            last = Some(i);
            if target < w {
                return Some(i);
            }
            target -= w;
        }
        last
    }
}

/// The available key with the fewest requests in flight; ties rotate.
#[derive(Debug, Default)]
pub struct LeastInFlight {
    cursor: AtomicUsize,
}

impl LeastInFlight {
    /// A new strategy.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Strategy for LeastInFlight {
    rotating!();

    fn choose(&self, keys: &Candidates<'_>) -> Option<usize> {
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        keys.min_from(start, |i| keys.keys[i].health.in_flight())
    }
}

/// The available key with the lowest EWMA of successful latencies. Keys without a sample come
/// first, so each key gets measured; ties rotate.
#[derive(Debug, Default)]
pub struct LowestLatency {
    cursor: AtomicUsize,
}

impl LowestLatency {
    /// A new strategy.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Strategy for LowestLatency {
    rotating!();

    fn choose(&self, keys: &Candidates<'_>) -> Option<usize> {
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        keys.min_from(start, |i| {
            keys.keys[i].health.latency_ewma().unwrap_or(Duration::ZERO)
        })
    }
}

/// The available key whose project has the most quota left for this model and request (the
/// tightest of its limited dimensions, as a fraction of the limit); ties rotate. Spreads load
/// so that no project reaches its limit while another has room.
#[derive(Debug, Default)]
pub struct MostHeadroom {
    cursor: AtomicUsize,
}

impl MostHeadroom {
    /// A new strategy.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Strategy for MostHeadroom {
    rotating!();

    fn choose(&self, keys: &Candidates<'_>) -> Option<usize> {
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        // Most headroom = least "fullness".
        keys.min_from(start, |i| 1.0 - keys.headroom(i))
    }
}
