//! A container's environment as kubelet builds it: envFrom first, then env in order, each
//! `value` expanded with `$(NAME)` references to the variables before it (`$$` escapes), and
//! `valueFrom` read from the pod (fieldRef), its resources (resourceFieldRef), or a
//! ConfigMap or Secret the node was sent.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::objects::Objects;

/// A missing ConfigMap, Secret or key that is not optional: the container cannot be created
/// (kubelet's CreateContainerConfigError).
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

/// `$(NAME)` expanded from `vars`; unknown references stay as written, `$$` is a `$`.
pub fn expand(value: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(open) = tail.strip_prefix("$(")
            && let Some(close) = open.find(')')
        {
            let name = &open[..close];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&tail[..close + 3]),
            }
            rest = &open[close + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

pub(crate) fn field(pod: &Pod, path: &str, host_ip: &str) -> Option<String> {
    let meta = &pod.metadata;
    let bracketed = |prefix: &str| path.strip_prefix(prefix).and_then(|r| r.strip_suffix("']")).map(String::from);
    if let Some(key) = bracketed("metadata.labels['") {
        return Some(meta.labels.as_ref().and_then(|l| l.get(&key)).cloned().unwrap_or_default());
    }
    if let Some(key) = bracketed("metadata.annotations['") {
        return Some(meta.annotations.as_ref().and_then(|a| a.get(&key)).cloned().unwrap_or_default());
    }
    let status = pod.status.as_ref();
    let spec = pod.spec.as_ref();
    Some(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.hostIP" => host_ip.to_string(),
        "status.hostIPs" => host_ip.to_string(),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "status.podIPs" => status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| ips.iter().map(|i| i.ip.clone()).collect::<Vec<_>>().join(","))
            .unwrap_or_default(),
        _ => return None,
    })
}

/// A quantity as a number of `divisor`s, rounded up (kubelet's convertResourceCPUToString and
/// friends).
fn in_units(quantity: &Quantity, divisor: Option<&Quantity>) -> String {
    let value = parse_quantity(&quantity.0).unwrap_or(0.0);
    let unit = divisor.and_then(|d| parse_quantity(&d.0)).filter(|d| *d > 0.0).unwrap_or(1.0);
    format!("{}", (value / unit).ceil().max(if value > 0.0 { 1.0 } else { 0.0 }) as i64)
}

/// A Kubernetes quantity (`250m`, `1Gi`, `2e3`) as a number.
pub fn parse_quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E').unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => return None,
    };
    Some(number * factor)
}

