//! The demo of the dev world: the demo agent, the scripted demo caller that converses with it
//! until it ends the call, the demo calls, and the ready-to-paste `curl` commands.

use std::time::Duration;

use anyhow::{bail, Context};
use iace_fakes::telnyx::{FakeTelnyx, Scenario};

use crate::voices::FakeVoices;

/// The fake voice vendors of the dev world, the demo caller's lines scripted.
pub(crate) async fn dev_voices() -> anyhow::Result<FakeVoices> {
    let voices =
        FakeVoices::start(Default::default(), Default::default(), Default::default()).await?;
    // What the demo caller says, one line per burst of speech.
    voices.deepgram.set_script(DEMO_CALLER_LINES);
    eprintln!(
        "[dev] fake Deepgram {}, fake Cartesia ws://{}, fake Groq {}",
        voices.deepgram.url(),
        voices.cartesia.addr(),
        voices.groq.base_url()
    );
    Ok(voices)
}

/// The demo caller's lines (the fake Groq answers "goodbye" with the `end_call` tool).
const DEMO_CALLER_LINES: [&str; 3] = [
    "Hi, I'd like to check on my order.",
    "It's order number 4512.",
    "Great, thanks. That's all, goodbye.",
];

/// The demo caller: waits for the greeting, says each line after the agent's answer.
fn demo_caller_script() -> iace_fakes::telnyx::CallerScript {
    let wait = Duration::from_secs(20);
    let quiet = Duration::from_millis(600);
    let mut script = iace_fakes::telnyx::CallerScript::new()
        .wait_for_agent_audio(wait)
        .wait_for_agent_silence(quiet, wait);
    for _ in DEMO_CALLER_LINES {
        script = script
            .say(Duration::from_millis(1400))
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(quiet, wait);
    }
    // The agent ends the call after the goodbye; hang up ourselves if it does not.
    script.silence(Duration::from_secs(15)).hangup()
}

/// The number the dev organization's demo agent answers.
const DEMO_NUMBER: &str = "+14155550123";

/// Creates (or reuses) a demo agent, optionally places a demo call (and, with the fake
/// Telnyx, takes a demo inbound call), prints ready-to-paste curls.
pub(crate) async fn demo(
    base: &str,
    key: &str,
    place_call: bool,
    fake: Option<&FakeTelnyx>,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let auth = format!("Bearer {key}");
    let agents: serde_json::Value = http
        .get(format!("{base}/v1/agents?limit=100"))
        .header("authorization", &auth)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let existing = agents["data"].as_array().and_then(|a| {
        a.iter()
            .find(|a| {
                a["name"] == "Demo agent" && a["status"] == "active" && a["agent_type"] == "both"
            })
            .and_then(|a| a["id"].as_str().map(str::to_owned))
    });
    let agent_id = match existing {
        Some(id) => id,
        None => {
            let agent: serde_json::Value = http
                .post(format!("{base}/v1/agents"))
                .header("authorization", &auth)
                .json(&serde_json::json!({
                    "name": "Demo agent",
                    "agent_type": "both",
                    "persona_config": {
                        "system_prompt": "You are a friendly renewals assistant. Answer in one or two short spoken sentences.",
                        "greeting": "Hi, this is the Acme renewals assistant. How can I help?"
                    },
                    "voice_config": {"voice_id": "demo"}
                }))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            agent["id"].as_str().context("agent id")?.to_owned()
        }
    };
    let body = format!(
        r#"{{"to":"+14155550100","from":"+14155550199","agent_id":"{agent_id}","metadata":{{"demo":true}}}}"#
    );
    if let Some(fake) = fake {
        // The scripted demo caller talks until the agent ends the call.
        fake.set_scenario(
            "+14155550100",
            Scenario::Answer {
                ring: Duration::from_secs(1),
                talk: None,
            },
        );
        fake.set_caller_script("+14155550100", demo_caller_script());
    }
    if place_call {
        let call: serde_json::Value = http
            .post(format!("{base}/v1/calls"))
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = call["id"].as_str().unwrap_or_default();
        eprintln!("\n[dev] demo call {id} placed; watch it progress:");
        eprintln!("  curl -s -H 'Authorization: Bearer {key}' {base}/v1/calls/{id}");
        eprintln!("  curl -s -H 'Authorization: Bearer {key}' {base}/v1/calls/{id}/events");
        eprintln!("  curl -s -H 'Authorization: Bearer {key}' {base}/v1/calls/{id}/transcript");
    }
    if let Some(fake) = fake {
        // The demo agent answers DEMO_NUMBER (409: assigned on an earlier run).
        let assigned = http
            .post(format!("{base}/v1/phone-numbers"))
            .header("authorization", &auth)
            .json(&serde_json::json!({"number": DEMO_NUMBER, "agent_id": agent_id}))
            .send()
            .await?;
        if !assigned.status().is_success() && assigned.status() != reqwest::StatusCode::CONFLICT {
            bail!("assigning {DEMO_NUMBER}: {}", assigned.text().await?);
        }
        if place_call {
            let leg = fake
                .place_inbound_call(
                    "+14155550111",
                    DEMO_NUMBER,
                    Scenario::Answer {
                        ring: Duration::from_secs(30),
                        talk: Some(Duration::from_secs(6)),
                    },
                )
                .await;
            eprintln!(
                "[dev] fake Telnyx: +14155550111 is calling {DEMO_NUMBER} (leg {leg}); list calls:"
            );
            eprintln!("  curl -s -H 'Authorization: Bearer {key}' {base}/v1/calls");
        }
    }
    eprintln!("\n[dev] ready. Place a call:");
    eprintln!(
        "  curl -s -X POST {base}/v1/calls -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' -d '{body}'"
    );
    eprintln!("[dev] API key: {key}  (also in .services/dev-org.json)");
    eprintln!(
        "[dev] operator API: curl -s -H 'Authorization: Bearer {DEV_ADMIN_TOKEN}' {base}/v1/admin/breakers\n"
    );
    Ok(())
}

/// The operator token of the dev world (`/v1/admin/*`).
pub(crate) const DEV_ADMIN_TOKEN: &str = "dev-admin-token";
