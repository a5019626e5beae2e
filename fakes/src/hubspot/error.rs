//! HubSpot's error answers (JSON with `status`, `message`, `correlationId` and `category`, or
//! the edge's HTML page for 502 and 504), and the JSON answers.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// The header that repeats an answer's correlation id.
pub(crate) const CORRELATION_ID: &str = "x-hubspot-correlation-id";

/// The 401 message for a missing or unknown token.
pub(crate) const AUTH_MESSAGE: &str = "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview";

/// A HubSpot error answer.
#[derive(Debug, Clone)]
pub(crate) struct HubSpotError {
    pub(crate) status: u16,
    pub(crate) category: &'static str,
    pub(crate) message: String,
    /// More top-level fields (`errorType`, `policyName`, `context`).
    pub(crate) extra: Map<String, Value>,
    /// `Retry-After` (whole seconds, rounded up).
    pub(crate) retry_after: Option<Duration>,
    /// Answered as the edge's HTML page rather than JSON (502, 504).
    pub(crate) html: bool,
}

impl HubSpotError {
    pub(crate) fn new(status: u16, category: &'static str, message: impl Into<String>) -> Self {
        HubSpotError {
            status,
            category,
            message: message.into(),
            extra: Map::new(),
            retry_after: None,
            html: false,
        }
    }

    /// 400 `VALIDATION_ERROR`.
    pub(crate) fn validation(message: String) -> Self {
        HubSpotError::new(400, "VALIDATION_ERROR", message)
    }

    /// 401 `INVALID_AUTHENTICATION`, for a missing token and a wrong one alike.
    pub(crate) fn unauthenticated() -> Self {
        HubSpotError::new(401, "INVALID_AUTHENTICATION", AUTH_MESSAGE)
    }

    /// 429 `RATE_LIMITS` of `policy` (`TEN_SECONDLY_ROLLING`, `DAILY`).
    pub(crate) fn rate_limited(policy: &str, retry_after: Option<Duration>) -> Self {
        let mut e = HubSpotError::new(
            429,
            "RATE_LIMITS",
            format!("You have reached your {} limit.", policy.to_lowercase()),
        );
        e.extra.insert("errorType".into(), json!("RATE_LIMIT"));
        e.extra.insert("policyName".into(), json!(policy));
        e.retry_after = retry_after;
        e
    }

    /// What [`super::FakeHubSpot::fail_next`] and [`super::FakeHubSpot::rate_limit_next`]
    /// answer.
    pub(crate) fn injected(status: u16, retry_after: Option<Duration>) -> Self {
        match status {
            400 => HubSpotError::validation("There was a problem with the request.".into()),
            401 => HubSpotError::unauthenticated(),
            403 => {
                let mut e = HubSpotError::new(
                    403,
                    "MISSING_SCOPES",
                    "This app hasn't been granted all required scopes to make this call. Read more about required scopes here: https://developers.hubspot.com/scopes.",
                );
                e.extra.insert(
                    "context".into(),
                    json!({"requiredGranularScopes": ["crm.objects.contacts.read"]}),
                );
                e
            }
            404 => HubSpotError::new(404, "OBJECT_NOT_FOUND", "resource not found"),
            409 => HubSpotError::new(409, "CONFLICT", "Conflict"),
            429 => HubSpotError::rate_limited("TEN_SECONDLY_ROLLING", retry_after),
            502 | 504 => HubSpotError {
                html: true,
                ..HubSpotError::new(status, "", "")
            },
            503 => HubSpotError::new(
                503,
                "SERVICE_UNAVAILABLE",
                "The service is temporarily unavailable. Please try again later.",
            ),
            s if s >= 500 => HubSpotError::new(s, "INTERNAL_ERROR", "internal error"),
            s => HubSpotError::new(s, "BAD_REQUEST", "Bad request"),
        }
    }

    pub(crate) fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub(crate) fn body(&self, correlation_id: &str) -> Value {
        let mut body = json!({
            "status": "error",
            "message": self.message,
            "correlationId": correlation_id,
            "category": self.category,
        });
        for (k, v) in &self.extra {
            body[k] = v.clone();
        }
        body
    }

    pub(crate) fn into_response(self, correlation_id: &str) -> Response {
        let mut resp = if self.html {
            let code = self.status_code();
            let title = format!(
                "{} {}",
                code.as_u16(),
                code.canonical_reason().unwrap_or("Error")
            );
            let page = format!(
                "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n</body>\r\n</html>\r\n"
            );
            let mut resp = (code, page).into_response();
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
            resp
        } else {
            json_response(self.status_code(), &self.body(correlation_id))
        };
        if let Ok(v) = HeaderValue::from_str(correlation_id) {
            resp.headers_mut().insert(CORRELATION_ID, v);
        }
        if let Some(d) = self.retry_after {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        resp
    }
}

/// JSON with HubSpot's content type.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = (status, bytes).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=utf-8"),
    );
    resp
}

// ---------------------------------------------------------------------------------------------
// The search route.
