//! Webhook endpoints: where an organization wants to hear about its calls, and which events.
//!
//! The URL's form and address are checked by the server before it reaches here (the SSRF guard
//! lives with the HTTP client); the signing secret is generated there too and only stored
//! here. What this module checks: the event types against the catalogue, the lengths, and that
//! a patch changes something.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::FieldError;
use crate::machine::OrganizationId;

/// The events an endpoint can subscribe to (payloads in the README's event catalogue).
pub const EVENT_TYPES: [&str; 8] = [
    "call.created",
    "call.ringing",
    "call.answered",
    "call.ended",
    "call.transferred",
    "call.escalated",
    "call.transcript_ready",
    "call.analyzed",
];

/// Longest accepted URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Longest accepted description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 500;

/// A stored endpoint. The secrets never leave the server except once, at creation and at
/// rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEndpoint {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub organization_id: OrganizationId,
    /// Where deliveries are posted.
    pub url: String,
    /// Free text for the owner.
    pub description: String,
    /// Subscribed event types, sorted, each from [`EVENT_TYPES`].
    pub event_types: Vec<String>,
    /// Deliveries are made only while enabled.
    pub enabled: bool,
    /// Why the server disabled it (`410 Gone`, failing for days), if it did.
    pub disabled_reason: Option<String>,
    /// Signing secret (`whsec_...`).
    #[serde(skip_serializing)]
    pub secret: String,
    /// The secret before the last rotation, still signing until `previous_secret_until`.
    #[serde(skip_serializing)]
    pub previous_secret: Option<String>,
    /// End of the rotation window.
    pub previous_secret_until: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// `POST /v1/webhook-endpoints` body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewWebhookEndpoint {
    /// See [`WebhookEndpoint::url`].
    pub url: String,
    /// See [`WebhookEndpoint::description`].
    #[serde(default)]
    pub description: String,
    /// See [`WebhookEndpoint::event_types`]; at least one.
    pub event_types: Vec<String>,
    /// See [`WebhookEndpoint::enabled`] (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// `PATCH /v1/webhook-endpoints/{id}` body: the fields to change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpointPatch {
    /// New URL.
    #[serde(default)]
    pub url: Option<String>,
    /// New description.
    #[serde(default)]
    pub description: Option<String>,
    /// New subscription.
    #[serde(default)]
    pub event_types: Option<Vec<String>>,
    /// Enable (clears the reason it was disabled) or disable.
    #[serde(default)]
    pub enabled: Option<bool>,
}

impl NewWebhookEndpoint {
    /// The stored endpoint, or the first field that is wrong.
    pub fn validate(
        self,
        id: Uuid,
        org: OrganizationId,
        secret: String,
        now: DateTime<Utc>,
    ) -> Result<WebhookEndpoint, FieldError> {
        Ok(WebhookEndpoint {
            id,
            organization_id: org,
            url: validate_url(&self.url)?,
            description: validate_description(&self.description)?,
            event_types: validate_event_types(&self.event_types)?,
            enabled: self.enabled,
            disabled_reason: None,
            secret,
            previous_secret: None,
            previous_secret_until: None,
            created_at: now,
            updated_at: now,
        })
    }
}

impl WebhookEndpointPatch {
    /// The patch with its values checked; an empty patch is refused.
    pub fn validate(self) -> Result<WebhookEndpointPatch, FieldError> {
        if self == WebhookEndpointPatch::default() {
            return Err(FieldError::new(
                "body",
                "give at least one of url, description, event_types, enabled",
            ));
        }
        Ok(WebhookEndpointPatch {
            url: self.url.as_deref().map(validate_url).transpose()?,
            description: self
                .description
                .as_deref()
                .map(validate_description)
                .transpose()?,
            event_types: self
                .event_types
                .as_deref()
                .map(validate_event_types)
                .transpose()?,
            enabled: self.enabled,
        })
    }

