//! Answers read whole to learn from (they are small): an upload's last step names the file it
//! made (`{"file":{"name":…,"expirationTime":…}}`); a batch's state says whether it is done,
//! and where its results went (`responsesFile`, a file of the batch's project).

use std::time::Duration;

use serde::Deserialize;

use crate::state::PinRecord;

/// The longest answer kept: a File resource, or a batch whose results went to a file, is well
/// under it (a batch whose results are inline is larger, and names no file to learn).
const MAX: usize = 64 * 1024;

/// What an answer read whole tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Whole {
    /// An upload's last step: the file it made.
    File,
    /// A batch's state (`batches/{id}`): done or not, and its results file.
    Batch(String),
}

/// An answer kept until it parses, then what it names, with the records to teach.
pub(crate) struct WholeAnswer {
    what: Whole,
    text: Vec<u8>,
    /// Nothing more will be learned from it.
    pub(crate) done: bool,
}

impl WholeAnswer {
    pub(crate) fn new(what: Whole) -> Self {
        WholeAnswer {
            what,
            text: Vec::new(),
            done: false,
        }
    }

    /// Read a chunk: once the answer parses, the pins to learn from it (`record` is the
    /// caller's: its project and tenant), each with its expiry.
    pub(crate) fn scan(
        &mut self,
        chunk: &[u8],
        record: &PinRecord,
        now: u64,
    ) -> Option<Vec<(String, PinRecord)>> {
        if self.done {
            return None;
        }
        self.text.extend_from_slice(chunk);
        if self.text.len() > MAX {
            self.done = true;
            // A batch's state this large holds its inline results: it is done (a running
            // batch's is a few hundred bytes), and no longer counts against its project.
            return match &self.what {
                Whole::Batch(batch) => Some(vec![(
                    batch.clone(),
                    PinRecord {
                        tokens: 0,
                        expires_at: now.saturating_add(ms(super::batch::PIN_TTL)),
                        ..record.clone()
                    },
                )]),
                Whole::File => None,
            };
        }
        let pins = match &self.what {
            Whole::File => parse(&self.text, file_pins(record)),
            Whole::Batch(batch) => parse(&self.text, batch_pins(batch, record, now)),
        };
        match pins {
            Ok(pins) => {
                self.done = true;
                Some(pins)
            }
            Err(more) => {
                self.done = !more;
                None
            }
        }
    }
}

/// `Ok` with what `read` makes of the parsed answer; `Err(true)` if more is to come, `Err(false)`
/// if it will never parse.
fn parse<'a, T: Deserialize<'a>>(
    text: &'a [u8],
    read: impl FnOnce(T) -> Vec<(String, PinRecord)>,
) -> Result<Vec<(String, PinRecord)>, bool> {
    match serde_json::from_slice::<T>(text) {
        Ok(answer) => Ok(read(answer)),
        Err(e) => Err(e.is_eof()),
    }
}

/// Milliseconds since the epoch of an RFC 3339 time.
fn millis(time: &str) -> Option<u64> {
    let at = time.parse::<jiff::Timestamp>().ok()?;
    u64::try_from(at.as_millisecond()).ok()
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Deserialize)]
struct FileAnswer {
    file: File,
}

#[derive(Deserialize)]
struct File {
    name: String,
    #[serde(default, rename = "expirationTime")]
    expiration: Option<String>,
    /// Its size in bytes (a string in Google's JSON).
    #[serde(default, rename = "sizeBytes")]
    size: Option<String>,
}

/// The file an upload made, until its `expirationTime` (else the record's expiry).
fn file_pins(record: &PinRecord) -> impl FnOnce(FileAnswer) -> Vec<(String, PinRecord)> + '_ {
    move |answer| {
        let Some(name) = file_name(&answer.file.name) else {
            return Vec::new();
        };
        let mut record = record.clone();
        if let Some(at) = answer.file.expiration.as_deref().and_then(millis) {
            record.expires_at = at;
        }
        record.tokens = answer
            .file
            .size
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        vec![(name, record)]
    }
}

