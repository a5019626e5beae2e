//! End-to-end tests of the media endpoint: a real axum server on 127.0.0.1:0, a
//! tokio-tungstenite client playing Telnyx, and a sink that records what the engine would hear.
//! Real time throughout (real sockets never mix with paused time); every wait is bounded.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use super::metrics::kind;
use super::*;

/// Upper bound for any single wait; tests normally finish far below it.
const WAIT: Duration = Duration::from_secs(3);

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, Clone, PartialEq)]
enum SinkEvent {
    Started(Uuid, StreamInfo),
    Audio(Uuid, Vec<u8>),
    Mark(Uuid, String),
    Dtmf(Uuid, String),
    Stopped(Uuid, MediaStats),
}

/// Records what it hears; the calls in `ended` have ended (as the engine would say).
struct RecordingSink(mpsc::UnboundedSender<SinkEvent>, Arc<Mutex<HashSet<Uuid>>>);

impl MediaSink for RecordingSink {
    fn admits(&self, call_id: Uuid) -> Admission {
        let live = !self.1.lock().unwrap().contains(&call_id);
        Box::pin(async move { live })
    }
    fn started(&self, call_id: Uuid, info: StreamInfo) {
        let _ = self.0.send(SinkEvent::Started(call_id, info));
    }
    fn audio(&self, call_id: Uuid, mulaw: Vec<u8>) {
        let _ = self.0.send(SinkEvent::Audio(call_id, mulaw));
    }
    fn mark(&self, call_id: Uuid, name: String) {
        let _ = self.0.send(SinkEvent::Mark(call_id, name));
    }
    fn dtmf(&self, call_id: Uuid, digit: String) {
        let _ = self.0.send(SinkEvent::Dtmf(call_id, digit));
    }
    fn stopped(&self, call_id: Uuid, stats: MediaStats) {
        let _ = self.0.send(SinkEvent::Stopped(call_id, stats));
    }
}

/// A clock a test moves.
struct TestClock(Mutex<chrono::DateTime<chrono::Utc>>);

impl iace_actors::ports::Clock for TestClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        *self.0.lock().unwrap()
    }
}

struct Harness {
    addr: SocketAddr,
    tokens: Arc<MediaTokens>,
    /// The tokens' clock.
    clock: Arc<TestClock>,
    /// Calls the sink says have ended.
    ended: Arc<Mutex<HashSet<Uuid>>>,
    registry: MediaRegistry,
    metrics: MediaMetrics,
    events: mpsc::UnboundedReceiver<SinkEvent>,
}

fn config() -> MediaConfig {
    MediaConfig {
        auth_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(3),
        ..MediaConfig::default()
    }
}

async fn harness(config: MediaConfig) -> Harness {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, events) = mpsc::unbounded_channel();
    let clock = Arc::new(TestClock(Mutex::new(chrono::Utc::now())));
    let tokens = Arc::new(
        MediaTokens::new(b"test secret")
            .with_ttl(Duration::from_secs(600))
            .with_clock(clock.clone()),
    );
    let ended = Arc::new(Mutex::new(HashSet::new()));
    let registry = MediaRegistry::new();
    let metrics = MediaMetrics::new(&prometheus::Registry::new()).unwrap();
    let state = MediaState {
        tokens: Arc::clone(&tokens),
        sink: Arc::new(RecordingSink(tx, ended.clone())),
        registry: registry.clone(),
        metrics: metrics.clone(),
        config,
    };
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    Harness {
        addr,
        tokens,
        clock,
        ended,
        registry,
        metrics,
        events,
    }
}

impl Harness {
    async fn try_connect(&self, header_token: Option<&str>) -> Result<Client, WsError> {
        let mut request = format!("ws://{}{TELNYX_MEDIA_PATH}", self.addr)
            .into_client_request()
            .unwrap();
        if let Some(token) = header_token {
            request
                .headers_mut()
                .insert("x-telnyx-streaming-auth-token", token.parse().unwrap());
        }
        Ok(timeout(WAIT, connect_async(request)).await.unwrap()?.0)
    }

    /// A client authenticated by the upgrade header.
    async fn connect_as(&self, call: Uuid) -> Client {
        self.try_connect(Some(&self.tokens.token(call)))
            .await
            .unwrap()
    }

    async fn event(&mut self) -> SinkEvent {
        timeout(WAIT, self.events.recv())
            .await
            .expect("sink event in time")
            .unwrap()
    }

    async fn started(&mut self, call: Uuid) -> StreamInfo {
        match self.event().await {
            SinkEvent::Started(id, info) if id == call => info,
            other => panic!("expected started, got {other:?}"),
        }
    }

