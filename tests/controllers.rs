//! The controllers and the scheduler against a real in-process cluster: one store member,
//! the API in process, the loops run by the leader runner exactly as `keel server` runs
//! them. Nodes are plain Node objects the test keeps Ready; a stand-in kubelet in the test
//! marks bound pods Running and Ready (the node agent is issue 5).

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Event, Node, PersistentVolumeClaim, Pod, ResourceQuota, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keel_api::patch::PatchType;
use keel_api::registry::{Registry, RuntimeConfig};
use keel_api::rest::{Api, DeleteOptions, ListOptions};
use keel_runtime::Client;
use serde_json::json;
use support::eventually;
use support::inproc::{InProcCluster, fast_tuning};

const WAIT: Duration = Duration::from_secs(30);

struct ControlPlane {
    _cluster: InProcCluster,
    client: Client,
    /// Nodes whose stand-in kubelet has stopped heartbeating.
    silent: Arc<Mutex<BTreeSet<String>>>,
    loops: tokio::task::JoinHandle<()>,
    kubelet: tokio::task::JoinHandle<()>,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.loops.abort();
        self.kubelet.abort();
    }
}

impl ControlPlane {
    async fn start() -> ControlPlane {
        ControlPlane::start_with(keel_controllers::Settings::default()).await
    }

    async fn start_with(settings: keel_controllers::Settings) -> ControlPlane {
        let cluster = InProcCluster::start(1, fast_tuning()).await;
        let store = cluster.store(0).clone();
        let storage: keel_api::storage::SharedStorage = Arc::new(store.clone());
        let api = Arc::new(Api::new(storage, Arc::new(Registry::new(RuntimeConfig::default()))));
        // As `keel server` bootstraps a new cluster: the default StorageClass, then the namespaces.
        keel_controllers::localpath::ensure_default_storage_class(&api).await.expect("default storage class");
        api.ensure_system_namespaces().await.expect("system namespaces");
        let loops_api = api.clone();
        let loops = tokio::spawn(keel_runtime::leader::run_while_leader(
            Duration::from_millis(100),
            move || {
                let mut loops = keel_controllers::loops_with(loops_api.clone(), settings.clone());
                loops.extend(keel_scheduler::loops(loops_api.clone()));
                loops
            },
            move || {
                let store = store.clone();
                async move { store.is_leader() }
            },
        ));
        let client = Client::new(api.clone(), "test");
        let silent = Arc::new(Mutex::new(BTreeSet::new()));
        let kubelet = tokio::spawn(stand_in_kubelet(client.clone(), silent.clone()));
        ControlPlane { _cluster: cluster, client, silent, loops, kubelet }
    }

    async fn node(&self, name: &str, cpu: &str, labels: serde_json::Value, taints: serde_json::Value) {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints},
        }))
        .unwrap();
        self.client.create(None, &node).await.expect("create node");
        let status = json!({"status": {
            "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
        }});
        self.client.patch::<Node>(None, name, Some("status"), PatchType::Merge, status).await.expect("node status");
    }

    async fn pods(&self, selector: &str) -> Vec<Pod> {
        let options = ListOptions {
            label_selector: keel_api::selector::LabelSelector::parse(selector).expect("selector"),
            ..ListOptions::default()
        };
        self.client.list::<Pod>(Some("default"), &options).await.expect("list pods").0
    }

    async fn deployment(&self, name: &str) -> Deployment {
        self.client.get(Some("default"), name).await.expect("get deployment")
    }

    async fn replica_sets(&self, selector: &str) -> Vec<ReplicaSet> {
        let options = ListOptions {
            label_selector: keel_api::selector::LabelSelector::parse(selector).expect("selector"),
            ..ListOptions::default()
        };
        self.client.list::<ReplicaSet>(Some("default"), &options).await.expect("list replicasets").0
    }

    async fn events_for(&self, name: &str) -> Vec<Event> {
        let events = self.client.list::<Event>(Some("default"), &ListOptions::default()).await.expect("events").0;
        events.into_iter().filter(|e| e.involved_object.name.as_deref() == Some(name)).collect()
    }
}

/// Renews every node's Lease (but the silent ones') and marks every bound, pending pod
/// Running with all its containers ready, as kubelets would.
async fn stand_in_kubelet(client: Client, silent: Arc<Mutex<BTreeSet<String>>>) {
    let mut last_beat = std::time::Instant::now() - Duration::from_secs(60);
    loop {
        if last_beat.elapsed() > Duration::from_secs(1) {
            last_beat = std::time::Instant::now();
            heartbeat(&client, &silent).await;
        }
        if let Ok((pods, _)) = client.list::<Pod>(None, &ListOptions::default()).await {
            for mut pod in pods {
                let bound = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
                let key = keel_runtime::ObjectKey::of(&pod);
                if bound && pod.metadata.deletion_timestamp.is_some() {
                    // Containers stopped: the kubelet's final delete.
                    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
                    if !silent.lock().unwrap().contains(&node) {
                        let options = DeleteOptions { grace_period_seconds: Some(0), ..DeleteOptions::default() };
                        let _ = client.delete::<Pod>(key.namespace(), &key.name, &options).await;
                    }
                    continue;
                }
                if !bound || phase == "Running" || phase == "Succeeded" || phase == "Failed" {
                    continue;
                }
                let mut status = pod.status.clone().unwrap_or_default();
                let octet = key.name.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))) % 250 + 2;
                status.pod_ip = Some(format!("10.0.0.{octet}"));
                // Pods can say how their containers end, for the Job tests.
                let outcome = pod.metadata.labels.as_ref().and_then(|l| l.get("test-outcome")).cloned();
                status.phase = Some(match outcome.as_deref() {
                    Some("succeed") => "Succeeded".into(),
                    Some("fail") => "Failed".into(),
                    _ => "Running".into(),
                });
                if outcome.is_some() {
                    pod.status = Some(status);
                    let key = keel_runtime::ObjectKey::of(&pod);
                    let _ = client.replace_status(key.namespace(), &key.name, &pod).await;
                    continue;
                }
                let mut conditions = status.conditions.clone().unwrap_or_default();
                conditions.retain(|c| c.type_ != "Ready" && c.type_ != "ContainersReady");
                for type_ in ["Ready", "ContainersReady"] {
                    conditions.push(
                        serde_json::from_value(
                            json!({"type": type_, "status": "True", "lastTransitionTime": keel_runtime::now()}),
                        )
                        .unwrap(),
                    );
                }
                status.conditions = Some(conditions);
                pod.status = Some(status);
                let key = keel_runtime::ObjectKey::of(&pod);
                let _ = client.replace_status(key.namespace(), &key.name, &pod).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn heartbeat(client: &Client, silent: &Mutex<BTreeSet<String>>) {
    let Ok((nodes, _)) = client.list::<Node>(None, &ListOptions::default()).await else { return };
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        if silent.lock().unwrap().contains(&name) {
            continue;
        }
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": keel_runtime::now()},
        }))
        .unwrap();
        match client.get::<Lease>(Some("kube-node-lease"), &name).await {
            Ok(mut current) => {
                current.spec = lease.spec;
                let _ = client.replace(Some("kube-node-lease"), &name, &current).await;
            }
            Err(_) => {
                let _ = client.create(Some("kube-node-lease"), &lease).await;
            }
        }
    }
}

fn image_of(pod: &Pod) -> String {
    pod.spec.as_ref().map(|s| s.containers[0].image.clone().unwrap_or_default()).unwrap_or_default()
}

fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
}

