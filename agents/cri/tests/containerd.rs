//! keel's CRI runtime against a real containerd, started by the supervisor in a temporary data
//! dir, with the images `ops/images/build.sh` builds. Needs root and the Debian packages
//! `ops/install-deps.sh` installs (containerd, runc, containernetworking-plugins,
//! busybox-static, iptables, gcc).
//!
//! Each test runs its own containerd on its own bridge and pod CIDR (both derived from the
//! test process's pid, as nextest runs tests in parallel processes). A failed test keeps its
//! data dir (containerd's log is in it) and still removes its pods.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_container::{
    ContainerConfig, ContainerRuntime, ContainerState, ContainerStatus, PortMapping, Protocol, RuntimeError,
    SandboxConfig, SandboxState,
};
use keel_cri::{Containerd, ContainerdOptions, CriRuntime, Snapshotter};

const BUSYBOX: &str = "keel.local/busybox:1.36";
const PAUSE: &str = "keel.local/pause:3.10";

/// Polls `check` until it gives a value; panics naming `what` after `timeout`.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The network of this test process: a bridge name and a /24 unique among running processes.
fn network() -> (String, String, [u8; 3]) {
    let pid = std::process::id() % 32768;
    let prefix = [10, 128 + (pid >> 8) as u8, (pid & 0xff) as u8];
    (format!("kt{pid}"), format!("{}.{}.{}.0/24", prefix[0], prefix[1], prefix[2]), prefix)
}

struct Fixture {
    dir: Option<tempfile::TempDir>,
    images: PathBuf,
    bridge: String,
    prefix: [u8; 3],
    containerd: Option<Containerd>,
    runtime: CriRuntime,
}

impl Fixture {
    async fn start() -> Fixture {
        Fixture::start_with(Snapshotter::Auto).await
    }

    async fn start_with(snapshotter: Snapshotter) -> Fixture {
        let _ = tracing_subscriber::fmt().with_env_filter("keel_cri=debug,info").with_test_writer().try_init();
        let dir = tempfile::Builder::new().prefix("keel-cri-").tempdir().expect("temp dir");
        let images = dir.path().join("images");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops/images/build.sh");
        let built = tokio::process::Command::new(&script).arg(&images).output().await.expect("run ops/images/build.sh");
        assert!(built.status.success(), "ops/images/build.sh: {}", String::from_utf8_lossy(&built.stderr));
        let (bridge, pod_cidr, prefix) = network();
        let options = ContainerdOptions { bridge: bridge.clone(), pod_cidr, snapshotter, ..Default::default() };
        let containerd = Containerd::start(dir.path(), options).await.expect("start containerd");
        let runtime = containerd.runtime(&images);
        Fixture { dir: Some(dir), images, bridge, prefix, containerd: Some(containerd), runtime }
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).expect("data dir")
    }

    fn sandbox(&self, name: &str) -> SandboxConfig {
        SandboxConfig {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("uid-{name}"),
            hostname: name.into(),
            log_directory: self.path().join("pods").join(format!("default_{name}_uid-{name}")),
            ..Default::default()
        }
    }

    /// Stops everything and removes the data dir: the end of a test that passed.
    async fn finish(mut self) {
        remove_all_pods(&self.runtime).await;
        if let Some(containerd) = self.containerd.take() {
            containerd.shutdown().await;
        }
        delete_bridge(&self.bridge);
        if let Some(dir) = self.dir.take() {
            dir.close().expect("remove data dir");
        }
    }
}

impl Drop for Fixture {
    /// A failed test: its pods go, its data dir stays for a look at containerd's log.
    fn drop(&mut self) {
        let Some(containerd) = self.containerd.take() else { return };
        let socket = containerd.socket().to_path_buf();
        // The test's own runtime is unwinding on this thread and runs nothing more: clean up
        // on a fresh one, with a fresh client.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move { remove_all_pods(&CriRuntime::new(socket)).await });
        })
        .join();
        // Its supervising task cannot run either; dropping the handle signals containerd.
        drop(containerd);
        delete_bridge(&self.bridge);
        if let Some(dir) = self.dir.take() {
            eprintln!("keeping the data dir of the failed test: {}", dir.keep().display());
        }
    }
}

async fn remove_all_pods(runtime: &CriRuntime) {
    for sandbox in runtime.list_pod_sandboxes().await.unwrap_or_default() {
        let _ = runtime.stop_pod_sandbox(&sandbox.id).await;
        let _ = runtime.remove_pod_sandbox(&sandbox.id).await;
    }
}

/// The CNI bridge plugin makes the bridge but never removes it; the masquerade rule stays too.
fn delete_bridge(bridge: &str) {
    let _ = std::process::Command::new("ip").args(["link", "delete", bridge]).output();
    keel_cri::masquerade::remove(bridge);
}

