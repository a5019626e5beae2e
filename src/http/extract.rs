//! Extractors whose rejections use the error envelope, and the caller's organization.

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// JSON object body; malformed JSON, a body that is not an object, unknown fields and bad
/// values answer 400 naming the problem.
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), state)
            .await
            .map_err(bytes_rejection)?;
        let parsed = axum::Json::<T>::from_request(
            Request::from_parts(parts, Body::from(bytes.clone())),
            state,
        )
        .await;
        let value = match parsed {
            // Serde's derived structs also accept a JSON array (fields by position, missing
            // `#[serde(default)]` ones defaulted), so `["x"]` would pass as `{"name": "x"}` and
            // `[]` as an empty patch: every body this API takes is an object, so anything else
            // is refused here, once for every route.
            Ok(_) | Err(JsonRejection::JsonDataError(_)) if !is_object(&bytes) => {
                return Err(ApiError::invalid("the request body must be a JSON object"))
            }
            Ok(axum::Json(v)) => v,
            // JSON has numbers, not integers and floats: `5.0` is the integer 5 (as JSON
            // Schema's `integer` has it), which the integer fields' deserializers refuse.
            Err(JsonRejection::JsonDataError(e)) => match with_integral_members::<T>(&bytes) {
                Some(v) => v,
                None => return Err(json_rejection(JsonRejection::JsonDataError(e))),
            },
            Err(rejection) => return Err(json_rejection(rejection)),
        };
        // Postgres stores no NUL character in text or jsonb: refused here, once for every
        // route, rather than failing in the store as if it were unavailable.
        if has_nul(&bytes) {
            return Err(ApiError::invalid(
                "the body must not contain the NUL character (\\u0000)",
            ));
        }
        Ok(AppJson(value))
    }
}

/// Whether a JSON text carries a NUL character: a `\u0000` escape (a raw NUL byte is not
/// valid JSON). Backslashes occur in strings only, each starting an escape.
fn has_nul(json: &[u8]) -> bool {
    let mut i = 0;
    while i < json.len() {
        if json[i] == b'\\' {
            if json.get(i + 1..i + 6) == Some(b"u0000".as_slice()) {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

/// A patch body: the members that `null` clears are the type's [`Patch::CLEARABLE`]; `null`
/// for any other member is refused (400), so that it never passes for "leave unchanged"
/// (an explicit `null` for a value that cannot be cleared is a client's mistake).
pub struct AppPatch<T>(pub T);

/// A request body that changes some fields of a resource.
pub trait Patch: DeserializeOwned {
    /// The members `null` clears.
    const CLEARABLE: &'static [&'static str];
}

impl Patch for iace_actors::catalog::AgentPatch {
    const CLEARABLE: &'static [&'static str] = &[];
}

impl Patch for iace_actors::catalog::CustomerPatch {
    const CLEARABLE: &'static [&'static str] = &["email", "name", "segment"];
}

impl Patch for iace_actors::catalog::webhooks::WebhookEndpointPatch {
    const CLEARABLE: &'static [&'static str] = &[];
}

impl Patch for iace_actors::accounts::OrgPatch {
    const CLEARABLE: &'static [&'static str] = &["hubspot_portal_id"];
}

impl<S, T> FromRequest<S> for AppPatch<T>
where
    T: Patch,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let AppJson(members) =
            AppJson::<serde_json::Map<String, serde_json::Value>>::from_request(req, state).await?;
        if let Some(name) = members
            .iter()
            .find(|(name, value)| value.is_null() && !T::CLEARABLE.contains(&name.as_str()))
            .map(|(name, _)| name)
        {
            return Err(ApiError::invalid(format!(
                "{name}: null is not a value of this field; leave the field out to keep it"
            )));
        }
        // JSON has numbers, not integers and floats: `5.0` is the integer 5 (as JSON Schema's
        // `integer` has it), which the integer fields' deserializers would refuse.
        let members = members
            .into_iter()
            .map(|(name, value)| (name, integral(value)))
            .collect();
        serde_json::from_value(serde_json::Value::Object(members))
            .map(AppPatch)
            .map_err(|e| {
                ApiError::invalid(format!(
                    "Failed to deserialize the JSON body into the target type: {e}"
                ))
            })
    }
}

/// The body as `T` once its members' integral numbers (`5.0`) are integers.
fn with_integral_members<T: DeserializeOwned>(json: &[u8]) -> Option<T> {
    let members: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(json).ok()?;
    let members = members
        .into_iter()
        .map(|(name, value)| (name, integral(value)))
        .collect();
    serde_json::from_value(serde_json::Value::Object(members)).ok()
}

