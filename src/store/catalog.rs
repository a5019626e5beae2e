//! [`QueryStore`]: API keys, agents, customers and call reads, all scoped by organization.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use iace_actors::catalog::webhooks::WebhookEndpoint;
use iace_actors::catalog::{
    Agent, AgentPatch, AgentStatus, Customer, CustomerPatch, Organization, PhoneNumberAssignment,
};
use iace_actors::machine::{Call, CallId, OrganizationId, PhoneNumber};
use iace_actors::ports::{
    CallFilter, CatalogWriteError, JournalEntry, PageRequest, QueryStore, StoreResult,
};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::rows::{
    agent_from_row, call_from_row, customer_from_row, entry_from_row, phone_number_from_row,
    webhook_endpoint_from_row, AGENT_COLUMNS, CALL_COLUMNS, CUSTOMER_COLUMNS, PHONE_NUMBER_COLUMNS,
    WEBHOOK_ENDPOINT_COLUMNS,
};
use super::{is_unique_violation, unavailable, PgStore};

/// `SELECT <columns> FROM <table> WHERE organization_id = $org [AND keyset]` newest first.
fn page_query<'a>(
    columns: &str,
    table: &str,
    org: OrganizationId,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> QueryBuilder<'a, Postgres> {
    let mut q = QueryBuilder::new(format!(
        "SELECT {columns} FROM {table} WHERE organization_id = "
    ));
    q.push_bind(org);
    if let Some((at, id)) = after {
        q.push(" AND (created_at, id) < (");
        q.push_bind(at);
        q.push(", ");
        q.push_bind(id);
        q.push(")");
    }
    q
}

fn finish_page(q: &mut QueryBuilder<'_, Postgres>, limit: i64) {
    q.push(" ORDER BY created_at DESC, id DESC LIMIT ");
    q.push_bind(limit);
}

fn phone_taken(phone: &str) -> CatalogWriteError {
    CatalogWriteError::Conflict(format!("a customer with phone {phone} already exists"))
}

#[async_trait]
impl QueryStore for PgStore {
    async fn create_organization(
        &self,
        org: &Organization,
        key_id: Uuid,
        key_hash: &str,
        key_prefix: &str,
    ) -> StoreResult<()> {
        let mut tx = self.begin().await.map_err(unavailable)?;
        sqlx::query("INSERT INTO organization (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(org.id)
            .bind(&org.name)
            .bind(org.created_at)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        sqlx::query(
            "INSERT INTO api_key (id, organization_id, key_hash, key_prefix, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(key_id)
        .bind(org.id)
        .bind(key_hash)
        .bind(key_prefix)
        .bind(org.created_at)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn get_call(&self, org: OrganizationId, id: CallId) -> StoreResult<Option<Call>> {
        let row = sqlx::query(&format!(
            "SELECT {CALL_COLUMNS} FROM call WHERE id = $1 AND organization_id = $2"
        ))
        .bind(id)
        .bind(org)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(call_from_row).transpose()
    }

    async fn list_calls(&self, org: OrganizationId, f: &CallFilter) -> StoreResult<Vec<Call>> {
        let mut q = page_query(CALL_COLUMNS, "call", org, f.after);
        if let Some(status) = f.status {
            q.push(" AND status = ");
            q.push_bind(status.as_str());
        }
        if let Some(agent) = f.agent_id {
            q.push(" AND agent_id = ");
            q.push_bind(agent);
        }
        if let Some(customer) = f.customer_id {
            q.push(" AND customer_id = ");
            q.push_bind(customer);
        }
        if let Some(success) = f.success {
            q.push(" AND EXISTS (SELECT 1 FROM call_analysis a WHERE a.call_id = call.id AND a.success = ");
            q.push_bind(success);
            q.push(")");
        }
        finish_page(&mut q, f.limit);
        let rows = q.build().fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(call_from_row).collect()
    }

    async fn call_events(
        &self,
        org: OrganizationId,
        id: CallId,
    ) -> StoreResult<Option<Vec<JournalEntry>>> {
        let owned: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM call WHERE id = $1 AND organization_id = $2)",
        )
        .bind(id)
        .bind(org)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        if !owned {
            return Ok(None);
        }
        let rows = sqlx::query(
            "SELECT call_id, seq, at, data FROM call_event \
             WHERE call_id = $1 AND organization_id = $2 ORDER BY seq",
        )
        .bind(id)
        .bind(org)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(entry_from_row)
            .collect::<StoreResult<Vec<_>>>()
            .map(Some)
    }

    async fn insert_agent(&self, a: &Agent) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO agent ({AGENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(a.id)
        .bind(a.organization_id)
        .bind(&a.name)
        .bind(&a.persona_config)
        .bind(&a.voice_config)
        .bind(a.status.as_str())
        .bind(a.agent_type.as_str())
        .bind(a.created_at)
        .bind(a.updated_at)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn get_agent(&self, org: OrganizationId, id: Uuid) -> StoreResult<Option<Agent>> {
        let row = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agent WHERE id = $1 AND organization_id = $2"
        ))
        .bind(id)
        .bind(org)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(agent_from_row).transpose()
    }

    async fn list_agents(&self, org: OrganizationId, p: &PageRequest) -> StoreResult<Vec<Agent>> {
        let mut q = page_query(AGENT_COLUMNS, "agent", org, p.after);
        finish_page(&mut q, p.limit);
        let rows = q.build().fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(agent_from_row).collect()
    }

    async fn update_agent(
        &self,
        org: OrganizationId,
        id: Uuid,
        patch: &AgentPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Agent>> {
        let mut tx = self.begin().await.map_err(unavailable)?;
        let row = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agent WHERE id = $1 AND organization_id = $2 FOR UPDATE"
        ))
        .bind(id)
        .bind(org)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        let mut agent = agent_from_row(&row)?;
        patch.apply(&mut agent, now);
        sqlx::query(
            "UPDATE agent SET name = $2, persona_config = $3, voice_config = $4, status = $5, \
             agent_type = $6, updated_at = $7 WHERE id = $1",
        )
        .bind(id)
        .bind(&agent.name)
        .bind(&agent.persona_config)
        .bind(&agent.voice_config)
        .bind(agent.status.as_str())
        .bind(agent.agent_type.as_str())
        .bind(agent.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Some(agent))
    }

