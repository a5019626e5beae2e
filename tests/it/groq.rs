//! The Groq client against the wire-level fake Groq (`iace_fakes::groq`): streaming replies,
//! tool calls, retries and the breaker, sentiment with its lexicon fallback, and the engine's
//! chat-model port over it ([`GroqLlm`]) with barge-in cancellation. Real sockets, real time;
//! no database needed.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use iace::clients::groq::{
    GroqClient, GroqConfig, GroqError, GroqLlm, GroqSentiment, Message, ReplyEvent, ToolSpec,
};
use iace::clients::retry::RetryPolicy;
use iace_actors::breaker::{BreakerConfig, BreakerState, Breakers};
use iace_actors::ports::sentiment::SentimentLabel;
use iace_actors::ports::voice::{
    self, ChatMessage, ChatRole, Llm, LlmEvent, LlmRequest, VoiceError,
};
use iace_actors::sentiment::DegradingSentiment;
use iace_fakes::groq::{FakeGroq, FakeGroqConfig, Reply, ToolCall, ToolCallChunking};
use serde_json::json;
use uuid::Uuid;

use common::vendor::{breaker_reaches, settle};

async fn setup(breaker: BreakerConfig) -> (FakeGroq, Arc<GroqClient>, Breakers) {
    let fake = FakeGroq::start(FakeGroqConfig {
        ttft: Duration::from_millis(50),
        inter_token: Duration::from_millis(5),
        ..FakeGroqConfig::default()
    })
    .await
    .unwrap();
    // Replies and classifications each behind their own breaker, as in production.
    let breakers = Breakers::start(
        [
            ("groq".to_owned(), breaker.clone()),
            ("groq_classify".to_owned(), breaker),
        ]
        .into(),
        Arc::new(common::vendor::Wall),
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
        classify_retry: RetryPolicy {
            max_attempts: 2,
            base: Duration::from_millis(50),
            cap: Duration::from_millis(200),
            attempt_timeout: Duration::from_secs(3),
            deadline: Duration::from_secs(5),
            max_retry_after: Duration::from_millis(200),
        },
        classify_breaker: breakers.get("groq_classify").cloned(),
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
    breaker_reaches(&breakers, "groq", BreakerState::Open).await;
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
    breaker_reaches(&breakers, "groq_classify", BreakerState::Open).await;
    let before = fake.requests().len();
    let s = scorer.score("awful").await;
    assert!(s.degraded);
    assert_eq!(fake.requests().len(), before);
    assert_eq!(degraded.get(), 4);
    // Classifications have their own breaker: the replies' stays closed.
    assert_eq!(breakers.get("groq").unwrap().state(), BreakerState::Closed);
    breakers.stop();
    fake.shutdown().await;
}

/// A model under load answers its classifications later than their 800 ms budget, its
/// replies in time: each missed budget degrades that turn's sentiment to the lexicon and
/// counts against `groq_classify` only (which opens and stops sending classifications);
/// replies go on through the closed `groq` breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_classifications_open_only_the_classify_breaker_and_replies_go_on() {
    let (fake, client, breakers) = setup(BreakerConfig {
        consecutive_failures: 5,
        open_wait: Duration::from_secs(60),
        ..BreakerConfig::default()
    })
    .await;
    fake.set_classify_latency(Some(Duration::from_secs(3)));
    let degraded = prometheus::IntCounter::new("t", "t").unwrap();
    let scorer = DegradingSentiment::new(
        Arc::new(GroqSentiment::new(client.clone())),
        Duration::from_millis(800),
        degraded.clone(),
    );
    for _ in 0..5 {
        let s = scorer.score("this is taking forever, I'm frustrated").await;
        assert!(s.degraded);
        assert_eq!(s.source, "lexicon");
        assert_eq!(s.label, SentimentLabel::Negative);
    }
    breaker_reaches(&breakers, "groq_classify", BreakerState::Open).await;
    // Open: the lexicon answers without asking Groq.
    let before = fake.requests().len();
    assert!(scorer.score("fine").await.degraded);
    assert_eq!(fake.requests().len(), before);
    // Replies are not touched by any of it.
    settle().await;
    assert_eq!(breakers.get("groq").unwrap().state(), BreakerState::Closed);
    fake.push_reply(Reply::text("Still here to help."));
    let events = collect(client.stream_reply(&[user("hello?")], &[]).await.unwrap()).await;
    assert!(
        matches!(events.last(), Some(Ok(ReplyEvent::Done { .. }))),
        "{events:?}"
    );
    settle().await;
    assert_eq!(breakers.get("groq").unwrap().state(), BreakerState::Closed);
    breakers.stop();
    fake.shutdown().await;
}

