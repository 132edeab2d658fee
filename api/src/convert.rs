//! Conversion between versions of one kind stored once: a version other than the stored one
//! is a view, converted on every read and write, as kube-apiserver converts through its
//! internal version.
//!
//! HorizontalPodAutoscaler: stored as autoscaling/v2 and served as autoscaling/v1 too. What
//! v1 cannot say (metrics other than a cpu utilization target, the current metrics, the
//! conditions, `behavior`) travels in kube's round-trip annotations
//! (`autoscaling.alpha.kubernetes.io/…`), written in the old v2beta1 shape of the metrics
//! exactly as kube-apiserver writes them, so a v1 client that reads and writes back an
//! object loses nothing.
//!
//! Event: stored as core/v1 and served as events.k8s.io/v1 too, field for field as kube
//! converts them (`regarding` is `involvedObject`, `note` is `message`, …).
//!
//! A CustomResourceDefinition's versions other than its storage version convert as kube's
//! `None` strategy converts them: only `apiVersion` changes.

use serde_json::{Map, Value, json};

use crate::object;

/// How a served version that is not stored converts to and from the stored one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conversion {
    /// autoscaling/v1 HorizontalPodAutoscaler over the stored autoscaling/v2 one.
    HorizontalPodAutoscalerV1,
    /// events.k8s.io/v1 Event over the stored core/v1 one.
    EventsV1,
    /// A custom resource's version over its storage version: `apiVersion` rewritten.
    ApiVersion { served: String, stored: String },
}

impl Conversion {
    /// The stored object (with its resourceVersion) as the served version.
    pub fn from_stored(&self, stored: Value) -> Value {
        match self {
            Conversion::HorizontalPodAutoscalerV1 => hpa_v2_to_v1(stored),
            Conversion::EventsV1 => core_event_to_events_v1(stored),
            Conversion::ApiVersion { served, .. } => with_api_version(stored, served),
        }
    }

    /// A served object as the stored version.
    pub fn to_stored(&self, served: Value) -> Value {
        match self {
            Conversion::HorizontalPodAutoscalerV1 => hpa_v1_to_v2(served),
            Conversion::EventsV1 => events_v1_to_core_event(served),
            Conversion::ApiVersion { stored, .. } => with_api_version(served, stored),
        }
    }
}

fn with_api_version(mut object: Value, api_version: &str) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".into(), json!(api_version));
    }
    object
}

/// Fields whose names differ between events.k8s.io/v1 and core/v1 Events; the rest
/// (metadata, eventTime, series, reportingInstance, action, reason, related, type) are
/// the same in both.
const EVENT_RENAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("reportingController", "reportingComponent"),
];

fn rename_fields(object: Value, api_version: &str, to_core: bool) -> Value {
    let Value::Object(mut map) = object else { return object };
    for (events_name, core_name) in EVENT_RENAMES {
        let (from, to) = if to_core { (events_name, core_name) } else { (core_name, events_name) };
        match map.remove(*from) {
            Some(value) => {
                map.insert(to.to_string(), value);
            }
            None => {
                map.remove(*to);
            }
        }
    }
    map.insert("apiVersion".into(), json!(api_version));
    Value::Object(map)
}

/// kube's `Convert_core_Event_To_v1_Event` (events.k8s.io).
pub fn core_event_to_events_v1(core: Value) -> Value {
    rename_fields(core, "events.k8s.io/v1", false)
}

/// kube's `Convert_v1_Event_To_core_Event` (events.k8s.io).
pub fn events_v1_to_core_event(event: Value) -> Value {
    rename_fields(event, "v1", true)
}

const METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
const CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
const CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";
const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";

/// Copies `from[key]` to `to[key]` (under `rename` if given) when present and not null.
fn carry(from: &Value, to: &mut Map<String, Value>, key: &str, rename: Option<&str>) {
    if let Some(v) = from.get(key).filter(|v| !v.is_null()) {
        to.insert(rename.unwrap_or(key).to_string(), v.clone());
    }
}

fn is_cpu_utilization_target(metric: &Value) -> bool {
    metric.get("type").and_then(Value::as_str) == Some("Resource")
        && metric.pointer("/resource/name").and_then(Value::as_str) == Some("cpu")
        && metric.pointer("/resource/target/averageUtilization").is_some_and(|u| !u.is_null())
}

