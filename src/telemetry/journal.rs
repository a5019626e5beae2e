//! A call's spans drawn from its journal ([`CallTraces`]): the root span of the call's life
//! (written when it ends), one span per turn with a child per stage of its reply latency,
//! tool calls, barge-ins, escalations and vendor failures. Their times are the journal's.
//!
//! A turn's stages come from its `turn_latency` entry, written when the reply's first audio
//! went out; the stages are laid out back from that moment: speech-to-text (caller's end of
//! speech to the final transcript), the hold-off, the model's first token and its streaming up
//! to the first speakable piece (from when the request was sent: during the hold-off for a
//! speculative reply), the engine's own share and synthesis to the first audio.

use std::time::{Duration, SystemTime};

use iace_actors::machine::record::ConversationRecord;
use iace_actors::machine::{Call, CallStatus, Event};
use iace_actors::ports::{CallTraces, JournalEntry};
use opentelemetry::trace::{Span as _, SpanId, SpanKind, Status, TraceId, Tracer as _};
use opentelemetry::{Context, KeyValue};

use super::context::{
    call_context, exporting, root_span_id, trace_id, turn_context, turn_span_id, SCOPE,
};

/// Draws each call's spans from its journal through the global tracer.
#[derive(Debug, Default, Clone, Copy)]
pub struct JournalTraces;

struct Draw {
    name: String,
    kind: SpanKind,
    span_id: Option<SpanId>,
    trace_id: Option<TraceId>,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
    events: Vec<opentelemetry::trace::Event>,
    error: Option<String>,
}

impl Draw {
    fn new(name: impl Into<String>, start: SystemTime, end: SystemTime) -> Draw {
        Draw {
            name: name.into(),
            kind: SpanKind::Internal,
            span_id: None,
            trace_id: None,
            start,
            end: end.max(start),
            attributes: Vec::new(),
            events: Vec::new(),
            error: None,
        }
    }

    fn attr(mut self, kv: KeyValue) -> Draw {
        self.attributes.push(kv);
        self
    }

    fn emit(self, parent: &Context) {
        let tracer = opentelemetry::global::tracer(SCOPE);
        let mut builder = tracer
            .span_builder(self.name)
            .with_kind(self.kind)
            .with_start_time(self.start)
            .with_attributes(self.attributes)
            .with_events(self.events);
        if let Some(id) = self.span_id {
            builder = builder.with_span_id(id);
        }
        if let Some(id) = self.trace_id {
            builder = builder.with_trace_id(id);
        }
        let mut span = builder.start_with_context(&tracer, parent);
        if let Some(error) = self.error {
            span.set_status(Status::error(error));
        }
        span.end_with_timestamp(self.end);
    }
}

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

fn millis(key: &'static str, micros: u64) -> KeyValue {
    KeyValue::new(key, micros as f64 / 1000.0)
}

impl CallTraces for JournalTraces {
    fn applied(&self, call: &Call, entry: &JournalEntry, ended_now: bool) {
        if !exporting() {
            return;
        }
        let id = call.spec.id;
        let at = SystemTime::from(entry.at);
        if let Event::Conversation { record } = &entry.event {
            conversation(id, at, record);
        }
        if ended_now {
            root(call, at);
        }
    }
}

