//! The catalog through the engine: organizations, agents, customers and the phone numbers
//! assigned to agents. Every read and write runs on the query pool, bounded by the engine
//! timeout; ids and times come from the engine's ports.

use uuid::Uuid;

use super::{clamp_limit, Engine, EngineError};
use crate::catalog::{
    self, Agent, AgentPatch, AgentType, Customer, CustomerPatch, NewAgent, NewCustomer,
    NewPhoneNumber, Organization, PhoneNumberAssignment,
};
use crate::machine::OrganizationId;
use crate::ports::PageRequest;

impl Engine {
    // ---------------------------------------------------------------- organizations

    /// Creates an organization with its first API key, given as a hash and a display prefix
    /// (the key itself is generated and shown by the caller, never stored).
    pub async fn create_organization(
        &self,
        name: &str,
        key_hash: String,
        key_prefix: String,
    ) -> Result<Organization, EngineError> {
        let shared = &self.inner.shared;
        let org = Organization {
            id: shared.ports.ids.next_id(),
            name: catalog::validate_name("name", name)?,
            created_at: self.now(),
        };
        let key_id = shared.ports.ids.next_id();
        let stored = org.clone();
        self.query(move |q| async move {
            q.create_organization(&stored, key_id, &key_hash, &key_prefix)
                .await?;
            Ok(())
        })
        .await?;
        Ok(org)
    }

    // ---------------------------------------------------------------- agents

    /// Creates an agent.
    pub async fn create_agent(
        &self,
        org: OrganizationId,
        new: NewAgent,
    ) -> Result<Agent, EngineError> {
        let agent = new.validate(self.inner.shared.ports.ids.next_id(), org, self.now())?;
        let stored = agent.clone();
        self.query(move |q| async move { Ok(q.insert_agent(&stored).await?) })
            .await?;
        Ok(agent)
    }

    /// One agent.
    pub async fn get_agent(&self, org: OrganizationId, id: Uuid) -> Result<Agent, EngineError> {
        self.query(move |q| async move { Ok(q.get_agent(org, id).await?) })
            .await?
            .ok_or(EngineError::NotFound { what: "agent" })
    }

    /// Agents, newest first.
    pub async fn list_agents(
        &self,
        org: OrganizationId,
        mut page: PageRequest,
    ) -> Result<Vec<Agent>, EngineError> {
        page.limit = clamp_limit(page.limit);
        self.query(move |q| async move { Ok(q.list_agents(org, &page).await?) })
            .await
    }

    /// Updates an agent.
    pub async fn update_agent(
        &self,
        org: OrganizationId,
        id: Uuid,
        patch: AgentPatch,
    ) -> Result<Agent, EngineError> {
        let mut patch = patch;
        if let Some(persona) = patch.persona_config.as_mut() {
            let masked = persona
                .get("http_tools")
                .is_some_and(|t| t.to_string().contains(crate::catalog::profile::SECRET_MASK));
            if masked {
                // Secrets sent back as shown keep their stored values.
                let stored = self.get_agent(org, id).await?;
                crate::catalog::profile::restore_secrets(persona, &stored.persona_config)?;
            }
        }
        let patch = patch.validate()?;
        let now = self.now();
        self.inner.shared.lookups.forget_agent(org, id);
        let updated = self
            .query(move |q| async move { Ok(q.update_agent(org, id, &patch, now).await?) })
            .await;
        // Read again from the store from now on, whatever came of it.
        self.inner.shared.lookups.forget_agent(org, id);
        updated?.ok_or(EngineError::NotFound { what: "agent" })
    }

    /// Deletes an agent (archives it when it has calls).
    pub async fn delete_agent(&self, org: OrganizationId, id: Uuid) -> Result<(), EngineError> {
        let now = self.now();
        let found = self
            .query(move |q| async move { Ok(q.delete_agent(org, id, now).await?) })
            .await;
        self.inner.shared.lookups.forget_agent(org, id);
        let found = found?;
        found
            .then_some(())
            .ok_or(EngineError::NotFound { what: "agent" })
    }

    // ---------------------------------------------------------------- customers

