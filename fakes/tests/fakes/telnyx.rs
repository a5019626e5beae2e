//! Wire-level tests of the Telnyx fake (`iace_fakes::telnyx`) on real sockets and real time:
//! a small axum webhook receiver that verifies every Ed25519 signature with the fake's public
//! key, an axum WebSocket server standing in for IACE's media endpoint, and reqwest as the
//! command client. Each test starts its own fake, so they run in parallel.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use futures::{SinkExt, StreamExt};
use iace_fakes::telnyx::{
    g711, sign_webhook, DeliveryFaults, Direction, FakeTelnyx, FakeTelnyxConfig, LegState, Scenario,
};
use serde_json::{json, Value};

use crate::eventually;

// ---------------------------------------------------------------------------------------------
// Webhook receiver

/// When the fake says the event happened (`data.occurred_at`).
fn occurred_at(hook: &Hook) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(hook.envelope["data"]["occurred_at"].as_str().unwrap())
        .unwrap()
}

/// One webhook request as the receiver saw it.
#[derive(Debug, Clone)]
struct Hook {
    id: String,
    event_type: String,
    attempt: u64,
    payload: Value,
    envelope: Value,
    signature_valid: bool,
    status: u16,
    at: Instant,
}

#[derive(Default)]
struct ReceiverState {
    key: Option<VerifyingKey>,
    /// Answer 500 to this many requests first.
    fail_first: u32,
    hooks: Vec<Hook>,
}

struct Receiver {
    url: String,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    async fn start(fail_first: u32) -> Receiver {
        let state = Arc::new(Mutex::new(ReceiverState {
            fail_first,
            ..ReceiverState::default()
        }));
        let app = Router::new()
            .route("/v1/webhooks/telnyx", post(receive_webhook))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/v1/webhooks/telnyx",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, state }
    }

    fn trust(&self, public_key_base64: &str) {
        let raw: [u8; 32] = BASE64
            .decode(public_key_base64)
            .unwrap()
            .try_into()
            .expect("public key must be 32 bytes");
        self.state.lock().unwrap().key = Some(VerifyingKey::from_bytes(&raw).unwrap());
    }

    /// Every request received, accepted or not.
    fn all(&self) -> Vec<Hook> {
        self.state.lock().unwrap().hooks.clone()
    }

    /// Accepted (2xx) requests of one leg, in arrival order.
    fn accepted(&self, call_control_id: &str) -> Vec<Hook> {
        self.all()
            .into_iter()
            .filter(|h| h.status == 200 && h.payload["call_control_id"] == call_control_id)
            .collect()
    }

    fn types(&self, call_control_id: &str) -> Vec<String> {
        self.accepted(call_control_id)
            .into_iter()
            .map(|h| h.event_type)
            .collect()
    }

    async fn wait_event(&self, call_control_id: &str, event_type: &str) -> Hook {
        let found = eventually(Duration::from_secs(5), || {
            self.types(call_control_id).iter().any(|t| t == event_type)
        })
        .await;
        assert!(
            found,
            "no {event_type} for {call_control_id}; got {:?}",
            self.types(call_control_id)
        );
        self.accepted(call_control_id)
            .into_iter()
            .find(|h| h.event_type == event_type)
            .unwrap()
    }
}

async fn receive_webhook(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut st = state.lock().unwrap();
    let signature_valid = st.key.is_some_and(|key| verify(&key, &headers, &body));
    let envelope: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let status = if st.fail_first > 0 {
        st.fail_first -= 1;
        500
    } else {
        200
    };
    st.hooks.push(Hook {
        id: envelope["data"]["id"].as_str().unwrap_or("").to_owned(),
        event_type: envelope["data"]["event_type"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        attempt: envelope["meta"]["attempt"].as_u64().unwrap_or(0),
        payload: envelope["data"]["payload"].clone(),
        envelope,
        signature_valid,
        status,
        at: Instant::now(),
    });
    StatusCode::from_u16(status).unwrap()
}

/// Telnyx verification (section 1.4) over the raw body.
fn verify(key: &VerifyingKey, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(timestamp), Some(signature)) = (
        header("telnyx-timestamp"),
        header("telnyx-signature-ed25519"),
    ) else {
        return false;
    };
    let Ok(ts) = timestamp.parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - ts).abs() > 300 {
        return false;
    }
    let Ok(raw) = BASE64.decode(signature) else {
        return false;
    };
    let Ok(raw) = <[u8; 64]>::try_from(raw) else {
        return false;
    };
    let mut message = timestamp.as_bytes().to_vec();
    message.push(b'|');
    message.extend_from_slice(body);
    key.verify_strict(&message, &Signature::from_bytes(&raw))
        .is_ok()
}

// ---------------------------------------------------------------------------------------------
// Harness

struct Harness {
    fake: FakeTelnyx,
    rx: Receiver,
    http: reqwest::Client,
}

