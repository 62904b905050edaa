//! The Redis second level (feature `redis`): answers one process stored, found by the others
//! that share the Redis, before they call Google for them.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::Entry;

/// The second level's store: a [`RedisStore`](crate::state::RedisStore) (without feature
/// `redis`, a type with no values).
#[cfg(feature = "redis")]
pub(crate) type Second = crate::state::RedisStore;
#[cfg(not(feature = "redis"))]
#[derive(Clone)]
pub(crate) enum Second {}

/// `status (2 bytes) · content-type length (2) · content-type · body`.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
fn encode(entry: &Entry) -> Vec<u8> {
    let content_type = entry
        .headers
        .get(http::header::CONTENT_TYPE)
        .map_or(&[][..], HeaderValue::as_bytes);
    let content_type = &content_type[..content_type.len().min(u16::MAX as usize)];
    let mut out = Vec::with_capacity(4 + content_type.len() + entry.body.len());
    out.extend_from_slice(&entry.status.as_u16().to_be_bytes());
    out.extend_from_slice(&(content_type.len() as u16).to_be_bytes());
    out.extend_from_slice(content_type);
    out.extend_from_slice(&entry.body);
    out
}

/// An entry read back; `None` if the bytes are not one (another program's value, a truncated
/// one): treated as a miss.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
fn decode(bytes: Vec<u8>, ttl: Duration) -> Option<Entry> {
    let status =
        StatusCode::from_u16(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?])).ok()?;
    // Only successes are stored.
    if status != StatusCode::OK {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]));
    let content_type = bytes.get(4..4 + length)?;
    let mut headers = HeaderMap::new();
    if !content_type.is_empty() {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_bytes(content_type).ok()?,
        );
    }
    let mut body = Bytes::from(bytes);
    let body = body.split_off(4 + length);
    if body.len() > super::MAX_ENTRY_BYTES {
        return None;
    }
    Some(Entry {
        status,
        headers,
        body,
        ttl: ttl.min(super::MAX_TTL),
    })
}

/// The entry another process stored for `key`, if any (bounded by the store's timeout).
#[cfg(feature = "redis")]
pub(crate) async fn find(second: Option<&Second>, key: &str) -> Option<Entry> {
    let (bytes, ttl) = second?.cache_get(key).await?;
    decode(bytes, ttl)
}

/// Store `entry` for the other processes (in the background).
#[cfg(feature = "redis")]
pub(crate) fn keep(second: Option<&Second>, key: &str, entry: &Entry) {
    if let Some(second) = second {
        second.cache_put(key, encode(entry), entry.ttl);
    }
}

/// Without feature `redis` there is no second level.
#[cfg(not(feature = "redis"))]
pub(crate) async fn find(second: Option<&Second>, _key: &str) -> Option<Entry> {
    match *second? {}
}

/// Without feature `redis` there is no second level.
#[cfg(not(feature = "redis"))]
pub(crate) fn keep(second: Option<&Second>, _key: &str, _entry: &Entry) {
    if let Some(never) = second {
        match *never {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_the_round_trip_and_junk_is_a_miss() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        let entry = Entry {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"data: {}\n\n"),
            ttl: Duration::from_secs(60),
        };
        let back = decode(encode(&entry), Duration::from_secs(30)).unwrap();
        assert_eq!(back.status, StatusCode::OK);
        assert_eq!(back.headers, entry.headers);
        assert_eq!(back.body, entry.body);
        assert_eq!(back.ttl, Duration::from_secs(30));
        for junk in [&b""[..], b"\x00", b"\x00\xc8\xff\xff", b"\x03\xe7\x00\x00"] {
            assert!(
                decode(junk.to_vec(), Duration::from_secs(1)).is_none(),
                "{junk:?}"
            );
        }
    }
}
