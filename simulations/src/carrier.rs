//! The simulated phone network: a carrier that places and receives calls, plays each callee's
//! or caller's behaviour from the workload plan, and sends webhooks back to the engine the way
//! a real carrier does: asynchronously, possibly late, out of order, twice, and retried until
//! acknowledged.
//!
//! Like Telnyx, it deduplicates a repeated dial `command_id` only for a while: a dial repeated
//! after the window creates a second leg of the call, whose webhooks name that leg. Events are
//! stamped with the carrier's own time and name their leg.
//!
//! It also checks what only the carrier can see: a call is dialed with one command id only,
//! and never again once the engine has journaled its leg; an inbound leg maps to one call;
//! at the end every leg has been released. It tells the checker which legs it answered, so a
//! call can be `in_progress` only if its own leg was answered. Every command arrives tagged
//! with the node that sent it, and that node must hold the call's shard at that instant by the
//! store's clock ([`SimCarrier::sent_by`]): at most one node acts for a call at any instant.
//!
//! Webhooks and offers go to any running node (as through a load balancer).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use iace_actors::breaker::{BreakerHandle, BreakerState};
use iace_actors::engine::{EngineError, InboundCall, IngestOutcome};
use iace_actors::machine::{CallId, CarrierEvent, HangupCause, PhoneNumber};
use iace_actors::ports::{
    shard_of, ClusterStore, DialCommand, InboxItem, LegCommand, LegStatus, Telephony,
    TelephonyError,
};
use iace_actors::testkit::MemoryStore;
use uuid::Uuid;

use crate::cluster::Nodes;
use crate::core::Core;
use crate::workload::{CallPlan, Scenario};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LegState {
    Ringing,
    Answered,
    Ended(HangupCause),
}

struct Leg {
    call_id: Option<CallId>,
    state: LegState,
    plan: CallPlan,
}

#[derive(Default)]
struct State {
    legs: BTreeMap<String, Leg>,
    by_call: BTreeMap<CallId, String>,
    /// Dial command id -> (leg, when it was first seen, ms).
    dial_commands: BTreeMap<String, (String, u64)>,
    plans: BTreeMap<String, CallPlan>,
    accepted: BTreeSet<String>,
    next_leg: u64,
    next_event: u64,
    down_until_ms: u64,
    breaker: Option<BreakerHandle>,
}

pub(crate) struct SimCarrier {
    core: Arc<Core>,
    /// The carrier's clock at simulated time zero (its events carry its own time).
    epoch: chrono::DateTime<chrono::Utc>,
    /// The nodes webhooks and offers go to (any running one, as through a load balancer).
    nodes: Arc<Nodes>,
    /// The store whose leases say which node may send commands for which call.
    leases: Arc<MemoryStore>,
    me: Weak<SimCarrier>,
    org: Uuid,
    agent: Uuid,
    state: Mutex<State>,
    /// Asks the world to kill the engine (a crash mid-dial).
    crash: Mutex<Option<tokio::sync::mpsc::UnboundedSender<()>>>,
}