async fn container(runtime: &CriRuntime, id: &str) -> Option<ContainerStatus> {
    runtime.list_containers().await.expect("list containers").into_iter().find(|c| c.id == id)
}

async fn wait_state(runtime: &CriRuntime, id: &str, state: ContainerState) -> ContainerStatus {
    wait_for(&format!("container {id} to be {state:?}"), Duration::from_secs(30), || async {
        container(runtime, id).await.filter(|c| c.state == state)
    })
    .await
}

/// One HTTP GET over a plain TCP stream; the body.
fn http_get(ip: Ipv4Addr, port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
}

#[tokio::test]
async fn a_busybox_pod_runs_execs_logs_and_stops() {
    let f = Fixture::start().await;
    let rt = &f.runtime;

    let version = rt.version().await.expect("version");
    assert_eq!((version.name.as_str(), version.api_version.as_str()), ("containerd", "v1"), "{version:?}");

    // Imported from the images folder on demand.
    assert!(rt.image_status(BUSYBOX).await.expect("image status").is_none());
    let image_id = rt.pull_image(BUSYBOX).await.expect("pull busybox");
    assert!(image_id.starts_with("sha256:"), "{image_id}");
    let image = rt.image_status(BUSYBOX).await.expect("image status").expect("busybox present");
    assert_eq!(image.id, image_id);
    assert!(image.names.iter().any(|n| n == BUSYBOX), "{image:?}");
    // Pulling again finds it.
    assert_eq!(rt.pull_image(BUSYBOX).await.expect("pull again"), image_id);

    // The sandbox imports the pause image itself and gets an address from the CNI network.
    // A hostPort: the port is free now; nothing else on the machine takes it in a second.
    let host_port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let sandbox_config = SandboxConfig {
        port_mappings: vec![PortMapping {
            protocol: Protocol::Tcp,
            container_port: 8080,
            host_port: i32::from(host_port),
            host_ip: String::new(),
        }],
        ..f.sandbox("bb")
    };
    let sandbox = rt.run_pod_sandbox(&sandbox_config).await.expect("run sandbox");
    let images = rt.list_images().await.expect("list images");
    assert!(images.iter().any(|i| i.names.iter().any(|n| n == PAUSE)), "{images:?}");
    let listed = rt.list_pod_sandboxes().await.expect("list sandboxes");
    let status = listed.iter().find(|s| s.id == sandbox).expect("sandbox listed");
    assert_eq!((status.state, status.name.as_str(), status.uid.as_str()), (SandboxState::Ready, "bb", "uid-bb"));
    let ip: Ipv4Addr = status.ip.parse().unwrap_or_else(|e| panic!("sandbox IP {:?}: {e}", status.ip));
    assert_eq!(ip.octets()[..3], f.prefix, "sandbox IP {ip} outside the pod CIDR");

    let main = ContainerConfig {
        name: "main".into(),
        image: BUSYBOX.into(),
        command: vec!["sh".into(), "-c".into(), "echo hello; sleep 3600".into()],
        log_path: "main/0.log".into(),
        envs: vec![("GREETING".into(), "hi".into())],
        ..Default::default()
    };
    let main_id = rt.create_container(&sandbox, &main, &sandbox_config).await.expect("create main");
    assert_eq!(container(rt, &main_id).await.expect("listed").state, ContainerState::Created);
    rt.start_container(&main_id).await.expect("start main");
    let running = wait_state(rt, &main_id, ContainerState::Running).await;
    assert_eq!((running.name.as_str(), running.sandbox_id.as_str()), ("main", sandbox.as_str()));
    assert!(running.started_at > 0, "{running:?}");
    assert!(running.image_ref.starts_with("sha256:"), "{running:?}");

    let argv = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let hi = rt.exec_sync(&main_id, &argv(&["echo", "hi"]), Duration::from_secs(10)).await.expect("exec echo");
    assert_eq!((hi.exit_code, hi.stdout.as_slice(), hi.stderr.as_slice()), (0, &b"hi\n"[..], &b""[..]));
    let three =
        rt.exec_sync(&main_id, &argv(&["sh", "-c", "exit 3"]), Duration::from_secs(10)).await.expect("exec exit 3");
    assert_eq!(three.exit_code, 3);
    let env = rt
        .exec_sync(&main_id, &argv(&["sh", "-c", "echo $GREETING"]), Duration::from_secs(10))
        .await
        .expect("exec env");
    assert_eq!(env.stdout, b"hi\n");

    // CRI log format: `<RFC 3339 time> <stream> <P|F> <text>`.
    let log = sandbox_config.log_directory.join("main/0.log");
    let line = wait_for("hello in the container log", Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines().find(|l| l.ends_with(" stdout F hello")).map(str::to_string)
    })
    .await;
    let time = line.split(' ').next().expect("time");
    assert!(time.len() > 20 && time.contains('T'), "{line}");

    // A second container in the same sandbox, reachable at the pod's IP from the node.
    let web = ContainerConfig {
        name: "web".into(),
        image: BUSYBOX.into(),
        command: argv(&["sh", "-c", "mkdir -p /www && echo pong > /www/index.html && exec httpd -f -p 8080 -h /www"]),
        log_path: "web/0.log".into(),
        ..Default::default()
    };
    let web_id = rt.create_container(&sandbox, &web, &sandbox_config).await.expect("create web");
    rt.start_container(&web_id).await.expect("start web");
    wait_state(rt, &web_id, ContainerState::Running).await;
    let body = wait_for("the pod's web server", Duration::from_secs(20), || async { http_get(ip, 8080).ok() }).await;
    assert_eq!(body, "pong\n");
    // The same server through the hostPort, which portmap forwards on the node.
    let body =
        wait_for("the hostPort", Duration::from_secs(20), || async { http_get(Ipv4Addr::LOCALHOST, host_port).ok() })
            .await;
    assert_eq!(body, "pong\n");

    let stats = rt.container_stats().await.expect("stats");
    let main_stats = stats.iter().find(|s| s.id == main_id).expect("stats for main");
    assert!(main_stats.memory_working_set_bytes > 0, "{main_stats:?}");

    // sh as PID 1 ignores SIGTERM: the stop ends in SIGKILL after the timeout.
    rt.stop_container(&main_id, Duration::from_secs(1)).await.expect("stop main");
    let exited = wait_state(rt, &main_id, ContainerState::Exited).await;
    assert_eq!(exited.exit_code, 137, "{exited:?}");
    assert!(exited.finished_at >= exited.started_at, "{exited:?}");
    rt.stop_container(&main_id, Duration::from_secs(1)).await.expect("stopping again is fine");
    rt.remove_container(&main_id).await.expect("remove main");
    rt.remove_container(&main_id).await.expect("removing again is fine");
    assert!(container(rt, &main_id).await.is_none());

    // Stopping the sandbox stops what still runs in it; removing it removes them.
    rt.stop_pod_sandbox(&sandbox).await.expect("stop sandbox");
    let stopped = rt.list_pod_sandboxes().await.expect("list sandboxes");
    let status = stopped.iter().find(|s| s.id == sandbox).expect("still listed");
    assert_eq!((status.state, status.ip.as_str()), (SandboxState::NotReady, ""));
    assert_eq!(container(rt, &web_id).await.expect("web listed").state, ContainerState::Exited);
    rt.stop_pod_sandbox(&sandbox).await.expect("stopping again is fine");
    rt.remove_pod_sandbox(&sandbox).await.expect("remove sandbox");
    rt.remove_pod_sandbox(&sandbox).await.expect("removing again is fine");
    assert!(rt.list_pod_sandboxes().await.expect("list").iter().all(|s| s.id != sandbox));
    assert!(container(rt, &web_id).await.is_none());

    f.finish().await;
}

