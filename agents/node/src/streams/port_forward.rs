//! `port-forward`: one forwarded connection per pod stream, to the port in the pod's network
//! namespace through the runtime's streaming server (`portforward.k8s.io` over SPDY: an error
//! stream and a data stream, as kubelet's clients open them).

use bytes::Bytes;
use keel_container::SandboxState;
use keel_proto::node::StreamOpen;

use super::runtime::{dial, open, stream_headers};
use super::{Control, Frames, Gone};
use crate::pods::Context;

const PROTOCOL: &str = "portforward.k8s.io";

pub(super) async fn forward(
    ctx: &Context,
    open_request: &StreamOpen,
    port: u32,
    frames: &mut Frames,
) -> Result<Result<(), String>, Gone> {
    let Some(port) = u16::try_from(port).ok().filter(|p| *p > 0) else {
        return Ok(Err(format!("port {port} is not a valid port (1-65535)")));
    };
    let sandboxes = match ctx.sandboxes_of(&open_request.uid).await {
        Ok(s) => s,
        Err(e) => return Ok(Err(format!("listing the node's pod sandboxes: {e}"))),
    };
    let Some(sandbox) = sandboxes.iter().filter(|s| s.state == SandboxState::Ready).max_by_key(|s| s.attempt) else {
        return Ok(Err(format!("pod {:?} has no running sandbox on this node", open_request.pod)));
    };
    let url = match ctx.runtime.port_forward(&sandbox.id, port).await {
        Ok(url) => url,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let connected = async {
        let connection = dial(&url, PROTOCOL).await?;
        let headers = |kind| stream_headers(kind).with("port", port.to_string()).with("requestID", "0");
        let error = open(&connection, headers("error")).await?;
        let _ = error.writer.finish().await;
        let data = open(&connection, headers("data")).await?;
        Ok::<_, String>((connection, error.reader, data))
    };
    let (_connection, mut error, mut data) = match connected.await {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    frames.opened().await?;
    let (mut data_done, mut error_done, mut input_open) = (false, false, true);
    let mut failure = Vec::new();
    while !(data_done && error_done) {
        tokio::select! {
            received = data.reader.recv(), if frames.credit > 0 && !data_done => match received {
                Some(bytes) => frames.data(bytes.to_vec()).await?,
                None => data_done = true,
            },
            received = error.recv(), if !error_done => match received {
                Some(bytes) => failure.extend_from_slice(&bytes),
                None => error_done = true,
            },
            control = frames.control.recv() => match control {
                Some(Control::Input(bytes)) if input_open => {
                    if data.writer.send(Bytes::from(bytes)).await.is_err() {
                        input_open = false;
                    }
                }
                Some(Control::Input(_)) => {}
                Some(Control::InputEnd) => {
                    if std::mem::replace(&mut input_open, false) {
                        let _ = data.writer.finish().await;
                    }
                }
                Some(Control::Credit(n)) => frames.credit += n,
                None => return Err(Gone),
            }
        }
    }
    if failure.is_empty() { Ok(Ok(())) } else { Ok(Err(String::from_utf8_lossy(&failure).into_owned())) }
}
