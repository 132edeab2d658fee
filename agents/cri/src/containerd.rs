//! The agent's own containerd, as k3s runs one: a config generated under the agent's data dir
//! (root, state, socket, CNI network, sandbox image), `containerd` as a child process that is
//! restarted when it dies, and stopped when the handle is shut down or dropped.
//!
//! Stopping containerd does not stop the pods: their shims outlive it, as they outlive a
//! containerd upgrade, and the next containerd picks them up again.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, error, info, info_span, instrument, warn};

use crate::config::{self, ContainerdConfig, Layout};
use crate::images::ImageImporter;
use crate::masquerade;
use crate::runtime::CriRuntime;

/// The kernel's limit for a unix socket path (`sun_path`, 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// How long containerd gets to exit on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Restart back-off: doubles from the first to the last while containerd keeps dying
/// quickly; a run longer than `STABLE_RUN` starts over from the first.
const RESTART_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));
const STABLE_RUN: Duration = Duration::from_secs(60);

const INSTALL_HINT: &str =
    "install the Debian packages containerd, runc and containernetworking-plugins (ops/install-deps.sh)";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} not found: {hint}")]
    Missing { what: String, hint: &'static str },
    #[error("{0}")]
    Option(String),
    #[error("setting up the pod network: {0}")]
    Network(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("containerd socket path {} is longer than the {MAX_SOCKET_PATH} bytes a unix socket allows: use a shorter data dir", path.display())]
    SocketPath { path: PathBuf },
    #[error("starting {}: {source}", binary.display())]
    Spawn { binary: PathBuf, source: std::io::Error },
    #[error("containerd exited while starting ({status}); the end of its log {}:\n{tail}", log.display())]
    Exited { status: String, log: PathBuf, tail: String },
    #[error("containerd's CRI plugin not ready after {timeout:?} ({last}); the end of its log {}:\n{tail}", log.display())]
    NotReady { timeout: Duration, last: String, log: PathBuf, tail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// Which containerd snapshotter holds the containers' file systems.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Snapshotter {
    /// overlayfs where a test mount in the data dir works, else native.
    #[default]
    Auto,
    Overlayfs,
    /// Full copies: slower and bigger, but works on any file system (overlayfs cannot sit on
    /// overlayfs, as in a container, and needs the kernel module).
    Native,
}

#[derive(Debug, Clone)]
pub struct ContainerdOptions {
    pub containerd: PathBuf,
    /// The OCI runtime containerd's shim runs; a name is looked up on `PATH` at start.
    pub runc: PathBuf,
    /// Imports image archives.
    pub ctr: PathBuf,
    pub sandbox_image: String,
    /// The node's pod network, e.g. `10.244.1.0/24`.
    pub pod_cidr: String,
    /// The Linux bridge the pods hang off; one per containerd on a machine.
    pub bridge: String,
    pub cni_bin_dir: PathBuf,
    pub snapshotter: Snapshotter,
    /// From spawning to the CRI plugin reporting RuntimeReady.
    pub start_timeout: Duration,
    /// containerd's `--log-level`.
    pub log_level: String,
}

impl Default for ContainerdOptions {
    fn default() -> Self {
        ContainerdOptions {
            containerd: "containerd".into(),
            runc: "runc".into(),
            ctr: "ctr".into(),
            sandbox_image: config::DEFAULT_SANDBOX_IMAGE.into(),
            pod_cidr: "10.88.0.0/16".into(),
            bridge: "keel0".into(),
            cni_bin_dir: config::DEFAULT_CNI_BIN_DIR.into(),
            snapshotter: Snapshotter::Auto,
            start_timeout: Duration::from_secs(60),
            log_level: "info".into(),
        }
    }
}

/// `name` as a path: itself when it has a `/`, else the first executable of that name on
/// `PATH`.
fn find_binary(name: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if name.components().count() > 1 {
        return executable(name).then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| executable(p))
}

fn require(name: &Path, hint: &'static str) -> Result<PathBuf> {
    find_binary(name).ok_or_else(|| Error::Missing { what: name.display().to_string(), hint })
}

/// Whether an overlay mount works in `dir`: the test containerd's overlayfs snapshotter makes
/// too, done first so the config names a snapshotter that will load.
fn overlay_works(dir: &Path) -> std::result::Result<(), String> {
    use nix::mount::{MsFlags, mount, umount};
    let probe = dir.join("overlay-probe");
    let _ = std::fs::remove_dir_all(&probe);
    let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|d| probe.join(d));
    for d in [&lower, &upper, &work, &merged] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let options = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
    let mounted = mount(Some("overlay"), &merged, Some("overlay"), MsFlags::empty(), Some(options.as_str()))
        .map_err(|e| format!("test mount in {}: {e}", dir.display()));
    if mounted.is_ok() {
        umount(&merged).map_err(|e| format!("unmounting test mount {}: {e}", merged.display()))?;
    }
    let _ = std::fs::remove_dir_all(&probe);
    mounted
}

