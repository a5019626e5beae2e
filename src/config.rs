//! Command line and configuration. Every setting is a flag and an environment variable
//! (the flag wins); the README's configuration table lists them.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// IACE: actor-model call engine for AI voice agents.
#[derive(Debug, Parser)]
#[command(name = "iace", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "IACE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

pub use crate::telemetry::LogFormat;

/// Sub-commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the API server and the call engine (applies migrations first).
    Serve(Box<ServeArgs>),
    /// Applies database migrations and exits.
    Migrate(DbArgs),
    /// Organization administration.
    Org {
        /// What to do.
        #[command(subcommand)]
        command: OrgCommand,
    },
    /// User administration.
    User {
        /// What to do.
        #[command(subcommand)]
        command: UserCommand,
    },
}

/// `iace org ...`.
#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Creates an organization and prints `{"organization_id":..,"api_key":..}` (the key is
    /// shown only this once).
    Create {
        /// Display name.
        name: String,
        /// Database.
        #[command(flatten)]
        db: DbArgs,
    },
}

/// `iace user ...`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Creates a user and prints `{"user_id":..,"email":..,"role":..}` plus, unless
    /// `--password-stdin` is given, a one-time `password` (shown only this once).
    Create {
        /// The user's organization.
        #[arg(long)]
        org: uuid::Uuid,
        /// Email (sign-in name; stored lower-case).
        #[arg(long)]
        email: String,
        /// owner, admin, member or read_only.
        #[arg(long)]
        role: String,
        /// Read the password from the first line of standard input instead of generating one.
        #[arg(long)]
        password_stdin: bool,
        /// Database.
        #[command(flatten)]
        db: DbArgs,
    },
}

/// Database connection.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Postgres URL (needs the pgvector extension available).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Most connections this node opens to Postgres (journal writers, queries, webhooks,
    /// workers share them; `iace_db_acquire_seconds` shows the waits).
    #[arg(long, env = "IACE_DB_MAX_CONNECTIONS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub db_max_connections: u32,
    /// Prepared statements kept per connection.
    #[arg(long, env = "IACE_DB_STATEMENT_CACHE", default_value_t = 256, value_parser = clap::value_parser!(u64).range(0..=10000))]
    pub db_statement_cache: u64,
}

impl DbArgs {
    /// Local defaults on `database_url`.
    pub fn new(database_url: &str) -> DbArgs {
        DbArgs {
            database_url: database_url.to_owned(),
            db_max_connections: crate::store::PoolSizing::default().max_connections,
            db_statement_cache: 256,
        }
    }

    /// The pool's size and statement cache.
    pub fn sizing(&self) -> crate::store::PoolSizing {
        crate::store::PoolSizing {
            max_connections: self.db_max_connections,
            statement_cache: usize::try_from(self.db_statement_cache).unwrap_or(256),
            ..crate::store::PoolSizing::default()
        }
    }
}

/// Which carrier adapter places calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TelephonyKind {
    /// Built-in simulated carrier (state in Redis): rings, answers and hangs up after
    /// `IACE_SIM_RING_MS` / `IACE_SIM_TALK_MS`.
    Simulated,
    /// Telnyx Call Control v2 (`TELNYX_*`, `IACE_PUBLIC_URL`): signed webhooks in, media
    /// streams over WebSocket.
    Telnyx,
}

