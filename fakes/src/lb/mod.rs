//! A small HTTP/1.1 load balancer on real sockets, modelled on haproxy in `mode http`, for
//! loopback tests and benchmarks of an IACE cluster (several `iace serve` nodes behind one
//! address) and for the `iace-lb` binary. Production deployments use a real balancer
//! (deploy/haproxy.cfg); this one behaves like it where the cluster's tests look:
//!
//! * Round robin over the backends that are up, in the order they were added; backends are
//!   added and removed at run time ([`LoadBalancer::add_backend`],
//!   [`LoadBalancer::remove_backend`]).
//! * Active health checks: every [`LoadBalancerConfig::check_interval`] a fresh connection asks
//!   `GET` [`LoadBalancerConfig::check_path`] (`/ready`); only `200` passes (haproxy's
//!   `http-check expect status 200`). [`LoadBalancerConfig::fall`] failures in a row take a
//!   backend down, [`LoadBalancerConfig::rise`] successes in a row bring it back. A new backend
//!   starts up, as haproxy's servers do, and its first check runs at once.
//! * Redispatch: when a request could not be handed to a backend — the connection was refused,
//!   timed out or reset, or a kept-alive connection turned out closed — and it is certain that
//!   not one byte of it was written, the request goes to the next up backend it has not tried,
//!   at most [`LoadBalancerConfig::retries`] times (haproxy's `retries` with
//!   `option redispatch`). A request that was written is never sent again: a backend that
//!   fails after that is answered `502` (the backend may have acted on it).
//! * HTTP/1.1 keep-alive towards clients and a pool of kept-alive connections per backend;
//!   bodies are streamed both ways, never buffered; headers pass through except the hop-by-hop
//!   ones, and `X-Forwarded-For` gets the client's address appended (haproxy's
//!   `option forwardfor`). Every request is balanced on its own, whatever connection it came on.
//! * Upgrades (WebSocket): the upgrade request goes to a backend on a connection of its own and,
//!   once the backend answers `101`, bytes are copied both ways until either side closes.
//! * No backend up (or none reachable after the retries): `503` with a JSON body
//!   `{"error": {"code", "message"}}`.
//! * Counters ([`LoadBalancer::stats`]): requests answered per backend, redispatches, `5xx`
//!   answers sent to clients.
//!
//! It must not be mistaken for a production proxy: no TLS, no HTTP/2, no timeouts on clients
//! beyond hyper's own, no limits on connections. It never uses tokio's paused clock.
//!
//! Modules: [`backend`] (a backend's address, health, connection pool and checks), [`proxy`]
//! (one request: headers, redispatch, upgrades, the balancer's own answers).

mod backend;
mod proxy;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::fake::stopped;

use self::backend::{Backend, BackendAddr};

/// How the balancer behaves. [`Default`] gives test values (fast checks).
#[derive(Debug, Clone)]
pub struct LoadBalancerConfig {
    /// The backends at start, base URLs such as `http://127.0.0.1:8081` (`http` only, no path).
    pub backends: Vec<String>,
    /// Time between two health checks of a backend (200 ms; haproxy's `inter`).
    pub check_interval: Duration,
    /// Longest a health check may take, connection included, before it counts as failed (1 s).
    pub check_timeout: Duration,
    /// The path of the health check (`/ready`).
    pub check_path: String,
    /// Failed checks in a row that take a backend down (3; haproxy's `fall`).
    pub fall: u32,
    /// Passed checks in a row that bring a backend back up (2; haproxy's `rise`).
    pub rise: u32,
    /// Redispatches of one request to another backend when it could not be handed over (3).
    pub retries: u32,
    /// Longest wait for a TCP connection to a backend (2 s); it counts as refused after it.
    pub connect_timeout: Duration,
    /// Kept-alive connections per backend held for reuse (64); more are closed once idle.
    pub max_idle_per_backend: usize,
    /// On shutdown, how long requests in flight may take before their connections are cut (2 s).
    /// Upgraded connections (WebSockets) are cut at once.
    pub drain_timeout: Duration,
}

