//! `pods/log`, `pods/exec`, `pods/attach` and `pods/portforward`: the member that takes the request reaches the
//! pod's node agent over the agent's own stream (no port on the worker is ever dialled). When
//! the agent streams to another member, the request is passed on to that member verbatim
//! (WebSocket upgrade included), found by the Node's `keel.dev/member-api` annotation that the
//! member writes when the agent registers.
//!
//! kubectl 1.32 runs exec and attach over WebSocket (`v5.channel.k8s.io`, falling back to
//! `v4`); channel-prefixed messages pass to the agent unchanged, apart from v5's message
//! closing stdin, which becomes the pod stream's end of input. Port-forward is in
//! [`crate::portforward`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::FromRequestParts as _;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::StreamExt as _;
use hyper_util::rt::TokioIo;
use keel_proto::node::stream_control::Action;
use keel_proto::node::stream_open::Kind;
use keel_proto::node::{ExecOptions, LogOptions, StreamFrame, StreamOpen};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::error::{ApiError, Result};
use crate::rest::Api;
use crate::server::Query;

/// The Node annotation naming the API address of the member its agent streams to.
pub const MEMBER_ANNOTATION: &str = "keel.dev/member-api";
/// Marks a request one member passed to another, so it is never passed on twice.
const FORWARDED_HEADER: &str = "x-keel-forwarded-by";
/// Frames the agent may send ahead of the client reading them.
pub(crate) const WINDOW: u32 = 16;
/// How long the agent has to set a stream up.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// The channel kubectl's v5 protocol uses to close one of its streams.
const V5_CLOSE_CHANNEL: u8 = 255;
/// The channel of the process's stdin.
const STDIN_CHANNEL: u8 = 0;
/// The channel carrying the final `Status` of an exec or attach.
const ERROR_CHANNEL: u8 = 3;

/// Where a member's node streams are; the node service sets it on start.
pub trait NodeTunnel: Send + Sync {
    /// Opens a pod stream on `node`'s agent; `None` when `node` has no stream to this member.
    fn open(&self, node: &str, request: StreamOpen) -> Option<PodStream>;

    /// Whether `node`'s agent streams to this member.
    fn serves(&self, node: &str) -> bool;
}

/// What a pod stream needs from the node stream it rides on.
pub trait PodStreamSink: Send + Sync {
    /// Queues an action for the agent; false once the node's stream is gone.
    fn send(&self, action: Action) -> bool;
}

/// One open pod stream: frames from the agent, and the way back to it. Dropping it tells the
/// agent to stop.
pub struct PodStream {
    frames: mpsc::UnboundedReceiver<StreamFrame>,
    sink: Box<dyn PodStreamSink>,
}

impl PodStream {
    pub fn new(frames: mpsc::UnboundedReceiver<StreamFrame>, sink: Box<dyn PodStreamSink>) -> PodStream {
        PodStream { frames, sink }
    }

    /// The next frame; each one taken is credited back to the agent.
    pub(crate) async fn next(&mut self) -> Option<StreamFrame> {
        let frame = self.frames.recv().await?;
        if !frame.data.is_empty() {
            self.sink.send(Action::Credit(1));
        }
        Some(frame)
    }

    /// Queues an action for the agent; false once the node's stream is gone.
    pub(crate) fn send(&self, action: Action) -> bool {
        self.sink.send(action)
    }

    /// Waits for the agent to say the stream is set up, or why it could not be.
    pub(crate) async fn opened(&mut self) -> Result<()> {
        match tokio::time::timeout(OPEN_TIMEOUT, self.next()).await {
            Ok(Some(frame)) if frame.opened => Ok(()),
            Ok(Some(frame)) if !frame.error.is_empty() => Err(ApiError::bad_request(frame.error)),
            Ok(Some(_)) => Err(ApiError::Internal { message: "the node agent sent data before opening".into() }),
            Ok(None) => Err(ApiError::Unavailable { message: "the node's stream ended".into() }),
            Err(_) => Err(ApiError::Timeout { message: "the node agent did not open the stream in time".into() }),
        }
    }
}

impl Drop for PodStream {
    fn drop(&mut self) {
        self.sink.send(Action::Close(true));
    }
}

/// The node tunnel and this member's own API address, set once the node service runs.
#[derive(Default)]
pub struct Tunnels {
    tunnel: OnceLock<Arc<dyn NodeTunnel>>,
    own_address: OnceLock<String>,
}

