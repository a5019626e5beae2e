//! The task that owns one live transcription (vendor-protocols.md sections 2.2 and 2.3): it
//! forwards the session's audio and controls to the socket, turns server messages into
//! [`SttEvent`]s on the stream's timeline, keeps the socket alive, and replaces a connection
//! that dropped or stalled behind the same channels.
//!
//! One task per stream, and only it touches the socket, so no lock is needed. It must never
//! make the session wait: the input channel is drained even while reconnecting (into a bounded
//! buffer), and nothing here blocks on the session except handing over final results.
//!
//! Times: Deepgram times results in seconds of the audio *its connection* received. A
//! connection starts at some position of the stream's audio, its *base*, so an event's time is
//! `base + Deepgram's time`. Positions count every byte of caller audio accepted since open,
//! lost ones included, so times stay on the caller's audio clock and never run backwards for
//! finals. On a reconnect, the audio the lost connection had not finalized is sent again
//! (section 2.3: "re-send any audio not yet covered by final results"), so the new base is the
//! end of the last final, and an utterance cut by the drop is still transcribed; interim
//! results and `SpeechStarted` of that stretch may then repeat.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use iace_actors::ports::voice::{SttEvent, SttInput};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use super::wire::{Control, ServerMessage};
use super::{Shared, Ws};

/// μ-law 8 kHz mono: one byte a sample.
const BYTES_PER_SECOND: f64 = 8_000.0;
const BYTES_PER_MS: u64 = 8;

/// How long a closing stream waits for the server's last results and its close.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Replayed audio goes out in frames of this size (1 s): it is already late, and fewer frames
/// reach the server sooner.
const REPLAY_FRAME: usize = 8_000;

/// Something to send, in the session's order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    Audio(Vec<u8>),
    Finalize,
}

/// Caller audio on its way to Deepgram, and the positions (bytes of stream audio) that place
/// the current connection on the stream's timeline.
#[derive(Debug)]
struct Timeline {
    /// Largest audio kept for a reconnect, bytes.
    cap: usize,
    /// The socket is up: the backlog is flushed at once and never trimmed (trimming it would
    /// leave a hole between the connection's audio and the base).
    connected: bool,
    /// Stream position of the current connection's first byte.
    base: u64,
    /// Bytes sent on the current connection.
    sent: u64,
    /// Connection position up to which final results cover the audio.
    finalized: u64,
    /// The newest `cap` bytes sent on this connection and not yet finalized: what a reconnect
    /// sends again. Its first byte is at connection position `sent - unfinal.len()`.
    unfinal: VecDeque<u8>,
    /// Not sent yet, in order: the replay and what arrived while reconnecting.
    backlog: VecDeque<Pending>,
    /// Audio bytes in `backlog`.
    backlog_audio: usize,
    /// Audio lost since the last reconnect was reported, bytes.
    lost: u64,
}

impl Timeline {
    fn new(buffer: Duration) -> Self {
        let ms = u64::try_from(buffer.as_millis()).unwrap_or(u64::MAX);
        let cap = usize::try_from(ms.saturating_mul(BYTES_PER_MS)).unwrap_or(usize::MAX);
        Timeline {
            cap: cap.max(1),
            connected: true,
            base: 0,
            sent: 0,
            finalized: 0,
            unfinal: VecDeque::new(),
            backlog: VecDeque::new(),
            backlog_audio: 0,
            lost: 0,
        }
    }

    /// Stream time (ms) of `secs` of the current connection's audio.
    fn ms(&self, secs: f64) -> u64 {
        let secs = if secs.is_finite() { secs.max(0.0) } else { 0.0 };
        ((self.base as f64 + secs * BYTES_PER_SECOND) / BYTES_PER_MS as f64).round() as u64
    }

    /// Stream time (ms) of the end of the audio sent on the current connection.
    fn sent_ms(&self) -> u64 {
        (self.base + self.sent) / BYTES_PER_MS
    }

    fn queue(&mut self, item: Pending) {
        if let Pending::Audio(bytes) = &item {
            self.backlog_audio += bytes.len();
        }
        self.backlog.push_back(item);
        if !self.connected {
            self.trim_backlog();
        }
    }

