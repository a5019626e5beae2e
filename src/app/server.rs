//! Process wiring of `iace serve`: builds the ports from the configuration (Postgres, Redis,
//! the carrier, the voice and learning vendors), starts the engine, the learning worker and the
//! HTTP servers, and shuts them down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use async_trait::async_trait;
use iace_actors::analysis::{AnalysisMsg, AnalysisPorts, AnalysisTuning, AnalysisWorker};
use iace_actors::breaker::Breakers;
use iace_actors::engine::Ports;
use iace_actors::engine::{Engine, EngineConfig, GroupCommit, GroupCommitConfig};
use iace_actors::keepalive::{KeepAlive, KeepAliveMsg};
use iace_actors::learning::actor::{
    LearningConfig, LearningPorts, LearningSupervisor, LearningSupervisorMsg,
};
use iace_actors::learning::recall::Recall;
use iace_actors::learning::LocalEmbedder;
use iace_actors::outbox::actor::{
    DeliveryConfig, DeliveryMetrics, DeliveryMsg, DeliveryPorts, DeliveryWorker,
};
use iace_actors::ports::learning::Embedder;
use iace_actors::ports::{InboxItem, Telephony};
use ractor::ActorRef;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::clock::{RandomIds, SystemClock};
use super::security::{cors_origins, security};
use super::telnyx::{telnyx_edge, EngineMedia};
use crate::cluster::{HttpPeers, InternalKey, NodeClient};
use crate::config::{ServeArgs, TelephonyKind};
use crate::http::webhooks::{TelnyxIngress, WebhookMetrics};
use crate::http::{AppState, ReadyCheck};
use crate::media::{MediaMetrics, MediaRegistry, MediaState};
use crate::store::PgStore;
use crate::telephony::simulated::{SimConfig, SimulatedCarrier};

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
    let (sup, _) = ractor::Actor::spawn(
        None,
        LearningSupervisor::default(),
        ("learning", (ports, config)),
    )
    .await
    .context("starting the learning worker")?;
    Ok(sup)
}

/// Connections of the webhook delivery worker (besides the main pool's).
const OUTBOX_CONNECTIONS: u32 = 4;

/// Starts this node's webhook delivery worker, and wakes it whenever any node commits
/// deliveries (Postgres `LISTEN webhook_delivery`).
async fn start_deliveries(
    store: Arc<PgStore>,
    args: &ServeArgs,
    node_id: &str,
    registry: &prometheus::Registry,
) -> anyhow::Result<ActorRef<KeepAliveMsg<DeliveryMsg>>> {
    let guard = crate::outbound::guard::Guard {
        allow_private: args.allow_private_urls,
    };
    let timeouts = crate::outbound::sender::Timeouts {
        total: Duration::from_secs(args.webhook_timeout_secs),
        ..Default::default()
    };
    let ports = DeliveryPorts {
        store: store.clone(),
        queries: store.clone(),
        sender: Arc::new(crate::outbound::sender::HttpSender::new(guard, timeouts)),
        clock: Arc::new(SystemClock),
    };
    let mut config = DeliveryConfig {
        node_id: node_id.to_owned(),
        ..DeliveryConfig::default()
    };
    if !args.webhook_retry_schedule.is_empty() {
        config.retry_schedule = args
            .webhook_retry_schedule
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect();
    }
    let metrics = DeliveryMetrics::new(registry)?;
    let (sup, _) = ractor::Actor::spawn(
        None,
        KeepAlive::<DeliveryWorker>::default(),
        ("webhook deliveries", (ports, config, Some(metrics))),
    )
    .await
    .context("starting the webhook delivery worker")?;
    tokio::spawn(listen_for_deliveries(store, sup.clone()));
    Ok(sup)
}

