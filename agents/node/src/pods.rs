//! The pod sync loop: one worker per pod, woken when the member sends a new version of the
//! pod, when the runtime shows one of its containers changed (the relister), or when a timer
//! it set runs out (a back-off ends). Each turn compares the pod's spec with what the runtime
//! has and takes the next steps kubelet would: a sandbox, init containers one at a time, the
//! app containers, restarts after exponential back-off, graceful termination; starts and stops
//! the probe workers of its running containers and kills those whose liveness or startup
//! probe failed (see [`crate::probes`]; a changed probe verdict wakes the worker too); then
//! reports the status that results. Level-triggered: a turn works from the current state
//! alone, so an agent restarted mid-way carries on.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use keel_container::{
    self as cri, ContainerConfig, ContainerRuntime, ContainerState, RuntimeError, SandboxConfig, SandboxState,
};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::Instrument;

use crate::env::environment;
use crate::objects::Objects;
use crate::probes::{self, Prober};
use crate::reports::Reports;
use crate::status::{Observed, Waiting, pod_status};

pub const LABEL_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_CONTAINER: &str = "io.kubernetes.container.name";

/// How often a pod is looked at again when nothing wakes it.
const RESYNC: Duration = Duration::from_secs(60);
/// A container that ran this long before exiting starts its back-off afresh (kubelet: 10 min).
const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// What the pod workers of one node share.
pub struct Context {
    pub node: String,
    pub host_ip: String,
    pub runtime: Arc<dyn ContainerRuntime>,
    /// Scheme of container ids in pod status (`containerd`, `sim`).
    pub runtime_scheme: String,
    pub objects: Arc<Objects>,
    pub reports: Arc<Reports>,
    pub allocatable: BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    pub pods_root: std::path::PathBuf,
    /// Tokens for projected serviceAccountToken sources.
    pub tokens: Arc<crate::tokens::TokenManager>,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Whether privileged containers may run (kubelet's --allow-privileged).
    pub allow_privileged: bool,
    /// Whether kubelet's per-container Events (Pulled, Created, Started, Killing) are sent.
    pub container_events: bool,
    /// Whether volumes are set up on disk.
    pub volumes: bool,
    /// Whether pod IPs can be reached from the agent (httpGet and tcpSocket probes); not on
    /// simulated nodes.
    pub pod_network: bool,
}

impl Context {
    /// The runtime's containers of the pod `uid`, whatever their state.
    pub(crate) async fn containers_of(&self, uid: &str) -> cri::Result<Vec<cri::ContainerStatus>> {
        let mut containers = self.runtime.list_containers().await?;
        containers.retain(|c| c.labels.get(LABEL_UID).map(String::as_str) == Some(uid));
        Ok(containers)
    }

