//! The HorizontalPodAutoscaler controller (kube's `podautoscaler`): every sync period each
//! autoscaler reads its target's `scale` subresource, the pods the scale's selector picks and
//! their usage from `metrics.k8s.io` (in process, through the same API a client reaches, as
//! kube-controller-manager reads metrics-server), computes the replicas each Resource metric
//! asks for (`replica_calculator`), takes the highest, stabilizes scale-down over a window
//! (300 s by default: the highest recommendation of the window wins), bounds it by
//! min/max and the scale-up rate, and writes the target's scale when it differs. Status
//! (replicas, current metrics, lastScaleTime, the AbleToScale / ScalingActive /
//! ScalingLimited conditions) and Events (`SuccessfulRescale`, `FailedGetResourceMetric`…)
//! are kube's.
//!
//! The API stores autoscaling/v1 objects as v2 (it converts between the two), so only v2 is
//! watched. Only Resource metrics (cpu, memory) are served. An autoscaler with a `behavior`
//! is held to its stabilization windows and rate policies (`Pods`/`Percent` per period,
//! `selectPolicy`), measured against the rescales this controller made in each period; one
//! without is held to kube's fixed rate (at most max(2 × current, 4) at once).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2 as autoscaling2;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use keel_api::error::{ApiError, Result};
use keel_api::rest::{ListOptions, WriteOptions};
use keel_api::selector::LabelSelector;
use keel_runtime::events::EventType;
use keel_runtime::{Action, Client, Informer, ObjectKey, Recorder, WorkQueue};
use keel_scheduler_framework::quantity;
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::replica_calculator::{self, PodSample, PodState, Policy, Rules, ScaleEvent, Select, Target};

#[derive(Debug, Clone)]
pub struct Settings {
    /// How often each autoscaler is looked at (`--horizontal-pod-autoscaler-sync-period`).
    pub sync_period: Duration,
    /// `--horizontal-pod-autoscaler-downscale-stabilization`, used when `behavior` gives none.
    pub downscale_stabilization: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { sync_period: Duration::from_secs(15), downscale_stabilization: Duration::from_secs(300) }
    }
}

pub struct PodAutoscaler {
    client: Client,
    autoscalers: Arc<Informer<autoscaling2::HorizontalPodAutoscaler>>,
    pods: Arc<Informer<Pod>>,
    recorder: Recorder,
    queue: Arc<WorkQueue<ObjectKey>>,
    settings: Settings,
    /// Recent recommendations per autoscaler (by uid), for stabilization.
    recommendations: Mutex<HashMap<String, Vec<(Instant, i32)>>>,
    /// Rescales per autoscaler (by uid), for `behavior`'s rate policies.
    scale_events: Mutex<HashMap<String, ScaleEvents>>,
}

#[derive(Debug, Default)]
struct ScaleEvents {
    up: Vec<ScaleEvent>,
    down: Vec<ScaleEvent>,
}

