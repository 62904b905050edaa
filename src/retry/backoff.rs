//! Exponential backoff with pluggable jitter.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::random::UnitRng;

/// Spreads a backoff delay so that clients failing together do not retry together.
pub trait Jitter: Send + Sync + fmt::Debug + 'static {
    /// The delay to wait, given the un-jittered `base`.
    fn apply(&self, base: Duration) -> Duration;
}

/// Uniform in `[0, base]` ("full jitter", as Google's SDKs and the AWS architecture blog use).
#[derive(Debug, Default)]
pub struct FullJitter {
    rng: UnitRng,
}

impl FullJitter {
    /// Draws from the thread-local generator.
    pub fn new() -> Self {
        FullJitter {
            rng: UnitRng::thread(),
        }
    }

    /// Repeatable draws.
    pub fn with_seed(seed: u64) -> Self {
        FullJitter {
            rng: UnitRng::seeded(seed),
        }
    }
}

impl Jitter for FullJitter {
    fn apply(&self, base: Duration) -> Duration {
        base.mul_f64(self.rng.next_f64())
    }
}

/// Uniform in `[base / 2, base]`: never much shorter than the base.
#[derive(Debug, Default)]
pub struct EqualJitter {
    rng: UnitRng,
}

impl EqualJitter {
    /// Draws from the thread-local generator.
    pub fn new() -> Self {
        EqualJitter {
            rng: UnitRng::thread(),
        }
    }

    /// Repeatable draws.
    pub fn with_seed(seed: u64) -> Self {
        EqualJitter {
            rng: UnitRng::seeded(seed),
        }
    }
}

impl Jitter for EqualJitter {
    fn apply(&self, base: Duration) -> Duration {
        let half = base / 2;
        half + half.mul_f64(self.rng.next_f64())
    }
}

/// No jitter: exactly the base delay.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoJitter;

impl Jitter for NoJitter {
    fn apply(&self, base: Duration) -> Duration {
        base
    }
}

/// `min(initial × multiplier^n, max)` for the n-th backoff, then jittered.
///
/// The default matches Google's SDKs: 1 s initial, ×2, 60 s cap, full jitter.
///
/// ```
/// use std::time::Duration;
/// use tower_gemini::retry::{Backoff, NoJitter};
///
/// let backoff = Backoff::new(Duration::from_secs(1), 2.0, Duration::from_secs(60)).jitter(NoJitter);
/// let delays: Vec<u64> = (0..8).map(|n| backoff.delay(n).as_secs()).collect();
/// assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
/// ```
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    multiplier: f64,
    max: Duration,
    jitter: Arc<dyn Jitter>,
}

impl Backoff {
    /// Exponential backoff with full jitter. A multiplier below 1 is treated as 1.
    pub fn new(initial: Duration, multiplier: f64, max: Duration) -> Self {
        Backoff {
            initial,
            multiplier: if multiplier.is_finite() {
                multiplier.max(1.0)
            } else {
                1.0
            },
            max,
            jitter: Arc::new(FullJitter::new()),
        }
    }

    /// Use another jitter.
    pub fn jitter(mut self, jitter: impl Jitter) -> Self {
        self.jitter = Arc::new(jitter);
        self
    }

    /// The un-jittered delay of the n-th backoff (n from 0).
    pub fn base(&self, n: u32) -> Duration {
        let factor = self.multiplier.powi(n.min(1024) as i32);
        let secs = self.initial.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The jittered delay of the n-th backoff.
    pub fn delay(&self, n: u32) -> Duration {
        self.jitter.apply(self.base(n)).min(self.max)
    }

    /// A wait someone else gave (an open circuit's time left), spread so that the callers
    /// waiting on it do not all come back in the same millisecond: `wait` plus the jitter of a
    /// quarter of it, the spread kept between 100 ms and 2 s.
    pub fn spread(&self, wait: Duration) -> Duration {
        let spread = (wait / 4).clamp(Duration::from_millis(100), Duration::from_secs(2));
        wait.saturating_add(self.jitter.apply(spread).min(spread))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_secs(1), 2.0, Duration::from_secs(60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_within_the_base() {
        let backoff = Backoff::default().jitter(FullJitter::with_seed(3));
        let mut below_half = 0;
        for n in 0..200 {
            let base = backoff.base(n % 8);
            let delay = backoff.delay(n % 8);
            assert!(delay <= base, "{delay:?} > {base:?}");
            if delay < base / 2 {
                below_half += 1;
            }
        }
        assert!(
            below_half > 50,
            "full jitter reaches below half the base: {below_half}"
        );
    }

    #[test]
    fn equal_jitter_stays_in_the_upper_half() {
        let jitter = EqualJitter::with_seed(1);
        for _ in 0..100 {
            let d = jitter.apply(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(5) && d <= Duration::from_secs(10));
        }
    }

    #[test]
    fn seeded_jitter_repeats() {
        let a: Vec<_> = (0..5)
            .map(|_| FullJitter::with_seed(9))
            .map(|j| j.apply(Duration::from_secs(1)))
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn spread_waits_stay_after_the_wait_and_within_the_spread() {
        let backoff = Backoff::default().jitter(FullJitter::with_seed(5));
        let wait = Duration::from_secs(1);
        let waits: Vec<_> = (0..50).map(|_| backoff.spread(wait)).collect();
        assert!(
            waits
                .iter()
                .all(|&w| w >= wait && w <= wait + Duration::from_millis(250))
        );
        assert!(
            waits.windows(2).any(|w| w[0] != w[1]),
            "callers come back spread out"
        );
        let far = Backoff::default().jitter(NoJitter).spread(Duration::MAX);
        assert_eq!(far, Duration::MAX);
    }

    #[test]
    fn huge_exponents_saturate_at_the_cap() {
        let backoff = Backoff::default().jitter(NoJitter);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(60));
        let odd =
            Backoff::new(Duration::from_secs(1), f64::NAN, Duration::from_secs(5)).jitter(NoJitter);
        assert_eq!(odd.delay(10), Duration::from_secs(1));
    }
}
