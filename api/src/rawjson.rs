//! Stored objects are JSON that keel itself wrote; serving them mostly means copying them.
//! This finds the top-level `metadata` object without decoding the rest, to splice the
//! resourceVersion in, and reads just the metadata selectors need.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Deserialize)]
pub struct Light<'a> {
    #[serde(borrow, default)]
    pub metadata: LightMeta<'a>,
}

#[derive(Deserialize, Default)]
pub struct LightMeta<'a> {
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default)]
    pub namespace: Cow<'a, str>,
    #[serde(default)]
    pub labels: Option<Map<String, Value>>,
}

fn skip_ws(json: &[u8], mut at: usize) -> usize {
    while at < json.len() && json[at].is_ascii_whitespace() {
        at += 1;
    }
    at
}

/// The index just past the string starting at `at` (which is a `"`).
fn skip_string(json: &[u8], mut at: usize) -> Option<usize> {
    at += 1;
    while at < json.len() {
        match json[at] {
            b'\\' => at += 2,
            b'"' => return Some(at + 1),
            _ => at += 1,
        }
    }
    None
}

/// The index just past the value starting at `at`.
fn skip_value(json: &[u8], at: usize) -> Option<usize> {
    let at = skip_ws(json, at);
    match *json.get(at)? {
        b'"' => skip_string(json, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            while i < json.len() {
                match json[i] {
                    b'"' => {
                        i = skip_string(json, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let mut i = at;
            while i < json.len() && !matches!(json[i], b',' | b'}' | b']') {
                i += 1;
            }
            Some(i)
        }
    }
}

/// Where the members of the top-level `metadata` object begin (just past its `{`).
fn metadata_members(json: &[u8]) -> Option<usize> {
    let mut at = skip_ws(json, 0);
    if json.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    loop {
        at = skip_ws(json, at);
        match json.get(at)? {
            b'}' => return None,
            b',' => {
                at += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let key_end = skip_string(json, at)?;
        let key = &json[at + 1..key_end - 1];
        at = skip_ws(json, key_end);
        if json.get(at) != Some(&b':') {
            return None;
        }
        at = skip_ws(json, at + 1);
        if key == b"metadata" && json.get(at) == Some(&b'{') {
            return Some(at + 1);
        }
        at = skip_value(json, at)?;
    }
}

/// The object with `metadata.resourceVersion` set to `revision`, as bytes.
pub fn with_resource_version(json: &[u8], revision: i64) -> Option<Vec<u8>> {
    let members = metadata_members(json)?;
    let empty = json.get(skip_ws(json, members)) == Some(&b'}');
    let field = format!("\"resourceVersion\":\"{revision}\"{}", if empty { "" } else { "," });
    let mut out = Vec::with_capacity(json.len() + field.len());
    out.extend_from_slice(&json[..members]);
    out.extend_from_slice(field.as_bytes());
    out.extend_from_slice(&json[members..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_revision_lands_in_the_top_level_metadata() {
        let object = json!({"apiVersion": "v1", "data": {"x": "\"metadata\":{", "y": "}"}, "items": [{"metadata": {"a": 1}}],
            "kind": "ConfigMap", "metadata": {"name": "n"}, "spec": {"template": {"metadata": {}}}});
        let bytes = serde_json::to_vec(&object).unwrap();
        let spliced: Value = serde_json::from_slice(&with_resource_version(&bytes, 42).unwrap()).unwrap();
        let mut expected = object.clone();
        expected["metadata"]["resourceVersion"] = json!("42");
        assert_eq!(spliced, expected);
        let empty: Value = serde_json::from_slice(&with_resource_version(br#"{"metadata": {}}"#, 7).unwrap()).unwrap();
        assert_eq!(empty, json!({"metadata": {"resourceVersion": "7"}}));
        assert!(with_resource_version(br#"{"kind": "x"}"#, 1).is_none());
        assert!(with_resource_version(b"not json", 1).is_none());
    }

    #[test]
    fn light_metadata_reads_only_what_selectors_need() {
        let light: Light = serde_json::from_slice(
            br#"{"metadata": {"name": "a", "labels": {"k": "v"}, "uid": "x"}, "spec": {"big": [1, 2, 3]}}"#,
        )
        .unwrap();
        assert_eq!(light.metadata.name, "a");
        assert_eq!(light.metadata.labels.unwrap()["k"], "v");
    }
}
