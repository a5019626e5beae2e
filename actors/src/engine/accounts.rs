//! Accounts through the engine: every read and write of users, sessions, API keys, plans and
//! billing/CRM events runs on the query pool, bounded by the engine timeout. Secrets arrive
//! hashed (the HTTP layer generates tokens and hashes passwords); the time comes from the
//! engine's clock.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{clamp_limit, Engine, EngineError};
use crate::accounts::{
    ApiKeyInfo, BillingEvent, CrmContactFacts, CrmEvent, CrmLink, CrmLinkJob, EventsStored,
    KeyTier, NewApiKey, NewRefreshToken, OrgAccount, OrgPatch, Principal, Role, Rotation, User,
    UserActor, UserChange, UserUpdate,
};
use crate::catalog;
use crate::machine::OrganizationId;
use crate::ports::accounts::AccountStore;
use crate::ports::PageRequest;

/// Longest API key name.
pub const MAX_KEY_NAME_LEN: usize = 100;

impl Engine {
    fn accounts(&self) -> Result<Arc<dyn AccountStore>, EngineError> {
        self.inner
            .shared
            .ports
            .accounts
            .clone()
            .ok_or_else(|| EngineError::Unavailable("accounts are not kept on this server".into()))
    }

    /// Runs `f` against the account store on the query pool.
    async fn accounts_query<T, F, Fut>(&self, f: F) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn AccountStore>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, crate::ports::StoreError>> + Send + 'static,
    {
        let store = self.accounts()?;
        self.query(move |_| async move { Ok(f(store).await?) })
            .await
    }

    /// The engine's current time (microsecond precision).
    pub fn clock_now(&self) -> DateTime<Utc> {
        self.now()
    }

    /// A fresh id from the engine's id port.
    pub fn next_id(&self) -> Uuid {
        self.inner.shared.ports.ids.next_id()
    }

    // ---------------------------------------------------------------- organization

    /// The caller's organization account.
    pub async fn organization_account(
        &self,
        org: OrganizationId,
    ) -> Result<OrgAccount, EngineError> {
        self.accounts_query(move |a| async move { a.organization(org).await })
            .await?
            .ok_or(EngineError::NotFound {
                what: "organization",
            })
    }

    /// Renames the organization or links/unlinks its HubSpot portal.
    pub async fn update_organization(
        &self,
        org: OrganizationId,
        mut patch: OrgPatch,
    ) -> Result<OrgAccount, EngineError> {
        if let Some(name) = patch.name.take() {
            patch.name = Some(catalog::validate_name("name", &name)?);
        }
        if let Some(Some(portal)) = patch.hubspot_portal_id {
            if portal <= 0 {
                return Err(EngineError::invalid(
                    "hubspot_portal_id",
                    "must be a positive HubSpot portal (hub) id",
                ));
            }
        }
        match self
            .accounts_query(move |a| async move { a.update_organization(org, &patch).await })
            .await?
        {
            Ok(Some(account)) => Ok(account),
            Ok(None) => Err(EngineError::NotFound {
                what: "organization",
            }),
            Err(conflict) => Err(EngineError::Conflict(conflict)),
        }
    }

    // ---------------------------------------------------------------- users and sessions

    /// Stores a new user (`password_hash` already argon2id). A taken email is a conflict.
    pub async fn create_user(&self, user: User) -> Result<User, EngineError> {
        let stored = user.clone();
        let inserted = self
            .accounts_query(move |a| async move { a.insert_user(&stored).await })
            .await?;
        if inserted {
            Ok(user)
        } else {
            Err(EngineError::Conflict(
                "a user with this email already exists".into(),
            ))
        }
    }

    /// One page of the organization's users, oldest first. `page.limit` is clamped to
    /// 1..=100; `page.after` is the last user of the previous page.
    pub async fn list_users(
        &self,
        org: OrganizationId,
        mut page: PageRequest,
    ) -> Result<Vec<User>, EngineError> {
        page.limit = clamp_limit(page.limit);
        self.accounts_query(move |a| async move { a.list_users(org, &page).await })
            .await
    }

    /// The organization's user `id`.
    pub async fn user(&self, org: OrganizationId, id: Uuid) -> Result<User, EngineError> {
        self.accounts_query(move |a| async move { a.user(org, id).await })
            .await?
            .ok_or(EngineError::NotFound { what: "user" })
    }

