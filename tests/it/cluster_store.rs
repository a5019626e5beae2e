//! The Postgres cluster store against a real server: the `ClusterStore` conformance suite
//! (the same checks the memory store passes), with leases of a few hundred milliseconds that
//! the checks wait out by asking the database, and what only Postgres has: lease rows from
//! before leases had a TTL, and several connections claiming the same shards at once.
//! Requires `DATABASE_URL`.

use crate::common;

use std::time::Duration;

use iace::store::PgStore;
use iace_actors::ports::{ClaimKind, Claimed, ClusterStore, NodeInfo};
use iace_actors::testkit::cluster_conformance as suite;

async fn store() -> PgStore {
    let (_, pool) = common::db::migrated_pool().await;
    PgStore::new(pool)
}

#[tokio::test]
async fn claim_takes_never_leased_shards() {
    suite::claim_takes_never_leased_shards(&store().await).await;
}

#[tokio::test]
async fn claim_leaves_held_shards_alone() {
    suite::claim_leaves_held_shards_alone(&store().await).await;
}

#[tokio::test]
async fn released_shards_are_free() {
    suite::released_shards_are_free(&store().await).await;
}

#[tokio::test]
async fn lapsed_leases_go_to_the_next_claimer() {
    suite::lapsed_leases_go_to_the_next_claimer(&store().await).await;
}

#[tokio::test]
async fn a_restart_takes_its_own_shards_back() {
    suite::a_restart_takes_its_own_shards_back(&store().await).await;
}

#[tokio::test]
async fn renewal_extends_a_lease() {
    suite::renewal_extends_a_lease(&store().await).await;
}

#[tokio::test]
async fn a_claim_fences_the_previous_owner() {
    suite::a_claim_fences_the_previous_owner(&store().await).await;
}

#[tokio::test]
async fn a_batch_of_appends_fails_only_its_stale_ones() {
    suite::a_batch_of_appends_fails_only_its_stale_ones(&store().await).await;
}

#[tokio::test]
async fn a_batch_of_vendor_events_answers_each_as_alone() {
    suite::a_batch_of_vendor_events_answers_each_as_alone(&store().await).await;
}

#[tokio::test]
async fn heartbeats_decide_membership() {
    suite::heartbeats_decide_membership(&store().await).await;
}

/// The four claimers hold four connections of the pool, so their transactions overlap in the
/// server and contend for the same row locks.
#[tokio::test]
async fn concurrent_claims_give_every_shard_one_owner() {
    suite::concurrent_claims_give_every_shard_one_owner(&store().await).await;
}

/// Both claims run at once on their own connections: without care in the order rows are
/// locked and inserted, the two transactions would wait on each other (a deadlock the server
/// breaks by failing one).
#[tokio::test]
async fn concurrent_reclaims_take_back_only_their_own() {
    suite::concurrent_reclaims_take_back_only_their_own(&store().await).await;
}

#[tokio::test]
async fn a_renewal_racing_a_claim_splits_the_shards() {
    suite::a_renewal_racing_a_claim_splits_the_shards(&store().await).await;
}

/// Rows written before leases had a TTL (owner set, no expiry) expire when the migration
/// runs: the first claim takes them as lapsed from their old owner, at the next epoch.
#[tokio::test]
async fn a_lease_from_before_the_ttl_is_lapsed() {
    let store = store().await;
    sqlx::query("INSERT INTO shard_lease (shard, owner, epoch) VALUES (3, 'old-node', 7)")
        .execute(store.pool())
        .await
        .unwrap();
    let claimed = store
        .claim_shards("node-a", &[3], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        claimed,
        vec![Claimed {
            shard: 3,
            epoch: 8,
            previous_owner: Some("old-node".into()),
            kind: ClaimKind::Lapsed,
        }]
    );
}

/// Heartbeat times are the database's: a node whose own clock is decades off is alive, and
/// its `heartbeat_at` is the server's time, not the node's.
#[tokio::test]
async fn heartbeat_times_are_the_database_clock() {
    let store = store().await;
    let node = NodeInfo {
        node_id: "node-a".into(),
        url: "http://node-a.cluster.test:8080".into(),
        incarnation: uuid::Uuid::from_u128(7),
        started_at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
        draining: false,
    };
    let seen = store
        .heartbeat(&node, Duration::from_secs(5))
        .await
        .unwrap();
    let db_now: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(seen.len(), 1);
    let lag = db_now - seen[0].heartbeat_at;
    assert!(
        lag >= chrono::Duration::zero() && lag < chrono::Duration::seconds(60),
        "heartbeat_at {} vs the database's {db_now}",
        seen[0].heartbeat_at
    );
    assert!(seen[0].alive);
}
