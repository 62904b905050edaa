//! Client and admin tokens: where a client may put one, and constant-time comparison.

use std::fmt;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use subtle::ConstantTimeEq;

use crate::error::Error;

/// A client or admin token. Its `Debug` shows a fingerprint only.
#[derive(Clone)]
pub struct Token(Box<[u8]>);

impl Token {
    /// Validate a token: at least 8 visible ASCII characters.
    pub fn new(token: String) -> Result<Token, Error> {
        let token = token.trim();
        if token.len() < 8 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::config(
                "a client or admin token must be at least 8 visible ASCII characters, with no spaces",
            ));
        }
        Ok(Token(token.as_bytes().into()))
    }

    /// `…` and the last 4 characters.
    pub fn fingerprint(&self) -> String {
        crate::pool::masked(std::str::from_utf8(&self.0).unwrap_or_default())
    }

    /// A name for this token's own scope (its cache entries, its interactions):
    /// `client-` and SHA-256 of the token, hex (128 bits shown).
    /// Unlike the fingerprint, two tokens never share it; unlike the token, it reveals nothing.
    pub(crate) fn scope_id(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(&self.0);
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("client-{hex}")
    }

    /// Is `other` the same token (compared in constant time)?
    pub(crate) fn same_as(&self, other: &Token) -> bool {
        self.matches(&other.0)
    }

    /// Is `candidate` this token? Constant time in the token's content.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        bool::from(self.0.as_ref().ct_eq(candidate))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({})", self.fingerprint())
    }
}

/// The credential a client sent: `Authorization: Bearer`, `x-goog-api-key` (what the Google
/// SDKs send) or `?key=`, in that order.
pub(crate) fn presented<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a [u8]> {
    if let Some(bearer) = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    {
        return Some(bearer.trim_ascii());
    }
    if let Some(key) = headers.get("x-goog-api-key") {
        return Some(key.as_bytes().trim_ascii());
    }
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("key="))
        .map(str::as_bytes)
}

/// Does any of `tokens` match what was presented? Every token is compared, so the time taken
/// does not say which one matched.
pub(crate) fn accepted(tokens: &[Token], presented: Option<&[u8]>) -> Option<usize> {
    let presented = presented?;
    let mut found = None;
    for (i, token) in tokens.iter().enumerate() {
        if token.matches(presented) && found.is_none() {
            found = Some(i);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_places_in_order() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            presented(&headers, Some("alt=sse&key=from-query")),
            Some(&b"from-query"[..])
        );
        headers.insert("x-goog-api-key", "from-header".parse().unwrap());
        assert_eq!(
            presented(&headers, Some("key=from-query")),
            Some(&b"from-header"[..])
        );
        headers.insert(AUTHORIZATION, "Bearer from-bearer".parse().unwrap());
        assert_eq!(presented(&headers, None), Some(&b"from-bearer"[..]));
    }

    #[test]
    fn tokens_compare_whole_and_never_print() {
        let token = Token::new("client-token-0001".to_owned()).unwrap();
        assert!(token.matches(b"client-token-0001"));
        assert!(!token.matches(b"client-token-000"));
        assert!(!token.matches(b"client-token-00011"));
        assert_eq!(format!("{token:?}"), "Token(…0001)");
        assert!(Token::new("short".to_owned()).is_err());
        let tokens = [token, Token::new("client-token-0002".to_owned()).unwrap()];
        assert_eq!(accepted(&tokens, Some(b"client-token-0002")), Some(1));
        assert_eq!(accepted(&tokens, Some(b"nope-nope-nope")), None);
        assert_eq!(accepted(&tokens, None), None);
    }
}
