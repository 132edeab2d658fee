//! The `pods/eviction` subresource, after kube-apiserver's EvictionREST
//! (`pkg/registry/core/pod/storage/eviction.go`): a pod is deleted only if the
//! PodDisruptionBudget covering it allows one more disruption, and the eviction takes that
//! disruption itself — `status.disruptionsAllowed` decremented and the pod recorded in
//! `status.disruptedPods` — in a write conditioned on the budget's revision, so two
//! evictions racing for the last disruption cannot both win. The disruption controller
//! later recomputes the budget from the pods it sees.
//!
//! Pods a budget cannot be protecting (finished, pending, already being deleted) are deleted
//! without looking at budgets; an unready pod is deleted without taking from the budget when
//! the budget is met without it. The pod gets a `DisruptionTarget` condition before it goes.

use std::time::Duration;

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{Map, Value, json};

use crate::error::{ApiError, FieldCause, Result};
use crate::object;
use crate::registry::ResourceType;
use crate::rest::{Api, DeleteOptions, ListOptions, WriteOptions};
use crate::selector::LabelSelector;

/// Entries of `status.disruptedPods` beyond which evictions are refused: that many approved
/// evictions the disruption controller has not confirmed means it is not keeping up.
pub const MAX_DISRUPTED_POD_SIZE: usize = 2000;
/// The condition the disruption controller and the eviction keep on a budget.
pub const DISRUPTION_ALLOWED: &str = "DisruptionAllowed";
pub const SUFFICIENT_PODS: &str = "SufficientPods";
pub const INSUFFICIENT_PODS: &str = "InsufficientPods";
pub const SYNC_FAILED: &str = "SyncFailed";
/// The pod condition saying why a pod is about to go.
pub const DISRUPTION_TARGET: &str = "DisruptionTarget";

const VIOLATION: &str = "Cannot evict pod as it would violate the pod's disruption budget.";
const MULTIPLE_BUDGETS: &str =
    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.";
/// Attempts against concurrent writers of the pod or the budget (kube: 20).
const RETRIES: usize = 20;
const RETRY_DELAY: Duration = Duration::from_millis(100);

/// A retry delay with jitter, so evictions racing for one budget do not retry in step.
fn retry_delay() -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    RETRY_DELAY + Duration::from_nanos(u64::from(nanos % 50_000_000))
}

fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
}

fn budget_violated(budget: &PodDisruptionBudget) -> ApiError {
    let status = budget.status.clone().unwrap_or_default();
    ApiError::TooManyRequests {
        message: VIOLATION.into(),
        causes: vec![FieldCause {
            reason: "DisruptionBudget",
            field: String::new(),
            message: format!(
                "The disruption budget {} needs {} healthy pods and has {} currently",
                budget.metadata.name.as_deref().unwrap_or_default(),
                status.desired_healthy,
                status.current_healthy
            ),
        }],
        retry_after_seconds: 0,
    }
}

/// The budget's status does not reflect its spec yet (or the pod changed under us): the
/// client should come back shortly.
fn still_processing(budget: &str) -> ApiError {
    ApiError::TooManyRequests {
        message: VIOLATION.into(),
        causes: vec![FieldCause {
            reason: "DisruptionBudget",
            field: String::new(),
            message: format!("The disruption budget {budget} is still being processed by the server."),
        }],
        retry_after_seconds: 10,
    }
}

fn forbidden(budget: &str, why: &str) -> ApiError {
    ApiError::Forbidden {
        resource: "poddisruptionbudget.policy".into(),
        name: budget.into(),
        message: format!("poddisruptionbudget.policy {budget:?} is forbidden: {why}"),
    }
}

/// Sets a `metav1.Condition` as apimachinery's `SetStatusCondition` does: the transition
/// time moves only when the status changes. Returns whether anything changed.
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) -> bool {
    let Some(existing) = conditions.iter_mut().find(|c| c.type_ == new.type_) else {
        conditions.push(new);
        return true;
    };
    let mut changed = false;
    if existing.status != new.status {
        existing.status = new.status;
        existing.last_transition_time = new.last_transition_time;
        changed = true;
    }
    if existing.reason != new.reason {
        existing.reason = new.reason;
        changed = true;
    }
    if existing.message != new.message {
        existing.message = new.message;
        changed = true;
    }
    if existing.observed_generation != new.observed_generation {
        existing.observed_generation = new.observed_generation;
        changed = true;
    }
    changed
}

