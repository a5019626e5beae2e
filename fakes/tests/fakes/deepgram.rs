//! Wire-level tests of the Deepgram live STT fake (`iace_fakes::deepgram`) on real sockets and
//! real time, with tokio-tungstenite as the client. The audio is generated here: mu-law (or
//! linear16) tone bursts for speech and low alternating noise for silence. The fake works on
//! audio time, so most tests send audio as fast as the socket takes it; the tests about wall-clock
//! behaviour (idle timeout, latency, faults) measure elapsed time. Each test starts its own
//! fake, so they run in parallel.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use iace_fakes::deepgram::{ConnectionEnd, FakeDeepgram, FakeDeepgramConfig};
use iace_fakes::telnyx::g711;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, Request};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

const TELEPHONY: &str = "model=nova-3&encoding=mulaw&sample_rate=8000";
/// Reading a message the fake should send promptly never takes this long.
const PROMPT: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// Audio

/// Samples per ms at 8 kHz.
const PER_MS: usize = 8;

/// `ms` of a 200 Hz tone at about -12 dBFS, mu-law: "speech".
fn tone(ms: usize) -> Vec<u8> {
    (0..ms * PER_MS)
        .map(|n| {
            let s = 8_000.0 * (std::f64::consts::TAU * 200.0 * n as f64 / 8_000.0).sin();
            g711::linear_to_ulaw(s as i16)
        })
        .collect()
}

/// `ms` of +-20 noise, mu-law: "silence" that is not digital zero.
fn silence(ms: usize) -> Vec<u8> {
    (0..ms * PER_MS)
        .map(|n| g711::linear_to_ulaw(if n % 2 == 0 { 20 } else { -20 }))
        .collect()
}

/// Tone or silence by turns, starting with silence: `[silence, tone, silence, ...]` in ms.
fn turns(ms: &[usize]) -> Vec<u8> {
    ms.iter()
        .enumerate()
        .flat_map(|(i, &d)| if i % 2 == 0 { silence(d) } else { tone(d) })
        .collect()
}

/// `ms` of a 200 Hz tone as linear16 little-endian at 16 kHz.
fn tone_linear16_16k(ms: usize) -> Vec<u8> {
    (0..ms * 16)
        .flat_map(|n| {
            let s = 8_000.0 * (std::f64::consts::TAU * 200.0 * n as f64 / 16_000.0).sin();
            (s as i16).to_le_bytes()
        })
        .collect()
}

