//! ReplicaSets and ReplicationControllers: keep `spec.replicas` pods matching the template
//! alive, adopt matching orphans, release pods that stopped matching, and report counts.
//!
//! Level-triggered: a reconcile counts the owned, active pods in the informer cache and
//! creates or deletes the difference. After writing it waits until the pod cache has seen
//! its own writes, which is what keeps two reconciles from creating the same pods twice
//! (the job client-go's "expectations" do).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, ReplicationController, ReplicationControllerStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use keel_api::error::Result;
use keel_api::patch::PatchType;
use keel_api::rest::DeleteOptions;
use keel_runtime::events::{EventType, reference_to};
use keel_runtime::informer::controller_uid;
use keel_runtime::{Action, Client, Informer, ObjectKey, Recorder, WorkQueue, labels};

/// Pods created or deleted per step of a slow start (1, 2, 4, ... up to this), so a template
/// that admission refuses fails once, not `replicas` times.
const BURST: usize = 500;
/// How long a reconcile waits for the cache to see its own writes.
const OWN_WRITES: Duration = Duration::from_secs(10);

/// Pod informer indexes this controller reads: pods by their controller's uid, and pods
/// without a controller by namespace (candidates for adoption).
pub const POD_BY_CONTROLLER: &str = "controller";
pub const ORPHAN_POD_BY_NAMESPACE: &str = "orphans";

/// What both kinds have in common, read off either.
pub struct Replicated {
    pub key: ObjectKey,
    pub uid: String,
    pub generation: i64,
    pub replicas: i32,
    pub min_ready_seconds: i32,
    pub selector: Selector,
    pub template: Option<PodTemplateSpec>,
    pub deleting: bool,
    pub owner: OwnerReference,
}

pub enum Selector {
    Set(LabelSelector),
    Map(BTreeMap<String, String>),
}

impl Selector {
    fn matches(&self, pod: &Pod) -> bool {
        match self {
            Selector::Set(s) => {
                !(s.match_labels.as_ref().is_none_or(|m| m.is_empty())
                    && s.match_expressions.as_ref().is_none_or(|e| e.is_empty()))
                    && labels::matches(s, pod.metadata.labels.as_ref())
            }
            Selector::Map(m) => labels::matches_map(m, pod.metadata.labels.as_ref()),
        }
    }
}

/// The counts a ReplicaSet or ReplicationController reports.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Counts {
    pub replicas: i32,
    pub fully_labeled: i32,
    pub ready: i32,
    pub available: i32,
}

pub trait ReplicaKind:
    k8s_openapi::Resource
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + serde::Serialize
    + serde::de::DeserializeOwned
    + Clone
    + Send
    + Sync
    + 'static
{
    fn view(&self) -> Replicated;
    /// The object with its status set from `counts`, or `None` when that is its status already.
    fn with_status(&self, counts: &Counts) -> Option<Self>;
}

/// Queues the controller a pod change concerns: its controlling owner when that is of `kind`,
/// or, for an orphan, every controller of `candidates` in the pod's namespace whose selector
/// matches it (it may adopt the pod). `candidates` is only listed for orphans.
pub fn enqueue_controller_of<C>(
    queue: &WorkQueue<ObjectKey>,
    pod: &Pod,
    kind: &str,
    candidates: impl FnOnce() -> Vec<Arc<C>>,
    selector_of: impl Fn(&C) -> Option<&LabelSelector>,
) where
    C: k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    match pod.metadata.owner_references.iter().flatten().find(|r| r.controller == Some(true)) {
        Some(owner) if owner.kind == kind => queue.add(ObjectKey::new(namespace, owner.name.clone())),
        Some(_) => {}
        None => {
            for candidate in candidates() {
                if candidate.metadata().namespace.as_deref() == Some(namespace.as_str())
                    && selector_of(&candidate).is_some_and(|s| labels::matches(s, pod.metadata.labels.as_ref()))
                {
                    queue.add(ObjectKey::of(candidate.as_ref()));
                }
            }
        }
    }
}