impl Tunnels {
    pub fn set(&self, tunnel: Arc<dyn NodeTunnel>, own_address: String) {
        let _ = self.tunnel.set(tunnel);
        let _ = self.own_address.set(own_address);
    }
}

/// An integer query parameter (`tailLines`, `sinceSeconds`, `limitBytes`), if given.
fn int_param(query: &Query, key: &str) -> Result<Option<i64>> {
    match query.get(key).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| ApiError::bad_request(format!("{key} {v:?} is not an integer"))),
    }
}

/// Serves `GET|POST /api/v1/namespaces/{ns}/pods/{name}/{log|exec|attach}`.
pub(crate) async fn serve(
    api: Arc<Api>,
    mut parts: Parts,
    body: Body,
    namespace: &str,
    name: &str,
    subresource: &str,
) -> Result<Response> {
    let query = Query::parse(parts.uri.query());
    let pods = api.registry.find("", "v1", "pods").ok_or(ApiError::NoRoute)?;
    let pod = api.get(&pods, Some(namespace), name).await?;
    let node = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::bad_request(format!("pod {name} does not have a host assigned")));
    }
    let uid = pod.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("").to_string();
    if subresource == "portforward" {
        let Some(tunnel) = api.tunnels.tunnel.get().filter(|t| t.serves(node)).cloned() else {
            return forward(&api, parts, body, node).await;
        };
        let target = crate::portforward::Target {
            tunnel,
            node: node.to_string(),
            namespace: namespace.to_string(),
            pod: name.to_string(),
            uid,
        };
        return crate::portforward::serve(parts, target).await;
    }
    let container = container_of(&pod, name, query.get("container"))?;
    let kind = match subresource {
        "log" => {
            if parts.method != axum::http::Method::GET {
                return Err(ApiError::MethodNotAllowed { method: parts.method.to_string(), what: "pods/log".into() });
            }
            Kind::Log(log_options(&query)?)
        }
        "exec" => {
            let options = exec_options(&query, true)?;
            Kind::Exec(options)
        }
        _ => Kind::Attach(exec_options(&query, false)?),
    };
    let request = StreamOpen {
        namespace: namespace.to_string(),
        pod: name.to_string(),
        uid,
        container,
        window: WINDOW,
        kind: Some(kind),
    };
    let local = api.tunnels.tunnel.get().and_then(|t| t.open(node, request.clone()));
    let Some(stream) = local else {
        return forward(&api, parts, body, node).await;
    };
    match request.kind {
        Some(Kind::Log(_)) => log_response(stream).await,
        _ => {
            let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &()).await.map_err(|_| {
                ApiError::bad_request(format!(
                    "pods/{subresource} is served over WebSocket (v5.channel.k8s.io or v4.channel.k8s.io); \
                     this request is not a WebSocket upgrade (SPDY is not supported)"
                ))
            })?;
            let span = tracing::info_span!("pod_session", pod = %name, %namespace, %subresource);
            Ok(upgrade
                .protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
                .on_upgrade(move |socket| tracing::Instrument::instrument(interactive(socket, stream), span)))
        }
    }
}

/// The container a request means: named, or the pod's default (annotated, or its only one).
fn container_of(pod: &Value, pod_name: &str, asked: Option<&str>) -> Result<String> {
    let mut names = Vec::new();
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in pod.pointer(&format!("/spec/{list}")).and_then(Value::as_array).into_iter().flatten() {
            if let Some(n) = c.get("name").and_then(Value::as_str) {
                names.push(n.to_string());
            }
        }
    }
    let app: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    let chosen = match asked.filter(|c| !c.is_empty()) {
        Some(c) => c.to_string(),
        None => {
            let annotated = pod
                .pointer("/metadata/annotations/kubectl.kubernetes.io~1default-container")
                .and_then(Value::as_str)
                .filter(|c| app.contains(c));
            match (annotated, app.as_slice()) {
                (Some(c), _) => c.to_string(),
                (None, [only]) => only.to_string(),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                        app.join(" ")
                    )));
                }
            }
        }
    };
    if !names.contains(&chosen) {
        return Err(ApiError::bad_request(format!("container {chosen} is not valid for pod {pod_name}")));
    }
    Ok(chosen)
}

