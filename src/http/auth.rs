//! Who may call what.
//!
//! Every route declares its access in [`POLICY`]; the [`authorize`] middleware looks the
//! matched route up, authenticates the caller (API key or access token, checked against the
//! store on every request so a revoked key, logged-out session or demoted user loses access at
//! once), checks the role, applies the rate limits of the key or user and of the organization,
//! and hands the [`Principal`] to the handler. A route missing from the table answers 500 for
//! every request: nothing is reachable by omission.
//!
//! Signing in, the sessions and `GET /v1/me` are in [`super::sessions`].

use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use iace_actors::accounts::{Principal, Role, Subject};
use iace_actors::machine::OrganizationId;

use super::error::ApiError;
use super::AppState;
use crate::auth::{self};
use crate::ratelimit::Decision;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (it authenticates itself: login, refresh, vendor signatures, probes).
    Public,
    /// The platform operator's token (`/v1/admin/*`, checked by the handlers).
    Operator,
    /// A user or API key of the organization with at least this role.
    Role(Role),
}

/// Every route, its method and what it needs. Tests walk this table.
pub const POLICY: &[(&str, &str, Access)] = &[
    ("GET", "/health", Access::Public),
    ("GET", "/ready", Access::Public),
    ("GET", "/.well-known/jwks.json", Access::Public),
    // The API's description and its reference page.
    ("GET", "/openapi.json", Access::Public),
    ("GET", "/docs", Access::Public),
    ("GET", "/docs/redoc.standalone.js", Access::Public),
    // Signed by another node (checked by the handler).
    ("POST", "/internal/v1/poke", Access::Public),
    ("POST", "/v1/auth/login", Access::Public),
    ("POST", "/v1/auth/refresh", Access::Public),
    ("POST", "/v1/auth/revoke", Access::Public),
    ("POST", "/v1/auth/revoke-all", Access::Role(Role::ReadOnly)),
    ("GET", "/v1/me", Access::Role(Role::ReadOnly)),
    ("POST", "/v1/me/password", Access::Role(Role::ReadOnly)),
    ("GET", "/v1/users", Access::Role(Role::Admin)),
    ("POST", "/v1/users", Access::Role(Role::Admin)),
    ("PATCH", "/v1/users/{id}", Access::Role(Role::Admin)),
    ("POST", "/v1/webhooks/telnyx", Access::Public),
    ("POST", "/v1/webhooks/stripe", Access::Public),
    ("POST", "/v1/webhooks/hubspot", Access::Public),
    ("GET", "/v1/admin/breakers", Access::Operator),
    ("GET", "/v1/admin/cluster", Access::Operator),
    (
        "POST",
        "/v1/admin/breakers/{vendor}/{action}",
        Access::Operator,
    ),
    ("GET", "/v1/organization", Access::Role(Role::ReadOnly)),
    ("PATCH", "/v1/organization", Access::Role(Role::Owner)),
    ("POST", "/v1/api-keys", Access::Role(Role::Admin)),
    ("GET", "/v1/api-keys", Access::Role(Role::Admin)),
    ("DELETE", "/v1/api-keys/{id}", Access::Role(Role::Admin)),
    ("POST", "/v1/calls", Access::Role(Role::Member)),
    ("GET", "/v1/calls", Access::Role(Role::ReadOnly)),
    ("GET", "/v1/calls/{id}", Access::Role(Role::ReadOnly)),
    ("GET", "/v1/calls/{id}/events", Access::Role(Role::ReadOnly)),
    (
        "GET",
        "/v1/calls/{id}/transcript",
        Access::Role(Role::ReadOnly),
    ),
    ("POST", "/v1/calls/{id}/hangup", Access::Role(Role::Member)),
    (
        "POST",
        "/v1/calls/{id}/transfer",
        Access::Role(Role::Member),
    ),
    ("POST", "/v1/phone-numbers", Access::Role(Role::Admin)),
    ("GET", "/v1/phone-numbers", Access::Role(Role::ReadOnly)),
    (
        "DELETE",
        "/v1/phone-numbers/{id}",
        Access::Role(Role::Admin),
    ),
    ("POST", "/v1/agents", Access::Role(Role::Admin)),
    ("GET", "/v1/agents", Access::Role(Role::ReadOnly)),
    ("GET", "/v1/agents/{id}", Access::Role(Role::ReadOnly)),
    ("PATCH", "/v1/agents/{id}", Access::Role(Role::Admin)),
    ("DELETE", "/v1/agents/{id}", Access::Role(Role::Admin)),
    ("POST", "/v1/customers", Access::Role(Role::Member)),
    ("GET", "/v1/customers", Access::Role(Role::ReadOnly)),
    ("GET", "/v1/customers/{id}", Access::Role(Role::ReadOnly)),
    ("PATCH", "/v1/customers/{id}", Access::Role(Role::Member)),
    ("DELETE", "/v1/customers/{id}", Access::Role(Role::Member)),
    (
        "GET",
        "/v1/customers/{id}/memories",
        Access::Role(Role::ReadOnly),
    ),
    (
        "DELETE",
        "/v1/customers/{id}/memories",
        Access::Role(Role::Admin),
    ),
    (
        "GET",
        "/v1/agents/{id}/patterns",
        Access::Role(Role::ReadOnly),
    ),
    ("GET", "/v1/patterns/top", Access::Role(Role::ReadOnly)),
    ("POST", "/v1/webhook-endpoints", Access::Role(Role::Admin)),
    ("GET", "/v1/webhook-endpoints", Access::Role(Role::Admin)),
    (
        "GET",
        "/v1/webhook-endpoints/{id}",
        Access::Role(Role::Admin),
    ),
    (
        "PATCH",
        "/v1/webhook-endpoints/{id}",
        Access::Role(Role::Admin),
    ),
    (
        "DELETE",
        "/v1/webhook-endpoints/{id}",
        Access::Role(Role::Admin),
    ),
    (
        "POST",
        "/v1/webhook-endpoints/{id}/rotate-secret",
        Access::Role(Role::Admin),
    ),
    (
        "GET",
        "/v1/webhook-endpoints/{id}/deliveries",
        Access::Role(Role::Admin),
    ),
    (
        "POST",
        "/v1/webhook-endpoints/{id}/deliveries/{delivery_id}/retry",
        Access::Role(Role::Admin),
    ),
    ("GET", "/v1/organization/log", Access::Role(Role::Admin)),
];