/// Where overlayfs cannot work (a data dir on overlayfs, as in a container) the supervisor
/// picks the native snapshotter; images are then imported and unpacked for it.
#[tokio::test]
async fn the_native_snapshotter_runs_pods_too() {
    let f = Fixture::start_with(Snapshotter::Native).await;
    assert_eq!(f.containerd.as_ref().expect("containerd").snapshotter(), "native");
    let rt = &f.runtime;
    rt.pull_image(BUSYBOX).await.expect("pull busybox");
    let sandbox_config = f.sandbox("native");
    let sandbox = rt.run_pod_sandbox(&sandbox_config).await.expect("run sandbox");
    let config = ContainerConfig {
        name: "main".into(),
        image: BUSYBOX.into(),
        command: vec!["sleep".into(), "3600".into()],
        log_path: "main/0.log".into(),
        ..Default::default()
    };
    let id = rt.create_container(&sandbox, &config, &sandbox_config).await.expect("create");
    rt.start_container(&id).await.expect("start");
    wait_state(rt, &id, ContainerState::Running).await;
    let out = rt.exec_sync(&id, &["cat".into(), "/etc/passwd".into()], Duration::from_secs(10)).await.expect("exec");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("root:x:0:0:"), "{out:?}");
    rt.remove_pod_sandbox(&sandbox).await.expect("remove sandbox");
    f.finish().await;
}

