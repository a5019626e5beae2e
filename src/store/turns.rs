//! Creates under a plan limit take turns per organization in this process before they take a
//! connection.
//!
//! The count of an organization's live calls and the insert of a limited create are one step
//! on every node: the transaction takes an advisory lock of the organization first and holds
//! it to commit. A transaction waiting for that lock holds a pool connection and does
//! nothing with it, so a burst of creates for one organization (a campaign starting) could
//! hold every connection of the pool waiting on each other while journal writes, webhooks and
//! reads of every other call queue behind them. Here the creates of one organization wait for
//! their turn in memory first: at most one connection per organization per node waits on the
//! lock (one per node across the cluster), and the rest of the pool stays free.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Mutex as TurnLock, OwnedMutexGuard};
use uuid::Uuid;

/// Per-organization turns (see the module docs).
#[derive(Default)]
pub(super) struct OrgTurns {
    locks: Mutex<HashMap<Uuid, Weak<TurnLock<()>>>>,
    waiting: Arc<AtomicUsize>,
}

/// Entries of organizations nobody waits for are dropped once the map has this many.
const PRUNE_ABOVE: usize = 1024;

impl OrgTurns {
    /// Waits for `org`'s turn; the turn lasts as long as the guard.
    pub(super) async fn turn(&self, org: Uuid) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            match locks.get(&org).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    if locks.len() >= PRUNE_ABOVE {
                        locks.retain(|_, l| l.strong_count() > 0);
                    }
                    let lock = Arc::new(TurnLock::new(()));
                    locks.insert(org, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        let _waiting = Waiting::new(self.waiting.clone());
        lock.lock_owned().await
    }

    /// Creates waiting for their organization's turn.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

/// Counts a waiter for as long as it waits (also when its future is dropped).
struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Waiting(count)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_turn_per_organization_at_a_time_and_others_go_on() {
        let turns = Arc::new(OrgTurns::default());
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let first = turns.turn(a).await;
        let waiter = {
            let turns = turns.clone();
            tokio::spawn(async move { drop(turns.turn(a).await) })
        };
        while turns.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        // Another organization is not held up.
        drop(turns.turn(b).await);
        assert_eq!(turns.waiting(), 1);
        drop(first);
        waiter.await.unwrap();
        assert_eq!(turns.waiting(), 0);
    }

    #[tokio::test]
    async fn entries_of_finished_organizations_are_pruned() {
        let turns = OrgTurns::default();
        for n in 0..(PRUNE_ABOVE as u128 + 10) {
            drop(turns.turn(Uuid::from_u128(n)).await);
        }
        assert!(turns.locks.lock().unwrap().len() <= PRUNE_ABOVE);
    }
}
