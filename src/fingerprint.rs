//! How a key (or a token) is ever shown: [`Fingerprint`], its last four characters. Below every
//! other module, so errors, the pool and the layers all name keys the same way.

use std::fmt;

use serde::{Serialize, Serializer};

/// The last 4 characters of a key, shown as `…a1b2`: the only form in which a key is ever printed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 4]);

impl Fingerprint {
    pub(crate) fn of(secret: &str) -> Fingerprint {
        let bytes = secret.as_bytes();
        let mut tail = [b'?'; 4];
        let start = bytes.len().saturating_sub(4);
        for (slot, byte) in tail.iter_mut().zip(&bytes[start..]) {
            *slot = *byte;
        }
        Fingerprint(tail)
    }

    /// The 4 characters without the leading ellipsis.
    pub fn tail(&self) -> &str {
        // Keys are validated to be visible ASCII, so the tail is valid UTF-8.
        std::str::from_utf8(&self.0).unwrap_or("????")
    }

    /// Does `text` name this fingerprint (`…a1b2`, `...a1b2` or `a1b2`)?
    pub fn matches(&self, text: &str) -> bool {
        let text = text
            .strip_prefix('…')
            .or_else(|| text.strip_prefix("..."))
            .unwrap_or(text);
        text == self.tail()
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "…{}", self.tail())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}
