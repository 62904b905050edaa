//! The proxied routes: native Gemini (`/v1beta/...`) and OpenAI-compatible (`/v1/...`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::OwnedSemaphorePermit;
use tower::ServiceExt;

use super::Shared;
use super::reply::{self, Family};
use super::strict_json;
use crate::Model;

/// Request headers passed on to the upstream; everything else (the client's credentials,
/// cookies, hop-by-hop headers, `accept-encoding` — usage is read from the body as it streams)
/// stays here.
static FORWARDED: [HeaderName; 8] = [
    HeaderName::from_static("content-type"),
    HeaderName::from_static("accept"),
    HeaderName::from_static("user-agent"),
    HeaderName::from_static("x-goog-api-client"),
    HeaderName::from_static("x-goog-request-params"),
    // Read by the cache and fallback layers (and not sent on by them). The cache's namespace
    // is the gateway's to set (see `forward`).
    HeaderName::from_static("cache-control"),
    HeaderName::from_static("x-gemini-cache"),
    HeaderName::from_static("x-gemini-fallback"),
];

/// Headers of an upload's start passed on (see `files`).
static UPLOAD_START: [HeaderName; 4] = [
    HeaderName::from_static("x-goog-upload-protocol"),
    HeaderName::from_static("x-goog-upload-command"),
    HeaderName::from_static("x-goog-upload-header-content-length"),
    HeaderName::from_static("x-goog-upload-header-content-type"),
];

