//! HubSpot webhooks end to end (signature v3, each contact event applied once to the linked
//! customer) and the linking of contacts HubSpot could not look up at first, against a
//! wire-level fake HubSpot CRM.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;

use super::{answer, s, send, server, webhook_count, Answer, HUBSPOT_SECRET};
use crate::common;
use crate::common::server::{create_org, Server};

fn hubspot_v3(url: &str, body: &str, ts: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(HUBSPOT_SECRET.as_bytes()).unwrap();
    mac.update(format!("POST{url}{body}{ts}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

async fn hubspot(base: &str, events: &Value, ts_offset_ms: i64, tamper: bool) -> Answer {
    let url = format!(
        "https://{}/v1/webhooks/hubspot",
        base.trim_start_matches("http://")
    );
    let body = events.to_string();
    let ts = chrono::Utc::now().timestamp_millis() + ts_offset_ms;
    let mut sig = hubspot_v3(&url, &body, ts);
    if tamper {
        sig = hubspot_v3(&url, &(body.clone() + " "), ts);
    }
    answer(
        reqwest::Client::new()
            .post(format!("{base}/v1/webhooks/hubspot"))
            .header("x-hubspot-signature-v3", sig)
            .header("x-hubspot-request-timestamp", ts.to_string())
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

fn contact_change(event_id: u64, portal: i64, contact: u64, property: &str, value: &str) -> Value {
    json!({"eventId": event_id, "subscriptionId": 1, "portalId": portal, "appId": 2,
      "occurredAt": 1_764_000_000_000_i64, "subscriptionType": "contact.propertyChange",
      "attemptNumber": 0, "objectId": contact, "propertyName": property,
      "propertyValue": value, "changeSource": "CRM_UI"})
}

/// A server that looks unlinked contacts up in a wire-level fake HubSpot CRM.
async fn with_crm(db: &str, extra: &[(&str, &str)]) -> (iace_fakes::hubspot::FakeHubSpot, Server) {
    let crm = iace_fakes::hubspot::FakeHubSpot::start(Default::default())
        .await
        .unwrap();
    let crm_base = crm.base_url();
    let mut env = vec![
        ("HUBSPOT_ACCESS_TOKEN", crm.access_token()),
        ("HUBSPOT_API_BASE", crm_base.as_str()),
    ];
    env.extend_from_slice(extra);
    let srv = server(db, &env).await;
    (crm, srv)
}

/// Links the organization of `key` to a HubSpot portal.
async fn link_portal(base: &str, key: &str, portal: i64) {
    let r = send(
        base,
        Method::PATCH,
        "/v1/organization",
        Some(key),
        Some(json!({"hubspot_portal_id": portal})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

/// Creates a customer; its resource.
async fn customer(base: &str, key: &str, body: Value) -> Value {
    let c = send(base, Method::POST, "/v1/customers", Some(key), Some(body)).await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    c.body
}

#[tokio::test]
async fn hubspot_contact_events_update_the_linked_customer_once() {
    let db = common::db::fresh_database().await;
    let (crm, srv) = with_crm(&db, &[]).await;
    let base = &srv.base;
    let (_, key) = create_org(&db, "CRM");
    let (_, other_key) = create_org(&db, "Other");
    let portal = 62_515;
    link_portal(base, &key, portal).await;
    // A portal belongs to one organization.
    let r = send(
        base,
        Method::PATCH,
        "/v1/organization",
        Some(&other_key),
        Some(json!({"hubspot_portal_id": portal})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    let linked = json!({"phone": "+15550001111", "name": "Old Name", "metadata": {"hubspot_contact_id": "123"}});
    let id = s(&customer(base, &key, linked).await, "id");
    customer(base, &key, json!({"phone": "+15550002222"})).await;

    let batch = json!([
        contact_change(1, portal, 123, "phone", "+15550003333"),
        contact_change(2, portal, 123, "email", "Ann@Example.com"),
        contact_change(3, portal, 123, "firstname", "Ann"),
        contact_change(4, portal, 123, "lastname", "Lee"),
        contact_change(5, portal, 123, "phone", "not a phone"),
        contact_change(6, portal, 123, "phone", "+15550002222"),
        contact_change(7, 999, 123, "email", "x@y.z"),
    ]);
    // Bad signatures and a stale timestamp are refused; nothing changes.
    assert_eq!(
        hubspot(base, &batch, 0, true).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        hubspot(base, &batch, -301_000, false).await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = hubspot(base, &batch, 0, false).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["new"], 7);
    let customer = send(
        base,
        Method::GET,
        &format!("/v1/customers/{id}"),
        Some(&key),
        None,
    )
    .await
    .body;
    assert_eq!(customer["phone"], "+15550003333", "{customer}");
    assert_eq!(customer["email"], "ann@example.com");
    assert_eq!(customer["name"], "Ann Lee");
    // Re-delivered: acknowledged, nothing applied again.
    let again = json!([contact_change(1, portal, 123, "phone", "+15550004444")]);
    let r = hubspot(base, &again, 0, false).await;
    assert_eq!(r.body["duplicates"], 1);
    let customer = send(
        base,
        Method::GET,
        &format!("/v1/customers/{id}"),
        Some(&key),
        None,
    )
    .await
    .body;
    assert_eq!(customer["phone"], "+15550003333");
    // Deleted in HubSpot: unlinked, kept.
    let deleted = json!([{"eventId": 8, "portalId": portal, "occurredAt": 1_764_000_000_000_i64,
        "subscriptionType": "contact.deletion", "objectId": 123}]);
    assert_eq!(
        hubspot(base, &deleted, 0, false).await.status,
        StatusCode::OK
    );
    let customer = send(
        base,
        Method::GET,
        &format!("/v1/customers/{id}"),
        Some(&key),
        None,
    )
    .await
    .body;
    assert!(
        customer["metadata"].get("hubspot_contact_id").is_none(),
        "{customer}"
    );
    // A contact no customer is linked to: stored, then looked up in the CRM and linked to
    // the customer with its phone (who takes its name and email).
    crm.put_contact(
        "555",
        json!({"phone": "+15550002222", "email": "Bo@Example.com", "firstname": "Bo", "lastname": "Diaz"}),
    );
    let unlinked = json!([contact_change(9, portal, 555, "email", "bo@example.com")]);
    assert_eq!(
        hubspot(base, &unlinked, 0, false).await.status,
        StatusCode::OK
    );
    let list = || async {
        send(base, Method::GET, "/v1/customers", Some(&key), None)
            .await
            .body["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["phone"] == "+15550002222")
            .cloned()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut bo = list().await;
    while bo["metadata"]["hubspot_contact_id"] != "555" {
        assert!(std::time::Instant::now() < deadline, "not linked: {bo}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        bo = list().await;
    }
    assert_eq!(bo["name"], "Bo Diaz");
    assert_eq!(bo["email"], "bo@example.com");
    let searches = crm.requests();
    assert_eq!(searches.len(), 1, "one lookup");
    assert_eq!(searches[0].bearer(), Some(crm.access_token()));

    // A verified body that is not an array of events: 400.
    assert_eq!(
        hubspot(base, &json!({"eventId": 1}), 0, false).await.status,
        StatusCode::BAD_REQUEST
    );
    for (outcome, n) in [
        ("unauthorized", 2),
        ("stored", 3),
        ("duplicate", 1),
        ("malformed", 1),
    ] {
        assert_eq!(
            webhook_count(&srv.metrics_base, "hubspot", outcome).await,
            n,
            "{outcome}"
        );
    }
}

#[tokio::test]
async fn a_contact_hubspot_could_not_look_up_is_linked_once_it_recovers() {
    let db = common::db::fresh_database().await;
    let (crm, srv) = with_crm(
        &db,
        &[
            ("IACE_CRM_LINK_RETRY_MS", "200"),
            ("IACE_BREAKER_OPEN_WAIT_MS", "300"),
        ],
    )
    .await;
    let base = &srv.base;
    let (_, key) = create_org(&db, "Flaky CRM");
    let portal = 70_001;
    link_portal(base, &key, portal).await;
    let customer_id = s(
        &customer(base, &key, json!({"phone": "+15550007777"})).await,
        "id",
    );
    crm.put_contact(
        "4242",
        json!({"phone": "+15550007777", "firstname": "Cy", "lastname": "Ng"}),
    );
    // HubSpot fails the first lookup's every attempt.
    crm.fail_next(4, 503);
    let event = json!([contact_change(1, portal, 4242, "firstname", "Cy")]);
    let r = hubspot(base, &event, 0, false).await;
    assert_eq!(r.status, StatusCode::OK, "acknowledged at once: {}", r.body);

    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let c = send(
            base,
            Method::GET,
            &format!("/v1/customers/{customer_id}"),
            Some(&key),
            None,
        )
        .await;
        if c.body["metadata"]["hubspot_contact_id"] == "4242" {
            assert_eq!(c.body["name"], "Cy Ng");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never linked: {}",
            c.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM crm_link_queue")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(queued, 0, "resolved lookups leave the queue");
    assert!(
        crm.requests().len() >= 5,
        "four failed attempts, then the lookup that worked"
    );
    let metrics = common::metrics::scrape(&srv.metrics_base).await;
    assert!(
        metrics.contains("iace_crm_links_total{outcome=\"linked\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("iace_crm_links_total{outcome=\"retry\"}"),
        "{metrics}"
    );
    let _ = pool.close().await;
}
