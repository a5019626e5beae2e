//! Benchmark: what tracing costs per conversation turn, exporter off against on, in one run.
//!
//! Each turn does the tracing work a server does for a turn of a call: four journal entries
//! (the caller's words, their sentiment, the agent's words, the turn's latency), each with its
//! journal-write span and drawn into the call's trace (the turn's span and its six stage
//! spans come from the `turn_latency` entry), and the model request's client span in the
//! turn's context (its attributes, first-token event, token counts and the `traceparent` and
//! `x-request-id` headers formatted for the wire); every `--turns-per-call` turns the call ends
//! and its root span is written. Phases alternate, tracing off (no exporter: what a server
//! without `OTEL_EXPORTER_OTLP_ENDPOINT` runs) and on (OTLP/HTTP protobuf through the bounded
//! queue to a collector in a child process, this binary with `--sink`, which counts what it
//! receives), `--rounds` times each, `--turns` turns per phase at `--rate` turns a second (a
//! busy node: 2,000 turns/s is 10,000 calls each speaking every 5 s; `--rate 0`: back to back,
//! which needs an export queue (`--queue`, spans) that holds a phase's spans to drop none).
//!
//! Reports per phase kind: the time a turn's tracing adds on the call's path (the turn's work
//! is synchronous: spans made, ended and queued), and this process's CPU per turn including
//! the export thread (batching and encoding, HTTP to the collector); the difference is the
//! exporter's overhead per turn. Also: spans per turn, spans exported, dropped and failed,
//! and the collector's count of requests and bytes.
//!
//! ```text
//! cargo run --release --example trace_overhead -- --turns 20000 --rate 2000 --rounds 3
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone as _, Utc};
use iace::telemetry::{self, ClientSpan, ExportConfig, JournalTraces};
use iace_actors::machine::record::{ConversationRecord, Speaker};
use iace_actors::machine::{Call, CallSpec, CallStatus, Direction, EndReason, Event, PhoneNumber};
use iace_actors::ports::sentiment::SentimentLabel;
use iace_actors::ports::{CallTraces as _, JournalEntry};
use opentelemetry::KeyValue;
use uuid::Uuid;

mod common;
use common::{arg, cpu_ticks, percentile, spawn_self};

/// The collector: answers every export with 200 and counts requests and bytes; prints its
/// address, then the counts when its stdin closes.
async fn sink() -> anyhow::Result<()> {
    use axum::routing::post;
    let requests = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let (r, b) = (requests.clone(), bytes.clone());
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| async move {
            r.fetch_add(1, Ordering::Relaxed);
            b.fetch_add(body.len() as u64, Ordering::Relaxed);
            axum::http::StatusCode::OK
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    // Until stdin closes.
    tokio::task::spawn_blocking(|| std::io::stdin().lines().count()).await?;
    println!(
        "{} {}",
        requests.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed)
    );
    Ok(())
}

fn call(n: u64) -> Call {
    let id = Uuid::from_u64_pair(0x0191_f0d3_5c2a_7b7e, n);
    let t0 = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
    Call {
        spec: CallSpec {
            id,
            organization_id: Uuid::from_u64_pair(1, 1),
            direction: Direction::Outbound,
            from: PhoneNumber::parse("+14155550199").unwrap(),
            to: PhoneNumber::parse("+14155550142").unwrap(),
            agent_id: Uuid::from_u64_pair(2, 2),
            customer_id: None,
            metadata: serde_json::Value::Null,
            ring_timeout_secs: 30,
            max_duration_secs: 600,
            inbound_leg_id: None,
        },
        status: CallStatus::InProgress,
        end_reason: None,
        carrier_call_id: Some("v3:leg".into()),
        version: 10,
        owner_epoch: 1,
        deadline: None,
        created_at: t0,
        updated_at: t0,
        ringing_at: Some(t0),
        answered_at: Some(t0 + chrono::Duration::seconds(2)),
        ended_at: None,
        release_pending: false,
        stray_legs: Vec::new(),
    }
}

