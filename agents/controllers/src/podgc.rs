//! Pod garbage collection, after kube-controller-manager's podgc (`pkg/controller/podgc`).
//! Every period it deletes, with grace 0 since nothing is left running them:
//!
//! * finished pods (Succeeded or Failed) beyond `terminated_pod_threshold`, evicted ones
//!   first, then the oldest (`--terminated-pod-gc-threshold`);
//! * pods bound to a node that no longer exists — once the node has been missing from the
//!   cache for the quarantine and a read from the API confirms it is gone — marked Failed
//!   with a `DisruptionTarget` condition first, since no kubelet is left to report they
//!   stopped;
//! * pods being deleted that were never bound to a node, which no kubelet will finish.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use keel_api::error::{ApiError, Result};
use keel_api::patch::PatchType;
use keel_api::rest::DeleteOptions;
use keel_runtime::{Client, Informer, ObjectKey};
use parking_lot::Mutex;

/// Deletions in flight at once when many finished pods go.
const BURST: usize = 100;

#[derive(Debug, Clone)]
pub struct Settings {
    /// How often pods are looked at (kube's gcCheckPeriod).
    pub period: Duration,
    /// How long a node must be missing from the cache before it is read from the API and,
    /// if absent there too, its pods collected (kube's quarantineTime). It keeps a node that
    /// is merely late to the cache (a new leader, a relist) from losing its pods.
    pub quarantine: Duration,
    /// Finished pods kept; the oldest beyond this are deleted. 0 keeps them all.
    pub terminated_pod_threshold: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            period: Duration::from_secs(20),
            quarantine: Duration::from_secs(40),
            terminated_pod_threshold: 12_500,
        }
    }
}