/// `files/{id}` if plausible.
fn file_name(name: &str) -> Option<String> {
    let id = name.strip_prefix("files/")?;
    super::reference::is_id(id).then(|| name.to_owned())
}

#[derive(Deserialize)]
struct BatchAnswer {
    #[serde(default)]
    done: bool,
    #[serde(default)]
    metadata: Option<BatchMetadata>,
    #[serde(default)]
    response: Option<BatchOutput>,
}

#[derive(Deserialize)]
struct BatchMetadata {
    #[serde(default)]
    output: Option<BatchOutput>,
}

#[derive(Deserialize)]
struct BatchOutput {
    #[serde(default, rename = "responsesFile")]
    responses_file: Option<String>,
}

/// A batch that is done is no longer enqueued (its record's tokens 0); its results file is
/// pinned with it, for as long as Google keeps a file.
fn batch_pins<'a>(
    batch: &'a str,
    record: &'a PinRecord,
    now: u64,
) -> impl FnOnce(BatchAnswer) -> Vec<(String, PinRecord)> + 'a {
    move |answer| {
        if !answer.done {
            return Vec::new();
        }
        let mut pins = vec![(
            batch.to_owned(),
            PinRecord {
                tokens: 0,
                expires_at: now.saturating_add(ms(super::batch::PIN_TTL)),
                ..record.clone()
            },
        )];
        let file = answer
            .metadata
            .and_then(|m| m.output)
            .and_then(|o| o.responses_file)
            .or_else(|| answer.response.and_then(|o| o.responses_file));
        if let Some(file) = file.as_deref().and_then(file_name) {
            let record = PinRecord {
                tokens: 0,
                expires_at: now.saturating_add(ms(super::upload::FILE_TTL)),
                ..record.clone()
            };
            pins.push((file, record));
        }
        pins
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> PinRecord {
        PinRecord {
            project: "proj-a".into(),
            expires_at: 1,
            tenant: Some("t".into()),
            tokens: 9,
        }
    }

    fn read(what: Whole, answer: &[u8]) -> Option<Vec<(String, PinRecord)>> {
        let mut whole = WholeAnswer::new(what);
        let mut found = None;
        for chunk in answer.chunks(7) {
            if let Some(pins) = whole.scan(chunk, &record(), 1000) {
                found = Some(pins);
            }
        }
        found
    }

    #[test]
    fn an_upload_names_its_file_and_expiry() {
        let pins = read(
            Whole::File,
            br#"{"file":{"name":"files/abc-1","expirationTime":"2026-12-04T10:00:00Z"}}"#,
        )
        .unwrap();
        assert_eq!(pins[0].0, "files/abc-1");
        assert_eq!(
            pins[0].1.expires_at,
            millis("2026-12-04T10:00:00Z").unwrap()
        );
        assert_eq!(
            read(Whole::File, br#"{"file":{"name":"files/../x"}}"#),
            Some(vec![])
        );
        assert_eq!(read(Whole::File, b"not json"), None);
    }

    #[test]
    fn a_done_batch_names_its_results_file() {
        let done = br#"{"name":"batches/1","done":true,"metadata":{"output":{"responsesFile":"files/r1"}}}"#;
        let pins = read(Whole::Batch("batches/1".into()), done).unwrap();
        assert_eq!(pins.len(), 2);
        assert_eq!((pins[0].0.as_str(), pins[0].1.tokens), ("batches/1", 0));
        assert_eq!(pins[1].0, "files/r1");
        assert_eq!(pins[1].1.tenant.as_deref(), Some("t"));
        let running = br#"{"name":"batches/1","done":false}"#;
        assert_eq!(
            read(Whole::Batch("batches/1".into()), running),
            Some(vec![])
        );
        // A results file named anywhere else (a request's metadata, echoed) is not learned.
        let echoed = br#"{"done":true,"metadata":{"output":{"inlinedResponses":{"inlinedResponses":[{"metadata":{"responsesFile":"files/victim"}}]}}}}"#;
        let pins = read(Whole::Batch("batches/1".into()), echoed).unwrap();
        assert_eq!(pins.len(), 1);
    }
}