fn deployment_manifest(name: &str, replicas: i32, image: &str, strategy: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image, "resources": {"requests": {"cpu": "100m"}}}]},
            },
        },
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replica_set_scales_up_and_down_and_adopts_orphans() {
    let plane = ControlPlane::start().await;
    plane.node("n1", "4", json!({}), json!([])).await;
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
        },
    }))
    .unwrap();
    plane.client.create(Some("default"), &rs).await.expect("create replicaset");
    eventually(WAIT, "3 ready replicas", || async {
        let rs: ReplicaSet = plane.client.get(Some("default"), "web").await.ok()?;
        (rs.status?.ready_replicas == Some(3)).then_some(())
    })
    .await;
    let pods = plane.pods("app=web").await;
    assert_eq!(pods.len(), 3);
    assert!(pods.iter().all(|p| p.metadata.owner_references.as_ref().is_some_and(|o| o[0].kind == "ReplicaSet")));
    assert!(
        pods.iter().all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("n1")),
        "the scheduler bound them"
    );

    plane
        .client
        .patch::<ReplicaSet>(Some("default"), "web", None, PatchType::Merge, json!({"spec": {"replicas": 1}}))
        .await
        .expect("scale down");
    eventually(WAIT, "one pod left", || async {
        let active: Vec<_> = plane.pods("app=web").await.into_iter().filter(is_active).collect();
        (active.len() == 1).then_some(())
    })
    .await;

    // An orphan that matches is adopted, which makes one too many: one goes.
    let orphan: Pod = serde_json::from_value(json!({
        "metadata": {"name": "orphan", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    plane.client.create(Some("default"), &orphan).await.expect("create orphan");
    eventually(WAIT, "the orphan adopted and the count back at one", || async {
        let pods = plane.pods("app=web").await;
        let active: Vec<_> = pods.iter().filter(|p| is_active(p)).collect();
        let all_owned = pods.iter().all(|p| p.metadata.owner_references.as_ref().is_some_and(|o| !o.is_empty()));
        (active.len() == 1 && (all_owned || pods.len() == 1)).then_some(())
    })
    .await;
    let events = plane.events_for("web").await;
    assert!(events.iter().any(|e| e.reason.as_deref() == Some("SuccessfulCreate")), "{events:?}");
    assert!(events.iter().any(|e| e.reason.as_deref() == Some("SuccessfulDelete")), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployment_rolls_out_within_its_bounds_and_rolls_back() {
    let plane = ControlPlane::start().await;
    plane.node("n1", "8", json!({}), json!([])).await;
    let strategy = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}});
    plane.client.create(Some("default"), &deployment_manifest("web", 4, "busybox:1", strategy)).await.expect("create");
    eventually(WAIT, "4 available replicas of revision 1", || async {
        let status = plane.deployment("web").await.status?;
        (status.available_replicas == Some(4) && status.updated_replicas == Some(4)).then_some(())
    })
    .await;
    let first = plane.replica_sets("app=web").await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"], "1");

    // Roll to a new image, watching the bounds: never more than 4 + 1 pods, never fewer
    // than 4 - 1 ready.
    let set_image = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "busybox:2"}]}}}});
    plane
        .client
        .patch::<Deployment>(Some("default"), "web", None, PatchType::StrategicMerge, set_image)
        .await
        .expect("set image");
    let max_pods = std::cell::Cell::new(0);
    let min_ready = std::cell::Cell::new(usize::MAX);
    eventually(WAIT, "all 4 pods on busybox:2", || {
        let pods_future = plane.pods("app=web");
        let deployment_future = plane.deployment("web");
        let (max_pods, min_ready) = (&max_pods, &min_ready);
        async move {
            let pods: Vec<Pod> = pods_future.await.into_iter().filter(is_active).collect();
            let ready = pods.iter().filter(|p| keel_controllers::replicaset::is_ready(p)).count();
            max_pods.set(max_pods.get().max(pods.len()));
            min_ready.set(min_ready.get().min(ready));
            let status = deployment_future.await.status?;
            let done = pods.len() == 4
                && pods.iter().all(|p| image_of(p) == "busybox:2")
                && status.updated_replicas == Some(4)
                && status.available_replicas == Some(4);
            done.then_some(())
        }
    })
    .await;
    let (max_pods, min_ready) = (max_pods.get(), min_ready.get());
    assert!(max_pods <= 5, "surge bound broken: {max_pods} pods at once");
    assert!(min_ready >= 3, "availability bound broken: {min_ready} ready at once");
    let sets = plane.replica_sets("app=web").await;
    assert_eq!(sets.len(), 2);
    let revision =
        |rs: &ReplicaSet| rs.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"].clone();
    let old = sets.iter().find(|rs| revision(rs) == "1").expect("revision 1 kept");
    assert_eq!(old.spec.as_ref().unwrap().replicas, Some(0));
    // The counts and the Progressing condition may land in successive status writes.
    eventually(WAIT, "Progressing: NewReplicaSetAvailable", || async {
        let status = plane.deployment("web").await.status?;
        let progressing = status.conditions?.into_iter().find(|c| c.type_ == "Progressing")?;
        (progressing.reason.as_deref() == Some("NewReplicaSetAvailable")).then_some(())
    })
    .await;

    // Undo as kubectl does it: copy revision 1's template back.
    let mut template = old.spec.as_ref().unwrap().template.clone().unwrap();
    template.metadata.as_mut().unwrap().labels.as_mut().unwrap().remove("pod-template-hash");
    let undo = json!([{"op": "replace", "path": "/spec/template", "value": template}]);
    plane.client.patch::<Deployment>(Some("default"), "web", None, PatchType::Json, undo).await.expect("undo");
    eventually(WAIT, "back on busybox:1 as revision 3", || async {
        let pods: Vec<Pod> = plane.pods("app=web").await.into_iter().filter(is_active).collect();
        let sets = plane.replica_sets("app=web").await;
        let back = sets.iter().find(|rs| rs.metadata.uid == old.metadata.uid)?;
        let done = pods.len() == 4 && pods.iter().all(|p| image_of(p) == "busybox:1") && revision(back) == "3";
        done.then_some(sets.len())
    })
    .await;
    assert_eq!(plane.replica_sets("app=web").await.len(), 2, "the old ReplicaSet was reused, not copied");
    let events = plane.events_for("web").await;
    assert!(events.iter().any(|e| e.reason.as_deref() == Some("ScalingReplicaSet")), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recreate_removes_every_old_pod_before_starting_new_ones() {
    let plane = ControlPlane::start().await;
    plane.node("n1", "8", json!({}), json!([])).await;
    plane
        .client
        .create(Some("default"), &deployment_manifest("db", 3, "busybox:1", json!({"type": "Recreate"})))
        .await
        .expect("create");
    eventually(WAIT, "3 available", || async {
        (plane.deployment("db").await.status?.available_replicas == Some(3)).then_some(())
    })
    .await;
    let set_image = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "busybox:2"}]}}}});
    plane
        .client
        .patch::<Deployment>(Some("default"), "db", None, PatchType::StrategicMerge, set_image)
        .await
        .expect("set image");
    let mixed = std::cell::Cell::new(false);
    eventually(WAIT, "3 pods on busybox:2", || {
        let pods_future = plane.pods("app=db");
        let mixed = &mixed;
        async move {
            let pods: Vec<Pod> = pods_future.await.into_iter().filter(is_active).collect();
            let images: BTreeSet<String> = pods.iter().map(image_of).collect();
            mixed.set(mixed.get() || images.len() > 1);
            (pods.len() == 3 && images.len() == 1 && images.contains("busybox:2")).then_some(())
        }
    })
    .await;
    assert!(!mixed.get(), "Recreate ran old and new pods side by side");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduler_respects_resources_selectors_and_taints_and_says_why_not() {
    let plane = ControlPlane::start().await;
    plane.node("small", "1", json!({"disk": "hdd"}), json!([])).await;
    plane.node("big", "4", json!({"disk": "ssd"}), json!([])).await;
    plane
        .node("gpu", "8", json!({"disk": "ssd"}), json!([{"key": "gpu", "value": "true", "effect": "NoSchedule"}]))
        .await;
    let pod = |name: &str, cpu: &str, extra: serde_json::Value| -> Pod {
        let mut spec =
            json!({"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": cpu}}}]});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "default", "labels": {"test": "sched"}}, "spec": spec}),
        )
        .unwrap()
    };
    let cases = [
        ("needs-ssd", pod("needs-ssd", "100m", json!({"nodeSelector": {"disk": "ssd"}})), Some(vec!["big"])),
        ("too-big-for-small", pod("too-big-for-small", "2", json!({})), Some(vec!["big"])),
        (
            "tolerates-gpu",
            pod("tolerates-gpu", "6", json!({"tolerations": [{"key": "gpu", "operator": "Exists"}]})),
            Some(vec!["gpu"]),
        ),
        ("fits-nowhere", pod("fits-nowhere", "16", json!({})), None),
    ];
    for (_, pod, _) in &cases {
        plane.client.create(Some("default"), pod).await.expect("create pod");
    }
    for (name, _, want) in &cases {
        match want {
            Some(nodes) => {
                let node = eventually(WAIT, &format!("{name} bound"), || async {
                    let pod: Pod = plane.client.get(Some("default"), name).await.ok()?;
                    pod.spec?.node_name
                })
                .await;
                assert!(nodes.contains(&node.as_str()), "{name} went to {node}");
            }
            None => {
                let message = eventually(WAIT, &format!("{name} reported unschedulable"), || async {
                    let pod: Pod = plane.client.get(Some("default"), name).await.ok()?;
                    let condition = pod.status?.conditions?.into_iter().find(|c| c.type_ == "PodScheduled")?;
                    (condition.status == "False").then_some(condition.message.unwrap_or_default())
                })
                .await;
                assert!(message.starts_with("0/3 nodes are available:"), "{message}");
                assert!(message.contains("Insufficient cpu"), "{message}");
                assert!(message.contains("untolerated taint"), "{message}");
                eventually(WAIT, "a FailedScheduling event", || async {
                    let events = plane.events_for(name).await;
                    events.iter().any(|e| e.reason.as_deref() == Some("FailedScheduling")).then_some(())
                })
                .await;
            }
        }
    }
    // A node with room appears: the waiting pod gets it.
    plane.node("huge", "32", json!({}), json!([])).await;
    let node = eventually(WAIT, "fits-nowhere bound once a big node exists", || async {
        let pod: Pod = plane.client.get(Some("default"), "fits-nowhere").await.ok()?;
        pod.spec?.node_name
    })
    .await;
    assert_eq!(node, "huge");
    // Pods whose schedulerName is another scheduler's are left alone.
    plane
        .client
        .create(Some("default"), &pod("other", "100m", json!({"schedulerName": "someone-else"})))
        .await
        .expect("create");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let other: Pod = plane.client.get(Some("default"), "other").await.expect("get");
    assert_eq!(other.spec.unwrap().node_name, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_deployment_cascades_in_each_mode() {
    let plane = ControlPlane::start().await;
    plane.node("n1", "8", json!({}), json!([])).await;
    for (name, policy) in [("bg", "Background"), ("fg", "Foreground"), ("orphan", "Orphan")] {
        plane
            .client
            .create(Some("default"), &deployment_manifest(name, 2, "busybox:1", json!({})))
            .await
            .expect("create");
        eventually(WAIT, &format!("{name}: 2 available"), || async {
            (plane.deployment(name).await.status?.available_replicas == Some(2)).then_some(())
        })
        .await;
        let options = DeleteOptions { propagation_policy: Some(policy.into()), ..DeleteOptions::default() };
        plane.client.delete::<Deployment>(Some("default"), name, &options).await.expect("delete");
        let selector = format!("app={name}");
        eventually(WAIT, &format!("{name}: {policy} deletion done"), || async {
            let gone = plane.client.get::<Deployment>(Some("default"), name).await.is_err();
            let sets = plane.replica_sets(&selector).await;
            let pods = plane.pods(&selector).await;
            let done = match policy {
                "Orphan" => {
                    gone && sets.len() == 1
                        && sets.iter().all(|rs| rs.metadata.owner_references.as_ref().is_none_or(|o| o.is_empty()))
                        && pods.len() == 2
                }
                _ => gone && sets.is_empty() && pods.is_empty(),
            };
            done.then_some(())
        })
        .await;
    }
    // The orphaned ReplicaSet keeps its pods alive on its own.
    let sets = plane.replica_sets("app=orphan").await;
    assert_eq!(sets[0].spec.as_ref().unwrap().replicas, Some(2));
}

fn job_manifest(name: &str, spec: serde_json::Value, outcome: &str) -> Job {
    let mut spec = spec;
    spec["template"] = json!({
        "metadata": {"labels": {"test-outcome": outcome}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]},
    });
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})).unwrap()
}

