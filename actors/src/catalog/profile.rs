//! How an agent converses, read from its `persona_config` and `voice_config` JSON objects.
//!
//! Both objects are free-form (tenants keep their own keys there too); the keys below are the
//! ones the voice pipeline reads. A known key with the wrong type or an out-of-range value is
//! refused when the agent is created or updated ([`VoiceProfile::from_configs`]), so a call
//! never discovers a broken persona mid-conversation. Every key has a default.
//!
//! `persona_config`:
//! ```json
//! {"system_prompt": "You are Ava from Acme ...", "greeting": "Hi, this is Ava from Acme.",
//!  "human_number": "+14155550100", "on_vendor_failure": "transfer", "voicemail": "leave_message",
//!  "voicemail_message": "...", "escalation": {"sentiment_floor": -0.6, "floor_turns": 2,
//!  "keywords": ["cancel my account"], "on_request": true},
//!  "frustration": {"threshold": -0.3, "trend_drop": 0.5, "window": 3},
//!  "turn_taking": {"holdoff_ms": 250, "long_holdoff_ms": 1200, "min_barge_in_words": 2,
//!  "min_barge_in_ms": 500, "false_interruption_ms": 1500, "speculate": true,
//!  "max_speculations": 2},
//!  "silence": {"reprompt_after_ms": 7000, "hangup_after_ms": 20000}, "filler_after_ms": 800,
//!  "hold": "Sorry, one moment please.", "reply_wait_ms": 35000, "amd_wait_ms": 3500,
//!  "tools": ["end_call", "transfer_to_human", "lookup_customer"],
//!  "http_tools": [{"name": "book_table", "description": "Books a table.",
//!   "parameters": {"type": "object", "properties": {"time": {"type": "string"}},
//!                  "required": ["time"]},
//!   "url": "https://api.example.com/iace/book", "method": "POST",
//!   "headers": {"X-Api-Version": "2"}, "secret_headers": {"Authorization": "Bearer ..."},
//!   "signing_secret": "whsec_...", "timeout_ms": 5000, "filler": "Let me book that."}],
//!  "analysis": {"summary": "Two sentences: the reason and the outcome.",
//!   "schema": {"type": "object", "properties": {"order_id": {"type": "string"}}},
//!   "success_rubric": "The order was found and the caller told when it ships."}}
//! ```
//! `voice_config`: `{"voice_id": "...", "model_id": "sonic-3", "language": "en", "speed": 1.0,
//! "text_chunking": "clause"}`.

use serde::{Deserialize, Serialize};

use super::field::FieldError;
use crate::machine::PhoneNumber;

/// Tools an agent may offer the model.
pub const TOOLS: [&str; 3] = ["end_call", "transfer_to_human", "lookup_customer"];

/// What stands in for a secret value when an agent is shown: secrets are write-only. An update
/// that sends it back keeps the stored value.
pub const SECRET_MASK: &str = "********";

/// Custom tools an agent may have at most.
pub const MAX_HTTP_TOOLS: usize = 16;

/// Headers a tool's definition may not set (the request's own framing and signature).
const RESERVED_HEADERS: [&str; 8] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// The HTTP method of a tool's request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ToolMethod {
    /// `POST` (the default).
    #[default]
    Post,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
}

impl ToolMethod {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
        }
    }
}

/// A tool the agent calls on the customer's systems: the model's arguments are checked against
/// `parameters` and posted, signed with `signing_secret` (Standard Webhooks), to `url`; the
/// JSON answer goes back to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTool {
    /// What the model calls it (`[A-Za-z0-9_-]{1,64}`, not a built-in tool's name).
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of the arguments (an object; the supported keywords are in
    /// [`schema`](super::schema)).
    #[serde(default = "object_schema")]
    pub parameters: serde_json::Value,
    /// Where the request goes (http or https; the server's SSRF guard judges the address).
    pub url: String,
    /// `POST`, `PUT` or `PATCH`.
    #[serde(default)]
    pub method: ToolMethod,
    /// Headers sent as they are, shown as they are.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Headers whose values are secret (`Authorization`): write-only, shown as
    /// [`SECRET_MASK`].
    #[serde(default)]
    pub secret_headers: std::collections::BTreeMap<String, String>,
    /// The `whsec_...` secret the request is signed with: write-only.
    pub signing_secret: String,
    /// Longest wait for the answer (100..=30000 ms).
    #[serde(default = "tool_timeout_ms")]
    pub timeout_ms: u64,
    /// Said when the tool takes longer than `filler_after_ms` (else the persona's `filler`).
    #[serde(default)]
    pub filler: Option<String>,
}

