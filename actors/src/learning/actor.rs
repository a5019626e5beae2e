//! The Learning actor: works the learning queue. Every completed call is queued durably with
//! its completion (see `LearningStore`); the actor claims due jobs, reads the call's journal,
//! extracts what it teaches, embeds the texts (cache first), and stores the rows and the job's
//! end in one transaction. An embedding outage or a store error leaves the job queued with a
//! backoff: nothing is dropped, and nothing is stored twice.
//!
//! Runs under [`LearningSupervisor`], which restarts it after a crash (ractor never restarts
//! on its own). Every node runs one, but only the holder of the deployment-wide `learning`
//! lease works the queue (the others stand by and take over when it expires); a claim also
//! leases its jobs, so even two leaders for a moment would not work a job twice.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{debug, info, warn};

use super::extract::extract;
use crate::keepalive::{KeepAlive, KeepAliveMsg};
use crate::machine::CallId;
use crate::ports::learning::{EmbedError, EmbedTask, Embedder};
use crate::ports::learning::{LearnedRows, LearningJob, LearningStore, NewMemory, NewPattern};
use crate::ports::{CallStore, Clock, IdGen, QueryStore};

/// What the learning actor needs.
#[derive(Clone)]
pub struct LearningPorts {
    /// Calls (snapshots).
    pub calls: Arc<dyn CallStore>,
    /// Journals.
    pub queries: Arc<dyn QueryStore>,
    /// The queue and the learned rows.
    pub store: Arc<dyn LearningStore>,
    /// Texts to vectors.
    pub embedder: Arc<dyn Embedder>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Ids.
    pub ids: Arc<dyn IdGen>,
}

/// Tuning.
#[derive(Debug, Clone)]
pub struct LearningConfig {
    /// How often the queue is looked at when nothing nudges the actor.
    pub poll_every: Duration,
    /// A claimed job is given to no one else for this long.
    pub lease: Duration,
    /// Jobs claimed at once.
    pub batch: u32,
    /// This worker's name in the deployment-wide lease.
    pub node_id: String,
    /// The lease lasts this long unless renewed (each poll renews it).
    pub lead_ttl: Duration,
    /// First retry delay; doubles per failed attempt...
    pub retry_base: Duration,
    /// ...up to this.
    pub retry_cap: Duration,
}

impl Default for LearningConfig {
    fn default() -> Self {
        LearningConfig {
            poll_every: Duration::from_secs(5),
            lease: Duration::from_secs(120),
            batch: 16,
            node_id: "node".into(),
            lead_ttl: Duration::from_secs(30),
            retry_base: Duration::from_secs(30),
            retry_cap: Duration::from_secs(30 * 60),
        }
    }
}

/// Messages of the learning actor.
#[derive(Debug)]
pub enum LearningMsg {
    /// Look at the queue now.
    Poll,
    /// A call completed (a nudge: its queue row already exists, the poll would find it too).
    CallCompleted(CallId),
}

/// The worker.
#[derive(Default)]
pub struct LearningActor;

/// Its state.
pub struct LearningState {
    ports: LearningPorts,
    config: LearningConfig,
    /// A poll is already scheduled or queued.
    poll_pending: bool,
    /// This worker holds the deployment-wide lease.
    leading: bool,
}

/// The deployment-wide lease of the learning worker.
const LEAD: &str = "learning";

/// What one job ended as.
enum JobEnd {
    Learned { patterns: usize, memories: usize },
    Retry(String),
}

impl Actor for LearningActor {
    type Msg = LearningMsg;
    type State = LearningState;
    type Arguments = (LearningPorts, LearningConfig);

    async fn pre_start(
        &self,
        myself: ActorRef<LearningMsg>,
        (ports, config): (LearningPorts, LearningConfig),
    ) -> Result<LearningState, ActorProcessingErr> {
        myself.send_message(LearningMsg::Poll)?;
        Ok(LearningState {
            ports,
            config,
            poll_pending: true,
            leading: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<LearningMsg>,
        msg: LearningMsg,
        state: &mut LearningState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LearningMsg::CallCompleted(id) => {
                debug!(call_id = %id, "learning nudged");
                // The job is due only after the settle delay; the next poll takes it.
            }
            LearningMsg::Poll => {
                state.poll_pending = false;
                let now = state.ports.clock.now();
                let leading = state
                    .ports
                    .store
                    .try_lead(LEAD, &state.config.node_id, now, state.config.lead_ttl)
                    .await
                    .map_err(|e| format!("taking the learning lease: {e}"))?;
                if leading != state.leading {
                    info!(node = %state.config.node_id, leading, "learning lease");
                    state.leading = leading;
                }
                if !leading {
                    // Another node works the queue; stand by and ask again.
                    state.poll_pending = true;
                    myself.send_after(state.config.poll_every, || LearningMsg::Poll);
                    return Ok(());
                }
                let jobs = state
                    .ports
                    .store
                    .claim_learning(now, state.config.lease, state.config.batch)
                    .await
                    .map_err(|e| format!("claiming learning jobs: {e}"))?;
                let full = jobs.len() as u32 == state.config.batch;
                for job in jobs {
                    state.work(job).await?;
                }
                if !state.poll_pending {
                    state.poll_pending = true;
                    if full {
                        // More may be due: go on at once.
                        myself.send_message(LearningMsg::Poll)?;
                    } else {
                        myself.send_after(state.config.poll_every, || LearningMsg::Poll);
                    }
                }
            }
        }
        Ok(())
    }
}

impl LearningState {
    /// Works one job to its end (learned, or queued again). `Err` only when the store cannot
    /// even record the retry: the supervisor restarts the actor and the lease expires.
    async fn work(&mut self, job: LearningJob) -> Result<(), ActorProcessingErr> {
        let end = match self.learn(&job).await {
            Ok(end) => end,
            Err(e) => JobEnd::Retry(e),
        };
        match end {
            JobEnd::Learned { patterns, memories } => {
                info!(call_id = %job.call_id, patterns, memories, attempts = job.attempts + 1, "learned from call");
            }
            JobEnd::Retry(error) => {
                let at = self.retry_at(job.attempts);
                warn!(call_id = %job.call_id, attempts = job.attempts + 1, retry_at = %at, error = %error, "learning deferred");
                self.ports
                    .store
                    .retry_learning(job.call_id, at, &error)
                    .await
                    .map_err(|e| format!("deferring learning of {}: {e}", job.call_id))?;
            }
        }
        Ok(())
    }

