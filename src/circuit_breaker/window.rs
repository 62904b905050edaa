//! Sliding windows of call outcomes, in atomics: the last N calls, or the last N seconds.

#[cfg(all(tower_gemini_loom, test))]
use loom::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
#[cfg(not(all(tower_gemini_loom, test)))]
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

const EMPTY: u8 = 0;
const SUCCESS: u8 = 1;
const FAILURE: u8 = 2;

/// How many calls the failure rate is computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// The last `n` calls (1–1024).
    Calls(u32),
    /// The calls of the last `n` seconds (1–3600), in one-second buckets.
    Seconds(u32),
}

impl Default for WindowKind {
    fn default() -> Self {
        WindowKind::Calls(20)
    }
}

/// Calls and failures in the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
}

impl Counts {
    pub(crate) fn failure_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            f64::from(self.failures) / f64::from(self.calls)
        }
    }
}

pub(crate) enum Window {
    Calls {
        slots: Box<[AtomicU8]>,
        cursor: AtomicU64,
        failures: AtomicU32,
    },
    Seconds {
        buckets: Box<[Bucket]>,
    },
}

#[derive(Default)]
pub(crate) struct Bucket {
    second: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
}

impl Window {
    pub(crate) fn new(kind: WindowKind) -> Window {
        match kind {
            WindowKind::Calls(n) => Window::Calls {
                slots: (0..n.clamp(1, 1024))
                    .map(|_| AtomicU8::new(EMPTY))
                    .collect(),
                cursor: AtomicU64::new(0),
                failures: AtomicU32::new(0),
            },
            WindowKind::Seconds(n) => Window::Seconds {
                buckets: (0..n.clamp(1, 3600)).map(|_| Bucket::default()).collect(),
            },
        }
    }

