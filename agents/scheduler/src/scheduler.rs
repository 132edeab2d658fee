//! The scheduling loop. One task owns the cluster snapshot (nodes and the pods on them) and
//! takes pending pods one at a time, highest priority first: filter the nodes (stopping once
//! enough feasible ones are found, as kube-scheduler's percentageOfNodesToScore does), score
//! those, assume the pod on the best node and go on. Bindings are written in the background
//! (many at a time), so the loop never waits on the store; a failed binding un-assumes the
//! pod and retries it with backoff. Pods no node can take get a FailedScheduling event and a
//! PodScheduled=False condition and wait until the cluster changes.
//!
//! Pods with PersistentVolumeClaims: before the binding, the binder writes what
//! VolumeBinding decided (`framework::volume_bindings`): static volumes reserved for their
//! claims, `volume.kubernetes.io/selected-node` on claims to provision. Unlike
//! kube-scheduler's PreBind it does not then wait for the claims to be bound: the pod is
//! bound at once, and it is the node agent's (issue 5) to wait for the pod's volumes before
//! starting it, as the kubelet does; no binding slot is held for the length of a
//! provisioning. The price: if the PersistentVolume controller cannot provision, the pod
//! stays on its node with an unbound claim, where kube would have tried it elsewhere.
//!
//! Preemption respects PodDisruptionBudgets, read from their informer's cache when a pod
//! preempts (as kube lists them then). The selectors of Services, ReplicationControllers,
//! ReplicaSets and StatefulSets go into the snapshot, from which PodTopologySpread derives
//! the default constraints of pods that declare none.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod, ReplicationController, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use keel_api::patch::PatchType;
use keel_runtime::events::{EventType, reference_to};
use keel_runtime::{Client, Informer, ObjectKey, Recorder};
use tokio::sync::{Semaphore, mpsc};

use crate::framework::{self, Diagnosis, Snapshot, VolumeBinding};

pub const DEFAULT_SCHEDULER: &str = "default-scheduler";
/// Bindings in flight at once.
const BINDERS: usize = 256;
/// Unschedulable pods are tried again at least this often even if nothing seems to change.
const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(60);

/// What the loop has done, for the bench and for operators (logged every few seconds).
#[derive(Default)]
pub struct Metrics {
    pub attempts: AtomicU64,
    pub scheduled: AtomicU64,
    pub bound: AtomicU64,
    pub unschedulable: AtomicU64,
    pub bind_failures: AtomicU64,
    pub preemptions: AtomicU64,
}

enum Change {
    Node(Option<Arc<Node>>, Option<Arc<Node>>),
    Pod(Option<Arc<Pod>>, Option<Arc<Pod>>),
    Claim(Option<Arc<PersistentVolumeClaim>>, Option<Arc<PersistentVolumeClaim>>),
    Volume(Option<Arc<PersistentVolume>>, Option<Arc<PersistentVolume>>),
    Class(Option<Arc<StorageClass>>, Option<Arc<StorageClass>>),
    /// A Service's or controller's selector: the new one, or the old one when it is gone.
    SpreadSource(Option<framework::SpreadSource>, Option<framework::SpreadSource>),
    /// The pod, the error, and the claims and volumes as they were before the loop assumed
    /// its volume bindings.
    BindFailed(Arc<Pod>, String, Vec<Assumed>),
}

/// A claim or volume as it was before the loop assumed a volume binding on it.
enum Assumed {
    Claim(Arc<PersistentVolumeClaim>),
    Volume(Arc<PersistentVolume>),
}

/// What the binder writes for a volume binding, before the pod's binding.
enum VolumeWrite {
    Reserve(Box<PersistentVolume>),
    SelectNode { namespace: String, claim: String },
}

#[derive(PartialEq, Eq)]
struct Queued {
    priority: i32,
    seq: u64,
    key: ObjectKey,
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        // Highest priority first, then first come first served.
        self.priority.cmp(&other.priority).then(other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

pub struct Scheduler {
    client: Client,
    name: String,
    recorder: Recorder,
    pub metrics: Arc<Metrics>,
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded") | Some("Failed"))
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty())
}

fn scheduler_name(pod: &Pod) -> &str {
    pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()).unwrap_or(DEFAULT_SCHEDULER)
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

impl Scheduler {
    /// A scheduler that takes the pods whose `spec.schedulerName` is `name`.
    pub fn new(client: Client, name: &str) -> Scheduler {
        let recorder = Recorder::new(client.clone());
        Scheduler { client, name: name.to_string(), recorder, metrics: Arc::default() }
    }

