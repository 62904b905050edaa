//! Daily budgets and what was spent today: [`Budget`], [`Spend`], [`BudgetAlert`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::{Clock, SystemClock, next_pacific_midnight, pacific_day_start};
use crate::error::{Error, ErrorKind};

/// Accounts (gateway clients), and projects, tracked one by one per day; later ones count only
/// in the pool's total.
pub const MAX_ACCOUNTS: usize = 10_000;

/// What a budget is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Everything the pool spends.
    Pool,
    /// One Google Cloud project (the keys' `project`).
    Project(String),
    /// One caller: a gateway client, or whatever an [`Account`](super::Account) extension
    /// names.
    Account(String),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Pool => f.write_str("pool"),
            Scope::Project(name) => write!(f, "project {name}"),
            Scope::Account(name) => write!(f, "client {name}"),
        }
    }
}

/// A budget threshold crossed today, given to the [`Budget::on_alert`] hook (once per
/// threshold, scope and Pacific day) and logged.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BudgetAlert {
    /// Whose budget.
    pub scope: Scope,
    /// The fraction of the budget crossed, e.g. `0.8`.
    pub threshold: f64,
    /// Spent today, US dollars.
    pub spent_usd: f64,
    /// The day's budget, US dollars.
    pub budget_usd: f64,
    /// The Pacific day the spending belongs to: its start, Unix milliseconds.
    pub day_start_ms: u64,
}

type Hook = Arc<dyn Fn(&BudgetAlert) + Send + Sync>;

/// Daily spending budgets — for the pool, each project, each caller — that reset at midnight
/// Pacific, as Google's daily quotas do, with alert thresholds (default 80 % and 100 %) and,
/// optionally, refusal past 100 %.
///
/// ```
/// use tower_gemini::cost::Budget;
///
/// let budget = Budget::new()
///     .daily_usd(50.0)?
///     .per_project_usd(20.0)?
///     .per_account_usd(5.0)?
///     .account_usd("batch-jobs", 30.0)?
///     .refuse_when_spent(true)
///     .on_alert(|alert| eprintln!("{} crossed {:.0} % of its budget", alert.scope, alert.threshold * 100.0));
/// # let _ = budget;
/// # Ok::<(), tower_gemini::Error>(())
/// ```
#[derive(Clone)]
pub struct Budget {
    pool: Option<u64>,
    per_project: Option<u64>,
    projects: HashMap<String, u64>,
    per_account: Option<u64>,
    accounts: HashMap<String, u64>,
    thresholds: Vec<f64>,
    refuse: bool,
    hook: Option<Hook>,
    clock: Arc<dyn Clock>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            pool: None,
            per_project: None,
            projects: HashMap::new(),
            per_account: None,
            accounts: HashMap::new(),
            thresholds: vec![0.8, 1.0],
            refuse: false,
            hook: None,
            clock: Arc::new(SystemClock::new()),
        }
    }
}

fn nanos(what: &str, usd: f64) -> Result<u64, Error> {
    if !usd.is_finite() || usd <= 0.0 || usd > 1e9 {
        return Err(Error::config(format!(
            "{what}: a daily budget is US dollars, more than 0 and at most 1,000,000,000; got {usd}"
        )));
    }
    Ok((usd * 1e9).round() as u64)
}

impl Budget {
    /// No budgets: spending is counted, nothing alerts or is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// The pool's daily budget, US dollars.
    pub fn daily_usd(mut self, usd: f64) -> Result<Self, Error> {
        self.pool = Some(nanos("pool budget", usd)?);
        Ok(self)
    }

    /// Every project's daily budget, US dollars (unless set by [`project_usd`](Self::project_usd)).
    pub fn per_project_usd(mut self, usd: f64) -> Result<Self, Error> {
        self.per_project = Some(nanos("per-project budget", usd)?);
        Ok(self)
    }

    /// One project's daily budget, US dollars.
    pub fn project_usd(mut self, project: impl Into<String>, usd: f64) -> Result<Self, Error> {
        let project = project.into();
        let budget = nanos(&format!("budget of project {project}"), usd)?;
        self.projects.insert(project, budget);
        Ok(self)
    }

    /// Every caller's daily budget, US dollars (unless set by [`account_usd`](Self::account_usd)).
    pub fn per_account_usd(mut self, usd: f64) -> Result<Self, Error> {
        self.per_account = Some(nanos("per-client budget", usd)?);
        Ok(self)
    }

