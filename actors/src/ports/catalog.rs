//! The catalog and read side: organizations, agents, customers, phone numbers and the reads
//! of calls, each scoped by organization.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::calls::{JournalEntry, StoreError, StoreResult};
use crate::catalog::webhooks::WebhookEndpoint;
use crate::catalog::{
    Agent, AgentPatch, Customer, CustomerPatch, Organization, PhoneNumberAssignment,
};
use crate::machine::{Call, CallId, CallStatus, CustomerId, OrganizationId, PhoneNumber};

/// Filter and page of `GET /v1/calls`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallFilter {
    /// Only calls in this status.
    pub status: Option<CallStatus>,
    /// Only calls of this agent.
    pub agent_id: Option<Uuid>,
    /// Only calls with this customer.
    pub customer_id: Option<CustomerId>,
    /// Only calls whose post-call analysis judged them a success (`true`) or not (`false`).
    pub success: Option<bool>,
    /// Page size (already clamped by the engine).
    pub limit: i64,
    /// Keyset cursor: return calls strictly older than this `(created_at, id)`.
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

/// A keyset page request for the lists other than calls (agents, customers, phone numbers,
/// users, API keys).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PageRequest {
    /// Page size (already clamped by the engine).
    pub limit: i64,
    /// Return rows strictly older than this `(created_at, id)` (strictly newer for a list
    /// kept oldest first): the last row of the previous page.
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

/// Catalog and read-model persistence (agents, customers, API keys, call reads). Every method
/// that takes an organization is scoped by it: another tenant's rows are invisible.
#[async_trait]
pub trait QueryStore: Send + Sync + 'static {
    /// Creates an organization and its first API key (hash only).
    async fn create_organization(
        &self,
        org: &Organization,
        key_id: Uuid,
        key_hash: &str,
        key_prefix: &str,
    ) -> StoreResult<()>;

    /// One call of the organization.
    async fn get_call(&self, org: OrganizationId, id: CallId) -> StoreResult<Option<Call>>;
    /// Calls of the organization, newest first.
    async fn list_calls(&self, org: OrganizationId, filter: &CallFilter) -> StoreResult<Vec<Call>>;
    /// The journal of one call, or `None` when the call is not the organization's.
    async fn call_events(
        &self,
        org: OrganizationId,
        id: CallId,
    ) -> StoreResult<Option<Vec<JournalEntry>>>;

    /// Stores a new agent.
    async fn insert_agent(&self, agent: &Agent) -> StoreResult<()>;
    /// One agent.
    async fn get_agent(&self, org: OrganizationId, id: Uuid) -> StoreResult<Option<Agent>>;
    /// Agents, newest first.
    async fn list_agents(&self, org: OrganizationId, page: &PageRequest)
        -> StoreResult<Vec<Agent>>;
    /// Applies a patch; `None` when not found.
    async fn update_agent(
        &self,
        org: OrganizationId,
        id: Uuid,
        patch: &AgentPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Agent>>;
    /// Deletes an agent; `Ok(false)` when not found. Agents with calls are archived instead
    /// (status `archived`) so call history keeps its reference.
    async fn delete_agent(
        &self,
        org: OrganizationId,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Stores a new customer. `Ok(false)` when the phone is already a customer of the org.
    async fn insert_customer(&self, customer: &Customer) -> StoreResult<bool>;
    /// One customer.
    async fn get_customer(&self, org: OrganizationId, id: Uuid) -> StoreResult<Option<Customer>>;
    /// Customers, newest first.
    async fn list_customers(
        &self,
        org: OrganizationId,
        page: &PageRequest,
    ) -> StoreResult<Vec<Customer>>;
    /// Applies a patch; `Ok(None)` when not found, `Err` on a duplicate phone.
    async fn update_customer(
        &self,
        org: OrganizationId,
        id: Uuid,
        patch: &CustomerPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Customer>, CatalogWriteError>;
    /// Deletes a customer; `Ok(false)` when not found. Calls keep their history (the
    /// reference is cleared).
    async fn delete_customer(&self, org: OrganizationId, id: Uuid) -> StoreResult<bool>;
    /// The organization's customer with this phone, if any.
    async fn customer_by_phone(
        &self,
        org: OrganizationId,
        phone: &PhoneNumber,
    ) -> StoreResult<Option<Uuid>>;

    /// Assigns a number to an agent. `Ok(false)` when the number is already assigned (in any
    /// organization).
    async fn insert_phone_number(&self, number: &PhoneNumberAssignment) -> StoreResult<bool>;
    /// The organization's numbers, newest first; only `agent`'s when given.
    async fn list_phone_numbers(
        &self,
        org: OrganizationId,
        agent: Option<Uuid>,
        page: &PageRequest,
    ) -> StoreResult<Vec<PhoneNumberAssignment>>;
    /// Releases a number; `Ok(false)` when not found.
    async fn delete_phone_number(&self, org: OrganizationId, id: Uuid) -> StoreResult<bool>;
    /// Stores a new webhook endpoint.
    async fn insert_webhook_endpoint(&self, endpoint: &WebhookEndpoint) -> StoreResult<()>;
    /// One of the organization's webhook endpoints.
    async fn get_webhook_endpoint(
        &self,
        org: OrganizationId,
        id: Uuid,
    ) -> StoreResult<Option<WebhookEndpoint>>;
    /// The organization's webhook endpoints, newest first.
    async fn list_webhook_endpoints(
        &self,
        org: OrganizationId,
        page: &PageRequest,
    ) -> StoreResult<Vec<WebhookEndpoint>>;
    /// Writes back an endpoint read with [`QueryStore::get_webhook_endpoint`] and changed,
    /// if nobody changed it since (its `updated_at` is still `read_at`): `Ok(false)` when it
    /// is gone or was changed meanwhile.
    async fn update_webhook_endpoint(
        &self,
        endpoint: &WebhookEndpoint,
        read_at: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// Deletes an endpoint; `Ok(false)` when not found.
    async fn delete_webhook_endpoint(&self, org: OrganizationId, id: Uuid) -> StoreResult<bool>;

    /// Who answers calls to `number` (any organization: the carrier tells us only the number).
    async fn route_number(
        &self,
        number: &PhoneNumber,
    ) -> StoreResult<Option<PhoneNumberAssignment>>;
}

/// A catalog write that conflicts with existing data.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CatalogWriteError {
    /// Unique constraint (e.g. the customer's phone is taken in this organization).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
