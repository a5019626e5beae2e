//! The simulated carrier: a [`Telephony`] adapter that needs no carrier account.
//!
//! `iace-dev` (and `iace serve --telephony simulated`) use it so that calls progress end to end
//! before the real Telnyx adapter is configured. A dialed leg plays a fixed script:
//!
//! | time                          | event                                  |
//! |-------------------------------|----------------------------------------|
//! | dial                          | `Initiated { carrier_call_id: leg }`   |
//! | dial + min(100 ms, ring / 2)  | `Ringing`                              |
//! | dial + ring                   | `Answered`                             |
//! | dial + ring + talk            | `HungUp { cause: NormalClearing }`     |
//!
//! # Scenario numbers
//!
//! The last four digits of the dialed number pick another script:
//!
//! - `...0486`: **busy**. Rings, then `HungUp { cause: Busy }` at the answer time.
//! - `...0487`: **no answer**. Rings forever; the engine's ring timeout (a hangup command)
//!   ends it.
//! - `...0400`: **rejected**. `dial` fails with [`TelephonyError::Rejected`] at once; no leg
//!   is created and no event is sent.
//!
//! # Crash safety
//!
//! All leg state lives in Redis under [`SimConfig::key_prefix`]; nothing but the emission
//! tasks lives in memory:
//!
//! - `{prefix}leg:{leg}`: hash with `call_id`, `to`, the absolute scheduled times (ms since
//!   the epoch) `initiated_at`, `ringing_at`, `answered_at`, `hangup_at`, the scheduled
//!   `hangup_cause`, and once the leg is over `ended_at` / `ended_cause`.
//! - `{prefix}cmd:{command_id}`: the leg a dial/answer command created (idempotency).
//! - `{prefix}call:{call_id}`: the call's leg.
//! - `{prefix}live`: set of legs whose final event has not been handed to the engine yet.
//!
//! Keys expire after a day. Multi-key writes run as Lua scripts, so a crash never leaves a
//! half-created leg. Each emission re-reads the leg and stays silent once a hangup command
//! ended it. A leg leaves the live set only after its `HungUp` was handed over, so after a
//! `kill -9` [`SimulatedCarrier::resume`] finds every unfinished leg and replays it: events
//! whose time has passed are sent at once, in order (the engine's inbox deduplicates them on
//! `(vendor, event_id)`), later ones at their time.
//!
//! Event ids are deterministic, `{leg}:{kind}` with kind `initiated`, `ringing`, `answered`
//! or `hangup`, and `occurred_at` is the scheduled time, so a replayed event is identical to
//! the original.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use fred::clients::Client;
use fred::interfaces::{ClientLike, HashesInterface, KeysInterface, SetsInterface};
use fred::types::{ClusterHash, CustomCommand, Value};
use iace_actors::machine::{CallId, HangupCause, PhoneNumber};
use iace_actors::ports::{
    DialCommand, InboxItem, LegCommand, LegStatus, Telephony, TelephonyError,
};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;
use uuid::Uuid;

mod leg;

use leg::{cause_str, Leg, Step};

/// Vendor name of the events this carrier produces (`InboxItem::vendor`).
pub const VENDOR: &str = "simulated";

/// Dialed numbers ending in this suffix are busy.
pub const BUSY_SUFFIX: &str = "0486";
/// Dialed numbers ending in this suffix ring until hung up.
pub const NO_ANSWER_SUFFIX: &str = "0487";
/// Dialed numbers ending in this suffix are rejected by `dial`.
pub const REJECTED_SUFFIX: &str = "0400";

/// Base lifetime of every key; long enough for any dev call.
const KEY_TTL_SECS: u64 = 24 * 60 * 60;
/// Ring and talk times are capped at a day each.
const MAX_PHASE_MS: u64 = 24 * 60 * 60 * 1000;
/// Number of per-leg emission locks (striped by leg id).
const LOCK_STRIPES: usize = 64;
/// How long a command waits for a leg's emission lock before giving up.
const LOCK_WAIT: StdDuration = StdDuration::from_secs(5);
/// Retry backoff of emission tasks when Redis fails.
const RETRY_MIN: StdDuration = StdDuration::from_millis(100);
const RETRY_MAX: StdDuration = StdDuration::from_secs(5);

/// Settings of the simulated carrier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// How long a dialed leg rings before it is answered (ms, capped at a day).
    pub ring_ms: u64,
    /// How long an answered leg lasts before the far end hangs up (ms, capped at a day).
    pub talk_ms: u64,
    /// Prefix of every Redis key (default `iace:sim:`).
    pub key_prefix: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            ring_ms: 2_000,
            talk_ms: 8_000,
            key_prefix: "iace:sim:".to_owned(),
        }
    }
}

