//! Users and sign-in for the end-to-end tests: the password test users get, unique emails,
//! sign-in and refresh over HTTP.

use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use super::api::{send, Answer};

/// The password of the users the tests create.
pub const PASSWORD: &str = "correct horse battery staple";

/// An email address no other test uses.
pub fn email() -> String {
    format!("u{}@example.com", Uuid::new_v4().simple())
}

/// The string field `k` of `v`, or a panic naming it.
pub fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("no {k} in {v}"))
        .to_owned()
}

/// `POST /v1/auth/login`.
pub async fn login(base: &str, email: &str, password: &str) -> Answer {
    send(
        base,
        Method::POST,
        "/v1/auth/login",
        None,
        Some(json!({"email": email, "password": password})),
    )
    .await
}

/// `POST /v1/auth/refresh`.
pub async fn refresh(base: &str, token: &str) -> Answer {
    send(
        base,
        Method::POST,
        "/v1/auth/refresh",
        None,
        Some(json!({"refresh_token": token})),
    )
    .await
}
