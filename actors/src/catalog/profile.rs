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
//!  "tools": ["end_call", "transfer_to_human", "lookup_customer"]}
//! ```
//! `voice_config`: `{"voice_id": "...", "model_id": "sonic-3", "language": "en", "speed": 1.0,
//! "text_chunking": "clause"}`.

use serde::{Deserialize, Serialize};

use super::field::FieldError;
use crate::machine::PhoneNumber;

/// Tools an agent may offer the model.
pub const TOOLS: [&str; 3] = ["end_call", "transfer_to_human", "lookup_customer"];

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
