//! The voice pipeline end to end: an in-process server with the real Telnyx, Deepgram,
//! Cartesia and Groq clients against their wire-level fakes (`iace_fakes`), real Postgres and
//! real Redis, real sockets and real time. The fake carrier plays a scripted caller; the fake
//! Deepgram turns each burst of the caller's speech into the next line of its script.
//! Requires `DATABASE_URL` and `REDIS_URL` (`eval "$(scripts/services env)"`).

use crate::common;

use std::time::Duration;

use common::api::{free_port, Api};
use iace::app::Running;
use iace::config::{BreakerArgs, ServeArgs, TelephonyKind, TelnyxArgs};
use iace_dev::FakeVoices;
use iace_fakes::cartesia::FakeCartesiaConfig;
use iace_fakes::deepgram::{FakeDeepgram, FakeDeepgramConfig};
use iace_fakes::groq::{FakeGroq, FakeGroqConfig, Reply};
use iace_fakes::telnyx::{CallerScript, FakeTelnyx, FakeTelnyxConfig, Scenario};
use reqwest::StatusCode;
use serde_json::{json, Value};

const CALLEE: &str = "+14155550142";
const HUMAN: &str = "+14155550177";

struct Env {
    telnyx: FakeTelnyx,
    voices: FakeVoices,
    running: Option<Running>,
    api: Api,
}

impl std::ops::Deref for Env {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Env {
    async fn start() -> Env {
        Env::start_with("disabled", FakeDeepgramConfig::default()).await
    }

    /// `amd`: the Telnyx answering-machine detection mode the server asks for.
    async fn start_with(amd: &str, deepgram: FakeDeepgramConfig) -> Env {
        Env::start_tuned(amd, deepgram, |_| {}).await
    }

    /// As [`Env::start_with`], with the server's settings adjusted by `tune` first.
    async fn start_tuned(
        amd: &str,
        deepgram: FakeDeepgramConfig,
        tune: impl FnOnce(&mut ServeArgs),
    ) -> Env {
        let (database_url, _pool) = common::db::migrated_pool().await;
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let telnyx = FakeTelnyx::start(FakeTelnyxConfig {
            api_key: "k-test".into(),
            connection_id: "conn-test".into(),
            signing_seed: [9u8; 32],
            inbound_webhook_url: Some(format!("{base}/v1/webhooks/telnyx")),
            default_scenario: Scenario::Answer {
                ring: Duration::from_millis(200),
                talk: None,
            },
            webhook_retry_delays: vec![Duration::from_millis(100), Duration::from_millis(300)],
            ..FakeTelnyxConfig::default()
        })
        .await
        .expect("fake telnyx");
        let voices = FakeVoices::start(
            deepgram,
            FakeCartesiaConfig::default(),
            FakeGroqConfig::default(),
        )
        .await
        .expect("fake voice vendors");
        let mut args = ServeArgs {
            telephony: TelephonyKind::Telnyx,
            telnyx: TelnyxArgs {
                telnyx_api_key: Some("k-test".into()),
                telnyx_connection_id: Some("conn-test".into()),
                telnyx_public_key: Some(telnyx.public_key_base64()),
                telnyx_api_base: telnyx.api_base(),
                telnyx_amd: amd.into(),
                telnyx_webhook_tolerance_secs: 300,
                public_url: Some(base.clone()),
                media_secret: Some("voice-test-secret".into()),
                media_greeting: false,
                media_echo: false,
            },
            voice: voices.args(),
            sim_ring_ms: 0,
            sim_talk_ms: 0,
            sim_key_prefix: "unused:".into(),
            node_id: Some("voice-test".into()),
            max_call_secs: 600,
            ..ServeArgs::local(
                &database_url,
                &common::db::redis_url(),
                format!("127.0.0.1:{port}").parse().unwrap(),
            )
        };
        tune(&mut args);
        let running = iace::app::start(args).await.expect("server");
        let (_, key) = iace::app::create_org(&database_url, "Voice test")
            .await
            .expect("org");
        Env {
            telnyx,
            voices,
            running: Some(running),
            api: Api::new(base, key),
        }
    }

    fn deepgram(&self) -> &FakeDeepgram {
        &self.voices.deepgram
    }

    fn groq(&self) -> &FakeGroq {
        &self.voices.groq
    }

    /// Creates an agent with `persona` and dials `to` with it; returns the call id.
    async fn dial(&self, to: &str, persona: Value) -> String {
        let agent = self
            .post(
                "/v1/agents",
                json!({"name": "Ava", "persona_config": persona}),
                StatusCode::CREATED,
            )
            .await;
        let call = self
            .post(
                "/v1/calls",
                json!({"to": to, "from": "+14155550199", "agent_id": agent["id"]}),
                StatusCode::CREATED,
            )
            .await;
        call["id"].as_str().unwrap().to_owned()
    }

    /// Scripts a conversation: the caller waits for the greeting, then says each of `lines`
    /// (`speech` long each) and waits for the agent's answer, from `replies`, before the next;
    /// then hangs up.
    fn converse(&self, lines: &[&str], replies: &[&str], speech: Duration) {
        self.deepgram()
            .set_script(lines.iter().map(|l| (*l).to_owned()));
        for reply in replies {
            self.groq().push_reply(Reply::text(reply));
        }
        let wait = Duration::from_secs(15);
        let quiet = Duration::from_millis(500);
        let mut script = CallerScript::new()
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(quiet, wait);
        for _ in lines {
            script = script
                .say(speech)
                .wait_for_agent_audio(wait)
                .wait_for_agent_silence(quiet, wait);
        }
        self.telnyx.set_caller_script(CALLEE, script.hangup());
    }

    async fn transcript(&self, call_id: &str) -> Value {
        self.get(&format!("/v1/calls/{call_id}/transcript")).await
    }

    /// Waits for the call to end, asserts it completed, returns it and its transcript.
    async fn completed(&self, call_id: &str, within: Duration) -> (Value, Value) {
        let ended = self.wait_ended(call_id, within).await;
        assert_eq!(ended["status"], "completed", "{ended}");
        (ended, self.transcript(call_id).await)
    }

    async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        self.telnyx.shutdown().await;
        self.voices.shutdown().await;
    }
}

