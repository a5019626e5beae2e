//! The media endpoint's traffic into the engine: a stream started, caller audio and marks
//! straight to the call's voice session, and the stream's measurements for the journal.

use super::supervisor::SupervisorMsg;
use super::Engine;
use crate::machine::{CallId, Event, MediaReport};

impl Engine {
    /// Journals what the media endpoint measured on a call's stream. Best effort: the figures
    /// are telemetry, not facts the call's outcome depends on.
    pub fn report_media(&self, call_id: CallId, report: MediaReport) {
        let _ = self.inner.supervisor.send_message(SupervisorMsg::Deliver {
            call_id,
            event: Event::MediaReported { report },
            inbox: None,
            reply: None,
        });
    }

    /// Our media endpoint has an authenticated stream for the call: its conversation starts
    /// (when the engine has voice ports and the call is answered).
    pub fn media_started(&self, call_id: CallId) {
        let _ = self
            .inner
            .supervisor
            .send_message(SupervisorMsg::MediaStarted { call_id });
    }

    /// Caller audio (μ-law 8 kHz) of one media frame, straight to the call's voice session.
    /// Returns at once; audio for a call without a session is dropped.
    pub fn media_audio(&self, call_id: CallId, mulaw: Vec<u8>) {
        self.inner.shared.voice.send(
            call_id,
            crate::engine::voice_session::VoiceMsg::Audio(mulaw),
        );
    }

    /// The carrier echoed a mark on the call's media stream.
    pub fn media_mark(&self, call_id: CallId, name: String) {
        self.inner
            .shared
            .voice
            .send(call_id, crate::engine::voice_session::VoiceMsg::Mark(name));
    }
}
