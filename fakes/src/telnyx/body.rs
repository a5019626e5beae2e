//! Telnyx error answers and the lenient parsing helpers the commands share (unknown fields are
//! ignored; known fields are checked).
//!
//! Error codes follow Telnyx's API error table where it has one: `10004` missing parameter,
//! `10015` bad request (any other invalid value), `10016` not E.164, `10003` invalid URL,
//! `10009` authentication, `10005` unknown path, `10011` too many requests, `10007` unexpected
//! error, `90015` unknown call control id (404), `90018` call has already ended (422).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// A Telnyx error answer.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) code: &'static str,
    pub(crate) title: &'static str,
    pub(crate) detail: String,
}

impl ApiError {
    /// `{"errors":[{"code","title","detail"}]}`, `code` a string.
    pub(crate) fn body(&self) -> Value {
        json!({"errors": [{"code": self.code, "title": self.title, "detail": self.detail}]})
    }

    pub(crate) fn missing(field: &str) -> Self {
        ApiError {
            status: 422,
            code: "10004",
            title: "Missing required parameter",
            detail: format!("The '{field}' parameter is required."),
        }
    }

    pub(crate) fn invalid(detail: String) -> Self {
        ApiError {
            status: 422,
            code: "10015",
            title: "Bad Request",
            detail,
        }
    }

    pub(crate) fn invalid_url(field: &str) -> Self {
        ApiError {
            status: 422,
            code: "10003",
            title: "Invalid URL",
            detail: format!("The '{field}' parameter is not a valid URL."),
        }
    }

    pub(crate) fn unknown_call() -> Self {
        ApiError {
            status: 404,
            code: "90015",
            title: "Invalid Call Control ID",
            detail: "The provided call_control_id was not valid.".to_owned(),
        }
    }

    pub(crate) fn call_ended() -> Self {
        ApiError {
            status: 422,
            code: "90018",
            title: "Call has already ended",
            detail: "This call is no longer active and can't receive commands.".to_owned(),
        }
    }

    pub(crate) fn not_found() -> Self {
        ApiError {
            status: 404,
            code: "10005",
            title: "Resource not found",
            detail: "The requested resource or URL could not be found.".to_owned(),
        }
    }

    pub(crate) fn unauthorized() -> Self {
        ApiError {
            status: 401,
            code: "10009",
            title: "Authentication failed",
            detail: "The required authentication headers were either invalid or not included in the request.".to_owned(),
        }
    }

    pub(crate) fn malformed_body() -> Self {
        ApiError {
            status: 400,
            code: "10015",
            title: "Bad Request",
            detail: "The request body must be a JSON object.".to_owned(),
        }
    }

    /// The body of an injected failure with `status`.
    pub(crate) fn injected(status: u16) -> Self {
        let (code, title, detail) = match status {
            401 => return Self::unauthorized(),
            404 => return Self::not_found(),
            408 => ("10008", "Request timeout", "The request timed out."),
            429 => (
                "10011",
                "Too many requests",
                "You have exceeded the maximum number of allowed requests.",
            ),
            s if s >= 500 => ("10007", "Unexpected error", "An unexpected error occurred."),
            _ => (
                "10015",
                "Bad Request",
                "The request failed because it was not well-formed.",
            ),
        };
        ApiError {
            status,
            code,
            title,
            detail: detail.to_owned(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Field helpers shared by the commands.

/// A string field; absent or `null` is `None`, another type is 422.
pub(crate) fn opt_str<'a>(
    body: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid(format!("'{field}' must be a string"))),
    }
}

/// A required, non-empty string field.
pub(crate) fn req_str<'a>(body: &'a Map<String, Value>, field: &str) -> Result<&'a str, ApiError> {
    match opt_str(body, field)? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(ApiError::missing(field)),
    }
}

/// A non-negative integer field.
pub(crate) fn opt_u64(body: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(format!("'{field}' must be a non-negative integer"))),
    }
}

/// `value` must be one of `allowed`.
pub(crate) fn one_of(field: &str, value: &str, allowed: &[&str]) -> Result<(), ApiError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "'{field}' must be one of {}, not '{value}'",
            allowed.join(", ")
        )))
    }
}

/// `value` must be `+` and 2 to 15 digits, the first not 0.
pub(crate) fn phone_number(field: &str, value: &str) -> Result<(), ApiError> {
    let digits = value.strip_prefix('+').unwrap_or("");
    let valid = (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if valid {
        Ok(())
    } else {
        Err(ApiError {
            status: 422,
            code: "10016",
            title: "Phone number must be in +E.164 format",
            detail: format!("The '{field}' parameter must be in +E.164 format, not '{value}'."),
        })
    }
}

/// A required destination: an E.164 number or a `sip:` URI. Telnyx also takes an array (for
/// simultaneous ringing); the fake rings only the first entry.
pub(crate) fn destination(body: &Map<String, Value>, field: &str) -> Result<String, ApiError> {
    let value = match body.get(field) {
        Some(Value::Array(items)) => items.first().and_then(Value::as_str),
        Some(Value::String(s)) => Some(s.as_str()),
        None | Some(Value::Null) => None,
        Some(_) => return Err(ApiError::invalid(format!("'{field}' must be a string"))),
    };
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Err(ApiError::missing(field));
    };
    if !value.starts_with("sip:") {
        phone_number(field, value)?;
    }
    Ok(value.to_owned())
}

/// An optional `client_state`: must be base64 (section 1.1).
pub(crate) fn client_state(body: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    let Some(value) = opt_str(body, "client_state")? else {
        return Ok(None);
    };
    if BASE64.decode(value).is_err() {
        return Err(ApiError::invalid(
            "client_state must be valid base64".to_owned(),
        ));
    }
    Ok(Some(value.to_owned()))
}

/// An optional `http(s)://` URL field.
pub(crate) fn opt_url(body: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match opt_str(body, field)? {
        None => Ok(None),
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            Ok(Some(url.to_owned()))
        }
        Some(_) => Err(ApiError::invalid_url(field)),
    }
}