fn silence_linear16_16k(ms: usize) -> Vec<u8> {
    (0..ms * 16)
        .flat_map(|n| (if n % 2 == 0 { 20i16 } else { -20 }).to_le_bytes())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Client

async fn start(config: FakeDeepgramConfig) -> FakeDeepgram {
    FakeDeepgram::start(config).await.expect("fake starts")
}

fn request(url: &str, authorization: Option<&str>) -> Request<()> {
    let mut req = url.into_client_request().expect("valid url");
    if let Some(a) = authorization {
        req.headers_mut()
            .insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
    }
    req
}

/// Connects with `Authorization: Token <key>`.
async fn connect(fake: &FakeDeepgram, query: &str) -> Client {
    let auth = format!("Token {}", fake.api_key());
    let (ws, response) =
        tokio_tungstenite::connect_async(request(&fake.listen_url(query), Some(&auth)))
            .await
            .expect("handshake accepted");
    assert_eq!(response.status(), 101);
    ws
}

/// The HTTP refusal of a handshake: status, `dg-error`, `dg-request-id`, body.
async fn refused(req: Request<()>) -> (u16, String, String, Value) {
    match tokio_tungstenite::connect_async(req).await {
        Err(WsError::Http(resp)) => {
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            };
            let body = resp
                .body()
                .as_deref()
                .map(|b| serde_json::from_slice(b).expect("JSON error body"))
                .unwrap_or(Value::Null);
            (
                resp.status().as_u16(),
                header("dg-error"),
                header("dg-request-id"),
                body,
            )
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the handshake succeeded"),
    }
}

/// Sends `audio` in 20 ms mu-law frames (160 bytes), unpaced.
async fn send_audio(ws: &mut Client, audio: &[u8]) {
    send_frames(ws, audio, 160).await;
}

async fn send_frames(ws: &mut Client, audio: &[u8], frame: usize) {
    for chunk in audio.chunks(frame) {
        ws.send(Message::binary(chunk.to_vec()))
            .await
            .expect("send audio");
    }
}

async fn send_control(ws: &mut Client, kind: &str) {
    ws.send(Message::text(json!({ "type": kind }).to_string()))
        .await
        .expect("send control");
}

/// What the next frame from the server was. The payloads are only read through `Debug`, in
/// panic messages, which the dead-code lint does not count.
#[derive(Debug)]
enum Got {
    Json(Value),
    Close(Option<(u16, String)>),
    /// Ping, pong or binary: the fake sends none of these on its own.
    OtherFrame(#[allow(dead_code)] String),
    /// The stream failed (e.g. the TCP connection ended without a close frame).
    Error(#[allow(dead_code)] String),
    Ended,
    Timeout,
}

async fn next(ws: &mut Client, within: Duration) -> Got {
    match tokio::time::timeout(within, ws.next()).await {
        Err(_) => Got::Timeout,
        Ok(None) => Got::Ended,
        Ok(Some(Err(e))) => Got::Error(e.to_string()),
        Ok(Some(Ok(Message::Text(t)))) => Got::Json(serde_json::from_str(&t).expect("JSON")),
        Ok(Some(Ok(Message::Close(f)))) => {
            Got::Close(f.map(|f| (u16::from(f.code), f.reason.to_string())))
        }
        Ok(Some(Ok(other))) => Got::OtherFrame(format!("{other:?}")),
    }
}

/// Reads JSON messages until `done` holds for all read so far; panics on anything else or if
/// it takes longer than `within`.
async fn read_until(
    ws: &mut Client,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while !done(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        match next(ws, left).await {
            Got::Json(v) => got.push(v),
            other => panic!("expected more messages, got {other:?} after {got:#?}"),
        }
    }
    got
}

fn finals_count(msgs: &[Value]) -> usize {
    msgs.iter().filter(|m| is_final(m)).count()
}

fn is_final(m: &Value) -> bool {
    m["type"] == "Results" && m["is_final"] == true
}

fn of_type<'a>(msgs: &'a [Value], ty: &str) -> Vec<&'a Value> {
    msgs.iter().filter(|m| m["type"] == ty).collect()
}

fn transcript(m: &Value) -> &str {
    m["channel"]["alternatives"][0]["transcript"]
        .as_str()
        .expect("transcript")
}

fn words(m: &Value) -> &Vec<Value> {
    m["channel"]["alternatives"][0]["words"]
        .as_array()
        .expect("words")
}

fn f(v: &Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("expected a number, got {v}"))
}

fn close_to(actual: f64, expected: f64, tolerance: f64) -> bool {
    (actual - expected).abs() <= tolerance
}