    /// The runtime's sandboxes of the pod `uid`, whatever their state.
    pub(crate) async fn sandboxes_of(&self, uid: &str) -> cri::Result<Vec<cri::SandboxStatus>> {
        let mut sandboxes = self.runtime.list_pod_sandboxes().await?;
        sandboxes.retain(|s| s.uid == uid);
        Ok(sandboxes)
    }
}

/// The workers of one node.
pub struct PodWorkers {
    ctx: Arc<Context>,
    workers: Mutex<HashMap<String, Arc<Notify>>>,
}

struct Backoff {
    delay: Duration,
    until: Option<Instant>,
    /// The exit this back-off was computed for.
    seen_exit: String,
}

#[derive(Default)]
struct WorkerState {
    backoff: HashMap<String, Backoff>,
    waiting: HashMap<String, Waiting>,
    /// The pod's probe workers; none for a pod without probes (or while it stops).
    prober: Option<Prober>,
    /// This worker's wake-up, for probe workers to call on a changed verdict.
    wake: Arc<Notify>,
}

enum Next {
    /// The pod is gone and so is everything the runtime had for it.
    Gone,
    After(Duration),
}

impl PodWorkers {
    pub fn new(ctx: Arc<Context>) -> Arc<PodWorkers> {
        Arc::new(PodWorkers { ctx, workers: Mutex::new(HashMap::new()) })
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Wakes the worker of `uid`, starting one if there is none.
    pub fn wake(self: &Arc<Self>, uid: &str) {
        if uid.is_empty() {
            return;
        }
        let mut workers = self.workers.lock();
        if let Some(wake) = workers.get(uid) {
            wake.notify_one();
            return;
        }
        let wake = Arc::new(Notify::new());
        workers.insert(uid.to_string(), wake.clone());
        drop(workers);
        let this = self.clone();
        let uid = uid.to_string();
        let span = tracing::info_span!("pod_worker", node = %self.ctx.node, pod_uid = %uid);
        tokio::spawn(async move { this.work(uid, wake).await }.instrument(span));
    }

    pub fn wake_all(self: &Arc<Self>) {
        let uids: Vec<String> = self.workers.lock().keys().cloned().collect();
        for uid in uids {
            self.wake(&uid);
        }
    }

    pub fn count(&self) -> usize {
        self.workers.lock().len()
    }

    async fn work(self: Arc<Self>, uid: String, wake: Arc<Notify>) {
        let mut state = WorkerState { wake: wake.clone(), ..WorkerState::default() };
        loop {
            let pod = self.ctx.objects.pod_by_uid(&uid);
            let next = match sync(&self.ctx, &uid, pod.as_ref(), &mut state).await {
                Ok(Next::Gone) => break,
                Ok(Next::After(delay)) => delay,
                Err(e) => {
                    tracing::warn!(error = %e, "pod sync failed; trying again");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(next) => {}
            }
        }
        self.ctx.reports.forget(&uid);
        self.workers.lock().remove(&uid);
    }

    /// The relister (kubelet's PLEG): lists the runtime's containers every `interval` and
    /// wakes the workers of pods whose containers changed, and a worker for containers of a
    /// pod the node no longer has (left from before a restart).
    pub async fn relist(self: Arc<Self>, interval: Duration) {
        let mut last: HashMap<String, Vec<(String, ContainerState)>> = HashMap::new();
        loop {
            tokio::time::sleep(interval).await;
            let Ok(containers) = self.ctx.runtime.list_containers().await else { continue };
            let mut now: HashMap<String, Vec<(String, ContainerState)>> = HashMap::new();
            for c in containers {
                if let Some(uid) = c.labels.get(LABEL_UID) {
                    now.entry(uid.clone()).or_default().push((c.id.clone(), c.state));
                }
            }
            for list in now.values_mut() {
                list.sort_by(|a, b| a.0.cmp(&b.0));
            }
            let in_sync = self.ctx.objects.in_sync();
            for (uid, list) in &now {
                let known = self.workers.lock().contains_key(uid);
                if last.get(uid) != Some(list) || (!known && in_sync) {
                    self.wake(uid);
                }
            }
            last = now;
        }
    }
}

fn labels_of(pod: &Pod) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = pod.metadata.labels.clone().unwrap_or_default();
    labels.insert(LABEL_UID.into(), pod.metadata.uid.clone().unwrap_or_default());
    labels.insert(LABEL_NAME.into(), pod.metadata.name.clone().unwrap_or_default());
    labels.insert(LABEL_NAMESPACE.into(), pod.metadata.namespace.clone().unwrap_or_default());
    labels
}

fn sandbox_config(ctx: &Context, pod: &Pod, attempt: u32) -> SandboxConfig {
    let spec = pod.spec.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let mut port_mappings = Vec::new();
    for c in &spec.containers {
        for p in c.ports.iter().flatten() {
            if let Some(host_port) = p.host_port.filter(|h| *h > 0) {
                port_mappings.push(cri::PortMapping {
                    protocol: match p.protocol.as_deref() {
                        Some("UDP") => cri::Protocol::Udp,
                        Some("SCTP") => cri::Protocol::Sctp,
                        _ => cri::Protocol::Tcp,
                    },
                    container_port: p.container_port,
                    host_port,
                    host_ip: p.host_ip.clone().unwrap_or_default(),
                });
            }
        }
    }
    SandboxConfig {
        hostname: spec.hostname.clone().unwrap_or_else(|| name.chars().take(63).collect()),
        log_directory: ctx.pods_root.join(format!("{namespace}_{name}_{uid}")),
        name,
        namespace,
        uid,
        attempt,
        dns: cri::DnsConfig::default(),
        port_mappings,
        host_network: spec.host_network.unwrap_or(false),
        labels: labels_of(pod),
        annotations: pod.metadata.annotations.clone().unwrap_or_default(),
        cgroup_parent: String::new(),
    }
}

fn field_path(container: &Container, init: bool) -> String {
    format!("spec.{}{{{}}}", if init { "initContainers" } else { "containers" }, container.name)
}

fn resources_of(container: &Container) -> cri::Resources {
    let limits = container.resources.as_ref().and_then(|r| r.limits.clone()).unwrap_or_default();
    let requests = container.resources.as_ref().and_then(|r| r.requests.clone()).unwrap_or_default();
    let cores = |q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
        q.and_then(|q| crate::env::parse_quantity(&q.0))
    };
    let mut out = cri::Resources::default();
    // kubelet's cpu shares (1024 per core, at least 2) and CFS quota over a 100 ms period.
    let request = cores(requests.get("cpu")).or_else(|| cores(limits.get("cpu")));
    out.cpu_shares = request.map_or(2, |c| ((c * 1024.0) as i64).max(2));
    if let Some(limit) = cores(limits.get("cpu")) {
        out.cpu_period = 100_000;
        out.cpu_quota = ((limit * 100_000.0) as i64).max(1000);
    }
    if let Some(memory) = cores(limits.get("memory")) {
        out.memory_limit_in_bytes = memory as i64;
    }
    out
}

fn security_of(ctx: &Context, pod: &Pod, container: &Container) -> Result<cri::SecurityContext, String> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.clone()).unwrap_or_default();
    let sc = container.security_context.clone().unwrap_or_default();
    let privileged = sc.privileged.unwrap_or(false);
    if privileged && !ctx.allow_privileged {
        return Err("privileged containers are not allowed on this node (keel agent --allow-privileged)".into());
    }
    Ok(cri::SecurityContext {
        run_as_user: sc.run_as_user.or(pod_sc.run_as_user),
        run_as_group: sc.run_as_group.or(pod_sc.run_as_group),
        readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
        privileged,
        add_capabilities: sc.capabilities.as_ref().and_then(|c| c.add.clone()).unwrap_or_default(),
        drop_capabilities: sc.capabilities.as_ref().and_then(|c| c.drop.clone()).unwrap_or_default(),
    })
}

