//! The cluster as real processes: three `iace serve` nodes on one Postgres database and one
//! Redis, behind the test load balancer (`iace_fakes::lb`), driven only through the balancer
//! and the operator view `GET /v1/admin/cluster`, as a deployment would be.
//!
//! * `split`: the shards split evenly; 300 calls created through the balancer all end, with
//!   gap-free journals; hangups reach the node that runs the call whichever node takes them.
//! * `crash`: `kill -9` of a node mid-load: its shards and live calls are taken over, every
//!   call ends, none is dialed twice.
//! * `rolling`: SIGTERM restarts of every node in turn while a client creates and reads calls:
//!   not one request fails.
//!
//! Every node runs the simulated carrier on one shared Redis key prefix, so leg state (what
//! the carrier "knows") is shared; its events are produced by the node that dialed the leg,
//! stored in the shared inbox and handed to the call's owner by a poke. Timings are printed,
//! never asserted beyond generous bounds: the machine is shared with other tests.

mod crash;
mod rolling;
mod split;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fred::clients::Client as Redis;
use fred::interfaces::{ClientLike, HashesInterface};
use fred::types::{ClusterHash, CustomCommand, Value as RedisValue};
use iace_fakes::lb::{LoadBalancer, LoadBalancerConfig};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::db::{fresh_database, redis_url};
use crate::common::metrics::series;
use crate::common::server::{create_org, Server};

/// Shards of the cluster (`iace_actors::ports::SHARD_COUNT`).
const SHARDS: usize = 256;
/// The operator token every node is started with.
const ADMIN_TOKEN: &str = "cluster-test-operator-token";
/// Lease timing: a dead node's shards are free within 6 s; rounds every second. A node acts
/// for a shard until 5.4 s after its last renewal was sent, so only a round slower than 4.4 s
/// makes it stop acting for a moment (with 3 s / 500 ms, rounds slowed past 2.2 s on a
/// machine loaded 6x over its cores, and the node refused creates and carrier commands).
const LEASE_TTL_SECS: &str = "6";
const LEASE_RENEW_MS: &str = "1000";
/// Simulated carrier: ring and talk time of an ordinary call.
const RING_MS: &str = "300";
const TALK_MS: &str = "1500";
/// A dialed number that answers (the simulated carrier's default script).
const ANSWERS: &str = "+14155550100";
/// A dialed number that rings until hung up (`...0487`).
const RINGS_FOREVER: &str = "+14155550487";
/// How long a condition of the cluster (shards settled, calls ended) may take.
const BOUND: Duration = Duration::from_secs(90);

/// Held by each test here for its whole run: one cluster (three debug-build nodes) at a time,
/// so that these tests, which load the machine on purpose, do not load it threefold together.
/// A tokio mutex: each test has a runtime of its own, and the guard is held across awaits.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Takes [`ONE_CLUSTER_AT_A_TIME`].
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER_AT_A_TIME.lock().await
}

/// One node: its id in the cluster and its process.
struct Node {
    id: String,
    server: Server,
}

/// Three nodes behind a load balancer, one organization with an agent.
struct Cluster {
    nodes: Vec<Node>,
    lb: LoadBalancer,
    /// The balancer's base URL: what clients use.
    base: String,
    /// The organization's API key.
    key: String,
    agent: String,
    sim_prefix: String,
    redis: Redis,
    http: reqwest::Client,
}

/// What a request answered.
#[derive(Debug, Clone)]
struct Reply {
    status: StatusCode,
    body: Value,
}

