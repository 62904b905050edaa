//! Saving and restoring a pool's state ([`SavedState`]), matched by fingerprint and project.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::KeyPool;
use crate::classify::Class;
use crate::state::saved::{SavedKey, SavedProject, SavedSlot, class_named};
use crate::state::{MeterState, ModelLimits, RestoreReport, SavedState, VERSION};

impl KeyPool {
    /// What the pool remembers now: per key its health, disabled reason and counters; per
    /// project its billing state; per project and model its cool-down, tier block, learned
    /// limits, the last minute's ledger and the day's count.
    pub fn save(&self) -> SavedState {
        let inner = &*self.inner;
        let now = inner.clock.now_millis();
        let keys = inner
            .keys
            .iter()
            .map(|entry| {
                let h = &entry.health;
                let n = h.numbers();
                SavedKey {
                    fingerprint: entry.key.fingerprint().tail().to_owned(),
                    project: inner.projects[entry.project].name.to_string(),
                    disabled: h.disabled.get(),
                    cool_until: n.cool_until,
                    rate_limit_streak: n.rate_limit_streak,
                    consecutive_failures: n.consecutive_failures,
                    total: h.total(),
                    successes: h.successes(),
                    by_class: Class::ALL
                        .iter()
                        .map(|c| (c.as_str().to_owned(), n.by_class[c.index()]))
                        .filter(|(_, n)| *n > 0)
                        .collect(),
                    last_used: n.last_used,
                    last_success: n.last_success,
                    last_failure: n.last_failure,
                    latency_ewma_bits: n.latency_ewma_bits,
                }
            })
            .collect();
        let projects = inner
            .projects
            .iter()
            .map(|p| SavedProject {
                name: p.name.to_string(),
                disabled: p.health.disabled.get(),
            })
            .collect();
        let mut slots = Vec::new();
        for model in inner.models.all() {
            if model.is_unknown() {
                continue;
            }
            for (p, slot) in model.projects.iter().enumerate() {
                let meter = slot.quota.export(now);
                let cool_until = slot.cool_until();
                let not_on_tier = slot.is_not_on_tier();
                let cooling = cool_until > now;
                if !cooling && !not_on_tier && meter == MeterState::default() {
                    continue;
                }
                slots.push(SavedSlot {
                    project: inner.projects[p].name.to_string(),
                    model: model.name.to_string(),
                    cool_until,
                    cool_class: slot.cool_class().as_str().to_owned(),
                    not_on_tier,
                    meter,
                });
            }
        }
        SavedState {
            version: VERSION,
            saved_at: now,
            keys,
            projects,
            slots,
            cursor: inner.strategy.cursor(),
            pins: inner.pins.save(now),
        }
    }

    /// Take back a [`save`](Self::save)d state into this pool (best before it serves
    /// requests). Keys are matched by fingerprint and project, never by the secret: a key no
    /// longer in the pool is dropped, a new key starts clean, and two keys sharing both their
    /// last 4 characters and their project are left clean rather than guessed.
    pub fn restore(&self, saved: &SavedState) -> RestoreReport {
        let inner = &*self.inner;
        let now = inner.clock.now_millis();
        let mut report = RestoreReport::default();
        let mut by_id: HashMap<(&str, &str), Vec<&SavedKey>> = HashMap::new();
        for key in &saved.keys {
            by_id
                .entry((key.fingerprint.as_str(), key.project.as_str()))
                .or_default()
                .push(key);
        }
        let mut ours: HashMap<(String, String), usize> = HashMap::new();
        for entry in inner.keys.iter() {
            let id = (
                entry.key.fingerprint().tail().to_owned(),
                inner.projects[entry.project].name.to_string(),
            );
            *ours.entry(id).or_default() += 1;
        }
        for entry in inner.keys.iter() {
            let fingerprint = entry.key.fingerprint();
            let project = &*inner.projects[entry.project].name;
            let id = (fingerprint.tail(), project);
            let saved_keys = by_id.get(&id).map(Vec::as_slice).unwrap_or_default();
            let ambiguous = ours
                .get(&(id.0.to_owned(), id.1.to_owned()))
                .is_some_and(|&n| n > 1)
                || saved_keys.len() > 1;
            let [saved] = saved_keys else {
                report.keys_new += 1;
                continue;
            };
            if ambiguous {
                tracing::warn!(gemini.key = %fingerprint, "two keys of project {project} end in the same 4 characters: their state is not restored");
                report.keys_new += 1;
                continue;
            }
            let h = &entry.health;
            if let Some(reason) = saved.disabled {
                h.disabled.disable(reason);
            }
            // `total` and `successes` are sums of `by_class`.
            let mut by_class = [0; Class::ALL.len()];
            for (name, n) in &saved.by_class {
                if let Some(class) = class_named(name) {
                    by_class[class.index()] += *n;
                }
            }
            h.restore(&crate::state::KeyNumbers {
                cool_until: saved.cool_until,
                rate_limit_streak: saved.rate_limit_streak,
                consecutive_failures: saved.consecutive_failures,
                in_flight: 0,
                by_class,
                last_used: saved.last_used,
                last_success: saved.last_success,
                last_failure: saved.last_failure,
                latency_ewma_bits: saved.latency_ewma_bits,
            });
            report.keys_restored += 1;
        }
        report.keys_dropped = saved
            .keys
            .iter()
            .filter(|k| {
                !inner.keys.iter().any(|e| {
                    e.key.fingerprint().tail() == k.fingerprint
                        && *inner.projects[e.project].name == *k.project
                })
            })
            .count();
        if let Some(cursor) = saved.cursor {
            inner.strategy.set_cursor(cursor);
        }
        for project in &saved.projects {
            if let (Some(reason), Some(ours)) = (
                project.disabled,
                inner.projects.iter().find(|p| *p.name == *project.name),
            ) {
                ours.health.disabled.disable(reason);
            }
        }
        for slot in &saved.slots {
            let Some(p) = inner.projects.iter().position(|p| *p.name == *slot.project) else {
                continue;
            };
            let model = inner.models.get(&slot.model);
            if model.is_unknown() {
                continue;
            }
            inner.models.pin_learned(&model);
            let ours = &model.projects[p];
            if slot.cool_until > now {
                let class = class_named(&slot.cool_class).unwrap_or(Class::QuotaMinute);
                ours.cool(slot.cool_until, class);
            }
            if slot.not_on_tier {
                ours.disable_model();
            }
            ours.quota.import(&slot.meter, now);
            if slot.meter.learned != ModelLimits::default() {
                inner.has_limits.store(true, Ordering::Release);
            }
            report.slots_restored += 1;
        }
        report.pins_restored = inner.pins.restore(&saved.pins, now);
        report
    }
}

impl crate::state::Remember for KeyPool {
    fn save(&self) -> SavedState {
        KeyPool::save(self)
    }

    fn restore(&self, saved: &SavedState) -> RestoreReport {
        KeyPool::restore(self, saved)
    }
}