fn job_condition(job: &Job, type_: &str) -> Option<String> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let condition = conditions.iter().find(|c| c.type_ == type_ && c.status == "True")?;
    Some(condition.reason.clone().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_complete_index_and_give_up_after_their_backoff_limit() {
    let plane = ControlPlane::start().await;
    plane.node("n1", "8", json!({}), json!([])).await;
    plane
        .client
        .create(Some("default"), &job_manifest("three", json!({"completions": 3, "parallelism": 2}), "succeed"))
        .await
        .expect("create");
    plane
        .client
        .create(
            Some("default"),
            &job_manifest(
                "indexed",
                json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed"}),
                "succeed",
            ),
        )
        .await
        .expect("create");
    plane
        .client
        .create(Some("default"), &job_manifest("doomed", json!({"backoffLimit": 1}), "fail"))
        .await
        .expect("create");

    let three = eventually(WAIT, "job three complete", || async {
        let job: Job = plane.client.get(Some("default"), "three").await.ok()?;
        job_condition(&job, "Complete").map(|_| job)
    })
    .await;
    let status = three.status.unwrap();
    assert_eq!(status.succeeded, Some(3));
    assert!(status.completion_time.is_some() && status.start_time.is_some());
    let pods = plane.pods("job-name=three").await;
    assert_eq!(pods.len(), 3, "exactly completions pods, none extra");

    let indexed = eventually(WAIT, "indexed job complete", || async {
        let job: Job = plane.client.get(Some("default"), "indexed").await.ok()?;
        job_condition(&job, "Complete").map(|_| job)
    })
    .await;
    assert_eq!(indexed.status.unwrap().completed_indexes.as_deref(), Some("0-2"));
    let mut indexes: Vec<String> = plane
        .pods("job-name=indexed")
        .await
        .iter()
        .map(|p| p.metadata.annotations.as_ref().unwrap()["batch.kubernetes.io/job-completion-index"].clone())
        .collect();
    indexes.sort();
    assert_eq!(indexes, ["0", "1", "2"]);

    // backoffLimit 1: the second failure (after a 10 s backoff) ends it.
    let doomed = eventually(Duration::from_secs(60), "job doomed failed", || async {
        let job: Job = plane.client.get(Some("default"), "doomed").await.ok()?;
        job_condition(&job, "Failed").map(|reason| (job, reason))
    })
    .await;
    assert_eq!(doomed.1, "BackoffLimitExceeded");
    assert_eq!(doomed.0.status.unwrap().failed, Some(2));
    // Events are recorded after the write that caused them, and may trail it.
    eventually(Duration::from_secs(10), "a BackoffLimitExceeded event", || async {
        let events = plane.events_for("doomed").await;
        events.iter().any(|e| e.reason.as_deref() == Some("BackoffLimitExceeded")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_node_is_tainted_and_its_pods_evicted_after_their_toleration() {
    let settings = keel_controllers::Settings {
        node_lifecycle: keel_controllers::nodelifecycle::Settings {
            monitor_period: Duration::from_millis(200),
            grace_period: Duration::from_secs(3),
        },
        ..keel_controllers::Settings::default()
    };
    let plane = ControlPlane::start_with(settings).await;
    plane.node("doomed", "4", json!({}), json!([])).await;
    // A deployment whose pods tolerate an unreachable node for 2 s (instead of the default 300).
    let mut manifest = deployment_manifest("web", 2, "busybox:1", json!({}));
    manifest.spec.as_mut().unwrap().template.spec.as_mut().unwrap().tolerations = Some(
        serde_json::from_value(json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}]))
            .unwrap(),
    );
    plane.client.create(Some("default"), &manifest).await.expect("create");
    eventually(WAIT, "2 available on the doomed node", || async {
        (plane.deployment("web").await.status?.available_replicas == Some(2)).then_some(())
    })
    .await;
    let first: BTreeSet<String> =
        plane.pods("app=web").await.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
    // A second node, then the first one goes silent.
    plane.node("spare", "4", json!({}), json!([])).await;
    plane.silent.lock().unwrap().insert("doomed".into());
    let node = eventually(WAIT, "the silent node Unknown and tainted", || async {
        let node: Node = plane.client.get(None, "doomed").await.ok()?;
        let ready = node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?.status.clone();
        let taints = node.spec.as_ref()?.taints.clone().unwrap_or_default();
        (ready == "Unknown"
            && taints.iter().any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute"))
        .then_some(node)
    })
    .await;
    assert!(
        node.spec
            .unwrap()
            .taints
            .unwrap()
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoSchedule")
    );
    // Evicted after 2 s; the ReplicaSet replaces them on the spare node.
    eventually(WAIT, "replacements running on the spare node", || async {
        let pods: Vec<Pod> = plane.pods("app=web").await.into_iter().filter(is_active).collect();
        let moved = pods.len() == 2
            && pods.iter().all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("spare"))
            && pods.iter().all(|p| !first.contains(p.metadata.name.as_deref().unwrap_or("")));
        moved.then_some(())
    })
    .await;
    let events = plane.client.list::<Event>(Some("default"), &ListOptions::default()).await.unwrap().0;
    assert!(events.iter().any(|e| e.reason.as_deref() == Some("TaintManagerEviction")), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpoints_follow_the_ready_pods_of_a_service() {
    let plane = ControlPlane::start().await;
    plane.node("n1", "8", json!({}), json!([])).await;
    let mut manifest = deployment_manifest("api", 2, "busybox:1", json!({}));
    manifest.spec.as_mut().unwrap().template.spec.as_mut().unwrap().containers[0].ports =
        Some(serde_json::from_value(json!([{"name": "http", "containerPort": 8080}])).unwrap());
    plane.client.create(Some("default"), &manifest).await.expect("create deployment");
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "api", "namespace": "default"},
        "spec": {"selector": {"app": "api"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]},
    }))
    .unwrap();
    plane.client.create(Some("default"), &service).await.expect("create service");
    let addresses = |count: usize| {
        let plane = &plane;
        async move {
            let endpoints: Endpoints = plane.client.get(Some("default"), "api").await.ok()?;
            let subset = endpoints.subsets.as_ref().and_then(|s| s.first().cloned())?;
            let ready = subset.addresses.clone().unwrap_or_default();
            let port = subset.ports.as_ref()?.first()?.port;
            (ready.len() == count && port == 8080).then_some(ready)
        }
    };
    let ready = eventually(WAIT, "two ready addresses on port 8080", || addresses(2)).await;
    assert!(ready.iter().all(|a| a.target_ref.as_ref().and_then(|r| r.kind.as_deref()) == Some("Pod")));
    let options = ListOptions {
        label_selector: keel_api::selector::LabelSelector::parse("kubernetes.io/service-name=api").unwrap(),
        ..ListOptions::default()
    };
    let slices = eventually(WAIT, "an EndpointSlice with both pods", || async {
        let slices = plane.client.list::<EndpointSlice>(Some("default"), &options).await.ok()?.0;
        (slices.len() == 1 && slices[0].endpoints.len() == 2).then_some(slices)
    })
    .await;
    assert_eq!(slices[0].ports.as_ref().unwrap()[0].port, Some(8080));
    assert!(slices[0].endpoints.iter().all(|e| e.conditions.as_ref().unwrap().ready == Some(true)));
    plane
        .client
        .patch::<Deployment>(Some("default"), "api", None, PatchType::Merge, json!({"spec": {"replicas": 1}}))
        .await
        .expect("scale down");
    eventually(WAIT, "one address left", || addresses(1)).await;
}

fn cron_job(name: &str, policy: &str, outcome: &str) -> CronJob {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "schedule": "*/5 * * * *",
            "concurrencyPolicy": policy,
            "successfulJobsHistoryLimit": 1,
            "jobTemplate": {"spec": {"template": {
                "metadata": {"labels": {"test-outcome": outcome, "cron": name}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]},
            }}},
        },
    }))
    .unwrap()
}

