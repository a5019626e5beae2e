//! The voice session inside the real engine (supervisor, CallActor, VoiceSession, the pure
//! conversation core) over the in-memory ports of [`crate::testkit`] and paused tokio time:
//! no sockets, and every time below is exact.
//!
//! The world starts at `t0` (tokio's paused clock, and the wall clock `EPOCH`). The call is set
//! up without letting time pass, so a session started at once has its origin at `t0` and the
//! milliseconds in its records equal the milliseconds since `t0`. The test acts at exact
//! instants with [`World::at`], which first lets everything due at that instant run.
//!
//! Most timelines below are those of a reply asked for when the turn is committed (the agent's
//! `turn_taking.speculate: false`); the section "speculative replies" has the same flows with
//! the reply asked for during the hold-off.
//!
//! Synthesis ([`TtsScript::default`]): audio 100 ms after the text, 50 ms per character, in
//! 200 ms chunks (one mark each). The model ([`LlmReply`]): first event 200 ms after the
//! request, then one every 20 ms. The media stream plays audio in real time and echoes each
//! mark when the audio before it has played.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::time::Instant;
use uuid::Uuid;

use crate::catalog::NewAgent;
use crate::engine::Ports;
use crate::engine::{Engine, EngineConfig, NewCall};
use crate::machine::record::{ConversationRecord, EscalationReason, Speaker, Tone};
use crate::machine::{
    AmdResult, Call, CallId, CallStatus, CarrierEvent, EndReason, Event, HangupCause,
};
use crate::ports::sentiment::SentimentLabel;
use crate::ports::voice::VoicePorts;
use crate::ports::voice::{ChatMessage, ChatRole, SttEvent, TtsInput};
use crate::ports::{InboxItem, QueryStore};
use crate::sentiment::LexiconScorer;
use crate::testkit::voice::{LlmReply, MemoryMedia, ScriptedLlm, ScriptedStt, ScriptedTts, SttLog};
use crate::testkit::{Command, MemoryStore, ScriptedTelephony, SeqIds, TokioClock};

fn epoch() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

const HUMAN: &str = "+14155550100";
const APOLOGY: &str = "I'm sorry, I'm having technical difficulties.";

struct World {
    store: Arc<MemoryStore>,
    carrier: Arc<ScriptedTelephony>,
    stt: Arc<ScriptedStt>,
    tts: Arc<ScriptedTts>,
    llm: Arc<ScriptedLlm>,
    media: Arc<MemoryMedia>,
    engine: Engine,
    org: Uuid,
    agent: Uuid,
    t0: Instant,
    events: AtomicU64,
    registry: prometheus::Registry,
}

impl World {
    /// An engine whose agent has this `persona_config`, with voice ports.
    async fn new(persona: serde_json::Value) -> World {
        World::with(persona, EngineConfig::default()).await
    }

    async fn with(persona: serde_json::Value, config: EngineConfig) -> World {
        World::build(persona, config, None).await
    }

    async fn build(
        persona: serde_json::Value,
        config: EngineConfig,
        recall: Option<crate::learning::recall::Recall>,
    ) -> World {
        let t0 = Instant::now();
        let store = Arc::new(MemoryStore::new());
        let carrier = Arc::new(ScriptedTelephony::new());
        let stt = Arc::new(ScriptedStt::new());
        let tts = Arc::new(ScriptedTts::new());
        let llm = Arc::new(ScriptedLlm::new());
        let media = Arc::new(MemoryMedia::new());
        let ports = Ports {
            calls: store.clone(),
            cluster: store.clone(),
            peers: None,
            queries: store.clone(),
            telephony: carrier.clone(),
            clock: Arc::new(TokioClock::new(epoch())),
            ids: Arc::new(SeqIds::new(0x5E55)),
            breakers: Default::default(),
            voice: Some(VoicePorts {
                stt: stt.clone(),
                tts: tts.clone(),
                llm: llm.clone(),
                sentiment: Arc::new(LexiconScorer),
                media: media.clone(),
                fallback_apology: Arc::new(vec![0xff; 800]),
                tools: None,
            }),
            recall,
            accounts: None,
            outbox: None,
            analysis: None,
            traces: None,
        };
        let org = Uuid::from_u128(0xA);
        let agent = Uuid::from_u128(0xA6E);
        let new: NewAgent =
            serde_json::from_value(json!({"name": "Ava", "persona_config": persona}))
                .expect("agent json");
        store
            .insert_agent(&new.validate(agent, org, epoch()).expect("valid agent"))
            .await
            .unwrap();
        let registry = prometheus::Registry::new();
        let engine = Engine::start(ports, config, &registry).await.unwrap();
        let echo = engine.clone();
        media.echo_marks(move |call, name| echo.media_mark(call, name));
        World {
            store,
            carrier,
            stt,
            tts,
            llm,
            media,
            engine,
            org,
            agent,
            t0,
            events: AtomicU64::new(0),
            registry,
        }
    }

    /// The value of counter `name` (with `label` = `value`, when given), 0 when absent.
    fn counter(&self, name: &str, label: Option<(&str, &str)>) -> u64 {
        self.registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric())
            .filter(|m| {
                label.is_none_or(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == k && l.value() == v)
                })
            })
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    /// Speculative replies by outcome, and the tokens of discarded ones.
    fn speculations(&self) -> (u64, u64, u64, u64) {
        let outcome = |o| self.counter("iace_speculative_replies_total", Some(("outcome", o)));
        (
            outcome("started"),
            outcome("used"),
            outcome("discarded"),
            self.counter("iace_speculative_tokens_discarded_total", None),
        )
    }

    /// Lets every actor and task run until nothing is ready, without moving the clock.
    async fn settle(&self) {
        for _ in 0..2000 {
            tokio::task::yield_now().await;
        }
    }

    /// Moves the clock to `ms` after `t0` and lets everything due by then run.
    async fn at(&self, ms: u64) {
        let target = self.t0 + Duration::from_millis(ms);
        assert!(Instant::now() <= target, "time already passed {ms} ms");
        tokio::time::sleep_until(target).await;
        self.settle().await;
    }

    /// Milliseconds since `t0`.
    fn now_ms(&self) -> u64 {
        u64::try_from((Instant::now() - self.t0).as_millis()).unwrap()
    }

    /// An outbound call the carrier has accepted (initiated, not answered).
    async fn dialed_call(&self) -> CallId {
        let req = NewCall {
            to: "+14155550123".parse().unwrap(),
            from: "+14155550199".parse().unwrap(),
            agent_id: self.agent,
            customer_id: None,
            metadata: None,
        };
        let id = self
            .engine
            .create_call(self.org, req, None)
            .await
            .unwrap()
            .call
            .spec
            .id;
        self.settle().await;
        assert!(self.call(id).carrier_call_id.is_some(), "dialed");
        id
    }

    /// A call answered with its media stream up, its session started now, and one frame of
    /// caller audio (which anchors the recogniser's stream time at now).
    async fn conversing_call(&self) -> CallId {
        let id = self.dialed_call().await;
        let sessions = self.engine.voice_sessions();
        self.carrier_event(id, CarrierEvent::Answered).await;
        self.engine.media_started(id);
        self.settle().await;
        assert_eq!(
            self.engine.voice_sessions(),
            sessions + 1,
            "the session runs"
        );
        self.engine.media_audio(id, vec![0xff; 160]);
        self.settle().await;
        id
    }

    async fn carrier_event(&self, call: CallId, event: CarrierEvent) {
        let n = self.events.fetch_add(1, Ordering::SeqCst);
        self.engine
            .ingest_carrier_event(InboxItem {
                vendor: "test".into(),
                carrier_leg: None,
                event_id: format!("ev-{n}"),
                call_id: call,
                occurred_at: epoch(),
                event,
            })
            .await
            .unwrap();
        self.settle().await;
    }

    fn call(&self, id: CallId) -> Call {
        self.store.snapshot(id).expect("call stored")
    }

    /// Every journal kind, in order.
    fn kinds(&self, id: CallId) -> Vec<&'static str> {
        self.store
            .journal(id)
            .iter()
            .map(|e| e.event.kind())
            .collect()
    }

    /// When (ms since `t0`) the first journal entry of `kind` was applied.
    fn journaled_at(&self, id: CallId, kind: &str) -> Option<u64> {
        self.store
            .journal(id)
            .iter()
            .find(|e| e.event.kind() == kind)
            .map(|e| ms_since_epoch(e.at))
    }

    /// The conversation records, with when (ms since `t0`) each was journaled.
    fn records(&self, id: CallId) -> Vec<(u64, ConversationRecord)> {
        self.store
            .journal(id)
            .into_iter()
            .filter_map(|e| match e.event {
                Event::Conversation { record } => Some((ms_since_epoch(e.at), record)),
                _ => None,
            })
            .collect()
    }

    /// The carrier's commands of the call (answer, transfer, hangup).
    fn commands(&self, id: CallId) -> Vec<Command> {
        self.carrier
            .commands()
            .into_iter()
            .filter(|c| match c {
                Command::Dial(d) => d.call_id == id,
                Command::Answer(l) | Command::Hangup(l) | Command::Transfer(l, _) => {
                    l.call_id == id
                }
                Command::Reject { .. } => false,
            })
            .collect()
    }
}

