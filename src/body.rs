//! Response bodies of this crate's layers: passed through untouched, or replayed after a bounded
//! prefix was read to classify an error answer.

use crate::context::ErrorBodyLimits;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::Request;
use http_body_util::{BodyExt, Full, Limited};

use crate::error::{BoxError, Error, ErrorKind};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

pin_project! {
    /// The body of a response from [`KeyRotation`](crate::KeyRotation) or [`Retry`](crate::retry::Retry).
    ///
    /// Success bodies stream through untouched (data converted to [`Bytes`], which for
    /// `Bytes`-based bodies such as hyper's is free). Error bodies replay the frames read for
    /// classification, then the rest.
    pub struct ResponseBody<B: Body> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B: Body> {
        Passthrough { #[pin] body: B },
        Replay {
            frames: VecDeque<Frame<Bytes>>,
            error: Option<B::Error>,
            rest: Option<Pin<Box<B>>>,
            scrub: Option<Box<Scrubber>>,
        },
    }
}

impl<B: Body> ResponseBody<B> {
    pub(crate) fn passthrough(body: B) -> Self {
        ResponseBody {
            kind: Kind::Passthrough { body },
        }
    }

    pub(crate) fn replay(
        frames: VecDeque<Frame<Bytes>>,
        error: Option<B::Error>,
        rest: Option<Pin<Box<B>>>,
        scrub: Option<Box<Scrubber>>,
    ) -> Self {
        ResponseBody {
            kind: Kind::Replay {
                frames,
                error,
                rest,
                scrub,
            },
        }
    }
}

impl<B: Body> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Passthrough { .. } => "passthrough",
            Kind::Replay { scrub: None, .. } => "replay",
            Kind::Replay { scrub: Some(_), .. } => "replay, scrubbed",
        };
        f.debug_struct("ResponseBody")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

/// A frame with its data as [`Bytes`] (free for `Bytes`-based bodies).
pub(crate) fn to_bytes<D: Buf>(frame: Frame<D>) -> Frame<Bytes> {
    frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))
}

/// Replaces every copy of a secret in a body as it streams, however the frames cut it: the
/// last `secret.len() - 1` bytes of each frame are held back until the next one shows whether
/// they start a copy. It never shows the secret in `Debug`.
pub(crate) struct Scrubber {
    needle: Box<[u8]>,
    replacement: Box<[u8]>,
    carry: Vec<u8>,
    /// A trailers frame (or the end) held while the carried bytes go out first.
    held: Option<Option<Frame<Bytes>>>,
}

/// Could `replacement`, put where `needle` was, make a new `needle` with the bytes beside
/// it: does it hold the needle, or does its end begin the needle or its start end it?
fn could_join(needle: &[u8], replacement: &[u8]) -> bool {
    let overlap = 1..=replacement.len().min(needle.len());
    overlap.into_iter().any(|k| {
        needle.starts_with(&replacement[replacement.len() - k..])
            || needle.ends_with(&replacement[..k])
    }) || (!needle.is_empty() && replacement.windows(needle.len()).any(|w| w == needle))
}

impl Scrubber {
    /// `None` for an empty needle (nothing to scrub).
    ///
    /// A replacement that could join the bytes around it into the needle is not used: a key
    /// whose last four characters also begin it (`abcdXabcd`, shown as `…abcd`) followed in the
    /// body by the rest of itself (`Xabcd`) would come out whole. Then the key is shown as `…`
    /// alone, which a key (visible ASCII) can never run into.
    pub(crate) fn new(needle: &[u8], replacement: &[u8]) -> Option<Box<Scrubber>> {
        let replacement = if could_join(needle, replacement) {
            "…".as_bytes()
        } else {
            replacement
        };
        (!needle.is_empty()).then(|| {
            Box::new(Scrubber {
                needle: needle.into(),
                replacement: replacement.into(),
                carry: Vec::new(),
                held: None,
            })
        })
    }

