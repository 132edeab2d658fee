//! `keel up`: a whole cluster on this machine in one process — a one-member store serving
//! the APIs, the control loops, and a node agent running pods in its own containerd — with a
//! kubeconfig written for kubectl. It installs nothing: what is missing is named, and
//! `ops/install-deps.sh` installs it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser};

use crate::agent::AgentArgs;
use crate::server::ServerArgs;

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Where the member's data, the agent's containerd, pods and images live.
    #[arg(long, default_value = "/var/lib/keel")]
    data_dir: PathBuf,
    /// The Kubernetes API (and the agent's stream).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen_api: String,
    /// The etcd v3 API of the store.
    #[arg(long, default_value = "127.0.0.1:2379")]
    listen_client: String,
    #[arg(long, default_value = "127.0.0.1:2380")]
    listen_peer: String,
    /// The node's name (default: this machine's host name).
    #[arg(long)]
    node_name: Option<String>,
    /// OCI image archives for pods (default: `<data-dir>/images`; `ops/images/build.sh DIR`
    /// builds busybox and pause).
    #[arg(long)]
    images_dir: Option<PathBuf>,
    #[arg(long, default_value = "10.88.0.0/16")]
    pod_cidr: String,
    #[arg(long, default_value = "keel0")]
    cni_bridge: String,
    /// The node's pressure thresholds, as `keel agent --eviction-hard` (kubelet's defaults:
    /// a disk with less than 10% free taints the node and stops new pods).
    #[arg(long, default_value = "")]
    eviction_hard: String,
    /// Where the kubeconfig goes (default: `<data-dir>/kubeconfig`).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

/// The server's and agent's own flags, parsed as their commands parse them, so `keel up`
/// gets exactly their defaults.
#[derive(Parser)]
struct ServerFlags {
    #[command(flatten)]
    args: ServerArgs,
}

#[derive(Parser)]
struct AgentFlags {
    #[command(flatten)]
    args: AgentArgs,
}

/// Whether this process runs as root (effective uid 0, from `/proc/self/status`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?.to_string();
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// What `keel up` needs on the machine that is not there.
fn missing_prerequisites(images: &Path) -> Vec<String> {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
            .unwrap_or(false)
    };
    let mut missing = Vec::new();
    for (binary, package) in [
        ("containerd", "containerd"),
        ("containerd-shim-runc-v2", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
        ("iptables", "iptables"),
    ] {
        if !on_path(binary) {
            missing.push(format!("{binary} (Debian package {package})"));
        }
    }
    for plugin in ["bridge", "host-local", "portmap", "loopback"] {
        if !Path::new(keel_cri::config::DEFAULT_CNI_BIN_DIR).join(plugin).is_file() {
            missing.push(format!("the CNI plugin {plugin} (Debian package containernetworking-plugins)"));
        }
    }
    let archives = keel_cri::images::archives_in(images).unwrap_or_default();
    if archives.is_empty() {
        missing.push(format!("image archives in {} (ops/images/build.sh {0})", images.display()));
    }
    if !is_root() {
        missing.push("root: the node agent runs containerd and sets up the pod network".into());
    }
    missing
}

pub async fn run(args: UpArgs) -> Result<()> {
    let signals = crate::server::ShutdownSignals::install()?;
    let images = args.images_dir.clone().unwrap_or_else(|| args.data_dir.join("images"));
    let missing = missing_prerequisites(&images);
    if !missing.is_empty() {
        bail!(
            "keel up needs, and did not find:\n  {}\nops/install-deps.sh installs the packages",
            missing.join("\n  ")
        );
    }
    let node = match &args.node_name {
        Some(name) => name.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_lowercase())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "keel".into()),
    };
    let member_dir = args.data_dir.join("member");
    let agent_dir = args.data_dir.join("agent");
    // Volumes of the local-path provisioner stay beside everything else of this cluster.
    let storage_dir = args.data_dir.join("storage");
    let server = ServerFlags::try_parse_from([
        "server",
        "--name",
        "keel",
        "--data-dir",
        &member_dir.display().to_string(),
        "--default-local-storage-path",
        &storage_dir.display().to_string(),
        "--listen-api",
        &args.listen_api,
        "--listen-client",
        &args.listen_client,
        "--listen-peer",
        &args.listen_peer,
    ])
    .context("server settings")?
    .args;
    let agent = AgentFlags::try_parse_from([
        "agent",
        "--name",
        &node,
        "--server",
        &args.listen_api,
        "--data-dir",
        &agent_dir.display().to_string(),
        "--images-dir",
        &images.display().to_string(),
        "--pod-cidr",
        &args.pod_cidr,
        "--cni-bridge",
        &args.cni_bridge,
        "--eviction-hard",
        &args.eviction_hard,
    ])
    .context("agent settings")?
    .args;

    let kubeconfig = args.kubeconfig.clone().unwrap_or_else(|| args.data_dir.join("kubeconfig"));
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    std::fs::write(&kubeconfig, crate::kubeconfig::render(&args.listen_api, "keel")?)
        .with_context(|| format!("writing {}", kubeconfig.display()))?;

    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(crate::server::run_until(server, async {
        let _ = server_stopped.await;
    }));
    let agent_task = tokio::spawn(crate::agent::run_until(agent, async {
        let _ = agent_stopped.await;
    }));
    println!(
        "keel is up: one member (API on {api}) and the node {node}.\n\n  export KUBECONFIG={kc}\n  kubectl get nodes\n  kubectl create deployment hello --image=keel.local/busybox:1.36 -- sleep 3600\n\nImages come from {images} (keel image import --address {sock} FILE adds more). Ctrl-C stops keel; pods keep running until it is back.",
        api = args.listen_api,
        kc = kubeconfig.display(),
        images = images.display(),
        sock = agent_dir.join("containerd/containerd.sock").display(),
    );

    // Whichever ends first (a signal, or a part that failed) stops the rest.
    tokio::select! {
        _ = signals.received() => {}
        _ = part_ended(&server_task) => {}
        _ = part_ended(&agent_task) => {}
    }
    let _ = stop_agent.send(());
    let agent_result = agent_task.await;
    let _ = stop_server.send(());
    let server_result = server_task.await;
    for (part, result) in [("the node agent", agent_result), ("the member", server_result)] {
        match result {
            Ok(Err(e)) => return Err(e.context(format!("{part} failed"))),
            Err(e) => bail!("{part} crashed: {e}"),
            Ok(Ok(())) => {}
        }
    }
    Ok(())
}

/// Resolves when a part of `keel up` has stopped on its own.
async fn part_ended(task: &tokio::task::JoinHandle<Result<()>>) {
    while !task.is_finished() {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
