//! StatefulSets: pods with stable names (`<set>-<ordinal>`), stable hostnames under the
//! governing Service, and a PersistentVolumeClaim per `volumeClaimTemplates` entry and
//! ordinal that outlives the pod. As kube's StatefulSet controller:
//!
//! * `OrderedReady` (the default) creates pods one at a time in ordinal order, each after
//!   the previous is Running and Ready, and removes them in reverse order one at a time;
//!   `Parallel` does both all at once.
//! * Failed or Succeeded pods are deleted and recreated under the same name.
//! * `RollingUpdate` replaces pods from the highest ordinal down to `partition`, one at a
//!   time, each after the previous replacement is healthy; pods below the partition keep
//!   (and are recreated at) the current revision. `OnDelete` waits for a user to delete.
//! * Templates are kept as ControllerRevisions (`crate::history`); pods carry the name of
//!   theirs in `controller-revision-hash`; `status.currentRevision` moves to the update
//!   revision once every replica runs it and is ready.
//! * `persistentVolumeClaimRetentionPolicy`: `whenDeleted: Delete` makes the set an owner of
//!   its claims (the garbage collector removes them with it); `whenScaled: Delete` makes a
//!   condemned pod the owner of its claims before it is deleted.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetSpec, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use keel_api::error::{ApiError, Result};
use keel_api::patch::PatchType;
use keel_api::rest::DeleteOptions;
use keel_runtime::events::{EventType, reference_to};
use keel_runtime::{Action, Client, Informer, ObjectKey, Recorder, WorkQueue, labels};

use crate::history::{self, REVISION_HASH};
use crate::replicaset::{self, claim_pods, is_available, is_ready, owner_of, revision_of};

pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
const OWN_WRITES: Duration = Duration::from_secs(10);

pub struct StatefulSetController {
    client: Client,
    sets: Arc<Informer<StatefulSet>>,
    pods: Arc<Informer<Pod>>,
    revisions: Arc<Informer<ControllerRevision>>,
    queue: Arc<WorkQueue<ObjectKey>>,
    recorder: Recorder,
}

