//! The cluster store: membership (every node's heartbeat) and the shard leases that decide
//! which node runs which calls.
//!
//! The store is the only clock leases are judged by: a heartbeat's age and a lease's expiry
//! are computed by the store from its own time, never from a node's wall clock, so nodes with
//! skewed clocks agree on who is alive. A node judges its own leases by its monotonic clock
//! instead: it counts a lease from the instant *before* the request that set it, so it
//! always believes its lease ends earlier than the store does.
//!
//! Leases share their epochs with [`CallStore`](super::CallStore): a claim bumps the epoch
//! every call write of the shard is fenced by, so the previous owner's writes fail as
//! [`StoreError::Stale`] from then on. `CallStore::acquire_shards` stays as a forced take for
//! tools and tests (it ignores whoever holds the shard).
//!
//! Arguments no caller should ever send (a shard not below [`SHARD_COUNT`], a TTL of zero or
//! longer than [`MAX_LEASE_TTL`], an empty node id or URL) are refused with
//! [`StoreError::Corrupt`] before anything is read or stored: they are bugs of the caller and
//! retrying will not help. Every implementation checks them with the same functions
//! ([`check_shards`], [`check_ttl`], [`check_node`]).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::calls::{StoreError, StoreResult, SHARD_COUNT};

/// The longest lease a claim or renewal may ask for. Leases are meant to be renewed every few
/// seconds; a lease of a day would leave a dead node's calls without an owner for that long.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Refuses a shard not below [`SHARD_COUNT`].
pub fn check_shards(shards: impl IntoIterator<Item = u16>) -> StoreResult<()> {
    match shards.into_iter().find(|s| *s >= SHARD_COUNT) {
        Some(s) => Err(StoreError::Corrupt(format!(
            "shard {s} is out of range (0..{SHARD_COUNT})"
        ))),
        None => Ok(()),
    }
}

/// Refuses a lease TTL under a millisecond (the resolution leases are reported in) or over
/// [`MAX_LEASE_TTL`].
pub fn check_ttl(ttl: Duration) -> StoreResult<()> {
    if ttl < Duration::from_millis(1) || ttl > MAX_LEASE_TTL {
        Err(StoreError::Corrupt(format!(
            "lease TTL {ttl:?} is out of range (1 ms to {MAX_LEASE_TTL:?})"
        )))
    } else {
        Ok(())
    }
}

/// Refuses an empty node id.
pub fn check_node(node: &str) -> StoreResult<()> {
    if node.trim().is_empty() {
        Err(StoreError::Corrupt("empty node id".into()))
    } else {
        Ok(())
    }
}

/// What a node says of itself in each heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Unique name of the node in the cluster (`IACE_NODE_ID`).
    pub node_id: String,
    /// Base URL other nodes and the carrier reach this node at (`IACE_NODE_URL`): internal
    /// forwarding and media streams go there.
    pub url: String,
    /// This process's registration under the node id: a fresh id per start. A later process
    /// registering under the same node id supersedes this one.
    pub incarnation: uuid::Uuid,
    /// When this process started (a restart under the same id shows as a new `started_at`).
    pub started_at: DateTime<Utc>,
    /// The node is draining: it takes no new work and no shard is assigned to it.
    pub draining: bool,
}

impl NodeInfo {
    /// Refuses an empty node id or URL.
    pub fn check(&self) -> StoreResult<()> {
        check_node(&self.node_id)?;
        if self.url.trim().is_empty() {
            return Err(StoreError::Corrupt(format!(
                "node {} has an empty URL",
                self.node_id
            )));
        }
        Ok(())
    }
}

/// A registered node as the store sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    /// Node id.
    pub node_id: String,
    /// Its base URL.
    pub url: String,
    /// When its process started.
    pub started_at: DateTime<Utc>,
    /// When the store last heard from it (store time).
    pub heartbeat_at: DateTime<Utc>,
    /// Age of that heartbeat by the store's clock, in milliseconds.
    pub heartbeat_age_ms: i64,
    /// Draining: no shard is assigned to it.
    pub draining: bool,
    /// Heard from within the liveness window and not left.
    pub alive: bool,
}

