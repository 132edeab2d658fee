//! ResourceQuota accounting: what an object adds to a namespace's usage, and what the
//! namespace uses now. Shared by the admission plugin that refuses creations over quota and
//! by the controller that keeps `status.used` current.
//!
//! Tracked: `pods`, `services`, `configmaps`, `secrets`, `persistentvolumeclaims`,
//! `replicationcontrollers`, `resourcequotas`, `count/<resource>[.<group>]`, and for pods that
//! have not finished `requests.cpu`/`cpu`, `requests.memory`/`memory`,
//! `requests.ephemeral-storage`, `limits.cpu`, `limits.memory` (requests summed as the
//! scheduler sums them: init containers and overhead included).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use keel_scheduler_framework::quantity;
use serde_json::Value;

use crate::error::{ApiError, Result};
use crate::registry::ResourceType;
use crate::storage::{Consistency, SharedStorage, prefix_end};

/// Amounts in milli-units, so cpu and memory add up exactly.
pub type Usage = BTreeMap<String, i128>;

fn legacy_count(plural: &str) -> Option<&'static str> {
    Some(match plural {
        "pods" => "pods",
        "services" => "services",
        "configmaps" => "configmaps",
        "secrets" => "secrets",
        "persistentvolumeclaims" => "persistentvolumeclaims",
        "replicationcontrollers" => "replicationcontrollers",
        "resourcequotas" => "resourcequotas",
        _ => return None,
    })
}

fn count_name(rt: &ResourceType) -> String {
    if rt.group.is_empty() { format!("count/{}", rt.plural) } else { format!("count/{}.{}", rt.plural, rt.group) }
}

fn is_terminal(object: &Value) -> bool {
    matches!(object.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"))
}

fn limits(pod: &Pod) -> (i128, i128) {
    let mut cpu = 0i128;
    let mut memory = 0i128;
    for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref());
        if let Some(q) = limits.and_then(|l| l.get("cpu")) {
            cpu += quantity::parse_nanos(&q.0).unwrap_or(0) / 1_000_000;
        }
        if let Some(q) = limits.and_then(|l| l.get("memory")) {
            memory += quantity::parse_nanos(&q.0).unwrap_or(0) / 1_000_000;
        }
    }
    (cpu, memory)
}

/// What `object` (of type `rt`) counts for, in milli-units.
pub fn contribution(rt: &ResourceType, object: &Value) -> Usage {
    let mut usage = Usage::new();
    if !rt.namespaced {
        return usage;
    }
    let is_pod = rt.group.is_empty() && rt.kind == "Pod";
    if is_pod && is_terminal(object) {
        return usage;
    }
    usage.insert(count_name(rt), 1000);
    if rt.group.is_empty()
        && let Some(name) = legacy_count(&rt.plural)
    {
        usage.insert(name.into(), 1000);
    }
    if is_pod && let Ok(pod) = serde_json::from_value::<Pod>(object.clone()) {
        let requests = keel_scheduler_framework::pod_requests(&pod);
        let cpu = i128::from(requests.milli_cpu);
        let memory = i128::from(requests.memory) * 1000;
        for (name, value) in [
            ("requests.cpu", cpu),
            ("cpu", cpu),
            ("requests.memory", memory),
            ("memory", memory),
            ("requests.ephemeral-storage", i128::from(requests.ephemeral_storage) * 1000),
        ] {
            usage.insert(name.into(), value);
        }
        let (cpu, memory) = limits(&pod);
        usage.insert("limits.cpu".into(), cpu);
        usage.insert("limits.memory".into(), memory);
    }
    usage
}

/// What the objects of `types` in `namespace` use now, for the resources in `wanted`.
pub async fn usage(
    storage: &SharedStorage,
    types: &[std::sync::Arc<ResourceType>],
    namespace: &str,
    wanted: &[String],
) -> Result<Usage> {
    let mut total = Usage::new();
    for name in wanted {
        total.insert(name.clone(), 0);
    }
    // Versions of one kind share its storage (a converted view, a CRD's versions): each
    // stored object is counted once.
    let mut seen_prefixes = std::collections::HashSet::new();
    for rt in types {
        if !rt.namespaced || rt.conversion.is_some() || !seen_prefixes.insert(rt.storage_prefix.as_str()) {
            continue;
        }
        let probe = contribution(rt, &serde_json::json!({}));
        let pod = rt.group.is_empty() && rt.kind == "Pod";
        if !pod && !wanted.iter().any(|w| probe.contains_key(w)) {
            continue;
        }
        let prefix = rt.list_prefix(Some(namespace));
        let page = storage.list(&prefix, &prefix_end(&prefix), 0, 0, Consistency::Local).await?;
        for item in &page.items {
            let object: Value = serde_json::from_slice(&item.value)
                .map_err(|e| ApiError::internal(format!("object at {} is not JSON: {e}", item.key)))?;
            for (name, amount) in contribution(rt, &object) {
                if let Some(sum) = total.get_mut(&name) {
                    *sum += amount;
                }
            }
        }
    }
    Ok(total)
}

/// A quantity as Kubernetes prints it: `3`, `500m`, `64Mi`.
pub fn format(name: &str, milli: i128) -> String {
    let memory_like = name.contains("memory") || name.contains("storage");
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let units = milli / 1000;
    if memory_like && units != 0 {
        for (suffix, size) in [("Gi", 1i128 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
            if units % size == 0 {
                return format!("{}{suffix}", units / size);
            }
        }
    }
    units.to_string()
}

/// `spec.hard` of a quota as milli-units; unparseable amounts are left out.
pub fn hard(quota: &Value) -> BTreeMap<String, i128> {
    amounts(quota, "/spec/hard")
}

/// `status.used` of a quota as milli-units.
pub fn used(quota: &Value) -> BTreeMap<String, i128> {
    amounts(quota, "/status/used")
}

fn amounts(quota: &Value, pointer: &str) -> BTreeMap<String, i128> {
    quota
        .pointer(pointer)
        .and_then(Value::as_object)
        .map(|list| {
            list.iter()
                .filter_map(|(k, v)| Some((k.clone(), quantity::parse_nanos(v.as_str()?).ok()? / 1_000_000)))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_print_as_kubernetes_prints_them() {
        assert_eq!(format("pods", 3000), "3");
        assert_eq!(format("requests.cpu", 500), "500m");
        assert_eq!(format("requests.cpu", 2000), "2");
        assert_eq!(format("requests.memory", 64 * (1 << 20) * 1000), "64Mi");
        assert_eq!(format("requests.memory", 1000 * 1000), "1000");
    }

    #[test]
    fn hard_limits_read_as_milli_units() {
        let quota =
            serde_json::json!({"spec": {"hard": {"pods": "2", "requests.cpu": "1500m", "requests.memory": "1Gi"}}});
        let hard = hard(&quota);
        assert_eq!(hard["pods"], 2000);
        assert_eq!(hard["requests.cpu"], 1500);
        assert_eq!(hard["requests.memory"], (1i128 << 30) * 1000);
    }
}
