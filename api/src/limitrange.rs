//! The LimitRanger admission plugin, as kube-apiserver's: the LimitRanges of a namespace
//! give new pods' containers their default requests and limits (and say so in the pod's
//! `kubernetes.io/limit-ranger` annotation), and refuse pods and claims outside their
//! min/max and limit-to-request ratios with kube's messages.
//!
//! * Pods are defaulted and checked when created only: their containers' resources cannot
//!   change afterwards. Claims are checked when created and updated (their storage request).
//! * `Container` items apply to every container and init container. `Pod` items apply to
//!   the pod's sums, where an init container counts as the largest of them (it runs alone).
//!   `PersistentVolumeClaim` items bound the claim's storage request.
//! * The first LimitRange that refuses decides, with all of its complaints.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use keel_scheduler_framework::quantity;
use serde_json::{Map, Value, json};

use crate::admission::{Attributes, Operation, Plugin};
use crate::error::{ApiError, Result};
use crate::storage::{Consistency, SharedStorage, prefix_end};

pub const ANNOTATION: &str = "kubernetes.io/limit-ranger";

pub struct LimitRanger {
    pub storage: SharedStorage,
}

/// A resource list as written (name to quantity text).
type Amounts = BTreeMap<String, String>;

fn amounts(value: Option<&Value>) -> Amounts {
    value
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default()
}

fn nanos(q: &str) -> i128 {
    quantity::parse_nanos(q).unwrap_or(0)
}

/// Prints a sum the way it was written when one container gave it, else in plain units (or
/// milli-units when fractional), as kube's `Quantity.String` prints canonical amounts.
fn print(n: i128) -> String {
    if n % 1_000_000_000 == 0 { (n / 1_000_000_000).to_string() } else { format!("{}m", n / 1_000_000) }
}

/// What `item` of `type_` says about `resource` in one of its lists.
struct Item<'a> {
    type_: &'a str,
    value: &'a Value,
}

impl Item<'_> {
    fn list(&self, field: &str) -> Amounts {
        amounts(self.value.get(field))
    }
}

fn items(range: &Value) -> Vec<Item<'_>> {
    range
        .pointer("/spec/limits")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .map(|value| Item { type_: value.get("type").and_then(Value::as_str).unwrap_or(""), value })
                .collect()
        })
        .unwrap_or_default()
}

/// kube's `minConstraint`.
fn min_constraint(kind: &str, resource: &str, enforced: &str, requests: &Amounts, limits: &Amounts) -> Option<String> {
    let Some(request) = requests.get(resource) else {
        return Some(format!("minimum {resource} usage per {kind} is {enforced}.  No request is specified"));
    };
    if nanos(request) < nanos(enforced) {
        return Some(format!("minimum {resource} usage per {kind} is {enforced}, but request is {request}"));
    }
    match limits.get(resource) {
        Some(limit) if nanos(limit) < nanos(enforced) => {
            Some(format!("minimum {resource} usage per {kind} is {enforced}, but limit is {limit}"))
        }
        _ => None,
    }
}

/// kube's `maxConstraint`.
fn max_constraint(kind: &str, resource: &str, enforced: &str, requests: &Amounts, limits: &Amounts) -> Option<String> {
    let Some(limit) = limits.get(resource) else {
        return Some(format!("maximum {resource} usage per {kind} is {enforced}.  No limit is specified"));
    };
    if nanos(limit) > nanos(enforced) {
        return Some(format!("maximum {resource} usage per {kind} is {enforced}, but limit is {limit}"));
    }
    match requests.get(resource) {
        Some(request) if nanos(request) > nanos(enforced) => {
            Some(format!("maximum {resource} usage per {kind} is {enforced}, but request is {request}"))
        }
        _ => None,
    }
}

/// kube's `maxRequestConstraint` (claims: only the request is the user's).
fn max_request_constraint(kind: &str, resource: &str, enforced: &str, requests: &Amounts) -> Option<String> {
    let Some(request) = requests.get(resource) else {
        return Some(format!("maximum {resource} usage per {kind} is {enforced}.  No request is specified"));
    };
    (nanos(request) > nanos(enforced))
        .then(|| format!("maximum {resource} usage per {kind} is {enforced}, but request is {request}"))
}