fn log_options(query: &Query) -> Result<LogOptions> {
    let tail_lines = int_param(query, "tailLines")?;
    let since_seconds = int_param(query, "sinceSeconds")?;
    let limit_bytes = int_param(query, "limitBytes")?;
    let since_time = query.get("sinceTime").unwrap_or("").to_string();
    if tail_lines.is_some_and(|t| t < 0) {
        return Err(ApiError::bad_request("tailLines must be greater than or equal to 0"));
    }
    if since_seconds.is_some_and(|s| s < 1) {
        return Err(ApiError::bad_request("sinceSeconds must be greater than 0"));
    }
    if limit_bytes.is_some_and(|l| l < 1) {
        return Err(ApiError::bad_request("limitBytes must be greater than 0"));
    }
    if since_seconds.is_some() && !since_time.is_empty() {
        return Err(ApiError::bad_request("at most one of sinceTime or sinceSeconds may be specified"));
    }
    if !since_time.is_empty() && since_time.parse::<jiff::Timestamp>().is_err() {
        return Err(ApiError::bad_request(format!("sinceTime {since_time:?} is not an RFC 3339 time")));
    }
    Ok(LogOptions {
        follow: query.flag("follow"),
        previous: query.flag("previous"),
        tail_lines,
        since_seconds,
        since_time,
        timestamps: query.flag("timestamps"),
        limit_bytes,
    })
}

fn exec_options(query: &Query, exec: bool) -> Result<ExecOptions> {
    let command: Vec<String> = query.0.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect();
    if exec && command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    let options = ExecOptions {
        command,
        stdin: query.flag("stdin"),
        stdout: query.flag("stdout"),
        stderr: query.flag("stderr"),
        tty: query.flag("tty"),
    };
    if !(options.stdin || options.stdout || options.stderr) {
        return Err(ApiError::bad_request("you must specify at least one of stdin, stdout, stderr"));
    }
    Ok(options)
}

/// The log as a chunked `text/plain` body, for as long as the agent sends it.
async fn log_response(mut stream: PodStream) -> Result<Response> {
    stream.opened().await?;
    let body = futures::stream::unfold(stream, |mut stream| async move {
        let frame = stream.next().await?;
        if frame.end {
            if !frame.error.is_empty() {
                tracing::debug!(error = %frame.error, "log stream ended early");
            }
            return None;
        }
        Some((Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(frame.data)), stream))
    });
    let mut response = Response::new(Body::from_stream(body));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}

fn failure_status(message: &str) -> Vec<u8> {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": "InternalError", "code": 500,
    });
    let mut out = vec![ERROR_CHANNEL];
    out.extend_from_slice(&serde_json::to_vec(&status).unwrap_or_default());
    out
}

/// kubectl reads a close without a code as a broken connection.
pub(crate) fn normal_close() -> Message {
    Message::Close(Some(CloseFrame { code: close_code::NORMAL, reason: "".into() }))
}

