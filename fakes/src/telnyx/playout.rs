//! The play-out of the app's audio on a media stream: `media` queued at 8000 bytes/s (G.711),
//! marks due when the audio queued before them has played, `clear`, and which stretches of the
//! app's audio are audible (decoded in the `stream_bidirectional_codec`, PCMU by default), for
//! the caller scripts and every leg's [`super::CallerTimeline`].

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::audio::FRAME_SAMPLES;
use super::caller::{Edge, Heard};
use super::stream::Encoding;

/// Play-out time of one byte of the app's audio: G.711 at 8 kHz is one byte per sample.
pub(crate) const PLAYOUT_NANOS_PER_BYTE: u64 = 125_000;

/// A 20 ms piece of the app's audio is audible at or above this RMS (16-bit scale): -50 dBFS,
/// above comfort noise (about -63) and below any speech.
pub(crate) const AUDIBLE_RMS: f64 = 104.0;

/// Audible pieces of the play-out closer than this form one stretch: the gaps between an
/// agent's words (the fake Cartesia leaves 60 ms per space) do not end its reply.
pub(crate) const AUDIBLE_BRIDGE: Duration = Duration::from_millis(100);

/// The app's audio waiting to "play", the marks behind it, and its audible stretches.
#[derive(Default)]
pub(crate) struct Playout {
    pub(crate) busy_until: Option<Instant>,
    pub(crate) marks: VecDeque<(Instant, String)>,
    /// Audible stretches of the queued audio, in play order, not yet reported as ended; the
    /// front one may be playing. Each is reported started once its start has passed, and ended
    /// once no later audio can join it any more.
    pub(crate) loud: VecDeque<Loud>,
    /// Start of the latest stretch reported started.
    pub(crate) last_start: Option<Instant>,
    /// End of the latest stretch reported ended.
    pub(crate) last_end: Option<Instant>,
}

/// One audible stretch of the play-out.
pub(crate) struct Loud {
    pub(crate) start: Instant,
    pub(crate) end: Instant,
    /// Its start has been reported.
    pub(crate) reported: bool,
    /// Cut off by a `clear` or the end of the stream: final, nothing joins it.
    pub(crate) cut: bool,
}

impl Playout {
    /// Queues `audio` behind what is queued; `codec` tells its audible pieces from silence.
    pub(crate) fn queue_audio(&mut self, audio: &[u8], codec: Option<Encoding>, now: Instant) {
        let mut at = self.busy_until.filter(|t| *t > now).unwrap_or(now);
        for piece in audio.chunks(FRAME_SAMPLES) {
            let end = at + Duration::from_nanos(piece.len() as u64 * PLAYOUT_NANOS_PER_BYTE);
            if audible(piece, codec) {
                self.add_loud(at, end);
            }
            at = end;
        }
        self.busy_until = Some(at);
    }

    pub(crate) fn add_loud(&mut self, start: Instant, end: Instant) {
        match self.loud.back_mut() {
            Some(last) if !last.cut && start < last.end + AUDIBLE_BRIDGE => {
                last.end = last.end.max(end);
            }
            _ => self.loud.push_back(Loud {
                start,
                end,
                reported: false,
                cut: false,
            }),
        }
    }

    /// Queues a mark; returns it if it is due right away. A mark never overtakes an earlier one.
    pub(crate) fn queue_mark(&mut self, name: String, now: Instant) -> Option<String> {
        let after_audio = self.busy_until.filter(|t| *t > now);
        let after_marks = self.marks.back().map(|(due, _)| *due);
        match after_audio.max(after_marks) {
            None => Some(name),
            Some(due) => {
                self.marks.push_back((due, name));
                None
            }
        }
    }

    pub(crate) fn due(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        while self.marks.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, name)) = self.marks.pop_front() {
                due.push(name);
            }
        }
        due
    }

    pub(crate) fn clear(&mut self, now: Instant) -> Vec<String> {
        self.busy_until = None;
        self.cut(now);
        self.marks.drain(..).map(|(_, name)| name).collect()
    }

    /// Nothing plays after `now`: stretches not begun are dropped, the one playing ends now.
    pub(crate) fn cut(&mut self, now: Instant) {
        self.loud.retain(|l| l.start < now);
        if let Some(last) = self.loud.back_mut() {
            last.end = last.end.min(now);
            last.cut = true;
        }
    }

    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.marks.front().map(|(t, _)| *t)
    }

    /// The starts and ends of audible stretches that have become certain by `now`, in order.
    pub(crate) fn advance(&mut self, now: Instant) -> Vec<Edge> {
        let mut edges = Vec::new();
        while let Some(front) = self.loud.front_mut() {
            if front.start > now {
                break;
            }
            if !front.reported {
                front.reported = true;
                self.last_start = Some(front.start);
                edges.push(Edge::Started(front.start));
            }
            let settled = if front.cut {
                front.end <= now
            } else {
                front.end + AUDIBLE_BRIDGE <= now
            };
            if !settled {
                break;
            }
            self.last_end = Some(front.end);
            edges.push(Edge::Stopped(front.end));
            self.loud.pop_front();
        }
        edges
    }

    /// What the caller hears at `now`.
    pub(crate) fn heard(&self, now: Instant) -> Heard {
        let mut heard = Heard {
            playing: false,
            last_start: self.last_start,
            last_audible: self.last_end,
        };
        for loud in self.loud.iter().take_while(|l| l.start <= now) {
            heard.last_start = Some(loud.start);
            if now < loud.end {
                heard.playing = true;
                heard.last_audible = Some(now);
            } else {
                heard.last_audible = Some(loud.end);
            }
        }
        heard
    }
}

/// A piece of the app's audio is audible: loud enough, or in a codec the fake cannot decode.
pub(crate) fn audible(piece: &[u8], codec: Option<Encoding>) -> bool {
    let Some(codec) = codec else {
        return !piece.is_empty();
    };
    if piece.is_empty() {
        return false;
    }
    let energy: f64 = piece
        .iter()
        .map(|&b| f64::from(codec.decode(b)).powi(2))
        .sum();
    (energy / piece.len() as f64).sqrt() >= AUDIBLE_RMS
}
