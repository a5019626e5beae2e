//! The VoiceSession actor: one per in-progress call with a media stream, a child of its
//! CallActor. It opens the call's speech-to-text and speech-synthesis streams, feeds the
//! [`Conversation`] core with everything that happens (caller audio goes straight on to
//! speech-to-text), and executes what the core decides: audio and marks to the media stream,
//! text to synthesis, reply requests to the model, sentiment scoring, tools, and — through the
//! parent CallActor, the call's only writer — journal records, transfers and hangups.
//!
//! Vendor streams are read by small forwarding tasks that stamp each event with the time it
//! arrived (so mailbox queueing counts as engine time in the latency records) and turn it into
//! a message. The session never waits on a vendor: stream inputs use `try_send`; model
//! requests, scoring and tools run in tasks.
//!
//! Beside the actor: `router` finds a call's live session for the media endpoint, and
//! `recall` fetches what earlier calls taught for the conversation's context.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::catalog::profile::VoiceProfile;
use crate::engine::Shared;
use crate::machine::record::{ConversationRecord, Speaker};
use crate::machine::{AmdResult, CallSpec};
use crate::ports::sentiment::{Sentiment, SentimentLabel};
use crate::ports::voice::VoicePorts;
use crate::ports::voice::{LlmEvent, LlmRequest, SttInput, SttOptions, TtsInput, TtsOptions};
use crate::sentiment::LexiconScorer;
use crate::voice::conversation::{
    Action, CallerContext, Conversation, Input, Micros, SpeculationOutcome,
};

mod msg;
mod recall;
mod router;

pub use msg::{VoiceMsg, VoiceRequest};
pub use router::VoiceRouter;

/// Start-up arguments.
pub(crate) struct VoiceArgs {
    pub spec: CallSpec,
    pub shared: Arc<Shared>,
    pub parent: DerivedActorRef<VoiceRequest>,
    pub await_amd: bool,
    pub amd: Option<AmdResult>,
}

/// The actor.
pub(crate) struct VoiceSession;

/// A pending `send_after` of the conversation's next deadline.
type TimerHandle = JoinHandle<Result<(), ractor::MessagingErr<VoiceMsg>>>;

/// Per-session state.
pub(crate) struct VoiceState {
    spec: CallSpec,
    shared: Arc<Shared>,
    ports: VoicePorts,
    parent: DerivedActorRef<VoiceRequest>,
    conv: Conversation,
    origin: DateTime<Utc>,
    stt: Option<mpsc::Sender<SttInput>>,
    tts: Option<mpsc::Sender<TtsInput>>,
    replies: HashMap<u32, JoinHandle<()>>,
    timer: Option<(Micros, TimerHandle)>,
    timer_generation: u64,
    await_amd: bool,
    amd: Option<AmdResult>,
    audio_started: bool,
    /// What was said before this session (read at init): the conversation resumes.
    said: Option<(Vec<(Speaker, String)>, u32)>,
    audio_dropped: u64,
    tasks: Vec<JoinHandle<()>>,
    /// The agent's HTTP tools (the conversation decides when; the session runs them).
    http_tools: Vec<crate::catalog::profile::HttpTool>,
}

