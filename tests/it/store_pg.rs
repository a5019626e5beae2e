//! The Postgres store against a real server: round trips, compare-and-set, epoch fencing,
//! idempotency, inbox dedupe, tenant scoping. Requires `DATABASE_URL`.

use crate::common;

use chrono::{DateTime, SubsecRound, Utc};
use iace::store::PgStore;
use iace_actors::catalog::{NewAgent, NewCustomer, Organization, PhoneNumberAssignment};
use iace_actors::machine::{
    start, step, Call, CallSpec, CallStatus, CarrierEvent, Direction, Event, PhoneNumber,
};
use iace_actors::ports::{
    shard_of, CallFilter, CallStore, IdempotencyKey, InboxInsert, InboxItem, InboxRow,
    InsertOutcome, JournalEntry, PageRequest, QueryStore, StoreError, SHARD_COUNT,
};
use uuid::Uuid;

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

struct Fixture {
    store: PgStore,
    org: Uuid,
    agent: Uuid,
    epochs: Vec<i64>,
}

async fn fixture() -> Fixture {
    let (_, pool) = common::db::migrated_pool().await;
    fixture_on(pool).await
}

/// The fixture on a pool of the test's own (migrations applied).
async fn fixture_on(pool: sqlx::PgPool) -> Fixture {
    let store = PgStore::new(pool);
    let org = org(&store, "Acme").await;
    let agent = agent(&store, org).await;
    let shards: Vec<u16> = (0..SHARD_COUNT).collect();
    let epochs = store.acquire_shards("test-node", &shards).await.unwrap();
    Fixture {
        store,
        org,
        agent,
        epochs,
    }
}

async fn org(store: &PgStore, name: &str) -> Uuid {
    let org = Organization {
        id: Uuid::new_v4(),
        name: name.into(),
        created_at: now(),
    };
    let hash = format!("hash-{}", org.id);
    store
        .create_organization(&org, Uuid::new_v4(), &hash, "iace_abc")
        .await
        .unwrap();
    org.id
}