fn set_annotation(object: &mut Value, key: &str, value: &Value) {
    let meta = object::meta_mut(object);
    let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
    if !annotations.is_object() {
        *annotations = json!({});
    }
    annotations[key] = json!(value.to_string());
}

/// Takes kube's round-trip annotation `key` off `object`, parsed.
fn take_annotation(object: &mut Value, key: &str) -> Option<Value> {
    let meta = object::meta_mut(object);
    let annotations = meta.get_mut("annotations")?.as_object_mut()?;
    let text = annotations.remove(key)?;
    if annotations.is_empty() {
        meta.remove("annotations");
    }
    serde_json::from_str(text.as_str()?).ok()
}

fn metric_spec_v2_to_v1(metric: &Value) -> Value {
    let kind = metric.get("type").and_then(Value::as_str).unwrap_or("");
    let empty = json!({});
    let mut out = Map::new();
    out.insert("type".into(), json!(kind));
    match kind {
        "Resource" | "ContainerResource" => {
            let field = if kind == "Resource" { "resource" } else { "containerResource" };
            let source = metric.get(field).unwrap_or(&empty);
            let target = source.get("target").unwrap_or(&empty);
            let mut v1 = Map::new();
            carry(source, &mut v1, "name", None);
            carry(source, &mut v1, "container", None);
            carry(target, &mut v1, "averageUtilization", Some("targetAverageUtilization"));
            carry(target, &mut v1, "averageValue", Some("targetAverageValue"));
            out.insert(field.into(), Value::Object(v1));
        }
        "Pods" => {
            let source = metric.get("pods").unwrap_or(&empty);
            let mut v1 = Map::new();
            carry(source.get("metric").unwrap_or(&empty), &mut v1, "name", Some("metricName"));
            carry(source.get("target").unwrap_or(&empty), &mut v1, "averageValue", Some("targetAverageValue"));
            carry(source.get("metric").unwrap_or(&empty), &mut v1, "selector", None);
            out.insert("pods".into(), Value::Object(v1));
        }
        "Object" => {
            let source = metric.get("object").unwrap_or(&empty);
            let target = source.get("target").unwrap_or(&empty);
            let mut v1 = Map::new();
            carry(source, &mut v1, "describedObject", Some("target"));
            carry(source.get("metric").unwrap_or(&empty), &mut v1, "name", Some("metricName"));
            carry(target, &mut v1, "value", Some("targetValue"));
            carry(source.get("metric").unwrap_or(&empty), &mut v1, "selector", None);
            carry(target, &mut v1, "averageValue", None);
            out.insert("object".into(), Value::Object(v1));
        }
        "External" => {
            let source = metric.get("external").unwrap_or(&empty);
            let target = source.get("target").unwrap_or(&empty);
            let mut v1 = Map::new();
            carry(source.get("metric").unwrap_or(&empty), &mut v1, "name", Some("metricName"));
            carry(source.get("metric").unwrap_or(&empty), &mut v1, "selector", Some("metricSelector"));
            carry(target, &mut v1, "value", Some("targetValue"));
            carry(target, &mut v1, "averageValue", Some("targetAverageValue"));
            out.insert("external".into(), Value::Object(v1));
        }
        _ => {}
    }
    Value::Object(out)
}

