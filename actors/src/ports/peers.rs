//! The other nodes of the cluster, as the engine reaches them: a poke tells the node that runs
//! some calls that they have work waiting in the store (a vendor event stored by another node,
//! a created call to activate). The store stays the truth: a lost poke only delays the work
//! until the owner's inbox and orphan sweeps find it.

use async_trait::async_trait;

use crate::machine::CallId;

/// Reaching other nodes.
#[async_trait]
pub trait Peers: Send + Sync + 'static {
    /// Tells the node at `url` (its `IACE_NODE_URL`) that `calls`, which it runs, have work
    /// waiting in the store; with no calls, that shards planned for it were just released
    /// (it claims them at once). Returns once the node acknowledged the poke.
    async fn poke(&self, url: &str, calls: &[CallId]) -> Result<(), String>;
}
