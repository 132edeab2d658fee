//! Resource vectors and a pod's effective requests, as NodeResourcesFit computes them
//! (`component-helpers/resource.PodRequests`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::quantity;

pub const CPU: &str = "cpu";
pub const MEMORY: &str = "memory";
pub const EPHEMERAL_STORAGE: &str = "ephemeral-storage";
pub const PODS: &str = "pods";

/// Cpu assumed for scoring when a container requests none (`DefaultMilliCPURequest`).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Memory assumed for scoring when a container requests none (`DefaultMemoryRequest`, 200Mi).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// A resource vector: cpu in millicores, everything else in whole units (bytes, counts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    /// For allocatable: how many pods the node admits. Unused in requests.
    pub pods: i64,
    /// Extended resources (`example.com/gpu`), `hugepages-*` and `attachable-volumes-*`.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    /// Reads a resource list such as `status.allocatable`. Quantities that do not parse count
    /// as zero: the API server validated them, and a scheduler cannot reject a node.
    pub fn from_list(list: &BTreeMap<String, Quantity>) -> Self {
        let mut acc = Acc::default();
        acc.add_list(list, false);
        acc.into_resources()
    }

    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.saturating_add(other.ephemeral_storage);
        self.pods = self.pods.saturating_add(other.pods);
        for (name, v) in &other.scalar {
            let slot = self.scalar.entry(name.clone()).or_default();
            *slot = slot.saturating_add(*v);
        }
    }

    pub fn sub(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(other.milli_cpu);
        self.memory = self.memory.saturating_sub(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.saturating_sub(other.ephemeral_storage);
        self.pods = self.pods.saturating_sub(other.pods);
        for (name, v) in &other.scalar {
            if let Some(slot) = self.scalar.get_mut(name) {
                *slot = slot.saturating_sub(*v);
                // Dropping zeros keeps add/remove cycles from growing the map for ever.
                if *slot == 0 {
                    self.scalar.remove(name);
                }
            }
        }
    }

    /// True when nothing at all is requested (NodeResourcesFit then only checks the pod count).
    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0 && self.memory == 0 && self.ephemeral_storage == 0 && self.scalar.is_empty()
    }

    pub fn scalar(&self, name: &str) -> i64 {
        self.scalar.get(name).copied().unwrap_or(0)
    }
}

/// Resources counted in `Resources::scalar`: names with a domain (extended or prefixed
/// native resources), hugepages and attachable volumes (`schedutil.IsScalarResourceName`).
pub fn is_scalar_resource_name(name: &str) -> bool {
    name.contains('/') || name.starts_with("hugepages-") || name.starts_with("attachable-volumes-")
}

/// The pod's effective requests: the larger of (app containers + sidecars) and the peak
/// of any init container (with the sidecars started before it), plus pod overhead.
pub fn pod_requests(pod: &Pod) -> Resources {
    aggregate(pod, false).into_resources()
}

/// The same with unset cpu and memory container requests read as 100m and 200Mi: what
/// the LeastAllocated score and `NodeInfo::non_zero_requested` count, so that best-effort
/// pods still spread. Only `milli_cpu` and `memory` differ from [`pod_requests`].
pub fn pod_non_zero_requests(pod: &Pod) -> Resources {
    aggregate(pod, true).into_resources()
}

/// A resource list in nano-units, so sums and maxima are exact before rounding up.
#[derive(Debug, Clone, Default)]
struct Acc {
    cpu: i128,
    memory: i128,
    ephemeral_storage: i128,
    pods: i128,
    scalar: BTreeMap<String, i128>,
}

impl Acc {
    fn add_list(&mut self, list: &BTreeMap<String, Quantity>, defaults: bool) {
        for (name, q) in list {
            let v = quantity::parse_nanos(&q.0).unwrap_or(0);
            match name.as_str() {
                CPU => self.cpu = quantity::add(self.cpu, v),
                MEMORY => self.memory = quantity::add(self.memory, v),
                EPHEMERAL_STORAGE => self.ephemeral_storage = quantity::add(self.ephemeral_storage, v),
                PODS => self.pods = quantity::add(self.pods, v),
                n if is_scalar_resource_name(n) => {
                    let slot = self.scalar.entry(n.to_owned()).or_default();
                    *slot = quantity::add(*slot, v);
                }
                _ => {}
            }
        }
        // `NonMissingContainerRequests`: only a request that is absent is defaulted; an
        // explicit zero stays zero.
        if defaults {
            if !list.contains_key(CPU) {
                self.cpu = quantity::add(self.cpu, quantity::from_milli(DEFAULT_MILLI_CPU_REQUEST));
            }
            if !list.contains_key(MEMORY) {
                self.memory = quantity::add(self.memory, quantity::from_units(DEFAULT_MEMORY_REQUEST));
            }
        }
    }

