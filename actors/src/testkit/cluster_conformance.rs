//! The conformance suite of [`ClusterStore`]: the checks every implementation must pass, run
//! against the in-memory store (this crate's tests, under paused tokio time) and against
//! Postgres (the root crate's integration tests). Each check takes a fresh, empty store that
//! also implements the call and catalog stores, since leases fence call writes.
//!
//! A check that needs a lease to lapse or a heartbeat to age polls the store, the only judge
//! of time, until it says so, within a generous bound: under paused time the sleeps between
//! polls advance the store's clock, against Postgres they let real time pass. No check asserts
//! that a lease of [`SHORT`] is still held, because a busy machine may outlive it; leases that
//! must hold through a check are taken for [`LONG`].
//!
//! Every check panics on the first violation, naming it.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::catalog::{NewAgent, Organization};
use crate::machine::{start, step, Call, CallSpec, CarrierEvent, Direction, Event};
use crate::ports::calls::{
    shard_of, Append, CallStore, InboxInsert, InboxItem, InboxRow, InsertOutcome, JournalEntry,
    StoreError, SHARD_COUNT,
};
use crate::ports::catalog::QueryStore;
use crate::ports::cluster::{ClaimKind, Claimed, ClusterStore, Lease, NodeInfo, MAX_LEASE_TTL};

/// A lease the checks let lapse.
pub const SHORT: Duration = Duration::from_millis(400);
/// A lease that must outlast a check.
pub const LONG: Duration = Duration::from_secs(60);
/// How long a check waits for a lapse before it fails.
const BOUND: Duration = Duration::from_secs(30);
/// Pause between polls of the store.
const POLL: Duration = Duration::from_millis(25);

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A fixed instant with microsecond precision (what Postgres keeps).
fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 123_456_000).unwrap_or_default()
}

/// A node whose own clock says it started in 2001: liveness must not care.
fn node(id: &str) -> NodeInfo {
    NodeInfo {
        node_id: id.to_owned(),
        url: format!("http://{id}.cluster.test:8080"),
        incarnation: incarnation(id, 1),
        started_at: at(981_173_106),
        draining: false,
    }
}

/// A fixed incarnation per node id and start.
fn incarnation(id: &str, start: u8) -> Uuid {
    let n = id.bytes().fold(u128::from(start), |acc, b| {
        acc.wrapping_mul(131).wrapping_add(u128::from(b))
    });
    Uuid::from_u128(n)
}

/// Polls `done` until it holds; panics naming `what` after [`BOUND`] of the store's time.
async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the store says the leases of `shards` lapsed.
async fn wait_lapsed(store: &(impl ClusterStore + ?Sized), shards: &[u16]) {
    wait_until(&format!("the leases of {shards:?} to lapse"), async || {
        let leases = store.leases().await.expect("leases");
        shards
            .iter()
            .all(|s| leases.iter().any(|l| l.shard == *s && l.expires_in_ms <= 0))
    })
    .await;
}

async fn lease(store: &(impl ClusterStore + ?Sized), shard: u16) -> Lease {
    store
        .leases()
        .await
        .expect("leases")
        .into_iter()
        .find(|l| l.shard == shard)
        .unwrap_or_else(|| panic!("shard {shard} has no lease"))
}

fn free(shard: u16, epoch: i64) -> Claimed {
    Claimed {
        shard,
        epoch,
        previous_owner: None,
        kind: ClaimKind::Free,
    }
}

fn assert_refused<T: std::fmt::Debug>(what: &str, r: Result<T, StoreError>) {
    assert!(
        matches!(r, Err(StoreError::Corrupt(_))),
        "{what}: expected a refusal, got {r:?}"
    );
}

