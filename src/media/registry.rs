//! Live media streams by call id, and the handle through which the call's actor (or the voice
//! pipeline) pushes audio, marks and clears into a stream.
//!
//! Everything here is non-blocking: a sender is never made to wait for a slow peer. Outbound
//! items go through one bounded queue per stream; when it is full the item is refused and
//! counted. This module must not touch the socket; the stream's session task owns that.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::IntCounter;
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

/// Why a handle refused an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MediaSendError {
    /// The stream's outbound queue is full; the item was dropped (audio is counted as
    /// `dropped_outbound`).
    #[error("media stream outbound queue is full")]
    Full,
    /// The stream has ended.
    #[error("media stream has ended")]
    Closed,
}

/// One queued outbound item, tagged with the clear epoch it was queued in.
#[derive(Debug)]
pub(crate) struct Queued {
    /// Value of [`Shared::epoch`] when queued: items older than the latest `clear` are stale.
    pub epoch: u64,
    pub item: Outbound,
}

/// What a handle can queue. `clear` is not queued: it must overtake a full queue.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// μ-law bytes (8 kHz), any length; the session paces them in frames.
    Audio(Vec<u8>),
    /// A mark to send once the audio queued before it has been sent.
    Mark(String),
}

/// State shared between the handles of one stream and its session.
#[derive(Debug)]
pub(crate) struct Shared {
    pub stream_id: String,
    /// Bumped by every `clear()`. Queue items carry the epoch they were queued in, so the
    /// session can drop exactly what was queued before the clear (and keep what came after)
    /// although the clear signal travels outside the queue.
    pub epoch: AtomicU64,
    /// Wakes the session for a clear; a stored permit means a clear is never lost.
    pub clear: Notify,
    /// Ends the stream: this node no longer runs the call.
    pub release: Notify,
    /// Audio items refused because the queue was full, reported in the stream's stats.
    pub dropped: AtomicU64,
    pub dropped_metric: IntCounter,
}

/// Pushes audio into one live stream. Cheap to clone; every method returns at once.
#[derive(Debug, Clone)]
pub struct MediaHandle {
    tx: mpsc::Sender<Queued>,
    shared: Arc<Shared>,
}

impl MediaHandle {
    /// A handle and the receiving end its session drains.
    pub(crate) fn channel(
        stream_id: String,
        capacity: usize,
        dropped_metric: IntCounter,
    ) -> (Self, mpsc::Receiver<Queued>, Arc<Shared>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let shared = Arc::new(Shared {
            stream_id,
            epoch: AtomicU64::new(0),
            clear: Notify::new(),
            release: Notify::new(),
            dropped: AtomicU64::new(0),
            dropped_metric,
        });
        (
            MediaHandle {
                tx,
                shared: Arc::clone(&shared),
            },
            rx,
            shared,
        )
    }

    /// Telnyx's id of the stream this handle feeds.
    pub fn stream_id(&self) -> &str {
        &self.shared.stream_id
    }

    /// Queues μ-law 8 kHz audio (any length; it is paced out in `frame_ms` frames). On a PCMA
    /// stream it is transcoded; on other encodings it is dropped. If the queue is full the
    /// audio is dropped and counted, never waited for.
    pub fn send_audio(&self, mulaw: Vec<u8>) -> Result<(), MediaSendError> {
        if mulaw.is_empty() {
            return Ok(());
        }
        let result = self.push(Outbound::Audio(mulaw));
        if result == Err(MediaSendError::Full) {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            self.shared.dropped_metric.inc();
        }
        result
    }

    /// Queues a mark after the audio queued so far; Telnyx echoes it when that audio has
    /// played (counted as `marks_acked`). A mark is never dropped by `clear`: it is sent
    /// straight away instead, and Telnyx returns it at once.
    pub fn mark(&self, name: impl Into<String>) -> Result<(), MediaSendError> {
        self.push(Outbound::Mark(name.into()))
    }

    /// Ends the stream (its session closes the socket): this node no longer runs the call.
    pub fn release(&self) {
        self.shared.release.notify_one();
    }

