//! What a model's tokens cost: [`Prices`] and [`Price`].

use std::collections::BTreeMap;
use std::fmt;

use crate::error::Error;
use crate::model::check_name;

/// The date of the built-in table ([`Prices::google`]).
pub const PRICES_DATED: &str = "2026-11-22";

/// One model's prices, in US dollars per million tokens (Google's unit), for the paid tier.
///
/// Prompts longer than [`long_prompt_over`](Price::long_prompt_over) tokens are billed at the
/// `long_*` prices where the model has them (gemini-2.5-pro above 200,000 tokens).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Price {
    /// Input (prompt) tokens not served from Google's context cache.
    pub input: f64,
    /// Output tokens: candidates and thinking.
    pub output: f64,
    /// Input tokens served from Google's context cache (`cachedContentTokenCount`).
    pub cached_input: f64,
    /// A prompt longer than this many tokens is billed at the `long_*` prices.
    pub long_prompt_over: Option<u64>,
    /// Input price of a long prompt.
    pub long_input: f64,
    /// Output price after a long prompt.
    pub long_output: f64,
    /// Cached input price of a long prompt.
    pub long_cached_input: f64,
}

impl Price {
    /// Input, output and cached-input prices per million tokens, the same for every prompt
    /// length. Fails on a negative or non-finite price.
    ///
    /// ```
    /// use tower_gemini::cost::Price;
    ///
    /// let price = Price::per_million(0.30, 2.50, 0.03)?;
    /// assert_eq!(price.input, 0.30);
    /// # Ok::<(), tower_gemini::Error>(())
    /// ```
    pub fn per_million(input: f64, output: f64, cached_input: f64) -> Result<Price, Error> {
        for (what, usd) in [
            ("input", input),
            ("output", output),
            ("cached input", cached_input),
        ] {
            if !usd.is_finite() || !(0.0..=1e6).contains(&usd) {
                return Err(Error::config(format!(
                    "price for {what} tokens must be US dollars per million tokens, 0 to 1,000,000, got {usd}"
                )));
            }
        }
        Ok(Price {
            input,
            output,
            cached_input,
            long_prompt_over: None,
            long_input: input,
            long_output: output,
            long_cached_input: cached_input,
        })
    }

    /// Other prices for prompts longer than `over` tokens.
    pub fn long_prompts(
        mut self,
        over: u64,
        input: f64,
        output: f64,
        cached_input: f64,
    ) -> Result<Price, Error> {
        let long = Price::per_million(input, output, cached_input)?;
        self.long_prompt_over = Some(over);
        self.long_input = long.input;
        self.long_output = long.output;
        self.long_cached_input = long.cached_input;
        Ok(self)
    }

    /// What a call costs, in billionths of a dollar (nano-USD): `prompt` input tokens of
    /// which `cached` came from the context cache, and `output` tokens.
    pub fn nano_usd(&self, prompt: u64, cached: u64, output: u64) -> u64 {
        let long = self.long_prompt_over.is_some_and(|over| prompt > over);
        let (input, out, cache) = if long {
            (self.long_input, self.long_output, self.long_cached_input)
        } else {
            (self.input, self.output, self.cached_input)
        };
        let cached = cached.min(prompt);
        // Dollars per million tokens = thousandths of a nano-dollar per token: per token,
        // `usd * 1000` nano-USD. f64 holds every integer count below 2^53 exactly.
        let nanos = (prompt - cached) as f64 * input * 1000.0
            + cached as f64 * cache * 1000.0
            + output as f64 * out * 1000.0;
        nanos.round().min(u64::MAX as f64) as u64
    }
}

/// Prices per model. [`Prices::google`] is Google's list for the paid tier on
/// [`PRICES_DATED`]; [`set`](Prices::set) overrides or adds a model (from TOML in the
/// gateway). A model not in the table costs nothing and is reported as unpriced.
#[derive(Clone, PartialEq)]
pub struct Prices {
    models: BTreeMap<String, Price>,
}

impl Prices {
    /// An empty table.
    pub fn none() -> Prices {
        Prices {
            models: BTreeMap::new(),
        }
    }

    /// Google's paid-tier prices for text, in US dollars per million tokens, as listed on
    /// <https://ai.google.dev/gemini-api/docs/pricing> (figures as quoted in public summaries
    /// of that page in 2026; this machine cannot read it). Cached input is Google's context
    /// caching price: a tenth of input for the 2.5 and 3 families, a quarter for 2.0. Check the
    /// page and override what changed with [`set`](Prices::set).
    pub fn google() -> Prices {
        let flat = |input: f64, output: f64, cached: f64| Price {
            input,
            output,
            cached_input: cached,
            long_prompt_over: None,
            long_input: input,
            long_output: output,
            long_cached_input: cached,
        };
        let tiered = |input: f64, output: f64, cached: f64, long: (f64, f64, f64)| Price {
            long_prompt_over: Some(200_000),
            long_input: long.0,
            long_output: long.1,
            long_cached_input: long.2,
            ..flat(input, output, cached)
        };
        let models = [
            (
                "gemini-3.1-pro",
                tiered(2.00, 12.00, 0.20, (4.00, 18.00, 0.40)),
            ),
            ("gemini-3-flash", flat(0.50, 3.00, 0.05)),
            ("gemini-3.1-flash-lite", flat(0.25, 1.50, 0.025)),
            (
                "gemini-2.5-pro",
                tiered(1.25, 10.00, 0.125, (2.50, 15.00, 0.25)),
            ),
            ("gemini-2.5-flash", flat(0.30, 2.50, 0.03)),
            ("gemini-2.5-flash-lite", flat(0.10, 0.40, 0.01)),
            ("gemini-2.0-flash", flat(0.10, 0.40, 0.025)),
            ("gemini-2.0-flash-lite", flat(0.075, 0.30, 0.075)),
        ];
        Prices {
            models: models
                .into_iter()
                .map(|(model, price)| (model.to_owned(), price))
                .collect(),
        }
    }

