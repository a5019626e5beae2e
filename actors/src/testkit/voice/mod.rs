//! In-memory voice ports for actor-level tests and the deterministic simulations.
//!
//! They keep the channel-pair design of the real adapters ([`super::ports`]): the session
//! writes into a bounded sender and reads events from a receiver. Everything runs on tokio
//! time (a test with paused time drives it), nothing reads the wall clock or draws
//! randomness, so a scenario replays identically:
//!
//! * [`ScriptedStt`]: the test pushes the recogniser's events for a call ([`ScriptedStt::push`],
//!   [`ScriptedStt::say`]) and reads what the session sent ([`ScriptedStt::log`]).
//! * [`ScriptedTts`]: answers every piece of text with audio chunks (and word timings) after a
//!   fixed synthesis delay ([`TtsScript`]); honours `Cancel` and `Close`; records every input.
//! * [`ScriptedLlm`]: answers each request with the next scripted [`LlmReply`] (events paced
//!   by fixed delays: text deltas, tool calls, failures) and records the requests.
//! * [`MemoryMedia`]: records the audio, marks and clears of each call's media stream, plays
//!   the audio out in real time (8 bytes per ms) and, once [`MemoryMedia::echo_marks`] is
//!   attached, echoes each mark when the audio queued before it has played; a clear drops the
//!   unplayed audio and echoes the pending marks at once, as the media endpoint does.
//!
//! Two ports can crash the session on demand ([`ScriptedStt::panic_on_next_opens`],
//! [`MemoryMedia::panic_on_next_audio`]): both are called from inside the session's message
//! handler, so the panic is a session crash as the CallActor sees it. None of this is for
//! production.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ports::{
    Llm, LlmEvent, LlmRequest, MediaError, MediaOut, SpeechToText, SttEvent, SttInput, SttOptions,
    SttStream, TextToSpeech, ToolCall, TtsEvent, TtsInput, TtsOptions, TtsStream, VoiceError,
};
use crate::machine::CallId;

/// Capacity of every stream channel (inputs and events).
const STREAM_CAPACITY: usize = 1024;
/// μ-law 8 kHz: bytes per millisecond of audio.
const BYTES_PER_MS: u64 = 8;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn audio_duration(bytes: u64) -> Duration {
    // 125 µs per byte at 8 kHz.
    Duration::from_micros(bytes * 1000 / BYTES_PER_MS)
}

// ---------------------------------------------------------------------------------------------
// Speech-to-text
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Text-to-speech
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Chat model
// ---------------------------------------------------------------------------------------------

/// One scripted reply of [`ScriptedLlm`].
#[derive(Debug, Clone, PartialEq)]
pub struct LlmReply {
    /// `Some`: `stream` fails with `Unavailable` and this reason (the request cannot start).
    pub unavailable: Option<String>,
    /// The events, in order.
    pub events: Vec<LlmEvent>,
    /// Delay of the first event after the request.
    pub first_token: Duration,
    /// Delay between consecutive events.
    pub between: Duration,
}

impl LlmReply {
    /// Delay of the first event by default.
    pub const FIRST_TOKEN: Duration = Duration::from_millis(200);
    /// Delay between events by default.
    pub const BETWEEN: Duration = Duration::from_millis(20);

    /// These events, with the default delays.
    pub fn events(events: Vec<LlmEvent>) -> Self {
        LlmReply {
            unavailable: None,
            events,
            first_token: Self::FIRST_TOKEN,
            between: Self::BETWEEN,
        }
    }

    /// `text` streamed word by word (each delta a word with its trailing space), then
    /// `Done { finish_reason: "stop" }`.
    pub fn text(text: &str) -> Self {
        Self::deltas(&text.split_inclusive(' ').collect::<Vec<_>>())
    }

    /// These text deltas, then `Done { finish_reason: "stop" }`.
    pub fn deltas(deltas: &[&str]) -> Self {
        let mut events: Vec<LlmEvent> = deltas
            .iter()
            .map(|d| LlmEvent::Text {
                text: (*d).to_owned(),
            })
            .collect();
        events.push(LlmEvent::Done {
            finish_reason: "stop".into(),
        });
        Self::events(events)
    }

