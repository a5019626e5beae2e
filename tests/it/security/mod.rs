//! Accounts and security end to end: the real `iace` binary, real Postgres and real Redis.
//! Each module holds one concern; this one holds the settings every server here runs with.
//! Requires `DATABASE_URL` and `REDIS_URL` (`eval "$(scripts/services env)"`).

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

use crate::common::metrics::series;
use crate::common::server::Server;

// The helpers every module here uses, in one import for them.
use crate::common::accounts::{email, login, refresh, s, PASSWORD};
use crate::common::api::{answer, send, Answer};

const JWT_SECRET: &str = "test-signing-secret-0123456789-abcdefghij";
const STRIPE_SECRET: &str = "whsec_test_secret_for_iace";
const HUBSPOT_SECRET: &str = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";
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

/// `iace_webhooks_total{vendor, outcome}` as the server reports it on `/metrics` (its
/// metrics listener at `metrics_base`).
async fn webhook_count(metrics_base: &str, vendor: &str, outcome: &str) -> u64 {
    let name = format!("iace_webhooks_total{{outcome=\"{outcome}\",vendor=\"{vendor}\"}}");
    series(metrics_base, &name).await as u64
}