pub struct PodGarbageCollector {
    client: Client,
    pods: Arc<Informer<Pod>>,
    nodes: Arc<Informer<Node>>,
    settings: Settings,
    /// Nodes that pods are bound to but the node cache lacks, and since when.
    missing: Mutex<HashMap<String, Instant>>,
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn is_terminated(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

fn node_of(pod: &Pod) -> &str {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or("")
}

/// Evicted by a kubelet (Failed, reason Evicted): collected before pods that ran their course.
fn is_evicted(pod: &Pod) -> bool {
    phase(pod) == "Failed" && pod.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("Evicted")
}

/// The finished pods to delete, first first: beyond `threshold`, evicted before others, then
/// by age, then by name (kube's `byEvictionAndCreationTimestamp`).
pub fn terminated_to_delete(pods: &[Arc<Pod>], threshold: usize) -> Vec<Arc<Pod>> {
    let mut terminated: Vec<Arc<Pod>> = pods.iter().filter(|p| is_terminated(p)).cloned().collect();
    if threshold == 0 || terminated.len() <= threshold {
        return Vec::new();
    }
    let excess = terminated.len() - threshold;
    terminated.sort_by(|a, b| {
        let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        is_evicted(b)
            .cmp(&is_evicted(a))
            .then_with(|| created(a).cmp(&created(b)))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    terminated.truncate(excess);
    terminated
}

impl PodGarbageCollector {
    /// `pods` and `nodes` are shared informers that run elsewhere.
    pub fn new(client: Client, pods: Arc<Informer<Pod>>, nodes: Arc<Informer<Node>>, settings: Settings) -> Arc<Self> {
        Arc::new(PodGarbageCollector { client, pods, nodes, settings, missing: Mutex::new(HashMap::new()) })
    }

    /// A pass every period.
    pub async fn run(self: Arc<Self>) {
        self.nodes.wait_synced().await;
        self.pods.wait_synced().await;
        loop {
            self.pass().await;
            tokio::time::sleep(self.settings.period).await;
        }
    }

    async fn pass(&self) {
        let span = tracing::debug_span!("podgc");
        tracing::Instrument::instrument(
            async {
                let pods = self.pods.list();
                self.collect_terminated(&pods).await;
                self.collect_orphaned(&pods).await;
                self.collect_unscheduled_terminating(&pods).await;
            },
            span,
        )
        .await;
    }

    async fn collect_terminated(&self, pods: &[Arc<Pod>]) {
        let doomed = terminated_to_delete(pods, self.settings.terminated_pod_threshold);
        if doomed.is_empty() {
            return;
        }
        tracing::info!(pods = doomed.len(), "garbage collecting finished pods beyond the threshold");
        for chunk in doomed.chunks(BURST) {
            let mut deletions = tokio::task::JoinSet::new();
            for pod in chunk {
                let client = self.client.clone();
                let pod = pod.clone();
                deletions.spawn(async move {
                    (ObjectKey::of(pod.as_ref()), mark_failed_and_delete(&client, &pod, None).await)
                });
            }
            while let Some(done) = deletions.join_next().await {
                if let Ok((key, Err(e))) = done {
                    tracing::info!(pod = %key, error = %e, "finished pod not collected; retrying next period");
                }
            }
        }
    }

    /// Pods of nodes that are gone: a node missing from the cache is quarantined, then read
    /// from the API; only if it is absent there as well are its pods collected.
    async fn collect_orphaned(&self, pods: &[Arc<Pod>]) {
        let existing: HashSet<String> = self.nodes.list().iter().filter_map(|n| n.metadata.name.clone()).collect();
        let referenced: HashSet<&str> =
            pods.iter().map(|p| node_of(p)).filter(|n| !n.is_empty() && !existing.contains(*n)).collect();
        let due: Vec<String> = {
            let mut missing = self.missing.lock();
            // A node that showed up, or whose pods went, needs no more watching.
            missing.retain(|node, _| referenced.contains(node.as_str()));
            for node in &referenced {
                missing.entry((*node).to_string()).or_insert_with(Instant::now);
            }
            missing
                .iter()
                .filter(|(_, since)| since.elapsed() >= self.settings.quarantine)
                .map(|(node, _)| node.clone())
                .collect()
        };
        let mut gone = HashSet::new();
        for node in due {
            match self.client.get::<Node>(None, &node).await {
                Err(ApiError::NotFound { .. }) => {
                    gone.insert(node);
                }
                // The cache was behind: the node is there after all. Start its quarantine over
                // if the cache still lacks it next time.
                Ok(_) => {
                    self.missing.lock().remove(&node);
                }
                Err(e) => tracing::info!(%node, error = %e, "node not read; retrying next period"),
            }
        }
        if gone.is_empty() {
            return;
        }
        let condition = serde_json::json!({
            "type": keel_api::eviction::DISRUPTION_TARGET,
            "status": "True",
            "reason": "DeletionByPodGC",
            "message": "PodGC: node no longer exists",
        });
        for pod in pods.iter().filter(|p| gone.contains(node_of(p))) {
            let key = ObjectKey::of(pod.as_ref());
            tracing::info!(pod = %key, node = node_of(pod), "deleting the pod of a node that no longer exists");
            if let Err(e) = mark_failed_and_delete(&self.client, pod, Some(condition.clone())).await {
                tracing::info!(pod = %key, error = %e, "orphaned pod not collected; retrying next period");
            }
        }
    }

    async fn collect_unscheduled_terminating(&self, pods: &[Arc<Pod>]) {
        for pod in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_some() && node_of(p).is_empty()) {
            let key = ObjectKey::of(pod.as_ref());
            tracing::info!(pod = %key, "deleting an unscheduled pod that is terminating");
            if let Err(e) = mark_failed_and_delete(&self.client, pod, None).await {
                tracing::info!(pod = %key, error = %e, "terminating pod not collected; retrying next period");
            }
        }
    }
}

/// Marks a pod that has not finished Failed (with `condition`, if any), then deletes it with
/// grace 0 (kube's `markFailedAndDeletePodWithCondition`): with no kubelet to report the
/// end, its phase would otherwise say Running to whoever watches it go. Both writes carry
/// the pod's uid, so a new pod of the same name is left alone.
async fn mark_failed_and_delete(client: &Client, pod: &Pod, condition: Option<serde_json::Value>) -> Result<()> {
    let key = ObjectKey::of(pod);
    if !is_terminated(pod) {
        let mut status = serde_json::json!({"phase": "Failed"});
        if let Some(mut condition) = condition {
            // The transition time moves only if the condition's status does.
            let since = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| Some(c.type_.as_str()) == condition["type"].as_str()))
                .filter(|c| Some(c.status.as_str()) == condition["status"].as_str())
                .and_then(|c| c.last_transition_time.clone());
            condition["lastTransitionTime"] = serde_json::json!(since.unwrap_or_else(keel_runtime::now));
            status["conditions"] = serde_json::json!([condition]);
        }
        let patch = serde_json::json!({"metadata": {"uid": pod.metadata.uid}, "status": status});
        match client.patch::<Pod>(key.namespace(), &key.name, Some("status"), PatchType::StrategicMerge, patch).await {
            Ok(_) => {}
            Err(ApiError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    let options = DeleteOptions {
        grace_period_seconds: Some(0),
        precondition_uid: pod.metadata.uid.clone(),
        ..DeleteOptions::default()
    };
    client.delete::<Pod>(key.namespace(), &key.name, &options).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, created: &str, phase: &str, reason: Option<&str>) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
                "status": {"phase": phase, "reason": reason},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn finished_pods_beyond_the_threshold_go_evicted_first_then_oldest() {
        let pods = vec![
            pod("running", "2026-01-01T00:00:00Z", "Running", None),
            pod("new", "2026-01-05T00:00:00Z", "Succeeded", None),
            pod("old", "2026-01-02T00:00:00Z", "Succeeded", None),
            pod("b-same-age", "2026-01-03T00:00:00Z", "Failed", None),
            pod("a-same-age", "2026-01-03T00:00:00Z", "Succeeded", None),
            pod("evicted", "2026-01-06T00:00:00Z", "Failed", Some("Evicted")),
        ];
        let names = |threshold| -> Vec<String> {
            terminated_to_delete(&pods, threshold).iter().map(|p| p.metadata.name.clone().unwrap()).collect()
        };
        assert_eq!(names(1), ["evicted", "old", "a-same-age", "b-same-age"]);
        assert_eq!(names(3), ["evicted", "old"]);
        assert!(names(5).is_empty());
        assert!(names(0).is_empty(), "a threshold of 0 keeps everything");
    }
}
