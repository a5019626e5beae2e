//! Scripted speech synthesis: [`ScriptedTts`], paced by a [`TtsScript`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::shared::{lock, BYTES_PER_MS, STREAM_CAPACITY};
use crate::machine::CallId;
use crate::ports::voice::{TextToSpeech, TtsEvent, TtsInput, TtsOptions, TtsStream, VoiceError};

/// How [`ScriptedTts`] synthesizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TtsScript {
    /// From a piece of text arriving to its audio (synthesis latency).
    pub first_audio: Duration,
    /// Speech per character of (trimmed) text, ms.
    pub ms_per_char: u64,
    /// Audio per `Audio` event, ms (the last chunk of a piece may be shorter).
    pub chunk_ms: u64,
    /// Send word timings (`Words`) after each piece's audio.
    pub word_timings: bool,
}

impl Default for TtsScript {
    fn default() -> Self {
        TtsScript {
            first_audio: Duration::from_millis(100),
            ms_per_char: 50,
            chunk_ms: 200,
            word_timings: true,
        }
    }
}

impl TtsScript {
    /// Audio of `text` (trimmed), ms.
    pub fn speech_ms(&self, text: &str) -> u64 {
        text.trim().chars().count() as u64 * self.ms_per_char
    }
}

struct TtsStreamState {
    options: TtsOptions,
    events: Option<mpsc::Sender<TtsEvent>>,
    inputs: Vec<TtsInput>,
    ended: bool,
}

#[derive(Default)]
struct TtsState {
    streams: HashMap<CallId, Vec<TtsStreamState>>,
    refuse: Option<String>,
    script: TtsScript,
}

/// A speech synthesizer that answers each piece of text with μ-law audio (`0xff`, silence)
/// of [`TtsScript::ms_per_char`] per character, in chunks, `first_audio` after the piece
/// arrived; then word timings; `Done` after the last piece of a context. Audio of a context
/// that is cancelled before it is due is never sent.
#[derive(Default)]
pub struct ScriptedTts {
    inner: Arc<Mutex<TtsState>>,
}

impl ScriptedTts {
    /// The vendor name.
    pub const VENDOR: &'static str = "scripted-tts";

    /// A synthesizer with [`TtsScript::default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A synthesizer with `script` (for the streams opened from now on).
    pub fn with_script(script: TtsScript) -> Self {
        let tts = Self::default();
        lock(&tts.inner).script = script;
        tts
    }

    /// The synthesis script.
    pub fn script(&self) -> TtsScript {
        lock(&self.inner).script.clone()
    }

    /// While `Some`, `open` fails with `Unavailable` and this reason.
    pub fn refuse_opens(&self, reason: Option<&str>) {
        lock(&self.inner).refuse = reason.map(str::to_owned);
    }

    /// Sends `event` on the call's latest stream (`Reconnected`, `ContextFailed`, `Failed`,
    /// ...). `Failed` is the last event: the stream stops and its event channel closes.
    pub fn push(&self, call: CallId, event: TtsEvent) -> bool {
        let mut s = lock(&self.inner);
        let Some(stream) = s.streams.get_mut(&call).and_then(|v| v.last_mut()) else {
            return false;
        };
        let Some(tx) = &stream.events else {
            return false;
        };
        let last = matches!(event, TtsEvent::Failed { .. });
        let sent = tx.try_send(event).is_ok();
        if last {
            stream.events = None;
        }
        sent
    }

    /// Streams opened for the call so far.
    pub fn opens(&self, call: CallId) -> usize {
        lock(&self.inner).streams.get(&call).map_or(0, Vec::len)
    }

    /// The options of every stream opened for the call, in order.
    pub fn options(&self, call: CallId) -> Vec<TtsOptions> {
        lock(&self.inner)
            .streams
            .get(&call)
            .map(|v| v.iter().map(|s| s.options.clone()).collect())
            .unwrap_or_default()
    }

    /// Every input the call's streams received, in order.
    pub fn inputs(&self, call: CallId) -> Vec<TtsInput> {
        lock(&self.inner)
            .streams
            .get(&call)
            .map(|v| v.iter().flat_map(|s| s.inputs.iter().cloned()).collect())
            .unwrap_or_default()
    }

    /// The text of each context, in the order contexts started: its trimmed pieces joined by
    /// a space.
    pub fn texts(&self, call: CallId) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for input in self.inputs(call) {
            let TtsInput::Speak { context, text, .. } = input else {
                continue;
            };
            let i = match out.iter().position(|(c, _)| *c == context) {
                Some(i) => i,
                None => {
                    out.push((context, String::new()));
                    out.len() - 1
                }
            };
            let text = text.trim();
            if !text.is_empty() {
                if !out[i].1.is_empty() {
                    out[i].1.push(' ');
                }
                out[i].1.push_str(text);
            }
        }
        out
    }

    /// Contexts the session cancelled, in order.
    pub fn cancelled(&self, call: CallId) -> Vec<String> {
        self.inputs(call)
            .into_iter()
            .filter_map(|i| match i {
                TtsInput::Cancel { context } => Some(context),
                _ => None,
            })
            .collect()
    }

    /// The call's latest stream received `Close`.
    pub fn closed(&self, call: CallId) -> bool {
        lock(&self.inner)
            .streams
            .get(&call)
            .and_then(|v| v.last())
            .is_some_and(|s| s.inputs.contains(&TtsInput::Close))
    }

    /// The input channel of each of the call's streams has ended, in order.
    pub fn ended(&self, call: CallId) -> Vec<bool> {
        lock(&self.inner)
            .streams
            .get(&call)
            .map(|v| v.iter().map(|s| s.ended).collect())
            .unwrap_or_default()
    }
}

