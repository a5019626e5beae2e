//! What the fake answers: turns a validated request plus an optional scripted [`Reply`] (or,
//! for structured outputs, an optional [`StructuredAnswer`]) into a [`Plan`] (content tokens,
//! tool calls, finish reason, usage counts). It decides content only; pacing and wire framing
//! belong to [`super::stream`] and [`super::api`].
//!
//! A structured-output request (`response_format` `json_schema`, section 11) is answered by
//! [`plan_structured`] and nothing else: a scripted [`StructuredAnswer`] verbatim, or else
//! [`instance`], a small JSON value generated from the request's schema that satisfies it.
//!
//! Every other request gets a scripted [`Reply`] (JSON-mode ones excepted) or the default
//! responder, deliberately tiny and predictable so tests can assert on it:
//! 1. `tool_choice: "none"` rules out tools;
//! 2. a [`ToolTrigger`] phrase in the last user message calls its tool, if offered;
//! 3. `tool_choice: "required"` or a named function forces a call (arguments `{}`);
//! 4. JSON mode (`response_format` `json_object`) or a system prompt mentioning "sentiment"
//!    gets `{"score": -1..1, "label": "positive|neutral|negative"}` scored from a small word
//!    list over the last user message;
//! 5. anything else gets `You said: "...". How else can I help?` — two sentences, so a
//!    streaming client can start speaking the first before the second arrives.
//!
//! The generated instance understands `type` (a string, or a list of which the first non-null
//! entry is used), `const`, `enum` (first value), `anyOf`/`oneOf` (first branch), `properties`
//! (every one is present, which satisfies `required` and strict mode alike), `required` names
//! without a property schema (from `additionalProperties` when it is a schema), `items`,
//! `minItems`/`maxItems` (one item unless they say otherwise), `minLength`/`maxLength`
//! (`"example"` padded with `x` or cut), a few string `format`s (`date-time`, `date`, `time`,
//! `email`, `uri`, `uuid`) when their lengths fit, and `minimum`/`maximum`/
//! `exclusiveMinimum`/`exclusiveMaximum` (the lower bound, or 0, or one past an exclusive
//! lower bound, pulled inside the upper bound when needed); booleans are `true`. Other keywords
//! (`pattern`, `multipleOf`, `uniqueItems`, `$ref`, ...) are ignored.

use serde_json::{json, Map, Value};

use super::{
    FakeGroqConfig, Reply, ReplySource, StructuredAnswer, ToolCall, ToolCallChunking, ToolTrigger,
};

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
    let tokens = tokenize(reply.content.as_deref().unwrap_or(""));
    let tool_calls: Vec<PlannedCall> = reply
        .tool_calls
        .into_iter()
        .map(|c| PlannedCall {
            id: new_call_id(),
            name: c.name,
            arguments: c.arguments,
        })
        .collect();
    assemble(source, tokens, tool_calls, chunking, body)
}

/// Plans the answer to a structured-output request (`response_format` `json_schema`, already
/// validated): `scripted` verbatim if given, else an [`instance`] of the request's schema.
/// Either way the content is the only thing in the answer (no tool calls), cut short with
/// `finish_reason` `length` by `max_completion_tokens` like any other.
pub(crate) fn plan_structured(scripted: Option<StructuredAnswer>, body: &Value) -> Plan {
    let (source, content) = match scripted {
        Some(answer) => (ReplySource::Structured, answer.content()),
        None => {
            let schema = body
                .pointer("/response_format/json_schema/schema")
                .unwrap_or(&Value::Null);
            (ReplySource::SchemaInstance, instance(schema).to_string())
        }
    };
    let tokens = tokenize_structured(&content);
    assemble(source, tokens, Vec::new(), ToolCallChunking::Whole, body)
}

