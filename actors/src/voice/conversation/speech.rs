//! Agent speech: the utterances (one speech-synthesis context each, with what follows once it
//! is heard), the synthesizer's events, and the audio forwarded to the call in utterance order
//! with a mark after every chunk (what the marks report is `playout`'s concern).

use crate::machine::record::ConversationRecord;
use crate::machine::{EndReason, PhoneNumber};
use crate::ports::voice::TtsEvent;

use super::{Action, Conversation, Micros, MS};

/// Audio bytes per millisecond (μ-law, 8 kHz).
const BYTES_PER_MS: u64 = 8;
/// Past its expected end, an utterance whose marks never came back counts as played (the
/// media stream is gone); its follow-up (a hangup, a transfer) must not hang on it.
const PLAYOUT_GRACE: Micros = 2000 * MS;
/// Spoken-text rate assumed when the synthesiser gives no word timings.
const MS_PER_CHAR: u64 = 65;

/// What an utterance is said for (it decides whether caller speech stops it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Greeting,
    Reply,
    Reprompt,
    Filler,
    Handoff,
    Goodbye,
    Apology,
    Voicemail,
    Resume,
}

impl Kind {
    /// Caller speech stops it.
    pub(super) fn interruptible(self) -> bool {
        matches!(
            self,
            Kind::Greeting | Kind::Reply | Kind::Reprompt | Kind::Filler | Kind::Resume
        )
    }
}

/// What follows an utterance once the caller has heard it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum After {
    Listen,
    Hangup(EndReason),
    Transfer(PhoneNumber),
}

/// One piece of agent speech: one speech-synthesis context, from its text to its play-out.
#[derive(Debug)]
pub(super) struct Utterance {
    pub(super) ctx: String,
    pub(super) kind: Kind,
    pub(super) turn: u32,
    /// Text sent to synthesis so far.
    pub(super) text: String,
    pub(super) input_closed: bool,
    pub(super) tts_done: bool,
    /// Synthesized audio not yet forwarded (an earlier utterance is still synthesizing).
    pub(super) held: Vec<Vec<u8>>,
    /// Audio forwarded to the call, bytes.
    pub(super) sent: u64,
    /// Audio the carrier confirmed played, bytes.
    pub(super) played: u64,
    /// Audio played by its own duration, bytes (kept up to date only while the media stream
    /// does not echo marks).
    pub(super) estimated: u64,
    /// When each forwarded chunk should play: `(start, offset, bytes)`.
    pub(super) schedule: Vec<(Micros, u64, u64)>,
    pub(super) words: Vec<(String, f32, f32)>,
    pub(super) started: Micros,
    /// When its audio should have finished playing, once fully synthesized.
    pub(super) playout_deadline: Option<Micros>,
    /// Audio forwarded since this time (for the expected play-out end).
    pub(super) first_sent_at: Option<Micros>,
    pub(super) after: After,
    pub(super) failed_once: bool,
    /// Already in the model's context (or never to be: a filler phrase).
    pub(super) historied: bool,
}

impl Utterance {
    /// A new utterance of `turn` in a fresh synthesis context, nothing sent to it yet;
    /// followed by listening.
    pub(super) fn new(next_ctx: &mut u32, kind: Kind, turn: u32, now: Micros) -> Utterance {
        *next_ctx += 1;
        Utterance {
            ctx: format!("t{turn}-u{next_ctx}"),
            kind,
            turn,
            text: String::new(),
            input_closed: false,
            tts_done: false,
            held: Vec::new(),
            sent: 0,
            played: 0,
            estimated: 0,
            schedule: Vec::new(),
            words: Vec::new(),
            started: now,
            playout_deadline: None,
            first_sent_at: None,
            after: After::Listen,
            failed_once: false,
            historied: kind == Kind::Filler,
        }
    }

    pub(super) fn finished(&self) -> bool {
        self.tts_done && self.held.is_empty() && self.heard_bytes() >= self.sent
    }

    /// Audio the caller has heard: what the marks confirmed, or what the audio's duration
    /// says has played when the marks do not come back.
    pub(super) fn heard_bytes(&self) -> u64 {
        self.played.max(self.estimated)
    }

    pub(super) fn heard_ms(&self) -> u64 {
        self.heard_bytes() / BYTES_PER_MS
    }

    /// Bytes that have played by `t`, by the audio's duration.
    pub(super) fn played_by(&self, t: Micros) -> u64 {
        self.schedule
            .iter()
            .filter(|(start, _, _)| t > *start)
            .map(|(start, _, len)| ((t - start) * BYTES_PER_MS / MS).min(*len))
            .sum()
    }

    /// When the first chunk whose mark has not come back should have finished playing.
    pub(super) fn unconfirmed_end(&self) -> Option<Micros> {
        self.schedule
            .iter()
            .find(|(_, offset, len)| offset + len > self.played)
            .map(|(start, _, len)| start + len * MS / BYTES_PER_MS)
    }

    /// When all its forwarded audio should have played.
    pub(super) fn schedule_end(&self) -> Option<Micros> {
        self.schedule
            .last()
            .map(|(start, _, len)| start + len * MS / BYTES_PER_MS)
    }

    /// The words the caller heard, and the rest.
    pub(super) fn split_heard(&self) -> (String, String) {
        let heard_ms = self.heard_ms() as f32;
        if !self.words.is_empty() {
            let n = self
                .words
                .iter()
                .take_while(|(_, _, end)| end * 1000.0 <= heard_ms + 60.0)
                .count();
            let all: Vec<&str> = self.text.split_whitespace().collect();
            let n = n.min(all.len());
            return (all[..n].join(" "), all[n..].join(" "));
        }
        let chars = usize::try_from(self.heard_ms() / MS_PER_CHAR).unwrap_or(usize::MAX);
        let mut cut = self
            .text
            .char_indices()
            .nth(chars)
            .map_or(self.text.len(), |(i, _)| i);
        // Back to a word boundary: a half-heard word was not heard.
        if cut < self.text.len() {
            cut = self.text[..cut].rfind(' ').unwrap_or(0);
        }
        (
            self.text[..cut].trim().to_owned(),
            self.text[cut..].trim().to_owned(),
        )
    }
}

