//! Tests of Stripe event parsing: the documented sample, every subscription status, plan
//! mapping, invoices, envelope errors, and property tests that no input panics.

use super::*;
use proptest::prelude::*;
use serde_json::json;

/// vendor-protocols.md 6.2.
const SAMPLE: &str = r#"{"id":"evt_1Nabc","object":"event","api_version":"2026-06-24.dahlia","created":1700000000,"livemode":false,
 "pending_webhooks":1,"request":{"id":"req_abc","idempotency_key":"b1c2..."},"type":"customer.subscription.updated",
 "data":{"object":{"id":"sub_123","object":"subscription","customer":"cus_123","status":"active",
   "cancel_at_period_end":false,"canceled_at":null,"latest_invoice":"in_123","metadata":{"tenant_id":"t_1"},
   "items":{"object":"list","data":[{"id":"si_123","object":"subscription_item","price":{"id":"price_pro","object":"price","lookup_key":"pro_monthly"},
 "quantity":1,"current_period_start":1700000000,"current_period_end":1702592000}]}},
  "previous_attributes":{"items":{"object":"list","data":[{"id":"si_123","price":{"id":"price_basic"}}]}}}}"#;

const ORG: &str = "3f2b8c1e-7d4a-4b6e-9c2d-1a2b3c4d5e6f";

fn sample() -> Value {
    serde_json::from_str(SAMPLE).unwrap()
}

fn parse(v: &Value) -> Result<BillingEvent, EventError> {
    parse_event(v.to_string().as_bytes())
}

fn plan(plan: Plan, past_due: bool) -> BillingAction {
    BillingAction::Plan { plan, past_due }
}

/// The sample as a `type` event with `status`.
fn subscription(event_type: &str, status: &str) -> Value {
    let mut v = sample();
    v["type"] = json!(event_type);
    v["data"]["object"]["status"] = json!(status);
    v
}

fn invoice(event_type: &str, object: Value) -> Value {
    json!({
        "id": "evt_inv", "object": "event", "type": event_type, "created": 1_700_000_100,
        "data": { "object": object }
    })
}

#[test]
fn the_documented_sample_is_pro_for_cus_123() {
    let e = parse_event(SAMPLE.as_bytes()).unwrap();
    assert_eq!(e.event_id, "evt_1Nabc");
    assert_eq!(e.event_type, "customer.subscription.updated");
    assert_eq!(
        e.created,
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    );
    assert_eq!(e.payload, sample());
    assert_eq!(
        e.change,
        Some(BillingChange {
            customer: "cus_123".into(),
            organization: None,
            action: plan(Plan::Pro, false),
        })
    );
}

#[test]
fn organization_comes_from_subscription_metadata() {
    let mut v = sample();
    v["data"]["object"]["metadata"]["organization_id"] = json!(ORG);
    let change = parse(&v).unwrap().change.unwrap();
    assert_eq!(change.organization, Some(Uuid::parse_str(ORG).unwrap()));
}

#[test]
fn every_subscription_status_maps() {
    let cases = [
        (
            "customer.subscription.created",
            "active",
            Some(plan(Plan::Pro, false)),
        ),
        (
            "customer.subscription.updated",
            "trialing",
            Some(plan(Plan::Pro, false)),
        ),
        (
            "customer.subscription.resumed",
            "active",
            Some(plan(Plan::Pro, false)),
        ),
        (
            "customer.subscription.pending_update_applied",
            "active",
            Some(plan(Plan::Pro, false)),
        ),
        (
            "customer.subscription.updated",
            "past_due",
            Some(plan(Plan::Pro, true)),
        ),
        (
            "customer.subscription.updated",
            "unpaid",
            Some(plan(Plan::Pro, true)),
        ),
        (
            "customer.subscription.updated",
            "canceled",
            Some(plan(Plan::Free, false)),
        ),
        (
            "customer.subscription.updated",
            "incomplete_expired",
            Some(plan(Plan::Free, false)),
        ),
        (
            "customer.subscription.updated",
            "paused",
            Some(plan(Plan::Free, false)),
        ),
        ("customer.subscription.created", "incomplete", None),
        // The event type wins over the status.
        (
            "customer.subscription.deleted",
            "canceled",
            Some(plan(Plan::Free, false)),
        ),
        (
            "customer.subscription.deleted",
            "active",
            Some(plan(Plan::Free, false)),
        ),
        (
            "customer.subscription.paused",
            "paused",
            Some(plan(Plan::Free, false)),
        ),
        // Stored, not acted on.
        ("customer.subscription.trial_will_end", "trialing", None),
        ("checkout.session.completed", "active", None),
    ];
    for (event_type, status, want) in cases {
        let e = parse(&subscription(event_type, status)).unwrap();
        assert_eq!(
            e.change.map(|c| c.action),
            want,
            "{event_type} with status {status}"
        );
    }
}