    /// Applies the (validated) patch.
    pub fn apply(&self, endpoint: &mut WebhookEndpoint, now: DateTime<Utc>) {
        if let Some(url) = &self.url {
            endpoint.url.clone_from(url);
        }
        if let Some(description) = &self.description {
            endpoint.description.clone_from(description);
        }
        if let Some(types) = &self.event_types {
            endpoint.event_types.clone_from(types);
        }
        if let Some(enabled) = self.enabled {
            endpoint.enabled = enabled;
            if enabled {
                endpoint.disabled_reason = None;
            }
        }
        endpoint.updated_at = now;
    }
}

fn validate_url(url: &str) -> Result<String, FieldError> {
    let url = url.trim();
    if url.is_empty() {
        return Err(FieldError::new("url", "must not be empty"));
    }
    if url.len() > MAX_URL_BYTES {
        return Err(FieldError::new(
            "url",
            format!("must be at most {MAX_URL_BYTES} bytes"),
        ));
    }
    Ok(url.to_owned())
}

fn validate_description(text: &str) -> Result<String, FieldError> {
    if text.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(FieldError::new(
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    Ok(text.trim().to_owned())
}

fn validate_event_types(types: &[String]) -> Result<Vec<String>, FieldError> {
    if types.is_empty() {
        return Err(FieldError::new(
            "event_types",
            "subscribe to at least one event type",
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(types.len());
    for t in types {
        if !EVENT_TYPES.contains(&t.as_str()) {
            return Err(FieldError::new(
                "event_types",
                format!(
                    "unknown event type {t:?}; known: {}",
                    EVENT_TYPES.join(", ")
                ),
            ));
        }
        out.push(t.clone());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    #[test]
    fn a_new_endpoint_is_checked_and_its_types_sorted() {
        let new: NewWebhookEndpoint = serde_json::from_value(serde_json::json!({
            "url": " https://hooks.example.com/iace ",
            "event_types": ["call.ended", "call.created", "call.ended"],
        }))
        .unwrap();
        let e = new
            .validate(Uuid::nil(), Uuid::nil(), "whsec_x".into(), now())
            .unwrap();
        assert_eq!(e.url, "https://hooks.example.com/iace");
        assert_eq!(e.event_types, ["call.created", "call.ended"]);
        assert!(e.enabled);
        let shown = serde_json::to_value(&e).unwrap();
        assert!(shown.get("secret").is_none() && shown.get("previous_secret").is_none());

        for (body, field) in [
            (
                serde_json::json!({"url": "", "event_types": ["call.ended"]}),
                "url",
            ),
            (
                serde_json::json!({"url": "https://x.example", "event_types": []}),
                "event_types",
            ),
            (
                serde_json::json!({"url": "https://x.example", "event_types": ["call.exploded"]}),
                "event_types",
            ),
            (
                serde_json::json!({"url": "https://x.example", "event_types": ["call.ended"], "description": "d".repeat(501)}),
                "description",
            ),
        ] {
            let new: NewWebhookEndpoint = serde_json::from_value(body).unwrap();
            let err = new
                .validate(Uuid::nil(), Uuid::nil(), "whsec_x".into(), now())
                .unwrap_err();
            assert_eq!(err.field, field);
        }
        assert!(serde_json::from_value::<NewWebhookEndpoint>(
            serde_json::json!({"url": "https://x.example", "event_types": ["call.ended"], "secret": "mine"})
        )
        .is_err());
    }

    #[test]
    fn patches_change_only_what_they_name_and_enabling_clears_the_reason() {
        let mut e: WebhookEndpoint = NewWebhookEndpoint {
            url: "https://a.example".into(),
            description: String::new(),
            event_types: vec!["call.ended".into()],
            enabled: true,
        }
        .validate(Uuid::nil(), Uuid::nil(), "whsec_x".into(), now())
        .unwrap();
        e.enabled = false;
        e.disabled_reason = Some("410 Gone".into());
        assert!(WebhookEndpointPatch::default().validate().is_err());
        let patch = WebhookEndpointPatch {
            enabled: Some(true),
            ..Default::default()
        }
        .validate()
        .unwrap();
        patch.apply(&mut e, now());
        assert!(e.enabled && e.disabled_reason.is_none());
        assert_eq!(e.url, "https://a.example");
    }
}
