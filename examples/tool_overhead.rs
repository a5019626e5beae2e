//! Benchmark: what an agent's HTTP tool call costs beyond the endpoint's own time. The same
//! local endpoint (answers a small JSON object after `--endpoint-ms`) is called `--calls`
//! times, `--concurrency` at once, by a bare HTTP client (a POST of the same body, nothing
//! else) and by the tool runner (arguments in the signed envelope, Standard Webhooks
//! signature, the SSRF guard's resolution, the endpoint's breaker, the answer read under its
//! size limit and parsed). Prints p50/p99 of each and the difference.
//!
//! ```text
//! cargo run --release --example tool_overhead -- --calls 2000 --concurrency 16
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use iace::outbound::guard::Guard;
use iace::outbound::tools::HttpToolRunner;
use iace_actors::catalog::profile::HttpTool;
use iace_actors::ports::voice::{ToolRequest, ToolRunner};
use serde_json::json;

mod common;
use common::{arg, percentile};

async fn timed<F, Fut>(calls: usize, concurrency: usize, f: F) -> Vec<u64>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let per = calls / concurrency;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let f = f.clone();
            tokio::spawn(async move {
                let mut us = Vec::with_capacity(per);
                for _ in 0..per {
                    let t = Instant::now();
                    f().await;
                    us.push(t.elapsed().as_micros() as u64);
                }
                us
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort_unstable();
    all
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let calls = arg("--calls", 2000).max(1);
    let concurrency = arg("--concurrency", 16).max(1);
    let endpoint_ms = arg("--endpoint-ms", 0) as u64;

    let app = axum::Router::new().route(
        "/tool",
        post(move || async move {
            if endpoint_ms > 0 {
                tokio::time::sleep(Duration::from_millis(endpoint_ms)).await;
            }
            axum::Json(json!({"status": "shipped", "eta": "tomorrow", "items": [1, 2, 3]}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/tool", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let arguments = json!({"order_id": "A123", "note": "leave at the door"});
    let bare = reqwest::Client::new();
    let (u, a) = (url.clone(), arguments.clone());
    // Warm both up (connections, code paths).
    bare.post(&u).json(&a).send().await?.bytes().await?;
    let baseline = timed(calls, concurrency, move || {
        let (bare, u, a) = (bare.clone(), u.clone(), a.clone());
        async move {
            let r = bare.post(&u).json(&a).send().await.expect("bare post");
            let _: serde_json::Value = r.json().await.expect("json");
        }
    })
    .await;

    let tool: HttpTool = serde_json::from_value(json!({
        "name": "order",
        "description": "Looks an order up.",
        "url": url,
        "signing_secret": iace::outbound::signing::Secret::generate().expose(),
        "secret_headers": {"Authorization": "Bearer token"},
    }))?;
    let runner = Arc::new(HttpToolRunner::new(
        Guard {
            allow_private: true,
        },
        None,
    ));
    let request = ToolRequest {
        tool,
        tool_call_id: "call_1".into(),
        call_id: uuid::Uuid::new_v4(),
        turn: 1,
        organization_id: uuid::Uuid::new_v4(),
        agent_id: uuid::Uuid::new_v4(),
        customer_id: None,
        arguments,
    };
    runner
        .run(request.clone())
        .await
        .map_err(anyhow::Error::msg)?;
    let tools = timed(calls, concurrency, move || {
        let (runner, request) = (runner.clone(), request.clone());
        async move {
            runner.run(request).await.expect("tool call");
        }
    })
    .await;

    let show = |label: &str, us: &[u64]| {
        println!(
            "{label:<12} p50 {:>7.3} ms  p99 {:>7.3} ms",
            percentile(us, 50.0) as f64 / 1000.0,
            percentile(us, 99.0) as f64 / 1000.0
        );
    };
    println!(
        "{} calls, {concurrency} at once, endpoint answers after {endpoint_ms} ms:",
        baseline.len()
    );
    show("bare POST", &baseline);
    show("tool runner", &tools);
    println!(
        "overhead     p50 {:>7.3} ms  p99 {:>7.3} ms",
        (percentile(&tools, 50.0) as f64 - percentile(&baseline, 50.0) as f64) / 1000.0,
        (percentile(&tools, 99.0) as f64 - percentile(&baseline, 99.0) as f64) / 1000.0
    );
    Ok(())
}
