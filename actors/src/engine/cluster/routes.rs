//! Who runs which shard, as the last round of this node's shard manager saw it: for forwarding
//! a command to the node that runs the call, for pokes, and for the operator's view. Only a
//! hint: the store's leases are the truth, and a command sent to a node that no longer runs
//! the call is answered "retry" there, never run twice.

use std::sync::RwLock;

use serde::Serialize;

use crate::ports::{Lease, Member};

/// Another node, as commands and pokes reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peer {
    /// Its node id.
    pub node_id: String,
    /// Its base URL (`IACE_NODE_URL`).
    pub url: String,
}

/// The cluster as the last round saw it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterView {
    /// Live members, by node id.
    pub members: Vec<Member>,
    /// Every shard lease.
    pub leases: Vec<Lease>,
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct Routes {
    view: RwLock<ClusterView>,
}

impl Routes {
    pub(crate) fn update(&self, members: Vec<Member>, leases: Vec<Lease>) {
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = ClusterView { members, leases };
    }

    pub(crate) fn view(&self) -> ClusterView {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set_leases(&self, leases: Vec<Lease>) {
        self.view.write().unwrap_or_else(|p| p.into_inner()).leases = leases;
    }

    pub(crate) fn set_members(&self, members: Vec<Member>) {
        self.view.write().unwrap_or_else(|p| p.into_inner()).members = members;
    }

    /// The live node holding a valid lease on `shard`, if any.
    pub(crate) fn owner(&self, shard: u16) -> Option<Peer> {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        let lease = view.leases.iter().find(|l| l.shard == shard)?;
        if !lease.is_held() {
            return None;
        }
        let owner = lease.owner.as_deref()?;
        view.members
            .iter()
            .find(|m| m.node_id == owner && m.alive)
            .map(|m| Peer {
                node_id: m.node_id.clone(),
                url: m.url.clone(),
            })
    }

    /// A live, non-draining node other than `me` that runs calls (holds at least one
    /// shard), for work this node cannot take; the one holding the most shards.
    pub(crate) fn runner_other_than(&self, me: &str) -> Option<Peer> {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        let mut held = vec![0usize; view.members.len()];
        for lease in view.leases.iter().filter(|l| l.is_held()) {
            if let Some(i) = view
                .members
                .iter()
                .position(|m| Some(m.node_id.as_str()) == lease.owner.as_deref())
            {
                held[i] += 1;
            }
        }
        view.members
            .iter()
            .zip(held)
            .filter(|(m, n)| m.alive && !m.draining && m.node_id != me && *n > 0)
            .max_by_key(|(m, n)| (*n, std::cmp::Reverse(m.node_id.clone())))
            .map(|(m, _)| Peer {
                node_id: m.node_id.clone(),
                url: m.url.clone(),
            })
    }
}
