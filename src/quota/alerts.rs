//! Quota alerts: a hook when a project's use of a limit crosses a threshold.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::error::Error;
use crate::state::{Dimension, MeterSnapshot};

/// Default fraction of a limit that alerts: 90 %.
pub const DEFAULT_QUOTA_ALERT: f64 = 0.9;

/// A project's use of one of its limits crossed the alert threshold: given to the
/// [`QuotaLayer::on_alert`](super::QuotaLayer::on_alert) hook and logged (`warn`), once each
/// time use rises through the threshold (again only after it fell below, as a minute's window
/// moves on or a new Pacific day starts).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct QuotaAlert {
    /// The project.
    pub project: String,
    /// The model.
    pub model: String,
    /// Which limit.
    pub dimension: Dimension,
    /// Used in the current window (minute or day) after the request that crossed.
    pub used: u64,
    /// The limit.
    pub limit: u64,
    /// The threshold crossed, a fraction of the limit.
    pub threshold: f64,
}

type Hook = Arc<dyn Fn(&QuotaAlert) + Send + Sync>;
/// Project → model → which of its limits (in [`DIMENSIONS`] order) are above the threshold
/// now. Looked up by `&str`: nothing is allocated per request once a pair has been seen.
type Above = HashMap<Arc<str>, HashMap<Arc<str>, [bool; 4]>>;

/// Project and model pairs tracked at most; past it, a new pair's crossings are not reported
/// (model names can come from callers).
pub(crate) const MAX_TRACKED: usize = 4096;

const DIMENSIONS: [Dimension; 4] = [
    Dimension::RequestsPerMinute,
    Dimension::TokensPerMinute,
    Dimension::RequestsPerDay,
    Dimension::ImagesPerMinute,
];

/// `threshold` if it is a fraction of a limit, more than 0 and at most 1.
pub(crate) fn check_threshold(threshold: f64) -> Result<f64, Error> {
    if !threshold.is_finite() || threshold <= 0.0 || threshold > 1.0 {
        return Err(Error::config(format!(
            "quota alert threshold {threshold}: give a fraction of the limit, more than 0 and at most 1 (0.9 is 90 %)"
        )));
    }
    Ok(threshold)
}

/// The hook, the threshold, and which limits are above it now.
#[derive(Clone)]
pub(crate) struct Alerts {
    threshold: f64,
    hook: Option<Hook>,
    above: Arc<Mutex<Above>>,
}

impl Default for Alerts {
    fn default() -> Self {
        Alerts {
            threshold: DEFAULT_QUOTA_ALERT,
            hook: None,
            above: Arc::default(),
        }
    }
}

impl fmt::Debug for Alerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Alerts")
            .field("threshold", &self.threshold)
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

impl Alerts {
    pub(crate) fn set_threshold(&mut self, threshold: f64) -> Result<(), Error> {
        self.threshold = check_threshold(threshold)?;
        Ok(())
    }

    pub(crate) fn set_hook(&mut self, hook: Hook) {
        self.hook = Some(hook);
    }

