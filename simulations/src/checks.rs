//! Invariant checkers. The store wrapper feeds every committed write through [`Checker`], so
//! the invariants are checked at the step that could break them:
//! - no illegal transition, and a terminal state never changes (status and end reason; after
//!   the end only the release of the carrier leg is journaled);
//! - version and owner epoch never decrease, and the journal has no gap;
//! - the snapshot equals the fold of the journal;
//! - each carrier event (inbox row) is applied at most once;
//! - a call's status and times change only by its own leg's facts or our commands (a fact
//!   naming another leg is journaled as `stray_leg` and moves nothing);
//! - a call is answered only if the carrier answered its leg.
//!
//! The world adds the end-of-run checks (every call terminal within a bound once faults stop,
//! every carrier leg released, every accepted event processed, no timer fired for an ended
//! call, one leg per call).

use std::collections::{BTreeMap, BTreeSet};

use iace_actors::machine::{start, step, Call, CallId, CallStatus, Event};
use iace_actors::ports::JournalEntry;

/// The checker's model of one call: the fold of what was committed.
#[derive(Debug, Clone)]
pub struct Model {
    /// Fold of the journal so far.
    pub folded: Call,
    /// Highest owner epoch written.
    pub epoch: i64,
    /// Journal length.
    pub journal_len: i64,
}