/// kube's `limitRequestRatioConstraint`.
fn ratio_constraint(
    kind: &str,
    resource: &str,
    enforced: &str,
    requests: &Amounts,
    limits: &Amounts,
) -> Option<String> {
    let request = requests.get(resource).map(|r| nanos(r)).filter(|r| *r != 0);
    let limit = limits.get(resource).map(|l| nanos(l)).filter(|l| *l != 0);
    let Some(request) = request else {
        return Some(format!(
            "{resource} max limit to request ratio per {kind} is {enforced}, but no request is specified or request is 0"
        ));
    };
    let Some(limit) = limit else {
        return Some(format!(
            "{resource} max limit to request ratio per {kind} is {enforced}, but no limit is specified or limit is 0"
        ));
    };
    let observed = limit as f64 / request as f64;
    (observed > nanos(enforced) as f64 / 1e9).then(|| {
        format!("{resource} max limit to request ratio per {kind} is {enforced}, but provided ratio is {observed:.6}")
    })
}

/// Every check of one item against one set of requests and limits.
fn check(item: &Item<'_>, kind: &str, requests: &Amounts, limits: &Amounts, errors: &mut Vec<String>) {
    for (resource, enforced) in item.list("min") {
        errors.extend(min_constraint(kind, &resource, &enforced, requests, limits));
    }
    for (resource, enforced) in item.list("max") {
        errors.extend(max_constraint(kind, &resource, &enforced, requests, limits));
    }
    for (resource, enforced) in item.list("maxLimitRequestRatio") {
        errors.extend(ratio_constraint(kind, &resource, &enforced, requests, limits));
    }
}

fn containers<'a>(pod: &'a Value, field: &str) -> impl Iterator<Item = &'a Value> {
    pod.pointer(&format!("/spec/{field}")).and_then(Value::as_array).into_iter().flatten()
}

fn resources(container: &Value, list: &str) -> Amounts {
    amounts(container.pointer(&format!("/resources/{list}")))
}

/// The pod's total of `list`: containers summed, an init container counted as the largest.
fn pod_total(pod: &Value, list: &str) -> Amounts {
    let mut sums: BTreeMap<String, i128> = BTreeMap::new();
    for container in containers(pod, "containers") {
        for (resource, amount) in resources(container, list) {
            *sums.entry(resource).or_default() += nanos(&amount);
        }
    }
    for container in containers(pod, "initContainers") {
        for (resource, amount) in resources(container, list) {
            let sum = sums.entry(resource).or_default();
            *sum = (*sum).max(nanos(&amount));
        }
    }
    let written: BTreeMap<String, String> = containers(pod, "containers")
        .chain(containers(pod, "initContainers"))
        .flat_map(|c| resources(c, list))
        .collect();
    sums.into_iter()
        .map(|(resource, n)| {
            // One container's own text when the total is just that amount.
            let text = written.get(&resource).filter(|w| nanos(w) == n).cloned().unwrap_or_else(|| print(n));
            (resource, text)
        })
        .collect()
}

/// kube's `PodValidateLimitFunc`: the complaints of one LimitRange about a pod.
pub fn pod_errors(range: &Value, pod: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    for item in items(range) {
        match item.type_ {
            "Container" => {
                for container in containers(pod, "containers").chain(containers(pod, "initContainers")) {
                    check(
                        &item,
                        "Container",
                        &resources(container, "requests"),
                        &resources(container, "limits"),
                        &mut errors,
                    );
                }
            }
            "Pod" => check(&item, "Pod", &pod_total(pod, "requests"), &pod_total(pod, "limits"), &mut errors),
            _ => {}
        }
    }
    errors
}

