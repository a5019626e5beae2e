//! Scripted speech-to-text: [`ScriptedStt`] and the [`SttLog`] of what the session sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::shared::{lock, STREAM_CAPACITY};
use crate::machine::CallId;
use crate::ports::voice::{SpeechToText, SttEvent, SttInput, SttOptions, SttStream, VoiceError};

/// What the session sent to one speech-to-text stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SttLog {
    /// Caller audio received, bytes.
    pub audio_bytes: u64,
    /// `Audio` inputs received.
    pub audio_chunks: u64,
    /// `Finalize` inputs received.
    pub finalizes: u32,
    /// `Close` received (the call ended normally for the session).
    pub closed: bool,
    /// The input channel ended: after `Close`, or because the session dropped its sender
    /// without one (it crashed).
    pub ended: bool,
}

struct SttStreamState {
    options: SttOptions,
    events: Option<mpsc::Sender<SttEvent>>,
    log: SttLog,
}

#[derive(Default)]
struct SttState {
    streams: HashMap<CallId, Vec<SttStreamState>>,
    attempts: HashMap<CallId, u32>,
    refuse: Option<String>,
    panics: u32,
}

/// A speech-to-text whose results the test scripts. Each `open` makes a stream; events pushed
/// for a call go to its latest stream.
#[derive(Default)]
pub struct ScriptedStt {
    inner: Arc<Mutex<SttState>>,
}

impl ScriptedStt {
    /// The vendor name (its breaker's name).
    pub const VENDOR: &'static str = "scripted-stt";

    /// A recogniser that opens every stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// While `Some`, `open` fails with `Unavailable` and this reason (an open breaker).
    pub fn refuse_opens(&self, reason: Option<&str>) {
        lock(&self.inner).refuse = reason.map(str::to_owned);
    }

    /// The next `n` opens panic (a bug in an adapter: it crashes the voice session).
    pub fn panic_on_next_opens(&self, n: u32) {
        lock(&self.inner).panics = n;
    }

    /// Sends `event` on the call's latest stream, as the vendor would. `Failed` is the last
    /// event: the stream's event channel closes after it. `false` when the call has no stream
    /// open, its event channel is closed, or the session is gone.
    pub fn push(&self, call: CallId, event: SttEvent) -> bool {
        let mut s = lock(&self.inner);
        let Some(stream) = s.streams.get_mut(&call).and_then(|v| v.last_mut()) else {
            return false;
        };
        let Some(tx) = &stream.events else {
            return false;
        };
        let last = matches!(event, SttEvent::Failed { .. });
        let sent = tx.try_send(event).is_ok();
        if last {
            stream.events = None;
        }
        sent
    }

    /// The caller says `text` over stream audio `start_ms..end_ms`: `SpeechStarted` at
    /// `start_ms`, then one final, endpointed transcript (confidence 0.9). `false` when either
    /// could not be sent.
    pub fn say(&self, call: CallId, text: &str, start_ms: u64, end_ms: u64) -> bool {
        let started = self.push(call, SttEvent::SpeechStarted { at_ms: start_ms });
        started
            && self.push(
                call,
                SttEvent::Transcript {
                    text: text.to_owned(),
                    is_final: true,
                    speech_final: true,
                    confidence: 0.9,
                    start_ms,
                    end_ms,
                },
            )
    }

    /// Streams opened for the call so far.
    pub fn opens(&self, call: CallId) -> usize {
        lock(&self.inner).streams.get(&call).map_or(0, Vec::len)
    }

    /// `open` calls for the call so far, including refused and panicking ones.
    pub fn attempts(&self, call: CallId) -> u32 {
        lock(&self.inner).attempts.get(&call).copied().unwrap_or(0)
    }

    /// The options of every stream opened for the call, in order.
    pub fn options(&self, call: CallId) -> Vec<SttOptions> {
        lock(&self.inner)
            .streams
            .get(&call)
            .map(|v| v.iter().map(|s| s.options.clone()).collect())
            .unwrap_or_default()
    }

    /// What the session sent to the call's latest stream.
    pub fn log(&self, call: CallId) -> Option<SttLog> {
        lock(&self.inner)
            .streams
            .get(&call)
            .and_then(|v| v.last())
            .map(|s| s.log.clone())
    }

    /// What the session sent to each of the call's streams, in order.
    pub fn logs(&self, call: CallId) -> Vec<SttLog> {
        lock(&self.inner)
            .streams
            .get(&call)
            .map(|v| v.iter().map(|s| s.log.clone()).collect())
            .unwrap_or_default()
    }
}

#[async_trait]
impl SpeechToText for ScriptedStt {
    fn vendor(&self) -> &'static str {
        Self::VENDOR
    }

    async fn open(&self, options: SttOptions) -> Result<SttStream, VoiceError> {
        let call = options.call_id;
        let (input_tx, mut input_rx) = mpsc::channel(STREAM_CAPACITY);
        let (event_tx, event_rx) = mpsc::channel(STREAM_CAPACITY);
        let index = {
            let mut s = lock(&self.inner);
            *s.attempts.entry(call).or_default() += 1;
            if s.panics > 0 {
                s.panics -= 1;
                drop(s);
                panic!("scripted speech-to-text panics on open (call {call})");
            }
            if let Some(detail) = s.refuse.clone() {
                return Err(VoiceError::Unavailable {
                    vendor: Self::VENDOR.into(),
                    detail,
                });
            }
            let streams = s.streams.entry(call).or_default();
            streams.push(SttStreamState {
                options,
                events: Some(event_tx),
                log: SttLog::default(),
            });
            streams.len() - 1
        };
        let inner = self.inner.clone();
        tokio::spawn(async move {
            while let Some(input) = input_rx.recv().await {
                let mut s = lock(&inner);
                let Some(stream) = s.streams.get_mut(&call).and_then(|v| v.get_mut(index)) else {
                    return;
                };
                match input {
                    SttInput::Audio(bytes) => {
                        stream.log.audio_bytes += bytes.len() as u64;
                        stream.log.audio_chunks += 1;
                    }
                    SttInput::Finalize => stream.log.finalizes += 1,
                    SttInput::Close => {
                        // Nothing is buffered here: the last results are out, close.
                        stream.log.closed = true;
                        stream.events = None;
                    }
                }
            }
            if let Some(stream) = lock(&inner)
                .streams
                .get_mut(&call)
                .and_then(|v| v.get_mut(index))
            {
                stream.log.ended = true;
            }
        });
        Ok(SttStream {
            input: input_tx,
            events: event_rx,
        })
    }
}
