//! The "recogniser" of one live connection: an energy voice-activity detector over the decoded
//! audio that replays scripted caller lines as Deepgram `Results`, `SpeechStarted`,
//! `UtteranceEnd` and `Metadata` messages (vendor-protocols.md section 2.3).
//!
//! Everything runs on audio time — samples received divided by the sample rate — never on the
//! wall clock, so a client may pace its audio in real time or send it all at once and get the
//! same messages with the same timestamps. That also means an endpoint can only be seen once
//! the silence after the speech has been received, as with the real service.
//!
//! The model, in 20 ms analysis windows:
//! * a window is *voiced* when its RMS reaches the threshold; speech starts at the first voiced
//!   window after the detector was idle (`SpeechStarted` if `vad_events=true`) and the detector
//!   goes idle after `hangover` without a voiced window, which bridges the gaps between
//!   syllables;
//! * an *utterance* opens at a speech start and takes the next script line (no line left: an
//!   empty transcript, as Deepgram gives for noise). While the caller speaks and
//!   `interim_results=true`, every `interim_interval` brings an interim `Results` with a growing
//!   prefix of the line, one more word per `word_duration` of speech, timed across the speech so
//!   far;
//! * silence of `max(endpointing, hangover)` closes the utterance: a final `Results` with the
//!   whole line timed across the speech, `is_final` and `speech_final` (`speech_final:false`
//!   with `endpointing=false`, where only the hangover ends it);
//! * after `utterance_end_ms` of audio past the last finalized word, with `interim_results`, an
//!   `UtteranceEnd`; new words before then cancel it;
//! * `Finalize` closes an open utterance at once (`from_finalize:true`), or finalizes pending
//!   silence as an empty transcript; speech still going on after it is not a new utterance until
//!   the detector has gone idle. `CloseStream` closes an open utterance and adds `Metadata`.
//!
//! Consecutive finals cover the audio without gaps: each final's `start` is where the last one
//! ended, interim results cover the same stretch up to now. This module does no I/O.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use super::params::ListenParams;
use super::sha256::Sha256;

/// Confidence given to every word of a final result: scripted lines are "certain".
const FINAL_CONFIDENCE: f64 = 0.98;
/// Confidence of interim words, lower as a real recogniser's guesses are.
const INTERIM_CONFIDENCE: f64 = 0.85;
/// `model_info.version` reported: a fixed made-up release.
const MODEL_VERSION: &str = "2025-01-01.0";

/// Detector and pacing knobs, from the fake's configuration.
#[derive(Debug, Clone)]
pub(crate) struct Tuning {
    /// Window RMS (on the 16-bit scale) at or above which a window is voiced.
    pub(crate) threshold_rms: f64,
    /// Silence after which the detector goes idle.
    pub(crate) hangover: Duration,
    /// Audio between interim results of an utterance.
    pub(crate) interim_interval: Duration,
    /// Speech per word revealed in interim results.
    pub(crate) word_duration: Duration,
}

/// Where an utterance's line comes from: called once per utterance, `None` when exhausted.
pub(crate) type NextLine = Box<dyn FnMut() -> Option<String> + Send>;

/// One word of a script line.
#[derive(Debug, Clone)]
struct Token {
    /// Lower case, without surrounding punctuation: Deepgram's `word`.
    word: String,
    /// As written in the script: Deepgram's `punctuated_word`.
    punctuated: String,
}

/// A word placed on the audio timeline (sample positions).
struct Placed<'a> {
    token: &'a Token,
    start: u64,
    end: u64,
}

/// The utterance being heard.
struct Utterance {
    /// Sample position of its first voiced window.
    start: u64,
    tokens: Vec<Token>,
    /// Sample position at or after which the next interim result is due.
    next_interim: u64,
}

/// The recogniser state of one connection.
pub(crate) struct Transcriber {
    params: ListenParams,
    threshold: f64,
    next_line: NextLine,
    request_id: String,
    model_uuid: String,
    created: DateTime<Utc>,

    // Lengths in samples (per channel).
    window: u64,
    hangover: u64,
    interim_every: u64,
    word: u64,
    endpoint: u64,
    utterance_end: Option<u64>,

