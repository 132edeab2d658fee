//! The cluster as one scheduling cycle reads it: every node with its pods, updated
//! incrementally by the loop (informer events, assumed pods) between cycles.
//!
//! Besides the nodes, the snapshot keeps pods grouped by namespace, labels, whether they are
//! terminating and their pod (anti-)affinity, with the count of each group's pods per node.
//! Pods of one workload share all of these, so cluster-wide questions ("how many pods
//! matching this selector per zone?") evaluate the selector once per group instead of once
//! per pod. That is what keeps PodTopologySpread's and InterPodAffinity's PreFilter cheap
//! at tens of thousands of pods.
//!
//! It also keeps, per node label key, every node's value of that key as a small integer
//! ([`TopologyIndex`]), so topology domains are vectors indexed by value rather than maps
//! of strings rebuilt for every pod.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;

use super::affinity::PodAffinityTerms;
use super::default_selector::{SpreadSource, SpreadSources};
use super::nodeinfo::{NodeInfo, PodInfo};
use super::selector::{LabelSelector, Labels, NO_LABELS, labels_of_node, labels_of_pod};
use super::volume::VolumeCache;

pub(crate) fn namespace_of(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or_default()
}

/// Pods that share namespace, labels, terminating state and affinity.
#[derive(Debug)]
pub(crate) struct PodGroup {
    pub(crate) namespace: String,
    pub(crate) labels: Labels,
    pub(crate) terminating: bool,
    pub(crate) affinity: Option<Arc<PodAffinityTerms>>,
    /// Node index to the number of the group's pods on it.
    pub(crate) placements: HashMap<usize, u32>,
    pods: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    namespace: String,
    labels: Labels,
    terminating: bool,
    /// The pod's `podAffinity`/`podAntiAffinity` as JSON; `None` without any.
    affinity: Option<String>,
}

impl GroupKey {
    fn of(info: &PodInfo) -> Self {
        let pod = &info.pod;
        let affinity = info.affinity.as_ref().and_then(|_| {
            let a = pod.spec.as_ref()?.affinity.as_ref()?;
            // Serialising a k8s-openapi type cannot fail; a failure would only merge groups
            // of pods whose terms are then compared as equal, never lose a pod.
            serde_json::to_string(&(&a.pod_affinity, &a.pod_anti_affinity)).ok()
        });
        GroupKey {
            namespace: namespace_of(pod).to_owned(),
            labels: labels_of_pod(pod).clone(),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            affinity,
        }
    }
}

/// A label key's value on every node, interned: `node_value[node]` is an index into
/// `values`, or `NO_VALUE` where the node lacks the key. Values are never freed; a value no
/// node has any more is simply not referenced.
#[derive(Debug, Clone, Default)]
pub(crate) struct TopologyIndex {
    node_value: Vec<u32>,
    values: Vec<String>,
    ids: HashMap<String, u32>,
}

const NO_VALUE: u32 = u32::MAX;

impl TopologyIndex {
    fn new(nodes: usize) -> Self {
        TopologyIndex { node_value: vec![NO_VALUE; nodes], values: Vec::new(), ids: HashMap::new() }
    }

    /// The value id of the node at `node`, if it has the key.
    pub(crate) fn of_node(&self, node: usize) -> Option<usize> {
        self.node_value.get(node).filter(|&&v| v != NO_VALUE).map(|&v| v as usize)
    }

    /// The id of a value, if some node ever had it.
    pub(crate) fn id(&self, value: &str) -> Option<usize> {
        self.ids.get(value).map(|&v| v as usize)
    }

    /// How many distinct values there are (the length of per-value vectors).
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    fn set(&mut self, node: usize, value: Option<&str>) {
        let id = match value {
            None => NO_VALUE,
            Some(v) => match self.ids.get(v) {
                Some(&id) => id,
                None => {
                    let id = u32::try_from(self.values.len()).unwrap_or(NO_VALUE);
                    self.values.push(v.to_owned());
                    self.ids.insert(v.to_owned(), id);
                    id
                }
            },
        };
        self.node_value[node] = id;
    }
}

#[derive(Debug, Clone, Copy)]
struct Location {
    node: usize,
    group: usize,
}