    /// Changes a user's role or enables/disables them as `actor` (see [`UserUpdate`] for the
    /// rules, checked atomically by the store). Disabling ends every session at once.
    pub async fn update_user(
        &self,
        org: OrganizationId,
        id: Uuid,
        change: UserChange,
        actor: UserActor,
    ) -> Result<UserUpdate, EngineError> {
        let now = self.now();
        self.accounts_query(
            move |a| async move { a.update_user(org, id, &change, actor, now).await },
        )
        .await
    }

    /// Sets a user's password (`password_hash` already argon2id) and ends every other session
    /// of theirs; `false` when the user is gone or disabled.
    pub async fn change_password(
        &self,
        user: Uuid,
        password_hash: String,
        keep_session: Uuid,
    ) -> Result<bool, EngineError> {
        let now = self.now();
        self.accounts_query(move |a| async move {
            a.set_password(user, &password_hash, keep_session, now)
                .await
        })
        .await
    }

    /// The user who may sign in with `email` (lower-cased here), if any.
    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, EngineError> {
        let email = email.trim().to_lowercase();
        self.accounts_query(move |a| async move { a.user_by_email(&email).await })
            .await
    }

    /// Stores the first refresh token of a new session.
    pub async fn start_session(&self, token: NewRefreshToken) -> Result<(), EngineError> {
        self.accounts_query(move |a| async move { a.insert_refresh_token(&token).await })
            .await
    }

    /// Rotates a refresh token (see [`SessionStore::rotate_refresh_token`]).
    ///
    /// [`SessionStore::rotate_refresh_token`]: crate::ports::accounts::SessionStore::rotate_refresh_token
    pub async fn rotate_session(
        &self,
        presented_hash: String,
        next: NewRefreshToken,
    ) -> Result<Rotation, EngineError> {
        let now = self.now();
        self.accounts_query(move |a| async move {
            a.rotate_refresh_token(&presented_hash, &next, now).await
        })
        .await
    }

    /// Logs a session out (revokes its refresh-token family); the user and session when the
    /// token was known.
    pub async fn end_session(
        &self,
        token_hash: String,
    ) -> Result<Option<(Uuid, Uuid)>, EngineError> {
        let now = self.now();
        self.accounts_query(move |a| async move { a.revoke_refresh_token(&token_hash, now).await })
            .await
    }

    /// Logs every session of a user out; how many were live.
    pub async fn end_all_sessions(&self, user: Uuid) -> Result<u64, EngineError> {
        let now = self.now();
        self.accounts_query(move |a| async move { a.revoke_user_sessions(user, now).await })
            .await
    }

    /// The principal behind a verified access token, when its user and session are live.
    pub async fn user_principal(
        &self,
        user: Uuid,
        session: Uuid,
    ) -> Result<Option<Principal>, EngineError> {
        let now = self.now();
        self.accounts_query(move |a| async move { a.user_principal(user, session, now).await })
            .await
    }

    // ---------------------------------------------------------------- API keys

    /// The principal behind an API key (SHA-256 hex), recording its use.
    pub async fn key_principal(&self, key_hash: String) -> Result<Option<Principal>, EngineError> {
        let now = self.now();
        self.accounts_query(move |a| async move { a.key_principal(&key_hash, now).await })
            .await
    }

