//! The HTTP edge: accepts API connections and serves the router on each with hyper, bounding
//! what one client can hold.
//!
//! - Timeouts per connection phase ([`conn`]): an idle keep-alive connection is closed after
//!   the idle timeout, a started request must finish its headers within the header timeout
//!   and its body within the body timeout. An upgraded connection (the media WebSocket) has
//!   none of them: a call's audio stream may be quiet for minutes.
//! - A cap on open connections: beyond it a connection gets a minimal `503` with
//!   `Retry-After` and the error envelope, and is closed, instead of waiting in the backlog.
//!   A small reserve above the cap serves only `/health` and `/ready`, so probes still get an
//!   answer from a node held at its cap (`/ready` says not ready, `/health` says alive).
//! - Counters of refused and timed-out connections and a gauge of open ones.
//!
//! `axum::serve` does none of this; what it did is kept: `TCP_NODELAY` on accepted sockets,
//! WebSocket upgrades, `ConnectInfo<SocketAddr>` for handlers, graceful shutdown (in-flight
//! requests drain). HTTP/1.1 only, as before.
//!
//! It must not know routes beyond the two probes, nor read request bodies.

mod conn;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use conn::{ConnState, Phase, RequestBody, ResponseBody, Slot, Timeouts, TrackedIo};

/// Connections above the cap that may still ask `/health` and `/ready`.
pub const PROBE_RESERVE: usize = 16;

/// Refusals being written at once; past this a refused socket is closed without an answer
/// (each one holds a file descriptor for up to [`REFUSAL_LINGER`]).
const MAX_REFUSALS_IN_FLIGHT: usize = 256;

/// How long a refused socket may take to receive its 503 and close.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// The default cap, lowered to fit the open-file limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// File descriptors kept for everything but API connections (Postgres and Redis pools,
/// vendor clients, media streams' vendor sockets, log files).
const NOFILE_HEADROOM: u64 = 512;

/// The edge's settings.
#[derive(Debug, Clone, Copy)]
pub struct EdgeConfig {
    /// Longest wait for a request's headers once its first byte arrived.
    pub header_timeout: Duration,
    /// Longest wait for a request's whole body once its headers arrived.
    pub body_timeout: Duration,
    /// Longest wait for the next request on a keep-alive connection.
    pub idle_timeout: Duration,
    /// Most open connections served normally.
    pub max_connections: usize,
}

impl EdgeConfig {
    /// From the command line; a cap of 0 means [`DEFAULT_MAX_CONNECTIONS`] lowered to what
    /// the open-file soft limit `nofile` allows.
    pub fn from_args(args: &crate::config::EdgeArgs, nofile: Option<u64>) -> EdgeConfig {
        let max_connections = if args.max_connections > 0 {
            args.max_connections
        } else {
            derived_cap(nofile)
        };
        EdgeConfig {
            header_timeout: Duration::from_secs(args.http_header_timeout_secs),
            body_timeout: Duration::from_secs(args.http_body_timeout_secs),
            idle_timeout: Duration::from_secs(args.http_idle_timeout_secs),
            max_connections,
        }
    }
}

/// [`DEFAULT_MAX_CONNECTIONS`], or fewer when the open-file limit would run out first
/// (beyond it `accept` fails and connections pile up in the backlog unanswered).
fn derived_cap(nofile: Option<u64>) -> usize {
    let Some(limit) = nofile else {
        return DEFAULT_MAX_CONNECTIONS;
    };
    let room = limit
        .saturating_sub(NOFILE_HEADROOM + PROBE_RESERVE as u64 + MAX_REFUSALS_IN_FLIGHT as u64);
    usize::try_from(room)
        .unwrap_or(usize::MAX)
        .clamp(64, DEFAULT_MAX_CONNECTIONS)
}

/// The edge's counters.
#[derive(Clone)]
struct EdgeMetrics {
    refused: IntCounterVec,
    timed_out: IntCounterVec,
    open: IntGauge,
}

impl EdgeMetrics {
    fn new(registry: &Registry) -> Result<EdgeMetrics, prometheus::Error> {
        let refused = IntCounterVec::new(
            Opts::new(
                "iace_http_connections_refused_total",
                "API connections refused: at_capacity (answered 503), overflow (closed \
                 unanswered while too many refusals were in flight), accept_error (accept \
                 failed, e.g. out of file descriptors)",
            ),
            &["reason"],
        )?;
        let timed_out = IntCounterVec::new(
            Opts::new(
                "iace_http_connections_timed_out_total",
                "API connections closed by a timeout, by the phase it struck in",
            ),
            &["phase"],
        )?;
        let open = IntGauge::new("iace_http_connections_open", "Open API connections")?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(timed_out.clone()))?;
        registry.register(Box::new(open.clone()))?;
        for reason in ["at_capacity", "overflow", "accept_error"] {
            refused.with_label_values(&[reason]);
        }
        for phase in ["header", "body", "idle"] {
            timed_out.with_label_values(&[phase]);
        }
        Ok(EdgeMetrics {
            refused,
            timed_out,
            open,
        })
    }
}

