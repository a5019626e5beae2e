//! The Cartesia text-to-speech client against the wire-level fake Cartesia
//! (`iace_fakes::cartesia`): contexts in pieces, the request fields, barge-in cancels, drops,
//! stalls, idle closes, refused handshakes and the breaker. Real sockets and real time (the
//! fake paces audio on the wall clock); every test starts its own fake, so they run in
//! parallel, and each finishes in a few seconds.

use crate::common;

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use iace::clients::cartesia::{CartesiaConfig, CartesiaMetrics, CartesiaTts};
use iace::clients::retry::RetryPolicy;
use iace_actors::breaker::{BreakerConfig, BreakerState, Breakers};
use iace_actors::ports::voice::{
    TextToSpeech, TtsEvent, TtsInput, TtsOptions, TtsStream, VoiceError,
};
use iace_fakes::cartesia::{
    AuthMethod, CloseReason, ContextState, Encoding, FakeCartesia, FakeCartesiaConfig,
    OutputFormat, VersionSource,
};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const VERSION: &str = "2025-04-16";
const VOICE: &str = "a0e99841-438c-4a64-b679-ae501e7d6091";
/// Bound on waiting for any one event.
const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Helpers

async fn fake() -> FakeCartesia {
    fake_with(FakeCartesiaConfig::default()).await
}

async fn fake_with(config: FakeCartesiaConfig) -> FakeCartesia {
    FakeCartesia::start(config).await.expect("fake starts")
}

/// Test settings for the fake: quick retries, a 1 s stall timeout, two reconnects.
fn config(fake: &FakeCartesia) -> CartesiaConfig {
    settings(format!("ws://{}", fake.addr()), fake.api_key())
}

fn settings(url: String, api_key: &str) -> CartesiaConfig {
    CartesiaConfig {
        url,
        api_key: api_key.to_owned(),
        version: VERSION.to_owned(),
        model_id: "sonic-3".to_owned(),
        connect_timeout: Duration::from_secs(2),
        stall_timeout: Duration::from_secs(1),
        retry: RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(50),
            cap: Duration::from_millis(200),
            attempt_timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(2),
        },
        max_reconnects: 2,
        max_buffer_delay_ms: Some(0),
        breaker: None,
    }
}

fn options() -> TtsOptions {
    TtsOptions {
        call_id: uuid::Uuid::new_v4(),
        voice_id: VOICE.to_owned(),
        model_id: "sonic-3".to_owned(),
        language: "en".to_owned(),
        speed: Some(1.25),
    }
}

async fn open(fake: &FakeCartesia) -> TtsStream {
    CartesiaTts::new(config(fake), None)
        .open(options())
        .await
        .expect("stream opens")
}

/// What the session does: `try_send`, never waiting.
fn speak(stream: &TtsStream, context: &str, text: &str, last: bool) {
    stream
        .input
        .try_send(TtsInput::Speak {
            context: context.to_owned(),
            text: text.to_owned(),
            last,
        })
        .expect("input has room");
}

fn cancel(stream: &TtsStream, context: &str) {
    stream
        .input
        .try_send(TtsInput::Cancel {
            context: context.to_owned(),
        })
        .expect("input has room");
}

/// The next event, `Ok(None)` once the channel closed, `Err(())` if nothing came `within`.
async fn next_event(stream: &mut TtsStream, within: Duration) -> Result<Option<TtsEvent>, ()> {
    tokio::time::timeout(within, stream.events.recv())
        .await
        .map_err(|_| ())
}

/// Every event until `context` ends (`Done` or `ContextFailed`), that one included.
async fn until_ended(stream: &mut TtsStream, context: &str) -> Vec<TtsEvent> {
    let mut seen = Vec::new();
    loop {
        let event = match next_event(stream, WAIT).await {
            Ok(Some(e)) => e,
            Ok(None) => panic!("the stream closed before {context} ended; saw {seen:?}"),
            Err(()) => panic!("{context} did not end within {WAIT:?}; saw {seen:?}"),
        };
        let end = matches!(&event,
            TtsEvent::Done { context: c } | TtsEvent::ContextFailed { context: c, .. } if c == context);
        seen.push(event);
        if end {
            return seen;
        }
    }
}

