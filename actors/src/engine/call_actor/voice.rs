//! The call's conversation: starting and stopping its voice session, and telling it what it
//! needs to know of the facts the call applies.

use ractor::{Actor, ActorRef};
use tracing::{info, warn};

use super::effects::retry_owned;
use super::{CallMsg, CallState};
use crate::engine::voice_session::{VoiceArgs, VoiceMsg, VoiceSession};
use crate::machine::{Call, CallStatus, CarrierEvent, Direction, Event};
use crate::ports::LegCommand;

impl CallState {
    /// Points an answered call's media stream at this node when the call has a conversation
    /// and this node has no stream for it (the stream went down with the node that ran the
    /// call before, or is still attached there). The carrier's `streaming.stopped` and
    /// `streaming.started` facts journal the gap.
    pub(super) fn ensure_media(&mut self) {
        let Some(call) = &self.call else { return };
        if call.status != CallStatus::InProgress
            || self.shared.ports.voice.is_none()
            || self.shared.voice.has_stream(self.id)
        {
            return;
        }
        let Some(leg) = call.carrier_call_id.clone() else {
            return;
        };
        let cmd = LegCommand {
            call_id: self.id,
            carrier_call_id: Some(leg),
            // One restart per owner epoch: a retry of the same move is deduplicated.
            command_id: format!("{}:media:{}", self.id, self.shared.shards.epoch_of(self.id)),
        };
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let result = retry_owned(&shared, cmd.call_id, || {
                shared.ports.telephony.restart_media(cmd.clone())
            })
            .await;
            match result {
                Some(Ok(())) => info!(call_id = %cmd.call_id, "media stream pointed at this node"),
                Some(Err(e)) => {
                    shared
                        .metrics
                        .effect_failures
                        .with_label_values(&["restart_media"])
                        .inc();
                    warn!(call_id = %cmd.call_id, error = %e, "restarting the media stream failed");
                }
                None => {}
            }
        });
    }

    /// Passes what the conversation needs to know of an applied event to it.
    pub(super) fn tell_voice(&mut self, event: &Event, call: &Call) {
        if let Event::Carrier {
            event: CarrierEvent::MachineDetection { result },
            ..
        } = event
        {
            self.amd = Some(*result);
        }
        let Some(voice) = &self.voice else { return };
        let msg = match event {
            _ if call.status.is_terminal() => VoiceMsg::CallEnded,
            Event::Carrier {
                event: CarrierEvent::MachineDetection { result },
                ..
            } => VoiceMsg::Amd(*result),
            Event::Carrier {
                event: CarrierEvent::Dtmf { digit },
                ..
            } => VoiceMsg::Dtmf(digit.clone()),
            Event::Carrier {
                event: CarrierEvent::Bridged { .. },
                ..
            } => VoiceMsg::CallEnded,
            _ => return,
        };
        let _ = voice.send_message(msg);
    }

    /// Starts the call's conversation: needs voice ports, an answered call, and none running.
    pub(super) async fn start_voice(&mut self, myself: &ActorRef<CallMsg>) {
        let Some(call) = self.call.as_ref() else {
            return;
        };
        if self.shared.ports.voice.is_none()
            || self.voice.is_some()
            || call.status != CallStatus::InProgress
        {
            return;
        }
        let args = VoiceArgs {
            spec: call.spec.clone(),
            shared: self.shared.clone(),
            parent: myself.get_derived(),
            await_amd: self.shared.config.await_amd && call.spec.direction == Direction::Outbound,
            amd: self.amd,
        };
        match Actor::spawn_linked(None, VoiceSession, args, myself.get_cell()).await {
            Ok((voice, _)) => {
                self.shared.voice.insert(self.id, voice.clone());
                self.voice = Some(voice);
            }
            Err(e) => warn!(call_id = %self.id, error = %e, "voice session did not start"),
        }
    }

    pub(super) fn stop_voice(&mut self) {
        if let Some(voice) = self.voice.take() {
            self.shared.voice.remove(self.id, &voice);
            voice.stop(Some("call actor stopped".into()));
        }
    }
}
