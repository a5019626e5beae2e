//! Access tokens: compact JWS (JWT) signed with HMAC-SHA256.
//!
//! The algorithm is fixed server-side: a token whose header names anything but `HS256`
//! (`none`, `RS256`, ...) is refused before any signature work, so no algorithm confusion is
//! possible. Signing keys carry an id (`kid` in the header): the newest key signs, every key in
//! the ring verifies, so rotating the key does not log anyone out (drop the old key once its
//! tokens have expired). Issuer, audience, expiry and not-before are checked, and `typ` must
//! be `access` (a refresh token, which is opaque anyway, or any other token cannot pass).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use crate::auth::constant_time_eq;

/// Clock skew allowed on `exp` and `nbf`, seconds.
pub const LEEWAY_SECS: i64 = 30;

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// The user.
    pub sub: Uuid,
    /// Their organization.
    pub org: Uuid,
    /// Their role (`owner`, `admin`, `member`, `read_only`) when the token was issued; the
    /// server authorizes with the role stored now.
    pub role: String,
    /// The login session (refresh-token family): logging it out ends this token too.
    pub sid: Uuid,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Not before, Unix seconds.
    pub nbf: i64,
    /// Expires, Unix seconds.
    pub exp: i64,
    /// Token id.
    pub jti: Uuid,
    /// Always `access`.
    pub typ: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
}

/// Why a token is refused (all 401 for the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts of JSON.
    #[error("malformed token")]
    Malformed,
    /// The header names an algorithm other than HS256.
    #[error("unsupported algorithm")]
    Algorithm,
    /// No key with the token's id.
    #[error("unknown signing key")]
    UnknownKey,
    /// The signature does not match.
    #[error("bad signature")]
    Signature,
    /// Expired.
    #[error("token expired")]
    Expired,
    /// Not valid yet.
    #[error("token not valid yet")]
    NotYetValid,
    /// Issued by someone else or for someone else.
    #[error("wrong issuer or audience")]
    WrongParty,
    /// Not an access token.
    #[error("not an access token")]
    WrongType,
}