/// Every event until one matches `f`, that one included.
async fn until(stream: &mut TtsStream, f: impl Fn(&TtsEvent) -> bool) -> Vec<TtsEvent> {
    let mut seen = Vec::new();
    loop {
        let event = match next_event(stream, WAIT).await {
            Ok(Some(e)) => e,
            Ok(None) => panic!("the stream closed; saw {seen:?}"),
            Err(()) => panic!("nothing matched within {WAIT:?}; saw {seen:?}"),
        };
        let hit = f(&event);
        seen.push(event);
        if hit {
            return seen;
        }
    }
}

fn audio_of(events: &[TtsEvent], context: &str) -> Vec<u8> {
    events
        .iter()
        .flat_map(|e| match e {
            TtsEvent::Audio { context: c, mulaw } if c == context => mulaw.clone(),
            _ => Vec::new(),
        })
        .collect()
}

fn words_of(events: &[TtsEvent], context: &str) -> Vec<(String, f32, f32)> {
    events
        .iter()
        .flat_map(|e| match e {
            TtsEvent::Words { context: c, words } if c == context => words.clone(),
            _ => Vec::new(),
        })
        .collect()
}

fn count(events: &[TtsEvent], f: impl Fn(&TtsEvent) -> bool) -> usize {
    events.iter().filter(|e| f(e)).count()
}

fn mulaw_8k() -> OutputFormat {
    OutputFormat::raw(Encoding::PcmMulaw, 8_000)
}

/// The exact audio the fake makes for `transcript`.
fn expected_bytes(fake: &FakeCartesia, transcript: &str) -> usize {
    mulaw_8k().audio_bytes_for_chars(transcript.chars().count(), fake.config().ms_per_char)
}

/// Speaks `text` as one context and checks it arrives whole.
async fn say_whole(fake: &FakeCartesia, stream: &mut TtsStream, context: &str, text: &str) {
    speak(stream, context, text, true);
    let events = until_ended(stream, context).await;
    assert!(
        matches!(events.last(), Some(TtsEvent::Done { .. })),
        "{context}: {events:?}"
    );
    assert_eq!(
        audio_of(&events, context),
        fake.expected_audio(text, &mulaw_8k()),
        "{context}"
    );
    assert_eq!(expected_bytes(fake, text), audio_of(&events, context).len());
}

// ---------------------------------------------------------------------------------------------
// Contexts

