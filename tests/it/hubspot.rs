//! The HubSpot CRM v3 client ([`HubSpotCrm`]) against the wire-level fake
//! (`iace_fakes::hubspot`): contact lookups, refusals, retries, Retry-After and the `hubspot`
//! breaker; and against a tiny hand-made server for answers the fake never gives (unreadable
//! or mismatched ones). Real sockets, real time; no database needed.

use crate::common;

use common::vendor::{breaker_reaches, breakers_for, canned_server, fast_retry, settle};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iace::clients::hubspot::crm::{CrmConfig, CrmContact, CrmError, CrmMetrics, HubSpotCrm};
use iace_actors::breaker::{BreakerConfig, BreakerState, Breakers};
use iace_fakes::hubspot::{FakeHubSpot, FakeHubSpotConfig, InjectedFault, RecordedFilter};
use serde_json::json;

fn config(fake: &FakeHubSpot, breakers: &Breakers) -> CrmConfig {
    CrmConfig {
        api_base: fake.base_url(),
        retry: fast_retry(),
        breaker: breakers.get("hubspot").cloned(),
        ..CrmConfig::new(fake.access_token())
    }
}

/// A fake with two contacts, the `hubspot` breaker configured as given, and a client with
/// metrics on `registry`.
async fn setup(
    breaker: BreakerConfig,
    registry: &prometheus::Registry,
) -> (FakeHubSpot, HubSpotCrm, Breakers) {
    let fake = FakeHubSpot::start(FakeHubSpotConfig::default())
        .await
        .unwrap();
    fake.put_contact(
        "101",
        json!({"email": "ann.lee@example.com", "phone": "+15550001111", "firstname": "Ann", "lastname": "Lee", "company": "Acme"}),
    );
    fake.put_contact(
        "102",
        json!({"email": "", "phone": "+15550002222", "firstname": "Bob", "lastname": null}),
    );
    let breakers = breakers_for("hubspot", breaker).await;
    let crm = HubSpotCrm::new(config(&fake, &breakers))
        .unwrap()
        .with_metrics(CrmMetrics::new(registry).unwrap());
    (fake, crm, breakers)
}

fn ann() -> CrmContact {
    CrmContact {
        id: "101".into(),
        email: Some("ann.lee@example.com".into()),
        phone: Some("+15550001111".into()),
        firstname: Some("Ann".into()),
        lastname: Some("Lee".into()),
    }
}

