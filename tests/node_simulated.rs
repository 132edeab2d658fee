//! The node agent's stream, end to end: a `keel agent --simulate` process holds one stream
//! per simulated node to a three-member cluster of `keel server` processes. Nodes register
//! and heartbeat; pods scheduled onto them are started by the agent's pod sync loop (on the
//! simulated runtime) and reported Running and Ready; a crashing container is restarted with
//! back-off; exec probes follow their scripted annotations (readiness, a liveness restart)
//! and network probes fail saying why; a Job's pods complete; a deleted pod is stopped and removed by its node; and the
//! member the agent is connected to is SIGKILLed: the agent resumes on another member and its
//! running pods are not touched.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::eventually;
use support::kubectl::Kubectl;
use support::processes::{Cluster, keel_binary};

const NODES: usize = 3;

struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    fn start(dir: &std::path::Path, servers: &[String]) -> AgentProcess {
        let log = dir.join("agent.log");
        let file = std::fs::File::create(&log).expect("agent log");
        let child = Command::new(keel_binary())
            .args(["agent", "--name", "sim", "--simulate", &NODES.to_string(), "--server", &servers.join(",")])
            .args(["--data-dir", &dir.join("agent").display().to_string()])
            .args(["--heartbeat-interval", "1s", "--node-lease-duration", "10s", "--crash-loop-backoff", "1s"])
            .env("KEEL_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn keel agent");
        AgentProcess { child, log }
    }

    /// The member each node's stream was last registered with, from the agent's log.
    fn serving_members(&self) -> BTreeMap<String, String> {
        let raw = std::fs::read_to_string(&self.log).unwrap_or_default();
        // Without colour codes, whatever the terminal settings were.
        let mut text = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                text.push(c);
            }
        }
        let mut out = BTreeMap::new();
        for line in text.lines().filter(|l| l.contains("registered")) {
            let field = |name: &str| {
                line.split(&format!("{name}="))
                    .nth(1)
                    .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '}' || c == ':').next())
                    .map(String::from)
            };
            if let (Some(node), Some(member)) = (field("node"), field("serving_member")) {
                out.insert(node, member);
            }
        }
        out
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pods of a label selector as (name, phase, ready, restarts, container id, node).
fn pods(k: &Kubectl, selector: &str) -> Vec<(String, String, bool, i64, String, String)> {
    let list = k.json(&["get", "pods", "-l", selector]);
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| {
            let ready = p["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
            let container = &p["status"]["containerStatuses"][0];
            (
                p["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                p["status"]["phase"].as_str().unwrap_or_default().to_string(),
                ready,
                container["restartCount"].as_i64().unwrap_or(0),
                container["containerID"].as_str().unwrap_or_default().to_string(),
                p["spec"]["nodeName"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_nodes_run_pods_and_survive_the_loss_of_their_member() {
    support::init_logging();
    let mut cluster = Cluster::start(3, &[]).await;
    let apis: Vec<String> = cluster.members.iter().map(|m| m.api.clone()).collect();
    let work = cluster.dir().join("kubectl");
    std::fs::create_dir_all(&work).expect("work dir");
    let agent = AgentProcess::start(cluster.dir(), &apis);
    let k = Kubectl::new(&work, &apis[0]);

    // Nodes register Ready, with capacity, node info and a Lease kept fresh.
    eventually(Duration::from_secs(30), "three Ready simulated nodes", || async {
        let nodes = k.json(&["get", "nodes", "-l", "type=simulated"]);
        let ready = nodes["items"].as_array()?.iter().filter(|n| {
            n["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        });
        (ready.count() == NODES).then_some(())
    })
    .await;
    let node = k.json(&["get", "node", "sim-00000"]);
    assert_eq!(node["status"]["capacity"]["pods"], "110", "{node}");
    assert!(node["status"]["nodeInfo"]["containerRuntimeVersion"].as_str().unwrap_or("").starts_with("simulated://"));
    let lease = k.json(&["get", "lease", "-n", "kube-node-lease", "sim-00000"]);
    assert_eq!(lease["spec"]["holderIdentity"], "sim-00000");
    assert_eq!(lease["metadata"]["ownerReferences"][0]["kind"], "Node");
    let first_renewal = lease["spec"]["renewTime"].as_str().expect("renewTime").to_string();
    eventually(Duration::from_secs(10), "the Lease renewed", || async {
        let lease = k.json(&["get", "lease", "-n", "kube-node-lease", "sim-00000"]);
        (lease["spec"]["renewTime"].as_str()? != first_renewal).then_some(())
    })
    .await;

    // A Deployment's pods run on the simulated nodes.
    k.ok(&["create", "deployment", "web", "--image=busybox:1.36", "--replicas=6"]);
    let running = eventually(Duration::from_secs(60), "six Running and Ready pods", || async {
        let pods = pods(&k, "app=web");
        (pods.len() == 6 && pods.iter().all(|p| p.1 == "Running" && p.2)).then_some(pods)
    })
    .await;
    let nodes: BTreeSet<&str> = running.iter().map(|p| p.5.as_str()).collect();
    assert!(nodes.len() > 1, "the scheduler spreads the pods: {running:?}");
    assert!(running.iter().all(|p| p.4.starts_with("sim://")), "{running:?}");
    let ips: BTreeSet<String> = k.json(&["get", "pods", "-l", "app=web"])["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| p["status"]["podIP"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(ips.len(), 6, "every pod has its own IP: {ips:?}");
    k.ok(&["rollout", "status", "deployment/web", "--timeout=30s"]);

    // A container that keeps failing is restarted, with back-off.
    let crasher = k.write(
        "crasher.yaml",
        r#"apiVersion: v1
kind: Pod
metadata:
  name: crasher
  labels: {app: crasher}
  annotations: {simulate.keel.dev/run-seconds: "0.2", simulate.keel.dev/exit-code: "3"}
spec:
  containers: [{name: c, image: busybox:1.36}]
"#,
    );
    k.ok(&["apply", "-f", &crasher]);
    eventually(Duration::from_secs(60), "the crashing container restarted twice", || async {
        let pod = k.json(&["get", "pod", "crasher"]);
        let status = &pod["status"]["containerStatuses"][0];
        (status["restartCount"].as_i64()? >= 2 && status["lastState"]["terminated"]["exitCode"] == 3).then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "CrashLoopBackOff shown", || async {
        let pod = k.json(&["get", "pod", "crasher"]);
        (pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff").then_some(())
    })
    .await;

    // Probes on simulated pods: exec follows the scripted window; network probes have
    // nowhere to go and fail saying so.
    let probed = k.write(
        "probed.yaml",
        r#"apiVersion: v1
kind: Pod
metadata:
  name: slow-ready
  annotations: {simulate.keel.dev/exec-succeeds-after-seconds: "2"}
spec:
  containers:
  - name: c
    image: busybox:1.36
    readinessProbe: {exec: {command: ["true"]}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata:
  name: goes-bad
  annotations: {simulate.keel.dev/exec-fails-after-seconds: "1"}
spec:
  containers:
  - name: c
    image: busybox:1.36
    livenessProbe: {exec: {command: ["true"]}, periodSeconds: 1, failureThreshold: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: no-network}
spec:
  containers:
  - name: c
    image: busybox:1.36
    readinessProbe: {tcpSocket: {port: 80}, periodSeconds: 1}
"#,
    );
    k.ok(&["apply", "-f", &probed]);
    // Polls tolerate a failed kubectl: a loaded machine can leave the cluster briefly without
    // a quorum.
    let try_json = |args: &[&str]| -> Option<serde_json::Value> {
        let out = k.run(&[args, &["-o", "json"]].concat());
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    };
    let events_of = |name: &str| -> Vec<String> {
        let events = try_json(&["get", "events"]).unwrap_or_default();
        events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["involvedObject"]["name"] == name)
            .map(|e| {
                format!("{}: {}", e["reason"].as_str().unwrap_or_default(), e["message"].as_str().unwrap_or_default())
            })
            .collect()
    };
    let ready_of = |name: &str| {
        let pod = try_json(&["get", "pod", name]).unwrap_or_default();
        pod["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    };
    eventually(Duration::from_secs(30), "slow-ready Ready after failing its readiness probe", || async {
        let failed = events_of("slow-ready")
            .iter()
            .any(|e| e.starts_with("Unhealthy: Readiness probe failed: simulated: exec fails until"));
        (failed && ready_of("slow-ready")).then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "goes-bad restarted by its liveness probe", || async {
        let pod = try_json(&["get", "pod", "goes-bad"])?;
        (pod["status"]["containerStatuses"][0]["restartCount"].as_i64()? >= 1).then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "no-network's probe failing", || async {
        events_of("no-network").iter().any(|e| e.contains("simulated pods have no network")).then_some(())
    })
    .await;
    let no_network = eventually(Duration::from_secs(30), "no-network's status", || async {
        try_json(&["get", "pod", "no-network"]).filter(|p| p["status"]["phase"] == "Running")
    })
    .await;
    let ready = &no_network["status"]["containerStatuses"][0]["ready"];
    assert_eq!(ready, false, "{no_network}");
    k.ok(&["delete", "pod", "slow-ready", "goes-bad", "no-network", "--wait=false"]);

    // A Job's pod runs to completion and the Job completes.
    let job = k.write(
        "job.yaml",
        r#"apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec:
  completions: 2
  template:
    metadata:
      annotations: {simulate.keel.dev/run-seconds: "0.3"}
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox:1.36}]
"#,
    );
    k.ok(&["apply", "-f", &job]);
    k.ok(&["wait", "--for=condition=complete", "job/once", "--timeout=60s"]);
    let job_pods = pods(&k, "job-name=once");
    assert!(job_pods.iter().filter(|p| p.1 == "Succeeded").count() >= 2, "{job_pods:?}");

    // A deleted pod is stopped by its node, which then removes it.
    let victim = running[0].0.clone();
    k.ok(&["delete", "pod", &victim, "--wait=true", "--timeout=30s"]);
    eventually(Duration::from_secs(30), "the ReplicaSet's replacement Running", || async {
        let now = pods(&k, "app=web");
        (now.len() == 6 && now.iter().all(|p| p.1 == "Running" && p.2)).then_some(())
    })
    .await;

    // The member a node streams to dies: its stream moves to another member, and the pods
    // keep their containers (same ids, no restarts).
    let before: BTreeMap<String, (i64, String)> = pods(&k, "app=web").into_iter().map(|p| (p.0, (p.3, p.4))).collect();
    let serving = agent.serving_members();
    let target = serving.get("sim-00000").cloned().expect("sim-00000's member in the agent log");
    let index = cluster.members.iter().position(|m| m.name == target).expect("a member of this cluster");
    cluster.members[index].kill();
    let alive = (index + 1) % cluster.members.len();
    let k = Kubectl::new(&work, &cluster.members[alive].api);
    eventually(Duration::from_secs(30), "sim-00000 on another member", || async {
        let now = agent.serving_members();
        now.get("sim-00000").filter(|m| **m != target).map(|_| ())
    })
    .await;
    cluster.wait_for_leader().await;
    // New work still reaches the nodes through the surviving members.
    k.ok(&["scale", "deployment/web", "--replicas=8"]);
    let after = eventually(Duration::from_secs(60), "eight Running and Ready pods after the failover", || async {
        let now = pods(&k, "app=web");
        (now.len() == 8 && now.iter().all(|p| p.1 == "Running" && p.2)).then_some(now)
    })
    .await;
    for (name, restarts, container, _) in after.iter().map(|p| (&p.0, p.3, &p.4, &p.5)) {
        if let Some((old_restarts, old_container)) = before.get(name) {
            assert_eq!((restarts, container), (*old_restarts, old_container), "{name} was disturbed by the failover");
        }
    }
    cluster.members[index].start();
}
