//! One accepted `/tts/websocket` connection (sections 3.2 and 3.3): multiplexing contexts,
//! continuations, flushes and cancels, and the per-context generator that paces `chunk`,
//! `timestamps`, `flush_done` and `done` messages.
//!
//! The session task owns the socket; every context's generator is its own task that sends
//! finished messages back over one channel, so contexts interleave on the wire as their pacing
//! dictates. The session is the only writer, and it drops anything a context produced after
//! the context was cancelled or failed: that filter, not the abort of the generator task, is
//! what guarantees "no further output" even for messages already queued.
//!
//! Context lifecycle (the fake's reading of section 3.2, see the module docs of [`super`]):
//! a `context_id` names one live context at a time. The first valid request opens it; requests
//! with `continue: true` keep it open; the first with `continue: false` (or no `continue`)
//! ends its input, and `done` follows the last of its audio. `cancel` ends it at once with no
//! further message, and every later request naming that id on this socket is ignored. An
//! `error` ends it too (`done: true`). Once a context has ended (other than by cancel), its id
//! may open a new one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::audio;
use super::format::{Container, OutputFormat};
use super::state::{self, Shared};
use super::wire::{self, Generation, WireError};
use super::{CloseReason, ContextSnapshot, ContextState};

/// How often the session checks its idle deadline.
const HOUSEKEEPING: Duration = Duration::from_millis(25);
/// How long to wait for the client's reply to our close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Close code of an idle close: a normal closure, as the server simply ends the session.
const IDLE_CLOSE_CODE: u16 = 1000;

/// A message a generator wants sent, tagged with its context record.
struct Out {
    key: usize,
    kind: OutKind,
    text: String,
}

enum OutKind {
    Chunk { bytes: usize },
    Timestamps,
    FlushDone,
    Done,
}

/// One accepted transcript piece, handed to the context's generator.
struct Piece {
    transcript: String,
    flush: bool,
    end: bool,
    add_timestamps: bool,
    received: Instant,
}

/// A context that has not ended.
struct Live {
    key: usize,
    /// `None` for a stalled context: its pieces are recorded and never spoken.
    input: Option<mpsc::UnboundedSender<Piece>>,
    task: Option<JoinHandle<()>>,
    input_ended: bool,
}

struct Session {
    shared: Arc<Shared>,
    conn: usize,
    out_tx: mpsc::UnboundedSender<Out>,
    live: HashMap<String, Live>,
    /// Ids cancelled on this socket, with the record of the context the cancel ended (if one
    /// was live).
    cancelled: HashMap<String, Option<usize>>,
    /// Records whose queued output must not be sent (cancelled or failed contexts).
    silenced: HashSet<usize>,
}

/// Serves one accepted socket until it closes, is dropped or the fake stops.
pub(crate) async fn run(shared: Arc<Shared>, conn: usize, socket: WebSocket) {
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let mut session = Session {
        shared,
        conn,
        out_tx,
        live: HashMap::new(),
        cancelled: HashMap::new(),
        silenced: HashSet::new(),
    };
    let reason = session.serve(socket, out_rx).await;
    session.finish(reason);
}

/// Records that connection `conn` is closed.
pub(crate) fn mark_closed(shared: &Shared, conn: usize, reason: CloseReason) {
    let mut st = shared.lock();
    if let Some(c) = st.connections.get_mut(conn) {
        c.open = false;
        c.close = Some(reason);
        c.closed_at = Some(std::time::Instant::now());
    }
}

