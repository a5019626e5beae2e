//! Prometheus metrics of the media endpoint. Per-stream figures go to the sink in
//! [`super::MediaStats`]; these are the fleet-wide aggregates. Labels are fixed small sets: never
//! put a call or stream id in a label.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Error kinds counted in `iace_media_stream_errors_total{kind}`.
pub(crate) mod kind {
    /// Bad, expired or missing token (401 at upgrade, or 1008 after it).
    pub const AUTH: &str = "auth";
    /// A valid token for a call that has ended (403 at upgrade, or 1008 after it).
    pub const CALL_ENDED: &str = "call_ended";
    /// `client_state` names another call than the token.
    pub const CLIENT_STATE: &str = "client_state";
    /// A frame we could not understand (not JSON, binary, bad base64).
    pub const MALFORMED: &str = "malformed";
    /// An `error` frame from Telnyx.
    pub const VENDOR_ERROR: &str = "vendor_error";
    /// Outbound audio dropped because the stream's queue was full.
    pub const DROPPED_OUTBOUND: &str = "dropped_outbound";
    /// The stream went quiet for longer than the idle timeout.
    pub const IDLE_TIMEOUT: &str = "idle_timeout";
    /// The socket could not be written (dead or too slow peer).
    pub const WRITE_FAILED: &str = "write_failed";
}

/// Handles to the media metrics; cheap to clone (all fields are shared counters).
#[derive(Clone, Debug)]
pub struct MediaMetrics {
    pub(crate) streams_active: IntGauge,
    pub(crate) frames_in: IntCounter,
    pub(crate) frames_out: IntCounter,
    pub(crate) bytes_in: IntCounter,
    pub(crate) bytes_out: IntCounter,
    pub(crate) gaps: IntCounter,
    pub(crate) jitter: Histogram,
    errors: IntCounterVec,
}

impl MediaMetrics {
    /// Creates the metrics and registers them in `registry`. Fails if they are already
    /// registered there (one `MediaMetrics` per registry).
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let streams_active = IntGauge::new(
            "iace_media_streams_active",
            "Telnyx media streams currently started and not yet finished",
        )?;
        let frames = IntCounterVec::new(
            Opts::new("iace_media_frames_total", "Media frames by direction"),
            &["direction"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new("iace_media_bytes_total", "Decoded audio bytes by direction"),
            &["direction"],
        )?;
        let gaps = IntCounter::new(
            "iace_media_gaps_total",
            "Inbound media chunks never received (counted when a stream stops)",
        )?;
        let jitter = Histogram::with_opts(
            HistogramOpts::new(
                "iace_media_jitter_seconds",
                "RFC 3550 interarrival jitter per stream, observed when it stops",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64,
            ]),
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "iace_media_stream_errors_total",
                "Media stream problems by kind",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(streams_active.clone()))?;
        registry.register(Box::new(frames.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(gaps.clone()))?;
        registry.register(Box::new(jitter.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        Ok(MediaMetrics {
            streams_active,
            frames_in: frames.with_label_values(&["in"]),
            frames_out: frames.with_label_values(&["out"]),
            bytes_in: bytes.with_label_values(&["in"]),
            bytes_out: bytes.with_label_values(&["out"]),
            gaps,
            jitter,
            errors,
        })
    }

    /// Counts one problem of `kind` (see [`kind`]).
    pub(crate) fn error(&self, kind: &str) {
        self.errors.with_label_values(&[kind]).inc();
    }

    /// The counter for one error kind, for holders that count on a hot path.
    pub(crate) fn error_counter(&self, kind: &str) -> IntCounter {
        self.errors.with_label_values(&[kind])
    }

    #[cfg(test)]
    pub(crate) fn error_count(&self, kind: &str) -> u64 {
        self.errors.with_label_values(&[kind]).get()
    }
}
