//! Keys, projects and per-model limits from a TOML document.
//!
//! ```toml
//! strategy = "round-robin"   # or weighted-random, least-in-flight, lowest-latency, most-headroom
//! tier = "free"              # presets for well-known models: free, tier1, tier2, tier3
//! pacing = "spread"          # waiting requests spread over the minute (default), or "off"
//! pacing_burst = 0.05        # with "spread": the share of a minute's quota that may go at once
//!
//! [[keys]]
//! value = "test-key-0001"    # the key itself…
//! name = "alpha"
//! project = "proj-a"
//! priority = 60
//!
//! [[keys]]
//! env = "GEMINI_KEY_B"       # …or the name of a variable holding it
//! project = "proj-a"
//!
//! [models."gemini-2.0-flash"]             # limits for every project
//! rpm = 15
//! tpm = 1000000
//! rpd = 200
//!
//! [projects.proj-a]
//! tier = "tier1"             # this project's tier
//!
//! [projects.proj-a.models."gemini-2.5-pro"] # limits for one project
//! rpm = 5
//! ```

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::builder::KeyPoolBuilder;
use super::key::KeySpec;
use super::strategy::{
    LeastInFlight, LowestLatency, MostHeadroom, RoundRobin, Strategy, WeightedRandom,
};
use crate::error::Error;
use crate::state::ModelLimits;
use crate::state::Tier;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// Read by `gemini-gateway` (its `[gateway]` table), not by the pool.
    #[allow(dead_code)]
    gateway: Option<toml::Value>,
    strategy: Option<String>,
    tier: Option<Tier>,
    pacing: Option<String>,
    pacing_burst: Option<f64>,
    #[serde(default)]
    keys: Vec<KeyToml>,
    #[serde(default)]
    models: HashMap<String, ModelLimits>,
    #[serde(default)]
    projects: HashMap<String, ProjectToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyToml {
    value: Option<String>,
    env: Option<String>,
    name: Option<String>,
    project: Option<String>,
    priority: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectToml {
    tier: Option<Tier>,
    #[serde(default)]
    models: HashMap<String, ModelLimits>,
}

#[cfg_attr(docsrs, doc(cfg(feature = "toml")))]
impl KeyPoolBuilder {
    /// Add keys, strategy and limits from a TOML document (format above). `env = "VAR"`
    /// entries read the process environment.
    ///
    /// Errors name the entry (`keys[2] (name "backup")`) or the line and column, and never
    /// quote a key.
    pub fn toml_str(self, text: &str) -> Result<Self, Error> {
        self.toml_str_with_env(text, |name| std::env::var(name).ok())
    }

    /// Like [`toml_str`](Self::toml_str), reading the file at `path`.
    pub fn toml_path(self, path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(format!("cannot read key file {}: {e}", path.display())))?;
        self.toml_str(&text)
            .map_err(|e| Error::config(format!("{}: {}", path.display(), e.message())))
    }

    /// Like [`toml_str`](Self::toml_str), resolving `env = "VAR"` with `lookup`.
    pub fn toml_str_with_env(
        mut self,
        text: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, Error> {
        let file: File = toml::from_str(text).map_err(|e| parse_error(text, &e))?;
        if let Some(tier) = file.tier {
            self = self.tier(tier);
        }
        if let Some(name) = &file.strategy {
            self = self.boxed_strategy(strategy_named(name)?);
        }
        if let Some(pacing) = pacing(file.pacing.as_deref(), file.pacing_burst)? {
            self = self.pacing(pacing);
        }
        for (i, key) in file.keys.into_iter().enumerate() {
            let label = match &key.name {
                Some(name) => format!("keys[{i}] (name {name:?})"),
                None => format!("keys[{i}]"),
            };
            let secret = match (key.value, &key.env) {
                (Some(_), Some(_)) => {
                    return Err(Error::config(format!(
                        "{label}: both `value` and `env` are set; keep one"
                    )));
                }
                (None, None) => {
                    return Err(Error::config(format!(
                        "{label}: neither `value` nor `env` is set; add value = \"<key>\" or env = \"VARIABLE\""
                    )));
                }
                (Some(value), None) => value,
                (None, Some(var)) => match lookup(var) {
                    Some(value) if !value.trim().is_empty() => value,
                    Some(_) => {
                        return Err(Error::config(format!(
                            "{label}: environment variable {var} is empty"
                        )));
                    }
                    None => {
                        return Err(Error::config(format!(
                            "{label}: environment variable {var} is not set"
                        )));
                    }
                },
            };
            if let Err(e) = super::key::check_key_text(secret.trim()) {
                return Err(Error::config(format!("{label}: {}", e.message())));
            }
            let mut spec = KeySpec::new(secret);
            spec.name = key.name;
            spec.project = key.project;
            spec.priority = key.priority;
            self = self.key_from(spec, label);
        }
        for (model, limits) in file.models {
            self = self.model_limits(model, limits);
        }
        for (project, config) in file.projects {
            if let Some(tier) = config.tier {
                self = self.project_tier(project.clone(), tier);
            }
            for (model, limits) in config.models {
                self = self.project_model_limits(project.clone(), model, limits);
            }
        }
        Ok(self)
    }
}

fn strategy_named(name: &str) -> Result<Box<dyn Strategy>, Error> {
    Ok(
        match name.trim().replace('_', "-").to_ascii_lowercase().as_str() {
            "round-robin" => Box::new(RoundRobin::new()),
            "weighted-random" => Box::new(WeightedRandom::new()),
            "least-in-flight" => Box::new(LeastInFlight::new()),
            "lowest-latency" => Box::new(LowestLatency::new()),
            "most-headroom" => Box::new(MostHeadroom::new()),
            _ => {
                return Err(Error::config(format!(
                    "strategy = {name:?} is unknown; use round-robin, weighted-random, least-in-flight, lowest-latency or most-headroom"
                )));
            }
        },
    )
}

/// `pacing` and `pacing_burst` as a [`Pacing`](crate::state::Pacing) (`None`: the default).
pub(crate) fn pacing(
    name: Option<&str>,
    burst: Option<f64>,
) -> Result<Option<crate::state::Pacing>, Error> {
    use crate::state::Pacing;
    if let Some(burst) = burst
        && !(0.0..=1.0).contains(&burst)
    {
        return Err(Error::config(format!(
            "pacing_burst = {burst} is not a share of the minute; use a number from 0.0 to 1.0, such as 0.05"
        )));
    }
    match (name, burst) {
        (None, None) => Ok(None),
        (Some("off"), None) => Ok(Some(Pacing::Off)),
        (Some("off"), Some(_)) => Err(Error::config(
            "pacing_burst applies to pacing = \"spread\"; remove it or set pacing = \"spread\"",
        )),
        (Some("spread") | None, burst) => Ok(Some(Pacing::Spread {
            burst: burst.unwrap_or(crate::state::meter::DEFAULT_BURST),
        })),
        (Some(other), _) => Err(Error::config(format!(
            "pacing = {other:?} is unknown; use \"spread\" (the default) or \"off\""
        ))),
    }
}

/// A TOML error as "line L, column C: message", without echoing the source line (it may hold a
/// key) and with quoted values in the message reduced to their last 4 characters.
fn parse_error(text: &str, error: &toml::de::Error) -> Error {
    let location = error
        .span()
        .map(|span| {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: ")
        })
        .unwrap_or_default();
    let message = redact_quoted(error.message().trim());
    Error::config(format!("malformed key file: {location}{message}"))
}

/// Replace the contents of every `"…"` in `message` by its last 4 characters.
pub(crate) fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        out.push('"');
        if i % 2 == 0 && part.chars().count() > 4 {
            out.push_str(&super::key::masked(part));
        } else {
            out.push_str(part);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_is_read_and_checked() {
        use crate::state::Pacing;
        assert_eq!(pacing(None, None).unwrap(), None);
        assert_eq!(pacing(Some("off"), None).unwrap(), Some(Pacing::Off));
        assert_eq!(
            pacing(Some("spread"), Some(0.2)).unwrap(),
            Some(Pacing::Spread { burst: 0.2 })
        );
        assert_eq!(
            pacing(None, Some(0.0)).unwrap(),
            Some(Pacing::Spread { burst: 0.0 })
        );
        assert_eq!(pacing(Some("spread"), None).unwrap(), Some(Pacing::DEFAULT));
        for (name, burst, says) in [
            (Some("fast"), None, "unknown"),
            (Some("spread"), Some(1.5), "share of the minute"),
            (None, Some(-0.1), "share of the minute"),
            (Some("off"), Some(0.1), "applies to pacing"),
        ] {
            let error = pacing(name, burst).unwrap_err().to_string();
            assert!(error.contains(says), "{error}");
        }
        let pool = crate::KeyPool::from_toml_str(
            "pacing = \"off\"\n[[keys]]\nvalue = \"test-key-0001\"\n",
        );
        assert!(pool.is_ok());
    }

    #[test]
    fn quoted_values_are_cut_to_their_tail() {
        assert_eq!(
            redact_quoted(r#"invalid type: string "test-key-0001", expected u32"#),
            r#"invalid type: string "…0001", expected u32"#
        );
        assert_eq!(
            redact_quoted("unknown field `valeu`"),
            "unknown field `valeu`"
        );
    }
}
