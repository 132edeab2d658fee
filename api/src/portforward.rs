//! `pods/portforward`: kubectl's SPDY session (tunnelled in a WebSocket as kubectl 1.31+ does
//! by default, or over a bare `SPDY/3.1` upgrade as older clients and
//! `KUBECTL_PORT_FORWARD_WEBSOCKETS=false` do), or kubelet's WebSocket channel protocol with a
//! `ports` query (client libraries). kubectl opens an error stream and a data stream per local
//! connection, paired by their `requestID`; each connection becomes one pod stream on the node
//! agent's stream, which the agent connects to the port in the pod's network namespace.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::FromRequestParts as _;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use hyper_util::rt::TokioIo;
use keel_proto::node::stream_control::Action;
use keel_proto::node::stream_open::Kind;
use keel_proto::node::{PortForwardOptions, StreamOpen};
use keel_spdy::{ResetStatus, Role, Session, Stream};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::error::{ApiError, Result};
use crate::podstream::{NodeTunnel, WINDOW, normal_close};
use crate::server::Query;

/// What kubectl asks for over WebSocket: SPDY carried in binary messages.
const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The protocol of the streams themselves, named in a bare SPDY upgrade.
const PROTOCOL: &str = "portforward.k8s.io";
/// kubelet's WebSocket port-forward: channels, as binary messages or base64 text.
const CHANNEL_PROTOCOL: &str = "v4.channel.k8s.io";
const BASE64_CHANNEL_PROTOCOL: &str = "v4.base64.channel.k8s.io";
const PROTOCOL_HEADER: &str = "X-Stream-Protocol-Version";

/// The pod whose ports a session reaches.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) tunnel: Arc<dyn NodeTunnel>,
    pub(crate) node: String,
    pub(crate) namespace: String,
    pub(crate) pod: String,
    pub(crate) uid: String,
}

/// Answers the upgrade and serves the session on this member (the node streams here).
pub(crate) async fn serve(mut parts: Parts, target: Target) -> Result<Response> {
    let span = tracing::info_span!("port_forward", pod = %target.pod, namespace = %target.namespace);
    if is_upgrade_to(&parts.headers, "websocket") {
        let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| ApiError::bad_request(format!("port-forward: a malformed WebSocket upgrade: {e}")))?;
        let offered = parts.headers.get(header::SEC_WEBSOCKET_PROTOCOL).and_then(|v| v.to_str().ok()).unwrap_or("");
        let offered: Vec<&str> = offered.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
        if offered.contains(&TUNNEL_PROTOCOL) {
            return Ok(upgrade
                .protocols([TUNNEL_PROTOCOL])
                .on_upgrade(move |socket| run(websocket_bytes(socket), target).instrument(span)));
        }
        // The channel protocol, as kubelet serves it: the first offered one it knows, or none.
        let chosen: Option<&'static str> =
            offered.iter().find_map(|o| [CHANNEL_PROTOCOL, BASE64_CHANNEL_PROTOCOL].into_iter().find(|p| p == o));
        if chosen.is_none() && !offered.is_empty() {
            return Err(ApiError::bad_request(format!(
                "port-forward over WebSocket speaks {TUNNEL_PROTOCOL:?}, {CHANNEL_PROTOCOL:?} or \
                 {BASE64_CHANNEL_PROTOCOL:?}; this client offered {offered:?}"
            )));
        }
        let ports = ports_of(&Query::parse(parts.uri.query()))?;
        let base64 = chosen == Some(BASE64_CHANNEL_PROTOCOL);
        let upgrade = match chosen {
            Some(protocol) => upgrade.protocols([protocol]),
            None => upgrade,
        };
        return Ok(upgrade.on_upgrade(move |socket| channels(socket, target, ports, base64).instrument(span)));
    }
    if is_upgrade_to(&parts.headers, "SPDY/3.1") {
        let offered: Vec<&str> = parts
            .headers
            .get_all(PROTOCOL_HEADER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        // A client naming no protocol is an old one and gets the only one there is.
        if !offered.is_empty() && !offered.contains(&PROTOCOL) {
            return Err(ApiError::Forbidden {
                resource: "pods/portforward".into(),
                name: target.pod.clone(),
                message: format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports [\"{PROTOCOL}\"]"
                ),
            });
        }
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or_else(|| ApiError::bad_request("port-forward: this connection cannot be upgraded"))?;
        tokio::spawn(
            async move {
                match on_upgrade.await {
                    Ok(upgraded) => run(TokioIo::new(upgraded), target).await,
                    Err(e) => tracing::debug!(error = %e, "the SPDY upgrade did not complete"),
                }
            }
            .instrument(span),
        );
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "SPDY/3.1")
            .header(PROTOCOL_HEADER, PROTOCOL)
            .body(axum::body::Body::empty())
            .map_err(|e| ApiError::Internal { message: format!("answering the upgrade: {e}") });
    }
    Err(ApiError::bad_request(
        "pods/portforward is served over a WebSocket or SPDY/3.1 upgrade; this request is neither",
    ))
}

