//! Wire-level tests of the Gemini embeddings fake (`iace_fakes::google`) on real sockets and real
//! time, with reqwest as the client. Each test starts its own fake, so they run in parallel;
//! timing assertions use generous bounds because the box is small and shared.

use std::time::{Duration, Instant};

use iace_fakes::google::{
    full_embedding, EmbedMethod, FakeGoogle, FakeGoogleConfig, FakeModel, InjectedFault, KeySource,
    MissingKey,
};
use serde_json::{json, Value};

const MODEL: &str = "gemini-embedding-001";

// ---------------------------------------------------------------------------------------------
// Helpers

async fn start() -> FakeGoogle {
    FakeGoogle::start(FakeGoogleConfig::default())
        .await
        .expect("fake starts")
}

fn url(fake: &FakeGoogle, model: &str, method: &str) -> String {
    format!("{}/models/{model}:{method}", fake.base_url())
}

/// POSTs `body` to `model:method` with the key in the header.
async fn call(fake: &FakeGoogle, model: &str, method: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(url(fake, model, method))
        .header("x-goog-api-key", fake.api_key())
        .json(body)
        .send()
        .await
        .expect("request sent")
}

async fn embed(fake: &FakeGoogle, body: &Value) -> reqwest::Response {
    call(fake, MODEL, "embedContent", body).await
}

async fn batch(fake: &FakeGoogle, body: &Value) -> reqwest::Response {
    call(fake, MODEL, "batchEmbedContents", body).await
}

/// One `EmbedContentRequest` as the SDK writes it.
fn item(text: &str, task: &str, dims: Option<u32>) -> Value {
    let mut v = json!({
        "model": format!("models/{MODEL}"),
        "content": {"parts": [{"text": text}]},
        "taskType": task,
    });
    if let Some(d) = dims {
        v["outputDimensionality"] = json!(d);
    }
    v
}

fn batch_of(texts: &[String], dims: Option<u32>) -> Value {
    let requests: Vec<Value> = texts
        .iter()
        .map(|t| item(t, "RETRIEVAL_DOCUMENT", dims))
        .collect();
    json!({ "requests": requests })
}

