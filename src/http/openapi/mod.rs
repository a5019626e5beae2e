//! The API's contract: an OpenAPI 3.1 description built from the handlers' annotations and
//! the wire schemas (`GET /openapi.json`), and a reference page that renders it (`GET /docs`,
//! Redoc, served from the binary: no third-party origin at run time).
//!
//! What every operation shares is added here from the code's own tables rather than repeated
//! on each handler: its security from the access policy ([`super::auth::POLICY`]), the error
//! answers it can give (all in the one envelope, [`schemas::Error`]), the `x-request-id` and
//! `RateLimit-*` headers. The tests check that the description and the policy name the same
//! routes, and that the request schemas accept the fields the handlers' types accept.

pub mod schemas;

use std::sync::OnceLock;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{
    AdditionalProperties, KnownFormat, ObjectBuilder, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, OpenApi as Document, Ref, RefOr, Response as ResponseSpec, ServerBuilder,
};
use utoipa::{Modify, OpenApi, ToSchema};

use super::auth::{access_of, Access};
use super::AppState;

/// The routes served but not described: node-to-node traffic and the reference page itself.
pub const NOT_DESCRIBED: [(&str, &str); 3] = [
    ("POST", crate::cluster::POKE_PATH),
    ("GET", DOCS_PATH),
    ("GET", REDOC_PATH),
];

/// The description.
pub const OPENAPI_PATH: &str = "/openapi.json";
/// The reference page.
pub const DOCS_PATH: &str = "/docs";
/// Redoc's standalone bundle, for the reference page.
pub const REDOC_PATH: &str = "/docs/redoc.standalone.js";

/// Every `end_reason` (the engine's `EndReason` wire names; checked by the tests).
pub const END_REASONS: [&str; 17] = [
    "normal_clearing",
    "no_answer",
    "busy",
    "rejected",
    "not_found",
    "caller_abandoned",
    "ring_timeout",
    "max_duration",
    "hangup_requested",
    "canceled_by_user",
    "vendor_error",
    "carrier_lost",
    "engine_fault",
    "agent_ended",
    "voicemail",
    "silence",
    "voice_failure",
];

