//! Cleaning up after a node agent's own containerd, which (as kubelet's pods do) outlives
//! the agent that started it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Kills every task of the containerd under `data_dir`, the shims and containerd itself,
/// unmounts what they left under `data_dir`, and deletes the CNI `bridge`.
pub fn tear_down(data_dir: &Path, bridge: &str) {
    // The agent's containerd and pods outlive a killed agent (as kubelet's do); this test
    // owns them, so they go: the shims, containerd, the mounts and the bridge.
    let root = data_dir.display().to_string();
    let socket = data_dir.join("containerd/containerd.sock").display().to_string();
    let ctr = |args: &[&str]| Command::new("ctr").args(["-n", "k8s.io", "--address", &socket]).args(args).output();
    if let Ok(listed) = ctr(&["tasks", "ls", "-q"]) {
        for task in String::from_utf8_lossy(&listed.stdout).lines().filter(|t| !t.trim().is_empty()) {
            let _ = ctr(&["tasks", "kill", "--all", "--signal", "SIGKILL", task.trim()]);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    // Containers the tasks API did not reach (containerd already stopped) are the shims'
    // children: the shim is their subreaper.
    if let Ok(shims) = Command::new("pgrep").args(["-f", &format!("containerd-shim.*{root}")]).output() {
        for shim in String::from_utf8_lossy(&shims.stdout).split_whitespace() {
            let _ = Command::new("pkill").args(["-9", "-P", shim]).status();
        }
    }
    let _ = Command::new("pkill").args(["-f", &format!("containerd.*{root}")]).status();
    let _ = Command::new("pkill").args(["-f", &format!("containerd-shim.*{root}")]).status();
    std::thread::sleep(Duration::from_millis(500));
    if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
        let mut ours: Vec<&str> =
            mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|m| m.starts_with(&root)).collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
    }
    let _ = Command::new("ip").args(["link", "delete", bridge]).output();
    keel_cri::masquerade::remove(bridge);
}
