//! Invariant checkers. The store wrapper feeds every committed write through [`Checker`], so
//! the invariants are checked at the step that could break them:
//! - no illegal transition, and a terminal state never changes;
//! - version and owner epoch never decrease, and the journal has no gap;
//! - the snapshot equals the fold of the journal;
//! - each carrier event (inbox row) is applied at most once.
//!
//! The world adds the end-of-run checks (every call terminal within a bound once faults stop,
//! every carrier leg released, every accepted event processed, no timer fired for an ended
//! call, one leg per call).

use std::collections::{BTreeMap, BTreeSet};

use iace_actors::machine::{start, step, Call, CallId, CallStatus};
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
            return Err(("no journal gap", format!("call {id} starts at {}", created.seq)));
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
        if before.is_terminal() {
            return Err((
                "terminal state never changes",
                format!(
                    "call {id} was {before} and got `{}` at seq {}",
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
        model.folded = folded;
        model.epoch = call.owner_epoch;
        model.journal_len = entry.seq;
        Ok(())
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
    use super::legal;
    use iace_actors::machine::CallStatus::*;

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