/// kube's `PersistentVolumeClaimValidateLimitFunc`.
pub fn claim_errors(range: &Value, claim: &Value) -> Vec<String> {
    let requests = amounts(claim.pointer("/spec/resources/requests"));
    let mut errors = Vec::new();
    for item in items(range).iter().filter(|i| i.type_ == "PersistentVolumeClaim") {
        for (resource, enforced) in item.list("min") {
            errors.extend(min_constraint("PersistentVolumeClaim", &resource, &enforced, &requests, &Amounts::new()));
        }
        for (resource, enforced) in item.list("max") {
            errors.extend(max_request_constraint("PersistentVolumeClaim", &resource, &enforced, &requests));
        }
    }
    errors
}

/// kube's `defaultContainerResourceRequirements` and `mergePodResourceRequirements`: the
/// defaults of a LimitRange's Container items filled into every container that lacks them.
/// Returns what was set, as the annotation words it.
pub fn default_pod(range: &Value, pod: &mut Value) -> Vec<String> {
    let mut default_requests = Amounts::new();
    let mut default_limits = Amounts::new();
    for item in items(range).iter().filter(|i| i.type_ == "Container") {
        default_requests.extend(item.list("defaultRequest"));
        default_limits.extend(item.list("default"));
    }
    let mut notes = Vec::new();
    if default_requests.is_empty() && default_limits.is_empty() {
        return notes;
    }
    for (field, what) in [("containers", "container"), ("initContainers", "init container")] {
        let Some(list) = pod.pointer_mut(&format!("/spec/{field}")).and_then(Value::as_array_mut) else { continue };
        for container in list {
            let name = container.get("name").and_then(Value::as_str).unwrap_or("").to_string();
            let Some(container) = container.as_object_mut() else { continue };
            let resources = container.entry("resources").or_insert_with(|| json!({}));
            let Some(resources) = resources.as_object_mut() else { continue };
            let mut fill = |list: &str, defaults: &Amounts| -> Vec<String> {
                if defaults.is_empty() {
                    return Vec::new();
                }
                let entry = resources.entry(list).or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                let mut set = Vec::new();
                if let Some(map) = entry.as_object_mut() {
                    for (resource, amount) in defaults {
                        if !map.contains_key(resource) {
                            map.insert(resource.clone(), json!(amount));
                            set.push(resource.clone());
                        }
                    }
                }
                set
            };
            let limits_set = fill("limits", &default_limits);
            let requests_set = fill("requests", &default_requests);
            if !requests_set.is_empty() {
                notes.push(format!("{} request for {what} {name}", requests_set.join(", ")));
            }
            if !limits_set.is_empty() {
                notes.push(format!("{} limit for {what} {name}", limits_set.join(", ")));
            }
        }
    }
    notes
}

