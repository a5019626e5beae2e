//! Learning on the real Postgres store (pgvector): a completed call is queued with its
//! completion, an embedding outage defers it without losing it, and once embeddings work the
//! patterns, memories and cache rows are stored once; the stored vectors answer similarity
//! searches. Requires `DATABASE_URL`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use iace::app::RandomIds;
use iace::store::PgStore;
use iace_actors::catalog::{NewAgent, NewCustomer, Organization};
use iace_actors::learning::actor::{LearningConfig, LearningPorts, LearningSupervisor};
use iace_actors::learning::extract::extract;
use iace_actors::learning::{EmbedError, EmbedTask, Embedder, LocalEmbedder};
use iace_actors::machine::{
    start, step, Call, CallSpec, CarrierEvent, Direction, Event, HangupCause,
};
use iace_actors::ports::{shard_of, CallStore, Clock, JournalEntry, QueryStore, SHARD_COUNT};
use iace_actors::sentiment::SentimentLabel;
use iace_actors::voice::record::{ConversationRecord, Speaker};
use pgvector::Vector;
use uuid::Uuid;

/// Wall time plus a jump past the learning settle delay, so queued jobs are due at once.
struct Ahead;

impl Clock for Ahead {
    fn now(&self) -> DateTime<Utc> {
        Utc::now().trunc_subsecs(6) + chrono::Duration::seconds(15)
    }
}

/// The local embedder behind a switch (standing in for an embedding vendor whose breaker is
/// open), counting texts.
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
            return Err(EmbedError::Unavailable("google: breaker open".into()));
        }
        self.texts.fetch_add(texts.len() as u32, Ordering::SeqCst);
        LocalEmbedder.embed(texts, task).await
    }
}