/// Whether this process may lower OOM score adjustments (CAP_SYS_RESOURCE, bit 24 of the
/// effective set in /proc/self/status); containerd inherits the same set.
fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

fn choose_snapshotter(choice: Snapshotter, dir: &Path) -> &'static str {
    match choice {
        Snapshotter::Overlayfs => "overlayfs",
        Snapshotter::Native => "native",
        Snapshotter::Auto => match overlay_works(dir) {
            Ok(()) => "overlayfs",
            Err(why) => {
                warn!(reason = %why, "overlayfs does not work here; containerd uses the native snapshotter");
                "native"
            }
        },
    }
}

/// The last lines of containerd's log, for errors.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read(log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Whether `pid` still runs. A zombie (exited, not yet reaped by its parent) does not.
fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // `pid (comm) state …`; comm may hold spaces and parentheses, so look after the last ')'.
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|state| state != "Z")
}

/// The pid of a containerd a previous agent left running on this data dir, if one is.
/// Recognised by its command line naming our config, so a reused pid is left alone.
fn leftover_containerd(layout: &Layout) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(layout.dir.join("containerd.pid")).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let config = layout.config.to_string_lossy();
    cmdline.split(|b| *b == 0).any(|arg| arg == config.as_bytes()).then_some(pid)
}

