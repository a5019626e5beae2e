//! Every route of the policy table against bad credentials (expired, foreign-signed,
//! `alg: none`, refresh tokens, revoked and made-up keys), other tenants (404, never their
//! data) and under-privileged roles (403); and CORS, which answers the configured origin only.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use iace::auth::jwt::{Claims, Key, KeyRing};
use iace::http::auth::{Access, POLICY};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{email, login, s, send, server, JWT_SECRET, ORIGIN, PASSWORD};
use crate::common;
use crate::common::server::{create_org, create_user};

/// A token in our format signed with `secret`, expiring `exp_offset` seconds from now.
fn token_with(secret: &str, org: &str, user: &str, session: Uuid, exp_offset: i64) -> String {
    let ring = KeyRing::new(vec![Key::hmac_secret(secret).unwrap()], "iace", "iace-api").unwrap();
    let now = chrono::Utc::now().timestamp();
    ring.sign(Claims {
        iss: String::new(),
        aud: String::new(),
        sub: user.parse().unwrap(),
        org: org.parse().unwrap(),
        role: "owner".into(),
        sid: session,
        iat: now - 7200,
        nbf: now - 7200,
        exp: now + exp_offset,
        jti: Uuid::new_v4(),
        typ: String::new(),
    })
}

/// `alg: none` with the claims of a real token and no signature.
fn alg_none(real: &str) -> String {
    let body = real.split('.').nth(1).unwrap();
    let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{head}.{body}.")
}

/// What only admins and owners may do (stated here, independently of the policy table).
const ADMIN_ONLY: [(&str, &str); 22] = [
    ("POST", "/v1/webhook-endpoints"),
    ("GET", "/v1/webhook-endpoints/{id}/deliveries"),
    (
        "POST",
        "/v1/webhook-endpoints/{id}/deliveries/{delivery_id}/retry",
    ),
    ("GET", "/v1/organization/log"),
    ("GET", "/v1/webhook-endpoints"),
    ("GET", "/v1/webhook-endpoints/{id}"),
    ("PATCH", "/v1/webhook-endpoints/{id}"),
    ("DELETE", "/v1/webhook-endpoints/{id}"),
    ("POST", "/v1/webhook-endpoints/{id}/rotate-secret"),
    ("GET", "/v1/users"),
    ("POST", "/v1/users"),
    ("PATCH", "/v1/users/{id}"),
    ("POST", "/v1/api-keys"),
    ("GET", "/v1/api-keys"),
    ("DELETE", "/v1/api-keys/{id}"),
    ("POST", "/v1/phone-numbers"),
    ("DELETE", "/v1/phone-numbers/{id}"),
    ("POST", "/v1/agents"),
    ("PATCH", "/v1/agents/{id}"),
    ("DELETE", "/v1/agents/{id}"),
    ("PATCH", "/v1/organization"),
    ("DELETE", "/v1/customers/{id}/memories"),
];

/// Fills a route's path parameters.
fn concrete(path: &str, id: &str) -> String {
    path.replace("{id}", id)
        .replace("{delivery_id}", &Uuid::new_v4().to_string())
        .replace("{vendor}", "telnyx")
        .replace("{action}", "reset")
}

/// A body each route would accept from its own tenant (so another tenant's 404 cannot hide
/// behind a 400).
fn body_for(method: &str, path: &str) -> Option<Value> {
    match (method, path) {
        ("GET" | "DELETE", _) => None,
        (_, "/v1/calls/{id}/transfer") => Some(json!({"to": "+14155550111"})),
        ("PATCH", "/v1/users/{id}") => Some(json!({"role": "read_only"})),
        ("PATCH", "/v1/organization") => Some(json!({"name": "Renamed"})),
        ("POST", "/v1/webhook-endpoints") => {
            Some(json!({"url": "https://hooks.example.com/iace", "event_types": ["call.ended"]}))
        }
        ("PATCH", "/v1/webhook-endpoints/{id}") => Some(json!({"description": "Renamed"})),
        ("PATCH", _) => Some(json!({"name": "Renamed"})),
        _ => Some(json!({})),
    }
}

