//! `keel agent`: the node agent, or `--simulate N` nodes in one process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use k8s_openapi::api::core::v1::Taint;
use keel_container::simulated::{Settings, SimulatedRuntime};
use keel_node::{Agent, NodeConfig, node::Capacity};

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The node's name; with --simulate, the prefix of the simulated nodes' names
    /// (`<name>-00000`, `<name>-00001`, …).
    #[arg(long)]
    name: String,
    /// Members' API addresses (`host:port`, comma-separated); the agent holds one stream to
    /// one of them and moves to the next when it fails.
    #[arg(long, value_delimiter = ',', required = true)]
    server: Vec<String>,
    /// Where pod directories and container logs go.
    #[arg(long, default_value = "/var/lib/keel/agent")]
    data_dir: PathBuf,
    /// The node's address (its InternalIP, and each pod's hostIP).
    #[arg(long, default_value = "127.0.0.1")]
    node_ip: String,
    /// Labels to add to the Node (`key=value`, comma-separated).
    #[arg(long, value_delimiter = ',')]
    node_labels: Vec<String>,
    /// Taints the Node is registered with (`key=value:Effect`, comma-separated).
    #[arg(long, value_delimiter = ',')]
    register_with_taints: Vec<String>,
    /// How often the node's Lease is renewed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// How long the Lease lasts without renewal.
    #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
    node_lease_duration: Duration,
    /// First wait before a crashed container is restarted again; doubles per crash up to
    /// --crash-loop-backoff-max (kubelet: 10s and 5m).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    crash_loop_backoff: Duration,
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    crash_loop_backoff_max: Duration,
    /// How often pod and node resource usage is sampled and sent for metrics.k8s.io
    /// (`kubectl top`, the autoscaler); metrics-server's flag of the same name and default.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    metric_resolution: Duration,
    /// Let pods run privileged containers.
    #[arg(long)]
    allow_privileged: bool,
    /// How often the node's conditions are measured; a changed one is reported at once
    /// (unchanged status goes every minute).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    node_status_update_frequency: Duration,
    /// Hard thresholds below which the node reports MemoryPressure, DiskPressure or
    /// PIDPressure, in kubelet's syntax (`memory.available<100Mi,nodefs.available<10%,
    /// nodefs.inodesFree<5%,pid.available<5%`; signals not named keep those defaults).
    #[arg(long, default_value = "", value_parser = keel_node::pressure::Thresholds::parse)]
    eviction_hard: keel_node::pressure::Thresholds,
    /// containerd's socket (`unix:///run/containerd/containerd.sock` or a path): use that
    /// containerd instead of starting the agent's own under --data-dir.
    #[arg(long)]
    container_runtime_endpoint: Option<String>,
    /// OCI image archives (`*.tar`) pods' images come from; keel uses no registry (default:
    /// `<data-dir>/images`; `ops/images/build.sh` builds busybox and pause archives).
    #[arg(long)]
    images_dir: Option<PathBuf>,
    /// The pods' network on this node (the agent's own containerd's CNI bridge).
    #[arg(long, default_value = "10.88.0.0/16")]
    pod_cidr: String,
    /// The Linux bridge the agent's own containerd hangs pods off (one per node on a machine).
    #[arg(long, default_value = "keel0")]
    cni_bridge: String,
    /// Run this many simulated nodes in this process instead of one real node: each has its
    /// own stream and accepts pods, which it reports running without running anything.
    #[arg(long, default_value_t = 0)]
    simulate: usize,
    /// How long each simulated container start takes.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    simulate_start_delay: Duration,
    /// Share of simulated container starts that fail (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    simulate_failure_rate: f64,
    /// cpu, memory and pods each simulated node offers.
    #[arg(long, default_value = "32")]
    simulate_cpu: String,
    #[arg(long, default_value = "256Gi")]
    simulate_memory: String,
    #[arg(long, default_value = "110")]
    simulate_pods: String,
    /// Send kubelet's per-container Events (Pulled, Created, Started, Killing). On by default
    /// for a real node, off for simulated ones (as kwok does), so scale runs measure pods.
    #[arg(long)]
    container_events: Option<bool>,
}

fn parse_labels(raw: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
    raw.iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => bail!("--node-labels entry {s:?} is not key=value"),
        })
        .collect()
}

fn parse_taints(raw: &[String]) -> Result<Vec<Taint>> {
    raw.iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let (kv, effect) = s.rsplit_once(':').with_context(|| format!("taint {s:?} is not key=value:Effect"))?;
            if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
                bail!("taint {s:?}: the effect must be NoSchedule, PreferNoSchedule or NoExecute");
            }
            let (key, value) = kv.split_once('=').map_or((kv, None), |(k, v)| (k, Some(v.to_string())));
            if key.is_empty() {
                bail!("taint {s:?} has no key");
            }
            Ok(Taint { key: key.to_string(), value, effect: effect.to_string(), time_added: None })
        })
        .collect()
}

/// `host:port` of a `--server` entry, which may also be written as an `http://` URL.
fn server_address(raw: &str) -> Result<String> {
    let trimmed = raw.trim().trim_end_matches('/');
    if trimmed.starts_with("https://") {
        bail!(
            "--server {raw:?}: the API is plain HTTP for now (README, \"What does not work yet\"); use http:// or host:port"
        );
    }
    let address = trimmed.strip_prefix("http://").unwrap_or(trimmed);
    if address.is_empty() || !address.contains(':') || address.contains('/') {
        bail!("--server {raw:?} is not host:port");
    }
    Ok(address.to_string())
}

