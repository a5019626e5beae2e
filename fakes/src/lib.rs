//! Wire-level fakes of IACE's vendors. Each runs on a loopback port with real sockets and real
//! time (never inside a seeded simulation of `iace-sim`), speaks the vendor's wire protocol
//! closely enough for the real clients of the `iace` server, and records what it saw for the
//! tests to inspect. They serve the integration tests, the examples and benchmarks, and the dev
//! world (`iace-dev`).
//!
//! Modules, in reading order:
//! - `fake`: the lifecycle every fake shares (server on a loopback port, stop signal, bounded
//!   shutdown, polling helper);
//! - [`telnyx`]: Telnyx Call Control v2 commands, signed webhooks with retries and delivery
//!   faults, media streams at 20 ms pacing, and a scripted caller;
//! - [`deepgram`]: live speech-to-text over WebSocket, scripted lines driven by audio energy;
//! - [`cartesia`]: speech synthesis over WebSocket and HTTP;
//! - [`groq`]: chat completions with SSE streaming and tool calls;
//! - [`google`]: Gemini embeddings (deterministic vectors), the learning pipeline's vendor;
//! - [`hubspot`]: the CRM v3 contacts search over seeded contacts, the CRM sync's vendor;
//! - [`lb`]: not a vendor but the cluster's front door, an HTTP load balancer modelled on
//!   haproxy (round robin, health checks of `/ready`, redispatch, WebSocket tunnels) for
//!   loopback tests and benchmarks of several nodes, also run as the `iace-lb` binary.

pub mod cartesia;
pub mod deepgram;
mod fake;
pub use fake::TraceHeaders;
pub mod google;
pub mod groq;
pub mod hubspot;
pub mod lb;
pub mod telnyx;

/// A fake's server with Nagle's algorithm off (see [`serve`]).
pub(crate) type NoDelayServe = axum::serve::Serve<
    axum::serve::TapIo<tokio::net::TcpListener, fn(&mut tokio::net::TcpStream)>,
    axum::Router,
    axum::Router,
>;

/// Serves a fake's router with Nagle's algorithm off on every accepted connection, as real
/// vendors' edges do: otherwise a streamed response's small writes (an SSE token, an audio
/// chunk) wait for the client's delayed ACK, 40 ms on Linux, and the benchmarks would be
/// measuring that.
pub(crate) fn serve(listener: tokio::net::TcpListener, app: axum::Router) -> NoDelayServe {
    use axum::serve::ListenerExt;
    fn no_delay(tcp: &mut tokio::net::TcpStream) {
        // Best effort: a socket that refuses the option still works, only slower.
        let _ = tcp.set_nodelay(true);
    }
    axum::serve(
        listener.tap_io(no_delay as fn(&mut tokio::net::TcpStream)),
        app,
    )
}
