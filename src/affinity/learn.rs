//! [`LearnBody`]: finds the id of the interaction an answer created as the answer streams
//! through (a JSON object's top-level `id`, or the first SSE frame's `interaction.id`) and
//! teaches the pool which project holds it — before the chunk that carries the id reaches the
//! caller, so that the caller's next turn, on this process or another replica, finds the pin.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::answer::{Whole, WholeAnswer};
use crate::pool::KeyPool;
use crate::scan::LastCounts;
use crate::state::PinRecord;

/// How far into an answer the id is looked for; past it, the answer is not learned from.
const MAX_SCAN: usize = 1 << 20;
/// The longest SSE frame kept while looking for the first one's id.
const MAX_FRAME: usize = 64 * 1024;

pin_project! {
    /// A response body that passes every chunk unchanged, and learns the created
    /// interaction's owner from it when the answer creates one (see the [module docs](self)).
    pub struct LearnBody<B> {
        #[pin]
        inner: B,
        learn: Option<Box<Learn>>,
    }
}

/// What kind of resource an answer creates (or updates), and so which of its fields name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A stored interaction: its `id` (`v1_…`), or the first SSE frame's `interaction.id`.
    Interaction,
    /// An explicit context cache: its `name` (`cachedContents/…`) and `expireTime`.
    Cache,
    /// An uploaded file: the answer's `file.name` (`files/…`) and `file.expirationTime`.
    File,
    /// A batch made: its `name` (`batches/…`).
    Batch,
    /// A File Search store made: its `name` (`fileSearchStores/…`).
    Store,
    /// A batch's state (`batches/…`, named): done, and its results file.
    BatchState(String),
}

impl Kind {
    /// The resource's name from what its answer's naming field holds, if plausible.
    fn name(&self, found: &str) -> Option<String> {
        match self {
            Kind::Interaction => {
                super::reference::is_id(found).then(|| super::reference::resource(found))
            }
            Kind::Cache => found
                .strip_prefix("cachedContents/")
                .filter(|id| super::reference::is_id(id))
                .map(|_| found.to_owned()),
            Kind::File | Kind::BatchState(_) => found
                .strip_prefix("files/")
                .filter(|id| super::reference::is_id(id))
                .map(|_| found.to_owned()),
            Kind::Batch => found
                .strip_prefix("batches/")
                .filter(|id| super::reference::is_id(id))
                .map(|_| found.to_owned()),
            Kind::Store => found
                .strip_prefix("fileSearchStores/")
                .filter(|id| super::reference::is_id(id))
                .map(|_| found.to_owned()),
        }
    }
}

/// What a created resource's answer is scanned for, and where it is taught.
pub(crate) struct Learn {
    pub(crate) pool: KeyPool,
    pub(crate) record: PinRecord,
    kind: Kind,
    scanner: Scanner,
    scanned: usize,
    /// The resource's name, once found.
    name: Option<String>,
    /// The usage read so far (`total_input_tokens`, `total_output_tokens`): the conversation's
    /// size, taught when the answer ends.
    usage: LastCounts<2>,
    counts: [Option<u64>; 2],
    /// A cache's `expireTime`: when its pin ends.
    expire: Option<(TopLevelField, Option<u64>)>,
    /// A chunk held back until the shared store has the pin (the write runs as a task, so
    /// that the body stays `Sync`).
    held: Option<(Frame<Bytes>, tokio::task::JoinHandle<()>)>,
    /// The size or expiry read after the name was taught once already.
    taught_early: bool,
}

/// The usage fields whose sum is a resource's size in tokens: a conversation's after an
/// answer (its input and output), a cache's (its `usageMetadata.totalTokenCount`).
const USAGE: [&[&[u8]]; 2] = [&[b"\"total_input_tokens\""], &[b"\"total_output_tokens\""]];
const CACHE_USAGE: [&[&[u8]]; 2] = [&[b"\"totalTokenCount\""], &[]];

impl Learn {
    pub(crate) fn new(pool: KeyPool, record: PinRecord, kind: Kind, sse: bool) -> Self {
        let scanner = match &kind {
            Kind::Interaction if sse => Scanner::Sse(SseFrames::default()),
            Kind::Interaction => Scanner::Json(TopLevelField::new(b"id")),
            Kind::Cache => Scanner::Json(TopLevelField::new(b"name")),
            Kind::Batch | Kind::Store => Scanner::Json(TopLevelField::new(b"name")),
            Kind::File => Scanner::Whole(WholeAnswer::new(Whole::File)),
            Kind::BatchState(batch) => {
                Scanner::Whole(WholeAnswer::new(Whole::Batch(batch.clone())))
            }
        };
        let expire = (kind == Kind::Cache).then(|| (TopLevelField::new(b"expireTime"), None));
        Learn {
            pool,
            record,
            kind,
            scanner,
            scanned: 0,
            name: None,
            usage: LastCounts::default(),
            counts: [None; 2],
            expire,
            held: None,
            taught_early: false,
        }
    }

