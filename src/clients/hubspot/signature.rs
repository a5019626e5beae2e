//! HubSpot request signatures (vendor-protocols.md 7.1-7.2), checked over the raw body before
//! any parsing, with constant-time comparison:
//! - v1: hex(SHA-256(secret + body)) in `X-HubSpot-Signature` (version header `v1`);
//! - v2: hex(SHA-256(secret + method + uri + body)) (version header `v2`);
//! - v3: base64(HMAC-SHA256(secret, method + uri + body + timestamp)) in
//!   `X-HubSpot-Signature-v3`, with `X-HubSpot-Request-Timestamp` (Unix ms) no older than
//!   5 minutes (and, stricter than the SDKs, no more than 5 minutes in the future). The URI has
//!   the documented percent-escapes decoded first.
//!
//! v3 is preferred when present: it is the only version that binds a timestamp (v1 and v2
//! deliveries can be replayed; the caller dedupes on event ids).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::auth::constant_time_eq;

/// The headers of a delivery that matter (raw values; `None`: absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct SignatureHeaders<'a> {
    /// `X-HubSpot-Signature` (v1/v2, hex).
    pub signature: Option<&'a [u8]>,
    /// `X-HubSpot-Signature-Version` (`v1`, `v2`).
    pub version: Option<&'a [u8]>,
    /// `X-HubSpot-Signature-v3` (base64).
    pub signature_v3: Option<&'a [u8]>,
    /// `X-HubSpot-Request-Timestamp` (Unix ms).
    pub timestamp: Option<&'a [u8]>,
}

/// Why a delivery is refused (a 4xx for the sender).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubSpotSignatureError {
    /// No signature header at all.
    #[error("missing HubSpot signature")]
    Missing,
    /// A header that cannot be read (not ASCII, bad version, bad timestamp, bad encoding).
    #[error("malformed HubSpot signature headers: {0}")]
    Malformed(&'static str),
    /// The v3 timestamp is more than 5 minutes away from now.
    #[error("request timestamp outside 5 minutes ({skew_ms} ms away)")]
    Stale {
        /// now - timestamp, ms.
        skew_ms: i64,
    },
    /// The signature does not match.
    #[error("signature mismatch")]
    Mismatch,
}

/// How far a v3 timestamp may be from now, ms.
pub const MAX_SKEW_MS: i64 = 300_000;

