//! Tests of the HubSpot CRM client: ids, the search body, reading answers, error
//! classification and breaker verdicts, configuration.

use super::*;
use serde_json::json;

#[test]
fn ids_are_one_to_twenty_digits() {
    for ok in ["1", "123", "00042", "18446744073709551615"] {
        assert!(valid_id(ok), "{ok}");
    }
    for bad in [
        "",
        " 1",
        "1 ",
        "12a",
        "-1",
        "1.0",
        "a@b.com",
        "+15550001111",
        "١٢٣",
        "123456789012345678901",
    ] {
        assert!(!valid_id(bad), "{bad:?}");
    }
}

#[test]
fn the_search_body_is_the_documented_one() {
    let body = SearchRequest {
        filter_groups: [FilterGroup {
            filters: [Filter {
                property_name: "hs_object_id",
                operator: "EQ",
                value: "123",
            }],
        }],
        properties: &CONTACT_PROPERTIES,
        limit: 1,
    };
    assert_eq!(
        serde_json::to_value(&body).unwrap(),
        json!({
            "filterGroups": [{"filters": [
                {"propertyName": "hs_object_id", "operator": "EQ", "value": "123"}
            ]}],
            "properties": ["email", "phone", "firstname", "lastname"],
            "limit": 1
        })
    );
}

#[test]
fn answers_read_into_contacts_with_empty_values_as_none() {
    let answer = json!({
        "total": 1,
        "results": [{
            "id": "123",
            "properties": {
                "email": "ann@example.com", "phone": "", "firstname": " Ann ",
                "lastname": null, "hs_object_id": "123", "createdate": "2025-01-01T00:00:00Z"
            },
            "createdAt": "2025-01-01T00:00:00Z", "updatedAt": "2025-01-01T00:00:00Z",
            "archived": false
        }]
    });
    let contact = contact_of(answer.to_string().as_bytes(), "123").unwrap();
    assert_eq!(
        contact,
        Some(CrmContact {
            id: "123".into(),
            email: Some("ann@example.com".into()),
            phone: None,
            firstname: Some("Ann".into()),
            lastname: None,
        })
    );
    // No properties at all: every field absent.
    let bare = json!({"total": 1, "results": [{"id": "7"}]});
    assert_eq!(
        contact_of(bare.to_string().as_bytes(), "7").unwrap(),
        Some(CrmContact {
            id: "7".into(),
            email: None,
            phone: None,
            firstname: None,
            lastname: None,
        })
    );
    for empty in [json!({"total": 0, "results": []}), json!({"total": 0})] {
        assert_eq!(
            contact_of(empty.to_string().as_bytes(), "123").unwrap(),
            None
        );
    }
}

#[test]
fn wrong_answers_are_errors() {
    let other = json!({"total": 1, "results": [{"id": "124", "properties": {}}]});
    let err = contact_of(other.to_string().as_bytes(), "123").unwrap_err();
    assert!(err.contains("asked for contact 123"), "{err}");
    for bad in [
        "<html>".to_owned(),
        "[]".to_owned(),
        json!({"results": [{"properties": {}}]}).to_string(),
        json!({"results": [{"id": 123}]}).to_string(),
        json!({"results": {}}).to_string(),
    ] {
        let err = contact_of(bad.as_bytes(), "123").unwrap_err();
        assert!(
            err.contains("unreadable contacts search answer"),
            "{bad}: {err}"
        );
    }
}

fn http(status: u16, category: &str, message: &str) -> CallError {
    CallError::Http {
        status,
        category: Some(category.into()),
        correlation_id: Some("c0ffee".into()),
        message: message.into(),
    }
}

