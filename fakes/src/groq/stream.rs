//! Streaming answers (section 4, `"stream": true`): paces a [`Plan`] out as SSE events
//! `data: <chat.completion.chunk>\n\n` ending in `data: [DONE]\n\n`, and notices when the
//! client goes away. Also builds the JSON both answer shapes share (`usage`).
//!
//! The body is fed through a channel by a task of its own, so pacing does not depend on how
//! hyper polls the body, and a dropped connection shows up as a closed channel: hyper drops the
//! body when the socket fails, the receiver goes with it, and the task records `cancelled`.
//! That is noticed at the next write at the latest, or during a pause as soon as hyper drops
//! the body.

use crate::fake::CancelRequest;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::reply::{fragments, Plan};
use super::state::Shared;
use super::ToolCallChunking;

/// Pinned fingerprint: real ones change with deployments, tests only need one to be there.
pub(crate) const SYSTEM_FINGERPRINT: &str = "fp_fake9groq";

/// Identity of one answer, repeated in every chunk.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    /// `chatcmpl-...`, the same in every chunk of a stream.
    pub(crate) completion_id: String,
    /// `req_...`, `x_groq.id`.
    pub(crate) request_id: String,
    /// Unix seconds.
    pub(crate) created: i64,
    pub(crate) model: String,
    /// `stream_options.include_usage`: also put OpenAI's top-level `usage` on the final chunk.
    pub(crate) include_usage: bool,
}

/// One stream to pace out.
pub(crate) struct Job {
    pub(crate) shared: Arc<Shared>,
    /// The request's index in the log.
    pub(crate) idx: usize,
    pub(crate) plan: Plan,
    pub(crate) meta: Meta,
    /// Break off with an error line after about half the content tokens.
    pub(crate) mid_stream_error: bool,
    pub(crate) ttft: Duration,
    pub(crate) inter_token: Duration,
    pub(crate) received_at: Instant,
}

/// Room for a burst of events; pacing, not this bound, decides the rate.
const CHANNEL: usize = 64;

/// Starts pacing `job` and returns the response body it feeds.
pub(crate) fn spawn(job: Job) -> Body {
    let (tx, rx) = mpsc::channel(CHANNEL);
    let stop = job.shared.stop.clone();
    super::spawn_until_stopped(&stop, async move {
        if produce(&job, &tx).await.is_err() {
            job.shared.cancel(job.idx);
        }
    });
    body(rx)
}

/// A body that sends headers and then nothing until the client leaves (recorded as cancelled)
/// or the fake stops.
pub(crate) fn stall(shared: Arc<Shared>, idx: usize) -> Body {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let stop = shared.stop.clone();
    super::spawn_until_stopped(&stop, async move {
        tx.closed().await;
        shared.cancel(idx);
    });
    body(rx)
}

fn body(rx: mpsc::Receiver<Bytes>) -> Body {
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    }))
}

/// The client is gone.
struct Gone;