    /// `stopped`, skipping the caller audio and mark echoes before it.
    async fn stopped(&mut self, call: Uuid) -> MediaStats {
        self.until_stopped(call).await.1
    }

    /// The audio, mark and DTMF events up to `stopped`, in order, and the stats.
    async fn until_stopped(&mut self, call: Uuid) -> (Vec<SinkEvent>, MediaStats) {
        let mut before = Vec::new();
        loop {
            match self.event().await {
                SinkEvent::Stopped(id, stats) if id == call => return (before, stats),
                event @ (SinkEvent::Audio(id, _)
                | SinkEvent::Mark(id, _)
                | SinkEvent::Dtmf(id, _))
                    if id == call =>
                {
                    before.push(event)
                }
                other => panic!("expected audio, mark, dtmf or stopped, got {other:?}"),
            }
        }
    }

    /// The next event, which must be a mark echo.
    async fn mark(&mut self, call: Uuid) -> String {
        match self.event().await {
            SinkEvent::Mark(id, name) if id == call => name,
            other => panic!("expected mark, got {other:?}"),
        }
    }

    fn assert_no_more_events(&mut self) {
        assert!(
            self.events.try_recv().is_err(),
            "sink heard something unexpected"
        );
    }
}

async fn send(client: &mut Client, frame: Value) {
    client.send(Message::text(frame.to_string())).await.unwrap();
}

/// The next JSON frame from the server; `None` if nothing comes within `within`.
async fn recv_within(client: &mut Client, within: Duration) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        let message = tokio::time::timeout_at(deadline, client.next())
            .await
            .ok()?
            .expect("socket open")
            .expect("socket healthy");
        match message {
            Message::Text(text) => return Some(serde_json::from_str(text.as_str()).unwrap()),
            Message::Close(frame) => panic!("unexpected close: {frame:?}"),
            _ => {}
        }
    }
}

async fn recv(client: &mut Client) -> Value {
    recv_within(client, WAIT).await.expect("frame in time")
}

/// The close frame the server sends, skipping anything before it.
async fn recv_close(client: &mut Client) -> CloseFrame {
    loop {
        match timeout(WAIT, client.next()).await.expect("close in time") {
            Some(Ok(Message::Close(Some(frame)))) => return frame,
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                panic!("socket ended without a close frame")
            }
            Some(Ok(_)) => {}
        }
    }
}

fn start_frame(stream_id: &str, client_state: Option<Uuid>) -> Value {
    json!({
        "event": "start",
        "sequence_number": "1",
        "stream_id": stream_id,
        "start": {
            "call_control_id": "v3:leg-1",
            "client_state": client_state.map(|id| BASE64.encode(id.to_string())),
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}
        }
    })
}

fn media_frame(chunk: u64, payload: &[u8]) -> Value {
    json!({
        "event": "media",
        "sequence_number": (chunk + 1).to_string(),
        "stream_id": "s",
        "media": {
            "track": "inbound",
            "chunk": chunk.to_string(),
            "timestamp": (chunk * 20).to_string(),
            "payload": BASE64.encode(payload),
        }
    })
}

fn outbound_frame(chunk: u64, payload: &[u8]) -> Value {
    let mut frame = media_frame(chunk, payload);
    frame["media"]["track"] = json!("outbound");
    frame
}

fn mark_echo(name: &str) -> Value {
    json!({"event": "mark", "sequence_number": "9", "stream_id": "s", "mark": {"name": name}})
}

fn payload_of(frame: &Value) -> Vec<u8> {
    assert_eq!(frame["event"], "media", "not media: {frame}");
    BASE64
        .decode(frame["media"]["payload"].as_str().unwrap())
        .unwrap()
}

#[tokio::test]
async fn bad_header_token_is_refused_before_upgrade() {
    let mut h = harness(config()).await;
    for token in [
        "garbage".to_owned(),
        MediaTokens::new(b"other secret").token(Uuid::new_v4()),
    ] {
        match h.try_connect(Some(&token)).await {
            Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
            Err(other) => panic!("expected HTTP 401, got {other}"),
            Ok(_) => panic!("upgrade accepted with a bad token"),
        }
    }
    assert_eq!(h.metrics.error_count(kind::AUTH), 2);
    assert_eq!(h.registry.live(), 0);
    h.assert_no_more_events();
}

