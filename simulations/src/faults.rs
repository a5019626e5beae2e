//! Fault profiles: what the world may do wrong, and how often.

use std::fmt;

/// A named set of fault rates (`--faults <profile>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// No faults: the happy world (still with realistic call outcomes).
    None,
    /// Carrier-side trouble: duplicated, delayed, reordered and late webhooks; failing, hanging
    /// and ambiguous commands; carrier outages.
    Network,
    /// Store trouble: failed, slow and ambiguous writes; call actors panicking mid-transition.
    Store,
    /// Whole-engine crashes with restarts from the store, and wall-clock jumps.
    Crash,
    /// All of the above at once.
    Chaos,
    /// Long carrier outages with the carrier behind its circuit breaker: new calls must fail
    /// fast while it is open, and everything must recover when the carrier comes back.
    Outage,
    /// A cluster of 2-5 nodes sharing the shards, whose membership changes: nodes join, leave
    /// (shutdown or drain), are killed (`kill -9`) and restarted under the same id; pokes
    /// between nodes are lost now and then.
    Membership,
    /// A cluster whose nodes are cut off from the store (they keep running, the carrier still
    /// reaches them) and healed, or whose membership and lease calls are slow.
    Partition,
    /// A cluster whose nodes' wall clocks disagree by up to two minutes and jump, under
    /// membership changes: leases are judged by the store's clock and must not care.
    Skew,
    /// Every cluster fault at once, with the carrier's and the store's faults.
    Cluster,
}

impl Profile {
    /// Every profile, for help texts.
    pub const ALL: [Profile; 10] = [
        Profile::None,
        Profile::Network,
        Profile::Store,
        Profile::Crash,
        Profile::Chaos,
        Profile::Outage,
        Profile::Membership,
        Profile::Partition,
        Profile::Skew,
        Profile::Cluster,
    ];

    /// The cluster profiles (several nodes).
    pub const CLUSTER: [Profile; 4] = [
        Profile::Membership,
        Profile::Partition,
        Profile::Skew,
        Profile::Cluster,
    ];

