//! The nodes of the simulated world. A run has one node (`sim-node`) or, in the cluster
//! profiles, up to [`MAX_NODES`] nodes sharing the shards of one store. Each node has its own
//! engine process (none while it is down), its own wall clock (skewed, and jumping, by the
//! faults), its own view of the store through a [`Link`] that a partition cuts or slows, and
//! its own tag on the carrier commands it sends ([`NodeTelephony`]). Pokes between nodes go
//! through [`SimPeers`], which finds the node by its URL, as the HTTP client of the real
//! `Peers` would.
//!
//! Picking a node for an API request or a webhook, as a load balancer would, draws from the
//! fault stream only when more than one node runs, so single-node runs are unchanged.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use iace_actors::engine::Engine;
use iace_actors::machine::{CallId, PhoneNumber};
use iace_actors::ports::{
    Clock, DialCommand, LegCommand, LegStatus, Peers, Telephony, TelephonyError,
};
use iace_actors::testkit::TokioClock;

use crate::carrier::SimCarrier;
use crate::core::Core;
use crate::store::{Link, SimStore};

/// Most nodes a cluster run has.
pub const MAX_NODES: usize = 5;

/// Wall clock of one node: tokio's paused clock plus a skew the faults set and jump.
pub(crate) struct SimClock {
    base: TokioClock,
    skew_ms: AtomicI64,
}

impl SimClock {
    pub fn new(epoch: DateTime<Utc>, skew_ms: i64) -> Self {
        SimClock {
            base: TokioClock::new(epoch),
            skew_ms: AtomicI64::new(skew_ms),
        }
    }