    /// Runs until the task is dropped.
    pub async fn run(self) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Change>();
        let nodes = Informer::<Node>::new(self.client.clone());
        let pods = Informer::<Pod>::new(self.client.clone());
        {
            let tx = tx.clone();
            nodes.on_change(move |old, new| {
                let _ = tx.send(Change::Node(old.cloned(), new.cloned()));
            });
        }
        {
            let tx = tx.clone();
            pods.on_change(move |old, new| {
                let _ = tx.send(Change::Pod(old.cloned(), new.cloned()));
            });
        }
        let claims = Informer::<PersistentVolumeClaim>::new(self.client.clone());
        let volumes = Informer::<PersistentVolume>::new(self.client.clone());
        let classes = Informer::<StorageClass>::new(self.client.clone());
        {
            let tx = tx.clone();
            claims.on_change(move |old, new| {
                let _ = tx.send(Change::Claim(old.cloned(), new.cloned()));
            });
        }
        {
            let tx = tx.clone();
            volumes.on_change(move |old, new| {
                let _ = tx.send(Change::Volume(old.cloned(), new.cloned()));
            });
        }
        {
            let tx = tx.clone();
            classes.on_change(move |old, new| {
                let _ = tx.send(Change::Class(old.cloned(), new.cloned()));
            });
        }
        // What PodTopologySpread's default constraints select.
        let services = Informer::<Service>::new(self.client.clone());
        let replication_controllers = Informer::<ReplicationController>::new(self.client.clone());
        let replica_sets = Informer::<ReplicaSet>::new(self.client.clone());
        let stateful_sets = Informer::<StatefulSet>::new(self.client.clone());
        {
            let tx = tx.clone();
            services.on_change(move |old, new| {
                let _ = tx.send(spread_source_change(old, new));
            });
        }
        {
            let tx = tx.clone();
            replication_controllers.on_change(move |old, new| {
                let _ = tx.send(spread_source_change(old, new));
            });
        }
        {
            let tx = tx.clone();
            replica_sets.on_change(move |old, new| {
                let _ = tx.send(spread_source_change(old, new));
            });
        }
        {
            let tx = tx.clone();
            stateful_sets.on_change(move |old, new| {
                let _ = tx.send(spread_source_change(old, new));
            });
        }
        // Read only when a pod preempts; a budget changing makes no pending pod fit.
        let pdbs = Informer::<PodDisruptionBudget>::new(self.client.clone());
        let node_task = tokio::spawn(nodes.clone().run());
        let pod_task = tokio::spawn(pods.clone().run());
        let _volume_tasks = [
            keel_runtime::AbortOnDrop::spawn(claims.clone().run()),
            keel_runtime::AbortOnDrop::spawn(volumes.clone().run()),
            keel_runtime::AbortOnDrop::spawn(classes.clone().run()),
        ];
        let _spread_and_budget_tasks = [
            keel_runtime::AbortOnDrop::spawn(services.clone().run()),
            keel_runtime::AbortOnDrop::spawn(replication_controllers.clone().run()),
            keel_runtime::AbortOnDrop::spawn(replica_sets.clone().run()),
            keel_runtime::AbortOnDrop::spawn(stateful_sets.clone().run()),
            keel_runtime::AbortOnDrop::spawn(pdbs.clone().run()),
        ];
        nodes.wait_synced().await;
        pods.wait_synced().await;
        claims.wait_synced().await;
        volumes.wait_synced().await;
        classes.wait_synced().await;
        services.wait_synced().await;
        replication_controllers.wait_synced().await;
        replica_sets.wait_synced().await;
        stateful_sets.wait_synced().await;
        pdbs.wait_synced().await;
        tracing::info!(scheduler = %self.name, nodes = nodes.len(), pods = pods.len(), "scheduler caches synced");