#[test]
fn errors_are_classified_as_section_7_4_says() {
    for status in [429, 500, 502, 503, 504] {
        assert!(retryable(status), "{status}");
    }
    for status in [400, 401, 403, 404, 408, 409, 422] {
        assert!(!retryable(status), "{status}");
    }
    let final_error = |e| Exhausted::Attempts {
        attempts: 1,
        last: e,
    };
    let err = crm_error(final_error(http(
        401,
        "INVALID_AUTHENTICATION",
        "Authentication credentials not found.",
    )));
    assert_eq!(
        err,
        CrmError::Unauthorized(
            "hubspot: HTTP 401 INVALID_AUTHENTICATION: Authentication credentials not found. (correlationId c0ffee)"
                .into()
        )
    );
    assert!(matches!(
        crm_error(final_error(http(403, "MISSING_SCOPES", "scopes"))),
        CrmError::Unauthorized(_)
    ));
    assert!(matches!(
        crm_error(final_error(http(400, "VALIDATION_ERROR", "bad filter"))),
        CrmError::Rejected(m) if m.contains("VALIDATION_ERROR: bad filter")
    ));
    assert!(matches!(
        crm_error(final_error(CallError::Invalid("unreadable".into()))),
        CrmError::Protocol(m) if m == "hubspot: unreadable"
    ));
    assert!(matches!(
        crm_error(Exhausted::Attempts { attempts: 3, last: http(503, "INTERNAL", "down") }),
        CrmError::Unavailable(m) if m.contains("HTTP 503 INTERNAL: down") && m.contains("after 3 attempts")
    ));
    assert!(matches!(
        crm_error(final_error(CallError::CircuitOpen(None))),
        CrmError::Unavailable(m) if m.contains("circuit breaker is open")
    ));
    assert!(matches!(
        crm_error(Exhausted::TooLong(Duration::from_secs(30), http(429, "RATE_LIMITS", "slow down"))),
        CrmError::Unavailable(m) if m.contains("retry after 30 s")
    ));
}

#[test]
fn breaker_verdicts() {
    let elapsed = Duration::from_millis(5);
    let ok: Attempt<(), CallError> = Attempt::Done(Ok(()));
    assert_eq!(verdict(&ok, elapsed), CallOutcome::Success { elapsed });
    // A refusal is the request's fault, not HubSpot's.
    let refused: Attempt<(), _> = Attempt::Done(Err(http(401, "INVALID_AUTHENTICATION", "")));
    assert_eq!(verdict(&refused, elapsed), CallOutcome::Success { elapsed });
    let invalid: Attempt<(), _> = Attempt::Done(Err(CallError::Invalid("x".into())));
    assert_eq!(verdict(&invalid, elapsed), CallOutcome::Failure { elapsed });
    let limited: Attempt<(), _> = Attempt::Retry {
        after: Some(Duration::from_secs(2)),
        error: http(429, "RATE_LIMITS", ""),
    };
    assert_eq!(
        verdict(&limited, elapsed),
        CallOutcome::RateLimited {
            retry_after: Some(Duration::from_secs(2))
        }
    );
    let down: Attempt<(), _> = Attempt::Retry {
        after: None,
        error: http(503, "INTERNAL", ""),
    };
    assert_eq!(verdict(&down, elapsed), CallOutcome::Failure { elapsed });
}

#[test]
fn config_defaults_and_the_token_stays_out_of_debug() {
    let config = CrmConfig::new("pat-na1-secret");
    assert_eq!(config.api_base, DEFAULT_API_BASE);
    assert_eq!(config.timeout, Duration::from_secs(3));
    assert_eq!(config.retry.attempt_timeout, Duration::from_secs(3));
    assert!(config.breaker.is_none());
    assert!(!format!("{config:?}").contains("secret"));
    let crm = HubSpotCrm::new(config.clone()).unwrap();
    assert!(!format!("{crm:?}").contains("secret"));
    assert_eq!(
        crm.search_url,
        "https://api.hubapi.com/crm/v3/objects/contacts/search"
    );
    // The timeout, not the policy's own attempt timeout, bounds an attempt.
    let crm = HubSpotCrm::new(CrmConfig {
        timeout: Duration::from_millis(700),
        api_base: "http://127.0.0.1:9/".into(),
        ..config.clone()
    })
    .unwrap();
    assert_eq!(crm.policy.attempt_timeout, Duration::from_millis(700));
    assert_eq!(
        crm.search_url,
        "http://127.0.0.1:9/crm/v3/objects/contacts/search"
    );

    for bad in [
        CrmConfig::new(" "),
        CrmConfig {
            api_base: "/".into(),
            ..config.clone()
        },
        CrmConfig {
            timeout: Duration::ZERO,
            ..config
        },
    ] {
        assert!(HubSpotCrm::new(bad).is_err());
    }
}

#[tokio::test]
async fn an_invalid_id_sends_nothing() {
    // Port 9 (discard) on loopback: a request would fail as a transport error, not as
    // InvalidId.
    let crm = HubSpotCrm::new(CrmConfig {
        api_base: "http://127.0.0.1:9".into(),
        ..CrmConfig::new("pat")
    })
    .unwrap();
    assert_eq!(
        crm.contact("a@b.com").await,
        Err(CrmError::InvalidId("a@b.com".into()))
    );
}
