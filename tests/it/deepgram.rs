//! The Deepgram live speech-to-text client against the wire-level fake Deepgram
//! (`iace_fakes::deepgram`): scripted lines, the handshake's query and auth, keepalives, drops,
//! stalls, refusals, closing and the breaker. Real sockets and real time; no database needed.
//!
//! The audio is synthesised here: "speech" is a steady 140 Hz voiced tone with two harmonics
//! (about -12 dBFS), "silence" is low noise (about -60 dBFS), both μ-law. The fake works on
//! audio time, so most tests send audio as fast as the stream takes it; the tests of wall-clock
//! behaviour (keepalives, drops, stalls) measure elapsed time. Each test starts its own fake.

use crate::common;

use std::time::Duration;

use common::vendor::breakers_for;

use iace::clients::deepgram::{DeepgramConfig, DeepgramMetrics, DeepgramStt};
use iace::clients::retry::RetryPolicy;
use iace_actors::breaker::BreakerConfig;
use iace_actors::ports::voice::{
    SpeechToText, SttEvent, SttInput, SttOptions, SttStream, VoiceError,
};
use iace_fakes::deepgram::{ConnectionEnd, FakeDeepgram, FakeDeepgramConfig};
use iace_fakes::telnyx::g711;
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Audio

/// Samples (bytes of μ-law) per ms.
const PER_MS: usize = 8;

/// `ms` of voiced tone: 140 Hz with its 2nd and 3rd harmonics, peak ~9000.
fn speech(ms: usize) -> Vec<u8> {
    (0..ms * PER_MS)
        .map(|n| {
            let p = std::f64::consts::TAU * 140.0 * n as f64 / 8_000.0;
            let voiced = p.sin() + 0.5 * (2.0 * p).sin() + 0.3 * (3.0 * p).sin();
            g711::linear_to_ulaw((9_000.0 * voiced / 1.3) as i16)
        })
        .collect()
}

/// `ms` of +-40 hiss: silence that is not digital zero.
fn silence(ms: usize) -> Vec<u8> {
    let mut x: u32 = 0x9E37_79B9;
    (0..ms * PER_MS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let s = (f64::from(x) / f64::from(u32::MAX) * 2.0 - 1.0) * 40.0;
            g711::linear_to_ulaw(s as i16)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Set-up

async fn fake(config: FakeDeepgramConfig) -> FakeDeepgram {
    FakeDeepgram::start(config).await.expect("fake starts")
}

/// Test timings: fast retries, a short stall timeout.
fn config(fake: &FakeDeepgram) -> DeepgramConfig {
    DeepgramConfig {
        keepalive_interval: Duration::from_secs(1),
        stall_timeout: Duration::from_millis(900),
        connect_timeout: Duration::from_secs(2),
        retry: RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(50),
            cap: Duration::from_millis(200),
            attempt_timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(2),
        },
        max_reconnects: 3,
        ..DeepgramConfig::new(fake.url(), fake.api_key())
    }
}

fn options(call_id: Uuid) -> SttOptions {
    SttOptions {
        call_id,
        language: "en-US".to_owned(),
        endpointing_ms: 300,
        utterance_end_ms: 1000,
        keyterms: vec!["IACE".to_owned(), "Acme Corp".to_owned()],
    }
}

/// A stream on `fake` whose call hears `lines`.
async fn open(fake: &FakeDeepgram, config: DeepgramConfig, lines: &[&str]) -> (Uuid, SttStream) {
    let call = Uuid::new_v4();
    fake.set_tag_script(&call.to_string(), lines.iter().copied());
    let stt = DeepgramStt::new(config, None).expect("valid config");
    let stream = stt.open(options(call)).await.expect("stream opens");
    (call, stream)
}

/// Sends `audio` in 20 ms frames, unpaced.
async fn feed(input: &mpsc::Sender<SttInput>, audio: &[u8]) {
    for frame in audio.chunks(20 * PER_MS) {
        input
            .send(SttInput::Audio(frame.to_vec()))
            .await
            .expect("stream takes audio");
    }
}

/// Reads events into `got` until `done` holds; panics if the channel closes or `within` passes.
async fn read_until(
    events: &mut mpsc::Receiver<SttEvent>,
    got: &mut Vec<SttEvent>,
    within: Duration,
    done: impl Fn(&[SttEvent]) -> bool,
) {
    let deadline = Instant::now() + within;
    while !done(got) {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) => got.push(e),
            Ok(None) => panic!("the event channel closed; got {got:#?}"),
            Err(_) => panic!("timed out; got {got:#?}"),
        }
    }
}

