//! [`CriRuntime`]: keel's [`ContainerRuntime`] over CRI v1 on a runtime's unix socket
//! (containerd's, started by [`crate::Containerd`] or given with
//! `--container-runtime-endpoint`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use keel_container::{
    ContainerConfig, ContainerRuntime, ContainerStats, ContainerStatus, ExecOutput, Image, Result, RuntimeError,
    RuntimeVersion, SandboxConfig, SandboxState, SandboxStatus, Streams,
};
use keel_proto::cri;
use keel_proto::cri::image_service_client::ImageServiceClient;
use keel_proto::cri::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, instrument};

use crate::convert;
use crate::images::{self, ImageImporter};

/// What a call may take before it counts as failed: the kubelet's default
/// `--runtime-request-timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// containerd's own default limit for what it sends; a node with many containers lists more
/// than tonic's default 4 MiB.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// How long after an import the CRI plugin may take to list the image (it learns of images
/// from containerd's event stream).
const IMPORT_VISIBLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A gRPC channel to a unix socket. It connects on first use and reconnects after failures,
/// so it can be made before the runtime is up and survives runtime restarts.
pub fn channel(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    // The URI is required by tonic but unused: the connector dials the socket.
    Endpoint::from_static("http://containerd.invalid")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
}

/// A CRI error as keel's, with what was being done.
pub(crate) fn status_error(what: impl std::fmt::Display, status: tonic::Status) -> RuntimeError {
    let message = format!("{what}: {}", status.message());
    match status.code() {
        tonic::Code::NotFound => RuntimeError::NotFound(message),
        tonic::Code::Unavailable => RuntimeError::Unavailable(message),
        tonic::Code::InvalidArgument => RuntimeError::Invalid(message),
        code => RuntimeError::Other(format!("{message} ({code:?})")),
    }
}

/// The same error kind, with more context in front.
fn context(e: RuntimeError, what: impl std::fmt::Display) -> RuntimeError {
    match e {
        RuntimeError::NotFound(m) => RuntimeError::NotFound(format!("{what}: {m}")),
        RuntimeError::Unavailable(m) => RuntimeError::Unavailable(format!("{what}: {m}")),
        RuntimeError::Invalid(m) => RuntimeError::Invalid(format!("{what}: {m}")),
        RuntimeError::Other(m) => RuntimeError::Other(format!("{what}: {m}")),
    }
}

/// Whole seconds for CRI's timeouts, rounded up so a short timeout does not become 0 ("none"
/// for exec, "kill at once" for stop).
fn seconds(d: Duration) -> i64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// One of the conditions a runtime reports (`RuntimeReady`, `NetworkReady`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub kind: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// keel's runtime over CRI v1.
pub struct CriRuntime {
    socket: PathBuf,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    images_dir: Option<PathBuf>,
    importer: ImageImporter,
    /// Configured, or learnt from the runtime's CRI configuration on first use.
    sandbox_image: tokio::sync::OnceCell<Option<String>>,
    /// One import at a time: two pods wanting the same missing image import it once.
    import_lock: tokio::sync::Mutex<()>,
    request_timeout: Duration,
}

impl std::fmt::Debug for CriRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriRuntime").field("socket", &self.socket).field("images_dir", &self.images_dir).finish()
    }
}