/// Stops a containerd this process did not start (so cannot wait for): SIGTERM, then SIGKILL.
async fn stop_leftover(pid: u32) {
    warn!(pid, "stopping the containerd a previous agent left running on this data dir");
    let target = Pid::from_raw(pid as i32);
    let _ = kill(target, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    while process_alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if process_alive(pid) {
        let _ = kill(target, Signal::SIGKILL);
        let deadline = Instant::now() + STOP_GRACE;
        while process_alive(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Starts containerd processes with the same arguments (the first one and every restart).
#[derive(Debug, Clone)]
struct Spawner {
    binary: PathBuf,
    layout: Layout,
    log_level: String,
}

/// containerd's log is kept to about this size: at a start, a bigger one becomes
/// `containerd.log.1` (replacing the one before).
const MAX_LOG_BYTES: u64 = 64 * 1024 * 1024;

impl Spawner {
    fn spawn(&self) -> Result<Child> {
        let log_path = &self.layout.log;
        if std::fs::metadata(log_path).is_ok_and(|m| m.len() > MAX_LOG_BYTES) {
            let old = log_path.with_extension("log.1");
            std::fs::rename(log_path, &old).map_err(io_err(&old))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.layout.log)
            .map_err(io_err(&self.layout.log))?;
        let log2 = log.try_clone().map_err(io_err(&self.layout.log))?;
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.layout.config)
            .arg("--log-level")
            .arg(&self.log_level)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a Ctrl-C at the agent's terminal reaches the agent, which
            // then stops containerd in order, not both at once.
            .process_group(0)
            .spawn()
            .map_err(|source| Error::Spawn { binary: self.binary.clone(), source })?;
        if let Some(pid) = child.id() {
            let pid_file = self.layout.dir.join("containerd.pid");
            std::fs::write(&pid_file, format!("{pid}\n")).map_err(io_err(&pid_file))?;
        }
        Ok(child)
    }
}

/// What the handle and its supervising task share.
#[derive(Debug, Default)]
struct Shared {
    pid: PidCell,
    restarts: AtomicU64,
}

/// The running containerd's pid, 0 while none runs.
#[derive(Debug, Default)]
struct PidCell(AtomicU32);

impl PidCell {
    fn set(&self, pid: Option<u32>) {
        self.0.store(pid.unwrap_or(0), Ordering::SeqCst);
    }

    fn get(&self) -> Option<u32> {
        Some(self.0.load(Ordering::SeqCst)).filter(|p| *p != 0)
    }
}

/// SIGTERM, then SIGKILL after the grace period; waits for the exit.
async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(Ok(status)) => info!(%status, "containerd stopped"),
        Ok(Err(e)) => warn!(error = %e, "waiting for containerd"),
        Err(_) => {
            warn!(grace = ?STOP_GRACE, "containerd ignored SIGTERM; killing it");
            let _ = child.kill().await;
        }
    }
}

/// Keeps containerd running until told to stop.
async fn supervise(first: Child, spawner: Spawner, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut child = Some(first);
    let mut backoff = RESTART_BACKOFF.0;
    let mut started = Instant::now();
    loop {
        if let Some(running) = child.as_mut() {
            tokio::select! {
                status = running.wait() => {
                    shared.pid.set(None);
                    child = None;
                    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    if started.elapsed() >= STABLE_RUN {
                        backoff = RESTART_BACKOFF.0;
                    }
                    let log = spawner.layout.log.display();
                    error!(%status, %log, restart_in = ?backoff, "containerd exited; restarting it");
                }
                _ = stop.changed() => {
                    terminate(running).await;
                    shared.pid.set(None);
                    return;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(RESTART_BACKOFF.1);
        match spawner.spawn() {
            Ok(new) => {
                shared.pid.set(new.id());
                shared.restarts.fetch_add(1, Ordering::SeqCst);
                started = Instant::now();
                info!(pid = ?new.id(), "containerd restarted");
                child = Some(new);
            }
            Err(e) => error!(error = %e, retry_in = ?backoff, "restarting containerd failed"),
        }
    }
}

/// Waits for the CRI plugin at `socket` to report RuntimeReady. `exited` says whether the
/// process has died meanwhile (no point waiting then).
async fn wait_ready(
    socket: &Path,
    timeout: Duration,
    log: &Path,
    mut exited: impl FnMut() -> Option<String>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("socket not there yet");
    loop {
        if let Some(status) = exited() {
            return Err(Error::Exited { status, log: log.to_path_buf(), tail: log_tail(log) });
        }
        if socket.exists() {
            // A fresh client each round: a lazy channel that failed backs off on its own.
            let client = CriRuntime::new(socket).with_request_timeout(Duration::from_secs(2));
            match client.status().await {
                Ok(conditions) => {
                    let runtime = conditions.iter().find(|c| c.kind == "RuntimeReady");
                    match runtime {
                        Some(c) if c.status => {
                            if let Some(net) = conditions.iter().find(|c| c.kind == "NetworkReady" && !c.status) {
                                warn!(reason = %net.reason, message = %net.message, "containerd's pod network is not ready");
                            }
                            return Ok(());
                        }
                        Some(c) => last = format!("RuntimeReady false: {} {}", c.reason, c.message),
                        None => last = "no RuntimeReady condition".into(),
                    }
                }
                Err(e) => last = e.to_string(),
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::NotReady { timeout, last, log: log.to_path_buf(), tail: log_tail(log) });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running containerd of the agent's own. Dropping it stops containerd (SIGTERM); prefer
/// [`Containerd::shutdown`], which also waits for the exit.
#[derive(Debug)]
pub struct Containerd {
    layout: Layout,
    snapshotter: &'static str,
    sandbox_image: String,
    ctr: PathBuf,
    start_timeout: Duration,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Containerd {
    /// Writes the configuration under `<data_dir>/containerd/`, starts containerd and waits
    /// until its CRI plugin is ready.
    #[instrument(skip(options), fields(data_dir = %data_dir.display()))]
    pub async fn start(data_dir: &Path, options: ContainerdOptions) -> Result<Containerd> {
        config::check_pod_cidr(&options.pod_cidr).map_err(Error::Option)?;
        config::check_bridge_name(&options.bridge).map_err(Error::Option)?;
        let containerd = require(&options.containerd, INSTALL_HINT)?;
        require(Path::new("containerd-shim-runc-v2"), INSTALL_HINT)?;
        require(Path::new("iptables"), "install the Debian package iptables (ops/install-deps.sh)")?;
        let runc = require(&options.runc, INSTALL_HINT)?;
        let ctr = require(&options.ctr, INSTALL_HINT)?;
        for plugin in config::CNI_PLUGINS {
            let path = options.cni_bin_dir.join(plugin);
            if find_binary(&path).is_none() {
                return Err(Error::Missing {
                    what: format!("CNI plugin {}", path.display()),
                    hint: "install the Debian package containernetworking-plugins (ops/install-deps.sh)",
                });
            }
        }

        let data_dir = if data_dir.is_absolute() {
            data_dir.to_path_buf()
        } else {
            std::env::current_dir().map_err(io_err(data_dir))?.join(data_dir)
        };
        let layout = Layout::new(&data_dir);
        if layout.socket.as_os_str().len() > MAX_SOCKET_PATH - ".ttrpc".len() {
            return Err(Error::SocketPath { path: layout.ttrpc_socket.clone() });
        }
        for dir in [&layout.dir, &layout.root, &layout.state, &layout.opt, &layout.cni_conf_dir, &layout.cni_ipam_dir] {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        if let Some(pid) = leftover_containerd(&layout) {
            stop_leftover(pid).await;
        }

        let snapshotter = choose_snapshotter(options.snapshotter, &layout.dir);
        let restrict_oom_score_adj = !has_cap_sys_resource();
        if restrict_oom_score_adj {
            warn!("no CAP_SYS_RESOURCE: containers' OOM score adjustments stay at or above containerd's own");
        }
        let toml = config::containerd_toml(&ContainerdConfig {
            layout: &layout,
            sandbox_image: &options.sandbox_image,
            snapshotter,
            cni_bin_dir: &options.cni_bin_dir,
            runc: &runc,
            restrict_oom_score_adj,
        });
        std::fs::write(&layout.config, toml).map_err(io_err(&layout.config))?;
        let conflist = config::cni_conflist(&options.bridge, &options.pod_cidr, &layout.cni_ipam_dir);
        let conflist_path = layout.cni_conf_dir.join(format!("10-{}.conflist", config::CNI_NETWORK));
        std::fs::write(&conflist_path, format!("{conflist:#}\n")).map_err(io_err(&conflist_path))?;
        masquerade::ensure(&options.pod_cidr, &options.bridge).await.map_err(Error::Network)?;

        let spawner = Spawner { binary: containerd, layout: layout.clone(), log_level: options.log_level.clone() };
        let mut child = spawner.spawn()?;
        info!(pid = ?child.id(), snapshotter, config = %layout.config.display(), "containerd started");
        let ready = wait_ready(&layout.socket, options.start_timeout, &layout.log, || {
            child.try_wait().ok().flatten().map(|s| s.to_string())
        })
        .await;
        if let Err(e) = ready {
            if child.try_wait().ok().flatten().is_none() {
                terminate(&mut child).await;
            }
            return Err(e);
        }

        let shared = Arc::new(Shared::default());
        shared.pid.set(child.id());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(
            supervise(child, spawner, shared.clone(), stopped)
                // Not inside `start`'s span: the task outlives it.
                .instrument(info_span!(parent: None, "containerd", data_dir = %data_dir.display())),
        );
        Ok(Containerd {
            layout,
            snapshotter,
            sandbox_image: options.sandbox_image,
            ctr,
            start_timeout: options.start_timeout,
            shared,
            stop,
            task: Some(task),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.layout.socket
    }

    /// Where its files are.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// `overlayfs` or `native`.
    pub fn snapshotter(&self) -> &str {
        self.snapshotter
    }

    /// The running process, None between a death and the restart.
    pub fn pid(&self) -> Option<u32> {
        self.shared.pid.get()
    }

    /// How many times containerd died and was started again.
    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::SeqCst)
    }

    /// Imports archives into this containerd, unpacked for its snapshotter.
    pub fn importer(&self) -> ImageImporter {
        ImageImporter::new(&self.layout.socket).with_ctr(&self.ctr).with_snapshotter(self.snapshotter)
    }

    /// keel's runtime on this containerd, importing missing images from `images_dir`.
    pub fn runtime(&self, images_dir: impl Into<PathBuf>) -> CriRuntime {
        CriRuntime::new(&self.layout.socket)
            .with_importer(self.importer())
            .with_images_dir(images_dir)
            .with_sandbox_image(&self.sandbox_image)
    }

    /// Waits until the CRI plugin is ready (after a restart, say).
    pub async fn wait_ready(&self) -> Result<()> {
        wait_ready(&self.layout.socket, self.start_timeout, &self.layout.log, || None).await
    }

    /// Stops containerd (SIGTERM, SIGKILL after 10 s) and waits for it to exit.
    #[instrument(skip(self), fields(socket = %self.layout.socket.display()))]
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else { return };
        let _ = self.stop.send(true);
        // The supervising task stops containerd if the tokio runtime keeps running; signal it
        // here too, for when the runtime is going away with this handle.
        if let Some(pid) = self.shared.pid.get() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        drop(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_are_found_on_path_or_by_path() {
        assert!(find_binary(Path::new("sh")).is_some());
        assert!(find_binary(Path::new("/bin/sh")).is_some());
        assert!(find_binary(Path::new("no-such-binary-keel")).is_none());
    }

    #[tokio::test]
    async fn a_missing_containerd_is_named_with_the_package_to_install() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = ContainerdOptions { containerd: "/nonexistent/containerd".into(), ..Default::default() };
        let e = Containerd::start(dir.path(), options).await.expect_err("no containerd there");
        let message = e.to_string();
        assert!(message.contains("/nonexistent/containerd not found"), "{message}");
        assert!(message.contains("ops/install-deps.sh"), "{message}");
    }

    #[tokio::test]
    async fn a_bad_pod_cidr_fails_before_anything_starts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = ContainerdOptions { pod_cidr: "10.1.0.0".into(), ..Default::default() };
        assert!(matches!(Containerd::start(dir.path(), options).await, Err(Error::Option(_))));
    }
}