#[tokio::test]
async fn expired_tokens_are_refused_at_the_upgrade_and_in_the_connected_frame() {
    let mut h = harness(config()).await;
    let call = Uuid::new_v4();
    let token = h.tokens.token(call);
    *h.clock.0.lock().unwrap() += chrono::Duration::seconds(601);

    match h.try_connect(Some(&token)).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
        Err(other) => panic!("expected HTTP 401, got {other}"),
        Ok(_) => panic!("upgrade accepted with an expired token"),
    }
    let mut client = h.try_connect(None).await.unwrap();
    send(
        &mut client,
        json!({"event": "connected", "x-telnyx-streaming-auth-token": token}),
    )
    .await;
    assert_eq!(u16::from(recv_close(&mut client).await.code), 1008);
    assert_eq!(h.metrics.error_count(kind::AUTH), 2);
    assert_eq!(h.registry.live(), 0);
    h.assert_no_more_events();

    // A token issued now opens the stream.
    let mut client = h.connect_as(call).await;
    send(&mut client, start_frame("s", Some(call))).await;
    h.started(call).await;
}

#[tokio::test]
async fn a_token_of_a_call_that_has_ended_opens_nothing() {
    let mut h = harness(config()).await;
    let (ended, live) = (Uuid::new_v4(), Uuid::new_v4());
    h.ended.lock().unwrap().insert(ended);
    let token = h.tokens.token(ended);

    // Upgrade header: 403, no socket.
    match h.try_connect(Some(&token)).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        Err(other) => panic!("expected HTTP 403, got {other}"),
        Ok(_) => panic!("upgrade accepted for a call that has ended"),
    }
    // Token in the `connected` frame: closed with policy before `start`.
    let mut client = h.try_connect(None).await.unwrap();
    send(
        &mut client,
        json!({"event": "connected", "x-telnyx-streaming-auth-token": token}),
    )
    .await;
    let frame = recv_close(&mut client).await;
    assert_eq!(u16::from(frame.code), 1008);
    assert_eq!(frame.reason.as_str(), "the call has ended");
    assert_eq!(h.metrics.error_count(kind::CALL_ENDED), 2);
    assert_eq!(h.metrics.error_count(kind::AUTH), 0);
    assert_eq!(h.registry.live(), 0);
    h.assert_no_more_events();

    // Another call's stream is unaffected.
    let mut client = h.connect_as(live).await;
    send(&mut client, start_frame("s", Some(live))).await;
    h.started(live).await;
}

#[tokio::test]
async fn missing_token_closes_with_policy() {
    let mut h = harness(config()).await;

    // Silent peer: closed when the auth timeout runs out.
    let started = Instant::now();
    let mut silent = h.try_connect(None).await.unwrap();
    let frame = recv_close(&mut silent).await;
    assert_eq!(u16::from(frame.code), 1008);
    assert!(started.elapsed() >= Duration::from_millis(250));

    // `connected` without a token, or `start` first: refused at once.
    for first in [
        json!({"event": "connected", "version": "1.0.0"}),
        start_frame("s", None),
        json!({"event": "connected", "x-telnyx-streaming-auth-token": "nope"}),
    ] {
        let mut client = h.try_connect(None).await.unwrap();
        send(&mut client, first).await;
        assert_eq!(u16::from(recv_close(&mut client).await.code), 1008);
    }
    assert_eq!(h.metrics.error_count(kind::AUTH), 4);
    h.assert_no_more_events();
}

#[tokio::test]
async fn start_media_stop_reports_once() {
    let mut h = harness(config()).await;
    let call = Uuid::new_v4();
    // Token inside the `connected` object, no header.
    let mut client = h.try_connect(None).await.unwrap();
    send(
        &mut client,
        json!({"event": "connected", "version": "1.0.0",
               "connected": {"x-telnyx-streaming-auth-token": h.tokens.token(call)}}),
    )
    .await;
    send(&mut client, start_frame("stream-1", Some(call))).await;

    let info = h.started(call).await;
    assert_eq!(
        info,
        StreamInfo {
            stream_id: "stream-1".into(),
            call_control_id: Some("v3:leg-1".into()),
            encoding: "PCMU".into(),
            sample_rate: 8000,
            channels: 1,
        }
    );
    assert_eq!(h.registry.live(), 1);
    assert_eq!(h.registry.handle(call).unwrap().stream_id(), "stream-1");
    assert_eq!(h.metrics.streams_active.get(), 1);

    for chunk in 1..=5 {
        send(&mut client, media_frame(chunk, &[0xFF; 160])).await;
    }
    // Two malformed frames and a vendor error: counted, stream goes on.
    client.send(Message::text("{not json")).await.unwrap();
    send(
        &mut client,
        json!({"event": "media", "media": {"chunk": "6", "payload": "%%%"}}),
    )
    .await;
    send(
        &mut client,
        json!({"event": "error", "payload": {"code": 100003, "title": "malformed_frame", "detail": "x"}}),
    )
    .await;
    send(&mut client, json!({"event": "something_new"})).await;
    send(
        &mut client,
        json!({"event": "stop", "stop": {"call_control_id": "v3:leg-1"}}),
    )
    .await;

    let stats = h.stopped(call).await;
    assert_eq!(stats.stream_id, "stream-1");
    assert_eq!(stats.end, StreamEnd::Stop);
    assert_eq!((stats.frames_in, stats.bytes_in), (5, 800));
    assert_eq!((stats.frames_out, stats.bytes_out), (0, 0));
    assert_eq!((stats.gaps, stats.out_of_order), (0, 0));
    assert_eq!(stats.errors, 3);
    assert_eq!(
        (stats.marks_sent, stats.marks_acked, stats.clears_sent),
        (0, 0, 0)
    );
    assert!(stats.jitter_ms >= 0.0 && stats.jitter_ms.is_finite());
    // Deregistered before the sink heard `stopped`.
    assert_eq!(h.registry.live(), 0);
    assert!(h.registry.handle(call).is_none());
    assert_eq!(h.metrics.streams_active.get(), 0);
    assert_eq!(h.metrics.frames_in.get(), 5);
    assert_eq!(h.metrics.error_count(kind::MALFORMED), 2);
    assert_eq!(h.metrics.error_count(kind::VENDOR_ERROR), 1);

    assert_eq!(u16::from(recv_close(&mut client).await.code), 1000);
    h.assert_no_more_events();
}