async fn jobs_of(plane: &ControlPlane, cron: &str) -> Vec<Job> {
    let mut jobs = plane.client.list::<Job>(Some("default"), &ListOptions::default()).await.expect("jobs").0;
    jobs.retain(|j| j.metadata.owner_references.as_ref().is_some_and(|o| o[0].name == cron));
    jobs.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cron_jobs_start_on_schedule_by_a_controllable_clock() {
    let clock = keel_runtime::clock::ManualClock::new(jiff::Timestamp::now());
    let settings = keel_controllers::Settings {
        clock: clock.clone(),
        cron_job_period: Duration::from_millis(200),
        ..keel_controllers::Settings::default()
    };
    let plane = ControlPlane::start_with(settings).await;
    plane.node("n1", "8", json!({}), json!([])).await;
    plane.client.create(Some("default"), &cron_job("tick", "Allow", "succeed")).await.expect("create");
    plane.client.create(Some("default"), &cron_job("long", "Forbid", "")).await.expect("create");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(jobs_of(&plane, "tick").await.is_empty(), "nothing runs before its time");

    // The clock passes one scheduled time: one Job each, named after the scheduled minute.
    clock.advance(jiff::SignedDuration::from_mins(5));
    let first = eventually(WAIT, "tick's first job complete", || async {
        let jobs = jobs_of(&plane, "tick").await;
        let complete = jobs.len() == 1 && job_condition(&jobs[0], "Complete").is_some();
        complete.then(|| jobs[0].clone())
    })
    .await;
    let minute = first.metadata.name.as_deref().unwrap().strip_prefix("tick-").unwrap().parse::<i64>().unwrap();
    assert_eq!(minute % 5, 0, "named after a */5 minute");
    eventually(WAIT, "lastSuccessfulTime recorded", || async {
        let cron: CronJob = plane.client.get(Some("default"), "tick").await.ok()?;
        cron.status?.last_successful_time.map(|_| ())
    })
    .await;
    assert_eq!(jobs_of(&plane, "long").await.len(), 1);

    // The next time: tick starts another and keeps one finished Job only; long's first Job
    // still runs, and Forbid starts no second one.
    clock.advance(jiff::SignedDuration::from_mins(5));
    eventually(WAIT, "tick's second job, the first cleaned up", || async {
        let jobs = jobs_of(&plane, "tick").await;
        let names: Vec<_> = jobs.iter().filter_map(|j| j.metadata.name.clone()).collect();
        let done = jobs.len() == 1
            && names[0] != first.metadata.name.clone().unwrap()
            && job_condition(&jobs[0], "Complete").is_some();
        done.then_some(())
    })
    .await;
    assert_eq!(jobs_of(&plane, "long").await.len(), 1, "Forbid: no second job while the first runs");
    let events = plane.events_for("long").await;
    assert!(events.iter().any(|e| e.reason.as_deref() == Some("JobAlreadyActive")), "{events:?}");
    let cron: CronJob = plane.client.get(Some("default"), "long").await.unwrap();
    assert_eq!(cron.status.unwrap().active.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resource_quota_refuses_what_goes_over_and_reports_usage() {
    let plane = ControlPlane::start().await;
    plane.node("n1", "8", json!({}), json!([])).await;
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "small", "namespace": "default"},
        "spec": {"hard": {"pods": "2", "requests.cpu": "1"}},
    }))
    .unwrap();
    plane.client.create(Some("default"), &quota).await.expect("create quota");
    plane.client.create(Some("default"), &deployment_manifest("web", 3, "busybox:1", json!({}))).await.expect("create");
    eventually(WAIT, "two pods and a FailedCreate naming the quota", || async {
        let pods = plane.pods("app=web").await;
        let sets = plane.replica_sets("app=web").await;
        let rs = sets.first()?.metadata.name.clone()?;
        let refused = plane.events_for(&rs).await.iter().any(|e| {
            e.reason.as_deref() == Some("FailedCreate")
                && e.message
                    .as_deref()
                    .is_some_and(|m| m.contains("exceeded quota: small") && m.contains("limited: pods=2"))
        });
        if !refused || pods.len() != 2 {
            eprintln!(
                "pods {} events {:?}",
                pods.len(),
                plane.events_for(&rs).await.iter().map(|e| e.message.clone()).collect::<Vec<_>>()
            );
        }
        (pods.len() == 2 && refused).then_some(())
    })
    .await;
    let used = eventually(WAIT, "status.used", || async {
        let quota: ResourceQuota = plane.client.get(Some("default"), "small").await.ok()?;
        let used = quota.status?.used?;
        (used.get("pods")?.0 == "2").then_some(used)
    })
    .await;
    assert_eq!(used["requests.cpu"].0, "200m");
    // A pod without a cpu request cannot be counted, so it is refused too.
    let bare: Pod = serde_json::from_value(json!({
        "metadata": {"name": "bare", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    let error = plane.client.create(Some("default"), &bare).await.unwrap_err().to_string();
    assert!(error.contains("failed quota: small: must specify requests.cpu"), "{error}");
    // Scaling down frees room: nothing over quota is left waiting.
    plane
        .client
        .patch::<Deployment>(Some("default"), "web", None, PatchType::Merge, json!({"spec": {"replicas": 1}}))
        .await
        .expect("scale");
    eventually(WAIT, "one pod, used pods=1", || async {
        let quota: ResourceQuota = plane.client.get(Some("default"), "small").await.ok()?;
        let active: Vec<Pod> = plane.pods("app=web").await.into_iter().filter(is_active).collect();
        (active.len() == 1 && quota.status?.used?.get("pods")?.0 == "1").then_some(())
    })
    .await;
}

fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("a valid manifest")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limit_ranges_default_and_bound_and_scoped_quotas_count_only_their_pods() {
    use k8s_openapi::api::core::v1::{LimitRange, Namespace};
    let plane = ControlPlane::start().await;
    plane.client.create(None, &typed::<Namespace>(json!({"metadata": {"name": "limited"}}))).await.expect("namespace");
    let ns = Some("limited");
    let limits: LimitRange = typed(json!({
        "metadata": {"name": "limits"},
        "spec": {"limits": [
            {"type": "Container", "max": {"cpu": "1"}, "default": {"cpu": "500m", "memory": "256Mi"}, "defaultRequest": {"cpu": "100m"}},
            {"type": "PersistentVolumeClaim", "min": {"storage": "1Gi"}},
        ]},
    }));
    let created = plane.client.create(ns, &limits).await.expect("create limit range");
    let container = &created.spec.as_ref().unwrap().limits[0];
    assert_eq!(container.default_request.as_ref().unwrap()["memory"].0, "256Mi", "defaulted from the default limit");

    // A pod asking for nothing gets the defaults, and the annotation says which.
    let pod = |name: &str, spec: serde_json::Value| -> Pod {
        let mut spec = spec;
        spec["containers"][0]["name"] = json!("c");
        spec["containers"][0]["image"] = json!("busybox");
        typed(json!({"metadata": {"name": name}, "spec": spec}))
    };
    let bare = plane.client.create(ns, &pod("bare", json!({"containers": [{}]}))).await.expect("create bare pod");
    let resources = bare.spec.unwrap().containers[0].resources.clone().unwrap();
    assert_eq!(resources.requests.unwrap()["cpu"].0, "100m");
    assert_eq!(resources.limits.unwrap()["memory"].0, "256Mi");
    assert_eq!(
        bare.metadata.annotations.unwrap()["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container c; cpu, memory limit for container c"
    );
    // Over the maximum: refused with kube's words, nothing written.
    let big = pod("big", json!({"containers": [{"resources": {"limits": {"cpu": "2"}}}]}));
    let error = plane.client.create(ns, &big).await.unwrap_err().to_string();
    assert!(error.contains("maximum cpu usage per Container is 1, but limit is 2"), "{error}");
    assert!(plane.client.get::<Pod>(ns, "big").await.is_err());
    let claim: PersistentVolumeClaim = typed(json!({
        "metadata": {"name": "tiny"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "100Mi"}}},
    }));
    let error = plane.client.create(ns, &claim).await.unwrap_err().to_string();
    assert!(error.contains("minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 100Mi"), "{error}");
    let contradictory: LimitRange = typed(json!({
        "metadata": {"name": "contradictory"},
        "spec": {"limits": [{"type": "Container", "min": {"cpu": "2"}, "max": {"cpu": "1"}}]},
    }));
    let error = plane.client.create(ns, &contradictory).await.unwrap_err().to_string();
    assert!(error.contains("min value 2 is greater than max value 1"), "{error}");

    // Scoped quotas in a namespace of their own: each counts only the pods its scopes match.
    plane.client.create(None, &typed::<Namespace>(json!({"metadata": {"name": "scoped"}}))).await.expect("namespace");
    let ns = Some("scoped");
    for (name, spec) in [
        ("best-effort", json!({"hard": {"pods": "1"}, "scopes": ["BestEffort"]})),
        ("terminating", json!({"hard": {"pods": "1", "requests.cpu": "1"}, "scopes": ["Terminating"]})),
    ] {
        let quota: ResourceQuota = typed(json!({"metadata": {"name": name}, "spec": spec}));
        plane.client.create(ns, &quota).await.expect("create scoped quota");
    }
    let invalid: ResourceQuota = typed(
        json!({"metadata": {"name": "invalid"}, "spec": {"hard": {"requests.cpu": "1"}, "scopes": ["BestEffort"]}}),
    );
    let error = plane.client.create(ns, &invalid).await.unwrap_err().to_string();
    assert!(error.contains("unsupported scope applied to resource"), "{error}");
    let requests = json!({"resources": {"requests": {"cpu": "100m"}}});
    plane.client.create(ns, &pod("idle-1", json!({"containers": [{}]}))).await.expect("first best-effort pod");
    let error = plane.client.create(ns, &pod("idle-2", json!({"containers": [{}]}))).await.unwrap_err().to_string();
    assert!(error.contains("exceeded quota: best-effort"), "{error}");
    // Neither quota's scopes match a long-running pod with a request: no quota applies.
    for name in ["server-1", "server-2"] {
        plane.client.create(ns, &pod(name, json!({"containers": [requests.clone()]}))).await.expect("unscoped pod");
    }
    let job = json!({"activeDeadlineSeconds": 60, "containers": [requests.clone()]});
    plane.client.create(ns, &pod("job-1", job.clone())).await.expect("first terminating pod");
    let error = plane.client.create(ns, &pod("job-2", job)).await.unwrap_err().to_string();
    assert!(error.contains("exceeded quota: terminating"), "{error}");
    eventually(WAIT, "each quota's status counts its own pods", || async {
        let used = |quota: ResourceQuota| quota.status.and_then(|s| s.used).unwrap_or_default();
        let best_effort = used(plane.client.get(ns, "best-effort").await.ok()?);
        let terminating = used(plane.client.get(ns, "terminating").await.ok()?);
        (best_effort.get("pods")?.0 == "1"
            && terminating.get("pods")?.0 == "1"
            && terminating.get("requests.cpu")?.0 == "100m")
            .then_some(())
    })
    .await;
}

/// The plane's API over HTTP on a loopback port chosen at run time, for what only shows on
/// the wire: the eviction subresource's status codes, bodies and headers.
struct Wire {
    base: String,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Wire {
    async fn serve(api: Arc<Api>) -> Wire {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the API");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let server = tokio::spawn(async move {
            let _ = keel_api::server::serve(api, listener, std::future::pending()).await;
        });
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
        Wire { base, client, server }
    }

    /// POSTs an Eviction of `pod` (with `extra` merged into it); the code, the body and the
    /// Retry-After header.
    async fn evict(
        &self,
        pod: &str,
        query: &str,
        extra: serde_json::Value,
    ) -> (u16, serde_json::Value, Option<String>) {
        use http_body_util::BodyExt;
        let mut eviction = json!({
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": pod, "namespace": "default"},
        });
        if let (Some(eviction), Some(extra)) = (eviction.as_object_mut(), extra.as_object()) {
            eviction.extend(extra.clone());
        }
        let request = hyper::Request::builder()
            .method(hyper::Method::POST)
            .uri(format!("{}/api/v1/namespaces/default/pods/{pod}/eviction{query}", self.base))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(eviction.to_string())))
            .unwrap();
        let response = self.client.request(request).await.expect("eviction request");
        let code = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        let body = response.into_body().collect().await.expect("eviction body").to_bytes();
        (code, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null), retry_after)
    }
}

fn budget(name: &str, spec: serde_json::Value) -> k8s_openapi::api::policy::v1::PodDisruptionBudget {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})).unwrap()
}