async fn completed_call(
    store: &PgStore,
    org: Uuid,
    agent: Uuid,
    customer: Uuid,
    epochs: &[i64],
) -> Call {
    let spec = CallSpec {
        id: Uuid::new_v4(),
        organization_id: org,
        direction: Direction::Outbound,
        from: "+14155550199".parse().unwrap(),
        to: "+14155550100".parse().unwrap(),
        agent_id: agent,
        customer_id: Some(customer),
        metadata: serde_json::json!({}),
        ring_timeout_secs: 30,
        max_duration_secs: 600,
        inbound_leg_id: None,
    };
    let now = Utc::now().trunc_subsecs(6);
    let (mut call, _) = start(spec.clone(), now);
    call.owner_epoch = epochs[usize::from(shard_of(spec.id))];
    store
        .insert_call(
            &call,
            &JournalEntry {
                call_id: spec.id,
                seq: 1,
                at: now,
                event: Event::Created { spec: spec.clone() },
            },
            None,
        )
        .await
        .unwrap();
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
    let mood = |turn, score: f64| Event::Conversation {
        record: ConversationRecord::Sentiment {
            turn,
            score,
            label: if score < 0.0 {
                SentimentLabel::Negative
            } else {
                SentimentLabel::Positive
            },
            source: "groq".into(),
            degraded: false,
        },
    };
    for event in [
        Event::Carrier {
            event: CarrierEvent::Answered,
        },
        say(Speaker::Agent, 0, "Hello, this is Ava from Acme."),
        say(
            Speaker::Caller,
            1,
            "My router is broken again and the internet keeps dropping.",
        ),
        mood(1, -0.5),
        say(
            Speaker::Agent,
            1,
            "I'm sorry. I'll send a technician tomorrow morning.",
        ),
        say(
            Speaker::Caller,
            2,
            "Thanks. Please text me before they come.",
        ),
        mood(2, 0.5),
        say(Speaker::Agent, 2, "Will do. Goodbye!"),
        Event::Carrier {
            event: CarrierEvent::HungUp {
                cause: HangupCause::NormalClearing,
            },
        },
    ] {
        let before = call.version;
        step(&mut call, event.clone(), now).unwrap();
        let entry = JournalEntry {
            call_id: spec.id,
            seq: call.version,
            at: now,
            event,
        };
        store.append(&call, before, &entry, None).await.unwrap();
    }
    call
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedding_outage_defers_learning_on_postgres_and_nothing_is_lost() {
    let (_, pool) = common::db::migrated_pool().await;
    let store = PgStore::new(pool.clone());
    let now = Utc::now().trunc_subsecs(6);
    let org = Organization {
        id: Uuid::new_v4(),
        name: "Acme".into(),
        created_at: now,
    };
    store
        .create_organization(&org, Uuid::new_v4(), &format!("hash-{}", org.id), "iace_x")
        .await
        .unwrap();
    let agent: NewAgent = serde_json::from_str(r#"{"name":"Ava"}"#).unwrap();
    let agent = agent.validate(Uuid::new_v4(), org.id, now).unwrap();
    store.insert_agent(&agent).await.unwrap();
    let customer: NewCustomer = serde_json::from_str(r#"{"phone":"+14155550100"}"#).unwrap();
    let customer = customer.validate(Uuid::new_v4(), org.id, now).unwrap();
    assert!(store.insert_customer(&customer).await.unwrap());
    let shards: Vec<u16> = (0..SHARD_COUNT).collect();
    let epochs = store
        .acquire_shards("learning-test", &shards)
        .await
        .unwrap();
    let call = completed_call(&store, org.id, agent.id, customer.id, &epochs).await;
    let journal = store
        .call_events(org.id, call.spec.id)
        .await
        .unwrap()
        .unwrap();
    let learned = extract(&call, &journal);
    let (patterns, memories) = (learned.patterns.len(), learned.memories.len());
    assert!(patterns >= 2 && memories >= 4, "{patterns} {memories}");

    let embedder = Arc::new(Switchable::default());
    embedder.down.store(true, Ordering::SeqCst);
    let store = Arc::new(store);
    let (sup, _) = ractor::Actor::spawn(
        None,
        LearningSupervisor,
        (
            LearningPorts {
                calls: store.clone(),
                queries: store.clone(),
                store: store.clone(),
                embedder: embedder.clone(),
                clock: Arc::new(Ahead),
                ids: Arc::new(RandomIds),
            },
            LearningConfig {
                poll_every: Duration::from_millis(100),
                retry_base: Duration::from_millis(300),
                ..LearningConfig::default()
            },
        ),
    )
    .await
    .unwrap();
    let queue = |pool: sqlx::PgPool, id: Uuid| async move {
        sqlx::query_as::<_, (i32, Option<String>, Option<DateTime<Utc>>)>(
            "SELECT attempts, last_error, done_at FROM learning_queue WHERE call_id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let count = |pool: sqlx::PgPool, table: &'static str| async move {
        sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    wait_for("two deferred attempts", async || {
        queue(pool.clone(), call.spec.id).await.0 >= 2
    })
    .await;
    let (_, error, done) = queue(pool.clone(), call.spec.id).await;
    assert!(error.unwrap().contains("breaker open"));
    assert!(done.is_none());
    assert_eq!(count(pool.clone(), "learned_pattern").await, 0);
    assert_eq!(count(pool.clone(), "customer_memory").await, 0);

    embedder.down.store(false, Ordering::SeqCst);
    wait_for("the job to finish", async || {
        queue(pool.clone(), call.spec.id).await.2.is_some()
    })
    .await;
    assert_eq!(
        count(pool.clone(), "learned_pattern").await,
        patterns as i64
    );
    assert_eq!(
        count(pool.clone(), "customer_memory").await,
        memories as i64
    );
    assert_eq!(
        count(pool.clone(), "embedding_cache").await,
        i64::from(embedder.texts.load(Ordering::SeqCst))
    );
    let (dims, model): (i32, String) = sqlx::query_as(
        "SELECT vector_dims(embedding), embedding_model FROM customer_memory LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((dims, model.as_str()), (768, "local-ngram-v1"));

    // The stored vectors answer similarity searches (HNSW, cosine).
    let query = Vector::from(LocalEmbedder::vector("customer's router is broken"));
    let nearest: (String, String) = sqlx::query_as(
        "SELECT kind, content FROM customer_memory WHERE customer_id = $1 \
         ORDER BY embedding <=> $2 LIMIT 1",
    )
    .bind(customer.id)
    .bind(query)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(nearest.0, "issue", "{nearest:?}");
    assert!(nearest.1.contains("router is broken"));

    // Finished is finished: nothing is claimed again, nothing stored twice.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(pool.clone(), "learned_pattern").await,
        patterns as i64
    );
    sup.stop(None);
}