#[tokio::test]
async fn chunk_gaps_and_reordering_are_detected() {
    let mut h = harness(config()).await;
    let call = Uuid::new_v4();
    let mut client = h.connect_as(call).await;
    send(
        &mut client,
        json!({"event": "connected", "version": "1.0.0"}),
    )
    .await;
    send(&mut client, start_frame("s", Some(call))).await;
    h.started(call).await;
    // 5 never arrives; 3 arrives late; 6 is duplicated.
    for chunk in [1, 2, 4, 3, 6, 6, 7] {
        send(&mut client, media_frame(chunk, &[0xFF; 160])).await;
    }
    send(&mut client, json!({"event": "stop"})).await;
    let stats = h.stopped(call).await;
    assert_eq!(stats.frames_in, 7);
    assert_eq!(stats.gaps, 1);
    assert_eq!(stats.out_of_order, 2);
    assert_eq!(h.metrics.gaps.get(), 1);
}

#[tokio::test]
async fn echo_returns_payloads() {
    let mut h = harness(MediaConfig {
        echo: true,
        ..config()
    })
    .await;
    let call = Uuid::new_v4();
    let mut client = h.connect_as(call).await;
    send(&mut client, start_frame("s", None)).await;
    h.started(call).await;
    for chunk in 1..=3u8 {
        let payload = vec![chunk; 160];
        send(&mut client, media_frame(u64::from(chunk), &payload)).await;
        let echoed = recv(&mut client).await;
        assert_eq!(payload_of(&echoed), payload);
        // Bidirectional frames carry no stream_id or media metadata (pipecat's form).
        assert_eq!(echoed.as_object().unwrap().len(), 2);
    }
    send(&mut client, json!({"event": "stop"})).await;
    let stats = h.stopped(call).await;
    assert_eq!((stats.frames_out, stats.bytes_out), (3, 480));
    assert_eq!(h.metrics.frames_out.get(), 3);
}

#[tokio::test]
async fn greeting_plays_paced_then_marks_and_suppresses_echo() {
    let mut h = harness(MediaConfig {
        greeting: true,
        echo: true,
        ..config()
    })
    .await;
    let call = Uuid::new_v4();
    let mut client = h.connect_as(call).await;
    send(&mut client, start_frame("s", Some(call))).await;
    h.started(call).await;

    let first = recv(&mut client).await;
    let started = Instant::now();
    // Inbound audio during the greeting is not echoed: the greeting owns the output.
    let caller = vec![0x11; 160];
    send(&mut client, media_frame(1, &caller)).await;
    let mut frames = vec![payload_of(&first)];
    let end = loop {
        let frame = recv(&mut client).await;
        if frame["event"] == "mark" {
            break frame;
        }
        frames.push(payload_of(&frame));
    };
    let elapsed = started.elapsed();
    assert_eq!(
        end,
        json!({"event": "mark", "mark": {"name": "greeting-end"}})
    );
    assert_eq!(frames.len(), 75, "1.5 s in 20 ms frames");
    assert!(frames.iter().all(|f| f.len() == 160));
    assert!(!frames.contains(&caller));
    // 74 intervals of 20 ms after the first frame: paced, not dumped.
    assert!(elapsed >= Duration::from_millis(1300), "{elapsed:?}");
    assert!(frames.iter().flatten().any(|&b| b != audio::ULAW_SILENCE));

    // Greeting over: echo is back.
    let after = vec![0x22; 160];
    send(&mut client, media_frame(2, &after)).await;
    assert_eq!(payload_of(&recv(&mut client).await), after);
    send(
        &mut client,
        json!({"event": "mark", "mark": {"name": "greeting-end"}}),
    )
    .await;
    send(&mut client, json!({"event": "stop"})).await;
    let (heard, stats) = h.until_stopped(call).await;
    assert_eq!(
        (stats.frames_out, stats.marks_sent, stats.marks_acked),
        (76, 1, 1)
    );
    // The caller's audio, but not our own greeting's end mark.
    assert_eq!(
        heard,
        vec![
            SinkEvent::Audio(call, caller),
            SinkEvent::Audio(call, after)
        ]
    );
}

