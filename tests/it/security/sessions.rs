//! Sign-in with passwords: the `iace user create` command, sign-in and refresh-token rotation
//! with reuse detection, logout and revoke-all, and the per-account limit on guessed passwords.

use reqwest::{Method, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{email, login, refresh, s, send, server, PASSWORD};
use crate::common;
use crate::common::server::{create_org, create_user};

#[tokio::test]
async fn the_user_command_refuses_bad_input_and_prints_a_generated_password_once() {
    // The command migrates the database itself: no server needed.
    let db = common::db::fresh_database().await;
    let (org, _) = create_org(&db, "Acme");
    let alice = email();
    create_user(&db, &org, &alice, "member", PASSWORD);

    // The CLI refuses bad input and stores nothing.
    let bad = common::server::admin(
        &db,
        &[
            "user",
            "create",
            "--org",
            &org,
            "--email",
            "x@example.com",
            "--role",
            "root",
        ],
        None,
    );
    assert!(bad.unwrap_err().contains("--role"));
    let short = common::server::admin(
        &db,
        &[
            "user",
            "create",
            "--org",
            &org,
            "--email",
            "y@example.com",
            "--role",
            "member",
            "--password-stdin",
        ],
        Some("short\n"),
    );
    assert!(short.unwrap_err().contains("at least 12"));
    let dup = common::server::admin(
        &db,
        &[
            "user",
            "create",
            "--org",
            &org,
            "--email",
            &alice.to_uppercase(),
            "--role",
            "admin",
            "--password-stdin",
        ],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(dup.unwrap_err().contains("already exists"));
    // Without --password-stdin a one-time password is printed once.
    let generated = common::server::admin(
        &db,
        &[
            "user",
            "create",
            "--org",
            &org,
            "--email",
            &email(),
            "--role",
            "read_only",
        ],
        None,
    )
    .unwrap();
    assert_eq!(generated["password"].as_str().unwrap().len(), 24);
}

#[tokio::test]
async fn login_refresh_rotation_reuse_detection_and_logout() {
    let db = common::db::fresh_database().await;
    let srv = server(&db, &[]).await;
    let base = &srv.base;
    let (org, _) = create_org(&db, "Acme");
    let alice = email();
    create_user(&db, &org, &alice, "member", PASSWORD);

    // Wrong password and unknown email: the same 401.
    let wrong = login(base, &alice, "not the password at all").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.body["error"]["code"], "invalid_credentials");
    let unknown = login(base, &email(), PASSWORD).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.body["error"]["code"], "invalid_credentials");

    let first = login(base, &alice.to_uppercase(), PASSWORD).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.body["expires_in"], 1800);
    assert_eq!(first.body["refresh_expires_in"], 7 * 24 * 3600);
    let access_a = s(&first.body, "access_token");
    let refresh_a = s(&first.body, "refresh_token");
    let me = send(base, Method::GET, "/v1/me", Some(&access_a), None).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["role"], "member");
    assert_eq!(me.body["organization_id"], org.as_str());

    // Only the hash of the refresh token is stored.
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let stored: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM refresh_token")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        stored,
        vec![hex::encode(Sha256::digest(refresh_a.as_bytes()))]
    );
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM app_user WHERE email = $1")
        .bind(&alice)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");

    // Rotation: a new pair; the session's access tokens keep working.
    let second = refresh(base, &refresh_a).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    let refresh_b = s(&second.body, "refresh_token");
    let access_b = s(&second.body, "access_token");
    assert_ne!(refresh_a, refresh_b);
    for token in [&access_a, &access_b] {
        let r = send(base, Method::GET, "/v1/calls", Some(token), None).await;
        assert_eq!(r.status, StatusCode::OK);
    }

    // Reuse of the rotated token: the whole family is revoked, including the newest token
    // and every access token of the session.
    let replay = refresh(base, &refresh_a).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    assert_eq!(replay.body["error"]["code"], "refresh_token_reused");
    let after = refresh(base, &refresh_b).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert_eq!(after.body["error"]["code"], "invalid_token");
    for token in [&access_a, &access_b] {
        let r = send(base, Method::GET, "/v1/me", Some(token), None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
        assert_eq!(r.headers["www-authenticate"], "Bearer");
    }
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT revoke_reason FROM refresh_token")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(reasons, vec!["reuse".to_owned()]);

    // Logout ends one session; revoke-all ends the others.
    let one = login(base, &alice, PASSWORD).await.body;
    let two = login(base, &alice, PASSWORD).await.body;
    let three = login(base, &alice, PASSWORD).await.body;
    let out = send(
        base,
        Method::POST,
        "/v1/auth/revoke",
        None,
        Some(json!({"refresh_token": s(&one, "refresh_token")})),
    )
    .await;
    assert_eq!(out.body, json!({"revoked": true}));
    let r = send(
        base,
        Method::GET,
        "/v1/me",
        Some(&s(&one, "access_token")),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(
        base,
        Method::GET,
        "/v1/me",
        Some(&s(&two, "access_token")),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "other sessions live on");
    let all = send(
        base,
        Method::POST,
        "/v1/auth/revoke-all",
        Some(&s(&two, "access_token")),
        None,
    )
    .await;
    assert_eq!(all.body, json!({"revoked_sessions": 2}));
    for session in [&two, &three] {
        let r = send(
            base,
            Method::GET,
            "/v1/me",
            Some(&s(session, "access_token")),
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let r = refresh(base, &s(session, "refresh_token")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // An unknown token: 200 with nothing revoked (RFC 7009).
    let out = send(
        base,
        Method::POST,
        "/v1/auth/revoke",
        None,
        Some(json!({"refresh_token": "iacert_nope"})),
    )
    .await;
    assert_eq!(out.body, json!({"revoked": false}));
}

#[tokio::test]
async fn guessing_one_accounts_password_is_refused_after_ten_attempts() {
    let db = common::db::fresh_database().await;
    let srv = server(&db, &[]).await;
    let base = &srv.base;
    let (org, _) = create_org(&db, "Acme");

    // Guessing passwords: 10 attempts per account per 5 minutes, then 429.
    let victim = email();
    create_user(&db, &org, &victim, "admin", PASSWORD);
    for _ in 0..10 {
        assert_eq!(
            login(base, &victim, "guess guess guess").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let limited = login(base, &victim, PASSWORD).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers.contains_key("retry-after"));
}
