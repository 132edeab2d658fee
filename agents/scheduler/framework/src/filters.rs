//! The per-node filters, in kube-scheduler's default order, stopping at the first that
//! rejects the node (as `RunFilterPlugins` does).

use std::borrow::Cow;

use k8s_openapi::api::core::v1::Pod;

use super::cycle::{CycleState, PodState};
use super::nodeinfo::NodeInfo;
use super::status::{Failure, Reason};
use super::{affinity, resources, spread, taints, volume};

pub const NODE_UNSCHEDULABLE: &str = "NodeUnschedulable";
pub const NODE_NAME: &str = "NodeName";
pub const NODE_READY: &str = "NodeReady";
pub const TAINT_TOLERATION: &str = "TaintToleration";
pub const NODE_AFFINITY: &str = "NodeAffinity";
pub const NODE_PORTS: &str = "NodePorts";
pub const NODE_RESOURCES_FIT: &str = "NodeResourcesFit";

const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// Runs every filter for the pod on one node. Cheap: the cluster-wide parts were counted
/// by `prefilter`.
pub fn filter(pod: &Pod, state: &CycleState, node: &NodeInfo) -> Result<(), Failure> {
    node_unschedulable(pod, node)?;
    node_name(pod, node)?;
    node_ready(pod, node)?;
    taint_toleration(pod, node)?;
    node_affinity(&state.pod, node)?;
    node_ports(&state.pod, node)?;
    node_resources_fit(&state.pod, node)?;
    if let Some(v) = &state.volumes {
        volume::filter(v, node.node())?;
    }
    if let Some(s) = &state.spread {
        spread::filter(s, node)?;
    }
    if let Some(a) = &state.affinity {
        affinity::filter(a, node)?;
    }
    Ok(())
}

/// NodeUnschedulable: a cordoned node takes only pods tolerating the
/// `node.kubernetes.io/unschedulable:NoSchedule` taint.
fn node_unschedulable(pod: &Pod, node: &NodeInfo) -> Result<(), Failure> {
    let cordoned = node.node().spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
    if cordoned
        && !taints::tolerations_of(pod)
            .iter()
            .any(|t| taints::tolerates(t, taints::TAINT_UNSCHEDULABLE, "", taints::NO_SCHEDULE))
    {
        return Err(Failure::unresolvable(NODE_UNSCHEDULABLE, Reason::NodeUnschedulable));
    }
    Ok(())
}

/// NodeName: a pod that names its node fits only there.
fn node_name(pod: &Pod, node: &NodeInfo) -> Result<(), Failure> {
    match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        Some(wanted) if !wanted.is_empty() && wanted != node.name() => {
            Err(Failure::unresolvable(NODE_NAME, Reason::NodeNameMismatch))
        }
        _ => Ok(()),
    }
}

/// Not a kube-scheduler plugin: Kubernetes keeps pods off nodes whose Ready condition is
/// not True through the `node.kubernetes.io/not-ready` (or `unreachable`) taint that the
/// node lifecycle controller adds, which TaintToleration then reports. A keel node can be
/// not ready before anything has tainted it, so such a node is treated as if it carried
/// `not-ready:NoSchedule`: pods tolerating that taint may still go there, others fail with
/// "node(s) were not ready". Once the taint is present it is left to TaintToleration, so
/// the message is kube's. A node without any Ready condition counts as not ready, as it
/// does for the node lifecycle controller.
fn node_ready(pod: &Pod, node: &NodeInfo) -> Result<(), Failure> {
    if node.is_ready() {
        return Ok(());
    }
    let tainted =
        taints::taints_of(node.node()).iter().any(|t| t.key == taints::TAINT_NOT_READY || t.key == TAINT_UNREACHABLE);
    let tolerated = taints::tolerations_of(pod)
        .iter()
        .any(|t| taints::tolerates(t, taints::TAINT_NOT_READY, "", taints::NO_SCHEDULE));
    if tainted || tolerated {
        return Ok(());
    }
    Err(Failure::unresolvable(NODE_READY, Reason::NodeNotReady))
}

/// TaintToleration: every NoSchedule and NoExecute taint must be tolerated.
fn taint_toleration(pod: &Pod, node: &NodeInfo) -> Result<(), Failure> {
    match taints::first_untolerated(taints::taints_of(node.node()), taints::tolerations_of(pod)) {
        None => Ok(()),
        Some(taint) => Err(Failure::unresolvable(
            TAINT_TOLERATION,
            Reason::UntoleratedTaint { key: taint.key.clone(), value: taint.value.clone().unwrap_or_default() },
        )),
    }
}

