//! The HTTP side (sections 3.1 and 3.4): routes, credentials, `Cartesia-Version`, injected
//! failures, the WebSocket handshake and `POST /tts/bytes`.
//!
//! Checks run in the same order on both endpoints: credentials (401), then version (400), then
//! an armed [`super::FakeCartesia::fail_next`], then the request itself. A refused handshake is
//! an ordinary HTTP response with a Cartesia error body, which is what a WebSocket client sees
//! as a failed upgrade.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;

use super::audio;
use super::format::Container;
use super::session;
use super::state::Shared;
use super::wire::{self, WireError};
use super::{AuthMethod, ConnectionSnapshot, FakeCartesiaConfig, HttpRequestRecord, VersionSource};

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/tts/websocket", get(open_websocket))
        .route("/tts/bytes", post(tts_bytes))
        .fallback(not_found)
        .with_state(shared)
}

fn error_response(e: &WireError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(e.http_body())).into_response()
}

async fn not_found() -> Response {
    error_response(&WireError::not_found())
}

/// What the credentials check found.
struct Credentials {
    method: Option<AuthMethod>,
    presented: Option<String>,
    valid: bool,
}

/// Looks at every place a credential may be (the query only on the WebSocket) and accepts the
/// request if any of them holds a valid one; the one recorded is that valid one, or else the
/// first presented.
fn check_credentials(
    cfg: &FakeCartesiaConfig,
    headers: &HeaderMap,
    query: Option<&HashMap<String, String>>,
) -> Credentials {
    let mut presented: Vec<(AuthMethod, String)> = Vec::new();
    if let Some(v) = header_str(headers, header::AUTHORIZATION.as_str()) {
        let token = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .unwrap_or(v);
        presented.push((AuthMethod::Bearer, token.trim().to_owned()));
    }
    if let Some(v) = header_str(headers, "x-api-key") {
        presented.push((AuthMethod::XApiKey, v.trim().to_owned()));
    }
    if let Some(q) = query {
        if let Some(v) = q.get("access_token") {
            presented.push((AuthMethod::QueryAccessToken, v.clone()));
        }
        if let Some(v) = q.get("api_key") {
            presented.push((AuthMethod::QueryApiKey, v.clone()));
        }
    }
    let is_valid = |method: AuthMethod, value: &str| {
        let key_ok = value == cfg.api_key && method != AuthMethod::QueryAccessToken;
        // Access tokens stand in for the key wherever a bearer credential goes.
        let token_ok = matches!(method, AuthMethod::Bearer | AuthMethod::QueryAccessToken)
            && cfg.access_tokens.iter().any(|t| t == value);
        !value.is_empty() && (key_ok || token_ok)
    };
    let chosen = presented
        .iter()
        .find(|(m, v)| is_valid(*m, v))
        .or(presented.first());
    Credentials {
        method: chosen.map(|(m, _)| *m),
        presented: chosen.map(|(_, v)| v.clone()),
        valid: chosen.is_some_and(|(m, v)| is_valid(*m, v)),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The API version: `?cartesia_version=` (WebSocket only) wins over the header (section 3.1).
fn find_version(
    headers: &HeaderMap,
    query: Option<&HashMap<String, String>>,
) -> Option<(String, VersionSource)> {
    if let Some(v) = query.and_then(|q| q.get("cartesia_version")) {
        return Some((v.clone(), VersionSource::Query));
    }
    header_str(headers, "cartesia-version").map(|v| (v.trim().to_owned(), VersionSource::Header))
}

/// `YYYY-MM-DD`, digits where digits go. Any such date is accepted: the fake does not know
/// which versions the real API retired.
fn version_is_valid(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            _ => c.is_ascii_digit(),
        })
}

/// Credentials, version and injected failure, in that order; `Err` is the refusal.
fn admit(
    shared: &Shared,
    creds: &Credentials,
    version: &Option<(String, VersionSource)>,
) -> Result<(), (WireError, bool)> {
    if !creds.valid {
        let msg = if creds.presented.is_none() {
            "Missing API key: send `Authorization: Bearer <key>` (or `X-API-Key`)."
        } else {
            "Invalid API key."
        };
        return Err((WireError::unauthorized(msg), false));
    }
    match version {
        None => {
            return Err((
                WireError::bad_version(
                    "The Cartesia-Version header is required (for example `Cartesia-Version: 2025-04-16`).",
                ),
                false,
            ))
        }
        Some((v, _)) if !version_is_valid(v) => {
            return Err((
                WireError::bad_version(format!(
                    "Invalid Cartesia-Version `{v}`: expected a date like 2025-04-16."
                )),
                false,
            ))
        }
        Some(_) => {}
    }
    if let Some(status) = shared.lock().take_failure() {
        return Err((WireError::injected(status), true));
    }
    Ok(())
}