fn object_schema() -> serde_json::Value {
    serde_json::json!({"type": "object", "properties": {}})
}

fn tool_timeout_ms() -> u64 {
    5000
}

impl HttpTool {
    fn check(&self) -> Result<(), String> {
        let n = &self.name;
        if n.is_empty()
            || n.len() > 64
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!("tool name `{n}` must be 1-64 of A-Z a-z 0-9 _ -"));
        }
        if TOOLS.contains(&n.as_str()) {
            return Err(format!("`{n}` is a built-in tool's name"));
        }
        let d = self.description.trim();
        if d.is_empty() || d.chars().count() > 1024 {
            return Err(format!("{n}.description must be 1-1024 characters"));
        }
        super::schema::check(&self.parameters).map_err(|e| format!("{n}.parameters: {e}"))?;
        if self.parameters.get("type").and_then(|t| t.as_str()) != Some("object") {
            return Err(format!("{n}.parameters must have \"type\": \"object\""));
        }
        if !(self.url.starts_with("https://") || self.url.starts_with("http://"))
            || self.url.len() > 2048
        {
            return Err(format!("{n}.url must be an http or https URL"));
        }
        for (name, value) in self.headers.iter().chain(&self.secret_headers) {
            let lower = name.to_ascii_lowercase();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
            {
                return Err(format!("{n}: `{name}` is not a header name"));
            }
            if RESERVED_HEADERS.contains(&lower.as_str()) {
                return Err(format!("{n}: the header `{name}` is set by the server"));
            }
            if value.chars().any(|c| c.is_control()) || value.len() > 4096 {
                return Err(format!("{n}: the value of `{name}` is not a header value"));
            }
        }
        if !self.signing_secret.starts_with("whsec_") || self.signing_secret.len() < 30 {
            return Err(format!(
                "{n}.signing_secret must be a Standard Webhooks secret (whsec_ and the base64 of 24-64 random bytes)"
            ));
        }
        if !(100..=30_000).contains(&self.timeout_ms) {
            return Err(format!("{n}.timeout_ms must be 100..=30000"));
        }
        if self
            .filler
            .as_ref()
            .is_some_and(|f| f.trim().is_empty() || f.chars().count() > 500)
        {
            return Err(format!("{n}.filler must be 1-500 characters"));
        }
        Ok(())
    }
}

/// `persona_config` as an agent is shown: every secret of its tools masked.
pub fn redact_secrets(persona: &mut serde_json::Value) {
    let Some(tools) = persona.get_mut("http_tools").and_then(|t| t.as_array_mut()) else {
        return;
    };
    for tool in tools.iter_mut().filter_map(|t| t.as_object_mut()) {
        if tool.contains_key("signing_secret") {
            tool.insert("signing_secret".into(), SECRET_MASK.into());
        }
        if let Some(headers) = tool
            .get_mut("secret_headers")
            .and_then(|h| h.as_object_mut())
        {
            for value in headers.values_mut() {
                *value = SECRET_MASK.into();
            }
        }
    }
}

