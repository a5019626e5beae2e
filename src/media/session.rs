//! One media stream from upgrade to close, on its own task: authenticate (the upgrade header's
//! token or a `connected` frame), wait for `start`, run the started stream ([`super::stream`])
//! and close (vendor-protocols.md §1.5).
//!
//! Every socket write has a deadline, so a stalled peer ends its own stream instead of holding
//! it open; nothing here waits on another stream or on a handle caller. The sink hears about a
//! stream only once it is authenticated and started; then about its caller audio, mark echoes
//! and keys as their frames arrive; then `stopped` exactly once, after which it hears nothing.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use prometheus::IntGauge;
use tokio::time::{timeout, timeout_at, Instant};
use tracing::Instrument;
use uuid::Uuid;

use super::metrics::{kind, MediaMetrics};
use super::registry::{MediaHandle, Registration};
use super::stream::{vendor_error, Codec, Stream, WRITE_TIMEOUT};
use super::{MediaState, StreamEnd, StreamInfo};
use crate::clients::telnyx::media_wire::{Inbound, StartBody};

/// How long we wait for the peer's half of the close handshake before dropping the socket.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// WebSocket close codes (RFC 6455 §7.4.1).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_POLICY: u16 = 1008;

/// Entry point for an upgraded socket. `header_call` is the call the upgrade header's token
/// named, if the header was sent (the handler already refused a bad one).
pub(super) async fn run(socket: WebSocket, state: MediaState, header_call: Option<Uuid>) {
    let span = tracing::info_span!(
        "media_stream",
        call_id = tracing::field::Empty,
        stream_id = tracing::field::Empty,
    );
    serve(socket, state, header_call).instrument(span).await;
}

async fn serve(mut socket: WebSocket, state: MediaState, header_call: Option<Uuid>) {
    let Some(Opening {
        call_id,
        stream_id,
        start,
    }) = open(&mut socket, &state, header_call).await
    else {
        return;
    };
    let span = tracing::Span::current();
    span.record("call_id", tracing::field::display(call_id));
    span.record("stream_id", stream_id.as_str());

    if let Some(claimed) = start.client_state.as_deref().and_then(client_state_call) {
        if claimed != call_id {
            state.metrics.error(kind::CLIENT_STATE);
            tracing::warn!(%claimed, "media stream refused: client_state names another call");
            close(
                &mut socket,
                CLOSE_POLICY,
                "client_state does not match token",
            )
            .await;
            return;
        }
    }

    let format = start.media_format;
    let info = StreamInfo {
        stream_id: stream_id.clone(),
        call_control_id: start.call_control_id,
        encoding: format.encoding,
        sample_rate: format.sample_rate,
        channels: format.channels,
    };
    let codec = Codec::of(&info.encoding);
    let (handle, rx, shared) = MediaHandle::channel(
        stream_id,
        state.config.outbound_capacity,
        state.metrics.error_counter(kind::DROPPED_OUTBOUND),
    );
    // Registered before `started` so the sink can look the handle up straight away.
    let active = Active::new(
        state.registry.register(call_id, handle),
        state.metrics.streams_active.clone(),
    );
    let mut stream = Stream::new(&state, call_id, codec, &info, rx, shared);
    tracing::info!(
        encoding = %info.encoding,
        sample_rate = info.sample_rate,
        playable = codec != Codec::Other,
        "media stream started"
    );
    state.sink.started(call_id, info);

    let end = stream.play(&mut socket).await;
    drop(active);
    let stats = stream.finish(end);
    drop(stream);
    state.metrics.gaps.inc_by(stats.gaps);
    state.metrics.jitter.observe(stats.jitter_ms / 1000.0);
    if end == StreamEnd::IdleTimeout {
        state.metrics.error(kind::IDLE_TIMEOUT);
    }
    tracing::info!(
        end = ?stats.end,
        frames_in = stats.frames_in,
        frames_out = stats.frames_out,
        gaps = stats.gaps,
        out_of_order = stats.out_of_order,
        jitter_ms = stats.jitter_ms,
        errors = stats.errors,
        dropped_out = stats.dropped_out,
        duration_ms = stats.duration_ms,
        "media stream stopped"
    );
    state.sink.stopped(call_id, stats);

    match end {
        StreamEnd::Stop => close(&mut socket, CLOSE_NORMAL, "stream stopped").await,
        StreamEnd::IdleTimeout => close(&mut socket, CLOSE_NORMAL, "idle timeout").await,
        // Flushes our reply to the peer's close frame, if it sent one.
        StreamEnd::Closed => {
            let _ = timeout(CLOSE_GRACE, SinkExt::close(&mut socket)).await;
        }
        StreamEnd::WriteFailed => {}
        StreamEnd::Released => close(&mut socket, CLOSE_NORMAL, "call moved to another node").await,
    }
}