fn metric_spec_v1_to_v2(metric: &Value) -> Value {
    let kind = metric.get("type").and_then(Value::as_str).unwrap_or("");
    let empty = json!({});
    let mut out = Map::new();
    out.insert("type".into(), json!(kind));
    // kube: a target type follows from which of the v1 fields is set.
    let target = |source: &Value, value: &str, average: &str, utilization: Option<&str>, default: &str| {
        let mut target = Map::new();
        let has = |k: &str| source.get(k).is_some_and(|v| !v.is_null());
        let kind = match utilization {
            Some(u) if has(u) => "Utilization",
            Some(_) => "AverageValue",
            None if default == "Value" && has(average) => "AverageValue",
            None => default,
        };
        target.insert("type".into(), json!(kind));
        if !value.is_empty() {
            carry(source, &mut target, value, Some("value"));
        }
        carry(source, &mut target, average, Some("averageValue"));
        if let Some(u) = utilization {
            carry(source, &mut target, u, Some("averageUtilization"));
        }
        Value::Object(target)
    };
    let metric_id = |source: &Value, selector: &str| {
        let mut id = Map::new();
        carry(source, &mut id, "metricName", Some("name"));
        carry(source, &mut id, selector, Some("selector"));
        Value::Object(id)
    };
    match kind {
        "Resource" | "ContainerResource" => {
            let field = if kind == "Resource" { "resource" } else { "containerResource" };
            let source = metric.get(field).unwrap_or(&empty);
            let mut v2 = Map::new();
            carry(source, &mut v2, "name", None);
            carry(source, &mut v2, "container", None);
            v2.insert(
                "target".into(),
                target(source, "", "targetAverageValue", Some("targetAverageUtilization"), "AverageValue"),
            );
            out.insert(field.into(), Value::Object(v2));
        }
        "Pods" => {
            let source = metric.get("pods").unwrap_or(&empty);
            out.insert(
                "pods".into(),
                json!({
                    "metric": metric_id(source, "selector"),
                    "target": target(source, "", "targetAverageValue", None, "AverageValue"),
                }),
            );
        }
        "Object" => {
            let source = metric.get("object").unwrap_or(&empty);
            let mut v2 = Map::new();
            carry(source, &mut v2, "target", Some("describedObject"));
            v2.insert("metric".into(), metric_id(source, "selector"));
            v2.insert("target".into(), target(source, "targetValue", "averageValue", None, "Value"));
            out.insert("object".into(), Value::Object(v2));
        }
        "External" => {
            let source = metric.get("external").unwrap_or(&empty);
            out.insert(
                "external".into(),
                json!({
                    "metric": metric_id(source, "metricSelector"),
                    "target": target(source, "targetValue", "targetAverageValue", None, "Value"),
                }),
            );
        }
        _ => {}
    }
    Value::Object(out)
}

/// The field of a MetricSpec or MetricStatus that holds the source of metric type `kind`
/// (the same in every autoscaling version).
pub fn metric_source_field(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Resource" => "resource",
        "ContainerResource" => "containerResource",
        "Pods" => "pods",
        "Object" => "object",
        "External" => "external",
        _ => return None,
    })
}

fn metric_status_v2_to_v1(status: &Value) -> Value {
    let kind = status.get("type").and_then(Value::as_str).unwrap_or("");
    let empty = json!({});
    let mut out = Map::new();
    out.insert("type".into(), json!(kind));
    let Some(field) = metric_source_field(kind) else { return Value::Object(out) };
    let source = status.get(field).unwrap_or(&empty);
    let current = source.get("current").unwrap_or(&empty);
    let metric = source.get("metric").unwrap_or(&empty);
    let mut v1 = Map::new();
    match kind {
        "Resource" | "ContainerResource" => {
            carry(source, &mut v1, "name", None);
            carry(source, &mut v1, "container", None);
            carry(current, &mut v1, "averageUtilization", Some("currentAverageUtilization"));
            // Required in v1: kube writes the zero quantity when v2 has none.
            let average = current.get("averageValue").cloned().unwrap_or(json!("0"));
            v1.insert("currentAverageValue".into(), average);
        }
        "Pods" => {
            carry(metric, &mut v1, "name", Some("metricName"));
            v1.insert("currentAverageValue".into(), current.get("averageValue").cloned().unwrap_or(json!("0")));
            carry(metric, &mut v1, "selector", None);
        }
        "Object" => {
            carry(source, &mut v1, "describedObject", Some("target"));
            carry(metric, &mut v1, "name", Some("metricName"));
            v1.insert("currentValue".into(), current.get("value").cloned().unwrap_or(json!("0")));
            carry(metric, &mut v1, "selector", None);
            carry(current, &mut v1, "averageValue", None);
        }
        _ => {
            carry(metric, &mut v1, "name", Some("metricName"));
            carry(metric, &mut v1, "selector", Some("metricSelector"));
            v1.insert("currentValue".into(), current.get("value").cloned().unwrap_or(json!("0")));
            carry(current, &mut v1, "averageValue", Some("currentAverageValue"));
        }
    }
    out.insert(field.into(), Value::Object(v1));
    Value::Object(out)
}

