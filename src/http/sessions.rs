//! Sessions: `POST /v1/auth/login` (password sign-in behind per-account and per-address
//! budgets and the bounded password pool), `/refresh` (rotation with reuse detection),
//! `/revoke`, `/revoke-all`, `GET /v1/me`, and the access-token keys at
//! `GET /.well-known/jwks.json`.

use super::auth::Caller;
use super::error::ApiError;
use super::extract::AppJson;
use super::openapi::schemas as S;
use super::AppState;
use crate::auth::{self, jwt::Claims, ACCESS_TTL_SECS, REFRESH_TTL_SECS};
use crate::ratelimit::Decision;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use iace_actors::accounts::{NewRefreshToken, Rotation, Subject, User};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use uuid::Uuid;

/// `POST /v1/auth/login` body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    #[schema(format = Email)]
    email: String,
    #[schema(format = Password)]
    password: String,
}

/// `POST /v1/auth/refresh` and `/revoke` body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    /// `iacert_...`.
    refresh_token: String,
}

/// Failed sign-ins allowed per email per window.
const LOGIN_ATTEMPTS: u32 = 10;
const LOGIN_WINDOW: Duration = Duration::from_secs(300);

fn keys(state: &AppState) -> Result<&auth::jwt::KeyRing, ApiError> {
    state.security.keys.as_ref().ok_or_else(|| {
        ApiError::not_found(
            "user sign-in is not configured on this server (set IACE_JWT_SECRET or IACE_JWT_KEY_FILE)",
        )
    })
}

/// `GET /.well-known/jwks.json`: the public keys that verify our access tokens (Ed25519 keys
/// only; with HMAC secrets alone the set is empty, as such tokens can only be checked here).
#[utoipa::path(
    get, path = "/.well-known/jwks.json", tag = "sessions", operation_id = "get_jwks",
    responses(
        (status = 200, description = "The public keys of access tokens (RFC 7517).", body = S::Jwks),
        (status = 404, description = "User sign-in is not configured (`not_found`).", body = S::Error),
    ),
)]
pub async fn jwks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let ring = keys(&state)?;
    let mut resp = Json(ring.jwks()).into_response();
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("public, max-age=300"),
    );
    Ok(resp)
}

/// The budget key of an account (its email; unknown emails have one too, so a refusal says
/// nothing about which exist). Every sign-in key shares the `{signin}` hash tag: one
/// round trip checks them together, also in a Redis Cluster.
fn account_key(email: &str) -> String {
    format!("{{signin}}:account:{}", auth::sha256_hex(email))
}

/// Counts a password check against the account's budget (sign-in and password change share
/// it: 10 per 5 minutes), so neither can be used to guess a password quickly.
pub(crate) async fn password_attempt(state: &AppState, email: &str) -> Result<(), ApiError> {
    let Some(limiter) = &state.security.limiter else {
        return Ok(());
    };
    match limiter
        .check(&account_key(email), LOGIN_ATTEMPTS, LOGIN_WINDOW)
        .await
    {
        Decision::Limited { retry_after, .. } => Err(too_many_attempts(
            "too many password attempts for this account; wait and retry",
            retry_after,
        )),
        Decision::Unavailable => Err(password_checks_unavailable()),
        _ => Ok(()),
    }
}

fn too_many_attempts(message: &str, retry_after: Duration) -> ApiError {
    let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
    e.retry_after = Some(retry_after.as_secs_f64().ceil().max(1.0) as u64);
    e
}

fn password_checks_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "password checks are unavailable right now; retry",
    )
}

/// 503 `overloaded`: the password pool is full (see [`auth::pool`]).
pub(crate) fn overloaded() -> ApiError {
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "too many password checks at once; retry shortly",
    );
    e.retry_after = Some(auth::pool::Overloaded::RETRY_AFTER_SECS);
    e
}

/// The client's address for the per-address sign-in budget (see
/// [`auth::SigninLimits::client_address`]): the TCP peer, or what a trusted proxy forwarded.
/// `None` when the server was not started with connect info.
pub struct ClientAddr(pub Option<IpAddr>);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        if peer.is_none() {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "the client address is unknown (the server is not serving with connect \
                     info): the per-address sign-in budget is not applied"
                );
            });
        }
        let forwarded: Vec<&str> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        Ok(ClientAddr(
            state.security.signin.client_address(peer, &forwarded),
        ))
    }
}

