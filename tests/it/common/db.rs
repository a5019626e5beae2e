//! The services the tests run on: a fresh, migrated database per test on the server named by
//! `DATABASE_URL`, and the Redis named by `REDIS_URL`.

/// Creates a uniquely named database (template1 already has the vector extension available)
/// and returns its URL. Each test gets its own, so tests run in parallel without sharing shard
/// leases or rows.
pub async fn fresh_database() -> String {
    let base = std::env::var("DATABASE_URL").expect(
        "DATABASE_URL is not set: run `scripts/services up` and `eval \"$(scripts/services env)\"`",
    );
    let name = format!("iace_t_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&base)
        .await
        .expect("connecting to DATABASE_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("CREATE DATABASE");
    admin.close().await;
    match base.rfind('/') {
        Some(i) => format!("{}/{name}", &base[..i]),
        None => panic!("DATABASE_URL has no database path: {base}"),
    }
}

/// A fresh database with migrations applied, and a pool on it.
pub async fn migrated_pool() -> (String, sqlx::PgPool) {
    let url = fresh_database().await;
    let pool = iace::store::connect(&url).await.expect("connect");
    iace::store::migrate(&pool).await.expect("migrate");
    (url, pool)
}

/// `REDIS_URL`, or a panic saying how to set it.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").expect(
        "REDIS_URL is not set: run `scripts/services up` and `eval \"$(scripts/services env)\"`",
    )
}
