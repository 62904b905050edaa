//! Which circuit a request belongs to: [`Scope`].

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use http::Request;

pub use crate::context::RequestHead;
use crate::model::model_of;
use crate::pool::SelectedKey;

type Extract = Arc<dyn Fn(&RequestHead<'_>) -> String + Send + Sync>;

/// Chooses the circuit of a request.
///
/// ```
/// use tower_gemini::circuit_breaker::{CircuitBreakerLayer, Scope};
///
/// let by_model = CircuitBreakerLayer::new(); // per model is the default
/// let one = CircuitBreakerLayer::new().scope(Scope::global());
/// let by_host = CircuitBreakerLayer::new()
///     .scope(Scope::custom(|req| req.uri.host().unwrap_or("none").to_owned()));
/// # let _ = (by_model, one, by_host);
/// ```
#[derive(Clone)]
pub struct Scope(Kind);

#[derive(Clone)]
enum Kind {
    Global,
    PerModel,
    PerKey,
    Custom(Extract),
}

impl Scope {
    /// One circuit for everything.
    pub fn global() -> Self {
        Scope(Kind::Global)
    }

    /// One circuit per model (the default): Gemini's "model is overloaded" is per model. The
    /// model comes from [`SelectedKey`], the [`Model`](crate::Model) extension, the path, or an
    /// OpenAI-style body in memory.
    pub fn per_model() -> Self {
        Scope(Kind::PerModel)
    }

    /// One circuit per key. Needs the [`SelectedKey`] in the request: put the breaker *inside*
    /// [`KeyRotationLayer`](crate::KeyRotationLayer). Requests without one share the circuit
    /// `unknown`.
    pub fn per_key() -> Self {
        Scope(Kind::PerKey)
    }

    /// Any function of the request head.
    pub fn custom<F>(scope: F) -> Self
    where
        F: Fn(&RequestHead<'_>) -> String + Send + Sync + 'static,
    {
        Scope(Kind::Custom(Arc::new(scope)))
    }

    pub(crate) fn of<'r, B: 'static>(&self, request: &'r Request<B>) -> Cow<'r, str> {
        match &self.0 {
            Kind::Global => Cow::Borrowed("global"),
            Kind::PerModel => {
                if let Some(model) = request
                    .extensions()
                    .get::<SelectedKey>()
                    .and_then(SelectedKey::model)
                {
                    return Cow::Borrowed(model);
                }
                model_of(request).unwrap_or(Cow::Borrowed("unknown"))
            }
            Kind::PerKey => match request.extensions().get::<SelectedKey>() {
                Some(selected) => Cow::Owned(selected.fingerprint().to_string()),
                None => Cow::Borrowed("unknown"),
            },
            Kind::Custom(extract) => Cow::Owned(extract(&RequestHead {
                method: request.method(),
                uri: request.uri(),
                headers: request.headers(),
                extensions: request.extensions(),
            })),
        }
    }
}

impl Default for Scope {
    fn default() -> Self {
        Scope::per_model()
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Kind::Global => "Scope::global",
            Kind::PerModel => "Scope::per_model",
            Kind::PerKey => "Scope::per_key",
            Kind::Custom(_) => "Scope::custom",
        })
    }
}
