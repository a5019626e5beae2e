//! The one error envelope: `{"error":{"code","message","request_id"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use iace_actors::engine::{EngineError, Peer};
use serde_json::json;

pub use crate::telemetry::context::REQUEST_ID;

/// The current request id, or `-` outside a request.
pub fn current_request_id() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "-".to_owned())
}

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// `Retry-After` seconds, when the client should wait before retrying.
    pub retry_after: Option<u64>,
    /// `(limit, remaining, reset seconds)` for the `RateLimit-*` headers of a 429.
    pub rate_limit: Option<(u32, u32, u64)>,
    /// Another node runs what the request is about: the forwarding middleware sends the
    /// request there (see `http::forward`).
    pub forward: Option<Box<Peer>>,
}

/// A response extension: forward the request to this node.
#[derive(Debug, Clone)]
pub struct ForwardTo(pub Peer);

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            rate_limit: None,
            forward: None,
        }
    }

    /// 400 `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = match &e {
            EngineError::Invalid(_) => StatusCode::BAD_REQUEST,
            EngineError::NotFound { .. } => StatusCode::NOT_FOUND,
            EngineError::IllegalTransition { .. } | EngineError::Conflict(_) => {
                StatusCode::CONFLICT
            }
            EngineError::IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            EngineError::Unavailable(_)
            | EngineError::StoreUnavailable(_)
            | EngineError::VendorUnavailable { .. }
            | EngineError::Elsewhere { .. }
            | EngineError::AtCapacity { .. } => StatusCode::SERVICE_UNAVAILABLE,
            EngineError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            EngineError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            EngineError::ConcurrentCallLimit { .. } => StatusCode::TOO_MANY_REQUESTS,
        };
        let message = match &e {
            EngineError::IllegalTransition { status, message } => {
                format!("illegal transition: the call is {status}; {message}")
            }
            // The detail of these names tables, hosts, queries or stored values: it goes to
            // the log with the request id, the client gets what it can act on.
            EngineError::StoreUnavailable(detail) => {
                tracing::warn!(request_id = %current_request_id(), detail = %detail, "store unavailable");
                "the database is unavailable right now; retry".to_owned()
            }
            EngineError::Internal(detail) => {
                tracing::error!(request_id = %current_request_id(), detail = %detail, "internal error");
                "an internal error occurred; it was logged with this request id".to_owned()
            }
            other => other.to_string(),
        };
        let mut error = ApiError::new(status, e.code(), message);
        if let EngineError::VendorUnavailable { until, .. } = &e {
            let secs = until
                .map(|u| (u - chrono::Utc::now()).num_seconds().max(1))
                .unwrap_or(30);
            error.retry_after = u64::try_from(secs).ok();
        }
        if let EngineError::Elsewhere { peer } = &e {
            // Answered as is only when it cannot be forwarded (a forwarded request that
            // reached a node that no longer runs the call): the call is moving.
            error.message = "the call is changing nodes; retry in a moment".to_owned();
            error.code = "unavailable";
            error.retry_after = Some(1);
            error.forward = Some(Box::new(peer.clone()));
        }
        if let EngineError::AtCapacity { .. } = &e {
            error.retry_after = Some(iace_actors::engine::AT_CAPACITY_RETRY_AFTER_SECS);
        }
        if let EngineError::ConcurrentCallLimit { .. } = &e {
            // Calls last minutes; a few seconds is a polite first retry.
            error.retry_after = Some(5);
        }
        error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = current_request_id();
        // A command for a call another node runs is forwarded there by `http::forward`,
        // which logs it if that fails: it is not a failure of this request.
        if self.status.is_server_error() && self.forward.is_none() {
            tracing::warn!(code = self.code, message = %self.message, "request failed");
        }
        let body = json!({"error": {
            "code": self.code,
            "message": self.message,
            "request_id": request_id,
        }});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some((limit, remaining, reset)) = self.rate_limit {
            rate_limit_headers(resp.headers_mut(), limit, remaining, reset);
        }
        if let Some(peer) = self.forward {
            resp.extensions_mut().insert(ForwardTo(*peer));
        }
        if let Some(secs) = self.retry_after {
            if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds).
pub fn rate_limit_headers(
    headers: &mut axum::http::HeaderMap,
    limit: u32,
    remaining: u32,
    reset_secs: u64,
) {
    use axum::http::HeaderValue;
    headers.insert("ratelimit-limit", HeaderValue::from(limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(reset_secs));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_faults_never_show_their_internal_text() {
        let detail =
            "error returned from database: relation \"call\" does not exist (10.0.3.7:5432)";
        let unavailable = ApiError::from(EngineError::StoreUnavailable(detail.into()));
        assert_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(unavailable.code, "unavailable");
        let internal = ApiError::from(EngineError::Internal(detail.into()));
        assert_eq!(internal.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(internal.code, "internal");
        for e in [unavailable, internal] {
            for part in ["relation", "10.0.3.7", "database:"] {
                assert!(!e.message.contains(part), "{}", e.message);
            }
        }
        // Engine-authored reasons still reach the client.
        let moved = ApiError::from(EngineError::Unavailable(
            "the call moved to another node".into(),
        ));
        assert!(moved.message.contains("moved to another node"));
    }
}