fn is_upgrade_to(headers: &HeaderMap, protocol: &str) -> bool {
    let upgrade = headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()).unwrap_or("");
    upgrade.split(',').any(|p| p.trim().eq_ignore_ascii_case(protocol))
}

/// The bytes of a WebSocket's binary messages as one byte stream, both ways: kubectl writes
/// SPDY frames into messages with no framing of their own.
fn websocket_bytes(socket: WebSocket) -> tokio::io::DuplexStream {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let (mut from_spdy, mut to_spdy) = tokio::io::split(theirs);
        let (mut sink, mut messages) = socket.split();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(Ok(Message::Binary(data))) => {
                        if to_spdy.write_all(&data).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
                read = from_spdy.read(&mut buf) => match read {
                    Ok(0) | Err(_) => {
                        let _ = sink.send(Message::Close(None)).await;
                        break;
                    }
                    Ok(n) => {
                        if sink.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                            break;
                        }
                    }
                },
            }
        }
    });
    ours
}

/// An error stream and a data stream for one forwarded connection, as they arrive.
#[derive(Default)]
struct Pair {
    error: Option<Stream>,
    data: Option<Stream>,
}

/// Serves one SPDY session: pairs kubectl's streams and forwards each pair.
async fn run<IO>(io: IO, target: Target)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (session, mut incoming) = match Session::start(io, Role::Server) {
        Ok(s) => s,
        Err(e) => return tracing::warn!(error = %e, "port-forward: starting SPDY failed"),
    };
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    while let Some(stream) = incoming.recv().await {
        let (port, kind) = match checked(&stream) {
            Ok(checked) => checked,
            Err(why) => {
                tracing::debug!(stream = stream.id, %why, "port-forward: refusing a stream");
                stream.writer.reset(ResetStatus::RefusedStream).await;
                continue;
            }
        };
        if stream.accept().await.is_err() {
            break;
        }
        // Clients that send no request id are paired as kubelet pairs them: by stream number.
        let request = match stream.headers.get("requestid") {
            Some(id) => id.to_string(),
            None if kind == StreamKind::Error => stream.id.to_string(),
            None => stream.id.saturating_sub(2).to_string(),
        };
        let pair = pairs.entry(request.clone()).or_default();
        let slot = if kind == StreamKind::Error { &mut pair.error } else { &mut pair.data };
        if slot.is_some() {
            tracing::debug!(%request, "port-forward: a second stream of one kind for one request");
            stream.writer.reset(ResetStatus::ProtocolError).await;
            continue;
        }
        *slot = Some(stream);
        if pair.error.is_some()
            && pair.data.is_some()
            && let Some(Pair { error: Some(error), data: Some(data) }) = pairs.remove(&request)
        {
            let span = tracing::debug_span!("connection", %request, port);
            tokio::spawn(connection(target.clone(), port, error, data, session.closed_signal()).instrument(span));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamKind {
    Error,
    Data,
}

/// The port and kind a stream names, checked as kubelet checks them.
fn checked(stream: &Stream) -> std::result::Result<(u16, StreamKind), String> {
    let port = stream.headers.get("port").ok_or("\"port\" header is required")?;
    let port: u16 = port.parse().map_err(|_| format!("unable to parse {port:?} as a port"))?;
    if port == 0 {
        return Err("port \"0\" must be > 0".into());
    }
    let kind = match stream.headers.get("streamtype") {
        Some("error") => StreamKind::Error,
        Some("data") => StreamKind::Data,
        Some(other) => return Err(format!("invalid stream type {other:?}")),
        None => return Err("\"streamType\" header is required".into()),
    };
    Ok((port, kind))
}

/// What the client side of a forwarded connection did next.
enum FromClient {
    Data(Bytes),
    /// It sends no more but still reads (said once).
    End,
    /// Its whole session is gone.
    Gone,
}

/// The client's end of one forwarded connection, whichever protocol carries it.
trait ClientEnd {
    async fn recv(&mut self) -> FromClient;
    /// Passes the pod's bytes on; false once the client is gone.
    async fn send(&mut self, data: Bytes) -> bool;
}

/// One forwarded connection through a pod stream on the node's agent. A failure comes back
/// as the message to give the client.
async fn pump(target: &Target, port: u16, client: &mut impl ClientEnd) -> std::result::Result<(), String> {
    let request = StreamOpen {
        namespace: target.namespace.clone(),
        pod: target.pod.clone(),
        uid: target.uid.clone(),
        container: String::new(),
        window: WINDOW,
        kind: Some(Kind::PortForward(PortForwardOptions { port: u32::from(port) })),
    };
    let mut pod = target
        .tunnel
        .open(&target.node, request)
        .ok_or_else(|| format!("node {:?} no longer streams to this member", target.node))?;
    pod.opened().await.map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            frame = pod.next() => match frame {
                Some(frame) if frame.end => {
                    return if frame.error.is_empty() { Ok(()) } else { Err(frame.error) };
                }
                Some(frame) => {
                    if !client.send(Bytes::from(frame.data)).await {
                        return Ok(());
                    }
                }
                None => return Err("the node's stream ended".to_string()),
            },
            input = client.recv() => match input {
                FromClient::Data(bytes) => {
                    pod.send(Action::Input(bytes.to_vec()));
                }
                FromClient::End => {
                    pod.send(Action::InputEnd(true));
                }
                // Dropping the pod stream closes it on the agent.
                FromClient::Gone => return Ok(()),
            },
        }
    }
}