/// What an invariant check found: (invariant, detail).
pub type Broken = (&'static str, String);

/// Committed history, checked write by write.
#[derive(Debug, Default)]
pub struct Checker {
    calls: BTreeMap<CallId, Model>,
    applied_inbox: BTreeSet<(String, String)>,
    /// Legs the carrier answered (told by the carrier as it answers them).
    answered_legs: BTreeSet<String>,
}

/// Whether the machine may move a call from `from` to `to` in one event.
pub fn legal(from: CallStatus, to: CallStatus) -> bool {
    use CallStatus::*;
    from == to
        || matches!(
            (from, to),
            (Pending, Ringing | InProgress | Failed | Canceled)
                | (Ringing, InProgress | Failed | Canceled)
                | (InProgress, Completed)
        )
}

fn same_but_epoch(a: &Call, b: &Call) -> bool {
    let mut a = a.clone();
    a.owner_epoch = b.owner_epoch;
    a == *b
}

impl Checker {
    /// A call was inserted with its `created` entry.
    pub fn on_insert(&mut self, call: &Call, created: &JournalEntry) -> Result<(), Broken> {
        let id = call.spec.id;
        if self.calls.contains_key(&id) {
            return Err(("unique call id", format!("call {id} inserted twice")));
        }
        let iace_actors::machine::Event::Created { spec } = &created.event else {
            return Err(("journal starts with created", format!("call {id}")));
        };
        if created.seq != 1 || call.version != 1 {
            return Err((
                "no journal gap",
                format!("call {id} starts at {}", created.seq),
            ));
        }
        let folded = start(spec.clone(), created.at).0;
        if !same_but_epoch(&folded, call) {
            return Err((
                "snapshot equals fold of journal",
                format!("call {id}: inserted snapshot differs from its created event"),
            ));
        }
        self.calls.insert(
            id,
            Model {
                folded,
                epoch: call.owner_epoch,
                journal_len: 1,
            },
        );
        Ok(())
    }

    /// `entry` was appended and `call` written as the new snapshot.
    pub fn on_append(
        &mut self,
        call: &Call,
        entry: &JournalEntry,
        inbox: Option<(&str, &str)>,
    ) -> Result<(), Broken> {
        let id = call.spec.id;
        let Some(model) = self.calls.get_mut(&id) else {
            return Err(("unique call id", format!("append to unknown call {id}")));
        };
        let before = model.folded.status;
        if before.is_terminal()
            && (call.status != before || call.end_reason != model.folded.end_reason)
        {
            return Err((
                "terminal state never changes",
                format!(
                    "call {id} was {before}/{:?} and became {}/{:?} by `{}` at seq {}",
                    model.folded.end_reason,
                    call.status,
                    call.end_reason,
                    entry.event.kind(),
                    entry.seq
                ),
            ));
        }
        if entry.seq != model.journal_len + 1 || call.version != entry.seq {
            return Err((
                "no journal gap",
                format!(
                    "call {id}: journal has {} entries, appended seq {} with snapshot version {}",
                    model.journal_len, entry.seq, call.version
                ),
            ));
        }
        if call.owner_epoch < model.epoch {
            return Err((
                "epoch never decreases",
                format!(
                    "call {id}: epoch {} after {}",
                    call.owner_epoch, model.epoch
                ),
            ));
        }
        let mut folded = model.folded.clone();
        let kind = entry.event.kind();
        match step(&mut folded, entry.event.clone(), entry.at) {
            Ok(_) if folded.version == model.folded.version + 1 => {}
            Ok(_) => {
                return Err((
                    "snapshot equals fold of journal",
                    format!("call {id}: journaled `{kind}` changes nothing when replayed"),
                ))
            }
            Err(e) => {
                return Err((
                    "no illegal transition",
                    format!("call {id}: journaled `{kind}` is refused on replay: {e}"),
                ))
            }
        }
        if !legal(before, call.status) {
            return Err((
                "no illegal transition",
                format!("call {id}: {before} -> {} by `{kind}`", call.status),
            ));
        }
        if !same_but_epoch(&folded, call) {
            return Err((
                "snapshot equals fold of journal",
                format!("call {id}: snapshot after `{kind}` (seq {}) differs from the fold: stored {call:?}, fold {folded:?}", entry.seq),
            ));
        }
        if let Some((vendor, event_id)) = inbox {
            if !self
                .applied_inbox
                .insert((vendor.to_owned(), event_id.to_owned()))
            {
                return Err((
                    "each carrier event applied at most once",
                    format!("call {id}: event {vendor}/{event_id} journaled twice"),
                ));
            }
        }
        if let Event::Carrier { leg: Some(leg), .. } = &entry.event {
            let moved = call.status != before
                || call.answered_at != model.folded.answered_at
                || call.ended_at != model.folded.ended_at;
            if moved && call.carrier_call_id.as_deref() != Some(leg.as_str()) {
                return Err((
                    "a call changes only by its own leg's facts",
                    format!(
                        "call {id} (leg {:?}) moved {before} -> {} by `{kind}` of leg {leg}",
                        call.carrier_call_id, call.status
                    ),
                ));
            }
        }
        if call.status == CallStatus::InProgress && before != CallStatus::InProgress {
            let answered = call
                .carrier_call_id
                .as_ref()
                .is_some_and(|l| self.answered_legs.contains(l));
            if !answered {
                return Err((
                    "answered only if the carrier answered the call's leg",
                    format!(
                        "call {id} became in_progress by `{kind}` but its leg {:?} was never answered",
                        call.carrier_call_id
                    ),
                ));
            }
        }
        model.folded = folded;
        model.epoch = call.owner_epoch;
        model.journal_len = entry.seq;
        Ok(())
    }

    /// The carrier answered `leg`.
    pub fn leg_answered(&mut self, leg: &str) {
        self.answered_legs.insert(leg.to_owned());
    }

    /// Every call the store committed, in id order.
    pub fn calls(&self) -> &BTreeMap<CallId, Model> {
        &self.calls
    }

    /// Calls not yet terminal.
    pub fn live(&self) -> Vec<CallId> {
        self.calls
            .iter()
            .filter(|(_, m)| !m.folded.status.is_terminal())
            .map(|(id, _)| *id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{legal, Checker};
    use chrono::{DateTime, Utc};
    use iace_actors::machine::CallStatus::*;
    use iace_actors::machine::{
        start, step, Call, CallSpec, CarrierEvent, Direction, Event, HangupCause,
    };
    use iace_actors::ports::JournalEntry;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap_or_default()
    }

    fn call() -> (Call, JournalEntry) {
        let spec = CallSpec {
            id: uuid::Uuid::from_u128(1),
            organization_id: uuid::Uuid::from_u128(2),
            direction: Direction::Outbound,
            from: "+14155550100".parse().unwrap_or_else(|e| panic!("{e}")),
            to: "+14155550101".parse().unwrap_or_else(|e| panic!("{e}")),
            agent_id: uuid::Uuid::from_u128(3),
            customer_id: None,
            metadata: serde_json::json!({}),
            ring_timeout_secs: 30,
            max_duration_secs: 300,
            inbound_leg_id: None,
        };
        let (c, _) = start(spec.clone(), t(0));
        let created = JournalEntry {
            call_id: c.spec.id,
            seq: 1,
            at: t(0),
            event: Event::Created { spec },
        };
        (c, created)
    }

    /// Applies `event` like the engine would and returns (snapshot, entry).
    fn next(c: &Call, event: Event, at: i64) -> (Call, JournalEntry) {
        let mut n = c.clone();
        let _ = step(&mut n, event.clone(), t(at));
        let e = JournalEntry {
            call_id: n.spec.id,
            seq: n.version,
            at: t(at),
            event,
        };
        (n, e)
    }

    fn ringing() -> Event {
        Event::carrier(CarrierEvent::Ringing)
    }

    #[test]
    fn accepts_a_valid_history() {
        let mut ch = Checker::default();
        let (c, created) = call();
        assert!(ch.on_insert(&c, &created).is_ok());
        let (c, e) = next(&c, ringing(), 1);
        assert!(ch.on_append(&c, &e, Some(("v", "1"))).is_ok());
        assert_eq!(ch.live().len(), 1);
    }

    #[test]
    fn catches_a_gap_a_lower_epoch_a_double_apply_and_a_changed_terminal_state() {
        let (c0, created) = call();
        let (c1, e1) = next(&c0, ringing(), 1);

        let mut ch = Checker::default();
        ch.on_insert(&c0, &created)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let mut skipped = e1.clone();
        skipped.seq = 3;
        let mut c3 = c1.clone();
        c3.version = 3;
        assert_eq!(
            ch.on_append(&c3, &skipped, None).unwrap_err().0,
            "no journal gap"
        );

        let mut ch = Checker::default();
        let mut high = c0.clone();
        high.owner_epoch = 5;
        ch.on_insert(&high, &created)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            ch.on_append(&c1, &e1, None).unwrap_err().0,
            "epoch never decreases"
        );

        let mut ch = Checker::default();
        ch.on_insert(&c0, &created)
            .unwrap_or_else(|e| panic!("{e:?}"));
        ch.on_append(&c1, &e1, Some(("v", "1")))
            .unwrap_or_else(|e| panic!("{e:?}"));
        let (c2, e2) = next(&c1, Event::carrier(CarrierEvent::Answered), 2);
        assert_eq!(
            ch.on_append(&c2, &e2, Some(("v", "1"))).unwrap_err().0,
            "each carrier event applied at most once"
        );

        let mut ch = Checker::default();
        ch.on_insert(&c0, &created)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let busy = Event::carrier(CarrierEvent::HungUp {
            cause: HangupCause::Busy,
        });
        let (ended, e) = next(&c0, busy, 1);
        ch.on_append(&ended, &e, None)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let mut revived = ended.clone();
        revived.status = InProgress;
        revived.version += 1;
        let mut fake = e.clone();
        fake.seq += 1;
        fake.event = Event::LegReleased;
        assert_eq!(
            ch.on_append(&revived, &fake, None).unwrap_err().0,
            "terminal state never changes"
        );
    }

    #[test]
    fn catches_a_snapshot_that_is_not_the_fold_of_its_journal() {
        let (c0, created) = call();
        let mut ch = Checker::default();
        ch.on_insert(&c0, &created)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let (mut c1, e1) = next(&c0, ringing(), 1);
        c1.carrier_call_id = Some("made up".into());
        assert_eq!(
            ch.on_append(&c1, &e1, None).unwrap_err().0,
            "snapshot equals fold of journal"
        );
    }

    #[test]
    fn legality_table() {
        assert!(legal(Pending, Ringing));
        assert!(legal(Ringing, InProgress));
        assert!(legal(InProgress, Completed));
        assert!(!legal(InProgress, Ringing));
        assert!(!legal(Completed, Failed));
        assert!(!legal(Ringing, Completed));
        assert!(!legal(Pending, Completed));
    }
}
