//! The gateway's `[gateway.cache]`, `[gateway.fallback]`, `[gateway.budget]` and
//! `[gateway.prices]` tables: what spends less quota and money.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::cache::CacheLayer;
use crate::cost::{Budget, Price, Prices};
use crate::error::Error;
use crate::fallback::FallbackLayer;
use crate::quota::DEFAULT_QUOTA_ALERT;

/// `[gateway.cache]`: present (even empty) to cache repeated deterministic prompts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCache {
    max_mb: Option<u64>,
    ttl_secs: Option<u64>,
    sampled: Option<bool>,
    /// Share answers across client tokens (default: each client its own cache scope).
    shared: Option<bool>,
    /// Per-model TTLs, seconds.
    ttl: Option<BTreeMap<String, u64>>,
}

/// `[gateway.budget]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileBudget {
    daily_usd: Option<f64>,
    per_project_usd: Option<f64>,
    per_client_usd: Option<f64>,
    projects: Option<BTreeMap<String, f64>>,
    thresholds: Option<Vec<f64>>,
    refuse: Option<bool>,
}

/// One model of `[gateway.prices]`, US dollars per million tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FilePrice {
    input: f64,
    output: f64,
    cached_input: Option<f64>,
}

/// The four tables, as read.
#[derive(Debug, Default, Deserialize)]
pub(super) struct FileSaving {
    pub(super) cache: Option<FileCache>,
    pub(super) fallback: Option<BTreeMap<String, Vec<String>>>,
    pub(super) budget: Option<FileBudget>,
    pub(super) prices: Option<BTreeMap<String, FilePrice>>,
    pub(super) quota_alert: Option<f64>,
}

/// The effective settings.
#[derive(Clone, Debug)]
pub struct Saving {
    /// The response cache, if `[gateway.cache]` is there.
    pub cache: Option<CacheLayer>,
    /// Do clients share cached answers (`[gateway.cache] shared = true`)? By default each
    /// client token has its own scope: no client learns what another asked, or gets its answer.
    pub cache_shared: bool,
    /// Fallback chains (`[gateway.fallback]`: `"gemini-2.5-pro" = ["gemini-2.5-flash"]`).
    pub fallback: FallbackLayer,
    /// Google's prices with `[gateway.prices]` over them.
    pub prices: Prices,
    /// Daily budgets (`[gateway.budget]`); alerts are logged and listed in the status API.
    pub budget: Budget,
    /// The fraction of a project's limit that raises a quota alert (`quota_alert`, default 0.9).
    pub quota_alert: f64,
}

impl Default for Saving {
    fn default() -> Self {
        Saving {
            cache: None,
            cache_shared: false,
            fallback: FallbackLayer::new(),
            prices: Prices::google(),
            budget: Budget::new(),
            quota_alert: DEFAULT_QUOTA_ALERT,
        }
    }
}

impl FileSaving {
    pub(super) fn resolve(self) -> Result<Saving, Error> {
        fn in_table(table: &'static str) -> impl Fn(Error) -> Error + Copy {
            move |e: Error| e.context(format!("[gateway.{table}]"))
        }
        let cache_shared = self
            .cache
            .as_ref()
            .and_then(|file| file.shared)
            .unwrap_or(false);
        let cache = self.cache.map(|file| {
            let mut cache = CacheLayer::new();
            if let Some(mb) = file.max_mb {
                cache = cache.max_bytes(mb.saturating_mul(1024 * 1024));
            }
            if let Some(secs) = file.ttl_secs {
                cache = cache.default_ttl(Duration::from_secs(secs));
            }
            if let Some(sampled) = file.sampled {
                cache = cache.cache_sampled(sampled);
            }
            for (model, secs) in file.ttl.unwrap_or_default() {
                cache = cache.ttl(model, Duration::from_secs(secs));
            }
            cache
        });
        let mut fallback = FallbackLayer::new();
        for (model, then) in self.fallback.unwrap_or_default() {
            fallback = fallback.chain(&model, then).map_err(in_table("fallback"))?;
        }
        let mut prices = Prices::google();
        for (model, price) in self.prices.unwrap_or_default() {
            let cached = price.cached_input.unwrap_or(price.input);
            let price = Price::per_million(price.input, price.output, cached)
                .map_err(|e| e.context(format!("[gateway.prices.\"{model}\"]")))?;
            prices = prices.set(&model, price).map_err(in_table("prices"))?;
        }
        let mut budget = Budget::new();
        if let Some(file) = self.budget {
            let at = in_table("budget");
            if let Some(usd) = file.daily_usd {
                budget = budget.daily_usd(usd).map_err(at)?;
            }
            if let Some(usd) = file.per_project_usd {
                budget = budget.per_project_usd(usd).map_err(at)?;
            }
            if let Some(usd) = file.per_client_usd {
                budget = budget.per_account_usd(usd).map_err(at)?;
            }
            for (project, usd) in file.projects.unwrap_or_default() {
                budget = budget.project_usd(project, usd).map_err(at)?;
            }
            if let Some(thresholds) = file.thresholds {
                budget = budget.thresholds(thresholds).map_err(at)?;
            }
            budget = budget.refuse_when_spent(file.refuse.unwrap_or(false));
        }
        let quota_alert =
            crate::quota::check_alert_threshold(self.quota_alert.unwrap_or(DEFAULT_QUOTA_ALERT))
                .map_err(|e| e.context("[gateway] quota_alert"))?;
        Ok(Saving {
            cache,
            cache_shared,
            fallback,
            prices,
            budget,
            quota_alert,
        })
    }
}

