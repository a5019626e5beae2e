//! The lifecycle every wire-level vendor fake shares: the server on a loopback port with its
//! stop signal ([`Served`]), tasks that end with it, a bounded shutdown of the server task, and
//! the polling helper their `wait_for` uses.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A fake's server on `127.0.0.1:0`: its address, its stop signal and its task. Dropping it
/// drops the signal's sender, which stops the server and everything watching the signal (just
/// without waiting, as [`Served::shutdown`] does).
pub(crate) struct Served {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: JoinHandle<io::Result<()>>,
}

impl Served {
    /// Binds `127.0.0.1:0` and serves the router `build` returns. `build` gets the stop signal
    /// for the fake's state (stalled requests and spawned tasks watch it) and returns that state
    /// with the router.
    pub(crate) async fn start<S>(
        build: impl FnOnce(watch::Receiver<bool>) -> io::Result<(S, axum::Router)>,
    ) -> io::Result<(S, Served)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let (state, app) = build(stop_rx.clone())?;
        let server = tokio::spawn(async move {
            crate::serve(listener, app)
                .with_graceful_shutdown(stopped(stop_rx))
                .await
        });
        Ok((state, Served { addr, stop, server }))
    }

    /// The socket the server listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server, giving in-flight requests up to 2 s (see [`shut_down`]).
    pub(crate) async fn shutdown(self) {
        shut_down(&self.stop, self.server).await;
    }
}

/// A fake whose request log can mark a request abandoned by its client.
pub(crate) trait CancelRequest {
    /// Marks request `idx` as abandoned by its client, unless it already finished.
    fn cancel(&self, idx: usize);
}

/// Marks the request cancelled if hyper drops the handler (the client went away) before the
/// answer was handed over; the handler disarms it once it has answered.
pub(crate) struct CancelOnDrop<S: CancelRequest> {
    pub(crate) shared: Arc<S>,
    pub(crate) idx: usize,
    pub(crate) armed: bool,
}

impl<S: CancelRequest> Drop for CancelOnDrop<S> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.cancel(self.idx);
        }
    }
}

/// Resolves once the stop signal is raised (or its sender is gone).
pub(crate) async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Spawns `fut` so that it is dropped when the fake stops.
pub(crate) fn spawn_until_stopped<F>(stop: &watch::Receiver<bool>, fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = fut => {}
            () = stopped(stop) => {}
        }
    });
}

/// Raises the stop signal and gives the server task up to 2 s to finish in-flight requests
/// before aborting it.
pub(crate) async fn shut_down(stop: &watch::Sender<bool>, mut server: JoinHandle<io::Result<()>>) {
    let _ = stop.send(true);
    if tokio::time::timeout(Duration::from_secs(2), &mut server)
        .await
        .is_err()
    {
        server.abort();
    }
}

/// Polls `f` every 10 ms until it holds (true) or `timeout` passes (false).
pub(crate) async fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The trace headers a request came with (W3C `traceparent`, `x-request-id`), as received: the
/// fakes record them so tests can check that a client forwards its trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    /// The raw `traceparent` header.
    pub traceparent: Option<String>,
    /// The raw `x-request-id` header.
    pub request_id: Option<String>,
}

impl TraceHeaders {
    /// Reads them from a request's headers.
    pub fn of(headers: &axum::http::HeaderMap) -> TraceHeaders {
        let get = |name: &str| {
            headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        TraceHeaders {
            traceparent: get("traceparent"),
            request_id: get("x-request-id"),
        }
    }

    /// The trace id of `traceparent` (32 hex digits), when it has one.
    pub fn trace_id(&self) -> Option<&str> {
        let tp = self.traceparent.as_deref()?;
        let mut parts = tp.split('-');
        let _version = parts.next()?;
        parts.next().filter(|t| t.len() == 32)
    }

    /// The parent span id of `traceparent` (16 hex digits), when it has one.
    pub fn parent_id(&self) -> Option<&str> {
        let tp = self.traceparent.as_deref()?;
        tp.split('-').nth(2).filter(|s| s.len() == 16)
    }
}