fn metric_status_v1_to_v2(status: &Value) -> Value {
    let kind = status.get("type").and_then(Value::as_str).unwrap_or("");
    let empty = json!({});
    let mut out = Map::new();
    out.insert("type".into(), json!(kind));
    let Some(field) = metric_source_field(kind) else { return Value::Object(out) };
    let source = status.get(field).unwrap_or(&empty);
    let mut current = Map::new();
    let mut metric = Map::new();
    let mut v2 = Map::new();
    match kind {
        "Resource" | "ContainerResource" => {
            carry(source, &mut v2, "name", None);
            carry(source, &mut v2, "container", None);
            carry(source, &mut current, "currentAverageUtilization", Some("averageUtilization"));
            carry(source, &mut current, "currentAverageValue", Some("averageValue"));
        }
        "Pods" => {
            carry(source, &mut metric, "metricName", Some("name"));
            carry(source, &mut metric, "selector", None);
            carry(source, &mut current, "currentAverageValue", Some("averageValue"));
        }
        "Object" => {
            carry(source, &mut v2, "target", Some("describedObject"));
            carry(source, &mut metric, "metricName", Some("name"));
            carry(source, &mut metric, "selector", None);
            carry(source, &mut current, "currentValue", Some("value"));
            carry(source, &mut current, "averageValue", None);
        }
        _ => {
            carry(source, &mut metric, "metricName", Some("name"));
            carry(source, &mut metric, "metricSelector", Some("selector"));
            carry(source, &mut current, "currentValue", Some("value"));
            carry(source, &mut current, "currentAverageValue", Some("averageValue"));
        }
    }
    if !matches!(kind, "Resource" | "ContainerResource") {
        v2.insert("metric".into(), Value::Object(metric));
    }
    v2.insert("current".into(), Value::Object(current));
    out.insert(field.into(), Value::Object(v2));
    Value::Object(out)
}

/// kube's `Convert_autoscaling_HorizontalPodAutoscaler_To_v1_HorizontalPodAutoscaler`.
pub fn hpa_v2_to_v1(v2: Value) -> Value {
    let empty = json!({});
    let spec = v2.get("spec").unwrap_or(&empty);
    let status = v2.get("status");
    let mut out = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler"});
    out["metadata"] = v2.get("metadata").cloned().unwrap_or(json!({}));

    let mut v1_spec = Map::new();
    carry(spec, &mut v1_spec, "scaleTargetRef", None);
    carry(spec, &mut v1_spec, "minReplicas", None);
    carry(spec, &mut v1_spec, "maxReplicas", None);
    let metrics = spec.get("metrics").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut others = Vec::new();
    for metric in &metrics {
        if is_cpu_utilization_target(metric) {
            if let Some(u) = metric.pointer("/resource/target/averageUtilization") {
                v1_spec.insert("targetCPUUtilizationPercentage".into(), u.clone());
            }
        } else {
            others.push(metric_spec_v2_to_v1(metric));
        }
    }
    out["spec"] = Value::Object(v1_spec);
    if !others.is_empty() {
        set_annotation(&mut out, METRICS, &Value::Array(others));
    }
    if let Some(behavior) = spec.get("behavior").filter(|b| !b.is_null()) {
        set_annotation(&mut out, BEHAVIOR, behavior);
    }

    if let Some(status) = status.filter(|s| s.is_object()) {
        let mut v1_status = Map::new();
        for key in ["observedGeneration", "lastScaleTime", "currentReplicas", "desiredReplicas"] {
            carry(status, &mut v1_status, key, None);
        }
        v1_status.entry("currentReplicas").or_insert(json!(0));
        v1_status.entry("desiredReplicas").or_insert(json!(0));
        let current = status.get("currentMetrics").and_then(Value::as_array).cloned().unwrap_or_default();
        for metric in &current {
            if metric.get("type").and_then(Value::as_str) == Some("Resource")
                && metric.pointer("/resource/name").and_then(Value::as_str) == Some("cpu")
                && let Some(u) = metric.pointer("/resource/current/averageUtilization").filter(|u| !u.is_null())
            {
                v1_status.insert("currentCPUUtilizationPercentage".into(), u.clone());
            }
        }
        out["status"] = Value::Object(v1_status);
        if !current.is_empty() {
            set_annotation(
                &mut out,
                CURRENT_METRICS,
                &Value::Array(current.iter().map(metric_status_v2_to_v1).collect()),
            );
        }
        if let Some(conditions) = status.get("conditions").and_then(Value::as_array).filter(|c| !c.is_empty()) {
            set_annotation(&mut out, CONDITIONS, &Value::Array(conditions.clone()));
        }
    }
    out
}