/// The security scheme of API keys and users' access tokens.
const BEARER: &str = "bearer";
/// The security scheme of the operator API.
const OPERATOR: &str = "operator";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "IACE",
        description = "The HTTP API of IACE, the call engine for AI voice agents.\n\n\
            Every request and answer body is JSON. Every answer carries `x-request-id` (the \
            client's own when it sends a printable one of at most 128 characters). Every error \
            is the one envelope `{\"error\":{\"code\",\"message\",\"request_id\"}}` (schema \
            `Error`); `code` is stable, `message` is for people.\n\n\
            Authentication: `Authorization: Bearer <credential>` with an API key (`iace_...`) \
            or a user's access token (`POST /v1/auth/login`). Each operation needs a role \
            (`read_only` < `member` < `admin` < `owner`); too low a role is 403. The operator \
            API (`/v1/admin/*`) takes the operator token instead. Vendor webhooks are signed by \
            the vendor, not authenticated by a credential.\n\n\
            Lists take `limit` (1 to 100, default 50) and `cursor` (the previous page's \
            `next_cursor`). With plan limits on, authenticated answers carry `RateLimit-Limit`, \
            `RateLimit-Remaining` and `RateLimit-Reset`; over a limit is 429 `rate_limited` \
            with `Retry-After`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        health,
        ready,
        openapi_json,
        super::sessions::jwks,
        super::sessions::login,
        super::sessions::refresh,
        super::sessions::revoke,
        super::sessions::revoke_all,
        super::sessions::me,
        super::users::change_password,
        super::users::list,
        super::users::create,
        super::users::update,
        super::accounts::get_organization,
        super::accounts::update_organization,
        super::accounts::create_key,
        super::accounts::list_keys,
        super::accounts::revoke_key,
        super::calls::create,
        super::calls::list,
        super::calls::get,
        super::calls::events,
        super::calls::transcript,
        super::calls::hangup,
        super::calls::transfer,
        super::catalog::create_phone_number,
        super::catalog::list_phone_numbers,
        super::catalog::delete_phone_number,
        super::catalog::create_agent,
        super::catalog::list_agents,
        super::catalog::get_agent,
        super::catalog::update_agent,
        super::catalog::delete_agent,
        super::catalog::create_customer,
        super::catalog::list_customers,
        super::catalog::get_customer,
        super::catalog::update_customer,
        super::catalog::delete_customer,
        super::learning::customer_memories,
        super::learning::forget_customer,
        super::learning::agent_patterns,
        super::learning::top_patterns,
        super::webhook_endpoints::create,
        super::webhook_endpoints::list,
        super::webhook_endpoints::get,
        super::webhook_endpoints::update,
        super::webhook_endpoints::delete,
        super::webhook_endpoints::rotate,
        super::webhook_endpoints::deliveries,
        super::webhook_endpoints::retry_delivery,
        super::webhook_endpoints::organization_log,
        super::webhooks::telnyx,
        super::billing::stripe,
        super::billing::hubspot,
        super::admin::cluster,
        super::admin::list_breakers,
        super::admin::command_breaker,
    ),
    components(schemas(
        schemas::Error,
        schemas::CallStatus,
        schemas::EndReason,
        schemas::Direction,
        schemas::AgentStatus,
        schemas::AgentStatusInput,
        schemas::AgentType,
        schemas::DeliveryStatus,
        schemas::AnalysisStatus,
        schemas::Role,
        schemas::KeyTier,
        schemas::Plan,
    )),
    tags(
        (name = "calls", description = "Outbound calls: create (idempotent), read, list, journal, transcript, hang up, transfer."),
        (name = "agents", description = "The AI agents: persona, voice, what calls they handle."),
        (name = "customers", description = "The people an organization calls or is called by."),
        (name = "phone-numbers", description = "The organization's numbers and the agent that answers each."),
        (name = "learning", description = "What the agents learned: customer memories and call patterns."),
        (name = "webhook-endpoints", description = "Where call events are delivered, signed (Standard Webhooks), and the deliveries."),
        (name = "organization", description = "The organization's plan, limits and settings."),
        (name = "api-keys", description = "API keys: shown once at creation, stored hashed."),
        (name = "users", description = "The organization's people and their roles."),
        (name = "sessions", description = "Signing in: access tokens (JWT) and rotating refresh tokens."),
        (name = "vendor-webhooks", description = "Events from the carrier, billing and CRM, authenticated by the vendor's signature."),
        (name = "operator", description = "The platform operator's API (operator token)."),
        (name = "service", description = "Probes and the contract itself."),
    ),
    modifiers(&Contract),
)]
struct ApiDoc;

/// What every operation shares, from the code's own tables.
struct Contract;

/// An error answer of the envelope: `(status, component name, description, codes)`.
const ERRORS: [(u16, &str, &str); 9] = [
    (400, "BadRequest", "The request is malformed: bad JSON, a body that is not an object, an unknown field or parameter, a bad value (`invalid_request`)."),
    (401, "Unauthorized", "No credential, or not a valid one (`unauthorized`); `WWW-Authenticate: Bearer`."),
    (403, "Forbidden", "The caller's role is too low for this (`forbidden`)."),
    (404, "NotFound", "No such resource in the caller's organization (`not_found`)."),
    (409, "Conflict", "The resource's state forbids it, or a unique value is taken (`conflict`, `illegal_transition`, `last_owner`)."),
    (413, "PayloadTooLarge", "The body is larger than 256 KiB (`payload_too_large`)."),
    (422, "Unprocessable", "The `Idempotency-Key` was used with another body (`idempotency_mismatch`)."),
    (429, "RateLimited", "Over a request budget (`rate_limited`) or the plan's live calls (`concurrent_call_limit`); see `Retry-After`."),
    (503, "Unavailable", "A dependency is unavailable or the node is full (`unavailable`, `overloaded`, `at_capacity`, `vendor_unavailable`); see `Retry-After`."),
];