    /// One caller's daily budget, US dollars.
    pub fn account_usd(mut self, account: impl Into<String>, usd: f64) -> Result<Self, Error> {
        let account = account.into();
        let budget = nanos(&format!("budget of client {account}"), usd)?;
        self.accounts.insert(account, budget);
        Ok(self)
    }

    /// The fractions of a budget that alert when crossed (default `[0.8, 1.0]`), each in
    /// `(0, 10]`.
    pub fn thresholds(mut self, thresholds: impl IntoIterator<Item = f64>) -> Result<Self, Error> {
        let mut all: Vec<f64> = thresholds.into_iter().collect();
        if let Some(bad) = all
            .iter()
            .find(|t| !t.is_finite() || **t <= 0.0 || **t > 10.0)
        {
            return Err(Error::config(format!(
                "budget threshold {bad}: give fractions of the budget, more than 0 and at most 10 (0.8 is 80 %)"
            )));
        }
        all.sort_by(f64::total_cmp);
        all.dedup();
        self.thresholds = all;
        Ok(self)
    }

    /// Refuse requests (with [`ErrorKind::BudgetSpent`], 429 until midnight Pacific) once the
    /// pool's or the caller's budget is spent. Project budgets alert but do not refuse. Off by
    /// default.
    pub fn refuse_when_spent(mut self, refuse: bool) -> Self {
        self.refuse = refuse;
        self
    }

    /// Called at each threshold crossing (once per threshold, scope and day), on the task that
    /// finished the answer: keep it quick (send to a channel to do more).
    pub fn on_alert(mut self, hook: impl Fn(&BudgetAlert) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// The clock that says when the Pacific day ends (default: the system's).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    fn limit(&self, scope: &Scope) -> Option<u64> {
        match scope {
            Scope::Pool => self.pool,
            Scope::Project(name) => self.project_limit(name),
            Scope::Account(name) => self.account_limit(name),
        }
    }

    /// Do `self` and `other` set the same limits, thresholds and refusal (hooks and clocks
    /// aside)? (A reload of the gateway's configuration keeps the running budget if so.)
    #[cfg(feature = "gateway")]
    pub(crate) fn same_settings(&self, other: &Budget) -> bool {
        self.pool == other.pool
            && self.per_project == other.per_project
            && self.projects == other.projects
            && self.per_account == other.per_account
            && self.accounts == other.accounts
            && self.thresholds == other.thresholds
            && self.refuse == other.refuse
    }

    /// Are calls refused once a budget is spent?
    pub(crate) fn refuses(&self) -> bool {
        self.refuse
    }

    /// Is any budget set (so an unpriced call must not count as free)?
    pub(crate) fn is_limited(&self) -> bool {
        self.pool.is_some()
            || self.per_project.is_some()
            || self.per_account.is_some()
            || !self.projects.is_empty()
            || !self.accounts.is_empty()
    }

    fn project_limit(&self, name: &str) -> Option<u64> {
        self.projects.get(name).copied().or(self.per_project)
    }

    fn account_limit(&self, name: &str) -> Option<u64> {
        self.accounts.get(name).copied().or(self.per_account)
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("pool_nano_usd", &self.pool)
            .field("per_project_nano_usd", &self.per_project)
            .field("per_account_nano_usd", &self.per_account)
            .field("thresholds", &self.thresholds)
            .field("refuse", &self.refuse)
            .finish_non_exhaustive()
    }
}

#[derive(Default, Clone, Copy)]
struct Spent {
    nanos: u64,
    /// Estimated costs of calls admitted and not yet settled (see [`Spend::reserve`]).
    reserved: u64,
    calls: u64,
    /// How many of the (sorted) thresholds have alerted today.
    crossed: usize,
}

/// Today's spending: the pool's, and per project and per account by name (looked up by `&str`:
/// no allocation per call once a name has been seen).
struct Day {
    start: u64,
    end: u64,
    pool: Spent,
    projects: SpendMap,
    accounts: SpendMap,
}

impl Day {
    fn get(&self, scope: &Scope) -> Option<&Spent> {
        match scope {
            Scope::Pool => Some(&self.pool),
            Scope::Project(name) => self.projects.get(name),
            Scope::Account(name) => self.accounts.get(name),
        }
    }