#[tokio::test]
async fn three_pieces_of_one_context_yield_the_exact_audio_every_word_and_one_done() {
    let fake = fake().await;
    let registry = prometheus::Registry::new();
    let metrics = CartesiaMetrics::new(&registry).unwrap();
    let mut stream = CartesiaTts::new(config(&fake), Some(metrics))
        .open(options())
        .await
        .unwrap();
    let pieces = ["Hello there. ", "How can I help ", "you today?"];
    let whole: String = pieces.concat();
    speak(&stream, "turn-1", pieces[0], false);
    speak(&stream, "turn-1", pieces[1], false);
    speak(&stream, "turn-1", pieces[2], true);
    let events = until_ended(&mut stream, "turn-1").await;

    let audio = audio_of(&events, "turn-1");
    assert_eq!(audio.len(), expected_bytes(&fake, &whole));
    assert_eq!(audio.len(), 38 * 480);
    assert_eq!(audio, fake.expected_audio(&whole, &mulaw_8k()));
    let words = words_of(&events, "turn-1");
    let names: Vec<&str> = words.iter().map(|(w, _, _)| w.as_str()).collect();
    assert_eq!(
        names,
        ["Hello", "there.", "How", "can", "I", "help", "you", "today?"]
    );
    for pair in words.windows(2) {
        assert!(pair[0].1 < pair[0].2 && pair[0].2 <= pair[1].1, "{words:?}");
    }
    assert_eq!((words[0].1, words[0].2), (0.0, 0.3), "5 chars of 60 ms");
    assert_eq!(count(&events, |e| matches!(e, TtsEvent::Done { .. })), 1);
    assert!(matches!(events.last(), Some(TtsEvent::Done { context }) if context == "turn-1"));
    assert!(matches!(events.first(), Some(TtsEvent::Audio { .. })));
    // Nothing else arrives for it.
    assert!(next_event(&mut stream, Duration::from_millis(300))
        .await
        .is_err());

    let ctx = fake.context("turn-1").unwrap();
    assert_eq!((ctx.pieces, ctx.transcript.as_str()), (3, whole.as_str()));
    assert!(ctx.continued && ctx.input_ended);
    assert_eq!(ctx.state, ContextState::Done);
    assert_eq!(fake.connections().len(), 1);

    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.contains("iace_cartesia_first_chunk_seconds_count 1"),
        "{text}"
    );
    assert!(
        text.contains(r#"iace_cartesia_contexts_total{outcome="done"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"iace_cartesia_connects_total{outcome="ok"} 1"#),
        "{text}"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn requests_carry_the_fields_of_section_3_2() {
    let fake = fake().await;
    let mut stream = open(&fake).await;
    speak(&stream, "turn-1", "Hi there. ", false);
    speak(&stream, "turn-1", "Bye.", false);
    // Closing with no more text: the SDK's no_more_inputs.
    speak(&stream, "turn-1", "", true);
    until_ended(&mut stream, "turn-1").await;

    let conn = &fake.connections()[0];
    assert_eq!(conn.auth, Some(AuthMethod::Bearer));
    assert_eq!(conn.credential.as_deref(), Some(fake.api_key()));
    assert_eq!(conn.version.as_deref(), Some(VERSION));
    assert_eq!(conn.version_source, Some(VersionSource::Header));

    let ctx = fake.context("turn-1").unwrap();
    assert_eq!(ctx.requests.len(), 3);
    assert_eq!(
        ctx.requests[0],
        json!({
            "model_id": "sonic-3",
            "transcript": "Hi there. ",
            "voice": {"mode": "id", "id": VOICE},
            "output_format": {"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 8000},
            "context_id": "turn-1",
            "continue": true,
            "language": "en",
            "add_timestamps": true,
            "max_buffer_delay_ms": 0,
            "generation_config": {"speed": 1.25},
        })
    );
    let field = |i: usize, f: &str| ctx.requests[i][f].clone();
    assert_eq!(field(1, "transcript"), "Bye.");
    assert_eq!(field(1, "continue"), true);
    assert_eq!(field(1, "context_id"), "turn-1");
    assert_eq!(field(1, "output_format"), ctx.requests[0]["output_format"]);
    assert_eq!(field(2, "transcript"), "");
    assert_eq!(field(2, "continue"), false);
    assert_eq!(ctx.format, Some(mulaw_8k()));
    assert_eq!(ctx.voice_id.as_deref(), Some(VOICE));
    assert_eq!(ctx.language.as_deref(), Some("en"));

    // A context that ends on its only piece sends it with continue: false; no speed, no
    // generation_config; an empty model in the options means the configured one.
    let mut stream2 = CartesiaTts::new(config(&fake), None)
        .open(TtsOptions {
            speed: None,
            model_id: String::new(),
            ..options()
        })
        .await
        .unwrap();
    speak(&stream2, "turn-2", "One shot.", true);
    until_ended(&mut stream2, "turn-2").await;
    let ctx = fake.context("turn-2").unwrap();
    assert_eq!(ctx.requests.len(), 1);
    assert_eq!(ctx.requests[0]["continue"], false);
    assert_eq!(ctx.requests[0]["model_id"], "sonic-3");
    assert_eq!(ctx.requests[0].get("generation_config"), None::<&Value>);

    // A context closed without ever having text is done without a request.
    speak(&stream2, "silent", "", true);
    let events = until_ended(&mut stream2, "silent").await;
    assert_eq!(
        events,
        vec![TtsEvent::Done {
            context: "silent".into()
        }]
    );
    assert!(fake.context("silent").is_none());
    drop(stream);
    fake.shutdown().await;
}

#[tokio::test]
async fn cancel_mid_utterance_silences_it_and_a_new_context_then_works() {
    let fake = fake().await;
    let mut stream = open(&fake).await;
    // 60 chars: 3.6 s of audio, streamed over about 0.9 s.
    let long = "This sentence is long enough to still be streaming when cut.";
    speak(&stream, "turn-1", long, false);
    until(&mut stream, |e| matches!(e, TtsEvent::Audio { .. })).await;
    cancel(&stream, "turn-1");
    // The LLM is still streaming after the barge-in: this must not restart speech.
    speak(&stream, "turn-1", " And more text.", true);

    let grace = Duration::from_millis(100);
    let cancelled_at = Instant::now();
    let mut late = Vec::new();
    while let Ok(Some(event)) = next_event(&mut stream, Duration::from_millis(700)).await {
        late.push((cancelled_at.elapsed(), event));
    }
    for (at, event) in &late {
        assert!(
            !matches!(
                event,
                TtsEvent::Done { .. } | TtsEvent::ContextFailed { .. }
            ),
            "{event:?}"
        );
        assert!(*at < grace, "audio {at:?} after the cancel: {event:?}");
    }
    assert!(
        fake.wait_for(WAIT, |f| f.context("turn-1").is_some_and(|c| c.cancelled()))
            .await
    );
    let ctx = fake.context("turn-1").unwrap();
    assert_eq!(ctx.pieces, 1, "the late piece never reached the wire");
    assert_eq!(ctx.ignored_after_cancel, 0);
    assert!(ctx.audio_bytes_sent < expected_bytes(&fake, long) as u64);

    say_whole(&fake, &mut stream, "turn-2", "Sorry, go ahead.").await;
    assert_eq!(fake.connections().len(), 1);
    fake.shutdown().await;
}

#[tokio::test]
async fn two_contexts_in_sequence_share_one_socket() {
    let fake = fake().await;
    let mut stream = open(&fake).await;
    say_whole(&fake, &mut stream, "turn-1", "Good morning.").await;
    say_whole(&fake, &mut stream, "turn-2", "How can I help you?").await;
    assert_eq!(fake.connections().len(), 1);
    let contexts = fake.contexts();
    assert_eq!(contexts.len(), 2);
    assert!(contexts.iter().all(|c| c.connection == 0 && c.done_sent()));
    assert!(fake.connections()[0].open);
    fake.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The socket's life

#[tokio::test]
async fn a_dropped_socket_fails_the_context_in_flight_then_reconnects() {
    let fake = fake().await;
    let mut stream = open(&fake).await;
    let long = "This sentence is long enough to still be streaming when cut.";
    speak(&stream, "turn-1", long, true);
    until(&mut stream, |e| matches!(e, TtsEvent::Audio { .. })).await;
    fake.drop_connection_after(Duration::from_millis(20));

    let events = until_ended(&mut stream, "turn-1").await;
    let Some(TtsEvent::ContextFailed { reason, .. }) = events.last() else {
        panic!("{events:?}");
    };
    assert!(reason.contains("dropped"), "{reason}");
    assert_eq!(count(&events, |e| matches!(e, TtsEvent::Done { .. })), 0);
    let next = next_event(&mut stream, WAIT).await.unwrap().unwrap();
    assert!(
        matches!(&next, TtsEvent::Reconnected { reason: r } if r == reason),
        "{next:?}"
    );

    say_whole(&fake, &mut stream, "turn-2", "Sorry, where was I?").await;
    let conns = fake.connections();
    assert_eq!(conns.len(), 2);
    assert_eq!(conns[0].close, Some(CloseReason::Dropped));
    assert!(conns[1].open);
    assert_eq!(
        fake.context("turn-1").unwrap().state,
        ContextState::Abandoned
    );
    assert_eq!(fake.context("turn-2").unwrap().connection, 1);
    fake.shutdown().await;
}

#[tokio::test]
async fn a_stalled_context_is_detected_within_the_stall_timeout() {
    let fake = fake().await;
    let mut stream = CartesiaTts::new(
        CartesiaConfig {
            stall_timeout: Duration::from_millis(600),
            ..config(&fake)
        },
        None,
    )
    .open(options())
    .await
    .unwrap();
    fake.stall_next_context();
    let sent = Instant::now();
    speak(&stream, "turn-1", "Hello?", true);
    let events = until_ended(&mut stream, "turn-1").await;
    // Never before the stall timeout; that it is detected at all is `until_ended`'s bound (a
    // stalled context sends nothing else that could end it), not a wall-clock threshold a
    // busy machine could overrun.
    let detected = sent.elapsed();
    assert!(detected >= Duration::from_millis(600), "{detected:?}");
    let [TtsEvent::ContextFailed { reason, .. }] = events.as_slice() else {
        panic!("{events:?}");
    };
    assert!(reason.contains("stalled"), "{reason}");
    assert!(matches!(
        next_event(&mut stream, WAIT).await,
        Ok(Some(TtsEvent::Reconnected { .. }))
    ));

    say_whole(&fake, &mut stream, "turn-2", "Can you hear me?").await;
    assert_eq!(fake.connections().len(), 2);
    assert!(fake.context("turn-1").unwrap().stalled);
    fake.shutdown().await;
}

#[tokio::test]
async fn the_idle_close_reopens_lazily_without_a_failure() {
    let fake = fake().await;
    fake.close_idle_after(Duration::from_millis(300));
    let mut stream = open(&fake).await;
    say_whole(&fake, &mut stream, "turn-1", "Take your time.").await;
    assert!(
        fake.wait_for(WAIT, |f| f.connections()[0].close
            == Some(CloseReason::Idle))
            .await,
        "{:?}",
        fake.connections()
    );
    // Nothing is reported for an idle close, and nothing reconnects until there is text.
    assert!(next_event(&mut stream, Duration::from_millis(300))
        .await
        .is_err());
    assert_eq!(fake.connections().len(), 1);

    speak(&stream, "turn-2", "Are you still there?", true);
    let events = until_ended(&mut stream, "turn-2").await;
    assert!(
        events.iter().all(|e| matches!(
            e,
            TtsEvent::Audio { .. } | TtsEvent::Words { .. } | TtsEvent::Done { .. }
        )),
        "{events:?}"
    );
    assert_eq!(
        audio_of(&events, "turn-2").len(),
        expected_bytes(&fake, "Are you still there?")
    );
    assert_eq!(fake.connections().len(), 2);
    fake.shutdown().await;
}

#[tokio::test]
async fn reconnects_are_bounded_then_the_stream_fails_and_closes() {
    let fake = fake().await;
    let mut stream = CartesiaTts::new(
        CartesiaConfig {
            max_reconnects: 1,
            ..config(&fake)
        },
        None,
    )
    .open(options())
    .await
    .unwrap();
    // A drop with nothing in flight still reopens at once (the next utterance is not delayed).
    fake.drop_connection_after(Duration::from_millis(10));
    assert!(matches!(
        next_event(&mut stream, WAIT).await,
        Ok(Some(TtsEvent::Reconnected { .. }))
    ));
    assert!(fake.wait_for(WAIT, |f| f.connections().len() == 2).await);
    fake.drop_connection_after(Duration::from_millis(10));
    let Ok(Some(TtsEvent::Failed { reason })) = next_event(&mut stream, WAIT).await else {
        panic!("expected Failed");
    };
    assert!(reason.contains("gave up after 1 reconnects"), "{reason}");
    assert_eq!(next_event(&mut stream, WAIT).await, Ok(None));
    assert!(stream.input.try_send(TtsInput::Close).is_err());
    assert_eq!(fake.connections().len(), 2);
    fake.shutdown().await;
}

#[tokio::test]
async fn close_ends_the_stream_with_a_close_frame() {
    let fake = fake().await;
    let mut stream = open(&fake).await;
    say_whole(&fake, &mut stream, "turn-1", "Goodbye.").await;
    stream.input.try_send(TtsInput::Close).unwrap();
    assert_eq!(next_event(&mut stream, WAIT).await, Ok(None));
    assert!(
        fake.wait_for(WAIT, |f| f.connections()[0].close
            == Some(CloseReason::ClientClosed))
            .await,
        "{:?}",
        fake.connections()
    );

    // Dropping the input sender is a Close too.
    let TtsStream { input, mut events } = open(&fake).await;
    drop(input);
    let closed = tokio::time::timeout(WAIT, events.recv()).await;
    assert_eq!(closed, Ok(None));
    assert!(
        fake.wait_for(WAIT, |f| f.connections()[1].close
            == Some(CloseReason::ClientClosed))
            .await
    );
    fake.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Handshake, retries, breaker

#[tokio::test]
async fn a_refused_key_is_rejected_at_open_after_one_handshake() {
    let fake = fake().await;
    let result = CartesiaTts::new(
        CartesiaConfig {
            api_key: "sk_car_wrong".into(),
            ..config(&fake)
        },
        None,
    )
    .open(options())
    .await;
    let Err(VoiceError::Rejected { vendor, detail }) = result else {
        panic!("expected Rejected, got {result:?}");
    };
    assert_eq!(vendor, "cartesia");
    assert!(detail.contains("401"), "{detail}");
    let conns = fake.connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].refused, Some(401));

    // A version that is not a date is the same kind of refusal (400).
    let result = CartesiaTts::new(
        CartesiaConfig {
            version: "latest".into(),
            ..config(&fake)
        },
        None,
    )
    .open(options())
    .await;
    assert!(
        matches!(result, Err(VoiceError::Rejected { .. })),
        "{result:?}"
    );
    assert_eq!(fake.connections().len(), 2);
    fake.shutdown().await;
}

#[tokio::test]
async fn a_url_the_client_cannot_use_is_rejected_without_retrying() {
    // A retry would first back off a minute: answering within the bound means none happened,
    // however slow the machine.
    let mut config = settings("http://127.0.0.1".into(), "k");
    config.retry.base = Duration::from_secs(60);
    config.retry.cap = Duration::from_secs(60);
    config.retry.deadline = Duration::from_secs(300);
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        CartesiaTts::new(config, None).open(options()),
    )
    .await
    .expect("no backoff");
    assert!(
        matches!(&result, Err(VoiceError::Rejected { detail, .. }) if detail.contains("http://127.0.0.1")),
        "{result:?}"
    );
}

#[tokio::test]
async fn server_errors_at_open_are_retried_then_unavailable() {
    let fake = fake().await;
    fake.fail_next(1, 503);
    let mut stream = open(&fake).await;
    say_whole(&fake, &mut stream, "turn-1", "Made it.").await;
    assert_eq!(fake.connections().len(), 2);
    assert_eq!(fake.connections()[0].refused, Some(503));

    fake.fail_next(3, 500);
    let result = CartesiaTts::new(config(&fake), None).open(options()).await;
    let Err(VoiceError::Unavailable { detail, .. }) = result else {
        panic!("expected Unavailable, got {result:?}");
    };
    assert!(detail.contains("500"), "{detail}");
    assert_eq!(fake.connections().len(), 5, "three attempts");
    fake.shutdown().await;
}

async fn breakers(config: BreakerConfig) -> Breakers {
    common::vendor::breakers_for("cartesia", config).await
}

#[tokio::test]
async fn an_open_breaker_fails_open_without_a_connection() {
    let fake = fake().await;
    let breakers = breakers(BreakerConfig::default()).await;
    let breaker = breakers.get("cartesia").unwrap().clone();
    breaker.force_open().await.unwrap();
    let tts = CartesiaTts::new(
        CartesiaConfig {
            breaker: Some(breaker.clone()),
            ..config(&fake)
        },
        None,
    );
    assert_eq!(tts.vendor(), "cartesia");
    // Forced open, the breaker never lets a call through: answering at all means failing fast.
    let result = tokio::time::timeout(Duration::from_secs(30), tts.open(options()))
        .await
        .expect("fails fast instead of waiting for the breaker");
    assert!(
        matches!(&result, Err(VoiceError::Unavailable { detail, .. }) if detail.contains("breaker")),
        "{result:?}"
    );
    assert!(fake.connections().is_empty());

    breaker.reset().await.unwrap();
    let mut stream = tts.open(options()).await.unwrap();
    say_whole(&fake, &mut stream, "turn-1", "Back again.").await;
    breakers.stop();
    fake.shutdown().await;
}

#[tokio::test]
async fn vendor_errors_mid_call_trip_the_breaker_and_the_next_drop_is_final() {
    let fake = fake().await;
    let breakers = breakers(BreakerConfig {
        consecutive_failures: 2,
        open_wait: Duration::from_secs(30),
        ..BreakerConfig::default()
    })
    .await;
    let breaker = breakers.get("cartesia").unwrap().clone();
    let mut stream = CartesiaTts::new(
        CartesiaConfig {
            breaker: Some(breaker.clone()),
            ..config(&fake)
        },
        None,
    )
    .open(options())
    .await
    .unwrap();

    // A 4xx for a context is the request's fault: the context fails, the breaker does not
    // count it, the stream goes on.
    fake.fail_next(1, 400);
    speak(&stream, "bad", "Hello.", true);
    let events = until_ended(&mut stream, "bad").await;
    assert!(
        matches!(events.last(), Some(TtsEvent::ContextFailed { reason, .. }) if reason.contains("400")),
        "{events:?}"
    );
    say_whole(&fake, &mut stream, "good", "Hello.").await;
    assert_eq!(breaker.state(), BreakerState::Closed);

    fake.fail_next(2, 500);
    for id in ["x1", "x2"] {
        speak(&stream, id, "Hello.", true);
        let events = until_ended(&mut stream, id).await;
        assert!(
            matches!(events.last(), Some(TtsEvent::ContextFailed { reason, .. }) if reason.contains("500")),
            "{events:?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while breaker.state() != BreakerState::Open && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(breaker.state(), BreakerState::Open);

    // The socket still works for the call in progress...
    say_whole(&fake, &mut stream, "still", "Still here.").await;
    // ...but once it drops, the open breaker forbids a new one.
    fake.drop_connection_after(Duration::from_millis(10));
    let events = until(&mut stream, |e| matches!(e, TtsEvent::Failed { .. })).await;
    let Some(TtsEvent::Failed { reason }) = events.last() else {
        unreachable!()
    };
    assert!(reason.contains("breaker"), "{reason}");
    assert_eq!(next_event(&mut stream, WAIT).await, Ok(None));
    assert_eq!(fake.connections().len(), 1);
    breakers.stop();
    fake.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// A scripted server, for what the fake cannot time

/// Serves two sockets: the first closes cleanly (1000) right after the first request without
/// answering it — Cartesia's idle close racing the first words of an utterance — and the
/// second answers with noise the client must ignore, then the audio and `done`. Every
/// request received is reported with the number of its socket.
async fn scripted_cartesia() -> (String, mpsc::UnboundedReceiver<(usize, Value)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for conn in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let Some(Ok(Message::Text(first))) = ws.next().await else {
                return;
            };
            let request: Value = serde_json::from_str(first.as_str()).unwrap();
            let context = request["context_id"].clone();
            let _ = seen_tx.send((conn, request));
            if conn == 0 {
                let frame = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "connection idle for too long".into(),
                };
                let _ = ws.close(Some(frame)).await;
            } else {
                let replies = [
                    json!({"type": "flush_done", "context_id": context, "flush_done": true, "flush_id": 1}),
                    json!({"type": "phoneme_timestamps", "context_id": context}),
                    json!({"type": "error", "status_code": 400, "message": "no context here"}),
                    json!({"type": "chunk", "context_id": "someone-else", "data": "AQID"}),
                    json!({"no_type": true}),
                    json!({"type": "chunk", "context_id": context, "data": "AQID", "done": false}),
                    json!({"type": "done", "context_id": context, "done": true}),
                ];
                for reply in replies {
                    ws.send(Message::text(reply.to_string())).await.unwrap();
                }
            }
            while let Some(Ok(_)) = ws.next().await {}
        }
    });
    (url, seen_rx)
}

#[tokio::test]
async fn a_request_swallowed_by_a_clean_close_is_replayed_on_a_new_socket() {
    let (url, mut seen) = scripted_cartesia().await;
    let mut stream = CartesiaTts::new(settings(url, "sk_car_test_key"), None)
        .open(options())
        .await
        .unwrap();
    speak(&stream, "turn-1", "Hello.", true);
    let events = until_ended(&mut stream, "turn-1").await;
    assert_eq!(
        events,
        vec![
            TtsEvent::Audio {
                context: "turn-1".into(),
                mulaw: vec![1, 2, 3]
            },
            TtsEvent::Done {
                context: "turn-1".into()
            },
        ],
        "no failure, no reconnect reported, the noise ignored"
    );
    let (conn0, first) = seen.recv().await.unwrap();
    let (conn1, replayed) = seen.recv().await.unwrap();
    assert_eq!((conn0, conn1), (0, 1));
    assert_eq!(first, replayed);
    assert_eq!(first["transcript"], "Hello.");
    assert!(next_event(&mut stream, Duration::from_millis(200))
        .await
        .is_err());
}
