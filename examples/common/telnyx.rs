//! The real server on the Telnyx adapter against the fake Telnyx, with an organization and an
//! agent: the start of the webhook benchmarks.
#![allow(dead_code)]

use std::time::Duration;

use iace::config::{ServeArgs, TelephonyKind, TelnyxArgs};
use iace_fakes::telnyx::{FakeTelnyx, FakeTelnyxConfig, Scenario};

/// How the pair is set up.
pub struct Setup {
    /// Seed of the fake's Ed25519 webhook signing key.
    pub signing_seed: [u8; 32],
    /// How the fake's legs ring and talk.
    pub ring: Duration,
    /// See `ring`.
    pub talk: Duration,
    /// `TELNYX_AMD`.
    pub amd: &'static str,
    /// `IACE_MEDIA_ECHO`.
    pub media_echo: bool,
    /// `IACE_NODE_ID`.
    pub node_id: String,
    /// `IACE_JOURNAL_WRITERS`.
    pub journal_writers: u16,
}

/// The running pair.
pub struct Bench {
    pub fake: FakeTelnyx,
    pub running: iace::app::Running,
    /// The server's base URL.
    pub public: String,
    /// The organization's API key.
    pub key: String,
    /// The agent's id.
    pub agent_id: String,
    pub http: reqwest::Client,
}

/// Starts the fake and the server on `database_url`, and makes an organization and an agent.
pub async fn start(database_url: &str, redis_url: &str, setup: Setup) -> anyhow::Result<Bench> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let public = format!("http://127.0.0.1:{port}");
    let fake = FakeTelnyx::start(FakeTelnyxConfig {
        api_key: "bench-key".into(),
        connection_id: "bench-connection".into(),
        signing_seed: setup.signing_seed,
        inbound_webhook_url: Some(format!("{public}/v1/webhooks/telnyx")),
        default_scenario: Scenario::Answer {
            ring: setup.ring,
            talk: Some(setup.talk),
        },
        ..FakeTelnyxConfig::default()
    })
    .await?;
    let running = iace::app::start(ServeArgs {
        telephony: TelephonyKind::Telnyx,
        telnyx: TelnyxArgs {
            telnyx_api_key: Some("bench-key".into()),
            telnyx_connection_id: Some("bench-connection".into()),
            telnyx_public_key: Some(fake.public_key_base64()),
            telnyx_api_base: fake.api_base(),
            telnyx_amd: setup.amd.into(),
            telnyx_webhook_tolerance_secs: 300,
            public_url: Some(public.clone()),
            media_secret: Some("bench".into()),
            media_greeting: false,
            media_echo: setup.media_echo,
        },
        sim_ring_ms: 0,
        sim_talk_ms: 0,
        sim_key_prefix: "unused:".into(),
        node_id: Some(setup.node_id),
        journal_writers: setup.journal_writers,
        ..ServeArgs::local(
            database_url,
            redis_url,
            format!("127.0.0.1:{port}").parse()?,
        )
    })
    .await?;
    let (_, key) = iace::app::create_org(database_url, "Bench").await?;
    let http = reqwest::Client::new();
    let agent: serde_json::Value = http
        .post(format!("{public}/v1/agents"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"name": "Bench agent"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let agent_id = agent["id"].as_str().unwrap_or_default().to_owned();
    Ok(Bench {
        fake,
        running,
        public,
        key,
        agent_id,
        http,
    })
}
