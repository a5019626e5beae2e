//! Groq structured outputs (vendor-protocols.md section 11), for the post-call analysis: a
//! one-shot completion whose answer follows a JSON Schema. Strict (constrained) decoding is
//! asked for when the schema allows it (every property required, no additional properties,
//! on every object); otherwise best effort. Either way the caller checks the answer.

use std::sync::Arc;

use async_trait::async_trait;
use iace_actors::ports::analysis::{ModelError, PromptMessage, StructuredModel};
use serde_json::Value;

use super::wire::{ChatRequest, Completion, JsonSchemaFormat, Message, ResponseFormat};
use super::{GroqClient, GroqError};
use crate::clients::retry::RetryPolicy;

/// Whether Groq's strict mode takes `schema`: every object lists all its properties as
/// required and forbids others.
pub fn strict_compatible(schema: &Value) -> bool {
    let Some(obj) = schema.as_object() else {
        return true;
    };
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        let required: Vec<&str> = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if props.keys().any(|k| !required.contains(&k.as_str()))
            || obj.get("additionalProperties") != Some(&Value::Bool(false))
            || !props.values().all(strict_compatible)
        {
            return false;
        }
    } else if obj.get("type").and_then(Value::as_str) == Some("object")
        && obj.get("additionalProperties") != Some(&Value::Bool(false))
    {
        return false;
    }
    obj.get("items").is_none_or(strict_compatible)
}

impl GroqClient {
    /// The JSON text of a completion that follows `schema` (`name` names it to the model),
    /// asked of `model` with `policy`'s retries and no breaker (this is background work: its
    /// failures must not close the way for live calls' replies).
    pub async fn complete_structured(
        &self,
        model: &str,
        messages: &[Message],
        name: &str,
        schema: &Value,
        policy: &RetryPolicy,
    ) -> Result<String, GroqError> {
        let body = ChatRequest {
            model,
            messages,
            stream: false,
            temperature: Some(0.0),
            max_completion_tokens: Some(2000),
            tools: &[],
            response_format: Some(ResponseFormat {
                kind: "json_schema",
                json_schema: Some(JsonSchemaFormat {
                    name: name.to_owned(),
                    schema: schema.clone(),
                    strict: strict_compatible(schema),
                }),
            }),
        };
        let (response, _, mut span) = self.send(&body, policy, None).await?;
        let completion: Completion = response.json().await.map_err(|e| {
            span.fail("response", e.to_string());
            GroqError::Stream(e.to_string())
        })?;
        super::record_usage(&mut span, completion.usage);
        completion
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .ok_or_else(|| GroqError::Stream("the completion has no content".into()))
    }
}

/// The post-call analysis model on Groq.
pub struct GroqAnalysis {
    client: Arc<GroqClient>,
    model: String,
    policy: RetryPolicy,
}

impl GroqAnalysis {
    /// `model` through `client`.
    pub fn new(client: Arc<GroqClient>, model: String) -> GroqAnalysis {
        GroqAnalysis {
            client,
            model,
            policy: RetryPolicy {
                max_attempts: 3,
                base: std::time::Duration::from_secs(1),
                cap: std::time::Duration::from_secs(5),
                attempt_timeout: std::time::Duration::from_secs(60),
                deadline: std::time::Duration::from_secs(150),
                max_retry_after: std::time::Duration::from_secs(30),
            },
        }
    }
}

#[async_trait]
impl StructuredModel for GroqAnalysis {
    fn model(&self) -> &str {
        &self.model
    }

    async fn complete(
        &self,
        messages: &[PromptMessage],
        name: &str,
        schema: &Value,
    ) -> Result<String, ModelError> {
        let messages: Vec<Message> = messages
            .iter()
            .map(|m| Message {
                role: m.role.to_owned(),
                content: Some(m.content.clone()),
                tool_calls: Vec::new(),
                tool_call_id: None,
            })
            .collect();
        self.client
            .complete_structured(&self.model, &messages, name, schema, &self.policy)
            .await
            .map_err(|e| match e {
                GroqError::Rejected(m) => ModelError::Rejected(m),
                GroqError::Unavailable(m) | GroqError::Stream(m) => ModelError::Unavailable(m),
            })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn strict_mode_only_for_schemas_that_allow_it() {
        let strict = json!({"type": "object", "properties": {
            "a": {"type": "string"},
            "b": {"type": "array", "items": {"type": "object", "properties": {"c": {"type": "integer"}},
                  "required": ["c"], "additionalProperties": false}}},
            "required": ["a", "b"], "additionalProperties": false});
        assert!(strict_compatible(&strict));
        let mut loose = strict.clone();
        loose["required"] = json!(["a"]);
        assert!(!strict_compatible(&loose));
        let mut open = strict.clone();
        open["properties"]["b"]["items"]["additionalProperties"] = json!(true);
        assert!(!strict_compatible(&open));
    }
}
