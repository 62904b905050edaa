//! The quota ledger's meters: exact sliding 60-second logs and a Pacific-day counter, checked
//! all-or-nothing across dimensions under one small lock per (project, model).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::limits::ModelLimits;
use crate::clock::next_pacific_midnight;

/// Length of the per-minute windows.
pub(crate) const MINUTE_MS: u64 = 60_000;

/// How much longer than a minute an admission holds its slot of a per-minute limit: a request
/// reaches Google some milliseconds after it is admitted, and a slot freed the instant the
/// request a minute older left our window could let a fresh request land in Google's window
/// while that older one (delayed on its way) is still counted there. The Redis store keeps
/// entries the same margin longer ([`RedisOptions::margin`](crate::state::RedisOptions)).
pub(crate) const SKEW_MARGIN_MS: u64 = 500;

/// How long an admission stays in an outbound per-minute window.
#[cfg(test)]
const HOLD_MS: u64 = MINUTE_MS + SKEW_MARGIN_MS;

pub use crate::dimension::Dimension;

/// What one request asks of the quota: one request, its estimated input tokens, its images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    /// Estimated input tokens.
    pub tokens: u64,
    /// Images (`inlineData` parts).
    pub images: u64,
}

/// Why a request was refused, and when it could pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The dimension without room.
    pub(crate) dimension: Dimension,
    /// Its limit.
    pub(crate) limit: u64,
    /// When a request of the same size would fit; `None` if it never can (larger than the limit).
    pub(crate) retry_after: Option<Duration>,
}

/// How requests that are willing to wait are admitted within a minute's quota (requests and
/// tokens per minute), per project and model.
///
/// A per-minute limit alone admits the minute's whole quota at once: under overload it goes in
/// the first second, and the next request waits for the window to move — up to a minute, past
/// many clients' timeouts. Spread, the quota is admitted as a GCRA (generic cell rate
/// algorithm) spaces it: requests at most `60 s / RPM` apart and tokens at the TPM rate, with a
/// share of the minute's quota allowed at once (`burst`), so waits are short and even.
///
/// Spacing only ever delays a request that was going to wait anyway (a stack with
/// [`wait_up_to`](crate::KeyRotationLayer::wait_up_to)): a request that would fail rather than
/// wait, or that could not wait until its spaced turn, is admitted by the minute's window as
/// without pacing. Spacing never refuses a request the quota has room for.
///
/// ```
/// use tower_gemini::{KeyPool, state::Pacing};
///
/// let pool = KeyPool::builder()
///     .key("test-key-0001")
///     .pacing(Pacing::Spread { burst: 0.1 })
///     .build()
///     .unwrap();
/// # let _ = pool;
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Pacing {
    /// The minute's quota spread evenly, with `burst` (0.0 to 1.0) of it allowed at once.
    Spread {
        /// The share of a minute's quota that may go at once after a quiet spell.
        burst: f64,
    },
    /// The minute's window alone: its whole quota may go at once.
    Off,
}

/// [`Pacing::DEFAULT`]'s burst.
pub(crate) const DEFAULT_BURST: f64 = 0.05;

impl Pacing {
    /// The default: spread, 5 % of a minute's quota allowed at once. Measured in
    /// `benches/goodput.rs` (README, Goodput): on the peers' scenario the p99 wait is 8 s with
    /// 5 %, 10 s with 10 %, and 60.5 s by the window alone, for the same answers delivered.
    pub const DEFAULT: Pacing = Pacing::Spread {
        burst: DEFAULT_BURST,
    };

    /// The share of the minute that may go at once (`None`: no pacing).
    fn burst(self) -> Option<f64> {
        match self {
            // (A burst that is not a number is none; an infinite one the whole minute.)
            Pacing::Spread { burst } if burst.is_nan() => Some(0.0),
            Pacing::Spread { burst } => Some(burst.clamp(0.0, 1.0)),
            Pacing::Off => None,
        }
    }
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing::DEFAULT
    }
}

/// A GCRA's theoretical arrival time, in microseconds: when the next request (or token) is
/// due if the rate were kept exactly.
#[derive(Debug, Default, Clone, Copy)]
struct Due {
    requests_us: u64,
    tokens_us: u64,
}

/// A log of (time, amount) entries within the last minute, with their running sum.
#[derive(Debug, Default)]
struct Log {
    entries: VecDeque<(u64, u64)>,
    sum: u64,
    /// Sequence number of the front entry; entry `seq` is at `seq - front_seq`.
    front_seq: u64,
}

impl Log {
    /// Drop the entries admitted `hold` ms or longer ago.
    fn expire(&mut self, now: u64, hold: u64) {
        while let Some(&(at, amount)) = self.entries.front() {
            if at + hold > now {
                break;
            }
            self.entries.pop_front();
            self.sum -= amount;
            self.front_seq += 1;
        }
    }

    /// `Ok` if `amount` fits under `limit` now, else the time (ms) it will fit, `None` if never
    /// (entries leave `hold` ms after they were admitted).
    fn room(&self, amount: u64, limit: u64, hold: u64) -> Result<(), Option<u64>> {
        if self.sum.saturating_add(amount) <= limit {
            return Ok(());
        }
        if amount > limit {
            return Err(None);
        }
        let mut freed = 0;
        for &(at, n) in &self.entries {
            freed += n;
            if (self.sum - freed).saturating_add(amount) <= limit {
                return Err(Some(at + hold));
            }
        }
        Err(None)
    }

