//! InterPodAffinity: required pod affinity and anti-affinity (filter) and the preferred
//! terms plus existing pods' terms (score).
//!
//! As in kube-scheduler, the cluster-wide part is counted once per pod: how many existing
//! pods match the pod's terms in each topology domain, and in which domains existing pods'
//! anti-affinity rejects the pod. The filter then only looks up the node's domains.
//! Counting goes through the snapshot's pod groups (pods with equal namespace, labels and
//! affinity), so a selector is evaluated once per group rather than once per pod.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm, WeightedPodAffinityTerm};

use super::nodeinfo::{NodeInfo, PodInfo};
use super::selector::{self, LabelSelector, Labels, labels_of_node, labels_of_pod};
use super::snapshot::{PodGroup, Snapshot, namespace_of};
use super::status::{Failure, Reason};

pub const PLUGIN: &str = "InterPodAffinity";

/// Weight of an existing pod's required affinity term matching the incoming pod, in the
/// score (`hardPodAffinityWeight`, default 1).
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
enum NamespaceSelector {
    Nothing,
    Everything,
    Labels(LabelSelector),
}

/// A compiled `PodAffinityTerm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AffinityTerm {
    namespaces: Vec<String>,
    namespace_selector: NamespaceSelector,
    selector: LabelSelector,
    topology_key: String,
}

impl AffinityTerm {
    fn compile(owner: &Pod, term: &PodAffinityTerm) -> selector::Result<Self> {
        let mut selector = LabelSelector::compile(term.label_selector.as_ref())?;
        // The API server merges matchLabelKeys/mismatchLabelKeys into the selector when it
        // admits the pod; doing it here as well is idempotent and covers an API that
        // does not.
        if term.label_selector.is_some() {
            let own = labels_of_pod(owner);
            for key in term.match_label_keys.iter().flatten() {
                if let Some(v) = own.get(key) {
                    selector.require_equal(key, v);
                }
            }
            for key in term.mismatch_label_keys.iter().flatten() {
                if let Some(v) = own.get(key) {
                    selector.require_not_equal(key, v);
                }
            }
        }
        let namespace_selector = match term.namespace_selector.as_ref() {
            None => NamespaceSelector::Nothing,
            Some(s) => match LabelSelector::compile(Some(s))? {
                s if s.is_everything() => NamespaceSelector::Everything,
                s => NamespaceSelector::Labels(s),
            },
        };
        let mut namespaces = term.namespaces.clone().unwrap_or_default();
        // Neither namespaces nor a namespace selector: the owner's own namespace.
        if namespaces.is_empty() && term.namespace_selector.is_none() {
            namespaces.push(namespace_of(owner).to_owned());
        }
        Ok(AffinityTerm { namespaces, namespace_selector, selector, topology_key: term.topology_key.clone() })
    }

    /// Whether a pod in `namespace` with `labels` matches; `namespace_labels` are that
    /// namespace's labels, needed only while a namespace selector is unresolved.
    pub(crate) fn matches(&self, namespace: &str, labels: &Labels, namespace_labels: Option<&Labels>) -> bool {
        let in_namespace = self.namespaces.iter().any(|n| n == namespace)
            || match &self.namespace_selector {
                NamespaceSelector::Nothing => false,
                NamespaceSelector::Everything => true,
                NamespaceSelector::Labels(s) => namespace_labels.is_some_and(|l| s.matches(l)),
            };
        in_namespace && self.selector.matches(labels)
    }

    fn matches_pod(&self, pod: &Pod, namespace_labels: Option<&Labels>) -> bool {
        self.matches(namespace_of(pod), labels_of_pod(pod), namespace_labels)
    }

