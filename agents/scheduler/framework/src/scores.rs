//! Scoring of the feasible nodes: each default kube-scheduler score plugin gives 0..=100,
//! normalised over the candidates where kube normalises, times its default weight, summed.
//! ImageLocality is not implemented.

use k8s_openapi::api::core::v1::Pod;

use super::affinity;
use super::cycle::{CycleState, PodState};
use super::nodeinfo::NodeInfo;
use super::snapshot::Snapshot;
use super::spread;
use super::taints;

pub const MAX_NODE_SCORE: i64 = 100;

pub const WEIGHT_TAINT_TOLERATION: i64 = 3;
pub const WEIGHT_NODE_AFFINITY: i64 = 2;
pub const WEIGHT_NODE_RESOURCES_FIT: i64 = 1;
pub const WEIGHT_BALANCED_ALLOCATION: i64 = 1;
pub const WEIGHT_INTER_POD_AFFINITY: i64 = 2;
pub const WEIGHT_POD_TOPOLOGY_SPREAD: i64 = 2;

/// The weighted sum of every score for each candidate (indices into the snapshot), in the
/// order given. The loop picks the highest (kube breaks ties at random).
pub fn score_nodes(pod: &Pod, state: &CycleState, snapshot: &Snapshot, candidates: &[usize]) -> Vec<(usize, i64)> {
    let nodes = snapshot.nodes();
    let p = &state.pod;
    let mut totals: Vec<i64> = candidates
        .iter()
        .map(|&n| {
            let node = &nodes[n];
            WEIGHT_NODE_RESOURCES_FIT * least_allocated(p, node)
                + balanced_allocation(p, node).map_or(0, |s| WEIGHT_BALANCED_ALLOCATION * s)
        })
        .collect();

    let mut add = |weight: i64, scores: &[i64]| {
        for (t, s) in totals.iter_mut().zip(scores) {
            *t += weight * s;
        }
    };

    let tolerations = taints::tolerations_of(pod);
    let mut taint_scores: Vec<i64> = candidates
        .iter()
        .map(|&n| taints::intolerable_prefer_no_schedule(taints::taints_of(nodes[n].node()), tolerations))
        .collect();
    default_normalize(&mut taint_scores, true);
    add(WEIGHT_TAINT_TOLERATION, &taint_scores);

    if !p.preferred_node_affinity.is_empty() {
        let mut s: Vec<i64> = candidates.iter().map(|&n| p.preferred_node_affinity.score(nodes[n].node())).collect();
        default_normalize(&mut s, false);
        add(WEIGHT_NODE_AFFINITY, &s);
    }

    if let Some(scorer) = affinity::prescore(pod, snapshot) {
        let mut s: Vec<i64> = candidates.iter().map(|&n| scorer.score(nodes[n].node())).collect();
        affinity::normalize(&mut s);
        add(WEIGHT_INTER_POD_AFFINITY, &s);
    }

    if let Some(s) = spread::score(pod, &p.node_affinity, snapshot, candidates) {
        add(WEIGHT_POD_TOPOLOGY_SPREAD, &s);
    }

    candidates.iter().copied().zip(totals).collect()
}

/// NodeResourcesFit's LeastAllocated strategy on cpu and memory (weight 1 each), with the
/// non-zero requests (100m / 200Mi for containers that request nothing).
pub(crate) fn least_allocated(pod: &PodState, node: &NodeInfo) -> i64 {
    let alloc = node.allocatable();
    let used = node.non_zero_requested();
    let resources =
        [(used.milli_cpu + pod.non_zero_milli_cpu, alloc.milli_cpu), (used.memory + pod.non_zero_memory, alloc.memory)];
    let (mut sum, mut weights) = (0, 0);
    for (requested, capacity) in resources {
        // A resource the node does not report is left out rather than scored 0.
        if capacity == 0 {
            continue;
        }
        sum += if requested > capacity { 0 } else { (capacity - requested) * MAX_NODE_SCORE / capacity };
        weights += 1;
    }
    if weights == 0 { 0 } else { sum / weights }
}

