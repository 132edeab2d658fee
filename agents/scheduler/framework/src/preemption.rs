//! DefaultPreemption's per-node part: which lower-priority pods must go for the pod to fit
//! (`SelectVictimsOnNode`), and which candidate node to preempt on
//! (`pickOneNodeForPreemption`).
//!
//! PodDisruptionBudgets are respected as kube respects them: victims whose eviction would
//! take a budget below zero are the first to be spared, a node's count of those it still
//! has to evict is its first criterion in the choice, and none is ever refused for it.
//! Nominated pods are not added back before filtering: the snapshot has none.

use std::cmp::Reverse;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::cycle::CycleState;
use super::disruption::DisruptionBudgets;
use super::filters::filter;
use super::nodeinfo::{NodeInfo, PodInfo, pod_priority};
use super::status::{Failure, Reason};

pub const PLUGIN: &str = "DefaultPreemption";

/// The message kube gives a pod with `preemptionPolicy: Never` in place of a dry run.
pub const NOT_ELIGIBLE_NEVER: &str = "not eligible due to preemptionPolicy=Never.";

/// The pods to evict from one node, highest priority first.
#[derive(Debug, Clone, Default)]
pub struct Victims {
    pub pods: Vec<Arc<Pod>>,
    /// How many of them take a PodDisruptionBudget below zero (`NumPDBViolations`).
    pub pdb_violations: usize,
}

impl Victims {
    fn highest_priority(&self) -> Option<i32> {
        self.pods.iter().map(|p| pod_priority(p)).max()
    }

    fn priority_sum(&self) -> i64 {
        // Offset as kube does so that negative priorities still add up to more victims
        // costing more.
        self.pods.iter().map(|p| i64::from(pod_priority(p)) + i64::from(i32::MAX) + 1).sum()
    }

    /// The earliest start time among the highest-priority victims.
    fn earliest_start_of_highest(&self) -> Option<StartTime> {
        let highest = self.highest_priority()?;
        self.pods.iter().filter(|p| pod_priority(p) == highest).map(|p| start_time(p)).min()
    }
}

/// A pod's start time; a pod that has not started counts as starting now, i.e. after
/// every pod that has (kube's `GetPodStartTime`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum StartTime {
    At(Time),
    NotYet,
}

fn start_time(pod: &Pod) -> StartTime {
    pod.status.as_ref().and_then(|s| s.start_time.clone()).map_or(StartTime::NotYet, StartTime::At)
}

/// Whether the pod may preempt at all: `Err` with kube's message when its
/// `preemptionPolicy` is `Never`.
pub fn eligible_to_preempt(pod: &Pod) -> Result<(), &'static str> {
    match pod.spec.as_ref().and_then(|s| s.preemption_policy.as_deref()) {
        Some("Never") => Err(NOT_ELIGIBLE_NEVER),
        _ => Ok(()),
    }
}

/// How many candidate nodes the dry run looks for before choosing (kube's
/// `calculateNumCandidates`: 10% of the nodes, at least 100, at most all).
pub fn preemption_candidates_to_find(total: usize) -> usize {
    (total / 10).max(100).min(total)
}

/// `SelectVictimsOnNode`: takes every pod of lower priority off a copy of the node, checks
/// the pod then passes all filters, and puts back as many of them as still let it pass:
/// first those whose eviction would violate a budget, then the others, each group highest
/// priority (then earliest started) first. Call it only for nodes whose filter failure was
/// resolvable; pass the same budgets for every node of one attempt. The error is what the
/// node reports in the preemption message.
pub fn select_victims(
    pod: &Pod,
    state: &CycleState,
    node: &NodeInfo,
    budgets: &DisruptionBudgets,
) -> Result<Victims, Failure> {
    let priority = state.priority();
    let mut potential: Vec<PodInfo> = node.pod_infos().iter().filter(|p| p.priority < priority).cloned().collect();
    if potential.is_empty() {
        return Err(Failure::unresolvable(PLUGIN, Reason::NoPreemptionVictims));
    }
    let mut node = node.clone();
    let mut state = state.clone();
    let node_object = node.node().clone();
    for victim in &potential {
        node.take_pod(&victim.pod);
        state.update(pod, victim, &node_object, -1);
    }
    // Kube does not try to keep victims the pod has affinity to: it just fails here.
    filter(pod, &state, &node)?;

    // Sorted before the split, so that the budgets are spent on the most important pods
    // and the violations fall on the least important.
    potential.sort_by_key(|p| (Reverse(p.priority), start_time(&p.pod)));
    let (violating, fine) = budgets.split_violating(potential);
    let both = !violating.is_empty() && !fine.is_empty();
    let mut victims = Vec::new();
    let mut reprieve = |victim: PodInfo| {
        state.update(pod, &victim, &node_object, 1);
        let pod_ref = victim.pod.clone();
        node.add_pod_info(victim.clone());
        if filter(pod, &state, &node).is_ok() {
            return true;
        }
        node.take_pod(&pod_ref);
        state.update(pod, &victim, &node_object, -1);
        victims.push(pod_ref);
        false
    };
    let mut pdb_violations = 0;
    for victim in violating {
        if !reprieve(victim) {
            pdb_violations += 1;
        }
    }
    for victim in fine {
        reprieve(victim);
    }
    if both {
        victims.sort_by_key(|p| (Reverse(pod_priority(p)), start_time(p)));
    }
    Ok(Victims { pods: victims, pdb_violations })
}

