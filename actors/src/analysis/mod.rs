//! Post-call analysis: every answered call of an agent with an `analysis` configuration is
//! queued with its end (in the transaction of the transition); the worker reads the call and
//! its transcript, asks the model for a summary, the data of the agent's schema and the
//! verdict of its success rubric (structured outputs), checks the answer against the schema
//! (asking once more, with the error, when it does not fit), and stores the analysis with its
//! `call.analyzed` event in one transaction. The model unreachable leaves the job queued with
//! a backoff; an answer that never fits is stored as `invalid` (the error, never the data).
//!
//! Every node runs a worker; a claim leases its jobs, and storing twice stores nothing the
//! second time, so no call is analysed twice.

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::catalog::profile::{AnalysisConfig, VoiceProfile};
use crate::catalog::schema;
use crate::machine::record::{ConversationRecord, Speaker};
use crate::machine::{Call, Event};
use crate::outbox::{envelope, WebhookEvent};
use crate::ports::analysis::{
    AnalysisJob, AnalysisStatus, AnalysisStore, CallAnalysis, ModelError, PromptMessage,
    StructuredModel,
};
use crate::ports::{Clock, JournalEntry, QueryStore};

/// What the worker needs.
#[derive(Clone)]
pub struct AnalysisPorts {
    /// The queue and the results.
    pub store: Arc<dyn AnalysisStore>,
    /// Calls, journals, agents.
    pub queries: Arc<dyn QueryStore>,
    /// The model.
    pub model: Arc<dyn StructuredModel>,
    /// Time.
    pub clock: Arc<dyn Clock>,
}

/// Tuning.
#[derive(Debug, Clone)]
pub struct AnalysisTuning {
    /// How often the queue is looked at.
    pub poll_every: Duration,
    /// A claimed job is given to no one else for this long.
    pub lease: Duration,
    /// Jobs claimed at once.
    pub batch: u32,
    /// First retry delay after the model was unreachable; doubles per attempt...
    pub retry_base: Duration,
    /// ...up to this.
    pub retry_cap: Duration,
}

impl Default for AnalysisTuning {
    fn default() -> Self {
        AnalysisTuning {
            poll_every: Duration::from_secs(2),
            lease: Duration::from_secs(120),
            batch: 8,
            retry_base: Duration::from_secs(30),
            retry_cap: Duration::from_secs(30 * 60),
        }
    }
}

/// Messages of the worker.
#[derive(Debug)]
pub enum AnalysisMsg {
    /// Look at the queue.
    Poll,
}

/// The worker (see the module docs).
#[derive(Default)]
pub struct AnalysisWorker;

/// Its state.
pub struct AnalysisState {
    ports: AnalysisPorts,
    config: AnalysisTuning,
}

impl Actor for AnalysisWorker {
    type Msg = AnalysisMsg;
    type State = AnalysisState;
    type Arguments = (AnalysisPorts, AnalysisTuning);

    async fn pre_start(
        &self,
        myself: ActorRef<AnalysisMsg>,
        (ports, config): Self::Arguments,
    ) -> Result<AnalysisState, ActorProcessingErr> {
        myself.send_message(AnalysisMsg::Poll)?;
        Ok(AnalysisState { ports, config })
    }

    async fn handle(
        &self,
        myself: ActorRef<AnalysisMsg>,
        _msg: AnalysisMsg,
        state: &mut AnalysisState,
    ) -> Result<(), ActorProcessingErr> {
        let now = state.ports.clock.now();
        let jobs = state
            .ports
            .store
            .claim_analysis(now, state.config.lease, state.config.batch)
            .await
            .map_err(|e| format!("claiming analysis jobs: {e}"))?;
        let full = jobs.len() as u32 == state.config.batch;
        for job in jobs {
            state.work(job).await?;
        }
        if full {
            myself.send_message(AnalysisMsg::Poll)?;
        } else {
            myself.send_after(state.config.poll_every, || AnalysisMsg::Poll);
        }
        Ok(())
    }
}

/// What one job came to.
enum Outcome {
    Stored(CallAnalysis),
    Nothing,
    Retry(String),
}

