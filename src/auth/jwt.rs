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
#[path = "jwt_tests.rs"]
mod tests;
