//! Stripe event parsing (vendor-protocols.md 6.2): a signature-verified webhook body (see
//! [`super::signature`]) into a [`BillingEvent`]. Pure: no I/O, no clock.
//!
//! Only snapshot events (`"object":"event"`) are accepted; thin v2 events carry no object and
//! are refused. Every event that parses is stored; [`BillingEvent::change`] says what it does
//! to a plan:
//! - `customer.subscription.{created,updated,resumed,pending_update_applied}`: the plan from the
//!   subscription's status and items (see [`parse_event`]);
//!   `customer.subscription.{paused,deleted}`: back to `free`;
//! - `invoice.payment_failed`: the grace period starts; `invoice.paid` /
//!   `invoice.payment_succeeded`: it ends;
//! - everything else (`checkout.session.completed`, `*.trial_will_end`, ...): nothing.

use chrono::DateTime;
use serde_json::{Map, Value};
use uuid::Uuid;

use iace_actors::accounts::{BillingAction, BillingChange, BillingEvent, Plan};

/// Longest accepted event id, characters.
pub const MAX_ID_CHARS: usize = 255;

/// Why a (verified) body is not a usable Stripe event. A 4xx for the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The body is not JSON.
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not an object.
    #[error("the event must be a JSON object, not {0}")]
    NotAnObject(&'static str),
    /// A thin (v2) event notification.
    #[error("thin (v2) events are not supported; configure a snapshot event destination")]
    ThinEvent,
    /// A required field is absent or `null`.
    #[error("`{field}` is missing")]
    Missing {
        /// Dotted path of the field.
        field: &'static str,
    },
    /// A field has the wrong type or value.
    #[error("`{field}` {problem}")]
    Invalid {
        /// Dotted path of the field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// An active (or unpaid) subscription whose plan cannot be told.
    #[error(
        "subscription {subscription}: no item's price maps to a plan \
         (set the price's lookup_key to pro_* or enterprise_*)"
    )]
    NoPlan {
        /// The subscription id.
        subscription: String,
    },
}

fn invalid(field: &'static str, problem: impl Into<String>) -> EventError {
    EventError::Invalid {
        field,
        problem: problem.into(),
    }
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

/// The field, with `null` read as absent.
fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// Follows `path` through nested objects; `None` when any step is absent, `null` or not an
/// object.
fn get_path<'a>(obj: &'a Map<String, Value>, path: &[&str]) -> Option<&'a Value> {
    let (last, init) = path.split_last()?;
    let mut cur = obj;
    for key in init {
        cur = get(cur, key)?.as_object()?;
    }
    get(cur, last)
}

fn required_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<&'a str, EventError> {
    match get(obj, key) {
        None => Err(EventError::Missing { field }),
        Some(Value::String(s)) if s.is_empty() => Err(invalid(field, "must not be empty")),
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(invalid(field, format!("must be a string, not {}", kind(v)))),
    }
}

