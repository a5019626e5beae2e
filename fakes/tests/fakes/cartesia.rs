//! Wire-level tests of the Cartesia fake (`iace_fakes::cartesia`) on real sockets and real time:
//! tokio-tungstenite as the WebSocket client and reqwest for `POST /tts/bytes`, asserting on
//! what crosses the wire (decoded audio, message order, error bodies) and on what the fake
//! recorded. Each test starts its own fake, so they run in parallel.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use iace_fakes::cartesia::{
    AuthMethod, CloseReason, ContextState, Encoding, FakeCartesia, FakeCartesiaConfig,
    OutputFormat, VersionSource,
};
use iace_fakes::telnyx::g711;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const VERSION: &str = "2025-04-16";
/// Samples per character at 8 kHz under the default 60 ms rule.
const MULAW_BYTES_PER_CHAR: usize = 480;

// ---------------------------------------------------------------------------------------------
// Client helpers

async fn start() -> FakeCartesia {
    FakeCartesia::start(FakeCartesiaConfig::default())
        .await
        .expect("fake starts")
}

/// Connects to `url` with the given headers.
async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Ws, WsError> {
    let mut req = url.into_client_request().expect("valid url");
    for (name, value) in headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
            HeaderValue::from_str(value).expect("valid header value"),
        );
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

/// Connects the way the current SDK does: Bearer key and `Cartesia-Version`.
async fn connect(fake: &FakeCartesia) -> Ws {
    let auth = format!("Bearer {}", fake.api_key());
    connect_with(
        &fake.ws_url(),
        &[("authorization", &auth), ("cartesia-version", VERSION)],
    )
    .await
    .expect("handshake accepted")
}

