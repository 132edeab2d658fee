//! Server-side apply: the applied configuration is merged into the live object (creating it
//! if absent), each field manager's applied fields are recorded in `managedFields`
//! (`FieldsV1`), and fields a manager applied before but no longer applies are removed.
//! Conflicts are detected with every other manager: a field another manager applied or
//! updated with a different value is refused (409) unless `force=true`, which takes it over.
//!
//! Updates (PUT, PATCH, kubectl edit, scale) of an object that carries `managedFields` are
//! tracked as kube tracks them: the fields they change move to the updating manager's
//! `Update` entry, so a later apply that would change them again conflicts. Objects that
//! were never applied carry no `managedFields` in keel (kube gives every object an entry
//! for its creator), which spares the bookkeeping on every controller write.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::error::{ApiError, FieldCause, Result};
use crate::object;
use crate::patch;
use crate::registry::{ResourceType, Shape};
use crate::rest::{Api, WriteOptions};

/// One field path, as FieldsV1 keys it: `f:spec`, `f:containers`, `k:{"name":"app"}`.
type FieldPath = Vec<String>;

fn merge_key_of(path: &[String], kind: &str) -> Option<&'static str> {
    let names: Vec<String> = path.iter().filter_map(|p| p.strip_prefix("f:").map(String::from)).collect();
    patch::merge_key_for(&names, kind)
}

/// Every leaf path the applied configuration sets.
fn field_paths(value: &Value, prefix: &mut FieldPath, kind: &str, out: &mut BTreeSet<FieldPath>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                if prefix.is_empty() && matches!(k.as_str(), "apiVersion" | "kind") {
                    continue;
                }
                if prefix.len() == 1
                    && prefix[0] == "f:metadata"
                    && matches!(
                        k.as_str(),
                        "name"
                            | "namespace"
                            | "resourceVersion"
                            | "managedFields"
                            | "uid"
                            | "creationTimestamp"
                            | "generation"
                    )
                {
                    continue;
                }
                prefix.push(format!("f:{k}"));
                field_paths(v, prefix, kind, out);
                prefix.pop();
            }
        }
        Value::Array(items) if merge_key_of(prefix, kind).is_some() => {
            let key = merge_key_of(prefix, kind).unwrap_or("name");
            for item in items {
                let id = item.get(key).cloned().unwrap_or(Value::Null);
                prefix.push(format!("k:{}", json!({ key: id })));
                out.insert(prefix.clone());
                field_paths(item, prefix, kind, out);
                prefix.pop();
            }
        }
        _ => {
            out.insert(prefix.clone());
        }
    }
}

fn to_fields_v1(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut cursor = &mut root;
        for part in path {
            let entry = cursor.entry(part.clone()).or_insert_with(|| json!({}));
            cursor = match entry.as_object_mut() {
                Some(m) => m,
                None => break,
            };
        }
    }
    Value::Object(root)
}

fn from_fields_v1(value: &Value, prefix: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    let Some(map) = value.as_object() else { return };
    let children: Vec<_> = map.iter().filter(|(k, _)| k.as_str() != ".").collect();
    if children.iter().all(|(k, _)| k.starts_with("k:"))
        && !prefix.is_empty()
        && !prefix.last().is_some_and(|p| p.starts_with("k:"))
        && children.is_empty()
    {
        out.insert(prefix.clone());
        return;
    }
    if children.is_empty() {
        out.insert(prefix.clone());
        return;
    }
    for (k, v) in children {
        prefix.push(k.clone());
        if k.starts_with("k:") {
            out.insert(prefix.clone());
        }
        from_fields_v1(v, prefix, out);
        prefix.pop();
    }
}