    /// Resolves a namespace selector into namespace names from the snapshot, as kube's
    /// `mergeAffinityTermNamespacesIfNotEmpty` does for the incoming pod's terms.
    fn resolve_namespaces(&mut self, snapshot: &Snapshot) {
        if let NamespaceSelector::Labels(s) = &self.namespace_selector {
            for (name, labels) in snapshot.namespaces() {
                if s.matches(labels) && !self.namespaces.iter().any(|n| n == name) {
                    self.namespaces.push(name.to_owned());
                }
            }
            self.namespace_selector = NamespaceSelector::Nothing;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WeightedTerm {
    term: AffinityTerm,
    weight: i64,
}

/// A pod's compiled pod affinity and anti-affinity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodAffinityTerms {
    required_affinity: Vec<AffinityTerm>,
    required_anti_affinity: Vec<AffinityTerm>,
    preferred_affinity: Vec<WeightedTerm>,
    preferred_anti_affinity: Vec<WeightedTerm>,
}

impl PodAffinityTerms {
    fn compile(pod: &Pod) -> selector::Result<Option<Self>> {
        let Some(affinity) = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()) else { return Ok(None) };
        let required = |terms: Option<&Vec<PodAffinityTerm>>| -> selector::Result<Vec<AffinityTerm>> {
            terms.into_iter().flatten().map(|t| AffinityTerm::compile(pod, t)).collect()
        };
        let preferred = |terms: Option<&Vec<WeightedPodAffinityTerm>>| -> selector::Result<Vec<WeightedTerm>> {
            terms
                .into_iter()
                .flatten()
                .map(|t| {
                    Ok(WeightedTerm {
                        term: AffinityTerm::compile(pod, &t.pod_affinity_term)?,
                        weight: t.weight.into(),
                    })
                })
                .collect()
        };
        let aff = affinity.pod_affinity.as_ref();
        let anti = affinity.pod_anti_affinity.as_ref();
        let terms = PodAffinityTerms {
            required_affinity: required(
                aff.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref()),
            )?,
            required_anti_affinity: required(
                anti.and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref()),
            )?,
            preferred_affinity: preferred(
                aff.and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref()),
            )?,
            preferred_anti_affinity: preferred(
                anti.and_then(|a| a.preferred_during_scheduling_ignored_during_execution.as_ref()),
            )?,
        };
        Ok((!terms.is_empty()).then_some(terms))
    }

    /// Terms of a pod already on a node. A pod whose terms do not compile is kept without
    /// them: it was admitted, and rejecting the node would not fix its spec.
    pub(crate) fn of_existing_pod(pod: &Pod) -> Option<Self> {
        Self::compile(pod).ok().flatten()
    }

    fn is_empty(&self) -> bool {
        self.required_affinity.is_empty()
            && self.required_anti_affinity.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti_affinity.is_empty()
    }

    pub(crate) fn has_required_anti_affinity(&self) -> bool {
        !self.required_anti_affinity.is_empty()
    }
}

/// Matching pod counts per topology key and value; zero entries are removed so that
/// "empty" means "no pod matches anywhere" (the first-pod rule relies on it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TopologyCounts(HashMap<String, HashMap<String, i64>>);

impl TopologyCounts {
    fn add(&mut self, key: &str, value: &str, delta: i64) {
        // Look up before inserting: this runs once per placement, and `entry` would
        // allocate both strings every time.
        if !self.0.contains_key(key) {
            self.0.insert(key.to_owned(), HashMap::new());
        }
        let Some(values) = self.0.get_mut(key) else { return };
        match values.get_mut(value) {
            Some(slot) => *slot += delta,
            None => {
                values.insert(value.to_owned(), delta);
            }
        }
        if values.get(value) == Some(&0) {
            values.remove(value);
        }
        if values.is_empty() {
            self.0.remove(key);
        }
    }

    fn add_on_node(&mut self, key: &str, node_labels: &Labels, delta: i64) {
        if let Some(value) = node_labels.get(key) {
            self.add(key, value, delta);
        }
    }

    fn get(&self, key: &str, value: &str) -> i64 {
        self.0.get(key).and_then(|v| v.get(value)).copied().unwrap_or(0)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug)]
