//! The engine's chat-model port ([`Llm`]) over [`GroqClient`]: maps the port's context and
//! tools to Groq's wire messages (vendor-protocols.md section 4) and the client's reply events
//! to [`LlmEvent`]s.
//!
//! One small forwarding task per reply sits between the client's channel and the engine's. It
//! must not buffer or reorder anything, and it must notice at once when the engine drops its
//! receiver (barge-in): it then drops the client's receiver, which cancels the HTTP request.

use std::sync::Arc;

use async_trait::async_trait;
use iace_actors::ports::voice::{
    ChatMessage, ChatRole, Llm, LlmEvent, LlmRequest, ToolCall, ToolSpec as PortToolSpec,
    VoiceError,
};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::{
    FunctionCall, GroqClient, GroqError, Message, ReplyEvent, ToolCallOut, ToolSpec, VENDOR,
};

/// Room for a burst of text pieces; the engine drains it as fast as they arrive.
const EVENTS: usize = 64;

/// [`Llm`] served by Groq. Each [`Llm::stream`] is one streamed chat completion; retries and
/// the `groq` breaker apply before the reply starts, as in [`GroqClient::stream_reply`].
#[derive(Clone)]
pub struct GroqLlm(pub Arc<GroqClient>);

#[async_trait]
impl Llm for GroqLlm {
    fn vendor(&self) -> &'static str {
        VENDOR
    }

    async fn stream(&self, request: LlmRequest) -> Result<mpsc::Receiver<LlmEvent>, VoiceError> {
        let messages: Vec<Message> = request.messages.iter().map(wire_message).collect();
        let tools: Vec<ToolSpec> = request.tools.iter().map(wire_tool).collect();
        let replies = self
            .0
            .stream_reply(&messages, &tools)
            .await
            .map_err(voice_error)?;
        let (tx, rx) = mpsc::channel(EVENTS);
        let span = tracing::debug_span!("groq_reply", call_id = %request.call_id);
        tokio::spawn(forward(replies, tx).instrument(span));
        Ok(rx)
    }
}

/// The port's message as Groq's: an assistant turn that only calls tools has no content
/// (`null`, not `""`), and its calls are replayed as `function` tool calls.
fn wire_message(message: &ChatMessage) -> Message {
    let role = match message.role {
        ChatRole::System => "system",
        ChatRole::User => "user",
        ChatRole::Assistant => "assistant",
        ChatRole::Tool => "tool",
    };
    let only_tool_calls = message.role == ChatRole::Assistant
        && message.content.is_empty()
        && !message.tool_calls.is_empty();
    Message {
        role: role.to_owned(),
        content: (!only_tool_calls).then(|| message.content.clone()),
        tool_calls: message
            .tool_calls
            .iter()
            .map(|call| ToolCallOut {
                id: call.id.clone(),
                kind: "function".to_owned(),
                function: FunctionCall {
                    name: call.name.clone(),
                    arguments: call.arguments.clone(),
                },
            })
            .collect(),
        tool_call_id: message.tool_call_id.clone(),
    }
}

fn wire_tool(tool: &PortToolSpec) -> ToolSpec {
    ToolSpec {
        name: tool.name.clone(),
        description: tool.description.clone(),
        parameters: tool.parameters.clone(),
    }
}

/// A reply that could not start.
fn voice_error(error: GroqError) -> VoiceError {
    match error {
        GroqError::Rejected(detail) => VoiceError::Rejected {
            vendor: VENDOR.to_owned(),
            detail,
        },
        GroqError::Unavailable(detail) | GroqError::Stream(detail) => VoiceError::Unavailable {
            vendor: VENDOR.to_owned(),
            detail,
        },
    }
}

