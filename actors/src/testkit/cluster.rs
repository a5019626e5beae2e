//! [`ClusterStore`] for [`MemoryStore`]: membership and shard leases with the Postgres store's
//! semantics, judged by the store's own clock (tokio's, so paused time drives it), never a
//! node's. The leases are the ones the call store fences writes with: a claim bumps the epoch
//! `append` and `insert_call` check.

use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::store::{LeaseRow, MemoryStore, NodeRow, State};
use crate::ports::calls::{StoreError, StoreResult};
use crate::ports::cluster::{
    check_node, check_shards, check_ttl, ClaimKind, Claimed, ClusterStore, Lease, Member, NodeInfo,
};

/// Whole milliseconds from `now` until `at`, rounded so that the answer is positive exactly
/// while `at` is still ahead (as the Postgres store rounds).
fn ms_until(at: Instant, now: Instant) -> i64 {
    if at > now {
        let nanos = (at - now).as_nanos();
        i64::try_from(nanos.div_ceil(1_000_000)).unwrap_or(i64::MAX)
    } else {
        -i64::try_from((now - at).as_millis()).unwrap_or(i64::MAX)
    }
}

impl MemoryStore {
    fn member(&self, id: &str, row: &NodeRow, now: Instant, alive_within: Duration) -> Member {
        let age = now.saturating_duration_since(row.heartbeat_at);
        Member {
            node_id: id.to_owned(),
            url: row.url.clone(),
            started_at: row.started_at,
            heartbeat_at: self.wall(row.heartbeat_at),
            heartbeat_age_ms: i64::try_from(age.as_millis()).unwrap_or(i64::MAX),
            draining: row.draining,
            alive: !row.left && age <= alive_within,
        }
    }
}

fn node_row(node: &NodeInfo, now: Instant) -> NodeRow {
    NodeRow {
        url: node.url.clone(),
        incarnation: node.incarnation,
        started_at: node.started_at,
        heartbeat_at: now,
        draining: node.draining,
        left: false,
    }
}

/// The distinct shards of `held` that `node` still holds at the given epoch, in order.
fn held_by(s: &State, node: &str, held: &[(u16, i64)]) -> Vec<u16> {
    let mut mine: Vec<u16> = held
        .iter()
        .filter(|(shard, epoch)| {
            s.leases
                .get(shard)
                .is_some_and(|l| l.epoch == *epoch && l.owner.as_deref() == Some(node))
        })
        .map(|(shard, _)| *shard)
        .collect();
    mine.sort_unstable();
    mine.dedup();
    mine
}

#[async_trait]
impl ClusterStore for MemoryStore {
    async fn register(&self, node: &NodeInfo) -> StoreResult<()> {
        self.check()?;
        node.check()?;
        let now = self.now();
        self.lock()
            .nodes
            .insert(node.node_id.clone(), node_row(node, now));
        Ok(())
    }

    async fn heartbeat(&self, node: &NodeInfo, alive_within: Duration) -> StoreResult<Vec<Member>> {
        self.check()?;
        node.check()?;
        let now = self.now();
        let mut s = self.lock();
        match s.nodes.get_mut(&node.node_id) {
            Some(row) if row.incarnation != node.incarnation => return Err(StoreError::Stale),
            Some(row) => {
                row.url = node.url.clone();
                row.heartbeat_at = now;
                row.draining = node.draining;
                row.left = false;
            }
            None => {
                s.nodes.insert(node.node_id.clone(), node_row(node, now));
            }
        }
        Ok(s.nodes
            .iter()
            .map(|(id, row)| self.member(id, row, now, alive_within))
            .filter(|m| m.alive || m.node_id == node.node_id)
            .map(|m| Member { alive: true, ..m })
            .collect())
    }

    async fn members(&self, alive_within: Duration) -> StoreResult<Vec<Member>> {
        self.check()?;
        let now = self.now();
        let s = self.lock();
        Ok(s.nodes
            .iter()
            .map(|(id, row)| self.member(id, row, now, alive_within))
            .collect())
    }

