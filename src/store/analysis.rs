//! [`AnalysisStore`]: the post-call analysis queue and results. Jobs are written by the call
//! writes that end answered calls ([`queue_analysis`], in their transaction).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use iace_actors::learning::LEARNING_SETTLE;
use iace_actors::machine::{Call, CallId, OrganizationId};
use iace_actors::outbox::WebhookEvent;
use iace_actors::ports::analysis::{AnalysisJob, AnalysisStatus, AnalysisStore, CallAnalysis};
use iace_actors::ports::{StoreError, StoreResult};
use sqlx::{Postgres, Row, Transaction};

use super::{outbox, unavailable, PgStore};

/// Queues the analysis of the calls `ended` (each answered and just ended) whose agent asks
/// for one, in the caller's transaction. It waits as long as learning does for the
/// conversation's last records.
pub(super) async fn queue_analysis(
    tx: &mut Transaction<'_, Postgres>,
    ended: &[&Call],
) -> StoreResult<()> {
    let ended: Vec<&&Call> = ended.iter().filter(|c| c.answered_at.is_some()).collect();
    if ended.is_empty() {
        return Ok(());
    }
    let ids: Vec<CallId> = ended.iter().map(|c| c.spec.id).collect();
    let agents: Vec<uuid::Uuid> = ended.iter().map(|c| c.spec.agent_id).collect();
    let at: Vec<DateTime<Utc>> = ended.iter().map(|c| c.updated_at).collect();
    sqlx::query(
        "INSERT INTO analysis_queue (call_id, organization_id, enqueued_at, next_attempt_at) \
         SELECT v.id, a.organization_id, v.at, v.at + make_interval(secs => $4) \
         FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[]) AS v(id, agent, at) \
         JOIN agent a ON a.id = v.agent AND a.persona_config ? 'analysis' \
           AND jsonb_typeof(a.persona_config -> 'analysis') = 'object' \
         ON CONFLICT (call_id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&agents)
    .bind(&at)
    .bind(LEARNING_SETTLE.as_secs_f64())
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?;
    Ok(())
}

fn analysis_from_row(r: &sqlx::postgres::PgRow) -> StoreResult<CallAnalysis> {
    let status: String = r.try_get("status").map_err(unavailable)?;
    Ok(CallAnalysis {
        call_id: r.try_get("call_id").map_err(unavailable)?,
        organization_id: r.try_get("organization_id").map_err(unavailable)?,
        status: AnalysisStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("analysis status {status}")))?,
        summary: r.try_get("summary").map_err(unavailable)?,
        data: r.try_get("data").map_err(unavailable)?,
        success: r.try_get("success").map_err(unavailable)?,
        success_reason: r.try_get("success_reason").map_err(unavailable)?,
        error: r.try_get("error").map_err(unavailable)?,
        model: r.try_get("model").map_err(unavailable)?,
        evaluated_at: r.try_get("evaluated_at").map_err(unavailable)?,
    })
}

#[async_trait]
impl AnalysisStore for PgStore {
    async fn claim_analysis(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<AnalysisJob>> {
        let rows = sqlx::query(
            "WITH due AS ( \
               SELECT call_id FROM analysis_queue WHERE next_attempt_at <= $1 \
                ORDER BY next_attempt_at, call_id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             UPDATE analysis_queue q SET next_attempt_at = $1 + make_interval(secs => $2) \
               FROM due WHERE q.call_id = due.call_id \
             RETURNING q.call_id, q.organization_id, q.attempts",
        )
        .bind(now)
        .bind(lease.as_secs_f64())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(AnalysisJob {
                    call_id: r.try_get("call_id").map_err(unavailable)?,
                    organization_id: r.try_get("organization_id").map_err(unavailable)?,
                    attempts: u32::try_from(r.try_get::<i32, _>("attempts").map_err(unavailable)?)
                        .unwrap_or(0),
                })
            })
            .collect()
    }

    async fn finish_analysis(
        &self,
        a: &CallAnalysis,
        events: &[WebhookEvent],
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await.map_err(unavailable)?;
        let stored = sqlx::query(
            "INSERT INTO call_analysis (call_id, organization_id, status, summary, data, \
               success, success_reason, error, model, evaluated_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 \
             WHERE EXISTS (SELECT 1 FROM call WHERE id = $1) \
             ON CONFLICT (call_id) DO NOTHING",
        )
        .bind(a.call_id)
        .bind(a.organization_id)
        .bind(a.status.as_str())
        .bind(&a.summary)
        .bind(&a.data)
        .bind(a.success)
        .bind(&a.success_reason)
        .bind(&a.error)
        .bind(&a.model)
        .bind(a.evaluated_at)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected()
            == 1;
        sqlx::query("DELETE FROM analysis_queue WHERE call_id = $1")
            .bind(a.call_id)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        if stored {
            outbox::write_events(&mut tx, events).await?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(stored)
    }

    async fn drop_analysis(&self, call: CallId) -> StoreResult<()> {
        sqlx::query("DELETE FROM analysis_queue WHERE call_id = $1")
            .bind(call)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn retry_analysis(
        &self,
        call: CallId,
        at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE analysis_queue SET attempts = attempts + 1, next_attempt_at = $2, \
               last_error = $3 WHERE call_id = $1",
        )
        .bind(call)
        .bind(at)
        .bind(error)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn call_analysis(
        &self,
        org: OrganizationId,
        call: CallId,
    ) -> StoreResult<Option<CallAnalysis>> {
        let row =
            sqlx::query("SELECT * FROM call_analysis WHERE call_id = $1 AND organization_id = $2")
                .bind(call)
                .bind(org)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        row.as_ref().map(analysis_from_row).transpose()
    }
}