    /// The scrubbed bytes of `data` that can go out now.
    pub(crate) fn push(&mut self, data: &[u8]) -> Bytes {
        let mut buffer = std::mem::take(&mut self.carry);
        buffer.extend_from_slice(data);
        let needle = &*self.needle;
        let mut out = Vec::with_capacity(buffer.len());
        let mut rest = &buffer[..];
        while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(&self.replacement);
            rest = &rest[at + needle.len()..];
        }
        let keep = rest.len().min(needle.len() - 1);
        out.extend_from_slice(&rest[..rest.len() - keep]);
        self.carry = rest[rest.len() - keep..].to_vec();
        Bytes::from(out)
    }

    /// What is still held back (the body ended or trailers come next).
    pub(crate) fn flush(&mut self) -> Option<Bytes> {
        (!self.carry.is_empty()).then(|| Bytes::from(std::mem::take(&mut self.carry)))
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Passthrough { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map(to_bytes))),
            KindProj::Replay {
                frames,
                error,
                rest,
                scrub,
            } => loop {
                if let Some(held) = scrub.as_mut().and_then(|s| s.held.take()) {
                    return Poll::Ready(held.map(Ok));
                }
                let next = if let Some(frame) = frames.pop_front() {
                    Some(Ok(frame))
                } else if let Some(error) = error.take() {
                    *rest = None;
                    Some(Err(error))
                } else {
                    match rest {
                        Some(body) => {
                            let polled = std::task::ready!(body.as_mut().poll_frame(cx))
                                .map(|r| r.map(to_bytes));
                            if polled.is_none() {
                                *rest = None;
                            }
                            polled
                        }
                        None => None,
                    }
                };
                let Some(scrubber) = scrub.as_mut() else {
                    return Poll::Ready(next);
                };
                match next {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => {
                            let clean = scrubber.push(&data);
                            if !clean.is_empty() {
                                return Poll::Ready(Some(Ok(Frame::data(clean))));
                            }
                        }
                        Err(trailers) => match scrubber.flush() {
                            Some(tail) => {
                                scrubber.held = Some(Some(trailers));
                                return Poll::Ready(Some(Ok(Frame::data(tail))));
                            }
                            None => return Poll::Ready(Some(Ok(trailers))),
                        },
                    },
                    // On an error the held-back bytes (less than a key) are dropped with it.
                    Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                    None => {
                        let tail = scrubber.flush();
                        *scrub = None;
                        return Poll::Ready(tail.map(|t| Ok(Frame::data(t))));
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Passthrough { body } => body.is_end_stream(),
            Kind::Replay {
                frames,
                error,
                rest,
                scrub,
            } => {
                frames.is_empty()
                    && error.is_none()
                    && rest.as_ref().is_none_or(|b| b.is_end_stream())
                    && scrub.is_none()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Passthrough { body } => body.size_hint(),
            // Scrubbing changes the length by an amount known only at the end.
            Kind::Replay { scrub: Some(_), .. } => SizeHint::new(),
            Kind::Replay { frames, rest, .. } => {
                let buffered: u64 = frames
                    .iter()
                    .filter_map(|f| f.data_ref())
                    .map(|d| d.len() as u64)
                    .sum();
                match rest {
                    None => SizeHint::with_exact(buffered),
                    Some(body) => {
                        let inner = body.size_hint();
                        let mut hint = SizeHint::new();
                        hint.set_lower(inner.lower() + buffered);
                        if let Some(upper) = inner.upper() {
                            hint.set_upper(upper + buffered);
                        }
                        hint
                    }
                }
            }
        }
    }
}

/// Make a request replayable (for [`RetryLayer`](crate::retry::RetryLayer)): read its body into
/// memory, up to `limit` bytes.
///
/// Errors with [`ErrorKind::BodyTooLarge`] past the limit (a server should answer 413), or
/// [`ErrorKind::Transport`] if the body fails while being read.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let request = http::Request::new(Full::new(Bytes::from_static(b"{}")));
/// let replayable = tower_gemini::body::buffer(request, 1024).await.unwrap();
/// let copy = replayable.clone(); // Full<Bytes> is Clone: the request can be sent again
/// assert_eq!(copy.into_body().collect().await.unwrap().to_bytes(), "{}");
///
/// let big = http::Request::new(Full::new(Bytes::from(vec![b'x'; 2048])));
/// let error = tower_gemini::body::buffer(big, 1024).await.unwrap_err();
/// assert_eq!(error.kind(), tower_gemini::ErrorKind::BodyTooLarge);
/// # });
/// ```
pub async fn buffer<B>(request: Request<B>, limit: usize) -> Result<Request<Full<Bytes>>, Error>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(Request::from_parts(parts, Full::new(collected.to_bytes()))),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(Error::new(
            ErrorKind::BodyTooLarge,
            format!(
                "the request body is larger than {limit} bytes; send a smaller body or raise the limit"
            ),
        )),
        Err(error) => Err(
            Error::new(ErrorKind::Transport, "reading the request body failed").with_source(error),
        ),
    }
}

