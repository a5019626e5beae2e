//! Reading request bodies the way Google's proto-JSON front end does (section 5): first the
//! parse (unknown names, wrong types: "Invalid JSON payload received ..." / "Invalid value at
//! ..."), then the semantic checks ("* EmbedContentRequest.content: ..."). Also the lenient
//! reading that fills the request log, which must work on bodies the checks refuse.

use serde_json::{Map, Value};

use super::error::GoogleError;
use super::{EmbedMethod, RecordedItem};

/// The documented `taskType` values.
pub(crate) const TASK_TYPES: [&str; 9] = [
    "TASK_TYPE_UNSPECIFIED",
    "RETRIEVAL_QUERY",
    "RETRIEVAL_DOCUMENT",
    "SEMANTIC_SIMILARITY",
    "CLASSIFICATION",
    "CLUSTERING",
    "QUESTION_ANSWERING",
    "FACT_VERIFICATION",
    "CODE_RETRIEVAL_QUERY",
];

/// Fields of an `EmbedContentRequest`, camelCase only (see the module doc of `google`).
const ITEM_FIELDS: [&str; 5] = [
    "model",
    "content",
    "taskType",
    "title",
    "outputDimensionality",
];

/// Fields of a `BatchEmbedContentsRequest`.
const BATCH_FIELDS: [&str; 2] = ["requests", "model"];

const PROTO: &str = "type.googleapis.com/google.ai.generativelanguage.v1beta";

/// One request that passed every check: what to embed and how many values to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Valid {
    pub(crate) text: String,
    pub(crate) dims: usize,
}

/// What the parse stage read from one embedding request.
struct Parsed {
    model: Option<String>,
    /// `None`: no `content`. Inner `None`: a part without `text`.
    parts: Option<Vec<Option<String>>>,
    dims: Option<i64>,
}

/// Where a request sits in the body: `json` for parse errors (`requests[2]`, or empty at the
/// root), `semantic` for semantic ones (`BatchEmbedContentsRequest.requests[2]`).
struct At {
    json: String,
    semantic: String,
}

impl At {
    fn field(&self, name: &str) -> String {
        if self.json.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.json)
        }
    }
}

/// Checks a body against the model of the path (`model`, whose full vector has `native_dims`
/// values). `body` is `None` when it was not JSON.
pub(crate) fn validate(
    method: EmbedMethod,
    model: &str,
    native_dims: usize,
    max_batch: usize,
    body: Option<&Value>,
) -> Result<Vec<Valid>, GoogleError> {
    let Some(body) = body else {
        return Err(GoogleError::bad_request(
            "",
            "Invalid JSON payload received. Unexpected token.".to_owned(),
        ));
    };
    let Value::Object(root) = body else {
        return Err(GoogleError::bad_request(
            "",
            "Invalid JSON payload received. Unknown name \"\": Root element must be a message."
                .to_owned(),
        ));
    };
    let full_model = format!("models/{model}");
    match method {
        EmbedMethod::EmbedContent => {
            let at = At {
                json: String::new(),
                semantic: "EmbedContentRequest".to_owned(),
            };
            let parsed = parse_item(root, &at)?;
            Ok(vec![check_item(
                parsed,
                &at,
                &full_model,
                false,
                native_dims,
            )?])
        }
        EmbedMethod::BatchEmbedContents => {
            check_names(root, &BATCH_FIELDS, "")?;
            let items = match root.get("requests") {
                None | Some(Value::Null) => &[][..],
                Some(Value::Array(items)) => items.as_slice(),
                Some(other) => {
                    return Err(invalid_value(
                        "requests",
                        &format!("{PROTO}.EmbedContentRequest"),
                        other,
                    ))
                }
            };
            let top_model = string_field(root, "model", "model")?;
            let mut parsed = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let at = At {
                    json: format!("requests[{i}]"),
                    semantic: format!("BatchEmbedContentsRequest.requests[{i}]"),
                };
                let Value::Object(obj) = item else {
                    return Err(invalid_value(
                        &at.json,
                        &format!("{PROTO}.EmbedContentRequest"),
                        item,
                    ));
                };
                parsed.push((parse_item(obj, &at)?, at));
            }
            if let Some(m) = top_model {
                check_model(&m, "BatchEmbedContentsRequest", &full_model)?;
            }
            if parsed.is_empty() {
                return Err(GoogleError::bad_request(
                    "requests",
                    "* BatchEmbedContentsRequest.requests: requests is not specified\n".to_owned(),
                ));
            }
            if parsed.len() > max_batch {
                return Err(GoogleError::bad_request(
                    "requests",
                    format!(
                        "* BatchEmbedContentsRequest.requests: at most {max_batch} requests can be in one batch\n"
                    ),
                ));
            }
            parsed
                .into_iter()
                .map(|(p, at)| check_item(p, &at, &full_model, true, native_dims))
                .collect()
        }
    }
}

