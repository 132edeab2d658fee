//! Deployments: one ReplicaSet per pod template, rolled from old to new by the strategy
//! (RollingUpdate within maxSurge/maxUnavailable, or Recreate), with revision history,
//! pause/resume, the Progressing/Available conditions and the progress deadline.
//!
//! `kubectl rollout undo` works as it does against kube-apiserver: kubectl copies an old
//! ReplicaSet's template back into the Deployment; this controller then finds that the old
//! ReplicaSet matches, gives it the next revision and scales it up again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keel_api::error::{ApiError, Result};
use keel_api::patch::PatchType;
use keel_api::rest::DeleteOptions;
use keel_runtime::events::{EventType, reference_to};
use keel_runtime::informer::controller_uid;
use keel_runtime::{Action, Client, Informer, ObjectKey, Recorder, WorkQueue, labels};

use crate::replicaset::{is_active, revision_of};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const TEMPLATE_HASH: &str = "pod-template-hash";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
const OWN_WRITES: Duration = Duration::from_secs(10);

pub struct DeploymentController {
    client: Client,
    deployments: Arc<Informer<Deployment>>,
    replica_sets: Arc<Informer<ReplicaSet>>,
    pods: Arc<Informer<Pod>>,
    queue: Arc<WorkQueue<ObjectKey>>,
    recorder: Recorder,
}

/// Rolling-update bounds resolved against the replica count (surge rounds up, unavailable
/// down; both zero would deadlock, so unavailable becomes one, as Kubernetes does).
pub fn surge_and_unavailable(deployment: &Deployment) -> (i32, i32) {
    let spec = deployment.spec.as_ref();
    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1);
    let rolling = spec.and_then(|s| s.strategy.as_ref()).and_then(|s| s.rolling_update.as_ref());
    let quarter = IntOrString::String("25%".into());
    let resolve = |value: Option<&IntOrString>, round_up: bool| -> i32 {
        match value.unwrap_or(&quarter) {
            IntOrString::Int(n) => *n,
            IntOrString::String(s) => {
                let percent: f64 = s.trim_end_matches('%').parse().unwrap_or(25.0);
                let exact = percent * f64::from(replicas) / 100.0;
                (if round_up { exact.ceil() } else { exact.floor() }) as i32
            }
        }
    };
    let surge = resolve(rolling.and_then(|r| r.max_surge.as_ref()), true);
    let unavailable = resolve(rolling.and_then(|r| r.max_unavailable.as_ref()), false);
    if surge == 0 && unavailable == 0 { (0, 1) } else { (surge, unavailable.min(replicas)) }
}

/// The template hash Kubernetes puts in the ReplicaSet's name and the pods' labels: FNV-1a
/// of the template (and the collision count), spelt with vowel-free characters.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    crate::history::safe_hash(&serde_json::to_vec(template).unwrap_or_default(), collision_count)
}

fn without_hash(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut template = template.clone();
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(TEMPLATE_HASH);
    }
    template
}

pub fn equal_ignoring_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    without_hash(a) == without_hash(b)
}

fn revision(rs: &ReplicaSet) -> i64 {
    annotation(&rs.metadata, REVISION).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    let s = rs.status.clone().unwrap_or_default();
    (s.replicas, s.ready_replicas.unwrap_or(0), s.available_replicas.unwrap_or(0))
}