fn texts(items: &[Value], speaker: &str) -> Vec<String> {
    items
        .iter()
        .filter(|s| s["speaker"] == speaker)
        .map(|s| s["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The scenario of the issue: greeting, two turns, a barge-in, frustration -> tone change ->
/// transfer, through the real clients and real Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_conversation_with_barge_in_frustration_and_transfer() {
    let env = Env::start().await;
    let agent = env
        .post(
            "/v1/agents",
            json!({
                "name": "Ava",
                "persona_config": {
                    "system_prompt": "You are Ava, Acme's billing assistant.",
                    "greeting": "Hi, this is Ava from Acme. How can I help?",
                    "handoff": "Let me get a colleague on the line.",
                    "human_number": HUMAN,
                    "escalation": {"sentiment_floor": -0.5, "floor_turns": 2},
                },
                "voice_config": {"voice_id": "a0e99841-438c-4a64-b679-ae501e7d6091"},
            }),
            StatusCode::CREATED,
        )
        .await;
    env.deepgram().set_script([
        "Hi, I'm calling about my internet bill.",
        "I was charged twice this month.",
        "Stop, this is ridiculous, I am furious.",
        "This is terrible, I am still angry.",
    ]);
    env.groq().push_reply(Reply::text(
        "Sure, I can help with your bill. What seems to be the problem?",
    ));
    env.groq().push_reply(Reply::text(
        "I understand. Let me walk you through how our billing cycle works, because it can be \
         confusing. Every month we issue an invoice on the first day, and any change to your \
         plan is prorated across the next two cycles, which sometimes looks like a double charge.",
    ));
    env.groq().push_reply(Reply::text(
        "I'm so sorry about this. I will fix the double charge right away.",
    ));
    env.groq()
        .push_reply(Reply::text("I understand, and I'm sorry."));
    let wait = Duration::from_secs(15);
    let quiet = Duration::from_millis(500);
    env.telnyx.set_caller_script(
        CALLEE,
        CallerScript::new()
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(quiet, wait)
            .say(Duration::from_millis(1200))
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(quiet, wait)
            .say(Duration::from_millis(1200))
            .wait_for_agent_audio(wait)
            .silence(Duration::from_millis(1500))
            .say(Duration::from_millis(1600))
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(quiet, wait)
            .say(Duration::from_millis(1200))
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(Duration::from_millis(800), wait)
            .silence(Duration::from_millis(1000))
            .hangup(),
    );

    let call = env
        .post(
            "/v1/calls",
            json!({"to": CALLEE, "from": "+14155550199", "agent_id": agent["id"]}),
            StatusCode::CREATED,
        )
        .await;
    let call_id = call["id"].as_str().unwrap().to_owned();
    let ended = env.wait_ended(&call_id, Duration::from_secs(90)).await;
    assert_eq!(ended["status"], "completed", "{ended}");

    let t = env.get(&format!("/v1/calls/{call_id}/transcript")).await;
    let segments = t["segments"].as_array().unwrap().clone();
    let events = t["events"].as_array().unwrap().clone();
    let caller = texts(&segments, "caller");
    let agent_said = texts(&segments, "agent");
    // Greeting, then the caller's four lines, each answered.
    assert_eq!(
        agent_said[0], "Hi, this is Ava from Acme. How can I help?",
        "{t:#}"
    );
    assert_eq!(
        caller,
        [
            "Hi, I'm calling about my internet bill.",
            "I was charged twice this month.",
            "Stop, this is ridiculous, I am furious.",
            "This is terrible, I am still angry.",
        ],
        "{t:#}"
    );
    assert!(
        agent_said
            .contains(&"Sure, I can help with your bill. What seems to be the problem?".to_owned()),
        "{t:#}"
    );
    // The long answer was cut: recorded as interrupted with what the caller heard.
    let cut = segments
        .iter()
        .find(|s| s["speaker"] == "agent" && s["interrupted"] == true)
        .unwrap_or_else(|| panic!("no interrupted agent segment: {t:#}"));
    let heard = cut["text"].as_str().unwrap();
    assert!(
        heard.starts_with("I understand.") && heard.len() < 200,
        "heard: {heard}"
    );
    assert!(events.iter().any(|e| e["type"] == "barge_in"), "{t:#}");
    // Frustration: the tone changed, the next request told the model so, then the floor
    // (two turns below -0.5) handed the call to a person.
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "tone_changed" && e["to"] == "empathetic"),
        "{t:#}"
    );
    let escalation = events
        .iter()
        .find(|e| e["type"] == "escalation")
        .unwrap_or_else(|| panic!("no escalation: {t:#}"));
    assert_eq!(escalation["reason"], "sentiment_floor");
    assert_eq!(escalation["to"], HUMAN);
    assert!(
        agent_said.contains(&"Let me get a colleague on the line.".to_owned()),
        "{t:#}"
    );
    let sentiment = t["sentiment"].as_array().unwrap();
    assert!(sentiment.len() >= 4, "{t:#}");
    assert!(sentiment
        .iter()
        .all(|s| s["source"] == "groq" && s["degraded"] == false));

    // The model saw the frustration and only what the caller heard of the cut answer.
    let requests = env.groq().requests();
    let conversation: Vec<&Value> = requests
        .iter()
        .map(|r| &r.body)
        .filter(|b| b["stream"] == true)
        .collect();
    let angry = conversation
        .iter()
        .find(|b| {
            b["messages"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["content"] == "Stop, this is ridiculous, I am furious.")
        })
        .expect("turn 3 request");
    assert!(angry["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("frustrated"));
    assert!(
        angry["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["role"] == "assistant" && m["content"].as_str().unwrap().ends_with("...")),
        "the cut answer is in the context as heard: {angry:#}"
    );

    // The carrier: one transfer to the human, a clear on barge-in that stopped the audio.
    let transfers: Vec<_> = env
        .telnyx
        .commands()
        .into_iter()
        .filter(|c| c.action == "transfer")
        .collect();
    assert_eq!(transfers.len(), 1, "{transfers:?}");
    assert_eq!(transfers[0].body["to"], HUMAN);
    let leg = env
        .telnyx
        .legs()
        .into_iter()
        .find(|l| l.to == CALLEE)
        .expect("leg");
    let timeline = env.telnyx.caller_timeline(&leg.call_control_id).unwrap();
    assert!(!timeline.clears_ms.is_empty(), "{timeline:?}");
    let journal = env.get(&format!("/v1/calls/{call_id}/events")).await;
    let kinds: Vec<&str> = journal["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"transfer_requested"), "{kinds:?}");
    assert!(kinds.contains(&"bridged"), "{kinds:?}");

    // Per-turn latency: every answered turn has one, and the engine's share is a small part.
    let latency = t["latency"].as_array().unwrap();
    assert!(latency.len() >= 3, "{t:#}");
    for l in latency {
        let total = l["total_us"].as_u64().unwrap();
        let engine = l["engine_us"].as_u64().unwrap();
        assert!(engine <= total, "{l}");
    }
    // The product's metrics counted the barge-in, the escalation and the transfer.
    let metrics = format!(
        "http://{}",
        env.running.as_ref().unwrap().metrics_addr.unwrap()
    );
    let series = |name: &'static str| {
        let metrics = metrics.clone();
        async move { common::metrics::series(&metrics, name).await }
    };
    assert!(series("iace_barge_ins_total").await >= 1.0);
    assert_eq!(series("iace_transfers_total").await, 1.0);
    let escalations: f64 = common::metrics::scrape(&metrics)
        .await
        .lines()
        .filter(|l| l.starts_with("iace_escalations_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(escalations, 1.0);
    assert!(series("iace_turn_latency_seconds_count{stage=\"total\"}").await >= 3.0);
    env.shutdown().await;
}

fn events_of<'a>(t: &'a Value, kind: &str) -> Vec<&'a Value> {
    t["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind)
        .collect()
}

/// The speech-to-text socket dies mid-call (TCP cut, no close frame): the client reopens it,
/// the gap is journaled, and the conversation goes on over the new socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_speech_to_text_socket_is_reopened_and_the_call_goes_on() {
    let env = Env::start().await;
    env.deepgram()
        .set_script(["I'd like to check my balance.", "Thanks, that's all."]);
    env.groq()
        .push_reply(Reply::text("Your balance is forty dollars."));
    env.groq().push_reply(Reply::text("You're welcome."));
    // The first socket is cut during the greeting, while the caller listens.
    env.deepgram()
        .drop_next_connection_after(Duration::from_millis(800));
    let wait = Duration::from_secs(15);
    let quiet = Duration::from_millis(500);
    env.telnyx.set_caller_script(
        CALLEE,
        CallerScript::new()
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(quiet, wait)
            .say(Duration::from_millis(1200))
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(quiet, wait)
            .say(Duration::from_millis(1000))
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(quiet, wait)
            .hangup(),
    );
    let call_id = env
        .dial(
            CALLEE,
            json!({"greeting": "Hello, this is Ava from Acme, how can I help you today?"}),
        )
        .await;
    let (_, t) = env.completed(&call_id, Duration::from_secs(60)).await;
    assert_eq!(
        texts(t["segments"].as_array().unwrap(), "caller"),
        ["I'd like to check my balance.", "Thanks, that's all."],
        "{t:#}"
    );
    let agent_said = texts(t["segments"].as_array().unwrap(), "agent");
    assert!(
        agent_said.contains(&"Your balance is forty dollars.".to_owned()),
        "{t:#}"
    );
    let gaps = events_of(&t, "vendor_gap");
    assert_eq!(gaps.len(), 1, "{t:#}");
    assert_eq!(gaps[0]["vendor"], "stt");
    assert!(events_of(&t, "vendor_failure").is_empty(), "{t:#}");
    assert_eq!(env.deepgram().connections().len(), 2);
    env.shutdown().await;
}

/// Keys pressed by the caller reach the conversation as a turn, journaled as `dtmf_input`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_the_caller_presses_are_a_turn_of_the_conversation() {
    let env = Env::start().await;
    env.groq()
        .push_reply(Reply::text("Thanks, I've noted option one."));
    let wait = Duration::from_secs(15);
    let quiet = Duration::from_millis(500);
    env.telnyx.set_caller_script(
        CALLEE,
        CallerScript::new()
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(quiet, wait)
            .dtmf('1')
            .silence(Duration::from_millis(100))
            .dtmf('#')
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(quiet, wait)
            .hangup(),
    );
    let call_id = env
        .dial(
            CALLEE,
            json!({"greeting": "Press 1 for billing, then the pound key."}),
        )
        .await;
    let (_, t) = env.completed(&call_id, Duration::from_secs(60)).await;
    let keys = events_of(&t, "dtmf_input");
    assert_eq!(keys.len(), 1, "{t:#}");
    assert_eq!(keys[0]["digits"], "1#");
    // The keypad turn sits where the keys were pressed (after the greeting), and its latency
    // counts from the last key, not from the start of the call.
    let segments = t["segments"].as_array().unwrap();
    let greeting_end = segments[0]["end_ms"].as_u64().unwrap();
    let keys_segment = segments
        .iter()
        .find(|s| s["speaker"] == "caller")
        .unwrap_or_else(|| panic!("no keypad segment: {t:#}"));
    assert!(
        keys_segment["start_ms"].as_u64().unwrap() >= greeting_end,
        "{t:#}"
    );
    let stt_us = t["latency"][0]["stt_us"].as_u64().unwrap();
    assert!(stt_us < 2_000_000, "{t:#}");
    assert!(
        texts(t["segments"].as_array().unwrap(), "agent")
            .contains(&"Thanks, I've noted option one.".to_owned()),
        "{t:#}"
    );
    let requests = env.groq().requests();
    assert!(
        requests.iter().any(|r| r.body["stream"] == true
            && r.body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["role"] == "user"
                    && m["content"]
                        .as_str()
                        .unwrap_or("")
                        .contains("pressed the keys: 1#"))),
        "the model was told which keys: {requests:#?}"
    );
    env.shutdown().await;
}

/// An outbound call answered by a machine: the agent waits out the machine's greeting, leaves
/// the agent's message and hangs up; the call ends `voicemail`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answering_machine_gets_the_agents_message() {
    let env = Env::start_with("detect", FakeDeepgramConfig::default()).await;
    env.telnyx.set_scenario(
        CALLEE,
        Scenario::Machine {
            ring: Duration::from_millis(200),
            talk: None,
        },
    );
    env.deepgram()
        .set_script(["Hi, you've reached Sam. Leave a message after the tone."]);
    let wait = Duration::from_secs(15);
    env.telnyx.set_caller_script(
        CALLEE,
        CallerScript::new()
            // The machine's greeting, then it records.
            .say(Duration::from_millis(1500))
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(Duration::from_millis(800), wait)
            .silence(Duration::from_secs(5))
            .hangup(),
    );
    let message = "Hi Sam, this is Ava from Acme about your renewal. Please call us back.";
    let call_id = env
        .dial(
            CALLEE,
            json!({"voicemail": "leave_message", "voicemail_message": message}),
        )
        .await;
    let (ended, t) = env.completed(&call_id, Duration::from_secs(60)).await;
    assert_eq!(ended["end_reason"], "voicemail", "{ended}");
    let vm = events_of(&t, "voicemail");
    assert_eq!(vm.len(), 1, "{t:#}");
    assert_eq!(vm[0]["action"], "leave_message");
    // No greeting to a machine: the message is all the agent said.
    assert_eq!(
        texts(t["segments"].as_array().unwrap(), "agent"),
        [message],
        "{t:#}"
    );
    // The model was never asked for a reply.
    assert!(env
        .groq()
        .requests()
        .iter()
        .all(|r| r.body["stream"] != true));
    env.shutdown().await;
}