/// Response headers never passed back (hop-by-hop).
pub(super) static HOP_BY_HOP: [HeaderName; 7] = [
    HeaderName::from_static("connection"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("transfer-encoding"),
    HeaderName::from_static("upgrade"),
    HeaderName::from_static("te"),
    HeaderName::from_static("trailer"),
];

/// How long a client may take to send its request body.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Native methods the gateway forwards on `/v1beta/models/{model}:{method}`.
const NATIVE_METHODS: &[&str] = &[
    "generateContent",
    "streamGenerateContent",
    "countTokens",
    "embedContent",
    "batchEmbedContents",
];

/// Native Gemini, `/v1beta/...` or the stable `/v1/models/...`: the model list, a model, and
/// a model's methods ([`NATIVE_METHODS`]); `/v1beta/openai/...` goes to [`openai_compatible`].
/// Nothing else is forwarded: every other API of Google's (files, caches, batches, tuning)
/// holds the operator's resources and is not served here.
pub(crate) async fn native(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let path = request.uri().path();
    if let Err(problem) = check_path(path) {
        return reply::client_error(Family::Native, StatusCode::BAD_REQUEST, &problem);
    }
    if path == "/v1beta/interactions" || path.starts_with("/v1beta/interactions/") {
        return super::interactions::serve(&shared, request).await;
    }
    if path == "/v1beta/cachedContents" || path.starts_with("/v1beta/cachedContents/") {
        return super::caches::serve(&shared, request).await;
    }
    if path == "/v1beta/files" || path.starts_with("/v1beta/files/") {
        return super::files::serve(&shared, request).await;
    }
    if path == "/v1beta/fileSearchStores" || path.starts_with("/v1beta/fileSearchStores/") {
        return super::stores::serve(&shared, request).await;
    }
    if path == "/v1beta/batches" || path.starts_with("/v1beta/batches/") {
        return super::batches::serve(&shared, request).await;
    }
    let batch_model = path
        .strip_prefix("/v1beta/models/")
        .or_else(|| path.strip_prefix("/v1/models/"))
        .and_then(|rest| rest.strip_suffix(":batchGenerateContent"))
        .filter(|model| !model.contains(['/', ':']));
    if request.method() == Method::POST
        && let Some(model) = batch_model
    {
        if let Err(problem) = crate::model::check_name(model) {
            return reply::client_error(Family::Native, StatusCode::BAD_REQUEST, &problem);
        }
        let path = path.to_owned();
        return super::batches::create(&shared, request, path).await;
    }
    if let Some(rest) = path.strip_prefix("/v1beta/openai/") {
        let rest = rest.to_owned();
        return openai_compatible(&shared, request, &rest).await;
    }
    let models = path
        .strip_prefix("/v1beta/models")
        .or_else(|| path.strip_prefix("/v1/models"));
    let allowed = match (request.method(), models) {
        (&Method::GET, Some("")) => Ok(()),
        (&Method::GET, Some(rest)) => match rest.strip_prefix('/') {
            Some(model) => crate::model::check_name(model).map_err(Some),
            None => Err(None),
        },
        (&Method::POST, Some(rest)) => match rest.strip_prefix('/').and_then(|r| r.split_once(':'))
        {
            Some((model, method)) if NATIVE_METHODS.contains(&method) => {
                crate::model::check_name(model).map_err(Some)
            }
            _ => Err(None),
        },
        _ => Err(None),
    };
    match allowed {
        Ok(()) => {
            let path = path.to_owned();
            forward(&shared, Family::Native, request, path, None).await
        }
        Err(Some(problem)) => {
            reply::client_error(Family::Native, StatusCode::BAD_REQUEST, &problem)
        }
        Err(None) => reply::client_error(
            Family::Native,
            StatusCode::NOT_FOUND,
            &format!(
                "the gateway does not serve {} {}: it serves GET /v1beta/models, GET /v1beta/models/{{model}} and POST /v1beta/models/{{model}}:{{{}}}",
                request.method(),
                crate::model::shorten(path),
                NATIVE_METHODS.join(", ")
            ),
        ),
    }
}

/// Google's OpenAI-compatible paths, `/v1beta/openai/{rest}`: the same four routes as `/v1`
/// (chat completions, embeddings, the model list and a model), checked the same way. Its
/// `files`, `batches`, `images`, `audio` and `fine_tuning` are not served: they would spend the
/// operator's keys outside model quotas and prices, and show every client the others' files.
async fn openai_compatible(shared: &Arc<Shared>, request: Request, rest: &str) -> Response {
    match (request.method(), rest) {
        (&Method::POST, "chat/completions") => chat(shared, request).await,
        (&Method::POST, "embeddings") => embed(shared, request).await,
        (&Method::GET, "models") => {
            let path = "/v1beta/openai/models".to_owned();
            forward(shared, Family::OpenAi, request, path, None).await
        }
        (&Method::GET, rest) if rest.starts_with("models/") => {
            let model = &rest["models/".len()..];
            if let Err(problem) = crate::model::check_name(model) {
                return reply::client_error(Family::OpenAi, StatusCode::BAD_REQUEST, &problem);
            }
            let path = format!("/v1beta/openai/models/{model}");
            forward(shared, Family::OpenAi, request, path, None).await
        }
        (method, _) => reply::client_error(
            Family::OpenAi,
            StatusCode::NOT_FOUND,
            &format!(
                "the gateway does not serve {method} /v1beta/openai/{}: it serves POST chat/completions, POST embeddings, GET models and GET models/{{id}}",
                crate::model::shorten(rest)
            ),
        ),
    }
}

/// `POST /v1/chat/completions` → Google's `/v1beta/openai/chat/completions`, the model
/// defaulting to the gateway's.
pub(crate) async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    request: Request,
) -> Response {
    chat(&shared, request).await
}

async fn chat(shared: &Shared, request: Request) -> Response {
    let default = shared.model.clone();
    let fill_model = move |body: Bytes| -> Result<(Bytes, Option<Model>), String> {
        let mut json = openai_body(&body)?;
        match body_model(&json)? {
            Some(model) => Ok((body, Some(model))),
            None => {
                let named = Model::new(&default);
                let object = json
                    .as_object_mut()
                    .ok_or("the request body must be a JSON object")?;
                object.insert("model".to_owned(), serde_json::Value::String(default));
                Ok((Bytes::from(json.to_string()), Some(named)))
            }
        }
    };
    forward(
        shared,
        Family::OpenAi,
        request,
        "/v1beta/openai/chat/completions".to_owned(),
        Some(Box::new(fill_model)),
    )
    .await
}

/// `POST /v1/embeddings` → `/v1beta/openai/embeddings`.
pub(crate) async fn embeddings(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    embed(&shared, request).await
}

async fn embed(shared: &Shared, request: Request) -> Response {
    let path = "/v1beta/openai/embeddings".to_owned();
    let check = |body: Bytes| -> Result<(Bytes, Option<Model>), String> {
        let json = openai_body(&body)?;
        let model = body_model(&json)?.ok_or(
            "\"model\" is required: a string naming an embedding model, such as \"gemini-embedding-001\"",
        )?;
        Ok((body, Some(model)))
    };
    forward(shared, Family::OpenAi, request, path, Some(Box::new(check))).await
}