impl Cluster {
    /// Starts `n` nodes (`node-1`..) one after the other on a fresh database, with `extra`
    /// environment, and a balancer over them.
    async fn start(n: usize, extra: &[(&str, &str)]) -> Cluster {
        let database_url = fresh_database().await;
        let sim_prefix = format!("iace:test:cluster:{}:", uuid::Uuid::new_v4().simple());
        let secret = format!("cluster-secret-{}", uuid::Uuid::new_v4().simple());
        let mut nodes = Vec::new();
        for i in 1..=n {
            let id = format!("node-{i}");
            let mut env: Vec<(&str, &str)> = vec![
                ("IACE_NODE_ID", &id),
                ("IACE_MEDIA_SECRET", &secret),
                ("IACE_ADMIN_TOKEN", ADMIN_TOKEN),
                ("IACE_SIM_KEY_PREFIX", &sim_prefix),
                ("IACE_SIM_RING_MS", RING_MS),
                ("IACE_SIM_TALK_MS", TALK_MS),
                ("IACE_LEASE_TTL_SECS", LEASE_TTL_SECS),
                ("IACE_LEASE_RENEW_MS", LEASE_RENEW_MS),
                // SIGTERM: /ready answers 503 for 2 s before the listener closes, longer than
                // the balancer takes to see it (3 failed checks 200 ms apart).
                ("IACE_DRAIN_SECS", "2"),
                ("IACE_DRAIN_DEADLINE_SECS", "5"),
                ("IACE_PLAN_LIMITS", "false"),
                ("IACE_LEARNING", "false"),
            ];
            env.extend_from_slice(extra);
            // The first node migrates the database; the others start on it.
            let server = Server::start(&database_url, &env).await;
            nodes.push(Node { id, server });
        }
        let (_, key) = create_org(&database_url, "Cluster Co");
        let lb = LoadBalancer::start(LoadBalancerConfig {
            backends: nodes.iter().map(|n| n.server.base.clone()).collect(),
            // `/ready` pings Postgres and Redis: on a loaded machine that took over the
            // default second, and every backend was taken out at once.
            check_timeout: Duration::from_secs(5),
            ..LoadBalancerConfig::default()
        })
        .await
        .expect("starting the load balancer");
        let redis = iace::redis::connect(&redis_url())
            .await
            .expect("connect to redis");
        let mut cluster = Cluster {
            base: lb.base_url(),
            nodes,
            lb,
            key,
            agent: String::new(),
            sim_prefix,
            redis,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
        };
        let agent = cluster
            .send(
                Method::POST,
                "/v1/agents",
                Some(json!({"name": "Renewals", "persona_config": {"prompt": "hi"}})),
                &[],
            )
            .await;
        assert_eq!(agent.status, StatusCode::CREATED, "{}", agent.body);
        cluster.agent = agent.body["id"].as_str().unwrap().to_owned();
        cluster
    }

    fn node(&self, id: &str) -> &Node {
        self.nodes.iter().find(|n| n.id == id).expect("a node")
    }

