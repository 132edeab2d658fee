//! Workloads driven by the real `kubectl` against a follower of a three-member cluster of
//! `keel server` processes: create, scale, set image, rollout status/history/undo, delete
//! with each cascade mode, a Job run to completion — and the leader SIGKILLed in the middle of a rolling update,
//! which the new leader's controllers finish with no pod duplicated or lost.
//!
//! Nodes are plain Node objects; a stand-in kubelet in the test (through kube-rs, against
//! whichever member answers) marks bound pods Running and Ready. The node agent is issue 5.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use support::eventually;
use support::kubectl::Kubectl;
use support::processes::Cluster;

const NODES: &str = r#"apiVersion: v1
kind: Node
metadata: {name: node-a, labels: {zone: a}}
---
apiVersion: v1
kind: Node
metadata: {name: node-b, labels: {zone: b}}
"#;

const READY_NODE: &str = r#"{"status": {"capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
  "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
  "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "stand-in kubelet"}]}}"#;

fn client(api_addr: &str) -> kube::Client {
    let config = kube::Config::new(format!("http://{api_addr}").parse().expect("api url"));
    kube::Client::try_from(config).expect("kube client")
}

/// Renews the nodes' Leases and marks bound pods Running and Ready, trying each member in
/// turn so a dead one is skipped.
async fn stand_in_kubelet(apis: Vec<String>, nodes: Vec<&'static str>) {
    let clients: Vec<kube::Client> = apis.iter().map(|a| client(a)).collect();
    let mut turn = 0usize;
    loop {
        let leases: kube::Api<Lease> = kube::Api::namespaced(clients[turn % clients.len()].clone(), "kube-node-lease");
        for node in &nodes {
            let lease = serde_json::json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": node, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": utc_now_micro()},
            });
            if leases.patch(node, &PatchParams::apply("stand-in-kubelet").force(), &Patch::Apply(lease)).await.is_err()
            {
                turn += 1;
            }
        }
        let pods: kube::Api<Pod> = kube::Api::all(clients[turn % clients.len()].clone());
        match pods.list(&ListParams::default()).await {
            Ok(list) => {
                for pod in list.items {
                    let bound = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                    let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
                    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    let api: kube::Api<Pod> = kube::Api::namespaced(clients[turn % clients.len()].clone(), &namespace);
                    if bound && pod.metadata.deletion_timestamp.is_some() {
                        // Containers stopped: the kubelet's final delete.
                        let _ = api
                            .delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() })
                            .await;
                        continue;
                    }
                    if !bound || phase == "Running" || phase == "Succeeded" || phase == "Failed" {
                        continue;
                    }
                    // Pods of Jobs run to completion at once.
                    let done = pod.metadata.labels.as_ref().is_some_and(|l| l.contains_key("job-name"));
                    if done {
                        let status = serde_json::json!({"status": {"phase": "Succeeded"}});
                        let _ = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(status)).await;
                        continue;
                    }
                    let now = utc_now();
                    let status = serde_json::json!({"status": {"phase": "Running", "conditions": [
                        {"type": "Ready", "status": "True", "lastTransitionTime": now},
                        {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                    ]}});
                    let _ = api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(status)).await;
                }
            }
            Err(_) => turn += 1,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn utc_now_micro() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let datetime = k8s_openapi::chrono::DateTime::from_timestamp(now.as_secs() as i64, now.subsec_micros() * 1000)
        .unwrap_or_default();
    datetime.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let datetime = k8s_openapi::chrono::DateTime::from_timestamp(secs as i64, 0).unwrap_or_default();
    datetime.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// (name, image) of the pods with label app=`app` that are not being deleted.