/// (expectedPods, currentHealthy, desiredHealthy, disruptionsAllowed) once the budget's
/// status is of its current generation.
async fn budget_counts(plane: &ControlPlane, name: &str) -> Option<(i32, i32, i32, i32)> {
    let pdb: k8s_openapi::api::policy::v1::PodDisruptionBudget = plane.client.get(Some("default"), name).await.ok()?;
    let status = pdb.status?;
    (status.observed_generation == pdb.metadata.generation).then_some((
        status.expected_pods,
        status.current_healthy,
        status.desired_healthy,
        status.disruptions_allowed,
    ))
}

async fn cordon(plane: &ControlPlane, node: &str, unschedulable: bool) {
    let patch = json!({"spec": {"unschedulable": unschedulable}});
    plane.client.patch::<Node>(None, node, None, PatchType::Merge, patch).await.expect("cordon");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disruption_budget_counts_its_pods_and_evictions_spend_it() {
    let plane = ControlPlane::start().await;
    plane.node("n1", "8", json!({}), json!([])).await;
    plane.client.create(Some("default"), &deployment_manifest("web", 3, "busybox:1", json!({}))).await.expect("create");
    let web = budget("web", json!({"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}));
    plane.client.create(Some("default"), &web).await.expect("create budget");
    eventually(WAIT, "expected 3, healthy 3, desired 2, allowed 1", || async {
        (budget_counts(&plane, "web").await? == (3, 3, 2, 1)).then_some(())
    })
    .await;
    let pdb: k8s_openapi::api::policy::v1::PodDisruptionBudget =
        plane.client.get(Some("default"), "web").await.unwrap();
    let condition = pdb.status.unwrap().conditions.unwrap().into_iter().find(|c| c.type_ == "DisruptionAllowed");
    let condition = condition.expect("a DisruptionAllowed condition");
    assert_eq!((condition.status.as_str(), condition.reason.as_str()), ("True", "SufficientPods"));

    let wire = Wire::serve(plane.client.api.clone()).await;
    let (code, body, _) = wire.evict("nobody", "", json!({"metadata": {"name": "nobody"}})).await;
    assert_eq!((code, body["reason"].as_str()), (404, Some("NotFound")), "{body}");
    let mut pods: Vec<String> =
        plane.pods("app=web").await.into_iter().filter(is_active).map(|p| p.metadata.name.unwrap()).collect();
    pods.sort();
    let (code, body, _) = wire.evict(&pods[0], "", json!({"metadata": {"name": "someone-else"}})).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["message"], "name in URL does not match name in Eviction object");

    // A dry run is judged like the real thing and changes nothing.
    let (code, body, _) = wire.evict(&pods[0], "?dryRun=All", json!({})).await;
    assert_eq!((code, &body["status"]), (201, &json!("Success")), "{body}");
    assert_eq!(plane.pods("app=web").await.iter().filter(|p| is_active(p)).count(), 3);
    assert_eq!(budget_counts(&plane, "web").await, Some((3, 3, 2, 1)), "a dry run takes nothing from the budget");

    // Cordoned, so nothing replaces the evicted pod: the budget is spent after one eviction.
    cordon(&plane, "n1", true).await;
    let (code, body, _) = wire.evict(&pods[0], "", json!({"deleteOptions": {"gracePeriodSeconds": 5}})).await;
    assert_eq!((code, &body["status"], &body["code"]), (201, &json!("Success"), &json!(201)), "{body}");
    let (code, body, retry_after) = wire.evict(&pods[1], "", json!({})).await;
    assert_eq!(code, 429, "{body}");
    assert_eq!(body["reason"], "TooManyRequests");
    assert_eq!(body["message"], "Cannot evict pod as it would violate the pod's disruption budget.");
    let cause = &body["details"]["causes"][0];
    assert_eq!(cause["reason"], "DisruptionBudget", "{body}");
    let message = cause["message"].as_str().unwrap();
    assert!(message.starts_with("The disruption budget web needs 2 healthy pods and has "), "{message}");
    assert_eq!(retry_after, None, "a spent budget gives no Retry-After (kubectl drain retries on its own)");
    assert!(plane.pods("app=web").await.iter().any(|p| p.metadata.name.as_ref() == Some(&pods[1]) && is_active(p)));
    eventually(WAIT, "the controller sees 2 healthy of 2 needed", || async {
        (budget_counts(&plane, "web").await? == (3, 2, 2, 0)).then_some(())
    })
    .await;

    // A pod under two budgets cannot be evicted at all.
    let again = budget("web-again", json!({"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}));
    plane.client.create(Some("default"), &again).await.expect("second budget");
    let (code, body, _) = wire.evict(&pods[1], "", json!({})).await;
    assert_eq!(code, 500, "{body}");
    assert_eq!(
        body["message"],
        "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."
    );
    plane
        .client
        .delete::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(
            Some("default"),
            "web-again",
            &DeleteOptions::default(),
        )
        .await
        .expect("delete second budget");

    // A pending pod never counted as healthy: it goes whatever its budget says.
    let waiting: Pod = serde_json::from_value(json!({
        "metadata": {"name": "waiting", "namespace": "default", "labels": {"app": "solo"}},
        "spec": {"schedulerName": "nobody", "containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    plane.client.create(Some("default"), &waiting).await.expect("pending pod");
    let solo = budget("solo", json!({"minAvailable": 1, "selector": {"matchLabels": {"app": "solo"}}}));
    plane.client.create(Some("default"), &solo).await.expect("solo budget");
    eventually(WAIT, "the solo budget allows nothing", || async {
        (budget_counts(&plane, "solo").await? == (1, 0, 1, 0)).then_some(())
    })
    .await;
    let (code, body, _) = wire.evict("waiting", "", json!({})).await;
    assert_eq!(code, 201, "{body}");
    assert!(plane.client.get::<Pod>(Some("default"), "waiting").await.is_err(), "the pending pod is gone");

    // Uncordoned, a replacement becomes ready and the next eviction goes through — what
    // `kubectl drain` does by retrying every 5 s.
    cordon(&plane, "n1", false).await;
    eventually(WAIT, "the second eviction allowed", || async {
        let (code, _, _) = wire.evict(&pods[1], "", json!({})).await;
        (code == 201).then_some(())
    })
    .await;

    // maxUnavailable as a percentage counts the Deployment's replicas, not the pods.
    plane
        .client
        .delete::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(Some("default"), "web", &DeleteOptions::default())
        .await
        .expect("delete budget");
    let by_percent = budget("web-max", json!({"maxUnavailable": "50%", "selector": {"matchLabels": {"app": "web"}}}));
    plane.client.create(Some("default"), &by_percent).await.expect("percentage budget");
    plane
        .client
        .patch::<Deployment>(Some("default"), "web", None, PatchType::Merge, json!({"spec": {"replicas": 4}}))
        .await
        .expect("scale");
    eventually(WAIT, "expected 4 (the Deployment's scale), desired 4 - ceil(50%) = 2", || async {
        (budget_counts(&plane, "web-max").await? == (4, 4, 2, 2)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_of_a_deleted_node_are_failed_and_collected() {
    let settings = keel_controllers::Settings {
        pod_gc: keel_controllers::podgc::Settings {
            period: Duration::from_millis(200),
            quarantine: Duration::from_secs(1),
            ..keel_controllers::podgc::Settings::default()
        },
        ..keel_controllers::Settings::default()
    };
    let plane = ControlPlane::start_with(settings).await;
    plane.node("doomed", "4", json!({}), json!([])).await;
    plane.node("kept", "4", json!({}), json!([])).await;
    // A finalizer holds each pod after its deletion, so what the collector did stays visible.
    let pod = |name: &str, spec: serde_json::Value| -> Pod {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "c", "image": "busybox"}]);
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "finalizers": ["keel.test/hold"]},
            "spec": spec,
        }))
        .unwrap()
    };
    plane.client.create(Some("default"), &pod("stranded", json!({"nodeName": "doomed"}))).await.expect("create");
    plane.client.create(Some("default"), &pod("fine", json!({"nodeName": "kept"}))).await.expect("create");
    plane
        .client
        .create(Some("default"), &pod("unscheduled", json!({"schedulerName": "nobody"})))
        .await
        .expect("create");
    let phase = |name: &'static str| {
        let client = plane.client.clone();
        async move {
            let pod: Pod = client.get(Some("default"), name).await.ok()?;
            pod.status?.phase
        }
    };
    eventually(WAIT, "both bound pods running", || async {
        (phase("stranded").await? == "Running" && phase("fine").await? == "Running").then_some(())
    })
    .await;

    // Never bound and being deleted: no kubelet will finish it.
    plane.client.delete::<Pod>(Some("default"), "unscheduled", &DeleteOptions::default()).await.expect("delete");
    eventually(WAIT, "the unscheduled terminating pod marked Failed", || async {
        (phase("unscheduled").await? == "Failed").then_some(())
    })
    .await;

    plane.client.delete::<Node>(None, "doomed", &DeleteOptions::default()).await.expect("delete node");
    let stranded = eventually(WAIT, "the stranded pod Failed and deleted", || async {
        let pod: Pod = plane.client.get(Some("default"), "stranded").await.ok()?;
        (pod.metadata.deletion_timestamp.is_some() && pod.status.as_ref()?.phase.as_deref() == Some("Failed"))
            .then_some(pod)
    })
    .await;
    let conditions = stranded.status.unwrap().conditions.unwrap();
    let target = conditions.iter().find(|c| c.type_ == "DisruptionTarget").expect("a DisruptionTarget condition");
    assert_eq!(
        (target.status.as_str(), target.reason.as_deref(), target.message.as_deref()),
        ("True", Some("DeletionByPodGC"), Some("PodGC: node no longer exists"))
    );
    let fine: Pod = plane.client.get(Some("default"), "fine").await.unwrap();
    assert!(fine.metadata.deletion_timestamp.is_none(), "a pod of a node that exists is left alone");
    assert_eq!(fine.status.unwrap().phase.as_deref(), Some("Running"));

    for name in ["stranded", "unscheduled", "fine"] {
        let release = json!({"metadata": {"finalizers": null}});
        plane.client.patch::<Pod>(Some("default"), name, None, PatchType::Merge, release).await.expect("release");
    }
    eventually(WAIT, "the collected pods gone", || async {
        let stranded = plane.client.get::<Pod>(Some("default"), "stranded").await.is_err();
        let unscheduled = plane.client.get::<Pod>(Some("default"), "unscheduled").await.is_err();
        (stranded && unscheduled).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn finished_pods_beyond_the_threshold_are_collected_oldest_first() {
    let settings = keel_controllers::Settings {
        pod_gc: keel_controllers::podgc::Settings {
            period: Duration::from_millis(200),
            terminated_pod_threshold: 2,
            ..keel_controllers::podgc::Settings::default()
        },
        ..keel_controllers::Settings::default()
    };
    let plane = ControlPlane::start_with(settings).await;
    // Named against their age, each created in a later second than the one before: only
    // creation time can put them in the order the collector must follow.
    let names = ["z-oldest", "y-older", "b-newer", "a-newest"];
    for name in names {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"test": "gc"}},
            "spec": {"schedulerName": "nobody", "containers": [{"name": "c", "image": "busybox"}]},
        }))
        .unwrap();
        let created = plane.client.create(Some("default"), &pod).await.expect("create");
        let second = created.metadata.creation_timestamp.unwrap().0;
        eventually(WAIT, "the next second", || async {
            (k8s_openapi::chrono::Utc::now().timestamp() > second.timestamp()).then_some(())
        })
        .await;
    }
    for name in names {
        let done = json!({"status": {"phase": "Succeeded"}});
        plane.client.patch::<Pod>(Some("default"), name, Some("status"), PatchType::Merge, done).await.expect("finish");
    }
    let left = eventually(WAIT, "two finished pods left", || async {
        let pods = plane.pods("test=gc").await;
        (pods.len() == 2).then(|| pods.into_iter().map(|p| p.metadata.name.unwrap()).collect::<BTreeSet<_>>())
    })
    .await;
    assert_eq!(left, BTreeSet::from(["a-newest".to_string(), "b-newer".to_string()]));
}

fn ordinals_present(pods: &[Pod]) -> Vec<i32> {
    let mut ordinals: Vec<i32> = pods
        .iter()
        .filter(|p| is_active(p))
        .filter_map(|p| p.metadata.name.as_deref()?.strip_prefix("db-")?.parse().ok())
        .collect();
    ordinals.sort();
    ordinals
}

async fn stateful_set(plane: &ControlPlane) -> StatefulSet {
    plane.client.get(Some("default"), "db").await.expect("get statefulset")
}

async fn revisions_of(plane: &ControlPlane, selector: &str) -> Vec<ControllerRevision> {
    let options = ListOptions {
        label_selector: keel_api::selector::LabelSelector::parse(selector).expect("selector"),
        ..ListOptions::default()
    };
    let mut revisions = plane.client.list::<ControllerRevision>(Some("default"), &options).await.expect("revisions").0;
    revisions.sort_by_key(|r| r.revision);
    revisions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stateful_set_starts_in_order_keeps_claims_and_rolls_from_the_top_down_to_its_partition() {
    let plane = ControlPlane::start().await;
    plane.node("n1", "8", json!({}), json!([])).await;
    let set: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {
            "replicas": 3,
            "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "db", "image": "busybox:1", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]},
            },
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
        },
    }))
    .unwrap();
    plane.client.create(Some("default"), &set).await.expect("create statefulset");

    // OrderedReady: at every look, the pods that exist are 0..n and all but the last ready.
    eventually(WAIT, "db-0, db-1, db-2 ready in order", || async {
        let pods = plane.pods("app=db").await;
        let ordinals = ordinals_present(&pods);
        assert_eq!(ordinals, (0..ordinals.len() as i32).collect::<Vec<_>>(), "a gap in the ordinals");
        for pod in &pods {
            let ordinal: i32 = pod.metadata.name.as_deref().unwrap()[3..].parse().unwrap();
            if ordinal > 0 {
                let previous = pods.iter().find(|p| p.metadata.name.as_deref() == Some(&format!("db-{}", ordinal - 1)));
                assert!(
                    previous.is_some_and(keel_controllers::replicaset::is_ready),
                    "db-{ordinal} exists before db-{} is ready",
                    ordinal - 1
                );
            }
        }
        let status = stateful_set(&plane).await.status?;
        (status.ready_replicas == Some(3)).then_some(())
    })
    .await;
    let pods = plane.pods("app=db").await;
    let db1 = pods.iter().find(|p| p.metadata.name.as_deref() == Some("db-1")).expect("db-1");
    let spec = db1.spec.as_ref().unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("db-1"));
    assert_eq!(spec.subdomain.as_deref(), Some("db"));
    let claim = spec.volumes.as_ref().unwrap().iter().find(|v| v.name == "data").unwrap();
    assert_eq!(claim.persistent_volume_claim.as_ref().unwrap().claim_name, "data-db-1");
    let claims = plane.client.list::<PersistentVolumeClaim>(Some("default"), &ListOptions::default()).await.unwrap().0;
    let mut names: Vec<_> = claims.iter().filter_map(|c| c.metadata.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["data-db-0", "data-db-1", "data-db-2"]);

    // A failed pod is replaced under the same name.
    let failed_uid = db1.metadata.uid.clone();
    let mut failed = db1.clone();
    failed.status.as_mut().unwrap().phase = Some("Failed".into());
    plane.client.replace_status(Some("default"), "db-1", &failed).await.expect("fail db-1");
    eventually(WAIT, "db-1 recreated", || async {
        let pod: Pod = plane.client.get(Some("default"), "db-1").await.ok()?;
        (pod.metadata.uid != failed_uid && keel_controllers::replicaset::is_ready(&pod)).then_some(())
    })
    .await;

    // Rolling update with partition 2: only db-2 moves to the new template.
    let roll = json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 2}},
        "template": {"spec": {"containers": [{"name": "db", "image": "busybox:2"}]}}}});
    plane
        .client
        .patch::<StatefulSet>(Some("default"), "db", None, PatchType::StrategicMerge, roll)
        .await
        .expect("roll");
    let status = eventually(WAIT, "db-2 updated, the rest not", || async {
        let status = stateful_set(&plane).await.status?;
        (status.updated_replicas == Some(1) && status.ready_replicas == Some(3)).then_some(status)
    })
    .await;
    assert_ne!(status.current_revision, status.update_revision);
    let images: Vec<String> = {
        let mut pods = plane.pods("app=db").await;
        pods.sort_by_key(|p| p.metadata.name.clone());
        pods.iter().map(image_of).collect()
    };
    assert_eq!(images, ["busybox:1", "busybox:1", "busybox:2"]);

    // Partition 0: the rest follow, highest first, and the update becomes current.
    let unpartition = json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}});
    plane
        .client
        .patch::<StatefulSet>(Some("default"), "db", None, PatchType::StrategicMerge, unpartition)
        .await
        .expect("unpartition");
    eventually(WAIT, "all on busybox:2 and current", || async {
        let pods = plane.pods("app=db").await;
        let status = stateful_set(&plane).await.status?;
        let done = pods.len() == 3
            && pods.iter().all(|p| image_of(p) == "busybox:2")
            && status.current_revision == status.update_revision
            && status.ready_replicas == Some(3);
        done.then_some(())
    })
    .await;
    let revisions = revisions_of(&plane, "app=db").await;
    assert_eq!(revisions.iter().map(|r| r.revision).collect::<Vec<_>>(), [1, 2]);

    // Undo as kubectl does it: revision 1's data as a strategic merge patch.
    let data = revisions[0].data.clone().unwrap().0;
    plane
        .client
        .patch::<StatefulSet>(Some("default"), "db", None, PatchType::StrategicMerge, data)
        .await
        .expect("undo");
    eventually(WAIT, "back on busybox:1, revision 1 renumbered 3", || async {
        let pods = plane.pods("app=db").await;
        let revisions = revisions_of(&plane, "app=db").await;
        let done = pods.len() == 3
            && pods.iter().all(|p| image_of(p) == "busybox:1")
            && revisions.len() == 2
            && revisions.iter().any(|r| r.revision == 3 && image_of_revision(r) == "busybox:1");
        done.then_some(())
    })
    .await;

    // Scale down: highest ordinal first, one at a time; claims stay.
    plane
        .client
        .patch::<StatefulSet>(Some("default"), "db", None, PatchType::Merge, json!({"spec": {"replicas": 1}}))
        .await
        .expect("scale down");
    eventually(WAIT, "only db-0 left", || async {
        let ordinals = ordinals_present(&plane.pods("app=db").await);
        assert_eq!(ordinals, (0..ordinals.len() as i32).collect::<Vec<_>>(), "removed out of order");
        (ordinals == [0]).then_some(())
    })
    .await;
    let claims = plane.client.list::<PersistentVolumeClaim>(Some("default"), &ListOptions::default()).await.unwrap().0;
    assert_eq!(claims.len(), 3, "claims outlive their pods by default");
    let events = plane.events_for("db").await;
    assert!(
        events
            .iter()
            .any(|e| e.message.as_deref() == Some("create Claim data-db-0 Pod db-0 in StatefulSet db success")),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e.message.as_deref() == Some("delete Pod db-2 in StatefulSet db successful")));
}

