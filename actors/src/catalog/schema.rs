//! JSON Schema, the part of it customers' tool parameters and analysis schemas use: `type`
//! (one or a list), `properties`, `required`, `additionalProperties` (a boolean), `items`,
//! `enum`, `const`, `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`,
//! `minLength`, `maxLength`, `minItems`, `maxItems`, and the annotations `title`,
//! `description`, `default`, `examples`, `$schema`, `format` (an annotation, as draft
//! 2020-12 has it by default). A schema using any other keyword is refused
//! when it is configured ([`check`]), so nothing is silently not enforced; values are then
//! checked against it ([`validate`]) with the semantics of the specification (draft 2020-12),
//! which the tests compare with an independent implementation.

use serde_json::{Map, Value};

/// Keywords [`validate`] enforces or ignores as annotations.
const KEYWORDS: [&str; 21] = [
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "format",
];

const TYPES: [&str; 7] = [
    "object", "array", "string", "number", "integer", "boolean", "null",
];

/// Deepest nesting accepted.
const MAX_DEPTH: usize = 16;

/// Checks that `schema` is a schema of the supported part (see the module docs); the error
/// names the place (`/properties/when`) and what is wrong.
pub fn check(schema: &Value) -> Result<(), String> {
    check_at(schema, "", 0)
}

fn check_at(schema: &Value, at: &str, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("{at}: nested deeper than {MAX_DEPTH}"));
    }
    let Some(obj) = schema.as_object() else {
        return Err(format!("{}: a schema must be an object", place(at)));
    };
    for key in obj.keys() {
        if !KEYWORDS.contains(&key.as_str()) {
            return Err(format!(
                "{}: `{key}` is not supported (supported: {})",
                place(at),
                KEYWORDS.join(", ")
            ));
        }
    }
    if let Some(t) = obj.get("type") {
        let names: Vec<&Value> = match t {
            Value::Array(list) if !list.is_empty() => list.iter().collect(),
            Value::String(_) => vec![t],
            _ => return Err(format!("{}: `type` must be a type or a list", place(at))),
        };
        for n in names {
            if !n.as_str().is_some_and(|n| TYPES.contains(&n)) {
                return Err(format!("{}: unknown type {n}", place(at)));
            }
        }
    }
    if let Some(props) = obj.get("properties") {
        let Some(props) = props.as_object() else {
            return Err(format!("{}: `properties` must be an object", place(at)));
        };
        for (name, sub) in props {
            check_at(sub, &format!("{at}/properties/{name}"), depth + 1)?;
        }
    }
    if let Some(req) = obj.get("required") {
        if !req
            .as_array()
            .is_some_and(|r| r.iter().all(Value::is_string))
        {
            return Err(format!("{}: `required` must be a list of names", place(at)));
        }
    }
    if let Some(extra) = obj.get("additionalProperties") {
        if !extra.is_boolean() {
            return Err(format!(
                "{}: only true or false is supported for `additionalProperties`",
                place(at)
            ));
        }
    }
    if let Some(items) = obj.get("items") {
        check_at(items, &format!("{at}/items"), depth + 1)?;
    }
    if let Some(e) = obj.get("enum") {
        if e.as_array().is_none_or(|e| e.is_empty()) {
            return Err(format!("{}: `enum` must be a non-empty list", place(at)));
        }
    }
    for key in ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] {
        if obj.get(key).is_some_and(|v| !v.is_number()) {
            return Err(format!("{}: `{key}` must be a number", place(at)));
        }
    }
    for key in ["minLength", "maxLength", "minItems", "maxItems"] {
        if obj.get(key).is_some_and(|v| v.as_u64().is_none()) {
            return Err(format!(
                "{}: `{key}` must be a non-negative integer",
                place(at)
            ));
        }
    }
    Ok(())
}

fn place(at: &str) -> &str {
    if at.is_empty() {
        "schema"
    } else {
        at
    }
}

/// Checks `value` against `schema` (already [`check`]ed); the first violation found, with
/// where it is in the value (`/when: ...`).
pub fn validate(schema: &Value, value: &Value) -> Result<(), String> {
    validate_at(schema, value, "")
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_type(v: &Value, t: &str) -> bool {
    match t {
        // An integer is a number whose fraction is zero (1.0 is an integer).
        "integer" => v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "number" => v.is_number(),
        other => type_of(v) == other,
    }
}

/// JSON equality as the specification has it: numbers by value (1 == 1.0).
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => a == b,
    }
}

