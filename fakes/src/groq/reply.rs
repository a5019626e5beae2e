//! What the fake answers: turns a validated request plus an optional scripted [`Reply`] into a
//! [`Plan`] (content tokens, tool calls, finish reason, usage counts). It decides content only;
//! pacing and wire framing belong to [`super::stream`] and [`super::api`].
//!
//! The default responder is deliberately tiny and predictable, so tests can assert on it:
//! 1. `tool_choice: "none"` rules out tools;
//! 2. a [`ToolTrigger`] phrase in the last user message calls its tool, if offered;
//! 3. `tool_choice: "required"` or a named function forces a call (arguments `{}`);
//! 4. JSON mode (`response_format` `json_object`/`json_schema`) or a system prompt mentioning
//!    "sentiment" gets `{"score": -1..1, "label": "positive|neutral|negative"}` scored from a
//!    small word list over the last user message;
//! 5. anything else gets `You said: "...". How else can I help?` — two sentences, so a
//!    streaming client can start speaking the first before the second arrives.

use serde_json::{json, Value};

use super::{FakeGroqConfig, Reply, ReplySource, ToolCall, ToolCallChunking, ToolTrigger};

/// An answer, ready to be paced out or put into one body.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) source: ReplySource,
    /// Content tokens; their concatenation is the content exactly.
    pub(crate) tokens: Vec<String>,
    pub(crate) tool_calls: Vec<PlannedCall>,
    pub(crate) chunking: ToolCallChunking,
    pub(crate) finish_reason: &'static str,
    pub(crate) prompt_tokens: u32,
    pub(crate) completion_tokens: u32,
}

impl Plan {
    /// The whole content, `None` when there is none (OpenAI sends `content: null` then).
    pub(crate) fn content(&self) -> Option<String> {
        (!self.tokens.is_empty()).then(|| self.tokens.concat())
    }

    /// How many deltas follow the first content token when streamed; a non-streaming answer
    /// waits as long as the stream would have taken.
    pub(crate) fn later_deltas(&self) -> u32 {
        let calls: usize = self
            .tool_calls
            .iter()
            .map(|c| fragments(&c.arguments, self.chunking).len() + 1)
            .sum();
        u32::try_from(self.tokens.len() + calls)
            .unwrap_or(u32::MAX)
            .saturating_sub(1)
    }
}

/// A tool call with its id assigned.
#[derive(Debug, Clone)]
pub(crate) struct PlannedCall {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) arguments: String,
}

/// Plans the answer to `body` (already validated): `scripted` if given, else the default
/// responder.
pub(crate) fn plan(cfg: &FakeGroqConfig, scripted: Option<Reply>, body: &Value) -> Plan {
    let (source, reply) = match scripted {
        Some(r) => (ReplySource::Scripted, r),
        None => default_reply(cfg, body),
    };
    let chunking = reply.chunking.unwrap_or(cfg.tool_call_chunking);
    let mut tokens = tokenize(reply.content.as_deref().unwrap_or(""));
    let mut tool_calls: Vec<PlannedCall> = reply
        .tool_calls
        .into_iter()
        .map(|c| PlannedCall {
            id: new_call_id(),
            name: c.name,
            arguments: c.arguments,
        })
        .collect();
    let mut finish_reason = if tool_calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    if let Some(max) = max_tokens(body) {
        let call_tokens: usize = tool_calls.iter().map(call_tokens).sum();
        if tokens.len() + call_tokens > max {
            // A model cut off by the limit never gets to its tool calls.
            tokens.truncate(max);
            tool_calls.clear();
            finish_reason = "length";
        }
    }
    let completion = tokens.len() + tool_calls.iter().map(call_tokens).sum::<usize>();
    Plan {
        source,
        tokens,
        tool_calls,
        chunking,
        finish_reason,
        prompt_tokens: prompt_tokens(body),
        completion_tokens: u32::try_from(completion).unwrap_or(u32::MAX),
    }
}