impl Harness {
    async fn start(config: FakeTelnyxConfig, fail_first: u32) -> Harness {
        let rx = Receiver::start(fail_first).await;
        let fake = FakeTelnyx::start(FakeTelnyxConfig {
            inbound_webhook_url: Some(rx.url.clone()),
            ..config
        })
        .await
        .unwrap();
        rx.trust(&fake.public_key_base64());
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Harness { fake, rx, http }
    }

    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: Option<&str>,
        body: Option<String>,
    ) -> (u16, HeaderMap, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{}", self.fake.api_base(), path));
        if let Some(key) = auth {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, headers, body)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (status, _, body) = self
            .request(
                reqwest::Method::POST,
                path,
                Some("test-key"),
                Some(body.to_string()),
            )
            .await;
        (status, body)
    }

    /// A valid dial to `to` plus `extra` fields.
    async fn dial(&self, to: &str, extra: Value) -> (u16, Value) {
        let mut body = json!({
            "connection_id": "test-connection",
            "to": to,
            "from": "+15550100000",
        });
        if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
            body.extend(extra);
        }
        self.post("/calls", body).await
    }

    async fn dial_ok(&self, to: &str, extra: Value) -> String {
        let (status, body) = self.dial(to, extra).await;
        assert_eq!(status, 200, "dial failed: {body}");
        body["data"]["call_control_id"].as_str().unwrap().to_owned()
    }

    async fn action(&self, call_control_id: &str, action: &str, body: Value) -> (u16, Value) {
        self.post(&format!("/calls/{call_control_id}/actions/{action}"), body)
            .await
    }
}

fn config(scenario: Scenario) -> FakeTelnyxConfig {
    FakeTelnyxConfig {
        default_scenario: scenario,
        ..FakeTelnyxConfig::default()
    }
}

fn answer(ring_ms: u64, talk_ms: Option<u64>) -> Scenario {
    Scenario::Answer {
        ring: Duration::from_millis(ring_ms),
        talk: talk_ms.map(Duration::from_millis),
    }
}

