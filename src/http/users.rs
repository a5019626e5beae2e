//! `/v1/users` (admin: list, invite, change role, disable/enable) and `/v1/me/password`.
//!
//! The role rules mirror API keys: nobody grants a role above their own or acts on a user
//! ranked above them; the organization always keeps an enabled owner (checked by the store
//! under the owners' row locks, so two owners demoting each other cannot both succeed).
//! Disabling a user ends every session of theirs at once; changing one's password ends every
//! other session.

use super::openapi::schemas as S;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use iace_actors::accounts::{Role, Subject, User, UserActor, UserChange, UserUpdate};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::auth::Caller;
use super::catalog::{next_cursor, PageQuery};
use super::error::ApiError;
use super::extract::{AppJson, AppPatch, AppPath, AppQuery, Patch};
use super::sessions::{overloaded, password_attempt};
use super::AppState;
use crate::auth;

/// A user as the API shows it (never the password hash).
fn user_json(u: &User) -> Value {
    json!({
        "id": u.id,
        "email": u.email,
        "role": u.role,
        "disabled": u.disabled_at.is_some(),
        "disabled_at": u.disabled_at,
        "created_at": u.created_at,
    })
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

fn parse_role(role: &str) -> Result<Role, ApiError> {
    Role::parse(role)
        .ok_or_else(|| ApiError::invalid("role: must be owner, admin, member or read_only"))
}

async fn hash(password: String) -> Result<String, ApiError> {
    auth::pool::global()
        .hash(password)
        .await
        .map_err(|_| overloaded())?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// `GET /v1/users?limit=&cursor=` (admin): oldest first.
#[utoipa::path(
    get, path = "/v1/users", tag = "users", operation_id = "list_users",
    params(PageQuery),
    responses((status = 200, description = "A page of users, oldest first.", body = S::UserPage)),
)]
pub async fn list(
    State(state): State<AppState>,
    Caller(p): Caller,
    AppQuery(q): AppQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let request = q.request()?;
    let limit = request.limit;
    let users = state.engine.list_users(p.org, request).await?;
    Ok(Json(json!({
        "data": users.iter().map(user_json).collect::<Vec<_>>(),
        "next_cursor": next_cursor(&users, limit, |u| (u.created_at, u.id)),
    })))
}

/// `POST /v1/users` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Unique across organizations.
    #[schema(
        max_length = 254,
        pattern = r"^\s*[^\s@\x00-\x1f\x7f-\x9f]+@[^\s@.\x00-\x1f\x7f-\x9f][^\s@\x00-\x1f\x7f-\x9f]*\.[^\s@\x00-\x1f\x7f-\x9f]*[^\s@.\x00-\x1f\x7f-\x9f]\s*$"
    )]
    email: String,
    /// Defaults to `member`; at most the caller's own.
    #[serde(default)]
    #[schema(value_type = Option<S::Role>)]
    role: Option<String>,
    /// When absent a one-time password is generated and returned once.
    #[serde(default)]
    #[schema(min_length = 12, max_length = 1024, format = Password)]
    password: Option<String>,
}

/// `POST /v1/users` (admin): adds a user to the caller's organization, with a role no higher
/// than the caller's. Without a password, a generated one is in this answer only.
#[utoipa::path(
    post, path = "/v1/users", tag = "users", operation_id = "create_user",
    request_body = NewUser,
    responses(
        (status = 201, description = "The user; without a `password` in the request, a generated one is in this answer only.", body = S::User),
        (status = 409, description = "The email is taken (`conflict`).", body = S::Error),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    Caller(p): Caller,
    AppJson(body): AppJson<NewUser>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let email =
        auth::normalize_email(&body.email).map_err(|e| ApiError::invalid(format!("email: {e}")))?;
    let role = match body.role.as_deref() {
        None => Role::Member,
        Some(r) => parse_role(r)?,
    };
    if role > p.role {
        return Err(ApiError::invalid(format!(
            "role: a {} cannot add a user with role {role}",
            p.role
        )));
    }
    let (password, generated) = match body.password {
        Some(pw) => {
            auth::validate_password(&pw)
                .map_err(|e| ApiError::invalid(format!("password: {e}")))?;
            (pw, false)
        }
        None => (auth::generate_password(), true),
    };
    let user = User {
        id: state.engine.next_id(),
        organization_id: p.org,
        email,
        password_hash: hash(password.clone()).await?,
        role,
        created_at: state.engine.clock_now(),
        disabled_at: None,
    };
    let user = state.engine.create_user(user).await?;
    tracing::info!(user_id = %user.id, role = %role, "user added");
    let mut body = user_json(&user);
    if generated {
        body["password"] = Value::String(password);
    }
    Ok((StatusCode::CREATED, Json(body)))
}

