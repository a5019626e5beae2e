//! Logging and tracing: JSON logs (on stderr; stdout is for command output) through `tracing`,
//! and OpenTelemetry traces exported over OTLP/HTTP (protobuf) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! A call is one trace whose id is the call's id ([`context`]): its root span, its turns and
//! their stages are drawn from the journal ([`journal`]); requests to vendors and customers'
//! systems are client spans in the call's or turn's context that send W3C `traceparent`
//! ([`ClientSpan`]); API requests are server spans that continue an incoming `traceparent`.
//! Sampling is parent-based with a trace-id ratio for new traces (`OTEL_TRACES_SAMPLER`,
//! `OTEL_TRACES_SAMPLER_ARG`); export goes through a bounded queue that drops (and counts)
//! rather than slow a call ([`export`]).

pub mod context;
pub mod export;
pub mod journal;
pub mod ports;

use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use context::{call_context, turn_context, ClientSpan};
pub use export::ExportConfig;
pub use journal::JournalTraces;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (production).
    Json,
    /// Human-readable lines.
    Text,
}

/// Keeps the exporter alive; flushes spans on drop.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports every span finished so far (waits for the collector's answer).
    pub fn flush(&self) -> anyhow::Result<()> {
        if let Some(p) = &self.provider {
            p.force_flush()?;
        }
        Ok(())
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the global subscriber and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the trace
/// exporter. `RUST_LOG` overrides the default filter (`info,sqlx=warn`).
pub fn init(format: LogFormat) -> anyhow::Result<Telemetry> {
    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let fmt = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(crate::pii::ScrubbingStderr)
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter())
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(crate::pii::ScrubbingStderr)
            .with_target(false)
            .with_filter(filter())
            .boxed(),
    };
    tracing_subscriber::registry().with(fmt).try_init()?;
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|s| !s.trim().is_empty());
    match endpoint {
        Some(endpoint) => {
            let ratio = sampler_ratio()?;
            install(&endpoint, ratio, ExportConfig::from_env()?)
        }
        None => Ok(Telemetry { provider: None }),
    }
}

/// The share of new traces recorded, from `OTEL_TRACES_SAMPLER` (`parentbased_traceidratio`
/// (the default), `parentbased_always_on`, `parentbased_always_off`, and the same without
/// `parentbased_`, which this server treats alike: a trace a caller started keeps the
/// caller's decision) and `OTEL_TRACES_SAMPLER_ARG` (the ratio, default 1.0).
pub fn sampler_ratio() -> anyhow::Result<f64> {
    let sampler = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_default();
    let arg = std::env::var("OTEL_TRACES_SAMPLER_ARG").unwrap_or_default();
    let ratio = || -> anyhow::Result<f64> {
        if arg.trim().is_empty() {
            return Ok(1.0);
        }
        arg.trim()
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| {
                anyhow::anyhow!("OTEL_TRACES_SAMPLER_ARG must be a ratio in [0, 1], not `{arg}`")
            })
    };
    match sampler.trim().trim_start_matches("parentbased_") {
        "" | "traceidratio" => ratio(),
        "always_on" => Ok(1.0),
        "always_off" => Ok(0.0),
        other => anyhow::bail!(
            "OTEL_TRACES_SAMPLER `{other}` is not supported: use parentbased_traceidratio, \
             parentbased_always_on or parentbased_always_off"
        ),
    }
}

/// Puts the no-op tracer back: no span is made or exported any more (what a server without
/// `OTEL_EXPORTER_OTLP_ENDPOINT` runs with). Drop the [`Telemetry`] of [`install`] to stop its
/// exporter. For benchmarks that compare both in one process.
pub fn uninstall() {
    context::set_root_ratio(0.0);
    opentelemetry::global::set_tracer_provider(
        opentelemetry::trace::noop::NoopTracerProvider::new(),
    );
}

/// Installs the global tracer provider: OTLP/HTTP protobuf to `endpoint` (`/v1/traces` is
/// appended), parent-based sampling with `ratio` for new traces, export through the bounded
/// queue.
pub fn install(endpoint: &str, ratio: f64, config: ExportConfig) -> anyhow::Result<Telemetry> {
    use opentelemetry_otlp::WithExportConfig as _;
    use opentelemetry_sdk::trace::SpanExporter as _;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("iace")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    exporter.set_resource(&resource);
    let processor = export::BoundedProcessor::start(exporter, config)?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(resource)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    context::set_root_ratio(ratio);
    Ok(Telemetry {
        provider: Some(provider),
    })
}