    /// Bytes of an incomplete sample frame, kept for the next binary frame.
    carry: Vec<u8>,
    window_energy: f64,
    window_frames: u64,
    /// Complete sample frames received: the audio clock.
    frames: u64,

    in_speech: bool,
    last_voiced_end: u64,
    /// Speech that continues after a `Finalize` cut its utterance short; it opens no new one.
    tail: bool,
    utterance: Option<Utterance>,
    /// End of the audio covered by the last final result.
    cursor: u64,
    /// End of the last finalized word, while an `UtteranceEnd` for it may still be due.
    pending_utterance_end: Option<u64>,
    sha: Sha256,
}

impl Transcriber {
    /// A recogniser for a connection that asked for `params`.
    pub(crate) fn new(
        params: ListenParams,
        tuning: &Tuning,
        next_line: NextLine,
        request_id: String,
        created: DateTime<Utc>,
    ) -> Self {
        let rate = u64::from(params.sample_rate);
        let samples = |d: Duration| (d.as_micros() as u64 * rate / 1_000_000).max(1);
        let window = (rate / 50).max(1);
        let hangover = samples(tuning.hangover);
        let endpoint = params.endpointing.map_or(hangover, |ms| {
            samples(Duration::from_millis(ms)).max(hangover)
        });
        let utterance_end = params
            .utterance_end_ms
            .filter(|_| params.interim_results)
            .map(|ms| samples(Duration::from_millis(ms)));
        Transcriber {
            threshold: tuning.threshold_rms,
            next_line,
            request_id,
            model_uuid: uuid::Uuid::new_v4().to_string(),
            created,
            window,
            hangover,
            interim_every: samples(tuning.interim_interval),
            word: samples(tuning.word_duration),
            endpoint,
            utterance_end,
            carry: Vec::new(),
            window_energy: 0.0,
            window_frames: 0,
            frames: 0,
            in_speech: false,
            last_voiced_end: 0,
            tail: false,
            utterance: None,
            cursor: 0,
            pending_utterance_end: None,
            sha: Sha256::new(),
            params,
        }
    }

    /// Audio received so far, in seconds.
    pub(crate) fn audio_seconds(&self) -> f64 {
        self.frames as f64 / f64::from(self.params.sample_rate)
    }

    /// Takes one binary frame of audio; appends the messages it causes to `out`.
    pub(crate) fn audio(&mut self, bytes: &[u8], out: &mut Vec<Value>) {
        self.sha.update(bytes);
        let enc = self.params.encoding;
        let width = enc.bytes_per_sample();
        let frame_bytes = width * usize::from(self.params.channels);
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(bytes);
        let whole = data.len() - data.len() % frame_bytes;
        for frame in data[..whole].chunks_exact(frame_bytes) {
            for sample in frame.chunks_exact(width) {
                let s = f64::from(enc.decode(sample));
                self.window_energy += s * s;
            }
            self.window_frames += 1;
            self.frames += 1;
            if self.window_frames == self.window {
                let n = (self.window * u64::from(self.params.channels)) as f64;
                let rms = (self.window_energy / n).sqrt();
                self.window_energy = 0.0;
                self.window_frames = 0;
                self.on_window(rms >= self.threshold, out);
            }
        }
        self.carry = data[whole..].to_vec();
    }

    /// `Finalize`: flushes the open utterance with `from_finalize:true`, or, if at least one
    /// window of audio is not yet covered by a final, an empty final that covers it.
    pub(crate) fn finalize(&mut self, out: &mut Vec<Value>) {
        let now = self.frames;
        if self.utterance.is_some() {
            self.tail = self.in_speech;
            self.emit_final(now, false, true, out);
        } else if now >= self.cursor + self.window {
            self.emit_final(now, false, true, out);
        }
    }

