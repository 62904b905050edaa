//! The [`Cache`] service.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use moka::future::Cache as Moka;
use tower_service::Service;

use super::key::{self, Keyed};
use super::{CACHE_HEADER, CacheStatus, Entry, NAMESPACE_HEADER, Settings};
use crate::error::{BoxError, Error, ErrorKind};

/// The largest request or answer body the cache reads into memory.
const MAX_BUFFERED: usize = 32 * 1024 * 1024;

pin_project_lite::pin_project! {
    /// An answer: from memory (cached, or read whole to be cached) or passed through. Its error
    /// is the upstream body's (one from memory cannot fail).
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Cached { body: Full<Bytes> },
        Passed { #[pin] body: B },
        // An answer too large to keep: what was read to find that out, then the rest.
        Prefixed { prefix: Option<Bytes>, body: std::pin::Pin<Box<B>> },
        Recording { #[pin] body: B, recorder: Option<Box<Recorder>> },
    }
}

/// A streamed answer being recorded as it passes: stored when it ends whole.
struct Recorder {
    key: Arc<str>,
    store: Moka<Arc<str>, Entry>,
    settings: Arc<Settings>,
    status: StatusCode,
    headers: HeaderMap,
    ttl: Duration,
    seen: Vec<u8>,
}

impl Recorder {
    /// Keep `data`; past [`MAX_ENTRY_BYTES`](super::MAX_ENTRY_BYTES) the stream is too long
    /// to keep, and recording stops.
    fn keep(recorder: &mut Option<Box<Recorder>>, data: &[u8]) {
        if let Some(r) = recorder {
            if r.seen.len() + data.len() > super::MAX_ENTRY_BYTES {
                *recorder = None;
                return;
            }
            // Looked for as the chunks come (with the bytes a split needle may start in), not
            // once over the whole stream at its end.
            let from = r.seen.len().saturating_sub(ERROR.len() - 1);
            r.seen.extend_from_slice(data);
            if holds(&r.seen[from..], ERROR) {
                // A stream that carried an error is never kept: stop recording it.
                *recorder = None;
            }
        }
    }

    /// The stream ended without an error: store it if it is whole.
    fn finish(self) {
        if !ended(&self.seen) {
            return;
        }
        // Stored from a task: the body is polled where no `.await` can be written. Without a
        // runtime (a body read by another executor) the answer is simply not kept.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut seen = self.seen;
        // Exactly its length: the entry is weighed by it.
        seen.shrink_to_fit();
        let entry = Entry {
            status: self.status,
            headers: self.headers,
            body: Bytes::from(seen),
            ttl: self.ttl,
        };
        super::second::keep(self.settings.second.as_ref(), &self.key, &entry);
        let (store, key) = (self.store, self.key);
        runtime.spawn(async move { store.insert(key, entry).await });
    }
}

/// An error object in a stream.
const ERROR: &[u8] = b"\"error\"";

/// The part of a stream its end is looked for in: its last chunk is within it.
const TAIL: usize = 16 * 1024;

fn holds(text: &[u8], needle: &[u8]) -> bool {
    text.windows(needle.len()).any(|w| w == needle)
}

/// Did a stream end as Gemini ends one — a last chunk with a `finishReason`, or OpenAI's
/// `[DONE]`? (A stream cut short is not kept; one that carried an error was dropped as it came.)
fn ended(seen: &[u8]) -> bool {
    let tail = &seen[seen.len().saturating_sub(TAIL)..];
    holds(tail, b"\"finishReason\"") || holds(tail, b"data: [DONE]")
}

/// Whole and without an error: what a recorded stream must be to be kept.
#[cfg(test)]
fn whole_stream(seen: &[u8]) -> bool {
    ended(seen) && !holds(seen, ERROR)
}

impl<B> ResponseBody<B> {
    fn cached(body: Full<Bytes>) -> Self {
        ResponseBody {
            kind: Kind::Cached { body },
        }
    }

    fn passed(body: B) -> Self {
        ResponseBody {
            kind: Kind::Passed { body },
        }
    }

    fn prefixed(prefix: Bytes, body: std::pin::Pin<Box<B>>) -> Self {
        ResponseBody {
            kind: Kind::Prefixed {
                prefix: (!prefix.is_empty()).then_some(prefix),
                body,
            },
        }
    }

    fn recording(body: B, recorder: Recorder) -> Self {
        ResponseBody {
            kind: Kind::Recording {
                body,
                recorder: Some(Box::new(recorder)),
            },
        }
    }
}

impl<B: Body<Data = Bytes>> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Cached { body } => std::pin::Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(|never| match never {}))),
            KindProj::Passed { body } => body.poll_frame(cx),
            KindProj::Prefixed { prefix, body } => match prefix.take() {
                Some(prefix) => Poll::Ready(Some(Ok(http_body::Frame::data(prefix)))),
                None => body.as_mut().poll_frame(cx),
            },
            KindProj::Recording { body, recorder } => {
                let polled = body.poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            Recorder::keep(recorder, data);
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(whole) = recorder.take() {
                            whole.finish();
                        }
                    }
                    // A broken stream is never kept.
                    Poll::Ready(Some(Err(_))) => *recorder = None,
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Cached { body } => body.is_end_stream(),
            Kind::Passed { body } => body.is_end_stream(),
            Kind::Prefixed { prefix, body } => prefix.is_none() && body.is_end_stream(),
            // Not ended until the recorder has seen the end.
            Kind::Recording { .. } => false,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.kind {
            Kind::Cached { body } => body.size_hint(),
            Kind::Passed { body } | Kind::Recording { body, .. } => body.size_hint(),
            Kind::Prefixed { prefix, body } => {
                let before = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let rest = body.size_hint();
                let mut hint = http_body::SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(before));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(before));
                }
                hint
            }
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let from = match &self.kind {
            Kind::Cached { .. } => "memory",
            Kind::Passed { .. } | Kind::Prefixed { .. } => "upstream",
            Kind::Recording { .. } => "upstream, recorded",
        };
        f.debug_struct("ResponseBody").field("from", &from).finish()
    }
}