/// An OpenAI-compatible body, parsed once (counted: it is the parse that finds the model).
fn openai_body(body: &[u8]) -> Result<serde_json::Value, String> {
    crate::model::count_body_parse();
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the request body is not JSON: {e}"))?;
    if !json.is_object() {
        return Err("the request body must be a JSON object".to_owned());
    }
    // A context cache named here (`extra_body.google.cached_content`) would escape the
    // per-client check of the native routes, where caches are served.
    if names_key(&json, &["cached_content", "cachedContent"]) {
        return Err("a context cache is used through the native routes (\"cachedContent\" in POST /v1beta/models/{model}:generateContent), not the OpenAI-compatible ones".to_owned());
    }
    Ok(json)
}

/// Does a JSON value have an object key named one of `names`, at any depth?
fn names_key(json: &serde_json::Value, names: &[&str]) -> bool {
    match json {
        serde_json::Value::Object(map) => map
            .iter()
            .any(|(key, value)| names.contains(&key.as_str()) || names_key(value, names)),
        serde_json::Value::Array(items) => items.iter().any(|item| names_key(item, names)),
        _ => false,
    }
}

/// The body's `model`, checked like a model in a path (`models/` dropped); `None` if absent
/// or null; an error for anything else.
fn body_model(json: &serde_json::Value) -> Result<Option<Model>, String> {
    match json.get("model") {
        Some(serde_json::Value::String(given)) => {
            let given = given.strip_prefix("models/").unwrap_or(given);
            crate::model::check_name(given)?;
            Ok(Some(Model::new(given)))
        }
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(_) => Err(
            "\"model\" must be a string naming a model, such as \"gemini-2.5-flash\"".to_owned(),
        ),
    }
}

/// `GET /v1/models`: both APIs have it. A client that authenticates the Google way
/// (`x-goog-api-key` or `?key=`, as the google-genai SDK does) gets Google's list; one that
/// sends `Authorization: Bearer` (the OpenAI SDK) gets OpenAI's, from `/v1beta/openai/models`.
pub(crate) async fn models(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let headers = request.headers();
    let google_style = !headers.contains_key(http::header::AUTHORIZATION)
        && (headers.contains_key("x-goog-api-key")
            || request
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p.starts_with("key="))));
    if google_style {
        return forward(
            &shared,
            Family::Native,
            request,
            "/v1/models".to_owned(),
            None,
        )
        .await;
    }
    let path = "/v1beta/openai/models".to_owned();
    forward(&shared, Family::OpenAi, request, path, None).await
}

/// A check (and possibly a change) of an OpenAI body, which names the request's model.
pub(super) type Rewrite = Box<dyn FnOnce(Bytes) -> Result<(Bytes, Option<Model>), String> + Send>;

/// A path the gateway may put after the upstream's base: no dot segments, empty segments,
/// percent-escapes or backslashes, so the route checked here is the route Google serves (a
/// `/v1beta/models/../files` would otherwise reach another API with the gateway's key), and
/// every model segment a plausible model name.
fn check_path(path: &str) -> Result<(), String> {
    let segments = path.strip_prefix('/').unwrap_or(path);
    for segment in segments.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(format!(
                "the path {:?} has an empty or dot segment; send the route as documented",
                crate::model::shorten(path)
            ));
        }
        if segment.contains(['%', '\\']) {
            return Err(format!(
                "the path {:?} has a percent-escape or backslash; model names and routes are plain ASCII",
                crate::model::shorten(path)
            ));
        }
    }
    if let Some(model) = crate::model::model_in_path(path) {
        crate::model::check_name(model)?;
    }
    Ok(())
}

/// Query parameters passed on to Google: the response format (`alt=sse` for streams) and
/// list paging. Everything else stays here: the client's `key=` (its gateway token), an
/// `access_token` whose 401 would look like the key's fault, `fields`, `quotaUser`,
/// `userProject` and whatever Google adds later.
const FORWARDED_QUERY: &[&str] = &["alt", "$alt", "pageSize", "pageToken"];