/// A caller who says nothing: one reprompt, then the goodbye and a hangup, ended `silence`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_caller_is_reprompted_then_the_agent_hangs_up() {
    let env = Env::start().await;
    let wait = Duration::from_secs(15);
    env.telnyx.set_caller_script(
        CALLEE,
        CallerScript::new()
            .wait_for_agent_audio(wait)
            .silence(Duration::from_secs(30))
            .hangup(),
    );
    let call_id = env
        .dial(
            CALLEE,
            json!({
                "greeting": "Hello, this is Ava.",
                "reprompt": "Are you still there?",
                "goodbye": "I'll let you go. Goodbye!",
                "silence": {"reprompt_after_ms": 2000, "hangup_after_ms": 5000},
            }),
        )
        .await;
    let (ended, t) = env.completed(&call_id, Duration::from_secs(30)).await;
    assert_eq!(ended["end_reason"], "silence", "{ended}");
    assert_eq!(
        texts(t["segments"].as_array().unwrap(), "agent"),
        [
            "Hello, this is Ava.",
            "Are you still there?",
            "I'll let you go. Goodbye!"
        ],
        "{t:#}"
    );
    assert!(texts(t["segments"].as_array().unwrap(), "caller").is_empty());
    // We hung up, not the caller.
    let hangups: Vec<_> = env
        .telnyx
        .commands()
        .into_iter()
        .filter(|c| c.action == "hangup")
        .collect();
    assert_eq!(hangups.len(), 1, "{hangups:?}");
    env.shutdown().await;
}