/// A turn's journal entries.
fn entries(call: &Call, turn: u32) -> Vec<JournalEntry> {
    let at = call.created_at + chrono::Duration::seconds(i64::from(turn) * 5);
    let segment = |speaker, text: &str| ConversationRecord::Segment {
        speaker,
        text: text.into(),
        start_ms: 1000,
        end_ms: 2000,
        confidence: 0.9,
        interrupted: false,
        turn,
    };
    [
        segment(Speaker::Caller, "Where is my order A123?"),
        ConversationRecord::Sentiment {
            turn,
            score: -0.1,
            label: SentimentLabel::Neutral,
            source: "groq".into(),
            degraded: false,
        },
        segment(Speaker::Agent, "It arrives on Thursday."),
        ConversationRecord::TurnLatency {
            turn,
            stt_us: 120_000,
            holdoff_us: 300_000,
            llm_first_token_us: 200_000,
            llm_stream_us: 40_000,
            tts_first_audio_us: 100_000,
            total_us: 700_000,
            engine_us: 2_000,
            saved_us: 0,
        },
    ]
    .into_iter()
    .enumerate()
    .map(|(i, record)| JournalEntry {
        call_id: call.spec.id,
        seq: call.version + i as i64,
        at,
        event: Event::Conversation { record },
    })
    .collect()
}

/// The tracing work of one turn; returns the spans it made.
fn turn(traces: &JournalTraces, call: &Call, n: u32, entries: &[JournalEntry]) -> usize {
    for entry in entries {
        let _write = telemetry::context::journal_write_spans(std::iter::once(call.spec.id), 1);
        traces.applied(call, entry, false);
    }
    let _cx = telemetry::turn_context(call.spec.id, n).attach();
    let mut chat = ClientSpan::start(
        "chat llama-3.3-70b-versatile",
        "POST",
        "https://api.groq.com/openai/v1/chat/completions",
        "groq",
    );
    chat.set(KeyValue::new("gen_ai.operation.name", "chat"));
    chat.set(KeyValue::new("gen_ai.provider.name", "groq"));
    chat.set(KeyValue::new(
        "gen_ai.request.model",
        "llama-3.3-70b-versatile",
    ));
    let headers = chat.headers();
    std::hint::black_box(&headers);
    chat.status(200);
    chat.set(KeyValue::new("gen_ai.response.time_to_first_chunk", 0.2));
    chat.event("gen_ai.first_token", Vec::new());
    chat.set(KeyValue::new("gen_ai.usage.input_tokens", 900_i64));
    chat.set(KeyValue::new("gen_ai.usage.output_tokens", 40_i64));
    chat.end();
    // 4 journal writes + the turn and its 6 stages + the model request.
    4 + 7 + 1
}

struct Phase {
    on: bool,
    turns: usize,
    path_ns: Vec<u64>,
    cpu_ticks: u64,
    spans: usize,
}

fn run_phase(on: bool, turns: usize, rate: usize, per_call: u32, first_call: u64) -> Phase {
    let traces = JournalTraces;
    let mut path_ns = Vec::with_capacity(turns);
    let mut spans = 0;
    let cpu = cpu_ticks("self");
    let started = Instant::now();
    let mut c = call(first_call);
    let mut calls = first_call;
    let mut made = 0u32;
    let mut prepared = entries(&c, 1);
    let every = Duration::from_secs(1) / u32::try_from(rate.max(1)).unwrap_or(u32::MAX);
    for i in 0..turns {
        // Turns at a steady rate, as calls bring them (`--rate 0`: back to back).
        let due = started + every * u32::try_from(i).unwrap_or(u32::MAX);
        if let Some(wait) = due
            .checked_duration_since(Instant::now())
            .filter(|_| rate > 0)
        {
            std::thread::sleep(wait);
        }
        made += 1;
        let t = Instant::now();
        let made_spans = turn(&traces, &c, made, &prepared);
        if on {
            spans += made_spans;
        }
        if made == per_call {
            let mut ended = c.clone();
            ended.status = CallStatus::Completed;
            ended.end_reason = Some(EndReason::NormalClearing);
            ended.ended_at = Some(c.created_at + chrono::Duration::seconds(60));
            traces.applied(&ended, &prepared[0], true);
            if on {
                spans += 1;
            }
        }
        path_ns.push(t.elapsed().as_nanos() as u64);
        if made == per_call {
            calls += 1;
            c = call(calls);
            made = 0;
        }
        prepared = entries(&c, made + 1);
    }
    Phase {
        on,
        turns,
        path_ns,
        cpu_ticks: 0,
        spans,
    }
    .with_cpu(cpu_ticks("self") - cpu)
}

