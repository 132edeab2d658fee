//! DaemonSets: one pod on every node the template's node selector, required node affinity
//! and tolerations admit, as kube's DaemonSet controller.
//!
//! * Each pod is pinned to its node by a required `matchFields metadata.name` node
//!   affinity and bound by the scheduler (kube's way since 1.12), and carries the daemon
//!   tolerations (not-ready and unreachable `NoExecute`, the pressure and unschedulable
//!   `NoSchedule` taints).
//! * A node that stops admitting the pod (`NoExecute` taint, label change) loses it; a new
//!   `NoSchedule` taint keeps an existing pod but gets no new one. Failed pods are
//!   replaced; a second pod on one node is removed (the oldest stays).
//! * `RollingUpdate` replaces old pods node by node within `maxUnavailable` (default 1),
//!   or, with `maxSurge`, starts the new pod beside the old one and removes the old one once
//!   the new one is available. `OnDelete` only uses the new template for pods it recreates.
//! * Templates are kept as ControllerRevisions (`crate::history`); pods carry the hash in
//!   `controller-revision-hash` and the generation in `pod-template-generation`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetSpec, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keel_api::error::{ApiError, Result};
use keel_api::rest::DeleteOptions;
use keel_runtime::events::{EventType, reference_to};
use keel_runtime::{Action, Client, Informer, ObjectKey, Recorder, WorkQueue, labels};
use keel_scheduler_framework::daemon_placement;

use crate::history::{self, REVISION_HASH};
use crate::replicaset::{self, claim_pods, is_available, is_ready, owner_of, revision_of};

pub const TEMPLATE_GENERATION: &str = "pod-template-generation";
const OWN_WRITES: Duration = Duration::from_secs(10);
const BURST: usize = 500;

pub struct DaemonSetController {
    client: Client,
    sets: Arc<Informer<DaemonSet>>,
    pods: Arc<Informer<Pod>>,
    nodes: Arc<Informer<Node>>,
    revisions: Arc<Informer<ControllerRevision>>,
    queue: Arc<WorkQueue<ObjectKey>>,
    recorder: Recorder,
}

/// The tolerations every daemon pod gets (kube's `AddOrUpdateDaemonPodTolerations`): it
/// stays through node trouble that would evict other pods.
fn add_daemon_tolerations(spec: &mut PodSpec) {
    let mut wanted = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        wanted.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, effect) in wanted {
        let present = tolerations.iter().any(|t| {
            t.key.as_deref() == Some(key)
                && t.effect.as_deref() == Some(effect)
                && t.operator.as_deref() == Some("Exists")
                && t.toleration_seconds.is_none()
        });
        if !present {
            tolerations.retain(|t| !(t.key.as_deref() == Some(key) && t.effect.as_deref() == Some(effect)));
            tolerations.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(effect.into()),
                ..Toleration::default()
            });
        }
    }
}

/// The node a daemon pod is for: where it is bound, else where its affinity pins it.
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(node) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(node.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    let [term] = terms.as_slice() else { return None };
    term.match_fields
        .iter()
        .flatten()
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref())
        .and_then(|v| v.first().cloned())
}

fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.to_string()]),
        }]),
        match_expressions: None,
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity.node_affinity.get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution =
        Some(NodeSelector { node_selector_terms: vec![term] });
}

fn hash_label(pod: &Pod) -> &str {
    pod.metadata.labels.as_ref().and_then(|l| l.get(REVISION_HASH)).map(String::as_str).unwrap_or_default()
}

fn scaled(value: Option<&IntOrString>, total: i32, default: i32) -> i32 {
    match value {
        None => default,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let percent: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            ((percent * i64::from(total) + 99) / 100) as i32
        }
    }
}

/// One node's daemon pods and what should be there.
struct NodeState {
    should_run: bool,
    should_continue: bool,
    /// Active pods (not finished, not being deleted), oldest first. A pod being deleted
    /// does not count: its replacement is created at once, as kube does.
    active: Vec<Arc<Pod>>,
}

/// What a DaemonSet's owned pods say about each node.
struct Observed {
    nodes: BTreeMap<String, NodeState>,
    /// Failed pods, to be replaced.
    failed: Vec<Arc<Pod>>,
    /// Pods whose node is gone.
    stray: Vec<Arc<Pod>>,
}

