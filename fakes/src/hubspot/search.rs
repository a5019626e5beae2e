//! The contacts search (section 7.4): reading and checking a
//! `POST /crm/v3/objects/contacts/search` body, then running it over the stored contacts.
//! Also the lenient reading of filters that fills the request log, which must work on bodies
//! the checks refuse.
//!
//! Every refusal is a 400 `VALIDATION_ERROR`; the messages are the fake's own wording
//! [UNVERIFIED], naming the offending field.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::error::HubSpotError;
use super::state::Contact;
use super::RecordedFilter;

/// Top-level fields of a search body.
const FIELDS: [&str; 6] = [
    "filterGroups",
    "sorts",
    "query",
    "properties",
    "limit",
    "after",
];
/// Fields of one filter.
const FILTER_FIELDS: [&str; 5] = ["propertyName", "operator", "value", "values", "highValue"];
/// Fields of one sort.
const SORT_FIELDS: [&str; 2] = ["propertyName", "direction"];
/// Operators HubSpot documents; the fake implements all but the token ones.
const OPERATORS: [&str; 13] = [
    "EQ",
    "NEQ",
    "LT",
    "LTE",
    "GT",
    "GTE",
    "BETWEEN",
    "IN",
    "NOT_IN",
    "HAS_PROPERTY",
    "NOT_HAS_PROPERTY",
    "CONTAINS_TOKEN",
    "NOT_CONTAINS_TOKEN",
];
/// Most filter groups in one search, filters in one group, and filters in all groups.
pub(crate) const MAX_GROUPS: usize = 5;
pub(crate) const MAX_FILTERS_PER_GROUP: usize = 6;
pub(crate) const MAX_FILTERS: usize = 18;
/// `limit` when the body has none.
pub(crate) const DEFAULT_LIMIT: usize = 10;
/// What comes back when the body asks for no properties.
const DEFAULT_PROPERTIES: [&str; 6] = [
    "createdate",
    "email",
    "firstname",
    "hs_object_id",
    "lastmodifieddate",
    "lastname",
];
/// Always returned, whatever was asked for.
const ALWAYS: [&str; 3] = ["createdate", "hs_object_id", "lastmodifieddate"];
/// What `query` is matched against (a subset of the contacts' default searchable properties).
const SEARCHABLE: [&str; 6] = [
    "firstname",
    "lastname",
    "email",
    "phone",
    "mobilephone",
    "company",
];

/// One condition of a filter group.
#[derive(Debug, Clone, PartialEq)]
struct Condition {
    property: String,
    test: Test,
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    Eq(String),
    Neq(String),
    Lt(String),
    Lte(String),
    Gt(String),
    Gte(String),
    Between(String, String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Has,
    NotHas,
}

/// A search that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Search {
    /// OR of ANDs; empty: every contact.
    groups: Vec<Vec<Condition>>,
    /// Property and descending.
    sort: Option<(String, bool)>,
    /// Lower-cased tokens, each of which must appear in a searchable property.
    query: Vec<String>,
    /// The properties answered, in order.
    properties: Vec<String>,
    limit: usize,
    after: usize,
}

fn invalid(message: impl Into<String>) -> HubSpotError {
    HubSpotError::validation(message.into())
}

/// A filter or sort value as a string: HubSpot takes strings, and numbers and booleans as
/// their JSON text.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

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

/// Refuses a field outside `allowed` ("Unrecognized field", as HubSpot's JSON reader says).
fn check_names(obj: &Map<String, Value>, allowed: &[&str], at: &str) -> Result<(), HubSpotError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(invalid(format!(
            "Invalid input JSON: Unrecognized field \"{k}\"{at}"
        ))),
        None => Ok(()),
    }
}