    async fn leases(&self) -> StoreResult<Vec<Lease>> {
        self.check()?;
        let now = self.now();
        let s = self.lock();
        let mut leases: Vec<Lease> = s
            .leases
            .iter()
            .map(|(shard, l)| Lease {
                shard: *shard,
                owner: l.owner.clone(),
                epoch: l.epoch,
                expires_in_ms: ms_until(l.expires_at, now),
            })
            .collect();
        leases.sort_by_key(|l| l.shard);
        Ok(leases)
    }

    async fn claim_shards(
        &self,
        node: &str,
        shards: &[u16],
        ttl: Duration,
    ) -> StoreResult<Vec<Claimed>> {
        self.check()?;
        check_node(node)?;
        check_shards(shards.iter().copied())?;
        check_ttl(ttl)?;
        let mut wanted = shards.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let now = self.now();
        let expires_at = now + ttl;
        let mut s = self.lock();
        let mut claimed = Vec::new();
        for shard in wanted {
            let lease = s.leases.entry(shard).or_insert(LeaseRow {
                owner: None,
                epoch: 0,
                expires_at: now,
            });
            let kind = match lease.owner.as_deref() {
                None => ClaimKind::Free,
                Some(owner) if owner == node => ClaimKind::Own,
                Some(_) if lease.expires_at <= now => ClaimKind::Lapsed,
                Some(_) => continue,
            };
            let previous_owner = lease.owner.replace(node.to_owned());
            lease.epoch += 1;
            lease.expires_at = expires_at;
            claimed.push(Claimed {
                shard,
                epoch: lease.epoch,
                previous_owner,
                kind,
            });
        }
        Ok(claimed)
    }

    async fn renew_shards(
        &self,
        node: &str,
        held: &[(u16, i64)],
        ttl: Duration,
    ) -> StoreResult<Vec<u16>> {
        self.check()?;
        check_node(node)?;
        check_shards(held.iter().map(|(s, _)| *s))?;
        check_ttl(ttl)?;
        let expires_at = self.now() + ttl;
        let mut s = self.lock();
        let mine = held_by(&s, node, held);
        for shard in &mine {
            if let Some(lease) = s.leases.get_mut(shard) {
                lease.expires_at = expires_at;
            }
        }
        Ok(mine)
    }

    async fn release_shards(&self, node: &str, held: &[(u16, i64)]) -> StoreResult<()> {
        self.check()?;
        check_node(node)?;
        check_shards(held.iter().map(|(s, _)| *s))?;
        let now = self.now();
        let mut s = self.lock();
        for shard in held_by(&s, node, held) {
            if let Some(lease) = s.leases.get_mut(&shard) {
                lease.owner = None;
                lease.expires_at = now;
            }
        }
        Ok(())
    }

    async fn live_call_counts(&self) -> StoreResult<Vec<(u16, i64)>> {
        self.check()?;
        let s = self.lock();
        let mut counts = std::collections::BTreeMap::<u16, i64>::new();
        for call in s.calls.values().filter(|c| !c.status.is_terminal()) {
            *counts
                .entry(crate::ports::shard_of(call.spec.id))
                .or_default() += 1;
        }
        Ok(counts.into_iter().collect())
    }