/// Checks a sign-in against its budgets before any password work, in one round trip: the
/// account's (10 per 5 minutes), the client address's and the deployment's (per
/// `IACE_SIGNIN_*`). A sign-in refused by one budget consumes none, so a flood refused per
/// address does not eat the global budget of everyone else.
async fn signin_budgets(
    state: &AppState,
    email: &str,
    client: Option<IpAddr>,
) -> Result<(), ApiError> {
    let Some(limiter) = &state.security.limiter else {
        return Ok(());
    };
    let limits = &state.security.signin;
    let account = account_key(email);
    let address = client.map(|ip| format!("{{signin}}:address:{}", auth::address_key(ip)));
    let global = "{signin}:global";
    // Most specific first: the reason reported is the first budget that refused.
    let mut checks: Vec<(&str, u32, Duration, &'static str)> = Vec::with_capacity(3);
    if let Some(address) = address.as_deref().filter(|_| limits.per_address > 0) {
        checks.push((address, limits.per_address, limits.window, "address"));
    }
    checks.push((&account, LOGIN_ATTEMPTS, LOGIN_WINDOW, "account"));
    if limits.global > 0 {
        checks.push((global, limits.global, limits.window, "global"));
    }
    let keys: Vec<(&str, u32, Duration)> = checks.iter().map(|(k, l, w, _)| (*k, *l, *w)).collect();
    let decisions = limiter.check_windows(&keys).await;
    if decisions.iter().any(|d| matches!(d, Decision::Unavailable)) {
        return Err(password_checks_unavailable());
    }
    let refused = checks
        .iter()
        .zip(&decisions)
        .filter_map(|((_, _, _, reason), d)| match d {
            Decision::Limited { retry_after, .. } => Some((*reason, *retry_after)),
            _ => None,
        })
        .collect::<Vec<_>>();
    let Some((reason, _)) = refused.first() else {
        return Ok(());
    };
    // The sign-in goes through only once every budget that refused has room again.
    let retry_after = refused.iter().map(|(_, r)| *r).max().unwrap_or_default();
    state
        .security
        .signin_refused
        .with_label_values(&[reason])
        .inc();
    tracing::info!(reason, "sign-in refused by its budget");
    Err(too_many_attempts(
        match *reason {
            "address" => "too many sign-ins from this address; wait and retry",
            "account" => "too many password attempts for this account; wait and retry",
            _ => "too many sign-ins right now; wait and retry",
        },
        retry_after,
    ))
}

/// `POST /v1/auth/login`: email + password to an access token and a refresh token. The
/// budgets are checked before the password; the password is checked on the bounded pool
/// (503 `overloaded` when it is full).
#[utoipa::path(
    post, path = "/v1/auth/login", tag = "sessions", operation_id = "login",
    request_body = Login,
    responses(
        (status = 200, description = "Signed in.", body = S::Tokens),
        (status = 400, description = "The body is malformed (`invalid_request`).", body = S::Error),
        (status = 401, description = "The email or password is wrong (`invalid_credentials`); the same answer at the same cost for unknown emails.", body = S::Error),
        (status = 404, description = "User sign-in is not configured (`not_found`).", body = S::Error),
        (status = 429, description = "Too many attempts for the account, the address or the deployment (`rate_limited`).", body = S::Error),
        (status = 503, description = "The password pool is full (`overloaded`), or the budgets cannot be checked (`unavailable`).", body = S::Error),
    ),
)]
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    AppJson(body): AppJson<Login>,
) -> Result<Json<Value>, ApiError> {
    keys(&state)?;
    let email = body.email.trim().to_lowercase();
    if email.is_empty() || email.len() > 254 || body.password.len() > auth::MAX_PASSWORD_BYTES {
        return Err(invalid_credentials());
    }
    signin_budgets(&state, &email, client).await?;
    // A place in the password pool before the account is read: a full pool refuses before
    // any work, the database's included.
    let refused_overloaded = || {
        state
            .security
            .signin_refused
            .with_label_values(&["overloaded"])
            .inc();
        tracing::info!("sign-in refused: the password pool is full");
        overloaded()
    };
    let place = auth::pool::global()
        .reserve()
        .map_err(|_| refused_overloaded())?;
    let user = state.engine.user_by_email(&email).await?;
    // Unknown and disabled accounts are checked against a hash of the same cost: no
    // telling which emails exist by timing.
    let phc = user
        .as_ref()
        .filter(|u| u.disabled_at.is_none())
        .map(|u| u.password_hash.clone());
    let ok = place
        .verify(phc, body.password)
        .await
        .map_err(|_| refused_overloaded())?;
    let Some(user) = user.filter(|_| ok) else {
        tracing::info!("sign-in refused");
        return Err(invalid_credentials());
    };
    let family = state.engine.next_id();
    let refresh = auth::generate_refresh_token();
    let now = state.engine.clock_now();
    state
        .engine
        .start_session(NewRefreshToken {
            id: state.engine.next_id(),
            family_id: family,
            user_id: user.id,
            organization_id: user.organization_id,
            token_hash: auth::sha256_hex(&refresh),
            issued_at: now,
            expires_at: now + chrono::Duration::seconds(REFRESH_TTL_SECS),
        })
        .await?;
    tracing::info!(user_id = %user.id, session = %family, "signed in");
    Ok(Json(token_pair(&state, &user, family, refresh)?))
}

fn invalid_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "the email or password is wrong",
    )
}