fn ms_since_epoch(at: DateTime<Utc>) -> u64 {
    u64::try_from((at - epoch()).num_milliseconds()).unwrap()
}

fn agent(text: &str, start_ms: u64, end_ms: u64, turn: u32) -> ConversationRecord {
    ConversationRecord::Segment {
        speaker: Speaker::Agent,
        text: text.into(),
        start_ms,
        end_ms,
        confidence: 1.0,
        interrupted: false,
        turn,
    }
}

fn caller(text: &str, start_ms: u64, end_ms: u64, turn: u32) -> ConversationRecord {
    ConversationRecord::Segment {
        speaker: Speaker::Caller,
        text: text.into(),
        start_ms,
        end_ms,
        confidence: 0.9,
        interrupted: false,
        turn,
    }
}

fn lexicon(turn: u32, text: &str) -> ConversationRecord {
    let score = LexiconScorer.score_text(text);
    ConversationRecord::Sentiment {
        turn,
        score,
        label: SentimentLabel::of(score),
        source: "lexicon".into(),
        degraded: false,
    }
}

fn texts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(c, t)| ((*c).to_owned(), (*t).to_owned()))
        .collect()
}

fn without_system(messages: &[ChatMessage]) -> Vec<(ChatRole, String)> {
    messages[1..]
        .iter()
        .map(|m| (m.role, m.content.clone()))
        .collect()
}

// ------------------------------------------------------------------ greeting and a turn

#[tokio::test(start_paused = true)]
async fn greets_on_answer_then_answers_a_caller_turn() {
    let w =
        World::new(json!({"greeting": "Hi, this is Ava.", "turn_taking": {"speculate": false}}))
            .await;
    let id = w.conversing_call().await;
    let stt_options = w.stt.options(id);
    assert_eq!(stt_options.len(), 1);
    assert_eq!(
        (
            stt_options[0].language.as_str(),
            stt_options[0].endpointing_ms,
            stt_options[0].utterance_end_ms
        ),
        ("en", 300, 1000)
    );
    assert_eq!(w.tts.options(id)[0].model_id, "sonic-3");
    // The greeting goes to synthesis at once.
    assert_eq!(w.tts.texts(id), texts(&[("t0-u1", "Hi, this is Ava.")]));

    // 16 characters: 800 ms of audio from 100 ms, in four 200 ms chunks, each with its mark,
    // played out by 900 ms.
    w.at(1000).await;
    assert_eq!(w.media.audio_bytes(id), 6400);
    assert_eq!(
        w.media.marks(id),
        ["t0-u1@1600", "t0-u1@3200", "t0-u1@4800", "t0-u1@6400"]
    );
    let echoed: Vec<u128> = w
        .media
        .echoed(id)
        .iter()
        .map(|(_, at)| (*at - w.t0).as_millis())
        .collect();
    assert_eq!(echoed, [300, 500, 700, 900]);
    assert_eq!(
        w.records(id),
        [(900, agent("Hi, this is Ava.", 100, 900, 0))]
    );

    // The caller speaks 1000..1500 ms (stream time = time since the first frame at 0); the
    // final arrives at 1700, the turn ends after the 250 ms hold-off.
    w.llm
        .reply(LlmReply::text("We open at nine. See you soon."));
    w.at(1700).await;
    assert!(w.stt.say(id, "What are your opening hours?", 1000, 1500));
    w.at(1949).await;
    assert!(w.llm.requests().is_empty(), "the hold-off is not over");
    w.at(1950).await;
    let requests = w.llm.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].call_id, id);
    assert_eq!(requests[0].messages[0].role, ChatRole::System);
    assert!(requests[0].messages[0]
        .content
        .starts_with("You are a helpful, concise phone assistant."));
    assert_eq!(
        without_system(&requests[0].messages),
        [
            (ChatRole::Assistant, "Hi, this is Ava.".to_owned()),
            (ChatRole::User, "What are your opening hours?".to_owned()),
        ]
    );
    let tools: Vec<&str> = requests[0].tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        tools,
        ["end_call", "lookup_customer"],
        "no human_number: no transfer"
    );

    // Tokens from 2150 every 20 ms; "nine. " (2210) completes the first sentence, which is
    // spoken from 2310; the rest follows with `Done` (2290) and plays after it.
    w.at(5000).await;
    assert_eq!(
        w.tts.texts(id),
        texts(&[
            ("t0-u1", "Hi, this is Ava."),
            ("t1-u2", "We open at nine. See you soon.")
        ])
    );
    let said = "What are your opening hours?";
    assert_eq!(
        w.records(id),
        [
            (900, agent("Hi, this is Ava.", 100, 900, 0)),
            (1950, caller(said, 1000, 1500, 1)),
            (1950, lexicon(1, said)),
            (
                2310,
                ConversationRecord::TurnLatency {
                    turn: 1,
                    stt_us: 200_000,
                    holdoff_us: 250_000,
                    llm_first_token_us: 200_000,
                    llm_stream_us: 60_000,
                    tts_first_audio_us: 100_000,
                    total_us: 610_000,
                    engine_us: 0,
                    saved_us: 0,
                }
            ),
            (3760, agent("We open at nine. See you soon.", 2310, 3760, 1)),
        ]
    );
    assert_eq!(w.llm.completed(), [0]);

    // The caller hangs up: the session closes its streams and stops.
    w.carrier_event(
        id,
        CarrierEvent::HungUp {
            cause: HangupCause::NormalClearing,
        },
    )
    .await;
    let call = w.call(id);
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(call.end_reason, Some(EndReason::NormalClearing));
    assert_eq!(w.engine.voice_sessions(), 0);
    assert_eq!(
        w.stt.log(id),
        Some(SttLog {
            audio_bytes: 160,
            audio_chunks: 1,
            finalizes: 0,
            closed: true,
            ended: true,
        })
    );
    assert!(w.tts.closed(id));
    assert_eq!(
        w.kinds(id),
        [
            "created",
            "initiated",
            "answered",
            "transcript",
            "transcript",
            "sentiment",
            "turn_latency",
            "transcript",
            "hangup"
        ]
    );
    assert_eq!(w.engine.live_call_actors().await.unwrap(), 0);
    w.engine.shutdown().await;
}

// ------------------------------------------------------------------ media stream vs answer