    fn scopes(&self) -> impl Iterator<Item = Scope> + '_ {
        let projects = self.projects.keys().cloned().map(Scope::Project);
        let accounts = self.accounts.keys().cloned().map(Scope::Account);
        std::iter::once(Scope::Pool).chain(projects).chain(accounts)
    }
}

/// How many of `new`'s thresholds count as crossed for `spent`: those whose amount (under the
/// new limit) is at most the highest amount `old`'s alerts announced today.
fn realign(spent: &mut Spent, old: (&Budget, Option<u64>), new: (&Budget, Option<u64>)) {
    let announced = match (spent.crossed.checked_sub(1), old.1) {
        (Some(last), Some(limit)) => old.0.thresholds.get(last).map_or(0.0, |t| t * limit as f64),
        _ => 0.0,
    };
    spent.crossed = match new.1 {
        Some(limit) => new
            .0
            .thresholds
            .iter()
            .take_while(|t| **t * limit as f64 <= announced)
            .count(),
        None => 0,
    };
}

/// `name`'s entry, made if there is room for one more name.
/// Spending by name, hashed with foldhash: looked up four times a call (SipHash cost ≈ 800
/// instructions a call in the gateway).
type SpendMap = HashMap<String, Spent, foldhash::fast::RandomState>;

fn slot<'a>(map: &'a mut SpendMap, name: &str) -> Option<&'a mut Spent> {
    if !map.contains_key(name) {
        if map.len() >= MAX_ACCOUNTS {
            return None;
        }
        map.insert(name.to_owned(), Spent::default());
    }
    map.get_mut(name)
}

/// What was spent today, per scope, against the [`Budget`]: shared by every clone of a
/// [`CostLayer`](super::CostLayer) (see [`CostLayer::spend`](super::CostLayer::spend)).
#[derive(Clone)]
pub struct Spend {
    budget: Arc<Budget>,
    day: Arc<Mutex<Day>>,
}

/// An estimated cost held against today's budgets while a call is in flight; given back when
/// dropped (after the call's real cost was recorded, or when it failed).
#[must_use]
pub(crate) struct Reservation {
    held: Option<Held>,
}

struct Held {
    spend: Spend,
    account: Option<String>,
    nanos: u64,
    day_start: u64,
}

impl Reservation {
    pub(crate) fn none() -> Reservation {
        Reservation { held: None }
    }

    /// The estimate held, nano-USD (0 when budgets do not refuse).
    pub(crate) fn nanos(&self) -> u64 {
        self.held.as_ref().map_or(0, |held| held.nanos)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            held.spend.release(&held);
        }
    }
}

/// One scope's spending today.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ScopeSpend {
    /// Whose.
    pub scope: Scope,
    /// Spent today, US dollars.
    pub spent_usd: f64,
    /// Priced calls today.
    pub calls: u64,
    /// The day's budget, if one is set, US dollars.
    pub budget_usd: Option<f64>,
}

fn usd(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

/// US dollars as a person reads them: cents, or three significant digits for less than a
/// cent (a budget of $0.00006 is not "$0.00").
struct Dollars(f64);

impl fmt::Display for Dollars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.0;
        if !value.is_finite() || value.abs() >= 0.01 || value.abs() < 5e-10 {
            return write!(f, "${value:.2}");
        }
        // Three significant digits, at most nano-dollars, trailing zeros dropped.
        let magnitude = value.abs().log10().floor() as i32;
        let decimals = (2 - magnitude).clamp(2, 9) as usize;
        let text = format!("{value:.decimals$}");
        let text = text.trim_end_matches('0');
        write!(f, "${text}")
    }
}

impl Spend {
    pub(crate) fn new(budget: Budget) -> Spend {
        let now = budget.clock.now_millis();
        let day = Day {
            start: pacific_day_start(now),
            end: next_pacific_midnight(now),
            pool: Spent::default(),
            projects: SpendMap::default(),
            accounts: SpendMap::default(),
        };
        Spend {
            budget: Arc::new(budget),
            day: Arc::new(Mutex::new(day)),
        }
    }

