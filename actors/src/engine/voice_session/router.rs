//! The router of live voice sessions: the media endpoint's per-frame traffic goes straight to
//! a call's session (never through the supervisor and the call actor), and the calls whose
//! media stream is up are remembered for a call actor re-activated after a crash.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use ractor::ActorRef;

use super::msg::VoiceMsg;
use crate::machine::CallId;

/// Live voice sessions by call, for the media endpoint's per-frame traffic (which must not go
/// through the supervisor and the call actor); and the calls whose media stream is up, so a
/// call actor re-activated after a crash converses again (the stream does not start twice).
#[derive(Clone, Default)]
pub struct VoiceRouter {
    sessions: Arc<Mutex<HashMap<CallId, ActorRef<VoiceMsg>>>>,
    streams: Arc<Mutex<HashSet<CallId>>>,
}

impl VoiceRouter {
    pub(crate) fn stream_started(&self, call: CallId) {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(call);
    }

    pub(crate) fn has_stream(&self, call: CallId) -> bool {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&call)
    }

    pub(crate) fn forget_stream(&self, call: CallId) {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&call);
    }

    pub(crate) fn insert(&self, call: CallId, session: ActorRef<VoiceMsg>) {
        self.lock().insert(call, session);
    }

    pub(crate) fn remove(&self, call: CallId, session: &ActorRef<VoiceMsg>) {
        let mut map = self.lock();
        if map
            .get(&call)
            .is_some_and(|s| s.get_id() == session.get_id())
        {
            map.remove(&call);
        }
    }

    pub(crate) fn send(&self, call: CallId, msg: VoiceMsg) {
        let session = self.lock().get(&call).cloned();
        if let Some(session) = session {
            let _ = session.send_message(msg);
        }
    }

    /// Sessions running.
    /// The calls with a live conversation on this node.
    pub(crate) fn conversing(&self) -> Vec<CallId> {
        self.lock().keys().copied().collect()
    }

    pub fn live(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CallId, ActorRef<VoiceMsg>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