fn error_ref(status: u16) -> RefOr<ResponseSpec> {
    let name = ERRORS
        .iter()
        .find(|(s, _, _)| *s == status)
        .map_or("BadRequest", |(_, n, _)| n);
    RefOr::Ref(Ref::from_response_name(name))
}

fn string_header(description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(SchemaType::Type(Type::String)))
        .description(Some(description))
        .build()
}

fn integer_header(description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::Integer))
                .minimum(Some(0)),
        )
        .description(Some(description))
        .build()
}

/// The headers of every answer (and of authenticated ones).
fn add_headers(response: &mut ResponseSpec, authenticated: bool, status: u16) {
    response.headers.insert(
        "x-request-id".into(),
        string_header("The request's id: the client's own `x-request-id`, or a new one."),
    );
    if authenticated || status == 429 {
        for (name, what) in [
            (
                "RateLimit-Limit",
                "Requests allowed per window (the tighter of the caller's and the organization's).",
            ),
            ("RateLimit-Remaining", "Requests left in the window."),
            ("RateLimit-Reset", "Seconds until the window resets."),
        ] {
            response.headers.insert(name.into(), integer_header(what));
        }
    }
    if matches!(status, 429 | 503) {
        response.headers.insert(
            "Retry-After".into(),
            integer_header("Seconds to wait before retrying."),
        );
    }
    if status == 401 {
        response
            .headers
            .insert("WWW-Authenticate".into(), string_header("`Bearer`."));
    }
}

fn operations(item: &mut utoipa::openapi::PathItem) -> Vec<(HttpMethod, &mut Operation)> {
    let mut out = Vec::new();
    for (method, op) in [
        (HttpMethod::Get, &mut item.get),
        (HttpMethod::Post, &mut item.post),
        (HttpMethod::Patch, &mut item.patch),
        (HttpMethod::Delete, &mut item.delete),
        (HttpMethod::Put, &mut item.put),
    ] {
        if let Some(op) = op.as_mut() {
            out.push((method, op));
        }
    }
    out
}

/// `HttpMethod` as the policy table writes it.
pub(crate) fn method_name(method: &HttpMethod) -> &'static str {
    match method {
        HttpMethod::Get => "GET",
        HttpMethod::Post => "POST",
        HttpMethod::Patch => "PATCH",
        HttpMethod::Delete => "DELETE",
        HttpMethod::Put => "PUT",
        HttpMethod::Head => "HEAD",
        HttpMethod::Options => "OPTIONS",
        HttpMethod::Trace => "TRACE",
    }
}

