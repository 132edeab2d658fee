//! Pod streams on the node's side of the stream: `kubectl logs` read from the containers' CRI
//! log files, `exec` and `attach` bridged to the runtime's streaming server on loopback. The
//! member opens each with an id; each is a task here, and its frames go up the node's stream
//! only as far as the member's credit allows, so one slow client never holds up the node's
//! status reports.

use std::collections::HashMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use keel_container::{ContainerState, ContainerStatus, Streams};
use keel_proto::node::agent_message::Message as ToMember;
use keel_proto::node::stream_control::Action;
use keel_proto::node::stream_open::Kind;
use keel_proto::node::{AgentMessage, ExecOptions, LogOptions, StreamControl, StreamFrame, StreamOpen};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt as _, AsyncSeekExt as _, BufReader};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tracing::Instrument as _;

use crate::pods::{Context, LABEL_CONTAINER, LABEL_UID};

/// Log bytes in one frame at most.
const FRAME_BYTES: usize = 32 * 1024;
/// How often a followed log is looked at for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// How often a followed log's container is checked for having stopped.
const FOLLOW_STATE_CHECK: Duration = Duration::from_secs(1);
/// The streaming protocol spoken to the runtime (containerd's streaming server knows v4).
const RUNTIME_PROTOCOL: &str = "v4.channel.k8s.io";

enum Control {
    Input(Vec<u8>),
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
                Some(Control::Input(_)) => {}
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
        Some(Kind::Log(options)) => logs(&ctx, &open, &options, &mut frames).await,
        Some(Kind::Exec(options)) => interactive(&ctx, &open, &options, false, &mut frames).await,
        Some(Kind::Attach(options)) => interactive(&ctx, &open, &options, true, &mut frames).await,
        None => Ok(Err("the stream request names no kind (log, exec or attach)".to_string())),
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
    let mut containers: Vec<ContainerStatus> = ctx
        .runtime
        .list_containers()
        .await
        .map_err(|e| format!("listing the node's containers: {e}"))?
        .into_iter()
        .filter(|c| {
            c.labels.get(LABEL_UID).map(String::as_str) == Some(open.uid.as_str())
                && c.labels.get(LABEL_CONTAINER).map(String::as_str) == Some(open.container.as_str())
        })
        .collect();
    containers.sort_by_key(|c| c.attempt);
    Ok(containers)
}

fn log_path(ctx: &Context, open: &StreamOpen, attempt: u32) -> PathBuf {
    ctx.pods_root
        .join(format!("{}_{}_{}", open.namespace, open.pod, open.uid))
        .join(&open.container)
        .join(format!("{attempt}.log"))
}

async fn logs(
    ctx: &Context,
    open: &StreamOpen,
    options: &LogOptions,
    frames: &mut Frames,
) -> Result<Result<(), String>, Gone> {
    let containers = match attempts(ctx, open).await {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    let Some(current) = containers.last() else {
        return Ok(Err(format!("container {:?} in pod {:?} is waiting to start", open.container, open.pod)));
    };
    let (attempt, follow) = if options.previous {
        match current.attempt.checked_sub(1) {
            Some(previous) => (previous, false),
            None => {
                return Ok(Err(format!(
                    "previous terminated container {:?} in pod {:?} not found",
                    open.container, open.pod
                )));
            }
        }
    } else {
        (current.attempt, options.follow && current.state == ContainerState::Running)
    };
    let path = log_path(ctx, open, attempt);
    let filter = match LineFilter::new(options) {
        Ok(f) => f,
        Err(e) => return Ok(Err(e)),
    };
    let start = match options.tail_lines {
        Some(lines) if lines >= 0 => {
            let path = path.clone();
            let lines = lines as u64;
            match tokio::task::spawn_blocking(move || tail_offset(&path, lines)).await {
                Ok(Ok(offset)) => offset,
                Ok(Err(e)) => return Ok(Err(e)),
                Err(e) => return Ok(Err(format!("reading the log's tail: {e}"))),
            }
        }
        _ => 0,
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Err(format!(
                "container {:?} in pod {:?} has no log (the runtime keeps none for it: {})",
                open.container,
                open.pod,
                path.display()
            )));
        }
        Err(e) => return Ok(Err(format!("opening {}: {e}", path.display()))),
    };
    let mut reader = BufReader::new(file);
    if let Err(e) = reader.seek(SeekFrom::Start(start)).await {
        return Ok(Err(format!("seeking in {}: {e}", path.display())));
    }
    frames.opened().await?;
    let mut out = LogWriter { filter, pending: Vec::new(), line: Vec::new(), written: 0, at_line_start: true };
    let mut last_state_check = tokio::time::Instant::now();
    let mut stopped = !follow;
    loop {
        let read = match reader.read_until(b'\n', &mut out.line).await {
            Ok(n) => n,
            Err(e) => return Ok(Err(format!("reading {}: {e}", path.display()))),
        };
        if read > 0 && out.line.ends_with(b"\n") {
            out.take_line();
            if out.limit_reached() {
                break;
            }
            if out.pending.len() >= FRAME_BYTES {
                frames.data(std::mem::take(&mut out.pending)).await?;
            }
            continue;
        }
        // The end of what is written so far (an unfinished line stays in `line`).
        if !out.pending.is_empty() {
            frames.data(std::mem::take(&mut out.pending)).await?;
        }
        if stopped {
            break;
        }
        if last_state_check.elapsed() >= FOLLOW_STATE_CHECK {
            last_state_check = tokio::time::Instant::now();
            // Following ends when the container stops or was replaced; one more read drains
            // what it wrote last.
            let still_running = match attempts(ctx, open).await {
                Ok(now) => now.last().is_some_and(|c| c.attempt == attempt && c.state == ContainerState::Running),
                Err(_) => true,
            };
            if !still_running {
                stopped = true;
                continue;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            control = frames.control.recv() => match control {
                Some(Control::Credit(n)) => frames.credit += n,
                Some(Control::Input(_)) => {}
                None => return Err(Gone),
            }
        }
    }
    if !out.pending.is_empty() {
        frames.data(std::mem::take(&mut out.pending)).await?;
    }
    Ok(Ok(()))
}

