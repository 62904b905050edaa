//! The [`Cost`] service and [`CostBody`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower_service::Service;

use super::budget::Reservation;
use super::{Account, CallCost, CostReport, Price, Prices, Spend};
use crate::context::ModelFallback;
use crate::error::{BoxError, Error};
use crate::model::{self, Model};
use crate::pool::SelectedKey;
use crate::scan::LastCounts;

/// The usage fields read from an answer, each under its native and OpenAI-compatible name.
const PROMPT: usize = 0;
const OUTPUT: usize = 1;
const THOUGHTS: usize = 2;
const CACHED: usize = 3;
/// (Interactions API: `usage.total_input_tokens`, `total_output_tokens`,
/// `total_thought_tokens`, `total_cached_tokens`.)
pub(crate) const FIELDS: [&[&[u8]]; 4] = [
    &[
        b"\"promptTokenCount\"",
        b"\"prompt_tokens\"",
        b"\"total_input_tokens\"",
    ],
    &[
        b"\"candidatesTokenCount\"",
        b"\"completion_tokens\"",
        b"\"total_output_tokens\"",
    ],
    &[b"\"thoughtsTokenCount\"", b"\"total_thought_tokens\""],
    &[
        b"\"cachedContentTokenCount\"",
        b"\"cached_tokens\"",
        b"\"total_cached_tokens\"",
    ],
];

/// Prices every call, made by [`CostLayer`](super::CostLayer). See the [module docs](super).
#[derive(Clone, Debug)]
pub struct Cost<S> {
    inner: S,
    prices: Arc<Prices>,
    spend: Spend,
}

impl<S> Cost<S> {
    pub(crate) fn new(inner: S, prices: Arc<Prices>, spend: Spend) -> Self {
        Cost {
            inner,
            prices,
            spend,
        }
    }

    crate::macros::define_inner_service_accessors!();
}

/// What the request said, kept for its answer.
struct Asked {
    /// Is the call billed (a POST: it generates)?
    bills: bool,
    model: Option<Model>,
    account: Option<Account>,
    prices: Arc<Prices>,
    spend: Spend,
    /// The call's estimated cost, held against the budgets until it is settled.
    reservation: Reservation,
    /// What a batch's create costs (its estimate at the batch rate): its answer shows no usage.
    batch: u64,
}

/// Output tokens assumed for a call whose body sets no maximum (Gemini's usual default).
const DEFAULT_MAX_OUTPUT: u64 = 8192;
/// The most output tokens one answer of any Gemini model may have: a larger maximum a caller
/// asks for is read as this (else one call could hold the whole budget while in flight).
const MAX_OUTPUT: u64 = 65_536;
/// The most answers (`candidateCount`, `n`) one call may ask for.
const MAX_ANSWERS: u64 = 8;

