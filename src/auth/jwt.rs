//! Access tokens: compact JWS (JWT) signed with HMAC-SHA256 (`HS256`, a shared secret) or
//! Ed25519 (`EdDSA`, a key file; other services can verify with the public keys published at
//! `/.well-known/jwks.json`).
//!
//! Encoding, decoding and the issuer/audience checks are the `jsonwebtoken` crate's; the
//! signatures are computed by the [`CryptoProvider`] below on our `hmac` and `ed25519-dalek`
//! (Ed25519 verified strictly), which knows HS256 and EdDSA only, so RSA and ECDSA code is not
//! even built.
//!
//! The algorithm is fixed server-side, per key: a token whose header names anything but
//! `HS256` or `EdDSA` (`none`, `RS256`, ...) is refused before any signature work, and the
//! algorithm must be the one of the key its `kid` names, so no algorithm confusion is possible
//! (an Ed25519 public key is never used as an HMAC secret). Signing keys carry an id (`kid` in
//! the header), derived from the key: the first key signs, every key in the ring verifies, so
//! rotating the key, or moving from a secret to a key file, does not log anyone out (drop the
//! old key once its tokens have expired). Issuer, audience, expiry and not-before are checked,
//! and `typ` must be `access` (a refresh token, which is opaque anyway, or any other token
//! cannot pass).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::signature::{Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

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

/// Why a token is refused (all 401 for the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts of JSON.
    #[error("malformed token")]
    Malformed,
    /// The header names an algorithm other than HS256 or EdDSA, or not the one of its key.
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

/// One key of the ring: an HMAC secret (`HS256`) or an Ed25519 key (`EdDSA`; with its private
/// half it can sign, without it only verify).
#[derive(Clone)]
pub struct Key {
    kid: String,
    alg: Algorithm,
    /// `None`: an Ed25519 public key, which only verifies.
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    /// The Ed25519 public key (published in the JWK Set); `None` for an HMAC secret.
    public: Option<[u8; 32]>,
}

impl Key {
    /// An HMAC-SHA256 secret (at least 32 bytes) under the given id.
    pub fn hmac(kid: impl Into<String>, secret: Vec<u8>) -> anyhow::Result<Key> {
        let kid = kid.into();
        anyhow::ensure!(!kid.is_empty(), "a signing key needs an id");
        anyhow::ensure!(
            secret.len() >= 32,
            "signing key {kid} is shorter than 32 bytes"
        );
        install_provider();
        Ok(Key {
            kid,
            alg: Algorithm::HS256,
            signing: Some(EncodingKey::from_secret(&secret)),
            verifying: DecodingKey::from_secret(&secret),
            public: None,
        })
    }

    /// An HMAC-SHA256 secret whose id is derived from it (rotation needs no id bookkeeping).
    pub fn hmac_secret(secret: &str) -> anyhow::Result<Key> {
        Key::hmac(
            crate::auth::key_id(secret.as_bytes()),
            secret.as_bytes().to_vec(),
        )
    }

    /// An Ed25519 key from PEM: a PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`, as
    /// `openssl genpkey -algorithm ed25519` writes) signs and verifies; a public key
    /// (`-----BEGIN PUBLIC KEY-----`) only verifies. The id is derived from the public key.
    pub fn ed25519_pem(pem: &str) -> anyhow::Result<Key> {
        let pem = pem.trim();
        let (verifying, signing) = if pem.starts_with("-----BEGIN PRIVATE KEY-----") {
            let signing = SigningKey::from_pkcs8_pem(pem)
                .map_err(|e| anyhow::anyhow!("not an Ed25519 PKCS#8 private key ({e})"))?;
            let der = signing
                .to_pkcs8_der()
                .map_err(|e| anyhow::anyhow!("re-encoding the Ed25519 key ({e})"))?;
            (
                signing.verifying_key(),
                Some(EncodingKey::from_ed_der(der.as_bytes())),
            )
        } else if pem.starts_with("-----BEGIN PUBLIC KEY-----") {
            let verifying = VerifyingKey::from_public_key_pem(pem)
                .map_err(|e| anyhow::anyhow!("not an Ed25519 public key ({e})"))?;
            (verifying, None)
        } else {
            anyhow::bail!(
                "expected a PEM Ed25519 key (-----BEGIN PRIVATE KEY----- or -----BEGIN PUBLIC KEY-----)"
            );
        };
        anyhow::ensure!(!verifying.is_weak(), "the Ed25519 public key is weak");
        install_provider();
        Ok(Key {
            kid: hex::encode(&Sha256::digest(verifying.as_bytes())[..6]),
            alg: Algorithm::EdDSA,
            signing,
            // The raw public key, as a JWK's `x` gives it (what the verifier below reads).
            verifying: DecodingKey::from_ed_der(verifying.as_bytes()),
            public: Some(verifying.to_bytes()),
        })
    }

