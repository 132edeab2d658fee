//! PodDisruptionBudget status, after kube-controller-manager's disruption controller
//! (`pkg/controller/disruption`). For each budget, from the pods its selector picks in its
//! namespace:
//!
//! * `expectedPods`: the number of those pods when `minAvailable` is an integer; otherwise
//!   (a percentage, or `maxUnavailable`) the summed scale of their controllers (ReplicaSet,
//!   ReplicationController, Deployment through its ReplicaSet, StatefulSet, or anything with
//!   a scale subresource);
//! * `desiredHealthy`: `minAvailable` (a percentage of expectedPods rounded up), or
//!   expectedPods minus `maxUnavailable` (likewise);
//! * `currentHealthy`: pods that are Ready, not being deleted and not in
//!   `status.disruptedPods` (evictions the API approved less than two minutes ago);
//! * `disruptionsAllowed`: currentHealthy - desiredHealthy, at least 0, and 0 while no pods
//!   are expected; the `DisruptionAllowed` condition says the same.
//!
//! When the numbers cannot be worked out (a pod whose controller is not found, a percentage
//! that does not parse) the budget fails closed: no disruptions allowed, condition reason
//! `SyncFailed`. The eviction subresource (`keel_api::eviction`) is the other writer of the
//! status: it takes disruptions between this controller's passes.
//!
//! A second, smaller loop clears `DisruptionTarget` conditions left on pods that were never
//! deleted after all (an eviction whose delete failed), after two minutes, as kube does.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodCondition, ReplicationController};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keel_api::error::Result;
use keel_api::eviction::{DISRUPTION_ALLOWED, DISRUPTION_TARGET, SYNC_FAILED};
use keel_runtime::events::{EventType, reference_to};
use keel_runtime::{Action, Client, Informer, ObjectKey, Recorder, WorkQueue, labels};

use crate::endpoints::POD_BY_NAMESPACE;
use crate::replicaset::is_ready;

/// How long an eviction the API approved keeps its pod out of the healthy count while the
/// pod is not yet seen being deleted (kube's `DeletionTimeout`).
pub const DELETION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a `DisruptionTarget` condition may stay on a pod that is not being deleted.
pub const STALE_DISRUPTION_TIMEOUT: Duration = Duration::from_secs(120);
/// A budget that failed closed is looked at again after this even if nothing changes (the
/// controller it could not find may just not be in the cache yet).
const FAILED_RETRY: Duration = Duration::from_secs(5);
const BUDGET_BY_NAMESPACE: &str = "namespace";

pub struct DisruptionController {
    client: Client,
    budgets: Arc<Informer<PodDisruptionBudget>>,
    pods: Arc<Informer<Pod>>,
    replica_sets: Arc<Informer<ReplicaSet>>,
    replication_controllers: Arc<Informer<ReplicationController>>,
    deployments: Arc<Informer<Deployment>>,
    stateful_sets: Arc<Informer<StatefulSet>>,
    queue: Arc<WorkQueue<ObjectKey>>,
    /// Pods whose `DisruptionTarget` condition may go stale.
    stale: Arc<WorkQueue<ObjectKey>>,
    recorder: Recorder,
}

/// What one pass works out for a budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Counts {
    pub expected: i32,
    pub desired: i32,
    /// Pods without a controller (only consulted when the scale of controllers counts).
    pub unmanaged: Vec<String>,
}