fn image_of_revision(revision: &ControllerRevision) -> String {
    keel_controllers::history::template_of(revision)
        .and_then(|t| t.spec)
        .map(|s| s.containers[0].image.clone().unwrap_or_default())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_stateful_sets_start_all_pods_at_once() {
    let plane = ControlPlane::start().await;
    plane.node("n1", "8", json!({}), json!([])).await;
    // `test-outcome: hold`: the stand-in kubelet runs these but never marks them Ready, so
    // only Parallel gets past the first.
    let set: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {
            "replicas": 4,
            "podManagementPolicy": "Parallel",
            "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db", "test-outcome": "hold"}}, "spec": {"containers": [{"name": "db", "image": "busybox"}]}},
        },
    }))
    .unwrap();
    plane.client.create(Some("default"), &set).await.expect("create statefulset");
    eventually(WAIT, "four pods without waiting for readiness", || async {
        let pods = plane.pods("app=db").await;
        (ordinals_present(&pods) == [0, 1, 2, 3] && !pods.iter().any(keel_controllers::replicaset::is_ready))
            .then_some(())
    })
    .await;
}

async fn daemon_set(plane: &ControlPlane) -> DaemonSet {
    plane.client.get(Some("default"), "agent").await.expect("get daemonset")
}

fn nodes_of(pods: &[Pod]) -> Vec<String> {
    let mut nodes: Vec<String> =
        pods.iter().filter(|p| is_active(p)).filter_map(keel_controllers::daemonset::target_node).collect();
    nodes.sort();
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemon_set_follows_eligible_nodes_and_rolls_node_by_node() {
    let plane = ControlPlane::start().await;
    plane.node("n1", "4", json!({"role": "worker"}), json!([])).await;
    plane.node("n2", "4", json!({"role": "worker"}), json!([])).await;
    plane
        .node(
            "n3",
            "4",
            json!({"role": "worker"}),
            json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
        )
        .await;
    plane.node("other", "4", json!({"role": "edge"}), json!([])).await;
    let set: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {"nodeSelector": {"role": "worker"}, "containers": [{"name": "agent", "image": "busybox:1"}]},
            },
        },
    }))
    .unwrap();
    plane.client.create(Some("default"), &set).await.expect("create daemonset");
    eventually(WAIT, "a ready pod on n1 and n2 only", || async {
        let pods = plane.pods("app=agent").await;
        let status = daemon_set(&plane).await.status?;
        let bound = pods
            .iter()
            .all(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()) == keel_controllers::daemonset::target_node(p));
        (nodes_of(&pods) == ["n1", "n2"]
            && bound
            && status.desired_number_scheduled == 2
            && status.number_available == Some(2))
        .then_some(())
    })
    .await;

    // A new eligible node gets one.
    plane.node("n4", "4", json!({"role": "worker"}), json!([])).await;
    eventually(WAIT, "n4 joins", || async {
        let status = daemon_set(&plane).await.status?;
        (nodes_of(&plane.pods("app=agent").await) == ["n1", "n2", "n4"] && status.number_ready == 3).then_some(())
    })
    .await;

    // New image: node by node, never more than maxUnavailable (1) short.
    let roll = json!({"spec": {"template": {"spec": {"containers": [{"name": "agent", "image": "busybox:2"}]}}}});
    plane
        .client
        .patch::<DaemonSet>(Some("default"), "agent", None, PatchType::StrategicMerge, roll)
        .await
        .expect("roll");
    eventually(WAIT, "every node on busybox:2", || async {
        let pods: Vec<Pod> = plane.pods("app=agent").await.into_iter().filter(is_active).collect();
        let ready_nodes: BTreeSet<String> = pods
            .iter()
            .filter(|p| keel_controllers::replicaset::is_ready(p))
            .filter_map(keel_controllers::daemonset::target_node)
            .collect();
        assert!(ready_nodes.len() >= 2, "more than maxUnavailable nodes without a ready pod: {ready_nodes:?}");
        let status = daemon_set(&plane).await.status?;
        let done = pods.len() == 3
            && pods.iter().all(|p| image_of(p) == "busybox:2")
            && status.updated_number_scheduled == Some(3)
            && status.number_available == Some(3);
        done.then_some(())
    })
    .await;
    let revisions = revisions_of(&plane, "app=agent").await;
    assert_eq!(revisions.iter().map(|r| r.revision).collect::<Vec<_>>(), [1, 2]);

    // NoExecute on n1 takes its pod away; NoSchedule on n2 leaves it.
    for (node, effect) in [("n1", "NoExecute"), ("n2", "NoSchedule")] {
        let taint = json!({"spec": {"taints": [{"key": "maintenance", "value": "yes", "effect": effect}]}});
        plane.client.patch::<Node>(None, node, None, PatchType::Merge, taint).await.expect("taint");
    }
    eventually(WAIT, "n1's pod gone, n2's kept", || async {
        let status = daemon_set(&plane).await.status?;
        (nodes_of(&plane.pods("app=agent").await) == ["n2", "n4"] && status.desired_number_scheduled == 1).then_some(())
    })
    .await;
}

