//! The Groq client against the wire-level fake Groq (`iace_sim::groq`): streaming replies,
//! tool calls, retries and the breaker, sentiment with its lexicon fallback. Real sockets,
//! real time; no database needed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use iace::vendor::groq::{
    GroqClient, GroqConfig, GroqError, GroqSentiment, Message, ReplyEvent, ToolSpec,
};
use iace::vendor::retry::RetryPolicy;
use iace_actors::breaker::{BreakerConfig, BreakerState, Breakers};
use iace_actors::sentiment::{DegradingSentiment, SentimentLabel};
use iace_sim::groq::{FakeGroq, FakeGroqConfig, Reply, ToolCall, ToolCallChunking};
use serde_json::json;

struct Wall;
impl iace_actors::ports::Clock for Wall {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }
}

async fn setup(breaker: BreakerConfig) -> (FakeGroq, Arc<GroqClient>, Breakers) {
    let fake = FakeGroq::start(FakeGroqConfig {
        ttft: Duration::from_millis(50),
        inter_token: Duration::from_millis(5),
        ..FakeGroqConfig::default()
    })
    .await
    .unwrap();
    let breakers = Breakers::start(
        [("groq".to_owned(), breaker)].into(),
        Arc::new(Wall),
        &prometheus::Registry::new(),
    )
    .await
    .unwrap();
    let client = GroqClient::new(GroqConfig {
        api_base: fake.base_url(),
        api_key: fake.api_key().to_owned(),
        model: "llama-3.3-70b-versatile".into(),
        classify_model: "llama-3.1-8b-instant".into(),
        retry: RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(50),
            cap: Duration::from_millis(200),
            attempt_timeout: Duration::from_secs(3),
            deadline: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(5),
        },
        breaker: breakers.get("groq").cloned(),
    })
    .unwrap();
    (fake, Arc::new(client), breakers)
}

fn user(text: &str) -> Message {
    Message {
        role: "user".into(),
        content: Some(text.into()),
        tool_calls: vec![],
        tool_call_id: None,
    }
}

