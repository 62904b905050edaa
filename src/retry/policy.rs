//! What to do after each attempt: [`RetryPolicy`] and its per-call state.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;

use super::backoff::Backoff;
use super::budget::RetryBudget;
use crate::classify::{Class, Classification};
use crate::error::{BoxError, Error, ErrorKind};
use crate::pool::KeyPool;

/// Default retries after the first attempt.
pub const DEFAULT_RETRIES: u32 = 3;
/// Default overall deadline for attempts and waits together.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);

/// How many attempts, how long in all, how to back off, and the budget: what a
/// [`RetryLayer`](super::RetryLayer) is configured with. Cheap to clone; clones share the budget.
///
/// | outcome | retry |
/// |---|---|
/// | `KeyInvalid`, `KeyForbidden`, `BillingExhausted`, `QuotaDaily`, `QuotaMinute`, `ModelNotOnTier`, `QuotaExhausted` error | at once: the pool already moved that key or project aside |
/// | `RateLimited` | at once the first time, then with backoff |
/// | `Upstream`, `Transport` | after an exponential backoff with jitter |
/// | `NoKeyAvailable` error with `retry_after` inside the deadline | once, after that wait |
/// | `CircuitOpen` error with `retry_after` inside the deadline | after that wait |
/// | `Success`, `Caller`, anything else | never |
///
/// Attempts count calls that reached the upstream; waiting for a key or a circuit does not use
/// one up.
#[derive(Clone, Debug)]
pub(crate) struct RetryPolicy {
    pub(super) max_attempts: u32,
    pub(super) deadline: Duration,
    pub(super) backoff: Backoff,
    pub(super) budget: Option<Arc<RetryBudget>>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: DEFAULT_RETRIES + 1,
            deadline: DEFAULT_DEADLINE,
            backoff: Backoff::default(),
            budget: Some(Arc::new(RetryBudget::default())),
        }
    }
}

impl RetryPolicy {
    /// 3 retries (4 attempts), 120 s deadline, default backoff and budget.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Attempts for a pool: `min(retries + 1, 2 × keys)` with 3 retries.
    pub(crate) fn for_pool(pool: &KeyPool) -> Self {
        RetryPolicy {
            max_attempts: attempts_for(DEFAULT_RETRIES, pool.len()),
            ..Self::default()
        }
    }