    async fn leave(&self, node: &str) -> StoreResult<()> {
        self.check()?;
        check_node(node)?;
        if let Some(row) = self.lock().nodes.get_mut(node) {
            row.left = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The conformance suite on the memory store, under paused time: the polls that wait for a
    //! lapse advance the store's clock.

    use std::time::Duration;

    use super::super::cluster_conformance as suite;
    use super::*;
    use crate::ports::calls::StoreError;

    #[tokio::test(start_paused = true)]
    async fn claim_takes_never_leased_shards() {
        suite::claim_takes_never_leased_shards(&MemoryStore::new()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn claim_leaves_held_shards_alone() {
        suite::claim_leaves_held_shards_alone(&MemoryStore::new()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn released_shards_are_free() {
        suite::released_shards_are_free(&MemoryStore::new()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn lapsed_leases_go_to_the_next_claimer() {
        suite::lapsed_leases_go_to_the_next_claimer(&MemoryStore::new()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_takes_its_own_shards_back() {
        suite::a_restart_takes_its_own_shards_back(&MemoryStore::new()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn renewal_extends_a_lease() {
        suite::renewal_extends_a_lease(&MemoryStore::new()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_fences_the_previous_owner() {
        suite::a_claim_fences_the_previous_owner(&MemoryStore::new()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_of_appends_fails_only_its_stale_ones() {
        suite::a_batch_of_appends_fails_only_its_stale_ones(&MemoryStore::new()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_of_vendor_events_answers_each_as_alone() {
        suite::a_batch_of_vendor_events_answers_each_as_alone(&MemoryStore::new()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_decide_membership() {
        suite::heartbeats_decide_membership(&MemoryStore::new()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_claims_give_every_shard_one_owner() {
        suite::concurrent_claims_give_every_shard_one_owner(&MemoryStore::new()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_reclaims_take_back_only_their_own() {
        suite::concurrent_reclaims_take_back_only_their_own(&MemoryStore::new()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_racing_a_claim_splits_the_shards() {
        suite::a_renewal_racing_a_claim_splits_the_shards(&MemoryStore::new()).await;
    }

    /// Leases lapse by the store's clock alone: exactly at the TTL, not a tick earlier.
    #[tokio::test(start_paused = true)]
    async fn a_lease_lapses_exactly_at_its_ttl_by_the_store_clock() {
        let store = MemoryStore::new();
        store
            .claim_shards("node-a", &[1], Duration::from_millis(1_000))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_micros(999_500)).await;
        let l = &store.leases().await.unwrap()[0];
        assert_eq!(l.expires_in_ms, 1, "half a millisecond left rounds up");
        assert!(l.is_held());
        assert!(store
            .claim_shards("node-b", &[1], Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty());
        tokio::time::advance(Duration::from_micros(500)).await;
        let l = &store.leases().await.unwrap()[0];
        assert_eq!(l.expires_in_ms, 0);
        assert!(!l.is_held());
        let b = store
            .claim_shards("node-b", &[1], Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(b[0].kind, ClaimKind::Lapsed);
    }

    /// A store that is down answers nothing and changes nothing, so a simulation can cut the
    /// nodes off from it.
    #[tokio::test(start_paused = true)]
    async fn a_store_that_is_down_refuses_every_cluster_call() {
        let store = MemoryStore::new();
        let node = NodeInfo {
            node_id: "node-a".into(),
            url: "http://node-a.test".into(),
            incarnation: uuid::Uuid::from_u128(7),
            started_at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
            draining: false,
        };
        store
            .heartbeat(&node, Duration::from_secs(5))
            .await
            .unwrap();
        store
            .claim_shards("node-a", &[1], Duration::from_secs(5))
            .await
            .unwrap();
        store.set_down(true);
        let ttl = Duration::from_secs(5);
        let unavailable = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Unavailable(_)));
        assert!(unavailable(store.heartbeat(&node, ttl).await.map(drop)));
        assert!(unavailable(store.members(ttl).await.map(drop)));
        assert!(unavailable(store.leases().await.map(drop)));
        assert!(unavailable(
            store.claim_shards("node-b", &[2], ttl).await.map(drop)
        ));
        assert!(unavailable(
            store.renew_shards("node-a", &[(1, 1)], ttl).await.map(drop)
        ));
        assert!(unavailable(store.release_shards("node-a", &[(1, 1)]).await));
        assert!(unavailable(store.leave("node-a").await));
        store.set_down(false);
        let leases = store.leases().await.unwrap();
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].owner.as_deref(), Some("node-a"));
        assert!(store.members(ttl).await.unwrap()[0].alive);
    }
}