#[tokio::test(start_paused = true)]
async fn a_media_stream_that_beats_the_answer_converses_once_answered() {
    let w = World::new(json!({"greeting": "Hi, this is Ava."})).await;
    let id = w.dialed_call().await;
    // The stream connects while the call still rings: nothing to say yet.
    w.engine.media_started(id);
    w.settle().await;
    assert_eq!(w.engine.voice_sessions(), 0);
    assert_eq!(w.stt.attempts(id), 0);
    assert_eq!(w.call(id).status, CallStatus::Pending);

    w.at(500).await;
    w.carrier_event(id, CarrierEvent::Answered).await;
    assert_eq!(
        w.engine.voice_sessions(),
        1,
        "the answer starts the conversation"
    );
    assert_eq!(w.tts.texts(id), texts(&[("t0-u1", "Hi, this is Ava.")]));
    // Another stream start (a reconnect) does not start a second conversation.
    w.engine.media_started(id);
    w.settle().await;
    assert_eq!((w.stt.opens(id), w.tts.opens(id)), (1, 1));

    // The session's clock starts at the answer (500): audio 100..900 of it.
    w.at(2000).await;
    assert_eq!(
        w.records(id),
        [(1400, agent("Hi, this is Ava.", 100, 900, 0))]
    );
    w.engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_answer_that_beats_the_media_stream_converses_once_it_starts() {
    let w = World::new(json!({"greeting": "Hi, this is Ava."})).await;
    let id = w.dialed_call().await;
    w.carrier_event(id, CarrierEvent::Answered).await;
    assert_eq!(w.call(id).status, CallStatus::InProgress);
    assert_eq!(w.engine.voice_sessions(), 0, "no stream, no conversation");
    assert_eq!(w.stt.attempts(id), 0);

    w.at(700).await;
    w.engine.media_started(id);
    w.settle().await;
    assert_eq!(w.engine.voice_sessions(), 1);
    assert_eq!(w.tts.texts(id), texts(&[("t0-u1", "Hi, this is Ava.")]));
    w.at(2000).await;
    assert_eq!(
        w.records(id),
        [(1600, agent("Hi, this is Ava.", 100, 900, 0))]
    );
    w.engine.shutdown().await;
}

// ------------------------------------------------------------------ barge-in

#[tokio::test(start_paused = true)]
async fn caller_speech_over_the_agent_cancels_synthesis_and_clears_the_stream() {
    let w = World::new(json!({"greeting": "Hi.", "turn_taking": {"speculate": false}})).await;
    let id = w.conversing_call().await;
    // A slow reply: one sentence per second.
    w.llm.reply(
        LlmReply::deltas(&[
            "Our hours are nine to five. ",
            "On weekends we open at ten. ",
            "Holidays vary.",
        ])
        .paced(Duration::from_millis(200), Duration::from_millis(1000)),
    );
    w.at(1000).await;
    assert!(w.stt.say(id, "What are your hours?", 500, 900));
    // Turn at 1250; the first sentence at 1450 is spoken from 1550: 27 characters, 1350 ms
    // in six 200 ms chunks and one of 150 ms.
    w.at(2000).await;
    assert_eq!(
        w.tts.texts(id),
        texts(&[("t0-u1", "Hi."), ("t1-u2", "Our hours are nine to five.")])
    );
    assert!(w.stt.push(id, SttEvent::SpeechStarted { at_ms: 1900 }));
    // Three real words stop the agent at once. By 2100 the carrier has echoed the marks of
    // two chunks (400 ms): "Our" (0-150 ms) and "hours" (200-450 ms) were heard.
    w.at(2100).await;
    assert!(w.stt.push(
        id,
        SttEvent::Transcript {
            text: "wait, what about".into(),
            is_final: false,
            speech_final: false,
            confidence: 0.8,
            start_ms: 1900,
            end_ms: 2050,
        }
    ));
    w.settle().await;
    assert_eq!(w.tts.cancelled(id), ["t1-u2"]);
    // 800 ms of queued audio (1550 + 1350 - 2100) never played.
    assert_eq!(
        w.media.clears(id),
        [(w.t0 + Duration::from_millis(2100), 6400)]
    );
    assert_eq!(w.llm.cancelled(), [0], "the rest of the reply is abandoned");
    let records = w.records(id);
    assert_eq!(
        records[records.len() - 2..],
        [
            (
                2100,
                ConversationRecord::Segment {
                    speaker: Speaker::Agent,
                    text: "Our hours".into(),
                    start_ms: 1550,
                    end_ms: 2100,
                    confidence: 1.0,
                    interrupted: true,
                    turn: 1,
                }
            ),
            (
                2100,
                ConversationRecord::BargeIn {
                    turn: 1,
                    at_ms: 2100,
                    heard_ms: 400,
                }
            ),
        ]
    );

    // The caller's words become the next turn; the model's context keeps only what was heard.
    w.at(2600).await;
    assert!(w.stt.push(
        id,
        SttEvent::Transcript {
            text: "wait, what about Sunday?".into(),
            is_final: true,
            speech_final: true,
            confidence: 0.9,
            start_ms: 1900,
            end_ms: 2500,
        }
    ));
    w.at(2850).await;
    let requests = w.llm.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        without_system(&requests[1].messages),
        [
            (ChatRole::Assistant, "Hi.".to_owned()),
            (ChatRole::User, "What are your hours?".to_owned()),
            (ChatRole::Assistant, "Our hours...".to_owned()),
            (ChatRole::User, "wait, what about Sunday?".to_owned()),
        ]
    );
    assert_eq!(
        w.records(id)[records.len()..],
        [
            (2850, caller("wait, what about Sunday?", 1900, 2500, 2)),
            (2850, lexicon(2, "wait, what about Sunday?")),
        ]
    );
    // Nothing of the cancelled context was sent after the cancel.
    let speaks: Vec<TtsInput> = w
        .tts
        .inputs(id)
        .into_iter()
        .filter(|i| matches!(i, TtsInput::Speak { context, .. } if context == "t1-u2"))
        .collect();
    assert_eq!(speaks.len(), 1);
    w.engine.shutdown().await;
}

/// A media stream that never echoes marks: once a mark is overdue (1 s past its audio's
/// end) the audio's own duration says what played. The reply is journaled with its text, not
/// interrupted, when its audio has played by duration; the caller's next words are a turn
/// (not a barge-in over a reply that "never finished"), and the model's context keeps it.
#[tokio::test(start_paused = true)]
async fn without_mark_echoes_replies_count_as_heard_by_their_duration() {
    let w = World::new(json!({"greeting": "Hi."})).await;
    w.media.stop_echo();
    w.llm.reply(LlmReply::text("We open at nine."));
    w.llm.reply(LlmReply::text("Sundays too."));
    let id = w.conversing_call().await;
    w.at(3000).await;
    assert!(w.stt.say(id, "What are your hours?", 2500, 2900));
    // Turn at 3250; the reply (16 characters, 800 ms of audio) plays from about 3630 to 4430.
    w.at(5000).await;
    assert!(w.stt.say(id, "And on Sundays?", 4600, 4900));
    w.at(6000).await;
    assert!(w.media.echoed(id).is_empty(), "no mark came back");
    let requests = w.llm.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        without_system(&requests[1].messages),
        [
            (ChatRole::Assistant, "Hi.".to_owned()),
            (ChatRole::User, "What are your hours?".to_owned()),
            (ChatRole::Assistant, "We open at nine.".to_owned()),
            (ChatRole::User, "And on Sundays?".to_owned()),
        ]
    );
    let agent_segments: Vec<(String, bool)> = w
        .records(id)
        .into_iter()
        .filter_map(|(_, r)| match r {
            ConversationRecord::Segment {
                speaker: Speaker::Agent,
                text,
                interrupted,
                ..
            } => Some((text, interrupted)),
            _ => None,
        })
        .collect();
    assert_eq!(
        agent_segments[..2],
        [
            ("Hi.".to_owned(), false),
            ("We open at nine.".to_owned(), false)
        ]
    );
    assert!(!w.kinds(id).contains(&"barge_in"));
    assert!(!w
        .records(id)
        .iter()
        .any(|(_, r)| matches!(r, ConversationRecord::BargeIn { .. })));
    w.engine.shutdown().await;
}