struct Incoming {
    namespace: String,
    labels: Labels,
    namespace_labels: Option<Labels>,
    required_affinity: Vec<AffinityTerm>,
    required_anti_affinity: Vec<AffinityTerm>,
    /// The pod matches all its own required affinity terms (first pod of a group).
    matches_own_affinity: bool,
}

/// What InterPodAffinity's PreFilter computed for one pod.
#[derive(Debug, Clone)]
pub(crate) struct AffinityState {
    incoming: Arc<Incoming>,
    affinity_counts: TopologyCounts,
    anti_affinity_counts: TopologyCounts,
    existing_anti_affinity_counts: TopologyCounts,
}

/// PreFilter. `Ok(None)`: nothing to check (kube's Skip), the filter passes every node.
pub(crate) fn prefilter(pod: &Pod, snapshot: &Snapshot) -> selector::Result<Option<AffinityState>> {
    let mut terms = PodAffinityTerms::compile(pod)?.unwrap_or_default();
    let namespace = namespace_of(pod);
    let labels = labels_of_pod(pod);
    let namespace_labels = snapshot.namespace_labels(namespace);

    let mut existing = TopologyCounts::default();
    for group in snapshot.groups_with_required_anti_affinity() {
        let Some(group_terms) = &group.affinity else { continue };
        for term in &group_terms.required_anti_affinity {
            if term.matches(namespace, labels, namespace_labels) {
                add_placements(&mut existing, snapshot, group, &term.topology_key);
            }
        }
    }

    for t in terms.required_affinity.iter_mut().chain(terms.required_anti_affinity.iter_mut()) {
        t.resolve_namespaces(snapshot);
    }
    let mut affinity_counts = TopologyCounts::default();
    let mut anti_affinity_counts = TopologyCounts::default();
    if !terms.required_affinity.is_empty() || !terms.required_anti_affinity.is_empty() {
        for group in snapshot.groups() {
            let all_match = !terms.required_affinity.is_empty()
                && terms.required_affinity.iter().all(|t| t.matches(&group.namespace, &group.labels, None));
            if all_match {
                for t in &terms.required_affinity {
                    add_placements(&mut affinity_counts, snapshot, group, &t.topology_key);
                }
            }
            for t in &terms.required_anti_affinity {
                if t.matches(&group.namespace, &group.labels, None) {
                    add_placements(&mut anti_affinity_counts, snapshot, group, &t.topology_key);
                }
            }
        }
    }

    if existing.is_empty() && terms.required_affinity.is_empty() && terms.required_anti_affinity.is_empty() {
        return Ok(None);
    }
    let matches_own_affinity = !terms.required_affinity.is_empty()
        && terms.required_affinity.iter().all(|t| t.matches(namespace, labels, None));
    Ok(Some(AffinityState {
        incoming: Arc::new(Incoming {
            namespace: namespace.to_owned(),
            labels: labels.clone(),
            namespace_labels: namespace_labels.cloned(),
            required_affinity: terms.required_affinity,
            required_anti_affinity: terms.required_anti_affinity,
            matches_own_affinity,
        }),
        affinity_counts,
        anti_affinity_counts,
        existing_anti_affinity_counts: existing,
    }))
}

fn add_placements(counts: &mut TopologyCounts, snapshot: &Snapshot, group: &PodGroup, key: &str) {
    for (&node, &pods) in &group.placements {
        counts.add_on_node(key, snapshot.node_labels(node), i64::from(pods));
    }
}

