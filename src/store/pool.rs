//! The connection pool: its size and statement cache, and what it reports.
//!
//! Every statement of the store waits for a connection first. The pool is sized to the work
//! of one node (the journal writers, the query pool, webhooks, the learning worker) and to
//! what the database carries: more connections than the server has cores to run them only
//! queue the work inside Postgres instead of here. How long work waits for a connection is
//! reported, so an undersized pool shows before it hurts:
//! - `iace_db_acquire_seconds{kind="transaction"}`: every transaction's wait for its
//!   connection and its `BEGIN` (journal batches, inbox batches, call inserts, lease
//!   renewals...);
//! - `iace_db_acquire_seconds{kind="probe"}`: once a second, how long any statement would
//!   wait right now (the reads that take no transaction wait the same);
//! - `iace_db_pool_connections{state="in_use|idle"}` and `iace_db_pool_max_connections`.

use std::str::FromStr;
use std::time::{Duration, Instant};

use prometheus::{HistogramOpts, HistogramVec, IntGauge, IntGaugeVec, Opts, Registry};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// Size and statement cache of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSizing {
    /// Most connections open at once.
    pub max_connections: u32,
    /// Prepared statements kept per connection (the store has about 140 distinct ones; a
    /// cache smaller than the set in use prepares some of them again and again).
    pub statement_cache: usize,
    /// Longest wait for a connection before a statement fails as unavailable.
    pub acquire_timeout: Duration,
}

impl Default for PoolSizing {
    fn default() -> Self {
        PoolSizing {
            max_connections: 20,
            statement_cache: 256,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// Opens a pool sized by `sizing`. Fails within a few seconds when the server is unreachable.
pub async fn connect_sized(url: &str, sizing: PoolSizing) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.statement_cache_capacity(sizing.statement_cache);
    PgPoolOptions::new()
        .max_connections(sizing.max_connections)
        .min_connections(1)
        .acquire_timeout(sizing.acquire_timeout)
        .connect_with(options)
        .await
}

/// What the pool reports (see the module docs). Created unregistered with the store;
/// [`super::PgStore::register_metrics`] puts it in the process's registry.
#[derive(Clone)]
pub(super) struct PoolMetrics {
    acquire: HistogramVec,
    connections: IntGaugeVec,
    max: IntGauge,
}

impl PoolMetrics {
    pub(super) fn new() -> Self {
        let buckets = vec![
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
            0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        PoolMetrics {
            acquire: HistogramVec::new(
                HistogramOpts::new(
                    "iace_db_acquire_seconds",
                    "Waits for a database connection: every transaction's (with its BEGIN), and a probe's once a second",
                )
                .buckets(buckets),
                &["kind"],
            )
            .expect("valid histogram"),
            connections: IntGaugeVec::new(
                Opts::new(
                    "iace_db_pool_connections",
                    "Connections of the pool, by state (in_use, idle)",
                ),
                &["state"],
            )
            .expect("valid gauge"),
            max: IntGauge::new(
                "iace_db_pool_max_connections",
                "Most connections the pool opens",
            )
            .expect("valid gauge"),
        }
    }

    pub(super) fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.acquire.clone()))?;
        registry.register(Box::new(self.connections.clone()))?;
        registry.register(Box::new(self.max.clone()))
    }

    /// Records a transaction's wait for its connection.
    pub(super) fn waited(&self, since: Instant) {
        self.acquire
            .with_label_values(&["transaction"])
            .observe(since.elapsed().as_secs_f64());
    }

    /// Samples the pool once a second until the pool is closed.
    pub(super) fn watch(&self, pool: PgPool) -> tokio::task::JoinHandle<()> {
        let metrics = self.clone();
        tokio::spawn(async move {
            metrics
                .max
                .set(i64::from(pool.options().get_max_connections()));
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !pool.is_closed() {
                every.tick().await;
                let size = i64::from(pool.size());
                let idle = i64::try_from(pool.num_idle()).unwrap_or(0);
                metrics
                    .connections
                    .with_label_values(&["in_use"])
                    .set((size - idle).max(0));
                metrics.connections.with_label_values(&["idle"]).set(idle);
                let since = Instant::now();
                if pool.acquire().await.is_ok() {
                    metrics
                        .acquire
                        .with_label_values(&["probe"])
                        .observe(since.elapsed().as_secs_f64());
                }
            }
        })
    }
}
