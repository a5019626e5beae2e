//! The depth and age of the durable work queues (learning, post-call analysis, webhook
//! deliveries), sampled for the metrics: `iace_queue_depth{queue}` (jobs waiting, due or not)
//! and `iace_queue_oldest_due_seconds{queue}` (how long the oldest due job has waited; growing
//! means the workers fall behind or cannot reach their vendor).

use std::time::Duration;

use prometheus::{IntGaugeVec, Opts, Registry};
use sqlx::Row;

use super::PgStore;

/// The queues and how each is read: (name, the query of its depth and oldest due wait).
const QUEUES: [(&str, &str); 3] = [
    (
        "learning",
        "SELECT count(*) AS depth, extract(epoch FROM clock_timestamp() - min(next_attempt_at) \
           FILTER (WHERE next_attempt_at <= clock_timestamp()))::float8 AS oldest \
         FROM learning_queue WHERE done_at IS NULL",
    ),
    (
        "analysis",
        "SELECT count(*) AS depth, extract(epoch FROM clock_timestamp() - min(next_attempt_at) \
           FILTER (WHERE next_attempt_at <= clock_timestamp()))::float8 AS oldest \
         FROM analysis_queue",
    ),
    (
        "webhooks",
        "SELECT count(*) AS depth, extract(epoch FROM clock_timestamp() - min(next_attempt_at) \
           FILTER (WHERE next_attempt_at <= clock_timestamp()))::float8 AS oldest \
         FROM webhook_delivery WHERE status = 'pending'",
    ),
];

impl PgStore {
    /// Registers the queue gauges and samples them every `every` until the process ends.
    pub fn watch_queues(
        &self,
        registry: &Registry,
        every: Duration,
    ) -> prometheus::Result<tokio::task::JoinHandle<()>> {
        let depth = IntGaugeVec::new(
            Opts::new("iace_queue_depth", "Jobs waiting in a durable work queue"),
            &["queue"],
        )?;
        let oldest = IntGaugeVec::new(
            Opts::new(
                "iace_queue_oldest_due_seconds",
                "How long the oldest due job of a durable work queue has waited",
            ),
            &["queue"],
        )?;
        registry.register(Box::new(depth.clone()))?;
        registry.register(Box::new(oldest.clone()))?;
        let pool = self.pool.clone();
        Ok(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                for (name, query) in QUEUES {
                    let Ok(row) = sqlx::query(query).fetch_one(&pool).await else {
                        continue;
                    };
                    let d: i64 = row.try_get("depth").unwrap_or(0);
                    let o: Option<f64> = row.try_get("oldest").unwrap_or(None);
                    depth.with_label_values(&[name]).set(d);
                    oldest
                        .with_label_values(&[name])
                        .set(o.map_or(0, |s| s.max(0.0) as i64));
                }
            }
        }))
    }
}