/// kube's `Convert_v1_HorizontalPodAutoscaler_To_autoscaling_HorizontalPodAutoscaler`: the
/// round-trip annotations are read and dropped.
pub fn hpa_v1_to_v2(mut v1: Value) -> Value {
    let other_metrics = take_annotation(&mut v1, METRICS);
    let current_metrics = take_annotation(&mut v1, CURRENT_METRICS);
    let conditions = take_annotation(&mut v1, CONDITIONS);
    let behavior = take_annotation(&mut v1, BEHAVIOR);
    let empty = json!({});
    let spec = v1.get("spec").unwrap_or(&empty);
    let mut out = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler"});
    out["metadata"] = v1.get("metadata").cloned().unwrap_or(json!({}));

    let mut v2_spec = Map::new();
    carry(spec, &mut v2_spec, "scaleTargetRef", None);
    carry(spec, &mut v2_spec, "minReplicas", None);
    carry(spec, &mut v2_spec, "maxReplicas", None);
    let mut metrics: Vec<Value> = other_metrics
        .as_ref()
        .and_then(Value::as_array)
        .map(|m| m.iter().map(metric_spec_v1_to_v2).collect())
        .unwrap_or_default();
    // kube: the v1 cpu target is appended after the other metrics; with no metric at all,
    // cpu at 80% (v1's default, given here as kube gives it).
    let percent = spec.get("targetCPUUtilizationPercentage").filter(|p| !p.is_null()).cloned();
    if let Some(percent) = percent.or_else(|| metrics.is_empty().then(|| json!(80))) {
        metrics.push(json!({
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": percent}},
        }));
    }
    if !metrics.is_empty() {
        v2_spec.insert("metrics".into(), Value::Array(metrics));
    }
    if let Some(behavior) = behavior {
        v2_spec.insert("behavior".into(), behavior);
    }
    out["spec"] = Value::Object(v2_spec);

    if let Some(status) = v1.get("status").filter(|s| s.is_object()) {
        let mut v2_status = Map::new();
        for key in ["observedGeneration", "lastScaleTime", "currentReplicas", "desiredReplicas"] {
            carry(status, &mut v2_status, key, None);
        }
        let current = match (&current_metrics, status.get("currentCPUUtilizationPercentage").filter(|c| !c.is_null())) {
            (Some(Value::Array(list)), _) => Some(list.iter().map(metric_status_v1_to_v2).collect()),
            (_, Some(cpu)) => Some(vec![json!({
                "type": "Resource",
                "resource": {"name": "cpu", "current": {"averageUtilization": cpu}},
            })]),
            _ => None,
        };
        if let Some(current) = current {
            v2_status.insert("currentMetrics".into(), Value::Array(current));
        }
        if let Some(conditions) = conditions {
            v2_status.insert("conditions".into(), conditions);
        }
        out["status"] = Value::Object(v2_status);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_with_everything() -> Value {
        json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "12", "annotations": {"team": "a"}},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 2,
                "maxReplicas": 10,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}},
                    {"type": "Pods", "pods": {"metric": {"name": "qps"}, "target": {"type": "AverageValue", "averageValue": "10"}}},
                    {"type": "Object", "object": {
                        "describedObject": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": "main"},
                        "metric": {"name": "requests"}, "target": {"type": "Value", "value": "2k"}}},
                    {"type": "External", "external": {
                        "metric": {"name": "queue", "selector": {"matchLabels": {"q": "jobs"}}},
                        "target": {"type": "AverageValue", "averageValue": "30"}}},
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}},
            },
            "status": {
                "observedGeneration": 3,
                "currentReplicas": 4,
                "desiredReplicas": 5,
                "currentMetrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 75, "averageValue": "150m"}}},
                    {"type": "Pods", "pods": {"metric": {"name": "qps"}, "current": {"averageValue": "12"}}},
                ],
                "conditions": [{"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"}],
            },
        })
    }

    #[test]
    fn v2_reads_as_v1_with_cpu_target_and_the_rest_in_annotations() {
        let v1 = hpa_v2_to_v1(v2_with_everything());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 60);
        assert_eq!(v1["spec"]["minReplicas"], 2);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 75);
        assert_eq!(v1["status"]["desiredReplicas"], 5);
        assert_eq!(v1["metadata"]["resourceVersion"], "12");
        let annotations = &v1["metadata"]["annotations"];
        assert_eq!(annotations["team"], "a");
        let others: Value = serde_json::from_str(annotations[METRICS].as_str().unwrap()).unwrap();
        assert_eq!(others.as_array().unwrap().len(), 4, "cpu utilization is the v1 field, not an annotation");
        assert_eq!(
            others[0],
            json!({"type": "Resource", "resource": {"name": "memory", "targetAverageValue": "100Mi"}})
        );
        assert_eq!(others[1], json!({"type": "Pods", "pods": {"metricName": "qps", "targetAverageValue": "10"}}));
        assert_eq!(others[2]["object"]["targetValue"], "2k");
        assert_eq!(others[3]["external"]["metricSelector"]["matchLabels"]["q"], "jobs");
        assert!(annotations[BEHAVIOR].is_string());
        assert!(annotations[CONDITIONS].is_string());
        // The v1 object is a valid autoscaling/v1 HorizontalPodAutoscaler.
        let typed: k8s_openapi::api::autoscaling::v1::HorizontalPodAutoscaler = serde_json::from_value(v1).unwrap();
        assert_eq!(typed.spec.unwrap().max_replicas, 10);
    }

    #[test]
    fn v2_survives_a_round_trip_through_v1() {
        let original = v2_with_everything();
        let back = hpa_v1_to_v2(hpa_v2_to_v1(original.clone()));
        // The cpu target moves to the end, as in kube (the v1 field is appended after the others).
        let mut expected = original;
        let metrics = expected["spec"]["metrics"].as_array_mut().unwrap();
        let cpu = metrics.remove(1);
        metrics.push(cpu);
        assert_eq!(back["spec"], expected["spec"]);
        assert_eq!(back["status"], expected["status"]);
        assert_eq!(back["metadata"], expected["metadata"], "round-trip annotations are dropped, others kept");
        let typed: k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler = serde_json::from_value(back).unwrap();
        assert_eq!(typed.spec.unwrap().metrics.unwrap().len(), 5);
    }

    #[test]
    fn a_plain_v1_object_becomes_a_cpu_metric() {
        let v1 = json!({
            "apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 3, "targetCPUUtilizationPercentage": 50},
            "status": {"currentReplicas": 1, "desiredReplicas": 1, "currentCPUUtilizationPercentage": 20},
        });
        let v2 = hpa_v1_to_v2(v1.clone());
        assert_eq!(v2["apiVersion"], "autoscaling/v2");
        assert_eq!(
            v2["spec"]["metrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}])
        );
        assert_eq!(v2["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"], 20);
        assert!(v2["metadata"].get("annotations").is_none());
        let again = hpa_v2_to_v1(v2);
        assert_eq!(again["spec"], v1["spec"]);
        assert_eq!(again["status"], v1["status"]);
        assert!(again["metadata"].get("annotations").unwrap().get(METRICS).is_none());
    }

    #[test]
    fn events_read_the_same_in_both_groups() {
        let core = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "web.1", "namespace": "shop"},
            "involvedObject": {"kind": "Pod", "name": "web", "namespace": "shop"},
            "reason": "Scheduled", "message": "Successfully assigned shop/web to n1", "type": "Normal",
            "source": {"component": "default-scheduler"}, "count": 3,
            "firstTimestamp": "2026-11-24T00:00:00Z", "lastTimestamp": "2026-11-24T00:01:00Z",
            "reportingComponent": "default-scheduler", "reportingInstance": "keel-1",
        });
        let events = core_event_to_events_v1(core.clone());
        assert_eq!(events["apiVersion"], "events.k8s.io/v1");
        assert_eq!(events["regarding"]["name"], "web");
        assert_eq!(events["note"], "Successfully assigned shop/web to n1");
        assert_eq!(events["deprecatedCount"], 3);
        assert_eq!(events["reportingController"], "default-scheduler");
        assert!(events.get("involvedObject").is_none() && events.get("message").is_none());
        let typed: k8s_openapi::api::events::v1::Event = serde_json::from_value(events.clone()).unwrap();
        assert_eq!(typed.reason.as_deref(), Some("Scheduled"));
        assert_eq!(events_v1_to_core_event(events), core);
    }

    #[test]
    fn custom_resource_versions_differ_in_api_version_only() {
        let conversion =
            Conversion::ApiVersion { served: "example.com/v1beta1".into(), stored: "example.com/v1".into() };
        let stored = json!({"apiVersion": "example.com/v1", "kind": "Widget", "spec": {"size": 3}});
        let served = conversion.from_stored(stored.clone());
        assert_eq!(served["apiVersion"], "example.com/v1beta1");
        assert_eq!(served["spec"], stored["spec"]);
        assert_eq!(conversion.to_stored(served), stored);
    }
}