/// Circuit-breaker settings, shared by every vendor (slow-call thresholds are per vendor).
#[derive(Debug, Clone, Args)]
pub struct BreakerArgs {
    /// Outcomes in each breaker's sliding window.
    #[arg(long, env = "IACE_BREAKER_WINDOW", default_value_t = 50)]
    pub breaker_window: usize,
    /// Outcomes needed before rates are judged.
    #[arg(long, env = "IACE_BREAKER_MIN_CALLS", default_value_t = 20)]
    pub breaker_min_calls: usize,
    /// Failure rate (0-1) that opens a breaker.
    #[arg(long, env = "IACE_BREAKER_FAILURE_RATE", default_value_t = 0.5)]
    pub breaker_failure_rate: f64,
    /// Slow-call rate (0-1) that opens a breaker.
    #[arg(long, env = "IACE_BREAKER_SLOW_RATE", default_value_t = 0.8)]
    pub breaker_slow_rate: f64,
    /// Consecutive failures that open a breaker at once.
    #[arg(long, env = "IACE_BREAKER_CONSECUTIVE_FAILURES", default_value_t = 5)]
    pub breaker_consecutive_failures: u32,
    /// First open wait (ms); doubles on repeated trips.
    #[arg(long, env = "IACE_BREAKER_OPEN_WAIT_MS", default_value_t = 30_000)]
    pub breaker_open_wait_ms: u64,
    /// Longest open wait (ms).
    #[arg(long, env = "IACE_BREAKER_OPEN_WAIT_CAP_MS", default_value_t = 300_000)]
    pub breaker_open_wait_cap_ms: u64,
    /// Probe calls let through while half-open.
    #[arg(long, env = "IACE_BREAKER_HALF_OPEN_PROBES", default_value_t = 3)]
    pub breaker_half_open_probes: u32,
    /// Slow-call threshold (ms) for every breaker, replacing the per-breaker defaults (telnyx
    /// and google 3 s, deepgram and cartesia 2 s, groq_classify 1 s, groq, stripe and
    /// hubspot 5 s).
    #[arg(long, env = "IACE_BREAKER_SLOW_CALL_MS")]
    pub breaker_slow_call_ms: Option<u64>,
}

impl Default for BreakerArgs {
    fn default() -> Self {
        BreakerArgs {
            breaker_window: 50,
            breaker_min_calls: 20,
            breaker_failure_rate: 0.5,
            breaker_slow_rate: 0.8,
            breaker_consecutive_failures: 5,
            breaker_open_wait_ms: 30_000,
            breaker_open_wait_cap_ms: 300_000,
            breaker_half_open_probes: 3,
            breaker_slow_call_ms: None,
        }
    }
}

impl BreakerArgs {
    /// Every breaker's configuration: these settings plus the breaker's slow-call threshold
    /// (what "slow" means differs: a Groq completion is slower than a Telnyx command, and a
    /// sentiment classification is useless after its 800 ms budget). `groq_classify` (Groq's
    /// classifications) is a breaker apart from `groq` (its replies): see
    /// `clients::groq`.
    pub fn configs(
        &self,
    ) -> std::collections::BTreeMap<String, iace_actors::breaker::BreakerConfig> {
        use std::time::Duration;
        iace_actors::breaker::VENDORS
            .iter()
            .map(|vendor| {
                let slow_ms = self.breaker_slow_call_ms.unwrap_or(match *vendor {
                    "telnyx" | "google" => 3_000,
                    "deepgram" | "cartesia" => 2_000,
                    "groq_classify" => 1_000,
                    _ => 5_000,
                });
                let config = iace_actors::breaker::BreakerConfig {
                    window: self.breaker_window.max(1),
                    min_calls: self.breaker_min_calls.max(1),
                    failure_rate: self.breaker_failure_rate.clamp(0.0, 1.0),
                    consecutive_failures: self.breaker_consecutive_failures.max(1),
                    slow_call: Duration::from_millis(slow_ms),
                    slow_rate: self.breaker_slow_rate.clamp(0.0, 1.0),
                    open_wait: Duration::from_millis(self.breaker_open_wait_ms),
                    open_wait_cap: Duration::from_millis(
                        self.breaker_open_wait_cap_ms.max(self.breaker_open_wait_ms),
                    ),
                    half_open_probes: self.breaker_half_open_probes.max(1),
                    max_retry_after: Duration::from_secs(300),
                };
                ((*vendor).to_owned(), config)
            })
            .collect()
    }
}