/// Where the last `lines` lines of a file start.
fn tail_offset(path: &Path, lines: u64) -> Result<u64, String> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        // Reported when the file is opened for reading.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("opening {}: {e}", path.display())),
    };
    let len = file.metadata().map_err(|e| format!("reading {}: {e}", path.display()))?.len();
    if lines == 0 {
        return Ok(len);
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = len;
    let mut seen = 0u64;
    while pos > 0 {
        let step = (buf.len() as u64).min(pos);
        pos -= step;
        file.seek(SeekFrom::Start(pos)).map_err(|e| format!("seeking in {}: {e}", path.display()))?;
        file.read_exact(&mut buf[..step as usize]).map_err(|e| format!("reading {}: {e}", path.display()))?;
        for i in (0..step as usize).rev() {
            let at = pos + i as u64;
            // The file's final newline ends its last line rather than starting one.
            if buf[i] == b'\n' && at + 1 != len {
                seen += 1;
                if seen == lines {
                    return Ok(at + 1);
                }
            }
        }
    }
    Ok(0)
}

/// `sinceSeconds`/`sinceTime`, `timestamps` and `limitBytes`, applied line by line.
struct LineFilter {
    since: Option<jiff::Timestamp>,
    timestamps: bool,
    limit_bytes: Option<u64>,
}

impl LineFilter {
    fn new(options: &LogOptions) -> Result<LineFilter, String> {
        let since = if !options.since_time.is_empty() {
            Some(
                options
                    .since_time
                    .parse::<jiff::Timestamp>()
                    .map_err(|e| format!("sinceTime {:?} is not an RFC 3339 time: {e}", options.since_time))?,
            )
        } else {
            options.since_seconds.map(|s| jiff::Timestamp::now() - jiff::SignedDuration::from_secs(s.max(0)))
        };
        Ok(LineFilter {
            since,
            timestamps: options.timestamps,
            limit_bytes: options.limit_bytes.filter(|l| *l > 0).map(|l| l as u64),
        })
    }
}

/// Turns CRI log lines (`<RFC 3339 time> <stdout|stderr> <P|F> <text>`) into the log the
/// client sees: partial lines joined, optionally time-stamped.
struct LogWriter {
    filter: LineFilter,
    pending: Vec<u8>,
    line: Vec<u8>,
    written: u64,
    /// Whether the next text begins a line (a timestamp goes before it).
    at_line_start: bool,
}

impl LogWriter {
    fn take_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        let Some(entry) = parse_cri_line(&line) else {
            return;
        };
        if let Some(since) = self.filter.since
            && entry.time.parse::<jiff::Timestamp>().is_ok_and(|t| t < since)
        {
            return;
        }
        let mut text = Vec::with_capacity(entry.text.len() + 40);
        if self.filter.timestamps && self.at_line_start {
            text.extend_from_slice(entry.time.as_bytes());
            text.push(b' ');
        }
        text.extend_from_slice(entry.text);
        if entry.full {
            text.push(b'\n');
        }
        self.at_line_start = entry.full;
        if let Some(limit) = self.filter.limit_bytes {
            let room = limit.saturating_sub(self.written) as usize;
            text.truncate(room);
        }
        self.written += text.len() as u64;
        self.pending.extend_from_slice(&text);
    }

    fn limit_reached(&self) -> bool {
        self.filter.limit_bytes.is_some_and(|l| self.written >= l)
    }
}

struct CriLine<'a> {
    time: &'a str,
    full: bool,
    text: &'a [u8],
}

fn parse_cri_line(line: &[u8]) -> Option<CriLine<'_>> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or(b"");
    Some(CriLine { time, full: !tag.starts_with(b"P"), text })
}