/// At most one log line per kind of event per interval, with the count of those not logged.
struct LogThrottle {
    next_at_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    const INTERVAL: Duration = Duration::from_secs(10);

    fn new() -> LogThrottle {
        LogThrottle {
            next_at_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(events not logged since the last line)` when this one may be logged.
    fn admit(&self, started: Instant) -> Option<u64> {
        let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_at_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_at_ms
                .compare_exchange(
                    next,
                    now + Self::INTERVAL.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// The edge's shared state: settings, counters, open connections, draining.
pub struct Edge {
    config: EdgeConfig,
    metrics: EdgeMetrics,
    open: AtomicUsize,
    draining: AtomicBool,
    started: Instant,
    refusal_log: LogThrottle,
    /// One per phase (header, body, idle): a flood of one kind does not hide the others.
    timeout_log: [LogThrottle; 3],
    accept_log: LogThrottle,
    refusals: Arc<Semaphore>,
}

impl Edge {
    /// Registers the edge's metrics.
    pub fn new(config: EdgeConfig, registry: &Registry) -> Result<Arc<Edge>, prometheus::Error> {
        Ok(Arc::new(Edge {
            config,
            metrics: EdgeMetrics::new(registry)?,
            open: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            started: Instant::now(),
            refusal_log: LogThrottle::new(),
            timeout_log: [LogThrottle::new(), LogThrottle::new(), LogThrottle::new()],
            accept_log: LogThrottle::new(),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT)),
        }))
    }

    /// The settings in force.
    pub fn config(&self) -> &EdgeConfig {
        &self.config
    }

    /// Open API connections.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// From now on `/ready` answers not ready (the node is shutting down).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Why the node cannot take new work at the edge, if it cannot.
    pub fn unready_reason(&self) -> Option<String> {
        if self.draining.load(Ordering::Acquire) {
            return Some("draining: shutting down".into());
        }
        let open = self.open_connections();
        (open >= self.config.max_connections).then(|| {
            format!(
                "at its connection cap ({open} open, cap {})",
                self.config.max_connections
            )
        })
    }
}

/// `/ready` check of the edge: not ready while draining or at the connection cap.
pub struct EdgeReady(pub Arc<Edge>);

#[async_trait]
impl crate::http::ReadyCheck for EdgeReady {
    fn name(&self) -> &'static str {
        "http_edge"
    }
    async fn check(&self) -> Result<(), String> {
        self.0.unready_reason().map_or(Ok(()), Err)
    }
}

/// Serves `router` on `listener` until `stop` turns true, then lets in-flight requests finish
/// (their connections close after their response) and returns when every connection is
/// closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    edge: Arc<Edge>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut connections = JoinSet::new();
    let for_connections = stop.clone();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, remote)) => {
                    let open = edge.open.load(Ordering::Acquire);
                    if open >= edge.config.max_connections + PROBE_RESERVE {
                        refuse(&edge, tcp, remote);
                        continue;
                    }
                    let probes_only = open >= edge.config.max_connections;
                    edge.open.fetch_add(1, Ordering::AcqRel);
                    edge.metrics.open.inc();
                    let slot = {
                        let edge = edge.clone();
                        Slot(Box::new(move || {
                            edge.open.fetch_sub(1, Ordering::AcqRel);
                            edge.metrics.open.dec();
                        }))
                    };
                    connections.spawn(connection(
                        edge.clone(),
                        router.clone(),
                        tcp,
                        remote,
                        slot,
                        probes_only,
                        for_connections.clone(),
                    ));
                }
                Err(e) => accept_failed(&edge, &e).await,
            },
        }
    }
    edge.start_draining();
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Returns once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// `accept` failed: a connection reset before it was taken is nothing; anything else
/// (usually out of file descriptors) is counted, logged, and waited out briefly so the loop
/// does not spin while the descriptors are taken.
async fn accept_failed(edge: &Edge, e: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    edge.metrics
        .refused
        .with_label_values(&["accept_error"])
        .inc();
    if let Some(suppressed) = edge.accept_log.admit(edge.started) {
        warn!(error = %e, suppressed, "accepting an API connection failed");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Answers 503 and closes, off the accept loop.
fn refuse(edge: &Arc<Edge>, tcp: TcpStream, remote: SocketAddr) {
    let Ok(permit) = edge.refusals.clone().try_acquire_owned() else {
        edge.metrics.refused.with_label_values(&["overflow"]).inc();
        return;
    };
    edge.metrics
        .refused
        .with_label_values(&["at_capacity"])
        .inc();
    if let Some(suppressed) = edge.refusal_log.admit(edge.started) {
        warn!(
            %remote,
            cap = edge.config.max_connections,
            suppressed,
            "API connection refused: at the connection cap"
        );
    }
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async move {
            let mut tcp = tcp;
            let _ = tcp.set_nodelay(true);
            tcp.write_all(&capacity_answer()).await?;
            tcp.shutdown().await?;
            // Read what the client sent until it closes: closing with unread bytes would
            // reset the connection and could discard the answer before the client reads it.
            let mut sink = [0u8; 4096];
            while tcp.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

/// Serves one connection until it closes, times out, or drains after `stop`.
async fn connection(
    edge: Arc<Edge>,
    router: Router,
    tcp: TcpStream,
    remote: SocketAddr,
    slot: Slot,
    probes_only: bool,
    mut stop: watch::Receiver<bool>,
) {
    // Nagle off: media frames and mark echoes are small writes that must not wait for the
    // peer's delayed ACK.
    let _ = tcp.set_nodelay(true);
    let state = ConnState::new();
    let io = hyper_util::rt::TokioIo::new(TrackedIo::new(tcp, state.clone(), slot));
    let service = {
        let state = state.clone();
        hyper::service::service_fn(move |req| {
            handle(router.clone(), state.clone(), remote, probes_only, req)
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(!probes_only);
    // Ours (see `conn`) instead: hyper's would also cut idle keep-alive connections.
    builder.header_read_timeout(None);
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let timeouts = Timeouts {
        header: edge.config.header_timeout,
        body: edge.config.body_timeout,
        idle: edge.config.idle_timeout,
    };
    let mut draining = false;
    loop {
        let deadline = state.deadline(&timeouts);
        let sleep_until = deadline.map_or_else(
            || Instant::now() + Duration::from_secs(86_400),
            |(_, at)| at,
        );
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(%remote, error = %e, "API connection ended with an error");
                }
                return;
            }
            () = state.changed.notified() => {}
            () = tokio::time::sleep_until(sleep_until.into()), if deadline.is_some() => {
                let Some((phase, at)) = state.deadline(&timeouts) else { continue };
                if at > Instant::now() {
                    continue;
                }
                timed_out(&edge, phase, remote);
                return;
            }
            () = stopped(&mut stop), if !draining => {
                draining = true;
                // A request still arriving is not in flight: a slow-headers client must not
                // hold the shutdown up for its header timeout.
                if state.phase() == Phase::Header {
                    return;
                }
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

fn timed_out(edge: &Edge, phase: Phase, remote: SocketAddr) {
    edge.metrics
        .timed_out
        .with_label_values(&[phase.label()])
        .inc();
    let throttle = match phase {
        Phase::Header => &edge.timeout_log[0],
        Phase::Body => &edge.timeout_log[1],
        _ => &edge.timeout_log[2],
    };
    if let Some(suppressed) = throttle.admit(edge.started) {
        // An idle keep-alive connection closing is routine; a slow request is worth a look.
        if phase == Phase::Idle {
            debug!(%remote, phase = phase.label(), "API connection closed: idle");
        } else {
            warn!(%remote, phase = phase.label(), suppressed, "API connection closed: too slow");
        }
    }
}

/// One request: connection facts in, the router, the response observed on its way out.
async fn handle(
    router: Router,
    state: Arc<ConnState>,
    remote: SocketAddr,
    probes_only: bool,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    use http_body::Body as _;
    let body_complete = req.body().is_end_stream();
    state.request_started(body_complete);
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(ConnectInfo(remote));
    let body = if body_complete {
        Body::new(body)
    } else {
        Body::new(RequestBody::new(body, state.clone()))
    };
    let response = if probes_only && !matches!(parts.uri.path(), "/health" | "/ready") {
        over_capacity_response()
    } else {
        let req = Request::from_parts(parts, body);
        match tower_service::Service::call(&mut router.clone(), req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        state.upgraded();
    }
    Ok(response.map(|b| Body::new(ResponseBody::new(b, state))))
}

/// The error envelope outside any request (no request id was assigned: a fresh one names
/// the answer in logs and reports).
fn envelope(code: &str, message: &str) -> String {
    serde_json::json!({"error": {
        "code": code,
        "message": message,
        "request_id": uuid::Uuid::new_v4().to_string(),
    }})
    .to_string()
}

/// A raw HTTP/1.1 answer that closes the connection.
fn raw_answer(status: StatusCode, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra_headers}connection: close\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
    )
    .into_bytes()
}

const OVER_CAPACITY: &str = "the server is at its connection limit; retry shortly";

/// The refusal of a connection beyond the cap.
fn capacity_answer() -> Vec<u8> {
    raw_answer(
        StatusCode::SERVICE_UNAVAILABLE,
        "retry-after: 1\r\n",
        &envelope("overloaded", OVER_CAPACITY),
    )
}

/// The answer to anything but a probe on a connection of the reserve.
fn over_capacity_response() -> Response<Body> {
    let mut r = Response::new(Body::from(envelope("overloaded", OVER_CAPACITY)));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = r.headers_mut();
    h.insert("content-type", "application/json".parse().expect("static"));
    h.insert("retry-after", "1".parse().expect("static"));
    h.insert("connection", "close".parse().expect("static"));
    r
}

/// What replaces hyper's bare answer to a request it could not parse.
fn parse_error_answer(status: u16) -> Vec<u8> {
    let (status, code, message) = match status {
        414 => (
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            "the request URI is too long",
        ),
        431 => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "the request headers are too large",
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "malformed HTTP request",
        ),
    };
    raw_answer(status, "", &envelope(code, message))
}

/// Raises the open-file soft limit to the hard limit (each connection is a descriptor; the
/// common default of 1,024 is a few hundred idle clients from an outage). Returns the soft
/// limit in force afterwards, `None` where the platform has no such limit or it cannot be
/// read. Logs both limits.
pub fn raise_nofile_limit() -> Option<u64> {
    let (soft, hard) = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            warn!(error = %e, "cannot read the open-file limit");
            return None;
        }
    };
    match rlimit::increase_nofile_limit(hard) {
        Ok(now) => {
            info!(
                before = soft,
                soft = now,
                hard,
                "open-file limit (soft raised to the hard limit)"
            );
            Some(now)
        }
        Err(e) => {
            warn!(error = %e, soft, hard, "cannot raise the open-file soft limit");
            Some(soft)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_fits_the_open_file_limit() {
        assert_eq!(derived_cap(None), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(derived_cap(Some(1_048_576)), DEFAULT_MAX_CONNECTIONS);
        let at_1024 = derived_cap(Some(1024));
        assert!((64..1024).contains(&at_1024), "{at_1024}");
        assert_eq!(derived_cap(Some(100)), 64, "a floor, however low the limit");
    }

    #[test]
    fn raw_answers_are_complete_http_responses_with_the_envelope() {
        let text = String::from_utf8(capacity_answer()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(head.contains("retry-after: 1\r\n") && head.contains("connection: close"));
        assert!(head.contains(&format!("content-length: {}\r\n", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "overloaded");
        assert!(v["error"]["request_id"].as_str().is_some());
        let text = String::from_utf8(parse_error_answer(414)).unwrap();
        assert!(text.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{text}");
        assert!(text.contains(r#""code":"uri_too_long""#));
    }

    /// Handlers see the peer's address as `ConnectInfo<SocketAddr>`, as with
    /// `into_make_service_with_connect_info` under `axum::serve`.
    #[tokio::test]
    async fn handlers_get_the_peer_address_and_stop_drains_the_server() {
        use axum::routing::get;
        let router = Router::new().route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        let config = EdgeConfig {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 8,
        };
        let edge = Edge::new(config, &Registry::new()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve(listener, router, edge.clone(), stopped));

        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let local = tcp.local_addr().unwrap();
        tcp.write_all(b"GET /peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(&local.to_string()), "{answer}");

        let _ = stop.send(true);
        tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("the server drains")
            .unwrap()
            .unwrap();
        assert!(edge.unready_reason().unwrap().contains("draining"));
    }

    #[test]
    fn the_log_throttle_admits_one_line_per_interval_and_counts_the_rest() {
        let t = LogThrottle::new();
        let started = Instant::now();
        assert_eq!(t.admit(started), Some(0));
        assert_eq!(t.admit(started), None);
        assert_eq!(t.admit(started), None);
        assert_eq!(t.suppressed.load(Ordering::Relaxed), 2);
    }
}
