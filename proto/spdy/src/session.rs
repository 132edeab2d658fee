//! A SPDY connection: one task reads frames and hands their data to the streams, one task
//! writes what the streams send. Header compression lives with each task, so blocks are
//! compressed and decompressed in wire order, as the shared zlib streams require.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument as _;

use crate::frame::{Frame, ResetStatus};
use crate::headers::{Deflater, Headers, Inflater};
use crate::{Error, Result};

/// Data frames queued for a stream's reader before the connection's reader waits for it. A
/// slow reader holds up the connection, which is what keeps a fast peer from filling memory.
const DATA_QUEUE: usize = 16;
/// Largest data frame sent; bigger writes are cut up.
const MAX_DATA_FRAME: usize = 32 * 1024;
/// Frames queued for the writer.
const OUT_QUEUE: usize = 64;

/// Which end of the connection this is: clients number their streams odd, servers even.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

impl Role {
    /// The parity of the stream and ping ids the other end starts.
    fn peer_parity(self) -> u32 {
        match self {
            Role::Client => 0,
            Role::Server => 1,
        }
    }
}

enum Out {
    Syn { stream: u32, headers: Headers, fin: bool },
    Reply { stream: u32, headers: Headers },
    Data { stream: u32, data: Bytes, fin: bool },
    Reset { stream: u32, status: ResetStatus },
    Ping { id: u32 },
    WindowUpdate { stream: u32, delta: u32 },
}

struct Entry {
    /// Gone once the peer has finished sending on the stream.
    data: Option<mpsc::Sender<Bytes>>,
    /// Waiting for SYN_REPLY (streams this side opened).
    reply: Option<oneshot::Sender<Headers>>,
}

#[derive(Default)]
struct Streams {
    open: HashMap<u32, Entry>,
    /// The connection's reader stopped: nothing more will arrive for any stream.
    ended: bool,
}

struct Shared {
    out: mpsc::Sender<Out>,
    streams: Mutex<Streams>,
    next_id: AtomicU32,
    /// Becomes true when the connection's reader stops.
    closed: watch::Receiver<bool>,
}

/// A SPDY connection. Streams the peer opens arrive on the receiver [`Session::start`]
/// returns. Dropping it says GOAWAY and closes the connection once what is queued is written.
pub struct Session {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

/// One stream: its headers (the peer's SYN_STREAM, or its SYN_REPLY for one opened here),
/// what arrives on it and the way to send on it.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    pub reader: StreamReader,
    pub writer: StreamWriter,
}

pub struct StreamReader {
    data: mpsc::Receiver<Bytes>,
}

#[derive(Clone)]
pub struct StreamWriter {
    stream: u32,
    out: mpsc::Sender<Out>,
}

impl Session {
    /// Starts the reader and writer tasks on `io`.
    pub fn start<IO>(io: IO, role: Role) -> Result<(Session, mpsc::Receiver<Stream>)>
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let deflater = Deflater::new()?;
        let (read, write) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
        let (incoming_tx, incoming_rx) = mpsc::channel(DATA_QUEUE);
        let (closed_tx, closed_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            out: out_tx,
            streams: Mutex::new(Streams::default()),
            next_id: AtomicU32::new(if role == Role::Client { 1 } else { 2 }),
            closed: closed_rx,
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let span = tracing::debug_span!("spdy", ?role);
        tokio::spawn(write_frames(write, out_rx, shutdown_rx, deflater).instrument(span.clone()));
        let reader = Reader { shared: shared.clone(), incoming: incoming_tx, inflater: Inflater::new(), role };
        tokio::spawn(
            async move {
                if let Err(e) = reader.run(read).await {
                    tracing::debug!(error = %e, "SPDY connection ended");
                }
                let _ = closed_tx.send(true);
            }
            .instrument(span),
        );
        Ok((Session { shared, shutdown: shutdown_tx }, incoming_rx))
    }

