//! [`FallbackLayer`]: when no project can serve the requested model now, the request goes to
//! the next model of a chain the operator configured (e.g. `gemini-2.5-pro →
//! gemini-2.5-flash → gemini-2.0-flash`), instead of failing.
//!
//! A request falls back when the stack below refuses it for its model — every project at its
//! local quota ([`ErrorKind::QuotaExhausted`]), every key cooling down after Google's 429s
//! ([`ErrorKind::NoKeyAvailable`]), every key disabled for the model, e.g. not on the project's
//! tier ([`ErrorKind::AllKeysDisabled`]), the model's circuit open
//! ([`ErrorKind::CircuitOpen`]) — or when its final answer, after the retries, is Google's quota refusal
//! (429), "model not on tier", or Google failing the model (503 "model is overloaded", 500).
//! Never on a caller error (400, 403, 404 of a bad request) nor on a success. The request is
//! rewritten for the next model (the path's model, the `model` field of an OpenAI-compatible
//! body, a [`Model`] extension) and sent through the stack again; local refusals cost nothing
//! upstream, so the whole chain is tried in microseconds. A model with another after it is not
//! waited for (a circuit to half-open, a key or a quota slot to free, even with
//! [`stack().wait_up_to(..)`](crate::GeminiLayer::wait_up_to)): the next model serves now; the
//! last model of the chain waits as the stack is told to.
//!
//! Answers served by another model than the one asked for carry `x-gemini-model: <served>`,
//! `x-gemini-fallback: <requested>; reason=<reason>` and a [`ModelFallback`] extension. A
//! caller forbids fallback for one request with `x-gemini-fallback: no` (the header is not
//! sent upstream). Off unless chains are configured.
//!
//! Put it outside [`stack`](crate::stack) (or use [`GeminiLayer::fallback`](crate::GeminiLayer::fallback)),
//! and inside a [`CacheLayer`](crate::cache::CacheLayer) if you have one: the cache does not
//! keep answers served by a fallback model.
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_gemini::fallback::FallbackLayer;
//! use tower_gemini::{KeyPool, stack};
//!
//! # fn build() -> Result<(), tower_gemini::Error> {
//! let pool = KeyPool::from_keys(["test-key-0001"])?;
//! let fallback = FallbackLayer::new()
//!     .chain("gemini-2.5-pro", ["gemini-2.5-flash", "gemini-2.0-flash"])?
//!     .chain("gemini-2.5-flash", ["gemini-2.0-flash"])?;
//! let layers = ServiceBuilder::new().layer(fallback).layer(stack(&pool));
//! # let _ = layers;
//! # Ok(())
//! # }
//! ```

mod rewrite;
mod service;

#[cfg(fuzzing)]
pub(crate) use rewrite::for_model as rewrite_for_fuzzing;

use std::fmt;
use std::sync::Arc;

use http::Response;
use tower_layer::Layer;

pub use service::{Fallback, ResponseFuture};

use crate::classify::{Class, Classification};
use crate::error::{Error, ErrorKind};
use crate::model::{Model, check_name};

pub(crate) use crate::context::NextModelWaits;
pub use crate::context::{FALLBACK_HEADER, FallbackReason, MODEL_HEADER, ModelFallback};

/// The longest chain a model may have (Google lists a handful of text models).
pub const MAX_CHAIN: usize = 8;

impl FallbackReason {
    /// Why an error of the stack calls for another model, if it does.
    pub(crate) fn of_error(error: &Error) -> Option<Self> {
        match error.kind() {
            ErrorKind::QuotaExhausted => Some(FallbackReason::QuotaExhausted),
            ErrorKind::NoKeyAvailable => Some(FallbackReason::NoKeyAvailable),
            ErrorKind::AllKeysDisabled => Some(FallbackReason::ModelUnavailable),
            ErrorKind::CircuitOpen => Some(FallbackReason::CircuitOpen),
            _ => error
                .classification()
                .and_then(|c| Self::of_class(c.class())),
        }
    }

