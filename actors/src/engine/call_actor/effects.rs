//! Running the machine's effects: timers, and carrier commands (answer, hang up, transfer,
//! release a stray leg) in spawned tasks whose outcome comes back as an event; each command
//! retried on `Unavailable` under its idempotency key.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ractor::ActorRef;
use tracing::{debug, warn};

use super::{CallMsg, CallState, Shared};
use crate::machine::{CallId, Effect, Event};
use crate::ports::{DialCommand, LegCommand, TelephonyError};

/// Attempts of a carrier command on `Unavailable` before giving up.
const COMMAND_ATTEMPTS: u32 = 4;

impl CallState {
    pub(super) fn run_effects(
        &mut self,
        myself: &ActorRef<CallMsg>,
        effects: Vec<Effect>,
        seq: i64,
    ) {
        for effect in effects {
            match effect {
                Effect::ArmTimer { kind, at } => {
                    self.cancel_timer();
                    let delay = (at - self.shared.ports.clock.now())
                        .to_std()
                        .unwrap_or(Duration::ZERO);
                    let generation = self.timer_generation;
                    self.timer = Some(myself.send_after(delay, move || CallMsg::Timer {
                        generation,
                        kind,
                        deadline: at,
                    }));
                }
                Effect::CancelTimer => self.cancel_timer(),
                Effect::Dial {
                    from,
                    to,
                    timeout_secs,
                } => {
                    let cmd = DialCommand {
                        call_id: self.id,
                        command_id: command_id(self.id, seq),
                        from,
                        to,
                        timeout_secs,
                    };
                    self.spawn_dial(myself, cmd);
                }
                Effect::Answer => {
                    let cmd = self.leg_command(seq);
                    let shared = self.shared.clone();
                    let me = myself.clone();
                    tokio::spawn(async move {
                        let result = retry_owned(&shared, cmd.call_id, || {
                            shared.ports.telephony.answer(cmd.clone())
                        })
                        .await;
                        if let Some(Err(e)) = result {
                            shared
                                .metrics
                                .effect_failures
                                .with_label_values(&["answer"])
                                .inc();
                            let _ = me.send_message(CallMsg::Apply {
                                event: Event::CommandRejected {
                                    detail: e.to_string(),
                                },
                                inbox: None,
                                reply: None,
                            });
                        }
                    });
                }
                Effect::HangupStray { carrier_call_id } => {
                    // The call's actor stays until every stray leg is released (the carrier
                    // accepted the hangup, journaled `stray_released`, or reported the leg's
                    // end); failures are retried with backoff, like the call's own release.
                    warn!(call_id = %self.id, stray = %carrier_call_id, "carrier reports a second leg for the call; hanging it up");
                    let leg = carrier_call_id.clone();
                    let cmd = LegCommand {
                        call_id: self.id,
                        command_id: format!("{}:stray:{carrier_call_id}", self.id),
                        carrier_call_id: Some(carrier_call_id),
                    };
                    let shared = self.shared.clone();
                    let me = myself.clone();
                    let attempt = self.release_attempts;
                    tokio::spawn(async move {
                        let result = retry_owned(&shared, cmd.call_id, || {
                            shared.ports.telephony.hangup(cmd.clone())
                        })
                        .await;
                        match result {
                            // Not this node's any more: the shard's next owner finds the
                            // stray leg up and releases it.
                            None => {}
                            Some(Ok(())) => {
                                let _ = me.send_message(CallMsg::Apply {
                                    event: Event::StrayReleased { leg },
                                    inbox: None,
                                    reply: None,
                                });
                            }
                            Some(Err(e)) => {
                                shared
                                    .metrics
                                    .effect_failures
                                    .with_label_values(&["hangup_stray"])
                                    .inc();
                                let delay = Duration::from_secs(2u64 << attempt.min(5));
                                warn!(call_id = %cmd.call_id, error = %e, ?delay, "hanging up a stray leg failed; retrying");
                                tokio::time::sleep(delay).await;
                                let _ = me.send_message(CallMsg::RetryRelease);
                            }
                        }
                    });
                }
                Effect::Transfer { to } => {
                    // A failed transfer leaves the call as it is (still answered, still with
                    // the agent); the caller of the API sees the failure in the logs and
                    // metrics, and no `bridged` fact appears in the journal.
                    let cmd = self.leg_command(seq);
                    let shared = self.shared.clone();
                    tokio::spawn(async move {
                        let result = retry_owned(&shared, cmd.call_id, || {
                            shared.ports.telephony.transfer(cmd.clone(), to.clone())
                        })
                        .await;
                        if let Some(Err(e)) = result {
                            shared
                                .metrics
                                .effect_failures
                                .with_label_values(&["transfer"])
                                .inc();
                            warn!(call_id = %cmd.call_id, to = %to, error = %e, "transfer failed");
                        }
                    });
                }
                Effect::Hangup { reason } => {
                    // The call stays `release_pending` (and keeps this actor) until the
                    // carrier confirms; failures are retried with backoff, never dropped.
                    let cmd = self.leg_command(seq);
                    let shared = self.shared.clone();
                    let me = myself.clone();
                    let attempt = self.release_attempts;
                    tokio::spawn(async move {
                        let result = retry_owned(&shared, cmd.call_id, || {
                            shared.ports.telephony.hangup(cmd.clone())
                        })
                        .await;
                        match result {
                            // Not this node's to release any more: the next owner of the
                            // call's shard finds it `release_pending` and releases it.
                            None => {}
                            Some(Ok(())) => {
                                let _ = me.send_message(CallMsg::Apply {
                                    event: Event::LegReleased,
                                    inbox: None,
                                    reply: None,
                                });
                            }
                            Some(Err(e)) => {
                                shared
                                    .metrics
                                    .effect_failures
                                    .with_label_values(&["hangup"])
                                    .inc();
                                let delay = Duration::from_secs(2u64 << attempt.min(5));
                                warn!(call_id = %cmd.call_id, reason = reason.as_str(), error = %e, ?delay, "hangup command failed; retrying");
                                tokio::time::sleep(delay).await;
                                let _ = me.send_message(CallMsg::RetryRelease);
                            }
                        }
                    });
                }
            }
        }
    }

