//! Outbound webhooks end to end: the real server delivers to a receiver that verifies every
//! request with the Standard Webhooks reference library (Python `standardwebhooks`, not the
//! code under test; tests/tools/webhook_receiver.py). Every event of 200 calls arrives exactly
//! once after dedupe and in order per call, through a receiver failing 30% of attempts and a
//! kill -9 of the server mid-delivery; a 410 disables the endpoint and tells the organization;
//! both secrets sign during a rotation; the SSRF guard refuses private destinations.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common;
use common::api::{send, Api};
use common::server::{create_org, Server};
use common::wait::wait_within;

/// Retries a second apart (the production schedule waits minutes to hours).
const FAST_RETRIES: &str = "1,1,1,1,1,1,1,1,1,1,1";

/// The receiver process and its files.
struct Receiver {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Receiver {
    async fn start(args: &[&str]) -> Receiver {
        let dir = std::env::temp_dir().join(format!("iace-receiver-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let python = std::env::var("IACE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/tools/webhook_receiver.py"
        );
        let child = Command::new(&python)
            .arg(script)
            .arg(dir.join("port"))
            .arg(dir.join("secrets"))
            .arg(dir.join("log"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting the receiver with {python} (scripts/services env sets IACE_TEST_PYTHON): {e}")
            });
        let mut receiver = Receiver {
            child,
            dir,
            url: String::new(),
        };
        let port_file = receiver.dir.join("port");
        wait_within(
            "the receiver to listen",
            Duration::from_secs(60),
            async || {
                if let Some(status) = receiver.child.try_wait().unwrap() {
                    panic!("the receiver exited: {status} (is standardwebhooks installed?)");
                }
                port_file.exists()
            },
        )
        .await;
        let port = std::fs::read_to_string(&port_file).unwrap();
        receiver.url = format!("http://127.0.0.1:{}/hooks/iace", port.trim());
        receiver
    }

    fn set_secrets(&self, secrets: &[&str]) {
        let tmp = self.dir.join("secrets.tmp");
        std::fs::write(&tmp, secrets.join("\n")).unwrap();
        std::fs::rename(tmp, self.dir.join("secrets")).unwrap();
    }

    /// Every logged request, in the order received.
    fn log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Distinct ids of the verified, accepted deliveries.
    fn accepted(&self) -> HashSet<String> {
        self.log()
            .iter()
            .filter(|r| r["verified"] == true && r.get("type").is_some())
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn server(db: &str, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![
        ("IACE_ALLOW_PRIVATE_URLS", "true"),
        ("IACE_WEBHOOK_RETRY_SCHEDULE", FAST_RETRIES),
        ("IACE_SIM_RING_MS", "200"),
        ("IACE_SIM_TALK_MS", "1500"),
        ("IACE_PLAN_LIMITS", "false"),
    ];
    env.extend_from_slice(extra);
    Server::start(db, &env).await
}

async fn agent(api: &Api) -> String {
    let a = api
        .post(
            "/v1/agents",
            json!({"name": "Renewals", "persona_config": {"prompt": "hi"}}),
            StatusCode::CREATED,
        )
        .await;
    a["id"].as_str().unwrap().to_owned()
}

/// Registers `url` for `types`; its id and secret.
async fn endpoint(api: &Api, url: &str, types: &[&str]) -> (String, String) {
    let e = api
        .post(
            "/v1/webhook-endpoints",
            json!({"url": url, "event_types": types}),
            StatusCode::CREATED,
        )
        .await;
    (
        e["id"].as_str().unwrap().to_owned(),
        e["secret"].as_str().unwrap().to_owned(),
    )
}

async fn place_call(api: &Api, agent: &str) -> String {
    let c = api
        .post(
            "/v1/calls",
            json!({"to": "+14155550100", "from": "+14155550199", "agent_id": agent}),
            StatusCode::CREATED,
        )
        .await;
    c["id"].as_str().unwrap().to_owned()
}

const ALL: [&str; 8] = [
    "call.created",
    "call.ringing",
    "call.answered",
    "call.ended",
    "call.transferred",
    "call.escalated",
    "call.transcript_ready",
    "call.analyzed",
];

/// The events a finished call causes, in order, from its journal.
fn expected_types(call: &Value, kinds: &[String]) -> Vec<&'static str> {
    let mut types = vec!["call.created"];
    if kinds.iter().any(|k| k == "ringing") {
        types.push("call.ringing");
    }
    if call["answered_at"].is_string() {
        types.push("call.answered");
    }
    types.push("call.ended");
    if call["answered_at"].is_string() {
        types.push("call.transcript_ready");
    }
    types
}

/// Every delivery of an endpoint, all pages.
async fn deliveries(api: &Api, endpoint: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/webhook-endpoints/{endpoint}/deliveries?limit=100&cursor={c}"),
            None => format!("/v1/webhook-endpoints/{endpoint}/deliveries?limit=100"),
        };
        let page = api.get(&path).await;
        all.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return all,
        }
    }
}