/// Passes the reply on until it ends (`Done` or `Failed`, always one of them) or the engine
/// drops its receiver. Returning drops `replies`, which stops the client's reader and closes
/// the HTTP connection.
async fn forward(
    mut replies: mpsc::Receiver<Result<ReplyEvent, GroqError>>,
    tx: mpsc::Sender<LlmEvent>,
) {
    loop {
        // Biased: a cancelled reply must not be read any further, even if more is waiting.
        let next = tokio::select! {
            biased;
            () = tx.closed() => {
                tracing::debug!("reply cancelled by its receiver");
                return;
            }
            next = replies.recv() => next,
        };
        let (event, last) = match next {
            Some(Ok(ReplyEvent::Text(text))) => (LlmEvent::Text { text }, false),
            Some(Ok(ReplyEvent::ToolCall {
                id,
                name,
                arguments,
            })) => (
                LlmEvent::ToolCall {
                    call: ToolCall {
                        id,
                        name,
                        arguments,
                    },
                },
                false,
            ),
            Some(Ok(ReplyEvent::Done { finish_reason })) => {
                (LlmEvent::Done { finish_reason }, true)
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "reply broke off");
                (
                    LlmEvent::Failed {
                        reason: error.to_string(),
                    },
                    true,
                )
            }
            // The client always ends with `Done` or an error; the port promises one of them.
            None => (
                LlmEvent::Failed {
                    reason: "the groq reply ended without completing".to_owned(),
                },
                true,
            ),
        };
        if tx.send(event).await.is_err() || last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn messages_map_to_groq_roles_and_tool_calls() {
        let call = ToolCall {
            id: "call_1".into(),
            name: "lookup_customer".into(),
            arguments: r#"{"phone":"+14155550100"}"#.into(),
        };
        let context = [
            ChatMessage::text(ChatRole::System, "Be brief."),
            ChatMessage::text(ChatRole::User, "Who am I?"),
            ChatMessage {
                role: ChatRole::Assistant,
                content: String::new(),
                tool_calls: vec![call.clone()],
                tool_call_id: None,
            },
            ChatMessage {
                role: ChatRole::Tool,
                content: r#"{"name":"Ada"}"#.into(),
                tool_calls: vec![],
                tool_call_id: Some("call_1".into()),
            },
            ChatMessage {
                role: ChatRole::Assistant,
                content: "Let me check.".into(),
                tool_calls: vec![call],
                tool_call_id: None,
            },
            ChatMessage::text(ChatRole::Assistant, ""),
        ];
        let wire: Vec<_> = context.iter().map(wire_message).collect();
        assert_eq!(
            serde_json::to_value(&wire).unwrap(),
            json!([
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Who am I?"},
                {"role": "assistant", "content": null, "tool_calls": [{
                    "id": "call_1", "type": "function",
                    "function": {"name": "lookup_customer", "arguments": "{\"phone\":\"+14155550100\"}"}
                }]},
                {"role": "tool", "content": "{\"name\":\"Ada\"}", "tool_call_id": "call_1"},
                {"role": "assistant", "content": "Let me check.", "tool_calls": [{
                    "id": "call_1", "type": "function",
                    "function": {"name": "lookup_customer", "arguments": "{\"phone\":\"+14155550100\"}"}
                }]},
                // Without tool calls an empty assistant turn keeps its (empty) content.
                {"role": "assistant", "content": ""},
            ])
        );
    }

    #[test]
    fn start_errors_map_to_voice_errors() {
        assert_eq!(
            voice_error(GroqError::Rejected("HTTP 401: bad key".into())),
            VoiceError::Rejected {
                vendor: "groq".into(),
                detail: "HTTP 401: bad key".into()
            }
        );
        for error in [
            GroqError::Unavailable("breaker open".into()),
            GroqError::Stream("reset".into()),
        ] {
            assert!(matches!(
                voice_error(error),
                VoiceError::Unavailable { vendor, .. } if vendor == "groq"
            ));
        }
    }

    #[tokio::test]
    async fn events_are_forwarded_and_an_error_is_the_last() {
        let (groq_tx, replies) = mpsc::channel(8);
        let (tx, mut rx) = mpsc::channel(8);
        let task = tokio::spawn(forward(replies, tx));
        groq_tx
            .send(Ok(ReplyEvent::Text("Hello".into())))
            .await
            .unwrap();
        groq_tx
            .send(Err(GroqError::Stream("reset".into())))
            .await
            .unwrap();
        // Anything after the error is not passed on.
        let _ = groq_tx.send(Ok(ReplyEvent::Text("late".into()))).await;
        assert_eq!(
            rx.recv().await,
            Some(LlmEvent::Text {
                text: "Hello".into()
            })
        );
        assert!(
            matches!(rx.recv().await, Some(LlmEvent::Failed { reason }) if reason.contains("reset"))
        );
        assert_eq!(rx.recv().await, None);
        task.await.unwrap();
        // The reader was let go: the client's side sees its channel closed.
        assert!(groq_tx.is_closed());
    }

    #[tokio::test]
    async fn a_reply_that_ends_without_done_fails() {
        let (groq_tx, replies) = mpsc::channel(8);
        let (tx, mut rx) = mpsc::channel(8);
        let task = tokio::spawn(forward(replies, tx));
        drop(groq_tx);
        assert!(matches!(rx.recv().await, Some(LlmEvent::Failed { .. })));
        assert_eq!(rx.recv().await, None);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn dropping_the_receiver_lets_go_of_the_reply() {
        let (groq_tx, replies) = mpsc::channel(8);
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(forward(replies, tx));
        // Nothing is arriving from Groq (a stall): the drop alone must end the task.
        drop(rx);
        tokio::time::timeout(std::time::Duration::from_secs(1), task)
            .await
            .expect("the forwarding task ends")
            .unwrap();
        assert!(groq_tx.is_closed());
    }
}
