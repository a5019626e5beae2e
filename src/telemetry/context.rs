//! Trace context: a call's trace is found from its id alone, on any node.
//!
//! The trace id of a call is its id (the UUID's 16 bytes). The span ids of its root span and of
//! each turn's span are derived from the call id (and the turn number), so every node that does
//! work for a call (the one that dials, the one that runs its conversation after a handover,
//! the one that delivers its webhooks) parents its spans on the same root without asking anyone,
//! and the root itself is written once, when the call ends, with the call's real start and end.
//! A request span made in their scope ([`ClientSpan`]) sends W3C `traceparent` and
//! `x-request-id` on the wire.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use sha2::{Digest, Sha256};
use uuid::Uuid;

tokio::task_local! {
    /// The id of the API request being served (set by the request middleware): logged with
    /// it, sent back in its answer and forwarded to vendors as `x-request-id`.
    pub static REQUEST_ID: String;
}

/// The instrumentation scope of every span.
pub const SCOPE: &str = "iace";

/// Share of new traces recorded (bits of an `f64`); 0 until an exporter is installed.
static ROOT_RATIO: AtomicU64 = AtomicU64::new(0);

/// Sets the share of new traces that are recorded (what the root sampler decides).
pub(crate) fn set_root_ratio(ratio: f64) {
    ROOT_RATIO.store(ratio.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
}

/// Whether spans are exported at all (an exporter is installed and samples something).
pub fn exporting() -> bool {
    f64::from_bits(ROOT_RATIO.load(Ordering::Relaxed)) > 0.0
}

/// The decision the SDK's trace-id ratio sampler makes for `trace_id` (the same arithmetic,
/// so a call's root span and its children sampled through the derived context agree).
pub fn sampled(trace_id: TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let upper = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let bytes = trace_id.to_bytes();
    let low = u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes"));
    (low >> 1) < upper
}

/// A call's trace id: its id.
pub fn trace_id(call: Uuid) -> TraceId {
    TraceId::from_bytes(*call.as_bytes())
}

fn derived(call: Uuid, what: &[u8], n: u32) -> SpanId {
    let mut h = Sha256::new();
    h.update(call.as_bytes());
    h.update(what);
    h.update(n.to_be_bytes());
    let digest = h.finalize();
    let mut id: [u8; 8] = digest[..8].try_into().expect("8 bytes");
    if id == [0; 8] {
        id[7] = 1;
    }
    SpanId::from_bytes(id)
}

/// The span id of a call's root span.
pub fn root_span_id(call: Uuid) -> SpanId {
    derived(call, b"call", 0)
}

/// The span id of the span of a call's turn.
pub fn turn_span_id(call: Uuid, turn: u32) -> SpanId {
    derived(call, b"turn", turn)
}

fn remote(call: Uuid, span_id: SpanId) -> Context {
    let trace_id = trace_id(call);
    let ratio = f64::from_bits(ROOT_RATIO.load(Ordering::Relaxed));
    let flags = if ratio > 0.0 && sampled(trace_id, ratio) {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    Context::new().with_remote_span_context(SpanContext::new(
        trace_id,
        span_id,
        flags,
        true,
        TraceState::default(),
    ))
}

/// The context of work done for a call: spans started in it are children of its root.
pub fn call_context(call: Uuid) -> Context {
    remote(call, root_span_id(call))
}

/// The context of work done for one turn of a call: spans started in it are children of the
/// turn's span.
pub fn turn_context(call: Uuid, turn: u32) -> Context {
    remote(call, turn_span_id(call, turn))
}

/// W3C `traceparent` of a span context (`None` when it is not valid).
pub fn traceparent(sc: &SpanContext) -> Option<String> {
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Parses a W3C `traceparent` (version 00, or a later version read as 00 demands) into a
/// remote span context. Anything malformed is `None` (the request starts a trace of its own).
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let value = value.trim();
    let mut parts = value.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    // Version 00 has exactly four fields; a later one may add fields after a dash.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()? & 1;
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    ))
}

