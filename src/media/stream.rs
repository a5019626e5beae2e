//! A started media stream: a single select loop over inbound frames, paced outbound frames,
//! the handle's queue, a clear signal and the idle timer (vendor-protocols.md §1.5), with the
//! greeting, the echo and the codec conversions.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::{interval, sleep, timeout, Instant, Interval, MissedTickBehavior};
use uuid::Uuid;

use super::audio;
use super::metrics::{kind, MediaMetrics};
use super::registry::{Outbound, Queued, Shared};
use super::stats::InboundQuality;
use super::{MediaSink, MediaState, MediaStats, StreamEnd, StreamInfo, GREETING_END_MARK};
use crate::clients::telnyx::media_wire::{self as wire, ErrorBody, Inbound, MediaRef};

/// A write that takes longer than this means the peer stopped reading (100 frames of slack at
/// 20 ms): the stream is dropped rather than left to buffer.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Length of the greeting chime.
const GREETING_MS: u32 = 1500;

/// Counts and logs an `error` frame Telnyx sent on the stream (before or after `start`).
pub(super) fn vendor_error(metrics: &MediaMetrics, payload: &ErrorBody) {
    metrics.error(kind::VENDOR_ERROR);
    tracing::warn!(
        code = payload.code,
        title = %payload.title,
        detail = %payload.detail,
        "telnyx reported a media stream error"
    );
}

/// What we can put on the wire for the stream's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Codec {
    Pcmu,
    Pcma,
    /// Reported to the sink as started, but neither greeted nor echoed, and its audio is not
    /// passed on: we have no codec for it.
    Other,
}

impl Codec {
    pub(super) fn of(encoding: &str) -> Self {
        match encoding.trim().to_ascii_lowercase().as_str() {
            "pcmu" | "audio/x-mulaw" | "audio/pcmu" => Codec::Pcmu,
            "pcma" | "audio/x-alaw" | "audio/pcma" => Codec::Pcma,
            _ => Codec::Other,
        }
    }

    fn silence(self) -> u8 {
        match self {
            Codec::Pcma => audio::ALAW_SILENCE,
            Codec::Pcmu | Codec::Other => audio::ULAW_SILENCE,
        }
    }
}

/// Outbound material waiting to be paced out.
enum Local {
    Audio {
        /// Clear epoch it was queued in; a later `clear` drops it.
        epoch: u64,
        /// Already in the stream's codec.
        bytes: Vec<u8>,
        /// How much has been sent.
        pos: usize,
    },
    Mark {
        name: String,
        /// Ours, ending the greeting (a caller's mark may reuse the name).
        greeting_end: bool,
    },
}

#[derive(Debug, Default)]
struct Counts {
    frames_in: u64,
    frames_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    marks_sent: u64,
    marks_acked: u64,
    clears_sent: u64,
    errors: u64,
}

/// A started stream.
pub(super) struct Stream {
    call_id: Uuid,
    stream_id: String,
    sink: Arc<dyn MediaSink>,
    metrics: MediaMetrics,
    echo: bool,
    codec: Codec,
    frame_bytes: usize,
    idle_timeout: Duration,
    rx: mpsc::Receiver<Queued>,
    /// Set if every sender is gone, so the select loop stops polling a closed queue.
    rx_closed: bool,
    shared: Arc<Shared>,
    /// Invariant between loop turns: empty, or audio at the front (leading marks are sent as
    /// soon as they reach the front). New items are only pulled from `rx` when it runs dry, so
    /// the bounded channel, not this deque, absorbs bursts.
    queue: VecDeque<Local>,
    /// Audio queued in an epoch below this was cleared.
    floor: u64,
    /// The greeting owns the output until its end mark is sent: no echo meanwhile.
    greeting: bool,
    /// Greeting-end marks we sent whose echo has not come back. Telnyx echoes marks in the
    /// order they were sent and ours goes out before any handle mark, so the first echo named
    /// [`GREETING_END_MARK`] is ours while this is non-zero, and a handle mark of the same name
    /// is still reported to the sink.
    greeting_marks_pending: u32,
    ticker: Interval,
    quality: InboundQuality,
    counts: Counts,
    started: Instant,
    warned_malformed: bool,
}