impl Saving {
    /// For the configuration printed at start.
    pub(super) fn describe(&self) -> String {
        let cache = match &self.cache {
            Some(cache) => format!(
                "on, at most {} MiB",
                cache.stats().max_bytes / (1024 * 1024)
            ),
            None => "off".to_owned(),
        };
        let chains: Vec<String> = self
            .fallback
            .chains()
            .into_iter()
            .map(|(model, then)| {
                let then: Vec<&str> = then.iter().map(crate::Model::as_str).collect();
                format!("{model} → {}", then.join(" → "))
            })
            .collect();
        format!(
            "cache: {cache}\nfallback: {}\nbudget: {:?}\nquota alert at {:.0} %",
            if chains.is_empty() {
                "none".to_owned()
            } else {
                chains.join("; ")
            },
            self.budget,
            self.quota_alert * 100.0
        )
    }
}

/// `budget` with its alerts logged and kept in `alerts` for the status API.
fn alerting(budget: &Budget, alerts: &Alerts) -> Budget {
    let sink = alerts.clone();
    budget.clone().on_alert(move |alert| {
        let (kind, name) = scope_json(&alert.scope);
        push(
            &sink,
            serde_json::json!({
                "kind": "budget",
                "at": now_ms(),
                "scope": kind,
                "name": name,
                "threshold": alert.threshold,
                "spent_usd": alert.spent_usd,
                "budget_usd": alert.budget_usd,
            }),
        );
    })
}

/// Alerts kept for the status API (the newest last).
const RECENT_ALERTS: usize = 50;