#[tokio::test]
async fn a_missing_image_is_not_found_and_names_the_images_folder() {
    let f = Fixture::start().await;
    let rt = &f.runtime;
    let e = rt.pull_image("keel.local/nothing:1.0").await.expect_err("no archive has it");
    let RuntimeError::NotFound(message) = &e else { panic!("want NotFound, got {e:?}") };
    assert!(message.contains(&f.images.display().to_string()), "{message}");
    assert!(message.contains("keel.local/nothing:1.0"), "{message}");

    // Unknown ids: NotFound where the call needs the thing, success where it is to go away.
    assert!(matches!(rt.start_container("no-such-container").await, Err(RuntimeError::NotFound(_))));
    rt.stop_container("no-such-container", Duration::from_secs(1)).await.expect("stop of a missing container");
    rt.remove_container("no-such-container").await.expect("remove of a missing container");
    rt.stop_pod_sandbox("no-such-sandbox").await.expect("stop of a missing sandbox");
    rt.remove_pod_sandbox("no-such-sandbox").await.expect("remove of a missing sandbox");

    // A runtime not told the sandbox image (as on `--container-runtime-endpoint`) reads it
    // from containerd's CRI configuration, and imports it before the first sandbox.
    let containerd = f.containerd.as_ref().expect("containerd");
    let plain = CriRuntime::new(containerd.socket()).with_images_dir(&f.images).with_importer(containerd.importer());
    assert!(plain.image_status(PAUSE).await.expect("status").is_none());
    let sandbox = plain.run_pod_sandbox(&f.sandbox("plain")).await.expect("sandbox");
    assert!(plain.image_status(PAUSE).await.expect("status").is_some());
    plain.remove_pod_sandbox(&sandbox).await.expect("remove sandbox");
    f.finish().await;
}

#[tokio::test]
async fn every_archive_in_the_folder_imports_under_its_name() {
    let f = Fixture::start().await;
    let containerd = f.containerd.as_ref().expect("containerd");
    let report = containerd.importer().import_archives(&f.images).await.expect("import");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let mut names: Vec<String> = report.imported.iter().flat_map(|(_, names)| names.clone()).collect();
    names.sort();
    assert_eq!(names, [BUSYBOX, PAUSE]);
    for image in [BUSYBOX, PAUSE] {
        assert!(f.runtime.image_status(image).await.expect("status").is_some(), "{image} after import");
    }
    f.finish().await;
}

#[tokio::test]
async fn a_containerd_left_by_a_dead_agent_is_replaced() {
    let mut f = Fixture::start().await;
    let containerd = f.containerd.take().expect("containerd");
    let layout = containerd.layout().clone();
    containerd.shutdown().await;
    // What an agent killed with SIGKILL leaves: its containerd, still running, and the pid file.
    let mut orphan = tokio::process::Command::new("containerd")
        .arg("--config")
        .arg(&layout.config)
        .stdout(std::fs::File::create(f.path().join("orphan.log")).expect("orphan log"))
        .stderr(std::fs::File::create(f.path().join("orphan.err")).expect("orphan log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start the orphan containerd");
    let orphan_pid = orphan.id().expect("orphan pid");
    std::fs::write(layout.dir.join("containerd.pid"), format!("{orphan_pid}\n")).expect("pid file");
    wait_for("the orphan's socket", Duration::from_secs(20), || async { layout.socket.exists().then_some(()) }).await;

    assert!(orphan.try_wait().expect("orphan status").is_none(), "the orphan runs");
    let (bridge, pod_cidr, _) = network();
    let options = ContainerdOptions { bridge, pod_cidr, ..Default::default() };
    let replacement = Containerd::start(f.path(), options).await.expect("start over the orphan");
    // Stopped (its exit code depends on how far its start had got when SIGTERM came).
    tokio::time::timeout(Duration::from_secs(5), orphan.wait()).await.expect("orphan stopped").expect("wait");
    assert_ne!(replacement.pid(), Some(orphan_pid));
    f.runtime.version().await.expect("version from the replacement");
    f.containerd = Some(replacement);
    f.finish().await;
}

#[tokio::test]
async fn containerd_is_restarted_when_it_dies() {
    let f = Fixture::start().await;
    let containerd = f.containerd.as_ref().expect("containerd");
    let first = containerd.pid().expect("pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first as i32), nix::sys::signal::Signal::SIGKILL)
        .expect("kill containerd");
    wait_for("a new containerd", Duration::from_secs(20), || async {
        containerd.pid().filter(|p| *p != first && containerd.restarts() == 1)
    })
    .await;
    containerd.wait_ready().await.expect("ready again");
    // The runtime's channel reconnects by itself.
    f.runtime.version().await.expect("version after the restart");
    f.finish().await;
}