/// Telnyx settings (used when `IACE_TELEPHONY=telnyx`).
#[derive(Debug, Clone, Default, Args)]
pub struct TelnyxArgs {
    /// Telnyx API key (Bearer).
    #[arg(long, env = "TELNYX_API_KEY", hide_env_values = true)]
    pub telnyx_api_key: Option<String>,
    /// The Call Control application (connection) id outbound calls are placed on.
    #[arg(long, env = "TELNYX_CONNECTION_ID")]
    pub telnyx_connection_id: Option<String>,
    /// Base64 Ed25519 public key that signs Telnyx webhooks (Mission Control portal).
    #[arg(long, env = "TELNYX_PUBLIC_KEY")]
    pub telnyx_public_key: Option<String>,
    /// Telnyx API base (the fake carrier's URL in tests and dev).
    #[arg(long, env = "TELNYX_API_BASE", default_value = crate::clients::telnyx::client::DEFAULT_API_BASE)]
    pub telnyx_api_base: String,
    /// Answering-machine detection on outbound dials (`disabled`, `detect`, `detect_beep`,
    /// `detect_words`, `greeting_end`, `premium`).
    #[arg(long, env = "TELNYX_AMD", default_value = "detect")]
    pub telnyx_amd: String,
    /// Accepted distance between a webhook's timestamp and our clock (s).
    #[arg(long, env = "TELNYX_WEBHOOK_TOLERANCE_SECS", default_value_t = 300)]
    pub telnyx_webhook_tolerance_secs: u64,
    /// Where Telnyx reaches this deployment (webhooks and media WebSocket), e.g.
    /// `https://iace.example.com`.
    #[arg(long, env = "IACE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Secret that signs media-stream tokens (every node of a cluster needs the same one;
    /// random per process when unset).
    #[arg(long, env = "IACE_MEDIA_SECRET", hide_env_values = true)]
    pub media_secret: Option<String>,
    /// Play a short greeting when a call's media stream starts (until the voice pipeline).
    #[arg(long, env = "IACE_MEDIA_GREETING", default_value_t = true, action = clap::ArgAction::Set)]
    pub media_greeting: bool,
    /// Send the caller's audio straight back (a loopback that proves the media path).
    #[arg(long, env = "IACE_MEDIA_ECHO", default_value_t = false, action = clap::ArgAction::Set)]
    pub media_echo: bool,
}

/// The cluster: every node of a deployment runs `iace serve` on the same database with its own
/// `IACE_NODE_ID` and `IACE_NODE_URL`; the nodes share the calls through shard leases.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// This node's own base URL, reachable by the other nodes (forwarded commands) and by the
    /// carrier (media streams), e.g. `http://10.0.0.5:8080` (default: `http://` + the listen
    /// address, with the host name for an unspecified address).
    #[arg(long, env = "IACE_NODE_URL")]
    pub node_url: Option<String>,
    /// How long a shard lease lasts without renewal (s): a dead node's calls are taken over
    /// within about this long.
    #[arg(long, env = "IACE_LEASE_TTL_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=600))]
    pub lease_ttl_secs: u64,
    /// How often shard leases are renewed and the shard plan re-checked (ms); at most a third
    /// of the lease TTL.
    #[arg(long, env = "IACE_LEASE_RENEW_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(50..=200_000))]
    pub lease_renew_ms: u64,
    /// On SIGTERM, how long live conversations of this node may go on before their calls move
    /// to another node anyway (s); every other call moves at once.
    #[arg(long, env = "IACE_DRAIN_DEADLINE_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub drain_deadline_secs: u64,
}

impl Default for ClusterArgs {
    fn default() -> Self {
        ClusterArgs {
            node_url: None,
            lease_ttl_secs: 10,
            lease_renew_ms: 2000,
            drain_deadline_secs: 300,
        }
    }
}

impl ClusterArgs {
    /// The lease TTL and renewal period, checked against each other.
    pub fn lease_timing(&self) -> Result<(std::time::Duration, std::time::Duration), String> {
        let ttl = std::time::Duration::from_secs(self.lease_ttl_secs);
        let every = std::time::Duration::from_millis(self.lease_renew_ms);
        if every * 3 > ttl {
            return Err(format!(
                "IACE_LEASE_RENEW_MS ({} ms) must be at most a third of IACE_LEASE_TTL_SECS ({} s), so that a lease survives two missed renewals",
                self.lease_renew_ms, self.lease_ttl_secs
            ));
        }
        Ok((ttl, every))
    }

    /// `IACE_NODE_URL`, or the default derived from the listen address.
    pub fn node_url(&self, bind: SocketAddr, host: &str) -> Result<String, String> {
        match &self.node_url {
            Some(url) => {
                let url = url.trim().trim_end_matches('/');
                let parsed = reqwest::Url::parse(url)
                    .map_err(|e| format!("IACE_NODE_URL {url:?} is not a URL: {e}"))?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                    return Err(format!(
                        "IACE_NODE_URL {url:?} must be an http(s) URL with a host"
                    ));
                }
                Ok(url.to_owned())
            }
            None if bind.ip().is_unspecified() => Ok(format!("http://{host}:{}", bind.port())),
            None => Ok(format!("http://{bind}")),
        }
    }
}