/// The variables of `container`, in order.
pub fn environment(
    pod: &Pod,
    container: &Container,
    objects: &Objects,
    host_ip: &str,
    allocatable: &BTreeMap<String, Quantity>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut set = |vars: &mut BTreeMap<String, String>, name: String, value: String| {
        if vars.insert(name.clone(), value).is_none() {
            order.push(name);
        }
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match objects.config_map(&namespace, &r.name) {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        set(&mut vars, format!("{prefix}{k}"), v.clone());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("configmap \"{}\" not found", r.name))),
            }
        }
        if let Some(r) = &from.secret_ref {
            match objects.secret(&namespace, &r.name) {
                Some(secret) => {
                    for (k, v) in secret.data.iter().flatten() {
                        set(&mut vars, format!("{prefix}{k}"), String::from_utf8_lossy(&v.0).into_owned());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("secret \"{}\" not found", r.name))),
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => expand(var.value.as_deref().unwrap_or_default(), &vars),
            Some(from) => {
                if let Some(f) = &from.field_ref {
                    field(pod, &f.field_path, host_ip)
                        .ok_or_else(|| ConfigError(format!("unsupported fieldRef {:?}", f.field_path)))?
                } else if let Some(r) = &from.resource_field_ref {
                    let target = match &r.container_name {
                        Some(name) if !name.is_empty() => pod
                            .spec
                            .as_ref()
                            .and_then(|s| s.containers.iter().find(|c| &c.name == name))
                            .unwrap_or(container),
                        _ => container,
                    };
                    let resources = target.resources.clone().unwrap_or_default();
                    let (kind, resource) = r.resource.split_once('.').unwrap_or(("limits", r.resource.as_str()));
                    let set_value = match kind {
                        "requests" => resources.requests.as_ref().and_then(|m| m.get(resource)).cloned(),
                        _ => resources.limits.as_ref().and_then(|m| m.get(resource)).cloned(),
                    };
                    // An unset limit reads as the node's allocatable, as in kubelet.
                    let q = set_value.or_else(|| allocatable.get(resource).cloned()).unwrap_or(Quantity("0".into()));
                    in_units(&q, r.divisor.as_ref())
                } else if let Some(r) = &from.config_map_key_ref {
                    match objects.config_map(&namespace, &r.name).and_then(|cm| cm.data.as_ref()?.get(&r.key).cloned())
                    {
                        Some(v) => v,
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in ConfigMap {namespace}/{}",
                                r.key, r.name
                            )));
                        }
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    match objects.secret(&namespace, &r.name).and_then(|s| s.data.as_ref()?.get(&r.key).cloned()) {
                        Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in Secret {namespace}/{}",
                                r.key, r.name
                            )));
                        }
                    }
                } else {
                    String::new()
                }
            }
        };
        set(&mut vars, var.name.clone(), value);
    }
    Ok(order.into_iter().filter_map(|name| vars.get(&name).map(|v| (name.clone(), v.clone()))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_proto::node::{Sync, SyncObject};
    use serde_json::json;

    #[test]
    fn expansion_as_kubelet_does_it() {
        let vars: BTreeMap<String, String> = [("A".to_string(), "1".to_string())].into();
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("cost $5 $(A", &vars), "cost $5 $(A");
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("250m"), Some(0.25));
        assert_eq!(parse_quantity("1Gi"), Some(1073741824.0));
        assert_eq!(parse_quantity("2e3"), Some(2000.0));
        assert_eq!(parse_quantity("12Q"), None);
    }

    #[test]
    fn every_source_of_a_value() {
        let objects = Objects::default();
        let cm = json!({"metadata": {"name": "cfg", "namespace": "ns"}, "data": {"color": "blue", "size": "L"}});
        let secret = json!({"metadata": {"name": "s", "namespace": "ns"}, "data": {"password": "aHVudGVyMg=="}});
        objects
            .apply(Sync {
                upserts: vec![
                    SyncObject { kind: "ConfigMap".into(), json: serde_json::to_vec(&cm).expect("json") },
                    SyncObject { kind: "Secret".into(), json: serde_json::to_vec(&secret).expect("json") },
                ],
                removals: vec![],
                in_sync: true,
            })
            .expect("applied");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{
                "name": "c",
                "resources": {"limits": {"memory": "64Mi"}},
                "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
                "env": [
                    {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "GREETING", "value": "$(NAME) on $(NODE)"},
                    {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "color"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}},
                    {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                    {"name": "MAYBE", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": true}}}
                ]
            }]}
        }))
        .expect("pod");
        let allocatable: BTreeMap<String, Quantity> = [("cpu".to_string(), Quantity("4".into()))].into();
        let container = &pod.spec.as_ref().expect("spec").containers[0];
        let env = environment(&pod, container, &objects, "10.0.0.1", &allocatable).expect("env");
        let got: BTreeMap<String, String> = env.into_iter().collect();
        let want: BTreeMap<String, String> = [
            ("CFG_color", "blue"),
            ("CFG_size", "L"),
            ("NAME", "p"),
            ("APP", "web"),
            ("NODE", "n1"),
            ("GREETING", "p on n1"),
            ("COLOR", "blue"),
            ("PASSWORD", "hunter2"),
            ("MEM_MI", "64"),
            ("CPUS", "4"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);

        let mut missing = container.clone();
        missing.env = Some(vec![
            serde_json::from_value(json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "absent"}}}))
                .expect("env var"),
        ]);
        let err = environment(&pod, &missing, &objects, "10.0.0.1", &allocatable).expect_err("missing key");
        assert!(err.0.contains("couldn't find key absent in Secret ns/s"), "{err:?}");
    }
}
