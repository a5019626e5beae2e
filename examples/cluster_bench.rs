//! Benchmark: the cluster as real processes. `--nodes` `iace serve` nodes (this same binary
//! run with `--node`, which serves exactly as `iace serve` does) on one fresh Postgres
//! database and one Redis, behind the test load balancer (`iace_fakes::lb`), with the
//! simulated carrier on one shared Redis key prefix. Four phases, each on a cluster of its
//! own:
//!
//! 1. forwarding: calls that ring until hung up; each is hung up with a request sent straight
//!    to the node that runs it or to another one (which forwards it): the latency of both.
//! 2. pokes: calls are created on `--nodes - 1` nodes, then one more node joins and takes a
//!    share of their shards. The simulated carrier plays a leg in the process that dialed
//!    it, so the hangups of the calls that moved are stored by one node and applied by
//!    another after a poke. Delay from the carrier's event (its scheduled time) to the
//!    journal entry on the call's node, for events applied where they were produced and for
//!    poked ones.
//! 3. kills: `--kills` times, under load through the balancer, a node is killed with SIGKILL:
//!    time until every shard is held again and until its live calls are re-activated (then
//!    it is started again). Every call must end with a gap-free journal and one carrier leg.
//! 4. rolling restart: each node in turn gets SIGTERM, exits, and is started again, while
//!    clients create, read and hang up calls through the balancer with no retries: the
//!    signal-to-exit time, the time until the node held no shard, and every failed request
//!    (a create or a read that fails is a failed check; a hangup answered 503 while its
//!    call's shard is between two owners is counted).
//!
//! Lease timing is the production default unless given (`--ttl-secs 10 --renew-ms 2000`).
//! `--only forward,pokes,kills,rolling` runs some phases. The nodes' logs go to files in a
//! temporary directory (printed), at the level `CLUSTER_BENCH_NODE_LOG` gives (`warn`).
//!
//! ```text
//! scripts/services up && eval "$(scripts/services env)"
//! cargo run --release --example cluster_bench -- --nodes 3 --kills 3
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use fred::clients::Client as Redis;
use fred::interfaces::{ClientLike, HashesInterface, KeysInterface};
use fred::types::{ClusterHash, CustomCommand, Value as RedisValue};
use futures::StreamExt;
use iace_fakes::lb::{LoadBalancer, LoadBalancerConfig};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

mod common;
use common::{arg, percentile};

const SHARDS: usize = 256;
const ADMIN_TOKEN: &str = "cluster-bench-operator-token";
const ANSWERS: &str = "+14155550100";
const RINGS_FOREVER: &str = "+14155550487";
/// Longest wait for any condition of the cluster.
const BOUND: Duration = Duration::from_secs(180);
const LIVE_ACTIVATIONS: &str = "iace_call_activations_total{kind=\"live\"}";

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("--node") {
        return node_main();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench())
}

/// A node: `iace serve`, configured by its environment.
fn node_main() -> anyhow::Result<()> {
    let cli = iace::config::Cli::try_parse_from(["iace", "serve"])?;
    let iace::config::Command::Serve(args) = cli.command else {
        bail!("a node only serves");
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let _telemetry = iace::telemetry::init(cli.log_format)?;
        iace::app::start(*args).await?.wait().await
    })
}

/// The settings of one run.
#[derive(Clone)]
struct Knobs {
    nodes: usize,
    ttl_secs: usize,
    renew_ms: usize,
    forward_calls: usize,
    poke_calls: usize,
    kills: usize,
    rolling_workers: usize,
    logs: PathBuf,
}

