//! The server's side of the cluster: how nodes talk to each other.
//!
//! * [`InternalKey`] signs and checks requests between nodes (HMAC-SHA256 with a key derived
//!   from the shared `IACE_MEDIA_SECRET`): a forwarded API request, a poke.
//! * [`HttpPeers`] is the engine's [`Peers`] port: `POST {node}/internal/v1/poke`.
//! * [`Forwarder`] sends an API request on to the node that runs its call, and relays the
//!   answer (see `http::forward`).
//!
//! A request between nodes carries `x-iace-node` (the sender), `x-iace-timestamp` (unix
//! seconds) and `x-iace-signature`: hex HMAC over the sender, the timestamp, the method, the
//! path with its query and the SHA-256 of the body. A signature more than a minute old is
//! refused.

use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use hmac::{Hmac, Mac};
use iace_actors::engine::Peer;
use iace_actors::machine::CallId;
use iace_actors::ports::Peers;
use prometheus::{IntCounterVec, Opts, Registry};
use sha2::{Digest, Sha256};

/// The node that sent an internal request.
pub const NODE_HEADER: &str = "x-iace-node";
/// When it was signed (unix seconds).
pub const TIMESTAMP_HEADER: &str = "x-iace-timestamp";
/// The signature.
pub const SIGNATURE_HEADER: &str = "x-iace-signature";
/// How old a signature may be.
const MAX_SKEW_SECS: i64 = 60;
/// Path of the poke endpoint.
pub const POKE_PATH: &str = "/internal/v1/poke";

/// The key nodes sign their requests to each other with.
#[derive(Clone)]
pub struct InternalKey {
    key: [u8; 32],
    node_id: String,
}

impl std::fmt::Debug for InternalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalKey")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

type HmacSha256 = Hmac<Sha256>;

impl InternalKey {
    /// Derived from the cluster's shared secret; `node_id` signs as this node.
    pub fn from_secret(secret: &[u8], node_id: &str) -> InternalKey {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes any key");
        mac.update(b"iace internal requests v1");
        InternalKey {
            key: mac.finalize().into_bytes().into(),
            node_id: node_id.to_owned(),
        }
    }

    /// A random key: this node's signatures are accepted by nobody else.
    pub fn random(node_id: &str) -> InternalKey {
        InternalKey {
            key: rand::random(),
            node_id: node_id.to_owned(),
        }
    }

    fn mac(&self, node: &str, ts: i64, method: &Method, path: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.key).expect("HMAC takes any key");
        for part in [
            node.as_bytes(),
            ts.to_string().as_bytes(),
            method.as_str().as_bytes(),
            path.as_bytes(),
        ] {
            mac.update(part);
            mac.update(b"\n");
        }
        mac.update(hex::encode(Sha256::digest(body)).as_bytes());
        mac
    }

    /// The headers that sign a request from this node at unix time `now`.
    pub fn sign(
        &self,
        now: i64,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> Vec<(HeaderName, HeaderValue)> {
        let sig = hex::encode(
            self.mac(&self.node_id, now, method, path, body)
                .finalize()
                .into_bytes(),
        );
        [
            (NODE_HEADER, self.node_id.clone()),
            (TIMESTAMP_HEADER, now.to_string()),
            (SIGNATURE_HEADER, sig),
        ]
        .into_iter()
        .filter_map(|(name, value)| {
            Some((
                HeaderName::from_static(name),
                HeaderValue::from_str(&value).ok()?,
            ))
        })
        .collect()
    }

    /// The sending node, when `headers` carry a valid signature of this request at unix time
    /// `now`.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        now: i64,
        method: &Method,
        path: &str,
        body: &[u8],
    ) -> Result<String, &'static str> {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let node = get(NODE_HEADER).ok_or("no sending node")?;
        let ts: i64 = get(TIMESTAMP_HEADER)
            .and_then(|v| v.parse().ok())
            .ok_or("no valid timestamp")?;
        if (now - ts).abs() > MAX_SKEW_SECS {
            return Err("the signature is too old");
        }
        let sig = get(SIGNATURE_HEADER)
            .and_then(|v| hex::decode(v).ok())
            .ok_or("no valid signature")?;
        // Compared in constant time.
        self.mac(node, ts, method, path, body)
            .verify_slice(&sig)
            .map(|()| node.to_owned())
            .map_err(|_| "the signature does not match")
    }
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Requests between nodes: the poke client and the forwarder share one connection pool.
#[derive(Clone)]
pub struct NodeClient {
    http: reqwest::Client,
    key: InternalKey,
    forwarded: IntCounterVec,
}