fn values(v: &Value) -> Vec<f32> {
    v["values"]
        .as_array()
        .expect("values array")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Checks the envelope (JSON, `code` equal to the HTTP status, the canonical `status`, a
/// message) and returns `error`.
async fn error_of(resp: reqwest::Response, http: u16, status: &str) -> Value {
    assert_eq!(resp.status().as_u16(), http);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/json"), "{ct}");
    let body: Value = resp.json().await.expect("JSON error body");
    let error = body["error"].clone();
    assert_eq!(error["code"], http, "{body}");
    assert_eq!(error["status"], status, "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    error
}

/// The detail of `error` with `@type` `type.googleapis.com/google.rpc.<kind>`.
fn detail<'a>(error: &'a Value, kind: &str) -> Option<&'a Value> {
    let want = format!("type.googleapis.com/google.rpc.{kind}");
    error["details"]
        .as_array()?
        .iter()
        .find(|d| d["@type"] == want.as_str())
}

// ---------------------------------------------------------------------------------------------
// Answers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_content_answers_deterministic_vectors_truncated_without_renormalising() {
    let fake = start().await;
    let text = "The caller wants to move the appointment to Friday";

    // Full size: 3072 values, unit length, the fake's published vector.
    let resp = embed(&fake, &item(text, "RETRIEVAL_DOCUMENT", None)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: Value = resp.json().await.unwrap();
    let full = values(&body["embedding"]);
    assert_eq!(full.len(), 3072);
    assert!((norm(&full) - 1.0).abs() < 1e-4, "{}", norm(&full));
    assert_eq!(full, full_embedding(MODEL, text, 3072));
    assert_eq!(fake.embedding(MODEL, text, None).unwrap(), full);

    // 768: the prefix of the same vector, exactly, and not unit length.
    let resp = embed(&fake, &item(text, "RETRIEVAL_QUERY", Some(768))).await;
    let short = values(&resp.json::<Value>().await.unwrap()["embedding"]);
    assert_eq!(short.len(), 768);
    assert_eq!(short, full[..768]);
    assert!(norm(&short) < 0.9, "{}", norm(&short));
    assert_eq!(fake.embedding(MODEL, text, Some(768)).unwrap(), short);

    // Same text, same vector; another text, another vector. The model's name need not be in
    // the body of embedContent.
    let resp = embed(&fake, &json!({"content": {"parts": [{"text": text}]}})).await;
    assert_eq!(
        values(&resp.json::<Value>().await.unwrap()["embedding"]),
        full
    );
    let resp = embed(
        &fake,
        &item("Cancel my subscription", "RETRIEVAL_DOCUMENT", None),
    )
    .await;
    assert_ne!(
        values(&resp.json::<Value>().await.unwrap()["embedding"]),
        full
    );

    // outputDimensionality 0 is unset (proto3): the full size.
    let resp = embed(&fake, &item(text, "RETRIEVAL_DOCUMENT", Some(0))).await;
    assert_eq!(
        values(&resp.json::<Value>().await.unwrap()["embedding"]).len(),
        3072
    );

    // The log: path model, texts, task types, dimensionality, status, where the key was.
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 5);
    let r = &reqs[1];
    assert_eq!(r.method, EmbedMethod::EmbedContent);
    assert_eq!(r.model, MODEL);
    assert_eq!(r.texts(), vec![text.to_owned()]);
    assert_eq!(r.task_types(), vec![Some("RETRIEVAL_QUERY".to_owned())]);
    assert_eq!(r.output_dimensionalities(), vec![Some(768)]);
    assert_eq!(
        r.items[0].model.as_deref(),
        Some("models/gemini-embedding-001")
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.error_status, None);
    assert_eq!(r.key_source, Some(KeySource::Header));
    assert!(r.finished_at.is_some() && !r.cancelled);
    assert_eq!(reqs[2].items[0].model, None);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_answer_in_order_up_to_100_requests() {
    let fake = start().await;
    let texts: Vec<String> = (0..100).map(|i| format!("memory number {i}")).collect();
    let resp = batch(&fake, &batch_of(&texts, Some(768))).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let embeddings = body["embeddings"].as_array().unwrap();
    assert_eq!(embeddings.len(), 100);
    for (text, e) in texts.iter().zip(embeddings) {
        let v = values(e);
        assert_eq!(v, full_embedding(MODEL, text, 3072)[..768], "{text}");
    }
    let r = &fake.requests()[0];
    assert_eq!(r.method, EmbedMethod::BatchEmbedContents);
    assert_eq!(r.texts(), texts);
    assert!(r
        .task_types()
        .iter()
        .all(|t| t.as_deref() == Some("RETRIEVAL_DOCUMENT")));

    // Each request of a batch keeps its own settings.
    let resp = batch(
        &fake,
        &json!({"requests": [
            item("a", "RETRIEVAL_QUERY", Some(10)),
            item("b", "CLUSTERING", None),
        ]}),
    )
    .await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(values(&body["embeddings"][0]).len(), 10);
    assert_eq!(values(&body["embeddings"][1]).len(), 3072);

    // 101 is one too many; none is too few.
    let texts: Vec<String> = (0..101).map(|i| format!("t{i}")).collect();
    let error = error_of(
        batch(&fake, &batch_of(&texts, Some(768))).await,
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    assert_eq!(
        error["message"],
        "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch\n"
    );
    assert_eq!(
        detail(&error, "BadRequest").unwrap()["fieldViolations"][0]["field"],
        "requests"
    );
    error_of(
        batch(&fake, &json!({"requests": []})).await,
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    error_of(batch(&fake, &json!({})).await, 400, "INVALID_ARGUMENT").await;
    let reqs = fake.requests();
    assert_eq!(reqs[2].items.len(), 101);
    assert_eq!(reqs[2].status, 400);
    assert_eq!(reqs[2].error_status.as_deref(), Some("INVALID_ARGUMENT"));
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_batch_limit_and_extra_models_are_honoured() {
    let fake = FakeGoogle::start(FakeGoogleConfig {
        models: vec![
            FakeModel::new(MODEL, 3072),
            FakeModel::new("text-embedding-004", 768),
        ],
        max_batch: 2,
        ..FakeGoogleConfig::default()
    })
    .await
    .unwrap();
    let texts: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let error = error_of(
        batch(&fake, &batch_of(&texts, None)).await,
        400,
        "INVALID_ARGUMENT",
    )
    .await;
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("at most 2 requests"));
    let resp = call(
        &fake,
        "text-embedding-004",
        "embedContent",
        &json!({"content": {"parts": [{"text": "x"}]}}),
    )
    .await;
    let v = values(&resp.json::<Value>().await.unwrap()["embedding"]);
    assert_eq!(v.len(), 768);
    assert!((norm(&v) - 1.0).abs() < 1e-4);
    // Its full size is its limit.
    let resp = call(
        &fake,
        "text-embedding-004",
        "embedContent",
        &json!({"content": {"parts": [{"text": "x"}]}, "outputDimensionality": 769}),
    )
    .await;
    error_of(resp, 400, "INVALID_ARGUMENT").await;
    fake.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Auth

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_comes_from_the_header_or_the_query_and_a_bad_one_is_api_key_invalid() {
    let fake = start().await;
    let http = reqwest::Client::new();
    let body = item("hello", "RETRIEVAL_QUERY", Some(768));
    fake.fail_next(1, 503);

    // Wrong key in the header: the documented body. It takes no injected fault.
    let resp = http
        .post(url(&fake, MODEL, "embedContent"))
        .header("x-goog-api-key", "AIzaWRONG")
        .json(&body)
        .send()
        .await
        .unwrap();
    let error = error_of(resp, 400, "INVALID_ARGUMENT").await;
    assert_eq!(
        error["message"],
        "API key not valid. Please pass a valid API key."
    );
    let info = detail(&error, "ErrorInfo").expect("an ErrorInfo");
    assert_eq!(info["reason"], "API_KEY_INVALID");
    assert_eq!(info["domain"], "googleapis.com");
    assert_eq!(
        info["metadata"]["service"],
        "generativelanguage.googleapis.com"
    );

    // No key at all: the same answer by default.
    let resp = http
        .post(url(&fake, MODEL, "embedContent"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let error = error_of(resp, 400, "INVALID_ARGUMENT").await;
    assert_eq!(
        detail(&error, "ErrorInfo").unwrap()["reason"],
        "API_KEY_INVALID"
    );

    // Wrong key in the query.
    let resp = http
        .post(url(&fake, MODEL, "embedContent"))
        .query(&[("key", "AIzaWRONG")])
        .json(&body)
        .send()
        .await
        .unwrap();
    error_of(resp, 400, "INVALID_ARGUMENT").await;

    // The right key in the query works (and now takes the armed 503).
    let resp = http
        .post(url(&fake, MODEL, "embedContent"))
        .query(&[("key", fake.api_key())])
        .json(&body)
        .send()
        .await
        .unwrap();
    error_of(resp, 503, "UNAVAILABLE").await;
    let resp = http
        .post(url(&fake, MODEL, "embedContent"))
        .query(&[("key", fake.api_key())])
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // The header wins over the query.
    let resp = http
        .post(url(&fake, MODEL, "embedContent"))
        .query(&[("key", fake.api_key())])
        .header("x-goog-api-key", "AIzaWRONG")
        .json(&body)
        .send()
        .await
        .unwrap();
    error_of(resp, 400, "INVALID_ARGUMENT").await;

    let reqs = fake.requests();
    let sources: Vec<Option<KeySource>> = reqs.iter().map(|r| r.key_source).collect();
    assert_eq!(
        sources,
        [
            Some(KeySource::Header),
            None,
            Some(KeySource::Query),
            Some(KeySource::Query),
            Some(KeySource::Query),
            Some(KeySource::Header),
        ]
    );
    let faults: Vec<Option<InjectedFault>> = reqs.iter().map(|r| r.fault).collect();
    assert_eq!(
        faults,
        [
            None,
            None,
            None,
            Some(InjectedFault::Status(503)),
            None,
            None
        ]
    );
    fake.shutdown().await;

    // Configured the other way, a missing key is 403 PERMISSION_DENIED.
    let fake = FakeGoogle::start(FakeGoogleConfig {
        missing_key: MissingKey::PermissionDenied,
        ..FakeGoogleConfig::default()
    })
    .await
    .unwrap();
    let resp = http
        .post(url(&fake, MODEL, "embedContent"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let error = error_of(resp, 403, "PERMISSION_DENIED").await;
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("unregistered callers"));
    fake.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Validation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_model_is_404_and_an_unknown_method_or_url_is_not_recorded() {
    let fake = start().await;
    let resp = call(
        &fake,
        "text-embedding-004",
        "embedContent",
        &json!({"content": {"parts": [{"text": "x"}]}}),
    )
    .await;
    let error = error_of(resp, 404, "NOT_FOUND").await;
    assert_eq!(
        error["message"],
        "models/text-embedding-004 is not found for API version v1beta, or is not supported for embedContent. Call ListModels to see the list of available models and their supported methods."
    );
    let r = &fake.requests()[0];
    assert_eq!(r.model, "text-embedding-004");
    assert_eq!(r.error_status.as_deref(), Some("NOT_FOUND"));

    let resp = call(&fake, MODEL, "generateContent", &json!({})).await;
    error_of(resp, 404, "NOT_FOUND").await;
    let resp = reqwest::Client::new()
        .post(format!("{}/embeddings", fake.base_url()))
        .send()
        .await
        .unwrap();
    error_of(resp, 404, "NOT_FOUND").await;
    assert_eq!(fake.requests().len(), 1);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_bodies_are_400_invalid_argument_with_google_wording() {
    let fake = start().await;
    let other = "models/text-embedding-004";
    // (endpoint, body, a piece of the expected message)
    let cases: Vec<(&str, Value, &str)> = vec![
        // Batch: every request names the path's model, as `models/...`.
        (
            "batchEmbedContents",
            json!({"requests": [item("a", "RETRIEVAL_DOCUMENT", None), {"model": other, "content": {"parts": [{"text": "b"}]}}]}),
            "BatchEmbedContentsRequest.requests[1].model: the model of every request must be the model of the call",
        ),
        (
            "batchEmbedContents",
            json!({"requests": [{"content": {"parts": [{"text": "b"}]}}]}),
            "requests[0].model: model is not specified",
        ),
        (
            "batchEmbedContents",
            json!({"requests": [{"model": MODEL, "content": {"parts": [{"text": "b"}]}}]}),
            "unexpected model name format",
        ),
        (
            "embedContent",
            json!({"model": other, "content": {"parts": [{"text": "b"}]}}),
            "EmbedContentRequest.model: the model of every request must be the model of the call",
        ),
        // Text.
        ("embedContent", json!({"taskType": "RETRIEVAL_QUERY"}), "* EmbedContentRequest.content: contents is not specified"),
        ("embedContent", json!({"content": {"parts": []}}), "contents is not specified"),
        ("embedContent", json!({"content": {"parts": [{"text": ""}]}}), "EmbedContentRequest.content contains an empty Part."),
        (
            "batchEmbedContents",
            json!({"requests": [{"model": format!("models/{MODEL}"), "content": {"parts": [{}]}}]}),
            "BatchEmbedContentsRequest.requests[0].content contains an empty Part.",
        ),
        ("embedContent", json!({"content": {"parts": [{"text": 5}]}}), "Invalid value at 'content.parts[0].text' (TYPE_STRING), 5"),
        ("embedContent", json!({"content": "hello"}), "Invalid value at 'content'"),
        // Dimensionality.
        ("embedContent", json!({"content": {"parts": [{"text": "x"}]}, "outputDimensionality": -1}), "output_dimensionality: must be between 1 and 3072"),
        ("embedContent", json!({"content": {"parts": [{"text": "x"}]}, "outputDimensionality": 3073}), "output_dimensionality: must be between 1 and 3072"),
        ("embedContent", json!({"content": {"parts": [{"text": "x"}]}, "outputDimensionality": 1.5}), "Invalid value at 'output_dimensionality' (TYPE_INT32), 1.5"),
        ("embedContent", json!({"content": {"parts": [{"text": "x"}]}, "outputDimensionality": "768"}), "(TYPE_INT32)"),
        // Task type.
        ("embedContent", json!({"content": {"parts": [{"text": "x"}]}, "taskType": "RETRIEVAL"}), "Invalid value at 'task_type' (type.googleapis.com/google.ai.generativelanguage.v1beta.TaskType), \"RETRIEVAL\""),
        // Names: camelCase only.
        (
            "batchEmbedContents",
            json!({"requests": [{"model": format!("models/{MODEL}"), "content": {"parts": [{"text": "x"}]}, "task_type": "RETRIEVAL_QUERY"}]}),
            "Invalid JSON payload received. Unknown name \"task_type\" at 'requests[0]': Cannot find field.",
        ),
        ("embedContent", json!({"content": {"parts": [{"text": "x"}]}, "dimensions": 768}), "Unknown name \"dimensions\": Cannot find field."),
        ("batchEmbedContents", json!({"texts": ["x"]}), "Unknown name \"texts\": Cannot find field."),
        ("batchEmbedContents", json!([1, 2]), "Root element must be a message."),
    ];
    for (method, body, expected) in &cases {
        let resp = call(&fake, MODEL, method, body).await;
        let error = error_of(resp, 400, "INVALID_ARGUMENT").await;
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(expected),
            "{method} {body}: {message:?} lacks {expected:?}"
        );
        assert!(detail(&error, "BadRequest").is_some(), "{error}");
    }
    // Not JSON at all.
    let resp = reqwest::Client::new()
        .post(url(&fake, MODEL, "embedContent"))
        .header("x-goog-api-key", fake.api_key())
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let error = error_of(resp, 400, "INVALID_ARGUMENT").await;
    assert!(error["message"]
        .as_str()
        .unwrap()
        .starts_with("Invalid JSON payload received."));

    let reqs = fake.requests();
    assert_eq!(reqs.len(), cases.len() + 1);
    assert!(reqs.iter().all(|r| r.status == 400 && r.fault.is_none()));
    // The log reads what it can even of refused bodies.
    assert_eq!(reqs[0].texts(), ["a", "b"]);
    assert_eq!(reqs.last().unwrap().body, Value::Null);

    // Every documented task type and a title are accepted.
    for task in [
        "TASK_TYPE_UNSPECIFIED",
        "RETRIEVAL_QUERY",
        "RETRIEVAL_DOCUMENT",
        "SEMANTIC_SIMILARITY",
        "CLASSIFICATION",
        "CLUSTERING",
        "QUESTION_ANSWERING",
        "FACT_VERIFICATION",
        "CODE_RETRIEVAL_QUERY",
    ] {
        let mut body = item("x", task, Some(768));
        body["title"] = json!("A title");
        assert_eq!(embed(&fake, &body).await.status(), 200, "{task}");
    }
    assert_eq!(
        fake.requests().last().unwrap().items[0].title.as_deref(),
        Some("A title")
    );
    fake.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Faults

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_errors_carry_google_bodies_and_429_a_retry_delay() {
    let fake = start().await;
    let body = item("x", "RETRIEVAL_QUERY", Some(768));

    fake.rate_limit_next(1, Duration::from_secs(13));
    let error = error_of(embed(&fake, &body).await, 429, "RESOURCE_EXHAUSTED").await;
    assert!(error["message"]
        .as_str()
        .unwrap()
        .starts_with("You exceeded your current quota"));
    assert_eq!(detail(&error, "RetryInfo").unwrap()["retryDelay"], "13s");
    assert!(detail(&error, "QuotaFailure").is_some());
    assert!(detail(&error, "Help").is_some());

    fake.rate_limit_next(1, Duration::from_millis(1_500));
    let error = error_of(embed(&fake, &body).await, 429, "RESOURCE_EXHAUSTED").await;
    assert_eq!(detail(&error, "RetryInfo").unwrap()["retryDelay"], "1.500s");

    // A plain 429 has no RetryInfo, and no Retry-After header either.
    fake.fail_next(1, 429);
    let resp = embed(&fake, &body).await;
    assert!(resp.headers().get("retry-after").is_none());
    let error = error_of(resp, 429, "RESOURCE_EXHAUSTED").await;
    assert!(detail(&error, "RetryInfo").is_none());

    for (status, name) in [
        (500, "INTERNAL"),
        (503, "UNAVAILABLE"),
        (504, "DEADLINE_EXCEEDED"),
        (400, "INVALID_ARGUMENT"),
        (403, "PERMISSION_DENIED"),
    ] {
        fake.fail_next(2, status);
        error_of(embed(&fake, &body).await, status, name).await;
        // Injected faults come before validation.
        error_of(batch(&fake, &json!({})).await, status, name).await;
    }
    assert_eq!(embed(&fake, &body).await.status(), 200);

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 3 + 5 * 2 + 1);
    assert_eq!(reqs[0].fault, Some(InjectedFault::Status(429)));
    assert_eq!(reqs[0].error_status.as_deref(), Some("RESOURCE_EXHAUSTED"));
    assert_eq!(reqs[4].fault, Some(InjectedFault::Status(500)));
    assert_eq!(reqs.last().unwrap().fault, None);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_delays_every_answer() {
    let fake = start().await;
    fake.set_latency(Duration::from_millis(500));
    let sent = Instant::now();
    let resp = embed(&fake, &item("x", "RETRIEVAL_QUERY", Some(768))).await;
    assert_eq!(resp.status(), 200);
    assert!(sent.elapsed() >= Duration::from_millis(500));
    // Cleared after a long one: an answer well before that latency shows it is gone, on a
    // machine however busy.
    fake.set_latency(Duration::from_secs(120));
    fake.set_latency(Duration::ZERO);
    let sent = Instant::now();
    embed(&fake, &item("x", "RETRIEVAL_QUERY", Some(768))).await;
    assert!(sent.elapsed() < Duration::from_secs(60));
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_is_never_answered_and_recorded_as_cancelled() {
    let fake = start().await;
    fake.stall_next();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = http
        .post(url(&fake, MODEL, "embedContent"))
        .header("x-goog-api-key", fake.api_key())
        .json(&item("x", "RETRIEVAL_QUERY", Some(768)))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(
        fake.wait_for(Duration::from_secs(10), |f| f.requests()[0].cancelled)
            .await
    );
    let r = &fake.requests()[0];
    assert_eq!(r.fault, Some(InjectedFault::Stall));
    assert_eq!(r.status, 0);

    // Only one stall was armed.
    let resp = http
        .post(url(&fake, MODEL, "embedContent"))
        .header("x-goog-api-key", fake.api_key())
        .json(&item("x", "RETRIEVAL_QUERY", Some(768)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A stall pending when the fake stops ends with it.
    fake.stall_next();
    let pending = tokio::spawn(
        reqwest::Client::new()
            .post(url(&fake, MODEL, "embedContent"))
            .header("x-goog-api-key", fake.api_key())
            .json(&item("x", "RETRIEVAL_QUERY", Some(768)))
            .send(),
    );
    assert!(
        fake.wait_for(Duration::from_secs(10), |f| f.requests().len() == 3)
            .await
    );
    let base = fake.base_url();
    let started = Instant::now();
    fake.shutdown().await;
    // The stall is endless: any bound shows shutdown did not wait for it.
    assert!(started.elapsed() < Duration::from_secs(30));
    let _ = tokio::time::timeout(Duration::from_secs(3), pending)
        .await
        .expect("the stalled request ends when the fake stops");
    // Nothing listens any more.
    assert!(reqwest::Client::new()
        .post(format!("{base}/models/{MODEL}:embedContent"))
        .send()
        .await
        .is_err());
}
