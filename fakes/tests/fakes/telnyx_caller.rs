//! Wire-level tests of the Telnyx fake's scripted caller (`CallerScript`) on real sockets and
//! real time: a webhook receiver, and an axum WebSocket server standing in for IACE's media
//! endpoint that records every frame and plays one of a few app behaviours (listen, reply with
//! a tone after a delay, reply and clear when the caller talks over it). Each test starts its
//! own fake, so they run in parallel; each takes a few seconds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use iace_fakes::deepgram::{FakeDeepgram, FakeDeepgramConfig};
use iace_fakes::telnyx::{
    g711, CallerScript, CallerStep, CallerTimeline, FakeTelnyx, FakeTelnyxConfig, LegState,
    Scenario, StepOutcome,
};
use serde_json::{json, Value};

use crate::eventually;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as ClientMessage;

/// RMS (16-bit scale) above which a received frame is the caller talking.
const TALK_RMS: f64 = 1_000.0;
/// RMS below which a received frame is comfort noise.
const NOISE_RMS: f64 = 100.0;
/// The fake Deepgram's default VAD threshold, -40 dBFS.
const VAD_RMS: f64 = 330.0;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------------------------
// Webhook receiver (signatures are covered by telnyx.rs)

/// Every webhook received: event type and payload, in arrival order.
type Events = Arc<Mutex<Vec<(String, Value)>>>;

#[derive(Clone)]
struct Hooks {
    url: String,
    events: Events,
}

impl Hooks {
    async fn start() -> Hooks {
        let events = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/v1/webhooks/telnyx", post(receive_webhook))
            .with_state(events.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/v1/webhooks/telnyx",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Hooks { url, events }
    }

    fn of(&self, call_control_id: &str) -> Vec<(String, Value)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p)| p["call_control_id"] == call_control_id)
            .cloned()
            .collect()
    }

    fn types(&self, call_control_id: &str) -> Vec<String> {
        self.of(call_control_id)
            .into_iter()
            .map(|(t, _)| t)
            .collect()
    }

    async fn wait_event(&self, call_control_id: &str, event_type: &str) -> Value {
        let found = eventually(Duration::from_secs(5), || {
            self.types(call_control_id).iter().any(|t| t == event_type)
        })
        .await;
        assert!(
            found,
            "no {event_type}; got {:?}",
            self.types(call_control_id)
        );
        self.of(call_control_id)
            .into_iter()
            .find(|(t, _)| t == event_type)
            .unwrap()
            .1
    }
}

async fn receive_webhook(
    State(events): State<Events>,
    Json(envelope): Json<Value>,
) -> &'static str {
    let event_type = envelope["data"]["event_type"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    events
        .lock()
        .unwrap()
        .push((event_type, envelope["data"]["payload"].clone()));
    "ok"
}

// ---------------------------------------------------------------------------------------------
// The app's media endpoint

/// What the in-test app does on its media stream.
#[derive(Clone)]
enum AppPlan {
    /// Only records.
    Listen,
    /// `delay` after `start`, queues `tone` of a tone, then `silence` of digital silence, then
    /// the mark `reply-end`.
    Reply {
        delay: Duration,
        tone: Duration,
        silence: Duration,
    },
    /// Queues `tone` of a tone and the mark `reply-end` at once; sends `clear` as soon as a
    /// frame of the caller talking arrives.
    BargeIn { tone: Duration },
}

#[derive(Default)]
struct AppLog {
    frames: Vec<(Instant, Value)>,
    notes: Vec<(Instant, &'static str)>,
    closed: bool,
}

struct App {
    url: String,
    log: Arc<Mutex<AppLog>>,
}

impl App {
    async fn start(plan: AppPlan) -> App {
        let log = Arc::new(Mutex::new(AppLog::default()));
        let app = Router::new()
            .route("/v1/media/telnyx", get(media_upgrade))
            .with_state((log.clone(), plan));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/v1/media/telnyx", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        App { url, log }
    }

