//! Benchmark: an unauthenticated sign-in flood against one server, and what it costs the
//! server's memory and everyone else's latency.
//!
//! The server runs as a child process (this example re-run with `--serve`), so its resident
//! memory is its own: `VmRSS` / `VmHWM` from `/proc/<pid>/status`. `--clients` (1,000)
//! concurrent clients sign in with random unknown emails for `--secs` (30) while a prober reads
//! `/health` and `GET /v1/agents` (with an API key) every 100 ms; then the server idles for
//! `--after` (30) seconds and its memory is read again. Two runs, each on a fresh server: the
//! default sign-in budgets (30 per address and 1,200 for the deployment per minute: nearly
//! every attempt is a fast 429), and the budgets off (only the password pool bounds the work).
//!
//! ```text
//! scripts/services up && eval "$(scripts/services env)"
//! cargo run --release --example signin_flood -- [--clients 1000] [--secs 30] [--after 30]
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iace::config::{SecurityArgs, ServeArgs};

mod common;
use common::{arg, percentile};

/// `VmRSS` and `VmHWM` of a process (bytes).
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The child: a server on `db` with the sign-in budgets on or off; prints its address, serves
/// until its standard input closes (the parent exited or is done with it).
async fn serve(db: &str, budgets: bool) -> anyhow::Result<()> {
    let redis = std::env::var("REDIS_URL")?;
    let mut args = ServeArgs::local(db, &redis, "127.0.0.1:0".parse()?);
    let defaults = SecurityArgs::default();
    args.security = SecurityArgs {
        jwt_secret: Some(iace::auth::generate_password() + &iace::auth::generate_password()),
        plan_limits: true,
        // Windows of its own: the two runs and other servers on this Redis do not share them.
        rate_limit_prefix: format!("iace:bench:{}:rl:", uuid::Uuid::new_v4().simple()),
        signin_address_limit: if budgets {
            defaults.signin_address_limit
        } else {
            0
        },
        signin_global_limit: if budgets {
            defaults.signin_global_limit
        } else {
            0
        },
        ..defaults
    };
    args.sim_key_prefix = format!("iace:bench:{}:", uuid::Uuid::new_v4().simple());
    let server = iace::app::start(args).await?;
    println!("LISTENING {}", server.addr);
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
    })
    .await?;
    server.shutdown().await;
    Ok(())
}

struct ChildServer {
    child: Child,
    base: String,
}