/// Asserts a Telnyx error body with `code` (a string) and returns it.
fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "body: {body}");
    let errors = body["errors"].as_array().expect("errors array");
    assert_eq!(errors.len(), 1, "body: {body}");
    assert_eq!(errors[0]["code"], Value::String(want_code.to_owned()));
    assert!(!errors[0]["title"].as_str().unwrap().is_empty());
    assert!(!errors[0]["detail"].as_str().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Tests

/// The section 1.4 vector, through the public function IACE tests will use.
#[test]
fn sign_webhook_matches_protocol_vector() {
    let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
    let signature = sign_webhook(
        &seed,
        "1700000000",
        br#"{"data":{"event_type":"call.hangup"}}"#,
    );
    assert_eq!(
        signature,
        "+HUd2Jh32zctPWKKinzLX5qTGhZLKdvSwr9beaswFfZA+yox8IRwA0CO0mOLR9FguZxL5vBwso0pSd8F7zIfBw=="
    );
    // And it verifies under the vector's public key, so the receiver above is sound.
    let key = VerifyingKey::from_bytes(
        &BASE64
            .decode("A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=")
            .unwrap()
            .try_into()
            .unwrap(),
    )
    .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("telnyx-timestamp", "1700000000".parse().unwrap());
    headers.insert("telnyx-signature-ed25519", signature.parse().unwrap());
    let message = br#"1700000000|{"data":{"event_type":"call.hangup"}}"#;
    let raw: [u8; 64] = BASE64.decode(&signature).unwrap().try_into().unwrap();
    assert!(key
        .verify_strict(message, &Signature::from_bytes(&raw))
        .is_ok());
    // A tampered body must not verify.
    assert!(key
        .verify_strict(
            br#"1700000000|{"data":{"event_type":"call.answered"}}"#,
            &Signature::from_bytes(&raw)
        )
        .is_err());
}

#[test]
fn g711_round_trips() {
    assert_eq!(g711::linear_to_ulaw(0), 0xFF);
    assert_eq!(g711::linear_to_ulaw(i16::MAX), 0x80);
    assert_eq!(g711::linear_to_ulaw(i16::MIN), 0x00);
    assert_eq!(g711::ulaw_to_linear(0xFF), 0);
    assert_eq!(g711::linear_to_alaw(0), 0xD5);
    for sample in [-30_000i16, -1_000, -100, 100, 1_000, 30_000] {
        let u = g711::ulaw_to_linear(g711::linear_to_ulaw(sample));
        let a = g711::alaw_to_linear(g711::linear_to_alaw(sample));
        // Companding error is at most a few percent of the sample.
        let tolerance = (i32::from(sample).abs() / 16).max(8);
        assert!(
            (i32::from(u) - i32::from(sample)).abs() <= tolerance,
            "ulaw {sample} -> {u}"
        );
        assert!(
            (i32::from(a) - i32::from(sample)).abs() <= tolerance,
            "alaw {sample} -> {a}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_sends_signed_events_in_order_with_client_state() {
    let h = Harness::start(config(answer(150, Some(300))), 0).await;
    let client_state = BASE64.encode("order-42");
    let (status, dial) = h
        .dial(
            "+15551230000",
            json!({"client_state": client_state, "webhook_url": h.rx.url, "some_future_field": 1}),
        )
        .await;
    assert_eq!(status, 200, "{dial}");
    let data = &dial["data"];
    let id = data["call_control_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("v3:"), "{id}");
    assert!(uuid::Uuid::parse_str(data["call_leg_id"].as_str().unwrap()).is_ok());
    assert!(uuid::Uuid::parse_str(data["call_session_id"].as_str().unwrap()).is_ok());
    assert_eq!(data["is_alive"], false);
    assert_eq!(data["record_type"], "call");

    h.rx.wait_event(&id, "call.hangup").await;
    let hooks = h.rx.accepted(&id);
    assert_eq!(
        h.rx.types(&id),
        ["call.initiated", "call.answered", "call.hangup"]
    );
    for hook in &hooks {
        assert!(hook.signature_valid, "bad signature on {}", hook.event_type);
        assert_eq!(hook.attempt, 1);
        assert_eq!(hook.envelope["meta"]["delivered_to"], h.rx.url.as_str());
        assert_eq!(hook.envelope["data"]["record_type"], "event");
        let at = hook.envelope["data"]["occurred_at"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{at}");
        assert!(
            at.ends_with('Z') && at.len() == 27,
            "microseconds and Z: {at}"
        );
        assert_eq!(hook.payload["client_state"], client_state.as_str());
        assert_eq!(hook.payload["connection_id"], "test-connection");
        assert_eq!(hook.payload["call_leg_id"], data["call_leg_id"]);
        assert_eq!(hook.payload["from"], "+15550100000");
        assert_eq!(hook.payload["to"], "+15551230000");
    }
    assert_ne!(hooks[0].id, hooks[1].id);
    assert_eq!(hooks[0].payload["direction"], "outgoing");
    assert_eq!(hooks[0].payload["state"], "bridging");
    assert_eq!(hooks[1].payload["state"], "answered");
    let hangup = &hooks[2].payload;
    assert_eq!(hangup["state"], "hangup");
    assert_eq!(hangup["hangup_cause"], "normal_clearing");
    assert_eq!(hangup["hangup_source"], "callee");
    assert_eq!(hangup["sip_hangup_cause"], "200");
    assert!(hangup["start_time"].is_string() && hangup["end_time"].is_string());
    assert!(
        hangup.get("call_quality_stats").is_none(),
        "no media flowed"
    );
    // Answer ~150 ms after dial, hangup ~300 ms after answer: real time, not instant.
    // Judged by the fake's event times: a webhook delivered late on a busy machine would
    // shorten the gap between arrivals.
    let talk = occurred_at(&hooks[2]) - occurred_at(&hooks[1]);
    assert!(talk >= chrono::Duration::milliseconds(250), "talk {talk}");

    let (status, _, call) = h
        .request(
            reqwest::Method::GET,
            &format!("/calls/{id}"),
            Some("test-key"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(call["data"]["is_alive"], false);
    assert!(call["data"]["end_time"].is_string());
    assert!(call["data"]["call_duration"].as_i64().unwrap() >= 0);

    // The receiver logs a hook before the fake has its response; wait for the fake's record.
    assert!(
        h.fake
            .wait_for(Duration::from_secs(10), |f| f.deliveries().len() == 3)
            .await
    );
    let deliveries = h.fake.deliveries();
    assert!(deliveries.iter().all(|d| d.succeeded() && d.attempt == 1));
    assert!(deliveries
        .iter()
        .all(|d| d.latency < Duration::from_secs(1)));
    let leg = h.fake.leg(&id).unwrap();
    assert_eq!(leg.state, LegState::Hangup);
    assert_eq!(leg.direction, Direction::Outgoing);
    assert_eq!(leg.hangup_cause.as_deref(), Some("normal_clearing"));
    h.fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_id_dedupes_dial_and_hangup() {
    let h = Harness::start(config(answer(100, None)), 0).await;
    let (s1, first) = h
        .dial("+15551230001", json!({"command_id": "dial-1"}))
        .await;
    let (s2, second) = h
        .dial("+15551230001", json!({"command_id": "dial-1"}))
        .await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(first, second, "a repeated dial returns the same response");
    assert_eq!(h.fake.legs().len(), 1, "and creates nothing");
    let id = first["data"]["call_control_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let dials: Vec<_> = h
        .fake
        .commands()
        .into_iter()
        .filter(|c| c.action == "dial")
        .collect();
    assert_eq!(dials.len(), 2);
    assert!(!dials[0].idempotent_repeat && dials[1].idempotent_repeat);
    assert_eq!(dials[1].call_control_id.as_deref(), Some(id.as_str()));

    h.rx.wait_event(&id, "call.answered").await;
    for _ in 0..2 {
        let (status, body) = h
            .action(&id, "hangup", json!({"command_id": "hang-1"}))
            .await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({"data": {"result": "ok"}}));
    }
    let hangup = h.rx.wait_event(&id, "call.hangup").await;
    assert_eq!(hangup.payload["hangup_cause"], "normal_clearing");
    assert_eq!(hangup.payload["hangup_source"], "caller");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hangups =
        h.rx.types(&id)
            .iter()
            .filter(|t| *t == "call.hangup")
            .count();
    assert_eq!(hangups, 1, "the repeated hangup did nothing");

    let (status, body) = h
        .action(&id, "hangup", json!({"command_id": "hang-2"}))
        .await;
    assert_error(status, &body, 422, "90018");
    assert_eq!(body["errors"][0]["title"], "Call has already ended");
    // A hangup without a body (and without command_id) on the ended leg too.
    let (status, _, body) = h
        .request(
            reqwest::Method::POST,
            &format!("/calls/{id}/actions/hangup"),
            Some("test-key"),
            None,
        )
        .await;
    assert_error(status, &body, 422, "90018");
    let repeats: Vec<bool> = h
        .fake
        .commands()
        .into_iter()
        .filter(|c| c.action == "hangup")
        .map(|c| c.idempotent_repeat)
        .collect();
    assert_eq!(repeats, [false, true, false, false]);
    h.fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_validation_errors() {
    let h = Harness::start(config(answer(100, None)), 0).await;
    let valid =
        json!({"connection_id": "test-connection", "to": "+15551230002", "from": "+15550100000"});

    let (status, headers, body) = h
        .request(
            reqwest::Method::POST,
            "/calls",
            None,
            Some(valid.to_string()),
        )
        .await;
    assert_error(status, &body, 401, "10009");
    assert_eq!(headers["x-ratelimit-limit"], "2000");
    let (status, _, body) = h
        .request(
            reqwest::Method::POST,
            "/calls",
            Some("wrong-key"),
            Some(valid.to_string()),
        )
        .await;
    assert_error(status, &body, 401, "10009");

    let without = |field: &str| {
        let mut body = valid.clone();
        body.as_object_mut().unwrap().remove(field);
        body
    };
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        body[field] = value;
        body
    };
    let cases = [
        (without("to"), 422, "10004"),
        (without("from"), 422, "10004"),
        (without("connection_id"), 422, "10004"),
        (with("connection_id", json!("someone-else")), 422, "10015"),
        (with("from", json!("5551234")), 422, "10016"),
        (with("to", json!("+0123")), 422, "10016"),
        (with("client_state", json!("not base64!!")), 422, "10015"),
        (with("timeout_secs", json!(3)), 422, "10015"),
        (with("timeout_secs", json!(601)), 422, "10015"),
        (with("timeout_secs", json!("30")), 422, "10015"),
        (
            with("stream_url", json!("http://not-a-websocket")),
            422,
            "10003",
        ),
        (
            json!({"connection_id": "test-connection", "to": "+15551230002", "from": "+15550100000",
                   "stream_url": "ws://127.0.0.1:9/x", "stream_track": "sideways"}),
            422,
            "10015",
        ),
    ];
    for (body, want_status, want_code) in &cases {
        let (status, answer) = h.post("/calls", body.clone()).await;
        assert_error(status, &answer, *want_status, want_code);
    }
    let (status, headers, answer) = h
        .request(
            reqwest::Method::POST,
            "/calls",
            Some("test-key"),
            Some("{not json".to_owned()),
        )
        .await;
    assert_error(status, &answer, 400, "10015");
    assert!(headers.contains_key("x-ratelimit-remaining"));
    assert!(h.fake.legs().is_empty(), "no rejected dial created a leg");
    let (missing_to, _, _) = &cases[0];
    assert!(
        h.post("/calls", missing_to.clone()).await.1["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("'to'")
    );

    let (status, body) = h.action("v3:nope", "hangup", json!({})).await;
    assert_error(status, &body, 404, "90015");
    let (status, _, body) = h
        .request(
            reqwest::Method::GET,
            "/calls/v3:nope",
            Some("test-key"),
            None,
        )
        .await;
    assert_error(status, &body, 404, "90015");
    let id = h.dial_ok("+15551230002", json!({})).await;
    let (status, body) = h.action(&id, "dance", json!({})).await;
    assert_error(status, &body, 404, "10005");
    let (status, body) = h
        .action(&id, "client_state_update", json!({"client_state": "%%%"}))
        .await;
    assert_error(status, &body, 422, "10015");
    assert_eq!(h.fake.legs().len(), 1);
    assert!(h.fake.commands().iter().all(|c| c.status != 0));
    h.fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_failures_retry_after_and_latency() {
    let h = Harness::start(config(answer(100, None)), 0).await;
    h.fake.fail_commands(2, 503, None);
    for _ in 0..2 {
        let (status, headers, body) = h
            .request(
                reqwest::Method::POST,
                "/calls",
                Some("test-key"),
                Some(
                    json!({"connection_id": "test-connection", "to": "+15551230003", "from": "+15550100000"})
                        .to_string(),
                ),
            )
            .await;
        assert_error(status, &body, 503, "10007");
        assert!(!headers.contains_key("retry-after"));
    }
    assert!(
        h.fake.legs().is_empty(),
        "injected failures execute nothing"
    );
    h.dial_ok("+15551230003", json!({})).await;

    h.fake
        .fail_commands(1, 429, Some(Duration::from_millis(1500)));
    let (status, headers, body) = h
        .request(
            reqwest::Method::POST,
            "/calls",
            Some("test-key"),
            Some(json!({"connection_id": "test-connection", "to": "+15551230003", "from": "+15550100000"}).to_string()),
        )
        .await;
    assert_error(status, &body, 429, "10011");
    assert_eq!(body["errors"][0]["title"], "Too many requests");
    assert_eq!(headers["retry-after"], "2");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    assert_eq!(h.fake.legs().len(), 1);
    let injected: Vec<_> = h
        .fake
        .commands()
        .iter()
        .map(|c| (c.status, c.injected_failure))
        .collect();
    assert_eq!(
        injected,
        [(503, true), (503, true), (200, false), (429, true)]
    );

    // A slow answer: the command runs, the client times out, its retry with the same
    // command_id gets the original answer instead of a second call.
    h.fake.set_command_latency(Duration::from_millis(500));
    let impatient = h
        .http
        .post(format!("{}/calls", h.fake.api_base()))
        .bearer_auth("test-key")
        .timeout(Duration::from_millis(150))
        .json(&json!({"connection_id": "test-connection", "to": "+15551230004", "from": "+15550100000", "command_id": "slow-1"}))
        .send()
        .await;
    assert!(impatient.is_err_and(|e| e.is_timeout()));
    assert!(
        h.fake
            .wait_for(Duration::from_secs(10), |f| f.legs().len() == 2)
            .await
    );
    h.fake.set_command_latency(Duration::ZERO);
    let (status, retry) = h
        .dial("+15551230004", json!({"command_id": "slow-1"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        retry["data"]["call_control_id"].as_str().unwrap(),
        h.fake.legs()[1].call_control_id
    );
    assert_eq!(h.fake.legs().len(), 2);
    assert!(h.fake.commands().last().unwrap().idempotent_repeat);
    h.fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_redelivered_after_500() {
    let cfg = FakeTelnyxConfig {
        webhook_retry_delays: vec![Duration::from_millis(150), Duration::from_secs(1)],
        ..config(answer(100, Some(200)))
    };
    let h = Harness::start(cfg, 1).await;
    let id = h.dial_ok("+15551230005", json!({})).await;
    h.rx.wait_event(&id, "call.hangup").await;

    let all: Vec<Hook> =
        h.rx.all()
            .into_iter()
            .filter(|x| x.payload["call_control_id"] == id.as_str())
            .collect();
    assert_eq!(all[0].event_type, "call.initiated");
    assert_eq!((all[0].attempt, all[0].status), (1, 500));
    assert_eq!(all[1].event_type, "call.initiated");
    assert_eq!((all[1].attempt, all[1].status), (2, 200));
    assert_eq!(
        all[0].id, all[1].id,
        "a re-attempt carries the same data.id"
    );
    assert!(all[0].signature_valid && all[1].signature_valid);
    assert!(all[1].at.duration_since(all[0].at) >= Duration::from_millis(140));
    // Per-leg order holds across the retry: answered waited for initiated.
    assert_eq!(
        h.rx.types(&id),
        ["call.initiated", "call.answered", "call.hangup"]
    );
    assert!(
        h.fake
            .wait_for(Duration::from_secs(10), |f| f.deliveries().len() == 4)
            .await,
        "{:?}",
        h.fake.deliveries()
    );
    let records: Vec<_> = h
        .fake
        .deliveries()
        .into_iter()
        .map(|d| (d.event_type, d.attempt, d.status))
        .collect();
    assert_eq!(records[0], ("call.initiated".to_owned(), 1, Some(500)));
    assert_eq!(records[1], ("call.initiated".to_owned(), 2, Some(200)));
    assert_eq!(records.len(), 4);
    h.fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_call_answered_then_caller_hangs_up() {
    let h = Harness::start(FakeTelnyxConfig::default(), 0).await;
    let id = h
        .fake
        .place_inbound_call("+15557654321", "+15550000001", answer(3_000, Some(300)))
        .await;
    let initiated = h.rx.wait_event(&id, "call.initiated").await;
    assert_eq!(initiated.payload["direction"], "incoming");
    assert_eq!(initiated.payload["state"], "parked");
    assert!(initiated.payload["client_state"].is_null());
    assert_eq!(initiated.payload["from"], "+15557654321");
    assert_eq!(initiated.payload["to"], "+15550000001");
    assert_eq!(h.fake.leg(&id).unwrap().state, LegState::Parked);

    for _ in 0..2 {
        let (status, body) = h
            .action(
                &id,
                "answer",
                json!({"client_state": "aW5ib3VuZA==", "command_id": "answer-1"}),
            )
            .await;
        assert_eq!((status, body), (200, json!({"data": {"result": "ok"}})));
    }
    let answered = h.rx.wait_event(&id, "call.answered").await;
    assert_eq!(answered.payload["client_state"], "aW5ib3VuZA==");
    let hangup = h.rx.wait_event(&id, "call.hangup").await;
    assert_eq!(hangup.payload["hangup_cause"], "normal_clearing");
    assert_eq!(hangup.payload["hangup_source"], "caller");
    assert_eq!(hangup.payload["client_state"], "aW5ib3VuZA==");
    assert_eq!(
        h.rx.types(&id),
        ["call.initiated", "call.answered", "call.hangup"]
    );
    let (status, body) = h.action(&id, "answer", json!({})).await;
    assert_error(status, &body, 422, "90018");
    h.fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_call_rejected_or_abandoned() {
    let h = Harness::start(FakeTelnyxConfig::default(), 0).await;
    let rejected = h
        .fake
        .place_inbound_call("+15557654322", "+15550000001", answer(5_000, None))
        .await;
    h.rx.wait_event(&rejected, "call.initiated").await;
    let (status, _) = h
        .action(&rejected, "reject", json!({"cause": "USER_BUSY"}))
        .await;
    assert_eq!(status, 200);
    let hangup = h.rx.wait_event(&rejected, "call.hangup").await;
    assert_eq!(hangup.payload["hangup_cause"], "user_busy");
    assert_eq!(hangup.payload["sip_hangup_cause"], "486");

    let abandoned = h
        .fake
        .place_inbound_call("+15557654323", "+15550000001", answer(200, None))
        .await;
    let hangup = h.rx.wait_event(&abandoned, "call.hangup").await;
    assert_eq!(hangup.payload["hangup_cause"], "originator_cancel");
    assert_eq!(hangup.payload["hangup_source"], "caller");
    assert_eq!(h.rx.types(&abandoned), ["call.initiated", "call.hangup"]);
    h.fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_end_outcomes_and_amd() {
    let h = Harness::start(config(answer(100, None)), 0).await;
    let ms = Duration::from_millis;
    h.fake
        .set_scenario("+15551110001", Scenario::Busy { after: ms(100) });
    h.fake
        .set_scenario("+15551110002", Scenario::Reject { after: ms(100) });
    h.fake.set_scenario(
        "+15551110003",
        Scenario::Machine {
            ring: ms(100),
            talk: Some(ms(400)),
        },
    );
    h.fake.set_scenario("+15551110004", answer(5_000, None));
    let busy = h.dial_ok("+15551110001", json!({})).await;
    let rejected = h.dial_ok("+15551110002", json!({})).await;
    let machine = h
        .dial_ok(
            "+15551110003",
            json!({"answering_machine_detection": "detect"}),
        )
        .await;
    let cancelled = h.dial_ok("+15551110004", json!({})).await;

    let hangup = h.rx.wait_event(&busy, "call.hangup").await.payload;
    assert_eq!(
        (
            &hangup["hangup_cause"],
            &hangup["sip_hangup_cause"],
            &hangup["hangup_source"]
        ),
        (&json!("user_busy"), &json!("486"), &json!("callee"))
    );
    let hangup = h.rx.wait_event(&rejected, "call.hangup").await.payload;
    assert_eq!(
        (&hangup["hangup_cause"], &hangup["sip_hangup_cause"]),
        (&json!("call_rejected"), &json!("603"))
    );
    let amd =
        h.rx.wait_event(&machine, "call.machine.detection.ended")
            .await;
    assert_eq!(amd.payload["result"], "machine");
    h.rx.wait_event(&machine, "call.hangup").await;
    assert_eq!(
        h.rx.types(&machine),
        [
            "call.initiated",
            "call.answered",
            "call.machine.detection.ended",
            "call.hangup"
        ]
    );
    let (status, _) = h.action(&cancelled, "hangup", json!({})).await;
    assert_eq!(status, 200);
    let hangup = h.rx.wait_event(&cancelled, "call.hangup").await.payload;
    assert_eq!(hangup["hangup_cause"], "originator_cancel");
    assert_eq!(hangup["hangup_source"], "caller");
    assert_eq!(h.rx.types(&cancelled), ["call.initiated", "call.hangup"]);
    h.fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_bridges_until_the_human_hangs_up() {
    let h = Harness::start(config(answer(100, None)), 0).await;
    h.fake.set_scenario("+15552220000", answer(0, Some(300)));
    let id = h.dial_ok("+15551230006", json!({})).await;
    h.rx.wait_event(&id, "call.answered").await;
    let (status, _) = h
        .action(&id, "transfer", json!({"to": "+15552220000"}))
        .await;
    assert_eq!(status, 200);
    let (status, body) = h.action(&id, "transfer", json!({})).await;
    assert_error(status, &body, 422, "10004");
    let bridged = h.rx.wait_event(&id, "call.bridged").await;
    let hangup = h.rx.wait_event(&id, "call.hangup").await;
    assert!(bridged.payload["from"].is_string() && bridged.payload["to"].is_string());
    assert_eq!(hangup.payload["hangup_source"], "callee");
    // The human talks 300 ms: judged by the fake's own event times, not by when the webhooks
    // arrived here (a busy machine can deliver the first one late and close the gap).
    let talked = occurred_at(&hangup) - occurred_at(&bridged);
    assert!(
        talked >= chrono::Duration::milliseconds(250),
        "the human talked {talked}"
    );
    let leg = h.fake.leg(&id).unwrap();
    assert_eq!(leg.transferred_to.as_deref(), Some("+15552220000"));
    h.fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_faults_duplicate_drop_and_reorder() {
    let cfg = FakeTelnyxConfig {
        webhook_retry_delays: vec![Duration::from_millis(100)],
        ..config(answer(100, Some(100)))
    };
    let h = Harness::start(cfg, 0).await;
    h.fake.set_delivery_faults(DeliveryFaults {
        duplicate_every: Some(1),
        drop_first_attempt_every: Some(1),
        reorder: false,
    });
    let id = h.dial_ok("+15551230007", json!({})).await;
    assert!(
        eventually(Duration::from_secs(5), || h.rx.accepted(&id).len() == 6).await,
        "{:?}",
        h.rx.types(&id)
    );
    let hooks = h.rx.accepted(&id);
    for pair in hooks.chunks(2) {
        assert_eq!(pair[0].id, pair[1].id, "each event twice");
        assert_eq!((pair[0].attempt, pair[1].attempt), (2, 1));
    }
    let dropped = h
        .fake
        .deliveries()
        .iter()
        .filter(|d| d.attempt == 1 && !d.duplicate && d.status.is_none())
        .count();
    assert_eq!(dropped, 3);

    h.fake.set_delivery_faults(DeliveryFaults {
        reorder: true,
        ..DeliveryFaults::default()
    });
    let id = h.dial_ok("+15551230008", json!({})).await;
    h.rx.wait_event(&id, "call.hangup").await;
    assert_eq!(
        h.rx.types(&id),
        ["call.answered", "call.initiated", "call.hangup"]
    );
    h.fake.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Media

#[derive(Default)]
struct MediaLog {
    token: Option<String>,
    frames: Vec<(Instant, Value)>,
    sent: Vec<(Instant, String)>,
    closed: bool,
}

struct MediaServer {
    url: String,
    log: Arc<Mutex<MediaLog>>,
}

impl MediaServer {
    async fn start() -> MediaServer {
        let log = Arc::new(Mutex::new(MediaLog::default()));
        let app = Router::new()
            .route("/v1/media/telnyx", get(media_upgrade))
            .with_state(log.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/v1/media/telnyx", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        MediaServer { url, log }
    }

    fn frames(&self, event: &str) -> Vec<(Instant, Value)> {
        self.log
            .lock()
            .unwrap()
            .frames
            .iter()
            .filter(|(_, f)| f["event"] == event)
            .cloned()
            .collect()
    }

    fn sent_at(&self, what: &str) -> Instant {
        self.log
            .lock()
            .unwrap()
            .sent
            .iter()
            .find(|(_, s)| s == what)
            .map(|(t, _)| *t)
            .unwrap()
    }
}

async fn media_upgrade(
    State(log): State<Arc<Mutex<MediaLog>>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    log.lock().unwrap().token = headers
        .get("x-telnyx-streaming-auth-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    ws.on_upgrade(move |socket| media_script(socket, log))
}

/// Plays the app's side: audio, marks, a clear, and two bad frames.
async fn media_script(socket: WebSocket, log: Arc<Mutex<MediaLog>>) {
    let (mut tx, mut rx) = socket.split();
    let reader_log = log.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = rx.next().await {
            if let WsMessage::Text(text) = message {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                reader_log
                    .lock()
                    .unwrap()
                    .frames
                    .push((Instant::now(), frame));
            }
        }
        reader_log.lock().unwrap().closed = true;
    });
    let started = eventually(Duration::from_secs(3), || {
        log.lock()
            .unwrap()
            .frames
            .iter()
            .any(|(_, f)| f["event"] == "start")
    })
    .await;
    assert!(started);
    let frame_of_audio = BASE64.encode([0xFFu8; 160]);
    let media = json!({"event": "media", "media": {"payload": frame_of_audio}}).to_string();
    let mark = |name: &str| json!({"event": "mark", "mark": {"name": name}}).to_string();
    let send_log = log.clone();
    let note = move |what: &str| {
        send_log
            .lock()
            .unwrap()
            .sent
            .push((Instant::now(), what.to_owned()))
    };

    // 20 ms of audio, then m1: due ~20 ms later.
    tx.send(WsMessage::Text(media.clone().into()))
        .await
        .unwrap();
    note("m1");
    tx.send(WsMessage::Text(mark("m1").into())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // 1 s of audio, then m2; a clear 150 ms later must release m2 early.
    for _ in 0..50 {
        tx.send(WsMessage::Text(media.clone().into()))
            .await
            .unwrap();
    }
    note("m2");
    tx.send(WsMessage::Text(mark("m2").into())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    note("clear");
    tx.send(WsMessage::Text(
        json!({"event": "clear"}).to_string().into(),
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Nothing queued: m3 comes straight back.
    note("m3");
    tx.send(WsMessage::Text(mark("m3").into())).await.unwrap();
    let bad_media = json!({"event": "media", "media": {"payload": "!!not base64!!"}});
    tx.send(WsMessage::Text(bad_media.to_string().into()))
        .await
        .unwrap();
    tx.send(WsMessage::Text("this is not json".into()))
        .await
        .unwrap();
    note("done");
    let _ = reader.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_flows_both_ways_with_marks_and_clear() {
    let media = MediaServer::start().await;
    let h = Harness::start(config(answer(100, None)), 0).await;
    let id = h
        .dial_ok(
            "+15551230009",
            json!({
                "stream_url": media.url,
                "stream_track": "inbound_track",
                "stream_auth_token": "tok-123",
                "stream_bidirectional_mode": "rtp",
                "stream_bidirectional_codec": "PCMU",
            }),
        )
        .await;
    let script_done = eventually(Duration::from_secs(5), || {
        media.frames("error").len() == 2 && media.frames("mark").len() == 3
    })
    .await;
    assert!(script_done, "marks {:?}", media.frames("mark"));
    assert!(h.fake.send_dtmf(&id, '5'));
    assert!(eventually(Duration::from_secs(2), || media.frames("dtmf").len() == 1).await);
    h.rx.wait_event(&id, "call.dtmf.received").await;
    let (status, _) = h.action(&id, "hangup", json!({})).await;
    assert_eq!(status, 200);
    assert!(
        eventually(Duration::from_secs(3), || media.log.lock().unwrap().closed).await,
        "the fake closes the socket after stop"
    );
    let hangup = h.rx.wait_event(&id, "call.hangup").await;

    // A copy, so no lock guard lives across the awaits below.
    let (token, all_frames) = {
        let log = media.log.lock().unwrap();
        (log.token.clone(), log.frames.clone())
    };
    assert_eq!(token.as_deref(), Some("tok-123"));
    let frames: Vec<&Value> = all_frames.iter().map(|(_, f)| f).collect();
    assert_eq!(
        *frames[0],
        json!({"event": "connected", "version": "1.0.0"})
    );
    let start = frames[1];
    assert_eq!(start["event"], "start");
    assert_eq!(start["sequence_number"], "1");
    let stream_id = start["stream_id"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&stream_id).is_ok());
    assert_eq!(stream_id, stream_id.to_uppercase());
    assert!(
        start["start"].get("stream_id").is_none(),
        "stream_id is top-level only"
    );
    assert_eq!(start["start"]["call_control_id"], id.as_str());
    assert_eq!(start["start"]["from"], "+15550100000");
    assert_eq!(
        start["start"]["media_format"],
        json!({"encoding": "PCMU", "sample_rate": 8000, "channels": 1})
    );
    assert_eq!(frames.last().unwrap()["event"], "stop");
    assert_eq!(
        frames.last().unwrap()["stop"]["call_control_id"],
        id.as_str()
    );
    // Sequence numbers are strings and strictly increase after `start`.
    let seqs: Vec<u64> = frames[1..]
        .iter()
        .filter_map(|f| f["sequence_number"].as_str())
        .map(|s| s.parse().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
    assert!(frames
        .iter()
        .skip(1)
        .all(|f| f["stream_id"] == stream_id.as_str()));

    let media_frames = media.frames("media");
    assert!(
        media_frames.len() >= 20,
        "only {} media frames",
        media_frames.len()
    );
    let mut loudest = 0i32;
    for (n, (_, frame)) in media_frames.iter().enumerate() {
        let m = &frame["media"];
        assert_eq!(m["track"], "inbound");
        assert_eq!(m["chunk"], (n + 1).to_string());
        assert_eq!(m["timestamp"], (n * 20).to_string());
        let audio = BASE64.decode(m["payload"].as_str().unwrap()).unwrap();
        assert_eq!(audio.len(), 160);
        for byte in audio {
            loudest = loudest.max(i32::from(g711::ulaw_to_linear(byte)).abs());
        }
    }
    assert!(
        loudest > 2_000,
        "the audio should sound like speech, peak {loudest}"
    );

    let marks: Vec<(Instant, String)> = media
        .frames("mark")
        .into_iter()
        .map(|(t, f)| (t, f["mark"]["name"].as_str().unwrap().to_owned()))
        .collect();
    let names: Vec<&str> = marks.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["m1", "m2", "m3"]);
    let m1 = marks[0].0.duration_since(media.sent_at("m1"));
    assert!(
        m1 >= Duration::from_millis(10) && m1 < Duration::from_millis(300),
        "m1 after {m1:?}"
    );
    // m2 sat behind 1 s of audio; the clear released it.
    let clear = media.sent_at("clear");
    assert!(marks[1].0 >= clear, "m2 echoed before the clear");
    assert!(marks[1].0.duration_since(clear) < Duration::from_millis(300));
    assert!(marks[1].0.duration_since(media.sent_at("m2")) < Duration::from_millis(700));
    assert!(marks[2].0.duration_since(media.sent_at("m3")) < Duration::from_millis(300));
    let errors: Vec<(Value, Value)> = media
        .frames("error")
        .into_iter()
        .map(|(_, f)| (f["payload"]["code"].clone(), f["payload"]["title"].clone()))
        .collect();
    assert_eq!(
        errors,
        [
            (json!(100_004), json!("invalid_media")),
            (json!(100_003), json!("malformed_frame"))
        ]
    );
    let dtmf = &media.frames("dtmf")[0].1;
    assert_eq!(dtmf["dtmf"]["digit"], "5");

    // The fake marks the socket down only after the close handshake ends on its side.
    let closed = |f: &FakeTelnyx| f.leg(&id).is_some_and(|l| !l.stream_connected);
    assert!(h.fake.wait_for(Duration::from_secs(10), closed).await);
    let leg = h.fake.leg(&id).unwrap();
    assert_eq!(leg.frames_received, 51);
    assert_eq!(leg.bytes_received, 51 * 160);
    assert_eq!((leg.marks_received, leg.marks_echoed), (3, 3));
    assert_eq!(leg.clears_received, 1);
    assert_eq!(leg.errors_sent, 2);
    assert!(leg.frames_sent >= media_frames.len() as u64);
    assert!(!leg.stream_connected);
    assert_eq!(leg.stream_id.as_deref(), Some(stream_id.as_str()));

    let types = h.rx.types(&id);
    let position = |t: &str| types.iter().position(|x| x == t).unwrap();
    assert!(position("call.answered") < position("streaming.started"));
    assert!(position("streaming.stopped") < position("call.hangup"));
    let started = h.rx.wait_event(&id, "streaming.started").await;
    assert_eq!(started.payload["stream_url"], media.url.as_str());
    let stats = &hangup.payload["call_quality_stats"];
    assert_eq!(stats["outbound"]["packet_count"], "51");
    assert!(
        stats["inbound"]["packet_count"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 20
    );
    h.fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_stream_fails_but_the_call_stays_up() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("ws://127.0.0.1:{port}/v1/media/telnyx");
    let h = Harness::start(config(answer(100, None)), 0).await;
    let id = h.dial_ok("+15551230010", json!({"stream_url": url})).await;
    let failed = h.rx.wait_event(&id, "streaming.failed").await;
    assert_eq!(failed.payload["stream_type"], "websocket");
    assert_eq!(failed.payload["stream_params"]["stream_url"], url.as_str());
    assert_eq!(failed.payload["stream_params"]["track"], "inbound_track");
    assert!(!failed.payload["failure_reason"]
        .as_str()
        .unwrap()
        .is_empty());
    assert!(failed.payload["stream_id"].is_string());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let leg = h.fake.leg(&id).unwrap();
    assert_eq!(leg.state, LegState::Answered);
    assert!(!leg.stream_connected);
    assert!(!h.rx.types(&id).iter().any(|t| t == "call.hangup"));
    h.fake.shutdown().await;
}
