//! CustomResourceDefinitions: what a CRD serves (its versions as resource types), its
//! acceptance (the conditions and names kube-apiserver's CRD controllers set), and the loop
//! on every member that keeps the registry in step with the stored CRDs.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::object;
use crate::registry::{ResourceType, ScalePaths, Shape, custom_storage_prefix};
use crate::rest::{Api, ListOptions};
use crate::storage::{ChangeKind, prefix_end};

const CRD_PREFIX: &str = "/registry/apiextensions.k8s.io/customresourcedefinitions/";

/// Marks a CRD accepted and established, as it is served as soon as it is stored.
pub fn accept(crd: &mut Value) {
    let now = object::now_rfc3339();
    let names = crd.pointer("/spec/names").cloned().unwrap_or_else(|| json!({}));
    let stored: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|v| {
            v.iter()
                .filter(|x| x.get("storage").and_then(Value::as_bool) == Some(true))
                .filter_map(|x| x.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    let condition = |kind: &str, reason: &str, message: &str| json!({"type": kind, "status": "True", "lastTransitionTime": now, "reason": reason, "message": message});
    crd["status"] = json!({
        "acceptedNames": names,
        "storedVersions": stored,
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
    });
}

fn pointer_of(json_path: &str) -> String {
    format!("/{}", json_path.trim_start_matches('.').replace('.', "/"))
}

pub(crate) fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// The resource types a CRD serves, one per served version.
pub fn types_of(crd: &Value) -> Vec<ResourceType> {
    let group = crd.pointer("/spec/group").and_then(Value::as_str).unwrap_or("").to_string();
    let names = crd.pointer("/spec/names").cloned().unwrap_or(Value::Null);
    let plural = names.get("plural").and_then(Value::as_str).unwrap_or("").to_string();
    let kind = names.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
    let singular =
        names.get("singular").and_then(Value::as_str).map(String::from).unwrap_or_else(|| kind.to_ascii_lowercase());
    let namespaced = crd.pointer("/spec/scope").and_then(Value::as_str) != Some("Cluster");
    let mut types = Vec::new();
    let versions = crd.pointer("/spec/versions").and_then(Value::as_array);
    let storage_version = versions
        .into_iter()
        .flatten()
        .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .and_then(|v| v.get("name").and_then(Value::as_str))
        .map(|name| format!("{group}/{name}"));
    let several_versions = versions.is_some_and(|v| v.len() > 1);
    for version in versions.into_iter().flatten() {
        if version.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let schema = version.pointer("/schema/openAPIV3Schema").cloned();
        let preserve = schema
            .as_ref()
            .and_then(|s| s.get("x-kubernetes-preserve-unknown-fields"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let scale = version.pointer("/subresources/scale").map(|s| ScalePaths {
            spec_replicas: pointer_of(s.get("specReplicasPath").and_then(Value::as_str).unwrap_or(".spec.replicas")),
            status_replicas: pointer_of(
                s.get("statusReplicasPath").and_then(Value::as_str).unwrap_or(".status.replicas"),
            ),
            label_selector: s.get("labelSelectorPath").and_then(Value::as_str).map(pointer_of),
        });
        types.push(ResourceType {
            group: group.clone(),
            version: version.get("name").and_then(Value::as_str).unwrap_or("").to_string(),
            kind: kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            namespaced,
            short_names: strings(names.get("shortNames")),
            categories: strings(names.get("categories")),
            has_status: version.pointer("/subresources/status").is_some(),
            scale,
            shape: Shape::Custom { schema, preserve_unknown: preserve },
            storage_prefix: custom_storage_prefix(&group, &plural),
            printer_columns: version
                .get("additionalPrinterColumns")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            create_only: false,
            read_only: false,
            stats: Arc::default(),
            // kube's `None` strategy: every version is the storage version's object under
            // its own apiVersion. With several versions the storage version converts too:
            // objects written under an earlier storage version keep their apiVersion in the
            // store.
            conversion: storage_version.as_ref().filter(|_| several_versions).map(|stored| {
                let served = format!("{group}/{}", version.get("name").and_then(Value::as_str).unwrap_or(""));
                crate::convert::Conversion::ApiVersion { served, stored: stored.clone() }
            }),
        });
    }
    types
}

fn install(api: &Api, crd: &Value) {
    let name = object::name(crd);
    let types = if object::is_terminating(crd) { Vec::new() } else { types_of(crd) };
    tracing::info!(crd = %name, versions = types.len(), "serving custom resources");
    api.registry.set_custom(name, types);
}

/// Keeps this member's registry in step with the CRDs in the store: a list, then a watch
/// from its revision; a failed watch starts over with a fresh list.
pub async fn sync(api: Arc<Api>) {
    let Some(rt) = api.registry.find("apiextensions.k8s.io", "v1", "customresourcedefinitions") else { return };
    loop {
        let listed = match api.list(&rt, None, &ListOptions::default()).await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::debug!(error = %e, "listing CRDs; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let names: Vec<String> = listed.items.iter().map(|c| object::name(c).to_string()).collect();
        for crd in &listed.items {
            install(&api, crd);
        }
        let known: Vec<String> = api
            .registry
            .all()
            .iter()
            // Built-in schemaless kinds (metrics.k8s.io) have no CRD behind them.
            .filter(|t| matches!(t.shape, Shape::Custom { .. }) && !t.read_only)
            .map(|t| format!("{}.{}", t.plural, t.group))
            .collect();
        for gone in known.iter().filter(|n| !names.contains(n)) {
            api.registry.set_custom(gone, Vec::new());
        }
        let mut feed = match api.storage.watch(CRD_PREFIX, &prefix_end(CRD_PREFIX), listed.revision + 1) {
            Ok(feed) => feed,
            Err(_) => continue,
        };
        loop {
            match feed.next().await {
                Ok(changes) => {
                    for change in changes {
                        let Ok(crd) = serde_json::from_slice::<Value>(&change.value) else { continue };
                        match change.kind {
                            ChangeKind::Put => install(&api, &crd),
                            ChangeKind::Delete => api.registry.set_custom(object::name(&crd), Vec::new()),
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "CRD watch ended; listing again");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crd_serves_its_versions() {
        let crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com", "scope": "Namespaced",
        "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
        "versions": [
            {"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}},
             "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}}},
            {"name": "v2", "served": false, "storage": false}
        ]}});
        let types = types_of(&crd);
        assert_eq!(types.len(), 1);
        assert_eq!(types[0].plural, "widgets");
        assert!(types[0].has_status);
        assert_eq!(types[0].scale.as_ref().unwrap().spec_replicas, "/spec/replicas");
        assert_eq!(types[0].storage_prefix, "/registry/example.com/widgets/");
        let mut crd = crd;
        accept(&mut crd);
        assert_eq!(crd["status"]["conditions"][1]["type"], "Established");
        assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));
    }
}