#[derive(Debug, Default)]
pub struct Snapshot {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// (namespace, name) of every pod to where it is.
    pods: HashMap<(String, String), Location>,
    groups: Vec<Option<PodGroup>>,
    free_groups: Vec<usize>,
    group_index: HashMap<GroupKey, usize>,
    affinity_groups: BTreeSet<usize>,
    anti_affinity_groups: BTreeSet<usize>,
    namespaces: HashMap<String, Labels>,
    /// Shared with the cycle states that read it; copied on write only while one is alive.
    topology: HashMap<String, Arc<TopologyIndex>>,
    /// PersistentVolumeClaims, PersistentVolumes and StorageClasses, for VolumeBinding.
    volumes: VolumeCache,
    /// Selectors of Services and controllers, for PodTopologySpread's default constraints.
    spread_sources: SpreadSources,
}

impl Snapshot {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node or replaces its object (labels, taints, allocatable), keeping its pods.
    /// Returns its index.
    pub fn upsert_node(&mut self, node: Arc<Node>) -> usize {
        let name = node.metadata.name.clone().unwrap_or_default();
        if let Some(&i) = self.index.get(&name) {
            let old = self.nodes[i].node().clone();
            self.nodes[i].set_node(node.clone());
            self.index_labels(i, labels_of_node(&old), labels_of_node(&node));
            return i;
        }
        let i = self.nodes.len();
        self.nodes.push(NodeInfo::new(node.clone()));
        self.index.insert(name, i);
        for index in self.topology.values_mut() {
            Arc::make_mut(index).node_value.push(NO_VALUE);
        }
        self.index_labels(i, &NO_LABELS, labels_of_node(&node));
        i
    }

    fn index_labels(&mut self, node: usize, old: &Labels, new: &Labels) {
        let nodes = self.nodes.len();
        for key in old.keys().filter(|k| !new.contains_key(*k)) {
            if let Some(index) = self.topology.get_mut(key) {
                Arc::make_mut(index).set(node, None);
            }
        }
        for (key, value) in new.iter().filter(|(k, v)| old.get(*k) != Some(*v)) {
            let index = self.topology.entry(key.clone()).or_insert_with(|| Arc::new(TopologyIndex::new(nodes)));
            Arc::make_mut(index).set(node, Some(value));
        }
    }

    /// Removes a node and the pods on it. The last node takes its index.
    pub fn remove_node(&mut self, name: &str) -> bool {
        let Some(i) = self.index.remove(name) else { return false };
        let pods: Vec<Arc<Pod>> = self.nodes[i].pods().cloned().collect();
        for pod in pods {
            self.remove_pod(&pod);
        }
        let last = self.nodes.len() - 1;
        self.nodes.swap_remove(i);
        for index in self.topology.values_mut() {
            Arc::make_mut(index).node_value.swap_remove(i);
        }
        if i != last {
            self.relocate(last, i);
        }
        true
    }

    /// Tells pods and groups that the node at `from` now lives at `to`.
    fn relocate(&mut self, from: usize, to: usize) {
        let node = &self.nodes[to];
        self.index.insert(node.name().to_owned(), to);
        for pod in node.pods() {
            let key = pod_key(pod);
            if let Some(loc) = self.pods.get_mut(&key) {
                loc.node = to;
                if let Some(group) = self.groups.get_mut(loc.group).and_then(Option::as_mut)
                    && let Some(n) = group.placements.remove(&from)
                {
                    *group.placements.entry(to).or_default() += n;
                }
            }
        }
    }

