//! The scripted far party of a leg: a [`CallerScript`] of talk, silence, waits on the app's
//! audio, DTMF and hangup that the leg's media stream plays instead of the endless talk/pause
//! cycle, and the [`CallerTimeline`] that records, in ms since the stream started, what the
//! caller did and what it heard (section 1.5: what the app's `media`, `mark` and `clear` do).
//!
//! It exists so that voice-pipeline tests can hold a conversation: the fake Deepgram turns each
//! burst of speech energy into the next line of its script, so one `Say` is one line, and the
//! waits let the caller answer the agent, or talk over it, at controlled moments.
//!
//! This module only decides; it does no I/O and takes no lock. The media session
//! (`media.rs`) calls [`Performer::tick`] once per 20 ms frame with what the play-out sounds
//! like right now, sends the frame it returns and carries out the [`Act`]s (webhooks, hangup)
//! through the leg's state. So waits are checked once per frame: the caller reacts within one
//! frame interval, as a person reacts within a few tens of ms at best.

use std::time::Duration;

use tokio::time::Instant;

use super::audio::{SpeechLike, FRAME_SAMPLES};

/// Audio per media frame; `Say` and `Silence` count their length in frames of this.
const FRAME: Duration = Duration::from_millis(20);

/// One thing the scripted caller does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerStep {
    /// Talks without a pause for this long (rounded up to whole 20 ms frames of audio): one
    /// utterance to an energy voice-activity detector, whatever its hangover.
    Say(Duration),
    /// Comfort noise for this long (rounded up to whole 20 ms frames of audio).
    Silence(Duration),
    /// Comfort noise until the app's audio is audible in the play-out (already audible counts),
    /// or until `timeout` of wall time has passed.
    WaitForAgentAudio {
        /// Longest wait.
        timeout: Duration,
    },
    /// Comfort noise until the app has played no audible audio for `quiet`, counted from the
    /// end of its last audible audio or from the start of this step, whichever is later; or
    /// until `timeout`. An agent that has not started talking yet counts as quiet, so "wait for
    /// the agent's reply to end" is `WaitForAgentAudio` then `WaitForAgentSilence`. Gaps in the
    /// play-out shorter than 100 ms count as audio (they are gaps between words), so `quiet`
    /// should be longer than that.
    WaitForAgentSilence {
        /// How long the play-out must have been quiet.
        quiet: Duration,
        /// Longest wait.
        timeout: Duration,
    },
    /// Presses a key: a `dtmf` frame on the media stream and a `call.dtmf.received` webhook,
    /// as [`super::FakeTelnyx::send_dtmf`] does. Takes no audio time.
    Dtmf(char),
    /// Hangs up: the leg ends with `normal_clearing` from the far party's side (`callee` on an
    /// outbound dial, `caller` on an inbound call), `streaming.stopped` and `call.hangup`.
    Hangup,
}

/// What the far party of a leg does once the leg's media stream has started, step after step;
/// after the last step it stays on the line sending comfort noise until the call ends.
///
/// Set it per number with [`super::FakeTelnyx::set_caller_script`]. It plays on the leg's first
/// media stream only: a stream started again later on the same leg carries comfort noise (the
/// caller has already played its part), and the [`CallerTimeline`] keeps counting from the
/// first stream's start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerScript {
    /// The steps, in order.
    pub steps: Vec<CallerStep>,
}

impl CallerScript {
    /// An empty script: comfort noise until the call ends.
    pub fn new() -> Self {
        CallerScript::default()
    }

    /// Appends `step`.
    pub fn then(mut self, step: CallerStep) -> Self {
        self.steps.push(step);
        self
    }

    /// Appends [`CallerStep::Say`].
    pub fn say(self, length: Duration) -> Self {
        self.then(CallerStep::Say(length))
    }

    /// Appends [`CallerStep::Silence`].
    pub fn silence(self, length: Duration) -> Self {
        self.then(CallerStep::Silence(length))
    }

