//! One backend of the load balancer: its address, its health (the active checks and the
//! fall/rise counting), its pool of kept-alive connections and the hand-over of a request
//! that tells "never written, safe to send elsewhere" from "written, maybe acted on".
//!
//! It must not decide where a request goes next: that is the proxy's round robin.

use std::error::Error as StdError;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::{Body, Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{header, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{BackendStats, LbError, LoadBalancerConfig};
use crate::fake::stopped;

/// A backend's base URL, checked and normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BackendAddr {
    /// `http://host:port`.
    pub(super) url: String,
    /// `host:port`, what the TCP connection resolves and the health check's `Host`.
    pub(super) authority: String,
}

impl BackendAddr {
    /// Accepts `http://host[:port][/]` only: the balancer forwards paths as they came, so a
    /// base path would be silently dropped.
    pub(super) fn parse(url: &str) -> Result<BackendAddr, LbError> {
        let bad = |reason: &str| LbError::BadBackendUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|e| bad(&format!("not a URL ({e})")))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// backends are supported"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user info is not supported"));
        }
        if authority.host().is_empty() {
            return Err(bad("no host"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("a backend is a base URL, without path or query"));
        }
        let port = authority.port_u16().unwrap_or(80);
        let authority = format!("{}:{port}", authority.host());
        Ok(BackendAddr {
            url: format!("http://{authority}"),
            authority,
        })
    }
}

/// Why a request did not get an answer's head from a backend.
pub(super) enum SendError {
    /// Not one byte of the request reached the backend: it may go elsewhere.
    NotSent(Box<Request<Incoming>>, String),
    /// The request was (at least partly) written: it must not be sent again.
    Failed(String),
}

/// Health checks in a row whose outcome went against the backend's state (failures while up,
/// successes while down).
#[derive(Debug, Default)]
struct Health {
    streak: u32,
}

/// A backend being balanced.
pub(super) struct Backend {
    pub(super) addr: BackendAddr,
    /// Read on every pick; written only by the health checks (under `health`).
    up: AtomicBool,
    health: Mutex<Health>,
    requests: AtomicU64,
    /// Connections open now (counted by their tasks, so a connection the backend closed stops
    /// counting once hyper has seen the close).
    open: Arc<AtomicUsize>,
    /// Kept-alive connections; some may still be streaming an earlier answer (not ready yet).
    /// A std lock: held only to push or pop.
    pool: Mutex<Vec<SendRequest<Incoming>>>,
    checks: Mutex<Option<JoinHandle<()>>>,
    /// Set when the backend leaves the set: its connections are no longer pooled.
    retired: AtomicBool,
}

impl Backend {
    pub(super) fn new(addr: BackendAddr) -> Backend {
        Backend {
            addr,
            up: AtomicBool::new(true),
            health: Mutex::new(Health::default()),
            requests: AtomicU64::new(0),
            open: Arc::new(AtomicUsize::new(0)),
            pool: Mutex::new(Vec::new()),
            checks: Mutex::new(None),
            retired: AtomicBool::new(false),
        }
    }

    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub(super) fn stats(&self) -> BackendStats {
        BackendStats {
            url: self.addr.url.clone(),
            up: self.is_up(),
            requests: self.requests.load(Ordering::Relaxed),
            open_connections: self.open.load(Ordering::Relaxed),
        }
    }

    pub(super) fn set_checks(&self, task: JoinHandle<()>) {
        *self.checks.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }

