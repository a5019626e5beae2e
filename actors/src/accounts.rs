//! Accounts: users and their sessions, roles, API keys, plans, and the billing/CRM facts that
//! change them. Types and the [`AccountStore`] port; the engine runs every call to it on its
//! query pool (see `Engine::login_user` and friends).
//!
//! Secrets never reach this crate in the clear: passwords arrive as argon2id PHC strings,
//! refresh tokens and API keys as SHA-256 hex digests.

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::machine::OrganizationId;
use crate::ports::calls::StoreResult;
use crate::ports::catalog::PageRequest;

/// What a principal may do. Ordered: each role can do everything the ones below it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads only.
    ReadOnly,
    /// Places calls, manages agents and customers.
    Member,
    /// Also manages API keys and phone numbers.
    Admin,
    /// Also manages the organization itself (plan links, CRM portal).
    Owner,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 4] = [Role::ReadOnly, Role::Member, Role::Admin, Role::Owner];

    /// Wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "read_only",
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An organization's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    /// The default.
    Free,
    /// Paid.
    Pro,
    /// Paid, largest limits.
    Enterprise,
}

/// What a plan allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlanLimits {
    /// API requests per minute for the whole organization.
    pub org_requests_per_minute: u32,
    /// API requests per minute for one user.
    pub user_requests_per_minute: u32,
    /// Calls that may be live (pending, ringing or in progress) at once.
    pub concurrent_calls: u32,
}

impl Plan {
    /// Every plan.
    pub const ALL: [Plan; 3] = [Plan::Free, Plan::Pro, Plan::Enterprise];

    /// Wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Pro => "pro",
            Plan::Enterprise => "enterprise",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Plan> {
        Plan::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The plan's limits.
    pub fn limits(self) -> PlanLimits {
        match self {
            Plan::Free => PlanLimits {
                org_requests_per_minute: 120,
                user_requests_per_minute: 60,
                concurrent_calls: 2,
            },
            Plan::Pro => PlanLimits {
                org_requests_per_minute: 1_200,
                user_requests_per_minute: 300,
                concurrent_calls: 50,
            },
            Plan::Enterprise => PlanLimits {
                org_requests_per_minute: 12_000,
                user_requests_per_minute: 1_200,
                concurrent_calls: 1_000,
            },
        }
    }
}

/// An API key's own request budget (within its organization's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyTier {
    /// 60 requests per minute.
    Low,
    /// 600 requests per minute.
    Standard,
    /// 6,000 requests per minute.
    High,
}

impl KeyTier {
    /// Every tier.
    pub const ALL: [KeyTier; 3] = [KeyTier::Low, KeyTier::Standard, KeyTier::High];

    /// Wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyTier::Low => "low",
            KeyTier::Standard => "standard",
            KeyTier::High => "high",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<KeyTier> {
        KeyTier::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Requests per minute for one key of this tier.
    pub fn requests_per_minute(self) -> u32 {
        match self {
            KeyTier::Low => 60,
            KeyTier::Standard => 600,
            KeyTier::High => 6_000,
        }
    }
}

/// An organization as accounts see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrgAccount {
    /// Id.
    pub id: OrganizationId,
    /// Display name.
    pub name: String,
    /// The plan paid for.
    pub plan: Plan,
    /// Since when an invoice is unpaid, if one is.
    pub past_due_since: Option<DateTime<Utc>>,
    /// The Stripe customer billed for it.
    pub stripe_customer_id: Option<String>,
    /// The HubSpot portal whose contacts are its customers.
    pub hubspot_portal_id: Option<i64>,
    /// Created.
    pub created_at: DateTime<Utc>,
}

impl OrgAccount {
    /// The plan in force at `now`: the paid plan, or `free` once an unpaid invoice is older
    /// than `grace`.
    pub fn effective_plan(&self, now: DateTime<Utc>, grace: Duration) -> Plan {
        match self.past_due_since {
            Some(since) if now >= since + grace => Plan::Free,
            _ => self.plan,
        }
    }
}

/// Who is making a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Subject {
    /// A user with an access token (of this session family).
    User {
        /// The user.
        user: Uuid,
        /// The login session (refresh-token family) the token belongs to.
        session: Uuid,
    },
    /// An API key.
    ApiKey(Uuid),
}

