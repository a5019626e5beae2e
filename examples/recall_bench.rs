//! Benchmark: recall over pgvector at scale. Seeds `--memories` customer memories across
//! `--customers` customers and `--patterns` learned patterns across `--agents` agents (texts
//! made from a fixed vocabulary, vectors from the local embedder, 768-d), builds the HNSW
//! indexes, then measures top-5 retrieval through the store's own queries (the ones the API
//! and the start of a call use) and recall@5 of the HNSW search against exact search.
//!
//! ```text
//! scripts/services up && eval "$(scripts/services env)"
//! cargo run --release --example recall_bench -- --memories 100000 --customers 10000 --patterns 100000
//! ```

use std::time::{Duration, Instant};

use iace::store::PgStore;
use iace_actors::learning::LocalEmbedder;
use iace_actors::ports::learning::LearningQueries;
use pgvector::Vector;
use uuid::Uuid;

mod common;
use common::{arg, percentile};

/// A tiny deterministic generator (xorshift), so every run seeds the same rows.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const SUBJECTS: [&str; 24] = [
    "router",
    "invoice",
    "refund",
    "password",
    "delivery",
    "subscription",
    "technician",
    "contract",
    "payment",
    "card",
    "address",
    "plan",
    "upgrade",
    "modem",
    "signal",
    "outage",
    "discount",
    "renewal",
    "appointment",
    "order",
    "warranty",
    "battery",
    "screen",
    "account",
];
const PROBLEMS: [&str; 16] = [
    "keeps failing",
    "was charged twice",
    "never arrived",
    "is too expensive",
    "stopped working",
    "needs a reset",
    "is late again",
    "was cancelled by mistake",
    "shows an error",
    "is missing",
    "was rejected",
    "is slow at night",
    "changed without notice",
    "cannot be found",
    "was damaged",
    "expired last week",
];
const WANTS: [&str; 12] = [
    "wants a callback",
    "prefers email",
    "asked for a supervisor",
    "wants a refund",
    "asked to cancel",
    "wants a discount",
    "prefers text messages",
    "wants it fixed today",
    "asked for a new appointment",
    "wants to upgrade",
    "asked for the invoice",
    "was satisfied",
];

