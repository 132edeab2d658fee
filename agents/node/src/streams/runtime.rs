//! Dialling the runtime's streaming server: an HTTP/1.1 upgrade to SPDY/3.1 on loopback, as
//! kubelet's clients do. SPDY rather than WebSocket because only SPDY can close one stream
//! (stdin, or the write side of a forwarded connection) while the others go on.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::StatusCode;
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper_util::rt::TokioIo;
use keel_spdy::{Headers, Role, Session, Stream};

/// How long the runtime has to answer the upgrade and each new stream.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
const PROTOCOL_HEADER: &str = "X-Stream-Protocol-Version";

/// Connects to a streaming URL from CRI Exec/Attach/PortForward and agrees on `protocol`.
pub(super) async fn dial(url: &str, protocol: &str) -> Result<Session, String> {
    tokio::time::timeout(SETUP_TIMEOUT, upgrade(url, protocol))
        .await
        .map_err(|_| format!("the runtime's streaming server did not answer {url} in time"))?
}

async fn upgrade(url: &str, protocol: &str) -> Result<Session, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("the runtime's stream URL {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("the runtime's stream URL {url:?} is not plain http on loopback"));
    }
    let authority = uri.authority().ok_or_else(|| format!("the runtime's stream URL {url:?} has no host"))?.clone();
    let tcp = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .map_err(|e| format!("connecting to the runtime's streaming server {authority}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("talking to the runtime's streaming server: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "the runtime's streaming connection ended");
        }
    });
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let request = hyper::Request::post(path)
        .header(HOST, authority.as_str())
        .header(CONNECTION, "Upgrade")
        .header(UPGRADE, "SPDY/3.1")
        .header(PROTOCOL_HEADER, protocol)
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("building the upgrade request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("the runtime's streaming server did not answer: {e}"))?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status();
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return Err(format!(
            "the runtime's streaming server refused the stream ({status}): {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    let agreed = response.headers().get(PROTOCOL_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    if agreed != protocol {
        return Err(format!("the runtime's streaming server speaks {agreed:?}, not {protocol:?}"));
    }
    let upgraded = hyper::upgrade::on(response).await.map_err(|e| format!("upgrading to SPDY: {e}"))?;
    let (session, _incoming) =
        Session::start(TokioIo::new(upgraded), Role::Client).map_err(|e| format!("starting SPDY: {e}"))?;
    Ok(session)
}

/// Opens one stream of the session, named by its `streamType` and any further headers.
pub(super) async fn open(session: &Session, headers: Headers) -> Result<Stream, String> {
    let kind = headers.get("streamtype").unwrap_or("").to_string();
    match tokio::time::timeout(SETUP_TIMEOUT, session.open(headers)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(format!("opening the {kind} stream to the runtime: {e}")),
        Err(_) => Err(format!("the runtime did not accept the {kind} stream in time")),
    }
}

/// A stream's headers: its type, and for port-forward the port and request.
pub(super) fn stream_headers(kind: &str) -> Headers {
    Headers::new().with("streamType", kind)
}
