//! Resource metrics and the HorizontalPodAutoscaler, end to end: a `keel agent --simulate`
//! process (its pods' usage scripted by annotations) streams usage to one of three `keel
//! server` members; the real `kubectl top node` and `kubectl top pod` read it through another
//! member; `kubectl autoscale` creates an autoscaler that scales a Deployment up while its pods
//! are busy and, once their usage drops (annotations changed on the running pods), down again
//! after the (shortened) stabilization window.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::eventually;
use support::kubectl::Kubectl;
use support::processes::{Cluster, keel_binary};

struct AgentProcess(Child);

impl AgentProcess {
    fn start(dir: &std::path::Path, servers: &[String]) -> AgentProcess {
        let log = std::fs::File::create(dir.join("agent.log")).expect("agent log");
        let child = Command::new(keel_binary())
            .args(["agent", "--name", "sim", "--simulate", "2", "--server", &servers.join(",")])
            .args(["--data-dir", &dir.join("agent").display().to_string()])
            .args(["--heartbeat-interval", "1s", "--node-lease-duration", "10s", "--metric-resolution", "1s"])
            .env("KEEL_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn keel agent");
        AgentProcess(child)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      # Each container uses 400m of its 200m request: 200%, four times the target of 50%.
      annotations: {simulate.keel.dev/cpu-millicores: "400", simulate.keel.dev/memory-bytes: "67108864"}
    spec:
      containers:
      - name: app
        image: busybox:1.36
        resources: {requests: {cpu: 200m, memory: 128Mi}}
"#;

/// Rows of a `kubectl top` table, header left out, as columns.
fn rows(output: &str) -> Vec<Vec<String>> {
    output.lines().skip(1).map(|l| l.split_whitespace().map(String::from).collect()).collect()
}

/// Millicores from kubectl top's CPU column (`400m`).
fn millicores(cell: &str) -> i64 {
    cell.trim_end_matches('m').parse().unwrap_or(-1)
}

fn replicas(k: &Kubectl) -> Option<i64> {
    k.json(&["get", "deployment", "web"])["spec"]["replicas"].as_i64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_top_and_the_autoscaler_follow_pod_usage() {
    support::init_logging();
    let flags =
        ["--horizontal-pod-autoscaler-sync-period", "1s", "--horizontal-pod-autoscaler-downscale-stabilization", "5s"];
    let cluster = Cluster::start(3, &flags).await;
    let apis: Vec<String> = cluster.members.iter().map(|m| m.api.clone()).collect();
    let work = cluster.dir().join("kubectl");
    std::fs::create_dir_all(&work).expect("work dir");
    // The agent streams to the first member; kubectl asks the last.
    let _agent = AgentProcess::start(cluster.dir(), &apis[..1]);
    let k = Kubectl::new(&work, &apis[2]);

    eventually(Duration::from_secs(30), "two Ready simulated nodes", || async {
        let nodes = k.json(&["get", "nodes", "-l", "type=simulated"]);
        let ready = nodes["items"].as_array()?.iter().filter(|n| {
            n["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        });
        (ready.count() == 2).then_some(())
    })
    .await;

    // Discovery lists metrics.k8s.io, as kubectl top checks before asking.
    let resources = k.ok(&["api-resources", "--api-group=metrics.k8s.io"]);
    assert!(resources.contains("PodMetrics") && resources.contains("NodeMetrics"), "{resources}");

    k.write("web.yaml", DEPLOYMENT);
    k.ok(&["apply", "-f", &work.join("web.yaml").display().to_string()]);

    // kubectl top, through a member the agent does not stream to.
    let pod_row = eventually(Duration::from_secs(60), "kubectl top pod shows the pod's usage", || async {
        let out = k.run(&["top", "pod", "-l", "app=web"]);
        let rows = rows(&String::from_utf8_lossy(&out.stdout));
        (out.status.success() && rows.len() == 1 && rows[0].get(1).is_some_and(|cpu| cpu != "0m"))
            .then(|| rows[0].clone())
    })
    .await;
    // A rate of two samples: 400m give or take the rounding of a nanosecond.
    assert!((399..=401).contains(&millicores(&pod_row[1])) && pod_row[2] == "64Mi", "{pod_row:?}");
    let containers = k.ok(&["top", "pod", "-l", "app=web", "--containers"]);
    assert!(containers.contains(" app ") && containers.contains("64Mi"), "{containers}");
    let nodes = eventually(Duration::from_secs(30), "kubectl top node shows the nodes' usage", || async {
        let out = k.run(&["top", "node", "-l", "type=simulated"]);
        let rows = rows(&String::from_utf8_lossy(&out.stdout));
        let busy = rows.iter().any(|r| (399..=401).contains(&millicores(&r[1])));
        (out.status.success() && rows.len() == 2 && busy).then_some(rows)
    })
    .await;
    assert!(nodes.iter().all(|r| r.len() == 5 && r[2].ends_with('%')), "{nodes:?}");
    let raw = k.ok(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods"]);
    let metrics: serde_json::Value = serde_json::from_str(&raw).expect("a PodMetricsList");
    assert_eq!(metrics["kind"], "PodMetricsList", "{metrics}");
    assert_eq!(metrics["items"][0]["metadata"]["labels"]["app"], "web", "{metrics}");

    // kubectl autoscale: up to the maximum while every pod is at 200% of its request.
    k.ok(&["autoscale", "deployment", "web", "--cpu-percent=50", "--min=1", "--max=5"]);
    eventually(Duration::from_secs(90), "the Deployment scaled up to its maximum", || async {
        (replicas(&k) == Some(5)).then_some(())
    })
    .await;
    let events = k.json(&["get", "events", "--field-selector", "reason=SuccessfulRescale"]);
    let messages: Vec<&str> =
        events["items"].as_array().expect("items").iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(
        messages.contains(&"New size: 4; reason: cpu resource utilization (percentage of request) above target"),
        "{messages:?}"
    );
    // kubectl 1.32 creates an autoscaling/v1 object; its status comes from the controller.
    let hpa = eventually(Duration::from_secs(30), "the autoscaler's status", || async {
        let hpa = k.json(&["get", "horizontalpodautoscalers.v1.autoscaling", "web"]);
        (hpa["status"]["desiredReplicas"] == 5 && hpa["status"]["currentCPUUtilizationPercentage"].as_i64()? >= 150)
            .then_some(hpa)
    })
    .await;
    assert!(hpa["status"]["lastScaleTime"].is_string(), "{hpa}");
    // The API stores one autoscaler and serves it in both versions: `kubectl get hpa` asks
    // for autoscaling/v2 and sees kubectl's v1 object as a cpu Utilization metric.
    let v2 = k.json(&["get", "hpa", "web"]);
    assert_eq!(v2["apiVersion"], "autoscaling/v2", "{v2}");
    assert_eq!(v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 50, "{v2}");
    assert_eq!(v2["status"]["desiredReplicas"], 5, "{v2}");
    // REPLICAS is the status's currentReplicas, which follows the Deployment's pods a sync
    // period behind the scale-up.
    let (table, row) = eventually(Duration::from_secs(30), "the table's REPLICAS at 5", || async {
        let table = k.ok(&["get", "hpa", "web"]);
        let row = rows(&table).into_iter().next()?;
        (row.get(6).map(String::as_str) == Some("5")).then_some((table, row))
    })
    .await;
    assert_eq!(row.get(1).map(String::as_str), Some("Deployment/web"), "{table}");
    assert!(row.get(3).is_some_and(|t| t.ends_with("%/50%")), "TARGETS as `cpu: N%/50%`: {table}");
    assert_eq!(row.get(4..7), Some(&["1", "5", "5"].map(String::from)[..]), "MINPODS MAXPODS REPLICAS: {table}");

    // behavior, written through v2: scale down by at most 2 pods per 10 minutes.
    let behavior = r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":1,"policies":[{"type":"Pods","value":2,"periodSeconds":600}]}}}}"#;
    k.ok(&["patch", "hpa", "web", "--type", "merge", "-p", behavior]);
    // A v1 client sees it in kube's round-trip annotation, and its own writes keep it.
    let v1 = k.json(&["get", "horizontalpodautoscalers.v1.autoscaling", "web"]);
    let annotation = v1["metadata"]["annotations"]["autoscaling.alpha.kubernetes.io/behavior"].as_str().unwrap_or("");
    assert!(annotation.contains("\"periodSeconds\":600"), "{v1}");
    k.ok(&["annotate", "horizontalpodautoscalers.v1.autoscaling", "web", "team=shop"]);
    let v2 = k.json(&["get", "hpa", "web"]);
    assert_eq!(v2["metadata"]["annotations"]["team"], "shop", "{v2}");
    assert_eq!(v2["spec"]["behavior"]["scaleDown"]["policies"][0]["periodSeconds"], 600, "{v2}");
    assert_eq!(v2["spec"]["behavior"]["scaleUp"]["selectPolicy"], "Max", "defaults fill the rest: {v2}");
    // A v1 client replacing the object without the round-trip annotations keeps the stored
    // status (conditions and current metrics) and, having said nothing of it, the behavior
    // goes, as in kube.
    let mut plain_v1 = k.json(&["get", "horizontalpodautoscalers.v1.autoscaling", "web"]);
    plain_v1["metadata"]["annotations"] = serde_json::json!({"team": "shop"});
    k.write("plain-v1.json", &plain_v1.to_string());
    k.ok(&["replace", "-f", &work.join("plain-v1.json").display().to_string()]);
    let v2 = k.json(&["get", "hpa", "web"]);
    assert!(v2["status"]["conditions"].as_array().is_some_and(|c| !c.is_empty()), "{v2}");
    assert!(v2["status"]["currentMetrics"].as_array().is_some_and(|c| !c.is_empty()), "{v2}");
    assert!(v2["spec"].get("behavior").is_none(), "{v2}");
    k.ok(&["patch", "hpa", "web", "--type", "merge", "-p", behavior]);
    eventually(Duration::from_secs(60), "five pods reported by kubectl top", || async {
        let out = k.run(&["top", "pod", "-l", "app=web"]);
        (rows(&String::from_utf8_lossy(&out.stdout)).len() == 5).then_some(())
    })
    .await;

    // A v2 autoscaler with an AverageValue memory target beside it reports its metric too
    // (64Mi a pod against 16Mi: it also wants the maximum, so the two do not pull apart).
    k.write(
        "memory-hpa.yaml",
        r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web-memory}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 1
  maxReplicas: 5
  metrics:
  - type: Resource
    resource: {name: memory, target: {type: AverageValue, averageValue: 16Mi}}
"#,
    );
    k.ok(&["apply", "-f", &work.join("memory-hpa.yaml").display().to_string()]);
    let v2 = eventually(Duration::from_secs(30), "the v2 autoscaler's status", || async {
        let hpa = k.json(&["get", "hpa", "web-memory"]);
        let metric = hpa["status"]["currentMetrics"].as_array()?.first()?.clone();
        let active = hpa["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "ScalingActive" && c["status"] == "True");
        active.then_some(metric)
    })
    .await;
    assert_eq!(v2["resource"]["name"], "memory", "{v2}");
    assert_eq!(v2["resource"]["current"]["averageValue"], "67108864", "{v2}");
    k.ok(&["delete", "hpa", "web-memory"]);

    // The load drops: every running pod now uses 20m (10% of its request). After the
    // stabilization window the autoscaler scales down to what that needs: one pod.
    k.ok(&["annotate", "pods", "-l", "app=web", "--overwrite", "simulate.keel.dev/cpu-millicores=20"]);
    eventually(Duration::from_secs(30), "kubectl top shows the lower usage", || async {
        let out = k.run(&["top", "pod", "-l", "app=web"]);
        let rows = rows(&String::from_utf8_lossy(&out.stdout));
        // The scale-down may already have begun: whatever pods are left show the new figure.
        (!rows.is_empty() && rows.iter().all(|r| (19..=21).contains(&millicores(&r[1])))).then_some(())
    })
    .await;
    // The policy lets 5 go to 3 and no further within its period.
    eventually(Duration::from_secs(60), "the scale-down held to 2 pods per period", || async {
        let hpa = k.json(&["get", "hpa", "web"]);
        let limited = hpa["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "ScalingLimited" && c["status"] == "True" && c["reason"] == "ScaleDownLimit");
        (limited && hpa["status"]["desiredReplicas"] == 3 && replicas(&k) == Some(3)).then_some(())
    })
    .await;
    k.ok(&["patch", "hpa", "web", "--type", "json", "-p", r#"[{"op":"remove","path":"/spec/behavior"}]"#]);
    eventually(Duration::from_secs(60), "the Deployment scaled down to one pod", || async {
        (replicas(&k) == Some(1)).then_some(())
    })
    .await;
    let events = k.json(&["get", "events", "--field-selector", "reason=SuccessfulRescale"]);
    let messages: Vec<&str> =
        events["items"].as_array().expect("items").iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(messages.contains(&"New size: 1; reason: All metrics below target"), "{messages:?}");
}