/// kube's `ValidateLimitRange` for what clients get wrong: known and unrepeated types, no
/// defaults on `Pod` items, a storage bound on `PersistentVolumeClaim` items, and per
/// resource min ≤ defaultRequest ≤ default ≤ max and a ratio of at least 1. Run after
/// defaulting, as kube runs it (a default taken from max is checked too).
pub fn validation_causes(range: &Value) -> Vec<crate::error::FieldCause> {
    use crate::error::FieldCause;
    let mut causes = Vec::new();
    let mut seen_types = Vec::new();
    for (i, item) in items(range).iter().enumerate() {
        let at = format!("spec.limits[{i}]");
        if !matches!(item.type_, "Pod" | "Container" | "PersistentVolumeClaim") {
            causes.push(FieldCause::invalid(
                format!("{at}.type"),
                format!("Invalid value: {:?}: must be a standard limit type or fully qualified", item.type_),
            ));
        }
        if seen_types.contains(&item.type_) {
            causes.push(FieldCause {
                reason: "FieldValueDuplicate",
                field: format!("{at}.type"),
                message: format!("Duplicate value: {:?}", item.type_),
            });
        }
        seen_types.push(item.type_);
        let (min, max, default, default_request, ratio) = (
            item.list("min"),
            item.list("max"),
            item.list("default"),
            item.list("defaultRequest"),
            item.list("maxLimitRequestRatio"),
        );
        if item.type_ == "Pod" {
            for field in ["default", "defaultRequest"] {
                if !item.list(field).is_empty() {
                    causes.push(FieldCause {
                        reason: "FieldValueForbidden",
                        field: format!("{at}.{field}"),
                        message: "Forbidden: may not be specified when `type` is 'Pod'".into(),
                    });
                }
            }
        }
        if item.type_ == "PersistentVolumeClaim" && !min.contains_key("storage") && !max.contains_key("storage") {
            causes.push(FieldCause {
                reason: "FieldValueRequired",
                field: format!("{at}.limits"),
                message:
                    "Required value: either minimum or maximum storage value is required, but neither was provided"
                        .into(),
            });
        }
        for list in [&min, &max, &default, &default_request, &ratio] {
            for (resource, amount) in list.iter() {
                if quantity::parse_nanos(amount).is_err() {
                    causes.push(FieldCause::invalid(
                        format!("{at}[{resource}]"),
                        format!("Invalid value: {amount:?}: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"),
                    ));
                }
            }
        }
        let resources: std::collections::BTreeSet<&String> = min
            .keys()
            .chain(max.keys())
            .chain(default.keys())
            .chain(default_request.keys())
            .chain(ratio.keys())
            .collect();
        for resource in resources {
            let get = |list: &Amounts| list.get(resource).map(|q| (q.clone(), nanos(q)));
            let (min, max, default, request, ratio) =
                (get(&min), get(&max), get(&default), get(&default_request), get(&ratio));
            let mut invalid = |field: &str, value: &str, message: String| {
                causes.push(FieldCause::invalid(
                    format!("{at}.{field}[{resource}]"),
                    format!("Invalid value: {value:?}: {message}"),
                ));
            };
            if let (Some(lo), Some(hi)) = (&min, &max)
                && lo.1 > hi.1
            {
                invalid("min", &lo.0, format!("min value {} is greater than max value {}", lo.0, hi.0));
            }
            if let (Some(lo), Some(r)) = (&min, &request)
                && lo.1 > r.1
            {
                invalid(
                    "defaultRequest",
                    &r.0,
                    format!("min value {} is greater than default request value {}", lo.0, r.0),
                );
            }
            if let (Some(r), Some(hi)) = (&request, &max)
                && r.1 > hi.1
            {
                invalid(
                    "defaultRequest",
                    &r.0,
                    format!("default request value {} is greater than max value {}", r.0, hi.0),
                );
            }
            if let (Some(r), Some(d)) = (&request, &default)
                && r.1 > d.1
            {
                invalid(
                    "defaultRequest",
                    &r.0,
                    format!("default request value {} is greater than default limit value {}", r.0, d.0),
                );
            }
            if let (Some(lo), Some(d)) = (&min, &default)
                && lo.1 > d.1
            {
                invalid("default", &lo.0, format!("min value {} is greater than default value {}", lo.0, d.0));
            }
            if let (Some(d), Some(hi)) = (&default, &max)
                && d.1 > hi.1
            {
                invalid("default", &hi.0, format!("default value {} is greater than max value {}", d.0, hi.0));
            }
            if let Some(r) = &ratio
                && r.1 < 1_000_000_000
            {
                invalid("maxLimitRequestRatio", &r.0, format!("ratio {} is less than 1", r.0));
            }
        }
    }
    causes
}

/// kube's aggregate error text: one message alone, several (without repeats) in brackets.
fn aggregate(errors: Vec<String>) -> String {
    let mut seen: Vec<String> = Vec::new();
    for e in errors {
        if !seen.contains(&e) {
            seen.push(e);
        }
    }
    if seen.len() == 1 { seen.remove(0) } else { format!("[{}]", seen.join(", ")) }
}

fn is_core(a: &Attributes<'_>, kind: &str) -> bool {
    a.resource.group.is_empty() && a.resource.kind == kind && a.subresource.is_none()
}

impl LimitRanger {
    async fn ranges(&self, namespace: &str) -> Result<Vec<Value>> {
        let prefix = format!("/registry/core/limitranges/{namespace}/");
        let page = self.storage.list(&prefix, &prefix_end(&prefix), 0, 0, Consistency::Local).await?;
        page.items
            .iter()
            .map(|item| {
                serde_json::from_slice(&item.value)
                    .map_err(|e| ApiError::internal(format!("{} is not JSON: {e}", item.key)))
            })
            .collect()
    }

