//! Accounts and security (DESIGN.md section 8): access tokens ([`jwt`]), passwords (argon2id),
//! opaque secrets (refresh tokens and API keys, stored only as SHA-256), the comparison every
//! signature check uses, and the [`Security`] settings the HTTP layer enforces.

pub mod jwt;
pub mod pool;

use std::net::IpAddr;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Version};
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
    Argon2::new(Algorithm::Argon2id, Version::V0x13, pool::default_params())
}

/// Hashes a password into an argon2id PHC string with memory of its own (CPU-heavy: the
/// server goes through the bounded pool instead, [`hash_password_off_thread`]).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
}

/// [`hash_password`] on the process's password pool ([`pool::global`]): argon2id is
/// deliberately slow and memory-hard, so every hash and check shares that bounded pool.
pub async fn hash_password_off_thread(password: String) -> anyhow::Result<String> {
    pool::global().hash(password).await?
}

/// [`verify_password`] on the process's password pool; `None` (unknown or disabled account)
/// costs what a wrong password does and never matches.
pub async fn verify_password_off_thread(
    phc: Option<String>,
    password: String,
) -> Result<bool, pool::Overloaded> {
    pool::global().verify(phc, password).await
}

/// Checks a password against a PHC string (the parameters come from the string). A malformed
/// string never matches. Memory of its own, CPU-heavy: the server goes through the bounded
/// pool instead ([`verify_password_off_thread`]).
pub fn verify_password(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|parsed| {
        argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// Longest email accepted, in characters as sent (surrounding whitespace included).
pub const MAX_EMAIL_CHARS: usize = 254;

/// A user's email as stored: trimmed, lower-case, `local@domain.tld`; at most
/// [`MAX_EMAIL_CHARS`] characters as sent.
pub fn normalize_email(raw: &str) -> Result<String, String> {
    let email = raw.trim().to_lowercase();
    // The rule of every email of the API (customers' too): `local@domain`, a dot inside the
    // domain, no whitespace or control character.
    let well_formed = raw.chars().count() <= MAX_EMAIL_CHARS
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
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
    pub hubspot_crm: Option<std::sync::Arc<crate::clients::hubspot::crm::HubSpotCrm>>,
    /// Wakes the CRM linker (see [`crate::crm_link`]) when a webhook queued a contact.
    pub crm_wake: std::sync::Arc<tokio::sync::Notify>,
    /// How long an unpaid plan stays in force.
    pub billing_grace: chrono::Duration,
    /// Stripe's timestamp tolerance (s).
    pub stripe_tolerance_secs: i64,
    /// Sign-in budgets beyond the per-account one (checked with [`Security::limiter`]).
    pub signin: SigninLimits,
    /// `iace_signin_refused_total{reason}`.
    pub signin_refused: prometheus::IntCounterVec,
}

/// Budgets every sign-in is checked against before any password work, besides the account's
/// own (10 per 5 minutes): per client address and for the whole deployment.
#[derive(Debug, Clone)]
pub struct SigninLimits {
    /// Sign-ins per client address per window; 0: no per-address budget.
    pub per_address: u32,
    /// Sign-ins per window across the deployment (every node); 0: no global budget.
    pub global: u32,
    /// The window of both.
    pub window: std::time::Duration,
    /// Peers whose `X-Forwarded-For` names the client (reverse proxies, load balancers).
    pub trusted_proxies: Vec<IpRange>,
}

impl Default for SigninLimits {
    /// No per-address or global budget, no trusted proxy.
    fn default() -> Self {
        SigninLimits {
            per_address: 0,
            global: 0,
            window: std::time::Duration::from_secs(60),
            trusted_proxies: Vec::new(),
        }
    }
}

impl SigninLimits {
    /// The client's address: the peer's, or, when the peer is a trusted proxy, the right-most
    /// `X-Forwarded-For` entry that is not itself a trusted proxy (entries left of it could
    /// be written by anyone). `None` when the peer is unknown.
    pub fn client_address(&self, peer: Option<IpAddr>, forwarded_for: &[&str]) -> Option<IpAddr> {
        let mut client = canonical(peer?);
        if !self.trusted(client) {
            return Some(client);
        }
        let hops = forwarded_for
            .iter()
            .flat_map(|h| h.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in hops.into_iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                // Garbage in the chain: the last good address is the client.
                break;
            };
            client = canonical(ip);
            if !self.trusted(client) {
                break;
            }
        }
        Some(client)
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|r| r.contains(ip))
    }
}

