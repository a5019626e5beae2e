//! Any node answers any request: a command about a call another node runs is sent on to that
//! node and its answer relayed (one hop: a request that was already forwarded is answered
//! where it lands, "retry" if the call moved again meanwhile). And the endpoint other nodes
//! poke this one at.
//!
//! The forwarded request keeps the client's own credentials, which the receiving node checks
//! as usual; the hop is signed (`crate::cluster`), and a request with a valid signature from
//! another node is not counted against the caller's rate limits a second time.

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use iace_actors::engine::Peer;
use iace_actors::machine::CallId;
use serde::Deserialize;

use super::error::{ApiError, ForwardTo};
use super::extract::AppJson;
use super::{AppState, MAX_BODY_BYTES};
use crate::cluster::NODE_HEADER;

/// Marks a request forwarded by another node of the cluster, signature checked.
#[derive(Debug, Clone)]
pub struct ForwardedBy(pub String);

/// The forwarding middleware (see the module docs).
pub async fn forward(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        // Reads answer the same from every node (the store is shared).
        return next.run(req).await;
    }
    let Some(nodes) = state.nodes.clone() else {
        return next.run(req).await;
    };
    let (mut parts, body) = req.into_parts();
    let body = match to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            )
            .into_response()
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| parts.uri.path().to_owned());
    let hop = parts.headers.contains_key(NODE_HEADER);
    if hop {
        let now = chrono::Utc::now().timestamp();
        match nodes
            .key()
            .verify(&parts.headers, now, &parts.method, &path, &body)
        {
            Ok(node) => {
                parts.extensions.insert(ForwardedBy(node));
            }
            Err(why) => tracing::warn!(reason = why, "a request claims to come from another node; its signature is refused, it is treated as a client's"),
        }
    }
    let (method, headers) = (parts.method.clone(), parts.headers.clone());
    let resp = next
        .run(Request::from_parts(parts, Body::from(body.clone())))
        .await;
    let Some(ForwardTo(peer)) = resp.extensions().get::<ForwardTo>().cloned() else {
        return resp;
    };
    if hop {
        // One hop only: the call moved on (its shard was handed over meanwhile). The answer
        // names the node that runs it now, for the node that forwarded the request.
        let mut resp = resp;
        if let Ok(v) = HeaderValue::from_str(&format!("{} {}", peer.node_id, peer.url)) {
            resp.headers_mut().insert(OWNER_HEADER, v);
        }
        return resp;
    }
    let mut peer = peer;
    let mut tries = 0;
    let answer = loop {
        tries += 1;
        let answer = nodes
            .forward(&peer, method.clone(), &path, &headers, body.clone())
            .await;
        // The node had just handed the call over: send it on to the node it names, once.
        let moved = match &answer {
            Ok((StatusCode::SERVICE_UNAVAILABLE, h, _)) if tries == 1 => owner_of(h),
            _ => None,
        };
        match moved {
            Some(next) if next.node_id != peer.node_id => peer = next,
            _ => break answer,
        }
    };
    match answer {
        Ok((status, mut headers, body)) => {
            headers.remove(OWNER_HEADER);
            let mut out = Response::new(Body::from(body));
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            out
        }
        Err(e) => {
            tracing::warn!(node = %peer.node_id, error = %e, "forwarding failed");
            let mut error = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the node that runs the call did not answer; retry in a moment",
            );
            error.retry_after = Some(1);
            error.into_response()
        }
    }
}

/// On a forwarded request's 503: the node that runs the call now (`node_id url`).
const OWNER_HEADER: &str = "x-iace-owner";

fn owner_of(headers: &axum::http::HeaderMap) -> Option<Peer> {
    let (node_id, url) = headers.get(OWNER_HEADER)?.to_str().ok()?.split_once(' ')?;
    Some(Peer {
        node_id: node_id.to_owned(),
        url: url.to_owned(),
    })
}

/// `POST /internal/v1/poke` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Poke {
    calls: Vec<CallId>,
}

/// Most calls one poke may name.
const MAX_POKED: usize = 1000;

/// `POST /internal/v1/poke`: another node stored work for calls this node runs. Only signed
/// requests from another node of the cluster are taken.
pub async fn poke(
    State(state): State<AppState>,
    forwarded: Option<axum::Extension<ForwardedBy>>,
    AppJson(poke): AppJson<Poke>,
) -> Result<StatusCode, ApiError> {
    if forwarded.is_none() {
        return Err(ApiError::unauthorized(
            "pokes are only taken from nodes of the cluster (signed requests)",
        ));
    }
    if poke.calls.len() > MAX_POKED {
        return Err(ApiError::invalid(format!(
            "at most {MAX_POKED} calls per poke"
        )));
    }
    state.engine.poked(poke.calls);
    Ok(StatusCode::ACCEPTED)
}