/// Finds the value at a field path in an object (following `k:` keys into lists).
fn lookup<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cursor = value;
    for part in path {
        if let Some(field) = part.strip_prefix("f:") {
            cursor = cursor.get(field)?;
        } else if let Some(key) = part.strip_prefix("k:") {
            let key: Value = serde_json::from_str(key).ok()?;
            let (k, v) = key.as_object()?.iter().next()?;
            cursor = cursor.as_array()?.iter().find(|item| item.get(k) == Some(v))?;
        }
    }
    Some(cursor)
}

fn remove_path(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut cursor = value;
    for part in parents {
        let next = if let Some(field) = part.strip_prefix("f:") {
            cursor.get_mut(field)
        } else if let Some(key) = part.strip_prefix("k:") {
            let Ok(key) = serde_json::from_str::<Value>(key) else { return };
            let Some((k, v)) = key.as_object().and_then(|o| o.iter().next()).map(|(k, v)| (k.clone(), v.clone()))
            else {
                return;
            };
            cursor.as_array_mut().and_then(|a| a.iter_mut().find(|item| item.get(&k) == Some(&v)))
        } else {
            None
        };
        match next {
            Some(n) => cursor = n,
            None => return,
        }
    }
    if let Some(field) = last.strip_prefix("f:") {
        if let Some(map) = cursor.as_object_mut() {
            map.remove(field);
        }
    } else if let Some(key) = last.strip_prefix("k:")
        && let Ok(key) = serde_json::from_str::<Value>(key)
        && let Some((k, v)) = key.as_object().and_then(|o| o.iter().next())
        && let Some(items) = cursor.as_array_mut()
    {
        items.retain(|item| item.get(k) != Some(v));
    }
}

fn managed_entry(manager: &str, api_version: &str, fields: Value) -> Value {
    json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": object::now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    })
}

fn managed_fields(object: &Value) -> Vec<Value> {
    object::meta(object).and_then(|m| m.get("managedFields")).and_then(Value::as_array).cloned().unwrap_or_default()
}

fn owned_paths(entry: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    from_fields_v1(entry.get("fieldsV1").unwrap_or(&Value::Null), &mut Vec::new(), &mut out);
    out
}

/// kube's Update operation bookkeeping for a write by `manager` that replaces `current`
/// with `object` (both as served in `api_version`). Leaves `object` alone when the writer
/// set `managedFields` itself (server-side apply does) or `current` carries none.
pub fn track_update(current: &Value, object: &mut Value, manager: &str, api_version: &str, kind: &str) {
    let before = managed_fields(current);
    if before.is_empty() {
        return;
    }
    match object::meta(object).and_then(|m| m.get("managedFields")) {
        Some(given) if *given != json!(before) && !given.is_null() => return,
        _ => {}
    }
    let is_status = |p: &FieldPath| p.first().is_some_and(|f| f == "f:status");
    let (mut old_paths, mut new_paths) = (BTreeSet::new(), BTreeSet::new());
    field_paths(current, &mut Vec::new(), kind, &mut old_paths);
    field_paths(object, &mut Vec::new(), kind, &mut new_paths);
    let changed: BTreeSet<FieldPath> = old_paths
        .union(&new_paths)
        .filter(|p| !is_status(p) && lookup(current, p) != lookup(object, p))
        .cloned()
        .collect();
    let mut managed = before;
    if !changed.is_empty() {
        let mine = |e: &Value| {
            e.get("manager").and_then(Value::as_str) == Some(manager)
                && e.get("operation").and_then(Value::as_str) == Some("Update")
        };
        let mut taken: BTreeSet<FieldPath> = managed.iter().find(|e| mine(e)).map(owned_paths).unwrap_or_default();
        taken.extend(changed.iter().filter(|p| new_paths.contains(*p)).cloned());
        taken.retain(|p| new_paths.contains(p));
        for entry in managed.iter_mut().filter(|e| !mine(e)) {
            let kept: BTreeSet<FieldPath> = owned_paths(entry).into_iter().filter(|p| !changed.contains(p)).collect();
            // An entry that is not an object (custom resources' metadata is not checked)
            // is dropped below rather than indexed into.
            if let Some(map) = entry.as_object_mut() {
                map.insert("fieldsV1".into(), to_fields_v1(&kept));
            }
        }
        managed.retain(|e| !mine(e) && e.get("fieldsV1").and_then(Value::as_object).is_some_and(|f| !f.is_empty()));
        if !taken.is_empty() {
            let mut entry = managed_entry(manager, api_version, to_fields_v1(&taken));
            entry["operation"] = json!("Update");
            managed.push(entry);
        }
        cap_update_managers(&mut managed);
    }
    object::meta_mut(object).insert("managedFields".into(), json!(managed));
}

