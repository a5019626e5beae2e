//! Telnyx end to end: the real Telnyx client, webhook receiver and media endpoint of an
//! in-process server, against the wire-level fake Telnyx (`iace_fakes::telnyx`), with real
//! Postgres and real Redis. Real sockets and real time (short rings and talks).
//! Requires `DATABASE_URL` and `REDIS_URL` (`eval "$(scripts/services env)"`).

use crate::common;

use common::api::{free_port, Api};

use std::time::{Duration, Instant};

use iace::app::Running;
use iace::config::{BreakerArgs, ServeArgs, TelephonyKind, TelnyxArgs};
use iace_fakes::telnyx::{
    sign_webhook, DeliveryFaults, FakeTelnyx, FakeTelnyxConfig, LegState, Scenario,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SEED: [u8; 32] = [42u8; 32];
const ADMIN_TOKEN: &str = "test-admin-token";

/// A server wired to a fake Telnyx, with an organization, an agent and a number.
struct Env {
    fake: FakeTelnyx,
    running: Option<Running>,
    api: Api,
    agent_id: String,
    pool: sqlx::PgPool,
}

impl std::ops::Deref for Env {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

const AGENT_NUMBER: &str = "+14155550123";

impl Env {
    async fn start(default: Scenario) -> Env {
        Env::start_with(default, BreakerArgs::default()).await
    }

    async fn start_with(default: Scenario, breakers: BreakerArgs) -> Env {
        let (database_url, pool) = common::db::migrated_pool().await;
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let fake = FakeTelnyx::start(FakeTelnyxConfig {
            api_key: "k-test".into(),
            connection_id: "conn-test".into(),
            signing_seed: SEED,
            inbound_webhook_url: Some(format!("{base}/v1/webhooks/telnyx")),
            default_scenario: default,
            webhook_retry_delays: vec![Duration::from_millis(100), Duration::from_millis(300)],
            ..FakeTelnyxConfig::default()
        })
        .await
        .expect("fake telnyx");
        let running = iace::app::start(ServeArgs {
            telephony: TelephonyKind::Telnyx,
            telnyx: TelnyxArgs {
                telnyx_api_key: Some("k-test".into()),
                telnyx_connection_id: Some("conn-test".into()),
                telnyx_public_key: Some(fake.public_key_base64()),
                telnyx_api_base: fake.api_base(),
                telnyx_amd: "detect".into(),
                telnyx_webhook_tolerance_secs: 300,
                public_url: Some(base.clone()),
                media_secret: Some("test-media-secret".into()),
                media_greeting: true,
                media_echo: true,
            },
            breakers,
            admin_token: Some(ADMIN_TOKEN.into()),
            sim_ring_ms: 0,
            sim_talk_ms: 0,
            sim_key_prefix: "unused:".into(),
            node_id: Some("telnyx-test".into()),
            // Headers have 2 s: a media WebSocket that the edge did not see upgrade would be
            // cut 2 s into its stream (a quiet or busy stream must never be).
            edge: iace::config::EdgeArgs {
                http_header_timeout_secs: 2,
                ..Default::default()
            },
            ..ServeArgs::local(
                &database_url,
                &common::db::redis_url(),
                format!("127.0.0.1:{port}").parse().unwrap(),
            )
        })
        .await
        .expect("server");
        let (_, key) = iace::app::create_org(&database_url, "Telnyx test")
            .await
            .expect("org");
        let mut env = Env {
            fake,
            running: Some(running),
            api: Api::new(base, key),
            agent_id: String::new(),
            pool,
        };
        let agent = env
            .post(
                "/v1/agents",
                json!({"name": "Agent", "agent_type": "both"}),
                StatusCode::CREATED,
            )
            .await;
        env.agent_id = agent["id"].as_str().unwrap().to_owned();
        env
    }

    async fn dial(&self, to: &str) -> String {
        let call = self
            .post(
                "/v1/calls",
                json!({"to": to, "from": "+14155550199", "agent_id": self.agent_id}),
                StatusCode::CREATED,
            )
            .await;
        call["id"].as_str().unwrap().to_owned()
    }

    async fn inbox_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM inbox")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// A signed webhook as Telnyx would send it.
    async fn webhook(&self, body: &str, seed: &[u8; 32], ts: i64) -> reqwest::Response {
        let ts = ts.to_string();
        self.http
            .post(format!("{}/v1/webhooks/telnyx", self.base))
            .header(
                "telnyx-signature-ed25519",
                sign_webhook(seed, &ts, body.as_bytes()),
            )
            .header("telnyx-timestamp", ts)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        self.fake.shutdown().await;
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn answer(ring_ms: u64, talk_ms: u64) -> Scenario {
    Scenario::Answer {
        ring: Duration::from_millis(ring_ms),
        talk: Some(Duration::from_millis(talk_ms)),
    }
}

fn event_body(id: &str, event_type: &str, payload: Value) -> String {
    json!({
        "data": {"record_type": "event", "event_type": event_type, "id": id,
                 "occurred_at": chrono::Utc::now().to_rfc3339(), "payload": payload},
        "meta": {"attempt": 1, "delivered_to": "test"}
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_through_the_real_client_with_media_both_ways() {
    // Talk outlasts the 1.5 s greeting, so its closing mark comes back from the carrier.
    let env = Env::start(answer(300, 3000)).await;
    let id = env.dial("+14155550100").await;
    let call = env
        .wait_status(&id, "completed", Duration::from_secs(20))
        .await;
    assert_eq!(call["end_reason"], "normal_clearing");
    assert_eq!(call["direction"], "outbound");

    // The dial went out exactly once, with our ids and URLs.
    let dials: Vec<_> = env
        .fake
        .commands()
        .into_iter()
        .filter(|c| c.action == "dial")
        .collect();
    assert_eq!(dials.len(), 1, "{dials:?}");
    let dial = &dials[0];
    assert_eq!(dial.status, 200);
    assert_eq!(dial.command_id.as_deref(), Some(format!("{id}:1").as_str()));
    assert_eq!(dial.body["connection_id"], "conn-test");
    assert_eq!(dial.body["to"], "+14155550100");
    assert_eq!(
        dial.body["webhook_url"],
        format!("{}/v1/webhooks/telnyx", env.base)
    );
    assert_eq!(
        dial.body["stream_url"],
        format!(
            "ws://{}/v1/media/telnyx",
            env.base.trim_start_matches("http://")
        )
    );
    assert_eq!(dial.body["stream_bidirectional_mode"], "rtp");
    assert_eq!(dial.body["answering_machine_detection"], "detect");
    let leg = env
        .fake
        .leg(dial.call_control_id.as_deref().unwrap())
        .unwrap();
    assert_eq!(leg.state, LegState::Hangup);

    // Media flowed both ways: the fake sent frames and received ours (greeting + echo).
    assert!(leg.frames_sent > 20, "fake sent {} frames", leg.frames_sent);
    assert!(
        leg.frames_received > 20,
        "fake received {} frames",
        leg.frames_received
    );
    assert!(leg.marks_echoed >= 1, "greeting-end mark echoed");

    // The journal tells the story in order (the media report may come just before or after
    // the hangup; wait for it).
    let deadline = Instant::now() + Duration::from_secs(5);
    let events = loop {
        let events = env.events(&id).await;
        if events.iter().any(|e| e["kind"] == "media_reported") || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("no {k} in {kinds:?}"))
    };
    assert_eq!(kinds[0], "created");
    assert!(pos("initiated") < pos("answered"));
    assert!(pos("ringing") < pos("answered"));
    assert!(pos("answered") < pos("hangup"));
    assert!(pos("stream_started") > pos("answered"));
    assert!(kinds.contains(&"machine_detection"));
    assert_eq!(kinds.iter().filter(|k| **k == "answered").count(), 1);
    assert_eq!(kinds.iter().filter(|k| **k == "hangup").count(), 1);
    let report = events
        .iter()
        .find(|e| e["kind"] == "media_reported")
        .unwrap();
    let report = &report["data"]["report"];
    assert!(report["frames_in"].as_u64().unwrap() > 20, "{report}");
    assert!(report["frames_out"].as_u64().unwrap() > 20, "{report}");

    // The call has ended: its stream token, still within its lifetime, opens nothing.
    let token = dial.body["stream_auth_token"].as_str().unwrap();
    assert!(token.starts_with(&format!("{id}.")), "{token}");
    let stream_url = dial.body["stream_url"].as_str().unwrap();
    let mut request = stream_url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-telnyx-streaming-auth-token", token.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        Err(other) => panic!("expected HTTP 403, got {other}"),
        Ok(_) => panic!("a stream opened for a call that has ended"),
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_call_is_answered_by_the_agent_that_owns_the_number() {
    let env = Env::start(answer(300, 1000)).await;
    env.post(
        "/v1/phone-numbers",
        json!({"number": AGENT_NUMBER, "agent_id": env.agent_id}),
        StatusCode::CREATED,
    )
    .await;
    // The same number cannot be assigned twice.
    env.post(
        "/v1/phone-numbers",
        json!({"number": AGENT_NUMBER, "agent_id": env.agent_id}),
        StatusCode::CONFLICT,
    )
    .await;
    let leg = env
        .fake
        .place_inbound_call("+14155550111", AGENT_NUMBER, answer(10_000, 1000))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        let calls = env.get("/v1/calls").await;
        if let Some(c) = calls["data"].as_array().unwrap().first() {
            break c["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no inbound call was created");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let call = env
        .wait_status(&id, "completed", Duration::from_secs(15))
        .await;
    assert_eq!(call["direction"], "inbound");
    assert_eq!(call["to"], AGENT_NUMBER);
    assert_eq!(call["from"], "+14155550111");
    assert_eq!(call["agent_id"], env.agent_id.as_str());
    let answers: Vec<_> = env
        .fake
        .commands()
        .into_iter()
        .filter(|c| c.action == "answer")
        .collect();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].call_control_id.as_deref(), Some(leg.as_str()));
    let snapshot = env.fake.leg(&leg).unwrap();
    assert!(snapshot.frames_received > 10, "{snapshot:?}");
    let kinds = env.kinds(&id).await;
    assert_eq!(kinds[0], "created");
    assert!(kinds.contains(&"answered".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"hangup".to_owned()), "{kinds:?}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_call_to_an_unknown_number_is_rejected_and_nothing_is_created() {
    let env = Env::start(answer(300, 1000)).await;
    let leg = env
        .fake
        .place_inbound_call("+14155550111", "+14155550999", answer(10_000, 1000))
        .await;
    let rejected = env
        .fake
        .wait_for(Duration::from_secs(10), |f| {
            f.leg(&leg).is_some_and(|l| l.state == LegState::Hangup)
        })
        .await;
    assert!(
        rejected,
        "the leg was not rejected: {:?}",
        env.fake.leg(&leg)
    );
    let rejects: Vec<_> = env
        .fake
        .commands()
        .into_iter()
        .filter(|c| c.action == "reject")
        .collect();
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0].body["cause"], "CALL_REJECTED");
    assert_eq!(
        env.fake.leg(&leg).unwrap().hangup_cause.as_deref(),
        Some("call_rejected")
    );
    let calls = env.get("/v1/calls").await;
    assert_eq!(calls["data"].as_array().unwrap().len(), 0);
    // The offer was acknowledged (Telnyx does not retry it).
    assert!(env
        .fake
        .deliveries()
        .iter()
        .filter(|d| d.event_type == "call.initiated")
        .all(|d| d.status == Some(200)));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_are_refused_and_store_nothing() {
    let env = Env::start(answer(300, 1000)).await;
    let body = event_body(
        "ev-sig-1",
        "call.hangup",
        json!({"call_control_id": "v3:x"}),
    );
    let before = env.inbox_rows().await;

    // Wrong key.
    let r = env.webhook(&body, &[1u8; 32], now()).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Stale timestamp (and one from the future). The server reads its clock a moment after
    // the test does, so a second boundary can fall between them: a timestamp exactly 301 s
    // ahead of the test's second can be only 300 s ahead of the server's and pass. The
    // margins stay clear of the 300 s tolerance from both sides.
    let r = env.webhook(&body, &SEED, now() - 301).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = env.webhook(&body, &SEED, now() + 310).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Tampered body: signed one thing, sent another.
    let ts = now().to_string();
    let sig = sign_webhook(&SEED, &ts, body.as_bytes());
    let tampered = body.replace("call.hangup", "call.answered");
    for (sig, ts, body) in [
        (Some(sig.as_str()), Some(ts.as_str()), tampered.as_str()),
        (None, Some(ts.as_str()), body.as_str()),
        (Some(sig.as_str()), None, body.as_str()),
        (Some("%%%"), Some(ts.as_str()), body.as_str()),
        (Some(sig.as_str()), Some("yesterday"), body.as_str()),
    ] {
        let mut req = env
            .http
            .post(format!("{}/v1/webhooks/telnyx", env.base))
            .body(body.to_owned());
        if let Some(sig) = sig {
            req = req.header("telnyx-signature-ed25519", sig);
        }
        if let Some(ts) = ts {
            req = req.header("telnyx-timestamp", ts);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["code"], "unauthorized");
    }
    assert_eq!(
        env.inbox_rows().await,
        before,
        "a refused webhook stored something"
    );

    // The same body correctly signed is accepted, stored once, and a redelivery changes
    // nothing.
    let r = env.webhook(&body, &SEED, now()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = env.webhook(&body, &SEED, now()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let status: Value = r.json().await.unwrap();
    assert_eq!(status["status"], "duplicate");
    assert_eq!(env.inbox_rows().await, before + 1);

    // Authentic but not an event: 400, nothing stored.
    let r = env.webhook("{\"hello\":1}", &SEED, now()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(env.inbox_rows().await, before + 1);

    // Unknown event types are stored and acknowledged.
    let body = event_body("ev-unknown-1", "call.speak.started", json!({}));
    let r = env.webhook(&body, &SEED, now()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(env.inbox_rows().await, before + 2);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_reordered_deliveries_end_in_the_right_state() {
    let env = Env::start(answer(200, 300)).await;
    env.fake.set_delivery_faults(DeliveryFaults {
        duplicate_every: Some(2),
        reorder: true,
        drop_first_attempt_every: Some(3),
    });
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(env.dial(&format!("+1415555020{n}")).await);
    }
    for id in &ids {
        let call = env
            .wait_status(id, "completed", Duration::from_secs(30))
            .await;
        assert_eq!(call["end_reason"], "normal_clearing", "call {id}");
        let kinds = env.kinds(id).await;
        assert_eq!(
            kinds.iter().filter(|k| *k == "answered").count(),
            1,
            "{kinds:?}"
        );
        assert_eq!(
            kinds.iter().filter(|k| *k == "hangup").count(),
            1,
            "{kinds:?}"
        );
    }
    let deliveries = env.fake.deliveries();
    assert!(
        deliveries.iter().any(|d| d.duplicate),
        "no duplicate was sent"
    );
    assert!(
        deliveries.iter().any(|d| d.attempt > 1),
        "no re-attempt happened"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hangup_that_overtakes_its_answer_still_ends_completed() {
    // The far end never answers on its own: the test plays Telnyx's webhooks by hand.
    let env = Env::start(Scenario::NoAnswer).await;
    let id = env.dial("+14155550300").await;
    let call = env
        .wait_status(&id, "ringing", Duration::from_secs(10))
        .await;
    assert_eq!(call["status"], "ringing");
    let leg = env
        .fake
        .commands()
        .into_iter()
        .find(|c| c.action == "dial")
        .and_then(|c| c.call_control_id)
        .unwrap();
    let state = iace::clients::telnyx::client::client_state(id.parse().unwrap());
    let payload =
        json!({"call_control_id": leg, "client_state": state, "hangup_cause": "normal_clearing"});
    let r = env
        .webhook(
            &event_body("ev-ooo-hangup", "call.hangup", payload),
            &SEED,
            now(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let call = env
        .wait_status(&id, "completed", Duration::from_secs(10))
        .await;
    assert_eq!(call["end_reason"], "normal_clearing");
    // The late answer changes nothing. The fake answers commands late from here on, so the
    // `call.hangup` it sends for our release overtakes its answer to the hangup command, as
    // it can on a busy machine (or a slow network): either one confirms that the leg is gone.
    env.fake.set_command_latency(Duration::from_millis(1500));
    let payload = json!({"call_control_id": leg, "client_state": state});
    let r = env
        .webhook(
            &event_body("ev-ooo-answered", "call.answered", payload),
            &SEED,
            now(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // The late answer made the engine ask the carrier: this leg is really still up at the
    // fake (the test forged the hangup), so the engine releases it. The release is confirmed
    // by the command's answer (`leg_released`) or by the carrier's `call.hangup` of the leg,
    // whichever comes first; the other one then changes nothing.
    let released = |kinds: &[String]| {
        kinds
            .iter()
            .position(|k| k == "release_leg")
            .is_some_and(|r| {
                kinds[r + 1..]
                    .iter()
                    .any(|k| k == "leg_released" || k == "hangup")
            })
    };
    let waited = Instant::now();
    let kinds = loop {
        let kinds = env.kinds(&id).await;
        if released(&kinds) {
            break kinds;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "the leg was never released: {kinds:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let call = env.get(&format!("/v1/calls/{id}")).await;
    assert_eq!(call["status"], "completed");
    assert_eq!(
        kinds.iter().filter(|k| *k == "answered").count(),
        1,
        "{kinds:?}"
    );
    let hangup = kinds.iter().position(|k| k == "hangup").unwrap();
    assert_eq!(kinds[hangup - 1], "answered", "{kinds:?}");
    assert_eq!(kinds[hangup + 1], "release_leg", "{kinds:?}");
    assert!(
        matches!(kinds[hangup + 2].as_str(), "leg_released" | "hangup"),
        "{kinds:?}"
    );
    // Nothing else: the forged hangup ended the call once, the release ran once.
    assert!(
        kinds[hangup + 3..]
            .iter()
            .all(|k| k == "leg_released" || k == "hangup")
            && kinds.len() <= hangup + 4,
        "{kinds:?}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_errors_are_retried_with_the_same_command_id_and_4xx_is_final() {
    let env = Env::start(answer(200, 500)).await;
    // Two 503s then success: one call, three attempts, one command id.
    env.fake.fail_commands(2, 503, None);
    let id = env.dial("+14155550400").await;
    env.wait_status(&id, "completed", Duration::from_secs(20))
        .await;
    let dials: Vec<_> = env
        .fake
        .commands()
        .into_iter()
        .filter(|c| c.action == "dial")
        .collect();
    assert_eq!(dials.len(), 3, "{dials:?}");
    assert!(dials[..2]
        .iter()
        .all(|d| d.injected_failure && d.status == 503));
    assert!(dials
        .iter()
        .all(|d| d.command_id.as_deref() == Some(format!("{id}:1").as_str())));

    // 429 with Retry-After: waited for, then retried.
    env.fake.fail_commands(1, 429, Some(Duration::from_secs(1)));
    let started = Instant::now();
    let id = env.dial("+14155550401").await;
    env.wait_status(&id, "ringing", Duration::from_secs(10))
        .await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured ({:?})",
        started.elapsed()
    );
    env.wait_status(&id, "completed", Duration::from_secs(20))
        .await;

    // A 4xx is not retried: the call fails with vendor_error after one attempt.
    let before = env.fake.commands().len();
    env.fake.fail_commands(1, 400, None);
    let id = env.dial("+14155550402").await;
    let call = env
        .wait_status(&id, "failed", Duration::from_secs(10))
        .await;
    assert_eq!(call["end_reason"], "vendor_error");
    let dials = env.fake.commands()[before..]
        .iter()
        .filter(|c| c.action == "dial")
        .count();
    assert_eq!(dials, 1);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_hangup_releases_the_leg_and_a_repeat_on_the_ended_leg_is_success() {
    let env = Env::start(Scenario::Answer {
        ring: Duration::from_millis(200),
        talk: None,
    })
    .await;
    let id = env.dial("+14155550500").await;
    env.wait_status(&id, "in_progress", Duration::from_secs(10))
        .await;
    env.post(&format!("/v1/calls/{id}/hangup"), json!({}), StatusCode::OK)
        .await;
    let call = env
        .wait_status(&id, "completed", Duration::from_secs(10))
        .await;
    assert_eq!(call["end_reason"], "hangup_requested");
    let leg = env
        .fake
        .commands()
        .into_iter()
        .find(|c| c.action == "dial")
        .and_then(|c| c.call_control_id)
        .unwrap();
    assert!(
        env.fake
            .wait_for(Duration::from_secs(5), |f| f
                .leg(&leg)
                .is_some_and(|l| l.state == LegState::Hangup))
            .await
    );
    // Hanging the ended leg up again (a retry after a lost answer) is success: 422 90018.
    use iace_actors::ports::{LegCommand, Telephony};
    let client = iace::clients::telnyx::TelnyxClient::new(
        iace::clients::telnyx::TelnyxConfig {
            api_base: env.fake.api_base(),
            api_key: "k-test".into(),
            connection_id: "conn-test".into(),
            public_url: env.base.clone(),
            media_url: None,
            answering_machine_detection: "disabled".into(),
            transfer_timeout_secs: 30,
            retry: Default::default(),
            breaker: None,
            stream_tokens: std::sync::Arc::new(|id| id.to_string()),
        },
        None,
    )
    .unwrap();
    client
        .hangup(LegCommand {
            call_id: id.parse().unwrap(),
            carrier_call_id: Some(leg.clone()),
            command_id: format!("{id}:99"),
        })
        .await
        .expect("hangup of an ended leg is success");
    let last = env.fake.commands().last().cloned().unwrap();
    assert_eq!(last.action, "hangup");
    assert_eq!(last.status, 422);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtmf_stream_restart_and_transfer_reach_the_journal() {
    let env = Env::start(Scenario::Answer {
        ring: Duration::from_millis(200),
        talk: None,
    })
    .await;
    // The person the call is transferred to answers and talks for a second.
    env.fake.set_scenario("+14155550777", answer(100, 1000));
    let id = env.dial("+14155550600").await;
    env.wait_status(&id, "in_progress", Duration::from_secs(10))
        .await;
    let leg = env
        .fake
        .commands()
        .into_iter()
        .find(|c| c.action == "dial")
        .and_then(|c| c.call_control_id)
        .unwrap();
    assert!(
        env.fake
            .wait_for(Duration::from_secs(5), |f| f
                .leg(&leg)
                .is_some_and(|l| l.stream_connected))
            .await
    );
    assert!(env.fake.send_dtmf(&leg, '5'));

    // Stream stop and start through the client's commands.
    use iace_actors::ports::LegCommand;
    let client = iace::clients::telnyx::TelnyxClient::new(
        iace::clients::telnyx::TelnyxConfig {
            api_base: env.fake.api_base(),
            api_key: "k-test".into(),
            connection_id: "conn-test".into(),
            public_url: env.base.clone(),
            media_url: None,
            answering_machine_detection: "disabled".into(),
            transfer_timeout_secs: 30,
            retry: Default::default(),
            breaker: None,
            stream_tokens: std::sync::Arc::new({
                let tokens = iace::media::MediaTokens::new(b"test-media-secret");
                move |id| tokens.token(id)
            }),
        },
        None,
    )
    .unwrap();
    let cmd = |seq: u32| LegCommand {
        call_id: id.parse().unwrap(),
        carrier_call_id: Some(leg.clone()),
        command_id: format!("{id}:test-{seq}"),
    };
    client.streaming_stop(cmd(1)).await.unwrap();
    assert!(
        env.fake
            .wait_for(Duration::from_secs(5), |f| f
                .leg(&leg)
                .is_some_and(|l| !l.stream_connected))
            .await
    );
    client.streaming_start(cmd(2)).await.unwrap();
    assert!(
        env.fake
            .wait_for(Duration::from_secs(5), |f| f
                .leg(&leg)
                .is_some_and(|l| l.stream_connected))
            .await,
        "the stream came back with a valid token"
    );

    // Transfer: 202, the carrier bridges, the person hangs up after talking.
    env.post(
        &format!("/v1/calls/{id}/transfer"),
        json!({"to": "+14155550777"}),
        StatusCode::ACCEPTED,
    )
    .await;
    let call = env
        .wait_status(&id, "completed", Duration::from_secs(10))
        .await;
    assert_eq!(call["end_reason"], "normal_clearing");
    let transfer = env
        .fake
        .commands()
        .into_iter()
        .find(|c| c.action == "transfer")
        .unwrap();
    assert_eq!(transfer.body["to"], "+14155550777");
    assert_eq!(
        transfer
            .command_id
            .as_deref()
            .map(|c| c.starts_with(&format!("{id}:"))),
        Some(true)
    );
    let kinds = env.kinds(&id).await;
    for kind in [
        "dtmf",
        "stream_stopped",
        "stream_started",
        "transfer_requested",
        "bridged",
    ] {
        assert!(kinds.contains(&kind.to_owned()), "no {kind} in {kinds:?}");
    }
    let pos = |k: &str| kinds.iter().position(|x| x == k).unwrap();
    assert!(pos("transfer_requested") < pos("bridged"));
    assert!(pos("bridged") < pos("hangup"));
    // A transfer of an ended call is refused.
    env.post(
        &format!("/v1/calls/{id}/transfer"),
        json!({"to": "+14155550777"}),
        StatusCode::CONFLICT,
    )
    .await;
    env.stop().await;
}

impl Env {
    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn breaker(&self, vendor: &str) -> Value {
        let (status, body) = self
            .admin(
                reqwest::Method::GET,
                "/v1/admin/breakers",
                Some(ADMIN_TOKEN),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["vendor"] == vendor)
            .cloned()
            .unwrap()
    }

    /// Polls the breaker until it is in `state` (or `within` passes); returns the last view.
    async fn breaker_until(&self, vendor: &str, state: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let snapshot = self.breaker(vendor).await;
            if snapshot["state"] == state || Instant::now() > deadline {
                return snapshot;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `POST /v1/calls` without asserting the status.
    async fn try_dial(&self, to: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/calls", self.base))
            .bearer_auth(&self.key)
            .json(&json!({"to": to, "from": "+14155550199", "agent_id": self.agent_id}))
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_and_steer_the_breakers() {
    let env = Env::start(answer(200, 300)).await;
    for token in [None, Some("wrong")] {
        let (status, body) = env
            .admin(reqwest::Method::GET, "/v1/admin/breakers", token)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    // A tenant's API key is not the operator token.
    let key = env.key.clone();
    let (status, _) = env
        .admin(reqwest::Method::GET, "/v1/admin/breakers", Some(&key))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = env
        .admin(
            reqwest::Method::GET,
            "/v1/admin/breakers",
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let vendors: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["vendor"].as_str().unwrap())
        .collect();
    assert_eq!(
        vendors,
        [
            "cartesia",
            "deepgram",
            "google",
            "groq",
            "groq_classify",
            "hubspot",
            "stripe",
            "telnyx"
        ]
    );
    assert!(body["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|b| b["state"] == "closed"));

    let (status, body) = env
        .admin(
            reqwest::Method::POST,
            "/v1/admin/breakers/telnyx/force-open",
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "forced_open");
    let r = env.try_dial("+14155550800").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().get("retry-after").is_some());
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "vendor_unavailable");
    assert!(err["error"]["message"].as_str().unwrap().contains("telnyx"));
    assert_eq!(
        env.get("/v1/calls").await["data"].as_array().unwrap().len(),
        0,
        "nothing stored"
    );
    let metrics_addr = env.running.as_ref().unwrap().metrics_addr.unwrap();
    let ready: Value = env
        .http
        .get(format!("http://{metrics_addr}/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["status"], "ready",
        "an open breaker does not make the node unready"
    );
    assert_eq!(ready["checks"]["breakers"]["telnyx"], "forced_open");

    let (status, body) = env
        .admin(
            reqwest::Method::POST,
            "/v1/admin/breakers/telnyx/reset",
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "closed");
    let id = env.dial("+14155550801").await;
    env.wait_status(&id, "completed", Duration::from_secs(10))
        .await;
    let (status, _) = env
        .admin(
            reqwest::Method::POST,
            "/v1/admin/breakers/nobody/reset",
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = env
        .admin(
            reqwest::Method::POST,
            "/v1/admin/breakers/telnyx/explode",
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telnyx_outage_opens_the_breaker_fails_new_calls_fast_and_recovers() {
    let env = Env::start_with(
        Scenario::Answer {
            ring: Duration::from_millis(100),
            talk: None,
        },
        BreakerArgs {
            breaker_consecutive_failures: 3,
            // Everything below checks the breaker while it is open, so the open wait is one
            // a busy machine cannot run through before those checks are done.
            breaker_open_wait_ms: 10_000,
            breaker_half_open_probes: 1,
            ..BreakerArgs::default()
        },
    )
    .await;
    // A call in progress before the outage.
    let live = env.dial("+14155550900").await;
    env.wait_status(&live, "in_progress", Duration::from_secs(10))
        .await;

    // The outage: Telnyx answers 503 to the next 3 commands.
    env.fake.fail_commands(3, 503, None);
    let outage = Instant::now();
    let victim = env.dial("+14155550901").await;
    let call = env
        .wait_status(&victim, "failed", Duration::from_secs(10))
        .await;
    assert_eq!(call["end_reason"], "vendor_error");
    let opened_after = outage.elapsed();
    let breaker = env.breaker("telnyx").await;
    assert_eq!(breaker["state"], "open", "{breaker}");
    let injected = env
        .fake
        .commands()
        .iter()
        .filter(|c| c.injected_failure)
        .count();
    assert_eq!(injected, 3, "after 3 failures nothing more reached Telnyx");

    // While open: new calls fail fast, store nothing; the live call keeps running.
    let mut fast = Vec::new();
    for n in 0..20 {
        let started = Instant::now();
        let r = env.try_dial(&format!("+141555509{n:02}")).await;
        fast.push(started.elapsed());
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"]["code"], "vendor_unavailable");
    }
    fast.sort();
    assert_eq!(
        env.get(&format!("/v1/calls/{live}")).await["status"],
        "in_progress"
    );
    let commands_while_open = env.fake.commands().len();

    // Recovery: after the open wait the breaker lets one probe through; it succeeds.
    let until = chrono::DateTime::parse_from_rfc3339(breaker["open_until"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let left = (until - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left).await;
    let recovered = Instant::now();
    let id = loop {
        let r = env.try_dial("+14155550999").await;
        if r.status() == StatusCode::CREATED {
            let body: Value = r.json().await.unwrap();
            break body["id"].as_str().unwrap().to_owned();
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(30),
            "never recovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    env.wait_status(&id, "in_progress", Duration::from_secs(10))
        .await;
    let breaker = env.breaker("telnyx").await;
    assert_eq!(breaker["state"], "closed", "{breaker}");
    assert!(env.fake.commands().len() > commands_while_open);
    // The live call was never touched and ends normally.
    env.post(
        &format!("/v1/calls/{live}/hangup"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    env.wait_status(&live, "completed", Duration::from_secs(10))
        .await;
    println!(
        "outage: breaker open {} ms after the first failing dial; 20 calls refused while open (p50 {:.1} ms, max {:.1} ms); closed again {} ms after the open wait",
        opened_after.as_millis(),
        fast[10].as_secs_f64() * 1000.0,
        fast[19].as_secs_f64() * 1000.0,
        recovered.elapsed().as_millis()
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_timeouts_and_slow_answers_open_the_breaker() {
    let breakers = BreakerArgs {
        breaker_consecutive_failures: 100,
        breaker_min_calls: 2,
        breaker_window: 4,
        breaker_slow_call_ms: Some(400),
        breaker_open_wait_ms: 60_000,
        breaker_half_open_probes: 1,
        ..BreakerArgs::default()
    };
    // 429 with Retry-After: the breaker opens for that long at once (new calls are refused
    // fast meanwhile), the command waits it out and goes again as the half-open probe. The
    // test must see the breaker open and a dial refused within Retry-After, so it is the
    // longest the client honours (5 s), not a time a busy machine could overrun.
    let env = Env::start_with(answer(100, 200), breakers.clone()).await;
    env.fake.fail_commands(1, 429, Some(Duration::from_secs(5)));
    let started = Instant::now();
    let id = env.dial("+14155551000").await;
    let b = env
        .breaker_until("telnyx", "open", Duration::from_secs(5))
        .await;
    assert_eq!(b["state"], "open", "{b}");
    let until = chrono::DateTime::parse_from_rfc3339(b["open_until"].as_str().unwrap()).unwrap();
    let wait = until.timestamp() - chrono::Utc::now().timestamp();
    assert!(
        (0..=5).contains(&wait),
        "open for Retry-After, not the 60 s open wait: {wait}"
    );
    let r = env.try_dial("+14155551005").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    env.wait_status(&id, "completed", Duration::from_secs(30))
        .await;
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "Retry-After honoured"
    );
    let dials: Vec<_> = env
        .fake
        .commands()
        .into_iter()
        .filter(|c| c.action == "dial")
        .collect();
    assert_eq!(dials.len(), 2, "the 429 and the probe after it: {dials:?}");
    assert_eq!(env.breaker("telnyx").await["state"], "closed");
    env.stop().await;

    // Slow answers (500 ms > 400 ms): the slow-call rate opens it although every call worked.
    // Only the two dials may enter the breaker's window: the fake delays POSTs only, so a
    // fast request dilutes the slow rate below the threshold. A call that ends before its
    // dial's delayed answer arrives makes the engine ask Telnyx for the leg's status (a late
    // sign of life for an ended call) with a fast GET, and on a busy machine that GET could
    // land before the second dial's answer (slow rate 2 of 3 or 2 of 4: closed). Calls that
    // keep ringing cause no other request, also when every webhook is delivered twice and
    // late ones overtake earlier ones.
    let env = Env::start_with(Scenario::NoAnswer, breakers.clone()).await;
    env.fake.set_delivery_faults(DeliveryFaults {
        duplicate_every: Some(1),
        reorder: true,
        drop_first_attempt_every: None,
    });
    env.fake.set_command_latency(Duration::from_millis(500));
    env.dial("+14155551001").await;
    env.dial("+14155551002").await;
    let snapshot = env
        .breaker_until("telnyx", "open", Duration::from_secs(15))
        .await;
    assert_eq!(snapshot["state"], "open", "{snapshot}");
    let r = env.try_dial("+14155551003").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let sent: Vec<_> = env
        .fake
        .commands()
        .into_iter()
        .map(|c| (c.method.clone(), c.action.clone()))
        .collect();
    assert_eq!(
        sent.iter().filter(|(_, a)| a == "dial").count(),
        2,
        "the refused dial never reached Telnyx: {sent:?}"
    );
    assert_eq!(sent.len(), 2, "nothing but the two dials: {sent:?}");
    env.stop().await;

    // Timeouts (the fake answers after the client's 3 s attempt timeout): failures.
    let env = Env::start_with(
        answer(100, 200),
        BreakerArgs {
            breaker_consecutive_failures: 2,
            ..breakers
        },
    )
    .await;
    // Far past the 3 s attempt timeout, so the client's timer wins however busy the machine.
    env.fake.set_command_latency(Duration::from_secs(8));
    let id = env.dial("+14155551004").await;
    // Two attempts time out (3 s each): two failures in a row open the breaker.
    let snapshot = env
        .breaker_until("telnyx", "open", Duration::from_secs(15))
        .await;
    assert_eq!(snapshot["state"], "open", "{snapshot}");
    // Telnyx did place the call although its answer was late: the webhooks carry it to the end.
    let call = env
        .wait_status(&id, "completed", Duration::from_secs(30))
        .await;
    assert_eq!(call["end_reason"], "normal_clearing");
    env.stop().await;
}
