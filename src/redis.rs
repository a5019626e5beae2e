//! Redis connection helpers (fred 10).
//!
//! [`connect`] builds a client from a `redis://` URL with the settings every IACE component
//! shares: a bounded connect (a Redis that is down or unreachable yields an error within about
//! [`CONNECT_TIMEOUT`] instead of hanging the process start), exponential reconnect backoff once
//! connected, and a default per-command timeout so that no caller waits forever on a Redis that
//! went away. [`ping`] is the cheap reachability check behind `/ready`.

use std::time::Duration;

use fred::clients::Client;
use fred::error::{Error, ErrorKind};
use fred::interfaces::ClientLike;
use fred::types::config::{Config, ConnectionConfig, PerformanceConfig, ReconnectPolicy};
use fred::types::Builder;

/// Upper bound on [`connect`]: TCP connect, handshake and a first `PING`, all together.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Timeout of each step of the first connection (TCP connect, `HELLO`/`AUTH`/`SELECT`),
/// below [`CONNECT_TIMEOUT`] so that fred's own error usually wins over the overall deadline.
const CONNECT_STEP_TIMEOUT: Duration = Duration::from_secs(4);

/// Default timeout applied to every command sent through the client.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Timeout of [`ping`].
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Reconnect backoff once connected: unlimited attempts, 100 ms doubling up to 5 s.
fn reconnect_policy() -> ReconnectPolicy {
    ReconnectPolicy::new_exponential(0, 100, 5_000, 2)
}

/// Connects to the Redis server at `url` (`redis://[user:pass@]host:port[/db]`).
///
/// Resolves once the server has answered a `PING`. A server that refuses the connection fails
/// fast; one that does not answer fails within [`CONNECT_TIMEOUT`]. After a successful start
/// the client reconnects on its own (exponential backoff, no attempt limit) and commands
/// issued while disconnected fail after [`COMMAND_TIMEOUT`] instead of queueing forever.
pub async fn connect(url: &str) -> Result<Client, Error> {
    let config = Config::from_url(url)?;
    let connection = ConnectionConfig {
        connection_timeout: CONNECT_STEP_TIMEOUT,
        internal_command_timeout: CONNECT_STEP_TIMEOUT,
        ..ConnectionConfig::default()
    };
    let performance = PerformanceConfig {
        default_command_timeout: COMMAND_TIMEOUT,
        ..PerformanceConfig::default()
    };
    let client = Builder::from_config(config)
        .set_policy(reconnect_policy())
        .set_connection_config(connection)
        .set_performance_config(performance)
        .build()?;

    // `init` fails fast on the first connection error (`fail_fast` is fred's default). The
    // `PING` catches a peer that accepts TCP but is not a responsive Redis (without AUTH or
    // SELECT, `init` sends nothing), and the deadline bounds the whole sequence.
    let attempt = async {
        let _connection_task = client.init().await?;
        client.ping::<String>(None).await?;
        Ok::<(), Error>(())
    };
    let outcome = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "could not connect to Redis within {}s",
                CONNECT_TIMEOUT.as_secs()
            ),
        )),
    };
    match outcome {
        Ok(()) => Ok(client),
        Err(e) => {
            // Stop the connection task so it does not keep reconnecting in the background.
            let _ = tokio::time::timeout(Duration::from_millis(500), client.quit()).await;
            Err(e)
        }
    }
}

/// Checks that Redis answers `PING` within [`PING_TIMEOUT`].
pub async fn ping(client: &Client) -> Result<(), String> {
    match tokio::time::timeout(PING_TIMEOUT, client.ping::<String>(None)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("redis ping failed: {e}")),
        Err(_) => Err(format!(
            "redis ping timed out after {}ms",
            PING_TIMEOUT.as_millis()
        )),
    }
}