fn token_pair(
    state: &AppState,
    user: &User,
    family: Uuid,
    refresh: String,
) -> Result<Value, ApiError> {
    let now = state.engine.clock_now().timestamp();
    let access = keys(state)?.sign(Claims {
        iss: String::new(),
        aud: String::new(),
        sub: user.id,
        org: user.organization_id,
        role: user.role.as_str().into(),
        sid: family,
        iat: now,
        nbf: now,
        exp: now + ACCESS_TTL_SECS,
        jti: state.engine.next_id(),
        typ: String::new(),
    });
    Ok(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": ACCESS_TTL_SECS,
        "refresh_token": refresh,
        "refresh_expires_in": REFRESH_TTL_SECS,
        "user": {"id": user.id, "organization_id": user.organization_id, "email": user.email, "role": user.role},
    }))
}

/// `POST /v1/auth/refresh`: rotates the refresh token. Presenting one that was already
/// rotated revokes the whole session (someone else has a copy).
#[utoipa::path(
    post, path = "/v1/auth/refresh", tag = "sessions", operation_id = "refresh",
    request_body = RefreshBody,
    responses(
        (status = 200, description = "A new pair; the presented refresh token is spent.", body = S::Tokens),
        (status = 400, description = "The body is malformed (`invalid_request`).", body = S::Error),
        (status = 401, description = "Unknown, expired or revoked (`invalid_token`), or already used: the session is revoked (`refresh_token_reused`).", body = S::Error),
        (status = 404, description = "User sign-in is not configured (`not_found`).", body = S::Error),
        (status = 503, description = "The database is unavailable (`unavailable`).", body = S::Error),
    ),
)]
pub async fn refresh(
    State(state): State<AppState>,
    AppJson(body): AppJson<RefreshBody>,
) -> Result<Json<Value>, ApiError> {
    keys(&state)?;
    let next = auth::generate_refresh_token();
    let now = state.engine.clock_now();
    let rotation = state
        .engine
        .rotate_session(
            auth::sha256_hex(body.refresh_token.trim()),
            NewRefreshToken {
                id: state.engine.next_id(),
                family_id: Uuid::nil(),
                user_id: Uuid::nil(),
                organization_id: Uuid::nil(),
                token_hash: auth::sha256_hex(&next),
                issued_at: now,
                expires_at: now + chrono::Duration::seconds(REFRESH_TTL_SECS),
            },
        )
        .await?;
    match rotation {
        Rotation::Rotated { user, family_id } => {
            Ok(Json(token_pair(&state, &user, family_id, next)?))
        }
        Rotation::Reused { user_id, family_id } => {
            tracing::warn!(user_id = %user_id, session = %family_id,
                "a rotated refresh token was presented again; the session is revoked");
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "refresh_token_reused",
                "this refresh token was already used; the session has been revoked, sign in again",
            ))
        }
        Rotation::Invalid => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the refresh token is unknown, expired or revoked",
        )),
    }
}

/// `POST /v1/auth/revoke`: logs the refresh token's session out (its access tokens stop
/// working at once). Answers 200 for unknown tokens too (RFC 7009).
#[utoipa::path(
    post, path = "/v1/auth/revoke", tag = "sessions", operation_id = "revoke",
    request_body = RefreshBody,
    responses(
        (status = 200, description = "The session is over (also for an unknown token, RFC 7009).", body = S::Revoked),
        (status = 400, description = "The body is malformed (`invalid_request`).", body = S::Error),
        (status = 503, description = "The database is unavailable (`unavailable`).", body = S::Error),
    ),
)]
pub async fn revoke(
    State(state): State<AppState>,
    AppJson(body): AppJson<RefreshBody>,
) -> Result<Json<Value>, ApiError> {
    let ended = state
        .engine
        .end_session(auth::sha256_hex(body.refresh_token.trim()))
        .await?;
    if let Some((user, session)) = ended {
        tracing::info!(user_id = %user, session = %session, "signed out");
    }
    Ok(Json(json!({"revoked": ended.is_some()})))
}

/// `POST /v1/auth/revoke-all`: ends every session of the calling user.
#[utoipa::path(
    post, path = "/v1/auth/revoke-all", tag = "sessions", operation_id = "revoke_all",
    responses(
        (status = 200, description = "Every session of the calling user is over.", body = S::RevokedSessions),
    ),
)]
pub async fn revoke_all(
    State(state): State<AppState>,
    Caller(p): Caller,
) -> Result<Json<Value>, ApiError> {
    let Subject::User { user, .. } = p.subject else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "API keys have no sessions; revoke the key instead",
        ));
    };
    let n = state.engine.end_all_sessions(user).await?;
    tracing::info!(user_id = %user, sessions = n, "signed out everywhere");
    Ok(Json(json!({"revoked_sessions": n})))
}

/// `GET /v1/me`: the caller.
#[utoipa::path(
    get, path = "/v1/me", tag = "sessions", operation_id = "me",
    responses((status = 200, description = "The caller.", body = S::Me)),
)]
pub async fn me(State(state): State<AppState>, Caller(p): Caller) -> Json<Value> {
    let plan = p
        .account
        .effective_plan(state.engine.clock_now(), state.security.billing_grace);
    Json(json!({
        "organization_id": p.org,
        "subject": p.subject,
        "role": p.role,
        "key_tier": p.key_tier,
        "plan": plan,
        "limits": plan.limits(),
    }))
}
