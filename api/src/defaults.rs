//! Defaulting, as kube-apiserver's `SetDefaults_*` functions do it for the fields clients
//! most often leave out, so objects read back the way kubectl users expect.

use serde_json::{Value, json};

/// Sets the field at `pointer` (plain field names, no escapes or indexes) unless it holds
/// something other than null, making the objects on the way. Defaulting runs before
/// validation, so a value on the way that is not an object is left for validation to refuse,
/// neither replaced nor indexed into. The walk allocates nothing for a field already set:
/// `Value::pointer` copies every step, and this runs a dozen times per container.
fn set_if_absent(object: &mut Value, pointer: &str, value: Value) {
    let Some((parents, last)) = pointer.strip_prefix('/').map(|p| p.rsplit_once('/').unwrap_or(("", p))) else {
        return;
    };
    let mut cursor = object;
    for part in parents.split('/').filter(|p| !p.is_empty()) {
        let Some(map) = object_or_made(cursor) else { return };
        if !map.contains_key(part) {
            map.insert(part.to_string(), Value::Null);
        }
        let Some(next) = map.get_mut(part) else { return };
        cursor = next;
    }
    let Some(map) = object_or_made(cursor) else { return };
    match map.get_mut(last) {
        Some(existing) if existing.is_null() => *existing = value,
        Some(_) => {}
        None => {
            map.insert(last.to_string(), value);
        }
    }
}

/// The object `value` holds, made an empty one first if it is null; None for anything else.
fn object_or_made(value: &mut Value) -> Option<&mut serde_json::Map<String, Value>> {
    if value.is_null() {
        *value = Value::Object(Default::default());
    }
    value.as_object_mut()
}

fn image_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// Sets `key` of the object at `pointer` (made an object if missing) unless present. Keys
/// are taken whole: resource names such as `nvidia.com/gpu` hold a `/`.
fn set_key_if_absent(object: &mut Value, pointer: &str, key: &str, value: Value) {
    set_if_absent(object, pointer, json!({}));
    if let Some(map) = object.pointer_mut(pointer).and_then(Value::as_object_mut) {
        map.entry(key.to_string()).or_insert(value);
    }
}

/// kube's `SetDefaults_Pod`: a resource limited but not requested is requested at its limit.
/// Pods only: a template's pods get it when they are created.
fn requests_from_limits(spec: &mut Value) {
    for field in ["containers", "initContainers"] {
        for container in spec.get_mut(field).and_then(Value::as_array_mut).into_iter().flatten() {
            let Some(limits) = container.pointer("/resources/limits").and_then(Value::as_object).cloned() else {
                continue;
            };
            for (resource, amount) in limits {
                set_key_if_absent(container, "/resources/requests", &resource, amount);
            }
        }
    }
}