    /// Set `model`'s price (a new model, or a change Google made). Fails on a malformed name.
    ///
    /// ```
    /// use tower_gemini::cost::{Price, Prices};
    ///
    /// let prices = Prices::google().set("gemini-2.5-flash", Price::per_million(0.25, 2.00, 0.025)?)?;
    /// assert_eq!(prices.get("gemini-2.5-flash").unwrap().input, 0.25);
    /// # Ok::<(), tower_gemini::Error>(())
    /// ```
    pub fn set(mut self, model: impl AsRef<str>, price: Price) -> Result<Prices, Error> {
        let model = crate::Model::new(model.as_ref());
        check_name(model.as_str()).map_err(|why| Error::config(format!("prices: {why}")))?;
        self.models.insert(model.as_str().to_owned(), price);
        Ok(self)
    }

    /// `model`'s price. A dated or tuned variant (`gemini-2.5-flash-preview-05-20`,
    /// `gemini-2.5-flash-001`) is priced as the longest listed name it starts with.
    pub fn get(&self, model: &str) -> Option<&Price> {
        if let Some(price) = self.models.get(model) {
            return Some(price);
        }
        self.models
            .iter()
            .filter(|(name, _)| {
                model.len() > name.len()
                    && model.starts_with(name.as_str())
                    && model.as_bytes()[name.len()] == b'-'
            })
            .max_by_key(|(name, _)| name.len())
            .map(|(_, price)| price)
    }

    /// The dearest listed price (by output, then input, per million tokens): what a model
    /// missing from the table is charged when budgets are set.
    pub fn dearest(&self) -> Option<&Price> {
        self.models.values().max_by(|a, b| {
            (a.long_output.max(a.output), a.long_input.max(a.input))
                .partial_cmp(&(b.long_output.max(b.output), b.long_input.max(b.input)))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
    }

    /// Every listed model and its price, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Price)> {
        self.models
            .iter()
            .map(|(model, price)| (model.as_str(), price))
    }
}

impl Default for Prices {
    /// [`Prices::google`].
    fn default() -> Self {
        Prices::google()
    }
}

impl fmt::Debug for Prices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.models.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_costs_its_tokens() {
        let prices = Prices::google();
        let flash = prices.get("gemini-2.5-flash").unwrap();
        // 1M prompt tokens and 1M output tokens: $0.30 + $2.50.
        assert_eq!(flash.nano_usd(1_000_000, 0, 1_000_000), 2_800_000_000);
        // 10 prompt tokens of which 4 cached, 3 output: 6×300 + 4×30 + 3×2500 nano-USD.
        assert_eq!(flash.nano_usd(10, 4, 3), 6 * 300 + 4 * 30 + 3 * 2500);
        // More cached than prompt (a malformed answer) costs no negative tokens.
        assert_eq!(flash.nano_usd(2, 5, 0), 2 * 30);
        let pro = prices.get("gemini-2.5-pro").unwrap();
        assert_eq!(pro.nano_usd(200_000, 0, 0), 200_000 * 1250);
        assert_eq!(pro.nano_usd(200_001, 0, 1), 200_001 * 2500 + 15_000);
    }

    #[test]
    fn variants_are_priced_as_their_family() {
        let prices = Prices::google();
        assert_eq!(
            prices.get("gemini-2.5-flash-preview-05-20"),
            prices.get("gemini-2.5-flash")
        );
        assert_eq!(
            prices.get("gemini-2.5-flash-lite-001"),
            prices.get("gemini-2.5-flash-lite")
        );
        assert!(prices.get("gemini-2.5-flashy").is_none());
        assert!(prices.get("text-embedding-004").is_none());
    }

    #[test]
    fn bad_prices_and_names_are_refused() {
        for bad in [-1.0, f64::NAN, f64::INFINITY, 2e6] {
            let err = Price::per_million(bad, 1.0, 0.1).unwrap_err();
            assert!(err.to_string().contains("US dollars per million"), "{err}");
        }
        let price = Price::per_million(1.0, 1.0, 0.1).unwrap();
        let err = Prices::none().set("../x", price).unwrap_err();
        assert!(err.to_string().contains("not a model name"), "{err}");
    }
}
