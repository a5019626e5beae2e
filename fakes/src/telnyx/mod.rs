//! A wire-level fake of Telnyx Call Control v2 and Media Streaming
//! (shared/docs/vendor-protocols.md section 1), on real sockets and real time.
//!
//! It exists so that IACE's real Telnyx client (reqwest), its webhook receiver
//! (`POST /v1/webhooks/telnyx`) and its media WebSocket endpoint (`GET /v1/media/telnyx`) can be
//! exercised without the real carrier: in integration tests, under `iace-dev`, and in load tests
//! that measure webhook-to-ack latency. It plays three roles at once:
//!
//! * the REST API (`/v2/calls`, `/v2/calls/{id}/actions/*`, `GET /v2/calls/{id}`) with Bearer
//!   auth, Telnyx error bodies, `command_id` idempotency and injectable failures ([`api`]);
//! * the far end of every leg: a [`Scenario`] decides whether the callee answers, is busy,
//!   rejects, never answers or is a machine, and when it hangs up ([`state`]);
//! * the webhook sender (Ed25519-signed, per-leg ordered, retried, with injectable duplicates,
//!   reordering and lost first attempts — [`webhooks`]) and the media-stream WebSocket client
//!   that paces speech-like mu-law audio and plays back what the app sends ([`media`]);
//! * optionally a scripted far party ([`CallerScript`]: talk, silence, waits on the app's
//!   audio, DTMF, hangup) with a [`CallerTimeline`] of what it did and heard (`caller.rs`).
//!
//! It must not use tokio's paused clock: everything here is wall-clock paced on real sockets, so
//! it cannot run inside the deterministic simulation of `iace-sim`'s seeded runs. Nothing in
//! it is seeded; ids are random v4 UUIDs. It keeps every command and delivery attempt in memory
//! for inspection, so a long-running `iace-dev` session grows without bound (by design: tests
//! want the full history).

mod actions;
mod api;
mod audio;
mod body;
mod caller;
mod far_end;
pub mod g711;
mod media;
mod playout;
mod state;
mod stream;
mod webhooks;

use crate::fake::Served;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};

use self::state::Shared;

pub use self::caller::{
    AgentAudioInterval, CallerScript, CallerStep, CallerTimeline, MarkEcho, StepEnd, StepOutcome,
    StepRecord,
};

/// What the far end does on an outbound dial, or what the caller does on an inbound call.
///
/// Outbound (`POST /v2/calls`) — the callee:
/// * `Answer` answers after `ring` and hangs up `talk` later (`None`: never, until our hangup).
/// * `Busy` declines after `after`: `call.hangup` `user_busy`, SIP `486`.
/// * `NoAnswer` rings until the dial's `timeout_secs` (default 30) runs out, then `call.hangup`
///   with [`FakeTelnyxConfig::no_answer_cause`] (default `timeout`, SIP `408`).
/// * `Reject` declines after `after`: `call_rejected`, SIP `603`.
/// * `Machine` answers like `Answer`; AMD, if requested, reports `machine`.
///
/// A `ring` or `after` that reaches the dial's `timeout_secs` ends as `NoAnswer` does.
///
/// Inbound ([`FakeTelnyx::place_inbound_call`]) — the caller:
/// * `Answer`/`Machine`: abandons (`originator_cancel`) unless answered within `ring`; once
///   answered, hangs up `talk` later (`None`: never).
/// * `Busy`/`Reject`: abandons after `after` (there is no callee-side busy for a parked leg).
/// * `NoAnswer`: waits forever and never hangs up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scenario {
    /// Answers after `ring`; hangs up `talk` after answering (`None`: never).
    Answer {
        /// Time from dial to answer.
        ring: Duration,
        /// Time from answer to the far end's hangup.
        talk: Option<Duration>,
    },
    /// Busy after `after`.
    Busy {
        /// Time from dial to the busy signal.
        after: Duration,
    },
    /// Rings until the dial times out.
    NoAnswer,
    /// Rejects after `after`.
    Reject {
        /// Time from dial to the rejection.
        after: Duration,
    },
    /// An answering machine: answers after `ring`, AMD says `machine`.
    Machine {
        /// Time from dial to answer.
        ring: Duration,
        /// Time from answer to the machine's hangup.
        talk: Option<Duration>,
    },
}