    /// Read a chunk: its usage and expiry, and the name if not found yet (then the write of
    /// the pin to wait for, if the store has one). `false`: nothing more to learn.
    fn read(&mut self, chunk: &[u8]) -> (bool, Option<crate::state::StoreFuture<()>>) {
        self.scanned += chunk.len();
        let fields = match self.kind {
            Kind::Interaction => &USAGE,
            Kind::Cache => &CACHE_USAGE,
            _ => &[&[][..], &[][..]],
        };
        for (slot, found) in self.counts.iter_mut().zip(self.usage.scan(chunk, fields)) {
            if found.is_some() {
                *slot = found;
            }
        }
        if let Some((field, at)) = &mut self.expire
            && at.is_none()
            && let Some(text) = chunk.iter().find_map(|&b| field.step(b))
        {
            *at = text
                .parse::<jiff::Timestamp>()
                .ok()
                .and_then(|t| u64::try_from(t.as_millisecond()).ok());
        }
        if let Some(name) = self.name.clone() {
            // What arrived since the name (the usage, at the end): taught once at once, not
            // only when the body is dropped, which may come after the caller's next request;
            // later changes (a stream's running usage) wait for the end.
            if !self.taught_early && self.update() {
                self.taught_early = true;
                self.teach(&name);
            }
            return (self.scanned <= MAX_SCAN, None);
        }
        if let Scanner::Whole(_) = &self.scanner {
            return self.read_whole(chunk);
        }
        let Some(found) = self.scanner.scan(chunk) else {
            let more = self.scanned <= MAX_SCAN && !self.scanner.gave_up();
            return (more, None);
        };
        let Some(name) = self.kind.name(&found) else {
            return (false, None);
        };
        self.update();
        let write = self.pool.learn_pin(&name, self.record.clone());
        self.name = Some(name);
        (true, write)
    }

    /// Read a chunk of an answer read whole: once it parses, every pin it names is taught, the
    /// chunk held until the last is written.
    fn read_whole(&mut self, chunk: &[u8]) -> (bool, Option<crate::state::StoreFuture<()>>) {
        let now = self.pool.clock().now_millis();
        let Scanner::Whole(whole) = &mut self.scanner else {
            return (false, None);
        };
        let Some(pins) = whole.scan(chunk, &self.record, now) else {
            return (!whole.done && self.scanned <= MAX_SCAN, None);
        };
        let mut last = None;
        for (name, record) in pins {
            let write = self.pool.learn_pin(&name, record);
            if let Some(earlier) = std::mem::replace(&mut last, write)
                && let Ok(runtime) = tokio::runtime::Handle::try_current()
            {
                runtime.spawn(earlier);
            }
        }
        (last.is_some(), last)
    }

    /// Bring the record up to what was read (the resource's size, a cache's expiry); `true`
    /// if that changed it.
    fn update(&mut self) -> bool {
        let mut changed = false;
        let tokens = match (&self.kind, self.counts) {
            (Kind::Interaction, [Some(input), Some(output)]) => Some(input.saturating_add(output)),
            (Kind::Cache, [Some(total), _]) => Some(total),
            _ => None,
        };
        if let Some(tokens) = tokens
            && tokens != self.record.tokens
        {
            self.record.tokens = tokens;
            changed = true;
        }
        if let Some(at) = self.expire.as_ref().and_then(|(_, at)| *at)
            && at != self.record.expires_at
        {
            self.record.expires_at = at;
            changed = true;
        }
        changed
    }

    /// Teach the record again (its store's write in the background: nothing waits for it).
    fn teach(&self, name: &str) {
        if let Some(write) = self.pool.learn_pin(name, self.record.clone())
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(write);
        }
    }
}

impl Drop for Learn {
    /// The answer ended (or was dropped): what was read last, if it changed the record.
    fn drop(&mut self) {
        if let Some(name) = self.name.clone()
            && self.update()
        {
            self.teach(&name);
        }
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for LearnBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LearnBody")
            .field("inner", &self.inner)
            .field("learning", &self.learn.is_some())
            .finish()
    }
}

