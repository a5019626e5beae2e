//! The `refresh_token` table: login sessions as refresh-token families (issue, rotate, detect
//! reuse, revoke) and the principal of an access token, live only while its session is.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::accounts::{NewRefreshToken, Principal, Rotation};
use crate::ports::calls::StoreResult;

/// Login sessions (refresh tokens, stored as hashes only).
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
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
}
