//! Gemini embeddings JSON (vendor-protocols.md section 5), camelCase exactly as on the wire.
//! Answers are parsed leniently; nothing outside `clients::google` sees these types.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Body of `POST /models/{model}:batchEmbedContents`.
#[derive(Debug, Clone, Serialize)]
pub struct BatchEmbedRequest<'a> {
    pub requests: Vec<EmbedRequest<'a>>,
}

/// One `EmbedContentRequest`; `model` is `models/{model}`, the path's model (the SDK sets both).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EmbedRequest<'a> {
    pub model: &'a str,
    pub content: Content<'a>,
    pub task_type: &'static str,
    pub output_dimensionality: usize,
}

/// One text: a content of a single text part.
#[derive(Debug, Clone, Serialize)]
pub struct Content<'a> {
    pub parts: [Part<'a>; 1],
}

/// A text part.
#[derive(Debug, Clone, Serialize)]
pub struct Part<'a> {
    pub text: &'a str,
}

/// The answer of `batchEmbedContents`: one embedding per request, in order. Google leaves out
/// empty repeated fields, hence the defaults (the count check then catches them).
#[derive(Debug, Clone, Deserialize)]
pub struct BatchEmbedResponse {
    #[serde(default)]
    pub embeddings: Vec<ContentEmbedding>,
}

/// One vector.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentEmbedding {
    #[serde(default)]
    pub values: Vec<f32>,
}

/// `{"error": {...}}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub error: Option<Status>,
}

/// A `google.rpc.Status`: `code` (the HTTP status), `message`, `status` (`INVALID_ARGUMENT`,
/// `RESOURCE_EXHAUSTED`, ...) and typed `details`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub details: Vec<Value>,
}

impl Status {
    fn detail(&self, kind: &str) -> Option<&Value> {
        let want = format!("type.googleapis.com/google.rpc.{kind}");
        self.details
            .iter()
            .find(|d| d.get("@type").and_then(Value::as_str) == Some(want.as_str()))
    }

    /// `ErrorInfo.reason` (`API_KEY_INVALID`, ...).
    pub fn reason(&self) -> Option<&str> {
        self.detail("ErrorInfo")?.get("reason")?.as_str()
    }

    /// `RetryInfo.retryDelay`, the wait a 429 asks for.
    pub fn retry_delay(&self) -> Option<Duration> {
        proto_duration(self.detail("RetryInfo")?.get("retryDelay")?.as_str()?)
    }
}

/// A `google.protobuf.Duration` in JSON (`"13s"`, `"1.500s"`, `"0.25s"`); zero, negative and
/// malformed values count as absent.
pub fn proto_duration(s: &str) -> Option<Duration> {
    let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_camel_case() {
        let body = BatchEmbedRequest {
            requests: vec![EmbedRequest {
                model: "models/gemini-embedding-001",
                content: Content {
                    parts: [Part { text: "hi" }],
                },
                task_type: "RETRIEVAL_QUERY",
                output_dimensionality: 768,
            }],
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"requests": [{
                "model": "models/gemini-embedding-001",
                "content": {"parts": [{"text": "hi"}]},
                "taskType": "RETRIEVAL_QUERY",
                "outputDimensionality": 768,
            }]})
        );
    }

    #[test]
    fn retry_info_and_error_info_are_read_from_details() {
        let body: ErrorBody = serde_json::from_str(
            r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[
                {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[]},
                {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"13s"}]}}"#,
        )
        .unwrap();
        let status = body.error.unwrap();
        assert_eq!(status.retry_delay(), Some(Duration::from_secs(13)));
        assert_eq!(status.reason(), None);
        assert_eq!(status.status.as_deref(), Some("RESOURCE_EXHAUSTED"));

        assert_eq!(proto_duration("1.500s"), Some(Duration::from_millis(1_500)));
        assert_eq!(proto_duration("0.25s"), Some(Duration::from_millis(250)));
        for bad in ["0s", "-1s", "13", "soon", "s", "NaNs"] {
            assert_eq!(proto_duration(bad), None, "{bad}");
        }

        let body: ErrorBody = serde_json::from_str(
            r#"{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT","details":[
                {"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#,
        )
        .unwrap();
        assert_eq!(body.error.unwrap().reason(), Some("API_KEY_INVALID"));
        // Not Google's envelope at all (a proxy's HTML page): nothing, no panic.
        assert!(serde_json::from_str::<ErrorBody>("<html>").is_err());
    }
}
