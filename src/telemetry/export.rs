//! Span export that never slows a call: finished spans go into a bounded queue with a
//! non-blocking send (a full queue drops the span and counts it), and a thread of its own
//! batches them to the exporter (OTLP over HTTP).

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::mpsc;

/// How spans are batched (the OpenTelemetry batch processor's `OTEL_BSP_*` variables).
#[derive(Debug, Clone, PartialEq)]
pub struct ExportConfig {
    /// Spans waiting for export at most; more are dropped (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048).
    pub max_queue: usize,
    /// Spans per export request at most (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, 512).
    pub max_batch: usize,
    /// How long a span waits for its batch to fill (`OTEL_BSP_SCHEDULE_DELAY`, ms, 1000).
    pub delay: Duration,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            max_queue: 2048,
            max_batch: 512,
            delay: Duration::from_secs(1),
        }
    }
}

impl ExportConfig {
    /// From the `OTEL_BSP_*` variables; a value that does not parse is an error.
    pub fn from_env() -> anyhow::Result<ExportConfig> {
        let d = ExportConfig::default();
        let read = |name: &str, default: u64| -> anyhow::Result<u64> {
            match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| anyhow::anyhow!("{name} must be a positive integer, not `{v}`")),
                _ => Ok(default),
            }
        };
        let max_queue = read("OTEL_BSP_MAX_QUEUE_SIZE", d.max_queue as u64)? as usize;
        let max_batch =
            (read("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", d.max_batch as u64)? as usize).min(max_queue);
        let delay =
            Duration::from_millis(read("OTEL_BSP_SCHEDULE_DELAY", d.delay.as_millis() as u64)?);
        Ok(ExportConfig {
            max_queue,
            max_batch,
            delay,
        })
    }
}

/// What became of finished spans: `exported`, `dropped` (the queue was full), `failed` (the
/// exporter refused the batch or could not reach the collector).
pub fn span_counter() -> &'static IntCounterVec {
    static SPANS: OnceLock<IntCounterVec> = OnceLock::new();
    SPANS.get_or_init(|| {
        IntCounterVec::new(
            Opts::new(
                "iace_trace_spans_total",
                "Finished spans by outcome: exported, dropped (export queue full), failed",
            ),
            &["outcome"],
        )
        .expect("valid metric")
    })
}

/// Registers the export counters in `registry`.
pub fn register(registry: &Registry) -> prometheus::Result<()> {
    registry.register(Box::new(span_counter().clone()))
}

enum Control {
    Flush(std::sync::mpsc::Sender<OTelSdkResult>),
    Shutdown(std::sync::mpsc::Sender<OTelSdkResult>),
}

/// The processor: a bounded queue in front of a thread that exports batches.
#[derive(Debug)]
pub struct BoundedProcessor {
    spans: mpsc::Sender<SpanData>,
    control: mpsc::UnboundedSender<Control>,
}

impl BoundedProcessor {
    /// Starts the export thread.
    pub fn start<E: SpanExporter + 'static>(
        exporter: E,
        config: ExportConfig,
    ) -> std::io::Result<BoundedProcessor> {
        let (spans, rx) = mpsc::channel(config.max_queue.max(1));
        let (control, control_rx) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("iace-span-export".into())
            .spawn(move || runtime.block_on(export_loop(exporter, config, rx, control_rx)))?;
        Ok(BoundedProcessor { spans, control })
    }

    fn ask(
        &self,
        make: fn(std::sync::mpsc::Sender<OTelSdkResult>) -> Control,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (tx, rx) = std::sync::mpsc::channel();
        self.control
            .send(make(tx))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        rx.recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))?
    }
}

async fn export_loop<E: SpanExporter>(
    mut exporter: E,
    config: ExportConfig,
    mut spans: mpsc::Receiver<SpanData>,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let counter = span_counter();
    let mut batch: Vec<SpanData> = Vec::with_capacity(config.max_batch);
    let mut tick = tokio::time::interval(config.delay);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            msg = control.recv() => {
                // Everything queued before the request goes with it.
                while let Ok(span) = spans.try_recv() {
                    batch.push(span);
                }
                let mut result = Ok(());
                for chunk in std::mem::take(&mut batch).chunks(config.max_batch) {
                    if let Err(e) = export(counter, &exporter, chunk.to_vec()).await {
                        result = Err(e);
                    }
                }
                match msg {
                    Some(Control::Flush(ack)) => {
                        let _ = ack.send(result);
                    }
                    Some(Control::Shutdown(ack)) => {
                        let _ = exporter.shutdown();
                        let _ = ack.send(result);
                        return;
                    }
                    None => return,
                }
            }
            span = spans.recv() => {
                let Some(span) = span else { return };
                batch.push(span);
                if batch.len() >= config.max_batch {
                    let _ = export(counter, &exporter, std::mem::take(&mut batch)).await;
                    tick.reset();
                }
            }
            _ = tick.tick() => {
                if !batch.is_empty() {
                    let _ = export(counter, &exporter, std::mem::take(&mut batch)).await;
                }
            }
        }
    }
}

/// Exports one batch and counts what became of it.
async fn export<E: SpanExporter>(
    counter: &IntCounterVec,
    exporter: &E,
    batch: Vec<SpanData>,
) -> OTelSdkResult {
    let n = batch.len() as u64;
    if n == 0 {
        return Ok(());
    }
    let result = exporter.export(batch).await;
    match &result {
        Ok(()) => counter.with_label_values(&["exported"]).inc_by(n),
        Err(e) => {
            counter.with_label_values(&["failed"]).inc_by(n);
            tracing::debug!(error = %e, spans = n, "span export failed");
        }
    }
    result
}

impl SpanProcessor for BoundedProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.spans.try_send(span).is_err() {
            span_counter().with_label_values(&["dropped"]).inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Control::Flush, Duration::from_secs(10))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.ask(Control::Shutdown, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;

    /// An exporter that holds its first call until released, and keeps what it got.
    #[derive(Debug, Clone)]
    struct Held {
        got: Arc<Mutex<Vec<String>>>,
        gate: Arc<tokio::sync::Semaphore>,
    }

    impl SpanExporter for Held {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let _permit = self.gate.acquire().await;
            self.got
                .lock()
                .unwrap()
                .extend(batch.into_iter().map(|s| s.name.into_owned()));
            Ok(())
        }
    }

    #[test]
    fn a_stuck_collector_drops_spans_and_counts_them_but_never_blocks() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let exporter = Held {
            got: got.clone(),
            gate: gate.clone(),
        };
        let processor = BoundedProcessor::start(
            exporter,
            ExportConfig {
                max_queue: 4,
                max_batch: 1,
                delay: Duration::from_secs(3600),
            },
        )
        .unwrap();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build();
        let tracer = provider.tracer("test");
        let dropped = || span_counter().with_label_values(&["dropped"]).get();
        let before = dropped();
        // The exporter is stuck on its first batch: at most that one and four queued are
        // kept; ending 100 spans returns at once and drops the rest.
        for i in 0..100 {
            let mut span = tracer.start(format!("s{i}"));
            span.end();
        }
        assert!(dropped() - before >= 95, "{}", dropped() - before);
        gate.add_permits(1000);
        provider.force_flush().unwrap();
        let kept = got.lock().unwrap().clone();
        assert!((1..=5).contains(&kept.len()), "{kept:?}");
        assert_eq!(kept[0], "s0");
        provider.shutdown().unwrap();
    }
}
