//! One client request through the load balancer: the request for the backend (hop-by-hop
//! headers dropped, `X-Forwarded-For` appended), the round robin with redispatch, the answer
//! passed back as it streams, the WebSocket tunnel after a `101`, and the balancer's own JSON
//! answers (`502`, `503`).
//!
//! It must not send a request again once any of it was written to a backend (see
//! [`super::backend::SendError`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;

use super::backend::SendError;
use super::Shared;
use crate::fake::stopped;

/// An answer's body: a backend's, streamed, or one of the balancer's own.
pub(super) type LbBody = Either<Incoming, Full<Bytes>>;

/// Headers that belong to one connection, never forwarded (RFC 9110 section 7.6.1), besides
/// those the `Connection` header names.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The balancer's service: forwards `req` and counts the `5xx` answers.
pub(super) async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<LbBody>, Infallible> {
    let resp = forward(&shared, peer, req).await;
    if resp.status().is_server_error() {
        shared.server_errors.fetch_add(1, Ordering::Relaxed);
    }
    Ok(resp)
}

async fn forward(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<LbBody> {
    let upgrade = upgrade_protocol(req.headers());
    // Taken before the request is rebuilt: the client's half of the tunnel lives in it.
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let mut out = match outgoing(req, peer, upgrade) {
        Ok(out) => out,
        Err(why) => return own_answer(StatusCode::BAD_REQUEST, "bad_request", &why),
    };
    let attempts = shared.cfg.retries as usize + 1;
    let mut tried = Vec::new();
    let mut last_error = String::new();
    while tried.len() < attempts {
        let Some(backend) = shared.pick(&tried) else {
            break;
        };
        if !tried.is_empty() {
            shared.retries.fetch_add(1, Ordering::Relaxed);
        }
        match backend
            .send(out, client_upgrade.is_some(), &shared.cfg)
            .await
        {
            Ok(resp) => return answer(shared, resp, client_upgrade),
            Err(SendError::NotSent(back, why)) => {
                tracing::debug!(backend = %backend.addr.url, error = %why, "load balancer: request not taken, redispatching");
                out = *back;
                last_error = format!("{}: {why}", backend.addr.url);
                tried.push(backend);
            }
            Err(SendError::Failed(why)) => {
                tracing::warn!(backend = %backend.addr.url, error = %why, "load balancer: backend failed after the request was sent");
                return own_answer(
                    StatusCode::BAD_GATEWAY,
                    "bad_gateway",
                    &format!(
                        "backend {} failed after the request was sent: {why}",
                        backend.addr.url
                    ),
                );
            }
        }
    }
    if tried.is_empty() {
        own_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_backend",
            "no backend is up",
        )
    } else {
        own_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "backend_unreachable",
            &format!(
                "no backend took the request ({} tried; last: {last_error})",
                tried.len()
            ),
        )
    }
}

/// The request for a backend: origin-form target, HTTP/1.1, the client's headers without the
/// hop-by-hop ones (an upgrade keeps `Connection: upgrade` and its `Upgrade`), the client's
/// address appended to `X-Forwarded-For`, the body as it streams.
fn outgoing(
    req: Request<Incoming>,
    peer: SocketAddr,
    upgrade: Option<HeaderValue>,
) -> Result<Request<Incoming>, String> {
    let (parts, body) = req.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut headers = parts.headers;
    drop_hop_by_hop(&mut headers);
    let forwarded_for = {
        let previous: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let ip = peer.ip().to_string();
        if previous.is_empty() {
            ip
        } else {
            format!("{}, {ip}", previous.join(", "))
        }
    };
    headers.insert(
        "x-forwarded-for",
        HeaderValue::from_str(&forwarded_for).map_err(|e| format!("X-Forwarded-For: {e}"))?,
    );
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    let mut out = Request::builder()
        .method(parts.method)
        .uri(target)
        .version(Version::HTTP_11)
        .body(body)
        .map_err(|e| format!("request target: {e}"))?;
    *out.headers_mut() = headers;
    Ok(out)
}

/// The backend's answer for the client. A `101` to an upgrade starts the tunnel; any other
/// answer streams back without its hop-by-hop headers.
fn answer(
    shared: &Arc<Shared>,
    mut resp: Response<Incoming>,
    client_upgrade: Option<OnUpgrade>,
) -> Response<LbBody> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client) = client_upgrade else {
            return own_answer(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "the backend switched protocols on a request that asked for no upgrade",
            );
        };
        let backend = hyper::upgrade::on(&mut resp);
        tokio::spawn(tunnel(client, backend, shared.stop.clone()));
        return resp.map(Either::Left);
    }
    let (mut parts, body) = resp.into_parts();
    drop_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Either::Left(body))
}

/// Copies bytes both ways between the upgraded client and backend connections until either
/// closes, or the balancer stops.
async fn tunnel(client: OnUpgrade, backend: OnUpgrade, stop: tokio::sync::watch::Receiver<bool>) {
    let run = async {
        let (client, backend) =
            tokio::try_join!(client, backend).map_err(|e| format!("upgrade: {e}"))?;
        let mut client = TokioIo::new(client);
        let mut backend = TokioIo::new(backend);
        tokio::io::copy_bidirectional(&mut client, &mut backend)
            .await
            .map_err(|e| format!("tunnel: {e}"))
    };
    tokio::select! {
        res = run => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "load balancer: upgraded connection ended");
            }
        }
        () = stopped(stop) => {}
    }
}

/// The protocol a request asks to switch to (`Connection: upgrade` with an `Upgrade`).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Removes the hop-by-hop headers and those the `Connection` header names.
fn drop_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// One of the balancer's own answers: `{"error": {"code", "message"}}`.
fn own_answer(status: StatusCode, code: &str, message: &str) -> Response<LbBody> {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