        let mut state = State::default();
        let binders = Arc::new(Semaphore::new(BINDERS));
        let mut last_log = Instant::now();
        loop {
            // Take in everything that changed, then schedule what is pending.
            let mut changed = false;
            while let Ok(change) = rx.try_recv() {
                changed |= state.apply(change, &self.name);
            }
            if changed || state.last_flush.elapsed() > UNSCHEDULABLE_RETRY {
                state.retry_unschedulable();
            }
            if last_log.elapsed() > Duration::from_secs(10) {
                last_log = Instant::now();
                let m = &self.metrics;
                tracing::info!(
                    pending = state.queue.len(),
                    unschedulable = state.unschedulable.len(),
                    scheduled = m.scheduled.load(AtomicOrdering::Relaxed),
                    bound = m.bound.load(AtomicOrdering::Relaxed),
                    bind_failures = m.bind_failures.load(AtomicOrdering::Relaxed),
                    "scheduler"
                );
            }
            let Some(queued) = state.queue.pop() else {
                // Idle: wait for a change (or the periodic retry of unschedulable pods).
                match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
                    Ok(Some(change)) => {
                        let changed = state.apply(change, &self.name);
                        if changed {
                            state.retry_unschedulable();
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {}
                }
                continue;
            };
            let Some(pod) = state.pending.get(&queued.key).cloned() else { continue };
            if queued.seq != state.seq_of.get(&queued.key).copied().unwrap_or(0) {
                continue; // superseded by a later enqueue of the same pod
            }
            self.metrics.attempts.fetch_add(1, AtomicOrdering::Relaxed);
            match self.schedule_one(&mut state, &pod) {
                Ok((node, volume_bindings)) => {
                    state.assume(&queued.key, &pod, &node);
                    let (writes, assumed) = state.assume_volumes(&node, &volume_bindings);
                    self.metrics.scheduled.fetch_add(1, AtomicOrdering::Relaxed);
                    let permit = binders.clone().acquire_owned().await;
                    let client = self.client.clone();
                    let recorder = self.recorder.clone();
                    let metrics = self.metrics.clone();
                    let tx = tx.clone();
                    let pod = pod.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        let key = ObjectKey::of(pod.as_ref());
                        let span = tracing::debug_span!("bind", pod = %key, node = %node);
                        let outcome = tracing::Instrument::instrument(
                            async {
                                write_volumes(&client, &node, writes).await?;
                                client.bind(&key.namespace, &key.name, &node).await
                            },
                            span,
                        )
                        .await;
                        match outcome {
                            Ok(()) => {
                                metrics.bound.fetch_add(1, AtomicOrdering::Relaxed);
                                recorder.record(
                                    reference_to(pod.as_ref()),
                                    EventType::Normal,
                                    "Scheduled",
                                    format!("Successfully assigned {key} to {node}"),
                                );
                            }
                            Err(e) => {
                                metrics.bind_failures.fetch_add(1, AtomicOrdering::Relaxed);
                                let _ = tx.send(Change::BindFailed(pod, e.to_string(), assumed));
                            }
                        }
                    });
                }
                Err(failure) => {
                    self.metrics.unschedulable.fetch_add(1, AtomicOrdering::Relaxed);
                    self.unschedulable(&mut state, &queued.key, &pod, failure, &pdbs).await;
                }
            }
        }
        node_task.abort();
        pod_task.abort();
    }

    /// Picks a node for `pod` and says what to write for its volumes before binding it
    /// there, or says why none fits (the FailedScheduling message) and which nodes
    /// preemption could help on.
    fn schedule_one(&self, state: &mut State, pod: &Pod) -> Result<(String, Vec<VolumeBinding>), Unschedulable> {
        let snapshot = &state.snapshot;
        let total = snapshot.len();
        let mut diagnosis = Diagnosis::new(total);
        if total == 0 {
            return Err(Unschedulable {
                message: "0/0 nodes are available: no nodes registered.".into(),
                preempt: None,
            });
        }
        let cycle = match framework::prefilter(pod, snapshot) {
            Ok(cycle) => cycle,
            Err(failure) => {
                diagnosis.record_prefilter(&failure);
                return Err(Unschedulable { message: diagnosis.message(), preempt: None });
            }
        };
        let wanted = framework::nodes_to_evaluate(total);
        let mut feasible = Vec::with_capacity(wanted.min(total));
        let mut resolvable = Vec::new();
        let narrowed: Option<Vec<usize>> = cycle.candidate_nodes().map(<[usize]>::to_vec);
        let order: Box<dyn Iterator<Item = usize>> = match &narrowed {
            Some(candidates) => Box::new(candidates.iter().copied()),
            None => {
                let start = state.next_start % total;
                Box::new((0..total).map(move |offset| (start + offset) % total))
            }
        };
        let mut examined = 0;
        for index in order {
            examined += 1;
            let Some(node) = snapshot.node(index) else { continue };
            match framework::filter(pod, &cycle, node) {
                Ok(()) => {
                    feasible.push(index);
                    if feasible.len() >= wanted {
                        break;
                    }
                }
                Err(failure) => {
                    if failure.resolvable {
                        resolvable.push(index);
                    }
                    diagnosis.record(&failure);
                }
            }
        }
        if narrowed.is_none() {
            state.next_start = (state.next_start + examined) % total;
        } else if let Some(candidates) = &narrowed {
            // Nodes outside the narrowed set fail node affinity (matchFields).
            let outside = total.saturating_sub(candidates.len());
            for _ in 0..outside {
                diagnosis
                    .record(&framework::Failure::unresolvable("NodeAffinity", framework::Reason::NodeAffinityMismatch));
            }
        }
        if feasible.is_empty() {
            return Err(Unschedulable {
                message: diagnosis.message(),
                preempt: Some(Box::new((cycle, resolvable, diagnosis))),
            });
        }
        let scored = framework::score_nodes(pod, &cycle, snapshot, &feasible);
        // Highest score wins; ties go to a random one of them, as kube-scheduler does.
        let top = scored.iter().map(|(_, score)| *score).max().unwrap_or(0);
        let tied: Vec<usize> = scored.iter().filter(|(_, score)| *score == top).map(|(index, _)| *index).collect();
        let best = match tied.len() {
            0 => feasible[0],
            1 => tied[0],
            n => tied[state.tie_breaker(n)],
        };
        let Some(chosen) = state.snapshot.node(best) else {
            return Err(Unschedulable { message: diagnosis.message(), preempt: None });
        };
        Ok((chosen.name().to_string(), framework::volume_bindings(&cycle, chosen.node())))
    }

    async fn unschedulable(
        &self,
        state: &mut State,
        key: &ObjectKey,
        pod: &Arc<Pod>,
        failure: Unschedulable,
        pdbs: &Informer<PodDisruptionBudget>,
    ) {
        // Preemption: a node where evicting lower-priority pods makes room.
        let mut message = failure.message.clone();
        if let Some(preempt) = failure.preempt {
            let (cycle, candidates, mut diagnosis) = *preempt;
            match framework::eligible_to_preempt(pod) {
                Err(note) => diagnosis.preemption_not_eligible(note),
                Ok(()) => {
                    let enough = framework::preemption_candidates_to_find(state.snapshot.len());
                    let budgets = framework::DisruptionBudgets::new(&pdbs.list());
                    let mut found = Vec::new();
                    for index in candidates {
                        let Some(node) = state.snapshot.node(index) else { continue };
                        match framework::select_victims(pod, &cycle, node, &budgets) {
                            Ok(victims) => {
                                found.push((index, victims));
                                if framework::enough_preemption_candidates(&found, enough) {
                                    break;
                                }
                            }
                            Err(failure) => diagnosis.record_preemption(&failure),
                        }
                    }
                    if let Some(chosen) = framework::pick_preemption_node(&found)
                        && let Some((index, victims)) = found.into_iter().find(|(index, _)| *index == chosen)
                    {
                        let node = state.snapshot.node(index).map(|n| n.name().to_string()).unwrap_or_default();
                        self.preempt(pod, key, &node, &victims.pods).await;
                    }
                }
            }
            message = diagnosis.message_after_preemption();
        }
        let failure = Unschedulable { message, preempt: None };
        self.recorder.record(
            reference_to(pod.as_ref()),
            EventType::Warning,
            "FailedScheduling",
            failure.message.clone(),
        );
        let already = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
            .is_some_and(|c| c.status == "False" && c.message.as_deref() == Some(failure.message.as_str()));
        if !already {
            let patch = serde_json::json!({"status": {"conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": failure.message, "lastTransitionTime": keel_runtime::now(),
            }]}});
            // Written in the background: the loop goes on with the next pod.
            let client = self.client.clone();
            let key = key.clone();
            tokio::spawn(async move {
                if let Err(e) = client
                    .patch::<Pod>(key.namespace(), &key.name, Some("status"), PatchType::StrategicMerge, patch)
                    .await
                {
                    tracing::debug!(pod = %key, error = %e, "PodScheduled condition not written");
                }
            });
        }
        state.unschedulable.insert(key.clone());
    }
}

