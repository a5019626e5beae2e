//! The engine's ports, run in their call's trace: each decorator puts the call's (or the
//! turn's) context in scope around the port it wraps, so the client spans the vendor clients
//! start there are children of the call's root (or of the turn's span) and carry its trace on
//! the wire.

use std::sync::Arc;

use async_trait::async_trait;
use iace_actors::machine::{CallId, PhoneNumber};
use iace_actors::ports::voice::{
    Llm, LlmEvent, LlmRequest, SpeechToText, SttOptions, SttStream, TextToSpeech, ToolRequest,
    ToolRunner, TtsOptions, TtsStream, VoiceError, VoicePorts,
};
use iace_actors::ports::{DialCommand, LegCommand, LegStatus, Telephony, TelephonyError};
use opentelemetry::context::FutureExt as _;
use tokio::sync::mpsc;

use super::context::{call_context, turn_context};

/// The voice ports, each in its call's trace.
pub fn voice(ports: VoicePorts) -> VoicePorts {
    VoicePorts {
        stt: Arc::new(TracedStt(ports.stt)),
        tts: Arc::new(TracedTts(ports.tts)),
        llm: Arc::new(TracedLlm(ports.llm)),
        tools: ports
            .tools
            .map(|t| Arc::new(TracedTools(t)) as Arc<dyn ToolRunner>),
        ..ports
    }
}

/// The carrier's commands, each in its call's trace.
pub fn telephony(inner: Arc<dyn Telephony>) -> Arc<dyn Telephony> {
    Arc::new(TracedTelephony(inner))
}

struct TracedTelephony(Arc<dyn Telephony>);

#[async_trait]
impl Telephony for TracedTelephony {
    fn vendor(&self) -> &'static str {
        self.0.vendor()
    }
    async fn dial(&self, cmd: DialCommand) -> Result<String, TelephonyError> {
        let cx = call_context(cmd.call_id);
        self.0.dial(cmd).with_context(cx).await
    }
    async fn answer(&self, cmd: LegCommand) -> Result<(), TelephonyError> {
        let cx = call_context(cmd.call_id);
        self.0.answer(cmd).with_context(cx).await
    }
    async fn hangup(&self, cmd: LegCommand) -> Result<(), TelephonyError> {
        let cx = call_context(cmd.call_id);
        self.0.hangup(cmd).with_context(cx).await
    }
    async fn transfer(&self, cmd: LegCommand, to: PhoneNumber) -> Result<(), TelephonyError> {
        let cx = call_context(cmd.call_id);
        self.0.transfer(cmd, to).with_context(cx).await
    }
    async fn reject(&self, carrier_call_id: &str, command_id: &str) -> Result<(), TelephonyError> {
        // A refused inbound call never became a call: no trace to join.
        self.0.reject(carrier_call_id, command_id).await
    }
    async fn restart_media(&self, cmd: LegCommand) -> Result<(), TelephonyError> {
        let cx = call_context(cmd.call_id);
        self.0.restart_media(cmd).with_context(cx).await
    }
    async fn status(
        &self,
        call_id: CallId,
        carrier_call_id: Option<&str>,
    ) -> Result<LegStatus, TelephonyError> {
        self.0
            .status(call_id, carrier_call_id)
            .with_context(call_context(call_id))
            .await
    }
}

struct TracedStt(Arc<dyn SpeechToText>);

#[async_trait]
impl SpeechToText for TracedStt {
    fn vendor(&self) -> &'static str {
        self.0.vendor()
    }
    async fn open(&self, options: SttOptions) -> Result<SttStream, VoiceError> {
        let cx = call_context(options.call_id);
        self.0.open(options).with_context(cx).await
    }
}

struct TracedTts(Arc<dyn TextToSpeech>);

#[async_trait]
impl TextToSpeech for TracedTts {
    fn vendor(&self) -> &'static str {
        self.0.vendor()
    }
    async fn open(&self, options: TtsOptions) -> Result<TtsStream, VoiceError> {
        let cx = call_context(options.call_id);
        self.0.open(options).with_context(cx).await
    }
}

struct TracedLlm(Arc<dyn Llm>);

#[async_trait]
impl Llm for TracedLlm {
    fn vendor(&self) -> &'static str {
        self.0.vendor()
    }
    async fn stream(&self, request: LlmRequest) -> Result<mpsc::Receiver<LlmEvent>, VoiceError> {
        let cx = turn_context(request.call_id, request.turn);
        self.0.stream(request).with_context(cx).await
    }
}

struct TracedTools(Arc<dyn ToolRunner>);

#[async_trait]
impl ToolRunner for TracedTools {
    async fn run(&self, request: ToolRequest) -> Result<serde_json::Value, String> {
        let cx = turn_context(request.call_id, request.turn);
        self.0.run(request).with_context(cx).await
    }
}
