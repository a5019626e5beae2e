//! Process wiring: builds the ports (Postgres, Redis, carrier), starts the engine and the HTTP
//! server, and implements the CLI sub-commands.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use iace_actors::accounts::{AccountStore, Role, User};
use iace_actors::breaker::Breakers;
use iace_actors::catalog::Organization;
use iace_actors::engine::{Engine, EngineConfig};
use iace_actors::machine::MediaReport;
use iace_actors::ports::{Clock, IdGen, InboxItem, Ports, QueryStore, Telephony};
use tokio::sync::mpsc;
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::auth::jwt::{Key, KeyRing};
use crate::auth::Security;
use crate::clients::retry::RetryPolicy;
use crate::clients::telnyx::{TelnyxClient, TelnyxConfig, TelnyxMetrics, WebhookVerifier};
use crate::config::{DevArgs, FailModeArg, SecurityArgs, ServeArgs, TelephonyKind, TelnyxArgs};
use crate::http::webhooks::{TelnyxIngress, WebhookMetrics};
use crate::http::{AppState, ReadyCheck};
use crate::media::{
    MediaConfig, MediaMetrics, MediaRegistry, MediaSink, MediaState, MediaStats, MediaTokens,
    StreamInfo,
};
use crate::ratelimit::{FailMode, RateLimiter};
use crate::store::PgStore;
use crate::telephony::simulated::{SimConfig, SimulatedCarrier};
use iace_actors::learning::actor::{
    LearningConfig, LearningPorts, LearningSupervisor, LearningSupervisorMsg,
};
use iace_actors::learning::recall::Recall;
use iace_actors::learning::LocalEmbedder;
use iace_actors::ports::learning::Embedder;
use iace_sim::telnyx::{FakeTelnyx, FakeTelnyxConfig, Scenario};
use ractor::ActorRef;

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

/// The embedder of learning and recall: Google (through the `google` breaker) when a key is
/// configured, else the local deterministic one.
fn embedder(
    args: &crate::config::LearningArgs,
    breakers: &iace_actors::breaker::Breakers,
    registry: &prometheus::Registry,
) -> anyhow::Result<Arc<dyn Embedder>> {
    use crate::clients::google::{GoogleConfig, GoogleEmbedder, GoogleMetrics, VENDOR};
    match args.google_api_key.as_deref().filter(|k| !k.is_empty()) {
        Some(key) => {
            let mut config = GoogleConfig::new(key);
            config.api_base = args.google_api_base.trim_end_matches('/').to_owned();
            config.model = args.embedding_model.clone();
            config.breaker = breakers.get(VENDOR).cloned();
            let google = GoogleEmbedder::new(config, Some(GoogleMetrics::new(registry)?))
                .context("configuring the Google embedder")?;
            Ok(Arc::new(google))
        }
        None => Ok(Arc::new(LocalEmbedder)),
    }
}

/// Starts the learning worker of this node: it works the queue while it holds the
/// deployment-wide lease, and stands by otherwise.
async fn start_learning(
    store: Arc<PgStore>,
    embedder: Arc<dyn Embedder>,
    node_id: &str,
) -> anyhow::Result<ActorRef<LearningSupervisorMsg>> {
    info!(model = embedder.model(), "learning from completed calls");
    let ports = LearningPorts {
        calls: store.clone(),
        queries: store.clone(),
        store,
        embedder,
        clock: Arc::new(SystemClock),
        ids: Arc::new(RandomIds),
    };
    let config = LearningConfig {
        node_id: node_id.to_owned(),
        ..LearningConfig::default()
    };
    let (sup, _) = ractor::Actor::spawn(None, LearningSupervisor, (ports, config))
        .await
        .context("starting the learning worker")?;
    Ok(sup)
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
    /// Where `/metrics` and the detailed `/ready` are served (`None`: disabled).
    pub metrics_addr: Option<SocketAddr>,
    /// The HTTP edge (open connections, draining).
    pub edge: Arc<crate::edge::Edge>,
    drain: Duration,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    learning: Option<ActorRef<LearningSupervisorMsg>>,
}