/// The budget's selector, or the reason it cannot select anything. `None`: selects nothing.
pub fn selector_of(budget: &PodDisruptionBudget) -> std::result::Result<Option<LabelSelector>, String> {
    let Some(selector) = budget.spec.as_ref().and_then(|s| s.selector.clone()) else { return Ok(None) };
    for requirement in selector.match_expressions.iter().flatten() {
        let values = requirement.values.as_ref().map_or(0, Vec::len);
        match requirement.operator.as_str() {
            "In" | "NotIn" if values == 0 => {
                return Err(format!(
                    "for 'in', 'notin' operators, values set can't be empty (key {:?})",
                    requirement.key
                ));
            }
            "Exists" | "DoesNotExist" if values > 0 => {
                return Err(format!(
                    "values set must be empty for exists and does not exist (key {:?})",
                    requirement.key
                ));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => return Err(format!("{other:?} is not a valid label selector operator")),
        }
    }
    Ok(Some(selector))
}

/// Whether the budget picks `pod`; a selector that does not parse picks nothing.
fn selects(budget: &PodDisruptionBudget, pod: &Pod) -> bool {
    pod.metadata.namespace == budget.metadata.namespace
        && matches!(selector_of(budget), Ok(Some(s)) if labels::matches(&s, pod.metadata.labels.as_ref()))
}

/// An int-or-percent against `total`, percentages rounded up (apimachinery's
/// `GetScaledValueFromIntOrPercent` with roundUp).
pub fn scaled(value: &IntOrString, total: i32) -> std::result::Result<i32, String> {
    match value {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(text) => {
            let Some(percent) = text.strip_suffix('%') else {
                return Err("invalid value for IntOrString: invalid type: string is not a percentage".into());
            };
            let percent: i64 =
                percent.parse().map_err(|e| format!("invalid value for IntOrString: invalid value {text:?}: {e}"))?;
            let product = percent * i64::from(total);
            // Ceiling division that also holds for negative percentages.
            let value = product.div_euclid(100) + i64::from(product.rem_euclid(100) != 0);
            i32::try_from(value).map_err(|_| format!("invalid value for IntOrString: {text:?} is out of range"))
        }
    }
}

/// Whether the budget's numbers come from its pods' controllers rather than the pods.
pub fn needs_controller_scale(spec: &PodDisruptionBudgetSpec) -> bool {
    spec.max_unavailable.is_some() || matches!(spec.min_available, Some(IntOrString::String(_)))
}

/// expectedPods and desiredHealthy, given the pods and (when `needs_controller_scale`) the
/// summed scale of their controllers (kube's `getExpectedPodCount`).
pub fn expected_and_desired(
    spec: &PodDisruptionBudgetSpec,
    pods: usize,
    scale: Option<i32>,
) -> std::result::Result<(i32, i32), String> {
    let scale = || scale.ok_or_else(|| "the scale of the pods' controllers is unknown".to_string());
    if let Some(max) = &spec.max_unavailable {
        let expected = scale()?;
        Ok((expected, (expected - scaled(max, expected)?).max(0)))
    } else if let Some(min) = &spec.min_available {
        match min {
            IntOrString::Int(n) => Ok((i32::try_from(pods).unwrap_or(i32::MAX), *n)),
            IntOrString::String(_) => {
                let expected = scale()?;
                Ok((expected, scaled(min, expected)?))
            }
        }
    } else {
        Ok((0, 0))
    }
}

fn deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn pod_name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or_default()
}

fn elapsed_since(then: &Time, now: &Time) -> Duration {
    (now.0 - then.0).to_std().unwrap_or(Duration::ZERO)
}

/// The `disruptedPods` entries still pending: pods of the budget not yet being deleted whose
/// eviction is less than [`DELETION_TIMEOUT`] old. Also when to look again (the first entry
/// to expire) and the pods whose entry expired without their deletion being seen (kube's
/// `buildDisruptedPodMap`).
pub fn disrupted_pods<'a>(
    budget: &PodDisruptionBudget,
    pods: &'a [Arc<Pod>],
    now: &Time,
) -> (BTreeMap<String, Time>, Option<Duration>, Vec<&'a Arc<Pod>>) {
    let mut pending = BTreeMap::new();
    let mut recheck: Option<Duration> = None;
    let mut expired = Vec::new();
    let Some(listed) = budget.status.as_ref().and_then(|s| s.disrupted_pods.as_ref()) else {
        return (pending, recheck, expired);
    };
    for pod in pods {
        if deleting(pod) {
            continue;
        }
        let Some(at) = listed.get(pod_name(pod)) else { continue };
        let age = elapsed_since(at, now);
        if now.0 >= at.0 && age >= DELETION_TIMEOUT {
            expired.push(pod);
        } else {
            let left = DELETION_TIMEOUT.saturating_sub(age);
            recheck = Some(recheck.map_or(left, |r| r.min(left)));
            pending.insert(pod_name(pod).to_string(), at.clone());
        }
    }
    (pending, recheck, expired)
}