/// The dev-mode carrier. See the [module documentation](self) for the scripts it plays and
/// how it survives restarts.
///
/// Dropping it aborts its emission tasks (the leg state stays in Redis; a new instance picks
/// it up with [`resume`](Self::resume)).
pub struct SimulatedCarrier {
    shared: Arc<Shared>,
    tasks: StdMutex<JoinSet<()>>,
}

/// What the emission tasks share with the carrier.
struct Shared {
    redis: Client,
    cfg: SimConfig,
    events: UnboundedSender<InboxItem>,
    /// Serialises "re-read the leg, then emit" against "end the leg, then emit the hangup", so
    /// that nothing is emitted after a hangup command's `HungUp` within this process.
    locks: Vec<tokio::sync::Mutex<()>>,
}

/// A configured ring/talk time, capped at [`MAX_PHASE_MS`].
fn phase(ms: u64) -> Duration {
    Duration::milliseconds(i64::try_from(ms.min(MAX_PHASE_MS)).unwrap_or(0))
}

fn ms(at: DateTime<Utc>) -> String {
    at.timestamp_millis().to_string()
}

fn unavailable(e: fred::error::Error) -> TelephonyError {
    TelephonyError::Unavailable(format!("simulated carrier: redis: {e}"))
}

/// Sleeps until the wall-clock instant `at` (returns at once if it has passed).
async fn sleep_until(at: DateTime<Utc>) {
    if let Ok(wait) = (at - Utc::now()).to_std() {
        tokio::time::sleep(wait).await;
    }
}

/// Creates the leg unless the command was seen. KEYS: cmd, leg, call, live. ARGV: leg id,
/// ttl, then field/value pairs of the leg hash. Returns `{created (0|1), leg id}`.
const DIAL_SCRIPT: &str = r"
local existing = redis.call('GET', KEYS[1])
if existing then return {0, existing} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[2])
redis.call('SADD', KEYS[4], ARGV[1])
return {1, ARGV[1]}
";

/// Marks a leg answered unless the command was seen. KEYS: cmd, leg, call, live. ARGV: leg
/// id, ttl, call id, answered_at, hangup_at. Returns `{code, leg id}`: 0 command seen,
/// 1 answered now, 2 leg already ended, 3 leg was already answered.
const ANSWER_SCRIPT: &str = r"
local existing = redis.call('GET', KEYS[1])
if existing then return {0, existing} end
if redis.call('HEXISTS', KEYS[2], 'ended_at') == 1 then return {2, ARGV[1]} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if redis.call('HEXISTS', KEYS[2], 'answered_at') == 1 then return {3, ARGV[1]} end
redis.call('HSET', KEYS[2], 'call_id', ARGV[3], 'answered_at', ARGV[4], 'hangup_at', ARGV[5], 'hangup_cause', 'normal_clearing')
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[2])
redis.call('SADD', KEYS[4], ARGV[1])
return {1, ARGV[1]}
";

/// Ends a leg unless it is missing or already ended. KEYS: leg. ARGV: ended_at, cause.
/// Returns -1 missing, 0 already ended, 1 ended now.
const END_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[1], 'ended_at') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'ended_at', ARGV[1], 'ended_cause', ARGV[2])
return 1
";