impl Running {
    /// Serves until SIGINT/SIGTERM (or the server fails), then shuts down gracefully.
    pub async fn wait(self) -> anyhow::Result<()> {
        let Running {
            engine,
            server,
            stop,
            learning,
            edge,
            drain,
            ..
        } = self;
        let mut server = server;
        tokio::select! {
            _ = shutdown_signal() => {
                edge.start_draining();
                if !drain.is_zero() {
                    // Still serving, not ready: load balancers take the node out first.
                    info!(drain_secs = drain.as_secs(), "draining before shutdown");
                    tokio::select! {
                        _ = tokio::time::sleep(drain) => {}
                        _ = shutdown_signal() => {}
                    }
                }
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
        if let Some(l) = learning {
            l.stop(None);
        }
        engine.shutdown().await;
        engine.breakers().stop();
        Ok(())
    }
}

impl Running {
    /// Stops serving (in-flight requests drain) and shuts the engine down.
    pub async fn shutdown(self) {
        self.edge.start_draining();
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.server).await;
        if let Some(l) = self.learning {
            l.stop(None);
        }
        self.engine.shutdown().await;
        self.engine.breakers().stop();
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
    let nofile = crate::edge::raise_nofile_limit();
    let metrics_bind = args.edge.metrics_addr().map_err(|e| anyhow::anyhow!(e))?;
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
    let registry = prometheus::Registry::new();
    let breakers = Breakers::start(args.breakers.configs(), Arc::new(SystemClock), &registry)
        .await
        .map_err(|e| anyhow::anyhow!("starting the circuit breakers: {e}"))?;

    let (events_tx, events_rx) = mpsc::unbounded_channel::<InboxItem>();
    let mut simulated = None;
    let mut telnyx = None;
    let telephony: Arc<dyn Telephony> = match args.telephony {
        TelephonyKind::Simulated => {
            let carrier = Arc::new(SimulatedCarrier::new(
                redis.clone(),
                SimConfig {
                    ring_ms: args.sim_ring_ms,
                    talk_ms: args.sim_talk_ms,
                    key_prefix: args.sim_key_prefix.clone(),
                },
                events_tx,
            ));
            simulated = Some(carrier.clone());
            carrier
        }
        TelephonyKind::Telnyx => {
            // A stream may (re)connect at any point of the call: while it rings and for as
            // long as it may last, with a margin for the carrier's own delays.
            let token_ttl = Duration::from_secs(
                u64::from(args.ring_timeout_secs) + u64::from(args.max_call_secs) + 300,
            );
            let edge = telnyx_edge(&args.telnyx, token_ttl, &registry, &breakers)?;
            let client = edge.client.clone();
            telnyx = Some(edge);
            client
        }
    };
    let media_registry = MediaRegistry::new();
    let voice = match (&telnyx, args.voice.enabled) {
        (Some(_), true) => Some(
            crate::voice::ports(&args.voice, media_registry.clone(), &breakers, &registry)
                .context("configuring the voice pipeline")?,
        ),
        (None, true) => {
            bail!("IACE_VOICE=true needs IACE_TELEPHONY=telnyx (its media streams carry the audio)")
        }
        _ => None,
    };
    let learning_store = store.clone();
    let embedder = if args.learning.enabled {
        Some(embedder(&args.learning, &breakers, &registry)?)
    } else {
        None
    };
    let recall = embedder.clone().map(|embedder| Recall {
        queries: learning_store.clone(),
        embedder,
        half_life: Duration::from_secs(u64::from(args.learning.memory_half_life_days) * 86_400),
    });
    let ports = Ports {
        calls: store.clone(),
        queries: store.clone(),
        telephony,
        clock: Arc::new(SystemClock),
        ids: Arc::new(RandomIds),
        breakers: breakers.clone(),
        voice,
        recall,
        accounts: Some(store),
    };
    let node_id = args.node_id.clone().unwrap_or_else(default_node_id);
    let config = EngineConfig {
        node_id: node_id.clone(),
        ring_timeout_secs: args.ring_timeout_secs,
        max_duration_secs: args.max_call_secs,
        await_amd: telnyx.is_some() && args.telnyx.telnyx_amd != "disabled",
        ..EngineConfig::default()
    };
    let engine = Engine::start(ports, config, &registry)
        .await
        .context("starting the engine")?;
    let learning = match embedder {
        Some(embedder) => Some(start_learning(learning_store, embedder, &node_id).await?),
        None => None,
    };
    if let Some(carrier) = simulated {
        tokio::spawn(forward_carrier_events(engine.clone(), events_rx));
        carrier
            .resume()
            .await
            .context("resuming simulated carrier legs")?;
    }

    let telnyx_ingress = telnyx.as_ref().map(|edge| TelnyxIngress {
        verifier: edge.verifier.clone(),
    });
    let security = Arc::new(security(&args.security, &redis, &registry, &breakers)?);
    if let Some(crm) = &security.hubspot_crm {
        let config = crate::crm_link::LinkerConfig {
            base_backoff: Duration::from_millis(args.security.crm_link_retry_ms),
            poll: Duration::from_millis(args.security.crm_link_retry_ms)
                .min(Duration::from_secs(30)),
            ..Default::default()
        };
        crate::crm_link::spawn(
            engine.clone(),
            crm.clone(),
            security.crm_wake.clone(),
            config,
            &registry,
        )?;
    }
    let cors_origins = cors_origins(&args.security.cors_origins)?;
    let edge_config = crate::edge::EdgeConfig::from_args(&args.edge, nofile);
    info!(
        max_connections = edge_config.max_connections,
        header_timeout_secs = edge_config.header_timeout.as_secs(),
        body_timeout_secs = edge_config.body_timeout.as_secs(),
        idle_timeout_secs = edge_config.idle_timeout.as_secs(),
        "http edge"
    );
    let edge = crate::edge::Edge::new(edge_config, &registry)?;
    let state = AppState {
        engine: engine.clone(),
        registry: registry.clone(),
        security,
        cors_origins,
        ready_checks: vec![
            Arc::new(RedisReady(redis)),
            Arc::new(crate::edge::EdgeReady(edge.clone())),
        ],
        telnyx: telnyx_ingress,
        webhooks: WebhookMetrics::new(&registry)?,
        admin_token: args
            .admin_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(Arc::from),
    };
    let ops = crate::http::ops_router(state.clone());
    let mut router = crate::http::router(state).context("building the router")?;
    if let Some(edge) = telnyx {
        router = router.merge(crate::media::router(MediaState {
            tokens: edge.tokens,
            sink: Arc::new(EngineMedia(engine.clone())),
            registry: media_registry,
            metrics: MediaMetrics::new(&registry)?,
            config: edge.media,
        }));
    }
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("binding {}", args.bind))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let metrics_addr = match metrics_bind {
        Some(bind) => Some(serve_ops(bind, ops, stopped.clone()).await?),
        None => None,
    };
    let server = tokio::spawn(crate::edge::serve(listener, router, edge.clone(), stopped));
    info!(%addr, metrics = ?metrics_addr, telephony = ?args.telephony, "iace listening");
    Ok(Running {
        engine,
        addr,
        metrics_addr,
        edge,
        drain: Duration::from_secs(args.edge.drain_secs),
        server,
        stop,
        learning,
    })
}

/// The Telnyx edge: the command client, the webhook verifier, the media-stream tokens.
struct TelnyxEdge {
    client: Arc<TelnyxClient>,
    verifier: Arc<WebhookVerifier>,
    tokens: Arc<MediaTokens>,
    media: MediaConfig,
}

fn telnyx_edge(
    args: &TelnyxArgs,
    token_ttl: Duration,
    registry: &prometheus::Registry,
    breakers: &Breakers,
) -> anyhow::Result<TelnyxEdge> {
    let need = |v: &Option<String>, name: &str| {
        v.clone()
            .filter(|v| !v.trim().is_empty())
            .with_context(|| format!("{name} is required with IACE_TELEPHONY=telnyx"))
    };
    let api_key = need(&args.telnyx_api_key, "TELNYX_API_KEY")?;
    let connection_id = need(&args.telnyx_connection_id, "TELNYX_CONNECTION_ID")?;
    let public_key = need(&args.telnyx_public_key, "TELNYX_PUBLIC_KEY")?;
    let public_url = need(&args.public_url, "IACE_PUBLIC_URL")?;
    let tokens = Arc::new(
        match args.media_secret.as_deref().filter(|s| !s.is_empty()) {
            Some(secret) => MediaTokens::new(secret.as_bytes()),
            None => {
                warn!("IACE_MEDIA_SECRET is not set: media-stream tokens use a random per-process secret (a stream that reaches another node or a restarted one is refused)");
                MediaTokens::random()
            }
        }
        .with_ttl(token_ttl),
    );
    let signer = tokens.clone();
    let client = TelnyxClient::new(
        TelnyxConfig {
            api_base: args.telnyx_api_base.clone(),
            api_key,
            connection_id,
            public_url,
            answering_machine_detection: args.telnyx_amd.clone(),
            transfer_timeout_secs: 30,
            retry: RetryPolicy {
                max_attempts: 3,
                base: Duration::from_millis(250),
                cap: Duration::from_secs(2),
                attempt_timeout: Duration::from_secs(3),
                // Below the engine's per-command bound (10 s), which retries on its own.
                deadline: Duration::from_secs(8),
                max_retry_after: Duration::from_secs(5),
            },
            stream_tokens: Arc::new(move |call_id| signer.token(call_id)),
            breaker: breakers
                .get(crate::clients::telnyx::client::VENDOR)
                .cloned(),
        },
        Some(TelnyxMetrics::new(registry)?),
    )?;
    let verifier = WebhookVerifier::new(
        &public_key,
        Duration::from_secs(args.telnyx_webhook_tolerance_secs),
        Arc::new(SystemClock),
    )?;
    Ok(TelnyxEdge {
        client: Arc::new(client),
        verifier: Arc::new(verifier),
        tokens,
        media: MediaConfig {
            greeting: args.media_greeting,
            echo: args.media_echo,
            ..MediaConfig::default()
        },
    })
}

/// The media endpoint's reports, into the engine: a started stream starts the call's
/// conversation, caller audio and mark echoes go to it, a finished stream's figures are
/// journaled with its call. Start and DTMF are journaled from Telnyx's own webhooks (DTMF
/// reaches the conversation from there, deduplicated by the inbox).
struct EngineMedia(Engine);

impl MediaSink for EngineMedia {
    /// Asks the engine for the call's status. When the engine cannot answer (the database
    /// is unreachable), the stream is admitted: its token is authentic and expires, and
    /// refusing would cut a live call's audio for a blip.
    fn admits(&self, call_id: Uuid) -> crate::media::Admission {
        let engine = self.0.clone();
        Box::pin(async move {
            match engine.call_status(call_id).await {
                Ok(Some(status)) => !status.is_terminal(),
                Ok(None) => false,
                Err(e) => {
                    warn!(call_id = %call_id, error = %e, "call status unknown; media stream admitted on its token");
                    true
                }
            }
        })
    }