/// Pulls as `imagePullPolicy` says; the default is Always for `:latest` or no tag, else
/// IfNotPresent, as kube-apiserver defaults it.
async fn ensure_image(ctx: &Context, container: &Container) -> Result<String, Waiting> {
    let image = container.image.clone().unwrap_or_default();
    let policy = container.image_pull_policy.clone().unwrap_or_else(|| {
        let tag = image.rsplit('/').next().and_then(|last| last.split_once(':')).map(|(_, t)| t.to_string());
        if image.contains('@') || tag.as_deref().is_some_and(|t| t != "latest") { "IfNotPresent" } else { "Always" }
            .to_string()
    });
    let present = ctx
        .runtime
        .image_status(&image)
        .await
        .map_err(|e| Waiting { reason: "ErrImagePull".into(), message: format!("image status of {image}: {e}") })?;
    match (policy.as_str(), present) {
        ("Never", Some(found)) | ("IfNotPresent", Some(found)) => Ok(found.id),
        ("Never", None) => Err(Waiting {
            reason: "ErrImageNeverPull".into(),
            message: format!("Container image \"{image}\" is not present with pull policy of Never"),
        }),
        _ => ctx.runtime.pull_image(&image).await.map_err(|e| Waiting {
            reason: "ErrImagePull".into(),
            message: format!("failed to pull image \"{image}\": {e}"),
        }),
    }
}