/// Filter: only lookups of the node's topology values in the PreFilter counts.
pub(crate) fn filter(state: &AffinityState, node: &NodeInfo) -> Result<(), Failure> {
    let labels = labels_of_node(node.node());
    let incoming = &state.incoming;

    let mut pods_exist = true;
    for term in &incoming.required_affinity {
        match labels.get(&term.topology_key) {
            Some(value) if state.affinity_counts.get(&term.topology_key, value) <= 0 => pods_exist = false,
            Some(_) => {}
            // Every topology key of the pod's affinity must exist on the node.
            None => return Err(Failure::unresolvable(PLUGIN, Reason::PodAffinityMismatch)),
        }
    }
    // The first pod of a group that has affinity to itself may go anywhere, or it and its
    // peers would stay pending for ever.
    let first_of_group = state.affinity_counts.is_empty() && incoming.matches_own_affinity;
    if !(pods_exist || first_of_group) {
        return Err(Failure::unresolvable(PLUGIN, Reason::PodAffinityMismatch));
    }

    if !state.anti_affinity_counts.is_empty() {
        for term in &incoming.required_anti_affinity {
            if labels.get(&term.topology_key).is_some_and(|v| state.anti_affinity_counts.get(&term.topology_key, v) > 0)
            {
                return Err(Failure::resolvable(PLUGIN, Reason::PodAntiAffinityMismatch));
            }
        }
    }

    for (key, values) in &state.existing_anti_affinity_counts.0 {
        if labels.get(key).and_then(|v| values.get(v)).is_some_and(|&n| n > 0) {
            return Err(Failure::resolvable(PLUGIN, Reason::ExistingPodsAntiAffinityMismatch));
        }
    }
    Ok(())
}

impl AffinityState {
    /// PreFilter's AddPod/RemovePod: keeps the counts right while preemption takes pods
    /// off `node` and puts them back.
    pub(crate) fn update(&mut self, pod: &PodInfo, node: &Node, delta: i64) {
        let labels = labels_of_node(node);
        let incoming = &self.incoming;
        if let Some(terms) = &pod.affinity {
            for term in &terms.required_anti_affinity {
                if term.matches(&incoming.namespace, &incoming.labels, incoming.namespace_labels.as_ref()) {
                    self.existing_anti_affinity_counts.add_on_node(&term.topology_key, labels, delta);
                }
            }
        }
        if !incoming.required_affinity.is_empty()
            && incoming.required_affinity.iter().all(|t| t.matches_pod(&pod.pod, None))
        {
            for term in &incoming.required_affinity {
                self.affinity_counts.add_on_node(&term.topology_key, labels, delta);
            }
        }
        for term in &incoming.required_anti_affinity {
            if term.matches_pod(&pod.pod, None) {
                self.anti_affinity_counts.add_on_node(&term.topology_key, labels, delta);
            }
        }
    }
}

/// Score: per topology domain, the sum of the weights of matching preferred terms (the
/// pod's against existing pods, existing pods' against the pod, existing pods' required
/// affinity with weight 1). `None` when no term applies anywhere (kube's Skip).
pub(crate) fn prescore(pod: &Pod, snapshot: &Snapshot) -> Option<AffinityScorer> {
    let mut terms = PodAffinityTerms::compile(pod).ok().flatten().unwrap_or_default();
    for wt in terms.preferred_affinity.iter_mut().chain(terms.preferred_anti_affinity.iter_mut()) {
        wt.term.resolve_namespaces(snapshot);
    }
    let has_constraints = !terms.preferred_affinity.is_empty() || !terms.preferred_anti_affinity.is_empty();
    let namespace = namespace_of(pod);
    let labels = labels_of_pod(pod);
    let namespace_labels = snapshot.namespace_labels(namespace);

    let mut scores = TopologyCounts::default();
    let mut any = false;
    let mut contributions: Vec<(&str, i64)> = Vec::new();
    // Unless the pod has preferred terms, only groups with affinity can contribute.
    let groups: Box<dyn Iterator<Item = &PodGroup>> =
        if has_constraints { Box::new(snapshot.groups()) } else { Box::new(snapshot.groups_with_affinity()) };
    for group in groups {
        contributions.clear();
        for wt in &terms.preferred_affinity {
            if wt.term.matches(&group.namespace, &group.labels, None) {
                contributions.push((&wt.term.topology_key, wt.weight));
            }
        }
        for wt in &terms.preferred_anti_affinity {
            if wt.term.matches(&group.namespace, &group.labels, None) {
                contributions.push((&wt.term.topology_key, -wt.weight));
            }
        }
        if let Some(existing) = &group.affinity {
            for term in &existing.required_affinity {
                if term.matches(namespace, labels, namespace_labels) {
                    contributions.push((&term.topology_key, HARD_POD_AFFINITY_WEIGHT));
                }
            }
            for wt in &existing.preferred_affinity {
                if wt.term.matches(namespace, labels, namespace_labels) {
                    contributions.push((&wt.term.topology_key, wt.weight));
                }
            }
            for wt in &existing.preferred_anti_affinity {
                if wt.term.matches(namespace, labels, namespace_labels) {
                    contributions.push((&wt.term.topology_key, -wt.weight));
                }
            }
        }
        for (&node, &pods) in &group.placements {
            let node_labels = snapshot.node_labels(node);
            for &(key, weight) in &contributions {
                if let Some(value) = node_labels.get(key) {
                    any = true;
                    // A zero sum still marks the domain as scored, as in kube.
                    let values = match scores.0.get_mut(key) {
                        Some(v) => v,
                        None => scores.0.entry(key.to_owned()).or_default(),
                    };
                    match values.get_mut(value) {
                        Some(slot) => *slot += weight * i64::from(pods),
                        None => {
                            values.insert(value.clone(), weight * i64::from(pods));
                        }
                    }
                }
            }
        }
    }
    any.then_some(AffinityScorer { scores })
}