impl ChildServer {
    fn start(db: &str, budgets: bool) -> anyhow::Result<ChildServer> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--serve", db, if budgets { "on" } else { "off" }])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("LISTENING ")
            .ok_or_else(|| anyhow::anyhow!("the server did not start: {line}"))?;
        Ok(ChildServer {
            base: format!("http://{addr}"),
            child,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct Probe {
    latencies: Vec<Duration>,
    statuses: BTreeMap<String, u64>,
}

fn summary(p: &mut Probe) -> String {
    p.latencies.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} ({:?})",
        ms(percentile(&p.latencies, 50.0)),
        ms(percentile(&p.latencies, 99.0)),
        ms(p.latencies.last().copied().unwrap_or_default()),
        p.latencies.len(),
        p.statuses
    )
}

async fn run(db: &str, key: &str, budgets: bool, clients: usize, secs: u64, after: u64) {
    let server = ChildServer::start(db, budgets).expect("starting the server");
    let pid = server.pid();
    let base = server.base.clone();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // Warm up: one sign-in (the pool's first use) and one read.
    let _ = http
        .post(format!("{base}/v1/auth/login"))
        .json(&serde_json::json!({"email": "warm@example.com", "password": "warm up password"}))
        .send()
        .await;
    let _ = http
        .get(format!("{base}/v1/agents"))
        .bearer_auth(key)
        .send()
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (baseline, _) = memory(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(memory(pid).0, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let probes: Vec<_> = [("/health", None), ("/v1/agents", Some(key.to_owned()))]
        .into_iter()
        .map(|(path, bearer)| {
            let (stop, http, url) = (stop.clone(), http.clone(), format!("{base}{path}"));
            tokio::spawn(async move {
                let mut probe = Probe::default();
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let mut req = http.get(&url);
                    if let Some(b) = &bearer {
                        req = req.bearer_auth(b);
                    }
                    let status = match req.send().await {
                        Ok(r) => {
                            let s = r.status().as_u16().to_string();
                            let _ = r.bytes().await;
                            s
                        }
                        Err(e) => format!("error: {e}"),
                    };
                    probe.latencies.push(at.elapsed());
                    *probe.statuses.entry(status).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                probe
            })
        })
        .collect();

    let statuses = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let login_latency = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let flood: Vec<_> = (0..clients)
        .map(|_| {
            let (http, statuses, lat) = (http.clone(), statuses.clone(), login_latency.clone());
            let url = format!("{base}/v1/auth/login");
            tokio::spawn(async move {
                let mut mine = BTreeMap::<String, u64>::new();
                let mut times = Vec::new();
                while Instant::now() < until {
                    let email = format!("flood-{}@example.com", uuid::Uuid::new_v4().simple());
                    let at = Instant::now();
                    let status = match http
                        .post(&url)
                        .json(&serde_json::json!({"email": email, "password": "a guess of twelve"}))
                        .send()
                        .await
                    {
                        Ok(r) => {
                            let s = r.status().as_u16().to_string();
                            let _ = r.bytes().await;
                            s
                        }
                        Err(e) if e.is_timeout() => "timeout".to_owned(),
                        Err(_) => "connection error".to_owned(),
                    };
                    times.push(at.elapsed());
                    *mine.entry(status).or_default() += 1;
                }
                let mut all = statuses.lock().unwrap();
                for (s, n) in mine {
                    *all.entry(s).or_default() += n;
                }
                lat.lock().unwrap().extend(times);
            })
        })
        .collect();
    for f in flood {
        let _ = f.await;
    }
    let flood_secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let mut probed = Vec::new();
    for p in probes {
        probed.push(p.await.unwrap());
    }
    let (_, hwm) = memory(pid);
    let peak = peak.load(Ordering::Relaxed).max(hwm);
    tokio::time::sleep(Duration::from_secs(after)).await;
    let (rested, _) = memory(pid);

    let statuses = statuses.lock().unwrap().clone();
    let total: u64 = statuses.values().sum();
    let mut lat = login_latency.lock().unwrap().clone();
    lat.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "\n== sign-in budgets {} ({clients} clients, {flood_secs:.0} s)",
        if budgets {
            "default (30/address, 1200/deployment per minute)"
        } else {
            "off (the password pool alone)"
        }
    );
    println!(
        "server RSS: baseline {:.0} MB, peak {:.0} MB (growth {:.0} MB), {after} s after the burst {:.0} MB (above baseline {:.0} MB)",
        mb(baseline),
        mb(peak),
        mb(peak.saturating_sub(baseline)),
        mb(rested),
        mb(rested.saturating_sub(baseline))
    );
    println!(
        "sign-ins: {total} ({:.0}/s), by status {statuses:?}; latency p50 {:.1} ms, p99 {:.1} ms",
        total as f64 / flood_secs,
        ms(percentile(&lat, 50.0)),
        ms(percentile(&lat, 99.0)),
    );
    let five_xx: u64 = statuses
        .iter()
        .filter(|(s, _)| s.starts_with('5') && s.as_str() != "503")
        .map(|(_, n)| n)
        .sum();
    println!("5xx other than the explicit 503 refusal: {five_xx}");
    for ((name, _), mut p) in [("GET /health", ()), ("GET /v1/agents", ())]
        .into_iter()
        .zip(probed)
    {
        println!("{name:<16} {}", summary(&mut p));
    }
    drop(server);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        let db = args.get(i + 1).expect("--serve DB on|off");
        let budgets = args.get(i + 2).is_some_and(|m| m == "on");
        return serve(db, budgets).await;
    }
    let clients = arg("--clients", 1000);
    let secs = arg("--secs", 30) as u64;
    let after = arg("--after", 30) as u64;
    let base = std::env::var("DATABASE_URL").map_err(|_| {
        anyhow::anyhow!("DATABASE_URL is not set: eval \"$(scripts/services env)\"")
    })?;
    let admin = sqlx::PgPool::connect(&base).await?;
    let name = format!("iace_bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    let db = format!("{}/{name}", &base[..base.rfind('/').unwrap_or(base.len())]);
    // Migrates the database; the API key reads agents in the probes (enterprise plan: its
    // request budget is never the limit here).
    let (org, key) = iace::app::create_org(&db, "Flood").await?;
    let pool = sqlx::PgPool::connect(&db).await?;
    sqlx::query("UPDATE organization SET plan = 'enterprise' WHERE id = $1")
        .bind(org.id)
        .execute(&pool)
        .await?;
    pool.close().await;
    println!(
        "signin_flood: {clients} clients, {secs} s flood, memory read again {after} s after; cores: {}",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    for budgets in [true, false] {
        run(&db, &key, budgets, clients, secs, after).await;
    }
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await?;
    Ok(())
}
