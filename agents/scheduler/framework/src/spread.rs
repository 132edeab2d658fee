//! PodTopologySpread: `DoNotSchedule` constraints filter, `ScheduleAnyway` ones score.
//!
//! The counts of matching pods per topology domain are computed once per pod (PreFilter /
//! PreScore) from the snapshot's pod groups; the filter then compares one domain's count
//! with the global minimum.
//!
//! A pod without constraints of its own is scored with kube's system defaults
//! (`defaultingType: System`): `ScheduleAnyway` at maxSkew 3 by hostname and 5 by zone,
//! against the pods its Services and controller select (see `default_selector`). They never
//! filter, and unlike declared constraints they also score nodes lacking a topology key.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Toleration};

use super::nodeinfo::NodeInfo;
use super::selector::{self, LabelSelector, RequiredNodeAffinity, labels_of_node, labels_of_pod};
use super::snapshot::{Snapshot, TopologyIndex, namespace_of};
use super::status::{Failure, Reason};
use super::taints;

pub const PLUGIN: &str = "PodTopologySpread";

const HOSTNAME: &str = "kubernetes.io/hostname";
const ZONE: &str = "topology.kubernetes.io/zone";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Constraint {
    max_skew: i64,
    topology_key: String,
    selector: LabelSelector,
    min_domains: usize,
    /// `nodeAffinityPolicy: Honor` (the default): only nodes matching the pod's node
    /// selector and required node affinity count.
    honor_node_affinity: bool,
    /// `nodeTaintsPolicy: Honor` (default Ignore): nodes with taints the pod does not
    /// tolerate do not count.
    honor_taints: bool,
}

/// The pod's constraints with `whenUnsatisfiable == action`.
fn constraints(pod: &Pod, action: &str) -> selector::Result<Vec<Constraint>> {
    let Some(spec) = &pod.spec else { return Ok(Vec::new()) };
    let own = labels_of_pod(pod);
    let mut out = Vec::new();
    for c in spec.topology_spread_constraints.iter().flatten().filter(|c| c.when_unsatisfiable == action) {
        let mut selector = LabelSelector::compile(c.label_selector.as_ref())?;
        // matchLabelKeys: the pod's own values of these keys narrow the selector (so a
        // rolling update spreads each revision on its own).
        for key in c.match_label_keys.iter().flatten() {
            if let Some(v) = own.get(key) {
                if selector == LabelSelector::Nothing {
                    selector = LabelSelector::everything();
                }
                selector.require_equal(key, v);
            }
        }
        out.push(Constraint {
            max_skew: c.max_skew.into(),
            topology_key: c.topology_key.clone(),
            selector,
            min_domains: c.min_domains.map_or(1, |m| usize::try_from(m).unwrap_or(1)),
            honor_node_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
        });
    }
    Ok(out)
}

/// kube's `systemDefaultConstraints`, all with the pod's default selector.
fn system_default_constraints(selector: LabelSelector) -> Vec<Constraint> {
    let constraint = |key: &str, max_skew| Constraint {
        max_skew,
        topology_key: key.to_owned(),
        selector: selector.clone(),
        min_domains: 1,
        honor_node_affinity: true,
        honor_taints: false,
    };
    vec![constraint(HOSTNAME, 3), constraint(ZONE, 5)]
}

/// What Score uses: the pod's own `ScheduleAnyway` constraints, or if it declares no
/// constraint at all, the system defaults. The flag is kube's `requireAllTopologies`:
/// whether a node must have every topology key to be scored, which holds only for
/// declared constraints, so that nodes without a zone label are still spread by hostname.
fn soft_constraints(pod: &Pod, snapshot: &Snapshot) -> Option<(Vec<Constraint>, bool)> {
    let declared =
        pod.spec.as_ref().and_then(|s| s.topology_spread_constraints.as_ref()).is_some_and(|c| !c.is_empty());
    if declared {
        let own = constraints(pod, "ScheduleAnyway").ok()?;
        return (!own.is_empty()).then_some((own, true));
    }
    Some((system_default_constraints(snapshot.default_spread_selector(pod)?), false))
}

/// Per-node answers to the node inclusion policies, computed at most once per node.
struct Inclusion<'a> {
    affinity: &'a RequiredNodeAffinity,
    tolerations: &'a [Toleration],
    affinity_ok: Vec<Option<bool>>,
    taints_ok: Vec<Option<bool>>,
}

