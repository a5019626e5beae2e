//! Actor-level tests: paused tokio time, in-memory ports.

use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;

use uuid::Uuid;

use super::*;
use crate::catalog::NewAgent;
use crate::machine::{
    start, Call, CallId, CallSpec, CallStatus, CarrierEvent, Direction, EndReason, Event,
    HangupCause, OrganizationId,
};
use crate::ports::{
    CallFilter, CallStore, InboxItem, InsertOutcome, JournalEntry, LegStatus, QueryStore,
};
use crate::testkit::{MemoryStore, ScriptedTelephony, SeqIds, TokioClock};

struct World {
    store: Arc<MemoryStore>,
    carrier: Arc<ScriptedTelephony>,
    ports: Ports,
    org: OrganizationId,
    agent: Uuid,
    events: std::sync::atomic::AtomicU64,
}

impl World {
    async fn new(seed: u64) -> World {
        let store = Arc::new(MemoryStore::new());
        let carrier = Arc::new(ScriptedTelephony::new());
        let epoch = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let ports = Ports {
            calls: store.clone(),
            cluster: store.clone(),
            peers: None,
            queries: store.clone(),
            telephony: carrier.clone(),
            clock: Arc::new(TokioClock::new(epoch)),
            ids: Arc::new(SeqIds::new(seed)),
            breakers: Default::default(),
            voice: None,
            recall: None,
            accounts: None,
            outbox: None,
            analysis: None,
            traces: None,
        };
        let org = Uuid::from_u128(0xA);
        let agent = Uuid::from_u128(0xA6E);
        let new: NewAgent = serde_json::from_str(r#"{"name":"Ana"}"#).unwrap();
        store
            .insert_agent(&new.validate(agent, org, epoch).unwrap())
            .await
            .unwrap();
        World {
            store,
            carrier,
            ports,
            org,
            agent,
            events: Default::default(),
        }
    }

    async fn engine(&self) -> Engine {
        let config = EngineConfig {
            inbox_sweep_every: Duration::from_secs(2),
            ..EngineConfig::default()
        };
        Engine::start(self.ports.clone(), config, &prometheus::Registry::new())
            .await
            .unwrap()
    }

    fn new_call(&self) -> NewCall {
        NewCall {
            to: "+14155550100".parse().unwrap(),
            from: "+14155550199".parse().unwrap(),
            agent_id: self.agent,
            customer_id: None,
            metadata: Some(serde_json::json!({"campaign": "renewals"})),
        }
    }

    async fn carrier_event(
        &self,
        engine: &Engine,
        call: CallId,
        event: CarrierEvent,
    ) -> IngestOutcome {
        let n = self
            .events
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.carrier_event_id(engine, call, event, &format!("ev-{n}"))
            .await
    }

    async fn carrier_event_id(
        &self,
        engine: &Engine,
        call: CallId,
        event: CarrierEvent,
        id: &str,
    ) -> IngestOutcome {
        engine
            .ingest_carrier_event(InboxItem {
                vendor: "test".into(),
                carrier_leg: None,
                event_id: id.into(),
                call_id: call,
                occurred_at: self.ports.clock.now(),
                event,
            })
            .await
            .unwrap()
    }

    /// Places a call and waits until its leg is journaled: (call, leg).
    async fn placed(&self, engine: &Engine) -> (CallId, String) {
        let id = engine
            .create_call(self.org, self.new_call(), None)
            .await
            .unwrap()
            .call
            .spec
            .id;
        let leg = self
            .until(id, "leg known", |c| c.carrier_call_id.is_some())
            .await
            .carrier_call_id
            .unwrap();
        (id, leg)
    }

    /// A webhook about `leg` of `call`, stamped by the carrier at `occurred_at`.
    async fn leg_event(
        &self,
        engine: &Engine,
        call: CallId,
        leg: &str,
        event: CarrierEvent,
        occurred_at: chrono::DateTime<chrono::Utc>,
    ) -> IngestOutcome {
        let n = self
            .events
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        engine
            .ingest_carrier_event(InboxItem {
                vendor: "test".into(),
                carrier_leg: Some(leg.into()),
                event_id: format!("ev-{n}"),
                call_id: call,
                occurred_at,
                event,
            })
            .await
            .unwrap()
    }

    /// Lets the actors run until `done` holds for the call's snapshot (bounded).
    async fn until(&self, id: CallId, what: &str, done: impl Fn(&Call) -> bool) -> Call {
        for _ in 0..500 {
            if let Some(c) = self.store.snapshot(id) {
                if done(&c) {
                    return c;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "call never reached: {what}; snapshot {:?}",
            self.store.snapshot(id)
        );
    }

    fn assert_contiguous(&self, id: CallId) -> Vec<&'static str> {
        let journal = self.store.journal(id);
        let seqs: Vec<i64> = journal.iter().map(|e| e.seq).collect();
        let expected: Vec<i64> = (1..=i64::try_from(journal.len()).unwrap()).collect();
        assert_eq!(seqs, expected, "journal must be gap-free and unique");
        let snapshot = self.store.snapshot(id).unwrap();
        assert_eq!(snapshot.version, *seqs.last().unwrap());
        let mut replayed =
            crate::machine::replay(journal.iter().map(|e| (e.event.clone(), e.at))).unwrap();
        replayed.owner_epoch = snapshot.owner_epoch;
        assert_eq!(replayed, snapshot, "snapshot must equal the journal fold");
        journal.iter().map(|e| e.event.kind()).collect()
    }
}

#[tokio::test(start_paused = true)]
async fn outbound_call_runs_to_completion() {
    let w = World::new(1).await;
    let engine = w.engine().await;
    let created = engine.create_call(w.org, w.new_call(), None).await.unwrap();
    assert!(!created.replayed);
    assert_eq!(created.call.status, CallStatus::Pending);
    let id = created.call.spec.id;

    let call = w
        .until(id, "initiated", |c| c.carrier_call_id.is_some())
        .await;
    assert_eq!(
        call.carrier_call_id.as_deref(),
        Some(format!("leg-{id}").as_str())
    );
    let dials = w.carrier.dials(id);
    assert_eq!(dials.len(), 1);
    assert_eq!(dials[0].command_id, format!("{id}:1"));

    w.carrier_event(&engine, id, CarrierEvent::Ringing).await;
    w.until(id, "ringing", |c| c.status == CallStatus::Ringing)
        .await;
    w.carrier_event(&engine, id, CarrierEvent::Answered).await;
    let call = w
        .until(id, "answered", |c| c.status == CallStatus::InProgress)
        .await;
    assert!(call.answered_at.is_some());
    w.carrier_event(
        &engine,
        id,
        CarrierEvent::HungUp {
            cause: HangupCause::NormalClearing,
        },
    )
    .await;
    let call = w.until(id, "completed", |c| c.status.is_terminal()).await;
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(call.end_reason, Some(EndReason::NormalClearing));
    assert_eq!(
        w.assert_contiguous(id),
        ["created", "initiated", "ringing", "answered", "hangup"]
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        engine.live_call_actors().await.unwrap(),
        0,
        "ended calls free their actor"
    );
    assert_eq!(engine.metrics().calls_created.get(), 1);
    engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn unanswered_call_fails_on_ring_timeout_and_is_hung_up() {
    let w = World::new(2).await;
    let engine = w.engine().await;
    let id = engine
        .create_call(w.org, w.new_call(), None)
        .await
        .unwrap()
        .call
        .spec
        .id;
    w.until(id, "initiated", |c| c.carrier_call_id.is_some())
        .await;
    tokio::time::sleep(Duration::from_secs(31)).await;
    let call = w.until(id, "failed", |c| c.status.is_terminal()).await;
    assert_eq!(call.status, CallStatus::Failed);
    assert_eq!(call.end_reason, Some(EndReason::RingTimeout));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let hangups = w.carrier.hangups(id);
    assert_eq!(hangups.len(), 1);
    assert_eq!(
        hangups[0].carrier_call_id.as_deref(),
        Some(format!("leg-{id}").as_str())
    );
    w.assert_contiguous(id);
}

#[tokio::test(start_paused = true)]
async fn answered_call_is_cut_at_max_duration() {
    let w = World::new(3).await;
    let engine = w.engine().await;
    let id = engine
        .create_call(w.org, w.new_call(), None)
        .await
        .unwrap()
        .call
        .spec
        .id;
    w.carrier_event(&engine, id, CarrierEvent::Answered).await;
    w.until(id, "answered", |c| c.status == CallStatus::InProgress)
        .await;
    // The ring timeout must not fire once answered.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(w.store.snapshot(id).unwrap().status, CallStatus::InProgress);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let call = w.until(id, "completed", |c| c.status.is_terminal()).await;
    assert_eq!(call.end_reason, Some(EndReason::MaxDuration));
    w.assert_contiguous(id);
}

#[tokio::test(start_paused = true)]
async fn idempotency_key_replays_and_refuses_other_bodies() {
    let w = World::new(4).await;
    let engine = w.engine().await;
    let first = engine
        .create_call(w.org, w.new_call(), Some("order-42".into()))
        .await
        .unwrap();
    let again = engine
        .create_call(w.org, w.new_call(), Some("order-42".into()))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.call.spec.id, first.call.spec.id);
    let mut other = w.new_call();
    other.to = "+14155550101".parse().unwrap();
    let err = engine
        .create_call(w.org, other, Some("order-42".into()))
        .await
        .unwrap_err();
    assert_eq!(err, EngineError::IdempotencyMismatch);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        w.carrier.dials(first.call.spec.id).len(),
        1,
        "no second dial"
    );
    let bad = engine
        .create_call(w.org, w.new_call(), Some("has space".into()))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), "invalid_request");
}