/// Reads every event until the channel closes (panics after `within`).
async fn read_to_end(events: &mut mpsc::Receiver<SttEvent>, within: Duration) -> Vec<SttEvent> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) => got.push(e),
            Ok(None) => return got,
            Err(_) => panic!("the event channel did not close; got {got:#?}"),
        }
    }
}

/// `(text, speech_final, start_ms, end_ms)` of the final transcripts.
fn finals(events: &[SttEvent]) -> Vec<(String, bool, u64, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            SttEvent::Transcript {
                text,
                is_final: true,
                speech_final,
                start_ms,
                end_ms,
                ..
            } => Some((text.clone(), *speech_final, *start_ms, *end_ms)),
            _ => None,
        })
        .collect()
}

fn has_final(events: &[SttEvent], line: &str) -> bool {
    finals(events).iter().any(|f| f.0 == line)
}

fn count(events: &[SttEvent], f: impl Fn(&SttEvent) -> bool) -> usize {
    events.iter().filter(|e| f(e)).count()
}

fn speech_starts(events: &[SttEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            SttEvent::SpeechStarted { at_ms } => Some(*at_ms),
            _ => None,
        })
        .collect()
}

fn utterance_ends(events: &[SttEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            SttEvent::UtteranceEnd { last_word_end_ms } => Some(*last_word_end_ms),
            _ => None,
        })
        .collect()
}

fn is_reconnected(e: &SttEvent) -> bool {
    matches!(e, SttEvent::Reconnected { .. })
}

fn is_failed(e: &SttEvent) -> bool {
    matches!(e, SttEvent::Failed { .. })
}

const LONG: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn a_scripted_line_arrives_as_interims_a_final_and_an_utterance_end() {
    let fake = fake(FakeDeepgramConfig::default()).await;
    let line = "Hello, I need help with my order.";
    let (_, mut s) = open(&fake, config(&fake), &[line]).await;
    // Speech from 300 ms to 1800 ms.
    feed(
        &s.input,
        &[silence(300), speech(1500), silence(1500)].concat(),
    )
    .await;
    let mut got = Vec::new();
    read_until(&mut s.events, &mut got, LONG, |e| {
        !utterance_ends(e).is_empty()
    })
    .await;

    let starts = speech_starts(&got);
    assert_eq!(starts.len(), 1, "{got:#?}");
    assert!(
        (280..=320).contains(&starts[0]),
        "speech started at {}",
        starts[0]
    );

    let interims: Vec<(&str, u64, u64, f32)> = got
        .iter()
        .filter_map(|e| match e {
            SttEvent::Transcript {
                text,
                is_final: false,
                start_ms,
                end_ms,
                confidence,
                ..
            } => Some((text.as_str(), *start_ms, *end_ms, *confidence)),
            _ => None,
        })
        .collect();
    assert!(interims.len() >= 2, "{got:#?}");
    for pair in interims.windows(2) {
        assert!(
            pair[0].2 <= pair[1].2,
            "interim ends run backwards: {interims:?}"
        );
        assert!(pair[1].0.len() >= pair[0].0.len(), "{interims:?}");
    }
    for (text, start, end, confidence) in &interims {
        assert!(line.starts_with(text), "{text:?}");
        assert!(start <= end && *end <= 1800, "{interims:?}");
        assert!(*confidence > 0.0 && *confidence <= 1.0);
    }

    let f = finals(&got);
    assert_eq!(f.len(), 1, "{got:#?}");
    let (text, speech_final, start, end) = &f[0];
    assert_eq!(text, line);
    assert!(speech_final);
    assert_eq!(*start, 0, "finals tile the audio from its start");
    // The endpoint: 300 ms of silence after the speech.
    assert!((2_050..=2_150).contains(end), "final ends at {end}");

    let ue = utterance_ends(&got)[0];
    assert!((1_750..=1_850).contains(&ue), "last word ended at {ue}");
    assert!(ue <= *end);

    // Order: speech start, interims, final, utterance end.
    let pos = |f: &dyn Fn(&SttEvent) -> bool| got.iter().position(f).unwrap();
    let p_start = pos(&|e| matches!(e, SttEvent::SpeechStarted { .. }));
    let p_interim = pos(&|e| {
        matches!(
            e,
            SttEvent::Transcript {
                is_final: false,
                ..
            }
        )
    });
    let p_final = pos(&|e| matches!(e, SttEvent::Transcript { is_final: true, .. }));
    let p_end = pos(&|e| matches!(e, SttEvent::UtteranceEnd { .. }));
    assert!(
        p_start < p_interim && p_interim < p_final && p_final < p_end,
        "{got:#?}"
    );
    assert_eq!(count(&got, |e| is_reconnected(e) || is_failed(e)), 0);

    s.input.send(SttInput::Close).await.unwrap();
    read_to_end(&mut s.events, LONG).await;
    fake.shutdown().await;
}