impl Conversation {
    /// Starts a whole utterance.
    pub(super) fn say(
        &mut self,
        now: Micros,
        kind: Kind,
        text: &str,
        after: After,
        out: &mut Vec<Action>,
    ) {
        if self.tts_dead {
            // Nothing can be said: do what follows after the fallback apology.
            let mark = format!("fallback-{}", self.next_ctx);
            self.next_ctx += 1;
            out.push(Action::PlayFallbackApology { mark: mark.clone() });
            self.fallback_mark = Some((mark, after, now + 6000 * MS));
            return;
        }
        let mut u = Utterance::new(&mut self.next_ctx, kind, self.turn, now);
        u.text = text.trim().to_owned();
        u.input_closed = true;
        u.after = after;
        let ctx = u.ctx.clone();
        self.utterances.push(u);
        out.push(Action::TtsSpeak {
            context: ctx,
            text: text.trim().to_owned(),
            last: true,
        });
    }

    pub(super) fn tts(&mut self, now: Micros, event: TtsEvent, at: Micros, out: &mut Vec<Action>) {
        let Some(event) = self.speculative_tts(event, at, out) else {
            return;
        };
        match event {
            TtsEvent::Audio { context, mulaw } => {
                let Some(i) = self.utterances.iter().position(|u| u.ctx == context) else {
                    return;
                };
                // Audio plays in utterance order: hold it while an earlier one synthesizes.
                let blocked = self.utterances[..i].iter().any(|u| !u.tts_done);
                let u = &mut self.utterances[i];
                if blocked {
                    u.held.push(mulaw);
                    return;
                }
                let first = u.sent == 0;
                forward(u, mulaw, now, &mut self.playhead, out);
                if first && u.kind == Kind::Reply {
                    self.record_latency(&context, at, now, out);
                }
            }
            TtsEvent::Words { context, words } => {
                if let Some(u) = self.utterances.iter_mut().find(|u| u.ctx == context) {
                    u.words.extend(words);
                }
            }
            TtsEvent::Done { context } => {
                if let Some(u) = self.utterances.iter_mut().find(|u| u.ctx == context) {
                    u.tts_done = true;
                }
                self.release_held(now, out);
            }
            TtsEvent::ContextFailed { context, reason } => {
                let Some(i) = self.utterances.iter().position(|u| u.ctx == context) else {
                    return;
                };
                let u = &mut self.utterances[i];
                if u.sent == 0 && u.held.is_empty() && !u.failed_once && u.input_closed {
                    // Nothing of it was heard: say it again in a fresh context.
                    self.next_ctx += 1;
                    let ctx = format!("t{}-u{}", u.turn, self.next_ctx);
                    tracing::debug!(old = %u.ctx, new = %ctx, %reason, "speech context failed; retrying");
                    u.ctx = ctx.clone();
                    u.failed_once = true;
                    out.push(Action::TtsSpeak {
                        context: ctx,
                        text: u.text.clone(),
                        last: true,
                    });
                    if let Some(reply) = self.reply.as_mut() {
                        if reply.ctx.as_deref() == Some(context.as_str()) {
                            // The model is still streaming into it: close it, the rest of
                            // the reply is dropped with the retry.
                            reply.ctx = None;
                        }
                    }
                } else {
                    // Part of it played (or it failed twice): keep what there is.
                    u.tts_done = true;
                    self.release_held(now, out);
                }
            }
            TtsEvent::Reconnected { reason } => {
                out.push(Action::Record(ConversationRecord::VendorGap {
                    vendor: "tts".into(),
                    gap_ms: 0,
                    reason,
                }));
            }
            TtsEvent::Failed { reason } => {
                self.tts_dead = true;
                self.vendor_failed(now, "tts", &reason, out);
            }
        }
    }

    /// Forwards audio held behind utterances that have now finished synthesizing.
    pub(super) fn release_held(&mut self, now: Micros, out: &mut Vec<Action>) {
        for u in self.utterances.iter_mut() {
            for chunk in std::mem::take(&mut u.held) {
                forward(u, chunk, now, &mut self.playhead, out);
            }
            if u.tts_done {
                if u.playout_deadline.is_none() {
                    let start = u.first_sent_at.unwrap_or(now);
                    u.playout_deadline = Some(start + u.sent / BYTES_PER_MS * MS + PLAYOUT_GRACE);
                }
            } else {
                break;
            }
        }
    }
}

/// Forwards one chunk of an utterance's audio with the mark that reports its play-out.
///
/// `playhead` is when the audio forwarded before should have finished playing: this chunk
/// plays after it (the carrier plays in order, in real time).
fn forward(
    u: &mut Utterance,
    mulaw: Vec<u8>,
    now: Micros,
    playhead: &mut Micros,
    out: &mut Vec<Action>,
) {
    if mulaw.is_empty() {
        return;
    }
    let start = (*playhead).max(now);
    let len = mulaw.len() as u64;
    u.schedule.push((start, u.sent, len));
    *playhead = start + len * MS / BYTES_PER_MS;
    u.first_sent_at.get_or_insert(now);
    u.sent += mulaw.len() as u64;
    out.push(Action::MediaAudio(mulaw));
    out.push(Action::MediaMark(format!("{}@{}", u.ctx, u.sent)));
}