/// The most a call may cost by its body: its prompt as the quota layer estimates it, and the
/// output tokens it allows (`generationConfig.maxOutputTokens`, an interaction's
/// `generation_config.max_output_tokens`, `max_tokens` or
/// `max_completion_tokens`, as a number or a string; [`DEFAULT_MAX_OUTPUT`] if none) times the
/// answers it asks for (`candidateCount`, `n`), at `price`.
fn estimate(body: &[u8], price: &Price) -> u64 {
    use crate::state::TokenEstimator;
    use serde_json::Value;
    /// A whole number sent as a number or a string (Google's JSON accepts both).
    fn whole(value: Option<&Value>) -> Option<u64> {
        match value? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
    let prompt = crate::state::BytesPerToken::default().estimate(body).tokens;
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let config = json.get("generationConfig");
    let output = whole(config.and_then(|c| c.get("maxOutputTokens")))
        .or_else(|| whole(json.get("generation_config")?.get("max_output_tokens")))
        .or_else(|| whole(json.get("max_completion_tokens")))
        .or_else(|| whole(json.get("max_tokens")))
        .unwrap_or(DEFAULT_MAX_OUTPUT)
        .min(MAX_OUTPUT);
    let answers = whole(config.and_then(|c| c.get("candidateCount")))
        .or_else(|| whole(json.get("n")))
        .unwrap_or(1)
        .clamp(1, MAX_ANSWERS);
    price.nano_usd(prompt, 0, output.saturating_mul(answers))
}

/// Google's batch rate: half the interactive price.
const BATCH_DISCOUNT: u64 = 2;

/// The most a batch may cost by its body: each inline request's prompt and the output it
/// allows (its `generationConfig.maxOutputTokens`, or [`DEFAULT_MAX_OUTPUT`]), at half `price`.
/// A batch whose requests are in a file is priced by its body only (the file is not read).
fn batch_estimate(body: &[u8], price: &Price) -> u64 {
    use crate::state::TokenEstimator;
    use serde_json::Value;
    let prompt = crate::state::BytesPerToken::default().estimate(body).tokens;
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let batch = json.get("batch").unwrap_or(&Value::Null);
    let requests = batch
        .get("inputConfig")
        .or_else(|| batch.get("input_config"))
        .and_then(|c| c.get("requests"))
        .and_then(|r| r.get("requests"))
        .and_then(Value::as_array);
    let output: u64 = requests.map_or(0, |requests| {
        requests
            .iter()
            .map(|item| {
                let request = item.get("request").unwrap_or(&Value::Null);
                request
                    .get("generationConfig")
                    .or_else(|| request.get("generation_config"))
                    .and_then(|c| {
                        c.get("maxOutputTokens")
                            .or_else(|| c.get("max_output_tokens"))
                    })
                    .and_then(|n| n.as_u64().or_else(|| n.as_str()?.trim().parse().ok()))
                    .unwrap_or(DEFAULT_MAX_OUTPUT)
                    .min(MAX_OUTPUT)
            })
            .fold(0u64, u64::saturating_add)
    });
    price.nano_usd(prompt, 0, output) / BATCH_DISCOUNT
}

/// `model`'s price; with budgets set, a model missing from the table is priced at the dearest
/// listed rate (an unpriced call is never free when money is limited). `false`: not listed.
fn price_of(prices: &Prices, spend: &Spend, model: Option<&Model>) -> (Option<Price>, bool) {
    match model.and_then(|m| prices.get(m.as_str())) {
        Some(price) => (Some(*price), true),
        None if spend.budget().is_limited() => (prices.dearest().copied(), false),
        None => (None, false),
    }
}

impl<S, B, ResB> Service<Request<B>> for Cost<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    B: 'static,
{
    type Response = Response<CostBody<ResB>>;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_inner)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let account = request.extensions().get::<Account>().cloned();
        let model = model::resolve(&mut request);
        // Only a POST that generates is billed: a GET of a stored interaction, or the answer
        // to its cancel (or a batch's), shows the usage of the call that made it, billed then.
        let path = request.uri().path();
        // (Nor an upload, which carries a file, not a prompt, nor a File Search store's calls:
        // their indexing is priced by embedding tokens, which the price table does not hold.)
        let bills = request.method() == http::Method::POST
            && !path.ends_with("/cancel")
            && !path.ends_with(":cancel")
            && !path.contains("/upload/")
            && !path.contains("/fileSearchStores");
        // A batch is billed at its create, at its estimate and Google's batch rate (its answer
        // shows no usage); held against the budgets like any estimate.
        let batch = if bills && crate::model::creates_batch(request.uri().path()) {
            let (price, _) = price_of(&self.prices, &self.spend, model.as_ref());
            match (price, crate::peek::body_bytes(request.body())) {
                (Some(price), Some(body)) => batch_estimate(&body, &price),
                _ => 0,
            }
        } else {
            0
        };
        // Only when budgets refuse is a call's cost estimated and held before it is sent.
        let estimated = if batch > 0 {
            batch
        } else if bills && self.spend.budget().refuses() {
            let (price, _) = price_of(&self.prices, &self.spend, model.as_ref());
            let stored = request
                .extensions()
                .get::<crate::context::StoredContext>()
                .map_or(0, |s| s.0);
            match (price, crate::peek::body_bytes(request.body())) {
                // (A stored conversation it continues is prompt too.)
                (Some(price), Some(body)) => {
                    estimate(&body, &price).saturating_add(price.nano_usd(stored, 0, 0))
                }
                (Some(price), None) => price.nano_usd(0, 0, DEFAULT_MAX_OUTPUT),
                (None, _) => 0,
            }
        } else {
            0
        };
        let reservation = match self
            .spend
            .reserve(account.as_ref().map(Account::as_str), estimated)
        {
            Ok(reservation) => reservation,
            Err(refusal) => {
                return ResponseFuture {
                    future: None,
                    asked: None,
                    refusal: Some(refusal),
                };
            }
        };
        let asked = Asked {
            bills,
            model,
            account,
            prices: self.prices.clone(),
            spend: self.spend.clone(),
            reservation,
            batch,
        };
        ResponseFuture {
            future: Some(self.inner.call(request)),
            asked: Some(asked),
            refusal: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Cost`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: Option<F>,
        asked: Option<Asked>,
        refusal: Option<Error>,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<CostBody<ResB>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(future) = this.future.as_pin_mut() else {
            return Poll::Ready(Err(this
                .refusal
                .take()
                .unwrap_or_else(Error::polled_after_completion)));
        };
        let response = match std::task::ready!(future.poll(cx)) {
            Ok(response) => response,
            Err(error) => return Poll::Ready(Err(Error::from_inner(error))),
        };
        let Some(asked) = this.asked.take() else {
            return Poll::Ready(Err(Error::polled_after_completion()));
        };
        let (mut head, body) = response.into_parts();
        if !head.status.is_success() || !asked.bills {
            // Errors report no usage and are not billed; nor are reads.
            return Poll::Ready(Ok(Response::from_parts(head, CostBody::passthrough(body))));
        }
        let model = head
            .extensions
            .get::<ModelFallback>()
            .map(|fallback| fallback.served.clone())
            .or(asked.model);
        let project = head
            .extensions
            .get::<SelectedKey>()
            .map(|key| key.project().to_owned());
        let report = CostReport::default();
        head.extensions.insert(report.clone());
        let (price, priced) = price_of(&asked.prices, &asked.spend, model.as_ref());
        let tap = Tap {
            price,
            priced,
            _reservation: asked.reservation,
            batch: asked.batch,
            model,
            project,
            account: asked.account,
            spend: asked.spend,
            report,
            scanner: LastCounts::default(),
            counts: [None; 4],
        };
        Poll::Ready(Ok(Response::from_parts(head, CostBody::tapped(body, tap))))
    }
}

struct Tap {
    price: Option<Price>,
    /// Is the model in the price table (else `price` is the dearest rate, or none)?
    priced: bool,
    /// Given back once this call's cost is recorded (fields drop after `Drop::drop`).
    _reservation: Reservation,
    /// A batch's cost at its create (else 0).
    batch: u64,
    model: Option<Model>,
    project: Option<String>,
    account: Option<Account>,
    spend: Spend,
    report: CostReport,
    scanner: LastCounts<4>,
    counts: [Option<u64>; 4],
}

impl Tap {
    fn scan(&mut self, data: &[u8]) {
        let found = self.scanner.scan_placed(data, &FIELDS);
        // A cached count is Google's only where it follows the prompt count of the same usage
        // object: one before it (in a function call's arguments, say, which the model writes
        // and a caller can steer) would bill the prompt at the cached rate.
        if let Some((_, prompt_at)) = found[PROMPT] {
            self.counts[CACHED] = match found[CACHED] {
                Some((count, at)) if at > prompt_at => Some(count),
                _ => None,
            };
        } else if let Some((count, _)) = found[CACHED] {
            self.counts[CACHED] = Some(count);
        }
        for field in [PROMPT, OUTPUT, THOUGHTS] {
            if let Some((count, _)) = found[field] {
                self.counts[field] = Some(count);
            }
        }
    }
}

impl Drop for Tap {
    /// The body ended or was dropped: the last counts seen are the call's.
    fn drop(&mut self) {
        if self.counts[PROMPT].is_none() && self.counts[OUTPUT].is_none() {
            // An answer that showed no usage (a stream its client left before the last chunk,
            // a format the scan cannot read): where budgets refuse, it costs what it was
            // estimated to cost, never nothing.
            let estimate = self._reservation.nanos().max(self.batch);
            if estimate > 0 {
                let account = self.account.as_ref().map(Account::as_str);
                self.spend
                    .record(self.project.as_deref(), account, estimate);
            }
            return;
        }
        let prompt = self.counts[PROMPT].unwrap_or(0);
        let cached = self.counts[CACHED].unwrap_or(0);
        let output = self.counts[OUTPUT]
            .unwrap_or(0)
            .saturating_add(self.counts[THOUGHTS].unwrap_or(0));
        let nano_usd = self
            .price
            .map_or(0, |price| price.nano_usd(prompt, cached, output));
        let model = self.model.as_ref().map(Model::as_str);
        let account = self.account.as_ref().map(Account::as_str);
        self.spend
            .record(self.project.as_deref(), account, nano_usd);
        crate::telemetry::cost(
            model.unwrap_or("unknown"),
            self.project.as_deref(),
            nano_usd,
        );
        tracing::debug!(
            target: "tower_gemini::cost",
            model,
            project = self.project.as_deref(),
            account,
            prompt_tokens = prompt,
            cached_tokens = cached,
            output_tokens = output,
            usd = nano_usd as f64 / 1e9,
            priced = self.priced,
            "call cost"
        );
        let _ = self.report.0.set(CallCost {
            model: self.model.take(),
            project: self.project.take(),
            account: account.map(str::to_owned),
            prompt_tokens: prompt,
            cached_tokens: cached,
            output_tokens: output,
            nano_usd,
            priced: self.priced,
        });
    }
}

pin_project_lite::pin_project! {
    /// A response body that reads the answer's usage as it streams through, unchanged and
    /// undelayed, and prices the call when it ends.
    pub struct CostBody<B> {
        #[pin]
        inner: B,
        tap: Option<Box<Tap>>,
    }
}

impl<B> CostBody<B> {
    fn passthrough(inner: B) -> Self {
        CostBody { inner, tap: None }
    }

    fn tapped(inner: B, tap: Tap) -> Self {
        CostBody {
            inner,
            tap: Some(Box::new(tap)),
        }
    }
}

impl<B> std::fmt::Debug for CostBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CostBody")
            .field("priced", &self.tap.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: Body> Body for CostBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = crate::body::to_bytes(frame);
                if let (Some(tap), Some(data)) = (this.tap.as_mut(), frame.data_ref()) {
                    tap.scan(data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                // Priced now, not when the body is dropped: the report is ready as the
                // caller sees the end.
                *this.tap = None;
                Poll::Ready(None)
            }
            other => other.map(|frame| frame.map(|r| r.map(crate::body::to_bytes))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