    /// Appends [`CallerStep::WaitForAgentAudio`].
    pub fn wait_for_agent_audio(self, timeout: Duration) -> Self {
        self.then(CallerStep::WaitForAgentAudio { timeout })
    }

    /// Appends [`CallerStep::WaitForAgentSilence`].
    pub fn wait_for_agent_silence(self, quiet: Duration, timeout: Duration) -> Self {
        self.then(CallerStep::WaitForAgentSilence { quiet, timeout })
    }

    /// Appends [`CallerStep::Dtmf`].
    pub fn dtmf(self, digit: char) -> Self {
        self.then(CallerStep::Dtmf(digit))
    }

    /// Appends [`CallerStep::Hangup`].
    pub fn hangup(self) -> Self {
        self.then(CallerStep::Hangup)
    }
}

impl From<Vec<CallerStep>> for CallerScript {
    fn from(steps: Vec<CallerStep>) -> Self {
        CallerScript { steps }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// It did what it says (for a wait: the awaited condition held).
    Done,
    /// A wait's `timeout` ran out first.
    TimedOut,
    /// The stream stopped (the call ended) while it ran.
    Interrupted,
}

/// The end of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepEnd {
    /// When, in ms since the stream started.
    pub at_ms: u64,
    /// Why.
    pub outcome: StepOutcome,
}

/// One step as it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    /// Position in the script.
    pub index: usize,
    /// The step.
    pub step: CallerStep,
    /// When it began, in ms since the stream started (a `Say` begins as its first frame goes).
    pub start_ms: u64,
    /// When and how it ended; `None` while it runs. The next step starts at the same instant.
    pub end: Option<StepEnd>,
}

impl StepRecord {
    /// When it ended, in ms since the stream started; `None` while it runs.
    pub fn end_ms(&self) -> Option<u64> {
        self.end.map(|e| e.at_ms)
    }
}

/// A stretch during which the app's audio was audibly playing to the caller.
///
/// Audible means a 20 ms piece of the play-out at or above -50 dBFS RMS (digital silence and
/// comfort noise are not; audio in a codec the fake cannot decode always is). Pieces less than
/// 100 ms apart belong to one stretch, so the gaps between an agent's words do not split its
/// reply. Times are when the audio played, not when it arrived: the app's `media` is queued
/// and plays out at 8000 bytes/s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentAudioInterval {
    /// When the first audible piece started playing, in ms since the stream started.
    pub start_ms: u64,
    /// When the last audible piece ended, or a `clear` (or the end of the stream) cut it off;
    /// `None` while it plays (it is reported up to 100 ms late, once no later audio can join
    /// it, but a cut is reported at once).
    pub end_ms: Option<u64>,
}

impl AgentAudioInterval {
    /// The interval covers `ms` (an open one covers everything after its start).
    pub fn contains(&self, ms: u64) -> bool {
        self.start_ms <= ms && self.end_ms.is_none_or(|end| ms < end)
    }
}

/// A `mark` the fake echoed to the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkEcho {
    /// When, in ms since the stream started.
    pub at_ms: u64,
    /// The mark's name.
    pub name: String,
}

/// What happened on a leg's media stream, for assertions; every time is in whole ms (rounded
/// down) since the leg's first media stream started (the moment the `start` frame went out),
/// so two events less than 1 ms apart may carry the same time. Recorded for every leg whose
/// stream started; `steps` stays empty without a script.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerTimeline {
    /// The script's steps that began, in order.
    pub steps: Vec<StepRecord>,
    /// Stretches of audible play-out of the app's audio, in order.
    pub agent_audio: Vec<AgentAudioInterval>,
    /// Every `clear` received.
    pub clears_ms: Vec<u64>,
    /// Every `mark` echoed, in order.
    pub marks_echoed: Vec<MarkEcho>,
    /// When the (last) stream stopped; `None` while it runs.
    pub stopped_ms: Option<u64>,
}

