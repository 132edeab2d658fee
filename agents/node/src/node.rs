//! The Node object an agent registers and the status it keeps up to date.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use keel_container::RuntimeVersion;

use crate::NodeConfig;
use crate::pressure::{Pressure, Signals};

/// What the node offers pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub cpu: String,
    pub memory: String,
    pub pods: String,
    pub ephemeral_storage: String,
}

fn mem_total_kib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Capacity {
    /// This machine's cores and memory, kubelet's default of 110 pods, and the disk under
    /// the agent's root as ephemeral storage (set by the caller when it is known).
    pub fn of_this_machine() -> Capacity {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Capacity {
            cpu: cpus.to_string(),
            memory: format!("{}Ki", mem_total_kib().unwrap_or(0)),
            pods: "110".into(),
            ephemeral_storage: "0".into(),
        }
    }

    pub fn quantities(&self) -> BTreeMap<String, Quantity> {
        let mut out = BTreeMap::new();
        out.insert("cpu".to_string(), Quantity(self.cpu.clone()));
        out.insert("memory".to_string(), Quantity(self.memory.clone()));
        out.insert("pods".to_string(), Quantity(self.pods.clone()));
        out.insert("ephemeral-storage".to_string(), Quantity(self.ephemeral_storage.clone()));
        out.insert("hugepages-2Mi".to_string(), Quantity("0".into()));
        out
    }

    /// keel reserves nothing for system daemons yet: allocatable is capacity.
    pub fn allocatable(&self) -> BTreeMap<String, Quantity> {
        self.quantities()
    }
}

fn condition(type_: &str, ok_status: &str, reason: &str, message: &str, now: &Time) -> NodeCondition {
    NodeCondition {
        type_: type_.to_string(),
        status: ok_status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

fn first_line(path: &str) -> String {
    std::fs::read_to_string(path).ok().and_then(|s| s.lines().next().map(|l| l.trim().to_string())).unwrap_or_default()
}

fn os_image() -> String {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

/// The pressure conditions, as kubelet words them.
fn pressure_conditions(pressure: &Pressure, now: &Time) -> Vec<NodeCondition> {
    let one = |type_: &str, under: &Option<String>, ok: (&str, &str), bad: (&str, &str)| match under {
        None => condition(type_, "False", ok.0, ok.1, now),
        Some(signal) => condition(type_, "True", bad.0, &format!("{} ({signal})", bad.1), now),
    };
    vec![
        one(
            "MemoryPressure",
            &pressure.memory,
            ("KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            ("KubeletHasInsufficientMemory", "kubelet has insufficient memory available"),
        ),
        one(
            "DiskPressure",
            &pressure.disk,
            ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("KubeletHasDiskPressure", "kubelet has disk pressure"),
        ),
        one(
            "PIDPressure",
            &pressure.pid,
            ("KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            ("KubeletHasInsufficientPID", "kubelet has insufficient PID available"),
        ),
    ]
}

/// The status the agent reports: conditions (Ready while the agent runs; pressure measured
/// against `--eviction-hard`, never for simulated nodes, which have no machine of their
/// own), capacity, addresses and node info. Transition times are the member's to keep: it
/// merges conditions by type.
pub fn status(config: &NodeConfig, runtime: &RuntimeVersion, simulated: bool) -> NodeStatus {
    let now = Time(k8s_openapi::chrono::Utc::now());
    let kernel = if simulated { String::new() } else { first_line("/proc/sys/kernel/osrelease") };
    let pressure =
        if simulated { Pressure::default() } else { Signals::measure(&config.root).pressure(&config.eviction_hard) };
    let mut conditions = pressure_conditions(&pressure, &now);
    conditions.push(condition("Ready", "True", "KubeletReady", "kubelet is posting ready status", &now));
    NodeStatus {
        capacity: Some(config.capacity.quantities()),
        allocatable: Some(config.capacity.allocatable()),
        conditions: Some(conditions),
        addresses: Some(vec![
            NodeAddress { type_: "InternalIP".into(), address: config.address.clone() },
            NodeAddress { type_: "Hostname".into(), address: config.name.clone() },
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            operating_system: "linux".into(),
            os_image: if simulated { "keel simulated node".into() } else { os_image() },
            kernel_version: kernel,
            container_runtime_version: format!("{}://{}", runtime.name, runtime.version),
            kubelet_version: format!("v1.32.0-keel.{}", env!("CARGO_PKG_VERSION")),
            kube_proxy_version: String::new(),
            machine_id: if simulated { String::new() } else { first_line("/etc/machine-id") },
            system_uuid: String::new(),
            boot_id: if simulated { String::new() } else { first_line("/proc/sys/kernel/random/boot_id") },
        }),
        ..Default::default()
    }
}

/// The Node an agent registers.
pub fn object(config: &NodeConfig, runtime: &RuntimeVersion, simulated: bool) -> Node {
    let arch = std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64");
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), config.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch.clone()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), arch),
    ]);
    if simulated {
        labels.insert("type".into(), "simulated".into());
    }
    labels.extend(config.labels.clone());
    Node {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                "volumes.kubernetes.io/controller-managed-attach-detach".to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: (!config.taints.is_empty()).then(|| config.taints.clone()),
            ..Default::default()
        }),
        status: Some(status(config, runtime, simulated)),
    }
}