/// kube keeps at most this many `Update` entries (`DefaultMaxUpdateManagers`).
const MAX_UPDATE_MANAGERS: usize = 10;
/// The entry the oldest updates of one apiVersion are merged into beyond that.
const ANCIENT_CHANGES: &str = "ancient-changes";

/// kube's `capUpdateManagers`: while there are more than ten `Update` entries, the oldest are
/// merged, per apiVersion, into an `ancient-changes` entry owning the union of their fields
/// and carrying the time of the newest one merged.
fn cap_update_managers(managed: &mut Vec<Value>) {
    let text = |e: &Value, key: &str| e.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    let is_update = |e: &Value| text(e, "operation") == "Update";
    let mut count = managed.iter().filter(|e| is_update(e)).count();
    if count <= MAX_UPDATE_MANAGERS {
        return;
    }
    let mut oldest_first: Vec<usize> = (0..managed.len()).filter(|i| is_update(&managed[*i])).collect();
    // Times are RFC 3339 in UTC with whole seconds, so they order as strings; an entry with
    // none is the oldest.
    oldest_first.sort_by_key(|i| (text(&managed[*i], "time"), text(&managed[*i], "manager")));
    // An earlier cap's bucket takes more of its version.
    let mut bucket_of: std::collections::HashMap<String, usize> = oldest_first
        .iter()
        .filter(|i| text(&managed[**i], "manager") == ANCIENT_CHANGES)
        .map(|i| (text(&managed[*i], "apiVersion"), *i))
        .collect();
    let mut merged = BTreeSet::new();
    for i in oldest_first {
        if count <= MAX_UPDATE_MANAGERS {
            break;
        }
        if text(&managed[i], "manager") == ANCIENT_CHANGES {
            continue;
        }
        let version = text(&managed[i], "apiVersion");
        match bucket_of.get(&version) {
            Some(&bucket) => {
                let mut fields = owned_paths(&managed[bucket]);
                fields.extend(owned_paths(&managed[i]));
                let time = managed[i].get("time").cloned().unwrap_or(Value::Null);
                let entry = &mut managed[bucket];
                entry["manager"] = json!(ANCIENT_CHANGES);
                // The bucket owns fields of whole objects, not of one subresource.
                if let Some(map) = entry.as_object_mut() {
                    map.remove("subresource");
                }
                entry["fieldsV1"] = to_fields_v1(&fields);
                entry["time"] = time;
                merged.insert(i);
                count -= 1;
            }
            None => {
                bucket_of.insert(version, i);
            }
        }
    }
    let mut index = 0;
    managed.retain(|_| {
        index += 1;
        !merged.contains(&(index - 1))
    });
}

