//! A container runtime that keeps sandboxes and containers in memory: what `keel agent
//! --simulate N` runs pods on (as kwok and kubemark do), and what the agent's own tests drive.
//! Containers "run" from `start_container` until stopped. A start takes the configured delay;
//! a configured share of starts fail (exit code 1 at once). Pods can script their containers
//! with annotations, so Jobs, crash loops and the autoscaler can be exercised without
//! containerd:
//!
//! * `simulate.keel.dev/run-seconds`: containers exit after this long (default: never);
//! * `simulate.keel.dev/exit-code`: with this code (default 0);
//! * `simulate.keel.dev/cpu-millicores`, `simulate.keel.dev/memory-bytes`: the usage each
//!   container reports. These follow the pod: a changed annotation changes the usage of its
//!   running containers from then on (CPU time keeps accumulating, at the new rate);
//! * `simulate.keel.dev/exec-succeeds-after-seconds`, `simulate.keel.dev/exec-fails-after-seconds`:
//!   exec in a container (exec probes, preStop hooks) exits 0 only once it has run the first
//!   long and before it has run the second; outside that window it exits 1 saying why. So
//!   a slow start, a container that never gets ready or one that goes unhealthy can be
//!   scripted.
//!
//! Every image is present. Exec runs no command: its exit code follows the window above
//! (without the annotations a running container's exec exits 0, the simulated process being
//! healthy).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rand::Rng;

use crate::{
    ContainerConfig, ContainerRuntime, ContainerState, ContainerStats, ContainerStatus, ExecOutput, Image, Result,
    RuntimeError, RuntimeVersion, SandboxConfig, SandboxState, SandboxStatus, Streams, UnixNanos,
};

pub const RUN_SECONDS: &str = "simulate.keel.dev/run-seconds";
pub const EXIT_CODE: &str = "simulate.keel.dev/exit-code";
pub const CPU_MILLICORES: &str = "simulate.keel.dev/cpu-millicores";
pub const MEMORY_BYTES: &str = "simulate.keel.dev/memory-bytes";
pub const EXEC_SUCCEEDS_AFTER: &str = "simulate.keel.dev/exec-succeeds-after-seconds";
pub const EXEC_FAILS_AFTER: &str = "simulate.keel.dev/exec-fails-after-seconds";

#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// How long each container start takes.
    pub start_delay: Duration,
    /// Share of container starts that fail, 0.0 to 1.0.
    pub failure_rate: f64,
    /// The IP range pods get addresses from: `10.<node_index>.x.y`-style, unique per node.
    pub pod_cidr_prefix: String,
}

struct Sandbox {
    status: SandboxStatus,
    annotations: BTreeMap<String, String>,
}

struct Container {
    status: ContainerStatus,
    /// When a scripted container exits on its own.
    exits_at: Option<UnixNanos>,
    exit_code: i32,
    cpu_millicores: u64,
    memory_bytes: u64,
    /// Seconds of running before exec succeeds, and after which it fails again.
    exec_succeeds_after: Option<f64>,
    exec_fails_after: Option<f64>,
    /// CPU time used up to `cpu_since` (at earlier rates); `cpu_millicores` applies after it.
    cpu_nanos_before: u64,
    cpu_since: UnixNanos,
}

#[derive(Default)]
struct State {
    sandboxes: HashMap<String, Sandbox>,
    containers: HashMap<String, Container>,
}

pub struct SimulatedRuntime {
    settings: Settings,
    state: Mutex<State>,
    next_id: AtomicU64,
    next_ip: AtomicU64,
}