#[tokio::test]
async fn every_event_of_200_calls_arrives_once_in_order_through_failures_and_a_kill_9() {
    let receiver = Receiver::start(&["--fail-rate", "0.3", "--max-failures-per-id", "3"]).await;
    let db = common::db::fresh_database().await;
    let mut srv = server(&db, &[]).await;
    let (_, key) = create_org(&db, "Acme");
    let api = Api::new(srv.base.clone(), key);
    let agent = agent(&api).await;
    let (endpoint_id, secret) = endpoint(&api, &receiver.url, &ALL).await;
    receiver.set_secrets(&[&secret]);

    let mut calls = Vec::new();
    for chunk in 0..10 {
        let placed = futures::future::join_all((0..20).map(|_| place_call(&api, &agent))).await;
        calls.extend(placed);
        assert_eq!(calls.len(), (chunk + 1) * 20);
    }

    // Mid-delivery: some events are in, most are not.
    wait_within(
        "the first deliveries",
        Duration::from_secs(120),
        async || receiver.accepted().len() >= 150,
    )
    .await;
    srv.kill9();
    let before_restart = receiver.accepted().len();
    srv.spawn().await;
    let api = Api::new(srv.base.clone(), api.key.clone());

    let mut finished = HashMap::new();
    for id in &calls {
        let call = api.wait_ended(id, Duration::from_secs(180)).await;
        finished.insert(id.clone(), expected_types(&call, &api.kinds(id).await));
    }
    let expected: usize = finished.values().map(Vec::len).sum();
    wait_within(
        "every event to arrive",
        Duration::from_secs(240),
        async || receiver.accepted().len() >= expected,
    )
    .await;

    let log = receiver.log();
    let unverified: Vec<&Value> = log.iter().filter(|r| r["verified"] != true).collect();
    assert!(
        unverified.is_empty(),
        "signatures that did not verify: {unverified:?}"
    );
    // Exactly once after dedupe: each call's events, no more, in order of first arrival.
    let mut seen = HashSet::new();
    let mut per_call: HashMap<String, Vec<String>> = HashMap::new();
    for r in log.iter().filter(|r| r.get("type").is_some()) {
        let id = r["id"].as_str().unwrap();
        if seen.insert(id.to_owned()) {
            per_call
                .entry(r["call_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(r["type"].as_str().unwrap().to_owned());
            assert_eq!(r["payload"]["type"], r["type"]);
            assert_eq!(r["payload"]["version"], 1);
        }
    }
    assert_eq!(seen.len(), expected, "distinct events delivered");
    let mut answered = 0;
    for (id, want) in &finished {
        let got: Vec<&str> = per_call
            .get(id)
            .map(|v| v.iter().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(&got, want, "events of call {id}");
        if want.contains(&"call.answered") {
            answered += 1;
        }
    }
    assert!(answered > 150, "{answered} of 200 calls answered");
    let duplicates = log.iter().filter(|r| r.get("type").is_some()).count() - seen.len();
    let transcript = log
        .iter()
        .find(|r| r["type"] == "call.transcript_ready")
        .expect("a transcript");
    assert!(
        transcript["payload"]["data"]["segments"].is_array(),
        "{transcript}"
    );
    assert!(transcript["payload"]["data"]["call_id"].is_string());

    // The record: every delivery delivered, the failed attempts counted.
    let records = deliveries(&api, &endpoint_id).await;
    assert_eq!(records.len(), expected);
    assert!(
        records.iter().all(|d| d["status"] == "delivered"),
        "{records:?}"
    );
    let retried = records
        .iter()
        .filter(|d| d["attempts"].as_u64().unwrap() > 1)
        .count();
    assert!(
        retried > 100,
        "{retried} deliveries needed more than one attempt"
    );
    // The queue's gauges come to say so (sampled every 5 s), and the attempts were counted.
    let metrics = srv.metrics_base.clone();
    wait_within(
        "the webhook queue's gauges",
        Duration::from_secs(60),
        async || {
            common::metrics::scrape(&metrics)
                .await
                .lines()
                .any(|l| l == r#"iace_queue_depth{queue="webhooks"} 0"#)
        },
    )
    .await;
    let delivered = common::metrics::series(
        &metrics,
        r#"iace_webhook_deliveries_total{outcome="delivered"}"#,
    )
    .await;
    assert!(delivered >= 1.0, "{delivered}");
    eprintln!(
        "{expected} events: {before_restart} in before the kill, {duplicates} sent again \
         (receiver dedupes), {retried} retried after a 500"
    );
}

#[tokio::test]
async fn a_410_disables_the_endpoint_and_the_organization_is_told() {
    let receiver = Receiver::start(&["--status-for-all", "410"]).await;
    let db = common::db::fresh_database().await;
    let srv = server(&db, &[]).await;
    let (_, key) = create_org(&db, "Acme");
    let api = Api::new(srv.base.clone(), key);
    let agent = agent(&api).await;
    let (endpoint_id, secret) =
        endpoint(&api, &receiver.url, &["call.created", "call.ended"]).await;
    receiver.set_secrets(&[&secret]);
    let call = place_call(&api, &agent).await;

    wait_within(
        "the endpoint to be disabled",
        Duration::from_secs(60),
        async || {
            api.get(&format!("/v1/webhook-endpoints/{endpoint_id}"))
                .await["enabled"]
                == false
        },
    )
    .await;
    let e = api
        .get(&format!("/v1/webhook-endpoints/{endpoint_id}"))
        .await;
    assert!(
        e["disabled_reason"].as_str().unwrap().contains("410"),
        "{e}"
    );
    let log = api.get("/v1/organization/log").await;
    let entry = &log["data"][0];
    assert_eq!(entry["kind"], "webhook_endpoint.disabled", "{log}");
    assert_eq!(entry["data"]["endpoint_id"], endpoint_id.as_str());
    // Nothing more goes out: the call's end is not even queued for a disabled endpoint.
    api.wait_ended(&call, Duration::from_secs(60)).await;
    let records = deliveries(&api, &endpoint_id).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["status"], "failed");
    assert_eq!(records[0]["last_status_code"], 410);
    // A retry needs the endpoint enabled again.
    let retry = format!(
        "/v1/webhook-endpoints/{endpoint_id}/deliveries/{}/retry",
        records[0]["id"].as_str().unwrap()
    );
    let refused = send(&api.base, Method::POST, &retry, Some(&api.key), None).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert_eq!(
        receiver
            .log()
            .iter()
            .filter(|r| r["answered"] == 410)
            .count(),
        1
    );
}

#[tokio::test]
async fn during_a_rotation_both_secrets_sign_and_after_it_only_the_new_one() {
    let receiver = Receiver::start(&[]).await;
    let db = common::db::fresh_database().await;
    let srv = server(&db, &[]).await;
    let (_, key) = create_org(&db, "Acme");
    let api = Api::new(srv.base.clone(), key);
    let agent = agent(&api).await;
    let (endpoint_id, first) = endpoint(&api, &receiver.url, &["call.created"]).await;
    let rotated = api
        .post(
            &format!("/v1/webhook-endpoints/{endpoint_id}/rotate-secret"),
            json!({"window_secs": 3600}),
            StatusCode::OK,
        )
        .await;
    let second = rotated["secret"].as_str().unwrap().to_owned();
    receiver.set_secrets(&[&first, &second]);
    place_call(&api, &agent).await;
    wait_within("a delivery", Duration::from_secs(60), async || {
        receiver.accepted().len() == 1
    })
    .await;
    assert_eq!(
        receiver.log()[0]["secrets"],
        json!([0, 1]),
        "both secrets verify"
    );

    let ended = api
        .post(
            &format!("/v1/webhook-endpoints/{endpoint_id}/rotate-secret"),
            json!({"window_secs": 0}),
            StatusCode::OK,
        )
        .await;
    let third = ended["secret"].as_str().unwrap().to_owned();
    receiver.set_secrets(&[&first, &second, &third]);
    place_call(&api, &agent).await;
    wait_within("a second delivery", Duration::from_secs(60), async || {
        receiver.accepted().len() == 2
    })
    .await;
    assert_eq!(
        receiver.log()[1]["secrets"],
        json!([2]),
        "only the new secret"
    );
}

#[tokio::test]
async fn with_the_guard_on_private_destinations_are_refused() {
    let receiver = Receiver::start(&[]).await;
    let db = common::db::fresh_database().await;
    let srv = Server::start(
        &db,
        &[
            ("IACE_WEBHOOK_RETRY_SCHEDULE", "1"),
            ("IACE_PLAN_LIMITS", "false"),
        ],
    )
    .await;
    let (_, key) = create_org(&db, "Acme");
    let api = Api::new(srv.base.clone(), key);
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/hook",
    ] {
        let r = send(
            &srv.base,
            Method::POST,
            "/v1/webhook-endpoints",
            Some(&api.key),
            Some(json!({"url": url, "event_types": ["call.created"]})),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{url}: {}", r.body);
        assert!(
            r.body.to_string().contains("not a public address"),
            "{}",
            r.body
        );
    }
    // A name is judged by what it resolves to, when the delivery is made.
    let by_name = receiver.url.replace("127.0.0.1", "localhost");
    let (endpoint_id, secret) = endpoint(&api, &by_name, &["call.created"]).await;
    receiver.set_secrets(&[&secret]);
    let agent = agent(&api).await;
    place_call(&api, &agent).await;
    wait_within(
        "the delivery to be given up",
        Duration::from_secs(60),
        async || {
            let d = deliveries(&api, &endpoint_id).await;
            d.len() == 1 && d[0]["status"] == "failed"
        },
    )
    .await;
    let d = &deliveries(&api, &endpoint_id).await[0];
    let error = d["last_error"].as_str().unwrap();
    assert!(error.contains("not a public address"), "{error}");
    assert!(d["last_status_code"].is_null());
    assert!(receiver.log().is_empty(), "the receiver was reached");
}
