//! `Stripe-Signature` verification (vendor-protocols.md 6.1), over the raw body, before any
//! parsing: `t=<unix s>,v1=<hex>[,v1=<hex>...]`, HMAC-SHA256 keyed with the endpoint secret
//! (including its `whsec_` prefix) over `"{t}.{body}"`; any `v1` may match (secret rotation);
//! `v0` and unknown keys are ignored; constant-time comparison; a timestamp more than the
//! tolerance away from now (either side) is refused.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::constant_time_eq;

/// Why a delivery is refused. Every variant is a 4xx for the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StripeSignatureError {
    /// No `Stripe-Signature` header, or not ASCII.
    #[error("missing Stripe-Signature header")]
    Missing,
    /// No usable `t` or no `v1` in the header.
    #[error("malformed Stripe-Signature header: {0}")]
    Malformed(&'static str),
    /// The timestamp is outside the tolerance.
    #[error("timestamp outside the tolerance ({skew_secs} s away)")]
    Stale {
        /// How far from now, seconds.
        skew_secs: i64,
    },
    /// No `v1` matches.
    #[error("no v1 signature matches")]
    Mismatch,
}

/// Verifies a delivery. `header` is the raw `Stripe-Signature` value (`None`: absent);
/// `now_secs` the current Unix time; `tolerance_secs` the allowed distance of `t` from it.
pub fn verify(
    secret: &str,
    header: Option<&[u8]>,
    body: &[u8],
    now_secs: i64,
    tolerance_secs: i64,
) -> Result<(), StripeSignatureError> {
    let header = header
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or(StripeSignatureError::Missing)?;
    let mut timestamp: Option<&str> = None;
    let mut candidates: Vec<[u8; 32]> = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" => timestamp = Some(value),
            "v1" => {
                // A v1 that is not 64 hex digits can never match; skip it.
                let mut sig = [0u8; 32];
                if hex::decode_to_slice(value, &mut sig).is_ok() {
                    candidates.push(sig);
                }
            }
            _ => {}
        }
    }
    let t = timestamp.ok_or(StripeSignatureError::Malformed("no timestamp"))?;
    let t_secs: i64 = t
        .parse()
        .map_err(|_| StripeSignatureError::Malformed("timestamp is not an integer"))?;
    if candidates.is_empty() {
        return Err(StripeSignatureError::Malformed("no v1 signature"));
    }
    let skew = now_secs.saturating_sub(t_secs);
    if skew.unsigned_abs() > tolerance_secs.unsigned_abs() {
        return Err(StripeSignatureError::Stale { skew_secs: skew });
    }
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    // Check every candidate (no early exit on a match position).
    let mut matched = false;
    for sig in &candidates {
        matched |= constant_time_eq(&expected, sig);
    }
    if matched {
        Ok(())
    } else {
        Err(StripeSignatureError::Mismatch)
    }
}

/// A header for `body` signed with `secret` at `t` (tests, fakes and tooling).
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &str = "whsec_test_secret";
    const BODY: &[u8] = br#"{"id":"evt_test","object":"event"}"#;
    /// vendor-protocols.md 6.1.
    const VECTOR: &str =
        "t=1700000000,v1=8042376f6ca064adbe037642a718227dfd59047137eb49497a54c49eb0cfb724";

    #[test]
    fn the_documented_vector_verifies_and_signs() {
        assert_eq!(sign(SECRET, 1_700_000_000, BODY), VECTOR);
        assert_eq!(
            verify(SECRET, Some(VECTOR.as_bytes()), BODY, 1_700_000_000, 300),
            Ok(())
        );
    }

    #[test]
    fn rotation_extra_keys_tolerance_and_tampering() {
        // Several v1 (secret rotation), v0 and unknown keys ignored, any order.
        let other = sign("whsec_old", 1_700_000_000, BODY);
        let other_v1 = other.split_once("v1=").unwrap().1;
        let good_v1 = VECTOR.split_once("v1=").unwrap().1;
        let header = format!("v0=abc, v1={other_v1},x=1,t=1700000000, v1={good_v1}");
        assert_eq!(
            verify(SECRET, Some(header.as_bytes()), BODY, 1_700_000_100, 300),
            Ok(())
        );
        // Tolerance, both sides.
        assert_eq!(
            verify(SECRET, Some(VECTOR.as_bytes()), BODY, 1_700_000_301, 300),
            Err(StripeSignatureError::Stale { skew_secs: 301 })
        );
        assert_eq!(
            verify(SECRET, Some(VECTOR.as_bytes()), BODY, 1_699_999_699, 300),
            Err(StripeSignatureError::Stale { skew_secs: -301 })
        );
        // A changed byte, another secret, the secret without its prefix.
        let tampered = br#"{"id":"evt_test","object":"events"}"#;
        for (secret, body) in [
            (SECRET, &tampered[..]),
            ("whsec_other", BODY),
            ("test_secret", BODY),
        ] {
            assert_eq!(
                verify(secret, Some(VECTOR.as_bytes()), body, 1_700_000_000, 300),
                Err(StripeSignatureError::Mismatch)
            );
        }
        // Malformed headers.
        for (h, e) in [
            ("v1=8042", StripeSignatureError::Malformed("no timestamp")),
            (
                "t=abc,v1=00",
                StripeSignatureError::Malformed("timestamp is not an integer"),
            ),
            (
                "t=1700000000",
                StripeSignatureError::Malformed("no v1 signature"),
            ),
            (
                "t=1700000000,v1=xyz",
                StripeSignatureError::Malformed("no v1 signature"),
            ),
            (
                "t=1700000000,v0=8042376f6ca064adbe037642a718227dfd59047137eb49497a54c49eb0cfb724",
                StripeSignatureError::Malformed("no v1 signature"),
            ),
        ] {
            assert_eq!(
                verify(SECRET, Some(h.as_bytes()), BODY, 1_700_000_000, 300),
                Err(e),
                "{h}"
            );
        }
        assert_eq!(
            verify(SECRET, None, BODY, 0, 300),
            Err(StripeSignatureError::Missing)
        );
        assert_eq!(
            verify(SECRET, Some(&[0xff, 0xfe]), BODY, 0, 300),
            Err(StripeSignatureError::Missing)
        );
    }

    proptest! {
        /// Random headers and bodies never panic and never verify.
        #[test]
        fn random_input_never_panics_or_passes(
            header in proptest::collection::vec(any::<u8>(), 0..200),
            body in proptest::collection::vec(any::<u8>(), 0..200),
            now in any::<i64>(),
        ) {
            prop_assert!(verify(SECRET, Some(&header), &body, now, 300).is_err());
        }

        /// Well-formed but forged headers (right shape, random signature) never verify.
        #[test]
        fn forged_signatures_never_pass(sig in "[0-9a-f]{64}", t in 1_600_000_000i64..1_800_000_000) {
            let header = format!("t={t},v1={sig}");
            prop_assert_eq!(
                verify(SECRET, Some(header.as_bytes()), BODY, t, 300),
                Err(StripeSignatureError::Mismatch)
            );
        }
    }
}
