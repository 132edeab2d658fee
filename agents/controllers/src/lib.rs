//! The controller manager: loops that run on the Raft leader only (see
//! `keel_runtime::leader`), talking to the API in process through the same verbs and
//! admission as any client. Each is level-triggered: informer caches fed by list+watch, a
//! de-duplicating work queue with backoff, and a reconcile that compares desired with
//! observed state.
//!
//! * garbage collection by ownerReferences (background, foreground, orphan) and namespace
//!   deletion (`gc`);
//! * ReplicaSets and ReplicationControllers (`replicaset`);
//! * Deployments: rolling update, recreate, history, pause, rollback (`deployment`);
//! * Endpoints and EndpointSlices from Services and their ready pods (`endpoints`);
//! * node lifecycle: heartbeats, Ready/Unknown, not-ready and unreachable taints, eviction
//!   after tolerationSeconds (`nodelifecycle`);
//! * PodDisruptionBudget status from the pods and their controllers' scale (`disruption`;
//!   evictions are the `pods/eviction` subresource in keel-api);
//! * pod garbage collection: finished pods beyond a threshold, pods of deleted nodes,
//!   unscheduled pods being deleted (`podgc`);
//! * CronJobs: cron schedules in a time zone, concurrency policies, deadlines, history (`cronjob`);
//! * ResourceQuota usage (`quota`; the refusal is an admission plugin in keel-api);
//! * PersistentVolume binding and reclaim (`volume`) and the local-path provisioner
//!   (`localpath`; the default StorageClass is an admission plugin in keel-api);
//! * Jobs: completions, parallelism, backoff, deadlines, Indexed, ttlSecondsAfterFinished (`job`);
//! * StatefulSets: stable names and claims, ordered or parallel, rolling update with partition
//!   (`statefulset`);
//! * DaemonSets: a pod per eligible node, rolling update with maxUnavailable or maxSurge
//!   (`daemonset`); both keep their templates as ControllerRevisions (`history`);
//! * HorizontalPodAutoscalers on the resource metrics of metrics.k8s.io (`podautoscaler`, the
//!   arithmetic in `replica_calculator`);
//! * legacy ServiceAccount token Secrets filled in, and deleted with their account (`serviceaccount`).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod cron;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod gc;
pub mod history;
pub mod job;
pub mod localpath;
pub mod nodelifecycle;
pub mod podautoscaler;
pub mod podgc;
pub mod quota;
pub mod replica_calculator;
pub mod replicaset;
pub mod serviceaccount;
pub mod statefulset;
pub mod volume;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, ReplicaSet};
use k8s_openapi::api::core::v1::{Node, Pod, ReplicationController};
use keel_api::rest::Api;
use keel_runtime::informer::controller_uid;
use keel_runtime::leader::Loop;
use keel_runtime::{Client, Informer, Recorder};

/// The field manager and event source of the controllers' writes.
pub const MANAGER: &str = "keel-controller-manager";

/// Seconds since the epoch, for the comparisons with API timestamps.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Knobs of the controller manager (kube-controller-manager's flags of the same meaning).
#[derive(Clone)]
pub struct Settings {
    pub node_lifecycle: nodelifecycle::Settings,
    /// What time the time-driven loops (CronJobs) see.
    pub clock: keel_runtime::clock::SharedClock,
    /// How often CronJobs are looked at.
    pub cron_job_period: Duration,
    /// Pod garbage collection: period, node quarantine, `--terminated-pod-gc-threshold`.
    pub pod_gc: podgc::Settings,
    /// PersistentVolumes: where local-path volumes are made on the nodes.
    pub volumes: volume::Settings,
    /// HorizontalPodAutoscalers: sync period and scale-down stabilization.
    pub autoscaler: podautoscaler::Settings,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            node_lifecycle: nodelifecycle::Settings::default(),
            clock: keel_runtime::clock::system(),
            cron_job_period: Duration::from_secs(5),
            pod_gc: podgc::Settings::default(),
            volumes: volume::Settings::default(),
            autoscaler: podautoscaler::Settings::default(),
        }
    }
}

/// The controller manager's loops, fresh (new informers), for one term of leadership.
pub fn loops(api: Arc<Api>) -> Vec<(&'static str, Loop)> {
    loops_with(api, Settings::default())
}