/// `pickOneNodeForPreemption` over `(node index, victims)`: a node needing no eviction
/// wins outright; then the fewest PodDisruptionBudget violations, the lowest highest victim
/// priority, the lowest sum of priorities, the fewest victims, the latest start among the
/// highest-priority victims, and finally the first candidate.
pub fn pick_preemption_node(candidates: &[(usize, Victims)]) -> Option<usize> {
    if let Some((n, _)) = candidates.iter().find(|(_, v)| v.pods.is_empty()) {
        return Some(*n);
    }
    let mut best: Vec<&(usize, Victims)> = candidates.iter().collect();
    narrow(&mut best, |v| i64::try_from(v.pdb_violations).unwrap_or(i64::MAX));
    narrow(&mut best, |v| v.highest_priority().map_or(i64::MIN, i64::from));
    narrow(&mut best, Victims::priority_sum);
    narrow(&mut best, |v| i64::try_from(v.pods.len()).unwrap_or(i64::MAX));
    // Latest start wins: keep the maximum.
    if best.len() > 1 {
        let latest = best.iter().filter_map(|(_, v)| v.earliest_start_of_highest()).max();
        best.retain(|(_, v)| v.earliest_start_of_highest() == latest);
    }
    best.first().map(|(n, _)| *n)
}

/// Whether the dry run has seen enough candidates (kube's `DryRunPreemption` stops at
/// `wanted`, from [`preemption_candidates_to_find`], but only once one of them violates
/// no budget: otherwise it looks on for one that does not).
pub fn enough_preemption_candidates(found: &[(usize, Victims)], wanted: usize) -> bool {
    found.len() >= wanted && found.iter().any(|(_, v)| v.pdb_violations == 0)
}