/// The cache, fallback, cost and alerts of a running gateway: kept across key changes (the
/// stack is rebuilt over a new pool with the same ones).
pub(crate) struct Savings {
    cache: Option<CacheLayer>,
    /// What a configuration reload changes (the stack is then rebuilt with it).
    tuned: std::sync::RwLock<Tuned>,
    alerts: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<serde_json::Value>>>,
    fallbacks: std::sync::Mutex<BTreeMap<(String, String, &'static str), u64>>,
    /// The last stack's quota layer: the next remembers what it announced.
    quota: std::sync::Mutex<Option<crate::QuotaLayer>>,
}

/// Fallback chains, prices and budgets, the quota alert: reloadable.
struct Tuned {
    fallback: FallbackLayer,
    cost: crate::cost::CostLayer,
    quota_alert: f64,
}

type Alerts = std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<serde_json::Value>>>;

fn push(alerts: &Alerts, alert: serde_json::Value) {
    let mut alerts = alerts.lock().unwrap_or_else(|e| e.into_inner());
    if alerts.len() == RECENT_ALERTS {
        alerts.pop_front();
    }
    alerts.push_back(alert);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn scope_json(scope: &crate::cost::Scope) -> (&'static str, Option<&str>) {
    match scope {
        crate::cost::Scope::Pool => ("pool", None),
        crate::cost::Scope::Project(name) => ("project", Some(name)),
        crate::cost::Scope::Account(name) => ("client", Some(name)),
    }
}

impl Savings {
    pub(crate) fn new(saving: &Saving) -> Savings {
        let alerts: Alerts = Default::default();
        let cost = crate::cost::CostLayer::new()
            .prices(saving.prices.clone())
            .budget(alerting(&saving.budget, &alerts));
        Savings {
            cache: saving.cache.clone(),
            tuned: std::sync::RwLock::new(Tuned {
                fallback: saving.fallback.clone(),
                cost,
                quota_alert: saving.quota_alert,
            }),
            alerts,
            fallbacks: Default::default(),
            quota: Default::default(),
        }
    }

    fn tuned(&self) -> std::sync::RwLockReadGuard<'_, Tuned> {
        self.tuned.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Take `saving`'s fallback chains, prices, budgets and quota alert from now on (the stack
    /// must be rebuilt to use them): today's spending carries over to the new budgets. The
    /// cache is kept as it is. What changed, in words.
    pub(crate) fn reload(&self, saving: &Saving) -> Vec<String> {
        let mut tuned = self.tuned.write().unwrap_or_else(|e| e.into_inner());
        let mut changed = Vec::new();
        if tuned.fallback.chains() != saving.fallback.chains() {
            changed.push("fallback".to_owned());
        }
        if tuned.cost.price_table() != &saving.prices {
            changed.push("prices".to_owned());
        }
        if !tuned.cost.spend().budget().same_settings(&saving.budget) {
            changed.push("budget".to_owned());
        }
        if tuned.quota_alert != saving.quota_alert {
            changed.push("quota_alert".to_owned());
        }
        let budget = alerting(&saving.budget, &self.alerts);
        tuned.cost = tuned.cost.reconfigured(saving.prices.clone(), budget);
        tuned.fallback = saving.fallback.clone();
        tuned.quota_alert = saving.quota_alert;
        changed
    }

    /// The quota layer over `pool`, its alerts logged and kept for the status API.
    pub(crate) fn quota(&self, pool: &crate::KeyPool) -> crate::QuotaLayer {
        let sink = self.alerts.clone();
        let layer = crate::QuotaLayer::new(pool).on_alert(move |alert| {
            push(
                &sink,
                serde_json::json!({
                    "kind": "quota",
                    "at": now_ms(),
                    "project": alert.project,
                    "model": alert.model,
                    "dimension": alert.dimension.as_str(),
                    "used": alert.used,
                    "limit": alert.limit,
                    "threshold": alert.threshold,
                }),
            );
        });
        // The threshold was checked when the configuration was read.
        let mut layer = layer
            .clone()
            .alert_at(self.tuned().quota_alert)
            .unwrap_or(layer);
        let mut last = self.quota.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(earlier) = last.as_ref() {
            layer = layer.remembering(earlier);
        }
        *last = Some(layer.clone());
        layer
    }

    /// Fallback chains for the stack.
    pub(crate) fn fallback(&self) -> FallbackLayer {
        self.tuned().fallback.clone()
    }

    /// The stack's service behind the cost layer and, if configured, the cache.
    pub(crate) fn compose<S, B>(&self, gemini: S) -> crate::BoxGemini
    where
        S: tower_service::Service<
                http::Request<http_body_util::Full<bytes::Bytes>>,
                Response = http::Response<B>,
                Error = Error,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
        B::Error: Into<crate::BoxError>,
    {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        use tower_layer::Layer;

        let costed = self.tuned().cost.layer(gemini);
        match &self.cache {
            Some(cache) => tower::util::BoxCloneSyncService::new(cache.layer(costed).map_response(
                |response: http::Response<_>| response.map(|body| body.map_err(Into::into).boxed()),
            )),
            None => tower::util::BoxCloneSyncService::new(costed.map_response(
                |response: http::Response<_>| response.map(|body| body.map_err(Into::into).boxed()),
            )),
        }
    }

    /// Count an answer served by a fallback model.
    pub(crate) fn fell_back(&self, fallback: &crate::fallback::ModelFallback) {
        let key = (
            fallback.requested.as_str().to_owned(),
            fallback.served.as_str().to_owned(),
            fallback.reason.as_str(),
        );
        // Requested models with a chain and the chain's models: a bounded set.
        *self
            .fallbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default() += 1;
    }

    /// For the status API: cache, fallback, cost today against budgets, recent alerts.
    pub(crate) fn status(&self) -> serde_json::Value {
        let cache = self.cache.as_ref().map(|cache| {
            let stats = cache.stats();
            serde_json::json!({
                "hits": stats.hits,
                "misses": stats.misses,
                "hit_rate": stats.hit_rate(),
                "entries": stats.entries,
                "bytes": stats.bytes,
                "max_bytes": stats.max_bytes,
            })
        });
        let tuned = self.tuned();
        let chains: BTreeMap<&str, Vec<&str>> = tuned
            .fallback
            .chains()
            .into_iter()
            .map(|(model, then)| (model, then.iter().map(crate::Model::as_str).collect()))
            .collect();
        let served: Vec<serde_json::Value> = self
            .fallbacks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((requested, served, reason), count)| {
                serde_json::json!({
                    "requested": requested,
                    "served": served,
                    "reason": reason,
                    "count": count,
                })
            })
            .collect();
        let today: Vec<serde_json::Value> = tuned
            .cost
            .spend()
            .today_by_scope()
            .into_iter()
            .map(|spend| {
                let (kind, name) = scope_json(&spend.scope);
                serde_json::json!({
                    "scope": kind,
                    "name": name,
                    "spent_usd": spend.spent_usd,
                    "calls": spend.calls,
                    "budget_usd": spend.budget_usd,
                })
            })
            .collect();
        let alerts: Vec<serde_json::Value> = self
            .alerts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        serde_json::json!({
            "cache": cache,
            "fallback": { "chains": chains, "served": served },
            "cost": { "prices_dated": crate::cost::PRICES_DATED, "today": today },
            "alerts": alerts,
        })
    }
}
