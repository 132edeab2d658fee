//! Discovery: `/version`, the legacy documents (`/api`, `/apis`, `/apis/<group>/<version>`)
//! and aggregated discovery (`apidiscovery.k8s.io/v2`), which kubectl 1.32 asks for first.

use serde_json::{Value, json};

use crate::registry::{Registry, ResourceType};

pub const AGGREGATED_CONTENT_TYPE: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the client asked for aggregated discovery (and takes v2).
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|a| a.contains("as=APIGroupDiscoveryList") && a.contains("v=v2") && !a.contains("v=v2beta1"))
}

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": concat!("v1.32.0-keel.", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "n/a (keel is written in Rust)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if cfg!(target_arch = "x86_64") { "amd64" } else if cfg!(target_arch = "aarch64") { "arm64" } else { std::env::consts::ARCH }),
    })
}

fn subresource_verbs() -> Vec<&'static str> {
    vec!["get", "patch", "update"]
}

/// The legacy `APIResourceList` of one group version.
pub fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let types: Vec<_> = registry.all().iter().filter(|t| t.group == group && t.version == version).cloned().collect();
    if types.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for t in &types {
        resources.push(json!({
            "name": t.plural,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": t.verbs(),
            "shortNames": t.short_names,
            "categories": t.categories,
        }));
        for (sub, kind, group, version, verbs) in subresources(t) {
            let mut entry = json!({
                "name": format!("{}/{sub}", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if let Some(group) = group {
                entry["group"] = json!(group);
                entry["version"] = json!(version);
            }
            resources.push(entry);
        }
    }
    let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
}

type Subresource = (&'static str, String, Option<&'static str>, &'static str, Vec<&'static str>);

fn subresources(t: &ResourceType) -> Vec<Subresource> {
    let mut out = Vec::new();
    if t.has_status {
        out.push(("status", t.kind.clone(), None, "", subresource_verbs()));
    }
    if t.scale.is_some() {
        out.push(("scale", "Scale".to_string(), Some("autoscaling"), "v1", subresource_verbs()));
    }
    if t.group.is_empty() && t.kind == "Pod" {
        out.push(("binding", "Binding".to_string(), None, "", vec!["create"]));
        // As kube-apiserver lists it: group and version are what `kubectl drain` looks for
        // to decide it can evict rather than delete.
        out.push(("eviction", "Eviction".to_string(), Some("policy"), "v1", vec!["create"]));
        out.push(("log", "Pod".to_string(), None, "", vec!["get"]));
        out.push(("exec", "PodExecOptions".to_string(), None, "", vec!["create", "get"]));
        out.push(("attach", "PodAttachOptions".to_string(), None, "", vec!["create", "get"]));
        out.push(("portforward", "PodPortForwardOptions".to_string(), None, "", vec!["create", "get"]));
    }
    if t.group.is_empty() && t.kind == "ServiceAccount" {
        out.push(("token", "TokenRequest".to_string(), Some("authentication.k8s.io"), "v1", vec!["create"]));
    }
    out
}

pub fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

fn group_entry(name: &str, versions: &[String]) -> Value {
    let versions: Vec<Value> =
        versions.iter().map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v})).collect();
    json!({"name": name, "versions": versions, "preferredVersion": versions.first().cloned().unwrap_or(Value::Null)})
}

pub fn group_list(registry: &Registry) -> Value {
    let groups: Vec<Value> =
        registry.groups().iter().filter(|(g, _)| !g.is_empty()).map(|(g, versions)| group_entry(g, versions)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(registry: &Registry, name: &str) -> Option<Value> {
    let groups = registry.groups();
    let versions = groups.get(name).filter(|_| !name.is_empty())?;
    let mut entry = group_entry(name, versions);
    entry["kind"] = json!("APIGroup");
    entry["apiVersion"] = json!("v1");
    Some(entry)
}

/// Aggregated discovery for the core group (`legacy`) or for every named group.
pub fn aggregated(registry: &Registry, legacy: bool) -> Value {
    let all = registry.all();
    let mut items = Vec::new();
    for (group, versions) in registry.groups() {
        if group.is_empty() != legacy {
            continue;
        }
        let versions: Vec<Value> = versions
            .iter()
            .map(|version| {
                let resources: Vec<Value> = all
                    .iter()
                    .filter(|t| t.group == group && &t.version == version)
                    .map(|t| {
                        let subs: Vec<Value> = subresources(t)
                            .into_iter()
                            .map(|(sub, kind, g, v, verbs)| {
                                json!({
                                    "subresource": sub,
                                    "responseKind": {"group": g.unwrap_or(&t.group), "version": if v.is_empty() { &t.version } else { v }, "kind": kind},
                                    "verbs": verbs,
                                })
                            })
                            .collect();
                        json!({
                            "resource": t.plural,
                            "responseKind": {"group": t.group, "version": t.version, "kind": t.kind},
                            "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
                            "singularResource": t.singular,
                            "verbs": t.verbs(),
                            "shortNames": t.short_names,
                            "categories": t.categories,
                            "subresources": subs,
                        })
                    })
                    .collect();
                json!({"version": version, "resources": resources, "freshness": "Current"})
            })
            .collect();
        let mut metadata = json!({"creationTimestamp": null});
        if !group.is_empty() {
            metadata["name"] = json!(group);
        }
        items.push(json!({"metadata": metadata, "versions": versions}));
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RuntimeConfig;

    #[test]
    fn documents_list_what_the_registry_serves() {
        let registry = Registry::new(RuntimeConfig::default());
        let core = resource_list(&registry, "", "v1").unwrap();
        let names: Vec<&str> =
            core["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"pods") && names.contains(&"pods/status") && names.contains(&"pods/binding"));
        let eviction = core["resources"].as_array().unwrap().iter().find(|r| r["name"] == "pods/eviction").unwrap();
        assert_eq!(
            (&eviction["group"], &eviction["version"], &eviction["kind"], &eviction["verbs"]),
            (&json!("policy"), &json!("v1"), &json!("Eviction"), &json!(["create"]))
        );
        let metrics = resource_list(&registry, "metrics.k8s.io", "v1beta1").unwrap();
        let pods = metrics["resources"].as_array().unwrap().iter().find(|r| r["kind"] == "PodMetrics").unwrap();
        assert_eq!((&pods["name"], &pods["verbs"]), (&json!("pods"), &json!(["get", "list"])));
        let apps = group(&registry, "apps").unwrap();
        assert_eq!(apps["preferredVersion"]["groupVersion"], "apps/v1");
        let autoscaling = group(&registry, "autoscaling").unwrap();
        assert_eq!(autoscaling["preferredVersion"]["version"], "v2");
        let agg = aggregated(&registry, false);
        assert!(agg["items"].as_array().unwrap().iter().any(|g| g["metadata"]["name"] == "apps"));
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated("application/json"));
    }
}
