//! Container probes, as kubelet's prober runs them: one worker per probe of each running
//! container instance (startup, liveness, readiness), each on its own period. Workers publish
//! results here; a result that changes wakes the pod's worker, which reports the status that
//! follows (`started`, `ready`, the Ready and ContainersReady conditions) and kills a
//! container whose liveness or startup probe failed, to be restarted as `restartPolicy` says.
//!
//! A worker belongs to one container instance: a restarted container gets new workers with
//! fresh counts, and the workers of a stopped one end. Pods without probes have no [`Prober`]
//! and cost nothing here (simulated nodes run thousands of them).
//!
//! Not run: gRPC probes (a probe with only `grpc` fails, saying so) and probes of restartable
//! init containers (sidecars).

mod check;
mod tally;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Probe};
use keel_container::{self as cri, ContainerRuntime, ContainerState};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::Instrument;

use crate::reports::Reports;

pub use check::{Target, check};
pub use tally::Tally;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Startup, Kind::Liveness, Kind::Readiness];

    /// As kubelet names it in Events (`Liveness probe failed: …`).
    pub fn title(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }

    pub fn of(self, container: &Container) -> Option<&Probe> {
        match self {
            Kind::Startup => container.startup_probe.as_ref(),
            Kind::Liveness => container.liveness_probe.as_ref(),
            Kind::Readiness => container.readiness_probe.as_ref(),
        }
    }

    /// What a new container counts as before this probe said anything (kubelet's initial
    /// values): alive, not ready, not started.
    fn initial(self) -> Option<bool> {
        match self {
            Kind::Liveness => Some(true),
            Kind::Readiness => Some(false),
            Kind::Startup => None,
        }
    }
}

/// When and how often a probe runs, and how many results in a row change its verdict; absent
/// fields take Kubernetes' defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(probe: &Probe) -> Timing {
        let seconds =
            |v: Option<i32>, default: i32, min: i32| Duration::from_secs(v.unwrap_or(default).max(min) as u64);
        let count = |v: Option<i32>, default: i32| v.unwrap_or(default).max(1) as u32;
        Timing {
            initial_delay: seconds(probe.initial_delay_seconds, 0, 0),
            period: seconds(probe.period_seconds, 10, 1),
            timeout: seconds(probe.timeout_seconds, 1, 1),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, 3),
        }
    }
}

pub fn has_probes(spec: &PodSpec) -> bool {
    spec.containers.iter().any(|c| Kind::ALL.iter().any(|k| k.of(c).is_some()))
}

/// What the probes last said about one container instance.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdicts {
    container_id: String,
    /// The startup probe succeeded, or there is none.
    started: bool,
    /// The readiness probe's verdict (false until it succeeds).
    ready: bool,
    /// A liveness or startup probe failed: the instance is to be killed.
    failed: Option<Kind>,
}

/// Verdicts by container name, shared between a pod's worker and its probe workers.
pub(crate) struct Results {
    by_container: Mutex<HashMap<String, Verdicts>>,
    /// The pod worker's wake-up.
    wake: Arc<Notify>,
}

impl Results {
    fn started(&self, container: &str, id: &str) -> bool {
        self.by_container.lock().get(container).is_some_and(|v| v.container_id == id && v.started)
    }

    /// Records `kind`'s new verdict on instance `id`; wakes the pod worker when something
    /// changed, and only then.
    fn publish(&self, container: &str, id: &str, kind: Kind, ok: bool) {
        let mut all = self.by_container.lock();
        let Some(v) = all.get_mut(container).filter(|v| v.container_id == id) else { return };
        let before = v.clone();
        match kind {
            Kind::Startup => v.started = ok,
            Kind::Readiness => v.ready = ok,
            Kind::Liveness => {}
        }
        if !ok && kind != Kind::Readiness {
            v.failed = Some(kind);
        }
        if *v != before {
            drop(all);
            self.wake.notify_one();
        }
    }
}

/// What probe workers need from the node.
#[derive(Clone)]
pub struct Env {
    pub runtime: Arc<dyn ContainerRuntime>,
    pub reports: Arc<Reports>,
    /// Whether pod IPs lead anywhere from here (not on simulated nodes).
    pub pod_network: bool,
}

/// A running probe worker; dropping it stops it.
struct Worker {
    container_id: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The probes of one pod, owned by its pod worker: dropping it stops every probe worker.
pub struct Prober {
    results: Arc<Results>,
    workers: HashMap<(String, Kind), Worker>,
}

/// A container that failed a liveness or startup probe and is still running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub container: String,
    pub container_id: String,
    pub kind: Kind,
}

