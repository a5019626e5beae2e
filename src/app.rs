//! Process wiring: builds the ports (Postgres, Redis, carrier), starts the engine and the HTTP
//! server, and implements the CLI sub-commands.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use iace_actors::catalog::Organization;
use iace_actors::engine::{Engine, EngineConfig};
use iace_actors::ports::{Clock, IdGen, InboxItem, Ports, QueryStore};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::config::{DevArgs, ServeArgs, TelephonyKind};
use crate::http::{AppState, ReadyCheck};
use crate::store::PgStore;
use crate::telephony::simulated::{SimConfig, SimulatedCarrier};

/// Wall clock of production.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Random (v4) ids.
pub struct RandomIds;

impl IdGen for RandomIds {
    fn next_id(&self) -> Uuid {
        Uuid::new_v4()
    }
}

/// `/ready` check of Redis.
struct RedisReady(fred::clients::Client);

#[async_trait]
impl ReadyCheck for RedisReady {
    fn name(&self) -> &'static str {
        "redis"
    }
    async fn check(&self) -> Result<(), String> {
        crate::redis::ping(&self.0).await
    }
}

/// A running server.
pub struct Running {
    /// The engine handle.
    pub engine: Engine,
    /// Where the API listens.
    pub addr: SocketAddr,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Running {
    /// Serves until SIGINT/SIGTERM (or the server fails), then shuts down gracefully.
    pub async fn wait(self) -> anyhow::Result<()> {
        let Running {
            engine,
            server,
            stop,
            ..
        } = self;
        let mut server = server;
        tokio::select! {
            _ = shutdown_signal() => {
                info!("shutting down");
                let _ = stop.send(true);
                match tokio::time::timeout(Duration::from_secs(10), &mut server).await {
                    Ok(r) => r.context("server task")?.context("http server")?,
                    Err(_) => warn!("http server did not drain within 10 s"),
                }
            }
            r = &mut server => {
                r.context("server task")?.context("http server")?;
            }
        }
        engine.shutdown().await;
        Ok(())
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Connects everything, migrates, starts the engine (recovering live calls) and the server.
pub async fn start(args: ServeArgs) -> anyhow::Result<Running> {
    let pool = crate::store::connect(&args.db.database_url)
        .await
        .context("connecting to Postgres (DATABASE_URL)")?;
    crate::store::migrate(&pool)
        .await
        .context("applying migrations")?;
    let redis = crate::redis::connect(&args.redis_url)
        .await
        .context("connecting to Redis (REDIS_URL)")?;
    let store = Arc::new(PgStore::new(pool));

    let (events_tx, events_rx) = mpsc::unbounded_channel::<InboxItem>();
    let carrier = match args.telephony {
        TelephonyKind::Simulated => Arc::new(SimulatedCarrier::new(
            redis.clone(),
            SimConfig {
                ring_ms: args.sim_ring_ms,
                talk_ms: args.sim_talk_ms,
                key_prefix: args.sim_key_prefix.clone(),
            },
            events_tx,
        )),
    };
    let ports = Ports {
        calls: store.clone(),
        queries: store,
        telephony: carrier.clone(),
        clock: Arc::new(SystemClock),
        ids: Arc::new(RandomIds),
    };
    let config = EngineConfig {
        node_id: args.node_id.clone().unwrap_or_else(default_node_id),
        ring_timeout_secs: args.ring_timeout_secs,
        max_duration_secs: args.max_call_secs,
        ..EngineConfig::default()
    };
    let registry = prometheus::Registry::new();
    let engine = Engine::start(ports, config, &registry)
        .await
        .context("starting the engine")?;
    tokio::spawn(forward_carrier_events(engine.clone(), events_rx));
    carrier
        .resume()
        .await
        .context("resuming simulated carrier legs")?;

    let state = AppState {
        engine: engine.clone(),
        registry,
        ready_checks: vec![Arc::new(RedisReady(redis))],
    };
    let router = crate::http::router(state).context("building the router")?;
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("binding {}", args.bind))?;
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
    });
    info!(%addr, telephony = ?args.telephony, "iace listening");
    Ok(Running {
        engine,
        addr,
        server,
        stop,
    })
}