    /// The key id (`kid`).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWS algorithm of this key: `HS256` or `EdDSA`.
    pub fn alg(&self) -> &'static str {
        match self.alg {
            Algorithm::EdDSA => "EdDSA",
            _ => "HS256",
        }
    }

    /// Whether this key can sign (an HMAC secret or an Ed25519 private key).
    pub fn can_sign(&self) -> bool {
        self.signing.is_some()
    }

    #[cfg(test)]
    fn verifying_bytes(&self) -> &[u8] {
        self.public.as_ref().expect("an Ed25519 key")
    }

    /// The raw signature of `input`, as the token's third part holds it (base64url-decoded).
    #[cfg(test)]
    fn signature(&self, input: &[u8]) -> Vec<u8> {
        let key = self.signing.as_ref().expect("a key that can sign");
        let sig = jsonwebtoken::crypto::sign(input, key, self.alg).expect("our keys sign");
        URL_SAFE_NO_PAD.decode(sig).expect("base64url")
    }

    #[cfg(test)]
    fn check(&self, input: &[u8], given: &[u8]) -> bool {
        let given = URL_SAFE_NO_PAD.encode(given);
        jsonwebtoken::crypto::verify(&given, input, &self.verifying, self.alg).unwrap_or(false)
    }
}

/// The signing keys: the first signs, all verify.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<Key>,
    issuer: String,
    audience: String,
    /// What `jsonwebtoken` checks besides the signature, per algorithm: issuer and audience.
    hs256: Validation,
    eddsa: Validation,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        f.debug_struct("KeyRing")
            .field(
                "kids",
                &self
                    .keys
                    .iter()
                    .map(|k| format!("{} ({})", k.kid, k.alg()))
                    .collect::<Vec<_>>(),
            )
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl KeyRing {
    /// `keys`: newest first; the first must be able to sign; ids must differ.
    pub fn new(
        keys: Vec<Key>,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> anyhow::Result<KeyRing> {
        let Some(first) = keys.first() else {
            anyhow::bail!("at least one signing key is needed");
        };
        anyhow::ensure!(
            first.can_sign(),
            "the signing key {} is a public key: it can only verify",
            first.kid
        );
        for (i, k) in keys.iter().enumerate() {
            anyhow::ensure!(
                keys[..i].iter().all(|o| o.kid != k.kid),
                "signing key {} is listed twice",
                k.kid
            );
        }
        let (issuer, audience) = (issuer.into(), audience.into());
        let validation = |alg| {
            let mut v = Validation::new(alg);
            // Expiry and not-before are checked in `verify`, against the caller's clock (the
            // engine's, which simulations control), not the system clock the crate reads.
            v.validate_exp = false;
            v.validate_nbf = false;
            v.required_spec_claims.clear();
            v.set_issuer(&[&issuer]);
            v.set_audience(&[&audience]);
            v
        };
        Ok(KeyRing {
            hs256: validation(Algorithm::HS256),
            eddsa: validation(Algorithm::EdDSA),
            keys,
            issuer,
            audience,
        })
    }

    /// The key that signs new tokens.
    pub fn signing_key(&self) -> &Key {
        &self.keys[0]
    }

    /// Signs claims (their `iss`, `aud` and `typ` are set here).
    pub fn sign(&self, mut claims: Claims) -> String {
        claims.iss.clone_from(&self.issuer);
        claims.aud.clone_from(&self.audience);
        claims.typ = "access".into();
        let key = &self.keys[0];
        let mut header = Header::new(key.alg);
        header.kid = Some(key.kid.clone());
        let signing = key
            .signing
            .as_ref()
            .expect("the ring's first key can sign (checked in KeyRing::new)");
        jsonwebtoken::encode(&header, &claims, signing).expect("our own keys and claims encode")
    }

    /// Verifies a token at `now` (Unix seconds) and returns its claims.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| unreadable_header(token))?;
        if header.alg != Algorithm::HS256 && header.alg != Algorithm::EdDSA {
            return Err(TokenError::Algorithm);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.iter().find(|k| k.kid == kid))
            .ok_or(TokenError::UnknownKey)?;
        // The key decides the algorithm, never the header.
        if header.alg != key.alg {
            return Err(TokenError::Algorithm);
        }
        let validation = match key.alg {
            Algorithm::EdDSA => &self.eddsa,
            _ => &self.hs256,
        };
        let claims = jsonwebtoken::decode::<Claims>(token, &key.verifying, validation)
            .map_err(|e| refusal(e.kind()))?
            .claims;
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

    /// The ring's public keys as a JWK Set (RFC 7517, OKP keys of RFC 8037): every Ed25519
    /// key, signing or verify-only, so other services can check our tokens. HMAC secrets are
    /// never published.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .keys
            .iter()
            .filter_map(|k| {
                k.public.map(|x| {
                    serde_json::json!({
                        "kty": "OKP",
                        "crv": "Ed25519",
                        "x": URL_SAFE_NO_PAD.encode(x),
                        "kid": k.kid,
                        "alg": "EdDSA",
                        "use": "sig",
                    })
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

/// Why a token whose header `jsonwebtoken` cannot read is refused: the crate reads an
/// algorithm it does not know (`none`) as a malformed header, but for the client that is an
/// algorithm refusal like `RS256`.
fn unreadable_header(token: &str) -> TokenError {
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return TokenError::Malformed;
    };
    let names_another_alg = URL_SAFE_NO_PAD
        .decode(head)
        .ok()
        .and_then(|h| serde_json::from_slice::<serde_json::Value>(&h).ok())
        .is_some_and(|h| {
            h["alg"]
                .as_str()
                .is_some_and(|alg| alg != "HS256" && alg != "EdDSA")
        });
    if names_another_alg {
        TokenError::Algorithm
    } else {
        TokenError::Malformed
    }
}

/// Our refusal for what `jsonwebtoken` found once the key is chosen.
fn refusal(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => TokenError::WrongParty,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => TokenError::Algorithm,
        // Bad base64 or JSON in the claims or signature, claims of another shape.
        _ => TokenError::Malformed,
    }
}

/// The signatures `jsonwebtoken` computes and checks, on our own crypto crates: HS256 and
/// EdDSA only (anything else is refused as an invalid algorithm), Ed25519 checked with
/// `verify_strict` (no small-order or non-canonical points).
static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    // JWK thumbprints and RSA/EC key extraction are never used.
    jwk_utils: JwkUtils::new_unimplemented(),
};

/// Makes [`PROVIDER`] the process's `jsonwebtoken` provider; called before any key exists,
/// so before any token is signed or checked. This module is the crate's only user of
/// `jsonwebtoken`, so nothing else installs one first.
fn install_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if PROVIDER.install_default().is_err() {
            tracing::warn!("another jsonwebtoken crypto provider was installed first");
        }
    });
}

