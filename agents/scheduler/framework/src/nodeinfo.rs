//! One node and the pods assigned to it, with the sums the filters read kept up to date
//! on every add and remove (no recomputation from the pod list).

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};

use super::affinity::PodAffinityTerms;
use super::resources::{self, Resources};

/// A pod's priority: `spec.priority`, which admission fills from its PriorityClass; a pod
/// without one has priority 0.
pub fn pod_priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// A host port a pod binds, with Kubernetes' defaults applied (ip `0.0.0.0`, protocol TCP).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub ip: String,
    pub protocol: String,
    pub port: i32,
}

pub const BIND_ALL_IP: &str = "0.0.0.0";

/// Host ports of the containers and of the restartable init containers (sidecars run for
/// the pod's life, other init containers have exited before the app starts).
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = &pod.spec else { return Vec::new() };
    let sidecars = spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
    sidecars
        .chain(&spec.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|&port| port > 0)?;
            let ip = p.host_ip.as_deref().filter(|ip| !ip.is_empty()).unwrap_or(BIND_ALL_IP);
            let protocol = p.protocol.as_deref().filter(|p| !p.is_empty()).unwrap_or("TCP");
            Some(HostPort { ip: ip.to_owned(), protocol: protocol.to_owned(), port })
        })
        .collect()
}

/// Host ports in use on a node, with how many pods use each (so that removing one of two
/// pods that both declared a port keeps it in use).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsedPorts(Vec<(HostPort, u32)>);

impl UsedPorts {
    fn add(&mut self, port: &HostPort) {
        match self.0.iter_mut().find(|(p, _)| p == port) {
            Some((_, n)) => *n += 1,
            None => self.0.push((port.clone(), 1)),
        }
    }

    fn remove(&mut self, port: &HostPort) {
        if let Some(i) = self.0.iter().position(|(p, _)| p == port) {
            self.0[i].1 -= 1;
            if self.0[i].1 == 0 {
                self.0.swap_remove(i);
            }
        }
    }

