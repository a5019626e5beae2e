//! A scripted carrier: [`ScriptedTelephony`] records commands and answers with scripted
//! statuses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::machine::{CallId, PhoneNumber};
use crate::ports::telephony::{DialCommand, LegCommand, LegStatus, Telephony, TelephonyError};

/// A command the [`ScriptedTelephony`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `dial`.
    Dial(DialCommand),
    /// `answer`.
    Answer(LegCommand),
    /// `hangup`.
    Hangup(LegCommand),
    /// `transfer`.
    Transfer(LegCommand, PhoneNumber),
    /// `reject` of a leg that has no call.
    Reject {
        /// The leg.
        carrier_call_id: String,
        /// Its command id.
        command_id: String,
    },
}

/// A carrier that records commands, answers `dial` with `leg-<call id>` (idempotent on the
/// command id) and reports whatever status the test scripted.
#[derive(Default)]
pub struct ScriptedTelephony {
    commands: Mutex<Vec<Command>>,
    statuses: Mutex<HashMap<CallId, LegStatus>>,
    reject_dials: AtomicBool,
    down: AtomicBool,
    status_requests: std::sync::atomic::AtomicU64,
}

impl ScriptedTelephony {
    /// A carrier that accepts everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every command received, in order.
    pub fn commands(&self) -> Vec<Command> {
        self.commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Dials of one call.
    pub fn dials(&self, call: CallId) -> Vec<DialCommand> {
        self.commands()
            .into_iter()
            .filter_map(|c| match c {
                Command::Dial(d) if d.call_id == call => Some(d),
                _ => None,
            })
            .collect()
    }

    /// Hangups of one call.
    pub fn hangups(&self, call: CallId) -> Vec<LegCommand> {
        self.commands()
            .into_iter()
            .filter_map(|c| match c {
                Command::Hangup(h) if h.call_id == call => Some(h),
                _ => None,
            })
            .collect()
    }

    /// What `status` answers for `call` (default: `Unknown`, or `Ringing` once dialed).
    pub fn set_status(&self, call: CallId, status: LegStatus) {
        self.statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(call, status);
    }

    /// How many times the engine asked for a leg's status.
    pub fn status_requests(&self) -> u64 {
        self.status_requests.load(Ordering::SeqCst)
    }

    /// Makes `dial` fail with `Rejected`.
    pub fn reject_dials(&self, reject: bool) {
        self.reject_dials.store(reject, Ordering::SeqCst);
    }

    /// Makes every command fail with `Unavailable`.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn record(&self, c: Command) -> Result<(), TelephonyError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(TelephonyError::Unavailable(
                "scripted carrier is down".into(),
            ));
        }
        self.commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(c);
        Ok(())
    }
}

#[async_trait]
impl Telephony for ScriptedTelephony {
    async fn dial(&self, cmd: DialCommand) -> Result<String, TelephonyError> {
        let call = cmd.call_id;
        self.record(Command::Dial(cmd))?;
        if self.reject_dials.load(Ordering::SeqCst) {
            return Err(TelephonyError::Rejected("D13 invalid destination".into()));
        }
        self.statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(call)
            .or_insert(LegStatus::Ringing);
        Ok(format!("leg-{call}"))
    }

    async fn answer(&self, cmd: LegCommand) -> Result<(), TelephonyError> {
        self.record(Command::Answer(cmd))
    }

    async fn transfer(&self, cmd: LegCommand, to: PhoneNumber) -> Result<(), TelephonyError> {
        self.record(Command::Transfer(cmd, to))
    }

    async fn reject(&self, carrier_call_id: &str, command_id: &str) -> Result<(), TelephonyError> {
        self.record(Command::Reject {
            carrier_call_id: carrier_call_id.to_owned(),
            command_id: command_id.to_owned(),
        })
    }

    async fn hangup(&self, cmd: LegCommand) -> Result<(), TelephonyError> {
        let call = cmd.call_id;
        self.record(Command::Hangup(cmd))?;
        self.statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                call,
                LegStatus::Ended(crate::machine::HangupCause::NormalClearing),
            );
        Ok(())
    }

    async fn status(
        &self,
        call_id: CallId,
        _carrier_call_id: Option<&str>,
    ) -> Result<LegStatus, TelephonyError> {
        self.status_requests.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(TelephonyError::Unavailable(
                "scripted carrier is down".into(),
            ));
        }
        Ok(self
            .statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&call_id)
            .copied()
            .unwrap_or(LegStatus::Unknown))
    }
}
