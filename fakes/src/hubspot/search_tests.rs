//! Tests of the contacts search: filter groups, properties, limits, paging, sorting, the free
//! text query, and the refusals of bad bodies.

use super::*;
use chrono::{TimeZone, Utc};

fn contact(id: u64, props: Value) -> Contact {
    let t = Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 0).unwrap();
    Contact {
        id: id.to_string(),
        properties: props.as_object().unwrap().clone(),
        created_at: t,
        updated_at: t,
    }
}

fn store() -> BTreeMap<u64, Contact> {
    [
        contact(
            1,
            json!({"email": "Ann@Example.com", "phone": "+15550001111", "firstname": "Ann"}),
        ),
        contact(
            2,
            json!({"email": "bob@example.com", "phone": null, "firstname": "Bob"}),
        ),
        contact(
            10,
            json!({"email": "cy@example.org", "phone": "+15550003333", "firstname": "Cy"}),
        ),
    ]
    .into_iter()
    .map(|c| (c.id.parse().unwrap(), c))
    .collect()
}

fn all(_: &str) -> bool {
    true
}

fn ids(answer: &Value) -> Vec<String> {
    answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn run(body: Value) -> Value {
    validate(Some(&body), &all, 200).unwrap().run(&store())
}

#[test]
fn groups_are_ored_and_filters_anded() {
    let eq = |p: &str, v: &str| json!({"propertyName": p, "operator": "EQ", "value": v});
    let a = run(json!({"filterGroups": [{"filters": [eq("email", "ann@example.com")]}]}));
    assert_eq!(ids(&a), ["1"]);
    let a = run(json!({"filterGroups": [
        {"filters": [eq("hs_object_id", "2")]},
        {"filters": [eq("phone", "+15550003333")]},
    ]}));
    assert_eq!(ids(&a), ["2", "10"]);
    assert_eq!(a["total"], 2);
    let a = run(
        json!({"filterGroups": [{"filters": [eq("firstname", "ann"), eq("hs_object_id", "2")]}]}),
    );
    assert_eq!(ids(&a), Vec::<String>::new());
    let a = run(
        json!({"filterGroups": [{"filters": [{"propertyName": "phone", "operator": "NOT_HAS_PROPERTY"}]}]}),
    );
    assert_eq!(ids(&a), ["2"]);
    let a = run(
        json!({"filterGroups": [{"filters": [{"propertyName": "hs_object_id", "operator": "GTE", "value": "2"}]}]}),
    );
    assert_eq!(ids(&a), ["2", "10"]);
    let a = run(
        json!({"filterGroups": [{"filters": [{"propertyName": "firstname", "operator": "IN", "values": ["bob", "cy"]}]}]}),
    );
    assert_eq!(ids(&a), ["2", "10"]);
}

#[test]
fn properties_limit_paging_sorts_and_query() {
    let a = run(json!({"properties": ["email", "nope"], "limit": 2}));
    assert_eq!(ids(&a), ["1", "2"]);
    assert_eq!(a["total"], 3);
    assert_eq!(a["paging"]["next"]["after"], "2");
    let keys: Vec<&String> = a["results"][0]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    // `nope` passed `all`, so it is answered as null; real unknown names are dropped.
    assert_eq!(
        keys,
        [
            "createdate",
            "email",
            "hs_object_id",
            "lastmodifieddate",
            "nope"
        ]
    );
    let a = run(json!({"limit": 2, "after": "2"}));
    assert_eq!(ids(&a), ["10"]);
    assert!(a.get("paging").is_none());
    let a = run(json!({"sorts": [{"propertyName": "hs_object_id", "direction": "DESCENDING"}]}));
    assert_eq!(ids(&a), ["10", "2", "1"]);
    let a = run(json!({"query": "example.com"}));
    assert_eq!(ids(&a), ["1", "2"]);
}

#[test]
fn bad_bodies_are_refused_naming_the_field() {
    let cases = [
        (json!([]), "expected an object"),
        (
            json!({"filtergroups": []}),
            "Unrecognized field \"filtergroups\"",
        ),
        (json!({"filterGroups": {}}), "filterGroups must be an array"),
        (
            json!({"filterGroups": [{}]}),
            "filterGroups[0].filters is required",
        ),
        (
            json!({"filterGroups": [{"filters": []}]}),
            "at least one filter",
        ),
        (
            json!({"filterGroups": [{"filters": [{"propertyName": "email", "operator": "EQ"}]}]}),
            "filterGroups[0].filters[0].value is required",
        ),
        (
            json!({"filterGroups": [{"filters": [{"propertyName": "email", "operator": "LIKE", "value": "x"}]}]}),
            "filterGroups[0].filters[0].operator",
        ),
        (
            json!({"filterGroups": [{"filters": [{"property": "email", "value": "x"}]}]}),
            "Unrecognized field \"property\" in filterGroups[0].filters[0]",
        ),
        (
            json!({"limit": 0}),
            "limit must be an integer from 1 to 200",
        ),
        (
            json!({"limit": 201}),
            "limit must be an integer from 1 to 200",
        ),
        (json!({"limit": "1"}), "limit must be"),
        (
            json!({"properties": "email"}),
            "properties must be an array",
        ),
        (json!({"after": "x"}), "after must be a paging cursor"),
    ];
    for (body, expected) in cases {
        let err = validate(Some(&body), &all, 200).unwrap_err();
        assert!(err.message.contains(expected), "{body}: {}", err.message);
        assert_eq!(err.category, "VALIDATION_ERROR");
    }
    let err = validate(None, &all, 200).unwrap_err();
    assert!(err.message.contains("not JSON"));
    let email_only = |p: &str| p == "email";
    let body = json!({"filterGroups": [{"filters": [{"propertyName": "phone", "operator": "EQ", "value": "1"}]}]});
    let err = validate(Some(&body), &email_only, 200).unwrap_err();
    assert!(
        err.message.contains("property \"phone\" does not exist"),
        "{}",
        err.message
    );
}
