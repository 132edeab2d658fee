//! Running one probe once, as kubelet's exec, HTTP and TCP probers do. The outcome is success
//! or a failure with the message kubelet would put in its `Unhealthy` Event.
//!
//! * exec: the command through the runtime's ExecSync; exit code 0 passes, anything else
//!   fails with the command's output.
//! * httpGet: a GET to `host` (default: the pod's IP), `port` (a number or a container port's
//!   name), `path`, with `httpHeaders` (kubelet's `User-Agent: kube-probe/…` and `Accept: */*`
//!   unless overridden); 200 to 399 passes. Redirects are not followed (a 3xx passes, as
//!   kubelet's does when a redirect leaves the host). HTTPS is refused: the agent has no TLS
//!   client.
//! * tcpSocket: a connection accepted within the timeout passes.
//! * grpc: not run; the probe fails saying so.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keel_container::ContainerRuntime;
use tokio::net::TcpStream;

/// kubelet sends its minor version; keel serves the v1.32 API.
const USER_AGENT: &str = "kube-probe/1.32";

/// Where network probes go.
#[derive(Debug, Clone)]
pub struct Target {
    /// The pod's IP (the node's for host-network pods); empty until it has one.
    pub pod_ip: String,
    /// Whether anything can be reached at that IP (simulated pods have no network).
    pub network: bool,
}

/// Runs `probe` once against instance `container_id` of `container`. `Err` is the failure
/// message.
pub async fn check(
    runtime: &dyn ContainerRuntime,
    probe: &Probe,
    container: &Container,
    container_id: &str,
    target: &Target,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(exec) = &probe.exec {
        let command = exec.command.clone().unwrap_or_default();
        if command.is_empty() {
            return Err("exec probe has no command".into());
        }
        // The runtime enforces the timeout in the container; this bounds a runtime that hangs.
        let run = runtime.exec_sync(container_id, &command, timeout);
        let output = match tokio::time::timeout(timeout + Duration::from_secs(1), run).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("command {:?} timed out", command.join(" "))),
        };
        if output.exit_code == 0 {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        let text = text.trim_end();
        return Err(if text.is_empty() {
            format!("command {:?} exited with {}", command.join(" "), output.exit_code)
        } else {
            text.to_string()
        });
    }
    if let Some(get) = &probe.http_get {
        let scheme = get.scheme.as_deref().unwrap_or("HTTP");
        if !scheme.eq_ignore_ascii_case("HTTP") {
            return Err(format!("{scheme} probes are not supported by keel's node agent (it has no TLS client)"));
        }
        let host = host_of(get.host.as_deref(), target)?;
        let port = port_of(&get.port, container)?;
        let mut path = get.path.clone().unwrap_or_default();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        let url = format!("http://{}:{port}{path}", bracketed(&host));
        if !target.network {
            return Err(format!("simulated pods have no network: GET {url:?} not sent"));
        }
        let headers: Vec<(String, String)> =
            get.http_headers.iter().flatten().map(|h| (h.name.clone(), h.value.clone())).collect();
        let get = http_get(&host, port, &path, &headers);
        return match tokio::time::timeout(timeout, get).await {
            Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
            Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
            Ok(Err(e)) => Err(format!("Get {url:?}: {e}")),
            Err(_) => {
                Err(format!("Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"))
            }
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let host = host_of(tcp.host.as_deref(), target)?;
        let port = port_of(&tcp.port, container)?;
        let address = format!("{}:{port}", bracketed(&host));
        if !target.network {
            return Err(format!("simulated pods have no network: dial tcp {address} not attempted"));
        }
        return match tokio::time::timeout(timeout, TcpStream::connect(&address)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {address}: connect: {e}")),
            Err(_) => Err(format!("dial tcp {address}: i/o timeout")),
        };
    }
    if probe.grpc.is_some() {
        return Err("gRPC probes are not supported by keel's node agent".into());
    }
    Err("probe has no handler (exec, httpGet or tcpSocket)".into())
}

fn host_of(host: Option<&str>, target: &Target) -> Result<String, String> {
    match host.filter(|h| !h.is_empty()) {
        Some(h) => Ok(h.to_string()),
        None if target.pod_ip.is_empty() => Err("the pod has no IP yet".into()),
        None => Ok(target.pod_ip.clone()),
    }
}

fn bracketed(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() }
}

/// A probe's port: a number, or the name of one of the container's ports.
pub(crate) fn port_of(port: &IntOrString, container: &Container) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => match s.parse::<i32>() {
            Ok(n) => n,
            Err(_) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| format!("couldn't find port: {s} in container {}", container.name))?,
        },
    };
    u16::try_from(number).ok().filter(|n| *n > 0).ok_or_else(|| format!("invalid port number: {number}"))
}

/// One GET over a fresh connection (kubelet disables keep-alive for probes); the status code.
async fn http_get(host: &str, port: u16, path: &str, headers: &[(String, String)]) -> Result<u16, String> {
    let address = format!("{}:{port}", bracketed(host));
    let stream = TcpStream::connect(&address).await.map_err(|e| format!("dial tcp {address}: connect: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let mut request = Request::builder().method("GET").uri(path);
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    if !has("host") {
        request = request.header("Host", &address);
    }
    if !has("user-agent") {
        request = request.header("User-Agent", USER_AGENT);
    }
    if !has("accept") {
        request = request.header("Accept", "*/*");
    }
    request = request.header("Connection", "close");
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request.body(Empty::<Bytes>::new()).map_err(|e| format!("building the request: {e}"))?;
    // The connection is driven here rather than in a task of its own, so nothing outlives
    // the probe's timeout. A connection that ends (the server closes it, as asked) may have
    // delivered the response first.
    let mut connection = std::pin::pin!(connection);
    let mut response = std::pin::pin!(sender.send_request(request));
    let response = tokio::select! {
        biased;
        response = &mut response => response.map_err(|e| e.to_string()),
        done = &mut connection => {
            let ended = response.await.map_err(|e| e.to_string());
            match done {
                Ok(()) => ended,
                Err(e) => ended.map_err(|_| e.to_string()),
            }
        }
    };
    response.map(|r| r.status().as_u16())
}