    fn push(&mut self, now: u64, amount: u64) -> u64 {
        self.entries.push_back((now, amount));
        self.sum = self.sum.saturating_add(amount);
        self.front_seq + self.entries.len() as u64 - 1
    }

    /// Set entry `seq`'s amount (if it is still in the window); the amount it had.
    fn correct(&mut self, seq: u64, amount: u64) -> Option<u64> {
        if seq == NO_ENTRY || seq < self.front_seq {
            return None;
        }
        let entry = self.entries.get_mut((seq - self.front_seq) as usize)?;
        let was = entry.1;
        self.sum = (self.sum - was).saturating_add(amount);
        entry.1 = amount;
        Some(was)
    }
}

/// The sequence number of an entry never pushed.
const NO_ENTRY: u64 = u64::MAX;

#[derive(Debug, Default)]
struct State {
    limits: ModelLimits,
    /// The dimensions whose limit came from Google (a 429's `quotaValue`), not configuration.
    learned: ModelLimits,
    requests: Log,
    tokens: Log,
    images: Log,
    day_end: u64,
    day_count: u64,
    /// Counted where it is enforced (an inbound client's limit): no skew margin.
    exact: bool,
    /// The share of a minute's quota a paced admission allows at once (`None`: not paced).
    burst: Option<f64>,
    /// When the next request and token are due at the paced rate.
    due: Due,
}

impl State {
    /// How long an admission holds its slot of a per-minute limit.
    fn hold(&self) -> u64 {
        if self.exact {
            MINUTE_MS
        } else {
            MINUTE_MS + SKEW_MARGIN_MS
        }
    }

    /// Start an empty ledger from what Google has counted (see [`Meters::learn`]).
    fn backfill(&mut self, dimension: Dimension, value: u64, history: History<'_>) {
        let now = history.now;
        self.expire(now);
        // Google said when its oldest counted request leaves the window: that places the
        // oldest second's requests exactly (the others sit at the end of their second, so they
        // free no earlier than Google frees them).
        let oldest = history
            .retry_after
            .and_then(|d| u64::try_from(d.as_millis()).ok())
            .filter(|&d| d <= MINUTE_MS)
            .map(|d| (now + d).saturating_sub(MINUTE_MS));
        for (i, &(at, requests)) in history.sent.iter().enumerate() {
            let at = match oldest {
                Some(oldest) if i == 0 && oldest <= at && oldest + 1000 > at => oldest,
                _ => at,
            };
            if at <= now && at + MINUTE_MS > now {
                self.requests.push(at, requests);
            }
        }
        match dimension {
            Dimension::TokensPerMinute => {
                // The oldest counted tokens leave Google's window when it said; spread the
                // limit from then back to a minute before, so slots free gradually.
                let wait = history
                    .retry_after
                    .map_or(MINUTE_MS, |d| {
                        u64::try_from(d.as_millis()).unwrap_or(MINUTE_MS)
                    })
                    .min(MINUTE_MS);
                let first = now.saturating_sub(MINUTE_MS - wait);
                const PARTS: u64 = 6;
                for i in 0..PARTS {
                    let at = first + (now - first) * i / (PARTS - 1);
                    let share = value / PARTS + u64::from(i == PARTS - 1) * (value % PARTS);
                    self.tokens.push(at, share);
                }
            }
            Dimension::RequestsPerDay => self.day_count = self.day_count.max(value),
            _ => {}
        }
    }

    fn expire(&mut self, now: u64) {
        let hold = self.hold();
        self.requests.expire(now, hold);
        self.tokens.expire(now, hold);
        self.images.expire(now, hold);
        if now >= self.day_end {
            self.day_end = next_pacific_midnight(now);
            self.day_count = 0;
        }
    }

    /// The microseconds one request and `tokens` tokens take at the paced rate (`None` for a
    /// dimension without a limit).
    fn intervals_us(&self, tokens: u64) -> (Option<u64>, Option<u64>) {
        // The minute as the ledger holds it (with the skew margin): a rate of a minute's quota
        // per 60 s would put one more request in a held window than it may have, and the
        // window would make that request wait for a slot to leave.
        let minute_us = u128::from(self.hold()) * 1000;
        let requests = self
            .limits
            .rpm
            .filter(|&rpm| rpm > 0)
            .map(|rpm| (minute_us / u128::from(rpm)) as u64);
        let tokens =
            self.limits.tpm.filter(|&tpm| tpm > 0).map(|tpm| {
                (u128::from(tokens) * minute_us / u128::from(tpm)).min(minute_us) as u64
            });
        (requests, tokens)
    }

    /// Paced admission: refused while the next request or token is due later than the burst
    /// allows (a GCRA), with when it will be allowed.
    fn check_pace(&self, now: u64) -> Result<(), Refusal> {
        let Some(burst) = self.burst else {
            return Ok(());
        };
        let tolerance = (burst * self.hold() as f64 * 1000.0) as u64;
        let now_us = now.saturating_mul(1000);
        let early = |due: u64| {
            due.saturating_sub(tolerance)
                .checked_sub(now_us)
                .filter(|&d| d > 0)
        };
        let refuse = |dimension, limit, early_us: u64| Refusal {
            dimension,
            limit,
            retry_after: Some(Duration::from_micros(early_us.div_ceil(1000) * 1000)),
        };
        if let Some(rpm) = self.limits.rpm
            && let Some(early_us) = early(self.due.requests_us)
        {
            return Err(refuse(
                Dimension::RequestsPerMinute,
                u64::from(rpm),
                early_us,
            ));
        }
        if let Some(tpm) = self.limits.tpm
            && let Some(early_us) = early(self.due.tokens_us)
        {
            return Err(refuse(Dimension::TokensPerMinute, tpm, early_us));
        }
        Ok(())
    }

