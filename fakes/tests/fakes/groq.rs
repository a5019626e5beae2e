//! Wire-level tests of the Groq fake (`iace_fakes::groq`) on real sockets and real time, with
//! reqwest as the client and a small SSE reader built on `Response::chunk()` (the workspace's
//! reqwest has no `stream` feature). Each test starts its own fake, so they run in parallel;
//! timing assertions use generous bounds because the box is small and shared.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use iace_fakes::groq::{
    FakeGroq, FakeGroqConfig, InjectedFault, Reply, ReplySource, ToolCall, ToolCallChunking,
};
use serde_json::{json, Value};

const MODEL: &str = "llama-3.3-70b-versatile";

// ---------------------------------------------------------------------------------------------
// Helpers

async fn start() -> FakeGroq {
    FakeGroq::start(FakeGroqConfig::default())
        .await
        .expect("fake starts")
}

fn completions_url(fake: &FakeGroq) -> String {
    format!("{}/chat/completions", fake.base_url())
}

async fn post(fake: &FakeGroq, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(completions_url(fake))
        .bearer_auth(fake.api_key())
        .json(body)
        .send()
        .await
        .expect("request sent")
}

fn chat(stream: bool, user: &str) -> Value {
    json!({
        "model": MODEL,
        "stream": stream,
        "messages": [
            {"role": "system", "content": "You are a friendly phone agent for a dental clinic."},
            {"role": "user", "content": user},
        ],
    })
}

fn tool(name: &str) -> Value {
    json!({"type": "function", "function": {
        "name": name,
        "description": format!("{name} tool"),
        "parameters": {"type": "object", "properties": {}},
    }})
}

/// One SSE event's `data` and when its bytes arrived.
#[derive(Debug)]
struct Event {
    data: String,
    at: Instant,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event is not JSON ({e}): {}", self.data))
    }
}

/// Splits the body into `data: ...\n\n` events as bytes arrive.
struct SseReader {
    resp: reqwest::Response,
    buf: Vec<u8>,
    ready: VecDeque<Event>,
}

impl SseReader {
    fn new(resp: reqwest::Response) -> Self {
        SseReader {
            resp,
            buf: Vec::new(),
            ready: VecDeque::new(),
        }
    }

    /// The next event, `None` at the end of the body.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(e);
            }
            let Some(bytes) = self.resp.chunk().await.expect("body chunk") else {
                assert!(
                    self.buf.is_empty(),
                    "body ended inside an event: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            };
            let at = Instant::now();
            self.buf.extend_from_slice(&bytes);
            while let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let text = String::from_utf8(raw[..pos].to_vec()).expect("UTF-8 event");
                let lines: Vec<&str> = text.lines().collect();
                assert_eq!(lines.len(), 1, "one data line per event: {text:?}");
                let data = lines[0]
                    .strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("event without `data: `: {text:?}"));
                self.ready.push_back(Event {
                    data: data.to_owned(),
                    at,
                });
            }
        }
    }

    async fn all(mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }
}

/// `delta.content` of a chunk, if any.
fn content_of(chunk: &Value) -> Option<&str> {
    chunk["choices"][0]["delta"]["content"].as_str()
}

/// Go-style durations as in the rate-limit headers: `560ms`, `7.66s`, `2m59.56s`, `1h0m0s`.
fn is_go_duration(s: &str) -> bool {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if let Some(ms) = s.strip_suffix("ms") {
        return digits(ms);
    }
    let Some(mut rest) = s.strip_suffix('s') else {
        return false;
    };
    for unit in ['h', 'm'] {
        if let Some((n, r)) = rest.split_once(unit) {
            if !digits(n) {
                return false;
            }
            rest = r;
        }
    }
    let (whole, frac) = rest.split_once('.').unwrap_or((rest, "0"));
    digits(whole) && digits(frac)
}

