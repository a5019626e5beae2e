//! [`FieldError`]: a catalog field that failed validation. Its own file so the agent's voice
//! profile ([`super::profile`]) and the catalog records, which check agents against that
//! profile, share it without importing each other.

/// A field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field, as the client named it.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// A new error.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        FieldError {
            field,
            message: message.into(),
        }
    }
}