/// Parses a verified Stripe webhook body.
///
/// The body must be a snapshot event: an object with a string `id` (1..=255 characters),
/// `"object":"event"`, a string `type`, an integer `created` (Unix seconds) and an object
/// `data.object`. The whole event becomes [`BillingEvent::payload`].
///
/// Subscription events: `paused` / `deleted`, or status `canceled`, `incomplete_expired` or
/// `paused` -> `free`; `active` / `trialing` -> the subscription's plan; `past_due` / `unpaid`
/// -> the plan, past due; `incomplete` -> no change (not paid yet). The plan is the highest
/// that an item's price maps to (its `lookup_key`, else `metadata.plan`, else `id`, lower-cased,
/// equal to a plan name or starting with `<plan>_` / `<plan>-`), else the subscription's own
/// `metadata.plan`. The organization is the subscription's `metadata.organization_id`.
///
/// Invoice events: `invoice.payment_failed` -> [`BillingAction::PaymentFailed`];
/// `invoice.paid` / `invoice.payment_succeeded` -> [`BillingAction::Paid`]; the organization is
/// the `organization_id` in `parent.subscription_details.metadata` (current API versions),
/// else in `subscription_details.metadata` (older ones).
///
/// The customer (`customer`: an id, or an expanded object with an `id`) is required whenever
/// the event changes something.
pub fn parse_event(body: &[u8]) -> Result<BillingEvent, EventError> {
    let payload: Value =
        serde_json::from_slice(body).map_err(|e| EventError::NotJson(e.to_string()))?;
    let event = match &payload {
        Value::Object(o) => o,
        v => return Err(EventError::NotAnObject(kind(v))),
    };

    match get(event, "object") {
        None => return Err(EventError::Missing { field: "object" }),
        Some(Value::String(s)) if s == "event" => {}
        Some(Value::String(s)) if s == "v2.core.event" => return Err(EventError::ThinEvent),
        Some(Value::String(s)) => {
            return Err(invalid("object", format!("must be \"event\", not {s:?}")))
        }
        Some(v) => {
            return Err(invalid(
                "object",
                format!("must be \"event\", not {}", kind(v)),
            ))
        }
    }

    let id = required_str(event, "id", "id")?;
    if id.chars().count() > MAX_ID_CHARS {
        return Err(invalid(
            "id",
            format!("is longer than {MAX_ID_CHARS} characters"),
        ));
    }
    let event_type = required_str(event, "type", "type")?;

    let created = match get(event, "created") {
        None => return Err(EventError::Missing { field: "created" }),
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| invalid("created", "must be an integer (Unix seconds)"))?,
        Some(v) => {
            return Err(invalid(
                "created",
                format!("must be an integer (Unix seconds), not {}", kind(v)),
            ))
        }
    };
    let created = DateTime::from_timestamp(created, 0)
        .ok_or_else(|| invalid("created", "is out of range"))?;

    let data = match get(event, "data") {
        None => return Err(EventError::Missing { field: "data" }),
        Some(Value::Object(d)) => d,
        Some(v) => {
            return Err(invalid(
                "data",
                format!("must be an object, not {}", kind(v)),
            ))
        }
    };
    let object = match get(data, "object") {
        None => {
            return Err(EventError::Missing {
                field: "data.object",
            })
        }
        Some(Value::Object(o)) => o,
        Some(v) => {
            return Err(invalid(
                "data.object",
                format!("must be an object, not {}", kind(v)),
            ))
        }
    };

    let change = match event_type {
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.resumed"
        | "customer.subscription.pending_update_applied" => subscription_change(object, false)?,
        "customer.subscription.paused" | "customer.subscription.deleted" => {
            subscription_change(object, true)?
        }
        "invoice.payment_failed" => Some(invoice_change(object, BillingAction::PaymentFailed)?),
        "invoice.paid" | "invoice.payment_succeeded" => {
            Some(invoice_change(object, BillingAction::Paid)?)
        }
        _ => None,
    };

    Ok(BillingEvent {
        event_id: id.to_owned(),
        event_type: event_type.to_owned(),
        created,
        change,
        payload,
    })
}

/// The change a subscription event makes; `ended`: the event itself ends the paid plan
/// (`paused`, `deleted`), whatever the status says.
fn subscription_change(
    sub: &Map<String, Value>,
    ended: bool,
) -> Result<Option<BillingChange>, EventError> {
    let action = if ended {
        BillingAction::Plan {
            plan: Plan::Free,
            past_due: false,
        }
    } else {
        let status = required_str(sub, "status", "data.object.status")?;
        match status {
            "canceled" | "incomplete_expired" | "paused" => BillingAction::Plan {
                plan: Plan::Free,
                past_due: false,
            },
            "active" | "trialing" => BillingAction::Plan {
                plan: subscription_plan(sub)?,
                past_due: false,
            },
            "past_due" | "unpaid" => BillingAction::Plan {
                plan: subscription_plan(sub)?,
                past_due: true,
            },
            "incomplete" => return Ok(None),
            other => {
                return Err(invalid(
                    "data.object.status",
                    format!("is not a known subscription status: {other:?}"),
                ))
            }
        }
    };
    let customer = customer(sub)?;
    let organization = organization(
        get_path(sub, &["metadata", "organization_id"]),
        "data.object.metadata.organization_id",
    )?;
    Ok(Some(BillingChange {
        customer,
        organization,
        action,
    }))
}