/// Creates and starts one container; a refusal becomes the reason it waits.
#[allow(clippy::too_many_arguments)]
async fn start_container(
    ctx: &Context,
    pod: &Pod,
    container: &Container,
    init: bool,
    sandbox_id: &str,
    sandbox: &SandboxConfig,
    attempt: u32,
    volume_paths: &HashMap<String, std::path::PathBuf>,
) -> Result<(), Waiting> {
    let path = Some(field_path(container, init));
    let image = ensure_image(ctx, container).await.inspect_err(|w| {
        ctx.reports.event(pod, path.clone(), true, "Failed", w.message.clone());
    })?;
    if ctx.container_events {
        let image_name = container.image.clone().unwrap_or_default();
        let message = format!("Container image \"{image_name}\" already present on machine");
        ctx.reports.event(pod, path.clone(), false, "Pulled", message);
    }
    let config_error = |message: String| {
        ctx.reports.event(pod, path.clone(), true, "Failed", format!("Error: {message}"));
        Waiting { reason: "CreateContainerConfigError".into(), message }
    };
    let envs =
        environment(pod, container, &ctx.objects, &ctx.host_ip, &ctx.allocatable).map_err(|e| config_error(e.0))?;
    let security = security_of(ctx, pod, container).map_err(config_error)?;
    let mounts = if ctx.volumes {
        crate::volumes::mounts(container, volume_paths).map_err(|e| config_error(e.0))?
    } else {
        Vec::new()
    };
    let mut labels = labels_of(pod);
    labels.retain(|k, _| k.starts_with("io.kubernetes."));
    labels.insert(LABEL_CONTAINER.into(), container.name.clone());
    let config = ContainerConfig {
        name: container.name.clone(),
        attempt,
        image: if image.is_empty() { container.image.clone().unwrap_or_default() } else { image },
        command: container.command.clone().unwrap_or_default(),
        args: container.args.clone().unwrap_or_default(),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs,
        mounts,
        log_path: format!("{}/{attempt}.log", container.name),
        stdin: container.stdin.unwrap_or(false),
        stdin_once: container.stdin_once.unwrap_or(false),
        tty: container.tty.unwrap_or(false),
        labels,
        annotations: BTreeMap::new(),
        resources: resources_of(container),
        security,
    };
    let id = ctx.runtime.create_container(sandbox_id, &config, sandbox).await.map_err(|e| {
        ctx.reports.event(pod, path.clone(), true, "Failed", format!("Error: {e}"));
        Waiting { reason: "CreateContainerError".into(), message: e.to_string() }
    })?;
    if ctx.container_events {
        ctx.reports.event(pod, path.clone(), false, "Created", format!("Created container {}", container.name));
    }
    ctx.runtime.start_container(&id).await.map_err(|e| {
        ctx.reports.event(pod, path.clone(), true, "Failed", format!("Error: {e}"));
        Waiting { reason: "RunContainerError".into(), message: e.to_string() }
    })?;
    if ctx.container_events {
        ctx.reports.event(pod, path, false, "Started", format!("Started container {}", container.name));
    }
    Ok(())
}

fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// Whether an exited container may be restarted now; if not, how long until it may.
fn backoff_wait(ctx: &Context, state: &mut WorkerState, exited: &cri::ContainerStatus) -> Option<Duration> {
    let ran = Duration::from_nanos((exited.finished_at - exited.started_at).max(0) as u64);
    let now = Instant::now();
    let entry = state.backoff.entry(exited.name.clone()).or_insert(Backoff {
        delay: ctx.backoff_initial,
        until: None,
        seen_exit: String::new(),
    });
    if entry.seen_exit != exited.id {
        // A new exit. The first restart is immediate; each later one waits twice as long as
        // the one before, up to the maximum; a long run resets the count.
        if ran >= BACKOFF_RESET {
            entry.delay = ctx.backoff_initial;
            entry.until = None;
        } else if exited.attempt > 0 || entry.until.is_some() {
            entry.until = Some(now + entry.delay);
            entry.delay = (entry.delay * 2).min(ctx.backoff_max);
        }
        entry.seen_exit = exited.id.clone();
    }
    entry.until.and_then(|until| until.checked_duration_since(now)).filter(|d| !d.is_zero())
}

