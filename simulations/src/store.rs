//! The store of the simulated world: the engine's in-memory store (same compare-and-set
//! semantics as Postgres: version and epoch fencing, idempotency keys, inbox dedupe) behind a
//! fault injector, with every committed write fed to the invariant checker.
//!
//! Faults (when the profile has them): failed operations, slow operations (past the engine's
//! timeout), ambiguous commits (written, but the caller sees an error, as when the connection
//! drops after COMMIT), and panics of the call actor in the middle of a transition (before or
//! after its write commits).
//!
//! Each node of a cluster reaches the one store through its own view ([`SimStore::view`]) and
//! [`Link`]: a partition cuts the link (the node's every operation fails, at once or after
//! hanging, while the store and the other nodes carry on), a slow link delays the node's
//! membership and lease calls both ways.

use iace_actors::catalog::webhooks::WebhookEndpoint;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use iace_actors::catalog::{
    Agent, AgentPatch, Customer, CustomerPatch, Organization, PhoneNumberAssignment,
};
use iace_actors::engine::{GroupCommit, GroupCommitConfig};
use iace_actors::machine::{Call, CallId, OrganizationId, PhoneNumber};
use iace_actors::ports::{
    Append, CallFilter, CallStore, CatalogWriteError, ClaimKind, Claimed, ClusterStore,
    IdempotencyKey, InboxInsert, InboxItem, InboxRow, InsertOutcome, JournalEntry, Lease, Member,
    NodeInfo, PageRequest, QueryStore, StoreError, StoreResult,
};
use iace_actors::testkit::MemoryStore;
use uuid::Uuid;

use crate::core::Core;

/// Message of every panic the simulation injects (the panic hook keeps them quiet).
pub const INJECTED_PANIC: &str = "sim: injected panic";

pub(crate) struct SimStore {
    pub inner: Arc<MemoryStore>,
    core: Arc<Core>,
    /// The network between one node and the store (`None`: the world's own view, never cut).
    link: Option<Arc<Link>>,
    /// The engine's journal writer (group commit) its appends go through, when it has one:
    /// they reach this store's [`CallStore::append_batch`] in batches.
    journal: Option<Arc<GroupCommit>>,
}

/// The network between one node and the store: a partition cuts it (every operation of the
/// node fails, the store is untouched), a slow link delays the node's membership and lease
/// calls (its heartbeats and renewals arrive late, or after the engine's timeout).
#[derive(Debug, Default)]
pub(crate) struct Link {
    cut: std::sync::atomic::AtomicBool,
    /// While cut: requests hang until the caller gives up (packets dropped) rather than
    /// failing at once (connection refused).
    blackhole: std::sync::atomic::AtomicBool,
    slow_ms: std::sync::atomic::AtomicU64,
}

/// How long a request into a black hole hangs before its connection reports the failure
/// (longer than the engine's timeout, which gives up first).
const BLACKHOLE_MS: u64 = 30_000;