/// The change an invoice event makes.
fn invoice_change(
    invoice: &Map<String, Value>,
    action: BillingAction,
) -> Result<BillingChange, EventError> {
    let customer = customer(invoice)?;
    let current = get_path(
        invoice,
        &[
            "parent",
            "subscription_details",
            "metadata",
            "organization_id",
        ],
    );
    let organization = match current {
        Some(v) => organization(
            Some(v),
            "data.object.parent.subscription_details.metadata.organization_id",
        )?,
        None => organization(
            get_path(
                invoice,
                &["subscription_details", "metadata", "organization_id"],
            ),
            "data.object.subscription_details.metadata.organization_id",
        )?,
    };
    Ok(BillingChange {
        customer,
        organization,
        action,
    })
}

/// `customer`: an id, or an expanded customer object with an `id`.
fn customer(object: &Map<String, Value>) -> Result<String, EventError> {
    const FIELD: &str = "data.object.customer";
    match get(object, "customer") {
        None => Err(EventError::Missing { field: FIELD }),
        Some(Value::String(s)) if s.is_empty() => Err(invalid(FIELD, "must not be empty")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Object(c)) => Ok(required_str(c, "id", "data.object.customer.id")?.to_owned()),
        Some(v) => Err(invalid(
            FIELD,
            format!("must be a customer id or object, not {}", kind(v)),
        )),
    }
}

/// An `organization_id` metadata value: absent -> `None`; otherwise it must be a UUID.
fn organization(value: Option<&Value>, field: &'static str) -> Result<Option<Uuid>, EventError> {
    match value {
        None => Ok(None),
        Some(Value::String(s)) => Uuid::parse_str(s)
            .map(Some)
            .map_err(|_| invalid(field, format!("is not a UUID: {s:?}"))),
        Some(v) => Err(invalid(
            field,
            format!("must be a UUID string, not {}", kind(v)),
        )),
    }
}

fn rank(plan: Plan) -> u8 {
    match plan {
        Plan::Free => 0,
        Plan::Pro => 1,
        Plan::Enterprise => 2,
    }
}

/// The plan a name maps to: lower-cased, a plan name itself or `<plan>_...` / `<plan>-...`.
fn plan_of(name: &str) -> Option<Plan> {
    let name = name.to_lowercase();
    Plan::ALL.into_iter().find(|p| {
        let p = p.as_str();
        name.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('_') || rest.starts_with('-'))
    })
}

/// A non-empty string, or `None`.
fn non_empty_str(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// The subscription's plan: the highest any item's price maps to, else its `metadata.plan`.
fn subscription_plan(sub: &Map<String, Value>) -> Result<Plan, EventError> {
    let items = get_path(sub, &["items", "data"])
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let from_items = items
        .iter()
        .filter_map(|item| item.as_object().and_then(|i| get(i, "price")?.as_object()))
        .filter_map(|price| {
            let name = non_empty_str(get(price, "lookup_key"))
                .or_else(|| non_empty_str(get_path(price, &["metadata", "plan"])))
                .or_else(|| non_empty_str(get(price, "id")))?;
            plan_of(name)
        })
        .max_by_key(|p| rank(*p));
    from_items
        .or_else(|| non_empty_str(get_path(sub, &["metadata", "plan"])).and_then(plan_of))
        .ok_or_else(|| EventError::NoPlan {
            subscription: non_empty_str(get(sub, "id"))
                .unwrap_or("(without id)")
                .to_owned(),
        })
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