fn text(rng: &mut Rng) -> String {
    format!(
        "The customer's {} {}; they {} about the {}",
        rng.pick(&SUBJECTS),
        rng.pick(&PROBLEMS),
        rng.pick(&WANTS),
        rng.pick(&SUBJECTS)
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let memories = arg("--memories", 100_000);
    let customers = arg("--customers", 10_000).max(1);
    let patterns = arg("--patterns", 100_000);
    let agents = arg("--agents", 10).max(1);
    let queries = arg("--queries", 500);
    let base_url = std::env::var("DATABASE_URL").map_err(|_| {
        anyhow::anyhow!("DATABASE_URL is not set: eval \"$(scripts/services env)\"")
    })?;
    let name = format!("iace_recall_{}", Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&base_url).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    let url = format!("{}/{name}", &base_url[..base_url.rfind('/').unwrap()]);
    let pool = iace::store::connect(&url).await?;
    iace::store::migrate(&pool).await?;
    let model = "local-ngram-v1";

    // Tenancy rows the vectors hang off.
    let org = Uuid::new_v4();
    sqlx::query("INSERT INTO organization (id, name, created_at) VALUES ($1, 'Bench', now())")
        .bind(org)
        .execute(&pool)
        .await?;
    let agent_ids: Vec<Uuid> = (0..agents).map(|_| Uuid::new_v4()).collect();
    for a in &agent_ids {
        sqlx::query(
            "INSERT INTO agent (id, organization_id, name, status, agent_type, created_at, updated_at) \
             VALUES ($1, $2, 'Agent', 'active', 'outbound', now(), now())",
        )
        .bind(a)
        .bind(org)
        .execute(&pool)
        .await?;
    }
    let customer_ids: Vec<Uuid> = (0..customers).map(|_| Uuid::new_v4()).collect();
    for chunk in customer_ids.chunks(5000) {
        let phones: Vec<String> = chunk
            .iter()
            .map(|c| format!("+1415{:07}", c.as_u128() % 10_000_000))
            .collect();
        sqlx::query(
            "INSERT INTO customer (id, organization_id, phone, created_at, updated_at) \
             SELECT id, $2, phone, now(), now() FROM unnest($1::uuid[], $3::text[]) AS t(id, phone) \
             ON CONFLICT DO NOTHING",
        )
        .bind(chunk)
        .bind(org)
        .bind(&phones)
        .execute(&pool)
        .await?;
    }
    let known: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM customer")
        .fetch_all(&pool)
        .await?;

    // Drop the HNSW indexes while loading (built once at the end, as a bulk load would).
    sqlx::query("DROP INDEX customer_memory_embedding")
        .execute(&pool)
        .await?;
    sqlx::query("DROP INDEX learned_pattern_embedding")
        .execute(&pool)
        .await?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    let mut memory_texts: Vec<(Uuid, String)> = Vec::with_capacity(memories);
    for chunk_start in (0..memories).step_by(2000) {
        let n = (memories - chunk_start).min(2000);
        let mut ids = Vec::with_capacity(n);
        let mut owners = Vec::with_capacity(n);
        let mut contents = Vec::with_capacity(n);
        let mut vectors = Vec::with_capacity(n);
        let mut importance = Vec::with_capacity(n);
        for i in 0..n {
            let owner = known[(chunk_start + i) % known.len()];
            let t = text(&mut rng);
            ids.push(Uuid::new_v4());
            owners.push(owner);
            vectors.push(Vector::from(LocalEmbedder::vector(&t)));
            importance.push((rng.next() % 100) as f32 / 100.0);
            memory_texts.push((owner, t.clone()));
            contents.push(t);
        }
        sqlx::query(
            "INSERT INTO customer_memory (id, organization_id, customer_id, kind, content, embedding, \
               embedding_model, importance, created_at) \
             SELECT id, $2, customer, 'issue', content, embedding, $6, importance, now() \
             FROM unnest($1::uuid[], $3::uuid[], $4::text[], $5::vector[], $7::real[]) \
               AS t(id, customer, content, embedding, importance)",
        )
        .bind(&ids)
        .bind(org)
        .bind(&owners)
        .bind(&contents)
        .bind(&vectors)
        .bind(model)
        .bind(&importance)
        .execute(&pool)
        .await?;
    }
    let mut pattern_texts: Vec<(Uuid, String)> = Vec::with_capacity(patterns);
    for chunk_start in (0..patterns).step_by(2000) {
        let n = (patterns - chunk_start).min(2000);
        let mut ids = Vec::with_capacity(n);
        let mut owners = Vec::with_capacity(n);
        let mut descriptions = Vec::with_capacity(n);
        let mut vectors = Vec::with_capacity(n);
        for i in 0..n {
            let agent = agent_ids[(chunk_start + i) % agents];
            let t = text(&mut rng);
            ids.push(Uuid::new_v4());
            owners.push(agent);
            vectors.push(Vector::from(LocalEmbedder::vector(&t)));
            pattern_texts.push((agent, t.clone()));
            descriptions.push(t);
        }
        sqlx::query(
            "INSERT INTO learned_pattern (id, organization_id, agent_id, pattern_type, pattern_data, \
               description, embedding, embedding_model, usage_count, success_count, created_at) \
             SELECT id, $2, agent, 'resolution', '{}', description, embedding, $6, 10, 5, now() \
             FROM unnest($1::uuid[], $3::uuid[], $4::text[], $5::vector[]) \
               AS t(id, agent, description, embedding)",
        )
        .bind(&ids)
        .bind(org)
        .bind(&owners)
        .bind(&descriptions)
        .bind(&vectors)
        .bind(model)
        .execute(&pool)
        .await?;
    }
    let loaded = started.elapsed();
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    sqlx::query("SET maintenance_work_mem = '1GB'")
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "CREATE INDEX customer_memory_embedding ON customer_memory USING hnsw (embedding vector_cosine_ops)",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "CREATE INDEX learned_pattern_embedding ON learned_pattern USING hnsw (embedding vector_cosine_ops)",
    )
    .execute(&mut *conn)
    .await?;
    drop(conn);
    sqlx::query("ANALYZE customer_memory")
        .execute(&pool)
        .await?;
    sqlx::query("ANALYZE learned_pattern")
        .execute(&pool)
        .await?;
    let indexed = started.elapsed();
    println!(
        "seeded {memories} memories over {} customers and {patterns} patterns over {agents} agents in {:.1} s; HNSW indexes built in {:.1} s",
        known.len(),
        loaded.as_secs_f64(),
        indexed.as_secs_f64()
    );

    let store = PgStore::new(pool.clone());
    // Queries: a stored text with its last word changed, so the nearest rows are meaningful.
    let mut memory_lat = Vec::new();
    let mut pattern_lat = Vec::new();
    let mut memory_recall = 0.0;
    let mut pattern_recall = 0.0;
    for q in 0..queries {
        let (customer, t) = &memory_texts[(rng.next() % memory_texts.len() as u64) as usize];
        let query = format!("{} {}", t, rng.pick(&SUBJECTS));
        let v = LocalEmbedder::vector(&query);
        let at = Instant::now();
        let hits = store
            .memory_candidates(org, *customer, model, Some(&v), 5)
            .await?;
        memory_lat.push(at.elapsed());
        let exact: Vec<Uuid> =
            exact_top5(&pool, "customer_memory", "customer_id", *customer, &v).await?;
        memory_recall += overlap(&exact, &hits.iter().map(|h| h.id).collect::<Vec<_>>());

        let (agent, t) = &pattern_texts[(rng.next() % pattern_texts.len() as u64) as usize];
        let query = format!("{} {}", t, rng.pick(&SUBJECTS));
        let v = LocalEmbedder::vector(&query);
        let at = Instant::now();
        let hits = store
            .pattern_candidates(org, *agent, model, Some(&v), 5)
            .await?;
        pattern_lat.push(at.elapsed());
        // Exact search over 10k+ rows is slow: check recall on a sample.
        if q % 5 == 0 {
            let exact = exact_top5(&pool, "learned_pattern", "agent_id", *agent, &v).await?;
            pattern_recall += overlap(&exact, &hits.iter().map(|h| h.id).collect::<Vec<_>>());
        }
    }
    memory_lat.sort_unstable();
    pattern_lat.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "memories of one customer, top-5 ({queries} queries): p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms; recall@5 vs exact {:.3}",
        ms(percentile(&memory_lat, 50.0)),
        ms(percentile(&memory_lat, 95.0)),
        ms(percentile(&memory_lat, 99.0)),
        memory_recall / queries as f64
    );
    println!(
        "patterns of one agent ({} per agent), top-5 ({queries} queries): p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms; recall@5 vs exact {:.3} ({} checked)",
        patterns / agents,
        ms(percentile(&pattern_lat, 50.0)),
        ms(percentile(&pattern_lat, 95.0)),
        ms(percentile(&pattern_lat, 99.0)),
        pattern_recall / queries.div_ceil(5) as f64,
        queries.div_ceil(5)
    );
    pool.close().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&admin)
        .await?;
    Ok(())
}

/// The true top 5 by cosine distance, without the index.
async fn exact_top5(
    pool: &sqlx::PgPool,
    table: &str,
    owner_column: &str,
    owner: Uuid,
    v: &[f32],
) -> anyhow::Result<Vec<Uuid>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL enable_indexscan = off")
        .execute(&mut *tx)
        .await?;
    let ids = sqlx::query_scalar(&format!(
        "SELECT id FROM {table} WHERE {owner_column} = $1 ORDER BY embedding <=> $2, id LIMIT 5"
    ))
    .bind(owner)
    .bind(Vector::from(v.to_vec()))
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ids)
}

/// Share of `exact` found in `got`.
fn overlap(exact: &[Uuid], got: &[Uuid]) -> f64 {
    if exact.is_empty() {
        return 1.0;
    }
    exact.iter().filter(|e| got.contains(e)).count() as f64 / exact.len() as f64
}