impl CallerTimeline {
    /// The record of step `index`, if it began.
    pub fn step(&self, index: usize) -> Option<&StepRecord> {
        self.steps.get(index)
    }

    /// The stretch of agent audio playing at `ms`, if any.
    pub fn agent_audio_at(&self, ms: u64) -> Option<&AgentAudioInterval> {
        self.agent_audio.iter().find(|a| a.contains(ms))
    }
}

/// A leg's timeline and the instant its times count from.
pub(crate) struct Timeline {
    origin: Instant,
    pub(crate) record: CallerTimeline,
}

impl Timeline {
    pub(crate) fn new(origin: Instant) -> Self {
        Timeline {
            origin,
            record: CallerTimeline::default(),
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn act(&mut self, act: &Act, at: Instant) {
        let ms = self.ms(at);
        match act {
            Act::Began { index, step } => self.record.steps.push(StepRecord {
                index: *index,
                step: step.clone(),
                start_ms: ms,
                end: None,
            }),
            Act::Ended { index, outcome } => {
                if let Some(rec) = self
                    .record
                    .steps
                    .iter_mut()
                    .rev()
                    .find(|r| r.index == *index)
                {
                    rec.end = Some(StepEnd {
                        at_ms: ms,
                        outcome: *outcome,
                    });
                }
            }
            Act::Dtmf(_) | Act::Hangup => {}
        }
    }

    pub(crate) fn agent_audio(&mut self, edge: Edge) {
        match edge {
            Edge::Started(at) => {
                let start_ms = self.ms(at);
                self.record.agent_audio.push(AgentAudioInterval {
                    start_ms,
                    end_ms: None,
                });
            }
            Edge::Stopped(at) => {
                let end_ms = self.ms(at);
                if let Some(open) = self
                    .record
                    .agent_audio
                    .last_mut()
                    .filter(|a| a.end_ms.is_none())
                {
                    open.end_ms = Some(end_ms);
                }
            }
        }
    }

    pub(crate) fn clear(&mut self, at: Instant) {
        let ms = self.ms(at);
        self.record.clears_ms.push(ms);
    }

    pub(crate) fn mark(&mut self, name: &str, at: Instant) {
        let at_ms = self.ms(at);
        self.record.marks_echoed.push(MarkEcho {
            at_ms,
            name: name.to_owned(),
        });
    }

    pub(crate) fn stopped(&mut self, at: Instant) {
        self.record.stopped_ms = Some(self.ms(at));
    }
}

/// A change in whether the app's audio is audible, at the instant it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Edge {
    Started(Instant),
    Stopped(Instant),
}

/// What the play-out sounds like at one instant, as the caller hears it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Heard {
    /// The app's audio is audible now.
    pub(crate) playing: bool,
    /// Start of the latest audible stretch that has begun.
    pub(crate) last_start: Option<Instant>,
    /// The last instant audio was audible (now, while playing).
    pub(crate) last_audible: Option<Instant>,
}

/// What the session must do for the performer, besides sending its frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Act {
    /// Step `index` began.
    Began { index: usize, step: CallerStep },
    /// Step `index` ended.
    Ended { index: usize, outcome: StepOutcome },
    /// Press `digit` (frame and webhook).
    Dtmf(char),
    /// End the call from the far party's side.
    Hangup,
}

/// The current step's progress.
enum Running {
    Talk {
        frames_left: u64,
    },
    Quiet {
        frames_left: u64,
    },
    AwaitAudio {
        since: Instant,
        deadline: Instant,
    },
    AwaitSilence {
        since: Instant,
        quiet: Duration,
        deadline: Instant,
    },
}

/// Plays a script frame by frame.
pub(crate) struct Performer {
    steps: Vec<CallerStep>,
    /// The current step; `steps.len()` once the script is over.
    index: usize,
    /// Progress of the current step; `None` before it has begun.
    running: Option<Running>,
    /// After `Hangup` the caller is gone: no more frames, even before the stream stops.
    hung_up: bool,
    voice: SpeechLike,
}

