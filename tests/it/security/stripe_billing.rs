//! Stripe webhooks end to end: signature checks before parsing, each event applied once and
//! in order (a delayed older event never wins), the grace period of an unpaid plan, and every
//! delivery counted by outcome.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{answer, send, server, webhook_count, Answer, STRIPE_SECRET};
use crate::common;
use crate::common::server::create_org;

fn stripe_header(body: &str, t: i64) -> String {
    iace::clients::stripe::signature::sign(STRIPE_SECRET, t, body.as_bytes())
}

async fn stripe(base: &str, event: &Value, signature: Option<String>) -> Answer {
    let body = event.to_string();
    let sig = signature.unwrap_or_else(|| stripe_header(&body, chrono::Utc::now().timestamp()));
    answer(
        reqwest::Client::new()
            .post(format!("{base}/v1/webhooks/stripe"))
            .header("stripe-signature", sig)
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

fn subscription_event(
    id: &str,
    kind: &str,
    created: i64,
    org: Option<&str>,
    status: &str,
    lookup: &str,
) -> Value {
    let metadata = org.map_or(json!({}), |o| json!({"organization_id": o}));
    json!({"id": id, "object": "event", "api_version": "2026-06-24.dahlia", "created": created,
      "livemode": false, "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null},
      "type": kind,
      "data": {"object": {"id": "sub_1", "object": "subscription", "customer": "cus_acme",
        "status": status, "metadata": metadata,
        "items": {"object": "list", "data": [{"id": "si_1", "object": "subscription_item",
          "price": {"id": "price_x", "object": "price", "lookup_key": lookup}, "quantity": 1}]}}}})
}

fn invoice_event(id: &str, kind: &str, created: i64) -> Value {
    json!({"id": id, "object": "event", "created": created, "type": kind,
      "data": {"object": {"id": "in_1", "object": "invoice", "customer": "cus_acme", "status": "open",
        "attempt_count": 1, "amount_due": 4900}}})
}

async fn plan_of(base: &str, key: &str) -> Value {
    send(base, Method::GET, "/v1/organization", Some(key), None)
        .await
        .body
}

#[tokio::test]
async fn stripe_events_set_the_plan_once_each_and_an_unpaid_plan_lapses_after_the_grace_period() {
    let db = common::db::fresh_database().await;
    let srv = server(&db, &[]).await;
    let base = &srv.base;
    let (org, key) = create_org(&db, "Billing");
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let now = chrono::Utc::now().timestamp();
    let day = 86_400;
    assert_eq!(plan_of(base, &key).await["plan"], "free");

    // Refused before parsing, nothing stored: no header, another secret, stale timestamp,
    // tampered body.
    let created = subscription_event(
        "evt_1",
        "customer.subscription.created",
        now - 10 * day,
        Some(&org),
        "active",
        "pro_monthly",
    );
    let body = created.to_string();
    let other = iace::clients::stripe::signature::sign("whsec_other", now, body.as_bytes());
    for sig in [
        String::new(),
        other,
        stripe_header(&body, now - 301),
        stripe_header(&(body.clone() + " "), now),
        "t=abc,v1=00".into(),
    ] {
        let r = stripe(base, &created, Some(sig.clone())).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{sig}: {}", r.body);
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM account_event")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 0);

    // Subscribed (organization named in the metadata): pro.
    let r = stripe(base, &created, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["duplicate"], false);
    let account = plan_of(base, &key).await;
    assert_eq!(account["plan"], "pro");
    assert_eq!(account["stripe_customer_id"], "cus_acme");
    assert_eq!(account["limits"]["concurrent_calls"], 50);
    // The same event again: acknowledged, not applied twice.
    let r = stripe(base, &created, None).await;
    assert_eq!(r.body["duplicate"], true);

    // An upgrade, then a delayed older downgrade that must not win.
    let upgrade = subscription_event(
        "evt_2",
        "customer.subscription.updated",
        now - 9 * day,
        None,
        "active",
        "enterprise_annual",
    );
    assert_eq!(stripe(base, &upgrade, None).await.status, StatusCode::OK);
    let late = subscription_event(
        "evt_3",
        "customer.subscription.updated",
        now - 9 * day - 60,
        None,
        "active",
        "pro_monthly",
    );
    assert_eq!(stripe(base, &late, None).await.status, StatusCode::OK);
    assert_eq!(plan_of(base, &key).await["plan"], "enterprise");
    let outcome: String =
        sqlx::query_scalar("SELECT outcome FROM account_event WHERE event_id = 'evt_3'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(outcome, "stale");

    // Payment failed 2 days ago: still enterprise within the 7-day grace period.
    let failed = invoice_event("evt_4", "invoice.payment_failed", now - 2 * day);
    assert_eq!(stripe(base, &failed, None).await.status, StatusCode::OK);
    let account = plan_of(base, &key).await;
    assert_eq!(account["plan"], "enterprise");
    assert_eq!(account["effective_plan"], "enterprise");
    assert!(account["grace_period_ends_at"].is_string());
    // Paid: the grace period ends.
    let paid = invoice_event("evt_5", "invoice.paid", now - day);
    assert_eq!(stripe(base, &paid, None).await.status, StatusCode::OK);
    assert!(plan_of(base, &key).await["past_due_since"].is_null());
    // Unpaid for 8 days: the plan in force is free (limits follow).
    let failed = invoice_event("evt_6", "invoice.payment_failed", now - day + 1);
    assert_eq!(stripe(base, &failed, None).await.status, StatusCode::OK);
    sqlx::query(
        "UPDATE organization SET past_due_since = now() - interval '8 days' WHERE id = $1::uuid",
    )
    .bind(&org)
    .execute(&pool)
    .await
    .unwrap();
    let account = plan_of(base, &key).await;
    assert_eq!(account["plan"], "enterprise");
    assert_eq!(account["effective_plan"], "free");
    assert_eq!(account["limits"]["concurrent_calls"], 2);
    // Canceled: free.
    let canceled = subscription_event(
        "evt_7",
        "customer.subscription.deleted",
        now,
        None,
        "canceled",
        "enterprise_annual",
    );
    assert_eq!(stripe(base, &canceled, None).await.status, StatusCode::OK);
    assert_eq!(plan_of(base, &key).await["plan"], "free");

    // A verified body that is not an event: 400, nothing stored.
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM account_event")
        .fetch_one(&pool)
        .await
        .unwrap();
    let r = stripe(base, &json!({"hello": "world"}), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM account_event")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(before, after);

    // Every delivery above is counted by its outcome.
    for (outcome, n) in [
        ("unauthorized", 5),
        ("stored", 7),
        ("duplicate", 1),
        ("malformed", 1),
    ] {
        assert_eq!(
            webhook_count(&srv.metrics_base, "stripe", outcome).await,
            n,
            "{outcome}"
        );
    }
}