/// `iace serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Database.
    #[command(flatten)]
    pub db: DbArgs,
    /// Redis URL.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: String,
    /// Listen address.
    #[arg(long, env = "IACE_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Carrier adapter.
    #[arg(long, env = "IACE_TELEPHONY", value_enum, default_value_t = TelephonyKind::Simulated)]
    pub telephony: TelephonyKind,
    /// Telnyx settings.
    #[command(flatten)]
    pub telnyx: TelnyxArgs,
    /// Vendor circuit breakers.
    #[command(flatten)]
    pub breakers: BreakerArgs,
    /// The voice pipeline.
    #[command(flatten)]
    pub voice: VoiceArgs,
    /// Learning from completed calls.
    #[command(flatten)]
    pub learning: LearningArgs,
    /// Accounts and security.
    #[command(flatten)]
    pub security: SecurityArgs,
    /// The HTTP edge: timeouts, connection cap, metrics listener, draining.
    #[command(flatten)]
    pub edge: EdgeArgs,
    /// The cluster: this node's address and its shard leases.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Operator token for `/v1/admin/*` (breakers); the operator API is off when unset.
    #[arg(long, env = "IACE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Simulated carrier: how long a call rings before it is answered (ms).
    #[arg(long, env = "IACE_SIM_RING_MS", default_value_t = 2000)]
    pub sim_ring_ms: u64,
    /// Simulated carrier: how long an answered call talks before the callee hangs up (ms).
    #[arg(long, env = "IACE_SIM_TALK_MS", default_value_t = 8000)]
    pub sim_talk_ms: u64,
    /// Simulated carrier: Redis key prefix of its leg state.
    #[arg(long, env = "IACE_SIM_KEY_PREFIX", default_value = "iace:sim:")]
    pub sim_key_prefix: String,
    /// Name of this node in shard leases (defaults to the host name).
    #[arg(long, env = "IACE_NODE_ID")]
    pub node_id: Option<String>,
    /// How long an outbound call may ring before it fails with `ring_timeout` (s).
    #[arg(long, env = "IACE_RING_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(5..=300))]
    pub ring_timeout_secs: u32,
    /// How long an answered call may last before it is ended with `max_duration` (s).
    #[arg(long, env = "IACE_MAX_CALL_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u32).range(10..=86400))]
    pub max_call_secs: u32,
    /// Journal writes batched into shared transactions by this many writers (group commit:
    /// the appends that wait while the writers are busy go in the next batch, so a batch
    /// costs one flush to disk). 0 writes every append in its own transaction.
    #[arg(long, env = "IACE_JOURNAL_WRITERS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(0..=64))]
    pub journal_writers: u16,
    /// Most calls this node runs at once. Past it, new outbound calls are refused with 503
    /// and `Retry-After` and inbound calls are rejected at the carrier, before anything is
    /// stored, so the live calls keep their latency. Unset: 400 per core this process may use
    /// (measured, docs/benchmarks.md); 0 is no limit.
    #[arg(long, env = "IACE_MAX_LIVE_CALLS")]
    pub max_live_calls: Option<usize>,
    /// Report the node unready on `/ready` while it runs `IACE_MAX_LIVE_CALLS` calls, so that
    /// a load balancer in front of several nodes sends new work to the others. Leave it off
    /// with a single node: its webhooks for the calls it runs come through the same balancer.
    #[arg(long, env = "IACE_UNREADY_AT_CAPACITY", default_value_t = false, action = clap::ArgAction::Set)]
    pub unready_at_capacity: bool,
    /// Let customers' URLs (webhook endpoints, tools) point at loopback, private, link-local
    /// and other non-public addresses. Off in production: such a URL would reach into the
    /// server's own network. The dev world and the tests turn it on.
    #[arg(long, env = "IACE_ALLOW_PRIVATE_URLS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_private_urls: bool,
    /// Seconds before the 2nd, 3rd, ... attempt of a failed webhook delivery, comma-separated;
    /// after the last, the delivery is given up. Unset: 5 s, 5 min, 30 min, 2 h, 5 h, then
    /// 10 h six times (about three days).
    #[arg(long, env = "IACE_WEBHOOK_RETRY_SCHEDULE", value_delimiter = ',')]
    pub webhook_retry_schedule: Vec<u64>,
    /// Longest a webhook delivery may take, answer included (its connection: at most 5 s).
    #[arg(long, env = "IACE_WEBHOOK_TIMEOUT_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub webhook_timeout_secs: u64,
}