#[tokio::test]
async fn handle_audio_clear_and_mark() {
    let mut h = harness(config()).await;
    let call = Uuid::new_v4();
    let mut client = h.connect_as(call).await;
    send(&mut client, start_frame("s", None)).await;
    h.started(call).await;
    let handle = h.registry.handle(call).unwrap();

    // 1 s of audio in uneven chunks: paced out as whole 160-byte frames.
    for _ in 0..40 {
        handle.send_audio(vec![0x33; 200]).unwrap();
    }
    for _ in 0..3 {
        let payload = payload_of(&recv(&mut client).await);
        assert_eq!(payload, vec![0x33; 160]);
    }
    handle.clear().unwrap();
    handle.mark("after-clear").unwrap();
    // Frames already on the wire may precede the clear; nothing of the old audio follows it.
    loop {
        let frame = recv(&mut client).await;
        if frame["event"] == "clear" {
            assert_eq!(frame, json!({"event": "clear"}));
            break;
        }
        assert_eq!(frame["event"], "media");
    }
    assert_eq!(
        recv(&mut client).await,
        json!({"event": "mark", "mark": {"name": "after-clear"}})
    );
    assert_eq!(
        recv_within(&mut client, Duration::from_millis(150)).await,
        None
    );

    // Audio after the clear plays; a short tail is padded with silence to a full frame.
    handle.send_audio(vec![0x44; 200]).unwrap();
    assert_eq!(payload_of(&recv(&mut client).await), vec![0x44; 160]);
    let mut tail = vec![0x44; 40];
    tail.resize(160, audio::ULAW_SILENCE);
    assert_eq!(payload_of(&recv(&mut client).await), tail);

    send(&mut client, json!({"event": "stop"})).await;
    let stats = h.stopped(call).await;
    assert_eq!(
        (stats.clears_sent, stats.marks_sent, stats.dropped_out),
        (1, 1, 0)
    );
    assert!(stats.frames_out >= 5);
    // The stream is gone: the handle says so instead of queueing into the void.
    assert_eq!(handle.send_audio(vec![1]), Err(MediaSendError::Closed));
}

#[tokio::test]
async fn full_outbound_queue_drops_instead_of_blocking() {
    let mut h = harness(MediaConfig {
        outbound_capacity: 4,
        ..config()
    })
    .await;
    let call = Uuid::new_v4();
    let mut client = h.connect_as(call).await;
    send(&mut client, start_frame("s", None)).await;
    h.started(call).await;
    let handle = h.registry.handle(call).unwrap();
    // No await in between: the session cannot drain, so the 5th push onwards must be refused.
    let results: Vec<_> = (0..10)
        .map(|_| handle.send_audio(vec![0x55; 160]))
        .collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 4);
    assert!(results[4..].iter().all(|r| *r == Err(MediaSendError::Full)));
    for _ in 0..4 {
        assert_eq!(payload_of(&recv(&mut client).await), vec![0x55; 160]);
    }
    send(&mut client, json!({"event": "stop"})).await;
    let stats = h.stopped(call).await;
    assert_eq!((stats.frames_out, stats.dropped_out), (4, 6));
    assert_eq!(h.metrics.error_count(kind::DROPPED_OUTBOUND), 6);
}

#[tokio::test]
async fn dtmf_reaches_the_sink() {
    let mut h = harness(config()).await;
    let call = Uuid::new_v4();
    let mut client = h.connect_as(call).await;
    send(&mut client, start_frame("s", None)).await;
    h.started(call).await;
    send(
        &mut client,
        json!({"event": "dtmf", "stream_id": "s", "sequence_number": "5",
               "occurred_at": "2025-06-05T08:54:19.698408Z", "dtmf": {"digit": "7"}}),
    )
    .await;
    assert_eq!(h.event().await, SinkEvent::Dtmf(call, "7".into()));
    send(&mut client, json!({"event": "stop"})).await;
    h.stopped(call).await;
    h.assert_no_more_events();
}

