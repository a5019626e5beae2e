//! The HTTP contract end to end: the OpenAPI description and its reference page as the real
//! binary serves them, and what the contract check (scripts/check-openapi, Schemathesis)
//! found the server doing against it, each pinned here: a NUL character stored as if the
//! database were down (503), numbers at the ends of the range that made their row unreadable
//! (500), an empty organization patch taken, an API key named with control characters.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common;
use crate::common::api::{answer, send};
use crate::common::server::{create_org, Server};

fn envelope(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["error"]["request_id"].is_string(), "{body}");
}

#[tokio::test]
async fn the_description_and_the_reference_page_are_served() {
    let db = common::db::fresh_database().await;
    let srv = Server::start(&db, &[]).await;
    let http = reqwest::Client::new();
    let doc = answer(http.get(format!("{}/openapi.json", srv.base))).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body["openapi"], "3.1.0");
    assert!(doc.body["paths"]["/v1/calls"]["post"].is_object());
    let page = http.get(format!("{}/docs", srv.base)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("/docs/redoc.standalone.js"));
    let script = http
        .get(format!("{}/docs/redoc.standalone.js", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), StatusCode::OK);
    assert!(script.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
}

#[tokio::test]
async fn what_the_contract_check_found_is_answered_as_described() {
    let db = common::db::fresh_database().await;
    let srv = Server::start(&db, &[]).await;
    let base = &srv.base;
    let (_, key) = create_org(&db, "Contract");

    // A NUL character cannot be stored: 400, not 503 from the store.
    let r = send(
        base,
        Method::POST,
        "/v1/agents",
        Some(&key),
        Some(json!({"name": "Ava", "voice_config": {"k\u{0}": "v"}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    envelope(&r.body, "invalid_request");
    let r = send(
        base,
        Method::POST,
        "/v1/webhook-endpoints",
        Some(&key),
        Some(
            json!({"url": "https://hooks.example.com/a", "description": "a\u{0}b",
            "event_types": ["call.ended"]}),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    envelope(&r.body, "invalid_request");

    // The largest doubles are stored and read back (the row stays readable).
    let r = send(
        base,
        Method::POST,
        "/v1/customers",
        Some(&key),
        Some(json!({"phone": "+14155550123", "metadata": {"big": f64::MAX, "small": -f64::MAX}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_owned();
    for path in [format!("/v1/customers/{id}"), "/v1/customers".to_owned()] {
        let r = send(base, Method::GET, &path, Some(&key), None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
    }
    let r = send(
        base,
        Method::GET,
        &format!("/v1/customers/{id}"),
        Some(&key),
        None,
    )
    .await;
    assert_eq!(r.body["metadata"]["big"].as_f64(), Some(f64::MAX));

    // A patch changes something; `null` is no value for a field it cannot clear.
    let r = send(
        base,
        Method::PATCH,
        "/v1/organization",
        Some(&key),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    envelope(&r.body, "invalid_request");
    let r = send(
        base,
        Method::PATCH,
        "/v1/organization",
        Some(&key),
        Some(json!({"name": null})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = send(
        base,
        Method::PATCH,
        &format!("/v1/customers/{id}"),
        Some(&key),
        Some(json!({"phone": null})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = send(
        base,
        Method::PATCH,
        &format!("/v1/customers/{id}"),
        Some(&key),
        Some(json!({"segment": null})),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "null clears the segment: {}",
        r.body
    );
    let r = send(
        base,
        Method::PATCH,
        "/v1/organization",
        Some(&key),
        Some(json!({"hubspot_portal_id": 4242.0})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["hubspot_portal_id"], 4242);

    // An email is at most 254 characters as sent, as the description's `maxLength` counts.
    let padded = format!("   {}@example.com", "a".repeat(242));
    let r = send(
        base,
        Method::PATCH,
        &format!("/v1/customers/{id}"),
        Some(&key),
        Some(json!({"email": padded})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    envelope(&r.body, "invalid_request");

    // An API key's name is a name: never blank, no control characters.
    for name in ["  ", "ci\u{9b}key", "ci\nkey"] {
        let r = send(
            base,
            Method::POST,
            "/v1/api-keys",
            Some(&key),
            Some(json!({"name": name})),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name:?}: {}", r.body);
        envelope(&r.body, "invalid_request");
    }
}
