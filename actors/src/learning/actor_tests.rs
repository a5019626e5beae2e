//! The learning actor on paused time and in-memory ports: an embedding outage defers jobs
//! (nothing lost, nothing stored twice), the cache spares identical texts, a crashed worker
//! is restarted.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ractor::Actor;
use uuid::Uuid;

use super::actor::{LearningConfig, LearningPorts, LearningSupervisor};
use super::embed::LocalEmbedder;
use super::extract::extract;
use crate::catalog::{NewAgent, NewCustomer};
use crate::machine::record::{ConversationRecord, Speaker};
use crate::machine::{
    start, step, CallId, CallSpec, CallStatus, CarrierEvent, Direction, Event, HangupCause,
};
use crate::ports::learning::{EmbedError, EmbedTask, Embedder};
use crate::ports::learning::{LearnedRows, LearningJob, LearningStore};
use crate::ports::sentiment::SentimentLabel;
use crate::ports::{
    shard_of, CallStore, Clock, JournalEntry, QueryStore, StoreError, StoreResult, SHARD_COUNT,
};
use crate::testkit::MemoryLearningStore;
use crate::testkit::{MemoryStore, SeqIds, TokioClock};

const ORG: Uuid = Uuid::from_u128(0xA);
const AGENT: Uuid = Uuid::from_u128(0xA6E);
const CUSTOMER: Uuid = Uuid::from_u128(0xC);

/// The local embedder behind a switch, counting the texts it was asked for.
#[derive(Default)]
struct Switchable {
    down: AtomicBool,
    texts: AtomicU32,
}

#[async_trait]
impl Embedder for Switchable {
    fn model(&self) -> &str {
        "local-ngram-v1"
    }

    async fn embed(&self, texts: &[String], task: EmbedTask) -> Result<Vec<Vec<f32>>, EmbedError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(EmbedError::Unavailable("google breaker open".into()));
        }
        self.texts.fetch_add(texts.len() as u32, Ordering::SeqCst);
        LocalEmbedder.embed(texts, task).await
    }
}

/// The memory learning store, whose claims fail while `fail_claims` > 0.
struct Flaky {
    inner: Arc<MemoryLearningStore>,
    fail_claims: AtomicU32,
}

