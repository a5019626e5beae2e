//! A client of the HTTP API for the end-to-end tests: one tenant key, JSON in and out,
//! asserting statuses with the body in the message.

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The API of a running server, as one organization.
pub struct Api {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The organization's API key.
    pub key: String,
    /// Shared connection pool.
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: String, key: String) -> Api {
        Api {
            base,
            key,
            http: reqwest::Client::new(),
        }
    }

    /// POSTs `body` and asserts the answer's status.
    pub async fn post(&self, path: &str, body: Value, expect: StatusCode) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, expect, "POST {path}: {body}");
        body
    }

    /// GETs `path`, asserting 200.
    pub async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        r.json().await.unwrap()
    }

    /// Waits until the call is in `status` or panics after `within`.
    pub async fn wait_status(&self, id: &str, status: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let call = self.get(&format!("/v1/calls/{id}")).await;
            if call["status"] == status {
                return call;
            }
            assert!(
                Instant::now() < deadline,
                "call {id} is {} after {within:?}, expected {status}",
                call["status"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the call ended (any terminal status) or panics after `within`.
    pub async fn wait_ended(&self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let call = self.get(&format!("/v1/calls/{id}")).await;
            if ["completed", "failed", "canceled"].contains(&call["status"].as_str().unwrap_or(""))
            {
                return call;
            }
            assert!(
                Instant::now() < deadline,
                "call {id} still {} after {within:?}",
                call["status"]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The call's journal.
    pub async fn events(&self, id: &str) -> Vec<Value> {
        self.get(&format!("/v1/calls/{id}/events")).await["data"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The kinds of the call's journal entries, in order.
    pub async fn kinds(&self, id: &str) -> Vec<String> {
        self.events(id)
            .await
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// A port nobody listens on right now (the server binds it next).
///
/// A port the kernel hands out for `bind(0)` (as every fake does) or to an outgoing connection
/// could be taken between this check and the server's own bind ("Address already in use", seen
/// on CI). So the port comes from below the ephemeral range (32768-60999 on Linux), where
/// neither ever lands: distinct within this process, spread across processes by the pid, and
/// checked free when picked.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(97) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + (start + n) % SPAN).expect("below 32000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN);
}

/// What the server answered: status, headers and the JSON body (`Null` when there is none).
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

/// One request as `bearer` (an API key or access token), with a JSON `body`.
pub async fn send(
    base: &str,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let http = reqwest::Client::new();
    let mut req = http.request(method, format!("{base}{path}"));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    answer(req).await
}

/// Sends a request and reads its status, headers and JSON body.
pub async fn answer(req: reqwest::RequestBuilder) -> Answer {
    let r = req.send().await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

/// [`send`], for callers that only need the status and the JSON body.
pub async fn request(
    base: &str,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let a = send(base, method, path, bearer, body).await;
    (a.status, a.body)
}
