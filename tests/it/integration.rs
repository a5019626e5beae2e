//! End-to-end tests: the real `iace` binary against real Postgres (pgvector) and real Redis,
//! with the simulated carrier. Each test gets its own database and Redis key prefix, so they run
//! in parallel. Requires `DATABASE_URL` and `REDIS_URL` (`eval "$(scripts/services env)"`).

use crate::common;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

/// One server process on its own database (simulated carrier; plan limits are tested in
/// security::limits_across_nodes).
struct Server {
    inner: common::server::Server,
    base: String,
    http: reqwest::Client,
}

impl Server {
    async fn start(ring_ms: u64, talk_ms: u64) -> Server {
        Server::start_with(ring_ms, talk_ms, &[]).await
    }

    /// [`Server::start`] with extra environment.
    async fn start_with(ring_ms: u64, talk_ms: u64, extra: &[(&str, &str)]) -> Server {
        let database_url = common::db::fresh_database().await;
        let (ring, talk) = (ring_ms.to_string(), talk_ms.to_string());
        let mut env = vec![
            ("IACE_SIM_RING_MS", ring.as_str()),
            ("IACE_SIM_TALK_MS", talk.as_str()),
            ("IACE_PLAN_LIMITS", "false"),
        ];
        env.extend_from_slice(extra);
        let inner = common::server::Server::start(&database_url, &env).await;
        Server {
            base: inner.base.clone(),
            inner,
            http: reqwest::Client::new(),
        }
    }

    async fn spawn(&mut self) {
        self.inner.spawn().await;
    }

    /// SIGKILL: no graceful shutdown, no flushing.
    fn kill9(&mut self) {
        self.inner.kill9();
    }