impl AnalysisState {
    /// Works one job to its end. `Err` only when the store cannot record it (the supervisor
    /// restarts the worker; the lease runs out and the job is claimed again).
    async fn work(&mut self, job: AnalysisJob) -> Result<(), ActorProcessingErr> {
        let store = &self.ports.store;
        match self.analyse(&job).await {
            Outcome::Stored(analysis) => {
                let event = analyzed_event(&analysis);
                store
                    .finish_analysis(&analysis, &[event])
                    .await
                    .map_err(|e| format!("storing the analysis of {}: {e}", job.call_id))?;
                info!(call_id = %job.call_id, status = analysis.status.as_str(), success = ?analysis.success, "call analysed");
            }
            Outcome::Nothing => store
                .drop_analysis(job.call_id)
                .await
                .map_err(|e| format!("closing the analysis of {}: {e}", job.call_id))?,
            Outcome::Retry(error) => {
                let at = self.retry_at(job.attempts);
                warn!(call_id = %job.call_id, attempts = job.attempts + 1, retry_at = %at, error = %error, "analysis deferred");
                store
                    .retry_analysis(job.call_id, at, &error)
                    .await
                    .map_err(|e| format!("deferring the analysis of {}: {e}", job.call_id))?;
            }
        }
        Ok(())
    }

    fn retry_at(&self, attempts: u32) -> DateTime<Utc> {
        let delay =
            crate::keepalive::retry_delay(self.config.retry_base, self.config.retry_cap, attempts);
        self.ports.clock.now() + chrono::Duration::from_std(delay).unwrap_or_default()
    }

    async fn analyse(&self, job: &AnalysisJob) -> Outcome {
        let p = &self.ports;
        let org = job.organization_id;
        let read = async {
            let call = p.queries.get_call(org, job.call_id).await?;
            let journal = p.queries.call_events(org, job.call_id).await?;
            let agent = match &call {
                Some(c) => p.queries.get_agent(org, c.spec.agent_id).await?,
                None => None,
            };
            Ok::<_, crate::ports::StoreError>((call, journal, agent))
        };
        let (call, journal, agent) = match read.await {
            Ok(found) => found,
            Err(e) => return Outcome::Retry(format!("reading the call: {e}")),
        };
        let (Some(call), Some(journal), Some(agent)) = (call, journal, agent) else {
            return Outcome::Nothing;
        };
        let config = VoiceProfile::from_configs(&agent.persona_config, &agent.voice_config)
            .ok()
            .and_then(|p| p.persona.analysis);
        let Some(config) = config else {
            return Outcome::Nothing;
        };
        let schema = answer_schema(&config);
        let mut messages = prompt(&config, &call, &journal);
        let mut error = String::new();
        for round in 0..2 {
            let text = match p.model.complete(&messages, "call_analysis", &schema).await {
                Ok(text) => text,
                Err(ModelError::Unavailable(e)) => return Outcome::Retry(e),
                Err(ModelError::Rejected(e)) => {
                    return Outcome::Stored(self.failed(job, AnalysisStatus::Failed, e))
                }
            };
            match check_answer(&schema, &text) {
                Ok(answer) => return Outcome::Stored(self.stored(job, answer)),
                Err(e) => {
                    error = e;
                    if round == 0 {
                        // Once more, told what was wrong.
                        messages.push(PromptMessage {
                            role: "assistant",
                            content: text,
                        });
                        messages.push(PromptMessage {
                            role: "user",
                            content: format!(
                                "That answer does not match the schema: {error}. Answer again \
                                 with one JSON object that matches it exactly."
                            ),
                        });
                    }
                }
            }
        }
        Outcome::Stored(self.failed(job, AnalysisStatus::Invalid, error))
    }

