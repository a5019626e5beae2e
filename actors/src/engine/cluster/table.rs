//! The shards this node holds: each one's epoch (the fencing token of its calls' writes),
//! until when this node may act for it (by its own monotonic clock), whether it is being
//! handed over, and how many carrier commands for its calls are in flight.
//!
//! "May act" is stricter than "holds": the store fences writes by epoch, but a carrier
//! command or a media action cannot be fenced after the fact, so every one of them first asks
//! [`ShardTable::begin_effect`], which refuses once the lease could have lapsed or while the
//! shard is being handed over.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

use tokio::time::Instant;

use crate::machine::CallId;
use crate::ports::{shard_of, SHARD_COUNT};

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// 0: not held.
    epoch: i64,
    /// This node may act for the shard until then (its lease by the store's clock ends later).
    valid_until: Option<Instant>,
    /// Being handed over: no new actor, no new command.
    releasing: bool,
}

/// See the module docs.
pub(crate) struct ShardTable {
    slots: RwLock<Vec<Slot>>,
    inflight: Vec<AtomicUsize>,
    drained: tokio::sync::Notify,
}

impl Default for ShardTable {
    fn default() -> Self {
        ShardTable {
            slots: RwLock::new(vec![Slot::default(); usize::from(SHARD_COUNT)]),
            inflight: (0..SHARD_COUNT).map(|_| AtomicUsize::new(0)).collect(),
            drained: tokio::sync::Notify::new(),
        }
    }
}

/// Proof that a carrier command for a call may go out now; counted as in flight until dropped,
/// so a handover waits for it.
pub(crate) struct EffectPermit<'a> {
    table: &'a ShardTable,
    shard: usize,
}

impl Drop for EffectPermit<'_> {
    fn drop(&mut self) {
        if self.table.inflight[self.shard].fetch_sub(1, Ordering::SeqCst) == 1 {
            self.table.drained.notify_waiters();
        }
    }
}

impl ShardTable {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Slot>> {
        self.slots.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Slot>> {
        self.slots.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every shard this node holds (handing over or not, lapsed or not: until it is dropped).
    pub(crate) fn owned(&self) -> Vec<u16> {
        let slots = self.read();
        (0..SHARD_COUNT)
            .filter(|s| slots[usize::from(*s)].epoch > 0)
            .collect()
    }

    /// Every shard held, with its epoch.
    pub(crate) fn held(&self) -> Vec<(u16, i64)> {
        let slots = self.read();
        (0..SHARD_COUNT)
            .filter_map(|s| {
                let e = slots[usize::from(s)].epoch;
                (e > 0).then_some((s, e))
            })
            .collect()
    }

    /// Whether the shard is held (handing over or not).
    pub(crate) fn holds(&self, shard: u16) -> bool {
        self.read()[usize::from(shard)].epoch > 0
    }

    /// The epoch to fence writes of `call` with (0: not held, every write is refused).
    pub(crate) fn epoch_of(&self, call: CallId) -> i64 {
        self.read()[usize::from(shard_of(call))].epoch
    }

    /// Whether a new actor may start for `call` here: the shard is held, valid and not being
    /// handed over.
    pub(crate) fn may_run(&self, call: CallId) -> bool {
        self.may_act_at(shard_of(call), Instant::now())
    }

    fn may_act_at(&self, shard: u16, now: Instant) -> bool {
        let slot = self.read()[usize::from(shard)];
        slot.epoch > 0 && !slot.releasing && slot.valid_until.is_some_and(|v| now < v)
    }

    /// A permit for one carrier command (or media action) of `call`, or `None` when this node
    /// must not act for it now.
    pub(crate) fn begin_effect(&self, call: CallId) -> Option<EffectPermit<'_>> {
        let shard = shard_of(call);
        // Counted first, checked second: a handover that marks the shard after this check
        // sees the count and waits for the permit.
        self.inflight[usize::from(shard)].fetch_add(1, Ordering::SeqCst);
        let permit = EffectPermit {
            table: self,
            shard: usize::from(shard),
        };
        self.may_act_at(shard, Instant::now()).then_some(permit)
    }

    /// Records shards taken at `epoch`s, valid until `valid_until`.
    pub(crate) fn take(&self, shards: &[(u16, i64)], valid_until: Instant) {
        let mut slots = self.write();
        for (shard, epoch) in shards {
            slots[usize::from(*shard)] = Slot {
                epoch: *epoch,
                valid_until: Some(valid_until),
                releasing: false,
            };
        }
    }