    /// Opens a stream and waits for the peer's SYN_REPLY.
    pub async fn open(&self, headers: Headers) -> Result<Stream> {
        let id = self.shared.next_id.fetch_add(2, Ordering::Relaxed);
        let (data_tx, data_rx) = mpsc::channel(DATA_QUEUE);
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut streams = self.shared.streams.lock();
            if streams.ended {
                return Err(Error::Closed);
            }
            streams.open.insert(id, Entry { data: Some(data_tx), reply: Some(reply_tx) });
        }
        self.shared.out.send(Out::Syn { stream: id, headers, fin: false }).await.map_err(|_| Error::Closed)?;
        let headers = reply_rx.await.map_err(|_| Error::Refused(id))?;
        Ok(Stream {
            id,
            headers,
            reader: StreamReader { data: data_rx },
            writer: StreamWriter { stream: id, out: self.shared.out.clone() },
        })
    }

    /// A signal, for tasks that serve its streams, of the connection's end.
    pub fn closed_signal(&self) -> Closed {
        Closed(self.shared.closed.clone())
    }
}

/// Tells whoever waits that the connection stopped reading (the peer closed it, or it broke).
#[derive(Clone)]
pub struct Closed(watch::Receiver<bool>);

impl Closed {
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|c| *c).await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl Stream {
    /// Accepts a stream the peer opened (an empty SYN_REPLY).
    pub async fn accept(&self) -> Result<()> {
        self.writer.out.send(Out::Reply { stream: self.id, headers: Headers::new() }).await.map_err(|_| Error::Closed)
    }
}

impl StreamReader {
    /// The next data the peer sent; `None` once it finished the stream, reset it, or the
    /// connection ended.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.data.recv().await
    }
}

impl StreamWriter {
    pub fn id(&self) -> u32 {
        self.stream
    }

    pub async fn send(&self, mut data: Bytes) -> Result<()> {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_DATA_FRAME));
            self.out
                .send(Out::Data { stream: self.stream, data: chunk, fin: false })
                .await
                .map_err(|_| Error::Closed)?;
        }
        Ok(())
    }

    /// Finishes this side of the stream (FIN): the peer reads to its end.
    pub async fn finish(&self) -> Result<()> {
        self.out.send(Out::Data { stream: self.stream, data: Bytes::new(), fin: true }).await.map_err(|_| Error::Closed)
    }

    /// Abandons the stream in both directions.
    pub async fn reset(&self, status: ResetStatus) {
        let _ = self.out.send(Out::Reset { stream: self.stream, status }).await;
    }
}

async fn write_frames<W: AsyncWrite>(
    write: W,
    mut out: mpsc::Receiver<Out>,
    mut shutdown: watch::Receiver<bool>,
    mut deflater: Deflater,
) {
    tokio::pin!(write);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let first = tokio::select! {
            // What is already queued goes out before the goodbye.
            biased;
            item = out.recv() => item,
            _ = shutdown.wait_for(|s| *s) => None,
        };
        let Some(first) = first else {
            if *shutdown.borrow() {
                let mut bye = BytesMut::new();
                if (Frame::GoAway { last_stream: 0 }).write(&mut bye).is_ok() {
                    let _ = write.write_all(&bye).await;
                }
            }
            break;
        };
        let mut next = Some(first);
        // Whatever else is queued goes out in the same write.
        while let Some(item) = next {
            let frame = match item {
                Out::Syn { stream, headers, fin } => match deflater.compress(&headers) {
                    Ok(block) => Frame::SynStream { stream, fin, block },
                    Err(e) => return tracing::warn!(error = %e, "SPDY writer stopped"),
                },
                Out::Reply { stream, headers } => match deflater.compress(&headers) {
                    Ok(block) => Frame::SynReply { stream, fin: false, block },
                    Err(e) => return tracing::warn!(error = %e, "SPDY writer stopped"),
                },
                Out::Data { stream, data, fin } => Frame::Data { stream, fin, data },
                Out::Reset { stream, status } => Frame::RstStream { stream, status: status as u32 },
                Out::Ping { id } => Frame::Ping { id },
                Out::WindowUpdate { stream, delta } => Frame::WindowUpdate { stream, delta },
            };
            if let Err(e) = frame.write(&mut buf) {
                return tracing::warn!(error = %e, "SPDY writer stopped");
            }
            next = if buf.len() < 64 * 1024 { out.try_recv().ok() } else { None };
        }
        if let Err(e) = write.write_all(&buf).await {
            return tracing::debug!(error = %e, "SPDY connection broke while writing");
        }
        buf.clear();
        if let Err(e) = write.flush().await {
            return tracing::debug!(error = %e, "SPDY connection broke while flushing");
        }
    }
    let _ = write.shutdown().await;
}