fn signer(alg: &Algorithm, key: &EncodingKey) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    match (alg, key.family()) {
        (Algorithm::HS256, AlgorithmFamily::Hmac) => Ok(Box::new(Hs256::new(key.inner())?)),
        (Algorithm::EdDSA, AlgorithmFamily::Ed) => Ok(Box::new(EdDsaSigner(
            SigningKey::from_pkcs8_der(key.inner()).map_err(|_| ErrorKind::InvalidEddsaKey)?,
        ))),
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

fn verifier(
    alg: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    match (alg, key.family()) {
        (Algorithm::HS256, AlgorithmFamily::Hmac) => Ok(Box::new(Hs256::new(key.as_bytes())?)),
        (Algorithm::EdDSA, AlgorithmFamily::Ed) => {
            let raw: &[u8; 32] = key
                .as_bytes()
                .try_into()
                .map_err(|_| ErrorKind::InvalidEddsaKey)?;
            Ok(Box::new(EdDsaVerifier(
                VerifyingKey::from_bytes(raw).map_err(|_| ErrorKind::InvalidEddsaKey)?,
            )))
        }
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

/// HMAC-SHA256 keyed with a secret: signs, and verifies in constant time.
struct Hs256(Hmac<Sha256>);

impl Hs256 {
    fn new(secret: &[u8]) -> jsonwebtoken::errors::Result<Hs256> {
        Ok(Hs256(
            Hmac::new_from_slice(secret).map_err(|_| ErrorKind::InvalidKeyFormat)?,
        ))
    }
}

impl Signer<Vec<u8>> for Hs256 {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, jsonwebtoken::signature::Error> {
        Ok(self
            .0
            .clone()
            .chain_update(msg)
            .finalize()
            .into_bytes()
            .to_vec())
    }
}

impl Verifier<Vec<u8>> for Hs256 {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), jsonwebtoken::signature::Error> {
        self.0
            .clone()
            .chain_update(msg)
            .verify_slice(sig)
            .map_err(|_| jsonwebtoken::signature::Error::new())
    }
}

impl JwtSigner for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl JwtVerifier for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

struct EdDsaSigner(SigningKey);

impl Signer<Vec<u8>> for EdDsaSigner {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, jsonwebtoken::signature::Error> {
        Ok(self.0.sign(msg).to_bytes().to_vec())
    }
}

impl JwtSigner for EdDsaSigner {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

struct EdDsaVerifier(VerifyingKey);

impl Verifier<Vec<u8>> for EdDsaVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), jsonwebtoken::signature::Error> {
        let sig = ed25519_dalek::Signature::from_slice(sig)?;
        self.0.verify_strict(msg, &sig)
    }
}

impl JwtVerifier for EdDsaVerifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_800_000_000;

    fn ring(keys: &[(&str, u8)]) -> KeyRing {
        KeyRing::new(
            keys.iter()
                .map(|(kid, b)| Key::hmac(*kid, vec![*b; 32]).unwrap())
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

    /// HMAC-SHA256 of `input` keyed with `secret` (at least 32 bytes).
    fn mac(secret: &[u8], input: &[u8]) -> Vec<u8> {
        Key::hmac("forger", secret.to_vec())
            .unwrap()
            .signature(input)
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
        assert!(Key::hmac("k", vec![0; 16]).is_err());
        assert!(KeyRing::new(vec![], "i", "a").is_err());
        let shown = format!("{r:?}");
        assert!(shown.contains("k1") && !shown.contains("[1, 1"), "{shown}");
    }

    /// RFC 8037 appendix A: the Ed25519 key (RFC 8032 test 1) and the A.4 JWS made with it.
    const A4_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
    const A4_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    const A4_INPUT: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
    const A4_SIGNATURE: &str =
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

    /// PEM as `openssl genpkey -algorithm ed25519` writes it (RFC 8410 PKCS#8 v1), built by hand
    /// from the DER layout so the parser is checked against the format, not against itself.
    fn private_pem(seed: &[u8]) -> String {
        let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
        der.extend_from_slice(seed);
        pem("PRIVATE KEY", &der)
    }

    fn public_pem(key: &[u8]) -> String {
        let mut der = hex::decode("302a300506032b6570032100").unwrap();
        der.extend_from_slice(key);
        pem("PUBLIC KEY", &der)
    }

    fn pem(label: &str, der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
    }

    fn ed_key(seed: u8) -> Key {
        Key::ed25519_pem(&private_pem(&[seed; 32])).unwrap()
    }

    fn ring_of(keys: Vec<Key>) -> KeyRing {
        KeyRing::new(keys, "iace", "iace-api").unwrap()
    }

    fn header_of(token: &str) -> serde_json::Value {
        let head = token.split('.').next().unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(head).unwrap()).unwrap()
    }

    #[test]
    fn ed25519_keys_from_pem_reproduce_the_rfc_8037_vector() {
        let d = URL_SAFE_NO_PAD.decode(A4_D).unwrap();
        let key = Key::ed25519_pem(&private_pem(&d)).unwrap();
        assert_eq!(key.alg(), "EdDSA");
        assert!(key.can_sign());
        assert_eq!(
            URL_SAFE_NO_PAD.encode(key.signature(A4_INPUT.as_bytes())),
            A4_SIGNATURE
        );
        let public = Key::ed25519_pem(&public_pem(&URL_SAFE_NO_PAD.decode(A4_X).unwrap())).unwrap();
        assert!(!public.can_sign());
        assert_eq!(public.kid(), key.kid(), "the id is the public key's");
        let sig = URL_SAFE_NO_PAD.decode(A4_SIGNATURE).unwrap();
        assert!(public.check(A4_INPUT.as_bytes(), &sig));
        assert!(!public.check(b"eyJhbGciOiJFZERTQSJ9.e30", &sig));
        assert!(!public.check(A4_INPUT.as_bytes(), &sig[..63]));
        let jwks = ring_of(vec![key, Key::hmac("h", vec![1; 32]).unwrap()]).jwks();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
        assert_eq!(jwks["keys"][0]["x"], A4_X);
        assert_eq!(jwks["keys"][0]["kty"], "OKP");
        assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
        assert_eq!(jwks["keys"][0]["alg"], "EdDSA");
    }

    #[test]
    fn ed25519_signing_verifies_and_moving_from_a_secret_logs_no_one_out() {
        let hs = ring(&[("k1", 1)]);
        let old = hs.sign(claims());
        let ed = ed_key(7);
        let kid = ed.kid().to_owned();
        let both = ring_of(vec![ed.clone(), Key::hmac("k1", vec![1; 32]).unwrap()]);
        let token = both.sign(claims());
        assert_eq!(header_of(&token)["alg"], "EdDSA");
        assert_eq!(header_of(&token)["kid"], kid.as_str());
        assert_eq!(both.verify(&token, NOW).unwrap().sub, Uuid::from_u128(1));
        assert!(both.verify(&old, NOW).is_ok(), "the secret still verifies");
        // Another service holding only the public key verifies the token.
        let public = Key::ed25519_pem(&public_pem(
            &URL_SAFE_NO_PAD
                .decode(both.jwks()["keys"][0]["x"].as_str().unwrap())
                .unwrap(),
        ))
        .unwrap();
        let verifier = ring_of(vec![ed_key(8), public]);
        assert!(verifier.verify(&token, NOW).is_ok());
        assert_eq!(hs.verify(&token, NOW), Err(TokenError::UnknownKey));
        // A public key cannot be the signing key; ids must differ; junk is refused.
        let public_only = Key::ed25519_pem(&public_pem(ed.verifying_bytes())).unwrap();
        assert!(KeyRing::new(vec![public_only], "i", "a").is_err());
        assert!(KeyRing::new(vec![ed_key(7), ed_key(7)], "i", "a").is_err());
        for junk in [
            "",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
            &public_pem(&[0; 32]),
        ] {
            assert!(Key::ed25519_pem(junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn algorithm_confusion_between_the_two_kinds_of_key_is_refused() {
        let ed = ed_key(7);
        let ed_kid = ed.kid().to_owned();
        let r = ring_of(vec![ed.clone(), Key::hmac("k1", vec![1; 32]).unwrap()]);
        let mut good = serde_json::to_value(claims()).unwrap();
        good["iss"] = "iace".into();
        good["aud"] = "iace-api".into();
        good["typ"] = "access".into();
        // HS256 under the Ed25519 key's id, keyed with its public bytes (the classic attack).
        let confused = serde_json::json!({"alg": "HS256", "kid": ed_kid});
        assert_eq!(
            r.verify(&forge(&confused, &good, Some(ed.verifying_bytes())), NOW),
            Err(TokenError::Algorithm)
        );
        // EdDSA under the HMAC key's id.
        let token = r.sign(claims());
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[0] = URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","kid":"k1"}"#);
        assert_eq!(r.verify(&parts.join("."), NOW), Err(TokenError::Algorithm));
        // Signed by another Ed25519 key under our id.
        let other = ring_of(vec![ed_key(9)]);
        let theirs = other.sign(claims());
        let mut parts: Vec<String> = theirs.split('.').map(str::to_owned).collect();
        parts[0] = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"EdDSA","kid":"{ed_kid}"}}"#));
        let head = parts[0].clone();
        let input = format!("{head}.{}", parts[1]);
        parts[2] = URL_SAFE_NO_PAD.encode(ed_key(9).signature(input.as_bytes()));
        assert_eq!(r.verify(&parts.join("."), NOW), Err(TokenError::Signature));
        // Claims changed after signing.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut owner = good.clone();
        owner["role"] = "owner".into();
        parts[1] = URL_SAFE_NO_PAD.encode(owner.to_string());
        assert_eq!(r.verify(&parts.join("."), NOW), Err(TokenError::Signature));
        // An empty or short signature.
        let cut = &token[..token.rfind('.').unwrap() + 1];
        assert_eq!(r.verify(cut, NOW), Err(TokenError::Signature));
    }

    proptest! {
        #[test]
        fn random_strings_never_verify(token in ".{0,300}") {
            prop_assert!(ring(&[("k1", 1)]).verify(&token, NOW).is_err());
        }
    }
}