/// Learning from completed calls: patterns and customer memories, embedded for similarity
/// search (DESIGN.md section 7).
#[derive(Debug, Clone, Args)]
pub struct LearningArgs {
    /// Learn from completed calls (a worker on this node takes jobs from the shared queue).
    #[arg(id = "learning", long = "learning", env = "IACE_LEARNING", default_value_t = true, action = clap::ArgAction::Set)]
    pub enabled: bool,
    /// Google API key for embeddings. Without one a local deterministic embedder is used
    /// (vectors of different models are never compared).
    #[arg(long, env = "GOOGLE_API_KEY", hide_env_values = true)]
    pub google_api_key: Option<String>,
    /// Google Generative Language API base (the fake's URL in tests).
    #[arg(
        long,
        env = "GOOGLE_API_BASE",
        default_value = "https://generativelanguage.googleapis.com/v1beta"
    )]
    pub google_api_base: String,
    /// Embedding model (768-d output).
    #[arg(
        long,
        env = "GOOGLE_EMBEDDING_MODEL",
        default_value = "gemini-embedding-001"
    )]
    pub embedding_model: String,
    /// A customer memory's relevance halves every this many days.
    #[arg(long, env = "IACE_MEMORY_HALF_LIFE_DAYS", default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub memory_half_life_days: u32,
}

impl Default for LearningArgs {
    /// Off (tests and benchmarks that do not exercise learning), otherwise the CLI defaults.
    fn default() -> Self {
        LearningArgs {
            enabled: false,
            google_api_key: None,
            google_api_base: "https://generativelanguage.googleapis.com/v1beta".into(),
            embedding_model: "gemini-embedding-001".into(),
            memory_half_life_days: 90,
        }
    }
}

impl ServeArgs {
    /// A server on local services with the simulated carrier and every optional part at its
    /// default (off): the base that tests, examples and benchmarks adjust.
    pub fn local(database_url: &str, redis_url: &str, bind: SocketAddr) -> ServeArgs {
        ServeArgs {
            db: DbArgs::new(database_url),
            redis_url: redis_url.to_owned(),
            bind,
            telephony: TelephonyKind::Simulated,
            telnyx: TelnyxArgs::default(),
            breakers: BreakerArgs::default(),
            voice: VoiceArgs::default(),
            learning: LearningArgs::default(),
            security: SecurityArgs::default(),
            edge: EdgeArgs::default(),
            cluster: ClusterArgs::default(),
            admin_token: None,
            sim_ring_ms: 2000,
            sim_talk_ms: 8000,
            sim_key_prefix: "iace:sim:".into(),
            node_id: None,
            ring_timeout_secs: 30,
            max_call_secs: 3600,
            journal_writers: 4,
            max_live_calls: None,
            unready_at_capacity: false,
            allow_private_urls: false,
            webhook_retry_schedule: Vec::new(),
            webhook_timeout_secs: 15,
        }
    }
}

