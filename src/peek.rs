//! Reading a request body that is already in memory, without consuming it.
//!
//! Bodies are generic, so this works by recognising the common in-memory body types
//! (`String`, `Full<Bytes>`, `Bytes`, `Vec<u8>`, `&'static str`); any other body is not peeked.

use std::any::Any;
use std::ops::Deref;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::Body;
use http_body_util::Full;

/// The bytes of an in-memory body.
pub(crate) enum Peeked<'a> {
    Borrowed(&'a [u8]),
    Shared(Bytes),
}

impl Deref for Peeked<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Peeked::Borrowed(b) => b,
            Peeked::Shared(b) => b,
        }
    }
}

/// The whole body, if `body` is one of the in-memory types.
pub(crate) fn body_bytes<B: 'static>(body: &B) -> Option<Peeked<'_>> {
    let any = body as &dyn Any;
    if let Some(s) = any.downcast_ref::<String>() {
        return Some(Peeked::Borrowed(s.as_bytes()));
    }
    if let Some(b) = any.downcast_ref::<Bytes>() {
        return Some(Peeked::Shared(b.clone()));
    }
    if let Some(v) = any.downcast_ref::<Vec<u8>>() {
        return Some(Peeked::Borrowed(v));
    }
    if let Some(s) = any.downcast_ref::<&'static str>() {
        return Some(Peeked::Borrowed(s.as_bytes()));
    }
    if let Some(full) = any.downcast_ref::<Full<Bytes>>() {
        // `Full` has no accessor, but a clone yields its one frame at once (a refcount bump).
        let mut copy = full.clone();
        let mut cx = Context::from_waker(Waker::noop());
        return match Pin::new(&mut copy).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().ok().map(Peeked::Shared),
            Poll::Ready(None) => Some(Peeked::Borrowed(&[])),
            _ => None,
        };
    }
    None
}

/// The length of `body`, if it is one of the in-memory types: read without a copy or a poll
/// (a `Full`'s exact size hint), for what runs on every call.
pub(crate) fn body_len<B: 'static>(body: &B) -> Option<usize> {
    let any = body as &dyn Any;
    if let Some(full) = any.downcast_ref::<Full<Bytes>>() {
        return http_body::Body::size_hint(full)
            .exact()
            .and_then(|n| usize::try_from(n).ok());
    }
    if let Some(b) = any.downcast_ref::<Bytes>() {
        return Some(b.len());
    }
    if let Some(s) = any.downcast_ref::<String>() {
        return Some(s.len());
    }
    if let Some(v) = any.downcast_ref::<Vec<u8>>() {
        return Some(v.len());
    }
    any.downcast_ref::<&'static str>().map(|s| s.len())
}

/// A body of type `B` holding `bytes`, if `B` is one of the in-memory types.
pub(crate) fn body_from<B: 'static>(bytes: Bytes) -> Option<B> {
    fn put<B: 'static, T: 'static>(slot: &mut Option<B>, value: impl FnOnce() -> T) -> bool {
        match (slot as &mut dyn Any).downcast_mut::<Option<T>>() {
            Some(typed) => {
                *typed = Some(value());
                true
            }
            None => false,
        }
    }
    let mut slot: Option<B> = None;
    let _ = put(&mut slot, || Full::new(bytes.clone()))
        || put(&mut slot, || bytes.clone())
        || put(&mut slot, || bytes.to_vec())
        || put(&mut slot, || String::from_utf8_lossy(&bytes).into_owned());
    slot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_bodies_are_peeked() {
        assert_eq!(&*body_bytes(&String::from("abc")).unwrap(), b"abc");
        assert_eq!(
            &*body_bytes(&Full::new(Bytes::from("xyz"))).unwrap(),
            b"xyz"
        );
        assert_eq!(&*body_bytes(&Full::new(Bytes::new())).unwrap(), b"");
        assert_eq!(&*body_bytes(&Bytes::from_static(b"q")).unwrap(), b"q");
        assert!(body_bytes(&http_body_util::Empty::<Bytes>::new()).is_none());
    }

    #[test]
    fn in_memory_bodies_are_made_from_bytes() {
        let bytes = Bytes::from_static(b"{\"model\":\"m\"}");
        let full: Full<Bytes> = body_from(bytes.clone()).unwrap();
        assert_eq!(&*body_bytes(&full).unwrap(), &bytes[..]);
        assert_eq!(body_from::<Bytes>(bytes.clone()).unwrap(), bytes);
        assert_eq!(body_from::<Vec<u8>>(bytes.clone()).unwrap(), bytes.to_vec());
        assert_eq!(
            body_from::<String>(bytes.clone()).unwrap(),
            "{\"model\":\"m\"}"
        );
        assert!(body_from::<http_body_util::Empty<Bytes>>(bytes).is_none());
    }
}