/// `GET /tts/websocket`: the handshake. Refusals are recorded as connections too.
async fn open_websocket(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let creds = check_credentials(&shared.cfg, &headers, Some(&query));
    let version = find_version(&headers, Some(&query));
    let admitted = admit(&shared, &creds, &version).and_then(|()| {
        upgrade.map_err(|_| {
            (
                WireError::invalid("This endpoint only accepts WebSocket upgrades."),
                false,
            )
        })
    });
    let refusal = admitted.as_ref().err();
    let index = {
        let mut st = shared.lock();
        let index = st.connections.len();
        st.connections.push(ConnectionSnapshot {
            index,
            trace: crate::TraceHeaders::of(&headers),
            auth: creds.method,
            credential: creds.presented.clone(),
            version: version.as_ref().map(|(v, _)| v.clone()),
            version_source: version.as_ref().map(|(_, s)| *s),
            refused: refusal.map(|(e, _)| e.status),
            injected_failure: refusal.is_some_and(|(_, injected)| *injected),
            open: refusal.is_none(),
            close: None,
            messages_received: 0,
            contexts_opened: 0,
            opened_at: Instant::now(),
            closed_at: None,
        });
        index
    };
    let upgrade = match admitted {
        Ok(upgrade) => upgrade,
        Err((e, _)) => return error_response(&e),
    };
    let failed = shared.clone();
    upgrade
        // tungstenite zero-fills its whole read buffer (128 KiB by default) on every read.
        .read_buffer_size(8 * 1024)
        .on_failed_upgrade(move |_| {
            session::mark_closed(&failed, index, super::CloseReason::UpgradeFailed)
        })
        .on_upgrade(move |socket| session::run(shared, index, socket))
}

/// `POST /tts/bytes`: the whole audio in one body after the first-chunk delay (raw: headerless
/// samples; wav: a RIFF header with exact sizes, then the samples).
async fn tts_bytes(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let creds = check_credentials(&shared.cfg, &headers, None);
    let version = find_version(&headers, None);
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut record = HttpRequestRecord {
        auth: creds.method,
        credential: creds.presented.clone(),
        version: version.as_ref().map(|(v, _)| v.clone()),
        body: parsed.clone(),
        status: 200,
        injected_failure: false,
        format: None,
        transcript: None,
        audio_bytes: 0,
        received_at: Instant::now(),
    };
    let outcome = answer_bytes(&shared, &creds, &version, &parsed, &mut record).await;
    let response = match outcome {
        Ok(resp) => resp,
        Err(e) => {
            record.status = e.status;
            error_response(&e)
        }
    };
    shared.lock().http.push(record);
    response
}

async fn answer_bytes(
    shared: &Shared,
    creds: &Credentials,
    version: &Option<(String, VersionSource)>,
    parsed: &Value,
    record: &mut HttpRequestRecord,
) -> Result<Response, WireError> {
    admit(shared, creds, version).map_err(|(e, injected)| {
        record.injected_failure = injected;
        e
    })?;
    let Value::Object(obj) = parsed else {
        return Err(WireError::invalid(
            "The request body must be a JSON object.",
        ));
    };
    let generation = wire::parse_generation(obj, false)?;
    record.format = Some(generation.format);
    record.transcript = Some(generation.transcript.clone());
    let delay = shared.lock().first_chunk_delay;
    tokio::time::sleep(delay).await;
    let format = generation.format;
    let samples = audio::synthesize(&generation.transcript, &format, shared.cfg.ms_per_char);
    let (bytes, content_type) = match format.container {
        Container::Raw => (samples, "application/octet-stream"),
        Container::Wav => {
            let mut out = audio::wav_header(&format, Some(samples.len()));
            out.extend_from_slice(&samples);
            (out, "audio/wav")
        }
    };
    record.audio_bytes = bytes.len();
    let mut resp = (StatusCode::OK, bytes).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_must_look_like_dates() {
        assert!(version_is_valid("2025-04-16"));
        assert!(!version_is_valid("2025-4-16"));
        assert!(!version_is_valid("latest"));
        assert!(!version_is_valid(""));
    }

    #[test]
    fn any_valid_credential_admits() {
        let cfg = FakeCartesiaConfig {
            access_tokens: vec!["tok".into()],
            ..FakeCartesiaConfig::default()
        };
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("wrong"));
        let q: HashMap<String, String> = [("access_token".to_owned(), "tok".to_owned())].into();
        let c = check_credentials(&cfg, &h, Some(&q));
        assert!(c.valid);
        assert_eq!(c.method, Some(AuthMethod::QueryAccessToken));
        let c = check_credentials(&cfg, &h, None);
        assert!(!c.valid);
        assert_eq!(c.method, Some(AuthMethod::XApiKey));
        // An access token is not an API key.
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("tok"));
        assert!(!check_credentials(&cfg, &h, None).valid);
    }
}