    fn retry_at(&self, attempts: u32) -> DateTime<Utc> {
        let delay =
            crate::keepalive::retry_delay(self.config.retry_base, self.config.retry_cap, attempts);
        self.ports.clock.now() + chrono::Duration::from_std(delay).unwrap_or_default()
    }

    async fn learn(&self, job: &LearningJob) -> Result<JobEnd, String> {
        let p = &self.ports;
        let now = p.clock.now();
        let call = p
            .calls
            .load_call(job.call_id)
            .await
            .map_err(|e| format!("loading the call: {e}"))?;
        let journal = p
            .queries
            .call_events(job.organization_id, job.call_id)
            .await
            .map_err(|e| format!("reading the journal: {e}"))?;
        let (Some(call), Some(journal)) = (call, journal) else {
            // The call is gone (its organization was deleted): nothing to learn.
            p.store
                .finish_learning(job.call_id, &LearnedRows::default(), now)
                .await
                .map_err(|e| format!("closing the job: {e}"))?;
            return Ok(JobEnd::Learned {
                patterns: 0,
                memories: 0,
            });
        };
        let learned = extract(&call, &journal);
        let mut texts: Vec<String> = learned
            .patterns
            .iter()
            .map(|d| d.description.clone())
            .collect();
        texts.extend(learned.memories.iter().map(|m| m.content.clone()));
        let model = p.embedder.model().to_owned();
        let (vectors, fresh) = self.embed(&model, &texts).await?;
        let mut vectors = vectors.into_iter();
        let mut rows = LearnedRows {
            cache: fresh,
            used_patterns: learned.used_patterns.clone(),
            success: learned.outcome.success,
            ..LearnedRows::default()
        };
        for draft in learned.patterns {
            rows.patterns.push(NewPattern {
                id: p.ids.next_id(),
                organization_id: call.spec.organization_id,
                agent_id: call.spec.agent_id,
                source_call_id: call.spec.id,
                draft,
                embedding: vectors.next().expect("one vector per text"),
                model: model.clone(),
                created_at: now,
            });
        }
        if let Some(customer) = call.spec.customer_id {
            for draft in learned.memories {
                rows.memories.push(NewMemory {
                    id: p.ids.next_id(),
                    organization_id: call.spec.organization_id,
                    customer_id: customer,
                    source_call_id: call.spec.id,
                    draft,
                    embedding: vectors.next().expect("one vector per text"),
                    model: model.clone(),
                    created_at: now,
                });
            }
        }
        p.store
            .finish_learning(job.call_id, &rows, now)
            .await
            .map_err(|e| format!("storing what was learned: {e}"))?;
        Ok(JobEnd::Learned {
            patterns: rows.patterns.len(),
            memories: rows.memories.len(),
        })
    }

    /// Vectors of `texts` in order, the cache first; identical texts are embedded once. Also
    /// returns the fresh ones for the cache.
    #[allow(clippy::type_complexity)]
    async fn embed(
        &self,
        model: &str,
        texts: &[String],
    ) -> Result<(Vec<Vec<f32>>, Vec<(String, String, Vec<f32>)>), String> {
        let p = &self.ports;
        let cached = p
            .store
            .cached_embeddings(model, texts)
            .await
            .map_err(|e| format!("reading the embedding cache: {e}"))?;
        let mut missing: Vec<String> = Vec::new();
        for (text, hit) in texts.iter().zip(&cached) {
            if hit.is_none() && !missing.contains(text) {
                missing.push(text.clone());
            }
        }
        let fresh = if missing.is_empty() {
            Vec::new()
        } else {
            p.embedder
                .embed(&missing, EmbedTask::Document)
                .await
                .map_err(|e| match e {
                    EmbedError::Rejected(m) | EmbedError::Unavailable(m) => {
                        format!("embedding: {m}")
                    }
                })?
        };
        if fresh.len() != missing.len() {
            return Err(format!(
                "embedding: {} vectors for {} texts",
                fresh.len(),
                missing.len()
            ));
        }
        let vectors = texts
            .iter()
            .zip(cached)
            .map(|(text, hit)| {
                hit.unwrap_or_else(|| {
                    let i = missing.iter().position(|m| m == text).expect("missing");
                    fresh[i].clone()
                })
            })
            .collect();
        let fresh = missing
            .into_iter()
            .zip(fresh)
            .map(|(t, v)| (model.to_owned(), t, v))
            .collect();
        Ok((vectors, fresh))
    }
}

/// Keeps the learning actor running: restarts it (after a pause) whenever it stops or fails.
/// Started with `("learning", (ports, config))`.
pub type LearningSupervisor = KeepAlive<LearningActor>;

/// Messages of the supervisor (`Forward` passes one to the worker).
pub type LearningSupervisorMsg = KeepAliveMsg<LearningMsg>;