    fn container(c: &Container, defaults: bool) -> Acc {
        let mut acc = Acc::default();
        let empty = BTreeMap::new();
        let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref()).unwrap_or(&empty);
        acc.add_list(requests, defaults);
        acc
    }

    fn add(&mut self, other: &Acc) {
        self.cpu = quantity::add(self.cpu, other.cpu);
        self.memory = quantity::add(self.memory, other.memory);
        self.ephemeral_storage = quantity::add(self.ephemeral_storage, other.ephemeral_storage);
        self.pods = quantity::add(self.pods, other.pods);
        for (name, v) in &other.scalar {
            let slot = self.scalar.entry(name.clone()).or_default();
            *slot = quantity::add(*slot, *v);
        }
    }

    fn max(&mut self, other: &Acc) {
        self.cpu = self.cpu.max(other.cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        self.pods = self.pods.max(other.pods);
        for (name, v) in &other.scalar {
            let slot = self.scalar.entry(name.clone()).or_insert(*v);
            *slot = (*slot).max(*v);
        }
    }

    fn into_resources(self) -> Resources {
        Resources {
            milli_cpu: quantity::to_milli(self.cpu),
            memory: quantity::to_units(self.memory),
            ephemeral_storage: quantity::to_units(self.ephemeral_storage),
            pods: quantity::to_units(self.pods),
            scalar: self
                .scalar
                .into_iter()
                .map(|(k, v)| (k, quantity::to_units(v)))
                // A zero request is skipped by the fit check; not storing it keeps
                // `is_zero` meaningful.
                .filter(|(_, v)| *v != 0)
                .collect(),
        }
    }
}