impl Performer {
    pub(crate) fn new(script: CallerScript, seed: u32) -> Self {
        Performer {
            steps: script.steps,
            index: 0,
            running: None,
            hung_up: false,
            voice: SpeechLike::new(seed),
        }
    }

    /// Advances the script to `now` and returns the caller's next 20 ms of audio, or `None`
    /// once the caller has hung up. Step changes, DTMF and hangup are appended to `acts`.
    pub(crate) fn tick(
        &mut self,
        now: Instant,
        heard: Heard,
        acts: &mut Vec<Act>,
    ) -> Option<[i16; FRAME_SAMPLES]> {
        loop {
            if self.hung_up {
                return None;
            }
            let Some(step) = self.steps.get(self.index) else {
                return Some(self.voice.noise_frame());
            };
            let running = match &mut self.running {
                Some(running) => running,
                None => {
                    acts.push(Act::Began {
                        index: self.index,
                        step: step.clone(),
                    });
                    match *step {
                        CallerStep::Dtmf(digit) => {
                            acts.push(Act::Dtmf(digit));
                            self.finish(StepOutcome::Done, acts);
                            continue;
                        }
                        CallerStep::Hangup => {
                            acts.push(Act::Hangup);
                            self.finish(StepOutcome::Done, acts);
                            self.hung_up = true;
                            continue;
                        }
                        _ => self.running.insert(begin(step, now)),
                    }
                }
            };
            let outcome = match running {
                Running::Talk { frames_left } if *frames_left > 0 => {
                    *frames_left -= 1;
                    return Some(self.voice.talk_frame());
                }
                Running::Quiet { frames_left } if *frames_left > 0 => {
                    *frames_left -= 1;
                    return Some(self.voice.noise_frame());
                }
                Running::Talk { .. } | Running::Quiet { .. } => StepOutcome::Done,
                Running::AwaitAudio { since, deadline } => {
                    if heard.playing || heard.last_start.is_some_and(|t| t >= *since) {
                        StepOutcome::Done
                    } else if now >= *deadline {
                        StepOutcome::TimedOut
                    } else {
                        return Some(self.voice.noise_frame());
                    }
                }
                Running::AwaitSilence {
                    since,
                    quiet,
                    deadline,
                } => {
                    let quiet_from = heard.last_audible.map_or(*since, |t| t.max(*since));
                    if !heard.playing && now.saturating_duration_since(quiet_from) >= *quiet {
                        StepOutcome::Done
                    } else if now >= *deadline {
                        StepOutcome::TimedOut
                    } else {
                        return Some(self.voice.noise_frame());
                    }
                }
            };
            self.finish(outcome, acts);
        }
    }

    /// The stream stopped: a step still running ends as interrupted.
    pub(crate) fn interrupt(&mut self, acts: &mut Vec<Act>) {
        if self.running.is_some() {
            self.finish(StepOutcome::Interrupted, acts);
        }
    }

    /// Begins at step `index` (a later stream of the leg carrying on).
    pub(crate) fn starting_at(mut self, index: usize) -> Self {
        self.index = index.min(self.steps.len());
        self
    }

    /// The script and the step a next stream carries on from, unless the script is over or
    /// the caller hung up.
    pub(crate) fn rest(&self) -> Option<(CallerScript, usize)> {
        (!self.hung_up && self.index < self.steps.len()).then(|| {
            (
                CallerScript {
                    steps: self.steps.clone(),
                },
                self.index,
            )
        })
    }

    fn finish(&mut self, outcome: StepOutcome, acts: &mut Vec<Act>) {
        acts.push(Act::Ended {
            index: self.index,
            outcome,
        });
        self.index += 1;
        self.running = None;
    }
}

