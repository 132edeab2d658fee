//! The patch formats of the Kubernetes API: JSON patch (RFC 6902), JSON merge patch
//! (RFC 7386) and strategic merge patch, which merges lists element by element using each
//! list's merge key and understands the `$patch`, `$retainKeys`, `$setElementOrder` and
//! `$deleteFromPrimitiveList` directives kubectl sends.

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    StrategicMerge,
    Apply,
}

impl PatchType {
    pub fn from_content_type(content_type: &str) -> Option<PatchType> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::StrategicMerge),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, String> {
    let patch: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
    let mut out = target.clone();
    json_patch::patch(&mut out, &patch).map_err(|e| format!("the JSON patch could not be applied: {e}"))?;
    Ok(out)
}

pub fn merge_patch(target: &Value, patch: &Value) -> Result<Value, String> {
    if !patch.is_object() {
        return Err("a merge patch must be a JSON object".into());
    }
    let mut out = target.clone();
    json_patch::merge(&mut out, patch);
    Ok(out)
}

/// How a list at a path merges: by a key field, as a set of primitives, or not at all.
#[derive(Debug, PartialEq)]
enum ListStrategy {
    MergeKey(&'static str),
    PrimitiveSet,
    Replace,
}

/// The lists kube-apiserver's types mark `patchStrategy: merge`, by the path of field names
/// leading to them (most specific first).
fn list_strategy(path: &[String], kind: &str) -> ListStrategy {
    let joined = path.join(".");
    let last = path.last().map(String::as_str).unwrap_or("");
    let parent = if path.len() >= 2 { path[path.len() - 2].as_str() } else { "" };
    match last {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "imagePullSecrets"
        | "env"
        | "resourceClaims"
        | "schedulingGates" => ListStrategy::MergeKey("name"),
        "ports" if matches!(parent, "containers" | "initContainers" | "ephemeralContainers") => {
            ListStrategy::MergeKey("containerPort")
        }
        "ports" if joined == "spec.ports" && kind == "Service" => ListStrategy::MergeKey("port"),
        "volumeMounts" => ListStrategy::MergeKey("mountPath"),
        "volumeDevices" => ListStrategy::MergeKey("devicePath"),
        "hostAliases" => ListStrategy::MergeKey("ip"),
        "topologySpreadConstraints" => ListStrategy::MergeKey("topologyKey"),
        "conditions" if parent == "status" => ListStrategy::MergeKey("type"),
        "addresses" if joined == "status.addresses" => ListStrategy::MergeKey("type"),
        "ownerReferences" if parent == "metadata" => ListStrategy::MergeKey("uid"),
        "finalizers" if parent == "metadata" => ListStrategy::PrimitiveSet,
        _ => ListStrategy::Replace,
    }
}

/// The merge key of the list at `path`, for the OpenAPI document (`x-kubernetes-patch-merge-key`).
pub fn merge_key_for(path: &[String], kind: &str) -> Option<&'static str> {
    match list_strategy(path, kind) {
        ListStrategy::MergeKey(key) => Some(key),
        _ => None,
    }
}

pub fn strategic_merge_patch(target: &Value, patch: &Value, kind: &str) -> Result<Value, String> {
    let (Value::Object(original), Value::Object(patch)) = (target, patch) else {
        return Err("a strategic merge patch must be a JSON object".into());
    };
    let mut path = Vec::new();
    merge_map(original, patch, &mut path, kind).map(Value::Object)
}

fn merge_map(
    original: &Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
    kind: &str,
) -> Result<Map<String, Value>, String> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch.clone();
            replaced.remove("$patch");
            return Ok(replaced);
        }
        Some("delete") => return Ok(Map::new()),
        Some(other) => return Err(format!("unknown patch type {other:?} in a map")),
        None => {}
    }
    let mut out = original.clone();
    if let Some(retain) = patch.get("$retainKeys") {
        let keep: Vec<&str> =
            retain.as_array().ok_or("$retainKeys must be a list")?.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (key, value) in patch {
        if key == "$retainKeys" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = value.as_array().ok_or("$deleteFromPrimitiveList needs a list")?;
            if let Some(Value::Array(items)) = out.get_mut(field) {
                items.retain(|item| !remove.contains(item));
            }
            continue;
        }
        if key.starts_with("$setElementOrder/") {
            continue;
        }
        if key.starts_with('$') {
            return Err(format!("unknown directive {key:?}"));
        }
        if value.is_null() {
            out.remove(key);
            continue;
        }
        path.push(key.clone());
        let merged = match (out.get(key), value) {
            (Some(Value::Object(o)), Value::Object(p)) => Value::Object(merge_map(o, p, path, kind)?),
            (_, Value::Object(p)) => Value::Object(merge_map(&Map::new(), p, path, kind)?),
            (existing, Value::Array(p)) => {
                let empty = Vec::new();
                let o = match existing {
                    Some(Value::Array(o)) => o,
                    _ => &empty,
                };
                Value::Array(merge_list(o, p, path, kind)?)
            }
            (_, v) => v.clone(),
        };
        path.pop();
        out.insert(key.clone(), merged);
    }
    // Apply element orders last, once every list has its final members.
    for (key, order) in patch {
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            path.push(field.to_string());
            let strategy = list_strategy(path, kind);
            path.pop();
            if let (Some(Value::Array(items)), Some(order)) = (out.get_mut(field), order.as_array()) {
                reorder(items, order, &strategy);
            }
        }
    }
    Ok(out)
}