    fn frames(&self, event: &str) -> Vec<(Instant, Value)> {
        frames_of(&self.log, event)
    }

    /// RMS of every received media frame, in arrival order.
    fn levels(&self) -> Vec<f64> {
        self.frames("media")
            .iter()
            .map(|(_, f)| frame_rms(f))
            .collect()
    }

    fn noted(&self, what: &str) -> Option<Instant> {
        self.log
            .lock()
            .unwrap()
            .notes
            .iter()
            .find(|(_, n)| *n == what)
            .map(|(t, _)| *t)
    }

    fn closed(&self) -> bool {
        self.log.lock().unwrap().closed
    }
}

fn frames_of(log: &Mutex<AppLog>, event: &str) -> Vec<(Instant, Value)> {
    log.lock()
        .unwrap()
        .frames
        .iter()
        .filter(|(_, f)| f["event"] == event)
        .cloned()
        .collect()
}

fn frame_rms(frame: &Value) -> f64 {
    let audio = BASE64
        .decode(frame["media"]["payload"].as_str().unwrap())
        .unwrap();
    let energy: f64 = audio
        .iter()
        .map(|&b| f64::from(g711::ulaw_to_linear(b)).powi(2))
        .sum();
    (energy / audio.len() as f64).sqrt()
}

async fn media_upgrade(
    State((log, plan)): State<(Arc<Mutex<AppLog>>, AppPlan)>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.on_upgrade(move |socket| run_app(socket, log, plan))
}

/// 20 ms media messages of a 440 Hz tone at about -15 dBFS, then of digital silence.
fn audio_messages(tone: Duration, silence: Duration) -> Vec<String> {
    let frames = |d: Duration| (d.as_millis() / 20) as usize;
    let mut messages = Vec::new();
    for f in 0..frames(tone) {
        let payload: Vec<u8> = (0..160)
            .map(|i| {
                let t = (f * 160 + i) as f64 / 8_000.0;
                let s = 8_000.0 * (std::f64::consts::TAU * 440.0 * t).sin();
                g711::linear_to_ulaw(s as i16)
            })
            .collect();
        messages.push(BASE64.encode(payload));
    }
    let quiet = BASE64.encode([g711::linear_to_ulaw(0); 160]);
    messages.extend(std::iter::repeat_n(quiet, frames(silence)));
    messages
        .into_iter()
        .map(|p| json!({"event": "media", "media": {"payload": p}}).to_string())
        .collect()
}

async fn run_app(socket: WebSocket, log: Arc<Mutex<AppLog>>, plan: AppPlan) {
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
        !frames_of(&log, "start").is_empty()
    })
    .await;
    assert!(started, "no start frame");
    let note = |what: &'static str| log.lock().unwrap().notes.push((Instant::now(), what));
    let mark = json!({"event": "mark", "mark": {"name": "reply-end"}}).to_string();
    match plan {
        AppPlan::Listen => {}
        AppPlan::Reply {
            delay,
            tone,
            silence,
        } => {
            tokio::time::sleep(delay).await;
            note("tone");
            for message in audio_messages(tone, silence) {
                let _ = tx.send(WsMessage::Text(message.into())).await;
            }
            let _ = tx.send(WsMessage::Text(mark.into())).await;
        }
        AppPlan::BargeIn { tone } => {
            note("tone");
            for message in audio_messages(tone, Duration::ZERO) {
                let _ = tx.send(WsMessage::Text(message.into())).await;
            }
            let _ = tx.send(WsMessage::Text(mark.into())).await;
            let talking = eventually(Duration::from_secs(5), || {
                frames_of(&log, "media")
                    .iter()
                    .any(|(_, f)| frame_rms(f) > TALK_RMS)
            })
            .await;
            assert!(talking, "the caller never talked");
            note("clear");
            let clear = json!({"event": "clear"}).to_string();
            let _ = tx.send(WsMessage::Text(clear.into())).await;
        }
    }
    let _ = reader.await;
}

// ---------------------------------------------------------------------------------------------
// Harness