impl Stream {
    pub(super) fn new(
        state: &MediaState,
        call_id: Uuid,
        codec: Codec,
        info: &StreamInfo,
        rx: mpsc::Receiver<Queued>,
        shared: Arc<Shared>,
    ) -> Self {
        let frame_ms = state.config.frame_ms.max(1);
        let frame_bytes = usize::try_from(u64::from(info.sample_rate) * frame_ms / 1000)
            .unwrap_or(usize::MAX)
            .max(1);
        let mut ticker = interval(Duration::from_millis(frame_ms));
        // After a pause, resume one frame per period instead of bursting the missed ticks.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let greeting = state.config.greeting && codec != Codec::Other;
        let mut stream = Stream {
            call_id,
            stream_id: info.stream_id.clone(),
            sink: Arc::clone(&state.sink),
            metrics: state.metrics.clone(),
            echo: state.config.echo,
            codec,
            frame_bytes,
            idle_timeout: state.config.idle_timeout,
            rx,
            rx_closed: false,
            shared,
            queue: VecDeque::new(),
            floor: 0,
            greeting,
            greeting_marks_pending: 0,
            ticker,
            quality: InboundQuality::default(),
            counts: Counts::default(),
            started: Instant::now(),
            warned_malformed: false,
        };
        if greeting {
            let chime = audio::greeting_ulaw(info.sample_rate, GREETING_MS);
            stream.queue.push_back(Local::Audio {
                epoch: 0,
                bytes: stream.encode(chime),
                pos: 0,
            });
            stream.queue.push_back(Local::Mark {
                name: GREETING_END_MARK.to_owned(),
                greeting_end: true,
            });
        }
        stream
    }