impl Phase {
    fn with_cpu(mut self, ticks: u64) -> Phase {
        self.cpu_ticks = ticks;
        self
    }
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if std::env::args().any(|a| a == "--sink") {
        return runtime.block_on(sink());
    }
    let turns = arg("--turns", 20_000);
    let rate = arg("--rate", 2_000);
    let queue = arg("--queue", ExportConfig::default().max_queue);
    let rounds = arg("--rounds", 3);
    let per_call = u32::try_from(arg("--turns-per-call", 3).max(1)).expect("a count");
    let ticks_per_sec = 100.0; // USER_HZ on Linux.

    let (mut child, mut lines, endpoint) = runtime.block_on(spawn_self(&["--sink".to_owned()]))?;
    println!("collector: {endpoint} (child process)");
    println!(
        "{turns} turns per phase at {rate} turns/s (0: back to back), {rounds} rounds of off \
         then on, a call ends every {per_call} turns, export queue {queue} spans"
    );

    let mut phases = Vec::new();
    let mut next_call = 0u64;
    for _ in 0..rounds {
        for on in [false, true] {
            let guard = if on {
                let config = ExportConfig {
                    max_queue: queue,
                    ..ExportConfig::default()
                };
                Some(telemetry::install(&endpoint, 1.0, config)?)
            } else {
                None
            };
            let mut phase = run_phase(on, turns, rate, per_call, next_call);
            next_call += (turns as u64).div_ceil(u64::from(per_call)) + 1;
            if let Some(g) = guard {
                // What the phase queued is exported within it: its CPU is the phase's.
                let cpu = cpu_ticks("self");
                g.flush()?;
                telemetry::uninstall();
                drop(g);
                phase.cpu_ticks += cpu_ticks("self") - cpu;
            }
            phases.push(phase);
        }
    }

    let report = |on: bool| {
        let mut path: Vec<u64> = phases
            .iter()
            .filter(|p| p.on == on)
            .flat_map(|p| p.path_ns.iter().copied())
            .collect();
        path.sort_unstable();
        let n: usize = phases.iter().filter(|p| p.on == on).map(|p| p.turns).sum();
        let cpu: u64 = phases
            .iter()
            .filter(|p| p.on == on)
            .map(|p| p.cpu_ticks)
            .sum();
        let spans: usize = phases.iter().filter(|p| p.on == on).map(|p| p.spans).sum();
        let mean = path.iter().sum::<u64>() as f64 / path.len().max(1) as f64;
        let cpu_us = cpu as f64 / ticks_per_sec * 1e6 / n.max(1) as f64;
        println!(
            "tracing {:>3}: on the call's path per turn mean {:>6.2} µs, p50 {:>6.2} µs, p99 {:>6.2} µs; \
             process CPU per turn {:>6.2} µs (export thread included); {:.1} spans per turn",
            if on { "on" } else { "off" },
            mean / 1000.0,
            percentile(&path, 50.0) as f64 / 1000.0,
            percentile(&path, 99.0) as f64 / 1000.0,
            cpu_us,
            spans as f64 / n.max(1) as f64,
        );
        (mean / 1000.0, cpu_us)
    };
    let (off_path, off_cpu) = report(false);
    let (on_path, on_cpu) = report(true);
    println!(
        "exporter overhead per turn: {:.2} µs on the call's path, {:.2} µs of CPU",
        on_path - off_path,
        on_cpu - off_cpu
    );
    let counter = telemetry::export::span_counter();
    println!(
        "spans exported {}, dropped {}, failed {}",
        counter.with_label_values(&["exported"]).get(),
        counter.with_label_values(&["dropped"]).get(),
        counter.with_label_values(&["failed"]).get()
    );
    let received = runtime.block_on(async {
        drop(child.stdin.take());
        let line = lines.next_line().await?.unwrap_or_default();
        let _ = child.wait().await;
        anyhow::Ok(line)
    })?;
    let mut parts = received.split_whitespace();
    println!(
        "collector received {} export requests, {} bytes",
        parts.next().unwrap_or("?"),
        parts.next().unwrap_or("?")
    );
    Ok(())
}