impl<'a> Inclusion<'a> {
    fn new(affinity: &'a RequiredNodeAffinity, tolerations: &'a [Toleration], nodes: usize) -> Self {
        Inclusion { affinity, tolerations, affinity_ok: vec![None; nodes], taints_ok: vec![None; nodes] }
    }

    fn includes(&mut self, c: &Constraint, index: usize, node: &Node) -> bool {
        if c.honor_node_affinity
            && !*self.affinity_ok[index].get_or_insert_with(|| self.affinity.is_empty() || self.affinity.matches(node))
        {
            return false;
        }
        if c.honor_taints
            && !*self.taints_ok[index]
                .get_or_insert_with(|| taints::first_untolerated(taints::taints_of(node), self.tolerations).is_none())
        {
            return false;
        }
        true
    }
}

fn includes_uncached(c: &Constraint, node: &Node, affinity: &RequiredNodeAffinity, tolerations: &[Toleration]) -> bool {
    (!c.honor_node_affinity || affinity.is_empty() || affinity.matches(node))
        && (!c.honor_taints || taints::first_untolerated(taints::taints_of(node), tolerations).is_none())
}

/// Each constraint's topology key, interned by the snapshot. `None`: no node has the key.
type Domains = Vec<Option<Arc<TopologyIndex>>>;

fn domains(constraints: &[Constraint], snapshot: &Snapshot) -> Domains {
    constraints.iter().map(|c| snapshot.topology(&c.topology_key).cloned()).collect()
}

/// The node's domain (value id) for every constraint, or `None` if it lacks any key.
fn node_domains(domains: &Domains, node: usize, out: &mut Vec<usize>) -> bool {
    out.clear();
    for d in domains {
        match d.as_ref().and_then(|d| d.of_node(node)) {
            Some(id) => out.push(id),
            None => return false,
        }
    }
    true
}

/// The two smallest domain counts of a constraint (kube's criticalPaths): enough to keep
/// the global minimum right while preemption removes and re-adds pods on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CriticalPaths([(Option<usize>, i64); 2]);

impl Default for CriticalPaths {
    fn default() -> Self {
        CriticalPaths([(None, i64::MAX), (None, i64::MAX)])
    }
}

impl CriticalPaths {
    fn update(&mut self, domain: usize, num: i64) {
        let p = &mut self.0;
        let existing = (0..2).find(|&i| p[i].0 == Some(domain));
        match existing {
            Some(i) => {
                p[i].1 = num;
                if p[0].1 > p[1].1 {
                    p.swap(0, 1);
                }
            }
            None if num < p[0].1 => {
                p[1] = p[0];
                p[0] = (Some(domain), num);
            }
            None if num < p[1].1 => p[1] = (Some(domain), num),
            None => {}
        }
    }
}

/// What PodTopologySpread's PreFilter computed for one pod.
#[derive(Debug, Clone)]
pub(crate) struct SpreadState {
    constraints: Arc<Vec<Constraint>>,
    namespace: Arc<str>,
    domains: Domains,
    /// Per constraint and domain: matching pods on eligible nodes.
    counts: Vec<Vec<i64>>,
    /// Per constraint and domain: some eligible node is in it.
    eligible: Vec<Vec<bool>>,
    eligible_domains: Vec<usize>,
    paths: Vec<CriticalPaths>,
    /// Per constraint: whether the pod itself matches the selector.
    self_match: Vec<bool>,
}

