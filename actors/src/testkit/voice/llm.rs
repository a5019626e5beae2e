//! A scripted chat model: [`ScriptedLlm`] answers with queued [`LlmReply`]s.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::shared::{lock, STREAM_CAPACITY};
use crate::ports::voice::{Llm, LlmEvent, LlmRequest, ToolCall, VoiceError};

/// One scripted reply of [`ScriptedLlm`].
#[derive(Debug, Clone, PartialEq)]
pub struct LlmReply {
    /// `Some`: `stream` fails with `Unavailable` and this reason (the request cannot start).
    pub unavailable: Option<String>,
    /// The events, in order.
    pub events: Vec<LlmEvent>,
    /// Delay of the first event after the request.
    pub first_token: Duration,
    /// Delay between consecutive events.
    pub between: Duration,
}

impl LlmReply {
    /// Delay of the first event by default.
    pub const FIRST_TOKEN: Duration = Duration::from_millis(200);
    /// Delay between events by default.
    pub const BETWEEN: Duration = Duration::from_millis(20);

    /// These events, with the default delays.
    pub fn events(events: Vec<LlmEvent>) -> Self {
        LlmReply {
            unavailable: None,
            events,
            first_token: Self::FIRST_TOKEN,
            between: Self::BETWEEN,
        }
    }

    /// `text` streamed word by word (each delta a word with its trailing space), then
    /// `Done { finish_reason: "stop" }`.
    pub fn text(text: &str) -> Self {
        Self::deltas(&text.split_inclusive(' ').collect::<Vec<_>>())
    }

    /// These text deltas, then `Done { finish_reason: "stop" }`.
    pub fn deltas(deltas: &[&str]) -> Self {
        let mut events: Vec<LlmEvent> = deltas
            .iter()
            .map(|d| LlmEvent::Text {
                text: (*d).to_owned(),
            })
            .collect();
        events.push(LlmEvent::Done {
            finish_reason: "stop".into(),
        });
        Self::events(events)
    }

    /// One tool call, then `Done { finish_reason: "tool_calls" }`.
    pub fn tool_call(id: &str, name: &str, arguments: &str) -> Self {
        Self::events(vec![
            LlmEvent::ToolCall {
                call: ToolCall {
                    id: id.into(),
                    name: name.into(),
                    arguments: arguments.into(),
                },
            },
            LlmEvent::Done {
                finish_reason: "tool_calls".into(),
            },
        ])
    }

    /// `text` streamed word by word, then `Failed` (the stream broke).
    pub fn failing(text: &str, reason: &str) -> Self {
        let mut reply = Self::text(text);
        reply.events.pop();
        reply.events.push(LlmEvent::Failed {
            reason: reason.into(),
        });
        reply
    }

    /// The request cannot start: `stream` answers `Unavailable` with `reason`.
    pub fn unavailable(reason: &str) -> Self {
        LlmReply {
            unavailable: Some(reason.into()),
            ..Self::events(Vec::new())
        }
    }

    /// The same reply with other delays.
    pub fn paced(mut self, first_token: Duration, between: Duration) -> Self {
        self.first_token = first_token;
        self.between = between;
        self
    }
}

#[derive(Default)]
struct LlmState {
    replies: VecDeque<LlmReply>,
    fallback: Option<LlmReply>,
    requests: Vec<LlmRequest>,
    cancelled: Vec<usize>,
    completed: Vec<usize>,
}

/// A chat model that answers requests, in order, with the replies queued by
/// [`ScriptedLlm::reply`] (then with the fallback reply, `"Okay."` unless set), and records
/// every request. A reply whose receiver is dropped stops at once and counts as cancelled.
#[derive(Default)]
pub struct ScriptedLlm {
    inner: Arc<Mutex<LlmState>>,
}

impl ScriptedLlm {
    /// The vendor name.
    pub const VENDOR: &'static str = "scripted-llm";

    /// A model that answers `"Okay."` until replies are queued.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues the answer to a coming request.
    pub fn reply(&self, reply: LlmReply) {
        lock(&self.inner).replies.push_back(reply);
    }

    /// The answer once the queue is empty.
    pub fn set_fallback(&self, reply: LlmReply) {
        lock(&self.inner).fallback = Some(reply);
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<LlmRequest> {
        lock(&self.inner).requests.clone()
    }

    /// Indexes (into [`ScriptedLlm::requests`]) of the replies dropped by their receiver before
    /// their last event.
    pub fn cancelled(&self) -> Vec<usize> {
        lock(&self.inner).cancelled.clone()
    }

    /// Indexes of the replies whose every event was delivered.
    pub fn completed(&self) -> Vec<usize> {
        lock(&self.inner).completed.clone()
    }
}

#[async_trait]
impl Llm for ScriptedLlm {
    fn vendor(&self) -> &'static str {
        Self::VENDOR
    }

    async fn stream(&self, request: LlmRequest) -> Result<mpsc::Receiver<LlmEvent>, VoiceError> {
        let (index, reply) = {
            let mut s = lock(&self.inner);
            s.requests.push(request);
            let reply = match s.replies.pop_front() {
                Some(r) => r,
                None => s
                    .fallback
                    .clone()
                    .unwrap_or_else(|| LlmReply::text("Okay.")),
            };
            (s.requests.len() - 1, reply)
        };
        if let Some(detail) = reply.unavailable {
            return Err(VoiceError::Unavailable {
                vendor: Self::VENDOR.into(),
                detail,
            });
        }
        let (tx, rx) = mpsc::channel(STREAM_CAPACITY);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            for (i, event) in reply.events.into_iter().enumerate() {
                let delay = if i == 0 {
                    reply.first_token
                } else {
                    reply.between
                };
                let cancelled = tokio::select! {
                    biased;
                    () = tx.closed() => true,
                    () = tokio::time::sleep(delay) => tx.send(event).await.is_err(),
                };
                if cancelled {
                    lock(&inner).cancelled.push(index);
                    return;
                }
            }
            lock(&inner).completed.push(index);
        });
        Ok(rx)
    }
}