/// An authenticated caller, as stored now (a demoted user or revoked key loses rights at once).
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The caller's organization: every query is scoped by it.
    pub org: OrganizationId,
    /// Who.
    pub subject: Subject,
    /// What they may do.
    pub role: Role,
    /// The organization's account (plan and past-due state, for limits).
    pub account: OrgAccount,
    /// The key's tier when the caller is an API key.
    pub key_tier: Option<KeyTier>,
}

/// A user (the password only as an argon2id PHC string).
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// Id.
    pub id: Uuid,
    /// Organization.
    pub organization_id: OrganizationId,
    /// Lower-case email; unique.
    pub email: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Role.
    pub role: Role,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Set when the user may no longer sign in.
    pub disabled_at: Option<DateTime<Utc>>,
}

/// A refresh token to store (hash only).
#[derive(Debug, Clone, PartialEq)]
pub struct NewRefreshToken {
    /// Row id.
    pub id: Uuid,
    /// The login session it belongs to.
    pub family_id: Uuid,
    /// The user.
    pub user_id: Uuid,
    /// Their organization.
    pub organization_id: OrganizationId,
    /// SHA-256 hex of the token.
    pub token_hash: String,
    /// Issued.
    pub issued_at: DateTime<Utc>,
    /// Expires.
    pub expires_at: DateTime<Utc>,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq)]
pub enum Rotation {
    /// It was live: it is now rotated and the new token (same family) stored.
    Rotated {
        /// The user (current role).
        user: User,
        /// The family.
        family_id: Uuid,
    },
    /// It had been rotated already: someone replayed it, so the whole family is now revoked.
    Reused {
        /// The user.
        user_id: Uuid,
        /// The revoked family.
        family_id: Uuid,
    },
    /// Unknown, expired, revoked, or its user is disabled: nothing changed.
    Invalid,
}

/// Why a refresh token was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    /// `POST /v1/auth/revoke`.
    Logout,
    /// `POST /v1/auth/revoke-all`.
    LogoutAll,
    /// A rotated token was presented again.
    Reuse,
    /// The user was disabled.
    UserDisabled,
    /// The user changed their password (every other session ends).
    PasswordChanged,
}

impl RevokeReason {
    /// Storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Logout => "logout",
            RevokeReason::LogoutAll => "logout_all",
            RevokeReason::Reuse => "reuse",
            RevokeReason::UserDisabled => "user_disabled",
            RevokeReason::PasswordChanged => "password_changed",
        }
    }
}

/// A change to a user (`PATCH /v1/users/{id}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserChange {
    /// New role.
    pub role: Option<Role>,
    /// `true` disables (every session ends at once), `false` enables again.
    pub disabled: Option<bool>,
}

/// Who asks for a [`UserChange`]: their role bounds what they may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserActor {
    /// The acting user, when a user (not an API key) acts.
    pub user: Option<Uuid>,
    /// Their role.
    pub role: Role,
}

/// What a [`UserChange`] did. The rules are checked under the organization's owner lock, so
/// two owners demoting each other at once cannot leave the organization without one.
#[derive(Debug, Clone, PartialEq)]
pub enum UserUpdate {
    /// Applied (or nothing to change); the user as stored now.
    Updated(User),
    /// No such user in the organization.
    NotFound,
    /// The user's role is above the actor's.
    Outranked,
    /// The new role is above the actor's.
    RoleAboveOwn,
    /// Users cannot disable themselves (sign out instead).
    SelfDisable,
    /// It would leave the organization without an enabled owner.
    LastOwner,
}

/// An API key as listed (never the key itself).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiKeyInfo {
    /// Id.
    pub id: Uuid,
    /// Organization.
    #[serde(skip)]
    pub organization_id: OrganizationId,
    /// Display name.
    pub name: String,
    /// The first characters of the key, to tell keys apart.
    pub prefix: String,
    /// What it may do.
    pub role: Role,
    /// Its own request budget.
    pub tier: KeyTier,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last authenticated request (updated at most once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The user who created it, when a user did.
    pub created_by: Option<Uuid>,
}

