//! The node's capacity: how many calls it runs at once before it refuses new ones.
//!
//! A node past what its cores can carry does not fail one call, it slows every live one (the
//! replies of all conversations queue behind each other). So a new call is refused early, before
//! anything is read or stored, when the call actors running here plus the creates already
//! admitted and not yet running reach [`EngineConfig::max_live_calls`](super::EngineConfig):
//! outbound creates get [`EngineError::AtCapacity`](super::EngineError) (503 with
//! `Retry-After`), inbound offers are rejected at the carrier (the caller hears busy), and
//! `/ready` may report the node unready so that a load balancer sends new work elsewhere.
//!
//! Calls that are already live are never refused: a call re-activated after a crash, taken
//! over from another node or resumed by a delivery always runs, even past the limit.
//!
//! The count is exact across concurrent creates: an admission holds its slot from the check
//! until the supervisor has started the call's actor (the slot then moves into the running
//! count) or the create failed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Conversing calls per core of the default capacity. Measured (docs/benchmarks.md,
/// "Capacity"): a conversing call costs the engine 0.16-0.18% of a core at 500 and 1,000
/// calls, so a core carries ~550 at full load; 400 keeps the engine near three quarters of
/// its cores, leaving room for bursts (every caller's turn ending within the same second)
/// without the replies of all calls queueing.
pub const MAX_LIVE_CALLS_PER_CORE: usize = 400;

/// The default of `max_live_calls`: [`MAX_LIVE_CALLS_PER_CORE`] times the cores this process
/// may use.
pub fn default_max_live_calls() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    MAX_LIVE_CALLS_PER_CORE * cores
}

/// `Retry-After` of a create refused at capacity: calls last minutes, and a few seconds lets
/// a load balancer's retry land on another node first.
pub const AT_CAPACITY_RETRY_AFTER_SECS: u64 = 5;

/// The node's admission counter.
#[derive(Debug)]
pub(crate) struct Capacity {
    /// Most calls at once; 0 is no limit.
    max: usize,
    /// Call actors running on this node (set by the supervisor).
    running: AtomicUsize,
    /// Creates admitted whose actor has not started yet.
    admitting: AtomicUsize,
}

/// What the node carries now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Call actors running on this node.
    pub running: usize,
    /// Creates admitted and not yet running.
    pub admitting: usize,
    /// The limit; 0 is none.
    pub max: usize,
}

impl Load {
    /// No new call fits.
    pub fn full(&self) -> bool {
        self.max > 0 && self.running + self.admitting >= self.max
    }
}

/// A slot taken by a create: released when dropped (the create failed or was answered from
/// an earlier one), or after the supervisor started the call's actor.
#[derive(Debug)]
pub(crate) struct Admission {
    capacity: Arc<Capacity>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.capacity.admitting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Capacity {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Capacity {
            max,
            running: AtomicUsize::new(0),
            admitting: AtomicUsize::new(0),
        })
    }

    /// Takes a slot for a new call, or tells what the node carries when none is left.
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Admission, Load> {
        let mut admitting = self.admitting.load(Ordering::Acquire);
        loop {
            let load = Load {
                running: self.running.load(Ordering::Acquire),
                admitting,
                max: self.max,
            };
            if load.full() {
                return Err(load);
            }
            match self.admitting.compare_exchange_weak(
                admitting,
                admitting + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Ok(Admission {
                        capacity: self.clone(),
                    })
                }
                Err(now) => admitting = now,
            }
        }
    }

    /// The supervisor's count of running call actors.
    pub(crate) fn set_running(&self, n: usize) {
        self.running.store(n, Ordering::Release);
    }

    /// What the node carries now.
    pub(crate) fn load(&self) -> Load {
        Load {
            running: self.running.load(Ordering::Acquire),
            admitting: self.admitting.load(Ordering::Acquire),
            max: self.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_until_the_limit_and_come_back_when_dropped() {
        let capacity = Capacity::new(3);
        capacity.set_running(1);
        let a = capacity.admit().expect("first slot");
        let b = capacity.admit().expect("second slot");
        let refused = capacity.admit().expect_err("the node is full");
        assert_eq!(
            refused,
            Load {
                running: 1,
                admitting: 2,
                max: 3
            }
        );
        assert!(refused.full());
        drop(a);
        let c = capacity
            .admit()
            .expect("a failed create gives its slot back");
        // The supervisor started b's actor: the slot moves to the running count.
        capacity.set_running(2);
        drop(b);
        assert!(capacity.load().full(), "2 running + 1 admitting");
        drop(c);
        assert_eq!(capacity.load().admitting, 0);
        assert!(!capacity.load().full());
    }

    #[test]
    fn no_limit_admits_everything() {
        let capacity = Capacity::new(0);
        capacity.set_running(100_000);
        let slots: Vec<_> = (0..100).map(|_| capacity.admit().unwrap()).collect();
        assert_eq!(capacity.load().admitting, 100);
        drop(slots);
        assert_eq!(capacity.load().admitting, 0);
    }

    #[test]
    fn concurrent_admissions_never_pass_the_limit() {
        let capacity = Capacity::new(50);
        let taken = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..100 {
                        if let Ok(slot) = capacity.admit() {
                            taken.lock().unwrap().push(slot);
                        }
                    }
                });
            }
        });
        assert_eq!(taken.lock().unwrap().len(), 50);
        assert_eq!(capacity.load().admitting, 50);
    }
}