fn validate_at(schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let Some(s) = schema.as_object() else {
        return Ok(());
    };
    let here = || if at.is_empty() { "/" } else { at };
    if let Some(t) = s.get("type") {
        let ok = match t {
            Value::String(t) => is_type(value, t),
            Value::Array(ts) => ts
                .iter()
                .filter_map(Value::as_str)
                .any(|t| is_type(value, t)),
            _ => true,
        };
        if !ok {
            return Err(format!(
                "{}: expected {}, got {}",
                here(),
                match t {
                    Value::String(t) => t.clone(),
                    other => other.to_string(),
                },
                type_of(value)
            ));
        }
    }
    if let Some(options) = s.get("enum").and_then(Value::as_array) {
        if !options.iter().any(|o| equal(o, value)) {
            return Err(format!(
                "{}: must be one of {}",
                here(),
                Value::Array(options.clone())
            ));
        }
    }
    if let Some(c) = s.get("const") {
        if !equal(c, value) {
            return Err(format!("{}: must be {c}", here()));
        }
    }
    if let Some(n) = value.as_f64() {
        let bound = |k: &str| s.get(k).and_then(Value::as_f64);
        if bound("minimum").is_some_and(|m| n < m) {
            return Err(format!("{}: must be at least {}", here(), s["minimum"]));
        }
        if bound("maximum").is_some_and(|m| n > m) {
            return Err(format!("{}: must be at most {}", here(), s["maximum"]));
        }
        if bound("exclusiveMinimum").is_some_and(|m| n <= m) {
            return Err(format!(
                "{}: must be more than {}",
                here(),
                s["exclusiveMinimum"]
            ));
        }
        if bound("exclusiveMaximum").is_some_and(|m| n >= m) {
            return Err(format!(
                "{}: must be less than {}",
                here(),
                s["exclusiveMaximum"]
            ));
        }
    }
    if let Some(text) = value.as_str() {
        // Lengths count characters (code points), as the specification says.
        let len = text.chars().count() as u64;
        if s.get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len < m)
        {
            return Err(format!(
                "{}: shorter than {} characters",
                here(),
                s["minLength"]
            ));
        }
        if s.get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len > m)
        {
            return Err(format!(
                "{}: longer than {} characters",
                here(),
                s["maxLength"]
            ));
        }
    }
    if let Some(items) = value.as_array() {
        let len = items.len() as u64;
        if s.get("minItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| len < m)
        {
            return Err(format!("{}: fewer than {} items", here(), s["minItems"]));
        }
        if s.get("maxItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| len > m)
        {
            return Err(format!("{}: more than {} items", here(), s["maxItems"]));
        }
        if let Some(item) = s.get("items") {
            for (i, v) in items.iter().enumerate() {
                validate_at(item, v, &format!("{at}/{i}"))?;
            }
        }
    }
    if let Some(obj) = value.as_object() {
        validate_object(s, obj, at)?;
    }
    Ok(())
}

fn validate_object(
    s: &Map<String, Value>,
    obj: &Map<String, Value>,
    at: &str,
) -> Result<(), String> {
    let here = if at.is_empty() { "/" } else { at };
    if let Some(required) = s.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if !obj.contains_key(name) {
                return Err(format!("{here}: `{name}` is required"));
            }
        }
    }
    let props = s.get("properties").and_then(Value::as_object);
    for (name, v) in obj {
        match props.and_then(|p| p.get(name)) {
            Some(sub) => validate_at(sub, v, &format!("{at}/{name}"))?,
            None => {
                if s.get("additionalProperties") == Some(&Value::Bool(false)) {
                    return Err(format!("{here}: `{name}` is not allowed"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn booking() -> Value {
        json!({
            "type": "object",
            "properties": {
                "date": {"type": "string", "minLength": 10, "maxLength": 10},
                "party": {"type": "integer", "minimum": 1, "maximum": 12},
                "kind": {"enum": ["table", "bar"]},
                "notes": {"type": ["string", "null"]},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}
            },
            "required": ["date", "party"],
            "additionalProperties": false
        })
    }

    #[test]
    fn values_are_checked_with_the_place_of_the_first_violation() {
        let s = booking();
        check(&s).unwrap();
        assert!(validate(&s, &json!({"date": "2026-12-24", "party": 4})).is_ok());
        assert!(validate(&s, &json!({"date": "2026-12-24", "party": 4.0})).is_ok());
        let cases = [
            (json!({"party": 4}), "`date` is required"),
            (
                json!({"date": "2026-12-24", "party": 0}),
                "/party: must be at least 1",
            ),
            (
                json!({"date": "2026-12-24", "party": 2.5}),
                "/party: expected integer",
            ),
            (
                json!({"date": "soon", "party": 2}),
                "/date: shorter than 10",
            ),
            (
                json!({"date": "2026-12-24", "party": 2, "kind": "booth"}),
                "/kind: must be one of",
            ),
            (
                json!({"date": "2026-12-24", "party": 2, "vip": true}),
                "`vip` is not allowed",
            ),
            (
                json!({"date": "2026-12-24", "party": 2, "tags": ["a", 1]}),
                "/tags/1: expected string",
            ),
            (json!([1]), "/: expected object"),
        ];
        for (value, says) in cases {
            let err = validate(&s, &value).unwrap_err();
            assert!(err.contains(says), "{value}: {err}");
        }
    }

    #[test]
    fn schemas_with_unsupported_keywords_are_refused_when_configured() {
        assert!(check(&json!({"type": "object", "patternProperties": {}}))
            .unwrap_err()
            .contains("patternProperties"));
        assert!(check(&json!({"properties": {"a": {"$ref": "#/x"}}}))
            .unwrap_err()
            .contains("/properties/a"));
        assert!(check(&json!({"type": "float"})).is_err());
        assert!(check(&json!({"additionalProperties": {"type": "string"}})).is_err());
        assert!(check(&json!({"required": "a"})).is_err());
        assert!(check(&json!("object")).is_err());
    }
}
