//! keel's node agent (its kubelet). One gRPC stream to any member carries everything: the
//! agent registers its Node, heartbeats its Lease, receives the pods bound to it with the
//! ConfigMaps and Secrets they use, and sends pod and node status and Events back. When the
//! member goes away the agent dials the next one and resumes where it was: it says what it
//! holds, the member sends what changed, and running pods are not touched.
//!
//! Pods run on a [`keel_container::ContainerRuntime`]: containerd through CRI, or the
//! simulated runtime that `keel agent --simulate N` gives each of its N nodes.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod env;
pub mod metrics;
pub mod node;
pub mod objects;
pub mod pods;
pub mod pressure;
pub mod probes;
pub mod reports;
pub mod status;
mod stream;
mod streams;
pub mod tokens;
pub mod volumes;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Taint;
use keel_container::ContainerRuntime;

pub use stream::Connector;

/// How one node runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    /// Members' API addresses (`host:port`), tried in turn.
    pub servers: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// The node's address, reported as its InternalIP and each pod's hostIP.
    pub address: String,
    pub capacity: node::Capacity,
    /// Where pod directories and logs live.
    pub root: PathBuf,
    /// How often the Lease is renewed (kubelet: 10 s).
    pub heartbeat: Duration,
    pub lease_duration: Duration,
    /// How often the node's status is sent when nothing changed it.
    pub status_interval: Duration,
    /// How often the node's conditions are measured; a change is sent at once
    /// (`--node-status-update-frequency`, kubelet's 10 s).
    pub status_check: Duration,
    /// How often the runtime's containers are listed for changes (kubelet's PLEG: 1 s).
    pub relist: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub allow_privileged: bool,
    pub container_events: bool,
    /// Whether pod volumes are set up on disk (not for simulated nodes, whose containers
    /// never read them).
    pub volumes: bool,
    /// Below these, the node reports pressure (`--eviction-hard`).
    pub eviction_hard: pressure::Thresholds,
    /// Whether pod IPs lead anywhere from the agent, for httpGet and tcpSocket probes (not
    /// for simulated nodes: their pods' addresses are made up).
    pub pod_network: bool,
    /// How often resource usage is sampled and sent (metrics-server's `--metric-resolution`).
    pub metric_resolution: Duration,
}

impl NodeConfig {
    pub fn new(name: &str, servers: Vec<String>, root: PathBuf) -> NodeConfig {
        NodeConfig {
            name: name.to_string(),
            servers,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            address: "127.0.0.1".into(),
            capacity: node::Capacity::of_this_machine(),
            root,
            heartbeat: Duration::from_secs(10),
            lease_duration: Duration::from_secs(40),
            status_interval: Duration::from_secs(60),
            status_check: Duration::from_secs(10),
            relist: Duration::from_secs(1),
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            allow_privileged: false,
            container_events: true,
            volumes: true,
            eviction_hard: pressure::Thresholds::default(),
            pod_network: true,
            metric_resolution: Duration::from_secs(15),
        }
    }
}

/// One running node: its pod workers, relister and stream. Dropping it stops the stream and
/// the loops (the runtime's containers keep running, as kubelet's do when it stops).
pub struct Agent {
    pub workers: Arc<pods::PodWorkers>,
    pub connector: Arc<Connector>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Agent {
    pub fn start(config: NodeConfig, runtime: Arc<dyn ContainerRuntime>, runtime_scheme: &str) -> Agent {
        let objects = Arc::new(objects::Objects::default());
        let reports = Arc::new(reports::Reports::new(&config.name));
        let ctx = Arc::new(pods::Context {
            node: config.name.clone(),
            host_ip: config.address.clone(),
            runtime: runtime.clone(),
            runtime_scheme: runtime_scheme.to_string(),
            objects: objects.clone(),
            reports: reports.clone(),
            allocatable: config.capacity.allocatable(),
            pods_root: config.root.join("pods"),
            tokens: Arc::new(tokens::TokenManager::default()),
            backoff_initial: config.backoff_initial,
            backoff_max: config.backoff_max,
            allow_privileged: config.allow_privileged,
            container_events: config.container_events,
            volumes: config.volumes,
            pod_network: config.pod_network,
        });
        let workers = pods::PodWorkers::new(ctx);
        let (latest_metrics, metrics) = tokio::sync::watch::channel(None);
        let connector = Arc::new(Connector::new(config.clone(), workers.clone(), metrics));
        let collector = metrics::Collector::new(false);
        let tasks = vec![
            tokio::spawn(workers.clone().relist(config.relist)),
            tokio::spawn(connector.clone().run()),
            tokio::spawn(collector.run(runtime, config.metric_resolution, latest_metrics)),
        ];
        Agent { workers, connector, tasks }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Where `keel agent --simulate N` puts node `i` of `prefix`.
pub fn simulated_name(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:05}")
}