/// The model is down during a call (every Groq request answers 503): the caller's sentiment
/// falls back to the local lexicon (marked degraded), the agent apologises and hands the call
/// to the agent's human number, as its configuration says. No dead air, no hung call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_outage_mid_call_apologises_and_transfers() {
    let env = Env::start().await;
    env.deepgram()
        .set_script(["I want to change my delivery address."]);
    let wait = Duration::from_secs(15);
    let quiet = Duration::from_millis(500);
    env.telnyx.set_caller_script(
        CALLEE,
        CallerScript::new()
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(quiet, wait)
            .say(Duration::from_millis(1200))
            // The hold line, then (the model still down after `reply_wait_ms`) the apology.
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(Duration::from_millis(800), wait)
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(Duration::from_millis(800), wait)
            .silence(Duration::from_secs(2))
            .hangup(),
    );
    // Up after the greeting (which needs no model), down for everything after.
    env.groq().fail_next(1000, 503, None);
    let call_id = env
        .dial(
            CALLEE,
            json!({
                "greeting": "Hello, this is Ava.",
                "hold": "One moment please.",
                "reply_wait_ms": 2000,
                "apology": "Sorry, I'm having trouble on my side.",
                "handoff": "Let me get a colleague.",
                "human_number": HUMAN,
                "on_vendor_failure": "transfer",
            }),
        )
        .await;
    let (_, t) = env.completed(&call_id, Duration::from_secs(60)).await;
    let failures = events_of(&t, "vendor_failure");
    assert_eq!(failures.len(), 1, "{t:#}");
    assert_eq!(failures[0]["vendor"], "llm", "{t:#}");
    let agent_said = texts(t["segments"].as_array().unwrap(), "agent");
    assert!(
        agent_said.contains(&"One moment please.".to_owned()),
        "{t:#}"
    );
    assert!(
        agent_said
            .iter()
            .any(|s| s.starts_with("Sorry, I'm having trouble on my side.")),
        "{t:#}"
    );
    let sentiment = t["sentiment"].as_array().unwrap();
    assert!(!sentiment.is_empty(), "{t:#}");
    assert!(
        sentiment
            .iter()
            .all(|s| s["source"] == "lexicon" && s["degraded"] == true),
        "{t:#}"
    );
    let transfers: Vec<_> = env
        .telnyx
        .commands()
        .into_iter()
        .filter(|c| c.action == "transfer")
        .collect();
    assert_eq!(transfers.len(), 1, "{transfers:?}");
    assert_eq!(transfers[0].body["to"], HUMAN);
    env.shutdown().await;
}

/// The model answers replies in time but its sentiment classifications late (as a model
/// under load does): each turn's sentiment comes from the lexicon, journaled as degraded, the
/// late classifications open only the `groq_classify` breaker, and the call keeps conversing
/// turn after turn (it used to count each of our own 800 ms cut-offs as a failure of the
/// shared `groq` breaker, open it, and end the call as `voice_failure`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_sentiment_degrades_to_the_lexicon_and_the_call_goes_on() {
    // Breakers that judge after four outcomes (half of them failed, or two in a row): a
    // single call's replies and late classifications are enough to reach them.
    let env = Env::start_tuned("disabled", FakeDeepgramConfig::default(), |args| {
        args.breakers = BreakerArgs {
            breaker_consecutive_failures: 2,
            breaker_min_calls: 4,
            breaker_failure_rate: 0.5,
            ..BreakerArgs::default()
        };
        args.admin_token = Some("voice-admin-token".into());
    })
    .await;
    env.groq()
        .set_classify_latency(Some(Duration::from_secs(60)));
    env.converse(
        &[
            "Hi, I'm calling about my order.",
            "It was supposed to arrive on Monday.",
            "Can you check where it is?",
            "Okay, thank you.",
        ],
        &[
            "Sure, I can help with your order.",
            "I see, let me look at that.",
            "It is on its way and arrives tomorrow.",
            "You're welcome, goodbye.",
        ],
        Duration::from_millis(1200),
    );
    let call_id = env
        .dial(CALLEE, json!({"greeting": "Hello, this is Ava from Acme."}))
        .await;
    let (ended, t) = env.completed(&call_id, Duration::from_secs(90)).await;
    assert_ne!(ended["end_reason"], "voice_failure", "{ended}");
    assert!(events_of(&t, "vendor_failure").is_empty(), "{t:#}");
    let agent_said = texts(t["segments"].as_array().unwrap(), "agent");
    assert_eq!(
        agent_said,
        [
            "Hello, this is Ava from Acme.",
            "Sure, I can help with your order.",
            "I see, let me look at that.",
            "It is on its way and arrives tomorrow.",
            "You're welcome, goodbye.",
        ],
        "{t:#}"
    );
    let sentiment = t["sentiment"].as_array().unwrap();
    assert_eq!(sentiment.len(), 4, "{t:#}");
    assert!(
        sentiment
            .iter()
            .all(|s| s["source"] == "lexicon" && s["degraded"] == true),
        "{t:#}"
    );
    // Both breakers are listed; only the classifications' one opened.
    let (status, body) = common::api::request(
        &env.base,
        reqwest::Method::GET,
        "/v1/admin/breakers",
        Some("voice-admin-token"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let state = |name: &str| {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["vendor"] == name)
            .map(|b| b["state"].as_str().unwrap().to_owned())
    };
    assert_eq!(state("groq").as_deref(), Some("closed"), "{body}");
    assert_ne!(state("groq_classify").as_deref(), Some("closed"), "{body}");
    env.shutdown().await;
}