#[test]
fn a_deleted_subscription_needs_no_mappable_price() {
    let mut v = subscription("customer.subscription.deleted", "canceled");
    v["data"]["object"]["items"] = json!({"object": "list", "data": []});
    let change = parse(&v).unwrap().change.unwrap();
    assert_eq!(change.action, plan(Plan::Free, false));
    assert_eq!(change.customer, "cus_123");
}

#[test]
fn an_incomplete_subscription_is_stored_without_a_change() {
    let mut v = subscription("customer.subscription.created", "incomplete");
    v["data"]["object"]["customer"] = Value::Null;
    let e = parse(&v).unwrap();
    assert_eq!(e.change, None);
    assert_eq!(e.event_id, "evt_1Nabc");
}

#[test]
fn unknown_status_is_an_error() {
    let err = parse(&subscription("customer.subscription.updated", "weird")).unwrap_err();
    assert!(err.to_string().contains("data.object.status"), "{err}");
}

#[test]
fn an_expanded_customer_object_gives_its_id() {
    let mut v = sample();
    v["data"]["object"]["customer"] = json!({"id": "cus_exp", "object": "customer"});
    assert_eq!(parse(&v).unwrap().change.unwrap().customer, "cus_exp");
    v["data"]["object"]["customer"] = json!({"object": "customer"});
    assert_eq!(
        parse(&v).unwrap_err(),
        EventError::Missing {
            field: "data.object.customer.id"
        }
    );
}

#[test]
fn a_missing_customer_is_an_error_when_there_is_a_change() {
    let mut v = sample();
    v["data"]["object"]
        .as_object_mut()
        .unwrap()
        .remove("customer");
    assert_eq!(
        parse(&v).unwrap_err(),
        EventError::Missing {
            field: "data.object.customer"
        }
    );
    v["data"]["object"]["customer"] = json!(42);
    assert!(parse(&v).is_err());
    // Not for events that change nothing.
    v["type"] = json!("checkout.session.completed");
    assert_eq!(parse(&v).unwrap().change, None);
}

#[test]
fn plans_map_from_lookup_key_metadata_or_price_id_and_the_highest_wins() {
    let with_items = |items: Value| {
        let mut v = sample();
        v["data"]["object"]["items"]["data"] = items;
        parse(&v).map(|e| e.change.unwrap().action)
    };
    let price = |p: Value| json!([{ "id": "si_1", "price": p }]);
    assert_eq!(
        with_items(price(
            json!({"id": "price_x", "lookup_key": "Enterprise-Annual"})
        )),
        Ok(plan(Plan::Enterprise, false))
    );
    assert_eq!(
        with_items(price(json!({"id": "price_x", "lookup_key": "free"}))),
        Ok(plan(Plan::Free, false))
    );
    assert_eq!(
        with_items(price(
            json!({"id": "price_x", "lookup_key": null, "metadata": {"plan": "pro"}})
        )),
        Ok(plan(Plan::Pro, false))
    );
    assert_eq!(
        with_items(price(json!({"id": "enterprise_2025"}))),
        Ok(plan(Plan::Enterprise, false))
    );
    // Prefix must be followed by `_` / `-`, or nothing.
    assert!(with_items(price(
        json!({"id": "price_x", "lookup_key": "professional"})
    ))
    .is_err());
    assert!(with_items(price(json!({"id": "price_x", "lookup_key": "freebie"}))).is_err());
    // Highest of several items; unmappable items are skipped.
    assert_eq!(
        with_items(json!([
            {"price": {"id": "price_a", "lookup_key": "pro_monthly"}},
            {"price": {"id": "price_b", "lookup_key": "addon_seats"}},
            {"price": {"id": "price_c", "lookup_key": "enterprise_seats"}},
            {"price": {"id": "price_d", "lookup_key": "free"}},
        ])),
        Ok(plan(Plan::Enterprise, false))
    );
}