/// The finish reason, the `max_completion_tokens` cut and the usage counts of an answer.
fn assemble(
    source: ReplySource,
    mut tokens: Vec<String>,
    mut tool_calls: Vec<PlannedCall>,
    chunking: ToolCallChunking,
    body: &Value,
) -> Plan {
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

/// JSON mode: `response_format` `json_object` (structured outputs never reach the default
/// responder).
fn wants_json(body: &Value) -> bool {
    response_format_type(body) == Some("json_object")
}

/// `response_format.type`, if any.
fn response_format_type(body: &Value) -> Option<&str> {
    body.get("response_format")
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
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

/// Tokens of a structured answer: [`tokenize`]'s words, each also cut after every `,`, so that
/// compact JSON streams member by member rather than in one piece. The concatenation is `text`
/// exactly.
pub(crate) fn tokenize_structured(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    for word in tokenize(text) {
        let mut current = String::new();
        for c in word.chars() {
            current.push(c);
            if c == ',' {
                tokens.push(std::mem::take(&mut current));
            }
        }
        if !current.is_empty() {
            tokens.push(current);
        }
    }
    tokens
}

// ---------------------------------------------------------------------------------------------
// Instances of JSON schemas.

/// A value that satisfies `schema`, for the keywords listed in the module docs. A `false`
/// schema (nothing satisfies it) gets `null`; `true` or a schema that says nothing about the
/// value gets `"example"`.
pub(crate) fn instance(schema: &Value) -> Value {
    let s = match schema {
        Value::Object(s) => s,
        Value::Bool(false) => return Value::Null,
        _ => return json!("example"),
    };
    if let Some(c) = s.get("const") {
        return c.clone();
    }
    if let Some(first) = s
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    let branch = ["anyOf", "oneOf"]
        .iter()
        .find_map(|k| s.get(*k)?.as_array()?.first());
    if let Some(first) = branch {
        return instance(first);
    }
    match schema_type(s) {
        Some("object") => object_instance(s),
        Some("array") => array_instance(s),
        Some("string") => string_instance(s),
        Some("integer") => integer_instance(s),
        Some("number") => number_instance(s),
        Some("boolean") => Value::Bool(true),
        Some("null") => Value::Null,
        _ => json!("example"),
    }
}

/// The type to generate: `type` itself, the first non-null entry of a list of types (or
/// `null` if that is all there is), or failing those a guess from the other keywords.
pub(crate) fn schema_type(s: &Map<String, Value>) -> Option<&str> {
    match s.get("type") {
        Some(Value::String(t)) => return Some(t),
        Some(Value::Array(types)) => {
            let mut names = types.iter().filter_map(Value::as_str);
            return names
                .clone()
                .find(|t| *t != "null")
                .or_else(|| names.next());
        }
        _ => {}
    }
    let has = |keys: &[&str]| keys.iter().any(|k| s.contains_key(*k));
    if has(&["properties", "required", "additionalProperties"]) {
        Some("object")
    } else if has(&["items", "minItems", "maxItems"]) {
        Some("array")
    } else if has(&["minLength", "maxLength", "format"]) {
        Some("string")
    } else if has(&["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"]) {
        Some("number")
    } else {
        None
    }
}

fn object_instance(s: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            out.insert(name.clone(), instance(sub));
        }
    }
    let required = s.get("required").and_then(Value::as_array);
    for name in required.into_iter().flatten().filter_map(Value::as_str) {
        if !out.contains_key(name) {
            let value = match s.get("additionalProperties") {
                Some(extra @ Value::Object(_)) => instance(extra),
                _ => json!("example"),
            };
            out.insert(name.to_owned(), value);
        }
    }
    Value::Object(out)
}

fn array_instance(s: &Map<String, Value>) -> Value {
    let min = s.get("minItems").and_then(Value::as_u64).unwrap_or(0);
    let max = s
        .get("maxItems")
        .and_then(Value::as_u64)
        .unwrap_or(u64::MAX);
    let n = usize::try_from(min.max(1).min(max)).unwrap_or(usize::MAX);
    let item = match s.get("items") {
        Some(items @ (Value::Object(_) | Value::Bool(_))) => instance(items),
        _ => json!("example"),
    };
    Value::Array(vec![item; n])
}