    /// `HostPortInfo.CheckConflict`: `0.0.0.0` conflicts with the same protocol and port on
    /// any address, a specific address with itself and with `0.0.0.0`.
    pub fn conflicts(&self, want: &HostPort) -> bool {
        self.0.iter().any(|(used, _)| {
            used.port == want.port
                && used.protocol == want.protocol
                && (want.ip == BIND_ALL_IP || used.ip == BIND_ALL_IP || used.ip == want.ip)
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A pod on a node with what was derived from it once, when it was added.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub pod: Arc<Pod>,
    pub requests: Resources,
    pub non_zero_milli_cpu: i64,
    pub non_zero_memory: i64,
    pub priority: i32,
    pub(crate) host_ports: Vec<HostPort>,
    /// Parsed pod (anti-)affinity terms; `None` for the common pod without any.
    pub(crate) affinity: Option<Arc<PodAffinityTerms>>,
}

impl PodInfo {
    pub fn new(pod: Arc<Pod>) -> Self {
        let requests = resources::pod_requests(&pod);
        let non_zero = resources::pod_non_zero_requests(&pod);
        PodInfo {
            requests,
            non_zero_milli_cpu: non_zero.milli_cpu,
            non_zero_memory: non_zero.memory,
            priority: pod_priority(&pod),
            host_ports: host_ports(&pod),
            affinity: PodAffinityTerms::of_existing_pod(&pod).map(Arc::new),
            pod,
        }
    }

    pub(crate) fn has_required_anti_affinity(&self) -> bool {
        self.affinity.as_ref().is_some_and(|a| a.has_required_anti_affinity())
    }

    fn is(&self, pod: &Pod) -> bool {
        let (a, b) = (&self.pod.metadata, &pod.metadata);
        a.name == b.name
            && a.namespace == b.namespace
            // A pod deleted and recreated under the same name is another pod.
            && (a.uid.is_none() || b.uid.is_none() || a.uid == b.uid)
    }
}

#[derive(Debug, Clone)]
pub struct NodeInfo {
    node: Arc<Node>,
    pods: Vec<PodInfo>,
    requested: Resources,
    non_zero_requested: Resources,
    allocatable: Resources,
    used_ports: UsedPorts,
    ready: bool,
    pods_with_affinity: usize,
    pods_with_required_anti_affinity: usize,
}

impl NodeInfo {
    pub fn new(node: Arc<Node>) -> Self {
        let mut info = NodeInfo {
            node: node.clone(),
            pods: Vec::new(),
            requested: Resources::default(),
            non_zero_requested: Resources::default(),
            allocatable: Resources::default(),
            used_ports: UsedPorts::default(),
            ready: false,
            pods_with_affinity: 0,
            pods_with_required_anti_affinity: 0,
        };
        info.set_node(node);
        info
    }

    /// Replaces the node object (labels, taints, allocatable changed) keeping its pods.
    pub fn set_node(&mut self, node: Arc<Node>) {
        let status = node.status.as_ref();
        self.allocatable = status.and_then(|s| s.allocatable.as_ref()).map(Resources::from_list).unwrap_or_default();
        self.ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        self.node = node;
    }

    pub fn add_pod(&mut self, pod: Arc<Pod>) {
        self.add_pod_info(PodInfo::new(pod));
    }

    pub fn add_pod_info(&mut self, info: PodInfo) {
        self.requested.add(&info.requests);
        self.non_zero_requested.milli_cpu += info.non_zero_milli_cpu;
        self.non_zero_requested.memory += info.non_zero_memory;
        for p in &info.host_ports {
            self.used_ports.add(p);
        }
        if info.affinity.is_some() {
            self.pods_with_affinity += 1;
        }
        if info.has_required_anti_affinity() {
            self.pods_with_required_anti_affinity += 1;
        }
        self.pods.push(info);
    }

    /// Removes the pod with this namespace and name (and uid, when both have one).
    pub fn remove_pod(&mut self, pod: &Pod) -> bool {
        self.take_pod(pod).is_some()
    }

    /// Like [`remove_pod`](Self::remove_pod), returning what was stored for the pod.
    pub fn take_pod(&mut self, pod: &Pod) -> Option<PodInfo> {
        let i = self.pods.iter().position(|p| p.is(pod))?;
        Some(self.take_at(i))
    }

    /// Removes the pod with this namespace and name whatever its uid.
    pub(crate) fn take_pod_named(&mut self, namespace: &str, name: &str) -> Option<PodInfo> {
        let i = self.pods.iter().position(|p| {
            let m = &p.pod.metadata;
            m.name.as_deref().unwrap_or_default() == name && m.namespace.as_deref().unwrap_or_default() == namespace
        })?;
        Some(self.take_at(i))
    }

    fn take_at(&mut self, i: usize) -> PodInfo {
        // Pod order carries no meaning, so swap_remove keeps removal O(1) after the search.
        let info = self.pods.swap_remove(i);
        self.requested.sub(&info.requests);
        self.non_zero_requested.milli_cpu -= info.non_zero_milli_cpu;
        self.non_zero_requested.memory -= info.non_zero_memory;
        for p in &info.host_ports {
            self.used_ports.remove(p);
        }
        if info.affinity.is_some() {
            self.pods_with_affinity -= 1;
        }
        if info.has_required_anti_affinity() {
            self.pods_with_required_anti_affinity -= 1;
        }
        info
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn pods(&self) -> impl ExactSizeIterator<Item = &Arc<Pod>> {
        self.pods.iter().map(|p| &p.pod)
    }

    pub fn pod_infos(&self) -> &[PodInfo] {
        &self.pods
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Sum of the pods' requests (`pod_requests`).
    pub fn requested(&self) -> &Resources {
        &self.requested
    }

    /// Sum of the pods' non-zero requests; only `milli_cpu` and `memory` are kept.
    pub fn non_zero_requested(&self) -> &Resources {
        &self.non_zero_requested
    }

    /// `status.allocatable`; `pods` is how many pods the node admits.
    pub fn allocatable(&self) -> &Resources {
        &self.allocatable
    }

    pub fn used_ports(&self) -> &UsedPorts {
        &self.used_ports
    }

    /// Whether the node's `Ready` condition is `True`.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    pub fn pods_with_affinity(&self) -> usize {
        self.pods_with_affinity
    }

    pub fn pods_with_required_anti_affinity(&self) -> usize {
        self.pods_with_required_anti_affinity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{node, pod};
    use serde_json::json;

    #[test]
    fn accounting_is_incremental_and_reversible() {
        let mut ni = NodeInfo::new(Arc::new(node("n1", json!({"cpu": "4", "memory": "8Gi", "pods": "110"}))));
        assert_eq!(ni.allocatable().milli_cpu, 4000);
        assert_eq!(ni.allocatable().pods, 110);
        assert!(ni.is_ready());

        let a = Arc::new(pod(
            "a",
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
            "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
        ));
        let b = Arc::new(pod("b", json!({"containers": [{"name": "c"}]})));
        let c = Arc::new(pod(
            "c",
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "250m", "example.com/gpu": "1"}},
            "ports": [{"containerPort": 80, "hostPort": 8080}]}],
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "x"}}, "topologyKey": "kubernetes.io/hostname"}]}}}),
        ));
        ni.add_pod(a.clone());
        ni.add_pod(b.clone());
        ni.add_pod(c.clone());

        assert_eq!(ni.pod_count(), 3);
        assert_eq!(ni.requested().milli_cpu, 1250);
        assert_eq!(ni.requested().memory, 1 << 30);
        assert_eq!(ni.requested().scalar("example.com/gpu"), 1);
        // b has no requests: 100m and 200Mi for scoring; c has no memory request.
        assert_eq!(ni.non_zero_requested().milli_cpu, 1000 + 100 + 250);
        assert_eq!(ni.non_zero_requested().memory, (1 << 30) + 2 * resources::DEFAULT_MEMORY_REQUEST);
        assert_eq!(ni.pods_with_affinity(), 1);
        assert_eq!(ni.pods_with_required_anti_affinity(), 1);
        let http = HostPort { ip: BIND_ALL_IP.into(), protocol: "TCP".into(), port: 8080 };
        assert!(ni.used_ports().conflicts(&http));

        assert!(ni.remove_pod(&a));
        assert!(!ni.remove_pod(&a), "already removed");
        // c still holds 8080.
        assert!(ni.used_ports().conflicts(&http));
        assert!(ni.remove_pod(&c));
        assert!(!ni.used_ports().conflicts(&http));
        assert_eq!(ni.pods_with_affinity(), 0);
        assert_eq!(ni.pods_with_required_anti_affinity(), 0);
        assert!(ni.remove_pod(&b));
        assert_eq!(ni.pod_count(), 0);
        assert_eq!(ni.requested(), &Resources::default());
        assert_eq!(ni.non_zero_requested(), &Resources::default());
    }

    #[test]
    fn remove_matches_namespace_name_and_uid() {
        let mut ni = NodeInfo::new(Arc::new(node("n1", json!({"cpu": "1"}))));
        let mut p = pod("a", json!({"containers": []}));
        p.metadata.uid = Some("uid-1".into());
        ni.add_pod(Arc::new(p.clone()));

        let mut other_ns = p.clone();
        other_ns.metadata.namespace = Some("other".into());
        assert!(!ni.remove_pod(&other_ns));
        let mut recreated = p.clone();
        recreated.metadata.uid = Some("uid-2".into());
        assert!(!ni.remove_pod(&recreated));
        let mut no_uid = p.clone();
        no_uid.metadata.uid = None;
        assert!(ni.remove_pod(&no_uid));
    }

    #[test]
    fn readiness_and_allocatable_follow_the_node() {
        let mut n = node("n1", json!({"cpu": "2"}));
        let mut ni = NodeInfo::new(Arc::new(n.clone()));
        ni.add_pod(Arc::new(pod("a", json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}))));
        n.status = serde_json::from_value(
            json!({"allocatable": {"cpu": "8"}, "conditions": [{"type": "Ready", "status": "False"}]}),
        )
        .unwrap();
        ni.set_node(Arc::new(n.clone()));
        assert!(!ni.is_ready());
        assert_eq!(ni.allocatable().milli_cpu, 8000);
        assert_eq!(ni.requested().milli_cpu, 1000, "pods are kept");
        n.status = serde_json::from_value(json!({"allocatable": {"cpu": "8"}})).unwrap();
        ni.set_node(Arc::new(n));
        assert!(!ni.is_ready(), "no Ready condition is not ready");
    }

    #[test]
    fn host_port_conflicts_table() {
        let hp = |ip: &str, proto: &str, port: i32| HostPort { ip: ip.into(), protocol: proto.into(), port };
        // (used, wanted, conflict)
        let table = [
            (hp("0.0.0.0", "TCP", 80), hp("0.0.0.0", "TCP", 80), true),
            (hp("0.0.0.0", "TCP", 80), hp("0.0.0.0", "UDP", 80), false),
            (hp("0.0.0.0", "TCP", 80), hp("0.0.0.0", "TCP", 81), false),
            (hp("10.0.0.1", "TCP", 80), hp("0.0.0.0", "TCP", 80), true),
            (hp("0.0.0.0", "TCP", 80), hp("10.0.0.1", "TCP", 80), true),
            (hp("10.0.0.1", "TCP", 80), hp("10.0.0.1", "TCP", 80), true),
            (hp("10.0.0.1", "TCP", 80), hp("10.0.0.2", "TCP", 80), false),
            (hp("10.0.0.1", "SCTP", 80), hp("10.0.0.1", "TCP", 80), false),
        ];
        for (i, (used, want, expected)) in table.into_iter().enumerate() {
            let mut ports = UsedPorts::default();
            ports.add(&used);
            assert_eq!(ports.conflicts(&want), expected, "case {i}");
        }
    }

    #[test]
    fn host_ports_defaults_and_sidecars() {
        let p = pod(
            "a",
            json!({
                "initContainers": [
                    {"name": "init", "ports": [{"containerPort": 1, "hostPort": 1000}]},
                    {"name": "side", "restartPolicy": "Always", "ports": [{"containerPort": 2, "hostPort": 2000, "protocol": "UDP"}]},
                ],
                "containers": [{"name": "c", "ports": [
                    {"containerPort": 80, "hostPort": 8080, "hostIP": "10.0.0.1"},
                    {"containerPort": 81},
                ]}],
            }),
        );
        assert_eq!(
            host_ports(&p),
            vec![
                HostPort { ip: "0.0.0.0".into(), protocol: "UDP".into(), port: 2000 },
                HostPort { ip: "10.0.0.1".into(), protocol: "TCP".into(), port: 8080 },
            ]
        );
    }
}