/// The ordinal in a pod's name when it is `<set>-<ordinal>`.
pub fn ordinal_of(set: &str, pod: &Pod) -> Option<i32> {
    let digits = pod.metadata.name.as_deref()?.strip_prefix(set)?.strip_prefix('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn is_running_and_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") && is_ready(pod)
}

fn revision_label(pod: &Pod) -> &str {
    pod.metadata.labels.as_ref().and_then(|l| l.get(REVISION_HASH)).map(String::as_str).unwrap_or_default()
}

fn claim_name(template: &PersistentVolumeClaim, set: &str, ordinal: i32) -> String {
    format!("{}-{set}-{ordinal}", template.metadata.name.as_deref().unwrap_or_default())
}

/// What the pods look like, by slot.
struct Observed {
    /// Index `i` holds ordinal `start + i`.
    slots: Vec<Option<Arc<Pod>>>,
    /// Pods at ordinals beyond the replicas, highest first.
    condemned: Vec<Arc<Pod>>,
}

impl StatefulSetController {
    pub fn new(
        client: Client,
        pods: Arc<Informer<Pod>>,
        revisions: Arc<Informer<ControllerRevision>>,
        recorder: Recorder,
    ) -> Arc<Self> {
        let sets = Informer::<StatefulSet>::new(client.clone());
        let queue = WorkQueue::new();
        let this = Arc::new(StatefulSetController { client, sets, pods, revisions, queue, recorder });
        this.sets.feed(this.queue.clone());
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
        replicaset::enqueue_controller_of(
            &self.queue,
            pod,
            "StatefulSet",
            || self.sets.list(),
            |set| set.spec.as_ref().map(|s| &s.selector),
        );
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        let _informer = keel_runtime::AbortOnDrop::spawn(self.sets.clone().run());
        self.sets.wait_synced().await;
        self.pods.wait_synced().await;
        self.revisions.wait_synced().await;
        let this = self.clone();
        keel_runtime::run_workers(self.queue.clone(), workers, "StatefulSet", move |key| {
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
        let (owned, last_write) = claim_pods(
            &self.client,
            &self.pods,
            &key.namespace,
            &owner,
            deleting,
            |pod| {
                !(spec.selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
                    && spec.selector.match_expressions.as_ref().is_none_or(|e| e.is_empty()))
                    && labels::matches(&spec.selector, pod.metadata.labels.as_ref())
            },
            |pod| ordinal_of(&key.name, pod).is_some(),
        )
        .await?;
        if last_write > 0 {
            return self.after_writes(key, last_write).await;
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
        let update = revisions.update.clone();
        let current = status
            .current_revision
            .as_deref()
            .and_then(|name| revisions.all.iter().find(|r| r.metadata.name.as_deref() == Some(name)))
            .cloned()
            .unwrap_or_else(|| update.clone());
        let current_template = history::template_of(&current).unwrap_or_else(|| spec.template.clone());

        let observed = observe(&key.name, &spec, owned);
        let mut last_write = 0i64;
        let outcome = self
            .step(&set, &spec, &observed, (current.as_ref(), &current_template), &update, &owner, &mut last_write)
            .await;

        let mut status = status_of(&set, &observed, &current, &update, revisions.collision_count);
        if let Some(updated) = with_status(&set, &mut status) {
            self.client.replace_status(key.namespace(), &key.name, &updated).await?;
        }
        let mut live: HashSet<String> = observed
            .slots
            .iter()
            .flatten()
            .chain(observed.condemned.iter())
            .map(|p| revision_label(p).to_string())
            .collect();
        live.extend([current.metadata.name.clone(), update.metadata.name.clone()].into_iter().flatten());
        history::truncate(&self.client, &revisions, &live, spec.revision_history_limit.unwrap_or(10)).await?;
        outcome?;
        if last_write > 0 {
            return self.after_writes(key, last_write).await;
        }
        if spec.min_ready_seconds.unwrap_or(0) > 0
            && status.available_replicas.unwrap_or(0) < status.ready_replicas.unwrap_or(0)
        {
            return Ok(Action::RequeueAfter(Duration::from_secs(1)));
        }
        Ok(Action::Done)
    }

    async fn after_writes(&self, key: ObjectKey, revision: i64) -> Result<Action> {
        let _ = tokio::time::timeout(OWN_WRITES, self.pods.wait_for_revision(revision)).await;
        self.queue.add(key);
        Ok(Action::Done)
    }

    /// One pass of kube's `updateStatefulSet`: fill and repair the slots, remove condemned
    /// pods, then roll. Stops at the first pod an ordered set must wait for.
    #[allow(clippy::too_many_arguments)]
    async fn step(
        &self,
        set: &StatefulSet,
        spec: &StatefulSetSpec,
        observed: &Observed,
        (current, current_template): (&ControllerRevision, &PodTemplateSpec),
        update: &ControllerRevision,
        owner: &OwnerReference,
        last_write: &mut i64,
    ) -> Result<()> {
        let ordered = spec.pod_management_policy.as_deref() != Some("Parallel");
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let healthy = |pod: &Pod| is_running_and_ready(pod) && is_available(pod, min_ready);
        let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0);
        let rolling = spec.update_strategy.as_ref().is_none_or(|s| s.type_.as_deref() != Some("OnDelete"));
        let partition = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref())
            .map(|r| r.partition.unwrap_or(0))
            .unwrap_or_else(|| set.status.as_ref().map_or(0, |s| s.current_replicas.unwrap_or(0)));

        for (i, slot) in observed.slots.iter().enumerate() {
            let ordinal = start + i as i32;
            match slot {
                None => {
                    let (revision, template) = if rolling && (i as i32) < partition {
                        (current, current_template)
                    } else {
                        (update, &spec.template)
                    };
                    *last_write =
                        (*last_write).max(self.create_pod(set, spec, owner, ordinal, revision, template).await?);
                    if ordered {
                        return Ok(());
                    }
                }
                Some(pod) if is_terminal(pod) && !is_terminating(pod) => {
                    self.delete_pod(set, pod).await?;
                    if ordered {
                        return Ok(());
                    }
                }
                Some(pod) if ordered && (is_terminating(pod) || !healthy(pod)) => return Ok(()),
                Some(_) => {}
            }
        }

        for pod in &observed.condemned {
            if is_terminating(pod) {
                if ordered {
                    return Ok(());
                }
                continue;
            }
            self.release_claims_to(spec, set, pod).await?;
            self.delete_pod(set, pod).await?;
            if ordered {
                return Ok(());
            }
        }

        if !rolling {
            return Ok(());
        }
        let update_name = update.metadata.name.as_deref().unwrap_or_default();
        for i in (partition.max(0) as usize..observed.slots.len()).rev() {
            let Some(pod) = &observed.slots[i] else { return Ok(()) };
            if revision_label(pod) != update_name && !is_terminating(pod) {
                self.delete_pod(set, pod).await?;
                return Ok(());
            }
            if !healthy(pod) {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn create_pod(
        &self,
        set: &StatefulSet,
        spec: &StatefulSetSpec,
        owner: &OwnerReference,
        ordinal: i32,
        revision: &ControllerRevision,
        template: &PodTemplateSpec,
    ) -> Result<i64> {
        let set_name = set.metadata.name.clone().unwrap_or_default();
        let pod_name = format!("{set_name}-{ordinal}");
        self.create_claims(set, spec, ordinal, &pod_name).await?;
        let pod = new_pod(set, spec, owner, ordinal, revision, template);
        match self.client.create(set.metadata.namespace.as_deref(), &pod).await {
            Ok(created) => {
                self.recorder.record(
                    reference_to(set),
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!("create Pod {pod_name} in StatefulSet {set_name} successful"),
                );
                Ok(revision_of(&created))
            }
            // Stable names make a repeated create harmless: the cache was behind.
            Err(ApiError::AlreadyExists { .. }) => Ok(0),
            Err(e) => {
                self.recorder.record(
                    reference_to(set),
                    EventType::Warning,
                    "FailedCreate",
                    format!("create Pod {pod_name} in StatefulSet {set_name} failed error: {e}"),
                );
                Err(e)
            }
        }
    }

    async fn create_claims(
        &self,
        set: &StatefulSet,
        spec: &StatefulSetSpec,
        ordinal: i32,
        pod_name: &str,
    ) -> Result<()> {
        let set_name = set.metadata.name.clone().unwrap_or_default();
        let namespace = set.metadata.namespace.as_deref();
        let delete_with_set = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .is_some_and(|p| p.when_deleted.as_deref() == Some("Delete"));
        for template in spec.volume_claim_templates.iter().flatten() {
            let name = claim_name(template, &set_name, ordinal);
            match self.client.get::<PersistentVolumeClaim>(namespace, &name).await {
                Ok(_) => continue,
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            let mut labels = template.metadata.labels.clone().unwrap_or_default();
            labels.extend(spec.selector.match_labels.clone().unwrap_or_default());
            let mut owners = Vec::new();
            if delete_with_set {
                owners.push(OwnerReference { controller: None, ..owner_of(set) });
            }
            let claim = PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: set.metadata.namespace.clone(),
                    labels: Some(labels),
                    annotations: template.metadata.annotations.clone(),
                    owner_references: (!owners.is_empty()).then_some(owners),
                    ..ObjectMeta::default()
                },
                spec: template.spec.clone(),
                status: None,
            };
            match self.client.create(namespace, &claim).await {
                Ok(_) => self.recorder.record(
                    reference_to(set),
                    EventType::Normal,
                    "SuccessfulCreate",
                    format!("create Claim {name} Pod {pod_name} in StatefulSet {set_name} success"),
                ),
                Err(ApiError::AlreadyExists { .. }) => {}
                Err(e) => {
                    self.recorder.record(
                        reference_to(set),
                        EventType::Warning,
                        "FailedCreate",
                        format!("create Claim {name} for Pod {pod_name} in StatefulSet {set_name} failed error: {e}"),
                    );
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// `whenScaled: Delete`: the condemned pod becomes the owner of its claims, so they go
    /// with it.
    async fn release_claims_to(&self, spec: &StatefulSetSpec, set: &StatefulSet, pod: &Pod) -> Result<()> {
        let scaled_delete = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .is_some_and(|p| p.when_scaled.as_deref() == Some("Delete"));
        let set_name = set.metadata.name.clone().unwrap_or_default();
        let Some(ordinal) = ordinal_of(&set_name, pod).filter(|_| scaled_delete) else { return Ok(()) };
        let owner = OwnerReference { controller: None, ..owner_of(pod) };
        for template in spec.volume_claim_templates.iter().flatten() {
            let name = claim_name(template, &set_name, ordinal);
            let patch = serde_json::json!({"metadata": {"ownerReferences": [owner]}});
            match self
                .client
                .patch::<PersistentVolumeClaim>(
                    set.metadata.namespace.as_deref(),
                    &name,
                    None,
                    PatchType::StrategicMerge,
                    patch,
                )
                .await
            {
                Ok(_) | Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn delete_pod(&self, set: &StatefulSet, pod: &Pod) -> Result<()> {
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
            format!(
                "delete Pod {} in StatefulSet {} successful",
                key.name,
                set.metadata.name.as_deref().unwrap_or_default()
            ),
        );
        // Wait for the cache to see it go (or be marked), so the next pass does not act on it twice.
        let deadline = tokio::time::Instant::now() + OWN_WRITES;
        while tokio::time::Instant::now() < deadline {
            match self.pods.get(&key) {
                Some(cached) if cached.metadata.uid == pod.metadata.uid && !is_terminating(&cached) => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                _ => break,
            }
        }
        Ok(())
    }
}

fn observe(set: &str, spec: &StatefulSetSpec, owned: Vec<Arc<Pod>>) -> Observed {
    let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0);
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let mut slots = vec![None; replicas as usize];
    let mut condemned = Vec::new();
    for pod in owned {
        let Some(ordinal) = ordinal_of(set, &pod) else { continue };
        if (start..start + replicas).contains(&ordinal) {
            slots[(ordinal - start) as usize] = Some(pod);
        } else {
            condemned.push((ordinal, pod));
        }
    }
    condemned.sort_by_key(|(ordinal, _)| std::cmp::Reverse(*ordinal));
    Observed { slots, condemned: condemned.into_iter().map(|(_, p)| p).collect() }
}

fn new_pod(
    set: &StatefulSet,
    spec: &StatefulSetSpec,
    owner: &OwnerReference,
    ordinal: i32,
    revision: &ControllerRevision,
    template: &PodTemplateSpec,
) -> Pod {
    let set_name = set.metadata.name.clone().unwrap_or_default();
    let name = format!("{set_name}-{ordinal}");
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_HASH.into(), revision.metadata.name.clone().unwrap_or_default());
    let mut pod_spec = template.spec.clone().unwrap_or_default();
    pod_spec.hostname = Some(name.clone());
    if !spec.service_name.as_deref().unwrap_or_default().is_empty() {
        pod_spec.subdomain = spec.service_name.clone();
    }
    let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
    for claim in spec.volume_claim_templates.iter().flatten() {
        let volume_name = claim.metadata.name.clone().unwrap_or_default();
        volumes.retain(|v| v.name != volume_name);
        volumes.push(Volume {
            name: volume_name,
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(claim, &set_name, ordinal),
                read_only: None,
            }),
            ..Volume::default()
        });
    }
    if volumes.is_empty() {
        pod_spec.volumes = None;
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
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
    set: &StatefulSet,
    observed: &Observed,
    current: &ControllerRevision,
    update: &ControllerRevision,
    collision_count: i32,
) -> StatefulSetStatus {
    let spec = set.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let current_name = current.metadata.name.clone().unwrap_or_default();
    let update_name = update.metadata.name.clone().unwrap_or_default();
    let mut status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        current_revision: Some(current_name.clone()),
        update_revision: Some(update_name.clone()),
        collision_count: Some(collision_count),
        conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
        ..StatefulSetStatus::default()
    };
    let (mut ready, mut available, mut on_current, mut on_update) = (0, 0, 0, 0);
    for pod in observed.slots.iter().flatten().chain(observed.condemned.iter()) {
        status.replicas += 1;
        if is_running_and_ready(pod) {
            ready += 1;
            if is_available(pod, min_ready) {
                available += 1;
            }
        }
        if !is_terminating(pod) {
            let revision = revision_label(pod);
            if revision == current_name {
                on_current += 1;
            }
            if revision == update_name {
                on_update += 1;
            }
        }
    }
    status.ready_replicas = Some(ready);
    status.available_replicas = Some(available);
    status.current_replicas = Some(on_current);
    status.updated_replicas = Some(on_update);
    // The update is complete once every replica runs the update revision and is ready
    // (kube's completeRollingUpdate; OnDelete completes when every pod was replaced).
    let rolling = spec.update_strategy.as_ref().is_none_or(|s| s.type_.as_deref() != Some("OnDelete"));
    if on_update == status.replicas && (!rolling || ready == status.replicas) {
        status.current_revision = Some(update_name);
        status.current_replicas = Some(on_update);
    }
    status
}

/// The set with `status`, or `None` when that is its status already. Zero counts are left
/// out where the Go type omits them, so an unchanged status compares equal.
fn with_status(set: &StatefulSet, status: &mut StatefulSetStatus) -> Option<StatefulSet> {
    for count in [&mut status.ready_replicas, &mut status.current_replicas, &mut status.updated_replicas] {
        if *count == Some(0) {
            *count = None;
        }
    }
    let old = set.status.clone().unwrap_or_default();
    (*status != old).then(|| StatefulSet { status: Some(status.clone()), ..set.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap()
    }

    #[test]
    fn ordinals_are_read_from_names_of_the_set_only() {
        assert_eq!(ordinal_of("web", &pod("web-0")), Some(0));
        assert_eq!(ordinal_of("web", &pod("web-12")), Some(12));
        assert_eq!(ordinal_of("web", &pod("web-x")), None);
        assert_eq!(ordinal_of("web", &pod("web-")), None);
        assert_eq!(ordinal_of("web", &pod("webby-1")), None);
        assert_eq!(ordinal_of("web", &pod("web-+1")), None);
        assert_eq!(ordinal_of("we", &pod("web-1")), None);
    }

    #[test]
    fn pods_fall_into_slots_and_condemned_highest_first() {
        let spec: StatefulSetSpec = serde_json::from_value(serde_json::json!({
            "replicas": 2, "serviceName": "web", "selector": {}, "template": {}
        }))
        .unwrap();
        let owned = ["web-0", "web-3", "web-2", "other-1"].map(|n| Arc::new(pod(n))).to_vec();
        let observed = observe("web", &spec, owned);
        assert_eq!(observed.slots[0].as_ref().and_then(|p| p.metadata.name.clone()).as_deref(), Some("web-0"));
        assert!(observed.slots[1].is_none());
        let condemned: Vec<_> = observed.condemned.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
        assert_eq!(condemned, ["web-3", "web-2"]);
    }

    #[test]
    fn new_pods_have_stable_identity_and_their_claims() {
        let set: StatefulSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u"},
            "spec": {"replicas": 1, "serviceName": "nginx", "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c"}],
                    "volumes": [{"name": "www", "emptyDir": {}}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "www"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]}
        }))
        .unwrap();
        let spec = set.spec.clone().unwrap();
        let revision: ControllerRevision =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "web-abc"}, "revision": 1})).unwrap();
        let pod = new_pod(&set, &spec, &owner_of(&set), 2, &revision, &spec.template);
        let labels = pod.metadata.labels.clone().unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("web-2"));
        assert_eq!(labels[POD_NAME_LABEL], "web-2");
        assert_eq!(labels[POD_INDEX_LABEL], "2");
        assert_eq!(labels[REVISION_HASH], "web-abc");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("web-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("nginx"));
        let volumes = spec.volumes.unwrap();
        assert_eq!(volumes.len(), 1, "the claim replaces the template's volume of the same name");
        assert_eq!(volumes[0].persistent_volume_claim.as_ref().unwrap().claim_name, "www-web-2");
    }
}