/// The query with only [`FORWARDED_QUERY`]'s parameters (on an Interactions path, only that
/// API's: `stream`, `last_event_id`, `include_input`), in the order sent.
fn forwarded_query(path: &str, query: Option<&str>) -> String {
    let interactions = path.contains("/interactions");
    let kept: Vec<&str> = query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if interactions {
                return super::interactions::allowed_query(name, value);
            }
            // A cache's patch says what it changes: only its expiry can.
            if name == "updateMask" {
                return path.contains("/cachedContents/")
                    && matches!(value, "ttl" | "expireTime" | "expire_time");
            }
            // A store's delete may take its documents with it.
            if name == "force" {
                return path.contains("/fileSearchStores/") && value == "true";
            }
            // A file's download: its bytes as they are.
            if path.ends_with(":download") {
                return name == "alt" && value == "media";
            }
            FORWARDED_QUERY.contains(&name)
                // The answer's format only as JSON or SSE: usage, quota and cost are read from
                // it (a binary `alt=proto` answer would be spent unseen).
                && (!matches!(name, "alt" | "$alt") || matches!(value, "sse" | "json"))
        })
        .collect();
    if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    }
}

/// Buffer the body (bounded), check it, send it upstream through the stack, stream the answer
/// back.
pub(super) async fn forward(
    shared: &Shared,
    family: Family,
    request: Request,
    path: String,
    rewrite: Option<Rewrite>,
) -> Response {
    let (parts, body) = request.into_parts();
    let client = parts.extensions.get::<super::ClientScope>().cloned();
    let (body, _held) = match read_body(shared, family, body, client).await {
        Ok(read) => read,
        Err(refused) => return refused,
    };
    // (From here: the time its client takes to send the body is the client's.)
    let overhead = super::overhead::Overhead::start();
    let stored = stored_tokens(shared, &parts, &body).await;
    let (body, model) = match admit(shared, family, &parts, body, &path, (rewrite, stored)) {
        Ok(admitted) => admitted,
        Err(refused) if refused.status() == StatusCode::TOO_MANY_REQUESTS => {
            // A client over its own limits: its 429 says them too.
            let model = crate::model::model_in_path(&path).map(Model::new);
            return with_rate_headers(shared, &parts, model.as_ref(), *refused);
        }
        Err(refused) => return *refused,
    };
    let named = model.clone();
    super::trace::record_request(&parts.method, &path, named.as_ref().map(Model::as_str));
    let mut upstream = match upstream_request(shared, &parts, &path, body, model) {
        Ok(upstream) => upstream,
        Err(message) => return reply::client_error(family, StatusCode::BAD_REQUEST, message),
    };
    upstream.extensions_mut().insert(overhead.upstream());
    let answer = send(shared, family, upstream).await;
    overhead.record();
    with_rate_headers(shared, &parts, named.as_ref(), answer)
}

/// `answer` with the rate-limit headers of `model` and the client (see `rate_headers`).
fn with_rate_headers(
    shared: &Shared,
    parts: &http::request::Parts,
    model: Option<&Model>,
    mut answer: Response,
) -> Response {
    let client = match &shared.clients().limits {
        Some(limits) => limits.windows(&crate::context::RequestHead {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            extensions: &parts.extensions,
        }),
        None => (None, None),
    };
    if model.is_none() && client == (None, None) {
        return answer;
    }
    let headers = super::rate_headers::headers(
        &shared.rate_cache,
        &shared.live().pool,
        model.map(Model::as_str),
        client,
    );
    answer.headers_mut().extend(headers);
    answer
}

/// What is refused once the body is here, before a key and a slot of quota are spent on it:
/// a body that is not JSON as Google reads it (every route served takes JSON; a key twice
/// would let Google and each layer read different copies: one `model` priced, cached and
/// limited, another sent), a client over its limits (its tokens count against `tpm`), an
/// OpenAI body the route refuses. Otherwise the body to send and its model, resolved once
/// here (from the path, or the OpenAI body as it was parsed): every layer reads the extension
/// rather than parse the body again.
fn admit(
    shared: &Shared,
    family: Family,
    parts: &http::request::Parts,
    body: Bytes,
    path: &str,
    (rewrite, stored): (Option<Rewrite>, u64),
) -> Result<(Bytes, Option<Model>), Box<Response>> {
    // (A cancel — of an interaction, a batch — and an upload's start may come without a body.)
    let bodiless = body.is_empty()
        && (path.ends_with("/cancel") || path.ends_with(":cancel") || path.starts_with("/upload/"));
    if (parts.method == Method::POST || parts.method == Method::PATCH)
        && !bodiless
        && let Err(problem) = strict_json::check(&body, family != Family::OpenAi)
    {
        return Err(Box::new(reply::client_error(
            family,
            StatusCode::BAD_REQUEST,
            &problem,
        )));
    }
    if let Some(limits) = &shared.clients().limits {
        let head = crate::context::RequestHead {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            extensions: &parts.extensions,
        };
        if let Some(refused) = limits.admit_with_stored::<Body>(&head, &body, stored) {
            return Err(Box::new(refused));
        }
    }
    match rewrite {
        Some(rewrite) => rewrite(body).map_err(|message| {
            Box::new(reply::client_error(
                family,
                StatusCode::BAD_REQUEST,
                &message,
            ))
        }),
        None => Ok((body, crate::model::model_in_path(path).map(Model::new))),
    }
}

