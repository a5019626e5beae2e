//! Group commit: the journal appends of many calls in one transaction
//! ([`CallStore::append_batch`]), with a handful of set-based statements whatever the batch's
//! size, so a batch costs one flush to disk and a few round trips instead of one of each per
//! append.
//!
//! Each append is fenced as it would be alone: its shard lease must still carry the epoch the
//! call was written under, and the snapshot's version must be the one it replaces. An append
//! that fails either is left out of the transaction and answered [`StoreError::Stale`]; the
//! others commit. Anything the set-based statements cannot sort out on their own (a journal row
//! that already exists) rolls the batch back and writes its appends one by one, each with its
//! own answer.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use iace_actors::learning::LEARNING_SETTLE;
use iace_actors::machine::{CallId, CallStatus};
use iace_actors::ports::{
    shard_of, Append, CallStore, InboxInsert, InboxRow, StoreError, StoreResult,
};
use sqlx::{Postgres, Row, Transaction};

use super::{analysis, outbox, unavailable, PgStore};
use iace_actors::outbox::{call_events, WebhookEvent};

/// What the batch's transaction found: the calls whose appends were written.
enum Outcome {
    Written(HashSet<CallId>),
    /// A journal row of the batch already existed: the batch was rolled back.
    Conflict,
}

impl PgStore {
    /// See the module docs.
    pub(super) async fn write_batch(&self, batch: &[Append]) -> Vec<StoreResult<()>> {
        if batch.len() == 1 {
            let a = &batch[0];
            return vec![
                self.append(&a.call, a.expected_version, &a.entry, a.inbox_ref())
                    .await,
            ];
        }
        let _spans = crate::telemetry::context::journal_write_spans(
            batch.iter().map(|a| a.call.spec.id),
            batch.len(),
        );
        let distinct: HashSet<CallId> = batch.iter().map(|a| a.call.spec.id).collect();
        let valid: Vec<&Append> = batch
            .iter()
            .filter(|a| a.entry.seq == a.call.version && a.entry.call_id == a.call.spec.id)
            .collect();
        if distinct.len() != batch.len() {
            // The writer never batches two appends of one call; a caller that does gets them
            // written in order, one by one.
            return self.one_by_one(batch).await;
        }
        match self.transact(&valid).await {
            Ok(Outcome::Written(written)) => batch
                .iter()
                .map(|a| {
                    if written.contains(&a.call.spec.id) {
                        Ok(())
                    } else {
                        Err(StoreError::Stale)
                    }
                })
                .collect(),
            Ok(Outcome::Conflict) => self.one_by_one(batch).await,
            Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    async fn one_by_one(&self, batch: &[Append]) -> Vec<StoreResult<()>> {
        let mut results = Vec::with_capacity(batch.len());
        for a in batch {
            results.push(
                self.append(&a.call, a.expected_version, &a.entry, a.inbox_ref())
                    .await,
            );
        }
        results
    }

    async fn transact(&self, batch: &[&Append]) -> StoreResult<Outcome> {
        let mut tx = self.begin().await.map_err(unavailable)?;
        let fenced = current_epochs(&mut tx, batch).await?;
        let live: Vec<&Append> = batch
            .iter()
            .copied()
            .filter(|a| fenced.get(&shard(a)) == Some(&a.call.owner_epoch))
            .collect();
        let before = update_snapshots(&mut tx, &live).await?;
        let live: Vec<&Append> = live
            .into_iter()
            .filter(|a| before.contains_key(&a.call.spec.id))
            .collect();
        if insert_entries(&mut tx, &live).await? != live.len() as u64 {
            tx.rollback().await.map_err(unavailable)?;
            return Ok(Outcome::Conflict);
        }
        mark_inbox(&mut tx, &live).await?;
        queue_learning(&mut tx, &live).await?;
        let events: Vec<WebhookEvent> = live
            .iter()
            .flat_map(|a| call_events(before.get(&a.call.spec.id).copied(), &a.call, &a.entry))
            .collect();
        outbox::write_events(&mut tx, &events).await?;
        let ended: Vec<&iace_actors::machine::Call> = live
            .iter()
            .filter(|a| {
                a.call.status.is_terminal()
                    && before
                        .get(&a.call.spec.id)
                        .is_some_and(|b| !b.is_terminal())
            })
            .map(|a| &a.call)
            .collect();
        analysis::queue_analysis(&mut tx, &ended).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Outcome::Written(before.into_keys().collect()))
    }
}

fn shard(a: &Append) -> i16 {
    i16::try_from(shard_of(a.call.spec.id)).unwrap_or(i16::MAX)
}

/// The epoch of every shard the batch writes to, its lease row locked `FOR SHARE` until the
/// commit (a claim of the shard waits for it, as it waits for a single append).
async fn current_epochs(
    tx: &mut Transaction<'_, Postgres>,
    batch: &[&Append],
) -> StoreResult<HashMap<i16, i64>> {
    let mut shards: Vec<i16> = batch.iter().map(|a| shard(a)).collect();
    shards.sort_unstable();
    shards.dedup();
    let rows = sqlx::query(
        "SELECT shard, epoch FROM shard_lease WHERE shard = ANY($1) ORDER BY shard FOR SHARE",
    )
    .bind(&shards)
    .fetch_all(&mut **tx)
    .await
    .map_err(unavailable)?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<i16, _>("shard").map_err(unavailable)?,
                r.try_get::<i64, _>("epoch").map_err(unavailable)?,
            ))
        })
        .collect()
}