/// A new API key (hash only).
#[derive(Debug, Clone, PartialEq)]
pub struct NewApiKey {
    /// The key's row.
    pub info: ApiKeyInfo,
    /// SHA-256 hex of the key.
    pub key_hash: String,
}

/// Changes to an organization's own settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgPatch {
    /// New display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Link (a number) or unlink (`null`) the HubSpot portal.
    #[serde(default, with = "double_option")]
    pub hubspot_portal_id: Option<Option<i64>>,
}

mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// A billing fact from Stripe, already verified and parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct BillingEvent {
    /// Stripe's event id (the dedupe key).
    pub event_id: String,
    /// Stripe's event type.
    pub event_type: String,
    /// When Stripe created the event (orders deliveries, which Stripe does not).
    pub created: DateTime<Utc>,
    /// The whole event, stored as received.
    pub payload: serde_json::Value,
    /// What it means for a plan; `None` for events the engine does not act on.
    pub change: Option<BillingChange>,
}

/// What a billing event changes.
#[derive(Debug, Clone, PartialEq)]
pub struct BillingChange {
    /// Stripe customer id.
    pub customer: String,
    /// The organization named in the subscription's metadata (`organization_id`), if any.
    pub organization: Option<OrganizationId>,
    /// The change.
    pub action: BillingAction,
}

/// See [`BillingChange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillingAction {
    /// The subscription's plan; `past_due` when Stripe reports it unpaid.
    Plan {
        /// Plan (free once canceled).
        plan: Plan,
        /// Unpaid (`past_due` / `unpaid`).
        past_due: bool,
    },
    /// An invoice payment failed: the grace period starts (if not already running).
    PaymentFailed,
    /// An invoice was paid: the grace period ends.
    Paid,
}

/// A CRM fact from HubSpot, already verified and parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct CrmEvent {
    /// HubSpot's event id (the dedupe key).
    pub event_id: String,
    /// `subscriptionType`.
    pub event_type: String,
    /// The portal it comes from (maps to an organization).
    pub portal_id: i64,
    /// The event as received.
    pub payload: serde_json::Value,
    /// What it changes; `None` for events the engine does not act on.
    pub change: Option<CrmChange>,
}

/// What a CRM event changes on the customer linked to the contact (customer metadata
/// `hubspot_contact_id`).
#[derive(Debug, Clone, PartialEq)]
pub enum CrmChange {
    /// A contact property changed.
    Property {
        /// The contact.
        contact_id: String,
        /// Which customer field.
        field: CrmField,
        /// The new value (empty: cleared).
        value: String,
    },
    /// The contact was deleted in HubSpot: the customer is unlinked (kept).
    Deleted {
        /// The contact.
        contact_id: String,
    },
}

/// Contact properties that map to customer fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrmField {
    /// `email`.
    Email,
    /// `phone` (must be E.164).
    Phone,
    /// `firstname` (the customer's name is first + last).
    FirstName,
    /// `lastname`.
    LastName,
}

/// Outcome of storing a batch of account events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventsStored {
    /// New events (stored and applied).
    pub new: u32,
    /// Seen before (nothing done).
    pub duplicates: u32,
    /// `(portal, contact)` of new events about a contact no customer is linked to yet, in a
    /// linked portal (stored with outcome `unlinked_contact`), each once.
    pub unlinked: Vec<(i64, String)>,
}

/// A queued CRM lookup of a contact no customer is linked to yet (claimed under a lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmLinkJob {
    /// The HubSpot portal.
    pub portal_id: i64,
    /// The contact.
    pub contact_id: String,
    /// Failed lookups so far.
    pub attempts: u32,
    /// The end of this claim's lease: finishing or retrying only acts while the row still
    /// carries it (an event that queued the contact again meanwhile keeps it queued).
    pub lease_until: DateTime<Utc>,
}

/// A HubSpot contact as the CRM reports it now (looked up to link it to a customer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrmContactFacts {
    /// The contact id.
    pub contact_id: String,
    /// `email`.
    pub email: Option<String>,
    /// `phone`.
    pub phone: Option<String>,
    /// `firstname`.
    pub firstname: Option<String>,
    /// `lastname`.
    pub lastname: Option<String>,
}