    /// Parses a profile name.
    pub fn parse(s: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name() == s)
    }

    /// The profile's name.
    pub fn name(self) -> &'static str {
        match self {
            Profile::None => "none",
            Profile::Network => "network",
            Profile::Store => "store",
            Profile::Crash => "crash",
            Profile::Chaos => "chaos",
            Profile::Outage => "outage",
            Profile::Membership => "membership",
            Profile::Partition => "partition",
            Profile::Skew => "skew",
            Profile::Cluster => "cluster",
        }
    }

    /// The rates of this profile.
    pub fn rates(self) -> Rates {
        let none = Rates::default();
        let network = Rates {
            duplicate_event: 150,
            late_event: 40,
            max_delivery_delay_ms: 3_000,
            command_fail: 60,
            command_hang: 15,
            command_ambiguous: 30,
            carrier_outage_every_s: Some((120, 900)),
            ..none
        };
        let store = Rates {
            store_fail: 20,
            store_slow: 10,
            store_ambiguous: 10,
            store_jitter_ms: 20,
            panic_in_transition: 8,
            ..none
        };
        let crash = Rates {
            crash_every_s: Some((60, 600)),
            clock_jump_every_s: Some((30, 300)),
            // A carrier with a short memory for command ids: a dial repeated after a restart
            // gets a second leg, as it would from Telnyx after 60 s.
            dial_dedupe_ms: Some(3_000),
            crash_on_dial: 15,
            ..none
        };
        let outage = Rates {
            duplicate_event: 50,
            max_delivery_delay_ms: 1_000,
            command_fail: 10,
            carrier_outage_every_s: Some((150, 400)),
            carrier_outage_ms: Some((20_000, 90_000)),
            breakers: true,
            ..none
        };
        let membership = Rates {
            cluster_nodes: Some((2, 3)),
            membership_every_s: Some((10, 60)),
            poke_lost: 50,
            ..none
        };
        let partition = Rates {
            cluster_nodes: Some((2, 4)),
            partition_every_s: Some((10, 90)),
            partition_ms: (2_000, 40_000),
            slow_link_every_s: Some((10, 90)),
            slow_link_ms: (500, 12_000),
            poke_lost: 50,
            ..none
        };
        let skew = Rates {
            cluster_nodes: Some((2, 4)),
            clock_skew_ms: 120_000,
            clock_jump_every_s: Some((10, 60)),
            membership_every_s: Some((20, 120)),
            ..none
        };
        match self {
            Profile::None => none,
            Profile::Membership => membership,
            Profile::Partition => partition,
            Profile::Skew => skew,
            Profile::Cluster => Rates {
                cluster_nodes: Some((2, 4)),
                membership_every_s: Some((15, 90)),
                partition_every_s: partition.partition_every_s,
                partition_ms: partition.partition_ms,
                slow_link_every_s: partition.slow_link_every_s,
                slow_link_ms: partition.slow_link_ms,
                clock_skew_ms: 30_000,
                clock_jump_every_s: crash.clock_jump_every_s,
                poke_lost: 50,
                store_fail: store.store_fail,
                store_slow: store.store_slow,
                store_ambiguous: store.store_ambiguous,
                store_jitter_ms: store.store_jitter_ms,
                panic_in_transition: store.panic_in_transition,
                ..network
            },
            Profile::Outage => outage,
            Profile::Network => network,
            Profile::Store => store,
            Profile::Crash => crash,
            Profile::Chaos => Rates {
                crash_every_s: crash.crash_every_s,
                clock_jump_every_s: crash.clock_jump_every_s,
                dial_dedupe_ms: crash.dial_dedupe_ms,
                crash_on_dial: crash.crash_on_dial,
                store_fail: store.store_fail,
                store_slow: store.store_slow,
                store_ambiguous: store.store_ambiguous,
                store_jitter_ms: store.store_jitter_ms,
                panic_in_transition: store.panic_in_transition,
                ..network
            },
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Fault rates. `*_per_mille` style fields are probabilities per opportunity, out of 1000.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rates {
    /// A webhook is delivered a second time (same event id).
    pub duplicate_event: u32,
    /// A webhook is delivered again much later (30-120 s), after the call moved on.
    pub late_event: u32,
    /// Webhooks are delayed by up to this much (which reorders them).
    pub max_delivery_delay_ms: u64,
    /// A carrier command fails without effect.
    pub command_fail: u32,
    /// A carrier command hangs for 20-40 s before answering.
    pub command_hang: u32,
    /// A carrier command takes effect but the answer is lost (reported as a failure).
    pub command_ambiguous: u32,
    /// The carrier API is down (for `carrier_outage_ms`), every (min, max) seconds.
    pub carrier_outage_every_s: Option<(u64, u64)>,
    /// How long an outage lasts, (min, max) ms; `None`: 2-40 s.
    pub carrier_outage_ms: Option<(u64, u64)>,
    /// The carrier sits behind its circuit breaker (and the API fails fast while it is open).
    pub breakers: bool,
    /// A store operation fails without effect.
    pub store_fail: u32,
    /// A store operation takes 1-8 s (longer than the engine's timeout sometimes).
    pub store_slow: u32,
    /// A store write commits but the answer is lost (reported as a failure).
    pub store_ambiguous: u32,
    /// Every store operation takes up to this much.
    pub store_jitter_ms: u64,
    /// A call actor panics while applying an event (before or after the write commits).
    pub panic_in_transition: u32,
    /// How long the carrier remembers a dial's command id (a repeat within it returns the
    /// same leg; after it, a repeat creates a second leg). `None`: 60 s, as Telnyx documents.
    pub dial_dedupe_ms: Option<u64>,
    /// The engine is killed (`kill -9`) right after a dial reached the carrier, before its
    /// answer is journaled, per mille of dials.
    pub crash_on_dial: u32,
    /// The whole engine is killed and restarted from the store every (min, max) seconds.
    pub crash_every_s: Option<(u64, u64)>,
    /// The wall clock jumps (forward up to 20 s: timers fire late; back up to 3 s: timers fire
    /// early) every (min, max) seconds.
    pub clock_jump_every_s: Option<(u64, u64)>,
    /// A cluster: how many nodes run at the start, (min, max); `None`: one node.
    pub cluster_nodes: Option<(u64, u64)>,
    /// A membership change every (min, max) seconds: a node joins, leaves (shutdown or
    /// drain), or is killed and maybe restarted.
    pub membership_every_s: Option<(u64, u64)>,
    /// A node is cut off from the store every (min, max) seconds...
    pub partition_every_s: Option<(u64, u64)>,
    /// ... for (min, max) ms.
    pub partition_ms: (u64, u64),
    /// A node's membership and lease calls become slow every (min, max) seconds (for as long
    /// as a partition lasts)...
    pub slow_link_every_s: Option<(u64, u64)>,
    /// ... by (min, max) ms, split at random between the request and its answer.
    pub slow_link_ms: (u64, u64),
    /// Each node's wall clock starts skewed by up to this much, either way.
    pub clock_skew_ms: u64,
    /// A poke between nodes is lost, per mille.
    pub poke_lost: u32,
}
