//! In-memory outbound media: [`MemoryMedia`] records, plays out and echoes marks.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::shared::{audio_duration, lock, BYTES_PER_MS};
use crate::machine::CallId;
use crate::ports::voice::{MediaError, MediaOut};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaItem {
    /// Agent audio.
    Audio {
        /// Its length.
        bytes: usize,
        /// When it was queued.
        at: Instant,
    },
    /// A mark after the audio queued so far.
    Mark {
        /// Its name.
        name: String,
        /// When it was queued.
        at: Instant,
    },
    /// A clear (barge-in).
    Clear {
        /// When.
        at: Instant,
        /// Queued audio it dropped before it played, bytes.
        dropped_bytes: u64,
    },
}

/// How a mark echo reaches the engine (usually `Engine::media_mark`).
pub type MarkEcho = Arc<dyn Fn(CallId, String) + Send + Sync>;

#[derive(Default)]
struct MediaCall {
    items: Vec<MediaItem>,
    /// When the audio queued so far will have played.
    playhead: Option<Instant>,
    /// Marks not echoed yet: (due, name).
    pending: VecDeque<(Instant, String)>,
    echoed: Vec<(String, Instant)>,
}

#[derive(Default)]
struct MediaState {
    calls: HashMap<CallId, MediaCall>,
    panics: u32,
}

/// The calls' media streams, in memory: every call has a live stream. Audio plays out in real
/// time on tokio's clock, one call's items strictly in order.
#[derive(Default)]
pub struct MemoryMedia {
    inner: Arc<Mutex<MediaState>>,
    echo: Arc<Mutex<Option<MarkEcho>>>,
}

impl MemoryMedia {
    /// Media streams that record, play, and echo nothing until [`MemoryMedia::echo_marks`].
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, each mark is echoed through `echo` once the audio queued before it has
    /// played (as the carrier does); usually `move |call, name| engine.media_mark(call, name)`.
    /// Marks queued before this are echoed with the next mark or clear of their call.
    pub fn echo_marks(&self, echo: impl Fn(CallId, String) + Send + Sync + 'static) {
        *lock(&self.echo) = Some(Arc::new(echo));
    }

    /// Stops echoing (also drops the closure, and the engine it may hold).
    pub fn stop_echo(&self) {
        *lock(&self.echo) = None;
    }

    /// The next `n` `send_audio` calls panic (a bug that crashes the voice session).
    pub fn panic_on_next_audio(&self, n: u32) {
        lock(&self.inner).panics = n;
    }

    /// Everything queued on the call's stream, in order.
    pub fn items(&self, call: CallId) -> Vec<MediaItem> {
        lock(&self.inner)
            .calls
            .get(&call)
            .map(|c| c.items.clone())
            .unwrap_or_default()
    }

    /// Agent audio queued on the call, bytes.
    pub fn audio_bytes(&self, call: CallId) -> u64 {
        self.items(call)
            .iter()
            .map(|i| match i {
                MediaItem::Audio { bytes, .. } => *bytes as u64,
                _ => 0,
            })
            .sum()
    }

    /// Marks queued on the call, in order.
    pub fn marks(&self, call: CallId) -> Vec<String> {
        self.items(call)
            .into_iter()
            .filter_map(|i| match i {
                MediaItem::Mark { name, .. } => Some(name),
                _ => None,
            })
            .collect()
    }

    /// The clears of the call: when, and the audio each dropped (bytes).
    pub fn clears(&self, call: CallId) -> Vec<(Instant, u64)> {
        self.items(call)
            .into_iter()
            .filter_map(|i| match i {
                MediaItem::Clear { at, dropped_bytes } => Some((at, dropped_bytes)),
                _ => None,
            })
            .collect()
    }

    /// Marks echoed so far, with when.
    pub fn echoed(&self, call: CallId) -> Vec<(String, Instant)> {
        lock(&self.inner)
            .calls
            .get(&call)
            .map(|c| c.echoed.clone())
            .unwrap_or_default()
    }

    /// Marks queued and not echoed yet (without an echo attached, all of them).
    pub fn pending_marks(&self, call: CallId) -> Vec<String> {
        lock(&self.inner)
            .calls
            .get(&call)
            .map(|c| c.pending.iter().map(|(_, n)| n.clone()).collect())
            .unwrap_or_default()
    }

    /// Schedules the echo of the call's marks due at `due`.
    fn schedule(&self, call: CallId, due: Instant) {
        if lock(&self.echo).is_none() {
            return;
        }
        let inner = self.inner.clone();
        let echo = self.echo.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let now = Instant::now();
            let names: Vec<String> = {
                let mut s = lock(&inner);
                let Some(c) = s.calls.get_mut(&call) else {
                    return;
                };
                let mut names = Vec::new();
                while c.pending.front().is_some_and(|(d, _)| *d <= now) {
                    if let Some((_, name)) = c.pending.pop_front() {
                        c.echoed.push((name.clone(), now));
                        names.push(name);
                    }
                }
                names
            };
            let Some(echo) = lock(&echo).clone() else {
                return;
            };
            for name in names {
                echo(call, name);
            }
        });
    }
}

impl MediaOut for MemoryMedia {
    fn send_audio(&self, call_id: CallId, mulaw: Vec<u8>) -> Result<(), MediaError> {
        let now = Instant::now();
        let mut s = lock(&self.inner);
        if s.panics > 0 {
            s.panics -= 1;
            drop(s);
            panic!("scripted media stream panics on audio (call {call_id})");
        }
        let c = s.calls.entry(call_id).or_default();
        let start = c.playhead.map_or(now, |p| p.max(now));
        c.playhead = Some(start + audio_duration(mulaw.len() as u64));
        c.items.push(MediaItem::Audio {
            bytes: mulaw.len(),
            at: now,
        });
        Ok(())
    }

    fn mark(&self, call_id: CallId, name: String) -> Result<(), MediaError> {
        let now = Instant::now();
        let due = {
            let mut s = lock(&self.inner);
            let c = s.calls.entry(call_id).or_default();
            let due = c.playhead.map_or(now, |p| p.max(now));
            c.pending.push_back((due, name.clone()));
            c.items.push(MediaItem::Mark { name, at: now });
            due
        };
        self.schedule(call_id, due);
        Ok(())
    }

    fn clear(&self, call_id: CallId) -> Result<(), MediaError> {
        let now = Instant::now();
        {
            let mut s = lock(&self.inner);
            let c = s.calls.entry(call_id).or_default();
            let unplayed = c
                .playhead
                .map_or(Duration::ZERO, |p| p.saturating_duration_since(now));
            let dropped_bytes =
                u64::try_from(unplayed.as_micros()).unwrap_or(u64::MAX) * BYTES_PER_MS / 1000;
            c.playhead = Some(now);
            // The marks stay and are answered now: their audio is gone.
            for (due, _) in c.pending.iter_mut() {
                *due = now;
            }
            c.items.push(MediaItem::Clear {
                at: now,
                dropped_bytes,
            });
        }
        self.schedule(call_id, now);
        Ok(())
    }
}