fn default_reply(cfg: &FakeGroqConfig, body: &Value) -> (ReplySource, Reply) {
    let last_user = last_user_text(body);
    let lowered = last_user.to_lowercase();
    let offered = offered_tools(body);
    let choice = body.get("tool_choice");
    let tools_allowed = !offered.is_empty() && choice.and_then(Value::as_str) != Some("none");
    if tools_allowed {
        let triggered: Option<&ToolTrigger> = cfg
            .tool_triggers
            .iter()
            .find(|t| lowered.contains(&t.phrase) && offered.contains(&t.tool));
        if let Some(t) = triggered {
            return (
                ReplySource::ToolTrigger,
                Reply {
                    tool_calls: vec![ToolCall::new(&t.tool, &t.arguments)],
                    ..Reply::default()
                },
            );
        }
        let forced = match choice {
            Some(Value::String(s)) if s == "required" => offered.first().cloned(),
            Some(Value::Object(o)) => o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            _ => None,
        };
        if let Some(name) = forced {
            return (ReplySource::ForcedTool, Reply::tool_call(&name, &json!({})));
        }
    }
    if wants_json(body) || system_mentions_sentiment(body) {
        let (score, label) = sentiment(&last_user);
        let text = json!({"score": score, "label": label}).to_string();
        return (ReplySource::Sentiment, Reply::text(&text));
    }
    (ReplySource::Echo, Reply::text(&echo(&last_user)))
}

/// Text of the last `user` message: a string `content`, or the `text` parts of an array.
pub(crate) fn last_user_text(body: &Value) -> String {
    messages(body)
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| content_text(m.get("content")))
        .unwrap_or_default()
}