/// NodeResourcesBalancedAllocation on cpu and memory, with the actual requests: favours
/// nodes whose cpu and memory fill up evenly. `None` for a pod requesting neither (kube
/// skips the plugin for best-effort pods so they do not all pile onto one node).
pub(crate) fn balanced_allocation(pod: &PodState, node: &NodeInfo) -> Option<i64> {
    let req = &pod.requests;
    if req.milli_cpu == 0 && req.memory == 0 {
        return None;
    }
    let alloc = node.allocatable();
    let used = node.requested();
    let fractions: Vec<f64> =
        [(used.milli_cpu + req.milli_cpu, alloc.milli_cpu), (used.memory + req.memory, alloc.memory)]
            .into_iter()
            .filter(|&(_, capacity)| capacity != 0)
            .map(|(requested, capacity)| (requested as f64 / capacity as f64).min(1.0))
            .collect();
    let std = match fractions.as_slice() {
        [a, b] => ((a - b) / 2.0).abs(),
        _ => 0.0,
    };
    Some(((1.0 - std) * MAX_NODE_SCORE as f64) as i64)
}

/// kube's `DefaultNormalizeScore`: scale to 0..=100 by the maximum, optionally reversed
/// (for counts where fewer is better).
pub(crate) fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0).max(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        let scaled = MAX_NODE_SCORE * *s / max;
        *s = if reverse { MAX_NODE_SCORE - scaled } else { scaled };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cycle::prefilter;
    use crate::testutil::{PodExt, labeled_node, node, pod, snapshot_of};
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;

    type Balanced = Option<i64>;

    fn state_for(p: &Pod) -> CycleState {
        prefilter(p, &Snapshot::new()).unwrap()
    }

    fn requesting(cpu: &str, memory: &str) -> Pod {
        pod("p", json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}))
    }

    fn node_info(alloc: serde_json::Value, existing: Vec<Pod>) -> NodeInfo {
        let snap = snapshot_of(vec![node("n", alloc)], existing.into_iter().map(|p| ("n", p)).collect());
        snap.nodes()[0].clone()
    }

    #[test]
    fn least_allocated_table() {
        let best_effort = pod("p", json!({"containers": [{"name": "c"}]}));
        // (pod, allocatable, existing, expected)
        let table: Vec<(&str, Pod, serde_json::Value, Vec<Pod>, i64)> = vec![
            // cpu (4000-1000)/4000 = 75, memory (8Gi-2Gi)/8Gi = 75.
            ("quarter used", requesting("1", "2Gi"), json!({"cpu": "4", "memory": "8Gi"}), vec![], 75),
            // cpu 50, memory 100 -> 75.
            ("uneven", requesting("2", "0"), json!({"cpu": "4", "memory": "8Gi"}), vec![], 75),
            // existing 3 cpu + 1: cpu 0; memory (8Gi-4Gi)/8Gi = 50 -> 25.
            (
                "existing pods count",
                requesting("1", "2Gi"),
                json!({"cpu": "4", "memory": "8Gi"}),
                vec![requesting("3", "2Gi").named("e")],
                25,
            ),
            // Over capacity scores 0, not negative.
            ("over capacity", requesting("8", "16Gi"), json!({"cpu": "4", "memory": "8Gi"}), vec![], 0),
            // Best effort counts as 100m / 200Mi: cpu (1000-100)/1000 = 90, memory (1000Mi-200Mi)/1000Mi = 80.
            ("best effort uses defaults", best_effort, json!({"cpu": "1", "memory": "1000Mi"}), vec![], 85),
            // No memory reported: only cpu counts.
            ("missing memory", requesting("1", "1Gi"), json!({"cpu": "4"}), vec![], 75),
            ("nothing reported", requesting("1", "1Gi"), json!({}), vec![], 0),
        ];
        for (name, p, alloc, existing, expected) in table {
            assert_eq!(least_allocated(&state_for(&p).pod, &node_info(alloc, existing)), expected, "{name}");
        }
    }

    #[test]
    fn balanced_allocation_table() {
        let table: Vec<(&str, Pod, serde_json::Value, Vec<Pod>, Balanced)> = vec![
            // cpu 0.25, memory 0.25: perfectly balanced.
            ("balanced", requesting("1", "2Gi"), json!({"cpu": "4", "memory": "8Gi"}), vec![], Some(100)),
            // cpu 0.5, memory 0: std 0.25 -> 75.
            ("cpu only", requesting("2", "0"), json!({"cpu": "4", "memory": "8Gi"}), vec![], Some(75)),
            // cpu (1+3)/4 = 1, memory 2Gi/8Gi = 0.25: std 0.375 -> 62.
            (
                "with existing",
                requesting("1", "2Gi"),
                json!({"cpu": "4", "memory": "8Gi"}),
                vec![requesting("3", "0").named("e")],
                Some(62),
            ),
            // Fractions are capped at 1: cpu 2 -> 1, memory 0.5: std 0.25 -> 75.
            ("over capacity", requesting("8", "4Gi"), json!({"cpu": "4", "memory": "8Gi"}), vec![], Some(75)),
            // One resource reported: std 0.
            ("one resource", requesting("1", "1Gi"), json!({"cpu": "4"}), vec![], Some(100)),
            (
                "best effort is skipped",
                pod("p", json!({"containers": [{"name": "c"}]})),
                json!({"cpu": "4", "memory": "8Gi"}),
                vec![],
                None,
            ),
        ];
        for (name, p, alloc, existing, expected) in table {
            assert_eq!(balanced_allocation(&state_for(&p).pod, &node_info(alloc, existing)), expected, "{name}");
        }
    }

    #[test]
    fn default_normalize_table() {
        let table = [
            (vec![0, 5, 10], false, vec![0, 50, 100]),
            (vec![1, 3], false, vec![33, 100]),
            (vec![0, 0], false, vec![0, 0]),
            (vec![0, 0], true, vec![100, 100]),
            (vec![0, 1, 2], true, vec![100, 50, 0]),
        ];
        for (input, reverse, expected) in table {
            let mut s = input.clone();
            default_normalize(&mut s, reverse);
            assert_eq!(s, expected, "{input:?} reverse={reverse}");
        }
    }

    /// Nodes with equal resources, so only the plugin under test separates them.
    fn equal_nodes(labels: &[serde_json::Value]) -> Vec<Node> {
        labels.iter().enumerate().map(|(i, l)| labeled_node(&format!("n{i}"), l.clone())).collect()
    }

    /// Scores with the resource plugins' constant part removed: every node here has the
    /// same allocatable and no pods, so they add the same amount everywhere.
    fn relative(scores: Vec<(usize, i64)>) -> Vec<i64> {
        let min = scores.iter().map(|&(_, s)| s).min().unwrap_or(0);
        scores.into_iter().map(|(_, s)| s - min).collect()
    }

    #[test]
    fn taint_toleration_score() {
        let mut nodes = equal_nodes(&[json!({}), json!({}), json!({})]);
        nodes[1].spec =
            serde_json::from_value(json!({"taints": [{"key": "a", "effect": "PreferNoSchedule"}]})).unwrap();
        nodes[2].spec = serde_json::from_value(json!({"taints": [
            {"key": "a", "effect": "PreferNoSchedule"}, {"key": "b", "effect": "PreferNoSchedule"}]}))
        .unwrap();
        let snap = snapshot_of(nodes, vec![]);
        let p = requesting("1", "1Gi");
        let s = score_nodes(&p, &prefilter(&p, &snap).unwrap(), &snap, &[0, 1, 2]);
        // Reverse-normalised counts 0, 1, 2 -> 100, 50, 0, times 3.
        assert_eq!(relative(s), vec![300, 150, 0]);

        let tolerant =
            requesting("1", "1Gi").with_spec_field("tolerations", json!([{"key": "a", "operator": "Exists"}]));
        let s = score_nodes(&tolerant, &prefilter(&tolerant, &snap).unwrap(), &snap, &[0, 1, 2]);
        assert_eq!(relative(s), vec![300, 300, 0]);
    }

    #[test]
    fn node_affinity_score() {
        let snap =
            snapshot_of(equal_nodes(&[json!({"zone": "a"}), json!({"zone": "b", "ssd": "1"}), json!({})]), vec![]);
        let p = requesting("1", "1Gi").with_spec_field(
            "affinity",
            json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}},
                {"weight": 30, "preference": {"matchExpressions": [{"key": "ssd", "operator": "Exists"}]}},
                {"weight": 5, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}},
            ]}}),
        );
        let s = score_nodes(&p, &prefilter(&p, &snap).unwrap(), &snap, &[0, 1, 2]);
        // Raw 5, 40, 0 -> 12, 100, 0, times 2.
        assert_eq!(relative(s), vec![24, 200, 0]);
    }

    #[test]
    fn inter_pod_affinity_score() {
        let nodes = equal_nodes(&[json!({"zone": "a"}), json!({"zone": "b"}), json!({"zone": "c"})]);
        let db = pod("db", json!({"containers": []})).labeled(json!({"app": "db"}));
        let snap = snapshot_of(nodes, vec![("n1", db)]);
        let p = requesting("1", "1Gi").with_spec_field(
            "affinity",
            json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 50, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}}]}}),
        );
        let s = score_nodes(&p, &prefilter(&p, &snap).unwrap(), &snap, &[0, 1, 2]);
        // Raw 0, -50, 0 -> 100, 0, 100, times 2; n1 also carries the db pod's 100m/200Mi,
        // which costs it a point of LeastAllocated.
        let plain = score_nodes(
            &requesting("1", "1Gi"),
            &prefilter(&requesting("1", "1Gi"), &snap).unwrap(),
            &snap,
            &[0, 1, 2],
        );
        let diff: Vec<i64> = s.iter().zip(&plain).map(|(a, b)| a.1 - b.1).collect();
        assert_eq!(diff, vec![200, 0, 200]);
    }

    #[test]
    fn pod_topology_spread_score() {
        let nodes = equal_nodes(&[json!({"zone": "a"}), json!({"zone": "b"})]);
        let web = |name: &str| pod(name, json!({"containers": []})).labeled(json!({"app": "web"}));
        let snap = snapshot_of(nodes, vec![("n0", web("a")), ("n0", web("b"))]);
        let constraint = json!([{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app": "web"}}}]);
        let p = requesting("1", "1Gi")
            .labeled(json!({"app": "web"}))
            .with_spec_field("topologySpreadConstraints", constraint);
        let base = requesting("1", "1Gi");
        let s = score_nodes(&p, &prefilter(&p, &snap).unwrap(), &snap, &[0, 1]);
        let plain = score_nodes(&base, &prefilter(&base, &snap).unwrap(), &snap, &[0, 1]);
        let diff: Vec<i64> = s.iter().zip(&plain).map(|(a, b)| a.1 - b.1).collect();
        // Weight ln(4): raw a = round(2 * 1.386) = 3, b = 0 -> 0 and 100, times 2.
        assert_eq!(diff, vec![0, 200]);
    }

    #[test]
    fn combined_score_prefers_the_emptier_node() {
        let snap = snapshot_of(
            vec![
                node("full", json!({"cpu": "4", "memory": "8Gi", "pods": "110"})),
                node("empty", json!({"cpu": "4", "memory": "8Gi", "pods": "110"})),
            ],
            vec![("full", requesting("2", "4Gi").named("e"))],
        );
        let p = requesting("1", "2Gi");
        let s = score_nodes(&p, &prefilter(&p, &snap).unwrap(), &snap, &[0, 1]);
        // full: least 25, balanced 100, taints 300 -> 425; empty: 75 + 100 + 300 = 475.
        assert_eq!(s, vec![(0, 425), (1, 475)]);
    }
}