/// One shard lease as the store sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// The shard.
    pub shard: u16,
    /// The node holding it; `None` when released or never taken.
    pub owner: Option<String>,
    /// The fencing token: bumped on every acquisition.
    pub epoch: i64,
    /// Milliseconds until the lease lapses by the store's clock (negative: lapsed).
    pub expires_in_ms: i64,
}

impl Lease {
    /// Held by a node and not lapsed.
    pub fn is_held(&self) -> bool {
        self.owner.is_some() && self.expires_in_ms > 0
    }
}

/// How a shard came to a node in [`ClusterStore::claim_shards`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimKind {
    /// Never leased, or released by its previous owner (a handoff).
    Free,
    /// The previous owner's lease lapsed without a release (it died or was cut off).
    Lapsed,
    /// This node held it before under the same id (a restart).
    Own,
}

/// A shard taken by [`ClusterStore::claim_shards`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The shard.
    pub shard: u16,
    /// Its new epoch (the fencing token of every write for its calls).
    pub epoch: i64,
    /// Who had it before.
    pub previous_owner: Option<String>,
    /// How it came free.
    pub kind: ClaimKind,
}

/// Membership and shard leases, kept in the system of record.
///
/// A member is alive when the store heard its heartbeat no longer than `alive_within` ago (by
/// the store's clock) and it has not left. A lease is lapsed when its expiry, set by the
/// store's clock, is not after the store's now.
#[async_trait]
pub trait ClusterStore: Send + Sync + 'static {
    /// Registers `node` as the process running under its node id from now on: its row is
    /// written whole (URL, incarnation, start, draining; heartbeat now; a `left` mark
    /// cleared). A process registered earlier under the same id is superseded: its heartbeats
    /// are refused from then on.
    async fn register(&self, node: &NodeInfo) -> StoreResult<()>;

    /// Refreshes `node`'s heartbeat (at the store's time, with its URL and draining flag,
    /// clearing a `left` mark), and returns every member heard from within `alive_within`
    /// that has not left, this node included, ordered by node id. Refused with
    /// [`StoreError::Stale`] when another process registered under the node id since this one
    /// did (this process is superseded and must stop acting); a node whose row is gone is
    /// registered again.
    async fn heartbeat(&self, node: &NodeInfo, alive_within: Duration) -> StoreResult<Vec<Member>>;

    /// Every registered node, dead or alive (see [`Member::alive`]), ordered by node id, for
    /// the operator view.
    async fn members(&self, alive_within: Duration) -> StoreResult<Vec<Member>>;

    /// Every shard lease, ordered by shard. A shard never leased has none.
    async fn leases(&self) -> StoreResult<Vec<Lease>>;

    /// Takes those of `shards` that are free for `node`: never leased, released, lapsed, or
    /// held by `node` itself (a restart under the same id, lapsed or not). Each taken shard's
    /// epoch is bumped and its lease runs `ttl` from the store's now. Shards another node holds
    /// are left alone. When several nodes claim the same shard at once, exactly one takes it.
    /// Returns what was taken, in shard order, once per shard however often it was named.
    async fn claim_shards(
        &self,
        node: &str,
        shards: &[u16],
        ttl: Duration,
    ) -> StoreResult<Vec<Claimed>>;

    /// Extends the leases `node` holds at the given epochs to `ttl` from the store's now.
    /// Returns the shards renewed, in shard order; a shard missing from the answer is no
    /// longer this node's (taken by another node after a lapse, or released). A lapsed lease
    /// nobody took is renewed.
    async fn renew_shards(
        &self,
        node: &str,
        held: &[(u16, i64)],
        ttl: Duration,
    ) -> StoreResult<Vec<u16>>;

    /// Gives up leases `node` holds at the given epochs (owner cleared, lapsed now), so that
    /// another node can claim them at once. The epoch is kept: the next claim bumps it. A
    /// shard no longer held at that epoch is left alone.
    async fn release_shards(&self, node: &str, held: &[(u16, i64)]) -> StoreResult<()>;

    /// Live calls (pending, ringing, in progress) per shard, shards without live calls left
    /// out: for the operator's view.
    async fn live_call_counts(&self) -> StoreResult<Vec<(u16, i64)>>;

    /// Marks `node` as gone (a graceful exit): it is no longer a member, at once, until its
    /// next heartbeat. Its leases are untouched (release them first). Unknown nodes are
    /// ignored.
    async fn leave(&self, node: &str) -> StoreResult<()>;
}