fn messages(body: &Value) -> &[Value] {
    body.get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// Function names of the request's `tools`.
fn offered_tools(body: &Value) -> Vec<String> {
    body.get("tools")
        .and_then(Value::as_array)
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| t.get("function")?.get("name")?.as_str())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn wants_json(body: &Value) -> bool {
    matches!(
        body.get("response_format")
            .and_then(|f| f.get("type"))
            .and_then(Value::as_str),
        Some("json_object" | "json_schema")
    )
}

fn system_mentions_sentiment(body: &Value) -> bool {
    messages(body).iter().any(|m| {
        matches!(
            m.get("role").and_then(Value::as_str),
            Some("system" | "developer")
        ) && content_text(m.get("content"))
            .to_lowercase()
            .contains("sentiment")
    })
}

const POSITIVE: &[&str] = &[
    "good",
    "great",
    "love",
    "happy",
    "glad",
    "thanks",
    "thank",
    "excellent",
    "awesome",
    "wonderful",
    "perfect",
    "pleased",
    "amazing",
    "nice",
    "helpful",
    "fantastic",
];

const NEGATIVE: &[&str] = &[
    "bad",
    "terrible",
    "awful",
    "hate",
    "angry",
    "furious",
    "worst",
    "horrible",
    "useless",
    "ridiculous",
    "annoyed",
    "annoying",
    "frustrated",
    "upset",
    "disappointed",
    "unacceptable",
    "stupid",
    "sick",
    "never",
    "wrong",
    "broken",
];

/// `(score, label)`: `(positive - negative) / (positive + negative + 1)` over the word lists,
/// rounded to 2 decimals; below -0.2 is negative, above 0.2 positive.
pub(crate) fn sentiment(text: &str) -> (f64, &'static str) {
    let (mut pos, mut neg) = (0u32, 0u32);
    for word in text
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .map(str::to_lowercase)
    {
        if POSITIVE.contains(&word.as_str()) {
            pos += 1;
        } else if NEGATIVE.contains(&word.as_str()) {
            neg += 1;
        }
    }
    let raw = (f64::from(pos) - f64::from(neg)) / (f64::from(pos + neg) + 1.0);
    let score = (raw * 100.0).round() / 100.0;
    let label = if score < -0.2 {
        "negative"
    } else if score > 0.2 {
        "positive"
    } else {
        "neutral"
    };
    (score, label)
}

/// The polite echo; long messages are cut to 24 words so the reply stays speakable.
fn echo(last_user: &str) -> String {
    let words: Vec<&str> = last_user.split_whitespace().collect();
    if words.is_empty() {
        return "Hello! How can I help you today?".to_owned();
    }
    let quoted = if words.len() > 24 {
        format!("{}...", words[..24].join(" "))
    } else {
        words.join(" ")
    };
    format!("You said: \"{quoted}\". How else can I help?")
}

/// Words with their leading whitespace (`"Hello"`, `" world."`), the way BPE tokens carry a
/// leading space; the concatenation is `text` exactly.
pub(crate) fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    for c in text.chars() {
        if c.is_whitespace() && in_word {
            tokens.push(std::mem::take(&mut current));
            in_word = false;
        } else if !c.is_whitespace() {
            in_word = true;
        }
        current.push(c);
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
}

/// `arguments` cut into the pieces streamed after a call's first delta: none for
/// [`ToolCallChunking::Whole`] (the first delta carries everything), otherwise up to
/// `fragments` pieces of near-equal length, on char boundaries.
pub(crate) fn fragments(arguments: &str, chunking: ToolCallChunking) -> Vec<String> {
    let ToolCallChunking::Split { fragments } = chunking else {
        return Vec::new();
    };
    let chars: Vec<char> = arguments.chars().collect();
    if chars.is_empty() {
        return Vec::new();
    }
    let size = chars.len().div_ceil(fragments.max(1));
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// Rough completion tokens of a call: a token per 4 chars of name and arguments.
fn call_tokens(c: &PlannedCall) -> usize {
    (c.name.len() + c.arguments.len()).div_ceil(4).max(1)
}

/// Rough prompt size: words of every message plus 4 per message for the chat template, plus a
/// token per 4 chars of tool definitions.
fn prompt_tokens(body: &Value) -> u32 {
    let words: usize = messages(body)
        .iter()
        .map(|m| content_text(m.get("content")).split_whitespace().count() + 4)
        .sum();
    let tools = body
        .get("tools")
        .map(|t| t.to_string().len().div_ceil(4))
        .unwrap_or(0);
    u32::try_from(words + tools).unwrap_or(u32::MAX)
}

/// `max_completion_tokens`, or the legacy `max_tokens`.
fn max_tokens(body: &Value) -> Option<usize> {
    body.get("max_completion_tokens")
        .and_then(Value::as_u64)
        .or_else(|| body.get("max_tokens").and_then(Value::as_u64))
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

fn new_call_id() -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("call_{}", &hex[..24])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_concatenate_to_the_text() {
        let text = "  Hello there,\n world!  ";
        let t = tokenize(text);
        assert_eq!(t, vec!["  Hello", " there,", "\n world!", "  "]);
        assert_eq!(t.concat(), text);
        assert!(tokenize("").is_empty());
    }

    #[test]
    fn sentiment_scores_words() {
        assert_eq!(
            sentiment("This is terrible, I am furious!"),
            (-0.67, "negative")
        );
        assert_eq!(sentiment("Thanks, that was great"), (0.67, "positive"));
        assert_eq!(sentiment("What time is it?"), (0.0, "neutral"));
    }

    #[test]
    fn split_fragments_cover_the_arguments() {
        let args = r#"{"phone":"+1555"}"#;
        let f = fragments(args, ToolCallChunking::Split { fragments: 4 });
        assert_eq!(f.len(), 4);
        assert_eq!(f.concat(), args);
        assert!(fragments(args, ToolCallChunking::Whole).is_empty());
        assert_eq!(
            fragments("{}", ToolCallChunking::Split { fragments: 5 }).len(),
            2
        );
    }

    #[test]
    fn default_responder_follows_its_rules() {
        let cfg = FakeGroqConfig::default();
        let tools = json!([{"type": "function", "function": {"name": "transfer_to_human"}}]);
        let body = json!({"messages": [{"role": "user", "content": "Get me a HUMAN now"}],
                          "tools": tools});
        let p = plan(&cfg, None, &body);
        assert_eq!(p.source, ReplySource::ToolTrigger);
        assert_eq!(p.tool_calls[0].name, "transfer_to_human");
        assert_eq!(p.finish_reason, "tool_calls");

        let body = json!({"messages": [{"role": "user", "content": "Get me a human"}],
                          "tools": tools, "tool_choice": "none"});
        assert_eq!(plan(&cfg, None, &body).source, ReplySource::Echo);

        let body = json!({"messages": [{"role": "user", "content": "hi there"}],
                          "max_completion_tokens": 2});
        let p = plan(&cfg, None, &body);
        assert_eq!(p.tokens.len(), 2);
        assert_eq!(p.finish_reason, "length");
    }
}