impl Scheduler {
    /// Deletes the victims and nominates the node; the pod is tried again when they are gone.
    async fn preempt(&self, pod: &Pod, key: &ObjectKey, node: &str, victims: &[Arc<Pod>]) {
        self.metrics.preemptions.fetch_add(1, AtomicOrdering::Relaxed);
        for victim in victims {
            let victim_key = ObjectKey::of(victim.as_ref());
            self.recorder.record(
                reference_to(victim.as_ref()),
                EventType::Normal,
                "Preempted",
                format!("Preempted by pod {} on node {node}", pod.metadata.uid.as_deref().unwrap_or("")),
            );
            let options = keel_api::rest::DeleteOptions {
                precondition_uid: victim.metadata.uid.clone(),
                ..keel_api::rest::DeleteOptions::default()
            };
            if let Err(e) = self.client.delete::<Pod>(victim_key.namespace(), &victim_key.name, &options).await {
                tracing::info!(victim = %victim_key, error = %e, "preemption: victim not deleted");
            }
        }
        let patch = serde_json::json!({"status": {"nominatedNodeName": node}});
        if let Err(e) =
            self.client.patch::<Pod>(key.namespace(), &key.name, Some("status"), PatchType::Merge, patch).await
        {
            tracing::debug!(pod = %key, error = %e, "nominatedNodeName not written");
        }
    }
}