/// The HTTP edge (what one client may hold) and the operations listener.
#[derive(Debug, Clone, Args)]
pub struct EdgeArgs {
    /// Longest wait for a request's headers once its first byte arrived (s); the connection
    /// is closed after it. Headers are a few hundred bytes: 10 s covers a bad mobile link and
    /// bounds a slow-headers client.
    #[arg(long, env = "IACE_HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub http_header_timeout_secs: u64,
    /// Longest wait for a request's whole body once its headers arrived (s). Bodies are at
    /// most 256 KiB: 30 s is under 9 KB/s, slower than any client that means well.
    #[arg(long, env = "IACE_HTTP_BODY_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_body_timeout_secs: u64,
    /// A keep-alive connection with no request in flight is closed after this (s). Longer
    /// than the usual load-balancer idle timeout (60 s), so the balancer closes first and
    /// never sends a request on a connection the server is closing (nginx's default is 75 s).
    #[arg(long, env = "IACE_HTTP_IDLE_TIMEOUT_SECS", default_value_t = 75, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_idle_timeout_secs: u64,
    /// Most open API connections; beyond it (and a reserve of 16 for `/health` and `/ready`)
    /// a connection is answered 503 and closed. 0: 10,000, lowered to fit the open-file limit.
    #[arg(long, env = "IACE_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,
    /// Where `/metrics` and the detailed `/ready` are served (`host:port`); `off` or empty
    /// disables them. Keep it off the public network: metrics name routes, vendors, tenants'
    /// volumes.
    #[arg(long, env = "IACE_METRICS_BIND", default_value = "127.0.0.1:9464")]
    pub metrics_bind: String,
    /// On SIGTERM, keep serving this long (s) with `/ready` answering 503, so load balancers
    /// stop sending work before the listener closes. 0: close at once.
    #[arg(long, env = "IACE_DRAIN_SECS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=300))]
    pub drain_secs: u64,
}

impl Default for EdgeArgs {
    /// The command line's defaults, except the metrics listener on an ephemeral loopback
    /// port (tests and benchmarks run several servers side by side).
    fn default() -> Self {
        EdgeArgs {
            http_header_timeout_secs: 10,
            http_body_timeout_secs: 30,
            http_idle_timeout_secs: 75,
            max_connections: 0,
            metrics_bind: "127.0.0.1:0".into(),
            drain_secs: 0,
        }
    }
}

impl EdgeArgs {
    /// The metrics listener's address, `None` when disabled.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, String> {
        let v = self.metrics_bind.trim();
        if v.is_empty() || v.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        v.parse()
            .map(Some)
            .map_err(|e| format!("IACE_METRICS_BIND={v:?}: not host:port or off ({e})"))
    }
}