#[async_trait]
impl LearningStore for Flaky {
    async fn claim_learning(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> StoreResult<Vec<LearningJob>> {
        if self
            .fail_claims
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::Unavailable("connection reset".into()));
        }
        self.inner.claim_learning(now, lease, limit).await
    }
    async fn cached_embeddings(
        &self,
        model: &str,
        texts: &[String],
    ) -> StoreResult<Vec<Option<Vec<f32>>>> {
        self.inner.cached_embeddings(model, texts).await
    }
    async fn finish_learning(
        &self,
        call_id: CallId,
        rows: &LearnedRows,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        self.inner.finish_learning(call_id, rows, now).await
    }
    async fn try_lead(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> StoreResult<bool> {
        self.inner.try_lead(name, holder, now, ttl).await
    }
    async fn retry_learning(
        &self,
        call_id: CallId,
        at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<()> {
        self.inner.retry_learning(call_id, at, error).await
    }
}

struct World {
    calls: Arc<MemoryStore>,
    learning: Arc<MemoryLearningStore>,
    flaky: Arc<Flaky>,
    embedder: Arc<Switchable>,
    clock: Arc<TokioClock>,
    epochs: Vec<i64>,
}

impl World {
    async fn new() -> World {
        let calls = Arc::new(MemoryStore::new());
        let epoch = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let new: NewAgent = serde_json::from_str(r#"{"name":"Ana"}"#).unwrap();
        calls
            .insert_agent(&new.validate(AGENT, ORG, epoch).unwrap())
            .await
            .unwrap();
        let customer: NewCustomer = serde_json::from_str(r#"{"phone":"+14155550100"}"#).unwrap();
        assert!(calls
            .insert_customer(&customer.validate(CUSTOMER, ORG, epoch).unwrap())
            .await
            .unwrap());
        let shards: Vec<u16> = (0..SHARD_COUNT).collect();
        let epochs = calls.acquire_shards("test", &shards).await.unwrap();
        let learning = Arc::new(MemoryLearningStore::new());
        World {
            calls,
            flaky: Arc::new(Flaky {
                inner: learning.clone(),
                fail_claims: AtomicU32::new(0),
            }),
            learning,
            embedder: Arc::new(Switchable::default()),
            clock: Arc::new(TokioClock::new(epoch)),
            epochs,
        }
    }

    async fn start(&self) -> ractor::ActorRef<super::actor::LearningSupervisorMsg> {
        let ports = LearningPorts {
            calls: self.calls.clone(),
            queries: self.calls.clone(),
            store: self.flaky.clone(),
            embedder: self.embedder.clone(),
            clock: self.clock.clone(),
            ids: Arc::new(SeqIds::new(3)),
        };
        let config = LearningConfig {
            poll_every: Duration::from_secs(1),
            retry_base: Duration::from_secs(30),
            ..LearningConfig::default()
        };
        Actor::spawn(
            None,
            LearningSupervisor::default(),
            ("learning", (ports, config)),
        )
        .await
        .unwrap()
        .0
    }

    /// A completed call with a customer and a short billing conversation, queued as the
    /// Postgres store would queue it.
    async fn completed_call(&self, n: u128) -> CallId {
        self.completed_call_using(n, &[]).await
    }

    /// The same, with `used` patterns recalled into its context at the start.
    async fn completed_call_using(&self, n: u128, used: &[Uuid]) -> CallId {
        let spec = CallSpec {
            id: Uuid::from_u128(0xCA11_0000 + n),
            organization_id: ORG,
            direction: Direction::Outbound,
            from: "+14155550199".parse().unwrap(),
            to: "+14155550100".parse().unwrap(),
            agent_id: AGENT,
            customer_id: Some(CUSTOMER),
            metadata: serde_json::json!({}),
            ring_timeout_secs: 30,
            max_duration_secs: 600,
            inbound_leg_id: None,
        };
        let now = self.clock.now();
        let (mut call, _) = start(spec.clone(), now);
        call.owner_epoch = self.epochs[usize::from(shard_of(spec.id))];
        let created = JournalEntry {
            call_id: spec.id,
            seq: 1,
            at: now,
            event: Event::Created { spec: spec.clone() },
        };
        assert_eq!(
            self.calls
                .insert_call(&call, &created, None, None)
                .await
                .unwrap(),
            crate::ports::InsertOutcome::Created
        );
        let say = |speaker, turn, text: &str| Event::Conversation {
            record: ConversationRecord::Segment {
                speaker,
                text: text.into(),
                start_ms: 0,
                end_ms: 0,
                confidence: 1.0,
                interrupted: false,
                turn,
            },
        };
        let events = vec![
            Event::carrier(CarrierEvent::Answered),
            Event::Conversation {
                record: ConversationRecord::ContextRetrieved {
                    memories: Vec::new(),
                    patterns: used.to_vec(),
                    escalation_risk: 0.1,
                    degraded: None,
                },
            },
            say(Speaker::Agent, 0, "Hello, this is Ava."),
            say(Speaker::Caller, 1, "My router is broken again."),
            Event::Conversation {
                record: ConversationRecord::Sentiment {
                    turn: 1,
                    score: -0.4,
                    label: SentimentLabel::Negative,
                    source: "groq".into(),
                    degraded: false,
                },
            },
            say(
                Speaker::Agent,
                1,
                "I'll send a technician tomorrow morning.",
            ),
            say(Speaker::Caller, 2, "Great, thanks."),
            Event::Conversation {
                record: ConversationRecord::Sentiment {
                    turn: 2,
                    score: 0.6,
                    label: SentimentLabel::Positive,
                    source: "groq".into(),
                    degraded: false,
                },
            },
            Event::carrier(CarrierEvent::HungUp {
                cause: HangupCause::NormalClearing,
            }),
        ];
        for event in events {
            let before = call.version;
            step(&mut call, event.clone(), now).unwrap();
            let entry = JournalEntry {
                call_id: spec.id,
                seq: call.version,
                at: now,
                event,
            };
            self.calls
                .append(&call, before, &entry, None)
                .await
                .unwrap();
        }
        assert_eq!(call.status, CallStatus::Completed);
        self.learning.enqueue(spec.id, ORG, now);
        spec.id
    }

    fn expected(&self, id: CallId) -> (usize, usize) {
        let call = self.calls.snapshot(id).unwrap();
        let learned = extract(&call, &self.calls.journal(id));
        (learned.patterns.len(), learned.memories.len())
    }
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_embedding_outage_defers_learning_and_nothing_is_lost() {
    let w = World::new().await;
    w.embedder.down.store(true, Ordering::SeqCst);
    let call = w.completed_call(1).await;
    let (patterns, memories) = w.expected(call);
    assert!(patterns >= 2 && memories >= 3, "{patterns} {memories}");
    let t0 = w.clock.now();
    let sup = w.start().await;
    settle().await;
    let row = w.learning.queue_row(call).unwrap();
    assert_eq!(row.attempts, 1);
    assert_eq!(row.next_attempt_at, t0 + chrono::Duration::seconds(30));
    assert!(row.last_error.unwrap().contains("google breaker open"));
    assert!(row.done_at.is_none());
    assert!(w.learning.patterns().is_empty() && w.learning.memories().is_empty());

    // Still down at the first retry: the wait doubles.
    tokio::time::sleep(Duration::from_secs(31)).await;
    settle().await;
    let row = w.learning.queue_row(call).unwrap();
    assert_eq!(row.attempts, 2);
    assert_eq!(
        row.next_attempt_at - w.clock.now(),
        chrono::Duration::seconds(59)
    );

    // Back: the next retry learns everything, once.
    w.embedder.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(60)).await;
    settle().await;
    let row = w.learning.queue_row(call).unwrap();
    assert!(row.done_at.is_some(), "{row:?}");
    assert_eq!(w.learning.patterns().len(), patterns);
    assert_eq!(w.learning.memories().len(), memories);
    let embedded = w.embedder.texts.load(Ordering::SeqCst);
    assert_eq!(embedded as usize, patterns + memories);
    let first = &w.learning.memories()[0];
    assert_eq!(first.customer_id, CUSTOMER);
    assert_eq!(first.model, "local-ngram-v1");
    assert_eq!(first.embedding, LocalEmbedder::vector(&first.draft.content));

    // The same conversation on another call: every text is in the cache, none embedded again.
    let again = w.completed_call(2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle().await;
    assert!(w.learning.queue_row(again).unwrap().done_at.is_some());
    assert_eq!(w.embedder.texts.load(Ordering::SeqCst), embedded);
    assert_eq!(w.learning.patterns().len(), 2 * patterns);
    // Nothing more happens to finished jobs.
    tokio::time::sleep(Duration::from_secs(600)).await;
    settle().await;
    assert_eq!(w.learning.patterns().len(), 2 * patterns);
    sup.stop(None);
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_crashes_on_the_store_is_restarted_and_the_job_still_runs() {
    let w = World::new().await;
    w.flaky.fail_claims.store(2, Ordering::SeqCst);
    let call = w.completed_call(1).await;
    let sup = w.start().await;
    settle().await;
    assert!(w.learning.queue_row(call).unwrap().done_at.is_none());
    // Two failed claims, two restarts one second apart, then the job.
    tokio::time::sleep(Duration::from_secs(3)).await;
    settle().await;
    assert_eq!(w.flaky.fail_claims.load(Ordering::SeqCst), 0);
    let row = w.learning.queue_row(call).unwrap();
    assert!(row.done_at.is_some(), "{row:?}");
    assert_eq!(row.attempts, 0);
    assert_eq!(w.learning.patterns().len(), w.expected(call).0);
    sup.stop(None);
}

#[tokio::test(start_paused = true)]
async fn patterns_recalled_into_a_call_learn_from_its_outcome() {
    let w = World::new().await;
    let first = w.completed_call(1).await;
    let sup = w.start().await;
    settle().await;
    assert!(w.learning.queue_row(first).unwrap().done_at.is_some());
    let learned: Vec<Uuid> = w.learning.patterns().iter().map(|p| p.id).collect();
    assert!(learned.len() >= 2);
    // A later call used two of them and went well.
    let second = w.completed_call_using(2, &learned[..2]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle().await;
    assert!(w.learning.queue_row(second).unwrap().done_at.is_some());
    assert_eq!(w.learning.usage(learned[0]), (1, 1));
    assert_eq!(w.learning.usage(learned[1]), (1, 1));
    assert_eq!(
        w.learning.usage(learned[2 % learned.len()]),
        if learned.len() > 2 { (0, 0) } else { (1, 1) }
    );
    sup.stop(None);
}

#[tokio::test(start_paused = true)]
async fn only_the_lease_holder_works_the_queue_and_a_standby_takes_over() {
    let w = World::new().await;
    // Another node holds the lease for the next 30 s.
    assert!(w
        .learning
        .try_lead(
            "learning",
            "other-node",
            w.clock.now(),
            Duration::from_secs(30)
        )
        .await
        .unwrap());
    let call = w.completed_call(1).await;
    let sup = w.start().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    settle().await;
    assert!(
        w.learning.queue_row(call).unwrap().done_at.is_none(),
        "standing by"
    );
    // The other node stopped renewing: its lease expires and this one takes over.
    tokio::time::sleep(Duration::from_secs(21)).await;
    settle().await;
    assert!(w.learning.queue_row(call).unwrap().done_at.is_some());
    assert!(!w
        .learning
        .try_lead(
            "learning",
            "other-node",
            w.clock.now(),
            Duration::from_secs(30)
        )
        .await
        .unwrap());
    sup.stop(None);
}