fn pods_of(k: &Kubectl, app: &str) -> Vec<(String, String)> {
    let out = k.ok(&[
        "get",
        "pods",
        "-l",
        &format!("app={app}"),
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}{\" \"}{.spec.containers[0].image}{\" \"}{.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ]);
    out.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() == 2).then(|| (fields[0].to_string(), fields[1].to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_rolls_deployments_through_a_leader_failure() {
    support::init_logging();
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    let work = cluster.dir().join("kubectl");
    std::fs::create_dir_all(&work).expect("work dir");
    let k = Kubectl::new(&work, &cluster.members[follower].api);
    eventually(Duration::from_secs(20), "the default namespace", || async {
        k.run(&["get", "namespace", "default"]).status.success().then_some(())
    })
    .await;
    let apis: Vec<String> = cluster.members.iter().map(|m| m.api.clone()).collect();
    let kubelet = tokio::spawn(stand_in_kubelet(apis, vec!["node-a", "node-b"]));

    let nodes = k.write("nodes.yaml", NODES);
    k.ok(&["apply", "-f", &nodes]);
    for node in ["node-a", "node-b"] {
        k.ok(&["patch", "node", node, "--subresource=status", "--type=merge", "-p", READY_NODE]);
    }

    // Create, wait, scale.
    k.ok(&["create", "deployment", "web", "--image=busybox:1.36", "--replicas=3"]);
    let status = k.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    assert_eq!(pods_of(&k, "web").len(), 3);
    k.ok(&["scale", "deployment", "web", "--replicas=5"]);
    k.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    assert_eq!(pods_of(&k, "web").len(), 5);
    let wide = k.ok(&["get", "deploy", "web", "-o", "wide"]);
    assert!(wide.contains("5/5") && wide.contains("busybox:1.36") && wide.contains("app=web"), "{wide}");

    // A new image; the leader dies in the middle of the rollout.
    k.ok(&["set", "image", "deployment/web", "busybox=busybox:1.37"]);
    eventually(Duration::from_secs(30), "the rollout under way", || async {
        pods_of(&k, "web").iter().any(|(_, image)| image == "busybox:1.37").then_some(())
    })
    .await;
    let leader = cluster.wait_for_leader().await;
    assert_ne!(leader, follower, "kubectl's member is not the one killed");
    cluster.members[leader].kill();
    cluster.wait_for_leader().await;
    let status = k.ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    let pods = eventually(Duration::from_secs(30), "exactly 5 pods, all on busybox:1.37", || async {
        let pods = pods_of(&k, "web");
        (pods.len() == 5 && pods.iter().all(|(_, i)| i == "busybox:1.37")).then_some(pods)
    })
    .await;
    let names: BTreeSet<&String> = pods.iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 5, "no duplicated pod");
    let sets = k.ok(&["get", "rs", "-l", "app=web", "-o", "name"]);
    assert_eq!(sets.lines().count(), 2, "one ReplicaSet per template, none duplicated:\n{sets}");

    // History and undo.
    let history = k.ok(&["rollout", "history", "deployment/web"]);
    assert!(
        history.contains("REVISION")
            && history.lines().any(|l| l.starts_with('1'))
            && history.lines().any(|l| l.starts_with('2')),
        "{history}"
    );
    k.ok(&["rollout", "undo", "deployment/web"]);
    k.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    eventually(Duration::from_secs(30), "back on busybox:1.36", || async {
        let pods = pods_of(&k, "web");
        (pods.len() == 5 && pods.iter().all(|(_, i)| i == "busybox:1.36")).then_some(())
    })
    .await;
    let history = k.ok(&["rollout", "history", "deployment/web"]);
    assert!(history.lines().any(|l| l.starts_with('3')) && !history.lines().any(|l| l.starts_with('1')), "{history}");
    let describe = k.ok(&["describe", "deployment", "web"]);
    assert!(describe.contains("ScalingReplicaSet") && describe.contains("NewReplicaSetAvailable"), "{describe}");

    // A Job runs to completion (the stand-in kubelet ends its pods successfully).
    k.ok(&["create", "job", "once", "--image=busybox:1.36", "--", "true"]);
    k.ok(&["wait", "--for=condition=complete", "job/once", "--timeout=60s"]);
    let job = k.ok(&["get", "job", "once"]);
    assert!(job.contains("Complete") && job.contains("1/1"), "{job}");

    // Delete with each cascade mode.
    k.ok(&["delete", "deployment", "web", "--cascade=orphan"]);
    let released = || {
        let owners = k.ok(&["get", "rs", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.ownerReferences}"]);
        owners.trim().is_empty() && pods_of(&k, "web").len() == 5
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !released() {
        assert!(
            std::time::Instant::now() < deadline,
            "orphaned ReplicaSets not released:\n{}\n{}",
            k.ok(&["get", "deploy,rs,pods", "-o", "wide"]),
            k.ok(&["get", "rs", "-o", "yaml"])
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    k.ok(&["delete", "rs", "-l", "app=web", "--cascade=background"]);
    eventually(Duration::from_secs(30), "background deletion removes the pods", || async {
        pods_of(&k, "web").is_empty().then_some(())
    })
    .await;
    k.ok(&["create", "deployment", "fg", "--image=busybox:1.36", "--replicas=2"]);
    k.ok(&["rollout", "status", "deployment/fg", "--timeout=90s"]);
    k.ok(&["delete", "deployment", "fg", "--cascade=foreground", "--wait=true", "--timeout=60s"]);
    assert!(pods_of(&k, "fg").is_empty(), "foreground deletion waits for the pods");
    assert!(k.ok(&["get", "rs", "-l", "app=fg", "-o", "name"]).trim().is_empty());
    kubelet.abort();
}

/// The node each pod with label app=`app` runs on, for those not being deleted.
fn nodes_of_app(k: &Kubectl, app: &str) -> Vec<String> {
    let out = k.ok(&[
        "get",
        "pods",
        "-l",
        &format!("app={app}"),
        "-o",
        "jsonpath={range .items[*]}{.spec.nodeName}{\" \"}{.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ]);
    out.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() == 1).then(|| fields[0].to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drain_evicts_within_a_disruption_budget() {
    support::init_logging();
    let cluster = Cluster::start(1, &[]).await;
    cluster.wait_for_leader().await;
    let work = cluster.dir().join("kubectl");
    std::fs::create_dir_all(&work).expect("work dir");
    let k = Kubectl::new(&work, &cluster.members[0].api);
    eventually(Duration::from_secs(20), "the default namespace", || async {
        k.run(&["get", "namespace", "default"]).status.success().then_some(())
    })
    .await;
    let kubelet = tokio::spawn(stand_in_kubelet(vec![cluster.members[0].api.clone()], vec!["node-a", "node-b"]));
    let nodes = k.write("nodes.yaml", NODES);
    k.ok(&["apply", "-f", &nodes]);
    for node in ["node-a", "node-b"] {
        k.ok(&["patch", "node", node, "--subresource=status", "--type=merge", "-p", READY_NODE]);
    }
    // Every replica on node-a to start with.
    k.ok(&["cordon", "node-b"]);
    k.ok(&["create", "deployment", "web", "--image=busybox:1.36", "--replicas=3"]);
    k.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    assert_eq!(nodes_of_app(&k, "web"), ["node-a"; 3]);
    k.ok(&["uncordon", "node-b"]);

    k.ok(&["create", "pdb", "web", "--selector=app=web", "--min-available=2"]);
    let table = eventually(Duration::from_secs(30), "the budget allowing one disruption", || async {
        let table = k.ok(&["get", "pdb", "web"]);
        let row: Vec<String> = table.lines().nth(1)?.split_whitespace().map(String::from).collect();
        (row.get(..4)? == ["web", "2", "N/A", "1"]).then_some(table)
    })
    .await;
    let header: Vec<&str> =
        table.lines().next().unwrap_or("").split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(header, ["NAME", "MIN AVAILABLE", "MAX UNAVAILABLE", "ALLOWED DISRUPTIONS", "AGE"], "{table}");

    // Three evictions at once against a budget that allows one: kubectl retries the refused
    // ones every 5 s until replacements on node-b are ready.
    let drain = k.run(&["drain", "node-a", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=120s"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&drain.stdout), String::from_utf8_lossy(&drain.stderr));
    assert!(drain.status.success(), "kubectl drain failed:\nstdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("node/node-a cordoned") && stdout.contains("node/node-a drained"), "{stdout}");
    let evicted = stdout.lines().filter(|l| l.starts_with("pod/web-") && l.ends_with(" evicted")).count();
    assert_eq!(evicted, 3, "{stdout}");
    assert!(
        stderr.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "the budget held evictions back: {stderr}"
    );
    assert_eq!(nodes_of_app(&k, "web"), ["node-b"; 3]);
    let unschedulable = k.ok(&["get", "node", "node-a", "-o", "jsonpath={.spec.unschedulable}"]);
    assert_eq!(unschedulable.trim(), "true");
    eventually(Duration::from_secs(30), "the budget allowing one disruption again", || async {
        let row = k.ok(&["get", "pdb", "web", "--no-headers"]);
        (row.split_whitespace().nth(3) == Some("1")).then_some(())
    })
    .await;
    kubelet.abort();
}

const STATEFUL_AND_DAEMON: &str = r#"apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{port: 5432}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 2
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: "busybox:1.36"}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: agent, image: "busybox:1.36"}]
"#;

/// The first column of `kubectl rollout history`'s revision lines.
fn revisions_listed(history: &str) -> Vec<String> {
    history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_rolls_stateful_and_daemon_sets_and_undoes_them() {
    support::init_logging();
    let cluster = Cluster::start(1, &[]).await;
    cluster.wait_for_leader().await;
    let work = cluster.dir().join("kubectl");
    std::fs::create_dir_all(&work).expect("work dir");
    let k = Kubectl::new(&work, &cluster.members[0].api);
    eventually(Duration::from_secs(20), "the default namespace", || async {
        k.run(&["get", "namespace", "default"]).status.success().then_some(())
    })
    .await;
    let kubelet = tokio::spawn(stand_in_kubelet(vec![cluster.members[0].api.clone()], vec!["node-a", "node-b"]));
    let nodes = k.write("nodes.yaml", NODES);
    k.ok(&["apply", "-f", &nodes]);
    for node in ["node-a", "node-b"] {
        k.ok(&["patch", "node", node, "--subresource=status", "--type=merge", "-p", READY_NODE]);
    }
    let manifest = k.write("workloads.yaml", STATEFUL_AND_DAEMON);
    k.ok(&["apply", "-f", &manifest]);

    let status = k.ok(&["rollout", "status", "statefulset/db", "--timeout=90s"]);
    assert!(status.contains("roll out complete") || status.contains("rolling update complete"), "{status}");
    let status = k.ok(&["rollout", "status", "daemonset/agent", "--timeout=90s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    let names = k.ok(&["get", "pods", "-l", "app=db", "-o", "jsonpath={.items[*].metadata.name}"]);
    assert_eq!(names.split_whitespace().collect::<BTreeSet<_>>(), BTreeSet::from(["db-0", "db-1"]));
    let nodes_used = k.ok(&["get", "pods", "-l", "app=agent", "-o", "jsonpath={.items[*].spec.nodeName}"]);
    assert_eq!(nodes_used.split_whitespace().collect::<BTreeSet<_>>(), BTreeSet::from(["node-a", "node-b"]));
    let ds = k.ok(&["get", "ds", "agent"]);
    assert!(
        ds.contains("DESIRED") && ds.lines().nth(1).is_some_and(|l| l.split_whitespace().nth(1) == Some("2")),
        "{ds}"
    );

    for (kind, container) in [("statefulset/db", "db"), ("daemonset/agent", "agent")] {
        k.ok(&["set", "image", kind, &format!("{container}=busybox:1.37")]);
        k.ok(&["rollout", "status", kind, "--timeout=90s"]);
        let app = container;
        eventually(Duration::from_secs(30), "every pod on busybox:1.37", || async {
            let pods = pods_of(&k, app);
            (pods.len() == 2 && pods.iter().all(|(_, i)| i == "busybox:1.37")).then_some(())
        })
        .await;
        let history = k.ok(&["rollout", "history", kind]);
        assert_eq!(revisions_listed(&history), ["1", "2"], "{kind}: {history}");

        k.ok(&["rollout", "undo", kind]);
        k.ok(&["rollout", "status", kind, "--timeout=90s"]);
        eventually(Duration::from_secs(30), "back on busybox:1.36", || async {
            let pods = pods_of(&k, app);
            (pods.len() == 2 && pods.iter().all(|(_, i)| i == "busybox:1.36")).then_some(())
        })
        .await;
        let history = k.ok(&["rollout", "history", kind]);
        assert_eq!(revisions_listed(&history), ["2", "3"], "{kind}: undo renumbers, not copies: {history}");
    }
    let revisions = k.ok(&["get", "controllerrevisions"]);
    assert!(
        revisions.contains("CONTROLLER")
            && revisions.contains("statefulset.apps/db")
            && revisions.contains("daemonset.apps/agent"),
        "{revisions}"
    );
    let describe = k.ok(&["describe", "statefulset", "db"]);
    assert!(
        describe.contains("SuccessfulCreate") && describe.contains("create Pod db-0 in StatefulSet db successful"),
        "{describe}"
    );
    kubelet.abort();
}