/// An authenticated stream's `start`.
struct Opening {
    call_id: Uuid,
    stream_id: String,
    start: StartBody,
}

/// Authenticates (header or `connected` frame) and waits for `start`. `None` when the stream
/// ended or was refused before starting; the sink is not told about such streams.
async fn open(
    socket: &mut WebSocket,
    state: &MediaState,
    header_call: Option<Uuid>,
) -> Option<Opening> {
    let auth_deadline = Instant::now() + state.config.auth_timeout;
    let mut call_id = header_call;
    loop {
        let deadline = match call_id {
            None => auth_deadline,
            Some(_) => Instant::now() + state.config.idle_timeout,
        };
        let message = match timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(None | Some(Err(_))) => return None,
            Err(_) if call_id.is_none() => {
                return refuse(socket, &state.metrics, "no token within the auth timeout").await;
            }
            Err(_) => {
                state.metrics.error(kind::IDLE_TIMEOUT);
                tracing::info!("media stream idle before start");
                close(socket, CLOSE_NORMAL, "idle timeout").await;
                return None;
            }
        };
        let frame = match message {
            Message::Text(text) => serde_json::from_str::<Inbound>(text.as_str()).ok(),
            Message::Binary(_) => None,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return None,
        };
        let Some(id) = call_id else {
            let verified = frame
                .as_ref()
                .and_then(Inbound::connected_token)
                .and_then(|token| state.tokens.verify(token));
            match verified {
                Some(id) if !state.sink.admits(id).await => {
                    state.metrics.error(kind::CALL_ENDED);
                    tracing::warn!(call_id = %id, "media stream refused: the call has ended");
                    close(socket, CLOSE_POLICY, "the call has ended").await;
                    return None;
                }
                Some(id) => {
                    call_id = Some(id);
                    continue;
                }
                None => {
                    return refuse(
                        socket,
                        &state.metrics,
                        "first frame must be `connected` with a valid token",
                    )
                    .await;
                }
            }
        };
        match frame {
            None => {
                state.metrics.error(kind::MALFORMED);
                tracing::debug!("unparsable frame before start ignored");
            }
            Some(connected @ Inbound::Connected { .. }) => {
                // Telnyx repeats the header token here; a different call's token is an attack
                // or a misconfiguration, never a stream to accept.
                if let Some(token) = connected.connected_token() {
                    if state.tokens.verify(token) != Some(id) {
                        return refuse(socket, &state.metrics, "connected token does not match")
                            .await;
                    }
                }
            }
            Some(Inbound::Start { stream_id, start }) => {
                return Some(Opening {
                    call_id: id,
                    stream_id: stream_id.unwrap_or_default(),
                    start,
                });
            }
            Some(Inbound::Stop) => {
                close(socket, CLOSE_NORMAL, "stream stopped").await;
                return None;
            }
            Some(Inbound::Error { payload }) => vendor_error(&state.metrics, &payload),
            Some(_) => tracing::debug!("frame before start ignored"),
        }
    }
}

async fn refuse(
    socket: &mut WebSocket,
    metrics: &MediaMetrics,
    reason: &'static str,
) -> Option<Opening> {
    metrics.error(kind::AUTH);
    tracing::warn!(reason, "media stream refused");
    close(socket, CLOSE_POLICY, reason).await;
    None
}

/// Sends a close frame and waits briefly for the peer's, so the handshake ends cleanly.
async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let sent = timeout(WRITE_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    let _ = timeout(CLOSE_GRACE, async {
        while let Some(Ok(message)) = socket.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// The call id in `client_state`, when it holds one. Other contents (someone else's state
/// format) are not ours to judge: the token already authenticated the stream.
fn client_state_call(client_state: &str) -> Option<Uuid> {
    let bytes = BASE64.decode(client_state.trim()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    Uuid::try_parse(text.trim()).ok()
}

/// Keeps the stream registered and counted as active; dropping it undoes both, also when the
/// task unwinds, so the gauge and the registry cannot leak a dead stream.
struct Active {
    _registration: Registration,
    gauge: IntGauge,
}

impl Active {
    fn new(registration: Registration, gauge: IntGauge) -> Self {
        gauge.inc();
        Active {
            _registration: registration,
            gauge,
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_state_parsing() {
        let call = Uuid::new_v4();
        assert_eq!(
            client_state_call(&BASE64.encode(call.to_string())),
            Some(call)
        );
        assert_eq!(client_state_call(&BASE64.encode("some other state")), None);
        assert_eq!(client_state_call("not base64 !!"), None);
    }
}