/// `AggregateContainerRequests` + overhead. Restartable init containers (sidecars) run
/// for the pod's whole life, so they add to the sum, and every later init container runs
/// next to the sidecars started before it.
fn aggregate(pod: &Pod, defaults: bool) -> Acc {
    let mut reqs = Acc::default();
    let Some(spec) = &pod.spec else { return reqs };
    for c in &spec.containers {
        reqs.add(&Acc::container(c, defaults));
    }
    let mut sidecars = Acc::default();
    let mut init_peak = Acc::default();
    for c in spec.init_containers.iter().flatten() {
        let own = Acc::container(c, defaults);
        let running = if c.restart_policy.as_deref() == Some("Always") {
            reqs.add(&own);
            sidecars.add(&own);
            sidecars.clone()
        } else {
            let mut with_sidecars = own;
            with_sidecars.add(&sidecars);
            with_sidecars
        };
        init_peak.max(&running);
    }
    reqs.max(&init_peak);
    if let Some(overhead) = &spec.overhead {
        reqs.add_list(overhead, false);
    }
    reqs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    fn res(cpu: i64, mem: i64) -> Resources {
        Resources { milli_cpu: cpu, memory: mem, ..Default::default() }
    }

    fn c(name: &str, requests: serde_json::Value) -> serde_json::Value {
        json!({"name": name, "resources": {"requests": requests}})
    }

    fn sidecar(name: &str, requests: serde_json::Value) -> serde_json::Value {
        json!({"name": name, "restartPolicy": "Always", "resources": {"requests": requests}})
    }

    #[test]
    fn pod_requests_table() {
        const GI: i64 = 1 << 30;
        let table = [
            ("no containers", json!({"containers": []}), res(0, 0), res(0, 0)),
            ("no requests", json!({"containers": [{"name": "a"}]}), res(0, 0), res(100, DEFAULT_MEMORY_REQUEST)),
            (
                "sum of containers",
                json!({"containers": [c("a", json!({"cpu": "250m", "memory": "1Gi"})), c("b", json!({"cpu": "0.5", "memory": "512Mi"}))]}),
                res(750, GI + GI / 2),
                res(750, GI + GI / 2),
            ),
            (
                "explicit zero is not defaulted",
                json!({"containers": [c("a", json!({"cpu": "0"}))]}),
                res(0, 0),
                res(0, DEFAULT_MEMORY_REQUEST),
            ),
            (
                // Kubernetes' own doc example: result cpu 3, memory 3G.
                "init containers take the max",
                json!({
                    "initContainers": [c("i1", json!({"cpu": "2", "memory": "1G"})), c("i2", json!({"cpu": "2", "memory": "3G"}))],
                    "containers": [c("a", json!({"cpu": "2", "memory": "1G"})), c("b", json!({"cpu": "1", "memory": "1G"}))],
                }),
                res(3000, 3_000_000_000),
                res(3000, 3_000_000_000),
            ),
            (
                "sidecar adds to the sum and runs beside later init containers",
                json!({
                    "initContainers": [
                        sidecar("s", json!({"cpu": "500m", "memory": "100Mi"})),
                        c("i", json!({"cpu": "2", "memory": "100Mi"})),
                    ],
                    "containers": [c("a", json!({"cpu": "1", "memory": "1Gi"}))],
                }),
                // app: 1 + 0.5 sidecar = 1.5 cpu; init i runs with sidecar: 2.5 cpu.
                res(2500, GI + 100 * 1024 * 1024),
                res(2500, GI + 100 * 1024 * 1024),
            ),
            (
                "init container before the sidecar does not see it",
                json!({
                    "initContainers": [
                        c("i", json!({"cpu": "2"})),
                        sidecar("s", json!({"cpu": "500m"})),
                    ],
                    "containers": [c("a", json!({"cpu": "1"}))],
                }),
                res(2000, 0),
                // Memory defaults to 200Mi per container: app 200Mi + sidecar 200Mi.
                res(2000, 2 * DEFAULT_MEMORY_REQUEST),
            ),
            (
                "overhead is added",
                json!({"containers": [c("a", json!({"cpu": "100m"}))], "overhead": {"cpu": "250m", "memory": "120Mi"}}),
                res(350, 120 * 1024 * 1024),
                res(350, 120 * 1024 * 1024 + DEFAULT_MEMORY_REQUEST),
            ),
            (
                "sub-millicore requests are summed before rounding up",
                json!({"containers": [c("a", json!({"cpu": "0.5m"})), c("b", json!({"cpu": "0.5m"}))]}),
                res(1, 0),
                res(1, 2 * DEFAULT_MEMORY_REQUEST),
            ),
        ];
        for (name, spec, want, want_non_zero) in table {
            let p = pod(spec);
            let got = pod_requests(&p);
            assert_eq!((got.milli_cpu, got.memory), (want.milli_cpu, want.memory), "{name}: requests");
            let nz = pod_non_zero_requests(&p);
            assert_eq!((nz.milli_cpu, nz.memory), (want_non_zero.milli_cpu, want_non_zero.memory), "{name}: non-zero");
        }
    }

    #[test]
    fn extended_and_hugepages_and_storage() {
        let p = pod(json!({
            "initContainers": [c("i", json!({"example.com/gpu": "2", "hugepages-2Mi": "4Mi"}))],
            "containers": [
                c("a", json!({"example.com/gpu": "1", "ephemeral-storage": "1Gi", "unknown-thing": "5"})),
                c("b", json!({"hugepages-2Mi": "2Mi", "example.com/zero": "0"})),
            ],
        }));
        let r = pod_requests(&p);
        let want: BTreeMap<String, i64> =
            [("example.com/gpu".to_string(), 2), ("hugepages-2Mi".to_string(), 4 * 1024 * 1024)].into_iter().collect();
        assert_eq!(r.scalar, want);
        assert_eq!(r.ephemeral_storage, 1 << 30);
        assert!(!r.is_zero());
    }

    #[test]
    fn allocatable_from_list() {
        let list: BTreeMap<String, Quantity> = serde_json::from_value(json!({
            "cpu": "3900m", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100G", "nvidia.com/gpu": "4"
        }))
        .unwrap();
        let r = Resources::from_list(&list);
        assert_eq!(r.milli_cpu, 3900);
        assert_eq!(r.memory, 16 << 30);
        assert_eq!(r.pods, 110);
        assert_eq!(r.ephemeral_storage, 100_000_000_000);
        assert_eq!(r.scalar("nvidia.com/gpu"), 4);
    }

    #[test]
    fn add_and_sub_round_trip() {
        let mut a =
            Resources { milli_cpu: 100, memory: 10, scalar: [("x/y".to_string(), 2)].into(), ..Default::default() };
        let b = a.clone();
        a.add(&b);
        assert_eq!(a.milli_cpu, 200);
        assert_eq!(a.scalar("x/y"), 4);
        a.sub(&b);
        a.sub(&b);
        assert_eq!(a, Resources::default());
    }
}
