//! The wire side of the fake: the `/v1/listen` handshake (section 2.1) and the per-connection
//! loop that reads audio and control frames (section 2.2) and writes what the
//! [`Transcriber`] produces (section 2.3), with the injected faults.
//!
//! A connection is one task owning its WebSocket, so a fault can cut it cleanly: a drop returns
//! from the task and the socket is closed with no close frame; a stall stops polling the socket
//! altogether (tungstenite answers pings only while it is read, so even pongs stop).
//! Outgoing messages go through a queue with due times, which is how latency delays them without
//! reordering, and how a close frame is sent only after the messages queued before it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::time::{sleep_until, Instant};
use uuid::Uuid;

use super::params;
use super::transcriber::{NextLine, Transcriber, Tuning};
use super::{ConnectionEnd, ConnectionFaults, ListenConnection, Shared};

/// How long to wait for the client's close frame after ours, or for the socket to end after
/// theirs.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
const DG_REQUEST_ID: HeaderName = HeaderName::from_static("dg-request-id");
const DG_ERROR: HeaderName = HeaderName::from_static("dg-error");

/// Every path goes to [`listen`], which answers 404 for anything but `/v1/listen` and records
/// it, so that a client with a wrong URL shows up in [`super::FakeDeepgram::connections`].
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(listen).with_state(shared)
}

/// Resolves once the fake is told to stop, or its stop sender is gone.
pub(crate) use crate::fake::stopped;

/// The handshake. Checks run in the order Deepgram's would matter to a client: an injected
/// refusal, the path, credentials (401), the query (400), and last the upgrade headers.
async fn listen(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let request_id = Uuid::new_v4().to_string();
    // `None`: the query string is not valid `application/x-www-form-urlencoded`.
    let query = Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .ok()
        .map(|q| q.0);
    let header_str = |name: header::HeaderName| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let mut st = shared.lock();
    let id = st.connections.len();
    st.connections.push(ListenConnection {
        id,
        request_id: request_id.clone(),
        trace: crate::TraceHeaders::of(&headers),
        path: uri.path().to_owned(),
        query: query.clone().unwrap_or_default(),
        authorization: header_str(header::AUTHORIZATION),
        protocols: header_str(header::SEC_WEBSOCKET_PROTOCOL),
        status: 0,
        dg_error: None,
        open: false,
        audio_frames: 0,
        audio_bytes: 0,
        audio_seconds: 0.0,
        keepalives: 0,
        finalizes: 0,
        close_streams: 0,
        unknown_text: 0,
        sent: Vec::new(),
        stalled: false,
        end: None,
    });

    let refused = |st: &mut super::State, status: u16, message: &str| {
        let c = &mut st.connections[id];
        c.status = status;
        c.dg_error = Some(message.to_owned());
        refusal(status, &request_id, message)
    };

    if let Some(status) = st.refuse_next.take() {
        return refused(&mut st, status, injected_message(status));
    }
    if uri.path() != "/v1/listen" {
        return refused(&mut st, 404, "Not Found.");
    }
    let via_protocol = match check_auth(&headers, &shared.config.api_key) {
        Auth::Ok { via_protocol } => via_protocol,
        Auth::Missing => {
            return refused(
                &mut st,
                401,
                "Missing credentials: send `Authorization: Token <key>`.",
            )
        }
        Auth::Invalid => return refused(&mut st, 401, "Invalid credentials."),
    };
    let Some(pairs) = query else {
        return refused(&mut st, 400, "Invalid query string.");
    };
    let params = match params::parse(&pairs, shared.config.min_utterance_end_ms) {
        Ok(p) => p,
        Err(message) => return refused(&mut st, 400, &message),
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => {
            let status = rejection.status().as_u16();
            return refused(&mut st, status, &rejection.body_text());
        }
    };

    st.connections[id].status = 101;
    let faults = std::mem::take(&mut st.next_faults);
    let next_line: NextLine = match params.tags.iter().find(|t| st.tag_scripts.contains_key(*t)) {
        Some(tag) => {
            let tag = tag.clone();
            let shared = shared.clone();
            Box::new(move || shared.lock().tag_scripts.get_mut(&tag)?.pop_front())
        }
        None => {
            let mut lines: VecDeque<String> = st.script.iter().cloned().collect();
            Box::new(move || lines.pop_front())
        }
    };
    drop(st);

    let cfg = &shared.config;
    let tuning = Tuning {
        threshold_rms: 32_768.0 * 10f64.powf(cfg.vad_threshold_dbfs / 20.0),
        hangover: cfg.vad_hangover,
        interim_interval: cfg.interim_interval,
        word_duration: cfg.word_duration,
    };
    let transcriber = Transcriber::new(
        params,
        &tuning,
        next_line,
        request_id.clone(),
        chrono::Utc::now(),
    );
    // The browser form of auth (section 2.1) needs the server to pick the `token` protocol,
    // or the client aborts the upgrade.
    let upgrade = if via_protocol {
        upgrade.protocols(["token"])
    } else {
        upgrade
    };
    let shared2 = shared.clone();
    // tungstenite zero-fills its whole read buffer (128 KiB by default) on every read: on a
    // benchmark box shared with the engine, that memset was most of the fakes' CPU.
    let mut response = upgrade
        .read_buffer_size(8 * 1024)
        .on_upgrade(move |ws| run(shared2, id, ws, transcriber, faults));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(DG_REQUEST_ID, v);
    }
    response
}