    /// An admission moves the paced rate's due times on (paced or not: a request that did not
    /// wait still used its share of the minute).
    fn advance_pace(&mut self, demand: Demand, now: u64) {
        if self.burst.is_none() {
            return;
        }
        let now_us = now.saturating_mul(1000);
        let (requests, tokens) = self.intervals_us(demand.tokens);
        if let Some(interval) = requests {
            self.due.requests_us = self.due.requests_us.max(now_us).saturating_add(interval);
        }
        if let Some(interval) = tokens {
            self.due.tokens_us = self.due.tokens_us.max(now_us).saturating_add(interval);
        }
    }

    /// Tokens counted `was` at admission are `now` (corrected, or refunded as 0): the tokens'
    /// paced turn moves by the difference.
    fn correct_pace(&mut self, was: u64, now: u64) {
        if self.burst.is_none() {
            return;
        }
        let (_, Some(was)) = self.intervals_us(was) else {
            return;
        };
        let (_, Some(now)) = self.intervals_us(now) else {
            return;
        };
        self.due.tokens_us = if now >= was {
            self.due.tokens_us.saturating_add(now - was)
        } else {
            self.due.tokens_us.saturating_sub(was - now)
        };
    }

    fn check(&self, demand: Demand, now: u64) -> Result<(), Refusal> {
        let refuse = |dimension, limit, at: Option<u64>| Refusal {
            dimension,
            limit,
            retry_after: at.map(|at| Duration::from_millis(at.saturating_sub(now))),
        };
        if let Some(rpd) = self.limits.rpd.map(u64::from)
            && self.day_count >= rpd
        {
            let at = (rpd > 0).then_some(self.day_end);
            return Err(refuse(Dimension::RequestsPerDay, rpd, at));
        }
        let hold = self.hold();
        if let Some(rpm) = self.limits.rpm.map(u64::from) {
            self.requests
                .room(1, rpm, hold)
                .map_err(|at| refuse(Dimension::RequestsPerMinute, rpm, at))?;
        }
        if let Some(tpm) = self.limits.tpm {
            self.tokens
                .room(demand.tokens, tpm, hold)
                .map_err(|at| refuse(Dimension::TokensPerMinute, tpm, at))?;
        }
        if let Some(ipm) = self.limits.ipm.map(u64::from)
            && demand.images > 0
        {
            self.images
                .room(demand.images, ipm, hold)
                .map_err(|at| refuse(Dimension::ImagesPerMinute, ipm, at))?;
        }
        Ok(())
    }
}

/// A ticket for an admitted request: corrects its tokens later, or refunds it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    request_seq: u64,
    token_seq: u64,
    image_seq: u64,
    day_end: u64,
}

/// The meters of one (project, model) or one inbound client.
#[derive(Debug, Default)]
pub(crate) struct Meters {
    /// False while no dimension has a limit: nothing to lock or count.
    limited: AtomicBool,
    state: Mutex<State>,
}

/// A ledger's state for a snapshot (see [`Meters::export`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct MeterState {
    /// Limits learned from Google.
    pub(crate) learned: ModelLimits,
    /// The last minute's `(time, requests)`.
    pub(crate) requests: Vec<(u64, u64)>,
    /// The last minute's `(time, tokens)`.
    pub(crate) tokens: Vec<(u64, u64)>,
    /// The last minute's `(time, images)`.
    pub(crate) images: Vec<(u64, u64)>,
    /// The end of the Pacific day `day_count` counts.
    pub(crate) day_end: u64,
    /// Requests admitted that day.
    pub(crate) day_count: u64,
}

/// What was sent before a limit was learned, so that the ledger starts where Google's count is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct History<'a> {
    pub(crate) now: u64,
    /// `(time, requests)` of the last minute, oldest first.
    pub(crate) sent: &'a [(u64, u64)],
    /// When Google said a slot frees.
    pub(crate) retry_after: Option<Duration>,
}

/// Usage of one dimension, for snapshots.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Usage {
    /// Used in the current window (minute or Pacific day).
    pub used: u64,
    /// The limit.
    pub limit: u64,
}

/// A per-minute dimension as a client's rate-limit headers show it: its limit, what is left of
/// it now, and how long until the window is empty again (every slot in it freed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateWindow {
    /// The limit.
    pub limit: u64,
    /// What is left of it now.
    pub remaining: u64,
    /// Until the window is empty again.
    pub reset: Duration,
}

impl RateWindow {
    /// The stricter of two windows on the same dimension: less left is stricter.
    pub fn stricter(self, other: RateWindow) -> RateWindow {
        if other.remaining < self.remaining
            || (other.remaining == self.remaining && other.reset > self.reset)
        {
            other
        } else {
            self
        }
    }
}

/// Usage of every limited dimension.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MeterSnapshot {
    /// Requests in the last minute.
    pub rpm: Option<Usage>,
    /// Input tokens in the last minute.
    pub tpm: Option<Usage>,
    /// Requests today (Pacific).
    pub rpd: Option<Usage>,
    /// Images in the last minute.
    pub ipm: Option<Usage>,
}

