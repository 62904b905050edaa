//! [`RetryBudget`]: retries may add at most a fraction of the load, plus a trickle per second.

#[cfg(all(tower_gemini_loom, test))]
use loom::sync::atomic::{AtomicI64, AtomicU64, Ordering};
#[cfg(not(all(tower_gemini_loom, test)))]
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

const SLOTS: u64 = 10;

/// A retry budget shared by every clone of a retry layer, with the semantics of tower's
/// `TpsBudget` (from Finagle): over a sliding `ttl`, retries may be at most `retry_percent` of
/// the calls made plus `min_per_sec × ttl`. When it is empty, no retry is made and the last
/// answer is returned, so retries cannot multiply load during an outage.
///
/// Unlike `TpsBudget` it takes no lock: ten time slots of atomics, rotated by compare-and-swap;
/// a withdrawal is a compare-and-swap on the current slot against the balance it saw, so
/// concurrent withdrawals do not overdraw it — except in the instant a slot is reused for a new
/// tenth of the window, when a withdrawal racing the reset can be wiped by it (at most one
/// extra retry per thread in that race).
///
/// ```
/// use std::time::Duration;
/// use tower_gemini::retry::RetryBudget;
///
/// let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.5);
/// assert!(!budget.withdraw()); // nothing deposited yet
/// budget.deposit();
/// budget.deposit();
/// assert!(budget.withdraw()); // 50 %: one retry per two calls
/// assert!(!budget.withdraw());
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    reserve: i64,
    deposit_amount: i64,
    withdraw_amount: i64,
    window_ms: u64,
    start: Instant,
    slots: [Slot; SLOTS as usize],
}

#[derive(Debug, Default)]
struct Slot {
    epoch: AtomicU64,
    value: AtomicI64,
}

impl RetryBudget {
    /// `ttl` (clamped to 1–60 s) is how long a call counts; `min_per_sec` retries per second are
    /// always allowed; `retry_percent` (clamped to 0–1000, where 0.2 means 20 %) of calls may be
    /// retried on top.
    pub fn new(ttl: Duration, min_per_sec: u32, retry_percent: f32) -> Self {
        let ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let percent = if retry_percent.is_finite() {
            retry_percent.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        let (deposit_amount, withdraw_amount) = if percent == 0.0 {
            (0, 1)
        } else if percent <= 1.0 {
            (1, (1.0 / percent).round() as i64)
        } else {
            (1000, (1000.0 / percent).round().max(1.0) as i64)
        };
        let reserve = i64::from(min_per_sec)
            .saturating_mul(ttl.as_secs() as i64)
            .saturating_mul(withdraw_amount);
        RetryBudget {
            reserve,
            deposit_amount,
            withdraw_amount,
            window_ms: (ttl.as_millis() as u64 / SLOTS).max(1),
            start: Instant::now(),
            slots: Default::default(),
        }
    }

    fn epoch(&self) -> u64 {
        // +1 so that no live slot has epoch 0, which marks an unused slot.
        self.start.elapsed().as_millis() as u64 / self.window_ms + 1
    }

    /// The current slot, reset first if it last served an older epoch.
    fn current(&self, epoch: u64) -> &Slot {
        let slot = &self.slots[(epoch % SLOTS) as usize];
        let seen = slot.epoch.load(Ordering::Acquire);
        if seen != epoch
            && slot
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.value.store(0, Ordering::Release);
        }
        slot
    }

    /// The reserve and every live slot but `except`.
    fn balance_without(&self, epoch: u64, except: &Slot) -> i64 {
        self.slots
            .iter()
            .filter(|s| {
                !std::ptr::eq(*s, except) && s.epoch.load(Ordering::Acquire) + SLOTS > epoch
            })
            .map(|s| s.value.load(Ordering::Acquire))
            .fold(self.reserve, i64::saturating_add)
    }

    /// Count a call (each original request, not its retries).
    pub fn deposit(&self) {
        let epoch = self.epoch();
        self.current(epoch)
            .value
            .fetch_add(self.deposit_amount, Ordering::AcqRel);
    }

    /// Take one retry from the budget; false if it is empty.
    pub fn withdraw(&self) -> bool {
        let epoch = self.epoch();
        let slot = self.current(epoch);
        loop {
            // The current slot as read here, with the rest: if another thread withdraws (or
            // deposits) in between, the exchange fails and the balance is taken again, so
            // two withdrawals cannot both spend the last retry.
            let mine = slot.value.load(Ordering::Acquire);
            let balance = self.balance_without(epoch, slot).saturating_add(mine);
            if balance < self.withdraw_amount {
                return false;
            }
            if slot
                .value
                .compare_exchange_weak(
                    mine,
                    mine.saturating_sub(self.withdraw_amount),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            {
                return true;
            }
        }
    }
}

impl Default for RetryBudget {
    /// 10 s window, 10 retries per second, 20 % of calls.
    fn default() -> Self {
        RetryBudget::new(Duration::from_secs(10), 10, 0.2)
    }
}

impl tower::retry::budget::Budget for RetryBudget {
    fn deposit(&self) {
        RetryBudget::deposit(self)
    }

    fn withdraw(&self) -> bool {
        RetryBudget::withdraw(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reserve_then_percent() {
        let budget = RetryBudget::new(Duration::from_secs(10), 1, 0.2);
        // Reserve: 1 per second over 10 s.
        for _ in 0..10 {
            assert!(budget.withdraw());
        }
        assert!(!budget.withdraw());
        for _ in 0..10 {
            budget.deposit();
        }
        assert!(budget.withdraw());
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn spending_expires_with_the_window() {
        let budget = RetryBudget::new(Duration::from_secs(10), 1, 0.0);
        while budget.withdraw() {}
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(budget.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_too() {
        let budget = RetryBudget::new(Duration::from_secs(10), 0, 1.0);
        budget.deposit();
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!budget.withdraw());
    }

    #[test]
    fn odd_parameters_do_not_panic() {
        let _ = RetryBudget::new(Duration::ZERO, u32::MAX, f32::NAN);
        let b = RetryBudget::new(Duration::from_secs(3600), 0, 5000.0);
        b.deposit();
        assert!(b.withdraw());
    }
}

/// Every interleaving of concurrent withdrawals (`.ci/loom`).
#[cfg(all(tower_gemini_loom, test))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicUsize;
    use loom::thread;

    #[test]
    fn loom_two_withdrawals_never_both_spend_the_last_retry() {
        loom::model(|| {
            // A reserve of exactly one retry; the current slot in use (the reset of a slot
            // for a new tenth of the window is the documented exception).
            let budget = Arc::new(RetryBudget::new(Duration::from_secs(1), 1, 0.0));
            budget.deposit();
            let spent = Arc::new(AtomicUsize::new(0));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let (budget, spent) = (budget.clone(), spent.clone());
                    thread::spawn(move || {
                        if budget.withdraw() {
                            spent.fetch_add(1, Ordering::AcqRel);
                        }
                    })
                })
                .collect();
            for thread in threads {
                thread.join().unwrap();
            }
            assert_eq!(spent.load(Ordering::Acquire), 1);
        });
    }
}
