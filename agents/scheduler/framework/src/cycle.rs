//! One scheduling cycle's per-pod state: everything PreFilter derives from the pod and the
//! whole cluster, computed once so that the per-node filter is cheap.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use super::affinity::{self, AffinityState};
use super::nodeinfo::{self, HostPort, PodInfo};
use super::resources::{self, Resources};
use super::selector::{PreferredNodeAffinity, RequiredNodeAffinity};
use super::snapshot::Snapshot;
use super::spread::{self, SpreadState};
use super::status::{Failure, Reason};
use super::volume::{self, VolumeState};
use super::{filters, taints};

/// What is fixed for the pod during a cycle.
#[derive(Debug)]
pub(crate) struct PodState {
    pub(crate) requests: Resources,
    pub(crate) non_zero_milli_cpu: i64,
    pub(crate) non_zero_memory: i64,
    pub(crate) priority: i32,
    pub(crate) host_ports: Vec<HostPort>,
    pub(crate) node_affinity: RequiredNodeAffinity,
    pub(crate) preferred_node_affinity: PreferredNodeAffinity,
    candidate_nodes: Option<Vec<usize>>,
}

/// The result of [`prefilter`]: pass it to `filter`, `score_nodes` and `select_victims`
/// for the same pod and snapshot. Cloning copies only the cluster-wide counts (preemption
/// edits a copy per node).
#[derive(Debug, Clone)]
pub struct CycleState {
    pub(crate) pod: Arc<PodState>,
    pub(crate) affinity: Option<AffinityState>,
    pub(crate) spread: Option<SpreadState>,
    /// `None` for pods without PersistentVolumeClaims: nothing to check per node.
    pub(crate) volumes: Option<Arc<VolumeState>>,
}

impl CycleState {
    /// The pod's priority (`spec.priority`, 0 when unset).
    pub fn priority(&self) -> i32 {
        self.pod.priority
    }

    /// The pod's effective requests.
    pub fn requests(&self) -> &Resources {
        &self.pod.requests
    }

    /// When the pod's required node affinity pins it to nodes by name (`matchFields`
    /// `metadata.name In`), the indices of those nodes: the only ones worth filtering.
    /// Nodes left out fail with [`Reason::NotInPreFilterResult`]`("NodeAffinity")`.
    pub fn candidate_nodes(&self) -> Option<&[usize]> {
        self.pod.candidate_nodes.as_deref()
    }

    /// PreFilter's RemovePod/AddPod: `info`, on `node`, leaves or rejoins the cluster as
    /// preemption sees it.
    pub(crate) fn update(&mut self, pod: &Pod, info: &PodInfo, node: &k8s_openapi::api::core::v1::Node, delta: i64) {
        if let Some(a) = &mut self.affinity {
            a.update(info, node, delta);
        }
        if let Some(s) = &mut self.spread {
            s.update(&info.pod, node, &self.pod.node_affinity, taints::tolerations_of(pod), delta);
        }
    }
}

/// PreFilter: computes the pod's requests, compiles its selectors, looks up its claims and
/// their volumes, and counts what InterPodAffinity and PodTopologySpread need across the
/// whole snapshot. Fails when the pod cannot be scheduled anywhere (its node-name affinity
/// terms conflict, a claim is missing or waits for immediate binding) or when its spec
/// cannot be evaluated (an invalid label selector).
pub fn prefilter(pod: &Pod, snapshot: &Snapshot) -> Result<CycleState, Failure> {
    let node_affinity = RequiredNodeAffinity::of_pod(pod);
    let candidate_nodes = match node_affinity.pinned_node_names() {
        Some(names) if names.is_empty() => {
            return Err(Failure::unresolvable(filters::NODE_AFFINITY, Reason::NodeAffinityConflict));
        }
        Some(names) => Some(names.iter().filter_map(|n| snapshot.index_of(n)).collect()),
        None => None,
    };
    let volumes = volume::prefilter(pod, snapshot)?.map(Arc::new);
    let spread = spread::prefilter(pod, &node_affinity, snapshot)
        .map_err(|e| Failure::unresolvable(spread::PLUGIN, Reason::Invalid(e.to_string())))?;
    let affinity = affinity::prefilter(pod, snapshot)
        .map_err(|e| Failure::unresolvable(affinity::PLUGIN, Reason::Invalid(e.to_string())))?;
    let requests = resources::pod_requests(pod);
    let non_zero = resources::pod_non_zero_requests(pod);
    Ok(CycleState {
        pod: Arc::new(PodState {
            requests,
            non_zero_milli_cpu: non_zero.milli_cpu,
            non_zero_memory: non_zero.memory,
            priority: nodeinfo::pod_priority(pod),
            host_ports: nodeinfo::host_ports(pod),
            preferred_node_affinity: PreferredNodeAffinity::of_pod(pod),
            node_affinity,
            candidate_nodes,
        }),
        affinity,
        spread,
        volumes,
    })
}

/// kube-scheduler's adaptive `percentageOfNodesToScore`: how many feasible nodes to find
/// before scoring. All nodes below 100; otherwise `max(5, 50 - nodes/125)` percent, at
/// least 100.
pub fn nodes_to_evaluate(total: usize) -> usize {
    const MIN_FEASIBLE: usize = 100;
    if total < MIN_FEASIBLE {
        return total;
    }
    let percentage = 50usize.saturating_sub(total / 125).max(5);
    (total * percentage / 100).max(MIN_FEASIBLE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{labeled_node, pod, snapshot_of};
    use serde_json::json;

    #[test]
    fn nodes_to_evaluate_table() {
        let table = [
            (0, 0),
            (50, 50),
            (99, 99),
            (100, 100),
            (200, 100),
            (500, 230),
            (1000, 420),
            (5000, 500),
            (5624, 337),
            (6000, 300),
            (15000, 750),
        ];
        for (total, expected) in table {
            assert_eq!(nodes_to_evaluate(total), expected, "{total} nodes");
        }
    }

    #[test]
    fn prefilter_pins_nodes_by_name() {
        let snap = snapshot_of(vec![labeled_node("a", json!({})), labeled_node("b", json!({}))], vec![]);
        let pinned = |names: serde_json::Value| {
            pod(
                "p",
                json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": names}]}]}}}}),
            )
        };
        let s = prefilter(&pinned(json!(["b"])), &snap).unwrap();
        assert_eq!(s.candidate_nodes(), Some(&[1usize][..]));
        let s = prefilter(&pinned(json!(["gone"])), &snap).unwrap();
        assert_eq!(s.candidate_nodes(), Some(&[][..]));
        let s = prefilter(&pod("p", json!({"containers": []})), &snap).unwrap();
        assert_eq!(s.candidate_nodes(), None);

        let conflict = pod(
            "p",
            json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchFields": [
                    {"key": "metadata.name", "operator": "In", "values": ["a"]},
                    {"key": "metadata.name", "operator": "In", "values": ["b"]}]}]}}}}),
        );
        let err = prefilter(&conflict, &snap).unwrap_err();
        assert_eq!(err.message(), "pod affinity terms conflict");
        assert!(!err.resolvable);
    }

    #[test]
    fn prefilter_rejects_invalid_spread_selector() {
        let snap = snapshot_of(vec![labeled_node("a", json!({}))], vec![]);
        let p = pod(
            "p",
            json!({"containers": [], "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
                "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchExpressions": [{"key": "a", "operator": "Bogus"}]}}]}),
        );
        let err = prefilter(&p, &snap).unwrap_err();
        assert_eq!(err.plugin, "PodTopologySpread");
        assert_eq!(err.message(), "\"Bogus\" is not a valid label selector operator");
    }
}
