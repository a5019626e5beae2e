//! The agents and customers every call start reads (the agent's configuration to check it
//! and to build the conversation, the customer for the model's context), kept in memory for
//! a short while so a burst of calls does not read the same rows over and over.
//!
//! An entry lives `lookup_ttl` (5 s by default). Updates and deletes through this node's
//! engine drop the entry at once (before and after the write; a read that raced the write
//! may put the old row back until it expires); on another node of a cluster the change shows
//! once the entry expires there. Only rows that exist are kept (a miss reads again). Hits and misses
//! are counted in `iace_lookups_total{kind, result}`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use crate::catalog::{Agent, Customer};
use crate::machine::OrganizationId;

/// Entries kept per kind at most; a full map starts over (the next reads refill it).
const MAX_ENTRIES: usize = 20_000;

type Key = (OrganizationId, Uuid);

/// Recently read agents and customers.
pub(crate) struct Lookups {
    ttl: Duration,
    agents: Mutex<HashMap<Key, (Instant, Agent)>>,
    customers: Mutex<HashMap<Key, (Instant, Customer)>>,
}

fn get<T: Clone>(map: &Mutex<HashMap<Key, (Instant, T)>>, key: Key, ttl: Duration) -> Option<T> {
    let map = map.lock().unwrap_or_else(|p| p.into_inner());
    map.get(&key)
        .filter(|(at, _)| at.elapsed() < ttl)
        .map(|(_, v)| v.clone())
}

fn put<T>(map: &Mutex<HashMap<Key, (Instant, T)>>, key: Key, value: T) {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= MAX_ENTRIES {
        map.clear();
    }
    map.insert(key, (Instant::now(), value));
}

impl Lookups {
    /// Keeps entries `ttl` (zero: keeps nothing).
    pub(crate) fn new(ttl: Duration) -> Self {
        Lookups {
            ttl,
            agents: Mutex::new(HashMap::new()),
            customers: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn agent(&self, org: OrganizationId, id: Uuid) -> Option<Agent> {
        get(&self.agents, (org, id), self.ttl)
    }

    pub(crate) fn keep_agent(&self, agent: &Agent) {
        if !self.ttl.is_zero() {
            put(
                &self.agents,
                (agent.organization_id, agent.id),
                agent.clone(),
            );
        }
    }

    pub(crate) fn forget_agent(&self, org: OrganizationId, id: Uuid) {
        self.agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(org, id));
    }

    pub(crate) fn customer(&self, org: OrganizationId, id: Uuid) -> Option<Customer> {
        get(&self.customers, (org, id), self.ttl)
    }

    pub(crate) fn keep_customer(&self, customer: &Customer) {
        if !self.ttl.is_zero() {
            put(
                &self.customers,
                (customer.organization_id, customer.id),
                customer.clone(),
            );
        }
    }

    pub(crate) fn forget_customer(&self, org: OrganizationId, id: Uuid) {
        self.customers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(org, id));
    }
}
