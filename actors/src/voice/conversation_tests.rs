//! The conversation core on a fake timeline: every turn-taking rule, barge-in, tone,
//! escalation, tools, silence, voicemail and vendor-failure path.

use serde_json::json;

use super::conversation::{Action, CallerContext, Conversation, Input, Micros, SpeculationOutcome};
use crate::catalog::profile::VoiceProfile;
use crate::machine::record::{ConversationRecord, EscalationReason, Speaker, Tone};
use crate::machine::{AmdResult, EndReason};
use crate::ports::sentiment::{Sentiment, SentimentLabel};
use crate::ports::voice::{ChatRole, LlmEvent, SttEvent, ToolCall, TtsEvent};

const MS: Micros = 1000;

thread_local! {
    /// Whether the lines of the running test speculate (see [`both_ways`]).
    static SPECULATE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs a test twice: with speculative replies off, then on (the default). Every behaviour
/// holds both ways; where the two differ in what goes out when, the test asks [`speculating`].
fn both_ways(test: impl Fn()) {
    for speculate in [false, true] {
        eprintln!(
            "--- speculative replies {}",
            if speculate { "on" } else { "off" }
        );
        SPECULATE.with(|s| s.set(speculate));
        test();
    }
}

/// The running test's lines speculate.
fn speculating() -> bool {
    SPECULATE.with(std::cell::Cell::get)
}

struct Line {
    conv: Conversation,
    now: Micros,
    log: Vec<Action>,
    /// Marks sent and not yet echoed.
    marks: Vec<String>,
}

impl Line {
    fn new(mut persona: serde_json::Value) -> Line {
        let turn_taking = &mut persona["turn_taking"];
        if turn_taking.get("speculate").is_none() {
            turn_taking["speculate"] = json!(speculating());
        }
        let profile = VoiceProfile::from_configs(&persona, &json!({})).unwrap();
        Line {
            conv: Conversation::new(profile, CallerContext::default()),
            now: 0,
            log: Vec::new(),
            marks: Vec::new(),
        }
    }

    fn send(&mut self, input: Input) -> Vec<Action> {
        let out = self.conv.handle(self.now, input);
        for a in &out {
            if let Action::MediaMark(m) = a {
                self.marks.push(m.clone());
            }
            if let Action::MediaClear = a {
                self.marks.clear();
            }
        }
        self.log.extend(out.iter().cloned());
        out
    }

    /// Moves time to `ms`, firing every deadline on the way.
    fn to(&mut self, ms: u64) -> Vec<Action> {
        let target = ms * MS;
        let mut out = Vec::new();
        while let Some(d) = self.conv.next_deadline().filter(|&d| d <= target) {
            self.now = self.now.max(d);
            out.extend(self.send(Input::Timer));
        }
        self.now = self.now.max(target);
        out
    }

    fn stt(&mut self, event: SttEvent) -> Vec<Action> {
        let at = self.now;
        self.send(Input::Stt { event, at })
    }

    /// The caller says `text` (final, endpointed) at audio time `start..end` ms.
    fn caller_says(&mut self, text: &str) -> Vec<Action> {
        let mut out = self.stt(SttEvent::SpeechStarted { at_ms: 0 });
        out.extend(self.stt(SttEvent::Transcript {
            text: text.into(),
            is_final: true,
            speech_final: true,
            confidence: 0.9,
            start_ms: 0,
            end_ms: 500,
        }));
        out
    }

    /// Synthesizes `ctx`: `bytes` of audio in one chunk, then done.
    fn synth(&mut self, ctx: &str, bytes: usize) -> Vec<Action> {
        let at = self.now;
        let mut out = self.send(Input::Tts {
            event: TtsEvent::Audio {
                context: ctx.into(),
                mulaw: vec![0xff; bytes],
            },
            at,
        });
        out.extend(self.send(Input::Tts {
            event: TtsEvent::Done {
                context: ctx.into(),
            },
            at,
        }));
        out
    }

    /// The carrier plays every queued mark.
    fn play_all(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        for m in std::mem::take(&mut self.marks) {
            out.extend(self.send(Input::MarkPlayed { name: m }));
        }
        out
    }

    fn llm(&mut self, reply: u32, event: LlmEvent) -> Vec<Action> {
        let at = self.now;
        self.send(Input::Llm { reply, event, at })
    }

    /// Greets and lets the greeting play out.
    fn greeted(persona: serde_json::Value) -> Line {
        let mut line = Line::new(persona);
        let out = line.send(Input::Start { await_amd: false });
        let ctx = speak_ctx(&out).expect("greeting");
        line.synth(&ctx, 800);
        line.play_all();
        line
    }

    /// The caller's turn, through to the model's request: returns its id.
    /// Speculating, the request goes out at the end of the utterance and answers the turn
    /// once the hold-off has passed.
    fn turn(&mut self, text: &str) -> u32 {
        let mut out = self.caller_says(text);
        let t = self.now / MS;
        out.extend(self.to(t + 1300));
        llm_start(&out).expect("a reply is requested")
    }

    /// The caller's turn, through to the model's request: every action on the way.
    fn turn_out(&mut self, text: &str) -> Vec<Action> {
        let mut out = self.caller_says(text);
        let t = self.now / MS;
        out.extend(self.to(t + 1300));
        out
    }

    /// The model answers `text` in one go and it is synthesized and played.
    fn answer(&mut self, reply: u32, text: &str) -> String {
        let mut out = self.llm(reply, LlmEvent::Text { text: text.into() });
        out.extend(self.llm(
            reply,
            LlmEvent::Done {
                finish_reason: "stop".into(),
            },
        ));
        let ctx = speak_ctx(&out).expect("reply spoken");
        self.synth(&ctx, 1600);
        ctx
    }

    fn records(&self) -> Vec<ConversationRecord> {
        self.log
            .iter()
            .filter_map(|a| match a {
                Action::Record(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }
}

fn speak_ctx(out: &[Action]) -> Option<String> {
    out.iter().find_map(|a| match a {
        Action::TtsSpeak { context, .. } => Some(context.clone()),
        _ => None,
    })
}

fn spoken(out: &[Action]) -> String {
    out.iter()
        .filter_map(|a| match a {
            Action::TtsSpeak { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("")
}

fn llm_start(out: &[Action]) -> Option<u32> {
    out.iter().find_map(|a| match a {
        Action::LlmStart { reply, .. } => Some(*reply),
        _ => None,
    })
}

/// The request that answers the turn committed in `commit` (the hold-off passing). Speculating,
/// it went out with the end of the utterance (`utterance`) and the commit uses it without
/// asking again; otherwise nothing is asked before the commit.
fn request(utterance: &[Action], commit: &[Action]) -> Option<Action> {
    let find = |out: &[Action]| {
        out.iter()
            .find(|a| matches!(a, Action::LlmStart { .. }))
            .cloned()
    };
    if speculating() {
        assert!(find(commit).is_none(), "asked again: {commit:?}");
        assert!(
            has(commit, |a| matches!(
                a,
                Action::Speculation(SpeculationOutcome::Used)
            )),
            "the speculative reply answers: {commit:?}"
        );
        find(utterance)
    } else {
        assert!(find(utterance).is_none(), "asked before the hold-off");
        find(commit)
    }
}

fn has(out: &[Action], f: impl Fn(&Action) -> bool) -> bool {
    out.iter().any(f)
}

fn sentiment(score: f64) -> Sentiment {
    Sentiment {
        score,
        label: SentimentLabel::of(score),
        source: "groq".into(),
        degraded: false,
    }
}

#[test]
fn greets_then_answers_a_turn_after_the_holdoff() {
    both_ways(|| {
        let mut line = Line::new(json!({"greeting": "Hi, this is Ava."}));
        let out = line.send(Input::Start { await_amd: false });
        assert_eq!(spoken(&out), "Hi, this is Ava.");
        let ctx = speak_ctx(&out).unwrap();
        line.synth(&ctx, 800);
        assert!(line.conv.agent_speaking());
        line.play_all();
        assert!(!line.conv.agent_speaking());
        let greeting = line.records();
        assert!(
            matches!(&greeting[0], ConversationRecord::Segment { speaker: Speaker::Agent, text, interrupted: false, .. } if text == "Hi, this is Ava.")
        );

        line.to(1000);
        let said = line.caller_says("I need help with my order.");
        // Not before the hold-off (250 ms).
        assert!(llm_start(&line.to(1200)).is_none());
        let out = line.to(1260);
        let Some(Action::LlmStart {
            messages, tools, ..
        }) = request(&said, &out)
        else {
            panic!("no request: {out:?}")
        };
        assert_eq!(messages[0].role, ChatRole::System);
        assert_eq!(messages[1].content, "Hi, this is Ava.");
        assert_eq!(messages[2].content, "I need help with my order.");
        assert_eq!(
            tools.len(),
            2,
            "end_call + lookup_customer (no human number)"
        );
        assert!(has(&out, |a| matches!(
            a,
            Action::ScoreSentiment { turn: 1, .. }
        )));
        assert!(has(&out, |a| matches!(
            a,
            Action::Record(ConversationRecord::Segment {
                speaker: Speaker::Caller,
                turn: 1,
                ..
            })
        )));
    });
}

#[test]
fn unfinished_numbers_get_the_long_holdoff_and_stay_one_turn() {
    both_ways(|| {
        let mut line = Line::greeted(json!({}));
        line.caller_says("my number is 415 555");
        assert!(llm_start(&line.to(900)).is_none(), "long hold-off applies");
        let said = line.caller_says("0123.");
        let out = line.to(line.now / MS + 1300);
        let Some(Action::LlmStart { messages, .. }) = request(&said, &out) else {
            panic!("no request")
        };
        assert_eq!(
            messages.last().unwrap().content,
            "my number is 415 555 0123."
        );
    });
}

#[test]
fn reply_streams_into_speech_sentence_by_sentence() {
    both_ways(|| {
        let mut line = Line::greeted(json!({}));
        let reply = line.turn("What are your hours?");
        let out = line.llm(
            reply,
            LlmEvent::Text {
                text: "We are open".into(),
            },
        );
        assert!(spoken(&out).is_empty(), "nothing speakable yet");
        let out = line.llm(
            reply,
            LlmEvent::Text {
                text: " nine to five. On Satur".into(),
            },
        );
        assert_eq!(spoken(&out), "We are open nine to five. ");
        let out = line.llm(
            reply,
            LlmEvent::Text {
                text: "days ten to two.".into(),
            },
        );
        assert!(spoken(&out).is_empty());
        let out = line.llm(
            reply,
            LlmEvent::Done {
                finish_reason: "stop".into(),
            },
        );
        assert!(out.iter().any(|a| matches!(a, Action::TtsSpeak { text, last: false, .. } if text == "On Saturdays ten to two.")), "{out:?}");
        assert!(out
            .iter()
            .any(|a| matches!(a, Action::TtsSpeak { text, last: true, .. } if text.is_empty())));
        // Latency is recorded at the first audio of the reply.
        let ctx = speak_ctx(&out).unwrap();
        line.now += 5 * MS;
        let out = line.synth(&ctx, 1600);
        assert!(has(
            &out,
            |a| matches!(a, Action::Record(ConversationRecord::TurnLatency { turn: 1, holdoff_us, .. }) if *holdoff_us >= 250 * MS)
        ));
        line.play_all();
        let history = line.records();
        assert!(history.iter().any(|r| matches!(r, ConversationRecord::Segment { speaker: Speaker::Agent, text, .. } if text == "We are open nine to five. On Saturdays ten to two.")));
    });
}

#[test]
fn barge_in_stops_the_agent_and_keeps_only_what_was_heard() {
    both_ways(|| {
        let mut line = Line::greeted(json!({}));
        let reply = line.turn("Tell me about the plans.");
        let out = line.llm(
            reply,
            LlmEvent::Text {
                text: "We have three plans. The basic plan costs ten dollars. ".into(),
            },
        );
        let ctx = speak_ctx(&out).unwrap();
        // 2 s of audio in two chunks; the caller heard the first second.
        let at = line.now;
        line.send(Input::Tts {
            event: TtsEvent::Audio {
                context: ctx.clone(),
                mulaw: vec![0; 8000],
            },
            at,
        });
        line.send(Input::Tts {
            event: TtsEvent::Words {
                context: ctx.clone(),
                words: vec![
                    ("We".into(), 0.0, 0.2),
                    ("have".into(), 0.2, 0.4),
                    ("three".into(), 0.4, 0.7),
                    ("plans.".into(), 0.7, 1.0),
                    ("The".into(), 1.1, 1.2),
                ],
            },
            at,
        });
        line.send(Input::Tts {
            event: TtsEvent::Audio {
                context: ctx.clone(),
                mulaw: vec![0; 8000],
            },
            at,
        });
        line.send(Input::MarkPlayed {
            name: format!("{ctx}@8000"),
        });
        // A backchannel does not stop it.
        let out = line.stt(SttEvent::Transcript {
            text: "uh-huh".into(),
            is_final: false,
            speech_final: false,
            confidence: 0.8,
            start_ms: 0,
            end_ms: 300,
        });
        assert!(!has(&out, |a| matches!(a, Action::MediaClear)));
        // Two real words do.
        let out = line.stt(SttEvent::Transcript {
            text: "uh-huh wait which plan".into(),
            is_final: false,
            speech_final: false,
            confidence: 0.8,
            start_ms: 0,
            end_ms: 900,
        });
        assert!(has(&out, |a| matches!(a, Action::MediaClear)));
        assert!(has(
            &out,
            |a| matches!(a, Action::TtsCancel { context } if *context == ctx)
        ));
        assert!(has(
            &out,
            |a| matches!(a, Action::LlmCancel { reply: r } if *r == reply)
        ));
        assert!(has(
            &out,
            |a| matches!(a, Action::Record(ConversationRecord::Segment { speaker: Speaker::Agent, interrupted: true, text, .. }) if text == "We have three plans.")
        ));
        assert!(has(&out, |a| matches!(
            a,
            Action::Record(ConversationRecord::BargeIn { heard_ms: 1000, .. })
        )));
        // The next request's context has only what was heard.
        let said = line.stt(SttEvent::Transcript {
            text: "wait which plan is cheapest".into(),
            is_final: true,
            speech_final: true,
            confidence: 0.9,
            start_ms: 0,
            end_ms: 1500,
        });
        let out = line.to(line.now / MS + 300);
        let Some(Action::LlmStart { messages, .. }) = request(&said, &out) else {
            panic!("no request")
        };
        let n = messages.len();
        assert_eq!(messages[n - 2].content, "We have three plans....");
        assert_eq!(messages[n - 1].content, "wait which plan is cheapest");
    });
}

#[test]
fn a_backchannel_final_while_the_agent_talks_is_not_a_turn() {
    both_ways(|| {
        let mut line = Line::greeted(json!({}));
        let reply = line.turn("Explain the fees.");
        let ctx = line.answer(reply, "There is a monthly fee and a setup fee. ");
        let _ = ctx;
        let out = line.caller_says("okay.");
        assert!(!has(&out, |a| matches!(a, Action::MediaClear)));
        // (Within the marks' wait: the reply is still playing as far as the carrier said.)
        let out = line.to(line.now / MS + 1000);
        assert!(llm_start(&out).is_none());
        assert!(line.records().iter().any(|r| matches!(r, ConversationRecord::Segment { speaker: Speaker::Caller, text, .. } if text == "okay.")));
        assert!(line.conv.agent_speaking());
    });
}

#[test]
fn a_false_interruption_resumes_the_rest() {
    both_ways(|| {
        let mut line = Line::greeted(json!({}));
        let reply = line.turn("Explain the fees.");
        let ctx = line.answer(reply, "There is a monthly fee. There is also a setup fee. ");
        line.send(Input::MarkPlayed {
            name: format!("{ctx}@400"),
        });
        // A cough: speech, one garbled word, long enough to stop the agent.
        line.stt(SttEvent::SpeechStarted { at_ms: 0 });
        line.stt(SttEvent::Transcript {
            text: "hmm the".into(),
            is_final: false,
            speech_final: false,
            confidence: 0.3,
            start_ms: 0,
            end_ms: 300,
        });
        let out = line.to(line.now / MS + 600);
        assert!(has(&out, |a| matches!(a, Action::MediaClear)), "{out:?}");
        // ...that the recogniser then drops.
        line.stt(SttEvent::Transcript {
            text: String::new(),
            is_final: true,
            speech_final: true,
            confidence: 0.0,
            start_ms: 0,
            end_ms: 600,
        });
        let out = line.to(line.now / MS + 1600);
        let resumed = spoken(&out);
        assert!(
            resumed.starts_with("There is a monthly fee.") || resumed.contains("setup fee"),
            "{resumed}"
        );
        assert!(has(&out, |a| matches!(
            a,
            Action::Record(ConversationRecord::Resumed { .. })
        )));
    });
}

#[test]
fn speech_before_the_answer_is_heard_merges_into_one_turn() {
    both_ways(|| {
        let mut line = Line::greeted(json!({}));
        let first = line.turn("I want to change my plan.");
        line.llm(
            first,
            LlmEvent::Text {
                text: "Sure, which plan ".into(),
            },
        );
        let out = line.stt(SttEvent::Transcript {
            text: "to the premium one".into(),
            is_final: false,
            speech_final: false,
            confidence: 0.8,
            start_ms: 0,
            end_ms: 400,
        });
        assert!(has(
            &out,
            |a| matches!(a, Action::LlmCancel { reply } if *reply == first)
        ));
        let said = line.stt(SttEvent::Transcript {
            text: "to the premium one".into(),
            is_final: true,
            speech_final: true,
            confidence: 0.8,
            start_ms: 0,
            end_ms: 900,
        });
        let out = line.to(line.now / MS + 300);
        let Some(Action::LlmStart {
            reply, messages, ..
        }) = request(&said, &out)
        else {
            panic!("no request")
        };
        assert_ne!(reply, first);
        assert_eq!(
            messages.last().unwrap().content,
            "I want to change my plan. to the premium one"
        );
        assert_eq!(line.conv.turns(), 1);
        // A late event of the withdrawn reply changes nothing.
        assert!(line
            .llm(
                first,
                LlmEvent::Text {
                    text: "Basic. ".into()
                }
            )
            .is_empty());
    });
}

#[test]
fn asking_for_a_person_hands_over_after_the_handoff_line() {
    both_ways(|| {
        let mut line = Line::greeted(
            json!({"human_number": "+14155550100", "handoff": "Connecting you now."}),
        );
        line.caller_says("Can I talk to a real person?");
        let out = line.to(line.now / MS + 300);
        assert!(llm_start(&out).is_none());
        assert!(has(&out, |a| matches!(
            a,
            Action::Record(ConversationRecord::Escalation {
                reason: EscalationReason::CallerRequest,
                to: Some(_),
                ..
            })
        )));
        assert_eq!(spoken(&out), "Connecting you now.");
        // Caller speech does not cut the handoff line.
        let ctx = speak_ctx(&out).unwrap();
        line.synth(&ctx, 800);
        assert!(!has(&line.caller_says("hello?"), |a| matches!(
            a,
            Action::MediaClear
        )));
        let out = line.play_all();
        assert!(has(
            &out,
            |a| matches!(a, Action::Transfer { to } if to.as_str() == "+14155550100")
        ));
        assert!(line.conv.is_done());
    });
}

#[test]
fn frustration_changes_tone_then_the_floor_escalates() {
    both_ways(|| {
        let mut line = Line::greeted(json!({"human_number": "+14155550100"}));
        let r = line.turn("Where is my refund?");
        line.send(Input::Sentiment {
            turn: 1,
            sentiment: sentiment(-0.1),
        });
        line.answer(r, "Let me look into that. ");
        line.play_all();
        assert_eq!(line.conv.tone(), Tone::Normal);
        let r = line.turn("This is ridiculous, I have waited for weeks.");
        let out = line.send(Input::Sentiment {
            turn: 2,
            sentiment: sentiment(-0.7),
        });
        assert_eq!(line.conv.tone(), Tone::Empathetic);
        assert!(line.records().iter().any(|r| matches!(
            r,
            ConversationRecord::ToneChanged {
                to: Tone::Empathetic,
                ..
            }
        )));
        assert!(!has(&out, |a| matches!(
            a,
            Action::Record(ConversationRecord::Escalation { .. })
        )));
        line.answer(r, "I'm sorry about the wait. ");
        line.play_all();
        let said = line.caller_says("You people are useless.");
        let out = line.to(line.now / MS + 300);
        let Some(Action::LlmStart { messages, .. }) = request(&said, &out) else {
            panic!("no request")
        };
        assert!(
            messages[0].content.contains("frustrated"),
            "the persona adapts"
        );
        let out = line.send(Input::Sentiment {
            turn: 3,
            sentiment: sentiment(-0.9),
        });
        assert!(has(&out, |a| matches!(
            a,
            Action::Record(ConversationRecord::Escalation {
                reason: EscalationReason::SentimentFloor,
                ..
            })
        )));
        assert!(has(&out, |a| matches!(a, Action::LlmCancel { .. })));
        let ctx = speak_ctx(&out).unwrap();
        line.synth(&ctx, 800);
        assert!(has(&line.play_all(), |a| matches!(
            a,
            Action::Transfer { .. }
        )));
    });
}

#[test]
fn silence_reprompts_then_says_goodbye() {
    both_ways(|| {
        let mut line = Line::greeted(
            json!({"silence": {"reprompt_after_ms": 5000, "hangup_after_ms": 12000}}),
        );
        let out = line.to(4900);
        assert!(out.is_empty());
        let out = line.to(5100);
        assert_eq!(spoken(&out), "Are you still there?");
        line.synth(&speak_ctx(&out).unwrap(), 800);
        line.play_all();
        let out = line.to(12100);
        assert_eq!(spoken(&out), "Thank you for calling. Goodbye!");
        line.synth(&speak_ctx(&out).unwrap(), 800);
        let out = line.play_all();
        assert!(has(&out, |a| matches!(
            a,
            Action::Hangup {
                reason: EndReason::Silence
            }
        )));
    });
}

#[test]
fn caller_speech_resets_the_silence_clock() {
    both_ways(|| {
        let mut line = Line::greeted(
            json!({"silence": {"reprompt_after_ms": 5000, "hangup_after_ms": 12000}}),
        );
        line.to(4000);
        let r = line.turn("Hello?");
        line.answer(r, "Yes, I'm here. ");
        line.play_all();
        let out = line.to(9000);
        assert!(
            spoken(&out).is_empty(),
            "silence counts from the agent's last words: {out:?}"
        );
        assert!(!spoken(&line.to(11000)).is_empty());
    });
}

#[test]
fn answering_machine_hang_up_or_leave_a_message() {
    both_ways(|| {
        let mut line = Line::new(json!({}));
        line.send(Input::Start { await_amd: true });
        let out = line.send(Input::Amd(AmdResult::Machine));
        assert!(has(&out, |a| matches!(
            a,
            Action::Hangup {
                reason: EndReason::Voicemail
            }
        )));

        let mut line = Line::new(
            json!({"voicemail": "leave_message", "voicemail_message": "Please call us back."}),
        );
        line.send(Input::Start { await_amd: true });
        assert!(spoken(&line.send(Input::Amd(AmdResult::Machine))).is_empty());
        line.caller_says("You have reached Bob, leave a message after the tone.");
        let out = line.stt(SttEvent::UtteranceEnd {
            last_word_end_ms: 3000,
        });
        let _ = out;
        let spoken_now: String = spoken(&line.log);
        assert_eq!(spoken_now, "Please call us back.");
        let ctx = speak_ctx(&line.log).unwrap();
        line.synth(&ctx, 800);
        assert!(has(&line.play_all(), |a| matches!(
            a,
            Action::Hangup {
                reason: EndReason::Voicemail
            }
        )));

        // A person (or no verdict in time) gets the greeting.
        let mut line = Line::new(json!({}));
        line.send(Input::Start { await_amd: true });
        assert_eq!(spoken(&line.to(3600)), "Hello! How can I help you today?");
    });
}

#[test]
fn tools_lookup_with_filler_end_call_and_transfer() {
    both_ways(|| {
        let mut line = Line::greeted(json!({"human_number": "+14155550100"}));
        let r = line.turn("What's on my account?");
        let call = ToolCall {
            id: "c1".into(),
            name: "lookup_customer".into(),
            arguments: "{}".into(),
        };
        line.llm(r, LlmEvent::ToolCall { call });
        let out = line.llm(
            r,
            LlmEvent::Done {
                finish_reason: "tool_calls".into(),
            },
        );
        assert!(has(
            &out,
            |a| matches!(a, Action::RunTool { id, .. } if id == "c1")
        ));
        let out = line.to(line.now / MS + 900);
        assert_eq!(spoken(&out), "One moment while I check that.");
        line.synth(&speak_ctx(&out).unwrap(), 800);
        line.play_all();
        let out = line.send(Input::ToolResult {
            id: "c1".into(),
            result: Ok(json!({"name": "Dana"})),
        });
        let Some(Action::LlmStart { messages, .. }) =
            out.iter().find(|a| matches!(a, Action::LlmStart { .. }))
        else {
            panic!("no follow-up")
        };
        let n = messages.len();
        assert_eq!(messages[n - 2].tool_calls.len(), 1);
        assert_eq!(messages[n - 1].role, ChatRole::Tool);
        assert!(has(
            &out,
            |a| matches!(a, Action::Record(ConversationRecord::ToolCall { name, .. }) if name == "lookup_customer")
        ));

        // end_call after words: the words play, then the hangup.
        let r2 = llm_start(&out).unwrap();
        line.llm(
            r2,
            LlmEvent::Text {
                text: "Thanks Dana, goodbye! ".into(),
            },
        );
        line.llm(
            r2,
            LlmEvent::ToolCall {
                call: ToolCall {
                    id: "c2".into(),
                    name: "end_call".into(),
                    arguments: "{}".into(),
                },
            },
        );
        let out = line.llm(
            r2,
            LlmEvent::Done {
                finish_reason: "tool_calls".into(),
            },
        );
        assert!(!has(&out, |a| matches!(a, Action::Hangup { .. })));
        let ctx = line
            .log
            .iter()
            .rev()
            .find_map(|a| match a {
                Action::TtsSpeak { context, text, .. } if text.contains("Dana") => {
                    Some(context.clone())
                }
                _ => None,
            })
            .unwrap();
        line.synth(&ctx, 800);
        let out = line.play_all();
        assert!(
            has(&out, |a| matches!(
                a,
                Action::Hangup {
                    reason: EndReason::AgentEnded
                }
            )),
            "{out:?}"
        );

        // transfer_to_human.
        let mut line = Line::greeted(json!({"human_number": "+14155550100"}));
        let r = line.turn("Something complicated.");
        line.llm(
            r,
            LlmEvent::ToolCall {
                call: ToolCall {
                    id: "t".into(),
                    name: "transfer_to_human".into(),
                    arguments: "{\"reason\":\"complex\"}".into(),
                },
            },
        );
        let out = line.llm(
            r,
            LlmEvent::Done {
                finish_reason: "tool_calls".into(),
            },
        );
        assert!(has(&out, |a| matches!(
            a,
            Action::Record(ConversationRecord::Escalation {
                reason: EscalationReason::Tool,
                ..
            })
        )));
    });
}

#[test]
fn dtmf_is_a_turn() {
    both_ways(|| {
        let mut line = Line::greeted(json!({}));
        line.send(Input::Dtmf { digit: "1".into() });
        let out = line.to(line.now / MS + 1300);
        let Some(Action::LlmStart { messages, .. }) =
            out.iter().find(|a| matches!(a, Action::LlmStart { .. }))
        else {
            panic!("no request")
        };
        assert_eq!(
            messages.last().unwrap().content,
            "[The caller pressed the keys: 1]"
        );
        assert!(line
            .records()
            .iter()
            .any(|r| matches!(r, ConversationRecord::Dtmf { digits, .. } if digits == "1")));
    });
}

#[test]
fn vendor_failure_apologises_then_transfers_or_ends() {
    both_ways(|| {
        // `reply_wait_ms: 0`: no holding for the model, the policy applies at once.
        let mut line = Line::greeted(json!({"human_number": "+14155550100",
            "apology": "Sorry, technical trouble.", "reply_wait_ms": 0}));
        let r = line.turn("Hi.");
        let out = line.send(Input::LlmUnavailable {
            reply: r,
            reason: "groq circuit breaker is open".into(),
        });
        assert!(has(
            &out,
            |a| matches!(a, Action::Record(ConversationRecord::VendorFailure { action, .. }) if action == "transfer")
        ));
        assert_eq!(spoken(&out), "Sorry, technical trouble.");
        line.synth(&speak_ctx(&out).unwrap(), 800);
        assert!(has(&line.play_all(), |a| matches!(
            a,
            Action::Transfer { .. }
        )));

        // No human number: end. Speech-to-text dying mid-call works the same way.
        let mut line = Line::greeted(json!({}));
        let out = line.stt(SttEvent::Failed {
            reason: "reconnects exhausted".into(),
        });
        line.synth(&speak_ctx(&out).unwrap(), 800);
        assert!(has(&line.play_all(), |a| matches!(
            a,
            Action::Hangup {
                reason: EndReason::VoiceFailure
            }
        )));

        // Speech synthesis itself down: the fallback recording, then the hangup; never silence.
        let mut line = Line::greeted(json!({}));
        let out = line.send(Input::Tts {
            event: TtsEvent::Failed {
                reason: "down".into(),
            },
            at: 0,
        });
        let mark = out
            .iter()
            .find_map(|a| match a {
                Action::PlayFallbackApology { mark } => Some(mark.clone()),
                _ => None,
            })
            .expect("fallback");
        let out = line.send(Input::MarkPlayed { name: mark });
        assert!(has(&out, |a| matches!(
            a,
            Action::Hangup {
                reason: EndReason::VoiceFailure
            }
        )));

        // ...and if the media stream is gone too, the hangup still comes.
        let mut line = Line::greeted(json!({}));
        line.send(Input::TtsUnavailable {
            reason: "down".into(),
        });
        let out = line.to(line.now / MS + 7000);
        assert!(has(&out, |a| matches!(
            a,
            Action::Hangup {
                reason: EndReason::VoiceFailure
            }
        )));
    });
}

#[test]
fn audio_plays_in_utterance_order_and_lost_marks_do_not_hang_the_call() {
    both_ways(|| {
        let mut line = Line::greeted(json!({"human_number": "+14155550100"}));
        let r = line.turn("Hello.");
        let out = line.llm(
            r,
            LlmEvent::Text {
                text: "Hi there. ".into(),
            },
        );
        let first = speak_ctx(&out).unwrap();
        // An escalation now queues the handoff behind the reply.
        let out = line.send(Input::Sentiment {
            turn: 1,
            sentiment: sentiment(-0.9),
        });
        let _ = out;
        let out = line.send(Input::Sentiment {
            turn: 1,
            sentiment: sentiment(-0.9),
        });
        let handoff = out
            .iter()
            .find_map(|a| match a {
                Action::TtsSpeak { context, text, .. } if !text.is_empty() => Some(context.clone()),
                _ => None,
            })
            .expect("handoff");
        let at = line.now;
        let out = line.send(Input::Tts {
            event: TtsEvent::Audio {
                context: handoff.clone(),
                mulaw: vec![1; 80],
            },
            at,
        });
        assert!(
            !has(&out, |a| matches!(a, Action::MediaAudio(_))),
            "held behind the reply"
        );
        line.send(Input::Tts {
            event: TtsEvent::Audio {
                context: first.clone(),
                mulaw: vec![2; 80],
            },
            at,
        });
        let out = line.send(Input::Tts {
            event: TtsEvent::Done { context: first },
            at,
        });
        assert!(has(
            &out,
            |a| matches!(a, Action::MediaAudio(b) if b[0] == 1)
        ));
        line.send(Input::Tts {
            event: TtsEvent::Done { context: handoff },
            at,
        });
        // No mark ever comes back (the stream died): the transfer happens anyway.
        let out = line.to(line.now / MS + 3000);
        assert!(
            has(&out, |a| matches!(a, Action::Transfer { .. })),
            "{out:?}"
        );
    });
}

#[test]
fn call_end_records_what_was_cut_off() {
    both_ways(|| {
        let mut line = Line::greeted(json!({}));
        let r = line.turn("Hello.");
        let ctx = line.answer(r, "Hi there, how are you doing today? ");
        line.send(Input::MarkPlayed {
            name: format!("{ctx}@800"),
        });
        let out = line.send(Input::CallEnded);
        assert!(has(&out, |a| matches!(
            a,
            Action::Record(ConversationRecord::Segment {
                speaker: Speaker::Agent,
                interrupted: true,
                ..
            })
        )));
        assert!(has(&out, |a| matches!(a, Action::Close)));
        assert!(line.conv.is_done());
        assert!(line.send(Input::Timer).is_empty());
    });
}

/// The model cannot answer (its breaker is open): the caller hears the hold line once, the
/// reply is asked again with backoff (1 s, 2 s, 4 s, ...), and the first answer goes on as a
/// normal reply, the outage journaled as a gap. Nothing ends the call.
#[test]
fn an_unanswered_reply_holds_and_retries_until_the_model_answers() {
    both_ways(|| {
        let mut line = Line::greeted(json!({"hold": "One moment please.", "reply_wait_ms": 30000}));
        let r = line.turn("Where is my order?");
        let start = line.now / MS;
        let out = line.send(Input::LlmUnavailable {
            reply: r,
            reason: "the groq circuit breaker is open".into(),
        });
        assert_eq!(spoken(&out), "One moment please.");
        line.synth(&speak_ctx(&out).unwrap(), 800);
        line.play_all();
        assert!(!has(&out, |a| matches!(a, Action::Hangup { .. })));
        assert!(!line
            .records()
            .iter()
            .any(|r| matches!(r, ConversationRecord::VendorFailure { .. })));
        // Asked again after 1 s, then 2 s: no second hold line for the same turn.
        assert!(llm_start(&line.to(start + 999)).is_none());
        let out = line.to(start + 1000);
        let r2 = llm_start(&out).expect("first retry");
        let out = line.send(Input::LlmUnavailable {
            reply: r2,
            reason: "open".into(),
        });
        assert!(spoken(&out).is_empty());
        assert!(llm_start(&line.to(start + 2999)).is_none());
        let r3 = llm_start(&line.to(start + 3000)).expect("second retry");
        // The breaker half-opened and this attempt went through: the reply goes on.
        line.answer(r3, "It ships tomorrow.");
        line.play_all();
        assert!(line.records().iter().any(|r| matches!(r,
            ConversationRecord::VendorGap { vendor, gap_ms: 3000, .. } if vendor == "llm")));
        assert!(line.records().iter().any(|r| matches!(r,
            ConversationRecord::Segment { speaker: Speaker::Agent, text, interrupted: false, .. }
                if text == "It ships tomorrow.")));
        assert!(!line.conv.is_done());
        // The model's context has the caller's turn and the reply, not the hold line.
        let r4 = line.turn("Thanks.");
        let messages = line
            .log
            .iter()
            .rev()
            .find_map(|a| match a {
                Action::LlmStart {
                    reply, messages, ..
                } if *reply == r4 => Some(messages.clone()),
                _ => None,
            })
            .unwrap();
        let said: Vec<&str> = messages[1..].iter().map(|m| m.content.as_str()).collect();
        assert_eq!(
            said,
            [
                "Hello! How can I help you today?",
                "Where is my order?",
                "It ships tomorrow.",
                "Thanks."
            ]
        );
    });
}

/// A model that stays away: each call applies its policy only once its own `reply_wait_ms`
/// (from its first unanswered attempt) has passed, after the apology.
#[test]
fn a_model_that_stays_away_ends_the_call_after_the_wait_with_the_apology() {
    both_ways(|| {
        let mut line = Line::greeted(json!({"apology": "Sorry, technical trouble.",
            "reply_wait_ms": 10000}));
        let r = line.turn("Hello?");
        let start = line.now / MS;
        let hold = line.send(Input::LlmUnavailable {
            reply: r,
            reason: "open".into(),
        });
        line.synth(&speak_ctx(&hold).unwrap(), 800);
        line.play_all();
        let mut attempts = Vec::new();
        let mut ended = false;
        while line.now / MS < start + 20_000 && !ended {
            let Some(deadline) = line.conv.next_deadline() else {
                break;
            };
            let out = line.to(deadline / MS);
            if let Some(r) = llm_start(&out) {
                attempts.push(line.now / MS - start);
                line.send(Input::LlmUnavailable {
                    reply: r,
                    reason: "open".into(),
                });
            }
            ended = line
                .records()
                .iter()
                .any(|r| matches!(r, ConversationRecord::VendorFailure { .. }));
        }
        // 1, 3, 7 s; then the wait (10 s) is over.
        assert_eq!(attempts, [1000, 3000, 7000]);
        assert!(ended);
        assert_eq!(line.now / MS - start, 10_000);
        let ctx = line
            .log
            .iter()
            .rev()
            .find_map(|a| match a {
                Action::TtsSpeak { context, text, .. } if text == "Sorry, technical trouble." => {
                    Some(context.clone())
                }
                _ => None,
            })
            .expect("apology");
        line.synth(&ctx, 800);
        assert!(has(&line.play_all(), |a| matches!(
            a,
            Action::Hangup {
                reason: EndReason::VoiceFailure
            }
        )));
    });
}

/// Detection running and no verdict ever arriving: the caller who speaks first is taken for a
/// person (journaled), greeted, and their sentence answered after the greeting, as turn 1. A
/// bare "hello?" is answered by the greeting alone; silence by the greeting at
/// `amd_wait_ms`, journaled too.
#[test]
fn without_a_verdict_the_callers_first_sentence_is_greeted_and_answered() {
    both_ways(|| {
        let mut line =
            Line::new(json!({"greeting": "Hi, this is Ava from Acme.", "amd_wait_ms": 5000}));
        line.send(Input::Start { await_amd: true });
        line.to(1000);
        line.caller_says("Yes, I'm calling back about the invoice you sent me.");
        let out = line.to(1300);
        assert!(has(&out, |a| matches!(a,
            Action::Record(ConversationRecord::AmdAssumedHuman { reason, waited_ms: 1250 })
                if reason == "the caller spoke before the verdict")));
        assert!(spoken(&out).starts_with("Hi, this is Ava from Acme."));
        let Some(Action::LlmStart { messages, .. }) =
            out.iter().find(|a| matches!(a, Action::LlmStart { .. }))
        else {
            panic!("the sentence is answered: {out:?}")
        };
        let said: Vec<(ChatRole, &str)> = messages[1..]
            .iter()
            .map(|m| (m.role, m.content.as_str()))
            .collect();
        assert_eq!(
            said,
            [
                (ChatRole::Assistant, "Hi, this is Ava from Acme."),
                (
                    ChatRole::User,
                    "Yes, I'm calling back about the invoice you sent me."
                ),
            ]
        );
        assert!(line.records().iter().any(|r| matches!(
            r,
            ConversationRecord::Segment {
                speaker: Speaker::Caller,
                turn: 1,
                ..
            }
        )));
        // The late verdict changes nothing any more.
        assert!(line.send(Input::Amd(AmdResult::Machine)).is_empty());

        // "Hello?" only: the greeting answers it.
        let mut line = Line::new(json!({"amd_wait_ms": 5000}));
        line.send(Input::Start { await_amd: true });
        line.caller_says("Hello?");
        let out = line.to(300);
        assert_eq!(spoken(&out), "Hello! How can I help you today?");
        assert!(llm_start(&out).is_none());

        // Nobody says anything and no verdict comes: greeted at `amd_wait_ms`, journaled.
        let mut line = Line::new(json!({"amd_wait_ms": 2000}));
        line.send(Input::Start { await_amd: true });
        let out = line.to(2000);
        assert_eq!(spoken(&out), "Hello! How can I help you today?");
        assert!(has(&out, |a| matches!(a,
            Action::Record(ConversationRecord::AmdAssumedHuman { reason, waited_ms: 2000 })
                if reason == "no verdict within amd_wait_ms")));
    });
}

/// A call that moved to another node (or whose node restarted) resumes its conversation:
/// no second greeting, the model sees what was said, and turns go on numbering.
#[test]
fn a_resumed_conversation_listens_and_the_model_sees_what_was_said() {
    both_ways(|| {
        let mut line = Line::new(json!({"greeting": "Hi, this is Ava."}));
        let out = line.send(Input::Resume {
            said: vec![
                (Speaker::Agent, "Hi, this is Ava.".into()),
                (Speaker::Caller, "I was charged twice.".into()),
                (Speaker::Agent, "Let me look at that.".into()),
            ],
            turn: 1,
        });
        assert_eq!(
            spoken(&out),
            "",
            "no greeting on a resumed conversation: {out:?}"
        );
        line.to(1000);
        let said = line.caller_says("It was on the third.");
        let out = line.to(1260);
        let Some(Action::LlmStart { messages, .. }) = request(&said, &out) else {
            panic!("no request: {out:?}")
        };
        let contents: Vec<(&ChatRole, &str)> = messages[1..]
            .iter()
            .map(|m| (&m.role, m.content.as_str()))
            .collect();
        assert_eq!(
            contents,
            [
                (&ChatRole::Assistant, "Hi, this is Ava."),
                (&ChatRole::User, "I was charged twice."),
                (&ChatRole::Assistant, "Let me look at that."),
                (&ChatRole::User, "It was on the third."),
            ]
        );
        assert!(has(&out, |a| matches!(
            a,
            Action::Record(ConversationRecord::Segment {
                speaker: Speaker::Caller,
                turn: 2,
                ..
            })
        )));
    });
}

// ------------------------------------------------------------------ speculative replies

fn llm_starts(out: &[Action]) -> Vec<u32> {
    out.iter()
        .filter_map(|a| match a {
            Action::LlmStart { reply, .. } => Some(*reply),
            _ => None,
        })
        .collect()
}

fn discarded(out: &[Action]) -> usize {
    out.iter()
        .filter(|a| matches!(a, Action::Speculation(SpeculationOutcome::Discarded { .. })))
        .count()
}

/// The caller's final words at audio `start..end` ms, endpointed.
fn final_words(line: &mut Line, text: &str, start_ms: u64, end_ms: u64) -> Vec<Action> {
    let mut out = line.stt(SttEvent::SpeechStarted { at_ms: start_ms });
    out.extend(line.stt(SttEvent::Transcript {
        text: text.into(),
        is_final: true,
        speech_final: true,
        confidence: 0.9,
        start_ms,
        end_ms,
    }));
    out
}

#[test]
fn speculative_replies_per_turn_are_capped() {
    SPECULATE.with(|s| s.set(true));
    let mut line = Line::greeted(json!({"turn_taking": {"max_speculations": 2}}));
    // Three pauses inside the hold-off: two speculations, the third part waits for the turn.
    let mut asked = Vec::new();
    for (i, part) in ["I want", "to change", "my plan."].into_iter().enumerate() {
        let out = final_words(&mut line, part, i as u64 * 1000, i as u64 * 1000 + 500);
        asked.extend(llm_starts(&out));
        line.now += 100 * MS;
    }
    assert_eq!(
        asked,
        [1, 2],
        "two speculations, the second discarding the first"
    );
    let out = line.to(line.now / MS + 1300);
    let Some(Action::LlmStart {
        reply, messages, ..
    }) = first_request(&out)
    else {
        panic!("the committed turn asks: {out:?}")
    };
    assert_eq!(reply, 3);
    assert_eq!(
        messages.last().unwrap().content,
        "I want to change my plan."
    );
    assert_eq!(discarded(&line.log), 2);

    // None at all with the switch off.
    SPECULATE.with(|s| s.set(false));
    let mut line = Line::greeted(json!({}));
    let out = line.caller_says("What are your hours?");
    assert!(llm_starts(&out).is_empty());
}

fn first_request(out: &[Action]) -> Option<Action> {
    out.iter()
        .find(|a| matches!(a, Action::LlmStart { .. }))
        .cloned()
}

#[test]
fn a_speculation_asked_in_another_tone_is_asked_again_at_the_commit() {
    SPECULATE.with(|s| s.set(true));
    let mut line = Line::greeted(json!({}));
    let r = line.turn("Where is my refund?");
    line.answer(r, "Let me look into that. ");
    line.play_all();
    let said = line.caller_says("Okay, and when will it arrive?");
    let asked = llm_starts(&said);
    assert_eq!(asked.len(), 1);
    // The vendor's score of the previous turn arrives during the hold-off and makes the
    // agent empathetic: the speculative request has the wrong system prompt.
    line.send(Input::Sentiment {
        turn: 1,
        sentiment: sentiment(-0.8),
    });
    assert_eq!(line.conv.tone(), Tone::Empathetic);
    let out = line.to(line.now / MS + 300);
    assert!(has(
        &out,
        |a| matches!(a, Action::LlmCancel { reply } if *reply == asked[0])
    ));
    let Some(Action::LlmStart {
        reply, messages, ..
    }) = first_request(&out)
    else {
        panic!("asked again: {out:?}")
    };
    assert_ne!(reply, asked[0]);
    assert!(messages[0].content.contains("frustrated"));
    assert_eq!(discarded(&out), 1);
}

#[test]
fn words_that_hand_the_call_over_are_not_answered_speculatively() {
    SPECULATE.with(|s| s.set(true));
    let mut line = Line::greeted(json!({"human_number": "+14155550100"}));
    let out = line.caller_says("Let me talk to a real person.");
    assert!(llm_starts(&out).is_empty());
    let out = line.to(line.now / MS + 300);
    assert!(llm_starts(&out).is_empty());
    assert!(has(&out, |a| matches!(
        a,
        Action::Record(ConversationRecord::Escalation { .. })
    )));
}

#[test]
fn text_chunking_streams_words_or_cuts_at_the_first_clause() {
    SPECULATE.with(|s| s.set(false));
    for (chunking, expected) in [
        ("clause", vec!["Sure, ", "I can help with that. ", "Bye."]),
        (
            "stream",
            vec!["Sure, ", "I ", "can ", "help ", "with ", "that. ", "Bye."],
        ),
    ] {
        let profile = VoiceProfile::from_configs(
            &json!({"turn_taking": {"speculate": false}}),
            &json!({"text_chunking": chunking}),
        )
        .unwrap();
        let mut line = Line {
            conv: Conversation::new(profile, CallerContext::default()),
            now: 0,
            log: Vec::new(),
            marks: Vec::new(),
        };
        let out = line.send(Input::Start { await_amd: false });
        line.synth(&speak_ctx(&out).expect("greeting"), 800);
        line.play_all();
        let reply = line.turn("Can you help?");
        let mut pieces = Vec::new();
        for token in ["Sure", ", I", " can", " help", " with", " that.", " Bye."] {
            let out = line.llm(reply, LlmEvent::Text { text: token.into() });
            pieces.extend(out.into_iter().filter_map(|a| match a {
                Action::TtsSpeak {
                    text, last: false, ..
                } => Some(text),
                _ => None,
            }));
        }
        let out = line.llm(
            reply,
            LlmEvent::Done {
                finish_reason: "stop".into(),
            },
        );
        pieces.extend(out.into_iter().filter_map(|a| match a {
            Action::TtsSpeak {
                text, last: false, ..
            } => Some(text),
            _ => None,
        }));
        assert_eq!(pieces, expected, "{chunking}");
        assert_eq!(pieces.concat(), "Sure, I can help with that. Bye.");
    }
}

fn http_tool_persona() -> serde_json::Value {
    json!({"http_tools": [{
        "name": "order",
        "description": "Looks up an order.",
        "parameters": {"type": "object", "properties": {"id": {"type": "string"}},
                       "required": ["id"], "additionalProperties": false},
        "url": "https://tools.example.com/order",
        "signing_secret": "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYX",
        "filler": "Checking your order."
    }]})
}

fn call_order(line: &mut Line, r: u32, id: &str, arguments: &str) -> Vec<Action> {
    line.llm(
        r,
        LlmEvent::ToolCall {
            call: ToolCall {
                id: id.into(),
                name: "order".into(),
                arguments: arguments.into(),
            },
        },
    );
    line.llm(
        r,
        LlmEvent::Done {
            finish_reason: "tool_calls".into(),
        },
    )
}

#[test]
fn http_tools_check_arguments_say_their_filler_and_survive_the_caller_speaking_over_them() {
    both_ways(|| {
        let mut line = Line::greeted(http_tool_persona());
        // Arguments that do not fit the schema: nothing runs, the model is asked again with
        // the error.
        let r = line.turn("Where is my order?");
        let out = call_order(&mut line, r, "c1", r#"{"id": 7}"#);
        assert!(!has(&out, |a| matches!(a, Action::RunTool { .. })));
        let Some(Action::LlmStart { messages, .. }) =
            out.iter().find(|a| matches!(a, Action::LlmStart { .. }))
        else {
            panic!("the model is not asked again: {out:?}")
        };
        let told = &messages[messages.len() - 1];
        assert_eq!(told.role, ChatRole::Tool);
        assert!(
            told.content.contains("invalid arguments"),
            "{}",
            told.content
        );
        let r = llm_start(&out).unwrap();

        // Fitting arguments: the tool runs, and its own filler plays when it takes long.
        let out = call_order(&mut line, r, "c2", r#"{"id": "A123"}"#);
        assert!(has(
            &out,
            |a| matches!(a, Action::RunTool { id, name, .. } if id == "c2" && name == "order")
        ));
        let out = line.to(line.now / MS + 900);
        assert_eq!(spoken(&out), "Checking your order.");
        line.synth(&speak_ctx(&out).unwrap(), 800);
        line.play_all();

        // The caller speaks before the answer: the new turn is answered, with the tool's
        // call answered in the history first (the model's request stays well formed)...
        let out = line.turn_out("Actually, never mind.");
        let Some(Action::LlmStart { messages, .. }) =
            out.iter().find(|a| matches!(a, Action::LlmStart { .. }))
        else {
            panic!("the new turn is not answered: {out:?}")
        };
        let n = messages.len();
        assert_eq!(messages[n - 2].role, ChatRole::Tool);
        assert!(messages[n - 2].content.contains("the caller spoke"));
        assert_eq!(messages[n - 1].role, ChatRole::User);
        // ...and the late answer is journaled and noted, without a second reply.
        let out = line.send(Input::ToolResult {
            id: "c2".into(),
            result: Ok(json!({"status": "shipped"})),
        });
        assert!(has(
            &out,
            |a| matches!(a, Action::Record(ConversationRecord::ToolCall { result, .. }) if result.contains("shipped"))
        ));
        assert!(!has(&out, |a| matches!(a, Action::LlmStart { .. })));
    });
}