    /// The same day's spending counted against `budget` from now on. An amount a threshold
    /// announced today is not announced again: the new thresholds at or below it count as
    /// crossed, the others alert when the spending reaches them (a raised budget's 80 % too).
    pub(crate) fn with_budget(&self, budget: Budget) -> Spend {
        {
            let mut day = self.day.lock().unwrap_or_else(|e| e.into_inner());
            let old = &*self.budget;
            realign(&mut day.pool, (old, old.pool), (&budget, budget.pool));
            for (name, spent) in day.projects.iter_mut() {
                let limits = (old.project_limit(name), budget.project_limit(name));
                realign(spent, (old, limits.0), (&budget, limits.1));
            }
            for (name, spent) in day.accounts.iter_mut() {
                let limits = (old.account_limit(name), budget.account_limit(name));
                realign(spent, (old, limits.0), (&budget, limits.1));
            }
        }
        Spend {
            budget: Arc::new(budget),
            day: self.day.clone(),
        }
    }

    /// The budget.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    fn today(&self) -> std::sync::MutexGuard<'_, Day> {
        let now = self.budget.clock.now_millis();
        let mut day = self.day.lock().unwrap_or_else(|e| e.into_inner());
        if now >= day.end {
            day.start = pacific_day_start(now);
            day.end = next_pacific_midnight(now);
            day.pool = Spent::default();
            day.projects.clear();
            day.accounts.clear();
        }
        day
    }

    /// Count `nanos` spent for `project` by `account`; alerts for thresholds crossed.
    pub(crate) fn record(&self, project: Option<&str>, account: Option<&str>, nanos: u64) {
        let mut alerts = Vec::new();
        {
            let mut day = self.today();
            let day_start = day.start;
            let budget = &*self.budget;
            let mut add = |spent: &mut Spent, limit: Option<u64>, scope: &dyn Fn() -> Scope| {
                spent.nanos = spent.nanos.saturating_add(nanos);
                spent.calls += 1;
                let Some(limit) = limit else {
                    return;
                };
                let crossed = budget
                    .thresholds
                    .iter()
                    .take_while(|t| spent.nanos as f64 >= **t * limit as f64)
                    .count();
                for threshold in &budget.thresholds[spent.crossed.min(crossed)..crossed] {
                    alerts.push(BudgetAlert {
                        scope: scope(),
                        threshold: *threshold,
                        spent_usd: usd(spent.nanos),
                        budget_usd: usd(limit),
                        day_start_ms: day_start,
                    });
                }
                spent.crossed = spent.crossed.max(crossed);
            };
            add(&mut day.pool, budget.pool, &|| Scope::Pool);
            if let Some(name) = project
                && let Some(spent) = slot(&mut day.projects, name)
            {
                add(spent, budget.project_limit(name), &|| {
                    Scope::Project(name.to_owned())
                });
            }
            if let Some(name) = account
                && let Some(spent) = slot(&mut day.accounts, name)
            {
                add(spent, budget.account_limit(name), &|| {
                    Scope::Account(name.to_owned())
                });
            }
        }
        for alert in alerts {
            tracing::warn!(
                scope = %alert.scope,
                threshold = alert.threshold,
                spent_usd = alert.spent_usd,
                budget_usd = alert.budget_usd,
                "{} has spent {:.0} % of its daily budget ({} of {})",
                alert.scope,
                alert.threshold * 100.0,
                Dollars(alert.spent_usd),
                Dollars(alert.budget_usd)
            );
            if let Some(hook) = &self.budget.hook {
                hook(&alert);
            }
        }
    }

    /// The refusal for a request by `account` when budgets refuse and the pool's or its
    /// budget is spent.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn refusal(&self, account: Option<&str>) -> Option<Error> {
        if !self.budget.refuse {
            return None;
        }
        self.refusal_in(&self.today(), account)
    }

    fn refusal_in(&self, day: &Day, account: Option<&str>) -> Option<Error> {
        let now = self.budget.clock.now_millis();
        // What is spent and what calls in flight are estimated to spend: calls that start
        // together cannot all see the same room.
        let spent_out = |spent: Option<&Spent>, limit: Option<u64>| match (spent, limit) {
            (Some(spent), Some(limit)) if spent.nanos.saturating_add(spent.reserved) >= limit => {
                Some((spent.nanos, limit))
            }
            _ => None,
        };
        let (scope, (spent, limit)) = if let Some(out) =
            spent_out(Some(&day.pool), self.budget.pool)
        {
            (Scope::Pool, out)
        } else if let Some(name) = account
            && let Some(out) = spent_out(day.accounts.get(name), self.budget.account_limit(name))
        {
            (Scope::Account(name.to_owned()), out)
        } else {
            return None;
        };
        let wait = Duration::from_millis(day.end.saturating_sub(now));
        Some(
            Error::new(
                ErrorKind::BudgetSpent,
                format!(
                    "the daily budget of {scope} is spent ({} of {}, with the calls in flight); it resets at midnight Pacific, in {}s",
                    Dollars(usd(spent)),
                    Dollars(usd(limit)),
                    wait.as_secs()
                ),
            )
            .with_retry_after(Some(wait)),
        )
    }

    /// Admit a call by `account` estimated to cost `estimate` nano-USD: the refusal if the
    /// pool's or the account's budget (counting the calls in flight) is spent and budgets
    /// refuse; otherwise the estimate is held against both until the [`Reservation`] is
    /// dropped, when the call's real cost has been [recorded](Self::record). So calls that
    /// start at once overshoot a budget by at most one call's estimate.
    pub(crate) fn reserve(
        &self,
        account: Option<&str>,
        estimate: u64,
    ) -> Result<Reservation, Error> {
        if !self.budget.refuse {
            return Ok(Reservation::none());
        }
        // One lock for the check and the hold: two calls cannot both take the last room.
        let mut day = self.today();
        if let Some(refusal) = self.refusal_in(&day, account) {
            return Err(refusal);
        }
        day.pool.reserved = day.pool.reserved.saturating_add(estimate);
        let account = account.and_then(|name| {
            let spent = slot(&mut day.accounts, name)?;
            spent.reserved = spent.reserved.saturating_add(estimate);
            Some(name.to_owned())
        });
        Ok(Reservation {
            held: Some(Held {
                spend: self.clone(),
                account,
                nanos: estimate,
                day_start: day.start,
            }),
        })
    }

    fn release(&self, held: &Held) {
        let mut day = self.today();
        if day.start != held.day_start {
            // A new day started: its reservations were cleared with the rest.
            return;
        }
        day.pool.reserved = day.pool.reserved.saturating_sub(held.nanos);
        if let Some(spent) = held
            .account
            .as_deref()
            .and_then(|n| day.accounts.get_mut(n))
        {
            spent.reserved = spent.reserved.saturating_sub(held.nanos);
        }
    }

    /// Every scope that spent today or has a budget, pool first, then projects and accounts
    /// by name.
    pub fn today_by_scope(&self) -> Vec<ScopeSpend> {
        let day = self.today();
        let mut scopes: Vec<Scope> = day.scopes().collect();
        scopes.extend(self.budget.projects.keys().cloned().map(Scope::Project));
        scopes.extend(self.budget.accounts.keys().cloned().map(Scope::Account));
        scopes.sort();
        scopes.dedup();
        scopes
            .into_iter()
            .map(|scope| {
                let spent = day.get(&scope).copied().unwrap_or_default();
                ScopeSpend {
                    budget_usd: self.budget.limit(&scope).map(usd),
                    spent_usd: usd(spent.nanos),
                    calls: spent.calls,
                    scope,
                }
            })
            .collect()
    }

    /// What `scope` spent today, US dollars.
    pub fn today_usd(&self, scope: &Scope) -> f64 {
        usd(self.today().get(scope).map_or(0, |s| s.nanos))
    }
}

