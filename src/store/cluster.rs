//! [`ClusterStore`]: membership heartbeats (`cluster_node`) and shard leases with a TTL
//! (`shard_lease`).
//!
//! Every judgement of time (a heartbeat's age, whether a lease lapsed, when a lease ends) uses
//! the database's `clock_timestamp()`, never a node's clock. Not `now()` either: `now()` is the
//! start of the transaction, and a claim that waited on row locks (behind the previous owner's
//! in-flight call writes, which hold the lease row `FOR SHARE`) would judge and stamp leases
//! with an instant already past.
//!
//! Statements that lock several lease rows lock them in shard order, so two nodes claiming,
//! renewing or releasing overlapping shards at once queue behind each other instead of
//! deadlocking.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use iace_actors::ports::cluster::{check_node, check_shards, check_ttl};
use iace_actors::ports::{
    ClaimKind, Claimed, ClusterStore, Lease, Member, NodeInfo, StoreError, StoreResult,
};
use sqlx::postgres::types::PgInterval;
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};

use super::{unavailable, PgStore};

/// The members query: `$1` the liveness window, `$2` a node reported alive whatever its row
/// says (the node whose heartbeat this answers), or NULL. Node ids in byte order, as Rust
/// orders strings, whatever the database's collation.
const MEMBERS: &str = "SELECT node_id, url, started_at, heartbeat_at, draining, \
       floor(extract(epoch FROM t.now - heartbeat_at) * 1000)::bigint AS heartbeat_age_ms, \
       (node_id IS NOT DISTINCT FROM $2 \
         OR (left_at IS NULL AND heartbeat_at >= t.now - $1::interval)) AS alive \
     FROM cluster_node, (SELECT clock_timestamp() AS now) AS t \
     ORDER BY node_id COLLATE \"C\"";

/// A liveness window longer than any heartbeat's age can be: longer windows are cut to it, so
/// that `now - window` stays a valid timestamp (the answer is the same).
const WIDEST_WINDOW: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// `d` as a Postgres interval (microseconds; a shorter remainder is dropped).
fn interval(d: Duration) -> StoreResult<PgInterval> {
    let microseconds = i64::try_from(d.as_micros())
        .map_err(|_| StoreError::Corrupt(format!("duration {d:?} is out of range")))?;
    Ok(PgInterval {
        months: 0,
        days: 0,
        microseconds,
    })
}

/// Shards as the `smallint`s of the table, deduplicated and in order (callers checked the
/// range, so every one fits).
fn shard_ids(shards: impl IntoIterator<Item = u16>) -> Vec<i16> {
    let mut ids: Vec<i16> = shards
        .into_iter()
        .filter_map(|s| i16::try_from(s).ok())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn shard_from(id: i16) -> StoreResult<u16> {
    u16::try_from(id).map_err(|_| StoreError::Corrupt(format!("corrupt row: shard {id}")))
}

fn get<'r, T>(row: &'r PgRow, col: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(col)
        .map_err(|e| StoreError::Corrupt(format!("reading column {col}: {e}")))
}

fn member_from_row(row: &PgRow) -> StoreResult<Member> {
    Ok(Member {
        node_id: get(row, "node_id")?,
        url: get(row, "url")?,
        started_at: get(row, "started_at")?,
        heartbeat_at: get(row, "heartbeat_at")?,
        heartbeat_age_ms: get(row, "heartbeat_age_ms")?,
        draining: get(row, "draining")?,
        alive: get(row, "alive")?,
    })
}

async fn members_query(
    store: &PgStore,
    window: PgInterval,
    this: Option<&str>,
) -> StoreResult<Vec<Member>> {
    let rows = sqlx::query(MEMBERS)
        .bind(window)
        .bind(this)
        .fetch_all(&store.pool)
        .await
        .map_err(unavailable)?;
    rows.iter().map(member_from_row).collect()
}

/// Locks, in shard order, the rows of `held` that `node` still holds at the given epoch, and
/// returns their shards. A row another transaction has locked is judged again once that one
/// commits.
async fn lock_held(
    tx: &mut Transaction<'_, Postgres>,
    node: &str,
    held: &[(u16, i64)],
) -> StoreResult<Vec<i16>> {
    let (shards, epochs): (Vec<i16>, Vec<i64>) = held
        .iter()
        .filter_map(|(s, e)| Some((i16::try_from(*s).ok()?, *e)))
        .unzip();
    sqlx::query_scalar(
        "SELECT l.shard FROM shard_lease AS l \
         JOIN unnest($2::smallint[], $3::bigint[]) AS h(shard, epoch) \
           ON l.shard = h.shard AND l.epoch = h.epoch \
         WHERE l.owner = $1 \
         ORDER BY l.shard \
         FOR UPDATE OF l",
    )
    .bind(node)
    .bind(&shards)
    .bind(&epochs)
    .fetch_all(&mut **tx)
    .await
    .map_err(unavailable)
}