impl Modify for Contract {
    fn modify(&self, doc: &mut Document) {
        doc.servers = Some(vec![ServerBuilder::new()
            .url("/")
            .description(Some("This server"))
            .build()]);
        doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        let components = doc.components.get_or_insert_with(Default::default);
        components.security_schemes.insert(
            BEARER.into(),
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`iace_...`, from `POST /v1/api-keys` or `iace org create`) \
                         or a user's access token (a JWT from `POST /v1/auth/login`).",
                    ))
                    .build(),
            ),
        );
        components.security_schemes.insert(
            OPERATOR.into(),
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The operator token (`IACE_ADMIN_TOKEN`); without one the operator API \
                         answers 404.",
                    ))
                    .build(),
            ),
        );
        for (status, name, description) in ERRORS {
            let mut response = ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name(schemas::Error::name())))
                        .build(),
                )
                .build();
            add_headers(&mut response, false, status);
            components.responses.insert(name.into(), RefOr::T(response));
        }
        // Every object the API takes or gives has exactly the properties described: an
        // unknown field in a request is 400, and CI checks that answers carry no other.
        for (name, schema) in components.schemas.iter_mut() {
            if let RefOr::T(Schema::Object(object)) = schema {
                if object.schema_type == SchemaType::Type(Type::Object)
                    && !object.properties.is_empty()
                {
                    object.additional_properties =
                        Some(Box::new(AdditionalProperties::FreeForm(false)));
                }
                // A patch changes something.
                if name.ends_with("Patch") {
                    object.min_properties = Some(1);
                }
            }
        }
        let requests = request_schemas(doc);
        nul_free_requests(doc, &requests);
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, op) in operations(item) {
                let access = access_of(
                    &axum::http::Method::from_bytes(method_name(&method).as_bytes())
                        .unwrap_or(axum::http::Method::GET),
                    path,
                );
                retitle(op);
                let authenticated = matches!(access, Some(Access::Role(_)));
                match access {
                    Some(Access::Role(role)) => {
                        op.security =
                            Some(vec![SecurityRequirement::new::<_, _, &str>(BEARER, [])]);
                        let note = format!("Needs the `{role}` role.");
                        op.description = Some(match op.description.take() {
                            Some(d) => format!("{d}\n\n{note}"),
                            None => note,
                        });
                    }
                    Some(Access::Operator) => {
                        op.security =
                            Some(vec![SecurityRequirement::new::<_, _, &str>(OPERATOR, [])]);
                    }
                    Some(Access::Public) | None => {
                        op.security = Some(vec![SecurityRequirement::default()]);
                    }
                }
                let mut errors: Vec<u16> = Vec::new();
                let has_input = op.request_body.is_some()
                    || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                if has_input {
                    errors.push(400);
                }
                if authenticated || access == Some(Access::Operator) {
                    errors.push(401);
                }
                if authenticated {
                    errors.extend([403, 429, 503]);
                }
                if path.contains('{') || access == Some(Access::Operator) {
                    errors.push(404);
                }
                if op.request_body.is_some() {
                    errors.push(413);
                }
                for status in errors {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error_ref(status));
                }
                for (status, response) in op.responses.responses.iter_mut() {
                    let code = status.parse::<u16>().unwrap_or(0);
                    if let RefOr::T(response) = response {
                        if code >= 400 && response.content.is_empty() {
                            response.content.insert(
                                "application/json".into(),
                                ContentBuilder::new()
                                    .schema(Some(Ref::from_schema_name(schemas::Error::name())))
                                    .build(),
                            );
                        }
                        add_headers(response, authenticated, code);
                    }
                }
            }
        }
    }
}

