//! [`MemoryStore`]: the in-memory database. It implements the call, catalog and cluster store
//! traits with the same semantics as the Postgres store (compare-and-set on version and shard
//! epoch, idempotency keys, inbox dedupe, tenant scoping, leases with a TTL; the cluster side
//! is in `testkit::cluster`).
//!
//! The store has a clock of its own, tokio's (so `tokio::time::pause` drives it in the
//! simulations), never a node's [`Clock`](crate::ports::Clock): lease expiries and heartbeat
//! ages are judged by it, as Postgres judges them by its own.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::time::Instant;
use uuid::Uuid;

use crate::catalog::{
    Agent, AgentPatch, AgentStatus, Customer, CustomerPatch, Organization, PhoneNumberAssignment,
};
use crate::machine::{Call, CallId, OrganizationId, PhoneNumber};
use crate::ports::calls::{
    shard_of, CallStore, IdempotencyKey, InboxInsert, InboxItem, InboxRow, InsertOutcome,
    JournalEntry, StoreError, StoreResult,
};
use crate::ports::catalog::{CallFilter, CatalogWriteError, PageRequest, QueryStore};

/// The lease of a forced take ([`CallStore::acquire_shards`]), as in Postgres.
const FORCED_LEASE: Duration = Duration::from_secs(60 * 60);

/// What the store's clock reads as wall time when it is first read (the wall time of the
/// store's clock only shows in `Member::heartbeat_at`; it is fixed so that runs repeat).
const STORE_EPOCH_SECS: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

/// A shard lease: the row of `shard_lease`.
pub(super) struct LeaseRow {
    /// `None` once released (or never taken); the epoch stays.
    pub(super) owner: Option<String>,
    /// The fencing token every call write of the shard is checked against.
    pub(super) epoch: i64,
    /// When the lease lapses, by the store's clock.
    pub(super) expires_at: Instant,
}

/// A member: the row of `cluster_node`.
pub(super) struct NodeRow {
    pub(super) url: String,
    pub(super) incarnation: uuid::Uuid,
    pub(super) started_at: DateTime<Utc>,
    /// By the store's clock.
    pub(super) heartbeat_at: Instant,
    pub(super) draining: bool,
    /// Left gracefully since its last heartbeat.
    pub(super) left: bool,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) leases: HashMap<u16, LeaseRow>,
    /// Members by node id (ordered as the store answers them).
    pub(super) nodes: BTreeMap<String, NodeRow>,
    orgs: HashMap<Uuid, Organization>,
    keys: HashMap<String, OrganizationId>,
    agents: HashMap<Uuid, Agent>,
    customers: HashMap<Uuid, Customer>,
    numbers: HashMap<Uuid, PhoneNumberAssignment>,
    webhook_endpoints: HashMap<Uuid, crate::catalog::webhooks::WebhookEndpoint>,
    pub(super) calls: HashMap<CallId, Call>,
    idempotency: HashMap<(OrganizationId, String), (CallId, String)>,
    journal: HashMap<CallId, Vec<JournalEntry>>,
    inbox: BTreeMap<(String, String), (u64, InboxItem, bool)>,
    /// Rows without a call or without a fact (see `InboxRow`): `(received, row, processed)`.
    parked: BTreeMap<(String, String), (u64, InboxRow, bool)>,
    received: u64,
}

/// In-memory [`CallStore`] + [`QueryStore`].
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    down: AtomicBool,
    appends: AtomicU64,
    /// The instant of the store's clock that reads as the store's epoch: set on the first
    /// read, so that every instant the store keeps is at or after it.
    origin: OnceLock<Instant>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a database outage: every operation fails with `Unavailable` while `down`.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Number of successful `append`s so far.
    pub fn append_count(&self) -> u64 {
        self.appends.load(Ordering::SeqCst)
    }

    /// The full journal of a call, any organization (test inspection).
    pub fn journal(&self, id: CallId) -> Vec<JournalEntry> {
        self.lock().journal.get(&id).cloned().unwrap_or_default()
    }

    /// The snapshot of a call, any organization (test inspection).
    pub fn snapshot(&self, id: CallId) -> Option<Call> {
        self.lock().calls.get(&id).cloned()
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store's clock.
    pub(super) fn now(&self) -> Instant {
        let now = Instant::now();
        self.origin.get_or_init(|| now);
        now
    }

    /// An instant of the store's clock as wall time.
    pub(super) fn wall(&self, at: Instant) -> DateTime<Utc> {
        let origin = *self.origin.get_or_init(|| at);
        let epoch = DateTime::from_timestamp(STORE_EPOCH_SECS, 0).unwrap_or_default();
        epoch + chrono::Duration::from_std(at.saturating_duration_since(origin)).unwrap_or_default()
    }

    pub(super) fn check(&self) -> StoreResult<()> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("memory store is down".into()))
        } else {
            Ok(())
        }
    }
}

