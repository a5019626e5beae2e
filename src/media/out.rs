//! The voice pipeline's outbound media port ([`MediaOut`]) over the stream registry: audio,
//! marks and clears addressed by call id go to that call's live stream.
//!
//! It only looks a handle up and queues into it, so every method returns at once. It must not
//! hold on to a handle: a reconnect replaces the call's stream, and the next item must go to
//! the new one.

use iace_actors::machine::CallId;
use iace_actors::ports::voice::{MediaError, MediaOut};

use super::registry::{MediaHandle, MediaRegistry, MediaSendError};

/// [`MediaOut`] backed by the [`MediaRegistry`]: each item goes to the call's live stream at
/// the time of the call. A call without a live stream, or whose stream has just ended, is
/// [`MediaError::NoStream`]; a full outbound queue is [`MediaError::Full`] (the item is
/// dropped, and audio is counted as `dropped_outbound`).
#[derive(Debug, Clone)]
pub struct RegistryMediaOut(pub MediaRegistry);

impl RegistryMediaOut {
    fn handle(&self, call_id: CallId) -> Result<MediaHandle, MediaError> {
        self.0.handle(call_id).ok_or(MediaError::NoStream)
    }
}

/// A stream that ended between the lookup and the send is, for the caller, no stream.
fn media_error(error: MediaSendError) -> MediaError {
    match error {
        MediaSendError::Full => MediaError::Full,
        MediaSendError::Closed => MediaError::NoStream,
    }
}

impl MediaOut for RegistryMediaOut {
    fn send_audio(&self, call_id: CallId, mulaw: Vec<u8>) -> Result<(), MediaError> {
        self.handle(call_id)?.send_audio(mulaw).map_err(media_error)
    }

    fn mark(&self, call_id: CallId, name: String) -> Result<(), MediaError> {
        self.handle(call_id)?.mark(name).map_err(media_error)
    }

    fn clear(&self, call_id: CallId) -> Result<(), MediaError> {
        self.handle(call_id)?.clear().map_err(media_error)
    }

    fn release(&self, call_id: CallId) {
        if let Some(handle) = self.0.handle(call_id) {
            handle.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus::IntCounter;
    use uuid::Uuid;

    use super::*;
    use crate::media::registry::Outbound;

    fn counter() -> IntCounter {
        IntCounter::new("t", "t").unwrap()
    }

    #[test]
    fn a_call_without_a_stream_has_no_stream() {
        let out = RegistryMediaOut(MediaRegistry::new());
        let call = Uuid::new_v4();
        assert_eq!(out.send_audio(call, vec![1]), Err(MediaError::NoStream));
        assert_eq!(out.mark(call, "m".into()), Err(MediaError::NoStream));
        assert_eq!(out.clear(call), Err(MediaError::NoStream));
    }

    #[test]
    fn items_reach_the_calls_stream_and_a_full_queue_is_full() {
        let registry = MediaRegistry::new();
        let out = RegistryMediaOut(registry.clone());
        let (call, other) = (Uuid::new_v4(), Uuid::new_v4());
        let (handle, mut rx, shared) = MediaHandle::channel("s".into(), 2, counter());
        let registration = registry.register(call, handle);

        assert_eq!(out.send_audio(call, vec![7; 160]), Ok(()));
        assert_eq!(out.mark(call, "reply-1".into()), Ok(()));
        assert_eq!(out.send_audio(call, vec![8; 160]), Err(MediaError::Full));
        assert_eq!(out.mark(call, "reply-2".into()), Err(MediaError::Full));
        assert_eq!(shared.dropped.load(std::sync::atomic::Ordering::Relaxed), 1);
        // A clear overtakes a full queue.
        assert_eq!(out.clear(call), Ok(()));
        assert_eq!(shared.epoch.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Another call's items do not land here.
        assert_eq!(out.send_audio(other, vec![9]), Err(MediaError::NoStream));

        let first = rx.try_recv().unwrap();
        assert!(matches!(first.item, Outbound::Audio(ref b) if *b == vec![7; 160]));
        let second = rx.try_recv().unwrap();
        assert!(matches!(second.item, Outbound::Mark(ref n) if n == "reply-1"));
        assert!(rx.try_recv().is_err());

        // The session ended but has not deregistered yet: no stream all the same.
        drop(rx);
        assert_eq!(out.send_audio(call, vec![1]), Err(MediaError::NoStream));
        assert_eq!(out.mark(call, "m".into()), Err(MediaError::NoStream));
        assert_eq!(out.clear(call), Err(MediaError::NoStream));
        drop(registration);
        assert_eq!(out.send_audio(call, vec![1]), Err(MediaError::NoStream));
    }

    #[test]
    fn a_reconnected_call_gets_the_new_stream() {
        let registry = MediaRegistry::new();
        let out = RegistryMediaOut(registry.clone());
        let call = Uuid::new_v4();
        let (old, mut old_rx, _) = MediaHandle::channel("old".into(), 4, counter());
        let (new, mut new_rx, _) = MediaHandle::channel("new".into(), 4, counter());
        let _old = registry.register(call, old);
        assert_eq!(out.mark(call, "a".into()), Ok(()));
        let _new = registry.register(call, new);
        assert_eq!(out.mark(call, "b".into()), Ok(()));
        assert!(matches!(old_rx.try_recv().unwrap().item, Outbound::Mark(ref n) if n == "a"));
        assert!(old_rx.try_recv().is_err());
        assert!(matches!(new_rx.try_recv().unwrap().item, Outbound::Mark(ref n) if n == "b"));
    }
}
