//! Objects as JSON: reading and setting the metadata every kind shares, and the validation
//! kube-apiserver applies to it (names, labels, annotations).

use serde_json::{Map, Value};

use crate::error::FieldCause;

pub fn meta(object: &Value) -> Option<&Map<String, Value>> {
    object.get("metadata")?.as_object()
}

pub fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = Value::Object(Map::new());
    }
    match object.get_mut("metadata") {
        Some(Value::Object(map)) => map,
        _ => unreachable!("metadata was just made an object"),
    }
}

pub fn meta_str<'a>(object: &'a Value, field: &str) -> &'a str {
    meta(object).and_then(|m| m.get(field)).and_then(Value::as_str).unwrap_or("")
}

pub fn name(object: &Value) -> &str {
    meta_str(object, "name")
}

pub fn namespace(object: &Value) -> &str {
    meta_str(object, "namespace")
}

pub fn labels(object: &Value) -> Option<&Map<String, Value>> {
    meta(object)?.get("labels")?.as_object()
}

pub fn finalizers(object: &Value) -> Vec<String> {
    meta(object)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|f| f.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

pub fn is_terminating(object: &Value) -> bool {
    meta(object).is_some_and(|m| m.get("deletionTimestamp").is_some_and(|t| !t.is_null()))
}

/// The RFC 3339 form Kubernetes writes timestamps in (seconds, UTC).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Human age, as kubectl and kube-apiserver's tables print it (`5s`, `3m2s`, `4h`, `12d`).
pub fn age(timestamp: &str) -> String {
    let Ok(then) = timestamp.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let seconds = (jiff::Timestamp::now().as_second() - then.as_second()).max(0);
    human_duration(seconds)
}

pub fn human_duration(seconds: i64) -> String {
    let (m, h, d) = (seconds / 60, seconds / 3600, seconds / 86400);
    if seconds < 120 {
        format!("{seconds}s")
    } else if m < 10 {
        if seconds % 60 == 0 { format!("{m}m") } else { format!("{m}m{}s", seconds % 60) }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 { format!("{h}h") } else { format!("{h}h{}m", m % 60) }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        if h % 24 == 0 { format!("{d}d") } else { format!("{d}d{}h", h % 24) }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

/// Random lowercase alphanumerics without vowels, as `generateName` suffixes are made.
pub fn random_suffix(len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let uuid = uuid::Uuid::new_v4();
    uuid.as_bytes().iter().take(len).map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

fn is_dns_label_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
}

/// RFC 1123 label: at most 63 lowercase alphanumerics or '-', alphanumeric at both ends.
pub fn dns1123_label(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    let ok = value.chars().all(is_dns_label_char) && !value.starts_with('-') && !value.ends_with('-');
    if !ok {
        return Err(format!(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?'); got {value:?}"
        ));
    }
    Ok(())
}

/// RFC 1035 label (services): an RFC 1123 label that starts with a letter.
pub fn dns1035_label(value: &str) -> Result<(), String> {
    dns1123_label(value)?;
    if !value.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?'); got {value:?}"
        ));
    }
    Ok(())
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn dns1123_subdomain(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 253 {
        return Err("must be no more than 253 characters".into());
    }
    if value.split('.').any(|part| dns1123_label(part).is_err()) {
        return Err(format!(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*'); got {value:?}"
        ));
    }
    Ok(())
}

/// Path-segment names (RBAC and a few others): anything but `.`, `..`, `/` and `%`.
pub fn path_segment_name(value: &str) -> Result<(), String> {
    if value.is_empty() || value == "." || value == ".." || value.contains('/') || value.contains('%') {
        return Err(format!("may not be '.' or '..' and may not contain '/' or '%': {value:?}"));
    }
    Ok(())
}

fn qualified_name_part(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Label and annotation keys: `[prefix/]name`, prefix a DNS subdomain.
pub fn qualified_name(value: &str) -> Result<(), String> {
    let (prefix, name) = match value.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, value),
    };
    if let Some(prefix) = prefix {
        dns1123_subdomain(prefix).map_err(|e| format!("prefix part {e}"))?;
    }
    if !qualified_name_part(name) {
        return Err(format!(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') and be no more than 63 characters; got {value:?}"
        ));
    }
    Ok(())
}

pub fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || qualified_name_part(value) {
        return Ok(());
    }
    Err(format!(
        "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?') and be no more than 63 characters; got {value:?}"
    ))
}

/// Total size of all annotations, as kube-apiserver limits it.
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