#[async_trait]
impl ClusterStore for PgStore {
    async fn register(&self, node: &NodeInfo) -> StoreResult<()> {
        node.check()?;
        sqlx::query(
            "INSERT INTO cluster_node \
               (node_id, url, incarnation, started_at, heartbeat_at, draining, left_at) \
             VALUES ($1, $2, $3, $4, clock_timestamp(), $5, NULL) \
             ON CONFLICT (node_id) DO UPDATE SET url = EXCLUDED.url, \
               incarnation = EXCLUDED.incarnation, started_at = EXCLUDED.started_at, \
               heartbeat_at = EXCLUDED.heartbeat_at, draining = EXCLUDED.draining, \
               left_at = NULL",
        )
        .bind(&node.node_id)
        .bind(&node.url)
        .bind(node.incarnation)
        .bind(node.started_at)
        .bind(node.draining)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn heartbeat(&self, node: &NodeInfo, alive_within: Duration) -> StoreResult<Vec<Member>> {
        node.check()?;
        let window = interval(alive_within.min(WIDEST_WINDOW))?;
        // One statement: refresh this process's row, or insert it when the row is gone; a
        // row of another incarnation is left alone and reported.
        let incarnation: Option<uuid::Uuid> = sqlx::query_scalar(
            "INSERT INTO cluster_node \
               (node_id, url, incarnation, started_at, heartbeat_at, draining, left_at) \
             VALUES ($1, $2, $3, $4, clock_timestamp(), $5, NULL) \
             ON CONFLICT (node_id) DO UPDATE SET url = EXCLUDED.url, \
               heartbeat_at = EXCLUDED.heartbeat_at, draining = EXCLUDED.draining, \
               left_at = NULL \
             WHERE cluster_node.incarnation = EXCLUDED.incarnation \
             RETURNING incarnation",
        )
        .bind(&node.node_id)
        .bind(&node.url)
        .bind(node.incarnation)
        .bind(node.started_at)
        .bind(node.draining)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        if incarnation.is_none() {
            return Err(StoreError::Stale);
        }
        let members = members_query(self, window, Some(&node.node_id)).await?;
        Ok(members.into_iter().filter(|m| m.alive).collect())
    }

    async fn live_call_counts(&self) -> StoreResult<Vec<(u16, i64)>> {
        let rows: Vec<(i16, i64)> = sqlx::query_as(
            "SELECT shard, count(*) FROM call \
             WHERE status IN ('pending', 'ringing', 'in_progress') \
             GROUP BY shard ORDER BY shard",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.into_iter()
            .map(|(shard, n)| Ok((shard_from(shard)?, n)))
            .collect()
    }

    async fn members(&self, alive_within: Duration) -> StoreResult<Vec<Member>> {
        members_query(self, interval(alive_within.min(WIDEST_WINDOW))?, None).await
    }

    async fn leases(&self) -> StoreResult<Vec<Lease>> {
        let rows = sqlx::query(
            "SELECT shard, owner, epoch, \
               ceil(extract(epoch FROM expires_at - t.now) * 1000)::bigint AS expires_in_ms \
             FROM shard_lease, (SELECT clock_timestamp() AS now) AS t \
             ORDER BY shard",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                Ok(Lease {
                    shard: shard_from(get(row, "shard")?)?,
                    owner: get(row, "owner")?,
                    epoch: get(row, "epoch")?,
                    expires_in_ms: get(row, "expires_in_ms")?,
                })
            })
            .collect()
    }

    async fn claim_shards(
        &self,
        node: &str,
        shards: &[u16],
        ttl: Duration,
    ) -> StoreResult<Vec<Claimed>> {
        check_node(node)?;
        check_shards(shards.iter().copied())?;
        check_ttl(ttl)?;
        let ttl = interval(ttl)?;
        let ids = shard_ids(shards.iter().copied());
        let mut tx = self.begin().await.map_err(unavailable)?;
        // The rows this node may take, locked: a row another claimer is taking right now is
        // judged again on its new owner and lease once that claimer commits.
        let free: Vec<(i16, Option<String>)> = sqlx::query_as(
            "SELECT shard, owner FROM shard_lease \
             WHERE shard = ANY($1) \
               AND (owner IS NULL OR owner = $2 OR expires_at <= clock_timestamp()) \
             ORDER BY shard \
             FOR UPDATE",
        )
        .bind(&ids)
        .bind(node)
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        let previous: BTreeMap<i16, Option<String>> = free.into_iter().collect();
        let locked: Vec<i16> = previous.keys().copied().collect();
        let taken: Vec<(i16, i64)> = sqlx::query_as(
            "UPDATE shard_lease SET owner = $1, epoch = epoch + 1, \
               acquired_at = clock_timestamp(), renewed_at = clock_timestamp(), \
               expires_at = clock_timestamp() + $3 \
             WHERE shard = ANY($2) \
             RETURNING shard, epoch",
        )
        .bind(node)
        .bind(&locked)
        .bind(ttl)
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        // Shards never leased get their first row. Only shards without a row are inserted:
        // a row another node holds is never touched, so this never waits on a transaction
        // that holds lease rows. A new row another claimer inserts first is a conflict: the
        // insert waits for that claimer's commit and leaves the row to it.
        let created: Vec<(i16, i64)> = sqlx::query_as(
            "INSERT INTO shard_lease (shard, owner, epoch, acquired_at, renewed_at, expires_at) \
             SELECT s, $1, 1, clock_timestamp(), clock_timestamp(), clock_timestamp() + $3 \
             FROM unnest($2::smallint[]) AS s \
             WHERE NOT EXISTS (SELECT 1 FROM shard_lease AS l WHERE l.shard = s) \
             ORDER BY s \
             ON CONFLICT (shard) DO NOTHING \
             RETURNING shard, epoch",
        )
        .bind(node)
        .bind(&ids)
        .bind(ttl)
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        // Commit: every shard of the answer changes owner and epoch together, or none does.
        tx.commit().await.map_err(unavailable)?;
        let mut claimed = Vec::with_capacity(taken.len() + created.len());
        for (shard, epoch) in taken {
            let previous_owner = previous.get(&shard).cloned().flatten();
            let kind = match previous_owner.as_deref() {
                None => ClaimKind::Free,
                Some(owner) if owner == node => ClaimKind::Own,
                Some(_) => ClaimKind::Lapsed,
            };
            claimed.push(Claimed {
                shard: shard_from(shard)?,
                epoch,
                previous_owner,
                kind,
            });
        }
        for (shard, epoch) in created {
            claimed.push(Claimed {
                shard: shard_from(shard)?,
                epoch,
                previous_owner: None,
                kind: ClaimKind::Free,
            });
        }
        claimed.sort_by_key(|c| c.shard);
        Ok(claimed)
    }

    async fn renew_shards(
        &self,
        node: &str,
        held: &[(u16, i64)],
        ttl: Duration,
    ) -> StoreResult<Vec<u16>> {
        check_node(node)?;
        check_shards(held.iter().map(|(s, _)| *s))?;
        check_ttl(ttl)?;
        let ttl = interval(ttl)?;
        let mut tx = self.begin().await.map_err(unavailable)?;
        let mine = lock_held(&mut tx, node, held).await?;
        let renewed: Vec<i16> = sqlx::query_scalar(
            "UPDATE shard_lease SET expires_at = clock_timestamp() + $2, \
               renewed_at = clock_timestamp() \
             WHERE shard = ANY($1) \
             RETURNING shard",
        )
        .bind(&mine)
        .bind(ttl)
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        // Commit: the renewed leases are the ones still held at their epochs under the lock.
        tx.commit().await.map_err(unavailable)?;
        let mut renewed = renewed
            .into_iter()
            .map(shard_from)
            .collect::<StoreResult<Vec<u16>>>()?;
        renewed.sort_unstable();
        Ok(renewed)
    }

    async fn release_shards(&self, node: &str, held: &[(u16, i64)]) -> StoreResult<()> {
        check_node(node)?;
        check_shards(held.iter().map(|(s, _)| *s))?;
        let mut tx = self.begin().await.map_err(unavailable)?;
        let mine = lock_held(&mut tx, node, held).await?;
        sqlx::query(
            "UPDATE shard_lease SET owner = NULL, expires_at = clock_timestamp() \
             WHERE shard = ANY($1)",
        )
        .bind(&mine)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        // Commit: only leases still held at their epochs under the lock are given up.
        tx.commit().await.map_err(unavailable)
    }

    async fn leave(&self, node: &str) -> StoreResult<()> {
        check_node(node)?;
        sqlx::query("UPDATE cluster_node SET left_at = clock_timestamp() WHERE node_id = $1")
            .bind(node)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
