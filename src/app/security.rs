//! The HTTP layer's security settings built from the configuration: the access-token key
//! ring, sign-in limits, plan limits, the CRM client, webhook secrets and the CORS origins.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use iace_actors::breaker::Breakers;

use crate::auth::jwt::{Key, KeyRing};
use crate::auth::Security;
use crate::config::{FailModeArg, SecurityArgs};
use crate::ratelimit::{FailMode, RateLimiter};

/// every other configured key only verifies. `None`: neither is set, user sign-in is off.
fn signing_keys(args: &SecurityArgs) -> anyhow::Result<Option<KeyRing>> {
    fn pem_key(path: &std::path::Path, what: &str) -> anyhow::Result<Key> {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("{what}: cannot read {}", path.display()))?;
        Key::ed25519_pem(&pem).with_context(|| format!("{what}: {}", path.display()))
    }
    let current_secret = args.jwt_secret.as_deref().is_some_and(|s| !s.is_empty());
    if args.jwt_key_file.is_none() && !current_secret {
        anyhow::ensure!(
            args.jwt_previous_secrets.iter().all(|s| s.is_empty())
                && args.jwt_verify_key_files.is_empty(),
            "IACE_JWT_PREVIOUS_SECRETS / IACE_JWT_VERIFY_KEY_FILES need a current key: \
             IACE_JWT_SECRET or IACE_JWT_KEY_FILE"
        );
        return Ok(None);
    }
    let mut ring = Vec::new();
    if let Some(path) = &args.jwt_key_file {
        ring.push(pem_key(path, "IACE_JWT_KEY_FILE")?);
    }
    let secrets = args
        .jwt_secret
        .iter()
        .chain(&args.jwt_previous_secrets)
        .filter(|s| !s.is_empty());
    for secret in secrets {
        ring.push(Key::hmac_secret(secret).context("IACE_JWT_SECRET / IACE_JWT_PREVIOUS_SECRETS")?);
    }
    for path in &args.jwt_verify_key_files {
        ring.push(pem_key(path, "IACE_JWT_VERIFY_KEY_FILES")?);
    }
    let ring =
        KeyRing::new(ring, &args.jwt_issuer, &args.jwt_audience).context("access-token keys")?;
    tracing::info!(
        kid = ring.signing_key().kid(),
        alg = ring.signing_key().alg(),
        "access tokens signed"
    );
    Ok(Some(ring))
}

