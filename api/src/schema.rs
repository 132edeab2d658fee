//! Validation and pruning of custom resources against their CRD's structural OpenAPI v3
//! schema: types, required fields, enums, bounds, and unknown fields (pruned, or kept under
//! `x-kubernetes-preserve-unknown-fields`).

use serde_json::Value;

use crate::error::FieldCause;

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn field(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// Checks `value` against `schema`, pruning unknown fields (reported in `unknown`) and
/// recording violations in `causes`. At the root, `apiVersion`, `kind` and `metadata` are
/// always allowed.
pub fn check(
    schema: &Value,
    value: &mut Value,
    path: &str,
    preserve_unknown: bool,
    causes: &mut Vec<FieldCause>,
    unknown: &mut Vec<String>,
) {
    let shown = if path.is_empty() { "<root>" } else { path };
    if value.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) && !path.is_empty() {
            causes.push(FieldCause::invalid(shown, "Invalid value: \"null\": fields may not be null"));
        }
        return;
    }
    let int_or_string = schema.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true);
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(value);
        let ok = actual == expected
            || (expected == "number" && actual == "integer")
            || (int_or_string && matches!(actual, "integer" | "string"));
        if !ok {
            causes.push(FieldCause::invalid(
                shown,
                format!("Invalid value: \"{actual}\": {shown} in body must be of type {expected}: \"{actual}\""),
            ));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        let list: Vec<String> = options.iter().map(|o| o.to_string()).collect();
        causes.push(FieldCause {
            reason: "FieldValueNotSupported",
            field: shown.into(),
            message: format!("Unsupported value: {value}: supported values: {}", list.join(", ")),
        });
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            causes.push(FieldCause::invalid(
                shown,
                format!("Invalid value: {n}: {shown} in body should be greater than or equal to {min}"),
            ));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            causes.push(FieldCause::invalid(
                shown,
                format!("Invalid value: {n}: {shown} in body should be less than or equal to {max}"),
            ));
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if schema.get("maxLength").and_then(Value::as_u64).is_some_and(|m| len > m) {
            causes.push(FieldCause {
                reason: "FieldValueTooLong",
                field: shown.into(),
                message: format!("Too long: may not be longer than {}", schema["maxLength"]),
            });
        }
        if schema.get("minLength").and_then(Value::as_u64).is_some_and(|m| len < m) {
            causes.push(FieldCause::invalid(
                shown,
                format!(
                    "Invalid value: {value}: {shown} in body should be at least {} chars long",
                    schema["minLength"]
                ),
            ));
        }
    }
    let preserve =
        preserve_unknown || schema.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool) == Some(true);
    match value {
        Value::Object(map) => {
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for r in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(r) {
                        causes.push(FieldCause::required(field(path, r)));
                    }
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let child = field(path, &key);
                let sub = properties.and_then(|p| p.get(&key)).or(additional);
                match (sub, map.get_mut(&key)) {
                    (Some(sub), Some(v)) => check(sub, v, &child, false, causes, unknown),
                    (None, _) if !preserve => {
                        map.remove(&key);
                        unknown.push(child);
                    }
                    _ => {}
                }
            }
        }
        Value::Array(items) => {
            if schema.get("maxItems").and_then(Value::as_u64).is_some_and(|m| items.len() as u64 > m) {
                causes.push(FieldCause {
                    reason: "FieldValueTooMany",
                    field: shown.into(),
                    message: format!("Too many: {}: must have at most {} items", items.len(), schema["maxItems"]),
                });
            }
            if schema.get("minItems").and_then(Value::as_u64).is_some_and(|m| (items.len() as u64) < m) {
                causes.push(FieldCause::invalid(
                    shown,
                    format!("Invalid value: {} items: must have at least {}", items.len(), schema["minItems"]),
                ));
            }
            if let Some(sub) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    check(sub, item, &format!("{path}[{i}]"), false, causes, unknown);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["size"], "properties": {
            "size": {"type": "integer", "minimum": 1, "maximum": 10},
            "color": {"type": "string", "enum": ["red", "blue"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
        }}}})
    }

    fn run(mut value: Value) -> (Value, Vec<FieldCause>, Vec<String>) {
        let (mut causes, mut unknown) = (Vec::new(), Vec::new());
        check(&schema(), &mut value, "", false, &mut causes, &mut unknown);
        (value, causes, unknown)
    }

    #[test]
    fn valid_objects_pass_and_unknown_fields_are_pruned() {
        let (value, causes, unknown) = run(
            json!({"apiVersion": "x/v1", "kind": "W", "metadata": {}, "spec": {"size": 3, "bogus": 1, "extra": {"any": 1}}}),
        );
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(unknown, vec!["spec.bogus"]);
        assert!(value["spec"].get("bogus").is_none());
        assert_eq!(value["spec"]["extra"]["any"], 1);
    }

    #[test]
    fn violations_name_their_fields() {
        let (_, causes, _) = run(json!({"spec": {"size": 11, "color": "green", "tags": [1]}}));
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, vec!["spec.color", "spec.size", "spec.tags[0]"]);
        let (_, causes, _) = run(json!({"spec": {}}));
        assert_eq!(causes[0].field, "spec.size");
        assert_eq!(causes[0].reason, "FieldValueRequired");
    }
}