pub fn loops_with(api: Arc<Api>, settings: Settings) -> Vec<(&'static str, Loop)> {
    let client = Client::new(api.clone(), MANAGER);
    let recorder = Recorder::new(client.clone());
    let pods = Informer::<Pod>::new(client.clone());
    pods.add_index(replicaset::POD_BY_CONTROLLER, |pod| controller_uid(pod).into_iter().collect());
    pods.add_index(replicaset::ORPHAN_POD_BY_NAMESPACE, |pod| {
        if controller_uid(pod).is_none() { pod.metadata.namespace.clone().into_iter().collect() } else { Vec::new() }
    });
    pods.add_index(endpoints::POD_BY_NAMESPACE, |pod| pod.metadata.namespace.clone().into_iter().collect());
    pods.add_index(nodelifecycle::POD_BY_NODE, |pod| {
        pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()).into_iter().collect()
    });
    let replica_sets = replicaset::ReplicaController::<ReplicaSet>::new(client.clone(), pods.clone(), recorder.clone());
    replica_sets.owners().add_index("namespace", |rs| rs.metadata.namespace.clone().into_iter().collect());
    let controllers =
        replicaset::ReplicaController::<ReplicationController>::new(client.clone(), pods.clone(), recorder.clone());
    let deployments = deployment::DeploymentController::new(
        client.clone(),
        replica_sets.owners().clone(),
        pods.clone(),
        recorder.clone(),
    );
    let jobs = job::JobController::new(client.clone(), pods.clone(), recorder.clone());
    let revisions = Informer::<ControllerRevision>::new(client.clone());
    revisions.add_index(history::REVISION_BY_OWNER, |r| controller_uid(r).into_iter().collect());
    let nodes = Informer::<Node>::new(client.clone());
    let stateful_sets =
        statefulset::StatefulSetController::new(client.clone(), pods.clone(), revisions.clone(), recorder.clone());
    let daemon_sets = daemonset::DaemonSetController::new(
        client.clone(),
        pods.clone(),
        nodes.clone(),
        revisions.clone(),
        recorder.clone(),
    );
    let endpoints = endpoints::EndpointsController::new(client.clone(), pods.clone());
    let cron_jobs = cronjob::CronJobController::new(
        client.clone(),
        recorder.clone(),
        settings.clock.clone(),
        settings.cron_job_period,
    );
    let quotas = quota::QuotaController::new(client.clone(), Duration::from_secs(2));
    let node_lifecycle =
        nodelifecycle::NodeLifecycle::new(client.clone(), pods.clone(), recorder.clone(), settings.node_lifecycle);
    let disruption = disruption::DisruptionController::new(
        client.clone(),
        pods.clone(),
        replica_sets.owners().clone(),
        controllers.owners().clone(),
        recorder.clone(),
    );
    pods.add_index(volume::POD_BY_CLAIM, volume::claims_of_pod);
    let volumes =
        volume::VolumeController::new(client.clone(), pods.clone(), nodes.clone(), recorder.clone(), settings.volumes);
    let pod_gc = podgc::PodGarbageCollector::new(client.clone(), pods.clone(), nodes.clone(), settings.pod_gc);
    let tokens = serviceaccount::TokensController::new(client.clone());
    let autoscaler =
        podautoscaler::PodAutoscaler::new(client.clone(), pods.clone(), recorder.clone(), settings.autoscaler.clone());
    vec![
        ("pod-informer", Box::pin(pods.run())),
        ("garbage-collector", Box::pin(run_garbage_collector(api, Duration::from_millis(500)))),
        ("replicaset", Box::pin(replica_sets.run(4))),
        ("replicationcontroller", Box::pin(controllers.run(2))),
        ("deployment", Box::pin(deployments.run(4))),
        ("job", Box::pin(jobs.run(2))),
        ("revision-informer", Box::pin(revisions.run())),
        ("node-informer", Box::pin(nodes.run())),
        ("statefulset", Box::pin(stateful_sets.run(2))),
        ("daemonset", Box::pin(daemon_sets.run(2))),
        ("endpoints", Box::pin(endpoints.run(2))),
        ("node-lifecycle", Box::pin(node_lifecycle.run())),
        ("cronjob", Box::pin(cron_jobs.run())),
        ("resourcequota", Box::pin(quotas.run())),
        ("disruption", Box::pin(disruption.run(2))),
        ("pod-garbage-collector", Box::pin(pod_gc.run())),
        ("serviceaccount-tokens", Box::pin(tokens.run(1))),
        ("persistentvolume", Box::pin(volumes.run())),
        ("horizontalpodautoscaler", Box::pin(autoscaler.run(2))),
    ]
}

/// The garbage collector and namespace deletion. A pass reads every object, so it runs when
/// a change that can concern it (a deletion, an object being deleted, an object with owners)
/// has been seen — at most once per `interval`.
pub async fn run_garbage_collector(api: Arc<Api>, interval: Duration) {
    let mut collector = gc::GarbageCollector::new(api.clone());
    // A new leader cannot know what its predecessor left unfinished: start dirty.
    let dirty = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let _watcher = keel_runtime::AbortOnDrop::spawn(gc::watch_for_work(api.clone(), dirty.clone()));
    loop {
        if dirty.swap(false, std::sync::atomic::Ordering::SeqCst) {
            match collector.pass().await {
                // Work left (dependents still going): look again next time.
                Ok(pass) if pass != gc::Pass::default() => dirty.store(true, std::sync::atomic::Ordering::SeqCst),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "garbage collection pass; retrying");
                    dirty.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}