/// An upgraded exec/attach: client messages to the agent, the agent's to the client. A
/// failure to set up is reported in the stream as the final Status, which kubectl prints.
async fn interactive(mut socket: WebSocket, mut stream: PodStream) {
    if let Err(e) = stream.opened().await {
        let message = match &e {
            ApiError::BadRequest { message } => message.clone(),
            other => other.to_string(),
        };
        let _ = socket.send(Message::Binary(failure_status(&message).into())).await;
        let _ = socket.send(normal_close()).await;
        return;
    }
    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(frame) if frame.end => {
                    if !frame.error.is_empty() {
                        let _ = socket.send(Message::Binary(failure_status(&frame.error).into())).await;
                    }
                    break;
                }
                Some(frame) => {
                    if socket.send(Message::Binary(frame.data.into())).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = socket.send(Message::Binary(failure_status("the node's stream ended").into())).await;
                    break;
                }
            },
            message = socket.next() => match message {
                Some(Ok(Message::Binary(data))) => {
                    // v5 closes one of its streams this way; only stdin's close means anything.
                    let action = match data.first() {
                        Some(&V5_CLOSE_CHANNEL) if data.get(1) == Some(&STDIN_CHANNEL) => Action::InputEnd(true),
                        Some(&V5_CLOSE_CHANNEL) => continue,
                        _ => Action::Input(data.to_vec()),
                    };
                    if !stream.send(action) {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    }
    let _ = socket.send(normal_close()).await;
}

/// Passes the request to the member the node's agent streams to.
pub(crate) async fn forward(api: &Api, parts: Parts, body: Body, node: &str) -> Result<Response> {
    let unreachable = || ApiError::Unavailable {
        message: format!("node {node:?} has no agent stream to any member; is its agent running?"),
    };
    if parts.headers.contains_key(FORWARDED_HEADER) {
        return Err(unreachable());
    }
    let nodes = api.registry.find("", "v1", "nodes").ok_or(ApiError::NoRoute)?;
    let node_object = api.get(&nodes, None, node).await?;
    let member = node_object
        .pointer(&format!("/metadata/annotations/{}", MEMBER_ANNOTATION.replace('/', "~1")))
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(unreachable)?
        .to_string();
    if api.tunnels.own_address.get().is_some_and(|own| *own == member) {
        return Err(unreachable());
    }
    tracing::debug!(%member, %node, "passing the pod stream to the member the node streams to");
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(&member))
        .await
        .map_err(|_| ApiError::Unavailable { message: format!("dialling member {member} timed out") })?
        .map_err(|e| ApiError::Unavailable { message: format!("dialling member {member}: {e}") })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| ApiError::Unavailable { message: format!("talking to member {member}: {e}") })?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "forwarded pod stream connection ended");
        }
    });
    let mut request = axum::http::Request::from_parts(parts, body);
    let mut outgoing = axum::http::Request::builder()
        .method(request.method().clone())
        .uri(request.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into()));
    for (k, v) in request.headers() {
        if k != header::HOST {
            outgoing = outgoing.header(k, v);
        }
    }
    let own = api.tunnels.own_address.get().cloned().unwrap_or_default();
    let outgoing = outgoing
        .header(header::HOST, member.as_str())
        .header(FORWARDED_HEADER, own)
        .body(std::mem::take(request.body_mut()))
        .map_err(|e| ApiError::Internal { message: format!("building the forwarded request: {e}") })?;
    let response = sender
        .send_request(outgoing)
        .await
        .map_err(|e| ApiError::Unavailable { message: format!("member {member} did not answer: {e}") })?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = response.into_parts();
        return Ok(Response::from_parts(parts, Body::new(body)));
    }
    // An upgrade: answer the client with the member's 101, then join the two connections.
    let client_upgrade = hyper::upgrade::on(&mut request);
    let mut answer = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (k, v) in response.headers() {
        answer = answer.header(k, v);
    }
    let member_upgrade = hyper::upgrade::on(response);
    tokio::spawn(async move {
        let (client, member) = match tokio::join!(client_upgrade, member_upgrade) {
            (Ok(c), Ok(m)) => (c, m),
            (c, m) => {
                tracing::debug!(client = c.is_ok(), member = m.is_ok(), "a forwarded upgrade failed");
                return;
            }
        };
        let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(member)).await;
    });
    answer.body(Body::empty()).map_err(|e| ApiError::Internal { message: format!("answering the upgrade: {e}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(q: &str) -> Query {
        Query::parse(Some(q))
    }

    #[test]
    fn the_container_defaults_to_the_only_or_the_annotated_one() {
        let one = json!({"spec": {"containers": [{"name": "app"}], "initContainers": [{"name": "init"}]}});
        assert_eq!(container_of(&one, "p", None).unwrap(), "app");
        assert_eq!(container_of(&one, "p", Some("init")).unwrap(), "init");
        assert!(container_of(&one, "p", Some("nope")).unwrap_err().to_string().contains("not valid for pod p"));
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        assert!(container_of(&two, "p", None).unwrap_err().to_string().contains("choose one of: [a b]"));
        let annotated = json!({
            "metadata": {"annotations": {"kubectl.kubernetes.io/default-container": "b"}},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]}
        });
        assert_eq!(container_of(&annotated, "p", None).unwrap(), "b");
    }

    #[test]
    fn log_options_are_checked_as_kube_apiserver_checks_them() {
        let o = log_options(&query("follow=true&tailLines=5&timestamps=true")).unwrap();
        assert!(o.follow && o.timestamps && !o.previous);
        assert_eq!(o.tail_lines, Some(5));
        assert!(log_options(&query("tailLines=-1")).is_err());
        assert!(log_options(&query("tailLines=x")).is_err());
        assert!(log_options(&query("sinceSeconds=0")).is_err());
        assert!(log_options(&query("sinceSeconds=5&sinceTime=2026-01-01T00:00:00Z")).is_err());
        assert!(log_options(&query("sinceTime=yesterday")).is_err());
        assert!(log_options(&query("limitBytes=0")).is_err());
    }

    #[test]
    fn exec_needs_a_command_and_a_stream() {
        let o = exec_options(&query("command=sh&command=-c&command=exit%203&stdout=true&stderr=true"), true).unwrap();
        assert_eq!(o.command, ["sh", "-c", "exit 3"]);
        assert!(exec_options(&query("stdout=true"), true).is_err());
        assert!(exec_options(&query("command=ls"), true).is_err());
        assert!(exec_options(&query("stdin=true&tty=true"), false).is_ok());
    }
}