    /// Total attempts (at least 1).
    pub(crate) fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The overall deadline for attempts and waits together.
    pub(crate) fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The backoff for upstream and transport failures.
    pub(crate) fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The retry budget (shared by every clone of this policy).
    pub(crate) fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(Arc::new(budget));
        self
    }

    /// No retry budget: only attempts and the deadline bound retries.
    pub(crate) fn without_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// The configured number of attempts.
    pub(crate) fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The per-call state, and the instant the call started (read once, for the deadline and
    /// the first attempt's latency).
    pub(super) fn start(&self) -> (CallState, Instant) {
        if let Some(budget) = &self.budget {
            budget.deposit();
        }
        let started = Instant::now();
        let state = CallState {
            attempts: 0,
            local_retries: 0,
            frees_at: None,
            backoffs: 0,
            rate_limited_once: false,
            model_after: false,
            deadline: crate::clock::instant_after(started, self.deadline),
        };
        (state, started)
    }

    /// A local refusal retried at once: true when the run of them has gone on too long. Local
    /// refusals use no attempt; those retried at once cannot loop for ever. (Timed waits are
    /// bounded by the deadline.) A run of them is a loop only while no slot they named has
    /// freed: once one has (selection waited for it and another caller, here or in another
    /// process sharing the store, took it first), the run starts over. Each new run needs time
    /// to pass, so this never spins.
    fn local_loop(&self, state: &mut CallState, outcome: &Outcome) -> bool {
        let now = Instant::now();
        if state.frees_at.is_some_and(|at| now >= at) {
            state.local_retries = 0;
            state.frees_at = None;
        }
        if let Some(after) = outcome.retry_after {
            // A little early (the pool's clock counts whole milliseconds), never at once.
            let after = after
                .saturating_sub(FREES_SLACK)
                .max(Duration::from_millis(1));
            let at = crate::clock::instant_after(now, after);
            state.frees_at = Some(state.frees_at.map_or(at, |t| t.min(at)));
        }
        state.local_retries += 1;
        state.local_retries > self.max_attempts
    }

    /// Count the outcome's attempt and decide what comes next.
    pub(super) fn decide(&self, state: &mut CallState, outcome: &Outcome) -> Decision {
        let upstream = outcome.reached_upstream();
        if upstream {
            state.attempts += 1;
        }
        let wait = match (outcome.kind, outcome.class) {
            // Waiting for a key is the key rotation layer's to do, within the bound its caller
            // set; when it gives up (or was told not to wait), so does the call.
            (Some(ErrorKind::NoKeyAvailable), _) => return Decision::Stop(Stop::Final),
            (Some(ErrorKind::CircuitOpen), _) => match outcome.retry_after {
                Some(wait) if !state.model_after => Wait::Given(self.backoff.spread(wait)),
                _ => return Decision::Stop(Stop::Final),
            },
            // The quota layer refused the key selection had just chosen (another request took
            // the last slot in between): choose again at once. A refusal without a key comes
            // from selection itself (no project has room): final, like `NoKeyAvailable`.
            (Some(ErrorKind::QuotaExhausted), _) if outcome.keyed => Wait::Now,
            (Some(ErrorKind::Transport), _) => Wait::Backoff(self.next_backoff(state)),
            (Some(_), _) => return Decision::Stop(Stop::Final),
            (None, Some(class)) => match class {
                Class::Success | Class::Caller => return Decision::Stop(Stop::Final),
                Class::KeyInvalid
                | Class::KeyForbidden
                | Class::BillingExhausted
                | Class::QuotaDaily
                | Class::QuotaMinute
                | Class::ModelNotOnTier => Wait::Now,
                Class::RateLimited if !state.rate_limited_once => {
                    state.rate_limited_once = true;
                    Wait::Now
                }
                Class::RateLimited | Class::Upstream | Class::Transport => {
                    let backoff = self.next_backoff(state);
                    Wait::Backoff(backoff.max(outcome.retry_after.unwrap_or_default()))
                }
            },
            (None, None) => return Decision::Stop(Stop::Final),
        };
        if upstream {
            if state.attempts >= self.max_attempts {
                return Decision::Stop(Stop::Attempts);
            }
        } else if matches!(wait, Wait::Now) && self.local_loop(state, outcome) {
            return Decision::Stop(Stop::Final);
        }
        let delay = wait.duration();
        if Instant::now()
            .checked_add(delay)
            .is_none_or(|at| at > state.deadline)
        {
            return Decision::Stop(match wait {
                // A wait the server or pool gave that does not fit: the local error stands.
                Wait::Given(_) => Stop::Final,
                _ => Stop::Deadline,
            });
        }
        // The budget bounds what retries add upstream. A local refusal sent nothing, so going
        // again after one costs the upstream nothing and spends no budget.
        if upstream
            && let Some(budget) = &self.budget
            && !budget.withdraw()
        {
            return Decision::Stop(Stop::Budget);
        }
        Decision::Retry(delay)
    }

    fn next_backoff(&self, state: &mut CallState) -> Duration {
        let delay = self.backoff.delay(state.backoffs);
        state.backoffs += 1;
        delay
    }
}

/// How much earlier than a refusal's `retry_after` its slot counts as freed (clock rounding).
const FREES_SLACK: Duration = Duration::from_millis(2);

pub(super) fn attempts_for(retries: u32, keys: usize) -> u32 {
    let by_keys = u32::try_from(keys.saturating_mul(2)).unwrap_or(u32::MAX);
    retries.saturating_add(1).min(by_keys).max(1)
}

enum Wait {
    Now,
    Backoff(Duration),
    Given(Duration),
}

impl Wait {
    fn duration(&self) -> Duration {
        match self {
            Wait::Now => Duration::ZERO,
            Wait::Backoff(d) | Wait::Given(d) => *d,
        }
    }
}

/// Per-call bookkeeping.
#[derive(Debug, Clone)]
pub(super) struct CallState {
    pub(super) attempts: u32,
    local_retries: u32,
    /// When the first slot named by the current run of local refusals frees.
    frees_at: Option<Instant>,
    backoffs: u32,
    rate_limited_once: bool,
    /// A fallback layer above has another model for this call: an open circuit is not waited
    /// out.
    pub(super) model_after: bool,
    /// When the whole call must be over: attempts, backoffs and waits together.
    pub(super) deadline: Instant,
}