enum Auth {
    Ok { via_protocol: bool },
    Missing,
    Invalid,
}

/// `Authorization: Token <key>` or `Bearer <key>` (scheme case-insensitive); failing that,
/// `Sec-WebSocket-Protocol: token, <key>`.
fn check_auth(headers: &HeaderMap, key: &str) -> Auth {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().unwrap_or("").trim();
        let (scheme, credential) = value.split_once(' ').unwrap_or((value, ""));
        let scheme_ok =
            scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer");
        return if scheme_ok && credential.trim() == key {
            Auth::Ok {
                via_protocol: false,
            }
        } else {
            Auth::Invalid
        };
    }
    if let Some(value) = headers.get(header::SEC_WEBSOCKET_PROTOCOL) {
        let parts: Vec<&str> = value
            .to_str()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .collect();
        if let [scheme, credential] = parts[..] {
            if scheme.eq_ignore_ascii_case("token") {
                return if credential == key {
                    Auth::Ok { via_protocol: true }
                } else {
                    Auth::Invalid
                };
            }
        }
    }
    Auth::Missing
}

/// `dg-error` of an injected refusal. Only 400/401 texts are documented; the rest are
/// plausible ([UNVERIFIED]).
fn injected_message(status: u16) -> &'static str {
    match status {
        400 => "Bad Request.",
        401 => "Invalid credentials.",
        402 => "Project does not have enough credits for this request.",
        403 => "Insufficient permissions.",
        429 => "Too many requests. Please try again later.",
        503 => "Service unavailable.",
        s if s >= 500 => "Internal server error.",
        _ => "Request refused.",
    }
}

/// A refused handshake: `status`, `dg-request-id`, `dg-error` and Deepgram's JSON error body.
fn refusal(status: u16, request_id: &str, message: &str) -> Response {
    let err_code = match status {
        400 => "Bad Request",
        401 => "INVALID_AUTH",
        402 => "ASR_PAYMENT_REQUIRED",
        403 => "INSUFFICIENT_PERMISSIONS",
        404 => "NOT_FOUND",
        429 => "TOO_MANY_REQUESTS",
        _ => "INTERNAL_SERVER_ERROR",
    };
    let body = json!({"err_code": err_code, "err_msg": message, "request_id": request_id});
    // Header values must be visible ASCII; a query value echoed in the message may not be.
    let header_safe: String = message
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body.to_string()),
    )
        .into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(DG_REQUEST_ID, v);
    }
    if let Ok(v) = HeaderValue::from_str(&header_safe) {
        h.insert(DG_ERROR, v);
    }
    response
}

/// Something the connection will send.
enum Outgoing {
    Message(Value),
    Close(u16, String),
}

/// An [`Outgoing`] and when it may go.
struct Queued {
    due: Instant,
    what: Outgoing,
}

/// One accepted connection, from upgrade to end; the socket closes when this returns.
async fn run(
    shared: Arc<Shared>,
    id: usize,
    mut ws: WebSocket,
    mut transcriber: Transcriber,
    faults: ConnectionFaults,
) {
    shared.update(id, |c| c.open = true);
    let end = session(&shared, id, &mut ws, &mut transcriber, faults).await;
    shared.update(id, |c| {
        c.open = false;
        c.end = Some(end);
    });
}

