//! Node lifecycle: watches node heartbeats (the node's Lease in `kube-node-lease` and its Ready
//! condition's heartbeat), marks a node whose heartbeats stop for the grace period Unknown,
//! keeps the not-ready / unreachable / unschedulable taints in line with the node's state,
//! marks the pods of a lost node not ready, and evicts pods from nodes with NoExecute taints
//! they do not tolerate — at once, or after their `tolerationSeconds`.
//!
//! Heartbeats are timed by this member's clock from the moment a change is seen (as
//! kube-controller-manager does), so clock skew between machines does not matter, and a new
//! leader gives every node a full grace period before judging it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use keel_api::error::Result;
use keel_api::rest::DeleteOptions;
use keel_runtime::events::{EventType, reference_to};
use keel_runtime::{Client, Informer, ObjectKey, Recorder};
use parking_lot::Mutex;

pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// NoSchedule taints for the pressure conditions a node reports (kube's TaintNodesByCondition).
pub const PRESSURE_TAINTS: [(&str, &str); 4] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
    ("NetworkUnavailable", "node.kubernetes.io/network-unavailable"),
];
pub const POD_BY_NODE: &str = "node";
const LEASE_NAMESPACE: &str = "kube-node-lease";

#[derive(Debug, Clone)]
pub struct Settings {
    /// How often nodes are looked at.
    pub monitor_period: Duration,
    /// Heartbeats missing this long make a node Unknown (kube's nodeMonitorGracePeriod).
    pub grace_period: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { monitor_period: Duration::from_secs(5), grace_period: Duration::from_secs(40) }
    }
}

pub struct NodeLifecycle {
    client: Client,
    settings: Settings,
    nodes: Arc<Informer<Node>>,
    leases: Arc<Informer<Lease>>,
    pods: Arc<Informer<Pod>>,
    recorder: Recorder,
    /// node -> (last heartbeat seen, when this member saw it change).
    heartbeats: Mutex<HashMap<String, (String, Instant)>>,
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")
}

