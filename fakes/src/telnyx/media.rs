//! The media stream of a leg (section 1.5): the fake is the WebSocket *client*, connecting to
//! the app's `stream_url` as Telnyx does, sending `connected`, `start`, paced `media` frames of
//! speech-like audio, `dtmf` and `stop`, and playing back what the app sends: `media` is queued
//! at 8000 bytes/s (G.711), a `mark` is echoed when the audio queued before it has played,
//! `clear` flushes the queue and echoes the pending marks.
//!
//! A leg with a [`super::CallerScript`] streams what its script says instead of the endless
//! talk/pause cycle ([`super::caller`]); for that, and for every leg's
//! [`super::CallerTimeline`], the play-out also tracks which stretches of the app's audio are
//! audible, decoding it in the `stream_bidirectional_codec` (PCMU by default).
//!
//! Pacing uses `tokio::time::interval` with `MissedTickBehavior::Delay`: after a stall (a
//! loaded load-test box) frames resume at the normal rate instead of bursting to catch up, as
//! a real RTP source would; media timestamps count 20 ms per frame of audio, not wall time.
//!
//! Only `ws://` works: the crate's tungstenite is built without TLS, so a `wss://` URL ends in
//! `streaming.failed`. Only PCMU and PCMA at 8 kHz are generated.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::Utc;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use super::audio::{SpeechLike, FRAME_SAMPLES};
use super::caller::{Act, Performer, Timeline};
use super::playout::Playout;
use super::state::{rfc3339, MediaStats, Shared, State};
use super::stream::{StreamCtrl, StreamParams, StreamSlot};
use super::LegState;
use super::{actions, far_end};

/// Audio per media frame, whatever the pacing.
const FRAME_MS: u64 = 20;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait for the app's close reply after our close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

const MALFORMED_FRAME: (u32, &str, &str) = (
    100_003,
    "malformed_frame",
    "Received frame was not formed correctly",
);

