//! The workload: a plan of calls drawn from the seed before the run starts (so the fault
//! stream never reshuffles it), with a realistic mix of outcomes.

use iace_actors::machine::PhoneNumber;

use crate::rng::Rng;

/// What happens on one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// Outbound: answered, talks, the callee hangs up.
    Answered,
    /// Outbound: rings until the carrier's dial timeout (racing the engine's ring timer).
    NoAnswer,
    /// Outbound: busy.
    Busy,
    /// Outbound: the callee rejects the call.
    Rejected,
    /// Outbound: answered, and the callee hangs up within seconds.
    CalleeHangsUpEarly,
    /// Outbound: answered, and the callee never hangs up: the max-duration cut-off ends it.
    LongCall,
    /// Outbound: answered, the client hangs up through the API mid-call.
    AgentHangsUp,
    /// Outbound: the client hangs up through the API while it rings.
    ApiHangupWhileRinging,
    /// Outbound: the client sends the create twice with the same `Idempotency-Key` (and once
    /// with the same key and another body).
    DuplicateCreate,
    /// Inbound: answered by the agent, the caller talks and hangs up.
    InboundAnswered,
    /// Inbound: the caller gives up before the answer lands.
    InboundAbandoned,
    /// Inbound: the carrier offers the same call twice.
    InboundDuplicateOffer,
}

const MIX: [(Scenario, u32); 12] = [
    (Scenario::Answered, 26),
    (Scenario::NoAnswer, 8),
    (Scenario::Busy, 6),
    (Scenario::Rejected, 4),
    (Scenario::CalleeHangsUpEarly, 6),
    (Scenario::LongCall, 3),
    (Scenario::AgentHangsUp, 9),
    (Scenario::ApiHangupWhileRinging, 6),
    (Scenario::DuplicateCreate, 7),
    (Scenario::InboundAnswered, 17),
    (Scenario::InboundAbandoned, 4),
    (Scenario::InboundDuplicateOffer, 4),
];

impl Scenario {
    /// Whether the call comes in from the carrier.
    pub fn inbound(self) -> bool {
        matches!(
            self,
            Scenario::InboundAnswered
                | Scenario::InboundAbandoned
                | Scenario::InboundDuplicateOffer
        )
    }
}

/// One planned call.
#[derive(Debug, Clone)]
pub struct CallPlan {
    /// Index in the plan.
    pub n: usize,
    /// When it starts (simulated ms from the start of the run).
    pub at_ms: u64,
    /// What happens.
    pub scenario: Scenario,
    /// Caller.
    pub from: PhoneNumber,
    /// Called number.
    pub to: PhoneNumber,
    /// Outbound: how long it rings before the callee reacts. Inbound: the caller's patience.
    pub ring_ms: u64,
    /// How long the remote party talks before hanging up (`None`: never).
    pub talk_ms: Option<u64>,
    /// When the client hangs up through the API (ms after the create).
    pub client_hangup_ms: Option<u64>,
    /// When the client repeats the create (ms after the first).
    pub repeat_create_ms: Option<u64>,
}

/// The number inbound calls dial (owned by the simulation's agent).
pub const AGENT_NUMBER: &str = "+14155550100";

/// Draws `calls` calls arriving about every `mean_gap_ms`.
pub fn plan(seed: u64, calls: usize, mean_gap_ms: u64) -> Vec<CallPlan> {
    let mut rng = Rng::new(seed, 1);
    let weights: Vec<u32> = MIX.iter().map(|(_, w)| *w).collect();
    let mut at_ms = 0;
    (0..calls)
        .map(|n| {
            at_ms += rng.below(2 * mean_gap_ms + 1);
            let scenario = MIX[rng.weighted(&weights)].0;
            let agent = number(AGENT_NUMBER);
            let remote = number(&format!("+1415{:07}", n % 10_000_000));
            let (from, to) = if scenario.inbound() {
                (remote, agent)
            } else {
                (agent, remote)
            };
            let mut p = CallPlan {
                n,
                at_ms,
                scenario,
                from,
                to,
                ring_ms: rng.range(1_000, 15_000),
                talk_ms: Some(rng.range(5_000, 180_000)),
                client_hangup_ms: None,
                repeat_create_ms: None,
            };
            match scenario {
                Scenario::Answered
                | Scenario::InboundAnswered
                | Scenario::InboundDuplicateOffer => {
                    // Now and then a conversation outlasts the max duration (300 s).
                    if rng.chance(50) {
                        p.talk_ms = Some(rng.range(300_000, 900_000));
                    }
                    if scenario.inbound() {
                        p.ring_ms = 60_000;
                    }
                }
                Scenario::NoAnswer => p.ring_ms = rng.range(10_000, 60_000),
                Scenario::Busy => p.ring_ms = rng.range(500, 3_000),
                Scenario::Rejected => p.ring_ms = rng.range(1_000, 8_000),
                Scenario::CalleeHangsUpEarly => p.talk_ms = Some(rng.range(200, 5_000)),
                Scenario::LongCall => p.talk_ms = None,
                Scenario::AgentHangsUp => {
                    p.talk_ms = None;
                    p.client_hangup_ms = Some(p.ring_ms + rng.range(2_000, 120_000));
                }
                Scenario::ApiHangupWhileRinging => {
                    p.ring_ms = 60_000;
                    p.client_hangup_ms = Some(rng.range(1_000, 25_000));
                }
                Scenario::DuplicateCreate => {
                    // Sometimes at the same instant (a concurrent retry), sometimes later.
                    p.repeat_create_ms = Some(if rng.chance(300) {
                        0
                    } else {
                        rng.range(1, 5_000)
                    });
                }
                Scenario::InboundAbandoned => p.ring_ms = rng.range(0, 400),
            }
            p
        })
        .collect()
}

/// Parses a number the workload built (always valid E.164).
pub(crate) fn number(s: &str) -> PhoneNumber {
    PhoneNumber::parse(s).unwrap_or_else(|e| panic!("workload built an invalid number {s}: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn plans_are_reproducible() {
        let a = super::plan(5, 50, 1000);
        let b = super::plan(5, 50, 1000);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert!(a.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    }
}
