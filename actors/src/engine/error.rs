//! The errors the [`Engine`](super::Engine) hands to its callers.

use crate::catalog::FieldError;
use crate::machine::CallStatus;
use crate::ports::{CatalogWriteError, StoreError};

/// What went wrong, in terms an API client can act on. The HTTP layer maps each variant to one
/// status code and a stable `code` string ([`EngineError::code`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// The request is well-formed JSON but a field is invalid. Nothing was stored.
    #[error("{0}")]
    Invalid(FieldError),
    /// No such resource in the caller's organization.
    #[error("{what} not found")]
    NotFound {
        /// `call`, `agent`, `customer`.
        what: &'static str,
    },
    /// The call cannot take this command in its current status.
    #[error("call is {status}: {message}")]
    IllegalTransition {
        /// The call's current status.
        status: CallStatus,
        /// Human-readable detail.
        message: String,
    },
    /// The `Idempotency-Key` was used before with a different request.
    #[error("the Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
    /// A uniqueness rule (e.g. one customer per phone number).
    #[error("{0}")]
    Conflict(String),
    /// A dependency (database, carrier) is unreachable or the engine is overloaded; safe to retry.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// A vendor the request needs is failing and its circuit breaker is open: the request was
    /// refused at once, nothing was stored. Work already running is not affected.
    #[error("{vendor} is unavailable (its circuit breaker is open{}); nothing was stored, retry later", until.map(|u| format!(" until {}", u.format("%Y-%m-%dT%H:%M:%SZ"))).unwrap_or_default())]
    VendorUnavailable {
        /// The vendor.
        vendor: String,
        /// When the breaker lets calls through again, when known.
        until: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// The database could not be reached or refused a statement; safe to retry. The detail is
    /// for the logs, never for the client (it can name tables, hosts and queries).
    #[error("the store is unavailable: {0}")]
    StoreUnavailable(String),
    /// Something the engine stored cannot be read back, or another fault of ours: retrying
    /// does not help. The detail is for the logs only.
    #[error("internal error: {0}")]
    Internal(String),
    /// The call is run by another node of the cluster: the HTTP layer forwards the request
    /// there (once). Nothing was done here.
    #[error("the call is run by node {}", peer.node_id)]
    Elsewhere {
        /// The node that runs it.
        peer: super::Peer,
    },
    /// The engine did not answer in time; the outcome is unknown (retry with the same
    /// `Idempotency-Key`).
    #[error("the engine did not answer within {0} ms")]
    Timeout(u64),
    /// The organization's plan allows `allowed` live calls at once and `live` are live. Nothing
    /// was stored.
    #[error(
        "your plan allows {allowed} live calls at once and {live} are live; retry when one ends"
    )]
    ConcurrentCallLimit {
        /// The plan's limit.
        allowed: u32,
        /// Live calls counted when the create was refused.
        live: u64,
    },
    /// This node runs as many calls as it may (`max_live_calls`): a new call is refused before
    /// anything is read or stored, so the live ones keep their latency. Nothing was stored.
    #[error(
        "this node runs {running} calls, its capacity; nothing was stored, retry in a few seconds"
    )]
    AtCapacity {
        /// Calls running or being started on the node.
        running: usize,
        /// The node's capacity.
        max: usize,
    },
}

impl EngineError {
    /// Stable machine-readable code for the error envelope.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::Invalid(_) => "invalid_request",
            EngineError::NotFound { .. } => "not_found",
            EngineError::IllegalTransition { .. } => "illegal_transition",
            EngineError::IdempotencyMismatch => "idempotency_key_reused",
            EngineError::Conflict(_) => "conflict",
            EngineError::Unavailable(_) | EngineError::StoreUnavailable(_) => "unavailable",
            EngineError::Internal(_) => "internal",
            EngineError::VendorUnavailable { .. } => "vendor_unavailable",
            EngineError::Timeout(_) => "timeout",
            EngineError::Elsewhere { .. } => "elsewhere",
            EngineError::ConcurrentCallLimit { .. } => "concurrent_call_limit",
            EngineError::AtCapacity { .. } => "at_capacity",
        }
    }

    /// Shorthand for a field error.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        EngineError::Invalid(FieldError::new(field, message))
    }
}

impl From<FieldError> for EngineError {
    fn from(e: FieldError) -> Self {
        EngineError::Invalid(e)
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            // A stale write surfacing to a client means ownership moved mid-request.
            StoreError::Stale => EngineError::Unavailable("the call moved to another node".into()),
            StoreError::Unavailable(m) => EngineError::StoreUnavailable(m),
            StoreError::Corrupt(m) => EngineError::Internal(m),
        }
    }
}

impl From<CatalogWriteError> for EngineError {
    fn from(e: CatalogWriteError) -> Self {
        match e {
            CatalogWriteError::Conflict(m) => EngineError::Conflict(m),
            CatalogWriteError::Store(s) => s.into(),
        }
    }
}