    /// Runs the stream until it ends; the returned reason goes into the stats.
    pub(super) async fn play(&mut self, socket: &mut WebSocket) -> StreamEnd {
        let idle = sleep(self.idle_timeout);
        tokio::pin!(idle);
        loop {
            let playing = !self.queue.is_empty();
            let pull = !playing && !self.rx_closed;
            // Biased: a clear must overtake the frame that is about to be paced out.
            let step = tokio::select! {
                biased;
                () = self.shared.release.notified() => Err(StreamEnd::Released),
                () = self.shared.clear.notified() => self.clear(socket).await,
                message = socket.next() => {
                    idle.as_mut().reset(Instant::now() + self.idle_timeout);
                    self.inbound(socket, message).await
                }
                _ = self.ticker.tick(), if playing => self.play_frame(socket).await,
                queued = self.rx.recv(), if pull => match queued {
                    Some(queued) => self.accept(socket, queued).await,
                    None => {
                        self.rx_closed = true;
                        Ok(())
                    }
                },
                () = &mut idle => Err(StreamEnd::IdleTimeout),
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    pub(super) fn finish(&self, end: StreamEnd) -> MediaStats {
        MediaStats {
            stream_id: self.stream_id.clone(),
            end,
            frames_in: self.counts.frames_in,
            frames_out: self.counts.frames_out,
            bytes_in: self.counts.bytes_in,
            bytes_out: self.counts.bytes_out,
            gaps: self.quality.gaps(),
            out_of_order: self.quality.out_of_order(),
            jitter_ms: self.quality.jitter_ms(),
            marks_sent: self.counts.marks_sent,
            marks_acked: self.counts.marks_acked,
            clears_sent: self.counts.clears_sent,
            dropped_out: self.shared.dropped.load(Ordering::Relaxed),
            errors: self.counts.errors,
            duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }

    async fn inbound(
        &mut self,
        socket: &mut WebSocket,
        message: Option<Result<Message, axum::Error>>,
    ) -> Result<(), StreamEnd> {
        let text = match message {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Err(StreamEnd::Closed),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Ok(()),
            Some(Ok(Message::Binary(_))) => {
                self.malformed("binary message");
                return Ok(());
            }
            Some(Ok(Message::Text(text))) => text,
        };
        // Media frames (every 20 ms) in one pass without allocating; the rest in full.
        if let Some(media) = wire::media_frame(text.as_str()) {
            return self.media(socket, media).await;
        }
        let frame = match serde_json::from_str::<Inbound>(text.as_str()) {
            Ok(frame) => frame,
            Err(e) => {
                self.malformed(&e.to_string());
                return Ok(());
            }
        };
        match frame {
            Inbound::Media { media } => self.media(socket, media.as_ref()).await,
            Inbound::Dtmf { dtmf } => {
                if !dtmf.digit.is_empty() {
                    self.sink.dtmf(self.call_id, dtmf.digit);
                }
                Ok(())
            }
            Inbound::Mark { mark } => {
                self.counts.marks_acked += 1;
                tracing::debug!(name = %mark.name, "mark played");
                if mark.name == GREETING_END_MARK && self.greeting_marks_pending > 0 {
                    self.greeting_marks_pending -= 1;
                } else {
                    self.sink.mark(self.call_id, mark.name);
                }
                Ok(())
            }
            Inbound::Error { payload } => {
                self.counts.errors += 1;
                vendor_error(&self.metrics, &payload);
                Ok(())
            }
            Inbound::Stop => Err(StreamEnd::Stop),
            Inbound::Start { .. } => {
                tracing::warn!("second start frame ignored");
                Ok(())
            }
            Inbound::Connected { .. } | Inbound::Unknown => Ok(()),
        }
    }

    async fn media(
        &mut self,
        socket: &mut WebSocket,
        media: MediaRef<'_>,
    ) -> Result<(), StreamEnd> {
        // Only the caller's audio is measured; with `both_tracks` Telnyx also reports what it
        // plays, which is our own output.
        if media
            .track
            .is_some_and(|track| track.starts_with("outbound"))
        {
            return Ok(());
        }
        let Ok(bytes) = BASE64.decode(media.payload.as_bytes()) else {
            self.malformed("media payload is not base64");
            return Ok(());
        };
        let arrival_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        self.quality
            .record(media.chunk, media.timestamp, arrival_ms);
        let len = bytes.len();
        self.counts.frames_in += 1;
        self.counts.bytes_in += len as u64;
        self.metrics.frames_in.inc();
        self.metrics.bytes_in.inc_by(len as u64);
        if len == 0 {
            return Ok(());
        }
        if let Some(mulaw) = self.decode(bytes) {
            self.sink.audio(self.call_id, mulaw);
        }
        if self.echo && !self.greeting && self.codec != Codec::Other {
            // Same codec both ways, so the inbound base64 goes back untouched.
            self.send_media(socket, wire::media(&media.payload), len)
                .await?;
        }
        Ok(())
    }

    /// Takes one item from the handle's queue while nothing is playing.
    async fn accept(&mut self, socket: &mut WebSocket, queued: Queued) -> Result<(), StreamEnd> {
        self.enqueue(queued);
        self.flush_marks(socket).await?;
        if !self.queue.is_empty() {
            // Nothing was playing: start now, not up to a frame later.
            self.ticker.reset_immediately();
        }
        Ok(())
    }

    fn enqueue(&mut self, queued: Queued) {
        match queued.item {
            Outbound::Mark(name) => self.queue.push_back(Local::Mark {
                name,
                greeting_end: false,
            }),
            Outbound::Audio(_) if queued.epoch < self.floor => {}
            Outbound::Audio(_) if self.codec == Codec::Other => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                self.shared.dropped_metric.inc();
                tracing::debug!("outbound audio dropped: stream codec has no encoder");
            }
            Outbound::Audio(bytes) => {
                let bytes = self.encode(bytes);
                self.queue.push_back(Local::Audio {
                    epoch: queued.epoch,
                    bytes,
                    pos: 0,
                });
            }
        }
    }

    /// The stream's codec in, μ-law out; `None` for a codec we cannot decode.
    fn decode(&self, mut bytes: Vec<u8>) -> Option<Vec<u8>> {
        match self.codec {
            Codec::Pcmu => Some(bytes),
            Codec::Pcma => {
                for byte in &mut bytes {
                    *byte = audio::alaw_to_ulaw(*byte);
                }
                Some(bytes)
            }
            Codec::Other => None,
        }
    }

    /// μ-law in, the stream's codec out.
    fn encode(&self, mut mulaw: Vec<u8>) -> Vec<u8> {
        if self.codec == Codec::Pcma {
            for byte in &mut mulaw {
                *byte = audio::ulaw_to_alaw(*byte);
            }
        }
        mulaw
    }

    /// Sends one paced frame, topping it up from the handle's queue so consecutive chunks play
    /// without padding between them; pads with silence only where the audio runs out or a mark
    /// follows.
    async fn play_frame(&mut self, socket: &mut WebSocket) -> Result<(), StreamEnd> {
        let mut frame = Vec::with_capacity(self.frame_bytes);
        while frame.len() < self.frame_bytes {
            if self.queue.is_empty() {
                match self.rx.try_recv() {
                    Ok(queued) => {
                        self.enqueue(queued);
                        continue;
                    }
                    Err(_) => break,
                }
            }
            let Some(Local::Audio { bytes, pos, .. }) = self.queue.front_mut() else {
                break;
            };
            let take = (bytes.len() - *pos).min(self.frame_bytes - frame.len());
            frame.extend_from_slice(&bytes[*pos..*pos + take]);
            *pos += take;
            if *pos == bytes.len() {
                self.queue.pop_front();
            }
        }
        if !frame.is_empty() {
            frame.resize(self.frame_bytes, self.codec.silence());
            self.send_media(socket, wire::media_of(&frame), frame.len())
                .await?;
        }
        self.flush_marks(socket).await
    }

    /// Sends the marks at the front of the queue: the audio before them has been sent.
    async fn flush_marks(&mut self, socket: &mut WebSocket) -> Result<(), StreamEnd> {
        while matches!(self.queue.front(), Some(Local::Mark { .. })) {
            if let Some(Local::Mark { name, greeting_end }) = self.queue.pop_front() {
                self.send(socket, wire::mark(&name)).await?;
                self.counts.marks_sent += 1;
                if greeting_end {
                    self.greeting = false;
                    self.greeting_marks_pending += 1;
                }
            }
        }
        Ok(())
    }

    /// Handles `MediaHandle::clear`: tells Telnyx, drops audio queued before the clear (here
    /// and still in the channel), keeps marks so each one is still answered.
    async fn clear(&mut self, socket: &mut WebSocket) -> Result<(), StreamEnd> {
        let epoch = self.shared.epoch.load(Ordering::SeqCst);
        if epoch <= self.floor {
            return Ok(());
        }
        self.floor = epoch;
        let floor = epoch;
        self.queue
            .retain(|item| !matches!(item, Local::Audio { epoch, .. } if *epoch < floor));
        while let Ok(queued) = self.rx.try_recv() {
            let fresh = queued.epoch >= floor;
            self.enqueue(queued);
            if fresh {
                break;
            }
        }
        self.send(socket, wire::clear()).await?;
        self.counts.clears_sent += 1;
        self.flush_marks(socket).await?;
        if !self.queue.is_empty() {
            self.ticker.reset_immediately();
        }
        Ok(())
    }

    async fn send_media(
        &mut self,
        socket: &mut WebSocket,
        frame: String,
        len: usize,
    ) -> Result<(), StreamEnd> {
        self.send(socket, frame).await?;
        let len = len as u64;
        self.counts.frames_out += 1;
        self.counts.bytes_out += len;
        self.metrics.frames_out.inc();
        self.metrics.bytes_out.inc_by(len);
        Ok(())
    }

    async fn send(&self, socket: &mut WebSocket, text: String) -> Result<(), StreamEnd> {
        match timeout(WRITE_TIMEOUT, socket.send(Message::Text(text.into()))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "media stream write failed: socket closed");
                Err(StreamEnd::Closed)
            }
            Err(_) => {
                self.metrics.error(kind::WRITE_FAILED);
                tracing::warn!("media stream write timed out: dropping the peer");
                Err(StreamEnd::WriteFailed)
            }
        }
    }

    fn malformed(&mut self, why: &str) {
        self.counts.errors += 1;
        self.metrics.error(kind::MALFORMED);
        // One warning per stream: a peer sending garbage at 50 frames/s must not flood logs.
        if self.warned_malformed {
            tracing::debug!(why, "malformed media frame");
        } else {
            self.warned_malformed = true;
            tracing::warn!(why, "malformed media frame (further ones at debug level)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_names() {
        assert_eq!(Codec::of("PCMU"), Codec::Pcmu);
        assert_eq!(Codec::of("audio/x-mulaw"), Codec::Pcmu);
        assert_eq!(Codec::of("PCMA"), Codec::Pcma);
        assert_eq!(Codec::of("L16"), Codec::Other);
        assert_eq!(Codec::of("OPUS"), Codec::Other);
    }
}
