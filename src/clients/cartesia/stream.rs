//! The task that owns one call's Cartesia socket (vendor-protocols.md sections 3.2 and 3.3):
//! contexts, continuations, cancels, and the socket's life across drops, stalls and idle
//! closes.
//!
//! Contexts: the first non-empty piece of a [`TtsInput::Speak`] opens a Cartesia context
//! named by the session's context id; later pieces go out with the same `context_id` and
//! `"continue": true`, and the piece with `last` carries `"continue": false`. A `last` with
//! no text sends the SDK's `no_more_inputs` (`"transcript":"","continue":false`); a context
//! that never had text is reported `Done` without touching the wire. Pieces are sent verbatim:
//! Cartesia concatenates them, so the session keeps the spaces between sentences.
//!
//! Ended contexts (done, failed, cancelled) stay dead: text that still arrives for them (an
//! LLM streaming on after a barge-in) is dropped here and never restarts speech, and vendor
//! messages naming a context not in flight are dropped too — that is what makes a cancel
//! silent at once, even for audio already on the wire.
//!
//! The socket: a context owed audio (its input is closed, or a piece went out after the last
//! message heard for it) that hears nothing for `stall_timeout` means the socket is stalled.
//! A stall, a drop (an error or an end without a close frame) or a close frame while contexts
//! are in flight fails every context in flight (`ContextFailed`), reopens the socket through
//! the breaker and the retry policy and reports `Reconnected`. A close frame with nothing in
//! flight is Cartesia's idle close (about five minutes of silence): the next `Speak` reopens
//! lazily and nobody hears of it. A context sent into a socket that was closing cleanly and
//! that heard nothing back is replayed on the new socket instead of failing (the idle close
//! raced the first words of an utterance). The task gives up with `Failed` — the last event,
//! after which both channels close — when the reconnect budget is spent or a reconnection
//! fails (breaker open, refused handshake, retries exhausted).
//!
//! While it (re)connects, the task keeps draining the bounded input channel into a backlog
//! (up to the channel's own capacity), so the session's `try_send` keeps working and a
//! `Close` is obeyed at once.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use iace_actors::breaker::{CallOutcome, PermitGuard};
use iace_actors::ports::voice::{TtsEvent, TtsInput, TtsOptions};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::{debug, info, warn};

use super::wire::{self, ServerMessage};
use super::{connect, CartesiaConfig, CartesiaMetrics, Socket, INPUT_CAPACITY};

/// How long a clean close of our own waits for the vendor's close reply.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long closing a socket we are abandoning (stalled, or closed by the vendor) may take.
const ABANDON_GRACE: Duration = Duration::from_millis(250);
/// Ended context ids remembered to drop their late text (a call has far fewer utterances).
const ENDED_MEMORY: usize = 1024;

/// Why the socket is being replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// An error or an end without a close frame.
    Dropped,
    /// A context owed audio heard nothing for `stall_timeout`, or a write blocked that long.
    Stalled,
    /// The vendor sent a close frame while contexts were in flight.
    Closed {
        /// Code 1000: an orderly end (the idle close) rather than a server error.
        normal: bool,
    },
}

impl Cause {
    fn label(self) -> &'static str {
        match self {
            Cause::Dropped => "dropped",
            Cause::Stalled => "stalled",
            Cause::Closed { .. } => "closed",
        }
    }
}

/// A broken socket.
#[derive(Debug)]
struct Broken {
    cause: Cause,
    reason: String,
}

/// Why the task ends.
#[derive(Debug)]
enum End {
    /// `Close`, or the session dropped the input sender.
    Close,
    /// The session dropped the event receiver.
    Gone,
    /// The adapter gives up.
    Failed(String),
}

/// What interrupts the normal loop.
#[derive(Debug)]
enum Stop {
    Broken(Broken),
    End(End),
}

impl From<End> for Stop {
    fn from(end: End) -> Self {
        Stop::End(end)
    }
}

impl From<Broken> for Stop {
    fn from(broken: Broken) -> Self {
        Stop::Broken(broken)
    }
}