/// PreFilter. `Ok(None)` when the pod has no `DoNotSchedule` constraint.
pub(crate) fn prefilter(
    pod: &Pod,
    affinity: &RequiredNodeAffinity,
    snapshot: &Snapshot,
) -> selector::Result<Option<SpreadState>> {
    let constraints = constraints(pod, "DoNotSchedule")?;
    if constraints.is_empty() {
        return Ok(None);
    }
    let k = constraints.len();
    let domains = domains(&constraints, snapshot);
    let mut counts: Vec<Vec<i64>> = domains.iter().map(|d| vec![0; d.as_ref().map_or(0, |d| d.len())]).collect();
    let mut eligible: Vec<Vec<bool>> = counts.iter().map(|c| vec![false; c.len()]).collect();

    // Which (node, constraint) pairs count: the node has every key and passes the
    // constraint's inclusion policies.
    let mut inclusion = Inclusion::new(affinity, taints::tolerations_of(pod), snapshot.len());
    let mut node_eligible = vec![false; snapshot.len() * k];
    let mut ids = Vec::with_capacity(k);
    for (index, info) in snapshot.nodes().iter().enumerate() {
        if !node_domains(&domains, index, &mut ids) {
            continue;
        }
        for (i, c) in constraints.iter().enumerate() {
            if inclusion.includes(c, index, info.node()) {
                node_eligible[index * k + i] = true;
                eligible[i][ids[i]] = true;
            }
        }
    }

    let namespace = namespace_of(pod);
    for group in snapshot.groups() {
        // Terminating pods are about to free their domain (kube #87621).
        if group.namespace != namespace || group.terminating {
            continue;
        }
        for (i, c) in constraints.iter().enumerate() {
            let Some(domain) = &domains[i] else { continue };
            if !c.selector.matches(&group.labels) {
                continue;
            }
            for (&node, &pods) in &group.placements {
                if node_eligible[node * k + i]
                    && let Some(id) = domain.of_node(node)
                {
                    counts[i][id] += i64::from(pods);
                }
            }
        }
    }

    let mut paths = vec![CriticalPaths::default(); k];
    let mut eligible_domains = vec![0; k];
    for i in 0..k {
        for (id, _) in eligible[i].iter().enumerate().filter(|(_, e)| **e) {
            eligible_domains[i] += 1;
            paths[i].update(id, counts[i][id]);
        }
    }
    let own = labels_of_pod(pod);
    let self_match = constraints.iter().map(|c| c.selector.matches(own)).collect();
    Ok(Some(SpreadState {
        constraints: Arc::new(constraints),
        namespace: namespace.into(),
        domains,
        counts,
        eligible,
        eligible_domains,
        paths,
        self_match,
    }))
}

/// Filter: `matching pods in the node's domain + 1 (if the pod matches) - global minimum
/// <= maxSkew` for every constraint; the minimum is 0 while fewer than `minDomains`
/// domains are eligible.
pub(crate) fn filter(state: &SpreadState, node: &NodeInfo) -> Result<(), Failure> {
    let labels = labels_of_node(node.node());
    for (i, c) in state.constraints.iter().enumerate() {
        let Some(value) = labels.get(&c.topology_key) else {
            return Err(Failure::unresolvable(PLUGIN, Reason::SpreadMissingLabel));
        };
        let min = if state.eligible_domains[i] < c.min_domains { 0 } else { state.paths[i].0[0].1 };
        let matching = state.domains[i].as_ref().and_then(|d| d.id(value)).map_or(0, |id| state.counts[i][id]);
        let skew = matching + i64::from(state.self_match[i]) - min;
        if skew > c.max_skew {
            return Err(Failure::resolvable(PLUGIN, Reason::SpreadConstraintsMismatch));
        }
    }
    Ok(())
}

impl SpreadState {
    /// PreFilter's AddPod/RemovePod for preemption.
    pub(crate) fn update(
        &mut self,
        pod: &Pod,
        node: &Node,
        affinity: &RequiredNodeAffinity,
        tolerations: &[Toleration],
        delta: i64,
    ) {
        if namespace_of(pod) != &*self.namespace {
            return;
        }
        let labels = labels_of_node(node);
        let ids: Option<Vec<usize>> = self
            .constraints
            .iter()
            .zip(&self.domains)
            .map(|(c, d)| d.as_ref().and_then(|d| d.id(labels.get(&c.topology_key)?)))
            .collect();
        let Some(ids) = ids else { return };
        let pod_labels = labels_of_pod(pod);
        for (i, c) in self.constraints.iter().enumerate() {
            if !c.selector.matches(pod_labels) || !includes_uncached(c, node, affinity, tolerations) {
                continue;
            }
            let id = ids[i];
            if !self.eligible[i][id] {
                self.eligible[i][id] = true;
                self.eligible_domains[i] += 1;
            }
            self.counts[i][id] += delta;
            self.paths[i].update(id, self.counts[i][id]);
        }
    }
}

