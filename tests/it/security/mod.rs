//! Accounts and security end to end: the real `iace` binary, real Postgres and real Redis.
//! Each module holds one concern; this one holds the settings every server here runs with and
//! the request helpers they share. Requires `DATABASE_URL` and `REDIS_URL`
//! (`eval "$(scripts/services env)"`).

mod api_keys;
mod http_edge;
mod hubspot_crm;
mod limits_across_nodes;
mod route_access;
mod sessions;
mod signin_limits;
mod signing_keys;
mod stripe_billing;
mod webhook_fuzz;

use reqwest::{header::HeaderMap, Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::server::Server;

const JWT_SECRET: &str = "test-signing-secret-0123456789-abcdefghij";
const STRIPE_SECRET: &str = "whsec_test_secret_for_iace";
const HUBSPOT_SECRET: &str = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";
const PASSWORD: &str = "correct horse battery staple";
const ORIGIN: &str = "https://app.example.com";

/// The security settings every server here runs with (plus `extra`).
async fn server(database_url: &str, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![
        ("IACE_JWT_SECRET", JWT_SECRET),
        ("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET),
        ("HUBSPOT_CLIENT_SECRET", HUBSPOT_SECRET),
        ("IACE_CORS_ORIGINS", ORIGIN),
        // Calls ring for a minute: they stay live for the concurrent-call limit.
        ("IACE_SIM_RING_MS", "60000"),
    ];
    env.extend_from_slice(extra);
    Server::start(database_url, &env).await
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn send(
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
async fn answer(req: reqwest::RequestBuilder) -> Answer {
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

async fn login(base: &str, email: &str, password: &str) -> Answer {
    send(
        base,
        Method::POST,
        "/v1/auth/login",
        None,
        Some(json!({"email": email, "password": password})),
    )
    .await
}

async fn refresh(base: &str, token: &str) -> Answer {
    send(
        base,
        Method::POST,
        "/v1/auth/refresh",
        None,
        Some(json!({"refresh_token": token})),
    )
    .await
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("no {k} in {v}"))
        .to_owned()
}

fn email() -> String {
    format!("u{}@example.com", Uuid::new_v4().simple())
}

/// `iace_webhooks_total{vendor, outcome}` as the server reports it on `/metrics` (its
/// metrics listener at `metrics_base`).
async fn webhook_count(metrics_base: &str, vendor: &str, outcome: &str) -> u64 {
    let text = reqwest::get(format!("{metrics_base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("iace_webhooks_total{{outcome=\"{outcome}\",vendor=\"{vendor}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}
