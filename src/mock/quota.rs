//! The mock's own quota accounting: sliding 60-second windows and Pacific days.

use std::collections::VecDeque;
use std::time::Duration;

use super::bodies::Dimension;
use crate::clock::pacific_day_start;
use crate::pool::ModelLimits;

const MINUTE_MS: u64 = 60_000;

/// Usage of one project+model.
#[derive(Default)]
pub(super) struct Usage {
    requests: VecDeque<u64>,
    tokens: VecDeque<(u64, u64)>,
    day: u64,
    day_count: u64,
}

/// Why a request is refused.
pub(super) struct Refusal {
    pub(super) dimension: Dimension,
    pub(super) limit: u64,
    pub(super) retry: Duration,
}

impl Usage {
    fn expire(&mut self, now: u64) {
        while self.requests.front().is_some_and(|&t| t + MINUTE_MS <= now) {
            self.requests.pop_front();
        }
        while self
            .tokens
            .front()
            .is_some_and(|&(t, _)| t + MINUTE_MS <= now)
        {
            self.tokens.pop_front();
        }
        let day = pacific_day_start(now);
        if day != self.day {
            self.day = day;
            self.day_count = 0;
        }
    }

    /// Admit and record a request of `tokens`, or say which limit refuses it (nothing recorded).
    pub(super) fn admit(
        &mut self,
        limits: &ModelLimits,
        tokens: u64,
        now: u64,
    ) -> Result<(), Refusal> {
        self.expire(now);
        if let Some(rpd) = limits.rpd.map(u64::from)
            && self.day_count >= rpd
        {
            let next = crate::clock::next_pacific_midnight(now);
            return Err(Refusal {
                dimension: Dimension::RequestsPerDay,
                limit: rpd,
                retry: Duration::from_millis(next - now),
            });
        }
        if let Some(rpm) = limits.rpm.map(u64::from)
            && self.requests.len() as u64 >= rpm
        {
            // The slot frees when the request that is `rpm` back leaves the window.
            let index = self.requests.len() - rpm.max(1) as usize;
            let oldest = self.requests.get(index).copied().unwrap_or(now);
            return Err(Refusal {
                dimension: Dimension::RequestsPerMinute,
                limit: rpm,
                retry: Duration::from_millis((oldest + MINUTE_MS).saturating_sub(now).max(1)),
            });
        }
        if let Some(tpm) = limits.tpm {
            let used: u64 = self.tokens.iter().map(|&(_, n)| n).sum();
            if used + tokens > tpm {
                let mut freed = 0;
                let mut at = now + MINUTE_MS;
                for &(t, n) in &self.tokens {
                    freed += n;
                    if used - freed + tokens <= tpm {
                        at = t + MINUTE_MS;
                        break;
                    }
                }
                return Err(Refusal {
                    dimension: Dimension::TokensPerMinute,
                    limit: tpm,
                    retry: Duration::from_millis(at.saturating_sub(now).max(1)),
                });
            }
        }
        self.requests.push_back(now);
        self.tokens.push_back((now, tokens));
        self.day_count += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpm_window_slides() {
        let limits = ModelLimits {
            rpm: Some(2),
            ..ModelLimits::default()
        };
        let mut usage = Usage::default();
        let t0 = 1_800_000_000_000;
        assert!(usage.admit(&limits, 1, t0).is_ok());
        assert!(usage.admit(&limits, 1, t0 + 10_000).is_ok());
        let refusal = usage.admit(&limits, 1, t0 + 20_000).err().unwrap();
        assert_eq!(refusal.dimension, Dimension::RequestsPerMinute);
        assert_eq!(refusal.retry, Duration::from_secs(40));
        assert!(usage.admit(&limits, 1, t0 + 60_000).is_ok());
    }

    #[test]
    fn tpm_counts_tokens() {
        let limits = ModelLimits {
            tpm: Some(100),
            ..ModelLimits::default()
        };
        let mut usage = Usage::default();
        let t0 = 1_800_000_000_000;
        assert!(usage.admit(&limits, 60, t0).is_ok());
        let refusal = usage.admit(&limits, 50, t0 + 1000).err().unwrap();
        assert_eq!(refusal.dimension, Dimension::TokensPerMinute);
        assert_eq!(refusal.retry, Duration::from_secs(59));
        assert!(usage.admit(&limits, 40, t0 + 1000).is_ok());
    }
}