impl NodeClient {
    /// A client signing with `key`; `iace_forwarded_requests_total` is registered in
    /// `registry`.
    pub fn new(key: InternalKey, registry: &Registry) -> anyhow::Result<NodeClient> {
        let forwarded = IntCounterVec::new(
            Opts::new(
                "iace_forwarded_requests_total",
                "API requests forwarded to the node that runs their call, by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(forwarded.clone()))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(NodeClient {
            http,
            key,
            forwarded,
        })
    }

    /// The key requests are signed and checked with.
    pub fn key(&self) -> &InternalKey {
        &self.key
    }

    /// Sends an API request on to `peer` and returns its answer (status, headers, body).
    pub async fn forward(
        &self,
        peer: &Peer,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<(StatusCode, HeaderMap, Bytes), String> {
        let result = self
            .send_forward(peer, method, path_and_query, headers, body)
            .await;
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        self.forwarded.with_label_values(&[outcome]).inc();
        result
    }

    async fn send_forward(
        &self,
        peer: &Peer,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<(StatusCode, HeaderMap, Bytes), String> {
        let url = format!("{}{path_and_query}", peer.url.trim_end_matches('/'));
        let mut out = HeaderMap::new();
        for (name, value) in headers {
            if !is_hop_by_hop(name) && !is_internal(name) {
                out.append(name.clone(), value.clone());
            }
        }
        for (name, value) in self.key.sign(unix_now(), &method, path_and_query, &body) {
            out.insert(name, value);
        }
        // The peer's server span is a child of this one (the caller's `traceparent` was
        // this node's parent).
        let mut span = crate::telemetry::ClientSpan::start(
            method.as_str().to_owned(),
            method.as_str(),
            &url,
            "node",
        );
        span.insert(&mut out);
        let resp = self
            .http
            .request(method, &url)
            .headers(out)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                span.fail("transport", e.to_string());
                format!("forwarding to {}: {e}", peer.node_id)
            })?;
        let status = resp.status();
        span.status(status.as_u16());
        let mut back = HeaderMap::new();
        for (name, value) in resp.headers() {
            if !is_hop_by_hop(name) {
                back.append(name.clone(), value.clone());
            }
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("reading the answer of {}: {e}", peer.node_id))?;
        Ok((status, back, body))
    }
}

/// Headers that belong to one connection, not to the request.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

fn is_internal(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        NODE_HEADER | TIMESTAMP_HEADER | SIGNATURE_HEADER
    )
}

/// The engine's [`Peers`] port over HTTP.
pub struct HttpPeers {
    client: NodeClient,
}

impl HttpPeers {
    /// Pokes sent with `client`.
    pub fn new(client: NodeClient) -> HttpPeers {
        HttpPeers { client }
    }
}

#[async_trait]
impl Peers for HttpPeers {
    async fn poke(&self, url: &str, calls: &[CallId]) -> Result<(), String> {
        let body = serde_json::to_vec(&serde_json::json!({ "calls": calls }))
            .map_err(|e| e.to_string())?;
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in self
            .client
            .key
            .sign(unix_now(), &Method::POST, POKE_PATH, &body)
        {
            headers.insert(name, value);
        }
        let resp = self
            .client
            .http
            .post(format!("{}{POKE_PATH}", url.trim_end_matches('/')))
            .headers(headers)
            .timeout(Duration::from_secs(5))
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("poke answered {}", resp.status()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_bound_to_the_request_and_expires() {
        let a = InternalKey::from_secret(b"shared", "node-a");
        let b = InternalKey::from_secret(b"shared", "node-b");
        let now = 1_800_000_000;
        let signed: HeaderMap = a
            .sign(now, &Method::POST, "/v1/calls/x/hangup", b"{}")
            .into_iter()
            .collect();
        assert_eq!(
            b.verify(&signed, now + 5, &Method::POST, "/v1/calls/x/hangup", b"{}"),
            Ok("node-a".to_owned())
        );
        for (method, path, body, at) in [
            (Method::POST, "/v1/calls/y/hangup", &b"{}"[..], now),
            (Method::PUT, "/v1/calls/x/hangup", &b"{}"[..], now),
            (Method::POST, "/v1/calls/x/hangup", &b"{\"a\":1}"[..], now),
            (Method::POST, "/v1/calls/x/hangup", &b"{}"[..], now + 61),
        ] {
            assert!(
                b.verify(&signed, at, &method, path, body).is_err(),
                "{method} {path} {at}"
            );
        }
        let other = InternalKey::from_secret(b"another", "node-b");
        assert!(other
            .verify(&signed, now, &Method::POST, "/v1/calls/x/hangup", b"{}")
            .is_err());
        let mut forged = signed.clone();
        forged.insert(NODE_HEADER, HeaderValue::from_static("node-c"));
        assert!(b
            .verify(&forged, now, &Method::POST, "/v1/calls/x/hangup", b"{}")
            .is_err());
        assert!(b
            .verify(&HeaderMap::new(), now, &Method::POST, "/", b"")
            .is_err());
    }
}
