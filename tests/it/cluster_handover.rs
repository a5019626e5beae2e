//! Two in-process nodes on one database: a command for a call the other node runs is
//! forwarded there; pokes need a node's signature; and a live conversation moves with its
//! call when its node drains (the new node points the carrier's media stream at itself and
//! the conversation resumes there, without a second greeting).
//! Requires `DATABASE_URL` and `REDIS_URL` (`eval "$(scripts/services env)"`).

use crate::common;

use std::time::{Duration, Instant};

use common::api::{free_port, Api};
use iace::app::Running;
use iace::config::{ClusterArgs, ServeArgs, TelephonyKind, TelnyxArgs};
use iace_dev::FakeVoices;
use iace_fakes::cartesia::FakeCartesiaConfig;
use iace_fakes::deepgram::FakeDeepgramConfig;
use iace_fakes::groq::{FakeGroqConfig, Reply};
use iace_fakes::lb::{LoadBalancer, LoadBalancerConfig};
use iace_fakes::telnyx::{CallerScript, FakeTelnyx, FakeTelnyxConfig, Scenario};
use reqwest::StatusCode;
use serde_json::{json, Value};

const ADMIN: &str = "cluster-admin-token";
const SECRET: &str = "cluster-test-secret";

/// Settings of one node of a two-node cluster on `database_url`.
fn node_args(database_url: &str, port: u16, id: &str, prefix: &str) -> ServeArgs {
    ServeArgs {
        node_id: Some(id.into()),
        admin_token: Some(ADMIN.into()),
        sim_key_prefix: prefix.into(),
        sim_ring_ms: 100,
        sim_talk_ms: 60_000,
        cluster: ClusterArgs {
            node_url: Some(format!("http://127.0.0.1:{port}")),
            lease_ttl_secs: 3,
            lease_renew_ms: 300,
            drain_deadline_secs: 0,
        },
        telnyx: TelnyxArgs {
            media_secret: Some(SECRET.into()),
            ..TelnyxArgs::default()
        },
        ..ServeArgs::local(
            database_url,
            &common::db::redis_url(),
            format!("127.0.0.1:{port}").parse().unwrap(),
        )
    }
}