fn failure(target: &Target, port: u16, message: &str) -> String {
    format!("error forwarding port {port} to pod {}, uid {}: {message}", target.pod, target.uid)
}

/// A data stream of kubectl's SPDY session.
struct SpdyEnd {
    reader: keel_spdy::StreamReader,
    writer: keel_spdy::StreamWriter,
    closed: keel_spdy::Closed,
    finished: bool,
}

impl ClientEnd for SpdyEnd {
    async fn recv(&mut self) -> FromClient {
        if !self.finished {
            tokio::select! {
                data = self.reader.recv() => match data {
                    Some(data) => return FromClient::Data(data),
                    None => {
                        self.finished = true;
                        return FromClient::End;
                    }
                },
                _ = self.closed.wait() => return FromClient::Gone,
            }
        }
        self.closed.wait().await;
        FromClient::Gone
    }

    async fn send(&mut self, data: Bytes) -> bool {
        self.writer.send(data).await.is_ok()
    }
}

/// One forwarded connection of a SPDY session: a failure is written to the error stream,
/// which kubectl prints. Both streams end with a FIN, which is how kubectl learns the
/// connection is over.
async fn connection(target: Target, port: u16, error: Stream, data: Stream, closed: keel_spdy::Closed) {
    let mut end = SpdyEnd { reader: data.reader, writer: data.writer, closed, finished: false };
    if let Err(message) = pump(&target, port, &mut end).await {
        tracing::debug!(%message, "port-forward connection failed");
        let _ = error.writer.send(Bytes::from(failure(&target, port, &message))).await;
    }
    let _ = end.writer.finish().await;
    let _ = error.writer.finish().await;
}

/// One port of a channel-protocol WebSocket session.
struct ChannelEnd {
    input: mpsc::Receiver<Bytes>,
    output: mpsc::Sender<(u8, Bytes)>,
    channel: u8,
}

impl ClientEnd for ChannelEnd {
    async fn recv(&mut self) -> FromClient {
        // The protocol has no half-close: the input ends with the whole session.
        self.input.recv().await.map_or(FromClient::Gone, FromClient::Data)
    }

    async fn send(&mut self, data: Bytes) -> bool {
        self.output.send((self.channel, data)).await.is_ok()
    }
}

