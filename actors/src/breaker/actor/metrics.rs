//! The breakers' metrics: one set for every vendor, and each vendor's series resolved once.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Breaker metrics (one set for every vendor).
#[derive(Clone)]
pub struct BreakerMetrics {
    pub(super) state: IntGaugeVec,
    pub(super) transitions: IntCounterVec,
    pub(super) calls: IntCounterVec,
    pub(super) latency: HistogramVec,
}

impl BreakerMetrics {
    /// Registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = BreakerMetrics {
            state: IntGaugeVec::new(
                Opts::new(
                    "iace_breaker_state",
                    "Breaker state per vendor: 0 closed, 1 open, 2 half_open, 3 forced_open, 4 disabled",
                ),
                &["vendor"],
            )?,
            transitions: IntCounterVec::new(
                Opts::new("iace_breaker_transitions_total", "Breaker transitions"),
                &["vendor", "from", "to", "reason"],
            )?,
            calls: IntCounterVec::new(
                Opts::new(
                    "iace_vendor_calls_total",
                    "Vendor calls by outcome (success, failure, rate_limited, cancelled, rejected = failed fast by the breaker)",
                ),
                &["vendor", "outcome"],
            )?,
            latency: HistogramVec::new(
                HistogramOpts::new("iace_vendor_call_seconds", "Latency of permitted vendor calls")
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["vendor"],
            )?,
        };
        registry.register(Box::new(m.state.clone()))?;
        registry.register(Box::new(m.transitions.clone()))?;
        registry.register(Box::new(m.calls.clone()))?;
        registry.register(Box::new(m.latency.clone()))?;
        Ok(m)
    }
}

/// The vendor's metric series, resolved once (a label lookup per call would cost more than
/// the breaker itself).
#[derive(Clone)]
pub(super) struct Series {
    pub(super) success: prometheus::IntCounter,
    pub(super) failure: prometheus::IntCounter,
    pub(super) rate_limited: prometheus::IntCounter,
    pub(super) cancelled: prometheus::IntCounter,
    pub(super) rejected: prometheus::IntCounter,
    pub(super) latency: prometheus::Histogram,
}

impl Series {
    pub(super) fn new(m: &BreakerMetrics, vendor: &str) -> Self {
        let calls = |outcome: &str| m.calls.with_label_values(&[vendor, outcome]);
        Series {
            success: calls("success"),
            failure: calls("failure"),
            rate_limited: calls("rate_limited"),
            cancelled: calls("cancelled"),
            rejected: calls("rejected"),
            latency: m.latency.with_label_values(&[vendor]),
        }
    }
}