impl Default for LoadBalancerConfig {
    fn default() -> Self {
        LoadBalancerConfig {
            backends: Vec::new(),
            check_interval: Duration::from_millis(200),
            check_timeout: Duration::from_secs(1),
            check_path: "/ready".to_owned(),
            fall: 3,
            rise: 2,
            retries: 3,
            connect_timeout: Duration::from_secs(2),
            max_idle_per_backend: 64,
            drain_timeout: Duration::from_secs(2),
        }
    }
}

/// Why a backend or a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LbError {
    /// A backend URL that is not `http://host[:port]` (the reason says what is wrong).
    BadBackendUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend is already in the set.
    DuplicateBackend(String),
    /// A setting out of range (`fall`, `rise` or an interval of zero).
    BadConfig(String),
}

impl fmt::Display for LbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LbError::BadBackendUrl { url, reason } => {
                write!(f, "backend URL {url:?}: {reason}")
            }
            LbError::DuplicateBackend(url) => write!(f, "backend {url} is already balanced"),
            LbError::BadConfig(reason) => write!(f, "load balancer configuration: {reason}"),
        }
    }
}

impl std::error::Error for LbError {}

impl From<LbError> for io::Error {
    fn from(e: LbError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}

/// One backend as the balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStats {
    /// Its base URL, normalised (`http://host:port`).
    pub url: String,
    /// Whether requests are sent to it (its health checks).
    pub up: bool,
    /// Requests it answered (the answer's head came back from it).
    pub requests: u64,
    /// Connections to it open now (in use or kept alive), health checks not counted.
    pub open_connections: usize,
}

/// The balancer's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbStats {
    /// Every backend, in balancing order.
    pub backends: Vec<BackendStats>,
    /// Requests sent on to another backend because the one tried could not take them.
    pub retries: u64,
    /// Answers with a `5xx` status sent to clients, the balancer's own and the backends'.
    pub server_errors: u64,
}

/// What the accept loop, the request handlers and the health checks share.
struct Shared {
    cfg: LoadBalancerConfig,
    /// The backends in balancing order. A std lock: held only to copy or edit the list, never
    /// across an await.
    backends: RwLock<Vec<Arc<Backend>>>,
    /// The round-robin position; every pick advances it.
    next: AtomicUsize,
    retries: AtomicU64,
    server_errors: AtomicU64,
    stop: watch::Receiver<bool>,
    /// The runtime the balancer started on: backends added later spawn their checks there.
    runtime: tokio::runtime::Handle,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, Vec<Arc<Backend>>> {
        self.backends.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Vec<Arc<Backend>>> {
        self.backends.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a backend and starts its health checks.
    fn add(self: &Arc<Self>, url: &str) -> Result<String, LbError> {
        let addr = BackendAddr::parse(url)?;
        let mut list = self.write();
        if list.iter().any(|b| b.addr.url == addr.url) {
            return Err(LbError::DuplicateBackend(addr.url));
        }
        let url = addr.url.clone();
        let b = Arc::new(Backend::new(addr));
        let checks = self.runtime.spawn(backend::check_loop(
            b.clone(),
            self.cfg.clone(),
            self.stop.clone(),
        ));
        b.set_checks(checks);
        list.push(b);
        Ok(url)
    }

    /// Removes a backend: no request goes to it any more, its checks stop and its idle
    /// connections close (requests in flight finish).
    fn remove(&self, url: &str) -> bool {
        let Ok(addr) = BackendAddr::parse(url) else {
            return false;
        };
        let removed = {
            let mut list = self.write();
            let Some(i) = list.iter().position(|b| b.addr.url == addr.url) else {
                return false;
            };
            list.remove(i)
        };
        removed.retire();
        true
    }

    /// The next backend in round-robin order among those that are up and not in `tried`:
    /// the rotation runs over the up ones only, so a down backend's share is spread evenly
    /// (as haproxy's `roundrobin` does), not handed to its successor.
    fn pick(&self, tried: &[Arc<Backend>]) -> Option<Arc<Backend>> {
        let list = self.read();
        let candidates: Vec<&Arc<Backend>> = list
            .iter()
            .filter(|b| b.is_up() && !tried.iter().any(|t| Arc::ptr_eq(t, b)))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        Some(candidates[turn % candidates.len()].clone())
    }
}

/// A running load balancer on a local port.
///
/// Dropping it without [`LoadBalancer::shutdown`] also stops it (every task watches the stop
/// signal, which closes when the sender drops), just without waiting.
pub struct LoadBalancer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
}

impl LoadBalancer {
    /// Binds `127.0.0.1:0` and balances over `config.backends`.
    pub async fn start(config: LoadBalancerConfig) -> io::Result<LoadBalancer> {
        LoadBalancer::bind("127.0.0.1:0".parse().expect("a socket address"), config).await
    }