impl SimCarrier {
    pub fn new(
        core: Arc<Core>,
        epoch: chrono::DateTime<chrono::Utc>,
        nodes: Arc<Nodes>,
        leases: Arc<MemoryStore>,
        org: Uuid,
        agent: Uuid,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| SimCarrier {
            core,
            epoch,
            nodes,
            leases,
            me: me.clone(),
            org,
            agent,
            state: Mutex::new(State::default()),
            crash: Mutex::new(None),
        })
    }

    /// Where to ask for a crash of the engine right after a dial (profiles with
    /// `crash_on_dial`).
    pub fn crash_requests(&self, tx: tokio::sync::mpsc::UnboundedSender<()>) {
        *self.crash.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn arc(&self) -> Option<Arc<SimCarrier>> {
        self.me.upgrade()
    }

    /// Registers how the callee at `plan.to` behaves when dialed.
    pub fn expect_dial(&self, plan: &CallPlan) {
        self.state().plans.insert(plan.to.to_string(), plan.clone());
    }

    /// Checks every command against the carrier's breaker from now on: none may arrive while
    /// it is open.
    pub fn watch_breaker(&self, breaker: BreakerHandle) {
        self.state().breaker = Some(breaker);
    }

    /// Takes the carrier API down for `ms`.
    pub fn outage(&self, ms: u64) {
        let until = self.core.now_ms() + ms;
        self.state().down_until_ms = until;
        self.core.log(format!("carrier api down for {ms} ms"));
    }

    /// Legs that are not released yet: (leg id, call id, state).
    pub fn unreleased(&self) -> Vec<(String, Option<CallId>, LegState)> {
        self.state()
            .legs
            .iter()
            .filter(|(_, l)| !matches!(l.state, LegState::Ended(_)))
            .map(|(id, l)| (id.clone(), l.call_id, l.state))
            .collect()
    }

    /// Number of legs ever created.
    pub fn legs(&self) -> usize {
        self.state().legs.len()
    }

    /// A command for `call` left `node`: the node must hold the call's shard at this instant by
    /// the store's clock (the store's lease is the node's and has not expired). Otherwise two
    /// nodes could be acting for the call at once (or one that may already have been replaced).
    pub async fn sent_by(&self, node: &str, call: CallId, command: &str) {
        let shard = shard_of(call);
        let lease = match self.leases.leases().await {
            Ok(leases) => leases.into_iter().find(|l| l.shard == shard),
            Err(e) => {
                self.core
                    .violate("the simulated store answers", format!("leases: {e}"));
                return;
            }
        };
        self.core
            .log(format!("{command} {call} sent by {node} (shard {shard})"));
        self.core.tally(format!("commands by {node}"));
        let held = lease
            .as_ref()
            .is_some_and(|l| l.owner.as_deref() == Some(node) && l.expires_in_ms > 0);
        if !held {
            self.core.violate(
                "at most one node acts for a call at any instant",
                format!(
                    "{command} for call {call} (shard {shard}) sent by {node} while the store's lease of the shard was {lease:?}"
                ),
            );
        }
    }

    /// Fault gate in front of every command: outage, plain failure, hang.
    async fn command_faults(&self, name: &str) -> Result<(), TelephonyError> {
        let breaker = self.state().breaker.clone();
        if let Some(b) = breaker {
            if matches!(b.state(), BreakerState::Open | BreakerState::ForcedOpen) {
                self.core.violate(
                    "no command reaches a carrier whose breaker is open",
                    format!(
                        "{name} arrived while the breaker was {}",
                        b.state().as_str()
                    ),
                );
            }
        }
        if self.core.now_ms() < self.state().down_until_ms {
            self.core.log(format!("cmd {name} refused: carrier down"));
            return Err(TelephonyError::Unavailable("503 carrier outage".into()));
        }
        let r = self.core.rates;
        if self.core.fault("command_fail", r.command_fail) {
            return Err(TelephonyError::Unavailable(
                "502 bad gateway (injected)".into(),
            ));
        }
        if self.core.fault("command_hang", r.command_hang) {
            let ms = self.core.draw(20_000, 40_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Ok(())
    }

    /// The command took effect; maybe its answer is lost.
    fn ambiguous(&self) -> Result<(), TelephonyError> {
        if self
            .core
            .fault("command_ambiguous", self.core.rates.command_ambiguous)
        {
            return Err(TelephonyError::Unavailable(
                "connection reset after the request was sent (injected)".into(),
            ));
        }
        Ok(())
    }

    /// Moves a leg to `next` if it is in one of `from`; returns the call to notify.
    fn transition(&self, leg: &str, from: &[LegState], next: LegState) -> Option<CallId> {
        let mut s = self.state();
        let l = s.legs.get_mut(leg)?;
        if !from.contains(&l.state) {
            return None;
        }
        l.state = next;
        let call = l.call_id;
        drop(s);
        if next == LegState::Answered {
            self.core.checker().leg_answered(leg);
        }
        self.core.log(format!("leg {leg} -> {next:?}"));
        call
    }

    fn leg_state(&self, leg: &str) -> Option<LegState> {
        self.state().legs.get(leg).map(|l| l.state)
    }

    /// Sends a webhook about `leg` of `call` (asynchronously, with the profile's delivery
    /// faults).
    fn emit(&self, call: CallId, leg: &str, event: CarrierEvent) {
        let Some(me) = self.arc() else { return };
        let event_id = {
            let mut s = self.state();
            s.next_event += 1;
            format!("ev-{}", s.next_event)
        };
        self.core.log(format!(
            "webhook {event_id} for {call} leg {leg}: {event:?}"
        ));
        let ms = i64::try_from(self.core.now_ms()).unwrap_or(i64::MAX);
        let item = InboxItem {
            vendor: "simcarrier".into(),
            event_id,
            call_id: call,
            carrier_leg: Some(leg.to_owned()),
            occurred_at: self.epoch + chrono::Duration::milliseconds(ms),
            event,
        };
        let r = self.core.rates;
        let max_delay = if self.core.faults_on() {
            r.max_delivery_delay_ms.max(100)
        } else {
            100
        };
        me.clone()
            .spawn_delivery(item.clone(), self.core.draw(0, max_delay));
        if self.core.fault("duplicate_event", r.duplicate_event) {
            me.clone()
                .spawn_delivery(item.clone(), self.core.draw(0, max_delay * 2));
        }
        if self.core.fault("late_event", r.late_event) {
            me.spawn_delivery(item, self.core.draw(30_000, 120_000));
        }
    }

    fn spawn_delivery(self: Arc<Self>, item: InboxItem, delay_ms: u64) {
        self.core.delivery_started();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let mut backoff = 500;
            loop {
                if let Some(engine) = self.nodes.pick() {
                    match engine.ingest_carrier_event(item.clone()).await {
                        Ok(IngestOutcome::Accepted) => {
                            self.core
                                .log(format!("delivered {} accepted", item.event_id));
                            if !self.state().accepted.insert(item.event_id.clone()) {
                                self.core.violate(
                                    "each carrier event applied at most once",
                                    format!("webhook {} accepted as new twice", item.event_id),
                                );
                            }
                            break;
                        }
                        Ok(other) => {
                            self.core
                                .log(format!("delivered {} {other:?}", item.event_id));
                            break;
                        }
                        Err(e) => self
                            .core
                            .log(format!("delivery {} failed: {e}", item.event_id)),
                    }
                }
                tokio::time::sleep(Duration::from_millis(backoff)).await;
                backoff = (backoff * 2).min(30_000);
            }
            self.core.delivery_finished();
        });
    }

    /// The callee side of an outbound leg.
    fn play_callee(self: Arc<Self>, leg: String, call: CallId, plan: CallPlan, timeout_ms: u64) {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if self.leg_state(&leg) == Some(LegState::Ringing) {
                self.emit(call, &leg, CarrierEvent::Ringing);
            }
            let ring = plan.ring_ms.max(300);
            let end_unanswered = |cause| {
                if let Some(c) = self.transition(&leg, &[LegState::Ringing], LegState::Ended(cause))
                {
                    self.emit(c, &leg, CarrierEvent::HungUp { cause });
                }
            };
            match plan.scenario {
                Scenario::Busy | Scenario::Rejected => {
                    tokio::time::sleep(Duration::from_millis(ring - 300)).await;
                    end_unanswered(if plan.scenario == Scenario::Busy {
                        HangupCause::Busy
                    } else {
                        HangupCause::Rejected
                    });
                }
                Scenario::NoAnswer | Scenario::ApiHangupWhileRinging => {
                    // The callee never picks up; the carrier gives up at the dial timeout
                    // (the same instant as the engine's ring timer: a deliberate race).
                    tokio::time::sleep(Duration::from_millis(ring.min(timeout_ms) - 300)).await;
                    end_unanswered(HangupCause::NoAnswer);
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(ring - 300)).await;
                    let answered = self.transition(&leg, &[LegState::Ringing], LegState::Answered);
                    if let Some(c) = answered {
                        self.emit(c, &leg, CarrierEvent::Answered);
                        self.clone().talk(leg, plan.talk_ms);
                    }
                }
            }
        });
    }

    /// The remote party talks for `talk_ms` and hangs up (`None`: stays until we hang up).
    fn talk(self: Arc<Self>, leg: String, talk_ms: Option<u64>) {
        let Some(ms) = talk_ms else { return };
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let cause = HangupCause::NormalClearing;
            if let Some(c) = self.transition(&leg, &[LegState::Answered], LegState::Ended(cause)) {
                self.emit(c, &leg, CarrierEvent::HungUp { cause });
            }
        });
    }

    /// An inbound call arrives: the carrier offers it to the engine (retried until answered,
    /// maybe twice), and the caller waits for the answer or gives up.
    pub fn offer(self: &Arc<Self>, plan: CallPlan) {
        let leg = {
            let mut s = self.state();
            s.next_leg += 1;
            let id = format!("in-{}", s.next_leg);
            s.legs.insert(
                id.clone(),
                Leg {
                    call_id: None,
                    state: LegState::Ringing,
                    plan: plan.clone(),
                },
            );
            id
        };
        self.core.log(format!(
            "inbound leg {leg} from {} (plan {})",
            plan.from, plan.n
        ));
        let twice = plan.scenario == Scenario::InboundDuplicateOffer
            || self
                .core
                .fault("duplicate_event", self.core.rates.duplicate_event);
        self.clone().spawn_offer(leg.clone(), plan.clone(), 0);
        if twice {
            let later = self.core.draw(0, 5_000);
            self.clone().spawn_offer(leg.clone(), plan.clone(), later);
        }
        // The caller's patience: gives up if not answered in time.
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(plan.ring_ms)).await;
            let cause = HangupCause::OriginatorCancel;
            if me
                .transition(&leg, &[LegState::Ringing], LegState::Ended(cause))
                .is_some()
            {
                me.notify_when_known(leg, CarrierEvent::HungUp { cause });
            }
        });
    }

    fn spawn_offer(self: Arc<Self>, leg: String, plan: CallPlan, delay_ms: u64) {
        self.core.delivery_started();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let offer = InboundCall {
                organization_id: self.org,
                agent_id: self.agent,
                from: plan.from.clone(),
                to: plan.to.clone(),
                carrier_call_id: leg.clone(),
                customer_id: None,
            };
            let mut backoff = 500;
            loop {
                if let Some(mut engine) = self.nodes.pick() {
                    let mut created = engine.create_inbound_call(offer.clone()).await;
                    // A node that runs no shard (joining, draining, cut off) names one that
                    // does: the request is forwarded there once, as the HTTP layer does.
                    if let Err(EngineError::Elsewhere { peer }) = &created {
                        self.core
                            .log(format!("offer {leg} forwarded to {}", peer.node_id));
                        if let Some(there) = self.nodes.by_url(&peer.url) {
                            engine = there;
                            created = engine.create_inbound_call(offer.clone()).await;
                        }
                    }
                    match created {
                        Ok(created) => {
                            let id = created.call.spec.id;
                            self.core.log(format!(
                                "offer {leg} -> call {id} (replayed: {})",
                                created.replayed
                            ));
                            self.bind(&leg, id);
                            break;
                        }
                        Err(
                            e @ (EngineError::Unavailable(_)
                            | EngineError::StoreUnavailable(_)
                            | EngineError::Timeout(_)
                            | EngineError::Elsewhere { .. }),
                        ) => {
                            self.core.log(format!("offer {leg} failed: {e}"));
                        }
                        Err(e) => {
                            self.core
                                .violate("API answers", format!("inbound offer {leg}: {e}"));
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(backoff)).await;
                backoff = (backoff * 2).min(30_000);
            }
            self.core.delivery_finished();
        });
    }

    /// Records which call an inbound leg belongs to (from the offer's answer or the engine's
    /// answer command); a second, different call for the same leg is a violation.
    fn bind(&self, leg: &str, call: CallId) {
        let mut s = self.state();
        let Some(l) = s.legs.get_mut(leg) else { return };
        match l.call_id {
            Some(existing) if existing != call => {
                drop(s);
                self.core.violate(
                    "one call per inbound leg",
                    format!("leg {leg} became calls {existing} and {call}"),
                );
            }
            Some(_) => {}
            None => {
                l.call_id = Some(call);
                s.by_call.insert(call, leg.to_owned());
            }
        }
    }

    /// Sends `event` for an inbound leg once the engine has told us its call id.
    fn notify_when_known(self: Arc<Self>, leg: String, event: CarrierEvent) {
        tokio::spawn(async move {
            loop {
                let call = self.state().legs.get(&leg).and_then(|l| l.call_id);
                if let Some(call) = call {
                    self.emit(call, &leg, event);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
}

#[async_trait]
impl Telephony for SimCarrier {
    async fn dial(&self, cmd: DialCommand) -> Result<String, TelephonyError> {
        self.command_faults("dial").await?;
        let known = self
            .core
            .checker()
            .calls()
            .get(&cmd.call_id)
            .and_then(|m| m.folded.carrier_call_id.clone());
        if let Some(known) = known {
            self.core.violate(
                "no second dial for a call whose leg is known",
                format!(
                    "call {} dialed with command {} although its leg {known} is journaled",
                    cmd.call_id, cmd.command_id
                ),
            );
            return Err(TelephonyError::Rejected("duplicate dial".into()));
        }
        let now = self.core.now_ms();
        let window = self.core.rates.dial_dedupe_ms.unwrap_or(60_000);
        let (leg, new, plan) = {
            let mut s = self.state();
            match s.dial_commands.get(&cmd.command_id) {
                Some((leg, at)) if now.saturating_sub(*at) <= window => (leg.clone(), false, None),
                remembered => {
                    let repeat = remembered.is_some();
                    let plan = s.plans.get(cmd.to.as_str()).cloned();
                    s.next_leg += 1;
                    let leg = format!("out-{}", s.next_leg);
                    let first = s.by_call.get(&cmd.call_id).cloned();
                    if first.is_none() {
                        s.by_call.insert(cmd.call_id, leg.clone());
                    }
                    if !repeat {
                        s.dial_commands
                            .insert(cmd.command_id.clone(), (leg.clone(), now));
                    }
                    if let Some(plan) = plan.clone() {
                        s.legs.insert(
                            leg.clone(),
                            Leg {
                                call_id: Some(cmd.call_id),
                                state: LegState::Ringing,
                                plan,
                            },
                        );
                    }
                    match first {
                        Some(first) if !repeat => {
                            drop(s);
                            self.core.violate(
                                "a call is dialed with one command id",
                                format!(
                                    "call {} dialed again with command {} (first leg {first})",
                                    cmd.call_id, cmd.command_id
                                ),
                            );
                            return Err(TelephonyError::Rejected("duplicate dial".into()));
                        }
                        Some(first) => {
                            drop(s);
                            self.core.count("second_leg");
                            self.core.log(format!(
                                "dial {} repeated after the dedupe window: second leg {leg} (first {first})",
                                cmd.command_id
                            ));
                        }
                        None => {}
                    }
                    (leg, true, plan)
                }
            }
        };
        self.core.log(format!(
            "cmd dial {} {} -> {leg}{}",
            cmd.call_id,
            cmd.command_id,
            if new { "" } else { " (deduplicated)" }
        ));
        if new {
            match (plan, self.arc()) {
                (Some(plan), Some(me)) => me.play_callee(
                    leg.clone(),
                    cmd.call_id,
                    plan,
                    u64::from(cmd.timeout_secs) * 1000,
                ),
                _ => self.core.violate(
                    "a call is dialed once",
                    format!("dial to {} that no client asked for", cmd.to),
                ),
            }
        }
        if new
            && self
                .core
                .fault("crash_on_dial", self.core.rates.crash_on_dial)
        {
            // kill -9 with the dial sent and its answer not yet journaled: the answer is lost
            // with the connection.
            let asked = self
                .crash
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_some_and(|tx| tx.send(()).is_ok());
            if asked {
                tokio::time::sleep(Duration::from_secs(60)).await;
                return Err(TelephonyError::Unavailable(
                    "connection reset: the process died (injected)".into(),
                ));
            }
        }
        self.ambiguous()?;
        Ok(leg)
    }

    async fn answer(&self, cmd: LegCommand) -> Result<(), TelephonyError> {
        self.command_faults("answer").await?;
        let Some(leg) = cmd.carrier_call_id.clone() else {
            return Err(TelephonyError::Rejected("answer without a leg id".into()));
        };
        self.bind(&leg, cmd.call_id);
        self.core.log(format!(
            "cmd answer {} {} on {leg}",
            cmd.call_id, cmd.command_id
        ));
        match self.leg_state(&leg) {
            None => return Err(TelephonyError::Rejected("unknown leg".into())),
            Some(LegState::Ended(_)) => {
                return Err(TelephonyError::Rejected(
                    "90018 call has already ended".into(),
                ))
            }
            Some(LegState::Answered) => {}
            Some(LegState::Ringing) => {
                if let Some(c) = self.transition(&leg, &[LegState::Ringing], LegState::Answered) {
                    self.emit(c, &leg, CarrierEvent::Answered);
                    let talk = self.state().legs.get(&leg).and_then(|l| l.plan.talk_ms);
                    if let Some(me) = self.arc() {
                        me.talk(leg.clone(), talk);
                    }
                }
            }
        }
        self.ambiguous()
    }

    async fn transfer(&self, _cmd: LegCommand, _to: PhoneNumber) -> Result<(), TelephonyError> {
        // The workload never transfers; a transfer reaching the model is a bug.
        Err(TelephonyError::Rejected(
            "the simulated world does not model transfers".into(),
        ))
    }

    async fn reject(&self, _leg: &str, _command_id: &str) -> Result<(), TelephonyError> {
        // Inbound offers in the world always name an agent's number.
        Err(TelephonyError::Rejected(
            "the simulated world does not model rejected offers".into(),
        ))
    }

    async fn hangup(&self, cmd: LegCommand) -> Result<(), TelephonyError> {
        self.command_faults("hangup").await?;
        let leg = cmd
            .carrier_call_id
            .clone()
            .or_else(|| self.state().by_call.get(&cmd.call_id).cloned());
        self.core.log(format!(
            "cmd hangup {} {} on {leg:?}",
            cmd.call_id, cmd.command_id
        ));
        if let Some(leg) = leg {
            let cause = HangupCause::NormalClearing;
            let ended = self.transition(
                &leg,
                &[LegState::Ringing, LegState::Answered],
                LegState::Ended(cause),
            );
            if let Some(c) = ended {
                self.emit(c, &leg, CarrierEvent::HungUp { cause });
            }
        }
        self.ambiguous()
    }

    async fn status(
        &self,
        call_id: CallId,
        carrier_call_id: Option<&str>,
    ) -> Result<LegStatus, TelephonyError> {
        if self.core.now_ms() < self.state().down_until_ms {
            return Err(TelephonyError::Unavailable("503 carrier outage".into()));
        }
        if self
            .core
            .fault("command_fail", self.core.rates.command_fail)
        {
            return Err(TelephonyError::Unavailable(
                "502 bad gateway (injected)".into(),
            ));
        }
        // Like Telnyx, the carrier can only be asked about a leg by its id.
        let s = self.state();
        let status = match carrier_call_id.and_then(|l| s.legs.get(l)) {
            None => LegStatus::Unknown,
            Some(l) => match l.state {
                LegState::Ringing => LegStatus::Ringing,
                LegState::Answered => LegStatus::Answered,
                LegState::Ended(c) => LegStatus::Ended(c),
            },
        };
        drop(s);
        self.core.log(format!(
            "status {call_id} {carrier_call_id:?} -> {status:?}"
        ));
        Ok(status)
    }
}