/// A context in flight: created by its first `Speak`, gone once it ends.
struct Context {
    id: String,
    /// A request of it went out on the current socket (`None`: no text yet).
    first_sent: Option<Instant>,
    last_sent: Option<Instant>,
    last_heard: Option<Instant>,
    /// The piece with `last` was sent (or queued to be).
    input_closed: bool,
    /// From the first request to the first chunk.
    first_chunk: Option<Duration>,
    /// The breaker permit that judges this context (`None`: no breaker, or it refused and
    /// the context goes out unjudged on the socket we already have).
    guard: Option<PermitGuard>,
    /// The requests sent, kept until the vendor answers anything, to replay them on a new
    /// socket if the old one was closing when they went out.
    replay: Option<Vec<String>>,
}

impl Context {
    fn new(id: String) -> Self {
        Context {
            id,
            first_sent: None,
            last_sent: None,
            last_heard: None,
            input_closed: false,
            first_chunk: None,
            guard: None,
            replay: Some(Vec::new()),
        }
    }

    /// Since when the vendor owes this context a message, if it does.
    fn owed_since(&self) -> Option<Instant> {
        let sent = self.last_sent?;
        match self.last_heard {
            None => Some(sent),
            Some(heard) if sent > heard => Some(sent),
            Some(heard) if self.input_closed => Some(heard),
            Some(_) => None,
        }
    }

    fn heard(&mut self) {
        self.last_heard = Some(Instant::now());
        self.replay = None;
    }

    /// Reports the breaker verdict (a context without a permit is not judged).
    fn judge(&mut self, outcome: impl FnOnce(Duration) -> CallOutcome) {
        if let Some(guard) = self.guard.take() {
            let elapsed = self.first_chunk.unwrap_or_else(|| guard.elapsed());
            guard.finish(outcome(elapsed));
        }
    }
}

/// Ids of ended contexts, oldest forgotten first.
#[derive(Default)]
struct Ended {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Ended {
    fn insert(&mut self, id: String) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
            if self.order.len() > ENDED_MEMORY {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }
}

/// One call's speech stream.
pub(super) struct StreamTask {
    config: Arc<CartesiaConfig>,
    metrics: Option<CartesiaMetrics>,
    model_id: String,
    voice_id: String,
    language: Option<String>,
    speed: Option<f32>,
    /// `None` after an idle close, until the next `Speak`.
    socket: Option<Socket>,
    input: mpsc::Receiver<TtsInput>,
    events: mpsc::Sender<TtsEvent>,
    /// In opening order (a handful at most: one utterance and maybe a cancelled one).
    contexts: Vec<Context>,
    ended: Ended,
    /// Inputs that arrived while (re)connecting, handled before anything newer.
    backlog: VecDeque<TtsInput>,
    /// Reconnections since a context last finished (the budget is `max_reconnects`).
    reconnects: u32,
}

impl StreamTask {
    pub(super) fn new(
        config: Arc<CartesiaConfig>,
        metrics: Option<CartesiaMetrics>,
        options: TtsOptions,
        socket: Socket,
        input: mpsc::Receiver<TtsInput>,
        events: mpsc::Sender<TtsEvent>,
    ) -> Self {
        let model_id = if options.model_id.is_empty() {
            config.model_id.clone()
        } else {
            options.model_id
        };
        StreamTask {
            model_id,
            voice_id: options.voice_id,
            language: Some(options.language).filter(|l| !l.is_empty()),
            // Section 3.2's range; anything else would fail every context with a 400.
            speed: options
                .speed
                .filter(|s| s.is_finite())
                .map(|s| s.clamp(0.6, 1.5)),
            config,
            metrics,
            socket: Some(socket),
            input,
            events,
            contexts: Vec::new(),
            ended: Ended::default(),
            backlog: VecDeque::new(),
            reconnects: 0,
        }
    }

    /// Serves the stream until it is closed or gives up; both channels close after.
    pub(super) async fn run(mut self) {
        let end = self.serve().await;
        self.finish(end).await;
    }

