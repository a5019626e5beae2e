//! The administrative CLI commands: `iace migrate`, `iace org create`, `iace user create`.

use anyhow::Context;
use chrono::Utc;
use iace_actors::accounts::{Role, User};
use iace_actors::catalog::Organization;
use iace_actors::ports::accounts::{OrganizationStore, UserStore};
use iace_actors::ports::QueryStore;
use tracing::info;
use uuid::Uuid;

use crate::store::PgStore;

/// `iace migrate`.
pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
    let pool = crate::store::connect(database_url)
        .await
        .context("connecting to Postgres (DATABASE_URL)")?;
    crate::store::migrate(&pool)
        .await
        .context("applying migrations")?;
    info!("migrations applied");
    Ok(())
}

/// The store of an administrative command (migrations applied).
async fn admin_store(database_url: &str) -> anyhow::Result<PgStore> {
    let pool = crate::store::connect(database_url)
        .await
        .context("connecting to Postgres (DATABASE_URL)")?;
    crate::store::migrate(&pool)
        .await
        .context("applying migrations")?;
    Ok(PgStore::new(pool))
}

/// `iace org create <name>`: returns the organization and its API key.
pub async fn create_org(database_url: &str, name: &str) -> anyhow::Result<(Organization, String)> {
    let store = admin_store(database_url).await?;
    let name = iace_actors::catalog::validate_name("name", name)?;
    let org = Organization {
        id: Uuid::new_v4(),
        name,
        created_at: chrono::SubsecRound::trunc_subsecs(Utc::now(), 6),
    };
    let key = crate::auth::generate_api_key();
    store
        .create_organization(
            &org,
            Uuid::new_v4(),
            &crate::auth::sha256_hex(&key),
            &crate::auth::key_prefix(&key),
        )
        .await
        .map_err(|e| anyhow::anyhow!("creating the organization: {e}"))?;
    Ok((org, key))
}

/// `iace user create`: stores a user of `org` with `password`, or with a generated one-time
/// password (returned) when `password` is `None`.
pub async fn create_user(
    database_url: &str,
    org: Uuid,
    email: &str,
    role: &str,
    password: Option<String>,
) -> anyhow::Result<(User, Option<String>)> {
    let role = Role::parse(role).with_context(|| {
        format!("--role: `{role}` is not one of owner, admin, member, read_only")
    })?;
    let email = crate::auth::normalize_email(email).map_err(|e| anyhow::anyhow!("--email: {e}"))?;
    let (password, generated) = match password {
        Some(p) => {
            crate::auth::validate_password(&p).map_err(|e| anyhow::anyhow!("password: {e}"))?;
            (p, false)
        }
        None => (crate::auth::generate_password(), true),
    };
    let store = admin_store(database_url).await?;
    let found = OrganizationStore::organization(&store, org)
        .await
        .map_err(|e| anyhow::anyhow!("reading the organization: {e}"))?;
    anyhow::ensure!(found.is_some(), "--org: no organization {org}");
    let hashed = crate::auth::hash_password_off_thread(password.clone()).await?;
    let user = User {
        id: Uuid::new_v4(),
        organization_id: org,
        email,
        password_hash: hashed,
        role,
        created_at: chrono::SubsecRound::trunc_subsecs(Utc::now(), 6),
        disabled_at: None,
    };
    let inserted = store
        .insert_user(&user)
        .await
        .map_err(|e| anyhow::anyhow!("storing the user: {e}"))?;
    anyhow::ensure!(inserted, "a user with email {} already exists", user.email);
    Ok((user, generated.then_some(password)))
}