#[tokio::test]
async fn client_state_mismatch_closes_with_policy() {
    let mut h = harness(config()).await;
    let call = Uuid::new_v4();
    let mut client = h.connect_as(call).await;
    send(&mut client, start_frame("s", Some(Uuid::new_v4()))).await;
    assert_eq!(u16::from(recv_close(&mut client).await.code), 1008);
    assert_eq!(h.metrics.error_count(kind::CLIENT_STATE), 1);
    assert_eq!(h.registry.live(), 0);
    h.assert_no_more_events();
}

#[tokio::test]
async fn connected_token_must_match_header() {
    let mut h = harness(config()).await;
    let call = Uuid::new_v4();
    let mut client = h.connect_as(call).await;
    send(
        &mut client,
        json!({"event": "connected", "x-telnyx-streaming-auth-token": h.tokens.token(Uuid::new_v4())}),
    )
    .await;
    assert_eq!(u16::from(recv_close(&mut client).await.code), 1008);
    h.assert_no_more_events();
}

#[tokio::test]
async fn idle_stream_is_closed_and_reported() {
    let mut h = harness(MediaConfig {
        idle_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    let call = Uuid::new_v4();
    let mut client = h.connect_as(call).await;
    send(&mut client, start_frame("s", None)).await;
    h.started(call).await;
    send(&mut client, media_frame(1, &[0xFF; 160])).await;
    let stats = h.stopped(call).await;
    assert_eq!(stats.end, StreamEnd::IdleTimeout);
    assert_eq!(stats.frames_in, 1);
    assert!(stats.duration_ms >= 250, "{}", stats.duration_ms);
    assert_eq!(u16::from(recv_close(&mut client).await.code), 1000);
    assert_eq!(h.metrics.error_count(kind::IDLE_TIMEOUT), 1);
}

#[tokio::test]
async fn socket_drop_is_reported() {
    let mut h = harness(config()).await;
    let call = Uuid::new_v4();
    let mut client = h.connect_as(call).await;
    send(&mut client, start_frame("s", None)).await;
    h.started(call).await;
    drop(client);
    let stats = h.stopped(call).await;
    assert_eq!(stats.end, StreamEnd::Closed);
    assert_eq!(h.registry.live(), 0);
}

#[tokio::test]
async fn other_codecs_are_reported_but_not_played() {
    let mut h = harness(MediaConfig {
        greeting: true,
        echo: true,
        ..config()
    })
    .await;
    let call = Uuid::new_v4();
    let mut client = h.connect_as(call).await;
    let mut start = start_frame("s", None);
    start["start"]["media_format"] =
        json!({"encoding": "L16", "sample_rate": 16000, "channels": 1});
    send(&mut client, start).await;
    let info = h.started(call).await;
    assert_eq!((info.encoding.as_str(), info.sample_rate), ("L16", 16000));
    send(&mut client, media_frame(1, &[0; 640])).await;
    h.registry
        .handle(call)
        .unwrap()
        .send_audio(vec![0xFF; 160])
        .unwrap();
    assert_eq!(
        recv_within(&mut client, Duration::from_millis(150)).await,
        None
    );
    send(&mut client, json!({"event": "stop"})).await;
    let (heard, stats) = h.until_stopped(call).await;
    assert_eq!(
        (stats.frames_in, stats.frames_out, stats.dropped_out),
        (1, 0, 1)
    );
    // Measured, but no audio we could not hand on as μ-law.
    assert_eq!(heard, vec![]);
}

#[tokio::test]
async fn pcma_streams_get_alaw() {
    let mut h = harness(config()).await;
    let call = Uuid::new_v4();
    let mut client = h.connect_as(call).await;
    let mut start = start_frame("s", None);
    start["start"]["media_format"]["encoding"] = json!("PCMA");
    send(&mut client, start).await;
    h.started(call).await;
    h.registry
        .handle(call)
        .unwrap()
        .send_audio(vec![audio::ULAW_SILENCE; 160])
        .unwrap();
    assert_eq!(
        payload_of(&recv(&mut client).await),
        vec![audio::ALAW_SILENCE; 160]
    );
    send(&mut client, json!({"event": "stop"})).await;
    h.stopped(call).await;
}

#[tokio::test]
async fn pcmu_caller_audio_reaches_the_sink_in_order() {
    let mut h = harness(config()).await;
    let call = Uuid::new_v4();
    let mut client = h.connect_as(call).await;
    send(&mut client, start_frame("s", None)).await;
    h.started(call).await;
    let payloads: Vec<Vec<u8>> = (0..6u8)
        .map(|i| {
            (0..160)
                .map(|n: u8| n.wrapping_mul(7).wrapping_add(i))
                .collect()
        })
        .collect();
    send(&mut client, media_frame(1, &payloads[0])).await;
    send(&mut client, media_frame(2, &payloads[1])).await;
    // Our own output, as Telnyx reports it with `both_tracks`: never the caller's audio.
    send(&mut client, outbound_frame(1, &[0x99; 160])).await;
    send(
        &mut client,
        json!({"event": "dtmf", "stream_id": "s", "dtmf": {"digit": "5"}}),
    )
    .await;
    // An empty payload is measured but carries no audio.
    send(&mut client, media_frame(3, &[])).await;
    for (chunk, payload) in (4..).zip(&payloads[2..]) {
        send(&mut client, media_frame(chunk, payload)).await;
    }
    send(&mut client, json!({"event": "stop"})).await;
    let (heard, stats) = h.until_stopped(call).await;
    let mut expected: Vec<_> = payloads[..2]
        .iter()
        .map(|p| SinkEvent::Audio(call, p.clone()))
        .collect();
    expected.push(SinkEvent::Dtmf(call, "5".into()));
    expected.extend(
        payloads[2..]
            .iter()
            .map(|p| SinkEvent::Audio(call, p.clone())),
    );
    assert_eq!(heard, expected);
    assert_eq!((stats.frames_in, stats.bytes_in), (7, 960));
    h.assert_no_more_events();
}

#[tokio::test]
async fn pcma_caller_audio_arrives_as_mulaw() {
    let mut h = harness(config()).await;
    let call = Uuid::new_v4();
    let mut client = h.connect_as(call).await;
    let mut start = start_frame("s", None);
    start["start"]["media_format"]["encoding"] = json!("PCMA");
    send(&mut client, start).await;
    h.started(call).await;
    let every_code: Vec<u8> = (0..=255).collect();
    send(&mut client, media_frame(1, &[audio::ALAW_SILENCE; 160])).await;
    send(&mut client, media_frame(2, &every_code)).await;
    send(&mut client, json!({"event": "stop"})).await;
    let (heard, stats) = h.until_stopped(call).await;
    let transcoded: Vec<u8> = every_code.iter().map(|&c| audio::alaw_to_ulaw(c)).collect();
    assert_eq!(
        heard,
        vec![
            SinkEvent::Audio(call, vec![audio::alaw_to_ulaw(audio::ALAW_SILENCE); 160]),
            SinkEvent::Audio(call, transcoded),
        ]
    );
    // A-law silence is not μ-law silence byte for byte: the bytes were really transcoded.
    assert_ne!(
        audio::alaw_to_ulaw(audio::ALAW_SILENCE),
        audio::ALAW_SILENCE
    );
    // The stats measure what arrived on the wire.
    assert_eq!(stats.bytes_in, 416);
}

#[tokio::test]
async fn echoed_handle_marks_reach_the_sink() {
    let mut h = harness(config()).await;
    let call = Uuid::new_v4();
    let mut client = h.connect_as(call).await;
    send(&mut client, start_frame("s", None)).await;
    h.started(call).await;
    let handle = h.registry.handle(call).unwrap();
    handle.send_audio(vec![0x33; 320]).unwrap();
    handle.mark("reply-1").unwrap();
    for _ in 0..2 {
        assert_eq!(payload_of(&recv(&mut client).await), vec![0x33; 160]);
    }
    assert_eq!(
        recv(&mut client).await,
        json!({"event": "mark", "mark": {"name": "reply-1"}})
    );
    // Sent is not played: the sink hears of it only when Telnyx echoes it.
    assert_eq!(
        recv_within(&mut client, Duration::from_millis(100)).await,
        None
    );
    h.assert_no_more_events();
    send(&mut client, mark_echo("reply-1")).await;
    assert_eq!(h.mark(call).await, "reply-1");
    send(&mut client, json!({"event": "stop"})).await;
    let (heard, stats) = h.until_stopped(call).await;
    assert_eq!(heard, vec![]);
    assert_eq!((stats.marks_sent, stats.marks_acked), (1, 1));
}

#[tokio::test]
async fn marks_flushed_by_a_clear_are_still_reported() {
    let mut h = harness(config()).await;
    let call = Uuid::new_v4();
    let mut client = h.connect_as(call).await;
    send(&mut client, start_frame("s", None)).await;
    h.started(call).await;
    let handle = h.registry.handle(call).unwrap();
    for (reply, byte) in [("reply-1", 0x33), ("reply-2", 0x44)] {
        for _ in 0..20 {
            handle.send_audio(vec![byte; 160]).unwrap();
        }
        handle.mark(reply).unwrap();
    }
    assert_eq!(payload_of(&recv(&mut client).await), vec![0x33; 160]);
    // Barge-in: the audio not played yet goes, both marks still go out, right after the clear.
    handle.clear().unwrap();
    loop {
        let frame = recv(&mut client).await;
        if frame["event"] == "clear" {
            break;
        }
        assert_eq!(frame["event"], "media");
    }
    for name in ["reply-1", "reply-2"] {
        assert_eq!(
            recv(&mut client).await,
            json!({"event": "mark", "mark": {"name": name}})
        );
    }
    // Telnyx answers a clear by echoing every pending mark at once.
    send(&mut client, mark_echo("reply-1")).await;
    send(&mut client, mark_echo("reply-2")).await;
    assert_eq!(h.mark(call).await, "reply-1");
    assert_eq!(h.mark(call).await, "reply-2");
    send(&mut client, json!({"event": "stop"})).await;
    let stats = h.stopped(call).await;
    assert_eq!(
        (stats.clears_sent, stats.marks_sent, stats.marks_acked),
        (1, 2, 2)
    );
    h.assert_no_more_events();
}

#[tokio::test]
async fn only_our_own_greeting_end_mark_is_kept_from_the_sink() {
    let mut h = harness(MediaConfig {
        greeting: true,
        ..config()
    })
    .await;
    let call = Uuid::new_v4();
    let mut client = h.connect_as(call).await;
    send(&mut client, start_frame("s", None)).await;
    h.started(call).await;
    // The handle's mark reuses the greeting's name; it queues behind the greeting.
    h.registry
        .handle(call)
        .unwrap()
        .mark(GREETING_END_MARK)
        .unwrap();
    let mut marks = 0;
    while marks < 2 {
        let frame = recv(&mut client).await;
        if frame["event"] == "mark" {
            assert_eq!(frame["mark"]["name"], GREETING_END_MARK);
            marks += 1;
        }
    }
    send(&mut client, mark_echo(GREETING_END_MARK)).await;
    send(&mut client, mark_echo(GREETING_END_MARK)).await;
    // The first echo is the greeting's (Telnyx echoes in order); the second is the handle's.
    assert_eq!(h.mark(call).await, GREETING_END_MARK);
    send(&mut client, json!({"event": "stop"})).await;
    let (heard, stats) = h.until_stopped(call).await;
    assert_eq!(heard, vec![]);
    assert_eq!((stats.marks_sent, stats.marks_acked), (2, 2));
}

#[tokio::test]
async fn nothing_is_reported_after_stopped() {
    let mut h = harness(config()).await;
    let call = Uuid::new_v4();
    let mut client = h.connect_as(call).await;
    send(&mut client, start_frame("s", None)).await;
    h.started(call).await;
    send(&mut client, media_frame(1, &[0x11; 160])).await;
    send(&mut client, json!({"event": "stop"})).await;
    // A peer that keeps talking after `stop` (frames in flight, or a confused one).
    send(&mut client, media_frame(2, &[0x22; 160])).await;
    send(&mut client, mark_echo("late")).await;
    send(
        &mut client,
        json!({"event": "dtmf", "stream_id": "s", "dtmf": {"digit": "1"}}),
    )
    .await;
    let (heard, _) = h.until_stopped(call).await;
    assert_eq!(heard, vec![SinkEvent::Audio(call, vec![0x11; 160])]);
    assert_eq!(u16::from(recv_close(&mut client).await.code), 1000);
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.assert_no_more_events();
}

#[tokio::test]
async fn unauthenticated_or_unstarted_streams_report_nothing() {
    let mut h = harness(config()).await;
    // No token: media and a mark echo first, refused without a word to the sink.
    let mut client = h.try_connect(None).await.unwrap();
    send(&mut client, media_frame(1, &[0x11; 160])).await;
    send(&mut client, mark_echo("m")).await;
    assert_eq!(u16::from(recv_close(&mut client).await.code), 1008);
    // A wrong token in `connected`, then media.
    let mut client = h.try_connect(None).await.unwrap();
    send(
        &mut client,
        json!({"event": "connected", "x-telnyx-streaming-auth-token": "forged"}),
    )
    .await;
    send(&mut client, media_frame(1, &[0x11; 160])).await;
    assert_eq!(u16::from(recv_close(&mut client).await.code), 1008);
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.assert_no_more_events();

    // Authenticated, but audio before `start` belongs to no started stream.
    let call = Uuid::new_v4();
    let mut client = h.connect_as(call).await;
    send(&mut client, media_frame(1, &[0x11; 160])).await;
    send(&mut client, mark_echo("early")).await;
    send(&mut client, start_frame("s", None)).await;
    h.started(call).await;
    send(&mut client, json!({"event": "stop"})).await;
    let (heard, stats) = h.until_stopped(call).await;
    assert_eq!(heard, vec![]);
    assert_eq!(stats.frames_in, 0);
}
