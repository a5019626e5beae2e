//! `iace-lb`: the load balancer of `iace_fakes::lb` on a chosen port, for scripts, benchmarks
//! and trying a cluster of `iace serve` nodes on one machine without haproxy:
//!
//! ```text
//! iace-lb --listen 127.0.0.1:8080 --backend http://127.0.0.1:8081 --backend http://127.0.0.1:8082
//! ```
//!
//! It logs backends going down and up (`RUST_LOG`, default `info`), and on SIGTERM or ctrl-c
//! stops accepting, lets requests in flight finish (`--drain-secs`), logs its counters and
//! exits 0. Not a production proxy (no TLS, no client timeouts): deployments use haproxy
//! (deploy/haproxy.cfg).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use iace_fakes::lb::{LoadBalancer, LoadBalancerConfig};
use tracing_subscriber::EnvFilter;

/// Round-robin HTTP/1.1 load balancer with `/ready` health checks and redispatch.
#[derive(Debug, Parser)]
#[command(name = "iace-lb", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// A backend's base URL, `http://host:port`; repeat it for every node.
    #[arg(long = "backend", required = true)]
    backends: Vec<String>,
    /// Time between two health checks of a backend (ms).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    check_interval_ms: u64,
    /// Longest a health check may take (ms).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    check_timeout_ms: u64,
    /// Path of the health check; only a 200 answer passes.
    #[arg(long, default_value = "/ready")]
    check_path: String,
    /// Failed checks in a row that take a backend down.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    fall: u32,
    /// Passed checks in a row that bring a backend back up.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    rise: u32,
    /// Redispatches of a request no backend connection took (connection refused or reset
    /// before any byte was sent).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=100))]
    retries: u32,
    /// Longest wait for a TCP connection to a backend (ms).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    connect_timeout_ms: u64,
    /// On SIGTERM or ctrl-c, how long requests in flight may finish (s).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=600))]
    drain_secs: u64,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let config = LoadBalancerConfig {
        backends: args.backends,
        check_interval: Duration::from_millis(args.check_interval_ms),
        check_timeout: Duration::from_millis(args.check_timeout_ms),
        check_path: args.check_path,
        fall: args.fall,
        rise: args.rise,
        retries: args.retries,
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        drain_timeout: Duration::from_secs(args.drain_secs),
        ..LoadBalancerConfig::default()
    };
    let lb = LoadBalancer::bind(args.listen, config).await?;
    let backends: Vec<String> = lb.stats().backends.into_iter().map(|b| b.url).collect();
    tracing::info!(listen = %lb.addr(), ?backends, "iace-lb: balancing");
    shutdown_signal().await;
    let stats = lb.stats();
    tracing::info!("iace-lb: stopping, draining requests in flight");
    lb.shutdown().await;
    for b in &stats.backends {
        tracing::info!(backend = %b.url, up = b.up, requests = b.requests, "iace-lb: backend");
    }
    tracing::info!(
        retries = stats.retries,
        server_errors = stats.server_errors,
        "iace-lb: stopped"
    );
    Ok(())
}

/// Resolves on ctrl-c or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "iace-lb: cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "iace-lb: cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