/// Which `hangup_cause` an unanswered outbound dial ends with when `timeout_secs` runs out.
/// Telnyx documents both values and the sources do not say which one a ring timeout produces,
/// so it is configurable ([UNVERIFIED] in the protocol notes' sense).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoAnswerCause {
    /// `hangup_cause` `timeout`, `sip_hangup_cause` `408`.
    #[default]
    Timeout,
    /// `hangup_cause` `no_answer`, `sip_hangup_cause` `480`.
    NoAnswer,
}

/// Webhook delivery faults, the ones Telnyx documents as possible (section 1.3: "Delivery order
/// is not guaranteed; duplicates happen"). Counting is global over all webhooks of the fake, in
/// the order their deliveries begin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFaults {
    /// Every n-th webhook is delivered twice (same `data.id`, the copy after the original
    /// settled, its own `meta.attempt` numbering from 1).
    pub duplicate_every: Option<u32>,
    /// Swap adjacent webhooks of a leg: the leg's worker holds an event for up to
    /// [`REORDER_WINDOW`] and, if the next event of the leg arrives meanwhile, delivers that one
    /// first. So `call.hangup` may arrive before `call.answered` when they are close together.
    pub reorder: bool,
    /// Every n-th webhook's first attempt is not sent but recorded as failed; attempt 2 follows
    /// after the first retry delay.
    pub drop_first_attempt_every: Option<u32>,
}

/// How long a leg's webhook worker holds an event for [`DeliveryFaults::reorder`].
pub const REORDER_WINDOW: Duration = Duration::from_secs(1);

/// How the fake behaves. [`Default`] gives test values.
#[derive(Debug, Clone)]
pub struct FakeTelnyxConfig {
    /// Commands must carry `Authorization: Bearer <api_key>`; anything else gets 401 `10009`.
    pub api_key: String,
    /// The only Call Control App id a dial may name; another gets 422 `10015`.
    pub connection_id: String,
    /// Ed25519 secret seed that signs webhooks; its public key is
    /// [`FakeTelnyx::public_key_base64`].
    pub signing_seed: [u8; 32],
    /// The connection's webhook URL: where events of inbound calls go, and of dials that name
    /// no `webhook_url`.
    pub inbound_webhook_url: Option<String>,
    /// Delays before re-attempts of a failed delivery (non-2xx, connect error, timeout); only
    /// the first 5 are used, as Telnyx retries at most 5 times.
    pub webhook_retry_delays: Vec<Duration>,
    /// Time limit of one delivery attempt.
    pub webhook_timeout: Duration,
    /// Scenario of numbers without one set by [`FakeTelnyx::set_scenario`].
    pub default_scenario: Scenario,
    /// Pacing of media frames; each frame carries 20 ms of audio whatever the pacing.
    pub media_frame_interval: Duration,
    /// Hangup cause of an outbound dial nobody answers.
    pub no_answer_cause: NoAnswerCause,
    /// Also put the stream auth token into the `connected` frame as
    /// `{"connected":{"x-telnyx-streaming-auth-token":..}}` — the placement is [UNVERIFIED]
    /// (section 1.5), so it is off by default and the token goes only in the upgrade header.
    pub auth_token_in_connected_frame: bool,
}