/// A barge-in when the media stream does not echo marks: what the caller heard is what the
/// audio's duration says had played when they cut in, and the model's context keeps exactly
/// that.
#[tokio::test(start_paused = true)]
async fn without_mark_echoes_a_barge_in_cuts_the_reply_at_its_played_duration() {
    let w = World::new(json!({"greeting": "Hi.", "turn_taking": {"speculate": false}})).await;
    w.media.stop_echo();
    w.llm.reply(
        LlmReply::deltas(&[
            "Our hours are nine to five. ",
            "On weekends we open at ten. ",
        ])
        .paced(Duration::from_millis(200), Duration::from_millis(1000)),
    );
    let id = w.conversing_call().await;
    // The greeting's mark is overdue at 1250 (its audio ended at 250): from then on the
    // audio's duration says what played.
    w.at(2000).await;
    assert!(w.stt.say(id, "What are your hours?", 1500, 1900));
    // The first sentence is spoken from 2550 (1350 ms of audio). At 3250, 700 ms of it has
    // played: "Our" (0-150), "hours" (200-450), "are" (500-650).
    w.at(3250).await;
    assert!(w.stt.push(
        id,
        SttEvent::Transcript {
            text: "wait, what about".into(),
            is_final: false,
            speech_final: false,
            confidence: 0.8,
            start_ms: 3100,
            end_ms: 3200,
        }
    ));
    w.settle().await;
    let records = w.records(id);
    assert_eq!(
        records[records.len() - 2..],
        [
            (
                3250,
                ConversationRecord::Segment {
                    speaker: Speaker::Agent,
                    text: "Our hours are".into(),
                    start_ms: 2550,
                    end_ms: 3250,
                    confidence: 1.0,
                    interrupted: true,
                    turn: 1,
                }
            ),
            (
                3250,
                ConversationRecord::BargeIn {
                    turn: 1,
                    at_ms: 3250,
                    heard_ms: 700,
                }
            ),
        ]
    );
    w.at(3700).await;
    assert!(w.stt.push(
        id,
        SttEvent::Transcript {
            text: "wait, what about Sunday?".into(),
            is_final: true,
            speech_final: true,
            confidence: 0.9,
            start_ms: 3100,
            end_ms: 3600,
        }
    ));
    w.at(4000).await;
    let requests = w.llm.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        without_system(&requests[1].messages),
        [
            (ChatRole::Assistant, "Hi.".to_owned()),
            (ChatRole::User, "What are your hours?".to_owned()),
            (ChatRole::Assistant, "Our hours are...".to_owned()),
            (ChatRole::User, "wait, what about Sunday?".to_owned()),
        ]
    );
    w.engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_model_hands_the_call_to_a_person_with_a_tool_call() {
    let w = World::new(
        json!({"greeting": "Hi.", "human_number": HUMAN, "turn_taking": {"speculate": false}}),
    )
    .await;
    let arguments = r#"{"reason":"billing dispute"}"#;
    w.llm.reply(LlmReply::tool_call(
        "call_1",
        "transfer_to_human",
        arguments,
    ));
    let id = w.conversing_call().await;
    w.at(1000).await;
    assert!(w.stt.say(id, "My bill is wrong.", 500, 900));
    // Turn at 1250; the tool call at 1450, `Done` at 1470; the handoff line (49 characters,
    // 2450 ms) plays from 1570, then the transfer.
    w.at(5000).await;
    let tools: Vec<String> = w.llm.requests()[0]
        .tools
        .iter()
        .map(|t| t.name.clone())
        .collect();
    assert_eq!(tools, ["end_call", "transfer_to_human", "lookup_customer"]);
    // A negative turn makes the agent empathetic before the model is asked.
    assert!(w.llm.requests()[0].messages[0]
        .content
        .contains("The caller sounds frustrated."));
    let handoff = "Let me connect you with a colleague who can help.";
    assert_eq!(
        w.records(id)[1..],
        [
            (1250, caller("My bill is wrong.", 500, 900, 1)),
            (
                1250,
                ConversationRecord::ToneChanged {
                    turn: 1,
                    from: Tone::Normal,
                    to: Tone::Empathetic,
                    reason: "lexicon estimate: score -0.42 <= -0.3".into(),
                }
            ),
            (1250, lexicon(1, "My bill is wrong.")),
            (
                1470,
                ConversationRecord::ToolCall {
                    turn: 1,
                    name: "transfer_to_human".into(),
                    arguments: arguments.into(),
                    result: "ok".into(),
                    duration_ms: 0,
                    ok: true,
                }
            ),
            (
                1470,
                ConversationRecord::Escalation {
                    turn: 1,
                    reason: EscalationReason::Tool,
                    detail: arguments.into(),
                    to: Some(HUMAN.into()),
                }
            ),
            (4020, agent(handoff, 1570, 4020, 1)),
        ]
    );
    assert_eq!(w.journaled_at(id, "transfer_requested"), Some(4020));
    assert_eq!(w.engine.voice_sessions(), 0);

    // The conversation is over: a call actor that crashes now (the database is down when it
    // journals a media report) is re-activated without starting another one.
    w.store.set_down(true);
    w.engine.report_media(
        id,
        crate::machine::MediaReport {
            stream_id: "s".into(),
            frames_in: 1,
            frames_out: 1,
            gaps: 0,
            jitter_ms: 0.0,
            duration_ms: 20,
        },
    );
    w.at(5100).await;
    w.store.set_down(false);
    w.at(6000).await;
    assert_eq!(
        w.engine.live_call_actors().await.unwrap(),
        1,
        "re-activated"
    );
    assert_eq!(w.engine.voice_sessions(), 0);
    assert_eq!((w.stt.opens(id), w.tts.opens(id)), (1, 1));
    assert_eq!(w.call(id).status, CallStatus::InProgress);
    w.engine.shutdown().await;
}

// ------------------------------------------------------------------ speech-to-text gaps and failure