/// NodeAffinity: `spec.nodeSelector` and required node affinity.
fn node_affinity(pod: &PodState, node: &NodeInfo) -> Result<(), Failure> {
    if pod.node_affinity.is_empty() || pod.node_affinity.matches(node.node()) {
        Ok(())
    } else {
        Err(Failure::unresolvable(NODE_AFFINITY, Reason::NodeAffinityMismatch))
    }
}

/// NodePorts: no wanted host port may already be bound on the node.
fn node_ports(pod: &PodState, node: &NodeInfo) -> Result<(), Failure> {
    if pod.host_ports.iter().any(|p| node.used_ports().conflicts(p)) {
        return Err(Failure::resolvable(NODE_PORTS, Reason::HostPortConflict));
    }
    Ok(())
}

/// NodeResourcesFit: the pod count and every requested resource must fit what the node's
/// pods leave of its allocatable. Every shortfall is reported. Preemption cannot help when
/// the request alone exceeds the node's allocatable.
fn node_resources_fit(pod: &PodState, node: &NodeInfo) -> Result<(), Failure> {
    let mut failure: Option<Failure> = None;
    let mut fail = |reason: Reason, beyond_node: bool| match &mut failure {
        None => {
            let mut f = Failure::resolvable(NODE_RESOURCES_FIT, reason);
            f.resolvable = !beyond_node;
            failure = Some(f);
        }
        Some(f) => {
            f.push(reason);
            f.resolvable &= !beyond_node;
        }
    };
    let alloc = node.allocatable();
    let used = node.requested();
    if i64::try_from(node.pod_count()).unwrap_or(i64::MAX) >= alloc.pods {
        fail(Reason::TooManyPods, false);
    }
    let req = &pod.requests;
    if !req.is_zero() {
        let mut check = |name: Cow<'static, str>, want: i64, alloc: i64, used: i64| {
            if want > 0 && want > alloc - used {
                fail(Reason::Insufficient(name), want > alloc);
            }
        };
        check(Cow::Borrowed(resources::CPU), req.milli_cpu, alloc.milli_cpu, used.milli_cpu);
        check(Cow::Borrowed(resources::MEMORY), req.memory, alloc.memory, used.memory);
        check(
            Cow::Borrowed(resources::EPHEMERAL_STORAGE),
            req.ephemeral_storage,
            alloc.ephemeral_storage,
            used.ephemeral_storage,
        );
        for (name, &want) in &req.scalar {
            check(Cow::Owned(name.clone()), want, alloc.scalar(name), used.scalar(name));
        }
    }
    failure.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cycle::prefilter;
    use crate::testutil::{labeled_node, node, pod, snapshot_of};
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;

    /// The failure message and whether it is resolvable.
    type Outcome = Result<(), (String, bool)>;

    /// Runs the whole filter chain for `pod` against the one `node` with `existing` pods.
    fn check(pod: &Pod, node: Node, existing: Vec<Pod>) -> Result<(), (String, bool)> {
        let name = node.metadata.name.clone().unwrap();
        let snap = snapshot_of(vec![node], existing.into_iter().map(|p| (name.as_str(), p)).collect());
        let state = prefilter(pod, &snap).map_err(|f| (f.message(), f.resolvable))?;
        filter(pod, &state, &snap.nodes()[0]).map_err(|f| (f.message(), f.resolvable))
    }

    fn with_spec(n: Node, spec: serde_json::Value) -> Node {
        let mut n = n;
        n.spec = serde_json::from_value(spec).unwrap();
        n
    }

    fn not_ready(n: Node) -> Node {
        let mut n = n;
        if let Some(s) = n.status.as_mut() {
            s.conditions = serde_json::from_value(json!([{"type": "Ready", "status": "False"}])).unwrap();
        }
        n
    }

    fn requesting(requests: serde_json::Value) -> Pod {
        pod("p", json!({"containers": [{"name": "c", "resources": {"requests": requests}}]}))
    }

    fn err(msg: &str, resolvable: bool) -> Result<(), (String, bool)> {
        Err((msg.to_string(), resolvable))
    }

    #[test]
    fn node_unschedulable_table() {
        let cordoned = || with_spec(labeled_node("n", json!({})), json!({"unschedulable": true}));
        let table = [
            ("schedulable", pod("p", json!({"containers": []})), labeled_node("n", json!({})), Ok(())),
            ("cordoned", pod("p", json!({"containers": []})), cordoned(), err("node(s) were unschedulable", false)),
            (
                "cordoned, tolerated",
                pod(
                    "p",
                    json!({"containers": [], "tolerations": [
                    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}),
                ),
                cordoned(),
                Ok(()),
            ),
            (
                "cordoned, wrong effect",
                pod(
                    "p",
                    json!({"containers": [], "tolerations": [
                    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoExecute"}]}),
                ),
                cordoned(),
                err("node(s) were unschedulable", false),
            ),
            (
                "cordoned, tolerate everything",
                pod("p", json!({"containers": [], "tolerations": [{"operator": "Exists"}]})),
                cordoned(),
                Ok(()),
            ),
        ];
        for (name, p, n, expected) in table {
            assert_eq!(check(&p, n, vec![]), expected, "{name}");
        }
    }

    #[test]
    fn node_name_table() {
        let table = [
            ("unset", json!({"containers": []}), Ok(())),
            ("this node", json!({"containers": [], "nodeName": "n"}), Ok(())),
            (
                "other node",
                json!({"containers": [], "nodeName": "m"}),
                err("node(s) didn't match the requested node name", false),
            ),
        ];
        for (name, spec, expected) in table {
            assert_eq!(check(&pod("p", spec), labeled_node("n", json!({})), vec![]), expected, "{name}");
        }
    }

    #[test]
    fn node_ready_table() {
        let not_ready_taint = |effect: &str| {
            with_spec(
                not_ready(labeled_node("n", json!({}))),
                json!({"taints": [{"key": "node.kubernetes.io/not-ready", "effect": effect}]}),
            )
        };
        let table = [
            ("ready", json!({"containers": []}), labeled_node("n", json!({})), Ok(())),
            (
                "not ready, no taint",
                json!({"containers": []}),
                not_ready(labeled_node("n", json!({}))),
                err("node(s) were not ready", false),
            ),
            (
                "no conditions at all",
                json!({"containers": []}),
                {
                    let mut n = labeled_node("n", json!({}));
                    n.status.as_mut().unwrap().conditions = None;
                    n
                },
                err("node(s) were not ready", false),
            ),
            (
                "not ready, pod tolerates not-ready",
                json!({"containers": [], "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}]}),
                not_ready(labeled_node("n", json!({}))),
                Ok(()),
            ),
            (
                "not ready and tainted: TaintToleration reports it",
                json!({"containers": []}),
                not_ready_taint("NoSchedule"),
                err("node(s) had untolerated taint {node.kubernetes.io/not-ready: }", false),
            ),
            (
                "not ready and tainted, tolerated",
                json!({"containers": [], "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"}]}),
                not_ready_taint("NoSchedule"),
                Ok(()),
            ),
        ];
        for (name, spec, n, expected) in table {
            assert_eq!(check(&pod("p", spec), n, vec![]), expected, "{name}");
        }
    }

    #[test]
    fn taint_toleration_table() {
        let tainted = |taints: serde_json::Value| with_spec(labeled_node("n", json!({})), json!({"taints": taints}));
        let table = [
            ("no taints", json!({"containers": []}), tainted(json!([])), Ok(())),
            (
                "NoSchedule untolerated",
                json!({"containers": []}),
                tainted(json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])),
                err("node(s) had untolerated taint {dedicated: gpu}", false),
            ),
            (
                "NoExecute untolerated",
                json!({"containers": []}),
                tainted(json!([{"key": "evict", "effect": "NoExecute"}])),
                err("node(s) had untolerated taint {evict: }", false),
            ),
            (
                "PreferNoSchedule never filters",
                json!({"containers": []}),
                tainted(json!([{"key": "soft", "effect": "PreferNoSchedule"}])),
                Ok(()),
            ),
            (
                "Equal toleration",
                json!({"containers": [], "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
                tainted(json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])),
                Ok(()),
            ),
            (
                "Equal toleration, other value",
                json!({"containers": [], "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "cpu", "effect": "NoSchedule"}]}),
                tainted(json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])),
                err("node(s) had untolerated taint {dedicated: gpu}", false),
            ),
            (
                "Exists with empty key tolerates all",
                json!({"containers": [], "tolerations": [{"operator": "Exists"}]}),
                tainted(
                    json!([{"key": "a", "effect": "NoSchedule"}, {"key": "b", "value": "x", "effect": "NoExecute"}]),
                ),
                Ok(()),
            ),
            (
                "the first untolerated taint is reported",
                json!({"containers": [], "tolerations": [{"key": "a", "operator": "Exists"}]}),
                tainted(
                    json!([{"key": "a", "effect": "NoSchedule"}, {"key": "b", "value": "x", "effect": "NoExecute"}]),
                ),
                err("node(s) had untolerated taint {b: x}", false),
            ),
            (
                "effect must match",
                json!({"containers": [], "tolerations": [{"key": "a", "operator": "Exists", "effect": "NoExecute"}]}),
                tainted(json!([{"key": "a", "effect": "NoSchedule"}])),
                err("node(s) had untolerated taint {a: }", false),
            ),
        ];
        for (name, spec, n, expected) in table {
            assert_eq!(check(&pod("p", spec), n, vec![]), expected, "{name}");
        }
    }

    #[test]
    fn node_affinity_filter_table() {
        let n = || labeled_node("n", json!({"zone": "a", "gen": "3"}));
        let required = |exprs: serde_json::Value| {
            json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": exprs}]}}}})
        };
        let mismatch = err("node(s) didn't match Pod's node affinity/selector", false);
        let table = [
            ("none", json!({"containers": []}), Ok(())),
            ("nodeSelector match", json!({"containers": [], "nodeSelector": {"zone": "a"}}), Ok(())),
            ("nodeSelector mismatch", json!({"containers": [], "nodeSelector": {"zone": "b"}}), mismatch.clone()),
            ("In", required(json!([{"key": "zone", "operator": "In", "values": ["a"]}])), Ok(())),
            ("NotIn", required(json!([{"key": "zone", "operator": "NotIn", "values": ["a"]}])), mismatch.clone()),
            ("Exists", required(json!([{"key": "zone", "operator": "Exists"}])), Ok(())),
            ("DoesNotExist", required(json!([{"key": "zone", "operator": "DoesNotExist"}])), mismatch.clone()),
            ("Gt", required(json!([{"key": "gen", "operator": "Gt", "values": ["2"]}])), Ok(())),
            ("Lt", required(json!([{"key": "gen", "operator": "Lt", "values": ["3"]}])), mismatch.clone()),
            (
                "matchFields metadata.name",
                json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["other"]}]}]}}}}),
                mismatch.clone(),
            ),
        ];
        for (name, spec, expected) in table {
            assert_eq!(check(&pod("p", spec), n(), vec![]), expected, "{name}");
        }
    }

    #[test]
    fn node_ports_table() {
        let with_port =
            |name: &str, port: serde_json::Value| pod(name, json!({"containers": [{"name": "c", "ports": [port]}]}));
        let conflict = err("node(s) didn't have free ports for the requested pod ports", true);
        // (wanted, existing, expected)
        let table = [
            (json!({"containerPort": 80}), json!({"containerPort": 80}), Ok(())),
            (
                json!({"containerPort": 80, "hostPort": 80}),
                json!({"containerPort": 80, "hostPort": 80}),
                conflict.clone(),
            ),
            (json!({"containerPort": 80, "hostPort": 80}), json!({"containerPort": 80, "hostPort": 81}), Ok(())),
            (
                json!({"containerPort": 80, "hostPort": 80, "protocol": "UDP"}),
                json!({"containerPort": 80, "hostPort": 80}),
                Ok(()),
            ),
            (
                json!({"containerPort": 80, "hostPort": 80, "hostIP": "10.0.0.1"}),
                json!({"containerPort": 80, "hostPort": 80, "hostIP": "10.0.0.2"}),
                Ok(()),
            ),
            (
                json!({"containerPort": 80, "hostPort": 80, "hostIP": "10.0.0.1"}),
                json!({"containerPort": 80, "hostPort": 80}),
                conflict.clone(),
            ),
            (
                json!({"containerPort": 80, "hostPort": 80}),
                json!({"containerPort": 80, "hostPort": 80, "hostIP": "10.0.0.2"}),
                conflict.clone(),
            ),
        ];
        for (i, (want, used, expected)) in table.into_iter().enumerate() {
            let got = check(&with_port("p", want), labeled_node("n", json!({})), vec![with_port("e", used)]);
            assert_eq!(got, expected, "case {i}");
        }
    }

    #[test]
    fn node_resources_fit_table() {
        let n = |alloc: serde_json::Value| node("n", alloc);
        let used = |requests: serde_json::Value| {
            pod("e", json!({"containers": [{"name": "c", "resources": {"requests": requests}}]}))
        };
        let table: Vec<(&str, Pod, Node, Vec<Pod>, Outcome)> = vec![
            (
                "fits",
                requesting(json!({"cpu": "1", "memory": "1Gi"})),
                n(json!({"cpu": "2", "memory": "2Gi", "pods": "10"})),
                vec![],
                Ok(()),
            ),
            (
                "exactly fits",
                requesting(json!({"cpu": "1"})),
                n(json!({"cpu": "2", "memory": "2Gi", "pods": "10"})),
                vec![used(json!({"cpu": "1"}))],
                Ok(()),
            ),
            (
                "insufficient cpu, preemption may help",
                requesting(json!({"cpu": "1500m"})),
                n(json!({"cpu": "2", "memory": "2Gi", "pods": "10"})),
                vec![used(json!({"cpu": "1"}))],
                err("Insufficient cpu", true),
            ),
            (
                "more cpu than the node has: preemption cannot help",
                requesting(json!({"cpu": "3"})),
                n(json!({"cpu": "2", "memory": "2Gi", "pods": "10"})),
                vec![],
                err("Insufficient cpu", false),
            ),
            (
                "every shortfall is reported",
                requesting(json!({"cpu": "2", "memory": "2Gi", "ephemeral-storage": "1Gi"})),
                n(json!({"cpu": "2", "memory": "2Gi", "ephemeral-storage": "1Gi", "pods": "10"})),
                vec![used(json!({"cpu": "1m", "memory": "1", "ephemeral-storage": "1"}))],
                err("Insufficient cpu, Insufficient memory, Insufficient ephemeral-storage", true),
            ),
            (
                "too many pods",
                requesting(json!({})),
                n(json!({"cpu": "2", "pods": "1"})),
                vec![used(json!({}))],
                err("Too many pods", true),
            ),
            (
                "too many pods and insufficient cpu",
                requesting(json!({"cpu": "2"})),
                n(json!({"cpu": "2", "pods": "1"})),
                vec![used(json!({"cpu": "1"}))],
                err("Too many pods, Insufficient cpu", true),
            ),
            ("no pods allocatable", requesting(json!({})), n(json!({"cpu": "2"})), vec![], err("Too many pods", true)),
            (
                "extended resource",
                requesting(json!({"example.com/gpu": "2"})),
                n(json!({"cpu": "2", "pods": "10", "example.com/gpu": "2"})),
                vec![used(json!({"example.com/gpu": "1"}))],
                err("Insufficient example.com/gpu", true),
            ),
            (
                "extended resource the node lacks",
                requesting(json!({"example.com/gpu": "1"})),
                n(json!({"cpu": "2", "pods": "10"})),
                vec![],
                err("Insufficient example.com/gpu", false),
            ),
            (
                "hugepages",
                requesting(json!({"hugepages-2Mi": "4Mi"})),
                n(json!({"cpu": "2", "pods": "10", "hugepages-2Mi": "8Mi"})),
                vec![used(json!({"hugepages-2Mi": "4Mi"}))],
                Ok(()),
            ),
            (
                "hugepages exhausted",
                requesting(json!({"hugepages-2Mi": "4Mi"})),
                n(json!({"cpu": "2", "pods": "10", "hugepages-2Mi": "8Mi"})),
                vec![used(json!({"hugepages-2Mi": "6Mi"}))],
                err("Insufficient hugepages-2Mi", true),
            ),
            (
                "zero request ignores an over-committed node",
                requesting(json!({})),
                n(json!({"cpu": "1", "pods": "10"})),
                vec![used(json!({"cpu": "2"}))],
                Ok(()),
            ),
        ];
        for (name, p, node, existing, expected) in table {
            assert_eq!(check(&p, node, existing), expected, "{name}");
        }
    }

    #[test]
    fn filters_run_in_kube_order() {
        // Cordoned, tainted, wrong zone and full: NodeUnschedulable comes first.
        let n = with_spec(
            node("n", json!({"cpu": "1", "pods": "10"})),
            json!({"unschedulable": true, "taints": [{"key": "a", "effect": "NoSchedule"}]}),
        );
        let p = pod(
            "p",
            json!({"nodeSelector": {"zone": "x"}, "containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}}}]}),
        );
        assert_eq!(check(&p, n, vec![]), err("node(s) were unschedulable", false));
        let n = with_spec(
            node("n", json!({"cpu": "1", "pods": "10"})),
            json!({"taints": [{"key": "a", "effect": "NoSchedule"}]}),
        );
        assert_eq!(check(&p, n, vec![]), err("node(s) had untolerated taint {a: }", false));
        assert_eq!(
            check(&p, node("n", json!({"cpu": "1", "pods": "10"})), vec![]),
            err("node(s) didn't match Pod's node affinity/selector", false)
        );
    }
}