/// Shards that were never leased are taken at epoch 1, each once, in shard order; a lease
/// runs its TTL by the store's clock. Bad arguments are refused and store nothing.
pub async fn claim_takes_never_leased_shards(store: &(impl ClusterStore + ?Sized)) {
    let claimed = store
        .claim_shards("node-a", &[3, 1, 2, 1], LONG)
        .await
        .expect("claim");
    assert_eq!(claimed, vec![free(1, 1), free(2, 1), free(3, 1)]);
    let leases = store.leases().await.expect("leases");
    assert_eq!(
        leases.iter().map(|l| l.shard).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    for l in &leases {
        assert_eq!(l.owner.as_deref(), Some("node-a"), "{l:?}");
        assert_eq!(l.epoch, 1, "{l:?}");
        assert!(l.is_held(), "{l:?}");
        assert!(
            l.expires_in_ms <= ms(LONG) && l.expires_in_ms > ms(SHORT),
            "a lease of {LONG:?} reports {l:?}"
        );
    }

    assert_refused(
        "a shard out of range",
        store.claim_shards("node-a", &[4, SHARD_COUNT], LONG).await,
    );
    assert_refused(
        "a zero TTL",
        store.claim_shards("node-a", &[4], Duration::ZERO).await,
    );
    assert_refused(
        "a TTL over the maximum",
        store
            .claim_shards("node-a", &[4], MAX_LEASE_TTL + Duration::from_secs(1))
            .await,
    );
    assert_refused(
        "an empty node id",
        store.claim_shards(" ", &[4], LONG).await,
    );
    assert_refused(
        "renewing a shard out of range",
        store
            .renew_shards("node-a", &[(1, 1), (SHARD_COUNT, 1)], LONG)
            .await,
    );
    assert_refused(
        "releasing a shard out of range",
        store
            .release_shards("node-a", &[(1, 1), (SHARD_COUNT, 1)])
            .await,
    );
    let after = store.leases().await.expect("leases");
    assert_eq!(
        after
            .iter()
            .map(|l| (l.shard, l.owner.clone(), l.epoch))
            .collect::<Vec<_>>(),
        leases
            .iter()
            .map(|l| (l.shard, l.owner.clone(), l.epoch))
            .collect::<Vec<_>>(),
        "a refused call changed the leases"
    );
    assert!(after.iter().all(Lease::is_held), "{after:?}");
}

/// A shard another node holds is left alone; a node claiming again what it holds takes it
/// back as its own (a restart), at the next epoch.
pub async fn claim_leaves_held_shards_alone(store: &(impl ClusterStore + ?Sized)) {
    let first: Vec<u16> = (0..8).collect();
    let wider: Vec<u16> = (0..16).collect();
    store
        .claim_shards("node-a", &first, LONG)
        .await
        .expect("claim");
    let b = store
        .claim_shards("node-b", &wider, LONG)
        .await
        .expect("claim");
    assert_eq!(b, (8..16).map(|s| free(s, 1)).collect::<Vec<_>>());
    let a = store
        .claim_shards("node-a", &wider, LONG)
        .await
        .expect("claim");
    assert_eq!(
        a,
        (0..8)
            .map(|shard| Claimed {
                shard,
                epoch: 2,
                previous_owner: Some("node-a".into()),
                kind: ClaimKind::Own,
            })
            .collect::<Vec<_>>()
    );
    let owners: Vec<(u16, Option<String>, i64)> = store
        .leases()
        .await
        .expect("leases")
        .into_iter()
        .map(|l| (l.shard, l.owner, l.epoch))
        .collect();
    let expected: Vec<(u16, Option<String>, i64)> = (0..16)
        .map(|s| {
            if s < 8 {
                (s, Some("node-a".to_owned()), 2)
            } else {
                (s, Some("node-b".to_owned()), 1)
            }
        })
        .collect();
    assert_eq!(owners, expected);
}

/// A released shard has no owner and is lapsed at once, keeps its epoch, and is free for the
/// next claimer; a release at another epoch or by another node changes nothing.
pub async fn released_shards_are_free(store: &(impl ClusterStore + ?Sized)) {
    store
        .claim_shards("node-a", &[5, 6], LONG)
        .await
        .expect("claim");
    store
        .release_shards("node-a", &[(5, 1), (6, 9)])
        .await
        .expect("release");
    store
        .release_shards("node-b", &[(6, 1)])
        .await
        .expect("release");
    let five = lease(store, 5).await;
    assert_eq!((five.owner.as_deref(), five.epoch), (None, 1), "{five:?}");
    assert!(five.expires_in_ms <= 0 && !five.is_held(), "{five:?}");
    let six = lease(store, 6).await;
    assert_eq!((six.owner.as_deref(), six.epoch), (Some("node-a"), 1));
    assert!(six.is_held(), "{six:?}");

    let b = store
        .claim_shards("node-b", &[5, 6], LONG)
        .await
        .expect("claim");
    assert_eq!(b, vec![free(5, 2)]);
    assert_eq!(lease(store, 5).await.owner.as_deref(), Some("node-b"));
}

/// A lease that lapsed goes to the next claimer, who learns whose it was; the lapsed owner's
/// renewal then misses that shard but renews a lapsed lease nobody took.
pub async fn lapsed_leases_go_to_the_next_claimer(store: &(impl ClusterStore + ?Sized)) {
    store
        .claim_shards("node-a", &[7, 8], SHORT)
        .await
        .expect("claim");
    wait_lapsed(store, &[7, 8]).await;
    let seven = lease(store, 7).await;
    assert_eq!(
        seven.owner.as_deref(),
        Some("node-a"),
        "lapsed, not released"
    );
    assert!(!seven.is_held(), "{seven:?}");

    let b = store
        .claim_shards("node-b", &[7], LONG)
        .await
        .expect("claim");
    assert_eq!(
        b,
        vec![Claimed {
            shard: 7,
            epoch: 2,
            previous_owner: Some("node-a".into()),
            kind: ClaimKind::Lapsed,
        }]
    );
    let renewed = store
        .renew_shards("node-a", &[(7, 1), (8, 1)], LONG)
        .await
        .expect("renew");
    assert_eq!(renewed, [8], "7 was taken; 8 lapsed but nobody took it");
    let renewed = store
        .renew_shards("node-a", &[(7, 2)], LONG)
        .await
        .expect("renew");
    assert!(renewed.is_empty(), "node-b's epoch is not node-a's lease");
    let seven = lease(store, 7).await;
    assert_eq!((seven.owner.as_deref(), seven.epoch), (Some("node-b"), 2));
    let eight = lease(store, 8).await;
    assert_eq!((eight.owner.as_deref(), eight.epoch), (Some("node-a"), 1));
    assert!(
        eight.expires_in_ms > ms(SHORT),
        "renewed for {LONG:?}: {eight:?}"
    );
    let a = store
        .claim_shards("node-a", &[7, 8], LONG)
        .await
        .expect("claim");
    assert_eq!(
        a.iter().map(|c| (c.shard, c.kind)).collect::<Vec<_>>(),
        [(8, ClaimKind::Own)],
        "node-b holds 7"
    );
}

/// A node restarting under the same id takes its shards back as its own, whether its lease
/// lapsed or not, at the next epoch: the old epoch fences even the same node.
pub async fn a_restart_takes_its_own_shards_back(store: &(impl ClusterStore + ?Sized)) {
    store
        .claim_shards("node-a", &[9], LONG)
        .await
        .expect("claim");
    store
        .claim_shards("node-a", &[10], SHORT)
        .await
        .expect("claim");
    wait_lapsed(store, &[10]).await;
    let again = store
        .claim_shards("node-a", &[9, 10], LONG)
        .await
        .expect("claim");
    let own = |shard| Claimed {
        shard,
        epoch: 2,
        previous_owner: Some("node-a".into()),
        kind: ClaimKind::Own,
    };
    assert_eq!(again, vec![own(9), own(10)]);
    let renewed = store
        .renew_shards("node-a", &[(9, 1), (10, 1)], LONG)
        .await
        .expect("renew");
    assert!(
        renewed.is_empty(),
        "the epochs before the restart: {renewed:?}"
    );
}

/// A renewal extends a lease from the store's now; only the owner at that epoch renews.
pub async fn renewal_extends_a_lease(store: &(impl ClusterStore + ?Sized)) {
    store
        .claim_shards("node-a", &[11], SHORT)
        .await
        .expect("claim");
    let renewed = store
        .renew_shards("node-a", &[(11, 1), (11, 1)], LONG)
        .await
        .expect("renew");
    assert_eq!(renewed, [11]);
    let l = lease(store, 11).await;
    assert!(
        l.is_held() && l.expires_in_ms > ms(SHORT) && l.expires_in_ms <= ms(LONG),
        "renewed for {LONG:?}: {l:?}"
    );
    assert!(store
        .claim_shards("node-b", &[11], LONG)
        .await
        .expect("claim")
        .is_empty());
    assert!(store
        .renew_shards("node-b", &[(11, 1)], LONG)
        .await
        .expect("renew")
        .is_empty());
    assert!(store
        .renew_shards("node-a", &[(11, 2), (12, 1)], LONG)
        .await
        .expect("renew")
        .is_empty());
    assert_eq!(lease(store, 11).await.owner.as_deref(), Some("node-a"));
}

fn call_id(shard: u16, n: u128) -> Uuid {
    Uuid::from_u128((0xfe_ce_u128 << 64) | (n << 8) | u128::from(shard))
}

fn new_call(org: Uuid, agent: Uuid, id: Uuid, epoch: i64) -> (Call, JournalEntry) {
    let spec = CallSpec {
        id,
        organization_id: org,
        direction: Direction::Outbound,
        from: "+14155550199".parse().expect("number"),
        to: "+14155550100".parse().expect("number"),
        agent_id: agent,
        customer_id: None,
        metadata: serde_json::json!({}),
        ring_timeout_secs: 30,
        max_duration_secs: 600,
        inbound_leg_id: None,
    };
    let (mut call, _) = start(spec.clone(), at(1_796_000_000));
    call.owner_epoch = epoch;
    let created = JournalEntry {
        call_id: id,
        seq: 1,
        at: call.created_at,
        event: Event::Created { spec },
    };
    (call, created)
}

/// `call` answered, as the owner at `epoch` would write it.
fn answered(call: &Call, epoch: i64) -> (Call, JournalEntry) {
    let mut next = call.clone();
    next.owner_epoch = epoch;
    let event = Event::carrier(CarrierEvent::Answered);
    step(&mut next, event.clone(), at(1_796_000_010)).expect("answered");
    let entry = JournalEntry {
        call_id: call.spec.id,
        seq: next.version,
        at: next.updated_at,
        event,
    };
    (next, entry)
}

/// A claim fences the previous owner: once another node claimed a released shard, a call
/// write with the old epoch is refused as stale and stores nothing, and the new owner's writes
/// go through. A forced take (`acquire_shards`) fences the claimer in turn and holds the shard.
pub async fn a_claim_fences_the_previous_owner<S>(store: &S)
where
    S: ClusterStore + CallStore + QueryStore + ?Sized,
{
    let org = Organization {
        id: Uuid::from_u128(0x0c1a_0001),
        name: "Fenced".into(),
        created_at: at(1_795_000_000),
    };
    store
        .create_organization(
            &org,
            Uuid::from_u128(0x0c1a_0002),
            "hash-fenced",
            "iace_fen",
        )
        .await
        .expect("organization");
    let agent: NewAgent = serde_json::from_str(r#"{"name":"Ana"}"#).expect("agent json");
    let agent = agent
        .validate(Uuid::from_u128(0x0c1a_0003), org.id, at(1_795_000_000))
        .expect("agent");
    store.insert_agent(&agent).await.expect("agent");

    let shard = 42;
    let a = store
        .claim_shards("node-a", &[shard], LONG)
        .await
        .expect("claim");
    let old = a[0].epoch;
    let (call, created) = new_call(org.id, agent.id, call_id(shard, 1), old);
    assert_eq!(shard_of(call.spec.id), shard);
    assert_eq!(
        store
            .insert_call(&call, &created, None, None)
            .await
            .expect("insert"),
        InsertOutcome::Created
    );
    assert!(store.owns_shard(shard, old).await.expect("owns"));

    store
        .release_shards("node-a", &[(shard, old)])
        .await
        .expect("release");
    let b = store
        .claim_shards("node-b", &[shard], LONG)
        .await
        .expect("claim");
    let new = old + 1;
    assert_eq!(b, vec![free(shard, new)]);
    assert!(!store.owns_shard(shard, old).await.expect("owns"));
    assert!(store.owns_shard(shard, new).await.expect("owns"));

    let (stale, entry) = answered(&call, old);
    let err = store.append(&stale, call.version, &entry, None).await;
    assert!(matches!(err, Err(StoreError::Stale)), "{err:?}");
    let (second, second_created) = new_call(org.id, agent.id, call_id(shard, 2), old);
    let err = store
        .insert_call(&second, &second_created, None, None)
        .await;
    assert!(matches!(err, Err(StoreError::Stale)), "{err:?}");
    assert_eq!(
        store
            .load_call(call.spec.id)
            .await
            .expect("load")
            .map(|c| c.version),
        Some(call.version),
        "the stale write stored nothing"
    );
    assert_eq!(store.load_call(second.spec.id).await.expect("load"), None);

    let (fresh, entry) = answered(&call, new);
    store
        .append(&fresh, call.version, &entry, None)
        .await
        .expect("the new owner writes");

    let forced = store
        .acquire_shards("tool", &[shard])
        .await
        .expect("forced take");
    assert_eq!(forced, [new + 1]);
    let (third, third_created) = new_call(org.id, agent.id, call_id(shard, 3), new);
    let err = store.insert_call(&third, &third_created, None, None).await;
    assert!(matches!(err, Err(StoreError::Stale)), "{err:?}");
    let l = lease(store, shard).await;
    assert_eq!((l.owner.as_deref(), l.epoch), (Some("tool"), new + 1));
    assert!(
        l.expires_in_ms > 50 * 60 * 1000,
        "a forced take holds an hour: {l:?}"
    );
    assert!(store
        .claim_shards("node-b", &[shard], LONG)
        .await
        .expect("claim")
        .is_empty());
}

/// A batch of appends (group commit) answers each as it would be answered alone: appends
/// under a superseded epoch, on a version that moved, or whose entry does not match its
/// snapshot fail as stale and store nothing; the others commit, with the inbox rows they
/// consume marked processed.
pub async fn a_batch_of_appends_fails_only_its_stale_ones<S>(store: &S)
where
    S: ClusterStore + CallStore + QueryStore + ?Sized,
{
    let org = Organization {
        id: Uuid::from_u128(0x0ba7_0001),
        name: "Batched".into(),
        created_at: at(1_795_000_000),
    };
    store
        .create_organization(&org, Uuid::from_u128(0x0ba7_0002), "hash-batch", "iace_bat")
        .await
        .expect("organization");
    let agent: NewAgent = serde_json::from_str(r#"{"name":"Bo"}"#).expect("agent json");
    let agent = agent
        .validate(Uuid::from_u128(0x0ba7_0003), org.id, at(1_795_000_000))
        .expect("agent");
    store.insert_agent(&agent).await.expect("agent");

    let (kept, moved) = (60, 61);
    let epochs = store
        .claim_shards("node-a", &[kept, moved], LONG)
        .await
        .expect("claim");
    let (e_kept, e_moved) = (epochs[0].epoch, epochs[1].epoch);
    let mut calls = Vec::new();
    for (n, shard, epoch) in [
        (1, kept, e_kept),
        (2, kept, e_kept),
        (3, moved, e_moved),
        (4, kept, e_kept),
        (5, kept, e_kept),
    ] {
        let (call, created) = new_call(org.id, agent.id, call_id(shard, n), epoch);
        store
            .insert_call(&call, &created, None, None)
            .await
            .expect("insert");
        calls.push(call);
    }
    // Shard `moved` goes to another node: its epoch moves on.
    store
        .release_shards("node-a", &[(moved, e_moved)])
        .await
        .expect("release");
    store
        .claim_shards("node-b", &[moved], LONG)
        .await
        .expect("claim");
    let inbox = InboxItem {
        vendor: "test".into(),
        event_id: "batch-ev-1".into(),
        call_id: calls[0].spec.id,
        carrier_leg: None,
        occurred_at: at(1_796_000_005),
        event: CarrierEvent::Answered,
    };
    assert!(store.inbox_insert(&inbox).await.expect("inbox"));

    let append = |call: &Call, epoch: i64| {
        let (next, entry) = answered(call, epoch);
        Append {
            call: next,
            expected_version: call.version,
            entry,
            inbox: None,
        }
    };
    let mut first = append(&calls[0], e_kept);
    first.inbox = Some(("test".into(), "batch-ev-1".into()));
    let mut wrong_version = append(&calls[3], e_kept);
    wrong_version.expected_version += 1;
    let mut mismatched = append(&calls[4], e_kept);
    mismatched.entry.seq += 1;
    let batch = [
        first,
        append(&calls[1], e_kept),
        append(&calls[2], e_moved),
        wrong_version,
        mismatched,
    ];
    let results = store.append_batch(&batch).await;
    let outcome: Vec<&str> = results
        .iter()
        .map(|r| match r {
            Ok(()) => "ok",
            Err(StoreError::Stale) => "stale",
            Err(_) => "error",
        })
        .collect();
    assert_eq!(outcome, ["ok", "ok", "stale", "stale", "stale"]);
    for (call, version) in calls.iter().zip([2, 2, 1, 1, 1]) {
        assert_eq!(
            store
                .load_call(call.spec.id)
                .await
                .expect("load")
                .map(|c| c.version),
            Some(version),
            "call {}",
            call.spec.id
        );
    }
    let pending = store.inbox_pending(100).await.expect("pending");
    assert!(
        pending.iter().all(|i| i.event_id != "batch-ev-1"),
        "the consumed inbox row is processed"
    );
    // The batch's writes are the calls' next versions: the stale ones can still be written
    // by their owner, the written ones not again.
    let (again, entry) = answered(&calls[0], e_kept);
    let err = store.append(&again, calls[0].version, &entry, None).await;
    assert!(matches!(err, Err(StoreError::Stale)), "{err:?}");
    let (owner, entry) = answered(&calls[3], e_kept);
    store
        .append(&owner, calls[3].version, &entry, None)
        .await
        .expect("the owner writes the call the batch refused");
}

/// A batch of vendor events (group commit of webhooks) answers each as storing it alone
/// would: new, a duplicate of an event stored before, or about a call that does not exist
/// (nothing stored); an event naming only a leg waits for adoption, one without a fact is
/// stored processed.
pub async fn a_batch_of_vendor_events_answers_each_as_alone<S>(store: &S)
where
    S: ClusterStore + CallStore + QueryStore + ?Sized,
{
    let org = Organization {
        id: Uuid::from_u128(0x0ba7_1001),
        name: "Webhooks".into(),
        created_at: at(1_795_000_000),
    };
    store
        .create_organization(&org, Uuid::from_u128(0x0ba7_1002), "hash-hooks", "iace_hok")
        .await
        .expect("organization");
    let agent: NewAgent = serde_json::from_str(r#"{"name":"Hu"}"#).expect("agent json");
    let agent = agent
        .validate(Uuid::from_u128(0x0ba7_1003), org.id, at(1_795_000_000))
        .expect("agent");
    store.insert_agent(&agent).await.expect("agent");
    let shard = 70;
    let epoch = store
        .claim_shards("node-a", &[shard], LONG)
        .await
        .expect("claim")[0]
        .epoch;
    let (call, created) = new_call(org.id, agent.id, call_id(shard, 1), epoch);
    store
        .insert_call(&call, &created, None, None)
        .await
        .expect("insert");
    let row = |event_id: &str, call_id: Option<Uuid>, leg: Option<&str>, fact: bool| InboxRow {
        vendor: "telnyx".into(),
        event_id: event_id.into(),
        event_type: "call.answered".into(),
        call_id,
        carrier_leg: leg.map(str::to_owned),
        occurred_at: at(1_796_000_001),
        event: fact.then_some(CarrierEvent::Answered),
        raw: Some(serde_json::json!({"data": {"id": event_id}})),
    };
    let before = row("hook-seen", Some(call.spec.id), None, true);
    assert_eq!(
        store.inbox_record(&before).await.expect("record"),
        InboxInsert::New
    );
    let batch = [
        row("hook-new", Some(call.spec.id), None, true),
        before.clone(),
        row(
            "hook-unknown",
            Some(Uuid::from_u128(0x0ba7_dead)),
            None,
            true,
        ),
        row("hook-parked", None, Some("leg-later"), true),
        row("hook-no-fact", Some(call.spec.id), None, false),
    ];
    let results: Vec<InboxInsert> = store
        .inbox_record_batch(&batch)
        .await
        .into_iter()
        .map(|r| r.expect("stored"))
        .collect();
    assert_eq!(
        results,
        [
            InboxInsert::New,
            InboxInsert::Duplicate,
            InboxInsert::UnknownCall,
            InboxInsert::New,
            InboxInsert::New
        ]
    );
    let pending: Vec<String> = store
        .inbox_pending(100)
        .await
        .expect("pending")
        .into_iter()
        .filter(|i| i.call_id == call.spec.id)
        .map(|i| i.event_id)
        .collect();
    assert_eq!(
        pending,
        ["hook-seen", "hook-new"],
        "the no-fact row is processed"
    );
    let adopted = store
        .inbox_adopt("telnyx", "leg-later", call.spec.id)
        .await
        .expect("adopt");
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].event_id, "hook-parked");
}

/// A heartbeat registers or refreshes a node and answers the live members in node id order;
/// a node drops out once its heartbeat is older than the window, at once when it leaves, and
/// comes back with its next heartbeat. Bad node descriptions are refused and store nothing.
pub async fn heartbeats_decide_membership(store: &(impl ClusterStore + ?Sized)) {
    let ids = |members: &[crate::ports::cluster::Member]| {
        members
            .iter()
            .map(|m| m.node_id.clone())
            .collect::<Vec<_>>()
    };
    let a = node("node-a");
    let b = node("node-b");
    let seen = store.heartbeat(&b, LONG).await.expect("heartbeat");
    assert_eq!(ids(&seen), ["node-b"]);
    let first_b = seen[0].clone();
    assert_eq!(
        (
            &first_b.url,
            first_b.started_at,
            first_b.draining,
            first_b.alive
        ),
        (&b.url, b.started_at, false, true)
    );
    assert!(
        (0..ms(LONG)).contains(&first_b.heartbeat_age_ms),
        "{first_b:?}"
    );
    let seen = store.heartbeat(&a, LONG).await.expect("heartbeat");
    assert_eq!(ids(&seen), ["node-a", "node-b"]);
    assert!(seen.iter().all(|m| m.alive), "{seen:?}");
    let seen = store
        .heartbeat(&a, Duration::ZERO)
        .await
        .expect("heartbeat");
    assert!(
        ids(&seen).contains(&"node-a".to_owned()),
        "a heartbeat's answer holds its own node: {seen:?}"
    );

    wait_until("node-a's heartbeat to age past the window", async || {
        let seen = store.heartbeat(&b, SHORT).await.expect("heartbeat");
        ids(&seen) == ["node-b"]
    })
    .await;
    let members = store.members(SHORT).await.expect("members");
    assert_eq!(ids(&members), ["node-a", "node-b"], "dead nodes are listed");
    assert!(!members[0].alive, "{members:?}");
    assert!(members[0].heartbeat_age_ms >= ms(SHORT), "{members:?}");
    let members = store.members(LONG).await.expect("members");
    assert!(members.iter().all(|m| m.alive), "{members:?}");
    let members = store
        .members(Duration::MAX)
        .await
        .expect("members within an unbounded window");
    assert!(members.iter().all(|m| m.alive), "{members:?}");

    store.leave("node-b").await.expect("leave");
    store
        .leave("node-nobody")
        .await
        .expect("leave of an unknown node");
    let members = store.members(LONG).await.expect("members");
    assert_eq!(
        members
            .iter()
            .map(|m| (m.node_id.as_str(), m.alive))
            .collect::<Vec<_>>(),
        [("node-a", true), ("node-b", false)]
    );
    assert_eq!(
        ids(&store.heartbeat(&a, LONG).await.expect("heartbeat")),
        ["node-a"]
    );

    // node-b comes back as a new process: it registers, and the old process is superseded.
    let back = NodeInfo {
        url: "http://node-b.cluster.test:9090".into(),
        incarnation: incarnation("node-b", 2),
        started_at: at(1_796_000_000),
        draining: true,
        ..b.clone()
    };
    store.register(&back).await.expect("register");
    assert!(
        matches!(store.heartbeat(&b, LONG).await, Err(StoreError::Stale)),
        "the old process of node-b is superseded"
    );
    let seen = store.heartbeat(&back, LONG).await.expect("heartbeat");
    assert_eq!(ids(&seen), ["node-a", "node-b"]);
    let rejoined = &seen[1];
    assert_eq!(
        (
            &rejoined.url,
            rejoined.started_at,
            rejoined.draining,
            rejoined.alive
        ),
        (&back.url, back.started_at, true, true)
    );
    assert!(rejoined.heartbeat_at > first_b.heartbeat_at, "{rejoined:?}");

    assert_refused("an empty node id", store.heartbeat(&node(""), LONG).await);
    let no_url = NodeInfo {
        url: String::new(),
        ..node("node-c")
    };
    assert_refused("an empty URL", store.heartbeat(&no_url, LONG).await);
    assert_refused("leaving without a node id", store.leave("").await);
    assert_eq!(
        ids(&store.members(LONG).await.expect("members")),
        ["node-a", "node-b"]
    );
}

/// Four nodes claiming the same 256 shards at once, over rounds (never leased, released,
/// lapsed with each node also reclaiming its own): every shard goes to exactly one of them,
/// at the round's epoch, and the store's leases agree with the answers.
pub async fn concurrent_claims_give_every_shard_one_owner(store: &(impl ClusterStore + ?Sized)) {
    const NODES: [&str; 4] = ["node-0", "node-1", "node-2", "node-3"];
    let all: Vec<u16> = (0..SHARD_COUNT).collect();
    let reversed: Vec<u16> = all.iter().rev().copied().collect();
    let race = async || {
        let (r0, r1, r2, r3) = tokio::join!(
            store.claim_shards(NODES[0], &all, LONG),
            store.claim_shards(NODES[1], &reversed, LONG),
            store.claim_shards(NODES[2], &all, LONG),
            store.claim_shards(NODES[3], &reversed, LONG),
        );
        [r0, r1, r2, r3]
            .into_iter()
            .zip(NODES)
            .flat_map(|(r, node)| {
                r.expect("claim")
                    .into_iter()
                    .map(move |c| (c.shard, (node, c)))
            })
            .fold(
                BTreeMap::<u16, Vec<(&str, Claimed)>>::new(),
                |mut m, (s, c)| {
                    m.entry(s).or_default().push(c);
                    m
                },
            )
    };
    let check = async |round: i64, won: &BTreeMap<u16, Vec<(&str, Claimed)>>| {
        assert_eq!(
            won.len(),
            usize::from(SHARD_COUNT),
            "round {round}: some shard untaken"
        );
        for (shard, winners) in won {
            assert_eq!(
                winners.len(),
                1,
                "round {round}: shard {shard} taken by {winners:?}"
            );
            assert_eq!(winners[0].1.epoch, round, "round {round}: {winners:?}");
        }
        let leases = store.leases().await.expect("leases");
        let held: Vec<(u16, Option<&str>, i64)> = leases
            .iter()
            .map(|l| (l.shard, l.owner.as_deref(), l.epoch))
            .collect();
        let answered: Vec<(u16, Option<&str>, i64)> = won
            .iter()
            .map(|(s, w)| (*s, Some(w[0].0), w[0].1.epoch))
            .collect();
        assert_eq!(
            held, answered,
            "round {round}: the store disagrees with the answers"
        );
    };

    let first = race().await;
    check(1, &first).await;
    assert!(first.values().all(|w| w[0].1 == free(w[0].1.shard, 1)));

    for node in NODES {
        let mine: Vec<(u16, i64)> = first
            .values()
            .filter(|w| w[0].0 == node)
            .map(|w| (w[0].1.shard, w[0].1.epoch))
            .collect();
        store.release_shards(node, &mine).await.expect("release");
    }
    assert!(
        store
            .leases()
            .await
            .expect("leases")
            .iter()
            .all(|l| l.owner.is_none() && !l.is_held()),
        "everything released"
    );
    let second = race().await;
    check(2, &second).await;
    assert!(second.values().all(|w| w[0].1 == free(w[0].1.shard, 2)));

    // Every node lets its leases run out (a renewal may shorten a lease), then all claim again:
    // each shard goes either back to its owner (own) or to another node (lapsed).
    for node in NODES {
        let mine: Vec<(u16, i64)> = second
            .values()
            .filter(|w| w[0].0 == node)
            .map(|w| (w[0].1.shard, w[0].1.epoch))
            .collect();
        let renewed = store.renew_shards(node, &mine, SHORT).await.expect("renew");
        assert_eq!(renewed.len(), mine.len(), "{node} renews what it holds");
    }
    wait_lapsed(store, &all).await;
    let third = race().await;
    check(3, &third).await;
    for (shard, w) in &third {
        let (node, claimed) = &w[0];
        let before = second[shard][0].0;
        let kind = if before == *node {
            ClaimKind::Own
        } else {
            ClaimKind::Lapsed
        };
        assert_eq!(
            (claimed.kind, claimed.previous_owner.as_deref()),
            (kind, Some(before)),
            "shard {shard}"
        );
    }
}

/// Two nodes re-claiming their own shards at once while both name all shards (as a node
/// claiming its whole assignment does while another still holds part of it): each takes back
/// exactly its own, round after round, and neither claim fails or waits on the other's.
pub async fn concurrent_reclaims_take_back_only_their_own(store: &(impl ClusterStore + ?Sized)) {
    let all: Vec<u16> = (0..SHARD_COUNT).collect();
    let evens: Vec<u16> = all.iter().copied().filter(|s| s % 2 == 0).collect();
    let odds: Vec<u16> = all.iter().copied().filter(|s| s % 2 == 1).collect();
    store
        .claim_shards("node-a", &evens, LONG)
        .await
        .expect("claim");
    store
        .claim_shards("node-b", &odds, LONG)
        .await
        .expect("claim");
    for round in 2..12 {
        let (a, b) = tokio::join!(
            store.claim_shards("node-a", &all, LONG),
            store.claim_shards("node-b", &all, LONG),
        );
        let own = |node: &str, shards: &[u16]| {
            shards
                .iter()
                .map(|&shard| Claimed {
                    shard,
                    epoch: round,
                    previous_owner: Some(node.to_owned()),
                    kind: ClaimKind::Own,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            a.expect("node-a's claim"),
            own("node-a", &evens),
            "round {round}"
        );
        assert_eq!(
            b.expect("node-b's claim"),
            own("node-b", &odds),
            "round {round}"
        );
    }
}

/// The lapsed owner renewing while another node claims the same lapsed shards: each shard is
/// either renewed (and not taken) or taken (and missing from the renewal), never both, never
/// neither.
pub async fn a_renewal_racing_a_claim_splits_the_shards(store: &(impl ClusterStore + ?Sized)) {
    let all: Vec<u16> = (0..SHARD_COUNT).collect();
    let reversed: Vec<u16> = all.iter().rev().copied().collect();
    store
        .claim_shards("node-a", &all, SHORT)
        .await
        .expect("claim");
    wait_lapsed(store, &all).await;
    let held: Vec<(u16, i64)> = all.iter().map(|&s| (s, 1)).collect();
    let (renewed, taken) = tokio::join!(
        store.renew_shards("node-a", &held, LONG),
        store.claim_shards("node-b", &reversed, LONG),
    );
    let renewed = renewed.expect("renew");
    let taken = taken.expect("claim");
    let mut split: Vec<u16> = renewed
        .iter()
        .copied()
        .chain(taken.iter().map(|c| c.shard))
        .collect();
    split.sort_unstable();
    assert_eq!(split, all, "renewed {renewed:?}, taken {taken:?}");
    for c in &taken {
        assert_eq!(
            (c.epoch, c.previous_owner.as_deref(), c.kind),
            (2, Some("node-a"), ClaimKind::Lapsed),
            "{c:?}"
        );
    }
    let leases = store.leases().await.expect("leases");
    for l in &leases {
        let expected = if renewed.contains(&l.shard) {
            (Some("node-a"), 1)
        } else {
            (Some("node-b"), 2)
        };
        assert_eq!((l.owner.as_deref(), l.epoch), expected, "{l:?}");
    }
}
