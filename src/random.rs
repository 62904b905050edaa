//! Uniform draws in [0, 1): from the thread-local generator, or seeded and repeatable.

use std::sync::atomic::{AtomicU64, Ordering};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// A source of uniform `f64` draws, lock-free. Seeded: the n-th draw uses a generator seeded
/// with `seed + n`, so a sequence of draws is repeatable.
#[derive(Debug, Default)]
pub(crate) struct UnitRng {
    seed: Option<AtomicU64>,
}

impl UnitRng {
    pub(crate) fn thread() -> Self {
        UnitRng { seed: None }
    }

    pub(crate) fn seeded(seed: u64) -> Self {
        UnitRng {
            seed: Some(AtomicU64::new(seed)),
        }
    }

    pub(crate) fn next_f64(&self) -> f64 {
        match &self.seed {
            Some(seed) => {
                SmallRng::seed_from_u64(seed.fetch_add(1, Ordering::Relaxed)).random::<f64>()
            }
            None => rand::rng().random::<f64>(),
        }
    }
}