    /// Creates a customer. A second customer with the same phone is a conflict.
    pub async fn create_customer(
        &self,
        org: OrganizationId,
        new: NewCustomer,
    ) -> Result<Customer, EngineError> {
        let customer = new.validate(self.inner.shared.ports.ids.next_id(), org, self.now())?;
        let stored = customer.clone();
        let inserted = self
            .query(move |q| async move { Ok(q.insert_customer(&stored).await?) })
            .await?;
        if inserted {
            Ok(customer)
        } else {
            Err(EngineError::Conflict(format!(
                "a customer with phone {} already exists",
                customer.phone
            )))
        }
    }

    /// One customer.
    pub async fn get_customer(
        &self,
        org: OrganizationId,
        id: Uuid,
    ) -> Result<Customer, EngineError> {
        self.query(move |q| async move { Ok(q.get_customer(org, id).await?) })
            .await?
            .ok_or(EngineError::NotFound { what: "customer" })
    }

    /// Customers, newest first.
    pub async fn list_customers(
        &self,
        org: OrganizationId,
        mut page: PageRequest,
    ) -> Result<Vec<Customer>, EngineError> {
        page.limit = clamp_limit(page.limit);
        self.query(move |q| async move { Ok(q.list_customers(org, &page).await?) })
            .await
    }

    /// Updates a customer.
    pub async fn update_customer(
        &self,
        org: OrganizationId,
        id: Uuid,
        patch: CustomerPatch,
    ) -> Result<Customer, EngineError> {
        let patch = patch.validate()?;
        let now = self.now();
        self.inner.shared.lookups.forget_customer(org, id);
        let updated = self
            .query(move |q| async move { Ok(q.update_customer(org, id, &patch, now).await?) })
            .await;
        self.inner.shared.lookups.forget_customer(org, id);
        updated?.ok_or(EngineError::NotFound { what: "customer" })
    }

    /// Deletes a customer (their calls keep their history).
    pub async fn delete_customer(&self, org: OrganizationId, id: Uuid) -> Result<(), EngineError> {
        let found = self
            .query(move |q| async move { Ok(q.delete_customer(org, id).await?) })
            .await;
        self.inner.shared.lookups.forget_customer(org, id);
        let found = found?;
        found
            .then_some(())
            .ok_or(EngineError::NotFound { what: "customer" })
    }

    // ---------------------------------------------------------------- phone numbers

    /// Assigns one of the organization's numbers to an agent that answers inbound calls.
    pub async fn create_phone_number(
        &self,
        org: OrganizationId,
        new: NewPhoneNumber,
    ) -> Result<PhoneNumberAssignment, EngineError> {
        let agent = self
            .get_agent(org, new.agent_id)
            .await
            .map_err(|e| match e {
                EngineError::NotFound { .. } => {
                    EngineError::invalid("agent_id", "no agent with this id in your organization")
                }
                other => other,
            })?;
        if agent.agent_type == AgentType::Outbound {
            return Err(EngineError::invalid(
                "agent_id",
                "the agent only places outbound calls; give it agent_type inbound or both",
            ));
        }
        let assignment = PhoneNumberAssignment {
            id: self.inner.shared.ports.ids.next_id(),
            organization_id: org,
            agent_id: agent.id,
            number: new.number,
            created_at: self.now(),
        };
        let stored = assignment.clone();
        let inserted = self
            .query(move |q| async move { Ok(q.insert_phone_number(&stored).await?) })
            .await?;
        if inserted {
            Ok(assignment)
        } else {
            Err(EngineError::Conflict(format!(
                "the number {} is already assigned",
                assignment.number
            )))
        }
    }

    /// The organization's numbers, newest first.
    pub async fn list_phone_numbers(
        &self,
        org: OrganizationId,
        agent: Option<Uuid>,
        mut page: PageRequest,
    ) -> Result<Vec<PhoneNumberAssignment>, EngineError> {
        page.limit = clamp_limit(page.limit);
        self.query(move |q| async move { Ok(q.list_phone_numbers(org, agent, &page).await?) })
            .await
    }

    /// Releases a number (calls to it are rejected from then on).
    pub async fn delete_phone_number(
        &self,
        org: OrganizationId,
        id: Uuid,
    ) -> Result<(), EngineError> {
        let found = self
            .query(move |q| async move { Ok(q.delete_phone_number(org, id).await?) })
            .await?;
        found.then_some(()).ok_or(EngineError::NotFound {
            what: "phone number",
        })
    }
}