#[tokio::test]
async fn the_handshake_carries_the_documented_query_and_token_auth() {
    let fake = fake(FakeDeepgramConfig::default()).await;
    let (call, s) = open(&fake, config(&fake), &[]).await;
    let c = &fake.connections()[0];
    assert_eq!(c.status, 101);
    assert_eq!(c.path, "/v1/listen");
    assert_eq!(
        c.authorization.as_deref(),
        Some(format!("Token {}", fake.api_key()).as_str())
    );
    let call = call.to_string();
    let expected: Vec<(&str, &str)> = vec![
        ("model", "nova-3"),
        ("language", "en-US"),
        ("encoding", "mulaw"),
        ("sample_rate", "8000"),
        ("channels", "1"),
        ("interim_results", "true"),
        ("endpointing", "300"),
        ("utterance_end_ms", "1000"),
        ("vad_events", "true"),
        ("smart_format", "true"),
        ("punctuate", "true"),
        ("keyterm", "IACE"),
        ("keyterm", "Acme Corp"),
        ("tag", &call),
    ];
    let query: Vec<(&str, &str)> = c
        .query
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(query, expected);
    drop(s);
    fake.shutdown().await;
}

#[tokio::test]
async fn keepalives_hold_a_silent_stream_past_the_idle_timeout() {
    // The idle timeout is ten keepalive intervals, so a stalled moment on a busy machine does
    // not let it run out between two keepalives.
    let fake = fake(FakeDeepgramConfig {
        idle_timeout: Duration::from_secs(2),
        ..FakeDeepgramConfig::default()
    })
    .await;
    let config = DeepgramConfig {
        keepalive_interval: Duration::from_millis(200),
        ..config(&fake)
    };
    let (_, mut s) = open(&fake, config, &["Still here."]).await;
    feed(&s.input, &silence(100)).await;
    // Two idle timeouts without audio (at least; a busy machine only waits longer), and
    // keepalives counted as they arrive rather than within a fixed time.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while fake.connections()[0].keepalives < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = fake.connections()[0].clone();
    assert!(c.open && c.end.is_none(), "{c:?}");
    assert!(c.keepalives >= 5, "{} keepalives", c.keepalives);

    // Audio every 20 ms is keepalive enough: no KeepAlive goes out while it flows.
    let before = fake.connections()[0].keepalives;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for frame in speech(600).chunks(160) {
        tick.tick().await;
        s.input.send(SttInput::Audio(frame.to_vec())).await.unwrap();
    }
    let after = fake.connections()[0].keepalives;
    assert!(
        after <= before + 1,
        "{before} -> {after} keepalives during audio"
    );

    feed(&s.input, &silence(800)).await;
    let mut got = Vec::new();
    read_until(&mut s.events, &mut got, LONG, |e| {
        has_final(e, "Still here.")
    })
    .await;
    assert_eq!(count(&got, |e| is_reconnected(e) || is_failed(e)), 0);
    assert_eq!(fake.connections().len(), 1);
    // The speech began after 100 ms of silence and 1.8 s of nothing: stream time skips the
    // wall-clock pause.
    assert_eq!(speech_starts(&got), vec![100]);
    s.input.send(SttInput::Close).await.unwrap();
    read_to_end(&mut s.events, LONG).await;
    fake.shutdown().await;
}

