//! Learning on the real Postgres store (pgvector): a completed call is queued with its
//! completion, an embedding outage defers it without losing it, and once embeddings work the
//! patterns, memories and cache rows are stored once; the stored vectors answer similarity
//! searches. Requires `DATABASE_URL`.

use crate::common;
use crate::common::wait::wait_for;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use iace::app::RandomIds;
use iace::store::PgStore;
use iace_actors::catalog::{NewAgent, NewCustomer, Organization};
use iace_actors::learning::actor::{LearningConfig, LearningPorts, LearningSupervisor};
use iace_actors::learning::extract::extract;
use iace_actors::learning::LocalEmbedder;
use iace_actors::machine::record::{ConversationRecord, Speaker};
use iace_actors::machine::{
    start, step, Call, CallSpec, CarrierEvent, Direction, Event, HangupCause,
};
use iace_actors::ports::learning::{EmbedError, EmbedTask, Embedder};
use iace_actors::ports::sentiment::SentimentLabel;
use iace_actors::ports::{shard_of, CallStore, Clock, JournalEntry, QueryStore, SHARD_COUNT};
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
    used: &[Uuid],
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
        Event::carrier(CarrierEvent::Answered),
        Event::Conversation {
            record: ConversationRecord::ContextRetrieved {
                memories: Vec::new(),
                patterns: used.to_vec(),
                escalation_risk: 0.1,
                degraded: None,
            },
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
        Event::carrier(CarrierEvent::HungUp {
            cause: HangupCause::NormalClearing,
        }),
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

/// A fresh database with an organization, an agent, a customer, and every shard leased.
struct Tenant {
    pool: sqlx::PgPool,
    store: PgStore,
    org: Organization,
    agent: iace_actors::catalog::Agent,
    customer: iace_actors::catalog::Customer,
    epochs: Vec<i64>,
}

impl Tenant {
    async fn new(node: &str) -> Tenant {
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
        let epochs = store.acquire_shards(node, &shards).await.unwrap();
        Tenant {
            pool,
            store,
            org,
            agent,
            customer,
            epochs,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedding_outage_defers_learning_on_postgres_and_nothing_is_lost() {
    let Tenant {
        pool,
        store,
        org,
        agent,
        customer,
        epochs,
    } = Tenant::new("learning-test").await;
    let call = completed_call(&store, org.id, agent.id, customer.id, &epochs, &[]).await;
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
        LearningSupervisor::default(),
        (
            "learning",
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

mod api {
    use super::*;
    use common::api::{free_port, Api};
    use iace::config::{LearningArgs, ServeArgs};
    use reqwest::StatusCode;
    use serde_json::{json, Value};

    #[allow(clippy::too_many_arguments)]
    async fn memory(
        pool: &sqlx::PgPool,
        org: &str,
        customer: &str,
        kind: &str,
        content: &str,
        importance: f32,
        days_ago: i64,
        model: &str,
    ) {
        sqlx::query(
            "INSERT INTO customer_memory (id, organization_id, customer_id, kind, content, embedding, \
               embedding_model, importance, created_at) VALUES ($1, $2::uuid, $3::uuid, $4, $5, $6, $7, $8, $9)",
        )
        .bind(Uuid::new_v4())
        .bind(org)
        .bind(customer)
        .bind(kind)
        .bind(content)
        .bind(Vector::from(LocalEmbedder::vector(content)))
        .bind(model)
        .bind(importance)
        .bind(Utc::now() - chrono::Duration::days(days_ago))
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO embedding_cache (model, text_hash, embedding) \
             VALUES ($1, sha256(convert_to($2, 'UTF8')), $3) ON CONFLICT DO NOTHING",
        )
        .bind(model)
        .bind(content)
        .bind(Vector::from(LocalEmbedder::vector(content)))
        .execute(pool)
        .await
        .unwrap();
    }

    async fn pattern(
        pool: &sqlx::PgPool,
        org: &str,
        agent: &str,
        description: &str,
        used: i32,
        won: i32,
    ) {
        sqlx::query(
            "INSERT INTO learned_pattern (id, organization_id, agent_id, pattern_type, pattern_data, \
               description, embedding, embedding_model, usage_count, success_count, created_at) \
             VALUES ($1, $2::uuid, $3::uuid, 'resolution', '{}', $4, $5, 'local-ngram-v1', $6, $7, now())",
        )
        .bind(Uuid::new_v4())
        .bind(org)
        .bind(agent)
        .bind(description)
        .bind(Vector::from(LocalEmbedder::vector(description)))
        .bind(used)
        .bind(won)
        .execute(pool)
        .await
        .unwrap();
    }

    fn contents(v: &Value) -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                m["content"]
                    .as_str()
                    .or(m["description"].as_str())
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    /// Recall through the HTTP API: relevance (similarity, importance, decay), the embedding
    /// model filter, tenant isolation, validation, and the right to be forgotten.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memories_and_patterns_are_searchable_scoped_and_forgettable() {
        let (database_url, pool) = common::db::migrated_pool().await;
        let port = free_port();
        let running = iace::app::start(ServeArgs {
            learning: LearningArgs {
                enabled: true,
                memory_half_life_days: 30,
                ..Default::default()
            },
            sim_ring_ms: 100,
            sim_talk_ms: 100,
            sim_key_prefix: format!("iace:test:{}:", Uuid::new_v4().simple()),
            node_id: Some("learning-api".into()),
            max_call_secs: 600,
            ..ServeArgs::local(
                &database_url,
                &common::db::redis_url(),
                format!("127.0.0.1:{port}").parse().unwrap(),
            )
        })
        .await
        .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let (org, key) = iace::app::create_org(&database_url, "Acme").await.unwrap();
        let (_, other_key) = iace::app::create_org(&database_url, "Other").await.unwrap();
        let api = Api::new(base.clone(), key);
        let other = Api::new(base, other_key);
        let customer = api
            .post(
                "/v1/customers",
                json!({"phone": "+14155550100"}),
                StatusCode::CREATED,
            )
            .await;
        let cid = customer["id"].as_str().unwrap().to_owned();
        let agent = api
            .post("/v1/agents", json!({"name": "Ava"}), StatusCode::CREATED)
            .await;
        let aid = agent["id"].as_str().unwrap().to_owned();
        let oid = org.id.to_string();
        let m = "local-ngram-v1";
        memory(
            &pool,
            &oid,
            &cid,
            "issue",
            "The router keeps dropping the internet connection",
            0.7,
            1,
            m,
        )
        .await;
        memory(
            &pool,
            &oid,
            &cid,
            "issue",
            "The router keeps dropping the internet connection every night",
            0.7,
            200,
            m,
        )
        .await;
        memory(
            &pool,
            &oid,
            &cid,
            "preference",
            "Prefers a text message before a technician visit",
            0.6,
            2,
            m,
        )
        .await;
        memory(
            &pool,
            &oid,
            &cid,
            "call_summary",
            "Asked about the invoice for March",
            0.5,
            3,
            m,
        )
        .await;
        // Made by another model: never compared with this server's vectors.
        memory(
            &pool,
            &oid,
            &cid,
            "issue",
            "The router keeps dropping the internet connection",
            1.0,
            0,
            "gemini-embedding-001@768",
        )
        .await;

        // With a query: the close, recent memory first; its 200-day-old twin is as close but
        // decayed to almost nothing; the other model's copy never shows.
        let found = api
            .get(&format!(
                "/v1/customers/{cid}/memories?query=router%20dropping%20the%20internet&k=4"
            ))
            .await;
        let hits = found["data"].as_array().unwrap();
        assert_eq!(hits.len(), 4, "{found:#}");
        assert_eq!(
            hits[0]["content"],
            "The router keeps dropping the internet connection"
        );
        let twin = hits
            .iter()
            .find(|h| h["content"].as_str().unwrap().ends_with("every night"))
            .unwrap();
        assert!(twin["similarity"].as_f64().unwrap() > 0.6, "{found:#}");
        assert!(twin["relevance"].as_f64().unwrap() < 0.05, "{found:#}");
        assert!(hits[0]["relevance"].as_f64().unwrap() > 0.5, "{found:#}");
        assert_eq!(
            contents(&found)
                .iter()
                .filter(|c| *c == "The router keeps dropping the internet connection")
                .count(),
            1
        );
        // Without one: importance and recency.
        let recent = api.get(&format!("/v1/customers/{cid}/memories")).await;
        assert_eq!(
            contents(&recent),
            [
                "The router keeps dropping the internet connection",
                "Prefers a text message before a technician visit",
                "Asked about the invoice for March",
                "The router keeps dropping the internet connection every night",
            ]
        );
        // Validation and tenant isolation.
        for bad in ["k=0", "k=51", "limit=3"] {
            let r = api
                .http
                .get(format!("{}/v1/customers/{cid}/memories?{bad}", api.base))
                .bearer_auth(&api.key)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
        for path in [
            format!("/v1/customers/{cid}/memories"),
            format!("/v1/agents/{aid}/patterns"),
            format!("/v1/patterns/top?agent_id={aid}"),
        ] {
            let r = other
                .http
                .get(format!("{}{path}", other.base))
                .bearer_auth(&other.key)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        }

        // Patterns: nearest to the query, or the best success rates.
        pattern(
            &pool,
            &oid,
            &aid,
            "Refund the double charge and confirm by email",
            10,
            9,
        )
        .await;
        pattern(
            &pool,
            &oid,
            &aid,
            "Offer a technician visit for router problems",
            10,
            5,
        )
        .await;
        pattern(&pool, &oid, &aid, "Explain the invoice line by line", 0, 0).await;
        let top = api
            .get(&format!("/v1/patterns/top?agent_id={aid}&k=3"))
            .await;
        assert_eq!(
            contents(&top),
            [
                "Refund the double charge and confirm by email",
                "Offer a technician visit for router problems",
                "Explain the invoice line by line",
            ]
        );
        assert_eq!(top["data"][0]["success_rate"], 0.9);
        let near = api
            .get(&format!(
                "/v1/agents/{aid}/patterns?query=router%20technician&k=1"
            ))
            .await;
        assert_eq!(
            contents(&near),
            ["Offer a technician visit for router problems"]
        );

        // Right to be forgotten: every memory (whatever its model) and the cached vectors.
        let r = other
            .http
            .delete(format!("{}/v1/customers/{cid}/memories", other.base))
            .bearer_auth(&other.key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = api
            .http
            .delete(format!("{}/v1/customers/{cid}/memories", api.base))
            .bearer_auth(&api.key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.json::<Value>().await.unwrap()["deleted"], 5);
        assert!(contents(&api.get(&format!("/v1/customers/{cid}/memories")).await).is_empty());
        let cached: i64 = sqlx::query_scalar("SELECT count(*) FROM embedding_cache")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(cached, 0);
        // The agent's patterns are the agent's: untouched.
        assert_eq!(
            contents(&api.get(&format!("/v1/patterns/top?agent_id={aid}")).await).len(),
            3
        );
        running.shutdown().await;
    }
}

/// Degradation for embeddings, through the real Google client and its breaker: the
/// vendor fails, the breaker opens, learning jobs stay queued (no request reaches the vendor
/// while it is open), and once the vendor is back the half-open probe succeeds and every
/// queued call is learned, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_google_outage_opens_the_breaker_and_queued_learning_completes_after_it() {
    use iace::clients::google::{GoogleConfig, GoogleEmbedder};
    use iace::clients::retry::RetryPolicy;
    use iace_actors::breaker::{BreakerConfig, BreakerState, Breakers};
    use iace_fakes::google::{FakeGoogle, FakeGoogleConfig};

    let Tenant {
        pool,
        store,
        org,
        agent,
        customer,
        epochs,
    } = Tenant::new("google-outage").await;
    let calls = [
        completed_call(&store, org.id, agent.id, customer.id, &epochs, &[]).await,
        completed_call(&store, org.id, agent.id, customer.id, &epochs, &[]).await,
    ];

    let google = FakeGoogle::start(FakeGoogleConfig::default())
        .await
        .unwrap();
    google.fail_next(1000, 503);
    let breakers = Breakers::start(
        [(
            "google".to_owned(),
            BreakerConfig {
                consecutive_failures: 3,
                open_wait: Duration::from_millis(800),
                open_wait_cap: Duration::from_millis(800),
                ..BreakerConfig::default()
            },
        )]
        .into(),
        Arc::new(iace::app::SystemClock),
        &prometheus::Registry::new(),
    )
    .await
    .unwrap();
    let embedder = GoogleEmbedder::new(
        GoogleConfig {
            api_base: google.base_url(),
            retry: RetryPolicy {
                max_attempts: 2,
                base: Duration::from_millis(20),
                cap: Duration::from_millis(50),
                attempt_timeout: Duration::from_secs(2),
                deadline: Duration::from_secs(4),
                max_retry_after: Duration::from_secs(1),
            },
            breaker: breakers.get("google").cloned(),
            ..GoogleConfig::new(google.api_key())
        },
        None,
    )
    .unwrap();
    let store = Arc::new(store);
    let (sup, _) = ractor::Actor::spawn(
        None,
        LearningSupervisor::default(),
        (
            "learning",
            (
                LearningPorts {
                    calls: store.clone(),
                    queries: store.clone(),
                    store: store.clone(),
                    embedder: Arc::new(embedder),
                    clock: Arc::new(Ahead),
                    ids: Arc::new(RandomIds),
                },
                LearningConfig {
                    poll_every: Duration::from_millis(100),
                    retry_base: Duration::from_millis(200),
                    retry_cap: Duration::from_millis(400),
                    ..LearningConfig::default()
                },
            ),
        ),
    )
    .await
    .unwrap();
    let breaker = breakers.get("google").cloned().unwrap();
    wait_for("the google breaker to open", async || {
        breaker.state() == BreakerState::Open
    })
    .await;
    // While open: jobs are deferred without asking Google. (A loaded machine may reach the
    // open wait's end within this check: a probe then reaches Google and, failing, trips the
    // breaker again, so the check holds only while the trip count is unchanged.)
    let trips = breaker.snapshot().await.unwrap().trips;
    let asked = google.requests().len();
    // Both jobs tried and deferred, however long a busy machine takes to get to the second.
    let pending = || async {
        sqlx::query_as::<_, (i32, Option<String>)>(
            "SELECT attempts, last_error FROM learning_queue WHERE done_at IS NULL \
             ORDER BY call_id",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    wait_for("both jobs to be deferred", async || {
        let p = pending().await;
        p.len() == 2 && p.iter().all(|(n, _)| *n >= 1)
    })
    .await;
    let pending = pending().await;
    assert_eq!(pending.len(), 2, "{pending:?}");
    let now = breaker.snapshot().await.unwrap();
    if now.state == BreakerState::Open && now.trips == trips {
        assert_eq!(
            google.requests().len(),
            asked,
            "nothing reaches Google while open"
        );
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM learned_pattern")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);

    // Google is back: the probes go through and both calls are learned.
    google.fail_next(0, 503);
    wait_for("both jobs to finish", async || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM learning_queue WHERE done_at IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap()
            == 0
    })
    .await;
    // Its probes succeeded (it closes after enough of them).
    assert_ne!(breaker.state(), BreakerState::Open);
    for call in &calls {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM learned_pattern WHERE source_call_id = $1")
                .bind(call.spec.id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert!(n >= 2, "{n}");
    }
    let model: String = sqlx::query_scalar("SELECT DISTINCT embedding_model FROM customer_memory")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(model, "gemini-embedding-001@768");
    sup.stop(None);
    breakers.stop();
    google.shutdown().await;
}