async fn stop_all(
    ctx: &Context,
    containers: &[cri::ContainerStatus],
    timeout: Duration,
    pod: Option<&Pod>,
) -> cri::Result<()> {
    let stops = containers.iter().filter(|c| c.state == ContainerState::Running).map(|c| async move {
        if let Some(pod) = pod
            && ctx.container_events
        {
            ctx.reports.event(pod, None, false, "Killing", format!("Stopping container {}", c.name));
        }
        ctx.runtime.stop_container(&c.id, timeout).await
    });
    for result in futures::future::join_all(stops).await {
        result?;
    }
    Ok(())
}

/// Runs exec preStop hooks of running containers, each within the grace period.
async fn pre_stop(ctx: &Context, pod: &Pod, containers: &[cri::ContainerStatus], grace: Duration) {
    let spec = pod.spec.clone().unwrap_or_default();
    let hooks = spec.containers.iter().filter_map(|c| {
        let command = c.lifecycle.as_ref()?.pre_stop.as_ref()?.exec.as_ref()?.command.clone()?;
        let running = containers.iter().find(|s| s.name == c.name && s.state == ContainerState::Running)?;
        Some((running.id.clone(), command))
    });
    let runs = hooks.map(|(id, command)| async move {
        if let Err(e) = ctx.runtime.exec_sync(&id, &command, grace).await {
            tracing::info!(container = %id, error = %e, "preStop hook failed");
        }
    });
    futures::future::join_all(runs).await;
}

async fn remove_everything(
    ctx: &Context,
    sandboxes: &[cri::SandboxStatus],
    containers: &[cri::ContainerStatus],
) -> cri::Result<()> {
    stop_all(ctx, containers, Duration::from_secs(2), None).await?;
    for s in sandboxes {
        ctx.runtime.stop_pod_sandbox(&s.id).await?;
        ctx.runtime.remove_pod_sandbox(&s.id).await?;
        crate::volumes::remove(&ctx.pods_root, &s.uid);
        ctx.tokens.forget(&s.uid);
        // The pod's logs go with it, as kubelet removes them.
        let logs = ctx.pods_root.join(format!("{}_{}_{}", s.namespace, s.name, s.uid));
        if let Err(e) = std::fs::remove_dir_all(&logs)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %logs.display(), error = %e, "removing a gone pod's logs");
        }
    }
    Ok(())
}

fn report(
    ctx: &Context,
    uid: &str,
    pod: &Pod,
    sandbox: Option<&cri::SandboxStatus>,
    containers: &[cri::ContainerStatus],
    state: &WorkerState,
) {
    // The status computed last is the previous one for transition times, even before the
    // member has written it back.
    let mut base = pod.clone();
    if let Some(last) = ctx.reports.last_status(uid) {
        let mut last = last;
        if last.qos_class.is_none() {
            last.qos_class = pod.status.as_ref().and_then(|s| s.qos_class.clone());
        }
        if matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")) {
            last.phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        }
        base.status = Some(last);
    }
    let probed = match pod.spec.as_ref() {
        Some(spec) => probes::probed(spec, containers, state.prober.as_ref()),
        None => probes::Probed::default(),
    };
    let status = pod_status(&Observed {
        pod: &base,
        sandbox,
        containers,
        waiting: &state.waiting,
        ready: &probed.ready,
        started: &probed.started,
        runtime: &ctx.runtime_scheme,
        host_ip: &ctx.host_ip,
        now: Time(k8s_openapi::chrono::Utc::now()),
    });
    ctx.reports.set_status(uid, pod, status);
}