fn string_instance(s: &Map<String, Value>) -> Value {
    let min = s.get("minLength").and_then(Value::as_u64).unwrap_or(0);
    let max = s
        .get("maxLength")
        .and_then(Value::as_u64)
        .unwrap_or(u64::MAX);
    let formatted = match s.get("format").and_then(Value::as_str) {
        Some("date-time") => Some("2024-01-01T00:00:00Z"),
        Some("date") => Some("2024-01-01"),
        Some("time") => Some("00:00:00Z"),
        Some("email") => Some("user@example.com"),
        Some("uri" | "url") => Some("https://example.com/"),
        Some("uuid") => Some("00000000-0000-4000-8000-000000000000"),
        _ => None,
    };
    let fits = |t: &str| (min..=max).contains(&(t.chars().count() as u64));
    if let Some(t) = formatted.filter(|t| fits(t)) {
        return json!(t);
    }
    let mut text = "example".to_owned();
    while (text.chars().count() as u64) < min {
        text.push('x');
    }
    let text: String = text
        .chars()
        .take(usize::try_from(max).unwrap_or(usize::MAX))
        .collect();
    json!(text)
}

/// A bound: its value and whether it is exclusive.
type Bound = (f64, bool);

/// The tightest lower and upper bounds among `minimum`/`exclusiveMinimum` and
/// `maximum`/`exclusiveMaximum` (numbers, or draft-4 booleans qualifying `minimum`/`maximum`).
fn bounds(s: &Map<String, Value>) -> (Option<Bound>, Option<Bound>) {
    let num = |k: &str| s.get(k).and_then(Value::as_f64);
    let flag = |k: &str| s.get(k).and_then(Value::as_bool).unwrap_or(false);
    let mut lower: Vec<Bound> = Vec::new();
    let mut upper: Vec<Bound> = Vec::new();
    if let Some(v) = num("minimum") {
        lower.push((v, flag("exclusiveMinimum")));
    }
    if let Some(v) = num("exclusiveMinimum") {
        lower.push((v, true));
    }
    if let Some(v) = num("maximum") {
        upper.push((v, flag("exclusiveMaximum")));
    }
    if let Some(v) = num("exclusiveMaximum") {
        upper.push((v, true));
    }
    // Larger lower bounds and smaller upper ones are tighter; exclusive beats inclusive.
    let lo = lower
        .into_iter()
        .reduce(|a, b| if (b.0, b.1) > (a.0, a.1) { b } else { a });
    let hi = upper.into_iter().reduce(|a, b| {
        if b.0 < a.0 || (b.0 == a.0 && b.1) {
            b
        } else {
            a
        }
    });
    (lo, hi)
}

fn integer_instance(s: &Map<String, Value>) -> Value {
    let (lo, hi) = bounds(s);
    let lo = lo.map(|(v, ex)| if ex { v.floor() + 1.0 } else { v.ceil() });
    let hi = hi.map(|(v, ex)| if ex { v.ceil() - 1.0 } else { v.floor() });
    let mut n = lo.unwrap_or(0.0);
    if let Some(hi) = hi.filter(|hi| n > *hi) {
        n = hi;
    }
    json!(n as i64)
}

fn number_instance(s: &Map<String, Value>) -> Value {
    let (lo, hi) = bounds(s);
    let mut n = match lo {
        Some((v, false)) => v,
        Some((v, true)) => v + 1.0,
        None => 0.0,
    };
    if let Some((h, exclusive)) = hi {
        if n > h || (exclusive && n >= h) {
            n = match lo {
                Some((l, _)) => (l + h) / 2.0,
                None if exclusive => h - 1.0,
                None => h,
            };
        }
    }
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        json!(n as i64)
    } else {
        json!(n)
    }
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
    // A structured-output schema is part of the prompt too, counted like tools.
    let schema = match response_format_type(body) {
        Some("json_schema") => body
            .pointer("/response_format/json_schema")
            .map(|s| s.to_string().len().div_ceil(4))
            .unwrap_or(0),
        _ => 0,
    };
    u32::try_from(words + tools + schema).unwrap_or(u32::MAX)
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
pub(crate) mod tests {
    use super::*;

