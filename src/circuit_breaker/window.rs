//! Sliding windows of call outcomes, in atomics: the last N calls, or the last N seconds.

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
            } => Counts {
                calls: cursor.load(Ordering::Acquire).min(slots.len() as u64) as u32,
                failures: failures.load(Ordering::Acquire),
            },
            Window::Seconds { buckets } => {
                let second = now_ms / 1000 + 1;
                let span = buckets.len() as u64;
                buckets
                    .iter()
                    .filter(|b| {
                        let s = b.second.load(Ordering::Acquire);
                        s != 0 && s + span > second
                    })
                    .fold(Counts::default(), |acc, b| Counts {
                        calls: acc.calls + b.calls.load(Ordering::Acquire),
                        failures: acc.failures + b.failures.load(Ordering::Acquire),
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