/// Nudges the delivery worker on every `webhook_delivery` notification; reconnects after a
/// failure (the worker's poll covers the gap).
async fn listen_for_deliveries(store: Arc<PgStore>, worker: ActorRef<KeepAliveMsg<DeliveryMsg>>) {
    loop {
        let listening = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(store.pool()).await?;
            listener.listen("webhook_delivery").await?;
            loop {
                listener.recv().await?;
                if worker
                    .send_message(KeepAliveMsg::Forward(DeliveryMsg::Nudge))
                    .is_err()
                {
                    return Ok::<(), sqlx::Error>(());
                }
            }
        };
        match listening.await {
            Ok(()) => return,
            Err(e) => {
                warn!(error = %e, "listening for webhook deliveries; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
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
    /// Where `/metrics` and the detailed `/ready` are served (`None`: disabled).
    pub metrics_addr: Option<SocketAddr>,
    /// The HTTP edge (open connections, draining).
    pub edge: Arc<crate::edge::Edge>,
    drain: Duration,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    learning: Option<ActorRef<LearningSupervisorMsg>>,
    deliveries: ActorRef<KeepAliveMsg<DeliveryMsg>>,
    analysis: Option<ActorRef<KeepAliveMsg<AnalysisMsg>>>,
}

impl Running {
    /// Serves until SIGINT/SIGTERM (or the server fails), then shuts down gracefully.
    pub async fn wait(self) -> anyhow::Result<()> {
        let Running {
            engine,
            server,
            stop,
            learning,
            deliveries,
            analysis,
            edge,
            drain,
            ..
        } = self;
        let mut server = server;
        tokio::select! {
            _ = shutdown_signal() => {
                edge.start_draining();
                // Still serving, not ready: load balancers take the node out, while the
                // engine hands its calls over to the other nodes (requests about them are
                // forwarded there from now on). A second signal cuts the drain short.
                info!(drain_secs = drain.as_secs(), "draining before shutdown");
                tokio::select! {
                    _ = async { tokio::join!(tokio::time::sleep(drain), engine.drain()) } => {}
                    _ = shutdown_signal() => {}
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
        deliveries.stop(None);
        if let Some(a) = analysis {
            a.stop(None);
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
        self.deliveries.stop(None);
        if let Some(a) = self.analysis {
            a.stop(None);
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
    let pool = crate::store::connect_sized(&args.db.database_url, args.db.sizing())
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
    crate::telemetry::export::register(&registry)?;
    store.register_metrics(&registry)?;
    store.watch_queues(&registry, Duration::from_secs(5))?;
    let breakers = Breakers::start(args.breakers.configs(), Arc::new(SystemClock), &registry)
        .await
        .map_err(|e| anyhow::anyhow!("starting the circuit breakers: {e}"))?;

    let (events_tx, events_rx) = mpsc::unbounded_channel::<InboxItem>();
    let mut simulated = None;
    let node_url = args
        .cluster
        .node_url(args.bind, &host_name())
        .map_err(anyhow::Error::msg)?;
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
            // Media streams connect to this node itself only when it was given its own
            // address; otherwise to the public URL, as for a single node.
            let media_url = args.cluster.node_url.as_ref().map(|_| node_url.clone());
            let edge = telnyx_edge(&args.telnyx, token_ttl, media_url, &registry, &breakers)?;
            let client = edge.client.clone();
            telnyx = Some(edge);
            client
        }
    };
    let telephony = crate::telemetry::ports::telephony(telephony);
    let media_registry = MediaRegistry::new();
    let voice = match (&telnyx, args.voice.enabled) {
        (Some(_), true) => {
            let mut ports =
                crate::voice::ports(&args.voice, media_registry.clone(), &breakers, &registry)
                    .context("configuring the voice pipeline")?;
            ports.tools = Some(Arc::new(crate::outbound::tools::HttpToolRunner::new(
                crate::outbound::guard::Guard {
                    allow_private: args.allow_private_urls,
                },
                Some(crate::outbound::tools::ToolMetrics::new(&registry)?),
            )));
            Some(crate::telemetry::ports::voice(ports))
        }
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
    let node_id = args.node_id.clone().unwrap_or_else(default_node_id);
    let nodes = NodeClient::new(internal_key(&args, &node_id), &registry)?;
    let calls: Arc<dyn iace_actors::ports::CallStore> = match args.journal_writers {
        0 => store.clone(),
        writers => GroupCommit::start(
            store.clone(),
            GroupCommitConfig {
                writers: usize::from(writers),
                ..GroupCommitConfig::default()
            },
            Some(&registry),
        )
        .context("starting the journal writer")?,
    };
    let ports = Ports {
        calls,
        cluster: store.clone(),
        peers: Some(Arc::new(HttpPeers::new(nodes.clone()))),
        queries: store.clone(),
        telephony,
        clock: Arc::new(SystemClock),
        ids: Arc::new(RandomIds),
        breakers: breakers.clone(),
        voice,
        recall,
        accounts: Some(store.clone()),
        outbox: Some(store.clone()),
        analysis: Some(store.clone()),
        traces: Some(Arc::new(crate::telemetry::JournalTraces)),
    };
    let (lease_ttl, lease_renew_every) = args.cluster.lease_timing().map_err(anyhow::Error::msg)?;
    let config = EngineConfig {
        node_id: node_id.clone(),
        node_url,
        lease_ttl,
        lease_renew_every,
        drain_deadline: Duration::from_secs(args.cluster.drain_deadline_secs),
        ring_timeout_secs: args.ring_timeout_secs,
        max_duration_secs: args.max_call_secs,
        await_amd: telnyx.is_some() && args.telnyx.telnyx_amd != "disabled",
        max_live_calls: args
            .max_live_calls
            .unwrap_or_else(iace_actors::engine::default_max_live_calls),
        ..EngineConfig::default()
    };
    let engine = Engine::start(ports, config, &registry)
        .await
        .context("starting the engine")?;
    // The delivery worker has connections of its own: a burst of API requests queued for
    // the main pool must not hold back the events their own writes committed.
    let outbox_pool = crate::store::connect_sized(
        &args.db.database_url,
        crate::store::PoolSizing {
            max_connections: OUTBOX_CONNECTIONS,
            ..args.db.sizing()
        },
    )
    .await
    .context("connecting the webhook delivery worker to Postgres")?;
    let deliveries = start_deliveries(
        Arc::new(PgStore::new(outbox_pool)),
        &args,
        &node_id,
        &registry,
    )
    .await?;
    let analysis = match crate::voice::analysis_model(&args.voice)? {
        Some(model) if args.voice.enabled => {
            info!(model = model.model(), "analysing answered calls");
            let ports = AnalysisPorts {
                store: learning_store.clone(),
                queries: learning_store.clone(),
                model,
                clock: Arc::new(SystemClock),
            };
            let (sup, _) = ractor::Actor::spawn(
                None,
                KeepAlive::<AnalysisWorker>::default(),
                (
                    "post-call analysis",
                    (
                        ports,
                        AnalysisTuning {
                            retry_base: Duration::from_millis(args.voice.analysis_retry_ms),
                            ..AnalysisTuning::default()
                        },
                    ),
                ),
            )
            .await
            .context("starting the analysis worker")?;
            Some(sup)
        }
        _ => None,
    };
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
        cors_origins: cors_origins.into(),
        nodes: Some(Arc::new(nodes)),
        outbound: crate::outbound::guard::Guard {
            allow_private: args.allow_private_urls,
        },
        ready_checks: {
            let mut checks: Vec<Arc<dyn crate::http::ReadyCheck>> = vec![
                Arc::new(RedisReady(redis)),
                Arc::new(crate::edge::EdgeReady(edge.clone())),
            ];
            if args.unready_at_capacity {
                checks.push(Arc::new(crate::http::CapacityReady(engine.clone())));
            }
            checks.into()
        },
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
        deliveries,
        analysis,
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

/// The key nodes sign their requests to each other with, from `IACE_MEDIA_SECRET` (the one
/// secret every node of a cluster shares).
fn internal_key(args: &ServeArgs, node_id: &str) -> InternalKey {
    match args
        .telnyx
        .media_secret
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        Some(secret) => InternalKey::from_secret(secret.as_bytes(), node_id),
        None if args.cluster.node_url.is_none() => InternalKey::random(node_id),
        None => {
            warn!("IACE_MEDIA_SECRET is not set: requests from other nodes (pokes, forwarded commands) cannot be authenticated; set the same secret on every node of a cluster");
            InternalKey::random(node_id)
        }
    }
}

/// The host name: stable across restarts, so a lone node restarted after a crash takes its
/// own shard leases back at once instead of waiting for them to lapse.
fn default_node_id() -> String {
    host_name()
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
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
