//! Pod streams on the node's side of the stream: `kubectl logs` read from the containers' CRI
//! log files; `exec`, `attach` and `port-forward` bridged to the runtime's streaming server on
//! loopback over SPDY. The member opens each with an id; each is a task here, and its frames go
//! up the node's stream only as far as the member's credit allows, so one slow client never
//! holds up the node's status reports.

mod exec;
mod logs;
mod port_forward;
mod runtime;

use std::collections::HashMap;
use std::sync::Arc;

use keel_container::ContainerStatus;
use keel_proto::node::agent_message::Message as ToMember;
use keel_proto::node::stream_control::Action;
use keel_proto::node::stream_open::Kind;
use keel_proto::node::{AgentMessage, StreamControl, StreamFrame, StreamOpen};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::pods::{Context, LABEL_CONTAINER};

enum Control {
    Input(Vec<u8>),
    /// The client sends nothing more.
    InputEnd,
    Credit(u32),
}

struct Open {
    control: mpsc::UnboundedSender<Control>,
    task: tokio::task::AbortHandle,
}

/// The open pod streams of one node stream.
#[derive(Default)]
pub(crate) struct PodStreams {
    open: Arc<Mutex<HashMap<u64, Open>>>,
}

/// Why a stream stopped early: the client went away, or the node's stream did.
struct Gone;

impl PodStreams {
    /// Acts on one member message about a pod stream.
    pub(crate) fn control(&self, ctx: &Arc<Context>, message: StreamControl, out: &mpsc::Sender<AgentMessage>) {
        let id = message.id;
        match message.action {
            Some(Action::Open(open)) => {
                let (control_tx, control_rx) = mpsc::unbounded_channel();
                let frames = Frames { id, out: out.clone(), credit: open.window.max(1), control: control_rx };
                let span = tracing::info_span!("pod_stream", id, namespace = %open.namespace, pod = %open.pod, container = %open.container);
                let registry = self.open.clone();
                let ctx = ctx.clone();
                // Registered before the task can end, so its own removal always finds it.
                let mut open_streams = self.open.lock();
                let task = tokio::spawn(
                    async move {
                        serve(ctx, open, frames).await;
                        registry.lock().remove(&id);
                    }
                    .instrument(span),
                );
                open_streams.insert(id, Open { control: control_tx, task: task.abort_handle() });
            }
            Some(Action::Input(data)) => self.send(id, Control::Input(data)),
            Some(Action::InputEnd(_)) => self.send(id, Control::InputEnd),
            Some(Action::Credit(n)) => self.send(id, Control::Credit(n)),
            Some(Action::Close(_)) => {
                if let Some(open) = self.open.lock().remove(&id) {
                    open.task.abort();
                }
            }
            None => {}
        }
    }

    fn send(&self, id: u64, control: Control) {
        if let Some(open) = self.open.lock().get(&id) {
            let _ = open.control.send(control);
        }
    }

    /// Ends every stream: the node's stream they travelled on is gone, and the member that
    /// opened them with it.
    pub(crate) fn close_all(&self) {
        for (_, open) in self.open.lock().drain() {
            open.task.abort();
        }
    }
}

/// The sending half of one pod stream, within the member's credit.
struct Frames {
    id: u64,
    out: mpsc::Sender<AgentMessage>,
    credit: u32,
    control: mpsc::UnboundedReceiver<Control>,
}

impl Frames {
    async fn frame(&self, frame: StreamFrame) -> Result<(), Gone> {
        let message = AgentMessage { message: Some(ToMember::Stream(StreamFrame { id: self.id, ..frame })) };
        self.out.send(message).await.map_err(|_| Gone)
    }

    async fn opened(&self) -> Result<(), Gone> {
        self.frame(StreamFrame { opened: true, ..Default::default() }).await
    }

    /// Sends data once credit allows; input arriving meanwhile is refused (logs take none).
    async fn data(&mut self, data: Vec<u8>) -> Result<(), Gone> {
        while self.credit == 0 {
            match self.control.recv().await {
                Some(Control::Credit(n)) => self.credit += n,
                Some(Control::Input(_) | Control::InputEnd) => {}
                None => return Err(Gone),
            }
        }
        self.credit -= 1;
        self.frame(StreamFrame { data, ..Default::default() }).await
    }

    async fn end(&self, error: Option<String>) {
        let _ = self.frame(StreamFrame { end: true, error: error.unwrap_or_default(), ..Default::default() }).await;
    }
}

async fn serve(ctx: Arc<Context>, open: StreamOpen, mut frames: Frames) {
    let outcome = match open.kind.clone() {
        Some(Kind::Log(options)) => logs::logs(&ctx, &open, &options, &mut frames).await,
        Some(Kind::Exec(options)) => exec::interactive(&ctx, &open, &options, false, &mut frames).await,
        Some(Kind::Attach(options)) => exec::interactive(&ctx, &open, &options, true, &mut frames).await,
        Some(Kind::PortForward(options)) => port_forward::forward(&ctx, &open, options.port, &mut frames).await,
        None => Ok(Err("the stream request names no kind (log, exec, attach or port-forward)".to_string())),
    };
    match outcome {
        Ok(Ok(())) => frames.end(None).await,
        Ok(Err(why)) => {
            tracing::debug!(%why, "pod stream failed");
            frames.end(Some(why)).await;
        }
        Err(Gone) => tracing::debug!("pod stream's client went away"),
    }
}

/// The containers the runtime has for one of the pod's containers, newest last.
async fn attempts(ctx: &Context, open: &StreamOpen) -> Result<Vec<ContainerStatus>, String> {
    let mut containers =
        ctx.containers_of(&open.uid).await.map_err(|e| format!("listing the node's containers: {e}"))?;
    containers.retain(|c| c.labels.get(LABEL_CONTAINER).map(String::as_str) == Some(open.container.as_str()));
    containers.sort_by_key(|c| c.attempt);
    Ok(containers)
}