async fn bench() -> anyhow::Result<()> {
    let knobs = Knobs {
        nodes: arg("--nodes", 3).max(2),
        ttl_secs: arg("--ttl-secs", 10),
        renew_ms: arg("--renew-ms", 2000),
        forward_calls: arg("--forward-calls", 400),
        poke_calls: arg("--poke-calls", 400),
        kills: arg("--kills", 3),
        rolling_workers: arg("--rolling-workers", 6),
        logs: std::env::temp_dir().join(format!("iace-cluster-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&knobs.logs)?;
    println!(
        "cluster_bench: {} nodes, lease TTL {} s renewed every {} ms; node logs in {}",
        knobs.nodes,
        knobs.ttl_secs,
        knobs.renew_ms,
        knobs.logs.display()
    );
    let only = std::env::args()
        .skip_while(|a| a != "--only")
        .nth(1)
        .unwrap_or_default();
    let run = |phase: &str| only.is_empty() || only.split(',').any(|p| p == phase);
    let mut failed = false;
    if run("forward") {
        forwarding(&knobs).await?;
    }
    if run("pokes") {
        pokes(&knobs).await?;
    }
    if run("kills") {
        failed |= !kills(&knobs).await?;
    }
    if run("rolling") {
        failed |= !rolling(&knobs).await?;
    }
    if failed {
        bail!("some checks failed (see above)");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The cluster.

/// One node process.
struct Node {
    id: String,
    port: u16,
    metrics_port: u16,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn metrics(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.metrics_port)
    }

    /// Starts the process and waits until it answers `/health`.
    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(std::env::current_exe()?)
            .arg("--node")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning a node")?;
        self.child = Some(child);
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{}/health", self.base())).send().await {
                if r.status() == StatusCode::OK {
                    return Ok(());
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "{} exited at start: {status} (log: {})",
                    self.id,
                    self.log.display()
                );
            }
            if Instant::now() > deadline {
                bail!("{} did not come up within 60 s", self.id);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn sigterm(&self) -> anyhow::Result<()> {
        let pid = self.child.as_ref().context("not running")?.id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {pid} failed");
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Nodes behind a balancer, one organization with an agent.
struct Cluster {
    nodes: Vec<Node>,
    lb: LoadBalancer,
    base: String,
    key: String,
    agent: String,
    http: reqwest::Client,
    prefix: String,
    redis: Redis,
    database: String,
    admin_url: String,
}

/// A port free now (the node binds it next).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Cluster {
    /// A fresh database and `n` node processes of which the first `start` are started, with
    /// the common settings plus `extra`.
    async fn new(
        knobs: &Knobs,
        phase: &str,
        n: usize,
        start: usize,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Cluster> {
        let admin_url = std::env::var("DATABASE_URL")
            .context("DATABASE_URL is not set: eval \"$(scripts/services env)\"")?;
        let redis_url = std::env::var("REDIS_URL")
            .context("REDIS_URL is not set: eval \"$(scripts/services env)\"")?;
        let name = format!("iace_bench_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(&admin_url).await?;
        sqlx::query(&format!("create database {name}"))
            .execute(&admin)
            .await?;
        admin.close().await;
        let database = match admin_url.rfind('/') {
            Some(i) => format!("{}/{name}", &admin_url[..i]),
            None => bail!("DATABASE_URL has no database path"),
        };
        let prefix = format!("iace:bench:{}:", uuid::Uuid::new_v4().simple());
        let secret = uuid::Uuid::new_v4().simple().to_string();
        let node_log = std::env::var("CLUSTER_BENCH_NODE_LOG").unwrap_or_else(|_| "warn".into());
        let mut nodes = Vec::new();
        for i in 1..=n {
            let (port, metrics_port) = (free_port()?, free_port()?);
            let id = format!("node-{i}");
            let mut env: Vec<(String, String)> = [
                ("DATABASE_URL", database.as_str()),
                ("REDIS_URL", redis_url.as_str()),
                ("IACE_BIND", &format!("127.0.0.1:{port}")),
                ("IACE_METRICS_BIND", &format!("127.0.0.1:{metrics_port}")),
                ("IACE_NODE_ID", &id),
                ("IACE_NODE_URL", &format!("http://127.0.0.1:{port}")),
                ("IACE_MEDIA_SECRET", &secret),
                ("IACE_ADMIN_TOKEN", ADMIN_TOKEN),
                ("IACE_TELEPHONY", "simulated"),
                ("IACE_SIM_KEY_PREFIX", &prefix),
                ("IACE_LEASE_TTL_SECS", &knobs.ttl_secs.to_string()),
                ("IACE_LEASE_RENEW_MS", &knobs.renew_ms.to_string()),
                ("IACE_DRAIN_SECS", "2"),
                ("IACE_DRAIN_DEADLINE_SECS", "10"),
                ("IACE_PLAN_LIMITS", "false"),
                ("IACE_LEARNING", "false"),
                ("IACE_RATE_LIMIT_PREFIX", &format!("iace:bench:rl:{name}:")),
                ("RUST_LOG", &node_log),
            ]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
            for (k, v) in extra {
                env.retain(|(key, _)| key != k);
                env.push(((*k).to_owned(), (*v).to_owned()));
            }
            nodes.push(Node {
                log: knobs.logs.join(format!("{phase}-{id}.log")),
                id,
                port,
                metrics_port,
                env,
                child: None,
            });
        }
        for node in nodes.iter_mut().take(start) {
            node.spawn().await?;
        }
        let (_, key) = iace::app::create_org(&database, "Bench Co").await?;
        let lb = LoadBalancer::start(LoadBalancerConfig {
            backends: nodes.iter().take(start).map(Node::base).collect(),
            ..LoadBalancerConfig::default()
        })
        .await?;
        let redis = iace::redis::connect(&redis_url).await?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?;
        let mut cluster = Cluster {
            base: lb.base_url(),
            nodes,
            lb,
            key,
            agent: String::new(),
            http,
            prefix,
            redis,
            database,
            admin_url,
        };
        let r = cluster
            .send(
                &cluster.base.clone(),
                Method::POST,
                "/v1/agents",
                Some(json!({"name": "Bench", "persona_config": {"prompt": "hi"}})),
                &[],
            )
            .await?;
        if r.0 != StatusCode::CREATED {
            bail!("creating the agent: {} {}", r.0, r.1);
        }
        cluster.agent = r.1["id"].as_str().context("agent id")?.to_owned();
        Ok(cluster)
    }

    fn ids(&self, n: usize) -> Vec<String> {
        self.nodes.iter().take(n).map(|n| n.id.clone()).collect()
    }

    async fn send(
        &self,
        base: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(StatusCode, Value)> {
        send(&self.http, base, &self.key, method, path, body, headers)
            .await
            .map_err(anyhow::Error::msg)
    }

    async fn create(&self, base: &str, idem: &str, to: &str) -> anyhow::Result<String> {
        let (status, body) = self
            .send(
                base,
                Method::POST,
                "/v1/calls",
                Some(call_body(&self.agent, to)),
                &[("idempotency-key", idem)],
            )
            .await?;
        if !status.is_success() {
            bail!("create {idem}: {status} {body}");
        }
        Ok(body["id"].as_str().context("call id")?.to_owned())
    }

    async fn status(&self) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(format!("{}/v1/admin/cluster", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?;
        if r.status() != StatusCode::OK {
            bail!("GET /v1/admin/cluster: {}", r.status());
        }
        Ok(r.json().await?)
    }

    /// Waits until every shard is held by one of `members`, each holds some, and the
    /// holders stayed the same for three lease rounds.
    async fn settle(&self, members: &[String]) -> anyhow::Result<Value> {
        let deadline = Instant::now() + BOUND;
        let mut last: Option<(HashMap<u16, String>, Instant)> = None;
        let steady = Duration::from_millis(self.renew_ms() * 3);
        loop {
            let view = self.status().await?;
            let owners = owners(&view);
            let complete = owners.len() == SHARDS
                && owners.values().all(|o| members.contains(o))
                && members.iter().all(|m| owners.values().any(|o| o == m));
            if complete {
                match &last {
                    Some((before, since)) if *before == owners => {
                        if since.elapsed() >= steady {
                            return Ok(view);
                        }
                    }
                    _ => last = Some((owners, Instant::now())),
                }
            } else {
                last = None;
            }
            if Instant::now() > deadline {
                bail!("the shards did not settle on {members:?} within {BOUND:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn renew_ms(&self) -> u64 {
        self.nodes[0]
            .env
            .iter()
            .find(|(k, _)| k == "IACE_LEASE_RENEW_MS")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(2000)
    }

    async fn call(&self, id: &str) -> anyhow::Result<Value> {
        let (s, v) = self
            .send(
                &self.base,
                Method::GET,
                &format!("/v1/calls/{id}"),
                None,
                &[],
            )
            .await?;
        if s != StatusCode::OK {
            bail!("GET call {id}: {s} {v}");
        }
        Ok(v)
    }

    async fn wait_for_status(&self, id: &str, want: &[&str]) -> anyhow::Result<Value> {
        self.wait_within(id, want, BOUND).await
    }

    async fn wait_within(
        &self,
        id: &str,
        want: &[&str],
        within: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let call = self.call(id).await?;
            if want.contains(&call["status"].as_str().unwrap_or("")) {
                return Ok(call);
            }
            if Instant::now() > deadline {
                bail!("call {id} is {} after {within:?}", call["status"]);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn journal(&self, id: &str) -> anyhow::Result<Vec<Value>> {
        let (s, v) = self
            .send(
                &self.base,
                Method::GET,
                &format!("/v1/calls/{id}/events"),
                None,
                &[],
            )
            .await?;
        if s != StatusCode::OK {
            bail!("GET events of {id}: {s} {v}");
        }
        Ok(v["data"].as_array().cloned().unwrap_or_default())
    }

    /// Every call ends; counts journals that are not 1..n, calls with a second leg journaled,
    /// and calls the carrier holds more than one leg of, or none although the call was not
    /// canceled before its dial. Prints and returns whether all held.
    async fn check_calls(&self, ids: &[String]) -> anyhow::Result<bool> {
        let mut ended = Vec::new();
        for id in ids {
            ended.push(
                self.wait_for_status(id, &["completed", "failed", "canceled"])
                    .await?,
            );
        }
        // Read once every call ended: a call dials after its create was answered.
        let legs = self.legs().await?;
        let (mut gaps, mut strays, mut wrong_legs) = (Vec::new(), Vec::new(), Vec::new());
        for (id, call) in ids.iter().zip(ended) {
            let events = self.journal(id).await?;
            let seqs: Vec<i64> = events.iter().filter_map(|e| e["seq"].as_i64()).collect();
            if seqs != (1..=seqs.len() as i64).collect::<Vec<_>>() {
                gaps.push(id.clone());
            }
            let initiated = events.iter().filter(|e| e["kind"] == "initiated").count();
            if initiated > 1 || events.iter().any(|e| e["kind"] == "stray_leg") {
                strays.push(id.clone());
            }
            let n = legs.get(id).copied().unwrap_or(0);
            let canceled_before_dial = call["status"] == "canceled" && initiated == 0;
            if n > 1 || (n == 0 && !canceled_before_dial) {
                wrong_legs.push((id.clone(), n, call["status"].clone()));
            }
        }
        println!(
            "  {} calls ended; journals not 1..n: {}; second legs journaled: {}; calls with a wrong number of carrier legs: {}",
            ids.len(),
            gaps.len(),
            strays.len(),
            wrong_legs.len()
        );
        for id in gaps.iter().chain(&strays).take(10) {
            println!("    {id}: {:?}", kinds(&self.journal(id).await?));
        }
        for (id, n, status) in wrong_legs.iter().take(10) {
            println!(
                "    {id}: {n} carrier legs, {status}: {:?}",
                kinds(&self.journal(id).await?)
            );
        }
        Ok(gaps.is_empty() && strays.is_empty() && wrong_legs.is_empty())
    }

    /// Legs the simulated carrier created, per call.
    async fn legs(&self) -> anyhow::Result<HashMap<String, usize>> {
        let mut legs = HashMap::new();
        for key in self.keys("leg:*").await? {
            let call: Option<String> = self.redis.hget(&key, "call_id").await?;
            *legs.entry(call.unwrap_or_default()).or_insert(0) += 1;
        }
        Ok(legs)
    }

    async fn keys(&self, pattern: &str) -> anyhow::Result<Vec<String>> {
        Ok(self
            .redis
            .custom(
                CustomCommand::new_static("KEYS", ClusterHash::Random, false),
                vec![RedisValue::from(format!("{}{pattern}", self.prefix))],
            )
            .await?)
    }

    async fn metric(&self, ids: &[String], name: &str) -> anyhow::Result<f64> {
        let mut sum = 0.0;
        for node in self.nodes.iter().filter(|n| ids.contains(&n.id)) {
            let text = self.http.get(node.metrics()).send().await?.text().await?;
            sum += text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
        }
        Ok(sum)
    }

    fn node_mut(&mut self, id: &str) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).expect("a node")
    }

    /// Stops every node, drops the database and the carrier's keys.
    async fn teardown(mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            node.kill9();
        }
        for key in self.keys("*").await? {
            let _: i64 = self.redis.del(key).await?;
        }
        let admin = sqlx::PgPool::connect(&self.admin_url).await?;
        let name = self.database.rsplit('/').next().unwrap_or_default();
        sqlx::query(&format!("drop database if exists {name} with (force)"))
            .execute(&admin)
            .await?;
        Ok(())
    }
}

async fn send(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, Value), String> {
    let mut req = http
        .request(method.clone(), format!("{base}{path}"))
        .bearer_auth(key)
        .timeout(Duration::from_secs(30));
    if let Some(body) = body {
        req = req.json(&body);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req
        .send()
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let status = r.status();
    let text = r
        .text()
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

fn call_body(agent: &str, to: &str) -> Value {
    json!({"to": to, "from": "+14155550199", "agent_id": agent})
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("?").to_owned())
        .collect()
}

fn shard_of(id: &str) -> u16 {
    iace_actors::ports::shard_of(id.parse().expect("a call id"))
}

fn owners(view: &Value) -> HashMap<u16, String> {
    view["leases"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .filter(|l| l["owner"].is_string() && l["expires_in_ms"].as_i64().unwrap_or(0) > 0)
                .filter_map(|l| {
                    Some((
                        u16::try_from(l["shard"].as_u64()?).ok()?,
                        l["owner"].as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// p50 / p99 / max of samples, in ms.
fn spread(samples: &mut [Duration]) -> String {
    samples.sort();
    format!(
        "n={} p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        samples.len(),
        ms(percentile(samples, 50.0)),
        ms(percentile(samples, 99.0)),
        ms(samples.last().copied().unwrap_or_default())
    )
}

// ---------------------------------------------------------------------------------------
// 1. Forwarded requests.

async fn forwarding(knobs: &Knobs) -> anyhow::Result<()> {
    println!("\n== forwarding: hangups sent to the call's node vs to another node");
    let n = knobs.nodes;
    let cluster =
        Cluster::new(knobs, "forward", n, n, &[("IACE_RING_TIMEOUT_SECS", "300")]).await?;
    cluster.settle(&cluster.ids(n)).await?;
    let keys: Vec<String> = (0..knobs.forward_calls)
        .map(|i| format!("fwd-{i}"))
        .collect();
    let ids: Vec<String> = futures::stream::iter(keys.iter())
        .map(|k| cluster.create(&cluster.base, k, RINGS_FOREVER))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    // A call that never rings was never dialed: counted, and left out.
    let mut ringing = Vec::new();
    for id in &ids {
        match cluster
            .wait_within(id, &["ringing"], Duration::from_secs(30))
            .await
        {
            Ok(_) => ringing.push(id.clone()),
            Err(e) => println!("  not dialed: {e}"),
        }
    }
    let owner = owners(&cluster.settle(&cluster.ids(n)).await?);
    let (mut at_owner, mut forwarded) = (Vec::new(), Vec::new());
    for (i, id) in ringing.iter().enumerate() {
        let runs = &owner[&shard_of(id)];
        let target = if i % 2 == 0 {
            cluster.nodes.iter().find(|n| &n.id == runs)
        } else {
            cluster.nodes.iter().find(|n| &n.id != runs)
        }
        .context("a node")?;
        let t = Instant::now();
        let (s, v) = cluster
            .send(
                &target.base(),
                Method::POST,
                &format!("/v1/calls/{id}/hangup"),
                Some(json!({})),
                &[],
            )
            .await?;
        let took = t.elapsed();
        if s != StatusCode::OK {
            bail!("hangup of {id} at {}: {s} {v}", target.id);
        }
        if i % 2 == 0 {
            at_owner.push(took);
        } else {
            forwarded.push(took);
        }
    }
    let (a, f) = (spread(&mut at_owner), spread(&mut forwarded));
    println!("  hangup at the call's node:   {a}");
    println!("  hangup at another node:      {f}");
    println!(
        "  forwarding adds {:.2} ms at p50, {:.2} ms at p99",
        ms(percentile(&forwarded, 50.0)) - ms(percentile(&at_owner, 50.0)),
        ms(percentile(&forwarded, 99.0)) - ms(percentile(&at_owner, 99.0))
    );
    cluster.teardown().await
}

// ---------------------------------------------------------------------------------------
// 2. Pokes.

async fn pokes(knobs: &Knobs) -> anyhow::Result<()> {
    println!("\n== pokes: carrier event -> journaled on the call's node");
    let n = knobs.nodes;
    let talk_ms = (knobs.ttl_secs * 1000 + 8000).to_string();
    let mut cluster = Cluster::new(
        knobs,
        "pokes",
        n,
        n - 1,
        &[("IACE_SIM_TALK_MS", &talk_ms), ("IACE_SIM_RING_MS", "300")],
    )
    .await?;
    cluster.settle(&cluster.ids(n - 1)).await?;
    // Each call is created at a node of its own choosing: that node dials, and its carrier
    // plays the leg.
    let plan: Vec<(String, usize)> = (0..knobs.poke_calls)
        .map(|i| (format!("poke-{i}"), i % (n - 1)))
        .collect();
    let c = &cluster;
    let created: Vec<(String, usize)> = futures::stream::iter(plan.iter())
        .map(|(k, node)| async move {
            let id = c.create(&c.nodes[*node].base(), k, ANSWERS).await?;
            anyhow::Ok((id, *node))
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let joined = Instant::now();
    cluster.nodes[n - 1].spawn().await?;
    cluster.lb.add_backend(&cluster.nodes[n - 1].base())?;
    let view = cluster.settle(&cluster.ids(n)).await?;
    let settled_at = chrono::Utc::now();
    println!(
        "  {} joined; shards settled {:.2} s after its start",
        cluster.nodes[n - 1].id,
        joined.elapsed().as_secs_f64()
    );
    let owner = owners(&view);
    let (mut local, mut poked, mut during) = (Vec::new(), Vec::new(), 0);
    for (id, dialer) in &created {
        cluster
            .wait_for_status(id, &["completed", "failed", "canceled"])
            .await?;
        let events = cluster.journal(id).await?;
        let Some(hangup) = events.iter().find(|e| e["kind"] == "hangup") else {
            bail!("call {id} ended without a hangup: {:?}", kinds(&events));
        };
        let at: chrono::DateTime<chrono::Utc> = hangup["at"].as_str().context("at")?.parse()?;
        let leg: Option<String> = cluster
            .redis
            .get(format!("{}call:{id}", cluster.prefix))
            .await?;
        let leg = leg.context("the call's leg")?;
        let scheduled: Option<String> = cluster
            .redis
            .hget(format!("{}leg:{leg}", cluster.prefix), "hangup_at")
            .await?;
        let scheduled_ms: i64 = scheduled.context("hangup_at")?.parse()?;
        let emitted = chrono::DateTime::from_timestamp_millis(scheduled_ms).context("time")?;
        if emitted < settled_at {
            during += 1;
            continue;
        }
        let delay = (at - emitted).to_std().unwrap_or_default();
        if owner[&shard_of(id)] == cluster.nodes[*dialer].id {
            local.push(delay);
        } else {
            poked.push(delay);
        }
    }
    println!("  applied where produced:      {}", spread(&mut local));
    println!("  produced elsewhere, poked:   {}", spread(&mut poked));
    if during > 0 {
        println!("  ({during} hangups fell before the shards settled and are left out)");
    }
    cluster.teardown().await
}

// ---------------------------------------------------------------------------------------
// Background load through the balancer.

#[derive(Debug)]
struct Failure {
    at: Duration,
    request: String,
    status: Option<StatusCode>,
    body: String,
}

#[derive(Debug, Default)]
struct LoadReport {
    ids: Vec<String>,
    requests: usize,
    hangups: usize,
    resent: usize,
    failures: Vec<Failure>,
}

struct Load {
    started: Instant,
    stop: Arc<AtomicBool>,
    created: Arc<AtomicUsize>,
    workers: Vec<tokio::task::JoinHandle<LoadReport>>,
}

impl Load {
    /// `workers` clients, each creating a call every `pace`; with `read_back` each reads its
    /// call and journal, and every fourth call rings until the client hangs it up; with
    /// `resend` a failed create is sent again with its Idempotency-Key until it succeeds.
    fn start(
        cluster: &Cluster,
        name: &str,
        workers: usize,
        pace: Duration,
        read_back: bool,
        resend: bool,
    ) -> Load {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicUsize::new(0));
        let created = Arc::new(AtomicUsize::new(0));
        let workers = (0..workers)
            .map(|_| {
                let (http, base, key, agent) = (
                    cluster.http.clone(),
                    cluster.base.clone(),
                    cluster.key.clone(),
                    cluster.agent.clone(),
                );
                let (stop, next, created, name) =
                    (stop.clone(), next.clone(), created.clone(), name.to_owned());
                tokio::spawn(async move {
                    let mut report = LoadReport::default();
                    let note =
                        |report: &mut LoadReport,
                         request: String,
                         r: &Result<(StatusCode, Value), String>| {
                            report.requests += 1;
                            let failure = match r {
                                Ok((s, _)) if s.is_success() => return true,
                                Ok((s, v)) => Failure {
                                    at: started.elapsed(),
                                    request,
                                    status: Some(*s),
                                    body: v.to_string(),
                                },
                                Err(e) => Failure {
                                    at: started.elapsed(),
                                    request,
                                    status: None,
                                    body: e.clone(),
                                },
                            };
                            report.failures.push(failure);
                            false
                        };
                    while !stop.load(Ordering::SeqCst) {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let idem = format!("{name}-{i}");
                        let to = if read_back && i % 4 == 3 {
                            RINGS_FOREVER
                        } else {
                            ANSWERS
                        };
                        let mut id = None;
                        loop {
                            let r = send(
                                &http,
                                &base,
                                &key,
                                Method::POST,
                                "/v1/calls",
                                Some(call_body(&agent, to)),
                                &[("idempotency-key", &idem)],
                            )
                            .await;
                            if note(&mut report, "POST /v1/calls".into(), &r) {
                                id = r
                                    .ok()
                                    .and_then(|(_, v)| v["id"].as_str().map(str::to_owned));
                                break;
                            }
                            if !resend || stop.load(Ordering::SeqCst) {
                                break;
                            }
                            report.resent += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        let Some(id) = id else { continue };
                        created.fetch_add(1, Ordering::SeqCst);
                        report.ids.push(id.clone());
                        if read_back {
                            for path in
                                [format!("/v1/calls/{id}"), format!("/v1/calls/{id}/events")]
                            {
                                let r =
                                    send(&http, &base, &key, Method::GET, &path, None, &[]).await;
                                note(&mut report, "GET /v1/calls/{id}[/events]".into(), &r);
                            }
                            if to == RINGS_FOREVER {
                                report.hangups += 1;
                                let path = format!("/v1/calls/{id}/hangup");
                                let r = send(
                                    &http,
                                    &base,
                                    &key,
                                    Method::POST,
                                    &path,
                                    Some(json!({})),
                                    &[],
                                )
                                .await;
                                note(&mut report, "POST /v1/calls/{id}/hangup".into(), &r);
                            }
                        }
                        tokio::time::sleep(pace).await;
                    }
                    report
                })
            })
            .collect();
        Load {
            started,
            stop,
            created,
            workers,
        }
    }

    fn created(&self) -> usize {
        self.created.load(Ordering::SeqCst)
    }

    async fn finish(self) -> anyhow::Result<LoadReport> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = LoadReport::default();
        for w in self.workers {
            let r = w.await?;
            all.ids.extend(r.ids);
            all.requests += r.requests;
            all.hangups += r.hangups;
            all.resent += r.resent;
            all.failures.extend(r.failures);
        }
        all.failures.sort_by_key(|f| f.at);
        Ok(all)
    }
}

// ---------------------------------------------------------------------------------------
// 3. kill -9.

async fn kills(knobs: &Knobs) -> anyhow::Result<bool> {
    println!("\n== kill -9 under load: takeover");
    let n = knobs.nodes;
    let mut cluster = Cluster::new(knobs, "kills", n, n, &[("IACE_SIM_TALK_MS", "3000")]).await?;
    let all = cluster.ids(n);
    cluster.settle(&all).await?;
    let load = Load::start(&cluster, "kill", 4, Duration::from_millis(40), false, true);
    let (mut shards_back, mut calls_back) = (Vec::new(), Vec::new());
    for k in 0..knobs.kills {
        let before = load.created();
        while load.created() < before + 100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let victim = all[k % n].clone();
        let survivors: Vec<String> = all.iter().filter(|id| **id != victim).cloned().collect();
        let activations = cluster.metric(&survivors, LIVE_ACTIVATIONS).await?;
        let killed = Instant::now();
        cluster.node_mut(&victim).kill9();
        let view = cluster.status().await?;
        let orphaned = view["nodes"]
            .as_array()
            .and_then(|ns| ns.iter().find(|n| n["node_id"] == victim.as_str()))
            .and_then(|n| n["live_calls"].as_i64())
            .unwrap_or(0)
            + view["unowned_live_calls"].as_i64().unwrap_or(0);
        let (mut shards, mut calls) = (None, None);
        while shards.is_none() || calls.is_none() {
            if shards.is_none() {
                let held = owners(&cluster.status().await?);
                if held.len() == SHARDS && held.values().all(|o| survivors.contains(o)) {
                    shards = Some(killed.elapsed());
                }
            }
            if calls.is_none()
                && cluster.metric(&survivors, LIVE_ACTIVATIONS).await? - activations
                    >= orphaned as f64
            {
                calls = Some(killed.elapsed());
            }
            if killed.elapsed() > BOUND {
                bail!("no takeover within {BOUND:?} of killing {victim}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (shards, calls) = (shards.unwrap_or_default(), calls.unwrap_or_default());
        println!(
            "  kill {}: {victim} (with {orphaned} live calls): every shard held again after {:.2} s, its live calls re-activated after {:.2} s",
            k + 1,
            shards.as_secs_f64(),
            calls.as_secs_f64()
        );
        shards_back.push(shards);
        calls_back.push(calls);
        cluster.node_mut(&victim).spawn().await?;
        cluster.settle(&all).await?;
    }
    let report = load.finish().await?;
    println!(
        "  takeover, every shard held:  {}",
        spread(&mut shards_back)
    );
    println!("  takeover, live calls back:   {}", spread(&mut calls_back));
    println!(
        "  load: {} calls, {} requests, {} creates cut by a kill and sent again with their Idempotency-Key",
        report.ids.len(),
        report.requests,
        report.resent
    );
    let ok = cluster.check_calls(&report.ids).await?;
    cluster.teardown().await?;
    Ok(ok)
}

// ---------------------------------------------------------------------------------------
// 4. Rolling restart.

async fn rolling(knobs: &Knobs) -> anyhow::Result<bool> {
    println!("\n== rolling restart (SIGTERM) under load, no client retries");
    let n = knobs.nodes;
    let mut cluster = Cluster::new(knobs, "rolling", n, n, &[]).await?;
    let all = cluster.ids(n);
    cluster.settle(&all).await?;
    let load = Load::start(
        &cluster,
        "roll",
        knobs.rolling_workers,
        Duration::from_millis(50),
        true,
        false,
    );
    while load.created() < 50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut exits, mut handed) = (Vec::new(), Vec::new());
    let mut marks = Vec::new();
    for id in &all {
        let at = load.started.elapsed();
        let t = Instant::now();
        cluster.node_mut(id).sigterm()?;
        // The node holds no shard any more (as the store sees it), then exits.
        let mut none_held = None;
        let exit = loop {
            if none_held.is_none() && !owners(&cluster.status().await?).values().any(|o| o == id) {
                none_held = Some(t.elapsed());
            }
            let node = cluster.node_mut(id);
            if let Some(status) = node.child.as_mut().context("running")?.try_wait()? {
                node.child = None;
                break status;
            }
            if t.elapsed() > BOUND {
                bail!("{id} did not exit within {BOUND:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        let exited = t.elapsed();
        let none_held = none_held.unwrap_or(exited);
        cluster.node_mut(id).spawn().await?;
        cluster.settle(&all).await?;
        println!(
            "  {id}: SIGTERM -> no shard held {:.2} s, -> exit {:.2} s ({exit}); back and settled after {:.2} s",
            none_held.as_secs_f64(),
            exited.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
        marks.push(format!(
            "{id} SIGTERM at {:.2} s, exit at {:.2} s",
            at.as_secs_f64(),
            (at + exited).as_secs_f64()
        ));
        exits.push(exited);
        handed.push(none_held);
    }
    let report = load.finish().await?;
    println!("  SIGTERM -> no shard held:    {}", spread(&mut handed));
    println!(
        "  SIGTERM -> exit:             {} (IACE_DRAIN_SECS=2 is its floor)",
        spread(&mut exits)
    );
    let lb = cluster.lb.stats();
    println!(
        "  requests: {} ({} calls), failed: {}; the balancer sent {} on to another backend before writing them",
        report.requests,
        report.ids.len(),
        report.failures.len(),
        lb.retries
    );
    let mut by_kind: HashMap<(String, String), usize> = HashMap::new();
    for f in &report.failures {
        let status = f.status.map_or("no answer".to_owned(), |s| s.to_string());
        *by_kind.entry((f.request.clone(), status)).or_default() += 1;
    }
    for ((request, status), count) in &by_kind {
        println!("    {count} x {request} -> {status}");
    }
    for f in report.failures.iter().take(20) {
        println!(
            "    at {:.3} s: {} -> {} {}",
            f.at.as_secs_f64(),
            f.request,
            f.status.map_or("no answer".to_owned(), |s| s.to_string()),
            f.body.chars().take(200).collect::<String>()
        );
    }
    if !report.failures.is_empty() {
        println!("    ({})", marks.join("; "));
    }
    // A command for a call whose shard is between two owners is answered 503 with
    // Retry-After (the engine's documented answer): reported above, not a failed check.
    // Creates and reads must never fail.
    let hangups_refused = report
        .failures
        .iter()
        .filter(|f| {
            f.request.ends_with("/hangup") && f.status == Some(StatusCode::SERVICE_UNAVAILABLE)
        })
        .count();
    println!(
        "  hangups answered 503 (the call's shard between owners): {hangups_refused} of {}",
        report.hangups
    );
    let ok = cluster.check_calls(&report.ids).await?;
    cluster.teardown().await?;
    Ok(ok && report.failures.len() == hangups_refused)
}
