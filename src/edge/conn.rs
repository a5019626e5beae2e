//! One API connection's life as the edge sees it: which phase it is in (idle, reading a
//! request's headers, reading its body, busy, upgraded), the socket wrapper that observes
//! reads and writes, and the body wrappers that tell when a request's body and a response end.
//!
//! hyper's own `header_read_timeout` starts when it begins waiting for a request, so on a
//! keep-alive connection it is also the idle timeout; the phases here keep the two apart
//! (an idle connection may wait 60 s for its next request, a started one has 10 s to finish
//! its headers) and add the body deadline hyper does not have.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Where a connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    /// No request in flight and no byte of the next one yet.
    Idle = 0,
    /// The first bytes of a request arrived; its headers are not complete.
    Header = 1,
    /// The handler runs and the request's body has not all arrived.
    Body = 2,
    /// The handler runs (or its response is written) and the body is complete.
    Busy = 3,
    /// Switched protocols (WebSocket): the edge's timeouts no longer apply.
    Upgraded = 4,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Idle,
            1 => Phase::Header,
            2 => Phase::Body,
            3 => Phase::Busy,
            _ => Phase::Upgraded,
        }
    }

    /// Label of `iace_http_connections_timed_out_total{phase}`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Header => "header",
            Phase::Body => "body",
            Phase::Busy => "busy",
            Phase::Upgraded => "upgraded",
        }
    }
}

/// The three deadlines of a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub header: Duration,
    pub body: Duration,
    pub idle: Duration,
}

/// Milliseconds since the first call: phase start times fit in an atomic.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Shared by the socket wrapper, the request and response bodies and the connection's
/// watcher task. Atomics, not a lock: the socket wrapper updates it on every read.
pub(crate) struct ConnState {
    phase: AtomicU8,
    /// When the current phase began (ms, see [`now_ms`]).
    since: AtomicU64,
    /// A response's body ended; the connection turns idle at the next completed flush
    /// (hyper writes a small response only when it flushes, after dropping its body).
    response_ended: AtomicU8,
    /// Woken when the phase changes, so the watcher sleeps on the right deadline.
    pub(crate) changed: Notify,
}

impl ConnState {
    pub(crate) fn new() -> Arc<ConnState> {
        Arc::new(ConnState {
            phase: AtomicU8::new(Phase::Idle as u8),
            since: AtomicU64::new(now_ms()),
            response_ended: AtomicU8::new(0),
            changed: Notify::new(),
        })
    }

    pub(crate) fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    fn set(&self, phase: Phase) {
        if self.phase() == Phase::Upgraded {
            return;
        }
        self.since.store(now_ms(), Ordering::Release);
        self.phase.store(phase as u8, Ordering::Release);
        self.changed.notify_one();
    }

    /// A request reached the service.
    pub(crate) fn request_started(&self, body_complete: bool) {
        self.response_ended.store(0, Ordering::Release);
        self.set(if body_complete {
            Phase::Busy
        } else {
            Phase::Body
        });
    }

    /// The request's body ended (or the handler dropped it).
    pub(crate) fn body_finished(&self) {
        if self.phase() == Phase::Body {
            self.set(Phase::Busy);
        }
    }

    pub(crate) fn upgraded(&self) {
        self.set(Phase::Upgraded);
    }

    fn response_ended(&self) {
        self.response_ended.store(1, Ordering::Release);
    }

    fn flushed(&self) {
        if self.response_ended.swap(0, Ordering::AcqRel) == 1 {
            self.set(Phase::Idle);
        }
    }

    fn bytes_read(&self) {
        if self.phase() == Phase::Idle {
            self.set(Phase::Header);
        }
    }

    /// When the current phase's deadline passes (`None`: no deadline).
    pub(crate) fn deadline(&self, t: &Timeouts) -> Option<(Phase, Instant)> {
        let phase = self.phase();
        let limit = match phase {
            Phase::Idle => t.idle,
            Phase::Header => t.header,
            Phase::Body => t.body,
            Phase::Busy | Phase::Upgraded => return None,
        };
        let since = self.since.load(Ordering::Acquire);
        let elapsed = Duration::from_millis(now_ms().saturating_sub(since));
        Some((phase, Instant::now() + limit.saturating_sub(elapsed)))
    }
}

/// Releases one slot of the open-connection count when the socket closes: it lives inside
/// the socket wrapper, so an upgraded WebSocket keeps its slot until the stream ends.
pub(crate) struct Slot(pub(crate) Box<dyn Fn() + Send + Sync>);