/// kube's `GenerateHPAScaleUpRules` / `GenerateHPAScaleDownRules`: what is missing from a
/// `behavior` direction takes kube's default (up: 4 pods or 100% per 15 s, the larger; down:
/// 100% per 15 s).
fn rules(given: Option<&autoscaling2::HPAScalingRules>, up: bool) -> Rules {
    let select = match given.and_then(|r| r.select_policy.as_deref()) {
        Some("Min") => Select::Min,
        Some("Disabled") => Select::Disabled,
        _ => Select::Max,
    };
    let period = |seconds: i32| Duration::from_secs(seconds.max(0) as u64);
    let policies: Vec<Policy> = given
        .and_then(|r| r.policies.as_ref())
        .map(|policies| {
            policies
                .iter()
                .filter_map(|p| match p.type_.as_str() {
                    "Pods" => Some(Policy::Pods { value: p.value, period: period(p.period_seconds) }),
                    "Percent" => Some(Policy::Percent { value: p.value, period: period(p.period_seconds) }),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let policies = match (policies.is_empty(), up) {
        (false, _) => policies,
        (true, true) => {
            vec![Policy::Pods { value: 4, period: period(15) }, Policy::Percent { value: 100, period: period(15) }]
        }
        (true, false) => vec![Policy::Percent { value: 100, period: period(15) }],
    };
    Rules { select, policies }
}

/// One metric's outcome, for status and events.
struct Measured {
    replicas: i32,
    status: autoscaling2::MetricStatus,
    /// How kube names it in a rescale reason.
    description: String,
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
) -> autoscaling2::HorizontalPodAutoscalerCondition {
    autoscaling2::HorizontalPodAutoscalerCondition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.into()),
        last_transition_time: Some(keel_runtime::now()),
    }
}

/// Conditions replaced by type; a transition time moves only when the status does.
fn set_conditions(
    old: &[autoscaling2::HorizontalPodAutoscalerCondition],
    new: Vec<autoscaling2::HorizontalPodAutoscalerCondition>,
) -> Vec<autoscaling2::HorizontalPodAutoscalerCondition> {
    let mut out: Vec<_> = old.iter().filter(|c| !new.iter().any(|n| n.type_ == c.type_)).cloned().collect();
    for mut c in new {
        if let Some(previous) = old.iter().find(|o| o.type_ == c.type_ && o.status == c.status) {
            c.last_transition_time = previous.last_transition_time.clone();
        }
        out.push(c);
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// kube-apiserver's default metric for a v2 autoscaler without any: cpu at 80%.
fn cpu_utilization(percent: i32) -> autoscaling2::MetricSpec {
    autoscaling2::MetricSpec {
        type_: "Resource".into(),
        resource: Some(autoscaling2::ResourceMetricSource {
            name: "cpu".into(),
            target: autoscaling2::MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(percent),
                ..Default::default()
            },
        }),
        ..Default::default()
    }
}

/// Usage or request of `resource` in milli-units.
fn milli(q: &str) -> Option<i64> {
    quantity::parse_milli(q).ok()
}

fn pod_request(pod: &Pod, resource: &str) -> Option<i64> {
    let containers = &pod.spec.as_ref()?.containers;
    let mut sum = 0;
    for c in containers {
        let request = c.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get(resource))?;
        sum += milli(&request.0)?;
    }
    Some(sum)
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// kube's `groupPods`, conservatively: a pod being deleted or failed is ignored; a pending
/// one is unready; for cpu, a pod that is not Ready is unready (kube also trusts a not-ready
/// pod's cpu once it has been running past its 5-minute initialization period; keel does not).
fn pod_state(pod: &Pod, resource: &str) -> PodState {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    if pod.metadata.deletion_timestamp.is_some() || phase == "Failed" || phase == "Succeeded" {
        return PodState::Ignored;
    }
    if phase == "Pending" || (resource == "cpu" && !is_ready(pod)) {
        return PodState::Unready;
    }
    PodState::Ready
}

impl PodAutoscaler {
    pub fn new(client: Client, pods: Arc<Informer<Pod>>, recorder: Recorder, settings: Settings) -> Arc<PodAutoscaler> {
        let autoscalers = Informer::new(client.clone());
        let queue = WorkQueue::new();
        let this = Arc::new(PodAutoscaler {
            client,
            autoscalers,
            pods,
            recorder,
            queue,
            settings,
            recommendations: Mutex::new(HashMap::new()),
            scale_events: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&this);
        this.autoscalers.on_change(move |old, new| {
            let Some(this) = weak.upgrade() else { return };
            if let Some(hpa) = new.or(old) {
                this.queue.add(ObjectKey::of(hpa.as_ref()));
            }
        });
        this
    }

    pub async fn run(self: Arc<Self>, workers: usize) {
        let _autoscalers = keel_runtime::AbortOnDrop::spawn(self.autoscalers.clone().run());
        self.autoscalers.wait_synced().await;
        self.pods.wait_synced().await;
        let this = self.clone();
        keel_runtime::run_workers(self.queue.clone(), workers, "HorizontalPodAutoscaler", move |key| {
            let this = this.clone();
            async move { this.reconcile(key).await }
        })
        .await;
    }

    #[tracing::instrument(level = "debug", skip(self), fields(hpa = %key.name, namespace = %key.namespace))]
    async fn reconcile(&self, key: ObjectKey) -> Result<Action> {
        let Some(hpa) = self.autoscalers.get(&key) else { return Ok(self.forget(&key)) };
        if hpa.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let status = self.autoscale(&hpa).await;
        let status = match status {
            Ok(status) => status,
            Err(e) => {
                tracing::debug!(error = %e, "autoscaling");
                return Err(e);
            }
        };
        self.write_status(&hpa, status).await?;
        Ok(Action::RequeueAfter(self.settings.sync_period))
    }

    fn forget(&self, key: &ObjectKey) -> Action {
        // Recommendations and rescales are keyed by uid; an autoscaler gone for good takes
        // its own along at the next pass over the maps.
        let live: std::collections::HashSet<String> =
            self.autoscalers.list().iter().filter_map(|h| h.metadata.uid.clone()).collect();
        self.recommendations.lock().retain(|uid, _| live.contains(uid));
        self.scale_events.lock().retain(|uid, _| live.contains(uid));
        tracing::trace!(?key, "autoscaler gone");
        Action::Done
    }

    /// One pass: what kube's `reconcileAutoscaler` does. Returns the status to write.
    async fn autoscale(
        &self,
        hpa: &autoscaling2::HorizontalPodAutoscaler,
    ) -> Result<autoscaling2::HorizontalPodAutoscalerStatus> {
        let spec = hpa.spec.clone().unwrap_or_default();
        let namespace = hpa.metadata.namespace.clone().unwrap_or_default();
        let reference = keel_runtime::events::reference_to(hpa);
        let mut status = hpa.status.clone().unwrap_or_default();
        let old_conditions = status.conditions.clone().unwrap_or_default();
        status.observed_generation = hpa.metadata.generation;
        let target = &spec.scale_target_ref;
        let target_name = format!("{}/{}", target.kind, target.name);

        // The target's scale.
        let (group, version) = match target.api_version.as_deref().unwrap_or("").split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), target.api_version.clone().unwrap_or_else(|| "v1".into())),
        };
        let scale = match self.client.api.registry.find_kind(&group, &version, &target.kind) {
            Some(rt) if rt.scale.is_some() => match self.client.api.get(&rt, Some(&namespace), &target.name).await {
                Ok(object) => keel_api::scale::scale_of(&rt, &object, 0).map(|s| (rt, s)),
                Err(e) => Err(e),
            },
            _ => Err(ApiError::bad_request(format!("{target_name} has no scale subresource"))),
        };
        let (rt, scale) = match scale {
            Ok(found) => found,
            Err(e) => {
                let message = format!("the HPA controller was unable to get the target's current scale: {e}");
                self.recorder.record(reference, EventType::Warning, "FailedGetScale", message.clone());
                status.conditions = Some(set_conditions(
                    &old_conditions,
                    vec![condition("AbleToScale", false, "FailedGetScale", message)],
                ));
                return Ok(status);
            }
        };
        let current = scale.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0) as i32;
        status.current_replicas = scale.pointer("/status/replicas").and_then(Value::as_i64).map(|r| r as i32);
        let selector = scale.pointer("/status/selector").and_then(Value::as_str).unwrap_or("").to_string();
        let min = spec.min_replicas.unwrap_or(1);
        let max = spec.max_replicas;
        let mut stabilized_from = None;
        let mut conditions = vec![condition(
            "AbleToScale",
            true,
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale",
        )];

        let (desired, reason) = if current == 0 && min != 0 {
            // Scaled to zero by hand: autoscaling is off until it is scaled up again.
            conditions.push(condition(
                "ScalingActive",
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero",
            ));
            status.desired_replicas = 0;
            status.current_metrics = None;
            (0, String::new())
        } else if current > max || current < min {
            // Outside the bounds: back inside them first, whatever the metrics say (kube).
            let (desired, reason) = if current > max {
                (max, "Current number of replicas above Spec.MaxReplicas")
            } else {
                (min, "Current number of replicas below Spec.MinReplicas")
            };
            (desired, reason.to_string())
        } else {
            let measured = self.measure(hpa, &spec, &namespace, &selector, current, &reference).await;
            let (proposal, reason) = match measured {
                Ok(metrics) if !metrics.is_empty() => {
                    conditions.push(condition(
                        "ScalingActive",
                        true,
                        "ValidMetricFound",
                        "the HPA was able to successfully calculate a replica count from cpu resource utilization (percentage of request)",
                    ));
                    let best = metrics.iter().max_by_key(|m| m.replicas).map(|m| (m.replicas, m.description.clone()));
                    status.current_metrics = Some(metrics.into_iter().map(|m| m.status).collect());
                    best.unwrap_or((current, String::new()))
                }
                Ok(_) | Err(_) => {
                    let message = match measured {
                        Err(e) => e,
                        Ok(_) => "no metrics to compute a replica count from".to_string(),
                    };
                    conditions.push(condition("ScalingActive", false, "FailedGetResourceMetric", message.clone()));
                    status.conditions = Some(set_conditions(&old_conditions, conditions));
                    status.desired_replicas = current;
                    return Ok(status);
                }
            };
            let stabilized = self.stabilize(hpa, current, proposal, &spec);
            if stabilized != proposal {
                stabilized_from = Some(proposal);
            }
            let (desired, limited) = self.bound(hpa, &spec, current, stabilized, min);
            conditions.push(match limited {
                Some((why, message)) => condition("ScalingLimited", true, why, message),
                None => condition(
                    "ScalingLimited",
                    false,
                    "DesiredWithinRange",
                    "the desired count is within the acceptable range",
                ),
            });
            let reason = if desired > current {
                format!("{reason} above target")
            } else {
                "All metrics below target".to_string()
            };
            (desired, reason)
        };
        status.desired_replicas = desired;
        if desired != current {
            let patch = json!({"spec": {"replicas": desired}});
            let written = self
                .client
                .api
                .patch(
                    &rt,
                    Some(&namespace),
                    &target.name,
                    Some("scale"),
                    keel_api::patch::PatchType::Merge,
                    patch,
                    &WriteOptions { field_manager: Some(self.client.manager.to_string()), ..WriteOptions::default() },
                )
                .await;
            match written {
                Ok(_) => {
                    self.record_rescale(hpa, current, desired);
                    let message = format!("New size: {desired}; reason: {reason}");
                    tracing::info!(target = %target_name, from = current, to = desired, %reason, "rescaled");
                    self.recorder.record(reference, EventType::Normal, "SuccessfulRescale", message.clone());
                    conditions.push(condition(
                        "AbleToScale",
                        true,
                        "SucceededRescale",
                        format!("the HPA controller was able to update the target scale to {desired}"),
                    ));
                    status.last_scale_time = Some(keel_runtime::now());
                }
                Err(e) => {
                    let message = format!("New size: {desired}; reason: {reason}; error: {e}");
                    self.recorder.record(reference, EventType::Warning, "FailedRescale", message.clone());
                    conditions.push(condition("AbleToScale", false, "FailedUpdateScale", message));
                    status.desired_replicas = current;
                }
            }
        } else {
            conditions.push(match stabilized_from {
                Some(proposal) if proposal < current => condition(
                    "AbleToScale",
                    true,
                    "ScaleDownStabilized",
                    "recent recommendations were higher than current one, applying the highest recent recommendation",
                ),
                Some(_) => condition(
                    "AbleToScale",
                    true,
                    "ScaleUpStabilized",
                    "recent recommendations were lower than current one, applying the lowest recent recommendation",
                ),
                None => condition("AbleToScale", true, "ReadyForNewScale", "recommended size matches current size"),
            });
        }
        // Later entries of one type win (the rescale outcome over the scale read).
        let mut by_type: BTreeMap<String, autoscaling2::HorizontalPodAutoscalerCondition> = BTreeMap::new();
        for c in conditions {
            by_type.insert(c.type_.clone(), c);
        }
        status.conditions = Some(set_conditions(&old_conditions, by_type.into_values().collect()));
        Ok(status)
    }

    /// The replicas each metric asks for. Errors (as an event and the ScalingActive message)
    /// when any Resource metric cannot be computed, as kube does.
    async fn measure(
        &self,
        hpa: &autoscaling2::HorizontalPodAutoscaler,
        spec: &autoscaling2::HorizontalPodAutoscalerSpec,
        namespace: &str,
        selector: &str,
        current: i32,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
    ) -> std::result::Result<Vec<Measured>, String> {
        let fail = |reason: &str, message: String| {
            self.recorder.record(reference.clone(), EventType::Warning, reason, message.clone());
            Err(message)
        };
        if selector.is_empty() {
            return fail("InvalidSelector", "the target's scale has no selector".to_string());
        }
        let Ok(labels) = LabelSelector::parse(selector) else {
            return fail(
                "InvalidSelector",
                format!("couldn't convert selector into a corresponding internal selector object: {selector}"),
            );
        };
        let metrics = match &spec.metrics {
            Some(m) if !m.is_empty() => m.clone(),
            _ => vec![cpu_utilization(80)],
        };
        let pods: Vec<Arc<Pod>> = self
            .pods
            .by_index(crate::endpoints::POD_BY_NAMESPACE, namespace)
            .into_iter()
            .filter(|p| labels.matches(Some(&label_map(p))))
            .collect();
        // The pods' usage, through metrics.k8s.io.
        let usage = match self.pod_usage(namespace, &labels).await {
            Ok(usage) => usage,
            Err(e) => {
                return fail(
                    "FailedGetResourceMetric",
                    format!(
                        "unable to get metrics for resource: unable to fetch metrics from resource metrics API: {e}"
                    ),
                );
            }
        };
        let mut out = Vec::new();
        for metric in metrics {
            let Some(source) = metric.resource.as_ref().filter(|_| metric.type_ == "Resource") else {
                tracing::debug!(hpa = ?hpa.metadata.name, kind = %metric.type_, "only Resource metrics are served; metric skipped");
                continue;
            };
            let resource = source.name.as_str();
            let target =
                match (source.target.type_.as_str(), source.target.average_utilization, &source.target.average_value) {
                    ("Utilization", Some(percent), _) => Target::Utilization(percent),
                    ("AverageValue", _, Some(value)) => match milli(&value.0) {
                        Some(v) => Target::AverageValue(v),
                        None => return fail("FailedGetResourceMetric", format!("invalid averageValue {:?}", value.0)),
                    },
                    (other, _, _) => {
                        return fail(
                            "FailedGetResourceMetric",
                            format!("invalid {resource} target type {other:?} for a Resource metric"),
                        );
                    }
                };
            let samples: Vec<PodSample> = pods
                .iter()
                .map(|pod| PodSample {
                    state: pod_state(pod, resource),
                    usage: usage.get(pod.metadata.name.as_deref().unwrap_or("")).and_then(|u| u.get(resource).copied()),
                    request: pod_request(pod, resource),
                })
                .collect();
            let recommendation = match replica_calculator::recommend(current, &samples, target) {
                Ok(r) => r,
                Err(e) => {
                    return fail("FailedGetResourceMetric", format!("failed to get {resource} utilization: {e}"));
                }
            };
            let value = if resource == "cpu" {
                format!("{}m", recommendation.average_value)
            } else {
                format!("{}", recommendation.average_value / 1000)
            };
            let description = match target {
                Target::Utilization(_) => format!("{resource} resource utilization (percentage of request)"),
                Target::AverageValue(_) => format!("{resource} resource"),
            };
            out.push(Measured {
                replicas: recommendation.replicas,
                status: autoscaling2::MetricStatus {
                    type_: "Resource".into(),
                    resource: Some(autoscaling2::ResourceMetricStatus {
                        name: resource.to_string(),
                        current: autoscaling2::MetricValueStatus {
                            average_utilization: recommendation.utilization,
                            average_value: Some(Quantity(value)),
                            value: None,
                        },
                    }),
                    ..Default::default()
                },
                description,
            });
        }
        Ok(out)
    }

    /// Usage per pod name and resource (milli-units), from the PodMetrics list.
    async fn pod_usage(
        &self,
        namespace: &str,
        labels: &LabelSelector,
    ) -> Result<HashMap<String, HashMap<String, i64>>> {
        let rt = self
            .client
            .api
            .registry
            .find(keel_api::metrics::GROUP, keel_api::metrics::VERSION, "pods")
            .ok_or_else(|| ApiError::internal("metrics.k8s.io is not served"))?;
        let options = ListOptions { label_selector: labels.clone(), ..ListOptions::default() };
        let listed = self.client.api.list(&rt, Some(namespace), &options).await?;
        let mut out: HashMap<String, HashMap<String, i64>> = HashMap::new();
        for item in &listed.items {
            let name = item.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
            let sums = out.entry(name).or_default();
            for container in item.get("containers").and_then(Value::as_array).into_iter().flatten() {
                for (resource, amount) in container.get("usage").and_then(Value::as_object).into_iter().flatten() {
                    if let Some(m) = amount.as_str().and_then(milli) {
                        *sums.entry(resource.clone()).or_default() += m;
                    }
                }
            }
        }
        Ok(out)
    }

    /// kube's stabilization: a scale-down goes no lower than the highest recommendation of
    /// the window (default 300 s), a scale-up no higher than the lowest of its window (0 s by
    /// default: at once).
    fn stabilize(
        &self,
        hpa: &autoscaling2::HorizontalPodAutoscaler,
        current: i32,
        proposal: i32,
        spec: &autoscaling2::HorizontalPodAutoscalerSpec,
    ) -> i32 {
        let window = |rules: Option<&autoscaling2::HPAScalingRules>, default: Duration| {
            rules
                .and_then(|r| r.stabilization_window_seconds)
                .map(|s| Duration::from_secs(s.max(0) as u64))
                .unwrap_or(default)
        };
        let behavior = spec.behavior.as_ref();
        let down = window(behavior.and_then(|b| b.scale_down.as_ref()), self.settings.downscale_stabilization);
        let up = window(behavior.and_then(|b| b.scale_up.as_ref()), Duration::ZERO);
        let uid = hpa.metadata.uid.clone().unwrap_or_default();
        let now = Instant::now();
        let mut all = self.recommendations.lock();
        // As kube: an autoscaler seen for the first time starts with the current replicas as
        // its one recommendation, so a new (or newly led) autoscaler does not scale down at
        // once without a window of evidence.
        let history = all.entry(uid).or_insert_with(|| vec![(now, current)]);
        let longest = down.max(up);
        history.retain(|(at, _)| now.duration_since(*at) <= longest);
        let mut up_to = proposal;
        let mut down_to = proposal;
        for (at, replicas) in history.iter() {
            let age = now.duration_since(*at);
            if age <= down {
                up_to = up_to.max(*replicas);
            }
            if age <= up {
                down_to = down_to.min(*replicas);
            }
        }
        history.push((now, proposal));
        // Between the two: never above what scale-up allows nor below what scale-down allows.
        if proposal > current {
            down_to.max(current)
        } else if proposal < current {
            up_to.min(current)
        } else {
            current
        }
    }

    async fn write_status(
        &self,
        hpa: &autoscaling2::HorizontalPodAutoscaler,
        status: autoscaling2::HorizontalPodAutoscalerStatus,
    ) -> Result<()> {
        if hpa.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let namespace = hpa.metadata.namespace.as_deref();
        let name = hpa.metadata.name.as_deref().unwrap_or("");
        let updated = autoscaling2::HorizontalPodAutoscaler { status: Some(status), ..hpa.clone() };
        self.client.replace_status(namespace, name, &updated).await?;
        Ok(())
    }

    /// The bounds on a stabilized recommendation: `behavior`'s rate policies against this
    /// autoscaler's recent rescales, or kube's fixed rate without a `behavior`.
    fn bound(
        &self,
        hpa: &autoscaling2::HorizontalPodAutoscaler,
        spec: &autoscaling2::HorizontalPodAutoscalerSpec,
        current: i32,
        desired: i32,
        min: i32,
    ) -> (i32, Option<(&'static str, &'static str)>) {
        let Some(behavior) = &spec.behavior else {
            return replica_calculator::bounded(current, desired, min, spec.max_replicas);
        };
        let up = rules(behavior.scale_up.as_ref(), true);
        let down = rules(behavior.scale_down.as_ref(), false);
        let uid = hpa.metadata.uid.clone().unwrap_or_default();
        let now = Instant::now();
        let mut all = self.scale_events.lock();
        let events = all.entry(uid).or_default();
        // Rescales older than every period limit nothing any more.
        let keep = up.longest_period().max(down.longest_period());
        events.up.retain(|e| now.saturating_duration_since(e.at) <= keep);
        events.down.retain(|e| now.saturating_duration_since(e.at) <= keep);
        let limits = replica_calculator::Behavior {
            up: &up,
            down: &down,
            up_events: &events.up,
            down_events: &events.down,
            now,
        };
        replica_calculator::bounded_with_behavior(current, desired, min, spec.max_replicas, &limits)
    }

    /// Remembers a rescale for the rate policies (kube's `storeScaleEvent`).
    fn record_rescale(&self, hpa: &autoscaling2::HorizontalPodAutoscaler, from: i32, to: i32) {
        if hpa.spec.as_ref().is_none_or(|s| s.behavior.is_none()) {
            return;
        }
        let uid = hpa.metadata.uid.clone().unwrap_or_default();
        let mut all = self.scale_events.lock();
        let events = all.entry(uid).or_default();
        let event = ScaleEvent { at: Instant::now(), change: (to - from).abs() };
        if to > from {
            events.up.push(event);
        } else {
            events.down.push(event);
        }
    }
}

fn label_map(pod: &Pod) -> serde_json::Map<String, Value> {
    pod.metadata.labels.iter().flatten().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect()
}
