//! Accounts and security (DESIGN.md section 8): access tokens ([`jwt`]), passwords (argon2id),
//! opaque secrets (refresh tokens and API keys, stored only as SHA-256), the comparison every
//! signature check uses, and the [`Security`] settings the HTTP layer enforces.

pub mod jwt;

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore as _;
use sha2::{Digest, Sha256};

use crate::ratelimit::RateLimiter;

/// Equality whose time does not depend on where the inputs differ (signatures, MACs, token
/// hashes); only a length difference returns early.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Access tokens live this long.
pub const ACCESS_TTL_SECS: i64 = 30 * 60;
/// Refresh tokens live this long.
pub const REFRESH_TTL_SECS: i64 = 7 * 24 * 3600;
/// Shortest accepted password.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest accepted password (argon2 hashes anything, but unbounded input is a DoS lever).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// argon2id with the OWASP-recommended cost (19 MiB, 2 passes, 1 lane).
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("static argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password into an argon2id PHC string (CPU-heavy: call from a blocking thread).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
}

/// [`hash_password`] on a blocking thread (argon2id is deliberately slow).
pub async fn hash_password_off_thread(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || hash_password(&password)).await?
}

/// Checks a password against a PHC string (the parameters come from the string). A malformed
/// string never matches. CPU-heavy: call from a blocking thread.
pub fn verify_password(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|parsed| {
        argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A hash no password matches, verified when the email is unknown so that a login with an
/// unknown email costs as much as one with a wrong password (no user enumeration by timing).
pub fn dummy_password_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut random = [0u8; 24];
        rand::rng().fill_bytes(&mut random);
        hash_password(&hex::encode(random)).unwrap_or_default()
    })
}

/// A user's email as stored: trimmed, lower-case, `local@domain.tld`, at most 254 bytes.
pub fn normalize_email(email: &str) -> Result<String, String> {
    let email = email.trim().to_lowercase();
    let well_formed = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        })
        && !email.chars().any(char::is_whitespace);
    if well_formed {
        Ok(email)
    } else {
        Err(format!("`{email}` is not an email address"))
    }
}

/// Checks a password's shape (length only: no composition rules, per NIST SP 800-63B).
pub fn validate_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!("must be at least {MIN_PASSWORD_CHARS} characters"));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!("must be at most {MAX_PASSWORD_BYTES} bytes"));
    }
    Ok(())
}

/// A new opaque secret: `<prefix>` + 64 hex characters (256 random bits).
fn opaque(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// A new API key (`iace_...`).
pub fn generate_api_key() -> String {
    opaque("iace_")
}

/// A new refresh token (`iacert_...`).
pub fn generate_refresh_token() -> String {
    opaque("iacert_")
}

/// A new one-time password for `iace user create` (24 characters).
pub fn generate_password() -> String {
    let mut bytes = [0u8; 18];
    rand::rng().fill_bytes(&mut bytes);
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
}

/// SHA-256 hex: the only form in which API keys and refresh tokens are stored.
pub fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The display prefix of an API key (enough to tell keys apart, far too little to guess).
pub fn key_prefix(key: &str) -> String {
    key.chars().take(13).collect()
}

/// The key id of a signing secret: derived from it, so rotation needs no id bookkeeping.
pub fn key_id(secret: &[u8]) -> String {
    hex::encode(&Sha256::digest(secret)[..6])
}

/// What the HTTP layer enforces beyond the engine.
#[derive(Clone)]
pub struct Security {
    /// Access-token keys; `None`: user sign-in is off (no `IACE_JWT_SECRET`).
    pub keys: Option<jwt::KeyRing>,
    /// Plan limits (requests per minute, concurrent calls); `None`: not enforced (tests and
    /// benchmarks of other concerns).
    pub limiter: Option<RateLimiter>,
    /// `STRIPE_WEBHOOK_SECRET`; `None`: the Stripe webhook answers 404.
    pub stripe_secret: Option<String>,
    /// `HUBSPOT_CLIENT_SECRET`; `None`: the HubSpot webhook answers 404.
    pub hubspot_secret: Option<String>,
    /// The exact URL HubSpot calls (v2/v3 signatures cover it); `None`: rebuilt from the
    /// request's `Host` (and `X-Forwarded-Proto`, default https).
    pub hubspot_url: Option<String>,
    /// HubSpot CRM v3 (`HUBSPOT_ACCESS_TOKEN`): links contacts no customer is linked to yet.
    pub hubspot_crm: Option<std::sync::Arc<crate::vendor::hubspot::crm::HubSpotCrm>>,
    /// Wakes the CRM linker (see [`crate::crm_link`]) when a webhook queued a contact.
    pub crm_wake: std::sync::Arc<tokio::sync::Notify>,
    /// How long an unpaid plan stays in force.
    pub billing_grace: chrono::Duration,
    /// Stripe's timestamp tolerance (s).
    pub stripe_tolerance_secs: i64,
}

impl Security {
    /// Nothing configured: API keys only, no limits, no billing/CRM webhooks.
    pub fn minimal() -> Security {
        Security {
            keys: None,
            limiter: None,
            stripe_secret: None,
            hubspot_secret: None,
            hubspot_url: None,
            hubspot_crm: None,
            crm_wake: Default::default(),
            billing_grace: chrono::Duration::days(7),
            stripe_tolerance_secs: 300,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let phc = hash_password("correct horse battery staple").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_password(&phc, "correct horse battery staple"));
        assert!(!verify_password(&phc, "correct horse battery stapl"));
        assert!(!verify_password(&phc, ""));
        // Same password, fresh salt.
        assert_ne!(phc, hash_password("correct horse battery staple").unwrap());
        assert!(!verify_password("not a phc string", "x"));
        assert!(!verify_password(dummy_password_hash(), ""));
    }

    #[test]
    fn password_rules_are_length_only() {
        assert!(validate_password("short").is_err());
        assert!(validate_password("twelve chars").is_ok());
        assert!(validate_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }

    #[test]
    fn secrets_are_random_and_stored_hashed() {
        let a = generate_refresh_token();
        let b = generate_refresh_token();
        assert_ne!(a, b);
        assert!(a.starts_with("iacert_") && a.len() == 7 + 64);
        assert_eq!(sha256_hex(&a).len(), 64);
        assert_ne!(sha256_hex(&a), sha256_hex(&b));
        let key = generate_api_key();
        assert_eq!(key_prefix(&key).len(), 13);
        assert_eq!(key_id(b"0123456789abcdef0123456789abcdef").len(), 12);
        assert_eq!(generate_password().len(), 24);
    }
}