pub async fn run(args: AgentArgs) -> Result<()> {
    let signals = crate::server::ShutdownSignals::install()?;
    run_until(args, signals.received()).await
}

/// Runs the agent (or the simulated nodes) until `shutdown` resolves.
pub async fn run_until(mut args: AgentArgs, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    args.server = args.server.iter().map(|s| server_address(s)).collect::<Result<_>>()?;
    let labels = parse_labels(&args.node_labels)?;
    let taints = parse_taints(&args.register_with_taints)?;
    if !(0.0..=1.0).contains(&args.simulate_failure_rate) {
        bail!("--simulate-failure-rate must be between 0.0 and 1.0");
    }
    if args.metric_resolution < Duration::from_secs(1) {
        bail!("--metric-resolution must be at least 1s (the member keeps at most one record per node a second)");
    }
    let configure = |name: String, root: PathBuf| {
        let mut config = NodeConfig::new(&name, args.server.clone(), root);
        config.labels = labels.clone();
        config.taints = taints.clone();
        config.address = args.node_ip.clone();
        config.heartbeat = args.heartbeat_interval;
        config.lease_duration = args.node_lease_duration;
        config.backoff_initial = args.crash_loop_backoff;
        config.backoff_max = args.crash_loop_backoff_max;
        config.allow_privileged = args.allow_privileged;
        config.eviction_hard = args.eviction_hard.clone();
        config.status_check = args.node_status_update_frequency;
        config.metric_resolution = args.metric_resolution;
        config
    };
    let mut agents = Vec::new();
    if args.simulate > 0 {
        for i in 0..args.simulate {
            let name = keel_node::simulated_name(&args.name, i);
            let mut config = configure(name.clone(), args.data_dir.join("simulated").join(&name));
            config.capacity = Capacity {
                cpu: args.simulate_cpu.clone(),
                memory: args.simulate_memory.clone(),
                pods: args.simulate_pods.clone(),
                ephemeral_storage: "100Gi".into(),
            };
            config.container_events = args.container_events.unwrap_or(false);
            config.volumes = false;
            config.pod_network = false;
            let runtime = Arc::new(SimulatedRuntime::new(Settings {
                start_delay: args.simulate_start_delay,
                failure_rate: args.simulate_failure_rate,
                // Distinct per node, so pod IPs do not repeat across the cluster.
                pod_cidr_prefix: format!("10.{}.{}", 64 + (i / 256) % 128, i % 256),
            }));
            agents.push(Agent::start(config, runtime, "sim"));
        }
        tracing::info!(nodes = args.simulate, servers = ?args.server, "simulated nodes started");
        shutdown.await;
        tracing::info!("stopping");
        drop(agents);
        return Ok(());
    }

    let images = args.images_dir.clone().unwrap_or_else(|| args.data_dir.join("images"));
    std::fs::create_dir_all(&images).with_context(|| format!("creating {}", images.display()))?;
    let (runtime, containerd) = match &args.container_runtime_endpoint {
        Some(endpoint) => {
            let socket = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
            (keel_cri::CriRuntime::new(socket).with_images_dir(&images), None)
        }
        None => {
            let options = keel_cri::ContainerdOptions {
                pod_cidr: args.pod_cidr.clone(),
                bridge: args.cni_bridge.clone(),
                ..Default::default()
            };
            let containerd = keel_cri::Containerd::start(&args.data_dir, options)
                .await
                .with_context(|| format!("starting containerd under {}", args.data_dir.display()))?;
            let report = containerd
                .importer()
                .import_archives(&images)
                .await
                .with_context(|| format!("importing the image archives of {}", images.display()))?;
            tracing::info!(?report, "images imported");
            (containerd.runtime(&images), Some(containerd))
        }
    };
    let config = configure(args.name.clone(), args.data_dir.clone());
    let agent = Agent::start(config, Arc::new(runtime), "containerd");
    shutdown.await;
    tracing::info!("stopping; pods keep running until the node is drained");
    drop(agent);
    if let Some(containerd) = containerd {
        containerd.shutdown().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_and_labels_parse_as_kubelet_takes_them() {
        let taints =
            parse_taints(&["dedicated=gpu:NoSchedule".into(), "spot:PreferNoSchedule".into()]).expect("taints");
        assert_eq!(taints[0].key, "dedicated");
        assert_eq!(taints[0].value.as_deref(), Some("gpu"));
        assert_eq!(taints[1].value, None);
        assert!(parse_taints(&["a=b".into()]).is_err());
        assert!(parse_taints(&["a=b:Sometimes".into()]).is_err());
        assert_eq!(parse_labels(&["zone=a".into()]).expect("labels").get("zone").map(String::as_str), Some("a"));
        assert!(parse_labels(&["novalue".into()]).is_err());
    }

    #[test]
    fn servers_are_host_port_or_http_urls() {
        assert_eq!(server_address("127.0.0.1:6443").expect("plain"), "127.0.0.1:6443");
        assert_eq!(server_address("http://127.0.0.1:6443/").expect("url"), "127.0.0.1:6443");
        assert!(server_address("https://127.0.0.1:6443").is_err());
        assert!(server_address("localhost").is_err());
    }
}