/// Serves repeated prompts from memory. See [`CacheLayer`](super::CacheLayer).
#[derive(Clone)]
pub struct Cache<S> {
    inner: S,
    store: Moka<Arc<str>, Entry>,
    settings: Arc<Settings>,
}

impl<S> Cache<S> {
    pub(crate) fn new(inner: S, store: Moka<Arc<str>, Entry>, settings: Arc<Settings>) -> Self {
        Cache {
            inner,
            store,
            settings,
        }
    }
}

impl<S> std::fmt::Debug for Cache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("entries", &self.store.entry_count())
            .finish_non_exhaustive()
    }
}

/// Why a coalesced miss stored nothing, as its waiters learn it.
enum Uncached {
    /// Not to be kept (an error status, an answer from a fallback model, one too large): the
    /// caller who fetched it gets it as it comes; the callers who waited make their own call.
    Passed,
    /// The call failed: every waiter gets a copy of the error.
    Failed(ErrorKind, String, Option<Duration>),
}

/// What the caller that made the upstream call of a coalesced miss keeps for itself: the
/// answer's extensions (the key that served it, its classification, its cost report, a
/// fallback), the answer itself when it is not kept, or the whole error. Waiters get the
/// shared answer or a copy of the error without them: they made no call.
enum Leader<B> {
    Answered(http::Extensions),
    Passed(Response<ResponseBody<B>>),
    Failed(Error),
}

/// A 200 answer's body, read to keep it.
enum Read<B> {
    Whole(Bytes),
    /// Longer than an entry may be: what was read, and the rest to pass on.
    TooLarge(Bytes, B),
}

/// Read `body` whole if it ends within `limit` bytes.
async fn read_up_to<B>(mut body: B, limit: usize) -> Result<Read<B>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut seen = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            // Trailers: Gemini sends none; what came before is the answer.
            continue;
        };
        seen.extend_from_slice(&data);
        if seen.len() > limit {
            return Ok(Read::TooLarge(seen.freeze(), body));
        }
    }
    Ok(Read::Whole(seen.freeze()))
}

