//! Benchmark: what authentication and plan limits add to an API request, end to end over
//! HTTP. Two servers in this process on the same local Postgres and Redis, one with plan
//! limits on (two Redis checks per request: the key's budget and the organization's) and one
//! with them off; the same authenticated read (`GET /v1/agents`) against each, sequentially
//! and with concurrent clients, with an API key and with an access token.
//!
//! ```text
//! scripts/services up && eval "$(scripts/services env)"
//! cargo run --release --example auth_overhead -- --requests 1000 --concurrency 16
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

/// `requests` GETs split over `concurrency` clients.
async fn run(url: &str, bearer: &str, requests: usize, concurrency: usize) -> Figures {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, url, bearer) = (http.clone(), url.to_owned(), bearer.to_owned());
        let n = requests / concurrency;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n);
            for _ in 0..n {
                let at = Instant::now();
                let r = http.get(&url).bearer_auth(&bearer).send().await.unwrap();
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let requests = arg("--requests", 1000);
    let concurrency = arg("--concurrency", 16).max(1);
    let base = std::env::var("DATABASE_URL").map_err(|_| {
        anyhow::anyhow!("DATABASE_URL is not set: eval \"$(scripts/services env)\"")
    })?;
    let redis = std::env::var("REDIS_URL")?;
    // A database of its own.
    let name = format!("iace_bench_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&base).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    let db = format!("{}/{name}", &base[..base.rfind('/').unwrap_or(base.len())]);

    let secret = iace::auth::generate_password() + &iace::auth::generate_password();
    let mut servers = Vec::new();
    for limits in [true, false] {
        let mut args = ServeArgs::local(&db, &redis, "127.0.0.1:0".parse()?);
        args.security = SecurityArgs {
            jwt_secret: Some(secret.clone()),
            plan_limits: limits,
            ..SecurityArgs::default()
        };
        args.node_id = Some(format!("bench-{limits}"));
        servers.push((limits, iace::app::start(args).await?));
    }
    let (org, owner) = iace::app::create_org(&db, "Bench").await?;
    // The largest plan and a high-tier key: the budgets are checked, never exhausted.
    let pool = sqlx::PgPool::connect(&db).await?;
    sqlx::query("UPDATE organization SET plan = 'enterprise' WHERE id = $1")
        .bind(org.id)
        .execute(&pool)
        .await?;
    let http = reqwest::Client::new();
    let first = format!("http://{}", servers[0].1.addr);
    // A fresh credential per row: every row's budget (a high-tier key: 6,000/min, a user on
    // enterprise: 1,200/min) is checked on every request and never exhausted.
    let mut users = 0;
    let mut credential = |kind: &'static str| {
        let (http, first, owner, db) = (http.clone(), first.clone(), owner.clone(), db.clone());
        users += 1;
        let n = users;
        async move {
            if kind == "api key" {
                let key: serde_json::Value = http
                    .post(format!("{first}/v1/api-keys"))
                    .bearer_auth(&owner)
                    .json(&serde_json::json!({"name": "bench", "role": "member", "tier": "high"}))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                return anyhow::Ok(key["api_key"].as_str().unwrap_or_default().to_owned());
            }
            let email = format!("bench{n}@example.com");
            let password = "benchmark password 123";
            iace::app::create_user(&db, org.id, &email, "member", Some(password.into())).await?;
            let login: serde_json::Value = http
                .post(format!("{first}/v1/auth/login"))
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
    };

    println!("GET /v1/agents, {requests} requests per row (after 100 to warm up), enterprise plan");
    println!(
        "{:<12} {:<13} {:>5} {:>10} {:>10} {:>10}",
        "credential", "plan limits", "conc", "p50 us", "p99 us", "req/s"
    );
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    for kind in ["api key", "access token"] {
        for conc in [1, concurrency] {
            // Off, on, off, on: each server's second run is reported, so warm caches and
            // order favour neither.
            let mut results = Vec::new();
            for (limits, server) in servers.iter().rev().chain(servers.iter().rev()) {
                let bearer = credential(kind).await?;
                let url = format!("http://{}/v1/agents", server.addr);
                run(&url, &bearer, 100, conc).await;
                results.push((*limits, run(&url, &bearer, requests, conc).await));
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
    for (_, server) in servers {
        server.shutdown().await;
    }
    pool.close().await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await?;
    Ok(())
}
