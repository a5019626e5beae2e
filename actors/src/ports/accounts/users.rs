//! The `app_user` table: users, their roles and passwords. Changes that end sessions
//! (disabling, a new password) revoke the user's refresh tokens in the same transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::accounts::{User, UserActor, UserChange, UserUpdate};
use crate::machine::OrganizationId;
use crate::ports::calls::StoreResult;
use crate::ports::catalog::PageRequest;

/// Users. Every organization-scoped method is scoped by its `org` argument.
#[async_trait]
pub trait UserStore: Send + Sync + 'static {
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
}
