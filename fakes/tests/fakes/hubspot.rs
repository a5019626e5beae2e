//! Wire-level tests of the HubSpot CRM v3 fake (`iace_fakes::hubspot`) on real sockets and real
//! time, with reqwest as the client. Each test starts its own fake, so they run in parallel;
//! timing assertions use generous bounds because the box is small and shared.

use std::time::{Duration, Instant};

use iace_fakes::hubspot::{
    FakeHubSpot, FakeHubSpotConfig, InjectedFault, RecordedFilter, BURST_INTERVAL,
};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Helpers

async fn start_with(config: FakeHubSpotConfig) -> FakeHubSpot {
    FakeHubSpot::start(config).await.expect("fake starts")
}

async fn start() -> FakeHubSpot {
    start_with(FakeHubSpotConfig::default()).await
}

fn search_url(fake: &FakeHubSpot) -> String {
    format!("{}/crm/v3/objects/contacts/search", fake.base_url())
}

/// POSTs `body` to the search with `authorization` as the header (`None`: no header).
async fn post_as(
    fake: &FakeHubSpot,
    authorization: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut req = reqwest::Client::new().post(search_url(fake)).json(body);
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    req.send().await.expect("request sent")
}

/// POSTs `body` to the search with the right token.
async fn search(fake: &FakeHubSpot, body: &Value) -> reqwest::Response {
    post_as(fake, Some(&format!("Bearer {}", fake.access_token())), body).await
}

/// Searches and returns the 200 body.
async fn found(fake: &FakeHubSpot, body: &Value) -> Value {
    let resp = search(fake, body).await;
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("JSON answer")
}

/// One filter.
fn filter(property: &str, operator: &str, value: &str) -> Value {
    json!({"propertyName": property, "operator": operator, "value": value})
}

/// The body the IACE client sends: one `EQ` filter, the four properties, limit 1.
fn by(property: &str, value: &str) -> Value {
    json!({
        "filterGroups": [{"filters": [filter(property, "EQ", value)]}],
        "properties": ["email", "phone", "firstname", "lastname"],
        "limit": 1
    })
}

fn ids(answer: &Value) -> Vec<String> {
    answer["results"]
        .as_array()
        .expect("results array")
        .iter()
        .map(|r| r["id"].as_str().expect("string id").to_owned())
        .collect()
}

fn seed(fake: &FakeHubSpot) {
    fake.put_contact(
        "101",
        json!({"email": "ann.lee@example.com", "phone": "+15550001111", "firstname": "Ann", "lastname": "Lee", "company": "Acme"}),
    );
    fake.put_contact(
        "102",
        json!({"email": "bob@example.com", "phone": "+15550002222", "firstname": "Bob"}),
    );
    fake.put_contact(
        "205",
        json!({"email": "cy@example.org", "firstname": "Cy", "lastname": "Young", "company": "Acme"}),
    );
}