/// A counter's value by `outcome` label.
fn outcome(registry: &prometheus::Registry, label: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "iace_hubspot_crm_requests_total")
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "outcome" && l.value() == label)
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// Lets the breaker actor take in the outcomes it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_is_found_by_id_with_the_documented_request() {
    let registry = prometheus::Registry::new();
    let (fake, crm, breakers) = setup(BreakerConfig::default(), &registry).await;

    assert_eq!(crm.contact("101").await, Ok(Some(ann())));
    // Empty and unset properties read as None.
    assert_eq!(
        crm.contact("102").await,
        Ok(Some(CrmContact {
            id: "102".into(),
            email: None,
            phone: Some("+15550002222".into()),
            firstname: Some("Bob".into()),
            lastname: None,
        }))
    );
    // Nobody with that id: None, not an error.
    assert_eq!(crm.contact("999").await, Ok(None));

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 3);
    let r = &reqs[0];
    assert_eq!(r.status, 200);
    assert_eq!(r.bearer(), Some(fake.access_token()));
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        r.body,
        json!({
            "filterGroups": [{"filters": [
                {"propertyName": "hs_object_id", "operator": "EQ", "value": "101"}
            ]}],
            "properties": ["email", "phone", "firstname", "lastname"],
            "limit": 1
        })
    );
    assert_eq!(
        reqs[2].filters,
        [RecordedFilter {
            group: 0,
            property: Some("hs_object_id".into()),
            operator: Some("EQ".into()),
            value: Some("999".into()),
        }]
    );
    assert_eq!(outcome(&registry, "ok"), 3);

    // An archived contact is no longer found.
    assert!(fake.remove_contact("101"));
    assert_eq!(crm.contact("101").await, Ok(None));
    breakers.stop();
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_id_sends_no_request() {
    let registry = prometheus::Registry::new();
    let (fake, crm, breakers) = setup(BreakerConfig::default(), &registry).await;
    for bad in [
        "",
        "abc",
        "10 1",
        "-5",
        "+15550001111",
        "ann@example.com",
        "1.5",
    ] {
        assert_eq!(
            crm.contact(bad).await,
            Err(CrmError::InvalidId(bad.to_owned())),
            "{bad:?}"
        );
    }
    assert!(fake.requests().is_empty());
    breakers.stop();
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_is_unauthorized_after_one_request_and_no_refusal_trips_the_breaker() {
    let registry = prometheus::Registry::new();
    // One breaker failure would open it: no refusal may count as one.
    let (fake, crm, breakers) = setup(
        BreakerConfig {
            consecutive_failures: 1,
            open_wait: Duration::from_secs(60),
            ..BreakerConfig::default()
        },
        &registry,
    )
    .await;

    let wrong = HubSpotCrm::new(CrmConfig {
        access_token: "pat-na1-wrong".into(),
        ..config(&fake, &breakers)
    })
    .unwrap();
    let err = wrong.contact("101").await.unwrap_err();
    assert!(
        matches!(&err, CrmError::Unauthorized(m)
            if m.contains("HTTP 401 INVALID_AUTHENTICATION: Authentication credentials not found")
                && m.contains("correlationId")),
        "{err:?}"
    );
    assert_eq!(fake.requests().len(), 1);
    assert_eq!(fake.requests()[0].bearer(), Some("pat-na1-wrong"));

    // A token without the contacts scope: also Unauthorized, also final.
    fake.fail_next(1, 403);
    let err = crm.contact("101").await.unwrap_err();
    assert!(
        matches!(&err, CrmError::Unauthorized(m) if m.contains("HTTP 403 MISSING_SCOPES")),
        "{err:?}"
    );
    // Other 4xx: Rejected, final.
    for status in [400, 404] {
        fake.fail_next(1, status);
        let err = crm.contact("101").await.unwrap_err();
        assert!(
            matches!(&err, CrmError::Rejected(m) if m.contains(&format!("HTTP {status}"))),
            "{err:?}"
        );
    }
    assert_eq!(fake.requests().len(), 4);
    assert_eq!(outcome(&registry, "unauthorized"), 1);
    assert_eq!(outcome(&registry, "rejected"), 2);

    settle().await;
    assert_eq!(
        breakers.get("hubspot").unwrap().state(),
        BreakerState::Closed
    );
    assert_eq!(crm.contact("101").await, Ok(Some(ann())));
    breakers.stop();
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_an_answer_or_the_attempts_run_out() {
    let registry = prometheus::Registry::new();
    let (fake, crm, breakers) = setup(BreakerConfig::default(), &registry).await;

    fake.fail_next(2, 503);
    assert_eq!(crm.contact("101").await, Ok(Some(ann())));
    // The gateway's HTML pages too.
    fake.fail_next(2, 502);
    assert_eq!(crm.contact("101").await, Ok(Some(ann())));
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 200, 502, 502, 200]);
    // Every retry asked the same question.
    let first = fake.requests()[0].body.clone();
    assert!(fake.requests().iter().all(|r| r.body == first));
    assert_eq!(outcome(&registry, "retryable"), 4);

    // Three 500s in a row: the policy's three attempts are spent.
    fake.fail_next(3, 500);
    let err = crm.contact("101").await.unwrap_err();
    assert!(
        matches!(&err, CrmError::Unavailable(m)
            if m.contains("HTTP 500 INTERNAL_ERROR: internal error") && m.contains("after 3 attempts")),
        "{err:?}"
    );
    assert_eq!(fake.requests().len(), 9);
    // An HTML answer's text stands in for the missing message. (Without the breaker, which
    // two more failures in a row would open.)
    let unguarded = HubSpotCrm::new(CrmConfig {
        breaker: None,
        ..config(&fake, &breakers)
    })
    .unwrap();
    fake.fail_next(3, 504);
    let err = unguarded.contact("101").await.unwrap_err();
    assert!(
        matches!(&err, CrmError::Unavailable(m) if m.contains("HTTP 504: <html>")),
        "{err:?}"
    );
    breakers.stop();
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_waits_out_its_retry_after_and_one_too_long_opens_the_breaker() {
    let registry = prometheus::Registry::new();
    let (fake, crm, breakers) = setup(BreakerConfig::default(), &registry).await;

    fake.rate_limit_next(1, Duration::from_secs(1));
    let started = Instant::now();
    assert_eq!(crm.contact("101").await, Ok(Some(ann())));
    assert!(started.elapsed() >= Duration::from_secs(1));
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].fault, Some(InjectedFault::Status(429)));
    let gap = reqs[1].received_at - reqs[0].finished_at.unwrap();
    assert!(gap >= Duration::from_millis(950), "{gap:?}");
    assert_eq!(outcome(&registry, "rate_limited"), 1);

    // A 429 without Retry-After is retried after the policy's backoff (shown without a
    // breaker: with one, it opens the breaker for its open wait, as every vendor's 429 does).
    let unguarded = HubSpotCrm::new(CrmConfig {
        breaker: None,
        ..config(&fake, &breakers)
    })
    .unwrap();
    fake.fail_next(1, 429);
    assert_eq!(unguarded.contact("101").await, Ok(Some(ann())));
    assert_eq!(fake.requests().len(), 4);

    // Longer than the policy waits: give up at once, and the breaker stays open for the
    // wait, so the next lookup fails fast without asking HubSpot.
    fake.rate_limit_next(1, Duration::from_secs(30));
    // Answering well within the 30 s means it did not wait them out, however busy the machine.
    let err = tokio::time::timeout(Duration::from_secs(20), crm.contact("101"))
        .await
        .expect("gives up at once")
        .unwrap_err();
    assert!(
        matches!(&err, CrmError::Unavailable(m)
            if m.contains("429 RATE_LIMITS") && m.contains("retry after 30 s")),
        "{err:?}"
    );
    assert_eq!(fake.requests().len(), 5);
    breaker_reaches(&breakers, "hubspot", BreakerState::Open).await;
    let err = crm.contact("101").await.unwrap_err();
    assert!(
        matches!(&err, CrmError::Unavailable(m) if m.contains("circuit breaker is open")),
        "{err:?}"
    );
    assert_eq!(fake.requests().len(), 5);
    breakers.stop();
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_after_consecutive_failures_and_then_fails_fast() {
    let registry = prometheus::Registry::new();
    let (fake, crm, breakers) = setup(
        BreakerConfig {
            consecutive_failures: 3,
            open_wait: Duration::from_secs(60),
            half_open_probes: 1,
            ..BreakerConfig::default()
        },
        &registry,
    )
    .await;
    fake.fail_next(3, 503);
    let err = crm.contact("101").await.unwrap_err();
    assert!(
        matches!(&err, CrmError::Unavailable(m) if m.contains("HTTP 503 SERVICE_UNAVAILABLE")),
        "{err:?}"
    );
    breaker_reaches(&breakers, "hubspot", BreakerState::Open).await;

    let before = fake.requests().len();
    assert_eq!(before, 3);
    for id in ["101", "102", "999"] {
        let err = crm.contact(id).await.unwrap_err();
        assert!(
            matches!(&err, CrmError::Unavailable(m) if m.contains("circuit breaker is open")),
            "{err:?}"
        );
    }
    assert_eq!(fake.requests().len(), before);
    assert_eq!(outcome(&registry, "breaker_open"), 3);
    // The id is still checked first.
    assert!(matches!(
        crm.contact("x").await,
        Err(CrmError::InvalidId(_))
    ));
    breakers.stop();
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_attempt_times_out_after_the_configured_timeout_and_the_retry_answers() {
    let (fake, _, breakers) = setup(BreakerConfig::default(), &prometheus::Registry::new()).await;
    let registry = prometheus::Registry::new();
    let crm = HubSpotCrm::new(CrmConfig {
        // Bounds each attempt, whatever the policy's own attempt timeout says.
        timeout: Duration::from_millis(400),
        ..config(&fake, &breakers)
    })
    .unwrap()
    .with_metrics(CrmMetrics::new(&registry).unwrap());
    fake.stall_next();
    let started = Instant::now();
    // The stalled request is never answered: returning at all means the client cut it.
    let found = tokio::time::timeout(Duration::from_secs(30), crm.contact("101"))
        .await
        .expect("the stalled attempt is cut");
    assert_eq!(found, Ok(Some(ann())));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(
        fake.wait_for(Duration::from_secs(10), |f| f.requests()[0].cancelled)
            .await
    );
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].fault, Some(InjectedFault::Stall));
    assert_eq!(reqs[1].status, 200);
    assert_eq!(outcome(&registry, "timeout"), 1);
    breakers.stop();
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_answer_is_a_protocol_error_and_not_retried() {
    let body = Arc::new(Mutex::new(String::new()));
    let hits = Arc::new(AtomicUsize::new(0));
    let base = canned_server(body.clone(), hits.clone()).await;
    let crm = HubSpotCrm::new(CrmConfig {
        api_base: base,
        retry: fast_retry(),
        ..CrmConfig::new("pat-any")
    })
    .unwrap();
    let cases = [
        ("<html>", "unreadable contacts search answer"),
        ("[]", "unreadable contacts search answer"),
        (
            r#"{"results":[{"id":101}]}"#,
            "unreadable contacts search answer",
        ),
        (
            r#"{"total":1,"results":[{"id":"202","properties":{}}]}"#,
            "asked for contact 101, the search answered contact \"202\"",
        ),
    ];
    for (i, (answer, expected)) in cases.iter().enumerate() {
        *body.lock().unwrap() = (*answer).to_owned();
        let err = crm.contact("101").await.unwrap_err();
        assert!(
            matches!(&err, CrmError::Protocol(m) if m.contains(expected)),
            "{answer}: {err:?}"
        );
        // Not retried: the same question would get the same wrong answer.
        assert_eq!(hits.load(Ordering::SeqCst), i + 1);
    }
    *body.lock().unwrap() =
        r#"{"total":1,"results":[{"id":"101","properties":{"email":"x@y.z","phone":null}}]}"#
            .to_owned();
    assert_eq!(
        crm.contact("101").await,
        Ok(Some(CrmContact {
            id: "101".into(),
            email: Some("x@y.z".into()),
            phone: None,
            firstname: None,
            lastname: None,
        }))
    );
}
