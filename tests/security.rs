//! Accounts and security end to end: the real `iace` binary, real Postgres and real Redis.
//! Sign-in and refresh rotation (with reuse detection), logout, API keys, every route against
//! every kind of bad credential, Stripe and HubSpot webhooks, plan limits shared by two server
//! processes, CORS. Requires `DATABASE_URL` and `REDIS_URL` (`eval "$(scripts/services env)"`).

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use iace::auth::jwt::{Claims, Key, KeyRing};
use iace::http::auth::{Access, POLICY};
use reqwest::{header::HeaderMap, Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use common::server::{create_org, create_user, Server};

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

#[tokio::test]
async fn login_refresh_rotation_reuse_detection_and_logout() {
    let db = common::db::fresh_database().await;
    let srv = server(&db, &[]).await;
    let base = &srv.base;
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

/// `iace_signin_refused_total{reason}`, read on the server's metrics listener.
async fn signin_refused(metrics_base: &str, reason: &str) -> u64 {
    let text = reqwest::get(format!("{metrics_base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("iace_signin_refused_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// A sign-in sent with `X-Forwarded-For: forwarded`.
async fn login_via(base: &str, email: &str, forwarded: &str) -> Answer {
    answer(
        reqwest::Client::new()
            .post(format!("{base}/v1/auth/login"))
            .header("x-forwarded-for", forwarded)
            .json(&json!({"email": email, "password": PASSWORD})),
    )
    .await
}

fn assert_rate_limited(a: &Answer, what: &str) {
    assert_eq!(
        a.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{what}: {}",
        a.body
    );
    assert_eq!(a.body["error"]["code"], "rate_limited", "{what}");
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=600).contains(&retry), "{what}: Retry-After {retry}");
}

#[tokio::test]
async fn sign_ins_per_client_address_are_budgeted_before_any_password_check() {
    let db = common::db::fresh_database().await;
    let srv = server(
        &db,
        &[
            ("IACE_SIGNIN_ADDRESS_LIMIT", "3"),
            ("IACE_SIGNIN_GLOBAL_LIMIT", "0"),
            ("IACE_SIGNIN_WINDOW_SECS", "600"),
        ],
    )
    .await;
    let base = &srv.base;
    let (org, _) = create_org(&db, "Addresses");
    let user = email();
    create_user(&db, &org, &user, "member", PASSWORD);

    // Distinct unknown emails from one address: each account's own budget never applies.
    for _ in 0..3 {
        assert_eq!(
            login(base, &email(), PASSWORD).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let refused = login(base, &email(), PASSWORD).await;
    assert_rate_limited(&refused, "the 4th sign-in from the address");
    // The right password does not get past it, and a forged X-Forwarded-For is not trusted
    // (no trusted proxy is configured).
    assert_rate_limited(&login(base, &user, PASSWORD).await, "a good password");
    assert_rate_limited(
        &login_via(base, &email(), "198.51.100.1").await,
        "a forged X-Forwarded-For",
    );
    assert_eq!(signin_refused(&srv.metrics_base, "address").await, 3);
    assert_eq!(signin_refused(&srv.metrics_base, "global").await, 0);
    drop(srv);

    // Behind a trusted proxy each forwarded client has a budget of its own.
    let srv = server(
        &db,
        &[
            ("IACE_SIGNIN_ADDRESS_LIMIT", "2"),
            ("IACE_SIGNIN_GLOBAL_LIMIT", "0"),
            ("IACE_SIGNIN_WINDOW_SECS", "600"),
            ("IACE_TRUSTED_PROXIES", "127.0.0.0/8,::1"),
            (
                "IACE_RATE_LIMIT_PREFIX",
                &format!("iace:test:rl:{}:", Uuid::new_v4().simple()),
            ),
        ],
    )
    .await;
    let base = &srv.base;
    for _ in 0..2 {
        let a = login_via(base, &email(), "198.51.100.1").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
    }
    assert_rate_limited(
        &login_via(base, &email(), "198.51.100.1").await,
        "the forwarded client's 3rd",
    );
    // Forged entries left of what the proxy appended do not help.
    assert_rate_limited(
        &login_via(base, &email(), "203.0.113.5, 198.51.100.1").await,
        "a forged entry before the client's",
    );
    let other = login_via(base, &user, "198.51.100.2").await;
    assert_eq!(
        other.status,
        StatusCode::OK,
        "another client: {}",
        other.body
    );
}

#[tokio::test]
async fn the_global_sign_in_budget_refuses_before_any_password_check() {
    let db = common::db::fresh_database().await;
    let srv = server(
        &db,
        &[
            ("IACE_SIGNIN_ADDRESS_LIMIT", "0"),
            ("IACE_SIGNIN_GLOBAL_LIMIT", "4"),
            ("IACE_SIGNIN_WINDOW_SECS", "600"),
        ],
    )
    .await;
    let base = &srv.base;
    let (org, _) = create_org(&db, "Global");
    let user = email();
    create_user(&db, &org, &user, "member", PASSWORD);
    let first = login(base, &user, PASSWORD).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    for _ in 0..3 {
        assert_eq!(
            login(base, &email(), PASSWORD).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_rate_limited(&login(base, &email(), PASSWORD).await, "the 5th sign-in");
    assert_rate_limited(&login(base, &user, PASSWORD).await, "a good password");
    assert_eq!(signin_refused(&srv.metrics_base, "global").await, 2);
    // Sessions already open are unaffected: refresh does not count as a sign-in.
    let rotated = refresh(base, &s(&first.body, "refresh_token")).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
}

#[tokio::test]
async fn a_full_password_pool_refuses_fast_with_retry_after_and_nothing_else_fails() {
    let db = common::db::fresh_database().await;
    let srv = server(
        &db,
        &[
            ("IACE_SIGNIN_ADDRESS_LIMIT", "0"),
            ("IACE_SIGNIN_GLOBAL_LIMIT", "0"),
            ("IACE_PASSWORD_WORKERS", "1"),
            ("IACE_PASSWORD_QUEUE", "1"),
        ],
    )
    .await;
    let base = srv.base.clone();
    let (org, key) = create_org(&db, "Pool");
    let user = email();
    create_user(&db, &org, &user, "member", PASSWORD);

    // Bursts of concurrent sign-ins with distinct unknown emails until one finds the pool
    // full (one check running, one waiting: the rest of a burst is refused).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut overloaded = 0;
    while overloaded == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no sign-in was refused by a full pool within 60 s"
        );
        let burst: Vec<_> = (0..16)
            .map(|_| {
                let base = base.clone();
                tokio::spawn(async move { login(&base, &email(), PASSWORD).await })
            })
            .collect();
        for a in burst {
            let a = a.await.unwrap();
            match a.status {
                StatusCode::UNAUTHORIZED => {}
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(a.body["error"]["code"], "overloaded", "{}", a.body);
                    assert_eq!(a.headers["retry-after"], "1");
                    overloaded += 1;
                }
                other => panic!(
                    "only 401 or the explicit 503 refusal, got {other}: {}",
                    a.body
                ),
            }
        }
    }
    assert_eq!(
        signin_refused(&srv.metrics_base, "overloaded").await,
        overloaded
    );
    // API requests never wait for the pool.
    let agents = send(&base, Method::GET, "/v1/agents", Some(&key), None).await;
    assert_eq!(agents.status, StatusCode::OK);
    // Once the burst is over, sign-in works.
    let ok = login(&base, &user, PASSWORD).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
}

#[tokio::test]
async fn rotating_the_signing_key_keeps_sessions_until_the_old_key_is_dropped() {
    const NEW_SECRET: &str = "the-next-signing-secret-0123456789-abcdefghij";
    let db = common::db::fresh_database().await;
    let mut srv = server(&db, &[]).await;
    let (org, _) = create_org(&db, "Rotation");
    let user = email();
    create_user(&db, &org, &user, "member", PASSWORD);
    let session = login(&srv.base, &user, PASSWORD).await.body;
    let old_access = s(&session, "access_token");

    // New key signs, old key still verifies: nobody is logged out.
    srv.kill9();
    srv.set_env("IACE_JWT_SECRET", NEW_SECRET);
    srv.set_env("IACE_JWT_PREVIOUS_SECRETS", JWT_SECRET);
    srv.spawn().await;
    let r = send(&srv.base, Method::GET, "/v1/me", Some(&old_access), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let renewed = refresh(&srv.base, &s(&session, "refresh_token")).await;
    assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.body);
    let new_access = s(&renewed.body, "access_token");
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(new_access.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], iace::auth::key_id(NEW_SECRET.as_bytes()));
    assert_eq!(header["alg"], "HS256");

    // The old key dropped: its tokens are refused, the new ones work.
    srv.kill9();
    srv.set_env("IACE_JWT_PREVIOUS_SECRETS", "");
    srv.spawn().await;
    let r = send(&srv.base, Method::GET, "/v1/me", Some(&old_access), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(&srv.base, Method::GET, "/v1/me", Some(&new_access), None).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// An Ed25519 key written as PEM (PKCS#8) to a fresh file; returns the path.
fn key_file(seed: u8) -> std::path::PathBuf {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let pem = ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
        .to_pkcs8_pem(Default::default())
        .unwrap();
    let path = std::env::temp_dir().join(format!("iace-jwt-{}.pem", Uuid::new_v4().simple()));
    std::fs::write(&path, pem.as_bytes()).unwrap();
    path
}

fn jwt_header(token: &str) -> Value {
    serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn an_ed25519_key_file_signs_publishes_its_key_and_takes_over_from_the_secret() {
    let db = common::db::fresh_database().await;
    let mut srv = server(&db, &[]).await;
    let (org, _) = create_org(&db, "Keys");
    let user = email();
    create_user(&db, &org, &user, "member", PASSWORD);
    let hs_session = login(&srv.base, &user, PASSWORD).await.body;
    let hs_access = s(&hs_session, "access_token");
    let jwks = send(&srv.base, Method::GET, "/.well-known/jwks.json", None, None).await;
    assert_eq!(jwks.status, StatusCode::OK);
    assert_eq!(
        jwks.body,
        json!({"keys": []}),
        "secrets are never published"
    );

    // The key file signs, the secret still verifies: the HS256 session lives on.
    let first = key_file(11);
    srv.kill9();
    srv.set_env("IACE_JWT_KEY_FILE", first.to_str().unwrap());
    srv.spawn().await;
    let r = send(&srv.base, Method::GET, "/v1/me", Some(&hs_access), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let ed_session = login(&srv.base, &user, PASSWORD).await.body;
    let ed_access = s(&ed_session, "access_token");
    let head = jwt_header(&ed_access);
    assert_eq!(head["alg"], "EdDSA");
    let r = send(&srv.base, Method::GET, "/v1/me", Some(&ed_access), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // Anyone can check the token with the published key alone.
    let jwks = send(&srv.base, Method::GET, "/.well-known/jwks.json", None, None).await;
    assert_eq!(jwks.headers["cache-control"], "public, max-age=300");
    let keys = jwks.body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{}", jwks.body);
    assert_eq!(keys[0]["kid"], head["kid"]);
    assert_eq!(
        (keys[0]["kty"].as_str(), keys[0]["crv"].as_str()),
        (Some("OKP"), Some("Ed25519"))
    );
    let x: [u8; 32] = URL_SAFE_NO_PAD
        .decode(keys[0]["x"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let public = ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap();
    let (input, sig) = ed_access.rsplit_once('.').unwrap();
    let sig = ed25519_dalek::Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap()).unwrap();
    public.verify_strict(input.as_bytes(), &sig).unwrap();

    // The same claims under HS256 keyed with the published public key: refused.
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(input.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let confused_head =
        URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "kid": head["kid"]}).to_string());
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(&x).unwrap();
    mac.update(format!("{confused_head}.{body}").as_bytes());
    let confused = format!(
        "{confused_head}.{body}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    );
    let r = send(&srv.base, Method::GET, "/v1/me", Some(&confused), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Rotation: a new key file signs, the old one only verifies; then the secret is dropped.
    let second = key_file(12);
    srv.kill9();
    srv.set_env("IACE_JWT_KEY_FILE", second.to_str().unwrap());
    srv.set_env("IACE_JWT_VERIFY_KEY_FILES", first.to_str().unwrap());
    srv.set_env("IACE_JWT_SECRET", "");
    srv.spawn().await;
    let r = send(&srv.base, Method::GET, "/v1/me", Some(&ed_access), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = send(&srv.base, Method::GET, "/v1/me", Some(&hs_access), None).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "the dropped secret's tokens are refused"
    );
    let renewed = refresh(&srv.base, &s(&ed_session, "refresh_token")).await;
    assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.body);
    let newest = jwt_header(&s(&renewed.body, "access_token"));
    assert_eq!(newest["alg"], "EdDSA");
    assert_ne!(newest["kid"], head["kid"], "the new key signs");
    let jwks = send(&srv.base, Method::GET, "/.well-known/jwks.json", None, None).await;
    assert_eq!(
        jwks.body["keys"].as_array().unwrap().len(),
        2,
        "{}",
        jwks.body
    );
    for path in [first, second] {
        let _ = std::fs::remove_file(path);
    }
}

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
const ADMIN_ONLY: [(&str, &str); 13] = [
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
    let metrics = reqwest::get(format!("{}/metrics", srv.metrics_base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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

#[tokio::test]
async fn rate_limits_hold_across_two_server_processes_sharing_redis() {
    let db = common::db::fresh_database().await;
    let one = server(&db, &[]).await;
    let two = server(&db, &[]).await;
    let (_, owner) = create_org(&db, "Busy");
    // A `low` key: 60 requests per minute, whichever node serves them.
    let k = send(
        &one.base,
        Method::POST,
        "/v1/api-keys",
        Some(&owner),
        Some(json!({"name": "batch", "tier": "low"})),
    )
    .await;
    let low = s(&k.body, "api_key");
    let mut remaining = Vec::new();
    for i in 0..60 {
        let base = if i % 2 == 0 { &one.base } else { &two.base };
        let r = send(base, Method::GET, "/v1/agents", Some(&low), None).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.body);
        remaining.push(
            r.headers["ratelimit-remaining"]
                .to_str()
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
        assert_eq!(r.headers["ratelimit-limit"], "60");
    }
    assert_eq!(remaining.first(), Some(&59));
    assert_eq!(remaining.last(), Some(&0));
    for base in [&one.base, &two.base] {
        let r = send(base, Method::GET, "/v1/agents", Some(&low), None).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
        assert_eq!(r.body["error"]["code"], "rate_limited");
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(r.headers["ratelimit-remaining"], "0");
    }
    // The owner's key has its own budget (the organization's 120 is not exhausted).
    let r = send(&two.base, Method::GET, "/v1/agents", Some(&owner), None).await;
    assert_eq!(r.status, StatusCode::OK);

    // The free plan's concurrent-call limit (2), counted across both nodes.
    let agent = send(
        &one.base,
        Method::POST,
        "/v1/agents",
        Some(&owner),
        Some(json!({"name": "Ava"})),
    )
    .await;
    let agent_id = s(&agent.body, "id");
    let call = json!({"to": "+14155550100", "from": "+14155550199", "agent_id": agent_id});
    // Both nodes claim every shard of this database and the second one started owns the calls,
    // so creates go to it (store_pg's racing_limited_inserts_never_pass_the_live_call_limit
    // races separate connections, as separate nodes would); the count is read on the other.
    let create = |base: String, key: String| {
        let owner = owner.clone();
        let call = call.clone();
        async move {
            let req = reqwest::Client::new()
                .post(format!("{base}/v1/calls"))
                .bearer_auth(owner)
                .header("idempotency-key", key)
                .json(&call);
            answer(req).await
        }
    };
    // Ten creates racing for the plan's two slots at once: exactly two admitted.
    let burst: Vec<_> = (0..10)
        .map(|i| tokio::spawn(create(two.base.clone(), format!("slot-{i}"))))
        .collect();
    let mut admitted = Vec::new();
    for (i, r) in burst.into_iter().enumerate() {
        let r = r.await.unwrap();
        if r.status == StatusCode::CREATED {
            admitted.push(i);
            continue;
        }
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
        assert_eq!(r.body["error"]["code"], "concurrent_call_limit");
        assert_eq!(r.headers["retry-after"], "5");
        assert!(
            s(&r.body["error"], "message").contains("free plan allows 2 live calls"),
            "{}",
            r.body
        );
    }
    assert_eq!(admitted.len(), 2, "admitted {admitted:?}");
    // A client retrying a create it was told succeeded gets its call back, even at the limit.
    let r = create(two.base.clone(), format!("slot-{}", admitted[0])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.headers["idempotent-replayed"], "true");
    let org = send(
        &one.base,
        Method::GET,
        "/v1/organization",
        Some(&owner),
        None,
    )
    .await;
    assert_eq!(org.body["live_calls"], 2, "{}", org.body);
    assert_eq!(org.body["limits"]["concurrent_calls"], 2, "{}", org.body);
}

// ---------------------------------------------------------------------------------------------
// The HTTP edge: timeouts, the connection cap, oversized requests, readiness, open files.

/// How long any socket-level expectation below may take before it counts as not happening.
const EDGE_BOUND: std::time::Duration = std::time::Duration::from_secs(30);

/// `host:port` of a base URL.
fn addr_of(base: &str) -> String {
    base.trim_start_matches("http://").to_owned()
}

/// The value of one series on the metrics listener (0 when absent).
async fn series(metrics_base: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{metrics_base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Polls until `series >= at_least`, or panics after [`EDGE_BOUND`].
async fn wait_series(metrics_base: &str, name: &str, at_least: f64) {
    let deadline = std::time::Instant::now() + EDGE_BOUND;
    loop {
        let v = series(metrics_base, name).await;
        if v >= at_least {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} stayed at {v}, expected at least {at_least}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Whether the server closes `tcp` within [`EDGE_BOUND`] (reads and discards what it sends).
async fn closed_by_server(tcp: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    tokio::time::timeout(EDGE_BOUND, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Sends `request` on a fresh connection and returns everything the server answers until it
/// closes: (status, head, body).
async fn raw_exchange(addr: &str, request: &[u8]) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(EDGE_BOUND, async {
        let mut buf = [0u8; 8192];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no complete answer within {EDGE_BOUND:?}: {}",
        String::from_utf8_lossy(&out)
    );
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    (status, head.to_owned(), body.to_owned())
}

/// The envelope's code, and a check that it carries a request id.
fn envelope_code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert!(
        v["error"]["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{v}"
    );
    assert!(v["error"]["message"].as_str().is_some(), "{v}");
    v["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn slow_headers_slow_bodies_and_idle_connections_are_closed_and_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = common::db::fresh_database().await;
    let srv = server(
        &db,
        &[
            ("IACE_HTTP_HEADER_TIMEOUT_SECS", "1"),
            ("IACE_HTTP_BODY_TIMEOUT_SECS", "1"),
            ("IACE_HTTP_IDLE_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let addr = addr_of(&srv.base);

    // Headers trickled a byte at a time never finish: closed at the header timeout, however
    // steadily the bytes come.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let trickle = async {
        loop {
            if slow.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    let closed = tokio::time::timeout(EDGE_BOUND, trickle).await.is_ok();
    assert!(closed, "a slow-headers connection is closed");
    wait_series(
        &srv.metrics_base,
        "iace_http_connections_timed_out_total{phase=\"header\"}",
        1.0,
    )
    .await;

    // A body declared and never sent: closed at the body timeout.
    let mut body = tokio::net::TcpStream::connect(&addr).await.unwrap();
    body.write_all(
        b"POST /v1/webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\":",
    )
    .await
    .unwrap();
    assert!(closed_by_server(&mut body).await, "a slow body is closed");
    wait_series(
        &srv.metrics_base,
        "iace_http_connections_timed_out_total{phase=\"body\"}",
        1.0,
    )
    .await;

    // A keep-alive connection that served a request and then says nothing: closed at the
    // idle timeout.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    assert!(
        closed_by_server(&mut idle).await,
        "an idle connection is closed"
    );
    wait_series(
        &srv.metrics_base,
        "iace_http_connections_timed_out_total{phase=\"idle\"}",
        1.0,
    )
    .await;
    // None of them is left open (the metrics listener's own connections are not counted).
    let deadline = std::time::Instant::now() + EDGE_BOUND;
    while series(&srv.metrics_base, "iace_http_connections_open").await > 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "connections left open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn oversized_requests_are_refused_at_once_with_the_envelope_on_every_route() {
    let db = common::db::fresh_database().await;
    let srv = server(&db, &[]).await;
    let (_, key) = create_org(&db, "Edge");
    let addr = addr_of(&srv.base);

    // A declared body over the limit is refused before any of it is sent: on an
    // authenticated route (with and without credentials) and on a public webhook.
    for (path, auth) in [
        ("/v1/calls", format!("Authorization: Bearer {key}\r\n")),
        ("/v1/calls", String::new()),
        ("/v1/webhooks/stripe", String::new()),
    ] {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n"
        );
        let (status, head, body) = raw_exchange(&addr, request.as_bytes()).await;
        assert_eq!(status, 413, "{path}: {head}\n{body}");
        assert_eq!(envelope_code(&body), "payload_too_large", "{path}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
    }

    // A chunked body that grows past the limit (nothing declared) gets the envelope too.
    let big = "x".repeat(300 * 1024);
    let chunked = format!(
        "POST /v1/webhooks/stripe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let (status, _, body) = raw_exchange(&addr, chunked.as_bytes()).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(envelope_code(&body), "payload_too_large");

    // A URI longer than the HTTP parser takes: 414 with the envelope.
    let long = format!(
        "GET /v1/calls?q={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let (status, head, body) = raw_exchange(&addr, long.as_bytes()).await;
    assert_eq!(status, 414, "{head}");
    assert_eq!(envelope_code(&body), "uri_too_long");

    // The Telnyx webhook (public, signature-checked) refuses it too.
    let public_key = base64::engine::general_purpose::STANDARD.encode(
        ed25519_dalek::SigningKey::from_bytes(&[7; 32])
            .verifying_key()
            .as_bytes(),
    );
    let telnyx = Server::start(
        &db,
        &[
            ("IACE_TELEPHONY", "telnyx"),
            ("TELNYX_API_KEY", "KEY-test"),
            ("TELNYX_CONNECTION_ID", "conn-test"),
            ("TELNYX_PUBLIC_KEY", &public_key),
            ("IACE_PUBLIC_URL", "http://127.0.0.1:9"),
        ],
    )
    .await;
    let request = "POST /v1/webhooks/telnyx HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n";
    let (status, head, body) = raw_exchange(&addr_of(&telnyx.base), request.as_bytes()).await;
    assert_eq!(status, 413, "{head}\n{body}");
    assert_eq!(envelope_code(&body), "payload_too_large");
}

#[tokio::test]
async fn beyond_the_connection_cap_connections_get_503_and_probes_keep_an_answer() {
    let db = common::db::fresh_database().await;
    let srv = server(&db, &[("IACE_MAX_CONNECTIONS", "4")]).await;
    let addr = addr_of(&srv.base);
    let open = "iace_http_connections_open";
    // Idle clients take every slot of the cap.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    wait_series(&srv.metrics_base, open, 4.0).await;

    // At the cap: the node says it is not ready, still alive, and refuses other work.
    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let ready = fresh()
        .get(format!("{}/ready", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let health = fresh()
        .get(format!("{}/health", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let work = fresh()
        .get(format!("{}/v1/me", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(work.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(work.headers()["retry-after"], "1");
    let body: Value = work.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    let detail: Value = reqwest::get(format!("{}/ready", srv.metrics_base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        detail["checks"]["http_edge"]
            .as_str()
            .unwrap()
            .contains("connection cap"),
        "{detail}"
    );

    // The probes' reserve taken too: a new connection is answered 503 and closed.
    for _ in 0..iace::edge::PROBE_RESERVE {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    wait_series(
        &srv.metrics_base,
        open,
        (4 + iace::edge::PROBE_RESERVE) as f64,
    )
    .await;
    let (status, head, body) =
        raw_exchange(&addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 503, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    assert_eq!(envelope_code(&body), "overloaded");
    wait_series(
        &srv.metrics_base,
        "iace_http_connections_refused_total{reason=\"at_capacity\"}",
        1.0,
    )
    .await;

    // Slots come back when clients leave.
    drop(held);
    let deadline = std::time::Instant::now() + EDGE_BOUND;
    loop {
        let r = fresh()
            .get(format!("{}/ready", srv.base))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::OK {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still at the cap");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn after_sigterm_the_node_drains_not_ready_but_alive() {
    let db = common::db::fresh_database().await;
    let srv = server(&db, &[("IACE_DRAIN_SECS", "120")]).await;
    let http = reqwest::Client::new();
    let ready = http
        .get(format!("{}/ready", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    srv.sigterm();
    let deadline = std::time::Instant::now() + EDGE_BOUND;
    loop {
        let r = http
            .get(format!("{}/ready", srv.base))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            let body: Value = r.json().await.unwrap();
            assert_eq!(body, json!({"status": "unavailable"}));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still ready after SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let health = http
        .get(format!("{}/health", srv.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK, "alive while draining");
    let detail: Value = http
        .get(format!("{}/ready", srv.metrics_base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        detail["checks"]["http_edge"]
            .as_str()
            .unwrap()
            .contains("draining"),
        "{detail}"
    );
}

#[tokio::test]
async fn the_server_raises_its_open_file_soft_limit_to_the_hard_limit() {
    let db = common::db::fresh_database().await;
    let mut srv = Server::start(&db, &[]).await;
    let limits = |pid: u32| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap()
            .to_owned();
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields[3].to_owned(), fields[4].to_owned())
    };
    let (_, hard) = limits(srv.pid());
    let Ok(hard_n) = hard.parse::<u64>() else {
        return; // unlimited: nothing to raise
    };
    if hard_n <= 256 {
        return; // no room to lower the soft limit below the hard one
    }
    // Started with a soft limit below the hard one, as on many hosts (1,024).
    srv.kill9();
    srv.nofile_soft = Some(256);
    srv.spawn().await;
    let (soft, hard_now) = limits(srv.pid());
    assert_eq!(hard_now, hard);
    assert_eq!(soft, hard, "soft raised to the hard limit");
}
