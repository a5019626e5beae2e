//! The `api_key` table: keys (stored as hashes only), their listing and revocation, and the
//! principal of a presented key.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::accounts::{ApiKeyInfo, NewApiKey, Principal};
use crate::machine::OrganizationId;
use crate::ports::calls::StoreResult;
use crate::ports::catalog::PageRequest;

/// API keys. Every organization-scoped method is scoped by its `org` argument.
#[async_trait]
pub trait ApiKeyStore: Send + Sync + 'static {
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
}