/// The parse stage of one `EmbedContentRequest`.
fn parse_item(obj: &Map<String, Value>, at: &At) -> Result<Parsed, GoogleError> {
    check_names(obj, &ITEM_FIELDS, &at.json)?;
    let model = string_field(obj, "model", &at.field("model"))?;
    let parts = match obj.get("content") {
        None | Some(Value::Null) => None,
        Some(Value::Object(content)) => Some(parse_content(content, &at.field("content"))?),
        Some(other) => {
            return Err(invalid_value(
                &at.field("content"),
                &format!("{PROTO}.Content"),
                other,
            ))
        }
    };
    match obj.get("taskType") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if TASK_TYPES.contains(&t.as_str()) => {}
        Some(other) => {
            return Err(invalid_value(
                &at.field("task_type"),
                &format!("{PROTO}.TaskType"),
                other,
            ))
        }
    }
    string_field(obj, "title", &at.field("title"))?;
    let dims = match obj.get("outputDimensionality") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64().filter(|d| i32::try_from(*d).is_ok()) {
            Some(d) => Some(d),
            None => {
                return Err(invalid_value(
                    &at.field("output_dimensionality"),
                    "TYPE_INT32",
                    v,
                ))
            }
        },
    };
    Ok(Parsed { model, parts, dims })
}

fn parse_content(
    content: &Map<String, Value>,
    json: &str,
) -> Result<Vec<Option<String>>, GoogleError> {
    check_names(content, &["parts", "role"], json)?;
    string_field(content, "role", &format!("{json}.role"))?;
    let parts = match content.get("parts") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(parts)) => parts,
        Some(other) => {
            return Err(invalid_value(
                &format!("{json}.parts"),
                &format!("{PROTO}.Part"),
                other,
            ))
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let at = format!("{json}.parts[{j}]");
        let Value::Object(part) = part else {
            return Err(invalid_value(&at, &format!("{PROTO}.Part"), part));
        };
        // Only text parts: the fake's models are text-only.
        check_names(part, &["text"], &at)?;
        out.push(string_field(part, "text", &format!("{at}.text"))?);
    }
    Ok(out)
}

/// The semantic stage of one request.
fn check_item(
    parsed: Parsed,
    at: &At,
    full_model: &str,
    model_required: bool,
    native_dims: usize,
) -> Result<Valid, GoogleError> {
    match &parsed.model {
        Some(m) => check_model(m, &at.semantic, full_model)?,
        None if model_required => {
            return Err(GoogleError::bad_request(
                &at.field("model"),
                format!("* {}.model: model is not specified\n", at.semantic),
            ))
        }
        None => {}
    }
    let parts = parsed.parts.unwrap_or_default();
    if parts.is_empty() {
        return Err(GoogleError::bad_request(
            &at.field("content"),
            format!("* {}.content: contents is not specified\n", at.semantic),
        ));
    }
    let mut texts = Vec::with_capacity(parts.len());
    for part in parts {
        match part {
            Some(t) if !t.is_empty() => texts.push(t),
            _ => {
                return Err(GoogleError::bad_request(
                    &at.field("content"),
                    format!("{}.content contains an empty Part.", at.semantic),
                ))
            }
        }
    }
    let dims = match parsed.dims {
        None | Some(0) => native_dims,
        Some(d) => match usize::try_from(d) {
            Ok(d) if d <= native_dims => d,
            _ => {
                return Err(GoogleError::bad_request(
                    &at.field("output_dimensionality"),
                    format!(
                    "* {}.output_dimensionality: must be between 1 and {native_dims}, got {d}\n",
                    at.semantic
                ),
                ))
            }
        },
    };
    Ok(Valid {
        text: texts.join("\n"),
        dims,
    })
}

fn check_model(model: &str, semantic: &str, full_model: &str) -> Result<(), GoogleError> {
    let well_formed = model
        .strip_prefix("models/")
        .is_some_and(|name| !name.is_empty() && !name.contains('/'));
    if !well_formed {
        return Err(GoogleError::bad_request(
            "model",
            format!("* {semantic}.model: unexpected model name format\n"),
        ));
    }
    if model != full_model {
        return Err(GoogleError::bad_request(
            "model",
            format!(
                "* {semantic}.model: the model of every request must be the model of the call, {full_model}, got {model}\n"
            ),
        ));
    }
    Ok(())
}

/// Refuses a name outside `known`, as the proto-JSON parser does.
fn check_names(obj: &Map<String, Value>, known: &[&str], json: &str) -> Result<(), GoogleError> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(name) => {
            let at = if json.is_empty() {
                String::new()
            } else {
                format!(" at '{json}'")
            };
            Err(GoogleError::bad_request(
                json,
                format!("Invalid JSON payload received. Unknown name \"{name}\"{at}: Cannot find field."),
            ))
        }
    }
}

/// An optional string field.
fn string_field(
    obj: &Map<String, Value>,
    name: &str,
    path: &str,
) -> Result<Option<String>, GoogleError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid_value(path, "TYPE_STRING", other)),
    }
}

fn invalid_value(path: &str, kind: &str, value: &Value) -> GoogleError {
    GoogleError::bad_request(path, format!("Invalid value at '{path}' ({kind}), {value}"))
}

/// The embedding requests of a body as far as they can be read, for the log.
pub(crate) fn record_items(method: EmbedMethod, body: Option<&Value>) -> Vec<RecordedItem> {
    let Some(body) = body else {
        return Vec::new();
    };
    match method {
        EmbedMethod::EmbedContent => vec![record_item(body)],
        EmbedMethod::BatchEmbedContents => body
            .get("requests")
            .and_then(Value::as_array)
            .map(|items| items.iter().map(record_item).collect())
            .unwrap_or_default(),
    }
}

fn record_item(v: &Value) -> RecordedItem {
    let string = |name: &str| v.get(name).and_then(Value::as_str).map(str::to_owned);
    let text = v
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n")
        });
    RecordedItem {
        model: string("model"),
        text,
        task_type: string("taskType"),
        title: string("title"),
        output_dimensionality: v.get("outputDimensionality").and_then(Value::as_i64),
    }
}
