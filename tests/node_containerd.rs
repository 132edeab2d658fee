//! The node agent with real containers: a `keel agent` process starts its own containerd
//! (bridge and pod CIDR of its own, images from the archives `ops/images/build.sh` makes, no
//! registry) and streams to a three-member cluster of `keel server` processes. Driven with
//! the real kubectl: a Deployment of busybox pods becomes Running and Ready; init containers
//! run in order before the app container; env from a ConfigMap and the downward API carries
//! the right values (read from the container's log file on the node); ConfigMap, Secret and
//! emptyDir volumes carry their content, shared between containers and updated in place; a
//! crashing container
//! restarts with back-off; deletion sends SIGTERM and waits for the process within the
//! grace period; and the member the agent streams to is SIGKILLed while the pods keep their
//! containers. Logs, exec (with stdin that ends), `kubectl cp` both ways and port-forward (over
//! kubectl's WebSocket tunnel and bare SPDY) reach the pod through any member. A second
//! cluster and agent run probes: a failing exec liveness probe restarts
//! its container (Unhealthy and Killing Events, the probe's own grace period), an httpGet
//! readiness probe against busybox's httpd gates Ready both ways, and a startup probe holds
//! a liveness probe back until it succeeds (and restarts a container that never starts).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::eventually;
use support::kubectl::Kubectl;
use support::processes::{Cluster, keel_binary};

const EVICTION_HARD_FLAG: &str = "--eviction-hard";
const LENIENT_DISK: &str = "nodefs.available<1%,nodefs.inodesFree<1%";

struct Agent {
    child: Child,
    log: PathBuf,
    data_dir: PathBuf,
    bridge: String,
}

impl Agent {
    /// `tag` tells apart the agents of one test process (bridge and pod CIDR).
    fn start(dir: &Path, servers: &[String], tag: u32) -> Agent {
        Agent::start_with(dir, servers, tag, &[])
    }

    fn start_with(dir: &Path, servers: &[String], tag: u32, extra: &[&str]) -> Agent {
        let images = dir.join("images");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/images/build.sh");
        let built = Command::new(&script).arg(&images).output().expect("run ops/images/build.sh");
        assert!(built.status.success(), "ops/images/build.sh: {}", String::from_utf8_lossy(&built.stderr));
        // A bridge and a /24 of this test process's own, so tests can run side by side.
        let pid = std::process::id() % 32768;
        let bridge = format!("kn{pid}t{tag}");
        let cidr = format!("10.{}.{}.0/24", (64 + (pid >> 8) + 128 * (tag % 2)) % 256, pid & 0xff);
        let data_dir = dir.join("agent");
        let log = dir.join("agent.log");
        let file = std::fs::File::create(&log).expect("agent log");
        let child = Command::new(keel_binary())
            .args(["agent", "--name", "worker-1", "--server", &servers.join(",")])
            .args(["--data-dir", &data_dir.display().to_string(), "--images-dir", &images.display().to_string()])
            .args(["--pod-cidr", &cidr, "--cni-bridge", &bridge])
            .args(["--heartbeat-interval", "1s", "--node-lease-duration", "10s", "--crash-loop-backoff", "1s"])
            // Shared test machines run with little free disk; kubelet's 10% would taint the
            // node and stop every pod.
            .args(if extra.contains(&"--eviction-hard") { &[][..] } else { &[EVICTION_HARD_FLAG, LENIENT_DISK][..] })
            .args(extra)
            .env("KEEL_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn keel agent");
        Agent { child, log, data_dir, bridge }
    }

    /// The member the node's stream last registered with, from the agent's log.
    fn serving_member(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .rev()
            .filter(|l| l.contains("registered") && l.contains("serving_member="))
            .filter_map(|l| l.split("serving_member=").nth(1))
            .find_map(|rest| rest.split_whitespace().next())
            .map(String::from)
    }

    /// The log of the `attempt`th instance of a pod's container, as kubelet lays it out.
    fn container_log(&self, pod_uid: &str, container: &str, attempt: u32) -> String {
        let pods = self.data_dir.join("pods");
        let Ok(dirs) = std::fs::read_dir(&pods) else { return String::new() };
        for dir in dirs.flatten() {
            if dir.file_name().to_string_lossy().ends_with(&format!("_{pod_uid}")) {
                return std::fs::read_to_string(dir.path().join(container).join(format!("{attempt}.log")))
                    .unwrap_or_default();
            }
        }
        String::new()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        support::containerd::tear_down(&self.data_dir, &self.bridge);
    }
}