fn respond(entry: &Entry, status: CacheStatus) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(entry.body.clone()));
    *response.status_mut() = entry.status;
    *response.headers_mut() = entry.headers.clone();
    response.headers_mut().insert(
        CACHE_HEADER,
        HeaderValue::from_static(match status {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
        }),
    );
    response.extensions_mut().insert(status);
    response
}

/// Headers worth keeping with a stored answer (not hop-by-hop, not per-call).
/// (An answer a fallback model served keeps the headers saying so; it is never stored.)
fn kept(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for name in [
        "content-type",
        crate::context::MODEL_HEADER,
        crate::context::FALLBACK_HEADER,
    ] {
        // Copied: a value parsed by hyper is a slice of its read buffer, and a clone would
        // keep that whole buffer (8 KiB or more) alive as long as the entry.
        if let Some(value) = headers.get(name)
            && let Ok(value) = HeaderValue::from_bytes(value.as_bytes())
        {
            kept.insert(http::HeaderName::from_static(name), value);
        }
    }
    kept
}

impl<S, B, ResB> Service<Request<B>> for Cache<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Body + From<Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Self::Response, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_inner)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The service polled ready is the one to call; a clone takes its place.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let (store, settings) = (self.store.clone(), self.settings.clone());
        if !key::candidate(request.method(), request.uri().path(), request.headers()) {
            // What the caller told the cache is not Google's business (a namespace names a
            // tenant).
            request.headers_mut().remove(NAMESPACE_HEADER);
            request.headers_mut().remove(CACHE_HEADER);
            // Not cacheable whatever its body says: passed on as it is, not read.
            let call = inner.call(request);
            return Box::pin(async move {
                let response = call.await.map_err(Error::from_inner)?;
                Ok(response.map(ResponseBody::passed))
            });
        }
        Box::pin(
            Lookup {
                inner,
                store,
                settings,
            }
            .serve(request),
        )
    }
}

/// A cacheable request's way through the cache: the service that makes the call, the store and
/// the settings.
struct Lookup<S> {
    inner: S,
    store: Moka<Arc<str>, Entry>,
    settings: Arc<Settings>,
}

/// An answer of the cache service.
type Answer<ResB> = Result<Response<ResponseBody<ResB>>, Error>;

/// The body of a request, read whole (at most [`MAX_BUFFERED`]) to find its key.
async fn read_request<B>(body: B) -> Result<Bytes, Error>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    Ok(Limited::new(body, MAX_BUFFERED)
        .collect()
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::BodyTooLarge,
                format!(
                    "the request body could not be read whole (at most {MAX_BUFFERED} bytes): {e}"
                ),
            )
        })?
        .to_bytes())
}

/// An answer that passed the cache by, marked a miss (its call made by this caller).
fn missed<ResB>(mut response: Response<ResB>) -> Response<ResponseBody<ResB>> {
    response
        .headers_mut()
        .insert(CACHE_HEADER, HeaderValue::from_static("miss"));
    response.extensions_mut().insert(CacheStatus::Miss);
    response.map(ResponseBody::passed)
}