/// Puts back, in a `persona_config` sent to update an agent, the stored secrets it sends as
/// [`SECRET_MASK`] (the same tool by name, the same header by name). A mask with nothing
/// stored behind it is an error.
pub fn restore_secrets(
    persona: &mut serde_json::Value,
    stored: &serde_json::Value,
) -> Result<(), FieldError> {
    let Some(tools) = persona.get_mut("http_tools").and_then(|t| t.as_array_mut()) else {
        return Ok(());
    };
    let stored_tool = |name: &str| {
        stored
            .get("http_tools")
            .and_then(|t| t.as_array())
            .and_then(|ts| {
                ts.iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(name))
            })
    };
    for tool in tools.iter_mut().filter_map(|t| t.as_object_mut()) {
        let name = tool
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_owned();
        let old = stored_tool(&name);
        let missing = |what: &str| {
            FieldError::new(
                "persona_config",
                format!("{name}.{what} has no stored value to keep; send the value"),
            )
        };
        if tool.get("signing_secret").and_then(|s| s.as_str()) == Some(SECRET_MASK) {
            let kept = old
                .and_then(|o| o.get("signing_secret"))
                .cloned()
                .ok_or_else(|| missing("signing_secret"))?;
            tool.insert("signing_secret".into(), kept);
        }
        if let Some(headers) = tool
            .get_mut("secret_headers")
            .and_then(|h| h.as_object_mut())
        {
            for (header, value) in headers.iter_mut() {
                if value.as_str() == Some(SECRET_MASK) {
                    *value = old
                        .and_then(|o| o.get("secret_headers"))
                        .and_then(|h| h.get(header))
                        .cloned()
                        .ok_or_else(|| missing(&format!("secret_headers.{header}")))?;
                }
            }
        }
    }
    Ok(())
}

/// What the post-call analysis asks of the model about each answered call of the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalysisConfig {
    /// How to summarise the call.
    #[serde(default = "summary_instruction")]
    pub summary: String,
    /// JSON Schema of the structured data to extract (an object; the supported keywords are
    /// in [`schema`](super::schema)).
    #[serde(default = "object_schema")]
    pub schema: serde_json::Value,
    /// What makes the call a success.
    #[serde(default = "success_rubric")]
    pub success_rubric: String,
}

fn summary_instruction() -> String {
    "Summarise the call in two or three sentences: why the caller called, what was done, what is left to do.".into()
}

fn success_rubric() -> String {
    "The call is a success when the caller's request was resolved or the agreed next step was taken.".into()
}

impl AnalysisConfig {
    fn check(&self) -> Result<(), String> {
        for (name, text) in [
            ("summary", &self.summary),
            ("success_rubric", &self.success_rubric),
        ] {
            if text.trim().is_empty() || text.chars().count() > 4000 {
                return Err(format!("analysis.{name} must be 1-4000 characters"));
            }
        }
        super::schema::check(&self.schema).map_err(|e| format!("analysis.schema: {e}"))?;
        if self.schema.get("type").and_then(|t| t.as_str()) != Some("object") {
            return Err("analysis.schema must have \"type\": \"object\"".into());
        }
        Ok(())
    }
}

/// What the agent does when an answering machine picks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoicemailAction {
    /// Wait for the machine's greeting to end, speak `voicemail_message`, hang up.
    LeaveMessage,
    /// Hang up at once.
    HangUp,
}

impl VoicemailAction {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LeaveMessage => "leave_message",
            Self::HangUp => "hang_up",
        }
    }
}

/// What the agent does when a voice vendor fails for good during a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VendorFailureAction {
    /// Apologise and transfer to `human_number` (ends the call when there is none).
    Transfer,
    /// Apologise and end the call.
    End,
}

/// Escalation triggers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Escalation {
    /// Transfer when the caller's sentiment stays below this...
    pub sentiment_floor: f64,
    /// ...for this many consecutive turns (0 disables).
    pub floor_turns: u32,
    /// Phrases that transfer at once (case-insensitive substring match).
    pub keywords: Vec<String>,
    /// Transfer when the caller asks for a person ("a human", "real person", "representative").
    pub on_request: bool,
}

impl Default for Escalation {
    fn default() -> Self {
        Escalation {
            sentiment_floor: -0.6,
            floor_turns: 2,
            keywords: Vec::new(),
            on_request: true,
        }
    }
}

/// When the agent softens its tone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Frustration {
    /// A turn scored at or below this makes the agent empathetic.
    pub threshold: f64,
    /// So does a fall of at least this much across the last `window` turns.
    pub trend_drop: f64,
    /// Turns the trend looks at (>= 2).
    pub window: usize,
}

impl Default for Frustration {
    fn default() -> Self {
        Frustration {
            threshold: -0.3,
            trend_drop: 0.5,
            window: 3,
        }
    }
}