/// What the pass decided, as writes.
#[derive(Default)]
struct Plan {
    create_on: Vec<String>,
    delete: Vec<(Arc<Pod>, &'static str)>,
}

impl DaemonSetController {
    pub fn new(
        client: Client,
        pods: Arc<Informer<Pod>>,
        nodes: Arc<Informer<Node>>,
        revisions: Arc<Informer<ControllerRevision>>,
        recorder: Recorder,
    ) -> Arc<Self> {
        let sets = Informer::<DaemonSet>::new(client.clone());
        let queue = WorkQueue::new();
        let this = Arc::new(DaemonSetController { client, sets, pods, nodes, revisions, queue, recorder });
        this.sets.feed(this.queue.clone());
        let weak = Arc::downgrade(&this);
        this.pods.on_change(move |old, new| {
            let Some(this) = weak.upgrade() else { return };
            for pod in [old, new].into_iter().flatten() {
                this.enqueue_for_pod(pod);
            }
        });
        // Heartbeats change node status every few seconds; only what decides placement
        // (existence, labels, taints) is worth a look at every DaemonSet.
        let weak = Arc::downgrade(&this);
        this.nodes.on_change(move |old, new| {
            let Some(this) = weak.upgrade() else { return };
            let placement =
                |n: &Node| (n.metadata.labels.clone(), n.spec.as_ref().map(|s| (s.taints.clone(), s.unschedulable)));
            if let (Some(old), Some(new)) = (old, new)
                && placement(old) == placement(new)
            {
                return;
            }
            for set in this.sets.list() {
                this.queue.add(ObjectKey::of(set.as_ref()));
            }
        });
        this
    }

