//! The keys that sign access tokens: rotating the HS256 secret, an Ed25519 key file that
//! publishes its public key (JWKS) and takes over from the secret, and algorithm confusion
//! with the published key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;
use uuid::Uuid;

use super::{email, login, refresh, s, send, server, JWT_SECRET, PASSWORD};
use crate::common;
use crate::common::server::{create_org, create_user};

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
