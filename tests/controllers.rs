//! The controllers and the scheduler against a real in-process cluster: one store member,
//! the API in process, the loops run by the leader runner exactly as `keel server` runs
//! them. Nodes are plain Node objects the test keeps Ready; a stand-in kubelet in the test
//! marks bound pods Running and Ready (the node agent is issue 5).

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Event, Node, Pod, ResourceQuota, Service};
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
    let deployment = plane.deployment("web").await;
    let progressing = deployment
        .status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "Progressing")
        .cloned()
        .unwrap();
    assert_eq!(progressing.reason.as_deref(), Some("NewReplicaSetAvailable"));

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
    let events = plane.events_for("doomed").await;
    assert!(events.iter().any(|e| e.reason.as_deref() == Some("BackoffLimitExceeded")), "{events:?}");
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