fn begin(step: &CallerStep, now: Instant) -> Running {
    match *step {
        CallerStep::Say(d) => Running::Talk {
            frames_left: frames(d),
        },
        CallerStep::Silence(d) => Running::Quiet {
            frames_left: frames(d),
        },
        CallerStep::WaitForAgentAudio { timeout } => Running::AwaitAudio {
            since: now,
            deadline: now + timeout,
        },
        CallerStep::WaitForAgentSilence { quiet, timeout } => Running::AwaitSilence {
            since: now,
            quiet,
            deadline: now + timeout,
        },
        // Handled before a step needs progress.
        CallerStep::Dtmf(_) | CallerStep::Hangup => Running::Quiet { frames_left: 0 },
    }
}

/// Whole 20 ms frames covering `d`.
fn frames(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(FRAME.as_nanos())).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rms(frame: &[i16]) -> f64 {
        (frame.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / frame.len() as f64).sqrt()
    }

    #[test]
    fn say_is_whole_frames_of_talk_and_dtmf_takes_no_time() {
        let script = CallerScript::new()
            .say(Duration::from_millis(50))
            .dtmf('3')
            .silence(Duration::from_millis(40))
            .hangup();
        let mut p = Performer::new(script, 9);
        let now = Instant::now();
        let mut acts = Vec::new();
        let mut levels = Vec::new();
        while let Some(frame) = p.tick(now, Heard::default(), &mut acts) {
            levels.push(rms(&frame));
        }
        assert_eq!(levels.len(), 5, "3 frames of talk, 2 of silence");
        assert!(levels[..3].iter().all(|&r| r > 1_000.0), "{levels:?}");
        assert!(levels[3..].iter().all(|&r| r < 100.0), "{levels:?}");
        assert!(acts.contains(&Act::Dtmf('3')));
        assert!(acts.contains(&Act::Hangup));
        let ended = acts
            .iter()
            .filter(|a| matches!(a, Act::Ended { .. }))
            .count();
        assert_eq!(ended, 4);
    }

    #[test]
    fn waits_follow_the_play_out() {
        let script = CallerScript::new()
            .wait_for_agent_audio(Duration::from_secs(5))
            .wait_for_agent_silence(Duration::from_millis(100), Duration::from_secs(5));
        let mut p = Performer::new(script, 9);
        let t0 = Instant::now();
        let mut acts = Vec::new();
        p.tick(t0, Heard::default(), &mut acts);
        assert_eq!(acts.len(), 1, "still waiting for audio: {acts:?}");
        let t1 = t0 + Duration::from_millis(40);
        let playing = Heard {
            playing: true,
            last_start: Some(t1),
            last_audible: Some(t1),
        };
        p.tick(t1, playing, &mut acts);
        assert_eq!(acts.len(), 3, "audio heard, silence wait began: {acts:?}");
        let t2 = t1 + Duration::from_millis(500);
        let stopped = Heard {
            playing: false,
            last_start: Some(t1),
            last_audible: Some(t2 - Duration::from_millis(60)),
        };
        p.tick(t2, stopped, &mut acts);
        assert_eq!(acts.len(), 3, "only 60 ms quiet");
        p.tick(t2 + Duration::from_millis(40), stopped, &mut acts);
        assert_eq!(
            acts.last(),
            Some(&Act::Ended {
                index: 1,
                outcome: StepOutcome::Done
            })
        );
    }

    #[test]
    fn a_wait_times_out() {
        let script = CallerScript::new().wait_for_agent_audio(Duration::from_millis(100));
        let mut p = Performer::new(script, 9);
        let t0 = Instant::now();
        let mut acts = Vec::new();
        p.tick(t0, Heard::default(), &mut acts);
        p.tick(t0 + Duration::from_millis(100), Heard::default(), &mut acts);
        assert_eq!(
            acts.last(),
            Some(&Act::Ended {
                index: 0,
                outcome: StepOutcome::TimedOut
            })
        );
    }
}