    async fn serve(&mut self) -> End {
        loop {
            let step = if let Some(input) = self.backlog.pop_front() {
                self.on_input(input).await
            } else {
                let deadline = self.stall_deadline();
                tokio::select! {
                    input = self.input.recv() => match input {
                        Some(input) => self.on_input(input).await,
                        None => Err(End::Close.into()),
                    },
                    message = next_message(&mut self.socket) => self.on_message(message).await,
                    () = sleep_until(deadline.map(|(at, _)| at)) => {
                        let (_, index) = deadline.expect("the sleep only ends with a deadline");
                        Err(self.stalled(index).into())
                    }
                }
            };
            match step {
                Ok(()) => {}
                Err(Stop::End(end)) => return end,
                Err(Stop::Broken(broken)) => {
                    if let Err(end) = self.recover(broken).await {
                        return end;
                    }
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Input

    async fn on_input(&mut self, input: TtsInput) -> Result<(), Stop> {
        match input {
            TtsInput::Speak {
                context,
                text,
                last,
            } => self.speak(context, text, last).await,
            TtsInput::Cancel { context } => self.cancel(context).await,
            TtsInput::Close => Err(End::Close.into()),
        }
    }

    async fn speak(&mut self, id: String, text: String, last: bool) -> Result<(), Stop> {
        if self.ended.contains(&id) {
            debug!(context = %id, "text for an ended context dropped");
            return Ok(());
        }
        let index = match self.find(&id) {
            Some(i) if self.contexts[i].input_closed => {
                warn!(context = %id, "text after the context's last piece dropped");
                return Ok(());
            }
            Some(i) => i,
            None => {
                self.contexts.push(Context::new(id.clone()));
                self.contexts.len() - 1
            }
        };
        let opened = self.contexts[index].first_sent.is_some();
        if text.is_empty() && !(last && opened) {
            if last {
                // Nothing was ever said: done without asking the vendor.
                let ctx = self.contexts.remove(index);
                self.end_context(ctx, "done");
                self.emit(TtsEvent::Done { context: id }).await?;
            }
            return Ok(());
        }
        if self.socket.is_none() {
            // Reopened only now: the socket was closed while idle.
            self.socket = Some(self.connect_draining().await?);
        }
        let request = wire::GenerationRequest {
            model_id: &self.model_id,
            transcript: &text,
            voice: wire::Voice::id(&self.voice_id),
            output_format: wire::OutputFormat::MULAW_8K,
            context_id: &id,
            continue_: !last,
            language: self.language.as_deref(),
            add_timestamps: true,
            max_buffer_delay_ms: self.config.max_buffer_delay_ms,
            generation_config: self.speed.map(|speed| wire::GenerationConfig { speed }),
        };
        let json = serde_json::to_string(&request).expect("requests serialize");
        // The context counts as in flight before the write, so a write that fails finds it.
        let now = Instant::now();
        let breaker = self.config.breaker.clone();
        let ctx = &mut self.contexts[index];
        if ctx.first_sent.is_none() {
            ctx.first_sent = Some(now);
            ctx.guard = breaker.and_then(|b| b.acquire().ok().map(|p| PermitGuard::new(b, p)));
        }
        ctx.last_sent = Some(now);
        ctx.input_closed = last;
        if let Some(replay) = &mut ctx.replay {
            replay.push(json.clone());
        }
        self.send(json).await
    }

    async fn cancel(&mut self, id: String) -> Result<(), Stop> {
        let Some(index) = self.find(&id) else {
            // Never spoken, or already ended: only make sure it stays silent.
            self.ended.insert(id);
            return Ok(());
        };
        let mut ctx = self.contexts.remove(index);
        let opened = ctx.first_sent.is_some();
        ctx.judge(|_| CallOutcome::Cancelled);
        self.end_context(ctx, "cancelled");
        if opened && self.socket.is_some() {
            let json = serde_json::to_string(&wire::CancelRequest {
                context_id: &id,
                cancel: true,
            })
            .expect("cancels serialize");
            self.send(json).await?;
        }
        Ok(())
    }

    /// Writes one message; a write that fails is a drop, one that blocks is a stall.
    async fn send(&mut self, json: String) -> Result<(), Stop> {
        let Some(socket) = self.socket.as_mut() else {
            return Ok(());
        };
        let stall = self.config.stall_timeout;
        match tokio::time::timeout(stall, socket.send(Message::text(json))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Broken {
                cause: Cause::Dropped,
                reason: format!("write failed: {e}"),
            }
            .into()),
            Err(_) => Err(Broken {
                cause: Cause::Stalled,
                reason: format!("write blocked for {} ms", stall.as_millis()),
            }
            .into()),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Vendor messages

    async fn on_message(&mut self, message: Option<Result<Message, WsError>>) -> Result<(), Stop> {
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                let (code, why) = frame
                    .map(|f| (f.code, f.reason.to_string()))
                    .unwrap_or((CloseCode::Status, String::new()));
                return self.closed_by_vendor(code, why).await;
            }
            Some(Ok(_)) => return Ok(()),
            Some(Err(e)) => {
                return Err(Broken {
                    cause: Cause::Dropped,
                    reason: format!("socket dropped: {e}"),
                }
                .into())
            }
            None => {
                return Err(Broken {
                    cause: Cause::Dropped,
                    reason: "socket ended without a close frame".to_owned(),
                }
                .into())
            }
        };
        let message = match serde_json::from_str::<ServerMessage>(text.as_str()) {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "unreadable cartesia message ignored");
                return Ok(());
            }
        };
        match message {
            ServerMessage::Chunk { context_id, data } => {
                let Some(index) = self.heard(context_id.as_deref()) else {
                    return Ok(());
                };
                let ctx = &mut self.contexts[index];
                if ctx.first_chunk.is_none() {
                    let elapsed = ctx.first_sent.map(|t| t.elapsed()).unwrap_or_default();
                    ctx.first_chunk = Some(elapsed);
                    if let Some(m) = &self.metrics {
                        m.first_chunk(elapsed);
                    }
                }
                let id = ctx.id.clone();
                match BASE64.decode(data.unwrap_or_default()) {
                    Ok(mulaw) if mulaw.is_empty() => Ok(()),
                    Ok(mulaw) => Ok(self.emit(TtsEvent::Audio { context: id, mulaw }).await?),
                    Err(e) => {
                        let reason = format!("undecodable audio: {e}");
                        self.fail_context(index, reason, true, |elapsed| CallOutcome::Failure {
                            elapsed,
                        })
                        .await
                    }
                }
            }
            ServerMessage::Timestamps {
                context_id,
                word_timestamps,
            } => {
                let Some(index) = self.heard(context_id.as_deref()) else {
                    return Ok(());
                };
                let words = word_timestamps.map(|w| w.into_words()).unwrap_or_default();
                if words.is_empty() {
                    return Ok(());
                }
                let context = self.contexts[index].id.clone();
                Ok(self.emit(TtsEvent::Words { context, words }).await?)
            }
            ServerMessage::Done { context_id } => {
                let Some(index) = self.heard(context_id.as_deref()) else {
                    return Ok(());
                };
                let mut ctx = self.contexts.remove(index);
                ctx.judge(|elapsed| CallOutcome::Success { elapsed });
                let context = ctx.id.clone();
                self.end_context(ctx, "done");
                self.reconnects = 0;
                Ok(self.emit(TtsEvent::Done { context }).await?)
            }
            ServerMessage::Error {
                context_id,
                status_code,
                title,
                message,
                error,
                error_code,
            } => {
                let detail = message.or(error).or(title).unwrap_or_default();
                let code = error_code.map(|c| format!(" ({c})")).unwrap_or_default();
                let status = status_code.map_or("error".to_owned(), |s| s.to_string());
                let reason = format!("cartesia {status}{code}: {detail}");
                let Some(index) = context_id.as_deref().and_then(|id| self.find(id)) else {
                    warn!(context = ?context_id, %reason, "cartesia error for no context in flight");
                    return Ok(());
                };
                // An `error` ends the context at the vendor (`done: true`).
                self.fail_context(index, reason, false, |elapsed| match status_code {
                    Some(429) => CallOutcome::RateLimited { retry_after: None },
                    // The request's fault: the vendor is fine.
                    Some(s) if (400..500).contains(&s) => CallOutcome::Success { elapsed },
                    _ => CallOutcome::Failure { elapsed },
                })
                .await
            }
            ServerMessage::Other => Ok(()),
        }
    }

    /// The index of the context in flight a message names, now marked as heard; `None` for
    /// anything else (cancelled, ended, unknown), whose messages are dropped.
    fn heard(&mut self, context_id: Option<&str>) -> Option<usize> {
        let index = self.find(context_id?)?;
        self.contexts[index].heard();
        Some(index)
    }

    /// A vendor close frame: the idle close when nothing is in flight (reopen lazily),
    /// otherwise a broken socket.
    async fn closed_by_vendor(&mut self, code: CloseCode, why: String) -> Result<(), Stop> {
        if let Some(mut socket) = self.socket.take() {
            // Sends tungstenite's queued close reply.
            let _ = tokio::time::timeout(ABANDON_GRACE, socket.close(None)).await;
        }
        let in_flight = self.contexts.iter().any(|c| c.first_sent.is_some());
        if !in_flight {
            info!(code = u16::from(code), reason = %why, "cartesia closed the idle socket; reopening on the next utterance");
            return Ok(());
        }
        Err(Broken {
            cause: Cause::Closed {
                normal: code == CloseCode::Normal,
            },
            reason: format!("closed {} {why}", u16::from(code))
                .trim_end()
                .to_owned(),
        }
        .into())
    }

    /// The stall of context `index`: the socket is considered dead.
    fn stalled(&self, index: usize) -> Broken {
        let ctx = &self.contexts[index];
        Broken {
            cause: Cause::Stalled,
            reason: format!(
                "stalled: no answer for context {} in {} ms",
                ctx.id,
                self.config.stall_timeout.as_millis()
            ),
        }
    }

    /// The earliest stall deadline among contexts owed audio, with its context.
    fn stall_deadline(&self) -> Option<(Instant, usize)> {
        self.contexts
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.owed_since().map(|t| (t + self.config.stall_timeout, i)))
            .min_by_key(|(at, _)| *at)
    }