/// `exec` and `attach`: the runtime's streaming server on one side, the member on the other;
/// channel-prefixed messages pass through unchanged.
async fn interactive(
    ctx: &Context,
    open: &StreamOpen,
    options: &ExecOptions,
    attach: bool,
    frames: &mut Frames,
) -> Result<Result<(), String>, Gone> {
    let containers = match attempts(ctx, open).await {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    let Some(running) = containers.last().filter(|c| c.state == ContainerState::Running) else {
        return Ok(Err(format!("container {:?} in pod {:?} is not running", open.container, open.pod)));
    };
    let streams = Streams { stdin: options.stdin, stdout: options.stdout, stderr: options.stderr, tty: options.tty };
    let url = if attach {
        ctx.runtime.attach(&running.id, &streams).await
    } else {
        ctx.runtime.exec(&running.id, &options.command, &streams).await
    };
    let url = match url {
        Ok(url) => url,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let mut socket = match dial_runtime(&url).await {
        Ok(socket) => socket,
        Err(e) => return Ok(Err(e)),
    };
    frames.opened().await?;
    loop {
        tokio::select! {
            message = socket.next(), if frames.credit > 0 => match message {
                Some(Ok(WsMessage::Binary(data))) => frames.data(data.to_vec()).await?,
                Some(Ok(WsMessage::Text(text))) => frames.data(text.as_bytes().to_vec()).await?,
                Some(Ok(WsMessage::Close(_))) | None => return Ok(Ok(())),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Ok(Err(format!("the runtime's stream broke: {e}"))),
            },
            control = frames.control.recv() => match control {
                Some(Control::Input(data)) => {
                    if let Err(e) = socket.send(WsMessage::Binary(data.into())).await {
                        return Ok(Err(format!("writing to the runtime's stream: {e}")));
                    }
                }
                Some(Control::Credit(n)) => frames.credit += n,
                None => {
                    let _ = socket.close(None).await;
                    return Err(Gone);
                }
            }
        }
    }
}

type RuntimeSocket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn dial_runtime(url: &str) -> Result<RuntimeSocket, String> {
    let ws_url = if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        url.to_string()
    };
    let mut request =
        ws_url.as_str().into_client_request().map_err(|e| format!("the runtime's stream URL {url:?}: {e}"))?;
    let headers = request.headers_mut();
    headers.insert("Sec-WebSocket-Protocol", RUNTIME_PROTOCOL.parse().map_err(|e| format!("{e}"))?);
    // The streaming server's WebSocket library expects an origin.
    headers.insert("Origin", "http://localhost".parse().map_err(|e| format!("{e}"))?);
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| format!("connecting to the runtime's streaming server: {e}"))?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(options: LogOptions) -> LogWriter {
        LogWriter {
            filter: LineFilter::new(&options).unwrap(),
            pending: Vec::new(),
            line: Vec::new(),
            written: 0,
            at_line_start: true,
        }
    }

    fn feed(w: &mut LogWriter, lines: &[&str]) -> String {
        for line in lines {
            w.line = format!("{line}\n").into_bytes();
            w.take_line();
        }
        String::from_utf8(std::mem::take(&mut w.pending)).unwrap()
    }

    const LOG: &[&str] = &[
        "2026-11-23T10:00:00.000000001Z stdout F one",
        "2026-11-23T10:00:01.000000001Z stderr P tw",
        "2026-11-23T10:00:01.000000002Z stderr F o",
        "2026-11-23T10:00:02.000000001Z stdout F ",
        "2026-11-23T10:00:03.000000001Z stdout F three",
    ];

    #[test]
    fn partial_lines_join_and_empty_lines_stay() {
        assert_eq!(feed(&mut writer(LogOptions::default()), LOG), "one\ntwo\n\nthree\n");
    }

    #[test]
    fn timestamps_prefix_each_line_once() {
        let out = feed(&mut writer(LogOptions { timestamps: true, ..Default::default() }), &LOG[..3]);
        assert_eq!(out, "2026-11-23T10:00:00.000000001Z one\n2026-11-23T10:00:01.000000001Z two\n");
    }

    #[test]
    fn since_time_drops_older_lines() {
        let options = LogOptions { since_time: "2026-11-23T10:00:02Z".into(), ..Default::default() };
        assert_eq!(feed(&mut writer(options), LOG), "\nthree\n");
    }

    #[test]
    fn limit_bytes_truncates() {
        let mut w = writer(LogOptions { limit_bytes: Some(6), ..Default::default() });
        assert_eq!(feed(&mut w, LOG), "one\ntw");
        assert!(w.limit_reached());
    }

    #[test]
    fn bad_since_time_is_an_error() {
        assert!(LineFilter::new(&LogOptions { since_time: "yesterday".into(), ..Default::default() }).is_err());
    }

    #[test]
    fn tail_offset_counts_lines_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, "a\nbb\nccc\n").unwrap();
        assert_eq!(tail_offset(&path, 1).unwrap(), 5);
        assert_eq!(tail_offset(&path, 2).unwrap(), 2);
        assert_eq!(tail_offset(&path, 3).unwrap(), 0);
        assert_eq!(tail_offset(&path, 10).unwrap(), 0);
        assert_eq!(tail_offset(&path, 0).unwrap(), 9);
        // A last line still being written counts as a line.
        std::fs::write(&path, "a\nbb").unwrap();
        assert_eq!(tail_offset(&path, 1).unwrap(), 2);
    }
}
