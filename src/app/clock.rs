//! Time and ids in production: the wall clock and random (v4) ids behind the engine's
//! [`Clock`] and [`IdGen`] ports (tests and simulations use the engine's testkit instead).

use chrono::{DateTime, Utc};
use iace_actors::ports::{Clock, IdGen};
use uuid::Uuid;

/// Wall clock of production.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Random (v4) ids.
pub struct RandomIds;

impl IdGen for RandomIds {
    fn next_id(&self) -> Uuid {
        Uuid::new_v4()
    }
}