impl<S> Lookup<S> {
    /// Serve from the cache (a hit in memory or in the second level), or call and keep what
    /// may be kept.
    async fn serve<B, ResB>(self, request: Request<B>) -> Answer<ResB>
    where
        S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError>,
        B: Body + From<Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
        ResB: Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        let (mut parts, body) = request.into_parts();
        let body = read_request(body).await?;
        let keyed = key::of(&parts, &body, self.settings.cache_sampled);
        // The key read the caller's cache headers; the request goes on without them.
        parts.headers.remove(NAMESPACE_HEADER);
        parts.headers.remove(CACHE_HEADER);
        let again = (parts.clone(), body.clone());
        let request = Request::from_parts(parts, B::from(body));
        let Some(Keyed { key, model, stream }) = keyed else {
            let mut inner = self.inner;
            let response = inner.call(request).await.map_err(Error::from_inner)?;
            return Ok(response.map(ResponseBody::passed));
        };
        if let Some(response) = hit(&self.store, &self.settings, &key).await {
            return Ok(response);
        }
        self.settings.misses.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::cache_miss();
        let ttl = self.settings.ttl(&model);
        if stream {
            return self.record(request, key, ttl).await;
        }
        self.coalesce(request, again, key, ttl).await
    }

    /// A stream goes to its caller as it comes (not coalesced: each identical miss streams its
    /// own), recorded on the way, and is kept once it has ended whole.
    async fn record<B, ResB>(
        self,
        request: Request<B>,
        key: Arc<str>,
        ttl: Duration,
    ) -> Answer<ResB>
    where
        S: Service<Request<B>, Response = Response<ResB>>,
        S::Error: Into<BoxError>,
    {
        let mut inner = self.inner;
        let response = inner.call(request).await.map_err(Error::from_inner)?;
        let (mut head, body) = response.into_parts();
        head.headers
            .insert(CACHE_HEADER, HeaderValue::from_static("miss"));
        head.extensions.insert(CacheStatus::Miss);
        let storable = head.status == StatusCode::OK
            && !head.headers.contains_key(crate::context::FALLBACK_HEADER);
        if !storable {
            return Ok(Response::from_parts(head, ResponseBody::passed(body)));
        }
        let recorder = Recorder {
            key,
            store: self.store,
            settings: self.settings,
            status: head.status,
            headers: kept(&head.headers),
            ttl,
            seen: Vec::new(),
        };
        Ok(Response::from_parts(
            head,
            ResponseBody::recording(body, recorder),
        ))
    }

    /// Identical misses wait for one fetch; only a storable answer is stored. The caller whose
    /// fetch it was gets its own answer (with the stack's extensions, or its exact error); a
    /// waiter whose leader's answer was not kept makes its own call.
    async fn coalesce<B, ResB>(
        self,
        request: Request<B>,
        again: (http::request::Parts, Bytes),
        key: Arc<str>,
        ttl: Duration,
    ) -> Answer<ResB>
    where
        S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError>,
        B: From<Bytes> + Send + 'static,
        ResB: Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        let leader: Arc<std::sync::Mutex<Option<Leader<ResB>>>> = Arc::default();
        // The service polled ready makes the shared call; a clone (made ready by `oneshot`)
        // makes this caller's own call if it needs one.
        let own = self.inner.clone();
        let fetched = fetch(
            self.inner,
            request,
            ttl,
            leader.clone(),
            (self.settings.clone(), key.clone()),
        );
        let shared = self.store.try_get_with(key, fetched).await;
        let extensions = match leader.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(Leader::Failed(error)) => return Err(error),
            Some(Leader::Passed(response)) => return Ok(response),
            Some(Leader::Answered(extensions)) => Some(extensions),
            None => None,
        };
        let entry = match &shared {
            Ok(entry) => entry,
            Err(uncached) => match &**uncached {
                Uncached::Passed => {
                    // Another caller's answer was not kept: this one makes its own call.
                    let (parts, body) = again;
                    let request = Request::from_parts(parts, B::from(body));
                    let response = tower::ServiceExt::oneshot(own, request)
                        .await
                        .map_err(Error::from_inner)?;
                    return Ok(missed(response));
                }
                Uncached::Failed(kind, message, retry_after) => {
                    return Err(Error::new(*kind, message.clone()).with_retry_after(*retry_after));
                }
            },
        };
        let mut response = respond(entry, CacheStatus::Miss);
        if let Some(extensions) = extensions {
            response.extensions_mut().extend(extensions);
        }
        Ok(response.map(ResponseBody::cached))
    }
}