async fn session(
    shared: &Shared,
    id: usize,
    ws: &mut WebSocket,
    transcriber: &mut Transcriber,
    faults: ConnectionFaults,
) -> ConnectionEnd {
    let cfg = &shared.config;
    let started = Instant::now();
    let drop_at = faults.drop_after.map(|d| started + d);
    let stall_at = faults.stall_after.map(|d| started + d);
    let mut idle_deadline = started + cfg.idle_timeout;
    let mut outbox: VecDeque<Queued> = VecDeque::new();
    // A close frame is queued: input is still counted but no longer processed.
    let mut closing = false;
    // Our close frame went out; waiting for the client's reply until the deadline.
    let mut close_sent: Option<(u16, String, Instant)> = None;

    let enqueue = |outbox: &mut VecDeque<Queued>, messages: Vec<Value>| {
        let due = Instant::now() + shared.lock().latency;
        outbox.extend(messages.into_iter().map(|m| Queued {
            due,
            what: Outgoing::Message(m),
        }));
    };
    // Closes are due at once but leave only after everything queued before them.
    let close = |outbox: &mut VecDeque<Queued>, code: u16, reason: &str| {
        outbox.push_back(Queued {
            due: Instant::now(),
            what: Outgoing::Close(code, reason.to_owned()),
        });
    };

    loop {
        let next_due = match close_sent {
            None => outbox.front().map(|q| q.due),
            Some(_) => None,
        };
        let close_deadline = close_sent.as_ref().map(|(_, _, t)| *t);
        tokio::select! {
            biased;
            () = stopped(shared.stop.clone()) => return ConnectionEnd::Shutdown,
            () = at(drop_at) => return ConnectionEnd::Dropped,
            () = at(stall_at) => {
                shared.update(id, |c| c.stalled = true);
                stopped(shared.stop.clone()).await;
                return ConnectionEnd::Shutdown;
            }
            () = at(close_deadline) => {
                if let Some((code, reason, _)) = close_sent.take() {
                    return ConnectionEnd::ServerClosed { code, reason };
                }
            }
            () = at(next_due) => {
                let Some(q) = outbox.pop_front() else { continue };
                match q.what {
                    Outgoing::Message(m) => {
                        if ws.send(Message::Text(m.to_string().into())).await.is_err() {
                            return ConnectionEnd::Vanished;
                        }
                        shared.update(id, |c| c.sent.push(m));
                    }
                    Outgoing::Close(code, reason) => {
                        let frame = CloseFrame { code, reason: reason.as_str().into() };
                        // If the client is already gone, the deadline below ends the session.
                        let _ = ws.send(Message::Close(Some(frame))).await;
                        close_sent = Some((code, reason, Instant::now() + CLOSE_GRACE));
                    }
                }
            }
            () = sleep_until(idle_deadline), if !closing => {
                closing = true;
                close(&mut outbox, 1011, "NET-0001");
            }
            msg = ws.recv() => match msg {
                None | Some(Err(_)) => {
                    return match close_sent {
                        Some((code, reason, _)) => ConnectionEnd::ServerClosed { code, reason },
                        None => ConnectionEnd::Vanished,
                    };
                }
                Some(Ok(Message::Close(frame))) => {
                    if let Some((code, reason, _)) = close_sent {
                        return ConnectionEnd::ServerClosed { code, reason };
                    }
                    // tungstenite queued the close reply; reading on flushes it.
                    let _ = tokio::time::timeout(CLOSE_GRACE, ws.recv()).await;
                    return ConnectionEnd::ClientClosed {
                        code: frame.as_ref().map(|f| f.code),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    };
                }
                Some(Ok(Message::Binary(bytes))) => {
                    let len = bytes.len() as u64;
                    shared.update(id, |c| {
                        c.audio_frames += 1;
                        c.audio_bytes += len;
                    });
                    if closing {
                        continue;
                    }
                    if bytes.is_empty() {
                        // Section 2.2: an empty binary frame is not audio; Deepgram closes.
                        closing = true;
                        close(&mut outbox, cfg.data_error_close_code, "DATA-0000");
                        continue;
                    }
                    idle_deadline = Instant::now() + cfg.idle_timeout;
                    let mut out = Vec::new();
                    transcriber.audio(&bytes, &mut out);
                    let secs = transcriber.audio_seconds();
                    shared.update(id, |c| c.audio_seconds = secs);
                    enqueue(&mut outbox, out);
                }
                Some(Ok(Message::Text(text))) => {
                    let kind = serde_json::from_str::<Value>(text.as_str())
                        .ok()
                        .and_then(|v| v.get("type")?.as_str().map(str::to_owned));
                    let mut out = Vec::new();
                    match kind.as_deref() {
                        Some("KeepAlive") => {
                            shared.update(id, |c| c.keepalives += 1);
                            if !closing {
                                idle_deadline = Instant::now() + cfg.idle_timeout;
                            }
                        }
                        Some("Finalize") => {
                            shared.update(id, |c| c.finalizes += 1);
                            if !closing {
                                transcriber.finalize(&mut out);
                            }
                        }
                        Some("CloseStream") => {
                            shared.update(id, |c| c.close_streams += 1);
                            if !closing {
                                transcriber.close_stream(&mut out);
                                enqueue(&mut outbox, std::mem::take(&mut out));
                                closing = true;
                                close(&mut outbox, 1000, "");
                            }
                        }
                        _ => shared.update(id, |c| c.unknown_text += 1),
                    }
                    enqueue(&mut outbox, out);
                }
                // tungstenite answers pings by itself while the socket is read.
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Sleeps until `t`, or forever.
async fn at(t: Option<Instant>) {
    match t {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}
