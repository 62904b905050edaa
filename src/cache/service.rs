//! The [`Cache`] service.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

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
    }
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Cached { body } => body.is_end_stream(),
            Kind::Passed { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.kind {
            Kind::Cached { body } => body.size_hint(),
            Kind::Passed { body } => body.size_hint(),
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let from = match &self.kind {
            Kind::Cached { .. } => "memory",
            Kind::Passed { .. } => "upstream",
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

/// An answer the leader of a coalesced miss got and did not store: every waiter gets it.
enum Uncached {
    Answer(Entry),
    Failed(ErrorKind, String),
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
fn kept(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for name in [http::header::CONTENT_TYPE] {
        if let Some(value) = headers.get(&name) {
            kept.insert(name, value.clone());
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
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let body = Limited::new(body, MAX_BUFFERED)
                .collect()
                .await
                .map_err(|e| {
                    Error::new(
                        ErrorKind::BodyTooLarge,
                        format!("the request body could not be read whole (at most {MAX_BUFFERED} bytes): {e}"),
                    )
                })?
                .to_bytes();
            let keyed = key::of(&parts, &body, settings.cache_sampled);
            // The key read the caller's cache headers; the request goes on without them.
            parts.headers.remove(NAMESPACE_HEADER);
            parts.headers.remove(CACHE_HEADER);
            let request = Request::from_parts(parts, B::from(body));
            let Some(Keyed { key, model }) = keyed else {
                let response = inner.call(request).await.map_err(Error::from_inner)?;
                return Ok(response.map(ResponseBody::passed));
            };
            if let Some(entry) = store.get(&key).await {
                settings.hits.fetch_add(1, Ordering::Relaxed);
                crate::telemetry::cache_hit(entry.body.len());
                return Ok(respond(&entry, CacheStatus::Hit).map(ResponseBody::cached));
            }
            settings.misses.fetch_add(1, Ordering::Relaxed);
            crate::telemetry::cache_miss();
            let ttl = settings.ttl(&model);
            let fetch = async move {
                let response = inner.call(request).await.map_err(|e| {
                    let e = Error::from_inner(e);
                    Uncached::Failed(e.kind(), e.to_string())
                })?;
                let (head, body) = response.into_parts();
                let bytes = Limited::new(body, MAX_BUFFERED)
                    .collect()
                    .await
                    .map_err(|e| {
                        Uncached::Failed(
                            ErrorKind::Transport,
                            format!("the answer could not be read whole (at most {MAX_BUFFERED} bytes): {e}"),
                        )
                    })?
                    .to_bytes();
                let entry = Entry {
                    status: head.status,
                    headers: kept(&head.headers),
                    body: bytes,
                    ttl,
                };
                // An answer from a fallback model is not what the key's model would say.
                let storable = head.status == StatusCode::OK
                    && entry.body.len() <= super::MAX_ENTRY_BYTES
                    && !head.headers.contains_key(crate::fallback::FALLBACK_HEADER);
                if storable {
                    Ok(entry)
                } else {
                    Err(Uncached::Answer(entry))
                }
            };
            // Identical misses wait for one fetch; only a storable answer is stored.
            match store.try_get_with(key, fetch).await {
                Ok(entry) => Ok(respond(&entry, CacheStatus::Miss).map(ResponseBody::cached)),
                Err(uncached) => match &*uncached {
                    Uncached::Answer(entry) => {
                        Ok(respond(entry, CacheStatus::Miss).map(ResponseBody::cached))
                    }
                    Uncached::Failed(kind, message) => Err(Error::new(*kind, message.clone())),
                },
            }
        })
    }
}