impl<B> LearnBody<B> {
    /// A body learning nothing.
    pub(crate) fn plain(inner: B) -> Self {
        LearnBody { inner, learn: None }
    }

    /// A body learning the created interaction's id.
    pub(crate) fn learning(inner: B, learn: Learn) -> Self {
        LearnBody {
            inner,
            learn: Some(Box::new(learn)),
        }
    }
}

impl<B> Body for LearnBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Some(learn) = this.learn.as_mut()
            && let Some((_, write)) = learn.held.as_mut()
        {
            // A write that failed or panicked still lets the answer through.
            let _ = ready!(Pin::new(write).poll(cx));
            let (frame, _) = learn.held.take().expect("held above");
            return Poll::Ready(Some(Ok(frame)));
        }
        let frame = ready!(this.inner.poll_frame(cx));
        let Some(learn) = this.learn.as_mut() else {
            return Poll::Ready(frame);
        };
        let Some(Ok(frame)) = frame else {
            // The end (or an error): what was learned is taught as `Learn` drops.
            *this.learn = None;
            return Poll::Ready(frame);
        };
        let Some(chunk) = frame.data_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let (more, write) = learn.read(chunk);
        if !more {
            *this.learn = None;
            return Poll::Ready(Some(Ok(frame)));
        }
        match write.zip(tokio::runtime::Handle::try_current().ok()) {
            Some((write, runtime)) => {
                learn.held = Some((frame, runtime.spawn(write)));
                // Polled at once: the task's handle registers this waker.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            None => Poll::Ready(Some(Ok(frame))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.learn.as_ref().is_none_or(|l| l.held.is_none()) && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The id a created interaction's answer names (JSON, or SSE), read from `chunks` as they
/// arrive: for the fuzz target and the tests.
#[cfg(any(test, fuzzing))]
pub(crate) fn id_in(sse: bool, chunks: &[&[u8]]) -> Option<String> {
    let mut scanner = if sse {
        Scanner::Sse(SseFrames::default())
    } else {
        Scanner::Json(TopLevelField::new(b"id"))
    };
    for chunk in chunks {
        if let Some(id) = scanner.scan(chunk) {
            return super::reference::is_id(&id).then_some(id);
        }
        if scanner.gave_up() {
            return None;
        }
    }
    None
}

/// Looks for the created resource's name.
enum Scanner {
    /// A JSON answer: a top-level field (an interaction's `id`, a cache's `name`).
    Json(TopLevelField),
    /// An SSE answer: the `interaction.id` of its first frame with data (`interaction.created`).
    Sse(SseFrames),
    /// An answer read whole (an upload's last step, a batch's state).
    Whole(WholeAnswer),
}

impl Scanner {
    fn scan(&mut self, chunk: &[u8]) -> Option<String> {
        match self {
            Scanner::Json(top) => chunk.iter().find_map(|&b| top.step(b)),
            Scanner::Sse(frames) => frames.scan(chunk),
            // (Read by `Learn::read_whole`.)
            Scanner::Whole(_) => None,
        }
    }

    /// Has the scanner seen enough to know no id will come?
    fn gave_up(&self) -> bool {
        match self {
            Scanner::Json(top) => top.done,
            Scanner::Sse(frames) => frames.done,
            Scanner::Whole(whole) => whole.done,
        }
    }
}

/// The frames of an SSE stream up to the first with a `data:` line (comments and keep-alive
/// frames before it are skipped), each searched for its end once.
#[derive(Default)]
struct SseFrames {
    frame: Vec<u8>,
    /// How much of `frame` was searched for a blank line already.
    searched: usize,
    done: bool,
}

impl SseFrames {
    fn scan(&mut self, chunk: &[u8]) -> Option<String> {
        self.frame.extend_from_slice(chunk);
        loop {
            // A blank line ends a frame (`\n\n`, or `\r\n\r\n` whose last two bytes are `\r\n`).
            let from = self.searched.saturating_sub(3);
            let end = self.frame[from..]
                .windows(2)
                .position(|w| w == b"\n\n" || w == b"\n\r")
                .map(|at| from + at + 2);
            let Some(end) = end else {
                self.searched = self.frame.len();
                self.done = self.frame.len() > MAX_FRAME;
                return None;
            };
            let frame: Vec<u8> = self.frame.drain(..end).collect();
            self.searched = 0;
            if let Some(data) = data_line(&frame) {
                // The first frame with data names the interaction, or nothing will.
                self.done = true;
                self.frame.clear();
                return first_frame_id(data);
            }
        }
    }
}

/// The `data:` line of an SSE frame, if it has one.
fn data_line(frame: &[u8]) -> Option<&[u8]> {
    frame
        .split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"data:"))
}