pub fn owner_of<K: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta>>(object: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::API_VERSION.into(),
        kind: K::KIND.into(),
        name: object.metadata().name.clone().unwrap_or_default(),
        uid: object.metadata().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

impl ReplicaKind for ReplicaSet {
    fn view(&self) -> Replicated {
        let spec = self.spec.clone().unwrap_or_default();
        Replicated {
            key: ObjectKey::of(self),
            uid: self.metadata.uid.clone().unwrap_or_default(),
            generation: self.metadata.generation.unwrap_or_default(),
            replicas: spec.replicas.unwrap_or(1),
            min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
            selector: Selector::Set(spec.selector),
            template: spec.template,
            deleting: self.metadata.deletion_timestamp.is_some(),
            owner: owner_of(self),
        }
    }

    fn with_status(&self, counts: &Counts) -> Option<Self> {
        let old = self.status.clone().unwrap_or_default();
        let status = ReplicaSetStatus {
            replicas: counts.replicas,
            fully_labeled_replicas: Some(counts.fully_labeled),
            ready_replicas: Some(counts.ready),
            available_replicas: Some(counts.available),
            observed_generation: self.metadata.generation,
            conditions: old.conditions.clone(),
        };
        (status != old).then(|| ReplicaSet { status: Some(status), ..self.clone() })
    }
}

impl ReplicaKind for ReplicationController {
    fn view(&self) -> Replicated {
        let spec = self.spec.clone().unwrap_or_default();
        Replicated {
            key: ObjectKey::of(self),
            uid: self.metadata.uid.clone().unwrap_or_default(),
            generation: self.metadata.generation.unwrap_or_default(),
            replicas: spec.replicas.unwrap_or(1),
            min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
            selector: Selector::Map(spec.selector.unwrap_or_default()),
            template: spec.template,
            deleting: self.metadata.deletion_timestamp.is_some(),
            owner: owner_of(self),
        }
    }

    fn with_status(&self, counts: &Counts) -> Option<Self> {
        let old = self.status.clone().unwrap_or_default();
        let status = ReplicationControllerStatus {
            replicas: counts.replicas,
            fully_labeled_replicas: Some(counts.fully_labeled),
            ready_replicas: Some(counts.ready),
            available_replicas: Some(counts.available),
            observed_generation: self.metadata.generation,
            conditions: old.conditions.clone(),
        };
        (status != old).then(|| ReplicationController { status: Some(status), ..self.clone() })
    }
}

pub struct ReplicaController<K> {
    client: Client,
    owners: Arc<Informer<K>>,
    pods: Arc<Informer<Pod>>,
    queue: Arc<WorkQueue<ObjectKey>>,
    recorder: Recorder,
}

/// Pods that count: not finished and not being deleted.
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
    pod.metadata.deletion_timestamp.is_none() && phase != "Succeeded" && phase != "Failed"
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Ready for at least `min_ready_seconds`.
pub fn is_available(pod: &Pod, min_ready_seconds: i32) -> bool {
    let Some(ready) = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
    else {
        return false;
    };
    if min_ready_seconds <= 0 {
        return true;
    }
    let since = ready.last_transition_time.as_ref().map(|t| t.0.timestamp()).unwrap_or(0);
    let now = crate::unix_now();
    now - since >= i64::from(min_ready_seconds)
}

impl<K: ReplicaKind> ReplicaController<K> {
    pub fn new(client: Client, pods: Arc<Informer<Pod>>, recorder: Recorder) -> Arc<Self> {
        let owners = Informer::<K>::new(client.clone());
        let queue = WorkQueue::new();
        let this = Arc::new(ReplicaController { client, owners, pods, queue, recorder });
        this.owners.feed(this.queue.clone());
        let weak = Arc::downgrade(&this);
        this.pods.on_change(move |old, new| {
            let Some(this) = weak.upgrade() else { return };
            for pod in [old, new].into_iter().flatten() {
                this.enqueue_for_pod(pod);
            }
        });
        this
    }

    fn enqueue_for_pod(&self, pod: &Pod) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        match pod.metadata.owner_references.iter().flatten().find(|r| r.controller == Some(true)) {
            Some(owner) if owner.kind == K::KIND => self.queue.add(ObjectKey::new(namespace, owner.name.clone())),
            Some(_) => {}
            // An orphan: whoever selects it may adopt it.
            None => {
                for owner in self.owners.list() {
                    let view = owner.view();
                    if view.key.namespace == namespace && view.selector.matches(pod) {
                        self.queue.add(view.key);
                    }
                }
            }
        }
    }

    /// The informer of the owning kind (Deployments share the ReplicaSet one).
    pub fn owners(&self) -> &Arc<Informer<K>> {
        &self.owners
    }

    /// The controller's loops: its informer and workers (the shared pod informer runs elsewhere).
    pub async fn run(self: Arc<Self>, workers: usize) {
        let _informer = keel_runtime::AbortOnDrop::spawn(self.owners.clone().run());
        self.owners.wait_synced().await;
        self.pods.wait_synced().await;
        let this = self.clone();
        keel_runtime::run_workers(self.queue.clone(), workers, K::KIND, move |key| {
            let this = this.clone();
            async move { this.reconcile(key).await }
        })
        .await;
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action> {
        let Some(owner) = self.owners.get(&key) else { return Ok(Action::Done) };
        let view = owner.view();
        let namespace = key.namespace.clone();
        let (owned, mut last_write) = claim_pods(
            &self.client,
            &self.pods,
            &namespace,
            &view.owner,
            view.deleting,
            |pod| view.selector.matches(pod),
            is_active,
        )
        .await?;
        let mut active: Vec<Arc<Pod>> = owned.iter().filter(|p| is_active(p)).cloned().collect();
        if !view.deleting {
            let want = view.replicas.max(0) as usize;
            if active.len() < want {
                let created = self.create_pods(&owner, &view, want - active.len()).await;
                last_write = last_write.max(created?);
            } else if active.len() > want {
                rank_for_deletion(&mut active);
                let doomed: Vec<Arc<Pod>> = active.drain(..active.len() - want).collect();
                self.delete_pods(&owner, &doomed).await?;
            }
        }
        if last_write > 0 {
            // Let the cache catch up with what was just written, then count again.
            let _ = tokio::time::timeout(OWN_WRITES, self.pods.wait_for_revision(last_write)).await;
            self.queue.add(key);
            return Ok(Action::Done);
        }
        let counts = count(&active, &view);
        if let Some(updated) = owner.with_status(&counts) {
            self.client.replace_status(key.namespace(), &key.name, &updated).await?;
        }
        // minReadySeconds: look again when the next pod becomes available.
        if view.min_ready_seconds > 0 && counts.available < counts.ready {
            return Ok(Action::RequeueAfter(Duration::from_secs(1)));
        }
        Ok(Action::Done)
    }

    async fn create_pods(&self, owner: &K, view: &Replicated, missing: usize) -> Result<i64> {
        let Some(template) = view.template.clone() else { return Ok(0) };
        let mut last = 0;
        let mut created = 0;
        let mut batch = 1usize;
        while created < missing {
            let size = batch.min(missing - created);
            let mut writes = tokio::task::JoinSet::new();
            for _ in 0..size {
                let client = self.client.clone();
                let pod = pod_from_template(&template, view);
                let namespace = view.key.namespace.clone();
                writes.spawn(async move { client.create(Some(&namespace), &pod).await });
            }
            let mut failure = None;
            while let Some(done) = writes.join_next().await {
                match done {
                    Ok(Ok(pod)) => {
                        last = last.max(revision_of(&pod));
                        self.recorder.record(
                            reference_to(owner),
                            EventType::Normal,
                            "SuccessfulCreate",
                            format!("Created pod: {}", pod.metadata.name.unwrap_or_default()),
                        );
                    }
                    Ok(Err(e)) => failure = Some(e),
                    Err(e) => failure = Some(keel_api::error::ApiError::internal(format!("create task: {e}"))),
                }
            }
            if let Some(e) = failure {
                self.recorder.record(
                    reference_to(owner),
                    EventType::Warning,
                    "FailedCreate",
                    format!("Error creating: {e}"),
                );
                return Err(e);
            }
            created += size;
            batch = (batch * 2).min(BURST);
        }
        Ok(last)
    }

    async fn delete_pods(&self, owner: &K, doomed: &[Arc<Pod>]) -> Result<()> {
        for chunk in doomed.chunks(BURST) {
            let mut writes = tokio::task::JoinSet::new();
            for pod in chunk {
                let client = self.client.clone();
                let key = ObjectKey::of(pod.as_ref());
                let uid = pod.metadata.uid.clone();
                writes.spawn(async move {
                    let options = DeleteOptions { precondition_uid: uid, ..DeleteOptions::default() };
                    client.delete::<Pod>(key.namespace(), &key.name, &options).await.map(|_| key.name)
                });
            }
            while let Some(done) = writes.join_next().await {
                match done {
                    Ok(Ok(name)) => self.recorder.record(
                        reference_to(owner),
                        EventType::Normal,
                        "SuccessfulDelete",
                        format!("Deleted pod: {name}"),
                    ),
                    Ok(Err(e)) => return Err(e),
                    Err(e) => return Err(keel_api::error::ApiError::internal(format!("delete task: {e}"))),
                }
            }
        }
        // A deletion's revision is not returned: wait for the cache to drop (or mark) them.
        let gone = || {
            doomed.iter().all(|p| {
                self.pods
                    .get(&ObjectKey::of(p.as_ref()))
                    .is_none_or(|c| c.metadata.uid != p.metadata.uid || !is_active(&c))
            })
        };
        let deadline = tokio::time::Instant::now() + OWN_WRITES;
        while !gone() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

/// The pods `owner` controls, as kube's `ClaimPods`: its own pods that still match
/// (`selects`), plus orphans that match and pass `adoptable`, adopted; its pods that no
/// longer match are released. While the owner is being deleted it neither adopts nor
/// releases. Returns the claimed pods and the revision of the last write (0: none).
pub async fn claim_pods(
    client: &Client,
    pods: &Informer<Pod>,
    namespace: &str,
    owner: &OwnerReference,
    deleting: bool,
    selects: impl Fn(&Pod) -> bool,
    adoptable: impl Fn(&Pod) -> bool,
) -> Result<(Vec<Arc<Pod>>, i64)> {
    let mut owned = Vec::new();
    let mut last_write = 0i64;
    let mut candidates = pods.by_index(POD_BY_CONTROLLER, &owner.uid);
    candidates.extend(pods.by_index(ORPHAN_POD_BY_NAMESPACE, namespace));
    for pod in candidates {
        let matches = selects(&pod);
        match controller_uid(pod.as_ref()) {
            Some(uid) if uid == owner.uid => {
                if matches || deleting {
                    owned.push(pod);
                } else {
                    last_write = last_write.max(release(client, &pod, &owner.uid).await?);
                }
            }
            None if matches && !deleting && adoptable(&pod) => {
                if let Some(rv) = adopt(client, &pod, owner).await? {
                    last_write = last_write.max(rv);
                    owned.push(pod);
                }
            }
            _ => {}
        }
    }
    Ok((owned, last_write))
}

/// Makes `owner` the pod's controller; `None` when the pod is gone. The uid precondition
/// keeps a pod recreated under the same name from being adopted by mistake.
pub async fn adopt(client: &Client, pod: &Pod, owner: &OwnerReference) -> Result<Option<i64>> {
    let patch = serde_json::json!({
        "metadata": {
            "ownerReferences": [owner],
            "uid": pod.metadata.uid,
        }
    });
    let key = ObjectKey::of(pod);
    match client.patch::<Pod>(key.namespace(), &key.name, None, PatchType::StrategicMerge, patch).await {
        Ok(pod) => Ok(Some(revision_of(&pod))),
        Err(keel_api::error::ApiError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

pub async fn release(client: &Client, pod: &Pod, owner_uid: &str) -> Result<i64> {
    let patch = serde_json::json!({
        "metadata": {"ownerReferences": [{"$patch": "delete", "uid": owner_uid}], "uid": pod.metadata.uid}
    });
    let key = ObjectKey::of(pod);
    match client.patch::<Pod>(key.namespace(), &key.name, None, PatchType::StrategicMerge, patch).await {
        Ok(pod) => Ok(revision_of(&pod)),
        Err(keel_api::error::ApiError::NotFound { .. }) => Ok(0),
        Err(e) => Err(e),
    }
}

pub fn revision_of<K: k8s_openapi::Metadata<Ty = ObjectMeta>>(object: &K) -> i64 {
    object.metadata().resource_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn pod_from_template(template: &PodTemplateSpec, view: &Replicated) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    let prefix = format!("{}-", view.key.name);
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(prefix),
            namespace: Some(view.key.namespace.clone()),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![view.owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

fn count(active: &[Arc<Pod>], view: &Replicated) -> Counts {
    let template_labels = view.template.as_ref().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone());
    let mut counts = Counts { replicas: active.len() as i32, ..Counts::default() };
    for pod in active {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        if template_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v)) {
            counts.fully_labeled += 1;
        }
        if is_ready(pod) {
            counts.ready += 1;
        }
        if is_available(pod, view.min_ready_seconds) {
            counts.available += 1;
        }
    }
    counts
}

/// Orders pods so the first are the ones to delete, as kube's ActivePods ranking does:
/// unassigned before assigned, pending before unknown before running, not ready before
/// ready, more restarts before fewer, newer before older.
pub fn rank_for_deletion(pods: &mut [Arc<Pod>]) {
    fn phase_rank(pod: &Pod) -> u8 {
        match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Pending") | None => 0,
            Some("Unknown") => 1,
            Some("Running") => 2,
            _ => 3,
        }
    }
    fn restarts(pod: &Pod) -> i32 {
        pod.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map_or(0, |c| c.iter().map(|c| c.restart_count).sum())
    }
    pods.sort_by(|a, b| {
        let assigned = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some_and(|n| !n.is_empty());
        assigned(a)
            .cmp(&assigned(b))
            .then(phase_rank(a).cmp(&phase_rank(b)))
            .then(is_ready(a).cmp(&is_ready(b)))
            .then(restarts(b).cmp(&restarts(a)))
            .then_with(|| {
                let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
                created(b).cmp(&created(a))
            })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: serde_json::Value) -> Arc<Pod> {
        Arc::new(serde_json::from_value(value).unwrap())
    }

    #[test]
    fn deletion_prefers_unassigned_then_pending_then_not_ready_then_newest() {
        let ready = serde_json::json!([{"type": "Ready", "status": "True"}]);
        let mut pods = vec![
            pod(
                serde_json::json!({"metadata": {"name": "running-ready-old", "creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"nodeName": "n", "containers": []}, "status": {"phase": "Running", "conditions": ready}}),
            ),
            pod(serde_json::json!({"metadata": {"name": "unassigned"}, "spec": {"containers": []}})),
            pod(
                serde_json::json!({"metadata": {"name": "running-ready-new", "creationTimestamp": "2026-02-01T00:00:00Z"}, "spec": {"nodeName": "n", "containers": []}, "status": {"phase": "Running", "conditions": ready}}),
            ),
            pod(
                serde_json::json!({"metadata": {"name": "pending"}, "spec": {"nodeName": "n", "containers": []}, "status": {"phase": "Pending"}}),
            ),
            pod(
                serde_json::json!({"metadata": {"name": "running-not-ready"}, "spec": {"nodeName": "n", "containers": []}, "status": {"phase": "Running"}}),
            ),
        ];
        rank_for_deletion(&mut pods);
        let order: Vec<_> = pods.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
        assert_eq!(order, ["unassigned", "pending", "running-not-ready", "running-ready-new", "running-ready-old"]);
    }

    #[test]
    fn an_empty_selector_selects_nothing() {
        let p = pod(serde_json::json!({"metadata": {"name": "p", "labels": {"app": "web"}}}));
        assert!(!Selector::Set(LabelSelector::default()).matches(&p));
        assert!(!Selector::Map(BTreeMap::new()).matches(&p));
        let set: LabelSelector = serde_json::from_value(serde_json::json!({"matchLabels": {"app": "web"}})).unwrap();
        assert!(Selector::Set(set).matches(&p));
    }
}