/// Checks a body (`None`: not JSON) against the properties that exist, with `max_limit` the
/// largest `limit`.
pub(crate) fn validate(
    body: Option<&Value>,
    known: &dyn Fn(&str) -> bool,
    max_limit: usize,
) -> Result<Search, HubSpotError> {
    let Some(body) = body else {
        return Err(invalid("Invalid input JSON: the body is not JSON"));
    };
    let Value::Object(root) = body else {
        return Err(invalid(format!(
            "Invalid input JSON: expected an object, got {}",
            kind(body)
        )));
    };
    check_names(root, &FIELDS, "")?;

    let groups = match root.get("filterGroups") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(groups)) => groups
            .iter()
            .enumerate()
            .map(|(g, group)| parse_group(g, group, known))
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(invalid(format!(
                "filterGroups must be an array, not {}",
                kind(other)
            )))
        }
    };
    if groups.len() > MAX_GROUPS {
        return Err(invalid(format!(
            "Too many filter groups: {} (at most {MAX_GROUPS})",
            groups.len()
        )));
    }
    let total: usize = groups.iter().map(Vec::len).sum();
    if total > MAX_FILTERS {
        return Err(invalid(format!(
            "Too many filters: {total} in all groups (at most {MAX_FILTERS})"
        )));
    }

    let sort = match root.get("sorts") {
        None | Some(Value::Null) => None,
        Some(Value::Array(sorts)) if sorts.len() > 1 => {
            return Err(invalid("At most one sort is supported"))
        }
        Some(Value::Array(sorts)) => match sorts.first() {
            None => None,
            Some(s) => Some(parse_sort(s, known)?),
        },
        Some(other) => {
            return Err(invalid(format!(
                "sorts must be an array, not {}",
                kind(other)
            )))
        }
    };

    let query = match root.get("query") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(q)) => q.split_whitespace().map(str::to_lowercase).collect(),
        Some(other) => {
            return Err(invalid(format!(
                "query must be a string, not {}",
                kind(other)
            )))
        }
    };

    let asked = match root.get("properties") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(names)) => names
            .iter()
            .enumerate()
            .map(|(i, n)| match n {
                Value::String(s) => Ok(s.clone()),
                other => Err(invalid(format!(
                    "properties[{i}] must be a string, not {}",
                    kind(other)
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(invalid(format!(
                "properties must be an array of strings, not {}",
                kind(other)
            )))
        }
    };
    let properties = answered_properties(&asked, known);

    let limit = match root.get("limit") {
        None | Some(Value::Null) => DEFAULT_LIMIT,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=max_limit as u64).contains(&n) => n as usize,
            _ => {
                return Err(invalid(format!(
                    "limit must be an integer from 1 to {max_limit}, not {v}"
                )))
            }
        },
    };
    let after = match root.get("after") {
        None | Some(Value::Null) => 0,
        Some(v) => match scalar(v).and_then(|s| s.parse::<usize>().ok()) {
            Some(n) => n,
            None => return Err(invalid(format!("after must be a paging cursor, not {v}"))),
        },
    };
    Ok(Search {
        groups,
        sort,
        query,
        properties,
        limit,
        after,
    })
}

/// The properties answered for `asked`: the defaults when nothing was asked, else the asked
/// ones that exist (unknown names are dropped, duplicates kept once) plus [`ALWAYS`], sorted
/// by name as HubSpot's maps come.
fn answered_properties(asked: &[String], known: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut out: Vec<String> = if asked.is_empty() {
        DEFAULT_PROPERTIES.iter().map(|p| (*p).to_owned()).collect()
    } else {
        asked
            .iter()
            .filter(|p| known(p))
            .cloned()
            .chain(ALWAYS.iter().map(|p| (*p).to_owned()))
            .collect()
    };
    out.sort();
    out.dedup();
    out
}

fn parse_group(
    g: usize,
    group: &Value,
    known: &dyn Fn(&str) -> bool,
) -> Result<Vec<Condition>, HubSpotError> {
    let Value::Object(obj) = group else {
        return Err(invalid(format!(
            "filterGroups[{g}] must be an object, not {}",
            kind(group)
        )));
    };
    check_names(obj, &["filters"], &format!(" in filterGroups[{g}]"))?;
    let filters = match obj.get("filters") {
        Some(Value::Array(f)) => f,
        None | Some(Value::Null) => {
            return Err(invalid(format!("filterGroups[{g}].filters is required")))
        }
        Some(other) => {
            return Err(invalid(format!(
                "filterGroups[{g}].filters must be an array, not {}",
                kind(other)
            )))
        }
    };
    if filters.is_empty() {
        return Err(invalid(format!(
            "filterGroups[{g}].filters must hold at least one filter"
        )));
    }
    if filters.len() > MAX_FILTERS_PER_GROUP {
        return Err(invalid(format!(
            "Too many filters in filterGroups[{g}]: {} (at most {MAX_FILTERS_PER_GROUP})",
            filters.len()
        )));
    }
    filters
        .iter()
        .enumerate()
        .map(|(f, filter)| parse_filter(&format!("filterGroups[{g}].filters[{f}]"), filter, known))
        .collect()
}