impl Session {
    async fn serve(
        &mut self,
        mut socket: WebSocket,
        mut out_rx: mpsc::UnboundedReceiver<Out>,
    ) -> CloseReason {
        let mut drop_rx = self.shared.drop_all.subscribe();
        drop_rx.borrow_and_update();
        let stop = state::stopped(self.shared.stop.clone());
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(HOUSEKEEPING);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_activity = Instant::now();
        let mut client_closed = false;
        loop {
            tokio::select! {
                incoming = socket.recv() => {
                    let replies = match incoming {
                        None | Some(Err(_)) if client_closed => return CloseReason::ClientClosed,
                        None | Some(Err(_)) => return CloseReason::ClientGone,
                        // Keep reading: that is what sends tungstenite's queued close reply.
                        Some(Ok(Message::Close(_))) => {
                            client_closed = true;
                            continue;
                        }
                        Some(Ok(Message::Text(text))) => {
                            last_activity = Instant::now();
                            self.count_message();
                            self.on_text(text.as_str())
                        }
                        Some(Ok(Message::Binary(_))) => {
                            last_activity = Instant::now();
                            self.count_message();
                            vec![WireError::invalid(
                                "Binary messages are not supported; send JSON text messages.",
                            )
                            .ws_message(None)]
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    };
                    for reply in replies {
                        if socket.send(Message::Text(reply.into())).await.is_err() {
                            return CloseReason::SendFailed;
                        }
                    }
                }
                Some(out) = out_rx.recv() => {
                    if let Some(text) = self.on_output(out) {
                        last_activity = Instant::now();
                        if socket.send(Message::Text(text.into())).await.is_err() {
                            return CloseReason::SendFailed;
                        }
                    }
                }
                _ = tick.tick() => {
                    let idle = self.shared.lock().idle_timeout;
                    if !client_closed && last_activity.elapsed() >= idle {
                        let frame = CloseFrame {
                            code: IDLE_CLOSE_CODE,
                            reason: "connection idle for too long".into(),
                        };
                        let _ = socket.send(Message::Close(Some(frame))).await;
                        let _ = tokio::time::timeout(CLOSE_GRACE, async {
                            while let Some(Ok(_)) = socket.recv().await {}
                        })
                        .await;
                        return CloseReason::Idle;
                    }
                }
                // Returning drops the socket without a close frame: the abrupt end asked for.
                _ = drop_rx.changed() => return CloseReason::Dropped,
                () = &mut stop => return CloseReason::Shutdown,
            }
        }
    }

    fn count_message(&self) {
        if let Some(c) = self.shared.lock().connections.get_mut(self.conn) {
            c.messages_received += 1;
        }
    }

    /// Handles one client message; returns the messages to send back at once.
    fn on_text(&mut self, text: &str) -> Vec<String> {
        let obj = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(obj)) => obj,
            Ok(_) => {
                return vec![WireError::invalid("Messages must be JSON objects.").ws_message(None)]
            }
            Err(e) => {
                return vec![WireError::invalid(format!("Invalid JSON: {e}")).ws_message(None)]
            }
        };
        let context_id = obj
            .get("context_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if obj.get("cancel").and_then(Value::as_bool) == Some(true) {
            return match context_id {
                Some(id) => {
                    self.cancel(&id);
                    Vec::new()
                }
                None => vec![WireError::invalid("cancel needs a context_id").ws_message(None)],
            };
        }
        if let Some(key) = context_id.as_ref().and_then(|id| self.cancelled.get(id)) {
            if let Some(key) = *key {
                self.shared.lock().contexts[key].ignored_after_cancel += 1;
            }
            return Vec::new();
        }
        let body = Value::Object(obj.clone());
        match wire::parse_generation(&obj, true) {
            Ok(g) => self.on_generation(g, body),
            Err(e) => self.on_invalid(context_id, e, body),
        }
    }

    fn on_generation(&mut self, g: Generation, body: Value) -> Vec<String> {
        let id = g.context_id.clone().unwrap_or_default();
        let piece = Piece {
            transcript: g.transcript.clone(),
            flush: g.flush,
            end: !g.continue_,
            add_timestamps: g.add_timestamps,
            received: Instant::now(),
        };
        if let Some(live) = self.live.get_mut(&id) {
            if live.input_ended {
                return vec![WireError::invalid(format!(
                    "Context `{id}` already received its final input (continue: false); use a new context_id."
                ))
                .ws_message(Some(&id))];
            }
            live.input_ended = piece.end;
            let mut st = self.shared.lock();
            let rec = &mut st.contexts[live.key];
            accept_piece(rec, &g, body);
            if let Some(input) = &live.input {
                let _ = input.send(piece);
            }
            return Vec::new();
        }

        let mut st = self.shared.lock();
        let injected = st.take_failure();
        let stalled = injected.is_none() && st.stalls > 0;
        if stalled {
            st.stalls -= 1;
        }
        let (first_chunk_delay, realtime_factor) = (st.first_chunk_delay, st.realtime_factor);
        let key = st.contexts.len();
        let mut rec = ContextSnapshot::new(self.conn, &id, std::time::Instant::now());
        rec.model_id = Some(g.model_id.clone());
        rec.voice_id = Some(g.voice_id.clone());
        rec.language = g.language.clone();
        rec.format = Some(g.format);
        rec.stalled = stalled;
        if let Some(c) = st.connections.get_mut(self.conn) {
            c.contexts_opened += 1;
        }
        if let Some(status) = injected {
            rec.requests.push(body);
            rec.injected_failure = true;
            rec.state = ContextState::Failed(status);
            rec.finished_at = Some(std::time::Instant::now());
            st.contexts.push(rec);
            return vec![WireError::injected(status).ws_message(Some(&id))];
        }
        accept_piece(&mut rec, &g, body);
        st.contexts.push(rec);
        drop(st);

        let end = piece.end;
        let (input, task) = if stalled {
            (None, None)
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            let _ = tx.send(piece);
            let generator = Generator {
                key,
                context_id: id.clone(),
                format: g.format,
                ms_per_char: self.shared.cfg.ms_per_char,
                chunk_duration: self.shared.cfg.chunk_duration,
                realtime_factor,
                first_chunk_delay,
                out: self.out_tx.clone(),
            };
            (Some(tx), Some(tokio::spawn(generator.run(rx))))
        };
        self.live.insert(
            id,
            Live {
                key,
                input,
                task,
                input_ended: end,
            },
        );
        Vec::new()
    }

    /// An invalid request: a 400 `error` for its context. It ends a live context that is still
    /// taking input, and is recorded as a failed context of its own when none was live; a live
    /// context whose input already ended is not disturbed.
    fn on_invalid(&mut self, context_id: Option<String>, e: WireError, body: Value) -> Vec<String> {
        let Some(id) = context_id else {
            return vec![e.ws_message(None)];
        };
        let now = std::time::Instant::now();
        match self.live.get(&id) {
            Some(live) if live.input_ended => {}
            Some(_) => {
                let live = self.live.remove(&id).expect("checked above");
                if let Some(task) = live.task {
                    task.abort();
                }
                self.silenced.insert(live.key);
                let mut st = self.shared.lock();
                let rec = &mut st.contexts[live.key];
                rec.requests.push(body);
                rec.state = ContextState::Failed(e.status);
                rec.finished_at = Some(now);
            }
            None => {
                let mut st = self.shared.lock();
                let mut rec = ContextSnapshot::new(self.conn, &id, now);
                rec.requests.push(body);
                rec.state = ContextState::Failed(e.status);
                rec.finished_at = Some(now);
                st.contexts.push(rec);
                if let Some(c) = st.connections.get_mut(self.conn) {
                    c.contexts_opened += 1;
                }
            }
        }
        vec![e.ws_message(Some(&id))]
    }

    fn cancel(&mut self, id: &str) {
        let Some(live) = self.live.remove(id) else {
            self.cancelled.entry(id.to_owned()).or_insert(None);
            return;
        };
        if let Some(task) = live.task {
            task.abort();
        }
        self.silenced.insert(live.key);
        self.cancelled.insert(id.to_owned(), Some(live.key));
        let mut st = self.shared.lock();
        let rec = &mut st.contexts[live.key];
        rec.state = ContextState::Cancelled;
        rec.finished_at = Some(std::time::Instant::now());
    }

    /// Books a generator's message as sent and returns its text, or `None` if its context was
    /// cancelled or failed meanwhile. Booking comes before the write so that a client that has
    /// read a message never finds the record behind it.
    fn on_output(&mut self, out: Out) -> Option<String> {
        if self.silenced.contains(&out.key) {
            return None;
        }
        let mut st = self.shared.lock();
        let rec = &mut st.contexts[out.key];
        match out.kind {
            OutKind::Chunk { bytes } => {
                rec.chunks_sent += 1;
                rec.audio_bytes_sent += bytes as u64;
                rec.first_chunk_at
                    .get_or_insert_with(std::time::Instant::now);
            }
            OutKind::Timestamps => rec.timestamps_sent += 1,
            OutKind::FlushDone => rec.flush_dones_sent += 1,
            OutKind::Done => {
                rec.state = ContextState::Done;
                rec.finished_at = Some(std::time::Instant::now());
                let id = rec.context_id.clone();
                if self.live.get(&id).is_some_and(|l| l.key == out.key) {
                    self.live.remove(&id);
                }
            }
        }
        Some(out.text)
    }

    fn finish(self, reason: CloseReason) {
        let now = std::time::Instant::now();
        {
            let mut st = self.shared.lock();
            for live in self.live.into_values() {
                if let Some(task) = live.task {
                    task.abort();
                }
                let rec = &mut st.contexts[live.key];
                if matches!(rec.state, ContextState::Open | ContextState::Closing) {
                    rec.state = ContextState::Abandoned;
                    rec.finished_at = Some(now);
                }
            }
        }
        mark_closed(&self.shared, self.conn, reason);
    }
}