    // -----------------------------------------------------------------------------------------
    // Context endings

    /// Ends context `index` with `ContextFailed`. `still_live`: the vendor has not ended it
    /// (it only sent something unusable), so it is cancelled there too.
    async fn fail_context(
        &mut self,
        index: usize,
        reason: String,
        still_live: bool,
        verdict: impl FnOnce(Duration) -> CallOutcome,
    ) -> Result<(), Stop> {
        let mut ctx = self.contexts.remove(index);
        ctx.judge(verdict);
        let context = ctx.id.clone();
        self.end_context(ctx, "failed");
        if still_live {
            let json = serde_json::to_string(&wire::CancelRequest {
                context_id: &context,
                cancel: true,
            })
            .expect("cancels serialize");
            self.send(json).await?;
        }
        Ok(self
            .emit(TtsEvent::ContextFailed { context, reason })
            .await?)
    }

    /// Forgets a context that ended (its guard already judged, or judged as failed here).
    fn end_context(&mut self, mut ctx: Context, outcome: &str) {
        ctx.judge(|elapsed| CallOutcome::Failure { elapsed });
        if let Some(m) = &self.metrics {
            m.context(outcome);
        }
        self.ended.insert(ctx.id);
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.contexts.iter().position(|c| c.id == id)
    }