#[tokio::test(start_paused = true)]
async fn the_concurrent_call_limit_refuses_new_calls_until_one_ends() {
    let w = World::new(41).await;
    let engine = w.engine().await;
    let first = engine
        .create_call_within(w.org, w.new_call(), Some("a".into()), Some(1))
        .await
        .unwrap();
    let err = engine
        .create_call_within(w.org, w.new_call(), Some("b".into()), Some(1))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        EngineError::ConcurrentCallLimit {
            allowed: 1,
            live: 1
        }
    );
    assert_eq!(err.code(), "concurrent_call_limit");
    let listed = engine
        .list_calls(w.org, CallFilter::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "the refused create stored nothing");
    // The replay of the admitted key is not refused.
    let again = engine
        .create_call_within(w.org, w.new_call(), Some("a".into()), Some(1))
        .await
        .unwrap();
    assert!(again.replayed);
    engine.hangup(w.org, first.call.spec.id).await.unwrap();
    w.until(first.call.spec.id, "ended", |c| c.status.is_terminal())
        .await;
    let next = engine
        .create_call_within(w.org, w.new_call(), Some("b".into()), Some(1))
        .await
        .unwrap();
    assert!(!next.replayed);
}

#[tokio::test(start_paused = true)]
async fn a_node_at_capacity_refuses_new_calls_before_storing_anything() {
    let w = World::new(43).await;
    let config = EngineConfig {
        max_live_calls: 2,
        ..EngineConfig::default()
    };
    let engine = Engine::start(w.ports.clone(), config, &prometheus::Registry::new())
        .await
        .unwrap();
    w.assign(&engine, "+14155550123").await;
    // A create that fails gives its slot back.
    let unknown = NewCall {
        agent_id: Uuid::from_u128(0xBAD),
        ..w.new_call()
    };
    let err = engine.create_call(w.org, unknown, None).await.unwrap_err();
    assert_eq!(err.code(), "invalid_request");
    let (first, _) = w.placed(&engine).await;
    let (_second, _) = w.placed(&engine).await;
    assert_eq!(
        engine.load(),
        Load {
            running: 2,
            admitting: 0,
            max: 2
        }
    );

    let err = engine
        .create_call(w.org, w.new_call(), Some("k".into()))
        .await
        .unwrap_err();
    assert_eq!(err, EngineError::AtCapacity { running: 2, max: 2 });
    assert_eq!(err.code(), "at_capacity");
    let listed = engine
        .list_calls(w.org, CallFilter::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), 2, "the refused create stored nothing");

    // An inbound caller is turned away at the carrier; no call is created for the leg.
    let out = engine
        .ingest_vendor_event(vendor_event(
            "ev-offer",
            offer("leg-full", "+14155550123"),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(out, IngestOutcome::Rejected);
    let reject = crate::testkit::Command::Reject {
        carrier_call_id: "leg-full".into(),
        command_id: "reject:leg-full".into(),
    };
    // The reject is sent in the background: wait for it (paused time, bounded).
    for _ in 0..500 {
        if w.carrier.commands().contains(&reject) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(w.carrier.commands().contains(&reject));
    let refused = |direction: &str| {
        engine
            .metrics()
            .calls_refused
            .with_label_values(&[direction, "capacity"])
            .get()
    };
    assert_eq!((refused("outbound"), refused("inbound")), (1, 1));

    // A live call ends: its actor stops and the slot comes back.
    engine.hangup(w.org, first).await.unwrap();
    w.until(first, "ended", |c| c.status.is_terminal()).await;
    for _ in 0..500 {
        if engine.load().running < 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let next = engine
        .create_call(w.org, w.new_call(), Some("k".into()))
        .await
        .expect("a slot freed by the ended call");
    assert!(!next.replayed, "the refused key stored nothing");
    engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn hangup_cancels_then_refuses_with_current_status() {
    let w = World::new(5).await;
    let engine = w.engine().await;
    let id = engine
        .create_call(w.org, w.new_call(), None)
        .await
        .unwrap()
        .call
        .spec
        .id;
    w.until(id, "initiated", |c| c.carrier_call_id.is_some())
        .await;
    let call = engine.hangup(w.org, id).await.unwrap();
    assert_eq!(call.status, CallStatus::Canceled);
    assert_eq!(call.end_reason, Some(EndReason::CanceledByUser));
    let err = engine.hangup(w.org, id).await.unwrap_err();
    assert_eq!(
        err,
        EngineError::IllegalTransition {
            status: CallStatus::Canceled,
            message: "the call already ended (canceled); it cannot be hung up".into()
        }
    );
    // Another tenant cannot see or touch it.
    let stranger = Uuid::from_u128(0xB);
    assert_eq!(
        engine.hangup(stranger, id).await.unwrap_err(),
        EngineError::NotFound { what: "call" }
    );
    assert!(engine.call_events(stranger, id).await.is_err());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(w.carrier.hangups(id).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn duplicate_and_late_carrier_events_change_nothing() {
    let w = World::new(6).await;
    let engine = w.engine().await;
    let id = engine
        .create_call(w.org, w.new_call(), None)
        .await
        .unwrap()
        .call
        .spec
        .id;
    let answered = CarrierEvent::Answered;
    assert_eq!(
        w.carrier_event_id(&engine, id, answered.clone(), "a1")
            .await,
        IngestOutcome::Accepted
    );
    assert_eq!(
        w.carrier_event_id(&engine, id, answered, "a1").await,
        IngestOutcome::Duplicate
    );
    w.until(id, "answered", |c| c.status == CallStatus::InProgress)
        .await;
    // A late `ringing` (new id, so it is stored) must not move the call backwards.
    w.carrier_event(&engine, id, CarrierEvent::Ringing).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let call = w.store.snapshot(id).unwrap();
    assert_eq!(call.status, CallStatus::InProgress);
    assert!(
        w.store.inbox_pending(10).await.unwrap().is_empty(),
        "all inbox rows processed"
    );
    w.assert_contiguous(id);
}

#[tokio::test(start_paused = true)]
async fn a_crashed_call_actor_is_reactivated_and_the_event_is_not_lost() {
    let w = World::new(7).await;
    let engine = w.engine().await;
    let id = engine
        .create_call(w.org, w.new_call(), None)
        .await
        .unwrap()
        .call
        .spec
        .id;
    w.until(id, "initiated", |c| c.carrier_call_id.is_some())
        .await;
    // The event lands in the inbox, then the database goes away before the actor persists it.
    w.store.set_down(false);
    let item = InboxItem {
        vendor: "test".into(),
        carrier_leg: None,
        event_id: "ans".into(),
        call_id: id,
        occurred_at: w.ports.clock.now(),
        event: CarrierEvent::Answered,
    };
    assert!(w.store.inbox_insert(&item).await.unwrap());
    w.store.set_down(true);
    engine
        .inner
        .supervisor
        .send_message(SupervisorMsg::Deliver {
            call_id: id,
            event: Event::carrier(CarrierEvent::Answered),
            inbox: Some(("test".into(), "ans".into())),
            reply: None,
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        engine
            .metrics()
            .actor_failures
            .with_label_values(&["restarted"])
            .get()
            >= 1
    );
    w.store.set_down(false);
    // Re-activation plus the inbox sweep apply the event exactly once.
    let call = w
        .until(id, "answered", |c| c.status == CallStatus::InProgress)
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Reconciliation on re-activation learned from the carrier that the leg was ringing.
    assert_eq!(
        w.assert_contiguous(id),
        ["created", "initiated", "ringing", "answered"]
    );
    assert_eq!(w.store.snapshot(id).unwrap().version, call.version);
    assert!(w.store.inbox_pending(10).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn restart_recovers_live_calls_and_fences_the_old_owner() {
    let w = World::new(8).await;
    let old = w.engine().await;
    let id = old
        .create_call(w.org, w.new_call(), None)
        .await
        .unwrap()
        .call
        .spec
        .id;
    w.carrier_event(&old, id, CarrierEvent::Answered).await;
    w.until(id, "answered", |c| c.status == CallStatus::InProgress)
        .await;
    w.carrier.set_status(id, LegStatus::Answered);

    // A second engine takes over the shards (as after a crash and restart of the process).
    let new = w.engine().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        new.live_call_actors().await.unwrap(),
        1,
        "live call re-activated"
    );
    // The old owner's actor is fenced: its write is refused and it stops.
    old.inner
        .supervisor
        .send_message(SupervisorMsg::Deliver {
            call_id: id,
            event: Event::HangupRequested,
            inbox: None,
            reply: None,
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(w.store.snapshot(id).unwrap().status, CallStatus::InProgress);
    assert_eq!(old.metrics().stale_writes.get(), 1);
    // The new owner re-armed max duration from the persisted deadline.
    tokio::time::sleep(Duration::from_secs(3601)).await;
    let call = w
        .until(id, "max duration", |c| c.status.is_terminal())
        .await;
    assert_eq!(call.end_reason, Some(EndReason::MaxDuration));
    w.assert_contiguous(id);
}

#[tokio::test(start_paused = true)]
async fn reconciliation_ends_calls_the_carrier_forgot_and_redials_pending_ones() {
    let w = World::new(9).await;
    let old = w.engine().await;
    let lost = old
        .create_call(w.org, w.new_call(), None)
        .await
        .unwrap()
        .call
        .spec
        .id;
    w.carrier_event(&old, lost, CarrierEvent::Answered).await;
    w.until(lost, "answered", |c| c.status == CallStatus::InProgress)
        .await;
    old.shutdown().await;
    w.carrier.set_status(lost, LegStatus::Unknown);

    // A call stored but never dialed (the process died between insert and dial).
    let mut spec_call = w.new_call();
    spec_call.to = "+14155550111".parse().unwrap();
    let epoch = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let spec = CallSpec {
        id: Uuid::from_u128(0xDEAD),
        organization_id: w.org,
        direction: Direction::Outbound,
        from: spec_call.from,
        to: spec_call.to,
        agent_id: w.agent,
        customer_id: None,
        metadata: serde_json::json!({}),
        ring_timeout_secs: 30,
        max_duration_secs: 60,
        inbound_leg_id: None,
    };
    let (mut call, _) = start(spec.clone(), epoch);
    call.owner_epoch = 1; // the epoch the first engine held
    let entry = JournalEntry {
        call_id: spec.id,
        seq: 1,
        at: epoch,
        event: Event::Created { spec },
    };
    assert_eq!(
        w.store
            .insert_call(&call, &entry, None, None)
            .await
            .unwrap(),
        InsertOutcome::Created
    );

    let _new = w.engine().await;
    let c = w
        .until(lost, "carrier lost", |c| c.status.is_terminal())
        .await;
    // It was answered: it completes (in_progress never moves to failed).
    assert_eq!(c.status, CallStatus::Completed);
    assert_eq!(c.end_reason, Some(EndReason::CarrierLost));
    w.assert_contiguous(lost);

    let pending = w
        .until(call.spec.id, "re-dialed", |c| c.carrier_call_id.is_some())
        .await;
    assert_eq!(pending.status, CallStatus::Pending);
    let dials = w.carrier.dials(call.spec.id);
    assert_eq!(dials.len(), 1);
    assert_eq!(dials[0].command_id, format!("{}:1", call.spec.id));
}

#[tokio::test(start_paused = true)]
async fn rejected_dial_fails_the_call_as_vendor_error() {
    let w = World::new(10).await;
    w.carrier.reject_dials(true);
    let engine = w.engine().await;
    let id = engine
        .create_call(w.org, w.new_call(), None)
        .await
        .unwrap()
        .call
        .spec
        .id;
    let call = w.until(id, "failed", |c| c.status.is_terminal()).await;
    assert_eq!(call.status, CallStatus::Failed);
    assert_eq!(call.end_reason, Some(EndReason::VendorError));
}

#[tokio::test(start_paused = true)]
async fn create_refuses_unknown_agents_and_foreign_customers() {
    let w = World::new(11).await;
    let engine = w.engine().await;
    let mut req = w.new_call();
    req.agent_id = Uuid::from_u128(0xFFFF);
    let err = engine.create_call(w.org, req, None).await.unwrap_err();
    assert!(
        matches!(err, EngineError::Invalid(ref f) if f.field == "agent_id"),
        "{err:?}"
    );
    let mut req = w.new_call();
    req.customer_id = Some(Uuid::from_u128(0xC));
    let err = engine.create_call(w.org, req, None).await.unwrap_err();
    assert!(
        matches!(err, EngineError::Invalid(ref f) if f.field == "customer_id"),
        "{err:?}"
    );
    let mut req = w.new_call();
    req.metadata = Some(serde_json::json!([1, 2]));
    assert!(engine.create_call(w.org, req, None).await.is_err());
    assert!(w.store.live_calls(&[0]).await.unwrap().is_empty());
    assert!(engine
        .list_calls(w.org, CallFilter::default())
        .await
        .unwrap()
        .is_empty());
}

// ------------------------------------------------------------------ ingress (vendor events)

fn vendor_event(id: &str, route: EventRoute, fact: Option<CarrierEvent>) -> VendorEvent {
    VendorEvent {
        vendor: "telnyx".into(),
        event_id: id.into(),
        event_type: "test.event".into(),
        occurred_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        route,
        fact,
        raw: Some(serde_json::json!({"id": id})),
    }
}

fn offer(leg: &str, to: &str) -> EventRoute {
    EventRoute::Offer {
        leg: leg.into(),
        from: "+14155550111".parse().unwrap(),
        to: to.parse().unwrap(),
    }
}

impl World {
    /// Makes the test agent answer inbound calls to `number`.
    async fn assign(&self, engine: &Engine, number: &str) {
        self.store
            .update_agent(
                self.org,
                self.agent,
                &serde_json::from_str(r#"{"agent_type":"both"}"#).unwrap(),
                self.ports.clock.now(),
            )
            .await
            .unwrap();
        engine
            .create_phone_number(
                self.org,
                serde_json::from_value(
                    serde_json::json!({"number": number, "agent_id": self.agent}),
                )
                .unwrap(),
            )
            .await
            .unwrap();
    }

    fn only_call(&self, leg: &str) -> CallId {
        let ids: Vec<CallId> = (0..64u128)
            .map(|n| Uuid::from_u128((u128::from(7u64) << 64) | n))
            .filter(|id| {
                self.store
                    .snapshot(*id)
                    .is_some_and(|c| c.carrier_call_id.as_deref() == Some(leg))
            })
            .collect();
        assert_eq!(ids.len(), 1, "calls on leg {leg}: {ids:?}");
        ids[0]
    }
}

#[tokio::test(start_paused = true)]
async fn an_offer_to_an_assigned_number_creates_an_answered_inbound_call_once() {
    let w = World::new(7).await;
    let engine = w.engine().await;
    w.assign(&engine, "+14155550123").await;
    let out = engine
        .ingest_vendor_event(vendor_event(
            "ev-offer",
            offer("leg-in", "+14155550123"),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(out, IngestOutcome::Accepted);
    // A redelivered offer is a duplicate and creates nothing.
    let again = engine
        .ingest_vendor_event(vendor_event(
            "ev-offer",
            offer("leg-in", "+14155550123"),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(again, IngestOutcome::Duplicate);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let id = w.only_call("leg-in");
    let call = w.store.snapshot(id).unwrap();
    assert_eq!(call.status, CallStatus::Ringing);
    assert_eq!(call.spec.direction, crate::machine::Direction::Inbound);
    let answers: Vec<_> = w
        .carrier
        .commands()
        .into_iter()
        .filter(|c| matches!(c, crate::testkit::Command::Answer(_)))
        .collect();
    assert_eq!(answers.len(), 1);
    // Events of the leg find their call by client state or by leg.
    let out = engine
        .ingest_vendor_event(vendor_event(
            "ev-answered",
            EventRoute::Leg("leg-in".into()),
            Some(CarrierEvent::Answered),
        ))
        .await
        .unwrap();
    assert_eq!(out, IngestOutcome::Accepted);
    w.until(id, "answered", |c| c.status == CallStatus::InProgress)
        .await;
    engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_hangup_that_overtakes_the_offer_waits_for_its_call() {
    let w = World::new(7).await;
    let engine = w.engine().await;
    w.assign(&engine, "+14155550123").await;
    // The caller hung up; Telnyx delivered that before the offer.
    let out = engine
        .ingest_vendor_event(vendor_event(
            "ev-hangup",
            EventRoute::Leg("leg-early".into()),
            Some(CarrierEvent::HungUp {
                cause: HangupCause::OriginatorCancel,
            }),
        ))
        .await
        .unwrap();
    assert_eq!(out, IngestOutcome::Parked);
    let out = engine
        .ingest_vendor_event(vendor_event(
            "ev-offer",
            offer("leg-early", "+14155550123"),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(out, IngestOutcome::Accepted);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let id = w.only_call("leg-early");
    let call = w.until(id, "ended", |c| c.status.is_terminal()).await;
    assert_eq!(call.status, CallStatus::Failed);
    assert_eq!(call.end_reason, Some(EndReason::CallerAbandoned));
    assert_eq!(w.assert_contiguous(id), ["created", "hangup"]);
    engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_offer_nobody_answers_is_stored_and_rejected() {
    let w = World::new(7).await;
    let engine = w.engine().await;
    let out = engine
        .ingest_vendor_event(vendor_event(
            "ev-offer",
            offer("leg-x", "+14155550999"),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(out, IngestOutcome::Rejected);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let rejects: Vec<_> = w
        .carrier
        .commands()
        .into_iter()
        .filter(|c| matches!(c, crate::testkit::Command::Reject { .. }))
        .collect();
    assert_eq!(
        rejects,
        [crate::testkit::Command::Reject {
            carrier_call_id: "leg-x".into(),
            command_id: "reject:leg-x".into()
        }]
    );
    // Stored: a redelivery is a duplicate and rejects nothing more.
    let again = engine
        .ingest_vendor_event(vendor_event(
            "ev-offer",
            offer("leg-x", "+14155550999"),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(again, IngestOutcome::Duplicate);
    // Nothing was created.
    assert!(w.store.inbox_pending(10).await.unwrap().is_empty());
    engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn ingress_answers_unavailable_when_nothing_can_be_stored() {
    let w = World::new(7).await;
    let engine = w.engine().await;
    w.store.set_down(true);
    let err = engine
        .ingest_vendor_event(vendor_event(
            "ev-1",
            EventRoute::Leg("leg".into()),
            Some(CarrierEvent::Answered),
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::StoreUnavailable(_)), "{err:?}");
    w.store.set_down(false);
    engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn transfer_needs_an_answered_call() {
    let w = World::new(8).await;
    let engine = w.engine().await;
    let id = engine
        .create_call(w.org, w.new_call(), None)
        .await
        .unwrap()
        .call
        .spec
        .id;
    let to: crate::machine::PhoneNumber = "+14155550777".parse().unwrap();
    let err = engine.transfer(w.org, id, to.clone()).await.unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::IllegalTransition {
                status: CallStatus::Pending,
                ..
            }
        ),
        "{err:?}"
    );
    w.carrier_event(&engine, id, CarrierEvent::Answered).await;
    w.until(id, "answered", |c| c.status == CallStatus::InProgress)
        .await;
    engine.transfer(w.org, id, to.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(w
        .carrier
        .commands()
        .iter()
        .any(|c| matches!(c, crate::testkit::Command::Transfer(_, t) if *t == to)));
    assert_eq!(
        w.assert_contiguous(id),
        ["created", "initiated", "answered", "transfer_requested"]
    );
    engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_stray_second_leg_is_hung_up_and_the_call_keeps_its_own() {
    let w = World::new(9).await;
    let engine = w.engine().await;
    let id = engine
        .create_call(w.org, w.new_call(), None)
        .await
        .unwrap()
        .call
        .spec
        .id;
    w.until(id, "initiated", |c| c.carrier_call_id.is_some())
        .await;
    w.carrier_event(
        &engine,
        id,
        CarrierEvent::RingingLeg {
            carrier_call_id: "leg-stray".into(),
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let hangups = w.carrier.hangups(id);
    assert_eq!(hangups.len(), 1, "{hangups:?}");
    assert_eq!(hangups[0].carrier_call_id.as_deref(), Some("leg-stray"));
    assert_eq!(hangups[0].command_id, format!("{id}:stray:leg-stray"));
    let call = w.store.snapshot(id).unwrap();
    assert_eq!(call.carrier_call_id, Some(format!("leg-{id}")));
    assert_eq!(call.status, CallStatus::Pending);
    // The inbox row of the stray event was processed (nothing left for the sweep).
    assert!(w.store.inbox_pending(10).await.unwrap().is_empty());
    engine.shutdown().await;
}

/// A stray leg whose hangup the carrier refused is not forgotten: the call's actor keeps
/// trying after the call itself has ended, and a node that restarts (or takes the shard over)
/// finds the leg still owed and releases it.
#[tokio::test(start_paused = true)]
async fn a_stray_leg_whose_hangup_failed_is_released_after_the_call_ended_and_after_a_restart() {
    let w = World::new(23).await;
    let old = w.engine().await;
    let (id, own) = w.placed(&old).await;
    let now = w.ports.clock.now();
    w.leg_event(&old, id, &own, CarrierEvent::Answered, now)
        .await;
    w.until(id, "answered", |c| c.status == CallStatus::InProgress)
        .await;
    // The carrier is unreachable while a second leg answers: its hangup fails. The call's
    // own leg then ends.
    w.carrier.set_down(true);
    w.leg_event(&old, id, "leg-second", CarrierEvent::Answered, now)
        .await;
    w.leg_event(
        &old,
        id,
        &own,
        CarrierEvent::HungUp {
            cause: HangupCause::NormalClearing,
        },
        now,
    )
    .await;
    let call = w
        .until(id, "completed", |c| c.status == CallStatus::Completed)
        .await;
    assert!(call.strays_up());
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(
        w.carrier.hangups(id).is_empty(),
        "the carrier refused them all"
    );
    assert!(w.store.snapshot(id).unwrap().strays_up());
    // The node dies with the leg owed; the next one releases it once the carrier is back.
    old.kill().await;
    w.carrier.set_down(false);
    let new = w.engine().await;
    let call = w.until(id, "stray released", |c| !c.strays_up()).await;
    assert_eq!(call.status, CallStatus::Completed);
    let released: Vec<_> = w
        .carrier
        .hangups(id)
        .into_iter()
        .filter_map(|h| h.carrier_call_id)
        .collect();
    assert_eq!(released, ["leg-second".to_owned()]);
    assert_eq!(
        w.assert_contiguous(id)[3..],
        ["stray_leg", "hangup", "stray_released"]
    );
    for _ in 0..100 {
        if new.live_call_actors().await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        new.live_call_actors().await.unwrap(),
        0,
        "nothing more owed"
    );
    new.shutdown().await;
}

/// Call starts reuse the agent they read (counted hits), and an update through the engine is
/// seen by the very next call: a deactivated agent takes no more calls at once.
#[tokio::test(start_paused = true)]
async fn call_starts_reuse_the_agent_read_and_see_an_update_at_once() {
    let w = World::new(24).await;
    let engine = w.engine().await;
    let lookups = |result: &str| {
        engine
            .metrics()
            .lookups
            .with_label_values(&["agent", result])
            .get()
    };
    for _ in 0..3 {
        engine.create_call(w.org, w.new_call(), None).await.unwrap();
    }
    assert_eq!((lookups("miss"), lookups("hit")), (1, 2));
    engine
        .update_agent(
            w.org,
            w.agent,
            serde_json::from_str(r#"{"status":"inactive"}"#).unwrap(),
        )
        .await
        .unwrap();
    let refused = engine.create_call(w.org, w.new_call(), None).await;
    assert!(
        matches!(&refused, Err(EngineError::Invalid(e)) if e.field == "agent_id"),
        "{refused:?}"
    );
    assert_eq!(lookups("miss"), 2, "read again after the update");
    engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_call_whose_leg_is_journaled_is_never_dialed_again() {
    let w = World::new(21).await;
    let old = w.engine().await;
    let id = old
        .create_call(w.org, w.new_call(), None)
        .await
        .unwrap()
        .call
        .spec
        .id;
    // The dial's answer named the leg; the call is still pending (no ringing yet).
    let call = w
        .until(id, "leg known", |c| c.carrier_call_id.is_some())
        .await;
    assert_eq!(call.status, CallStatus::Pending);
    old.kill().await;
    // A restart: re-activation asks the carrier about that leg and never dials again.
    let new = w.engine().await;
    w.until(id, "ringing from reconciliation", |c| {
        c.status == CallStatus::Ringing
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(w.carrier.dials(id).len(), 1, "one dial per call");

    // Without a journaled leg the dial is re-issued, with its original command id only.
    let id2 = new
        .create_call(w.org, w.new_call(), None)
        .await
        .unwrap()
        .call
        .spec
        .id;
    new.kill().await;
    w.store.set_down(false);
    let journaled_leg = w.store.snapshot(id2).unwrap().carrier_call_id;
    if journaled_leg.is_none() {
        let _third = w.engine().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let dials = w.carrier.dials(id2);
        assert!(dials.len() <= 2);
        assert!(dials.iter().all(|d| d.command_id == format!("{id2}:1")));
    }
}

#[tokio::test(start_paused = true)]
async fn facts_of_a_second_leg_never_move_the_call_and_the_leg_is_released() {
    let w = World::new(22).await;
    let engine = w.engine().await;
    let (id, own) = w.placed(&engine).await;
    let now = w.ports.clock.now();
    w.leg_event(&engine, id, &own, CarrierEvent::Answered, now)
        .await;
    w.until(id, "answered", |c| c.status == CallStatus::InProgress)
        .await;
    // A repeated dial the carrier did not deduplicate: a second leg rings, answers and
    // hangs up.
    let stray = "leg-second";
    w.leg_event(&engine, id, stray, CarrierEvent::Answered, now)
        .await;
    w.leg_event(
        &engine,
        id,
        stray,
        CarrierEvent::HungUp {
            cause: HangupCause::NormalClearing,
        },
        now,
    )
    .await;
    for _ in 0..100 {
        if w.carrier
            .hangups(id)
            .iter()
            .any(|h| h.carrier_call_id.as_deref() == Some(stray))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let call = w.store.snapshot(id).unwrap();
    assert_eq!(call.status, CallStatus::InProgress, "the call goes on");
    assert_eq!(call.carrier_call_id.as_deref(), Some(own.as_str()));
    assert_eq!(call.ended_at, None);
    assert_eq!(
        w.assert_contiguous(id),
        ["created", "initiated", "answered", "stray_leg", "stray_leg"]
    );
    let released: Vec<_> = w
        .carrier
        .hangups(id)
        .into_iter()
        .filter_map(|h| h.carrier_call_id)
        .collect();
    assert_eq!(
        released,
        [stray.to_owned()],
        "the stray leg is released, the call's is not"
    );
    assert_eq!(engine.metrics().stray_legs.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn answer_and_end_times_are_the_carriers_not_the_time_of_applying() {
    let w = World::new(23).await;
    let engine = w.engine().await;
    let (id, leg) = w.placed(&engine).await;
    let answered = w.ports.clock.now() + chrono::Duration::seconds(2);
    tokio::time::sleep(Duration::from_secs(20)).await;
    // Delivered late (the node was restarting): 18 s after the carrier's answer.
    w.leg_event(&engine, id, &leg, CarrierEvent::Answered, answered)
        .await;
    w.until(id, "answered", |c| c.status == CallStatus::InProgress)
        .await;
    let ended = answered + chrono::Duration::milliseconds(10_500);
    tokio::time::sleep(Duration::from_secs(100)).await;
    w.leg_event(
        &engine,
        id,
        &leg,
        CarrierEvent::HungUp {
            cause: HangupCause::NormalClearing,
        },
        ended,
    )
    .await;
    let call = w
        .until(id, "completed", |c| c.status == CallStatus::Completed)
        .await;
    assert_eq!(call.answered_at, Some(answered));
    assert_eq!(
        call.ended_at,
        Some(ended),
        "10.5 s talked, as the carrier says"
    );
}

#[tokio::test(start_paused = true)]
async fn each_call_end_is_counted_once_and_late_facts_do_not_reactivate_it() {
    let w = World::new(24).await;
    let engine = w.engine().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (id, _) = w.placed(&engine).await;
        w.carrier_event(&engine, id, CarrierEvent::Answered).await;
        w.until(id, "answered", |c| c.status == CallStatus::InProgress)
            .await;
        // Ended by us: completed, then the release is journaled (the leg_released entry).
        engine.hangup(w.org, id).await.unwrap();
        w.until(id, "released", |c| {
            c.status.is_terminal() && !c.release_pending
        })
        .await;
        ids.push(id);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let statuses_before = w.carrier.status_requests();
    // Late facts for the ended calls: a media report and a stream that stopped.
    for id in &ids {
        engine.report_media(
            *id,
            crate::machine::MediaReport {
                stream_id: "s".into(),
                frames_in: 1,
                frames_out: 1,
                gaps: 0,
                jitter_ms: 0.0,
                duration_ms: 20,
            },
        );
        w.carrier_event(&engine, *id, CarrierEvent::StreamStopped)
            .await;
    }
    for id in &ids {
        w.until(*id, "late facts journaled", |c| c.version >= 7)
            .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Counted against the journal: one end per call, however many entries follow it.
    let ends_in_journal: usize = ids
        .iter()
        .map(|id| {
            let journal = w.store.journal(*id);
            let mut folded = None::<Call>;
            let mut ends = 0;
            for e in &journal {
                let before = folded.as_ref().map(|c| c.status.is_terminal());
                let next = match (&folded, &e.event) {
                    (None, Event::Created { spec }) => crate::machine::start(spec.clone(), e.at).0,
                    (Some(c), ev) => {
                        let mut c = c.clone();
                        crate::machine::step(&mut c, ev.clone(), e.at).unwrap();
                        c
                    }
                    _ => unreachable!(),
                };
                if next.status.is_terminal() && before == Some(false) {
                    ends += 1;
                }
                folded = Some(next);
            }
            ends
        })
        .sum();
    assert_eq!(ends_in_journal, 3);
    let counted: u64 = ["completed"]
        .iter()
        .map(|s| {
            engine
                .metrics()
                .calls_ended
                .with_label_values(&[s, "hangup_requested"])
                .get()
        })
        .sum();
    assert_eq!(counted, 3, "iace_calls_ended_total counts each end once");
    // Woken to journal the late facts, without asking the carrier anything.
    assert_eq!(w.carrier.status_requests(), statuses_before);
    assert!(
        engine
            .metrics()
            .activations
            .with_label_values(&["ended"])
            .get()
            >= 1
    );
}

mod cluster;