async fn sync(ctx: &Context, uid: &str, pod: Option<&Arc<Pod>>, state: &mut WorkerState) -> cri::Result<Next> {
    let sandboxes = ctx.sandboxes_of(uid).await?;
    let containers = ctx.containers_of(uid).await?;

    let Some(shared) = pod else {
        state.prober = None;
        if !ctx.objects.in_sync() {
            // Not yet told everything: the pod may only not have arrived yet.
            return Ok(Next::After(Duration::from_secs(1)));
        }
        remove_everything(ctx, &sandboxes, &containers).await?;
        return Ok(Next::Gone);
    };
    let pod: &Pod = shared;

    let newest_sandbox = sandboxes.iter().max_by_key(|s| (s.attempt, s.created_at));
    // What the newest sandbox is once the branches below have stopped it.
    let stopped_sandbox = newest_sandbox.map(|s| cri::SandboxStatus { state: SandboxState::NotReady, ..s.clone() });
    if pod.metadata.deletion_timestamp.is_some() {
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
            .max(0) as u64;
        let grace = Duration::from_secs(grace);
        if containers.iter().any(|c| c.state == ContainerState::Running) {
            pre_stop(ctx, pod, &containers, grace).await;
            stop_all(ctx, &containers, grace, Some(pod)).await?;
        }
        for s in &sandboxes {
            ctx.runtime.stop_pod_sandbox(&s.id).await?;
        }
        let after = ctx.containers_of(uid).await?;
        state.waiting.clear();
        state.prober = None;
        // A stopped sandbox keeps the pod's IP, which the status keeps reporting as kubelet's does.
        report(ctx, uid, pod, stopped_sandbox.as_ref(), &after, state);
        ctx.reports.finished(uid, pod);
        return Ok(Next::After(RESYNC));
    }

    let phase = ctx.reports.last_status(uid).and_then(|s| s.phase).or_else(|| pod.status.as_ref()?.phase.clone());
    if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
        // Finished pods keep their containers (for logs) but nothing runs, nor is probed.
        state.prober = None;
        stop_all(ctx, &containers, Duration::from_secs(2), None).await?;
        for s in sandboxes.iter().filter(|s| s.state == SandboxState::Ready) {
            ctx.runtime.stop_pod_sandbox(&s.id).await?;
        }
        report(ctx, uid, pod, stopped_sandbox.as_ref(), &containers, state);
        return Ok(Next::After(RESYNC));
    }

    let spec = pod.spec.clone().unwrap_or_default();
    let restart_policy = spec.restart_policy.clone().unwrap_or_else(|| "Always".into());

    // The sandbox: the newest one if it is ready, else a new one (its containers start over).
    let sandbox_status = match newest_sandbox {
        Some(s) if s.state == SandboxState::Ready => s.clone(),
        newest => {
            let stale: Vec<cri::ContainerStatus> = containers.clone();
            stop_all(ctx, &stale, Duration::from_secs(2), None).await?;
            let attempt = newest.map_or(0, |s| s.attempt + 1);
            let config = sandbox_config(ctx, pod, attempt);
            if let Err(e) = ctx.runtime.run_pod_sandbox(&config).await {
                ctx.reports.event(
                    pod,
                    None,
                    true,
                    "FailedCreatePodSandBox",
                    format!("Failed to create pod sandbox: {e}"),
                );
                report(ctx, uid, pod, None, &[], state);
                return Ok(Next::After(Duration::from_secs(5)));
            }
            let fresh = ctx.runtime.list_pod_sandboxes().await?;
            match fresh.into_iter().filter(|s| s.uid == uid).max_by_key(|s| (s.attempt, s.created_at)) {
                Some(s) => s,
                None => return Err(RuntimeError::Other("a new sandbox is not listed".into())),
            }
        }
    };
    let sandbox = sandbox_config(ctx, pod, sandbox_status.attempt);
    // Annotations can change while the pod runs; the runtime hears of it each turn (a changed
    // pod wakes its worker).
    ctx.runtime.pod_annotations_changed(&sandbox_status.id, &sandbox.annotations).await?;
    let mut in_sandbox: Vec<cri::ContainerStatus> =
        containers.iter().filter(|c| c.sandbox_id == sandbox_status.id).cloned().collect();
    // Volumes first: a container starts only with everything it mounts in place. Run again
    // each turn, so changed ConfigMaps and Secrets reach the files.
    let volume_paths = if ctx.volumes {
        let tokens = match ctx.tokens.for_pod(pod).await {
            Ok(tokens) => tokens,
            Err(e) => {
                ctx.reports.event(pod, None, true, "FailedMount", format!("MountVolume.SetUp failed: {e}"));
                report(ctx, uid, pod, Some(&sandbox_status), &in_sandbox, state);
                return Ok(Next::After(Duration::from_secs(5)));
            }
        };
        match crate::volumes::prepare(&ctx.pods_root, pod, &ctx.objects, &ctx.host_ip, &tokens) {
            Ok(paths) => paths,
            Err(e) => {
                ctx.reports.event(pod, None, true, "FailedMount", format!("MountVolume.SetUp failed: {}", e.0));
                report(ctx, uid, pod, Some(&sandbox_status), &in_sandbox, state);
                return Ok(Next::After(Duration::from_secs(5)));
            }
        }
    } else {
        HashMap::new()
    };
    // Containers that failed their liveness or startup probe are killed first; the steps
    // below then restart them as restartPolicy says, with the usual back-off.
    if let Some(prober) = &state.prober {
        let failed = prober.failed(&in_sandbox);
        if !failed.is_empty() {
            for f in &failed {
                kill_unhealthy(ctx, pod, f, &restart_policy).await?;
            }
            in_sandbox = ctx
                .runtime
                .list_containers()
                .await?
                .into_iter()
                .filter(|c| c.sandbox_id == sandbox_status.id)
                .collect();
        }
    }
    let mut next = RESYNC;
    let mut initialized = true;
    for container in spec.init_containers.iter().flatten() {
        let (complete, wait) = step_container(
            ctx,
            pod,
            container,
            true,
            &sandbox_status.id,
            &sandbox,
            &in_sandbox,
            &restart_policy,
            &volume_paths,
            state,
        )
        .await?;
        if !complete {
            // One init container at a time, in order.
            initialized = false;
            next = next.min(wait);
            break;
        }
    }
    if initialized {
        for container in &spec.containers {
            let (_, wait) = step_container(
                ctx,
                pod,
                container,
                false,
                &sandbox_status.id,
                &sandbox,
                &in_sandbox,
                &restart_policy,
                &volume_paths,
                state,
            )
            .await?;
            next = next.min(wait);
        }
    }

    in_sandbox =
        ctx.runtime.list_containers().await?.into_iter().filter(|c| c.sandbox_id == sandbox_status.id).collect();
    // A pod without probes skips this entirely: simulated nodes run thousands of them.
    if state.prober.is_some() || probes::has_probes(&spec) {
        let pod_ip = if spec.host_network.unwrap_or(false) { ctx.host_ip.clone() } else { sandbox_status.ip.clone() };
        let env =
            probes::Env { runtime: ctx.runtime.clone(), reports: ctx.reports.clone(), pod_network: ctx.pod_network };
        let wake = state.wake.clone();
        state.prober.get_or_insert_with(|| Prober::new(wake)).sync(&env, shared, &in_sandbox, &pod_ip);
    }
    report(ctx, uid, pod, Some(&sandbox_status), &in_sandbox, state);
    Ok(Next::After(next))
}