async fn wait_for_node(k: &Kubectl) {
    eventually(Duration::from_secs(90), "worker-1 Ready", || async {
        let out = k.run(&["get", "node", "worker-1", "-o", "json"]);
        let node = serde_json::from_slice::<Value>(&out.stdout).ok()?;
        node["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
            .then_some(())
    })
    .await;
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_containers_run_restart_terminate_and_survive_the_loss_of_their_member() {
    support::init_logging();
    let mut cluster = Cluster::start(3, &[]).await;
    let apis: Vec<String> = cluster.members.iter().map(|m| m.api.clone()).collect();
    let work = cluster.dir().join("kubectl");
    std::fs::create_dir_all(&work).expect("work dir");
    let agent = Agent::start(cluster.dir(), &apis, 0);
    let k = Kubectl::new(&work, &apis[0]);
    wait_for_node(&k).await;
    let node = k.json(&["get", "node", "worker-1"]);
    assert!(node["status"]["nodeInfo"]["containerRuntimeVersion"].as_str().unwrap_or("").starts_with("containerd://"));

    // A Deployment of busybox pods.
    // (Manifests rather than `kubectl … -- command`: the harness appends its own flags.)
    let deployment = k.write(
        "web.yaml",
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: busybox, image: keel.local/busybox:1.36, command: ["sleep", "3600"]}]
"#,
    );
    k.ok(&["apply", "-f", &deployment]);
    k.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    let web = k.json(&["get", "pods", "-l", "app=web"]);
    let web = web["items"].as_array().expect("items").clone();
    assert_eq!(web.len(), 2);
    assert!(web.iter().all(|p| p["status"]["phase"] == "Running" && ready(p)), "{web:?}");
    assert!(web.iter().all(|p| {
        p["status"]["containerStatuses"][0]["containerID"].as_str().unwrap_or("").starts_with("containerd://")
    }));

    // Init containers in order, then the app container with its environment; SIGTERM on
    // deletion reaches the process, which ends within the grace period.
    k.ok(&["create", "configmap", "settings", "--from-literal=color=blue"]);
    let pod = k.write(
        "hello.yaml",
        r#"apiVersion: v1
kind: Pod
metadata: {name: hello, labels: {app: hello}}
spec:
  terminationGracePeriodSeconds: 20
  initContainers:
  - {name: one, image: keel.local/busybox:1.36, command: ["sh", "-c", "echo first"]}
  - {name: two, image: keel.local/busybox:1.36, command: ["sh", "-c", "echo second"]}
  containers:
  - name: main
    image: keel.local/busybox:1.36
    command: ["sh", "-c", "echo color=$COLOR pod=$POD; trap 'echo terminated; exit 0' TERM; while true; do sleep 0.2; done"]
    env:
    - {name: COLOR, valueFrom: {configMapKeyRef: {name: settings, key: color}}}
    - {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
"#,
    );
    k.ok(&["apply", "-f", &pod]);
    k.ok(&["wait", "--for=condition=Ready", "pod/hello", "--timeout=90s"]);
    let hello = k.json(&["get", "pod", "hello"]);
    let uid = hello["metadata"]["uid"].as_str().expect("uid").to_string();
    let inits = hello["status"]["initContainerStatuses"].as_array().expect("init statuses");
    assert!(inits.iter().all(|s| s["state"]["terminated"]["exitCode"] == 0), "{inits:?}");
    // The runtime stamps each log line: the second init container wrote after the first.
    let stamp = |log: &str| -> jiff::Timestamp {
        log.split_whitespace().next().and_then(|t| t.parse().ok()).expect("a stamped CRI log line")
    };
    let (one, two) = (agent.container_log(&uid, "one", 0), agent.container_log(&uid, "two", 0));
    assert!(one.contains("first") && two.contains("second"), "{one:?} {two:?}");
    assert!(stamp(&one) < stamp(&two), "init containers out of order: {one:?} {two:?}");
    let main = eventually(Duration::from_secs(10), "main's first line", || async {
        let log = agent.container_log(&uid, "main", 0);
        log.contains("color=").then_some(log)
    })
    .await;
    assert!(main.contains("color=blue pod=hello"), "{main:?}");
    let started = Instant::now();
    k.ok(&["delete", "pod", "hello", "--wait=true", "--timeout=60s"]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "deletion waited the whole grace period: {:?}",
        started.elapsed()
    );

    // ConfigMap and Secret volumes carry their content, an emptyDir is shared by two
    // containers, and a changed ConfigMap reaches the mounted file.
    k.ok(&["create", "secret", "generic", "creds", "--from-literal=password=hunter2"]);
    let vols = k.write(
        "vols.yaml",
        r#"apiVersion: v1
kind: Pod
metadata: {name: vols}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {name: cfg, configMap: {name: settings}}
  - {name: creds, secret: {secretName: creds}}
  - {name: shared, emptyDir: {}}
  containers:
  - name: writer
    image: keel.local/busybox:1.36
    command: ["sh", "-c", "echo from-writer > /shared/note; sleep 3600"]
    volumeMounts: [{name: shared, mountPath: /shared}]
  - name: reader
    image: keel.local/busybox:1.36
    command: ["sh", "-c", "while true; do echo color=$(cat /cfg/color) password=$(cat /creds/password) note=$(cat /shared/note); sleep 0.3; done"]
    volumeMounts:
    - {name: cfg, mountPath: /cfg}
    - {name: creds, mountPath: /creds, readOnly: true}
    - {name: shared, mountPath: /shared}
"#,
    );
    k.ok(&["apply", "-f", &vols]);
    k.ok(&["wait", "--for=condition=Ready", "pod/vols", "--timeout=90s"]);
    let vols_uid = k.ok(&["get", "pod", "vols", "-o", "jsonpath={.metadata.uid}"]);
    eventually(Duration::from_secs(20), "the reader seeing every volume", || async {
        agent
            .container_log(&vols_uid, "reader", 0)
            .contains("color=blue password=hunter2 note=from-writer")
            .then_some(())
    })
    .await;
    k.ok(&["patch", "configmap", "settings", "-p", r#"{"data":{"color":"green"}}"#]);
    eventually(Duration::from_secs(30), "the changed ConfigMap in the mounted file", || async {
        agent.container_log(&vols_uid, "reader", 0).contains("color=green").then_some(())
    })
    .await;
    k.ok(&["delete", "pod", "vols", "--wait=true", "--timeout=60s"]);

    // A crashing container restarts, with back-off.
    let crash = k.write(
        "crash.yaml",
        r#"apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  containers: [{name: c, image: keel.local/busybox:1.36, command: ["sh", "-c", "echo boom; exit 4"]}]
"#,
    );
    k.ok(&["apply", "-f", &crash]);
    eventually(Duration::from_secs(90), "two restarts and CrashLoopBackOff", || async {
        let pod = k.json(&["get", "pod", "crash"]);
        let status = &pod["status"]["containerStatuses"][0];
        (status["restartCount"].as_i64()? >= 2 && status["lastState"]["terminated"]["exitCode"] == 4).then_some(())
    })
    .await;

    // The member of the node's stream dies; the stream moves and the pods are untouched.
    let containers = |k: &Kubectl| -> Vec<(String, String, i64)> {
        let pods = k.json(&["get", "pods", "-l", "app=web"]);
        let mut out: Vec<(String, String, i64)> = pods["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|p| {
                let c = &p["status"]["containerStatuses"][0];
                (
                    p["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                    c["containerID"].as_str().unwrap_or_default().to_string(),
                    c["restartCount"].as_i64().unwrap_or(-1),
                )
            })
            .collect();
        out.sort();
        out
    };
    let before = containers(&k);
    let target = agent.serving_member().expect("the agent's member in its log");
    let index = cluster.members.iter().position(|m| m.name == target).expect("a member of this cluster");
    cluster.members[index].kill();
    let k = Kubectl::new(&work, &cluster.members[(index + 1) % 3].api);
    eventually(Duration::from_secs(30), "the stream on another member", || async {
        agent.serving_member().filter(|m| *m != target).map(|_| ())
    })
    .await;
    cluster.wait_for_leader().await;
    k.ok(&["scale", "deployment/web", "--replicas=3"]);
    k.ok(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    let after = containers(&k);
    for pod in &before {
        assert!(after.contains(pod), "{pod:?} was disturbed by the failover: {after:?}");
    }
    cluster.members[index].start();
}

/// `kubectl logs` and `kubectl exec` reach the containers through the agent's stream, from
/// every member: the one the agent streams to serves them, the others pass them on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_exec_cp_and_port_forward_travel_over_the_node_stream_from_any_member() {
    support::init_logging();
    let cluster = Cluster::start(3, &[]).await;
    let apis: Vec<String> = cluster.members.iter().map(|m| m.api.clone()).collect();
    let _agent = Agent::start(cluster.dir(), &apis, 0);
    let kubectls: Vec<Kubectl> = apis
        .iter()
        .enumerate()
        .map(|(i, api)| {
            let work = cluster.dir().join(format!("kubectl-{i}"));
            std::fs::create_dir_all(&work).expect("work dir");
            Kubectl::new(&work, api)
        })
        .collect();
    let k = &kubectls[0];
    let pods = k.write(
        "pods.yaml",
        r#"apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  containers:
  - name: main
    image: keel.local/busybox:1.36
    command: ["sh", "-c", "for i in 1 2 3 4 5; do echo line $i; done; sleep 0.5; echo oops >&2; exec sleep 3600"]
  - name: ticker
    image: keel.local/busybox:1.36
    command: ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"]
  - name: web
    image: keel.local/busybox:1.36
    command: ["sh", "-c", "mkdir -p /www && echo served-by-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"]
---
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers:
  - {name: main, image: keel.local/busybox:1.36, command: ["sh", "-c", "echo run; exit 1"]}
"#,
    );
    k.ok(&["apply", "-f", &pods]);
    k.ok(&["wait", "--for=condition=Ready", "pod/talker", "--timeout=120s"]);

    // The whole log, a tail, time stamps, and from every member the same.
    let whole = eventually(Duration::from_secs(10), "talker's log", || async {
        let out = k.ok(&["logs", "talker", "-c", "main"]);
        out.contains("oops").then_some(out)
    })
    .await;
    assert_eq!(whole, "line 1\nline 2\nline 3\nline 4\nline 5\noops\n");
    for other in &kubectls[1..] {
        assert_eq!(other.ok(&["logs", "talker", "-c", "main"]), whole);
    }
    assert_eq!(k.ok(&["logs", "talker", "-c", "main", "--tail=2"]), "line 5\noops\n");
    assert_eq!(k.ok(&["logs", "talker", "-c", "main", "--limit-bytes=9"]), "line 1\nli");
    let stamped = k.ok(&["logs", "talker", "-c", "main", "--timestamps"]);
    for line in stamped.lines() {
        let (time, text) = line.split_once(' ').expect("a stamp and text");
        assert!(time.parse::<jiff::Timestamp>().is_ok() && text.len() >= 4, "{line:?}");
    }
    // kubectl picks a pod's container itself only when it has one.
    let no_container = k.fails(&["logs", "talker", "-c", "nope"]);
    assert!(no_container.contains("container nope is not valid for pod talker"), "{no_container}");
    let missing_pod = k.fails(&["logs", "nosuch"]);
    assert!(missing_pod.contains(r#"pods "nosuch" not found"#), "{missing_pod}");

    // -f streams new lines as the container writes them, through a member that passes it on.
    for kubectl in &kubectls {
        let mut follow = kubectl.command(&["logs", "-f", "talker", "-c", "ticker", "--tail=1"]);
        let mut child = follow.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("kubectl logs -f");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            let mut lines = Vec::new();
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.push(line);
                if lines.len() == 6 {
                    break;
                }
            }
            lines
        });
        let started = Instant::now();
        while !reader.is_finished() && started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        let lines = reader.join().expect("reader");
        assert_eq!(lines.len(), 6, "kubectl logs -f gave {lines:?}");
        let numbers: Vec<u64> =
            lines.iter().map(|l| l.strip_prefix("tick ").and_then(|n| n.parse().ok()).expect("a tick")).collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    }

    // --previous: the log of the container before the current one.
    eventually(Duration::from_secs(60), "crasher restarted", || async {
        let pod = k.json(&["get", "pod", "crasher"]);
        (pod["status"]["containerStatuses"][0]["restartCount"].as_i64().unwrap_or(0) >= 1).then_some(())
    })
    .await;
    assert_eq!(kubectls[1].ok(&["logs", "crasher", "--previous"]), "run\n");

    // exec: output, and the command's exit code as kubectl's own, from every member.
    for kubectl in &kubectls {
        assert_eq!(kubectl.ok(&["exec", "talker", "-c", "main", "--", "cat", "/etc/hostname"]).trim(), "talker");
        let status = kubectl.run(&["exec", "talker", "-c", "main", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
        assert_eq!(status.status.code(), Some(3), "{status:?}");
        assert_eq!(String::from_utf8_lossy(&status.stdout), "out\n");
        assert!(String::from_utf8_lossy(&status.stderr).contains("err"), "{status:?}");
    }
    // kubectl cp out of a pod: tar in the container, over exec.
    let copied = kubectls[1].dir.join("hostname");
    kubectls[1].ok(&["cp", "-c", "main", "talker:/etc/hostname", &copied.display().to_string()]);
    assert_eq!(std::fs::read_to_string(&copied).expect("copied file").trim(), "talker");
    let missing = k.run(&["exec", "talker", "-c", "main", "--", "/no/such/program"]);
    assert!(!missing.status.success(), "{missing:?}");

    // The end of stdin reaches the process (a FIN on the runtime's stdin stream): piped input
    // and `kubectl cp` into a pod finish instead of hanging.
    for kubectl in &kubectls {
        let out = with_input(
            kubectl,
            &["exec", "-i", "talker", "-c", "main", "--", "sh", "-c", "wc -l; echo done"],
            b"a\nb\nc\n",
        );
        assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["3", "done"], "{out:?}");
    }
    let upload = kubectls[2].dir.join("upload.txt");
    std::fs::write(&upload, "carried in by kubectl cp\n").expect("write upload");
    kubectls[2].ok(&["cp", "-c", "main", &upload.display().to_string(), "talker:/tmp/upload.txt"]);
    assert_eq!(k.ok(&["exec", "talker", "-c", "main", "--", "cat", "/tmp/upload.txt"]), "carried in by kubectl cp\n");

    // port-forward, over the WebSocket tunnel kubectl 1.32 uses and over bare SPDY, through
    // every member: several connections per session each reach busybox httpd in the pod.
    for kubectl in &kubectls {
        for websockets in [true, false] {
            let mut forward = PortForward::start(kubectl, "pod/talker", 8080, websockets);
            for _ in 0..3 {
                let page = forward.get("/index.html");
                assert!(page.starts_with("HTTP/1.") && page.ends_with("served-by-talker\n"), "{page:?}");
            }
            // Nothing listens on 8081: kubectl prints the agent's error from the error stream.
            let mut nothing = PortForward::start(kubectl, "pod/talker", 8081, websockets);
            let _ = nothing.try_get("/");
            let stderr = nothing.stop();
            assert!(stderr.contains("error forwarding port 8081 to pod talker"), "{stderr}");
            let stderr = forward.stop();
            assert!(!stderr.contains("error"), "{stderr}");
        }
    }
    let pending = k.fails(&["port-forward", "pod/nosuch", ":80"]);
    assert!(pending.contains(r#"pods "nosuch" not found"#), "{pending}");
    // A client library's port-forward (kube-rs): kubelet's WebSocket channel protocol with a
    // `ports` query, through a member that passes it on or serves it.
    for api in &apis {
        let mut config = kube::Config::new(format!("http://{api}").parse().expect("api url"));
        config.default_namespace = "default".into();
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::default_namespaced(kube::Client::try_from(config).expect("kube client"));
        let mut forwarder = pods.portforward("talker", &[8080]).await.expect("kube-rs portforward");
        let mut stream = forwarder.take_stream(8080).expect("the stream of port 8080");
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        stream.write_all(b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n").await.expect("send the request");
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response))
            .await
            .expect("the response in time")
            .expect("read the response");
        let response = String::from_utf8_lossy(&response);
        assert!(response.ends_with("served-by-talker\n"), "{response:?}");
        drop(stream);
        // The member closes the WebSocket once the pod's side is done (as kubelet does), and
        // kube-rs 2.0 then sends a close of its own, which its WebSocket refuses.
        match tokio::time::timeout(Duration::from_secs(30), forwarder.join()).await.expect("the session ends") {
            Ok(()) => {}
            Err(e) if format!("{e:?}").contains("SendAfterClosing") => {}
            Err(e) => panic!("kube-rs port-forward through {api}: {e:?}"),
        }
    }

    // Interactive with a terminal (`script` gives kubectl one): stdin reaches the container's
    // TTY and its output comes back.
    let kubectl = &kubectls[2];
    let line = format!(
        "kubectl --cache-dir {} exec -it talker -c main -- sh -c 'tty; read word; echo got-$word'",
        kubectl.cache.display()
    );
    let mut script = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("KUBECONFIG", &kubectl.kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script");
    let mut stdin = script.stdin.take().expect("stdin");
    std::thread::sleep(Duration::from_secs(3));
    use std::io::Write;
    stdin.write_all(b"hello\n").expect("type");
    let typed = std::thread::spawn(move || {
        // Open until kubectl is surely done: an early end of input would end the session.
        std::thread::sleep(Duration::from_secs(5));
        drop(stdin);
    });
    let out = script.wait_with_output().expect("script ran");
    let _ = typed.join();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/dev/pts/") && text.contains("got-hello"), "{out:?}");
    // A projected serviceAccountToken source: the agent asks its member for a token bound to
    // the pod, and the token authenticates as the pod's service account.
    let client = k.write(
        "client.yaml",
        r#"apiVersion: v1
kind: Pod
metadata: {name: api-client}
spec:
  containers:
  - name: main
    image: keel.local/busybox:1.36
    command: ["sleep", "3600"]
    volumeMounts: [{name: api, mountPath: /var/run/secrets/keel, readOnly: true}]
  volumes:
  - name: api
    projected:
      sources:
      - serviceAccountToken: {path: token, expirationSeconds: 3600}
      - downwardAPI: {items: [{path: namespace, fieldRef: {fieldPath: metadata.namespace}}]}
"#,
    );
    k.ok(&["apply", "-f", &client]);
    k.ok(&["wait", "--for=condition=Ready", "pod/api-client", "--timeout=90s"]);
    let token = k.ok(&["exec", "api-client", "--", "cat", "/var/run/secrets/keel/token"]);
    assert_eq!(token.split('.').count(), 3, "a JWT: {token:?}");
    assert_eq!(k.ok(&["exec", "api-client", "--", "cat", "/var/run/secrets/keel/namespace"]), "default");
    let review = k.write(
        "review.json",
        &serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})
            .to_string(),
    );
    let reviewed = k.json(&["create", "-f", &review]);
    assert_eq!(reviewed["status"]["authenticated"], true, "{reviewed}");
    assert_eq!(reviewed["status"]["user"]["username"], "system:serviceaccount:default:default", "{reviewed}");
    assert_eq!(reviewed["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"][0], "api-client");
}

/// A node short of memory by `--eviction-hard` says so: MemoryPressure turns True, the node
/// lifecycle controller taints it `memory-pressure:NoSchedule`, and a pod that does not
/// tolerate the taint is not scheduled there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_under_memory_pressure_is_tainted_and_gets_no_new_pods() {
    support::init_logging();
    let cluster = Cluster::start(1, &[]).await;
    let apis: Vec<String> = cluster.members.iter().map(|m| m.api.clone()).collect();
    let _agent = Agent::start_with(
        cluster.dir(),
        &apis,
        0,
        &[
            EVICTION_HARD_FLAG,
            &format!("memory.available<1000Ti,{LENIENT_DISK}"),
            "--node-status-update-frequency",
            "1s",
        ],
    );
    let work = cluster.dir().join("kubectl");
    std::fs::create_dir_all(&work).expect("work dir");
    let k = Kubectl::new(&work, &apis[0]);
    let node = eventually(Duration::from_secs(90), "MemoryPressure and its taint", || async {
        let out = k.run(&["get", "node", "worker-1", "-o", "json"]);
        let node = serde_json::from_slice::<Value>(&out.stdout).ok()?;
        let pressure = node["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "MemoryPressure" && c["status"] == "True");
        let tainted = node["spec"]["taints"]
            .as_array()?
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/memory-pressure" && t["effect"] == "NoSchedule");
        (pressure && tainted).then_some(node)
    })
    .await;
    let condition = node["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "MemoryPressure")
        .expect("MemoryPressure")
        .clone();
    assert_eq!(condition["reason"], "KubeletHasInsufficientMemory", "{condition}");
    assert!(condition["message"].as_str().unwrap_or("").contains("memory.available is"), "{condition}");

    let pod = k.write(
        "pod.yaml",
        r#"apiVersion: v1
kind: Pod
metadata: {name: squeezed}
spec:
  containers: [{name: main, image: keel.local/busybox:1.36, command: ["sleep", "3600"]}]
"#,
    );
    k.ok(&["apply", "-f", &pod]);
    eventually(Duration::from_secs(30), "FailedScheduling for the taint", || async {
        let out = k.ok(&["get", "events", "--field-selector", "involvedObject.name=squeezed,reason=FailedScheduling"]);
        out.contains("memory-pressure").then_some(())
    })
    .await;
    let pod = k.json(&["get", "pod", "squeezed"]);
    assert!(pod["spec"]["nodeName"].is_null(), "{pod}");
}

/// A StatefulSet's claim, provisioned by the local-path provisioner, is mounted from its
/// volume's directory on the node; what a pod wrote there is there for its replacement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_volume_outlives_its_pod() {
    support::init_logging();
    let storage = tempfile::Builder::new().prefix("keel-storage-").tempdir().expect("storage dir");
    let storage_flag = storage.path().display().to_string();
    let cluster = Cluster::start(1, &["--default-local-storage-path", &storage_flag]).await;
    let apis: Vec<String> = cluster.members.iter().map(|m| m.api.clone()).collect();
    let _agent = Agent::start(cluster.dir(), &apis, 0);
    let work = cluster.dir().join("kubectl");
    std::fs::create_dir_all(&work).expect("work dir");
    let k = Kubectl::new(&work, &apis[0]);
    let manifest = k.write(
        "db.yaml",
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 1
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: keel.local/busybox:1.36
        command: ["sh", "-c", "cat /data/born 2>/dev/null; hostname >> /data/born; date +%s%N >> /data/born; exec sleep 3600"]
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
"#,
    );
    k.ok(&["apply", "-f", &manifest]);
    // `kubectl wait` gives up at once on a pod the StatefulSet controller has not made yet.
    eventually(Duration::from_secs(60), "db-0 created", || async { try_json(&k, &["get", "pod", "db-0"]).map(|_| ()) })
        .await;
    k.ok(&["wait", "--for=condition=Ready", "pod/db-0", "--timeout=120s"]);
    let claim = k.json(&["get", "pvc", "data-db-0"]);
    assert_eq!(claim["status"]["phase"], "Bound", "{claim}");
    let volume = claim["spec"]["volumeName"].as_str().expect("bound volume").to_string();
    let first = k.ok(&["exec", "db-0", "--", "cat", "/data/born"]);
    assert_eq!(first.lines().count(), 2, "{first:?}");
    // The data lives in the volume's directory under the provisioner's path.
    let pv = k.json(&["get", "pv", &volume]);
    let host_dir = pv["spec"]["hostPath"]["path"].as_str().expect("a hostPath volume").to_string();
    assert!(host_dir.starts_with(&storage_flag), "{host_dir}");
    assert_eq!(std::fs::read_to_string(Path::new(&host_dir).join("born")).expect("on the node"), first);

    let old_uid = k.json(&["get", "pod", "db-0"])["metadata"]["uid"].clone();
    k.ok(&["delete", "pod", "db-0", "--wait=true", "--timeout=60s"]);
    eventually(Duration::from_secs(120), "db-0 back and Ready", || async {
        let out = k.run(&["get", "pod", "db-0", "-o", "json"]);
        let pod = serde_json::from_slice::<Value>(&out.stdout).ok()?;
        (pod["metadata"]["uid"] != old_uid && ready(&pod)).then_some(())
    })
    .await;
    // The replacement read what the first pod wrote (its log), then added its own lines.
    let log = k.ok(&["logs", "db-0"]);
    assert_eq!(log, first, "the new pod saw {log:?}");
    let second = k.ok(&["exec", "db-0", "--", "cat", "/data/born"]);
    assert!(second.starts_with(&first) && second.lines().count() == 4, "{second:?}");

    // A pod whose claim does not exist waits, saying why.
    let orphan = k.write(
        "orphan.yaml",
        r#"apiVersion: v1
kind: Pod
metadata: {name: orphan}
spec:
  nodeName: worker-1
  containers: [{name: main, image: keel.local/busybox:1.36, command: ["sleep", "3600"]}]
  volumes: [{name: data, persistentVolumeClaim: {claimName: nowhere}}]
"#,
    );
    k.ok(&["apply", "-f", &orphan]);
    eventually(Duration::from_secs(30), "FailedMount for the missing claim", || async {
        let out = k.ok(&["get", "events", "--field-selector", "involvedObject.name=orphan,reason=FailedMount"]);
        out.contains("persistentvolumeclaim \"nowhere\" not found").then_some(())
    })
    .await;
}

/// What `kubectl get … -o json` prints, or None when it fails: a loaded machine can leave
/// the cluster briefly without a quorum, and a poll simply tries again.
/// Runs kubectl with `input` on its stdin, which then ends; its stdout. Fails the test if
/// kubectl does not finish (the end of input never reached the process).
fn with_input(kubectl: &Kubectl, args: &[&str], input: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = kubectl
        .command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kubectl");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write stdin");
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("kubectl status").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("kubectl output");
            panic!("kubectl {args:?} did not finish after its input ended: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("kubectl output");
    assert!(out.status.success(), "kubectl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running `kubectl port-forward` to a free local port.
struct PortForward {
    child: Child,
    local: u16,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl PortForward {
    fn start(kubectl: &Kubectl, target: &str, port: u16, websockets: bool) -> PortForward {
        use std::io::{BufRead as _, Read as _};
        let mut child = kubectl
            .command(&["port-forward", "--address", "127.0.0.1", target, &format!(":{port}")])
            .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", if websockets { "true" } else { "false" })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubectl port-forward");
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr_pipe = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text);
            text
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // "Forwarding from 127.0.0.1:41234 -> 8080"
                let local = line
                    .strip_prefix("Forwarding from 127.0.0.1:")
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|p| p.parse::<u16>().ok());
                if let Some(local) = local {
                    let _ = tx.send(local);
                }
            }
        });
        let Ok(local) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kubectl port-forward {target} :{port} never listened: {}", stderr.join().unwrap_or_default());
        };
        PortForward { child, local, stderr: Some(stderr) }
    }

    /// One HTTP/1.0 request on a new connection: the whole response, or why there is none.
    fn try_get(&self, path: &str) -> Result<String, String> {
        use std::io::{Read as _, Write as _};
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", self.local)).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
        tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: pod\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        tcp.read_to_end(&mut response).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&response).into_owned())
    }

    fn get(&self, path: &str) -> String {
        self.try_get(path).unwrap_or_else(|e| panic!("GET {path} through port-forward: {e}"))
    }

    /// Stops kubectl; what it printed to stderr.
    fn stop(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr.take().and_then(|s| s.join().ok()).unwrap_or_default()
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn try_json(k: &Kubectl, args: &[&str]) -> Option<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = k.run(&all);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Pod `name`, asked for again while the API answers with an error.
async fn get_pod(k: &Kubectl, name: &str) -> Value {
    eventually(Duration::from_secs(30), &format!("pod {name}"), || async { try_json(k, &["get", "pod", name]) }).await
}

/// (reason, message) of the Events about pod `name`.
fn events_of(k: &Kubectl, name: &str) -> Vec<(String, String)> {
    let events = try_json(k, &["get", "events"]).unwrap_or_default();
    events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["name"] == name)
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn has_event(events: &[(String, String)], reason: &str, message: &str) -> bool {
    events.iter().any(|(r, m)| r == reason && m.contains(message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_restart_unhealthy_containers_gate_readiness_and_wait_for_startup() {
    support::init_logging();
    let cluster = Cluster::start(3, &[]).await;
    let apis: Vec<String> = cluster.members.iter().map(|m| m.api.clone()).collect();
    let work = cluster.dir().join("kubectl");
    std::fs::create_dir_all(&work).expect("work dir");
    let agent = Agent::start(cluster.dir(), &apis, 1);
    let k = Kubectl::new(&work, &apis[0]);
    wait_for_node(&k).await;

    // liveness: healthy for 3 s, then its probe fails; the pod's grace period is 30 s but the
    //   probe's is 1 s, so restarts come quickly only if the probe's is the one used.
    // web: busybox's httpd serving an emptyDir the test writes on the node; ready only while
    //   /ready.txt is there.
    // slow: takes 8 s to start; its liveness probe would fail at once before that.
    // never: its startup probe never succeeds.
    let manifests = k.write(
        "probes.yaml",
        r#"apiVersion: v1
kind: Pod
metadata: {name: liveness}
spec:
  terminationGracePeriodSeconds: 30
  containers:
  - name: app
    image: keel.local/busybox:1.36
    command: ["sh", "-c", "touch /tmp/healthy; sleep 3; rm -f /tmp/healthy; sleep 3600"]
    livenessProbe:
      exec: {command: ["cat", "/tmp/healthy"]}
      periodSeconds: 1
      failureThreshold: 2
      terminationGracePeriodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 1
  volumes: [{name: www, emptyDir: {}}]
  containers:
  - name: httpd
    image: keel.local/busybox:1.36
    command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
    ports: [{name: http, containerPort: 8080}]
    volumeMounts: [{name: www, mountPath: /www}]
    readinessProbe:
      httpGet: {path: /ready.txt, port: http}
      periodSeconds: 1
      failureThreshold: 2
---
apiVersion: v1
kind: Pod
metadata: {name: slow}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: keel.local/busybox:1.36
    command: ["sh", "-c", "sleep 8; touch /tmp/started; sleep 3600"]
    startupProbe:
      exec: {command: ["cat", "/tmp/started"]}
      periodSeconds: 1
      failureThreshold: 60
    livenessProbe:
      exec: {command: ["cat", "/tmp/started"]}
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata: {name: never}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: keel.local/busybox:1.36
    command: ["sleep", "3600"]
    startupProbe:
      exec: {command: ["cat", "/tmp/never"]}
      periodSeconds: 1
      failureThreshold: 2
"#,
    );
    k.ok(&["apply", "-f", &manifests]);
    let status = |name: &str| try_json(&k, &["get", "pod", name]).map(|p| p["status"].clone()).unwrap_or_default();

    // slow: running but not started, hence not ready, while its startup probe fails.
    let early = eventually(Duration::from_secs(60), "slow running", || async {
        let s = status("slow");
        s["containerStatuses"][0]["state"]["running"].is_object().then_some(s)
    })
    .await;
    let app = &early["containerStatuses"][0];
    assert_eq!((app["started"].as_bool(), app["ready"].as_bool()), (Some(false), Some(false)), "{early}");

    // web: running, its readiness probe failing (404), not Ready.
    let uid = eventually(Duration::from_secs(60), "web failing its readiness probe", || async {
        let events = events_of(&k, "web");
        has_event(&events, "Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 404")
            .then_some(())?;
        let pod = try_json(&k, &["get", "pod", "web"])?;
        pod["metadata"]["uid"].as_str().map(String::from)
    })
    .await;
    let web = get_pod(&k, "web").await;
    assert!(!ready(&web), "{web}");
    let httpd = &web["status"]["containerStatuses"][0];
    assert_eq!((httpd["started"].as_bool(), httpd["ready"].as_bool()), (Some(true), Some(false)), "{web}");
    assert_eq!(web["status"]["phase"], "Running");
    // The file appears (written into the emptyDir on the node): Ready; it goes: not Ready.
    let www = agent.data_dir.join("pods").join(&uid).join("volumes/kubernetes.io~empty-dir/www");
    std::fs::write(www.join("ready.txt"), "ok").expect("write ready.txt");
    eventually(Duration::from_secs(30), "web Ready", || async {
        let pod = try_json(&k, &["get", "pod", "web"])?;
        (ready(&pod) && pod["status"]["containerStatuses"][0]["ready"] == true).then_some(())
    })
    .await;
    std::fs::remove_file(www.join("ready.txt")).expect("remove ready.txt");
    eventually(Duration::from_secs(30), "web not Ready again", || async {
        let pod = try_json(&k, &["get", "pod", "web"])?;
        let conditions = pod["status"]["conditions"].as_array()?.clone();
        let unready = |t: &str| conditions.iter().any(|c| c["type"] == t && c["status"] == "False");
        (unready("Ready") && unready("ContainersReady")).then_some(())
    })
    .await;
    assert_eq!(get_pod(&k, "web").await["status"]["containerStatuses"][0]["restartCount"], 0);

    // liveness: killed and restarted, twice, well within one pod grace period.
    let s = eventually(Duration::from_secs(45), "liveness restarted twice", || async {
        let s = status("liveness");
        (s["containerStatuses"][0]["restartCount"].as_i64()? >= 2).then_some(s)
    })
    .await;
    let last = &s["containerStatuses"][0]["lastState"]["terminated"];
    assert!(last["exitCode"].as_i64().is_some_and(|c| c != 0), "{s}");
    let events = events_of(&k, "liveness");
    assert!(has_event(&events, "Unhealthy", "Liveness probe failed: cat: can't open '/tmp/healthy'"), "{events:?}");
    assert!(has_event(&events, "Killing", "Container app failed liveness probe, will be restarted"), "{events:?}");

    // slow: started and ready once its startup probe passed; liveness never ran before.
    eventually(Duration::from_secs(60), "slow started and Ready", || async {
        let pod = try_json(&k, &["get", "pod", "slow"])?;
        let app = &pod["status"]["containerStatuses"][0];
        (ready(&pod) && app["started"] == true && app["ready"] == true).then_some(())
    })
    .await;
    assert_eq!(get_pod(&k, "slow").await["status"]["containerStatuses"][0]["restartCount"], 0);
    let events = events_of(&k, "slow");
    assert!(has_event(&events, "Unhealthy", "Startup probe failed: cat: can't open '/tmp/started'"), "{events:?}");
    assert!(!events.iter().any(|(_, m)| m.contains("Liveness probe failed")), "{events:?}");

    // never: killed for its startup probe and restarted, never started.
    eventually(Duration::from_secs(45), "never restarted", || async {
        let s = status("never");
        (s["containerStatuses"][0]["restartCount"].as_i64()? >= 1).then_some(())
    })
    .await;
    let s = get_pod(&k, "never").await["status"].clone();
    assert_eq!(s["containerStatuses"][0]["started"], false, "{s}");
    let events = events_of(&k, "never");
    assert!(has_event(&events, "Killing", "Container app failed startup probe, will be restarted"), "{events:?}");
}