struct Harness {
    fake: FakeTelnyx,
    hooks: Hooks,
    app: App,
    http: reqwest::Client,
}

impl Harness {
    async fn start(plan: AppPlan) -> Harness {
        let hooks = Hooks::start().await;
        let app = App::start(plan).await;
        let fake = FakeTelnyx::start(FakeTelnyxConfig {
            inbound_webhook_url: Some(hooks.url.clone()),
            default_scenario: Scenario::Answer {
                ring: ms(100),
                talk: None,
            },
            ..FakeTelnyxConfig::default()
        })
        .await
        .unwrap();
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Harness {
            fake,
            hooks,
            app,
            http,
        }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(format!("{}{}", self.fake.api_base(), path))
            .bearer_auth("test-key")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    fn stream_fields(&self) -> Value {
        json!({
            "stream_url": self.app.url,
            "stream_track": "inbound_track",
            "stream_bidirectional_mode": "rtp",
            "stream_bidirectional_codec": "PCMU",
        })
    }

    /// Dials `to` with a bidirectional stream to the app; the callee follows `script`.
    async fn dial(&self, to: &str, script: Option<CallerScript>) -> String {
        if let Some(script) = script {
            self.fake.set_caller_script(to, script);
        }
        let mut body = json!({
            "connection_id": "test-connection",
            "to": to,
            "from": "+15550100000",
        });
        if let (Some(body), Value::Object(stream)) = (body.as_object_mut(), self.stream_fields()) {
            body.extend(stream);
        }
        let dialed = self.post("/calls", body).await;
        dialed["data"]["call_control_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn hangup(&self, id: &str) {
        self.post(&format!("/calls/{id}/actions/hangup"), json!({}))
            .await;
    }

    /// Waits until step `index` of the leg's script has ended; returns the timeline.
    async fn step_ended(&self, id: &str, index: usize, timeout: Duration) -> CallerTimeline {
        let ended = self
            .fake
            .wait_for(timeout, |f| {
                f.caller_timeline(id)
                    .and_then(|t| t.step(index).and_then(|s| s.end))
                    .is_some()
            })
            .await;
        assert!(
            ended,
            "step {index} did not end: {:?}",
            self.fake.caller_timeline(id)
        );
        self.fake.caller_timeline(id).unwrap()
    }

    async fn stream_stopped(&self, id: &str) -> CallerTimeline {
        let stopped = self
            .fake
            .wait_for(Duration::from_secs(10), |f| {
                f.caller_timeline(id)
                    .is_some_and(|t| t.stopped_ms.is_some())
            })
            .await;
        assert!(stopped, "{:?}", self.fake.caller_timeline(id));
        self.fake.caller_timeline(id).unwrap()
    }
}

/// Every step follows the one before it without a gap, intervals do not overlap, every list is
/// in time order and nothing comes after the stream stopped.
fn assert_monotonic(t: &CallerTimeline) {
    for (i, step) in t.steps.iter().enumerate() {
        assert_eq!(step.index, i, "{t:?}");
        if let Some(end) = step.end_ms() {
            assert!(end >= step.start_ms, "{t:?}");
        }
    }
    for pair in t.steps.windows(2) {
        assert_eq!(Some(pair[1].start_ms), pair[0].end_ms(), "{t:?}");
    }
    for a in &t.agent_audio {
        assert!(a.end_ms.is_none_or(|end| end >= a.start_ms), "{t:?}");
    }
    for pair in t.agent_audio.windows(2) {
        assert!(
            pair[0].end_ms.is_some_and(|end| end <= pair[1].start_ms),
            "{t:?}"
        );
    }
    assert!(t.clears_ms.windows(2).all(|w| w[0] <= w[1]), "{t:?}");
    assert!(
        t.marks_echoed.windows(2).all(|w| w[0].at_ms <= w[1].at_ms),
        "{t:?}"
    );
    if let Some(stop) = t.stopped_ms {
        let mut all: Vec<u64> = t.clears_ms.clone();
        all.extend(t.marks_echoed.iter().map(|m| m.at_ms));
        all.extend(t.steps.iter().filter_map(|s| s.end_ms()));
        all.extend(t.agent_audio.iter().filter_map(|a| a.end_ms));
        assert!(all.iter().all(|&ms| ms <= stop), "{t:?}");
        assert!(
            t.steps.iter().all(|s| s.end.is_some()),
            "a stopped stream leaves no step running: {t:?}"
        );
        assert!(t.agent_audio.iter().all(|a| a.end_ms.is_some()), "{t:?}");
    }
}

/// Runs of talk (`true`) and comfort noise (`false`) frames; fails on a level in between.
fn runs(levels: &[f64]) -> Vec<(bool, usize)> {
    let mut runs: Vec<(bool, usize)> = Vec::new();
    for (n, &level) in levels.iter().enumerate() {
        let talk = level > TALK_RMS;
        assert!(
            talk || level < NOISE_RMS,
            "frame {n} is neither talk nor comfort noise: RMS {level}"
        );
        match runs.last_mut() {
            Some((kind, len)) if *kind == talk => *len += 1,
            _ => runs.push((talk, 1)),
        }
    }
    runs
}

/// Utterances an energy VAD (20 ms windows at -40 dBFS, 200 ms hangover) hears, as the fake
/// Deepgram does.
fn utterances(levels: &[f64]) -> usize {
    let mut count = 0;
    let mut in_speech = false;
    let mut unvoiced = 0;
    for &level in levels {
        if level >= VAD_RMS {
            if !in_speech {
                in_speech = true;
                count += 1;
            }
            unvoiced = 0;
        } else if in_speech {
            unvoiced += 1;
            if unvoiced >= 10 {
                in_speech = false;
            }
        }
    }
    count
}

/// The final transcripts the fake Deepgram (default VAD: -40 dBFS, 200 ms hangover) gives for
/// the media frames' audio, sent unpaced (it runs on audio time) with `endpointing=300`.
async fn deepgram_lines(media: &[(Instant, Value)], script: &[&str]) -> Vec<String> {
    let deepgram = FakeDeepgram::start(FakeDeepgramConfig {
        script: script.iter().map(|l| (*l).to_owned()).collect(),
        ..FakeDeepgramConfig::default()
    })
    .await
    .unwrap();
    let url = deepgram.listen_url("model=nova-3&encoding=mulaw&sample_rate=8000&endpointing=300");
    let mut request = url.into_client_request().unwrap();
    let auth = format!("Token {}", deepgram.api_key());
    request
        .headers_mut()
        .insert("authorization", HeaderValue::from_str(&auth).unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    for (_, frame) in media {
        let audio = BASE64
            .decode(frame["media"]["payload"].as_str().unwrap())
            .unwrap();
        ws.send(ClientMessage::binary(audio)).await.unwrap();
    }
    let close = json!({"type": "CloseStream"}).to_string();
    ws.send(ClientMessage::text(close)).await.unwrap();
    // The fake closes after its Metadata; read until then so every result has been recorded.
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(message)) = ws.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the fake Deepgram did not close");
    let lines = deepgram.connections()[0].final_transcripts();
    deepgram.shutdown().await;
    lines
}

fn within(value: u64, low: u64, high: u64) -> bool {
    (low..=high).contains(&value)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn say_is_one_burst_of_talk_then_comfort_noise() {
    let h = Harness::start(AppPlan::Listen).await;
    let script = CallerScript::new()
        .say(ms(600))
        .silence(ms(400))
        .say(ms(1_200));
    let id = h.dial("+15551110001", Some(script)).await;
    assert!(
        eventually(Duration::from_secs(6), || h.app.frames("media").len()
            >= 140)
        .await
    );

    let levels = h.app.levels();
    let runs = runs(&levels);
    assert_eq!(
        runs[..3],
        [(true, 30), (false, 20), (true, 60)],
        "30 frames of talk, 20 of silence, 60 of talk: {runs:?}"
    );
    assert_eq!(runs.len(), 4, "then comfort noise only: {runs:?}");
    let quietest_talk = levels
        .iter()
        .copied()
        .filter(|&l| l > TALK_RMS)
        .fold(f64::MAX, f64::min);
    assert!(
        quietest_talk > 1_500.0,
        "every talk frame stays far above -40 dBFS: {quietest_talk}"
    );
    assert_eq!(utterances(&levels), 2, "one utterance per Say");
    let lines = deepgram_lines(&h.app.frames("media"), &["first line", "second line"]).await;
    assert_eq!(
        lines,
        ["first line", "second line"],
        "the fake Deepgram hears one line per Say"
    );

    let t = h.step_ended(&id, 2, Duration::from_secs(15)).await;
    assert_eq!(t.steps.len(), 3);
    assert!(t
        .steps
        .iter()
        .all(|s| s.end.unwrap().outcome == StepOutcome::Done));
    assert_eq!(t.steps[0].step, CallerStep::Say(ms(600)));
    assert!(t.steps[0].start_ms <= 250, "{t:?}");
    let say = t.steps[0].end_ms().unwrap() - t.steps[0].start_ms;
    assert!(within(say, 580, 750), "Say(600ms) took {say} ms");
    assert!(t.agent_audio.is_empty() && t.clears_ms.is_empty());
    assert_monotonic(&t);

    h.hangup(&id).await;
    h.hooks.wait_event(&id, "call.hangup").await;
    let t = h.stream_stopped(&id).await;
    assert_monotonic(&t);
    h.fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_agent_audio_holds_the_caller_until_the_app_plays() {
    let h = Harness::start(AppPlan::Reply {
        delay: ms(700),
        tone: ms(1_000),
        silence: Duration::ZERO,
    })
    .await;
    let script = CallerScript::new()
        .wait_for_agent_audio(Duration::from_secs(5))
        .say(ms(400));
    let id = h.dial("+15551110002", Some(script)).await;
    let t = h.step_ended(&id, 1, Duration::from_secs(15)).await;

    let wait = t.step(0).unwrap();
    assert_eq!(wait.end.unwrap().outcome, StepOutcome::Done);
    let agent = t.agent_audio[0];
    assert!(agent.start_ms >= 650, "the app played after 700 ms: {t:?}");
    let reaction = wait.end_ms().unwrap() - agent.start_ms;
    assert!(reaction <= 100, "the caller reacted after {reaction} ms");
    let say = t.step(1).unwrap();
    assert!(
        agent.contains(say.start_ms),
        "the caller talks while the agent plays"
    );

    // On the wire: comfort noise until the app's tone, then exactly the 20 frames of the Say.
    let tone_sent = h.app.noted("tone").unwrap();
    let media = h.app.frames("media");
    let talk: Vec<Instant> = media
        .iter()
        .filter(|(_, f)| frame_rms(f) > TALK_RMS)
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(talk.len(), 20);
    assert!(talk[0] > tone_sent, "no talk before the app played");
    assert_monotonic(&t);
    h.fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_agent_audio_gives_up_after_its_timeout() {
    let h = Harness::start(AppPlan::Listen).await;
    let script = CallerScript::new()
        .wait_for_agent_audio(ms(300))
        .say(ms(200));
    let id = h.dial("+15551110003", Some(script)).await;
    let t = h.step_ended(&id, 1, Duration::from_secs(15)).await;
    let wait = t.step(0).unwrap();
    assert_eq!(wait.end.unwrap().outcome, StepOutcome::TimedOut);
    let waited = wait.end_ms().unwrap() - wait.start_ms;
    assert!(within(waited, 300, 400), "waited {waited} ms");
    assert_eq!(t.step(1).unwrap().end.unwrap().outcome, StepOutcome::Done);
    assert!(t.agent_audio.is_empty());
    assert_monotonic(&t);
    h.fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_agent_silence_waits_for_the_play_out_to_end_plus_quiet() {
    let h = Harness::start(AppPlan::Reply {
        delay: ms(200),
        tone: ms(1_000),
        silence: ms(500),
    })
    .await;
    let script = CallerScript::new()
        .wait_for_agent_audio(Duration::from_secs(5))
        .wait_for_agent_silence(ms(300), Duration::from_secs(5))
        .say(ms(400));
    let id = h.dial("+15551110004", Some(script)).await;
    let t = h.step_ended(&id, 2, Duration::from_secs(15)).await;

    assert_eq!(t.agent_audio.len(), 1, "{t:?}");
    let agent = t.agent_audio[0];
    let end = agent.end_ms.unwrap();
    let played = end - agent.start_ms;
    // The tone is 1 s and the digital silence after it 500 ms: counting the silence would
    // read 1.5 s. The upper bound leaves room for late frame pacing on a busy machine.
    assert!(
        within(played, 990, 1_250),
        "the tone played 1 s and the digital silence after it does not count: {played} ms"
    );
    let silence = t.step(1).unwrap();
    assert_eq!(silence.end.unwrap().outcome, StepOutcome::Done);
    let quiet = silence.end_ms().unwrap() - end;
    assert!(
        within(quiet, 300, 400),
        "the caller waited {quiet} ms of quiet"
    );
    assert!(t.step(2).unwrap().start_ms >= end + 300);
    // The mark behind the tone and the silence was echoed once both had played.
    assert_eq!(t.marks_echoed.len(), 1);
    let mark = t.marks_echoed[0].at_ms;
    assert!(
        within(mark, end + 490, end + 600),
        "mark at {mark}, tone end {end}"
    );

    // No caller talk reached the app before the agent's audio ended.
    let tone_sent = h.app.noted("tone").unwrap();
    let first_talk = h
        .app
        .frames("media")
        .into_iter()
        .find(|(_, f)| frame_rms(f) > TALK_RMS)
        .map(|(at, _)| at)
        .unwrap();
    assert!(first_talk.duration_since(tone_sent) >= ms(1_250));
    let leg = h.fake.leg(&id).unwrap();
    assert_eq!(leg.frames_received, 75);
    assert_monotonic(&t);
    h.fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_clear_stops_the_play_out_right_away() {
    let h = Harness::start(AppPlan::BargeIn { tone: ms(3_000) }).await;
    let script = CallerScript::new()
        .wait_for_agent_audio(Duration::from_secs(5))
        .silence(ms(300))
        .say(ms(800))
        .wait_for_agent_silence(ms(200), Duration::from_secs(3));
    let id = h.dial("+15551110005", Some(script)).await;
    let t = h.step_ended(&id, 3, Duration::from_secs(15)).await;

    let say = t.step(2).unwrap();
    assert_eq!(say.step, CallerStep::Say(ms(800)));
    assert_eq!(t.clears_ms.len(), 1, "{t:?}");
    let clear = t.clears_ms[0];
    assert_eq!(t.agent_audio.len(), 1, "{t:?}");
    let agent = t.agent_audio[0];
    // Times are whole ms: a clear within the Say's first millisecond ends the audio "at" it.
    assert!(
        agent.start_ms <= say.start_ms && agent.end_ms.is_some_and(|end| end >= say.start_ms),
        "the caller talked over the agent: {t:?}"
    );
    assert!(
        clear >= say.start_ms && clear - say.start_ms < 300,
        "the app cleared {} ms after the caller started",
        clear - say.start_ms
    );
    let stopped = agent.end_ms.unwrap();
    assert!(
        stopped >= clear && stopped - clear <= 20,
        "play-out stopped at {stopped}, clear at {clear}"
    );
    assert!(
        stopped - agent.start_ms < 1_500,
        "3 s of audio were cut short"
    );
    // The mark queued behind the audio came back with the clear.
    assert_eq!(t.marks_echoed.len(), 1);
    assert_eq!(t.marks_echoed[0].name, "reply-end");
    let echoed = t.marks_echoed[0].at_ms;
    assert!(
        echoed >= clear && echoed - clear <= 50,
        "mark at {echoed}, clear at {clear}"
    );
    let mark_frame = h.app.frames("mark")[0].0;
    assert!(mark_frame >= h.app.noted("clear").unwrap());
    // The caller finished its sentence, then found the agent quiet.
    assert_eq!(say.end.unwrap().outcome, StepOutcome::Done);
    let wait = t.step(3).unwrap();
    assert_eq!(wait.end.unwrap().outcome, StepOutcome::Done);
    let waited = wait.end_ms().unwrap() - wait.start_ms;
    assert!(within(waited, 200, 300), "waited {waited} ms");

    let leg = h.fake.leg(&id).unwrap();
    assert_eq!((leg.clears_received, leg.marks_echoed), (1, 1));
    assert_monotonic(&t);
    h.fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtmf_step_arrives_as_a_media_frame_and_a_webhook() {
    let h = Harness::start(AppPlan::Listen).await;
    let script = CallerScript::new().silence(ms(200)).dtmf('7').say(ms(200));
    let id = h.dial("+15551110006", Some(script)).await;
    let hook = h.hooks.wait_event(&id, "call.dtmf.received").await;
    assert_eq!(hook["digit"], "7");
    assert!(eventually(Duration::from_secs(2), || h.app.frames("dtmf").len() == 1).await);
    let (dtmf_at, dtmf) = h.app.frames("dtmf").remove(0);
    assert_eq!(dtmf["dtmf"]["digit"], "7");
    let before = h
        .app
        .frames("media")
        .iter()
        .filter(|(at, _)| *at < dtmf_at)
        .count();
    assert!(
        within(before as u64, 10, 12),
        "{before} frames before the key"
    );

    let t = h.step_ended(&id, 2, Duration::from_secs(15)).await;
    let key = t.step(1).unwrap();
    assert_eq!(key.step, CallerStep::Dtmf('7'));
    assert_eq!(
        key.end_ms(),
        Some(key.start_ms),
        "a key press takes no time"
    );
    assert_monotonic(&t);
    h.fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_step_ends_the_leg_with_call_hangup() {
    let h = Harness::start(AppPlan::Listen).await;
    let script = CallerScript::new().say(ms(300)).hangup();
    let id = h.dial("+15551110007", Some(script)).await;
    let hangup = h.hooks.wait_event(&id, "call.hangup").await;
    assert_eq!(hangup["hangup_cause"], "normal_clearing");
    assert_eq!(hangup["hangup_source"], "callee");
    assert_eq!(hangup["sip_hangup_cause"], "200");
    let types = h.hooks.types(&id);
    let position = |t: &str| types.iter().position(|x| x == t).unwrap();
    assert!(position("streaming.stopped") < position("call.hangup"));
    assert!(eventually(Duration::from_secs(3), || h.app.closed()).await);

    let frames: Vec<Value> = h
        .app
        .log
        .lock()
        .unwrap()
        .frames
        .iter()
        .map(|(_, f)| f.clone())
        .collect();
    assert_eq!(frames.last().unwrap()["event"], "stop");
    assert_eq!(
        h.app.frames("media").len(),
        15,
        "the Say and nothing after the hangup"
    );
    let leg = h.fake.leg(&id).unwrap();
    assert_eq!(leg.state, LegState::Hangup);
    let t = h.stream_stopped(&id).await;
    let step = t.step(1).unwrap();
    assert_eq!(step.step, CallerStep::Hangup);
    assert_eq!(step.end.unwrap().outcome, StepOutcome::Done);
    assert!(t.stopped_ms.unwrap() - step.end_ms().unwrap() < 200);
    assert_monotonic(&t);
    h.fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_call_from_a_scripted_number_follows_the_script() {
    let h = Harness::start(AppPlan::Listen).await;
    h.fake
        .set_caller_script("+15557000001", CallerScript::new().say(ms(200)).hangup());
    let id = h
        .fake
        .place_inbound_call(
            "+15557000001",
            "+15550000001",
            Scenario::Answer {
                ring: Duration::from_secs(5),
                talk: None,
            },
        )
        .await;
    h.hooks.wait_event(&id, "call.initiated").await;
    h.post(&format!("/calls/{id}/actions/answer"), h.stream_fields())
        .await;
    let hangup = h.hooks.wait_event(&id, "call.hangup").await;
    assert_eq!(hangup["hangup_cause"], "normal_clearing");
    assert_eq!(hangup["hangup_source"], "caller");
    let t = h.stream_stopped(&id).await;
    assert_eq!(t.steps.len(), 2);
    assert!(eventually(Duration::from_secs(2), || h.app.closed()).await);
    assert_eq!(h.app.frames("media").len(), 10);
    assert_monotonic(&t);
    h.fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unscripted_leg_keeps_the_talk_pause_cycle() {
    let h = Harness::start(AppPlan::Listen).await;
    // A script for another number changes nothing for this one.
    h.fake
        .set_caller_script("+15551119999", CallerScript::new().hangup());
    let id = h.dial("+15551110008", None).await;
    assert!(eventually(Duration::from_secs(4), || h.app.frames("media").len() >= 90).await);
    let levels = h.app.levels();
    let loudest = |range: std::ops::Range<usize>| levels[range].iter().copied().fold(0.0, f64::max);
    assert!(loudest(0..50) > 2_000.0, "1 s of talk");
    assert!(loudest(50..75) < NOISE_RMS, "0.5 s of pause");
    assert!(loudest(75..90) > 2_000.0, "talk again");
    let t = h.fake.caller_timeline(&id).unwrap();
    assert!(t.steps.is_empty());
    h.hangup(&id).await;
    let t = h.stream_stopped(&id).await;
    assert_monotonic(&t);
    h.fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_records_every_kind_of_entry_in_order() {
    let h = Harness::start(AppPlan::Reply {
        delay: ms(100),
        tone: ms(500),
        silence: Duration::ZERO,
    })
    .await;
    let script = CallerScript::from(vec![
        CallerStep::WaitForAgentAudio {
            timeout: Duration::from_secs(5),
        },
        CallerStep::Say(ms(300)),
        CallerStep::WaitForAgentSilence {
            quiet: ms(200),
            timeout: Duration::from_secs(5),
        },
        CallerStep::Dtmf('1'),
        CallerStep::Silence(ms(100)),
        CallerStep::Hangup,
    ]);
    let id = h.dial("+15551110009", Some(script.clone())).await;
    h.hooks.wait_event(&id, "call.hangup").await;
    let t = h.stream_stopped(&id).await;

    let steps: Vec<CallerStep> = t.steps.iter().map(|s| s.step.clone()).collect();
    assert_eq!(steps, script.steps);
    assert!(t
        .steps
        .iter()
        .all(|s| s.end.unwrap().outcome == StepOutcome::Done));
    assert_eq!(t.agent_audio.len(), 1);
    let agent = t.agent_audio[0];
    assert!(within(agent.end_ms.unwrap() - agent.start_ms, 490, 510));
    assert_eq!(t.marks_echoed.len(), 1);
    assert!(t.marks_echoed[0].at_ms >= agent.end_ms.unwrap());
    assert!(t.stopped_ms.is_some());
    // Steps, play-out and marks are on one clock: the silence wait ended 200 ms after the
    // agent's audio, and the caller hung up 100 ms after the key press.
    let quiet = t.step(2).unwrap().end_ms().unwrap() - agent.end_ms.unwrap();
    assert!(within(quiet, 200, 300), "quiet {quiet} ms");
    // Silence(100ms) is 5 frames at the pacing's 20 ms ticks, which wake a little late or early.
    let silence = t.step(5).unwrap().start_ms - t.step(3).unwrap().start_ms;
    assert!(within(silence, 90, 200), "silence {silence} ms");
    assert_monotonic(&t);
    assert_eq!(h.hooks.types(&id).last().unwrap(), "call.hangup");
    h.fake.shutdown().await;
}