fn now_nanos() -> UnixNanos {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

fn annotation<T: std::str::FromStr>(annotations: &BTreeMap<String, String>, key: &str) -> Option<T> {
    annotations.get(key).and_then(|v| v.trim().parse().ok())
}

impl SimulatedRuntime {
    pub fn new(settings: Settings) -> SimulatedRuntime {
        SimulatedRuntime {
            settings,
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
            next_ip: AtomicU64::new(2),
        }
    }

    fn id(&self, what: &str) -> String {
        format!("sim-{what}-{:08x}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn pod_ip(&self) -> String {
        let n = self.next_ip.fetch_add(1, Ordering::Relaxed);
        let prefix = if self.settings.pod_cidr_prefix.is_empty() { "10.244.0" } else { &self.settings.pod_cidr_prefix };
        // Past 253 pods a node wraps around; simulated addresses only need to look like ones.
        format!("{prefix}.{}", 2 + (n - 2) % 253)
    }

    /// Scripted containers whose time is up exit now.
    fn settle(state: &mut State) {
        let now = now_nanos();
        for c in state.containers.values_mut() {
            if c.status.state == ContainerState::Running
                && let Some(at) = c.exits_at
                && now >= at
            {
                c.status.state = ContainerState::Exited;
                c.status.finished_at = at;
                c.status.exit_code = c.exit_code;
                c.status.reason = if c.exit_code == 0 { "Completed".into() } else { "Error".into() };
            }
        }
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for SimulatedRuntime {
    async fn version(&self) -> Result<RuntimeVersion> {
        Ok(RuntimeVersion {
            name: "simulated".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            api_version: "v1".into(),
        })
    }

    async fn run_pod_sandbox(&self, config: &SandboxConfig) -> Result<String> {
        let id = self.id("sandbox");
        let ip = if config.host_network { String::new() } else { self.pod_ip() };
        let status = SandboxStatus {
            id: id.clone(),
            name: config.name.clone(),
            namespace: config.namespace.clone(),
            uid: config.uid.clone(),
            attempt: config.attempt,
            state: SandboxState::Ready,
            created_at: now_nanos(),
            ip,
            labels: config.labels.clone(),
        };
        self.state.lock().sandboxes.insert(id.clone(), Sandbox { status, annotations: config.annotations.clone() });
        Ok(id)
    }

    async fn stop_pod_sandbox(&self, sandbox_id: &str) -> Result<()> {
        let mut state = self.state.lock();
        let now = now_nanos();
        for c in state.containers.values_mut().filter(|c| c.status.sandbox_id == sandbox_id) {
            if c.status.state == ContainerState::Running {
                c.status.state = ContainerState::Exited;
                c.status.finished_at = now;
                c.status.exit_code = 137;
                c.status.reason = "Error".into();
            }
        }
        if let Some(s) = state.sandboxes.get_mut(sandbox_id) {
            s.status.state = SandboxState::NotReady;
        }
        Ok(())
    }

    async fn remove_pod_sandbox(&self, sandbox_id: &str) -> Result<()> {
        let mut state = self.state.lock();
        state.containers.retain(|_, c| c.status.sandbox_id != sandbox_id);
        state.sandboxes.remove(sandbox_id);
        Ok(())
    }

    async fn list_pod_sandboxes(&self) -> Result<Vec<SandboxStatus>> {
        Ok(self.state.lock().sandboxes.values().map(|s| s.status.clone()).collect())
    }

    async fn image_status(&self, image: &str) -> Result<Option<Image>> {
        Ok(Some(Image { id: format!("sha256:simulated-{image}"), names: vec![image.to_string()], size_bytes: 0 }))
    }

    async fn pull_image(&self, image: &str) -> Result<String> {
        Ok(format!("sha256:simulated-{image}"))
    }

    async fn list_images(&self) -> Result<Vec<Image>> {
        Ok(Vec::new())
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        _sandbox: &SandboxConfig,
    ) -> Result<String> {
        let mut state = self.state.lock();
        let Some(sandbox) = state.sandboxes.get(sandbox_id) else {
            return Err(RuntimeError::NotFound(format!("sandbox {sandbox_id}")));
        };
        if sandbox.status.state != SandboxState::Ready {
            return Err(RuntimeError::Invalid(format!("sandbox {sandbox_id} is not ready")));
        }
        let annotations = sandbox.annotations.clone();
        let id = self.id("container");
        let status = ContainerStatus {
            id: id.clone(),
            sandbox_id: sandbox_id.to_string(),
            name: config.name.clone(),
            attempt: config.attempt,
            state: ContainerState::Created,
            created_at: now_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            image: config.image.clone(),
            image_ref: format!("sha256:simulated-{}", config.image),
            labels: config.labels.clone(),
        };
        let container = Container {
            status,
            exits_at: None,
            exit_code: annotation(&annotations, EXIT_CODE).unwrap_or(0),
            cpu_millicores: annotation(&annotations, CPU_MILLICORES).unwrap_or(0),
            memory_bytes: annotation(&annotations, MEMORY_BYTES).unwrap_or(0),
            exec_succeeds_after: annotation(&annotations, EXEC_SUCCEEDS_AFTER),
            exec_fails_after: annotation(&annotations, EXEC_FAILS_AFTER),
            cpu_nanos_before: 0,
            cpu_since: 0,
        };
        let run_seconds: Option<f64> = annotation(&annotations, RUN_SECONDS);
        state.containers.insert(id.clone(), container);
        if let Some(c) = state.containers.get_mut(&id) {
            // Remembered as a negative offset until the start fixes the time it counts from.
            c.exits_at = run_seconds.map(|s| -((s * 1e9) as i64) - 1);
        }
        Ok(id)
    }

    async fn start_container(&self, container_id: &str) -> Result<()> {
        if !self.settings.start_delay.is_zero() {
            tokio::time::sleep(self.settings.start_delay).await;
        }
        let fails = self.settings.failure_rate > 0.0 && rand::rng().random_bool(self.settings.failure_rate.min(1.0));
        let mut state = self.state.lock();
        let Some(c) = state.containers.get_mut(container_id) else {
            return Err(RuntimeError::NotFound(format!("container {container_id}")));
        };
        if c.status.state != ContainerState::Created {
            return Err(RuntimeError::Invalid(format!("container {container_id} is not in the created state")));
        }
        let now = now_nanos();
        c.status.started_at = now;
        if fails {
            c.status.state = ContainerState::Exited;
            c.status.finished_at = now;
            c.status.exit_code = 1;
            c.status.reason = "Error".into();
            c.status.message = "simulated start failure".into();
        } else {
            c.status.state = ContainerState::Running;
            c.cpu_since = now;
            c.exits_at = c.exits_at.map(|offset| now + (-offset - 1));
        }
        Ok(())
    }

    async fn stop_container(&self, container_id: &str, _timeout: Duration) -> Result<()> {
        let mut state = self.state.lock();
        Self::settle(&mut state);
        if let Some(c) = state.containers.get_mut(container_id)
            && c.status.state == ContainerState::Running
        {
            c.status.state = ContainerState::Exited;
            c.status.finished_at = now_nanos();
            // A simulated process ends on SIGTERM, as a well-behaved one does.
            c.status.exit_code = 143;
            c.status.reason = "Error".into();
        }
        Ok(())
    }

    async fn remove_container(&self, container_id: &str) -> Result<()> {
        self.state.lock().containers.remove(container_id);
        Ok(())
    }

    async fn list_containers(&self) -> Result<Vec<ContainerStatus>> {
        let mut state = self.state.lock();
        Self::settle(&mut state);
        Ok(state.containers.values().map(|c| c.status.clone()).collect())
    }

    async fn exec_sync(&self, container_id: &str, _command: &[String], _timeout: Duration) -> Result<ExecOutput> {
        let mut state = self.state.lock();
        Self::settle(&mut state);
        let c = match state.containers.get(container_id) {
            Some(c) if c.status.state == ContainerState::Running => c,
            Some(_) => return Err(RuntimeError::Invalid(format!("container {container_id} is not running"))),
            None => return Err(RuntimeError::NotFound(format!("container {container_id}"))),
        };
        let ran = (now_nanos() - c.status.started_at).max(0) as f64 / 1e9;
        let failure = |why: String| ExecOutput { exit_code: 1, stdout: Vec::new(), stderr: why.into_bytes() };
        if let Some(after) = c.exec_succeeds_after.filter(|after| ran < *after) {
            return Ok(failure(format!(
                "simulated: exec fails until the container has run {after}s ({EXEC_SUCCEEDS_AFTER})"
            )));
        }
        if let Some(after) = c.exec_fails_after.filter(|after| ran >= *after) {
            return Ok(failure(format!(
                "simulated: exec fails once the container has run {after}s ({EXEC_FAILS_AFTER})"
            )));
        }
        Ok(ExecOutput::default())
    }

    async fn exec(&self, _container_id: &str, _command: &[String], _streams: &Streams) -> Result<String> {
        Err(RuntimeError::Invalid("simulated containers run no processes to exec into".into()))
    }

    async fn attach(&self, _container_id: &str, _streams: &Streams) -> Result<String> {
        Err(RuntimeError::Invalid("simulated containers run no processes to attach to".into()))
    }

    async fn port_forward(&self, _sandbox_id: &str, _port: u16) -> Result<String> {
        Err(RuntimeError::Invalid("simulated pods have no network namespace to forward a port into".into()))
    }

    async fn container_stats(&self) -> Result<Vec<ContainerStats>> {
        let mut state = self.state.lock();
        Self::settle(&mut state);
        let now = now_nanos();
        Ok(state
            .containers
            .values()
            .filter(|c| c.status.state == ContainerState::Running)
            .map(|c| ContainerStats {
                id: c.status.id.clone(),
                timestamp: now,
                cpu_usage_nanos: cpu_used(c, now),
                memory_working_set_bytes: c.memory_bytes,
            })
            .collect())
    }

    async fn pod_annotations_changed(&self, sandbox_id: &str, annotations: &BTreeMap<String, String>) -> Result<()> {
        let mut state = self.state.lock();
        let Some(sandbox) = state.sandboxes.get_mut(sandbox_id) else {
            return Err(RuntimeError::NotFound(format!("sandbox {sandbox_id}")));
        };
        if &sandbox.annotations == annotations {
            return Ok(());
        }
        sandbox.annotations = annotations.clone();
        let cpu: u64 = annotation(annotations, CPU_MILLICORES).unwrap_or(0);
        let memory: u64 = annotation(annotations, MEMORY_BYTES).unwrap_or(0);
        let now = now_nanos();
        for c in state.containers.values_mut().filter(|c| c.status.sandbox_id == sandbox_id) {
            if c.status.state == ContainerState::Running {
                // What ran at the old rate stays counted: CPU time is cumulative.
                c.cpu_nanos_before = cpu_used(c, now);
                c.cpu_since = now;
            }
            c.cpu_millicores = cpu;
            c.memory_bytes = memory;
        }
        Ok(())
    }
}

/// Cumulative CPU time of a running container at `now`.
fn cpu_used(c: &Container, now: UnixNanos) -> u64 {
    let ran = (now - c.cpu_since).max(0) as u64;
    // A millicore is a thousandth of a second of CPU per second.
    c.cpu_nanos_before + (u128::from(ran) * u128::from(c.cpu_millicores) / 1000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ContainerConfig;

    fn sandbox(annotations: &[(&str, &str)]) -> SandboxConfig {
        SandboxConfig {
            name: "p".into(),
            namespace: "default".into(),
            uid: "u".into(),
            annotations: annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    async fn start(rt: &SimulatedRuntime, config: &SandboxConfig) -> (String, String) {
        let sandbox = rt.run_pod_sandbox(config).await.expect("sandbox");
        let c = ContainerConfig { name: "c".into(), image: "busybox".into(), ..Default::default() };
        let id = rt.create_container(&sandbox, &c, config).await.expect("create");
        rt.start_container(&id).await.expect("start");
        (sandbox, id)
    }

    fn state_of(list: &[ContainerStatus], id: &str) -> ContainerStatus {
        list.iter().find(|c| c.id == id).cloned().expect("listed")
    }

    #[tokio::test]
    async fn containers_run_until_stopped_and_sandboxes_take_them_along() {
        let rt = SimulatedRuntime::new(Settings::default());
        let config = sandbox(&[]);
        let (sandbox, id) = start(&rt, &config).await;
        let listed = rt.list_containers().await.expect("list");
        assert_eq!(state_of(&listed, &id).state, ContainerState::Running);
        assert!(rt.list_pod_sandboxes().await.expect("sandboxes")[0].ip.starts_with("10.244.0."));
        rt.stop_container(&id, Duration::from_secs(1)).await.expect("stop");
        let stopped = state_of(&rt.list_containers().await.expect("list"), &id);
        assert_eq!((stopped.state, stopped.exit_code), (ContainerState::Exited, 143));
        rt.remove_pod_sandbox(&sandbox).await.expect("remove");
        assert!(rt.list_containers().await.expect("list").is_empty());
        assert!(rt.create_container(&sandbox, &ContainerConfig::default(), &config).await.is_err());
    }

    #[tokio::test]
    async fn scripted_containers_exit_with_their_code() {
        let rt = SimulatedRuntime::new(Settings::default());
        let config = sandbox(&[(RUN_SECONDS, "0.05"), (EXIT_CODE, "3")]);
        let (_, id) = start(&rt, &config).await;
        assert_eq!(state_of(&rt.list_containers().await.expect("list"), &id).state, ContainerState::Running);
        tokio::time::sleep(Duration::from_millis(80)).await;
        let done = state_of(&rt.list_containers().await.expect("list"), &id);
        assert_eq!((done.state, done.exit_code, done.reason.as_str()), (ContainerState::Exited, 3, "Error"));
        assert!(done.finished_at >= done.started_at + 50_000_000);
    }

    #[tokio::test]
    async fn a_failure_rate_of_one_fails_every_start() {
        let rt = SimulatedRuntime::new(Settings { failure_rate: 1.0, ..Default::default() });
        let (_, id) = start(&rt, &sandbox(&[])).await;
        let failed = state_of(&rt.list_containers().await.expect("list"), &id);
        assert_eq!((failed.state, failed.exit_code), (ContainerState::Exited, 1));
    }

    #[tokio::test]
    async fn usage_follows_the_annotations() {
        let rt = SimulatedRuntime::new(Settings::default());
        let (_, _) = start(&rt, &sandbox(&[(CPU_MILLICORES, "500"), (MEMORY_BYTES, "1048576")])).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let stats = rt.container_stats().await.expect("stats");
        assert_eq!(stats[0].memory_working_set_bytes, 1_048_576);
        // Half a core for at least 20 ms: at least 10 ms of CPU time.
        assert!(stats[0].cpu_usage_nanos >= 10_000_000, "{stats:?}");
    }

    #[tokio::test]
    async fn exec_succeeds_only_inside_the_scripted_window() {
        let rt = SimulatedRuntime::new(Settings::default());
        let (_, id) = start(&rt, &sandbox(&[(EXEC_SUCCEEDS_AFTER, "0.05"), (EXEC_FAILS_AFTER, "0.15")])).await;
        let exec = || async { rt.exec_sync(&id, &["true".into()], Duration::from_secs(1)).await.expect("exec") };
        let early = exec().await;
        assert_eq!(early.exit_code, 1);
        assert!(String::from_utf8_lossy(&early.stderr).contains(EXEC_SUCCEEDS_AFTER), "{early:?}");
        tokio::time::sleep(Duration::from_millis(70)).await;
        assert_eq!(exec().await.exit_code, 0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let late = exec().await;
        assert_eq!(late.exit_code, 1);
        assert!(String::from_utf8_lossy(&late.stderr).contains(EXEC_FAILS_AFTER), "{late:?}");
        rt.stop_container(&id, Duration::from_secs(1)).await.expect("stop");
        assert!(rt.exec_sync(&id, &[], Duration::from_secs(1)).await.is_err());
    }

    #[tokio::test]
    async fn changed_annotations_change_the_rate_not_what_was_used() {
        let rt = SimulatedRuntime::new(Settings::default());
        let (sandbox, _) = start(&rt, &sandbox(&[(CPU_MILLICORES, "1000"), (MEMORY_BYTES, "100")])).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let quiet: BTreeMap<String, String> =
            [(CPU_MILLICORES.to_string(), "0".to_string()), (MEMORY_BYTES.to_string(), "50".to_string())].into();
        rt.pod_annotations_changed(&sandbox, &quiet).await.expect("changed");
        let before = rt.container_stats().await.expect("stats")[0].clone();
        assert!(before.cpu_usage_nanos >= 30_000_000, "{before:?}");
        assert_eq!(before.memory_working_set_bytes, 50);
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Idle since the change: the cumulative figure stands still.
        assert_eq!(rt.container_stats().await.expect("stats")[0].cpu_usage_nanos, before.cpu_usage_nanos);
    }
}