impl Link {
    /// Cuts (or heals) the link; `blackhole`: requests hang instead of failing at once.
    pub fn set_cut(&self, cut: bool, blackhole: bool) {
        self.blackhole
            .store(blackhole, std::sync::atomic::Ordering::SeqCst);
        self.cut.store(cut, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.cut.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn set_slow_ms(&self, ms: u64) {
        self.slow_ms.store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    fn slow_ms(&self) -> u64 {
        self.slow_ms.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl SimStore {
    pub fn new(core: Arc<Core>) -> Self {
        SimStore {
            inner: Arc::new(MemoryStore::new()),
            core,
            link: None,
            journal: None,
        }
    }

    /// One node's view of the same store, through `link`.
    pub fn view(&self, link: Arc<Link>) -> SimStore {
        SimStore {
            inner: self.inner.clone(),
            core: self.core.clone(),
            link: Some(link),
            journal: None,
        }
    }

    /// This view with a journal writer of its own in front of its appends (group commit, as
    /// the server runs it): the engine of one start of the node writes through it. One writer
    /// (the server runs four): a slow batch holds every other append back, so batches grow
    /// large and the faults meet them.
    pub fn with_group_commit(self: &Arc<Self>) -> SimStore {
        let config = GroupCommitConfig {
            writers: 1,
            ..GroupCommitConfig::default()
        };
        let journal = GroupCommit::start(self.clone(), config, None)
            .expect("a journal writer without metrics");
        SimStore {
            inner: self.inner.clone(),
            core: self.core.clone(),
            link: self.link.clone(),
            journal: Some(journal),
        }
    }

    /// Writes one append as the store commits it: the checker sees every committed write.
    async fn commit_append(
        &self,
        call: &Call,
        expected_version: i64,
        entry: &JournalEntry,
        inbox: Option<(&str, &str)>,
    ) -> StoreResult<()> {
        let id = call.spec.id;
        if let Err(e) = self
            .inner
            .append(call, expected_version, entry, inbox)
            .await
        {
            self.core.log(format!(
                "append {id} seq={} `{}` refused: {e}",
                entry.seq,
                entry.event.kind()
            ));
            return Err(e);
        }
        self.core.log(format!(
            "append {id} seq={} `{}` -> {} epoch={}{}",
            entry.seq,
            entry.event.kind(),
            call.status,
            call.owner_epoch,
            inbox.map_or(String::new(), |(v, e)| format!(" inbox={v}/{e}"))
        ));
        let checked = self.core.checker().on_append(call, entry, inbox);
        if let Err((invariant, detail)) = checked {
            self.core.violate(invariant, detail);
        }
        Ok(())
    }

    /// Fails while the node is cut off from the store: at once, or after hanging (a black
    /// hole).
    async fn reach(&self, op: &'static str) -> StoreResult<()> {
        let Some(link) = self.link.as_ref().filter(|l| l.is_cut()) else {
            return Ok(());
        };
        if link.blackhole.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(BLACKHOLE_MS)).await;
        }
        Err(StoreError::Unavailable(format!(
            "{op}: no route to the database (partition)"
        )))
    }

    /// A membership or lease call: the link's latency on the way there, then the usual faults.
    /// A slow link's delay is split at random between the request and its answer, so that a
    /// request may reach the store late, or reach it in time and its answer come back after
    /// the engine gave up (a claim or renewal the node does not know it made).
    async fn before_cluster(&self, op: &'static str) -> StoreResult<Duration> {
        let slow = self.link.as_ref().map_or(0, |l| l.slow_ms());
        let mut back = 0;
        if slow > 0 {
            let there = self.core.draw(0, slow + 1);
            back = slow - there;
            tokio::time::sleep(Duration::from_millis(there)).await;
        }
        self.before(op).await?;
        Ok(Duration::from_millis(back))
    }

    /// The rest of the link's latency, on the way back (the answer of a membership or lease
    /// call); a cut link loses the answer.
    async fn after_cluster(&self, op: &'static str, back: Duration) -> StoreResult<()> {
        if !back.is_zero() {
            tokio::time::sleep(back).await;
        }
        self.reach(op).await
    }

    /// Latency and plain failures, decided before the operation runs.
    async fn before(&self, op: &'static str) -> StoreResult<()> {
        self.reach(op).await?;
        let r = self.core.rates;
        if self.core.fault("store_slow", r.store_slow) {
            let ms = self.core.draw(1_000, 8_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        } else if r.store_jitter_ms > 0 && self.core.faults_on() {
            let ms = self.core.draw(0, r.store_jitter_ms);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if self.core.fault("store_fail", r.store_fail) {
            return Err(StoreError::Unavailable(format!("{op}: injected failure")));
        }
        self.reach(op).await
    }

    /// After a commit: maybe lose the answer.
    fn ambiguous(&self, op: &'static str) -> StoreResult<()> {
        if self
            .core
            .fault("store_ambiguous", self.core.rates.store_ambiguous)
        {
            return Err(StoreError::Unavailable(format!(
                "{op}: connection lost after commit (injected)"
            )));
        }
        Ok(())
    }

    fn maybe_panic(&self, when: &str) {
        if self
            .core
            .fault("panic_in_transition", self.core.rates.panic_in_transition)
        {
            self.core.log(format!("call actor panics {when}"));
            std::panic::panic_any(format!("{INJECTED_PANIC} {when}"));
        }
    }
}

#[async_trait]
impl CallStore for SimStore {
    async fn owns_shard(&self, shard: u16, epoch: i64) -> StoreResult<bool> {
        self.before("owns_shard").await?;
        self.inner.owns_shard(shard, epoch).await
    }

    async fn acquire_shards(&self, node: &str, shards: &[u16]) -> StoreResult<Vec<i64>> {
        self.before("acquire_shards").await?;
        let epochs = self.inner.acquire_shards(node, shards).await?;
        self.core.log(format!(
            "leases {node}: {} shards, epoch {}",
            epochs.len(),
            epochs.first().copied().unwrap_or(0)
        ));
        Ok(epochs)
    }

    async fn insert_call(
        &self,
        call: &Call,
        created: &JournalEntry,
        idempotency: Option<&IdempotencyKey>,
        max_live: Option<u32>,
    ) -> StoreResult<InsertOutcome> {
        self.before("insert_call").await?;
        let outcome = self
            .inner
            .insert_call(call, created, idempotency, max_live)
            .await?;
        let id = call.spec.id;
        match &outcome {
            InsertOutcome::Created => {
                self.core.log(format!(
                    "insert {id} {} to {}",
                    call.spec.direction.as_str(),
                    call.spec.to
                ));
                let checked = self.core.checker().on_insert(call, created);
                if let Err((invariant, detail)) = checked {
                    self.core.violate(invariant, detail);
                }
                self.ambiguous("insert_call")?;
            }
            InsertOutcome::Existing(c) => self.core.log(format!("insert replay {}", c.spec.id)),
            other => self.core.log(format!("insert refused {other:?}")),
        }
        Ok(outcome)
    }

    async fn append(
        &self,
        call: &Call,
        expected_version: i64,
        entry: &JournalEntry,
        inbox: Option<(&str, &str)>,
    ) -> StoreResult<()> {
        if let Some(journal) = &self.journal {
            // Through the engine's journal writer: the batch it lands in meets the faults.
            self.maybe_panic("before its write");
            journal.append(call, expected_version, entry, inbox).await?;
            self.core
                .answered(call.spec.id, entry.seq, entry.event.kind());
            self.maybe_panic("after its write committed");
            return Ok(());
        }
        self.before("append").await?;
        self.maybe_panic("before its write");
        self.commit_append(call, expected_version, entry, inbox)
            .await?;
        self.maybe_panic("after its write committed");
        self.ambiguous("append")?;
        self.core
            .answered(call.spec.id, entry.seq, entry.event.kind());
        Ok(())
    }

    /// A batch of the journal writer meets the faults as one transaction: it fails or is slow
    /// as a whole, one of its appends may be refused alone (the others commit), and the
    /// answer of the whole batch may be lost after it committed.
    async fn append_batch(&self, batch: &[Append]) -> Vec<StoreResult<()>> {
        if let Err(e) = self.before("append_batch").await {
            return batch.iter().map(|_| Err(e.clone())).collect();
        }
        let refused = (batch.len() > 1
            && self
                .core
                .fault("store_fail_entry", self.core.rates.store_fail))
        .then(|| self.core.draw(0, batch.len() as u64) as usize);
        let mut results = Vec::with_capacity(batch.len());
        for (i, a) in batch.iter().enumerate() {
            if refused == Some(i) {
                self.core.log(format!(
                    "append {} seq={} refused alone in its batch (injected)",
                    a.call.spec.id, a.entry.seq
                ));
                results.push(Err(StoreError::Unavailable(
                    "append_batch: injected failure of one entry".into(),
                )));
                continue;
            }
            results.push(
                self.commit_append(&a.call, a.expected_version, &a.entry, a.inbox_ref())
                    .await,
            );
        }
        if let Err(e) = self.ambiguous("append_batch") {
            return batch.iter().map(|_| Err(e.clone())).collect();
        }
        results
    }

    async fn load_call(&self, id: CallId) -> StoreResult<Option<Call>> {
        self.before("load_call").await?;
        self.inner.load_call(id).await
    }

    async fn live_calls(&self, shards: &[u16]) -> StoreResult<Vec<CallId>> {
        self.before("live_calls").await?;
        self.inner.live_calls(shards).await
    }

    async fn inbox_insert(&self, item: &InboxItem) -> StoreResult<bool> {
        self.before("inbox_insert").await?;
        let new = self.inner.inbox_insert(item).await?;
        if new {
            self.ambiguous("inbox_insert")?;
        }
        Ok(new)
    }

    async fn inbox_record(&self, row: &InboxRow) -> StoreResult<InboxInsert> {
        self.before("inbox_record").await?;
        let outcome = self.inner.inbox_record(row).await?;
        if outcome == InboxInsert::New {
            self.ambiguous("inbox_record")?;
        }
        Ok(outcome)
    }

    async fn inbox_adopt(
        &self,
        vendor: &str,
        carrier_leg: &str,
        call_id: CallId,
    ) -> StoreResult<Vec<InboxItem>> {
        self.before("inbox_adopt").await?;
        self.inner.inbox_adopt(vendor, carrier_leg, call_id).await
    }

    async fn call_for_leg(&self, carrier_leg: &str) -> StoreResult<Option<CallId>> {
        self.before("call_for_leg").await?;
        self.inner.call_for_leg(carrier_leg).await
    }

    async fn inbox_mark_processed(&self, vendor: &str, event_id: &str) -> StoreResult<()> {
        self.before("inbox_mark_processed").await?;
        self.inner.inbox_mark_processed(vendor, event_id).await
    }

    async fn inbox_pending(&self, limit: i64) -> StoreResult<Vec<InboxItem>> {
        self.before("inbox_pending").await?;
        self.inner.inbox_pending(limit).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.before("ping").await
    }
}

/// Membership and leases: the memory store's, judged by its clock (tokio's, paused in the
/// simulation), behind the same latency and failure faults as the call path, so that a node
/// may miss heartbeats and renewals and its leases lapse.
#[async_trait]
impl ClusterStore for SimStore {
    async fn register(&self, node: &NodeInfo) -> StoreResult<()> {
        self.before_cluster("register").await?;
        self.inner.register(node).await
    }

    async fn live_call_counts(&self) -> StoreResult<Vec<(u16, i64)>> {
        self.before_cluster("live_call_counts").await?;
        self.inner.live_call_counts().await
    }

    async fn heartbeat(&self, node: &NodeInfo, alive_within: Duration) -> StoreResult<Vec<Member>> {
        let back = self.before_cluster("heartbeat").await?;
        let members = self.inner.heartbeat(node, alive_within).await?;
        self.after_cluster("heartbeat", back).await?;
        Ok(members)
    }

    async fn members(&self, alive_within: Duration) -> StoreResult<Vec<Member>> {
        self.before_cluster("members").await?;
        self.inner.members(alive_within).await
    }

    async fn leases(&self) -> StoreResult<Vec<Lease>> {
        let back = self.before_cluster("leases").await?;
        let leases = self.inner.leases().await?;
        self.after_cluster("leases", back).await?;
        Ok(leases)
    }

    async fn claim_shards(
        &self,
        node: &str,
        shards: &[u16],
        ttl: Duration,
    ) -> StoreResult<Vec<Claimed>> {
        let back = self.before_cluster("claim_shards").await?;
        let claimed = self.inner.claim_shards(node, shards, ttl).await?;
        for c in &claimed {
            self.core.tally(match c.kind {
                ClaimKind::Free => "claims free",
                ClaimKind::Lapsed => "claims lapsed (takeovers)",
                ClaimKind::Own => "claims own (the same node id again)",
            });
        }
        if !claimed.is_empty() {
            let count = |kind| claimed.iter().filter(|c| c.kind == kind).count();
            self.core.log(format!(
                "claims {node}: {} shards ({} free, {} lapsed, {} own)",
                claimed.len(),
                count(ClaimKind::Free),
                count(ClaimKind::Lapsed),
                count(ClaimKind::Own)
            ));
        }
        self.after_cluster("claim_shards", back).await?;
        Ok(claimed)
    }

    async fn renew_shards(
        &self,
        node: &str,
        held: &[(u16, i64)],
        ttl: Duration,
    ) -> StoreResult<Vec<u16>> {
        let back = self.before_cluster("renew_shards").await?;
        let renewed = self.inner.renew_shards(node, held, ttl).await?;
        let mut asked: Vec<u16> = held.iter().map(|(shard, _)| *shard).collect();
        asked.sort_unstable();
        asked.dedup();
        if renewed.len() < asked.len() {
            self.core.log(format!(
                "renew {node}: {} of {} shards lost",
                asked.len() - renewed.len(),
                asked.len()
            ));
        }
        self.after_cluster("renew_shards", back).await?;
        Ok(renewed)
    }

    async fn release_shards(&self, node: &str, held: &[(u16, i64)]) -> StoreResult<()> {
        let back = self.before_cluster("release_shards").await?;
        self.inner.release_shards(node, held).await?;
        self.core
            .log(format!("release {node}: {} shards", held.len()));
        self.after_cluster("release_shards", back).await
    }

    async fn leave(&self, node: &str) -> StoreResult<()> {
        self.before_cluster("leave").await?;
        self.inner.leave(node).await?;
        self.core.log(format!("leave {node}"));
        Ok(())
    }
}

/// Catalog and reads: no faults here (the call path is what the simulation exercises), but
/// the same tenant-scoped semantics as Postgres.
#[async_trait]
impl QueryStore for SimStore {
    async fn create_organization(
        &self,
        org: &Organization,
        key_id: Uuid,
        key_hash: &str,
        key_prefix: &str,
    ) -> StoreResult<()> {
        self.inner
            .create_organization(org, key_id, key_hash, key_prefix)
            .await
    }
    async fn get_call(&self, org: OrganizationId, id: CallId) -> StoreResult<Option<Call>> {
        self.reach("get_call").await?;
        self.inner.get_call(org, id).await
    }
    async fn list_calls(&self, org: OrganizationId, f: &CallFilter) -> StoreResult<Vec<Call>> {
        self.reach("list_calls").await?;
        self.inner.list_calls(org, f).await
    }
    async fn call_events(
        &self,
        org: OrganizationId,
        id: CallId,
    ) -> StoreResult<Option<Vec<JournalEntry>>> {
        self.reach("call_events").await?;
        self.inner.call_events(org, id).await
    }
    async fn insert_agent(&self, agent: &Agent) -> StoreResult<()> {
        self.reach("insert_agent").await?;
        self.inner.insert_agent(agent).await
    }
    async fn get_agent(&self, org: OrganizationId, id: Uuid) -> StoreResult<Option<Agent>> {
        self.reach("get_agent").await?;
        self.inner.get_agent(org, id).await
    }
    async fn list_agents(&self, org: OrganizationId, p: &PageRequest) -> StoreResult<Vec<Agent>> {
        self.reach("list_agents").await?;
        self.inner.list_agents(org, p).await
    }
    async fn update_agent(
        &self,
        org: OrganizationId,
        id: Uuid,
        patch: &AgentPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Agent>> {
        self.reach("update_agent").await?;
        self.inner.update_agent(org, id, patch, now).await
    }
    async fn delete_agent(
        &self,
        org: OrganizationId,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.reach("delete_agent").await?;
        self.inner.delete_agent(org, id, now).await
    }
    async fn insert_customer(&self, customer: &Customer) -> StoreResult<bool> {
        self.reach("insert_customer").await?;
        self.inner.insert_customer(customer).await
    }
    async fn get_customer(&self, org: OrganizationId, id: Uuid) -> StoreResult<Option<Customer>> {
        self.reach("get_customer").await?;
        self.inner.get_customer(org, id).await
    }
    async fn list_customers(
        &self,
        org: OrganizationId,
        p: &PageRequest,
    ) -> StoreResult<Vec<Customer>> {
        self.reach("list_customers").await?;
        self.inner.list_customers(org, p).await
    }
    async fn update_customer(
        &self,
        org: OrganizationId,
        id: Uuid,
        patch: &CustomerPatch,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Customer>, CatalogWriteError> {
        self.inner.update_customer(org, id, patch, now).await
    }
    async fn delete_customer(&self, org: OrganizationId, id: Uuid) -> StoreResult<bool> {
        self.reach("delete_customer").await?;
        self.inner.delete_customer(org, id).await
    }

    async fn customer_by_phone(
        &self,
        org: OrganizationId,
        phone: &PhoneNumber,
    ) -> StoreResult<Option<Uuid>> {
        self.reach("customer_by_phone").await?;
        self.inner.customer_by_phone(org, phone).await
    }

    async fn insert_phone_number(&self, number: &PhoneNumberAssignment) -> StoreResult<bool> {
        self.reach("insert_phone_number").await?;
        self.inner.insert_phone_number(number).await
    }

    async fn list_phone_numbers(
        &self,
        org: OrganizationId,
        agent: Option<Uuid>,
        page: &PageRequest,
    ) -> StoreResult<Vec<PhoneNumberAssignment>> {
        self.reach("list_phone_numbers").await?;
        self.inner.list_phone_numbers(org, agent, page).await
    }

    async fn delete_phone_number(&self, org: OrganizationId, id: Uuid) -> StoreResult<bool> {
        self.reach("delete_phone_number").await?;
        self.inner.delete_phone_number(org, id).await
    }
    async fn insert_webhook_endpoint(&self, e: &WebhookEndpoint) -> StoreResult<()> {
        self.inner.insert_webhook_endpoint(e).await
    }
    async fn get_webhook_endpoint(
        &self,
        org: OrganizationId,
        id: Uuid,
    ) -> StoreResult<Option<WebhookEndpoint>> {
        self.inner.get_webhook_endpoint(org, id).await
    }
    async fn list_webhook_endpoints(
        &self,
        org: OrganizationId,
        p: &PageRequest,
    ) -> StoreResult<Vec<WebhookEndpoint>> {
        self.inner.list_webhook_endpoints(org, p).await
    }
    async fn update_webhook_endpoint(
        &self,
        e: &WebhookEndpoint,
        read_at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        self.inner.update_webhook_endpoint(e, read_at).await
    }
    async fn delete_webhook_endpoint(&self, org: OrganizationId, id: Uuid) -> StoreResult<bool> {
        self.inner.delete_webhook_endpoint(org, id).await
    }

    async fn route_number(
        &self,
        number: &PhoneNumber,
    ) -> StoreResult<Option<PhoneNumberAssignment>> {
        self.reach("route_number").await?;
        self.inner.route_number(number).await
    }
}