/// Adds an accepted request to its context's record.
fn accept_piece(rec: &mut ContextSnapshot, g: &Generation, body: Value) {
    rec.transcript.push_str(&g.transcript);
    rec.pieces += 1;
    rec.continued |= g.continue_;
    rec.requests.push(body);
    if g.flush {
        rec.flushes += 1;
    }
    if !g.continue_ {
        rec.input_ended = true;
        rec.state = ContextState::Closing;
    }
}

/// Speaks one context: renders each piece as it arrives and paces it out in chunks.
struct Generator {
    key: usize,
    context_id: String,
    format: OutputFormat,
    ms_per_char: u32,
    chunk_duration: Duration,
    realtime_factor: f64,
    first_chunk_delay: Duration,
    out: mpsc::UnboundedSender<Out>,
}

impl Generator {
    async fn run(self, mut input: mpsc::UnboundedReceiver<Piece>) {
        let rate = self.format.sample_rate;
        let spc = self.format.samples_per_char(self.ms_per_char).max(1);
        let bytes_per_sample = self.format.encoding.bytes_per_sample();
        let chunk_samples =
            ((f64::from(rate) * self.chunk_duration.as_secs_f64()).round() as usize).max(1);
        let mut text: Vec<char> = Vec::new();
        let mut samples_sent = 0usize;
        let mut next_due: Option<Instant> = None;
        let mut flush_id = 1u32;
        let mut word_cursor = 0usize;
        let mut header_sent = false;
        while let Some(piece) = input.recv().await {
            let timestamps_on = piece.add_timestamps;
            let start = text.len();
            text.extend(piece.transcript.chars());
            // Leading whitespace of this piece may finish a word that is already audible.
            self.send_words(
                &text,
                &mut word_cursor,
                samples_sent / spc,
                false,
                flush_id,
                timestamps_on,
            );
            let pcm = audio::render(&text, start..text.len(), rate, spc, self.ms_per_char);
            let bytes = audio::encode(&pcm, self.format.encoding);
            for chunk in bytes.chunks(chunk_samples * bytes_per_sample) {
                let due = match next_due {
                    None => piece.received + self.first_chunk_delay,
                    Some(d) => d.max(Instant::now()),
                };
                tokio::time::sleep_until(due).await;
                let mut data = Vec::with_capacity(chunk.len() + 58);
                if self.format.container == Container::Wav && !header_sent {
                    data.extend(audio::wav_header(&self.format, None));
                    header_sent = true;
                }
                data.extend_from_slice(chunk);
                let samples = chunk.len() / bytes_per_sample;
                let generation_s = self.pace(samples as f64 / f64::from(rate));
                let text_msg = wire::chunk(
                    &self.context_id,
                    &BASE64.encode(&data),
                    generation_s * 1_000.0,
                    flush_id,
                );
                self.send(OutKind::Chunk { bytes: data.len() }, text_msg);
                samples_sent += samples;
                next_due = Some(due + Duration::from_secs_f64(generation_s));
                self.send_words(
                    &text,
                    &mut word_cursor,
                    samples_sent / spc,
                    false,
                    flush_id,
                    timestamps_on,
                );
            }
            if piece.flush || piece.end {
                self.send_words(
                    &text,
                    &mut word_cursor,
                    samples_sent / spc,
                    true,
                    flush_id,
                    timestamps_on,
                );
            }
            if piece.flush {
                self.send(
                    OutKind::FlushDone,
                    wire::flush_done(&self.context_id, flush_id),
                );
                flush_id += 1;
            }
            if piece.end {
                self.send(OutKind::Done, wire::done(&self.context_id));
                return;
            }
        }
    }