    /// `CloseStream`: flushes the open utterance as a final and appends `Metadata`.
    pub(crate) fn close_stream(&mut self, out: &mut Vec<Value>) {
        if self.utterance.is_some() {
            self.emit_final(self.frames, false, false, out);
        }
        let mut model_info = Map::new();
        model_info.insert(self.model_uuid.clone(), self.model_info());
        out.push(json!({
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": self.sha.hex(),
            "created": self.created.to_rfc3339_opts(SecondsFormat::Millis, true),
            "duration": round_ms(self.audio_seconds()),
            "channels": self.params.channels,
            "models": [self.model_uuid],
            "model_info": model_info,
        }));
    }

    fn on_window(&mut self, voiced: bool, out: &mut Vec<Value>) {
        let end = self.frames;
        let start = end - self.window;
        if voiced {
            if !self.in_speech {
                self.in_speech = true;
                if self.params.vad_events {
                    out.push(json!({
                        "type": "SpeechStarted",
                        "channel": [0],
                        "timestamp": self.secs(start),
                    }));
                }
                if self.utterance.is_none() && !self.tail {
                    self.open_utterance(start);
                }
            }
            self.last_voiced_end = end;
        } else if self.in_speech && end - self.last_voiced_end >= self.hangover {
            self.in_speech = false;
            self.tail = false;
        }

        if let Some(u) = &mut self.utterance {
            if self.in_speech && self.params.interim_results && end >= u.next_interim {
                while u.next_interim <= end {
                    u.next_interim += self.interim_every;
                }
                self.emit_interim(end, out);
            }
            if end - self.last_voiced_end >= self.endpoint {
                let speech_final = self.params.endpointing.is_some();
                self.emit_final(end, speech_final, false, out);
            }
        }

        if let (Some(last_word_end), Some(gap)) = (self.pending_utterance_end, self.utterance_end) {
            if end >= last_word_end + gap {
                self.pending_utterance_end = None;
                out.push(json!({
                    "type": "UtteranceEnd",
                    "channel": [0, self.params.channels],
                    "last_word_end": self.secs(last_word_end),
                }));
            }
        }
    }

    fn open_utterance(&mut self, start: u64) {
        let tokens = (self.next_line)().map(|l| tokenize(&l)).unwrap_or_default();
        if !tokens.is_empty() {
            // New words before the gap completed: no `UtteranceEnd` for the old ones.
            self.pending_utterance_end = None;
        }
        self.utterance = Some(Utterance {
            start,
            tokens,
            next_interim: start + self.interim_every,
        });
    }

    fn emit_interim(&self, now: u64, out: &mut Vec<Value>) {
        let Some(u) = &self.utterance else { return };
        let revealed = (((now - u.start) / self.word) as usize + 1).min(u.tokens.len());
        let words = spread(&u.tokens[..revealed], u.start, now);
        out.push(self.results(now, false, false, false, &words, INTERIM_CONFIDENCE));
    }

    fn emit_final(
        &mut self,
        now: u64,
        speech_final: bool,
        from_finalize: bool,
        out: &mut Vec<Value>,
    ) {
        let utterance = self.utterance.take();
        let words = match &utterance {
            Some(u) => {
                // Words lie on the speech, not on the trailing silence; a flush in the middle of
                // a window still gives the speech at least one window.
                let speech_end = self.last_voiced_end.max(u.start + self.window).min(now);
                spread(&u.tokens, u.start, speech_end.max(u.start + 1))
            }
            None => Vec::new(),
        };
        out.push(self.results(
            now,
            true,
            speech_final,
            from_finalize,
            &words,
            FINAL_CONFIDENCE,
        ));
        self.cursor = now;
        if let Some(last) = words.last() {
            self.pending_utterance_end = Some(last.end);
        }
    }

