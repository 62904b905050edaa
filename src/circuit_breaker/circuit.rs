//! One circuit's state machine, and the registry of circuits by scope.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::window::{Window, WindowKind};
use crate::classify::Class;
use crate::error::{Error, ErrorKind};
use crate::read_mostly::ReadMostly;

/// The state of one circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Calls flow; outcomes are counted.
    Closed,
    /// Calls fail at once with [`ErrorKind::CircuitOpen`].
    Open,
    /// A few probe calls flow; the rest fail at once.
    HalfOpen,
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
        })
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;
/// Held by the one thread moving a circuit between states; others treat it as open.
const SWITCHING: u8 = 3;

/// The default longest open duration: a recovered upstream is never kept dark much longer.
pub(crate) const DEFAULT_MAX_OPEN: Duration = Duration::from_secs(60);

/// What a call refused while the circuit is half-open (its probes in flight) is told to wait:
/// about as long as a probe takes to answer. The retry layer spreads the callers it gives this
/// to, so that they come back one by one once the probes have closed the circuit.
pub(crate) const HALF_OPEN_RETRY: Duration = Duration::from_secs(1);

/// A state change, as passed to the hook set with
/// [`CircuitBreakerLayer::on_state_change`](super::CircuitBreakerLayer::on_state_change).
#[derive(Debug, Clone)]
pub struct StateChange {
    /// The scope (`global`, a model name, a key fingerprint, or a custom value).
    pub scope: String,
    /// The state before.
    pub from: CircuitState,
    /// The state after.
    pub to: CircuitState,
    /// The failure rate that opened it (closed → open), else the window's current rate.
    pub failure_rate: f64,
    /// How long it stays open (→ open only).
    pub open_for: Option<Duration>,
}

pub(crate) type Hook = Arc<dyn Fn(&StateChange) + Send + Sync>;

/// The breaker's settings.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) failure_threshold: f64,
    pub(crate) minimum_calls: u32,
    pub(crate) window: WindowKind,
    pub(crate) open_duration: Duration,
    pub(crate) max_open_duration: Option<Duration>,
    pub(crate) probes: u32,
    pub(crate) slow_call: Option<Duration>,
    pub(crate) failures: [bool; Class::ALL.len()],
    pub(crate) ignored: [bool; Class::ALL.len()],
    pub(crate) hook: Option<Hook>,
}

impl Default for Config {
    fn default() -> Self {
        let mut failures = [false; Class::ALL.len()];
        let mut ignored = [false; Class::ALL.len()];
        for class in Class::ALL {
            failures[class.index()] = class.is_upstream_failure();
            ignored[class.index()] = class.is_quota();
        }
        Config {
            failure_threshold: 0.5,
            minimum_calls: 10,
            window: WindowKind::default(),
            open_duration: Duration::from_secs(30),
            max_open_duration: Some(DEFAULT_MAX_OPEN),
            probes: 3,
            slow_call: None,
            failures,
            ignored,
            hook: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("failure_threshold", &self.failure_threshold)
            .field("minimum_calls", &self.minimum_calls)
            .field("window", &self.window)
            .field("open_duration", &self.open_duration)
            .field("max_open_duration", &self.max_open_duration)
            .field("probes", &self.probes)
            .field("slow_call", &self.slow_call)
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

/// How an outcome counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Success,
    Failure,
    /// Says nothing of upstream health (quota answers, local refusals).
    Ignored,
}

impl Config {
    pub(crate) fn verdict(&self, class: Class, latency: Duration) -> Verdict {
        if self.failures[class.index()] {
            Verdict::Failure
        } else if self.ignored[class.index()] {
            Verdict::Ignored
        } else if self.slow_call.is_some_and(|slow| latency > slow) {
            Verdict::Failure
        } else {
            Verdict::Success
        }
    }

    fn open_for(&self, level: u32) -> Duration {
        match self.max_open_duration {
            Some(max) => self
                .open_duration
                .saturating_mul(1u32 << level.min(20))
                .min(max.max(self.open_duration)),
            None => self.open_duration,
        }
    }
}

/// One scope's circuit.
pub(crate) struct Circuit {
    scope: Arc<str>,
    state: AtomicU8,
    /// Bumped on every transition; outcomes and permits of an older generation are ignored.
    generation: AtomicU64,
    open_until: AtomicU64,
    /// Reopens since the last clean close (for the growing open duration).
    level: AtomicU32,
    probes_in_flight: AtomicU32,
    probe_successes: AtomicU32,
    /// Has it let through a call that succeeded (a real scope, never evicted)?
    known: std::sync::atomic::AtomicBool,
    window: Window,
}

/// The outcome of asking a circuit to let a call through.
pub(crate) enum Admission {
    Closed { generation: u64 },
    Probe(Permit),
    Rejected(Error),
}

/// A half-open probe's permit; returned when dropped (a cancelled probe frees its place).
pub(crate) struct Permit {
    circuit: Arc<Circuit>,
    generation: u64,
    done: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            self.circuit.release(self.generation);
        }
    }
}