struct Unschedulable {
    message: String,
    /// The cycle, the nodes preemption may help on, and what the filters said.
    preempt: Option<Box<(framework::CycleState, Vec<usize>, Diagnosis)>>,
}

#[derive(Default)]
struct State {
    snapshot: Snapshot,
    /// Pods bound to a node the snapshot does not know (yet): added when it appears.
    homeless: HashMap<ObjectKey, Arc<Pod>>,
    /// Pending pods of this scheduler by key, and the sequence number of their latest enqueue.
    pending: HashMap<ObjectKey, Arc<Pod>>,
    seq_of: HashMap<ObjectKey, u64>,
    queue: BinaryHeap<Queued>,
    seq: u64,
    unschedulable: HashSet<ObjectKey>,
    /// Pods assumed on a node while their binding is written.
    assumed: HashSet<ObjectKey>,
    next_start: usize,
    last_flush: Option<Instant>,
    random: u64,
}

trait Elapsed {
    fn elapsed(&self) -> Duration;
}

impl Elapsed for Option<Instant> {
    fn elapsed(&self) -> Duration {
        self.map(|t| t.elapsed()).unwrap_or(Duration::MAX)
    }
}

impl State {
    fn enqueue(&mut self, key: ObjectKey, pod: Arc<Pod>) {
        self.seq += 1;
        self.seq_of.insert(key.clone(), self.seq);
        self.queue.push(Queued { priority: priority(&pod), seq: self.seq, key: key.clone() });
        self.pending.insert(key, pod);
    }