/// What linking a contact did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrmLink {
    /// The customer with the contact's phone (else email) is now linked and took the contact's
    /// email and name; the contact's stored unlinked events are marked applied.
    Linked {
        /// The customer.
        customer: Uuid,
    },
    /// A customer was linked already (the event stream keeps it current).
    AlreadyLinked {
        /// The customer.
        customer: Uuid,
    },
    /// No unlinked customer has the contact's phone or email.
    NoCustomer,
    /// Several customers match: nothing linked (a person decides).
    Ambiguous,
    /// No organization is linked to the portal.
    NoOrganization,
}

/// Accounts persistence. Every organization-scoped method is scoped by its `org` argument.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// The organization's account.
    async fn organization(&self, org: OrganizationId) -> StoreResult<Option<OrgAccount>>;
    /// Applies `patch`; `Ok(None)` when the organization does not exist. A portal id another
    /// organization uses is a conflict.
    async fn update_organization(
        &self,
        org: OrganizationId,
        patch: &OrgPatch,
    ) -> StoreResult<Result<Option<OrgAccount>, String>>;

    /// Stores a user; `false` when the email is taken.
    async fn insert_user(&self, user: &User) -> StoreResult<bool>;
    /// The user with this (lower-case) email.
    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>>;
    /// The organization's user with this id.
    async fn user(&self, org: OrganizationId, id: Uuid) -> StoreResult<Option<User>>;
    /// One page of the organization's users, oldest first (disabled ones too). Unlike the
    /// newest-first lists, `page.after` here returns users strictly *newer* than the cursor
    /// (the next ones in this list's order).
    async fn list_users(&self, org: OrganizationId, page: &PageRequest) -> StoreResult<Vec<User>>;
    /// Applies `change` to the organization's user `id` as `actor`, atomically with the rules
    /// of [`UserUpdate`]; disabling revokes every session of the user in the same transaction.
    async fn update_user(
        &self,
        org: OrganizationId,
        id: Uuid,
        change: &UserChange,
        actor: UserActor,
        now: DateTime<Utc>,
    ) -> StoreResult<UserUpdate>;
    /// Replaces the user's password hash and revokes every session but `keep` (the caller's),
    /// in one transaction; `false` when the user is gone or disabled.
    async fn set_password(
        &self,
        user: Uuid,
        password_hash: &str,
        keep: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Stores the first refresh token of a login.
    async fn insert_refresh_token(&self, token: &NewRefreshToken) -> StoreResult<()>;
    /// Presents the token with hash `presented`: rotates it into `next` (whose `family_id`,
    /// `user_id` and `organization_id` the store fills from the presented token), or detects
    /// reuse and revokes the family. Atomic.
    async fn rotate_refresh_token(
        &self,
        presented: &str,
        next: &NewRefreshToken,
        now: DateTime<Utc>,
    ) -> StoreResult<Rotation>;
    /// Revokes the family of the token with this hash; the user and family when it was live.
    async fn revoke_refresh_token(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<(Uuid, Uuid)>>;
    /// Revokes every session of a user; how many families were live.
    async fn revoke_user_sessions(&self, user: Uuid, now: DateTime<Utc>) -> StoreResult<u64>;
    /// The principal of an access token: the user and their session must still be live.
    async fn user_principal(
        &self,
        user: Uuid,
        session: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Principal>>;

    /// The principal of the API key with this hash (not revoked); records the use (at most
    /// once a minute per key).
    async fn key_principal(
        &self,
        key_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Principal>>;
    /// Stores a new API key.
    async fn insert_api_key(&self, key: &NewApiKey) -> StoreResult<()>;
    /// One page of the organization's API keys, newest first (revoked ones too).
    async fn list_api_keys(
        &self,
        org: OrganizationId,
        page: &PageRequest,
    ) -> StoreResult<Vec<ApiKeyInfo>>;
    /// The organization's API key with this id (revoked or not).
    async fn api_key(&self, org: OrganizationId, id: Uuid) -> StoreResult<Option<ApiKeyInfo>>;
    /// Revokes a key; `None` when the organization has no such key.
    async fn revoke_api_key(
        &self,
        org: OrganizationId,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<ApiKeyInfo>>;

    /// Live (pending, ringing, in progress) calls of the organization.
    async fn live_calls(&self, org: OrganizationId) -> StoreResult<u64>;

    /// Stores a Stripe event (deduplicated by its id) and applies its change, in one
    /// transaction; `false` when it was stored before.
    async fn record_billing_event(
        &self,
        event: &BillingEvent,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// Stores a batch of HubSpot events (each deduplicated by its id) and applies their
    /// changes, in one transaction. With `queue_links`, each contact of
    /// [`EventsStored::unlinked`] is queued for a CRM lookup in that transaction too (due at
    /// once, also when it was already queued).
    async fn record_crm_events(
        &self,
        events: &[CrmEvent],
        queue_links: bool,
        now: DateTime<Utc>,
    ) -> StoreResult<EventsStored>;
    /// Claims up to `limit` due CRM lookups, oldest due first; a claimed lookup is not due
    /// again for `lease` (another node skips it meanwhile).
    async fn claim_crm_links(
        &self,
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: u32,
    ) -> StoreResult<Vec<CrmLinkJob>>;
    /// A lookup failed: due again at `at`, one more attempt counted (unless queued again
    /// since the claim).
    async fn retry_crm_link(
        &self,
        job: &CrmLinkJob,
        at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<()>;
    /// A lookup is resolved (linked, or nothing to link): off the queue, unless an event
    /// queued the contact again since the claim.
    async fn finish_crm_link(&self, job: &CrmLinkJob) -> StoreResult<()>;
    /// Links a HubSpot contact to the organization's unlinked customer with its phone (else
    /// its email), in one transaction (see [`CrmLink`]).
    async fn link_crm_contact(
        &self,
        portal_id: i64,
        contact: &CrmContactFacts,
        now: DateTime<Utc>,
    ) -> StoreResult<CrmLink>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_round_trip() {
        assert!(Role::ReadOnly < Role::Member);
        assert!(Role::Member < Role::Admin);
        assert!(Role::Admin < Role::Owner);
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
        assert_eq!(Role::parse("Owner"), None);
    }

    #[test]
    fn an_unpaid_plan_falls_back_to_free_after_the_grace_period() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut org = OrgAccount {
            id: Uuid::nil(),
            name: "o".into(),
            plan: Plan::Pro,
            past_due_since: None,
            stripe_customer_id: None,
            hubspot_portal_id: None,
            created_at: t0,
        };
        let grace = Duration::days(7);
        assert_eq!(
            org.effective_plan(t0 + Duration::days(30), grace),
            Plan::Pro
        );
        org.past_due_since = Some(t0);
        assert_eq!(
            org.effective_plan(t0 + Duration::days(7) - Duration::seconds(1), grace),
            Plan::Pro
        );
        assert_eq!(
            org.effective_plan(t0 + Duration::days(7), grace),
            Plan::Free
        );
    }

    #[test]
    fn plans_grow_and_tiers_parse() {
        let limits: Vec<_> = Plan::ALL.iter().map(|p| p.limits()).collect();
        assert!(limits.windows(2).all(|w| {
            w[0].org_requests_per_minute < w[1].org_requests_per_minute
                && w[0].concurrent_calls < w[1].concurrent_calls
        }));
        for t in KeyTier::ALL {
            assert_eq!(KeyTier::parse(t.as_str()), Some(t));
        }
        for p in Plan::ALL {
            assert_eq!(Plan::parse(p.as_str()), Some(p));
        }
    }

    #[test]
    fn an_org_patch_tells_unlink_from_absent() {
        let p: OrgPatch = serde_json::from_str(r#"{"hubspot_portal_id":null}"#).unwrap();
        assert_eq!(p.hubspot_portal_id, Some(None));
        let p: OrgPatch = serde_json::from_str(r#"{"name":"x"}"#).unwrap();
        assert_eq!(p.hubspot_portal_id, None);
        assert!(serde_json::from_str::<OrgPatch>(r#"{"plan":"enterprise"}"#).is_err());
    }
}