    fn node_mut(&mut self, id: &str) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).expect("a node")
    }

    /// One request through the balancer as the organization.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        send_to(
            &self.http, &self.base, &self.key, method, path, body, headers,
        )
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// `POST /v1/calls` through the balancer, with an `Idempotency-Key`.
    async fn create_call(&self, idempotency_key: &str, to: &str) -> Reply {
        self.send(
            Method::POST,
            "/v1/calls",
            Some(call_body(&self.agent, to)),
            &[("idempotency-key", idempotency_key)],
        )
        .await
    }

    /// `GET /v1/admin/cluster` through the balancer.
    async fn status(&self) -> Value {
        let r = self
            .http
            .get(format!("{}/v1/admin/cluster", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("GET /v1/admin/cluster");
        assert_eq!(r.status(), StatusCode::OK, "GET /v1/admin/cluster");
        r.json().await.unwrap()
    }

    /// Waits until every shard is held by one of `members` (and by no one else), each of them
    /// holds some, and the holders stayed the same for three lease rounds. Returns the view.
    async fn wait_settled(&self, members: &[&str]) -> Value {
        let deadline = Instant::now() + BOUND;
        let mut last: Option<(HashMap<u16, String>, Instant)> = None;
        loop {
            let view = self.status().await;
            let owners = owners(&view);
            let complete = owners.len() == SHARDS
                && owners.values().all(|o| members.contains(&o.as_str()))
                && members.iter().all(|m| owners.values().any(|o| o == m));
            if complete {
                match &last {
                    Some((before, since)) if *before == owners => {
                        if since.elapsed() >= Duration::from_millis(3000) {
                            return view;
                        }
                    }
                    _ => last = Some((owners, Instant::now())),
                }
            } else {
                last = None;
            }
            assert!(
                Instant::now() < deadline,
                "the shards did not settle on {members:?} within {BOUND:?}: {}",
                summary(&view)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the call is in a terminal status; returns it.
    async fn wait_ended(&self, id: &str) -> Value {
        let deadline = Instant::now() + BOUND;
        loop {
            let r = self
                .send(Method::GET, &format!("/v1/calls/{id}"), None, &[])
                .await;
            assert_eq!(r.status, StatusCode::OK, "GET call {id}: {}", r.body);
            if is_terminal(&r.body) {
                return r.body;
            }
            assert!(
                Instant::now() < deadline,
                "call {id} still {} after {BOUND:?}: {}",
                r.body["status"],
                r.body
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the call is `status` (a live one); returns it.
    async fn wait_status(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + BOUND;
        loop {
            let r = self
                .send(Method::GET, &format!("/v1/calls/{id}"), None, &[])
                .await;
            assert_eq!(r.status, StatusCode::OK, "GET call {id}: {}", r.body);
            if r.body["status"] == status {
                return r.body;
            }
            assert!(
                Instant::now() < deadline,
                "call {id} never {status} within {BOUND:?}: {}",
                r.body
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The call's journal, asserted gap-free and without duplicates (`seq` 1..=n).
    async fn journal(&self, id: &str) -> Vec<Value> {
        let r = self
            .send(Method::GET, &format!("/v1/calls/{id}/events"), None, &[])
            .await;
        assert_eq!(r.status, StatusCode::OK, "GET events of {id}: {}", r.body);
        let events = r.body["data"].as_array().expect("data").clone();
        let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(seqs, expected, "journal of call {id} is not 1..n");
        events
    }

    /// Every call ends; every journal is gap-free and journals at most one leg, released
    /// strays aside (none expected); the simulated carrier holds exactly one leg per call.
    /// Returns the journals by call id.
    async fn check_calls(&self, ids: &[String]) -> HashMap<String, Vec<Value>> {
        let mut journals = HashMap::new();
        for id in ids {
            self.wait_ended(id).await;
            let events = self.journal(id).await;
            let k = kinds(&events);
            assert_eq!(
                k.first().map(String::as_str),
                Some("created"),
                "{id}: {k:?}"
            );
            let initiated = k.iter().filter(|k| *k == "initiated").count();
            assert!(initiated <= 1, "call {id} journals {initiated} legs: {k:?}");
            assert!(
                !k.iter().any(|k| k == "stray_leg"),
                "call {id} got a second carrier leg: {k:?}"
            );
            journals.insert(id.clone(), events);
        }
        let legs = self.carrier_legs().await;
        for id in ids {
            let events = &journals[id];
            assert_eq!(
                legs.get(id).copied().unwrap_or(0),
                1,
                "the carrier must hold exactly one leg of call {id} (one dial); its journal: {}",
                serde_json::to_string(events).unwrap()
            );
        }
        journals
    }

    /// Legs the simulated carrier created, per call id: every `leg:*` hash under the shared
    /// prefix names its call. A second dial of a call (a new command id) is a second leg.
    async fn carrier_legs(&self) -> HashMap<String, usize> {
        let keys: Vec<String> = self
            .redis
            .custom(
                CustomCommand::new_static("KEYS", ClusterHash::Random, false),
                vec![RedisValue::from(format!("{}leg:*", self.sim_prefix))],
            )
            .await
            .expect("KEYS");
        let mut legs = HashMap::new();
        for key in keys {
            let call: Option<String> = self.redis.hget(&key, "call_id").await.expect("HGET");
            *legs.entry(call.expect("a leg names its call")).or_insert(0) += 1;
        }
        legs
    }

    /// Deletes what the simulated carrier left in Redis.
    async fn cleanup(&self) {
        let keys: Vec<String> = self
            .redis
            .custom(
                CustomCommand::new_static("KEYS", ClusterHash::Random, false),
                vec![RedisValue::from(format!("{}*", self.sim_prefix))],
            )
            .await
            .expect("KEYS");
        for key in keys {
            let _: i64 = self
                .redis
                .custom(
                    CustomCommand::new_static("DEL", ClusterHash::Random, false),
                    vec![RedisValue::from(key)],
                )
                .await
                .expect("DEL");
        }
    }

    /// Sum of a metric series over the nodes in `ids`.
    async fn metric_sum(&self, ids: &[&str], name: &str) -> f64 {
        let mut sum = 0.0;
        for id in ids {
            sum += series(&self.node(id).server.metrics_base, name).await;
        }
        sum
    }
}

/// One request to `base` as `key`; a transport error is returned as text.
async fn send_to(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
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
        .map_err(|e| format!("{method} {path}: reading the body: {e}"))?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(Reply { status, body })
}

fn call_body(agent: &str, to: &str) -> Value {
    json!({"to": to, "from": "+14155550199", "agent_id": agent})
}

fn is_terminal(call: &Value) -> bool {
    ["completed", "failed", "canceled"].contains(&call["status"].as_str().unwrap_or(""))
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// The shard a call id falls in (`iace_actors::ports::shard_of`).
fn shard_of(id: &str) -> u16 {
    iace_actors::ports::shard_of(id.parse().expect("a call id"))
}

/// Shard -> holder, for the leases held now (not released, not lapsed).
fn owners(view: &Value) -> HashMap<u16, String> {
    view["leases"]
        .as_array()
        .expect("leases")
        .iter()
        .filter(|l| l["owner"].is_string() && l["expires_in_ms"].as_i64().unwrap_or(0) > 0)
        .map(|l| {
            (
                u16::try_from(l["shard"].as_u64().unwrap()).unwrap(),
                l["owner"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Shards held per node id.
fn shard_counts(view: &Value) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for owner in owners(view).into_values() {
        *counts.entry(owner).or_insert(0) += 1;
    }
    counts
}

/// A short account of the view for failure messages.
fn summary(view: &Value) -> String {
    let nodes: Vec<String> = view["nodes"]
        .as_array()
        .map(|ns| {
            ns.iter()
                .map(|n| {
                    format!(
                        "{} alive={} draining={} shards={} live_calls={} heartbeat_age_ms={}",
                        n["node_id"],
                        n["alive"],
                        n["draining"],
                        n["shards"],
                        n["live_calls"],
                        n["heartbeat_age_ms"]
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "answered by {}; nodes [{}]; {} unowned shards",
        view["answered_by"],
        nodes.join("; "),
        view["unowned_shards"].as_array().map_or(0, Vec::len)
    )
}

/// How a [`Load`] behaves.
#[derive(Clone, Copy)]
struct LoadConfig {
    /// Clients working at once.
    workers: usize,
    /// Calls to create in all (`None`: until stopped).
    calls: Option<usize>,
    /// Pause of each client between two calls (pacing, not waiting for anything).
    pace: Duration,
    /// Read every created call back (`GET /v1/calls/{id}` and its journal).
    read_back: bool,
    /// Send a create that failed again with the same `Idempotency-Key` (safe by design)
    /// until it succeeds; otherwise the call is given up.
    retry_creates: bool,
}

/// A request that did not get a `2xx`.
#[derive(Debug, Clone)]
struct Failure {
    /// Since the load started.
    at: Duration,
    request: String,
    /// `None`: no answer at all (the transport error is in `body`).
    status: Option<StatusCode>,
    body: String,
}

/// What a [`Load`] did.
#[derive(Debug, Default)]
struct LoadReport {
    /// Calls created, in no particular order.
    ids: Vec<String>,
    requests: usize,
    failures: Vec<Failure>,
}

/// Clients creating (and reading) calls through the balancer in the background.
struct Load {
    started: Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    created: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    workers: Vec<tokio::task::JoinHandle<LoadReport>>,
}

impl Load {
    fn start(cluster: &Cluster, name: &str, config: LoadConfig) -> Load {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicUsize::new(0));
        let created = Arc::new(AtomicUsize::new(0));
        let workers = (0..config.workers)
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
                    let record =
                        |report: &mut LoadReport, request: String, r: &Result<Reply, String>| {
                            report.requests += 1;
                            match r {
                                Ok(r) if r.status.is_success() => true,
                                Ok(r) => {
                                    report.failures.push(Failure {
                                        at: started.elapsed(),
                                        request,
                                        status: Some(r.status),
                                        body: r.body.to_string(),
                                    });
                                    false
                                }
                                Err(e) => {
                                    report.failures.push(Failure {
                                        at: started.elapsed(),
                                        request,
                                        status: None,
                                        body: e.clone(),
                                    });
                                    false
                                }
                            }
                        };
                    while !stop.load(Ordering::SeqCst) {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if config.calls.is_some_and(|n| i >= n) {
                            break;
                        }
                        let idem = format!("{name}-{i}");
                        let mut id = None;
                        for _attempt in 0..200 {
                            let r = send_to(
                                &http,
                                &base,
                                &key,
                                Method::POST,
                                "/v1/calls",
                                Some(call_body(&agent, ANSWERS)),
                                &[("idempotency-key", &idem)],
                            )
                            .await;
                            if record(&mut report, format!("POST /v1/calls ({idem})"), &r) {
                                id = r
                                    .ok()
                                    .and_then(|r| r.body["id"].as_str().map(str::to_owned));
                                break;
                            }
                            if !config.retry_creates {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        let Some(id) = id else { continue };
                        created.fetch_add(1, Ordering::SeqCst);
                        report.ids.push(id.clone());
                        if config.read_back {
                            for path in
                                [format!("/v1/calls/{id}"), format!("/v1/calls/{id}/events")]
                            {
                                let r = send_to(&http, &base, &key, Method::GET, &path, None, &[])
                                    .await;
                                record(&mut report, format!("GET {path}"), &r);
                            }
                        }
                        tokio::time::sleep(config.pace).await;
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

    /// Calls created so far.
    fn created(&self) -> usize {
        self.created.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `n` calls were created.
    async fn wait_created(&self, n: usize) {
        let deadline = Instant::now() + BOUND;
        while self.created() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} calls created within {BOUND:?}",
                self.created()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the clients (or lets them finish their quota) and sums up what they did.
    async fn finish(self, stop: bool) -> LoadReport {
        if stop {
            self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let mut all = LoadReport::default();
        for w in self.workers {
            let r = w.await.expect("a load client panicked");
            all.ids.extend(r.ids);
            all.requests += r.requests;
            all.failures.extend(r.failures);
        }
        all.failures.sort_by_key(|f| f.at);
        all
    }
}