    /// Record one outcome at `now_ms` (milliseconds on the breaker's clock).
    pub(crate) fn record(&self, failure: bool, now_ms: u64) {
        match self {
            Window::Calls {
                slots,
                cursor,
                failures,
            } => {
                let index = (cursor.fetch_add(1, Ordering::AcqRel) % slots.len() as u64) as usize;
                let new = if failure { FAILURE } else { SUCCESS };
                let old = slots[index].swap(new, Ordering::AcqRel);
                match (old == FAILURE, failure) {
                    (false, true) => {
                        failures.fetch_add(1, Ordering::AcqRel);
                    }
                    (true, false) => {
                        failures.fetch_sub(1, Ordering::AcqRel);
                    }
                    _ => {}
                }
            }
            Window::Seconds { buckets } => {
                // +1 so that no live bucket has second 0, which marks an unused bucket.
                let second = now_ms / 1000 + 1;
                let bucket = &buckets[(second % buckets.len() as u64) as usize];
                let seen = bucket.second.load(Ordering::Acquire);
                if seen != second
                    && bucket
                        .second
                        .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    bucket.calls.store(0, Ordering::Release);
                    bucket.failures.store(0, Ordering::Release);
                }
                bucket.calls.fetch_add(1, Ordering::AcqRel);
                if failure {
                    bucket.failures.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
    }

    pub(crate) fn counts(&self, now_ms: u64) -> Counts {
        match self {
            Window::Calls {
                slots,
                cursor,
                failures,
            } => {
                let calls = cursor.load(Ordering::Acquire).min(slots.len() as u64) as u32;
                // The counter follows the slots' swaps one step behind: a slot's failure may be
                // taken off (a later call replacing it, or `clear`) before another thread has
                // added it, so it can be briefly below zero (wrapped) or above the calls.
                let failures = failures.load(Ordering::Acquire) as i32;
                Counts {
                    calls,
                    failures: failures.clamp(0, calls as i32) as u32,
                }
            }
            Window::Seconds { buckets } => {
                let second = now_ms / 1000 + 1;
                let span = buckets.len() as u64;
                buckets
                    .iter()
                    .filter(|b| {
                        let s = b.second.load(Ordering::Acquire);
                        s != 0 && s + span > second
                    })
                    .fold(Counts::default(), |acc, b| {
                        let calls = b.calls.load(Ordering::Acquire);
                        // A bucket being reset for a new second may briefly hold a failure
                        // counted after its calls were zeroed.
                        let failures = b.failures.load(Ordering::Acquire).min(calls);
                        Counts {
                            calls: acc.calls.saturating_add(calls),
                            failures: acc.failures.saturating_add(failures),
                        }
                    })
            }
        }
    }

    pub(crate) fn clear(&self) {
        match self {
            Window::Calls {
                slots,
                cursor,
                failures,
            } => {
                for slot in slots.iter() {
                    slot.store(EMPTY, Ordering::Release);
                }
                cursor.store(0, Ordering::Release);
                failures.store(0, Ordering::Release);
            }
            Window::Seconds { buckets } => {
                for bucket in buckets.iter() {
                    bucket.second.store(0, Ordering::Release);
                    bucket.calls.store(0, Ordering::Release);
                    bucket.failures.store(0, Ordering::Release);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_forgets_the_oldest() {
        let w = Window::new(WindowKind::Calls(4));
        for failure in [true, true, false, false] {
            w.record(failure, 0);
        }
        assert_eq!(
            w.counts(0),
            Counts {
                calls: 4,
                failures: 2
            }
        );
        w.record(false, 0);
        w.record(false, 0);
        assert_eq!(
            w.counts(0),
            Counts {
                calls: 4,
                failures: 0
            }
        );
        w.clear();
        assert_eq!(w.counts(0), Counts::default());
    }

    #[test]
    fn time_window_forgets_old_seconds() {
        let w = Window::new(WindowKind::Seconds(10));
        w.record(true, 0);
        w.record(true, 500);
        w.record(false, 5_000);
        assert_eq!(
            w.counts(5_000),
            Counts {
                calls: 3,
                failures: 2
            }
        );
        assert_eq!(
            w.counts(10_500),
            Counts {
                calls: 1,
                failures: 0
            }
        );
        assert_eq!(w.counts(16_000), Counts::default());
        w.record(true, 30_000);
        assert_eq!(
            w.counts(30_000),
            Counts {
                calls: 1,
                failures: 1
            }
        );
    }
}

/// Every interleaving of concurrent records and reads (`.ci/loom`: `RUSTFLAGS="--cfg tower_gemini_loom"
/// cargo test --lib --release loom`): a reader never sees more failures than calls, nor a
/// wrapped count.
#[cfg(all(tower_gemini_loom, test))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    fn sane(counts: Counts) {
        assert!(counts.failures <= counts.calls, "{counts:?}");
        assert!(counts.failure_rate() <= 1.0, "{counts:?}");
    }

    #[test]
    fn loom_a_failure_replaced_before_it_is_counted() {
        loom::model(|| {
            // One slot: the second call replaces the first's outcome, maybe before the first
            // has counted it.
            let window = Arc::new(Window::new(WindowKind::Calls(1)));
            let failing = {
                let w = window.clone();
                thread::spawn(move || w.record(true, 0))
            };
            let succeeding = {
                let w = window.clone();
                thread::spawn(move || w.record(false, 0))
            };
            sane(window.counts(0));
            failing.join().unwrap();
            succeeding.join().unwrap();
            sane(window.counts(0));
        });
    }

    #[test]
    fn loom_a_clear_between_a_swap_and_its_count() {
        loom::model(|| {
            // One slot: the record replaces the failure and takes it off the count, maybe
            // after the clear has zeroed it.
            let window = Arc::new(Window::new(WindowKind::Calls(1)));
            window.record(true, 0);
            let recording = {
                let w = window.clone();
                thread::spawn(move || w.record(false, 0))
            };
            window.clear();
            recording.join().unwrap();
            sane(window.counts(0));
        });
    }

    #[test]
    fn loom_a_second_bucket_reset_while_another_records() {
        loom::model(|| {
            let window = Arc::new(Window::new(WindowKind::Seconds(1)));
            window.record(false, 0);
            let later = {
                let w = window.clone();
                thread::spawn(move || w.record(true, 1_000))
            };
            let same = {
                let w = window.clone();
                thread::spawn(move || w.record(true, 1_000))
            };
            sane(window.counts(1_000));
            later.join().unwrap();
            same.join().unwrap();
            sane(window.counts(1_000));
        });
    }
}
