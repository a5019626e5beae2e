//! The wire-level tests of the vendor fakes, one test binary: each module tests one fake on
//! real sockets and real time (the Telnyx fake's scripted caller has its own module). Every
//! test starts its own fake, so they run in parallel.

mod cartesia;
mod deepgram;
mod google;
mod groq;
mod hubspot;
mod lb;
mod telnyx;
mod telnyx_caller;

use std::time::{Duration, Instant};

/// Polls `f` every 10 ms until it holds or `timeout` passes; whether it held at the end.
async fn eventually(timeout: Duration, f: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}
