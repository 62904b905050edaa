//! [`QuotaLayer`]: applies the [`Quota`](super::Quota) service.

use std::sync::Arc;

use tower_layer::Layer;

use super::Quota;
use super::alerts::{Alerts, QuotaAlert};
use crate::error::Error;
use crate::pool::KeyPool;

/// Applies [`Quota`](super::Quota): local RPM/TPM/RPD/IPM limits per project and model, so that a request
/// the quota will refuse is never sent. See the [module docs](super).
///
/// It meters what is sent with the key [`KeyRotationLayer`](crate::KeyRotationLayer) chose:
/// the slot the pool reserved in the ledger when it chose the key (or, without one, a slot
/// admitted here), corrected by the answer's real token count and refunded when Google refused
/// the request. Waiting for a slot is a property of selection:
/// [`KeyRotationLayer::wait_up_to`](crate::KeyRotationLayer::wait_up_to).
#[derive(Clone, Debug)]
pub struct QuotaLayer {
    pool: KeyPool,
    alerts: Alerts,
}

impl QuotaLayer {
    /// Meter against `pool`'s ledger (the one its selection consults). Sits inside
    /// [`KeyRotationLayer`](crate::KeyRotationLayer), which records the chosen key.
    pub fn new(pool: &KeyPool) -> Self {
        QuotaLayer {
            pool: pool.clone(),
            alerts: Alerts::default(),
        }
    }

    /// Call `hook` (and log a warning) when a project's use of one of its limits (RPM, TPM,
    /// RPD, IPM) for a model rises through the alert threshold (default 90 %,
    /// [`alert_at`](Self::alert_at)): operators hear of exhaustion before callers do. Once per
    /// crossing: again only after use fell below. Keep the hook quick; it runs on the
    /// request's task.
    ///
    /// ```
    /// use tower_gemini::{KeyPool, QuotaLayer, stack};
    ///
    /// let pool = KeyPool::from_keys(["test-key-0001"])?;
    /// let quota = QuotaLayer::new(&pool).alert_at(0.8)?.on_alert(|alert| {
    ///     eprintln!("{} at {}/{} {}", alert.project, alert.used, alert.limit, alert.dimension);
    /// });
    /// let layer = stack(&pool).quota(quota);
    /// # let _ = layer;
    /// # Ok::<(), tower_gemini::Error>(())
    /// ```
    pub fn on_alert(mut self, hook: impl Fn(&QuotaAlert) + Send + Sync + 'static) -> Self {
        self.alerts.set_hook(Arc::new(hook));
        self
    }

    /// This layer, remembering which limits `earlier` announced: the gateway's stack rebuilt
    /// on a reload or a key change does not announce them again.
    #[cfg_attr(not(feature = "gateway"), allow(dead_code))]
    pub(crate) fn remembering(mut self, earlier: &QuotaLayer) -> Self {
        self.alerts
            .share_memory(&earlier.alerts, &self.pool.project_names());
        self
    }

    /// The fraction of a limit at which [`on_alert`](Self::on_alert) fires, in `(0, 1]`.
    pub fn alert_at(mut self, threshold: f64) -> Result<Self, Error> {
        self.alerts.set_threshold(threshold)?;
        Ok(self)
    }
}

impl<S> Layer<S> for QuotaLayer {
    type Service = Quota<S>;

    fn layer(&self, inner: S) -> Quota<S> {
        Quota::new(inner, self.pool.clone(), self.alerts.clone())
    }
}