    /// Why a (final) answer calls for another model, if it does: Google's quota refusal or
    /// "model not on tier"; never a caller error or a success.
    pub(crate) fn of_response<B>(response: &Response<B>) -> Option<Self> {
        // An answer nobody classified falls back only on a 429 (the status alone says quota);
        // a bare 5xx from a service without key rotation below is not judged here.
        match response.extensions().get::<Classification>() {
            Some(classification) => Self::of_class(classification.class()),
            None if response.status() == http::StatusCode::TOO_MANY_REQUESTS => {
                Some(FallbackReason::QuotaExhausted)
            }
            None => None,
        }
    }

    fn of_class(class: Class) -> Option<Self> {
        match class {
            Class::QuotaDaily | Class::QuotaMinute | Class::RateLimited => {
                Some(FallbackReason::QuotaExhausted)
            }
            Class::ModelNotOnTier => Some(FallbackReason::ModelUnavailable),
            Class::Upstream => Some(FallbackReason::Overloaded),
            _ => None,
        }
    }
}

/// The configured chains: for each model, the models to try after it, in order.
#[derive(Default)]
pub(crate) struct Chains {
    next: std::collections::HashMap<Box<str>, Arc<[Model]>, foldhash::fast::RandomState>,
}

impl Chains {
    pub(crate) fn after(&self, model: &str) -> Option<&[Model]> {
        self.next.get(model).map(|models| &models[..])
    }

    /// The chain after `model`, shared (a request that follows it holds it without a copy).
    pub(crate) fn shared_after(&self, model: &str) -> Option<Arc<[Model]>> {
        self.next.get(model).cloned()
    }
}

/// Tries the next model of a configured chain when no project can serve the requested one.
/// See the [module docs](self).
#[derive(Clone, Default)]
pub struct FallbackLayer {
    chains: Arc<Chains>,
}

impl FallbackLayer {
    /// A layer with no chains: every request passes as it is.
    pub fn new() -> Self {
        Self::default()
    }

    /// When `model` cannot be served, try `then`, in order (at most [`MAX_CHAIN`]). Each model
    /// has one chain; the chain is not followed further from a fallback model (give it its own
    /// chain for that). Fails on a malformed model name, a model in its own chain or twice in
    /// it, or a second chain for the same model.
    ///
    /// ```
    /// use tower_gemini::fallback::FallbackLayer;
    ///
    /// let layer = FallbackLayer::new().chain("gemini-2.5-pro", ["gemini-2.5-flash"])?;
    /// assert_eq!(layer.after("gemini-2.5-pro").len(), 1);
    /// let err = layer.chain("gemini-2.5-pro", ["gemini-2.0-flash"]).unwrap_err();
    /// assert!(err.to_string().contains("already falls back"));
    /// # Ok::<(), tower_gemini::Error>(())
    /// ```
    pub fn chain<I>(self, model: impl AsRef<str>, then: I) -> Result<Self, Error>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let from = Model::new(model.as_ref());
        check_name(from.as_str()).map_err(|why| Error::config(format!("fallback chain: {why}")))?;
        let mut models: Vec<Model> = Vec::new();
        for next in then {
            let next = Model::new(next.as_ref());
            check_name(next.as_str()).map_err(|why| {
                Error::config(format!("fallback chain of {}: {why}", from.as_str()))
            })?;
            if next == from || models.contains(&next) {
                return Err(Error::config(format!(
                    "fallback chain of {}: {} appears twice; list each model once, without the model itself",
                    from.as_str(),
                    next.as_str()
                )));
            }
            models.push(next);
        }
        if models.is_empty() || models.len() > MAX_CHAIN {
            return Err(Error::config(format!(
                "fallback chain of {}: give 1 to {MAX_CHAIN} models to fall back to, got {}",
                from.as_str(),
                models.len()
            )));
        }
        let mut chains = Arc::try_unwrap(self.chains).unwrap_or_else(|shared| Chains {
            next: shared.next.clone(),
        });
        if let Some(existing) = chains.next.get(from.as_str()) {
            return Err(Error::config(format!(
                "{} already falls back to {}; give each model one chain",
                from.as_str(),
                names(existing)
            )));
        }
        chains.next.insert(from.as_str().into(), models.into());
        Ok(FallbackLayer {
            chains: Arc::new(chains),
        })
    }

    /// The models `model` falls back to, in order (empty if none).
    pub fn after(&self, model: &str) -> &[Model] {
        self.chains.after(model).unwrap_or(&[])
    }

    /// Every configured chain: the model and what it falls back to, sorted by model.
    pub fn chains(&self) -> Vec<(&str, &[Model])> {
        let mut all: Vec<(&str, &[Model])> = self
            .chains
            .next
            .iter()
            .map(|(model, then)| (&**model, &**then))
            .collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all
    }

    /// Are no chains configured (every request passes as it is)?
    pub fn is_empty(&self) -> bool {
        self.chains.next.is_empty()
    }
}