    /// Extends the validity of held shards (after a renewal sent at `valid_until - ttl`).
    /// A shard whose validity already ended stays lapsed although the store renewed it:
    /// commands for its calls were refused meanwhile, and only a fresh start of those calls
    /// (the shard dropped and claimed again) makes sure nothing refused is forgotten.
    pub(crate) fn extend(&self, shards: &[u16], valid_until: Instant) {
        let now = Instant::now();
        let mut slots = self.write();
        for shard in shards {
            let slot = &mut slots[usize::from(*shard)];
            if slot.epoch > 0 && slot.valid_until.is_some_and(|v| now < v) {
                slot.valid_until = Some(valid_until.max(slot.valid_until.unwrap_or(valid_until)));
            }
        }
    }

    /// Marks shards as being handed over: no new actor, no new command from now on.
    pub(crate) fn mark_releasing(&self, shards: &[u16]) {
        let mut slots = self.write();
        for shard in shards {
            slots[usize::from(*shard)].releasing = true;
        }
    }

    /// Forgets shards: this node no longer holds them.
    pub(crate) fn drop_shards(&self, shards: &[u16]) {
        let mut slots = self.write();
        for shard in shards {
            slots[usize::from(*shard)] = Slot::default();
        }
    }

    /// Held shards whose validity ended by `now`.
    pub(crate) fn lapsed(&self, now: Instant) -> Vec<u16> {
        let slots = self.read();
        (0..SHARD_COUNT)
            .filter(|s| {
                let slot = slots[usize::from(*s)];
                slot.epoch > 0 && slot.valid_until.is_none_or(|v| v <= now)
            })
            .collect()
    }

    /// The earliest end of validity among held shards.
    pub(crate) fn next_lapse(&self) -> Option<Instant> {
        self.read()
            .iter()
            .filter(|s| s.epoch > 0)
            .filter_map(|s| s.valid_until)
            .min()
    }

    /// Shards held and valid now (what `iace_shards_owned` reports).
    pub(crate) fn valid_count(&self) -> usize {
        let now = Instant::now();
        self.read()
            .iter()
            .filter(|s| s.epoch > 0 && s.valid_until.is_some_and(|v| now < v))
            .count()
    }

    /// Waits until no command for the calls of `shards` is in flight.
    pub(crate) async fn effects_drained(&self, shards: &[u16]) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if shards
                .iter()
                .all(|s| self.inflight[usize::from(*s)].load(Ordering::SeqCst) == 0)
            {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn call_in(shard: u16) -> CallId {
        uuid::Uuid::from_u128(u128::from(shard) + 256 * 7)
    }

    #[tokio::test(start_paused = true)]
    async fn a_permit_needs_a_valid_lease_that_is_not_being_handed_over() {
        let t = ShardTable::default();
        let call = call_in(3);
        assert!(t.begin_effect(call).is_none(), "not held");
        t.take(&[(3, 7)], Instant::now() + Duration::from_secs(5));
        assert_eq!(t.epoch_of(call), 7);
        assert!(t.begin_effect(call).is_some());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(t.begin_effect(call).is_none(), "validity ended");
        assert_eq!(t.lapsed(Instant::now()), vec![3]);
        // A renewal that comes after the validity ended does not revive it: the shard is
        // dropped and claimed again, so that its calls start afresh.
        t.extend(&[3], Instant::now() + Duration::from_secs(5));
        assert!(
            t.begin_effect(call).is_none(),
            "a lapsed shard stays lapsed"
        );
        t.drop_shards(&[3]);
        t.take(&[(3, 8)], Instant::now() + Duration::from_secs(5));
        t.extend(&[3], Instant::now() + Duration::from_secs(9));
        assert!(t.begin_effect(call).is_some(), "claimed again and renewed");
        t.mark_releasing(&[3]);
        assert!(t.begin_effect(call).is_none(), "handing over");
        assert!(!t.may_run(call));
        t.drop_shards(&[3]);
        assert_eq!(t.epoch_of(call), 0);
        assert!(t.owned().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_handover_waits_for_commands_in_flight() {
        let t = std::sync::Arc::new(ShardTable::default());
        t.take(&[(3, 1), (4, 1)], Instant::now() + Duration::from_secs(60));
        let permit = t.begin_effect(call_in(3)).unwrap();
        let waiter = {
            let t = t.clone();
            tokio::spawn(async move { t.effects_drained(&[3, 4]).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished(), "a command of shard 3 is in flight");
        drop(permit);
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("drained once the permit is gone")
            .unwrap();
        // A refused permit is not left counted.
        t.mark_releasing(&[4]);
        assert!(t.begin_effect(call_in(4)).is_none());
        tokio::time::timeout(Duration::from_secs(10), t.effects_drained(&[4]))
            .await
            .unwrap();
    }
}