/// Feeds carrier events into the engine's inbox, retrying until each one is stored.
async fn forward_carrier_events(engine: Engine, mut rx: mpsc::UnboundedReceiver<InboxItem>) {
    while let Some(item) = rx.recv().await {
        let mut delay = Duration::from_millis(100);
        loop {
            match engine.ingest_carrier_event(item.clone()).await {
                Ok(_) => break,
                Err(e) => {
                    warn!(call_id = %item.call_id, event_id = %item.event_id, error = %e, "storing carrier event failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

fn default_node_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("iace-{}", std::process::id()))
}

/// `iace migrate`.
pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
    let pool = crate::store::connect(database_url)
        .await
        .context("connecting to Postgres (DATABASE_URL)")?;
    crate::store::migrate(&pool)
        .await
        .context("applying migrations")?;
    info!("migrations applied");
    Ok(())
}

/// A new API key: `iace_` + 64 hex characters (256 random bits).
pub fn generate_api_key() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("iace_{}", hex::encode(bytes))
}

/// SHA-256 hex of an API key: the only form stored.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// `iace org create <name>`: returns the organization and its API key.
pub async fn create_org(database_url: &str, name: &str) -> anyhow::Result<(Organization, String)> {
    let pool = crate::store::connect(database_url)
        .await
        .context("connecting to Postgres (DATABASE_URL)")?;
    crate::store::migrate(&pool)
        .await
        .context("applying migrations")?;
    let store = PgStore::new(pool);
    let name = iace_actors::catalog::validate_name("name", name)?;
    let org = Organization {
        id: Uuid::new_v4(),
        name,
        created_at: chrono::SubsecRound::trunc_subsecs(Utc::now(), 6),
    };
    let key = generate_api_key();
    store
        .create_organization(&org, Uuid::new_v4(), &hash_api_key(&key), &key[..13])
        .await
        .map_err(|e| anyhow::anyhow!("creating the organization: {e}"))?;
    Ok((org, key))
}

/// `iace dev`.
pub async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let script = Path::new("scripts/services");
    if !script.exists() {
        bail!("run `iace dev` from the repository root (scripts/services not found)");
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

    let running = start(ServeArgs {
        db: crate::config::DbArgs {
            database_url: database_url.clone(),
        },
        redis_url,
        bind: args.bind,
        telephony: TelephonyKind::Simulated,
        sim_ring_ms: args.sim_ring_ms,
        sim_talk_ms: args.sim_talk_ms,
        sim_key_prefix: "iace:sim:".into(),
        node_id: Some("iace-dev".into()),
        ring_timeout_secs: 30,
        max_call_secs: 3600,
    })
    .await?;
    let base = format!("http://{}", running.addr);
    let key = dev_api_key(&database_url, &running.engine).await?;
    if let Err(e) = demo(&base, &key, !args.no_demo_call).await {
        error!(error = %e, "demo setup failed");
    }
    running.wait().await
}

/// The dev organization's key, kept in `.services/dev-org.json` so restarts reuse it.
async fn dev_api_key(database_url: &str, engine: &Engine) -> anyhow::Result<String> {
    let path = Path::new(".services/dev-org.json");
    if let Ok(raw) = std::fs::read_to_string(path) {
        if let Some(key) = serde_json::from_str::<serde_json::Value>(&raw)
            .ok()
            .and_then(|v| v["api_key"].as_str().map(str::to_owned))
        {
            if engine.authenticate(hash_api_key(&key)).await?.is_some() {
                return Ok(key);
            }
        }
    }
    let (org, key) = create_org(database_url, "Dev organization").await?;
    let line = serde_json::json!({"organization_id": org.id, "api_key": key});
    std::fs::create_dir_all(".services")?;
    std::fs::write(path, line.to_string())?;
    Ok(key)
}

/// Creates (or reuses) a demo agent, optionally places a demo call, prints ready-to-paste curls.
async fn demo(base: &str, key: &str, place_call: bool) -> anyhow::Result<()> {
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
            .find(|a| a["name"] == "Demo agent" && a["status"] == "active")
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
                    "persona_config": {"prompt": "You are a friendly renewals assistant."},
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
    }
    eprintln!("\n[dev] ready. Place a call:");
    eprintln!(
        "  curl -s -X POST {base}/v1/calls -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' -d '{body}'"
    );
    eprintln!("[dev] API key: {key}  (also in .services/dev-org.json)\n");
    Ok(())
}