    // -----------------------------------------------------------------------------------------
    // Reconnection

    /// Replaces a broken socket: fails the contexts in flight (except those a clean close
    /// may have swallowed, which are replayed), reconnects within the budget and reports it.
    async fn recover(&mut self, broken: Broken) -> Result<(), End> {
        let Broken { cause, reason } = broken;
        if let Some(mut socket) = self.socket.take() {
            if cause != Cause::Dropped {
                let _ = tokio::time::timeout(ABANDON_GRACE, socket.close(None)).await;
            }
        }
        let replayable = |c: &Context| {
            cause == (Cause::Closed { normal: true })
                && c.replay.as_ref().is_some_and(|r| !r.is_empty())
        };
        let mut failed = Vec::new();
        let mut kept = Vec::new();
        for ctx in std::mem::take(&mut self.contexts) {
            if ctx.first_sent.is_none() || replayable(&ctx) {
                kept.push(ctx);
            } else {
                failed.push(ctx);
            }
        }
        self.contexts = kept;
        let any_failed = !failed.is_empty();
        for mut ctx in failed {
            ctx.judge(|elapsed| CallOutcome::Failure { elapsed });
            let context = ctx.id.clone();
            self.end_context(ctx, cause.label());
            self.emit(TtsEvent::ContextFailed {
                context,
                reason: reason.clone(),
            })
            .await?;
        }
        // Only a clean close that swallowed nothing but unanswered requests goes unreported:
        // that is the idle close racing the first words of an utterance.
        let silent = cause == (Cause::Closed { normal: true }) && !any_failed;
        if !silent {
            if self.reconnects >= self.config.max_reconnects {
                if let Some(m) = &self.metrics {
                    m.reconnect(cause.label(), "failed");
                }
                return Err(End::Failed(format!(
                    "{reason}; gave up after {} reconnects",
                    self.reconnects
                )));
            }
            self.reconnects += 1;
        }
        let socket = match self.connect_draining().await {
            Ok(socket) => socket,
            Err(End::Failed(why)) => {
                if let Some(m) = &self.metrics {
                    m.reconnect(cause.label(), "failed");
                }
                return Err(End::Failed(format!("{reason}; reconnecting failed: {why}")));
            }
            Err(end) => return Err(end),
        };
        self.socket = Some(socket);
        if let Some(m) = &self.metrics {
            m.reconnect(cause.label(), "ok");
        }
        info!(%reason, silent, "cartesia socket reopened");
        if !silent {
            self.emit(TtsEvent::Reconnected { reason }).await?;
        }
        self.replay().await
    }