/// The taints this controller owns that `node` should carry.
pub fn wanted_taints(node: &Node) -> Vec<(&'static str, &'static str)> {
    let mut wanted = Vec::new();
    match ready_condition(node).map(|c| c.status.as_str()) {
        Some("False") => wanted.extend([(NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")]),
        Some("Unknown") => wanted.extend([(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")]),
        // Ready, or not reported yet: a node that never reports is marked Unknown (and then
        // tainted) once its grace period has passed.
        _ => {}
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        wanted.push((UNSCHEDULABLE, "NoSchedule"));
    }
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    for (condition, taint) in PRESSURE_TAINTS {
        if conditions.iter().any(|c| c.type_ == condition && c.status == "True") {
            wanted.push((taint, "NoSchedule"));
        }
    }
    wanted
}

/// When `pod` must leave a node with `taints`: now, at a time, or never.
pub fn eviction_deadline(pod: &Pod, taints: &[Taint]) -> Option<i64> {
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
    let mut deadline: Option<i64> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let toleration = tolerations.iter().find(|t| {
            let key_ok = t.key.as_deref().unwrap_or("").is_empty() && t.operator.as_deref() == Some("Exists")
                || t.key.as_deref() == Some(taint.key.as_str());
            let value_ok = t.operator.as_deref() == Some("Exists")
                || t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("");
            let effect_ok = t.effect.as_deref().unwrap_or("").is_empty() || t.effect.as_deref() == Some("NoExecute");
            key_ok && value_ok && effect_ok
        });
        let added = taint.time_added.as_ref().map(|t| t.0.timestamp()).unwrap_or_else(crate::unix_now);
        let due = match toleration {
            None => added,
            Some(t) => match t.toleration_seconds {
                None => continue,
                Some(seconds) => added + seconds.max(0),
            },
        };
        deadline = Some(deadline.map_or(due, |d| d.min(due)));
    }
    deadline
}

impl NodeLifecycle {
    pub fn new(client: Client, pods: Arc<Informer<Pod>>, recorder: Recorder, settings: Settings) -> Arc<Self> {
        Arc::new(NodeLifecycle {
            nodes: Informer::new(client.clone()),
            leases: Informer::new(client.clone()),
            client,
            settings,
            pods,
            recorder,
            heartbeats: Mutex::new(HashMap::new()),
        })
    }

    pub async fn run(self: Arc<Self>) {
        let _nodes = keel_runtime::AbortOnDrop::spawn(self.nodes.clone().run());
        let _leases = keel_runtime::AbortOnDrop::spawn(self.leases.clone().run());
        self.nodes.wait_synced().await;
        self.leases.wait_synced().await;
        self.pods.wait_synced().await;
        loop {
            for node in self.nodes.list() {
                if let Err(e) = self.monitor(&node).await {
                    tracing::debug!(node = ?node.metadata.name, error = %e, "node lifecycle; retrying next period");
                }
            }
            tokio::time::sleep(self.settings.monitor_period).await;
        }
    }

    async fn monitor(&self, node: &Arc<Node>) -> Result<()> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let lease = self.leases.get(&ObjectKey::new(LEASE_NAMESPACE, name.clone()));
        let beat = format!(
            "{:?}/{:?}",
            lease.as_ref().and_then(|l| l.spec.as_ref()).and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            ready_condition(node).and_then(|c| c.last_heartbeat_time.as_ref()).map(|t| t.0)
        );
        let silent_for = {
            let mut heartbeats = self.heartbeats.lock();
            let entry = heartbeats.entry(name.clone()).or_insert_with(|| (beat.clone(), Instant::now()));
            if entry.0 != beat {
                *entry = (beat, Instant::now());
            }
            entry.1.elapsed()
        };
        let mut node = (**node).clone();
        let ready_status = ready_condition(&node).map(|c| c.status.clone());
        if silent_for > self.settings.grace_period && ready_status.as_deref() != Some("Unknown") {
            node = self.mark_unknown(node).await?;
            self.mark_pods_not_ready(&name).await;
        }
        let node = self.sync_taints(node).await?;
        self.evict(&node).await;
        Ok(())
    }

    async fn mark_unknown(&self, mut node: Node) -> Result<Node> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let now = keel_runtime::now();
        let status = node.status.get_or_insert_with(Default::default);
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        for type_ in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
            match conditions.iter_mut().find(|c| c.type_ == type_) {
                Some(c) => {
                    c.status = "Unknown".into();
                    c.reason = Some("NodeStatusUnknown".into());
                    c.message = Some("Kubelet stopped posting node status.".into());
                    c.last_transition_time = Some(now.clone());
                }
                None => conditions.push(NodeCondition {
                    type_: type_.into(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some("Kubelet never posted node status.".into()),
                    last_transition_time: Some(now.clone()),
                    last_heartbeat_time: None,
                }),
            }
        }
        let updated = self.client.replace_status(None, &name, &node).await?;
        self.recorder.record(
            reference_to(&updated),
            EventType::Normal,
            "NodeNotReady",
            format!("Node {name} status is now: NodeNotReady"),
        );
        Ok(updated)
    }

    async fn mark_pods_not_ready(&self, node: &str) {
        for pod in self.pods.by_index(POD_BY_NODE, node) {
            let ready = crate::replicaset::is_ready(&pod);
            if !ready {
                continue;
            }
            let key = ObjectKey::of(pod.as_ref());
            let patch = serde_json::json!({"status": {"conditions": [
                {"type": "Ready", "status": "False", "reason": "NodeNotReady", "lastTransitionTime": keel_runtime::now()},
            ]}});
            if let Err(e) = self
                .client
                .patch::<Pod>(
                    key.namespace(),
                    &key.name,
                    Some("status"),
                    keel_api::patch::PatchType::StrategicMerge,
                    patch,
                )
                .await
            {
                tracing::debug!(pod = %key, error = %e, "pod not marked not ready");
            }
        }
    }

    async fn sync_taints(&self, node: Node) -> Result<Node> {
        let wanted = wanted_taints(&node);
        let mut owned = vec![NOT_READY, UNREACHABLE, UNSCHEDULABLE];
        owned.extend(PRESSURE_TAINTS.iter().map(|(_, taint)| *taint));
        let current = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        let mut taints: Vec<Taint> = current
            .iter()
            .filter(|t| !owned.contains(&t.key.as_str()) || wanted.contains(&(t.key.as_str(), t.effect.as_str())))
            .cloned()
            .collect();
        for (key, effect) in &wanted {
            if !taints.iter().any(|t| t.key == *key && t.effect == *effect) {
                taints.push(Taint {
                    key: (*key).into(),
                    effect: (*effect).into(),
                    value: None,
                    time_added: (*effect == "NoExecute").then(keel_runtime::now),
                });
            }
        }
        if taints == current {
            return Ok(node);
        }
        let mut updated = node.clone();
        updated.spec.get_or_insert_with(Default::default).taints = (!taints.is_empty()).then_some(taints);
        let name = node.metadata.name.clone().unwrap_or_default();
        self.client.replace(None, &name, &updated).await
    }

    async fn evict(&self, node: &Node) {
        let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        if !taints.iter().any(|t| t.effect == "NoExecute") {
            return;
        }
        let now = crate::unix_now();
        let name = node.metadata.name.clone().unwrap_or_default();
        for pod in self.pods.by_index(POD_BY_NODE, &name) {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(deadline) = eviction_deadline(&pod, &taints) else { continue };
            if deadline > now {
                continue;
            }
            let key = ObjectKey::of(pod.as_ref());
            self.recorder.record(
                reference_to(pod.as_ref()),
                EventType::Normal,
                "TaintManagerEviction",
                format!("Marking for deletion Pod {key}"),
            );
            let options = DeleteOptions { precondition_uid: pod.metadata.uid.clone(), ..DeleteOptions::default() };
            if let Err(e) = self.client.delete::<Pod>(key.namespace(), &key.name, &options).await {
                tracing::info!(pod = %key, error = %e, "eviction failed; retrying next period");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(value: serde_json::Value) -> Node {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn taints_follow_readiness_and_cordoning() {
        let cases = [
            (serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}), vec![]),
            (
                serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
                vec![(NOT_READY, "NoSchedule"), (NOT_READY, "NoExecute")],
            ),
            (
                serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}),
                vec![(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")],
            ),
            (
                serde_json::json!({"spec": {"unschedulable": true}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
                vec![(UNSCHEDULABLE, "NoSchedule")],
            ),
            (
                serde_json::json!({"status": {"conditions": [
                    {"type": "Ready", "status": "True"},
                    {"type": "MemoryPressure", "status": "True"},
                    {"type": "DiskPressure", "status": "False"},
                    {"type": "PIDPressure", "status": "True"},
                ]}}),
                vec![
                    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
                    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
                ],
            ),
        ];
        for (value, want) in cases {
            let mut value = value;
            value["metadata"] = serde_json::json!({"name": "n"});
            assert_eq!(wanted_taints(&node(value.clone())), want, "{value}");
        }
    }

    #[test]
    fn eviction_waits_for_toleration_seconds_and_spares_full_tolerations() {
        let taints: Vec<Taint> = serde_json::from_value(serde_json::json!([
            {"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": "2026-01-01T00:00:00Z"},
        ]))
        .unwrap();
        let added = 1_767_225_600; // 2026-01-01T00:00:00Z
        let pod = |tolerations: serde_json::Value| -> Pod {
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": tolerations}}),
            )
            .unwrap()
        };
        assert_eq!(eviction_deadline(&pod(serde_json::json!([])), &taints), Some(added));
        assert_eq!(
            eviction_deadline(
                &pod(
                    serde_json::json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}])
                ),
                &taints
            ),
            Some(added + 300)
        );
        assert_eq!(eviction_deadline(&pod(serde_json::json!([{"operator": "Exists"}])), &taints), None);
        assert_eq!(
            eviction_deadline(
                &pod(serde_json::json!([{"key": "other", "operator": "Exists", "effect": "NoExecute"}])),
                &taints
            ),
            Some(added)
        );
    }
}