    /// One tool call, then `Done { finish_reason: "tool_calls" }`.
    pub fn tool_call(id: &str, name: &str, arguments: &str) -> Self {
        Self::events(vec![
            LlmEvent::ToolCall {
                call: ToolCall {
                    id: id.into(),
                    name: name.into(),
                    arguments: arguments.into(),
                },
            },
            LlmEvent::Done {
                finish_reason: "tool_calls".into(),
            },
        ])
    }

    /// `text` streamed word by word, then `Failed` (the stream broke).
    pub fn failing(text: &str, reason: &str) -> Self {
        let mut reply = Self::text(text);
        reply.events.pop();
        reply.events.push(LlmEvent::Failed {
            reason: reason.into(),
        });
        reply
    }

    /// The request cannot start: `stream` answers `Unavailable` with `reason`.
    pub fn unavailable(reason: &str) -> Self {
        LlmReply {
            unavailable: Some(reason.into()),
            ..Self::events(Vec::new())
        }
    }

    /// The same reply with other delays.
    pub fn paced(mut self, first_token: Duration, between: Duration) -> Self {
        self.first_token = first_token;
        self.between = between;
        self
    }
}

#[derive(Default)]
struct LlmState {
    replies: VecDeque<LlmReply>,
    fallback: Option<LlmReply>,
    requests: Vec<LlmRequest>,
    cancelled: Vec<usize>,
    completed: Vec<usize>,
}

/// A chat model that answers requests, in order, with the replies queued by
/// [`ScriptedLlm::reply`] (then with the fallback reply, `"Okay."` unless set), and records
/// every request. A reply whose receiver is dropped stops at once and counts as cancelled.
#[derive(Default)]
pub struct ScriptedLlm {
    inner: Arc<Mutex<LlmState>>,
}

impl ScriptedLlm {
    /// The vendor name.
    pub const VENDOR: &'static str = "scripted-llm";

    /// A model that answers `"Okay."` until replies are queued.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues the answer to a coming request.
    pub fn reply(&self, reply: LlmReply) {
        lock(&self.inner).replies.push_back(reply);
    }

    /// The answer once the queue is empty.
    pub fn set_fallback(&self, reply: LlmReply) {
        lock(&self.inner).fallback = Some(reply);
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<LlmRequest> {
        lock(&self.inner).requests.clone()
    }

    /// Indexes (into [`ScriptedLlm::requests`]) of the replies dropped by their receiver before
    /// their last event.
    pub fn cancelled(&self) -> Vec<usize> {
        lock(&self.inner).cancelled.clone()
    }

    /// Indexes of the replies whose every event was delivered.
    pub fn completed(&self) -> Vec<usize> {
        lock(&self.inner).completed.clone()
    }
}

#[async_trait]
impl Llm for ScriptedLlm {
    fn vendor(&self) -> &'static str {
        Self::VENDOR
    }

    async fn stream(&self, request: LlmRequest) -> Result<mpsc::Receiver<LlmEvent>, VoiceError> {
        let (index, reply) = {
            let mut s = lock(&self.inner);
            s.requests.push(request);
            let reply = match s.replies.pop_front() {
                Some(r) => r,
                None => s
                    .fallback
                    .clone()
                    .unwrap_or_else(|| LlmReply::text("Okay.")),
            };
            (s.requests.len() - 1, reply)
        };
        if let Some(detail) = reply.unavailable {
            return Err(VoiceError::Unavailable {
                vendor: Self::VENDOR.into(),
                detail,
            });
        }
        let (tx, rx) = mpsc::channel(STREAM_CAPACITY);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            for (i, event) in reply.events.into_iter().enumerate() {
                let delay = if i == 0 {
                    reply.first_token
                } else {
                    reply.between
                };
                let cancelled = tokio::select! {
                    biased;
                    () = tx.closed() => true,
                    () = tokio::time::sleep(delay) => tx.send(event).await.is_err(),
                };
                if cancelled {
                    lock(&inner).cancelled.push(index);
                    return;
                }
            }
            lock(&inner).completed.push(index);
        });
        Ok(rx)
    }
}

// ---------------------------------------------------------------------------------------------
// Media out
// ---------------------------------------------------------------------------------------------

/// What the session queued on a call's media stream.
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