/// Validates the metadata every object has; `name_rule` is the kind's name format.
pub fn validate_meta(object: &Value, namespaced: bool, name_rule: fn(&str) -> Result<(), String>) -> Vec<FieldCause> {
    let mut causes = Vec::new();
    let Some(meta) = meta(object) else {
        causes.push(FieldCause::required("metadata"));
        return causes;
    };
    let name = meta.get("name").and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        causes.push(FieldCause::required("metadata.name"));
    } else if let Err(e) = name_rule(name) {
        causes.push(FieldCause::invalid("metadata.name", format!("Invalid value: {name:?}: {e}")));
    }
    let namespace = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
    if namespaced && namespace.is_empty() {
        causes.push(FieldCause::required("metadata.namespace"));
    }
    if !namespaced && !namespace.is_empty() {
        causes.push(FieldCause::invalid("metadata.namespace", "not allowed on this type"));
    }
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (key, value) in labels {
            if let Err(e) = qualified_name(key) {
                causes.push(FieldCause::invalid("metadata.labels", format!("Invalid value: {key:?}: {e}")));
            }
            match value.as_str() {
                Some(v) => {
                    if let Err(e) = label_value(v) {
                        causes.push(FieldCause::invalid(format!("metadata.labels.{key}"), e));
                    }
                }
                None => causes.push(FieldCause::invalid(format!("metadata.labels.{key}"), "must be a string")),
            }
        }
    }
    if let Some(annotations) = meta.get("annotations").and_then(Value::as_object) {
        let mut total = 0;
        for (key, value) in annotations {
            total += key.len() + value.as_str().map(str::len).unwrap_or(0);
            if let Err(e) = qualified_name(&key.to_ascii_lowercase()) {
                causes.push(FieldCause::invalid("metadata.annotations", format!("Invalid value: {key:?}: {e}")));
            }
        }
        if total > ANNOTATIONS_MAX_BYTES {
            causes.push(FieldCause {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".into(),
                message: format!("Too long: must have at most {ANNOTATIONS_MAX_BYTES} bytes"),
            });
        }
    }
    if let Some(owners) = meta.get("ownerReferences").and_then(Value::as_array) {
        for (i, owner) in owners.iter().enumerate() {
            for field in ["apiVersion", "kind", "name", "uid"] {
                if owner.get(field).and_then(Value::as_str).unwrap_or("").is_empty() {
                    causes.push(FieldCause::required(format!("metadata.ownerReferences[{i}].{field}")));
                }
            }
        }
        let controllers = owners.iter().filter(|o| o.get("controller").and_then(Value::as_bool) == Some(true)).count();
        if controllers > 1 {
            causes.push(FieldCause::invalid(
                "metadata.ownerReferences",
                "Only one reference can have Controller set to true",
            ));
        }
    }
    causes
}

/// Fields of `submitted` that `decoded` (the same body after a pass through the kind's type)
/// lost: the fields the kind does not have. Nulls do not count; they mean "unset".
pub fn unknown_fields(submitted: &Value, decoded: &Value, out: &mut Vec<String>) {
    lost_fields(submitted, decoded, &mut Vec::new(), out);
}

enum Step<'a> {
    Field(&'a str),
    Index(usize),
}

/// The walk behind [`unknown_fields`]. A path is written out only for a field that was lost:
/// nearly every request loses none, and formatting every field's path cost more than the walk.
fn lost_fields<'a>(submitted: &'a Value, decoded: &Value, trail: &mut Vec<Step<'a>>, out: &mut Vec<String>) {
    match (submitted, decoded) {
        (Value::Object(sub), Value::Object(dec)) => {
            for (key, value) in sub {
                if value.is_null() {
                    continue;
                }
                trail.push(Step::Field(key));
                match dec.get(key) {
                    Some(d) => lost_fields(value, d, trail, out),
                    None => out.push(render_path(trail)),
                }
                trail.pop();
            }
        }
        (Value::Array(sub), Value::Array(dec)) => {
            for (i, (s, d)) in sub.iter().zip(dec).enumerate() {
                trail.push(Step::Index(i));
                lost_fields(s, d, trail, out);
                trail.pop();
            }
        }
        _ => {}
    }
}

/// `spec.containers[0].bogus`, as kube names a field in its messages.
fn render_path(trail: &[Step<'_>]) -> String {
    let mut path = String::new();
    for step in trail {
        match step {
            Step::Field(key) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Step::Index(i) => path.push_str(&format!("[{i}]")),
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names() {
        assert!(dns1123_subdomain("web-1.example").is_ok());
        assert!(dns1123_subdomain("Web").is_err());
        assert!(dns1123_subdomain("-web").is_err());
        assert!(dns1123_subdomain(&"a".repeat(254)).is_err());
        assert!(dns1123_label("a.b").is_err());
        assert!(dns1035_label("1abc").is_err());
        assert!(dns1035_label("abc-1").is_ok());
    }

    #[test]
    fn labels_are_checked() {
        assert!(qualified_name("app.kubernetes.io/name").is_ok());
        assert!(qualified_name("app").is_ok());
        assert!(qualified_name("-app").is_err());
        assert!(qualified_name("Bad_Prefix/app").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("v1.2_3").is_ok());
        assert!(label_value("bad value").is_err());
        let object = json!({"metadata": {"name": "x", "namespace": "d", "labels": {"a": "b c"}}});
        let causes = validate_meta(&object, true, dns1123_subdomain);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "metadata.labels.a");
    }

    #[test]
    fn unknown_fields_are_found() {
        let submitted =
            json!({"spec": {"replicas": 1, "bogus": 2, "template": {"x": null}}, "items": [{"a": 1, "b": 2}]});
        let decoded = json!({"spec": {"replicas": 1, "template": {}}, "items": [{"a": 1}]});
        let mut out = Vec::new();
        unknown_fields(&submitted, &decoded, &mut out);
        assert_eq!(out, vec!["items[0].b", "spec.bogus"]);
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(185), "3m5s");
        assert_eq!(human_duration(3600 * 5 + 60), "5h1m");
        assert_eq!(human_duration(86400 * 3), "3d");
    }
}