    fn enqueue_for_pod(&self, pod: &Pod) {
        replicaset::enqueue_controller_of(
            &self.queue,
            pod,
            "DaemonSet",
            || self.sets.list(),
            |set| set.spec.as_ref().map(|s| &s.selector),
        );
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        let _informer = keel_runtime::AbortOnDrop::spawn(self.sets.clone().run());
        self.sets.wait_synced().await;
        self.pods.wait_synced().await;
        self.nodes.wait_synced().await;
        self.revisions.wait_synced().await;
        let this = self.clone();
        keel_runtime::run_workers(self.queue.clone(), workers, "DaemonSet", move |key| {
            let this = this.clone();
            async move { this.reconcile(key).await }
        })
        .await;
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action> {
        let Some(set) = self.sets.get(&key) else { return Ok(Action::Done) };
        let spec = set.spec.clone().unwrap_or_default();
        let owner = owner_of(set.as_ref());
        let deleting = set.metadata.deletion_timestamp.is_some();
        let selector_empty = spec.selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && spec.selector.match_expressions.as_ref().is_none_or(|e| e.is_empty());
        let (owned, last_write) = claim_pods(
            &self.client,
            &self.pods,
            &key.namespace,
            &owner,
            deleting,
            |pod| !selector_empty && labels::matches(&spec.selector, pod.metadata.labels.as_ref()),
            |_| true,
        )
        .await?;
        if last_write > 0 {
            return self.after_writes(key, last_write, &[]).await;
        }
        if deleting {
            return Ok(Action::Done);
        }
        let status = set.status.clone().unwrap_or_default();
        let revisions = history::sync(
            &self.client,
            &self.revisions,
            &history::Owner {
                key: &key,
                reference: owner.clone(),
                template: &spec.template,
                annotations: set.metadata.annotations.as_ref(),
                collision_count: status.collision_count.unwrap_or(0),
            },
        )
        .await?;
        let hash = history::hash_of(&revisions.update).to_string();

        let Observed { nodes, failed, stray } = self.observe(&spec, owned);
        let plan = plan(&spec, &nodes, &hash);
        let mut new_status = status_of(&set, &nodes, &hash, revisions.collision_count);

        let mut last_write = 0i64;
        let mut deleted = Vec::new();
        let mut outcome = Ok(());
        let failed_doomed = failed.into_iter().map(|p| (p, "failed"));
        let stray_doomed = stray.into_iter().map(|p| (p, "node gone"));
        for (pod, why) in failed_doomed.chain(stray_doomed).chain(plan.delete) {
            if why == "failed" {
                self.recorder.record(
                    reference_to(set.as_ref()),
                    EventType::Warning,
                    "FailedDaemonPod",
                    format!(
                        "Found failed daemon pod {}/{} on node {}, will try to kill it",
                        key.namespace,
                        pod.metadata.name.as_deref().unwrap_or_default(),
                        target_node(&pod).unwrap_or_default()
                    ),
                );
            }
            match self.delete_pod(&set, &pod).await {
                Ok(()) => deleted.push(pod),
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        if outcome.is_ok() {
            match self.create_pods(&set, &spec, &owner, &hash, &plan.create_on).await {
                Ok(written) => last_write = written,
                Err(e) => outcome = Err(e),
            }
        }

        if let Some(updated) = with_status(&set, &mut new_status) {
            self.client.replace_status(key.namespace(), &key.name, &updated).await?;
        }
        let mut live: HashSet<String> = revisions
            .all
            .iter()
            .filter(|r| nodes.values().flat_map(|n| n.active.iter()).any(|p| hash_label(p) == history::hash_of(r)))
            .filter_map(|r| r.metadata.name.clone())
            .collect();
        live.extend(revisions.update.metadata.name.clone());
        history::truncate(&self.client, &revisions, &live, spec.revision_history_limit.unwrap_or(10)).await?;
        outcome?;
        if last_write > 0 || !deleted.is_empty() {
            return self.after_writes(key, last_write, &deleted).await;
        }
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        if min_ready > 0 && new_status.number_available.unwrap_or(0) < new_status.number_ready {
            return Ok(Action::RequeueAfter(Duration::from_secs(1)));
        }
        Ok(Action::Done)
    }

    /// Pods by node (every node in the cache, in name order), failed pods to replace, and
    /// pods whose node is gone.
    fn observe(&self, spec: &DaemonSetSpec, owned: Vec<Arc<Pod>>) -> Observed {
        let mut probe = Pod {
            metadata: spec.template.metadata.clone().unwrap_or_default(),
            spec: spec.template.spec.clone(),
            status: None,
        };
        add_daemon_tolerations(probe.spec.get_or_insert_with(PodSpec::default));
        let mut nodes: BTreeMap<String, NodeState> = self
            .nodes
            .list()
            .into_iter()
            .map(|node| {
                let placement = daemon_placement(&probe, &node);
                let state = NodeState {
                    should_run: placement.should_run,
                    should_continue: placement.should_continue_running,
                    active: Vec::new(),
                };
                (node.metadata.name.clone().unwrap_or_default(), state)
            })
            .collect();
        let (mut failed, mut stray) = (Vec::new(), Vec::new());
        for pod in owned {
            let Some(node) = target_node(&pod) else { continue };
            let Some(state) = nodes.get_mut(&node) else {
                if pod.metadata.deletion_timestamp.is_none() {
                    stray.push(pod);
                }
                continue;
            };
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            } else if phase == Some("Failed") {
                failed.push(pod);
            } else if phase != Some("Succeeded") {
                state.active.push(pod);
            }
        }
        for state in nodes.values_mut() {
            state.active.sort_by(|a, b| {
                let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
                created(a).cmp(&created(b)).then_with(|| a.metadata.name.cmp(&b.metadata.name))
            });
        }
        Observed { nodes, failed, stray }
    }

    async fn after_writes(&self, key: ObjectKey, revision: i64, deleted: &[Arc<Pod>]) -> Result<Action> {
        if revision > 0 {
            let _ = tokio::time::timeout(OWN_WRITES, self.pods.wait_for_revision(revision)).await;
        }
        let deadline = tokio::time::Instant::now() + OWN_WRITES;
        let gone = |p: &Arc<Pod>| {
            self.pods
                .get(&ObjectKey::of(p.as_ref()))
                .is_none_or(|c| c.metadata.uid != p.metadata.uid || c.metadata.deletion_timestamp.is_some())
        };
        while !deleted.iter().all(gone) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.queue.add(key);
        Ok(Action::Done)
    }

    async fn create_pods(
        &self,
        set: &DaemonSet,
        spec: &DaemonSetSpec,
        owner: &OwnerReference,
        hash: &str,
        nodes: &[String],
    ) -> Result<i64> {
        let mut last = 0;
        for chunk in nodes.chunks(BURST) {
            let mut writes = tokio::task::JoinSet::new();
            for node in chunk {
                let pod = new_pod(set, spec, owner, hash, node);
                let client = self.client.clone();
                let namespace = set.metadata.namespace.clone();
                writes.spawn(async move { client.create(namespace.as_deref(), &pod).await });
            }
            let mut failure = None;
            while let Some(done) = writes.join_next().await {
                match done {
                    Ok(Ok(pod)) => {
                        last = last.max(revision_of(&pod));
                        self.recorder.record(
                            reference_to(set),
                            EventType::Normal,
                            "SuccessfulCreate",
                            format!("Created pod: {}", pod.metadata.name.unwrap_or_default()),
                        );
                    }
                    Ok(Err(e)) => failure = Some(e),
                    Err(e) => failure = Some(ApiError::internal(format!("create task: {e}"))),
                }
            }
            if let Some(e) = failure {
                self.recorder.record(
                    reference_to(set),
                    EventType::Warning,
                    "FailedCreate",
                    format!("Error creating: {e}"),
                );
                return Err(e);
            }
        }
        Ok(last)
    }

    async fn delete_pod(&self, set: &DaemonSet, pod: &Pod) -> Result<()> {
        let key = ObjectKey::of(pod);
        let options = DeleteOptions { precondition_uid: pod.metadata.uid.clone(), ..DeleteOptions::default() };
        match self.client.delete::<Pod>(key.namespace(), &key.name, &options).await {
            Ok(_) | Err(ApiError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
        self.recorder.record(
            reference_to(set),
            EventType::Normal,
            "SuccessfulDelete",
            format!("Deleted pod: {}", key.name),
        );
        Ok(())
    }
}

/// Which nodes get a pod and which pods go: kube's `podsShouldBeOnNode` for every node,
/// then the rolling update.
fn plan(spec: &DaemonSetSpec, nodes: &BTreeMap<String, NodeState>, hash: &str) -> Plan {
    let mut plan = Plan::default();
    let rolling = spec.update_strategy.as_ref().is_none_or(|s| s.type_.as_deref() != Some("OnDelete"));
    let rolling_update = spec.update_strategy.as_ref().and_then(|s| s.rolling_update.as_ref());
    let desired = nodes.values().filter(|n| n.should_run).count() as i32;
    let max_surge = if rolling { scaled(rolling_update.and_then(|r| r.max_surge.as_ref()), desired, 0) } else { 0 };
    let max_unavailable = match scaled(rolling_update.and_then(|r| r.max_unavailable.as_ref()), desired, 1) {
        0 if max_surge == 0 => 1,
        n => n,
    };
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let available = |p: &Pod| is_available(p, min_ready);

    // Nodes whose pod is missing or not available count against maxUnavailable; nodes
    // carrying an old and a new pod count against maxSurge.
    let mut unavailable = 0;
    let mut surging = 0;
    let mut old_available: Vec<(&str, &Arc<Pod>)> = Vec::new();
    for (name, node) in nodes {
        if !node.should_run {
            if !node.should_continue {
                plan.delete.extend(node.active.iter().map(|p| (p.clone(), "not eligible")));
            }
            continue;
        }
        let (new, old): (Vec<&Arc<Pod>>, Vec<&Arc<Pod>>) = node.active.iter().partition(|p| hash_label(p) == hash);
        if node.active.is_empty() {
            plan.create_on.push(name.clone());
            unavailable += 1;
            continue;
        }
        // One pod per node: beyond the kept ones (the oldest; while surging, the oldest
        // of each revision), the rest go.
        let keep: Vec<&Arc<Pod>> = if max_surge > 0 {
            new.first().into_iter().chain(old.first()).copied().collect()
        } else {
            node.active.first().into_iter().collect()
        };
        for pod in &node.active {
            if !keep.iter().any(|k| Arc::ptr_eq(k, pod)) {
                plan.delete.push((pod.clone(), "duplicate"));
            }
        }
        if !rolling {
            if !keep.iter().any(|p| available(p)) {
                unavailable += 1;
            }
            continue;
        }
        let new_pod = keep.iter().find(|p| hash_label(p) == hash);
        let old_pod = keep.iter().find(|p| hash_label(p) != hash);
        match (new_pod, old_pod) {
            (Some(new), Some(old)) => {
                surging += 1;
                if available(new) {
                    plan.delete.push(((*old).clone(), "replaced"));
                } else if !available(old) {
                    unavailable += 1;
                }
            }
            (Some(new), None) => {
                if !available(new) {
                    unavailable += 1;
                }
            }
            (None, Some(old)) => {
                if !available(old) {
                    // Costs nothing in availability: replace it at once.
                    plan.delete.push(((*old).clone(), "old and unavailable"));
                    unavailable += 1;
                } else {
                    old_available.push((name.as_str(), *old));
                }
            }
            (None, None) => {}
        }
    }
    for (node, old) in old_available {
        if max_surge > 0 {
            if surging < max_surge {
                plan.create_on.push(node.to_string());
                surging += 1;
            }
        } else if unavailable < max_unavailable {
            plan.delete.push((old.clone(), "rolling update"));
            unavailable += 1;
        }
    }
    plan
}

fn new_pod(set: &DaemonSet, spec: &DaemonSetSpec, owner: &OwnerReference, hash: &str, node: &str) -> Pod {
    let meta = spec.template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(REVISION_HASH.into(), hash.into());
    labels.insert(TEMPLATE_GENERATION.into(), set.metadata.generation.unwrap_or(1).to_string());
    let mut pod_spec = spec.template.spec.clone().unwrap_or_default();
    add_daemon_tolerations(&mut pod_spec);
    pin_to_node(&mut pod_spec, node);
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", set.metadata.name.as_deref().unwrap_or_default())),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

fn status_of(
    set: &DaemonSet,
    nodes: &BTreeMap<String, NodeState>,
    hash: &str,
    collision_count: i32,
) -> DaemonSetStatus {
    let min_ready = set.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let mut status = DaemonSetStatus {
        observed_generation: set.metadata.generation,
        collision_count: Some(collision_count),
        conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
        ..DaemonSetStatus::default()
    };
    let (mut available, mut updated) = (0, 0);
    for node in nodes.values() {
        if !node.should_run {
            if !node.active.is_empty() {
                status.number_misscheduled += 1;
            }
            continue;
        }
        status.desired_number_scheduled += 1;
        // The pod that stands for the node: the updated one if there is one.
        let Some(pod) = node.active.iter().find(|p| hash_label(p) == hash).or(node.active.first()) else { continue };
        status.current_number_scheduled += 1;
        if is_ready(pod) {
            status.number_ready += 1;
            if is_available(pod, min_ready) {
                available += 1;
            }
        }
        if hash_label(pod) == hash {
            updated += 1;
        }
    }
    status.number_available = (available > 0).then_some(available);
    status.updated_number_scheduled = (updated > 0).then_some(updated);
    let unavailable = status.desired_number_scheduled - available;
    status.number_unavailable = (unavailable > 0).then_some(unavailable);
    status
}

fn with_status(set: &DaemonSet, status: &mut DaemonSetStatus) -> Option<DaemonSet> {
    let old = set.status.clone().unwrap_or_default();
    (*status != old).then(|| DaemonSet { status: Some(status.clone()), ..set.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, hash: &str, ready: bool) -> Arc<Pod> {
        let conditions =
            if ready { serde_json::json!([{"type": "Ready", "status": "True"}]) } else { serde_json::json!([]) };
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "labels": {REVISION_HASH: hash}},
                "spec": {"containers": []},
                "status": {"phase": "Running", "conditions": conditions}
            }))
            .unwrap(),
        )
    }

    fn node(active: Vec<Arc<Pod>>) -> NodeState {
        NodeState { should_run: true, should_continue: true, active }
    }

    fn spec(strategy: serde_json::Value) -> DaemonSetSpec {
        serde_json::from_value(serde_json::json!({"selector": {}, "template": {}, "updateStrategy": strategy})).unwrap()
    }

    fn names(pods: &[(Arc<Pod>, &str)]) -> Vec<String> {
        pods.iter().map(|(p, _)| p.metadata.name.clone().unwrap()).collect()
    }

    #[test]
    fn rolling_update_replaces_within_max_unavailable() {
        let nodes: BTreeMap<String, NodeState> = [
            ("a".to_string(), node(vec![pod("a-old", "old", true)])),
            ("b".to_string(), node(vec![pod("b-old", "old", true)])),
            ("c".to_string(), node(vec![pod("c-new", "new", true)])),
        ]
        .into_iter()
        .collect();
        let one = plan(&spec(serde_json::json!({"type": "RollingUpdate"})), &nodes, "new");
        assert_eq!(names(&one.delete), ["a-old"]);
        assert!(one.create_on.is_empty());
        let two = plan(
            &spec(serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}})),
            &nodes,
            "new",
        );
        assert_eq!(names(&two.delete), ["a-old", "b-old"]);
        let on_delete = plan(&spec(serde_json::json!({"type": "OnDelete"})), &nodes, "new");
        assert!(on_delete.delete.is_empty());
    }

    #[test]
    fn a_missing_or_unready_pod_uses_up_the_budget() {
        let nodes: BTreeMap<String, NodeState> = [
            ("a".to_string(), node(vec![pod("a-old", "old", true)])),
            ("b".to_string(), node(vec![])),
            ("c".to_string(), node(vec![pod("c-old", "old", false)])),
        ]
        .into_iter()
        .collect();
        let p = plan(&spec(serde_json::json!({"type": "RollingUpdate"})), &nodes, "new");
        assert_eq!(p.create_on, ["b"]);
        assert_eq!(names(&p.delete), ["c-old"], "an unavailable old pod goes at once; a-old must wait");
    }

    #[test]
    fn surge_starts_the_new_pod_first_and_drops_the_old_once_available() {
        let nodes: BTreeMap<String, NodeState> = [
            ("a".to_string(), node(vec![pod("a-old", "old", true), pod("a-new", "new", true)])),
            ("b".to_string(), node(vec![pod("b-old", "old", true), pod("b-new", "new", false)])),
            ("c".to_string(), node(vec![pod("c-old", "old", true)])),
            ("d".to_string(), node(vec![pod("d-old", "old", true)])),
        ]
        .into_iter()
        .collect();
        let surge =
            spec(serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 3, "maxUnavailable": 0}}));
        let p = plan(&surge, &nodes, "new");
        assert_eq!(names(&p.delete), ["a-old"]);
        assert_eq!(p.create_on, ["c"], "a and b already surge; one more within maxSurge 3");
    }

    #[test]
    fn ineligible_nodes_lose_their_pods_unless_only_no_schedule() {
        let mut evicting = node(vec![pod("x", "new", true)]);
        evicting.should_run = false;
        evicting.should_continue = false;
        let mut cordoned = node(vec![pod("y", "new", true)]);
        cordoned.should_run = false;
        let nodes: BTreeMap<String, NodeState> =
            [("x".to_string(), evicting), ("y".to_string(), cordoned)].into_iter().collect();
        let p = plan(&spec(serde_json::json!({"type": "RollingUpdate"})), &nodes, "new");
        assert_eq!(names(&p.delete), ["x"]);
    }

    #[test]
    fn daemon_pods_are_pinned_and_tolerate_node_trouble() {
        let set: DaemonSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "agent", "namespace": "kube-system", "uid": "u", "generation": 3},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "c"}],
                    "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]}}}
        }))
        .unwrap();
        let spec = set.spec.clone().unwrap();
        let pod = new_pod(&set, &spec, &owner_of(&set), "h", "node-1");
        assert_eq!(target_node(&pod).as_deref(), Some("node-1"));
        let labels = pod.metadata.labels.clone().unwrap();
        assert_eq!(labels[TEMPLATE_GENERATION], "3");
        assert_eq!(labels[REVISION_HASH], "h");
        let tolerations = pod.spec.unwrap().tolerations.unwrap();
        assert_eq!(tolerations.len(), 6);
        let not_ready: Vec<_> =
            tolerations.iter().filter(|t| t.key.as_deref() == Some("node.kubernetes.io/not-ready")).collect();
        assert_eq!(not_ready.len(), 1);
        assert_eq!(not_ready[0].toleration_seconds, None, "a bounded toleration is replaced by an unbounded one");
    }
}