#[derive(Debug)]
pub(crate) struct AffinityScorer {
    scores: TopologyCounts,
}

impl AffinityScorer {
    /// The node's raw score: the sums of the domains it belongs to.
    pub(crate) fn score(&self, node: &Node) -> i64 {
        let labels = labels_of_node(node);
        self.scores.0.iter().filter_map(|(key, values)| labels.get(key).and_then(|v| values.get(v))).sum()
    }
}

/// InterPodAffinity's NormalizeScore: min-max scaling to 0..=100 (scores may be negative).
pub(crate) fn normalize(scores: &mut [i64]) {
    let (Some(&min), Some(&max)) = (scores.iter().min(), scores.iter().max()) else { return };
    let diff = max - min;
    for s in scores.iter_mut() {
        *s = if diff > 0 { (100.0 * ((*s - min) as f64 / diff as f64)) as i64 } else { 0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{PodExt, labeled_node, labeled_pod, snapshot_of};
    use serde_json::json;

    /// (name, pod, existing pods by node, expected per node)
    type FilterCase = (&'static str, Pod, Vec<(&'static str, Pod)>, Vec<Result<(), Reason>>);
    /// (name, pod, existing pods by node, raw score per node or None when skipped)
    type ScoreCase = (&'static str, Pod, Vec<(&'static str, Pod)>, Option<Vec<i64>>);

    fn anti(selector: serde_json::Value, key: &str) -> serde_json::Value {
        json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": selector, "topologyKey": key}]}})
    }

    fn aff(selector: serde_json::Value, key: &str) -> serde_json::Value {
        json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": selector, "topologyKey": key}]}})
    }

    fn with_affinity(name: &str, labels: serde_json::Value, affinity: serde_json::Value) -> Pod {
        labeled_pod(name, labels, json!({"containers": [], "affinity": affinity}))
    }

    fn plain(name: &str, labels: serde_json::Value) -> Pod {
        labeled_pod(name, labels, json!({"containers": []}))
    }

    /// Three nodes: n1 and n2 in zone a, n3 in zone b; n4 has no zone label.
    fn nodes() -> Vec<Node> {
        vec![
            labeled_node("n1", json!({"zone": "a"})),
            labeled_node("n2", json!({"zone": "a"})),
            labeled_node("n3", json!({"zone": "b"})),
            labeled_node("n4", json!({})),
        ]
    }

    fn run(pod: &Pod, existing: Vec<(&str, Pod)>) -> Vec<Result<(), Reason>> {
        let snap = snapshot_of(nodes(), existing);
        let state = prefilter(pod, &snap).unwrap();
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
        use Reason::*;
        let web = json!({"app": "web"});
        let db = json!({"app": "db"});
        let table: Vec<FilterCase> = vec![
            (
                "no affinity",
                plain("p", web.clone()),
                vec![("n1", plain("e", db.clone()))],
                vec![Ok(()), Ok(()), Ok(()), Ok(())],
            ),
            (
                "affinity to db in the zone of n1",
                with_affinity("p", web.clone(), aff(json!({"matchLabels": {"app": "db"}}), "zone")),
                vec![("n1", plain("e", db.clone()))],
                vec![Ok(()), Ok(()), Err(PodAffinityMismatch), Err(PodAffinityMismatch)],
            ),
            (
                "affinity by hostname",
                with_affinity("p", web.clone(), aff(json!({"matchLabels": {"app": "db"}}), "kubernetes.io/hostname")),
                vec![("n3", plain("e", db.clone()))],
                vec![Err(PodAffinityMismatch), Err(PodAffinityMismatch), Ok(()), Err(PodAffinityMismatch)],
            ),
            (
                "affinity ignores pods of other namespaces",
                with_affinity("p", web.clone(), aff(json!({"matchLabels": {"app": "db"}}), "zone")),
                vec![("n1", labeled_pod("e", db.clone(), json!({"containers": []})).in_namespace("other"))],
                // No matching pod anywhere and p is not a db: nowhere.
                vec![
                    Err(PodAffinityMismatch),
                    Err(PodAffinityMismatch),
                    Err(PodAffinityMismatch),
                    Err(PodAffinityMismatch),
                ],
            ),
            (
                "affinity with namespaces listed",
                with_affinity(
                    "p",
                    web.clone(),
                    json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": {"app": "db"}}, "namespaces": ["other"], "topologyKey": "zone"}]}}),
                ),
                vec![("n3", labeled_pod("e", db.clone(), json!({"containers": []})).in_namespace("other"))],
                vec![Err(PodAffinityMismatch), Err(PodAffinityMismatch), Ok(()), Err(PodAffinityMismatch)],
            ),
            (
                "affinity with an empty namespace selector means all namespaces",
                with_affinity(
                    "p",
                    web.clone(),
                    json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": {"app": "db"}}, "namespaceSelector": {}, "topologyKey": "zone"}]}}),
                ),
                vec![("n3", labeled_pod("e", db.clone(), json!({"containers": []})).in_namespace("other"))],
                vec![Err(PodAffinityMismatch), Err(PodAffinityMismatch), Ok(()), Err(PodAffinityMismatch)],
            ),
            (
                "first pod of a self-affine group goes anywhere with the key",
                with_affinity("p", web.clone(), aff(json!({"matchLabels": {"app": "web"}}), "zone")),
                vec![("n1", plain("e", db.clone()))],
                vec![Ok(()), Ok(()), Ok(()), Err(PodAffinityMismatch)],
            ),
            (
                "second pod of a self-affine group follows the first",
                with_affinity("p", web.clone(), aff(json!({"matchLabels": {"app": "web"}}), "zone")),
                vec![("n3", plain("e", web.clone()))],
                vec![Err(PodAffinityMismatch), Err(PodAffinityMismatch), Ok(()), Err(PodAffinityMismatch)],
            ),
            (
                "anti-affinity by zone",
                with_affinity("p", web.clone(), anti(json!({"matchLabels": {"app": "db"}}), "zone")),
                vec![("n2", plain("e", db.clone()))],
                vec![Err(PodAntiAffinityMismatch), Err(PodAntiAffinityMismatch), Ok(()), Ok(())],
            ),
            (
                "anti-affinity to itself by hostname",
                with_affinity("p", web.clone(), anti(json!({"matchLabels": {"app": "web"}}), "kubernetes.io/hostname")),
                vec![("n1", plain("e", web.clone())), ("n3", plain("f", db.clone()))],
                vec![Err(PodAntiAffinityMismatch), Ok(()), Ok(()), Ok(())],
            ),
            (
                "existing pod's anti-affinity rejects the incoming pod",
                plain("p", web.clone()),
                vec![("n3", with_affinity("e", db.clone(), anti(json!({"matchLabels": {"app": "web"}}), "zone")))],
                vec![Ok(()), Ok(()), Err(ExistingPodsAntiAffinityMismatch), Ok(())],
            ),
            (
                "existing pod's anti-affinity that does not match",
                plain("p", web.clone()),
                vec![("n3", with_affinity("e", db.clone(), anti(json!({"matchLabels": {"app": "cache"}}), "zone")))],
                vec![Ok(()), Ok(()), Ok(()), Ok(())],
            ),
            (
                "existing pod's anti-affinity only covers its own namespace",
                plain("p", web.clone()),
                vec![(
                    "n3",
                    with_affinity("e", db.clone(), anti(json!({"matchLabels": {"app": "web"}}), "zone"))
                        .in_namespace("other"),
                )],
                vec![Ok(()), Ok(()), Ok(()), Ok(())],
            ),
            (
                "null label selector matches nothing",
                with_affinity("p", web.clone(), anti(json!(null), "zone")),
                vec![("n1", plain("e", web.clone()))],
                vec![Ok(()), Ok(()), Ok(()), Ok(())],
            ),
            (
                "empty label selector matches every pod",
                with_affinity("p", web.clone(), anti(json!({}), "zone")),
                vec![("n1", plain("e", db.clone()))],
                vec![Err(PodAntiAffinityMismatch), Err(PodAntiAffinityMismatch), Ok(()), Ok(())],
            ),
            (
                "matchLabelKeys narrows to the pod's own value",
                with_affinity(
                    "p",
                    json!({"app": "web", "rev": "2"}),
                    json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": {"app": "web"}}, "matchLabelKeys": ["rev"], "topologyKey": "kubernetes.io/hostname"}]}}),
                ),
                vec![
                    ("n1", plain("e", json!({"app": "web", "rev": "1"}))),
                    ("n2", plain("f", json!({"app": "web", "rev": "2"}))),
                ],
                vec![Ok(()), Err(PodAntiAffinityMismatch), Ok(()), Ok(())],
            ),
        ];
        for (name, pod, existing, expected) in table {
            assert_eq!(run(&pod, existing), expected, "{name}");
        }
    }

    #[test]
    fn anti_affinity_is_resolvable_affinity_is_not() {
        let snap = snapshot_of(nodes(), vec![("n1", plain("e", json!({"app": "db"})))]);
        let p = with_affinity("p", json!({}), anti(json!({"matchLabels": {"app": "db"}}), "zone"));
        let s = prefilter(&p, &snap).unwrap().unwrap();
        assert!(filter(&s, &snap.nodes()[0]).unwrap_err().resolvable);
        let p = with_affinity("p", json!({}), aff(json!({"matchLabels": {"app": "db"}}), "zone"));
        let s = prefilter(&p, &snap).unwrap().unwrap();
        assert!(!filter(&s, &snap.nodes()[2]).unwrap_err().resolvable);
    }

    #[test]
    fn namespace_selector_uses_namespace_labels() {
        let mut snap = snapshot_of(
            nodes(),
            vec![("n3", labeled_pod("e", json!({"app": "db"}), json!({"containers": []})).in_namespace("team-a"))],
        );
        let p = with_affinity(
            "p",
            json!({}),
            json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "db"}}, "namespaceSelector": {"matchLabels": {"team": "a"}}, "topologyKey": "zone"}]}}),
        );
        let s = prefilter(&p, &snap).unwrap().unwrap();
        assert!(filter(&s, &snap.nodes()[2]).is_ok(), "namespace labels unknown: no match");
        snap.set_namespace_labels("team-a", [("team".to_string(), "a".to_string())].into());
        let s = prefilter(&p, &snap).unwrap().unwrap();
        assert!(filter(&s, &snap.nodes()[2]).is_err());
    }

    #[test]
    fn invalid_selector_fails_prefilter() {
        let snap = snapshot_of(nodes(), vec![]);
        let p = with_affinity(
            "p",
            json!({}),
            anti(json!({"matchExpressions": [{"key": "app", "operator": "In", "values": []}]}), "zone"),
        );
        assert!(prefilter(&p, &snap).is_err());
    }

    #[test]
    fn update_tracks_removed_and_readded_pods() {
        let victim = with_affinity("e", json!({"app": "db"}), anti(json!({"matchLabels": {"app": "web"}}), "zone"));
        let snap = snapshot_of(nodes(), vec![("n1", victim.clone())]);
        let p = with_affinity("p", json!({"app": "web"}), anti(json!({"matchLabels": {"app": "db"}}), "zone"));
        let mut s = prefilter(&p, &snap).unwrap().unwrap();
        let n1 = &snap.nodes()[0];
        assert_eq!(filter(&s, n1).unwrap_err().reasons().next(), Some(&Reason::PodAntiAffinityMismatch));
        let info = n1.pod_infos()[0].clone();
        s.update(&info, n1.node(), -1);
        assert_eq!(filter(&s, n1), Ok(()));
        s.update(&info, n1.node(), 1);
        assert!(filter(&s, n1).is_err());
    }

    #[test]
    fn score_table() {
        let pref_aff = |selector: serde_json::Value, key: &str, weight: i32| {
            json!({"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": weight, "podAffinityTerm": {"labelSelector": selector, "topologyKey": key}}]}})
        };
        let pref_anti = |selector: serde_json::Value, key: &str, weight: i32| {
            json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": weight, "podAffinityTerm": {"labelSelector": selector, "topologyKey": key}}]}})
        };
        let db = json!({"app": "db"});
        // (name, pod, existing, raw scores per node or None for skip)
        let table: Vec<ScoreCase> = vec![
            ("nothing", plain("p", json!({})), vec![("n1", plain("e", db.clone()))], None),
            (
                "preferred affinity by zone",
                with_affinity("p", json!({}), pref_aff(json!({"matchLabels": {"app": "db"}}), "zone", 5)),
                vec![("n1", plain("e", db.clone())), ("n2", plain("f", db.clone()))],
                Some(vec![10, 10, 0, 0]),
            ),
            (
                "preferred anti-affinity by hostname",
                with_affinity(
                    "p",
                    json!({}),
                    pref_anti(json!({"matchLabels": {"app": "db"}}), "kubernetes.io/hostname", 3),
                ),
                vec![("n3", plain("e", db.clone()))],
                Some(vec![0, 0, -3, 0]),
            ),
            (
                "existing pod's required affinity counts with weight 1",
                plain("p", json!({"app": "web"})),
                vec![("n3", with_affinity("e", db.clone(), aff(json!({"matchLabels": {"app": "web"}}), "zone")))],
                Some(vec![0, 0, 1, 0]),
            ),
            (
                "existing pod's preferred anti-affinity pushes away",
                plain("p", json!({"app": "web"})),
                vec![(
                    "n1",
                    with_affinity("e", db.clone(), pref_anti(json!({"matchLabels": {"app": "web"}}), "zone", 7)),
                )],
                Some(vec![-7, -7, 0, 0]),
            ),
        ];
        for (name, pod, existing, expected) in table {
            let snap = snapshot_of(nodes(), existing);
            let scorer = prescore(&pod, &snap);
            let got = scorer.map(|s| snap.nodes().iter().map(|n| s.score(n.node())).collect::<Vec<_>>());
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn normalize_min_max() {
        let mut s = vec![-7, -7, 0, 3];
        normalize(&mut s);
        assert_eq!(s, vec![0, 0, 70, 100]);
        let mut same = vec![4, 4];
        normalize(&mut same);
        assert_eq!(same, vec![0, 0]);
    }
}
