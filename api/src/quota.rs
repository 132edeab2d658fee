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
use serde_json::{Value, json};

use crate::crd::strings;
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

/// One requirement of a quota's scopes: `spec.scopes` entries are `Exists` requirements,
/// `spec.scopeSelector.matchExpressions` entries carry their operator and values.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ScopeRequirement {
    scope: String,
    operator: String,
    values: Vec<String>,
}

/// Which objects a quota counts: all of them without scopes; with scopes only pods, and
/// only those every scope matches (kube: the other evaluators match no scope).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    requirements: Vec<ScopeRequirement>,
}

const SCOPES: &[&str] =
    &["Terminating", "NotTerminating", "BestEffort", "NotBestEffort", "PriorityClass", "CrossNamespacePodAffinity"];

impl Scopes {
    pub fn of(quota: &Value) -> Scopes {
        let mut requirements: Vec<ScopeRequirement> = strings(quota.pointer("/spec/scopes"))
            .into_iter()
            .map(|scope| ScopeRequirement { scope, operator: "Exists".into(), values: Vec::new() })
            .collect();
        for expression in
            quota.pointer("/spec/scopeSelector/matchExpressions").and_then(Value::as_array).into_iter().flatten()
        {
            requirements.push(ScopeRequirement {
                scope: expression.get("scopeName").and_then(Value::as_str).unwrap_or("").into(),
                operator: expression.get("operator").and_then(Value::as_str).unwrap_or("").into(),
                values: strings(expression.get("values")),
            });
        }
        Scopes { requirements }
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object of `rt` counts against the quota (kube's `podMatchesScopeFunc`).
    pub fn matches(&self, rt: &ResourceType, object: &Value) -> bool {
        if self.is_empty() {
            return true;
        }
        if !(rt.group.is_empty() && rt.kind == "Pod") {
            return false;
        }
        let spec = object.get("spec").unwrap_or(&Value::Null);
        let terminating = spec.get("activeDeadlineSeconds").and_then(Value::as_i64).is_some_and(|s| s >= 0);
        let best_effort = is_best_effort(spec);
        let class = spec.get("priorityClassName").and_then(Value::as_str).unwrap_or("");
        self.requirements.iter().all(|r| match r.scope.as_str() {
            "Terminating" => terminating,
            "NotTerminating" => !terminating,
            "BestEffort" => best_effort,
            "NotBestEffort" => !best_effort,
            "PriorityClass" => match r.operator.as_str() {
                "Exists" => !class.is_empty(),
                "DoesNotExist" => class.is_empty(),
                "In" => r.values.iter().any(|v| v == class),
                "NotIn" => !r.values.iter().any(|v| v == class),
                _ => false,
            },
            "CrossNamespacePodAffinity" => uses_cross_namespace_affinity(spec),
            _ => false,
        })
    }
}

/// kube's BestEffort QoS: no container (init containers included) requests or limits cpu or
/// memory.
fn is_best_effort(spec: &Value) -> bool {
    ["containers", "initContainers"]
        .iter()
        .flat_map(|f| spec.get(*f).and_then(Value::as_array).into_iter().flatten())
        .all(|c| {
            ["requests", "limits"].iter().all(|list| {
                c.pointer(&format!("/resources/{list}"))
                    .and_then(Value::as_object)
                    .is_none_or(|l| !l.contains_key("cpu") && !l.contains_key("memory"))
            })
        })
}

/// kube's `usesCrossNamespacePodAffinity`: an (anti-)affinity term naming namespaces or
/// selecting them.
fn uses_cross_namespace_affinity(spec: &Value) -> bool {
    ["podAffinity", "podAntiAffinity"].iter().any(|kind| {
        let Some(affinity) = spec.pointer(&format!("/affinity/{kind}")) else { return false };
        let required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution").and_then(Value::as_array);
        let preferred = affinity.get("preferredDuringSchedulingIgnoredDuringExecution").and_then(Value::as_array);
        required
            .into_iter()
            .flatten()
            .chain(preferred.into_iter().flatten().filter_map(|w| w.get("podAffinityTerm")))
            .any(|term| {
                term.get("namespaces").and_then(Value::as_array).is_some_and(|n| !n.is_empty())
                    || term.get("namespaceSelector").is_some_and(|s| !s.is_null())
            })
    })
}

/// kube's `IsResourceQuotaScopeValidForResource`, for the standard resources it judges.
fn scope_allows(scope: &str, resource: &str) -> bool {
    const COMPUTE: &[&str] = &["cpu", "memory", "requests.cpu", "requests.memory", "limits.cpu", "limits.memory"];
    // kube's standard quota resources; extended ones (`requests.nvidia.com/gpu`) are not
    // judged.
    let standard = legacy_count(resource).is_some()
        || COMPUTE.contains(&resource)
        || matches!(
            resource,
            "ephemeral-storage"
                | "requests.ephemeral-storage"
                | "limits.ephemeral-storage"
                | "requests.storage"
                | "services.nodeports"
                | "services.loadbalancers"
        )
        || ["hugepages-", "requests.hugepages-", "limits.hugepages-"].iter().any(|p| resource.starts_with(p));
    if !standard {
        return true;
    }
    match scope {
        "BestEffort" => resource == "pods",
        "Terminating" | "NotTerminating" | "NotBestEffort" | "PriorityClass" | "CrossNamespacePodAffinity" => {
            resource == "pods" || COMPUTE.contains(&resource)
        }
        _ => true,
    }
}

/// kube's `validateResourceQuotaScopes` and `validateScopeSelector`.
pub fn scope_causes(quota: &Value) -> Vec<crate::error::FieldCause> {
    use crate::error::FieldCause;
    let mut causes = Vec::new();
    let hard: Vec<String> =
        quota.pointer("/spec/hard").and_then(Value::as_object).map(|h| h.keys().cloned().collect()).unwrap_or_default();
    let scopes = strings(quota.pointer("/spec/scopes"));
    let scopes_text = json!(scopes).to_string();
    for scope in &scopes {
        if !SCOPES.contains(&scope.as_str()) {
            causes.push(FieldCause::invalid("spec.scopes", format!("Invalid value: {scopes_text}: unsupported scope")));
        }
        for resource in hard.iter().filter(|r| !scope_allows(scope, r)) {
            causes.push(FieldCause::invalid(
                "spec.scopes",
                format!("Invalid value: {scopes_text}: unsupported scope applied to resource {resource}"),
            ));
        }
    }
    for (a, b) in [("BestEffort", "NotBestEffort"), ("Terminating", "NotTerminating")] {
        if scopes.iter().any(|s| s == a) && scopes.iter().any(|s| s == b) {
            causes
                .push(FieldCause::invalid("spec.scopes", format!("Invalid value: {scopes_text}: conflicting scopes")));
        }
    }
    let expressions = quota.pointer("/spec/scopeSelector/matchExpressions").and_then(Value::as_array);
    for (i, expression) in expressions.into_iter().flatten().enumerate() {
        let at = format!("spec.scopeSelector.matchExpressions[{i}]");
        let scope = expression.get("scopeName").and_then(Value::as_str).unwrap_or("");
        let operator = expression.get("operator").and_then(Value::as_str).unwrap_or("");
        let values = strings(expression.get("values"));
        if !SCOPES.contains(&scope) {
            causes.push(FieldCause::invalid(
                format!("{at}.scopeName"),
                format!("Invalid value: {scope:?}: unsupported scope"),
            ));
        }
        for resource in hard.iter().filter(|r| !scope_allows(scope, r)) {
            causes.push(FieldCause::invalid(
                "spec.scopeSelector",
                format!("Invalid value: {scope:?}: unsupported scope applied to resource {resource}"),
            ));
        }
        if scope != "PriorityClass" && SCOPES.contains(&scope) && operator != "Exists" {
            causes.push(FieldCause::invalid(
                format!("{at}.operator"),
                format!("Invalid value: {operator:?}: must be 'Exist' when scope is any of ResourceQuotaScopeTerminating, ResourceQuotaScopeNotTerminating, ResourceQuotaScopeBestEffort, ResourceQuotaScopeNotBestEffort or ResourceQuotaScopeCrossNamespacePodAffinity"),
            ));
        }
        match operator {
            "In" | "NotIn" if values.is_empty() => causes.push(FieldCause {
                reason: "FieldValueRequired",
                field: format!("{at}.values"),
                message: "Required value: must be at least one value when `operator` is 'In' or 'NotIn' for scope selector".into(),
            }),
            "Exists" | "DoesNotExist" if !values.is_empty() => causes.push(FieldCause::invalid(
                format!("{at}.values"),
                format!("Invalid value: {}: must be no value when `operator` is 'Exist' or 'DoesNotExist' for scope selector", json!(values)),
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => causes.push(FieldCause::invalid(format!("{at}.operator"), format!("Invalid value: {other:?}: not a valid selector operator"))),
        }
    }
    causes
}

/// What the objects of `types` in `namespace` that `scopes` let count use now, for the
/// resources in `wanted`.
pub async fn usage(
    storage: &SharedStorage,
    types: &[std::sync::Arc<ResourceType>],
    namespace: &str,
    wanted: &[String],
    scopes: &Scopes,
) -> Result<Usage> {
    let mut total = Usage::new();
    for name in wanted {
        total.insert(name.clone(), 0);
    }
    // Versions of one kind share its storage (a converted view, a CRD's versions): each
    // stored object is counted once.
    let mut seen_prefixes = std::collections::HashSet::new();
    for rt in types {
        if !rt.namespaced || !seen_prefixes.insert(rt.storage_prefix.as_str()) {
            continue;
        }
        let probe = contribution(rt, &serde_json::json!({}));
        let pod = rt.group.is_empty() && rt.kind == "Pod";
        if !pod && (!scopes.is_empty() || !wanted.iter().any(|w| probe.contains_key(w))) {
            continue;
        }
        let prefix = rt.list_prefix(Some(namespace));
        let page = storage.list(&prefix, &prefix_end(&prefix), 0, 0, Consistency::Local).await?;
        for item in &page.items {
            let object: Value = serde_json::from_slice(&item.value)
                .map_err(|e| ApiError::internal(format!("object at {} is not JSON: {e}", item.key)))?;
            if !scopes.matches(rt, &object) {
                continue;
            }
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

    fn pod_rt() -> ResourceType {
        crate::registry::builtins().into_iter().find(|t| t.kind == "Pod").unwrap()
    }

    #[test]
    fn scopes_pick_the_pods_a_quota_counts() {
        let best_effort = json!({"spec": {"containers": [{"name": "a"}]}});
        let burstable_job = json!({"spec": {"activeDeadlineSeconds": 60, "priorityClassName": "high",
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "100m"}}}]}});
        let cross = json!({"spec": {"containers": [{"name": "a"}], "affinity": {"podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "podAffinityTerm": {"topologyKey": "x", "namespaces": ["other"]}}]}}}});
        let quota = |spec: Value| Scopes::of(&json!({"spec": spec}));
        // (scopes, [best_effort, burstable_job, cross])
        let cases = [
            (json!({}), [true, true, true]),
            (json!({"scopes": ["BestEffort"]}), [true, false, true]),
            (json!({"scopes": ["NotBestEffort"]}), [false, true, false]),
            (json!({"scopes": ["Terminating"]}), [false, true, false]),
            (json!({"scopes": ["NotTerminating", "BestEffort"]}), [true, false, true]),
            (json!({"scopes": ["CrossNamespacePodAffinity"]}), [false, false, true]),
            (
                json!({"scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}),
                [false, true, false],
            ),
            (
                json!({"scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "NotIn", "values": ["high"]}]}}),
                [true, false, true],
            ),
            (
                json!({"scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "Exists"}]}}),
                [false, true, false],
            ),
        ];
        let rt = pod_rt();
        for (spec, want) in cases {
            let scopes = quota(spec.clone());
            let got = [&best_effort, &burstable_job, &cross].map(|p| scopes.matches(&rt, p));
            assert_eq!(got, want, "{spec}");
        }
        let config_maps = crate::registry::builtins().into_iter().find(|t| t.kind == "ConfigMap").unwrap();
        assert!(
            !quota(json!({"scopes": ["NotTerminating"]})).matches(&config_maps, &json!({})),
            "scoped quotas count pods only"
        );
        assert!(quota(json!({})).matches(&config_maps, &json!({})));
    }

    #[test]
    fn scopes_must_suit_the_resources_they_limit() {
        let causes =
            |spec: Value| scope_causes(&json!({"spec": spec})).into_iter().map(|c| c.message).collect::<Vec<_>>();
        assert!(causes(json!({"hard": {"pods": "3", "requests.cpu": "1"}, "scopes": ["NotBestEffort"]})).is_empty());
        assert_eq!(
            causes(json!({"hard": {"requests.cpu": "1"}, "scopes": ["BestEffort"]})),
            ["Invalid value: [\"BestEffort\"]: unsupported scope applied to resource requests.cpu"]
        );
        assert_eq!(causes(json!({"hard": {"pods": "1"}, "scopes": ["Terminating", "NotTerminating"]})).len(), 1);
        assert_eq!(causes(json!({"hard": {"pods": "1"}, "scopes": ["Sometimes"]})).len(), 1);
        assert_eq!(causes(json!({"hard": {"configmaps": "1"}, "scopes": ["Terminating"]})).len(), 1);
        assert!(
            causes(json!({"hard": {"count/deployments.apps": "1"}, "scopes": ["BestEffort"]})).is_empty(),
            "not a standard resource"
        );
        assert!(
            causes(json!({"hard": {"requests.nvidia.com/gpu": "1"}, "scopes": ["NotTerminating"]})).is_empty(),
            "extended"
        );
        let selector = |op: &str, values: Value| json!({"hard": {"pods": "1"}, "scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": op, "values": values}]}});
        assert!(causes(selector("In", json!(["high"]))).is_empty());
        assert_eq!(causes(selector("In", json!([]))).len(), 1);
        assert_eq!(causes(selector("Exists", json!(["high"]))).len(), 1);
        assert_eq!(causes(selector("Near", json!(["high"]))).len(), 1);
    }
}