/// Kills a container whose liveness or startup probe failed, as kubelet does: a Killing
/// event, its preStop hook, then a stop within the probe's terminationGracePeriodSeconds (or
/// the pod's).
async fn kill_unhealthy(ctx: &Context, pod: &Pod, failed: &probes::Failed, restart_policy: &str) -> cri::Result<()> {
    let spec = pod.spec.clone().unwrap_or_default();
    let Some(container) = spec.containers.iter().find(|c| c.name == failed.container) else { return Ok(()) };
    let probe_grace = failed.kind.of(container).and_then(|p| p.termination_grace_period_seconds);
    let grace = probe_grace.or(spec.termination_grace_period_seconds).unwrap_or(30).max(0) as u64;
    let grace = Duration::from_secs(grace);
    let mut message = format!("Container {} failed {} probe", container.name, failed.kind.title().to_lowercase());
    if restart_policy != "Never" {
        message.push_str(", will be restarted");
    }
    tracing::info!(container = %container.name, container_id = %failed.container_id, %message, "killing");
    if ctx.container_events {
        ctx.reports.event(pod, Some(field_path(container, false)), false, "Killing", message);
    }
    if let Some(command) =
        container.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()?.exec.as_ref()?.command.clone())
        && let Err(e) = ctx.runtime.exec_sync(&failed.container_id, &command, grace).await
    {
        tracing::info!(container = %failed.container_id, error = %e, "preStop hook failed");
    }
    ctx.runtime.stop_container(&failed.container_id, grace).await
}