pub async fn apply(
    api: &Api,
    rt: &ResourceType,
    namespace: Option<&str>,
    name: &str,
    subresource: Option<&str>,
    applied: Value,
    options: &WriteOptions,
) -> Result<(Value, Vec<String>, bool)> {
    let manager = options.field_manager.clone().filter(|m| !m.is_empty()).ok_or_else(|| {
        ApiError::invalid("PatchOptions", "meta.k8s.io", "", vec![FieldCause::required("fieldManager")])
    })?;
    if subresource.is_some() {
        return Err(ApiError::bad_request("server-side apply to a subresource is not supported by keel yet"));
    }
    if !applied.is_object() {
        return Err(ApiError::bad_request("an apply patch must be an object"));
    }
    let applied_name = object::name(&applied);
    if !applied_name.is_empty() && applied_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({applied_name}) does not match the name on the URL ({name})"
        )));
    }
    let kind = rt.kind.clone();
    let mut new_paths = BTreeSet::new();
    field_paths(&applied, &mut Vec::new(), &kind, &mut new_paths);
    for _ in 0..8 {
        let current = match api.get(rt, namespace, name).await {
            Ok(current) => Some(current),
            Err(ApiError::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        let Some(current) = current else {
            let mut object = applied.clone();
            object::meta_mut(&mut object).insert("name".into(), json!(name));
            object::meta_mut(&mut object).insert(
                "managedFields".into(),
                json!([managed_entry(&manager, &rt.api_version(), to_fields_v1(&new_paths))]),
            );
            match api.create(rt, namespace, object, options).await {
                Ok((object, warnings)) => return Ok((object, warnings, true)),
                Err(ApiError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e),
            }
        };
        let mut managed: Vec<Value> = object::meta(&current)
            .and_then(|m| m.get("managedFields"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        // Conflicts: fields other apply managers own whose value this apply changes.
        let mut conflicts = Vec::new();
        for entry in &managed {
            let other = entry.get("manager").and_then(Value::as_str).unwrap_or("");
            let operation = entry.get("operation").and_then(Value::as_str).unwrap_or("");
            if other == manager && operation == "Apply" {
                continue;
            }
            let mut owned = BTreeSet::new();
            from_fields_v1(entry.get("fieldsV1").unwrap_or(&Value::Null), &mut Vec::new(), &mut owned);
            for path in new_paths.intersection(&owned) {
                if lookup(&current, path) != lookup(&applied, path)
                    && lookup(&applied, path).is_some_and(|v| !v.is_object() && !v.is_array())
                {
                    conflicts.push((other.to_string(), path.clone()));
                }
            }
        }
        if !conflicts.is_empty() && !options.force {
            let message = conflicts
                .iter()
                .map(|(m, p)| {
                    format!(
                        "conflict with \"{m}\": .{}",
                        p.iter().map(|s| s.trim_start_matches("f:")).collect::<Vec<_>>().join(".")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ApiError::Conflict {
                resource: rt.qualified(),
                name: name.into(),
                message: format!("Apply failed with {} conflict(s): {message}", conflicts.len()),
            });
        }
        let previous: BTreeSet<FieldPath> = managed
            .iter()
            .find(|e| {
                e.get("manager").and_then(Value::as_str) == Some(manager.as_str())
                    && e.get("operation").and_then(Value::as_str) == Some("Apply")
            })
            .map(|e| {
                let mut out = BTreeSet::new();
                from_fields_v1(e.get("fieldsV1").unwrap_or(&Value::Null), &mut Vec::new(), &mut out);
                out
            })
            .unwrap_or_default();
        let mut merged = match rt.shape {
            Shape::Typed { .. } => patch::strategic_merge_patch(&current, &applied, &kind),
            Shape::Custom { .. } => patch::merge_patch(&current, &applied),
        }
        .map_err(|e| ApiError::invalid(&rt.kind, &rt.group, name, vec![FieldCause::invalid("", e)]))?;
        // What other managers own stays, as kube's prune keeps items others own.
        let others_owned: BTreeSet<FieldPath> = managed
            .iter()
            .filter(|e| {
                !(e.get("manager").and_then(Value::as_str) == Some(manager.as_str())
                    && e.get("operation").and_then(Value::as_str) == Some("Apply"))
            })
            .flat_map(owned_paths)
            .collect();
        for gone in previous.difference(&new_paths) {
            let kept_by_others = others_owned.iter().any(|p| p.starts_with(gone));
            if !kept_by_others && !new_paths.iter().any(|p| p.starts_with(gone)) {
                remove_path(&mut merged, gone);
            }
        }
        // Forced fields leave their former owners.
        if options.force {
            for entry in managed.iter_mut() {
                let mut owned = BTreeSet::new();
                from_fields_v1(entry.get("fieldsV1").unwrap_or(&Value::Null), &mut Vec::new(), &mut owned);
                let kept: BTreeSet<FieldPath> =
                    owned.into_iter().filter(|p| !conflicts.iter().any(|(_, c)| c == p)).collect();
                if let Some(map) = entry.as_object_mut() {
                    map.insert("fieldsV1".into(), to_fields_v1(&kept));
                }
            }
            // A manager left with nothing is dropped, as kube drops it.
            managed.retain(|e| e.get("fieldsV1").and_then(Value::as_object).is_some_and(|f| !f.is_empty()));
        }
        managed.retain(|e| {
            !(e.get("manager").and_then(Value::as_str) == Some(manager.as_str())
                && e.get("operation").and_then(Value::as_str) == Some("Apply"))
        });
        // Fields gone from the object leave every manager (SMD's `Removed`).
        for entry in managed.iter_mut() {
            let present: BTreeSet<FieldPath> =
                owned_paths(entry).into_iter().filter(|p| lookup(&merged, p).is_some()).collect();
            if let Some(map) = entry.as_object_mut() {
                map.insert("fieldsV1".into(), to_fields_v1(&present));
            }
        }
        managed.retain(|e| e.get("fieldsV1").and_then(Value::as_object).is_some_and(|f| !f.is_empty()));
        managed.push(managed_entry(&manager, &rt.api_version(), to_fields_v1(&new_paths)));
        object::meta_mut(&mut merged).insert("managedFields".into(), json!(managed));
        let applying = WriteOptions { applying: true, ..options.clone() };
        match api.update(rt, namespace, name, None, merged, &applying).await {
            Ok((object, warnings)) => return Ok((object, warnings, false)),
            Err(ApiError::Conflict { message, .. }) if message.contains("has been modified") => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Conflict {
        resource: rt.qualified(),
        name: name.into(),
        message: "the object kept changing while it was being applied; try again".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_sets_roundtrip_through_fields_v1() {
        let applied = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x", "labels": {"a": "b"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "app", "image": "i"}]}}}});
        let mut paths = BTreeSet::new();
        field_paths(&applied, &mut Vec::new(), "Deployment", &mut paths);
        let v1 = to_fields_v1(&paths);
        assert!(v1.pointer("/f:spec/f:template/f:spec/f:containers/k:{\"name\":\"app\"}/f:image").is_some());
        let mut back = BTreeSet::new();
        from_fields_v1(&v1, &mut Vec::new(), &mut back);
        let leaves: BTreeSet<_> = paths.iter().filter(|p| !p.last().unwrap().starts_with("k:")).cloned().collect();
        let back_leaves: BTreeSet<_> = back.iter().filter(|p| !p.last().unwrap().starts_with("k:")).cloned().collect();
        assert_eq!(leaves, back_leaves);
        let image = vec!["f:spec", "f:template", "f:spec", "f:containers", "k:{\"name\":\"app\"}", "f:image"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        assert_eq!(lookup(&applied, &image), Some(&json!("i")));
        let mut copy = applied.clone();
        remove_path(&mut copy, &image);
        assert!(copy.pointer("/spec/template/spec/containers/0/image").is_none());
    }

    #[test]
    fn updates_take_the_fields_they_change_from_appliers() {
        let applied = json!({"spec": {"replicas": 2, "template": {"image": "a"}}});
        let mut paths = BTreeSet::new();
        field_paths(&applied, &mut Vec::new(), "Widget", &mut paths);
        let mut current = applied.clone();
        current["metadata"] =
            json!({"name": "w", "managedFields": [managed_entry("deployer", "v1", to_fields_v1(&paths))]});
        let mut edited = current.clone();
        edited["spec"]["replicas"] = json!(5);
        track_update(&current, &mut edited, "kubectl-edit", "v1", "Widget");
        let managed = managed_fields(&edited);
        assert_eq!(managed.len(), 2, "{managed:?}");
        let replicas = vec!["f:spec".to_string(), "f:replicas".to_string()];
        assert!(!owned_paths(&managed[0]).contains(&replicas), "the applier lost .spec.replicas");
        assert_eq!(managed[1]["manager"], "kubectl-edit");
        assert_eq!(managed[1]["operation"], "Update");
        assert_eq!(owned_paths(&managed[1]), BTreeSet::from([replicas]));
        // An object nobody applied is left without managedFields.
        let plain = json!({"metadata": {"name": "p"}, "spec": {"replicas": 1}});
        let mut changed = plain.clone();
        changed["spec"]["replicas"] = json!(3);
        track_update(&plain, &mut changed, "kubectl-edit", "v1", "Widget");
        assert!(object::meta(&changed).and_then(|m| m.get("managedFields")).is_none());
    }

    #[test]
    fn more_than_ten_updaters_merge_the_oldest_into_ancient_changes() {
        let mut object = json!({"metadata": {"name": "w", "managedFields": [
            managed_entry("applier", "v1", json!({"f:spec": {"f:keep": {}}}))
        ]}, "spec": {"keep": 1}});
        for n in 0..12 {
            let mut changed = object.clone();
            changed["spec"][format!("f{n:02}")] = json!(n);
            track_update(&object, &mut changed, &format!("editor-{n:02}"), "v1", "Widget");
            // Each update a second later than the one before, as a clock would have it.
            let entries = changed["metadata"]["managedFields"].as_array_mut().unwrap();
            let last = entries.iter_mut().find(|e| e["manager"] == format!("editor-{n:02}")).unwrap();
            last["time"] = json!(format!("2020-01-01T00:00:{n:02}Z"));
            object = changed;
        }
        let managed = managed_fields(&object);
        let updates: Vec<&Value> = managed.iter().filter(|e| e["operation"] == "Update").collect();
        assert_eq!(updates.len(), 10, "{managed:#?}");
        let ancient = updates.iter().find(|e| e["manager"] == ANCIENT_CHANGES).expect("a bucket");
        let owned: Vec<String> = owned_paths(ancient).into_iter().filter_map(|p| p.get(1).cloned()).collect();
        assert_eq!(owned, ["f:f00", "f:f01", "f:f02"], "the three oldest, merged");
        assert_eq!(ancient["time"], "2020-01-01T00:00:02Z");
        assert!(managed.iter().any(|e| e["manager"] == "applier"), "Apply entries are not capped");
        assert!(!managed.iter().any(|e| e["manager"] == "editor-00" || e["manager"] == "editor-02"));
    }

    #[test]
    fn a_malformed_entry_is_dropped_not_indexed_into() {
        let mut current = json!({"metadata": {"name": "w", "managedFields": ["x", managed_entry("a", "v1", json!({"f:spec": {"f:size": {}}}))]}, "spec": {"size": 1}});
        // (`a` owned only .spec.size, which `editor` takes.)
        let mut changed = current.clone();
        changed["spec"]["size"] = json!(2);
        track_update(&current, &mut changed, "editor", "v1", "Widget");
        let managers: Vec<String> =
            managed_fields(&changed).iter().filter_map(|e| e["manager"].as_str().map(String::from)).collect();
        assert_eq!(managers, ["editor"], "the string entry and the emptied applier go");
        // Without managedFields nothing is tracked.
        current["metadata"]["managedFields"] = json!([]);
        let mut untouched = current.clone();
        untouched["spec"]["size"] = json!(3);
        track_update(&current, &mut untouched, "editor", "v1", "Widget");
        assert_eq!(untouched["metadata"]["managedFields"], json!([]));
    }
}
