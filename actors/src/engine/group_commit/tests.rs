//! The writer over an in-memory store whose batches can be held back: batches form from what
//! waits while the writers are busy, a lone append goes at once, a call never has two appends
//! in one batch, and every caller gets its own answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use uuid::Uuid;

use super::{GroupCommit, GroupCommitConfig};
use crate::catalog::{NewAgent, Organization};
use crate::machine::{start, step, Call, CallId, CallSpec, CarrierEvent, Direction, Event};
use crate::ports::QueryStore;
use crate::ports::{
    Append, CallStore, IdempotencyKey, InboxInsert, InboxItem, InboxRow, InsertOutcome,
    JournalEntry, StoreError, StoreResult,
};
use crate::testkit::MemoryStore;

/// A memory store that records every batch and holds each one until released.
struct Gated {
    inner: MemoryStore,
    batches: Mutex<Vec<Vec<CallId>>>,
    hold: Mutex<bool>,
    release: Notify,
}

impl Gated {
    fn new(hold: bool) -> Arc<Gated> {
        Arc::new(Gated {
            inner: MemoryStore::new(),
            batches: Mutex::new(Vec::new()),
            hold: Mutex::new(hold),
            release: Notify::new(),
        })
    }

    fn open(&self) {
        *self.hold.lock().unwrap() = false;
        self.release.notify_waiters();
    }

    fn batches(&self) -> Vec<Vec<CallId>> {
        self.batches.lock().unwrap().clone()
    }
}

