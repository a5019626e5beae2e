//! The Gemini embeddings client ([`GoogleEmbedder`]) against the wire-level fake
//! (`iace_fakes::google`): batching, normalisation, task types, refusals, retries, RetryInfo and
//! the `google` breaker; and against a tiny hand-made server for answers the fake never gives
//! (wrong counts and sizes). Real sockets, real time; no database needed.

use crate::common;

use common::vendor::{breaker_reaches, breakers_for, canned_server, fast_retry, settle};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iace::clients::google::{GoogleConfig, GoogleEmbedder, GoogleMetrics, MAX_BATCH};
use iace::clients::retry::RetryPolicy;
use iace_actors::breaker::{BreakerConfig, BreakerState, Breakers};
use iace_actors::learning::embed::normalize;
use iace_actors::ports::learning::{EmbedError, EmbedTask, Embedder, EMBEDDING_DIMS};
use iace_fakes::google::{EmbedMethod, FakeGoogle, FakeGoogleConfig, InjectedFault, KeySource};

const MODEL: &str = "gemini-embedding-001";

fn config(fake: &FakeGoogle, breakers: &Breakers) -> GoogleConfig {
    GoogleConfig {
        api_base: fake.base_url(),
        retry: fast_retry(),
        breaker: breakers.get("google").cloned(),
        ..GoogleConfig::new(fake.api_key())
    }
}

/// A fake, the `google` breaker configured as given, and an embedder with metrics on
/// `registry`.
async fn setup(
    breaker: BreakerConfig,
    registry: &prometheus::Registry,
) -> (FakeGoogle, GoogleEmbedder, Breakers) {
    let fake = FakeGoogle::start(FakeGoogleConfig::default())
        .await
        .unwrap();
    let breakers = breakers_for("google", breaker).await;
    let metrics = GoogleMetrics::new(registry).unwrap();
    let embedder = GoogleEmbedder::new(config(&fake, &breakers), Some(metrics)).unwrap();
    (fake, embedder, breakers)
}

fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("pattern {i}: the caller asks about invoice {}", i * 7))
        .collect()
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// A counter's value by metric name and `outcome` label (or the unlabelled counter).
fn counter(registry: &prometheus::Registry, name: &str, outcome: Option<&str>) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            outcome.is_none_or(|o| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "outcome" && l.value() == o)
            })
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// Lets the breaker actor take in the outcomes it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_texts_in_order_and_normalises_every_vector() {
    let registry = prometheus::Registry::new();
    let (fake, embedder, breakers) = setup(BreakerConfig::default(), &registry).await;
    assert_eq!(embedder.model(), "gemini-embedding-001@768");
    let input = texts(250);
    let vectors = embedder.embed(&input, EmbedTask::Document).await.unwrap();

    // 250 texts: three requests of 100, 100 and 50, in order, with the texts in order.
    let reqs = fake.requests();
    let sizes: Vec<usize> = reqs.iter().map(|r| r.items.len()).collect();
    assert_eq!(sizes, [100, 100, 50]);
    let sent: Vec<String> = reqs.iter().flat_map(|r| r.texts()).collect();
    assert_eq!(sent, input);
    for r in &reqs {
        assert_eq!(r.method, EmbedMethod::BatchEmbedContents);
        assert_eq!(r.model, MODEL);
        assert_eq!(r.status, 200);
        // The key travels in the header, never in the URL.
        assert_eq!(r.key_source, Some(KeySource::Header));
        for item in &r.items {
            assert_eq!(item.model.as_deref(), Some("models/gemini-embedding-001"));
            assert_eq!(item.task_type.as_deref(), Some("RETRIEVAL_DOCUMENT"));
            assert_eq!(item.output_dimensionality, Some(768));
        }
    }

    // One unit vector per text, in order: exactly the fake's 768-value prefix, normalised.
    assert_eq!(vectors.len(), 250);
    for (text, v) in input.iter().zip(&vectors) {
        assert_eq!(v.len(), EMBEDDING_DIMS);
        assert!((norm(v) - 1.0).abs() < 1e-5, "{text}: {}", norm(v));
        let mut expected = fake.embedding(MODEL, text, Some(768)).unwrap();
        // What came over the wire was not unit length: the client did the normalising.
        assert!(norm(&expected) < 0.9, "{}", norm(&expected));
        normalize(&mut expected);
        assert_eq!(v, &expected, "{text}");
    }
    assert_ne!(vectors[0], vectors[1]);

    assert_eq!(
        counter(&registry, "iace_google_embed_requests_total", Some("ok")),
        3
    );
    assert_eq!(
        counter(&registry, "iace_google_embedded_texts_total", None),
        250
    );
    breakers.stop();
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_empty_input_empty_texts_and_settings() {
    let registry = prometheus::Registry::new();
    let (fake, embedder, breakers) = setup(BreakerConfig::default(), &registry).await;

    let v = embedder
        .embed(&["where is my order".to_owned()], EmbedTask::Query)
        .await
        .unwrap();
    assert_eq!(v.len(), 1);
    let r = &fake.requests()[0];
    assert_eq!(r.task_types(), [Some("RETRIEVAL_QUERY".to_owned())]);
    assert_eq!(r.output_dimensionalities(), [Some(768)]);

    // Nothing to embed: nobody is asked.
    assert_eq!(embedder.embed(&[], EmbedTask::Query).await, Ok(vec![]));
    // An empty text would make Google refuse the whole batch: refused here, naming it.
    let err = embedder
        .embed(&["fine".to_owned(), String::new()], EmbedTask::Document)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EmbedError::Rejected(m) if m.contains("text 1 is empty")),
        "{err:?}"
    );
    assert_eq!(fake.requests().len(), 1);

    // A smaller batch size; the model may be given with its `models/` prefix.
    let small = GoogleEmbedder::new(
        GoogleConfig {
            batch_size: 2,
            model: "models/gemini-embedding-001".into(),
            ..config(&fake, &breakers)
        },
        None,
    )
    .unwrap();
    assert_eq!(small.model(), "gemini-embedding-001@768");
    let out = small.embed(&texts(5), EmbedTask::Document).await.unwrap();
    assert_eq!(out.len(), 5);
    let sizes: Vec<usize> = fake.requests()[1..].iter().map(|r| r.items.len()).collect();
    assert_eq!(sizes, [2, 2, 1]);

    // Settings that cannot work are refused up front.
    for batch_size in [0, MAX_BATCH + 1] {
        let bad = GoogleConfig {
            batch_size,
            ..config(&fake, &breakers)
        };
        assert!(GoogleEmbedder::new(bad, None).is_err(), "{batch_size}");
    }
    let no_key = GoogleConfig {
        api_key: " ".into(),
        ..config(&fake, &breakers)
    };
    assert!(GoogleEmbedder::new(no_key, None).is_err());

    // The key never shows in Debug output.
    let cfg = config(&fake, &breakers);
    assert!(!format!("{cfg:?}").contains(fake.api_key()));
    assert!(!format!("{embedder:?}").contains(fake.api_key()));
    assert!(format!("{embedder:?}").contains("gemini-embedding-001@768"));
    breakers.stop();
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_final_and_do_not_trip_the_breaker() {
    let registry = prometheus::Registry::new();
    // One breaker failure would open it: no refusal may count as one.
    let (fake, embedder, breakers) = setup(
        BreakerConfig {
            consecutive_failures: 1,
            open_wait: Duration::from_secs(60),
            ..BreakerConfig::default()
        },
        &registry,
    )
    .await;
    let one = vec!["hello".to_owned()];

    // A wrong key.
    let wrong_key = GoogleEmbedder::new(
        GoogleConfig {
            api_key: "AIzaWRONG".into(),
            ..config(&fake, &breakers)
        },
        None,
    )
    .unwrap();
    let err = wrong_key.embed(&one, EmbedTask::Query).await.unwrap_err();
    assert!(
        matches!(&err, EmbedError::Rejected(m)
            if m.contains("HTTP 400 INVALID_ARGUMENT (API_KEY_INVALID)") && m.contains("API key not valid")),
        "{err:?}"
    );
    assert_eq!(fake.requests().len(), 1);

    // A model Google does not have.
    let gone = GoogleEmbedder::new(
        GoogleConfig {
            model: "text-embedding-004".into(),
            ..config(&fake, &breakers)
        },
        None,
    )
    .unwrap();
    let err = gone.embed(&one, EmbedTask::Query).await.unwrap_err();
    assert!(
        matches!(&err, EmbedError::Rejected(m) if m.contains("404 NOT_FOUND")),
        "{err:?}"
    );
    assert_eq!(fake.requests().len(), 2);

    // Other 4xx: final, one request each.
    for status in [400, 403] {
        fake.fail_next(1, status);
        let err = embedder.embed(&one, EmbedTask::Query).await.unwrap_err();
        assert!(
            matches!(&err, EmbedError::Rejected(m) if m.contains(&format!("HTTP {status}"))),
            "{err:?}"
        );
    }
    assert_eq!(fake.requests().len(), 4);
    assert_eq!(
        counter(
            &registry,
            "iace_google_embed_requests_total",
            Some("rejected")
        ),
        2
    );

    settle().await;
    assert_eq!(
        breakers.get("google").unwrap().state(),
        BreakerState::Closed
    );
    assert_eq!(
        embedder.embed(&one, EmbedTask::Query).await.unwrap().len(),
        1
    );
    breakers.stop();
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_an_answer_or_the_attempts_run_out() {
    let registry = prometheus::Registry::new();
    let (fake, embedder, breakers) = setup(BreakerConfig::default(), &registry).await;
    let input = texts(3);

    fake.fail_next(2, 503);
    let out = embedder.embed(&input, EmbedTask::Document).await.unwrap();
    assert_eq!(out.len(), 3);
    for status in [500, 504] {
        fake.fail_next(1, status);
        embedder.embed(&input, EmbedTask::Document).await.unwrap();
    }
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 200, 500, 200, 504, 200]);
    // Every retry sent the same batch.
    assert!(fake.requests().iter().all(|r| r.texts() == input));
    assert_eq!(
        counter(
            &registry,
            "iace_google_embed_requests_total",
            Some("retryable")
        ),
        4
    );

    // Three 503s in a row: the policy's three attempts are spent.
    fake.fail_next(3, 503);
    let err = embedder
        .embed(&input, EmbedTask::Document)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EmbedError::Unavailable(m)
            if m.contains("HTTP 503 UNAVAILABLE") && m.contains("after 3 attempts")),
        "{err:?}"
    );
    assert_eq!(fake.requests().len(), 10);
    breakers.stop();
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_waits_out_its_retry_delay_and_one_too_long_opens_the_breaker() {
    let registry = prometheus::Registry::new();
    let (fake, embedder, breakers) = setup(BreakerConfig::default(), &registry).await;
    let one = vec!["hello".to_owned()];

    fake.rate_limit_next(1, Duration::from_secs(1));
    let started = Instant::now();
    embedder.embed(&one, EmbedTask::Query).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].fault, Some(InjectedFault::Status(429)));
    let gap = reqs[1].received_at - reqs[0].finished_at.unwrap();
    assert!(gap >= Duration::from_millis(950), "{gap:?}");

    // Longer than the policy waits: give up at once, and the breaker stays open for the delay,
    // so the next embedding fails fast without asking Google.
    fake.rate_limit_next(1, Duration::from_secs(30));
    // Answering well within the 30 s means it did not wait them out, however busy the machine.
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        embedder.embed(&one, EmbedTask::Query),
    )
    .await
    .expect("gives up at once")
    .unwrap_err();
    assert!(
        matches!(&err, EmbedError::Unavailable(m)
            if m.contains("429 RESOURCE_EXHAUSTED") && m.contains("retry after 30 s")),
        "{err:?}"
    );
    assert_eq!(fake.requests().len(), 3);
    breaker_reaches(&breakers, "google", BreakerState::Open).await;
    let err = embedder.embed(&one, EmbedTask::Query).await.unwrap_err();
    assert!(
        matches!(&err, EmbedError::Unavailable(m) if m.contains("circuit breaker is open")),
        "{err:?}"
    );
    assert_eq!(fake.requests().len(), 3);
    breakers.stop();
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_after_consecutive_failures_and_then_fails_fast() {
    let registry = prometheus::Registry::new();
    let (fake, embedder, breakers) = setup(
        BreakerConfig {
            consecutive_failures: 3,
            open_wait: Duration::from_secs(60),
            half_open_probes: 1,
            ..BreakerConfig::default()
        },
        &registry,
    )
    .await;
    let one = vec!["hello".to_owned()];
    fake.fail_next(3, 500);
    let err = embedder.embed(&one, EmbedTask::Query).await.unwrap_err();
    assert!(
        matches!(&err, EmbedError::Unavailable(m) if m.contains("HTTP 500 INTERNAL")),
        "{err:?}"
    );
    breaker_reaches(&breakers, "google", BreakerState::Open).await;

    let before = fake.requests().len();
    for _ in 0..3 {
        let err = embedder
            .embed(&texts(150), EmbedTask::Document)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, EmbedError::Unavailable(m) if m.contains("circuit breaker is open")),
            "{err:?}"
        );
    }
    assert_eq!(fake.requests().len(), before);
    assert_eq!(
        counter(
            &registry,
            "iace_google_embed_requests_total",
            Some("breaker_open")
        ),
        3
    );
    breakers.stop();
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_attempt_times_out_and_the_retry_answers() {
    let registry = prometheus::Registry::new();
    let (fake, _, breakers) = setup(BreakerConfig::default(), &registry).await;
    let embedder = GoogleEmbedder::new(
        GoogleConfig {
            retry: RetryPolicy {
                attempt_timeout: Duration::from_millis(400),
                ..fast_retry()
            },
            ..config(&fake, &breakers)
        },
        Some(GoogleMetrics::new(&prometheus::Registry::new()).unwrap()),
    )
    .unwrap();
    fake.stall_next();
    let started = Instant::now();
    let out = embedder
        .embed(&["hello".to_owned()], EmbedTask::Query)
        .await
        .unwrap();
    assert_eq!(out.len(), 1);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(
        fake.wait_for(Duration::from_secs(10), |f| f.requests()[0].cancelled)
            .await
    );
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].fault, Some(InjectedFault::Stall));
    assert_eq!(reqs[1].status, 200);
    breakers.stop();
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_answer_is_unavailable_never_a_silent_mismatch() {
    let body = Arc::new(Mutex::new(String::new()));
    let hits = Arc::new(AtomicUsize::new(0));
    let base = format!("{}/v1beta", canned_server(body.clone(), hits.clone()).await);
    let embedder = GoogleEmbedder::new(
        GoogleConfig {
            api_base: base,
            retry: fast_retry(),
            ..GoogleConfig::new("AIzaANY")
        },
        None,
    )
    .unwrap();
    let two = vec!["a".to_owned(), "b".to_owned()];
    let vector = |n: usize, x: f32| format!("{{\"values\":{:?}}}", vec![x; n]);
    let cases = [
        (
            format!("{{\"embeddings\":[{}]}}", vector(768, 0.1)),
            "asked for 2 embeddings, got 1",
        ),
        // The full 3072 values, as if outputDimensionality had been ignored.
        (
            format!(
                "{{\"embeddings\":[{},{}]}}",
                vector(3072, 0.1),
                vector(3072, 0.1)
            ),
            "embedding 0 of the batch has 3072 values, not 768",
        ),
        (
            format!("{{\"embeddings\":[{},{{}}]}}", vector(768, 0.1)),
            "embedding 1 of the batch has 0 values",
        ),
        (
            format!(
                "{{\"embeddings\":[{},{}]}}",
                vector(768, 0.1),
                vector(768, 0.0)
            ),
            "embedding 1 of the batch is all zeros",
        ),
        ("{}".to_owned(), "asked for 2 embeddings, got 0"),
        ("<html>".to_owned(), "unreadable batchEmbedContents answer"),
    ];
    for (i, (answer, expected)) in cases.iter().enumerate() {
        *body.lock().unwrap() = answer.clone();
        let err = embedder.embed(&two, EmbedTask::Document).await.unwrap_err();
        assert!(
            matches!(&err, EmbedError::Unavailable(m) if m.contains("wrong answer") && m.contains(expected)),
            "{expected}: {err:?}"
        );
        // Not retried: the same question would get the same wrong answer.
        assert_eq!(hits.load(Ordering::SeqCst), i + 1);
    }
    // The right shape is accepted and normalised.
    *body.lock().unwrap() = format!(
        "{{\"embeddings\":[{},{}]}}",
        vector(768, 0.5),
        vector(768, -2.0)
    );
    let out = embedder.embed(&two, EmbedTask::Document).await.unwrap();
    assert!(out.iter().all(|v| (norm(v) - 1.0).abs() < 1e-5));
}