    fn leg_command(&self, seq: i64) -> LegCommand {
        LegCommand {
            call_id: self.id,
            carrier_call_id: self.call.as_ref().and_then(|c| c.carrier_call_id.clone()),
            command_id: command_id(self.id, seq),
        }
    }
}

/// The idempotency key of the carrier command produced at version `seq` of a call.
pub(crate) fn command_id(call_id: CallId, seq: i64) -> String {
    format!("{call_id}:{seq}")
}

/// [`retry_command`] for a command about `call`: every attempt first takes an effect permit
/// from the shard table. `None` when an attempt was withheld because this node may not act
/// for the call now (its lease could have lapsed, or the shard is being handed over): nothing
/// about the call may be concluded from that, the shard's next owner reconciles.
pub(super) async fn retry_owned<T, F, Fut>(
    shared: &Shared,
    call: CallId,
    mut f: F,
) -> Option<Result<T, TelephonyError>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, TelephonyError>>,
{
    let withheld = AtomicBool::new(false);
    let result = retry_command(shared.config.command_timeout, || {
        let permit = shared.shards.begin_effect(call);
        let attempt = permit.as_ref().map(|_| f());
        if attempt.is_none() {
            withheld.store(true, Ordering::SeqCst);
        }
        async move {
            let _permit = permit;
            match attempt {
                Some(attempt) => attempt.await,
                // Not retried by `retry_command`.
                None => Err(TelephonyError::Rejected("withheld".into())),
            }
        }
    })
    .await;
    if withheld.load(Ordering::SeqCst) {
        shared.metrics.effects_withheld.inc();
        debug!(call_id = %call, "carrier command withheld: this node may not act for the call now");
        None
    } else {
        Some(result)
    }
}

/// Runs a carrier command, retrying `Unavailable` with exponential backoff (0.25 s, 0.5 s, 1 s).
/// Each attempt is bounded by `timeout` (a hung request counts as `Unavailable`); the command
/// id makes a retry after an ambiguous timeout safe.
pub(super) async fn retry_command<T, F, Fut>(
    timeout: Duration,
    mut f: F,
) -> Result<T, TelephonyError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, TelephonyError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let outcome = match tokio::time::timeout(timeout, f()).await {
            Ok(r) => r,
            Err(_) => Err(TelephonyError::Unavailable(format!(
                "no answer within {} ms",
                timeout.as_millis()
            ))),
        };
        match outcome {
            Err(TelephonyError::Unavailable(m)) if attempt < COMMAND_ATTEMPTS => {
                debug!(attempt, error = %m, "carrier unavailable; retrying");
                tokio::time::sleep(Duration::from_millis(250 << (attempt - 1))).await;
            }
            other => return other,
        }
    }
}