/// The signing keys: the first signs, all verify.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<(String, Vec<u8>)>,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        f.debug_struct("KeyRing")
            .field("kids", &self.keys.iter().map(|k| &k.0).collect::<Vec<_>>())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl KeyRing {
    /// `keys`: (key id, secret), newest first; secrets of at least 32 bytes.
    pub fn new(
        keys: Vec<(String, Vec<u8>)>,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> anyhow::Result<KeyRing> {
        anyhow::ensure!(!keys.is_empty(), "at least one signing key is needed");
        for (kid, secret) in &keys {
            anyhow::ensure!(!kid.is_empty(), "a signing key needs an id");
            anyhow::ensure!(
                secret.len() >= 32,
                "signing key {kid} is shorter than 32 bytes"
            );
        }
        Ok(KeyRing {
            keys,
            issuer: issuer.into(),
            audience: audience.into(),
        })
    }

    /// Signs claims (their `iss`, `aud` and `typ` are set here).
    pub fn sign(&self, mut claims: Claims) -> String {
        claims.iss.clone_from(&self.issuer);
        claims.aud.clone_from(&self.audience);
        claims.typ = "access".into();
        let (kid, secret) = &self.keys[0];
        let header = Header {
            alg: "HS256".into(),
            typ: Some("JWT".into()),
            kid: Some(kid.clone()),
        };
        let head = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("serialisable"));
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("serialisable"));
        let input = format!("{head}.{body}");
        let sig = URL_SAFE_NO_PAD.encode(mac(secret, input.as_bytes()));
        format!("{input}.{sig}")
    }

    /// Verifies a token at `now` (Unix seconds) and returns its claims.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(head), Some(body), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Header = URL_SAFE_NO_PAD
            .decode(head)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if header.alg != "HS256" {
            return Err(TokenError::Algorithm);
        }
        let secret = match &header.kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|(k, _)| k == kid)
                .map(|(_, s)| s)
                .ok_or(TokenError::UnknownKey)?,
            None => return Err(TokenError::UnknownKey),
        };
        let given = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        let input_len = head.len() + 1 + body.len();
        let expected = mac(secret, &token.as_bytes()[..input_len]);
        if !constant_time_eq(&expected, &given) {
            return Err(TokenError::Signature);
        }
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(body)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.iss != self.issuer || claims.aud != self.audience {
            return Err(TokenError::WrongParty);
        }
        if claims.typ != "access" {
            return Err(TokenError::WrongType);
        }
        if now > claims.exp.saturating_add(LEEWAY_SECS) {
            return Err(TokenError::Expired);
        }
        if now < claims.nbf.saturating_sub(LEEWAY_SECS) {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

fn mac(secret: &[u8], input: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    m.update(input);
    m.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_800_000_000;

    fn ring(keys: &[(&str, u8)]) -> KeyRing {
        KeyRing::new(
            keys.iter()
                .map(|(kid, b)| ((*kid).to_owned(), vec![*b; 32]))
                .collect(),
            "iace",
            "iace-api",
        )
        .unwrap()
    }

    fn claims() -> Claims {
        Claims {
            iss: String::new(),
            aud: String::new(),
            sub: Uuid::from_u128(1),
            org: Uuid::from_u128(2),
            role: "member".into(),
            sid: Uuid::from_u128(5),
            iat: NOW,
            nbf: NOW,
            exp: NOW + 1800,
            jti: Uuid::from_u128(3),
            typ: String::new(),
        }
    }

    /// A token with an arbitrary header and claims, signed (or not) as given.
    fn forge(
        header: &serde_json::Value,
        claims: &serde_json::Value,
        secret: Option<&[u8]>,
    ) -> String {
        let head = URL_SAFE_NO_PAD.encode(header.to_string());
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{head}.{body}");
        let sig = secret.map_or(String::new(), |s| {
            URL_SAFE_NO_PAD.encode(mac(s, input.as_bytes()))
        });
        format!("{input}.{sig}")
    }

    #[test]
    fn a_signed_token_verifies_within_its_lifetime_only() {
        let r = ring(&[("k1", 1)]);
        let token = r.sign(claims());
        let got = r.verify(&token, NOW + 10).unwrap();
        assert_eq!(
            (got.sub, got.org, got.role.as_str()),
            (Uuid::from_u128(1), Uuid::from_u128(2), "member")
        );
        assert_eq!(
            (got.iss.as_str(), got.aud.as_str(), got.typ.as_str()),
            ("iace", "iace-api", "access")
        );
        assert_eq!(r.verify(&token, NOW + 1800 + LEEWAY_SECS), Ok(got.clone()));
        assert_eq!(
            r.verify(&token, NOW + 1800 + LEEWAY_SECS + 1),
            Err(TokenError::Expired)
        );
        assert_eq!(
            r.verify(&token, NOW - LEEWAY_SECS - 1),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_until_the_old_key_is_dropped() {
        let old = ring(&[("k1", 1)]);
        let token = old.sign(claims());
        let rotated = ring(&[("k2", 2), ("k1", 1)]);
        assert!(rotated.verify(&token, NOW).is_ok());
        let new_token = rotated.sign(claims());
        let head: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(new_token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(head["kid"], "k2", "the newest key signs");
        assert!(rotated.verify(&new_token, NOW).is_ok());
        assert_eq!(old.verify(&new_token, NOW), Err(TokenError::UnknownKey));
        let dropped = ring(&[("k2", 2)]);
        assert_eq!(dropped.verify(&token, NOW), Err(TokenError::UnknownKey));
    }

    #[test]
    fn attacks_are_refused() {
        let r = ring(&[("k1", 1)]);
        let good = serde_json::to_value({
            let mut c = claims();
            c.iss = "iace".into();
            c.aud = "iace-api".into();
            c.typ = "access".into();
            c
        })
        .unwrap();
        let hs = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": "k1"});
        // alg none, with and without a signature part.
        for alg in ["none", "None", "NONE", "RS256", "HS512", "ES256"] {
            let h = serde_json::json!({"alg": alg, "kid": "k1"});
            assert_eq!(
                r.verify(&forge(&h, &good, None), NOW),
                Err(TokenError::Algorithm),
                "{alg}"
            );
            assert_eq!(
                r.verify(&forge(&h, &good, Some(&[1; 32])), NOW),
                Err(TokenError::Algorithm)
            );
        }
        // Signed with another key under our key id.
        assert_eq!(
            r.verify(&forge(&hs, &good, Some(&[9; 32])), NOW),
            Err(TokenError::Signature)
        );
        // No key id.
        let no_kid = serde_json::json!({"alg": "HS256"});
        assert_eq!(
            r.verify(&forge(&no_kid, &good, Some(&[1; 32])), NOW),
            Err(TokenError::UnknownKey)
        );
        // Claims changed after signing.
        let token = r.sign(claims());
        let mut parts: Vec<&str> = token.split('.').collect();
        let mut admin = good.clone();
        admin["role"] = "owner".into();
        let body = URL_SAFE_NO_PAD.encode(admin.to_string());
        parts[1] = &body;
        assert_eq!(r.verify(&parts.join("."), NOW), Err(TokenError::Signature));
        // Right key, wrong party or type.
        for (field, value, err) in [
            ("iss", "someone-else", TokenError::WrongParty),
            ("aud", "another-api", TokenError::WrongParty),
            ("typ", "refresh", TokenError::WrongType),
        ] {
            let mut c = good.clone();
            c[field] = value.into();
            assert_eq!(
                r.verify(&forge(&hs, &c, Some(&[1; 32])), NOW),
                Err(err),
                "{field}"
            );
        }
        // Not a JWT at all (an opaque refresh token, junk).
        for junk in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "rt_0123456789abcdef",
            "..",
            "e30.e30.",
        ] {
            assert!(r.verify(junk, NOW).is_err(), "{junk}");
        }
        assert!(KeyRing::new(vec![("k".into(), vec![0; 16])], "i", "a").is_err());
        assert!(KeyRing::new(vec![], "i", "a").is_err());
        let shown = format!("{r:?}");
        assert!(shown.contains("k1") && !shown.contains("[1, 1"), "{shown}");
    }

    proptest! {
        #[test]
        fn random_strings_never_verify(token in ".{0,300}") {
            prop_assert!(ring(&[("k1", 1)]).verify(&token, NOW).is_err());
        }
    }
}