/// Ready pods that are neither being deleted nor about to be (kube's `countHealthyPods`).
pub fn count_healthy(pods: &[Arc<Pod>], disrupted: &BTreeMap<String, Time>, now: &Time) -> i32 {
    let healthy = pods.iter().filter(|pod| {
        let about_to_go = disrupted.get(pod_name(pod)).is_some_and(|at| elapsed_since(at, now) < DELETION_TIMEOUT);
        !deleting(pod) && !about_to_go && is_ready(pod)
    });
    i32::try_from(healthy.count()).unwrap_or(i32::MAX)
}

/// The status the budget should have, or `None` when it has it already (kube's
/// `updatePdbStatus`). No disruptions are allowed while no pods are expected, so a budget
/// whose first pods appear before this controller sees them starts out safe.
pub fn next_status(
    budget: &PodDisruptionBudget,
    current: i32,
    counts: &Counts,
    disrupted: BTreeMap<String, Time>,
    now: &Time,
) -> Option<PodDisruptionBudgetStatus> {
    let allowed = if counts.expected <= 0 { 0 } else { (current - counts.desired).max(0) };
    let old = budget.status.clone().unwrap_or_default();
    let generation = budget.metadata.generation.unwrap_or(0);
    let unchanged = old.current_healthy == current
        && old.desired_healthy == counts.desired
        && old.expected_pods == counts.expected
        && old.disruptions_allowed == allowed
        && old.disrupted_pods.clone().unwrap_or_default() == disrupted
        && old.observed_generation.unwrap_or(0) == generation
        && keel_api::eviction::conditions_up_to_date(budget);
    if unchanged {
        return None;
    }
    let mut updated = budget.clone();
    updated.status = Some(PodDisruptionBudgetStatus {
        current_healthy: current,
        desired_healthy: counts.desired,
        expected_pods: counts.expected,
        disruptions_allowed: allowed,
        disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
        observed_generation: Some(generation),
        conditions: old.conditions,
    });
    keel_api::eviction::update_disruption_allowed_condition(&mut updated, now);
    updated.status
}

/// No disruptions, and a `SyncFailed` condition saying why (kube's `failSafe`): when the
/// numbers cannot be worked out, the eviction subresource must not approve anything.
pub fn fail_safe_status(budget: &PodDisruptionBudget, message: &str, now: &Time) -> PodDisruptionBudgetStatus {
    let mut status = budget.status.clone().unwrap_or_default();
    status.disruptions_allowed = 0;
    let condition = Condition {
        type_: DISRUPTION_ALLOWED.into(),
        status: "False".into(),
        reason: SYNC_FAILED.into(),
        message: message.into(),
        observed_generation: status.observed_generation,
        last_transition_time: now.clone(),
    };
    keel_api::eviction::set_condition(status.conditions.get_or_insert_with(Vec::new), condition);
    status
}

/// How long until the pod's `DisruptionTarget` condition counts as stale, if it can: the pod
/// is not being deleted, not finished, and the condition is True and was not set by a kubelet.
pub fn stale_disruption_wait(pod: &Pod, now: &Time) -> Option<Duration> {
    if deleting(pod) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let condition = status.conditions.as_ref()?.iter().find(|c| c.type_ == DISRUPTION_TARGET)?;
    if condition.status != "True" || condition.reason.as_deref() == Some("TerminationByKubelet") {
        return None;
    }
    let age = condition.last_transition_time.as_ref().map_or(Duration::ZERO, |t| elapsed_since(t, now));
    Some(STALE_DISRUPTION_TIMEOUT.saturating_sub(age))
}

fn group_of(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(group, _)| group)
}

/// The pod's controller reference.
fn controller_of(pod: &Pod) -> Option<&OwnerReference> {
    pod.metadata.owner_references.iter().flatten().find(|r| r.controller == Some(true))
}