    fn org(&self, name: &str) -> (String, String) {
        common::server::create_org(&self.inner.database_url, name)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        key: &str,
        path: &str,
        body: Option<String>,
        extra: &[(&str, &str)],
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body {text:?}"))
        };
        (status, value, headers)
    }

    async fn get(&self, key: &str, path: &str) -> (StatusCode, Value) {
        let (s, v, _) = self.send(reqwest::Method::GET, key, path, None, &[]).await;
        (s, v)
    }

    async fn post(&self, key: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let (s, v, _) = self
            .send(
                reqwest::Method::POST,
                key,
                path,
                Some(body.to_string()),
                &[],
            )
            .await;
        (s, v)
    }

    async fn agent(&self, key: &str) -> String {
        let (s, v) = self
            .post(
                key,
                "/v1/agents",
                json!({"name": "Renewals", "persona_config": {"prompt": "hi"}}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["id"].as_str().unwrap().to_owned()
    }

    async fn wait_status(&self, key: &str, id: &str, want: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (s, v) = self.get(key, &format!("/v1/calls/{id}")).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            if v["status"] == want {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "call {id} did not reach {want} within {within:?}; last: {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn events(&self, key: &str, id: &str) -> Vec<Value> {
        let (s, v) = self.get(key, &format!("/v1/calls/{id}/events")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let events = v["data"].as_array().cloned().unwrap_or_else(|| {
            v.as_array()
                .cloned()
                .unwrap_or_else(|| panic!("events body: {v}"))
        });
        let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(
            seqs, expected,
            "journal must be gap-free without duplicates"
        );
        events
    }
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

fn call_body(agent: &str) -> Value {
    json!({"to": "+14155550100", "from": "+14155550199", "agent_id": agent, "metadata": {"campaign": "q4"}})
}

#[tokio::test]
async fn outbound_call_goes_pending_ringing_in_progress_completed() {
    let server = Server::start(400, 600).await;
    let (_, key) = server.org("Acme");
    let agent = server.agent(&key).await;
    let (s, call) = server.post(&key, "/v1/calls", call_body(&agent)).await;
    assert_eq!(s, StatusCode::CREATED, "{call}");
    assert_eq!(call["status"], "pending");
    assert_eq!(call["direction"], "outbound");
    assert_eq!(call["metadata"]["campaign"], "q4");
    let id = call["id"].as_str().unwrap();

    let done = server
        .wait_status(&key, id, "completed", Duration::from_secs(30))
        .await;
    assert_eq!(done["end_reason"], "normal_clearing");
    assert!(done["answered_at"].is_string() && done["ended_at"].is_string());
    let events = server.events(&key, id).await;
    assert_eq!(
        kinds(&events),
        ["created", "initiated", "ringing", "answered", "hangup"]
    );

    let (s, list) = server.get(&key, "/v1/calls?status=completed").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["data"][0]["id"], id);
}

#[tokio::test]
async fn kill_9_mid_call_then_restart_resumes_and_completes_without_lost_or_duplicated_events() {
    let mut server = Server::start(300, 4000).await;
    let (_, key) = server.org("Acme");
    let agent = server.agent(&key).await;
    let (s, call) = server.post(&key, "/v1/calls", call_body(&agent)).await;
    assert_eq!(s, StatusCode::CREATED, "{call}");
    let id = call["id"].as_str().unwrap().to_owned();
    server
        .wait_status(&key, &id, "in_progress", Duration::from_secs(30))
        .await;

    server.kill9();
    assert!(
        server
            .http
            .get(format!("{}/health", server.base))
            .send()
            .await
            .is_err(),
        "the server must be down"
    );
    server.spawn().await;

    let done = server
        .wait_status(&key, &id, "completed", Duration::from_secs(30))
        .await;
    assert_eq!(done["end_reason"], "normal_clearing");
    let events = server.events(&key, &id).await;
    assert_eq!(
        kinds(&events),
        ["created", "initiated", "ringing", "answered", "hangup"],
        "exactly one of each event across the crash"
    );
}

#[tokio::test]
async fn idempotent_create_returns_the_same_call_and_dials_once() {
    let server = Server::start(300, 30_000).await;
    let (_, key) = server.org("Acme");
    let agent = server.agent(&key).await;
    let body = call_body(&agent).to_string();
    let post = |body: String| {
        server.send(
            reqwest::Method::POST,
            &key,
            "/v1/calls",
            Some(body),
            &[("idempotency-key", "renewal-7")],
        )
    };
    let (s1, first, _) = post(body.clone()).await;
    assert_eq!(s1, StatusCode::CREATED, "{first}");
    let (s2, second, headers) = post(body.clone()).await;
    assert_eq!(s2, StatusCode::OK, "{second}");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(first["id"], second["id"]);
    let mut other = call_body(&agent);
    other["to"] = json!("+14155550123");
    let (s3, err, _) = post(other.to_string()).await;
    assert_eq!(s3, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["code"], "idempotency_key_reused");

    let id = first["id"].as_str().unwrap();
    server
        .wait_status(&key, id, "in_progress", Duration::from_secs(30))
        .await;
    let events = server.events(&key, id).await;
    let initiated = kinds(&events).iter().filter(|k| *k == "initiated").count();
    assert_eq!(initiated, 1, "one dial");
    let (_, list) = server.get(&key, "/v1/calls").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "one call stored");
}

#[tokio::test]
async fn hangup_then_second_hangup_is_409_naming_the_status() {
    let server = Server::start(300, 30_000).await;
    let (_, key) = server.org("Acme");
    let agent = server.agent(&key).await;
    let (_, call) = server.post(&key, "/v1/calls", call_body(&agent)).await;
    let id = call["id"].as_str().unwrap();
    server
        .wait_status(&key, id, "in_progress", Duration::from_secs(30))
        .await;
    let (s, ended) = server
        .post(&key, &format!("/v1/calls/{id}/hangup"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{ended}");
    assert_eq!(ended["status"], "completed");
    assert_eq!(ended["end_reason"], "hangup_requested");
    let (s, err) = server
        .post(&key, &format!("/v1/calls/{id}/hangup"), json!({}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["error"]["code"], "illegal_transition");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("completed"),
        "{err}"
    );
    assert!(err["error"]["request_id"].is_string());
}

#[tokio::test]
async fn another_organizations_ids_answer_404() {
    let server = Server::start(300, 30_000).await;
    let (_, key_a) = server.org("Acme");
    let (_, key_b) = server.org("Globex");
    let agent = server.agent(&key_a).await;
    let (_, call) = server.post(&key_a, "/v1/calls", call_body(&agent)).await;
    let id = call["id"].as_str().unwrap();
    for path in [
        format!("/v1/calls/{id}"),
        format!("/v1/calls/{id}/events"),
        format!("/v1/agents/{agent}"),
    ] {
        let (s, v) = server.get(&key_b, &path).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {v}");
        assert_eq!(v["error"]["code"], "not_found");
    }
    let (s, _) = server
        .post(&key_b, &format!("/v1/calls/{id}/hangup"), json!({}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = server.post(&key_b, "/v1/calls", call_body(&agent)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "B cannot use A's agent: {v}");
    let (_, list) = server.get(&key_b, "/v1/calls").await;
    assert_eq!(list["data"], json!([]));
    let (s, _) = server.get("iace_not_a_key", "/v1/calls").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn malformed_inputs_get_a_clear_400_and_store_nothing() {
    let server = Server::start(300, 30_000).await;
    let (_, key) = server.org("Acme");
    let agent = server.agent(&key).await;
    let cases: Vec<(&str, String, &str)> = vec![
        ("broken json", "{\"to\": ".into(), ""),
        (
            "unknown field",
            json!({"to": "+14155550100", "from": "+14155550199", "agent_id": agent, "colour": "red"}).to_string(),
            "colour",
        ),
        (
            "bad phone",
            json!({"to": "555-0100", "from": "+14155550199", "agent_id": agent}).to_string(),
            "E.164",
        ),
        (
            "bad agent id",
            json!({"to": "+14155550100", "from": "+14155550199", "agent_id": "nope"}).to_string(),
            "",
        ),
        (
            "metadata not an object",
            json!({"to": "+14155550100", "from": "+14155550199", "agent_id": agent, "metadata": [1]}).to_string(),
            "metadata",
        ),
    ];
    for (what, body, needle) in cases {
        let (s, v, _) = server
            .send(reqwest::Method::POST, &key, "/v1/calls", Some(body), &[])
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{what}: {v}");
        assert_eq!(v["error"]["code"], "invalid_request", "{what}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{what}: message {message:?} should name {needle:?}"
        );
        assert!(v["error"]["request_id"].is_string(), "{what}");
    }
    let (s, v) = server.get(&key, "/v1/calls/not-a-uuid").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // Two Idempotency-Key headers: which one the client meant is unknowable.
    let (s, v, _) = server
        .send(
            reqwest::Method::POST,
            &key,
            "/v1/calls",
            Some(call_body(&agent).to_string()),
            &[("idempotency-key", "first"), ("idempotency-key", "second")],
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "two idempotency keys: {v}");
    assert_eq!(v["error"]["code"], "invalid_request", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"),
        "{v}"
    );
    let (_, list) = server.get(&key, "/v1/calls").await;
    assert_eq!(list["data"], json!([]), "nothing stored");
}

/// What a test may not change by a refused request: the organization's settings and the
/// number of its keys, users, agents, customers, numbers and calls (rows compared whole where
/// nothing else changes them).
async fn snapshot(server: &Server, key: &str) -> Vec<Value> {
    let mut all = Vec::new();
    for path in [
        "/v1/organization",
        "/v1/api-keys",
        "/v1/users",
        "/v1/agents",
        "/v1/customers",
        "/v1/phone-numbers",
        "/v1/calls",
    ] {
        let (s, v) = server.get(key, path).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        all.push(match path {
            "/v1/organization" => json!([v["name"], v["hubspot_portal_id"]]),
            // Calls change as they progress, keys record their last use.
            "/v1/calls" | "/v1/api-keys" => json!(v["data"].as_array().unwrap().len()),
            _ => v,
        });
    }
    all
}

#[tokio::test]
async fn bodies_that_are_not_json_objects_are_refused_on_every_route_and_store_nothing() {
    let server = Server::start(300, 30_000).await;
    let (_, key) = server.org("Acme");
    let agent = server.agent(&key).await;
    let (s, customer) = server
        .post(&key, "/v1/customers", json!({"phone": "+14155550111"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{customer}");
    let customer = customer["id"].as_str().unwrap();
    let (s, user) = server
        .post(&key, "/v1/users", json!({"email": "ann@example.com"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{user}");
    let user = user["id"].as_str().unwrap();
    let (_, call) = server.post(&key, "/v1/calls", call_body(&agent)).await;
    let call = call["id"].as_str().unwrap();
    let before = snapshot(&server, &key).await;
    // Serde's derived structs take an array as their fields in order, so each positional body
    // here would otherwise be read as the object it spells.
    let cases: Vec<(reqwest::Method, String, Value)> = vec![
        (reqwest::Method::PATCH, "/v1/organization".into(), json!([])),
        (
            reqwest::Method::PATCH,
            "/v1/organization".into(),
            json!(["Renamed"]),
        ),
        (
            reqwest::Method::PATCH,
            "/v1/organization".into(),
            json!("Renamed"),
        ),
        (
            reqwest::Method::PATCH,
            "/v1/organization".into(),
            json!(null),
        ),
        (reqwest::Method::PATCH, "/v1/organization".into(), json!(7)),
        (
            reqwest::Method::POST,
            "/v1/api-keys".into(),
            json!(["sneaky"]),
        ),
        (
            reqwest::Method::POST,
            "/v1/api-keys".into(),
            json!(["sneaky", "owner", "high"]),
        ),
        (
            reqwest::Method::POST,
            "/v1/users".into(),
            json!(["bob@example.com"]),
        ),
        (
            reqwest::Method::PATCH,
            format!("/v1/users/{user}"),
            json!(["admin"]),
        ),
        (
            reqwest::Method::PATCH,
            format!("/v1/users/{user}"),
            json!(["admin", true]),
        ),
        (
            reqwest::Method::POST,
            "/v1/me/password".into(),
            json!(["a", "b"]),
        ),
        (
            reqwest::Method::POST,
            "/v1/agents".into(),
            json!(["Sneaky"]),
        ),
        (
            reqwest::Method::PATCH,
            format!("/v1/agents/{agent}"),
            json!(["Renamed", null, null, null, null]),
        ),
        (
            reqwest::Method::POST,
            "/v1/customers".into(),
            json!(["+14155550112"]),
        ),
        (
            reqwest::Method::PATCH,
            format!("/v1/customers/{customer}"),
            json!(["+14155550113", null, null, null, null]),
        ),
        (
            reqwest::Method::POST,
            "/v1/phone-numbers".into(),
            json!(["+14155550114", agent]),
        ),
        (
            reqwest::Method::POST,
            "/v1/calls".into(),
            json!(["+14155550100", "+14155550199", agent]),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/calls/{call}/transfer"),
            json!(["+14155550115"]),
        ),
    ];
    for (method, path, body) in cases {
        let (s, v, _) = server
            .send(method.clone(), &key, &path, Some(body.to_string()), &[])
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {path} {body}: {v}");
        assert_eq!(
            v["error"]["code"], "invalid_request",
            "{method} {path} {body}: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("must be a JSON object"),
            "{method} {path} {body}: {v}"
        );
    }
    assert_eq!(snapshot(&server, &key).await, before, "nothing stored");
    // Objects still pass, with whitespace before them too.
    let (s, v, _) = server
        .send(
            reqwest::Method::PATCH,
            &key,
            "/v1/organization",
            Some(" \n{\"name\": \"Acme Two\"}".into()),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["name"], "Acme Two");
}

#[tokio::test]
async fn with_learning_off_another_organizations_ids_are_404_before_the_feature_is_503() {
    let server = Server::start_with(300, 30_000, &[("IACE_LEARNING", "false")]).await;
    let (_, key_a) = server.org("Acme");
    let (_, key_b) = server.org("Globex");
    let agent = server.agent(&key_a).await;
    let (s, customer) = server
        .post(&key_a, "/v1/customers", json!({"phone": "+14155550111"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{customer}");
    let customer = customer["id"].as_str().unwrap();
    let routes = [
        (
            reqwest::Method::GET,
            format!("/v1/customers/{customer}/memories"),
        ),
        (
            reqwest::Method::DELETE,
            format!("/v1/customers/{customer}/memories"),
        ),
        (reqwest::Method::GET, format!("/v1/agents/{agent}/patterns")),
        (
            reqwest::Method::GET,
            format!("/v1/patterns/top?agent_id={agent}"),
        ),
    ];
    for (method, path) in &routes {
        // Another organization learns nothing about these ids, learning on or off.
        let (s, v, _) = server.send(method.clone(), &key_b, path, None, &[]).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], "not_found", "{v}");
        // The owner is told the feature is off.
        let (s, v, _) = server.send(method.clone(), &key_a, path, None, &[]).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{method} {path}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("learning is turned off"),
            "{v}"
        );
    }
}

#[tokio::test]
async fn users_and_api_keys_are_paginated_like_calls() {
    let server = Server::start(300, 30_000).await;
    let (_, key) = server.org("Acme");
    let (_, other) = server.org("Globex");
    for i in 0..4 {
        let (s, v) = server
            .post(&key, "/v1/api-keys", json!({"name": format!("k{i}")}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, v) = server
            .post(
                &key,
                "/v1/users",
                json!({"email": format!("u{i}@example.com")}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    // The organization's first key plus four; four users.
    for (path, total, name) in [("/v1/api-keys", 5, "name"), ("/v1/users", 4, "email")] {
        let (s, all) = server.get(&key, path).await;
        assert_eq!(s, StatusCode::OK, "{all}");
        let all: Vec<Value> = all["data"].as_array().unwrap().clone();
        assert_eq!(all.len(), total, "{path}");
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let url = match &cursor {
                None => format!("{path}?limit=2"),
                Some(c) => format!("{path}?limit=2&cursor={c}"),
            };
            let (s, page) = server.get(&key, &url).await;
            assert_eq!(s, StatusCode::OK, "{url}: {page}");
            let rows = page["data"].as_array().unwrap();
            assert!(rows.len() <= 2, "{url}: {page}");
            seen.extend(rows.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
            assert!(seen.len() <= total, "{path}: pages do not end");
        }
        assert_eq!(
            seen.iter().map(|r| r[name].clone()).collect::<Vec<_>>(),
            all.iter().map(|r| r[name].clone()).collect::<Vec<_>>(),
            "{path}: the pages are the list, in order, each row once"
        );
        for bad in [
            "limit=0",
            "limit=101",
            "limit=x",
            "cursor=nope",
            "colour=red",
        ] {
            let (s, v) = server.get(&key, &format!("{path}?{bad}")).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{path}?{bad}: {v}");
            assert_eq!(v["error"]["code"], "invalid_request", "{v}");
        }
        // Another organization's pages hold none of these.
        let (_, theirs) = server.get(&other, &format!("{path}?limit=100")).await;
        let theirs = theirs["data"].as_array().unwrap();
        assert!(
            theirs.iter().all(|r| !all.contains(r)),
            "{path}: {theirs:?}"
        );
    }
    // A key on a later page is still revoked by id.
    let (_, first) = server.get(&key, "/v1/api-keys?limit=1").await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let (_, rest) = server
        .get(&key, &format!("/v1/api-keys?limit=100&cursor={cursor}"))
        .await;
    let last = rest["data"].as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, v, _) = server
        .send(
            reqwest::Method::DELETE,
            &key,
            &format!("/v1/api-keys/{last}"),
            None,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["revoked_at"].is_string(), "{v}");
    let (s, v, _) = server
        .send(
            reqwest::Method::DELETE,
            &other,
            &format!("/v1/api-keys/{last}"),
            None,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let server = Server::start(300, 500).await;
    let health = server
        .http
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
        (
            "content-security-policy",
            "default-src 'none'; frame-ancestors 'none'",
        ),
    ] {
        assert_eq!(health.headers()[name], value, "{name}");
    }
    let ready = server
        .http
        .get(format!("{}/ready", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(
        ready,
        json!({"status": "ready"}),
        "the API port says ready or not, nothing of the internals"
    );
    let ops = &server.inner.metrics_base;
    let detail: Value = server
        .http
        .get(format!("{ops}/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["status"], "ready", "{detail}");
    assert_eq!(detail["checks"]["database"], "ok", "{detail}");
    assert_eq!(detail["checks"]["redis"], "ok", "{detail}");
    assert_eq!(detail["checks"]["http_edge"], "ok", "{detail}");
    let metrics = server
        .http
        .get(format!("{ops}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("iace_calls_created_total"), "{metrics}");
    assert!(metrics.contains("iace_http_connections_open"), "{metrics}");
    // Metrics are not on the API port.
    let on_api = server
        .http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(on_api.status(), StatusCode::NOT_FOUND);
    let body: Value = on_api.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found", "{body}");
}

#[tokio::test]
async fn a_node_at_capacity_answers_503_with_retry_after_and_reports_unready() {
    let server = Server::start_with(
        300,
        60_000,
        &[
            ("IACE_MAX_LIVE_CALLS", "1"),
            ("IACE_UNREADY_AT_CAPACITY", "true"),
        ],
    )
    .await;
    let (_, key) = server.org("Acme");
    let agent = server.agent(&key).await;
    let ready = |base: String| {
        let http = server.http.clone();
        async move { http.get(format!("{base}/ready")).send().await.unwrap() }
    };
    assert_eq!(ready(server.base.clone()).await.status(), StatusCode::OK);
    let (s, first) = server.post(&key, "/v1/calls", call_body(&agent)).await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    let create_second = || {
        server.send(
            reqwest::Method::POST,
            &key,
            "/v1/calls",
            Some(call_body(&agent).to_string()),
            &[("idempotency-key", "second")],
        )
    };
    let (s, refused, headers) = create_second().await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
    assert_eq!(refused["error"]["code"], "at_capacity", "{refused}");
    assert_eq!(headers["retry-after"], "5");
    let (_, listed) = server.get(&key, "/v1/calls").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
    // The load balancer is told: unready while full, with the count on the operations port.
    assert_eq!(
        ready(server.base.clone()).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let detail: Value = ready(server.inner.metrics_base.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        detail["checks"]["capacity"],
        json!({"running": 1, "admitting": 0, "max": 1}),
        "{detail}"
    );
    assert_eq!(
        detail["checks"]["calls"], "at capacity: 1 calls of 1",
        "{detail}"
    );
    // The call ends: the node takes calls again, and the refused key was never stored.
    let id = first["id"].as_str().unwrap();
    let (s, v) = server
        .post(&key, &format!("/v1/calls/{id}/hangup"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready(server.base.clone()).await.status() != StatusCode::OK {
        assert!(Instant::now() < deadline, "the node never took calls again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, second, _) = create_second().await;
    assert_eq!(s, StatusCode::CREATED, "{second}");
    let metrics = common::metrics::scrape(&server.inner.metrics_base).await;
    assert!(
        metrics.contains("iace_calls_refused_total{direction=\"outbound\",reason=\"capacity\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("iace_call_capacity 1"), "{metrics}");
}

#[tokio::test]
async fn a_corrupt_row_is_a_500_that_names_nothing_internal() {
    let server = Server::start(300, 30_000).await;
    let (_, key) = server.org("Acme");
    let agent = server.agent(&key).await;
    let (s, call) = server.post(&key, "/v1/calls", call_body(&agent)).await;
    assert_eq!(s, StatusCode::CREATED, "{call}");
    let id = call["id"].as_str().unwrap().to_owned();
    // A value the server cannot read back (as after a bad manual edit or a bad migration).
    let pool = sqlx::PgPool::connect(&server.inner.database_url)
        .await
        .unwrap();
    sqlx::query("UPDATE call SET stray_legs = '\"not a list\"' WHERE id = $1::uuid")
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
    let (s, v) = server.get(&key, &format!("/v1/calls/{id}")).await;
    // Not 503 (the database is up; retrying will not help) and no internal text.
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    assert_eq!(v["error"]["code"], "internal", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    for internal in ["stray_legs", "invalid type", "column", "corrupt", "sqlx"] {
        assert!(!message.contains(internal), "{message}");
    }
    assert!(v["error"]["request_id"].is_string());
}
