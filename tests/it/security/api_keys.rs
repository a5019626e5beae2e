//! API keys over HTTP: a key never carries more rights than its creator, an admin cannot
//! revoke the owner's key, keys are shown once (listed by prefix, with their last use), and an
//! unknown tier is refused.

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::{s, send, server};
use crate::common;
use crate::common::server::create_org;

#[tokio::test]
async fn api_keys_never_carry_more_rights_than_their_creator_and_are_shown_once() {
    let db = common::db::fresh_database().await;
    let srv = server(&db, &[]).await;
    let base = &srv.base;
    let (_, key_a) = create_org(&db, "A");

    // Keys never carry more rights than their creator; keys are shown once and stored hashed.
    let admin_key = send(
        base,
        Method::POST,
        "/v1/api-keys",
        Some(&key_a),
        Some(json!({"name": "ops", "role": "admin", "tier": "low"})),
    )
    .await;
    assert_eq!(admin_key.status, StatusCode::CREATED, "{}", admin_key.body);
    let admin_secret = s(&admin_key.body, "api_key");
    let escalate = send(
        base,
        Method::POST,
        "/v1/api-keys",
        Some(&admin_secret),
        Some(json!({"name": "root", "role": "owner"})),
    )
    .await;
    assert_eq!(
        escalate.status,
        StatusCode::BAD_REQUEST,
        "{}",
        escalate.body
    );
    let owner_keys = send(base, Method::GET, "/v1/api-keys", Some(&admin_secret), None).await;
    let first_key = owner_keys.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "owner")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let demote = send(
        base,
        Method::DELETE,
        &format!("/v1/api-keys/{first_key}"),
        Some(&admin_secret),
        None,
    )
    .await;
    assert_eq!(
        demote.status,
        StatusCode::FORBIDDEN,
        "an admin cannot revoke the owner's key"
    );
    let listed = owner_keys.body.to_string();
    assert!(
        !listed.contains(&admin_secret) && !listed.contains(&key_a),
        "keys are shown once"
    );
    let used = owner_keys.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == first_key.as_str())
        .unwrap()
        .clone();
    assert!(used["last_used_at"].is_string(), "{used}");
    assert_eq!(used["prefix"].as_str().unwrap(), &key_a[..13]);
    let bad = send(
        base,
        Method::POST,
        "/v1/api-keys",
        Some(&key_a),
        Some(json!({"name": "x", "tier": "gold"})),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}