/// What an attempt produced, as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Outcome {
    pub(super) class: Option<Class>,
    pub(super) kind: Option<ErrorKind>,
    pub(super) retry_after: Option<Duration>,
    /// The local error names one key (a quota refusal of the key just chosen).
    pub(super) keyed: bool,
}

impl Outcome {
    pub(super) fn response(classification: &Classification) -> Self {
        Outcome {
            class: Some(classification.class()),
            kind: None,
            retry_after: classification.retry_after(),
            keyed: false,
        }
    }

    pub(super) fn error(error: &Error) -> Self {
        Outcome {
            class: error.classification().map(Classification::class),
            kind: Some(error.kind()),
            retry_after: error.retry_after(),
            keyed: error.key().is_some(),
        }
    }

    /// Did this attempt reach the upstream (a response, or a transport failure)?
    fn reached_upstream(&self) -> bool {
        matches!(self.kind, None | Some(ErrorKind::Transport))
    }
}

/// The decision after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    Retry(Duration),
    Stop(Stop),
}

/// Why no further attempt is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// Success, a non-retryable answer, or a local error that stands.
    Final,
    Attempts,
    Deadline,
    Budget,
}

/// An adapter for users of **tower's own** `tower::retry::Retry`: the decisions of a
/// configured [`RetryLayer`](super::RetryLayer), as a [`tower::retry::Policy`]. Prefer
/// `RetryLayer` itself; this is for stacks already built on tower's `Retry`.
///
/// It reads the [`Classification`] that [`KeyRotation`](crate::KeyRotation) puts in the
/// response extensions (or classifies from the status alone when there is none) and the crate
/// [`Error`] in failures. Unlike `RetryLayer`, tower's `Retry` cannot bound the call as a whole
/// (its deadline is checked between attempts only) nor read an error body.
///
/// ```
/// use tower::retry::RetryLayer as TowerRetryLayer;
/// use tower_gemini::retry::GeminiPolicy;
/// use tower_gemini::{KeyPool, RetryLayer};
///
/// let pool = KeyPool::from_keys(["test-key-0001", "test-key-0002"]).unwrap();
/// let layer = TowerRetryLayer::new(GeminiPolicy::new(&RetryLayer::for_pool(&pool)));
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct GeminiPolicy {
    policy: RetryPolicy,
    state: Option<CallState>,
}

impl GeminiPolicy {
    /// A tower policy making the decisions of `retry`.
    pub fn new(retry: &super::RetryLayer) -> Self {
        GeminiPolicy {
            policy: retry.policy.clone(),
            state: None,
        }
    }

    fn retry_with(&mut self, outcome: Outcome) -> Option<tokio::time::Sleep> {
        let state = self.state.get_or_insert_with(|| self.policy.start().0);
        match self.policy.decide(state, &outcome) {
            Decision::Retry(delay) => Some(tokio::time::sleep(delay)),
            Decision::Stop(_) => None,
        }
    }

    fn clone_for<B: Clone>(&mut self, request: &Request<B>) -> Option<Request<B>> {
        if self.state.is_none() {
            self.state = Some(self.policy.start().0);
        }
        Some(request.clone())
    }
}

fn response_outcome<R>(response: &Response<R>) -> Outcome {
    match response.extensions().get::<Classification>() {
        Some(c) => Outcome::response(c),
        None => Outcome::response(&Classification::of_response(response)),
    }
}

impl<B: Clone, R> tower::retry::Policy<Request<B>, Response<R>, Error> for GeminiPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _request: &mut Request<B>,
        result: &mut Result<Response<R>, Error>,
    ) -> Option<Self::Future> {
        let outcome = match result {
            Ok(response) => response_outcome(response),
            Err(error) => Outcome::error(error),
        };
        self.retry_with(outcome)
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        self.clone_for(request)
    }
}