/// Turn-taking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TurnTaking {
    /// After the recogniser's end of utterance, wait this long for more speech.
    pub holdoff_ms: u64,
    /// ...or this long when the words so far look unfinished (a dictated number, a trailing
    /// "and", "um", "my number is").
    pub long_holdoff_ms: u64,
    /// Caller words (not counting backchannels like "uh-huh", "okay") that stop the agent.
    pub min_barge_in_words: usize,
    /// Caller speech this long, with at least one word, that stops the agent.
    pub min_barge_in_ms: u64,
    /// After stopping for the caller, if nothing but noise or a backchannel comes within this
    /// long, the agent resumes what it was saying.
    pub false_interruption_ms: u64,
    /// Start the reply when the recogniser reports the end of an utterance, during the
    /// hold-off: the model and the synthesiser work while the agent waits, the audio is held
    /// until the hold-off passes, and it is thrown away if the caller goes on.
    pub speculate: bool,
    /// Speculative replies started per caller turn at most (a caller who pauses and goes on
    /// several times costs at most this many discarded requests).
    pub max_speculations: u32,
}

impl Default for TurnTaking {
    fn default() -> Self {
        TurnTaking {
            holdoff_ms: 250,
            long_holdoff_ms: 1200,
            min_barge_in_words: 2,
            min_barge_in_ms: 500,
            false_interruption_ms: 1500,
            speculate: true,
            max_speculations: 2,
        }
    }
}

/// Silence handling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Silence {
    /// Reprompt after the caller has been silent this long.
    pub reprompt_after_ms: u64,
    /// Say goodbye and hang up after this long of silence.
    pub hangup_after_ms: u64,
}

impl Default for Silence {
    fn default() -> Self {
        Silence {
            reprompt_after_ms: 7000,
            hangup_after_ms: 20000,
        }
    }
}

/// The persona part (`persona_config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Persona {
    /// Instructions for the model.
    pub system_prompt: String,
    /// First words on answer.
    pub greeting: String,
    /// Said before hanging up (silence, end_call without words).
    pub goodbye: String,
    /// Said when the caller has been silent.
    pub reprompt: String,
    /// Said when a vendor fails for good (before `on_vendor_failure` applies).
    pub apology: String,
    /// Said when the model cannot answer a turn at once (its breaker is open, it failed
    /// before its first words): the agent retries while the caller holds.
    pub hold: String,
    /// Said before a transfer.
    pub handoff: String,
    /// Said when a tool takes long.
    pub filler: String,
    /// Left on an answering machine.
    pub voicemail_message: String,
    /// Where escalations go.
    pub human_number: Option<String>,
    /// On a vendor failure.
    pub on_vendor_failure: Option<VendorFailureAction>,
    /// On an answering machine.
    pub voicemail: VoicemailAction,
    /// Escalation triggers.
    pub escalation: Escalation,
    /// Tone adaptation.
    pub frustration: Frustration,
    /// Turn-taking.
    pub turn_taking: TurnTaking,
    /// Silence handling.
    pub silence: Silence,
    /// A tool running longer than this gets a filler phrase.
    pub filler_after_ms: u64,
    /// Tools offered to the model.
    pub tools: Vec<String>,
    /// Custom tools on the customer's systems, offered to the model besides `tools`.
    pub http_tools: Vec<HttpTool>,
    /// Post-call analysis of the agent's answered calls; `None`: none.
    pub analysis: Option<AnalysisConfig>,
    /// How long an outbound call waits for the answering-machine verdict before greeting.
    pub amd_wait_ms: u64,
    /// How long a call holds for the model to answer again once it could not (retrying with
    /// backoff, so a breaker's half-open probes get their chance) before `on_vendor_failure`
    /// applies. Counted from the first unanswered attempt; 0 applies it at once.
    pub reply_wait_ms: u64,
}