fn claim_manifest(name: &str, spec: serde_json::Value) -> PersistentVolumeClaim {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})).unwrap()
}

async fn claim_named(plane: &ControlPlane, name: &str) -> Option<PersistentVolumeClaim> {
    plane.client.get(Some("default"), name).await.ok()
}

fn phase_of_claim(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim.status.as_ref()?.phase.as_deref()
}

fn phase_of_volume(volume: &k8s_openapi::api::core::v1::PersistentVolume) -> Option<&str> {
    volume.status.as_ref()?.phase.as_deref()
}

/// The node a volume's required node affinity pins it to (`kubernetes.io/hostname In [x]`).
fn pinned_node(volume: &k8s_openapi::api::core::v1::PersistentVolume) -> Option<String> {
    let terms = &volume.spec.as_ref()?.node_affinity.as_ref()?.required.as_ref()?.node_selector_terms;
    let expression = terms.first()?.match_expressions.as_ref()?.first()?;
    assert_eq!(expression.key, "kubernetes.io/hostname");
    expression.values.as_ref()?.first().cloned()
}

fn pod_using(name: &str, claims: &[&str]) -> Pod {
    let volumes: Vec<serde_json::Value> =
        claims.iter().map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}})).collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"test": "volumes"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "volumes": volumes},
    }))
    .unwrap()
}

