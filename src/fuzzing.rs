//! Entry points for the fuzz targets in `fuzz/` (compiled only with `--cfg fuzzing`, which
//! `cargo fuzz` sets): the crate-private parsers that read what the network and callers send.

use bytes::Bytes;

/// The usage scanner over `chunks` as they would arrive: the last prompt token count found.
pub fn prompt_tokens(chunks: &[&[u8]]) -> Option<u64> {
    let mut scanner = crate::scan::PromptTokens::default();
    let mut found = None;
    for chunk in chunks {
        if let Some(n) = scanner.scan(chunk) {
            found = Some(n);
        }
    }
    found
}

/// The cost layer's scanner over `chunks`: the last prompt, output, thoughts and cached counts.
pub fn usage_counts(chunks: &[&[u8]]) -> [Option<u64>; 4] {
    let mut scanner = crate::scan::LastCounts::<4>::default();
    let mut found = [None; 4];
    for chunk in chunks {
        for (slot, count) in found
            .iter_mut()
            .zip(scanner.scan(chunk, &crate::cost::USAGE_FIELDS))
        {
            if count.is_some() {
                *slot = count;
            }
        }
    }
    found
}

/// The model named in a native path.
pub fn model_in_path(path: &str) -> Option<&str> {
    crate::model::model_in_path(path)
}

/// The model named in an OpenAI JSON body.
pub fn model_in_json(body: &[u8]) -> Option<String> {
    crate::model::model_in_json(body)
}

/// Does the gateway accept `model` as a model name?
pub fn model_name_ok(model: &str) -> bool {
    crate::model::check_name(model).is_ok()
}

/// `body` cut into `chunks` and run through the key scrubber: what a caller would read.
pub fn scrub(secret: &[u8], shown: &[u8], chunks: &[&[u8]]) -> Vec<u8> {
    let Some(mut scrubber) = crate::body::Scrubber::new(secret, shown) else {
        return chunks.concat();
    };
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend_from_slice(&scrubber.push(&Bytes::copy_from_slice(chunk)));
    }
    if let Some(rest) = scrubber.flush() {
        out.extend_from_slice(&rest);
    }
    out
}

/// A request for `uri` with `body`, rewritten by the fallback layer for `model`: the new URI
/// and body, if it could be rewritten (`None` also when `uri` is not a URI).
pub fn rewrite_for_model(uri: &str, body: &[u8], model: &str) -> Option<(String, Vec<u8>)> {
    use http_body_util::Full;
    let request = http::Request::post(uri)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .ok()?;
    let out = crate::fallback::rewrite_for_fuzzing(&request, &crate::Model::new(model))?;
    let body = crate::peek::body_bytes(out.body())?.to_vec();
    Some((out.uri().to_string(), body))
}

/// The model a request for `uri` with `body` names, as the layers read it.
pub fn model_of_request(uri: &str, body: &[u8]) -> Option<String> {
    use http_body_util::Full;
    let request = http::Request::post(uri)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .ok()?;
    crate::model::model_of(&request).map(|m| m.to_string())
}

/// The stored interaction a request refers to (`interactions/{id}`), read from its method
/// (`POST` or `GET`), path and body as the affinity layer reads them.
pub fn interaction_referred(post: bool, path: &str, body: &[u8]) -> Option<String> {
    let method = if post {
        http::Method::POST
    } else {
        http::Method::GET
    };
    let (path, query) = match path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path, None),
    };
    crate::affinity::reference::call_of(&method, path, query, Some(body))?.referred()
}

/// The resources (`cachedContents/…`, `files/…`) a request body names, if plausible ones.
pub fn resources_named(body: &[u8]) -> Option<Vec<String>> {
    crate::resources::references_in(body)?.ok()
}

/// The id a created interaction's answer names, cut into `chunks` (JSON, or SSE frames).
pub fn created_interaction_id(sse: bool, chunks: &[&[u8]]) -> Option<String> {
    crate::affinity::learn::id_in(sse, chunks)
}

/// The key of a request body's prefix for prefix affinity (at a small minimum).
pub fn prefix_key(model: &str, body: &[u8]) -> Option<u64> {
    crate::affinity::PrefixAffinity::new()
        .min_tokens(8)
        .key_of(model, None, body)
}
