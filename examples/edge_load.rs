//! Benchmark: `/health` latency while clients hold connections open at the HTTP edge.
//! Opens `--idle` connections that say nothing and `--slow` connections that trickle request
//! headers a byte a second (reconnecting when the server closes them at its header timeout,
//! as a slow-headers client does), keeps them open, and measures `/health` with `--clients`
//! sequential clients for `--secs` seconds; first the same measurement without the held
//! connections as a baseline. Prints p50/p99/max and the server's connection counters.
//!
//! It starts a server in this process on a fresh database of the local Postgres, or, with
//! `--target HOST:PORT --metrics HOST:PORT`, measures a running one.
//!
//! ```text
//! scripts/services up && eval "$(scripts/services env)"
//! cargo run --release --example edge_load -- --idle 2000 --slow 200 --clients 4 --secs 30
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iace::config::ServeArgs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{arg, percentile};

/// The value after `name` on the command line.
fn text_arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

struct Figures {
    n: usize,
    errors: u64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

/// `clients` sequential `/health` loops for `secs`.
async fn measure(base: &str, clients: usize, secs: u64) -> Figures {
    let errors = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let url = format!("{base}/health");
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut lat = Vec::new();
            while Instant::now() < until {
                let at = Instant::now();
                match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(at.elapsed());
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap_or_default());
    }
    lat.sort_unstable();
    Figures {
        n: lat.len(),
        errors: errors.load(Ordering::Relaxed),
        p50: percentile(&lat, 50.0),
        p99: percentile(&lat, 99.0),
        max: lat.last().copied().unwrap_or_default(),
    }
}

fn print(what: &str, f: &Figures) {
    println!(
        "{what:<34} requests {:>7}  errors {:>4}  p50 {:>8.2?}  p99 {:>8.2?}  max {:>8.2?}",
        f.n, f.errors, f.p50, f.p99, f.max
    );
}

/// Opens `n` connections that never send a byte; returns them (open until dropped).
async fn idle_connections(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        match TcpStream::connect(addr).await {
            Ok(tcp) => held.push(tcp),
            Err(e) => {
                eprintln!("idle connection {i}: {e}");
                break;
            }
        }
    }
    held
}

/// `n` slow-headers clients until `stop`; returns how many connections they opened.
fn slow_clients(addr: &str, n: usize, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..n)
        .map(|_| {
            let (addr, stop) = (addr.to_owned(), stop.clone());
            tokio::spawn(async move {
                let mut opened = 0;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut tcp) = TcpStream::connect(&addr).await else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    opened += 1;
                    if tcp
                        .write_all(b"GET /health HTTP/1.1\r\nHost: bench\r\nX-Slow: ")
                        .await
                        .is_err()
                    {
                        continue;
                    }
                    while !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if tcp.write_all(b"a").await.is_err() {
                            break;
                        }
                        // A closed connection shows on the read side first.
                        let mut probe = [0u8; 1];
                        if let Ok(Ok(0) | Err(_)) =
                            tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut probe))
                                .await
                        {
                            break;
                        }
                    }
                }
                opened
            })
        })
        .collect()
}

/// The server's `iace_http_connections_*` series.
async fn counters(metrics_base: &str) -> Vec<String> {
    let Ok(r) = reqwest::get(format!("{metrics_base}/metrics")).await else {
        return vec!["(metrics listener unreachable)".into()];
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("iace_http_connections"))
        .map(str::to_owned)
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let idle = arg("--idle", 2000);
    let slow = arg("--slow", 200);
    let clients = arg("--clients", 4).max(1);
    let secs = arg("--secs", 30) as u64;
    // The client holds as many sockets as the server: it needs the raise as much.
    let nofile = iace::edge::raise_nofile_limit();
    println!("open-file limit of this process: {nofile:?}");

    let mut started = None;
    let (addr, metrics_base) = match (text_arg("--target"), text_arg("--metrics")) {
        (Some(target), Some(metrics)) => (target, format!("http://{metrics}")),
        (Some(_), None) | (None, Some(_)) => anyhow::bail!("--target and --metrics go together"),
        (None, None) => {
            let base_url = std::env::var("DATABASE_URL").map_err(|_| {
                anyhow::anyhow!("DATABASE_URL is not set: eval \"$(scripts/services env)\"")
            })?;
            let redis =
                std::env::var("REDIS_URL").map_err(|_| anyhow::anyhow!("REDIS_URL is not set"))?;
            let admin = sqlx::PgPool::connect(&base_url).await?;
            let name = format!("iace_bench_{}", uuid::Uuid::new_v4().simple());
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&admin)
                .await?;
            let db = format!(
                "{}/{name}",
                &base_url[..base_url.rfind('/').unwrap_or(base_url.len())]
            );
            let mut args = ServeArgs::local(&db, &redis, "127.0.0.1:0".parse()?);
            args.node_id = Some("edge-bench".into());
            args.sim_key_prefix = format!("iace:bench:{name}:");
            let running = iace::app::start(args).await?;
            let addr = running.addr.to_string();
            let metrics = format!(
                "http://{}",
                running.metrics_addr.expect("metrics listener on")
            );
            println!(
                "server in this process: {addr}, cap {} connections, timeouts header {:?} body {:?} idle {:?}",
                running.edge.config().max_connections,
                running.edge.config().header_timeout,
                running.edge.config().body_timeout,
                running.edge.config().idle_timeout,
            );
            started = Some((running, admin, name));
            (addr, metrics)
        }
    };
    let base = format!("http://{addr}");

    let baseline = measure(&base, clients, secs.min(10)).await;
    print("baseline (nothing held)", &baseline);

    let stop = Arc::new(AtomicBool::new(false));
    let held = idle_connections(&addr, idle).await;
    let slow_tasks = slow_clients(&addr, slow, stop.clone());
    // Let the slow clients connect before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "holding {} idle and {slow} slow-headers connections",
        held.len()
    );
    let loaded = measure(&base, clients, secs).await;
    print(
        &format!("with {} idle + {slow} slow held", held.len()),
        &loaded,
    );
    println!("server counters while held:");
    for line in counters(&metrics_base).await {
        println!("  {line}");
    }
    stop.store(true, Ordering::Relaxed);
    let mut opened = 0;
    for t in slow_tasks {
        opened += t.await.unwrap_or(0);
    }
    println!("slow-headers connections opened over the run: {opened}");
    drop(held);

    if let Some((running, admin, name)) = started {
        running.shutdown().await;
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&admin)
            .await;
    }
    Ok(())
}
