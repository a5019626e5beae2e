//! Tenant catalog: organizations, agents and customers.
//!
//! The types here are validated on construction ([`NewAgent::validate`], ...), so a store only
//! ever sees well-formed rows. Validation errors carry the field name and a message a client
//! can act on.
//!
//! - [`field`] holds [`FieldError`], the validation failure every catalog type shares.
//! - [`profile`] holds [`VoiceProfile`], how an agent converses, read and
//!   checked from its persona and voice configuration.
//! - [`webhooks`] holds the webhook endpoints an organization registers for its calls' events.

pub mod field;
pub mod profile;
pub mod schema;
pub mod webhooks;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::machine::{OrganizationId, PhoneNumber};
pub use field::FieldError;
use profile::VoiceProfile;

/// Longest accepted agent or organization name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Largest accepted JSON document (persona, voice, metadata), serialized, in bytes.
pub const MAX_JSON_BYTES: usize = 64 * 1024;

/// A tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Organization {
    /// Id.
    pub id: OrganizationId,
    /// Display name.
    pub name: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// Lifecycle of an agent. Only `active` agents take new calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Takes calls.
    Active,
    /// Kept, but takes no new calls.
    Inactive,
    /// Deleted while it still had call history.
    Archived,
}

impl AgentStatus {
    /// Database / wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Active => "active",
            AgentStatus::Inactive => "inactive",
            AgentStatus::Archived => "archived",
        }
    }

    /// Parses the database / wire form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(AgentStatus::Active),
            "inactive" => Some(AgentStatus::Inactive),
            "archived" => Some(AgentStatus::Archived),
            _ => None,
        }
    }
}

/// What calls an agent handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentType {
    /// Places calls.
    Outbound,
    /// Answers calls.
    Inbound,
    /// Both.
    Both,
}

impl AgentType {
    /// Database / wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentType::Outbound => "outbound",
            AgentType::Inbound => "inbound",
            AgentType::Both => "both",
        }
    }

    /// Parses the database / wire form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "outbound" => Some(AgentType::Outbound),
            "inbound" => Some(AgentType::Inbound),
            "both" => Some(AgentType::Both),
            _ => None,
        }
    }
}

/// An AI agent: persona (prompt, goals) and voice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub organization_id: OrganizationId,
    /// Display name.
    pub name: String,
    /// Persona: system prompt, goals, style (free-form JSON object).
    pub persona_config: serde_json::Value,
    /// Voice: TTS voice id, speed, language (free-form JSON object).
    pub voice_config: serde_json::Value,
    /// Lifecycle.
    pub status: AgentStatus,
    /// Direction(s) handled.
    pub agent_type: AgentType,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// `POST /v1/agents` body.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    /// Display name (1..=200 characters).
    pub name: String,
    /// JSON object; defaults to `{}`.
    #[serde(default = "empty_object")]
    pub persona_config: serde_json::Value,
    /// JSON object; defaults to `{}`.
    #[serde(default = "empty_object")]
    pub voice_config: serde_json::Value,
    /// Defaults to `active`.
    #[serde(default)]
    pub status: Option<AgentStatus>,
    /// Defaults to `outbound`.
    #[serde(default)]
    pub agent_type: Option<AgentType>,
}

impl NewAgent {
    /// Validates and builds the agent.
    pub fn validate(
        self,
        id: Uuid,
        organization_id: OrganizationId,
        now: DateTime<Utc>,
    ) -> Result<Agent, FieldError> {
        let status = self.status.unwrap_or(AgentStatus::Active);
        if status == AgentStatus::Archived {
            return Err(FieldError::new(
                "status",
                "an agent cannot be created archived; use active or inactive",
            ));
        }
        let name = validate_name("name", &self.name)?;
        let persona_config = validate_object("persona_config", self.persona_config)?;
        let voice_config = validate_object("voice_config", self.voice_config)?;
        // The settings the conversation reads are typed and ranged: refuse what it could not
        // use now rather than fall back to defaults on a live call.
        VoiceProfile::from_configs(&persona_config, &voice_config)?;
        Ok(Agent {
            id,
            organization_id,
            name,
            persona_config,
            voice_config,
            status,
            agent_type: self.agent_type.unwrap_or(AgentType::Outbound),
            created_at: now,
            updated_at: now,
        })
    }
}

