//! Dialing: the dial task with its retries, the gate every attempt passes (this node still
//! owns the call, no leg journaled, not ended) and the guard that stops it.

use std::sync::Arc;

use ractor::ActorRef;
use tracing::{info, warn};

use super::effects::retry_command;
use super::{CallMsg, CallState, Shared};
use crate::machine::{CallId, CarrierEvent, Event};
use crate::ports::{shard_of, DialCommand};

/// Stops a dial task from making another attempt once dropped.
/// Cooperative, not an abort: a request already sent runs to its end, so its leg id is
/// still learned (and released if it is not the call's) and its breaker permit is recorded
/// as what the carrier answered, not as a failure of our making.
pub(crate) struct DialGuard(Arc<std::sync::atomic::AtomicBool>);

impl Drop for DialGuard {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl CallState {
    pub(super) fn spawn_dial(&mut self, myself: &ActorRef<CallMsg>, cmd: DialCommand) {
        let shared = self.shared.clone();
        let me = myself.clone();
        self.dial.take();
        let (shard, epoch) = (shard_of(self.id), self.shared.shards.epoch_of(self.id));
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.dial = Some(DialGuard(stopped.clone()));
        tokio::spawn(async move {
            let attempt = || async {
                if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    return Ok(Err("the call's actor no longer wants it"));
                }
                if let Some(why) = dial_gate(&shared, cmd.call_id, shard, epoch).await {
                    return Ok(Err(why));
                }
                // The leg may have been learned while the store was asked.
                if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    return Ok(Err("the call's actor no longer wants it"));
                }
                let Some(_permit) = shared.shards.begin_effect(cmd.call_id) else {
                    shared.metrics.effects_withheld.inc();
                    return Ok(Err("this node may not act for the call now"));
                };
                shared.ports.telephony.dial(cmd.clone()).await.map(Ok)
            };
            let event = match retry_command(shared.config.command_timeout, attempt).await {
                Ok(Ok(carrier_call_id)) => {
                    Event::carrier(CarrierEvent::Initiated { carrier_call_id })
                }
                Ok(Err(why)) => {
                    shared
                        .metrics
                        .effect_failures
                        .with_label_values(&["dial_abandoned"])
                        .inc();
                    info!(call_id = %cmd.call_id, reason = why, "dial abandoned");
                    return;
                }
                Err(e) => {
                    shared
                        .metrics
                        .effect_failures
                        .with_label_values(&["dial"])
                        .inc();
                    warn!(call_id = %cmd.call_id, error = %e, "dial failed");
                    Event::CommandRejected {
                        detail: e.to_string(),
                    }
                }
            };
            let _ = me.send_message(CallMsg::Apply {
                event,
                inbox: None,
                reply: None,
            });
        });
    }
}

/// Why a dial must not be placed (checked before every attempt), if it must not: a dial is
/// not fenced by a write, so this node asks the store first. A store that cannot answer does
/// not stop the dial of a call this node owns.
async fn dial_gate(shared: &Shared, id: CallId, shard: u16, epoch: i64) -> Option<&'static str> {
    if let Ok(false) = shared.ports.calls.owns_shard(shard, epoch).await {
        return Some("another node owns the call");
    }
    match shared.ports.calls.load_call(id).await {
        Ok(Some(call)) if call.carrier_call_id.is_some() => Some("the call's leg is journaled"),
        Ok(Some(call)) if call.status.is_terminal() => Some("the call ended"),
        _ => None,
    }
}