    /// Moves the clock by `ms` (an NTP step, or a skew).
    pub fn jump(&self, ms: i64) {
        self.skew_ms.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn skew_ms(&self) -> i64 {
        self.skew_ms.load(Ordering::SeqCst)
    }
}

impl Clock for SimClock {
    fn now(&self) -> DateTime<Utc> {
        self.base.now() + chrono::Duration::milliseconds(self.skew_ms.load(Ordering::SeqCst))
    }
}

/// One node: its id and URL, its process (if up), clock and view of the store.
pub(crate) struct Node {
    pub id: String,
    pub url: String,
    engine: Mutex<Option<Engine>>,
    /// The node's network to the store.
    pub link: Arc<Link>,
    pub clock: Arc<SimClock>,
    /// The store as this node reaches it (through `link`).
    pub store: Arc<SimStore>,
    /// Processes started under this id.
    pub starts: AtomicU64,
}

impl Node {
    /// Its running process.
    pub fn engine(&self) -> Option<Engine> {
        self.engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes its process out (to stop or kill it); requests no longer reach it.
    pub fn take(&self) -> Option<Engine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Publishes a started process.
    pub fn set(&self, engine: Engine) {
        *self.engine.lock().unwrap_or_else(|p| p.into_inner()) = Some(engine);
    }

    pub fn is_up(&self) -> bool {
        self.engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

/// Every node of the world, up or down.
pub(crate) struct Nodes {
    pub list: Vec<Arc<Node>>,
    core: Arc<Core>,
}

impl Nodes {
    /// `count` nodes over `store`; a single node is `sim-node`, cluster nodes are `node-1`...
    /// Each node's clock is skewed by a draw in `-max_skew_ms..=max_skew_ms`.
    pub fn new(
        core: Arc<Core>,
        store: &SimStore,
        epoch: DateTime<Utc>,
        count: usize,
        max_skew_ms: u64,
    ) -> Arc<Self> {
        let list = (0..count)
            .map(|i| {
                let id = if count == 1 {
                    "sim-node".to_owned()
                } else {
                    format!("node-{}", i + 1)
                };
                let skew = if max_skew_ms > 0 {
                    let span = core.draw(0, 2 * max_skew_ms + 1);
                    i64::try_from(span).unwrap_or(0) - i64::try_from(max_skew_ms).unwrap_or(0)
                } else {
                    0
                };
                if skew != 0 {
                    core.log(format!("{id} clock skewed {skew} ms"));
                }
                let link = Arc::new(Link::default());
                Arc::new(Node {
                    url: format!("http://{id}.sim"),
                    id,
                    engine: Mutex::new(None),
                    store: Arc::new(store.view(link.clone())),
                    link,
                    clock: Arc::new(SimClock::new(epoch, skew)),
                    starts: AtomicU64::new(0),
                })
            })
            .collect();
        Arc::new(Nodes { list, core })
    }

    /// The first node (the only one of single-node runs).
    pub fn first(&self) -> &Arc<Node> {
        &self.list[0]
    }

    /// Nodes whose process runs, in node order.
    pub fn up(&self) -> Vec<Arc<Node>> {
        self.list.iter().filter(|n| n.is_up()).cloned().collect()
    }

    /// A running process picked as a load balancer would (at random among the running ones).
    pub fn pick(&self) -> Option<Engine> {
        let up: Vec<Engine> = self.list.iter().filter_map(|n| n.engine()).collect();
        match up.len() {
            0 => None,
            1 => up.into_iter().next(),
            n => {
                let i = usize::try_from(self.core.draw(0, n as u64)).unwrap_or(0);
                up.into_iter().nth(i)
            }
        }
    }

    /// The running process at `url`.
    pub fn by_url(&self, url: &str) -> Option<Engine> {
        self.list
            .iter()
            .find(|n| n.url == url)
            .and_then(|n| n.engine())
    }

    /// Takes every process out (end of run: breaks the carrier -> node -> engine -> carrier
    /// cycle).
    pub fn take_all(&self) -> Vec<(String, Engine)> {
        self.list
            .iter()
            .filter_map(|n| n.take().map(|e| (n.id.clone(), e)))
            .collect()
    }
}

/// Pokes between nodes: delivered to the process at the URL, or refused when none runs there
/// (or, with the profile's `poke_lost`, lost on the way).
pub(crate) struct SimPeers {
    pub nodes: Weak<Nodes>,
    pub core: Arc<Core>,
}

#[async_trait]
impl Peers for SimPeers {
    async fn poke(&self, url: &str, calls: &[CallId]) -> Result<(), String> {
        let Some(nodes) = self.nodes.upgrade() else {
            return Err("the world is gone".into());
        };
        if self.core.fault("poke_lost", self.core.rates.poke_lost) {
            return Err("connection reset (injected)".into());
        }
        match nodes.by_url(url) {
            Some(engine) => {
                self.core.log(format!("poke {url}: {} calls", calls.len()));
                self.core.tally("pokes delivered");
                engine.poked(calls.to_vec());
                Ok(())
            }
            None => {
                self.core.log(format!("poke {url} refused: node down"));
                Err("connection refused".into())
            }
        }
    }
}

/// A node's carrier client: every command reaches the one simulated carrier, tagged with the
/// node that sent it, so the carrier can check that the sender held the call's shard.
pub(crate) struct NodeTelephony {
    pub node: String,
    pub carrier: Arc<SimCarrier>,
}

#[async_trait]
impl Telephony for NodeTelephony {
    async fn dial(&self, cmd: DialCommand) -> Result<String, TelephonyError> {
        self.carrier.sent_by(&self.node, cmd.call_id, "dial").await;
        self.carrier.dial(cmd).await
    }

    async fn answer(&self, cmd: LegCommand) -> Result<(), TelephonyError> {
        self.carrier
            .sent_by(&self.node, cmd.call_id, "answer")
            .await;
        self.carrier.answer(cmd).await
    }

    async fn transfer(&self, cmd: LegCommand, to: PhoneNumber) -> Result<(), TelephonyError> {
        self.carrier
            .sent_by(&self.node, cmd.call_id, "transfer")
            .await;
        self.carrier.transfer(cmd, to).await
    }

    async fn reject(&self, leg: &str, command_id: &str) -> Result<(), TelephonyError> {
        self.carrier.reject(leg, command_id).await
    }

    async fn hangup(&self, cmd: LegCommand) -> Result<(), TelephonyError> {
        self.carrier
            .sent_by(&self.node, cmd.call_id, "hangup")
            .await;
        self.carrier.hangup(cmd).await
    }

    async fn status(
        &self,
        call_id: CallId,
        carrier_call_id: Option<&str>,
    ) -> Result<LegStatus, TelephonyError> {
        self.carrier.status(call_id, carrier_call_id).await
    }
}
