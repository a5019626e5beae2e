//! Stream auth tokens: `"{call_id}.{hex(HMAC-SHA256(secret, call_id bytes))}"`, handed to
//! Telnyx as `stream_auth_token` when we ask it to stream a call, and checked when it connects.
//!
//! A token names exactly one call, so a leaked token cannot open another call's stream. The
//! scheme is stateless: any node sharing the secret verifies without a lookup. It must not grow
//! state (no issued-token table) and must never compare MACs with `==` (timing leak).

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

/// Longest token `verify` looks at: a hyphenated UUID, a dot and 64 hex digits, with slack.
/// Anything longer is rejected before hashing so a hostile header costs nothing.
const MAX_TOKEN_LEN: usize = 128;

/// Issues and verifies stream tokens bound to a call id.
#[derive(Clone)]
pub struct MediaTokens {
    /// Keyed once; cloning a keyed HMAC is cheaper than re-deriving the padded key per token.
    mac: HmacSha256,
}

impl MediaTokens {
    /// Tokens keyed by `secret`. Every node that must verify needs the same secret.
    pub fn new(secret: &[u8]) -> Self {
        MediaTokens {
            mac: HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length"),
        }
    }

    /// Tokens keyed by a fresh 32-byte random secret: for a single node or tests, where no
    /// other process has to verify.
    pub fn random() -> Self {
        Self::new(&rand::random::<[u8; 32]>())
    }

    /// The token that lets Telnyx stream `call_id`.
    pub fn token(&self, call_id: Uuid) -> String {
        let mut mac = self.mac.clone();
        mac.update(call_id.as_bytes());
        format!(
            "{}.{}",
            call_id.hyphenated(),
            hex::encode(mac.finalize().into_bytes())
        )
    }

    /// The call a token was issued for, or `None` if it was not issued with this secret.
    pub fn verify(&self, token: &str) -> Option<Uuid> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let (id_text, tag_hex) = token.split_once('.')?;
        let call_id = Uuid::try_parse(id_text).ok()?;
        // Only the canonical spelling is accepted, so one call has exactly one valid token string
        // (other UUID spellings would carry the same MAC).
        if call_id.hyphenated().to_string() != id_text {
            return None;
        }
        let tag = hex::decode(tag_hex).ok()?;
        let mut mac = self.mac.clone();
        mac.update(call_id.as_bytes());
        mac.verify_slice(&tag).ok()?;
        Some(call_id)
    }
}

impl fmt::Debug for MediaTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key must not reach logs.
        f.debug_struct("MediaTokens").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let tokens = MediaTokens::new(b"secret");
        let call = Uuid::new_v4();
        let token = tokens.token(call);
        assert_eq!(tokens.verify(&token), Some(call));
        assert!(token.starts_with(&format!("{call}.")));
        assert_eq!(token.len(), 36 + 1 + 64);

        // Another call id with the first call's MAC.
        let other = Uuid::new_v4();
        let swapped = format!("{other}{}", &token[36..]);
        assert_eq!(tokens.verify(&swapped), None);

        // One flipped hex digit in the MAC.
        let mut flipped = token.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(tokens.verify(&String::from_utf8(flipped).unwrap()), None);

        // Truncated MAC, missing MAC, garbage, non-canonical UUID spelling, oversized.
        assert_eq!(tokens.verify(&token[..token.len() - 2]), None);
        assert_eq!(tokens.verify(&call.to_string()), None);
        assert_eq!(tokens.verify(""), None);
        assert_eq!(tokens.verify("not-a-uuid.abcd"), None);
        let upper = format!("{}{}", call.to_string().to_uppercase(), &token[36..]);
        assert_eq!(tokens.verify(&upper), None);
        assert_eq!(tokens.verify(&format!("{token}{}", "0".repeat(200))), None);
    }

    #[test]
    fn other_secret_rejects() {
        let call = Uuid::new_v4();
        let token = MediaTokens::new(b"one").token(call);
        assert_eq!(MediaTokens::new(b"two").verify(&token), None);
        assert_eq!(MediaTokens::random().verify(&token), None);
        // Same secret on another "node" accepts: the scheme is stateless.
        assert_eq!(MediaTokens::new(b"one").verify(&token), Some(call));
    }

    #[test]
    fn debug_hides_the_key() {
        let text = format!("{:?}", MediaTokens::new(b"hunter2"));
        assert!(!text.contains("hunter2"));
    }
}