const INVALID_MEDIA: (u32, &str, &str) = (
    100_004,
    "invalid_media",
    "Received media payload was not valid base64",
);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a stream on the leg: the task connects, then reports `streaming.started` (or
/// `streaming.failed`). Sending `streaming.started` only once connected, rather than on the
/// command, keeps "started" truthful; the doc only asks that it precede the `start` frame.
pub(crate) fn start(
    shared: &Arc<Shared>,
    st: &mut State,
    call_control_id: &str,
    params: StreamParams,
) {
    let Some(leg) = st.legs.get_mut(call_control_id) else {
        return;
    };
    let stream_id = Uuid::new_v4().to_string().to_uppercase();
    let (ctrl, ctrl_rx) = mpsc::unbounded_channel();
    leg.stream = Some(StreamSlot {
        stream_id: stream_id.clone(),
        url: params.url.clone(),
        ctrl,
        connected: false,
    });
    leg.media.stream_id = Some(stream_id.clone());
    let start = json!({
        "user_id": shared.user_id,
        "call_control_id": leg.call_control_id,
        "call_session_id": leg.call_session_id,
        "from": leg.from,
        "to": leg.to,
        "tags": [],
        "client_state": leg.client_state,
        "custom_parameters": params.custom_parameters,
        "media_format": {"encoding": params.encoding.name(), "sample_rate": 8000, "channels": 1},
    });
    let session = Session {
        shared: shared.clone(),
        call_control_id: call_control_id.to_owned(),
        stream_id,
        params,
        seq: 0,
    };
    shared.spawn(session.run(start, ctrl_rx));
}

/// Stops the leg's stream, if any: `streaming.stopped` if it had started, and the task sends
/// `stop` and closes.
pub(crate) fn stop(shared: &Shared, st: &mut State, call_control_id: &str) {
    let Some(slot) = st
        .legs
        .get_mut(call_control_id)
        .and_then(|leg| leg.stream.take())
    else {
        return;
    };
    let _ = slot.ctrl.send(StreamCtrl::Stop);
    if slot.connected {
        shared.emit(
            st,
            call_control_id,
            "streaming.stopped",
            json!({"stream_url": slot.url}),
        );
    }
}

/// How a stream ended.
enum End {
    /// We stopped it (hangup or `streaming_stop`).
    Stopped,
    /// The socket failed or the app closed it while the call was up.
    Failed(String),
}

/// Where the far party's audio comes from.
enum Source {
    /// No script: the talk/pause cycle forever.
    Endless(SpeechLike),
    /// The leg's caller script.
    Scripted(Performer),
}

/// One stream's task.
struct Session {
    shared: Arc<Shared>,
    call_control_id: String,
    stream_id: String,
    params: StreamParams,
    /// Last `sequence_number` sent (`start` is 1).
    seq: u64,
}

impl Session {
    async fn run(mut self, start: Value, mut ctrl: mpsc::UnboundedReceiver<StreamCtrl>) {
        let mut ws = match self.connect().await {
            Ok(ws) => ws,
            Err(reason) => {
                self.failed(&reason);
                return;
            }
        };
        if !self.mark_connected() {
            // Stopped (or the call ended) while connecting: nothing was started.
            let _ = ws.close(None).await;
            return;
        }
        let end = self.stream(&mut ws, start, &mut ctrl).await;
        match end {
            End::Stopped => {
                let _ = ws.close(None).await;
                // Let the app's close reply arrive so it sees a clean close, not a reset.
                let _ = tokio::time::timeout(CLOSE_GRACE, async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
            }
            End::Failed(reason) => {
                let _ = ws.close(None).await;
                self.failed(&reason);
            }
        }
        self.with_stats(|m| m.stream_connected = false);
    }

    async fn connect(&self) -> Result<Ws, String> {
        let mut request = self
            .params
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("invalid stream_url: {e}"))?;
        if let Some(token) = &self.params.auth_token {
            let value = HeaderValue::from_str(token)
                .map_err(|e| format!("stream_auth_token is not a valid header value: {e}"))?;
            request
                .headers_mut()
                .insert("x-telnyx-streaming-auth-token", value);
        }
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            // tungstenite zero-fills its whole read buffer (128 KiB by default) on every read.
            tokio_tungstenite::connect_async_with_config(
                request,
                Some(
                    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                        .read_buffer_size(8 * 1024),
                ),
                true,
            ),
        )
        .await
        {
            Ok(Ok((ws, _response))) => Ok(ws),
            Ok(Err(e)) => Err(format!("websocket connection failed: {e}")),
            Err(_) => Err("websocket connection timed out".to_owned()),
        }
    }

    /// Records the stream as up and sends `streaming.started`, unless it was stopped meanwhile.
    fn mark_connected(&self) -> bool {
        let mut st = self.shared.lock();
        let Some(leg) = st.legs.get_mut(&self.call_control_id) else {
            return false;
        };
        if leg.state == LegState::Hangup {
            return false;
        }
        let Some(slot) = leg
            .stream
            .as_mut()
            .filter(|s| s.stream_id == self.stream_id)
        else {
            return false;
        };
        slot.connected = true;
        leg.media.stream_connected = true;
        self.shared.emit(
            &st,
            &self.call_control_id,
            "streaming.started",
            json!({"stream_url": self.params.url}),
        );
        true
    }

    /// Sends `streaming.failed` if this stream is still the leg's current one (a stream we
    /// stopped is not a failure) and the call is up; the call stays up.
    fn failed(&self, reason: &str) {
        let mut st = self.shared.lock();
        let Some(leg) = st.legs.get_mut(&self.call_control_id) else {
            return;
        };
        if leg
            .stream
            .as_ref()
            .is_none_or(|s| s.stream_id != self.stream_id)
        {
            return;
        }
        leg.stream = None;
        leg.media.stream_connected = false;
        if leg.state == LegState::Hangup {
            return;
        }
        tracing::debug!(call_control_id = %self.call_control_id, reason, "fake telnyx: media stream failed");
        self.shared.emit(
            &st,
            &self.call_control_id,
            "streaming.failed",
            json!({
                "failure_reason": reason,
                "stream_id": self.stream_id,
                "stream_params": {"stream_url": self.params.url, "track": self.params.track},
                "stream_type": "websocket",
            }),
        );
    }

    fn with_stats(&self, f: impl FnOnce(&mut MediaStats)) {
        let mut st = self.shared.lock();
        if let Some(leg) = st.legs.get_mut(&self.call_control_id) {
            if leg.media.stream_id.as_deref() == Some(self.stream_id.as_str()) {
                f(&mut leg.media);
            }
        }
    }

    fn next_seq(&mut self) -> String {
        self.seq += 1;
        self.seq.to_string()
    }

    async fn stream(
        &mut self,
        ws: &mut Ws,
        start: Value,
        ctrl: &mut mpsc::UnboundedReceiver<StreamCtrl>,
    ) -> End {
        let mut connected = json!({"event": "connected", "version": "1.0.0"});
        if let (true, Some(token)) = (
            self.shared.cfg.auth_token_in_connected_frame,
            &self.params.auth_token,
        ) {
            connected["connected"] = json!({"x-telnyx-streaming-auth-token": token});
        }
        if let Err(e) = send(ws, &connected).await {
            return End::Failed(e);
        }
        let start = json!({
            "event": "start",
            "sequence_number": self.next_seq(),
            "stream_id": self.stream_id,
            "start": start,
        });
        if let Err(e) = send(ws, &start).await {
            return End::Failed(e);
        }
        let mut source = self.begin_timeline();
        let mut playout = Playout::default();
        let end = self.pump(ws, ctrl, &mut source, &mut playout).await;
        self.end_timeline(&mut source, &mut playout);
        end
    }

    /// Opens the leg's timeline (the first stream's start is its origin) and picks the audio
    /// source: the leg's script, once; an empty script for later streams of a scripted leg;
    /// the endless cycle for a leg without a script.
    fn begin_timeline(&self) -> Source {
        let seed = self
            .stream_id
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31) ^ u32::from(b));
        let now = Instant::now();
        let script = {
            let mut st = self.shared.lock();
            match st.legs.get_mut(&self.call_control_id) {
                Some(leg) => {
                    leg.timeline.get_or_insert_with(|| Timeline::new(now));
                    let taken = leg
                        .script
                        .as_mut()
                        .map(|s| (std::mem::take(s), leg.script_next));
                    if taken.is_some() {
                        leg.script_holder = Some(self.stream_id.clone());
                    }
                    taken
                }
                None => None,
            }
        };
        match script {
            Some((script, next)) => {
                Source::Scripted(Performer::new(script, seed).starting_at(next))
            }
            None => Source::Endless(SpeechLike::new(seed)),
        }
    }

    /// The stream is over: audio still playing stops now and a running step is interrupted.
    fn end_timeline(&self, source: &mut Source, playout: &mut Playout) {
        let now = Instant::now();
        playout.cut(now);
        let edges = playout.advance(now);
        let mut acts = Vec::new();
        if let Source::Scripted(performer) = source {
            performer.interrupt(&mut acts);
            // What the script has not done yet waits for the leg's next stream.
            let mut st = self.shared.lock();
            if let Some(leg) = st.legs.get_mut(&self.call_control_id) {
                if leg.script_holder.as_deref() == Some(self.stream_id.as_str()) {
                    leg.script_holder = None;
                    if let Some((rest, next)) = performer.rest() {
                        leg.script = Some(rest);
                        leg.script_next = next;
                    }
                }
            }
        }
        self.with_timeline(|t| {
            for edge in edges {
                t.agent_audio(edge);
            }
            for act in &acts {
                t.act(act, now);
            }
            t.stopped(now);
        });
    }

    /// Records play-out edges that became certain by `now`.
    fn note_playout(&self, playout: &mut Playout, now: Instant) {
        let edges = playout.advance(now);
        if !edges.is_empty() {
            self.with_timeline(|t| {
                for edge in edges {
                    t.agent_audio(edge);
                }
            });
        }
    }

    /// Carries out what the script did this frame: timeline records, DTMF, hangup.
    fn perform(&self, acts: Vec<Act>, now: Instant) {
        let mut st = self.shared.lock();
        let current = st
            .legs
            .get(&self.call_control_id)
            .is_some_and(|leg| leg.media.stream_id.as_deref() == Some(self.stream_id.as_str()));
        if !current {
            return;
        }
        for act in acts {
            if let Some(t) = st
                .legs
                .get_mut(&self.call_control_id)
                .and_then(|leg| leg.timeline.as_mut())
            {
                t.act(&act, now);
            }
            match act {
                Act::Dtmf(digit) => {
                    actions::send_dtmf(&self.shared, &mut st, &self.call_control_id, digit);
                }
                Act::Hangup => {
                    far_end::far_end_hangs_up(&self.shared, &mut st, &self.call_control_id)
                }
                Act::Began { .. } | Act::Ended { .. } => {}
            }
        }
    }

    fn with_timeline(&self, f: impl FnOnce(&mut Timeline)) {
        let mut st = self.shared.lock();
        if let Some(leg) = st.legs.get_mut(&self.call_control_id) {
            if leg.media.stream_id.as_deref() == Some(self.stream_id.as_str()) {
                if let Some(t) = leg.timeline.as_mut() {
                    f(t);
                }
            }
        }
    }

    async fn pump(
        &mut self,
        ws: &mut Ws,
        ctrl: &mut mpsc::UnboundedReceiver<StreamCtrl>,
        source: &mut Source,
        playout: &mut Playout,
    ) -> End {
        let tracks: &[&str] = match self.params.track.as_str() {
            "outbound_track" => &["outbound"],
            "both_tracks" => &["inbound", "outbound"],
            _ => &["inbound"],
        };
        // What the far party hears is the app's audio, which the fake does not mix back in;
        // the outbound track carries encoded silence.
        let silence = BASE64.encode(self.params.encoding.encode(&[0; FRAME_SAMPLES]));
        // `interval` panics on a zero period; 1 ms is as fast as anyone could mean.
        let period = self
            .shared
            .cfg
            .media_frame_interval
            .max(Duration::from_millis(1));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut chunk: u64 = 0;

        loop {
            let next_mark = playout.next_due();
            tokio::select! {
                _ = ticker.tick() => {
                    let now = Instant::now();
                    self.note_playout(playout, now);
                    let audio = match source {
                        Source::Endless(voice) => Some(voice.next_frame()),
                        Source::Scripted(performer) => {
                            let mut acts = Vec::new();
                            let audio = performer.tick(now, playout.heard(now), &mut acts);
                            if !acts.is_empty() {
                                self.perform(acts, now);
                            }
                            audio
                        }
                    };
                    // A caller who hung up sends nothing while the stop is on its way.
                    let Some(audio) = audio else {
                        continue;
                    };
                    chunk += 1;
                    let timestamp = ((chunk - 1) * FRAME_MS).to_string();
                    for track in tracks {
                        let payload = if *track == "inbound" {
                            BASE64.encode(self.params.encoding.encode(&audio))
                        } else {
                            silence.clone()
                        };
                        let frame = json!({
                            "event": "media",
                            "sequence_number": self.next_seq(),
                            "stream_id": self.stream_id,
                            "media": {
                                "track": track,
                                "chunk": chunk.to_string(),
                                "timestamp": timestamp,
                                "payload": payload,
                            },
                        });
                        if let Err(e) = send(ws, &frame).await {
                            return End::Failed(e);
                        }
                    }
                    let n = tracks.len() as u64;
                    self.with_stats(|m| m.frames_sent += n);
                }
                incoming = ws.next() => {
                    let result = match incoming {
                        Some(Ok(Message::Text(text))) => {
                            self.on_app_frame(ws, text.as_str(), playout).await
                        }
                        Some(Ok(Message::Binary(_))) => self.send_error(ws, MALFORMED_FRAME).await,
                        Some(Ok(Message::Close(_))) | None => {
                            Err("the media WebSocket was closed by the application".to_owned())
                        }
                        Some(Ok(_)) => Ok(()),
                        Some(Err(e)) => Err(format!("media WebSocket error: {e}")),
                    };
                    if let Err(reason) = result {
                        return End::Failed(reason);
                    }
                }
                command = ctrl.recv() => match command {
                    Some(StreamCtrl::Dtmf(digit)) => {
                        let frame = json!({
                            "event": "dtmf",
                            "stream_id": self.stream_id,
                            "occurred_at": rfc3339(Utc::now()),
                            "sequence_number": self.next_seq(),
                            "dtmf": {"digit": digit.to_string()},
                        });
                        if let Err(e) = send(ws, &frame).await {
                            return End::Failed(e);
                        }
                    }
                    // A closed channel means the leg dropped its slot: stop as well.
                    Some(StreamCtrl::Stop) | None => {
                        let frame = json!({
                            "event": "stop",
                            "sequence_number": self.next_seq(),
                            "stream_id": self.stream_id,
                            "stop": {"user_id": self.shared.user_id, "call_control_id": self.call_control_id},
                        });
                        // The app may already be gone; we are stopping either way.
                        let _ = send(ws, &frame).await;
                        return End::Stopped;
                    }
                },
                () = sleep_until(next_mark) => {
                    for name in playout.due(Instant::now()) {
                        if let Err(e) = self.echo_mark(ws, name).await {
                            return End::Failed(e);
                        }
                    }
                }
            }
        }
    }

    async fn on_app_frame(
        &mut self,
        ws: &mut Ws,
        text: &str,
        playout: &mut Playout,
    ) -> Result<(), String> {
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            return self.send_error(ws, MALFORMED_FRAME).await;
        };
        match frame.get("event").and_then(Value::as_str) {
            Some("media") => {
                let Some(payload) = frame.pointer("/media/payload").and_then(Value::as_str) else {
                    return self.send_error(ws, MALFORMED_FRAME).await;
                };
                let Ok(audio) = BASE64.decode(payload) else {
                    return self.send_error(ws, INVALID_MEDIA).await;
                };
                let len = audio.len();
                self.with_stats(|m| {
                    m.frames_received += 1;
                    m.bytes_received += len as u64;
                });
                playout.queue_audio(&audio, self.params.playback, Instant::now());
                Ok(())
            }
            Some("mark") => {
                let Some(name) = frame.pointer("/mark/name").and_then(Value::as_str) else {
                    return self.send_error(ws, MALFORMED_FRAME).await;
                };
                self.with_stats(|m| m.marks_received += 1);
                match playout.queue_mark(name.to_owned(), Instant::now()) {
                    Some(name) => self.echo_mark(ws, name).await,
                    None => Ok(()),
                }
            }
            Some("clear") => {
                let now = Instant::now();
                self.with_stats(|m| m.clears_received += 1);
                self.with_timeline(|t| t.clear(now));
                let released = playout.clear(now);
                self.note_playout(playout, now);
                for name in released {
                    self.echo_mark(ws, name).await?;
                }
                Ok(())
            }
            _ => self.send_error(ws, MALFORMED_FRAME).await,
        }
    }

    async fn echo_mark(&mut self, ws: &mut Ws, name: String) -> Result<(), String> {
        let frame = json!({
            "event": "mark",
            "stream_id": self.stream_id,
            "sequence_number": self.next_seq(),
            "mark": {"name": name},
        });
        send(ws, &frame).await?;
        let now = Instant::now();
        self.with_stats(|m| m.marks_echoed += 1);
        self.with_timeline(|t| t.mark(&name, now));
        Ok(())
    }

    async fn send_error(
        &mut self,
        ws: &mut Ws,
        (code, title, detail): (u32, &str, &str),
    ) -> Result<(), String> {
        let frame = json!({
            "event": "error",
            "stream_id": self.stream_id,
            "payload": {"code": code, "title": title, "detail": detail},
        });
        send(ws, &frame).await?;
        self.with_stats(|m| m.errors_sent += 1);
        Ok(())
    }
}

async fn send(ws: &mut Ws, frame: &Value) -> Result<(), String> {
    ws.send(Message::text(frame.to_string()))
        .await
        .map_err(|e| format!("media WebSocket send failed: {e}"))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
