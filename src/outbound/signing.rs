//! Standard Webhooks signatures (vendor-protocols.md section 10), so that a customer verifies
//! what IACE sends with any off-the-shelf library of the specification.
//!
//! - Secret: `whsec_` + base64 of the key bytes (IACE makes 32 random bytes).
//! - `webhook-signature`: space-separated `v1,<base64 HMAC-SHA256(key, id.timestamp.body)>`,
//!   one per secret in force (two during a rotation).
//! - `webhook-id` is the message's id, the same on every attempt; `webhook-timestamp` is the
//!   attempt's Unix seconds.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Prefix of a secret's text form.
pub const SECRET_PREFIX: &str = "whsec_";
/// Header names of the scheme.
pub const ID_HEADER: &str = "webhook-id";
/// See [`ID_HEADER`].
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// See [`ID_HEADER`].
pub const SIGNATURE_HEADER: &str = "webhook-signature";
/// Receivers refuse timestamps further than this from their clock (seconds).
pub const TOLERANCE_SECS: i64 = 300;

/// Key bytes of a new secret.
const NEW_KEY_BYTES: usize = 32;
/// Shortest and longest key accepted from text (the specification suggests 24-64 bytes).
const KEY_BYTES: std::ops::RangeInclusive<usize> = 16..=64;

/// A signing secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A secret's text that is not `whsec_` + base64 of 16 to 64 bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a signing secret is \"whsec_\" followed by the base64 of 16 to 64 bytes")]
pub struct BadSecret;

impl Secret {
    /// A new random secret.
    pub fn generate() -> Secret {
        let mut key = vec![0u8; NEW_KEY_BYTES];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
        Secret { key }
    }

    /// Reads `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Secret, BadSecret> {
        let encoded = text.strip_prefix(SECRET_PREFIX).ok_or(BadSecret)?;
        let key = BASE64.decode(encoded).map_err(|_| BadSecret)?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(BadSecret);
        }
        Ok(Secret { key })
    }

    /// `whsec_<base64>`: what the customer is shown once and what is stored.
    pub fn expose(&self) -> String {
        format!("{SECRET_PREFIX}{}", BASE64.encode(&self.key))
    }

    /// `v1,<base64 signature>` of one message attempt.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }
}

/// The `webhook-signature` header: one signature per secret in force, space-separated.
pub fn signature_header(secrets: &[&Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// vendor-protocols.md section 10, checked against the Python reference library.
    #[test]
    fn the_specification_test_vector() {
        let secret = Secret::parse("whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYX").unwrap();
        let body = br#"{"type":"call.ended","timestamp":"2024-12-06T15:46:40Z","data":{"id":"00000000-0000-4000-8000-000000000001","status":"completed"}}"#;
        assert_eq!(
            secret.sign("msg_call_0001", 1_733_500_000, body),
            "v1,WXhjtfsUfX+ZqFuuIFDqYHERjtM60OMnH8t/127q6S8="
        );
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_are_refused() {
        let secret = Secret::generate();
        let text = secret.expose();
        assert!(text.starts_with("whsec_"));
        assert_eq!(Secret::parse(&text).unwrap(), secret);
        assert_ne!(Secret::generate(), secret);
        for bad in [
            "",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYX",
            "whsec_",
            "whsec_not base64!",
            "whsec_AAEC",
        ] {
            assert_eq!(Secret::parse(bad), Err(BadSecret), "{bad:?}");
        }
        assert_eq!(format!("{secret:?}"), "Secret(..)");
    }

    #[test]
    fn a_rotation_signs_with_both_secrets() {
        let (old, new) = (Secret::generate(), Secret::generate());
        let header = signature_header(&[&new, &old], "msg_1", 1_800_000_000, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(
            parts,
            [
                new.sign("msg_1", 1_800_000_000, b"{}"),
                old.sign("msg_1", 1_800_000_000, b"{}")
            ]
        );
    }
}