/// The cluster as `GET /v1/admin/cluster` shows it.
async fn cluster(http: &reqwest::Client, base: &str) -> Value {
    let r = http
        .get(format!("{base}/v1/admin/cluster"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// Waits until every shard is held and each of `nodes` holds some.
async fn wait_split(http: &reqwest::Client, base: &str, nodes: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = cluster(http, base).await;
        let held = |id: &str| {
            c["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["node_id"] == id)
                .map_or(0, |n| n["shards"].as_u64().unwrap())
        };
        let total: u64 = nodes.iter().map(|n| held(n)).sum();
        if total == 256 && nodes.iter().all(|n| held(n) > 0) {
            return c;
        }
        assert!(Instant::now() < deadline, "shards never split: {c:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A counter of a node's `/metrics`.
async fn metric(http: &reqwest::Client, running: &Running, line: &str) -> f64 {
    let addr = running.metrics_addr.expect("metrics listener");
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(line))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_for_a_call_another_node_runs_is_forwarded_and_unsigned_pokes_are_refused() {
    let (database_url, _pool) = common::db::migrated_pool().await;
    let prefix = format!("iace:test:{}:", uuid::Uuid::new_v4());
    let (pa, pb) = (free_port(), free_port());
    let a = iace::app::start(node_args(&database_url, pa, "node-a", &prefix))
        .await
        .expect("node a");
    let b = iace::app::start(node_args(&database_url, pb, "node-b", &prefix))
        .await
        .expect("node b");
    let (base_a, base_b) = (
        format!("http://127.0.0.1:{pa}"),
        format!("http://127.0.0.1:{pb}"),
    );
    let (_, key) = iace::app::create_org(&database_url, "Cluster test")
        .await
        .expect("org");
    let api_a = Api::new(base_a.clone(), key.clone());
    let api_b = Api::new(base_b.clone(), key);
    let http = reqwest::Client::new();
    wait_split(&http, &base_a, &["node-a", "node-b"]).await;

    let agent = api_a
        .post("/v1/agents", json!({"name": "Ana"}), StatusCode::CREATED)
        .await;
    let body = json!({"to": "+14155550100", "from": "+14155550199", "agent_id": agent["id"]});
    // Created on a (a call starts on the node that takes the request), hung up through b.
    let call = api_a.post("/v1/calls", body, StatusCode::CREATED).await;
    let id = call["id"].as_str().unwrap().to_owned();
    api_a
        .wait_status(&id, "in_progress", Duration::from_secs(30))
        .await;
    assert!(a.engine.runs_call(id.parse().unwrap()));
    assert!(!b.engine.runs_call(id.parse().unwrap()));
    let hung = api_b
        .post(&format!("/v1/calls/{id}/hangup"), json!({}), StatusCode::OK)
        .await;
    assert_eq!(hung["id"], id.as_str(), "{hung}");
    let ended = api_b.wait_ended(&id, Duration::from_secs(30)).await;
    assert_eq!(ended["status"], "completed", "{ended}");
    assert_eq!(
        metric(&http, &b, "iace_forwarded_requests_total{outcome=\"ok\"}").await,
        1.0
    );
    // Every call read answers the same on both nodes.
    assert_eq!(api_a.events(&id).await, api_b.events(&id).await);

    // A poke without a node's signature, or with a forged one, is refused.
    let poke = |headers: Vec<(&'static str, String)>| {
        let mut req = http
            .post(format!("{base_a}/internal/v1/poke"))
            .json(&json!({"calls": [id]}));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    assert_eq!(
        poke(vec![]).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let forged = vec![
        ("x-iace-node", "node-b".to_owned()),
        (
            "x-iace-timestamp",
            chrono::Utc::now().timestamp().to_string(),
        ),
        ("x-iace-signature", "00".repeat(32)),
    ];
    assert_eq!(
        poke(forged).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    // Signed with the cluster's key, it is taken.
    let signer = iace::cluster::InternalKey::from_secret(SECRET.as_bytes(), "node-b");
    let body = serde_json::to_vec(&json!({"calls": [id]})).unwrap();
    let mut req = http
        .post(format!("{base_a}/internal/v1/poke"))
        .header("content-type", "application/json")
        .body(body.clone());
    for (k, v) in signer.sign(
        chrono::Utc::now().timestamp(),
        &reqwest::Method::POST,
        "/internal/v1/poke",
        &body,
    ) {
        req = req.header(k, v);
    }
    assert_eq!(req.send().await.unwrap().status(), StatusCode::ACCEPTED);
    // A signed poke with a malformed body is refused with the error envelope.
    let bad = br#"{"calls": "not a list"}"#.to_vec();
    let mut req = http
        .post(format!("{base_a}/internal/v1/poke"))
        .header("content-type", "application/json")
        .body(bad.clone());
    for (k, v) in signer.sign(
        chrono::Utc::now().timestamp(),
        &reqwest::Method::POST,
        "/internal/v1/poke",
        &bad,
    ) {
        req = req.header(k, v);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request", "{body}");

    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_conversation_moves_with_its_call_when_its_node_drains() {
    const CALLEE: &str = "+14155550142";
    let (database_url, _pool) = common::db::migrated_pool().await;
    let lb = LoadBalancer::start(LoadBalancerConfig {
        check_interval: Duration::from_millis(100),
        ..LoadBalancerConfig::default()
    })
    .await
    .expect("load balancer");
    let telnyx = FakeTelnyx::start(FakeTelnyxConfig {
        api_key: "k-test".into(),
        connection_id: "conn-test".into(),
        signing_seed: [9u8; 32],
        inbound_webhook_url: Some(format!("{}/v1/webhooks/telnyx", lb.base_url())),
        default_scenario: Scenario::Answer {
            ring: Duration::from_millis(200),
            talk: None,
        },
        webhook_retry_delays: vec![Duration::from_millis(100), Duration::from_millis(300)],
        ..FakeTelnyxConfig::default()
    })
    .await
    .expect("fake telnyx");
    let voices = FakeVoices::start(
        FakeDeepgramConfig::default(),
        FakeCartesiaConfig::default(),
        FakeGroqConfig::default(),
    )
    .await
    .expect("fake voice vendors");
    let start = |port: u16, id: &'static str| {
        let mut args = node_args(&database_url, port, id, "unused:");
        args.telephony = TelephonyKind::Telnyx;
        args.telnyx = TelnyxArgs {
            telnyx_api_key: Some("k-test".into()),
            telnyx_connection_id: Some("conn-test".into()),
            telnyx_public_key: Some(telnyx.public_key_base64()),
            telnyx_api_base: telnyx.api_base(),
            telnyx_amd: "disabled".into(),
            telnyx_webhook_tolerance_secs: 300,
            public_url: Some(lb.base_url()),
            media_secret: Some(SECRET.into()),
            media_greeting: false,
            media_echo: false,
        };
        args.voice = voices.args();
        args.max_call_secs = 600;
        iace::app::start(args)
    };
    let (pa, pb) = (free_port(), free_port());
    let a = start(pa, "voice-a").await.expect("node a");
    let (_, key) = iace::app::create_org(&database_url, "Voice cluster")
        .await
        .expect("org");
    let base_a = format!("http://127.0.0.1:{pa}");
    let api_a = Api::new(base_a.clone(), key.clone());
    let lb_api = Api::new(lb.base_url(), key);
    lb.add_backend(&base_a).unwrap();
    let agent = api_a
        .post(
            "/v1/agents",
            json!({"name": "Ava", "persona_config": {
                "system_prompt": "You are Ava, Acme's billing assistant.",
                "greeting": "Hi, this is Ava from Acme. How can I help?",
            }}),
            StatusCode::CREATED,
        )
        .await;
    voices
        .deepgram
        .set_script(["I was charged twice this month.", "It was on the third."]);
    voices
        .groq
        .push_reply(Reply::text("I'm sorry about that. Let me check your bill."));
    voices
        .groq
        .push_reply(Reply::text("Thanks, I see the second charge on the third."));
    let wait = Duration::from_secs(20);
    telnyx.set_caller_script(
        CALLEE,
        CallerScript::new()
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(Duration::from_millis(500), wait)
            .say(Duration::from_millis(1200))
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(Duration::from_millis(500), wait)
            // The caller waits for the agent; the move cuts this step off, and the caller
            // goes on from the next one on the stream to the new node.
            .wait_for_agent_audio(Duration::from_secs(60))
            .say(Duration::from_millis(1200))
            .wait_for_agent_audio(wait)
            .wait_for_agent_silence(Duration::from_millis(500), wait)
            .hangup(),
    );
    // The call starts on a, alone in the cluster: its conversation and media are a's.
    let call = api_a
        .post(
            "/v1/calls",
            json!({"to": CALLEE, "from": "+14155550199", "agent_id": agent["id"]}),
            StatusCode::CREATED,
        )
        .await;
    let id = call["id"].as_str().unwrap().to_owned();
    let call_id: uuid::Uuid = id.parse().unwrap();
    // Wait for one exchange: greeting, the caller's line, the agent's answer.
    let deadline = Instant::now() + Duration::from_secs(60);
    let agent_lines_before = loop {
        let t = api_a.get(&format!("/v1/calls/{id}/transcript")).await;
        let agent_lines = t["segments"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["speaker"] == "agent")
            .count();
        if agent_lines >= 2 {
            break agent_lines;
        }
        assert!(Instant::now() < deadline, "no exchange on a: {t:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(a.engine.voice_sessions(), 1);

    // The speech-to-text connection b opens hears what the caller says next.
    voices.deepgram.set_script(["It was on the third."]);
    // b joins; a drains (its deadline for live conversations is 0 s): the call moves to b.
    let b = start(pb, "voice-b").await.expect("node b");
    let base_b = format!("http://127.0.0.1:{pb}");
    lb.add_backend(&base_b).unwrap();
    a.engine.drain().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(b.engine.runs_call(call_id) && b.engine.voice_sessions() == 1) {
        assert!(
            Instant::now() < deadline,
            "the conversation never resumed on b (runs the call: {}, sessions: {})",
            b.engine.runs_call(call_id),
            b.engine.voice_sessions()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(a.engine.voice_sessions(), 0, "a let the conversation go");
    // The carrier's facts journal the gap: the stream at a stopped, one at b started.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let kinds = lb_api.kinds(&id).await;
        let started = kinds.iter().filter(|k| *k == "stream_started").count();
        let stopped = kinds.iter().filter(|k| *k == "stream_stopped").count();
        if started >= 2 && stopped >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no media move in the journal: {kinds:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // No second greeting: the resumed conversation only listens.
    let t = lb_api.get(&format!("/v1/calls/{id}/transcript")).await;
    let greetings = t["segments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["speaker"] == "agent" && s["text"] == "Hi, this is Ava from Acme. How can I help?"
        })
        .count();
    assert_eq!(greetings, 1, "{t:#}");
    // The call is b's now: the caller speaks, b's agent answers with what was said before
    // in mind, and the caller hangs up.
    lb.remove_backend(&base_a);
    a.shutdown().await;
    let ended = lb_api.wait_ended(&id, Duration::from_secs(90)).await;
    assert_eq!(ended["status"], "completed", "{ended}");
    let t = lb_api.get(&format!("/v1/calls/{id}/transcript")).await;
    let said: Vec<(String, String)> = t["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["speaker"].as_str().unwrap().to_owned(),
                s["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let after: Vec<&(String, String)> = said.iter().skip(agent_lines_before + 1).collect();
    assert!(
        after
            .iter()
            .any(|(who, text)| who == "caller" && text == "It was on the third."),
        "the caller was heard on b: {t:#}"
    );
    assert!(
        after
            .iter()
            .any(|(who, text)| who == "agent"
                && text == "Thanks, I see the second charge on the third."),
        "b's agent answered: {t:#}"
    );
    // The model on b saw the conversation held on a.
    let bodies: Vec<String> = voices
        .groq
        .requests()
        .iter()
        .map(|r| r.body.to_string())
        .collect();
    assert!(
        bodies.iter().any(|b| b.contains("It was on the third.")
            && b.contains("I was charged twice this month.")
            && b.contains("Let me check your bill.")),
        "no request on b carried the conversation held on a: {bodies:#?}"
    );
    let events = lb_api.events(&id).await;
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "journal contiguous"
    );

    b.shutdown().await;
    telnyx.shutdown().await;
    voices.shutdown().await;
    lb.shutdown().await;
}