/// The `DisruptionAllowed` condition that goes with `status.disruptionsAllowed`, as
/// component-helpers' `UpdateDisruptionAllowedCondition` sets it.
pub fn update_disruption_allowed_condition(budget: &mut PodDisruptionBudget, now: &Time) {
    let status = budget.status.get_or_insert_with(Default::default);
    let (state, reason) =
        if status.disruptions_allowed > 0 { ("True", SUFFICIENT_PODS) } else { ("False", INSUFFICIENT_PODS) };
    let condition = Condition {
        type_: DISRUPTION_ALLOWED.into(),
        status: state.into(),
        reason: reason.into(),
        message: String::new(),
        observed_generation: status.observed_generation,
        last_transition_time: now.clone(),
    };
    set_condition(status.conditions.get_or_insert_with(Vec::new), condition);
}

/// Whether the `DisruptionAllowed` condition agrees with the status and the status with the
/// spec (component-helpers' `ConditionsAreUpToDate`).
pub fn conditions_up_to_date(budget: &PodDisruptionBudget) -> bool {
    let Some(status) = &budget.status else { return false };
    let Some(condition) = status.conditions.iter().flatten().find(|c| c.type_ == DISRUPTION_ALLOWED) else {
        return false;
    };
    if status.observed_generation.unwrap_or(0) != budget.metadata.generation.unwrap_or(0) {
        return false;
    }
    if status.disruptions_allowed > 0 {
        condition.status == "True" && condition.reason == SUFFICIENT_PODS
    } else {
        condition.status == "False" && condition.reason == INSUFFICIENT_PODS
    }
}

/// Whether a budget's `spec.selector` picks a pod with `labels`. In policy/v1 a missing
/// selector picks nothing and an empty one (`{}`) every pod of the namespace; a selector
/// that does not parse picks nothing.
pub fn selects(selector: Option<&Value>, labels: Option<&Map<String, Value>>) -> bool {
    match selector {
        None | Some(Value::Null) => false,
        Some(selector) => LabelSelector::from_object(selector).is_ok_and(|s| s.matches(labels)),
    }
}

/// Ready condition True.
pub fn is_pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("")
}

/// Finished pods have disrupted already, pending ones never counted as healthy, and pods
/// being deleted are going anyway: none of them needs a budget's permission.
fn can_ignore_budgets(pod: &Value) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed" | "Pending") || object::is_terminating(pod)
}

/// A pending pod may become ready between the check and the deletion: delete only the
/// version looked at. Finished pods and pods being deleted cannot become healthy.
fn should_enforce_resource_version(pod: &Value) -> bool {
    !matches!(phase(pod), "Succeeded" | "Failed") && !object::is_terminating(pod)
}

/// Takes one disruption from `budget` for `pod`, in memory (kube's `checkAndDecrement`).
pub fn check_and_decrement(budget: &mut PodDisruptionBudget, pod: &str, dry_run: bool, now: &Time) -> Result<()> {
    let name = budget.metadata.name.clone().unwrap_or_default();
    let generation = budget.metadata.generation.unwrap_or(0);
    let status = budget.status.clone().unwrap_or_default();
    if status.observed_generation.unwrap_or(0) < generation {
        return Err(still_processing(&name));
    }
    if status.disruptions_allowed < 0 {
        return Err(forbidden(&name, "pdb disruptions allowed is negative"));
    }
    if status.disrupted_pods.as_ref().map_or(0, |d| d.len()) > MAX_DISRUPTED_POD_SIZE {
        return Err(forbidden(&name, "DisruptedPods map too big - too many evictions not confirmed by PDB controller"));
    }
    if status.disruptions_allowed == 0 {
        return Err(budget_violated(budget));
    }
    let allowed = status.disruptions_allowed - 1;
    budget.status.get_or_insert_with(Default::default).disruptions_allowed = allowed;
    if allowed == 0 {
        update_disruption_allowed_condition(budget, now);
    }
    if dry_run {
        return Ok(());
    }
    // Tells the disruption controller not to count this pod as healthy while its deletion
    // is on the way; it drops the entry once it sees the pod go (or after a timeout).
    budget
        .status
        .get_or_insert_with(Default::default)
        .disrupted_pods
        .get_or_insert_with(Default::default)
        .insert(pod.to_string(), now.clone());
    Ok(())
}