#[async_trait]
impl TextToSpeech for ScriptedTts {
    fn vendor(&self) -> &'static str {
        Self::VENDOR
    }

    async fn open(&self, options: TtsOptions) -> Result<TtsStream, VoiceError> {
        let call = options.call_id;
        let (input_tx, input_rx) = mpsc::channel(STREAM_CAPACITY);
        let (event_tx, event_rx) = mpsc::channel(STREAM_CAPACITY);
        let (index, script) = {
            let mut s = lock(&self.inner);
            if let Some(detail) = s.refuse.clone() {
                return Err(VoiceError::Unavailable {
                    vendor: Self::VENDOR.into(),
                    detail,
                });
            }
            let script = s.script.clone();
            let streams = s.streams.entry(call).or_default();
            streams.push(TtsStreamState {
                options,
                events: Some(event_tx),
                inputs: Vec::new(),
                ended: false,
            });
            (streams.len() - 1, script)
        };
        let stream = TtsRun {
            inner: self.inner.clone(),
            call,
            index,
            script,
        };
        tokio::spawn(stream.run(input_rx));
        Ok(TtsStream {
            input: input_tx,
            events: event_rx,
        })
    }
}

/// One synthesis stream's task.
struct TtsRun {
    inner: Arc<Mutex<TtsState>>,
    call: CallId,
    index: usize,
    script: TtsScript,
}

impl TtsRun {
    fn with_stream<R>(&self, f: impl FnOnce(&mut TtsStreamState) -> R) -> Option<R> {
        let mut s = lock(&self.inner);
        s.streams
            .get_mut(&self.call)
            .and_then(|v| v.get_mut(self.index))
            .map(f)
    }

    async fn run(self, mut input: mpsc::Receiver<TtsInput>) {
        // Due events in due order: every piece is due `first_audio` after it arrived, so
        // arrival order is due order.
        let mut queue: VecDeque<(Instant, TtsEvent)> = VecDeque::new();
        // Audio produced so far per context, ms (word timings are relative to its start).
        let mut produced: HashMap<String, u64> = HashMap::new();
        'stream: loop {
            let next = queue.front().map(|(due, _)| *due);
            tokio::select! {
                biased;
                received = input.recv() => {
                    let Some(received) = received else { break };
                    self.with_stream(|s| s.inputs.push(received.clone()));
                    match received {
                        TtsInput::Speak { context, text, last } => {
                            let due = Instant::now() + self.script.first_audio;
                            let offset = produced.entry(context.clone()).or_default();
                            for event in self.synthesize(&context, &text, offset) {
                                queue.push_back((due, event));
                            }
                            if last {
                                queue.push_back((due, TtsEvent::Done { context }));
                            }
                        }
                        TtsInput::Cancel { context } => {
                            queue.retain(|(_, e)| tts_context(e) != Some(context.as_str()));
                        }
                        TtsInput::Close => break,
                    }
                }
                () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    let now = Instant::now();
                    while queue.front().is_some_and(|(due, _)| *due <= now) {
                        let Some((_, event)) = queue.pop_front() else { break };
                        let Some(Some(tx)) = self.with_stream(|s| s.events.clone()) else {
                            break 'stream;
                        };
                        if tx.send(event).await.is_err() {
                            break 'stream;
                        }
                    }
                }
            }
        }
        self.with_stream(|s| {
            s.ended = true;
            s.events = None;
        });
    }

    /// The audio chunks and word timings of one piece of `context`.
    fn synthesize(&self, context: &str, text: &str, produced_ms: &mut u64) -> Vec<TtsEvent> {
        let text = text.trim();
        if text.is_empty() {
            return Vec::new();
        }
        let per_char = self.script.ms_per_char;
        let mut events = Vec::new();
        let total = u64::try_from(text.chars().count()).unwrap_or(u64::MAX) * per_char;
        let chunk = self.script.chunk_ms.max(1);
        let mut at = 0;
        while at < total {
            let ms = chunk.min(total - at);
            events.push(TtsEvent::Audio {
                context: context.to_owned(),
                mulaw: vec![0xff; usize::try_from(ms * BYTES_PER_MS).unwrap_or(0)],
            });
            at += ms;
        }
        if self.script.word_timings {
            let base = *produced_ms;
            let mut words = Vec::new();
            let mut chars = 0u64;
            for word in text.split(' ') {
                let len = u64::try_from(word.chars().count()).unwrap_or(0);
                if len > 0 {
                    let start = (base + chars * per_char) as f32 / 1000.0;
                    let end = (base + (chars + len) * per_char) as f32 / 1000.0;
                    words.push((word.to_owned(), start, end));
                }
                chars += len + 1;
            }
            events.push(TtsEvent::Words {
                context: context.to_owned(),
                words,
            });
        }
        *produced_ms += total;
        events
    }
}

fn tts_context(event: &TtsEvent) -> Option<&str> {
    match event {
        TtsEvent::Audio { context, .. }
        | TtsEvent::Words { context, .. }
        | TtsEvent::Done { context }
        | TtsEvent::ContextFailed { context, .. } => Some(context),
        TtsEvent::Reconnected { .. } | TtsEvent::Failed { .. } => None,
    }
}
