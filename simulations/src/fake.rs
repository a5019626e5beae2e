//! The lifecycle every wire-level vendor fake shares: a stop signal, tasks that end with it,
//! a bounded shutdown of the server task, and the polling helper their `wait_for` uses.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

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