/// The delete options an Eviction body carries, after checking the body is an Eviction of
/// this pod. `dry_run` is the request's `dryRun`; either it or the body's may ask for one.
pub fn eviction_options(namespace: Option<&str>, name: &str, eviction: &Value, dry_run: bool) -> Result<DeleteOptions> {
    if !eviction.is_object() {
        return Err(ApiError::bad_request("the body of an eviction must be a policy/v1 Eviction object"));
    }
    let api_version = eviction.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if !matches!(api_version, "" | "policy/v1" | "policy/v1beta1") {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version (policy/v1)"
        )));
    }
    let kind = eviction.get("kind").and_then(Value::as_str).unwrap_or("");
    if !matches!(kind, "" | "Eviction") {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind (Eviction)"
        )));
    }
    if object::name(eviction) != name {
        return Err(ApiError::bad_request("name in URL does not match name in Eviction object"));
    }
    let body_namespace = object::namespace(eviction);
    if !body_namespace.is_empty() && Some(body_namespace) != namespace {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let delete = eviction.get("deleteOptions").filter(|d| !d.is_null());
    if let Some(delete) = delete {
        if !delete.is_object() {
            return Err(ApiError::bad_request("deleteOptions of an Eviction must be a DeleteOptions object"));
        }
        if let Some(values) = delete.get("dryRun").filter(|v| !v.is_null())
            && !values.as_array().is_some_and(|a| a.iter().all(|v| v == "All"))
        {
            return Err(ApiError::bad_request(format!(
                "deleteOptions.dryRun: Unsupported value: {values}: supported values: \"All\""
            )));
        }
    }
    let mut options = DeleteOptions::from_body(delete);
    options.dry_run |= dry_run;
    Ok(options)
}

/// The pod with a `DisruptionTarget` condition saying the Eviction API takes it, set as
/// kube's `UpdatePodCondition` sets a condition (replaced whole; the transition time kept
/// when the status is unchanged); `None` when the pod says so already.
fn with_disruption_target(pod: &Value, now: &str) -> Option<Value> {
    let mut pod = pod.clone();
    let mut condition = json!({
        "type": DISRUPTION_TARGET,
        "status": "True",
        "reason": "EvictionByEvictionAPI",
        "message": "Eviction API: evicting",
        "lastTransitionTime": now,
    });
    if !pod.get("status").is_some_and(Value::is_object) {
        pod["status"] = json!({});
    }
    let status = &mut pod["status"];
    if !status.get("conditions").is_some_and(Value::is_array) {
        status["conditions"] = json!([]);
    }
    let conditions = status["conditions"].as_array_mut()?;
    match conditions.iter_mut().find(|c| c["type"] == DISRUPTION_TARGET) {
        None => conditions.push(condition),
        Some(old) => {
            if old["status"] == condition["status"] {
                condition["lastTransitionTime"] = old.get("lastTransitionTime").cloned().unwrap_or(Value::Null);
            }
            if *old == condition {
                return None;
            }
            *old = condition;
        }
    }
    Some(pod)
}