#[tokio::test(start_paused = true)]
async fn a_recogniser_gap_is_journaled_and_its_failure_hands_the_call_to_a_person() {
    let w = World::new(
        json!({"greeting": "Hi.", "human_number": HUMAN, "turn_taking": {"speculate": false}}),
    )
    .await;
    let id = w.conversing_call().await;
    w.at(1000).await;
    assert!(w.stt.push(
        id,
        SttEvent::Reconnected {
            gap_ms: 320,
            reason: "closed 1011 NET-0000".into(),
        }
    ));
    // The call goes on: the next turn is answered.
    w.llm.reply(LlmReply::text("We open at nine."));
    w.at(1500).await;
    assert!(w.stt.say(id, "What are your hours?", 1200, 1400));
    w.at(3500).await;
    assert_eq!(w.llm.requests().len(), 1);
    assert_eq!(
        w.records(id),
        [
            (250, agent("Hi.", 100, 250, 0)),
            (
                1000,
                ConversationRecord::VendorGap {
                    vendor: "stt".into(),
                    gap_ms: 320,
                    reason: "closed 1011 NET-0000".into(),
                }
            ),
            (1750, caller("What are your hours?", 1200, 1400, 1)),
            (1750, lexicon(1, "What are your hours?")),
            (
                2130,
                ConversationRecord::TurnLatency {
                    turn: 1,
                    stt_us: 100_000,
                    holdoff_us: 250_000,
                    llm_first_token_us: 200_000,
                    llm_stream_us: 80_000,
                    tts_first_audio_us: 100_000,
                    total_us: 630_000,
                    engine_us: 0,
                    saved_us: 0,
                }
            ),
            (2930, agent("We open at nine.", 2130, 2930, 1)),
        ]
    );

    // The recogniser gives up: apology (45 characters, 2250 ms from 4100), then the transfer.
    w.at(4000).await;
    assert!(w.stt.push(
        id,
        SttEvent::Failed {
            reason: "reconnects exhausted".into(),
        }
    ));
    w.at(7000).await;
    let records = w.records(id);
    assert_eq!(
        records[6..],
        [
            (
                4000,
                ConversationRecord::VendorFailure {
                    vendor: "stt".into(),
                    reason: "reconnects exhausted".into(),
                    action: "transfer".into(),
                }
            ),
            (
                4000,
                ConversationRecord::Escalation {
                    turn: 1,
                    reason: EscalationReason::VendorFailure,
                    detail: "stt: reconnects exhausted".into(),
                    to: Some(HUMAN.into()),
                }
            ),
            (6350, agent(APOLOGY, 4100, 6350, 1)),
        ]
    );
    assert_eq!(w.journaled_at(id, "transfer_requested"), Some(6350));
    let to: crate::machine::PhoneNumber = HUMAN.parse().unwrap();
    assert!(w
        .commands(id)
        .iter()
        .any(|c| matches!(c, Command::Transfer(_, t) if *t == to)));
    assert_eq!(w.call(id).status, CallStatus::InProgress, "until bridged");
    assert_eq!(w.engine.voice_sessions(), 0, "the conversation is over");
    assert!(w.tts.closed(id));
    w.engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_recogniser_failure_ends_the_call_when_the_agent_says_end() {
    let w = World::new(json!({
        "greeting": "Hi.", "human_number": HUMAN, "on_vendor_failure": "end"
    }))
    .await;
    let id = w.conversing_call().await;
    w.at(1000).await;
    assert!(w.stt.push(
        id,
        SttEvent::Failed {
            reason: "breaker open".into(),
        }
    ));
    w.at(4000).await;
    assert_eq!(
        w.records(id),
        [
            (250, agent("Hi.", 100, 250, 0)),
            (
                1000,
                ConversationRecord::VendorFailure {
                    vendor: "stt".into(),
                    reason: "breaker open".into(),
                    action: "end".into(),
                }
            ),
            (3350, agent(APOLOGY, 1100, 3350, 0)),
        ]
    );
    let call = w.call(id);
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(call.end_reason, Some(EndReason::VoiceFailure));
    assert_eq!(w.journaled_at(id, "agent_hangup"), Some(3350));
    assert!(w
        .commands(id)
        .iter()
        .any(|c| matches!(c, Command::Hangup(_))));
    assert!(w.llm.requests().is_empty());
    w.engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_recogniser_that_cannot_open_cuts_the_greeting_short_with_the_apology() {
    let w = World::new(json!({"greeting": "Hi, this is Ava."})).await;
    w.stt.refuse_opens(Some("breaker open"));
    let id = w.conversing_call().await;
    assert_eq!(w.stt.opens(id), 0);
    assert_eq!(
        w.tts.inputs(id),
        [
            TtsInput::Speak {
                context: "t0-u1".into(),
                text: "Hi, this is Ava.".into(),
                last: true,
            },
            TtsInput::Cancel {
                context: "t0-u1".into()
            },
            TtsInput::Speak {
                context: "t0-u2".into(),
                text: APOLOGY.into(),
                last: true,
            },
        ]
    );
    w.at(3000).await;
    assert_eq!(
        w.records(id),
        [
            (
                0,
                ConversationRecord::VendorFailure {
                    vendor: "stt".into(),
                    reason: "scripted-stt unavailable: breaker open".into(),
                    action: "end".into(),
                }
            ),
            (2350, agent(APOLOGY, 100, 2350, 0)),
        ]
    );
    assert_eq!(w.call(id).end_reason, Some(EndReason::VoiceFailure));
    w.engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_model_that_cannot_answer_apologises_and_ends_the_call() {
    // No holding for the model (`reply_wait_ms: 0`): the policy applies at once.
    let w = World::new(
        json!({"greeting": "Hi.", "reply_wait_ms": 0, "turn_taking": {"speculate": false}}),
    )
    .await;
    w.llm.reply(LlmReply::unavailable("breaker open"));
    let id = w.conversing_call().await;
    w.at(1000).await;
    assert!(w.stt.say(id, "What are your hours?", 500, 900));
    w.at(4000).await;
    assert_eq!(w.llm.requests().len(), 1);
    assert_eq!(
        w.records(id)[1..],
        [
            (1250, caller("What are your hours?", 500, 900, 1)),
            (1250, lexicon(1, "What are your hours?")),
            (
                1250,
                ConversationRecord::VendorFailure {
                    vendor: "llm".into(),
                    reason: "scripted-llm unavailable: breaker open".into(),
                    action: "end".into(),
                }
            ),
            (3600, agent(APOLOGY, 1350, 3600, 1)),
        ]
    );
    assert_eq!(w.call(id).end_reason, Some(EndReason::VoiceFailure));
    w.engine.shutdown().await;
}

/// The model's breaker is open when the caller's turn ends: the caller hears the hold line,
/// the reply is asked again 1 s and then 2 s later, and once the model answers (the breaker
/// half-opened and closed) the conversation goes on; the outage is journaled as a gap, never
/// as a failure, and the call is not ended.
#[tokio::test(start_paused = true)]
async fn a_model_that_cannot_answer_for_a_moment_holds_the_caller_and_goes_on() {
    let w = World::new(
        json!({"greeting": "Hi.", "hold": "One moment.", "turn_taking": {"speculate": false}}),
    )
    .await;
    w.llm
        .reply(LlmReply::unavailable("the groq circuit breaker is open"));
    w.llm
        .reply(LlmReply::unavailable("the groq circuit breaker is open"));
    w.llm.reply(LlmReply::text("We open at nine."));
    let id = w.conversing_call().await;
    w.at(1000).await;
    assert!(w.stt.say(id, "What are your hours?", 500, 900));
    w.at(8000).await;
    // Asked at 1250 (turn end), 2250 and 4250.
    assert_eq!(w.llm.requests().len(), 3);
    assert_eq!(
        w.tts.texts(id),
        texts(&[
            ("t0-u1", "Hi."),
            ("t1-u2", "One moment."),
            ("t1-u3", "We open at nine.")
        ])
    );
    let records: Vec<ConversationRecord> = w.records(id).into_iter().map(|(_, r)| r).collect();
    assert!(
        records.contains(&ConversationRecord::VendorGap {
            vendor: "llm".into(),
            gap_ms: 3200,
            reason: "scripted-llm unavailable: the groq circuit breaker is open".into(),
        }),
        "{records:?}"
    );
    assert!(
        !records
            .iter()
            .any(|r| matches!(r, ConversationRecord::VendorFailure { .. })),
        "{records:?}"
    );
    assert!(records.iter().any(|r| matches!(r,
        ConversationRecord::Segment { speaker: Speaker::Agent, text, interrupted: false, .. }
            if text == "We open at nine.")));
    assert_eq!(w.call(id).status, CallStatus::InProgress);
    assert_eq!(w.call(id).end_reason, None);
    w.engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_model_stream_that_breaks_mid_reply_apologises_and_ends_the_call() {
    let w = World::new(json!({"greeting": "Hi.", "turn_taking": {"speculate": false}})).await;
    // One word every 200 ms from 1450: "nine. " (2050) completes a sentence, spoken from 2150;
    // the stream breaks at 2650, when the carrier has confirmed 400 ms of it ("We open") and
    // 300 ms are still queued.
    w.llm.reply(
        LlmReply::failing("We open at nine. On Sundays", "connection reset")
            .paced(Duration::from_millis(200), Duration::from_millis(200)),
    );
    let id = w.conversing_call().await;
    w.at(1000).await;
    assert!(w.stt.say(id, "What are your hours?", 500, 900));
    w.at(6000).await;
    assert_eq!(w.tts.cancelled(id), ["t1-u2"]);
    assert_eq!(
        w.media.clears(id),
        [(w.t0 + Duration::from_millis(2650), 2400)]
    );
    assert_eq!(
        w.tts.texts(id),
        texts(&[
            ("t0-u1", "Hi."),
            ("t1-u2", "We open at nine."),
            ("t1-u3", APOLOGY)
        ])
    );
    assert_eq!(
        w.records(id)[3..],
        [
            (
                2150,
                ConversationRecord::TurnLatency {
                    turn: 1,
                    stt_us: 100_000,
                    holdoff_us: 250_000,
                    llm_first_token_us: 200_000,
                    llm_stream_us: 600_000,
                    tts_first_audio_us: 100_000,
                    total_us: 1_150_000,
                    engine_us: 0,
                    saved_us: 0,
                }
            ),
            (
                2650,
                ConversationRecord::VendorFailure {
                    vendor: "llm".into(),
                    reason: "connection reset".into(),
                    action: "end".into(),
                }
            ),
            (
                2650,
                ConversationRecord::Segment {
                    speaker: Speaker::Agent,
                    text: "We open".into(),
                    start_ms: 2150,
                    end_ms: 2650,
                    confidence: 1.0,
                    interrupted: true,
                    turn: 1,
                }
            ),
            (5000, agent(APOLOGY, 2750, 5000, 1)),
        ]
    );
    assert_eq!(w.call(id).end_reason, Some(EndReason::VoiceFailure));
    w.engine.shutdown().await;
}

// ------------------------------------------------------------------ keypad and answering machines

#[tokio::test(start_paused = true)]
async fn keypad_digits_reach_the_conversation_as_one_turn() {
    let w = World::new(json!({"greeting": "Hi."})).await;
    let id = w.conversing_call().await;
    w.at(1000).await;
    w.carrier_event(id, CarrierEvent::Dtmf { digit: "4".into() })
        .await;
    w.at(1300).await;
    w.carrier_event(id, CarrierEvent::Dtmf { digit: "2".into() })
        .await;
    // Digits 1.2 s apart would be two inputs; these are one, closed 1.2 s after the last.
    w.at(2499).await;
    assert!(w.llm.requests().is_empty());
    w.at(2500).await;
    let said = "[The caller pressed the keys: 42]";
    let requests = w.llm.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        without_system(&requests[0].messages).last(),
        Some(&(ChatRole::User, said.to_owned()))
    );
    // The keys' turn spans the first key to the last.
    let mut keys = caller(said, 1000, 1300, 1);
    if let ConversationRecord::Segment { confidence, .. } = &mut keys {
        *confidence = 0.0;
    }
    assert_eq!(
        w.records(id)[1..],
        [
            (
                2500,
                ConversationRecord::Dtmf {
                    turn: 1,
                    digits: "42".into(),
                }
            ),
            (2500, keys),
            (2500, lexicon(1, said)),
        ]
    );
    assert_eq!(
        w.kinds(id)[3..],
        [
            "transcript",
            "dtmf",
            "dtmf",
            "dtmf_input",
            "transcript",
            "sentiment"
        ]
    );
    // The reply ("Okay.", spoken from 2820): the wait for more keys counts as the
    // recogniser's share, like the silence before a final transcript.
    w.at(3000).await;
    assert_eq!(
        w.records(id).last(),
        Some(&(
            2820,
            ConversationRecord::TurnLatency {
                turn: 1,
                stt_us: 1_200_000,
                holdoff_us: 0,
                llm_first_token_us: 200_000,
                llm_stream_us: 20_000,
                tts_first_audio_us: 100_000,
                total_us: 320_000,
                engine_us: 0,
                saved_us: 0,
            }
        ))
    );
    w.engine.shutdown().await;
}

fn amd_config() -> EngineConfig {
    EngineConfig {
        await_amd: true,
        ..EngineConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn an_answering_machine_gets_the_voicemail_message_after_its_greeting() {
    let w = World::with(
        json!({"greeting": "Hi.", "voicemail": "leave_message",
               "voicemail_message": "Please call us back."}),
        amd_config(),
    )
    .await;
    let id = w.conversing_call().await;
    assert!(
        w.tts.texts(id).is_empty(),
        "the greeting waits for the verdict"
    );
    w.at(1000).await;
    w.carrier_event(
        id,
        CarrierEvent::MachineDetection {
            result: AmdResult::Machine,
        },
    )
    .await;
    // The machine's greeting ends at 3000: the message (20 characters, 1000 ms) follows.
    w.at(3000).await;
    assert!(w
        .stt
        .say(id, "You have reached Bob. Leave a message.", 1200, 2900));
    w.at(5000).await;
    assert_eq!(w.tts.texts(id), texts(&[("t0-u1", "Please call us back.")]));
    assert_eq!(
        w.records(id),
        [
            (
                1000,
                ConversationRecord::Voicemail {
                    action: "leave_message".into(),
                }
            ),
            (4100, agent("Please call us back.", 3100, 4100, 0)),
        ]
    );
    let call = w.call(id);
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(call.end_reason, Some(EndReason::Voicemail));
    assert_eq!(w.journaled_at(id, "agent_hangup"), Some(4100));
    assert!(w.llm.requests().is_empty());
    w.engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_machine_verdict_before_the_media_stream_hangs_up_without_greeting() {
    let w = World::with(json!({"greeting": "Hi."}), amd_config()).await;
    let id = w.dialed_call().await;
    w.carrier_event(id, CarrierEvent::Answered).await;
    w.carrier_event(
        id,
        CarrierEvent::MachineDetection {
            result: AmdResult::Machine,
        },
    )
    .await;
    w.at(500).await;
    w.engine.media_started(id);
    w.settle().await;
    assert!(w.tts.texts(id).is_empty(), "a machine is not greeted");
    assert_eq!(
        w.records(id),
        [(
            500,
            ConversationRecord::Voicemail {
                action: "hang_up".into(),
            }
        )]
    );
    let call = w.call(id);
    assert_eq!(call.end_reason, Some(EndReason::Voicemail));
    assert_eq!(w.journaled_at(id, "agent_hangup"), Some(500));
    w.engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn without_a_verdict_the_greeting_waits_amd_wait_ms_and_a_human_is_greeted_at_once() {
    let w = World::with(
        json!({"greeting": "Hi.", "amd_wait_ms": 2000}),
        amd_config(),
    )
    .await;
    let silent = w.conversing_call().await;
    let human = w.conversing_call().await;
    w.at(300).await;
    w.carrier_event(
        human,
        CarrierEvent::MachineDetection {
            result: AmdResult::Human,
        },
    )
    .await;
    assert_eq!(w.tts.texts(human), texts(&[("t0-u1", "Hi.")]));
    w.at(1999).await;
    assert!(w.tts.texts(silent).is_empty());
    w.at(2000).await;
    assert_eq!(w.tts.texts(silent), texts(&[("t0-u1", "Hi.")]));
    w.at(3000).await;
    assert_eq!(w.records(human), [(550, agent("Hi.", 400, 550, 0))]);
    assert_eq!(
        w.records(silent),
        [
            (
                2000,
                ConversationRecord::AmdAssumedHuman {
                    reason: "no verdict within amd_wait_ms".into(),
                    waited_ms: 2000,
                }
            ),
            (2250, agent("Hi.", 2100, 2250, 0))
        ]
    );
    w.engine.shutdown().await;
}

// ------------------------------------------------------------------ silence

#[tokio::test(start_paused = true)]
async fn a_silent_caller_is_reprompted_then_the_call_ends_for_silence() {
    let w = World::new(json!({"greeting": "Hi."})).await;
    let id = w.conversing_call().await;
    // Silence counts from the end of the greeting (250): reprompt at 7250, goodbye at 20250.
    w.at(7249).await;
    assert_eq!(w.tts.texts(id).len(), 1);
    w.at(7250).await;
    assert_eq!(
        w.tts.texts(id),
        texts(&[("t0-u1", "Hi."), ("t0-u2", "Are you still there?")])
    );
    w.at(20249).await;
    assert_eq!(w.tts.texts(id).len(), 2);
    assert_eq!(w.call(id).status, CallStatus::InProgress);
    w.at(23000).await;
    assert_eq!(
        w.records(id),
        [
            (250, agent("Hi.", 100, 250, 0)),
            (8350, agent("Are you still there?", 7350, 8350, 0)),
            (
                21900,
                agent("Thank you for calling. Goodbye!", 20350, 21900, 0)
            ),
        ]
    );
    let call = w.call(id);
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(call.end_reason, Some(EndReason::Silence));
    assert_eq!(w.journaled_at(id, "agent_hangup"), Some(21900));
    assert_eq!(w.now_ms(), 23000);
    assert!(w.llm.requests().is_empty());
    w.engine.shutdown().await;
}

// ------------------------------------------------------------------ session crashes

#[tokio::test(start_paused = true)]
async fn a_crashed_session_is_restarted_and_greets_anew() {
    let w = World::new(json!({"greeting": "Hi."})).await;
    // The greeting's first audio (at 100) crashes the session.
    w.media.panic_on_next_audio(1);
    let id = w.conversing_call().await;
    w.at(100).await;
    assert_eq!(w.engine.voice_sessions(), 1, "restarted");
    assert_eq!((w.stt.opens(id), w.tts.opens(id)), (2, 2));
    // The crashed session's streams were dropped with it (no `Close`).
    let logs = w.stt.logs(id);
    assert_eq!(
        (logs[0].ended, logs[0].closed, logs[1].ended),
        (true, false, false)
    );
    assert_eq!(w.tts.ended(id), [true, false]);
    w.at(1000).await;
    // One greeting reached the caller: the new session's (its clock starts at 100).
    assert_eq!(w.media.audio_bytes(id), 1200);
    assert_eq!(w.records(id), [(350, agent("Hi.", 100, 250, 0))]);
    assert_eq!(w.call(id).status, CallStatus::InProgress);
    w.engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_session_that_keeps_crashing_ends_the_call_as_voice_failure() {
    let w = World::new(json!({"greeting": "Hi."})).await;
    w.stt.panic_on_next_opens(5);
    let id = w.dialed_call().await;
    w.carrier_event(id, CarrierEvent::Answered).await;
    w.engine.media_started(id);
    w.settle().await;
    // The first session and two restarts crash; then the call ends.
    assert_eq!(w.stt.attempts(id), 3);
    let call = w.call(id);
    assert_eq!(call.status, CallStatus::Completed);
    assert_eq!(call.end_reason, Some(EndReason::VoiceFailure));
    assert_eq!(
        w.kinds(id),
        [
            "created",
            "initiated",
            "answered",
            "agent_hangup",
            "leg_released"
        ]
    );
    assert_eq!(w.engine.voice_sessions(), 0);
    assert!(w
        .commands(id)
        .iter()
        .any(|c| matches!(c, Command::Hangup(_))));
    w.at(1000).await;
    assert_eq!(w.stt.attempts(id), 3, "no session after the call ended");
    assert_eq!(w.engine.live_call_actors().await.unwrap(), 0);
    w.engine.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_call_actor_crash_restarts_the_conversation_with_the_call() {
    let w = World::new(json!({"greeting": "Hi."})).await;
    let id = w.conversing_call().await;
    w.carrier.set_status(id, crate::ports::LegStatus::Answered);
    // The database is down when the greeting's segment (250) is journaled: the call actor
    // crashes, stopping its conversation; the supervisor re-activates it 200 ms later.
    w.at(200).await;
    w.store.set_down(true);
    w.at(300).await;
    w.store.set_down(false);
    assert_eq!(w.engine.voice_sessions(), 0, "stopped with its call actor");
    // Killed with its parent (ractor terminates a failed actor's children): the streams are
    // dropped, not closed.
    let first = &w.stt.logs(id)[0];
    assert_eq!((first.ended, first.closed), (true, false));
    // The media stream is still up: the re-activated call converses again.
    w.at(1000).await;
    assert_eq!(w.engine.voice_sessions(), 1);
    assert_eq!((w.stt.opens(id), w.tts.opens(id)), (2, 2));
    assert_eq!(w.records(id), [(700, agent("Hi.", 100, 250, 0))]);
    assert_eq!(w.call(id).status, CallStatus::InProgress);
    w.engine.media_audio(id, vec![0xff; 160]);
    w.settle().await;
    assert_eq!(w.stt.log(id).map(|l| l.audio_bytes), Some(160));
    w.engine.shutdown().await;
}

/// With learning on, the conversation starts with what earlier calls taught: the agent's
/// best patterns are in the model's instructions and the journal says which were used.
#[tokio::test(start_paused = true)]
async fn recalled_patterns_are_in_the_context_and_journaled() {
    use crate::learning::recall::Recall;
    use crate::learning::LocalEmbedder;
    use crate::ports::learning::{LearnedRows, LearningStore, NewPattern};
    use crate::ports::learning::{PatternDraft, PatternType};
    use crate::testkit::MemoryLearningStore;
    let learning = Arc::new(MemoryLearningStore::new());
    let source = Uuid::from_u128(0x5);
    learning.enqueue(source, Uuid::from_u128(0xA), epoch());
    let description = "Tools used in order: lookup_customer; the call succeeded";
    let pattern = NewPattern {
        id: Uuid::from_u128(0x9A7),
        organization_id: Uuid::from_u128(0xA),
        agent_id: Uuid::from_u128(0xA6E),
        source_call_id: source,
        draft: PatternDraft {
            pattern_type: PatternType::ToolSequence,
            data: json!({"tools": ["lookup_customer"]}),
            description: description.into(),
        },
        embedding: LocalEmbedder::vector(description),
        model: "local-ngram-v1".into(),
        created_at: epoch(),
    };
    learning
        .finish_learning(
            source,
            &LearnedRows {
                patterns: vec![pattern],
                ..LearnedRows::default()
            },
            epoch(),
        )
        .await
        .unwrap();
    let recall = Recall {
        queries: learning.clone(),
        embedder: Arc::new(LocalEmbedder),
        half_life: Duration::from_secs(90 * 86_400),
    };
    let w = World::build(
        json!({"greeting": "Hi."}),
        EngineConfig::default(),
        Some(recall),
    )
    .await;
    let id = w.conversing_call().await;
    let retrieved: Vec<ConversationRecord> = w
        .store
        .journal(id)
        .into_iter()
        .filter_map(|e| match e.event {
            crate::machine::Event::Conversation { record }
                if record.kind() == "context_retrieved" =>
            {
                Some(record)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        retrieved,
        [ConversationRecord::ContextRetrieved {
            memories: Vec::new(),
            patterns: vec![Uuid::from_u128(0x9A7)],
            escalation_risk: 0.0,
            degraded: None,
        }]
    );
    w.llm.reply(LlmReply::text("Sure."));
    w.at(1700).await;
    assert!(w.stt.say(id, "Can you check my account?", 1000, 1500));
    w.at(1950).await;
    let requests = w.llm.requests();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0].messages[0].content.contains(&format!(
            "What worked on earlier calls like this one:\n- {description}"
        )),
        "{}",
        requests[0].messages[0].content
    );
}

// ------------------------------------------------------------------ speculative replies

/// The caller's `Transcript` event (final and endpointed, or interim).
fn heard(text: &str, start_ms: u64, end_ms: u64, is_final: bool) -> SttEvent {
    SttEvent::Transcript {
        text: text.into(),
        is_final,
        speech_final: is_final,
        confidence: 0.9,
        start_ms,
        end_ms,
    }
}

#[tokio::test(start_paused = true)]
async fn a_speculative_reply_is_asked_for_at_the_end_of_the_utterance_and_plays_after_the_holdoff()
{
    let w = World::new(json!({"greeting": "Hi, this is Ava."})).await;
    let id = w.conversing_call().await;
    w.llm
        .reply(LlmReply::text("We open at nine. See you soon."));
    // The same turn as `greets_on_answer_then_answers_a_caller_turn`: the final at 1700.
    w.at(1700).await;
    assert!(w.stt.say(id, "What are your opening hours?", 1000, 1500));
    w.settle().await;
    // The model is asked at once, with the context the committed turn will have.
    let requests = w.llm.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        without_system(&requests[0].messages),
        [
            (ChatRole::Assistant, "Hi, this is Ava.".to_owned()),
            (ChatRole::User, "What are your opening hours?".to_owned()),
        ]
    );
    assert_eq!(w.speculations(), (1, 0, 0, 0));
    // Nothing is journaled before the hold-off passes.
    w.at(1949).await;
    assert_eq!(w.records(id).len(), 1, "only the greeting");

    // Tokens from 1900: "nine. " (1960) is spoken from 2060, 250 ms sooner than when the
    // model is asked at the end of the hold-off (2310 there).
    w.at(5000).await;
    let said = "What are your opening hours?";
    assert_eq!(
        w.records(id),
        [
            (900, agent("Hi, this is Ava.", 100, 900, 0)),
            (1950, caller(said, 1000, 1500, 1)),
            (1950, lexicon(1, said)),
            (
                2060,
                Reply {
                    turn: 1,
                    stt: 200,
                    final_at: 1700,
                    requested: 1700,
                    stream: 60,
                    committed: 1950,
                    played: 2060
                }
                .latency()
            ),
            (3510, agent("We open at nine. See you soon.", 2060, 3510, 1)),
        ]
    );
    assert_eq!(w.llm.completed(), [0]);
    assert_eq!(w.speculations(), (1, 1, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_caller_who_goes_on_during_the_holdoff_never_hears_the_speculative_reply() {
    let w = World::new(json!({"greeting": "Hi."})).await;
    let id = w.conversing_call().await;
    // The first reply streams slowly: a word every 100 ms from 1900.
    w.llm.reply(
        LlmReply::text("Sure, for how many people and at what time?")
            .paced(Duration::from_millis(200), Duration::from_millis(100)),
    );
    w.llm
        .reply(LlmReply::text("A table for four tonight, done."));
    w.at(1700).await;
    assert!(w.stt.say(id, "I'd like to book a table.", 1000, 1500));
    // The caller goes on at 1800, inside the hold-off; "Sure, " (1900) is synthesized and its
    // audio (2000) held, not played.
    w.at(1800).await;
    assert!(w.stt.push(id, SttEvent::SpeechStarted { at_ms: 1800 }));
    w.at(2050).await;
    assert!(
        w.tts
            .texts(id)
            .iter()
            .any(|(ctx, text)| ctx == "t1-u2" && text == "Sure,"),
        "{:?}",
        w.tts.texts(id)
    );
    assert!(w.media.marks(id).iter().all(|m| !m.starts_with("t1-u2")));
    assert_eq!(w.records(id).len(), 1, "only the greeting");
    // Their words end at 2100; the final (2350) makes one turn of both parts, answered by a
    // new request; the first is cancelled with its synthesis, after five tokens.
    w.at(2350).await;
    assert!(w
        .stt
        .push(id, heard("For four people tonight.", 1800, 2100, true)));
    w.settle().await;
    assert_eq!(w.llm.cancelled(), [0]);
    assert_eq!(w.tts.cancelled(id), ["t1-u2"]);
    let requests = w.llm.requests();
    assert_eq!(requests.len(), 2);
    let said = "I'd like to book a table. For four people tonight.";
    assert_eq!(
        without_system(&requests[1].messages),
        [
            (ChatRole::Assistant, "Hi.".to_owned()),
            (ChatRole::User, said.to_owned()),
        ]
    );
    assert_eq!(w.speculations(), (2, 0, 1, 5));

    // The turn is committed at 2600 with the second reply; "tonight, " (2630) plays from 2730.
    w.at(6000).await;
    assert!(w.media.marks(id).iter().all(|m| !m.starts_with("t1-u2")));
    let records = w.records(id);
    assert_eq!(records[1], (2600, caller(said, 1000, 2100, 1)));
    let reply = Reply {
        turn: 1,
        stt: 250,
        final_at: 2350,
        requested: 2350,
        stream: 80,
        committed: 2600,
        played: 2730,
    };
    assert!(records.contains(&(2730, reply.latency())), "{records:?}");
    let agent_said: Vec<&str> = records
        .iter()
        .filter_map(|(_, r)| match r {
            ConversationRecord::Segment {
                speaker: Speaker::Agent,
                text,
                ..
            } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(agent_said, ["Hi.", "A table for four tonight, done."]);
    assert_eq!(w.speculations(), (2, 1, 1, 5));
}

/// The latency record of a reply asked for at `requested` (ms since `t0`), with the model's
/// first token 200 ms later and its first speakable piece `stream` ms after that, synthesis
/// 100 ms: the caller's speech ended `stt` ms before its final at `final_at`, the turn was
/// committed at `committed`, and the first audio handed to the call at `played`.
#[derive(Clone, Copy)]
struct Reply {
    turn: u32,
    stt: u64,
    final_at: u64,
    requested: u64,
    stream: u64,
    committed: u64,
    played: u64,
}

impl Reply {
    fn latency(self) -> ConversationRecord {
        let first_audio = self.requested + 200 + self.stream + 100;
        let saved =
            (first_audio - self.requested).min(self.committed.saturating_sub(self.requested));
        let total = self.played - self.final_at;
        let holdoff = self.committed - self.final_at;
        ConversationRecord::TurnLatency {
            turn: self.turn,
            stt_us: self.stt * 1000,
            holdoff_us: holdoff * 1000,
            llm_first_token_us: 200_000,
            llm_stream_us: self.stream * 1000,
            tts_first_audio_us: 100_000,
            total_us: total * 1000,
            engine_us: (total + saved - holdoff - 200 - self.stream - 100) * 1000,
            saved_us: saved * 1000,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn interim_words_in_the_holdoff_discard_the_speculation_and_the_final_words_are_answered() {
    let w = World::new(json!({"greeting": "Hi."})).await;
    let id = w.conversing_call().await;
    w.llm.reply(LlmReply::text("Okay."));
    w.llm.reply(LlmReply::text("Four people, noted."));
    w.at(1700).await;
    assert!(w.stt.say(id, "Book a table.", 1000, 1500));
    // An interim result at 1800: the caller goes on. The speculation is cancelled before
    // its first token.
    w.at(1800).await;
    assert!(w.stt.push(id, heard("for four", 1800, 1900, false)));
    w.settle().await;
    assert_eq!(w.llm.cancelled(), [0]);
    assert_eq!(w.speculations(), (1, 0, 1, 0));
    // The final differs from the interim: it is what the reply answers.
    w.at(2300).await;
    assert!(w.stt.push(id, heard("for four people", 1800, 2100, true)));
    w.at(4000).await;
    let requests = w.llm.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].messages.last().map(|m| m.content.as_str()),
        Some("Book a table. for four people")
    );
    assert!(
        w.tts.texts(id).iter().all(|(_, text)| text != "Okay."),
        "the discarded reply never reached synthesis"
    );
    let said = "Book a table. for four people";
    let records = w.records(id);
    assert_eq!(records[1], (2550, caller(said, 1000, 2100, 1)));
    // "people, " (2520) is the first piece: spoken from 2620.
    assert!(
        records.contains(&(
            2620,
            Reply {
                turn: 1,
                stt: 200,
                final_at: 2300,
                requested: 2300,
                stream: 20,
                committed: 2550,
                played: 2620
            }
            .latency()
        )),
        "{records:?}"
    );
    assert_eq!(w.speculations(), (2, 1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_barge_in_on_speculative_audio_not_yet_heard_leaves_nothing_of_the_reply() {
    let w = World::new(json!({"greeting": "Hi."})).await;
    let id = w.conversing_call().await;
    // A fast model: its sentence complete at 1820 (a word every 10 ms from 1750), its audio
    // at 1920, held until the hold-off passes at 1950 and handed to the call then.
    w.llm.reply(
        LlmReply::text("Our plans start at ten dollars a month. ")
            .paced(Duration::from_millis(50), Duration::from_millis(10)),
    );
    w.llm.reply(LlmReply::text("Yes, per person."));
    w.at(1700).await;
    assert!(w.stt.say(id, "What plans do you have?", 1000, 1500));
    w.at(1940).await;
    assert!(w.media.marks(id).iter().all(|m| !m.starts_with("t1-u2")));
    w.at(1950).await;
    assert!(
        w.media.marks(id).iter().any(|m| m.starts_with("t1-u2")),
        "the held audio goes to the call at the end of the hold-off"
    );
    let records = w.records(id);
    assert_eq!(
        records.iter().find(|(_, r)| r.kind() == "turn_latency"),
        Some(&(
            1950,
            ConversationRecord::TurnLatency {
                turn: 1,
                stt_us: 200_000,
                holdoff_us: 250_000,
                llm_first_token_us: 50_000,
                llm_stream_us: 70_000,
                tts_first_audio_us: 100_000,
                total_us: 250_000,
                engine_us: 0,
                saved_us: 220_000,
            }
        ))
    );
    // The caller talks over it at 2000, before the carrier has played its first chunk.
    w.at(2000).await;
    assert!(w.stt.push(id, SttEvent::SpeechStarted { at_ms: 2000 }));
    assert!(w
        .stt
        .push(id, heard("wait, is that per person", 2000, 2100, false)));
    w.settle().await;
    assert_eq!(w.media.clears(id).len(), 1);
    let records = w.records(id);
    assert_eq!(
        records[records.len() - 2..],
        [
            (
                2000,
                ConversationRecord::Segment {
                    speaker: Speaker::Agent,
                    text: String::new(),
                    start_ms: 1950,
                    end_ms: 2000,
                    confidence: 1.0,
                    interrupted: true,
                    turn: 1,
                }
            ),
            (
                2000,
                ConversationRecord::BargeIn {
                    turn: 1,
                    at_ms: 2000,
                    heard_ms: 0,
                }
            ),
        ]
    );
    // Nothing of it is in the model's context for the next turn.
    w.at(2400).await;
    assert!(w
        .stt
        .push(id, heard("wait, is that per person?", 2000, 2200, true)));
    w.at(3000).await;
    let requests = w.llm.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        without_system(&requests[1].messages),
        [
            (ChatRole::Assistant, "Hi.".to_owned()),
            (ChatRole::User, "What plans do you have?".to_owned()),
            (ChatRole::User, "wait, is that per person?".to_owned()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_speculative_reply_runs_its_tools_only_once_the_turn_is_committed() {
    let w = World::new(json!({"greeting": "Hi.", "human_number": HUMAN})).await;
    let id = w.conversing_call().await;
    let fast = |r: LlmReply| r.paced(Duration::from_millis(50), Duration::from_millis(10));
    // A tool call in a reply that is discarded never runs.
    w.llm
        .reply(fast(LlmReply::tool_call("call-1", "lookup_customer", "{}")));
    w.llm.reply(LlmReply::text("We open at nine."));
    w.at(1700).await;
    assert!(w.stt.say(id, "Can you look me up?", 1000, 1500));
    w.at(1800).await;
    assert!(w.stt.push(id, SttEvent::SpeechStarted { at_ms: 1800 }));
    w.at(2300).await;
    assert!(w.stt.push(
        id,
        heard("Actually, what are your hours?", 1800, 2100, true)
    ));
    w.at(4500).await;
    assert!(!w.kinds(id).contains(&"tool_call"), "{:?}", w.kinds(id));
    assert_eq!(w.speculations(), (2, 1, 1, 0));

    // The model's call arrives at 5050, during the hold-off; the transfer waits for the turn
    // to be committed at 5250.
    let arguments = r#"{"reason":"billing dispute"}"#;
    w.llm.reply(fast(LlmReply::tool_call(
        "call-2",
        "transfer_to_human",
        arguments,
    )));
    w.at(5000).await;
    assert!(w.stt.say(id, "I dispute this bill.", 4500, 4800));
    w.at(5249).await;
    assert!(!w.kinds(id).contains(&"escalation"));
    assert!(!w.kinds(id).contains(&"tool_call"));
    w.at(5250).await;
    assert_eq!(w.journaled_at(id, "tool_call"), Some(5250));
    assert_eq!(w.journaled_at(id, "escalation"), Some(5250));
    w.at(9000).await;
    assert!(w
        .commands(id)
        .iter()
        .any(|c| matches!(c, Command::Transfer(..))));
}

#[tokio::test(start_paused = true)]
async fn a_model_failing_under_a_speculative_reply_is_not_heard_and_the_turn_is_asked_again() {
    let w = World::new(json!({"greeting": "Hi.", "hold": "One moment."})).await;
    let id = w.conversing_call().await;
    let fast = |r: LlmReply| r.paced(Duration::from_millis(50), Duration::from_millis(10));
    // The stream breaks after two words (1770): the speculation is dropped without a word
    // spoken; the committed turn (1950) asks again, and that answer is spoken.
    w.llm
        .reply(fast(LlmReply::failing("Let me ", "connection reset")));
    w.llm.reply(LlmReply::text("We open at nine."));
    w.at(1700).await;
    assert!(w.stt.say(id, "What are your hours?", 1000, 1500));
    w.at(1949).await;
    assert_eq!(w.llm.requests().len(), 1);
    assert_eq!(w.speculations(), (1, 0, 1, 2));
    w.at(1950).await;
    let requests = w.llm.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].messages, requests[1].messages);
    // The model cannot be reached for the next turn's speculation (its breaker is open): no
    // hold line, the committed turn asks again.
    w.llm
        .reply(LlmReply::unavailable("the groq circuit breaker is open"));
    w.llm.reply(LlmReply::text("Yes."));
    w.at(5000).await;
    assert!(w.stt.say(id, "Are you open on Sunday?", 4500, 4800));
    w.at(6000).await;
    assert_eq!(w.llm.requests().len(), 4);
    let kinds = w.kinds(id);
    assert!(!kinds.contains(&"vendor_failure"), "{kinds:?}");
    let agent_said: Vec<String> = w
        .records(id)
        .into_iter()
        .filter_map(|(_, r)| match r {
            ConversationRecord::Segment {
                speaker: Speaker::Agent,
                text,
                ..
            } => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(agent_said, ["Hi.", "We open at nine.", "Yes."]);
    assert_eq!(w.speculations(), (2, 0, 2, 2));
}
