//! [`CallStore`]: call snapshots, the journal, the inbox and shard leases.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use iace_actors::learning::LEARNING_SETTLE;
use iace_actors::machine::{Call, CallId, CallStatus};
use iace_actors::ports::{
    shard_of, Append, CallStore, IdempotencyKey, InboxInsert, InboxItem, InboxRow, InsertOutcome,
    JournalEntry, StoreError, StoreResult,
};
use sqlx::{Postgres, Row, Transaction};

use super::rows::{call_from_row, CALL_COLUMNS};
use super::{analysis, is_unique_violation, outbox, unavailable, PgStore};
use iace_actors::outbox::call_events;

const LIVE: &str = "('pending', 'ringing', 'in_progress')";

fn shard(call: &Call) -> i16 {
    // SHARD_COUNT is 256, so every shard fits in a smallint.
    i16::try_from(shard_of(call.spec.id)).unwrap_or(i16::MAX)
}

/// Locks the shard lease row `FOR SHARE` and checks it still carries `epoch`.
async fn check_epoch(
    tx: &mut Transaction<'_, Postgres>,
    shard: i16,
    epoch: i64,
) -> StoreResult<()> {
    let current: Option<i64> =
        sqlx::query_scalar("SELECT epoch FROM shard_lease WHERE shard = $1 FOR SHARE")
            .bind(shard)
            .fetch_optional(&mut **tx)
            .await
            .map_err(unavailable)?;
    if current == Some(epoch) {
        Ok(())
    } else {
        Err(StoreError::Stale)
    }
}

async fn find_by_key(
    tx: &mut Transaction<'_, Postgres>,
    call: &Call,
    key: &IdempotencyKey,
) -> StoreResult<Option<InsertOutcome>> {
    let row = sqlx::query(&format!(
        "SELECT {CALL_COLUMNS}, request_hash FROM call \
         WHERE organization_id = $1 AND idempotency_key = $2"
    ))
    .bind(call.spec.organization_id)
    .bind(&key.key)
    .fetch_optional(&mut **tx)
    .await
    .map_err(unavailable)?;
    let Some(row) = row else { return Ok(None) };
    let hash: Option<String> = row.try_get("request_hash").map_err(unavailable)?;
    Ok(Some(if hash.as_deref() == Some(key.fingerprint.as_str()) {
        InsertOutcome::Existing(Box::new(call_from_row(&row)?))
    } else {
        InsertOutcome::IdempotencyMismatch
    }))
}

fn deadline_parts(call: &Call) -> (Option<chrono::DateTime<chrono::Utc>>, Option<&'static str>) {
    match call.deadline {
        Some(d) => (Some(d.at), Some(d.kind.as_str())),
        None => (None, None),
    }
}

