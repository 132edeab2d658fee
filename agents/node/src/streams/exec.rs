//! `exec` and `attach`: kubectl's channel-prefixed messages on the member's side, one SPDY
//! stream per channel on the runtime's (`v4.channel.k8s.io`, as client-go's v4 protocol opens
//! them). Closing stdin is a FIN on its stream, so `kubectl cp` into a pod and
//! `echo … | kubectl exec -i` see their end of input.

use bytes::Bytes;
use keel_container::{ContainerState, Streams};
use keel_proto::node::{ExecOptions, StreamOpen};
use keel_spdy::{Stream, StreamReader, StreamWriter};

use super::runtime::{dial, open, stream_headers};
use super::{Control, Frames, Gone, attempts};
use crate::pods::Context;

const PROTOCOL: &str = "v4.channel.k8s.io";
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
/// The final `Status` (with the exit code) of the process.
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// kubectl's v5 message closing one of its streams: `[255, channel]`.
const CLOSE: u8 = 255;

pub(super) async fn interactive(
    ctx: &Context,
    open_request: &StreamOpen,
    options: &ExecOptions,
    attach: bool,
    frames: &mut Frames,
) -> Result<Result<(), String>, Gone> {
    let containers = match attempts(ctx, open_request).await {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    let Some(running) = containers.last().filter(|c| c.state == ContainerState::Running) else {
        return Ok(Err(format!("container {:?} in pod {:?} is not running", open_request.container, open_request.pod)));
    };
    // With a TTY both outputs arrive as one stream (CRI refuses stderr then).
    let streams = Streams {
        stdin: options.stdin,
        stdout: options.stdout,
        stderr: options.stderr && !options.tty,
        tty: options.tty,
    };
    let url = if attach {
        ctx.runtime.attach(&running.id, &streams).await
    } else {
        ctx.runtime.exec(&running.id, &options.command, &streams).await
    };
    let url = match url {
        Ok(url) => url,
        Err(e) => return Ok(Err(e.to_string())),
    };
    // Dropped at the end (or when the client goes away), which closes the runtime's connection.
    let Session { connection: _connection, mut stdin, mut stdout, mut stderr, mut error, resize } =
        match Session::connect(&url, &streams).await {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
    frames.opened().await?;
    let mut status = Vec::new();
    while stdout.is_some() || stderr.is_some() || error.is_some() {
        tokio::select! {
            data = next(&mut stdout), if frames.credit > 0 => match data {
                Some(data) => frames.data(prefixed(STDOUT, &data)).await?,
                None => stdout = None,
            },
            data = next(&mut stderr), if frames.credit > 0 => match data {
                Some(data) => frames.data(prefixed(STDERR, &data)).await?,
                None => stderr = None,
            },
            data = next(&mut error) => match data {
                Some(data) => status.extend_from_slice(&data),
                None => error = None,
            },
            control = frames.control.recv() => match control {
                Some(Control::Input(message)) => {
                    let Some((&channel, data)) = message.split_first() else { continue };
                    let data = Bytes::copy_from_slice(data);
                    match channel {
                        STDIN => {
                            if let Some(stdin) = &stdin {
                                let _ = stdin.send(data).await;
                            }
                        }
                        RESIZE => {
                            if let Some(resize) = &resize {
                                let _ = resize.send(data).await;
                            }
                        }
                        CLOSE if data.first() == Some(&STDIN) => close(&mut stdin).await,
                        _ => {}
                    }
                }
                Some(Control::InputEnd) => close(&mut stdin).await,
                Some(Control::Credit(n)) => frames.credit += n,
                // The client went away; dropping the session closes the runtime's connection.
                None => return Err(Gone),
            }
        }
    }
    if !status.is_empty() {
        frames.data(prefixed(ERROR, &status)).await?;
    }
    Ok(Ok(()))
}

fn prefixed(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(data.len() + 1);
    message.push(channel);
    message.extend_from_slice(data);
    message
}

/// The next data of a stream still open; never, for one that is done.
async fn next(reader: &mut Option<StreamReader>) -> Option<Bytes> {
    match reader {
        Some(reader) => reader.recv().await,
        None => std::future::pending().await,
    }
}

/// Ends the process's stdin (a FIN on its stream), once.
async fn close(stdin: &mut Option<StreamWriter>) {
    if let Some(stdin) = stdin.take() {
        let _ = stdin.finish().await;
    }
}

/// The runtime's side: one SPDY connection, a stream per channel.
struct Session {
    connection: keel_spdy::Session,
    stdin: Option<StreamWriter>,
    stdout: Option<StreamReader>,
    stderr: Option<StreamReader>,
    error: Option<StreamReader>,
    resize: Option<StreamWriter>,
}

impl Session {
    async fn connect(url: &str, streams: &Streams) -> Result<Session, String> {
        let connection = dial(url, PROTOCOL).await?;
        // The runtime waits for exactly the streams the request named, the error stream first.
        let error = open(&connection, stream_headers("error")).await?;
        let _ = error.writer.finish().await;
        let stdin = optional(&connection, streams.stdin, "stdin").await?.map(|s| s.writer);
        let stdout = optional(&connection, streams.stdout, "stdout").await?.map(|s| s.reader);
        let stderr = optional(&connection, streams.stderr, "stderr").await?.map(|s| s.reader);
        let resize = optional(&connection, streams.tty, "resize").await?.map(|s| s.writer);
        Ok(Session { connection, stdin, stdout, stderr, error: Some(error.reader), resize })
    }
}

/// Opens the stream of type `kind` if the request asked for it.
async fn optional(connection: &keel_spdy::Session, wanted: bool, kind: &str) -> Result<Option<Stream>, String> {
    if !wanted {
        return Ok(None);
    }
    open(connection, stream_headers(kind)).await.map(Some)
}