fn default_container(container: &mut Value) {
    if let Some(image) = container.get("image").and_then(Value::as_str).map(str::to_string) {
        set_if_absent(container, "/imagePullPolicy", json!(image_pull_policy(&image)));
    }
    set_if_absent(container, "/terminationMessagePath", json!("/dev/termination-log"));
    set_if_absent(container, "/terminationMessagePolicy", json!("File"));
    if let Some(ports) = container.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports {
            set_if_absent(port, "/protocol", json!("TCP"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = container.get_mut(probe).filter(|p| p.is_object()) {
            set_if_absent(p, "/timeoutSeconds", json!(1));
            set_if_absent(p, "/periodSeconds", json!(10));
            set_if_absent(p, "/successThreshold", json!(1));
            set_if_absent(p, "/failureThreshold", json!(3));
        }
    }
}

/// A pod spec, wherever it appears (a Pod, or a template inside a workload).
pub fn pod_spec(spec: &mut Value) {
    set_if_absent(spec, "/restartPolicy", json!("Always"));
    set_if_absent(spec, "/dnsPolicy", json!("ClusterFirst"));
    set_if_absent(spec, "/schedulerName", json!("default-scheduler"));
    set_if_absent(spec, "/terminationGracePeriodSeconds", json!(30));
    set_if_absent(spec, "/securityContext", json!({}));
    for list in ["containers", "initContainers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            containers.iter_mut().for_each(default_container);
        }
    }
}

fn template_spec(object: &mut Value, pointer: &str) {
    if let Some(spec) = object.pointer_mut(pointer) {
        pod_spec(spec);
    }
}

/// Fills in what kube-apiserver would for `kind`.
pub fn apply(kind: &str, group: &str, object: &mut Value) {
    match (group, kind) {
        ("", "Pod") => {
            if let Some(spec) = object.get_mut("spec") {
                pod_spec(spec);
                requests_from_limits(spec);
                set_if_absent(spec, "/enableServiceLinks", json!(true));
                set_if_absent(spec, "/priority", json!(0));
            }
        }
        ("", "PodTemplate") => template_spec(object, "/template/spec"),
        ("apps", "Deployment") => {
            set_if_absent(object, "/spec/replicas", json!(1));
            set_if_absent(object, "/spec/revisionHistoryLimit", json!(10));
            set_if_absent(object, "/spec/progressDeadlineSeconds", json!(600));
            if object.pointer("/spec/strategy/type").is_none_or(Value::is_null) {
                set_if_absent(object, "/spec/strategy/type", json!("RollingUpdate"));
            }
            if object.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("RollingUpdate") {
                set_if_absent(object, "/spec/strategy/rollingUpdate/maxSurge", json!("25%"));
                set_if_absent(object, "/spec/strategy/rollingUpdate/maxUnavailable", json!("25%"));
            }
            template_spec(object, "/spec/template/spec");
        }
        ("apps", "ReplicaSet") | ("", "ReplicationController") => {
            set_if_absent(object, "/spec/replicas", json!(1));
            template_spec(object, "/spec/template/spec");
        }
        ("apps", "StatefulSet") => {
            set_if_absent(object, "/spec/replicas", json!(1));
            set_if_absent(object, "/spec/podManagementPolicy", json!("OrderedReady"));
            set_if_absent(object, "/spec/revisionHistoryLimit", json!(10));
            set_if_absent(object, "/spec/updateStrategy/type", json!("RollingUpdate"));
            if object.pointer("/spec/updateStrategy/type").and_then(Value::as_str) == Some("RollingUpdate") {
                set_if_absent(object, "/spec/updateStrategy/rollingUpdate/partition", json!(0));
            }
            template_spec(object, "/spec/template/spec");
        }
        ("apps", "DaemonSet") => {
            set_if_absent(object, "/spec/revisionHistoryLimit", json!(10));
            set_if_absent(object, "/spec/updateStrategy/type", json!("RollingUpdate"));
            if object.pointer("/spec/updateStrategy/type").and_then(Value::as_str) == Some("RollingUpdate") {
                set_if_absent(object, "/spec/updateStrategy/rollingUpdate/maxUnavailable", json!(1));
                set_if_absent(object, "/spec/updateStrategy/rollingUpdate/maxSurge", json!(0));
            }
            template_spec(object, "/spec/template/spec");
        }
        ("batch", "Job") => {
            // Neither given: one pod to one completion. Parallelism alone: a work queue,
            // done when any pod succeeds (completions stays unset).
            if object.pointer("/spec/parallelism").is_none() && object.pointer("/spec/completions").is_none() {
                set_if_absent(object, "/spec/completions", json!(1));
            }
            set_if_absent(object, "/spec/parallelism", json!(1));
            set_if_absent(object, "/spec/backoffLimit", json!(6));
            set_if_absent(object, "/spec/completionMode", json!("NonIndexed"));
            set_if_absent(object, "/spec/suspend", json!(false));
            template_spec(object, "/spec/template/spec");
        }
        ("batch", "CronJob") => {
            set_if_absent(object, "/spec/concurrencyPolicy", json!("Allow"));
            set_if_absent(object, "/spec/suspend", json!(false));
            set_if_absent(object, "/spec/successfulJobsHistoryLimit", json!(3));
            set_if_absent(object, "/spec/failedJobsHistoryLimit", json!(1));
            template_spec(object, "/spec/jobTemplate/spec/template/spec");
        }
        ("", "Service") => {
            set_if_absent(object, "/spec/type", json!("ClusterIP"));
            set_if_absent(object, "/spec/sessionAffinity", json!("None"));
            set_if_absent(object, "/spec/internalTrafficPolicy", json!("Cluster"));
            if let Some(ports) = object.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
                for port in ports {
                    set_if_absent(port, "/protocol", json!("TCP"));
                    if let Some(p) = port.get("port").cloned() {
                        set_if_absent(port, "/targetPort", p);
                    }
                }
            }
        }
        ("", "Namespace") => {
            let name = crate::object::name(object).to_string();
            set_if_absent(object, "/spec/finalizers", json!(["kubernetes"]));
            set_if_absent(object, "/status/phase", json!("Active"));
            let labels = crate::object::meta_mut(object).entry("labels").or_insert_with(|| json!({}));
            if let Some(labels) = labels.as_object_mut() {
                labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
        }
        ("", "Secret") => set_if_absent(object, "/type", json!("Opaque")),
        ("", "PersistentVolumeClaim") => {
            set_if_absent(object, "/spec/volumeMode", json!("Filesystem"));
            set_if_absent(object, "/status/phase", json!("Pending"));
        }
        ("", "PersistentVolume") => {
            set_if_absent(object, "/spec/persistentVolumeReclaimPolicy", json!("Retain"));
            set_if_absent(object, "/spec/volumeMode", json!("Filesystem"));
            set_if_absent(object, "/status/phase", json!("Pending"));
        }
        ("storage.k8s.io", "StorageClass") => {
            set_if_absent(object, "/reclaimPolicy", json!("Delete"));
            set_if_absent(object, "/volumeBindingMode", json!("Immediate"));
        }
        ("autoscaling", "HorizontalPodAutoscaler") => autoscaler(object),
        ("", "LimitRange") => limit_range(object),
        _ => {}
    }
}

/// kube's `SetDefaults_LimitRangeItem`: a Container item's default limit is its max, and its
/// default request its default limit, else its min.
fn limit_range(object: &mut Value) {
    let Some(items) = object.pointer_mut("/spec/limits").and_then(Value::as_array_mut) else { return };
    for item in items.iter_mut().filter(|i| i.get("type").and_then(Value::as_str) == Some("Container")) {
        for (from, to) in [("max", "default"), ("default", "defaultRequest"), ("min", "defaultRequest")] {
            let Some(source) = item.get(from).and_then(Value::as_object).cloned() else { continue };
            for (resource, amount) in source {
                set_key_if_absent(item, &format!("/{to}"), &resource, amount);
            }
        }
    }
}

/// kube's `SetDefaults_HorizontalPodAutoscaler` of v1 and of v2 (the object's apiVersion says
/// which): one replica at least, cpu at 80% of requests when no metric is given, and a
/// `behavior` given in part completed with the default rules.
fn autoscaler(object: &mut Value) {
    set_if_absent(object, "/spec/minReplicas", json!(1));
    // v1's cpu default is conversion's to give (only when v2 would have no metric at all).
    if object.get("apiVersion").and_then(Value::as_str) == Some("autoscaling/v1") {
        return;
    }
    if object.pointer("/spec/metrics").and_then(Value::as_array).is_none_or(|m| m.is_empty())
        && let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut)
    {
        spec.insert(
            "metrics".into(),
            json!([{
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
            }]),
        );
    }
    let Some(behavior) = object.pointer_mut("/spec/behavior").filter(|b| b.is_object()) else { return };
    for (direction, policies, window) in [
        (
            "scaleUp",
            json!([{"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}]),
            Some(0),
        ),
        ("scaleDown", json!([{"type": "Percent", "value": 100, "periodSeconds": 15}]), None),
    ] {
        set_if_absent(behavior, &format!("/{direction}/selectPolicy"), json!("Max"));
        if let Some(rules) = behavior.get_mut(direction).and_then(Value::as_object_mut)
            && rules.get("policies").and_then(Value::as_array).is_none_or(|p| p.is_empty())
        {
            rules.insert("policies".into(), policies);
        }
        // scaleDown's window stays unset: the controller's flag (300 s) applies.
        if let Some(seconds) = window {
            set_if_absent(behavior, &format!("/{direction}/stabilizationWindowSeconds"), json!(seconds));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_if_absent_fills_unset_and_null_fields_only() {
        let mut object = json!({"spec": {"kept": "mine", "unset": null}});
        set_if_absent(&mut object, "/spec/kept", json!("default"));
        set_if_absent(&mut object, "/spec/unset", json!("default"));
        set_if_absent(&mut object, "/spec/strategy/rollingUpdate/maxSurge", json!("25%"));
        set_if_absent(&mut object, "/top", json!(1));
        assert_eq!(
            object,
            json!({"spec": {"kept": "mine", "unset": "default", "strategy": {"rollingUpdate": {"maxSurge": "25%"}}}, "top": 1})
        );
    }

    #[test]
    fn defaulting_leaves_values_of_the_wrong_type_for_validation() {
        // Validation refuses these with a 400/422; defaulting must neither panic on them
        // nor paper over them with an object of its own.
        let mut pod = json!({"spec": "not an object"});
        apply("Pod", "", &mut pod);
        assert_eq!(pod, json!({"spec": "not an object"}));
        let mut deployment = json!({"spec": {"strategy": {"rollingUpdate": 3}, "template": {"spec": []}}});
        apply("Deployment", "apps", &mut deployment);
        assert_eq!(deployment["spec"]["strategy"]["rollingUpdate"], 3);
        assert_eq!(deployment["spec"]["template"]["spec"], json!([]));
        let mut autoscaler = json!({"apiVersion": "autoscaling/v2", "spec": "x"});
        apply("HorizontalPodAutoscaler", "autoscaling", &mut autoscaler);
        assert_eq!(autoscaler["spec"], "x");
        let mut autoscaler = json!({"apiVersion": "autoscaling/v2", "spec": {"behavior": {"scaleUp": 5}}});
        apply("HorizontalPodAutoscaler", "autoscaling", &mut autoscaler);
        assert_eq!(autoscaler["spec"]["behavior"]["scaleUp"], 5);
        assert_eq!(autoscaler["spec"]["behavior"]["scaleDown"]["selectPolicy"], "Max");
    }

    #[test]
    fn deployment_defaults() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "busybox"}, {"name": "b", "image": "x:1.0", "ports": [{"containerPort": 80}]}]}}}});
        apply("Deployment", "apps", &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let containers = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["imagePullPolicy"], "Always");
        assert_eq!(containers[1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(containers[1]["ports"][0]["protocol"], "TCP");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
    }

    #[test]
    fn set_values_are_kept() {
        let mut d = json!({"spec": {"replicas": 0, "strategy": {"type": "Recreate"}}});
        apply("Deployment", "apps", &mut d);
        assert_eq!(d["spec"]["replicas"], 0);
        assert!(d["spec"]["strategy"].get("rollingUpdate").is_none());
        let mut ns = json!({"metadata": {"name": "team"}});
        apply("Namespace", "", &mut ns);
        assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "team");
        assert_eq!(ns["status"]["phase"], "Active");
    }

    #[test]
    fn autoscaler_defaults_follow_the_version() {
        let mut v1 = json!({"apiVersion": "autoscaling/v1", "spec": {"maxReplicas": 3}});
        apply("HorizontalPodAutoscaler", "autoscaling", &mut v1);
        assert_eq!(v1["spec"], json!({"maxReplicas": 3, "minReplicas": 1}));

        let mut v2 = json!({"apiVersion": "autoscaling/v2", "spec": {"maxReplicas": 3, "behavior": {"scaleDown": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}}}});
        apply("HorizontalPodAutoscaler", "autoscaling", &mut v2);
        assert_eq!(v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 80);
        let behavior = &v2["spec"]["behavior"];
        assert_eq!(behavior["scaleDown"]["policies"], json!([{"type": "Pods", "value": 1, "periodSeconds": 60}]));
        assert_eq!(behavior["scaleDown"]["selectPolicy"], "Max");
        assert!(behavior["scaleDown"].get("stabilizationWindowSeconds").is_none());
        assert_eq!(behavior["scaleUp"]["stabilizationWindowSeconds"], 0);
        assert_eq!(behavior["scaleUp"]["policies"].as_array().unwrap().len(), 2);

        let mut plain =
            json!({"apiVersion": "autoscaling/v2", "spec": {"maxReplicas": 3, "metrics": [{"type": "Pods"}]}});
        apply("HorizontalPodAutoscaler", "autoscaling", &mut plain);
        assert_eq!(plain["spec"]["metrics"], json!([{"type": "Pods"}]), "given metrics are kept");
        assert!(plain["spec"].get("behavior").is_none(), "no behavior is made up");
    }

    #[test]
    fn limit_range_and_container_resource_defaults() {
        let mut range = json!({"spec": {"limits": [
            {"type": "Container", "max": {"cpu": "2"}, "min": {"memory": "64Mi"}, "default": {"memory": "1Gi"}},
            {"type": "Pod", "max": {"cpu": "4"}},
        ]}});
        apply("LimitRange", "", &mut range);
        let container = &range["spec"]["limits"][0];
        assert_eq!(container["default"], json!({"cpu": "2", "memory": "1Gi"}));
        assert_eq!(
            container["defaultRequest"],
            json!({"cpu": "2", "memory": "1Gi"}),
            "from the default before the min"
        );
        assert!(range["spec"]["limits"][1].get("default").is_none(), "Pod items get no defaults");

        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "x", "resources": {"limits": {"cpu": "1", "nvidia.com/gpu": "2"}, "requests": {"memory": "1Gi"}}}]}});
        apply("Pod", "", &mut pod);
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["requests"],
            json!({"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "2"})
        );
        let mut deployment = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x", "resources": {"limits": {"cpu": "1"}}}]}}}});
        apply("Deployment", "apps", &mut deployment);
        assert!(
            deployment.pointer("/spec/template/spec/containers/0/resources/requests").is_none(),
            "templates are left as written"
        );
    }
}