impl DisruptionController {
    pub fn new(
        client: Client,
        pods: Arc<Informer<Pod>>,
        replica_sets: Arc<Informer<ReplicaSet>>,
        replication_controllers: Arc<Informer<ReplicationController>>,
        recorder: Recorder,
    ) -> Arc<Self> {
        let budgets = Informer::<PodDisruptionBudget>::new(client.clone());
        budgets.add_index(BUDGET_BY_NAMESPACE, |b| b.metadata.namespace.clone().into_iter().collect());
        let this = Arc::new(DisruptionController {
            budgets,
            deployments: Informer::new(client.clone()),
            stateful_sets: Informer::new(client.clone()),
            client,
            pods,
            replica_sets,
            replication_controllers,
            queue: WorkQueue::new(),
            stale: WorkQueue::new(),
            recorder,
        });
        this.budgets.feed(this.queue.clone());
        let weak = Arc::downgrade(&this);
        this.pods.on_change(move |old, new| {
            let Some(this) = weak.upgrade() else { return };
            // The old version too: a pod whose labels changed leaves its old budget.
            for pod in [old, new].into_iter().flatten() {
                this.enqueue_budgets_of(pod);
            }
            if let Some(pod) = new
                && let Some(wait) = stale_disruption_wait(pod, &keel_runtime::now())
            {
                this.stale.add_after(ObjectKey::of(pod.as_ref()), wait);
            }
        });
        this
    }