    /// Resends the requests of contexts that never heard back, on the new socket.
    async fn replay(&mut self) -> Result<(), End> {
        let mut requests = Vec::new();
        let now = Instant::now();
        for ctx in &mut self.contexts {
            if let Some(replay) = &ctx.replay {
                if !replay.is_empty() {
                    requests.extend(replay.iter().cloned());
                    ctx.last_sent = Some(now);
                }
            }
        }
        for json in requests {
            match self.send(json).await {
                Ok(()) => {}
                Err(Stop::End(end)) => return Err(end),
                // The new socket broke at once: the next read reports it.
                Err(Stop::Broken(_)) => break,
            }
        }
        Ok(())
    }

    /// Connects while draining the input into the backlog, so the session's `try_send` keeps
    /// working and a `Close` is obeyed at once.
    async fn connect_draining(&mut self) -> Result<Socket, End> {
        let config = self.config.clone();
        let metrics = self.metrics.clone();
        let connecting = connect(&config, metrics.as_ref());
        tokio::pin!(connecting);
        loop {
            let room = self.backlog.len() < INPUT_CAPACITY;
            tokio::select! {
                result = &mut connecting => {
                    return result.map_err(|e| End::Failed(e.to_string()));
                }
                input = self.input.recv(), if room => match input {
                    None | Some(TtsInput::Close) => return Err(End::Close),
                    Some(input) => self.backlog.push_back(input),
                },
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Ending

    async fn emit(&self, event: TtsEvent) -> Result<(), End> {
        self.events.send(event).await.map_err(|_| End::Gone)
    }

    async fn finish(mut self, end: End) {
        let failed = match end {
            End::Failed(reason) => Some(reason),
            End::Close | End::Gone => None,
        };
        for mut ctx in std::mem::take(&mut self.contexts) {
            ctx.judge(|_| CallOutcome::Cancelled);
            let context = ctx.id.clone();
            self.end_context(ctx, "closed");
            if let Some(reason) = &failed {
                let _ = self
                    .emit(TtsEvent::ContextFailed {
                        context,
                        reason: reason.clone(),
                    })
                    .await;
            }
        }
        if let Some(reason) = failed {
            warn!(%reason, "cartesia stream gave up");
            let _ = self.emit(TtsEvent::Failed { reason }).await;
        }
        if let Some(mut socket) = self.socket.take() {
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                if socket.close(None).await.is_ok() {
                    // Until the vendor's close reply (or its end).
                    while let Some(Ok(_)) = socket.next().await {}
                }
            })
            .await;
        }
    }
}

/// The next message of the socket; never resolves without one.
async fn next_message(socket: &mut Option<Socket>) -> Option<Result<Message, WsError>> {
    match socket {
        Some(socket) => socket.next().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; forever without a deadline.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
