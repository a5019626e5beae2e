//! Google's error envelope: `{"error":{"code","message","status","details"?}}` with `code` equal
//! to the HTTP status and `status` the canonical `google.rpc.Code` name, and the JSON answers.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Value};

use super::EmbedMethod;

/// A Google error answer.
#[derive(Debug, Clone)]
pub(crate) struct GoogleError {
    pub(crate) code: u16,
    pub(crate) status: &'static str,
    pub(crate) message: String,
    pub(crate) details: Vec<Value>,
}

impl GoogleError {
    pub(crate) fn new(code: u16, status: &'static str, message: impl Into<String>) -> Self {
        GoogleError {
            code,
            status,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// 400 `INVALID_ARGUMENT` with a `google.rpc.BadRequest` naming `field`.
    pub(crate) fn bad_request(field: &str, message: String) -> Self {
        let details = vec![json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": field, "description": message}],
        })];
        GoogleError {
            details,
            ..GoogleError::new(400, "INVALID_ARGUMENT", message.clone())
        }
    }

    /// The documented wrong-key answer.
    pub(crate) fn api_key_invalid() -> Self {
        let message = "API key not valid. Please pass a valid API key.";
        GoogleError {
            details: vec![
                json!({
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }),
                json!({
                    "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                    "locale": "en-US",
                    "message": message,
                }),
            ],
            ..GoogleError::new(400, "INVALID_ARGUMENT", message)
        }
    }

    pub(crate) fn unregistered_caller() -> Self {
        GoogleError::new(
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
        )
    }

    pub(crate) fn model_not_found(model: &str, method: EmbedMethod) -> Self {
        let method = match method {
            EmbedMethod::EmbedContent => "embedContent",
            EmbedMethod::BatchEmbedContents => "batchEmbedContents",
        };
        GoogleError::new(
            404,
            "NOT_FOUND",
            format!(
                "models/{model} is not found for API version v1beta, or is not supported for {method}. Call ListModels to see the list of available models and their supported methods."
            ),
        )
    }

    /// What [`super::FakeGoogle::fail_next`] and [`super::FakeGoogle::rate_limit_next`]
    /// answer.
    pub(crate) fn injected(status: u16, model: &str, retry_delay: Option<Duration>) -> Self {
        match status {
            400 => GoogleError::new(400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
            401 => GoogleError::new(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
            ),
            403 => GoogleError::new(403, "PERMISSION_DENIED", "The caller does not have permission"),
            404 => GoogleError::model_not_found(model, EmbedMethod::BatchEmbedContents),
            409 => GoogleError::new(409, "ABORTED", "The operation was aborted."),
            429 => GoogleError::quota_exceeded(model, retry_delay),
            499 => GoogleError::new(499, "CANCELLED", "The operation was cancelled."),
            500 => GoogleError::new(
                500,
                "INTERNAL",
                "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
            ),
            501 => GoogleError::new(501, "UNIMPLEMENTED", "Method not implemented."),
            503 => GoogleError::new(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
            504 => GoogleError::new(
                504,
                "DEADLINE_EXCEEDED",
                "Deadline expired before operation could complete.",
            ),
            s if s >= 500 => GoogleError::new(s, "INTERNAL", "Internal error encountered."),
            s => GoogleError::new(s, "FAILED_PRECONDITION", "Precondition check failed."),
        }
    }

    pub(crate) fn quota_exceeded(model: &str, retry_delay: Option<Duration>) -> Self {
        let mut message = format!(
            "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n* Quota exceeded for metric: generativelanguage.googleapis.com/embed_content_free_tier_requests, limit: 100, model: {model}"
        );
        let mut details = vec![
            json!({
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{
                    "quotaMetric": "generativelanguage.googleapis.com/embed_content_free_tier_requests",
                    "quotaId": "EmbedContentRequestsPerMinutePerProjectPerModel-FreeTier",
                    "quotaDimensions": {"location": "global", "model": model},
                    "quotaValue": "100",
                }],
            }),
            json!({
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }],
            }),
        ];
        if let Some(d) = retry_delay {
            message.push_str(&format!("\nPlease retry in {}s.", d.as_secs_f64()));
            details.push(json!({
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": proto_duration(d),
            }));
        }
        GoogleError {
            details,
            ..GoogleError::new(429, "RESOURCE_EXHAUSTED", message)
        }
    }

    pub(crate) fn body(&self) -> Value {
        let mut error = json!({"code": self.code, "message": self.message, "status": self.status});
        if !self.details.is_empty() {
            error["details"] = Value::Array(self.details.clone());
        }
        json!({ "error": error })
    }

    pub(crate) fn into_response(self) -> Response {
        json_response(
            StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &self.body(),
        )
    }
}

/// A `google.protobuf.Duration` in proto3 JSON: seconds with 0, 3, 6 or 9 fractional digits
/// and an `s` (`"13s"`, `"1.500s"`).
pub(crate) fn proto_duration(d: Duration) -> String {
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    if nanos == 0 {
        format!("{secs}s")
    } else if nanos % 1_000_000 == 0 {
        format!("{secs}.{:03}s", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!("{secs}.{:06}s", nanos / 1_000)
    } else {
        format!("{secs}.{nanos:09}s")
    }
}

/// JSON with Google's content type.
pub(crate) fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = (status, bytes).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    resp
}

// ---------------------------------------------------------------------------------------------
// The embedding routes.