    /// Remember what `earlier` alerted for (a stack rebuilt over the same pool's ledger: a
    /// limit still above the threshold is not announced again).
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn share_memory(&mut self, earlier: &Alerts, projects: &[Arc<str>]) {
        self.above = earlier.above.clone();
        // Projects gone with their keys are forgotten: the memory stays within the pool's.
        let kept: std::collections::HashSet<&str> = projects.iter().map(|p| &**p).collect();
        self.above
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|project, _| kept.contains(&**project));
    }

    /// Is anyone listening? (Only then is a snapshot taken per request.)
    #[inline]
    pub(crate) fn enabled(&self) -> bool {
        self.hook.is_some()
    }

    /// Look at a project's use after an admission; alert for limits that rose through the
    /// threshold.
    pub(crate) fn observe(&self, project: &str, model: &str, snapshot: &MeterSnapshot) {
        let Some(hook) = &self.hook else {
            return;
        };
        let usage = [snapshot.rpm, snapshot.tpm, snapshot.rpd, snapshot.ipm];
        let now_above = usage.map(|usage| {
            usage.is_some_and(|u| u.limit > 0 && u.used as f64 >= self.threshold * u.limit as f64)
        });
        let mut fired = Vec::new();
        {
            let mut above = self.above.lock().unwrap_or_else(|e| e.into_inner());
            let known = above.get(project).is_some_and(|m| m.contains_key(model));
            if !known {
                // Nothing above and nothing remembered: the common case, nothing to do.
                if !now_above.contains(&true) {
                    return;
                }
                let tracked: usize = above.values().map(HashMap::len).sum();
                if tracked >= MAX_TRACKED {
                    return;
                }
                above
                    .entry(Arc::from(project))
                    .or_default()
                    .insert(Arc::from(model), [false; 4]);
            }
            let Some(was_above) = above.get_mut(project).and_then(|m| m.get_mut(model)) else {
                return;
            };
            for (i, usage) in usage.iter().enumerate() {
                if now_above[i]
                    && !was_above[i]
                    && let Some(usage) = usage
                {
                    fired.push(QuotaAlert {
                        project: project.to_owned(),
                        model: model.to_owned(),
                        dimension: DIMENSIONS[i],
                        used: usage.used,
                        limit: usage.limit,
                        threshold: self.threshold,
                    });
                }
            }
            *was_above = now_above;
        }
        for alert in fired {
            tracing::warn!(
                project = %alert.project,
                model = %alert.model,
                dimension = alert.dimension.as_str(),
                used = alert.used,
                limit = alert.limit,
                "project {} has used {} of its {} {} for {} ({:.0} % alert)",
                alert.project,
                alert.used,
                alert.limit,
                alert.dimension.as_str(),
                alert.model,
                alert.threshold * 100.0
            );
            hook(&alert);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Usage;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A rebuilt stack shares what the last announced, less the projects no longer in its
    /// pool: the memory stays within the pool's projects.
    #[test]
    fn shared_memory_forgets_projects_gone() {
        let earlier = Alerts::default();
        {
            let mut above = earlier.above.lock().unwrap();
            for project in ["proj-kept", "proj-gone"] {
                above
                    .entry(Arc::from(project))
                    .or_default()
                    .insert(Arc::from("gemini-2.0-flash"), [true, false, false, false]);
            }
        }
        let mut rebuilt = Alerts::default();
        rebuilt.share_memory(&earlier, &[Arc::from("proj-kept"), Arc::from("proj-new")]);
        let above = rebuilt.above.lock().unwrap();
        assert!(Arc::ptr_eq(&rebuilt.above, &earlier.above));
        assert_eq!(above.len(), 1);
        assert!(above["proj-kept"]["gemini-2.0-flash"][0]);
    }

    fn rpm(used: u64) -> MeterSnapshot {
        MeterSnapshot {
            rpm: Some(Usage { used, limit: 10 }),
            ..MeterSnapshot::default()
        }
    }

    #[test]
    fn pairs_are_bounded_and_only_crossings_alert() {
        let fired = Arc::new(AtomicUsize::new(0));
        let count = fired.clone();
        let mut alerts = Alerts::default();
        alerts.set_hook(Arc::new(move |_| {
            count.fetch_add(1, Ordering::Relaxed);
        }));
        // Below the threshold nothing is remembered.
        alerts.observe("p", "m", &rpm(5));
        assert!(alerts.above.lock().unwrap().is_empty());
        for i in 0..MAX_TRACKED + 10 {
            alerts.observe("p", &format!("made-up-{i}"), &rpm(10));
        }
        assert_eq!(fired.load(Ordering::Relaxed), MAX_TRACKED);
        let tracked: usize = alerts
            .above
            .lock()
            .unwrap()
            .values()
            .map(HashMap::len)
            .sum();
        assert_eq!(tracked, MAX_TRACKED);
        // Down and up again: one more alert for that pair.
        alerts.observe("p", "made-up-0", &rpm(1));
        alerts.observe("p", "made-up-0", &rpm(9));
        assert_eq!(fired.load(Ordering::Relaxed), MAX_TRACKED + 1);
    }
}