    /// A cheap pseudo-random index below `n` (xorshift), for breaking score ties.
    fn tie_breaker(&mut self, n: usize) -> usize {
        if self.random == 0 {
            self.random = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9e37_79b9_7f4a_7c15)
                | 1;
        }
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        (self.random % n as u64) as usize
    }

    /// Accounts a bound, running pod on its node.
    fn place(&mut self, key: ObjectKey, pod: Arc<Pod>) {
        if !self.snapshot.add_pod(pod.clone()) {
            self.homeless.insert(key, pod);
        } else {
            self.homeless.remove(&key);
        }
    }

    /// Applies an informer change; true when it may make an unschedulable pod fit.
    fn apply(&mut self, change: Change, scheduler: &str) -> bool {
        match change {
            Change::Node(_, Some(node)) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                self.snapshot.upsert_node(node);
                let arrived: Vec<(ObjectKey, Arc<Pod>)> = self
                    .homeless
                    .iter()
                    .filter(|(_, p)| node_name(p) == Some(name.as_str()))
                    .map(|(k, p)| (k.clone(), p.clone()))
                    .collect();
                for (key, pod) in arrived {
                    self.place(key, pod);
                }
                true
            }
            Change::Node(Some(old), None) => {
                self.snapshot.remove_node(old.metadata.name.as_deref().unwrap_or(""));
                false
            }
            Change::Node(None, None) => false,
            Change::Pod(old, new) => {
                let mut freed = false;
                if let (Some(old), None) = (&old, &new) {
                    let key = ObjectKey::of(old.as_ref());
                    freed |= self.snapshot.remove_pod(old);
                    self.homeless.remove(&key);
                    self.forget(&key);
                }
                if let Some(new) = new {
                    let key = ObjectKey::of(new.as_ref());
                    match node_name(&new) {
                        Some(_) => {
                            // Bound (by us or anyone): account it on its node for real.
                            self.pending.remove(&key);
                            self.seq_of.remove(&key);
                            self.unschedulable.remove(&key);
                            self.assumed.remove(&key);
                            if is_terminal(&new) {
                                freed |= self.snapshot.remove_pod(&new);
                                self.homeless.remove(&key);
                            } else {
                                self.place(key, new);
                            }
                        }
                        None => {
                            let ours = scheduler_name(&new) == scheduler
                                && new.metadata.deletion_timestamp.is_none()
                                && !is_terminal(&new);
                            if !ours {
                                self.forget(&key);
                            } else if !self.assumed.contains(&key) {
                                if self.unschedulable.contains(&key) || self.pending.contains_key(&key) {
                                    // Known and waiting: keep its place, update what we know.
                                    self.pending.insert(key, new);
                                } else {
                                    self.enqueue(key, new);
                                }
                            }
                        }
                    }
                }
                freed
            }
            Change::Claim(old, new) => {
                match (old, new) {
                    (_, Some(claim)) => self.snapshot.upsert_claim(claim),
                    (Some(claim), None) => {
                        let key = ObjectKey::of(claim.as_ref());
                        self.snapshot.remove_claim(&key.namespace, &key.name);
                    }
                    (None, None) => {}
                }
                true
            }
            Change::Volume(old, new) => {
                match (old, new) {
                    (_, Some(volume)) => self.snapshot.upsert_volume(volume),
                    (Some(volume), None) => {
                        self.snapshot.remove_volume(volume.metadata.name.as_deref().unwrap_or(""));
                    }
                    (None, None) => {}
                }
                true
            }
            Change::Class(old, new) => {
                match (old, new) {
                    (_, Some(class)) => self.snapshot.upsert_storage_class(class),
                    (Some(class), None) => {
                        self.snapshot.remove_storage_class(class.metadata.name.as_deref().unwrap_or(""));
                    }
                    (None, None) => {}
                }
                true
            }
            Change::SpreadSource(old, new) => {
                match (old, new) {
                    (_, Some(source)) => self.snapshot.upsert_spread_source(source),
                    (Some(source), None) => self.snapshot.remove_spread_source(&source),
                    (None, None) => {}
                }
                // Selectors only move scores: no pod that fitted nowhere fits now.
                false
            }
            Change::BindFailed(pod, error, assumed) => {
                let key = ObjectKey::of(pod.as_ref());
                tracing::debug!(pod = %key, error, "binding failed; retrying");
                self.forget_volumes(assumed);
                if self.assumed.remove(&key) {
                    self.snapshot.remove_pod(&pod);
                }
                if self.pending.contains_key(&key) {
                    self.enqueue(key, pod);
                }
                true
            }
        }
    }

    fn forget(&mut self, key: &ObjectKey) {
        self.pending.remove(key);
        self.seq_of.remove(key);
        self.unschedulable.remove(key);
        if self.assumed.remove(key)
            && let Some(index) = self.snapshot.node_of_pod(&key.namespace, &key.name)
            && let Some(pod) =
                self.snapshot.node(index).and_then(|n| n.pods().find(|p| ObjectKey::of(p.as_ref()) == *key).cloned())
        {
            self.snapshot.remove_pod(&pod);
        }
    }

    fn assume(&mut self, key: &ObjectKey, pod: &Arc<Pod>, node: &str) {
        let Some(index) = self.snapshot.index_of(node) else { return };
        let mut assumed = (**pod).clone();
        assumed.spec.get_or_insert_with(Default::default).node_name = Some(node.to_string());
        self.snapshot.add_pod_to(index, Arc::new(assumed));
        self.assumed.insert(key.clone());
    }

    /// Assumes the pod's volume bindings in the snapshot (a static volume reserved, a claim
    /// sent to the node), so the next pods see them taken before the informers catch up.
    /// Returns what the binder has to write and what to put back if it fails.
    fn assume_volumes(&mut self, node: &str, bindings: &[VolumeBinding]) -> (Vec<VolumeWrite>, Vec<Assumed>) {
        let mut writes = Vec::with_capacity(bindings.len());
        let mut assumed = Vec::with_capacity(bindings.len());
        for binding in bindings {
            match binding {
                VolumeBinding::Reserve { claim, volume } => {
                    let reserved = framework::volume::reserve_for(volume, claim);
                    self.snapshot.upsert_volume(Arc::new(reserved.clone()));
                    writes.push(VolumeWrite::Reserve(Box::new(reserved)));
                    assumed.push(Assumed::Volume(volume.clone()));
                }
                VolumeBinding::Provision { claim } => {
                    self.snapshot.upsert_claim(Arc::new(framework::volume::with_selected_node(claim, node)));
                    let key = ObjectKey::of(claim.as_ref());
                    writes.push(VolumeWrite::SelectNode { namespace: key.namespace, claim: key.name });
                    assumed.push(Assumed::Claim(claim.clone()));
                }
            }
        }
        (writes, assumed)
    }

    /// Puts back what `assume_volumes` changed, unless the informers have brought a newer
    /// version meanwhile (an assumed object keeps the resourceVersion it was read with).
    fn forget_volumes(&mut self, assumed: Vec<Assumed>) {
        for original in assumed {
            match original {
                Assumed::Volume(volume) => {
                    let name = volume.metadata.name.as_deref().unwrap_or("");
                    let current = self.snapshot.volume(name).and_then(|v| v.metadata.resource_version.clone());
                    if current == volume.metadata.resource_version {
                        self.snapshot.upsert_volume(volume);
                    }
                }
                Assumed::Claim(claim) => {
                    let key = ObjectKey::of(claim.as_ref());
                    let current = self
                        .snapshot
                        .claim(&key.namespace, &key.name)
                        .and_then(|c| c.metadata.resource_version.clone());
                    if current == claim.metadata.resource_version {
                        self.snapshot.upsert_claim(claim);
                    }
                }
            }
        }
    }

    fn retry_unschedulable(&mut self) {
        self.last_flush = Some(Instant::now());
        let waiting: Vec<ObjectKey> = self.unschedulable.drain().collect();
        for key in waiting {
            if let Some(pod) = self.pending.get(&key).cloned() {
                self.enqueue(key, pod);
            }
        }
    }
}