/// The delete options' preconditions against the pod as it is, with kube-apiserver's messages.
fn check_preconditions(rt: &ResourceType, name: &str, pod: &Value, options: &DeleteOptions) -> Result<()> {
    let (uid, version) = (object::meta_str(pod, "uid"), object::meta_str(pod, "resourceVersion"));
    if let Some(want) = options.precondition_uid.as_deref()
        && !want.is_empty()
        && want != uid
    {
        return Err(ApiError::Conflict {
            resource: rt.qualified(),
            name: name.into(),
            message: format!("Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"),
        });
    }
    if let Some(want) = options.precondition_resource_version.as_deref()
        && !want.is_empty()
        && want != version
    {
        return Err(ApiError::Conflict {
            resource: rt.qualified(),
            name: name.into(),
            message: format!(
                "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {version}"
            ),
        });
    }
    Ok(())
}

fn decode_budget(value: Value) -> Result<PodDisruptionBudget> {
    serde_json::from_value(value)
        .map_err(|e| ApiError::internal(format!("stored PodDisruptionBudget does not decode: {e}")))
}

fn now() -> Time {
    Time(k8s_openapi::chrono::Utc::now())
}

impl Api {
    /// `POST pods/{name}/eviction`: deletes the pod if its disruption budget allows it. The
    /// answer is a `Status` carrying its HTTP code (201, or 500 for a pod under more than one
    /// budget, as kube-apiserver answers); a budget that allows no disruption is a 429.
    #[tracing::instrument(level = "debug", skip(self, rt, eviction), fields(pod = %name))]
    pub async fn evict(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        eviction: &Value,
        dry_run: bool,
    ) -> Result<Value> {
        let options = eviction_options(namespace, name, eviction, dry_run)?;
        // Conflicts are retried only when they are ours; the caller's own resourceVersion
        // precondition failing is the caller's answer.
        let caller_pinned = options.precondition_resource_version.is_some();
        let mut attempt = 0;
        let pod = loop {
            let pod = self.get(rt, namespace, name).await?;
            // The caller's own preconditions are checked first: retrying cannot make them
            // hold, and a budget must not give up a disruption for a deletion that will fail.
            check_preconditions(rt, name, &pod, &options)?;
            if !can_ignore_budgets(&pod) {
                break pod;
            }
            let mut options = options.clone();
            if should_enforce_resource_version(&pod) && !caller_pinned {
                options.precondition_resource_version = Some(object::meta_str(&pod, "resourceVersion").to_string());
            }
            match self.mark_and_delete(rt, namespace, name, &options).await {
                Ok(()) => return Ok(success()),
                Err(ApiError::Conflict { .. }) if !caller_pinned && attempt < RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(retry_delay()).await;
                }
                Err(e) => return Err(e),
            }
        };

