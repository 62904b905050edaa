//! The [`Affinity`] service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use tower::ServiceExt;
use tower_service::Service;

use super::learn::{Kind as Learned, Learn, LearnBody};
use super::reference::{self, BatchOp, CacheOp, Call};
use super::{Settings, batch, probe, upload};
use crate::context::{Owner, Preferred, StoredContext, Tenant};
use crate::error::{BoxError, Error, ErrorKind};
use crate::model::Model;
use crate::pool::SelectedKey;
use crate::resources::{self as uses, Unreadable};
use crate::state::PinRecord;

/// Sends requests that refer to a stored interaction to its project, made by
/// [`AffinityLayer`](super::AffinityLayer). See the [module docs](super).
#[derive(Clone)]
pub struct Affinity<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S> Affinity<S> {
    pub(crate) fn new(inner: S, settings: Arc<Settings>) -> Self {
        Affinity { inner, settings }
    }

    crate::macros::define_inner_service_accessors!();
}

impl<S> std::fmt::Debug for Affinity<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Affinity")
            .field("retention", &self.settings.retention)
            .field("probe", &self.settings.probe)
            .finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Affinity`]: the inner call as it is for a request that is not an
    /// Interactions call, else the pinned call and its learning (boxed).
    pub struct ResponseFuture<F, ResB> {
        #[pin]
        kind: Kind<F, ResB>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F, ResB> {
        Direct { #[pin] future: F, prefix: Option<PrefixSeen> },
        Pinned { future: BoxFuture<'static, Result<Response<LearnBody<ResB>>, Error>> },
    }
}

/// A request's prefix, to remember with the project that serves it.
pub(crate) struct PrefixSeen {
    key: u64,
    settings: Arc<Settings>,
}

impl PrefixSeen {
    /// Remember the project that served a successful answer.
    fn served<B>(self, response: &Response<B>) {
        if !response.status().is_success() {
            return;
        }
        if let (Some(prefix), Some(key)) = (
            &self.settings.prefix,
            response.extensions().get::<SelectedKey>(),
        ) {
            let now = self.settings.pool.clock().now_millis();
            prefix.learn(self.key, key.project(), now);
        }
    }
}

/// The key of a request's prefix (with prefix affinity on), and the [`Preferred`] project
/// set on it if the prefix was seen recently.
fn prefer<B: 'static>(settings: &Arc<Settings>, request: &mut Request<B>) -> Option<PrefixSeen> {
    let prefix = settings.prefix.as_ref()?;
    let model = crate::model::model_of(request)?.into_owned();
    let body = crate::peek::body_bytes(request.body())?;
    let tenant = request.extensions().get::<Tenant>().map(Tenant::id);
    let key = prefix.key_of(&model, tenant, &body)?;
    drop(body);
    let now = settings.pool.clock().now_millis();
    if request.extensions().get::<Preferred>().is_none()
        && let Some(preferred) = prefix.preferred(key, now)
    {
        request.extensions_mut().insert(preferred);
    }
    Some(PrefixSeen {
        key,
        settings: settings.clone(),
    })
}

impl<F, ResB, E> Future for ResponseFuture<F, ResB>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<LearnBody<ResB>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Direct { future, prefix } => {
                let response = std::task::ready!(future.poll(cx)).map_err(Error::from_inner)?;
                if let Some(seen) = prefix.take() {
                    seen.served(&response);
                }
                Poll::Ready(Ok(response.map(LearnBody::plain)))
            }
            KindProj::Pinned { future } => future.as_mut().poll(cx),
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Affinity<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: Send + Sync + 'static,
    ResB: Send + 'static,
{
    type Response = Response<LearnBody<ResB>>;
    type Error = Error;
    type Future = ResponseFuture<S::Future, ResB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_inner)
    }

    fn call(&mut self, mut request: Request<ReqB>) -> Self::Future {
        let path = request.uri().path();
        let uses = if reference::may_refer(request.method(), path) {
            crate::peek::body_bytes(request.body()).and_then(|body| uses::references_in(&body))
        } else {
            None
        };
        if uses.is_none() && !reference::is_resource_path(path) {
            let prefix = prefer(&self.settings, &mut request);
            return ResponseFuture {
                kind: Kind::Direct {
                    future: self.inner.call(request),
                    prefix,
                },
            };
        }
        // The inner service that was made ready serves this call; a clone waits for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let settings = self.settings.clone();
        ResponseFuture {
            kind: Kind::Pinned {
                future: Box::pin(pinned_call(inner, settings, request, uses)),
            },
        }
    }
}

/// A call on a project-owned resource (an interaction, a cache, a file, an upload) or naming
/// some in its body: pinned to the project of what it refers to, its answer learned from.
async fn pinned_call<S, ReqB, ResB>(
    inner: S,
    settings: Arc<Settings>,
    mut request: Request<ReqB>,
    uses: Option<Result<Vec<String>, Unreadable>>,
) -> Result<Response<LearnBody<ResB>>, Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: Send + Sync + 'static,
{
    let tenant = request.extensions().get::<Tenant>().cloned();
    let uses = match uses {
        Some(Ok(names)) => names,
        Some(Err(Unreadable(why))) if tenant.is_some() => {
            return Err(Error::new(
                ErrorKind::BadRequest,
                format!("the resources the request names could not be read: {why}"),
            ));
        }
        Some(Err(_)) | None => Vec::new(),
    };
    let call = {
        let body = crate::peek::body_bytes(request.body());
        let uri = request.uri();
        reference::call_of(request.method(), uri.path(), uri.query(), body.as_deref())
    };
    let call = match call {
        Some(call) => call,
        None if !uses.is_empty() => Call::Uses,
        None => {
            let response = inner.oneshot(request).await.map_err(Error::from_inner)?;
            return Ok(response.map(LearnBody::plain));
        }
    };
    if let Call::Create(create) = &call
        && let Some(model) = &create.model
        && request.extensions().get::<Model>().is_none()
    {
        request.extensions_mut().insert(Model::new(model));
    }
    let fresh = matches!(&call, Call::Create(create) if create.previous.is_none());
    let prefix = if fresh {
        prefer(&settings, &mut request)
    } else {
        None
    };
    if tenant.is_some() && call.is_unclear() {
        return Err(Error::new(
            ErrorKind::BadRequest,
            "the interaction's body could not be read: send a JSON object whose previous_interaction_id (if any) is a string id, store a boolean and model a string",
        ));
    }
    let names: Vec<String> = call.referred().into_iter().chain(uses).collect();
    let batch_tokens = pin(inner.clone(), &settings, &mut request, (&call, &names)).await?;
    let declared = upload::declared_size(&request);
    let response = inner.oneshot(request).await.map_err(Error::from_inner)?;
    if let Some(seen) = prefix {
        seen.served(&response);
    }
    if let Call::UploadStart = call
        && let Some(session) = upload::session_opened(&response)
    {
        upload::pin_session(&settings, session, tenant.as_ref(), declared).await;
    }
    Ok(learn_from(
        &settings,
        &call,
        (tenant, batch_tokens),
        response,
    ))
}

/// Pin `request` to the project of what it refers to (`names`), with the stored context it
/// makes Google read; a new batch to a project with room for it (the one that holds what it
/// names, else the one with the most): then the batch's tokens, else 0.
async fn pin<S, ReqB, ResB>(
    inner: S,
    settings: &Settings,
    request: &mut Request<ReqB>,
    (call, names): (&Call, &[String]),
) -> Result<u64, Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: Send + Sync + 'static,
{
    let tenant = request.extensions().get::<Tenant>().cloned();
    let found = owner_of_all(inner, settings, request, names, tenant.as_ref()).await?;
    let batch_tokens = match call {
        Call::CreateBatch => {
            let tokens = batch::tokens_of(crate::peek::body_bytes(request.body()).as_deref());
            let owner = found.as_ref().map(|(owner, _)| owner);
            let chosen = batch::choose(&settings.pool, &settings.batches, owner, tokens)?;
            request.extensions_mut().insert(chosen);
            tokens
        }
        _ => 0,
    };
    if let Some((owner, tokens)) = found {
        request.extensions_mut().insert(owner);
        // A continuation sends the conversation so far as prompt, a call naming a cache the
        // cache's contents: their size counts.
        let counting = request.uri().path().ends_with(":countTokens");
        if matches!(call, Call::Create(_) | Call::Uses) && tokens > 0 && !counting {
            request.extensions_mut().insert(StoredContext(tokens));
        }
    }
    Ok(batch_tokens)
}

/// The one project that holds every resource in `names` (learned, or found by probing), and
/// the stored tokens they add to a prompt; `None` if none is known (sent as it came). An error
/// for a tenant that may not use one of them, or for names held in different projects.
async fn owner_of_all<S, ReqB, ResB>(
    inner: S,
    settings: &Settings,
    request: &Request<ReqB>,
    names: &[String],
    tenant: Option<&Tenant>,
) -> Result<Option<(Owner, u64)>, Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: Send + Sync + 'static,
{
    let mut found: Option<(Owner, u64)> = None;
    for name in names {
        let Some((owner, tokens)) =
            owner_of(inner.clone(), settings, request, name, tenant).await?
        else {
            continue;
        };
        match &mut found {
            None => found = Some((owner, tokens)),
            Some((first, _)) if first.project_name() != owner.project_name() => {
                return Err(Error::new(
                    ErrorKind::BadRequest,
                    format!(
                        "{} and {name} are held in different projects, and one request can use the resources of one project only: make them with the same key (create the cache, or the batch, from the file it uses)",
                        first.resource().unwrap_or("a resource")
                    ),
                ));
            }
            Some((_, total)) => *total = total.saturating_add(tokens),
        }
    }
    Ok(found)
}

/// The project the resource `name` lives in (learned, or found by probing) and the size of
/// the conversation it holds, if known; `None`: unknown (sent as it came). An error for a
/// tenant that may not use it.
async fn owner_of<S, ReqB, ResB>(
    inner: S,
    settings: &Settings,
    request: &Request<ReqB>,
    name: &str,
    tenant: Option<&Tenant>,
) -> Result<Option<(Owner, u64)>, Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: Send + Sync + 'static,
{
    let record = settings.pool.pin_record(name).await;
    match (record, tenant) {
        (Some(record), Some(tenant)) if record.tenant.as_deref() != Some(tenant.id()) => {
            Err(not_found(name))
        }
        (Some(record), _) => Ok(Some((
            Owner::for_resource(&*record.project, name),
            // What a prompt reads: a conversation's or a cache's tokens (a file's size is its
            // bytes, and a batch's its own).
            if name.starts_with("interactions/") || name.starts_with("cachedContents/") {
                record.tokens
            } else {
                0
            },
        ))),
        (None, Some(_)) => Err(not_found(name)),
        (None, None) if settings.probe && probe::can_probe(name) => {
            let found = probe::find(inner, settings, request, name).await;
            Ok(found.map(|project| (Owner::for_resource(&*project, name), 0)))
        }
        (None, None) => Ok(None),
    }
}

/// A tenant's reference to a resource it did not create (or that the pool has no record of).
fn not_found(name: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!(
            "{name} was not found: it was not created with this client's credentials, or it has expired or been deleted"
        ),
    )
}

/// The answer, wrapped to learn the resource it created or updated (a stored interaction's
/// create, a cache's create or patch); a delete's success forgets the pin.
fn learn_from<ResB>(
    settings: &Settings,
    call: &Call,
    (tenant, tokens): (Option<Tenant>, u64),
    response: Response<ResB>,
) -> Response<LearnBody<ResB>> {
    if !response.status().is_success() {
        return response.map(LearnBody::plain);
    }
    if call.deletes() {
        if let Some(name) = call.referred() {
            settings.pool.forget_pin(&name);
        }
        return response.map(LearnBody::plain);
    }
    let now = settings.pool.clock().now_millis();
    let (kind, lasts) = match call {
        Call::Create(create) if create.store => (Learned::Interaction, settings.retention),
        // Until the answer's `expireTime` is read: Google's default time to live.
        Call::CreateCache | Call::Cache(CacheOp::Patch, _) => (Learned::Cache, CACHE_TTL),
        // Until the answer's `expirationTime` is read: Google keeps a file 48 hours. A start
        // whose answer is a session (not a file) has nothing in its body to learn.
        Call::UploadStart | Call::Upload(_) if upload::is_final(&response) => {
            if let Call::Upload(id) = call {
                settings.pool.forget_pin(&reference::upload(id));
            }
            (Learned::File, upload::FILE_TTL)
        }
        Call::CreateBatch => (Learned::Batch, batch::PIN_TTL),
        // A store lasts until it is deleted.
        Call::CreateStore => (Learned::Store, STORE_TTL),
        Call::Batch(BatchOp::Get, id) => {
            (Learned::BatchState(format!("batches/{id}")), batch::PIN_TTL)
        }
        Call::Batch(BatchOp::Cancel, id) => {
            cancelled(settings, id, tenant, &response);
            return response.map(LearnBody::plain);
        }
        _ => return response.map(LearnBody::plain),
    };
    let Some(project) = response
        .extensions()
        .get::<SelectedKey>()
        .map(|key| Arc::<str>::from(key.project()))
    else {
        return response.map(LearnBody::plain);
    };
    let record = PinRecord {
        project,
        expires_at: now.saturating_add(u64::try_from(lasts.as_millis()).unwrap_or(u64::MAX)),
        tenant: tenant.map(|t| t.shared()),
        tokens,
    };
    let sse = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let learn = Learn::new(settings.pool.clone(), record, kind, sse);
    response.map(|body| LearnBody::learning(body, learn))
}

/// A cancelled batch runs no more: no longer counted against its project's batch limits.
fn cancelled<ResB>(
    settings: &Settings,
    id: &str,
    tenant: Option<Tenant>,
    response: &Response<ResB>,
) {
    let Some(key) = response.extensions().get::<SelectedKey>() else {
        return;
    };
    let now = settings.pool.clock().now_millis();
    let ttl = u64::try_from(batch::PIN_TTL.as_millis()).unwrap_or(u64::MAX);
    let record = PinRecord {
        project: Arc::from(key.project()),
        expires_at: now.saturating_add(ttl),
        tenant: tenant.map(|t| t.shared()),
        tokens: 0,
    };
    if let Some(write) = settings.pool.learn_pin(&format!("batches/{id}"), record)
        && let Ok(runtime) = tokio::runtime::Handle::try_current()
    {
        runtime.spawn(write);
    }
}

/// How long a File Search store is remembered (Google keeps one until it is deleted; one
/// unused longer is found again by probing, outside a gateway).
const STORE_TTL: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// A context cache's time to live when its create names none (Google's default), until the
/// answer's `expireTime` says.
const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(3600);