#[tokio::test]
async fn a_dropped_connection_is_reconnected_and_the_tagged_script_continues() {
    let fake = fake(FakeDeepgramConfig::default()).await;
    fake.drop_next_connection_after(Duration::from_millis(1_500));
    let registry = prometheus::Registry::new();
    let metrics = DeepgramMetrics::new(&registry).unwrap();
    let call = Uuid::new_v4();
    fake.set_tag_script(&call.to_string(), ["First line.", "Second line."]);
    let stt = DeepgramStt::new(config(&fake), Some(metrics)).unwrap();
    let mut s = stt.open(options(call)).await.unwrap();

    // 2.6 s on the first connection: speech 200..1200 ms, its final, its utterance end.
    feed(
        &s.input,
        &[silence(200), speech(1_000), silence(1_400)].concat(),
    )
    .await;
    let mut got = Vec::new();
    read_until(&mut s.events, &mut got, LONG, |e| {
        !utterance_ends(e).is_empty()
    })
    .await;
    let first = finals(&got)[0].clone();
    assert_eq!(first.0, "First line.");
    // The drop at 1.5 s (wall time) is seen at once and repaired.
    read_until(&mut s.events, &mut got, LONG, |e| {
        e.iter().any(is_reconnected)
    })
    .await;
    let Some(SttEvent::Reconnected { gap_ms, reason }) = got.last().cloned() else {
        panic!("{got:#?}");
    };
    assert_eq!(
        gap_ms, 0,
        "nothing lost: the unfinalized tail was sent again"
    );
    assert!(reason.starts_with("connection lost"), "{reason}");

    feed(&s.input, &[speech(1_000), silence(1_400)].concat()).await;
    read_until(&mut s.events, &mut got, LONG, |e| {
        has_final(e, "Second line.")
    })
    .await;
    let f = finals(&got);
    let second = f.iter().find(|f| f.0 == "Second line.").unwrap();
    // Finals tile the stream across the reconnect, and the second speech sits after the
    // first connection's 2.6 s of audio.
    assert_eq!(second.2, first.3, "{f:?}");
    let starts = speech_starts(&got);
    assert_eq!(starts.len(), 2, "{got:#?}");
    assert!((2_580..=2_620).contains(&starts[1]), "{starts:?}");
    assert!(second.3 > 3_600, "{second:?}");
    assert!(
        f.windows(2).all(|w| w[0].3 <= w[1].3),
        "final times run forwards: {f:?}"
    );

    let conns = fake.connections();
    assert_eq!(conns.len(), 2);
    assert_eq!(conns[0].end, Some(ConnectionEnd::Dropped));
    assert_eq!(conns[1].param("tag"), Some(call.to_string().as_str()));
    assert!(fake.tag_script_left(&call.to_string()).is_empty());

    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.contains("iace_deepgram_connections_total{outcome=\"ok\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("iace_deepgram_reconnects_total{cause=\"lost\"} 1"),
        "{text}"
    );
    s.input.send(SttInput::Close).await.unwrap();
    read_to_end(&mut s.events, LONG).await;
    fake.shutdown().await;
}