#[tokio::test]
async fn every_route_refuses_bad_credentials_other_tenants_and_under_privileged_callers() {
    let db = common::db::fresh_database().await;
    let srv = server(&db, &[]).await;
    let base = &srv.base;
    let (org_a, key_a) = create_org(&db, "A");
    let (org_b, key_b) = create_org(&db, "B");
    let reader = email();
    let reader_id = create_user(&db, &org_a, &reader, "read_only", PASSWORD);
    let member = email();
    create_user(&db, &org_a, &member, "member", PASSWORD);
    let reader_login = login(base, &reader, PASSWORD).await.body;
    let reader_token = s(&reader_login, "access_token");
    let reader_refresh = s(&reader_login, "refresh_token");
    let member_token = s(&login(base, &member, PASSWORD).await.body, "access_token");

    // Tenant A's resources, one of each kind.
    let agent = send(
        base,
        Method::POST,
        "/v1/agents",
        Some(&key_a),
        Some(json!({"name": "Ava"})),
    )
    .await;
    assert_eq!(agent.status, StatusCode::CREATED, "{}", agent.body);
    let agent_id = s(&agent.body, "id");
    let customer = send(
        base,
        Method::POST,
        "/v1/customers",
        Some(&key_a),
        Some(json!({"phone": "+14155550123", "name": "Carol"})),
    )
    .await;
    let customer_id = s(&customer.body, "id");
    let call = send(
        base,
        Method::POST,
        "/v1/calls",
        Some(&key_a),
        Some(json!({"to": "+14155550100", "from": "+14155550199", "agent_id": agent_id})),
    )
    .await;
    assert_eq!(call.status, StatusCode::CREATED, "{}", call.body);
    let call_id = s(&call.body, "id");
    let key = send(
        base,
        Method::POST,
        "/v1/api-keys",
        Some(&key_a),
        Some(json!({"name": "ci"})),
    )
    .await;
    let api_key_id = s(&key.body, "id");
    let number = send(
        base,
        Method::POST,
        "/v1/phone-numbers",
        Some(&key_a),
        Some(json!({"number": "+14155550777", "agent_id": agent_id})),
    )
    .await;
    let number_id = number.body["id"].as_str().map(str::to_owned);
    let endpoint = send(
        base,
        Method::POST,
        "/v1/webhook-endpoints",
        Some(&key_a),
        Some(json!({"url": "https://hooks.example.com/a", "event_types": ["call.ended"]})),
    )
    .await;
    assert_eq!(endpoint.status, StatusCode::CREATED, "{}", endpoint.body);
    let endpoint_id = s(&endpoint.body, "id");

    let id_for = |path: &str| -> String {
        if path.starts_with("/v1/calls/") {
            call_id.clone()
        } else if path.starts_with("/v1/agents/") {
            agent_id.clone()
        } else if path.starts_with("/v1/customers/") {
            customer_id.clone()
        } else if path.starts_with("/v1/api-keys/") {
            api_key_id.clone()
        } else if path.starts_with("/v1/users/") {
            reader_id.clone()
        } else if path.starts_with("/v1/webhook-endpoints/") {
            endpoint_id.clone()
        } else if path.starts_with("/v1/phone-numbers/") {
            number_id
                .clone()
                .unwrap_or_else(|| Uuid::new_v4().to_string())
        } else {
            Uuid::new_v4().to_string()
        }
    };

    let session = Uuid::new_v4();
    let expired = token_with(JWT_SECRET, &org_a, &reader_id, session, -3600);
    let foreign = token_with(
        "another-secret-another-secret-0123456789",
        &org_a,
        &reader_id,
        session,
        600,
    );
    let none = alg_none(&reader_token);
    let revoked_key = {
        let k = send(
            base,
            Method::POST,
            "/v1/api-keys",
            Some(&key_a),
            Some(json!({"name": "gone"})),
        )
        .await;
        let r = send(
            base,
            Method::DELETE,
            &format!("/v1/api-keys/{}", s(&k.body, "id")),
            Some(&key_a),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        s(&k.body, "api_key")
    };
    let bad_credentials: Vec<(&str, Option<String>)> = vec![
        ("no credentials", None),
        ("expired token", Some(expired)),
        ("token signed with another key", Some(foreign)),
        ("alg none", Some(none)),
        (
            "refresh token as access token",
            Some(reader_refresh.clone()),
        ),
        ("revoked API key", Some(revoked_key)),
        ("made-up API key", Some(format!("iace_{}", "0".repeat(64)))),
        ("junk", Some("Zm9v.YmFy.YmF6".into())),
    ];

    let mut walked = 0;
    for (method, path, access) in POLICY {
        let Access::Role(_) = access else {
            continue;
        };
        walked += 1;
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let own = concrete(path, &id_for(path));
        for (what, cred) in &bad_credentials {
            let r = send(
                base,
                m.clone(),
                &own,
                cred.as_deref(),
                body_for(method, path),
            )
            .await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{what}: {method} {own}: {}",
                r.body
            );
        }
        // Another organization: 404 for A's ids, never A's data.
        if path.contains("{id}") {
            let r = send(base, m.clone(), &own, Some(&key_b), body_for(method, path)).await;
            assert_eq!(
                r.status,
                StatusCode::NOT_FOUND,
                "other org: {method} {own}: {}",
                r.body
            );
            let text = r.body.to_string();
            assert!(!text.contains("Carol") && !text.contains("Ava"), "{text}");
        } else if *method == "GET" {
            let r = send(base, m.clone(), &own, Some(&key_b), None).await;
            let text = r.body.to_string();
            for secret in [&call_id, &agent_id, &customer_id, &org_a] {
                assert!(
                    !text.contains(secret.as_str()),
                    "other org sees A's {secret} at {own}: {text}"
                );
            }
        }
        // A read_only user: every write (and the admin-only key list) is 403, every other read
        // passes the role check. (The
        // expectation comes from the method, not from the table under test; revoke-all
        // would end the reader's own session: checked last.)
        if *path == "/v1/auth/revoke-all" {
            continue;
        }
        // Changing one's own password is a write every role may do (this body is incomplete:
        // 400, nothing changes).
        if *path == "/v1/me/password" {
            let r = send(base, m.clone(), &own, Some(&reader_token), Some(json!({}))).await;
            assert_eq!(
                r.status,
                StatusCode::BAD_REQUEST,
                "read_only: {own}: {}",
                r.body
            );
            continue;
        }
        let write = *method != "GET";
        let admin_only = ADMIN_ONLY.contains(&(*method, *path));
        let r = send(
            base,
            m.clone(),
            &own,
            Some(&reader_token),
            body_for(method, path),
        )
        .await;
        if write || admin_only {
            assert_eq!(
                r.status,
                StatusCode::FORBIDDEN,
                "read_only: {method} {own}: {}",
                r.body
            );
        } else {
            assert_ne!(
                r.status,
                StatusCode::FORBIDDEN,
                "read_only: {method} {own}: {}",
                r.body
            );
            assert_ne!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "read_only: {method} {own}: {}",
                r.body
            );
        }
        // A member: the administrative routes are 403, reads are not (member writes are
        // allowed and would change A's data: left to the other tests).
        if admin_only {
            let r = send(
                base,
                m.clone(),
                &own,
                Some(&member_token),
                body_for(method, path),
            )
            .await;
            assert_eq!(
                r.status,
                StatusCode::FORBIDDEN,
                "member: {method} {own}: {}",
                r.body
            );
        } else if !write {
            let r = send(base, m.clone(), &own, Some(&member_token), None).await;
            assert_ne!(
                r.status,
                StatusCode::FORBIDDEN,
                "member: {method} {own}: {}",
                r.body
            );
        }
    }
    assert!(walked >= 30, "walked {walked} routes");
    let r = send(
        base,
        Method::POST,
        "/v1/auth/revoke-all",
        Some(&reader_token),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // Nothing any of that did changed A's data.
    let calls = send(base, Method::GET, "/v1/calls", Some(&key_a), None).await;
    assert_eq!(calls.body["data"].as_array().unwrap().len(), 1);
    let c = send(
        base,
        Method::GET,
        &format!("/v1/customers/{customer_id}"),
        Some(&key_a),
        None,
    )
    .await;
    assert_eq!(c.body["name"], "Carol");
    let _ = org_b;
}

#[tokio::test]
async fn cors_answers_the_configured_origin_only() {
    let db = common::db::fresh_database().await;
    let srv = server(&db, &[]).await;
    let base = &srv.base;

    // CORS: the configured origin only.
    let http = reqwest::Client::new();
    for (origin, allowed) in [(ORIGIN, true), ("https://evil.example.com", false)] {
        let r = http
            .request(Method::OPTIONS, format!("{base}/v1/calls"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
            .await
            .unwrap();
        let header = r
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            header.as_deref() == Some(origin),
            allowed,
            "{origin}: {header:?}"
        );
    }
}