    fn results(
        &self,
        now: u64,
        is_final: bool,
        speech_final: bool,
        from_finalize: bool,
        words: &[Placed<'_>],
        confidence: f64,
    ) -> Value {
        let punctuate = self.params.punctuate;
        let transcript = words
            .iter()
            .map(|w| {
                if punctuate {
                    w.token.punctuated.as_str()
                } else {
                    w.token.word.as_str()
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        let words_json: Vec<Value> = words
            .iter()
            .map(|w| {
                let mut o = json!({
                    "word": w.token.word,
                    "start": self.secs(w.start),
                    "end": self.secs(w.end),
                    "confidence": confidence,
                });
                // Deepgram adds `punctuated_word` only when it punctuates.
                if punctuate {
                    o["punctuated_word"] = json!(w.token.punctuated);
                }
                o
            })
            .collect();
        let start = self.secs(self.cursor);
        let mut metadata = json!({
            "request_id": self.request_id,
            "model_uuid": self.model_uuid,
            "model_info": self.model_info(),
        });
        if !self.params.extra.is_empty() {
            let extra: Map<String, Value> = self
                .params
                .extra
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            metadata["extra"] = Value::Object(extra);
        }
        json!({
            "type": "Results",
            "channel_index": [0, self.params.channels],
            "duration": round_ms(self.secs(now) - start),
            "start": start,
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [{
                "transcript": transcript,
                "confidence": if words.is_empty() { 0.0 } else { confidence },
                "words": words_json,
            }]},
            "metadata": metadata,
        })
    }

    fn model_info(&self) -> Value {
        json!({
            "name": format!("general-{}", self.params.model),
            "version": MODEL_VERSION,
            "arch": self.params.model,
        })
    }

    /// A sample position in seconds, to the millisecond as Deepgram reports.
    fn secs(&self, samples: u64) -> f64 {
        round_ms(samples as f64 / f64::from(self.params.sample_rate))
    }
}

fn round_ms(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

/// Splits a script line into words; pieces with no letter or digit (a lone dash) are dropped.
fn tokenize(line: &str) -> Vec<Token> {
    line.split_whitespace()
        .filter_map(|piece| {
            let word = piece
                .trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase();
            (!word.is_empty()).then(|| Token {
                word,
                punctuated: piece.to_owned(),
            })
        })
        .collect()
}

/// Lays `tokens` end to end, in equal shares, over `[start, end)`.
fn spread(tokens: &[Token], start: u64, end: u64) -> Vec<Placed<'_>> {
    let n = tokens.len() as u64;
    let span = end.saturating_sub(start);
    tokens
        .iter()
        .enumerate()
        .map(|(i, token)| {
            let i = i as u64;
            Placed {
                token,
                start: start + span * i / n,
                end: start + span * (i + 1) / n,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deepgram::params::{parse, Encoding};
    use crate::telnyx::g711::linear_to_ulaw;

    const RATE: u32 = 8_000;

    fn tuning() -> Tuning {
        Tuning {
            threshold_rms: 330.0,
            hangover: Duration::from_millis(200),
            interim_interval: Duration::from_millis(300),
            word_duration: Duration::from_millis(250),
        }
    }

    fn transcriber(query: &str, lines: &[&str]) -> Transcriber {
        let pairs: Vec<(String, String)> = query
            .split('&')
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect();
        let params = parse(&pairs, 0).unwrap();
        assert_eq!(params.encoding, Encoding::Mulaw);
        let mut queue: std::collections::VecDeque<String> =
            lines.iter().map(|l| (*l).to_owned()).collect();
        Transcriber::new(
            params,
            &tuning(),
            Box::new(move || queue.pop_front()),
            "req-1".to_owned(),
            Utc::now(),
        )
    }

    /// The Telnyx fake's caller audio (fakes/src/telnyx/audio.rs), rebuilt here because
    /// that module is private to the Telnyx fake: 1 s of 140 Hz voiced tone under a
    /// four-syllables-a-second sin^2 envelope, then 0.5 s of low noise, repeated; mu-law.
    fn telnyx_like(cycles: usize) -> Vec<u8> {
        let mut noise: u32 = 12_345;
        let mut out = Vec::new();
        for n in 0..cycles * 12_000 {
            noise ^= noise << 13;
            noise ^= noise >> 17;
            noise ^= noise << 5;
            let hiss = (f64::from(noise) / f64::from(u32::MAX) * 2.0 - 1.0) * 40.0;
            let in_cycle = n % 12_000;
            let s = if in_cycle >= 8_000 {
                hiss
            } else {
                let t = in_cycle as f64 / f64::from(RATE);
                let env = (std::f64::consts::PI * (t * 4.0).fract()).sin().powi(2);
                let p = std::f64::consts::TAU * 140.0 * n as f64 / f64::from(RATE);
                let voiced = p.sin() + 0.5 * (2.0 * p).sin() + 0.3 * (3.0 * p).sin();
                env * 9_000.0 * voiced / 1.8 + hiss
            };
            out.push(linear_to_ulaw(s as i16));
        }
        out
    }

    fn feed(t: &mut Transcriber, audio: &[u8]) -> Vec<Value> {
        let mut out = Vec::new();
        for frame in audio.chunks(160) {
            t.audio(frame, &mut out);
        }
        out
    }

    fn of_type<'a>(msgs: &'a [Value], ty: &str) -> Vec<&'a Value> {
        msgs.iter().filter(|m| m["type"] == ty).collect()
    }

    fn transcript(m: &Value) -> &str {
        m["channel"]["alternatives"][0]["transcript"]
            .as_str()
            .unwrap()
    }

    /// Syllable gaps inside a talk burst must not split it: one utterance, one line per burst,
    /// endpointed in the half-second pauses.
    #[test]
    fn telnyx_caller_audio_gives_one_final_per_talk_burst() {
        let mut t = transcriber(
            "model=nova-3&encoding=mulaw&sample_rate=8000&interim_results=true&vad_events=true&endpointing=300",
            &["first line here", "second line"],
        );
        let msgs = feed(&mut t, &telnyx_like(3));
        let finals: Vec<&Value> = of_type(&msgs, "Results")
            .into_iter()
            .filter(|m| m["is_final"] == true)
            .collect();
        assert_eq!(finals.len(), 3, "{msgs:#?}");
        assert_eq!(transcript(finals[0]), "first line here");
        assert_eq!(transcript(finals[1]), "second line");
        assert_eq!(transcript(finals[2]), "");
        assert!(finals.iter().all(|f| f["speech_final"] == true));
        let started = of_type(&msgs, "SpeechStarted");
        assert_eq!(started.len(), 3);
        for (i, s) in started.iter().enumerate() {
            let ts = s["timestamp"].as_f64().unwrap();
            assert!(
                (ts - 1.5 * i as f64).abs() < 0.1,
                "speech {i} started at {ts}"
            );
        }
        // Finals tile the audio: each starts where the previous ended.
        let mut covered = 0.0;
        for f in &finals {
            assert!((f["start"].as_f64().unwrap() - covered).abs() < 1e-9);
            covered = round_ms(covered + f["duration"].as_f64().unwrap());
        }
        let words = finals[0]["channel"]["alternatives"][0]["words"]
            .as_array()
            .unwrap();
        assert!(words[0]["start"].as_f64().unwrap() < 0.1);
        let last_end = words[2]["end"].as_f64().unwrap();
        assert!((0.9..=1.0).contains(&last_end), "{last_end}");
    }

    #[test]
    fn interims_reveal_a_word_per_word_duration() {
        let mut t = transcriber(
            "model=nova-3&encoding=mulaw&sample_rate=8000&interim_results=true&punctuate=true",
            &["One, two, three, four, five."],
        );
        let msgs = feed(&mut t, &telnyx_like(1));
        let interims: Vec<&str> = of_type(&msgs, "Results")
            .into_iter()
            .filter(|m| m["is_final"] == false)
            .map(transcript)
            .collect();
        assert_eq!(
            interims,
            vec!["One, two,", "One, two, three,", "One, two, three, four,"]
        );
    }

    #[test]
    fn finalize_mid_speech_flushes_and_the_tail_opens_no_new_utterance() {
        let mut t = transcriber(
            "model=nova-3&encoding=mulaw&sample_rate=8000",
            &["hello there", "next"],
        );
        let audio = telnyx_like(1);
        let mut out = feed(&mut t, &audio[..4_000]);
        t.finalize(&mut out);
        out.extend(feed(&mut t, &audio[4_000..]));
        let finals = of_type(&out, "Results");
        assert_eq!(finals.len(), 1, "{out:#?}");
        assert_eq!(finals[0]["from_finalize"], true);
        assert_eq!(finals[0]["speech_final"], false);
        assert_eq!(transcript(finals[0]), "hello there");
        assert!((finals[0]["duration"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    }
}