/// The tokens of stored context a request makes Google read beyond its body — the conversation
/// an interaction continues, the context cache a call names — as the pool learned them; 0 when
/// there are no per-client limits to count them against, or nothing is known.
async fn stored_tokens(shared: &Shared, parts: &http::request::Parts, body: &[u8]) -> u64 {
    use crate::affinity::reference::{self, Call};
    if shared.clients().limits.is_none() {
        return 0;
    }
    let path = parts.uri.path();
    // (Counting tokens is free at Google: a cache named there is not read as prompt.)
    if path.ends_with(":countTokens") {
        return 0;
    }
    let mut names = match reference::call_of(&parts.method, path, None, Some(body)) {
        Some(call @ Call::Create(_)) => call.referred().into_iter().collect(),
        _ => Vec::new(),
    };
    if reference::may_refer(&parts.method, path)
        && let Some(Ok(used)) = crate::resources::references_in(body)
    {
        names.extend(used);
    }
    // Only the client's own: another's would tell, by this client's 429, that it exists.
    let tenant = parts
        .extensions
        .get::<super::ClientScope>()
        .and_then(|scope| scope.0.to_str().ok());
    let mut tokens = 0u64;
    for name in names {
        let context = name.starts_with("interactions/") || name.starts_with("cachedContents/");
        if context
            && let Some(record) = shared.live().pool.pin_record(&name).await
            && record.tenant.as_deref() == tenant
        {
            tokens = tokens.saturating_add(record.tokens);
        }
    }
    tokens
}

/// The request for the stack: the upstream's URL with the allowed query, the forwarded
/// headers, the model, the client's cache scope and account.
fn upstream_request(
    shared: &Shared,
    parts: &http::request::Parts,
    path: &str,
    body: Bytes,
    model: Option<Model>,
) -> Result<http::Request<Full<Bytes>>, &'static str> {
    let uri = format!(
        "{}{path}{}",
        shared.upstream,
        forwarded_query(path, parts.uri.query())
    );
    let mut upstream = http::Request::new(Full::new(body));
    *upstream.method_mut() = parts.method.clone();
    // (From the `String` itself: parsing a `&str` copies it.)
    *upstream.uri_mut() = http::Uri::try_from(uri).map_err(|_| "malformed request path")?;
    copy_headers(&parts.headers, upstream.headers_mut(), &FORWARDED);
    if path.starts_with("/upload/") {
        copy_headers(&parts.headers, upstream.headers_mut(), &UPLOAD_START);
    }
    if let Some(model) = model {
        upstream.extensions_mut().insert(model);
    }
    // Each client token its own cache scope, whatever namespace it sends (else one client
    // could ask "did anyone ask this?" and read another's answer); sharing is the operator's
    // opt-in, and then a client's namespace header is honoured.
    let namespace = HeaderName::from_static(crate::context::NAMESPACE_HEADER);
    if shared.cache_shared {
        if let Some(value) = parts.headers.get(&namespace) {
            upstream.headers_mut().insert(namespace, value.clone());
        }
    } else if let Some(scope) = parts.extensions.get::<super::ClientScope>() {
        upstream.headers_mut().insert(namespace, scope.0.clone());
    }
    // What the client creates (a stored interaction) is its own.
    if let Some(scope) = parts.extensions.get::<super::ClientScope>()
        && let Ok(id) = scope.0.to_str()
    {
        upstream
            .extensions_mut()
            .insert(crate::context::Tenant::new(id));
    }
    if let Some(account) = parts.extensions.get::<crate::cost::Account>() {
        upstream.extensions_mut().insert(account.clone());
    }
    Ok(upstream)
}