fn parse_filter(
    at: &str,
    filter: &Value,
    known: &dyn Fn(&str) -> bool,
) -> Result<Condition, HubSpotError> {
    let Value::Object(obj) = filter else {
        return Err(invalid(format!(
            "{at} must be an object, not {}",
            kind(filter)
        )));
    };
    check_names(obj, &FILTER_FIELDS, &format!(" in {at}"))?;
    let property = match obj.get("propertyName") {
        Some(Value::String(p)) if !p.is_empty() => p.clone(),
        None | Some(Value::Null) => return Err(invalid(format!("{at}.propertyName is required"))),
        Some(other) => {
            return Err(invalid(format!(
                "{at}.propertyName must be a non-empty string, not {other}"
            )))
        }
    };
    if !known(&property) {
        return Err(invalid(format!(
            "{at}: property \"{property}\" does not exist on contacts"
        )));
    }
    let operator = match obj.get("operator") {
        Some(Value::String(o)) if OPERATORS.contains(&o.as_str()) => o.as_str(),
        // HubSpot's default operator.
        None | Some(Value::Null) => "EQ",
        Some(other) => {
            return Err(invalid(format!(
                "{at}.operator: {other} is not one of {}",
                OPERATORS.join(", ")
            )))
        }
    };
    let value = |name: &str| -> Result<String, HubSpotError> {
        match obj.get(name) {
            None | Some(Value::Null) => Err(invalid(format!(
                "{at}.{name} is required for operator {operator}"
            ))),
            Some(v) => scalar(v)
                .ok_or_else(|| invalid(format!("{at}.{name} must be a string, not {}", kind(v)))),
        }
    };
    let values = || -> Result<Vec<String>, HubSpotError> {
        match obj.get("values") {
            Some(Value::Array(vs)) if !vs.is_empty() => vs
                .iter()
                .map(|v| {
                    scalar(v).ok_or_else(|| {
                        invalid(format!("{at}.values must hold strings, not {}", kind(v)))
                    })
                })
                .collect(),
            _ => Err(invalid(format!(
                "{at}.values must be a non-empty array for operator {operator}"
            ))),
        }
    };
    let test = match operator {
        "EQ" => Test::Eq(value("value")?),
        "NEQ" => Test::Neq(value("value")?),
        "LT" => Test::Lt(value("value")?),
        "LTE" => Test::Lte(value("value")?),
        "GT" => Test::Gt(value("value")?),
        "GTE" => Test::Gte(value("value")?),
        "BETWEEN" => Test::Between(value("value")?, value("highValue")?),
        "IN" => Test::In(values()?),
        "NOT_IN" => Test::NotIn(values()?),
        "HAS_PROPERTY" => Test::Has,
        "NOT_HAS_PROPERTY" => Test::NotHas,
        other => {
            return Err(invalid(format!(
                "{at}.operator: the fake does not implement {other}"
            )))
        }
    };
    Ok(Condition { property, test })
}

fn parse_sort(sort: &Value, known: &dyn Fn(&str) -> bool) -> Result<(String, bool), HubSpotError> {
    let (property, descending) = match sort {
        // The short form: a property name, ascending.
        Value::String(p) => (p.clone(), false),
        Value::Object(obj) => {
            check_names(obj, &SORT_FIELDS, " in sorts[0]")?;
            let Some(Value::String(p)) = obj.get("propertyName") else {
                return Err(invalid("sorts[0].propertyName must be a string"));
            };
            let descending = match obj.get("direction") {
                None | Some(Value::Null) => false,
                Some(Value::String(d)) if d == "ASCENDING" => false,
                Some(Value::String(d)) if d == "DESCENDING" => true,
                Some(other) => {
                    return Err(invalid(format!(
                        "sorts[0].direction must be ASCENDING or DESCENDING, not {other}"
                    )))
                }
            };
            (p.clone(), descending)
        }
        other => {
            return Err(invalid(format!(
                "sorts[0] must be a property name or an object, not {}",
                kind(other)
            )))
        }
    };
    if !known(&property) {
        return Err(invalid(format!(
            "sorts[0]: property \"{property}\" does not exist on contacts"
        )));
    }
    Ok((property, descending))
}

