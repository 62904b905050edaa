//! Wall-clock time for cool-downs and daily resets, injectable for tests.
//!
//! Every time the crate stores (cool-down ends, last use) is milliseconds since the Unix epoch,
//! read from a [`Clock`]. The default [`SystemClock`] follows tokio's clock, so tests that call
//! `tokio::time::pause()` move cool-downs forward with `tokio::time::advance`. [`ManualClock`]
//! sets the wall time outright, for daily resets at midnight America/Los_Angeles.

use std::fmt;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;

    /// How long to sleep (in tokio's time) for `elapsed` of this clock to pass. The same for
    /// clocks that follow tokio's time; shorter for one that runs faster ([`ScaledClock`]).
    fn real_duration(&self, elapsed: Duration) -> Duration {
        elapsed
    }
}

/// The default clock: the system's wall time when created, advanced by tokio's monotonic clock.
///
/// Because it advances with `tokio::time::Instant`, `tokio::time::pause()` and
/// `tokio::time::advance()` move it too.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    anchor_millis: u64,
    anchor: tokio::time::Instant,
}

impl SystemClock {
    /// A clock anchored at the current wall time.
    pub fn new() -> Self {
        let anchor_millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        SystemClock {
            anchor_millis,
            anchor: tokio::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.anchor);
        self.anchor_millis + elapsed.as_millis() as u64
    }
}

/// A clock that runs `factor` times faster than tokio's: minutes of quota windows in seconds,
/// for demos (`gemini-gateway demo`). Give the same clock to the pool and to the mock.
///
/// ```
/// use std::time::Duration;
/// use tower_gemini::clock::{Clock, ScaledClock};
///
/// let clock = ScaledClock::new(12);
/// assert_eq!(clock.real_duration(Duration::from_secs(60)), Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ScaledClock {
    start: SystemClock,
    anchor: tokio::time::Instant,
    factor: u32,
}

impl ScaledClock {
    /// A clock starting at the current wall time and running `factor` (at least 1) times
    /// faster.
    pub fn new(factor: u32) -> Self {
        ScaledClock {
            start: SystemClock::new(),
            anchor: tokio::time::Instant::now(),
            factor: factor.max(1),
        }
    }

    /// A clock showing `at` now and running `factor` (at least 1) times faster: a demo that
    /// starts at the same time of day whenever it is run (its daily quotas then never reset in
    /// the middle of it).
    ///
    /// ```
    /// use tower_gemini::clock::{Clock, ScaledClock};
    ///
    /// let at: jiff::Timestamp = "2026-03-08T20:00:00Z".parse().unwrap();
    /// let clock = ScaledClock::starting_at(at, 12);
    /// let shown = clock.now_millis() as i64 - at.as_millisecond();
    /// assert!((0..1000).contains(&shown));
    /// ```
    pub fn starting_at(at: Timestamp, factor: u32) -> Self {
        let mut clock = ScaledClock::new(factor);
        clock.start.anchor_millis = u64::try_from(at.as_millisecond()).unwrap_or(0);
        clock
    }
}

impl Clock for ScaledClock {
    fn now_millis(&self) -> u64 {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.anchor);
        let scaled = elapsed.saturating_mul(self.factor);
        self.start.anchor_millis + u64::try_from(scaled.as_millis()).unwrap_or(u64::MAX)
    }

    fn real_duration(&self, elapsed: Duration) -> Duration {
        elapsed / self.factor
    }
}

/// A clock that moves only when told to: for tests of daily resets and cool-downs.
///
/// ```
/// use std::time::Duration;
/// use tower_gemini::clock::{Clock, ManualClock};
///
/// let clock = ManualClock::at("2026-03-08T07:59:00Z".parse().unwrap());
/// clock.advance(Duration::from_secs(60));
/// assert_eq!(clock.now().to_string(), "2026-03-08T08:00:00Z");
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    millis: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock showing `at`.
    pub fn at(at: Timestamp) -> Self {
        ManualClock {
            millis: Arc::new(AtomicU64::new(at.as_millisecond().max(0) as u64)),
        }
    }

    /// Set the time.
    pub fn set(&self, at: Timestamp) {
        self.millis
            .store(at.as_millisecond().max(0) as u64, Ordering::SeqCst);
    }

    /// Move the time forward.
    pub fn advance(&self, by: Duration) {
        self.millis
            .fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        to_timestamp(self.now_millis())
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.millis.load(Ordering::SeqCst)
    }
}

/// `millis` plus `delay`, saturating instead of overflowing.
pub(crate) fn add(millis: u64, delay: Duration) -> u64 {
    millis.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
}