/// The HTTP status and JSON body of a refused handshake.
fn refusal(result: Result<Ws, WsError>) -> (u16, Value) {
    match result {
        Err(WsError::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .map(|b| serde_json::from_slice(b).expect("JSON error body"))
                .unwrap_or(Value::Null);
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the handshake was accepted"),
    }
}

fn mulaw_8k() -> Value {
    json!({"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 8000})
}

/// A generation request with a mu-law 8 kHz output format, timestamps on.
fn gen(context_id: &str, transcript: &str, cont: bool) -> Value {
    json!({
        "model_id": "sonic-3",
        "transcript": transcript,
        "voice": {"mode": "id", "id": "a0e99841-438c-4a64-b679-ae501e7d6091"},
        "output_format": mulaw_8k(),
        "context_id": context_id,
        "continue": cont,
        "language": "en",
        "add_timestamps": true,
        "max_buffer_delay_ms": 0,
    })
}

async fn send(ws: &mut Ws, v: &Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

/// The next JSON message, or `None` if nothing arrives within `within`. Panics on anything
/// other than a text message.
async fn next_json(ws: &mut Ws, within: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(within, ws.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Text(t)))) => {
                return Some(serde_json::from_str(t.as_str()).expect("JSON message"))
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Reads messages until every context in `ids` has had `done` (or `error`).
async fn read_until_finished(ws: &mut Ws, ids: &[&str]) -> Vec<Value> {
    let mut msgs = Vec::new();
    let mut open: Vec<&str> = ids.to_vec();
    while !open.is_empty() {
        let m = next_json(ws, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("timed out waiting for {open:?}; got {msgs:?}"));
        if matches!(m["type"].as_str(), Some("done" | "error")) {
            open.retain(|id| m["context_id"] != *id);
        }
        msgs.push(m);
    }
    msgs
}

fn of<'a>(msgs: &'a [Value], ctx: &str, kind: &str) -> Vec<&'a Value> {
    msgs.iter()
        .filter(|m| m["context_id"] == ctx && m["type"] == kind)
        .collect()
}

fn audio_of(msgs: &[Value], ctx: &str) -> Vec<u8> {
    of(msgs, ctx, "chunk")
        .iter()
        .flat_map(|m| {
            BASE64
                .decode(m["data"].as_str().expect("data"))
                .expect("base64")
        })
        .collect()
}

fn rms(samples: &[i16]) -> f64 {
    (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
}

// ---------------------------------------------------------------------------------------------
// Handshake: version and credentials

#[tokio::test]
async fn missing_version_is_refused_on_both_endpoints() {
    let fake = start().await;
    let auth = format!("Bearer {}", fake.api_key());

    let (status, body) =
        refusal(connect_with(&fake.ws_url(), &[("authorization", auth.as_str())]).await);
    assert_eq!(status, 400);
    assert_eq!(body["status_code"], 400);
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("Cartesia-Version"));
    assert!(body["request_id"].as_str().is_some_and(|s| !s.is_empty()));

    let (status, _) = refusal(
        connect_with(
            &fake.ws_url(),
            &[
                ("authorization", auth.as_str()),
                ("cartesia-version", "latest"),
            ],
        )
        .await,
    );
    assert_eq!(status, 400, "a version that is not a date is refused");

    let resp = reqwest::Client::new()
        .post(format!("{}/tts/bytes", fake.http_base()))
        .header("authorization", &auth)
        .json(&json!({"model_id": "sonic-3", "transcript": "Hi", "voice": "v", "output_format": mulaw_8k()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status_code"], 400);
    assert_eq!(fake.http_requests()[0].status, 400);

    // The query parameter works on the WebSocket and wins over the header.
    let url = format!("{}?cartesia_version=2026-08-14", fake.ws_url());
    let ws = connect_with(
        &url,
        &[
            ("authorization", auth.as_str()),
            ("cartesia-version", VERSION),
        ],
    )
    .await
    .expect("query version accepted");
    drop(ws);

    let conns = fake.connections();
    assert_eq!(conns.len(), 3);
    assert_eq!(conns[0].refused, Some(400));
    assert_eq!(conns[0].version, None);
    assert_eq!(conns[1].refused, Some(400));
    assert_eq!(conns[2].refused, None);
    assert_eq!(conns[2].version.as_deref(), Some("2026-08-14"));
    assert_eq!(conns[2].version_source, Some(VersionSource::Query));
    fake.shutdown().await;
}

#[tokio::test]
async fn bad_or_missing_key_is_refused_and_every_credential_place_works() {
    let fake = FakeCartesia::start(FakeCartesiaConfig {
        access_tokens: vec!["short-lived-token".to_owned()],
        ..FakeCartesiaConfig::default()
    })
    .await
    .unwrap();
    let key = fake.api_key().to_owned();
    let url = fake.ws_url();

    let (status, body) = refusal(
        connect_with(
            &url,
            &[
                ("authorization", "Bearer sk_car_wrong"),
                ("cartesia-version", VERSION),
            ],
        )
        .await,
    );
    assert_eq!(status, 401);
    assert_eq!(body["status_code"], 401);
    let (status, _) = refusal(connect_with(&url, &[("cartesia-version", VERSION)]).await);
    assert_eq!(status, 401, "no credential at all");
    // Credentials are checked before the version.
    let (status, _) = refusal(connect_with(&url, &[("x-api-key", "nope")]).await);
    assert_eq!(status, 401);

    connect_with(
        &url,
        &[("x-api-key", key.as_str()), ("cartesia-version", VERSION)],
    )
    .await
    .expect("legacy X-API-Key");
    connect_with(
        &format!("{url}?api_key={key}&cartesia_version={VERSION}"),
        &[],
    )
    .await
    .expect("pipecat-style query key");
    connect_with(
        &format!("{url}?access_token=short-lived-token&cartesia_version={VERSION}"),
        &[],
    )
    .await
    .expect("browser access token");
    let (status, _) = refusal(
        connect_with(
            &format!("{url}?access_token={key}&cartesia_version={VERSION}"),
            &[],
        )
        .await,
    );
    assert_eq!(status, 401, "the API key is not an access token");

    let resp = reqwest::Client::new()
        .post(format!("{}/tts/bytes", fake.http_base()))
        .header("x-api-key", "wrong")
        .header("cartesia-version", VERSION)
        .json(&json!({"model_id": "sonic-3", "transcript": "Hi", "voice": "v", "output_format": mulaw_8k()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    let conns = fake.connections();
    let summary: Vec<(Option<AuthMethod>, Option<u16>)> =
        conns.iter().map(|c| (c.auth, c.refused)).collect();
    assert_eq!(
        summary,
        vec![
            (Some(AuthMethod::Bearer), Some(401)),
            (None, Some(401)),
            (Some(AuthMethod::XApiKey), Some(401)),
            (Some(AuthMethod::XApiKey), None),
            (Some(AuthMethod::QueryApiKey), None),
            (Some(AuthMethod::QueryAccessToken), None),
            (Some(AuthMethod::QueryAccessToken), Some(401)),
        ]
    );
    assert_eq!(conns[0].credential.as_deref(), Some("sk_car_wrong"));
    assert_eq!(conns[3].version.as_deref(), Some(VERSION));
    assert_eq!(conns[3].version_source, Some(VersionSource::Header));
    fake.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Streaming

#[tokio::test]
async fn continuations_stream_the_per_character_audio_with_timestamps_and_done_last() {
    let fake = start().await;
    let mut ws = connect(&fake).await;
    let pieces = ["Hello there, ", "how can I help?"];
    send(&mut ws, &gen("turn-1", pieces[0], true)).await;
    send(&mut ws, &gen("turn-1", pieces[1], true)).await;
    send(&mut ws, &gen("turn-1", "", false)).await;
    let msgs = read_until_finished(&mut ws, &["turn-1"]).await;
    // Nothing follows `done`.
    assert_eq!(next_json(&mut ws, Duration::from_millis(300)).await, None);

    let full = pieces.concat();
    let chars = full.chars().count();
    assert_eq!(chars, 28);
    let audio = audio_of(&msgs, "turn-1");
    assert_eq!(
        audio.len(),
        chars * MULAW_BYTES_PER_CHAR,
        "60 ms of 8 kHz mu-law a char"
    );
    assert_eq!(
        audio,
        fake.expected_audio(&full, &OutputFormat::raw(Encoding::PcmMulaw, 8_000))
    );

    let chunks = of(&msgs, "turn-1", "chunk");
    // 150 ms chunks that never span the two pieces: 13 chars = 6240 bytes = 6 chunks, and
    // 15 chars = 7200 bytes = 6 chunks.
    assert_eq!(chunks.len(), 12);
    for c in &chunks {
        assert_eq!(c["status_code"], 206);
        assert_eq!(c["done"], false);
        assert_eq!(c["flush_id"], 1);
        assert!(c["step_time"].as_f64().unwrap() > 0.0);
        let n = BASE64.decode(c["data"].as_str().unwrap()).unwrap().len();
        assert!((1..=1_200).contains(&n), "chunk of {n} bytes");
    }

    let last = msgs.last().unwrap();
    assert_eq!(last["type"], "done");
    assert_eq!(last["done"], true);
    assert_eq!(
        msgs.iter().filter(|m| m["type"] == "done").count(),
        1,
        "one done"
    );

    // Word timestamps: every word once, in order, at its character offsets (60 ms a char).
    let mut words = Vec::new();
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    for t in of(&msgs, "turn-1", "timestamps") {
        let wt = &t["word_timestamps"];
        words.extend(
            wt["words"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_str().unwrap().to_owned()),
        );
        starts.extend(
            wt["start"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap()),
        );
        ends.extend(
            wt["end"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap()),
        );
    }
    let expected: Vec<&str> = full.split_whitespace().collect();
    assert_eq!(words, expected);
    assert_eq!(starts.len(), words.len());
    assert_eq!(ends.len(), words.len());
    let mut offset = 0usize;
    for (i, w) in expected.iter().enumerate() {
        let at = full[offset..].find(w).unwrap() + offset;
        offset = at + w.len();
        assert!((starts[i] - at as f64 * 0.06).abs() < 1e-9, "start of {w}");
        assert!((ends[i] - offset as f64 * 0.06).abs() < 1e-9, "end of {w}");
        if i > 0 {
            assert!(starts[i] > ends[i - 1], "words in order");
        }
    }
    assert!((ends.last().unwrap() - chars as f64 * 0.06).abs() < 1e-9);

    // The audio is loud inside words and silent in the gaps the timestamps leave.
    let pcm: Vec<i16> = audio.iter().map(|&b| g711::ulaw_to_linear(b)).collect();
    for (s, e) in starts.iter().zip(&ends) {
        let span = &pcm[(s * 8_000.0) as usize..(e * 8_000.0) as usize];
        assert!(
            rms(span) > 2_000.0,
            "speech inside a word: rms {}",
            rms(span)
        );
    }
    for pair in starts.iter().skip(1).zip(&ends) {
        let (next_start, end) = pair;
        // The tail of each gap, after the 10 ms decay.
        let gap = &pcm[((end + 0.02) * 8_000.0) as usize..(next_start * 8_000.0) as usize];
        assert_eq!(rms(gap), 0.0);
    }

    // Every message before `done` is for this context, and each timestamps message follows the
    // chunk that completes its words.
    let mut audible = 0.0;
    for m in &msgs {
        assert_eq!(m["context_id"], "turn-1");
        match m["type"].as_str().unwrap() {
            "chunk" => {
                audible +=
                    BASE64.decode(m["data"].as_str().unwrap()).unwrap().len() as f64 / 8_000.0
            }
            "timestamps" => {
                for e in m["word_timestamps"]["end"].as_array().unwrap() {
                    assert!(e.as_f64().unwrap() <= audible + 1e-9);
                }
            }
            "done" => {}
            other => panic!("unexpected {other}"),
        }
    }

    let ctx = fake.context("turn-1").unwrap();
    assert_eq!(ctx.transcript, full);
    assert_eq!(ctx.pieces, 3);
    assert!(ctx.continued && ctx.input_ended && ctx.done_sent());
    assert_eq!(ctx.chunks_sent, 12);
    assert_eq!(ctx.audio_bytes_sent, audio.len() as u64);
    assert_eq!(
        ctx.timestamps_sent as usize,
        of(&msgs, "turn-1", "timestamps").len()
    );
    assert_eq!(ctx.model_id.as_deref(), Some("sonic-3"));
    assert_eq!(
        ctx.voice_id.as_deref(),
        Some("a0e99841-438c-4a64-b679-ae501e7d6091")
    );
    assert_eq!(ctx.requests.len(), 3);
    assert_eq!(ctx.requests[0]["max_buffer_delay_ms"], 0);
    fake.shutdown().await;
}

#[tokio::test]
async fn interleaved_contexts_on_one_socket_stay_separate() {
    let fake = start().await;
    let mut ws = connect(&fake).await;
    let s16_16k = OutputFormat::raw(Encoding::PcmS16le, 16_000);
    // Context B uses the other two voice shapes and another format.
    let mut b1 = gen("b", "Delta epsilon ", true);
    b1["voice"] = json!("voice-b");
    b1["output_format"] = s16_16k.to_json();
    let mut b2 = gen("b", "zeta.", false);
    b2["voice"] = json!({"id": "voice-b"});
    b2["output_format"] = s16_16k.to_json();
    send(&mut ws, &gen("a", "Alpha beta ", true)).await;
    send(&mut ws, &b1).await;
    send(&mut ws, &gen("a", "gamma.", true)).await;
    send(&mut ws, &b2).await;
    send(&mut ws, &gen("a", "", false)).await;
    let msgs = read_until_finished(&mut ws, &["a", "b"]).await;

    let a = audio_of(&msgs, "a");
    let b = audio_of(&msgs, "b");
    assert_eq!(a.len(), "Alpha beta gamma.".len() * MULAW_BYTES_PER_CHAR);
    assert_eq!(
        a,
        fake.expected_audio(
            "Alpha beta gamma.",
            &OutputFormat::raw(Encoding::PcmMulaw, 8_000)
        )
    );
    assert_eq!(b.len(), "Delta epsilon zeta.".len() * 960 * 2);
    assert_eq!(b, fake.expected_audio("Delta epsilon zeta.", &s16_16k));

    // They really interleave: a chunk of b arrives between chunks of a.
    let pos = |ctx: &str| -> Vec<usize> {
        msgs.iter()
            .enumerate()
            .filter(|(_, m)| m["context_id"] == ctx && m["type"] == "chunk")
            .map(|(i, _)| i)
            .collect()
    };
    let (pa, pb) = (pos("a"), pos("b"));
    assert!(pb[0] < *pa.last().unwrap() && pa[0] < *pb.last().unwrap());
    // Each context's timestamps carry only its own words, and each ends with its own done.
    let words = |ctx: &str| -> Vec<String> {
        of(&msgs, ctx, "timestamps")
            .iter()
            .flat_map(|t| t["word_timestamps"]["words"].as_array().unwrap().clone())
            .map(|w| w.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(words("a"), ["Alpha", "beta", "gamma."]);
    assert_eq!(words("b"), ["Delta", "epsilon", "zeta."]);
    assert_eq!(of(&msgs, "a", "done").len(), 1);
    assert_eq!(of(&msgs, "b", "done").len(), 1);

    let ctxs = fake.contexts();
    assert_eq!(ctxs.len(), 2);
    assert_eq!(ctxs[0].transcript, "Alpha beta gamma.");
    assert_eq!(ctxs[0].pieces, 3);
    assert_eq!(ctxs[1].transcript, "Delta epsilon zeta.");
    assert_eq!(ctxs[1].pieces, 2);
    assert_eq!(ctxs[1].voice_id.as_deref(), Some("voice-b"));
    assert_eq!(ctxs[1].format, Some(s16_16k));
    assert!(ctxs.iter().all(|c| c.done_sent() && c.connection == 0));
    assert_eq!(fake.connections()[0].contexts_opened, 2);
    fake.shutdown().await;
}

#[tokio::test]
async fn cancel_mid_stream_stops_that_context_only() {
    let fake = start().await;
    let mut ws = connect(&fake).await;
    // 98 chars: 5.88 s of audio, 40 chunks, about 1.5 s of streaming at 4x.
    let long = "This is a fairly long answer that gets interrupted by the caller long before it could ever finish.";
    let short = "Short reply here.";
    send(&mut ws, &gen("speak", long, false)).await;
    send(&mut ws, &gen("other", short, false)).await;

    let mut msgs = Vec::new();
    while of(&msgs, "speak", "chunk").len() < 3 {
        msgs.push(
            next_json(&mut ws, Duration::from_secs(2))
                .await
                .expect("chunks"),
        );
    }
    let cancel_sent = msgs.len();
    send(&mut ws, &json!({"context_id": "speak", "cancel": true})).await;
    // The LLM is still streaming: this continuation must be ignored, not spoken.
    send(&mut ws, &gen("speak", " and more words", true)).await;
    while let Some(m) = next_json(&mut ws, Duration::from_millis(600)).await {
        msgs.push(m);
    }

    let speak_chunks = of(&msgs, "speak", "chunk").len();
    let after_cancel = msgs[cancel_sent..]
        .iter()
        .filter(|m| m["context_id"] == "speak")
        .count();
    // At most what was already on the wire when the cancel arrived.
    assert!(after_cancel <= 4, "{after_cancel} messages after cancel");
    assert!(
        speak_chunks < 40,
        "cancelled before the end: {speak_chunks}"
    );
    assert!(
        of(&msgs, "speak", "done").is_empty(),
        "no done after cancel"
    );
    assert!(of(&msgs, "speak", "error").is_empty());
    // The other context is untouched.
    assert_eq!(
        audio_of(&msgs, "other").len(),
        short.len() * MULAW_BYTES_PER_CHAR
    );
    assert_eq!(of(&msgs, "other", "done").len(), 1);

    let speak = fake.context("speak").unwrap();
    assert_eq!(speak.state, ContextState::Cancelled);
    assert!(speak.cancelled() && !speak.done_sent());
    assert_eq!(speak.chunks_sent as usize, speak_chunks);
    assert!(speak.audio_bytes_sent < (long.len() * MULAW_BYTES_PER_CHAR) as u64);
    assert_eq!(speak.ignored_after_cancel, 1);
    assert_eq!(speak.transcript, long);
    assert!(fake.context("other").unwrap().done_sent());
    assert_eq!(
        fake.contexts().len(),
        2,
        "the ignored request opened nothing"
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn invalid_requests_get_a_400_error_for_their_context() {
    let fake = start().await;
    let mut ws = connect(&fake).await;
    let mut bad_encoding = gen("bad-encoding", "Hi", false);
    bad_encoding["output_format"]["encoding"] = json!("pcm_u8");
    let mut bad_rate = gen("bad-rate", "Hi", false);
    bad_rate["output_format"]["sample_rate"] = json!(11_025);
    let mut mp3 = gen("mp3", "Hi", false);
    mp3["output_format"] = json!({"container": "mp3", "sample_rate": 44100, "bit_rate": 128000});
    let mut no_transcript = gen("no-transcript", "Hi", false);
    no_transcript.as_object_mut().unwrap().remove("transcript");
    let mut no_format = gen("no-format", "Hi", false);
    no_format.as_object_mut().unwrap().remove("output_format");

    for (req, id, needle) in [
        (&bad_encoding, "bad-encoding", "pcm_u8"),
        (&bad_rate, "bad-rate", "11025"),
        (&mp3, "mp3", "mp3"),
        (&no_transcript, "no-transcript", "transcript"),
        (&no_format, "no-format", "output_format"),
    ] {
        send(&mut ws, req).await;
        let m = next_json(&mut ws, Duration::from_secs(2))
            .await
            .expect("error");
        assert_eq!(m["type"], "error", "{id}");
        assert_eq!(m["context_id"], id);
        assert_eq!(m["status_code"], 400);
        assert_eq!(m["done"], true);
        assert_eq!(m["title"], "Invalid request");
        assert!(m["message"].as_str().unwrap().contains(needle), "{m}");
        assert!(m["request_id"].as_str().is_some_and(|s| !s.is_empty()));
        assert_eq!(fake.context(id).unwrap().state, ContextState::Failed(400));
    }

    // Not JSON at all: an error without a context.
    ws.send(Message::Text("not json".into())).await.unwrap();
    let m = next_json(&mut ws, Duration::from_secs(2)).await.unwrap();
    assert_eq!(m["type"], "error");
    assert_eq!(m["status_code"], 400);
    assert!(m.get("context_id").is_none());

    // The socket still works, and a continuation after continue:false is refused without
    // disturbing the context.
    send(&mut ws, &gen("fine", "Okay.", false)).await;
    send(&mut ws, &gen("fine", "More?", true)).await;
    let msgs = read_until_finished(&mut ws, &["fine"]).await;
    let errors = of(&msgs, "fine", "error");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["status_code"], 400);
    let msgs = if msgs.last().unwrap()["type"] == "done" {
        msgs
    } else {
        let mut rest = read_until_finished(&mut ws, &["fine"]).await;
        rest.splice(0..0, msgs);
        rest
    };
    assert_eq!(audio_of(&msgs, "fine").len(), 5 * MULAW_BYTES_PER_CHAR);
    let fine = fake.context("fine").unwrap();
    assert!(fine.done_sent());
    assert_eq!(fine.transcript, "Okay.");
    fake.shutdown().await;
}

#[tokio::test]
async fn flush_yields_flush_done_with_its_flush_id() {
    let fake = start().await;
    let mut ws = connect(&fake).await;
    let mut p1 = gen("f", "First part. ", true);
    p1["flush"] = json!(true);
    let mut p2 = gen("f", "Second part.", true);
    p2["flush"] = json!(true);
    send(&mut ws, &p1).await;
    send(&mut ws, &p2).await;
    send(&mut ws, &gen("f", " End.", false)).await;
    let msgs = read_until_finished(&mut ws, &["f"]).await;

    let kinds: Vec<(String, Option<u64>)> = msgs
        .iter()
        .filter(|m| m["type"] != "timestamps")
        .map(|m| {
            (
                m["type"].as_str().unwrap().to_owned(),
                m["flush_id"].as_u64(),
            )
        })
        .collect();
    let fd1 = kinds
        .iter()
        .position(|k| k == &("flush_done".to_owned(), Some(1)))
        .expect("flush_done 1");
    let fd2 = kinds
        .iter()
        .position(|k| k == &("flush_done".to_owned(), Some(2)))
        .expect("flush_done 2");
    assert!(fd1 < fd2);
    assert_eq!(kinds.last().unwrap().0, "done");
    // Chunks before flush_done 1 belong to flush 1, between the two to flush 2, after to 3.
    for (i, (kind, id)) in kinds.iter().enumerate() {
        if kind == "chunk" {
            let want = if i < fd1 {
                1
            } else if i < fd2 {
                2
            } else {
                3
            };
            assert_eq!(*id, Some(want), "chunk {i}");
        }
    }
    let bytes_before = |end: usize| -> usize {
        msgs.iter()
            .filter(|m| m["type"] != "timestamps")
            .take(end)
            .filter(|m| m["type"] == "chunk")
            .map(|m| BASE64.decode(m["data"].as_str().unwrap()).unwrap().len())
            .sum()
    };
    assert_eq!(
        bytes_before(fd1),
        "First part. ".len() * MULAW_BYTES_PER_CHAR
    );
    assert_eq!(
        bytes_before(fd2),
        "First part. Second part.".len() * MULAW_BYTES_PER_CHAR
    );
    let fd = &msgs.iter().find(|m| m["type"] == "flush_done").unwrap();
    assert_eq!(fd["flush_done"], true);
    assert_eq!(fd["done"], false);
    // A flush finishes the words spoken so far: "part." is timestamped before flush_done 2.
    let ts_before_fd2: Vec<&str> = msgs
        .iter()
        .take_while(|m| !(m["type"] == "flush_done" && m["flush_id"] == 2))
        .filter(|m| m["type"] == "timestamps")
        .flat_map(|m| m["word_timestamps"]["words"].as_array().unwrap())
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(ts_before_fd2, ["First", "part.", "Second", "part."]);

    let ctx = fake.context("f").unwrap();
    assert_eq!((ctx.flushes, ctx.flush_dones_sent), (2, 2));
    fake.shutdown().await;
}

#[tokio::test]
async fn wav_on_the_websocket_starts_with_a_streaming_header() {
    let fake = start().await;
    let mut ws = connect(&fake).await;
    let mut req = gen("w", "Hi there.", false);
    req["output_format"] =
        json!({"container": "wav", "encoding": "pcm_s16le", "sample_rate": 24000});
    send(&mut ws, &req).await;
    let msgs = read_until_finished(&mut ws, &["w"]).await;
    let data = audio_of(&msgs, "w");
    assert_eq!(&data[0..4], b"RIFF");
    assert_eq!(u32_at(&data, 4), u32::MAX, "length unknown while streaming");
    assert_eq!(&data[8..16], b"WAVEfmt ");
    assert_eq!(u32_at(&data, 24), 24_000);
    assert_eq!(&data[36..40], b"data");
    assert_eq!(
        data[44..].to_vec(),
        fake.expected_audio("Hi there.", &OutputFormat::raw(Encoding::PcmS16le, 24_000))
    );
    assert_eq!(data.len(), 44 + 9 * 1_440 * 2);
    assert_eq!(
        fake.context("w").unwrap().audio_bytes_sent,
        data.len() as u64
    );
    fake.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// POST /tts/bytes

/// Splits a RIFF/WAVE file into its chunks.
fn riff_chunks(wav: &[u8]) -> Vec<(String, Vec<u8>)> {
    assert_eq!(&wav[0..4], b"RIFF");
    assert_eq!(
        u32::from_le_bytes(wav[4..8].try_into().unwrap()) as usize,
        wav.len() - 8
    );
    assert_eq!(&wav[8..12], b"WAVE");
    let mut out = Vec::new();
    let mut at = 12;
    while at + 8 <= wav.len() {
        let id = String::from_utf8(wav[at..at + 4].to_vec()).unwrap();
        let len = u32::from_le_bytes(wav[at + 4..at + 8].try_into().unwrap()) as usize;
        out.push((id, wav[at + 8..at + 8 + len].to_vec()));
        at += 8 + len + (len & 1);
    }
    assert_eq!(at, wav.len(), "chunks fill the file exactly");
    out
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

#[tokio::test]
async fn tts_bytes_returns_raw_pcm_and_correct_wav() {
    let fake = start().await;
    let http = reqwest::Client::new();
    let post = |body: Value| {
        http.post(format!("{}/tts/bytes", fake.http_base()))
            .header("authorization", format!("Bearer {}", fake.api_key()))
            .header("cartesia-version", VERSION)
            .json(&body)
            .send()
    };
    let transcript = "Your appointment is at noon.";
    let n = transcript.len();

    let resp = post(json!({"model_id": "sonic-3", "transcript": transcript,
        "voice": {"mode": "id", "id": "v"}, "output_format": mulaw_8k()}))
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/octet-stream"
    );
    let raw = resp.bytes().await.unwrap();
    assert_eq!(raw.len(), n * MULAW_BYTES_PER_CHAR);
    assert_eq!(
        raw.to_vec(),
        fake.expected_audio(transcript, &OutputFormat::raw(Encoding::PcmMulaw, 8_000))
    );

    // WAV, 16-bit PCM at 16 kHz: a 44-byte canonical header.
    let resp = post(
        json!({"model_id": "sonic-3", "transcript": transcript, "voice": "v",
        "output_format": {"container": "wav", "encoding": "pcm_s16le", "sample_rate": 16000}}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "audio/wav"
    );
    let wav = resp.bytes().await.unwrap().to_vec();
    assert_eq!(wav.len(), 44 + n * 960 * 2);
    let chunks = riff_chunks(&wav);
    assert_eq!(chunks[0].0, "fmt ");
    let fmt = &chunks[0].1;
    assert_eq!(fmt.len(), 16);
    assert_eq!(u16_at(fmt, 0), 1, "PCM");
    assert_eq!(u16_at(fmt, 2), 1, "mono");
    assert_eq!(u32_at(fmt, 4), 16_000);
    assert_eq!(u32_at(fmt, 8), 32_000, "byte rate");
    assert_eq!(u16_at(fmt, 12), 2, "block align");
    assert_eq!(u16_at(fmt, 14), 16, "bits");
    assert_eq!(chunks[1].0, "data");
    assert_eq!(
        chunks[1].1,
        fake.expected_audio(transcript, &OutputFormat::raw(Encoding::PcmS16le, 16_000))
    );

    // WAV mu-law: format tag 7 with the fact chunk non-PCM formats need.
    let resp = post(
        json!({"model_id": "sonic-3", "transcript": "Hi", "voice": {"id": "v"},
        "output_format": {"container": "wav", "encoding": "pcm_mulaw", "sample_rate": 8000}}),
    )
    .await
    .unwrap();
    let wav = resp.bytes().await.unwrap().to_vec();
    let chunks = riff_chunks(&wav);
    let names: Vec<&str> = chunks.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(names, ["fmt ", "fact", "data"]);
    assert_eq!(u16_at(&chunks[0].1, 0), 7);
    assert_eq!(u16_at(&chunks[0].1, 14), 8);
    assert_eq!(u32_at(&chunks[1].1, 0), 2 * 480, "fact: sample count");
    assert_eq!(chunks[2].1.len(), 2 * 480);

    // An invalid format is a 400 with a Cartesia error body.
    let resp = post(
        json!({"model_id": "sonic-3", "transcript": "Hi", "voice": "v",
        "output_format": {"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 12000}}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status_code"], 400);
    assert!(body["message"].as_str().unwrap().contains("12000"));

    let reqs = fake.http_requests();
    let statuses: Vec<u16> = reqs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 400]);
    assert_eq!(reqs[0].audio_bytes, n * MULAW_BYTES_PER_CHAR);
    assert_eq!(reqs[1].transcript.as_deref(), Some(transcript));
    assert_eq!(reqs[0].auth, Some(AuthMethod::Bearer));
    fake.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Faults

#[tokio::test]
async fn fail_next_refuses_handshakes_http_and_new_contexts() {
    let fake = start().await;

    fake.fail_next(1, 503);
    let auth = format!("Bearer {}", fake.api_key());
    let headers = [
        ("authorization", auth.as_str()),
        ("cartesia-version", VERSION),
    ];
    let (status, body) = refusal(connect_with(&fake.ws_url(), &headers).await);
    assert_eq!(status, 503);
    assert_eq!(body["status_code"], 503);
    let mut ws = connect(&fake).await;

    fake.fail_next(1, 429);
    let resp = reqwest::Client::new()
        .post(format!("{}/tts/bytes", fake.http_base()))
        .header("authorization", &auth)
        .header("cartesia-version", VERSION)
        .json(&json!({"model_id": "sonic-3", "transcript": "Hi", "voice": "v", "output_format": mulaw_8k()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status_code"], 429);

    // On the open socket, the next two new contexts fail; continuations of a live one do not.
    send(&mut ws, &gen("live", "Still ", true)).await;
    // Arm the failure only once "live" exists, or it would fail "live" itself.
    assert!(
        fake.wait_for(Duration::from_secs(10), |f| f.context("live").is_some())
            .await
    );
    fake.fail_next(2, 500);
    send(&mut ws, &gen("x1", "Hi", false)).await;
    send(&mut ws, &gen("live", "here.", false)).await;
    send(&mut ws, &gen("x2", "Hi", false)).await;
    send(&mut ws, &gen("x3", "Hi", false)).await;
    let msgs = read_until_finished(&mut ws, &["live", "x1", "x2", "x3"]).await;
    for id in ["x1", "x2"] {
        let e = of(&msgs, id, "error");
        assert_eq!(e.len(), 1, "{id}");
        assert_eq!(e[0]["status_code"], 500);
        assert!(of(&msgs, id, "chunk").is_empty());
    }
    assert_eq!(audio_of(&msgs, "x3").len(), 2 * MULAW_BYTES_PER_CHAR);
    assert_eq!(audio_of(&msgs, "live").len(), 11 * MULAW_BYTES_PER_CHAR);
    assert_eq!(of(&msgs, "live", "done").len(), 1);

    let x1 = fake.context("x1").unwrap();
    assert!(x1.injected_failure);
    assert_eq!(x1.state, ContextState::Failed(500));
    assert!(fake.connections()[0].injected_failure);
    assert!(fake.http_requests()[0].injected_failure);
    fake.shutdown().await;
}

#[tokio::test]
async fn first_chunk_delay_and_pacing_follow_the_settings() {
    let fake = start().await;
    let mut ws = connect(&fake).await;

    // Default: about 80 ms to the first chunk.
    let t0 = Instant::now();
    send(&mut ws, &gen("quick", "Hi.", false)).await;
    let m = next_json(&mut ws, Duration::from_secs(2)).await.unwrap();
    let ttfc = t0.elapsed();
    assert_eq!(m["type"], "chunk");
    assert!(
        ttfc >= Duration::from_millis(75) && ttfc < Duration::from_millis(350),
        "{ttfc:?}"
    );
    read_until_finished(&mut ws, &["quick"]).await;

    fake.set_first_chunk_delay(Duration::from_millis(500));
    let t0 = Instant::now();
    // 40 chars: 2.4 s of audio in 16 chunks; at 4x the last chunk is due 15 * 150 / 4 ms
    // after the first.
    send(
        &mut ws,
        &gen("slow", "Forty characters of text arrive here now", false),
    )
    .await;
    let m = next_json(&mut ws, Duration::from_secs(2)).await.unwrap();
    let ttfc = t0.elapsed();
    assert_eq!(m["type"], "chunk");
    assert!(
        ttfc >= Duration::from_millis(490) && ttfc < Duration::from_millis(900),
        "{ttfc:?}"
    );
    let first_at = Instant::now();
    let mut msgs = vec![m];
    msgs.extend(read_until_finished(&mut ws, &["slow"]).await);
    let spread = first_at.elapsed();
    assert_eq!(of(&msgs, "slow", "chunk").len(), 16);
    assert!(
        spread >= Duration::from_millis(500) && spread < Duration::from_millis(1_200),
        "{spread:?}"
    );
    let ctx = fake.context("slow").unwrap();
    let measured = ctx.first_chunk_at.unwrap() - ctx.opened_at;
    assert!(measured >= Duration::from_millis(490), "{measured:?}");
    fake.shutdown().await;
}

#[tokio::test]
async fn stalled_context_never_answers_while_others_do() {
    let fake = start().await;
    let mut ws = connect(&fake).await;
    fake.stall_next_context();
    send(&mut ws, &gen("stuck", "Hello?", true)).await;
    send(&mut ws, &gen("stuck", "", false)).await;
    send(&mut ws, &gen("fine", "Hi.", false)).await;
    let msgs = read_until_finished(&mut ws, &["fine"]).await;
    assert!(msgs.iter().all(|m| m["context_id"] == "fine"));
    // Nothing at all for the stalled context, well past its first-chunk delay.
    assert_eq!(next_json(&mut ws, Duration::from_millis(700)).await, None);

    let stuck = fake.context("stuck").unwrap();
    assert!(stuck.stalled);
    assert_eq!(stuck.transcript, "Hello?");
    assert_eq!(stuck.pieces, 2);
    assert_eq!(stuck.state, ContextState::Closing);
    assert_eq!((stuck.chunks_sent, stuck.audio_bytes_sent), (0, 0));
    assert!(!fake.context("fine").unwrap().stalled);

    // The client gives up and cancels; the socket is still fine.
    send(&mut ws, &json!({"context_id": "stuck", "cancel": true})).await;
    assert!(
        fake.wait_for(Duration::from_secs(10), |f| f
            .context("stuck")
            .is_some_and(|c| c.cancelled()))
            .await
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn dropped_connection_ends_without_a_close_frame() {
    let fake = start().await;
    let mut ws = connect(&fake).await;
    // 60 chars: 24 chunks over about 0.9 s at 4x.
    send(
        &mut ws,
        &gen(
            "long",
            "This sentence is long enough to still be streaming when cut.",
            false,
        ),
    )
    .await;
    let first = next_json(&mut ws, Duration::from_secs(2)).await.unwrap();
    assert_eq!(first["type"], "chunk");
    fake.drop_connection_after(Duration::from_millis(150));

    let mut chunks = 1;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
            Err(_) => panic!("the connection was not dropped"),
            Ok(Some(Ok(Message::Text(t)))) => {
                let m: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_ne!(m["type"], "done", "dropped before the end");
                if m["type"] == "chunk" {
                    chunks += 1;
                }
            }
            Ok(other) => break other,
        }
    };
    assert!(
        matches!(
            end,
            Some(Err(WsError::Protocol(_))) | Some(Err(WsError::Io(_))) | None
        ),
        "an abrupt end, not a close frame: {end:?}"
    );
    assert!(chunks < 24);

    assert!(
        fake.wait_for(Duration::from_secs(10), |f| f.connections()[0].close
            == Some(CloseReason::Dropped))
            .await
    );
    assert_eq!(fake.context("long").unwrap().state, ContextState::Abandoned);
    // A new socket is unaffected.
    let mut ws2 = connect(&fake).await;
    send(&mut ws2, &gen("again", "Hi.", false)).await;
    let msgs = read_until_finished(&mut ws2, &["again"]).await;
    assert_eq!(msgs.last().unwrap()["type"], "done");
    fake.shutdown().await;
}

#[tokio::test]
async fn idle_sockets_are_closed_after_the_configured_time() {
    let fake = start().await;
    assert_eq!(
        fake.config().idle_timeout,
        Duration::from_secs(300),
        "Cartesia's five minutes by default"
    );
    fake.close_idle_after(Duration::from_millis(400));
    let mut ws = connect(&fake).await;
    // Activity keeps it open: a context that streams past the idle time.
    let t0 = Instant::now();
    send(
        &mut ws,
        &gen("busy", "Thirty-eight characters keep it busy..", false),
    )
    .await;
    let msgs = read_until_finished(&mut ws, &["busy"]).await;
    assert!(t0.elapsed() > Duration::from_millis(400));
    assert_eq!(msgs.last().unwrap()["type"], "done");

    let quiet_from = Instant::now();
    let frame = match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
        Err(_) => panic!("not closed when idle"),
        Ok(Some(Ok(Message::Close(frame)))) => frame,
        Ok(other) => panic!("expected a close frame, got {other:?}"),
    };
    let waited = quiet_from.elapsed();
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_millis(1_000),
        "{waited:?}"
    );
    assert_eq!(
        u16::from(frame.expect("a close frame with a code").code),
        1000
    );
    // Reading on sends our close reply, completing the closing handshake.
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.next()).await;
    assert!(
        fake.wait_for(Duration::from_secs(10), |f| f.connections()[0].close
            == Some(CloseReason::Idle))
            .await
    );
    assert!(!fake.connections()[0].open);
    fake.shutdown().await;
}