fn lease_epoch(s: &State, call: &Call) -> i64 {
    s.leases.get(&shard_of(call.spec.id)).map_or(0, |l| l.epoch)
}

fn page<T: Clone>(
    rows: impl Iterator<Item = T>,
    key: impl Fn(&T) -> (DateTime<Utc>, Uuid),
    limit: i64,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Vec<T> {
    let mut rows: Vec<T> = rows.filter(|r| after.is_none_or(|a| key(r) < a)).collect();
    rows.sort_by_key(|r| std::cmp::Reverse(key(r)));
    rows.truncate(usize::try_from(limit.max(0)).unwrap_or(0));
    rows
}

#[async_trait]
impl CallStore for MemoryStore {
    async fn acquire_shards(&self, node: &str, shards: &[u16]) -> StoreResult<Vec<i64>> {
        self.check()?;
        let expires_at = self.now() + FORCED_LEASE;
        let mut s = self.lock();
        Ok(shards
            .iter()
            .map(|shard| {
                let lease = s.leases.entry(*shard).or_insert(LeaseRow {
                    owner: None,
                    epoch: 0,
                    expires_at,
                });
                lease.owner = Some(node.to_owned());
                lease.epoch += 1;
                lease.expires_at = expires_at;
                lease.epoch
            })
            .collect())
    }

    async fn owns_shard(&self, shard: u16, epoch: i64) -> StoreResult<bool> {
        self.check()?;
        Ok(self
            .lock()
            .leases
            .get(&shard)
            .is_some_and(|l| l.epoch == epoch))
    }

    async fn insert_call(
        &self,
        call: &Call,
        created: &JournalEntry,
        idempotency: Option<&IdempotencyKey>,
        max_live: Option<u32>,
    ) -> StoreResult<InsertOutcome> {
        self.check()?;
        let mut s = self.lock();
        if lease_epoch(&s, call) != call.owner_epoch {
            return Err(StoreError::Stale);
        }
        let org = call.spec.organization_id;
        if let Some(key) = idempotency {
            if let Some((id, fp)) = s.idempotency.get(&(org, key.key.clone())) {
                return Ok(if *fp == key.fingerprint {
                    InsertOutcome::Existing(Box::new(s.calls[id].clone()))
                } else {
                    InsertOutcome::IdempotencyMismatch
                });
            }
        }
        if s.agents
            .get(&call.spec.agent_id)
            .is_none_or(|a| a.organization_id != org)
        {
            return Ok(InsertOutcome::UnknownAgent);
        }
        if let Some(c) = call.spec.customer_id {
            if s.customers.get(&c).is_none_or(|c| c.organization_id != org) {
                return Ok(InsertOutcome::UnknownCustomer);
            }
        }
        if s.calls.contains_key(&call.spec.id) {
            return Err(StoreError::Stale);
        }
        if let Some(max) = max_live {
            let live = s
                .calls
                .values()
                .filter(|c| c.spec.organization_id == org && !c.status.is_terminal())
                .count() as u64;
            if live >= u64::from(max) {
                return Ok(InsertOutcome::LiveLimit { live });
            }
        }
        if let Some(key) = idempotency {
            s.idempotency.insert(
                (org, key.key.clone()),
                (call.spec.id, key.fingerprint.clone()),
            );
        }
        s.calls.insert(call.spec.id, call.clone());
        s.journal.insert(call.spec.id, vec![created.clone()]);
        Ok(InsertOutcome::Created)
    }

    async fn append(
        &self,
        call: &Call,
        expected_version: i64,
        entry: &JournalEntry,
        inbox: Option<(&str, &str)>,
    ) -> StoreResult<()> {
        self.check()?;
        let mut s = self.lock();
        let current = s.calls.get(&call.spec.id).ok_or(StoreError::Stale)?;
        if current.version != expected_version
            || lease_epoch(&s, call) != call.owner_epoch
            || entry.seq != call.version
        {
            return Err(StoreError::Stale);
        }
        s.calls.insert(call.spec.id, call.clone());
        s.journal
            .entry(call.spec.id)
            .or_default()
            .push(entry.clone());
        if let Some((vendor, id)) = inbox {
            if let Some(row) = s.inbox.get_mut(&(vendor.to_owned(), id.to_owned())) {
                row.2 = true;
            }
        }
        self.appends.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn load_call(&self, id: CallId) -> StoreResult<Option<Call>> {
        self.check()?;
        Ok(self.lock().calls.get(&id).cloned())
    }

    async fn live_calls(&self, shards: &[u16]) -> StoreResult<Vec<CallId>> {
        self.check()?;
        let s = self.lock();
        let mut ids: Vec<CallId> = s
            .calls
            .values()
            .filter(|c| {
                (!c.status.is_terminal() || c.release_pending || c.strays_up())
                    && shards.contains(&shard_of(c.spec.id))
            })
            .map(|c| c.spec.id)
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn inbox_insert(&self, item: &InboxItem) -> StoreResult<bool> {
        self.check()?;
        let mut s = self.lock();
        let key = (item.vendor.clone(), item.event_id.clone());
        if s.inbox.contains_key(&key) || !s.calls.contains_key(&item.call_id) {
            return Ok(false);
        }
        s.received += 1;
        let n = s.received;
        s.inbox.insert(key, (n, item.clone(), false));
        Ok(true)
    }

    async fn inbox_record(&self, row: &InboxRow) -> StoreResult<InboxInsert> {
        self.check()?;
        let mut s = self.lock();
        let key = (row.vendor.clone(), row.event_id.clone());
        if s.inbox.contains_key(&key) || s.parked.contains_key(&key) {
            return Ok(InboxInsert::Duplicate);
        }
        if row.call_id.is_some_and(|id| !s.calls.contains_key(&id)) {
            return Ok(InboxInsert::UnknownCall);
        }
        s.received += 1;
        let n = s.received;
        match row.item() {
            Some(item) => {
                s.inbox.insert(key, (n, item, false));
            }
            None => {
                let processed = row.event.is_none();
                s.parked.insert(key, (n, row.clone(), processed));
            }
        }
        Ok(InboxInsert::New)
    }

    async fn inbox_adopt(
        &self,
        vendor: &str,
        carrier_leg: &str,
        call_id: CallId,
    ) -> StoreResult<Vec<InboxItem>> {
        self.check()?;
        let mut s = self.lock();
        if !s.calls.contains_key(&call_id) {
            return Ok(Vec::new());
        }
        let mut waiting: Vec<(u64, InboxItem)> = Vec::new();
        for (n, row, processed) in s.parked.values_mut() {
            if *processed
                || row.call_id.is_some()
                || row.vendor != vendor
                || row.carrier_leg.as_deref() != Some(carrier_leg)
            {
                continue;
            }
            row.call_id = Some(call_id);
            if let Some(item) = row.item() {
                *processed = true;
                waiting.push((*n, item));
            }
        }
        waiting.sort_by_key(|(n, _)| *n);
        for (n, item) in &waiting {
            let key = (item.vendor.clone(), item.event_id.clone());
            s.parked.remove(&key);
            s.inbox.insert(key, (*n, item.clone(), false));
        }
        Ok(waiting.into_iter().map(|(_, item)| item).collect())
    }

    async fn call_for_leg(&self, carrier_leg: &str) -> StoreResult<Option<CallId>> {
        self.check()?;
        let s = self.lock();
        let mut ids: Vec<CallId> = s
            .calls
            .values()
            .filter(|c| c.carrier_call_id.as_deref() == Some(carrier_leg))
            .map(|c| c.spec.id)
            .collect();
        ids.sort();
        Ok(ids.first().copied())
    }

    async fn inbox_mark_processed(&self, vendor: &str, event_id: &str) -> StoreResult<()> {
        self.check()?;
        if let Some(row) = self
            .lock()
            .inbox
            .get_mut(&(vendor.to_owned(), event_id.to_owned()))
        {
            row.2 = true;
        }
        Ok(())
    }

    async fn inbox_pending(&self, limit: i64) -> StoreResult<Vec<InboxItem>> {
        self.check()?;
        let s = self.lock();
        let mut rows: Vec<_> = s.inbox.values().filter(|r| !r.2).collect();
        rows.sort_by_key(|r| r.0);
        Ok(rows
            .into_iter()
            .take(usize::try_from(limit.max(0)).unwrap_or(0))
            .map(|r| r.1.clone())
            .collect())
    }

    async fn ping(&self) -> StoreResult<()> {
        self.check()
    }
}

#[async_trait]
impl QueryStore for MemoryStore {
    async fn create_organization(
        &self,
        org: &Organization,
        _key_id: Uuid,
        key_hash: &str,
        _key_prefix: &str,
    ) -> StoreResult<()> {
        self.check()?;
        let mut s = self.lock();
        s.orgs.insert(org.id, org.clone());
        s.keys.insert(key_hash.to_owned(), org.id);
        Ok(())
    }

    async fn get_call(&self, org: OrganizationId, id: CallId) -> StoreResult<Option<Call>> {
        self.check()?;
        Ok(self
            .lock()
            .calls
            .get(&id)
            .filter(|c| c.spec.organization_id == org)
            .cloned())
    }

    async fn list_calls(&self, org: OrganizationId, f: &CallFilter) -> StoreResult<Vec<Call>> {
        self.check()?;
        let s = self.lock();
        let rows = s.calls.values().filter(|c| {
            c.spec.organization_id == org
                && f.status.is_none_or(|st| c.status == st)
                && f.agent_id.is_none_or(|a| c.spec.agent_id == a)
                && f.customer_id
                    .is_none_or(|cu| c.spec.customer_id == Some(cu))
                // No analyses are kept here: a filter on their verdict finds nothing.
                && f.success.is_none()
        });
        Ok(page(
            rows.cloned(),
            |c| (c.created_at, c.spec.id),
            f.limit,
            f.after,
        ))
    }

    async fn call_events(
        &self,
        org: OrganizationId,
        id: CallId,
    ) -> StoreResult<Option<Vec<JournalEntry>>> {
        self.check()?;
        let s = self.lock();
        Ok(s.calls
            .get(&id)
            .filter(|c| c.spec.organization_id == org)
            .map(|_| s.journal.get(&id).cloned().unwrap_or_default()))
    }

    async fn insert_agent(&self, agent: &Agent) -> StoreResult<()> {
        self.check()?;
        self.lock().agents.insert(agent.id, agent.clone());
        Ok(())
    }

    async fn get_agent(&self, org: OrganizationId, id: Uuid) -> StoreResult<Option<Agent>> {
        self.check()?;
        Ok(self
            .lock()
            .agents
            .get(&id)
            .filter(|a| a.organization_id == org)
            .cloned())
    }

    async fn list_agents(&self, org: OrganizationId, p: &PageRequest) -> StoreResult<Vec<Agent>> {
        self.check()?;
        let s = self.lock();
        let rows = s
            .agents
            .values()
            .filter(|a| a.organization_id == org)
            .cloned();
        Ok(page(rows, |a| (a.created_at, a.id), p.limit, p.after))
    }

    async fn update_agent(
        &self,
        org: OrganizationId,
        id: Uuid,
        patch: &AgentPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Agent>> {
        self.check()?;
        let mut s = self.lock();
        Ok(s.agents
            .get_mut(&id)
            .filter(|a| a.organization_id == org)
            .map(|a| {
                patch.apply(a, now);
                a.clone()
            }))
    }

    async fn delete_agent(
        &self,
        org: OrganizationId,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.check()?;
        let mut s = self.lock();
        if s.agents.get(&id).is_none_or(|a| a.organization_id != org) {
            return Ok(false);
        }
        if s.calls.values().any(|c| c.spec.agent_id == id) {
            if let Some(a) = s.agents.get_mut(&id) {
                a.status = AgentStatus::Archived;
                a.updated_at = now;
            }
        } else {
            s.agents.remove(&id);
        }
        Ok(true)
    }

    async fn insert_customer(&self, customer: &Customer) -> StoreResult<bool> {
        self.check()?;
        let mut s = self.lock();
        let taken = s
            .customers
            .values()
            .any(|c| c.organization_id == customer.organization_id && c.phone == customer.phone);
        if taken {
            return Ok(false);
        }
        s.customers.insert(customer.id, customer.clone());
        Ok(true)
    }

    async fn get_customer(&self, org: OrganizationId, id: Uuid) -> StoreResult<Option<Customer>> {
        self.check()?;
        Ok(self
            .lock()
            .customers
            .get(&id)
            .filter(|c| c.organization_id == org)
            .cloned())
    }

    async fn list_customers(
        &self,
        org: OrganizationId,
        p: &PageRequest,
    ) -> StoreResult<Vec<Customer>> {
        self.check()?;
        let s = self.lock();
        let rows = s
            .customers
            .values()
            .filter(|c| c.organization_id == org)
            .cloned();
        Ok(page(rows, |c| (c.created_at, c.id), p.limit, p.after))
    }

    async fn update_customer(
        &self,
        org: OrganizationId,
        id: Uuid,
        patch: &CustomerPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Customer>, CatalogWriteError> {
        self.check()?;
        let mut s = self.lock();
        let Some(mut updated) = s
            .customers
            .get(&id)
            .filter(|c| c.organization_id == org)
            .cloned()
        else {
            return Ok(None);
        };
        patch.apply(&mut updated, now);
        let taken = s
            .customers
            .values()
            .any(|c| c.id != id && c.organization_id == org && c.phone == updated.phone);
        if taken {
            return Err(CatalogWriteError::Conflict(format!(
                "a customer with phone {} already exists",
                updated.phone
            )));
        }
        s.customers.insert(id, updated.clone());
        Ok(Some(updated))
    }

    async fn delete_customer(&self, org: OrganizationId, id: Uuid) -> StoreResult<bool> {
        self.check()?;
        let mut s = self.lock();
        if s.customers
            .get(&id)
            .is_none_or(|c| c.organization_id != org)
        {
            return Ok(false);
        }
        s.customers.remove(&id);
        for call in s.calls.values_mut() {
            if call.spec.customer_id == Some(id) {
                call.spec.customer_id = None;
            }
        }
        Ok(true)
    }

    async fn customer_by_phone(
        &self,
        org: OrganizationId,
        phone: &PhoneNumber,
    ) -> StoreResult<Option<Uuid>> {
        self.check()?;
        Ok(self
            .lock()
            .customers
            .values()
            .find(|c| c.organization_id == org && &c.phone == phone)
            .map(|c| c.id))
    }

    async fn insert_phone_number(&self, number: &PhoneNumberAssignment) -> StoreResult<bool> {
        self.check()?;
        let mut s = self.lock();
        if s.numbers.values().any(|n| n.number == number.number) {
            return Ok(false);
        }
        s.numbers.insert(number.id, number.clone());
        Ok(true)
    }

    async fn list_phone_numbers(
        &self,
        org: OrganizationId,
        agent: Option<Uuid>,
        p: &PageRequest,
    ) -> StoreResult<Vec<PhoneNumberAssignment>> {
        self.check()?;
        let s = self.lock();
        let rows = s
            .numbers
            .values()
            .filter(|n| n.organization_id == org && agent.is_none_or(|a| a == n.agent_id))
            .cloned();
        Ok(page(rows, |n| (n.created_at, n.id), p.limit, p.after))
    }

    async fn delete_phone_number(&self, org: OrganizationId, id: Uuid) -> StoreResult<bool> {
        self.check()?;
        let mut s = self.lock();
        if s.numbers.get(&id).is_none_or(|n| n.organization_id != org) {
            return Ok(false);
        }
        s.numbers.remove(&id);
        Ok(true)
    }

    async fn insert_webhook_endpoint(
        &self,
        endpoint: &crate::catalog::webhooks::WebhookEndpoint,
    ) -> StoreResult<()> {
        self.check()?;
        self.lock()
            .webhook_endpoints
            .insert(endpoint.id, endpoint.clone());
        Ok(())
    }

    async fn get_webhook_endpoint(
        &self,
        org: OrganizationId,
        id: Uuid,
    ) -> StoreResult<Option<crate::catalog::webhooks::WebhookEndpoint>> {
        self.check()?;
        Ok(self
            .lock()
            .webhook_endpoints
            .get(&id)
            .filter(|e| e.organization_id == org)
            .cloned())
    }

    async fn list_webhook_endpoints(
        &self,
        org: OrganizationId,
        p: &PageRequest,
    ) -> StoreResult<Vec<crate::catalog::webhooks::WebhookEndpoint>> {
        self.check()?;
        let s = self.lock();
        let rows = s
            .webhook_endpoints
            .values()
            .filter(|e| e.organization_id == org)
            .cloned();
        Ok(page(rows, |e| (e.created_at, e.id), p.limit, p.after))
    }

    async fn update_webhook_endpoint(
        &self,
        endpoint: &crate::catalog::webhooks::WebhookEndpoint,
        read_at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.check()?;
        let mut s = self.lock();
        match s.webhook_endpoints.get_mut(&endpoint.id) {
            Some(stored)
                if stored.organization_id == endpoint.organization_id
                    && stored.updated_at == read_at =>
            {
                *stored = endpoint.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn delete_webhook_endpoint(&self, org: OrganizationId, id: Uuid) -> StoreResult<bool> {
        self.check()?;
        let mut s = self.lock();
        if s.webhook_endpoints
            .get(&id)
            .is_none_or(|e| e.organization_id != org)
        {
            return Ok(false);
        }
        s.webhook_endpoints.remove(&id);
        Ok(true)
    }

    async fn route_number(
        &self,
        number: &PhoneNumber,
    ) -> StoreResult<Option<PhoneNumberAssignment>> {
        self.check()?;
        Ok(self
            .lock()
            .numbers
            .values()
            .find(|n| &n.number == number)
            .cloned())
    }
}