    /// Drops the oldest buffered audio beyond the cap: it is lost, and the next connection
    /// starts that much later on the stream.
    fn trim_backlog(&mut self) {
        while self.backlog_audio > self.cap {
            let excess = self.backlog_audio - self.cap;
            let dropped = match self.backlog.front_mut() {
                Some(Pending::Audio(bytes)) if bytes.len() > excess => {
                    bytes.drain(..excess);
                    excess
                }
                Some(Pending::Audio(bytes)) => {
                    let n = bytes.len();
                    self.backlog.pop_front();
                    n
                }
                // A flush of audio that is gone means nothing any more.
                Some(Pending::Finalize) => {
                    self.backlog.pop_front();
                    0
                }
                None => break,
            };
            self.backlog_audio -= dropped;
            self.base += dropped as u64;
            self.lost += dropped as u64;
        }
    }

    fn next_pending(&mut self) -> Option<Pending> {
        let item = self.backlog.pop_front()?;
        if let Pending::Audio(bytes) = &item {
            self.backlog_audio -= bytes.len();
        }
        Some(item)
    }

    /// `item` could not be sent: it goes out first on the next connection.
    fn unsend(&mut self, item: Pending) {
        if let Pending::Audio(bytes) = &item {
            self.backlog_audio += bytes.len();
        }
        self.backlog.push_front(item);
    }

    fn sent_audio(&mut self, bytes: &[u8]) {
        self.sent += bytes.len() as u64;
        self.unfinal.extend(bytes);
        if self.unfinal.len() > self.cap {
            let excess = self.unfinal.len() - self.cap;
            self.unfinal.drain(..excess);
        }
    }

    /// A final result covers the connection's audio up to `end_secs`.
    fn finalized_to(&mut self, end_secs: f64) {
        if !end_secs.is_finite() || end_secs <= 0.0 {
            return;
        }
        let end = ((end_secs * BYTES_PER_SECOND).round() as u64).min(self.sent);
        if end <= self.finalized {
            return;
        }
        self.finalized = end;
        let unfinal_start = self.sent - self.unfinal.len() as u64;
        if end > unfinal_start {
            let n = usize::try_from(end - unfinal_start).unwrap_or(usize::MAX);
            self.unfinal.drain(..n.min(self.unfinal.len()));
        }
    }

    /// The connection is gone: what it had not finalized goes back to the front of the
    /// backlog, and the next connection starts where that audio starts.
    fn disconnected(&mut self) {
        self.connected = false;
        let unfinal_start = self.sent - self.unfinal.len() as u64;
        // Sent, never finalized, and no longer kept: not transcribed.
        self.lost += unfinal_start.saturating_sub(self.finalized);
        self.base += unfinal_start;
        let replay: Vec<u8> = self.unfinal.drain(..).collect();
        self.backlog_audio += replay.len();
        for frame in replay.chunks(REPLAY_FRAME).rev() {
            self.backlog.push_front(Pending::Audio(frame.to_vec()));
        }
        self.sent = 0;
        self.finalized = 0;
        self.trim_backlog();
    }

    fn connected(&mut self) {
        self.connected = true;
    }

    /// Audio lost since the last call, ms.
    fn take_lost_ms(&mut self) -> u64 {
        std::mem::take(&mut self.lost) / BYTES_PER_MS
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// The stream is over (closed normally, or nobody reads its events).
    Done,
    /// The connection dropped or stalled: reconnect.
    Lost { cause: Cause, reason: String },
    /// The server refused our audio; a new connection would be refused too.
    Fatal(String),
}

/// What happened to a lost connection (the `cause` label of the reconnect metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// The server closed it.
    Closed,
    /// It broke (reset, EOF without a close frame).
    Lost,
    /// Nothing arrived from it for the stall timeout.
    Stalled,
}

impl Cause {
    fn as_str(self) -> &'static str {
        match self {
            Cause::Closed => "closed",
            Cause::Lost => "lost",
            Cause::Stalled => "stalled",
        }
    }
}

/// How a reconnect ended.
enum Reconnect {
    /// Boxed: a socket is large and this is rare.
    Connected(Box<Ws>),
    Failed(String),
    /// The stream ended meanwhile (closed by the session, nobody reads its events).
    Abandoned,
}

/// One stream's task.
pub(super) struct StreamTask {
    shared: Arc<Shared>,
    /// The handshake URL, the same for every connection (its `tag` names the call).
    url: String,
    input: mpsc::Receiver<SttInput>,
    events: mpsc::Sender<SttEvent>,
    timeline: Timeline,
    /// Reconnects made so far.
    reconnects: u32,
    /// The session sent `Close` or dropped its sender: flush and end, never reconnect again.
    closing: bool,
}