async fn has_event(plane: &ControlPlane, object: &str, reason: &str, message: &str) -> bool {
    plane
        .events_for(object)
        .await
        .iter()
        .any(|e| e.reason.as_deref() == Some(reason) && e.message.as_deref().is_some_and(|m| m.contains(message)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn static_volumes_bind_to_matching_claims_and_follow_their_reclaim_policy() {
    use k8s_openapi::api::core::v1::PersistentVolume;
    let plane = ControlPlane::start().await;
    let volume = |name: &str, size: &str, class: &str, policy: &str| -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "storageClassName": class,
                "persistentVolumeReclaimPolicy": policy, "hostPath": {"path": format!("/srv/{name}")}},
        }))
        .unwrap()
    };
    for pv in [
        volume("pv-small", "1Gi", "manual", "Retain"),
        volume("pv-big", "5Gi", "manual", "Delete"),
        volume("pv-other", "10Gi", "other", "Retain"),
    ] {
        plane.client.create(None, &pv).await.expect("create volume");
    }
    let rwo = |size: &str, class: &str| json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}, "storageClassName": class});
    let mut named = rwo("1Gi", "other");
    named["volumeName"] = json!("pv-other");
    for claim in [
        claim_manifest("want-2g", rwo("2Gi", "manual")),
        claim_manifest("want-1g", rwo("1Gi", "manual")),
        claim_manifest("named", named),
        claim_manifest("too-big", rwo("100Gi", "manual")),
    ] {
        plane.client.create(Some("default"), &claim).await.expect("create claim");
    }
    for (claim, volume) in [("want-2g", "pv-big"), ("want-1g", "pv-small"), ("named", "pv-other")] {
        let bound = eventually(WAIT, &format!("{claim} bound to {volume}"), || async {
            let c = claim_named(&plane, claim).await?;
            (phase_of_claim(&c) == Some("Bound")).then_some(c)
        })
        .await;
        let spec = bound.spec.as_ref().unwrap();
        assert_eq!(spec.volume_name.as_deref(), Some(volume), "{claim}");
        let annotations = bound.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(annotations.get("pv.kubernetes.io/bind-completed").map(String::as_str), Some("yes"));
        // Only the claims whose volume the controller chose say so.
        let by_controller = annotations.get("pv.kubernetes.io/bound-by-controller").map(String::as_str);
        assert_eq!(by_controller, (claim != "named").then_some("yes"), "{claim}");
        let status = bound.status.as_ref().unwrap();
        assert_eq!(status.access_modes.as_deref(), Some(&["ReadWriteOnce".to_string()][..]));
        let pv: PersistentVolume = plane.client.get(None, volume).await.expect("get volume");
        assert_eq!(
            status.capacity.as_ref().unwrap()["storage"],
            pv.spec.as_ref().unwrap().capacity.as_ref().unwrap()["storage"]
        );
        let claim_ref = pv.spec.as_ref().unwrap().claim_ref.clone().expect("claimRef");
        assert_eq!((claim_ref.name.as_deref(), claim_ref.uid.as_ref()), (Some(claim), bound.metadata.uid.as_ref()));
        eventually(WAIT, &format!("{volume} Bound"), || async {
            let pv: PersistentVolume = plane.client.get(None, volume).await.ok()?;
            (phase_of_volume(&pv) == Some("Bound")).then_some(())
        })
        .await;
    }
    // Nothing fits and its class is not an object a provisioner could act on: it waits.
    eventually(WAIT, "too-big told why it waits", || async {
        has_event(&plane, "too-big", "ProvisioningFailed", "storageclass.storage.k8s.io \"manual\" not found")
            .await
            .then_some(())
    })
    .await;
    assert_eq!(phase_of_claim(&claim_named(&plane, "too-big").await.unwrap()), Some("Pending"));

    // The claims go: Retain keeps its volume Released, Delete removes it.
    for claim in ["want-1g", "want-2g"] {
        plane.client.delete::<PersistentVolumeClaim>(Some("default"), claim, &DeleteOptions::default()).await.unwrap();
    }
    eventually(WAIT, "pv-small Released, pv-big deleted", || async {
        let small: PersistentVolume = plane.client.get(None, "pv-small").await.ok()?;
        let big = plane.client.get::<PersistentVolume>(None, "pv-big").await;
        (phase_of_volume(&small) == Some("Released") && big.is_err()).then_some(())
    })
    .await;
    // A Released volume is not handed to the next claim.
    plane.client.create(Some("default"), &claim_manifest("again", rwo("1Gi", "manual"))).await.unwrap();
    eventually(WAIT, "again looked at", || async {
        has_event(&plane, "again", "ProvisioningFailed", "\"manual\" not found").await.then_some(())
    })
    .await;
    let again = claim_named(&plane, "again").await.unwrap();
    assert_eq!(phase_of_claim(&again), Some("Pending"));
    assert_eq!(again.spec.unwrap().volume_name, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_of_the_default_local_path_class_are_provisioned_on_their_pods_node() {
    use k8s_openapi::api::core::v1::PersistentVolume;
    use k8s_openapi::api::storage::v1::StorageClass;
    let plane = ControlPlane::start().await;
    plane.node("n1", "4", json!({}), json!([])).await;
    plane.node("n2", "4", json!({}), json!([])).await;
    let class: StorageClass = plane.client.get(None, "local-path").await.expect("the default class exists");
    assert_eq!(class.provisioner, "rancher.io/local-path");
    assert_eq!(class.volume_binding_mode.as_deref(), Some("WaitForFirstConsumer"));
    assert_eq!(class.reclaim_policy.as_deref(), Some("Delete"));
    assert_eq!(class.metadata.annotations.unwrap()["storageclass.kubernetes.io/is-default-class"], "true");

    let spec = json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}});
    let created = plane.client.create(Some("default"), &claim_manifest("data", spec)).await.expect("create claim");
    assert_eq!(created.spec.as_ref().unwrap().storage_class_name.as_deref(), Some("local-path"), "defaulted");
    eventually(WAIT, "WaitForFirstConsumer", || async {
        has_event(&plane, "data", "WaitForFirstConsumer", "waiting for first consumer to be created before binding")
            .await
            .then_some(())
    })
    .await;
    assert_eq!(phase_of_claim(&claim_named(&plane, "data").await.unwrap()), Some("Pending"));

    plane.client.create(Some("default"), &pod_using("user", &["data"])).await.expect("create pod");
    let node = eventually(WAIT, "user scheduled", || async {
        let pod: Pod = plane.client.get(Some("default"), "user").await.ok()?;
        pod.spec?.node_name
    })
    .await;
    let claim = eventually(WAIT, "data bound", || async {
        let c = claim_named(&plane, "data").await?;
        (phase_of_claim(&c) == Some("Bound")).then_some(c)
    })
    .await;
    let annotations = claim.metadata.annotations.clone().unwrap();
    assert_eq!(annotations["volume.kubernetes.io/selected-node"], node);
    assert_eq!(annotations["volume.kubernetes.io/storage-provisioner"], "rancher.io/local-path");
    let volume_name = claim.spec.as_ref().unwrap().volume_name.clone().unwrap();
    assert_eq!(volume_name, format!("pvc-{}", claim.metadata.uid.as_deref().unwrap()));
    let volume: PersistentVolume = plane.client.get(None, &volume_name).await.expect("provisioned volume");
    assert_eq!(pinned_node(&volume).as_deref(), Some(node.as_str()), "the volume is on the pod's node");
    let spec = volume.spec.as_ref().unwrap();
    assert_eq!(
        spec.host_path.as_ref().map(|h| (h.path.clone(), h.type_.clone())),
        Some((format!("/var/lib/keel/storage/{volume_name}_default_data"), Some("DirectoryOrCreate".into())))
    );
    assert_eq!(spec.capacity.as_ref().unwrap()["storage"].0, "2Gi");
    assert_eq!(spec.persistent_volume_reclaim_policy.as_deref(), Some("Delete"));
    assert_eq!(
        volume.metadata.annotations.as_ref().unwrap()["pv.kubernetes.io/provisioned-by"],
        "rancher.io/local-path"
    );
    assert!(
        has_event(&plane, "data", "ProvisioningSucceeded", &format!("Successfully provisioned volume {volume_name}"))
            .await
    );

    // Another pod of the same claim can only go where the volume is.
    plane.client.create(Some("default"), &pod_using("second", &["data"])).await.expect("create pod");
    let second = eventually(WAIT, "second scheduled", || async {
        let pod: Pod = plane.client.get(Some("default"), "second").await.ok()?;
        pod.spec?.node_name
    })
    .await;
    assert_eq!(second, node);

    // A pod whose claim does not exist waits, saying so.
    plane.client.create(Some("default"), &pod_using("lost", &["ghost"])).await.expect("create pod");
    let message = eventually(WAIT, "lost reported unschedulable", || async {
        let pod: Pod = plane.client.get(Some("default"), "lost").await.ok()?;
        let condition = pod.status?.conditions?.into_iter().find(|c| c.type_ == "PodScheduled")?;
        (condition.status == "False").then_some(condition.message.unwrap_or_default())
    })
    .await;
    assert!(message.starts_with("0/2 nodes are available: persistentvolumeclaim \"ghost\" not found."), "{message}");

    // The pods and the claim go: the volume (reclaimPolicy Delete) goes too.
    for pod in ["user", "second"] {
        plane.client.delete::<Pod>(Some("default"), pod, &DeleteOptions::default()).await.unwrap();
    }
    plane.client.delete::<PersistentVolumeClaim>(Some("default"), "data", &DeleteOptions::default()).await.unwrap();
    eventually(WAIT, "the provisioned volume deleted", || async {
        plane.client.get::<PersistentVolume>(None, &volume_name).await.is_err().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_path_refuses_immediate_binding() {
    use k8s_openapi::api::storage::v1::StorageClass;
    let plane = ControlPlane::start().await;
    plane.node("n1", "4", json!({}), json!([])).await;
    let class: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": "local-now"}, "provisioner": "keel.dev/local-path", "volumeBindingMode": "Immediate",
    }))
    .unwrap();
    plane.client.create(None, &class).await.expect("create class");
    let spec = json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
        "storageClassName": "local-now"});
    plane.client.create(Some("default"), &claim_manifest("now", spec)).await.expect("create claim");
    eventually(WAIT, "ProvisioningFailed", || async {
        let events = plane.events_for("now").await;
        events
            .iter()
            .find(|e| e.reason.as_deref() == Some("ProvisioningFailed"))
            .map(|e| (e.type_.clone(), e.message.clone().unwrap_or_default()))
    })
    .await;
    let events = plane.events_for("now").await;
    let failed = events.iter().find(|e| e.reason.as_deref() == Some("ProvisioningFailed")).unwrap();
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    let message = failed.message.clone().unwrap();
    assert!(message.starts_with("failed to provision volume with StorageClass \"local-now\""), "{message}");
    assert!(message.contains("WaitForFirstConsumer"), "{message}");
    // Its pod waits for the claim to be bound.
    plane.client.create(Some("default"), &pod_using("waits", &["now"])).await.expect("create pod");
    let message = eventually(WAIT, "waits reported unschedulable", || async {
        let pod: Pod = plane.client.get(Some("default"), "waits").await.ok()?;
        let condition = pod.status?.conditions?.into_iter().find(|c| c.type_ == "PodScheduled")?;
        (condition.status == "False").then_some(condition.message.unwrap_or_default())
    })
    .await;
    assert!(
        message.starts_with("0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims."),
        "{message}"
    );
    assert_eq!(phase_of_claim(&claim_named(&plane, "now").await.unwrap()), Some("Pending"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_without_a_class_get_the_newest_default_class() {
    use k8s_openapi::api::storage::v1::StorageClass;
    let plane = ControlPlane::start().await;
    let spec = |class: Option<&str>| {
        let mut spec = json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}});
        if let Some(class) = class {
            spec["storageClassName"] = json!(class);
        }
        spec
    };
    let class_of = |claim: &PersistentVolumeClaim| claim.spec.as_ref().and_then(|s| s.storage_class_name.clone());
    // Creation timestamps have a resolution of a second: make "fast" newer than "local-path".
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fast: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": "fast", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "example.com/fast",
    }))
    .unwrap();
    plane.client.create(None, &fast).await.expect("create class");
    let created = plane.client.create(Some("default"), &claim_manifest("a", spec(None))).await.unwrap();
    assert_eq!(class_of(&created).as_deref(), Some("fast"), "the newest default");
    let created = plane.client.create(Some("default"), &claim_manifest("b", spec(Some("")))).await.unwrap();
    assert_eq!(class_of(&created).as_deref(), Some(""), "an explicit empty class is kept");
    let created = plane.client.create(Some("default"), &claim_manifest("c", spec(Some("local-path")))).await.unwrap();
    assert_eq!(class_of(&created).as_deref(), Some("local-path"));
    // Without a default class, a claim is left without one.
    for name in ["fast", "local-path"] {
        plane.client.delete::<StorageClass>(None, name, &DeleteOptions::default()).await.unwrap();
    }
    let created = plane.client.create(Some("default"), &claim_manifest("d", spec(None))).await.unwrap();
    assert_eq!(class_of(&created), None);
    // fast is an external provisioner's: the claim is handed to it.
    eventually(WAIT, "ExternalProvisioning", || async {
        has_event(&plane, "a", "ExternalProvisioning", "external provisioner 'example.com/fast'").await.then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stateful_set_claims_get_local_path_volumes_on_their_pods_nodes() {
    use k8s_openapi::api::core::v1::PersistentVolume;
    let plane = ControlPlane::start().await;
    plane.node("n1", "4", json!({}), json!([])).await;
    plane.node("n2", "4", json!({"kubernetes.io/hostname": "host-2"}), json!([])).await;
    let set: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": 3,
            "podManagementPolicy": "Parallel",
            "serviceName": "web",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "busybox:1", "volumeMounts": [{"name": "www", "mountPath": "/www"}]}]},
            },
            "volumeClaimTemplates": [{"metadata": {"name": "www"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
        },
    }))
    .unwrap();
    plane.client.create(Some("default"), &set).await.expect("create statefulset");
    for ordinal in 0..3 {
        let (pod, claim) = (format!("web-{ordinal}"), format!("www-web-{ordinal}"));
        let claim = eventually(WAIT, &format!("{claim} bound"), || async {
            let c = claim_named(&plane, &claim).await?;
            (phase_of_claim(&c) == Some("Bound")).then_some(c)
        })
        .await;
        let node = eventually(WAIT, &format!("{pod} scheduled"), || async {
            let pod: Pod = plane.client.get(Some("default"), &pod).await.ok()?;
            pod.spec?.node_name
        })
        .await;
        let volume: PersistentVolume =
            plane.client.get(None, claim.spec.as_ref().unwrap().volume_name.as_deref().unwrap()).await.unwrap();
        // n2 is pinned by its hostname label, n1 (which has none) by its name.
        let want = if node == "n2" { "host-2" } else { "n1" };
        assert_eq!(pinned_node(&volume).as_deref(), Some(want), "{pod} on {node}");
    }
}