fn names(models: &[Model]) -> String {
    models
        .iter()
        .map(Model::as_str)
        .collect::<Vec<_>>()
        .join(" → ")
}

impl fmt::Debug for FallbackLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (model, then) in self.chains() {
            map.entry(&model, &names(then));
        }
        map.finish()
    }
}

impl<S> Layer<S> for FallbackLayer {
    type Service = Fallback<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback::new(inner, self.chains.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn chains_are_checked() {
        let layer = FallbackLayer::new()
            .chain(
                "models/gemini-2.5-pro",
                ["gemini-2.5-flash", "gemini-2.0-flash"],
            )
            .unwrap();
        assert_eq!(
            layer
                .after("gemini-2.5-pro")
                .iter()
                .map(Model::as_str)
                .collect::<Vec<_>>(),
            ["gemini-2.5-flash", "gemini-2.0-flash"]
        );
        assert!(layer.after("gemini-2.5-flash").is_empty());
        let clone = layer.clone();
        let more = clone
            .chain("gemini-2.5-flash", ["gemini-2.0-flash"])
            .unwrap();
        assert_eq!(more.chains().len(), 2);
        // The first layer is unchanged by the second's chain.
        assert_eq!(layer.chains().len(), 1);

        for (from, then, says) in [
            ("gemini-2.5-pro", vec!["gemini-2.5-pro"], "appears twice"),
            ("gemini-2.5-pro", vec!["a", "a"], "appears twice"),
            ("gemini-2.5-pro", vec![], "give 1 to 8"),
            ("../files", vec!["a"], "not a model name"),
            ("gemini-2.5-pro", vec!["a b"], "not a model name"),
        ] {
            let err = FallbackLayer::new().chain(from, then).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.to_string().contains(says), "{err}");
        }
        let err = layer.chain("gemini-2.5-pro", ["x"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("already falls back to gemini-2.5-flash → gemini-2.0-flash"),
            "{err}"
        );
    }

    #[test]
    fn only_refusals_for_the_model_fall_back() {
        for (kind, reason) in [
            (
                ErrorKind::QuotaExhausted,
                Some(FallbackReason::QuotaExhausted),
            ),
            (
                ErrorKind::NoKeyAvailable,
                Some(FallbackReason::NoKeyAvailable),
            ),
            (
                ErrorKind::AllKeysDisabled,
                Some(FallbackReason::ModelUnavailable),
            ),
            (ErrorKind::CircuitOpen, Some(FallbackReason::CircuitOpen)),
            (ErrorKind::Transport, None),
            (ErrorKind::Timeout, None),
            (ErrorKind::BodyTooLarge, None),
            (ErrorKind::Upstream, None),
        ] {
            assert_eq!(
                FallbackReason::of_error(&Error::new(kind, "x")),
                reason,
                "{kind}"
            );
        }
        let answer = |status: StatusCode, body: &str| {
            let mut response = Response::new(());
            *response.status_mut() = status;
            response
                .extensions_mut()
                .insert(Classification::from_response(status, body.as_bytes()));
            response
        };
        assert_eq!(
            FallbackReason::of_response(&answer(StatusCode::TOO_MANY_REQUESTS, "")),
            Some(FallbackReason::QuotaExhausted)
        );
        assert_eq!(
            FallbackReason::of_response(&answer(StatusCode::OK, "{}")),
            None
        );
        assert_eq!(
            FallbackReason::of_response(&answer(
                StatusCode::BAD_REQUEST,
                r#"{"error":{"code":400,"message":"bad","status":"INVALID_ARGUMENT"}}"#
            )),
            None
        );
        let mut bare = Response::new(());
        *bare.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        assert_eq!(
            FallbackReason::of_response(&bare),
            Some(FallbackReason::QuotaExhausted)
        );
        *bare.status_mut() = StatusCode::NOT_FOUND;
        assert_eq!(FallbackReason::of_response(&bare), None);
    }
}
