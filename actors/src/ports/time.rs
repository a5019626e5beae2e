//! Time and ids: the engine reads the wall clock and draws ids only through these ports, so a
//! simulation on paused tokio time replays identically.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Wall-clock source. The engine never calls `Utc::now()` itself.
pub trait Clock: Send + Sync + 'static {
    /// Current time.
    fn now(&self) -> DateTime<Utc>;
}

/// Id source. The engine never draws randomness itself.
pub trait IdGen: Send + Sync + 'static {
    /// A fresh, unique id.
    fn next_id(&self) -> Uuid;
}