fn element_key<'a>(item: &'a Value, strategy: &ListStrategy) -> Option<&'a Value> {
    match strategy {
        ListStrategy::MergeKey(key) => item.get(*key),
        ListStrategy::PrimitiveSet => Some(item),
        ListStrategy::Replace => None,
    }
}

fn reorder(items: &mut [Value], order: &[Value], strategy: &ListStrategy) {
    let position = |item: &Value| {
        let key = element_key(item, strategy);
        order
            .iter()
            .position(|o| match strategy {
                ListStrategy::MergeKey(k) => o.get(*k) == key,
                _ => Some(o) == key,
            })
            .unwrap_or(usize::MAX)
    };
    items.sort_by_key(position);
}

fn merge_list(original: &[Value], patch: &[Value], path: &mut Vec<String>, kind: &str) -> Result<Vec<Value>, String> {
    let strategy = list_strategy(path, kind);
    if patch.iter().any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace")) {
        return Ok(patch.iter().filter(|p| p.get("$patch").is_none()).cloned().collect());
    }
    match strategy {
        ListStrategy::Replace => Ok(patch.to_vec()),
        ListStrategy::PrimitiveSet => {
            let mut out = original.to_vec();
            for item in patch {
                if !out.contains(item) {
                    out.push(item.clone());
                }
            }
            Ok(out)
        }
        ListStrategy::MergeKey(key) => {
            let mut out = original.to_vec();
            for item in patch {
                let Some(id) = item.get(key) else {
                    return Err(format!("map in a list at {} does not contain its merge key {key:?}", path.join(".")));
                };
                let existing = out.iter().position(|o| o.get(key) == Some(id));
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (existing, delete) {
                    (Some(i), true) => {
                        out.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => {
                        let (Value::Object(o), Value::Object(p)) = (&out[i], item) else {
                            out[i] = item.clone();
                            continue;
                        };
                        out[i] = Value::Object(merge_map(o, p, path, kind)?);
                    }
                    (None, false) => {
                        let Value::Object(p) = item else {
                            out.push(item.clone());
                            continue;
                        };
                        out.push(Value::Object(merge_map(&Map::new(), p, path, kind)?));
                    }
                }
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "app", "image": "a:1", "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 80}]},
            {"name": "side", "image": "s:1"}
        ]}}}, "metadata": {"finalizers": ["x"], "labels": {"a": "b"}}})
    }

    #[test]
    fn containers_merge_by_name() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "a:2"}]}}}});
        let out = strategic_merge_patch(&deployment(), &patch, "Deployment").unwrap();
        let containers = out.pointer("/spec/template/spec/containers").unwrap().as_array().unwrap();
        assert_eq!(containers.len(), 2);
        assert_eq!(containers[0]["image"], "a:2");
        assert_eq!(containers[0]["env"][0]["value"], "1");
    }

    #[test]
    fn directives() {
        let patch = json!({
            "metadata": {"labels": {"a": null, "c": "d"}, "finalizers": ["y"]},
            "spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "side"}, {"name": "app"}],
                "containers": [{"name": "app", "$patch": "delete"}, {"name": "new", "image": "n"}]
            }}}
        });
        let out = strategic_merge_patch(&deployment(), &patch, "Deployment").unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"c": "d"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
        let names: Vec<&str> = out
            .pointer("/spec/template/spec/containers")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["side", "new"]);
        let patch = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}});
        let out = strategic_merge_patch(&deployment(), &patch, "Deployment").unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!([]));
        let patch = json!({"spec": {"$retainKeys": ["template"], "template": {"spec": {"$patch": "replace", "x": 1}}}});
        let out = strategic_merge_patch(&deployment(), &patch, "Deployment").unwrap();
        assert_eq!(out["spec"], json!({"template": {"spec": {"x": 1}}}));
    }

    #[test]
    fn unkeyed_lists_replace() {
        let original = json!({"spec": {"tolerations": [{"key": "a"}], "ports": [{"port": 80, "name": "http"}]}});
        let patch = json!({"spec": {"tolerations": [{"key": "b"}], "ports": [{"port": 80, "targetPort": 8080}]}});
        let out = strategic_merge_patch(&original, &patch, "Service").unwrap();
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "b"}]));
        assert_eq!(out["spec"]["ports"], json!([{"port": 80, "name": "http", "targetPort": 8080}]));
        assert!(strategic_merge_patch(&original, &json!({"spec": {"$bogus": 1}}), "Service").is_err());
    }

    #[test]
    fn json_and_merge_patches() {
        let out = json_patch(&json!({"a": [1]}), &json!([{"op": "add", "path": "/a/-", "value": 2}])).unwrap();
        assert_eq!(out, json!({"a": [1, 2]}));
        assert!(json_patch(&json!({}), &json!([{"op": "remove", "path": "/x"}])).is_err());
        let out = merge_patch(&json!({"a": 1, "b": {"c": 2}}), &json!({"a": null, "b": {"d": 3}})).unwrap();
        assert_eq!(out, json!({"b": {"c": 2, "d": 3}}));
    }
}