/// The six rate-limit headers are present and well-formed; returns remaining requests.
fn check_rate_limit_headers(resp: &reqwest::Response) -> u64 {
    let h = resp.headers();
    let num = |name: &str| -> u64 {
        h.get(name)
            .unwrap_or_else(|| panic!("missing {name}"))
            .to_str()
            .unwrap()
            .parse()
            .unwrap_or_else(|e| panic!("{name} not a number: {e}"))
    };
    assert_eq!(num("x-ratelimit-limit-requests"), 14_400);
    assert_eq!(num("x-ratelimit-limit-tokens"), 6_000);
    assert!(num("x-ratelimit-remaining-tokens") <= 6_000);
    let remaining = num("x-ratelimit-remaining-requests");
    assert!(remaining <= 14_400);
    for name in ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"] {
        let v = h
            .get(name)
            .unwrap_or_else(|| panic!("missing {name}"))
            .to_str()
            .unwrap();
        assert!(is_go_duration(v), "{name}: {v:?} is not like `2m59.56s`");
    }
    remaining
}

async fn error_body(resp: reqwest::Response) -> Value {
    assert!(resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: Value = resp.json().await.expect("JSON error body");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(body["error"]["type"].is_string());
    body
}

// ---------------------------------------------------------------------------------------------
// Auth and validation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_missing_key_is_401_and_takes_no_reply() {
    let fake = start().await;
    fake.push_reply(Reply::text("never sent"));
    let http = reqwest::Client::new();

    let resp = http
        .post(completions_url(&fake))
        .bearer_auth("gsk_wrong")
        .json(&chat(true, "hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    check_rate_limit_headers(&resp);
    let body = error_body(resp).await;
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["message"], "Invalid API Key");

    let resp = http
        .post(completions_url(&fake))
        .json(&chat(false, "hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|r| r.status == 401 && r.source.is_none()));
    assert_eq!(fake.pending_replies(), 1);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_400_invalid_request_error() {
    let fake = start().await;
    fake.push_reply(Reply::text("kept for a valid request"));
    let user = json!({"role": "user", "content": "hi"});
    let bad_bodies = [
        json!({"messages": [user]}),
        json!({"model": MODEL}),
        json!({"model": MODEL, "messages": []}),
        json!({"model": MODEL, "messages": "hi"}),
        json!({"model": MODEL, "messages": [{"role": "user"}]}),
        json!({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}),
        json!({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}),
        json!({"model": MODEL, "messages": [user], "stream": "yes"}),
        json!({"model": MODEL, "messages": [user], "tools": [{"type": "function"}]}),
        json!([1, 2, 3]),
    ];
    for body in &bad_bodies {
        let resp = post(&fake, body).await;
        assert_eq!(resp.status(), 400, "body {body}");
        let err = error_body(resp).await;
        assert_eq!(err["error"]["type"], "invalid_request_error", "body {body}");
    }
    // Not JSON at all.
    let resp = reqwest::Client::new()
        .post(completions_url(&fake))
        .bearer_auth(fake.api_key())
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        error_body(resp).await["error"]["type"],
        "invalid_request_error"
    );

    assert_eq!(fake.pending_replies(), 1, "invalid requests take no reply");
    let reqs = fake.requests();
    assert_eq!(reqs.len(), bad_bodies.len() + 1);
    assert!(reqs.iter().all(|r| r.status == 400));
    assert_eq!(reqs[0].body, bad_bodies[0]);
    assert_eq!(reqs.last().unwrap().body, Value::Null);

    let resp = post(&fake, &chat(false, "hi")).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "kept for a valid request"
    );
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_model_is_404_model_not_found() {
    let fake = start().await;
    let mut body = chat(true, "hello");
    body["model"] = json!("gpt-4o");
    let resp = post(&fake, &body).await;
    assert_eq!(resp.status(), 404);
    check_rate_limit_headers(&resp);
    let err = error_body(resp).await;
    assert_eq!(err["error"]["code"], "model_not_found");
    assert_eq!(err["error"]["type"], "invalid_request_error");
    assert!(err["error"]["message"].as_str().unwrap().contains("gpt-4o"));
    assert_eq!(fake.requests()[0].model.as_deref(), Some("gpt-4o"));

    // The other configured model works.
    body["model"] = json!("llama-3.1-8b-instant");
    assert_eq!(post(&fake, &body).await.status(), 200);
    fake.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Streaming

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_scripted_text_word_by_word_with_pacing() {
    let fake = start().await;
    let ttft = Duration::from_millis(300);
    let inter = Duration::from_millis(40);
    fake.set_latency(ttft, inter);
    let text = "Sure! I can book that for you. Which day works best?";
    let words = text.split_whitespace().count();
    assert_eq!(words, 11);
    fake.push_reply(Reply::text(text));

    let sent = Instant::now();
    let resp = post(&fake, &chat(true, "I need a cleaning")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    check_rate_limit_headers(&resp);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let events = SseReader::new(resp).all().await;

    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert!(events[..events.len() - 1]
        .iter()
        .all(|e| e.data != "[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Event::json).collect();
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id);
        assert_eq!(c["model"], MODEL);
        assert!(c["created"].is_i64());
        assert!(c["system_fingerprint"].is_string());
        assert_eq!(c["choices"].as_array().unwrap().len(), 1);
        assert_eq!(c["choices"][0]["index"], 0);
    }

    let first = &chunks[0];
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(first["choices"][0]["delta"]["content"], "");
    assert!(first["choices"][0]["finish_reason"].is_null());
    assert_eq!(first["x_groq"]["id"], request_id.as_str());

    let middle = &chunks[1..chunks.len() - 1];
    assert_eq!(middle.len(), words, "one chunk per word");
    assert!(middle
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()
            && c["choices"][0]["delta"]["role"].is_null()));
    let content: String = chunks.iter().filter_map(content_of).collect();
    assert_eq!(content, text);

    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["choices"][0]["delta"], json!({}));
    let usage = &last["x_groq"]["usage"];
    assert_eq!(usage["completion_tokens"], words);
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 0);
    assert_eq!(usage["total_tokens"], prompt + words as u64);
    for k in ["queue_time", "prompt_time", "completion_time", "total_time"] {
        assert!(usage[k].is_f64(), "usage.{k}");
    }

    // Pacing: sleeps never fire early, so lower bounds are firm; upper bounds are generous.
    let content_events: Vec<&Event> = events[1..=words].iter().collect();
    let first_token = content_events[0].at - sent;
    let last_token = content_events[words - 1].at - sent;
    assert!(
        first_token >= ttft - Duration::from_millis(20),
        "first token after {first_token:?}, TTFT is {ttft:?}"
    );
    assert!(
        first_token < ttft + Duration::from_millis(700),
        "first token after {first_token:?}"
    );
    let spread = last_token - first_token;
    let expected_spread = inter * (words as u32 - 1);
    assert!(
        spread >= expected_spread * 3 / 4,
        "tokens spread over {spread:?}, expected about {expected_spread:?}"
    );
    assert!(
        last_token < ttft + inter * words as u32 + Duration::from_millis(1_000),
        "last token after {last_token:?}"
    );

    assert!(
        fake.wait_for(Duration::from_secs(10), |f| f.requests()[0].completed)
            .await
    );
    let r = &fake.requests()[0];
    assert!(r.stream);
    assert_eq!(r.status, 200);
    assert_eq!(r.tokens_sent, words as u32);
    assert_eq!(r.source, Some(ReplySource::Scripted));
    assert_eq!(r.finish_reason.as_deref(), Some("stop"));
    assert!(!r.cancelled);
    assert_eq!(r.fault, None);
    assert_eq!(r.body["messages"][1]["content"], "I need a cleaning");
    let server_ttft = r.first_token_at.unwrap() - r.received_at;
    assert!(server_ttft >= ttft, "server-side TTFT {server_ttft:?}");
    assert_eq!(fake.pending_replies(), 0);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_tool_call_arguments_accumulate_to_valid_json() {
    let fake = start().await;
    fake.set_latency(Duration::from_millis(20), Duration::from_millis(5));
    let lookup_args = json!({"phone": "+15551234567", "reason": "billing question"});
    let book_args = json!({"day": "Tuesday", "time": "15:00", "notes": "first visit"});
    fake.push_reply(
        Reply::text("Let me check that.")
            .with_tool_call(ToolCall::new("lookup_customer", &lookup_args))
            .with_tool_call(ToolCall::new("book_appointment", &book_args))
            .chunked(ToolCallChunking::Split { fragments: 4 }),
    );
    let mut body = chat(true, "Book me for Tuesday");
    body["tools"] = json!([tool("lookup_customer"), tool("book_appointment")]);
    let events = SseReader::new(post(&fake, &body).await).all().await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Event::json).collect();

    /// What a client accumulates per `index`.
    #[derive(Default)]
    struct Acc {
        id: Option<String>,
        kind: Option<String>,
        name: Option<String>,
        arguments: String,
        argument_deltas: usize,
        heads: usize,
    }
    let mut calls: BTreeMap<u64, Acc> = BTreeMap::new();
    let mut content = String::new();
    let mut saw_tool_delta = false;
    for c in &chunks {
        let delta = &c["choices"][0]["delta"];
        if let Some(t) = delta["content"].as_str() {
            assert!(!saw_tool_delta || t.is_empty(), "text after tool calls");
            content.push_str(t);
        }
        let Some(tcs) = delta["tool_calls"].as_array() else {
            continue;
        };
        saw_tool_delta = true;
        for tc in tcs {
            let acc = calls.entry(tc["index"].as_u64().unwrap()).or_default();
            if let Some(id) = tc["id"].as_str() {
                assert!(acc.id.is_none(), "id repeated for one index");
                acc.id = Some(id.to_owned());
                acc.heads += 1;
            }
            if let Some(k) = tc["type"].as_str() {
                acc.kind = Some(k.to_owned());
            }
            if let Some(n) = tc["function"]["name"].as_str() {
                acc.name = Some(n.to_owned());
            }
            if let Some(a) = tc["function"]["arguments"].as_str() {
                if !a.is_empty() {
                    acc.argument_deltas += 1;
                }
                acc.arguments.push_str(a);
            }
        }
    }
    assert_eq!(content, "Let me check that.");
    assert_eq!(calls.len(), 2);
    let expected = [
        ("lookup_customer", &lookup_args),
        ("book_appointment", &book_args),
    ];
    for (i, (name, args)) in expected.iter().enumerate() {
        let acc = &calls[&(i as u64)];
        assert_eq!(acc.heads, 1);
        assert!(acc.id.as_deref().unwrap().starts_with("call_"));
        assert_eq!(acc.kind.as_deref(), Some("function"));
        assert_eq!(acc.name.as_deref(), Some(*name));
        assert_eq!(acc.argument_deltas, 4, "arguments split over 4 deltas");
        let parsed: Value = serde_json::from_str(&acc.arguments).expect("accumulated JSON");
        assert_eq!(&parsed, *args);
    }
    assert_ne!(calls[&0].id, calls[&1].id);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
    assert!(
        last["x_groq"]["usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            > 4
    );
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_phrase_calls_the_offered_tool_in_one_delta() {
    let fake = start().await;
    let mut body = chat(true, "Can I talk to a HUMAN please?");
    body["tools"] = json!([tool("transfer_to_human"), tool("end_call")]);
    let events = SseReader::new(post(&fake, &body).await).all().await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(Event::json).collect();
    let tool_chunks: Vec<&Value> = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["tool_calls"].is_array())
        .collect();
    assert_eq!(tool_chunks.len(), 1, "whole call in one delta");
    let tc = &tool_chunks[0]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(tc["index"], 0);
    assert!(tc["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(tc["type"], "function");
    assert_eq!(tc["function"]["name"], "transfer_to_human");
    let args: Value = serde_json::from_str(tc["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({}));
    let text: String = chunks.iter().filter_map(content_of).collect();
    assert_eq!(text, "");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    // Non-streaming: `goodbye` ends the call; content is null beside the tool calls.
    let mut body = chat(false, "ok thanks, goodbye");
    body["tools"] = json!([tool("transfer_to_human"), tool("end_call")]);
    let reply: Value = post(&fake, &body).await.json().await.unwrap();
    let choice = &reply["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert!(choice["message"]["content"].is_null());
    assert_eq!(
        choice["message"]["tool_calls"][0]["function"]["name"],
        "end_call"
    );
    assert_eq!(choice["message"]["tool_calls"][0]["type"], "function");

    // Without the tool on offer the same words get a spoken answer.
    let reply: Value = post(&fake, &chat(false, "Can I talk to a human?"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");
    assert!(reply["choices"][0]["message"]["tool_calls"].is_null());

    let sources: Vec<_> = fake.requests().iter().map(|r| r.source).collect();
    assert_eq!(
        sources,
        vec![
            Some(ReplySource::ToolTrigger),
            Some(ReplySource::ToolTrigger),
            Some(ReplySource::Echo)
        ]
    );
    fake.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Non-streaming and the default responder

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streaming_reply_is_a_chat_completion() {
    let fake = start().await;
    let text = "Your appointment is confirmed for Tuesday at 3 PM.";
    fake.push_reply(Reply::text(text));
    let sent = Instant::now();
    let resp = post(&fake, &chat(false, "Tuesday at 3 please")).await;
    let elapsed = sent.elapsed();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let remaining_1 = check_rate_limit_headers(&resp);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["model"], MODEL);
    assert!(body["x_groq"]["id"].as_str().unwrap().starts_with("req_"));
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], text);
    assert_eq!(choice["finish_reason"], "stop");
    let usage = &body["usage"];
    assert_eq!(usage["completion_tokens"], 9);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + 9
    );
    // The body comes when the equivalent stream would have ended: 150 ms + 8 x 15 ms.
    assert!(
        elapsed >= Duration::from_millis(260),
        "answered after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "answered after {elapsed:?}"
    );

    let resp = post(&fake, &chat(false, "thanks")).await;
    let remaining_2 = check_rate_limit_headers(&resp);
    assert!(remaining_2 < remaining_1, "remaining requests must go down");

    let r = &fake.requests()[0];
    assert!(!r.stream);
    assert_eq!(r.tokens_sent, 9);
    assert!(r.completed && !r.cancelled);
    assert_eq!(r.finish_reason.as_deref(), Some("stop"));
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_responder_scores_sentiment_as_json_and_echoes_otherwise() {
    let fake = start().await;
    fake.set_latency(Duration::from_millis(20), Duration::from_millis(2));

    let angry = json!({
        "model": "llama-3.1-8b-instant",
        "messages": [
            {"role": "system", "content": "Classify the caller's sentiment. Answer with JSON only."},
            {"role": "user", "content": "This is ridiculous. I am furious, your service is terrible!"},
        ],
    });
    let body: Value = post(&fake, &angry).await.json().await.unwrap();
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    let verdict: Value = serde_json::from_str(content).expect("sentiment reply is JSON");
    let score = verdict["score"].as_f64().unwrap();
    assert!((-1.0..0.0).contains(&score), "score {score}");
    assert_eq!(verdict["label"], "negative");

    // JSON mode without the word "sentiment", streamed, on a happy message.
    let mut happy = chat(true, "Thanks so much, that was great and really helpful!");
    happy["response_format"] = json!({"type": "json_object"});
    let events = SseReader::new(post(&fake, &happy).await).all().await;
    let content: String = events[..events.len() - 1]
        .iter()
        .map(Event::json)
        .filter_map(|c| content_of(&c).map(str::to_owned))
        .collect();
    let verdict: Value = serde_json::from_str(&content).expect("streamed JSON");
    assert!(verdict["score"].as_f64().unwrap() > 0.0);
    assert_eq!(verdict["label"], "positive");

    // Anything else: a two-sentence echo.
    let body: Value = post(&fake, &chat(false, "what are your   opening hours"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "You said: \"what are your opening hours\". How else can I help?"
    );

    let sources: Vec<_> = fake.requests().iter().map(|r| r.source).collect();
    assert_eq!(
        sources,
        vec![
            Some(ReplySource::Sentiment),
            Some(ReplySource::Sentiment),
            Some(ReplySource::Echo)
        ]
    );
    fake.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Fault injection

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_429_has_retry_after_and_the_rate_limit_body() {
    let fake = start().await;
    fake.push_reply(Reply::text("after the retry"));
    fake.fail_next(1, 429, Some(Duration::from_millis(2_500)));
    let resp = post(&fake, &chat(true, "hello")).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "3");
    check_rate_limit_headers(&resp);
    let err = error_body(resp).await;
    assert_eq!(err["error"]["code"], "rate_limit_exceeded");
    assert_eq!(err["error"]["type"], "tokens");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("Rate limit reached for model `llama-3.3-70b-versatile`"));
    assert!(message.contains("Please try again in 2.5s"), "{message}");

    assert_eq!(fake.pending_replies(), 1, "a 429 takes no reply");
    let resp = post(&fake, &chat(false, "hello")).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("retry-after").is_none());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "after the retry");

    let reqs = fake.requests();
    assert_eq!(reqs[0].fault, Some(InjectedFault::Status(429)));
    assert_eq!(reqs[0].status, 429);
    assert_eq!(reqs[1].fault, None);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_498_and_5xx_answer_with_error_bodies() {
    let fake = start().await;
    fake.fail_next(2, 498, None);
    for _ in 0..2 {
        let resp = post(&fake, &chat(false, "hi")).await;
        assert_eq!(resp.status(), 498);
        assert!(resp.headers().get("retry-after").is_none());
        check_rate_limit_headers(&resp);
        let err = error_body(resp).await;
        assert_eq!(err["error"]["type"], "capacity_exceeded");
    }
    fake.fail_next(1, 503, Some(Duration::from_secs(1)));
    let resp = post(&fake, &chat(true, "hi")).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(
        error_body(resp).await["error"]["code"],
        "service_unavailable"
    );

    // A failed stream request is a plain JSON error, not SSE.
    fake.fail_next(1, 500, None);
    let resp = post(&fake, &chat(true, "hi")).await;
    assert_eq!(resp.status(), 500);
    assert_eq!(
        error_body(resp).await["error"]["type"],
        "internal_server_error"
    );

    assert_eq!(post(&fake, &chat(false, "hi")).await.status(), 200);
    let faults: Vec<_> = fake.requests().iter().map(|r| r.fault).collect();
    assert_eq!(
        faults,
        vec![
            Some(InjectedFault::Status(498)),
            Some(InjectedFault::Status(498)),
            Some(InjectedFault::Status(503)),
            Some(InjectedFault::Status(500)),
            None
        ]
    );
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_mid_stream_sends_an_error_line_and_keeps_the_reply() {
    let fake = start().await;
    fake.set_latency(Duration::from_millis(30), Duration::from_millis(10));
    let text = "One two three four five six seven eight.";
    fake.push_reply(Reply::text(text));
    fake.error_mid_stream_next();

    // A non-streaming request in between neither triggers nor disarms it.
    let mut other = chat(false, "side question");
    other["model"] = json!("llama-3.1-8b-instant");
    assert_eq!(post(&fake, &other).await.status(), 200);
    assert_eq!(fake.pending_replies(), 0, "the side request took the reply");
    fake.push_reply(Reply::text(text));

    let resp = post(&fake, &chat(true, "count for me")).await;
    assert_eq!(resp.status(), 200);
    let events = SseReader::new(resp).all().await;
    assert!(
        events.iter().all(|e| e.data != "[DONE]"),
        "no [DONE] after an error"
    );
    let chunks: Vec<Value> = events.iter().map(Event::json).collect();
    let last = chunks.last().unwrap();
    assert!(last["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(last["error"]["type"].is_string());
    assert!(last.get("choices").is_none());
    let partial: String = chunks.iter().filter_map(content_of).collect();
    assert_eq!(partial, "One two three four");
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c.get("error").is_none() && c["choices"][0]["finish_reason"].is_null()));

    let r = fake.requests()[1].clone();
    assert_eq!(r.fault, Some(InjectedFault::MidStreamError));
    assert_eq!(r.tokens_sent, 4);
    assert!(r.completed);
    assert_eq!(r.finish_reason, None);
    assert_eq!(fake.pending_replies(), 1, "the retry gets the reply");

    let events = SseReader::new(post(&fake, &chat(true, "count for me")).await)
        .all()
        .await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let full: String = events[..events.len() - 1]
        .iter()
        .map(Event::json)
        .filter_map(|c| content_of(&c).map(str::to_owned))
        .collect();
    assert_eq!(full, text);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_stream_is_recorded_as_cancelled() {
    let fake = start().await;
    let inter = Duration::from_millis(30);
    fake.set_latency(Duration::from_millis(50), inter);
    let words = 60;
    let text: Vec<String> = (0..words).map(|i| format!("word{i}")).collect();
    fake.push_reply(Reply::text(&text.join(" ")));

    let mut reader = SseReader::new(post(&fake, &chat(true, "talk a lot")).await);
    let mut contents = 0;
    while contents < 2 {
        let e = reader.next().await.expect("stream still open");
        if content_of(&e.json()).is_some_and(|c| !c.is_empty()) {
            contents += 1;
        }
    }
    // Barge-in: the client hangs up on the stream.
    drop(reader);
    let dropped_at = Instant::now();

    assert!(
        fake.wait_for(Duration::from_secs(10), |f| f.requests()[0].cancelled)
            .await,
        "disconnect not recorded: {:?}",
        fake.requests()[0]
    );
    let r = &fake.requests()[0];
    assert!(!r.completed);
    assert!(
        r.tokens_sent >= 2 && r.tokens_sent < words,
        "sent {}",
        r.tokens_sent
    );
    assert!(r.finish_reason.is_none());
    let noticed = r.finished_at.unwrap().saturating_duration_since(dropped_at);
    assert!(noticed < inter * words / 2, "noticed after {noticed:?}");
    // And it stays that way: the stream task stopped instead of finishing.
    tokio::time::sleep(inter * 4).await;
    let tokens_later = fake.requests()[0].tokens_sent;
    assert_eq!(tokens_later, r.tokens_sent);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_sends_headers_then_nothing() {
    let fake = start().await;
    fake.stall_next();
    let resp = tokio::time::timeout(
        Duration::from_secs(2),
        post(&fake, &chat(true, "are you there?")),
    )
    .await
    .expect("headers arrive even though the body stalls");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    check_rate_limit_headers(&resp);
    let mut reader = SseReader::new(resp);
    let waited = tokio::time::timeout(Duration::from_millis(800), reader.next()).await;
    assert!(waited.is_err(), "a stalled stream must send nothing");
    drop(reader);

    assert!(
        fake.wait_for(Duration::from_secs(10), |f| f.requests()[0].cancelled)
            .await
    );
    let r = &fake.requests()[0];
    assert_eq!(r.fault, Some(InjectedFault::Stall));
    assert_eq!(r.tokens_sent, 0);
    assert_eq!(r.source, None);

    // Only the next request stalls.
    let events = SseReader::new(post(&fake, &chat(true, "hello?")).await)
        .all()
        .await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    fake.shutdown().await;
}