/// Reads up to `max` bytes of a body (an error answer), for at most `timeout`, without losing any
/// of it: the frames read are kept and replayed by [`Prefix::into_body`].
///
/// The time bound is what keeps an upstream that trickles its error body (a byte every few
/// seconds) from holding the caller and the key: when it passes, what arrived is classified.
pub(crate) struct Prefix<B: Body> {
    body: Pin<Box<B>>,
    frames: VecDeque<Frame<Bytes>>,
    seen: Vec<u8>,
    ended: bool,
    error: Option<B::Error>,
    max: usize,
    give_up_at: Instant,
    /// Armed the first time the body makes us wait (no timer for a body already in memory).
    timer: Option<Pin<Box<Sleep>>>,
    timed_out: bool,
}

impl<B: Body> Prefix<B> {
    pub(crate) fn new(body: B, max: usize, timeout: Duration) -> Self {
        Prefix {
            body: Box::pin(body),
            frames: VecDeque::new(),
            seen: Vec::new(),
            ended: false,
            error: None,
            max,
            give_up_at: crate::clock::instant_after(Instant::now(), timeout),
            timer: None,
            timed_out: false,
        }
    }

    /// Stop reading now: [`poll_read`](Self::poll_read) is ready with what arrived.
    pub(crate) fn give_up(&mut self) {
        self.timed_out = true;
    }

    /// Read frames until the body ends, errors, `max` bytes were seen or the time is up.
    pub(crate) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while !self.ended && self.error.is_none() && !self.timed_out && self.seen.len() < self.max {
            match self.body.as_mut().poll_frame(cx) {
                Poll::Pending => {
                    let give_up_at = self.give_up_at;
                    let timer = self
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(give_up_at)));
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    tracing::debug!(
                        "error body still arriving when its read time ran out; classifying what arrived"
                    );
                    self.timed_out = true;
                }
                Poll::Ready(None) => self.ended = true,
                Poll::Ready(Some(Err(error))) => self.error = Some(error),
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = to_bytes(frame);
                    if let Some(data) = frame.data_ref() {
                        let room = self.max - self.seen.len();
                        self.seen.extend_from_slice(&data[..data.len().min(room)]);
                    }
                    self.frames.push_back(frame);
                }
            }
        }
        if !self.ended && self.error.is_none() && self.body.is_end_stream() {
            self.ended = true;
        }
        Poll::Ready(())
    }

    /// The bytes read so far (at most `max`).
    pub(crate) fn seen(&self) -> &[u8] {
        &self.seen
    }

    /// Was the whole body read, without error?
    pub(crate) fn is_complete(&self) -> bool {
        self.ended && self.error.is_none()
    }

    /// Replace every `needle` in the frames read by `replacement`; returns true if any was.
    /// The data frames are joined into one; trailers stay after it.
    ///
    /// Every frame read is searched, not only the classified prefix: a body longer than the
    /// prefix that ended within the frames read holds its tail there too.
    pub(crate) fn replace(&mut self, needle: &[u8], replacement: &[u8]) -> bool {
        let found = needle.len() <= self.buffered_len() as usize
            && !needle.is_empty()
            && (self.seen.windows(needle.len()).any(|w| w == needle)
                || self.buffered_len() as usize > self.seen.len());
        if !found {
            return false;
        }
        let mut data = Vec::new();
        let mut trailers = Vec::new();
        for frame in self.frames.drain(..) {
            match frame.into_data() {
                Ok(bytes) => data.extend_from_slice(&bytes),
                Err(other) => trailers.push(other),
            }
        }
        let mut out = Vec::with_capacity(data.len());
        let mut rest = &data[..];
        while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(replacement);
            rest = &rest[at + needle.len()..];
        }
        let replaced = rest.len() != data.len();
        out.extend_from_slice(rest);
        self.frames.push_back(Frame::data(Bytes::from(out)));
        self.frames.extend(trailers);
        replaced
    }

    /// Length of the data read so far.
    pub(crate) fn buffered_len(&self) -> u64 {
        self.frames
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum()
    }

    /// The whole body again: the frames read, then any error, then the rest.
    pub(crate) fn into_body(self) -> ResponseBody<B> {
        self.into_scrubbed_body(None)
    }

    /// The whole body again, every copy of the scrubber's secret replaced as it streams.
    pub(crate) fn into_scrubbed_body(self, scrub: Option<Box<Scrubber>>) -> ResponseBody<B> {
        let rest = (!self.ended && self.error.is_none()).then_some(self.body);
        ResponseBody::replay(self.frames, self.error, rest, scrub)
    }
}

