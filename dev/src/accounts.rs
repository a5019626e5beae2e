//! The dev organization and its owner, created once and kept in `.services/` (git-ignored) so
//! that restarts of the dev world reuse them.

use std::path::Path;

use anyhow::Context;
use iace_actors::engine::Engine;

/// The dev organization's key, kept in `.services/dev-org.json` so restarts reuse it.
pub(crate) async fn dev_api_key(database_url: &str, engine: &Engine) -> anyhow::Result<String> {
    let path = Path::new(".services/dev-org.json");
    if let Ok(raw) = std::fs::read_to_string(path) {
        if let Some(key) = serde_json::from_str::<serde_json::Value>(&raw)
            .ok()
            .and_then(|v| v["api_key"].as_str().map(str::to_owned))
        {
            if engine
                .key_principal(iace::auth::sha256_hex(&key))
                .await?
                .is_some()
            {
                return Ok(key);
            }
        }
    }
    let (org, key) = iace::app::create_org(database_url, "Dev organization").await?;
    let line = serde_json::json!({"organization_id": org.id, "api_key": key});
    std::fs::create_dir_all(".services")?;
    std::fs::write(path, line.to_string())?;
    Ok(key)
}

/// The dev organization's owner user (`dev@iace.local`), created once with a generated
/// password kept in `.services/dev-user.json` (git-ignored); prints how to sign in.
pub(crate) async fn dev_user(
    database_url: &str,
    base: &str,
    engine: &Engine,
    key: &str,
) -> anyhow::Result<()> {
    const EMAIL: &str = "dev@iace.local";
    let path = Path::new(".services/dev-user.json");
    let saved = std::fs::read_to_string(path)
        .ok()
        .and_then(|raw| serde_json::from_str::<serde_json::Value>(&raw).ok())
        .and_then(|v| v["password"].as_str().map(str::to_owned));
    let password = match (engine.user_by_email(EMAIL).await?, saved) {
        (Some(_), Some(password)) => password,
        (Some(_), None) => return Ok(()),
        (None, _) => {
            let org = engine
                .key_principal(iace::auth::sha256_hex(key))
                .await?
                .context("the dev API key does not authenticate")?
                .org;
            let (_, password) =
                iace::app::create_user(database_url, org, EMAIL, "owner", None).await?;
            let password = password.context("a generated password")?;
            std::fs::write(
                path,
                serde_json::json!({"email": EMAIL, "password": password}).to_string(),
            )?;
            password
        }
    };
    eprintln!("\n[dev] sign in as the organization's owner:");
    eprintln!(
        "  curl -s -H 'Content-Type: application/json' -d '{{\"email\":\"{EMAIL}\",\"password\":\"{password}\"}}' {base}/v1/auth/login"
    );
    Ok(())
}