/// `PATCH /v1/agents/{id}` body: absent fields are left alone.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentPatch {
    /// New name.
    pub name: Option<String>,
    /// Replaces the persona.
    pub persona_config: Option<serde_json::Value>,
    /// Replaces the voice.
    pub voice_config: Option<serde_json::Value>,
    /// New status (`active` or `inactive`).
    pub status: Option<AgentStatus>,
    /// New type.
    pub agent_type: Option<AgentType>,
}

impl AgentPatch {
    /// Validates every present field; an empty patch is refused.
    pub fn validate(mut self) -> Result<Self, FieldError> {
        if self.name.is_none()
            && self.persona_config.is_none()
            && self.voice_config.is_none()
            && self.status.is_none()
            && self.agent_type.is_none()
        {
            return Err(FieldError::new("body", "the patch changes nothing"));
        }
        if let Some(name) = self.name.take() {
            self.name = Some(validate_name("name", &name)?);
        }
        if let Some(v) = self.persona_config.take() {
            let v = validate_object("persona_config", v)?;
            // Each object replaces the stored one whole and is checked on its own (the
            // checks of one never look at the other).
            VoiceProfile::from_configs(&v, &empty_object())?;
            self.persona_config = Some(v);
        }
        if let Some(v) = self.voice_config.take() {
            let v = validate_object("voice_config", v)?;
            VoiceProfile::from_configs(&empty_object(), &v)?;
            self.voice_config = Some(v);
        }
        if self.status == Some(AgentStatus::Archived) {
            return Err(FieldError::new(
                "status",
                "archived is set by DELETE; use active or inactive",
            ));
        }
        Ok(self)
    }

    /// Applies the patch to `agent`.
    pub fn apply(&self, agent: &mut Agent, now: DateTime<Utc>) {
        if let Some(v) = &self.name {
            agent.name.clone_from(v);
        }
        if let Some(v) = &self.persona_config {
            agent.persona_config.clone_from(v);
        }
        if let Some(v) = &self.voice_config {
            agent.voice_config.clone_from(v);
        }
        if let Some(v) = self.status {
            agent.status = v;
        }
        if let Some(v) = self.agent_type {
            agent.agent_type = v;
        }
        agent.updated_at = now;
    }
}

/// A person the organization calls or is called by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub organization_id: OrganizationId,
    /// E.164 phone; unique within the organization.
    pub phone: PhoneNumber,
    /// Email, when known.
    pub email: Option<String>,
    /// Display name, when known.
    pub name: Option<String>,
    /// Free-form segment label (`vip`, `churn_risk`, ...).
    pub segment: Option<String>,
    /// Free-form JSON object (GIN indexed).
    pub metadata: serde_json::Value,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// `POST /v1/customers` body.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCustomer {
    /// E.164 phone.
    pub phone: PhoneNumber,
    /// Email.
    #[serde(default)]
    pub email: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Segment.
    #[serde(default)]
    pub segment: Option<String>,
    /// JSON object; defaults to `{}`.
    #[serde(default = "empty_object")]
    pub metadata: serde_json::Value,
}

impl NewCustomer {
    /// Validates and builds the customer.
    pub fn validate(
        self,
        id: Uuid,
        organization_id: OrganizationId,
        now: DateTime<Utc>,
    ) -> Result<Customer, FieldError> {
        Ok(Customer {
            id,
            organization_id,
            phone: self.phone,
            email: self.email.map(|e| validate_email(&e)).transpose()?,
            name: self.name.map(|n| validate_name("name", &n)).transpose()?,
            segment: self
                .segment
                .map(|s| validate_label("segment", &s))
                .transpose()?,
            metadata: validate_object("metadata", self.metadata)?,
            created_at: now,
            updated_at: now,
        })
    }
}