impl<B: Clone, R> tower::retry::Policy<Request<B>, Response<R>, BoxError> for GeminiPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _request: &mut Request<B>,
        result: &mut Result<Response<R>, BoxError>,
    ) -> Option<Self::Future> {
        let outcome = match result {
            Ok(response) => response_outcome(response),
            Err(error) => match error.downcast_ref::<Error>() {
                Some(error) => Outcome::error(error),
                None => Outcome {
                    class: Some(Class::Transport),
                    kind: Some(ErrorKind::Transport),
                    retry_after: None,
                    keyed: false,
                },
            },
        };
        self.retry_with(outcome)
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        self.clone_for(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gateway's stack rebuilt over other keys keeps its retry budget (one budget, not a
    /// fresh one) with the attempts of the new pool.
    #[test]
    fn a_rebuilt_stack_keeps_its_retry_budget() {
        let two = KeyPool::from_keys(["test-key-0001", "test-key-0002"]).unwrap();
        let one = KeyPool::from_keys(["test-key-0001"]).unwrap();
        let first = crate::RetryLayer::for_pool(&two);
        let rebuilt = first.for_pool_keeping_budget(&one);
        assert_eq!(rebuilt.attempts(), attempts_for(DEFAULT_RETRIES, 1));
        let (a, b) = (first.policy.budget.unwrap(), rebuilt.policy.budget.unwrap());
        assert!(Arc::ptr_eq(&a, &b));
    }
    use crate::retry::NoJitter;

    fn class(class: Class) -> Outcome {
        Outcome {
            class: Some(class),
            kind: None,
            retry_after: None,
            keyed: false,
        }
    }

    fn local(kind: ErrorKind, retry_after: Option<Duration>, keyed: bool) -> Outcome {
        Outcome {
            class: None,
            kind: Some(kind),
            retry_after,
            keyed,
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy::new()
            .max_attempts(10)
            .without_budget()
            .backoff(Backoff::default().jitter(NoJitter))
    }

    fn run(policy: &RetryPolicy, outcomes: &[Outcome]) -> Vec<Decision> {
        let mut state = policy.start().0;
        outcomes
            .iter()
            .map(|o| policy.decide(&mut state, o))
            .collect()
    }

    #[test]
    fn key_and_quota_classes_retry_at_once() {
        for c in [
            Class::KeyInvalid,
            Class::KeyForbidden,
            Class::BillingExhausted,
            Class::QuotaDaily,
            Class::QuotaMinute,
            Class::ModelNotOnTier,
        ] {
            assert_eq!(
                run(&policy(), &[class(c)]),
                [Decision::Retry(Duration::ZERO)],
                "{c}"
            );
        }
    }

    #[test]
    fn success_and_caller_stop() {
        assert_eq!(
            run(&policy(), &[class(Class::Success)]),
            [Decision::Stop(Stop::Final)]
        );
        assert_eq!(
            run(&policy(), &[class(Class::Caller)]),
            [Decision::Stop(Stop::Final)]
        );
    }

    #[test]
    fn rate_limited_rotates_once_then_backs_off() {
        let r = class(Class::RateLimited);
        assert_eq!(
            run(&policy(), &[r, r, r]),
            [
                Decision::Retry(Duration::ZERO),
                Decision::Retry(Duration::from_secs(1)),
                Decision::Retry(Duration::from_secs(2)),
            ]
        );
    }

    #[test]
    fn upstream_backs_off_exponentially_until_attempts_end() {
        let u = class(Class::Upstream);
        let policy = policy().max_attempts(4);
        assert_eq!(
            run(&policy, &[u, u, u, u]),
            [
                Decision::Retry(Duration::from_secs(1)),
                Decision::Retry(Duration::from_secs(2)),
                Decision::Retry(Duration::from_secs(4)),
                Decision::Stop(Stop::Attempts),
            ]
        );
    }

    #[test]
    fn no_key_is_final_without_waiting() {
        // Waiting for a key is opt-in, in the key rotation layer; the retry layer never hangs
        // a caller on it.
        for kind in [
            ErrorKind::NoKeyAvailable,
            ErrorKind::AllKeysDisabled,
            ErrorKind::QuotaExhausted,
        ] {
            let no_key = local(kind, Some(Duration::from_secs(30)), false);
            assert_eq!(
                run(&policy(), &[no_key]),
                [Decision::Stop(Stop::Final)],
                "{kind}"
            );
        }
    }

    #[test]
    fn absurd_delays_from_the_wire_stop_without_overflowing() {
        for c in [Class::Upstream, Class::RateLimited, Class::Transport] {
            let mut outcome = class(c);
            outcome.retry_after = Some(Duration::MAX);
            let decisions = run(&policy(), &[outcome, outcome]);
            assert!(
                decisions.contains(&Decision::Stop(Stop::Deadline)),
                "{c}: {decisions:?}"
            );
        }
        let open = local(ErrorKind::CircuitOpen, Some(Duration::MAX), false);
        assert_eq!(run(&policy(), &[open]), [Decision::Stop(Stop::Final)]);
    }

    #[test]
    fn local_refusals_spend_no_budget() {
        let p = policy().budget(RetryBudget::new(Duration::from_secs(10), 0, 0.0));
        let lost_race = local(ErrorKind::QuotaExhausted, None, true);
        assert_eq!(run(&p, &[lost_race]), [Decision::Retry(Duration::ZERO)]);
        let open = local(ErrorKind::CircuitOpen, Some(Duration::from_secs(1)), false);
        assert!(matches!(run(&p, &[open])[0], Decision::Retry(_)));
        // An answer from upstream does spend it.
        assert_eq!(
            run(&p, &[class(Class::QuotaMinute)]),
            [Decision::Stop(Stop::Budget)]
        );
    }

    #[test]
    fn circuit_waits_are_spread_and_bounded_by_the_deadline_not_a_count() {
        let p = policy().max_attempts(2).deadline(Duration::from_secs(30));
        let half_open = local(ErrorKind::CircuitOpen, Some(Duration::from_secs(1)), false);
        let decisions = run(&p, &[half_open; 10]);
        for decision in decisions {
            let Decision::Retry(wait) = decision else {
                panic!("waiting on a circuit within the deadline goes on: {decision:?}");
            };
            // NoJitter: the whole spread (a quarter of the wait, at least 100 ms) is added.
            assert_eq!(wait, Duration::from_millis(1250));
        }
    }

    #[test]
    fn backoff_past_the_deadline_stops() {
        let u = class(Class::Upstream);
        let tight = policy().deadline(Duration::from_millis(1500));
        assert_eq!(
            run(&tight, &[u, u]),
            [
                Decision::Retry(Duration::from_secs(1)),
                Decision::Stop(Stop::Deadline)
            ]
        );
    }

    #[test]
    fn local_errors_use_no_attempt_but_are_bounded() {
        let quota = local(ErrorKind::QuotaExhausted, None, true);
        let p = policy().max_attempts(2);
        let decisions = run(&p, &[quota, quota, quota]);
        assert_eq!(decisions[..2], [Decision::Retry(Duration::ZERO); 2]);
        assert_eq!(decisions[2], Decision::Stop(Stop::Final));
    }

    #[tokio::test(start_paused = true)]
    async fn losing_the_race_for_a_freed_slot_again_and_again_is_not_a_loop() {
        // Replicas sharing a store: a refusal names when its slot frees; selection waits until
        // then, and another process may take that slot first. Each such loss starts a new run.
        let p = policy().max_attempts(2);
        let lost = local(
            ErrorKind::QuotaExhausted,
            Some(Duration::from_secs(3)),
            true,
        );
        let mut state = p.start().0;
        for round in 0..10 {
            assert_eq!(
                p.decide(&mut state, &lost),
                Decision::Retry(Duration::ZERO),
                "round {round}"
            );
            tokio::time::advance(Duration::from_secs(3)).await;
        }
        // Without time passing, the bound holds as before.
        let decisions = run(&p, &[lost, lost, lost]);
        assert_eq!(decisions[2], Decision::Stop(Stop::Final));
        // And a refusal that names no time, or a moment already past, earns no new run.
        let mut state = p.start().0;
        let now = local(ErrorKind::QuotaExhausted, Some(Duration::ZERO), true);
        assert_eq!(p.decide(&mut state, &now), Decision::Retry(Duration::ZERO));
        assert_eq!(p.decide(&mut state, &now), Decision::Retry(Duration::ZERO));
        assert_eq!(p.decide(&mut state, &now), Decision::Stop(Stop::Final));
    }

    #[test]
    fn empty_budget_stops() {
        let p = policy().budget(RetryBudget::new(Duration::from_secs(10), 0, 0.0));
        assert_eq!(
            run(&p, &[class(Class::QuotaMinute)]),
            [Decision::Stop(Stop::Budget)]
        );
    }

    #[test]
    fn attempts_for_pools() {
        assert_eq!(attempts_for(3, 1), 2);
        assert_eq!(attempts_for(3, 2), 4);
        assert_eq!(attempts_for(3, 10), 4);
        assert_eq!(attempts_for(0, 10), 1);
    }
}
