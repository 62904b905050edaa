//! A request rewritten for another model.

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Uri};
use serde_json::Value;

use crate::model::{self, Model};
use crate::peek;

/// `template` addressed to `model`: the path's model, a [`Model`] extension and the `model`
/// field of an OpenAI-compatible JSON body are replaced. `None` if the request names its model
/// nowhere this can rewrite (an OpenAI body that is a stream, or not JSON: Google reads the
/// model from the body, so a request whose body cannot be rewritten does not fall back).
pub(crate) fn for_model<B: Clone + 'static>(
    template: &Request<B>,
    model: &Model,
) -> Option<Request<B>> {
    let mut request = template.clone();
    let mut rewritten = false;
    if request.extensions().get::<Model>().is_some() {
        request.extensions_mut().insert(model.clone());
        rewritten = true;
    }
    let path = request.uri().path();
    if let Some(old) = model::model_in_path(path) {
        let start = old.as_ptr() as usize - path.as_ptr() as usize;
        let mut new = String::with_capacity(path.len() + model.as_str().len());
        new.push_str(&path[..start]);
        new.push_str(model.as_str());
        new.push_str(&path[start + old.len()..]);
        if let Some(query) = request.uri().query() {
            new.push('?');
            new.push_str(query);
        }
        let mut parts = request.uri().clone().into_parts();
        parts.path_and_query = Some(PathAndQuery::try_from(new).ok()?);
        *request.uri_mut() = Uri::from_parts(parts).ok()?;
        rewritten = true;
    } else if model::is_openai_path(path) {
        let body = peek::body_bytes(request.body())?;
        let mut json: Value = serde_json::from_slice(&body).ok()?;
        let object = json.as_object_mut()?;
        object.get("model")?;
        object.insert("model".to_owned(), Value::String(model.as_str().to_owned()));
        let bytes = Bytes::from(serde_json::to_vec(&json).ok()?);
        if request.headers().contains_key(http::header::CONTENT_LENGTH) {
            request
                .headers_mut()
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        }
        *request.body_mut() = peek::body_from(bytes)?;
        rewritten = true;
    }
    rewritten.then_some(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    fn flash() -> Model {
        Model::new("gemini-2.0-flash")
    }

    #[test]
    fn native_paths_keep_method_and_query() {
        let request = Request::builder()
            .uri("http://127.0.0.1:9/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let out = for_model(&request, &flash()).unwrap();
        assert_eq!(
            out.uri().to_string(),
            "http://127.0.0.1:9/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(model::model_of(&out).as_deref(), Some("gemini-2.0-flash"));
    }

    #[test]
    fn openai_bodies_get_the_model_field() {
        let body = r#"{"model":"gemini-2.5-pro","messages":[{"role":"user","content":"hi"}]}"#;
        let request = Request::builder()
            .uri("/v1beta/openai/chat/completions")
            .header("content-length", body.len())
            .body(String::from(body))
            .unwrap();
        let out = for_model(&request, &flash()).unwrap();
        assert_eq!(model::model_of(&out).as_deref(), Some("gemini-2.0-flash"));
        let json: Value = serde_json::from_str(out.body()).unwrap();
        assert_eq!(json["messages"][0]["content"], "hi");
        assert_eq!(
            out.headers()["content-length"],
            out.body().len().to_string().as_str()
        );
        // The template is unchanged: the next fallback starts from the caller's request.
        assert_eq!(request.body(), body);
    }

    #[test]
    fn the_model_extension_is_replaced() {
        let request = Request::builder()
            .uri("/v1beta/models/gemini-2.5-pro:generateContent")
            .extension(Model::new("gemini-2.5-pro"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let out = for_model(&request, &flash()).unwrap();
        assert_eq!(out.extensions().get::<Model>(), Some(&flash()));
        assert_eq!(
            out.uri().path(),
            "/v1beta/models/gemini-2.0-flash:generateContent"
        );
        // On the OpenAI endpoint Google reads the body's model: a stream body cannot be
        // rewritten, so the extension alone does not make the request fall back.
        let openai = Request::builder()
            .uri("/v1beta/openai/chat/completions")
            .extension(Model::new("gemini-2.5-pro"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        assert!(for_model(&openai, &flash()).is_none());
    }

    #[test]
    fn unrewritable_requests_are_none() {
        // An OpenAI body that is a stream cannot be read without consuming it.
        let stream = Request::builder()
            .uri("/v1beta/openai/chat/completions")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        assert!(for_model(&stream, &flash()).is_none());
        let no_model = Request::builder()
            .uri("/v1beta/openai/chat/completions")
            .body(String::from(r#"{"messages":[]}"#))
            .unwrap();
        assert!(for_model(&no_model, &flash()).is_none());
        let not_json = Request::builder()
            .uri("/v1beta/openai/chat/completions")
            .body(String::from("model=gemini"))
            .unwrap();
        assert!(for_model(&not_json, &flash()).is_none());
    }
}
