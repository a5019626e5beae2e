//! HubSpot webhook parsing (vendor-protocols.md 7.3): a signature-verified body (see
//! [`super::signature`]) into [`CrmEvent`]s. Pure: no I/O, no clock.
//!
//! A delivery is a JSON array of events. Every event that parses is stored (the store dedupes on
//! `eventId`, so duplicates within a batch are kept, in order); [`CrmEvent::change`] says what it
//! does to the linked customer:
//! - `contact.propertyChange` of `email`, `phone`, `firstname` or `lastname`: that field;
//! - `contact.deletion`, `contact.privacyDeletion`: the customer is unlinked;
//! - everything else (other properties, `contact.creation`, `contact.merge`, `company.*`,
//!   `deal.*`, ...): nothing.

use serde_json::{Map, Value};

use iace_actors::accounts::{CrmChange, CrmEvent, CrmField};

/// Most events accepted in one delivery.
pub const MAX_EVENTS: usize = 1_000;

/// Why a (verified) body is not a usable HubSpot delivery. A 4xx for the sender. Event
/// indexes are 0-based positions in the array.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The body is not JSON.
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not an array.
    #[error("the body must be a JSON array of events, not {0}")]
    NotAnArray(&'static str),
    /// An empty array.
    #[error("the body must hold at least one event")]
    Empty,
    /// More events than [`MAX_EVENTS`].
    #[error("too many events in one delivery: {count} (at most {MAX_EVENTS})")]
    TooMany {
        /// How many there were.
        count: usize,
    },
    /// An element that is not an object.
    #[error("event {index}: must be a JSON object, not {kind}")]
    NotAnObject {
        /// Position in the array.
        index: usize,
        /// What it is instead.
        kind: &'static str,
    },
    /// A required field is absent or `null`.
    #[error("event {index}: {field} is missing")]
    Missing {
        /// Position in the array.
        index: usize,
        /// Field name.
        field: &'static str,
    },
    /// A field has the wrong type or value.
    #[error("event {index}: {field} {problem}")]
    Invalid {
        /// Position in the array.
        index: usize,
        /// Field name.
        field: &'static str,
        /// What is wrong with it (`must be an integer`, ...).
        problem: &'static str,
    },
}