async fn produce(job: &Job, tx: &mpsc::Sender<Bytes>) -> Result<(), Gone> {
    let Job {
        shared,
        idx,
        plan,
        meta,
        ..
    } = job;
    let idx = *idx;
    let mut pacer = Pacer {
        due: job.received_at,
    };
    pacer.pause(tx, job.ttft).await?;
    let started = Instant::now();
    // The first chunk announces the role and carries `x_groq.id` (section 4 example).
    let role = json!({"role": "assistant", "content": ""});
    send(
        tx,
        chunk(meta, role, None, Some(json!({"id": meta.request_id}))),
    )
    .await?;

    let cut = if job.mid_stream_error {
        plan.tokens.len() / 2
    } else {
        usize::MAX
    };
    let mut deltas = 0usize;
    for (i, token) in plan.tokens.iter().enumerate() {
        if i == cut {
            break;
        }
        if deltas > 0 {
            pacer.pause(tx, job.inter_token).await?;
        }
        deltas += 1;
        send(tx, chunk(meta, json!({"content": token}), None, None)).await?;
        let now = Instant::now();
        shared.update(idx, |r| {
            r.tokens_sent += 1;
            r.first_token_at.get_or_insert(now);
        });
    }

    if job.mid_stream_error {
        if deltas > 0 {
            pacer.pause(tx, job.inter_token).await?;
        }
        send(tx, event(&mid_stream_error())).await?;
        shared.update(idx, |r| {
            r.completed = true;
            r.finished_at = Some(Instant::now());
        });
        return Ok(());
    }

    for (index, call) in plan.tool_calls.iter().enumerate() {
        if deltas > 0 {
            pacer.pause(tx, job.inter_token).await?;
        }
        deltas += 1;
        let pieces = fragments(&call.arguments, plan.chunking);
        let first_arguments = match plan.chunking {
            ToolCallChunking::Whole => call.arguments.as_str(),
            ToolCallChunking::Split { .. } => "",
        };
        let head = json!({"tool_calls": [{
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": first_arguments},
        }]});
        send(tx, chunk(meta, head, None, None)).await?;
        for piece in pieces {
            pacer.pause(tx, job.inter_token).await?;
            deltas += 1;
            let delta = json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]});
            send(tx, chunk(meta, delta, None, None)).await?;
        }
    }

    let usage = usage(plan, job.received_at, started, Instant::now());
    let x_groq = json!({"id": meta.request_id, "usage": usage});
    let mut last = chunk_value(meta, json!({}), Some(plan.finish_reason), Some(x_groq));
    if meta.include_usage {
        last["usage"] = usage;
    }
    send(tx, event(&last)).await?;
    send(tx, Bytes::from_static(b"data: [DONE]\n\n")).await?;
    let finish = plan.finish_reason.to_owned();
    shared.update(idx, |r| {
        r.completed = true;
        r.finish_reason = Some(finish);
        r.finished_at = Some(Instant::now());
    });
    Ok(())
}

/// Paces a stream on a schedule counted from the request's arrival, so the timer's rounding
/// (up to a millisecond per wait) does not add up over the tokens: token `k` is due at
/// `received + ttft + k * inter_token`, whatever the earlier waits overshot.
struct Pacer {
    due: Instant,
}

impl Pacer {
    /// Waits until `d` after the previous due time, or fails as soon as the body is dropped.
    async fn pause(&mut self, tx: &mpsc::Sender<Bytes>, d: Duration) -> Result<(), Gone> {
        self.due += d;
        if d.is_zero() || self.due <= Instant::now() {
            return if tx.is_closed() { Err(Gone) } else { Ok(()) };
        }
        tokio::select! {
            () = tokio::time::sleep_until(self.due.into()) => Ok(()),
            () = tx.closed() => Err(Gone),
        }
    }
}

async fn send(tx: &mpsc::Sender<Bytes>, bytes: Bytes) -> Result<(), Gone> {
    tx.send(bytes).await.map_err(|_| Gone)
}

fn chunk(meta: &Meta, delta: Value, finish: Option<&str>, x_groq: Option<Value>) -> Bytes {
    event(&chunk_value(meta, delta, finish, x_groq))
}

/// One `chat.completion.chunk` with a single choice.
fn chunk_value(meta: &Meta, delta: Value, finish: Option<&str>, x_groq: Option<Value>) -> Value {
    let mut v = json!({
        "id": meta.completion_id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    });
    if let Some(x) = x_groq {
        v["x_groq"] = x;
    }
    v
}

/// `data: <json>` and the blank line; the JSON is one line, as on the wire.
fn event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// The in-stream error line's payload. Its wording is [UNVERIFIED]; section 4 only fixes the
/// `{"error":{..}}` envelope, which is what clients (and the SDK) key on.
fn mid_stream_error() -> Value {
    json!({"error": {
        "message": "Internal server error: the model stopped generating unexpectedly. Please retry your request.",
        "type": "internal_server_error",
        "code": "internal_server_error",
    }})
}

/// Groq's usage object. Times are measured, in seconds: `prompt_time` is request to first
/// token, `completion_time` first token to end; the fake has no queue.
pub(crate) fn usage(plan: &Plan, received: Instant, first: Instant, end: Instant) -> Value {
    let prompt_time = first.saturating_duration_since(received).as_secs_f64();
    let completion_time = end.saturating_duration_since(first).as_secs_f64();
    json!({
        "queue_time": 0.0,
        "prompt_tokens": plan.prompt_tokens,
        "prompt_time": round_ms(prompt_time),
        "completion_tokens": plan.completion_tokens,
        "completion_time": round_ms(completion_time),
        "total_tokens": plan.prompt_tokens.saturating_add(plan.completion_tokens),
        "total_time": round_ms(prompt_time + completion_time),
    })
}

fn round_ms(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}