impl fmt::Debug for Spend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spend")
            .field("pool_usd_today", &self.today_usd(&Scope::Pool))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    const DOLLAR: u64 = 1_000_000_000;

    fn ms(s: &str) -> u64 {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond() as u64
    }

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn dollars_below_a_cent_keep_three_significant_digits() {
        let shown = |v: f64| Dollars(v).to_string();
        assert_eq!(shown(0.0), "$0.00");
        assert_eq!(shown(12.5), "$12.50");
        assert_eq!(shown(0.25), "$0.25");
        assert_eq!(shown(0.00006), "$0.00006");
        assert_eq!(shown(0.000_123_456), "$0.000123");
        assert_eq!(shown(0.0049), "$0.0049");
        assert_eq!(shown(0.000_000_001), "$0.000000001");
        assert_eq!(shown(1e-12), "$0.00");
    }

    fn collecting(budget: Budget) -> (Spend, Arc<Mutex<Vec<BudgetAlert>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let spend = Spend::new(budget.on_alert(move |a| sink.lock().unwrap().push(a.clone())));
        (spend, seen)
    }

    #[test]
    fn alerts_fire_once_per_crossing_and_reset_at_pacific_midnight() {
        // 23:00 PST on 2026-11-22 is 07:00 UTC on the 23rd.
        let clock = ManualClock::at(at("2026-11-23T07:00:00Z"));
        let budget = Budget::new().daily_usd(10.0).unwrap().clock(clock.clone());
        let (spend, seen) = collecting(budget);
        spend.record(Some("proj-a"), None, 7 * DOLLAR);
        assert!(seen.lock().unwrap().is_empty());
        spend.record(Some("proj-a"), None, DOLLAR);
        spend.record(Some("proj-a"), None, DOLLAR / 2);
        let alerts: Vec<_> = seen.lock().unwrap().iter().map(|a| a.threshold).collect();
        assert_eq!(alerts, [0.8], "80 % once, not again at 85 %");
        // One call past both thresholds at once is two alerts.
        spend.record(None, None, 5 * DOLLAR);
        let alerts: Vec<_> = seen.lock().unwrap().iter().map(|a| a.threshold).collect();
        assert_eq!(alerts, [0.8, 1.0]);
        spend.record(None, None, 5 * DOLLAR);
        assert_eq!(seen.lock().unwrap().len(), 2, "no alert twice a day");
        let first = seen.lock().unwrap()[0].clone();
        assert_eq!(first.scope, Scope::Pool);
        assert_eq!(first.budget_usd, 10.0);
        assert_eq!(first.day_start_ms, ms("2026-11-22T08:00:00Z"));

        // One minute before midnight Pacific the day's spending is still there …
        clock.set(at("2026-11-23T07:59:00Z"));
        assert_eq!(spend.today_usd(&Scope::Pool), 18.5);
        // … and at midnight it is gone, and the thresholds alert again.
        clock.set(at("2026-11-23T08:00:00Z"));
        assert_eq!(spend.today_usd(&Scope::Pool), 0.0);
        spend.record(None, None, 9 * DOLLAR);
        let last = seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(
            (last.threshold, last.day_start_ms),
            (0.8, ms("2026-11-23T08:00:00Z"))
        );
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    /// A reload's new budget counts today's spending so far: a raised budget refuses once the
    /// day's total passes it, not once a fresh day's would; a lowered one alerts on the next call.
    #[test]
    fn a_new_budget_keeps_the_days_spending() {
        let clock = ManualClock::at(at("2026-11-23T12:00:00Z"));
        let budget = |usd| {
            Budget::new()
                .daily_usd(usd)
                .unwrap()
                .refuse_when_spent(true)
                .clock(clock.clone())
        };
        let (spend, _) = collecting(budget(10.0));
        spend.record(Some("proj-a"), None, 9 * DOLLAR);
        let (raised, seen) = {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let sink = seen.clone();
            let raised = spend.with_budget(
                budget(12.0).on_alert(move |a: &BudgetAlert| sink.lock().unwrap().push(a.clone())),
            );
            (raised, seen)
        };
        assert_eq!(raised.today_usd(&Scope::Pool), 9.0);
        assert!(raised.refusal(None).is_none());
        raised.record(Some("proj-a"), None, 3 * DOLLAR);
        assert!(raised.refusal(None).is_some(), "12 of 12 spent");
        // Both views count on one day.
        assert_eq!(spend.today_usd(&Scope::Pool), 12.0);
        // 80 % of 12 was never announced (80 % of 10 was): both alert now.
        let thresholds: Vec<f64> = seen.lock().unwrap().iter().map(|a| a.threshold).collect();
        assert_eq!(thresholds, [0.8, 1.0]);
        assert_eq!(seen.lock().unwrap()[0].budget_usd, 12.0);
        // Lowered below what was announced: nothing is announced twice.
        let (lowered, seen) = {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let sink = seen.clone();
            let lowered = raised.with_budget(
                budget(11.0).on_alert(move |a: &BudgetAlert| sink.lock().unwrap().push(a.clone())),
            );
            (lowered, seen)
        };
        lowered.record(Some("proj-a"), None, DOLLAR);
        assert!(
            seen.lock().unwrap().is_empty(),
            "{:?}",
            seen.lock().unwrap()
        );
    }

    #[test]
    fn projects_and_accounts_have_their_own_budgets() {
        let clock = ManualClock::at(at("2026-11-23T12:00:00Z"));
        let budget = Budget::new()
            .per_project_usd(2.0)
            .unwrap()
            .project_usd("big", 100.0)
            .unwrap()
            .per_account_usd(1.0)
            .unwrap()
            .clock(clock);
        let (spend, seen) = collecting(budget);
        spend.record(Some("small"), Some("alice"), 2 * DOLLAR);
        spend.record(Some("big"), Some("bob"), 2 * DOLLAR);
        let mut scopes: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|a| format!("{} {}", a.scope, a.threshold))
            .collect();
        scopes.sort();
        assert_eq!(
            scopes,
            [
                "client alice 0.8",
                "client alice 1",
                "client bob 0.8",
                "client bob 1",
                "project small 0.8",
                "project small 1"
            ]
        );
        let report = spend.today_by_scope();
        assert_eq!(report[0].scope, Scope::Pool);
        assert_eq!(report[0].spent_usd, 4.0);
        assert_eq!(report[0].budget_usd, None);
        let big = report
            .iter()
            .find(|s| s.scope == Scope::Project("big".into()))
            .unwrap();
        assert_eq!(
            (big.spent_usd, big.budget_usd, big.calls),
            (2.0, Some(100.0), 1)
        );
    }

    #[test]
    fn spent_budgets_refuse_only_when_asked_to() {
        let clock = ManualClock::at(at("2026-11-23T12:00:00Z"));
        let budget = Budget::new()
            .daily_usd(1.0)
            .unwrap()
            .per_account_usd(0.5)
            .unwrap()
            .clock(clock.clone());
        let spend = Spend::new(budget.clone());
        spend.record(None, Some("alice"), DOLLAR);
        assert!(spend.refusal(Some("alice")).is_none(), "refusing is opt-in");

        let spend = Spend::new(budget.refuse_when_spent(true));
        spend.record(None, Some("alice"), DOLLAR / 2);
        assert!(spend.refusal(Some("bob")).is_none());
        let err = spend.refusal(Some("alice")).unwrap();
        assert_eq!(err.kind(), ErrorKind::BudgetSpent);
        assert_eq!(err.status_code(), http::StatusCode::TOO_MANY_REQUESTS);
        assert!(err.to_string().contains("client alice"), "{err}");
        // Midnight Pacific is 08:00 UTC the next day: 20 hours away.
        assert_eq!(err.retry_after(), Some(Duration::from_secs(20 * 3600)));
        spend.record(None, Some("bob"), DOLLAR / 2);
        let err = spend.refusal(Some("carol")).unwrap();
        assert!(err.to_string().contains("of pool is spent"), "{err}");
        clock.set(at("2026-11-24T08:00:00Z"));
        assert!(spend.refusal(Some("alice")).is_none(), "a new day");
    }

    #[test]
    fn callers_past_the_bound_count_only_in_the_pool() {
        let spend = Spend::new(Budget::new());
        for i in 0..MAX_ACCOUNTS + 5 {
            spend.record(Some("proj-a"), Some(&format!("client-{i}")), 1);
        }
        let today = spend.today_by_scope();
        let accounts = today
            .iter()
            .filter(|s| matches!(s.scope, Scope::Account(_)))
            .count();
        assert_eq!(accounts, MAX_ACCOUNTS);
        assert_eq!(today[0].calls, (MAX_ACCOUNTS + 5) as u64);
    }

    #[test]
    fn bad_budgets_are_refused_with_what_to_give() {
        for bad in [0.0, -1.0, f64::NAN] {
            let err = Budget::new().daily_usd(bad).unwrap_err();
            assert!(err.to_string().contains("US dollars"), "{err}");
        }
        let err = Budget::new().thresholds([0.5, 0.0]).unwrap_err();
        assert!(err.to_string().contains("fractions"), "{err}");
        let thresholds = Budget::new()
            .thresholds([1.0, 0.5, 1.0])
            .unwrap()
            .thresholds;
        assert_eq!(thresholds, [0.5, 1.0]);
    }
}