/// The access a matched route needs (`HEAD` is served by `GET`).
pub fn access_of(method: &Method, path: &str) -> Option<Access> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    POLICY
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .map(|(_, _, a)| *a)
}

/// The authenticated caller, for handlers.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "route has no authenticated caller (missing from the access policy)",
                )
            })
    }
}

/// The caller's organization (the [`authorize`] middleware
/// authenticated the request and checked the route's role before the handler runs).
pub struct Org(pub OrganizationId);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Org {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        let Caller(p) = Caller::from_request_parts(parts, state).await?;
        Ok(Org(p.org))
    }
}

/// The middleware: policy, authentication, role, rate limits.
pub async fn authorize(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(path) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
    else {
        // No route matched: the fallback answers 404.
        return next.run(req).await;
    };
    let access = match access_of(req.method(), &path) {
        Some(a) => a,
        None if POLICY.iter().any(|(_, p, _)| *p == path) => {
            // A known path with another method: the router answers 405.
            return next.run(req).await;
        }
        None => {
            tracing::error!(route = %path, "route missing from the access policy; refused");
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "this route has no access policy",
            )
            .into_response();
        }
    };
    let Access::Role(needed) = access else {
        return next.run(req).await;
    };
    let principal = match authenticate(&state, req.headers()).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if principal.role < needed {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs the {needed} role; the caller is {}",
                principal.role
            ),
        )
        .into_response();
    }
    // A request another node forwarded here was counted where the client sent it.
    let forwarded = req
        .extensions()
        .get::<super::forward::ForwardedBy>()
        .is_some();
    let headers = if forwarded {
        HeaderMap::new()
    } else {
        match limit(&state, &principal).await {
            Ok(h) => h,
            Err(e) => return e.into_response(),
        }
    };
    tracing::Span::current().record("organization_id", tracing::field::display(principal.org));
    req.extensions_mut().insert(principal);
    let mut resp = next.run(req).await;
    resp.headers_mut().extend(headers);
    resp
}