    /// Stops playback: sends `clear` to Telnyx and drops the audio queued before this call.
    /// Audio queued after it plays normally. Works even when the queue is full.
    pub fn clear(&self) -> Result<(), MediaSendError> {
        if self.tx.is_closed() {
            return Err(MediaSendError::Closed);
        }
        // SeqCst pairs with the load in the session: anything queued after this bump carries
        // the new epoch and survives the clear.
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        self.shared.clear.notify_one();
        Ok(())
    }

    fn push(&self, item: Outbound) -> Result<(), MediaSendError> {
        let queued = Queued {
            epoch: self.shared.epoch.load(Ordering::SeqCst),
            item,
        };
        self.tx.try_send(queued).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => MediaSendError::Full,
            mpsc::error::TrySendError::Closed(_) => MediaSendError::Closed,
        })
    }

    fn same_stream(&self, other: &MediaHandle) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

/// Live streams by call id. Cheap to clone; all clones share one map.
#[derive(Debug, Clone, Default)]
pub struct MediaRegistry {
    /// std (not tokio) mutex: it is held only for a map operation, never across an await.
    streams: Arc<Mutex<HashMap<Uuid, MediaHandle>>>,
}

impl MediaRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The live stream of `call_id`, if any.
    pub fn handle(&self, call_id: Uuid) -> Option<MediaHandle> {
        self.lock().get(&call_id).cloned()
    }

    /// How many streams are live.
    pub fn live(&self) -> usize {
        self.lock().len()
    }

    /// Makes `handle` the stream of `call_id` until the returned guard drops. A newer stream
    /// for the same call replaces an older one (Telnyx allows one bidirectional stream per
    /// call, so the newest is the one it plays).
    pub(crate) fn register(&self, call_id: Uuid, handle: MediaHandle) -> Registration {
        self.lock().insert(call_id, handle.clone());
        Registration {
            registry: self.clone(),
            call_id,
            handle,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, MediaHandle>> {
        // The map stays consistent even if a holder panicked: every operation is one call.
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps a stream registered; dropping it deregisters, also when the session unwinds.
#[derive(Debug)]
pub(crate) struct Registration {
    registry: MediaRegistry,
    call_id: Uuid,
    handle: MediaHandle,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut streams = self.registry.lock();
        // Only our own entry: a newer stream of the same call may have replaced it.
        if streams
            .get(&self.call_id)
            .is_some_and(|h| h.same_stream(&self.handle))
        {
            streams.remove(&self.call_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> IntCounter {
        IntCounter::new("t", "t").unwrap()
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let (handle, mut rx, shared) = MediaHandle::channel("s".into(), 2, counter());
        assert_eq!(handle.send_audio(vec![1]), Ok(()));
        assert_eq!(handle.mark("m"), Ok(()));
        assert_eq!(handle.send_audio(vec![2]), Err(MediaSendError::Full));
        assert_eq!(handle.mark("n"), Err(MediaSendError::Full));
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(shared.dropped_metric.get(), 1);
        // A clear still goes through a full queue and bumps the epoch.
        assert_eq!(handle.clear(), Ok(()));
        assert_eq!(shared.epoch.load(Ordering::SeqCst), 1);
        assert_eq!(rx.try_recv().unwrap().epoch, 0);
        drop(rx);
        assert_eq!(handle.send_audio(vec![3]), Err(MediaSendError::Closed));
        assert_eq!(handle.clear(), Err(MediaSendError::Closed));
    }

    #[test]
    fn newer_stream_survives_older_deregistration() {
        let registry = MediaRegistry::new();
        let call = Uuid::new_v4();
        let (old, _rx1, _) = MediaHandle::channel("old".into(), 1, counter());
        let (new, _rx2, _) = MediaHandle::channel("new".into(), 1, counter());
        let old_reg = registry.register(call, old);
        let new_reg = registry.register(call, new);
        drop(old_reg);
        assert_eq!(registry.live(), 1);
        assert_eq!(registry.handle(call).unwrap().stream_id(), "new");
        drop(new_reg);
        assert_eq!(registry.live(), 0);
        assert!(registry.handle(call).is_none());
    }
}