/// The HTTP layer's security settings from the command line / environment.
pub fn security(
    args: &SecurityArgs,
    redis: &fred::clients::Client,
    registry: &prometheus::Registry,
    breakers: &Breakers,
) -> anyhow::Result<Security> {
    let non_empty = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
    let keys = signing_keys(args)?;
    let limiter = if args.plan_limits {
        let fail = match args.rate_limit_fail {
            FailModeArg::Open => FailMode::Open,
            FailModeArg::Closed => FailMode::Closed,
        };
        Some(RateLimiter::new(
            redis.clone(),
            args.rate_limit_prefix.clone(),
            fail,
            registry,
        )?)
    } else {
        None
    };
    let hubspot_crm = match non_empty(&args.hubspot_access_token) {
        Some(token) => {
            use crate::clients::hubspot::crm::{CrmConfig, CrmMetrics, HubSpotCrm, VENDOR};
            let mut config = CrmConfig::new(token);
            config.api_base.clone_from(&args.hubspot_api_base);
            config.breaker = breakers.get(VENDOR).cloned();
            let crm = HubSpotCrm::new(config)
                .context("HUBSPOT_ACCESS_TOKEN")?
                .with_metrics(CrmMetrics::new(registry)?);
            Some(Arc::new(crm))
        }
        None => None,
    };
    let signin = crate::auth::SigninLimits {
        per_address: args.signin_address_limit,
        global: args.signin_global_limit,
        window: Duration::from_secs(args.signin_window_secs),
        trusted_proxies: args
            .trusted_proxies
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                p.parse()
                    .map_err(|e| anyhow::anyhow!("IACE_TRUSTED_PROXIES: {e}"))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let signin_refused = crate::auth::signin_refused_counter();
    registry.register(Box::new(signin_refused.clone()))?;
    // Every password hash and check of this process goes through this pool.
    let pool = crate::auth::pool::configure(args.password_pool());
    tracing::info!(
        workers = pool.config().workers,
        queue = pool.config().queue,
        "password pool"
    );
    Ok(Security {
        keys,
        limiter,
        signin,
        signin_refused,
        hubspot_crm,
        crm_wake: Default::default(),
        stripe_secret: non_empty(&args.stripe_webhook_secret),
        hubspot_secret: non_empty(&args.hubspot_client_secret),
        hubspot_url: non_empty(&args.hubspot_webhook_url),
        billing_grace: chrono::Duration::days(i64::from(args.billing_grace_days)),
        stripe_tolerance_secs: 300,
    })
}

/// `IACE_CORS_ORIGINS`: each an origin (`scheme://host[:port]`, no path), or start-up fails.
pub fn cors_origins(origins: &[String]) -> anyhow::Result<Vec<axum::http::HeaderValue>> {
    origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .map(|o| {
            let uri: axum::http::Uri = o
                .parse()
                .with_context(|| format!("IACE_CORS_ORIGINS: `{o}` is not an origin"))?;
            let ok = matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.host().is_some()
                && uri
                    .path_and_query()
                    .is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty())
                && !o.ends_with('/');
            anyhow::ensure!(
                ok,
                "IACE_CORS_ORIGINS: `{o}` is not an origin (scheme://host[:port], no path)"
            );
            axum::http::HeaderValue::from_str(o).context("IACE_CORS_ORIGINS")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-signing-secret-of-at-least-32-bytes!";

    fn pem_file(contents: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("iace-key-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn ed25519_pem(seed: u8) -> String {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
            .to_pkcs8_pem(Default::default())
            .unwrap()
            .to_string()
    }

    fn error_of(args: &SecurityArgs) -> String {
        format!("{:#}", signing_keys(args).unwrap_err())
    }

    #[test]
    fn the_key_file_signs_and_every_other_key_only_verifies() {
        assert!(signing_keys(&SecurityArgs::default()).unwrap().is_none());
        let key = pem_file(&ed25519_pem(3));
        let old = pem_file(&ed25519_pem(4));
        let args = SecurityArgs {
            jwt_key_file: Some(key.clone()),
            jwt_verify_key_files: vec![old.clone()],
            jwt_secret: Some(SECRET.into()),
            ..SecurityArgs::default()
        };
        let ring = signing_keys(&args).unwrap().unwrap();
        assert_eq!(ring.signing_key().alg(), "EdDSA");
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 2);
        let secret_only = SecurityArgs {
            jwt_secret: Some(SECRET.into()),
            ..SecurityArgs::default()
        };
        let ring = signing_keys(&secret_only).unwrap().unwrap();
        assert_eq!(ring.signing_key().alg(), "HS256");
        for path in [key, old] {
            let _ = std::fs::remove_file(path);
        }
    }

    #[test]
    fn bad_key_settings_stop_the_start_with_the_setting_named() {
        let missing = SecurityArgs {
            jwt_key_file: Some("/nonexistent/iace-jwt.pem".into()),
            ..SecurityArgs::default()
        };
        let e = error_of(&missing);
        assert!(
            e.contains("IACE_JWT_KEY_FILE") && e.contains("cannot read"),
            "{e}"
        );

        let not_a_key = pem_file("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        let e = error_of(&SecurityArgs {
            jwt_key_file: Some(not_a_key.clone()),
            ..SecurityArgs::default()
        });
        assert!(
            e.contains("IACE_JWT_KEY_FILE") && e.contains("PEM Ed25519"),
            "{e}"
        );

        let e = error_of(&SecurityArgs {
            jwt_secret: Some(SECRET.into()),
            jwt_verify_key_files: vec![not_a_key.clone()],
            ..SecurityArgs::default()
        });
        assert!(e.contains("IACE_JWT_VERIFY_KEY_FILES"), "{e}");

        let e = error_of(&SecurityArgs {
            jwt_secret: Some("short".into()),
            ..SecurityArgs::default()
        });
        assert!(e.contains("shorter than 32 bytes"), "{e}");

        let e = error_of(&SecurityArgs {
            jwt_previous_secrets: vec![SECRET.into()],
            ..SecurityArgs::default()
        });
        assert!(e.contains("need a current key"), "{e}");
        let _ = std::fs::remove_file(not_a_key);
    }
}