/// Compare-and-set of every snapshot on its expected version; the calls written, each with
/// its status before.
async fn update_snapshots(
    tx: &mut Transaction<'_, Postgres>,
    batch: &[&Append],
) -> StoreResult<HashMap<CallId, CallStatus>> {
    if batch.is_empty() {
        return Ok(HashMap::new());
    }
    let mut ids = Vec::with_capacity(batch.len());
    let mut expected = Vec::with_capacity(batch.len());
    let mut status = Vec::with_capacity(batch.len());
    let mut end_reason: Vec<Option<&str>> = Vec::with_capacity(batch.len());
    let mut carrier: Vec<Option<&str>> = Vec::with_capacity(batch.len());
    let mut version = Vec::with_capacity(batch.len());
    let mut epoch = Vec::with_capacity(batch.len());
    let mut deadline_at: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(batch.len());
    let mut deadline_kind: Vec<Option<&str>> = Vec::with_capacity(batch.len());
    let mut updated = Vec::with_capacity(batch.len());
    let mut ringing = Vec::with_capacity(batch.len());
    let mut answered = Vec::with_capacity(batch.len());
    let mut ended = Vec::with_capacity(batch.len());
    let mut release = Vec::with_capacity(batch.len());
    let mut stray = Vec::with_capacity(batch.len());
    for a in batch {
        let c = &a.call;
        ids.push(c.spec.id);
        expected.push(a.expected_version);
        status.push(c.status.as_str());
        end_reason.push(c.end_reason.map(|r| r.as_str()));
        carrier.push(c.carrier_call_id.as_deref());
        version.push(c.version);
        epoch.push(c.owner_epoch);
        deadline_at.push(c.deadline.map(|d| d.at));
        deadline_kind.push(c.deadline.map(|d| d.kind.as_str()));
        updated.push(c.updated_at);
        ringing.push(c.ringing_at);
        answered.push(c.answered_at);
        ended.push(c.ended_at);
        release.push(c.release_pending);
        stray.push(
            serde_json::to_value(&c.stray_legs)
                .map_err(|e| StoreError::Unavailable(format!("encoding stray legs: {e}")))?,
        );
    }
    let rows = sqlx::query(
        "UPDATE call SET status = v.status, end_reason = v.end_reason, \
           carrier_call_id = v.carrier_call_id, version = v.version, owner_epoch = v.owner_epoch, \
           next_deadline_at = v.deadline_at, next_deadline_kind = v.deadline_kind, \
           updated_at = v.updated_at, ringing_at = v.ringing_at, answered_at = v.answered_at, \
           ended_at = v.ended_at, release_pending = v.release_pending, stray_legs = v.stray_legs \
         FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::bigint[], \
                     $7::bigint[], $8::timestamptz[], $9::text[], $10::timestamptz[], \
                     $11::timestamptz[], $12::timestamptz[], $13::timestamptz[], $14::boolean[], \
                     $15::jsonb[]) \
           AS v(id, expected, status, end_reason, carrier_call_id, version, owner_epoch, \
                deadline_at, deadline_kind, updated_at, ringing_at, answered_at, ended_at, \
                release_pending, stray_legs) \
           , call old \
         WHERE call.id = v.id AND call.version = v.expected AND old.id = call.id \
         RETURNING call.id, old.status",
    )
    .bind(&ids)
    .bind(&expected)
    .bind(&status)
    .bind(&end_reason)
    .bind(&carrier)
    .bind(&version)
    .bind(&epoch)
    .bind(&deadline_at)
    .bind(&deadline_kind)
    .bind(&updated)
    .bind(&ringing)
    .bind(&answered)
    .bind(&ended)
    .bind(&release)
    .bind(&stray)
    .fetch_all(&mut **tx)
    .await
    .map_err(unavailable)?;
    rows.iter()
        .map(|r| {
            let id = r.try_get::<CallId, _>("id").map_err(unavailable)?;
            let status: String = r.try_get("status").map_err(unavailable)?;
            let status = CallStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("call status {status}")))?;
            Ok((id, status))
        })
        .collect()
}