impl CriRuntime {
    /// For the runtime at `socket`. Does no I/O: the first call connects.
    pub fn new(socket: impl Into<PathBuf>) -> CriRuntime {
        let socket = socket.into();
        let channel = channel(&socket);
        CriRuntime {
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            images: ImageServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            importer: ImageImporter::new(&socket),
            socket,
            images_dir: None,
            sandbox_image: tokio::sync::OnceCell::new(),
            import_lock: tokio::sync::Mutex::new(()),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// Where `pull_image` looks for OCI archives of images the runtime does not have.
    pub fn with_images_dir(mut self, dir: impl Into<PathBuf>) -> CriRuntime {
        self.images_dir = Some(dir.into());
        self
    }

    /// How archives are imported (which `ctr`, which snapshotter).
    pub fn with_importer(mut self, importer: ImageImporter) -> CriRuntime {
        self.importer = importer;
        self
    }

    /// The runtime's sandbox (pause) image, imported from the images folder before the first
    /// sandbox if missing. Without this the runtime's CRI configuration is asked.
    pub fn with_sandbox_image(mut self, image: impl Into<String>) -> CriRuntime {
        self.sandbox_image = tokio::sync::OnceCell::new_with(Some(Some(image.into())));
        self
    }

    pub fn with_request_timeout(mut self, timeout: Duration) -> CriRuntime {
        self.request_timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.request_timeout);
        request
    }

    /// The runtime's conditions (CRI `Status`).
    #[instrument(skip(self), fields(socket = %self.socket.display()))]
    pub async fn status(&self) -> Result<Vec<Condition>> {
        let response = self
            .runtime
            .clone()
            .status(self.request(cri::StatusRequest { verbose: false }))
            .await
            .map_err(|s| status_error("runtime status", s))?
            .into_inner();
        Ok(response
            .status
            .map(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .map(|c| Condition { kind: c.r#type, status: c.status, reason: c.reason, message: c.message })
            .collect())
    }

    /// The sandbox image: configured, or from containerd's CRI configuration (`Status` with
    /// `verbose` carries it as JSON under `config`). None when the runtime does not say.
    async fn sandbox_image(&self) -> Result<Option<String>> {
        self.sandbox_image
            .get_or_try_init(|| async {
                let response = self
                    .runtime
                    .clone()
                    .status(self.request(cri::StatusRequest { verbose: true }))
                    .await
                    .map_err(|s| status_error("runtime status", s))?
                    .into_inner();
                let image = response
                    .info
                    .get("config")
                    .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
                    .and_then(|c| c["sandboxImage"].as_str().map(str::to_string));
                debug!(?image, "sandbox image from the runtime's configuration");
                Ok(image)
            })
            .await
            .cloned()
    }

    /// Imports the archive that provides `image` from the images folder, then waits until
    /// the CRI plugin lists it.
    async fn import(&self, image: &str) -> Result<String> {
        let Some(dir) = self.images_dir.clone() else {
            return Err(RuntimeError::NotFound(format!(
                "image {image}: the runtime does not have it and no images folder is configured (keel uses no registry)"
            )));
        };
        let wanted = image.to_string();
        let search_dir = dir.clone();
        let archive = tokio::task::spawn_blocking(move || images::find_archive(&search_dir, &wanted))
            .await
            .map_err(|e| RuntimeError::Other(format!("image {image}: searching {}: {e}", dir.display())))?
            .map_err(|e| match e {
                images::Error::Folder { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    RuntimeError::NotFound(format!("image {image}: the images folder {} does not exist", dir.display()))
                }
                e => RuntimeError::Other(format!("image {image}: {e}")),
            })?;
        let Some(archive) = archive else {
            return Err(RuntimeError::NotFound(format!(
                "image {image}: the runtime does not have it and no OCI archive (*.tar) in the images folder {} \
                 provides it (keel uses no registry: put an archive there, e.g. from ops/images/build.sh)",
                dir.display()
            )));
        };
        self.importer.import(&archive).await.map_err(|e| RuntimeError::Other(format!("image {image}: {e}")))?;
        let deadline = tokio::time::Instant::now() + IMPORT_VISIBLE_TIMEOUT;
        loop {
            if let Some(found) = self.image_status(image).await? {
                return Ok(found.id);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RuntimeError::Other(format!(
                    "image {image}: imported {} but the runtime did not list the image within {IMPORT_VISIBLE_TIMEOUT:?}",
                    archive.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn sandbox_ip(&self, id: &str) -> Result<Option<String>> {
        let request = cri::PodSandboxStatusRequest { pod_sandbox_id: id.to_string(), verbose: false };
        match self.runtime.clone().pod_sandbox_status(self.request(request)).await {
            Ok(response) => {
                Ok(Some(response.into_inner().status.and_then(|s| s.network).map(|n| n.ip).unwrap_or_default()))
            }
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(status_error(format_args!("sandbox {id} status"), s)),
        }
    }
}

/// Success when the thing is already gone: CRI's stop and remove are meant to be repeated.
fn gone_is_ok(result: std::result::Result<(), RuntimeError>) -> Result<()> {
    match result {
        Err(RuntimeError::NotFound(_)) => Ok(()),
        other => other,
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for CriRuntime {
    #[instrument(skip(self), fields(socket = %self.socket.display()))]
    async fn version(&self) -> Result<RuntimeVersion> {
        let response = self
            .runtime
            .clone()
            .version(self.request(cri::VersionRequest { version: "v1".into() }))
            .await
            .map_err(|s| status_error("runtime version", s))?
            .into_inner();
        Ok(RuntimeVersion {
            name: response.runtime_name,
            version: response.runtime_version,
            api_version: response.runtime_api_version,
        })
    }

    #[instrument(skip_all, fields(pod = %format_args!("{}/{}", config.namespace, config.name), attempt = config.attempt))]
    async fn run_pod_sandbox(&self, config: &SandboxConfig) -> Result<String> {
        let what = format!("run sandbox for pod {}/{}", config.namespace, config.name);
        // The runtime writes container logs into this folder but does not make it (the
        // kubelet makes it too).
        if !config.log_directory.as_os_str().is_empty() {
            tokio::fs::create_dir_all(&config.log_directory).await.map_err(|e| {
                RuntimeError::Other(format!("{what}: making log directory {}: {e}", config.log_directory.display()))
            })?;
        }
        // Without the pause image locally the CRI plugin would try a registry.
        if let Some(image) = self.sandbox_image().await? {
            self.pull_image(&image).await.map_err(|e| context(e, format_args!("{what}: sandbox image")))?;
        }
        let request =
            cri::RunPodSandboxRequest { config: Some(convert::sandbox_config(config)), runtime_handler: String::new() };
        let response =
            self.runtime.clone().run_pod_sandbox(self.request(request)).await.map_err(|s| status_error(&what, s))?;
        Ok(response.into_inner().pod_sandbox_id)
    }

    #[instrument(skip(self))]
    async fn stop_pod_sandbox(&self, sandbox_id: &str) -> Result<()> {
        let request = cri::StopPodSandboxRequest { pod_sandbox_id: sandbox_id.to_string() };
        gone_is_ok(
            self.runtime
                .clone()
                .stop_pod_sandbox(self.request(request))
                .await
                .map(drop)
                .map_err(|s| status_error(format_args!("stop sandbox {sandbox_id}"), s)),
        )
    }

    #[instrument(skip(self))]
    async fn remove_pod_sandbox(&self, sandbox_id: &str) -> Result<()> {
        let request = cri::RemovePodSandboxRequest { pod_sandbox_id: sandbox_id.to_string() };
        gone_is_ok(
            self.runtime
                .clone()
                .remove_pod_sandbox(self.request(request))
                .await
                .map(drop)
                .map_err(|s| status_error(format_args!("remove sandbox {sandbox_id}"), s)),
        )
    }

    #[instrument(skip(self))]
    async fn list_pod_sandboxes(&self) -> Result<Vec<SandboxStatus>> {
        let items = self
            .runtime
            .clone()
            .list_pod_sandbox(self.request(cri::ListPodSandboxRequest { filter: None }))
            .await
            .map_err(|s| status_error("list sandboxes", s))?
            .into_inner()
            .items;
        let mut sandboxes = Vec::with_capacity(items.len());
        for item in items {
            let ready = convert::sandbox_state(item.state) == SandboxState::Ready;
            // The list does not carry the IP; only a ready sandbox has one worth asking for.
            let ip = if ready {
                match self.sandbox_ip(&item.id).await? {
                    Some(ip) => ip,
                    // Removed since the list: no longer a sandbox to report.
                    None => continue,
                }
            } else {
                String::new()
            };
            sandboxes.push(convert::sandbox_status(item, ip));
        }
        Ok(sandboxes)
    }

    #[instrument(skip(self))]
    async fn image_status(&self, image: &str) -> Result<Option<Image>> {
        let request = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec { image: image.to_string(), annotations: Default::default() }),
            verbose: false,
        };
        let response = self
            .images
            .clone()
            .image_status(self.request(request))
            .await
            .map_err(|s| status_error(format_args!("image {image} status"), s))?;
        Ok(response.into_inner().image.map(convert::image))
    }

    /// Present, or imported from the images folder; never pulled from a registry.
    #[instrument(skip(self))]
    async fn pull_image(&self, image: &str) -> Result<String> {
        if let Some(found) = self.image_status(image).await? {
            return Ok(found.id);
        }
        let _one_import = self.import_lock.lock().await;
        // Another caller may have imported it while this one waited.
        if let Some(found) = self.image_status(image).await? {
            return Ok(found.id);
        }
        self.import(image).await
    }

    #[instrument(skip(self))]
    async fn list_images(&self) -> Result<Vec<Image>> {
        let response = self
            .images
            .clone()
            .list_images(self.request(cri::ListImagesRequest { filter: None }))
            .await
            .map_err(|s| status_error("list images", s))?;
        Ok(response.into_inner().images.into_iter().map(convert::image).collect())
    }

    #[instrument(skip(self, config, sandbox), fields(container = %config.name, image = %config.image))]
    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        sandbox: &SandboxConfig,
    ) -> Result<String> {
        let request = cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.to_string(),
            config: Some(convert::container_config(config, sandbox)),
            sandbox_config: Some(convert::sandbox_config(sandbox)),
        };
        let response =
            self.runtime.clone().create_container(self.request(request)).await.map_err(|s| {
                status_error(format_args!("create container {} in sandbox {sandbox_id}", config.name), s)
            })?;
        Ok(response.into_inner().container_id)
    }

    #[instrument(skip(self))]
    async fn start_container(&self, container_id: &str) -> Result<()> {
        let request = cri::StartContainerRequest { container_id: container_id.to_string() };
        self.runtime
            .clone()
            .start_container(self.request(request))
            .await
            .map_err(|s| status_error(format_args!("start container {container_id}"), s))?;
        Ok(())
    }

    #[instrument(skip(self))]
    async fn stop_container(&self, container_id: &str, timeout: Duration) -> Result<()> {
        let request = cri::StopContainerRequest { container_id: container_id.to_string(), timeout: seconds(timeout) };
        // The call lasts as long as the grace period, plus the usual allowance.
        let mut request = tonic::Request::new(request);
        request.set_timeout(timeout + self.request_timeout);
        gone_is_ok(
            self.runtime
                .clone()
                .stop_container(request)
                .await
                .map(drop)
                .map_err(|s| status_error(format_args!("stop container {container_id}"), s)),
        )
    }

    #[instrument(skip(self))]
    async fn remove_container(&self, container_id: &str) -> Result<()> {
        let request = cri::RemoveContainerRequest { container_id: container_id.to_string() };
        gone_is_ok(
            self.runtime
                .clone()
                .remove_container(self.request(request))
                .await
                .map(drop)
                .map_err(|s| status_error(format_args!("remove container {container_id}"), s)),
        )
    }

    #[instrument(skip(self))]
    async fn list_containers(&self) -> Result<Vec<ContainerStatus>> {
        let listed = self
            .runtime
            .clone()
            .list_containers(self.request(cri::ListContainersRequest { filter: None }))
            .await
            .map_err(|s| status_error("list containers", s))?
            .into_inner()
            .containers;
        let mut containers = Vec::with_capacity(listed.len());
        // The list lacks start and finish times, exit codes and reasons: each container's
        // status has them, as the kubelet asks for them too.
        for c in listed {
            let request = cri::ContainerStatusRequest { container_id: c.id.clone(), verbose: false };
            match self.runtime.clone().container_status(self.request(request)).await {
                Ok(response) => match response.into_inner().status {
                    Some(status) => containers.push(convert::container_status(c.pod_sandbox_id, status)),
                    None => containers.push(convert::listed_container(c)),
                },
                // Removed since the list.
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(status_error(format_args!("container {} status", c.id), s)),
            }
        }
        Ok(containers)
    }

    #[instrument(skip(self))]
    async fn exec_sync(&self, container_id: &str, command: &[String], timeout: Duration) -> Result<ExecOutput> {
        let request = cri::ExecSyncRequest {
            container_id: container_id.to_string(),
            cmd: command.to_vec(),
            timeout: seconds(timeout),
        };
        let mut request = tonic::Request::new(request);
        request.set_timeout(timeout + self.request_timeout);
        let response = self
            .runtime
            .clone()
            .exec_sync(request)
            .await
            .map_err(|s| status_error(format_args!("exec {command:?} in container {container_id}"), s))?
            .into_inner();
        Ok(ExecOutput { exit_code: response.exit_code, stdout: response.stdout, stderr: response.stderr })
    }

    #[instrument(skip(self))]
    async fn exec(&self, container_id: &str, command: &[String], streams: &Streams) -> Result<String> {
        let request = cri::ExecRequest {
            container_id: container_id.to_string(),
            cmd: command.to_vec(),
            tty: streams.tty,
            stdin: streams.stdin,
            stdout: streams.stdout,
            // With a TTY both outputs arrive as one stream (CRI refuses stderr then).
            stderr: streams.stderr && !streams.tty,
        };
        let response = self
            .runtime
            .clone()
            .exec(self.request(request))
            .await
            .map_err(|s| status_error(format_args!("exec {command:?} in container {container_id}"), s))?;
        Ok(response.into_inner().url)
    }

    #[instrument(skip(self))]
    async fn attach(&self, container_id: &str, streams: &Streams) -> Result<String> {
        let request = cri::AttachRequest {
            container_id: container_id.to_string(),
            stdin: streams.stdin,
            tty: streams.tty,
            stdout: streams.stdout,
            stderr: streams.stderr && !streams.tty,
        };
        let response = self
            .runtime
            .clone()
            .attach(self.request(request))
            .await
            .map_err(|s| status_error(format_args!("attach to container {container_id}"), s))?;
        Ok(response.into_inner().url)
    }

    #[instrument(skip(self))]
    async fn port_forward(&self, sandbox_id: &str, port: u16) -> Result<String> {
        let request = cri::PortForwardRequest { pod_sandbox_id: sandbox_id.to_string(), port: vec![i32::from(port)] };
        let response = self
            .runtime
            .clone()
            .port_forward(self.request(request))
            .await
            .map_err(|s| status_error(format_args!("port-forward to port {port} of sandbox {sandbox_id}"), s))?;
        Ok(response.into_inner().url)
    }

    #[instrument(skip(self))]
    async fn container_stats(&self) -> Result<Vec<ContainerStats>> {
        let response = self
            .runtime
            .clone()
            .list_container_stats(self.request(cri::ListContainerStatsRequest { filter: None }))
            .await
            .map_err(|s| status_error("container stats", s))?;
        Ok(response.into_inner().stats.into_iter().filter_map(convert::stats).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_up_to_whole_seconds() {
        assert_eq!(seconds(Duration::ZERO), 0);
        assert_eq!(seconds(Duration::from_millis(1)), 1);
        assert_eq!(seconds(Duration::from_secs(30)), 30);
        assert_eq!(seconds(Duration::from_millis(30_500)), 31);
    }

    #[test]
    fn grpc_codes_map_to_runtime_errors() {
        let e = status_error("stop container c1", tonic::Status::not_found("no such container"));
        assert!(matches!(&e, RuntimeError::NotFound(m) if m == "stop container c1: no such container"), "{e:?}");
        assert!(matches!(status_error("x", tonic::Status::unavailable("down")), RuntimeError::Unavailable(_)));
        assert!(matches!(status_error("x", tonic::Status::invalid_argument("bad")), RuntimeError::Invalid(_)));
        assert!(
            matches!(status_error("x", tonic::Status::internal("boom")), RuntimeError::Other(m) if m.contains("Internal"))
        );
    }

    #[tokio::test]
    async fn a_missing_socket_is_unavailable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let rt = CriRuntime::new(dir.path().join("nothing.sock"));
        let e = rt.version().await.expect_err("no runtime there");
        assert!(matches!(e, RuntimeError::Unavailable(_)), "{e:?}");
    }
}