/// Equality as the fake's search applies it: ASCII case-insensitive, surrounding whitespace
/// ignored.
fn same(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// Orders a stored value against a filter value: as numbers when both are, as epoch ms when
/// the stored one is a timestamp and the other a number (HubSpot filters dates in epoch ms),
/// else as case-folded strings.
fn compare(stored: &str, value: &str) -> Ordering {
    let (s, v) = (stored.trim(), value.trim());
    if let (Ok(a), Ok(b)) = (s.parse::<f64>(), v.parse::<f64>()) {
        return a.partial_cmp(&b).unwrap_or(Ordering::Equal);
    }
    if let (Ok(a), Ok(b)) = (chrono::DateTime::parse_from_rfc3339(s), v.parse::<i64>()) {
        return a.timestamp_millis().cmp(&b);
    }
    s.to_lowercase().cmp(&v.to_lowercase())
}

impl Test {
    fn holds(&self, stored: Option<&str>) -> bool {
        let stored = stored.filter(|s| !s.is_empty());
        let cmp = |v: &str| stored.map(|s| compare(s, v));
        match self {
            Test::Eq(v) => stored.is_some_and(|s| same(s, v)),
            Test::Neq(v) => !stored.is_some_and(|s| same(s, v)),
            Test::Lt(v) => cmp(v) == Some(Ordering::Less),
            Test::Lte(v) => matches!(cmp(v), Some(Ordering::Less | Ordering::Equal)),
            Test::Gt(v) => cmp(v) == Some(Ordering::Greater),
            Test::Gte(v) => matches!(cmp(v), Some(Ordering::Greater | Ordering::Equal)),
            Test::Between(lo, hi) => {
                matches!(cmp(lo), Some(Ordering::Greater | Ordering::Equal))
                    && matches!(cmp(hi), Some(Ordering::Less | Ordering::Equal))
            }
            Test::In(vs) => stored.is_some_and(|s| vs.iter().any(|v| same(s, v))),
            Test::NotIn(vs) => !stored.is_some_and(|s| vs.iter().any(|v| same(s, v))),
            Test::Has => stored.is_some(),
            Test::NotHas => stored.is_none(),
        }
    }
}

impl Search {
    fn matches(&self, c: &Contact) -> bool {
        let filtered = self.groups.is_empty()
            || self.groups.iter().any(|group| {
                group
                    .iter()
                    .all(|cond| cond.test.holds(c.value(&cond.property).as_deref()))
            });
        filtered
            && self.query.iter().all(|token| {
                SEARCHABLE.iter().any(|p| {
                    c.value(p)
                        .is_some_and(|v| v.to_lowercase().contains(token.as_str()))
                })
            })
    }

    /// The 200 answer over `contacts` (in id order):
    /// `{"total","results":[...],"paging"?:{"next":{"after"}}}`.
    pub(crate) fn run(&self, contacts: &BTreeMap<u64, Contact>) -> Value {
        let mut hits: Vec<&Contact> = contacts.values().filter(|c| self.matches(c)).collect();
        if let Some((property, descending)) = &self.sort {
            // Stable: ties stay in id order. Contacts without the property come last.
            hits.sort_by(|a, b| match (a.value(property), b.value(property)) {
                (Some(x), Some(y)) => {
                    let o = compare(&x, &y);
                    if *descending {
                        o.reverse()
                    } else {
                        o
                    }
                }
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            });
        }
        let total = hits.len();
        let results: Vec<Value> = hits
            .iter()
            .skip(self.after)
            .take(self.limit)
            .map(|c| c.to_json(&self.properties))
            .collect();
        let mut answer = json!({ "total": total, "results": results });
        let next = self.after.saturating_add(self.limit);
        if next < total {
            answer["paging"] = json!({ "next": { "after": next.to_string() } });
        }
        answer
    }
}

/// The filters of a body, read leniently for the request log: every filter object of every
/// group, in order, with the fields that are strings (or numbers).
pub(crate) fn record_filters(body: Option<&Value>) -> Vec<RecordedFilter> {
    let groups = body
        .and_then(|b| b.get("filterGroups"))
        .and_then(Value::as_array);
    let Some(groups) = groups else {
        return Vec::new();
    };
    groups
        .iter()
        .enumerate()
        .flat_map(|(g, group)| {
            group
                .get("filters")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(move |f| RecordedFilter {
                    group: g,
                    property: f.get("propertyName").and_then(scalar),
                    operator: f.get("operator").and_then(scalar),
                    value: f.get("value").and_then(scalar),
                })
        })
        .collect()
}

#[cfg(test)]
#[path = "search_tests.rs"]
mod tests;
