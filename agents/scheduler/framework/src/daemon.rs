//! Whether a DaemonSet's pod belongs on a node: kube's `NodeShouldRunDaemonPod`, which asks
//! the scheduler's NodeAffinity and TaintToleration predicates (nothing about resources:
//! a daemon pod that does not fit is the scheduler's business, shown as Pending).

use k8s_openapi::api::core::v1::{Node, Pod};

use crate::selector::RequiredNodeAffinity;
use crate::taints::{NO_EXECUTE, first_untolerated, taints_of, tolerated, tolerations_of};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaemonPlacement {
    /// A pod should be created on the node.
    pub should_run: bool,
    /// A pod already there may stay (untolerated `NoSchedule` taints do not evict).
    pub should_continue_running: bool,
}

/// `pod` is the daemon pod as it would be created (template plus the daemon tolerations).
pub fn daemon_placement(pod: &Pod, node: &Node) -> DaemonPlacement {
    let fits = RequiredNodeAffinity::of_pod(pod).matches(node);
    let tolerations = tolerations_of(pod);
    let taints = taints_of(node);
    let schedulable = first_untolerated(taints, tolerations).is_none();
    let not_evicted = taints.iter().filter(|t| t.effect == NO_EXECUTE).all(|t| tolerated(tolerations, t));
    DaemonPlacement { should_run: fits && schedulable, should_continue_running: fits && not_evicted }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(value: serde_json::Value) -> Node {
        serde_json::from_value(value).unwrap()
    }

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn placement_follows_selector_affinity_and_taints() {
        let plain = pod(serde_json::json!({"spec": {"containers": []}}));
        let selecting = pod(serde_json::json!({"spec": {"containers": [], "nodeSelector": {"disk": "ssd"}}}));
        let tolerant = pod(serde_json::json!({"spec": {"containers": [], "tolerations": [
            {"key": "dedicated", "operator": "Exists"}]}}));
        let ssd = node(serde_json::json!({"metadata": {"name": "a", "labels": {"disk": "ssd"}}}));
        let no_schedule = node(serde_json::json!({"metadata": {"name": "b"}, "spec": {"taints": [
            {"key": "dedicated", "value": "x", "effect": "NoSchedule"}]}}));
        let no_execute = node(serde_json::json!({"metadata": {"name": "c"}, "spec": {"taints": [
            {"key": "dedicated", "value": "x", "effect": "NoExecute"}]}}));
        let prefer = node(serde_json::json!({"metadata": {"name": "d"}, "spec": {"taints": [
            {"key": "dedicated", "value": "x", "effect": "PreferNoSchedule"}]}}));
        let cases = [
            ("plain pod, plain node", &plain, &ssd, true, true),
            ("selector matches", &selecting, &ssd, true, true),
            ("selector does not match", &selecting, &no_schedule, false, false),
            ("NoSchedule: no new pod, existing stays", &plain, &no_schedule, false, true),
            ("NoExecute: neither", &plain, &no_execute, false, false),
            ("PreferNoSchedule is no obstacle", &plain, &prefer, true, true),
            ("tolerated NoExecute", &tolerant, &no_execute, true, true),
        ];
        for (name, pod, node, run, stay) in cases {
            let got = daemon_placement(pod, node);
            assert_eq!((got.should_run, got.should_continue_running), (run, stay), "{name}");
        }
    }

    #[test]
    fn required_affinity_pins_by_name() {
        let pinned = pod(serde_json::json!({"spec": {"containers": [], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]}]}}}}}));
        assert!(daemon_placement(&pinned, &node(serde_json::json!({"metadata": {"name": "a"}}))).should_run);
        assert!(!daemon_placement(&pinned, &node(serde_json::json!({"metadata": {"name": "b"}}))).should_run);
    }
}