async fn collect(
    mut rx: tokio::sync::mpsc::Receiver<Result<ReplyEvent, GroqError>>,
) -> Vec<Result<ReplyEvent, GroqError>> {
    let mut out = Vec::new();
    while let Some(e) = rx.recv().await {
        out.push(e);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_reply_arrives_word_by_word_and_tool_calls_accumulate() {
    let (fake, client, breakers) = setup(BreakerConfig::default()).await;
    fake.push_reply(Reply::text("Sure, I can help with your renewal today."));
    let events = collect(client.stream_reply(&[user("hi")], &[]).await.unwrap()).await;
    let text: String = events
        .iter()
        .filter_map(|e| match e {
            Ok(ReplyEvent::Text(t)) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "Sure, I can help with your renewal today.");
    assert!(
        events
            .iter()
            .filter(|e| matches!(e, Ok(ReplyEvent::Text(_))))
            .count()
            > 3
    );
    assert_eq!(
        events.last(),
        Some(&Ok(ReplyEvent::Done {
            finish_reason: "stop".into()
        }))
    );

    fake.push_reply(
        Reply::text("One moment.")
            .with_tool_call(ToolCall::new(
                "lookup_customer",
                &json!({"phone": "+14155550100"}),
            ))
            .chunked(ToolCallChunking::Split { fragments: 3 }),
    );
    let tools = [ToolSpec {
        name: "lookup_customer".into(),
        description: "Find the caller".into(),
        parameters: json!({"type": "object", "properties": {"phone": {"type": "string"}}}),
    }];
    let events = collect(
        client
            .stream_reply(&[user("who am I")], &tools)
            .await
            .unwrap(),
    )
    .await;
    let call = events
        .iter()
        .find_map(|e| match e {
            Ok(ReplyEvent::ToolCall {
                id,
                name,
                arguments,
            }) => Some((id, name, arguments)),
            _ => None,
        })
        .expect("a tool call");
    assert!(!call.0.is_empty());
    assert_eq!(call.1, "lookup_customer");
    let args: serde_json::Value = serde_json::from_str(call.2).unwrap();
    assert_eq!(args, json!({"phone": "+14155550100"}));
    assert_eq!(
        events.last(),
        Some(&Ok(ReplyEvent::Done {
            finish_reason: "tool_calls".into()
        }))
    );
    let sent = &fake.requests()[1].body;
    assert_eq!(sent["tools"][0]["function"]["name"], "lookup_customer");
    assert_eq!(sent["stream"], true);
    breakers.stop();
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_retries_and_the_breaker() {
    let (fake, client, breakers) = setup(BreakerConfig {
        consecutive_failures: 3,
        open_wait: Duration::from_secs(60),
        half_open_probes: 1,
        ..BreakerConfig::default()
    })
    .await;
    // A 400 is final and not a breaker failure.
    let err = client.stream_reply(&[], &[]).await.unwrap_err();
    assert!(matches!(err, GroqError::Rejected(_)), "{err:?}");
    // A 503 is retried.
    fake.fail_next(1, 503, None);
    fake.push_reply(Reply::text("back"));
    let events = collect(client.stream_reply(&[user("x")], &[]).await.unwrap()).await;
    assert_eq!(events[0], Ok(ReplyEvent::Text("back".into())));
    // A 429 opens the breaker for its Retry-After; the request waits it out and goes again.
    fake.fail_next(1, 429, Some(Duration::from_secs(1)));
    fake.push_reply(Reply::text("after the limit"));
    let started = Instant::now();
    let events = collect(client.stream_reply(&[user("x")], &[]).await.unwrap()).await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(events[0], Ok(ReplyEvent::Text("after".into())));
    // A stream that breaks halfway is the caller's to handle.
    fake.error_mid_stream_next();
    fake.push_reply(Reply::text("one two three four five six"));
    let events = collect(client.stream_reply(&[user("x")], &[]).await.unwrap()).await;
    assert!(
        matches!(events.last(), Some(Err(GroqError::Stream(_)))),
        "{events:?}"
    );
    // Three failed attempts in a row: open, and nothing more reaches Groq.
    fake.fail_next(3, 500, None);
    let err = client.stream_reply(&[user("x")], &[]).await.unwrap_err();
    assert!(matches!(err, GroqError::Unavailable(_)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(breakers.get("groq").unwrap().state(), BreakerState::Open);
    let before = fake.requests().len();
    let err = client.stream_reply(&[user("x")], &[]).await.unwrap_err();
    assert!(err.to_string().contains("breaker"), "{err}");
    assert_eq!(fake.requests().len(), before);
    breakers.stop();
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentiment_comes_from_groq_and_degrades_to_the_lexicon_while_it_is_down() {
    let (fake, client, breakers) = setup(BreakerConfig {
        consecutive_failures: 2,
        open_wait: Duration::from_secs(60),
        ..BreakerConfig::default()
    })
    .await;
    let degraded = prometheus::IntCounter::new("t", "t").unwrap();
    let scorer = DegradingSentiment::new(
        Arc::new(GroqSentiment::new(client.clone())),
        Duration::from_secs(5),
        degraded.clone(),
    );
    let s = scorer
        .score("This is ridiculous, I am furious and want to cancel")
        .await;
    assert!(!s.degraded);
    assert_eq!(s.source, "groq");
    assert_eq!(s.label, SentimentLabel::Negative);
    let sent = &fake.requests()[0].body;
    assert_eq!(sent["response_format"]["type"], "json_object");
    assert_eq!(sent["model"], "llama-3.1-8b-instant");

    // Groq goes down: the lexicon answers, marked degraded; once the breaker is open, Groq is
    // not even asked.
    fake.fail_next(100, 503, None);
    for _ in 0..3 {
        let s = scorer.score("thank you, that was great").await;
        assert!(s.degraded);
        assert_eq!(s.source, "lexicon");
        assert_eq!(s.label, SentimentLabel::Positive);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(breakers.get("groq").unwrap().state(), BreakerState::Open);
    let before = fake.requests().len();
    let s = scorer.score("awful").await;
    assert!(s.degraded);
    assert_eq!(fake.requests().len(), before);
    assert_eq!(degraded.get(), 4);
    breakers.stop();
    fake.shutdown().await;
}