async fn insert_entry(
    tx: &mut Transaction<'_, Postgres>,
    call: &Call,
    entry: &JournalEntry,
) -> Result<(), sqlx::Error> {
    let data = serde_json::to_value(&entry.event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "INSERT INTO call_event (organization_id, call_id, seq, kind, at, data) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(call.spec.organization_id)
    .bind(entry.call_id)
    .bind(entry.seq)
    .bind(entry.event.kind())
    .bind(entry.at)
    .bind(data)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[async_trait]
impl CallStore for PgStore {
    async fn owns_shard(&self, shard: u16, epoch: i64) -> StoreResult<bool> {
        let current: Option<i64> =
            sqlx::query_scalar("SELECT epoch FROM shard_lease WHERE shard = $1")
                .bind(i16::try_from(shard).unwrap_or(i16::MAX))
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(current == Some(epoch))
    }

    async fn acquire_shards(&self, node: &str, shards: &[u16]) -> StoreResult<Vec<i64>> {
        let ids: Vec<i16> = shards
            .iter()
            .map(|s| i16::try_from(*s).unwrap_or(i16::MAX))
            .collect();
        // A forced take, for tools and tests: whoever holds the shards, they are this node's
        // for an hour (the TTL of a forced take; the engine claims with `ClusterStore`).
        // Rows are taken in shard order, the order every lease statement locks them in.
        let rows: Vec<(i16, i64)> = sqlx::query_as(
            "INSERT INTO shard_lease (shard, owner, epoch, expires_at) \
             SELECT s, $1, 1, clock_timestamp() + interval '1 hour' \
             FROM unnest($2::smallint[]) AS s ORDER BY s \
             ON CONFLICT (shard) DO UPDATE SET epoch = shard_lease.epoch + 1, \
               owner = EXCLUDED.owner, acquired_at = clock_timestamp(), \
               renewed_at = clock_timestamp(), expires_at = EXCLUDED.expires_at \
             RETURNING shard, epoch",
        )
        .bind(node)
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let by_shard: std::collections::HashMap<i16, i64> = rows.into_iter().collect();
        ids.iter()
            .map(|s| {
                by_shard
                    .get(s)
                    .copied()
                    .ok_or_else(|| StoreError::Unavailable(format!("shard {s} not leased")))
            })
            .collect()
    }

    async fn insert_call(
        &self,
        call: &Call,
        created: &JournalEntry,
        idempotency: Option<&IdempotencyKey>,
        max_live: Option<u32>,
    ) -> StoreResult<InsertOutcome> {
        let org = call.spec.organization_id;
        // Limited creates of one organization wait for their turn without a connection.
        let _turn = match max_live {
            Some(_) => Some(self.turns.turn(org).await),
            None => None,
        };
        let mut tx = self.begin().await.map_err(unavailable)?;
        if max_live.is_some() {
            // Limited inserts of one organization take turns (held to commit), so the count
            // below and the insert are one step on every node. Taken before anything else.
            sqlx::query(
                "SELECT pg_advisory_xact_lock(hashtextextended('iace:live:' || $1::text, 0))",
            )
            .bind(org)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        check_epoch(&mut tx, shard(call), call.owner_epoch).await?;
        if let Some(key) = idempotency {
            if let Some(found) = find_by_key(&mut tx, call, key).await? {
                return Ok(found);
            }
        }
        let agent_ok: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM agent WHERE id = $1 AND organization_id = $2)",
        )
        .bind(call.spec.agent_id)
        .bind(org)
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?;
        if !agent_ok {
            return Ok(InsertOutcome::UnknownAgent);
        }
        if let Some(customer) = call.spec.customer_id {
            let ok: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM customer WHERE id = $1 AND organization_id = $2)",
            )
            .bind(customer)
            .bind(org)
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
            if !ok {
                return Ok(InsertOutcome::UnknownCustomer);
            }
        }
        if let Some(max) = max_live {
            let live: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM call WHERE organization_id = $1 \
                   AND status IN ('pending', 'ringing', 'in_progress')",
            )
            .bind(org)
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
            let live = u64::try_from(live).unwrap_or(0);
            if live >= u64::from(max) {
                return Ok(InsertOutcome::LiveLimit { live });
            }
        }
        let (deadline_at, deadline_kind) = deadline_parts(call);
        let inserted = sqlx::query(
            "INSERT INTO call (id, organization_id, shard, direction, from_number, to_number, \
               agent_id, customer_id, metadata, status, end_reason, carrier_call_id, version, \
               owner_epoch, next_deadline_at, next_deadline_kind, ring_timeout_secs, \
               max_duration_secs, created_at, updated_at, ringing_at, answered_at, ended_at, \
               idempotency_key, request_hash, release_pending) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
               $18, $19, $20, $21, $22, $23, $24, $25, $26) \
             ON CONFLICT (organization_id, idempotency_key) WHERE idempotency_key IS NOT NULL \
             DO NOTHING",
        )
        .bind(call.spec.id)
        .bind(org)
        .bind(shard(call))
        .bind(call.spec.direction.as_str())
        .bind(call.spec.from.as_str())
        .bind(call.spec.to.as_str())
        .bind(call.spec.agent_id)
        .bind(call.spec.customer_id)
        .bind(&call.spec.metadata)
        .bind(call.status.as_str())
        .bind(call.end_reason.map(|r| r.as_str()))
        .bind(&call.carrier_call_id)
        .bind(call.version)
        .bind(call.owner_epoch)
        .bind(deadline_at)
        .bind(deadline_kind)
        .bind(i32::try_from(call.spec.ring_timeout_secs).unwrap_or(i32::MAX))
        .bind(i32::try_from(call.spec.max_duration_secs).unwrap_or(i32::MAX))
        .bind(call.created_at)
        .bind(call.updated_at)
        .bind(call.ringing_at)
        .bind(call.answered_at)
        .bind(call.ended_at)
        .bind(idempotency.map(|k| k.key.as_str()))
        .bind(idempotency.map(|k| k.fingerprint.as_str()))
        .bind(call.release_pending)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Stale
            } else {
                unavailable(e)
            }
        })?;
        if inserted.rows_affected() == 0 {
            // A concurrent request with the same key committed first: answer with its call.
            if let Some(key) = idempotency {
                if let Some(found) = find_by_key(&mut tx, call, key).await? {
                    return Ok(found);
                }
            }
            return Err(StoreError::Unavailable(
                "idempotent insert conflicted but no call was found".into(),
            ));
        }
        insert_entry(&mut tx, call, created)
            .await
            .map_err(unavailable)?;
        outbox::write_events(&mut tx, &call_events(None, call, created)).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(InsertOutcome::Created)
    }

    async fn append(
        &self,
        call: &Call,
        expected_version: i64,
        entry: &JournalEntry,
        inbox: Option<(&str, &str)>,
    ) -> StoreResult<()> {
        if entry.seq != call.version || entry.call_id != call.spec.id {
            return Err(StoreError::Stale);
        }
        let _span =
            crate::telemetry::context::journal_write_spans(std::iter::once(call.spec.id), 1);
        let mut tx = self.begin().await.map_err(unavailable)?;
        check_epoch(&mut tx, shard(call), call.owner_epoch).await?;
        let (deadline_at, deadline_kind) = deadline_parts(call);
        // `old` is the row as the statement found it: the status before, for the events.
        let before: Option<String> = sqlx::query_scalar(
            "UPDATE call SET status = $3, end_reason = $4, carrier_call_id = $5, version = $6, \
               owner_epoch = $7, next_deadline_at = $8, next_deadline_kind = $9, \
               updated_at = $10, ringing_at = $11, answered_at = $12, ended_at = $13, \
               release_pending = $14, stray_legs = $15 \
             FROM call old WHERE call.id = $1 AND call.version = $2 AND old.id = call.id \
             RETURNING old.status",
        )
        .bind(call.spec.id)
        .bind(expected_version)
        .bind(call.status.as_str())
        .bind(call.end_reason.map(|r| r.as_str()))
        .bind(&call.carrier_call_id)
        .bind(call.version)
        .bind(call.owner_epoch)
        .bind(deadline_at)
        .bind(deadline_kind)
        .bind(call.updated_at)
        .bind(call.ringing_at)
        .bind(call.answered_at)
        .bind(call.ended_at)
        .bind(call.release_pending)
        .bind(
            serde_json::to_value(&call.stray_legs)
                .map_err(|e| StoreError::Unavailable(format!("encoding stray legs: {e}")))?,
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        let Some(before) = before else {
            return Err(StoreError::Stale);
        };
        let before = CallStatus::parse(&before)
            .ok_or_else(|| StoreError::Corrupt(format!("call status {before}")))?;
        insert_entry(&mut tx, call, entry).await.map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Stale
            } else {
                unavailable(e)
            }
        })?;
        if let Some((vendor, event_id)) = inbox {
            sqlx::query(
                "UPDATE inbox SET processed_at = clock_timestamp() \
                 WHERE vendor = $1 AND event_id = $2 AND processed_at IS NULL",
            )
            .bind(vendor)
            .bind(event_id)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        outbox::write_events(&mut tx, &call_events(Some(before), call, entry)).await?;
        if call.status.is_terminal() && !before.is_terminal() {
            analysis::queue_analysis(&mut tx, &[call]).await?;
        }
        if call.status == CallStatus::Completed {
            // Learning runs on every completed call: queued with the transition itself, so
            // no crash can lose it. It waits a little for the conversation's last records.
            sqlx::query(
                "INSERT INTO learning_queue (call_id, organization_id, enqueued_at, next_attempt_at) \
                 VALUES ($1, $2, $3, $3 + make_interval(secs => $4)) ON CONFLICT (call_id) DO NOTHING",
            )
            .bind(call.spec.id)
            .bind(call.spec.organization_id)
            .bind(call.updated_at)
            .bind(LEARNING_SETTLE.as_secs_f64())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)
    }

    async fn append_batch(&self, batch: &[Append]) -> Vec<StoreResult<()>> {
        self.write_batch(batch).await
    }

    async fn inbox_record_batch(&self, rows: &[InboxRow]) -> Vec<StoreResult<InboxInsert>> {
        self.record_batch(rows).await
    }

    async fn load_call(&self, id: CallId) -> StoreResult<Option<Call>> {
        let row = sqlx::query(&format!("SELECT {CALL_COLUMNS} FROM call WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(call_from_row).transpose()
    }

    async fn live_calls(&self, shards: &[u16]) -> StoreResult<Vec<CallId>> {
        let ids: Vec<i16> = shards
            .iter()
            .map(|s| i16::try_from(*s).unwrap_or(i16::MAX))
            .collect();
        sqlx::query_scalar(&format!(
            "SELECT id FROM call WHERE shard = ANY($1) \
               AND (status IN {LIVE} OR release_pending \
                    OR stray_legs @> '[{{\"ended\": false}}]'::jsonb) \
             ORDER BY created_at"
        ))
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)
    }

    async fn inbox_insert(&self, item: &InboxItem) -> StoreResult<bool> {
        let payload = serde_json::to_value(&item.event)
            .map_err(|e| StoreError::Unavailable(format!("encoding inbox payload: {e}")))?;
        let done = sqlx::query(
            "INSERT INTO inbox (vendor, event_id, organization_id, call_id, occurred_at, payload, carrier_leg) \
             SELECT $1, $2, organization_id, id, $4, $5, $6 FROM call WHERE id = $3 \
             ON CONFLICT (vendor, event_id) DO NOTHING",
        )
        .bind(&item.vendor)
        .bind(&item.event_id)
        .bind(item.call_id)
        .bind(item.occurred_at)
        .bind(payload)
        .bind(&item.carrier_leg)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn inbox_mark_processed(&self, vendor: &str, event_id: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE inbox SET processed_at = clock_timestamp() \
             WHERE vendor = $1 AND event_id = $2 AND processed_at IS NULL",
        )
        .bind(vendor)
        .bind(event_id)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn inbox_pending(&self, limit: i64) -> StoreResult<Vec<InboxItem>> {
        let rows = sqlx::query(
            "SELECT vendor, event_id, call_id, carrier_leg, occurred_at, payload FROM inbox \
             WHERE processed_at IS NULL AND call_id IS NOT NULL AND payload IS NOT NULL \
             ORDER BY received_at LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(inbox_item_from_row).collect()
    }

    async fn inbox_record(&self, row: &InboxRow) -> StoreResult<InboxInsert> {
        let payload = row
            .event
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| StoreError::Unavailable(format!("encoding inbox payload: {e}")))?;
        // A row without a fact is stored processed: nothing will ever act on it.
        let inserted = match row.call_id {
            Some(call_id) => sqlx::query(
                "INSERT INTO inbox (vendor, event_id, organization_id, call_id, occurred_at, \
                   payload, event_type, carrier_leg, raw, processed_at) \
                 SELECT $1, $2, organization_id, id, $4, $5, $6, $7, $8, \
                   CASE WHEN $5::jsonb IS NULL THEN clock_timestamp() END \
                 FROM call WHERE id = $3 \
                 ON CONFLICT (vendor, event_id) DO NOTHING",
            )
            .bind(&row.vendor)
            .bind(&row.event_id)
            .bind(call_id),
            None => sqlx::query(
                "INSERT INTO inbox (vendor, event_id, organization_id, call_id, occurred_at, \
                   payload, event_type, carrier_leg, raw, processed_at) \
                 VALUES ($1, $2, NULL, $3::uuid, $4, $5, $6, $7, $8, \
                   CASE WHEN $5::jsonb IS NULL THEN clock_timestamp() END) \
                 ON CONFLICT (vendor, event_id) DO NOTHING",
            )
            .bind(&row.vendor)
            .bind(&row.event_id)
            .bind(Option::<CallId>::None),
        }
        .bind(row.occurred_at)
        .bind(payload)
        .bind(&row.event_type)
        .bind(&row.carrier_leg)
        .bind(&row.raw)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        if inserted.rows_affected() == 1 {
            return Ok(InboxInsert::New);
        }
        let seen: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM inbox WHERE vendor = $1 AND event_id = $2)",
        )
        .bind(&row.vendor)
        .bind(&row.event_id)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(if seen {
            InboxInsert::Duplicate
        } else {
            InboxInsert::UnknownCall
        })
    }

    async fn inbox_adopt(
        &self,
        vendor: &str,
        carrier_leg: &str,
        call_id: CallId,
    ) -> StoreResult<Vec<InboxItem>> {
        // One statement: a row is adopted by exactly one call, even with concurrent adopters.
        let rows = sqlx::query(
            "UPDATE inbox i SET call_id = c.id, organization_id = c.organization_id \
             FROM call c \
             WHERE c.id = $3 AND i.vendor = $1 AND i.carrier_leg = $2 \
               AND i.call_id IS NULL AND i.processed_at IS NULL AND i.payload IS NOT NULL \
             RETURNING i.vendor, i.event_id, i.call_id, i.carrier_leg, i.occurred_at, i.payload, i.received_at",
        )
        .bind(vendor)
        .bind(carrier_leg)
        .bind(call_id)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let mut items = rows
            .iter()
            .map(|row| {
                let received: DateTime<Utc> = row.try_get("received_at").map_err(unavailable)?;
                Ok((received, inbox_item_from_row(row)?))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        items.sort_by_key(|(received, _)| *received);
        Ok(items.into_iter().map(|(_, item)| item).collect())
    }

    async fn call_for_leg(&self, carrier_leg: &str) -> StoreResult<Option<CallId>> {
        sqlx::query_scalar(
            "SELECT id FROM call WHERE carrier_call_id = $1 ORDER BY created_at DESC LIMIT 1",
        )
        .bind(carrier_leg)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// An applicable inbox row (it has its call and its fact).
fn inbox_item_from_row(row: &sqlx::postgres::PgRow) -> StoreResult<InboxItem> {
    let payload: serde_json::Value = row.try_get("payload").map_err(unavailable)?;
    Ok(InboxItem {
        vendor: row.try_get("vendor").map_err(unavailable)?,
        event_id: row.try_get("event_id").map_err(unavailable)?,
        call_id: row.try_get("call_id").map_err(unavailable)?,
        carrier_leg: row.try_get("carrier_leg").map_err(unavailable)?,
        occurred_at: row.try_get("occurred_at").map_err(unavailable)?,
        event: serde_json::from_value(payload)
            .map_err(|e| StoreError::Corrupt(format!("corrupt inbox payload: {e}")))?,
    })
}
