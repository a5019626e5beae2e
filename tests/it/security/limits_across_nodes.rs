//! Limits that hold across two server processes sharing Redis and Postgres: an API key's
//! request rate and the plan's concurrent-call limit.

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::{answer, s, send, server};
use crate::common;
use crate::common::server::create_org;

#[tokio::test]
async fn rate_limits_hold_across_two_server_processes_sharing_redis() {
    let db = common::db::fresh_database().await;
    let one = server(&db, &[]).await;
    let two = server(&db, &[]).await;
    let (_, owner) = create_org(&db, "Busy");
    // A `low` key: 60 requests per minute, whichever node serves them.
    let k = send(
        &one.base,
        Method::POST,
        "/v1/api-keys",
        Some(&owner),
        Some(json!({"name": "batch", "tier": "low"})),
    )
    .await;
    let low = s(&k.body, "api_key");
    let mut remaining = Vec::new();
    for i in 0..60 {
        let base = if i % 2 == 0 { &one.base } else { &two.base };
        let r = send(base, Method::GET, "/v1/agents", Some(&low), None).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.body);
        remaining.push(
            r.headers["ratelimit-remaining"]
                .to_str()
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
        assert_eq!(r.headers["ratelimit-limit"], "60");
    }
    assert_eq!(remaining.first(), Some(&59));
    assert_eq!(remaining.last(), Some(&0));
    for base in [&one.base, &two.base] {
        let r = send(base, Method::GET, "/v1/agents", Some(&low), None).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
        assert_eq!(r.body["error"]["code"], "rate_limited");
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(r.headers["ratelimit-remaining"], "0");
    }
    // The owner's key has its own budget (the organization's 120 is not exhausted).
    let r = send(&two.base, Method::GET, "/v1/agents", Some(&owner), None).await;
    assert_eq!(r.status, StatusCode::OK);

    // The free plan's concurrent-call limit (2), counted across both nodes.
    let agent = send(
        &one.base,
        Method::POST,
        "/v1/agents",
        Some(&owner),
        Some(json!({"name": "Ava"})),
    )
    .await;
    let agent_id = s(&agent.body, "id");
    let call = json!({"to": "+14155550100", "from": "+14155550199", "agent_id": agent_id});
    // Both nodes claim every shard of this database and the second one started owns the calls,
    // so creates go to it (store_pg's racing_limited_inserts_never_pass_the_live_call_limit
    // races separate connections, as separate nodes would); the count is read on the other.
    let create = |base: String, key: String| {
        let owner = owner.clone();
        let call = call.clone();
        async move {
            let req = reqwest::Client::new()
                .post(format!("{base}/v1/calls"))
                .bearer_auth(owner)
                .header("idempotency-key", key)
                .json(&call);
            answer(req).await
        }
    };
    // Ten creates racing for the plan's two slots at once: exactly two admitted.
    let burst: Vec<_> = (0..10)
        .map(|i| tokio::spawn(create(two.base.clone(), format!("slot-{i}"))))
        .collect();
    let mut admitted = Vec::new();
    for (i, r) in burst.into_iter().enumerate() {
        let r = r.await.unwrap();
        if r.status == StatusCode::CREATED {
            admitted.push(i);
            continue;
        }
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
        assert_eq!(r.body["error"]["code"], "concurrent_call_limit");
        assert_eq!(r.headers["retry-after"], "5");
        assert!(
            s(&r.body["error"], "message").contains("free plan allows 2 live calls"),
            "{}",
            r.body
        );
    }
    assert_eq!(admitted.len(), 2, "admitted {admitted:?}");
    // A client retrying a create it was told succeeded gets its call back, even at the limit.
    let r = create(two.base.clone(), format!("slot-{}", admitted[0])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.headers["idempotent-replayed"], "true");
    let org = send(
        &one.base,
        Method::GET,
        "/v1/organization",
        Some(&owner),
        None,
    )
    .await;
    assert_eq!(org.body["live_calls"], 2, "{}", org.body);
    assert_eq!(org.body["limits"]["concurrent_calls"], 2, "{}", org.body);
}
