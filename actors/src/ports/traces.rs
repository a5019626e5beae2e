//! [`CallTraces`]: a call's trace, drawn from its journal as it is applied.
//!
//! A call's trace is made of what the journal says happened (the call's life, each turn and
//! where its time went, tools, barge-ins, escalations) plus the vendor requests made for it.
//! The engine hands every applied entry to this port; the root crate turns them into
//! OpenTelemetry spans (and drops them when no trace is exported).

use crate::machine::Call;
use crate::ports::calls::JournalEntry;

/// Receives a call's journal entries as they are applied.
pub trait CallTraces: Send + Sync + 'static {
    /// `entry` was journaled for `call` (its state after the entry); `ended_now`: the entry
    /// ended the call. Returns at once: nothing may wait on an exporter.
    fn applied(&self, call: &Call, entry: &JournalEntry, ended_now: bool);
}