/// Inserts the journal entries; the number inserted (fewer than given: a row already existed).
async fn insert_entries(tx: &mut Transaction<'_, Postgres>, batch: &[&Append]) -> StoreResult<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    let mut org = Vec::with_capacity(batch.len());
    let mut call = Vec::with_capacity(batch.len());
    let mut seq = Vec::with_capacity(batch.len());
    let mut kind = Vec::with_capacity(batch.len());
    let mut at = Vec::with_capacity(batch.len());
    let mut data = Vec::with_capacity(batch.len());
    for a in batch {
        org.push(a.call.spec.organization_id);
        call.push(a.entry.call_id);
        seq.push(a.entry.seq);
        kind.push(a.entry.event.kind());
        at.push(a.entry.at);
        data.push(
            serde_json::to_value(&a.entry.event)
                .map_err(|e| StoreError::Unavailable(format!("encoding an event: {e}")))?,
        );
    }
    let done = sqlx::query(
        "INSERT INTO call_event (organization_id, call_id, seq, kind, at, data) \
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], \
                              $5::timestamptz[], $6::jsonb[]) \
         ON CONFLICT (call_id, seq) DO NOTHING",
    )
    .bind(&org)
    .bind(&call)
    .bind(&seq)
    .bind(&kind)
    .bind(&at)
    .bind(&data)
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?;
    Ok(done.rows_affected())
}

