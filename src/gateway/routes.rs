//! The gateway's router: which routes exist, and the checks in front of them (the client token
//! on the APIs, the admin token on the status and admin routes).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use http::StatusCode;

use super::reply::{self, Family};
use super::{
    GatewayConfig, Shared, admin, auth, batches, caches, cors, dashboard, files, interactions,
    metrics, proxy, reload, stores, trace,
};

/// The gateway's router for `config`: every route, auth, CORS and per-client limits. Serve it
/// with `axum::serve` (see [`serve`](super::serve), which also handles shutdown).
pub fn router(config: &GatewayConfig) -> Router {
    let shared = Shared::new(config);
    routes(&shared).layer(cors::LiveCorsLayer { shared })
}

/// Every route over `shared`: the proxied APIs behind the client token, the status, admin and
/// metrics routes behind the admin token, the dashboard and `/healthz`. CORS goes around the
/// whole router ([`cors::LiveCorsLayer`]): around each route, axum would box it once more, an
/// allocation and a clone per request.
pub(super) fn routes(shared: &Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(proxy::chat_completions))
        .route("/v1/embeddings", post(proxy::embeddings))
        .route("/v1/models", get(proxy::models))
        .route("/v1/models/{*rest}", get(proxy::native).post(proxy::native))
        .route("/v1/cachedContents", get(caches::route).post(caches::route))
        .route(
            "/v1/cachedContents/{*rest}",
            get(caches::route)
                .patch(caches::route)
                .delete(caches::route),
        )
        .route("/upload/v1beta/files", post(files::upload_route))
        .route("/upload/v1/files", post(files::upload_route))
        .route("/v1/files", get(files::route))
        .route("/download/v1beta/files/{*rest}", get(files::route))
        .route("/download/v1/files/{*rest}", get(files::route))
        .route(
            "/v1/fileSearchStores",
            get(stores::route).post(stores::route),
        )
        .route(
            "/v1/fileSearchStores/{*rest}",
            get(stores::route).post(stores::route).delete(stores::route),
        )
        .route("/v1/batches", get(batches::route))
        .route(
            "/v1/batches/{*rest}",
            get(batches::route)
                .post(batches::route)
                .delete(batches::route),
        )
        .route("/v1/files/{*rest}", get(files::route).delete(files::route))
        .route("/v1/interactions", post(interactions::route))
        .route(
            "/v1/interactions/{*rest}",
            get(interactions::route)
                .post(interactions::route)
                .delete(interactions::route),
        )
        .route(
            "/v1beta/{*rest}",
            get(proxy::native).post(proxy::native).delete(proxy::native),
        );
    // Per-client limits are metered in `proxy::forward`, once the body is in memory (its
    // tokens count against `tpm`), after authentication: a request without a valid token is
    // refused before it is metered against any client's limit.
    // Each request's span, inside the token check: only a client holding a token reaches the
    // operator's traces (a stranger's flood would push real spans out of the export queue).
    // Not even the middleware when no subscriber takes DEBUG spans (the console log at INFO).
    let api = if tracing::level_enabled!(tracing::Level::DEBUG) {
        api.route_layer(middleware::from_fn(trace::traced))
    } else {
        api
    };
    let api = api.route_layer(middleware::from_fn_with_state(shared.clone(), authenticate));
    // The status and admin routes: one check of the admin token for all of them.
    let admin = Router::new()
        .route("/metrics", get(metrics::metrics))
        .route("/api/keys/status", get(admin::status))
        .route("/api/keys", post(admin::add))
        .route("/api/keys/{id}", axum::routing::delete(admin::remove))
        .route("/api/keys/revalidate", post(admin::revalidate))
        .route("/api/keys/{id}/reset", post(admin::reset))
        .route("/api/config/reload", post(reload::route))
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            admin::require_admin,
        ));
    Router::new()
        .route("/", get(dashboard::page))
        .route("/healthz", get(|| async { "ok" }))
        .merge(admin)
        .merge(api)
        .with_state(shared.clone())
}

/// Refuse requests without a client token (unless the gateway runs unauthenticated).
async fn authenticate(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    // (The guard is let go before the request goes on: a reload in between is fine.)
    let clients = shared.clients();
    if clients.tokens.is_empty() {
        drop(clients);
        return next.run(request).await;
    }
    let path = request.uri().path();
    let token = auth::presented(request.headers(), request.uri().query());
    // An upload's step carries no token when an SDK follows the session URL as Google gave it:
    // the session (opened by an authenticated start, and known only to its client) is the
    // authority, checked by the route. A token, if sent, is checked here as always.
    let upload_step = path.starts_with("/upload/")
        && crate::affinity::reference::upload_id_in(request.uri().query()).is_some();
    if token.is_none() && upload_step {
        drop(clients);
        return next.run(request).await;
    }
    let family = if path.starts_with("/v1/interactions") || path.starts_with("/v1beta/interactions")
    {
        Family::Interactions
    } else if path.starts_with("/v1/")
        && ![
            "/v1/models/",
            "/v1/cachedContents",
            "/v1/files",
            "/v1/batches",
            "/v1/fileSearchStores",
        ]
        .iter()
        .any(|native| path.starts_with(native))
    {
        Family::OpenAi
    } else {
        Family::Native
    };
    let Some(client) = auth::accepted(&clients.tokens, token) else {
        let message = if token.is_some() {
            "the gateway token is not valid"
        } else {
            "a gateway token is required: send Authorization: Bearer <token>, x-goog-api-key: <token> or ?key=<token>"
        };
        return reply::client_error(family, StatusCode::UNAUTHORIZED, message);
    };
    // Spending per client is counted under its token's fingerprint.
    let mut request = request;
    if let Some(account) = clients.accounts.get(client) {
        request.extensions_mut().insert(account.clone());
    }
    if let Some(scope) = clients.scopes.get(client) {
        request.extensions_mut().insert(scope.clone());
    }
    drop(clients);
    next.run(request).await
}