/// JSON type name, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One event's fields, with its position for messages.
struct Fields<'a> {
    index: usize,
    obj: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn get(&self, field: &'static str) -> Result<&'a Value, EventError> {
        self.obj
            .get(field)
            .filter(|v| !v.is_null())
            .ok_or(EventError::Missing {
                index: self.index,
                field,
            })
    }

    fn invalid(&self, field: &'static str, problem: &'static str) -> EventError {
        EventError::Invalid {
            index: self.index,
            field,
            problem,
        }
    }

    /// An integer (a JSON number without fraction or exponent), as its JSON number.
    fn integer(&self, field: &'static str) -> Result<&'a serde_json::Number, EventError> {
        match self.get(field)? {
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n),
            _ => Err(self.invalid(field, "must be an integer")),
        }
    }

    /// An integer that fits an `i64`.
    fn i64(&self, field: &'static str) -> Result<i64, EventError> {
        self.integer(field)?
            .as_i64()
            .ok_or_else(|| self.invalid(field, "is out of range"))
    }

    /// A non-empty string.
    fn string(&self, field: &'static str) -> Result<&'a str, EventError> {
        match self.get(field)? {
            Value::String(s) if s.is_empty() => Err(self.invalid(field, "must not be empty")),
            Value::String(s) => Ok(s),
            _ => Err(self.invalid(field, "must be a string")),
        }
    }
}

/// Parses a verified HubSpot webhook body: a JSON array of 1..=[`MAX_EVENTS`] events, each an
/// object with integer `eventId`, `portalId` and `occurredAt`, a string `subscriptionType`, and
/// for `contact.*` types an integer `objectId`. Each element becomes [`CrmEvent::payload`];
/// order and duplicates are kept.
pub fn parse_events(body: &[u8]) -> Result<Vec<CrmEvent>, EventError> {
    let parsed: Value =
        serde_json::from_slice(body).map_err(|e| EventError::NotJson(e.to_string()))?;
    let events = match parsed {
        Value::Array(a) => a,
        v => return Err(EventError::NotAnArray(kind(&v))),
    };
    if events.is_empty() {
        return Err(EventError::Empty);
    }
    if events.len() > MAX_EVENTS {
        return Err(EventError::TooMany {
            count: events.len(),
        });
    }
    events
        .into_iter()
        .enumerate()
        .map(|(index, payload)| parse_one(index, payload))
        .collect()
}

fn parse_one(index: usize, payload: Value) -> Result<CrmEvent, EventError> {
    let Value::Object(obj) = &payload else {
        return Err(EventError::NotAnObject {
            index,
            kind: kind(&payload),
        });
    };
    let f = Fields { index, obj };
    let event_id = f.integer("eventId")?.to_string();
    let portal_id = f.i64("portalId")?;
    let event_type = f.string("subscriptionType")?;
    f.i64("occurredAt")?;

    let change = match event_type.split_once('.') {
        Some(("contact", action)) => {
            let contact_id = f.integer("objectId")?.to_string();
            match action {
                "propertyChange" => {
                    let field = match f.string("propertyName")? {
                        "email" => Some(CrmField::Email),
                        "phone" => Some(CrmField::Phone),
                        "firstname" => Some(CrmField::FirstName),
                        "lastname" => Some(CrmField::LastName),
                        _ => None,
                    };
                    match field {
                        Some(field) => {
                            let value = match obj.get("propertyValue") {
                                None | Some(Value::Null) => String::new(),
                                Some(Value::String(s)) => s.clone(),
                                Some(_) => {
                                    return Err(f.invalid("propertyValue", "must be a string"))
                                }
                            };
                            Some(CrmChange::Property {
                                contact_id,
                                field,
                                value,
                            })
                        }
                        None => None,
                    }
                }
                "deletion" | "privacyDeletion" => Some(CrmChange::Deleted { contact_id }),
                _ => None,
            }
        }
        _ => None,
    };

    Ok(CrmEvent {
        event_id,
        event_type: event_type.to_owned(),
        portal_id,
        change,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// vendor-protocols.md 7.3.
    const SAMPLE: &str = r#"[{"eventId":1,"subscriptionId":12345,"portalId":62515,"appId":54321,"occurredAt":1564113600000,
  "subscriptionType":"contact.propertyChange","attemptNumber":0,"objectId":123,
  "propertyName":"phone","propertyValue":"+15550001111","changeSource":"CRM_UI","sourceId":"userId:45678"}]"#;

    fn sample_event() -> Value {
        let v: Value = serde_json::from_str(SAMPLE).unwrap();
        v[0].clone()
    }

    fn parse(v: &Value) -> Result<Vec<CrmEvent>, EventError> {
        parse_events(v.to_string().as_bytes())
    }

    /// The sample event, changed by `f`, parsed alone.
    fn one(f: impl FnOnce(&mut Value)) -> Result<CrmEvent, EventError> {
        let mut e = sample_event();
        f(&mut e);
        parse(&json!([e])).map(|mut v| v.remove(0))
    }

    #[test]
    fn the_documented_sample_is_a_phone_change() {
        let events = parse_events(SAMPLE.as_bytes()).unwrap();
        assert_eq!(
            events,
            vec![CrmEvent {
                event_id: "1".into(),
                event_type: "contact.propertyChange".into(),
                portal_id: 62515,
                payload: sample_event(),
                change: Some(CrmChange::Property {
                    contact_id: "123".into(),
                    field: CrmField::Phone,
                    value: "+15550001111".into(),
                }),
            }]
        );
    }

    #[test]
    fn every_mapped_property() {
        for (name, field) in [
            ("email", CrmField::Email),
            ("phone", CrmField::Phone),
            ("firstname", CrmField::FirstName),
            ("lastname", CrmField::LastName),
        ] {
            let e = one(|e| {
                e["propertyName"] = json!(name);
                e["propertyValue"] = json!("x");
            })
            .unwrap();
            assert_eq!(
                e.change,
                Some(CrmChange::Property {
                    contact_id: "123".into(),
                    field,
                    value: "x".into()
                })
            );
        }
        // Missing or null value: cleared.
        let e = one(|e| {
            e.as_object_mut().unwrap().remove("propertyValue");
        })
        .unwrap();
        assert!(matches!(e.change, Some(CrmChange::Property { value, .. }) if value.is_empty()));
        let e = one(|e| e["propertyValue"] = Value::Null).unwrap();
        assert!(matches!(e.change, Some(CrmChange::Property { value, .. }) if value.is_empty()));
        // Other properties: nothing.
        for name in ["company", "hs_lead_status", "Email", "mobilephone"] {
            assert_eq!(
                one(|e| e["propertyName"] = json!(name)).unwrap().change,
                None
            );
        }
    }

    #[test]
    fn deletions_unlink() {
        for t in ["contact.deletion", "contact.privacyDeletion"] {
            let e = one(|e| {
                e["subscriptionType"] = json!(t);
                e["objectId"] = json!(9_007_199_254_740_993u64);
                let o = e.as_object_mut().unwrap();
                o.remove("propertyName");
                o.remove("propertyValue");
            })
            .unwrap();
            assert_eq!(e.event_type, t);
            assert_eq!(
                e.change,
                Some(CrmChange::Deleted {
                    contact_id: "9007199254740993".into()
                })
            );
        }
    }

    #[test]
    fn unrelated_types_change_nothing() {
        for t in [
            "contact.creation",
            "contact.merge",
            "contact.associationChange",
            "contact.restore",
            "company.propertyChange",
            "company.deletion",
            "deal.creation",
            "ticket.deletion",
            "object.propertyChange",
            "contactless",
        ] {
            let e = one(|e| e["subscriptionType"] = json!(t)).unwrap();
            assert_eq!(e.change, None, "{t}");
            assert_eq!(e.event_type, t);
        }
        // `objectId` is only required for contact events.
        let e = one(|e| {
            e["subscriptionType"] = json!("deal.creation");
            e.as_object_mut().unwrap().remove("objectId");
        })
        .unwrap();
        assert_eq!(e.change, None);
    }

    #[test]
    fn batches_keep_order_and_duplicates() {
        let a = sample_event();
        let mut b = sample_event();
        b["eventId"] = json!(2);
        b["subscriptionType"] = json!("contact.deletion");
        let events = parse(&json!([a, b, a])).unwrap();
        let ids: Vec<_> = events.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["1", "2", "1"]);
        assert_eq!(events[0], events[2]);

        let full = Value::Array(vec![a.clone(); MAX_EVENTS]);
        assert_eq!(parse(&full).unwrap().len(), MAX_EVENTS);
        let over = Value::Array(vec![a; MAX_EVENTS + 1]);
        assert_eq!(
            parse(&over).unwrap_err(),
            EventError::TooMany {
                count: MAX_EVENTS + 1
            }
        );
    }

    #[test]
    fn body_errors() {
        assert!(matches!(parse_events(b"nope"), Err(EventError::NotJson(_))));
        assert_eq!(
            parse(&sample_event()).unwrap_err(),
            EventError::NotAnArray("an object")
        );
        assert_eq!(parse_events(b"[]").unwrap_err(), EventError::Empty);
        assert_eq!(
            parse(&json!([sample_event(), 5])).unwrap_err().to_string(),
            "event 1: must be a JSON object, not a number"
        );
    }

    #[test]
    fn field_errors_name_the_index_and_field() {
        let at = |index: usize, f: fn(&mut Value)| {
            let mut events = vec![sample_event(); index + 1];
            f(&mut events[index]);
            parse(&Value::Array(events)).unwrap_err().to_string()
        };
        assert_eq!(
            at(3, |e| e["eventId"] = json!("1")),
            "event 3: eventId must be an integer"
        );
        assert_eq!(
            at(0, |e| {
                e.as_object_mut().unwrap().remove("objectId");
            }),
            "event 0: objectId is missing"
        );
        assert_eq!(
            at(2, |e| e["portalId"] = json!(62515.0)),
            "event 2: portalId must be an integer"
        );
        assert_eq!(
            at(0, |e| e["portalId"] = json!(u64::MAX)),
            "event 0: portalId is out of range"
        );
        assert_eq!(
            at(0, |e| e["occurredAt"] = json!("1564113600000")),
            "event 0: occurredAt must be an integer"
        );
        assert_eq!(
            at(0, |e| e["objectId"] = json!(1.5)),
            "event 0: objectId must be an integer"
        );
        assert_eq!(
            at(0, |e| e["subscriptionType"] = json!(7)),
            "event 0: subscriptionType must be a string"
        );
        assert_eq!(
            at(0, |e| e["eventId"] = Value::Null),
            "event 0: eventId is missing"
        );
        assert_eq!(
            at(0, |e| e["propertyValue"] = json!(15550001111u64)),
            "event 0: propertyValue must be a string"
        );
        assert_eq!(
            at(1, |e| {
                e.as_object_mut().unwrap().remove("propertyName");
            }),
            "event 1: propertyName is missing"
        );
        // Exponent notation is a float in JSON.
        assert_eq!(
            parse_events(
                br#"[{"eventId":1e3,"portalId":1,"occurredAt":1,"subscriptionType":"deal.creation"}]"#
            )
            .unwrap_err()
            .to_string(),
            "event 0: eventId must be an integer"
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
                Just("contact.propertyChange".to_owned()),
                Just("contact.deletion".to_owned()),
                Just("phone".to_owned()),
                ".{0,12}",
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("eventId".to_owned()),
                        Just("portalId".to_owned()),
                        Just("objectId".to_owned()),
                        Just("subscriptionType".to_owned()),
                        "[a-zA-Z]{1,8}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    const FIELDS: &[&str] = &[
        "eventId",
        "portalId",
        "occurredAt",
        "subscriptionType",
        "objectId",
        "propertyName",
        "propertyValue",
    ];

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_events(&body);
        }

        #[test]
        fn json_ish_strings_never_panic(body in r#"[\[\]{}":,.0-9a-zA-Z_ \-+]{0,200}"#) {
            let _ = parse_events(body.as_bytes());
        }

        #[test]
        fn arbitrary_json_never_panics(v in arb_json()) {
            let _ = parse(&v);
        }

        #[test]
        fn mutated_samples_never_panic(
            field in proptest::sample::select(FIELDS),
            replacement in arb_json(),
        ) {
            let mut e = sample_event();
            e[field] = replacement;
            if let Ok(events) = parse(&json!([e.clone()])) {
                prop_assert_eq!(events.len(), 1);
                // Compared with the value as parsed back (floats need not round-trip exactly).
                let reparsed: Value = serde_json::from_str(&e.to_string()).unwrap();
                prop_assert_eq!(&events[0].payload, &reparsed);
            }
        }
    }
}