    /// Adds a pod bound to `spec.nodeName`. False if that node is not (yet) known.
    /// Add only pods that hold resources: not Succeeded or Failed ones.
    pub fn add_pod(&mut self, pod: Arc<Pod>) -> bool {
        let Some(&node) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).and_then(|n| self.index.get(n)) else {
            return false;
        };
        self.add_pod_to(node, pod)
    }

    /// Adds a pod to the node at `node`, whatever its `spec.nodeName` says: how the loop
    /// assumes a pod it is binding. A pod with the same namespace and name already in the
    /// snapshot is replaced (an update).
    pub fn add_pod_to(&mut self, node: usize, pod: Arc<Pod>) -> bool {
        if node >= self.nodes.len() {
            return false;
        }
        let key = pod_key(&pod);
        if let Some(old) = self.pods.remove(&key) {
            let (ns, name) = (key.0.as_str(), key.1.as_str());
            if let Some(info) = self.nodes[old.node].take_pod_named(ns, name) {
                self.leave_group(old.group, old.node, &info);
            }
        }
        let info = PodInfo::new(pod);
        let group = self.join_group(&info, node);
        self.nodes[node].add_pod_info(info);
        self.pods.insert(key, Location { node, group });
        true
    }

    /// Removes a pod by namespace and name (and uid, when both have one), wherever it is.
    pub fn remove_pod(&mut self, pod: &Pod) -> bool {
        let key = pod_key(pod);
        let Some(&loc) = self.pods.get(&key) else { return false };
        let Some(info) = self.nodes[loc.node].take_pod(pod) else { return false };
        self.pods.remove(&key);
        self.leave_group(loc.group, loc.node, &info);
        true
    }

    fn join_group(&mut self, info: &PodInfo, node: usize) -> usize {
        let key = GroupKey::of(info);
        let id = match self.group_index.get(&key) {
            Some(&id) => id,
            None => {
                let group = PodGroup {
                    namespace: key.namespace.clone(),
                    labels: key.labels.clone(),
                    terminating: key.terminating,
                    affinity: info.affinity.clone(),
                    placements: HashMap::new(),
                    pods: 0,
                };
                let id = match self.free_groups.pop() {
                    Some(id) => {
                        self.groups[id] = Some(group);
                        id
                    }
                    None => {
                        self.groups.push(Some(group));
                        self.groups.len() - 1
                    }
                };
                if info.affinity.is_some() {
                    self.affinity_groups.insert(id);
                }
                if info.has_required_anti_affinity() {
                    self.anti_affinity_groups.insert(id);
                }
                self.group_index.insert(key, id);
                id
            }
        };
        if let Some(group) = self.groups[id].as_mut() {
            group.pods += 1;
            *group.placements.entry(node).or_default() += 1;
        }
        id
    }

    fn leave_group(&mut self, id: usize, node: usize, info: &PodInfo) {
        let Some(group) = self.groups.get_mut(id).and_then(Option::as_mut) else { return };
        group.pods -= 1;
        if let Some(n) = group.placements.get_mut(&node) {
            *n -= 1;
            if *n == 0 {
                group.placements.remove(&node);
            }
        }
        if group.pods == 0 {
            self.groups[id] = None;
            self.free_groups.push(id);
            self.group_index.remove(&GroupKey::of(info));
            self.affinity_groups.remove(&id);
            self.anti_affinity_groups.remove(&id);
        }
    }

    /// Labels of a namespace, for pod affinity `namespaceSelector`s. Namespaces the loop
    /// never reports match no namespace selector.
    pub fn set_namespace_labels(&mut self, namespace: &str, labels: Labels) {
        self.namespaces.insert(namespace.to_owned(), labels);
    }

    pub fn remove_namespace(&mut self, namespace: &str) {
        self.namespaces.remove(namespace);
    }

    /// Adds or replaces a Service's, ReplicationController's, ReplicaSet's or StatefulSet's
    /// selector (by kind, namespace and name): what PodTopologySpread spreads a pod without
    /// constraints of its own against.
    pub fn upsert_spread_source(&mut self, source: SpreadSource) {
        self.spread_sources.upsert(source);
    }

    /// Forgets the object `source` was made from (only its kind, namespace and name count).
    pub fn remove_spread_source(&mut self, source: &SpreadSource) {
        self.spread_sources.remove(source);
    }

    /// kube's `DefaultSelector` for the pod; `None` when no Service or controller adds a
    /// requirement.
    pub(crate) fn default_spread_selector(&self, pod: &Pod) -> Option<LabelSelector> {
        self.spread_sources.default_selector(pod)
    }

    /// Adds or replaces a claim (by namespace and name).
    pub fn upsert_claim(&mut self, claim: Arc<PersistentVolumeClaim>) {
        self.volumes.upsert_claim(claim);
    }

    pub fn remove_claim(&mut self, namespace: &str, name: &str) -> bool {
        self.volumes.remove_claim(namespace, name)
    }

    pub fn claim(&self, namespace: &str, name: &str) -> Option<&Arc<PersistentVolumeClaim>> {
        self.volumes.claim(namespace, name)
    }

    /// Adds or replaces a volume (by name).
    pub fn upsert_volume(&mut self, volume: Arc<PersistentVolume>) {
        self.volumes.upsert_volume(volume);
    }

    pub fn remove_volume(&mut self, name: &str) -> bool {
        self.volumes.remove_volume(name)
    }

    pub fn volume(&self, name: &str) -> Option<&Arc<PersistentVolume>> {
        self.volumes.volume(name)
    }

    /// Adds or replaces a StorageClass (by name).
    pub fn upsert_storage_class(&mut self, class: Arc<StorageClass>) {
        self.volumes.upsert_class(class);
    }

    pub fn remove_storage_class(&mut self, name: &str) -> bool {
        self.volumes.remove_class(name)
    }

    pub(crate) fn volume_cache(&self) -> &VolumeCache {
        &self.volumes
    }

    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    pub fn node(&self, index: usize) -> Option<&NodeInfo> {
        self.nodes.get(index)
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Number of pods in the snapshot.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// The node index a pod was added to.
    pub fn node_of_pod(&self, namespace: &str, name: &str) -> Option<usize> {
        self.pods.get(&(namespace.to_owned(), name.to_owned())).map(|l| l.node)
    }

    pub(crate) fn node_labels(&self, index: usize) -> &Labels {
        self.nodes.get(index).map_or(&NO_LABELS, |n| labels_of_node(n.node()))
    }

    /// The interned values of a node label key; `None` if no node ever had the key.
    pub(crate) fn topology(&self, key: &str) -> Option<&Arc<TopologyIndex>> {
        self.topology.get(key)
    }

    pub(crate) fn namespace_labels(&self, namespace: &str) -> Option<&Labels> {
        self.namespaces.get(namespace)
    }

    pub(crate) fn namespaces(&self) -> impl Iterator<Item = (&str, &Labels)> {
        self.namespaces.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub(crate) fn groups(&self) -> impl Iterator<Item = &PodGroup> {
        self.groups.iter().flatten()
    }

    pub(crate) fn groups_with_affinity(&self) -> impl Iterator<Item = &PodGroup> {
        self.affinity_groups.iter().filter_map(|&id| self.groups.get(id).and_then(Option::as_ref))
    }

    pub(crate) fn groups_with_required_anti_affinity(&self) -> impl Iterator<Item = &PodGroup> {
        self.anti_affinity_groups.iter().filter_map(|&id| self.groups.get(id).and_then(Option::as_ref))
    }
}

fn pod_key(pod: &Pod) -> (String, String) {
    (namespace_of(pod).to_owned(), pod.metadata.name.clone().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{PodExt, labeled_node, labeled_pod};
    use serde_json::json;

    /// (labels as JSON, pods, pods per node name)
    type GroupSummary = (String, usize, Vec<(String, u32)>);

    fn group_summary(s: &Snapshot) -> Vec<GroupSummary> {
        let mut out: Vec<_> = s
            .groups()
            .map(|g| {
                let mut placements: Vec<_> =
                    g.placements.iter().map(|(&n, &c)| (s.nodes()[n].name().to_owned(), c)).collect();
                placements.sort();
                (serde_json::to_string(&g.labels).unwrap(), g.pods, placements)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn pods_group_by_labels_and_follow_node_moves() {
        let mut s = Snapshot::new();
        for n in ["n1", "n2", "n3"] {
            s.upsert_node(Arc::new(labeled_node(n, json!({}))));
        }
        let web = |name: &str, node: &str| {
            Arc::new(labeled_pod(name, json!({"app": "web"}), json!({"containers": []})).on(node))
        };
        assert!(s.add_pod(web("a", "n1")));
        assert!(s.add_pod(web("b", "n1")));
        assert!(s.add_pod(web("c", "n3")));
        assert!(s.add_pod(Arc::new(labeled_pod("d", json!({"app": "db"}), json!({"containers": []})).on("n3"))));
        assert!(!s.add_pod(web("e", "unknown")));
        assert_eq!(s.pod_count(), 4);
        assert_eq!(
            group_summary(&s),
            vec![
                (r#"{"app":"db"}"#.to_string(), 1, vec![("n3".to_string(), 1)]),
                (r#"{"app":"web"}"#.to_string(), 3, vec![("n1".to_string(), 2), ("n3".to_string(), 1)]),
            ]
        );

        // Removing n1 moves n3 to index 0; its pods and groups follow.
        assert!(s.remove_node("n1"));
        assert_eq!(s.index_of("n3"), Some(0));
        assert_eq!(s.node_of_pod("default", "c"), Some(0));
        assert_eq!(s.pod_count(), 2);
        assert_eq!(
            group_summary(&s),
            vec![
                (r#"{"app":"db"}"#.to_string(), 1, vec![("n3".to_string(), 1)]),
                (r#"{"app":"web"}"#.to_string(), 1, vec![("n3".to_string(), 1)]),
            ]
        );

        // Groups disappear with their last pod.
        assert!(s.remove_pod(&web("c", "n3")));
        assert!(!s.remove_pod(&web("c", "n3")));
        assert_eq!(group_summary(&s).len(), 1);
    }

    #[test]
    fn topology_index_follows_labels() {
        let mut s = Snapshot::new();
        for (n, zone) in [("n1", "a"), ("n2", "b"), ("n3", "a")] {
            s.upsert_node(Arc::new(labeled_node(n, json!({"zone": zone}))));
        }
        let zones = |s: &Snapshot| {
            let idx = s.topology("zone").unwrap();
            (0..s.len()).map(|n| idx.of_node(n).map(|v| idx.values[v].clone())).collect::<Vec<_>>()
        };
        let some = |v: &str| Some(v.to_string());
        assert_eq!(zones(&s), vec![some("a"), some("b"), some("a")]);
        assert_eq!(s.topology("zone").unwrap().len(), 2);

        // Relabel n2, drop the zone of n3, remove n1 (n3 moves to index 0).
        s.upsert_node(Arc::new(labeled_node("n2", json!({"zone": "c"}))));
        s.upsert_node(Arc::new(labeled_node("n3", json!({}))));
        assert_eq!(zones(&s), vec![some("a"), some("c"), None]);
        s.remove_node("n1");
        assert_eq!(zones(&s), vec![None, some("c")]);
        assert_eq!(
            s.topology("kubernetes.io/hostname").unwrap().of_node(0),
            s.topology("kubernetes.io/hostname").unwrap().id("n3")
        );
        assert!(s.topology("rack").is_none());
    }

    #[test]
    fn re_adding_a_pod_replaces_it() {
        let mut s = Snapshot::new();
        s.upsert_node(Arc::new(labeled_node("n1", json!({}))));
        s.upsert_node(Arc::new(labeled_node("n2", json!({}))));
        let p = labeled_pod(
            "a",
            json!({"v": "1"}),
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}),
        );
        assert!(s.add_pod_to(0, Arc::new(p.clone())));
        // The binding lands on n2 with new labels: one pod, one group, n1 freed.
        let mut moved = p.on("n2");
        moved.metadata.labels = Some([("v".to_string(), "2".to_string())].into());
        assert!(s.add_pod(Arc::new(moved)));
        assert_eq!(s.pod_count(), 1);
        assert_eq!(s.nodes()[0].pod_count(), 0);
        assert_eq!(s.nodes()[0].requested().milli_cpu, 0);
        assert_eq!(s.nodes()[1].requested().milli_cpu, 1000);
        assert_eq!(group_summary(&s), vec![(r#"{"v":"2"}"#.to_string(), 1, vec![("n2".to_string(), 1)])]);
    }

    #[test]
    fn affinity_groups_are_tracked() {
        let mut s = Snapshot::new();
        s.upsert_node(Arc::new(labeled_node("n1", json!({}))));
        let anti = labeled_pod(
            "a",
            json!({"app": "x"}),
            json!({"containers": [], "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "x"}}, "topologyKey": "kubernetes.io/hostname"}]}}}),
        );
        let plain = labeled_pod("b", json!({"app": "x"}), json!({"containers": []}));
        s.add_pod_to(0, Arc::new(anti.clone()));
        s.add_pod_to(0, Arc::new(plain));
        assert_eq!(s.groups().count(), 2, "same labels, different affinity");
        assert_eq!(s.groups_with_affinity().count(), 1);
        assert_eq!(s.groups_with_required_anti_affinity().count(), 1);
        s.remove_pod(&anti);
        assert_eq!(s.groups_with_required_anti_affinity().count(), 0);
    }
}