/// Keeps the candidates with the minimal key.
fn narrow(best: &mut Vec<&(usize, Victims)>, key: impl Fn(&Victims) -> i64) {
    if let Some(min) = best.iter().map(|(_, v)| key(v)).min() {
        best.retain(|(_, v)| key(v) == min);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cycle::prefilter;
    use crate::snapshot::Snapshot;
    use crate::testutil::{PodExt, labeled_node, node, pdb, pod, snapshot_of};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use serde_json::json;

    /// Victim names, or the node's failure message.
    type Expected = Result<Vec<&'static str>, &'static str>;
    type Candidates = Vec<(usize, Victims)>;

    fn cpu_pod(name: &str, cpu: &str, priority: i32) -> Pod {
        pod(name, json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}))
            .with_priority(priority)
    }

    fn names(v: &Victims) -> Vec<String> {
        v.pods.iter().map(|p| p.metadata.name.clone().unwrap()).collect()
    }

    fn victims_on(p: &Pod, snap: &Snapshot) -> Result<Vec<String>, String> {
        let state = prefilter(p, snap).unwrap();
        select_victims(p, &state, &snap.nodes()[0], &DisruptionBudgets::default())
            .map(|v| names(&v))
            .map_err(|f| f.message())
    }

    #[test]
    fn select_victims_table() {
        let alloc = json!({"cpu": "4", "memory": "8Gi", "pods": "110"});
        // (name, preemptor, existing, expected victims or error)
        let table: Vec<(&str, Pod, Vec<Pod>, Expected)> = vec![
            (
                "evicts only what is needed, lowest priority first",
                cpu_pod("p", "2", 100),
                vec![cpu_pod("a", "1", 10), cpu_pod("b", "1", 20), cpu_pod("c", "1", 30), cpu_pod("d", "1", 40)],
                // Highest first are reprieved: d, c fit back (2 + 2 = 4); b and a must go.
                Ok(vec!["b", "a"]),
            ),
            (
                "higher-priority pods are never victims",
                cpu_pod("p", "2", 100),
                vec![cpu_pod("a", "1", 10), cpu_pod("high", "2", 200), cpu_pod("b", "1", 20)],
                Ok(vec!["b", "a"]),
            ),
            (
                "equal priority is not lower",
                cpu_pod("p", "2", 100),
                vec![cpu_pod("a", "2", 100), cpu_pod("b", "2", 100)],
                Err("No preemption victims found for incoming pod"),
            ),
            (
                "does not fit even with every victim gone",
                cpu_pod("p", "3", 100),
                vec![cpu_pod("high", "2", 200), cpu_pod("a", "1", 10)],
                Err("Insufficient cpu"),
            ),
            (
                "a big victim may save several small ones",
                cpu_pod("p", "2", 100),
                vec![cpu_pod("small1", "1", 50), cpu_pod("small2", "1", 50), cpu_pod("big", "2", 10)],
                Ok(vec!["big"]),
            ),
            (
                "priority unset is 0",
                cpu_pod("p", "4", 1),
                vec![pod("none", json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}))],
                Ok(vec!["none"]),
            ),
        ];
        for (name, p, existing, expected) in table {
            let snap = snapshot_of(vec![node("n", alloc.clone())], existing.into_iter().map(|e| ("n", e)).collect());
            let expected = expected.map(|v| v.into_iter().map(String::from).collect()).map_err(String::from);
            assert_eq!(victims_on(&p, &snap), expected, "{name}");
        }
    }

    #[test]
    fn select_victims_respects_anti_affinity_of_victims() {
        // The low-priority pod's anti-affinity rejects the preemptor; evicting it helps.
        let hater = pod(
            "hater",
            json!({"containers": [], "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}}),
        )
        .with_priority(1);
        let bystander = cpu_pod("bystander", "100m", 1);
        let snap = snapshot_of(vec![labeled_node("n", json!({}))], vec![("n", hater), ("n", bystander)]);
        let p = pod("p", json!({"containers": []})).labeled(json!({"app": "web"})).with_priority(10);
        let state = prefilter(&p, &snap).unwrap();
        assert!(filter(&p, &state, &snap.nodes()[0]).is_err());
        let v = select_victims(&p, &state, &snap.nodes()[0], &DisruptionBudgets::default()).unwrap();
        assert_eq!(names(&v), vec!["hater"]);
    }

    #[test]
    fn select_victims_leaves_the_inputs_alone() {
        let snap = snapshot_of(
            vec![node("n", json!({"cpu": "2", "pods": "10"}))],
            vec![("n", cpu_pod("a", "1", 1)), ("n", cpu_pod("b", "1", 1))],
        );
        let p = cpu_pod("p", "2", 10);
        let state = prefilter(&p, &snap).unwrap();
        select_victims(&p, &state, &snap.nodes()[0], &DisruptionBudgets::default()).unwrap();
        assert_eq!(snap.nodes()[0].pod_count(), 2);
        assert_eq!(snap.nodes()[0].requested().milli_cpu, 2000);
    }

    #[test]
    fn reprieve_order_prefers_earlier_start_on_equal_priority() {
        let started = |name: &str, t: &str| cpu_pod(name, "1", 5).with_status(json!({"startTime": t}));
        let snap = snapshot_of(
            vec![node("n", json!({"cpu": "2", "pods": "10"}))],
            vec![("n", started("late", "2024-01-02T00:00:00Z")), ("n", started("early", "2024-01-01T00:00:00Z"))],
        );
        // Room for one: the earlier-started pod is kept.
        assert_eq!(victims_on(&cpu_pod("p", "1", 10), &snap), Ok(vec!["late".to_string()]));
    }

    #[test]
    fn select_victims_with_budgets_table() {
        let web = |name: &str, prio: i32| cpu_pod(name, "1", prio).labeled(json!({"app": "web"}));
        let existing = || vec![web("a", 10), web("b", 20), cpu_pod("c", "1", 30), cpu_pod("d", "1", 40)];
        let app_web = json!({"matchLabels": {"app": "web"}});
        // (name, preemptor cpu, budgets, expected victims, expected violations)
        type Case = (&'static str, &'static str, Vec<Arc<PodDisruptionBudget>>, Vec<&'static str>, usize);
        let table: Vec<Case> = vec![
            // As in select_victims_table: the two lowest go.
            ("no budgets", "2", vec![], vec!["b", "a"], 0),
            // a and b would violate, so they are spared first; c and d go instead.
            ("protected pods are spared first", "2", vec![pdb("default", app_web.clone(), 0, &[])], vec!["d", "c"], 0),
            // b (more important) uses the one allowed disruption; a violates and is spared
            // first, then d fits back: c and b go, without a violation.
            (
                "the budget covers the most important",
                "2",
                vec![pdb("default", app_web.clone(), 1, &[])],
                vec!["c", "b"],
                0,
            ),
            // Everything must go: both protected pods are counted.
            (
                "violations that cannot be avoided",
                "4",
                vec![pdb("default", app_web.clone(), 0, &[])],
                vec!["d", "c", "b", "a"],
                2,
            ),
            ("budgets of other namespaces", "2", vec![pdb("other", app_web.clone(), 0, &[])], vec!["b", "a"], 0),
        ];
        for (name, cpu, pdbs, expected, violations) in table {
            let snap = snapshot_of(
                vec![node("n", json!({"cpu": "4", "memory": "8Gi", "pods": "110"}))],
                existing().into_iter().map(|e| ("n", e)).collect(),
            );
            let p = cpu_pod("p", cpu, 100);
            let state = prefilter(&p, &snap).unwrap();
            let v = select_victims(&p, &state, &snap.nodes()[0], &DisruptionBudgets::new(&pdbs)).unwrap();
            assert_eq!(
                (names(&v), v.pdb_violations),
                (expected.iter().map(|s| s.to_string()).collect(), violations),
                "{name}"
            );
        }
    }

    #[test]
    fn enough_candidates_needs_one_without_violations() {
        let v = |n: usize| Victims { pods: vec![Arc::new(cpu_pod("a", "1", 1))], pdb_violations: n };
        assert!(!enough_preemption_candidates(&[(0, v(0))], 2));
        assert!(enough_preemption_candidates(&[(0, v(1)), (1, v(0))], 2));
        assert!(!enough_preemption_candidates(&[(0, v(1)), (1, v(2)), (2, v(1))], 2));
        assert!(enough_preemption_candidates(&[(0, v(1)), (1, v(2)), (2, v(0))], 2));
    }

    #[test]
    fn pick_preemption_node_table() {
        let v = |pods: Vec<Pod>| Victims { pods: pods.into_iter().map(Arc::new).collect(), pdb_violations: 0 };
        let violating = |pods: Vec<Pod>, n: usize| Victims { pdb_violations: n, ..v(pods) };
        let p = |name: &str, prio: i32| cpu_pod(name, "1", prio);
        let at = |name: &str, prio: i32, t: &str| p(name, prio).with_status(json!({"startTime": t}));
        let table: Vec<(&str, Candidates, Option<usize>)> = vec![
            ("none", vec![], None),
            ("no victims wins", vec![(0, v(vec![p("a", 1)])), (1, v(vec![]))], Some(1)),
            (
                "fewest budget violations before everything else",
                vec![
                    (0, violating(vec![p("a", 1)], 1)),
                    (1, violating(vec![p("b", 9), p("c", 9)], 2)),
                    (2, v(vec![p("d", 9), p("e", 9)])),
                ],
                Some(2),
            ),
            (
                "equal violations fall through to priority",
                vec![(0, violating(vec![p("a", 5)], 1)), (1, violating(vec![p("b", 3)], 1))],
                Some(1),
            ),
            (
                "lowest highest priority",
                vec![(0, v(vec![p("a", 5), p("b", 1)])), (1, v(vec![p("c", 3), p("d", 3), p("e", 3)]))],
                Some(1),
            ),
            (
                "then lowest priority sum",
                vec![(0, v(vec![p("a", 5), p("b", 4)])), (1, v(vec![p("c", 5), p("d", 1)]))],
                Some(1),
            ),
            // i32::MIN adds nothing to the offset sum, so only the count separates these.
            ("then fewest victims", vec![(0, v(vec![p("a", 5), p("b", i32::MIN)])), (1, v(vec![p("c", 5)]))], Some(1)),
            (
                "then latest start of the highest-priority victims",
                vec![
                    (0, v(vec![at("a", 5, "2024-01-02T00:00:00Z")])),
                    (1, v(vec![at("b", 5, "2024-01-03T00:00:00Z")])),
                    (2, v(vec![at("c", 5, "2024-01-01T00:00:00Z")])),
                ],
                Some(1),
            ),
            ("then the first", vec![(3, v(vec![p("a", 5)])), (4, v(vec![p("b", 5)]))], Some(3)),
        ];
        for (name, candidates, expected) in table {
            assert_eq!(pick_preemption_node(&candidates), expected, "{name}");
        }
    }

    #[test]
    fn eligibility_and_candidate_count() {
        assert_eq!(eligible_to_preempt(&pod("p", json!({"containers": []}))), Ok(()));
        assert_eq!(
            eligible_to_preempt(&pod("p", json!({"containers": [], "preemptionPolicy": "Never"}))),
            Err("not eligible due to preemptionPolicy=Never.")
        );
        assert_eq!(preemption_candidates_to_find(50), 50);
        assert_eq!(preemption_candidates_to_find(500), 100);
        assert_eq!(preemption_candidates_to_find(5000), 500);
    }
}