impl Default for Persona {
    fn default() -> Self {
        Persona {
            system_prompt: "You are a helpful, concise phone assistant. Answer in one or two short spoken sentences.".into(),
            greeting: "Hello! How can I help you today?".into(),
            goodbye: "Thank you for calling. Goodbye!".into(),
            reprompt: "Are you still there?".into(),
            apology: "I'm sorry, I'm having technical difficulties.".into(),
            hold: "Sorry, one moment please.".into(),
            handoff: "Let me connect you with a colleague who can help.".into(),
            filler: "One moment while I check that.".into(),
            voicemail_message: "Hello, we tried to reach you. Please call us back. Goodbye.".into(),
            human_number: None,
            on_vendor_failure: None,
            voicemail: VoicemailAction::HangUp,
            escalation: Escalation::default(),
            frustration: Frustration::default(),
            turn_taking: TurnTaking::default(),
            silence: Silence::default(),
            filler_after_ms: 800,
            tools: TOOLS.iter().map(|t| (*t).to_owned()).collect(),
            http_tools: Vec::new(),
            analysis: None,
            amd_wait_ms: 3500,
            reply_wait_ms: 35_000,
        }
    }
}

/// The voice part (`voice_config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Voice {
    /// TTS voice id.
    pub voice_id: String,
    /// TTS model.
    pub model_id: String,
    /// Language for recognition and synthesis.
    pub language: String,
    /// Speaking rate (0.6..=1.5).
    pub speed: Option<f32>,
    /// How the model's text goes to speech synthesis.
    pub text_chunking: TextChunking,
}

/// How a reply's text, streamed by the model, is cut into the pieces sent to speech synthesis
/// (all of a reply's pieces go to one synthesis context, whose continuations keep the prosody
/// across them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextChunking {
    /// The first piece ends at the first clause or sentence boundary, the next ones at
    /// sentence ends: every piece is a phrase the synthesiser can intone as a whole.
    #[default]
    Clause,
    /// Whole words as they arrive: speech starts after the first word, at some cost in
    /// prosody where the synthesiser has to speak a phrase before it has seen its end.
    Stream,
}

impl Default for Voice {
    fn default() -> Self {
        Voice {
            voice_id: "a0e99841-438c-4a64-b679-ae501e7d6091".into(),
            model_id: "sonic-3".into(),
            language: "en".into(),
            speed: None,
            text_chunking: TextChunking::default(),
        }
    }
}

/// An agent's conversational configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VoiceProfile {
    /// Persona.
    pub persona: Persona,
    /// Voice.
    pub voice: Voice,
    /// `persona.human_number`, validated.
    pub human_number: Option<PhoneNumber>,
}

