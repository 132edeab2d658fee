//! `keel up`: one command brings up a member, the control loops and a node agent with its
//! own containerd, writes a kubeconfig, and a pod runs with the real kubectl; SIGTERM stops
//! it cleanly. Without image archives it refuses to start and says how to make them.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::eventually;
use support::kubectl::Kubectl;
use support::net::Subnet;
use support::processes::keel_binary;

/// Tears the node's containerd and pods down however the test ends.
struct Cleanup {
    agent_dir: std::path::PathBuf,
    bridge: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args([
                "-f",
                &format!(
                    "keel up --data-dir {}",
                    self.agent_dir.parent().map(|p| p.display().to_string()).unwrap_or_default()
                ),
            ])
            .status();
        support::containerd::tear_down(&self.agent_dir, &self.bridge);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_up_runs_a_pod_and_stops_cleanly() {
    let dir = tempfile::Builder::new().prefix("keel-up-").tempdir().expect("temp dir");
    let subnet = Subnet::random();
    let (api, client, peer) = (subnet.free_addr(10), subnet.free_addr(10), subnet.free_addr(10));
    let pid = std::process::id() % 32768;
    let bridge = format!("ku{pid}");
    let cidr = format!("10.{}.{}.0/24", 32 + (pid >> 8), pid & 0xff);
    let data = dir.path().join("keel");
    let up = |extra: &[&str]| {
        let mut command = Command::new(keel_binary());
        command
            .args(["up", "--data-dir", &data.display().to_string()])
            .args(["--listen-api", &api, "--listen-client", &client, "--listen-peer", &peer])
            .args(["--pod-cidr", &cidr, "--cni-bridge", &bridge, "--node-name", "laptop"])
            // Shared test machines run with little free disk: kubelet's 10% would stop pods.
            .args(["--eviction-hard", "nodefs.available<1%,nodefs.inodesFree<1%"])
            .args(extra)
            .env("KEEL_LOG", "info")
            .env("NO_COLOR", "1");
        command
    };

    // No images yet: refused, naming the script that makes them.
    let refused = up(&[]).output().expect("run keel up");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("ops/images/build.sh"), "{stderr}");

    let images = data.join("images");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/images/build.sh");
    let built = Command::new(&script).arg(&images).output().expect("run ops/images/build.sh");
    assert!(built.status.success(), "ops/images/build.sh: {}", String::from_utf8_lossy(&built.stderr));

    let _cleanup = Cleanup { agent_dir: data.join("agent"), bridge: bridge.clone() };
    let log = dir.path().join("up.log");
    let mut child = up(&[])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn keel up");
    let kubeconfig = data.join("kubeconfig");
    eventually(Duration::from_secs(30), "the kubeconfig", || async { kubeconfig.exists().then_some(()) }).await;
    let work = dir.path().join("kubectl");
    std::fs::create_dir_all(&work).expect("work dir");
    let k = Kubectl::new(&work, &api);
    eventually(Duration::from_secs(90), "the node Ready", || async {
        let out = k.run(&["get", "node", "laptop", "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"]);
        (String::from_utf8_lossy(&out.stdout) == "True").then_some(())
    })
    .await;
    let pod = k.write(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: hello}\nspec:\n  containers: [{name: c, image: keel.local/busybox:1.36, command: [sleep, \"3600\"]}]\n",
    );
    k.ok(&["apply", "-f", &pod]);
    k.ok(&["wait", "--for=condition=Ready", "pod/hello", "--timeout=90s"]);
    let ip = k.ok(&["get", "pod", "hello", "-o", "jsonpath={.status.podIP}"]);
    let prefix = format!("10.{}.{}.", 32 + (pid >> 8), pid & 0xff);
    assert!(ip.starts_with(&prefix), "pod IP {ip} outside --pod-cidr {cidr}");
    k.ok(&["delete", "pod", "hello", "--grace-period=1", "--wait=true", "--timeout=30s"]);

    // SIGTERM: every part stops and the process exits 0.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "keel up did not stop within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "keel up exited with {status}: {}", std::fs::read_to_string(&log).unwrap_or_default());
    let mut printed = String::new();
    if let Some(mut out) = child.stdout.take() {
        use std::io::Read;
        let _ = out.read_to_string(&mut printed);
    }
    assert!(printed.contains("export KUBECONFIG="), "{printed}");
}