/// Through the stack; the answer streamed back without hop-by-hop headers, or the error in
/// the route's shape.
async fn send(shared: &Shared, family: Family, upstream: http::Request<Full<Bytes>>) -> Response {
    let gemini = shared.live().gemini.clone();
    match gemini.oneshot(upstream).await {
        Ok(response) => {
            if let Some(fallback) = response.extensions().get::<crate::context::ModelFallback>() {
                shared.savings.fell_back(fallback);
            }
            let (mut head, body) = response.into_parts();
            for name in &HOP_BY_HOP {
                head.headers.remove(name);
            }
            Response::from_parts(head, Body::new(body.map_err(axum::Error::new)))
        }
        Err(error) => {
            tracing::info!(error = %error, "request not served");
            reply::error(family, &error)
        }
    }
}

/// Room held by a body in memory; given back (and the bodies waiting for room woken) when
/// dropped.
pub(super) struct BodyRoom {
    permit: Option<OwnedSemaphorePermit>,
    freed: Arc<tokio::sync::Notify>,
    /// The client's count of room held (KiB), if the client is known.
    client: Option<(super::ClientScope, Arc<super::BodiesByClient>)>,
}

/// Why a body found no room.
pub(super) enum NoRoom {
    /// None was given back within the body's read time.
    Busy,
    /// The client's bodies hold their share already.
    ClientShare,
}

impl BodyRoom {
    pub(super) fn new(shared: &Shared, client: Option<super::ClientScope>) -> BodyRoom {
        BodyRoom {
            permit: None,
            freed: shared.body_freed.clone(),
            client: client.map(|scope| (scope, shared.bodies_by_client.clone())),
        }
    }

    /// KiB held.
    fn held(&self) -> usize {
        self.permit
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Hold `kib` in all, waiting for room until `deadline`.
    pub(super) async fn grow_to(
        &mut self,
        shared: &Shared,
        kib: usize,
        deadline: tokio::time::Instant,
    ) -> Result<(), NoRoom> {
        let Some(more) = kib.checked_sub(self.held()).filter(|&more| more > 0) else {
            return Ok(());
        };
        let units = u32::try_from(more).unwrap_or(u32::MAX);
        let more = tokio::time::timeout_at(deadline, room(shared, units))
            .await
            .ok()
            .flatten()
            .ok_or(NoRoom::Busy)?;
        // One client's bodies hold at most its share of the memory: past it, its next body
        // is refused at once rather than wait for room others need.
        if let Some((scope, by_client)) = &self.client
            && !by_client.take(scope, more.num_permits())
        {
            return Err(NoRoom::ClientShare);
        }
        match self.permit.as_mut() {
            Some(permit) => permit.merge(more),
            None => self.permit = Some(more),
        }
        Ok(())
    }
}

/// `units` KiB of room for bodies. Not a fair queue: a body waiting for more room than is free
/// must not hold the free room while it waits (a body that is nearly in would wait behind it
/// for ever). Each body takes what it needs when it is free, woken as room is given back.
async fn room(shared: &Shared, units: u32) -> Option<OwnedSemaphorePermit> {
    loop {
        let freed = shared.body_freed.notified();
        let mut freed = std::pin::pin!(freed);
        freed.as_mut().enable();
        match shared.body_memory.clone().try_acquire_many_owned(units) {
            Ok(permit) => return Some(permit),
            Err(tokio::sync::TryAcquireError::Closed) => return None,
            Err(tokio::sync::TryAcquireError::NoPermits) => freed.await,
        }
    }
}

impl NoRoom {
    pub(super) fn reply(self, shared: &Shared, family: Family) -> Response {
        let message = match self {
            NoRoom::Busy => format!(
                "the gateway holds as many request bodies as it may ({} MiB, GATEWAY_BODY_MEMORY_MB) and none was answered within {} s; retry shortly",
                shared.body_memory_mb,
                BODY_READ_TIMEOUT.as_secs()
            ),
            NoRoom::ClientShare => format!(
                "your request bodies hold a quarter of the gateway's memory for bodies ({} MiB of GATEWAY_BODY_MEMORY_MB) at once; send the next when one is answered",
                shared.body_memory_mb
            ),
        };
        reply::busy(family, &message)
    }
}

impl Drop for BodyRoom {
    fn drop(&mut self) {
        let held = self.held();
        if let Some((scope, by_client)) = self.client.take() {
            by_client.give_back(&scope, held);
        }
        // The room first, then the wake-up: a woken body finds it free.
        drop(self.permit.take());
        self.freed.notify_waiters();
    }
}

/// Read a request body into memory, bounded in size (`body_limit`: 413), in time (30 s for the
/// whole body: 408) and in the memory all bodies hold at once: room is reserved as bytes
/// arrive, so a client trickling bodies holds what it sent, not what it declared or the
/// largest a body may be. A body that finds no room in the time is answered 503.
async fn read_body(
    shared: &Shared,
    family: Family,
    body: Body,
    client: Option<super::ClientScope>,
) -> Result<(Bytes, BodyRoom), Response> {
    let limit = shared.body_limit;
    let too_large = || {
        reply::client_error(
            family,
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the request body is larger than the gateway's limit of {limit} bytes"),
        )
    };
    // A declared length over the limit is refused unread.
    if http_body::Body::size_hint(&body)
        .upper()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(too_large());
    }
    let deadline = tokio::time::Instant::now() + BODY_READ_TIMEOUT;
    let mut body = body;
    let mut data: Vec<u8> = Vec::new();
    let mut room = BodyRoom::new(shared, client);
    while let Some(chunk) = next_chunk(&mut body, deadline, family).await? {
        let length = data.len() + chunk.len();
        if length > limit {
            return Err(too_large());
        }
        // Room for what arrived, in KiB, before it is kept.
        room.grow_to(shared, length.div_ceil(1024), deadline)
            .await
            .map_err(|why| why.reply(shared, family))?;
        data.extend_from_slice(&chunk);
    }
    Ok((Bytes::from(data), room))
}

