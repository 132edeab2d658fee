//! The container runtime as keel's node agent sees it: the calls of CRI v1's RuntimeService
//! and ImageService that a kubelet makes, with plain Rust types. Two implementations: the real
//! one talks to containerd over its unix socket (crate `keel-cri`), and [`simulated`] keeps
//! sandboxes and containers in memory for simulated nodes and tests. The pod sync loop is the
//! same code over either, so simulated nodes exercise the real kubelet logic.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub mod simulated;

/// A runtime call that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    /// The sandbox, container or image does not exist (CRI's NotFound).
    #[error("not found: {0}")]
    NotFound(String),
    /// The runtime cannot be reached or is not ready; worth retrying.
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
    /// The request cannot work as given (bad image name, unsupported option, refused
    /// security setting); retrying the same request will not help.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, RuntimeError>;

/// Nanoseconds since the Unix epoch, as CRI timestamps are.
pub type UnixNanos = i64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeVersion {
    /// `containerd`, `simulated`.
    pub name: String,
    pub version: String,
    /// CRI version the runtime speaks (`v1`).
    pub api_version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub protocol: Protocol,
    pub container_port: i32,
    pub host_port: i32,
    pub host_ip: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// What a pod sandbox (the pod's network namespace and pause container) is made from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxConfig {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// Counts sandboxes made for this pod; a new one replaces a dead one.
    pub attempt: u32,
    pub hostname: String,
    /// Where the pod's container logs go (`<root>/pods/<ns>_<name>_<uid>`).
    pub log_directory: PathBuf,
    pub dns: DnsConfig,
    pub port_mappings: Vec<PortMapping>,
    pub host_network: bool,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// cgroup parent of the pod, when the agent manages pod cgroups.
    pub cgroup_parent: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub container_path: String,
    pub host_path: PathBuf,
    pub readonly: bool,
}

/// cgroup settings from a container's `resources` (CRI's LinuxContainerResources).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityContext {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub readonly_rootfs: bool,
    pub privileged: bool,
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
}

/// What one container is made from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerConfig {
    /// The container's name in the pod spec.
    pub name: String,
    /// Counts the containers made for this name in this sandbox (restarts).
    pub attempt: u32,
    /// The image as the runtime knows it (reference or id from `pull_image`).
    pub image: String,
    /// Entrypoint override (the pod's `command`); empty keeps the image's.
    pub command: Vec<String>,
    /// The pod's `args`; empty keeps the image's.
    pub args: Vec<String>,
    pub working_dir: String,
    pub envs: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    /// Relative to the sandbox's log directory.
    pub log_path: String,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub resources: Resources,
    pub security: SecurityContext,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

/// What the runtime says about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub id: String,
    pub sandbox_id: String,
    /// The container's name in the pod spec.
    pub name: String,
    pub attempt: u32,
    pub state: ContainerState,
    pub created_at: UnixNanos,
    pub started_at: UnixNanos,
    pub finished_at: UnixNanos,
    pub exit_code: i32,
    /// Why it exited (`Completed`, `Error`, `OOMKilled`), empty while running.
    pub reason: String,
    pub message: String,
    /// The image the pod asked for.
    pub image: String,
    /// The image's digest or id (`imageID` in the pod's status).
    pub image_ref: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxStatus {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
    pub state: SandboxState,
    pub created_at: UnixNanos,
    /// The pod's IP; empty for host-network pods.
    pub ip: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub id: String,
    /// Every name the image is known by (`busybox:1.36`, `docker.io/library/busybox:1.36`).
    pub names: Vec<String>,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Which of an interactive session's streams the client wants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Resource use of one container, for node metrics and the autoscaler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStats {
    pub id: String,
    pub timestamp: UnixNanos,
    /// Cumulative CPU time, nanoseconds.
    pub cpu_usage_nanos: u64,
    pub memory_working_set_bytes: u64,
}

/// CRI v1, as much of it as the node agent uses. Every call is idempotent the way CRI's are:
/// stopping a stopped container or removing a missing one succeeds.
#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync {
    async fn version(&self) -> Result<RuntimeVersion>;

    async fn run_pod_sandbox(&self, config: &SandboxConfig) -> Result<String>;
    async fn stop_pod_sandbox(&self, sandbox_id: &str) -> Result<()>;
    async fn remove_pod_sandbox(&self, sandbox_id: &str) -> Result<()>;
    async fn list_pod_sandboxes(&self) -> Result<Vec<SandboxStatus>>;

    /// The image, if the runtime has it.
    async fn image_status(&self, image: &str) -> Result<Option<Image>>;
    /// Makes the image available; returns its id. keel never needs a registry: the real
    /// runtime imports images from OCI archives, and a name it has no archive for is
    /// NotFound.
    async fn pull_image(&self, image: &str) -> Result<String>;
    async fn list_images(&self) -> Result<Vec<Image>>;

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        sandbox: &SandboxConfig,
    ) -> Result<String>;
    async fn start_container(&self, container_id: &str) -> Result<()>;
    /// SIGTERM, then SIGKILL once `timeout` has passed.
    async fn stop_container(&self, container_id: &str, timeout: Duration) -> Result<()>;
    async fn remove_container(&self, container_id: &str) -> Result<()>;
    async fn list_containers(&self) -> Result<Vec<ContainerStatus>>;

    /// Runs `command` in the container and waits for it (exec probes).
    async fn exec_sync(&self, container_id: &str, command: &[String], timeout: Duration) -> Result<ExecOutput>;

    /// Prepares an interactive `kubectl exec` and answers with the URL on the runtime's
    /// streaming server that serves it (SPDY/3.1, `v4.channel.k8s.io`).
    async fn exec(&self, container_id: &str, command: &[String], streams: &Streams) -> Result<String>;

    /// As [`ContainerRuntime::exec`], attached to the container's own process.
    async fn attach(&self, container_id: &str, streams: &Streams) -> Result<String>;

    /// Prepares a connection to `port` in the sandbox's network namespace and answers with the
    /// URL that serves it (SPDY/3.1, `portforward.k8s.io`); the URL is good for one use.
    async fn port_forward(&self, sandbox_id: &str, port: u16) -> Result<String>;

    async fn container_stats(&self) -> Result<Vec<ContainerStats>>;

    /// The pod's annotations as they are now (they may change while it runs). CRI has no
    /// such call and containerd ignores it; the simulated runtime, whose scripted usage comes
    /// from annotations, follows them, so a test can change a running pod's load.
    async fn pod_annotations_changed(&self, _sandbox_id: &str, _annotations: &BTreeMap<String, String>) -> Result<()> {
        Ok(())
    }
}
