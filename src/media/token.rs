//! Stream auth tokens: `"{call_id}.{expires}.{hex(HMAC-SHA256(secret, call_id bytes ||
//! expires as 8 big-endian bytes))}"` (`expires`: Unix seconds), handed to Telnyx as
//! `stream_auth_token` when we ask it to stream a call, and checked when it connects.
//!
//! A token names exactly one call, so a leaked token cannot open another call's stream, and it
//! expires (its lifetime covers the longest a call can ring and last), so it cannot open one
//! forever: the expiry is under the MAC, so it cannot be moved. That the call has not ended is
//! the engine's to say, not the token's (see [`super::MediaSink::admits`]). The scheme is
//! stateless: any node sharing the secret verifies without a lookup. It must not grow state
//! (no issued-token table) and must never compare MACs with `==` (timing leak).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use iace_actors::ports::Clock;
use sha2::Sha256;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

/// Longest token `verify` looks at: a hyphenated UUID, a dot, up to 20 digits, a dot and 64
/// hex digits. Anything longer is rejected before hashing so a hostile header costs nothing.
const MAX_TOKEN_LEN: usize = 128;

/// Lifetime of a token when none is configured: the engine's default ring timeout (30 s) and
/// longest call (1 h), with margin.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 + 3600 + 300);

/// Issues and verifies stream tokens bound to a call id and an expiry.
#[derive(Clone)]
pub struct MediaTokens {
    /// Keyed once; cloning a keyed HMAC is cheaper than re-deriving the padded key per token.
    mac: HmacSha256,
    /// How long a token is accepted after it is issued.
    ttl: Duration,
    /// Time source of issue and expiry (a test moves it past a token's lifetime).
    clock: Arc<dyn Clock>,
}

impl MediaTokens {
    /// Tokens keyed by `secret`, living [`DEFAULT_TTL`] on the wall clock. Every node that
    /// must verify needs the same secret.
    pub fn new(secret: &[u8]) -> Self {
        MediaTokens {
            mac: HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length"),
            ttl: DEFAULT_TTL,
            clock: Arc::new(crate::app::SystemClock),
        }
    }

    /// Tokens keyed by a fresh 32-byte random secret: for a single node or tests, where no
    /// other process has to verify.
    pub fn random() -> Self {
        Self::new(&rand::random::<[u8; 32]>())
    }

    /// Tokens accepted for `ttl` after they are issued. Give at least the longest a call can
    /// ring plus the longest it can last: Telnyx may reconnect a stream at any point of it.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Tokens that read the time from `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn now_secs(&self) -> i64 {
        self.clock.now().timestamp()
    }

    fn tag(&self, call_id: Uuid, expires: i64) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(call_id.as_bytes());
        mac.update(&expires.to_be_bytes());
        mac
    }

    /// The token that lets Telnyx stream `call_id` until the lifetime runs out.
    pub fn token(&self, call_id: Uuid) -> String {
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        let expires = self.now_secs().saturating_add(ttl);
        format!(
            "{}.{expires}.{}",
            call_id.hyphenated(),
            hex::encode(self.tag(call_id, expires).finalize().into_bytes())
        )
    }

    /// The call a token was issued for, or `None` if it was not issued with this secret or has
    /// expired.
    pub fn verify(&self, token: &str) -> Option<Uuid> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let (id_text, rest) = token.split_once('.')?;
        let (expires_text, tag_hex) = rest.split_once('.')?;
        let call_id = Uuid::try_parse(id_text).ok()?;
        // Only the canonical spellings are accepted, so one call and expiry have exactly one
        // valid token string (other UUID or number spellings would carry the same MAC).
        if call_id.hyphenated().to_string() != id_text {
            return None;
        }
        let expires = expires_text.parse::<i64>().ok()?;
        if expires.to_string() != expires_text {
            return None;
        }
        let tag = hex::decode(tag_hex).ok()?;
        self.tag(call_id, expires).verify_slice(&tag).ok()?;
        // Checked after the MAC, so a forged token learns nothing from the answer.
        (self.now_secs() < expires).then_some(call_id)
    }
}

impl fmt::Debug for MediaTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key must not reach logs.
        f.debug_struct("MediaTokens")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use chrono::{DateTime, Utc};

    use super::*;

    /// A clock a test sets.
    struct At(Mutex<DateTime<Utc>>);

    impl Clock for At {
        fn now(&self) -> DateTime<Utc> {
            *self.0.lock().unwrap()
        }
    }

    fn at(t: i64) -> Arc<At> {
        Arc::new(At(Mutex::new(DateTime::from_timestamp(t, 0).unwrap())))
    }

    #[test]
    fn round_trip_and_tamper() {
        let clock = at(1_800_000_000);
        let tokens = MediaTokens::new(b"secret")
            .with_ttl(Duration::from_secs(600))
            .with_clock(clock.clone());
        let call = Uuid::new_v4();
        let token = tokens.token(call);
        assert_eq!(tokens.verify(&token), Some(call));
        assert!(token.starts_with(&format!("{call}.1800000600.")), "{token}");
        assert_eq!(token.len(), 36 + 1 + 10 + 1 + 64);
        let mac = &token[48..];

        // Another call id with the first call's expiry and MAC.
        let other = Uuid::new_v4();
        let swapped = format!("{other}{}", &token[36..]);
        assert_eq!(tokens.verify(&swapped), None);

        // A later expiry with the MAC of the real one.
        assert_eq!(tokens.verify(&format!("{call}.1800009999.{mac}")), None);
        // The same expiry spelled otherwise.
        assert_eq!(tokens.verify(&format!("{call}.01800000600.{mac}")), None);
        assert_eq!(tokens.verify(&format!("{call}.+1800000600.{mac}")), None);

        // One flipped hex digit in the MAC.
        let mut flipped = token.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(tokens.verify(&String::from_utf8(flipped).unwrap()), None);

        // Truncated MAC, missing parts, garbage, non-canonical UUID spelling, oversized, and
        // the format without an expiry.
        assert_eq!(tokens.verify(&token[..token.len() - 2]), None);
        assert_eq!(tokens.verify(&call.to_string()), None);
        assert_eq!(tokens.verify(&format!("{call}.1800000600")), None);
        assert_eq!(tokens.verify(&format!("{call}.{mac}")), None);
        assert_eq!(tokens.verify(""), None);
        assert_eq!(tokens.verify("not-a-uuid.1.abcd"), None);
        let upper = format!("{}{}", call.to_string().to_uppercase(), &token[36..]);
        assert_eq!(tokens.verify(&upper), None);
        assert_eq!(tokens.verify(&format!("{token}{}", "0".repeat(200))), None);
    }

    #[test]
    fn tokens_expire_after_their_lifetime() {
        let clock = at(1_800_000_000);
        let tokens = MediaTokens::new(b"secret")
            .with_ttl(Duration::from_secs(600))
            .with_clock(clock.clone());
        let call = Uuid::new_v4();
        let token = tokens.token(call);
        let set = |t: i64| *clock.0.lock().unwrap() = DateTime::from_timestamp(t, 0).unwrap();
        set(1_800_000_599);
        assert_eq!(tokens.verify(&token), Some(call), "within its lifetime");
        set(1_800_000_600);
        assert_eq!(tokens.verify(&token), None, "expired");
        set(1_900_000_000);
        assert_eq!(tokens.verify(&token), None);
        // A token issued now lives again.
        let fresh = tokens.token(call);
        assert_eq!(tokens.verify(&fresh), Some(call));
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