impl StreamTask {
    pub(super) fn new(
        shared: Arc<Shared>,
        url: String,
        input: mpsc::Receiver<SttInput>,
        events: mpsc::Sender<SttEvent>,
    ) -> Self {
        let timeline = Timeline::new(shared.config.reconnect_buffer);
        StreamTask {
            shared,
            url,
            input,
            events,
            timeline,
            reconnects: 0,
            closing: false,
        }
    }

    /// Serves the stream until it closes or gives up; dropping `self` at the end closes the
    /// event channel.
    pub(super) async fn run(mut self, mut ws: Ws) {
        loop {
            let end = if self.closing {
                self.close(&mut ws).await
            } else {
                self.serve(&mut ws).await
            };
            let (cause, reason) = match end {
                End::Done => return,
                End::Fatal(reason) => return self.fail(reason).await,
                End::Lost { cause, reason } => (cause, reason),
            };
            drop(ws);
            if cause == Cause::Stalled {
                if let Some(m) = &self.shared.metrics {
                    m.stalls.inc();
                }
            }
            let max = self.shared.config.max_reconnects;
            if self.reconnects >= max {
                return self
                    .fail(format!("{reason}; gave up after {max} reconnects"))
                    .await;
            }
            warn!(%reason, at_ms = self.timeline.sent_ms(), "deepgram connection lost; reconnecting");
            self.timeline.disconnected();
            ws = match self.reconnect().await {
                Reconnect::Connected(ws) => *ws,
                Reconnect::Failed(why) => {
                    return self
                        .fail(format!("{reason}; reconnect failed: {why}"))
                        .await
                }
                Reconnect::Abandoned => {
                    info!("deepgram stream ended while reconnecting");
                    return;
                }
            };
            self.reconnects += 1;
            self.timeline.connected();
            let gap_ms = self.timeline.take_lost_ms();
            if let Some(m) = &self.shared.metrics {
                m.reconnects.with_label_values(&[cause.as_str()]).inc();
                m.lost_ms.inc_by(gap_ms);
            }
            info!(%reason, gap_ms, reconnects = self.reconnects, "deepgram stream reconnected");
            if !self.emit(SttEvent::Reconnected { gap_ms, reason }).await {
                return;
            }
        }
    }