#[tokio::test]
async fn a_stalled_connection_is_detected_and_its_audio_transcribed_on_the_next() {
    let fake = fake(FakeDeepgramConfig::default()).await;
    fake.stall_next_connection();
    let config = DeepgramConfig {
        stall_timeout: Duration::from_millis(600),
        ..config(&fake)
    };
    let started = Instant::now();
    let (_, mut s) = open(&fake, config, &["Are you there?"]).await;
    feed(
        &s.input,
        &[silence(200), speech(1_000), silence(1_400)].concat(),
    )
    .await;
    let mut got = Vec::new();
    read_until(&mut s.events, &mut got, LONG, |e| {
        !utterance_ends(e).is_empty()
    })
    .await;
    let elapsed = started.elapsed();
    let Some(SttEvent::Reconnected { gap_ms, reason }) = got.first().cloned() else {
        panic!("the stall is reported first: {got:#?}");
    };
    assert!(reason.starts_with("stalled"), "{reason}");
    assert_eq!(gap_ms, 0);
    assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
    // Everything sent into the stalled connection was heard on the new one, on the same times.
    assert_eq!(speech_starts(&got), vec![200]);
    let f = finals(&got);
    assert_eq!(f.len(), 1, "{got:#?}");
    assert_eq!((f[0].0.as_str(), f[0].2), ("Are you there?", 0));
    let conns = fake.connections();
    assert_eq!(conns.len(), 2);
    assert!(conns[0].stalled);
    assert!((conns[1].audio_seconds - 2.6).abs() < 0.01, "{conns:?}");
    s.input.send(SttInput::Close).await.unwrap();
    read_to_end(&mut s.events, LONG).await;
    fake.shutdown().await;
}

#[tokio::test]
async fn a_refused_handshake_at_open_is_rejected_without_a_retry() {
    let fake = fake(FakeDeepgramConfig::default()).await;
    let stt = DeepgramStt::new(
        DeepgramConfig {
            api_key: "wrong-key".to_owned(),
            ..config(&fake)
        },
        None,
    )
    .unwrap();
    let err = stt.open(options(Uuid::new_v4())).await.unwrap_err();
    let VoiceError::Rejected { vendor, detail } = err else {
        panic!("{err:?}");
    };
    assert_eq!(vendor, "deepgram");
    assert!(
        detail.contains("401") && detail.contains("Invalid credentials"),
        "{detail}"
    );
    assert_eq!(fake.connections().len(), 1);
    assert_eq!(fake.connections()[0].status, 401);

    // 402 (no credits) is final too, whatever the key.
    fake.refuse_next(402);
    let stt = DeepgramStt::new(config(&fake), None).unwrap();
    let err = stt.open(options(Uuid::new_v4())).await.unwrap_err();
    assert!(
        matches!(&err, VoiceError::Rejected { detail, .. } if detail.contains("402")),
        "{err:?}"
    );
    assert_eq!(fake.connections().len(), 2);
    fake.shutdown().await;
}

#[tokio::test]
async fn a_5xx_handshake_is_retried() {
    let fake = fake(FakeDeepgramConfig::default()).await;
    fake.refuse_next(503);
    let (_, s) = open(&fake, config(&fake), &[]).await;
    let statuses: Vec<u16> = fake.connections().iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![503, 101]);
    drop(s);
    fake.shutdown().await;
}