    fn forbidden(a: &Attributes<'_>, errors: Vec<String>) -> ApiError {
        ApiError::Forbidden {
            resource: a.resource.plural.clone(),
            name: a.name.into(),
            message: format!("{} \"{}\" is forbidden: {}", a.resource.plural, a.name, aggregate(errors)),
        }
    }
}

impl Plugin for LimitRanger {
    fn name(&self) -> &'static str {
        "LimitRanger"
    }

    fn resolve<'a>(&'a self, a: &'a Attributes<'a>, object: &'a mut Value) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (Some(namespace), Operation::Create) = (a.namespace, a.operation) else { return Ok(()) };
            if !is_core(a, "Pod") {
                return Ok(());
            }
            let mut notes = Vec::new();
            for range in self.ranges(namespace).await? {
                notes.extend(default_pod(&range, object));
            }
            if !notes.is_empty() {
                let meta = crate::object::meta_mut(object);
                let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
                if !annotations.is_object() {
                    *annotations = json!({});
                }
                annotations[ANNOTATION] = json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
            }
            Ok(())
        })
    }

    fn validate<'a>(&'a self, a: &'a Attributes<'a>, object: &'a Value) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(namespace) = a.namespace else { return Ok(()) };
            let check: fn(&Value, &Value) -> Vec<String> = match a.operation {
                Operation::Create if is_core(a, "Pod") => pod_errors,
                Operation::Create | Operation::Update if is_core(a, "PersistentVolumeClaim") => claim_errors,
                _ => return Ok(()),
            };
            for range in self.ranges(namespace).await? {
                let errors = check(&range, object);
                if !errors.is_empty() {
                    return Err(Self::forbidden(a, errors));
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(limits: Value) -> Value {
        json!({"spec": {"limits": limits}})
    }

    fn pod(containers: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": containers}})
    }

    #[test]
    fn defaults_fill_only_what_is_missing_and_say_so() {
        let r = range(
            json!([{"type": "Container", "default": {"cpu": "500m", "memory": "256Mi"}, "defaultRequest": {"cpu": "100m", "memory": "128Mi"}}]),
        );
        let mut p = pod(json!([
            {"name": "app", "resources": {"limits": {"cpu": "1"}}},
            {"name": "side"},
        ]));
        let notes = default_pod(&r, &mut p);
        assert_eq!(
            notes,
            [
                "cpu, memory request for container app",
                "memory limit for container app",
                "cpu, memory request for container side",
                "cpu, memory limit for container side",
            ]
        );
        assert_eq!(
            p["spec"]["containers"][0]["resources"],
            json!({"limits": {"cpu": "1", "memory": "256Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}})
        );
        assert_eq!(p["spec"]["containers"][1]["resources"]["limits"]["cpu"], "500m");
        let mut again = p.clone();
        assert!(default_pod(&r, &mut again).is_empty(), "a defaulted pod needs nothing more");
        assert_eq!(again, p);
    }

    #[test]
    fn container_and_pod_bounds_give_kubes_messages() {
        let r = range(json!([
            {"type": "Container", "min": {"cpu": "100m"}, "max": {"memory": "1Gi"}, "maxLimitRequestRatio": {"cpu": "2"}},
            {"type": "Pod", "max": {"cpu": "1"}},
        ]));
        // (what, containers, complaints)
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            (
                "within every bound",
                json!([{"name": "a", "resources": {"requests": {"cpu": "200m"}, "limits": {"cpu": "400m", "memory": "512Mi"}}}]),
                vec![],
            ),
            (
                "request under the minimum",
                json!([{"name": "a", "resources": {"requests": {"cpu": "50m"}, "limits": {"cpu": "100m", "memory": "1Gi"}}}]),
                vec!["minimum cpu usage per Container is 100m, but request is 50m"],
            ),
            (
                "no memory limit under a maximum",
                json!([{"name": "a", "resources": {"requests": {"cpu": "200m"}, "limits": {"cpu": "200m"}}}]),
                vec!["maximum memory usage per Container is 1Gi.  No limit is specified"],
            ),
            (
                "limit too far above the request",
                json!([{"name": "a", "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "300m", "memory": "1Gi"}}}]),
                vec!["cpu max limit to request ratio per Container is 2, but provided ratio is 3.000000"],
            ),
            (
                "the pod's sum over its maximum",
                json!([
                    {"name": "a", "resources": {"requests": {"cpu": "400m"}, "limits": {"cpu": "600m", "memory": "1Gi"}}},
                    {"name": "b", "resources": {"requests": {"cpu": "400m"}, "limits": {"cpu": "600m", "memory": "1Gi"}}},
                ]),
                vec!["maximum cpu usage per Pod is 1, but limit is 1200m"],
            ),
        ];
        for (what, containers, want) in cases {
            assert_eq!(pod_errors(&r, &pod(containers)), want, "{what}");
        }
        assert_eq!(aggregate(vec!["a".into(), "b".into(), "a".into()]), "[a, b]");
        assert_eq!(aggregate(vec!["a".into()]), "a");
    }

    #[test]
    fn init_containers_count_as_the_largest_of_them() {
        let r = range(json!([{"type": "Pod", "max": {"cpu": "1"}}]));
        let mut p = pod(json!([{"name": "a", "resources": {"limits": {"cpu": "300m"}}}]));
        p["spec"]["initContainers"] = json!([
            {"name": "i1", "resources": {"limits": {"cpu": "900m"}}},
            {"name": "i2", "resources": {"limits": {"cpu": "800m"}}},
        ]);
        assert!(pod_errors(&r, &p).is_empty(), "900m, the largest init container, is under 1");
        p["spec"]["initContainers"][1]["resources"]["limits"]["cpu"] = json!("2");
        assert_eq!(pod_errors(&r, &p), ["maximum cpu usage per Pod is 1, but limit is 2"]);
    }

    #[test]
    fn claims_are_bounded_by_their_storage_request() {
        let r =
            range(json!([{"type": "PersistentVolumeClaim", "min": {"storage": "1Gi"}, "max": {"storage": "10Gi"}}]));
        let claim = |size: &str| json!({"spec": {"resources": {"requests": {"storage": size}}}});
        assert!(claim_errors(&r, &claim("5Gi")).is_empty());
        assert_eq!(
            claim_errors(&r, &claim("500Mi")),
            ["minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 500Mi"]
        );
        assert_eq!(
            claim_errors(&r, &claim("20Gi")),
            ["maximum storage usage per PersistentVolumeClaim is 10Gi, but request is 20Gi"]
        );
    }

    #[test]
    fn ranges_that_contradict_themselves_are_invalid() {
        let causes = |limits: Value| -> Vec<String> {
            validation_causes(&range(limits)).into_iter().map(|c| format!("{}: {}", c.field, c.message)).collect()
        };
        assert!(causes(json!([{"type": "Container", "min": {"cpu": "100m"}, "default": {"cpu": "500m"}, "defaultRequest": {"cpu": "200m"}, "max": {"cpu": "1"}}])).is_empty());
        assert_eq!(
            causes(json!([{"type": "Container", "defaultRequest": {"cpu": "2"}, "default": {"cpu": "1"}}])),
            [
                "spec.limits[0].defaultRequest[cpu]: Invalid value: \"2\": default request value 2 is greater than default limit value 1"
            ]
        );
        assert_eq!(
            causes(json!([{"type": "Pod", "default": {"cpu": "1"}}, {"type": "Pod"}])),
            [
                "spec.limits[0].default: Forbidden: may not be specified when `type` is 'Pod'",
                "spec.limits[1].type: Duplicate value: \"Pod\"",
            ]
        );
        assert_eq!(causes(json!([{"type": "PersistentVolumeClaim"}])).len(), 1);
        assert_eq!(causes(json!([{"type": "Node"}])).len(), 1);
        assert_eq!(
            causes(json!([{"type": "Container", "maxLimitRequestRatio": {"cpu": "500m"}}])),
            ["spec.limits[0].maxLimitRequestRatio[cpu]: Invalid value: \"500m\": ratio 500m is less than 1"]
        );
    }
}
