//! What the queue workers share: [`retry_delay`], and a supervisor that keeps one worker actor
//! running: it starts the worker, restarts it (after a pause) whenever it stops or fails, and
//! forwards messages to it. ractor never restarts an
//! actor on its own, and its default `handle_supervisor_evt` would stop the supervisor when
//! the worker stops; this one overrides it.

use std::marker::PhantomData;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::warn;

/// The wait before a queue worker tries a job again after `attempts` failed tries: `base`
/// doubled per attempt, at most `cap`.
pub fn retry_delay(base: Duration, cap: Duration, attempts: u32) -> Duration {
    let ms = (base.as_millis() as u64)
        .saturating_mul(1u64 << attempts.min(20))
        .min(cap.as_millis() as u64);
    Duration::from_millis(ms)
}

/// How long the supervisor waits before restarting a worker that stopped.
pub const RESTART_DELAY: Duration = Duration::from_secs(1);

/// The supervisor of a worker `A`, started with a clone of the same arguments every time.
pub struct KeepAlive<A>(PhantomData<fn() -> A>);

impl<A> Default for KeepAlive<A> {
    fn default() -> Self {
        KeepAlive(PhantomData)
    }
}

/// Messages of [`KeepAlive`].
#[derive(Debug)]
pub enum KeepAliveMsg<M> {
    /// Start (or restart) the worker.
    Start,
    /// Pass a message to the worker (dropped while it is down).
    Forward(M),
}

/// The supervisor's state.
pub struct KeepAliveState<A: Actor> {
    name: &'static str,
    arguments: A::Arguments,
    worker: Option<ActorRef<A::Msg>>,
    restarts: u64,
}

impl<A> Actor for KeepAlive<A>
where
    A: Actor + Default,
    A::Arguments: Clone + Sync,
{
    type Msg = KeepAliveMsg<A::Msg>;
    type State = KeepAliveState<A>;
    type Arguments = (&'static str, A::Arguments);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (name, arguments): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_message(KeepAliveMsg::Start)?;
        Ok(KeepAliveState {
            name,
            arguments,
            worker: None,
            restarts: 0,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(w) = state.worker.take() {
            w.stop(None);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            KeepAliveMsg::Start => {
                if state.worker.is_some() {
                    return Ok(());
                }
                match Actor::spawn_linked(
                    None,
                    A::default(),
                    state.arguments.clone(),
                    myself.get_cell(),
                )
                .await
                {
                    Ok((worker, _)) => state.worker = Some(worker),
                    Err(e) => {
                        warn!(worker = state.name, error = %e, "worker did not start; retrying");
                        myself.send_after(RESTART_DELAY, || KeepAliveMsg::Start);
                    }
                }
            }
            KeepAliveMsg::Forward(msg) => {
                if let Some(w) = &state.worker {
                    let _ = w.send_message(msg);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason),
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            _ => return Ok(()),
        };
        if state
            .worker
            .as_ref()
            .is_some_and(|w| w.get_id() == cell.get_id())
        {
            state.worker = None;
            state.restarts += 1;
            warn!(worker = state.name, reason = ?why, restarts = state.restarts, "worker stopped; restarting");
            myself.send_after(RESTART_DELAY, || KeepAliveMsg::Start);
        }
        Ok(())
    }
}