impl Default for FakeTelnyxConfig {
    fn default() -> Self {
        FakeTelnyxConfig {
            api_key: "test-key".to_owned(),
            connection_id: "test-connection".to_owned(),
            signing_seed: [7u8; 32],
            inbound_webhook_url: None,
            webhook_retry_delays: vec![
                Duration::from_millis(200),
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(5),
            ],
            webhook_timeout: Duration::from_secs(5),
            default_scenario: Scenario::Answer {
                ring: Duration::from_millis(300),
                talk: Some(Duration::from_secs(2)),
            },
            media_frame_interval: Duration::from_millis(20),
            no_answer_cause: NoAnswerCause::Timeout,
            auth_token_in_connected_frame: false,
        }
    }
}

/// Which way a leg goes, from Telnyx's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Someone called one of our numbers (`"incoming"`).
    Incoming,
    /// We dialed out (`"outgoing"`).
    Outgoing,
}

impl Direction {
    /// The wire value of `call.initiated`'s `direction`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Incoming => "incoming",
            Direction::Outgoing => "outgoing",
        }
    }
}

/// Where a leg is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegState {
    /// Inbound, waiting for our answer/reject/hangup.
    Parked,
    /// Outbound, the far end is ringing (Telnyx's `call.initiated` says `"bridging"`).
    Ringing,
    /// Answered.
    Answered,
    /// Transferred to another party and connected to it.
    Bridged,
    /// Ended; final.
    Hangup,
}

/// One command HTTP request, as received and answered.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedCommand {
    /// `POST` or `GET`.
    pub method: String,
    /// The trace headers the request came with.
    pub trace: crate::TraceHeaders,
    /// Request path, e.g. `/v2/calls/v3:abc/actions/hangup`.
    pub path: String,
    /// `dial`, `retrieve`, the action name (`hangup`, ...) or `unknown`.
    pub action: String,
    /// The leg addressed; for a dial, the leg it created (or returned again on a repeat).
    pub call_control_id: Option<String>,
    /// The request's `command_id`, if any.
    pub command_id: Option<String>,
    /// The parsed JSON body (`Null` when empty or not JSON).
    pub body: serde_json::Value,
    /// HTTP status answered.
    pub status: u16,
    /// Answered from the `command_id` cache without executing.
    pub idempotent_repeat: bool,
    /// Answered by [`FakeTelnyx::fail_commands`] without executing.
    pub injected_failure: bool,
}

/// One webhook delivery attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRecord {
    /// `data.id` of the event (equal across re-attempts and duplicates).
    pub event_id: String,
    /// `data.event_type`.
    pub event_type: String,
    /// The leg the event belongs to.
    pub call_control_id: String,
    /// `meta.attempt` (1 for the first).
    pub attempt: u32,
    /// Where it went (`None`: the leg had no webhook URL, nothing was sent).
    pub url: Option<String>,
    /// HTTP status answered, if any.
    pub status: Option<u16>,
    /// Connect error, timeout, injected drop or missing URL.
    pub error: Option<String>,
    /// From sending the request to receiving the response head.
    pub latency: Duration,
    /// This is the injected second copy of the event ([`DeliveryFaults::duplicate_every`]).
    pub duplicate: bool,
}