/// The ports of a `ports=` query (comma-separated, repeatable), checked as kube-apiserver
/// checks them.
fn ports_of(query: &Query) -> Result<Vec<u16>> {
    let mut ports = Vec::new();
    for value in query.0.iter().filter(|(k, _)| k == "ports").flat_map(|(_, v)| v.split(',')) {
        let value = value.trim();
        match value.parse::<u16>() {
            Ok(port) if port > 0 => ports.push(port),
            _ => return Err(ApiError::bad_request(format!("port {value:?} is not a valid port number (1-65535)"))),
        }
    }
    if ports.is_empty() {
        return Err(ApiError::bad_request("at least one port must be given in \"ports\""));
    }
    Ok(ports)
}

/// The WebSocket protocol kubelet serves port-forward with and some client libraries speak:
/// for the i-th port of the `ports` query, channel 2i carries data both ways and 2i+1 the
/// error; the first message on each is the port, two bytes little-endian. There is no
/// half-close: a port's connection lasts until the pod's side ends or the client leaves.
async fn channels(socket: WebSocket, target: Target, ports: Vec<u16>, base64: bool) {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let encode = |channel: u8, data: &[u8]| -> Message {
        if base64 {
            Message::Text(format!("{}{}", char::from(b'0' + channel), engine.encode(data)).into())
        } else {
            let mut frame = Vec::with_capacity(data.len() + 1);
            frame.push(channel);
            frame.extend_from_slice(data);
            Message::Binary(frame.into())
        }
    };
    let (mut sink, mut messages) = socket.split();
    let (output_tx, mut output) = mpsc::channel::<(u8, Bytes)>(64);
    let mut inputs = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data, error) = ((2 * i) as u8, (2 * i + 1) as u8);
        for channel in [data, error] {
            if sink.send(encode(channel, &port.to_le_bytes())).await.is_err() {
                return;
            }
        }
        let (input_tx, input) = mpsc::channel(16);
        inputs.push(input_tx);
        let mut end = ChannelEnd { input, output: output_tx.clone(), channel: data };
        let target = target.clone();
        tokio::spawn(
            async move {
                if let Err(message) = pump(&target, port, &mut end).await {
                    let _ = end.output.send((error, Bytes::from(failure(&target, port, &message)))).await;
                }
            }
            .instrument(tracing::debug_span!("port", port)),
        );
    }
    drop(output_tx);
    loop {
        tokio::select! {
            message = messages.next() => {
                let decoded = match message {
                    Some(Ok(Message::Binary(frame))) => frame.split_first().map(|(c, d)| (*c, Bytes::copy_from_slice(d))),
                    Some(Ok(Message::Text(text))) if base64 => text.as_bytes().split_first().and_then(|(c, d)| {
                        Some((c.checked_sub(b'0')?, Bytes::from(engine.decode(d).ok()?)))
                    }),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => None,
                };
                // Only data channels take input; anything else is ignored, as kubelet does.
                if let Some((channel, data)) = decoded
                    && channel % 2 == 0
                    && let Some(input) = inputs.get(usize::from(channel / 2))
                    && !data.is_empty()
                {
                    let _ = input.send(data).await;
                }
            }
            out = output.recv() => match out {
                Some((channel, data)) => {
                    if sink.send(encode(channel, &data)).await.is_err() {
                        break;
                    }
                }
                // Every port's connection is over.
                None => break,
            },
        }
    }
    let _ = sink.send(normal_close()).await;
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn ports_are_checked_as_kube_apiserver_checks_them() {
        let ports = |q: &str| ports_of(&Query::parse(Some(q)));
        assert_eq!(ports("ports=8080").unwrap(), [8080]);
        assert_eq!(ports("ports=80,443&ports=8080").unwrap(), [80, 443, 8080]);
        assert!(ports("ports=0").is_err());
        assert!(ports("ports=70000").is_err());
        assert!(ports("ports=http").is_err());
        assert!(ports("").unwrap_err().to_string().contains("at least one port"));
    }

    #[test]
    fn upgrades_are_told_apart_by_their_header() {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        assert!(is_upgrade_to(&headers, "SPDY/3.1") && !is_upgrade_to(&headers, "websocket"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(is_upgrade_to(&headers, "websocket"));
    }
}