/// Score (PreScore + Score + NormalizeScore) for `ScheduleAnyway` constraints, 0..=100 per
/// candidate. `None` when the pod has none (kube's Skip).
pub(crate) fn score(
    pod: &Pod,
    affinity: &RequiredNodeAffinity,
    snapshot: &Snapshot,
    candidates: &[usize],
) -> Option<Vec<i64>> {
    let (constraints, require_all) = soft_constraints(pod, snapshot)?;
    let nodes = snapshot.nodes();
    let domains = domains(&constraints, snapshot);
    let k = constraints.len();
    let hostname: Vec<bool> = constraints.iter().map(|c| c.topology_key == HOSTNAME).collect();
    let value_of = |i: usize, node: usize| domains[i].as_ref().and_then(|d| d.of_node(node));
    let has_all = |node: usize| (0..k).all(|i| value_of(i, node).is_some());
    // kube keys domains by the node's label value, "" for a node without the key: when
    // such nodes are scored at all they share one more domain, with any node whose value
    // really is "". It counts towards the domain count (the weight) and nothing else.
    let unlabelled: Vec<usize> =
        domains.iter().map(|d| d.as_ref().map_or(0, |d| d.id("").unwrap_or(d.len()))).collect();
    let domain_of = |i: usize, node: usize| value_of(i, node).unwrap_or(unlabelled[i]);

    // Candidates without every topology key are not scored when required. Domains come
    // from the scored candidates.
    let scored: Vec<bool> = candidates.iter().map(|&n| !require_all || has_all(n)).collect();
    let mut in_candidates: Vec<Vec<bool>> =
        domains.iter().map(|d| vec![false; d.as_ref().map_or(0, |d| d.len()) + 1]).collect();
    let mut sizes = vec![0usize; k];
    for (&n, _) in candidates.iter().zip(&scored).filter(|(_, s)| **s) {
        for i in 0..k {
            if hostname[i] {
                sizes[i] += 1;
                continue;
            }
            let id = domain_of(i, n);
            if !in_candidates[i][id] {
                in_candidates[i][id] = true;
                sizes[i] += 1;
            }
        }
    }
    let weights: Vec<f64> = sizes.iter().map(|&size| ((size + 2) as f64).ln()).collect();

    // Counts from every eligible node, only for domains some candidate is in.
    let namespace = namespace_of(pod);
    let mut inclusion = Inclusion::new(affinity, taints::tolerations_of(pod), nodes.len());
    let mut counts: Vec<Vec<i64>> = in_candidates.iter().map(|c| vec![0; c.len()]).collect();
    let mut per_node: Vec<Vec<i64>> = vec![Vec::new(); k];
    for group in snapshot.groups() {
        if group.namespace != namespace || group.terminating {
            continue;
        }
        for (i, c) in constraints.iter().enumerate() {
            if !c.selector.matches(&group.labels) {
                continue;
            }
            for (&n, &pods) in &group.placements {
                if hostname[i] {
                    // Per-node counts, as kube's Score counts the node's own pods.
                    let counts = &mut per_node[i];
                    if counts.is_empty() {
                        counts.resize(nodes.len(), 0);
                    }
                    counts[n] += i64::from(pods);
                    continue;
                }
                if require_all && !has_all(n) {
                    continue;
                }
                let id = domain_of(i, n);
                if in_candidates[i][id] && inclusion.includes(c, n, nodes[n].node()) {
                    counts[i][id] += i64::from(pods);
                }
            }
        }
    }

    let raw: Vec<Option<i64>> = candidates
        .iter()
        .zip(&scored)
        .map(|(&n, &scored)| {
            if !scored {
                return None;
            }
            let mut total = 0.0;
            for (i, c) in constraints.iter().enumerate() {
                // Only the keys the node has add to its score.
                let Some(id) = value_of(i, n) else { continue };
                let count = if hostname[i] { per_node[i].get(n).copied().unwrap_or(0) } else { counts[i][id] };
                // maxSkew - 1 waters down differences the constraint tolerates anyway.
                total += count as f64 * weights[i] + (c.max_skew - 1) as f64;
            }
            Some(total.round() as i64)
        })
        .collect();
    Some(normalize(&raw))
}