/// `PATCH /v1/users/{id}` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    /// At most the caller's own.
    #[serde(default)]
    #[schema(value_type = S::Role, required = false)]
    role: Option<String>,
    /// Disabling ends the user's sessions at once.
    #[serde(default)]
    #[schema(value_type = bool, required = false)]
    disabled: Option<bool>,
}

impl Patch for UserPatch {
    const CLEARABLE: &'static [&'static str] = &[];
}

/// `PATCH /v1/users/{id}` (admin): `role` and/or `disabled`.
#[utoipa::path(
    patch, path = "/v1/users/{id}", tag = "users", operation_id = "update_user",
    params(("id" = Uuid, Path, description = "The user's id.")),
    request_body = UserPatch,
    responses(
        (status = 200, description = "The user. Disabling ends their sessions at once.", body = S::User),
        (status = 409, description = "The organization would have no enabled owner (`last_owner`).", body = S::Error),
    ),
)]
pub async fn update(
    State(state): State<AppState>,
    Caller(p): Caller,
    AppPath(id): AppPath<Uuid>,
    AppPatch(patch): AppPatch<UserPatch>,
) -> Result<Json<Value>, ApiError> {
    let change = UserChange {
        role: patch.role.as_deref().map(parse_role).transpose()?,
        disabled: patch.disabled,
    };
    if change == UserChange::default() {
        return Err(ApiError::invalid(
            "nothing to change: give role and/or disabled",
        ));
    }
    let actor = UserActor {
        user: match p.subject {
            Subject::User { user, .. } => Some(user),
            Subject::ApiKey(_) => None,
        },
        role: p.role,
    };
    match state
        .engine
        .update_user(p.org, id, change.clone(), actor)
        .await?
    {
        UserUpdate::Updated(user) => {
            tracing::info!(user_id = %user.id, role = %user.role, disabled = user.disabled_at.is_some(), "user changed");
            Ok(Json(user_json(&user)))
        }
        UserUpdate::NotFound => Err(ApiError::not_found("user not found")),
        UserUpdate::Outranked => Err(forbidden(format!(
            "a {} cannot change a user ranked above them",
            p.role
        ))),
        UserUpdate::RoleAboveOwn => Err(ApiError::invalid(format!(
            "role: a {} cannot grant the role {}",
            p.role,
            change.role.map_or("", Role::as_str)
        ))),
        UserUpdate::SelfDisable => Err(ApiError::invalid(
            "disabled: you cannot disable yourself (sign out instead)",
        )),
        UserUpdate::LastOwner => Err(ApiError::new(
            StatusCode::CONFLICT,
            "last_owner",
            "the organization needs an enabled owner: make another user owner first",
        )),
    }
}

/// `POST /v1/me/password` body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    #[schema(format = Password)]
    current_password: String,
    #[schema(min_length = 12, max_length = 1024, format = Password)]
    new_password: String,
}

/// `POST /v1/me/password` (users only): the current password, then the new one. Every other
/// session of the user ends; this one lives on. Attempts count against the sign-in budget.
#[utoipa::path(
    post, path = "/v1/me/password", tag = "sessions", operation_id = "change_password",
    request_body = PasswordChange,
    responses(
        (status = 200, description = "Changed; every other session of the user ends.", body = S::Changed),
        (status = 403, description = "The current password is wrong (`invalid_credentials`), or the caller is an API key (`forbidden`).", body = S::Error),
    ),
)]
pub async fn change_password(
    State(state): State<AppState>,
    Caller(p): Caller,
    AppJson(body): AppJson<PasswordChange>,
) -> Result<Json<Value>, ApiError> {
    let Subject::User { user, session } = p.subject else {
        return Err(forbidden("API keys have no password"));
    };
    auth::validate_password(&body.new_password)
        .map_err(|e| ApiError::invalid(format!("new_password: {e}")))?;
    if body.current_password.len() > auth::MAX_PASSWORD_BYTES {
        return Err(wrong_password());
    }
    let me = state.engine.user(p.org, user).await?;
    password_attempt(&state, &me.email).await?;
    let (phc, current) = (me.password_hash.clone(), body.current_password);
    let ok = auth::verify_password_off_thread(Some(phc), current)
        .await
        .map_err(|_| overloaded())?;
    if !ok {
        tracing::info!(user_id = %user, "password change refused: wrong current password");
        return Err(wrong_password());
    }
    let hashed = hash(body.new_password).await?;
    if !state.engine.change_password(user, hashed, session).await? {
        return Err(ApiError::unauthorized("the user is disabled"));
    }
    tracing::info!(user_id = %user, "password changed; other sessions ended");
    Ok(Json(json!({"changed": true})))
}

fn wrong_password() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "invalid_credentials",
        "current_password is wrong",
    )
}
