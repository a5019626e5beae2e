//! Postgres persistence: the production store ports ([`CallStore`], [`QueryStore`],
//! [`ClusterStore`]), with sqlx runtime-checked queries and the migrations in `migrations/`.
//!
//! Call writes are fenced twice: compare-and-set on the snapshot's `version`, and the shard
//! lease row read `FOR SHARE` in the same transaction must still carry the writer's epoch. A
//! lease acquisition (`UPDATE ... epoch + 1`) therefore waits for in-flight writes of the old
//! owner and every later write of that owner fails with [`StoreError::Stale`]. Leases carry a
//! TTL judged by the database's clock (`cluster`).
//!
//! [`ClusterStore`]: iace_actors::ports::ClusterStore
//! [`CallStore`]: iace_actors::ports::CallStore
//! [`QueryStore`]: iace_actors::ports::QueryStore

mod accounts;
mod analysis;
mod batch;
mod calls;
mod catalog;
mod cluster;
mod learning;
mod outbox;
mod pool;
mod queues;
mod rows;
mod turns;

use iace_actors::ports::StoreError;
use sqlx::postgres::PgPool;

pub use pool::{connect_sized, PoolSizing};

/// Postgres-backed store.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Limited creates of one organization take turns here before taking a connection.
    turns: std::sync::Arc<turns::OrgTurns>,
    metrics: pool::PoolMetrics,
}

impl PgStore {
    /// Wraps a pool (migrations already applied).
    pub fn new(pool: PgPool) -> Self {
        PgStore {
            pool,
            turns: Default::default(),
            metrics: pool::PoolMetrics::new(),
        }
    }

    /// Registers the pool's metrics (`iace_db_*`) and samples the pool once a second.
    pub fn register_metrics(
        &self,
        registry: &prometheus::Registry,
    ) -> prometheus::Result<tokio::task::JoinHandle<()>> {
        self.metrics.register(registry)?;
        Ok(self.metrics.watch(self.pool.clone()))
    }

    /// A transaction, its wait for a connection recorded.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        let since = std::time::Instant::now();
        let tx = self.pool.begin().await;
        self.metrics.waited(since);
        tx
    }

    /// Creates under a plan limit waiting for their organization's turn, without a
    /// connection (see `turns`).
    pub fn creates_waiting_their_turn(&self) -> usize {
        self.turns.waiting()
    }

    /// The pool (for administrative commands and tests).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Opens a pool of the default size ([`PoolSizing`]). Fails within a few seconds when the
/// server is unreachable.
pub async fn connect(url: &str) -> Result<PgPool, sqlx::Error> {
    connect_sized(url, PoolSizing::default()).await
}

/// Applies the migrations in `migrations/` (idempotent).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}

/// Maps a driver error to the engine's store error.
/// A sqlx error in the engine's terms: a value that does not decode is corrupt data (500,
/// retrying will not help); anything else is the database being unavailable (503).
fn unavailable(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// `true` when `e` is a unique-constraint violation (SQLSTATE 23505).
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

#[cfg(test)]
mod tests {
    /// Postgres keeps a jsonb number as an exact decimal and prints it in full: what a client
    /// stored (any finite double) must read back as the same number, also at the ends of the
    /// range (a fast, inexact parse of the long decimal overflowed at `f64::MAX` and failed
    /// every read of the row).
    #[test]
    fn jsonb_numbers_at_the_ends_of_the_range_read_back() {
        let max = format!("17976931348623157{}", "0".repeat(292));
        let tiny = format!("0.{}5", "0".repeat(323));
        for (text, expected) in [
            (max.clone(), f64::MAX),
            (format!("-{max}"), f64::MIN),
            (tiny, 5e-324),
        ] {
            let v: serde_json::Value = serde_json::from_str(&format!("{{\"n\": {text}}}"))
                .unwrap_or_else(|e| panic!("{e}: {text}"));
            assert_eq!(v["n"].as_f64(), Some(expected), "{text}");
        }
    }
}
