//! Keys from environment variables.
//!
//! - `GEMINI_API_KEY=k1,k2,k3`: a comma list; entries are trimmed, empty ones skipped, duplicates
//!   dropped keeping the first.
//! - `GOOGLE_API_KEY_<N>`: numbered keys, sorted by N as a number, duplicates dropped; optionally
//!   filtered by `API_KEY_RANGE=10-19` (inclusive) or `API_KEY_TERM=2` (meaning 20-29).
//!
//! When both forms are set, `GEMINI_API_KEY` wins and the numbered keys are ignored (with a
//! warning). A malformed filter is an error even then.

use std::collections::HashSet;
use std::ops::RangeInclusive;

use super::builder::KeyPoolBuilder;
use super::key::KeySpec;
use crate::error::Error;

const LIST: &str = "GEMINI_API_KEY";
const NUMBERED: &str = "GOOGLE_API_KEY_";
const RANGE: &str = "API_KEY_RANGE";
const TERM: &str = "API_KEY_TERM";

/// Does this variable name keys (by the rules above)?
#[cfg_attr(not(feature = "gateway"), allow(dead_code))]
pub(crate) fn is_key_var(name: &str) -> bool {
    matches!(name, LIST | RANGE | TERM)
        || name
            .strip_prefix(NUMBERED)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The variables that name keys, for a caller that can only look variables up one by one:
/// every fixed name, and the numbered ones `1..=1000` (a caller that can list its variables
/// gives them all, with [`is_key_var`]).
#[cfg_attr(not(feature = "gateway"), allow(dead_code))]
pub(crate) fn probe_key_vars(lookup: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    [LIST, RANGE, TERM]
        .into_iter()
        .map(str::to_owned)
        .chain((1..=1000).map(|n| format!("{NUMBERED}{n}")))
        .filter_map(|name| lookup(&name).map(|value| (name, value)))
        .collect()
}

impl KeyPoolBuilder {
    /// Add the keys named by the process environment (see the rules above).
    pub fn keys_from_env(self) -> Result<Self, Error> {
        self.keys_from_vars(std::env::vars_os().filter_map(|(k, v)| {
            Some((k.into_string().ok()?, v.into_string().unwrap_or_default()))
        }))
    }

    /// Add the keys named by these variables, by the same rules as the process environment.
    ///
    /// ```
    /// use tower_gemini::KeyPool;
    ///
    /// let pool = KeyPool::builder()
    ///     .keys_from_vars([("GEMINI_API_KEY", "test-key-0001, test-key-0002,,test-key-0001")])?
    ///     .build()?;
    /// assert_eq!(pool.len(), 2);
    ///
    /// let err = KeyPool::from_env_vars([("GOOGLE_API_KEY_1", "test-key-0001"), ("API_KEY_RANGE", "19-10")])
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("API_KEY_RANGE"));
    /// # Ok::<(), tower_gemini::Error>(())
    /// ```
    pub fn keys_from_vars<I, K, V>(self, vars: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let found = read(vars)?;
        Ok(found
            .into_iter()
            .fold(self, |b, (origin, spec)| b.key_from(spec, origin)))
    }
}