fn request(messages: Vec<ChatMessage>, tools: Vec<voice::ToolSpec>) -> LlmRequest {
    LlmRequest {
        call_id: Uuid::new_v4(),
        turn: 1,
        messages,
        tools,
    }
}

fn lookup_tool() -> voice::ToolSpec {
    voice::ToolSpec {
        name: "lookup_customer".into(),
        description: "Find the caller".into(),
        parameters: json!({"type": "object", "properties": {"phone": {"type": "string"}}}),
    }
}

/// Every event until the channel closes (bounded: a hung reply fails the test).
async fn collect_llm(mut rx: tokio::sync::mpsc::Receiver<LlmEvent>) -> Vec<LlmEvent> {
    tokio::time::timeout(Duration::from_secs(10), async move {
        let mut out = Vec::new();
        while let Some(e) = rx.recv().await {
            out.push(e);
        }
        out
    })
    .await
    .expect("the reply ends")
}

fn text_of(events: &[LlmEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            LlmEvent::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groq_llm_streams_text_pieces_then_done_or_one_failure() {
    let (fake, client, breakers) = setup(BreakerConfig::default()).await;
    let llm = GroqLlm(client);
    assert_eq!(llm.vendor(), "groq");
    fake.push_reply(Reply::text("Sure, I can help with your renewal today."));
    let events = collect_llm(
        llm.stream(request(
            vec![
                ChatMessage::text(ChatRole::System, "Be brief."),
                ChatMessage::text(ChatRole::User, "hi"),
            ],
            vec![],
        ))
        .await
        .unwrap(),
    )
    .await;
    let (last, pieces) = events.split_last().unwrap();
    assert_eq!(
        *last,
        LlmEvent::Done {
            finish_reason: "stop".into()
        }
    );
    assert!(pieces.len() > 3, "{events:?}");
    assert!(pieces.iter().all(|e| matches!(e, LlmEvent::Text { .. })));
    assert_eq!(text_of(pieces), "Sure, I can help with your renewal today.");
    let sent = &fake.requests()[0].body;
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
        ])
    );
    assert!(sent.get("tools").is_none(), "{sent}");
    assert_eq!(sent["stream"], true);

    // A stream that breaks halfway: the words so far, then exactly one `Failed`, then the end.
    fake.error_mid_stream_next();
    fake.push_reply(Reply::text("one two three four five six"));
    let events = collect_llm(
        llm.stream(request(
            vec![ChatMessage::text(ChatRole::User, "x")],
            vec![],
        ))
        .await
        .unwrap(),
    )
    .await;
    let (last, pieces) = events.split_last().unwrap();
    assert!(matches!(last, LlmEvent::Failed { .. }), "{events:?}");
    assert!(!pieces.is_empty());
    assert!(pieces.iter().all(|e| matches!(e, LlmEvent::Text { .. })));
    assert!("one two three four five six".starts_with(&text_of(pieces)));
    breakers.stop();
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groq_llm_tool_call_round_trip() {
    let (fake, client, breakers) = setup(BreakerConfig::default()).await;
    let llm = GroqLlm(client);
    let system = ChatMessage::text(ChatRole::System, "You are a receptionist.");
    let user = ChatMessage::text(ChatRole::User, "who am I");
    fake.push_reply(
        Reply::tool_call("lookup_customer", &json!({"phone": "+14155550100"}))
            .chunked(ToolCallChunking::Split { fragments: 3 }),
    );
    let events = collect_llm(
        llm.stream(request(
            vec![system.clone(), user.clone()],
            vec![lookup_tool()],
        ))
        .await
        .unwrap(),
    )
    .await;
    let [LlmEvent::ToolCall { call }, LlmEvent::Done { finish_reason }] = events.as_slice() else {
        panic!("expected a tool call then done: {events:?}");
    };
    assert_eq!(finish_reason, "tool_calls");
    assert!(!call.id.is_empty());
    assert_eq!(call.name, "lookup_customer");
    let args: serde_json::Value = serde_json::from_str(&call.arguments).unwrap();
    assert_eq!(args, json!({"phone": "+14155550100"}));
    let tool_json = json!({
        "type": "function",
        "function": {
            "name": "lookup_customer",
            "description": "Find the caller",
            "parameters": {"type": "object", "properties": {"phone": {"type": "string"}}}
        }
    });
    assert_eq!(fake.requests()[0].body["tools"], json!([tool_json]));

    // The engine answers the call and asks again with the call and its result in context.
    fake.push_reply(Reply::text("Welcome back, Ada."));
    let context = vec![
        system,
        user,
        ChatMessage {
            role: ChatRole::Assistant,
            content: String::new(),
            tool_calls: vec![call.clone()],
            tool_call_id: None,
        },
        ChatMessage {
            role: ChatRole::Tool,
            content: r#"{"name":"Ada"}"#.into(),
            tool_calls: vec![],
            tool_call_id: Some(call.id.clone()),
        },
    ];
    let events = collect_llm(
        llm.stream(request(context, vec![lookup_tool()]))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(text_of(&events), "Welcome back, Ada.");
    assert_eq!(
        events.last(),
        Some(&LlmEvent::Done {
            finish_reason: "stop".into()
        })
    );
    let second = &fake.requests()[1];
    // The fake validates messages as Groq does: the replayed context was accepted.
    assert_eq!(second.status, 200);
    assert_eq!(
        second.body["messages"],
        json!([
            {"role": "system", "content": "You are a receptionist."},
            {"role": "user", "content": "who am I"},
            {"role": "assistant", "content": null, "tool_calls": [{
                "id": call.id,
                "type": "function",
                "function": {"name": "lookup_customer", "arguments": call.arguments}
            }]},
            {"role": "tool", "content": "{\"name\":\"Ada\"}", "tool_call_id": call.id},
        ])
    );
    assert_eq!(second.body["tools"], json!([tool_json]));
    breakers.stop();
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groq_llm_start_failures_are_voice_errors() {
    let (fake, client, breakers) = setup(BreakerConfig {
        consecutive_failures: 3,
        open_wait: Duration::from_secs(60),
        half_open_probes: 1,
        ..BreakerConfig::default()
    })
    .await;
    let llm = GroqLlm(client);
    // Groq refuses an empty context (400): final.
    let err = llm.stream(request(vec![], vec![])).await.unwrap_err();
    assert!(
        matches!(&err, VoiceError::Rejected { vendor, .. } if vendor == "groq"),
        "{err:?}"
    );
    // 5xx on every attempt: unavailable, and the breaker opens.
    fake.fail_next(3, 500, None);
    let hello = || request(vec![ChatMessage::text(ChatRole::User, "hi")], vec![]);
    let err = llm.stream(hello()).await.unwrap_err();
    assert!(
        matches!(&err, VoiceError::Unavailable { vendor, detail } if vendor == "groq" && detail.contains("500")),
        "{err:?}"
    );
    breaker_reaches(&breakers, "groq", BreakerState::Open).await;
    // Breaker open: unavailable at once, and Groq is not asked.
    let before = fake.requests().len();
    let err = llm.stream(hello()).await.unwrap_err();
    assert!(
        matches!(&err, VoiceError::Unavailable { vendor, detail } if vendor == "groq" && detail.contains("breaker")),
        "{err:?}"
    );
    assert_eq!(fake.requests().len(), before);
    breakers.stop();
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_groq_llm_receiver_cancels_the_request() {
    // One failure would open the breaker: a barge-in must not count as one.
    let (fake, client, breakers) = setup(BreakerConfig {
        consecutive_failures: 1,
        open_wait: Duration::from_secs(60),
        ..BreakerConfig::default()
    })
    .await;
    let llm = GroqLlm(client);
    let hello = || request(vec![ChatMessage::text(ChatRole::User, "hi")], vec![]);
    let cancelled = |idx: usize| move |f: &FakeGroq| f.requests()[idx].cancelled;

    // Mid-reply: the first words arrive, then the caller barges in.
    fake.set_latency(Duration::from_millis(20), Duration::from_millis(100));
    fake.push_reply(Reply::text(
        "This is a long answer that the caller will not wait for, word after word after word.",
    ));
    let mut rx = llm.stream(hello()).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap();
    assert!(matches!(first, Some(LlmEvent::Text { .. })), "{first:?}");
    drop(rx);
    assert!(fake.wait_for(Duration::from_secs(10), cancelled(0)).await);
    let reply = &fake.requests()[0];
    assert!(!reply.completed);
    assert!(reply.tokens_sent < 10, "{}", reply.tokens_sent);

    // Before the first token, while Groq is silent (headers, then nothing): the drop alone
    // must close the connection.
    fake.stall_next();
    let rx = llm.stream(hello()).await.unwrap();
    drop(rx);
    assert!(fake.wait_for(Duration::from_secs(10), cancelled(1)).await);
    settle().await;
    assert_eq!(breakers.get("groq").unwrap().state(), BreakerState::Closed);

    // The client is still fine for the next reply.
    fake.set_latency(Duration::from_millis(10), Duration::from_millis(1));
    fake.push_reply(Reply::text("Go ahead."));
    let events = collect_llm(llm.stream(hello()).await.unwrap()).await;
    assert_eq!(text_of(&events), "Go ahead.");
    breakers.stop();
    fake.shutdown().await;
}
