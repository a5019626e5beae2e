//! The voice pipeline end to end: an in-process server with the real Telnyx, Deepgram,
//! Cartesia and Groq clients against their wire-level fakes (`iace_sim`), real Postgres and
//! real Redis, real sockets and real time. The fake carrier plays a scripted caller; the fake
//! Deepgram turns each burst of the caller's speech into the next line of its script.
//! Requires `DATABASE_URL` and `REDIS_URL` (`eval "$(scripts/services env)"`).

mod common;

use std::time::{Duration, Instant};

use iace::app::Running;
use iace::config::{DbArgs, ServeArgs, TelephonyKind, TelnyxArgs, VoiceArgs};
use iace_sim::cartesia::{FakeCartesia, FakeCartesiaConfig};
use iace_sim::deepgram::{FakeDeepgram, FakeDeepgramConfig};
use iace_sim::groq::{FakeGroq, FakeGroqConfig, Reply};
use iace_sim::telnyx::{CallerScript, FakeTelnyx, FakeTelnyxConfig, Scenario};
use reqwest::StatusCode;
use serde_json::{json, Value};

const CALLEE: &str = "+14155550142";
const HUMAN: &str = "+14155550177";

struct Env {
    telnyx: FakeTelnyx,
    deepgram: FakeDeepgram,
    cartesia: FakeCartesia,
    groq: FakeGroq,
    running: Option<Running>,
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Env {
    async fn start() -> Env {
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
        let deepgram = FakeDeepgram::start(FakeDeepgramConfig::default())
            .await
            .expect("fake deepgram");
        let cartesia = FakeCartesia::start(FakeCartesiaConfig::default())
            .await
            .expect("fake cartesia");
        let groq = FakeGroq::start(FakeGroqConfig::default())
            .await
            .expect("fake groq");
        let running = iace::app::start(ServeArgs {
            db: DbArgs {
                database_url: database_url.clone(),
            },
            redis_url: std::env::var("REDIS_URL").expect("REDIS_URL"),
            bind: format!("127.0.0.1:{port}").parse().unwrap(),
            telephony: TelephonyKind::Telnyx,
            telnyx: TelnyxArgs {
                telnyx_api_key: Some("k-test".into()),
                telnyx_connection_id: Some("conn-test".into()),
                telnyx_public_key: Some(telnyx.public_key_base64()),
                telnyx_api_base: telnyx.api_base(),
                telnyx_amd: "disabled".into(),
                telnyx_webhook_tolerance_secs: 300,
                public_url: Some(base.clone()),
                media_secret: Some("voice-test-secret".into()),
                media_greeting: false,
                media_echo: false,
            },
            breakers: Default::default(),
            voice: VoiceArgs {
                enabled: true,
                deepgram_api_key: Some(deepgram.api_key().to_owned()),
                deepgram_url: deepgram.url(),
                cartesia_api_key: Some(cartesia.api_key().to_owned()),
                cartesia_url: format!("ws://{}", cartesia.addr()),
                groq_api_key: Some(groq.api_key().to_owned()),
                groq_api_base: groq.base_url(),
                groq_model: "llama-3.3-70b-versatile".into(),
                groq_classify_model: "llama-3.1-8b-instant".into(),
            },
            admin_token: None,
            sim_ring_ms: 0,
            sim_talk_ms: 0,
            sim_key_prefix: "unused:".into(),
            node_id: Some("voice-test".into()),
            ring_timeout_secs: 30,
            max_call_secs: 600,
        })
        .await
        .expect("server");
        let (_, key) = iace::app::create_org(&database_url, "Voice test")
            .await
            .expect("org");
        Env {
            telnyx,
            deepgram,
            cartesia,
            groq,
            running: Some(running),
            base,
            key,
            http: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, body: Value, expect: StatusCode) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, expect, "POST {path}: {body}");
        body
    }

    async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        r.json().await.unwrap()
    }

    async fn wait_ended(&self, call_id: &str, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let call = self.get(&format!("/v1/calls/{call_id}")).await;
            let status = call["status"].as_str().unwrap_or_default().to_owned();
            if ["completed", "failed", "canceled"].contains(&status.as_str()) {
                return call;
            }
            assert!(
                start.elapsed() < timeout,
                "call still {status} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        self.telnyx.shutdown().await;
        self.deepgram.shutdown().await;
        self.cartesia.shutdown().await;
        self.groq.shutdown().await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    env.deepgram.set_script([
        "Hi, I'm calling about my internet bill.",
        "I was charged twice this month.",
        "Stop, this is ridiculous, I am furious.",
        "This is terrible, I am still angry.",
    ]);
    env.groq.push_reply(Reply::text(
        "Sure, I can help with your bill. What seems to be the problem?",
    ));
    env.groq.push_reply(Reply::text(
        "I understand. Let me walk you through how our billing cycle works, because it can be \
         confusing. Every month we issue an invoice on the first day, and any change to your \
         plan is prorated across the next two cycles, which sometimes looks like a double charge.",
    ));
    env.groq.push_reply(Reply::text(
        "I'm so sorry about this. I will fix the double charge right away.",
    ));
    env.groq
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
    let requests = env.groq.requests();
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
    env.shutdown().await;
}