/// `url.full` (without query or credentials), `server.address`, `server.port`.
fn url_attributes(url: &str, attributes: &mut Vec<KeyValue>) {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return;
    };
    let mut full = parsed.clone();
    full.set_query(None);
    let _ = full.set_password(None);
    let _ = full.set_username("");
    attributes.push(KeyValue::new("url.full", full.to_string()));
    if let Some(host) = parsed.host_str() {
        attributes.push(KeyValue::new("server.address", host.to_owned()));
    }
    if let Some(port) = parsed.port_or_known_default() {
        attributes.push(KeyValue::new("server.port", i64::from(port)));
    }
}

/// One request to a vendor or to a customer's system (an HTTP request, a WebSocket
/// handshake): a client span, child of the trace in scope ([`Context::current`]: the call's or
/// the turn's, set by the caller with [`opentelemetry::context::FutureExt::with_context`]).
/// Its [`ClientSpan::headers`] go on the request. Ends when dropped.
pub struct ClientSpan {
    span: BoxedSpan,
    request_id: String,
    started: std::time::Instant,
}

impl ClientSpan {
    /// Starts the span of a `method` request to `url`, for `vendor` (`telnyx`, `groq`,
    /// `webhook`, ...). `name` follows the conventions: the method for plain HTTP, or
    /// `chat {model}` for a model call. The URL is recorded without its query (which can
    /// carry credentials).
    pub fn start(
        name: impl Into<Cow<'static, str>>,
        method: &str,
        url: &str,
        vendor: &'static str,
    ) -> ClientSpan {
        let parent = Context::current();
        let tracer = opentelemetry::global::tracer(SCOPE);
        let mut attributes = Vec::new();
        // Without an exporter the span only carries its parent's context on the wire.
        if exporting() {
            attributes.push(KeyValue::new("http.request.method", method.to_owned()));
            attributes.push(KeyValue::new("iace.vendor", vendor));
            url_attributes(url, &mut attributes);
        }
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&tracer, &parent);
        let sc = span.span_context();
        let request_id = REQUEST_ID.try_with(Clone::clone).ok().unwrap_or_else(|| {
            if sc.is_valid() {
                format!("{}-{}", sc.trace_id(), sc.span_id())
            } else {
                Uuid::new_v4().to_string()
            }
        });
        ClientSpan {
            span,
            request_id,
            started: std::time::Instant::now(),
        }
    }

    /// The headers the request carries: `traceparent` (when there is a trace) and
    /// `x-request-id` (the API request's id when the request is made while serving one, else
    /// this span's trace and span ids).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(2);
        if let Some(tp) = traceparent(self.span.span_context()) {
            out.push(("traceparent", tp));
        }
        out.push(("x-request-id", self.request_id.clone()));
        out
    }

    /// Adds the headers to a `reqwest` request.
    pub fn apply(&self, mut builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        for (name, value) in self.headers() {
            builder = builder.header(name, value);
        }
        builder
    }

    /// Adds the headers to a request's header map (a WebSocket handshake).
    pub fn insert(&self, headers: &mut axum::http::HeaderMap) {
        for (name, value) in self.headers() {
            if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
    }

    /// Time since the span started.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Sets an attribute.
    pub fn set(&mut self, attribute: KeyValue) {
        self.span.set_attribute(attribute);
    }

    /// Records the answer's status; 4xx and 5xx mark the span failed.
    pub fn status(&mut self, code: u16) {
        self.span
            .set_attribute(KeyValue::new("http.response.status_code", i64::from(code)));
        if code >= 400 {
            self.span
                .set_attribute(KeyValue::new("error.type", code.to_string()));
            self.span.set_status(Status::error(format!("HTTP {code}")));
        }
    }

    /// Marks the request failed without an answer (`error_type`: `timeout`, `transport`, ...).
    pub fn fail(&mut self, error_type: &'static str, message: impl Into<Cow<'static, str>>) {
        self.span
            .set_attribute(KeyValue::new("error.type", error_type));
        self.span.set_status(Status::error(message));
    }

    /// Numbers the attempt (1-based): a retry carries `http.request.resend_count`.
    pub fn attempt(&mut self, attempt: u32) {
        if attempt > 1 {
            self.set(KeyValue::new(
                "http.request.resend_count",
                i64::from(attempt - 1),
            ));
        }
    }

    /// Marks the request failed with no answer, from the HTTP client's error.
    pub fn failed_request(&mut self, error: &reqwest::Error) {
        let kind = if error.is_timeout() {
            "timeout"
        } else {
            "transport"
        };
        self.fail(kind, error.to_string());
    }

    /// Adds an event (a point in the request's life: the first token of a reply).
    pub fn event(&mut self, name: &'static str, attributes: Vec<KeyValue>) {
        self.span.add_event(name, attributes);
    }

    /// Ends the span now (dropping it does the same).
    pub fn end(mut self) {
        self.span.end_with_timestamp(SystemTime::now());
    }
}