/// Checks the envelope (JSON, `status: error`, the `category`, a message, a UUID correlation
/// id equal to the header) and returns the body.
async fn error_of(resp: reqwest::Response, http: u16, category: &str) -> Value {
    assert_eq!(resp.status().as_u16(), http);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/json"), "{ct}");
    let header_id = resp.headers()["x-hubspot-correlation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = resp.json().await.expect("JSON error body");
    assert_eq!(body["status"], "error", "{body}");
    assert_eq!(body["category"], category, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    let id = body["correlationId"].as_str().expect("correlationId");
    assert_eq!(id, header_id);
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    body
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

// ---------------------------------------------------------------------------------------------
// Answers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_by_id_answers_the_documented_shape() {
    let fake = start().await;
    seed(&fake);

    let resp = search(&fake, &by("hs_object_id", "102")).await;
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "content-type")
        .unwrap()
        .starts_with("application/json"));
    assert!(header(&resp, "x-hubspot-correlation-id").is_some());
    assert_eq!(
        header(&resp, "x-hubspot-ratelimit-max").as_deref(),
        Some("190")
    );
    assert_eq!(
        header(&resp, "x-hubspot-ratelimit-remaining").as_deref(),
        Some("189")
    );
    assert_eq!(
        header(&resp, "x-hubspot-ratelimit-interval-milliseconds").as_deref(),
        Some("10000")
    );
    assert!(header(&resp, "x-hubspot-ratelimit-daily-remaining").is_some());
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(answer["total"], 1);
    assert!(answer.get("paging").is_none());
    let contact = &answer["results"][0];
    assert_eq!(contact["id"], "102");
    assert_eq!(contact["archived"], false);
    let created = contact["createdAt"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok(),
        "{created}"
    );
    assert!(created.ends_with('Z') && created.len() == 24, "{created}");
    assert!(contact["updatedAt"].is_string());
    // The asked properties, every one present (`null` without a value), plus hs_object_id and
    // the two timestamps; nothing else (no `company`).
    assert_eq!(
        contact["properties"],
        json!({
            "createdate": created,
            "email": "bob@example.com",
            "firstname": "Bob",
            "hs_object_id": "102",
            "lastmodifieddate": contact["updatedAt"],
            "lastname": null,
            "phone": "+15550002222",
        })
    );

    // What was received.
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.bearer(), Some(fake.access_token()));
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        r.filters,
        [RecordedFilter {
            group: 0,
            property: Some("hs_object_id".into()),
            operator: Some("EQ".into()),
            value: Some("102".into()),
        }]
    );
    assert_eq!(
        r.properties().unwrap(),
        ["email", "phone", "firstname", "lastname"]
    );
    assert_eq!(r.limit(), Some(1));
    assert_eq!(
        (r.status, r.category.as_deref(), r.fault),
        (200, None, None)
    );
    assert!(r.correlation_id.is_some());
    assert!(r.finished_at.unwrap() >= r.received_at);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_and_email_filters_and_a_miss() {
    let fake = start().await;
    seed(&fake);
    let answer = found(&fake, &by("phone", "+15550001111")).await;
    assert_eq!(ids(&answer), ["101"]);
    assert_eq!(answer["results"][0]["properties"]["lastname"], "Lee");
    // Email equality ignores ASCII case.
    let answer = found(&fake, &by("email", "ANN.LEE@example.com")).await;
    assert_eq!(ids(&answer), ["101"]);
    // Phone numbers are compared as stored: no normalisation.
    let answer = found(&fake, &by("phone", "5550001111")).await;
    assert_eq!(answer, json!({"total": 0, "results": []}));
    // An id nobody has: an empty result, not a 404.
    let answer = found(&fake, &by("hs_object_id", "999")).await;
    assert_eq!(answer, json!({"total": 0, "results": []}));
    // A numeric value is read as its text.
    let body = json!({"filterGroups": [{"filters": [{"propertyName": "hs_object_id", "operator": "EQ", "value": 205}]}]});
    assert_eq!(ids(&found(&fake, &body).await), ["205"]);
    // `operator` defaults to EQ.
    let body =
        json!({"filterGroups": [{"filters": [{"propertyName": "firstname", "value": "cy"}]}]});
    assert_eq!(ids(&found(&fake, &body).await), ["205"]);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_operators_default_properties_limit_paging_sorts_and_query() {
    let fake = start().await;
    seed(&fake);

    // No body fields: every contact, default properties, in id order.
    let answer = found(&fake, &json!({})).await;
    assert_eq!(ids(&answer), ["101", "102", "205"]);
    let keys: Vec<&String> = answer["results"][0]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        keys,
        [
            "createdate",
            "email",
            "firstname",
            "hs_object_id",
            "lastmodifieddate",
            "lastname"
        ]
    );

    // Groups are ORed, filters ANDed.
    let body = json!({"filterGroups": [
        {"filters": [filter("company", "EQ", "acme"), filter("lastname", "EQ", "young")]},
        {"filters": [filter("email", "EQ", "bob@example.com")]},
    ]});
    assert_eq!(ids(&found(&fake, &body).await), ["102", "205"]);
    let body = json!({"filterGroups": [{"filters": [
        {"propertyName": "phone", "operator": "NOT_HAS_PROPERTY"},
    ]}]});
    assert_eq!(ids(&found(&fake, &body).await), ["205"]);
    let body = json!({"filterGroups": [{"filters": [
        {"propertyName": "hs_object_id", "operator": "BETWEEN", "value": "102", "highValue": "300"},
        {"propertyName": "firstname", "operator": "NOT_IN", "values": ["bob"]},
    ]}]});
    assert_eq!(ids(&found(&fake, &body).await), ["205"]);
    let body = json!({"filterGroups": [{"filters": [filter("email", "NEQ", "bob@example.com")]}]});
    assert_eq!(ids(&found(&fake, &body).await), ["101", "205"]);

    // Pages.
    let page = found(&fake, &json!({"limit": 2})).await;
    assert_eq!(ids(&page), ["101", "102"]);
    assert_eq!(page["total"], 3);
    assert_eq!(page["paging"]["next"]["after"], "2");
    let page = found(&fake, &json!({"limit": 2, "after": "2"})).await;
    assert_eq!(ids(&page), ["205"]);
    assert!(page.get("paging").is_none());

    // One sort; contacts without the property come last.
    let body = json!({"sorts": [{"propertyName": "lastname", "direction": "DESCENDING"}]});
    assert_eq!(ids(&found(&fake, &body).await), ["205", "101", "102"]);
    let body = json!({"sorts": ["firstname"]});
    assert_eq!(ids(&found(&fake, &body).await), ["101", "102", "205"]);

    // Free-text query over the searchable properties.
    assert_eq!(
        ids(&found(&fake, &json!({"query": "acme"})).await),
        ["101", "205"]
    );
    assert_eq!(
        ids(&found(&fake, &json!({"query": "acme lee"})).await),
        ["101"]
    );

    // Unknown names in `properties` are dropped, not refused.
    let answer = found(
        &fake,
        &json!({"properties": ["nope", "company"], "limit": 1}),
    )
    .await;
    let keys: Vec<&String> = answer["results"][0]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        keys,
        ["company", "createdate", "hs_object_id", "lastmodifieddate"]
    );
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_can_be_updated_cleared_and_archived() {
    let fake = start().await;
    fake.put_contact(
        "7",
        json!({"email": "a@b.com", "phone": "+15550001111", "custom_score": 12}),
    );
    let before = fake.contact("7").unwrap();
    assert_eq!(before["properties"]["custom_score"], "12");
    tokio::time::sleep(Duration::from_millis(5)).await;
    fake.put_contact(
        "7",
        json!({"phone": null, "firstname": "Ann", "hs_object_id": "8"}),
    );
    let after = fake.contact("7").unwrap();
    assert_eq!(after["id"], "7");
    assert_eq!(after["properties"]["hs_object_id"], "7");
    assert_eq!(after["properties"]["email"], "a@b.com");
    assert_eq!(after["properties"]["phone"], Value::Null);
    assert_eq!(after["properties"]["firstname"], "Ann");
    assert_eq!(after["createdAt"], before["createdAt"]);
    assert_ne!(after["updatedAt"], before["updatedAt"]);
    // A seeded property can be filtered on.
    let body = json!({"filterGroups": [{"filters": [filter("custom_score", "GT", "10")]}]});
    assert_eq!(ids(&found(&fake, &body).await), ["7"]);
    let answer = found(&fake, &by("phone", "+15550001111")).await;
    assert_eq!(answer["total"], 0);

    assert!(fake.remove_contact("7"));
    assert!(!fake.remove_contact("7"));
    assert!(fake.contact("7").is_none());
    assert_eq!(found(&fake, &by("hs_object_id", "7")).await["total"], 0);
    fake.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Refusals

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_token_is_401_and_takes_no_fault() {
    let fake = start().await;
    seed(&fake);
    fake.fail_next(1, 503);
    let wrong = format!("Bearer {}x", fake.access_token());
    let basic = format!("Basic {}", fake.access_token());
    for auth in [
        None,
        Some(wrong.as_str()),
        Some(basic.as_str()),
        Some("Bearer"),
    ] {
        let resp = post_as(&fake, auth, &by("hs_object_id", "101")).await;
        assert!(header(&resp, "x-hubspot-ratelimit-max").is_none());
        let body = error_of(resp, 401, "INVALID_AUTHENTICATION").await;
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .starts_with("Authentication credentials not found."),
            "{body}"
        );
    }
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 4);
    assert!(reqs.iter().all(|r| r.status == 401
        && r.category.as_deref() == Some("INVALID_AUTHENTICATION")
        && r.fault.is_none()));
    assert_eq!(reqs[0].authorization, None);
    assert_eq!(reqs[2].bearer(), None);
    // The armed fault is still there for the first authenticated request; the scheme is
    // case-insensitive.
    let lower = format!("bearer {}", fake.access_token());
    let resp = post_as(&fake, Some(&lower), &by("hs_object_id", "101")).await;
    assert_eq!(resp.status(), 503);
    let resp = post_as(&fake, Some(&lower), &by("hs_object_id", "101")).await;
    assert_eq!(resp.status(), 200);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_bodies_are_400_validation_errors_naming_the_field() {
    let fake = start().await;
    seed(&fake);
    let too_many_groups: Vec<Value> = (0..6)
        .map(|_| json!({"filters": [filter("email", "EQ", "x")]}))
        .collect();
    let seven: Vec<Value> = (0..7).map(|_| filter("email", "EQ", "x")).collect();
    let cases = [
        (json!([by("email", "x")]), "expected an object"),
        (
            json!({"filterGroups": [{"filters": [filter("email", "EQ", "x")]}], "limit": 1, "offset": 0}),
            "Unrecognized field \"offset\"",
        ),
        (
            json!({"filter_groups": []}),
            "Unrecognized field \"filter_groups\"",
        ),
        (
            json!({"filterGroups": [{"filters": [{"property_name": "email", "operator": "EQ", "value": "x"}]}]}),
            "Unrecognized field \"property_name\" in filterGroups[0].filters[0]",
        ),
        (
            json!({"filterGroups": [{"filters": [filter("nope", "EQ", "x")]}]}),
            "property \"nope\" does not exist",
        ),
        (
            json!({"filterGroups": [{"filters": [filter("email", "LIKE", "x")]}]}),
            "filterGroups[0].filters[0].operator",
        ),
        (
            json!({"filterGroups": [{"filters": [filter("email", "CONTAINS_TOKEN", "x")]}]}),
            "does not implement CONTAINS_TOKEN",
        ),
        (
            json!({"filterGroups": [{"filters": [{"propertyName": "email", "operator": "EQ"}]}]}),
            "filterGroups[0].filters[0].value is required",
        ),
        (
            json!({"filterGroups": [{"filters": [{"propertyName": "email", "operator": "EQ", "value": {"x": 1}}]}]}),
            "value must be a string",
        ),
        (
            json!({"filterGroups": [{"filters": [{"propertyName": "email", "operator": "IN", "value": "x"}]}]}),
            "values must be a non-empty array",
        ),
        (
            json!({"filterGroups": [{"filters": []}]}),
            "at least one filter",
        ),
        (
            json!({"filterGroups": too_many_groups}),
            "Too many filter groups: 6",
        ),
        (
            json!({"filterGroups": [{"filters": seven}]}),
            "Too many filters in filterGroups[0]: 7",
        ),
        (json!({"sorts": ["email", "phone"]}), "At most one sort"),
        (
            json!({"sorts": [{"propertyName": "email", "direction": "UP"}]}),
            "direction must be ASCENDING or DESCENDING",
        ),
        (
            json!({"properties": ["email", 1]}),
            "properties[1] must be a string",
        ),
        (
            json!({"limit": 0}),
            "limit must be an integer from 1 to 200",
        ),
        (
            json!({"limit": 201}),
            "limit must be an integer from 1 to 200",
        ),
        (json!({"after": "next"}), "after must be a paging cursor"),
    ];
    for (body, expected) in &cases {
        let resp = search(&fake, body).await;
        let err = error_of(resp, 400, "VALIDATION_ERROR").await;
        let message = err["message"].as_str().unwrap();
        assert!(message.contains(expected), "{body}: {message}");
    }
    // 18 filters in all across groups is the most; 19 is refused even at 6 per group.
    let groups = |sizes: &[usize]| -> Value {
        let groups: Vec<Value> = sizes
            .iter()
            .map(|n| json!({"filters": (0..*n).map(|_| filter("email", "NEQ", "x")).collect::<Vec<_>>()}))
            .collect();
        json!({ "filterGroups": groups })
    };
    assert_eq!(found(&fake, &groups(&[6, 6, 6])).await["total"], 3);
    let resp = search(&fake, &groups(&[6, 6, 6, 1])).await;
    let err = error_of(resp, 400, "VALIDATION_ERROR").await;
    assert!(err["message"]
        .as_str()
        .unwrap()
        .contains("Too many filters: 19"));

    // Not JSON at all.
    let resp = reqwest::Client::new()
        .post(search_url(&fake))
        .bearer_auth(fake.access_token())
        .header("content-type", "application/json")
        .body("{\"filterGroups\":")
        .send()
        .await
        .unwrap();
    let err = error_of(resp, 400, "VALIDATION_ERROR").await;
    assert!(err["message"].as_str().unwrap().contains("not JSON"));
    let last = fake.requests().pop().unwrap();
    assert_eq!(last.body, Value::Null);
    assert_eq!(last.category.as_deref(), Some("VALIDATION_ERROR"));
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_urls_are_404_and_not_recorded() {
    let fake = start().await;
    let client = reqwest::Client::new();
    let resp = client
        .get(format!("{}/crm/v3/objects/contacts/101", fake.base_url()))
        .bearer_auth(fake.access_token())
        .send()
        .await
        .unwrap();
    error_of(resp, 404, "OBJECT_NOT_FOUND").await;
    // The search only takes POST.
    let resp = client.get(search_url(&fake)).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert!(fake.requests().is_empty());
    fake.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Faults and limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_errors_carry_hubspot_bodies_and_429_a_retry_after() {
    let fake = start().await;
    seed(&fake);
    let body = by("hs_object_id", "101");
    for (status, category) in [
        (400, "VALIDATION_ERROR"),
        (401, "INVALID_AUTHENTICATION"),
        (403, "MISSING_SCOPES"),
        (404, "OBJECT_NOT_FOUND"),
        (409, "CONFLICT"),
        (500, "INTERNAL_ERROR"),
        (503, "SERVICE_UNAVAILABLE"),
    ] {
        fake.fail_next(1, status);
        let err = error_of(search(&fake, &body).await, status, category).await;
        if status == 403 {
            assert_eq!(
                err["context"]["requiredGranularScopes"],
                json!(["crm.objects.contacts.read"])
            );
        }
    }
    // The gateway errors come as the edge's HTML page.
    for status in [502, 504] {
        fake.fail_next(1, status);
        let resp = search(&fake, &body).await;
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(header(&resp, "content-type").as_deref(), Some("text/html"));
        let text = resp.text().await.unwrap();
        assert!(text.contains(&format!("<h1>{status} ")), "{text}");
    }
    // A plain injected 429: no Retry-After.
    fake.fail_next(1, 429);
    let resp = search(&fake, &body).await;
    assert!(header(&resp, "retry-after").is_none());
    let err = error_of(resp, 429, "RATE_LIMITS").await;
    assert_eq!(err["errorType"], "RATE_LIMIT");
    assert_eq!(err["policyName"], "TEN_SECONDLY_ROLLING");
    // rate_limit_next: Retry-After in whole seconds, rounded up.
    fake.rate_limit_next(2, Duration::from_millis(1500));
    for _ in 0..2 {
        let resp = search(&fake, &body).await;
        assert_eq!(header(&resp, "retry-after").as_deref(), Some("2"));
        error_of(resp, 429, "RATE_LIMITS").await;
    }
    // Faults are spent: the next one answers.
    assert_eq!(ids(&found(&fake, &body).await), ["101"]);

    let reqs = fake.requests();
    let faults: Vec<Option<InjectedFault>> = reqs.iter().map(|r| r.fault).collect();
    let statuses: Vec<u16> = reqs.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [400, 401, 403, 404, 409, 500, 503, 502, 504, 429, 429, 429, 200]
    );
    assert!(faults[..12]
        .iter()
        .zip(&statuses)
        .all(|(f, s)| *f == Some(InjectedFault::Status(*s))));
    assert_eq!(faults[12], None);
    // An HTML answer has no category.
    assert_eq!(reqs[7].category, None);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_burst_and_daily_limits_are_enforced() {
    let fake = start_with(FakeHubSpotConfig {
        burst_limit: 3,
        burst_retry_after: true,
        ..FakeHubSpotConfig::default()
    })
    .await;
    seed(&fake);
    let body = by("hs_object_id", "101");
    for left in ["2", "1", "0"] {
        let resp = search(&fake, &body).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            header(&resp, "x-hubspot-ratelimit-max").as_deref(),
            Some("3")
        );
        assert_eq!(
            header(&resp, "x-hubspot-ratelimit-remaining").as_deref(),
            Some(left)
        );
    }
    let resp = search(&fake, &body).await;
    let wait: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert!((1..=BURST_INTERVAL.as_secs()).contains(&wait), "{wait}");
    let err = error_of(resp, 429, "RATE_LIMITS").await;
    assert_eq!(err["policyName"], "TEN_SECONDLY_ROLLING");
    assert_eq!(
        err["message"],
        "You have reached your ten_secondly_rolling limit."
    );
    // Not an injected fault.
    assert_eq!(fake.requests()[3].fault, None);
    fake.shutdown().await;

    let fake = start_with(FakeHubSpotConfig {
        daily_limit: 2,
        ..FakeHubSpotConfig::default()
    })
    .await;
    for left in ["1", "0"] {
        let resp = search(&fake, &body).await;
        assert_eq!(
            header(&resp, "x-hubspot-ratelimit-daily-remaining").as_deref(),
            Some(left)
        );
        assert_eq!(resp.status(), 200);
    }
    let resp = search(&fake, &body).await;
    assert!(header(&resp, "retry-after").is_none());
    let err = error_of(resp, 429, "RATE_LIMITS").await;
    assert_eq!(err["policyName"], "DAILY");
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_delays_every_answer() {
    let fake = start_with(FakeHubSpotConfig {
        latency: Duration::from_millis(500),
        ..FakeHubSpotConfig::default()
    })
    .await;
    let started = Instant::now();
    found(&fake, &json!({})).await;
    assert!(started.elapsed() >= Duration::from_millis(500));
    // Cleared after a long one: an answer well before that latency shows it is gone, on a
    // machine however busy.
    fake.set_latency(Duration::from_secs(120));
    fake.set_latency(Duration::ZERO);
    let started = Instant::now();
    found(&fake, &json!({})).await;
    assert!(started.elapsed() < Duration::from_secs(60));
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_is_never_answered_and_recorded_as_cancelled() {
    let fake = start().await;
    seed(&fake);
    fake.stall_next();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = client
        .post(search_url(&fake))
        .bearer_auth(fake.access_token())
        .json(&by("hs_object_id", "101"))
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
    assert_eq!(
        ids(&found(&fake, &by("hs_object_id", "101")).await),
        ["101"]
    );

    // Shutdown ends a stalled request at once.
    fake.stall_next();
    let url = search_url(&fake);
    let token = fake.access_token().to_owned();
    let pending = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .await
    });
    assert!(
        fake.wait_for(Duration::from_secs(10), |f| f.requests().len() == 3)
            .await
    );
    let started = Instant::now();
    fake.shutdown().await;
    // The stall is endless: any bound shows shutdown did not wait for it.
    assert!(started.elapsed() < Duration::from_secs(30));
    let _ = pending.await;
}
