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
        match parsed {
            // Serde's derived structs also accept a JSON array (fields by position, missing
            // `#[serde(default)]` ones defaulted), so `["x"]` would pass as `{"name": "x"}` and
            // `[]` as an empty patch: every body this API takes is an object, so anything else
            // is refused here, once for every route.
            Ok(_) | Err(JsonRejection::JsonDataError(_)) if !is_object(&bytes) => {
                Err(ApiError::invalid("the request body must be a JSON object"))
            }
            // Postgres stores no NUL character in text or jsonb: refused here, once for every
            // route, rather than failing in the store as if it were unavailable.
            Ok(_) if has_nul(&bytes) => Err(ApiError::invalid(
                "the body must not contain the NUL character (\\u0000)",
            )),
            Ok(axum::Json(v)) => Ok(AppJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
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
            AppJson::<serde_json::Map<String, serde_json::Value>>::from_request(req, state)
                .await?;
        if let Some(name) = members
            .iter()
            .find(|(name, value)| value.is_null() && !T::CLEARABLE.contains(&name.as_str()))
            .map(|(name, _)| name)
        {
            return Err(ApiError::invalid(format!(
                "{name}: null is not a value of this field; leave the field out to keep it"
            )));
        }
        serde_json::from_value(serde_json::Value::Object(members))
            .map(AppPatch)
            .map_err(|e| {
                ApiError::invalid(format!(
                    "Failed to deserialize the JSON body into the target type: {e}"
                ))
            })
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