    /// Binds `listen` and balances over `config.backends`.
    pub async fn bind(listen: SocketAddr, config: LoadBalancerConfig) -> io::Result<LoadBalancer> {
        if config.fall == 0 || config.rise == 0 {
            return Err(LbError::BadConfig("fall and rise must be at least 1".into()).into());
        }
        if config.check_interval.is_zero() || config.check_timeout.is_zero() {
            return Err(LbError::BadConfig(
                "the check interval and timeout must not be zero".into(),
            )
            .into());
        }
        // Every URL is checked before anything is bound or spawned.
        for url in &config.backends {
            BackendAddr::parse(url)?;
        }
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            cfg: config.clone(),
            backends: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
            retries: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            stop: stop_rx,
            runtime: tokio::runtime::Handle::current(),
        });
        for url in &config.backends {
            shared.add(url)?;
        }
        let server = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(LoadBalancer {
            shared,
            addr,
            stop,
            server,
        })
    }

    /// The socket the balancer listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, what clients use as the cluster's base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a backend at the end of the round robin; it starts up and is checked at once.
    /// Returns its normalised URL.
    pub fn add_backend(&self, url: &str) -> Result<String, LbError> {
        self.shared.add(url)
    }

    /// Removes a backend (false if it was not there). Requests already sent to it finish.
    pub fn remove_backend(&self, url: &str) -> bool {
        self.shared.remove(url)
    }

    /// Backend `url` (any spelling of it), if balanced.
    pub fn backend(&self, url: &str) -> Option<BackendStats> {
        let addr = BackendAddr::parse(url).ok()?;
        self.shared
            .read()
            .iter()
            .find(|b| b.addr.url == addr.url)
            .map(|b| b.stats())
    }

    /// The counters now.
    pub fn stats(&self) -> LbStats {
        LbStats {
            backends: self.shared.read().iter().map(|b| b.stats()).collect(),
            retries: self.shared.retries.load(Ordering::Relaxed),
            server_errors: self.shared.server_errors.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting, lets requests in flight finish for up to
    /// [`LoadBalancerConfig::drain_timeout`], then cuts what is left and stops the checks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.server.await;
        for b in self.shared.write().drain(..) {
            b.retire();
        }
    }
}

/// Accepts clients until the stop signal, then drains their connections (bounded).
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    conns.spawn(serve_client(tcp, peer, shared.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "load balancer: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = stopped(shared.stop.clone()) => break,
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(shared.cfg.drain_timeout, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = conns.len(),
            "load balancer: connections still busy after the drain timeout, cut"
        );
    }
    conns.shutdown().await;
}

/// Serves one client connection: HTTP/1.1 with keep-alive and upgrades; on the stop signal it
/// finishes the request in flight and closes.
async fn serve_client(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    // Small writes (an SSE event, a WebSocket frame) must not wait for a delayed ACK.
    let _ = tcp.set_nodelay(true);
    let stop = shared.stop.clone();
    let svc = hyper::service::service_fn(move |req| proxy::handle(shared.clone(), peer, req));
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, %peer, "load balancer: client connection ended");
            }
            return;
        }
        () = stopped(stop) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}