/// Marks the inbox rows the entries consumed processed.
async fn mark_inbox(tx: &mut Transaction<'_, Postgres>, batch: &[&Append]) -> StoreResult<()> {
    let (vendors, events): (Vec<&str>, Vec<&str>) =
        batch.iter().filter_map(|a| a.inbox_ref()).unzip();
    if vendors.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE inbox SET processed_at = clock_timestamp() \
         FROM unnest($1::text[], $2::text[]) AS v(vendor, event_id) \
         WHERE inbox.vendor = v.vendor AND inbox.event_id = v.event_id \
           AND inbox.processed_at IS NULL",
    )
    .bind(&vendors)
    .bind(&events)
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// Queues learning for the calls the batch completed (as a single append does).
async fn queue_learning(tx: &mut Transaction<'_, Postgres>, batch: &[&Append]) -> StoreResult<()> {
    let completed: Vec<&&Append> = batch
        .iter()
        .filter(|a| a.call.status == CallStatus::Completed)
        .collect();
    if completed.is_empty() {
        return Ok(());
    }
    let ids: Vec<CallId> = completed.iter().map(|a| a.call.spec.id).collect();
    let orgs: Vec<uuid::Uuid> = completed
        .iter()
        .map(|a| a.call.spec.organization_id)
        .collect();
    let at: Vec<DateTime<Utc>> = completed.iter().map(|a| a.call.updated_at).collect();
    sqlx::query(
        "INSERT INTO learning_queue (call_id, organization_id, enqueued_at, next_attempt_at) \
         SELECT id, org, at, at + make_interval(secs => $4) \
         FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[]) AS v(id, org, at) \
         ON CONFLICT (call_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&orgs)
    .bind(&at)
    .bind(LEARNING_SETTLE.as_secs_f64())
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?;
    Ok(())
}

impl PgStore {
    /// Stores many vendor events in one transaction (see [`CallStore::inbox_record_batch`]):
    /// one insert for the rows that name a call (stored only if the call exists), one for
    /// those that do not yet, then one look-up telling the duplicates from the unknown calls.
    pub(super) async fn record_batch(&self, rows: &[InboxRow]) -> Vec<StoreResult<InboxInsert>> {
        if rows.len() == 1 {
            return vec![self.inbox_record(&rows[0]).await];
        }
        let keys: HashSet<(&str, &str)> = rows
            .iter()
            .map(|r| (r.vendor.as_str(), r.event_id.as_str()))
            .collect();
        if keys.len() != rows.len() {
            let mut results = Vec::with_capacity(rows.len());
            for row in rows {
                results.push(self.inbox_record(row).await);
            }
            return results;
        }
        match self.record_rows(rows).await {
            Ok(results) => results.into_iter().map(Ok).collect(),
            Err(e) => rows.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    async fn record_rows(&self, rows: &[InboxRow]) -> StoreResult<Vec<InboxInsert>> {
        let mut vendor = Vec::with_capacity(rows.len());
        let mut event_id = Vec::with_capacity(rows.len());
        let mut call: Vec<Option<CallId>> = Vec::with_capacity(rows.len());
        let mut occurred = Vec::with_capacity(rows.len());
        let mut payload: Vec<Option<serde_json::Value>> = Vec::with_capacity(rows.len());
        let mut event_type = Vec::with_capacity(rows.len());
        let mut leg: Vec<Option<&str>> = Vec::with_capacity(rows.len());
        let mut raw: Vec<Option<&serde_json::Value>> = Vec::with_capacity(rows.len());
        for r in rows {
            vendor.push(r.vendor.as_str());
            event_id.push(r.event_id.as_str());
            call.push(r.call_id);
            occurred.push(r.occurred_at);
            payload.push(
                r.event
                    .as_ref()
                    .map(serde_json::to_value)
                    .transpose()
                    .map_err(|e| StoreError::Unavailable(format!("encoding inbox payload: {e}")))?,
            );
            event_type.push(r.event_type.as_str());
            leg.push(r.carrier_leg.as_deref());
            raw.push(r.raw.as_ref());
        }
        let mut tx = self.begin().await.map_err(unavailable)?;
        // A row without a fact is stored processed: nothing will ever act on it. A row that
        // names a call is stored only when the call exists.
        let stored = sqlx::query(
            "WITH v AS (SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], \
                          $4::timestamptz[], $5::jsonb[], $6::text[], $7::text[], $8::jsonb[]) \
                        AS v(vendor, event_id, call_id, occurred_at, payload, event_type, \
                             carrier_leg, raw)) \
             INSERT INTO inbox (vendor, event_id, organization_id, call_id, occurred_at, \
                payload, event_type, carrier_leg, raw, processed_at) \
             SELECT v.vendor, v.event_id, c.organization_id, v.call_id, v.occurred_at, \
                v.payload, v.event_type, v.carrier_leg, v.raw, \
                CASE WHEN v.payload IS NULL THEN clock_timestamp() END \
             FROM v LEFT JOIN call c ON c.id = v.call_id \
             WHERE v.call_id IS NULL OR c.id IS NOT NULL \
             ON CONFLICT (vendor, event_id) DO NOTHING \
             RETURNING vendor, event_id",
        )
        .bind(&vendor)
        .bind(&event_id)
        .bind(&call)
        .bind(&occurred)
        .bind(&payload)
        .bind(&event_type)
        .bind(&leg)
        .bind(&raw)
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        let mut new = HashSet::with_capacity(stored.len());
        for r in &stored {
            new.insert((
                r.try_get::<String, _>("vendor").map_err(unavailable)?,
                r.try_get::<String, _>("event_id").map_err(unavailable)?,
            ));
        }
        let missing: Vec<usize> = (0..rows.len())
            .filter(|&i| !new.contains(&(vendor[i].to_owned(), event_id[i].to_owned())))
            .collect();
        let mut seen = HashSet::new();
        if !missing.is_empty() {
            let mv: Vec<&str> = missing.iter().map(|&i| vendor[i]).collect();
            let me: Vec<&str> = missing.iter().map(|&i| event_id[i]).collect();
            let found = sqlx::query(
                "SELECT i.vendor, i.event_id FROM inbox i \
                 JOIN unnest($1::text[], $2::text[]) AS v(vendor, event_id) \
                   ON i.vendor = v.vendor AND i.event_id = v.event_id",
            )
            .bind(&mv)
            .bind(&me)
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
            for r in &found {
                seen.insert((
                    r.try_get::<String, _>("vendor").map_err(unavailable)?,
                    r.try_get::<String, _>("event_id").map_err(unavailable)?,
                ));
            }
        }
        tx.commit().await.map_err(unavailable)?;
        Ok((0..rows.len())
            .map(|i| {
                let key = (vendor[i].to_owned(), event_id[i].to_owned());
                if new.contains(&key) {
                    InboxInsert::New
                } else if seen.contains(&key) {
                    InboxInsert::Duplicate
                } else {
                    InboxInsert::UnknownCall
                }
            })
            .collect())
    }
}