    fn enqueue_budgets_of(&self, pod: &Pod) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let budgets: Vec<_> =
            self.budgets.by_index(BUDGET_BY_NAMESPACE, &namespace).into_iter().filter(|b| selects(b, pod)).collect();
        if budgets.len() > 1 {
            let mut names: Vec<&str> = budgets.iter().filter_map(|b| b.metadata.name.as_deref()).collect();
            names.sort_unstable();
            self.recorder.record(
                reference_to(pod),
                EventType::Warning,
                "MultiplePodDisruptionBudgets",
                format!(
                    "Pod {namespace:?}/{:?} matches multiple PodDisruptionBudgets.  Chose {:?} arbitrarily.",
                    pod_name(pod),
                    names.first().copied().unwrap_or_default()
                ),
            );
        }
        for budget in budgets {
            self.queue.add(ObjectKey::of(budget.as_ref()));
        }
    }

    /// The controller's loops: its informers and workers (the pod, ReplicaSet and
    /// ReplicationController informers are shared and run elsewhere).
    pub async fn run(self: Arc<Self>, workers: usize) {
        let _budgets = keel_runtime::AbortOnDrop::spawn(self.budgets.clone().run());
        let _deployments = keel_runtime::AbortOnDrop::spawn(self.deployments.clone().run());
        let _stateful_sets = keel_runtime::AbortOnDrop::spawn(self.stateful_sets.clone().run());
        self.budgets.wait_synced().await;
        self.pods.wait_synced().await;
        self.replica_sets.wait_synced().await;
        self.replication_controllers.wait_synced().await;
        self.deployments.wait_synced().await;
        self.stateful_sets.wait_synced().await;
        let this = self.clone();
        let budgets = keel_runtime::run_workers(self.queue.clone(), workers, "PodDisruptionBudget", move |key| {
            let this = this.clone();
            async move { this.reconcile(key).await }
        });
        let this = self.clone();
        let stale = keel_runtime::run_workers(self.stale.clone(), 1, "DisruptionTarget", move |key| {
            let this = this.clone();
            async move { this.clear_stale_disruption(key).await }
        });
        tokio::join!(budgets, stale);
    }

    async fn reconcile(&self, key: ObjectKey) -> Result<Action> {
        let Some(budget) = self.budgets.get(&key) else { return Ok(Action::Done) };
        let now = keel_runtime::now();
        match self.sync(&budget, &now).await {
            Ok((status, recheck)) => {
                if let Some(status) = status {
                    self.write(&budget, status).await?;
                }
                Ok(recheck.map_or(Action::Done, Action::RequeueAfter))
            }
            Err(message) => {
                tracing::debug!(budget = %key, error = %message, "disruption budget failed closed");
                let status = fail_safe_status(&budget, &message, &now);
                if budget.status.as_ref() != Some(&status) {
                    self.write(&budget, status).await?;
                }
                Ok(Action::RequeueAfter(FAILED_RETRY))
            }
        }
    }

    async fn write(&self, budget: &PodDisruptionBudget, status: PodDisruptionBudgetStatus) -> Result<()> {
        let key = ObjectKey::of(budget);
        let updated = PodDisruptionBudget { status: Some(status), ..budget.clone() };
        self.client.replace_status(key.namespace(), &key.name, &updated).await?;
        Ok(())
    }

    /// The budget's new status (if it changes) and when to look again; `Err` when the
    /// numbers cannot be worked out. Events say what went wrong, as kube's do.
    async fn sync(
        &self,
        budget: &Arc<PodDisruptionBudget>,
        now: &Time,
    ) -> std::result::Result<(Option<PodDisruptionBudgetStatus>, Option<Duration>), String> {
        let reference = reference_to(budget.as_ref());
        let namespace = budget.metadata.namespace.clone().unwrap_or_default();
        let selector = selector_of(budget).inspect_err(|e| {
            self.recorder.record(reference.clone(), EventType::Warning, "NoPods", format!("Failed to get pods: {e}"));
        })?;
        let mut pods: Vec<Arc<Pod>> = match &selector {
            None => Vec::new(),
            Some(selector) => self
                .pods
                .by_index(POD_BY_NAMESPACE, &namespace)
                .into_iter()
                .filter(|p| labels::matches(selector, p.metadata.labels.as_ref()))
                .collect(),
        };
        // Stable order, so events and errors name the same pod each pass.
        pods.sort_by(|a, b| pod_name(a).cmp(pod_name(b)));
        if pods.is_empty() {
            self.recorder.record(reference.clone(), EventType::Normal, "NoPods", "No matching pods found");
        }
        let spec = budget.spec.clone().unwrap_or_default();
        let counted = async {
            let (scale, unmanaged) = if needs_controller_scale(&spec) {
                let (scale, unmanaged) = self.controller_scale(&pods, &namespace).await?;
                (Some(scale), unmanaged)
            } else {
                (None, Vec::new())
            };
            let (expected, desired) = expected_and_desired(&spec, pods.len(), scale)?;
            Ok::<_, String>(Counts { expected, desired, unmanaged })
        };
        let counts = counted.await.inspect_err(|e| {
            self.recorder.record(
                reference.clone(),
                EventType::Warning,
                "CalculateExpectedPodCountFailed",
                format!("Failed to calculate the number of expected pods: {e}"),
            );
        })?;
        if !counts.unmanaged.is_empty() {
            self.recorder.record(
                reference.clone(),
                EventType::Warning,
                "UnmanagedPods",
                format!(
                    "Pods selected by this PodDisruptionBudget (selector: {}) were found to be unmanaged. As a result, \
                     the status of the PDB cannot be calculated correctly, which may result in undefined behavior. To \
                     account for these pods please set \".spec.minAvailable\" field of the PDB to an integer value.",
                    serde_json::to_string(&selector).unwrap_or_default()
                ),
            );
        }
        let (disrupted, recheck, expired) = disrupted_pods(budget, &pods, now);
        for pod in expired {
            self.recorder.record(
                reference_to(pod.as_ref()),
                EventType::Warning,
                "NotDeleted",
                format!(
                    "Pod was expected by PDB {namespace}/{} to be deleted but it wasn't",
                    budget.metadata.name.as_deref().unwrap_or_default()
                ),
            );
        }
        let current = count_healthy(&pods, &disrupted, now);
        Ok((next_status(budget, current, &counts, disrupted, now), recheck))
    }

    /// The summed scale of the pods' controllers, and the pods without one (kube's
    /// `getExpectedScale`). A pod whose controller cannot be found is an error.
    async fn controller_scale(
        &self,
        pods: &[Arc<Pod>],
        namespace: &str,
    ) -> std::result::Result<(i32, Vec<String>), String> {
        // By the uid of the controller whose scale counts (a Deployment's, for the pods
        // of all its ReplicaSets), so each counts once.
        let mut scales: HashMap<String, i32> = HashMap::new();
        let mut unmanaged = Vec::new();
        for pod in pods {
            let Some(reference) = controller_of(pod) else {
                unmanaged.push(pod_name(pod).to_string());
                continue;
            };
            if scales.contains_key(&reference.uid) {
                continue;
            }
            match self.find_scale(reference, namespace).await? {
                Some((uid, scale)) => {
                    scales.insert(uid, scale);
                }
                None => return Err(format!("found no controllers for pod {:?}", pod_name(pod))),
            }
        }
        Ok((scales.values().sum(), unmanaged))
    }

    /// The uid and `spec.replicas` of the controller that sizes the pods `reference`
    /// controls: kube's finders, in kube's order, then the scale subresource of any kind.
    async fn find_scale(
        &self,
        reference: &OwnerReference,
        namespace: &str,
    ) -> std::result::Result<Option<(String, i32)>, String> {
        let key = ObjectKey::new(namespace, reference.name.clone());
        let group = group_of(&reference.api_version);
        let same = |uid: &Option<String>| uid.as_deref() == Some(reference.uid.as_str());
        match (group, reference.kind.as_str()) {
            ("", "ReplicationController") => {
                if let Some(rc) = self.replication_controllers.get(&key).filter(|rc| same(&rc.metadata.uid)) {
                    let replicas = rc.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                    return Ok(Some((reference.uid.clone(), replicas)));
                }
            }
            ("apps" | "extensions", "ReplicaSet") => {
                if let Some(rs) = self.replica_sets.get(&key).filter(|rs| same(&rs.metadata.uid)) {
                    match rs.metadata.owner_references.iter().flatten().find(|r| r.controller == Some(true)) {
                        // A Deployment's ReplicaSet: the Deployment's size counts.
                        Some(owner)
                            if owner.kind == "Deployment"
                                && matches!(group_of(&owner.api_version), "apps" | "extensions") =>
                        {
                            let deployment = self
                                .deployments
                                .get(&ObjectKey::new(namespace, owner.name.clone()))
                                .filter(|d| d.metadata.uid.as_deref() == Some(owner.uid.as_str()));
                            if let Some(deployment) = deployment {
                                let replicas = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                                return Ok(Some((owner.uid.clone(), replicas)));
                            }
                        }
                        _ => {
                            let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                            return Ok(Some((reference.uid.clone(), replicas)));
                        }
                    }
                }
            }
            ("apps", "StatefulSet") => {
                if let Some(set) = self.stateful_sets.get(&key).filter(|s| same(&s.metadata.uid)) {
                    let replicas = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                    return Ok(Some((reference.uid.clone(), replicas)));
                }
            }
            _ => {}
        }
        self.scale_subresource(reference, namespace).await
    }

    /// The scale subresource of the controller, read through the API (kube's
    /// `getScaleController`): how custom controllers with `/scale` size a budget.
    async fn scale_subresource(
        &self,
        reference: &OwnerReference,
        namespace: &str,
    ) -> std::result::Result<Option<(String, i32)>, String> {
        let (group, version) = reference.api_version.split_once('/').unwrap_or(("", reference.api_version.as_str()));
        let api = &self.client.api;
        let rt = api.registry.find_kind(group, version, &reference.kind).ok_or_else(|| {
            format!("no matches for kind {:?} in version {:?}", reference.kind, reference.api_version)
        })?;
        if rt.scale.is_none() {
            return Err(format!("{} does not implement the scale subresource", rt.qualified()));
        }
        let object = match api.get(&rt, Some(namespace), &reference.name).await {
            Ok(object) => object,
            Err(keel_api::error::ApiError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let scale = keel_api::scale::scale_of(&rt, &object, 0).map_err(|e| e.to_string())?;
        if scale.pointer("/metadata/uid").and_then(serde_json::Value::as_str) != Some(reference.uid.as_str()) {
            return Ok(None);
        }
        let replicas = scale.pointer("/spec/replicas").and_then(serde_json::Value::as_i64).unwrap_or(0);
        Ok(Some((reference.uid.clone(), i32::try_from(replicas).unwrap_or(i32::MAX))))
    }

    /// Sets a stale `DisruptionTarget` condition to False (kube's `syncStalePodDisruption`).
    async fn clear_stale_disruption(&self, key: ObjectKey) -> Result<Action> {
        let Some(pod) = self.pods.get(&key) else { return Ok(Action::Done) };
        let now = keel_runtime::now();
        let Some(wait) = stale_disruption_wait(&pod, &now) else { return Ok(Action::Done) };
        if !wait.is_zero() {
            return Ok(Action::RequeueAfter(wait));
        }
        let mut updated = (*pod).clone();
        let conditions = updated.status.get_or_insert_with(Default::default).conditions.get_or_insert_with(Vec::new);
        // Replaced whole, as kube's UpdatePodCondition does: the eviction's reason goes.
        let cleared = PodCondition {
            type_: DISRUPTION_TARGET.into(),
            status: "False".into(),
            last_transition_time: Some(now),
            ..PodCondition::default()
        };
        match conditions.iter_mut().find(|c| c.type_ == DISRUPTION_TARGET) {
            Some(condition) => *condition = cleared,
            None => return Ok(Action::Done),
        }
        self.client.replace_status(key.namespace(), &key.name, &updated).await?;
        tracing::debug!(pod = %key, "reset stale DisruptionTarget condition to False");
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Time {
        Time(text.parse().unwrap())
    }

    fn spec(value: serde_json::Value) -> PodDisruptionBudgetSpec {
        serde_json::from_value(value).unwrap()
    }

    fn pod(name: &str, ready: bool, deleting: bool) -> Arc<Pod> {
        let mut value = serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        });
        if deleting {
            value["metadata"]["deletionTimestamp"] = serde_json::json!("2026-05-01T10:00:00Z");
        }
        Arc::new(serde_json::from_value(value).unwrap())
    }

    #[test]
    fn desired_and_expected_follow_kubes_rules() {
        // (spec, matching pods, controllers' scale) -> (expected, desired)
        let cases = [
            (serde_json::json!({"minAvailable": 2}), 3, None, Ok((3, 2))),
            (serde_json::json!({"minAvailable": 5}), 3, None, Ok((3, 5))),
            (serde_json::json!({"minAvailable": "50%"}), 3, Some(5), Ok((5, 3))),
            (serde_json::json!({"minAvailable": "100%"}), 3, Some(4), Ok((4, 4))),
            (serde_json::json!({"maxUnavailable": 1}), 3, Some(4), Ok((4, 3))),
            (serde_json::json!({"maxUnavailable": "25%"}), 3, Some(5), Ok((5, 3))),
            (serde_json::json!({"maxUnavailable": 7}), 3, Some(5), Ok((5, 0))),
            (serde_json::json!({}), 3, None, Ok((0, 0))),
        ];
        for (value, pods, scale, want) in cases {
            let spec = spec(value.clone());
            assert_eq!(needs_controller_scale(&spec), scale.is_some(), "{value}");
            assert_eq!(expected_and_desired(&spec, pods, scale), want, "{value}");
        }
        let error = expected_and_desired(&spec(serde_json::json!({"minAvailable": "five"})), 3, Some(5)).unwrap_err();
        assert!(error.contains("not a percentage"), "{error}");
        assert_eq!(scaled(&IntOrString::String("33%".into()), 10), Ok(4), "rounded up");
        assert!(scaled(&IntOrString::String("x%".into()), 10).is_err());
    }

    #[test]
    fn healthy_pods_are_ready_not_deleting_and_not_just_evicted() {
        let now = at("2026-05-01T10:05:00Z");
        let pods = vec![
            pod("ready", true, false),
            pod("unready", false, false),
            pod("deleting", true, true),
            pod("evicted-recently", true, false),
            pod("evicted-long-ago", true, false),
        ];
        let budget: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "status": {"disruptedPods": {
                "evicted-recently": "2026-05-01T10:04:30Z",
                "evicted-long-ago": "2026-05-01T10:00:00Z",
                "deleting": "2026-05-01T10:04:00Z",
                "gone": "2026-05-01T10:04:00Z",
            }},
        }))
        .unwrap();
        let (pending, recheck, expired) = disrupted_pods(&budget, &pods, &now);
        assert_eq!(pending.keys().collect::<Vec<_>>(), ["evicted-recently"]);
        assert_eq!(recheck, Some(Duration::from_secs(90)), "when the recent entry expires");
        assert_eq!(expired.iter().map(|p| pod_name(p)).collect::<Vec<_>>(), ["evicted-long-ago"]);
        assert_eq!(count_healthy(&pods, &pending, &now), 2, "ready and evicted-long-ago");
    }

    #[test]
    fn status_is_written_only_when_it_changes_and_allows_nothing_without_pods() {
        let now = at("2026-05-01T10:00:00Z");
        let budget: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "generation": 1},
            "spec": {"minAvailable": 2},
        }))
        .unwrap();
        let counts = Counts { expected: 3, desired: 2, unmanaged: vec![] };
        let status = next_status(&budget, 3, &counts, BTreeMap::new(), &now).unwrap();
        assert_eq!(
            (status.expected_pods, status.current_healthy, status.desired_healthy, status.disruptions_allowed),
            (3, 3, 2, 1)
        );
        assert_eq!(status.observed_generation, Some(1));
        let condition = &status.conditions.as_ref().unwrap()[0];
        assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("True", "SufficientPods"));
        let written = PodDisruptionBudget { status: Some(status), ..budget.clone() };
        assert_eq!(next_status(&written, 3, &counts, BTreeMap::new(), &now), None);

        let none = Counts { expected: 0, desired: 0, unmanaged: vec![] };
        let status = next_status(&written, 3, &none, BTreeMap::new(), &now).unwrap();
        assert_eq!(status.disruptions_allowed, 0, "no disruptions while no pods are expected");
        assert_eq!(status.conditions.unwrap()[0].reason, "InsufficientPods");

        let failed = fail_safe_status(&written, "found no controllers for pod \"p\"", &now);
        assert_eq!(failed.disruptions_allowed, 0);
        let condition = &failed.conditions.unwrap()[0];
        assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("False", "SyncFailed"));
        assert_eq!(condition.message, "found no controllers for pod \"p\"");
    }

    #[test]
    fn selectors_that_do_not_parse_select_nothing_and_say_why() {
        let budget = |selector: serde_json::Value| -> PodDisruptionBudget {
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "b", "namespace": "default"}, "spec": {"selector": selector}}),
            )
            .unwrap()
        };
        assert!(selector_of(&budget(serde_json::json!(null))).unwrap().is_none());
        assert!(selector_of(&budget(serde_json::json!({}))).unwrap().is_some());
        let bad = budget(serde_json::json!({"matchExpressions": [{"key": "a", "operator": "In"}]}));
        assert!(selector_of(&bad).is_err());
        let everything = budget(serde_json::json!({}));
        assert!(selects(&everything, &pod("any", true, false)), "an empty selector picks every pod in policy/v1");
        assert!(!selects(&bad, &pod("any", true, false)));
    }

    #[test]
    fn only_disruption_targets_not_followed_by_a_deletion_go_stale() {
        let now = at("2026-05-01T10:01:00Z");
        let with = |condition: serde_json::Value, phase: &str, deleting: bool| -> Pod {
            let mut value =
                serde_json::json!({"metadata": {"name": "p"}, "status": {"phase": phase, "conditions": [condition]}});
            if deleting {
                value["metadata"]["deletionTimestamp"] = serde_json::json!("2026-05-01T10:00:00Z");
            }
            serde_json::from_value(value).unwrap()
        };
        let evicting = serde_json::json!({"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
            "lastTransitionTime": "2026-05-01T10:00:00Z"});
        assert_eq!(
            stale_disruption_wait(&with(evicting.clone(), "Running", false), &now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(stale_disruption_wait(&with(evicting.clone(), "Running", true), &now), None);
        assert_eq!(stale_disruption_wait(&with(evicting, "Failed", false), &now), None);
        let kubelet =
            serde_json::json!({"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"});
        assert_eq!(stale_disruption_wait(&with(kubelet, "Running", false), &now), None);
    }
}