    fn stored(&self, job: &AnalysisJob, answer: Value) -> CallAnalysis {
        CallAnalysis {
            call_id: job.call_id,
            organization_id: job.organization_id,
            status: AnalysisStatus::Ok,
            summary: answer["summary"].as_str().map(str::to_owned),
            data: Some(answer["data"].clone()),
            success: answer["success"].as_bool(),
            success_reason: answer["success_reason"].as_str().map(str::to_owned),
            error: None,
            model: self.ports.model.model().to_owned(),
            evaluated_at: self.ports.clock.now(),
        }
    }

    fn failed(&self, job: &AnalysisJob, status: AnalysisStatus, error: String) -> CallAnalysis {
        CallAnalysis {
            call_id: job.call_id,
            organization_id: job.organization_id,
            status,
            summary: None,
            data: None,
            success: None,
            success_reason: None,
            error: Some(error),
            model: self.ports.model.model().to_owned(),
            evaluated_at: self.ports.clock.now(),
        }
    }
}

/// The schema of the model's whole answer: the summary, the agent's data, the verdict.
pub fn answer_schema(config: &AnalysisConfig) -> Value {
    json!({
        "type": "object",
        "properties": {
            "summary": {"type": "string"},
            "data": config.schema,
            "success": {"type": "boolean"},
            "success_reason": {"type": "string"},
        },
        "required": ["summary", "data", "success", "success_reason"],
        "additionalProperties": false,
    })
}

/// The model's answer, parsed and checked against `schema`.
pub fn check_answer(schema: &Value, text: &str) -> Result<Value, String> {
    let answer: Value = serde_json::from_str(text.trim()).map_err(|e| format!("not JSON ({e})"))?;
    schema::validate(schema, &answer)?;
    Ok(answer)
}

/// What the model is asked: the instructions, then the call and its transcript.
pub fn prompt(
    config: &AnalysisConfig,
    call: &Call,
    journal: &[JournalEntry],
) -> Vec<PromptMessage> {
    let system = format!(
        "You analyse a finished phone call between a caller and an AI agent. Answer with one \
         JSON object with these keys: \"summary\" ({}), \"data\" (the facts the schema asks \
         for, taken only from the call; leave out what the call does not say), \"success\" \
         (true or false, judged by this rubric: {}) and \"success_reason\" (one sentence).",
        config.summary.trim().trim_end_matches('.'),
        config.success_rubric.trim().trim_end_matches('.'),
    );
    let mut transcript = String::new();
    for entry in journal {
        if let Event::Conversation {
            record: ConversationRecord::Segment { speaker, text, .. },
        } = &entry.event
        {
            let who = match speaker {
                Speaker::Caller => "Caller",
                Speaker::Agent => "Agent",
            };
            transcript.push_str(&format!("{who}: {}\n", text.trim()));
        }
    }
    if transcript.is_empty() {
        transcript.push_str("(nothing was said)\n");
    }
    let duration = match (call.answered_at, call.ended_at) {
        (Some(a), Some(e)) => format!("{} s", (e - a).num_seconds()),
        _ => "unknown".into(),
    };
    let user = format!(
        "Call direction: {}. Status: {}. End reason: {}. Talk time: {duration}.\n\nTranscript:\n{transcript}",
        call.spec.direction.as_str(),
        call.status.as_str(),
        call.end_reason.map_or("none", |r| r.as_str()),
    );
    vec![
        PromptMessage {
            role: "system",
            content: system,
        },
        PromptMessage {
            role: "user",
            content: user,
        },
    ]
}

/// The `call.analyzed` event of an analysis.
pub fn analyzed_event(a: &CallAnalysis) -> WebhookEvent {
    let data = json!({
        "call_id": a.call_id,
        "status": a.status,
        "summary": a.summary,
        "data": a.data,
        "success": a.success,
        "success_reason": a.success_reason,
        "error": a.error,
        "model": a.model,
        "evaluated_at": a.evaluated_at,
    });
    WebhookEvent {
        id: format!("msg_{}_analyzed", a.call_id.simple()),
        organization_id: a.organization_id,
        call_id: Some(a.call_id),
        event_type: "call.analyzed",
        occurred_at: a.evaluated_at,
        deliver_after: a.evaluated_at,
        payload: Some(envelope("call.analyzed", a.evaluated_at, data)),
    }
}