impl Drop for Slot {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// The accepted socket, observed: a read that starts a request moves the connection out of
/// idle; a flush that completes a response moves it back; and an answer hyper writes before
/// any request reached the service (its automatic 400, 414 and 431 for a request it cannot
/// parse) is replaced by the same status with the error envelope.
pub(crate) struct TrackedIo {
    tcp: TcpStream,
    state: Arc<ConnState>,
    /// Our replacement for hyper's bare error answer, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
    _slot: Slot,
}

impl TrackedIo {
    pub(crate) fn new(tcp: TcpStream, state: Arc<ConnState>, slot: Slot) -> TrackedIo {
        TrackedIo {
            tcp,
            state,
            replacement: None,
            _slot: slot,
        }
    }

    /// hyper writes without a request in service only for a request it could not parse.
    fn answering_parse_error(&self) -> bool {
        matches!(self.state.phase(), Phase::Idle | Phase::Header)
    }

    /// Writes what is left of the replacement; `Ready(Ok)` once it is all out.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some((bytes, written)) = &mut self.replacement {
            while *written < bytes.len() {
                let n =
                    std::task::ready!(Pin::new(&mut self.tcp).poll_write(cx, &bytes[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Takes hyper's bytes: the first write of its error answer names the status; every
    /// byte of it is swallowed and ours goes out instead.
    fn replace(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.replacement.is_none() {
            let status = buf
                .get(9..12)
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.parse::<u16>().ok())
                .unwrap_or(400);
            self.replacement = Some((super::parse_error_answer(status), 0));
        }
        std::task::ready!(self.poll_replacement(cx))?;
        Poll::Ready(Ok(buf.len()))
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.bytes_read();
        }
        r
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.replacement.is_some() || self.answering_parse_error() {
            return self.replace(cx, buf);
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.replacement.is_some() || self.answering_parse_error() {
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            return match self.replace(cx, first) {
                Poll::Ready(Ok(_)) => Poll::Ready(Ok(total)),
                other => other,
            };
        }
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_replacement(cx))?;
        let r = Pin::new(&mut self.tcp).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            self.state.flushed();
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A request body that tells the connection when it has all arrived.
pub(crate) struct RequestBody<B> {
    inner: B,
    state: Arc<ConnState>,
}

impl<B> RequestBody<B> {
    pub(crate) fn new(inner: B, state: Arc<ConnState>) -> Self {
        RequestBody { inner, state }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for RequestBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None | Some(Err(_)))) || self.inner.is_end_stream() {
            self.state.body_finished();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for RequestBody<B> {
    /// A handler that answers without reading the body is not waiting for it.
    fn drop(&mut self) {
        self.state.body_finished();
    }
}

/// A response body that tells the connection when it has been handed to hyper in full.
pub(crate) struct ResponseBody<B> {
    inner: B,
    state: Arc<ConnState>,
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B, state: Arc<ConnState>) -> Self {
        ResponseBody { inner, state }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for ResponseBody<B> {
    fn drop(&mut self) {
        self.state.response_ended();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts() -> Timeouts {
        Timeouts {
            header: Duration::from_secs(10),
            body: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_connection_walks_idle_header_body_busy_and_back_to_idle_after_the_flush() {
        let s = ConnState::new();
        let t = timeouts();
        assert_eq!(s.deadline(&t).unwrap().0, Phase::Idle);
        s.bytes_read();
        assert_eq!(s.phase(), Phase::Header);
        s.bytes_read();
        assert_eq!(
            s.phase(),
            Phase::Header,
            "more header bytes stay in the phase"
        );
        s.request_started(false);
        assert_eq!(s.phase(), Phase::Body);
        s.body_finished();
        assert_eq!(s.phase(), Phase::Busy);
        assert!(
            s.deadline(&t).is_none(),
            "a running handler has no deadline"
        );
        s.flushed();
        assert_eq!(
            s.phase(),
            Phase::Busy,
            "a flush mid-response is not its end"
        );
        s.response_ended();
        s.flushed();
        assert_eq!(s.phase(), Phase::Idle);
    }

    #[test]
    fn an_upgraded_connection_never_leaves_the_phase() {
        let s = ConnState::new();
        s.request_started(true);
        s.upgraded();
        s.response_ended();
        s.flushed();
        s.bytes_read();
        assert_eq!(s.phase(), Phase::Upgraded);
        assert!(s.deadline(&timeouts()).is_none());
    }
}
