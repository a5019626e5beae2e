//! Benchmark: what authentication and plan limits add to an API request, end to end over
//! HTTP. Two servers in this process on the same local Postgres and Redis, one with plan
//! limits on (two Redis checks per request: the key's budget and the organization's) and one
//! with them off; the same authenticated read (`GET /v1/agents`) against each, sequentially
//! and with concurrent clients, with an API key and with an access token. With `--calls`, the
//! request is a call create instead (`POST /v1/calls`, to a number the simulated carrier
//! rejects at dial so calls end at once), where plan limits also take the organization's
//! live-call lock and count in the insert's transaction.
//!
//! ```text
//! scripts/services up && eval "$(scripts/services env)"
//! cargo run --release --example auth_overhead -- --requests 1000 --concurrency 16 [--calls]
//! ```

use std::time::{Duration, Instant};

use iace::config::{SecurityArgs, ServeArgs};

mod common;
use common::{arg, percentile};

struct Figures {
    p50: Duration,
    p99: Duration,
    per_second: f64,
}

/// `requests` requests split over `concurrency` clients: GETs, or POSTs of `body`.
async fn run(
    url: &str,
    body: Option<&serde_json::Value>,
    bearer: &str,
    requests: usize,
    concurrency: usize,
) -> Figures {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, url, bearer) = (http.clone(), url.to_owned(), bearer.to_owned());
        let body = body.cloned();
        let n = requests / concurrency;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            for _ in 0..n {
                let at = Instant::now();
                let req = match &body {
                    Some(b) => http.post(&url).json(b),
                    None => http.get(&url),
                };
                let r = req.bearer_auth(&bearer).send().await.unwrap();
                assert!(r.status().is_success(), "{}", r.status());
                r.bytes().await.unwrap();
                lat.push(at.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    lat.sort_unstable();
    Figures {
        p50: percentile(&lat, 50.0),
        p99: percentile(&lat, 99.0),
        per_second: lat.len() as f64 / elapsed.as_secs_f64(),
    }
}

/// One server under test with a database and an enterprise organization of its own (two
/// servers on one database would both claim every shard, and calls need their shards).
struct Target {
    limits: bool,
    server: iace::app::Running,
    db: String,
    name: String,
    org: uuid::Uuid,
    owner: String,
    base: String,
}

impl Target {
    async fn start(
        admin: &sqlx::PgPool,
        base_url: &str,
        redis: &str,
        secret: &str,
        limits: bool,
    ) -> anyhow::Result<Target> {
        let name = format!("iace_bench_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(admin)
            .await?;
        let db = format!(
            "{}/{name}",
            &base_url[..base_url.rfind('/').unwrap_or(base_url.len())]
        );
        let mut args = ServeArgs::local(&db, redis, "127.0.0.1:0".parse()?);
        args.security = SecurityArgs {
            jwt_secret: Some(secret.to_owned()),
            plan_limits: limits,
            ..SecurityArgs::default()
        };
        args.node_id = Some(format!("bench-{limits}"));
        // Each server's simulated carrier keeps its legs apart on the shared Redis.
        args.sim_key_prefix = format!("iace:bench:{name}:");
        let server = iace::app::start(args).await?;
        let (org, owner) = iace::app::create_org(&db, "Bench").await?;
        // The largest plan and high-tier keys: the budgets are checked, never exhausted.
        let pool = sqlx::PgPool::connect(&db).await?;
        sqlx::query("UPDATE organization SET plan = 'enterprise' WHERE id = $1")
            .bind(org.id)
            .execute(&pool)
            .await?;
        pool.close().await;
        let base = format!("http://{}", server.addr);
        Ok(Target {
            limits,
            server,
            db,
            name,
            org: org.id,
            owner,
            base,
        })
    }

    /// A fresh credential (every row's budget, a high-tier key: 6,000/min, a user on
    /// enterprise: 1,200/min, is checked on every request and never exhausted).
    async fn credential(
        &self,
        http: &reqwest::Client,
        kind: &str,
        n: usize,
    ) -> anyhow::Result<String> {
        if kind == "api key" {
            let key: serde_json::Value = http
                .post(format!("{}/v1/api-keys", self.base))
                .bearer_auth(&self.owner)
                .json(&serde_json::json!({"name": "bench", "role": "member", "tier": "high"}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            return Ok(key["api_key"].as_str().unwrap_or_default().to_owned());
        }
        let email = format!("bench{n}@example.com");
        let password = "benchmark password 123";
        iace::app::create_user(&self.db, self.org, &email, "member", Some(password.into())).await?;
        let login: serde_json::Value = http
            .post(format!("{}/v1/auth/login", self.base))
            .json(&serde_json::json!({"email": email, "password": password}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(login["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// What the measured request sends: nothing for the read, a call for `--calls` (to a
    /// `...0400` number the simulated carrier rejects at dial, so calls end at once and the
    /// live count stays far below the enterprise plan's 1,000).
    async fn body(
        &self,
        http: &reqwest::Client,
        calls: bool,
    ) -> anyhow::Result<Option<serde_json::Value>> {
        if !calls {
            return Ok(None);
        }
        let agent: serde_json::Value = http
            .post(format!("{}/v1/agents", self.base))
            .bearer_auth(&self.owner)
            .json(&serde_json::json!({"name": "Bench"}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(Some(
            serde_json::json!({"to": "+14155550400", "from": "+14155550199",
            "agent_id": agent["id"]}),
        ))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let requests = arg("--requests", 1000);
    let concurrency = arg("--concurrency", 16).max(1);
    let calls = std::env::args().any(|a| a == "--calls");
    let base = std::env::var("DATABASE_URL").map_err(|_| {
        anyhow::anyhow!("DATABASE_URL is not set: eval \"$(scripts/services env)\"")
    })?;
    let redis = std::env::var("REDIS_URL")?;
    let admin = sqlx::PgPool::connect(&base).await?;
    let secret = iace::auth::generate_password() + &iace::auth::generate_password();
    let mut targets = Vec::new();
    for limits in [true, false] {
        targets.push(Target::start(&admin, &base, &redis, &secret, limits).await?);
    }
    let http = reqwest::Client::new();
    let mut bodies = Vec::new();
    for t in &targets {
        bodies.push(t.body(&http, calls).await?);
    }
    let path = if calls { "/v1/calls" } else { "/v1/agents" };
    println!(
        "{} {path}, {requests} requests per row (after 100 to warm up), enterprise plan",
        if calls { "POST" } else { "GET" }
    );
    println!(
        "{:<12} {:<13} {:>5} {:>10} {:>10} {:>10}",
        "credential", "plan limits", "conc", "p50 us", "p99 us", "req/s"
    );
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mut n = 0;
    for kind in ["api key", "access token"] {
        for conc in [1, concurrency] {
            // Off, on, off, on: each server's second run is reported, so warm caches and
            // order favour neither.
            let mut results = Vec::new();
            let order = [1, 0, 1, 0];
            for i in order {
                let t = &targets[i];
                n += 1;
                let bearer = t.credential(&http, kind, n).await?;
                let url = format!("{}{path}", t.base);
                run(&url, bodies[i].as_ref(), &bearer, 100, conc).await;
                let figures = run(&url, bodies[i].as_ref(), &bearer, requests, conc).await;
                results.push((t.limits, figures));
            }
            for (limits, f) in results.into_iter().skip(2) {
                println!(
                    "{kind:<12} {:<13} {conc:>5} {:>10.0} {:>10.0} {:>10.0}",
                    if limits { "on" } else { "off" },
                    us(f.p50),
                    us(f.p99),
                    f.per_second
                );
            }
        }
    }
    for t in targets {
        t.server.shutdown().await;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", t.name))
            .execute(&admin)
            .await?;
    }
    Ok(())
}