impl VoiceProfile {
    /// Reads and checks the agent's two configuration objects.
    pub fn from_configs(
        persona: &serde_json::Value,
        voice: &serde_json::Value,
    ) -> Result<VoiceProfile, FieldError> {
        let persona: Persona = serde_json::from_value(persona.clone())
            .map_err(|e| FieldError::new("persona_config", e.to_string()))?;
        let voice: Voice = serde_json::from_value(voice.clone())
            .map_err(|e| FieldError::new("voice_config", e.to_string()))?;
        let bad = |m: String| FieldError::new("persona_config", m);
        let human_number = match persona.human_number.as_deref() {
            None => None,
            Some(n) => Some(PhoneNumber::parse(n).map_err(|e| bad(format!("human_number: {e}")))?),
        };
        let unit = |name: &str, v: f64| {
            if (-1.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(bad(format!("{name} must be between -1 and 1")))
            }
        };
        unit(
            "escalation.sentiment_floor",
            persona.escalation.sentiment_floor,
        )?;
        unit("frustration.threshold", persona.frustration.threshold)?;
        if !(0.0..=2.0).contains(&persona.frustration.trend_drop) {
            return Err(bad("frustration.trend_drop must be between 0 and 2".into()));
        }
        if !(2..=20).contains(&persona.frustration.window) {
            return Err(bad("frustration.window must be between 2 and 20".into()));
        }
        let t = &persona.turn_taking;
        if t.holdoff_ms > 5000 || t.long_holdoff_ms > 10_000 || t.long_holdoff_ms < t.holdoff_ms {
            return Err(bad(
                "turn_taking: holdoff_ms <= 5000 and holdoff_ms <= long_holdoff_ms <= 10000".into(),
            ));
        }
        if t.min_barge_in_words == 0 || t.min_barge_in_words > 20 {
            return Err(bad("turn_taking.min_barge_in_words must be 1..=20".into()));
        }
        if t.max_speculations > 5 {
            return Err(bad("turn_taking.max_speculations must be 0..=5".into()));
        }
        let s = &persona.silence;
        if s.reprompt_after_ms < 1000 || s.hangup_after_ms <= s.reprompt_after_ms {
            return Err(bad(
                "silence: reprompt_after_ms >= 1000 and hangup_after_ms > reprompt_after_ms".into(),
            ));
        }
        if persona.reply_wait_ms > 120_000 || persona.amd_wait_ms > 60_000 {
            return Err(bad(
                "reply_wait_ms must be <= 120000 and amd_wait_ms <= 60000".into(),
            ));
        }
        if let Some(tool) = persona.tools.iter().find(|t| !TOOLS.contains(&t.as_str())) {
            return Err(bad(format!(
                "unknown tool `{tool}`; available: {}",
                TOOLS.join(", ")
            )));
        }
        if persona.http_tools.len() > MAX_HTTP_TOOLS {
            return Err(bad(format!("at most {MAX_HTTP_TOOLS} http_tools")));
        }
        for (i, tool) in persona.http_tools.iter().enumerate() {
            tool.check().map_err(|e| bad(format!("http_tools: {e}")))?;
            if persona.http_tools[..i].iter().any(|t| t.name == tool.name) {
                return Err(bad(format!("http_tools: `{}` is defined twice", tool.name)));
            }
        }
        if let Some(analysis) = &persona.analysis {
            analysis.check().map_err(bad)?;
        }
        for (name, text) in [
            ("greeting", &persona.greeting),
            ("goodbye", &persona.goodbye),
            ("apology", &persona.apology),
            ("hold", &persona.hold),
            ("handoff", &persona.handoff),
        ] {
            if text.trim().is_empty() {
                return Err(bad(format!("{name} must not be empty")));
            }
        }
        if let Some(speed) = voice.speed {
            if !(0.6..=1.5).contains(&speed) {
                return Err(FieldError::new(
                    "voice_config",
                    "speed must be between 0.6 and 1.5",
                ));
            }
        }
        if voice.voice_id.trim().is_empty() || voice.language.trim().is_empty() {
            return Err(FieldError::new(
                "voice_config",
                "voice_id and language must not be empty",
            ));
        }
        Ok(VoiceProfile {
            persona,
            voice,
            human_number,
        })
    }

    /// What to do on a vendor failure.
    pub fn vendor_failure_action(&self) -> VendorFailureAction {
        match (self.persona.on_vendor_failure, &self.human_number) {
            (Some(VendorFailureAction::End), _) | (_, None) => VendorFailureAction::End,
            _ => VendorFailureAction::Transfer,
        }
    }

    /// Whether the model may use `tool`.
    pub fn offers(&self, tool: &str) -> bool {
        self.persona.tools.iter().any(|t| t == tool)
    }