    /// Wall time to generate `audio_s` seconds of audio: a real-time factor that is not a
    /// positive number means "as fast as possible".
    fn pace(&self, audio_s: f64) -> f64 {
        let f = self.realtime_factor;
        if f.is_finite() && f > 0.0 {
            audio_s / f
        } else {
            0.0
        }
    }

    /// Sends the words that became complete and audible, if timestamps were asked for; the
    /// cursor advances either way so that turning timestamps on later does not replay them.
    fn send_words(
        &self,
        text: &[char],
        cursor: &mut usize,
        chars_audible: usize,
        finished: bool,
        flush_id: u32,
        on: bool,
    ) {
        let words = audio::take_words(text, cursor, chars_audible, finished);
        if words.is_empty() || !on {
            return;
        }
        let char_s = f64::from(self.ms_per_char) / 1_000.0;
        let names: Vec<String> = words.iter().map(|w| w.word.clone()).collect();
        let start: Vec<f64> = words.iter().map(|w| w.start as f64 * char_s).collect();
        let end: Vec<f64> = words.iter().map(|w| w.end as f64 * char_s).collect();
        self.send(
            OutKind::Timestamps,
            wire::timestamps(&self.context_id, flush_id, &names, &start, &end),
        );
    }

    fn send(&self, kind: OutKind, text: String) {
        // A closed channel means the session is gone; the task is about to be aborted.
        let _ = self.out.send(Out {
            key: self.key,
            kind,
            text,
        });
    }
}
