//! The dev world: local Postgres and Redis (`scripts/services up`), the wire-level fakes of every
//! vendor, and the real server wired to them, as `iace serve` would be to the real vendors.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use iace::config::{ServeArgs, TelephonyKind, TelnyxArgs};
use iace_fakes::telnyx::{FakeTelnyx, FakeTelnyxConfig, Scenario};
use tracing::error;

use crate::accounts::{dev_api_key, dev_user};
use crate::demo::{demo, dev_voices, DEV_ADMIN_TOKEN};
use crate::voices::FakeVoices;

/// The dev world's settings (`iace-dev --help`).
#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Listen address.
    #[arg(long, env = "IACE_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Simulated ring time (ms).
    #[arg(long, env = "IACE_SIM_RING_MS", default_value_t = 2000)]
    pub sim_ring_ms: u64,
    /// Simulated talk time (ms).
    #[arg(long, env = "IACE_SIM_TALK_MS", default_value_t = 8000)]
    pub sim_talk_ms: u64,
    /// Do not place the demo calls.
    #[arg(long)]
    pub no_demo_call: bool,
    /// Carrier: `telnyx` runs the real Telnyx client against the built-in fake Telnyx (wire
    /// protocol, signed webhooks, media streams); `simulated` uses the Redis-backed simulator.
    #[arg(long, env = "IACE_TELEPHONY", value_enum, default_value_t = TelephonyKind::Telnyx)]
    pub telephony: TelephonyKind,
}

/// Starts the dev world and serves until SIGINT/SIGTERM.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let script = Path::new("scripts/services");
    if !script.exists() {
        bail!("run `iace-dev` from the repository root (scripts/services not found)");
    }
    eprintln!("[dev] starting local Postgres (pgvector) and Redis: scripts/services up");
    let out = tokio::process::Command::new(script)
        .arg("up")
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .context("running scripts/services up")?;
    if !out.status.success() {
        bail!("scripts/services up failed ({})", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let var = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_owned))
            .with_context(|| format!("scripts/services up did not print {name}"))
    };
    let database_url = var("DATABASE_URL")?;
    let redis_url = var("REDIS_URL")?;

    // Telnyx in dev: the real client, webhook verifier and media endpoint, against the
    // built-in fake Telnyx (same wire protocol, its own signing key).
    let public_url = format!("http://{}", args.bind);
    let fake = match args.telephony {
        TelephonyKind::Telnyx => {
            use rand::RngCore as _;
            let mut seed = [0u8; 32];
            rand::rng().fill_bytes(&mut seed);
            let fake = FakeTelnyx::start(FakeTelnyxConfig {
                api_key: "dev-telnyx-key".into(),
                connection_id: "dev-connection".into(),
                signing_seed: seed,
                inbound_webhook_url: Some(format!("{public_url}/v1/webhooks/telnyx")),
                default_scenario: Scenario::Answer {
                    ring: Duration::from_millis(args.sim_ring_ms),
                    talk: Some(Duration::from_millis(args.sim_talk_ms)),
                },
                ..FakeTelnyxConfig::default()
            })
            .await
            .context("starting the fake Telnyx")?;
            eprintln!("[dev] fake Telnyx listening at {}", fake.api_base());
            Some(fake)
        }
        TelephonyKind::Simulated => None,
    };
    // The voice pipeline in dev: the real Deepgram, Cartesia and Groq clients against their
    // built-in fakes, so answered calls converse (the fake carrier plays a scripted caller).
    let voices = match &fake {
        Some(_) => Some(dev_voices().await?),
        None => None,
    };
    let google = iace_fakes::google::FakeGoogle::start(Default::default())
        .await
        .context("starting the fake Google embeddings")?;
    eprintln!("[dev] fake Google embeddings {}", google.base_url());
    let telnyx = match &fake {
        Some(fake) => TelnyxArgs {
            telnyx_api_key: Some("dev-telnyx-key".into()),
            telnyx_connection_id: Some("dev-connection".into()),
            telnyx_public_key: Some(fake.public_key_base64()),
            telnyx_api_base: fake.api_base(),
            telnyx_amd: "detect".into(),
            telnyx_webhook_tolerance_secs: 300,
            public_url: Some(public_url.clone()),
            media_secret: None,
            // The conversation owns the audio: no chime, no echo.
            media_greeting: false,
            media_echo: false,
        },
        None => TelnyxArgs::default(),
    };
    let voice = voices.as_ref().map(FakeVoices::args).unwrap_or_default();
    let running = iace::app::start(ServeArgs {
        db: iace::config::DbArgs::new(&database_url),
        redis_url,
        bind: args.bind,
        telephony: args.telephony,
        telnyx,
        breakers: Default::default(),
        voice,
        // No embedding key in dev: the local embedder keeps learning working offline.
        // Learning embeds through the real Google client against the fake.
        learning: iace::config::LearningArgs {
            enabled: true,
            google_api_key: Some(google.api_key().to_owned()),
            google_api_base: google.base_url(),
            ..Default::default()
        },
        // Sign-in works in dev with a secret made for this run; plan limits are on.
        security: iace::config::SecurityArgs {
            jwt_secret: Some(iace::auth::generate_password() + &iace::auth::generate_password()),
            plan_limits: true,
            ..Default::default()
        },
        edge: Default::default(),
        cluster: Default::default(),
        admin_token: Some(DEV_ADMIN_TOKEN.into()),
        sim_ring_ms: args.sim_ring_ms,
        sim_talk_ms: args.sim_talk_ms,
        sim_key_prefix: "iace:sim:".into(),
        node_id: Some("iace-dev".into()),
        ring_timeout_secs: 30,
        max_call_secs: 3600,
        journal_writers: 4,
        max_live_calls: None,
        unready_at_capacity: false,
        // The dev world's receivers run on this machine.
        allow_private_urls: true,
        webhook_retry_schedule: Vec::new(),
        webhook_timeout_secs: 15,
    })
    .await?;
    let base = format!("http://{}", running.addr);
    let key = dev_api_key(&database_url, &running.engine).await?;
    if let Err(e) = dev_user(&database_url, &base, &running.engine, &key).await {
        error!(error = %e, "dev user setup failed");
    }
    if let Err(e) = demo(&base, &key, !args.no_demo_call, fake.as_ref()).await {
        error!(error = %e, "demo setup failed");
    }
    let result = running.wait().await;
    if let Some(fake) = fake {
        fake.shutdown().await;
    }
    if let Some(voices) = voices {
        voices.shutdown().await;
    }
    google.shutdown().await;
    result
}