/// Readiness and started-ness of a pod's running containers as its probes found them, by
/// container name; a container without the probe is absent (ready, or started, once running).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Probed {
    pub ready: HashMap<String, bool>,
    pub started: HashMap<String, bool>,
}

/// The newest instance of `name` if it is running.
fn running<'a>(containers: &'a [cri::ContainerStatus], name: &str) -> Option<&'a cri::ContainerStatus> {
    containers
        .iter()
        .filter(|c| c.name == name)
        .max_by_key(|c| (c.attempt, c.created_at))
        .filter(|c| c.state == ContainerState::Running)
}

impl Prober {
    pub fn new(wake: Arc<Notify>) -> Prober {
        Prober {
            results: Arc::new(Results { by_container: Mutex::new(HashMap::new()), wake }),
            workers: HashMap::new(),
        }
    }

    /// Starts workers for running instances that have none and stops those whose instance
    /// is no longer the running one. `containers` are the instances in the pod's sandbox.
    pub fn sync(&mut self, env: &Env, pod: &Arc<Pod>, containers: &[cri::ContainerStatus], pod_ip: &str) {
        let Some(spec) = pod.spec.as_ref() else { return };
        let mut wanted: HashMap<(String, Kind), &cri::ContainerStatus> = HashMap::new();
        let mut current: HashMap<String, String> = HashMap::new();
        for container in &spec.containers {
            let Some(instance) = running(containers, &container.name) else { continue };
            for kind in Kind::ALL {
                if kind.of(container).is_some() {
                    wanted.insert((container.name.clone(), kind), instance);
                    current.insert(container.name.clone(), instance.id.clone());
                }
            }
        }
        self.workers.retain(|key, w| wanted.get(key).is_some_and(|i| i.id == w.container_id));
        {
            let mut results = self.results.by_container.lock();
            results.retain(|name, v| current.get(name) == Some(&v.container_id));
            for container in &spec.containers {
                let Some(id) = current.get(&container.name) else { continue };
                results.entry(container.name.clone()).or_insert_with(|| Verdicts {
                    container_id: id.clone(),
                    started: container.startup_probe.is_none(),
                    ready: Kind::Readiness.initial().unwrap_or(false),
                    failed: None,
                });
            }
        }
        for ((name, kind), instance) in wanted {
            if self.workers.contains_key(&(name.clone(), kind)) {
                continue;
            }
            let Some(container) = spec.containers.iter().find(|c| c.name == name) else { continue };
            let Some(probe) = kind.of(container) else { continue };
            let job = worker::Job {
                kind,
                probe: probe.clone(),
                timing: Timing::of(probe),
                container: container.clone(),
                container_id: instance.id.clone(),
                started_at: instance.started_at,
                pod: pod.clone(),
                target: Target { pod_ip: pod_ip.to_string(), network: env.pod_network },
                env: env.clone(),
                results: self.results.clone(),
            };
            let span =
                tracing::info_span!("probe", kind = kind.title(), container = %name, container_id = %instance.id);
            let task = tokio::spawn(worker::run(job).instrument(span));
            self.workers.insert((name, kind), Worker { container_id: instance.id.clone(), task });
        }
    }

    /// Running instances that failed their liveness or startup probe.
    pub fn failed(&self, containers: &[cri::ContainerStatus]) -> Vec<Failed> {
        self.results
            .by_container
            .lock()
            .iter()
            .filter_map(|(name, v)| {
                let kind = v.failed?;
                running(containers, name).filter(|c| c.id == v.container_id)?;
                Some(Failed { container: name.clone(), container_id: v.container_id.clone(), kind })
            })
            .collect()
    }
}

/// What the probes say about the running containers of `spec` for the pod's status. Without
/// a prober (none yet, or the pod is stopping), a probed container is neither started nor
/// ready: nothing has vouched for it.
pub fn probed(spec: &PodSpec, containers: &[cri::ContainerStatus], prober: Option<&Prober>) -> Probed {
    let mut out = Probed::default();
    if !has_probes(spec) {
        return out;
    }
    let results = prober.map(|p| p.results.by_container.lock());
    for container in &spec.containers {
        let verdict = running(containers, &container.name).and_then(|instance| {
            results.as_ref()?.get(&container.name).filter(|v| v.container_id == instance.id).cloned()
        });
        if container.startup_probe.is_some() {
            out.started.insert(container.name.clone(), verdict.as_ref().is_some_and(|v| v.started));
        }
        if container.readiness_probe.is_some() {
            out.ready.insert(container.name.clone(), verdict.as_ref().is_some_and(|v| v.ready));
        }
    }
    out
}

#[cfg(test)]
mod tests;