impl Actor for VoiceSession {
    type Msg = VoiceMsg;
    type State = VoiceState;
    type Arguments = VoiceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<VoiceMsg>,
        args: VoiceArgs,
    ) -> Result<VoiceState, ActorProcessingErr> {
        let ports = args
            .shared
            .ports
            .voice
            .clone()
            .ok_or("the engine has no voice ports")?;
        myself.send_message(VoiceMsg::Init)?;
        let origin = args.shared.ports.clock.now();
        Ok(VoiceState {
            spec: args.spec,
            shared: args.shared,
            ports,
            parent: args.parent,
            conv: Conversation::new(VoiceProfile::default(), CallerContext::default()),
            origin,
            stt: None,
            tts: None,
            replies: HashMap::new(),
            timer: None,
            timer_generation: 0,
            await_amd: args.await_amd,
            amd: args.amd,
            audio_started: false,
            said: None,
            audio_dropped: 0,
            tasks: Vec::new(),
            http_tools: Vec::new(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<VoiceMsg>,
        state: &mut VoiceState,
    ) -> Result<(), ActorProcessingErr> {
        state.shutdown();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<VoiceMsg>,
        msg: VoiceMsg,
        state: &mut VoiceState,
    ) -> Result<(), ActorProcessingErr> {
        let now = state.now();
        let input = match msg {
            VoiceMsg::Init => {
                let failures = state.init(&myself).await;
                let now = state.now();
                // With detection running, start waiting for the verdict even when it is
                // already known (it came before the media stream): the conversation core
                // acts on a verdict only while it waits for one, so a machine that answered
                // first would otherwise be greeted.
                let start = match state.said.take() {
                    Some((said, turn)) => {
                        info!(call_id = %state.spec.id, segments = said.len(), "conversation resumed");
                        Input::Resume { said, turn }
                    }
                    None => Input::Start {
                        await_amd: state.await_amd,
                    },
                };
                let mut actions = state.conv.handle(now, start);
                // Start first, then the failures: the failure path needs a live conversation.
                for input in failures {
                    actions.extend(state.conv.handle(now, input));
                }
                if let Some(amd) = state.amd {
                    actions.extend(state.conv.handle(now, Input::Amd(amd)));
                }
                state.execute(&myself, actions);
                state.rearm(&myself);
                return Ok(());
            }
            VoiceMsg::Audio(mulaw) => {
                let mut actions = Vec::new();
                if !state.audio_started {
                    state.audio_started = true;
                    actions = state.conv.handle(now, Input::AudioStarted);
                }
                if let Some(stt) = &state.stt {
                    if stt.try_send(SttInput::Audio(mulaw)).is_err() {
                        state.audio_dropped += 1;
                        if state.audio_dropped.is_power_of_two() {
                            debug!(call_id = %state.spec.id, dropped = state.audio_dropped, "speech-to-text input full; caller audio dropped");
                        }
                    }
                }
                if actions.is_empty() {
                    return Ok(());
                }
                state.execute(&myself, actions);
                return Ok(());
            }
            VoiceMsg::Mark(name) => Input::MarkPlayed { name },
            VoiceMsg::Amd(result) => Input::Amd(result),
            VoiceMsg::Dtmf(digit) => Input::Dtmf { digit },
            VoiceMsg::Stt(event, at) => Input::Stt {
                event,
                at: state.micros(at),
            },
            VoiceMsg::Tts(event, at) => Input::Tts {
                event,
                at: state.micros(at),
            },
            VoiceMsg::Llm(reply, event, at) => {
                if matches!(event, LlmEvent::Done { .. } | LlmEvent::Failed { .. }) {
                    state.replies.remove(&reply);
                }
                Input::Llm {
                    reply,
                    event,
                    at: state.micros(at),
                }
            }
            VoiceMsg::LlmUnavailable(reply, reason) => {
                state.replies.remove(&reply);
                Input::LlmUnavailable { reply, reason }
            }
            VoiceMsg::Sentiment(turn, sentiment) => Input::Sentiment { turn, sentiment },
            VoiceMsg::ToolResult(id, result) => Input::ToolResult { id, result },
            VoiceMsg::Timer(generation) => {
                if generation != state.timer_generation {
                    return Ok(());
                }
                state.timer = None;
                Input::Timer
            }
            VoiceMsg::CallEnded => Input::CallEnded,
        };
        let actions = state.conv.handle(now, input);
        state.execute(&myself, actions);
        if state.conv.is_done() {
            state.shutdown();
            myself.stop(Some("conversation over".into()));
        } else {
            state.rearm(&myself);
        }
        Ok(())
    }
}

impl VoiceState {
    fn now(&self) -> Micros {
        self.micros(self.shared.ports.clock.now())
    }

    fn micros(&self, at: DateTime<Utc>) -> Micros {
        (at - self.origin)
            .num_microseconds()
            .and_then(|us| u64::try_from(us).ok())
            .unwrap_or(0)
    }

    /// What was said on the call so far, from its journal (speaker, text), and the last turn:
    /// a conversation that took place before (on another node, or before a restart) is
    /// resumed rather than started again. Nothing when the journal cannot be read.
    async fn said_so_far(&self) -> Option<(Vec<(Speaker, String)>, u32)> {
        let spec = &self.spec;
        let events = self
            .shared
            .with_timeout(
                self.shared
                    .ports
                    .queries
                    .call_events(spec.organization_id, spec.id),
            )
            .await;
        let events = match events {
            Ok(Some(events)) => events,
            Ok(None) => return None,
            Err(e) => {
                warn!(call_id = %spec.id, error = %e, "reading the call's journal failed; the conversation starts afresh");
                return None;
            }
        };
        let mut said = Vec::new();
        let mut last_turn = 0;
        for entry in events {
            if let crate::machine::Event::Conversation {
                record:
                    ConversationRecord::Segment {
                        speaker,
                        text,
                        turn,
                        ..
                    },
            } = entry.event
            {
                last_turn = last_turn.max(turn);
                said.push((speaker, text));
            }
        }
        (!said.is_empty()).then_some((said, last_turn))
    }

    /// Loads the agent and the customer, opens the vendor streams; returns what failed.
    async fn init(&mut self, myself: &ActorRef<VoiceMsg>) -> Vec<Input> {
        let spec = &self.spec;
        let agent = self.shared.agent(spec.organization_id, spec.agent_id).await;
        let profile = match agent {
            Ok(Some(agent)) => {
                VoiceProfile::from_configs(&agent.persona_config, &agent.voice_config)
                    .unwrap_or_else(|e| {
                        warn!(call_id = %spec.id, agent_id = %spec.agent_id, error = %e, "agent voice configuration invalid; using defaults");
                        VoiceProfile::default()
                    })
            }
            Ok(None) => VoiceProfile::default(),
            Err(e) => {
                warn!(call_id = %spec.id, error = %e, "loading the agent failed; using the default persona");
                VoiceProfile::default()
            }
        };
        self.http_tools = profile.persona.http_tools.clone();
        let recalled = self.recall().await;
        self.said = self.said_so_far().await;
        let customer = match spec.customer_id {
            Some(id) => self
                .shared
                .customer(spec.organization_id, id)
                .await
                .ok()
                .flatten()
                .map(|c| customer_json(&c)),
            None => None,
        };
        let stt_options = SttOptions {
            call_id: spec.id,
            language: profile.voice.language.clone(),
            endpointing_ms: 300,
            utterance_end_ms: 1000,
            keyterms: Vec::new(),
        };
        let tts_options = TtsOptions {
            call_id: spec.id,
            voice_id: profile.voice.voice_id.clone(),
            model_id: profile.voice.model_id.clone(),
            language: profile.voice.language.clone(),
            speed: profile.voice.speed,
        };
        self.conv = Conversation::new(
            profile,
            CallerContext {
                inbound: spec.direction == crate::machine::Direction::Inbound,
                customer,
                memories: recalled
                    .memories
                    .iter()
                    .map(|m| m.content.clone())
                    .collect(),
                patterns: recalled
                    .patterns
                    .iter()
                    .map(|p| p.description.clone())
                    .collect(),
                escalation_risk: recalled
                    .prediction
                    .as_ref()
                    .map(|p| (p.escalation_risk, p.reasons.join("; "))),
            },
        );
        if let Some(record) = recalled.record() {
            let _ = self.parent.send_message(VoiceRequest::Record(record));
        }
        let (stt, tts) = tokio::join!(
            self.ports.stt.open(stt_options),
            self.ports.tts.open(tts_options)
        );
        let mut early = Vec::new();
        match stt {
            Ok(stream) => {
                self.stt = Some(stream.input);
                let me = myself.clone();
                let clock = self.shared.ports.clock.clone();
                self.tasks
                    .push(tokio::spawn(forward(stream.events, move |e| {
                        me.send_message(VoiceMsg::Stt(e, clock.now())).is_ok()
                    })));
            }
            Err(e) => {
                warn!(call_id = %self.spec.id, error = %e, "speech-to-text unavailable");
                early.push(Input::SttUnavailable {
                    reason: e.to_string(),
                });
            }
        }
        match tts {
            Ok(stream) => {
                self.tts = Some(stream.input);
                let me = myself.clone();
                let clock = self.shared.ports.clock.clone();
                self.tasks
                    .push(tokio::spawn(forward(stream.events, move |e| {
                        me.send_message(VoiceMsg::Tts(e, clock.now())).is_ok()
                    })));
            }
            Err(e) => {
                warn!(call_id = %self.spec.id, error = %e, "speech synthesis unavailable");
                early.push(Input::TtsUnavailable {
                    reason: e.to_string(),
                });
            }
        }
        info!(call_id = %self.spec.id, stt = self.stt.is_some(), tts = self.tts.is_some(), "voice session started");
        early
    }

    fn execute(&mut self, myself: &ActorRef<VoiceMsg>, actions: Vec<Action>) {
        let call = self.spec.id;
        for action in actions {
            match action {
                Action::TtsSpeak {
                    context,
                    text,
                    last,
                } => self.tts_send(TtsInput::Speak {
                    context,
                    text,
                    last,
                }),
                Action::TtsCancel { context } => self.tts_send(TtsInput::Cancel { context }),
                Action::MediaAudio(mulaw) => {
                    if let Err(e) = self.ports.media.send_audio(call, mulaw) {
                        debug!(call_id = %call, error = %e, "agent audio not queued");
                    }
                }
                Action::MediaMark(name) => {
                    let _ = self.ports.media.mark(call, name);
                }
                Action::MediaClear => {
                    let _ = self.ports.media.clear(call);
                }
                Action::LlmStart {
                    reply,
                    turn,
                    messages,
                    tools,
                } => {
                    let llm = self.ports.llm.clone();
                    let me = myself.clone();
                    let clock = self.shared.ports.clock.clone();
                    let request = LlmRequest {
                        call_id: call,
                        turn,
                        messages,
                        tools,
                    };
                    let task = tokio::spawn(async move {
                        match llm.stream(request).await {
                            Ok(rx) => {
                                forward(rx, move |e| {
                                    me.send_message(VoiceMsg::Llm(reply, e, clock.now()))
                                        .is_ok()
                                })
                                .await;
                            }
                            Err(e) => {
                                let _ =
                                    me.send_message(VoiceMsg::LlmUnavailable(reply, e.to_string()));
                            }
                        }
                    });
                    self.replies.insert(reply, task);
                }
                Action::LlmCancel { reply } => {
                    if let Some(task) = self.replies.remove(&reply) {
                        // Dropping the receiver inside cancels the request.
                        task.abort();
                    }
                }
                Action::ScoreSentiment { turn, text } => {
                    let scorer = self.ports.sentiment.clone();
                    let me = myself.clone();
                    tokio::spawn(async move {
                        let sentiment = match scorer.score(&text).await {
                            Ok(s) => s,
                            Err(e) => {
                                let score = LexiconScorer.score_text(&text);
                                debug!(error = %e, "sentiment scorer failed; lexicon answers");
                                Sentiment {
                                    score,
                                    label: SentimentLabel::of(score),
                                    source: "lexicon".into(),
                                    degraded: true,
                                }
                            }
                        };
                        let _ = me.send_message(VoiceMsg::Sentiment(turn, sentiment));
                    });
                }
                Action::RunTool {
                    turn,
                    id,
                    name,
                    arguments,
                } => {
                    let me = myself.clone();
                    let shared = self.shared.clone();
                    let spec = self.spec.clone();
                    let http = self
                        .http_tools
                        .iter()
                        .find(|t| t.name == name)
                        .cloned()
                        .map(|tool| (tool, self.ports.tools.clone()));
                    tokio::spawn(async move {
                        let result = match http {
                            Some((tool, runner)) => {
                                run_http_tool(runner, &spec, turn, tool, &id, &arguments).await
                            }
                            None => run_tool(&shared, &spec, &name).await,
                        };
                        let _ = me.send_message(VoiceMsg::ToolResult(id, result));
                    });
                }
                Action::Record(record) => {
                    let _ = self.parent.send_message(VoiceRequest::Record(record));
                }
                Action::Transfer { to } => {
                    info!(call_id = %call, to = %to, "conversation hands the call to a person");
                    let _ = self.parent.send_message(VoiceRequest::Transfer(to));
                }
                Action::Hangup { reason } => {
                    info!(call_id = %call, reason = reason.as_str(), "conversation ends the call");
                    let _ = self.parent.send_message(VoiceRequest::Hangup(reason));
                }
                Action::PlayFallbackApology { mark } => {
                    let _ = self
                        .ports
                        .media
                        .send_audio(call, self.ports.fallback_apology.as_ref().clone());
                    let _ = self.ports.media.mark(call, mark);
                }
                Action::Close => self.close_streams(),
                Action::Speculation(outcome) => {
                    let m = &self.shared.metrics;
                    let label = match outcome {
                        SpeculationOutcome::Started => "started",
                        SpeculationOutcome::Used => "used",
                        SpeculationOutcome::Discarded { tokens } => {
                            m.speculative_tokens_discarded.inc_by(u64::from(tokens));
                            "discarded"
                        }
                    };
                    m.speculative_replies.with_label_values(&[label]).inc();
                }
            }
        }
    }

    fn tts_send(&mut self, input: TtsInput) {
        let Some(tts) = &self.tts else { return };
        if let Err(e) = tts.try_send(input) {
            warn!(call_id = %self.spec.id, error = %e, "speech synthesis input refused");
        }
    }

    fn rearm(&mut self, myself: &ActorRef<VoiceMsg>) {
        let Some(deadline) = self.conv.next_deadline() else {
            if let Some((_, t)) = self.timer.take() {
                t.abort();
            }
            return;
        };
        if self.timer.as_ref().is_some_and(|(at, _)| *at == deadline) {
            return;
        }
        if let Some((_, t)) = self.timer.take() {
            t.abort();
        }
        self.timer_generation += 1;
        let generation = self.timer_generation;
        let delay = Duration::from_micros(deadline.saturating_sub(self.now()));
        let handle = myself.send_after(delay, move || VoiceMsg::Timer(generation));
        self.timer = Some((deadline, handle));
    }

    fn close_streams(&mut self) {
        if let Some(stt) = self.stt.take() {
            let _ = stt.try_send(SttInput::Close);
        }
        if let Some(tts) = self.tts.take() {
            let _ = tts.try_send(TtsInput::Close);
        }
    }

    fn shutdown(&mut self) {
        self.close_streams();
        for (_, task) in self.replies.drain() {
            task.abort();
        }
        if let Some((_, t)) = self.timer.take() {
            t.abort();
        }
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

/// Forwards a vendor stream's events until it closes or the session is gone.
async fn forward<E>(mut rx: mpsc::Receiver<E>, mut send: impl FnMut(E) -> bool) {
    while let Some(event) = rx.recv().await {
        if !send(event) {
            break;
        }
    }
}

fn customer_json(c: &crate::catalog::Customer) -> serde_json::Value {
    serde_json::json!({
        "name": c.name,
        "phone": c.phone.as_str(),
        "email": c.email,
        "segment": c.segment,
        "metadata": c.metadata,
    })
}

/// Runs one of the agent's HTTP tools (its arguments were checked by the conversation).
async fn run_http_tool(
    runner: Option<Arc<dyn crate::ports::voice::ToolRunner>>,
    spec: &CallSpec,
    turn: u32,
    tool: crate::catalog::profile::HttpTool,
    id: &str,
    arguments: &str,
) -> Result<serde_json::Value, String> {
    let Some(runner) = runner else {
        return Err("tools on external systems are not available on this server".into());
    };
    let arguments = if arguments.trim().is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_str(arguments).map_err(|e| format!("the arguments are not JSON: {e}"))?
    };
    runner
        .run(crate::ports::voice::ToolRequest {
            tool,
            tool_call_id: id.to_owned(),
            call_id: spec.id,
            turn,
            organization_id: spec.organization_id,
            agent_id: spec.agent_id,
            customer_id: spec.customer_id,
            arguments,
        })
        .await
}

/// Runs a built-in tool the model called. Only `lookup_customer` needs I/O.
async fn run_tool(
    shared: &Shared,
    spec: &CallSpec,
    name: &str,
) -> Result<serde_json::Value, String> {
    match name {
        "lookup_customer" => {
            let Some(id) = spec.customer_id else {
                return Ok(
                    serde_json::json!({"found": false, "reason": "the caller is not a known customer"}),
                );
            };
            let found = shared
                .with_timeout(shared.ports.queries.get_customer(spec.organization_id, id))
                .await
                .map_err(|e| e.to_string())?;
            Ok(match found {
                Some(c) => {
                    let mut v = customer_json(&c);
                    v["found"] = serde_json::Value::Bool(true);
                    v
                }
                None => serde_json::json!({"found": false}),
            })
        }
        other => Err(format!("unknown tool `{other}`")),
    }
}

#[cfg(test)]
mod tests;