    /// The healthy state: audio out, results in, keepalives and pings on timers.
    async fn serve(&mut self, ws: &mut Ws) -> End {
        let config = &self.shared.config;
        let keepalive = config.keepalive_interval;
        let stall = config.stall_timeout;
        // A third of the stall timeout: two pings may go unanswered before it is a stall.
        let ping_every = (stall / 3).max(Duration::from_millis(10));
        let started = Instant::now();
        // Anything from the server: results, pongs, pings.
        let mut last_heard = started;
        // Audio or a KeepAlive.
        let mut last_kept_alive = started;
        let mut next_ping = started + ping_every;
        let mut pings: u64 = 0;
        loop {
            match self.flush(ws).await {
                Ok(true) => last_kept_alive = Instant::now(),
                Ok(false) => {}
                Err(end) => return end,
            }
            let keepalive_at = last_kept_alive + keepalive;
            let stall_at = last_heard + stall;
            let wake = keepalive_at.min(stall_at).min(next_ping);
            tokio::select! {
                frame = ws.next() => {
                    last_heard = Instant::now();
                    match frame {
                        Some(Ok(Message::Text(text))) => {
                            if !self.on_text(text.as_str()).await {
                                return self.abandon(ws).await;
                            }
                        }
                        Some(Ok(Message::Close(frame))) => return closed_by_server(frame),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            return End::Lost {
                                cause: Cause::Lost,
                                reason: format!("connection lost: {e}"),
                            }
                        }
                        None => {
                            return End::Lost {
                                cause: Cause::Lost,
                                reason: "connection lost: ended without a close frame".to_owned(),
                            }
                        }
                    }
                }
                input = self.input.recv() => match input {
                    // Section 2.2: an empty binary frame makes the server close the stream.
                    Some(SttInput::Audio(bytes)) if bytes.is_empty() => {}
                    Some(SttInput::Audio(bytes)) => self.timeline.queue(Pending::Audio(bytes)),
                    Some(SttInput::Finalize) => self.timeline.queue(Pending::Finalize),
                    Some(SttInput::Close) | None => {
                        self.closing = true;
                        return self.close(ws).await;
                    }
                },
                () = self.events.closed() => return self.abandon(ws).await,
                () = sleep_until(wake) => {
                    let now = Instant::now();
                    if now >= stall_at {
                        return End::Lost {
                            cause: Cause::Stalled,
                            reason: format!("stalled {} ms", stall.as_millis()),
                        };
                    }
                    if now >= keepalive_at {
                        let keep = Message::text(Control::KeepAlive.json());
                        if let Err(end) = send(ws, keep, stall).await {
                            return end;
                        }
                        last_kept_alive = now;
                    }
                    if now >= next_ping {
                        pings += 1;
                        let ping = Message::Ping(pings.to_be_bytes().to_vec().into());
                        if let Err(end) = send(ws, ping, stall).await {
                            return end;
                        }
                        next_ping = now + ping_every;
                    }
                }
            }
        }
    }

    /// Sends the backlog; `Ok(true)` if audio went out.
    async fn flush(&mut self, ws: &mut Ws) -> Result<bool, End> {
        let bound = self.shared.config.stall_timeout;
        let mut audio = false;
        while let Some(item) = self.timeline.next_pending() {
            let message = match &item {
                Pending::Audio(bytes) => Message::binary(bytes.clone()),
                Pending::Finalize => Message::text(Control::Finalize.json()),
            };
            if let Err(end) = send(ws, message, bound).await {
                self.timeline.unsend(item);
                return Err(end);
            }
            if let Pending::Audio(bytes) = &item {
                self.timeline.sent_audio(bytes);
                audio = true;
            }
        }
        Ok(audio)
    }

    /// The session is done: send what is queued and `CloseStream`, pass on the last results
    /// until the server closes (bounded), then end. A connection lost now is not replaced.
    async fn close(&mut self, ws: &mut Ws) -> End {
        let deadline = Instant::now() + CLOSE_WAIT;
        let bound = self.shared.config.stall_timeout;
        let sent = match self.flush(ws).await {
            Ok(_) => send(ws, Message::text(Control::CloseStream.json()), bound).await,
            Err(end) => Err(end),
        };
        if let Err(end) = sent {
            warn!(
                ?end,
                "deepgram connection lost while closing; last results lost"
            );
            return End::Done;
        }
        loop {
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        if !self.on_text(text.as_str()).await {
                            break;
                        }
                    }
                    // tungstenite has queued the reply; the next read sends it, and the
                    // server then ends the connection.
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return End::Done,
                },
                () = sleep_until(deadline) => {
                    warn!("deepgram did not close the stream within {} s", CLOSE_WAIT.as_secs());
                    break;
                }
            }
        }
        let _ = timeout(Duration::from_millis(500), ws.close(None)).await;
        End::Done
    }

    /// Nobody reads the events any more: close without waiting for results.
    async fn abandon(&mut self, ws: &mut Ws) -> End {
        debug!("deepgram stream abandoned by its reader");
        let _ = timeout(Duration::from_millis(500), ws.close(None)).await;
        End::Done
    }

    /// Opens a new connection while still draining the session's input into the backlog.
    async fn reconnect(&mut self) -> Reconnect {
        let shared = self.shared.clone();
        let url = self.url.clone();
        let connecting = async move { shared.connect(&url).await };
        tokio::pin!(connecting);
        let mut give_up_at = self.closing.then(|| Instant::now() + CLOSE_WAIT);
        loop {
            tokio::select! {
                result = &mut connecting => {
                    return match result {
                        Ok(ws) => Reconnect::Connected(Box::new(ws)),
                        Err(e) => Reconnect::Failed(e.to_string()),
                    };
                }
                input = self.input.recv(), if !self.closing => match input {
                    Some(SttInput::Audio(bytes)) if bytes.is_empty() => {}
                    Some(SttInput::Audio(bytes)) => self.timeline.queue(Pending::Audio(bytes)),
                    Some(SttInput::Finalize) => self.timeline.queue(Pending::Finalize),
                    // Still worth a short wait: the buffered audio may hold the last words.
                    Some(SttInput::Close) | None => {
                        self.closing = true;
                        give_up_at = Some(Instant::now() + CLOSE_WAIT);
                    }
                },
                () = at(give_up_at) => return Reconnect::Abandoned,
                () = self.events.closed() => return Reconnect::Abandoned,
            }
        }
    }

    /// Turns one server message into events; `false` when nobody reads them any more.
    async fn on_text(&mut self, text: &str) -> bool {
        let message = match serde_json::from_str::<ServerMessage>(text) {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "unreadable deepgram message ignored");
                return true;
            }
        };
        match message {
            ServerMessage::Results(r) => {
                let start = r.start.unwrap_or(0.0);
                let end = start + r.duration.unwrap_or(0.0);
                let is_final = r.is_final.unwrap_or(false);
                let best = r
                    .channel
                    .and_then(|c| c.alternatives)
                    .and_then(|a| a.into_iter().next())
                    .unwrap_or_default();
                let confidence = best.confidence.unwrap_or(0.0);
                let event = SttEvent::Transcript {
                    text: best.transcript.unwrap_or_default(),
                    is_final,
                    speech_final: is_final && r.speech_final.unwrap_or(false),
                    confidence: if confidence.is_finite() {
                        confidence.clamp(0.0, 1.0) as f32
                    } else {
                        0.0
                    },
                    start_ms: self.timeline.ms(start),
                    end_ms: self.timeline.ms(end.max(start)),
                };
                if is_final {
                    self.timeline.finalized_to(end);
                    self.emit(event).await
                } else {
                    self.offer(event)
                }
            }
            ServerMessage::UtteranceEnd(u) => {
                let last_word_end_ms = match u.last_word_end {
                    Some(secs) => self.timeline.ms(secs),
                    None => self.timeline.sent_ms(),
                };
                self.emit(SttEvent::UtteranceEnd { last_word_end_ms }).await
            }
            ServerMessage::SpeechStarted(s) => {
                let at_ms = match s.timestamp {
                    Some(secs) => self.timeline.ms(secs),
                    None => self.timeline.sent_ms(),
                };
                self.emit(SttEvent::SpeechStarted { at_ms }).await
            }
            ServerMessage::Metadata(m) => {
                debug!(request_id = ?m.request_id, duration = ?m.duration, "deepgram metadata");
                true
            }
            ServerMessage::Other => {
                debug!(
                    message = text,
                    "deepgram message of an unknown type ignored"
                );
                true
            }
        }
    }

    /// Hands over an event that must not be lost (waits for room).
    async fn emit(&self, event: SttEvent) -> bool {
        self.events.send(event).await.is_ok()
    }

    /// Hands over an event a later one supersedes (an interim result): dropped when the
    /// reader is behind, so the socket is never held up for it.
    fn offer(&self, event: SttEvent) -> bool {
        match self.events.try_send(event) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                debug!("deepgram event channel full; interim result dropped");
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }

    async fn fail(&self, reason: String) {
        warn!(%reason, "deepgram stream gave up");
        if let Some(m) = &self.shared.metrics {
            m.failed.inc();
        }
        let _ = self.events.send(SttEvent::Failed { reason }).await;
    }
}