impl Meters {
    /// Meters for requests sent upstream: a slot is held [`SKEW_MARGIN_MS`] past the minute.
    pub(crate) fn new(limits: ModelLimits) -> Meters {
        let meters = Meters::default();
        meters.set_limits(limits);
        meters
    }

    /// Meters counted where they are enforced (an inbound client's limit): exact minutes.
    pub(crate) fn exact(limits: ModelLimits) -> Meters {
        let meters = Meters::new(limits);
        meters.lock().exact = true;
        meters
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn is_limited(&self) -> bool {
        self.limited.load(Ordering::Acquire)
    }

    pub(crate) fn limits(&self) -> ModelLimits {
        self.lock().limits
    }

    pub(crate) fn set_limits(&self, limits: ModelLimits) {
        let mut state = self.lock();
        state.limits = limits;
        self.limited.store(
            limits.rpm.is_some()
                || limits.tpm.is_some()
                || limits.rpd.is_some()
                || limits.ipm.is_some(),
            Ordering::Release,
        );
    }

    /// Configured limits changed (a live reload): `configured` from now on, each dimension
    /// Google reported narrowing it still (as [`import`](Self::import) keeps learned limits).
    /// The window's entries and the day's count are kept: a raised limit gives the
    /// difference, not a fresh minute.
    pub(crate) fn reconfigure(&self, configured: ModelLimits) {
        fn narrow<T: Ord>(configured: Option<T>, learned: Option<T>) -> Option<T> {
            match (configured, learned) {
                (Some(c), Some(l)) => Some(c.min(l)),
                (c, l) => c.or(l),
            }
        }
        // One lock: a limit learned meanwhile is not overwritten.
        let mut state = self.lock();
        let learned = state.learned;
        let limits = ModelLimits {
            rpm: narrow(configured.rpm, learned.rpm),
            tpm: narrow(configured.tpm, learned.tpm),
            rpd: narrow(configured.rpd, learned.rpd),
            ipm: narrow(configured.ipm, learned.ipm),
        };
        state.limits = limits;
        self.limited.store(
            limits.rpm.is_some()
                || limits.tpm.is_some()
                || limits.rpd.is_some()
                || limits.ipm.is_some(),
            Ordering::Release,
        );
    }

    /// Lower one dimension's limit to what Google reported; returns true if it changed.
    ///
    /// A ledger that had no limit recorded nothing, while Google counted every request: it
    /// starts from `history` instead of empty, or the first window after the cool-down would
    /// admit a full minute's worth again and meet more 429s. Requests come from the per-second
    /// counts; tokens (never estimated without a limit) are taken as the whole limit, spread
    /// over the part of the minute Google still counts; a daily limit as used up.
    pub(crate) fn learn(&self, dimension: Dimension, value: u64, history: History<'_>) -> bool {
        let mut state = self.lock();
        let was_limited = self.is_limited();
        let mut limits = state.limits;
        let narrow = |current: Option<u64>| current.is_none_or(|c| value < c);
        let as_u32 = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        let changed = match dimension {
            Dimension::RequestsPerMinute if narrow(limits.rpm.map(u64::from)) => {
                limits.rpm = Some(as_u32(value));
                true
            }
            Dimension::TokensPerMinute if narrow(limits.tpm) => {
                limits.tpm = Some(value);
                true
            }
            Dimension::RequestsPerDay if narrow(limits.rpd.map(u64::from)) => {
                limits.rpd = Some(as_u32(value));
                true
            }
            Dimension::ImagesPerMinute if narrow(limits.ipm.map(u64::from)) => {
                limits.ipm = Some(as_u32(value));
                true
            }
            _ => false,
        };
        if !changed {
            return false;
        }
        match dimension {
            Dimension::RequestsPerMinute => state.learned.rpm = limits.rpm,
            Dimension::TokensPerMinute => state.learned.tpm = limits.tpm,
            Dimension::RequestsPerDay => state.learned.rpd = limits.rpd,
            Dimension::ImagesPerMinute => state.learned.ipm = limits.ipm,
        }
        state.limits = limits;
        self.limited.store(true, Ordering::Release);
        if !was_limited {
            state.backfill(dimension, value, history);
        }
        true
    }

    /// What this ledger holds, to be kept across a restart: learned limits, the last minute's
    /// entries and today's count.
    pub(crate) fn export(&self, now: u64) -> MeterState {
        let mut state = self.lock();
        state.expire(now);
        let entries = |log: &Log| {
            log.entries
                .iter()
                .copied()
                .filter(|&(_, n)| n > 0)
                .collect()
        };
        MeterState {
            learned: state.learned,
            requests: entries(&state.requests),
            tokens: entries(&state.tokens),
            images: entries(&state.images),
            day_end: state.day_end,
            day_count: state.day_count,
        }
    }

    /// Take back what [`export`](Self::export) gave: limits learned are applied (narrowing
    /// only, so a raised configured limit is not undone by an old learned one — unless Google
    /// said so again), entries still inside the minute and the day's count if it is the same
    /// Pacific day. Only worth doing on a ledger that has not been used yet.
    pub(crate) fn import(&self, saved: &MeterState, now: u64) {
        let history = History {
            now,
            sent: &[],
            retry_after: None,
        };
        let learned = saved.learned;
        let dimensions = [
            (Dimension::RequestsPerMinute, learned.rpm.map(u64::from)),
            (Dimension::TokensPerMinute, learned.tpm),
            (Dimension::RequestsPerDay, learned.rpd.map(u64::from)),
            (Dimension::ImagesPerMinute, learned.ipm.map(u64::from)),
        ];
        for (dimension, value) in dimensions {
            let Some(value) = value.filter(|&v| v > 0) else {
                continue;
            };
            // Limited first, so that `learn` does not back-fill: the saved entries are the
            // history. (`learn` only narrows: a configured limit already lower stays.)
            self.limited.store(true, Ordering::Release);
            self.learn(dimension, value, history);
        }
        let mut state = self.lock();
        state.expire(now);
        let hold = state.hold();
        let keep = |entries: &[(u64, u64)]| -> Vec<(u64, u64)> {
            entries
                .iter()
                .copied()
                .filter(|&(at, _)| at <= now && at + hold > now)
                .collect()
        };
        for (at, n) in keep(&saved.requests) {
            state.requests.push(at, n);
        }
        for (at, n) in keep(&saved.tokens) {
            state.tokens.push(at, n);
        }
        for (at, n) in keep(&saved.images) {
            state.images.push(at, n);
        }
        if saved.day_end == state.day_end {
            state.day_count = state.day_count.max(saved.day_count);
        }
    }

    /// Admit requests willing to wait as `pacing` says (outbound meters only).
    pub(crate) fn set_pacing(&self, pacing: Pacing) {
        let mut state = self.lock();
        if !state.exact {
            state.burst = pacing.burst();
        }
    }

    /// Would `demand` fit now (`paced`: and is it its turn at the paced rate)? `Ok` or the
    /// refusal, spending nothing.
    pub(crate) fn check(&self, demand: Demand, now: u64, paced: bool) -> Result<(), Refusal> {
        if !self.is_limited() {
            return Ok(());
        }
        let mut state = self.lock();
        state.expire(now);
        state.check(demand, now)?;
        if paced {
            state.check_pace(now)?;
        }
        Ok(())
    }

    /// Admit `demand` in every dimension (`paced`: at its turn of the paced rate), or refuse
    /// it and spend nothing.
    pub(crate) fn admit(
        &self,
        demand: Demand,
        now: u64,
        paced: bool,
    ) -> Result<Option<Ticket>, Refusal> {
        if !self.is_limited() {
            return Ok(None);
        }
        let mut state = self.lock();
        state.expire(now);
        state.check(demand, now)?;
        if paced {
            state.check_pace(now)?;
        }
        state.advance_pace(demand, now);
        let request_seq = state.requests.push(now, 1);
        let token_seq = state.tokens.push(now, demand.tokens);
        // A request without images adds nothing to the images log (most requests): its
        // ticket names no entry, and correcting it changes nothing.
        let image_seq = if demand.images > 0 {
            state.images.push(now, demand.images)
        } else {
            NO_ENTRY
        };
        state.day_count += 1;
        Ok(Some(Ticket {
            request_seq,
            token_seq,
            image_seq,
            day_end: state.day_end,
        }))
    }

    /// Replace an admitted request's token estimate with the real count.
    pub(crate) fn correct_tokens(&self, ticket: &Ticket, tokens: u64) {
        let mut state = self.lock();
        if let Some(estimated) = state.tokens.correct(ticket.token_seq, tokens) {
            // The paced turn moves with the real count too: an estimate larger than the answer
            // (or a body Google refused) must not push everyone's next turn away.
            state.correct_pace(estimated, tokens);
        }
    }

    /// Take an admitted request back entirely (it was refused upstream, so it used no quota).
    pub(crate) fn refund(&self, ticket: &Ticket) {
        let mut state = self.lock();
        // Its turns at the paced rate too (it used no quota): the request's and its tokens'.
        if state.burst.is_some()
            && let (Some(interval), _) = state.intervals_us(0)
        {
            state.due.requests_us = state.due.requests_us.saturating_sub(interval);
        }
        if let Some(estimated) = state.tokens.correct(ticket.token_seq, 0) {
            state.correct_pace(estimated, 0);
        }
        state.requests.correct(ticket.request_seq, 0);
        state.images.correct(ticket.image_seq, 0);
        if state.day_end == ticket.day_end {
            state.day_count = state.day_count.saturating_sub(1);
        }
    }

    /// The fraction of room left in the tightest dimension (1.0 when unlimited).
    pub(crate) fn headroom(&self, demand: Demand, now: u64) -> f64 {
        if !self.is_limited() {
            return 1.0;
        }
        let mut state = self.lock();
        state.expire(now);
        let fraction = |used: u64, extra: u64, limit: u64| {
            if limit == 0 {
                0.0
            } else {
                1.0 - ((used + extra) as f64 / limit as f64).min(1.0)
            }
        };
        let limits = state.limits;
        [
            limits
                .rpm
                .map(|l| fraction(state.requests.sum, 1, u64::from(l))),
            limits
                .tpm
                .map(|l| fraction(state.tokens.sum, demand.tokens, l)),
            limits
                .rpd
                .map(|l| fraction(state.day_count, 1, u64::from(l))),
            limits
                .ipm
                .map(|l| fraction(state.images.sum, demand.images, u64::from(l))),
        ]
        .into_iter()
        .flatten()
        .fold(1.0, f64::min)
    }

    /// Requests and tokens per minute as [`RateWindow`]s (`None` for a dimension without a
    /// limit).
    pub(crate) fn windows(&self, now: u64) -> (Option<RateWindow>, Option<RateWindow>) {
        if !self.is_limited() {
            return (None, None);
        }
        let mut state = self.lock();
        state.expire(now);
        let hold = state.hold();
        let window = |log: &Log, limit: u64| RateWindow {
            limit,
            remaining: limit.saturating_sub(log.sum),
            reset: Duration::from_millis(
                log.entries
                    .back()
                    .map_or(0, |&(at, _)| (at + hold).saturating_sub(now)),
            ),
        };
        (
            state
                .limits
                .rpm
                .map(|l| window(&state.requests, u64::from(l))),
            state.limits.tpm.map(|l| window(&state.tokens, l)),
        )
    }

    pub(crate) fn snapshot(&self, now: u64) -> MeterSnapshot {
        let mut state = self.lock();
        state.expire(now);
        let limits = state.limits;
        MeterSnapshot {
            rpm: limits.rpm.map(|l| Usage {
                used: state.requests.sum,
                limit: u64::from(l),
            }),
            tpm: limits.tpm.map(|l| Usage {
                used: state.tokens.sum,
                limit: l,
            }),
            rpd: limits.rpd.map(|l| Usage {
                used: state.day_count,
                limit: u64::from(l),
            }),
            ipm: limits.ipm.map(|l| Usage {
                used: state.images.sum,
                limit: u64::from(l),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_790_000_000_000;

    fn rpm(limit: u32) -> Meters {
        Meters::new(ModelLimits {
            rpm: Some(limit),
            ..Default::default()
        })
    }

    fn paced(limits: ModelLimits, burst: f64) -> Meters {
        let meters = Meters::new(limits);
        meters.set_pacing(Pacing::Spread { burst });
        meters
    }

    #[test]
    fn paced_requests_go_a_held_minute_over_the_limit_apart_after_the_burst() {
        // 60 RPM: one request every 60.5 s / 60 = 1,008.33 ms; a burst of 10 % = 6.05 s.
        let meters = paced(
            ModelLimits {
                rpm: Some(60),
                ..Default::default()
            },
            0.1,
        );
        let one = Demand::default();
        let mut admitted = 0;
        while meters.admit(one, T0, true).is_ok() {
            admitted += 1;
        }
        // The first is due at once, and 6.05 s of turns more may go early: 1 + 6.
        assert_eq!(admitted, 7);
        let refusal = meters.admit(one, T0, true).unwrap_err();
        assert_eq!(refusal.dimension, Dimension::RequestsPerMinute);
        // The 8th is due at 7 × 1,008.33 ms, allowed 6,050 ms early: at 1,008.33 ms, rounded
        // up to the millisecond.
        assert_eq!(refusal.retry_after, Some(Duration::from_millis(1009)));
        assert!(meters.admit(one, T0 + 1008, true).is_err());
        assert!(meters.admit(one, T0 + 1009, true).is_ok());
        // Not paced (a request that would fail rather than wait): the window alone decides.
        for _ in 0..(60 - 8) {
            assert!(meters.admit(one, T0 + 1009, false).is_ok());
        }
        assert!(meters.admit(one, T0 + 1009, false).is_err());
        // A refund gives its turn back.
        let meters = paced(
            ModelLimits {
                rpm: Some(60),
                ..Default::default()
            },
            0.0,
        );
        let ticket = meters.admit(one, T0, true).unwrap().unwrap();
        assert!(meters.check(one, T0, true).is_err());
        meters.refund(&ticket);
        assert!(meters.check(one, T0, true).is_ok());
    }

    #[test]
    fn paced_tokens_go_at_the_tpm_rate() {
        let meters = paced(
            ModelLimits {
                tpm: Some(60_500),
                ..Default::default()
            },
            0.0,
        );
        let big = Demand {
            tokens: 6_050,
            images: 0,
        };
        // 6,050 tokens at 60,500 per held minute take 6.05 s of the rate.
        assert!(meters.admit(big, T0, true).is_ok());
        let refusal = meters.admit(big, T0, true).unwrap_err();
        assert_eq!(refusal.dimension, Dimension::TokensPerMinute);
        assert_eq!(refusal.retry_after, Some(Duration::from_millis(6050)));
        assert!(meters.admit(big, T0 + 6_050, true).is_ok());
        // A request larger than the burst still goes when its turn comes (never refused for
        // good by pacing): its size moves the next turn, not its own.
        let meters = paced(
            ModelLimits {
                tpm: Some(60_500),
                ..Default::default()
            },
            0.0,
        );
        let huge = Demand {
            tokens: 60_000,
            images: 0,
        };
        assert!(meters.admit(huge, T0, true).is_ok());
        assert!(meters.admit(big, T0 + 59_999, true).is_err());
    }

    /// Tokens Google did not count (a refused request) or counted lower than estimated give
    /// their paced turn back: a client sending large bodies that are refused cannot push
    /// everyone's next turn away.
    #[test]
    fn refunds_and_corrections_give_token_turns_back() {
        let meters = paced(
            ModelLimits {
                tpm: Some(60_500),
                ..Default::default()
            },
            0.0,
        );
        let big = Demand {
            tokens: 30_250,
            images: 0,
        };
        for _ in 0..10 {
            let ticket = meters.admit(big, T0, true).unwrap().unwrap();
            meters.refund(&ticket);
        }
        assert!(meters.check(big, T0, true).is_ok());
        // Estimated 30,250, counted 605 (1 % of the held minute's tokens): the next turn is
        // 605 ms away, not 30.25 s.
        let ticket = meters.admit(big, T0, true).unwrap().unwrap();
        meters.correct_tokens(&ticket, 605);
        let refusal = meters.check(big, T0, true).unwrap_err();
        assert_eq!(refusal.retry_after, Some(Duration::from_millis(605)));
        // A NaN burst is no burst, still paced.
        let nan = paced(
            ModelLimits {
                rpm: Some(60),
                ..Default::default()
            },
            f64::NAN,
        );
        assert!(nan.admit(Demand::default(), T0, true).is_ok());
        assert!(nan.admit(Demand::default(), T0, true).is_err());
    }

    #[test]
    fn inbound_meters_are_never_paced() {
        let meters = Meters::exact(ModelLimits {
            rpm: Some(60),
            ..Default::default()
        });
        meters.set_pacing(Pacing::Spread { burst: 0.0 });
        for _ in 0..60 {
            assert!(meters.admit(Demand::default(), T0, true).is_ok());
        }
    }

    #[test]
    fn eleventh_request_in_a_minute_is_refused_until_the_first_leaves() {
        let meters = rpm(10);
        for i in 0..10 {
            assert!(
                meters
                    .admit(Demand::default(), T0 + i * 1000, false)
                    .is_ok()
            );
        }
        let refusal = meters
            .admit(Demand::default(), T0 + 15_000, false)
            .unwrap_err();
        assert_eq!(refusal.dimension, Dimension::RequestsPerMinute);
        // The first leaves a minute and the skew margin after it was admitted.
        assert_eq!(refusal.retry_after, Some(Duration::from_millis(45_500)));
        assert!(meters.admit(Demand::default(), T0 + 60_499, false).is_err());
        assert!(meters.admit(Demand::default(), T0 + 60_500, false).is_ok());
    }

    #[test]
    fn all_or_nothing_across_dimensions() {
        let meters = Meters::new(ModelLimits {
            rpm: Some(5),
            tpm: Some(100),
            ..Default::default()
        });
        meters
            .admit(
                Demand {
                    tokens: 90,
                    images: 0,
                },
                T0,
                false,
            )
            .unwrap();
        let before = meters.snapshot(T0);
        let refusal = meters
            .admit(
                Demand {
                    tokens: 20,
                    images: 0,
                },
                T0,
                false,
            )
            .unwrap_err();
        assert_eq!(refusal.dimension, Dimension::TokensPerMinute);
        assert_eq!(
            meters.snapshot(T0),
            before,
            "a refused request spends nothing"
        );
        assert!(
            meters
                .admit(
                    Demand {
                        tokens: 10,
                        images: 0
                    },
                    T0,
                    false
                )
                .is_ok()
        );
    }

    #[test]
    fn too_big_never_fits() {
        let meters = Meters::new(ModelLimits {
            tpm: Some(100),
            ..Default::default()
        });
        let refusal = meters
            .admit(
                Demand {
                    tokens: 101,
                    images: 0,
                },
                T0,
                false,
            )
            .unwrap_err();
        assert_eq!(refusal.retry_after, None);
    }

    #[test]
    fn corrections_free_tokens_at_once_and_refunds_give_everything_back() {
        let meters = Meters::new(ModelLimits {
            tpm: Some(100),
            rpd: Some(3),
            ..Default::default()
        });
        let ticket = meters
            .admit(
                Demand {
                    tokens: 80,
                    images: 0,
                },
                T0,
                false,
            )
            .unwrap()
            .unwrap();
        assert!(
            meters
                .check(
                    Demand {
                        tokens: 30,
                        images: 0
                    },
                    T0,
                    false
                )
                .is_err()
        );
        meters.correct_tokens(&ticket, 50);
        assert!(
            meters
                .check(
                    Demand {
                        tokens: 30,
                        images: 0
                    },
                    T0,
                    false
                )
                .is_ok()
        );
        meters.refund(&ticket);
        let snap = meters.snapshot(T0);
        assert_eq!(snap.tpm.unwrap().used, 0);
        assert_eq!(snap.rpd.unwrap().used, 0);
    }

    fn nothing_sent(now: u64) -> History<'static> {
        History {
            now,
            sent: &[],
            retry_after: None,
        }
    }

    #[test]
    fn learning_only_lowers() {
        let meters = rpm(10);
        assert!(meters.learn(Dimension::RequestsPerMinute, 5, nothing_sent(T0)));
        assert!(!meters.learn(Dimension::RequestsPerMinute, 8, nothing_sent(T0)));
        assert_eq!(meters.limits().rpm, Some(5));
        assert!(meters.learn(Dimension::TokensPerMinute, 1000, nothing_sent(T0)));
        assert_eq!(meters.limits().tpm, Some(1000));
    }

    #[test]
    fn a_learned_limit_starts_from_what_was_sent() {
        // Unlimited until Google's 429 at T0 + 40 s: 5 requests at T0 + 1 s, 5 at T0 + 30 s.
        let meters = Meters::default();
        let now = T0 + 40_000;
        let sent = [(T0 + 1_999, 5), (T0 + 30_999, 5)];
        let history = History {
            now,
            sent: &sent,
            retry_after: Some(Duration::from_secs(22)),
        };
        assert!(meters.learn(Dimension::RequestsPerMinute, 10, history));
        let one = Demand::default();
        let refusal = meters.admit(one, now, false).unwrap_err();
        assert_eq!(refusal.retry_after, Some(Duration::from_millis(22_499)));
        // The first five leave the window together (with the skew margin), the next five 29 s
        // later: never more than ten in any minute, as Google counts them.
        let first_free = T0 + 62_499;
        for _ in 0..5 {
            assert!(meters.admit(one, first_free, false).is_ok());
        }
        assert!(meters.admit(one, first_free, false).is_err());
        assert!(meters.admit(one, T0 + 91_499, false).is_ok());
    }

    #[test]
    fn a_learned_token_limit_is_full_and_frees_gradually() {
        let meters = Meters::default();
        let history = History {
            now: T0,
            sent: &[],
            retry_after: Some(Duration::from_secs(30)),
        };
        assert!(meters.learn(Dimension::TokensPerMinute, 600, history));
        let some = Demand {
            tokens: 100,
            images: 0,
        };
        // Google counts 600 tokens spread over the last 30 s: the first 100 free in 30 s.
        let refusal = meters.admit(some, T0, false).unwrap_err();
        assert_eq!(refusal.retry_after, Some(Duration::from_millis(30_500)));
        assert!(meters.admit(some, T0 + 30_500, false).is_ok());
        assert!(meters.admit(some, T0 + 30_500, false).is_err());
    }

    #[test]
    fn learning_on_a_limited_ledger_keeps_its_own_record() {
        let meters = rpm(10);
        for _ in 0..3 {
            meters.admit(Demand::default(), T0, false).unwrap();
        }
        let sent = [(T0, 50)];
        let history = History {
            now: T0,
            sent: &sent,
            retry_after: None,
        };
        assert!(meters.learn(Dimension::RequestsPerMinute, 5, history));
        assert_eq!(meters.snapshot(T0).rpm.unwrap().used, 3);
    }

    #[test]
    fn unlimited_meters_take_no_lock_and_count_nothing() {
        let meters = Meters::default();
        assert!(!meters.is_limited());
        assert!(
            meters
                .admit(
                    Demand {
                        tokens: 1 << 40,
                        images: 9
                    },
                    T0,
                    false
                )
                .unwrap()
                .is_none()
        );
        assert_eq!(meters.headroom(Demand::default(), T0), 1.0);
    }

    #[test]
    fn headroom_is_the_tightest_fraction() {
        let meters = Meters::new(ModelLimits {
            rpm: Some(10),
            tpm: Some(1000),
            ..Default::default()
        });
        meters
            .admit(
                Demand {
                    tokens: 900,
                    images: 0,
                },
                T0,
                false,
            )
            .unwrap();
        let h = meters.headroom(
            Demand {
                tokens: 0,
                images: 0,
            },
            T0,
        );
        assert!((h - 0.1).abs() < 1e-9, "{h}");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::clock::pacific_day_start;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Whatever the arrivals and sizes: in every 60-second window (any alignment) the admitted
        /// requests, tokens and images stay within their limits, every Pacific day within RPD, and
        /// a refused request changes nothing.
        #[test]
        fn admitted_never_exceed_any_limit_in_any_window(
            rpm in 1u32..15,
            tpm in 20u64..400,
            rpd in 1u32..60,
            ipm in 1u32..6,
            arrivals in proptest::collection::vec((0u64..15_000, 0u64..120, 0u64..3), 1..250),
        ) {
            let meters = Meters::new(ModelLimits { rpm: Some(rpm), tpm: Some(tpm), rpd: Some(rpd), ipm: Some(ipm) });
            // Start an hour before a Pacific midnight so the day boundary is crossed.
            let mut now = 1_793_516_400_000 - 3_600_000;
            let mut admitted: Vec<(u64, u64, u64)> = Vec::new();
            for (gap, tokens, images) in arrivals {
                now += gap;
                let before = meters.snapshot(now);
                match meters.admit(Demand { tokens, images }, now, false) {
                    Ok(_) => admitted.push((now, tokens, images)),
                    Err(refusal) => {
                        prop_assert_eq!(meters.snapshot(now), before, "a refusal spent something");
                        if let Some(after) = refusal.retry_after {
                            prop_assert!(after > Duration::ZERO);
                        }
                    }
                }
            }
            for &(t, _, _) in &admitted {
                let window = admitted.iter().filter(|&&(u, _, _)| u + MINUTE_MS > t && u <= t);
                let (count, tokens, images) = window.fold((0u64, 0u64, 0u64), |acc, &(_, n, i)| (acc.0 + 1, acc.1 + n, acc.2 + i));
                prop_assert!(count <= u64::from(rpm), "{count} requests in a minute, limit {rpm}");
                prop_assert!(tokens <= tpm, "{tokens} tokens in a minute, limit {tpm}");
                prop_assert!(images <= u64::from(ipm), "{images} images in a minute, limit {ipm}");
                let day = pacific_day_start(t);
                let today = admitted.iter().filter(|&&(u, _, _)| pacific_day_start(u) == day).count();
                prop_assert!(today as u64 <= u64::from(rpd), "{today} requests in a day, limit {rpd}");
            }
        }

        /// Under steady load at the limit's pace (a minute and the skew margin per `rpm`
        /// requests: under 1 % less than a minute), every request passes.
        #[test]
        fn steady_load_gets_the_full_limit(rpm in 1u32..60) {
            let meters = Meters::new(ModelLimits { rpm: Some(rpm), ..Default::default() });
            let pace = HOLD_MS.div_ceil(u64::from(rpm));
            let start = 1_790_000_000_000;
            for i in 0..u64::from(rpm) * 5 {
                prop_assert!(meters.admit(Demand::default(), start + i * pace, false).is_ok(), "request {i} refused");
            }
        }
    }
}