    fn started(&self, call_id: Uuid, info: StreamInfo) {
        info!(call_id = %call_id, stream_id = %info.stream_id, encoding = %info.encoding, "media stream attached");
        self.0.media_started(call_id);
    }

    fn audio(&self, call_id: Uuid, mulaw: Vec<u8>) {
        self.0.media_audio(call_id, mulaw);
    }

    fn mark(&self, call_id: Uuid, name: String) {
        self.0.media_mark(call_id, name);
    }

    fn dtmf(&self, call_id: Uuid, digit: String) {
        info!(call_id = %call_id, digit = %digit, "dtmf on the media stream");
    }

    fn stopped(&self, call_id: Uuid, stats: MediaStats) {
        info!(call_id = %call_id, stream_id = %stats.stream_id, frames_in = stats.frames_in, frames_out = stats.frames_out, gaps = stats.gaps, jitter_ms = stats.jitter_ms, "media stream ended");
        self.0.report_media(
            call_id,
            MediaReport {
                stream_id: stats.stream_id,
                frames_in: stats.frames_in,
                frames_out: stats.frames_out,
                gaps: stats.gaps,
                jitter_ms: stats.jitter_ms,
                duration_ms: stats.duration_ms,
            },
        );
    }
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

/// The access-token key ring: the key file (Ed25519) signs when given, else the secret (HMAC);
/// every other configured key only verifies. `None`: neither is set, user sign-in is off.
fn signing_keys(args: &SecurityArgs) -> anyhow::Result<Option<KeyRing>> {
    fn pem_key(path: &std::path::Path, what: &str) -> anyhow::Result<Key> {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("{what}: cannot read {}", path.display()))?;
        Key::ed25519_pem(&pem).with_context(|| format!("{what}: {}", path.display()))
    }
    let current_secret = args.jwt_secret.as_deref().is_some_and(|s| !s.is_empty());
    if args.jwt_key_file.is_none() && !current_secret {
        anyhow::ensure!(
            args.jwt_previous_secrets.iter().all(|s| s.is_empty())
                && args.jwt_verify_key_files.is_empty(),
            "IACE_JWT_PREVIOUS_SECRETS / IACE_JWT_VERIFY_KEY_FILES need a current key: \
             IACE_JWT_SECRET or IACE_JWT_KEY_FILE"
        );
        return Ok(None);
    }
    let mut ring = Vec::new();
    if let Some(path) = &args.jwt_key_file {
        ring.push(pem_key(path, "IACE_JWT_KEY_FILE")?);
    }
    let secrets = args
        .jwt_secret
        .iter()
        .chain(&args.jwt_previous_secrets)
        .filter(|s| !s.is_empty());
    for secret in secrets {
        ring.push(Key::hmac_secret(secret).context("IACE_JWT_SECRET / IACE_JWT_PREVIOUS_SECRETS")?);
    }
    for path in &args.jwt_verify_key_files {
        ring.push(pem_key(path, "IACE_JWT_VERIFY_KEY_FILES")?);
    }
    let ring =
        KeyRing::new(ring, &args.jwt_issuer, &args.jwt_audience).context("access-token keys")?;
    tracing::info!(
        kid = ring.signing_key().kid(),
        alg = ring.signing_key().alg(),
        "access tokens signed"
    );
    Ok(Some(ring))
}

/// The HTTP layer's security settings from the command line / environment.
pub fn security(
    args: &SecurityArgs,
    redis: &fred::clients::Client,
    registry: &prometheus::Registry,
    breakers: &Breakers,
) -> anyhow::Result<Security> {
    let non_empty = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
    let keys = signing_keys(args)?;
    let limiter = if args.plan_limits {
        let fail = match args.rate_limit_fail {
            FailModeArg::Open => FailMode::Open,
            FailModeArg::Closed => FailMode::Closed,
        };
        Some(RateLimiter::new(
            redis.clone(),
            args.rate_limit_prefix.clone(),
            fail,
            registry,
        )?)
    } else {
        None
    };
    let hubspot_crm = match non_empty(&args.hubspot_access_token) {
        Some(token) => {
            use crate::clients::hubspot::crm::{CrmConfig, CrmMetrics, HubSpotCrm, VENDOR};
            let mut config = CrmConfig::new(token);
            config.api_base.clone_from(&args.hubspot_api_base);
            config.breaker = breakers.get(VENDOR).cloned();
            let crm = HubSpotCrm::new(config)
                .context("HUBSPOT_ACCESS_TOKEN")?
                .with_metrics(CrmMetrics::new(registry)?);
            Some(Arc::new(crm))
        }
        None => None,
    };
    let signin = crate::auth::SigninLimits {
        per_address: args.signin_address_limit,
        global: args.signin_global_limit,
        window: Duration::from_secs(args.signin_window_secs),
        trusted_proxies: args
            .trusted_proxies
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                p.parse()
                    .map_err(|e| anyhow::anyhow!("IACE_TRUSTED_PROXIES: {e}"))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let signin_refused = crate::auth::signin_refused_counter();
    registry.register(Box::new(signin_refused.clone()))?;
    // Every password hash and check of this process goes through this pool.
    let pool = crate::auth::pool::configure(args.password_pool());
    tracing::info!(
        workers = pool.config().workers,
        queue = pool.config().queue,
        "password pool"
    );
    Ok(Security {
        keys,
        limiter,
        signin,
        signin_refused,
        hubspot_crm,
        crm_wake: Default::default(),
        stripe_secret: non_empty(&args.stripe_webhook_secret),
        hubspot_secret: non_empty(&args.hubspot_client_secret),
        hubspot_url: non_empty(&args.hubspot_webhook_url),
        billing_grace: chrono::Duration::days(i64::from(args.billing_grace_days)),
        stripe_tolerance_secs: 300,
    })
}

/// `IACE_CORS_ORIGINS`: each an origin (`scheme://host[:port]`, no path), or start-up fails.
pub fn cors_origins(origins: &[String]) -> anyhow::Result<Vec<axum::http::HeaderValue>> {
    origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .map(|o| {
            let uri: axum::http::Uri = o
                .parse()
                .with_context(|| format!("IACE_CORS_ORIGINS: `{o}` is not an origin"))?;
            let ok = matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.host().is_some()
                && uri
                    .path_and_query()
                    .is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty())
                && !o.ends_with('/');
            anyhow::ensure!(
                ok,
                "IACE_CORS_ORIGINS: `{o}` is not an origin (scheme://host[:port], no path)"
            );
            axum::http::HeaderValue::from_str(o).context("IACE_CORS_ORIGINS")
        })
        .collect()
}

/// The store of an administrative command (migrations applied).
async fn admin_store(database_url: &str) -> anyhow::Result<PgStore> {
    let pool = crate::store::connect(database_url)
        .await
        .context("connecting to Postgres (DATABASE_URL)")?;
    crate::store::migrate(&pool)
        .await
        .context("applying migrations")?;
    Ok(PgStore::new(pool))
}

/// `iace org create <name>`: returns the organization and its API key.
pub async fn create_org(database_url: &str, name: &str) -> anyhow::Result<(Organization, String)> {
    let store = admin_store(database_url).await?;
    let name = iace_actors::catalog::validate_name("name", name)?;
    let org = Organization {
        id: Uuid::new_v4(),
        name,
        created_at: chrono::SubsecRound::trunc_subsecs(Utc::now(), 6),
    };
    let key = crate::auth::generate_api_key();
    store
        .create_organization(
            &org,
            Uuid::new_v4(),
            &crate::auth::sha256_hex(&key),
            &crate::auth::key_prefix(&key),
        )
        .await
        .map_err(|e| anyhow::anyhow!("creating the organization: {e}"))?;
    Ok((org, key))
}

/// `iace user create`: stores a user of `org` with `password`, or with a generated one-time
/// password (returned) when `password` is `None`.
pub async fn create_user(
    database_url: &str,
    org: Uuid,
    email: &str,
    role: &str,
    password: Option<String>,
) -> anyhow::Result<(User, Option<String>)> {
    let role = Role::parse(role).with_context(|| {
        format!("--role: `{role}` is not one of owner, admin, member, read_only")
    })?;
    let email = crate::auth::normalize_email(email).map_err(|e| anyhow::anyhow!("--email: {e}"))?;
    let (password, generated) = match password {
        Some(p) => {
            crate::auth::validate_password(&p).map_err(|e| anyhow::anyhow!("password: {e}"))?;
            (p, false)
        }
        None => (crate::auth::generate_password(), true),
    };
    let store = admin_store(database_url).await?;
    let found = AccountStore::organization(&store, org)
        .await
        .map_err(|e| anyhow::anyhow!("reading the organization: {e}"))?;
    anyhow::ensure!(found.is_some(), "--org: no organization {org}");
    let hashed = crate::auth::hash_password_off_thread(password.clone()).await?;
    let user = User {
        id: Uuid::new_v4(),
        organization_id: org,
        email,
        password_hash: hashed,
        role,
        created_at: chrono::SubsecRound::trunc_subsecs(Utc::now(), 6),
        disabled_at: None,
    };
    let inserted = store
        .insert_user(&user)
        .await
        .map_err(|e| anyhow::anyhow!("storing the user: {e}"))?;
    anyhow::ensure!(inserted, "a user with email {} already exists", user.email);
    Ok((user, generated.then_some(password)))
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
    let google = iace_sim::google::FakeGoogle::start(Default::default())
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
    let running = start(ServeArgs {
        db: crate::config::DbArgs {
            database_url: database_url.clone(),
        },
        redis_url,
        bind: args.bind,
        telephony: args.telephony,
        telnyx,
        breakers: Default::default(),
        voice,
        // No embedding key in dev: the local embedder keeps learning working offline.
        // Learning embeds through the real Google client against the fake.
        learning: crate::config::LearningArgs {
            enabled: true,
            google_api_key: Some(google.api_key().to_owned()),
            google_api_base: google.base_url(),
            ..Default::default()
        },
        // Sign-in works in dev with a secret made for this run; plan limits are on.
        security: crate::config::SecurityArgs {
            jwt_secret: Some(crate::auth::generate_password() + &crate::auth::generate_password()),
            plan_limits: true,
            ..Default::default()
        },
        edge: Default::default(),
        admin_token: Some(DEV_ADMIN_TOKEN.into()),
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

/// The wire-level fakes of the voice vendors (Deepgram, Cartesia, Groq) on loopback ports:
/// `iace dev` converses against them, and so do the end-to-end tests and the voice benchmark.
pub struct FakeVoices {
    /// Live speech-to-text.
    pub deepgram: iace_sim::deepgram::FakeDeepgram,
    /// Speech synthesis.
    pub cartesia: iace_sim::cartesia::FakeCartesia,
    /// Chat model and sentiment.
    pub groq: iace_sim::groq::FakeGroq,
}

impl FakeVoices {
    /// Starts the three fakes.
    pub async fn start(
        deepgram: iace_sim::deepgram::FakeDeepgramConfig,
        cartesia: iace_sim::cartesia::FakeCartesiaConfig,
        groq: iace_sim::groq::FakeGroqConfig,
    ) -> anyhow::Result<FakeVoices> {
        let deepgram = iace_sim::deepgram::FakeDeepgram::start(deepgram)
            .await
            .context("starting the fake Deepgram")?;
        let cartesia = iace_sim::cartesia::FakeCartesia::start(cartesia)
            .await
            .context("starting the fake Cartesia")?;
        let groq = iace_sim::groq::FakeGroq::start(groq)
            .await
            .context("starting the fake Groq")?;
        Ok(FakeVoices {
            deepgram,
            cartesia,
            groq,
        })
    }

    /// The server's voice settings pointing at the fakes.
    pub fn args(&self) -> crate::config::VoiceArgs {
        crate::config::VoiceArgs {
            enabled: true,
            deepgram_api_key: Some(self.deepgram.api_key().to_owned()),
            deepgram_url: self.deepgram.url(),
            cartesia_api_key: Some(self.cartesia.api_key().to_owned()),
            cartesia_url: format!("ws://{}", self.cartesia.addr()),
            groq_api_key: Some(self.groq.api_key().to_owned()),
            groq_api_base: self.groq.base_url(),
            groq_model: "llama-3.3-70b-versatile".into(),
            groq_classify_model: "llama-3.1-8b-instant".into(),
        }
    }

    /// Stops the three fakes.
    pub async fn shutdown(self) {
        self.deepgram.shutdown().await;
        self.cartesia.shutdown().await;
        self.groq.shutdown().await;
    }
}

/// The fake voice vendors of `iace dev`, the demo caller's lines scripted.
async fn dev_voices() -> anyhow::Result<FakeVoices> {
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
fn demo_caller_script() -> iace_sim::telnyx::CallerScript {
    let wait = Duration::from_secs(20);
    let quiet = Duration::from_millis(600);
    let mut script = iace_sim::telnyx::CallerScript::new()
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

/// The dev organization's key, kept in `.services/dev-org.json` so restarts reuse it.
async fn dev_api_key(database_url: &str, engine: &Engine) -> anyhow::Result<String> {
    let path = Path::new(".services/dev-org.json");
    if let Ok(raw) = std::fs::read_to_string(path) {
        if let Some(key) = serde_json::from_str::<serde_json::Value>(&raw)
            .ok()
            .and_then(|v| v["api_key"].as_str().map(str::to_owned))
        {
            if engine
                .key_principal(crate::auth::sha256_hex(&key))
                .await?
                .is_some()
            {
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

/// The dev organization's owner user (`dev@iace.local`), created once with a generated
/// password kept in `.services/dev-user.json` (git-ignored); prints how to sign in.
async fn dev_user(
    database_url: &str,
    base: &str,
    engine: &Engine,
    key: &str,
) -> anyhow::Result<()> {
    const EMAIL: &str = "dev@iace.local";
    let path = Path::new(".services/dev-user.json");
    let saved = std::fs::read_to_string(path)
        .ok()
        .and_then(|raw| serde_json::from_str::<serde_json::Value>(&raw).ok())
        .and_then(|v| v["password"].as_str().map(str::to_owned));
    let password = match (engine.user_by_email(EMAIL).await?, saved) {
        (Some(_), Some(password)) => password,
        (Some(_), None) => return Ok(()),
        (None, _) => {
            let org = engine
                .key_principal(crate::auth::sha256_hex(key))
                .await?
                .context("the dev API key does not authenticate")?
                .org;
            let (_, password) = create_user(database_url, org, EMAIL, "owner", None).await?;
            let password = password.context("a generated password")?;
            std::fs::write(
                path,
                serde_json::json!({"email": EMAIL, "password": password}).to_string(),
            )?;
            password
        }
    };
    eprintln!("\n[dev] sign in as the organization's owner:");
    eprintln!(
        "  curl -s -H 'Content-Type: application/json' -d '{{\"email\":\"{EMAIL}\",\"password\":\"{password}\"}}' {base}/v1/auth/login"
    );
    Ok(())
}

/// The operator token of `iace dev` (`/v1/admin/*`).
const DEV_ADMIN_TOKEN: &str = "dev-admin-token";

/// The number the dev organization's demo agent answers.
const DEMO_NUMBER: &str = "+14155550123";

/// Creates (or reuses) a demo agent, optionally places a demo call (and, with the fake
/// Telnyx, takes a demo inbound call), prints ready-to-paste curls.
async fn demo(
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

/// Serves the operations router (`/metrics`, detailed `/ready`) on its own listener until
/// `stop`; returns the bound address. It is meant for loopback or a private network, so the
/// plain `axum::serve` is enough.
async fn serve_ops(
    bind: SocketAddr,
    ops: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding the metrics listener {bind} (IACE_METRICS_BIND)"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, ops)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            error!(error = %e, "metrics listener failed");
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-signing-secret-of-at-least-32-bytes!";

    fn pem_file(contents: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("iace-key-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn ed25519_pem(seed: u8) -> String {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
            .to_pkcs8_pem(Default::default())
            .unwrap()
            .to_string()
    }

    fn error_of(args: &SecurityArgs) -> String {
        format!("{:#}", signing_keys(args).unwrap_err())
    }

    #[test]
    fn the_key_file_signs_and_every_other_key_only_verifies() {
        assert!(signing_keys(&SecurityArgs::default()).unwrap().is_none());
        let key = pem_file(&ed25519_pem(3));
        let old = pem_file(&ed25519_pem(4));
        let args = SecurityArgs {
            jwt_key_file: Some(key.clone()),
            jwt_verify_key_files: vec![old.clone()],
            jwt_secret: Some(SECRET.into()),
            ..SecurityArgs::default()
        };
        let ring = signing_keys(&args).unwrap().unwrap();
        assert_eq!(ring.signing_key().alg(), "EdDSA");
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 2);
        let secret_only = SecurityArgs {
            jwt_secret: Some(SECRET.into()),
            ..SecurityArgs::default()
        };
        let ring = signing_keys(&secret_only).unwrap().unwrap();
        assert_eq!(ring.signing_key().alg(), "HS256");
        for path in [key, old] {
            let _ = std::fs::remove_file(path);
        }
    }

    #[test]
    fn bad_key_settings_stop_the_start_with_the_setting_named() {
        let missing = SecurityArgs {
            jwt_key_file: Some("/nonexistent/iace-jwt.pem".into()),
            ..SecurityArgs::default()
        };
        let e = error_of(&missing);
        assert!(
            e.contains("IACE_JWT_KEY_FILE") && e.contains("cannot read"),
            "{e}"
        );

        let not_a_key = pem_file("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        let e = error_of(&SecurityArgs {
            jwt_key_file: Some(not_a_key.clone()),
            ..SecurityArgs::default()
        });
        assert!(
            e.contains("IACE_JWT_KEY_FILE") && e.contains("PEM Ed25519"),
            "{e}"
        );

        let e = error_of(&SecurityArgs {
            jwt_secret: Some(SECRET.into()),
            jwt_verify_key_files: vec![not_a_key.clone()],
            ..SecurityArgs::default()
        });
        assert!(e.contains("IACE_JWT_VERIFY_KEY_FILES"), "{e}");

        let e = error_of(&SecurityArgs {
            jwt_secret: Some("short".into()),
            ..SecurityArgs::default()
        });
        assert!(e.contains("shorter than 32 bytes"), "{e}");

        let e = error_of(&SecurityArgs {
            jwt_previous_secrets: vec![SECRET.into()],
            ..SecurityArgs::default()
        });
        assert!(e.contains("need a current key"), "{e}");
        let _ = std::fs::remove_file(not_a_key);
    }
}