/// Verifies a delivery to `uri` (the full URL HubSpot called) with `method`.
pub fn verify(
    client_secret: &str,
    method: &str,
    uri: &str,
    body: &[u8],
    headers: SignatureHeaders<'_>,
    now_ms: i64,
) -> Result<(), HubSpotSignatureError> {
    if let Some(sig) = headers.signature_v3 {
        let sig = text(sig)?;
        let ts = headers
            .timestamp
            .ok_or(HubSpotSignatureError::Malformed("v3 without a timestamp"))?;
        let ts = text(ts)?;
        let ts_ms: i64 = ts
            .parse()
            .map_err(|_| HubSpotSignatureError::Malformed("timestamp is not an integer"))?;
        let skew = now_ms.saturating_sub(ts_ms);
        if skew.unsigned_abs() > MAX_SKEW_MS.unsigned_abs() {
            return Err(HubSpotSignatureError::Stale { skew_ms: skew });
        }
        let given = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .map_err(|_| HubSpotSignatureError::Malformed("v3 signature is not base64"))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(client_secret.as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(method.as_bytes());
        mac.update(decode_uri(uri).as_bytes());
        mac.update(body);
        mac.update(ts.as_bytes());
        let expected = mac.finalize().into_bytes();
        return if constant_time_eq(&expected, &given) {
            Ok(())
        } else {
            Err(HubSpotSignatureError::Mismatch)
        };
    }
    let sig = headers.signature.ok_or(HubSpotSignatureError::Missing)?;
    let sig = text(sig)?;
    let mut given = [0u8; 32];
    hex::decode_to_slice(sig, &mut given)
        .map_err(|_| HubSpotSignatureError::Malformed("signature is not 64 hex digits"))?;
    let version = headers.version.map(text).transpose()?.unwrap_or("v1");
    let mut hash = Sha256::new();
    hash.update(client_secret.as_bytes());
    match version {
        "v1" => {}
        "v2" => {
            hash.update(method.as_bytes());
            hash.update(uri.as_bytes());
        }
        _ => {
            return Err(HubSpotSignatureError::Malformed(
                "unknown signature version",
            ))
        }
    }
    hash.update(body);
    if constant_time_eq(&hash.finalize(), &given) {
        Ok(())
    } else {
        Err(HubSpotSignatureError::Mismatch)
    }
}

/// A header value as trimmed text.
fn text(v: &[u8]) -> Result<&str, HubSpotSignatureError> {
    std::str::from_utf8(v)
        .map(str::trim)
        .map_err(|_| HubSpotSignatureError::Malformed("a header is not text"))
}

/// The v3 URI rule: decode only the documented escapes, leave every other one encoded.
pub fn decode_uri(uri: &str) -> String {
    const DECODED: [(&str, char); 12] = [
        ("%3A", ':'),
        ("%2F", '/'),
        ("%3F", '?'),
        ("%40", '@'),
        ("%21", '!'),
        ("%24", '$'),
        ("%27", '\''),
        ("%28", '('),
        ("%29", ')'),
        ("%2A", '*'),
        ("%2C", ','),
        ("%3B", ';'),
    ];
    let mut out = String::with_capacity(uri.len());
    let mut rest = uri;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        match DECODED
            .iter()
            .find(|(esc, _)| tail.get(..3).is_some_and(|t| t.eq_ignore_ascii_case(esc)))
        {
            Some((_, c)) => {
                out.push(*c);
                rest = &tail[3..];
            }
            None => {
                out.push('%');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // The SDK test vectors (vendor-protocols.md 7.2).
    const SECRET: &str = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";
    const BODY: &[u8] = b"{'example_field':'example_value'}";
    const URI: &str = "https://www.example.com/webhook_uri";
    const V1: &str = "69fc6631a867edd4f9e9e627fc5c1148e3fbdd8b21837b6d2b8901c1fa57f750";
    const V2: &str = "4fe4e3a7d3cf09db53be39d0a58130e2aaba074ec123a9e355b876a689a1c383";
    const V3: &str = "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y=";
    const TS: &str = "1693657560000";
    const NOW: i64 = 1_693_657_560_000;

    fn legacy<'a>(sig: &'a str, version: &'a str) -> SignatureHeaders<'a> {
        SignatureHeaders {
            signature: Some(sig.as_bytes()),
            version: Some(version.as_bytes()),
            ..SignatureHeaders::default()
        }
    }

    fn v3<'a>(sig: &'a str, ts: &'a str) -> SignatureHeaders<'a> {
        SignatureHeaders {
            signature_v3: Some(sig.as_bytes()),
            timestamp: Some(ts.as_bytes()),
            ..SignatureHeaders::default()
        }
    }

    #[test]
    fn the_sdk_vectors_verify() {
        assert_eq!(
            verify(SECRET, "POST", URI, BODY, legacy(V1, "v1"), NOW),
            Ok(())
        );
        assert_eq!(
            verify(SECRET, "POST", URI, BODY, legacy(V2, "v2"), NOW),
            Ok(())
        );
        assert_eq!(verify(SECRET, "POST", URI, BODY, v3(V3, TS), NOW), Ok(()));
        // v1 without a version header is v1; uppercase hex reads the same.
        let bare = SignatureHeaders {
            signature: Some(V1.as_bytes()),
            ..SignatureHeaders::default()
        };
        assert_eq!(verify(SECRET, "POST", URI, BODY, bare, NOW), Ok(()));
        let upper = V2.to_uppercase();
        assert_eq!(
            verify(SECRET, "POST", URI, BODY, legacy(&upper, "v2"), NOW),
            Ok(())
        );
    }

    #[test]
    fn tampering_staleness_and_malformed_headers_are_refused() {
        let tampered = b"{'example_field':'example_valuE'}";
        assert_eq!(
            verify(SECRET, "POST", URI, tampered, v3(V3, TS), NOW),
            Err(HubSpotSignatureError::Mismatch)
        );
        assert_eq!(
            verify(SECRET, "GET", URI, BODY, legacy(V2, "v2"), NOW),
            Err(HubSpotSignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                SECRET,
                "POST",
                "https://www.example.com/other",
                BODY,
                v3(V3, TS),
                NOW
            ),
            Err(HubSpotSignatureError::Mismatch)
        );
        assert_eq!(
            verify("zzz", "POST", URI, BODY, legacy(V1, "v1"), NOW),
            Err(HubSpotSignatureError::Mismatch)
        );
        // v1 signature presented as v2 (a downgrade/confusion attempt).
        assert_eq!(
            verify(SECRET, "POST", URI, BODY, legacy(V1, "v2"), NOW),
            Err(HubSpotSignatureError::Mismatch)
        );
        // The 5-minute rule, both sides.
        assert_eq!(
            verify(SECRET, "POST", URI, BODY, v3(V3, TS), NOW + 300_001),
            Err(HubSpotSignatureError::Stale { skew_ms: 300_001 })
        );
        assert_eq!(
            verify(SECRET, "POST", URI, BODY, v3(V3, TS), NOW - 300_001),
            Err(HubSpotSignatureError::Stale { skew_ms: -300_001 })
        );
        assert_eq!(
            verify(SECRET, "POST", URI, BODY, v3(V3, TS), NOW + 300_000),
            Ok(())
        );
        for (h, why) in [
            (v3(V3, "soon"), "timestamp is not an integer"),
            (v3("%%%", TS), "v3 signature is not base64"),
            (legacy("abc", "v1"), "signature is not 64 hex digits"),
            (legacy(V1, "v9"), "unknown signature version"),
        ] {
            assert_eq!(
                verify(SECRET, "POST", URI, BODY, h, NOW),
                Err(HubSpotSignatureError::Malformed(why))
            );
        }
        let no_ts = SignatureHeaders {
            signature_v3: Some(V3.as_bytes()),
            ..SignatureHeaders::default()
        };
        assert_eq!(
            verify(SECRET, "POST", URI, BODY, no_ts, NOW),
            Err(HubSpotSignatureError::Malformed("v3 without a timestamp"))
        );
        assert_eq!(
            verify(SECRET, "POST", URI, BODY, SignatureHeaders::default(), NOW),
            Err(HubSpotSignatureError::Missing)
        );
    }

    #[test]
    fn only_the_documented_escapes_are_decoded() {
        assert_eq!(
            decode_uri(
                "https://x.io/a%3Ab%2Fc%3Fd%40e%21f%24g%27h%28i%29j%2Ak%2Cl%3Bm?q=%20%26%3D"
            ),
            "https://x.io/a:b/c?d@e!f$g'h(i)j*k,l;m?q=%20%26%3D"
        );
        assert_eq!(decode_uri("%3a%2f%"), ":/%");
        assert_eq!(decode_uri("100%"), "100%");
    }

    proptest! {
        /// Random headers and bodies never panic and never verify.
        #[test]
        fn random_input_never_panics_or_passes(
            sig in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..100)),
            version in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
            sig3 in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..100)),
            ts in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
            body in proptest::collection::vec(any::<u8>(), 0..200),
            uri in ".{0,60}",
            now in any::<i64>(),
        ) {
            let headers = SignatureHeaders {
                signature: sig.as_deref(),
                version: version.as_deref(),
                signature_v3: sig3.as_deref(),
                timestamp: ts.as_deref(),
            };
            prop_assert!(verify(SECRET, "POST", &uri, &body, headers, now).is_err());
        }
    }
}