/// What an informer of Services or controllers tells the loop: the new selector, or on
/// deletion the old object's (only its kind, namespace and name are used then).
fn spread_source_change<K>(old: Option<&Arc<K>>, new: Option<&Arc<K>>) -> Change
where
    for<'a> framework::SpreadSource: From<&'a K>,
{
    match new {
        Some(new) => Change::SpreadSource(None, Some(framework::SpreadSource::from(&**new))),
        None => Change::SpreadSource(old.map(|old| framework::SpreadSource::from(&**old)), None),
    }
}

/// Writes a pod's volume bindings: kube's VolumeBinding PreBind without the wait.
async fn write_volumes(client: &Client, node: &str, writes: Vec<VolumeWrite>) -> keel_api::error::Result<()> {
    for write in writes {
        match write {
            VolumeWrite::Reserve(volume) => {
                let name = volume.metadata.name.clone().unwrap_or_default();
                // The resourceVersion read is the precondition: a volume taken meanwhile fails
                // the binding, and the pod is tried again with what the informers then show.
                client.replace(None, &name, volume.as_ref()).await?;
            }
            VolumeWrite::SelectNode { namespace, claim } => {
                let patch =
                    serde_json::json!({"metadata": {"annotations": {framework::volume::ANN_SELECTED_NODE: node}}});
                client.patch::<PersistentVolumeClaim>(Some(&namespace), &claim, None, PatchType::Merge, patch).await?;
            }
        }
    }
    Ok(())
}

/// The scheduler's loop for one term of leadership.
pub fn loops(api: Arc<keel_api::rest::Api>) -> Vec<(&'static str, keel_runtime::leader::Loop)> {
    let scheduler = Scheduler::new(Client::new(api, DEFAULT_SCHEDULER), DEFAULT_SCHEDULER);
    vec![("scheduler", Box::pin(scheduler.run()))]
}