/// The span of a journal write for `calls` (one for a single append; one per call of a
/// group-commit batch, each naming the batch's size), in each call's trace. `None` when no
/// trace is exported. The spans end when dropped.
pub fn journal_write_spans(
    calls: impl Iterator<Item = Uuid>,
    batch: usize,
) -> Option<Vec<BoxedSpan>> {
    if !exporting() {
        return None;
    }
    let tracer = opentelemetry::global::tracer(SCOPE);
    Some(
        calls
            .map(|call| {
                let mut attributes = vec![
                    KeyValue::new("db.system.name", "postgresql"),
                    KeyValue::new("db.operation.name", "INSERT"),
                    KeyValue::new("db.collection.name", "call_event"),
                ];
                if batch > 1 {
                    attributes.push(KeyValue::new("db.operation.batch.size", batch as i64));
                }
                tracer
                    .span_builder("INSERT call_event")
                    .with_kind(SpanKind::Client)
                    .with_attributes(attributes)
                    .start_with_context(&tracer, &call_context(call))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_trace_is_its_id_and_its_span_ids_are_stable() {
        let call = Uuid::parse_str("0191f0d3-5c2a-7b7e-9c1d-2f4a6b8c0e12").unwrap();
        assert_eq!(
            trace_id(call).to_string(),
            "0191f0d35c2a7b7e9c1d2f4a6b8c0e12"
        );
        assert_eq!(root_span_id(call), root_span_id(call));
        assert_ne!(root_span_id(call), turn_span_id(call, 0));
        assert_ne!(turn_span_id(call, 1), turn_span_id(call, 2));
        let other = Uuid::parse_str("0191f0d3-5c2a-7b7e-9c1d-2f4a6b8c0e13").unwrap();
        assert_ne!(root_span_id(call), root_span_id(other));
    }

    #[test]
    fn the_ratio_decision_is_the_trace_ids() {
        let low = TraceId::from_hex("00000000000000000000000000000000").unwrap();
        let high = TraceId::from_hex("0000000000000000ffffffffffffffff").unwrap();
        assert!(sampled(low, 0.5));
        assert!(!sampled(high, 0.5));
        assert!(sampled(high, 1.0));
        assert!(!sampled(low, 0.0));
        // Half of uniformly spread ids.
        let n = (0..1000u64)
            .filter(|i| {
                let mut b = [0u8; 16];
                b[8..].copy_from_slice(&(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_be_bytes());
                sampled(TraceId::from_bytes(b), 0.25)
            })
            .count();
        assert!((200..300).contains(&n), "{n}");
    }

    #[test]
    fn traceparent_round_trips_and_malformed_ones_are_refused() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(tp).unwrap();
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(traceparent(&sc).unwrap(), tp);
        let unsampled =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.is_sampled());
        // A later version may carry more fields; 00 may not.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