#[tokio::test]
async fn close_flushes_the_last_final_then_the_channel_closes() {
    let fake = fake(FakeDeepgramConfig::default()).await;
    let (_, mut s) = open(&fake, config(&fake), &["Thanks, goodbye."]).await;
    // The caller is still talking when the call ends: no endpoint yet.
    feed(&s.input, &[silence(200), speech(900)].concat()).await;
    let started = Instant::now();
    s.input.send(SttInput::Close).await.unwrap();
    let got = read_to_end(&mut s.events, LONG).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let last = got
        .iter()
        .rev()
        .find(|e| matches!(e, SttEvent::Transcript { .. }))
        .cloned();
    let Some(SttEvent::Transcript {
        text,
        is_final: true,
        speech_final: false,
        end_ms,
        ..
    }) = last
    else {
        panic!("the last transcript is the flushed final: {got:#?}");
    };
    assert_eq!(text, "Thanks, goodbye.");
    assert_eq!(end_ms, 1_100);
    assert!(
        fake.wait_for(LONG, |f| f.connections()[0].end.is_some())
            .await
    );
    let c = &fake.connections()[0];
    assert_eq!(c.close_streams, 1);
    assert_eq!(
        c.end,
        Some(ConnectionEnd::ServerClosed {
            code: 1000,
            reason: String::new()
        })
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn finalize_flushes_and_dropping_the_input_closes_the_stream() {
    let fake = fake(FakeDeepgramConfig::default()).await;
    let (_, mut s) = open(&fake, config(&fake), &["Wait, one moment."]).await;
    feed(&s.input, &[silence(200), speech(800)].concat()).await;
    // An empty frame is never sent (the server would close the stream).
    s.input.send(SttInput::Audio(Vec::new())).await.unwrap();
    s.input.send(SttInput::Finalize).await.unwrap();
    let mut got = Vec::new();
    read_until(&mut s.events, &mut got, LONG, |e| {
        has_final(e, "Wait, one moment.")
    })
    .await;
    let f = finals(&got);
    assert!(!f[0].1, "a flushed final is not an endpoint");
    let SttStream { input, mut events } = s;
    drop(input);
    read_to_end(&mut events, LONG).await;
    assert!(
        fake.wait_for(LONG, |f| f.connections()[0].end.is_some())
            .await
    );
    let c = &fake.connections()[0];
    assert_eq!((c.finalizes, c.close_streams), (1, 1));
    assert_eq!(c.audio_frames, 50, "no empty frame");
    fake.shutdown().await;
}

#[tokio::test]
async fn a_refused_reconnect_ends_the_stream_with_failed() {
    let fake = fake(FakeDeepgramConfig::default()).await;
    fake.drop_next_connection_after(Duration::from_millis(300));
    let (_, mut s) = open(&fake, config(&fake), &[]).await;
    fake.refuse_next(401);
    let got = read_to_end(&mut s.events, LONG).await;
    assert_eq!(got.len(), 1, "{got:#?}");
    let SttEvent::Failed { reason } = &got[0] else {
        panic!("{got:#?}");
    };
    assert!(
        reason.contains("connection lost") && reason.contains("401"),
        "{reason}"
    );
    let statuses: Vec<u16> = fake.connections().iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        vec![101, 401],
        "a refused handshake is not retried"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn reconnects_are_bounded() {
    let fake = fake(FakeDeepgramConfig::default()).await;
    fake.drop_next_connection_after(Duration::from_millis(200));
    let config = DeepgramConfig {
        max_reconnects: 1,
        ..config(&fake)
    };
    let (_, mut s) = open(&fake, config, &[]).await;
    // The first connection has taken its fault: this one is for the reconnect's connection.
    fake.drop_next_connection_after(Duration::from_millis(200));
    let got = read_to_end(&mut s.events, LONG).await;
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(is_reconnected(&got[0]), "{got:#?}");
    let SttEvent::Failed { reason } = &got[1] else {
        panic!("{got:#?}");
    };
    assert!(reason.contains("gave up after 1 reconnects"), "{reason}");
    assert_eq!(fake.connections().len(), 2);
    fake.shutdown().await;
}

#[tokio::test]
async fn an_open_breaker_fails_open_without_touching_the_network() {
    let fake = fake(FakeDeepgramConfig::default()).await;
    let breakers = breakers_for("deepgram", BreakerConfig::default()).await;
    let breaker = breakers.get("deepgram").unwrap().clone();
    breaker.force_open().await.expect("breaker answers");
    let stt = DeepgramStt::new(
        DeepgramConfig {
            breaker: Some(breaker.clone()),
            ..config(&fake)
        },
        None,
    )
    .unwrap();
    let err = stt.open(options(Uuid::new_v4())).await.unwrap_err();
    assert!(
        matches!(&err, VoiceError::Unavailable { vendor, detail } if vendor == "deepgram" && detail.contains("breaker")),
        "{err:?}"
    );
    assert!(fake.connections().is_empty());

    // Closed again, the breaker lets the handshake through.
    breaker.reset().await.expect("breaker answers");
    let (_, s) = open(
        &fake,
        DeepgramConfig {
            breaker: Some(breaker.clone()),
            ..config(&fake)
        },
        &[],
    )
    .await;
    assert_eq!(fake.connections().len(), 1);
    drop(s);
    breakers.stop();
    fake.shutdown().await;
}