/// The entry for `key`, from memory or (stored by another process) the second level.
async fn hit<ResB>(
    store: &Moka<Arc<str>, Entry>,
    settings: &Settings,
    key: &Arc<str>,
) -> Option<Response<ResponseBody<ResB>>> {
    if let Some(entry) = store.get(key).await {
        settings.hits.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::cache_hit(entry.body.len());
        return Some(respond(&entry, CacheStatus::Hit).map(ResponseBody::cached));
    }
    let entry = super::second::find(settings.second.as_ref(), key).await?;
    settings.hits.fetch_add(1, Ordering::Relaxed);
    crate::telemetry::cache_hit(entry.body.len());
    let response = respond(&entry, CacheStatus::Hit).map(ResponseBody::cached);
    store.insert(key.clone(), entry).await;
    Some(response)
}

/// The one call made for identical misses: its answer becomes the entry if it is a whole 200 of
/// the requested model; anything else goes to its own caller as it comes (an error body may be
/// large, or never end) with all its headers, through `leader`.
async fn fetch<S, B, ResB>(
    mut inner: S,
    request: Request<B>,
    ttl: Duration,
    leader: Arc<std::sync::Mutex<Option<Leader<ResB>>>>,
    (settings, key): (Arc<Settings>, Arc<str>),
) -> Result<Entry, Uncached>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    let keep = |kept: Leader<ResB>| {
        *leader.lock().unwrap_or_else(|e| e.into_inner()) = Some(kept);
    };
    let response = match inner.call(request).await {
        Ok(response) => response,
        Err(e) => {
            let e = Error::from_inner(e);
            let failed = Uncached::Failed(e.kind(), e.to_string(), e.retry_after());
            keep(Leader::Failed(e));
            return Err(failed);
        }
    };
    let (mut head, body) = response.into_parts();
    head.headers
        .insert(CACHE_HEADER, HeaderValue::from_static("miss"));
    head.extensions.insert(CacheStatus::Miss);
    if head.status != StatusCode::OK || head.headers.contains_key(crate::context::FALLBACK_HEADER) {
        keep(Leader::Passed(Response::from_parts(
            head,
            ResponseBody::passed(body),
        )));
        return Err(Uncached::Passed);
    }
    let bytes = match read_up_to(Box::pin(body), super::MAX_ENTRY_BYTES).await {
        Ok(Read::Whole(bytes)) => bytes,
        Ok(Read::TooLarge(prefix, rest)) => {
            keep(Leader::Passed(Response::from_parts(
                head,
                ResponseBody::prefixed(prefix, rest),
            )));
            return Err(Uncached::Passed);
        }
        Err(e) => {
            // Cut short: nothing has gone to the caller yet, so it gets a clear error rather
            // than half an answer.
            let e = Error::new(
                ErrorKind::Transport,
                format!("the answer was cut short upstream: {}", e.into()),
            );
            let failed = Uncached::Failed(e.kind(), e.to_string(), None);
            keep(Leader::Failed(e));
            return Err(failed);
        }
    };
    let entry = Entry {
        status: head.status,
        headers: kept(&head.headers),
        body: bytes,
        ttl,
    };
    keep(Leader::Answered(head.extensions));
    super::second::keep(settings.second.as_ref(), &key, &entry);
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::whole_stream;

    #[test]
    fn only_streams_that_ended_whole_are_kept() {
        assert!(whole_stream(
            b"data: {\"candidates\":[{\"finishReason\":\"STOP\"}]}\r\n\r\n"
        ));
        assert!(whole_stream(b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n"));
        // Cut short: no last chunk.
        assert!(!whole_stream(
            b"data: {\"candidates\":[{\"content\":{}}]}\r\n\r\n"
        ));
        // An error inside the stream, even one that then ended.
        assert!(!whole_stream(
            b"data: {\"error\":{\"code\":500}}\n\ndata: [DONE]\n\n"
        ));
        // A model's text quoting the word is not an error object.
        assert!(whole_stream(
            b"data: {\"text\":\"say \\\"error\\\"\",\"finishReason\":\"STOP\"}\n\n"
        ));
    }
}