fn read<I, K, V>(vars: I) -> Result<Vec<(String, KeySpec)>, Error>
where
    I: IntoIterator<Item = (K, V)>,
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut list: Option<String> = None;
    let mut numbered: Vec<(u64, String, String)> = Vec::new();
    let mut range: Option<String> = None;
    let mut term: Option<String> = None;
    for (name, value) in vars {
        let (name, value) = (name.as_ref(), value.as_ref());
        match name {
            LIST => list = Some(value.to_owned()),
            RANGE => range = Some(value.to_owned()),
            TERM => term = Some(value.to_owned()),
            _ => {
                if let Some(n) = name.strip_prefix(NUMBERED)
                    && !n.is_empty()
                    && n.bytes().all(|b| b.is_ascii_digit())
                    && let Ok(n) = n.parse::<u64>()
                {
                    numbered.push((n, name.to_owned(), value.to_owned()));
                }
            }
        }
    }

    let filter = match (&range, &term) {
        (Some(r), Some(t)) => {
            return Err(Error::config(format!(
                "{RANGE}={r:?} and {TERM}={t:?} are both set; set only one of them"
            )));
        }
        (Some(r), None) => Some(parse_range(r)?),
        (None, Some(t)) => Some(parse_term(t)?),
        (None, None) => None,
    };

    let mut seen = HashSet::new();
    if let Some(list) = &list {
        let keys: Vec<(String, KeySpec)> = list
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .filter(|k| seen.insert(k.to_string()))
            .enumerate()
            .map(|(i, k)| (format!("{LIST} entry {}", i + 1), KeySpec::new(k)))
            .collect();
        if !keys.is_empty() {
            if !numbered.is_empty() || filter.is_some() {
                tracing::warn!(
                    "{LIST} is set, so the {} {NUMBERED}<N> variables and any {RANGE}/{TERM} filter are ignored",
                    numbered.len()
                );
            }
            return Ok(keys);
        }
    }

    numbered.sort_by_key(|(n, _, _)| *n);
    let present = numbered.len();
    let bounds = numbered
        .first()
        .map(|f| f.0)
        .zip(numbered.last().map(|l| l.0));
    let keys: Vec<(String, KeySpec)> = numbered
        .into_iter()
        .filter(|(n, _, _)| filter.as_ref().is_none_or(|f| f.contains(n)))
        .filter(|(_, _, v)| !v.trim().is_empty())
        .filter(|(_, _, v)| seen.insert(v.trim().to_owned()))
        .map(|(_, name, value)| (name.clone(), KeySpec::new(value).name(name)))
        .collect();
    if !keys.is_empty() {
        return Ok(keys);
    }

    let list_state = match &list {
        None => format!("{LIST} is unset"),
        Some(_) => format!("{LIST} is set but holds no keys"),
    };
    let numbered_state = match (bounds, &filter) {
        (None, _) => format!("no {NUMBERED}<N> variable is set"),
        (Some((lo, hi)), Some(f)) => format!(
            "{present} {NUMBERED}<N> variables are set ({NUMBERED}{lo}..{NUMBERED}{hi}) but the filter {} selects none with a value",
            describe_filter(&range, &term, f)
        ),
        (Some(_), None) => format!("{present} {NUMBERED}<N> variables are set but all are empty"),
    };
    Err(Error::config(format!(
        "no Gemini API keys in the environment: {list_state}; {numbered_state}; {RANGE} and {TERM} were read too. \
         Set {LIST}=key1,key2 or {NUMBERED}1, {NUMBERED}2, …"
    )))
}

fn describe_filter(
    range: &Option<String>,
    term: &Option<String>,
    f: &RangeInclusive<u64>,
) -> String {
    match (range, term) {
        (Some(r), _) => format!("{RANGE}={r} ({}-{})", f.start(), f.end()),
        (_, Some(t)) => format!("{TERM}={t} ({}-{})", f.start(), f.end()),
        _ => String::new(),
    }
}

fn parse_range(text: &str) -> Result<RangeInclusive<u64>, Error> {
    let bad = |why: &str| {
        Error::config(format!(
            "{RANGE}={text:?} is malformed: {why}; write START-END with START <= END, e.g. {RANGE}=10-19"
        ))
    };
    let trimmed = text.trim();
    let (start, end) = match trimmed.split_once('-') {
        Some((s, e)) => (s.trim(), e.trim()),
        None => (trimmed, trimmed),
    };
    let number = |s: &str, which: &str| {
        if s.is_empty() {
            return Err(bad(&format!("the {which} is missing")));
        }
        s.parse::<u64>()
            .map_err(|_| bad(&format!("the {which} {s:?} is not a whole number")))
    };
    let start = number(start, "start")?;
    let end = number(end, "end")?;
    if start > end {
        return Err(bad(&format!(
            "the start {start} is greater than the end {end}"
        )));
    }
    Ok(start..=end)
}

fn parse_term(text: &str) -> Result<RangeInclusive<u64>, Error> {
    let term: u64 = text.trim().parse().map_err(|_| {
        Error::config(format!(
            "{TERM}={text:?} is malformed: it must be a whole number N selecting {NUMBERED}<N*10> to {NUMBERED}<N*10+9>, e.g. {TERM}=2 for 20-29"
        ))
    })?;
    let start = term
        .checked_mul(10)
        .ok_or_else(|| Error::config(format!("{TERM}={text:?} is too large")))?;
    Ok(start..=start + 9)
}