/// A title from the operation id (`create_call`: "Create call"); the handler's doc, which
/// opens with the method and path the page shows anyway, becomes the description without them.
fn retitle(op: &mut Operation) {
    let doc = [op.summary.take(), op.description.take()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("\n\n");
    let rest = match doc.strip_prefix('`').and_then(|d| d.split_once('`')) {
        Some((_, rest)) => rest.trim_start_matches([':', '.']).trim(),
        None => doc.trim(),
    };
    // "(admin): ..." repeats the role the description states.
    let rest = match rest.strip_prefix('(').and_then(|r| r.split_once("):")) {
        Some((_, rest)) => rest.trim(),
        None => rest,
    };
    if !rest.is_empty() {
        let mut chars = rest.chars();
        let first = chars.next().map(|c| c.to_uppercase().to_string());
        op.description = Some(format!(
            "{}{}",
            first.unwrap_or_default(),
            chars.as_str().replace('\n', " ")
        ));
    }
    if let Some(id) = &op.operation_id {
        let words = id.replace('_', " ");
        let mut chars = words.chars();
        op.summary = chars
            .next()
            .map(|c| format!("{}{}", c.to_uppercase(), chars.as_str()));
    }
}

/// The component schemas that request bodies name.
fn request_schemas(doc: &Document) -> Vec<String> {
    let mut names = Vec::new();
    for item in doc.paths.paths.values() {
        let mut item = item.clone();
        for (_, op) in operations(&mut item) {
            let Some(body) = &op.request_body else {
                continue;
            };
            for content in body.content.values() {
                if let Some(RefOr::Ref(r)) = &content.schema {
                    if let Some(name) = r.ref_location.rsplit('/').next() {
                        names.push(name.to_owned());
                    }
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Text without the NUL character (which Postgres stores in neither text nor jsonb; the
/// server refuses it in any body or query).
const NUL_FREE: &str = "^[^\\u0000]*$";

fn nul_free_string() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .pattern(Some(NUL_FREE))
}

/// Any JSON value whose strings and member names carry no NUL character.
fn json_value() -> Schema {
    let object = ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::Object))
        .property_names(Some(nul_free_string()))
        .additional_properties(Some(Ref::from_schema_name(JSON_VALUE)))
        .build();
    let array = utoipa::openapi::schema::ArrayBuilder::new()
        .items(Ref::from_schema_name(JSON_VALUE))
        .build();
    utoipa::openapi::schema::AnyOfBuilder::new()
        .description(Some(
            "Any JSON value; no string or member name may contain the NUL character.",
        ))
        .item(nul_free_string())
        .item(ObjectBuilder::new().schema_type(SchemaType::Type(Type::Number)))
        .item(ObjectBuilder::new().schema_type(SchemaType::Type(Type::Boolean)))
        .item(ObjectBuilder::new().schema_type(SchemaType::Type(Type::Null)))
        .item(array)
        .item(object)
        .build()
        .into()
}

const JSON_VALUE: &str = "JsonValue";

fn is_type(object: &utoipa::openapi::schema::Object, ty: Type) -> bool {
    match &object.schema_type {
        SchemaType::Type(t) => *t == ty,
        SchemaType::Array(types) => types.contains(&ty),
        SchemaType::AnyValue => false,
    }
}

/// Request schemas say what the server refuses: strings with a NUL character (free-form
/// objects become objects of NUL-free JSON values).
fn nul_free_requests(doc: &mut Document, requests: &[String]) {
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    components
        .schemas
        .insert(JSON_VALUE.into(), RefOr::T(json_value()));
    for name in requests {
        let Some(RefOr::T(Schema::Object(schema))) = components.schemas.get_mut(name) else {
            continue;
        };
        for property in schema.properties.values_mut() {
            let RefOr::T(Schema::Object(p)) = property else {
                continue;
            };
            if is_type(p, Type::String)
                && p.pattern.is_none()
                && !matches!(
                    p.format,
                    Some(SchemaFormat::KnownFormat(
                        KnownFormat::Uuid | KnownFormat::DateTime
                    ))
                )
            {
                p.pattern = Some(NUL_FREE.to_owned());
            } else if is_type(p, Type::Object) && p.properties.is_empty() {
                p.property_names = Some(Box::new(nul_free_string().build().into()));
                p.additional_properties = Some(Box::new(AdditionalProperties::RefOr(RefOr::Ref(
                    Ref::from_schema_name(JSON_VALUE),
                ))));
            }
        }
    }
}

/// The description, built once.
pub fn document() -> &'static Document {
    static DOC: OnceLock<Document> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| document().to_json().unwrap_or_else(|_| "{}".to_owned()))
}

/// `GET /openapi.json`, `GET /docs` and the page's script.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(OPENAPI_PATH, get(openapi_json))
        .route(DOCS_PATH, get(docs))
        .route(REDOC_PATH, get(redoc))
}

/// `GET /health`: the process is up (liveness).
#[utoipa::path(
    get, path = "/health", tag = "service", operation_id = "health",
    responses((status = 200, description = "Up.", body = Status)),
)]
#[allow(dead_code)]
fn health() {}

/// `GET /ready`: the node can take work (its database and Redis answer, it has room for
/// calls); the detail is on the operations listener.
#[utoipa::path(
    get, path = "/ready", tag = "service", operation_id = "ready",
    responses(
        (status = 200, description = "Ready.", body = Status),
        (status = 503, description = "Not ready: `{\"status\":\"unavailable\"}`.", body = Status),
    ),
)]
#[allow(dead_code)]
fn ready() {}

