//! [`CostLayer`]: what every call costs, from the real `usageMetadata` of its answer (streamed
//! or not) and a [`Prices`] table, counted per model, project and caller against daily
//! [`Budget`]s that alert at thresholds and, if asked, refuse once spent.
//!
//! The answer's token counts are read as its body streams through (no buffering, no delay):
//! `promptTokenCount`, `cachedContentTokenCount`, `candidatesTokenCount` and
//! `thoughtsTokenCount` (OpenAI-compatible: `prompt_tokens`, `cached_tokens`,
//! `completion_tokens`), the last counts of a stream. When the body ends (or is dropped) the
//! call's [`CallCost`] is known: in the response's [`CostReport`] extension, in the log
//! (`debug`, target `tower_gemini::cost`), in the metric `gemini_cost_nano_usd_total{model,
//! project}`, and in [`Spend`] (today's spending per pool, project and caller).
//!
//! Put it outside [`stack`](crate::stack): the project comes from the
//! [`SelectedKey`](crate::SelectedKey)
//! extension the key rotation layer sets, the served model from a
//! [`ModelFallback`](crate::fallback::ModelFallback) if the request fell back. A caller is
//! named by an [`Account`] request extension (the gateway sets its client's name). Answers
//! served by a [`CacheLayer`](crate::cache::CacheLayer) outside it cost nothing and are not
//! counted.
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_gemini::cost::{Budget, CostLayer};
//! use tower_gemini::{KeyPool, stack};
//!
//! # fn build() -> Result<(), tower_gemini::Error> {
//! let pool = KeyPool::from_keys(["test-key-0001"])?;
//! let cost = CostLayer::new().budget(Budget::new().daily_usd(25.0)?.refuse_when_spent(true));
//! let spend = cost.spend().clone(); // for a status page
//! let layers = ServiceBuilder::new().layer(cost).layer(stack(&pool));
//! # let _ = (layers, spend);
//! # Ok(())
//! # }
//! ```

mod budget;
mod prices;
mod service;

use std::fmt;
use std::sync::{Arc, OnceLock};

use tower_layer::Layer;

pub use budget::{Budget, BudgetAlert, MAX_ACCOUNTS, Scope, ScopeSpend, Spend};
pub use prices::{PRICES_DATED, Price, Prices};
#[cfg(any(fuzzing, test))]
pub(crate) use service::FIELDS as USAGE_FIELDS;
pub use service::{Cost, CostBody, ResponseFuture};

use crate::model::Model;

/// Names the caller of a request (a request extension) for per-caller spending and budgets.
///
/// ```
/// use tower_gemini::cost::Account;
///
/// let request = http::Request::builder().extension(Account::new("alice")).body(()).unwrap();
/// assert_eq!(request.extensions().get::<Account>().unwrap().as_str(), "alice");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Account(Arc<str>);

impl Account {
    /// A caller's name.
    pub fn new(name: impl AsRef<str>) -> Self {
        Account(Arc::from(name.as_ref()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What one call cost.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CallCost {
    /// The model that answered.
    pub model: Option<Model>,
    /// The project whose key served it.
    pub project: Option<String>,
    /// The caller ([`Account`]).
    pub account: Option<String>,
    /// Prompt tokens, cached ones included.
    pub prompt_tokens: u64,
    /// Prompt tokens served from Google's context cache.
    pub cached_tokens: u64,
    /// Output tokens: candidates and thinking.
    pub output_tokens: u64,
    /// The cost, billionths of a US dollar.
    pub nano_usd: u64,
    /// Was the model in the price table? (If not, the cost is 0.)
    pub priced: bool,
}

impl CallCost {
    /// The cost in US dollars.
    pub fn usd(&self) -> f64 {
        self.nano_usd as f64 / 1e9
    }
}

/// A response extension: the call's [`CallCost`], once the answer's body has been read to
/// its end (a streamed answer's usage comes with its last chunk).
///
/// ```
/// use tower_gemini::cost::CostReport;
/// # let response = http::Response::new(());
/// let report = response.extensions().get::<CostReport>().cloned();
/// // … read the body …
/// if let Some(cost) = report.as_ref().and_then(CostReport::get) {
///     println!("${:.6} for {} tokens out", cost.usd(), cost.output_tokens);
/// }
/// ```
#[derive(Clone, Default)]
pub struct CostReport(Arc<OnceLock<CallCost>>);

impl CostReport {
    /// The cost, once the body has ended (or been dropped); `None` before, or when the
    /// answer reported no usage (an error).
    pub fn get(&self) -> Option<&CallCost> {
        self.0.get()
    }
}

impl fmt::Debug for CostReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CostReport").field(&self.get()).finish()
    }
}

/// Prices every call and counts it against daily budgets. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct CostLayer {
    prices: Arc<Prices>,
    spend: Spend,
}

impl Default for CostLayer {
    fn default() -> Self {
        CostLayer {
            prices: Arc::new(Prices::google()),
            spend: Spend::new(Budget::new()),
        }
    }
}

impl CostLayer {
    /// Google's prices ([`Prices::google`]), no budgets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Use this price table.
    pub fn prices(mut self, prices: Prices) -> Self {
        self.prices = Arc::new(prices);
        self
    }

    /// Count spending against `budget`. Set it before cloning the layer: clones share one
    /// ledger, and a new budget starts a new one.
    pub fn budget(mut self, budget: Budget) -> Self {
        self.spend = Spend::new(budget);
        self
    }

    /// A layer with these prices and this budget that counts on this one's ledger: what was
    /// spent today (and what calls in flight hold) still counts against the new budget (a live
    /// configuration reload). Thresholds that alerted today do not alert again.
    ///
    /// ```
    /// use tower_gemini::cost::{Budget, CostLayer, Prices, Scope};
    ///
    /// let layer = CostLayer::new().budget(Budget::new().daily_usd(10.0)?);
    /// let raised = layer.reconfigured(Prices::google(), Budget::new().daily_usd(20.0)?);
    /// // Both count on one ledger: what either records, the other sees.
    /// assert_eq!(raised.spend().today_usd(&Scope::Pool), layer.spend().today_usd(&Scope::Pool));
    /// # Ok::<(), tower_gemini::Error>(())
    /// ```
    pub fn reconfigured(&self, prices: Prices, budget: Budget) -> CostLayer {
        CostLayer {
            prices: Arc::new(prices),
            spend: self.spend.with_budget(budget),
        }
    }

    /// Today's spending (shared by the layer's clones and services).
    pub fn spend(&self) -> &Spend {
        &self.spend
    }

    /// The price table.
    pub fn price_table(&self) -> &Prices {
        &self.prices
    }
}

impl<S> Layer<S> for CostLayer {
    type Service = Cost<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Cost::new(inner, self.prices.clone(), self.spend.clone())
    }
}