/// An error answer whose first bytes are being read to classify it: the one reader key
/// rotation and the retry layer share (bounded in bytes and in time by [`ErrorBodyLimits`]).
pub(crate) struct ErrorAnswer<B: Body> {
    pub(crate) parts: http::response::Parts,
    pub(crate) prefix: Prefix<B>,
}

impl<B: Body> ErrorAnswer<B> {
    pub(crate) fn new(parts: http::response::Parts, body: B, limits: ErrorBodyLimits) -> Self {
        ErrorAnswer {
            parts,
            prefix: Prefix::new(body, limits.bytes, limits.time),
        }
    }

    /// Ready once the prefix is read (or the body ended, broke, or took too long).
    pub(crate) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.prefix.poll_read(cx)
    }

    /// What the answer means, from its status and the bytes read.
    pub(crate) fn classification(&self) -> crate::classify::Classification {
        crate::classify::Classification::from_response(self.parts.status, self.prefix.seen())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrubbed(needle: &str, shown: &str, chunks: &[&str]) -> String {
        let mut scrubber = Scrubber::new(needle.as_bytes(), shown.as_bytes()).unwrap();
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend_from_slice(&scrubber.push(chunk.as_bytes()));
        }
        out.extend_from_slice(&scrubber.flush().unwrap_or_default());
        String::from_utf8(out).unwrap()
    }

    /// A body that ended within the frames read but runs past the classified prefix: the key
    /// in its tail is replaced too (the prefix alone was searched before).
    #[tokio::test]
    async fn a_key_past_the_prefix_of_a_whole_body_is_replaced() {
        let body = format!(
            "{{\"error\":\"{}\",\"k\":\"test-key-0001\"}}",
            "x".repeat(100)
        );
        let mut prefix = Prefix::new(
            http_body_util::Full::new(Bytes::from(body)),
            16,
            Duration::from_secs(1),
        );
        std::future::poll_fn(|cx| prefix.poll_read(cx)).await;
        assert!(prefix.is_complete());
        assert!(prefix.replace(b"test-key-0001", "…0001".as_bytes()));
        let out = http_body_util::BodyExt::collect(prefix.into_body())
            .await
            .ok()
            .unwrap()
            .to_bytes();
        let out = String::from_utf8(out.to_vec()).unwrap();
        assert!(!out.contains("test-key-0001"), "{out}");
        assert!(out.ends_with("\"k\":\"…0001\"}"), "{out}");
    }

    #[test]
    fn a_copy_cut_across_frames_is_replaced() {
        let out = scrubbed(
            "test-key-0001",
            "…0001",
            &["say test-k", "ey-0", "001 twice: test-key-0001"],
        );
        assert_eq!(out, "say …0001 twice: …0001");
    }

    /// Found by the `scrub` fuzz target: the fingerprint of a key that begins with its own last
    /// four characters, followed by the rest of the key, made the key again.
    #[test]
    fn a_replacement_never_joins_what_follows_into_the_key() {
        let key = "abcdXabcd";
        let out = scrubbed(key, "…abcd", &["abcdXabcdXabcd"]);
        assert!(!out.contains(key), "{out}");
        assert_eq!(out, "…Xabcd");
        // An ordinary key keeps its fingerprint.
        assert_eq!(
            scrubbed("test-key-0001", "…0001", &["test-key-0001"]),
            "…0001"
        );
    }
}