// ---------------------------------------------------------------------------------------------
// Handshake

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_key_is_refused_with_401_and_dg_error() {
    let fake = start(FakeDeepgramConfig::default()).await;
    let url = fake.listen_url(TELEPHONY);

    let (status, dg_error, request_id, body) =
        refused(request(&url, Some("Token not-the-key"))).await;
    assert_eq!(status, 401);
    assert_eq!(dg_error, "Invalid credentials.");
    assert_eq!(
        request_id.len(),
        36,
        "dg-request-id is a UUID: {request_id}"
    );
    assert_eq!(body["err_code"], "INVALID_AUTH");
    assert_eq!(body["request_id"], request_id.as_str());

    let (status, dg_error, _, _) = refused(request(&url, None)).await;
    assert_eq!(status, 401);
    assert!(dg_error.contains("Missing credentials"), "{dg_error}");

    // A good key under the wrong scheme is still refused.
    let (status, _, _, _) =
        refused(request(&url, Some(&format!("Basic {}", fake.api_key())))).await;
    assert_eq!(status, 401);

    let conns = fake.connections();
    assert_eq!(conns.len(), 3);
    assert_eq!(conns[0].status, 401);
    assert_eq!(conns[0].authorization.as_deref(), Some("Token not-the-key"));
    assert_eq!(conns[0].request_id, request_id);
    assert_eq!(conns[1].authorization, None);
    assert!(conns.iter().all(|c| !c.open && c.end.is_none()));
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_bearer_and_subprotocol_credentials_are_accepted() {
    let fake = start(FakeDeepgramConfig::default()).await;
    let url = fake.listen_url(TELEPHONY);
    for auth in [
        format!("Token {}", fake.api_key()),
        format!("Bearer {}", fake.api_key()),
        format!("token {}", fake.api_key()),
    ] {
        let (mut ws, resp) = tokio_tungstenite::connect_async(request(&url, Some(&auth)))
            .await
            .unwrap_or_else(|e| panic!("{auth}: {e}"));
        let request_id = resp.headers()["dg-request-id"].to_str().unwrap().to_owned();
        ws.close(None).await.unwrap();
        let c = fake
            .connections()
            .into_iter()
            .find(|c| c.request_id == request_id)
            .expect("recorded under the dg-request-id sent");
        assert_eq!(c.status, 101);
        assert_eq!(c.authorization.as_deref(), Some(auth.as_str()));
    }

    // Browser form: Sec-WebSocket-Protocol: token, <key>; the server must pick `token`.
    let mut req = request(&url, None);
    req.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_str(&format!("token, {}", fake.api_key())).unwrap(),
    );
    let (_ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("subprotocol auth accepted");
    assert_eq!(resp.headers()[header::SEC_WEBSOCKET_PROTOCOL], "token");

    assert!(
        fake.wait_for(PROMPT, |f| f.connections()[..3]
            .iter()
            .all(|c| matches!(c.end, Some(ConnectionEnd::ClientClosed { .. }))))
            .await,
        "{:#?}",
        fake.connections()
    );
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_invalid_params_are_refused_with_400_naming_them() {
    let fake = start(FakeDeepgramConfig::default()).await;
    let auth = format!("Token {}", fake.api_key());
    for (query, mentions) in [
        ("encoding=mulaw&sample_rate=8000", "model"),
        ("model=nova-3&encoding=mulaw", "sample_rate"),
        ("model=nova-3&encoding=mp4&sample_rate=8000", "encoding"),
        (
            "model=nova-3&encoding=mulaw&sample_rate=8000&interim_results=maybe",
            "interim_results",
        ),
        (
            "model=nova-3&encoding=mulaw&sample_rate=8000&endpointing=soon",
            "endpointing",
        ),
        (
            "model=nova-3&encoding=mulaw&sample_rate=8000&interim_results=true&utterance_end_ms=300",
            "utterance_end_ms",
        ),
        ("model=nova-3&encoding=mulaw&sample_rate=eight", "sample_rate"),
    ] {
        let (status, dg_error, request_id, body) =
            refused(request(&fake.listen_url(query), Some(&auth))).await;
        assert_eq!(status, 400, "{query}");
        assert!(dg_error.contains(mentions), "{query}: {dg_error}");
        assert!(!request_id.is_empty());
        assert_eq!(body["err_code"], "Bad Request");
        assert_eq!(body["err_msg"], dg_error.as_str());
    }
    // A valid encoding the fake cannot decode is refused loudly rather than faked.
    let (status, dg_error, _, _) = refused(request(
        &fake.listen_url("model=nova-3&encoding=opus&sample_rate=48000"),
        Some(&auth),
    ))
    .await;
    assert_eq!(status, 400);
    assert!(dg_error.starts_with(iace_fakes::deepgram::UNSUPPORTED_ERROR_PREFIX));

    // Credentials are checked before parameters.
    let (status, _, _, _) = refused(request(&fake.listen_url("model="), Some("Token nope"))).await;
    assert_eq!(status, 401);
    // A wrong path is recorded too, so a misconfigured client shows up in the inspection.
    let (status, _, _, _) = refused(request(
        &format!("{}/v1/speak?{TELEPHONY}", fake.url()),
        Some(&auth),
    ))
    .await;
    assert_eq!(status, 404);
    assert_eq!(fake.connections().last().unwrap().path, "/v1/speak");
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_next_refuses_exactly_one_handshake() {
    let fake = start(FakeDeepgramConfig::default()).await;
    fake.refuse_next(429);
    let auth = format!("Token {}", fake.api_key());
    let (status, dg_error, _, body) =
        refused(request(&fake.listen_url(TELEPHONY), Some(&auth))).await;
    assert_eq!(status, 429);
    assert!(!dg_error.is_empty());
    assert_eq!(body["err_code"], "TOO_MANY_REQUESTS");
    let _ws = connect(&fake, TELEPHONY).await;
    let statuses: Vec<u16> = fake.connections().iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![429, 101]);
    fake.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Transcripts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_line_streams_growing_interims_then_a_speech_final() {
    let fake = start(FakeDeepgramConfig::default()).await;
    let line = "Hello, I'd like to book a table for two.";
    fake.set_script([line, "Thanks!"]);
    let mut ws = connect(
        &fake,
        &format!("{TELEPHONY}&interim_results=true&endpointing=300&punctuate=true"),
    )
    .await;
    // Speech 0.2-1.4 s, 2.0-2.5 s and 3.1-3.5 s.
    send_audio(&mut ws, &turns(&[200, 1200, 600, 500, 600, 400, 600])).await;
    let msgs = read_until(&mut ws, PROMPT, |m| finals_count(m) == 3).await;
    let request_id = fake.connections()[0].request_id.clone();

    assert!(of_type(&msgs, "SpeechStarted").is_empty(), "no vad_events");
    let first_final = msgs.iter().position(is_final).unwrap();
    let interims = &msgs[..first_final];
    assert!(interims.len() >= 3, "{interims:#?}");
    let line_words: Vec<&str> = line.split(' ').collect();
    let mut shown = 0;
    for m in interims {
        assert_eq!(m["type"], "Results");
        assert_eq!(m["is_final"], false);
        assert_eq!(m["speech_final"], false);
        assert_eq!(f(&m["start"]), 0.0);
        let t: Vec<&str> = transcript(m).split(' ').collect();
        assert!(t.len() >= shown, "interims only grow: {interims:#?}");
        assert_eq!(
            t[..],
            line_words[..t.len()],
            "interims are prefixes of the line"
        );
        shown = t.len();
        // An interim covers the audio up to now, and its words lie inside it.
        let end = f(&m["start"]) + f(&m["duration"]);
        let ws_ = words(m);
        assert_eq!(ws_.len(), t.len());
        assert!(f(&ws_.last().unwrap()["end"]) <= end + 1e-9);
    }
    assert!(
        transcript(&interims[0]).split(' ').count() < line_words.len(),
        "the first interim is a strict prefix"
    );

    let fin = &msgs[first_final];
    assert_eq!(transcript(fin), line);
    assert_eq!(fin["speech_final"], true);
    assert_eq!(fin["from_finalize"], false);
    assert_eq!(fin["channel_index"], json!([0, 1]));
    assert_eq!(fin["metadata"]["request_id"], request_id.as_str());
    assert_eq!(f(&fin["start"]), 0.0);
    // Endpointed after 300 ms of silence following the speech that ended at 1.4 s.
    assert!(close_to(f(&fin["duration"]), 1.7, 0.005), "{fin}");
    let w = words(fin);
    assert_eq!(w.len(), 9);
    assert_eq!(w[0]["word"], "hello");
    assert_eq!(w[0]["punctuated_word"], "Hello,");
    assert_eq!(w[1]["word"], "i'd");
    assert_eq!(w[8]["punctuated_word"], "two.");
    assert!(close_to(f(&w[0]["start"]), 0.2, 0.005), "{w:?}");
    assert!(close_to(f(&w[8]["end"]), 1.4, 0.005), "{w:?}");
    let mut prev_end = 0.0;
    for word in w {
        let (s, e) = (f(&word["start"]), f(&word["end"]));
        assert!(s >= prev_end - 1e-9 && e > s, "words in order: {w:?}");
        assert!(f(&word["confidence"]) > 0.5);
        prev_end = e;
    }

    let finals: Vec<&Value> = msgs.iter().filter(|m| is_final(m)).collect();
    assert_eq!(transcript(finals[1]), "Thanks!");
    assert_eq!(words(finals[1]).len(), 1);
    // Finals tile the audio.
    assert!(close_to(f(&finals[1]["start"]), 1.7, 1e-9));
    assert!(close_to(
        f(&finals[2]["start"]),
        f(&finals[1]["start"]) + f(&finals[1]["duration"]),
        0.0015
    ));
    // The script is exhausted: speech now gives an empty transcript, as noise does.
    assert_eq!(transcript(finals[2]), "");
    assert!(words(finals[2]).is_empty());
    assert_eq!(finals[2]["speech_final"], true);

    // The last final came at 3.8 s of audio; the trailing silence may still be on the way.
    let deadline = Instant::now() + PROMPT;
    while fake.connections()[0].audio_bytes < 4_100 * 8 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rec = &fake.connections()[0];
    assert_eq!(rec.final_transcripts(), vec![line, "Thanks!", ""]);
    assert_eq!(rec.audio_bytes, 4_100 * 8);
    assert!(close_to(rec.audio_seconds, 4.1, 1e-9));
    assert_eq!(rec.param("endpointing"), Some("300"));
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vad_events_send_speech_started_at_the_audio_timestamp() {
    let fake = start(FakeDeepgramConfig {
        script: vec!["first".into(), "second".into()],
        ..FakeDeepgramConfig::default()
    })
    .await;
    let mut ws = connect(&fake, &format!("{TELEPHONY}&vad_events=true")).await;
    send_audio(&mut ws, &turns(&[500, 400, 400, 400, 400])).await;
    let msgs = read_until(&mut ws, PROMPT, |m| finals_count(m) == 2).await;
    let kinds: Vec<&str> = msgs.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        vec!["SpeechStarted", "Results", "SpeechStarted", "Results"]
    );
    assert_eq!(msgs[0]["channel"], json!([0]));
    assert!(
        close_to(f(&msgs[0]["timestamp"]), 0.5, 0.005),
        "{:?}",
        msgs[0]
    );
    assert!(
        close_to(f(&msgs[2]["timestamp"]), 1.3, 0.005),
        "{:?}",
        msgs[2]
    );
    assert_eq!(transcript(&msgs[1]), "first");
    assert_eq!(transcript(&msgs[3]), "second");
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utterance_end_comes_only_after_a_long_enough_gap_after_the_last_word() {
    let fake = start(FakeDeepgramConfig {
        script: vec!["good morning".into(), "i need help".into()],
        ..FakeDeepgramConfig::default()
    })
    .await;
    let mut ws = connect(
        &fake,
        &format!("{TELEPHONY}&interim_results=true&utterance_end_ms=1000&endpointing=300"),
    )
    .await;
    // Speech 0-0.8 s, a 0.6 s gap (too short), speech 1.4-2.0 s, then 1.5 s of silence.
    let audio = [tone(800), silence(600), tone(600), silence(1500)].concat();
    send_audio(&mut ws, &audio).await;
    send_control(&mut ws, "CloseStream").await;
    let msgs = read_until(&mut ws, PROMPT, |m| {
        m.last().is_some_and(|l| l["type"] == "Metadata")
    })
    .await;
    let ends: Vec<usize> = (0..msgs.len())
        .filter(|&i| msgs[i]["type"] == "UtteranceEnd")
        .collect();
    assert_eq!(ends.len(), 1, "{msgs:#?}");
    let ue = &msgs[ends[0]];
    assert_eq!(ue["channel"], json!([0, 1]));
    assert!(close_to(f(&ue["last_word_end"]), 2.0, 0.005), "{ue}");
    let finals: Vec<usize> = (0..msgs.len()).filter(|&i| is_final(&msgs[i])).collect();
    assert_eq!(finals.len(), 2);
    assert!(ends[0] > finals[1], "UtteranceEnd follows the last final");
    let last_word = words(&msgs[finals[1]]).last().unwrap().clone();
    assert_eq!(f(&last_word["end"]), f(&ue["last_word_end"]));
    assert!(matches!(
        next(&mut ws, PROMPT).await,
        Got::Close(Some((1000, _)))
    ));
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linear16_audio_and_tag_scripts_that_continue_across_reconnects() {
    let fake = start(FakeDeepgramConfig {
        script: vec!["default line".into()],
        ..FakeDeepgramConfig::default()
    })
    .await;
    fake.set_tag_script("call-7", ["one", "two"]);
    let query = "model=nova-2&encoding=linear16&sample_rate=16000&tag=call-7&extra=call:7";
    let audio = [
        silence_linear16_16k(100),
        tone_linear16_16k(300),
        silence_linear16_16k(300),
    ]
    .concat();
    for expected in ["one", "two"] {
        let mut ws = connect(&fake, query).await;
        // Odd-sized frames: samples split across frames must still decode.
        send_frames(&mut ws, &audio, 333).await;
        let msgs = read_until(&mut ws, PROMPT, |m| finals_count(m) == 1).await;
        let fin = msgs.iter().find(|m| is_final(m)).unwrap();
        assert_eq!(transcript(fin), expected);
        assert_eq!(fin["metadata"]["extra"], json!({"call": "7"}));
        assert_eq!(fin["metadata"]["model_info"]["arch"], "nova-2");
        assert!(close_to(f(&words(fin)[0]["start"]), 0.1, 0.005));
        ws.close(None).await.unwrap();
    }
    assert!(fake.tag_script_left("call-7").is_empty());
    // Without the tag: the fake-wide script, from its first line.
    let mut ws = connect(&fake, "model=nova-2&encoding=linear16&sample_rate=16000").await;
    send_frames(&mut ws, &audio, 640).await;
    let msgs = read_until(&mut ws, PROMPT, |m| finals_count(m) == 1).await;
    assert_eq!(
        transcript(msgs.iter().find(|m| is_final(m)).unwrap()),
        "default line"
    );
    fake.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Control messages

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalize_flushes_the_open_utterance_with_from_finalize() {
    let fake = start(FakeDeepgramConfig {
        script: vec!["book it please".into()],
        ..FakeDeepgramConfig::default()
    })
    .await;
    let mut ws = connect(&fake, TELEPHONY).await;
    // Speech with no silence after it: no endpoint can be seen yet.
    send_audio(&mut ws, &tone(600)).await;
    assert!(matches!(
        next(&mut ws, Duration::from_millis(400)).await,
        Got::Timeout
    ));
    send_control(&mut ws, "Finalize").await;
    let msgs = read_until(&mut ws, PROMPT, |m| finals_count(m) == 1).await;
    let fin = &msgs[0];
    assert_eq!(transcript(fin), "book it please");
    assert_eq!(fin["from_finalize"], true);
    assert_eq!(fin["speech_final"], false);
    assert!(close_to(f(&fin["duration"]), 0.6, 1e-9));
    assert!(close_to(f(&words(fin)[2]["end"]), 0.6, 1e-9));
    assert_eq!(fake.connections()[0].finalizes, 1);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_stream_flushes_then_sends_metadata_and_closes_1000() {
    let fake = start(FakeDeepgramConfig {
        script: vec!["that is all".into()],
        ..FakeDeepgramConfig::default()
    })
    .await;
    let mut ws = connect(&fake, TELEPHONY).await;
    send_audio(&mut ws, &[silence(100), tone(600)].concat()).await;
    send_control(&mut ws, "CloseStream").await;
    let msgs = read_until(&mut ws, PROMPT, |m| m.len() == 2).await;
    assert!(is_final(&msgs[0]), "{msgs:#?}");
    assert_eq!(transcript(&msgs[0]), "that is all");
    assert_eq!(msgs[0]["from_finalize"], false);
    let meta = &msgs[1];
    assert_eq!(meta["type"], "Metadata");
    let rec = fake.connections()[0].clone();
    assert_eq!(meta["request_id"], rec.request_id.as_str());
    assert!(close_to(f(&meta["duration"]), 0.7, 1e-9));
    assert_eq!(meta["channels"], 1);
    assert_eq!(meta["transaction_key"], "deprecated");
    let sha = meta["sha256"].as_str().unwrap();
    assert!(sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(chrono::DateTime::parse_from_rfc3339(meta["created"].as_str().unwrap()).is_ok());
    let uuid = meta["models"][0].as_str().unwrap();
    assert_eq!(meta["model_info"][uuid]["arch"], "nova-3");
    assert_eq!(msgs[0]["metadata"]["model_uuid"], uuid);

    match next(&mut ws, PROMPT).await {
        Got::Close(Some((1000, _))) => {}
        other => panic!("expected close 1000, got {other:?}"),
    }
    assert!(
        fake.wait_for(PROMPT, |f| f.connections()[0].end
            == Some(ConnectionEnd::ServerClosed {
                code: 1000,
                reason: String::new()
            }))
        .await,
        "{:?}",
        fake.connections()[0].end
    );
    let rec = &fake.connections()[0];
    assert_eq!(rec.close_streams, 1);
    assert!(!rec.open);
    assert_eq!(rec.sent.len(), 2);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_holds_an_idle_socket_open_past_the_idle_timeout() {
    let fake = start(FakeDeepgramConfig {
        idle_timeout: Duration::from_millis(600),
        ..FakeDeepgramConfig::default()
    })
    .await;
    let mut ws = connect(&fake, TELEPHONY).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1_600) {
        send_control(&mut ws, "KeepAlive").await;
        match next(&mut ws, Duration::from_millis(200)).await {
            Got::Timeout => {}
            other => panic!("KeepAlive gets no reply and keeps the socket: {other:?}"),
        }
    }
    // Text that is not a known control message is ignored, and does not keep the socket alive.
    ws.send(Message::text(r#"{"type":"Bogus"}"#)).await.unwrap();
    ws.send(Message::text("not json")).await.unwrap();
    assert!(matches!(
        next(&mut ws, Duration::from_millis(200)).await,
        Got::Timeout
    ));
    assert!(fake.connections()[0].open);
    assert!(fake.connections()[0].keepalives >= 7);
    assert_eq!(fake.connections()[0].unknown_text, 2);
    send_control(&mut ws, "CloseStream").await;
    let msgs = read_until(&mut ws, PROMPT, |m| !m.is_empty()).await;
    assert_eq!(msgs[0]["type"], "Metadata");
    assert!(matches!(
        next(&mut ws, PROMPT).await,
        Got::Close(Some((1000, _)))
    ));
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_closed_with_1011_net_0001_after_the_idle_timeout() {
    let fake = start(FakeDeepgramConfig {
        idle_timeout: Duration::from_millis(600),
        ..FakeDeepgramConfig::default()
    })
    .await;
    let mut ws = connect(&fake, TELEPHONY).await;
    send_audio(&mut ws, &silence(200)).await;
    // Finalize is not a KeepAlive: it must not reset the timer.
    send_control(&mut ws, "Finalize").await;
    let sent_last_audio = Instant::now();
    let got = loop {
        match next(&mut ws, PROMPT).await {
            Got::Json(m) if m["type"] == "Results" => continue,
            other => break other,
        }
    };
    let waited = sent_last_audio.elapsed();
    match got {
        Got::Close(Some((1011, reason))) => assert_eq!(reason, "NET-0001"),
        other => panic!("expected close 1011 NET-0001, got {other:?}"),
    }
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_millis(2_000),
        "{waited:?}"
    );
    assert!(
        fake.wait_for(PROMPT, |f| matches!(
            &f.connections()[0].end,
            Some(ConnectionEnd::ServerClosed { code: 1011, reason }) if reason == "NET-0001"
        ))
        .await
    );
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_binary_frame_closes_with_1008_data_0000() {
    let fake = start(FakeDeepgramConfig::default()).await;
    let mut ws = connect(&fake, TELEPHONY).await;
    send_audio(&mut ws, &silence(100)).await;
    ws.send(Message::binary(Vec::new())).await.unwrap();
    match next(&mut ws, PROMPT).await {
        Got::Close(Some((1008, reason))) => assert_eq!(reason, "DATA-0000"),
        other => panic!("expected close 1008 DATA-0000, got {other:?}"),
    }
    assert!(
        fake.wait_for(PROMPT, |f| f.connections()[0].end
            == Some(ConnectionEnd::ServerClosed {
                code: 1008,
                reason: "DATA-0000".into()
            }))
        .await
    );
    assert_eq!(fake.connections()[0].audio_frames, 6);
    assert_eq!(fake.connections()[0].audio_bytes, 800);
    fake.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Faults

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_delays_results_by_the_configured_time() {
    let fake = start(FakeDeepgramConfig::default()).await;
    let audio = turns(&[0, 300, 400]);

    let mut ws = connect(&fake, TELEPHONY).await;
    let sent = Instant::now();
    send_audio(&mut ws, &audio).await;
    read_until(&mut ws, PROMPT, |m| finals_count(m) == 1).await;
    let prompt = sent.elapsed();
    assert!(prompt < Duration::from_millis(500), "{prompt:?}");

    fake.set_latency(Duration::from_millis(800));
    let mut ws = connect(&fake, TELEPHONY).await;
    let sent = Instant::now();
    send_audio(&mut ws, &audio).await;
    read_until(&mut ws, PROMPT, |m| finals_count(m) == 1).await;
    let delayed = sent.elapsed();
    assert!(delayed >= Duration::from_millis(800), "{delayed:?}");
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connection_ends_without_a_close_frame() {
    let fake = start(FakeDeepgramConfig {
        script: vec!["before the drop".into()],
        ..FakeDeepgramConfig::default()
    })
    .await;
    fake.drop_next_connection_after(Duration::from_millis(500));
    let mut ws = connect(&fake, TELEPHONY).await;
    let started = Instant::now();
    // The first utterance gets through before the drop.
    send_audio(&mut ws, &turns(&[0, 200, 300])).await;
    read_until(&mut ws, PROMPT, |m| finals_count(m) == 1).await;
    // Keep streaming, paced, until the connection dies under us.
    let chunk = silence(20);
    let how = loop {
        if started.elapsed() > Duration::from_secs(3) {
            panic!("the connection was not dropped");
        }
        if let Err(e) = ws.send(Message::binary(chunk.clone())).await {
            break format!("send failed: {e}");
        }
        match next(&mut ws, Duration::from_millis(20)).await {
            Got::Timeout => {}
            Got::Close(frame) => panic!("a dropped connection sends no close frame: {frame:?}"),
            Got::Json(m) => panic!("unexpected message {m}"),
            other => break format!("{other:?}"),
        }
    };
    let at = started.elapsed();
    assert!(
        at >= Duration::from_millis(450),
        "dropped too early: {at:?} ({how})"
    );
    assert!(
        fake.wait_for(PROMPT, |f| f.connections()[0].end
            == Some(ConnectionEnd::Dropped))
            .await
    );

    // The fault was for one connection only.
    let mut ws = connect(&fake, TELEPHONY).await;
    send_audio(&mut ws, &turns(&[0, 200, 300])).await;
    send_control(&mut ws, "CloseStream").await;
    read_until(&mut ws, PROMPT, |m| {
        m.last().is_some_and(|l| l["type"] == "Metadata")
    })
    .await;
    assert!(matches!(
        next(&mut ws, PROMPT).await,
        Got::Close(Some((1000, _)))
    ));
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connection_goes_silent_but_stays_open() {
    let fake = start(FakeDeepgramConfig {
        idle_timeout: Duration::from_millis(500),
        script: vec!["are you there".into()],
        ..FakeDeepgramConfig::default()
    })
    .await;
    fake.stall_next_connection();
    let audio = turns(&[0, 400, 400]);

    let mut ws = connect(&fake, TELEPHONY).await;
    send_audio(&mut ws, &audio).await;
    ws.send(Message::Ping(b"alive?".to_vec().into()))
        .await
        .unwrap();
    // Results would be due at once and NET-0001 after 0.5 s: a stalled server sends neither,
    // nor a pong, nor a close, and the socket does not end.
    match next(&mut ws, Duration::from_millis(1_500)).await {
        Got::Timeout => {}
        other => panic!("a stalled connection sends nothing, got {other:?}"),
    }
    let rec = &fake.connections()[0];
    assert!(rec.stalled && rec.open && rec.end.is_none(), "{rec:?}");
    assert!(rec.sent.is_empty());
    // The client can still write (its frames sit in socket buffers).
    ws.send(Message::binary(silence(20))).await.unwrap();

    // The same audio on a healthy connection is answered: the stall is what silenced it.
    let mut ok = connect(&fake, TELEPHONY).await;
    send_audio(&mut ok, &audio).await;
    let msgs = read_until(&mut ok, PROMPT, |m| finals_count(m) == 1).await;
    assert_eq!(
        transcript(msgs.iter().find(|m| is_final(m)).unwrap()),
        "are you there"
    );
    assert!(!fake.connections()[1].stalled);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_after_serves_first_then_goes_silent() {
    let fake = start(FakeDeepgramConfig {
        script: vec!["first".into(), "second".into()],
        ..FakeDeepgramConfig::default()
    })
    .await;
    fake.stall_next_connection_after(Duration::from_millis(400));
    let mut ws = connect(&fake, TELEPHONY).await;
    send_audio(&mut ws, &turns(&[0, 200, 300])).await;
    let msgs = read_until(&mut ws, PROMPT, |m| finals_count(m) == 1).await;
    assert_eq!(transcript(&msgs[0]), "first");
    assert!(fake.wait_for(PROMPT, |f| f.connections()[0].stalled).await);
    send_audio(&mut ws, &turns(&[0, 200, 300])).await;
    assert!(matches!(
        next(&mut ws, Duration::from_millis(800)).await,
        Got::Timeout
    ));
    assert_eq!(fake.connections()[0].final_transcripts(), vec!["first"]);
    fake.shutdown().await;
}