/// A phone number the organization owns, answered by one of its agents. A number belongs to
/// at most one organization (the carrier routes it to exactly one place).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhoneNumberAssignment {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub organization_id: OrganizationId,
    /// The agent that answers calls to the number.
    pub agent_id: Uuid,
    /// E.164 number; unique across all organizations.
    pub number: PhoneNumber,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/phone-numbers` body.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPhoneNumber {
    /// E.164 number (as provisioned at the carrier).
    pub number: PhoneNumber,
    /// The agent that answers it.
    pub agent_id: Uuid,
}

/// `PATCH /v1/customers/{id}` body: absent fields are left alone, `null` clears an optional one.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerPatch {
    /// New phone.
    pub phone: Option<PhoneNumber>,
    /// `Some(None)` clears.
    #[serde(default, deserialize_with = "double_option")]
    pub email: Option<Option<String>>,
    /// `Some(None)` clears.
    #[serde(default, deserialize_with = "double_option")]
    pub name: Option<Option<String>>,
    /// `Some(None)` clears.
    #[serde(default, deserialize_with = "double_option")]
    pub segment: Option<Option<String>>,
    /// Replaces the metadata.
    pub metadata: Option<serde_json::Value>,
}

impl CustomerPatch {
    /// Validates every present field; an empty patch is refused.
    pub fn validate(mut self) -> Result<Self, FieldError> {
        if self.phone.is_none()
            && self.email.is_none()
            && self.name.is_none()
            && self.segment.is_none()
            && self.metadata.is_none()
        {
            return Err(FieldError::new("body", "the patch changes nothing"));
        }
        self.email = match self.email.take() {
            Some(Some(e)) => Some(Some(validate_email(&e)?)),
            other => other,
        };
        self.name = match self.name.take() {
            Some(Some(n)) => Some(Some(validate_name("name", &n)?)),
            other => other,
        };
        self.segment = match self.segment.take() {
            Some(Some(s)) => Some(Some(validate_label("segment", &s)?)),
            other => other,
        };
        if let Some(v) = self.metadata.take() {
            self.metadata = Some(validate_object("metadata", v)?);
        }
        Ok(self)
    }

    /// Applies the patch to `customer`.
    pub fn apply(&self, customer: &mut Customer, now: DateTime<Utc>) {
        if let Some(v) = &self.phone {
            customer.phone = v.clone();
        }
        if let Some(v) = &self.email {
            customer.email.clone_from(v);
        }
        if let Some(v) = &self.name {
            customer.name.clone_from(v);
        }
        if let Some(v) = &self.segment {
            customer.segment.clone_from(v);
        }
        if let Some(v) = &self.metadata {
            customer.metadata.clone_from(v);
        }
        customer.updated_at = now;
    }
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

fn double_option<'de, D, T>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}

/// Trims and checks a display name.
pub fn validate_name(field: &'static str, raw: &str) -> Result<String, FieldError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(name.to_owned())
}

/// Checks that `value` is a JSON object of reasonable size.
pub fn validate_object(
    field: &'static str,
    value: serde_json::Value,
) -> Result<serde_json::Value, FieldError> {
    if !value.is_object() {
        return Err(FieldError::new(field, "must be a JSON object"));
    }
    let size = serde_json::to_vec(&value).map(|v| v.len()).unwrap_or(0);
    if size > MAX_JSON_BYTES {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_JSON_BYTES} bytes when serialized"),
        ));
    }
    Ok(value)
}

fn validate_email(raw: &str) -> Result<String, FieldError> {
    let email = raw.trim();
    let ok = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
        });
    if ok {
        Ok(email.to_owned())
    } else {
        Err(FieldError::new(
            "email",
            "must be an email address like ana@example.com",
        ))
    }
}

fn validate_label(field: &'static str, raw: &str) -> Result<String, FieldError> {
    let label = raw.trim();
    let ok = !label.is_empty()
        && label.len() <= 64
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(label.to_owned())
    } else {
        Err(FieldError::new(
            field,
            "must be 1-64 characters of letters, digits, '_', '-' or '.'",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    #[test]
    fn agent_voice_settings_are_checked_on_create_and_patch() {
        let ok: NewAgent = serde_json::from_str(
            r#"{"name":"Ava","persona_config":{"greeting":"Hi","goals":["renewals"],
                "escalation":{"sentiment_floor":-0.4}},"voice_config":{"speed":1.1}}"#,
        )
        .unwrap();
        let a = ok.validate(Uuid::nil(), Uuid::nil(), now()).unwrap();
        // Free-form keys the conversation does not read are kept.
        assert_eq!(a.persona_config["goals"][0], "renewals");
        for (body, field, says) in [
            (
                r#"{"name":"x","persona_config":{"greeting":3}}"#,
                "persona_config",
                "invalid type",
            ),
            (
                r#"{"name":"x","persona_config":{"escalation":{"sentiment_floor":-3}}}"#,
                "persona_config",
                "sentiment_floor",
            ),
            (
                r#"{"name":"x","persona_config":{"human_number":"555"}}"#,
                "persona_config",
                "human_number",
            ),
            (
                r#"{"name":"x","voice_config":{"speed":4}}"#,
                "voice_config",
                "speed",
            ),
        ] {
            let bad: NewAgent = serde_json::from_str(body).unwrap();
            let err = bad.validate(Uuid::nil(), Uuid::nil(), now()).unwrap_err();
            assert_eq!(err.field, field, "{body}");
            assert!(err.message.contains(says), "{body}: {}", err.message);
        }
        let patch: AgentPatch =
            serde_json::from_str(r#"{"persona_config":{"tools":["launch_missiles"]}}"#).unwrap();
        let err = patch.validate().unwrap_err();
        assert_eq!(err.field, "persona_config");
        assert!(err.message.contains("unknown tool"), "{}", err.message);
        let patch: AgentPatch =
            serde_json::from_str(r#"{"voice_config":{"voice_id":""}}"#).unwrap();
        assert_eq!(patch.validate().unwrap_err().field, "voice_config");
        let patch: AgentPatch =
            serde_json::from_str(r#"{"persona_config":{"voicemail":"leave_message"}}"#).unwrap();
        assert!(patch.validate().is_ok());
    }

    #[test]
    fn new_agent_defaults_and_validation() {
        let a: NewAgent = serde_json::from_str(r#"{"name":"  Ana  "}"#).unwrap();
        let a = a.validate(Uuid::nil(), Uuid::nil(), now()).unwrap();
        assert_eq!(a.name, "Ana");
        assert_eq!(a.status, AgentStatus::Active);
        assert_eq!(a.agent_type, AgentType::Outbound);
        assert_eq!(a.persona_config, serde_json::json!({}));

        let bad: NewAgent = serde_json::from_str(r#"{"name":"x","persona_config":[1]}"#).unwrap();
        let err = bad.validate(Uuid::nil(), Uuid::nil(), now()).unwrap_err();
        assert_eq!(err.field, "persona_config");

        let empty: NewAgent = serde_json::from_str(r#"{"name":"   "}"#).unwrap();
        assert_eq!(
            empty
                .validate(Uuid::nil(), Uuid::nil(), now())
                .unwrap_err()
                .field,
            "name"
        );
        assert!(serde_json::from_str::<NewAgent>(r#"{"name":"x","nope":1}"#).is_err());
    }

    #[test]
    fn customer_patch_distinguishes_absent_and_null() {
        let p: CustomerPatch = serde_json::from_str(r#"{"email":null}"#).unwrap();
        assert_eq!(p.email, Some(None));
        assert_eq!(p.name, None);
        let p = p.validate().unwrap();
        let mut c = NewCustomer {
            phone: "+14155550100".parse().unwrap(),
            email: Some("a@b.co".into()),
            name: None,
            segment: None,
            metadata: empty_object(),
        }
        .validate(Uuid::nil(), Uuid::nil(), now())
        .unwrap();
        p.apply(&mut c, now());
        assert_eq!(c.email, None);
        assert!(CustomerPatch::default().validate().is_err());
    }

    #[test]
    fn emails_and_segments_are_checked() {
        assert!(validate_email("ana@example.com").is_ok());
        for bad in ["", "ana", "@x.com", "ana@com", "a b@x.com", "ana@.com"] {
            assert!(validate_email(bad).is_err(), "{bad}");
        }
        assert!(validate_label("segment", "vip-1").is_ok());
        assert!(validate_label("segment", "v i p").is_err());
    }
}
