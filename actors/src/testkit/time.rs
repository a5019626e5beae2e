//! Time and ids for tests and simulations: [`TokioClock`] derives wall time from tokio's clock,
//! so `tokio::time::pause` drives it; [`SeqIds`] yields ids from a seed.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::ports::time::{Clock, IdGen};

/// Wall time = `epoch` + time elapsed on tokio's clock since construction.
pub struct TokioClock {
    epoch: DateTime<Utc>,
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads `epoch` now.
    pub fn new(epoch: DateTime<Utc>) -> Self {
        TokioClock {
            epoch,
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now() - self.origin;
        self.epoch + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::zero())
    }
}

/// Deterministic ids: `seed` in the high 64 bits, a counter in the low 64.
pub struct SeqIds {
    seed: u64,
    next: AtomicU64,
}

impl SeqIds {
    /// Ids derived from `seed`.
    pub fn new(seed: u64) -> Self {
        SeqIds {
            seed,
            next: AtomicU64::new(1),
        }
    }
}

impl IdGen for SeqIds {
    fn next_id(&self) -> Uuid {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Uuid::from_u128((u128::from(self.seed) << 64) | u128::from(n))
    }
}