#[test]
fn subscription_metadata_plan_is_the_fallback() {
    let mut v = sample();
    v["data"]["object"]["items"]["data"][0]["price"] = json!({"id": "price_x"});
    v["data"]["object"]["metadata"]["plan"] = json!("enterprise");
    assert_eq!(
        parse(&v).unwrap().change.unwrap().action,
        plan(Plan::Enterprise, false)
    );
    // Items win over the fallback.
    let mut v = sample();
    v["data"]["object"]["metadata"]["plan"] = json!("enterprise");
    assert_eq!(
        parse(&v).unwrap().change.unwrap().action,
        plan(Plan::Pro, false)
    );
}

#[test]
fn an_unmappable_price_is_an_error_naming_the_subscription() {
    let mut v = sample();
    v["data"]["object"]["items"]["data"][0]["price"] =
        json!({"id": "price_basic", "lookup_key": "basic_monthly"});
    let err = parse(&v).unwrap_err();
    assert_eq!(
        err,
        EventError::NoPlan {
            subscription: "sub_123".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "subscription sub_123: no item's price maps to a plan \
         (set the price's lookup_key to pro_* or enterprise_*)"
    );
    // No items at all.
    v["data"]["object"].as_object_mut().unwrap().remove("items");
    assert!(matches!(parse(&v), Err(EventError::NoPlan { .. })));
}

#[test]
fn invoice_payment_failed_reads_parent_subscription_details() {
    let v = invoice(
        "invoice.payment_failed",
        json!({
            "id": "in_1", "object": "invoice", "customer": "cus_9", "status": "open",
            "parent": {"type": "subscription_details", "subscription_details": {
                "subscription": "sub_1", "metadata": {"organization_id": ORG}}},
            "subscription_details": {"metadata": {"organization_id": "ignored"}}
        }),
    );
    assert_eq!(
        parse(&v).unwrap().change,
        Some(BillingChange {
            customer: "cus_9".into(),
            organization: Some(Uuid::parse_str(ORG).unwrap()),
            action: BillingAction::PaymentFailed,
        })
    );
}

#[test]
fn invoice_paid_falls_back_to_old_subscription_details() {
    for t in ["invoice.paid", "invoice.payment_succeeded"] {
        let v = invoice(
            t,
            json!({
                "id": "in_1", "customer": {"id": "cus_9", "object": "customer"},
                "parent": null,
                "subscription_details": {"metadata": {"organization_id": ORG}}
            }),
        );
        assert_eq!(
            parse(&v).unwrap().change,
            Some(BillingChange {
                customer: "cus_9".into(),
                organization: Some(Uuid::parse_str(ORG).unwrap()),
                action: BillingAction::Paid,
            }),
            "{t}"
        );
    }
    // Neither: no organization.
    let v = invoice("invoice.paid", json!({"id": "in_1", "customer": "cus_9"}));
    assert_eq!(parse(&v).unwrap().change.unwrap().organization, None);
    // No customer: an error.
    let v = invoice(
        "invoice.payment_failed",
        json!({"id": "in_1", "customer": null}),
    );
    assert_eq!(
        parse(&v).unwrap_err(),
        EventError::Missing {
            field: "data.object.customer"
        }
    );
    // Other invoice events are stored only.
    let v = invoice(
        "invoice.finalized",
        json!({"id": "in_1", "customer": "cus_9"}),
    );
    assert_eq!(parse(&v).unwrap().change, None);
}

#[test]
fn envelope_errors_name_the_field() {
    assert!(matches!(
        parse_event(b"not json"),
        Err(EventError::NotJson(_))
    ));
    assert!(matches!(parse_event(b""), Err(EventError::NotJson(_))));
    assert_eq!(
        parse_event(b"[]").unwrap_err(),
        EventError::NotAnObject("an array")
    );

    let mut v = sample();
    v.as_object_mut().unwrap().remove("id");
    assert_eq!(parse(&v).unwrap_err(), EventError::Missing { field: "id" });
    v["id"] = json!("");
    assert!(parse(&v).unwrap_err().to_string().starts_with("`id`"));
    v["id"] = json!(12);
    assert!(parse(&v).unwrap_err().to_string().starts_with("`id`"));
    v["id"] = json!("e".repeat(256));
    assert!(parse(&v).unwrap_err().to_string().starts_with("`id`"));
    v["id"] = json!("é".repeat(255));
    assert!(parse(&v).is_ok());

    let mut v = sample();
    v["created"] = json!("1700000000");
    let err = parse(&v).unwrap_err();
    assert_eq!(
        err.to_string(),
        "`created` must be an integer (Unix seconds), not a string"
    );
    v["created"] = json!(1.7e9);
    assert!(parse(&v).unwrap_err().to_string().starts_with("`created`"));
    v["created"] = json!(i64::MAX);
    assert!(parse(&v).unwrap_err().to_string().starts_with("`created`"));

    let mut v = sample();
    v["object"] = json!("subscription");
    assert!(parse(&v).unwrap_err().to_string().starts_with("`object`"));
    v.as_object_mut().unwrap().remove("object");
    assert_eq!(
        parse(&v).unwrap_err(),
        EventError::Missing { field: "object" }
    );

    let mut v = sample();
    v.as_object_mut().unwrap().remove("type");
    assert_eq!(
        parse(&v).unwrap_err(),
        EventError::Missing { field: "type" }
    );

    let mut v = sample();
    v["data"] = json!({"object": "sub_123"});
    assert!(parse(&v)
        .unwrap_err()
        .to_string()
        .starts_with("`data.object`"));
    v["data"] = json!({});
    assert_eq!(
        parse(&v).unwrap_err(),
        EventError::Missing {
            field: "data.object"
        }
    );
}

#[test]
fn a_bad_organization_id_is_an_error() {
    let mut v = sample();
    v["data"]["object"]["metadata"]["organization_id"] = json!("org_42");
    let err = parse(&v).unwrap_err();
    assert_eq!(
        err.to_string(),
        "`data.object.metadata.organization_id` is not a UUID: \"org_42\""
    );
    v["data"]["object"]["metadata"]["organization_id"] = json!(42);
    assert!(parse(&v).is_err());
    let v = invoice(
        "invoice.paid",
        json!({"customer": "cus_1", "parent": {"subscription_details":
            {"metadata": {"organization_id": "nope"}}}}),
    );
    assert!(parse(&v)
        .unwrap_err()
        .to_string()
        .contains("parent.subscription_details.metadata.organization_id"));
}

#[test]
fn thin_events_are_refused() {
    let body = br#"{"id":"evt_test_65R","object":"v2.core.event","type":"v1.billing.meter.error_report_triggered","created":"2024-09-17T06:20:52.246Z","related_object":{"id":"mtr_1","type":"billing.meter","url":"/v1/billing/meters/mtr_1"}}"#;
    let err = parse_event(body).unwrap_err();
    assert_eq!(err, EventError::ThinEvent);
    assert_eq!(
        err.to_string(),
        "thin (v2) events are not supported; configure a snapshot event destination"
    );
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            Just("event".to_owned()),
            Just("active".to_owned()),
            Just("past_due".to_owned()),
            Just("pro_monthly".to_owned()),
            Just(ORG.to_owned()),
            ".{0,12}",
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("id".to_owned()),
                    Just("customer".to_owned()),
                    Just("price".to_owned()),
                    Just("metadata".to_owned()),
                    "[a-z_]{1,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Paths in the sample to overwrite with arbitrary values.
const PATHS: &[&str] = &[
    "/id",
    "/object",
    "/type",
    "/created",
    "/data",
    "/data/object",
    "/data/object/customer",
    "/data/object/status",
    "/data/object/metadata",
    "/data/object/metadata/organization_id",
    "/data/object/items",
    "/data/object/items/data",
    "/data/object/items/data/0",
    "/data/object/items/data/0/price",
    "/data/object/items/data/0/price/lookup_key",
];

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_event(&body);
    }

    #[test]
    fn json_ish_strings_never_panic(body in r#"[\[\]{}":,.0-9a-z_ \-eE+]{0,200}"#) {
        let _ = parse_event(body.as_bytes());
    }

    #[test]
    fn arbitrary_json_never_panics(v in arb_json()) {
        let _ = parse(&v);
    }

    #[test]
    fn mutated_samples_never_panic(
        path in proptest::sample::select(PATHS),
        replacement in arb_json(),
        event_type in proptest::sample::select(&[
            "customer.subscription.created",
            "customer.subscription.updated",
            "customer.subscription.deleted",
            "invoice.payment_failed",
            "invoice.paid",
        ][..]),
    ) {
        let mut v = sample();
        v["type"] = json!(event_type);
        if let Some(slot) = v.pointer_mut(path) {
            *slot = replacement;
        }
        if let Ok(e) = parse(&v) {
            // Compared with the value as parsed back (floats need not round-trip exactly).
            let reparsed: Value = serde_json::from_str(&v.to_string()).unwrap();
            prop_assert_eq!(e.payload, reparsed);
        }
    }
}