/// Sends one frame; a send that does not complete within `bound` means the server stopped
/// reading (a stall).
async fn send(ws: &mut Ws, message: Message, bound: Duration) -> Result<(), End> {
    match timeout(bound, ws.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(End::Lost {
            cause: Cause::Lost,
            reason: format!("connection lost: {e}"),
        }),
        Err(_) => Err(End::Lost {
            cause: Cause::Stalled,
            reason: format!("stalled: a send blocked for {} ms", bound.as_millis()),
        }),
    }
}

/// Section 2.3: errors close with a code and a reason (`1011 NET-0000`, `1008 DATA-0000`).
/// Data and protocol errors are ours and would recur on a new connection; anything else
/// (1011, 1001, even an unasked-for 1000) is the vendor's and is reconnected.
fn closed_by_server(frame: Option<CloseFrame>) -> End {
    let (code, reason) = frame
        .map(|f| (u16::from(f.code), f.reason.to_string()))
        .unwrap_or((1005, String::new()));
    let text = if reason.is_empty() {
        format!("closed {code}")
    } else {
        format!("closed {code} {reason}")
    };
    match code {
        1002 | 1003 | 1007 | 1008 => End::Fatal(text),
        _ => End::Lost {
            cause: Cause::Closed,
            reason: text,
        },
    }
}

/// Sleeps until `t`, or forever.
async fn at(t: Option<Instant>) {
    match t {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