/// Accounts and security (DESIGN.md section 8). Secrets come only from the environment or
/// the command line, never from files in the repository.
#[derive(Debug, Clone, Args)]
pub struct SecurityArgs {
    /// Access-token signing secret (at least 32 bytes, `HS256`). User sign-in is off without
    /// this or IACE_JWT_KEY_FILE.
    #[arg(long, env = "IACE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Earlier signing secrets, comma-separated: their tokens stay valid until they expire
    /// (rotate by moving the current secret here and setting a new one).
    #[arg(
        long,
        env = "IACE_JWT_PREVIOUS_SECRETS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub jwt_previous_secrets: Vec<String>,
    /// Ed25519 signing key for access tokens (`EdDSA`): a PEM PKCS#8 private key file, e.g.
    /// from `openssl genpkey -algorithm ed25519`. When set it signs, and IACE_JWT_SECRET (if
    /// also set) only verifies: tokens issued before the switch stay valid. Its public key is
    /// published at `/.well-known/jwks.json`.
    #[arg(long, env = "IACE_JWT_KEY_FILE")]
    pub jwt_key_file: Option<std::path::PathBuf>,
    /// Earlier Ed25519 keys that only verify, comma-separated PEM files (public or private):
    /// rotate by moving the current key file here and setting a new one.
    #[arg(long, env = "IACE_JWT_VERIFY_KEY_FILES", value_delimiter = ',')]
    pub jwt_verify_key_files: Vec<std::path::PathBuf>,
    /// Access-token issuer.
    #[arg(long, env = "IACE_JWT_ISSUER", default_value = "iace")]
    pub jwt_issuer: String,
    /// Access-token audience.
    #[arg(long, env = "IACE_JWT_AUDIENCE", default_value = "iace-api")]
    pub jwt_audience: String,
    /// Stripe webhook endpoint secret (`whsec_...`); the Stripe webhook is off without one.
    #[arg(long, env = "STRIPE_WEBHOOK_SECRET", hide_env_values = true)]
    pub stripe_webhook_secret: Option<String>,
    /// HubSpot app client secret; the HubSpot webhook is off without one.
    #[arg(long, env = "HUBSPOT_CLIENT_SECRET", hide_env_values = true)]
    pub hubspot_client_secret: Option<String>,
    /// The exact URL HubSpot is configured to call (v2/v3 signatures cover it). Default:
    /// rebuilt from the request's Host and X-Forwarded-Proto.
    #[arg(long, env = "HUBSPOT_WEBHOOK_URL")]
    pub hubspot_webhook_url: Option<String>,
    /// HubSpot private-app (or OAuth) token for CRM v3: a contact event about a contact no
    /// customer is linked to yet is looked up and linked by phone or email. Without one such
    /// events are stored only.
    #[arg(long, env = "HUBSPOT_ACCESS_TOKEN", hide_env_values = true)]
    pub hubspot_access_token: Option<String>,
    /// First retry delay of a failed CRM lookup of an unlinked HubSpot contact (ms); doubles
    /// per attempt up to an hour.
    #[arg(long, env = "IACE_CRM_LINK_RETRY_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub crm_link_retry_ms: u64,
    /// HubSpot API base (the fake's URL in tests).
    #[arg(
        long,
        env = "HUBSPOT_API_BASE",
        default_value = "https://api.hubapi.com"
    )]
    pub hubspot_api_base: String,
    /// Days an unpaid plan stays in force before it falls back to free.
    #[arg(long, env = "IACE_BILLING_GRACE_DAYS", default_value_t = 7, value_parser = clap::value_parser!(u32).range(0..=90))]
    pub billing_grace_days: u32,
    /// Enforce plan limits: requests per minute (per key or user, and per organization) and
    /// concurrent calls.
    #[arg(id = "plan_limits", long = "plan-limits", env = "IACE_PLAN_LIMITS", default_value_t = true, action = clap::ArgAction::Set)]
    pub plan_limits: bool,
    /// When Redis cannot answer a rate-limit check: `open` lets requests through (logged and
    /// counted), `closed` refuses them with 503.
    #[arg(long, env = "IACE_RATE_LIMIT_FAIL", value_enum, default_value_t = FailModeArg::Open)]
    pub rate_limit_fail: FailModeArg,
    /// Browser origins allowed to call the API, comma-separated (`https://app.example.com`).
    #[arg(long, env = "IACE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Redis key prefix of the rate-limit windows (deployments sharing one Redis set
    /// different prefixes).
    #[arg(long, env = "IACE_RATE_LIMIT_PREFIX", default_value = "iace:rl:")]
    pub rate_limit_prefix: String,
    /// Sign-ins (`POST /v1/auth/login`) allowed per client address per
    /// IACE_SIGNIN_WINDOW_SECS, checked before any password work; 0: no per-address budget.
    /// Needs plan limits on (the limiter).
    #[arg(long, env = "IACE_SIGNIN_ADDRESS_LIMIT", default_value_t = 30)]
    pub signin_address_limit: u32,
    /// Sign-ins allowed per IACE_SIGNIN_WINDOW_SECS across the whole deployment (all nodes
    /// share it in Redis), checked before any password work; 0: no global budget.
    #[arg(long, env = "IACE_SIGNIN_GLOBAL_LIMIT", default_value_t = 1200)]
    pub signin_global_limit: u32,
    /// The window of the per-address and global sign-in budgets (s).
    #[arg(long, env = "IACE_SIGNIN_WINDOW_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub signin_window_secs: u64,
    /// Reverse proxies whose `X-Forwarded-For` names the client, comma-separated addresses or
    /// CIDR ranges (`10.0.0.0/8,fd00::/8`). Empty: the header is never trusted and the client
    /// is the TCP peer.
    #[arg(long, env = "IACE_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// Password hashing and verification threads (checks at once; each holds 19 MiB of
    /// argon2 memory). Default: the number of cores.
    #[arg(long, env = "IACE_PASSWORD_WORKERS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub password_workers: Option<u32>,
    /// Password checks that may wait for a worker; beyond that they are refused at once with
    /// 503 `overloaded`. Default: twice the workers.
    #[arg(long, env = "IACE_PASSWORD_QUEUE", value_parser = clap::value_parser!(u32).range(0..=65536))]
    pub password_queue: Option<u32>,
    /// Longest a password check waits for a worker before it is refused (ms).
    #[arg(long, env = "IACE_PASSWORD_MAX_WAIT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub password_max_wait_ms: u64,
}