struct Reader {
    shared: Arc<Shared>,
    incoming: mpsc::Sender<Stream>,
    inflater: Inflater,
    role: Role,
}

impl Reader {
    async fn run<R: AsyncRead>(mut self, read: R) -> Result<()> {
        tokio::pin!(read);
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let outcome = loop {
            match Frame::parse(&mut buf) {
                Ok(Some(frame)) => {
                    if let Err(e) = self.handle(frame).await {
                        break Err(e);
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => break Err(e),
            }
            match read.read_buf(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(_) => {}
                Err(e) => break Err(e.into()),
            }
        };
        // Every stream learns the connection is gone: readers see their end, openers a refusal.
        let mut streams = self.shared.streams.lock();
        streams.ended = true;
        streams.open.clear();
        outcome
    }

    async fn send(&self, out: Out) -> Result<()> {
        self.shared.out.send(out).await.map_err(|_| Error::Closed)
    }

    async fn handle(&mut self, frame: Frame) -> Result<()> {
        match frame {
            Frame::Data { stream, fin, data } => {
                let known = {
                    let mut streams = self.shared.streams.lock();
                    let found = streams.open.get_mut(&stream).map(|entry| {
                        let sender = entry.data.clone();
                        if fin {
                            entry.data = None;
                        }
                        (sender, fin && entry.reply.is_none())
                    });
                    if let Some((_, true)) = found {
                        streams.open.remove(&stream);
                    }
                    found.map(|(sender, _)| sender)
                };
                let Some(sender) = known else {
                    return self.send(Out::Reset { stream, status: ResetStatus::InvalidStream }).await;
                };
                if !data.is_empty() {
                    let len = data.len() as u32;
                    if let Some(sender) = sender {
                        // A reader that went away just drops what is left.
                        let _ = sender.send(data).await;
                    }
                    // Hand the window back once the data is taken, for peers that keep one.
                    self.send(Out::WindowUpdate { stream, delta: len }).await?;
                }
            }
            Frame::SynStream { stream, fin, block } => {
                // Decompressed whatever happens next: the zlib stream must stay in step.
                let headers = self.inflater.decompress(&block)?;
                if stream == 0 || stream % 2 != self.role.peer_parity() {
                    return self.send(Out::Reset { stream, status: ResetStatus::ProtocolError }).await;
                }
                let (data_tx, data_rx) = mpsc::channel(DATA_QUEUE);
                let in_use = {
                    let mut streams = self.shared.streams.lock();
                    let in_use = streams.open.contains_key(&stream);
                    if !in_use {
                        streams.open.insert(stream, Entry { data: (!fin).then_some(data_tx), reply: None });
                    }
                    in_use
                };
                if in_use {
                    return self.send(Out::Reset { stream, status: ResetStatus::StreamInUse }).await;
                }
                let accepted = Stream {
                    id: stream,
                    headers,
                    reader: StreamReader { data: data_rx },
                    writer: StreamWriter { stream, out: self.shared.out.clone() },
                };
                if self.incoming.send(accepted).await.is_err() {
                    self.shared.streams.lock().open.remove(&stream);
                    return self.send(Out::Reset { stream, status: ResetStatus::RefusedStream }).await;
                }
            }
            Frame::SynReply { stream, fin, block } => {
                let headers = self.inflater.decompress(&block)?;
                let mut streams = self.shared.streams.lock();
                if let Some(entry) = streams.open.get_mut(&stream) {
                    if let Some(reply) = entry.reply.take() {
                        let _ = reply.send(headers);
                    }
                    if fin {
                        streams.open.remove(&stream);
                    }
                }
            }
            Frame::Headers { block, .. } => {
                self.inflater.decompress(&block)?;
            }
            Frame::RstStream { stream, status } => {
                tracing::debug!(stream, status, "the peer reset a stream");
                self.shared.streams.lock().open.remove(&stream);
            }
            Frame::Ping { id } => {
                // Pings the peer starts carry its parity; answer those, ours come back.
                if id % 2 == self.role.peer_parity() {
                    self.send(Out::Ping { id }).await?;
                }
            }
            Frame::GoAway { last_stream } => tracing::debug!(last_stream, "the peer is going away"),
            Frame::Settings | Frame::WindowUpdate { .. } | Frame::Unknown => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> ((Session, mpsc::Receiver<Stream>), (Session, mpsc::Receiver<Stream>)) {
        let (a, b) = tokio::io::duplex(1024);
        (Session::start(a, Role::Client).unwrap(), Session::start(b, Role::Server).unwrap())
    }

    #[tokio::test]
    async fn streams_open_carry_data_both_ways_and_finish() {
        let ((client, _), (_server, mut incoming)) = pair();
        let server_side = tokio::spawn(async move {
            let mut stream = incoming.recv().await.expect("a stream");
            assert_eq!(stream.headers.get("streamtype"), Some("data"));
            stream.accept().await.unwrap();
            let mut got = Vec::new();
            while let Some(data) = stream.reader.recv().await {
                got.extend_from_slice(&data);
            }
            // The client finished; the server still answers, then finishes too.
            stream.writer.send(Bytes::from(got)).await.unwrap();
            stream.writer.finish().await.unwrap();
        });
        let mut stream = client.open(Headers::new().with("streamType", "data")).await.unwrap();
        assert_eq!(stream.id, 1);
        let big = Bytes::from(vec![7u8; 200 * 1024]);
        stream.writer.send(big.clone()).await.unwrap();
        stream.writer.finish().await.unwrap();
        let mut echoed = Vec::new();
        while let Some(data) = stream.reader.recv().await {
            echoed.extend_from_slice(&data);
        }
        assert_eq!(echoed, big);
        server_side.await.unwrap();
    }

    #[tokio::test]
    async fn a_reset_ends_the_peers_reader() {
        let ((client, _), (_server, mut incoming)) = pair();
        let opened = tokio::spawn(async move { client.open(Headers::new()).await });
        let stream = incoming.recv().await.unwrap();
        stream.accept().await.unwrap();
        let mut client_stream = opened.await.unwrap().unwrap();
        stream.writer.reset(ResetStatus::Cancel).await;
        assert!(client_stream.reader.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_refused_stream_is_an_error_for_the_opener() {
        let ((client, _), (server, incoming)) = pair();
        drop(incoming);
        assert!(matches!(client.open(Headers::new()).await, Err(Error::Refused(1))));
        drop(server);
    }

    #[tokio::test]
    async fn pings_from_the_peer_are_answered() {
        let (mut raw, other) = tokio::io::duplex(1024);
        let (_server, _incoming) = Session::start(other, Role::Server).unwrap();
        let mut ping = BytesMut::new();
        Frame::Ping { id: 1 }.write(&mut ping).unwrap();
        raw.write_all(&ping).await.unwrap();
        let mut answer = BytesMut::new();
        while Frame::parse(&mut answer).unwrap().map(|f| assert_eq!(f, Frame::Ping { id: 1 })).is_none() {
            raw.read_buf(&mut answer).await.unwrap();
        }
    }

    #[tokio::test]
    async fn the_end_of_the_connection_ends_every_stream() {
        let ((client, _), (server, mut incoming)) = pair();
        let opened = tokio::spawn(async move {
            let mut stream = client.open(Headers::new()).await.unwrap();
            stream.reader.recv().await
        });
        let stream = incoming.recv().await.unwrap();
        stream.accept().await.unwrap();
        drop(server);
        assert_eq!(opened.await.unwrap(), None);
    }
}