    /// Creates an API key for the caller's organization. The key itself is generated (and
    /// shown once) by the caller; only its hash and prefix are stored. A key can never be given
    /// more rights than its creator has.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_api_key(
        &self,
        creator: &Principal,
        name: &str,
        role: Role,
        tier: KeyTier,
        key_hash: String,
        prefix: String,
    ) -> Result<ApiKeyInfo, EngineError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > MAX_KEY_NAME_LEN {
            return Err(EngineError::invalid(
                "name",
                format!("must be 1-{MAX_KEY_NAME_LEN} characters"),
            ));
        }
        if role > creator.role {
            return Err(EngineError::invalid(
                "role",
                format!(
                    "a {} cannot create a key with role {role}",
                    creator.role.as_str()
                ),
            ));
        }
        let info = ApiKeyInfo {
            id: self.next_id(),
            organization_id: creator.org,
            name: name.to_owned(),
            prefix,
            role,
            tier,
            created_at: self.now(),
            last_used_at: None,
            revoked_at: None,
            created_by: match creator.subject {
                crate::accounts::Subject::User { user, .. } => Some(user),
                crate::accounts::Subject::ApiKey(_) => None,
            },
        };
        let key = NewApiKey {
            info: info.clone(),
            key_hash,
        };
        self.accounts_query(move |a| async move { a.insert_api_key(&key).await })
            .await?;
        Ok(info)
    }

    /// One page of the organization's API keys, newest first. `page.limit` is clamped to
    /// 1..=100.
    pub async fn list_api_keys(
        &self,
        org: OrganizationId,
        mut page: PageRequest,
    ) -> Result<Vec<ApiKeyInfo>, EngineError> {
        page.limit = clamp_limit(page.limit);
        self.accounts_query(move |a| async move { a.list_api_keys(org, &page).await })
            .await
    }

    /// One of the organization's API keys (revoked or not).
    pub async fn api_key(&self, org: OrganizationId, id: Uuid) -> Result<ApiKeyInfo, EngineError> {
        self.accounts_query(move |a| async move { a.api_key(org, id).await })
            .await?
            .ok_or(EngineError::NotFound { what: "api key" })
    }

    /// Revokes one of the organization's keys.
    pub async fn revoke_api_key(
        &self,
        org: OrganizationId,
        id: Uuid,
    ) -> Result<ApiKeyInfo, EngineError> {
        let now = self.now();
        self.accounts_query(move |a| async move { a.revoke_api_key(org, id, now).await })
            .await?
            .ok_or(EngineError::NotFound { what: "api key" })
    }

    /// Live calls of the organization (for the plan's concurrent-call limit).
    pub async fn live_call_count(&self, org: OrganizationId) -> Result<u64, EngineError> {
        self.accounts_query(move |a| async move { a.live_calls(org).await })
            .await
    }

    // ---------------------------------------------------------------- vendor facts

    /// Stores and applies a Stripe event; `false` when it was a duplicate.
    pub async fn record_billing_event(&self, event: BillingEvent) -> Result<bool, EngineError> {
        let now = self.now();
        self.accounts_query(move |a| async move { a.record_billing_event(&event, now).await })
            .await
    }

    /// Stores and applies a batch of HubSpot events.
    pub async fn record_crm_events(
        &self,
        events: Vec<CrmEvent>,
        queue_links: bool,
    ) -> Result<EventsStored, EngineError> {
        let now = self.now();
        self.accounts_query(
            move |a| async move { a.record_crm_events(&events, queue_links, now).await },
        )
        .await
    }

    /// Claims due CRM lookups (see [`CrmStore::claim_crm_links`]).
    ///
    /// [`CrmStore::claim_crm_links`]: crate::ports::accounts::CrmStore::claim_crm_links
    pub async fn claim_crm_links(
        &self,
        lease: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<CrmLinkJob>, EngineError> {
        let now = self.now();
        self.accounts_query(move |a| async move { a.claim_crm_links(now, lease, limit).await })
            .await
    }

    /// A CRM lookup failed: due again after `backoff`.
    pub async fn retry_crm_link(
        &self,
        job: &CrmLinkJob,
        backoff: std::time::Duration,
        error: String,
    ) -> Result<(), EngineError> {
        let at = self.now() + chrono::Duration::from_std(backoff).unwrap_or(chrono::Duration::MAX);
        let job = job.clone();
        self.accounts_query(move |a| async move { a.retry_crm_link(&job, at, &error).await })
            .await
    }

    /// A CRM lookup is resolved: off the queue.
    pub async fn finish_crm_link(&self, job: &CrmLinkJob) -> Result<(), EngineError> {
        let job = job.clone();
        self.accounts_query(move |a| async move { a.finish_crm_link(&job).await })
            .await
    }

    /// Links a HubSpot contact (as the CRM reports it) to the matching customer.
    pub async fn link_crm_contact(
        &self,
        portal_id: i64,
        contact: CrmContactFacts,
    ) -> Result<CrmLink, EngineError> {
        let now = self.now();
        self.accounts_query(
            move |a| async move { a.link_crm_contact(portal_id, &contact, now).await },
        )
        .await
    }
}
