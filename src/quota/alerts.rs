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
/// Project, model and limit → is its use above the threshold now?
type Above = HashMap<(Arc<str>, Arc<str>, Dimension), bool>;

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
        if !threshold.is_finite() || threshold <= 0.0 || threshold > 1.0 {
            return Err(Error::config(format!(
                "quota alert threshold {threshold}: give a fraction of the limit, more than 0 and at most 1 (0.9 is 90 %)"
            )));
        }
        self.threshold = threshold;
        Ok(())
    }

    pub(crate) fn set_hook(&mut self, hook: Hook) {
        self.hook = Some(hook);
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
        let dimensions = [
            (Dimension::RequestsPerMinute, snapshot.rpm),
            (Dimension::TokensPerMinute, snapshot.tpm),
            (Dimension::RequestsPerDay, snapshot.rpd),
            (Dimension::ImagesPerMinute, snapshot.ipm),
        ];
        let mut fired = Vec::new();
        {
            let mut above = self.above.lock().unwrap_or_else(|e| e.into_inner());
            for (dimension, usage) in dimensions {
                let Some(usage) = usage.filter(|u| u.limit > 0) else {
                    continue;
                };
                let now_above = usage.used as f64 >= self.threshold * usage.limit as f64;
                let key = (Arc::from(project), Arc::from(model), dimension);
                let was_above = above.get(&key).copied().unwrap_or(false);
                if now_above != was_above {
                    above.insert(key, now_above);
                }
                if now_above && !was_above {
                    fired.push(QuotaAlert {
                        project: project.to_owned(),
                        model: model.to_owned(),
                        dimension,
                        used: usage.used,
                        limit: usage.limit,
                        threshold: self.threshold,
                    });
                }
            }
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