/// `from + delay`, or a time some decades on if that overflows (a delay from the wire or a
/// caller's "wait for ever").
pub(crate) fn instant_after(from: tokio::time::Instant, delay: Duration) -> tokio::time::Instant {
    from.checked_add(delay)
        .or_else(|| from.checked_add(Duration::from_secs(30 * 365 * 86_400)))
        .unwrap_or(from)
}

/// Convert stored milliseconds to a [`Timestamp`].
pub(crate) fn to_timestamp(millis: u64) -> Timestamp {
    Timestamp::from_millisecond(millis as i64).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn pacific() -> &'static TimeZone {
    static TZ: OnceLock<TimeZone> = OnceLock::new();
    // The tz database is bundled (jiff feature `tzdb-bundle-always`), so the lookup cannot fail
    // on a machine without /usr/share/zoneinfo; the fixed offset is a last resort only.
    TZ.get_or_init(|| {
        TimeZone::get("America/Los_Angeles")
            .unwrap_or_else(|_| TimeZone::fixed(jiff::tz::offset(-8)))
    })
}

/// The first midnight in America/Los_Angeles strictly after `millis`, in Unix milliseconds.
///
/// Gemini's per-day quotas reset then. Daylight saving time is handled: on the days the clocks
/// change, the Pacific day is 23 or 25 hours long.
///
/// ```
/// use tower_gemini::clock::next_pacific_midnight;
///
/// let now: jiff::Timestamp = "2026-11-01T12:00:00Z".parse().unwrap(); // 05:00 PDT
/// let next: jiff::Timestamp = "2026-11-02T08:00:00Z".parse().unwrap(); // 00:00 PST
/// assert_eq!(next_pacific_midnight(now.as_millisecond() as u64), next.as_millisecond() as u64);
/// ```
pub fn next_pacific_midnight(millis: u64) -> u64 {
    let tz = pacific();
    let zoned = to_timestamp(millis).to_zoned(tz.clone());
    zoned
        .date()
        .tomorrow()
        .and_then(|day| day.to_zoned(tz.clone()))
        .map(|midnight| midnight.timestamp().as_millisecond().max(0) as u64)
        // Only past year 9999: a day from now is close enough.
        .unwrap_or(millis.saturating_add(86_400_000))
}

/// The start (midnight America/Los_Angeles) of the Pacific day containing `millis`.
pub fn pacific_day_start(millis: u64) -> u64 {
    let tz = pacific();
    let zoned = to_timestamp(millis).to_zoned(tz.clone());
    zoned
        .date()
        .to_zoned(tz.clone())
        .map(|midnight| midnight.timestamp().as_millisecond().max(0) as u64)
        .unwrap_or(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> u64 {
        s.parse::<Timestamp>().unwrap().as_millisecond() as u64
    }

    #[test]
    fn ordinary_day_in_winter_and_summer() {
        // PST is UTC-8, PDT UTC-7.
        assert_eq!(
            next_pacific_midnight(ms("2026-01-15T20:00:00Z")),
            ms("2026-01-16T08:00:00Z")
        );
        assert_eq!(
            next_pacific_midnight(ms("2026-07-15T20:00:00Z")),
            ms("2026-07-16T07:00:00Z")
        );
    }

    #[test]
    fn spring_forward_day_is_23_hours() {
        // 2026-03-08: clocks jump from 02:00 PST to 03:00 PDT.
        let start = ms("2026-03-08T08:00:00Z"); // 00:00 PST
        assert_eq!(pacific_day_start(start + 1), start);
        let next = next_pacific_midnight(start);
        assert_eq!(next, ms("2026-03-09T07:00:00Z"));
        assert_eq!(next - start, 23 * 3_600_000);
    }

    #[test]
    fn fall_back_day_is_25_hours() {
        // 2026-11-01: clocks fall back from 02:00 PDT to 01:00 PST.
        let start = ms("2026-11-01T07:00:00Z"); // 00:00 PDT
        let next = next_pacific_midnight(start + 1);
        assert_eq!(next, ms("2026-11-02T08:00:00Z"));
        assert_eq!(next - start, 25 * 3_600_000);
    }

    #[test]
    fn exactly_at_midnight_means_the_next_one() {
        let midnight = ms("2026-05-01T07:00:00Z");
        assert_eq!(next_pacific_midnight(midnight), ms("2026-05-02T07:00:00Z"));
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::at("2026-01-01T00:00:00Z".parse().unwrap());
        let before = clock.now_millis();
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now_millis(), before + 1500);
    }

    #[tokio::test(start_paused = true)]
    async fn system_clock_follows_paused_tokio_time() {
        let clock = SystemClock::new();
        let before = clock.now_millis();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(clock.now_millis() - before, 30_000);
    }
}