    /// The custom tool called `name`.
    pub fn http_tool(&self, name: &str) -> Option<&HttpTool> {
        self.persona.http_tools.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(extra: serde_json::Value) -> serde_json::Value {
        let mut t = json!({
            "name": "book",
            "description": "Books a table.",
            "url": "https://tools.example.com/book",
            "signing_secret": "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYX",
            "secret_headers": {"Authorization": "Bearer abc"},
        });
        for (k, v) in extra.as_object().unwrap() {
            t[k] = v.clone();
        }
        t
    }

    #[test]
    fn http_tools_are_checked_when_configured() {
        let ok = json!({"http_tools": [tool(json!({}))]});
        let p = VoiceProfile::from_configs(&ok, &json!({})).unwrap();
        let t = p.http_tool("book").unwrap();
        assert_eq!(t.timeout_ms, 5000);
        assert_eq!(t.method, ToolMethod::Post);
        for (bad, says) in [
            (tool(json!({"name": "end_call"})), "built-in"),
            (tool(json!({"name": "book a table"})), "must be 1-64"),
            (
                tool(json!({"parameters": {"type": "object", "oneOf": []}})),
                "oneOf",
            ),
            (
                tool(json!({"parameters": {"type": "string"}})),
                "\"type\": \"object\"",
            ),
            (tool(json!({"url": "ftp://x"})), "http or https"),
            (
                tool(json!({"headers": {"Content-Type": "text/plain"}})),
                "set by the server",
            ),
            (tool(json!({"signing_secret": "hunter2"})), "whsec_"),
            (tool(json!({"timeout_ms": 60000})), "timeout_ms"),
            (tool(json!({"method": "DELETE"})), "DELETE"),
        ] {
            let err = VoiceProfile::from_configs(&json!({"http_tools": [bad]}), &json!({}))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{says}: {err}");
        }
        let twice = json!({"http_tools": [tool(json!({})), tool(json!({}))]});
        assert!(VoiceProfile::from_configs(&twice, &json!({})).is_err());
    }

    #[test]
    fn tool_secrets_are_write_only_and_kept_when_sent_back_masked() {
        let stored = json!({"http_tools": [tool(json!({}))]});
        let mut shown = stored.clone();
        redact_secrets(&mut shown);
        assert_eq!(shown["http_tools"][0]["signing_secret"], SECRET_MASK);
        assert_eq!(
            shown["http_tools"][0]["secret_headers"]["Authorization"],
            SECRET_MASK
        );
        assert!(!shown.to_string().contains("Bearer abc"));
        let mut back = shown.clone();
        back["http_tools"][0]["description"] = json!("Books a table for dinner.");
        restore_secrets(&mut back, &stored).unwrap();
        assert_eq!(
            back["http_tools"][0]["signing_secret"],
            stored["http_tools"][0]["signing_secret"]
        );
        assert_eq!(
            back["http_tools"][0]["secret_headers"]["Authorization"],
            "Bearer abc"
        );
        // A mask with nothing behind it (a new tool, a renamed header) is refused.
        let mut renamed = shown.clone();
        renamed["http_tools"][0]["name"] = json!("reserve");
        assert!(restore_secrets(&mut renamed, &stored).is_err());
    }

    #[test]
    fn defaults_from_empty_objects() {
        let p = VoiceProfile::from_configs(&json!({}), &json!({})).unwrap();
        assert_eq!(p.persona.turn_taking.holdoff_ms, 250);
        assert!(p.persona.turn_taking.speculate);
        assert_eq!(p.persona.turn_taking.max_speculations, 2);
        assert_eq!(p.voice.model_id, "sonic-3");
        assert_eq!(p.voice.text_chunking, TextChunking::Clause);
        assert_eq!(p.vendor_failure_action(), VendorFailureAction::End);
        assert!(p.offers("lookup_customer"));
    }

    #[test]
    fn tenant_keys_are_kept_and_known_keys_checked() {
        let p = VoiceProfile::from_configs(
            &json!({"goals": ["sell"], "human_number": "+14155550100",
                    "escalation": {"keywords": ["cancel"]}}),
            &json!({"speed": 1.2}),
        )
        .unwrap();
        assert_eq!(p.human_number.as_ref().unwrap().as_str(), "+14155550100");
        assert_eq!(p.vendor_failure_action(), VendorFailureAction::Transfer);
        for (persona, voice, field) in [
            (json!({"human_number": "555"}), json!({}), "persona_config"),
            (json!({"greeting": 3}), json!({}), "persona_config"),
            (
                json!({"escalation": {"sentiment_floor": -3}}),
                json!({}),
                "persona_config",
            ),
            (
                json!({"tools": ["launch_missiles"]}),
                json!({}),
                "persona_config",
            ),
            (
                json!({"silence": {"reprompt_after_ms": 5000, "hangup_after_ms": 4000}}),
                json!({}),
                "persona_config",
            ),
            (
                json!({"turn_taking": {"min_barge_in_words": 0}}),
                json!({}),
                "persona_config",
            ),
            (
                json!({"turn_taking": {"max_speculations": 6}}),
                json!({}),
                "persona_config",
            ),
            (
                json!({"turn_taking": {"speculate": "yes"}}),
                json!({}),
                "persona_config",
            ),
            (json!({}), json!({"speed": 3.0}), "voice_config"),
            (json!({}), json!({"voice_id": ""}), "voice_config"),
            (
                json!({}),
                json!({"text_chunking": "tokens"}),
                "voice_config",
            ),
        ] {
            let err = VoiceProfile::from_configs(&persona, &voice).unwrap_err();
            assert_eq!(err.field, field, "{persona} {voice}: {err}");
        }
    }
}