        let budgets = self.budgets_for(&pod, namespace).await?;
        if budgets.len() > 1 {
            return Ok(json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": MULTIPLE_BUDGETS, "code": 500,
            }));
        }
        // An unready pod is not counted as healthy, so evicting it takes nothing from a
        // budget that is met without it — provided it is still unready when deleted.
        let mut pin_pod_version = false;
        let mut budget_name = String::new();
        if let Some(budget) = budgets.into_iter().next() {
            budget_name = budget.metadata.name.clone().unwrap_or_default();
            let status = budget.status.clone().unwrap_or_default();
            let always_allow =
                budget.spec.as_ref().and_then(|s| s.unhealthy_pod_eviction_policy.as_deref()) == Some("AlwaysAllow");
            let met = status.current_healthy >= status.desired_healthy && status.desired_healthy > 0;
            if !is_pod_ready(&pod) && (always_allow || met) {
                pin_pod_version = true;
            } else {
                self.take_disruption(namespace, budget, name, options.dry_run).await?;
            }
        }
        let mut delete = options;
        if pin_pod_version && !caller_pinned {
            delete.precondition_resource_version = Some(object::meta_str(&pod, "resourceVersion").to_string());
        }
        match self.mark_and_delete(rt, namespace, name, &delete).await {
            Ok(()) => Ok(success()),
            // The pod changed since it was judged (it may have become ready): ask the
            // client to come back rather than delete a pod the budget may now protect.
            Err(ApiError::Conflict { .. }) if pin_pod_version && !caller_pinned => Err(still_processing(&budget_name)),
            Err(e) => Err(e),
        }
    }

    /// The budgets in the pod's namespace whose selector picks it.
    async fn budgets_for(&self, pod: &Value, namespace: Option<&str>) -> Result<Vec<PodDisruptionBudget>> {
        let Some(rt) = self.registry.find("policy", "v1", "poddisruptionbudgets") else { return Ok(Vec::new()) };
        let listed = self.list(&rt, namespace, &ListOptions::default()).await?;
        let labels = object::labels(pod);
        let mut budgets = Vec::new();
        for item in listed.items {
            if selects(item.pointer("/spec/selector"), labels) {
                budgets.push(decode_budget(item)?);
            }
        }
        Ok(budgets)
    }

    /// Takes a disruption from `budget` in a status write conditioned on its revision,
    /// reading it again after each conflict.
    async fn take_disruption(
        &self,
        namespace: Option<&str>,
        mut budget: PodDisruptionBudget,
        pod: &str,
        dry_run: bool,
    ) -> Result<()> {
        let rt = self
            .registry
            .find("policy", "v1", "poddisruptionbudgets")
            .ok_or_else(|| ApiError::internal("policy/v1 poddisruptionbudgets is not served"))?;
        let name = budget.metadata.name.clone().unwrap_or_default();
        for attempt in 0..RETRIES {
            if attempt > 0 {
                tokio::time::sleep(retry_delay()).await;
                budget = decode_budget(self.get(&rt, namespace, &name).await?)?;
            }
            check_and_decrement(&mut budget, pod, dry_run, &now())?;
            if dry_run {
                return Ok(());
            }
            let value = serde_json::to_value(&budget)
                .map_err(|e| ApiError::internal(format!("encode PodDisruptionBudget {name}: {e}")))?;
            match self.update(&rt, namespace, &name, Some("status"), value, &WriteOptions::default()).await {
                Ok(_) => return Ok(()),
                Err(ApiError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::Timeout {
            message: format!("Timeout: couldn't update PodDisruptionBudget {name:?} due to conflicts"),
        })
    }

    /// Sets the pod's `DisruptionTarget` condition, then deletes it with `options` (kube's
    /// `addConditionAndDeletePod`). The condition write checks the options' preconditions
    /// itself, and a resourceVersion precondition moves on to the version it wrote.
    async fn mark_and_delete(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
        name: &str,
        options: &DeleteOptions,
    ) -> Result<()> {
        let mut options = options.clone();
        if !options.dry_run {
            for attempt in 0..=RETRIES {
                let pod = self.get(rt, namespace, name).await?;
                check_preconditions(rt, name, &pod, &options)?;
                let Some(marked) = with_disruption_target(&pod, &object::now_rfc3339()) else { break };
                match self.update(rt, namespace, name, Some("status"), marked, &WriteOptions::default()).await {
                    Ok((written, _)) => {
                        if options.precondition_resource_version.is_some() {
                            options.precondition_resource_version =
                                Some(object::meta_str(&written, "resourceVersion").to_string());
                        }
                        break;
                    }
                    // Another status writer (a kubelet) got in between: read again.
                    Err(ApiError::Conflict { .. }) if attempt < RETRIES => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        self.delete(rt, namespace, name, &options).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(value: Value) -> PodDisruptionBudget {
        serde_json::from_value(value).unwrap()
    }

    fn at(text: &str) -> Time {
        Time(text.parse().unwrap())
    }

    #[test]
    fn a_disruption_is_taken_only_while_the_budget_allows_one() {
        let now = at("2026-05-01T10:00:00Z");
        let mut pdb = budget(json!({
            "metadata": {"name": "web", "generation": 1},
            "spec": {"minAvailable": 2},
            "status": {"observedGeneration": 1, "disruptionsAllowed": 1, "currentHealthy": 3, "desiredHealthy": 2,
                "conditions": [{"type": "DisruptionAllowed", "status": "True", "reason": "SufficientPods", "message": "",
                    "lastTransitionTime": "2026-05-01T09:00:00Z"}]},
        }));
        check_and_decrement(&mut pdb, "web-1", false, &now).unwrap();
        let status = pdb.status.clone().unwrap();
        assert_eq!(status.disruptions_allowed, 0);
        assert_eq!(status.disrupted_pods.unwrap()["web-1"], now);
        let condition = &status.conditions.unwrap()[0];
        assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("False", INSUFFICIENT_PODS));
        assert_eq!(condition.last_transition_time, now, "the status changed, so the transition time moved");

        match check_and_decrement(&mut pdb, "web-2", false, &now) {
            Err(ApiError::TooManyRequests { message, causes, retry_after_seconds: 0 }) => {
                assert_eq!(message, VIOLATION);
                assert_eq!(causes[0].reason, "DisruptionBudget");
                assert_eq!(causes[0].message, "The disruption budget web needs 2 healthy pods and has 3 currently");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_budget_its_controller_has_not_seen_or_that_is_broken_refuses() {
        let now = at("2026-05-01T10:00:00Z");
        let mut stale = budget(json!({"metadata": {"name": "web", "generation": 2},
            "status": {"observedGeneration": 1, "disruptionsAllowed": 5}}));
        match check_and_decrement(&mut stale, "p", false, &now) {
            Err(e @ ApiError::TooManyRequests { retry_after_seconds: 10, .. }) => {
                assert_eq!(e.retry_after(), Some(10));
                assert_eq!(
                    e.status()["details"]["causes"][0]["message"],
                    "The disruption budget web is still being processed by the server."
                );
            }
            other => panic!("{other:?}"),
        }
        let mut negative = budget(json!({"metadata": {"name": "web"}, "status": {"disruptionsAllowed": -1}}));
        let error = check_and_decrement(&mut negative, "p", false, &now).unwrap_err();
        assert_eq!(error.code(), 403);
        assert!(error.to_string().contains("pdb disruptions allowed is negative"), "{error}");
    }

    #[test]
    fn a_dry_run_checks_without_recording_the_pod() {
        let now = at("2026-05-01T10:00:00Z");
        let mut pdb = budget(json!({"metadata": {"name": "web"}, "status": {"disruptionsAllowed": 2}}));
        check_and_decrement(&mut pdb, "p", true, &now).unwrap();
        let status = pdb.status.unwrap();
        assert_eq!(status.disruptions_allowed, 1);
        assert!(status.disrupted_pods.is_none());
    }

    #[test]
    fn too_many_requests_is_a_kube_status() {
        let pdb = budget(json!({"metadata": {"name": "db"}, "status": {"desiredHealthy": 3, "currentHealthy": 3}}));
        let status = budget_violated(&pdb).status();
        assert_eq!(
            status,
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "Cannot evict pod as it would violate the pod's disruption budget.",
                "reason": "TooManyRequests", "code": 429,
                "details": {"causes": [{"reason": "DisruptionBudget",
                    "message": "The disruption budget db needs 3 healthy pods and has 3 currently"}]},
            })
        );
    }

    #[test]
    fn selectors_pick_as_policy_v1_does() {
        let labels = json!({"app": "web"});
        let labels = labels.as_object();
        let cases = [
            (None, false),
            (Some(json!(null)), false),
            (Some(json!({})), true),
            (Some(json!({"matchLabels": {"app": "web"}})), true),
            (Some(json!({"matchLabels": {"app": "db"}})), false),
            (Some(json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]})), true),
            (Some(json!({"matchExpressions": [{"key": "app", "operator": "Bogus"}]})), false),
        ];
        for (selector, want) in cases {
            assert_eq!(selects(selector.as_ref(), labels), want, "{selector:?}");
        }
    }

    #[test]
    fn conditions_move_their_transition_time_only_on_a_change_of_status() {
        let condition = |status: &str, reason: &str, time: &str| Condition {
            type_: DISRUPTION_ALLOWED.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: at(time),
        };
        let mut conditions = vec![condition("True", SUFFICIENT_PODS, "2026-01-01T00:00:00Z")];
        assert!(!set_condition(&mut conditions, condition("True", SUFFICIENT_PODS, "2026-02-01T00:00:00Z")));
        assert_eq!(conditions[0].last_transition_time, at("2026-01-01T00:00:00Z"));
        assert!(set_condition(&mut conditions, condition("False", INSUFFICIENT_PODS, "2026-03-01T00:00:00Z")));
        assert_eq!(conditions[0].last_transition_time, at("2026-03-01T00:00:00Z"));
        assert_eq!(conditions.len(), 1);
    }

    #[test]
    fn eviction_bodies_are_checked() {
        let ok = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "p", "namespace": "ns"},
            "deleteOptions": {"gracePeriodSeconds": 5, "preconditions": {"uid": "u"}}});
        let options = eviction_options(Some("ns"), "p", &ok, false).unwrap();
        assert_eq!(options.grace_period_seconds, Some(5));
        assert_eq!(options.precondition_uid.as_deref(), Some("u"));
        assert!(!options.dry_run);
        let beta = json!({"apiVersion": "policy/v1beta1", "kind": "Eviction", "metadata": {"name": "p"},
            "deleteOptions": {"dryRun": ["All"]}});
        assert!(eviction_options(Some("ns"), "p", &beta, false).unwrap().dry_run);
        assert!(eviction_options(Some("ns"), "p", &json!({"metadata": {"name": "p"}}), true).unwrap().dry_run);
        let bad = [
            (json!({"apiVersion": "v1", "kind": "Eviction", "metadata": {"name": "p"}}), "API version"),
            (json!({"apiVersion": "policy/v1", "kind": "Pod", "metadata": {"name": "p"}}), "expected kind"),
            (json!({"metadata": {"name": "q"}}), "name in URL does not match"),
            (json!({"metadata": {}}), "name in URL does not match"),
            (json!({"metadata": {"name": "p", "namespace": "other"}}), "namespace"),
            (json!({"metadata": {"name": "p"}, "deleteOptions": {"dryRun": ["Some"]}}), "dryRun"),
            (json!({"metadata": {"name": "p"}, "deleteOptions": 3}), "DeleteOptions"),
            (json!([1]), "Eviction object"),
        ];
        for (body, want) in bad {
            let error = eviction_options(Some("ns"), "p", &body, false).unwrap_err();
            assert_eq!(error.code(), 400, "{body}");
            assert!(error.to_string().contains(want), "{body}: {error}");
        }
    }

    #[test]
    fn the_callers_preconditions_are_checked_against_the_pod() {
        let rt = crate::registry::builtins().into_iter().find(|t| t.kind == "Pod" && t.group.is_empty()).unwrap();
        let pod = json!({"metadata": {"name": "p", "uid": "u1", "resourceVersion": "7"}});
        let options = |uid: Option<&str>, rv: Option<&str>| DeleteOptions {
            precondition_uid: uid.map(String::from),
            precondition_resource_version: rv.map(String::from),
            ..DeleteOptions::default()
        };
        assert!(check_preconditions(&rt, "p", &pod, &options(Some("u1"), Some("7"))).is_ok());
        let error = check_preconditions(&rt, "p", &pod, &options(Some("u2"), None)).unwrap_err();
        assert_eq!(error.code(), 409);
        assert_eq!(error.to_string(), "Precondition failed: UID in precondition: u2, UID in object meta: u1");
        let error = check_preconditions(&rt, "p", &pod, &options(None, Some("6"))).unwrap_err();
        assert!(error.to_string().contains("ResourceVersion in precondition: 6"), "{error}");
    }

    #[test]
    fn the_disruption_target_condition_is_added_once() {
        let pod = json!({"metadata": {"name": "p"}, "status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}]}});
        let marked = with_disruption_target(&pod, "2026-05-01T10:00:00Z").unwrap();
        let conditions = marked["status"]["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[1]["reason"], "EvictionByEvictionAPI");
        assert!(with_disruption_target(&marked, "2026-05-01T10:00:09Z").is_none(), "already marked");
        assert!(with_disruption_target(&json!({"metadata": {"name": "p"}}), "2026-05-01T10:00:00Z").is_some());
    }
}