/// `{"status": ...}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Status {
    /// `ok`, `ready` or `unavailable`.
    status: String,
}

/// `GET /openapi.json`: this API's OpenAPI 3.1 description.
#[utoipa::path(
    get, path = "/openapi.json", tag = "service", operation_id = "get_openapi_description",
    responses((status = 200, description = "The OpenAPI 3.1 description of this API.",
        content_type = "application/json", body = Object)),
)]
pub async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document_json(),
    )
        .into_response()
}

/// The page loads its script from this server only; the script builds its styles inline and
/// runs its search in a worker made from a blob.
const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; worker-src blob:; child-src blob:; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const DOCS_HTML: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>IACE API reference</title>
<style>body { margin: 0; padding: 0; }</style>
</head>
<body>
<redoc spec-url="/openapi.json" hide-download-button="false" expand-responses="200,201"></redoc>
<script src="/docs/redoc.standalone.js"></script>
</body>
</html>
"#;

/// `GET /docs`: the reference page (Redoc, rendering `/openapi.json`).
async fn docs() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(DOCS_CSP),
            ),
        ],
        DOCS_HTML,
    )
        .into_response()
}

/// Redoc 2.5.4's standalone bundle (MIT; see `redoc/LICENSE`).
const REDOC_JS: &str = include_str!("redoc/redoc.standalone.js");