    async fn delete_agent(
        &self,
        org: OrganizationId,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await.map_err(unavailable)?;
        let found: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM agent WHERE id = $1 AND organization_id = $2 FOR UPDATE",
        )
        .bind(id)
        .bind(org)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        if found.is_none() {
            return Ok(false);
        }
        let has_calls: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM call WHERE agent_id = $1)")
                .bind(id)
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
        if has_calls {
            // Call history keeps its reference: archive instead of deleting.
            sqlx::query("UPDATE agent SET status = $2, updated_at = $3 WHERE id = $1")
                .bind(id)
                .bind(AgentStatus::Archived.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        } else {
            sqlx::query("DELETE FROM agent WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(true)
    }

    async fn insert_customer(&self, c: &Customer) -> StoreResult<bool> {
        let done = sqlx::query(&format!(
            "INSERT INTO customer ({CUSTOMER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (organization_id, phone) DO NOTHING"
        ))
        .bind(c.id)
        .bind(c.organization_id)
        .bind(c.phone.as_str())
        .bind(&c.email)
        .bind(&c.name)
        .bind(&c.segment)
        .bind(&c.metadata)
        .bind(c.created_at)
        .bind(c.updated_at)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn get_customer(&self, org: OrganizationId, id: Uuid) -> StoreResult<Option<Customer>> {
        let row = sqlx::query(&format!(
            "SELECT {CUSTOMER_COLUMNS} FROM customer WHERE id = $1 AND organization_id = $2"
        ))
        .bind(id)
        .bind(org)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(customer_from_row).transpose()
    }

    async fn list_customers(
        &self,
        org: OrganizationId,
        p: &PageRequest,
    ) -> StoreResult<Vec<Customer>> {
        let mut q = page_query(CUSTOMER_COLUMNS, "customer", org, p.after);
        finish_page(&mut q, p.limit);
        let rows = q.build().fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(customer_from_row).collect()
    }

    async fn update_customer(
        &self,
        org: OrganizationId,
        id: Uuid,
        patch: &CustomerPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Customer>, CatalogWriteError> {
        let mut tx = self.begin().await.map_err(unavailable)?;
        let row = sqlx::query(&format!(
            "SELECT {CUSTOMER_COLUMNS} FROM customer \
             WHERE id = $1 AND organization_id = $2 FOR UPDATE"
        ))
        .bind(id)
        .bind(org)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        let mut customer = customer_from_row(&row)?;
        patch.apply(&mut customer, now);
        sqlx::query(
            "UPDATE customer SET phone = $2, email = $3, name = $4, segment = $5, metadata = $6, \
             updated_at = $7 WHERE id = $1",
        )
        .bind(id)
        .bind(customer.phone.as_str())
        .bind(&customer.email)
        .bind(&customer.name)
        .bind(&customer.segment)
        .bind(&customer.metadata)
        .bind(customer.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                phone_taken(customer.phone.as_str())
            } else {
                CatalogWriteError::Store(unavailable(e))
            }
        })?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Some(customer))
    }

    async fn delete_customer(&self, org: OrganizationId, id: Uuid) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM customer WHERE id = $1 AND organization_id = $2")
            .bind(id)
            .bind(org)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn customer_by_phone(
        &self,
        org: OrganizationId,
        phone: &PhoneNumber,
    ) -> StoreResult<Option<Uuid>> {
        sqlx::query_scalar("SELECT id FROM customer WHERE organization_id = $1 AND phone = $2")
            .bind(org)
            .bind(phone.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)
    }

    async fn insert_phone_number(&self, n: &PhoneNumberAssignment) -> StoreResult<bool> {
        // The agent must be the organization's: checked here, in the same statement.
        let done = sqlx::query(
            "INSERT INTO phone_number (id, organization_id, agent_id, number, created_at) \
             SELECT $1, $2, id, $4, $5 FROM agent WHERE id = $3 AND organization_id = $2 \
             ON CONFLICT (number) DO NOTHING",
        )
        .bind(n.id)
        .bind(n.organization_id)
        .bind(n.agent_id)
        .bind(n.number.as_str())
        .bind(n.created_at)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn list_phone_numbers(
        &self,
        org: OrganizationId,
        agent: Option<Uuid>,
        p: &PageRequest,
    ) -> StoreResult<Vec<PhoneNumberAssignment>> {
        let mut q = page_query(PHONE_NUMBER_COLUMNS, "phone_number", org, p.after);
        if let Some(agent) = agent {
            q.push(" AND agent_id = ");
            q.push_bind(agent);
        }
        finish_page(&mut q, p.limit);
        let rows = q.build().fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(phone_number_from_row).collect()
    }

    async fn delete_phone_number(&self, org: OrganizationId, id: Uuid) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM phone_number WHERE id = $1 AND organization_id = $2")
            .bind(id)
            .bind(org)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_webhook_endpoint(&self, e: &WebhookEndpoint) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO webhook_endpoint (id, organization_id, url, description, event_types, \
               enabled, disabled_reason, secret, previous_secret, previous_secret_until, \
               created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(e.id)
        .bind(e.organization_id)
        .bind(&e.url)
        .bind(&e.description)
        .bind(&e.event_types)
        .bind(e.enabled)
        .bind(&e.disabled_reason)
        .bind(&e.secret)
        .bind(&e.previous_secret)
        .bind(e.previous_secret_until)
        .bind(e.created_at)
        .bind(e.updated_at)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn get_webhook_endpoint(
        &self,
        org: OrganizationId,
        id: Uuid,
    ) -> StoreResult<Option<WebhookEndpoint>> {
        let row = sqlx::query(&format!(
            "SELECT {WEBHOOK_ENDPOINT_COLUMNS} FROM webhook_endpoint \
             WHERE id = $1 AND organization_id = $2"
        ))
        .bind(id)
        .bind(org)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(webhook_endpoint_from_row).transpose()
    }

    async fn list_webhook_endpoints(
        &self,
        org: OrganizationId,
        p: &PageRequest,
    ) -> StoreResult<Vec<WebhookEndpoint>> {
        let mut q = page_query(WEBHOOK_ENDPOINT_COLUMNS, "webhook_endpoint", org, p.after);
        finish_page(&mut q, p.limit);
        let rows = q.build().fetch_all(&self.pool).await.map_err(unavailable)?;
        rows.iter().map(webhook_endpoint_from_row).collect()
    }

    async fn update_webhook_endpoint(
        &self,
        e: &WebhookEndpoint,
        read_at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE webhook_endpoint SET url = $3, description = $4, event_types = $5, \
               enabled = $6, disabled_reason = $7, secret = $8, previous_secret = $9, \
               previous_secret_until = $10, updated_at = $11, \
               failing_since = CASE WHEN $6 AND NOT enabled THEN NULL ELSE failing_since END \
             WHERE id = $1 AND organization_id = $2 AND updated_at = $12",
        )
        .bind(e.id)
        .bind(e.organization_id)
        .bind(&e.url)
        .bind(&e.description)
        .bind(&e.event_types)
        .bind(e.enabled)
        .bind(&e.disabled_reason)
        .bind(&e.secret)
        .bind(&e.previous_secret)
        .bind(e.previous_secret_until)
        .bind(e.updated_at)
        .bind(read_at)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_webhook_endpoint(&self, org: OrganizationId, id: Uuid) -> StoreResult<bool> {
        let done =
            sqlx::query("DELETE FROM webhook_endpoint WHERE id = $1 AND organization_id = $2")
                .bind(id)
                .bind(org)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn route_number(
        &self,
        number: &PhoneNumber,
    ) -> StoreResult<Option<PhoneNumberAssignment>> {
        let row = sqlx::query(&format!(
            "SELECT {PHONE_NUMBER_COLUMNS} FROM phone_number WHERE number = $1"
        ))
        .bind(number.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(phone_number_from_row).transpose()
    }
}