/// The circuits of one breaker layer, by scope: made once by
/// [`CircuitBreakerLayer::new`](super::CircuitBreakerLayer::new) and shared by every service
/// it makes and every handle taken from it, whatever setters are called in between.
pub(crate) struct Registry {
    epoch: Instant,
    // Looked up on every call without a lock (scopes are few and bounded by MAX_SCOPES).
    circuits: ReadMostly<Circuit>,
    overflow: std::sync::OnceLock<Arc<Circuit>>,
}

/// Most scopes tracked. When full, a new scope takes the place of one that never saw a success
/// and is idle and closed (a made-up model name, say); only if none is does it share one
/// overflow circuit (shown in the status API as "(other scopes)"). A scope that has served a
/// success is never evicted, so a flood of junk names never changes how real models are judged.
pub(crate) const MAX_SCOPES: usize = 1024;

/// Forget one scope that holds nothing worth keeping: true if one was.
fn make_room(circuits: &mut std::borrow::Cow<'_, crate::read_mostly::NameMap<Circuit>>) -> bool {
    crate::read_mostly::evict_idle(circuits, |c| {
        !c.known.load(Ordering::Acquire) && c.state.load(Ordering::Acquire) == CLOSED
    })
}

impl Registry {
    pub(crate) fn new() -> Registry {
        Registry {
            epoch: Instant::now(),
            circuits: ReadMostly::default(),
            overflow: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn get(&self, scope: &str) -> Option<Arc<Circuit>> {
        self.circuits.get(scope)
    }

    /// Every circuit, by scope, the shared overflow one (if ever used) included.
    pub(crate) fn all(&self) -> Vec<Arc<Circuit>> {
        let mut all = self.circuits.values();
        all.extend(self.overflow.get().cloned());
        all.sort_by(|a, b| a.scope.cmp(&b.scope));
        all
    }
}

/// One service's view of the circuits: the shared registry and the layer's settings.
pub(crate) struct Breakers {
    pub(crate) config: Config,
    pub(crate) registry: Arc<Registry>,
}

impl Breakers {
    pub(crate) fn new(config: Config, registry: Arc<Registry>) -> Breakers {
        Breakers { config, registry }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.registry.now_ms()
    }

    pub(crate) fn circuit(&self, scope: &str) -> Arc<Circuit> {
        let registry = &*self.registry;
        if let Some(circuit) = registry.get(scope) {
            return circuit;
        }
        registry.circuits.update(|circuits| {
            if let Some(circuit) = circuits.get(scope) {
                return circuit.clone();
            }
            if circuits.len() >= MAX_SCOPES && !make_room(circuits) {
                return registry
                    .overflow
                    .get_or_init(|| {
                        Arc::new(Circuit::new(
                            Arc::from("(other scopes)"),
                            self.config.window,
                        ))
                    })
                    .clone();
            }
            let name: Arc<str> = Arc::from(scope);
            let circuit = Arc::new(Circuit::new(name.clone(), self.config.window));
            circuits.to_mut().insert(name, circuit.clone());
            circuit
        })
    }

    fn emit(
        &self,
        circuit: &Circuit,
        from: CircuitState,
        to: CircuitState,
        rate: f64,
        open_for: Option<Duration>,
    ) {
        let scope = &*circuit.scope;
        let gauge = match to {
            CircuitState::Closed => 0.0,
            CircuitState::Open => 1.0,
            CircuitState::HalfOpen => 2.0,
        };
        crate::telemetry::circuit_state(scope, gauge);
        match to {
            CircuitState::Open => tracing::warn!(
                gemini.scope = scope,
                "circuit {scope} {from} -> open for {:.1}s (failure rate {:.0}%)",
                open_for.unwrap_or_default().as_secs_f64(),
                rate * 100.0
            ),
            _ => tracing::info!(gemini.scope = scope, "circuit {scope} {from} -> {to}"),
        }
        if let Some(hook) = &self.config.hook {
            hook(&StateChange {
                scope: scope.to_owned(),
                from,
                to,
                failure_rate: rate,
                open_for,
            });
        }
    }
}

impl Circuit {
    fn new(scope: Arc<str>, window: WindowKind) -> Circuit {
        Circuit {
            scope,
            state: AtomicU8::new(CLOSED),
            generation: AtomicU64::new(0),
            open_until: AtomicU64::new(0),
            level: AtomicU32::new(0),
            probes_in_flight: AtomicU32::new(0),
            probe_successes: AtomicU32::new(0),
            known: std::sync::atomic::AtomicBool::new(false),
            window: Window::new(window),
        }
    }

    pub(crate) fn scope(&self) -> &str {
        &self.scope
    }

    /// Google answered a call of this scope with a success: a real scope, never evicted.
    pub(crate) fn mark_known(&self) {
        if !self.known.load(Ordering::Relaxed) {
            self.known.store(true, Ordering::Release);
        }
    }

    pub(crate) fn state(&self) -> CircuitState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => CircuitState::Closed,
            HALF_OPEN => CircuitState::HalfOpen,
            _ => CircuitState::Open,
        }
    }