/// Annotations a Deployment passes on to its ReplicaSets (not kubectl's and not the
/// controller's own bookkeeping).
fn inherited_annotations(deployment: &Deployment) -> BTreeMap<String, String> {
    deployment
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| ![LAST_APPLIED, REVISION, DESIRED_REPLICAS, MAX_REPLICAS].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl DeploymentController {
    pub fn new(
        client: Client,
        replica_sets: Arc<Informer<ReplicaSet>>,
        pods: Arc<Informer<Pod>>,
        recorder: Recorder,
    ) -> Arc<Self> {
        let deployments = Informer::<Deployment>::new(client.clone());
        let queue = WorkQueue::new();
        let this = Arc::new(DeploymentController { client, deployments, replica_sets, pods, queue, recorder });
        this.deployments.feed(this.queue.clone());
        let weak = Arc::downgrade(&this);
        this.replica_sets.on_change(move |old, new| {
            let Some(this) = weak.upgrade() else { return };
            for rs in [old, new].into_iter().flatten() {
                let namespace = rs.metadata.namespace.clone().unwrap_or_default();
                match rs.metadata.owner_references.iter().flatten().find(|r| r.controller == Some(true)) {
                    Some(owner) if owner.kind == "Deployment" => {
                        this.queue.add(ObjectKey::new(namespace, owner.name.clone()))
                    }
                    Some(_) => {}
                    None => {
                        for d in this.deployments.list() {
                            if d.metadata.namespace.as_deref() == Some(namespace.as_str())
                                && d.spec
                                    .as_ref()
                                    .is_some_and(|s| labels::matches(&s.selector, rs.metadata.labels.as_ref()))
                            {
                                this.queue.add(ObjectKey::of(d.as_ref()));
                            }
                        }
                    }
                }
            }
        });
        // Recreate waits for the old pods to be gone, which only their deletion says.
        let weak = Arc::downgrade(&this);
        this.pods.on_change(move |old, new| {
            let (Some(pod), None) = (old, new) else { return };
            let Some(this) = weak.upgrade() else { return };
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let Some(owner) = pod
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|r| r.controller == Some(true) && r.kind == "ReplicaSet")
            else {
                return;
            };
            if let Some(rs) = this.replica_sets.get(&ObjectKey::new(namespace.clone(), owner.name.clone()))
                && let Some(deployment) = rs
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .find(|r| r.controller == Some(true) && r.kind == "Deployment")
            {
                this.queue.add(ObjectKey::new(namespace, deployment.name.clone()));
            }
        });
        this
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        let _informer = keel_runtime::AbortOnDrop::spawn(self.deployments.clone().run());
        self.deployments.wait_synced().await;
        self.replica_sets.wait_synced().await;
        self.pods.wait_synced().await;
        let this = self.clone();
        keel_runtime::run_workers(self.queue.clone(), workers, "Deployment", move |key| {
            let this = this.clone();
            async move { this.reconcile(key).await }
        })
        .await;
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action> {
        let Some(deployment) = self.deployments.get(&key) else { return Ok(Action::Done) };
        if deployment.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let Some(spec) = deployment.spec.clone() else { return Ok(Action::Done) };
        let uid = deployment.metadata.uid.clone().unwrap_or_default();
        let owned = self.owned_replica_sets(&deployment, &uid).await?;
        let (mut new_rs, mut old): (Vec<Arc<ReplicaSet>>, Vec<Arc<ReplicaSet>>) = owned.into_iter().partition(|rs| {
            rs.spec.as_ref().and_then(|s| s.template.as_ref()).is_some_and(|t| equal_ignoring_hash(t, &spec.template))
        });
        // Two matching (an old leader's leftovers): the oldest is the new one.
        new_rs.sort_by_key(|rs| rs.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let mut new_rs = if new_rs.is_empty() { None } else { Some(new_rs.remove(0)) };
        old.sort_by_key(|rs| rs.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let replicas = spec.replicas.unwrap_or(1);
        let paused = spec.paused.unwrap_or(false);
        let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
        let (surge, unavailable) = if recreate { (0, 0) } else { surge_and_unavailable(&deployment) };
        let max_revision = old.iter().chain(new_rs.iter()).map(|rs| revision(rs)).max().unwrap_or(0);
        let mut progressed = false;
        let mut last_write = 0i64;

        if !paused {
            match &new_rs {
                None => {
                    let initial = if recreate {
                        if old.iter().any(|rs| spec_replicas(rs) > 0) || self.old_pods_running(&old) {
                            0
                        } else {
                            replicas
                        }
                    } else {
                        let total: i32 = old.iter().map(|rs| spec_replicas(rs)).sum();
                        (replicas + surge - total).clamp(0, replicas)
                    };
                    let created = self.create_new(&deployment, &spec.template, initial, max_revision + 1).await?;
                    last_write = revision_of(&created);
                    new_rs = Some(Arc::new(created));
                    progressed = true;
                }
                Some(rs) if revision(rs) < max_revision || revision(rs) == 0 => {
                    // A rollback (or an adopted set): it becomes the newest revision.
                    let mut updated = (**rs).clone();
                    let annotations = updated.metadata.annotations.get_or_insert_with(BTreeMap::new);
                    annotations.extend(inherited_annotations(&deployment));
                    annotations.insert(REVISION.into(), (max_revision + 1).to_string());
                    let updated = self
                        .client
                        .replace(key.namespace(), rs.metadata.name.as_deref().unwrap_or(""), &updated)
                        .await?;
                    last_write = revision_of(&updated);
                    new_rs = Some(Arc::new(updated));
                    progressed = true;
                }
                Some(_) => {}
            }
        }

        if let Some(new) = new_rs.clone() {
            let new_count = spec_replicas(&new);
            let old_total: i32 = old.iter().map(|rs| spec_replicas(rs)).sum();
            let target = if paused {
                // Paused: follow scaling only, and only when nothing is rolling.
                if old_total == 0 { replicas } else { new_count }
            } else if recreate {
                if old_total > 0 || self.old_pods_running(&old) { new_count } else { replicas }
            } else if new_count > replicas {
                replicas
            } else {
                let room = replicas + surge - (old_total + new_count);
                new_count + room.clamp(0, replicas - new_count)
            };
            if target != new_count {
                last_write = last_write.max(self.scale(&deployment, &new, target).await?);
                progressed = true;
            }
        }

        if !paused || new_rs.is_none() {
            // Scale the old sets down: all at once for Recreate; for RollingUpdate only as far
            // as keeps `replicas - maxUnavailable` pods available.
            let (new_count, new_available) =
                new_rs.as_ref().map(|rs| (spec_replicas(rs), status_of(rs).2)).unwrap_or((0, 0));
            if recreate && !paused {
                for rs in &old {
                    if spec_replicas(rs) > 0 {
                        last_write = last_write.max(self.scale(&deployment, rs, 0).await?);
                        progressed = true;
                    }
                }
            } else if !paused {
                let old_total: i32 = old.iter().map(|rs| spec_replicas(rs)).sum();
                let min_available = replicas - unavailable;
                let all = old_total + new_count;
                let new_unavailable = new_count - new_available;
                // How many old pods may go without availability dropping below the minimum,
                // counting the new set's not-yet-available pods as already unavailable
                // (kube's maxScaledDown). The counts of available pods come from statuses
                // that may lag a scale-down just made; this budget, from the specs, does not.
                let mut budget = all - min_available - new_unavailable;
                // Old pods that are not available cost nothing to remove.
                for rs in &old {
                    if budget <= 0 {
                        break;
                    }
                    let unhealthy = spec_replicas(rs) - status_of(rs).2;
                    if unhealthy > 0 {
                        let cut = unhealthy.min(budget);
                        last_write = last_write.max(self.scale(&deployment, rs, spec_replicas(rs) - cut).await?);
                        budget -= cut;
                        progressed = true;
                    }
                }
                let fresh = self.owned_after(last_write, &deployment, &uid).await?;
                let available: i32 = fresh.iter().map(|rs| status_of(rs).2).sum();
                let mut room = (available - min_available).min(budget);
                for rs in fresh.iter().filter(|rs| new_rs.as_ref().is_none_or(|n| n.metadata.uid != rs.metadata.uid)) {
                    if room <= 0 {
                        break;
                    }
                    let count = spec_replicas(rs);
                    if count == 0 {
                        continue;
                    }
                    let cut = count.min(room);
                    last_write = last_write.max(self.scale(&deployment, rs, count - cut).await?);
                    room -= cut;
                    progressed = true;
                }
            }
        }

        if last_write > 0 {
            let _ = tokio::time::timeout(OWN_WRITES, self.replica_sets.wait_for_revision(last_write)).await;
        }
        let all = self.owned_replica_sets(&deployment, &uid).await?;
        let new_rs = all
            .iter()
            .find(|rs| {
                rs.spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| equal_ignoring_hash(t, &spec.template))
            })
            .cloned();
        let complete = self.update_status(&deployment, &all, new_rs.as_deref(), progressed, unavailable).await?;
        if complete {
            self.clean_up_history(&deployment, &all, new_rs.as_deref()).await?;
        }
        if let Some(new) = &new_rs {
            self.mark_revision(&deployment, revision(new)).await?;
        }
        if !complete && !paused {
            let deadline = spec.progress_deadline_seconds.unwrap_or(600).max(1);
            return Ok(Action::RequeueAfter(Duration::from_secs(deadline as u64 + 1)));
        }
        Ok(Action::Done)
    }

    async fn owned_after(&self, revision: i64, deployment: &Deployment, uid: &str) -> Result<Vec<Arc<ReplicaSet>>> {
        if revision > 0 {
            let _ = tokio::time::timeout(OWN_WRITES, self.replica_sets.wait_for_revision(revision)).await;
        }
        let mut owned = self.owned_replica_sets(deployment, uid).await?;
        owned.sort_by_key(|rs| rs.metadata.creation_timestamp.as_ref().map(|t| t.0));
        Ok(owned)
    }

    /// The ReplicaSets this Deployment controls, adopting matching orphans.
    async fn owned_replica_sets(&self, deployment: &Deployment, uid: &str) -> Result<Vec<Arc<ReplicaSet>>> {
        let namespace = deployment.metadata.namespace.clone().unwrap_or_default();
        let Some(selector) = deployment.spec.as_ref().map(|s| &s.selector) else { return Ok(Vec::new()) };
        let mut owned = Vec::new();
        for rs in self.replica_sets.by_index("namespace", &namespace) {
            match controller_uid(rs.as_ref()) {
                Some(owner) if owner == uid => owned.push(rs),
                None if labels::matches(selector, rs.metadata.labels.as_ref())
                    && rs.metadata.deletion_timestamp.is_none()
                    && deployment.metadata.deletion_timestamp.is_none() =>
                {
                    let patch = serde_json::json!({"metadata": {
                        "ownerReferences": [owner_reference(deployment)], "uid": rs.metadata.uid}});
                    let key = ObjectKey::of(rs.as_ref());
                    match self
                        .client
                        .patch::<ReplicaSet>(key.namespace(), &key.name, None, PatchType::StrategicMerge, patch)
                        .await
                    {
                        Ok(adopted) => owned.push(Arc::new(adopted)),
                        Err(ApiError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                _ => {}
            }
        }
        Ok(owned)
    }

    fn old_pods_running(&self, old: &[Arc<ReplicaSet>]) -> bool {
        old.iter().any(|rs| {
            let uid = rs.metadata.uid.clone().unwrap_or_default();
            self.pods
                .by_index(crate::replicaset::POD_BY_CONTROLLER, &uid)
                .iter()
                .any(|p| is_active(p) || p.metadata.deletion_timestamp.is_some())
        })
    }

    async fn create_new(
        &self,
        deployment: &Deployment,
        template: &PodTemplateSpec,
        replicas: i32,
        revision: i64,
    ) -> Result<ReplicaSet> {
        let name = deployment.metadata.name.clone().unwrap_or_default();
        let namespace = deployment.metadata.namespace.clone().unwrap_or_default();
        let collisions = deployment.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(template, collisions);
        let mut template = template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(TEMPLATE_HASH.into(), hash.clone());
        let mut selector = deployment.spec.as_ref().map(|s| s.selector.clone()).unwrap_or_default();
        selector.match_labels.get_or_insert_with(BTreeMap::new).insert(TEMPLATE_HASH.into(), hash.clone());
        let mut annotations = inherited_annotations(deployment);
        annotations.insert(REVISION.into(), revision.to_string());
        let spec = deployment.spec.clone().unwrap_or_default();
        annotations.insert(DESIRED_REPLICAS.into(), spec.replicas.unwrap_or(1).to_string());
        annotations.insert(
            MAX_REPLICAS.into(),
            (spec.replicas.unwrap_or(1) + surge_and_unavailable(deployment).0).to_string(),
        );
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("{name}-{hash}")),
                namespace: Some(namespace.clone()),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                annotations: Some(annotations),
                owner_references: Some(vec![owner_reference(deployment)]),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        match self.client.create(Some(&namespace), &rs).await {
            Ok(created) => {
                self.recorder.record(
                    reference_to(deployment),
                    EventType::Normal,
                    "ScalingReplicaSet",
                    format!("Scaled up replica set {}-{hash} from 0 to {replicas}", name),
                );
                Ok(created)
            }
            Err(ApiError::AlreadyExists { .. }) => {
                // Same name, different template (a hash collision or a stale cache): if
                // it is ours and matches, use it; otherwise count a collision and rehash.
                let existing: ReplicaSet = self.client.get(Some(&namespace), &format!("{name}-{hash}")).await?;
                let ours = controller_uid(&existing) == deployment.metadata.uid;
                let same = existing.spec.as_ref().and_then(|s| s.template.as_ref()).is_some_and(|t| {
                    equal_ignoring_hash(t, &rs.spec.as_ref().and_then(|s| s.template.clone()).unwrap_or_default())
                });
                if ours && same {
                    return Ok(existing);
                }
                let collisions = Some(collisions.unwrap_or(0) + 1);
                let mut status = deployment.status.clone().unwrap_or_default();
                status.collision_count = collisions;
                let updated = Deployment { status: Some(status), ..deployment.clone() };
                self.client.replace_status(Some(&namespace), &name, &updated).await?;
                Err(ApiError::Conflict {
                    resource: "deployments.apps".into(),
                    name,
                    message: "template hash collision; retrying".into(),
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn scale(&self, deployment: &Deployment, rs: &ReplicaSet, to: i32) -> Result<i64> {
        let from = spec_replicas(rs);
        let mut updated = rs.clone();
        updated.spec.get_or_insert_with(Default::default).replicas = Some(to);
        let spec = deployment.spec.clone().unwrap_or_default();
        let annotations = updated.metadata.annotations.get_or_insert_with(BTreeMap::new);
        annotations.insert(DESIRED_REPLICAS.into(), spec.replicas.unwrap_or(1).to_string());
        annotations.insert(
            MAX_REPLICAS.into(),
            (spec.replicas.unwrap_or(1) + surge_and_unavailable(deployment).0).to_string(),
        );
        let name = rs.metadata.name.clone().unwrap_or_default();
        let written = self.client.replace(rs.metadata.namespace.as_deref(), &name, &updated).await?;
        let direction = if to > from { "up" } else { "down" };
        self.recorder.record(
            reference_to(deployment),
            EventType::Normal,
            "ScalingReplicaSet",
            format!("Scaled {direction} replica set {name} from {from} to {to}"),
        );
        Ok(revision_of(&written))
    }

    /// Writes the status; returns whether the rollout is complete.
    async fn update_status(
        &self,
        deployment: &Deployment,
        all: &[Arc<ReplicaSet>],
        new_rs: Option<&ReplicaSet>,
        progressed: bool,
        max_unavailable: i32,
    ) -> Result<bool> {
        let spec = deployment.spec.clone().unwrap_or_default();
        let wanted = spec.replicas.unwrap_or(1);
        let old = deployment.status.clone().unwrap_or_default();
        let (mut replicas, mut ready, mut available) = (0, 0, 0);
        for rs in all {
            let (r, rd, a) = status_of(rs);
            replicas += r;
            ready += rd;
            available += a;
        }
        let updated = new_rs.map(|rs| status_of(rs).0).unwrap_or(0);
        let complete = new_rs.is_some() && updated == wanted && replicas == wanted && available >= wanted;
        let now = keel_runtime::now();
        let find = |type_: &str| old.conditions.iter().flatten().find(|c| c.type_ == type_).cloned();
        let condition = |type_: &str, status: &str, reason: &str, message: String, touch: bool| {
            let previous = find(type_);
            let same = previous.as_ref().is_some_and(|p| p.status == status);
            let same_reason =
                previous.as_ref().is_some_and(|p| p.status == status && p.reason.as_deref() == Some(reason));
            DeploymentCondition {
                type_: type_.into(),
                status: status.into(),
                reason: Some(reason.into()),
                message: Some(message),
                last_transition_time: if same {
                    previous.as_ref().and_then(|p| p.last_transition_time.clone())
                } else {
                    Some(now.clone())
                },
                last_update_time: if same_reason && !touch {
                    previous.as_ref().and_then(|p| p.last_update_time.clone())
                } else {
                    Some(now.clone())
                },
            }
        };
        let available_condition = if available >= wanted - max_unavailable {
            condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                false,
            )
        } else {
            condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                false,
            )
        };
        let new_name = new_rs.and_then(|rs| rs.metadata.name.clone()).unwrap_or_default();
        let previous = find("Progressing");
        let deadline = spec.progress_deadline_seconds.unwrap_or(600);
        let progressing = if spec.paused.unwrap_or(false) {
            condition("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused".into(), false)
        } else if complete {
            condition(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                false,
            )
        } else if progressed
            || previous.as_ref().is_none_or(|p| {
                p.reason.as_deref() == Some("DeploymentPaused") || p.reason.as_deref() == Some("NewReplicaSetAvailable")
            })
        {
            condition(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{new_name}\" is progressing."),
                true,
            )
        } else if previous
            .as_ref()
            .and_then(|p| p.last_update_time.as_ref())
            .is_some_and(|t| now.0.timestamp() - t.0.timestamp() > i64::from(deadline))
        {
            condition(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                false,
            )
        } else {
            previous.clone().unwrap_or_else(|| {
                condition(
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    format!("ReplicaSet \"{new_name}\" is progressing."),
                    true,
                )
            })
        };
        if progressing.reason.as_deref() == Some("ProgressDeadlineExceeded")
            && previous.as_ref().and_then(|p| p.reason.as_deref()) != Some("ProgressDeadlineExceeded")
        {
            self.recorder.record(
                reference_to(deployment),
                EventType::Warning,
                "ProgressDeadlineExceeded",
                format!("Deployment {} has timed out progressing.", deployment.metadata.name.as_deref().unwrap_or("")),
            );
        }
        let status = DeploymentStatus {
            observed_generation: deployment.metadata.generation,
            replicas: Some(replicas),
            updated_replicas: Some(updated),
            ready_replicas: Some(ready),
            available_replicas: Some(available),
            unavailable_replicas: Some((wanted - available).max(0)),
            conditions: Some(vec![available_condition, progressing]),
            collision_count: old.collision_count,
        };
        if Some(&status) != deployment.status.as_ref() {
            let updated = Deployment { status: Some(status), ..deployment.clone() };
            let key = ObjectKey::of(deployment);
            self.client.replace_status(key.namespace(), &key.name, &updated).await?;
        }
        Ok(complete)
    }

    /// Keeps the Deployment's revision annotation at its newest ReplicaSet's, as `kubectl
    /// rollout` expects.
    async fn mark_revision(&self, deployment: &Deployment, revision: i64) -> Result<()> {
        if revision == 0 || annotation(&deployment.metadata, REVISION) == Some(revision.to_string().as_str()) {
            return Ok(());
        }
        let key = ObjectKey::of(deployment);
        let patch = serde_json::json!({"metadata": {"annotations": {REVISION: revision.to_string()}}});
        self.client.patch::<Deployment>(key.namespace(), &key.name, None, PatchType::Merge, patch).await?;
        Ok(())
    }

    /// Deletes old, empty ReplicaSets beyond `revisionHistoryLimit`, oldest first.
    async fn clean_up_history(
        &self,
        deployment: &Deployment,
        all: &[Arc<ReplicaSet>],
        new_rs: Option<&ReplicaSet>,
    ) -> Result<()> {
        let limit = deployment.spec.as_ref().and_then(|s| s.revision_history_limit).unwrap_or(10).max(0) as usize;
        let mut empty: Vec<&Arc<ReplicaSet>> = all
            .iter()
            .filter(|rs| new_rs.is_none_or(|n| n.metadata.uid != rs.metadata.uid))
            .filter(|rs| spec_replicas(rs) == 0 && status_of(rs).0 == 0 && rs.metadata.deletion_timestamp.is_none())
            .collect();
        if empty.len() <= limit {
            return Ok(());
        }
        empty.sort_by_key(|rs| revision(rs));
        for rs in &empty[..empty.len() - limit] {
            let key = ObjectKey::of(rs.as_ref());
            let options = DeleteOptions { precondition_uid: rs.metadata.uid.clone(), ..DeleteOptions::default() };
            self.client.delete::<ReplicaSet>(key.namespace(), &key.name, &options).await?;
        }
        Ok(())
    }
}

fn owner_reference(deployment: &Deployment) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: deployment.metadata.name.clone().unwrap_or_default(),
        uid: deployment.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(value: serde_json::Value) -> Deployment {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        let cases = [
            (serde_json::json!({"replicas": 10}), (3, 2)),
            (serde_json::json!({"replicas": 1}), (1, 0)),
            (
                serde_json::json!({"replicas": 4, "strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}}),
                (0, 1),
            ),
            (
                serde_json::json!({"replicas": 4, "strategy": {"rollingUpdate": {"maxSurge": "50%", "maxUnavailable": 1}}}),
                (2, 1),
            ),
            (
                serde_json::json!({"replicas": 3, "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": "10%"}}}),
                (1, 0),
            ),
        ];
        for (spec, want) in cases {
            let mut spec = spec;
            spec["selector"] = serde_json::json!({});
            spec["template"] = serde_json::json!({});
            let d = deployment(serde_json::json!({"metadata": {"name": "d"}, "spec": spec}));
            assert_eq!(surge_and_unavailable(&d), want, "{spec}");
        }
    }

    #[test]
    fn template_hash_is_stable_and_changes_with_template_and_collisions() {
        let a: PodTemplateSpec =
            serde_json::from_value(serde_json::json!({"spec": {"containers": [{"name": "c", "image": "a"}]}})).unwrap();
        let b: PodTemplateSpec =
            serde_json::from_value(serde_json::json!({"spec": {"containers": [{"name": "c", "image": "b"}]}})).unwrap();
        assert_eq!(template_hash(&a, None), template_hash(&a, None));
        assert_ne!(template_hash(&a, None), template_hash(&b, None));
        assert_ne!(template_hash(&a, None), template_hash(&a, Some(1)));
        assert!(template_hash(&a, None).bytes().all(|c| b"bcdfghjklmnpqrstvwxz2456789".contains(&c)));
        let mut hashed = a.clone();
        hashed.metadata = Some(ObjectMeta {
            labels: Some([(TEMPLATE_HASH.to_string(), "x".to_string())].into()),
            ..Default::default()
        });
        let mut plain = a.clone();
        plain.metadata = Some(ObjectMeta { labels: Some(BTreeMap::new()), ..Default::default() });
        assert!(equal_ignoring_hash(&hashed, &plain));
        assert!(!equal_ignoring_hash(&hashed, &b));
    }
}
