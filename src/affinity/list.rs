//! Lists of project-owned resources across the pool: Google lists only the project whose key
//! asks (`GET …/files`, `…/cachedContents`, `…/batches`), so [`list_everywhere`] asks each of
//! the pool's projects in turn, follows each one's pages, and merges what they hold.

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tower::ServiceExt;
use tower_service::Service;

use crate::context::Owner;
use crate::error::{BoxError, Error, ErrorKind};
use crate::pool::KeyPool;

/// The most pages read from one project (a list of 100 a page: 100,000 resources).
const MAX_PAGES: usize = 1000;
/// The largest page read.
const MAX_PAGE_BYTES: usize = 8 << 20;

/// Every resource a per-project list names, in all of `pool`'s projects: `GET uri` (such as
/// `https://generativelanguage.googleapis.com/v1beta/files?pageSize=100`) through `service`
/// (a [`stack`](crate::stack), or anything that honours [`Owner`]) once per project and page,
/// merged into one answer of the same shape: `{"files": [...]}` (or `cachedContents`,
/// `operations`), each item with the project that holds it under `"project"`.
///
/// ```no_run
/// # async fn run(gemini: tower_gemini::BoxGemini, pool: tower_gemini::KeyPool) -> Result<(), tower_gemini::Error> {
/// let uri = "https://generativelanguage.googleapis.com/v1beta/files?pageSize=100".parse().unwrap();
/// let all = tower_gemini::affinity::list_everywhere(gemini, &pool, uri).await?;
/// for file in all["files"].as_array().into_iter().flatten() {
///     println!("{} in {}", file["name"], file["project"]);
/// }
/// # Ok(()) }
/// ```
pub async fn list_everywhere<S, B>(service: S, pool: &KeyPool, uri: Uri) -> Result<Value, Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut field: Option<String> = None;
    let mut merged = Vec::new();
    for project in pool.project_names() {
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = page(service.clone(), &uri, &project, token.as_deref()).await?;
            let (name, items) = items_of(&page)?;
            if !name.is_empty() {
                field.get_or_insert(name);
            }
            merged.extend(items.iter().cloned().map(|mut item| {
                item["project"] = Value::from(&*project);
                item
            }));
            token = page
                .get("nextPageToken")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
    }
    let field = field.unwrap_or_else(|| "items".to_owned());
    Ok(serde_json::json!({ field: merged }))
}

/// One page of `project`'s list.
async fn page<S, B>(
    service: S,
    uri: &Uri,
    project: &str,
    token: Option<&str>,
) -> Result<Value, Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    let uri = match token {
        None => uri.clone(),
        Some(token) => {
            let token: String = token
                .bytes()
                .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
                .map(char::from)
                .collect();
            let sep = if uri.query().is_some() { '&' } else { '?' };
            format!("{uri}{sep}pageToken={token}")
                .parse()
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Upstream,
                        format!("a page token made a bad URI: {e}"),
                    )
                })?
        }
    };
    let mut request = Request::get(uri)
        .body(Full::new(Bytes::new()))
        .map_err(|e| Error::new(ErrorKind::Config, e.to_string()))?;
    request.extensions_mut().insert(Owner::project(project));
    let answer = service.oneshot(request).await.map_err(Error::from_inner)?;
    let status = answer.status();
    // A page is at most a hundred small resources: an answer past the bound is not one.
    let body = http_body_util::Limited::new(answer.into_body(), MAX_PAGE_BYTES)
        .collect()
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Upstream,
                "a list's answer broke off, or was larger than a page can be",
            )
            .with_source(e)
        })?
        .to_bytes();
    if !status.is_success() {
        return Err(Error::new(
            ErrorKind::Upstream,
            format!("project {project}'s list was answered {status}"),
        ));
    }
    serde_json::from_slice(&body).map_err(|e| {
        Error::new(
            ErrorKind::Upstream,
            format!("a list's answer is not JSON: {e}"),
        )
    })
}

/// The list field of a page (its one array), or an empty list for a page that has none (Google
/// leaves the field out when a project holds nothing).
fn items_of(page: &Value) -> Result<(String, Vec<Value>), Error> {
    let object = page
        .as_object()
        .ok_or_else(|| Error::new(ErrorKind::Upstream, "a list's answer is not a JSON object"))?;
    Ok(object
        .iter()
        .find_map(|(name, value)| Some((name.clone(), value.as_array()?.clone())))
        .unwrap_or_else(|| (String::new(), Vec::new())))
}