/// NormalizeScore: fewer matching pods score higher; unscored nodes get 0.
fn normalize(raw: &[Option<i64>]) -> Vec<i64> {
    let min = raw.iter().flatten().copied().min().unwrap_or(0);
    let max = raw.iter().flatten().copied().max().unwrap_or(0).max(0);
    raw.iter()
        .map(|s| match *s {
            None => 0,
            Some(_) if max == 0 => 100,
            Some(s) => 100 * (max + min - s) / max,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::default_selector::SpreadSource;
    use crate::testutil::{PodExt, labeled_node, labeled_pod, snapshot_of};
    use serde_json::json;

    /// (name, pod, existing pods by node, expected per node)
    type FilterCase = (&'static str, Pod, Vec<(&'static str, Pod)>, Vec<Result<(), Reason>>);
    /// (name, constraints, existing pods by node, candidates, expected scores)
    type ScoreCase = (&'static str, serde_json::Value, Vec<(&'static str, Pod)>, Vec<usize>, Option<Vec<i64>>);

    fn spread_pod(labels: serde_json::Value, constraints: serde_json::Value) -> Pod {
        labeled_pod("p", labels, json!({"containers": [], "topologySpreadConstraints": constraints}))
    }

    fn web(name: &str) -> Pod {
        labeled_pod(name, json!({"app": "web"}), json!({"containers": []}))
    }

    fn zone_constraint(max_skew: i32, extra: serde_json::Value) -> serde_json::Value {
        let mut c = json!({"maxSkew": max_skew, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "web"}}});
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(extra.clone());
        }
        c
    }

    /// n1, n2 in zone a; n3 in zone b; n4 in zone c (tainted, labelled gpu); n5 without zone.
    fn nodes() -> Vec<Node> {
        let mut tainted = labeled_node("n4", json!({"zone": "c", "gpu": "true"}));
        tainted.spec = serde_json::from_value(json!({"taints": [{"key": "gpu", "effect": "NoSchedule"}]})).unwrap();
        vec![
            labeled_node("n1", json!({"zone": "a"})),
            labeled_node("n2", json!({"zone": "a"})),
            labeled_node("n3", json!({"zone": "b"})),
            tainted,
            labeled_node("n5", json!({})),
        ]
    }

    fn run(pod: &Pod, existing: Vec<(&str, Pod)>) -> Vec<Result<(), Reason>> {
        let snap = snapshot_of(nodes(), existing);
        let affinity = RequiredNodeAffinity::of_pod(pod);
        let state = prefilter(pod, &affinity, &snap).unwrap();
        snap.nodes()
            .iter()
            .map(|n| match &state {
                None => Ok(()),
                Some(s) => filter(s, n).map_err(|f| f.reasons().next().cloned().unwrap()),
            })
            .collect()
    }

    #[test]
    fn filter_table() {
        use Reason::{SpreadConstraintsMismatch as Skew, SpreadMissingLabel as Missing};
        let table: Vec<FilterCase> = vec![
            (
                "no constraints",
                labeled_pod("p", json!({"app": "web"}), json!({"containers": []})),
                vec![],
                vec![Ok(()), Ok(()), Ok(()), Ok(()), Ok(())],
            ),
            (
                // a: 2, b: 0, c: 0 -> a would be 3 - 0 > 1.
                "maxSkew 1 by zone",
                spread_pod(json!({"app": "web"}), json!([zone_constraint(1, json!({}))])),
                vec![("n1", web("a")), ("n2", web("b"))],
                vec![Err(Skew), Err(Skew), Ok(()), Ok(()), Err(Missing)],
            ),
            (
                "maxSkew 2 tolerates one more",
                spread_pod(json!({"app": "web"}), json!([zone_constraint(2, json!({}))])),
                vec![("n1", web("a")), ("n3", web("b"))],
                vec![Ok(()), Ok(()), Ok(()), Ok(()), Err(Missing)],
            ),
            (
                // The pod does not match its own selector, so it adds nothing.
                "non-matching pod",
                spread_pod(json!({"app": "other"}), json!([zone_constraint(1, json!({}))])),
                vec![("n1", web("a"))],
                vec![Ok(()), Ok(()), Ok(()), Ok(()), Err(Missing)],
            ),
            (
                "pods of other namespaces and terminating pods do not count",
                spread_pod(json!({"app": "web"}), json!([zone_constraint(1, json!({}))])),
                vec![("n1", web("a").in_namespace("other")), ("n2", web("b").terminating())],
                vec![Ok(()), Ok(()), Ok(()), Ok(()), Err(Missing)],
            ),
            (
                // Honor (default) node affinity: only zone a and b count, b has 0, a has 1.
                "node affinity policy honor shrinks domains",
                labeled_pod(
                    "p",
                    json!({"app": "web"}),
                    json!({"containers": [],
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "c"]}]}]}}},
                    "topologySpreadConstraints": [zone_constraint(1, json!({}))]}),
                ),
                vec![("n1", web("a")), ("n4", web("b"))],
                // Eligible domains a (1) and c (1): min 1, every zone passes.
                vec![Ok(()), Ok(()), Ok(()), Ok(()), Err(Missing)],
            ),
            (
                "node affinity policy ignore counts every domain",
                labeled_pod(
                    "p",
                    json!({"app": "web"}),
                    json!({"containers": [],
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "c"]}]}]}}},
                    "topologySpreadConstraints": [zone_constraint(1, json!({"nodeAffinityPolicy": "Ignore"}))]}),
                ),
                vec![("n1", web("a")), ("n4", web("b"))],
                // Domain b (0) now counts: a and c would be at skew 2.
                vec![Err(Skew), Err(Skew), Ok(()), Err(Skew), Err(Missing)],
            ),
            (
                "taints policy honor drops the tainted domain",
                spread_pod(json!({"app": "web"}), json!([zone_constraint(1, json!({"nodeTaintsPolicy": "Honor"}))])),
                vec![("n1", web("a")), ("n3", web("b"))],
                // Domains a (1), b (1); c is out, so its 0 is not the minimum.
                vec![Ok(()), Ok(()), Ok(()), Ok(()), Err(Missing)],
            ),
            (
                "taints policy ignore keeps the tainted domain",
                spread_pod(json!({"app": "web"}), json!([zone_constraint(1, json!({}))])),
                vec![("n1", web("a")), ("n3", web("b"))],
                vec![Err(Skew), Err(Skew), Err(Skew), Ok(()), Err(Missing)],
            ),
            (
                // Three domains exist but minDomains is 4: the minimum is taken as 0.
                "minDomains above the domain count",
                spread_pod(json!({"app": "web"}), json!([zone_constraint(1, json!({"minDomains": 4}))])),
                vec![("n1", web("a")), ("n3", web("b")), ("n4", web("c"))],
                vec![Err(Skew), Err(Skew), Err(Skew), Err(Skew), Err(Missing)],
            ),
            (
                "minDomains met",
                spread_pod(json!({"app": "web"}), json!([zone_constraint(1, json!({"minDomains": 3}))])),
                vec![("n1", web("a")), ("n3", web("b")), ("n4", web("c"))],
                vec![Ok(()), Ok(()), Ok(()), Ok(()), Err(Missing)],
            ),
            (
                "hostname spreading",
                spread_pod(
                    json!({"app": "web"}),
                    json!([{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": {"app": "web"}}}]),
                ),
                vec![("n1", web("a")), ("n2", web("b")), ("n3", web("c")), ("n4", web("d"))],
                vec![Err(Skew), Err(Skew), Err(Skew), Err(Skew), Ok(())],
            ),
            (
                "ScheduleAnyway constraints do not filter",
                spread_pod(
                    json!({"app": "web"}),
                    json!([{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": {"app": "web"}}}]),
                ),
                vec![("n1", web("a")), ("n2", web("b"))],
                vec![Ok(()), Ok(()), Ok(()), Ok(()), Ok(())],
            ),
            (
                "matchLabelKeys narrows to the pod's revision",
                spread_pod(
                    json!({"app": "web", "rev": "2"}),
                    json!([zone_constraint(1, json!({"matchLabelKeys": ["rev"]}))]),
                ),
                vec![
                    ("n1", labeled_pod("a", json!({"app": "web", "rev": "1"}), json!({"containers": []}))),
                    ("n2", labeled_pod("b", json!({"app": "web", "rev": "1"}), json!({"containers": []}))),
                ],
                vec![Ok(()), Ok(()), Ok(()), Ok(()), Err(Missing)],
            ),
        ];
        for (name, pod, existing, expected) in table {
            assert_eq!(run(&pod, existing), expected, "{name}");
        }
    }

    #[test]
    fn skew_is_resolvable_missing_label_is_not() {
        let pod = spread_pod(json!({"app": "web"}), json!([zone_constraint(1, json!({}))]));
        let snap = snapshot_of(nodes(), vec![("n1", web("a")), ("n2", web("b"))]);
        let s = prefilter(&pod, &RequiredNodeAffinity::of_pod(&pod), &snap).unwrap().unwrap();
        assert!(filter(&s, &snap.nodes()[0]).unwrap_err().resolvable);
        assert!(!filter(&s, &snap.nodes()[4]).unwrap_err().resolvable);
    }

    #[test]
    fn update_moves_the_minimum() {
        let pod = spread_pod(json!({"app": "web"}), json!([zone_constraint(1, json!({"nodeTaintsPolicy": "Honor"}))]));
        let snap = snapshot_of(nodes(), vec![("n1", web("a")), ("n3", web("b")), ("n3", web("c"))]);
        let affinity = RequiredNodeAffinity::of_pod(&pod);
        let mut s = prefilter(&pod, &affinity, &snap).unwrap().unwrap();
        // a: 1, b: 2: only zone a fits.
        assert!(filter(&s, &snap.nodes()[0]).is_ok());
        assert!(filter(&s, &snap.nodes()[2]).is_err());
        let n3 = snap.nodes()[2].node();
        s.update(&web("b"), n3, &affinity, &[], -1);
        s.update(&web("c"), n3, &affinity, &[], -1);
        // a: 1, b: 0: zone b fits, zone a no longer.
        assert!(filter(&s, &snap.nodes()[2]).is_ok());
        assert!(filter(&s, &snap.nodes()[0]).is_err());
        s.update(&web("b"), n3, &affinity, &[], 1);
        assert!(filter(&s, &snap.nodes()[0]).is_ok());
    }

    #[test]
    fn critical_paths_keep_the_two_smallest() {
        let mut p = CriticalPaths::default();
        for (v, n) in [(0, 3), (1, 1), (2, 2), (3, 5)] {
            p.update(v, n);
        }
        assert_eq!(p.0, [(Some(1), 1), (Some(2), 2)]);
        p.update(1, 4);
        assert_eq!(p.0, [(Some(2), 2), (Some(1), 4)]);
    }

    fn soft(key: &str, max_skew: i32) -> serde_json::Value {
        json!({"maxSkew": max_skew, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app": "web"}}})
    }

    #[test]
    fn score_table() {
        let all = [0, 1, 2, 3, 4];
        // (name, constraints, existing, candidates, expected)
        let table: Vec<ScoreCase> = vec![
            ("no soft constraints", json!([]), vec![], all.to_vec(), None),
            (
                // Domains a, b, c: weight ln(5); counts a 2, b 1, c 0. Raw: a 3, b 2, c 0
                // (rounded 3.22 and 1.61); n5 has no zone and is not scored.
                "zone",
                json!([soft("zone", 1)]),
                vec![("n1", web("a")), ("n2", web("b")), ("n3", web("c"))],
                all.to_vec(),
                Some(vec![0, 0, 33, 100, 0]),
            ),
            (
                // Hostname: 5 scored nodes, weight ln(7) ~ 1.95; counts 2, 0, 1, 0, 0.
                // Raw 4, 0, 2, 0, 0 -> 100 * (4 + 0 - s) / 4.
                "hostname",
                json!([soft("kubernetes.io/hostname", 1)]),
                vec![("n1", web("a")), ("n1", web("b")), ("n3", web("c"))],
                all.to_vec(),
                Some(vec![0, 100, 50, 100, 100]),
            ),
            (
                // Only candidates define domains: zone b is the only one; its count is 1.
                // maxSkew 3 adds 2 to every raw score: max 4 = min, all 100.
                "domains from candidates only",
                json!([soft("zone", 3)]),
                vec![("n1", web("a")), ("n3", web("c"))],
                vec![2],
                Some(vec![100]),
            ),
            (
                "no matching pods: every scored node gets 100",
                json!([soft("zone", 1)]),
                vec![],
                all.to_vec(),
                Some(vec![100, 100, 100, 100, 0]),
            ),
        ];
        for (name, constraints, existing, candidates, expected) in table {
            let pod = spread_pod(json!({"app": "web"}), constraints);
            let snap = snapshot_of(nodes(), existing);
            let got = score(&pod, &RequiredNodeAffinity::of_pod(&pod), &snap, &candidates);
            assert_eq!(got, expected, "{name}");
        }
    }

    /// n1, n2 in zone a; n3 in zone b; n4 without a zone. All have a hostname.
    fn zoned_nodes() -> Vec<Node> {
        let zone = |z: &str| json!({"topology.kubernetes.io/zone": z});
        vec![
            labeled_node("n1", zone("a")),
            labeled_node("n2", zone("a")),
            labeled_node("n3", zone("b")),
            labeled_node("n4", json!({})),
        ]
    }

    fn service(selector: serde_json::Value) -> SpreadSource {
        let s: k8s_openapi::api::core::v1::Service = serde_json::from_value(
            json!({"metadata": {"name": "svc", "namespace": "default"}, "spec": {"selector": selector}}),
        )
        .unwrap();
        SpreadSource::from(&s)
    }

    #[test]
    fn default_constraints_score_table() {
        let all = [0, 1, 2, 3];
        let plain = |labels: serde_json::Value| labeled_pod("p", labels, json!({"containers": []}));
        let mut owned = plain(json!({"app": "web"}));
        owned.metadata.owner_references = Some(
            serde_json::from_value(
                json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "1", "controller": true}]),
            )
            .unwrap(),
        );
        let rs: k8s_openapi::api::apps::v1::ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "rs", "namespace": "default"}, "spec": {"selector": {"matchLabels": {"app": "web"}}}}))
        .unwrap();
        let spread = vec![("n1", web("a")), ("n1", web("b")), ("n3", web("c"))];
        // (name, sources, pod, existing, candidates, expected)
        type Case = (&'static str, Vec<SpreadSource>, Pod, Vec<(&'static str, Pod)>, Vec<usize>, Option<Vec<i64>>);
        let table: Vec<Case> = vec![
            (
                // Hostname: 4 scored nodes, weight ln(6); counts 2, 0, 1, 0; + maxSkew 3 - 1.
                // Zone: domains a, b and the unlabelled n4, weight ln(5); counts a 2, b 1;
                // + maxSkew 5 - 1; n4 has no zone and gets the hostname part only.
                // Raw 12.8, 9.2, 9.4, 2 -> 13, 9, 9, 2 -> 100 * (15 - s) / 13.
                "a Service's pods spread by hostname and zone",
                vec![service(json!({"app": "web"}))],
                plain(json!({"app": "web"})),
                spread.clone(),
                all.to_vec(),
                Some(vec![15, 46, 46, 100]),
            ),
            (
                "the controlling ReplicaSet's pods",
                vec![SpreadSource::from(&rs)],
                owned,
                spread.clone(),
                all.to_vec(),
                Some(vec![15, 46, 46, 100]),
            ),
            (
                // Only other namespaces' and unselected pods: raw 6 everywhere but n4 (2).
                "pods the selector does not select do not count",
                vec![service(json!({"app": "web"}))],
                plain(json!({"app": "web"})),
                vec![
                    ("n1", web("a").in_namespace("other")),
                    ("n2", labeled_pod("db", json!({"app": "db"}), json!({"containers": []}))),
                ],
                all.to_vec(),
                Some(vec![33, 33, 33, 100]),
            ),
            (
                "no Service or controller selects the pod",
                vec![service(json!({"app": "db"}))],
                plain(json!({"app": "web"})),
                spread.clone(),
                all.to_vec(),
                None,
            ),
            (
                // The pod's own constraint replaces the defaults, and n4 without the key is
                // not scored.
                "declared constraints replace the defaults",
                vec![service(json!({"app": "web"}))],
                spread_pod(json!({"app": "web"}), json!([soft("topology.kubernetes.io/zone", 1)])),
                spread.clone(),
                all.to_vec(),
                // Domains a, b: weight ln(4); raw a round(2 * 1.386) = 3, b 1 -> 100 * (4 - s) / 3.
                Some(vec![33, 33, 100, 0]),
            ),
            (
                // Even one that does not score: the defaults do not apply.
                "a DoNotSchedule constraint alone also replaces them",
                vec![service(json!({"app": "web"}))],
                spread_pod(json!({"app": "web"}), json!([zone_constraint(1, json!({}))])),
                spread.clone(),
                all.to_vec(),
                None,
            ),
        ];
        for (name, sources, pod, existing, candidates, expected) in table {
            let mut snap = snapshot_of(zoned_nodes(), existing);
            for source in sources {
                snap.upsert_spread_source(source);
            }
            let got = score(&pod, &RequiredNodeAffinity::of_pod(&pod), &snap, &candidates);
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn default_constraints_do_not_filter() {
        let mut snap = snapshot_of(zoned_nodes(), vec![("n1", web("a")), ("n1", web("b"))]);
        snap.upsert_spread_source(service(json!({"app": "web"})));
        let pod = labeled_pod("p", json!({"app": "web"}), json!({"containers": []}));
        assert!(prefilter(&pod, &RequiredNodeAffinity::of_pod(&pod), &snap).unwrap().is_none());
    }
}