async fn redoc() -> Response {
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=86400"),
            ),
        ],
        REDOC_JS,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde::de::DeserializeOwned;
    use serde_json::Value;

    use super::*;
    use crate::http::auth::POLICY;

    fn json() -> Value {
        serde_json::from_str(document_json()).expect("the description is JSON")
    }

    #[test]
    #[ignore = "writes the description to stdout"]
    fn print() {
        println!("{}", document_json());
    }

    #[test]
    fn the_description_is_openapi_3_1_of_this_version() {
        let doc = json();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["title"], "IACE");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        for scheme in [BEARER, OPERATOR] {
            assert_eq!(
                doc["components"]["securitySchemes"][scheme]["scheme"],
                "bearer"
            );
        }
    }

    /// Every route the access policy lists (so every route the router serves: a route
    /// missing from the policy answers 500) is described, and nothing else is.
    #[test]
    fn the_description_and_the_access_policy_name_the_same_routes() {
        let doc = json();
        let mut described = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                described.insert((method.to_uppercase(), path.clone()));
            }
        }
        let served: BTreeSet<(String, String)> = POLICY
            .iter()
            .filter(|(m, p, _)| !NOT_DESCRIBED.contains(&(*m, *p)))
            .map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        let missing: Vec<_> = served.difference(&described).collect();
        let extra: Vec<_> = described.difference(&served).collect();
        assert!(missing.is_empty(), "routes not described: {missing:?}");
        assert!(extra.is_empty(), "described but not served: {extra:?}");
    }

    #[test]
    fn every_operation_declares_its_security_and_its_errors_use_the_envelope() {
        let doc = json();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let access = access_of(
                    &axum::http::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                    path,
                )
                .expect("in the policy");
                let security = op["security"].as_array().expect("security stated");
                let schemes: Vec<&str> = security
                    .iter()
                    .flat_map(|r| r.as_object().expect("requirement").keys())
                    .map(String::as_str)
                    .collect();
                let expected: &[&str] = match access {
                    Access::Role(_) => &[BEARER],
                    Access::Operator => &[OPERATOR],
                    Access::Public => &[],
                };
                assert_eq!(schemes, expected, "{method} {path}");
                assert!(op["operationId"].is_string(), "{method} {path}");
                for (status, response) in op["responses"].as_object().expect("responses") {
                    // `/ready` answers its probe's own body when it is not ready.
                    if status.parse::<u16>().expect("status") < 400 || path == "/ready" {
                        continue;
                    }
                    let schema = match response.get("$ref").and_then(Value::as_str) {
                        Some(r) => {
                            let name = r.rsplit('/').next().unwrap();
                            doc["components"]["responses"][name]["content"]["application/json"]
                                ["schema"]["$ref"]
                                .clone()
                        }
                        None => response["content"]["application/json"]["schema"]["$ref"].clone(),
                    };
                    assert_eq!(
                        schema, "#/components/schemas/Error",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }

    /// The fields a request type of the engine accepts: its `deny_unknown_fields` refusal of
    /// an unknown one lists them.
    fn accepted_fields<T: DeserializeOwned>() -> BTreeSet<String> {
        let err = match serde_json::from_str::<T>(r#"{"__probe__": 1}"#) {
            Ok(_) => panic!("the type takes unknown fields"),
            Err(e) => e.to_string(),
        };
        let (_, expected) = err
            .split_once("expected")
            .unwrap_or_else(|| panic!("not an unknown-field refusal: {err}"));
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    fn described_fields(schema: &str) -> BTreeSet<String> {
        let doc = json();
        let object = &doc["components"]["schemas"][schema];
        assert_eq!(
            object["additionalProperties"], false,
            "{schema} takes unknown fields"
        );
        object["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no schema {schema}"))
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn request_schemas_have_the_fields_the_engine_accepts() {
        use iace_actors::catalog as c;
        let cases: Vec<(&str, BTreeSet<String>)> = vec![
            ("NewCall", accepted_fields::<iace_actors::engine::NewCall>()),
            ("NewAgent", accepted_fields::<c::NewAgent>()),
            ("AgentPatch", accepted_fields::<c::AgentPatch>()),
            ("NewCustomer", accepted_fields::<c::NewCustomer>()),
            ("CustomerPatch", accepted_fields::<c::CustomerPatch>()),
            ("NewPhoneNumber", accepted_fields::<c::NewPhoneNumber>()),
            (
                "NewWebhookEndpoint",
                accepted_fields::<c::webhooks::NewWebhookEndpoint>(),
            ),
            (
                "WebhookEndpointPatch",
                accepted_fields::<c::webhooks::WebhookEndpointPatch>(),
            ),
            (
                "OrgPatch",
                accepted_fields::<iace_actors::accounts::OrgPatch>(),
            ),
        ];
        for (schema, accepted) in cases {
            assert!(!accepted.is_empty(), "{schema}");
            assert_eq!(described_fields(schema), accepted, "{schema}");
        }
    }

    #[test]
    fn enums_are_the_engines_wire_names() {
        use iace_actors::machine::EndReason;
        for r in END_REASONS {
            let parsed: EndReason = serde_json::from_value(Value::from(r)).expect(r);
            assert_eq!(parsed.as_str(), r);
        }
        for s in ["active", "inactive", "archived"] {
            assert!(iace_actors::catalog::AgentStatus::parse(s).is_some(), "{s}");
        }
        for s in ["outbound", "inbound", "both"] {
            assert!(iace_actors::catalog::AgentType::parse(s).is_some(), "{s}");
        }
        for s in ["pending", "delivered", "failed"] {
            assert!(
                iace_actors::ports::outbox::DeliveryStatus::parse(s).is_some(),
                "{s}"
            );
        }
        for s in ["ok", "invalid", "failed"] {
            assert!(
                iace_actors::ports::analysis::AnalysisStatus::parse(s).is_some(),
                "{s}"
            );
        }
        let doc = json();
        let values = |name: &str| -> Vec<String> {
            doc["components"]["schemas"][name]["enum"]
                .as_array()
                .unwrap_or_else(|| panic!("{name} has no values"))
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(values("EndReason").len(), END_REASONS.len());
        assert_eq!(
            values("EventType"),
            iace_actors::catalog::webhooks::EVENT_TYPES.to_vec()
        );
    }
}