async fn agent(store: &PgStore, org: Uuid) -> Uuid {
    let new: NewAgent = serde_json::from_str(r#"{"name":"Ana"}"#).unwrap();
    let agent = new.validate(Uuid::new_v4(), org, now()).unwrap();
    store.insert_agent(&agent).await.unwrap();
    agent.id
}

impl Fixture {
    fn new_call(&self, to: &str) -> (Call, JournalEntry) {
        let spec = CallSpec {
            id: Uuid::new_v4(),
            organization_id: self.org,
            direction: Direction::Outbound,
            from: "+14155550199".parse().unwrap(),
            to: to.parse().unwrap(),
            agent_id: self.agent,
            customer_id: None,
            metadata: serde_json::json!({"k": [1, 2]}),
            ring_timeout_secs: 30,
            max_duration_secs: 600,
            inbound_leg_id: None,
        };
        let at = now();
        let (mut call, _) = start(spec.clone(), at);
        call.owner_epoch = self.epochs[usize::from(shard_of(spec.id))];
        let entry = JournalEntry {
            call_id: spec.id,
            seq: 1,
            at,
            event: Event::Created { spec },
        };
        (call, entry)
    }

    async fn insert(&self, to: &str) -> Call {
        let (call, entry) = self.new_call(to);
        assert_eq!(
            self.store
                .insert_call(&call, &entry, None, None)
                .await
                .unwrap(),
            InsertOutcome::Created
        );
        call
    }

    async fn apply(&self, call: &Call, event: Event) -> Result<Call, StoreError> {
        let mut next = call.clone();
        step(&mut next, event.clone(), now()).unwrap();
        assert_eq!(
            next.version,
            call.version + 1,
            "test events must change the call"
        );
        let entry = JournalEntry {
            call_id: call.spec.id,
            seq: next.version,
            at: next.updated_at,
            event,
        };
        self.store
            .append(&next, call.version, &entry, None)
            .await
            .map(|()| next)
    }
}

fn answered() -> Event {
    Event::carrier(CarrierEvent::Answered)
}

#[tokio::test]
async fn migrations_install_pgvector() {
    let (_, pool) = common::db::migrated_pool().await;
    let has: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(has);
    // Idempotent.
    iace::store::migrate(&pool).await.unwrap();
}

#[tokio::test]
async fn snapshots_and_journal_round_trip_exactly() {
    let f = fixture().await;
    let call = f.insert("+14155550100").await;
    assert_eq!(
        f.store.load_call(call.spec.id).await.unwrap(),
        Some(call.clone())
    );
    let answered_call = f.apply(&call, answered()).await.unwrap();
    assert_eq!(
        f.store.load_call(call.spec.id).await.unwrap(),
        Some(answered_call.clone())
    );
    let journal = f
        .store
        .call_events(f.org, call.spec.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(journal.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    let replayed =
        iace_actors::machine::replay(journal.into_iter().map(|e| (e.event, e.at))).unwrap();
    assert_eq!(replayed.status, CallStatus::InProgress);
    assert_eq!(
        f.store.live_calls(&[shard_of(call.spec.id)]).await.unwrap(),
        vec![call.spec.id]
    );
}

#[tokio::test]
async fn append_is_compare_and_set_on_version() {
    let f = fixture().await;
    let call = f.insert("+14155550100").await;
    f.apply(&call, answered()).await.unwrap();
    // Same expected version again: stale, nothing written.
    let err = f.apply(&call, answered()).await.unwrap_err();
    assert!(matches!(err, StoreError::Stale), "{err:?}");
    let journal = f
        .store
        .call_events(f.org, call.spec.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(journal.len(), 2);
}

#[tokio::test]
async fn a_new_lease_epoch_fences_the_old_owner() {
    let f = fixture().await;
    let call = f.insert("+14155550100").await;
    let shard = shard_of(call.spec.id);
    let new_epoch = f
        .store
        .acquire_shards("other-node", &[shard])
        .await
        .unwrap()[0];
    assert_eq!(new_epoch, call.owner_epoch + 1);
    let err = f.apply(&call, answered()).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Stale),
        "old owner must be fenced: {err:?}"
    );
    let mut taken = call.clone();
    taken.owner_epoch = new_epoch;
    let next = f.apply(&taken, answered()).await.unwrap();
    let stored = f.store.load_call(call.spec.id).await.unwrap().unwrap();
    assert_eq!(stored.owner_epoch, new_epoch);
    assert_eq!(stored, next);
    // Inserting under the old epoch is refused too.
    let (mut fresh, entry) = f.new_call("+14155550101");
    let mut tries = 0;
    while shard_of(fresh.spec.id) != shard {
        (fresh, _) = f.new_call("+14155550101");
        tries += 1;
        assert!(tries < 100_000);
    }
    let entry = JournalEntry {
        call_id: fresh.spec.id,
        event: Event::Created {
            spec: fresh.spec.clone(),
        },
        ..entry
    };
    assert!(matches!(
        f.store.insert_call(&fresh, &entry, None, None).await,
        Err(StoreError::Stale)
    ));
}

#[tokio::test]
async fn idempotency_keys_return_the_first_call_or_refuse_other_bodies() {
    let f = fixture().await;
    let key = IdempotencyKey {
        key: "k-1".into(),
        fingerprint: "fp-a".into(),
    };
    let (first, e1) = f.new_call("+14155550100");
    assert_eq!(
        f.store
            .insert_call(&first, &e1, Some(&key), None)
            .await
            .unwrap(),
        InsertOutcome::Created
    );
    let (second, e2) = f.new_call("+14155550100");
    assert_eq!(
        f.store
            .insert_call(&second, &e2, Some(&key), None)
            .await
            .unwrap(),
        InsertOutcome::Existing(Box::new(first.clone()))
    );
    let other = IdempotencyKey {
        fingerprint: "fp-b".into(),
        ..key.clone()
    };
    let (third, e3) = f.new_call("+14155550111");
    assert_eq!(
        f.store
            .insert_call(&third, &e3, Some(&other), None)
            .await
            .unwrap(),
        InsertOutcome::IdempotencyMismatch
    );
    let all = f
        .store
        .list_calls(
            f.org,
            &CallFilter {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
}

#[tokio::test]
async fn racing_limited_inserts_never_pass_the_live_call_limit() {
    const LIMIT: u32 = 3;
    let f = fixture().await;
    let key_of = |i: usize| IdempotencyKey {
        key: format!("race-{i}"),
        fingerprint: "fp".into(),
    };
    // 24 inserts for the last 3 slots, all in flight at once on separate connections.
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let store = f.store.clone();
            let (call, entry) = f.new_call("+14155550100");
            let key = key_of(i);
            tokio::spawn(async move {
                let outcome = store
                    .insert_call(&call, &entry, Some(&key), Some(LIMIT))
                    .await
                    .unwrap();
                (i, call, outcome)
            })
        })
        .collect();
    let mut created = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            (i, call, InsertOutcome::Created) => created.push((i, call)),
            (_, _, InsertOutcome::LiveLimit { live }) => {
                assert_eq!(live, u64::from(LIMIT));
                refused += 1;
            }
            (_, _, other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        created.len(),
        LIMIT as usize,
        "exactly the limit is admitted"
    );
    assert_eq!(refused, 24 - LIMIT as usize);
    let listed = f
        .store
        .list_calls(
            f.org,
            &CallFilter {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        listed.len(),
        LIMIT as usize,
        "the refused inserts stored nothing"
    );

    // At the limit, a replay of an admitted key still answers with its call.
    let (i, first) = &created[0];
    let (again, entry) = f.new_call("+14155550100");
    assert_eq!(
        f.store
            .insert_call(&again, &entry, Some(&key_of(*i)), Some(LIMIT))
            .await
            .unwrap(),
        InsertOutcome::Existing(Box::new(first.clone()))
    );
    // Unlimited inserts (inbound calls, engine-internal) are not counted against it.
    let (extra, entry) = f.new_call("+14155550100");
    assert_eq!(
        f.store
            .insert_call(&extra, &entry, None, None)
            .await
            .unwrap(),
        InsertOutcome::Created
    );
    let (late, entry) = f.new_call("+14155550100");
    assert_eq!(
        f.store
            .insert_call(&late, &entry, None, Some(LIMIT + 1))
            .await
            .unwrap(),
        InsertOutcome::LiveLimit { live: 4 }
    );
    // A call that ends frees its slot.
    f.apply(first, Event::HangupRequested).await.unwrap();
    f.apply(&extra, Event::HangupRequested).await.unwrap();
    assert_eq!(
        f.store
            .insert_call(&late, &entry, None, Some(LIMIT))
            .await
            .unwrap(),
        InsertOutcome::Created
    );
}

/// Sessions of this database waiting on an advisory lock.
async fn advisory_lock_waiters(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' \
           AND datname = current_database()",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn limited_creates_of_one_organization_wait_their_turn_without_a_connection() {
    const POOL: u32 = 3;
    const CREATES: usize = 6;
    let (url, _) = common::db::migrated_pool().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(POOL)
        .acquire_timeout(std::time::Duration::from_secs(60))
        .connect(&url)
        .await
        .unwrap();
    let f = fixture_on(pool).await;
    // Another node's create holds the organization's turn in the database.
    use sqlx::Connection;
    let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtextextended('iace:live:' || $1::text, 0))")
        .bind(f.org)
        .execute(&mut other)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..CREATES)
        .map(|_| {
            let store = f.store.clone();
            let (call, entry) = f.new_call("+14155550100");
            tokio::spawn(async move {
                store
                    .insert_call(&call, &entry, None, Some(2))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut monitor = sqlx::PgConnection::connect(&url).await.unwrap();
    // Every create is waiting somewhere: for its turn here, or on the lock in the database
    // (without turns, as many as the pool has connections).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let in_db = loop {
        let in_db = advisory_lock_waiters(&mut monitor).await;
        let here = f.store.creates_waiting_their_turn();
        if here + usize::try_from(in_db).unwrap() >= CREATES || in_db >= i64::from(POOL) {
            break in_db;
        }
        assert!(std::time::Instant::now() < deadline, "creates never queued");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(in_db, 1, "one connection waits on the organization's lock");
    assert_eq!(f.store.creates_waiting_their_turn(), CREATES - 1);
    // The rest of the pool serves everything else meanwhile.
    let listed = f
        .store
        .list_calls(f.org, &CallFilter::default())
        .await
        .unwrap();
    assert!(listed.is_empty());
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut other)
        .await
        .unwrap();
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            InsertOutcome::Created => created += 1,
            InsertOutcome::LiveLimit { live: 2 } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(created, 2, "the limit holds with turns taken in memory");
}

#[tokio::test]
async fn unknown_or_foreign_agents_and_customers_are_refused() {
    let f = fixture().await;
    let stranger = org(&f.store, "Globex").await;
    let foreign_agent = agent(&f.store, stranger).await;
    let (mut call, mut entry) = f.new_call("+14155550100");
    call.spec.agent_id = foreign_agent;
    entry.event = Event::Created {
        spec: call.spec.clone(),
    };
    assert_eq!(
        f.store
            .insert_call(&call, &entry, None, None)
            .await
            .unwrap(),
        InsertOutcome::UnknownAgent
    );
    let (mut call, mut entry) = f.new_call("+14155550100");
    call.spec.customer_id = Some(Uuid::new_v4());
    entry.event = Event::Created {
        spec: call.spec.clone(),
    };
    assert_eq!(
        f.store
            .insert_call(&call, &entry, None, None)
            .await
            .unwrap(),
        InsertOutcome::UnknownCustomer
    );
}

#[tokio::test]
async fn inbox_dedupes_and_is_marked_processed_with_the_change() {
    let f = fixture().await;
    let call = f.insert("+14155550100").await;
    let item = InboxItem {
        vendor: "telnyx".into(),
        event_id: "ev-1".into(),
        call_id: call.spec.id,
        // Read back with the event: the leg decides whether the fact is the call's own.
        carrier_leg: Some("leg-7".into()),
        occurred_at: now(),
        event: CarrierEvent::Answered,
    };
    assert!(f.store.inbox_insert(&item).await.unwrap());
    assert!(!f.store.inbox_insert(&item).await.unwrap(), "duplicate");
    let unknown = InboxItem {
        call_id: Uuid::new_v4(),
        event_id: "ev-x".into(),
        ..item.clone()
    };
    assert!(
        !f.store.inbox_insert(&unknown).await.unwrap(),
        "unknown call"
    );
    assert_eq!(f.store.inbox_pending(10).await.unwrap(), vec![item.clone()]);

    let mut next = call.clone();
    step(&mut next, answered(), now()).unwrap();
    let entry = JournalEntry {
        call_id: call.spec.id,
        seq: next.version,
        at: next.updated_at,
        event: answered(),
    };
    f.store
        .append(&next, call.version, &entry, Some(("telnyx", "ev-1")))
        .await
        .unwrap();
    assert!(f.store.inbox_pending(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn reads_are_scoped_to_the_organization_and_paged() {
    let f = fixture().await;
    let stranger = org(&f.store, "Globex").await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(f.insert(&format!("+1415555010{n}")).await.spec.id);
    }
    let id = ids[0];
    assert!(f.store.get_call(stranger, id).await.unwrap().is_none());
    assert!(f.store.call_events(stranger, id).await.unwrap().is_none());
    assert!(f
        .store
        .get_agent(stranger, f.agent)
        .await
        .unwrap()
        .is_none());

    let page1 = f
        .store
        .list_calls(
            f.org,
            &CallFilter {
                limit: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page1.len(), 2);
    let last = page1.last().unwrap();
    let page2 = f
        .store
        .list_calls(
            f.org,
            &CallFilter {
                limit: 2,
                after: Some((last.created_at, last.spec.id)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page2.len(), 1);
    let mut seen: Vec<Uuid> = page1.iter().chain(&page2).map(|c| c.spec.id).collect();
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids);
    let filtered = f
        .store
        .list_calls(
            f.org,
            &CallFilter {
                limit: 10,
                status: Some(CallStatus::Completed),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(filtered.is_empty());
}

#[tokio::test]
async fn customers_are_unique_per_phone_and_agents_with_calls_are_archived() {
    let f = fixture().await;
    let new = || -> NewCustomer { serde_json::from_str(r#"{"phone":"+14155550100"}"#).unwrap() };
    let c = new().validate(Uuid::new_v4(), f.org, now()).unwrap();
    assert!(f.store.insert_customer(&c).await.unwrap());
    let dup = new().validate(Uuid::new_v4(), f.org, now()).unwrap();
    assert!(!f.store.insert_customer(&dup).await.unwrap());
    let page = PageRequest {
        limit: 10,
        after: None,
    };
    assert_eq!(f.store.list_customers(f.org, &page).await.unwrap().len(), 1);

    f.insert("+14155550100").await;
    assert!(f.store.delete_agent(f.org, f.agent, now()).await.unwrap());
    let archived = f.store.get_agent(f.org, f.agent).await.unwrap().unwrap();
    assert_eq!(archived.status.as_str(), "archived");
    assert!(f.store.delete_customer(f.org, c.id).await.unwrap());
    assert!(!f.store.delete_customer(f.org, c.id).await.unwrap());
}

#[tokio::test]
async fn an_ended_call_with_an_unconfirmed_hangup_is_recovered_until_released() {
    let f = fixture().await;
    let call = f.insert("+14155550177").await;
    let shard = [shard_of(call.spec.id)];
    let up = f.apply(&call, answered()).await.unwrap();
    let ended = f.apply(&up, Event::HangupRequested).await.unwrap();
    assert_eq!(ended.status, CallStatus::Completed);
    assert!(ended.release_pending);
    assert_eq!(
        f.store.load_call(call.spec.id).await.unwrap(),
        Some(ended.clone())
    );
    assert_eq!(
        f.store.live_calls(&shard).await.unwrap(),
        vec![call.spec.id],
        "its hangup is not confirmed: it still needs an actor"
    );
    let released = f.apply(&ended, Event::LegReleased).await.unwrap();
    assert!(!released.release_pending);
    assert!(f.store.live_calls(&shard).await.unwrap().is_empty());
}

fn row(
    event_id: &str,
    call_id: Option<Uuid>,
    leg: Option<&str>,
    event: Option<CarrierEvent>,
) -> InboxRow {
    InboxRow {
        vendor: "telnyx".into(),
        event_id: event_id.into(),
        event_type: "call.hangup".into(),
        call_id,
        carrier_leg: leg.map(str::to_owned),
        occurred_at: now(),
        event,
        raw: Some(serde_json::json!({"data": {"id": event_id}})),
    }
}

#[tokio::test]
async fn inbox_rows_without_a_call_wait_under_their_leg_and_are_adopted_once() {
    let f = fixture().await;
    let hangup = CarrierEvent::HungUp {
        cause: iace_actors::machine::HangupCause::OriginatorCancel,
    };
    // A fact with no call yet: stored, not pending, waiting under its leg.
    let early = row("ev-early", None, Some("leg-1"), Some(hangup.clone()));
    assert_eq!(
        f.store.inbox_record(&early).await.unwrap(),
        InboxInsert::New
    );
    assert_eq!(
        f.store.inbox_record(&early).await.unwrap(),
        InboxInsert::Duplicate
    );
    // Unknown types are stored processed, with or without a call.
    let unknown = row("ev-speak", None, Some("leg-1"), None);
    assert_eq!(
        f.store.inbox_record(&unknown).await.unwrap(),
        InboxInsert::New
    );
    // A row naming a call that does not exist stores nothing.
    let ghost = row("ev-ghost", Some(Uuid::new_v4()), None, Some(hangup.clone()));
    assert_eq!(
        f.store.inbox_record(&ghost).await.unwrap(),
        InboxInsert::UnknownCall
    );
    assert!(f.store.inbox_pending(10).await.unwrap().is_empty());

    // The call appears with that leg: the fact is adopted once, and becomes pending.
    let mut call = f.insert("+14155550100").await;
    call = f
        .apply(
            &call,
            Event::carrier(CarrierEvent::Initiated {
                carrier_call_id: "leg-1".into(),
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        f.store.call_for_leg("leg-1").await.unwrap(),
        Some(call.spec.id)
    );
    assert_eq!(f.store.call_for_leg("leg-2").await.unwrap(), None);
    let adopted = f
        .store
        .inbox_adopt("telnyx", "leg-1", call.spec.id)
        .await
        .unwrap();
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].event_id, "ev-early");
    assert_eq!(adopted[0].call_id, call.spec.id);
    assert_eq!(adopted[0].event, hangup);
    assert!(f
        .store
        .inbox_adopt("telnyx", "leg-1", call.spec.id)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(f.store.inbox_pending(10).await.unwrap(), adopted);

    // A routed row with a fact is pending; one without is stored processed.
    let routed = row("ev-routed", Some(call.spec.id), Some("leg-1"), Some(hangup));
    assert_eq!(
        f.store.inbox_record(&routed).await.unwrap(),
        InboxInsert::New
    );
    assert_eq!(f.store.inbox_pending(10).await.unwrap().len(), 2);
    let note = row("ev-note", Some(call.spec.id), Some("leg-1"), None);
    assert_eq!(f.store.inbox_record(&note).await.unwrap(), InboxInsert::New);
    assert_eq!(f.store.inbox_pending(10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn phone_numbers_are_unique_routed_and_tenant_scoped() {
    let f = fixture().await;
    let other = org(&f.store, "Other").await;
    let other_agent = agent(&f.store, other).await;
    let number: PhoneNumber = "+14155550123".parse().unwrap();
    let assignment = PhoneNumberAssignment {
        id: Uuid::new_v4(),
        organization_id: f.org,
        agent_id: f.agent,
        number: number.clone(),
        created_at: now(),
    };
    assert!(f.store.insert_phone_number(&assignment).await.unwrap());
    // The same number in another organization is refused.
    let taken = PhoneNumberAssignment {
        id: Uuid::new_v4(),
        organization_id: other,
        agent_id: other_agent,
        ..assignment.clone()
    };
    assert!(!f.store.insert_phone_number(&taken).await.unwrap());
    // Another organization's agent cannot be given our number either (nothing stored).
    let foreign_agent = PhoneNumberAssignment {
        id: Uuid::new_v4(),
        agent_id: other_agent,
        number: "+14155550124".parse().unwrap(),
        ..assignment.clone()
    };
    assert!(!f.store.insert_phone_number(&foreign_agent).await.unwrap());
    assert_eq!(
        f.store.route_number(&number).await.unwrap(),
        Some(assignment.clone())
    );
    let page = PageRequest {
        limit: 10,
        after: None,
    };
    assert_eq!(
        f.store
            .list_phone_numbers(f.org, None, &page)
            .await
            .unwrap(),
        vec![assignment.clone()]
    );
    assert!(f
        .store
        .list_phone_numbers(other, None, &page)
        .await
        .unwrap()
        .is_empty());
    assert!(!f
        .store
        .delete_phone_number(other, assignment.id)
        .await
        .unwrap());
    assert!(f
        .store
        .delete_phone_number(f.org, assignment.id)
        .await
        .unwrap());
    assert_eq!(f.store.route_number(&number).await.unwrap(), None);
}

fn hung_up(cause: iace_actors::machine::HangupCause) -> Event {
    Event::carrier(CarrierEvent::HungUp { cause })
}

#[tokio::test]
async fn a_completed_call_is_queued_for_learning_with_its_completion_and_only_once() {
    use iace_actors::machine::HangupCause;
    let f = fixture().await;
    let pool = f.store.pool().clone();
    let queued = |id: Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (DateTime<Utc>, DateTime<Utc>, i32)>(
                "SELECT enqueued_at, next_attempt_at, attempts FROM learning_queue WHERE call_id = $1",
            )
            .bind(id)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let call = f.insert("+14155550100").await;
    let live = f.apply(&call, answered()).await.unwrap();
    assert!(queued(call.spec.id).await.is_empty(), "not before it ends");
    let done = f
        .apply(&live, hung_up(HangupCause::NormalClearing))
        .await
        .unwrap();
    assert_eq!(done.status, CallStatus::Completed);
    let rows = queued(call.spec.id).await;
    assert_eq!(rows.len(), 1);
    let (enqueued, due, attempts) = rows[0];
    assert_eq!(enqueued, done.updated_at);
    assert_eq!(
        due - enqueued,
        chrono::Duration::from_std(iace_actors::learning::LEARNING_SETTLE).unwrap()
    );
    assert_eq!(attempts, 0);
    // A write the transition was rolled back with queues nothing: a stale append fails whole.
    let stale = f.apply(&live, hung_up(HangupCause::NormalClearing)).await;
    assert!(matches!(stale, Err(StoreError::Stale)), "{stale:?}");
    assert_eq!(queued(call.spec.id).await, rows);

    // A call that never connected has nothing to learn from.
    let unanswered = f.insert("+14155550101").await;
    let failed = f
        .apply(&unanswered, hung_up(HangupCause::Busy))
        .await
        .unwrap();
    assert_eq!(failed.status, CallStatus::Failed);
    assert!(queued(unanswered.spec.id).await.is_empty());
}

#[tokio::test]
async fn the_learning_lease_has_one_holder_until_it_expires() {
    use iace_actors::ports::learning::LearningStore;
    use std::time::Duration;
    let f = fixture().await;
    let t = now();
    let ttl = Duration::from_secs(30);
    assert!(f.store.try_lead("learning", "a", t, ttl).await.unwrap());
    assert!(!f.store.try_lead("learning", "b", t, ttl).await.unwrap());
    // The holder renews.
    let later = t + chrono::Duration::seconds(20);
    assert!(f.store.try_lead("learning", "a", later, ttl).await.unwrap());
    assert!(!f
        .store
        .try_lead("learning", "b", t + chrono::Duration::seconds(45), ttl)
        .await
        .unwrap());
    // Not renewed: the next one takes over.
    let expired = later + chrono::Duration::seconds(31);
    assert!(f
        .store
        .try_lead("learning", "b", expired, ttl)
        .await
        .unwrap());
    assert!(!f
        .store
        .try_lead("learning", "a", expired, ttl)
        .await
        .unwrap());
    // Other leases are independent.
    assert!(f.store.try_lead("other", "a", t, ttl).await.unwrap());
}

#[tokio::test]
async fn stray_legs_and_ownership_are_stored_with_the_call() {
    let f = fixture().await;
    let mut call = f.insert("+14155550100").await;
    call = f
        .apply(
            &call,
            Event::carrier(CarrierEvent::Initiated {
                carrier_call_id: "leg-own".into(),
            }),
        )
        .await
        .unwrap();
    call = f
        .apply(
            &call,
            Event::StrayLeg {
                leg: "leg-second".into(),
                fact: CarrierEvent::Answered,
            },
        )
        .await
        .unwrap();
    let loaded = f.store.load_call(call.spec.id).await.unwrap().unwrap();
    assert_eq!(loaded.stray_legs, call.stray_legs);
    assert_eq!(
        loaded.stray_legs,
        vec![iace_actors::machine::StrayLeg {
            leg: "leg-second".into(),
            ended: false
        }]
    );
    assert_eq!(loaded.carrier_call_id.as_deref(), Some("leg-own"));
    // The journal replays to the stored snapshot.
    let journal = f
        .store
        .call_events(f.org, call.spec.id)
        .await
        .unwrap()
        .unwrap();
    let mut replayed =
        iace_actors::machine::replay(journal.iter().map(|e| (e.event.clone(), e.at))).unwrap();
    replayed.owner_epoch = loaded.owner_epoch;
    assert_eq!(replayed, loaded);

    // A dial asks whether this node still owns the call's shard.
    let shard = iace_actors::ports::shard_of(call.spec.id);
    let epoch = f.epochs[usize::from(shard)];
    assert!(f.store.owns_shard(shard, epoch).await.unwrap());
    f.store
        .acquire_shards("other-node", &[shard])
        .await
        .unwrap();
    assert!(!f.store.owns_shard(shard, epoch).await.unwrap());
}

// ---------------------------------------------------------------------------------------------
// The webhook outbox
// ---------------------------------------------------------------------------------------------

/// Registers an endpoint of `org` for `types`.
async fn webhook_endpoint(store: &PgStore, org: Uuid, types: &[&str], enabled: bool) -> Uuid {
    let new = iace_actors::catalog::webhooks::NewWebhookEndpoint {
        url: "https://hooks.example.com/iace".into(),
        description: String::new(),
        event_types: types.iter().map(|t| (*t).to_owned()).collect(),
        enabled,
    };
    let secret = iace::outbound::signing::Secret::generate().expose();
    let endpoint = new.validate(Uuid::new_v4(), org, secret, now()).unwrap();
    store.insert_webhook_endpoint(&endpoint).await.unwrap();
    endpoint.id
}

/// `(type, next_attempt_at)` of an endpoint's deliveries, in commit order.
async fn outbox(store: &PgStore, endpoint: Uuid) -> Vec<(String, Option<DateTime<Utc>>)> {
    sqlx::query_as(
        "SELECT e.type, d.next_attempt_at FROM webhook_delivery d \
         JOIN webhook_event e ON e.id = d.event_id WHERE d.endpoint_id = $1 ORDER BY d.position",
    )
    .bind(endpoint)
    .fetch_all(store.pool())
    .await
    .unwrap()
}

fn types(rows: &[(String, Option<DateTime<Utc>>)]) -> Vec<&str> {
    rows.iter().map(|(t, _)| t.as_str()).collect()
}

#[tokio::test]
async fn call_events_are_written_by_the_write_that_causes_them_and_never_by_one_that_failed() {
    use iace_actors::machine::HangupCause;
    use iace_actors::ports::Append;
    let f = fixture().await;
    const ALL: [&str; 5] = [
        "call.created",
        "call.ringing",
        "call.answered",
        "call.ended",
        "call.transcript_ready",
    ];
    let all = webhook_endpoint(&f.store, f.org, &ALL, true).await;
    let ended_only = webhook_endpoint(&f.store, f.org, &["call.ended"], true).await;
    let disabled = webhook_endpoint(&f.store, f.org, &ALL, false).await;
    let other_org = org(&f.store, "Other").await;
    let foreign = webhook_endpoint(&f.store, other_org, &ALL, true).await;

    let call = f.insert("+14155550100").await;
    assert_eq!(types(&outbox(&f.store, all).await), ["call.created"]);
    let ringing = f
        .apply(&call, Event::carrier(CarrierEvent::Ringing))
        .await
        .unwrap();
    let live = f.apply(&ringing, answered()).await.unwrap();
    // A stale write fails whole: no event of it.
    let stale = f.apply(&ringing, answered()).await;
    assert!(matches!(stale, Err(StoreError::Stale)), "{stale:?}");
    assert_eq!(
        types(&outbox(&f.store, all).await),
        ["call.created", "call.ringing", "call.answered"]
    );

    // A batch: the appends that commit write their events, the stale one none.
    let other = f.insert("+14155550101").await;
    let append = |call: &Call, event: Event| {
        let mut next = call.clone();
        step(&mut next, event.clone(), now()).unwrap();
        Append {
            entry: JournalEntry {
                call_id: call.spec.id,
                seq: next.version,
                at: next.updated_at,
                event,
            },
            call: next,
            expected_version: call.version,
            inbox: None,
        }
    };
    let mut behind = append(&other, answered());
    behind.expected_version -= 1;
    let results = f
        .store
        .append_batch(&[append(&live, hung_up(HangupCause::NormalClearing)), behind])
        .await;
    assert!(results[0].is_ok() && matches!(results[1], Err(StoreError::Stale)));
    let rows = outbox(&f.store, all).await;
    assert_eq!(
        types(&rows),
        [
            "call.created",
            "call.ringing",
            "call.answered",
            "call.created",
            "call.ended",
            "call.transcript_ready",
        ]
    );
    // The transcript waits for the conversation's last records.
    let (ended_at, transcript_at) = (rows[4].1.unwrap(), rows[5].1.unwrap());
    assert_eq!(
        transcript_at - ended_at,
        chrono::Duration::from_std(iace_actors::outbox::TRANSCRIPT_SETTLE).unwrap()
    );
    assert_eq!(types(&outbox(&f.store, ended_only).await), ["call.ended"]);
    assert!(outbox(&f.store, disabled).await.is_empty());
    assert!(outbox(&f.store, foreign).await.is_empty());
}

#[tokio::test]
async fn deliveries_go_in_order_per_call_under_one_lease_and_days_of_failure_disable() {
    use iace_actors::ports::outbox::{AttemptOutcome, AttemptRecord, OutboxStore, Recorded};
    use std::time::Duration;
    let f = fixture().await;
    let endpoint = webhook_endpoint(
        &f.store,
        f.org,
        &["call.created", "call.answered", "call.ringing"],
        true,
    )
    .await;
    let a = f.insert("+14155550100").await;
    let b = f.insert("+14155550101").await;
    f.apply(&a, answered()).await.unwrap();
    let t = now() + chrono::Duration::seconds(1);
    let ttl = Duration::from_secs(30);

    let leases = f.store.claim_endpoints("n1", t, ttl, 10).await.unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].endpoint_id, endpoint);
    assert_eq!(leases[0].secrets.len(), 1);
    assert!(f
        .store
        .claim_endpoints("n2", t, ttl, 10)
        .await
        .unwrap()
        .is_empty());

    // The first pending event of each call: a's answer waits for a's creation.
    let due = f.store.due_deliveries(endpoint, t, 10, &[]).await.unwrap();
    let heads: Vec<(Uuid, &str)> = due
        .iter()
        .map(|d| (d.call_id.unwrap(), d.event_type.as_str()))
        .collect();
    assert_eq!(
        heads,
        [(a.spec.id, "call.created"), (b.spec.id, "call.created")]
    );
    let record = |d: &iace_actors::ports::outbox::DueDelivery,
                  outcome,
                  next: Option<DateTime<Utc>>,
                  cutoff: DateTime<Utc>| AttemptRecord {
        delivery_id: d.id,
        endpoint_id: endpoint,
        attempt: d.attempts + 1,
        at: t,
        outcome,
        status_code: Some(if outcome == AttemptOutcome::Delivered {
            204
        } else {
            500
        }),
        latency: Duration::from_millis(12),
        error: None,
        next_attempt_at: next,
        disable_if_failing_since: cutoff,
    };
    // One in flight: left out, and its call's later event still waits for it.
    let others = f
        .store
        .due_deliveries(endpoint, t, 10, &[due[0].id])
        .await
        .unwrap();
    assert_eq!(others.len(), 1);
    assert_eq!(others[0].id, due[1].id);
    let long_ago = t - chrono::Duration::days(3);
    let delivered = record(&due[0], AttemptOutcome::Delivered, None, long_ago);
    assert_eq!(
        f.store.record_attempt(&delivered).await.unwrap(),
        Recorded::Done
    );
    // Recorded twice (a worker that lost its lease): the second changes nothing.
    assert_eq!(
        f.store.record_attempt(&delivered).await.unwrap(),
        Recorded::Overtaken
    );
    let later = t + chrono::Duration::seconds(5);
    let failed = record(&due[1], AttemptOutcome::Failed, Some(later), long_ago);
    assert_eq!(
        f.store.record_attempt(&failed).await.unwrap(),
        Recorded::Done
    );
    let due = f.store.due_deliveries(endpoint, t, 10, &[]).await.unwrap();
    assert_eq!(due.len(), 1, "b waits for its retry");
    assert_eq!(
        (due[0].call_id.unwrap(), due[0].event_type.as_str()),
        (a.spec.id, "call.answered")
    );

    // Failing since before the cut-off: disabled, its pending deliveries failed, and the
    // organization told.
    let b_retry = f
        .store
        .due_deliveries(endpoint, later, 10, &[])
        .await
        .unwrap();
    let b_retry = b_retry
        .iter()
        .find(|d| d.call_id == Some(b.spec.id))
        .unwrap();
    assert_eq!(b_retry.attempts, 1);
    let cutoff = later + chrono::Duration::seconds(1);
    let last = record(b_retry, AttemptOutcome::Failed, Some(later), cutoff);
    assert!(matches!(
        f.store.record_attempt(&last).await.unwrap(),
        Recorded::Disabled(_)
    ));
    let e = f
        .store
        .get_webhook_endpoint(f.org, endpoint)
        .await
        .unwrap()
        .unwrap();
    assert!(!e.enabled);
    assert!(e.disabled_reason.unwrap().contains("failed since"));
    assert!(f
        .store
        .due_deliveries(endpoint, later, 10, &[])
        .await
        .unwrap()
        .is_empty());
    let log = f
        .store
        .org_log(
            f.org,
            &PageRequest {
                limit: 10,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].kind, "webhook_endpoint.disabled");
    assert_eq!(log[0].data["pending_deliveries_failed"], 2);
    assert!(f
        .store
        .claim_endpoints("n1", later, ttl, 10)
        .await
        .unwrap()
        .is_empty());
}