impl DeliveryRecord {
    /// The receiver acknowledged this attempt with a 2xx.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// What the fake knows about a leg right now.
#[derive(Debug, Clone, PartialEq)]
pub struct LegSnapshot {
    /// The opaque id commands address (`v3:...`).
    pub call_control_id: String,
    /// UUID of the leg.
    pub call_leg_id: String,
    /// UUID of the session.
    pub call_session_id: String,
    /// Inbound or outbound.
    pub direction: Direction,
    /// Current state.
    pub state: LegState,
    /// Calling number.
    pub from: String,
    /// Called number.
    pub to: String,
    /// Current `client_state` (echoed in every later webhook).
    pub client_state: Option<String>,
    /// Where the leg's webhooks go.
    pub webhook_url: Option<String>,
    /// AMD mode requested on dial (`None` when absent or `disabled`).
    pub answering_machine_detection: Option<String>,
    /// Target of the last `transfer`.
    pub transferred_to: Option<String>,
    /// `hangup_cause` once ended.
    pub hangup_cause: Option<String>,
    /// `hangup_source` once ended.
    pub hangup_source: Option<String>,
    /// `sip_hangup_cause` once ended.
    pub sip_hangup_cause: Option<String>,
    /// Media frames sent to the app (all tracks).
    pub frames_sent: u64,
    /// `media` frames received from the app with a valid payload.
    pub frames_received: u64,
    /// Decoded payload bytes received from the app.
    pub bytes_received: u64,
    /// `mark` frames received from the app.
    pub marks_received: u64,
    /// `mark` frames echoed back.
    pub marks_echoed: u64,
    /// `clear` frames received.
    pub clears_received: u64,
    /// `error` frames sent to the app.
    pub errors_sent: u64,
    /// The media WebSocket is open now.
    pub stream_connected: bool,
    /// Id of the current or last stream.
    pub stream_id: Option<String>,
}

/// A running fake Telnyx on `127.0.0.1`.
///
/// Dropping it without [`FakeTelnyx::shutdown`] also stops every task it spawned (they watch
/// the same stop signal, which closes when the sender drops), just without waiting for them.
pub struct FakeTelnyx {
    shared: Arc<Shared>,
    served: Served,
}

impl FakeTelnyx {
    /// Binds `127.0.0.1:0` and serves the command API.
    pub async fn start(config: FakeTelnyxConfig) -> io::Result<FakeTelnyx> {
        let (shared, served) = Served::start(|stop| {
            let shared = Arc::new(Shared::new(config, stop)?);
            let app = api::router(shared.clone());
            Ok((shared, app))
        })
        .await?;
        Ok(FakeTelnyx { shared, served })
    }

    /// The socket the command API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    /// `http://127.0.0.1:PORT/v2`; clients append `/calls`, `/calls/{id}/actions/hangup`, ...
    pub fn api_base(&self) -> String {
        format!("http://{}/v2", self.served.addr())
    }

    /// Base64 of the 32-byte Ed25519 public key that verifies the webhooks (what the Telnyx
    /// portal shows).
    pub fn public_key_base64(&self) -> String {
        BASE64.encode(self.shared.signing_key.verifying_key().to_bytes())
    }

    /// The far end's behaviour for dials to `to` (and transfers to `to`) from now on.
    pub fn set_scenario(&self, to: &str, s: Scenario) {
        self.shared.lock().scenarios.insert(to.to_owned(), s);
    }

    /// The far party of legs created from now on follows `script` once their media stream has
    /// started, instead of streaming the endless talk/pause cycle: outbound dials to `number`
    /// and inbound calls placed from `number` (keyed as [`FakeTelnyx::set_scenario`] keys dials
    /// by the called number). The scenario still decides ringing and answering; with
    /// `talk: None` the script alone decides when the far party hangs up.
    pub fn set_caller_script(&self, number: &str, script: CallerScript) {
        self.shared
            .lock()
            .caller_scripts
            .insert(number.to_owned(), script);
    }

    /// The media timeline of a leg: its script's steps, the app's audible play-out, clears and
    /// echoed marks. `None` if the leg is unknown or its media stream never started.
    pub fn caller_timeline(&self, call_control_id: &str) -> Option<CallerTimeline> {
        self.shared
            .lock()
            .legs
            .get(call_control_id)
            .and_then(|leg| leg.timeline.as_ref())
            .map(|t| t.record.clone())
    }

    /// Replaces the webhook delivery faults; counting restarts.
    pub fn set_delivery_faults(&self, f: DeliveryFaults) {
        let mut st = self.shared.lock();
        st.faults = f;
        st.webhooks_started = 0;
    }

    /// The next `n` `POST /v2/...` requests with valid auth answer `status` with a Telnyx error
    /// body (and `retry-after` in whole seconds, rounded up, if given) without executing.
    pub fn fail_commands(&self, n: u32, status: u16, retry_after: Option<Duration>) {
        self.shared.lock().fail_next = (n > 0).then_some(state::InjectedFailure {
            remaining: n,
            status,
            retry_after,
        });
    }