/// IPv4-mapped IPv6 as IPv4, so one client has one key.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

/// The budget key of a client address: IPv4 as is, IPv6 by its /64 (one subscriber's
/// allocation: an attacker holding a /64 must not get 2^64 budgets).
pub fn address_key(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// An address or a CIDR range (`10.0.0.0/8`, `fd00::/8`, `192.0.2.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    net: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<IpRange, String> {
        let s = s.trim();
        let (addr, prefix) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let net = canonical(
            addr.parse::<IpAddr>()
                .map_err(|_| format!("`{s}` is not an IP address or CIDR range"))?,
        );
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?,
        };
        Ok(IpRange { net, prefix })
    }
}

/// `iace_signin_refused_total{reason}`: sign-ins refused before any password work, by why
/// (`account`, `address`, `global`: a budget; `overloaded`: the password pool was full).
pub fn signin_refused_counter() -> prometheus::IntCounterVec {
    prometheus::IntCounterVec::new(
        prometheus::Opts::new(
            "iace_signin_refused_total",
            "Sign-ins refused before their password was checked, by reason (account, address, global: a budget; overloaded: the password pool was full)",
        ),
        &["reason"],
    )
    .expect("static metric definition")
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
            signin: SigninLimits::default(),
            signin_refused: signin_refused_counter(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_follow_the_one_rule_of_the_api() {
        assert_eq!(
            normalize_email("  Ana@Example.COM ").as_deref(),
            Ok("ana@example.com")
        );
        for bad in [
            "ana",
            "@example.com",
            "ana@example",
            "ana@.example.com",
            "ana@example.com.",
            "an a@example.com",
            "ana\u{1}@example.com",
            "ana@exa\u{9b}mple.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
        // The length is what was sent: the description's `maxLength` counts the same way.
        let long = format!("{}@example.com", "a".repeat(242));
        assert_eq!(long.chars().count(), 254);
        assert!(normalize_email(&long).is_ok());
        for bad in [format!(" {long}"), format!("é{long}")] {
            assert!(normalize_email(&bad).is_err(), "{bad:?}");
        }
    }

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
    }

    #[test]
    fn client_addresses_trust_forwarded_for_only_from_trusted_proxies() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut limits = SigninLimits::default();
        // No trusted proxy: the header is ignored, whatever it says.
        assert_eq!(
            limits.client_address(Some(ip("203.0.113.9")), &["198.51.100.1"]),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(limits.client_address(None, &["198.51.100.1"]), None);
        limits.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
        // From a proxy: the right-most entry that is not a proxy; forged entries left of it
        // are ignored.
        assert_eq!(
            limits.client_address(Some(ip("10.1.2.3")), &["6.6.6.6, 198.51.100.1", "10.9.9.9"]),
            Some(ip("198.51.100.1"))
        );
        assert_eq!(
            limits.client_address(Some(ip("::1")), &["198.51.100.7:5555"]),
            Some(ip("198.51.100.7"))
        );
        // A peer that is not a proxy is the client even with the header.
        assert_eq!(
            limits.client_address(Some(ip("192.0.2.1")), &["198.51.100.1"]),
            Some(ip("192.0.2.1"))
        );
        // A proxy without the header, or with garbage, is the client itself.
        assert_eq!(
            limits.client_address(Some(ip("10.0.0.1")), &[]),
            Some(ip("10.0.0.1"))
        );
        assert_eq!(
            limits.client_address(Some(ip("10.0.0.1")), &["not an ip"]),
            Some(ip("10.0.0.1"))
        );
        assert!("10.0.0.0/33".parse::<IpRange>().is_err());
        assert!("example.com".parse::<IpRange>().is_err());
        assert!("0.0.0.0/0"
            .parse::<IpRange>()
            .unwrap()
            .contains(ip("8.8.8.8")));
        // One key per IPv4 address, one per IPv6 /64; IPv4-mapped IPv6 is IPv4.
        assert_eq!(address_key(ip("::ffff:192.0.2.1")), "192.0.2.1");
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            address_key(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            address_key(ip("2001:db8:1:2::1")),
            address_key(ip("2001:db8:1:3::1"))
        );
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
