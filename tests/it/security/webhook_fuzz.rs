//! Random bytes and random signature headers sent to every webhook (Stripe, HubSpot, Telnyx)
//! are refused with a client error and store nothing.

use super::server;
use crate::common;

#[tokio::test]
async fn random_bytes_and_headers_to_the_webhooks_are_refused_and_store_nothing() {
    let db = common::db::fresh_database().await;
    let srv = server(&db, &[]).await;
    let base = &srv.base;
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let http = reqwest::Client::new();
    let mut seed: u64 = 0x5EC0_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let headers = [
        "stripe-signature",
        "x-hubspot-signature",
        "x-hubspot-signature-version",
        "x-hubspot-signature-v3",
        "x-hubspot-request-timestamp",
        "telnyx-signature-ed25519",
        "telnyx-timestamp",
    ];
    for i in 0..150 {
        let len = (next() % 400) as usize;
        let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let route = ["stripe", "hubspot", "telnyx"][i % 3];
        let mut req = http.post(format!("{base}/v1/webhooks/{route}")).body(body);
        for h in headers {
            if next() % 2 == 0 {
                let v = match next() % 4 {
                    0 => format!("t={},v1={:064x}", chrono::Utc::now().timestamp(), next()),
                    1 => "v3".to_owned(),
                    2 => chrono::Utc::now().timestamp_millis().to_string(),
                    _ => format!("{:x}{:x}", next(), next()),
                };
                req = req.header(h, v);
            }
        }
        let r = req.send().await.unwrap();
        assert!(r.status().is_client_error(), "{route} #{i}: {}", r.status());
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM account_event")
        .fetch_one(&pool)
        .await
        .unwrap();
    let m: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((n, m), (0, 0));
}