/// `Authorization: Bearer <API key | access token>` to a principal.
async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let credential = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <credential>"))?
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <credential>"))?;
    let engine = &state.engine;
    if credential.starts_with("iace_") {
        return engine
            .key_principal(auth::sha256_hex(credential))
            .await?
            .ok_or_else(|| ApiError::unauthorized("invalid API key"));
    }
    // Anything else must be an access token (refresh tokens are opaque `iacert_...` and
    // fail here as malformed).
    let keys = state
        .security
        .keys
        .as_ref()
        .ok_or_else(|| ApiError::unauthorized("invalid API key"))?;
    let now = engine.clock_now().timestamp();
    let claims = keys
        .verify(credential, now)
        .map_err(|e| ApiError::unauthorized(format!("invalid access token: {e}")))?;
    engine
        .user_principal(claims.sub, claims.sid)
        .await?
        .filter(|p| p.org == claims.org)
        .ok_or_else(|| ApiError::unauthorized("invalid access token: the session has ended"))
}

const WINDOW: Duration = Duration::from_secs(60);

/// Checks the caller's and the organization's per-minute budgets in one round trip (a request
/// refused by either consumes neither); the headers describe the tighter one.
async fn limit(state: &AppState, p: &Principal) -> Result<HeaderMap, ApiError> {
    let mut headers = HeaderMap::new();
    let Some(limiter) = &state.security.limiter else {
        return Ok(headers);
    };
    let plan = p
        .account
        .effective_plan(state.engine.clock_now(), state.security.billing_grace);
    let limits = plan.limits();
    // Both keys carry the organization as hash tag: one slot in a Redis Cluster.
    let (caller_key, caller_limit) = match (p.subject, p.key_tier) {
        (Subject::ApiKey(id), Some(tier)) => (
            format!("{{{}}}:key:{id}", p.org),
            tier.requests_per_minute(),
        ),
        (Subject::ApiKey(id), None) => (
            format!("{{{}}}:key:{id}", p.org),
            limits.user_requests_per_minute,
        ),
        (Subject::User { user, .. }, _) => (
            format!("{{{}}}:user:{user}", p.org),
            limits.user_requests_per_minute,
        ),
    };
    let org_key = format!("{{{}}}:org", p.org);
    let mut decisions = limiter
        .check_all(
            &[
                (caller_key.as_str(), caller_limit),
                (org_key.as_str(), limits.org_requests_per_minute),
            ],
            WINDOW,
        )
        .await
        .into_iter();
    let caller = decisions.next().unwrap_or(Decision::Unavailable);
    let org = decisions.next().unwrap_or(Decision::Unavailable);
    for d in [&caller, &org] {
        match d {
            Decision::Limited { limit, retry_after } => {
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "over {limit} requests per minute ({} plan{}); retry in {secs} s",
                        plan.as_str(),
                        if std::ptr::eq(d, &org) {
                            ", whole organization"
                        } else {
                            ""
                        }
                    ),
                );
                e.retry_after = Some(secs);
                e.rate_limit = Some((*limit, 0, secs));
                return Err(e);
            }
            Decision::Unavailable => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "rate limits cannot be checked right now (Redis is unreachable); retry",
                ));
            }
            Decision::Allowed { .. } | Decision::Unchecked => {}
        }
    }
    let tightest = [&caller, &org]
        .into_iter()
        .filter_map(|d| match d {
            Decision::Allowed { limit, remaining } => Some((*limit, *remaining)),
            _ => None,
        })
        .min_by_key(|(_, remaining)| *remaining);
    if let Some((limit, remaining)) = tightest {
        super::error::rate_limit_headers(&mut headers, limit, remaining, WINDOW.as_secs());
    }
    Ok(headers)
}