    /// Checks `v` against `schema` for the keywords [`instance`] understands; the error names
    /// the first violation by its path. Independent of the generator, so it can judge it.
    pub(crate) fn conforms(schema: &Value, v: &Value, at: &str) -> Result<(), String> {
        let s = match schema {
            Value::Object(s) => s,
            Value::Bool(true) => return Ok(()),
            _ => return Err(format!("{at}: schema {schema} admits nothing")),
        };
        let fail = |what: &str| Err(format!("{at}: {v} {what}"));
        if let Some(c) = s.get("const") {
            if c != v {
                return fail("is not the const");
            }
        }
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            if !e.contains(v) {
                return fail("is not in the enum");
            }
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(branches) = s.get(key).and_then(Value::as_array) {
                if !branches.iter().any(|b| conforms(b, v, at).is_ok()) {
                    return fail("matches no branch");
                }
            }
        }
        let types: Vec<&str> = match s.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(t)) => t.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let is = |t: &str| match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "number" => v.is_number(),
            "integer" => v.as_f64().is_some_and(|n| n.fract() == 0.0),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        };
        if !types.is_empty() && !types.iter().any(|t| is(t)) {
            return fail(&format!("is not of type {types:?}"));
        }
        if let Some(o) = v.as_object() {
            let props = s.get("properties").and_then(Value::as_object);
            for name in s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if !o.contains_key(name.as_str().unwrap_or_default()) {
                    return fail(&format!("lacks required {name}"));
                }
            }
            for (k, sub) in o {
                match props.and_then(|p| p.get(k)) {
                    Some(p) => conforms(p, sub, &format!("{at}.{k}"))?,
                    None => match s.get("additionalProperties") {
                        Some(Value::Bool(false)) => return fail(&format!("has extra '{k}'")),
                        Some(extra @ Value::Object(_)) => {
                            conforms(extra, sub, &format!("{at}.{k}"))?
                        }
                        _ => {}
                    },
                }
            }
        }
        if let Some(a) = v.as_array() {
            let n = a.len() as u64;
            if s.get("minItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| n < m)
                || s.get("maxItems")
                    .and_then(Value::as_u64)
                    .is_some_and(|m| n > m)
            {
                return fail("has the wrong number of items");
            }
            if let Some(items) = s.get("items") {
                for (i, item) in a.iter().enumerate() {
                    conforms(items, item, &format!("{at}.{i}"))?;
                }
            }
        }
        if let Some(text) = v.as_str() {
            let n = text.chars().count() as u64;
            if s.get("minLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| n < m)
                || s.get("maxLength")
                    .and_then(Value::as_u64)
                    .is_some_and(|m| n > m)
            {
                return fail("has the wrong length");
            }
        }
        if let Some(n) = v.as_f64() {
            let num = |k: &str| s.get(k).and_then(Value::as_f64);
            if num("minimum").is_some_and(|m| n < m)
                || num("maximum").is_some_and(|m| n > m)
                || num("exclusiveMinimum").is_some_and(|m| n <= m)
                || num("exclusiveMaximum").is_some_and(|m| n >= m)
            {
                return fail("is out of range");
            }
        }
        Ok(())
    }

    /// A post-call analysis schema exercising every keyword the generator understands.
    pub(crate) fn analysis_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "summary": {"type": "string", "minLength": 12, "maxLength": 200},
                "code": {"type": "string", "maxLength": 3},
                "outcome": {"type": "string", "enum": ["booked", "callback", "lost"]},
                "version": {"const": 2},
                "sentiment": {"type": "number", "minimum": -1, "maximum": 1},
                "confidence": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.5},
                "turns": {"type": "integer", "minimum": 3},
                "rating": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 6},
                "negative": {"type": "integer", "maximum": -4},
                "follow_up": {"type": "boolean"},
                "note": {"type": ["null", "string"]},
                "caller": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "callback_at": {"type": "string", "format": "date-time"},
                    },
                    "required": ["name", "callback_at"],
                    "additionalProperties": false,
                },
                "topics": {
                    "type": "array",
                    "minItems": 2,
                    "maxItems": 4,
                    "items": {
                        "type": "object",
                        "properties": {
                            "label": {"type": "string", "enum": ["billing", "booking"]},
                            "weight": {"type": "number", "minimum": 0.25},
                        },
                        "required": ["label", "weight"],
                        "additionalProperties": false,
                    },
                },
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 0},
            },
            "required": ["summary", "outcome", "turns", "caller", "topics", "extra"],
            "additionalProperties": {"type": "integer", "minimum": 10},
        })
    }

    #[test]
    fn generated_instances_satisfy_their_schemas() {
        let schema = analysis_schema();
        let v = instance(&schema);
        conforms(&schema, &v, "$").unwrap();
        assert_eq!(v["summary"], "examplexxxxx");
        assert_eq!(v["code"], "exa");
        assert_eq!(v["outcome"], "booked");
        assert_eq!(v["version"], 2);
        assert_eq!(v["sentiment"], -1);
        assert_eq!(v["confidence"], 0.25);
        assert_eq!(v["turns"], 3);
        assert_eq!(v["rating"], 1);
        assert_eq!(v["negative"], -4);
        assert_eq!(v["follow_up"], true);
        assert_eq!(v["note"], "example");
        assert_eq!(v["caller"]["callback_at"], "2024-01-01T00:00:00Z");
        assert_eq!(v["topics"].as_array().unwrap().len(), 2);
        assert_eq!(v["topics"][0], json!({"label": "billing", "weight": 0.25}));
        assert_eq!(v["tags"], json!([]));
        assert_eq!(v["extra"], 10);

        // The checker is not a rubber stamp.
        let mut bad = v.clone();
        bad["topics"][1]["label"] = json!("weather");
        let err = conforms(&schema, &bad, "$").unwrap_err();
        assert!(err.starts_with("$.topics.1.label"), "{err}");

        for schema in [
            json!({"type": "string"}),
            json!({"type": ["integer", "null"], "maximum": -1.5}),
            json!({"type": "number", "exclusiveMaximum": 0}),
            json!({"anyOf": [{"type": "integer", "minimum": 7}, {"type": "string"}]}),
            json!({"items": {"type": "boolean"}, "minItems": 3}),
            json!(true),
        ] {
            let v = instance(&schema);
            conforms(&schema, &v, "$").unwrap_or_else(|e| panic!("{schema}: {e}"));
        }
    }

    #[test]
    fn structured_answers_are_planned_verbatim_and_cut_after_commas() {
        let body = json!({"messages": [{"role": "user", "content": "summarise"}],
                          "response_format": {"type": "json_schema", "json_schema": {
                              "name": "a", "schema": {"type": "object"}}}});
        let p = plan_structured(
            Some(StructuredAnswer::Json(json!({"a": 1, "b": [true, "x y"]}))),
            &body,
        );
        assert_eq!(p.source, ReplySource::Structured);
        assert_eq!(p.content().unwrap(), r#"{"a":1,"b":[true,"x y"]}"#);
        assert_eq!(
            p.tokens,
            vec![r#"{"a":1,"#, r#""b":[true,"#, r#""x"#, r#" y"]}"#]
        );
        assert_eq!(p.finish_reason, "stop");
        assert!(p.tool_calls.is_empty());

        let p = plan_structured(Some(StructuredAnswer::Raw("{not json".to_owned())), &body);
        assert_eq!(p.content().unwrap(), "{not json");

        let p = plan_structured(None, &body);
        assert_eq!(p.source, ReplySource::SchemaInstance);
        assert_eq!(p.content().unwrap(), "{}");
        assert!(
            p.prompt_tokens
                > plan(
                    &FakeGroqConfig::default(),
                    None,
                    &json!({
            "messages": [{"role": "user", "content": "summarise"}]})
                )
                .prompt_tokens
        );
    }

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
