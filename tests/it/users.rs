//! User administration end to end (the real binary, Postgres, Redis): admins add, list,
//! promote, demote, disable and enable users within their own role and organization; the
//! organization always keeps an enabled owner, also when two owners demote each other at once;
//! disabling ends the user's sessions at once; changing one's password ends the other
//! sessions. Requires `DATABASE_URL` and `REDIS_URL`.

use crate::common;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use common::accounts::{email, s, PASSWORD};
use common::api::request;
use common::server::{create_org, create_user, Server};

async fn server(db: &str) -> Server {
    Server::start(
        db,
        &[(
            "IACE_JWT_SECRET",
            "users-test-signing-secret-0123456789-abcdef",
        )],
    )
    .await
}

/// Signs in: (status, body with access_token and refresh_token).
async fn login(base: &str, email: &str, password: &str) -> (StatusCode, Value) {
    let a = common::accounts::login(base, email, password).await;
    (a.status, a.body)
}

async fn token(base: &str, email: &str) -> String {
    let (status, body) = login(base, email, PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    s(&body, "access_token")
}

async fn patch_user(base: &str, as_: &str, id: &str, body: Value) -> (StatusCode, Value) {
    request(
        base,
        Method::PATCH,
        &format!("/v1/users/{id}"),
        Some(as_),
        Some(body),
    )
    .await
}

async fn users(base: &str, as_: &str) -> Vec<Value> {
    let (status, body) = request(base, Method::GET, "/v1/users", Some(as_), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn admins_manage_users_within_their_role_and_disabling_ends_sessions_at_once() {
    let db = common::db::fresh_database().await;
    let srv = server(&db).await;
    let base = &srv.base;
    let (org, _) = create_org(&db, "People");
    let owner_email = email();
    create_user(&db, &org, &owner_email, "owner", PASSWORD);
    let owner = token(base, &owner_email).await;

    // The owner adds an admin with a chosen password and a member with a generated one.
    let admin_email = email();
    let (status, admin) = request(
        base,
        Method::POST,
        "/v1/users",
        Some(&owner),
        Some(json!({"email": admin_email.to_uppercase(), "role": "admin", "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{admin}");
    assert_eq!(admin["email"], admin_email.as_str(), "stored lower-case");
    assert!(
        admin.get("password").is_none(),
        "a chosen password is not echoed"
    );
    let member_email = email();
    let (status, member) = request(
        base,
        Method::POST,
        "/v1/users",
        Some(&owner),
        Some(json!({"email": member_email})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{member}");
    assert_eq!(member["role"], "member", "the default role");
    let one_time = s(&member, "password");
    let member_id = s(&member, "id");
    let (status, member_login) = login(base, &member_email, &one_time).await;
    assert_eq!(status, StatusCode::OK, "the one-time password signs in");
    let member_token = s(&member_login, "access_token");
    let member_refresh = s(&member_login, "refresh_token");

    // Bad input: a clear 400 or 409, nothing stored.
    let admin_token = token(base, &admin_email).await;
    for (body, status) in [
        (json!({"email": "not-an-email"}), StatusCode::BAD_REQUEST),
        (
            json!({"email": email(), "password": "short"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"email": email(), "role": "root"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"email": email(), "role": "owner"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"email": email(), "extra": 1}),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"email": member_email}), StatusCode::CONFLICT),
    ] {
        let (got, answer) = request(
            base,
            Method::POST,
            "/v1/users",
            Some(&admin_token),
            Some(body.clone()),
        )
        .await;
        assert_eq!(got, status, "{body}: {answer}");
    }
    let listed = users(base, &admin_token).await;
    assert_eq!(listed.len(), 3, "{listed:?}");
    let text = Value::Array(listed).to_string();
    assert!(
        !text.contains("argon2") && !text.contains("password"),
        "{text}"
    );

    // An admin cannot touch the owner or grant owner; they can promote to admin.
    let owner_id = users(base, &owner)
        .await
        .iter()
        .find(|u| u["email"] == owner_email.as_str())
        .map(|u| s(u, "id"))
        .unwrap();
    let (status, body) = patch_user(base, &admin_token, &owner_id, json!({"role": "member"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = patch_user(base, &admin_token, &member_id, json!({"role": "owner"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = patch_user(base, &admin_token, &member_id, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "nothing to change: {body}");
    let (status, body) = patch_user(base, &admin_token, &member_id, json!({"role": "admin"})).await;
    assert_eq!(
        (status, &body["role"]),
        (StatusCode::OK, &json!("admin")),
        "{body}"
    );
    // The role in force changes at once, on the token already issued.
    let (_, me) = request(base, Method::GET, "/v1/me", Some(&member_token), None).await;
    assert_eq!(me["role"], "admin", "{me}");

    // Disabled: the session ends at once, no refresh, no sign-in; enabled: sign-in again.
    let admin_id = s(&admin, "id");
    let (status, body) = patch_user(base, &admin_token, &admin_id, json!({"disabled": true})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "not oneself: {body}");
    let (status, body) =
        patch_user(base, &admin_token, &member_id, json!({"disabled": true})).await;
    assert_eq!(
        (status, &body["disabled"]),
        (StatusCode::OK, &json!(true)),
        "{body}"
    );
    let (status, _) = request(base, Method::GET, "/v1/me", Some(&member_token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = request(
        base,
        Method::POST,
        "/v1/auth/refresh",
        None,
        Some(json!({"refresh_token": member_refresh})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        login(base, &member_email, &one_time).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, body) =
        patch_user(base, &admin_token, &member_id, json!({"disabled": false})).await;
    assert_eq!(
        (status, &body["disabled"]),
        (StatusCode::OK, &json!(false)),
        "{body}"
    );
    assert_eq!(
        login(base, &member_email, &one_time).await.0,
        StatusCode::OK
    );

    // Another organization sees none of it and can change none of it.
    let (other_org, other_key) = create_org(&db, "Elsewhere");
    let _ = other_org;
    let (status, _) = patch_user(base, &other_key, &member_id, json!({"disabled": true})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(users(base, &other_key).await.is_empty());
    assert_eq!(
        login(base, &member_email, &one_time).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_organization_always_keeps_an_enabled_owner() {
    let db = common::db::fresh_database().await;
    let srv = server(&db).await;
    let base = &srv.base;
    let (org, owner_key) = create_org(&db, "Owners");
    let (a_email, b_email) = (email(), email());
    let a_id = create_user(&db, &org, &a_email, "owner", PASSWORD);
    let b_id = create_user(&db, &org, &b_email, "member", PASSWORD);
    let a = token(base, &a_email).await;

    // The only owner can neither step down nor be disabled (not even by the owner's key).
    let (status, body) = patch_user(base, &a, &a_id, json!({"role": "admin"})).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::CONFLICT, &json!("last_owner"))
    );
    let (status, body) = patch_user(base, &owner_key, &a_id, json!({"disabled": true})).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::CONFLICT, &json!("last_owner"))
    );

    // Two owners demoting each other at the same moment: never both.
    let b = token(base, &b_email).await;
    for round in 0..10 {
        for id in [&a_id, &b_id] {
            let (status, body) = patch_user(base, &owner_key, id, json!({"role": "owner"})).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        let (ra, rb) = tokio::join!(
            patch_user(base, &a, &b_id, json!({"role": "admin"})),
            patch_user(base, &b, &a_id, json!({"role": "admin"})),
        );
        let ok = [&ra, &rb].iter().filter(|r| r.0 == StatusCode::OK).count();
        assert_eq!(ok, 1, "round {round}: {ra:?} {rb:?}");
        for (status, body) in [&ra, &rb] {
            assert!(
                [StatusCode::OK, StatusCode::CONFLICT, StatusCode::FORBIDDEN].contains(status),
                "round {round}: {status} {body}"
            );
        }
        let owners = users(base, &owner_key)
            .await
            .iter()
            .filter(|u| u["role"] == "owner" && u["disabled"] == false)
            .count();
        assert_eq!(owners, 1, "round {round}");
    }
}

#[tokio::test]
async fn changing_the_password_ends_every_other_session() {
    let db = common::db::fresh_database().await;
    let srv = server(&db).await;
    let base = &srv.base;
    let (org, key) = create_org(&db, "Passwords");
    let user = email();
    create_user(&db, &org, &user, "read_only", PASSWORD);
    let here = token(base, &user).await;
    let (_, elsewhere) = login(base, &user, PASSWORD).await;
    const NEW: &str = "a much better passphrase";
    let change =
        |current: &str, new: &str| json!({"current_password": current, "new_password": new});

    for (body, status) in [
        (change("wrong wrong wrong", NEW), StatusCode::FORBIDDEN),
        (change(PASSWORD, "short"), StatusCode::BAD_REQUEST),
        (json!({"new_password": NEW}), StatusCode::BAD_REQUEST),
    ] {
        let (got, answer) = request(
            base,
            Method::POST,
            "/v1/me/password",
            Some(&here),
            Some(body.clone()),
        )
        .await;
        assert_eq!(got, status, "{body}: {answer}");
    }
    let (status, _) = request(
        base,
        Method::POST,
        "/v1/me/password",
        Some(&key),
        Some(change(PASSWORD, NEW)),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "an API key has no password");
    assert_eq!(
        login(base, &user, PASSWORD).await.0,
        StatusCode::OK,
        "unchanged so far"
    );

    let (status, body) = request(
        base,
        Method::POST,
        "/v1/me/password",
        Some(&here),
        Some(change(PASSWORD, NEW)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = request(base, Method::GET, "/v1/me", Some(&here), None).await;
    assert_eq!(status, StatusCode::OK, "this session lives on");
    let (status, _) = request(
        base,
        Method::GET,
        "/v1/me",
        Some(&s(&elsewhere, "access_token")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the other session ended");
    let (status, _) = request(
        base,
        Method::POST,
        "/v1/auth/refresh",
        None,
        Some(json!({"refresh_token": s(&elsewhere, "refresh_token")})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        login(base, &user, PASSWORD).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(login(base, &user, NEW).await.0, StatusCode::OK);
}