#[async_trait]
impl CallStore for Gated {
    async fn acquire_shards(&self, node: &str, shards: &[u16]) -> StoreResult<Vec<i64>> {
        self.inner.acquire_shards(node, shards).await
    }
    async fn owns_shard(&self, shard: u16, epoch: i64) -> StoreResult<bool> {
        self.inner.owns_shard(shard, epoch).await
    }
    async fn insert_call(
        &self,
        call: &Call,
        created: &JournalEntry,
        idempotency: Option<&IdempotencyKey>,
        max_live: Option<u32>,
    ) -> StoreResult<InsertOutcome> {
        self.inner
            .insert_call(call, created, idempotency, max_live)
            .await
    }
    async fn append(
        &self,
        call: &Call,
        expected_version: i64,
        entry: &JournalEntry,
        inbox: Option<(&str, &str)>,
    ) -> StoreResult<()> {
        self.inner
            .append(call, expected_version, entry, inbox)
            .await
    }
    async fn append_batch(&self, batch: &[Append]) -> Vec<StoreResult<()>> {
        self.batches
            .lock()
            .unwrap()
            .push(batch.iter().map(|a| a.call.spec.id).collect());
        loop {
            let released = self.release.notified();
            if !*self.hold.lock().unwrap() {
                break;
            }
            released.await;
        }
        self.inner.append_batch(batch).await
    }
    async fn load_call(&self, id: CallId) -> StoreResult<Option<Call>> {
        self.inner.load_call(id).await
    }
    async fn live_calls(&self, shards: &[u16]) -> StoreResult<Vec<CallId>> {
        self.inner.live_calls(shards).await
    }
    async fn inbox_insert(&self, item: &InboxItem) -> StoreResult<bool> {
        self.inner.inbox_insert(item).await
    }
    async fn inbox_record(&self, row: &InboxRow) -> StoreResult<InboxInsert> {
        self.inner.inbox_record(row).await
    }
    async fn inbox_adopt(
        &self,
        vendor: &str,
        leg: &str,
        call_id: CallId,
    ) -> StoreResult<Vec<InboxItem>> {
        self.inner.inbox_adopt(vendor, leg, call_id).await
    }
    async fn call_for_leg(&self, leg: &str) -> StoreResult<Option<CallId>> {
        self.inner.call_for_leg(leg).await
    }
    async fn inbox_mark_processed(&self, vendor: &str, event_id: &str) -> StoreResult<()> {
        self.inner.inbox_mark_processed(vendor, event_id).await
    }
    async fn inbox_pending(&self, limit: i64) -> StoreResult<Vec<InboxItem>> {
        self.inner.inbox_pending(limit).await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap()
}

/// The epoch of shard 0 once [`held`] took it.
const EPOCH: i64 = 1;

/// A store with the organization and agent of the calls, whose shard 0 this node holds (at
/// [`EPOCH`]).
async fn held(store: &MemoryStore) {
    let org = Organization {
        id: ORG,
        name: "Batched".into(),
        created_at: at(1_795_000_000),
    };
    store
        .create_organization(&org, Uuid::from_u128(0xB), "hash", "iace_grp")
        .await
        .unwrap();
    let agent: NewAgent = serde_json::from_str(r#"{"name":"Gil"}"#).unwrap();
    store
        .insert_agent(&agent.validate(AGENT, ORG, at(1_795_000_000)).unwrap())
        .await
        .unwrap();
    assert_eq!(store.acquire_shards("node", &[0]).await.unwrap(), [EPOCH]);
}

const ORG: Uuid = Uuid::from_u128(0xA);
const AGENT: Uuid = Uuid::from_u128(0xA6E);

/// Call `n`, created in shard 0 under [`EPOCH`].
async fn created(store: &dyn CallStore, n: u128) -> Call {
    let id = Uuid::from_u128(n << 8);
    let spec = CallSpec {
        id,
        organization_id: ORG,
        direction: Direction::Outbound,
        from: "+14155550199".parse().unwrap(),
        to: "+14155550100".parse().unwrap(),
        agent_id: AGENT,
        customer_id: None,
        metadata: serde_json::json!({}),
        ring_timeout_secs: 30,
        max_duration_secs: 600,
        inbound_leg_id: None,
    };
    let (mut call, _) = start(spec.clone(), at(1_796_000_000));
    call.owner_epoch = EPOCH;
    let entry = JournalEntry {
        call_id: id,
        seq: 1,
        at: call.created_at,
        event: Event::Created { spec },
    };
    let outcome = store.insert_call(&call, &entry, None, None).await;
    assert!(matches!(outcome, Ok(InsertOutcome::Created)), "{outcome:?}");
    call
}

/// Appends the next event of `call` (it rings, then is answered) through `store`.
async fn advance(store: &dyn CallStore, call: &Call) -> StoreResult<Call> {
    let mut next = call.clone();
    let event = if call.ringing_at.is_none() {
        Event::carrier(CarrierEvent::Ringing)
    } else {
        Event::carrier(CarrierEvent::Answered)
    };
    step(&mut next, event.clone(), at(1_796_000_010)).unwrap();
    let entry = JournalEntry {
        call_id: call.spec.id,
        seq: next.version,
        at: next.updated_at,
        event,
    };
    store.append(&next, call.version, &entry, None).await?;
    Ok(next)
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test(start_paused = true)]
async fn appends_that_wait_for_a_writer_go_in_one_batch_each_with_its_answer() {
    let gated = Gated::new(true);
    held(&gated.inner).await;
    let store = GroupCommit::start(
        gated.clone(),
        GroupCommitConfig {
            writers: 1,
            max_batch: 8,
        },
        None,
    )
    .unwrap();
    let mut calls = Vec::new();
    for n in 1..=11 {
        calls.push(created(store.as_ref(), n).await);
    }
    // The first append goes alone and holds the only writer; ten more wait for it.
    let first = tokio::spawn({
        let (store, call) = (store.clone(), calls[0].clone());
        async move { advance(store.as_ref(), &call).await }
    });
    eventually("the first batch", || gated.batches().len() == 1).await;
    let mut rest = Vec::new();
    for call in &calls[1..] {
        let (store, call) = (store.clone(), call.clone());
        rest.push(tokio::spawn(
            async move { advance(store.as_ref(), &call).await },
        ));
    }
    // None is answered before its batch commits. (Paused time on the current-thread runtime:
    // the clock moves only once every task is idle, so after this sleep every append has
    // run as far as it can; the gate, not the machine's speed, keeps them unanswered.)
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!first.is_finished() && rest.iter().all(|t| !t.is_finished()));
    gated.open();
    let first = first.await.unwrap();
    assert!(first.is_ok(), "{first:?}");
    for t in rest {
        assert!(t.await.unwrap().is_ok());
    }
    let sizes: Vec<usize> = gated.batches().iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 8, 2], "batches of at most max_batch");
    for call in &calls {
        assert_eq!(gated.inner.journal(call.spec.id).len(), 2);
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_never_has_two_appends_in_a_batch_and_a_stale_one_fails_alone() {
    let gated = Gated::new(true);
    held(&gated.inner).await;
    let store = GroupCommit::start(
        gated.clone(),
        GroupCommitConfig {
            writers: 1,
            max_batch: 8,
        },
        None,
    )
    .unwrap();
    let a = created(store.as_ref(), 1).await;
    let b = created(store.as_ref(), 2).await;
    let c = created(store.as_ref(), 3).await;
    // `a`'s batch holds the writer; the next appends queue behind it.
    let held = tokio::spawn({
        let (store, call) = (store.clone(), a.clone());
        async move { advance(store.as_ref(), &call).await }
    });
    eventually("a held", || gated.batches().len() == 1).await;
    // Two appends of `b` (the second from a writer that does not know of the first: stale),
    // and one of `c`: `b`'s two go in different batches.
    let b1 = tokio::spawn({
        let (store, call) = (store.clone(), b.clone());
        async move { advance(store.as_ref(), &call).await }
    });
    let b2 = tokio::spawn({
        let (store, call) = (store.clone(), b.clone());
        async move { advance(store.as_ref(), &call).await }
    });
    let c1 = tokio::spawn({
        let (store, call) = (store.clone(), c.clone());
        async move { advance(store.as_ref(), &call).await }
    });
    // Paused time: the clock moves only once every task is idle, so after this sleep all
    // three appends are queued behind the held batch, whatever the machine's load.
    tokio::time::sleep(Duration::from_millis(50)).await;
    gated.open();
    let results = [b1.await.unwrap(), b2.await.unwrap(), c1.await.unwrap()];
    let stale = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Stale)))
        .count();
    assert_eq!(stale, 1, "one of b's two appends is stale: {results:?}");
    assert!(results[2].is_ok());
    let (a, b, c) = (a.spec.id, b.spec.id, c.spec.id);
    assert_eq!(gated.batches(), [vec![a], vec![b, c], vec![b]]);
    assert!(matches!(results[1], Err(StoreError::Stale)), "{results:?}");
    assert_eq!(gated.inner.journal(b).len(), 2);
    assert_eq!(gated.inner.journal(c).len(), 2);
    assert!(held.await.unwrap().is_ok());
}