impl SecurityArgs {
    /// The password pool's configuration.
    pub fn password_pool(&self) -> crate::auth::pool::PoolConfig {
        let default = crate::auth::pool::PoolConfig::default();
        let workers = self
            .password_workers
            .map_or(default.workers, |w| w as usize);
        crate::auth::pool::PoolConfig {
            workers,
            queue: self.password_queue.map_or(2 * workers, |q| q as usize),
            max_wait: std::time::Duration::from_millis(self.password_max_wait_ms),
        }
    }
}

/// See [`SecurityArgs::rate_limit_fail`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailModeArg {
    /// Let requests through unchecked.
    Open,
    /// Refuse them.
    Closed,
}

impl Default for SecurityArgs {
    /// No sign-in, no billing/CRM webhooks, no plan limits, no CORS origins (tests and
    /// benchmarks of other concerns; the command line's defaults turn plan limits on).
    fn default() -> Self {
        SecurityArgs {
            jwt_secret: None,
            jwt_previous_secrets: Vec::new(),
            jwt_key_file: None,
            jwt_verify_key_files: Vec::new(),
            jwt_issuer: "iace".into(),
            jwt_audience: "iace-api".into(),
            stripe_webhook_secret: None,
            hubspot_client_secret: None,
            hubspot_webhook_url: None,
            hubspot_access_token: None,
            hubspot_api_base: "https://api.hubapi.com".into(),
            crm_link_retry_ms: 30_000,
            billing_grace_days: 7,
            plan_limits: false,
            rate_limit_fail: FailModeArg::Open,
            cors_origins: Vec::new(),
            rate_limit_prefix: "iace:rl:".into(),
            signin_address_limit: 30,
            signin_global_limit: 1200,
            signin_window_secs: 60,
            trusted_proxies: Vec::new(),
            password_workers: None,
            password_queue: None,
            password_max_wait_ms: 1000,
        }
    }
}

/// The voice pipeline's vendors (used when `IACE_VOICE=true`; needs `IACE_TELEPHONY=telnyx`,
/// whose media streams carry the audio).
#[derive(Debug, Clone, Default, Args, serde::Serialize, serde::Deserialize)]
pub struct VoiceArgs {
    /// Run a conversation on every answered call (speech-to-text, model, speech synthesis).
    #[arg(
        id = "voice",
        long = "voice",
        env = "IACE_VOICE",
        default_value_t = false
    )]
    pub enabled: bool,
    /// Deepgram API key.
    #[arg(long, env = "DEEPGRAM_API_KEY", hide_env_values = true)]
    pub deepgram_api_key: Option<String>,
    /// Deepgram WebSocket base (the fake's URL in tests and dev).
    #[arg(long, env = "DEEPGRAM_URL", default_value = crate::clients::deepgram::DEFAULT_URL)]
    pub deepgram_url: String,
    /// Cartesia API key.
    #[arg(long, env = "CARTESIA_API_KEY", hide_env_values = true)]
    pub cartesia_api_key: Option<String>,
    /// Cartesia WebSocket base (the fake's URL in tests and dev).
    #[arg(long, env = "CARTESIA_URL", default_value = crate::clients::cartesia::DEFAULT_URL)]
    pub cartesia_url: String,
    /// Groq API key.
    #[arg(long, env = "GROQ_API_KEY", hide_env_values = true)]
    pub groq_api_key: Option<String>,
    /// Groq API base (the fake's URL in tests and dev).
    #[arg(long, env = "GROQ_API_BASE", default_value = crate::clients::groq::DEFAULT_API_BASE)]
    pub groq_api_base: String,
    /// Conversation model.
    #[arg(long, env = "GROQ_MODEL", default_value = "llama-3.3-70b-versatile")]
    pub groq_model: String,
    /// Sentiment classification model.
    #[arg(
        long,
        env = "GROQ_CLASSIFY_MODEL",
        default_value = "llama-3.1-8b-instant"
    )]
    pub groq_classify_model: String,
    /// Post-call analysis model (Groq structured outputs; strict decoding where the model and
    /// the agent's schema allow it).
    #[arg(
        long,
        env = "IACE_ANALYSIS_MODEL",
        default_value = "openai/gpt-oss-20b"
    )]
    pub analysis_model: String,
    /// First wait before an analysis is tried again after the model could not be reached;
    /// doubles per attempt, up to 30 minutes.
    #[arg(long, env = "IACE_ANALYSIS_RETRY_MS", default_value_t = 30_000)]
    pub analysis_retry_ms: u64,
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