impl Shared {
    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.cfg.key_prefix)
    }

    fn live_key(&self) -> String {
        format!("{}live", self.cfg.key_prefix)
    }

    fn ttl_secs(&self) -> u64 {
        KEY_TTL_SECS
            + (self.cfg.ring_ms.min(MAX_PHASE_MS) + self.cfg.talk_ms.min(MAX_PHASE_MS)) / 1000
    }

    fn lock_for(&self, leg_id: &str) -> &tokio::sync::Mutex<()> {
        let mut h = DefaultHasher::new();
        leg_id.hash(&mut h);
        // The modulo keeps the index in range; LOCK_STRIPES is far below u64::MAX.
        let idx = (h.finish() % LOCK_STRIPES as u64) as usize;
        &self.locks[idx]
    }

    async fn eval(
        &self,
        script: &str,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value, fred::error::Error> {
        let mut all: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
        all.push(Value::from(script));
        all.push(Value::Integer(keys.len() as i64));
        all.extend(keys.into_iter().map(Value::from));
        all.extend(args);
        self.redis
            .custom(
                CustomCommand::new_static("EVAL", ClusterHash::Offset(2), false),
                all,
            )
            .await
    }

    async fn read_leg(&self, leg_id: &str) -> Result<Option<Leg>, fred::error::Error> {
        let h: HashMap<String, String> = self.redis.hgetall(self.key("leg", leg_id)).await?;
        if h.is_empty() {
            return Ok(None);
        }
        let leg = Leg::parse(leg_id, &h);
        if leg.is_none() {
            tracing::warn!(
                leg = leg_id,
                "simulated carrier: ignoring malformed leg in redis"
            );
        }
        Ok(leg)
    }

    /// The leg a command is about: the carrier id if given, else the call's leg.
    async fn resolve(
        &self,
        call_id: CallId,
        carrier_call_id: Option<&str>,
    ) -> Result<Option<String>, fred::error::Error> {
        match carrier_call_id {
            Some(id) => Ok(Some(id.to_owned())),
            None => {
                self.redis
                    .get::<Option<String>, _>(self.key("call", &call_id.to_string()))
                    .await
            }
        }
    }

    /// Ends the leg at `at` with `cause`. `Ok(true)` when this call ended it.
    async fn end_leg(
        &self,
        leg_id: &str,
        at: DateTime<Utc>,
        cause: HangupCause,
    ) -> Result<bool, fred::error::Error> {
        let r = self
            .eval(
                END_SCRIPT,
                vec![self.key("leg", leg_id)],
                vec![Value::from(ms(at)), Value::from(cause_str(cause))],
            )
            .await?;
        Ok(r.as_i64() == Some(1))
    }

    /// Hands an event to the engine. `false` when the receiver is gone (shutting down).
    fn emit(&self, item: InboxItem) -> bool {
        let id = item.event_id.clone();
        match self.events.send(item) {
            Ok(()) => {
                tracing::debug!(event_id = %id, "simulated carrier: event");
                true
            }
            Err(_) => {
                tracing::debug!(event_id = %id, "simulated carrier: event receiver closed");
                false
            }
        }
    }

    /// Removes a finished leg from the live set, retrying a few times. Failing here only
    /// means a later `resume` replays the leg once more (deduplicated downstream).
    async fn retire(&self, leg_id: &str) {
        let mut backoff = RETRY_MIN;
        for _ in 0..5 {
            match self.redis.srem::<i64, _, _>(self.live_key(), leg_id).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(leg = leg_id, error = %e, "simulated carrier: could not retire leg");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// One step of a leg's script, at its time. `Ok(true)`: go on with the next step.
    async fn step(
        &self,
        leg_id: &str,
        at: DateTime<Utc>,
        step: Step,
    ) -> Result<bool, fred::error::Error> {
        let _guard = self.lock_for(leg_id).lock().await;
        let Some(leg) = self.read_leg(leg_id).await? else {
            return Ok(false);
        };
        if leg.ended.is_some() {
            // A hangup command ended the leg and emitted its HungUp itself.
            return Ok(false);
        }
        match step {
            Step::HangUp(cause) => {
                if !self.end_leg(leg_id, at, cause).await? {
                    return Ok(false);
                }
                if self.emit(leg.item(at, step)) {
                    self.retire(leg_id).await;
                }
                Ok(false)
            }
            _ => Ok(self.emit(leg.item(at, step))),
        }
    }

    /// Plays a live leg's script from the start: past steps at once, later ones on time.
    async fn run_leg(self: Arc<Self>, leg_id: String) {
        let mut backoff = RETRY_MIN;
        let plan = loop {
            match self.read_leg(&leg_id).await {
                Ok(Some(leg)) => break leg.plan(),
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(leg = %leg_id, error = %e, "simulated carrier: cannot read leg, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        };
        for (at, step) in plan {
            sleep_until(at).await;
            let mut backoff = RETRY_MIN;
            loop {
                match self.step(&leg_id, at, step).await {
                    Ok(true) => break,
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(leg = %leg_id, step = step.kind(), error = %e, "simulated carrier: redis failed, retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(RETRY_MAX);
                    }
                }
            }
        }
    }

    /// Re-sends the history of a leg that was ended but whose `HungUp` may not have reached
    /// the engine (the process died in between), then retires it.
    async fn replay_ended(self: Arc<Self>, leg: Leg) {
        let Some((ended_at, cause)) = leg.ended else {
            return;
        };
        for (at, step) in leg.plan() {
            if at > ended_at || matches!(step, Step::HangUp(_)) {
                break;
            }
            if !self.emit(leg.item(at, step)) {
                return;
            }
        }
        if self.emit(leg.item(ended_at, Step::HangUp(cause))) {
            self.retire(&leg.id).await;
        }
    }
}

impl SimulatedCarrier {
    /// A carrier keeping its state in `redis` under `cfg.key_prefix` and sending the events it
    /// produces to `events`. Call [`resume`](Self::resume) once at process start.
    pub fn new(redis: Client, cfg: SimConfig, events: UnboundedSender<InboxItem>) -> Self {
        let locks = (0..LOCK_STRIPES)
            .map(|_| tokio::sync::Mutex::new(()))
            .collect();
        Self {
            shared: Arc::new(Shared {
                redis,
                cfg,
                events,
                locks,
            }),
            tasks: StdMutex::new(JoinSet::new()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.shared.cfg
    }

    /// Restarts the script of every leg left unfinished by a previous process (or a dropped
    /// instance): events whose time has passed are sent at once, in order, later ones on time.
    /// Already-sent events are sent again with the same ids; the engine's inbox drops them.
    /// Returns how many legs were picked up. Call once, at start, before taking traffic.
    pub async fn resume(&self) -> Result<usize, TelephonyError> {
        let legs: Vec<String> = self
            .shared
            .redis
            .smembers(self.shared.live_key())
            .await
            .map_err(unavailable)?;
        let mut resumed = 0;
        for leg_id in legs {
            match self.shared.read_leg(&leg_id).await.map_err(unavailable)? {
                None => {
                    // Expired or malformed: nothing to play.
                    self.shared
                        .redis
                        .srem::<i64, _, _>(self.shared.live_key(), &leg_id)
                        .await
                        .map_err(unavailable)?;
                }
                Some(leg) if leg.ended.is_some() => {
                    self.spawn(Arc::clone(&self.shared).replay_ended(leg));
                    resumed += 1;
                }
                Some(_) => {
                    self.spawn(Arc::clone(&self.shared).run_leg(leg_id));
                    resumed += 1;
                }
            }
        }
        if resumed > 0 {
            tracing::info!(legs = resumed, "simulated carrier: resumed unfinished legs");
        }
        Ok(resumed)
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        // Reap finished tasks so the set does not grow with every call.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }
}

#[async_trait]
impl Telephony for SimulatedCarrier {
    async fn dial(&self, cmd: DialCommand) -> Result<String, TelephonyError> {
        let to = cmd.to.as_str();
        if to.ends_with(REJECTED_SUFFIX) {
            return Err(TelephonyError::Rejected(format!(
                "simulated: {to} rejects calls (numbers ending in {REJECTED_SUFFIX})"
            )));
        }
        let s = &self.shared;
        let now = Utc::now();
        let ring = phase(s.cfg.ring_ms);
        let talk = phase(s.cfg.talk_ms);
        let ringing_at = now + (ring / 2).min(Duration::milliseconds(100));
        let answer_at = now + ring;

        let leg_id = format!("sim-{}", Uuid::new_v4());
        let mut fields: Vec<(&str, String)> = vec![
            ("call_id", cmd.call_id.to_string()),
            ("to", to.to_owned()),
            ("initiated_at", ms(now)),
            ("ringing_at", ms(ringing_at)),
        ];
        if to.ends_with(BUSY_SUFFIX) {
            fields.push(("hangup_at", ms(answer_at)));
            fields.push(("hangup_cause", cause_str(HangupCause::Busy).to_owned()));
        } else if !to.ends_with(NO_ANSWER_SUFFIX) {
            fields.push(("answered_at", ms(answer_at)));
            fields.push(("hangup_at", ms(answer_at + talk)));
            fields.push((
                "hangup_cause",
                cause_str(HangupCause::NormalClearing).to_owned(),
            ));
        }

        let mut args = vec![
            Value::from(leg_id.as_str()),
            Value::from(s.ttl_secs().to_string()),
        ];
        for (k, v) in fields {
            args.push(Value::from(k));
            args.push(Value::from(v));
        }
        let keys = vec![
            s.key("cmd", &cmd.command_id),
            s.key("leg", &leg_id),
            s.key("call", &cmd.call_id.to_string()),
            s.live_key(),
        ];
        let reply = s.eval(DIAL_SCRIPT, keys, args).await.map_err(unavailable)?;
        let (code, leg) = script_reply(reply)?;
        if code == 1 {
            tracing::info!(call_id = %cmd.call_id, leg = %leg, to, "simulated carrier: dialed");
            self.spawn(Arc::clone(s).run_leg(leg.clone()));
        }
        Ok(leg)
    }

    async fn answer(&self, cmd: LegCommand) -> Result<(), TelephonyError> {
        let s = &self.shared;
        let leg_id = match s
            .resolve(cmd.call_id, cmd.carrier_call_id.as_deref())
            .await
            .map_err(unavailable)?
        {
            Some(id) => id,
            None => format!("sim-{}", Uuid::new_v4()),
        };
        let now = Utc::now();
        let talk = phase(s.cfg.talk_ms);
        let keys = vec![
            s.key("cmd", &cmd.command_id),
            s.key("leg", &leg_id),
            s.key("call", &cmd.call_id.to_string()),
            s.live_key(),
        ];
        let args = vec![
            Value::from(leg_id.as_str()),
            Value::from(s.ttl_secs().to_string()),
            Value::from(cmd.call_id.to_string()),
            Value::from(ms(now)),
            Value::from(ms(now + talk)),
        ];
        let reply = s
            .eval(ANSWER_SCRIPT, keys, args)
            .await
            .map_err(unavailable)?;
        match script_reply(reply)? {
            (1, leg) => {
                tracing::info!(call_id = %cmd.call_id, leg = %leg, "simulated carrier: answered");
                self.spawn(Arc::clone(s).run_leg(leg));
                Ok(())
            }
            (2, leg) => Err(TelephonyError::Rejected(format!(
                "simulated: leg {leg} has already ended"
            ))),
            _ => Ok(()),
        }
    }

    async fn transfer(&self, cmd: LegCommand, to: PhoneNumber) -> Result<(), TelephonyError> {
        // The simulated carrier has no second party to bridge to; say so instead of
        // pretending the transfer happened.
        Err(TelephonyError::Rejected(format!(
            "simulated carrier: transfers are not simulated (call {} to {to}); use IACE_TELEPHONY=telnyx with the fake carrier",
            cmd.call_id
        )))
    }

    async fn reject(&self, carrier_call_id: &str, _command_id: &str) -> Result<(), TelephonyError> {
        // The simulated carrier never offers inbound calls.
        Err(TelephonyError::Rejected(format!(
            "simulated carrier: no inbound leg {carrier_call_id}"
        )))
    }

    async fn hangup(&self, cmd: LegCommand) -> Result<(), TelephonyError> {
        let s = &self.shared;
        let Some(leg_id) = s
            .resolve(cmd.call_id, cmd.carrier_call_id.as_deref())
            .await
            .map_err(unavailable)?
        else {
            return Ok(());
        };
        let _guard = tokio::time::timeout(LOCK_WAIT, s.lock_for(&leg_id).lock())
            .await
            .map_err(|_| TelephonyError::Unavailable("simulated carrier: leg is busy".into()))?;
        let Some(leg) = s.read_leg(&leg_id).await.map_err(unavailable)? else {
            return Ok(());
        };
        if leg.ended.is_some() {
            return Ok(());
        }
        let now = Utc::now();
        // If the script already reached its own end (its task is late, or the process was
        // down), that end is what the carrier would report.
        let (at, cause) = match leg.hangup_at {
            Some(end) if end <= now => (end, leg.hangup_cause),
            _ => (now, HangupCause::NormalClearing),
        };
        if !s.end_leg(&leg_id, at, cause).await.map_err(unavailable)? {
            return Ok(());
        }
        tracing::info!(call_id = %leg.call_id, leg = %leg_id, "simulated carrier: hung up");
        if s.emit(leg.item(at, Step::HangUp(cause))) {
            s.retire(&leg_id).await;
        }
        Ok(())
    }

    async fn status(
        &self,
        call_id: CallId,
        carrier_call_id: Option<&str>,
    ) -> Result<LegStatus, TelephonyError> {
        let s = &self.shared;
        let Some(leg_id) = s
            .resolve(call_id, carrier_call_id)
            .await
            .map_err(unavailable)?
        else {
            return Ok(LegStatus::Unknown);
        };
        Ok(match s.read_leg(&leg_id).await.map_err(unavailable)? {
            Some(leg) => leg.status_at(Utc::now()),
            None => LegStatus::Unknown,
        })
    }
}

/// Decodes a `{code, leg id}` script reply.
fn script_reply(reply: Value) -> Result<(i64, String), TelephonyError> {
    let parts = reply.into_array();
    match (
        parts.first().and_then(Value::as_i64),
        parts.get(1).and_then(Value::as_string),
    ) {
        (Some(code), Some(leg)) => Ok((code, leg)),
        _ => Err(TelephonyError::Unavailable(
            "simulated carrier: unexpected reply from redis script".into(),
        )),
    }
}