fn conversation(id: uuid::Uuid, at: SystemTime, record: &ConversationRecord) {
    use ConversationRecord as R;
    match record {
        R::TurnLatency {
            turn,
            stt_us,
            holdoff_us,
            llm_first_token_us,
            llm_stream_us,
            tts_first_audio_us,
            total_us,
            engine_us,
            saved_us,
        } => {
            let first_audio = at;
            let transcript = first_audio - us(*total_us);
            let speech_end = transcript - us(*stt_us);
            let turn_end = transcript + us(*holdoff_us);
            let requested = turn_end.min(first_audio) - us(*saved_us);
            let first_token = requested + us(*llm_first_token_us);
            let piece = first_token + us(*llm_stream_us);
            let synthesis = first_audio - us(*tts_first_audio_us);
            let start = speech_end.min(requested);
            let turn_id = turn_span_id(id, *turn);
            let mut span = Draw::new("turn", start, first_audio)
                .attr(KeyValue::new("iace.call.id", id.to_string()))
                .attr(KeyValue::new("iace.turn", i64::from(*turn)))
                .attr(millis("iace.turn.total_ms", *total_us))
                .attr(millis("iace.turn.stt_ms", *stt_us))
                .attr(millis("iace.turn.holdoff_ms", *holdoff_us))
                .attr(millis("iace.turn.llm_first_token_ms", *llm_first_token_us))
                .attr(millis("iace.turn.llm_stream_ms", *llm_stream_us))
                .attr(millis("iace.turn.tts_first_audio_ms", *tts_first_audio_us))
                .attr(millis("iace.turn.engine_ms", *engine_us))
                .attr(millis("iace.turn.saved_ms", *saved_us));
            span.span_id = Some(turn_id);
            span.emit(&call_context(id));
            let parent = turn_context(id, *turn);
            for (name, from, to) in [
                ("stt", speech_end, transcript),
                ("holdoff", transcript, turn_end),
                ("llm_first_token", requested, first_token),
                ("llm_stream", first_token, piece),
                ("engine", synthesis - us(*engine_us), synthesis),
                ("tts_first_audio", synthesis, first_audio),
            ] {
                Draw::new(name, from.max(start), to.max(start)).emit(&parent);
            }
        }
        R::BargeIn { turn, .. } => {
            Draw::new("barge_in", at, at)
                .attr(KeyValue::new("iace.turn", i64::from(*turn)))
                .emit(&turn_context(id, *turn));
        }
        R::ToolCall {
            turn,
            name,
            duration_ms,
            ok,
            ..
        } => {
            let mut span = Draw::new(
                format!("execute_tool {name}"),
                at - Duration::from_millis(*duration_ms),
                at,
            )
            .attr(KeyValue::new("gen_ai.operation.name", "execute_tool"))
            .attr(KeyValue::new("gen_ai.tool.name", name.clone()))
            .attr(KeyValue::new("iace.turn", i64::from(*turn)));
            if !ok {
                span.error = Some("the tool failed".into());
            }
            span.emit(&turn_context(id, *turn));
        }
        R::Escalation { turn, reason, .. } => {
            let reason = serde_json::to_value(reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            Draw::new("escalation", at, at)
                .attr(KeyValue::new("iace.turn", i64::from(*turn)))
                .attr(KeyValue::new("iace.escalation.reason", reason))
                .emit(&call_context(id));
        }
        R::VendorGap { vendor, gap_ms, .. } => {
            Draw::new("vendor_gap", at - Duration::from_millis(*gap_ms), at)
                .attr(KeyValue::new("iace.vendor.port", vendor.clone()))
                .emit(&call_context(id));
        }
        R::VendorFailure {
            vendor,
            reason,
            action,
        } => {
            let mut span = Draw::new("vendor_failure", at, at)
                .attr(KeyValue::new("iace.vendor.port", vendor.clone()))
                .attr(KeyValue::new("iace.vendor.action", action.clone()));
            span.error = Some(reason.clone());
            span.emit(&call_context(id));
        }
        _ => {}
    }
}

/// The root span: the call's life, written once, by the node that ends the call.
fn root(call: &Call, at: SystemTime) {
    let id = call.spec.id;
    let start = SystemTime::from(call.created_at);
    let end = call.ended_at.map_or(at, SystemTime::from);
    let mut span = Draw::new("call", start, end)
        .attr(KeyValue::new("iace.call.id", id.to_string()))
        .attr(KeyValue::new(
            "iace.call.direction",
            call.spec.direction.as_str(),
        ))
        .attr(KeyValue::new("iace.call.status", call.status.as_str()))
        .attr(KeyValue::new(
            "iace.call.end_reason",
            call.end_reason.map_or("none", |r| r.as_str()),
        ))
        .attr(KeyValue::new(
            "iace.organization.id",
            call.spec.organization_id.to_string(),
        ))
        .attr(KeyValue::new(
            "iace.agent.id",
            call.spec.agent_id.to_string(),
        ));
    for (name, t) in [("ringing", call.ringing_at), ("answered", call.answered_at)] {
        if let Some(t) = t {
            span.events.push(opentelemetry::trace::Event::new(
                name,
                SystemTime::from(t),
                Vec::new(),
                0,
            ));
        }
    }
    if call.status == CallStatus::Failed {
        span.error = Some(call.end_reason.map_or("failed", |r| r.as_str()).to_owned());
    }
    span.span_id = Some(root_span_id(id));
    // No parent: the root carries the call's trace id itself.
    span.trace_id = Some(trace_id(id));
    span.emit(&Context::new());
}