    /// Stops the checks and closes the idle connections; answers in flight finish.
    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        if let Some(task) = self.checks.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Counts one check's outcome: `fall` failures in a row take an up backend down, `rise`
    /// successes in a row bring a down one up.
    fn record_check(&self, passed: bool, cfg: &LoadBalancerConfig, detail: &str) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let up = self.is_up();
        if passed == up {
            h.streak = 0;
            return;
        }
        h.streak += 1;
        let needed = if up { cfg.fall } else { cfg.rise };
        if h.streak >= needed {
            h.streak = 0;
            self.up.store(!up, Ordering::Release);
            if up {
                tracing::warn!(backend = %self.addr.url, last_check = detail, "load balancer: backend down");
            } else {
                tracing::info!(backend = %self.addr.url, "load balancer: backend up");
            }
        }
    }

    /// Hands `req` to this backend on a kept-alive connection or a new one (always a new one
    /// for an upgrade, whose connection becomes the tunnel) and waits for the answer's head.
    pub(super) async fn send(
        &self,
        req: Request<Incoming>,
        upgrade: bool,
        cfg: &LoadBalancerConfig,
    ) -> Result<Response<Incoming>, SendError> {
        let pooled = if upgrade { None } else { self.take_idle() };
        let mut sender = match pooled {
            Some(s) => s,
            None => match connect(&self.addr, cfg.connect_timeout, Some(&self.open)).await {
                Ok(s) => s,
                Err(e) => return Err(SendError::NotSent(Box::new(req), format!("connect: {e}"))),
            },
        };
        match sender.try_send_request(req).await {
            Ok(resp) => {
                self.requests.fetch_add(1, Ordering::Relaxed);
                if !upgrade && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                    // Pooled at once: it is skipped until the answer's body has been read.
                    self.put_idle(sender, cfg.max_idle_per_backend);
                }
                Ok(resp)
            }
            Err(mut e) => match e.take_message() {
                Some(req) => Err(SendError::NotSent(
                    Box::new(req),
                    e.into_error().to_string(),
                )),
                None => Err(SendError::Failed(e.into_error().to_string())),
            },
        }
    }

    /// A kept-alive connection ready for a request; closed ones are dropped, busy ones stay.
    fn take_idle(&self) -> Option<SendRequest<Incoming>> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.retain(|s| !s.is_closed());
        let i = pool.iter().rposition(SendRequest::is_ready)?;
        Some(pool.swap_remove(i))
    }

    fn put_idle(&self, sender: SendRequest<Incoming>, max: usize) {
        if self.retired.load(Ordering::Acquire) {
            return;
        }
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.retain(|s| !s.is_closed());
        if pool.len() < max {
            pool.push(sender);
        }
        // Otherwise the sender is dropped: hyper closes the connection once its answer is read.
    }
}

/// Opens an HTTP/1.1 connection to `addr`; its task runs until the connection ends (upgrades
/// included) and is counted in `open` meanwhile. Nothing is written before a request is
/// sent, so every error here leaves the backend untouched.
pub(super) async fn connect<B>(
    addr: &BackendAddr,
    timeout: Duration,
    open: Option<&Arc<AtomicUsize>>,
) -> io::Result<SendRequest<B>>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr.authority.as_str()))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(io::Error::other)?;
    let open = open.cloned();
    if let Some(open) = &open {
        open.fetch_add(1, Ordering::Relaxed);
    }
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "load balancer: backend connection ended");
        }
        if let Some(open) = open {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    });
    Ok(sender)
}

/// Checks `backend` every interval until the stop signal (or its removal aborts the task).
pub(super) async fn check_loop(
    backend: Arc<Backend>,
    cfg: LoadBalancerConfig,
    stop: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(cfg.check_interval);
    // A check slower than the interval delays the next one rather than bunching them.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stopped(stop.clone()) => return,
        }
        let outcome = tokio::time::timeout(cfg.check_timeout, check_once(&backend.addr, &cfg))
            .await
            .unwrap_or_else(|_| Err("timed out".to_owned()));
        match outcome {
            Ok(()) => backend.record_check(true, &cfg, "passed"),
            Err(why) => backend.record_check(false, &cfg, &why),
        }
    }
}

/// One health check on a fresh connection (as haproxy's): `GET check_path` must answer 200.
async fn check_once(addr: &BackendAddr, cfg: &LoadBalancerConfig) -> Result<(), String> {
    let mut sender: SendRequest<Empty<Bytes>> = connect(addr, cfg.check_timeout, None)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let req = Request::get(cfg.check_path.as_str())
        .header(header::HOST, addr.authority.as_str())
        .header(header::CONNECTION, "close")
        .header(header::USER_AGENT, "iace-lb-check")
        .body(Empty::new())
        .map_err(|e| format!("check request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    if resp.status() == StatusCode::OK {
        Ok(())
    } else {
        Err(format!("status {}", resp.status().as_u16()))
    }
}