/// A number with no fractional part, within `i64`, as an integer; anything else as it is.
fn integral(value: serde_json::Value) -> serde_json::Value {
    match value.as_f64() {
        Some(f) if value.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
            serde_json::Value::from(f as i64)
        }
        _ => value,
    }
}

/// Whether a JSON text is an object (its first non-whitespace byte opens one).
fn is_object(json: &[u8]) -> bool {
    json.iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|b| *b == b'{')
}

fn bytes_rejection(r: BytesRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return super::too_large();
    }
    ApiError::invalid(r.body_text())
}

fn json_rejection(r: JsonRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return super::too_large();
    }
    let message = match &r {
        JsonRejection::MissingJsonContentType(_) => {
            "expected a JSON body with Content-Type: application/json".to_owned()
        }
        _ => r.body_text(),
    };
    ApiError::invalid(message)
}

/// Path parameters; a malformed id answers 400.
pub struct AppPath<T>(pub T);

impl<S, T> FromRequestParts<S> for AppPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(AppPath(v)),
            Err(r) => Err(path_rejection(r)),
        }
    }
}

fn path_rejection(r: PathRejection) -> ApiError {
    ApiError::invalid(format!("bad path parameter: {}", r.body_text()))
}

/// Query string; unknown parameters and bad values answer 400.
pub struct AppQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for AppQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if parts
            .uri
            .query()
            .is_some_and(|q| q.to_ascii_lowercase().contains("%00"))
        {
            return Err(ApiError::invalid(
                "the query must not contain the NUL character (%00)",
            ));
        }
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(AppQuery(v)),
            Err(r) => Err(query_rejection(r)),
        }
    }
}

fn query_rejection(r: QueryRejection) -> ApiError {
    ApiError::invalid(r.body_text())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use serde::Deserialize;
    use serde_json::Value;

    use super::*;

    fn json_request(body: &str) -> Request<Body> {
        Request::builder()
            .method("POST")
            .uri("/")
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap()
    }

    #[tokio::test]
    async fn a_nul_character_anywhere_in_a_body_is_refused() {
        for body in [
            r#"{"name": "a\u0000b"}"#,
            r#"{"voice_config": {"\u0000": 1}}"#,
            r#"{"metadata": {"k": ["x", "\u0000"]}}"#,
        ] {
            let err = AppJson::<Value>::from_request(json_request(body), &())
                .await
                .err()
                .unwrap_or_else(|| panic!("accepted {body}"));
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(err.code, "invalid_request");
        }
        // An escaped backslash before `u0000` is text, not a NUL.
        let ok =
            AppJson::<Value>::from_request(json_request(r#"{"path": "C:\\u0000"}"#), &()).await;
        assert!(ok.is_ok());
    }

    #[tokio::test]
    async fn a_nul_character_in_a_query_is_refused() {
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct Q {
            query: Option<String>,
        }
        let (mut parts, _) = Request::builder()
            .uri("/v1/agents/x/patterns?query=a%00b")
            .body(())
            .unwrap()
            .into_parts();
        let err = AppQuery::<Q>::from_request_parts(&mut parts, &())
            .await
            .err()
            .expect("refused");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        note: Option<String>,
        #[serde(default)]
        count: Option<i64>,
    }

    impl Patch for Sample {
        const CLEARABLE: &'static [&'static str] = &["note"];
    }

    #[tokio::test]
    async fn a_patch_takes_null_only_where_it_clears() {
        let refused = AppPatch::<Sample>::from_request(json_request(r#"{"name": null}"#), &())
            .await
            .err()
            .expect("null name refused");
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert!(refused.message.starts_with("name:"), "{}", refused.message);
        AppPatch::<Sample>::from_request(json_request(r#"{"note": null}"#), &())
            .await
            .expect("null note clears");
        // `7.0` is the integer 7.
        let AppPatch(counted) =
            AppPatch::<Sample>::from_request(json_request(r#"{"count": 7.0}"#), &())
                .await
                .expect("7.0 is an integer");
        assert_eq!(counted.count, Some(7));
        let AppJson(counted) =
            AppJson::<Sample>::from_request(json_request(r#"{"count": 7.0}"#), &())
                .await
                .expect("7.0 is an integer in any body");
        assert_eq!(counted.count, Some(7));
        let fraction = AppPatch::<Sample>::from_request(json_request(r#"{"count": 7.5}"#), &())
            .await
            .err()
            .expect("7.5 refused");
        assert_eq!(fraction.status, StatusCode::BAD_REQUEST);
    }
}