/// One request a tool endpoint received.
#[derive(Debug, Clone)]
struct ToolHit {
    path: String,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

/// A customer's tool endpoints: `/order` answers after 800 ms, `/refund` fails with 500,
/// `/slow` answers after 5 s.
async fn tool_endpoints() -> (String, std::sync::Arc<std::sync::Mutex<Vec<ToolHit>>>) {
    use axum::extract::{Path, State};
    use axum::http::HeaderMap;
    type Hits = std::sync::Arc<std::sync::Mutex<Vec<ToolHit>>>;
    async fn handle(
        State(hits): State<Hits>,
        Path(name): Path<String>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> (StatusCode, String) {
        hits.lock().unwrap().push(ToolHit {
            path: name.clone(),
            headers,
            body: body.to_vec(),
        });
        match name.as_str() {
            "order" => {
                tokio::time::sleep(Duration::from_millis(800)).await;
                (
                    StatusCode::OK,
                    json!({"status": "shipped", "eta": "tomorrow"}).to_string(),
                )
            }
            "refund" => (StatusCode::INTERNAL_SERVER_ERROR, "database down".into()),
            _ => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                (StatusCode::OK, "{}".into())
            }
        }
    }
    let hits: Hits = Default::default();
    let app = axum::Router::new()
        .route("/tools/{name}", axum::routing::post(handle))
        .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/tools", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, hits)
}

/// The agent's HTTP tools through the real pipeline: a tool answering in 800 ms gets its
/// filler line and its answer reaches the model; a failing one and a slow one (timed out)
/// come back to the model as errors it answers gracefully; arguments that do not fit the
/// schema are never sent. Every request is signed; secrets are never shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_tools_are_called_signed_with_filler_errors_and_timeouts() {
    let env = Env::start_tuned("disabled", FakeDeepgramConfig::default(), |args| {
        args.allow_private_urls = true;
    })
    .await;
    let (tools, hits) = tool_endpoints().await;
    let secret = iace::outbound::signing::Secret::generate().expose();
    let order_schema = json!({
        "type": "object",
        "properties": {"order_id": {"type": "string", "minLength": 4}},
        "required": ["order_id"],
        "additionalProperties": false
    });
    let tool = |name: &str, timeout_ms: u64| {
        json!({
            "name": name,
            "description": format!("The {name} tool."),
            "parameters": order_schema,
            "url": format!("{tools}/{name}"),
            "secret_headers": {"Authorization": "Bearer tool-token"},
            "headers": {"X-Shop": "acme"},
            "signing_secret": secret,
            "timeout_ms": timeout_ms,
            "filler": "Let me look that up.",
        })
    };
    let persona = json!({
        "greeting": "Hello, this is Ava.",
        "filler_after_ms": 300,
        "http_tools": [tool("order", 3000), tool("refund", 3000), tool("slow", 500)],
    });
    let agent = env
        .post(
            "/v1/agents",
            json!({"name": "Ava", "persona_config": persona}),
            StatusCode::CREATED,
        )
        .await;
    // Secrets are write-only: masked when shown, kept when sent back masked.
    let shown = &agent["persona_config"]["http_tools"][0];
    assert_eq!(shown["signing_secret"], "********", "{agent}");
    assert_eq!(shown["secret_headers"]["Authorization"], "********");
    assert_eq!(shown["headers"]["X-Shop"], "acme");
    let agent_id = agent["id"].as_str().unwrap().to_owned();
    let patched = env
        .http
        .patch(format!("{}/v1/agents/{agent_id}", env.base))
        .bearer_auth(&env.key)
        .json(&json!({"persona_config": agent["persona_config"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);

    env.deepgram().set_script([
        "Where is my order A123?",
        "Then I want a refund.",
        "Can you check the warehouse?",
        "It is order five.",
    ]);
    let call_tool = |name: &str, args: Value| Reply::tool_call(name, &args);
    env.groq()
        .push_reply(call_tool("order", json!({"order_id": "A123"})));
    env.groq()
        .push_reply(Reply::text("Your order A123 ships tomorrow."));
    env.groq()
        .push_reply(call_tool("refund", json!({"order_id": "A123"})));
    env.groq()
        .push_reply(Reply::text("Sorry, I cannot issue refunds right now."));
    env.groq()
        .push_reply(call_tool("slow", json!({"order_id": "A123"})));
    env.groq().push_reply(Reply::text(
        "The warehouse is not answering, I will note it.",
    ));
    env.groq()
        .push_reply(call_tool("order", json!({"order_id": 5})));
    env.groq()
        .push_reply(Reply::text("Could you give me the full order number?"));
    let wait = Duration::from_secs(15);
    let quiet = Duration::from_millis(1200);
    let mut script = CallerScript::new()
        .wait_for_agent_audio(wait)
        .wait_for_agent_silence(quiet, wait);
    for _ in 0..4 {
        script = script
            .say(Duration::from_millis(1200))
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(quiet, wait);
    }
    env.telnyx.set_caller_script(CALLEE, script.hangup());
    let call = env
        .post(
            "/v1/calls",
            json!({"to": CALLEE, "from": "+14155550199", "agent_id": agent_id}),
            StatusCode::CREATED,
        )
        .await;
    let call_id = call["id"].as_str().unwrap().to_owned();
    let (_, t) = env.completed(&call_id, Duration::from_secs(90)).await;

    let calls = events_of(&t, "tool_call");
    let results: Vec<(&str, &str)> = calls
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["result"].as_str().unwrap()))
        .collect();
    assert_eq!(results.len(), 4, "{t:#}");
    let oks: Vec<bool> = calls.iter().map(|e| e["ok"] == true).collect();
    assert_eq!(oks, [true, false, false, false], "{t:#}");
    assert_eq!(results[0].0, "order");
    assert!(results[0].1.contains("shipped"), "{results:?}");
    assert!(
        results[1].1.starts_with("error: the tool answered 500"),
        "{results:?}"
    );
    assert!(
        results[2].1.starts_with("error: no answer within 500 ms"),
        "{results:?}"
    );
    assert!(
        results[3]
            .1
            .starts_with("error: invalid arguments, nothing was sent: /order_id"),
        "{results:?}"
    );
    let agent_said = texts(t["segments"].as_array().unwrap(), "agent");
    assert!(
        agent_said.iter().any(|s| s == "Let me look that up."),
        "the 800 ms tool got its filler: {agent_said:?}"
    );
    for line in [
        "Your order A123 ships tomorrow.",
        "Sorry, I cannot issue refunds right now.",
        "The warehouse is not answering, I will note it.",
        "Could you give me the full order number?",
    ] {
        assert!(
            agent_said.iter().any(|s| s == line),
            "{line}: {agent_said:?}"
        );
    }
    // The model saw each answer: the refund's error among them.
    let told = env.groq().requests().iter().any(|r| {
        r.body["messages"].as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["role"] == "tool" && m["content"].as_str().unwrap_or("").contains("500"))
        })
    });
    assert!(told, "the model was told the tool failed");
    // Three requests (the invalid arguments were never sent), each signed and carrying the
    // call and the headers.
    let hits = hits.lock().unwrap().clone();
    let paths: Vec<&str> = hits.iter().map(|h| h.path.as_str()).collect();
    assert_eq!(paths, ["order", "refund", "slow"]);
    let key = iace::outbound::signing::Secret::parse(&secret).unwrap();
    for hit in &hits {
        let h = |n: &str| hit.headers.get(n).unwrap().to_str().unwrap().to_owned();
        let ts: i64 = h("webhook-timestamp").parse().unwrap();
        assert_eq!(
            h("webhook-signature"),
            key.sign(&h("webhook-id"), ts, &hit.body)
        );
        assert_eq!(h("authorization"), "Bearer tool-token");
        assert_eq!(h("x-shop"), "acme");
        let body: Value = serde_json::from_slice(&hit.body).unwrap();
        assert_eq!(body["call_id"], call_id.as_str());
        assert_eq!(body["arguments"], json!({"order_id": "A123"}));
    }
    // The product's metrics saw the call: its end, the caller's sentiment, the tools'
    // outcomes; nothing live left. (Every reply here followed a tool: replies after a tool
    // round carry no turn latency; the analysis test checks those.)
    let metrics = format!(
        "http://{}",
        env.running.as_ref().unwrap().metrics_addr.unwrap()
    );
    let series = |name: &'static str| {
        let metrics = metrics.clone();
        async move { common::metrics::series(&metrics, name).await }
    };
    assert_eq!(
        series(r#"iace_calls_total{direction="outbound",end_reason="normal_clearing",status="completed"}"#).await,
        1.0
    );
    assert_eq!(
        series(r#"iace_active_calls{direction="outbound"}"#).await,
        0.0
    );
    assert_eq!(series("iace_call_duration_seconds_count").await, 1.0);
    assert!(series("iace_sentiment_score_count").await >= 4.0);
    assert_eq!(series(r#"iace_tool_calls_total{outcome="ok"}"#).await, 1.0);
    assert_eq!(
        series(r#"iace_tool_calls_total{outcome="error_status"}"#).await,
        1.0
    );
    assert_eq!(
        series(r#"iace_tool_calls_total{outcome="timeout"}"#).await,
        1.0
    );
    env.shutdown().await;
}

/// Dials `CALLEE` with an agent whose persona asks for a post-call analysis; the caller says
/// one line and hangs up after the reply. Returns the call id.
async fn analysed_call(env: &Env, analysis: Value) -> String {
    env.deepgram()
        .set_script(["Where is my order A123? I need it by Friday."]);
    env.groq().push_reply(Reply::text(
        "Order A123 ships tomorrow and arrives Thursday.",
    ));
    let wait = Duration::from_secs(15);
    env.telnyx.set_caller_script(
        CALLEE,
        CallerScript::new()
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(Duration::from_millis(500), wait)
            .say(Duration::from_millis(1200))
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(Duration::from_millis(800), wait)
            .hangup(),
    );
    env.dial(
        CALLEE,
        json!({"greeting": "Hello, this is Ava.", "analysis": analysis}),
    )
    .await
}

/// Waits for the call's analysis.
async fn analysis_of(env: &Env, call_id: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let call = env.get(&format!("/v1/calls/{call_id}")).await;
        if !call["analysis"].is_null() {
            return call["analysis"].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no analysis of {call_id}: {call}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Post-call analysis end to end: the model (the fake Groq, which honours and checks the
/// structured-output request) first answers off-schema and is asked again with the error; the
/// valid answer is stored on the call, filterable by success, and a `call.analyzed` event is
/// written. A model that never fits stores the error and no data. A Groq outage leaves the
/// job queued until Groq is back; nothing is analysed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_analysed_against_the_agents_schema_and_invalid_answers_never_stored() {
    use iace_fakes::groq::StructuredAnswer;
    let env = Env::start_tuned("disabled", FakeDeepgramConfig::default(), |args| {
        args.allow_private_urls = true;
        args.voice.analysis_retry_ms = 500;
    })
    .await;
    let analysis = json!({
        "summary": "One sentence: why the caller called and what they were told.",
        "schema": {
            "type": "object",
            "properties": {
                "order_id": {"type": "string", "minLength": 4},
                "intent": {"enum": ["order_status", "refund", "other"]},
                "needed_by": {"type": "string"}
            },
            "required": ["order_id", "intent"],
            "additionalProperties": false
        },
        "success_rubric": "The caller learned when the order arrives."
    });
    // Off-schema first (an intent outside the enum), then right.
    env.groq().push_structured(StructuredAnswer::Raw(
        r#"{"summary": "s", "data": {"order_id": "A123", "intent": "where"}, "success": true, "success_reason": "r"}"#.into(),
    ));
    let good = json!({
        "summary": "The caller asked where order A123 is; it arrives Thursday.",
        "data": {"order_id": "A123", "intent": "order_status", "needed_by": "Friday"},
        "success": true,
        "success_reason": "The caller was told the delivery day."
    });
    env.groq()
        .push_structured(StructuredAnswer::Json(good.clone()));
    // Every event of the organization is queued for this endpoint (never reached here).
    env.post(
        "/v1/webhook-endpoints",
        json!({"url": "http://127.0.0.1:9/hook", "event_types": ["call.analyzed"]}),
        StatusCode::CREATED,
    )
    .await;
    let first = analysed_call(&env, analysis.clone()).await;
    env.completed(&first, Duration::from_secs(60)).await;
    let a = analysis_of(&env, &first).await;
    assert_eq!(a["status"], "ok", "{a}");
    assert_eq!(a["data"], good["data"]);
    assert_eq!(a["summary"], good["summary"]);
    assert_eq!(a["success"], true);
    assert_eq!(a["model"], "openai/gpt-oss-20b");
    assert!(a["evaluated_at"].is_string());
    // The structured request as sent: json_schema, the agent's schema inside, strict only
    // when the schema allows it (not here: `needed_by` is optional), the retry told why.
    let structured: Vec<_> = env
        .groq()
        .requests()
        .into_iter()
        .filter(|r| r.body["response_format"]["type"] == "json_schema")
        .collect();
    assert_eq!(structured.len(), 2, "one retry");
    let format = &structured[0].body["response_format"]["json_schema"];
    assert_eq!(format["strict"], false);
    assert_eq!(format["schema"]["properties"]["data"], analysis["schema"]);
    let retry = structured[1].body["messages"].as_array().unwrap();
    let told = retry.last().unwrap()["content"].as_str().unwrap();
    assert!(told.contains("/data/intent: must be one of"), "{told}");
    let transcript = structured[0].body["messages"][1]["content"]
        .as_str()
        .unwrap();
    assert!(
        transcript.contains("Caller: Where is my order A123?"),
        "{transcript}"
    );

    // Never valid: the error is stored, not the data.
    for _ in 0..2 {
        env.groq().push_structured(StructuredAnswer::Raw(
            r#"{"summary": "s", "data": {"intent": "other"}, "success": true, "success_reason": "r"}"#.into(),
        ));
    }
    let second = analysed_call(&env, analysis.clone()).await;
    env.completed(&second, Duration::from_secs(60)).await;
    let b = analysis_of(&env, &second).await;
    assert_eq!(b["status"], "invalid", "{b}");
    assert!(b["data"].is_null() && b["success"].is_null(), "{b}");
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("`order_id` is required"),
        "{b}"
    );

    // Groq down when the job comes due (it waits for the conversation's last records):
    // queued, retried with a backoff, analysed once Groq is back.
    env.groq()
        .push_structured(StructuredAnswer::Json(good.clone()));
    let third = analysed_call(&env, analysis).await;
    env.completed(&third, Duration::from_secs(60)).await;
    env.groq().fail_next(6, 503, None);
    let c = analysis_of(&env, &third).await;
    assert_eq!(c["status"], "ok", "{c}");
    let refused = env
        .groq()
        .requests()
        .iter()
        .filter(|r| r.body["response_format"]["type"] == "json_schema" && r.status == 503)
        .count();
    assert_eq!(refused, 6, "the outage was met and waited out");

    // Filterable by the verdict.
    let successes = env.get("/v1/calls?success=true").await;
    let ids: Vec<&str> = successes["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&first.as_str()) && ids.contains(&third.as_str()),
        "{ids:?}"
    );
    assert!(!ids.contains(&second.as_str()));
    let failures = env.get("/v1/calls?success=false").await;
    assert_eq!(failures["data"], json!([]));
    // One call.analyzed event per call, never two.
    let endpoints = env.get("/v1/webhook-endpoints").await;
    let endpoint = endpoints["data"][0]["id"].as_str().unwrap();
    let deliveries = env
        .get(&format!("/v1/webhook-endpoints/{endpoint}/deliveries"))
        .await;
    let analysed: Vec<&str> = deliveries["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["call_id"].as_str().unwrap())
        .collect();
    assert_eq!(analysed.len(), 3, "{deliveries}");
    for id in [&first, &second, &third] {
        assert_eq!(analysed.iter().filter(|c| **c == id.as_str()).count(), 1);
    }
    // Each call's reply was measured, stage by stage.
    let metrics = format!(
        "http://{}",
        env.running.as_ref().unwrap().metrics_addr.unwrap()
    );
    for stage in [
        "stt",
        "holdoff",
        "llm_first_token",
        "tts_first_audio",
        "engine",
        "total",
    ] {
        let name = format!("iace_turn_latency_seconds_count{{stage=\"{stage}\"}}");
        let v = common::metrics::series(&metrics, &name).await;
        assert!(v >= 3.0, "{name}: {v}");
    }
    env.shutdown().await;
}

/// The trace of one conversing call, as the server really exports it (OTLP/HTTP protobuf to a
/// collector in the test): its root span (trace id = the call id), three turns under it, each
/// with its stages and its model request, the vendor handshakes and carrier commands as client
/// spans of the call, and the same trace on the requests the vendors' fakes received
/// (`traceparent` naming those spans, `x-request-id`). The API request that created the call
/// continues the caller's `traceparent` and links to the call's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversing_call_is_one_trace_with_its_turns_stages_and_vendor_requests() {
    use common::otlp::{Collector, Received};
    use std::collections::HashSet;

    static EXPORT: tokio::sync::OnceCell<(Collector, iace::telemetry::Telemetry)> =
        tokio::sync::OnceCell::const_new();
    let (collector, _) = EXPORT
        .get_or_init(|| async {
            let collector = Collector::start().await;
            let telemetry = iace::telemetry::install(
                &collector.endpoint,
                1.0,
                iace::telemetry::ExportConfig {
                    delay: Duration::from_millis(100),
                    ..iace::telemetry::ExportConfig::default()
                },
            )
            .expect("exporter");
            (collector, telemetry)
        })
        .await;

    let env = Env::start().await;
    env.converse(
        &[
            "Hi, I'm calling about my order.",
            "It is order A123.",
            "Thanks, that's all.",
        ],
        &[
            "Sure, what is the order number?",
            "Order A123 arrives on Thursday.",
            "You're welcome, goodbye.",
        ],
        Duration::from_millis(1000),
    );
    let agent = env
        .post(
            "/v1/agents",
            json!({"name": "Ava", "persona_config": {"greeting": "Hi, this is Ava."}}),
            StatusCode::CREATED,
        )
        .await;
    // The API request carries the caller's own trace.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let created = reqwest::Client::new()
        .post(format!("{}/v1/calls", env.base))
        .bearer_auth(&env.key)
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&json!({"to": CALLEE, "from": "+14155550199", "agent_id": agent["id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let call_id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, t) = env.completed(&call_id, Duration::from_secs(90)).await;
    assert_eq!(t["latency"].as_array().map(Vec::len), Some(3), "{t:#}");
    let trace_id = call_id.replace('-', "");

    // The root is written when the call ends; the rest is exported as it happens.
    let mut spans: Vec<Received> = Vec::new();
    common::wait::wait_within("the call's trace", Duration::from_secs(60), async || {
        spans = collector.trace(&trace_id);
        spans.iter().any(|s| s.name == "call")
            && spans.iter().filter(|s| s.name == "turn").count() >= 3
            && spans.iter().filter(|s| s.name.starts_with("chat ")).count() >= 3
    })
    .await;
    assert_eq!(collector.refused(), 0, "every export was OTLP protobuf");
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let roots: Vec<&Received> = spans.iter().filter(|s| s.name == "call").collect();
    assert_eq!(roots.len(), 1, "{names:?}");
    let root = roots[0];
    assert_eq!(root.parent_id, "", "the root has no parent");
    assert_eq!(root.service, "iace");
    assert_eq!(root.str("iace.call.id"), Some(call_id.as_str()));
    assert_eq!(root.str("iace.call.status"), Some("completed"));
    assert_eq!(root.str("iace.call.direction"), Some("outbound"));
    assert!(root.events.contains(&"answered".to_owned()), "{root:?}");
    assert!(root.end > root.start);
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(ids.len(), spans.len(), "span ids are unique: {names:?}");
    for s in &spans {
        if s.name != "call" {
            assert!(
                ids.contains(s.parent_id.as_str()),
                "{} has a parent in the trace: {s:?}",
                s.name
            );
        }
    }

    // Three turns under the root, each with its stages and its model request.
    let mut turns: Vec<&Received> = spans.iter().filter(|s| s.name == "turn").collect();
    turns.sort_by_key(|s| s.int("iace.turn"));
    assert_eq!(turns.len(), 3, "{names:?}");
    assert_eq!(
        turns.iter().map(|s| s.int("iace.turn")).collect::<Vec<_>>(),
        [Some(1), Some(2), Some(3)]
    );
    for turn in &turns {
        assert_eq!(turn.parent_id, root.span_id);
        assert!(root.start <= turn.start && turn.end <= root.end, "{turn:?}");
        let children: Vec<&Received> = spans
            .iter()
            .filter(|s| s.parent_id == turn.span_id)
            .collect();
        for stage in [
            "stt",
            "holdoff",
            "llm_first_token",
            "llm_stream",
            "engine",
            "tts_first_audio",
        ] {
            let s = children
                .iter()
                .find(|s| s.name == stage)
                .unwrap_or_else(|| {
                    panic!(
                        "turn {:?} has no {stage}: {children:?}",
                        turn.int("iace.turn")
                    )
                });
            assert!(
                turn.start <= s.start && s.start <= s.end && s.end <= turn.end,
                "{stage} lies within its turn: {s:?} {turn:?}"
            );
        }
        let chat = children
            .iter()
            .find(|s| s.name.starts_with("chat "))
            .unwrap_or_else(|| panic!("no model request in the turn: {children:?}"));
        assert_eq!(chat.kind, 3, "a client span");
        assert_eq!(chat.str("gen_ai.operation.name"), Some("chat"));
        assert_eq!(chat.str("gen_ai.provider.name"), Some("groq"));
        assert!(chat.str("gen_ai.request.model").is_some(), "{chat:?}");
        assert!(
            chat.int("gen_ai.usage.output_tokens").unwrap_or(0) > 0,
            "{chat:?}"
        );
        assert!(chat.has("gen_ai.response.time_to_first_chunk"), "{chat:?}");
        assert_eq!(chat.int("http.response.status_code"), Some(200));
    }

    // Vendor requests of the call: the dial, the speech streams' handshakes, journal writes.
    let client_of = |vendor: &str| -> Vec<&Received> {
        spans
            .iter()
            .filter(|s| s.kind == 3 && s.str("iace.vendor") == Some(vendor))
            .collect()
    };
    let telnyx = client_of("telnyx");
    assert!(
        telnyx
            .iter()
            .any(|s| s.str("iace.telnyx.command") == Some("dial") && s.parent_id == root.span_id),
        "{telnyx:?}"
    );
    for vendor in ["deepgram", "cartesia"] {
        let handshakes = client_of(vendor);
        assert!(!handshakes.is_empty(), "no {vendor} span: {names:?}");
        assert!(handshakes.iter().all(
            |s| s.parent_id == root.span_id && s.int("http.response.status_code") == Some(101)
        ));
    }
    assert!(
        spans
            .iter()
            .any(|s| s.name == "INSERT call_event" && s.str("db.system.name") == Some("postgresql")),
        "{names:?}"
    );

    // What the fakes received carries the call's trace, naming the spans above.
    let span_ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let replies: Vec<_> = env
        .groq()
        .requests()
        .into_iter()
        .filter(|r| r.stream)
        .collect();
    assert_eq!(replies.len(), 3);
    for r in &replies {
        assert_eq!(r.trace.trace_id(), Some(trace_id.as_str()), "{:?}", r.trace);
        assert!(
            span_ids.contains(r.trace.parent_id().unwrap()),
            "{:?}",
            r.trace
        );
        assert!(r.trace.request_id.is_some());
    }
    let deepgram = env.deepgram().connections();
    assert!(!deepgram.is_empty());
    for c in &deepgram {
        assert_eq!(c.trace.trace_id(), Some(trace_id.as_str()), "{:?}", c.trace);
        assert!(span_ids.contains(c.trace.parent_id().unwrap()));
    }
    let cartesia = env.voices.cartesia.connections();
    assert!(!cartesia.is_empty());
    for c in &cartesia {
        assert_eq!(c.trace.trace_id(), Some(trace_id.as_str()), "{:?}", c.trace);
    }
    let commands = env.telnyx.commands();
    assert!(commands.iter().any(|c| c.action == "dial"));
    for c in &commands {
        assert_eq!(c.trace.trace_id(), Some(trace_id.as_str()), "{c:?}");
        assert!(span_ids.contains(c.trace.parent_id().unwrap()), "{c:?}");
    }

    // The API request continued the caller's trace and links to the call's.
    let caller = collector.trace(caller_trace);
    let create = caller
        .iter()
        .find(|s| s.name == "POST /v1/calls")
        .unwrap_or_else(|| panic!("{caller:?}"));
    assert_eq!(create.parent_id, caller_span);
    assert_eq!(create.kind, 2, "a server span");
    assert_eq!(create.int("http.response.status_code"), Some(201));
    assert!(
        create
            .links
            .iter()
            .any(|(t, s)| t == &trace_id && s == &root.span_id),
        "{create:?}"
    );
    env.shutdown().await;
}