/// The next data of a body (trailers skipped), or its end; an error answer if it does not come
/// by `deadline` or breaks.
async fn next_chunk(
    body: &mut Body,
    deadline: tokio::time::Instant,
    family: Family,
) -> Result<Option<Bytes>, Response> {
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(reply::client_error(
                    family,
                    StatusCode::REQUEST_TIMEOUT,
                    &format!(
                        "the request body did not arrive within {} s",
                        BODY_READ_TIMEOUT.as_secs()
                    ),
                ));
            }
            Ok(None) => return Ok(None),
            Ok(Some(Err(_))) => {
                return Err(reply::client_error(
                    family,
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read",
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(chunk) = frame.into_data() {
            return Ok(Some(chunk));
        }
    }
}

/// The values of `from`'s headers named in `names`, appended to `to`. One pass over the
/// request's few headers, comparing names (a lookup per name in `names` hashed and parsed
/// each one: ≈ 2,400 instructions a request).
pub(super) fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, names: &[HeaderName]) {
    for (name, value) in from {
        if names.contains(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_parameters_go_upstream_in_the_query() {
        const NATIVE: &str = "/v1beta/models/m:generateContent";
        assert_eq!(
            forwarded_query(NATIVE, Some("alt=sse&key=client-token")),
            "?alt=sse"
        );
        assert_eq!(forwarded_query(NATIVE, Some("key=client-token")), "");
        assert_eq!(forwarded_query(NATIVE, Some("key")), "");
        assert_eq!(forwarded_query(NATIVE, None), "");
        assert_eq!(forwarded_query(NATIVE, Some("keys=1&alt=sse")), "?alt=sse");
        assert_eq!(
            forwarded_query(
                NATIVE,
                Some("access_token=junk&pageSize=5&quotaUser=x&pageToken=t")
            ),
            "?pageSize=5&pageToken=t"
        );
        assert_eq!(forwarded_query(NATIVE, Some("alt=proto&$alt=media")), "");
        assert_eq!(forwarded_query(NATIVE, Some("$alt=json")), "?$alt=json");
        // An Interactions path: that API's parameters only.
        let get = "/v1/interactions/v1_a";
        assert_eq!(
            forwarded_query(get, Some("stream=true&last_event_id=e3&alt=sse&key=t")),
            "?stream=true&last_event_id=e3"
        );
        assert_eq!(
            forwarded_query(get, Some("stream=maybe&include_input=true")),
            "?include_input=true"
        );
    }
}