/// The `interaction.id` (or top-level `id`) of an SSE frame's data.
fn first_frame_id(data: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(data).ok()?;
    let id = json
        .get("interaction")
        .and_then(|i| i.get("id"))
        .or_else(|| json.get("id"))?
        .as_str()?;
    super::reference::is_id(id).then(|| id.to_owned())
}

/// A byte-at-a-time reader of one top-level string field of a JSON object (`"id": "…"`),
/// across chunks.
struct TopLevelField {
    /// The field's name.
    field: &'static [u8],
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// The string being read at depth 1 (a key or a value), up to a bound.
    text: Vec<u8>,
    /// The last key read at depth 1 is the field, awaiting its `:`.
    key_is_id: bool,
    /// The `:` after the field's name was read: the next value is its.
    value_next: bool,
    done: bool,
}

impl TopLevelField {
    fn new(field: &'static [u8]) -> Self {
        TopLevelField {
            field,
            depth: 0,
            in_string: false,
            escaped: false,
            text: Vec::new(),
            key_is_id: false,
            value_next: false,
            done: false,
        }
    }

    fn step(&mut self, b: u8) -> Option<String> {
        if self.done {
            return None;
        }
        if self.in_string {
            return self.in_string(b);
        }
        match b {
            b'"' => {
                self.in_string = true;
                self.text.clear();
            }
            b'{' | b'[' => {
                self.depth += 1;
                self.value_next = false;
            }
            b'}' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                if self.depth == 0 {
                    self.done = true;
                }
            }
            b':' if self.depth == 1 => {
                self.value_next = std::mem::take(&mut self.key_is_id);
            }
            b',' if self.depth == 1 => {
                self.key_is_id = false;
                self.value_next = false;
            }
            b if b.is_ascii_whitespace() => {}
            // A number, `true`, `null`: not a string id.
            _ if self.depth == 1 => self.value_next = false,
            _ => {}
        }
        None
    }

    fn in_string(&mut self, b: u8) -> Option<String> {
        if self.escaped {
            self.escaped = false;
            self.text.push(0);
            return None;
        }
        match b {
            b'\\' => {
                self.escaped = true;
            }
            b'"' => {
                self.in_string = false;
                if self.depth != 1 {
                    return None;
                }
                if std::mem::take(&mut self.value_next) {
                    self.done = true;
                    return std::str::from_utf8(&self.text).ok().map(str::to_owned);
                }
                self.key_is_id = self.text == self.field;
            }
            _ if self.depth == 1 && self.text.len() < 256 => self.text.push(b),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_id(chunks: &[&[u8]]) -> Option<String> {
        id_in(false, chunks)
    }

    #[test]
    fn the_top_level_id_is_found_wherever_the_answer_is_cut() {
        let answer = br#"{"object":"interaction","steps":[{"id":"inner","type":"x"}],"usage":{"id":"no"},"id" : "v1_abc-9","status":"completed"}"#;
        for cut in 0..answer.len() {
            let (a, b) = answer.split_at(cut);
            assert_eq!(
                json_id(&[a, b]).as_deref(),
                Some("v1_abc-9"),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn ids_that_are_not_strings_or_not_plausible_are_not_learned() {
        assert_eq!(json_id(&[br#"{"id":42,"x":"y"}"#]), None);
        assert_eq!(json_id(&[br#"{"id":"../files/x"}"#]), None);
        assert_eq!(json_id(&[br#"{"note":"\"id\":\"v1_fake\"","a":1}"#]), None);
        assert_eq!(json_id(&[br#"{"x":{"id":"nested"}}"#]), None);
    }

    #[test]
    fn the_first_sse_frame_names_the_interaction() {
        let stream = b": keep-alive\r\n\r\nevent: interaction.created\r\ndata: {\"interaction\":{\"id\":\"v1_s\",\"status\":\"in_progress\"},\"event_type\":\"interaction.created\"}\r\n\r\nevent: step.start\n";
        for cut in 0..stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(
                id_in(true, &[a, b]).as_deref(),
                Some("v1_s"),
                "cut at {cut}"
            );
        }
        // A first frame with data but no id: nothing is learned from what follows.
        let spoof = b"data: {\"event_type\":\"step.start\"}\n\ndata: {\"interaction\":{\"id\":\"v1_late\"}}\n\n";
        assert_eq!(id_in(true, &[spoof]), None);
    }
}