    /// Delay before answering each `POST` (the command has already executed, as when a real
    /// response is slow: a client that times out and retries must rely on `command_id`).
    pub fn set_command_latency(&self, d: Duration) {
        self.shared.lock().command_latency = d;
    }

    /// Places an inbound call: creates a parked leg and sends `call.initiated` (direction
    /// `incoming`, state `parked`, `client_state` null) to
    /// [`FakeTelnyxConfig::inbound_webhook_url`]. Returns its `call_control_id`. The caller
    /// then behaves as `scenario` says (see [`Scenario`]).
    pub async fn place_inbound_call(&self, from: &str, to: &str, scenario: Scenario) -> String {
        let mut st = self.shared.lock();
        far_end::place_inbound(&self.shared, &mut st, from, to, scenario)
    }

    /// The far party presses `digit`: a `dtmf` frame on the leg's media stream (if one is
    /// open) and a `call.dtmf.received` webhook. False if the leg is unknown or not answered.
    pub fn send_dtmf(&self, call_control_id: &str, digit: char) -> bool {
        let mut st = self.shared.lock();
        actions::send_dtmf(&self.shared, &mut st, call_control_id, digit)
    }

    /// Every command request received, in arrival order.
    pub fn commands(&self) -> Vec<RecordedCommand> {
        self.shared.lock().commands.clone()
    }

    /// Every webhook delivery attempt, in completion order.
    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        self.shared.lock().deliveries.clone()
    }

    /// One leg's current state.
    pub fn leg(&self, call_control_id: &str) -> Option<LegSnapshot> {
        self.shared
            .lock()
            .legs
            .get(call_control_id)
            .map(state::Leg::snapshot)
    }

    /// All legs, in creation order.
    pub fn legs(&self) -> Vec<LegSnapshot> {
        let st = self.shared.lock();
        st.order
            .iter()
            .filter_map(|id| st.legs.get(id).map(state::Leg::snapshot))
            .collect()
    }

    /// Polls `f` every 10 ms until it holds (true) or `timeout` passes (false).
    pub async fn wait_for<F: Fn(&FakeTelnyx) -> bool>(&self, timeout: Duration, f: F) -> bool {
        crate::fake::poll_until(timeout, || f(self)).await
    }

    /// Stops the server and every leg, timer, delivery and media task. In-flight command
    /// requests get up to 2 s to finish.
    pub async fn shutdown(self) {
        self.served.shutdown().await;
    }
}

/// Signs like Telnyx (section 1.4): base64 of the Ed25519 signature, by the key of `seed`, of
/// `<timestamp>|<body>`. Public so IACE tests can forge and tamper with vectors.
pub fn sign_webhook(seed: &[u8; 32], timestamp: &str, body: &[u8]) -> String {
    sign_with(&SigningKey::from_bytes(seed), timestamp, body)
}

fn sign_with(key: &SigningKey, timestamp: &str, body: &[u8]) -> String {
    let mut message = Vec::with_capacity(timestamp.len() + 1 + body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.push(b'|');
    message.extend_from_slice(body);
    BASE64.encode(key.sign(&message).to_bytes())
}

use crate::fake::spawn_until_stopped;

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector of section 1.4, computed with Python `cryptography`.
    #[test]
    fn sign_webhook_matches_the_protocol_vector() {
        let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
        let key = SigningKey::from_bytes(&seed);
        assert_eq!(
            BASE64.encode(key.verifying_key().to_bytes()),
            "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
        );
        assert_eq!(
            sign_webhook(&seed, "1700000000", br#"{"data":{"event_type":"call.hangup"}}"#),
            "+HUd2Jh32zctPWKKinzLX5qTGhZLKdvSwr9beaswFfZA+yox8IRwA0CO0mOLR9FguZxL5vBwso0pSd8F7zIfBw=="
        );
    }
}