    /// Let a call through, as a counted call or a probe, or refuse it.
    pub(crate) fn admit(self: &Arc<Self>, breakers: &Breakers) -> Admission {
        loop {
            match self.state.load(Ordering::Acquire) {
                // Closed: no clock read, nothing written.
                CLOSED => {
                    return Admission::Closed {
                        generation: self.generation.load(Ordering::Acquire),
                    };
                }
                OPEN => {
                    let now = breakers.now_ms();
                    let until = self.open_until.load(Ordering::Acquire);
                    if now < until {
                        return Admission::Rejected(self.rejection(breakers, Some(until - now)));
                    }
                    if self.switch(OPEN) {
                        self.probes_in_flight.store(0, Ordering::Release);
                        self.probe_successes.store(0, Ordering::Release);
                        self.generation.fetch_add(1, Ordering::AcqRel);
                        self.state.store(HALF_OPEN, Ordering::Release);
                        let rate = self.window.counts(now).failure_rate();
                        breakers.emit(self, CircuitState::Open, CircuitState::HalfOpen, rate, None);
                    }
                }
                HALF_OPEN => {
                    let generation = self.generation.load(Ordering::Acquire);
                    let limit = breakers.config.probes.max(1);
                    let acquired = self
                        .probes_in_flight
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                            (n < limit).then_some(n + 1)
                        })
                        .is_ok();
                    if !acquired {
                        return Admission::Rejected(self.rejection(breakers, None));
                    }
                    if self.generation.load(Ordering::Acquire) != generation {
                        // The circuit moved on while we took the permit: give it back, look again.
                        self.release(generation);
                        continue;
                    }
                    return Admission::Probe(Permit {
                        circuit: self.clone(),
                        generation,
                        done: false,
                    });
                }
                _ => return Admission::Rejected(self.rejection(breakers, None)),
            }
        }
    }

    fn rejection(&self, breakers: &Breakers, remaining_ms: Option<u64>) -> Error {
        crate::telemetry::circuit_rejected(&self.scope);
        let counts = self.window.counts(breakers.now_ms());
        let message = match remaining_ms {
            Some(ms) => format!(
                "circuit open for {}: {:.0}% of the last {} calls failed; half-open in {:.1}s",
                self.scope,
                counts.failure_rate() * 100.0,
                counts.calls,
                ms as f64 / 1000.0
            ),
            None => format!(
                "circuit half-open for {}: {} probe calls already in flight",
                self.scope, breakers.config.probes
            ),
        };
        // Half-open: the probes answer soon; come back then rather than give up.
        let retry_after = remaining_ms.map_or(HALF_OPEN_RETRY, Duration::from_millis);
        Error::new(ErrorKind::CircuitOpen, message).with_retry_after(Some(retry_after))
    }

    /// Take the circuit from `from` to the switching state; true if this thread won.
    fn switch(&self, from: u8) -> bool {
        self.state
            .compare_exchange(from, SWITCHING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn release(&self, generation: u64) {
        if self.generation.load(Ordering::Acquire) == generation {
            let _ = self
                .probes_in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }

    fn open(&self, breakers: &Breakers, from: CircuitState, now: u64, rate: f64) {
        let level = self.level.fetch_add(1, Ordering::AcqRel);
        let open_for = breakers.config.open_for(level);
        self.open_until
            .store(crate::clock::add(now, open_for), Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.state.store(OPEN, Ordering::Release);
        breakers.emit(self, from, CircuitState::Open, rate, Some(open_for));
    }

    /// Record the outcome of a call let through while closed.
    pub(crate) fn record_closed(&self, breakers: &Breakers, generation: u64, verdict: Verdict) {
        if verdict == Verdict::Ignored
            || self.state.load(Ordering::Acquire) != CLOSED
            || self.generation.load(Ordering::Acquire) != generation
        {
            return;
        }
        let now = breakers.now_ms();
        self.window.record(verdict == Verdict::Failure, now);
        let counts = self.window.counts(now);
        let config = &breakers.config;
        if counts.calls >= config.minimum_calls.max(1)
            && counts.failure_rate() >= config.failure_threshold
            && self.switch(CLOSED)
        {
            if self.generation.load(Ordering::Acquire) != generation {
                self.state.store(CLOSED, Ordering::Release);
                return;
            }
            self.open(breakers, CircuitState::Closed, now, counts.failure_rate());
        }
    }

    /// Record the outcome of a probe.
    pub(crate) fn record_probe(&self, breakers: &Breakers, mut permit: Permit, verdict: Verdict) {
        permit.done = true;
        let generation = permit.generation;
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        match verdict {
            Verdict::Ignored => self.release(generation),
            Verdict::Success => {
                let successes = self.probe_successes.fetch_add(1, Ordering::AcqRel) + 1;
                self.release(generation);
                if successes >= breakers.config.probes.max(1) && self.switch(HALF_OPEN) {
                    self.window.clear();
                    self.level.store(0, Ordering::Release);
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    self.state.store(CLOSED, Ordering::Release);
                    breakers.emit(
                        self,
                        CircuitState::HalfOpen,
                        CircuitState::Closed,
                        0.0,
                        None,
                    );
                }
            }
            Verdict::Failure => {
                if self.switch(HALF_OPEN) {
                    let now = breakers.now_ms();
                    let rate = self.window.counts(now).failure_rate();
                    self.open(breakers, CircuitState::HalfOpen, now, rate);
                }
            }
        }
    }

    /// Time until an open circuit half-opens.
    pub(crate) fn half_open_in(&self, registry: &Registry) -> Option<Duration> {
        (self.state() == CircuitState::Open).then(|| {
            let until = self.open_until.load(Ordering::Acquire);
            Duration::from_millis(until.saturating_sub(registry.now_ms()))
        })
    }

    pub(crate) fn counts(&self, registry: &Registry) -> super::window::Counts {
        self.window.counts(registry.now_ms())
    }

    pub(crate) fn probes_in_flight(&self) -> u32 {
        self.probes_in_flight.load(Ordering::Acquire)
    }
}