/// Takes one container a step towards running (an init container: towards having exited
/// successfully): starts it, restarts it after its back-off, or leaves it. Returns whether an
/// init container is complete, and how soon the pod needs another look.
#[allow(clippy::too_many_arguments)]
async fn step_container(
    ctx: &Context,
    pod: &Pod,
    container: &Container,
    init: bool,
    sandbox_id: &str,
    sandbox: &SandboxConfig,
    in_sandbox: &[cri::ContainerStatus],
    restart_policy: &str,
    volume_paths: &HashMap<String, std::path::PathBuf>,
    state: &mut WorkerState,
) -> cri::Result<(bool, Duration)> {
    let newest = in_sandbox.iter().filter(|c| c.name == container.name).max_by_key(|c| (c.attempt, c.created_at));
    let mut next = RESYNC;
    let start = |attempt: u32| start_container(ctx, pod, container, init, sandbox_id, sandbox, attempt, volume_paths);
    match newest {
        Some(c) if init && c.state == ContainerState::Exited && c.exit_code == 0 => {
            state.waiting.remove(&container.name);
            return Ok((true, RESYNC));
        }
        Some(c) if c.state == ContainerState::Running => {
            state.waiting.remove(&container.name);
        }
        Some(c) if c.state == ContainerState::Created => ctx.runtime.start_container(&c.id).await?,
        Some(c) => {
            let restart = if init { restart_policy != "Never" } else { should_restart(restart_policy, c.exit_code) };
            if !restart {
                state.waiting.remove(&container.name);
                return Ok((false, RESYNC));
            }
            match backoff_wait(ctx, state, c) {
                Some(wait) => {
                    state.waiting.insert(container.name.clone(), crash_loop(ctx, pod, container, state));
                    next = wait;
                }
                None => {
                    state.waiting.remove(&container.name);
                    // Only the exit before this one is kept, for `logs --previous`.
                    for old in in_sandbox.iter().filter(|o| o.name == container.name && o.id != c.id) {
                        ctx.runtime.remove_container(&old.id).await?;
                    }
                    if let Err(w) = start(c.attempt + 1).await {
                        state.waiting.insert(container.name.clone(), w);
                        next = Duration::from_secs(5);
                    }
                }
            }
        }
        None => {
            if let Err(w) = start(0).await {
                state.waiting.insert(container.name.clone(), w);
                next = Duration::from_secs(5);
            }
        }
    }
    Ok((false, next))
}

fn crash_loop(ctx: &Context, pod: &Pod, container: &Container, state: &WorkerState) -> Waiting {
    let delay = state.backoff.get(&container.name).map_or(ctx.backoff_initial, |b| b.delay / 2);
    Waiting {
        reason: "CrashLoopBackOff".into(),
        message: format!(
            "back-off {}s restarting failed container={} pod={}_{}({})",
            delay.as_secs(),
            container.name,
            pod.metadata.name.as_deref().unwrap_or_default(),
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.uid.as_deref().unwrap_or_default(),
        ),
    }
}
